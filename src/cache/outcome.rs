//! What a lookup found and how the request ends: a stale tile served or not (while refreshed,
//! while its upstream fails), the `X-Cache-Status` label, and the gateway's own answer when the
//! upstream failed a request through a `cache` step.

use std::time::{Duration, SystemTime};

use pingora_cache::key::CacheHashKey;
use pingora_cache::{CacheMeta, CachePhase, ForcedFreshness, NoCacheReason};
use pingora_core::{Error, ErrorSource, ErrorType};
use pingora_proxy::Session;

use super::{freshness, get, outage, X_CACHE_STATUS};
use crate::pipeline::context::HeaderEdit;
use crate::pipeline::Exchange;

/// A stale object found by a lookup, within its stale-if-error window: served at once when
/// another request is refreshing it or its upstream failed it a moment ago (see [`outage`]),
/// so the request neither waits on another's refresh nor on a failing upstream.
pub fn hit_filter(
    session: &Session,
    meta: &CacheMeta,
    is_fresh: bool,
    x: &mut Exchange,
) -> Option<ForcedFreshness> {
    // A background refresh (stale-while-revalidate) looks the tile up too: it must refresh.
    if is_fresh || session.subrequest_ctx.is_some() {
        return None;
    }
    let forbidden = freshness::revalidate_each_use(meta.response_header());
    if let Some(u) = &mut x.cache {
        u.expired = true;
        u.stale_forbidden = forbidden;
    }
    let now = SystemTime::now();
    let head = session.req_header().method == http::Method::HEAD;
    // A HEAD stores nothing, so it cannot refresh the tile in the background as a GET does:
    // within the stale-while-revalidate window it is served the stale copy at once (the next
    // GET refreshes it) rather than waiting on the upstream.
    let held = if forbidden {
        false
    } else if head && meta.serve_stale_while_revalidate(now) {
        true
    } else if !meta.serve_stale_if_error(now) {
        false
    } else {
        let (cache, key) = (get()?, session.cache.maybe_cache_key()?);
        let key = u128::from_be_bytes(key.combined_bin());
        cache.outages.stale(key, meta.epoch(), now, !head) == outage::Stale::Serve
    };
    if !held {
        return None;
    }
    if let Some(u) = &mut x.cache {
        u.stale_held = true;
    }
    Some(ForcedFreshness::ForceFresh)
}

/// Whether the answer on its way to the client comes from the upstream for the cache to store
/// (a miss, or the new copy of an expired tile): then it goes to the client whole, neither
/// turned into a `304` for a conditional request nor cut to a range. Pingora's proxy stops
/// reading the upstream once the client's answer is complete, and a fill it stops is not
/// stored (after a restart or a purge, every browser's revalidations were fetched and thrown
/// away, and the requests that waited on them went upstream one by one).
pub fn filling(session: &Session) -> bool {
    matches!(
        session.cache.phase(),
        CachePhase::Miss | CachePhase::Expired
    )
}

/// Whether the answer on its way to the client is a stored tile's (a hit, a stale tile, one
/// revalidated): only such an answer is turned into a `304` for a client's conditions. One
/// from the upstream goes whole — a fill (see [`filling`]), and one the cache let go after
/// the lookup missed (not stored: `no-store`, `Set-Cookie`, a full memory tier's refusal), for
/// which the client's conditions were not sent upstream either. That one's `304` on HTTP/2
/// went out with the tile's body after it (Pingora stops only a stored body at the head), a
/// stream a client resets as malformed (RFC 9113 §8.1.1).
pub fn served_from_store(session: &Session) -> bool {
    matches!(
        session.cache.phase(),
        CachePhase::Hit
            | CachePhase::Stale
            | CachePhase::StaleUpdating
            | CachePhase::Revalidated
            | CachePhase::RevalidatedNoCache(_)
    )
}

/// Whether a stale object may be served: while it is refreshed in the background, or when the
/// upstream failed or answered 5xx (the windows are the object's own). A failure is counted
/// (the request itself succeeds) and remembered for the tile.
pub fn serve_stale(session: &Session, error: Option<&Error>) -> bool {
    let Some(e) = error else {
        return true;
    };
    if e.esource() != &ErrorSource::Upstream
        && !matches!(e.etype(), ErrorType::HTTPStatus(s) if *s >= 500)
    {
        return false;
    }
    crate::exchange::count_upstream_failure(e);
    if let (Some(cache), Some(key)) = (get(), session.cache.maybe_cache_key()) {
        let key = u128::from_be_bytes(key.combined_bin());
        cache.outages.failed(key, SystemTime::now());
    }
    true
}

/// An upstream answer through a `cache` step that is a service exception (see
/// [`super::exception`]): counted, or, while a stale copy may stand in for a failure, an
/// upstream error (counted when the stale copy answers), so that the stale copy answers as
/// for a 5xx (Pingora's cache phases take only a 5xx status for a failure). Nothing of the
/// answer has reached the client; the request is tried on another url first where it may be.
/// `Ok(true)`: a service exception that is relayed (see [`crate::upstream::attempt::answered`]).
pub fn exception_as_failure(
    session: &Session,
    x: &Exchange,
    resp: &pingora_http::ResponseHeader,
) -> pingora_core::Result<bool> {
    if x.cache.is_none()
        || !super::exception::is_service_exception(resp, || super::exception::asks_for_map(x))
    {
        return Ok(false);
    }
    if !session.cache.enabled() || !session.cache.can_serve_stale_error() {
        crate::metrics::metrics().upstream_error(crate::metrics::SERVICE_EXCEPTION);
        return Ok(true);
    }
    Err(Error::create(
        ErrorType::Custom(super::exception::SERVICE_EXCEPTION),
        ErrorSource::Upstream,
        Some("the upstream answered with a service exception".into()),
        None,
    ))
}

/// After an exchange that was refreshing a stale tile (in the background, or for its client
/// when no stale-while-revalidate window let the stale copy answer) ended in the upstream's
/// failure after the answer's head came — a body cut short, reset or timed out: the failure is
/// remembered for the tile as one before the head is ([`serve_stale`]), so that its next
/// requests get the stale copy at once and one a second asks again. (Before, the tile stood
/// marked as being refreshed until the mark lapsed, 30 s of stale copies without a retry.)
pub fn refresh_broke(session: &Session, x: &Exchange, e: Option<&Error>) {
    let upstream = e.is_some_and(|e| e.esource() == &ErrorSource::Upstream);
    if !upstream || !(x.refresh || x.cache.as_ref().is_some_and(|u| u.expired)) {
        return;
    }
    if let (Some(cache), Some(key)) = (get(), session.cache.maybe_cache_key()) {
        let key = u128::from_be_bytes(key.combined_bin());
        cache.outages.failed(key, SystemTime::now());
    }
}

/// Notes that the lookup found no stored copy (the request is a plain miss): a stale copy an
/// earlier lookup found — before the request waited on another's fetch, after which the tile
/// was gone — is neither its label (`EXPIRED`) nor a reason to answer its failure with a 504.
pub fn note_miss(x: &mut Exchange) {
    if let Some(u) = x.cache.as_mut() {
        u.expired = false;
        u.stale_forbidden = false;
    }
}

/// Notes, when the upstream's answer comes, that the lookup had found the tile expired
/// (Pingora's phase `Stale` until it decides to serve it, or `Expired`): the phase says so
/// only until the answer turns out not to be stored.
pub fn note_expired(session: &Session, x: &mut Exchange) {
    if matches!(
        session.cache.phase(),
        CachePhase::Stale | CachePhase::Expired
    ) {
        if let Some(u) = x.cache.as_mut() {
            u.expired = true;
        }
    }
}

/// The `X-Cache-Status` of a request that went through a `cache` step.
pub fn status(session: &Session, x: &Exchange) -> &'static str {
    match session.cache.phase() {
        CachePhase::Hit if x.cache.as_ref().is_some_and(|u| u.stale_held) => "STALE",
        CachePhase::Hit => "HIT",
        CachePhase::Miss => "MISS",
        CachePhase::Stale | CachePhase::StaleUpdating => "STALE",
        CachePhase::Expired => "EXPIRED",
        CachePhase::Revalidated | CachePhase::RevalidatedNoCache(_) => "REVALIDATED",
        // Went upstream but was not stored (uncacheable, too large, lock given up).
        CachePhase::Disabled(r) if r != NoCacheReason::NeverEnabled => {
            if x.cache.as_ref().is_some_and(|u| u.expired) {
                "EXPIRED"
            } else {
                "MISS"
            }
        }
        _ => "BYPASS",
    }
}

/// The gateway's answer to a request through a `cache` step that failed (`e`), given the
/// status it answers the failure with (`code`): a 504 instead of a 502 when the upstream
/// failed it (not the gateway itself) and the lookup found a stored copy its upstream forbids
/// serving stale (`must-revalidate` and its kin, see [`freshness::revalidate_each_use`]: it
/// could not be revalidated, RFC 9111 §5.2.2.2), and the `X-Cache-Status` the answer carries.
pub fn failed(session: &Session, x: &Exchange, e: &Error, code: u16) -> (u16, &'static str) {
    let may_not_serve = x.cache.as_ref().is_some_and(|u| u.stale_forbidden);
    let code = if code == 502 && may_not_serve && e.esource() == &ErrorSource::Upstream {
        504
    } else {
        code
    };
    (code, status(session, x))
}

/// The head edits of an answer the gateway makes itself: the pipeline's, and for a request
/// through a `cache` step an `X-Cache-Status` of `label`.
pub fn answer_edits<'x>(
    x: &'x Exchange,
    label: &'static str,
) -> std::borrow::Cow<'x, [HeaderEdit]> {
    if x.cache.is_none() {
        return std::borrow::Cow::Borrowed(&x.response_edits);
    }
    let mut all = x.response_edits.to_vec();
    all.push(HeaderEdit::Set(
        X_CACHE_STATUS.clone(),
        http::HeaderValue::from_static(label),
    ));
    std::borrow::Cow::Owned(all)
}

/// How long this request waited on another request's fill, if it did.
pub fn lock_wait(session: &Session) -> Option<Duration> {
    session.cache.lock_duration()
}

/// Whether the response came out of the cache (not the upstream).
pub fn served_from_cache(session: &Session) -> bool {
    matches!(
        session.cache.phase(),
        CachePhase::Hit | CachePhase::Stale | CachePhase::StaleUpdating | CachePhase::Revalidated
    )
}
