//! Byte ranges of answers from the cache, as Pingora's cache phases apply them, except for
//! ranges of no bytes. Pingora reads a suffix of zero (`bytes=-0`) as an empty range and
//! answers it with a `206` of nothing (alone) or with a multipart body shorter than its length
//! (among others: the client waits for bytes that never come); RFC 9110 §14.1.1 has such a
//! range unsatisfiable. An empty answer's ranges are not looked at (a server may ignore
//! `Range`): it goes whole, as Pingora's range filter subtracts one from its end (a `206` of
//! `bytes 0-18446744073709551615/0`, or, built with overflow checks, a panic). And an
//! `If-Range` of a weak entity tag is never true (RFC 9110 §13.1.5: the ranges of a body that
//! only means the same could be spliced from two versions): the answer goes whole, where
//! Pingora compares the tags byte by byte (as nginx).

use std::ops::Range;

use http::header::{
    ACCEPT_RANGES, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, IF_RANGE, RANGE,
    TRANSFER_ENCODING,
};
use pingora_http::ResponseHeader;
use pingora_proxy::{RangeType, Session};

/// The most ranges a multipart answer has (as Pingora's default).
const MAX_RANGES: Option<usize> = Some(200);

/// Applies the request's ranges to `resp` (its head, `length` bytes of body).
pub fn apply(session: &mut Session, resp: &mut ResponseHeader) -> RangeType {
    let headers = &session.req_header().headers;
    if headers.contains_key(RANGE)
        && headers
            .get(IF_RANGE)
            .is_some_and(|v| v.as_bytes().starts_with(b"W/"))
    {
        session.req_header_mut().remove_header(&RANGE);
    }
    if !session.req_header().headers.contains_key(RANGE) {
        return pingora_proxy::range_header_filter(session.req_header(), resp, MAX_RANGES);
    }
    let length = crate::cache::store::content_length(resp);
    if length == Some(0) {
        // (As Pingora answers a request without ranges.)
        if resp.status == http::StatusCode::OK {
            let _ = resp.insert_header(ACCEPT_RANGES, "bytes");
        }
        return RangeType::None;
    }
    let original = resp.clone();
    let ranges = pingora_proxy::range_header_filter(session.req_header(), resp, MAX_RANGES);
    let empty = |r: &Range<usize>| r.start >= r.end;
    let kept: Vec<Range<usize>> = match &ranges {
        RangeType::Single(r) if empty(r) => Vec::new(),
        RangeType::Multi(m) if m.ranges.iter().any(empty) => {
            m.ranges.iter().filter(|r| !empty(r)).cloned().collect()
        }
        _ => return ranges,
    };
    *resp = original;
    if kept.is_empty() {
        unsatisfiable(resp, length.unwrap_or(0));
        return RangeType::Invalid;
    }
    // The ranges that hold bytes, asked for again.
    let spec: Vec<String> = kept
        .iter()
        .map(|r| format!("{}-{}", r.start, r.end - 1))
        .collect();
    let _ = session
        .req_header_mut()
        .insert_header(RANGE, format!("bytes={}", spec.join(",")));
    pingora_proxy::range_header_filter(session.req_header(), resp, MAX_RANGES)
}

/// Turns the head of a `length`-byte answer into a `416` (as Pingora writes its own).
fn unsatisfiable(resp: &mut ResponseHeader, length: usize) {
    let _ = resp.set_status(http::StatusCode::RANGE_NOT_SATISFIABLE);
    let _ = resp.insert_header(CONTENT_LENGTH, "0");
    for name in [
        ACCEPT_RANGES,
        CONTENT_TYPE,
        CONTENT_ENCODING,
        TRANSFER_ENCODING,
    ] {
        resp.remove_header(&name);
    }
    let _ = resp.insert_header(CONTENT_RANGE, format!("bytes */{length}"));
}
