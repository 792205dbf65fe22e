//! Request framing a gateway must not pass on ambiguously (request smuggling): one
//! `Content-Length`, a plain number (two, or a list, even of equal values, are refused as Node,
//! and so EG, refuses them: passed on, a strict upstream would refuse them in turn);
//! `Transfer-Encoding` only `chunked` (a coding before it is refused with 501, as nginx does:
//! Pingora's reader would pass the body on de-chunked but still in that coding, labelled
//! `chunked` alone).
//! (Pingora itself drops `Content-Length` when `Transfer-Encoding` is present and closes the
//! connection after such a request, so the upstream never sees both.)
//!
//! An upstream's answer is held to the same rules ([`response_problem`]): one framed otherwise
//! is a `502`, as nginx answers it. Relayed, a second `Content-Length` line (even of the same
//! value) makes strict clients refuse the answer, a length past 64 bits' signed range is read
//! as another length, and a coding before `chunked` would reach the client (and the cache)
//! de-chunked but still in that coding, with nothing saying so.

use http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
use http::HeaderMap;

/// Why a request's framing is refused, if it is: the status (400, or 501 for a transfer
/// coding other than `chunked`) and the reason.
pub fn problem(headers: &HeaderMap) -> Option<(u16, &'static str)> {
    problem_text(headers).map(|why| {
        let status = if why == UNSUPPORTED_CODING { 501 } else { 400 };
        (status, why)
    })
}

/// Why an upstream's answer with these `headers` is not relayed, if it is not (see the
/// module's text).
pub fn response_problem(headers: &HeaderMap) -> Option<&'static str> {
    // Most answers name no header twice, have no coding and one plain length (of at most 18
    // digits: within 63 bits): two lookups (every upstream answer passes here).
    if headers.len() == headers.keys_len() && !headers.contains_key(TRANSFER_ENCODING) {
        match headers.get(CONTENT_LENGTH).map(http::HeaderValue::as_bytes) {
            None => return None,
            Some(v) if !v.is_empty() && v.len() <= 18 && v.iter().all(u8::is_ascii_digit) => {
                return None
            }
            Some(_) => {}
        }
    }
    problem_text(headers)
}

const UNSUPPORTED_CODING: &str = "a transfer coding other than chunked";

fn problem_text(headers: &HeaderMap) -> Option<&'static str> {
    let mut length: Option<&[u8]> = None;
    for value in headers.get_all(CONTENT_LENGTH) {
        for part in value.as_bytes().split(|b| *b == b',') {
            let part = part.trim_ascii();
            if part.is_empty() || !part.iter().all(u8::is_ascii_digit) {
                return Some("invalid Content-Length");
            }
            // Past what a signed 64-bit length holds (as nginx reads it): an upstream that
            // reads it so would take it for another length.
            if std::str::from_utf8(part).map_or(true, |p| p.parse::<i64>().is_err()) {
                return Some("Content-Length too large");
            }
            match length {
                Some(l) if l != part => return Some("conflicting Content-Length values"),
                Some(_) => return Some("more than one Content-Length"),
                None => length = Some(part),
            }
        }
    }
    // A last element that is empty (`chunked,`, an empty last line) is refused: Pingora's
    // readers take the literal last element for the coding, so `chunked,` would read as no
    // chunks — a body read until the connection closes, relayed with a `Transfer-Encoding:
    // chunked` that says otherwise (a client would read what follows the last chunk as the
    // next answer). Other empty elements are nothing (RFC 9110 §5.6.1).
    let lines = headers.get_all(TRANSFER_ENCODING);
    let last_empty = lines.iter().next_back().is_some_and(|v| {
        v.as_bytes()
            .rsplit(|b| *b == b',')
            .next()
            .is_none_or(|t| t.trim_ascii().is_empty())
    });
    if last_empty {
        return Some("unsupported Transfer-Encoding");
    }
    let codings: Vec<&[u8]> = lines
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|c| !c.is_empty())
        .collect();
    match codings.as_slice() {
        [] => None,
        [only] if only.eq_ignore_ascii_case(b"chunked") => None,
        // RFC 9112 §6.1: chunked is applied once at most.
        [before @ .., last]
            if last.eq_ignore_ascii_case(b"chunked")
                && before.iter().any(|c| c.eq_ignore_ascii_case(b"chunked")) =>
        {
            Some("chunked more than once")
        }
        [.., last] if last.eq_ignore_ascii_case(b"chunked") => Some(UNSUPPORTED_CODING),
        _ => Some("unsupported Transfer-Encoding"),
    }
}

#[cfg(test)]
mod tests {
    use super::problem;
    use http::HeaderMap;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::header::HeaderName::from_bytes(k.as_bytes()).expect("name"),
                v.parse().expect("value"),
            );
        }
        h
    }

    #[test]
    fn framing() {
        assert_eq!(problem(&headers(&[("content-length", "5")])), None);
        assert_eq!(
            problem(&headers(&[
                ("content-length", "5"),
                ("content-length", "5")
            ])),
            Some((400, "more than one Content-Length"))
        );
        assert!(problem(&headers(&[("content-length", "5, 5")])).is_some());
        assert_eq!(
            problem(&headers(&[("content-length", "9223372036854775807")])),
            None
        );
        assert_eq!(
            problem(&headers(&[("content-length", "000000000000000000000005")])),
            None
        );
        for huge in [
            "9223372036854775808",
            "18446744073709551615",
            "99999999999999999999999",
        ] {
            assert_eq!(
                problem(&headers(&[("content-length", huge)])),
                Some((400, "Content-Length too large")),
                "{huge}"
            );
        }
        assert_eq!(
            problem(&headers(&[
                ("transfer-encoding", "chunked"),
                ("transfer-encoding", "chunked")
            ])),
            Some((400, "chunked more than once"))
        );
        assert!(problem(&headers(&[
            ("content-length", "5"),
            ("content-length", "6")
        ]))
        .is_some());
        assert!(problem(&headers(&[("content-length", "5, 6")])).is_some());
        assert!(problem(&headers(&[("content-length", "+5")])).is_some());
        assert!(problem(&headers(&[("content-length", "")])).is_some());
        assert_eq!(problem(&headers(&[("transfer-encoding", "chunked")])), None);
        assert_eq!(problem(&headers(&[("transfer-encoding", "Chunked")])), None);
        // A coding before chunked: the body would reach the upstream labelled chunked alone.
        for te in [
            &[("transfer-encoding", "gzip, Chunked")][..],
            &[
                ("transfer-encoding", "gzip"),
                ("transfer-encoding", "chunked"),
            ],
        ] {
            assert_eq!(problem(&headers(te)).map(|p| p.0), Some(501), "{te:?}");
        }
        assert_eq!(
            problem(&headers(&[("transfer-encoding", "chunked, chunked")])).map(|p| p.0),
            Some(400)
        );
        assert_eq!(
            problem(&headers(&[("transfer-encoding", "chunked, gzip")])),
            Some((400, "unsupported Transfer-Encoding"))
        );
        assert!(problem(&headers(&[("transfer-encoding", "xchunked")])).is_some());
        assert_eq!(problem(&headers(&[])), None);
    }

    /// An answer's framing: what a request's is refused for, its common case read in one pass.
    #[test]
    fn response_framing() {
        use super::response_problem;
        for fine in [
            &[("content-length", "5"), ("content-type", "image/png")][..],
            &[("content-length", "999999999999999999")],
            &[("content-length", "9223372036854775807")],
            &[("transfer-encoding", "chunked")],
            &[],
        ] {
            assert_eq!(response_problem(&headers(fine)), None, "{fine:?}");
        }
        for (bad, why) in [
            (
                &[("content-length", "5"), ("content-length", "5")][..],
                "more than one Content-Length",
            ),
            (
                &[("content-length", "9223372036854775808")],
                "Content-Length too large",
            ),
            (
                &[("content-length", "5, 5")],
                "more than one Content-Length",
            ),
            (
                &[("transfer-encoding", "gzip, chunked")],
                "a transfer coding other than chunked",
            ),
            (
                &[("transfer-encoding", "chunked, chunked")],
                "chunked more than once",
            ),
            // Pingora's reader would take the empty last element for the coding: no chunks.
            (
                &[("transfer-encoding", "chunked,")],
                "unsupported Transfer-Encoding",
            ),
            (
                &[("transfer-encoding", "chunked"), ("transfer-encoding", "")],
                "unsupported Transfer-Encoding",
            ),
            (
                &[("transfer-encoding", "")],
                "unsupported Transfer-Encoding",
            ),
        ] {
            assert_eq!(response_problem(&headers(bad)), Some(why), "{bad:?}");
        }
        // An empty element before the last is nothing (RFC 9110 §5.6.1).
        for fine in [
            &[("transfer-encoding", ", chunked")][..],
            &[("transfer-encoding", ""), ("transfer-encoding", "chunked")],
        ] {
            assert_eq!(response_problem(&headers(fine)), None, "{fine:?}");
        }
    }
}
