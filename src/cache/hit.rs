//! The cache on the fast path: a stored tile that is fresh and does not vary by request
//! headers, for a GET or HEAD without conditional or range headers, is answered without
//! Pingora's proxy; a GET for a tile nothing is stored for is fetched and stored by the fast
//! path ([`super::fill`]). Anything else — a stale or varied object, a conditional or range
//! request, a HEAD miss — is left to Pingora's cache phases, which do the rest.

use std::time::SystemTime;

use bytes::Bytes;
use http::header::{
    HeaderName, HOST, IF_MATCH, IF_MODIFIED_SINCE, IF_NONE_MATCH, IF_RANGE, IF_UNMODIFIED_SINCE,
    RANGE,
};
use pingora_cache::key::CacheHashKey;
use pingora_cache::CacheKey;
use pingora_http::{RequestHeader, ResponseHeader};

use super::fill::Fill;
use crate::pipeline::Exchange;

/// A fresh stored response: its head as the client gets it and its body.
pub struct FreshHit {
    pub header: ResponseHeader,
    pub body: Bytes,
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
// Made once per request and matched at once: boxing the hit would cost an allocation per hit.
#[allow(clippy::large_enum_variant)]
pub enum Lookup {
    /// A fresh stored response answers it as it is.
    Fresh(FreshHit),
    /// Nothing is stored: this request fetches the tile, for everyone.
    Fill(Fill),
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
        || ASKS.iter().any(|h| req.headers.contains_key(h))
    {
        return Lookup::General;
    }
    let host = req.headers.get(HOST).and_then(|h| h.to_str().ok());
    let key = CacheKey::new(super::primary_of(x, host), "");
    let hash = key.combined_bin();
    match cache.store.find(hash).await {
        Some(object) => match object.meta.fresh_hit_header(SystemTime::now()) {
            Some(header) => Lookup::Fresh(FreshHit {
                header,
                body: object.body.clone(),
            }),
            None => Lookup::General,
        },
        None if may_fill && req.method == http::Method::GET => {
            super::fill::begin(cache, key, hash, &u.rule).map_or(Lookup::General, Lookup::Fill)
        }
        None => Lookup::General,
    }
}
