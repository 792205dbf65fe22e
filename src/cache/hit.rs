//! The cache on the fast path: a stored tile that is fresh and does not vary by request
//! headers, for a GET or HEAD without conditional or range headers, is answered without
//! Pingora's proxy; a GET for a tile nothing is stored for is fetched and stored by the fast
//! path ([`super::fill`]). Anything else — a stale or varied object, a conditional or range
//! request, a HEAD miss — is left to Pingora's cache phases, which do the rest.
//!
//! A hit is answered with the stored head as Pingora's cache phases answer it (see
//! [`FreshHit::header`]). Most hits are written from the stored head's own buffer (whose lines
//! a hit carries as they are come first), with only what changes per request added: `Age`,
//! `Date`, `Connection`, `X-Cache-Status` and the pipeline's response headers
//! ([`FreshHit::wire_head`]). A miss filled on the fast path is answered the same way
//! ([`miss_wire_head`]).

use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use http::header::{
    HeaderName, ACCEPT_RANGES, AGE, CONNECTION, CONTENT_LENGTH, DATE, HOST, IF_MATCH,
    IF_MODIFIED_SINCE, IF_NONE_MATCH, IF_RANGE, IF_UNMODIFIED_SINCE, RANGE, TRANSFER_ENCODING,
};
use pingora_http::{RequestHeader, ResponseHeader};

use super::fill::Fill;
use super::store::head::{StoredHead, Template};
use super::store::{offer_ranges, Object};
use crate::pipeline::context::HeaderEdit;
use crate::pipeline::Exchange;
use crate::wire;

/// A fresh stored response.
pub struct FreshHit {
    object: Arc<Object>,
    /// Seconds since it was stored or revalidated.
    age: u64,
}

/// Request headers that ask for more than the stored response as it is.
static ASKS: [HeaderName; 6] = [
    IF_NONE_MATCH,
    IF_MODIFIED_SINCE,
    IF_MATCH,
    IF_UNMODIFIED_SINCE,
    IF_RANGE,
    RANGE,
];

/// What the fast path does with a request whose pipeline went through a `cache` step.
pub enum Lookup {
    /// A fresh stored response answers it as it is.
    Fresh(FreshHit),
    /// Nothing is stored: this request fetches the tile, for everyone (boxed: a miss is rare
    /// next to hits, which stay small).
    Fill(Box<Fill>),
    /// Pingora's cache phases serve it.
    General,
}

/// Looks the request up (`path`: its target's, as the client sent it — the fast path leaves
/// a plain target out of `req`); a miss is filled on the fast path only when `may_fill` (its
/// upstream is one the fast path speaks to).
pub async fn lookup(req: &RequestHeader, path: &str, x: &Exchange, may_fill: bool) -> Lookup {
    let (Some(cache), Some(u), Some(_)) = (super::get(), &x.cache, &x.proxy) else {
        return Lookup::General;
    };
    if !matches!(req.method, http::Method::GET | http::Method::HEAD)
        // One pass over the request's few headers.
        || req.headers.keys().any(|n| ASKS.contains(n))
    {
        return Lookup::General;
    }
    let host = req.headers.get(HOST).and_then(|h| h.to_str().ok());
    let Ok(forwarding) = super::forwarding_of(&req.headers, &u.rule) else {
        return Lookup::General; // not cached there either
    };
    let primary = super::primary_of(x, path, host, forwarding.as_deref());
    // Pingora's key is made only for a miss: a hit needs the hash alone.
    let hash = super::key::digest(primary.as_bytes());
    match cache.store.find(hash).await {
        Some(object) => match object.meta.fresh_age(crate::clock::wall()) {
            Some(age) => Lookup::Fresh(FreshHit { object, age }),
            None => Lookup::General,
        },
        None if may_fill && req.method == http::Method::GET => {
            super::fill::begin(cache, super::key::keyed(primary, hash), hash, u)
                .map_or(Lookup::General, |f| Lookup::Fill(Box::new(f)))
        }
        None => Lookup::General,
    }
}

impl FreshHit {
    pub fn body(&self) -> &Bytes {
        &self.object.body
    }

    /// Where the body lies in the memory tier's shared memory, for `sendfile` (it counts as
    /// sent from then on); `None` for a body kept elsewhere.
    pub fn file(&self) -> Option<super::store::shared::FileRange> {
        super::get()?.store.memory.send(&self.object.body)
    }

    pub fn status(&self) -> u16 {
        self.object.meta.head().status().as_u16()
    }

    /// The head a hit is answered with, as Pingora's cache phases make it ([`hit_head`] and
    /// `Age`). Pingora's session adds `Date` and `Connection` when it writes it.
    pub fn header(&self) -> pingora_core::Result<ResponseHeader> {
        let mut header = hit_head(self.object.meta.head().header()?)?;
        header.insert_header(AGE, self.age)?;
        Ok(header)
    }

    /// The same head as [`Self::header`] with the pipeline's `edits`, `X-Cache-Status: HIT`,
    /// `Date` and `Connection` (`keepalive` or not) as bytes to write, when the stored head
    /// allows it (a body of known length) and the edits only add headers it does not have.
    /// `None`: build it with [`Self::header`].
    pub fn wire_head(&self, edits: &[HeaderEdit], keepalive: bool) -> Option<BytesMut> {
        let (head, body_len) = (self.object.meta.head(), self.object.body.len());
        wire_head(head, body_len, edits, keepalive, Some(self.age), b"HIT")
    }
}

/// The head a miss stored on the fast path is answered with, from its stored `head` and the
/// length of its body: as a hit's ([`FreshHit::wire_head`]) with `X-Cache-Status: MISS`, and
/// the upstream's `Age` when it gave one.
pub fn miss_wire_head(
    head: &StoredHead,
    body_len: usize,
    edits: &[HeaderEdit],
    keepalive: bool,
    age: Option<u64>,
) -> Option<BytesMut> {
    wire_head(head, body_len, edits, keepalive, age, b"MISS")
}

/// The head a miss not stored (a tile new to a full memory tier, or missed fewer times than
/// `minUses`) is answered with: the same as [`miss_wire_head`] of the head it would be stored
/// with, written from the upstream's `resp` at once. `content_length`: that of `resp`.
pub fn unstored_miss_head(
    resp: &ResponseHeader,
    content_length: Option<usize>,
    body_len: usize,
    edits: &[HeaderEdit],
    keepalive: bool,
    age: Option<u64>,
) -> Option<BytesMut> {
    let mut buf = BytesMut::with_capacity(256 + 48 * (resp.headers.len() + edits.len()));
    let (ranges, names) =
        super::store::head::write_template(resp, content_length, body_len, &mut buf)?;
    edits_fit(&Template::new(&buf, ranges, names), edits)?;
    finish_head(&mut buf, ranges, age, b"MISS", edits, keepalive);
    Some(buf)
}

/// Whether `edits` can be written after the head's `template` as they are (they only add
/// headers it does not have, each once), and the bytes they take.
fn edits_fit(template: &Template<'_>, edits: &[HeaderEdit]) -> Option<usize> {
    let mut added = 0;
    for (i, edit) in edits.iter().enumerate() {
        let (HeaderEdit::Set(n, v) | HeaderEdit::Default(n, v) | HeaderEdit::Append(n, v)) = edit
        else {
            return None;
        };
        let earlier = edits[..i].iter().any(|e| e.name() == n);
        let ranges = n == ACCEPT_RANGES && template.ranges;
        if per_hit(n) || ranges || template.has(n) || earlier {
            // A header the stored head, the hit or an earlier edit has: Pingora's rules apply.
            return None;
        }
        added += n.as_str().len() + v.len() + 4;
    }
    Some(added)
}

fn wire_head(
    head: &StoredHead,
    body_len: usize,
    edits: &[HeaderEdit],
    keepalive: bool,
    age: Option<u64>,
    status: &[u8],
) -> Option<BytesMut> {
    let template = head.hit_template(body_len)?;
    let added = edits_fit(&template, edits)?;
    let mut buf = BytesMut::with_capacity(template.lines.len() + added + 160);
    buf.put_slice(template.lines);
    finish_head(&mut buf, template.ranges, age, status, edits, keepalive);
    Some(buf)
}

/// Writes what follows a hit's template in its head: `Accept-Ranges` when it offers `ranges`,
/// `Age`, `Date`, `X-Cache-Status`, the pipeline's `edits` and `Connection`.
fn finish_head(
    buf: &mut BytesMut,
    ranges: bool,
    age: Option<u64>,
    status: &[u8],
    edits: &[HeaderEdit],
    keepalive: bool,
) {
    if ranges {
        buf.put_slice(b"Accept-Ranges: bytes\r\n");
    }
    if let Some(age) = age {
        wire::header_line(buf, b"Age", itoa::Buffer::new().format(age).as_bytes());
    }
    let date = crate::clock::http_date();
    for (n, v) in [(&DATE, &date[..]), (&super::X_CACHE_STATUS, status)] {
        wire::header_line(buf, n.as_str().as_bytes(), v);
    }
    for edit in edits {
        if let HeaderEdit::Set(n, v) | HeaderEdit::Default(n, v) | HeaderEdit::Append(n, v) = edit {
            wire::header_line(buf, n.as_str().as_bytes(), v.as_bytes());
        }
    }
    wire::end_with_connection(buf, keepalive);
}

/// Whether a hit's head gets header `n` per request.
fn per_hit(n: &HeaderName) -> bool {
    [AGE, DATE, CONNECTION, TRANSFER_ENCODING].contains(n) || n == super::X_CACHE_STATUS
}

/// The stored head as a hit answers with it, as Pingora's cache phases make it: HTTP/1.1,
/// `Accept-Ranges` for a 200 of known length, chunked when it has no length.
fn hit_head(stored: &ResponseHeader) -> pingora_core::Result<ResponseHeader> {
    let mut header = stored.clone();
    header.set_version(http::Version::HTTP_11);
    let bodiless = matches!(header.status.as_u16(), 100..=199 | 204 | 304);
    if header.status == http::StatusCode::NO_CONTENT {
        // No length on a 204 (RFC 9110 §8.6), as the general path answers it.
        header.remove_header(&CONTENT_LENGTH);
    }
    offer_ranges(&mut header)?;
    if !bodiless && !header.headers.contains_key(CONTENT_LENGTH) {
        header.insert_header(TRANSFER_ENCODING, "chunked")?;
    }
    Ok(header)
}

/// `If-None-Match: *` on a `200` the cache answers with (RFC 9110 §13.1.2: any current
/// representation matches it), which Pingora's filter looks for only beside an `ETag`.
pub fn any_tag_matches(req: &RequestHeader, resp: &pingora_http::ResponseHeader) -> bool {
    resp.status == http::StatusCode::OK
        && matches!(req.method, http::Method::GET | http::Method::HEAD)
        && req
            .headers
            .get_all(IF_NONE_MATCH)
            .iter()
            .any(|v| v.as_bytes().trim_ascii() == b"*")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::store::head::tests::response;
    use crate::cache::store::head::NOT_STORED;
    use http::HeaderValue;

    /// The head without its `Date` line (made from the clock, which may turn between two).
    fn dateless(head: Option<BytesMut>) -> Option<String> {
        let text = String::from_utf8(head?.to_vec()).unwrap();
        Some(
            text.split("\r\n")
                .filter(|l| !l.starts_with("Date:"))
                .collect::<Vec<_>>()
                .join("\r\n"),
        )
    }

    fn edit(kind: &str, name: &'static str, value: &'static str) -> HeaderEdit {
        let (n, v) = (
            HeaderName::from_static(name),
            HeaderValue::from_static(value),
        );
        match kind {
            "set" => HeaderEdit::Set(n, v),
            "default" => HeaderEdit::Default(n, v),
            "append" => HeaderEdit::Append(n, v),
            _ => HeaderEdit::Remove(n),
        }
    }

    #[test]
    fn a_miss_not_stored_is_answered_with_the_head_it_would_be_stored_with() {
        let responses = [
            response(
                200,
                &[
                    ("Content-Type", "image/png"),
                    ("content-length", "20"),
                    ("Connection", "keep-alive, X-Hop"),
                    ("X-Hop", "1"),
                    ("Keep-Alive", "timeout=5"),
                    ("X-Tile", "a"),
                    ("ETag", "\"v1\""),
                    ("Accept-Ranges", "none"),
                    ("Age", "3"),
                    ("Date", "Thu, 01 Jan 2026 00:00:00 GMT"),
                    ("X-Cache-Status", "HIT"),
                ],
            ),
            response(404, &[("Content-Length", "20"), ("Accept-Ranges", "bytes")]),
            response(200, &[("Content-Length", "20"), ("Vary", "Accept")]),
            response(200, &[("Content-Length", "21")]),
            response(200, &[]),
            response(204, &[("Content-Length", "20")]),
        ];
        let edits = [
            vec![],
            vec![edit("set", "x-a", "1"), edit("append", "x-b", "2")],
            vec![edit("default", "etag", "\"v2\"")],
            vec![edit("set", "x-hop", "2")],
            vec![edit("append", "accept-ranges", "bytes")],
            vec![edit("set", "age", "1")],
            vec![edit("set", "x-a", "1"), edit("set", "x-a", "2")],
            vec![edit("remove", "x-tile", "")],
        ];
        let mut answered = 0;
        for resp in &responses {
            let stored = StoredHead::of(resp, &NOT_STORED);
            for edits in &edits {
                for (keepalive, age) in [(true, Some(3)), (false, None)] {
                    let expected = dateless(miss_wire_head(&stored, 20, edits, keepalive, age));
                    let written = dateless(unstored_miss_head(
                        resp,
                        crate::cache::store::content_length(resp),
                        20,
                        edits,
                        keepalive,
                        age,
                    ));
                    assert_eq!(written, expected, "{resp:?} {edits:?}");
                    answered += usize::from(written.is_some());
                }
            }
        }
        // Both kinds of answer were made: heads written and heads left to Pingora's session.
        assert!(
            answered > 4 && answered < responses.len() * edits.len() * 2,
            "{answered}"
        );
    }
}
