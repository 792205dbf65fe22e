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
use super::store::head::StoredHead;
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

/// Looks the request up; a miss is filled on the fast path only when `may_fill` (its upstream
/// is one the fast path speaks to).
pub async fn lookup(req: &RequestHeader, x: &Exchange, may_fill: bool) -> Lookup {
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
    let forwarding = super::forwarding_of(&req.headers);
    let key = super::key::cache_key(super::primary_of(x, host, forwarding.as_deref()));
    let hash = pingora_cache::key::CacheHashKey::primary_bin(&key);
    match cache.store.find(hash).await {
        Some(object) => match object.meta.fresh_age(crate::clock::wall()) {
            Some(age) => Lookup::Fresh(FreshHit { object, age }),
            None => Lookup::General,
        },
        None if may_fill && req.method == http::Method::GET => {
            super::fill::begin(cache, key, hash, u)
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

/// Whether `edits` can be written after the stored head as they are (they only add headers
/// it does not have, each once), and the bytes they take.
fn edits_fit(stored: &StoredHead, edits: &[HeaderEdit]) -> Option<usize> {
    let mut added = 0;
    for (i, edit) in edits.iter().enumerate() {
        let (HeaderEdit::Set(n, v) | HeaderEdit::Default(n, v) | HeaderEdit::Append(n, v)) = edit
        else {
            return None;
        };
        let earlier = edits[..i].iter().any(|e| e.name() == n);
        let ranges = n == ACCEPT_RANGES && stored.offers_ranges();
        if per_hit(n) || ranges || stored.has(n) || earlier {
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
    let (template, ranges) = head.hit_template(body_len)?;
    let added = edits_fit(head, edits)?;
    let date = crate::clock::http_date();
    let mut buf = BytesMut::with_capacity(template.len() + added + date.len() + 128);
    buf.put_slice(template);
    if ranges {
        buf.put_slice(b"Accept-Ranges: bytes\r\n");
    }
    if let Some(age) = age {
        wire::header_line(&mut buf, b"Age", itoa::Buffer::new().format(age).as_bytes());
    }
    for (n, v) in [(&DATE, &date[..]), (&super::X_CACHE_STATUS, status)] {
        wire::header_line(&mut buf, n.as_str().as_bytes(), v);
    }
    for edit in edits {
        if let HeaderEdit::Set(n, v) | HeaderEdit::Default(n, v) | HeaderEdit::Append(n, v) = edit {
            wire::header_line(&mut buf, n.as_str().as_bytes(), v.as_bytes());
        }
    }
    wire::end_with_connection(&mut buf, keepalive);
    Some(buf)
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
