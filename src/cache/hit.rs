//! Fresh hits for the fast path: a stored tile that is fresh and does not vary by request
//! headers, for a GET or HEAD without conditional or range headers, answered without Pingora's
//! proxy. Anything else — a miss, a stale or varied object, a conditional or range request — is
//! left to Pingora's cache phases, which do the rest.

use std::time::SystemTime;

use bytes::Bytes;
use http::header::{
    HeaderName, HOST, IF_MATCH, IF_MODIFIED_SINCE, IF_NONE_MATCH, IF_RANGE, IF_UNMODIFIED_SINCE,
    RANGE,
};
use pingora_cache::CacheKey;
use pingora_http::{RequestHeader, ResponseHeader};

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

/// The fresh stored response for a request whose pipeline went through a `cache` step, when
/// it can be answered as it is.
pub async fn fresh(req: &RequestHeader, x: &Exchange) -> Option<FreshHit> {
    let cache = super::get()?;
    x.cache.as_ref()?;
    x.proxy.as_ref()?;
    if !matches!(req.method, http::Method::GET | http::Method::HEAD)
        || ASKS.iter().any(|h| req.headers.contains_key(h))
    {
        return None;
    }
    let host = req.headers.get(HOST).and_then(|h| h.to_str().ok());
    let key = CacheKey::new(super::primary_of(x, host), "");
    let object = cache.store.object(&key).await?;
    let header = object.meta.fresh_hit_header(SystemTime::now())?;
    Some(FreshHit {
        header,
        body: object.body.clone(),
    })
}
