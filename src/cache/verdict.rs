//! The verdict on an upstream answer through a `cache` step on Pingora's cache phases: whether
//! (and how long) it is stored, what a revalidation's `304` does to the stored tile, and the
//! `Age` a hit says.

use pingora_cache::key::CacheHashKey;
use pingora_cache::{CacheKey, CachePhase, NoCacheReason, RespCacheable};
use pingora_http::ResponseHeader;
use pingora_proxy::Session;

use super::{exception, freshness, get, revalidate, store, TileCache};
use crate::pipeline::Exchange;

/// Whether (and how long) an upstream response is stored: a tile nothing was stored for only
/// from the step's `minUses`-th miss on.
/// `not_modified`: the upstream's 304, when it answered a revalidation so (see
/// [`not_modified`]).
pub fn cacheable(
    session: &Session,
    resp: &ResponseHeader,
    x: &Exchange,
    not_modified: Option<&ResponseHeader>,
) -> RespCacheable {
    let verdict = verdict(session, resp, x, not_modified);
    // A stale tile's refresh answered with what is not stored and is no failure (a 4xx, an
    // answer that may not be stored; a 5xx and a service exception are failures, see
    // [`serve_stale`]): the stale copy no longer stands in for the upstream's answers. A
    // HEAD's answer, never stored, changes nothing either.
    let still_stands = |v: &RespCacheable| {
        resp.status.as_u16() >= 500
            || matches!(v, RespCacheable::Uncacheable(NoCacheReason::Custom(r)) if *r == exception::SERVICE_EXCEPTION || *r == HEAD_REQUEST)
    };
    if matches!(
        session.cache.phase(),
        CachePhase::Stale | CachePhase::Expired
    ) && !matches!(verdict, RespCacheable::Cacheable(_))
        && !still_stands(&verdict)
    {
        if let (Some(cache), Some(key)) = (get(), session.cache.maybe_cache_key()) {
            cache
                .outages
                .answered(u128::from_be_bytes(key.combined_bin()));
        }
    }
    verdict
}

fn verdict(
    session: &Session,
    resp: &ResponseHeader,
    x: &Exchange,
    not_modified: Option<&ResponseHeader>,
) -> RespCacheable {
    let Some(u) = &x.cache else {
        return RespCacheable::Uncacheable(NoCacheReason::NeverEnabled);
    };
    // Counted where the answer came (see [`exception_as_failure`]).
    if exception::is_service_exception(resp, || exception::asks_for_map(x)) {
        return RespCacheable::Uncacheable(NoCacheReason::Custom(exception::SERVICE_EXCEPTION));
    }
    // A HEAD's answer has no body to store (see [`super::keep_head`]); a revalidation's `304`
    // updates the stored tile all the same.
    if session.req_header().method == http::Method::HEAD && not_modified.is_none() {
        return RespCacheable::Uncacheable(NoCacheReason::Custom(HEAD_REQUEST));
    }
    // Asked for before or during a purge (or an invalidation of the tile): the answer may be
    // what it was for.
    let purged = |c: &TileCache| {
        let key = session.cache.maybe_cache_key().map(CacheKey::combined_bin);
        key.is_some_and(|k| c.store.purged_since(u.epoch, &k))
    };
    if get().is_some_and(purged) {
        return RespCacheable::Uncacheable(NoCacheReason::Custom(PURGED));
    }
    // The upstream's failure: no use of the tile (nor counted as one for `minUses`).
    if resp.status.is_server_error() && !u.rule.statuses.contains(&resp.status.as_u16()) {
        return RespCacheable::Uncacheable(NoCacheReason::Custom(FAILED));
    }
    // A miss (not a refresh of a stored tile) is counted, and stored only from the step's
    // `minUses`-th miss on and when the store admits it.
    let miss = match (
        get(),
        session.cache.maybe_cache_key(),
        session.cache.phase(),
    ) {
        (Some(cache), Some(key), CachePhase::Miss) => Some((cache, key.primary_bin())),
        _ => None,
    };
    if let Some((cache, hash)) = miss {
        if !cache.stores_miss(hash, &u.rule) {
            return RespCacheable::Uncacheable(NoCacheReason::Custom(NOT_YET));
        }
    }
    // A revalidation: the stored head with the 304's fields (see [`revalidate`]).
    let merged;
    let resp = match not_modified {
        Some(not_modified) if session.cache.phase() == CachePhase::Stale => {
            let stored = session.cache.maybe_cache_meta().map(|m| m.headers());
            if !revalidate::selects(stored, not_modified) {
                return RespCacheable::Uncacheable(NoCacheReason::Custom(OTHER_VALIDATOR));
            }
            merged = revalidate::updated(resp, not_modified);
            &merged
        }
        _ => resp,
    };
    let mut verdict = freshness::decide(resp, &u.rule);
    if let RespCacheable::Cacheable(meta) = &mut verdict {
        meta.extensions_mut().insert(store::Begun(u.epoch));
    }
    match miss {
        Some((cache, hash))
            if matches!(verdict, RespCacheable::Cacheable(_))
                && !cache.admits(hash, store::content_length(resp)) =>
        {
            RespCacheable::Uncacheable(NoCacheReason::Custom(DECLINED))
        }
        _ => verdict,
    }
}

/// A revalidation's `304` that names another entity tag than the stored tile's is about
/// another body (RFC 9111 §4.3.4): its validators are dropped, so the stored tile is answered
/// once more with its own (not under the `304`'s, which name a body the client does not get),
/// and the tile is not updated (see [`cacheable`]). So is one with another `Vary` (the
/// upstream negotiates the tile now: see [`vary_of_304`]), `Content-Encoding` or
/// `Content-Type` (see [`revalidate::selects`]). True when so: the caller removes
/// the tile ([`super::forget`]), so the next request fetches the upstream's current one
/// whole (and, it varying, stores it per variant from then on).
pub fn drop_other_validator(session: &Session, resp: &mut ResponseHeader) -> bool {
    if resp.status != http::StatusCode::NOT_MODIFIED || session.cache.phase() != CachePhase::Stale {
        return false;
    }
    let stored = session.cache.maybe_cache_meta().map(|m| m.headers());
    if revalidate::selects(stored, resp) {
        return false;
    }
    resp.remove_header(&http::header::ETAG);
    resp.remove_header(&http::header::LAST_MODIFIED);
    true
}

/// The `Vary` of a revalidation's `304` that selected nothing (see [`drop_other_validator`])
/// on the answer made from the stored tile: the client, and a cache before it, learn that the
/// tile varies now.
pub fn vary_of_304(not_modified: Option<&ResponseHeader>, resp: &mut ResponseHeader) {
    let Some(vary) = not_modified
        .map(|r| r.headers.get_all(http::header::VARY))
        .filter(|v| v.iter().next().is_some())
    else {
        return;
    };
    resp.remove_header(&http::header::VARY);
    for v in vary {
        // A value the 304 held is valid.
        let _ = resp.append_header(http::header::VARY, v.clone());
    }
}

/// The upstream's answer to a request that went through a `cache` step, kept when it is a
/// revalidation's `304` (its fields update the stored head). Kept beside the exchange, not in
/// it: only Pingora's cache phases revalidate, and every request moves the exchange.
pub fn not_modified(x: &Exchange, resp: &ResponseHeader) -> Option<Box<ResponseHeader>> {
    (x.cache.is_some() && resp.status == http::StatusCode::NOT_MODIFIED)
        .then(|| Box::new(resp.clone()))
}

/// A hit served by Pingora's cache phases says how long it has been stored; the age the
/// upstream gave the response (a cache before it) is added, as a hit on the fast path says. A
/// revalidated answer's age is the upstream's 304's (none without one).
pub fn add_upstream_age(
    session: &Session,
    not_modified: Option<&ResponseHeader>,
    resp: &mut ResponseHeader,
) {
    match session.cache.phase() {
        CachePhase::Hit | CachePhase::Stale | CachePhase::StaleUpdating => {
            let Some(meta) = session.cache.maybe_cache_meta() else {
                return;
            };
            let given = store::head::age_of(meta.response_header());
            if given > 0 {
                let age = given.saturating_add(store::head::age_of(resp));
                let _ = resp.insert_header(http::header::AGE, age);
            }
        }
        CachePhase::Revalidated | CachePhase::RevalidatedNoCache(_) => {
            match not_modified.and_then(|r| r.headers.get(http::header::AGE)) {
                Some(age) => {
                    let _ = resp.insert_header(http::header::AGE, age.clone());
                }
                None => {
                    resp.remove_header(&http::header::AGE);
                }
            }
        }
        _ => {}
    }
}

/// Why a response was not stored: its tile has not been missed `minUses` times yet ...
pub(super) const NOT_YET: &str = "min-uses";
/// The reason an answer to a HEAD is not stored (not `freshness`'s "head", a head that cannot
/// be stored).
pub(super) const HEAD_REQUEST: &str = "head request";
/// ... or it was new to a full memory tier (see [`TileCache::admits`]) ...
pub(super) const DECLINED: &str = "declined";
/// ... or a purge came while it was fetched ...
pub(super) const PURGED: &str = "purged";
/// ... or a revalidation's 304 named another validator than the stored tile's.
pub(super) const OTHER_VALIDATOR: &str = "another validator";
/// ... or the upstream failed: a 5xx the step does not store (a service exception has its
/// own, [`exception::SERVICE_EXCEPTION`]). The requests waiting on the fetch take their turns
/// (see [`super::lock`]).
pub(super) const FAILED: &str = "upstream failed";
