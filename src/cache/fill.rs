//! Misses filled on the fast path: a tile nothing is stored for, asked for with a plain GET,
//! is fetched by the fast path's relay and stored on the way to the client, under the cache's
//! lock, so concurrent misses for it wait on this one fetch (on Pingora's cache phases, which
//! then find it stored). What needs more than storing a response as it comes — a stale or
//! varied object, a conditional, range or HEAD request, a tile another request is fetching —
//! stays with Pingora's cache phases.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use pingora_cache::key::HashBinary;
use pingora_cache::lock::LockStatus;
use pingora_cache::predictor::CacheablePredictor;
use pingora_cache::{CacheKey, NoCacheReason};
use pingora_http::ResponseHeader;

use super::policy::CacheRule;
use super::store::head::StoredHead;
use super::store::{Filling, Object, StoredMeta};
use super::TileCache;

/// The request as the upstream receives it: the client's head and the pipeline's upstream
/// edits (a varied answer is stored as the variant they ask for, see [`super::vary`]).
#[derive(Clone, Copy)]
pub struct Sent<'a> {
    pub req: &'a pingora_http::RequestHeader,
    pub edits: &'a [crate::pipeline::context::HeaderEdit],
}

/// A fetch this request makes for everyone: it holds the tile's lock until the response is
/// stored or known not to be.
pub struct Fill {
    cache: &'static TileCache,
    key: CacheKey,
    hash: HashBinary,
    permit: Option<super::lock::FastPermit>,
    rule: Arc<CacheRule>,
    filling: Option<Filling>,
    /// The store's count of purges when the request's step ran.
    seen: super::store::Seen,
    /// How the lock is released when the fill ends before it was stored.
    outcome: LockStatus,
    /// The `Vary` the answer judged lacks (see [`super::vary::missing_vary`]).
    lacks_vary: Option<&'static str>,
    /// Whether the response head was judged.
    decided: bool,
    /// Whether the answer judged was an OGC service exception (see [`super::exception`]).
    reported: bool,
}

/// Keys whose responses vary by request headers: their fills go through Pingora's cache
/// phases, which store each variant. A fixed table of fingerprints (a collision only sends a
/// key to the fast path once more, which finds it varies again).
static VARIED: [AtomicU64; 4096] = [const { AtomicU64::new(0) }; 4096];

fn fingerprint(hash: HashBinary) -> (usize, u64) {
    let hash = u128::from_be_bytes(hash);
    let fp = (hash as u64) | 1;
    ((hash >> 64) as usize % VARIED.len(), fp)
}

fn varies(hash: HashBinary) -> bool {
    let (slot, fp) = fingerprint(hash);
    VARIED[slot].load(Ordering::Relaxed) == fp
}

fn mark_varied(hash: HashBinary) {
    let (slot, fp) = fingerprint(hash);
    VARIED[slot].store(fp, Ordering::Relaxed);
}

/// Takes the tile's lock for a fetch on the fast path (`hash`: the key's); `None` when
/// Pingora's cache phases should serve the request (the key is known to vary or not to be
/// cacheable, or another request is fetching it). A tile missed fewer times than the step's
/// `minUses` is fetched for this request alone: without the lock, not stored.
pub fn begin(
    cache: &'static TileCache,
    key: CacheKey,
    hash: HashBinary,
    u: &super::CacheUse,
) -> Option<Fill> {
    let rule = &u.rule;
    if varies(hash) || !cache.predictor.cacheable_prediction(&key) {
        return None;
    }
    let stored = cache.stores_miss(hash, rule);
    let permit = match stored {
        true => Some(cache.lock.take(hash)?),
        false => None,
    };
    Some(Fill {
        cache,
        key,
        hash,
        permit,
        rule: rule.clone(),
        seen: u.epoch,
        filling: None,
        outcome: LockStatus::TransientError,
        lacks_vary: None,
        decided: false,
        reported: false,
    })
}

impl Fill {
    /// Decides from the upstream's response head whether the response is stored, and makes
    /// the client's head what Pingora's cache phases make of a miss: `X-Cache-Status: MISS`,
    /// and `Accept-Ranges: bytes` on a 200 of known length (it may be asked for in ranges).
    /// `map_request`: whether the request asks for a map or a tile (see [`Self::decide`]).
    pub fn head(
        &mut self,
        resp: &mut ResponseHeader,
        sent: Sent<'_>,
        map_request: impl FnOnce() -> bool,
    ) -> pingora_core::Result<()> {
        self.decide(resp, super::store::content_length(resp), sent, map_request);
        // Stored per variant from now on: this answer says what it varies by too.
        if let Some(vary) = self.lacks_vary {
            resp.append_header(http::header::VARY, vary)?;
        }
        resp.insert_header(super::X_CACHE_STATUS.clone(), "MISS")?;
        super::store::offer_ranges(resp)
    }

    /// Whether the tile may be stored by this fetch (not: it was missed fewer times than the
    /// step's `minUses`, or its answer was judged one not stored).
    pub fn stores(&self) -> bool {
        self.permit.is_some()
    }

    /// Whether the answer judged was an OGC service exception: relayed, not stored, and a
    /// failure of its url (passive health) where its endpoint counts them (see
    /// [`crate::upstream::attempt::answered`]).
    pub fn reported(&self) -> bool {
        self.reported
    }

    /// The head the client is answered from: the one being stored; `None` when the response
    /// is not stored.
    pub fn answer_head(&self) -> Option<&StoredHead> {
        self.filling.as_ref().and_then(Filling::head)
    }

    /// Whether the answer judged lacks a `Vary` (see [`super::vary::missing_vary`]), which
    /// [`Self::head`] gives it.
    pub fn lacks_vary(&self) -> bool {
        self.lacks_vary.is_some()
    }

    /// Decides from the upstream's response head whether the response is stored (once). One
    /// that will not be lets the requests waiting on the tile go on at once, not when its body
    /// has reached this client. `length`: its `Content-Length`. `map_request` (asked only for
    /// an XML answer): whether the request asks for a map or a tile (see [`super::exception`]).
    pub fn decide(
        &mut self,
        resp: &ResponseHeader,
        length: Option<usize>,
        sent: Sent<'_>,
        map_request: impl FnOnce() -> bool,
    ) {
        if std::mem::replace(&mut self.decided, true) {
            return;
        }
        self.judge(resp, length, sent, map_request);
        if self.filling.is_none() {
            self.release();
        }
    }

    /// The response judged broke off before its end and is asked of another url: the next
    /// one is judged afresh (while the lock is held; a fill that had let it go stores
    /// nothing).
    pub fn again(&mut self) {
        self.filling = None;
        self.decided = false;
        self.reported = false;
        self.outcome = LockStatus::TransientError;
    }

    fn judge(
        &mut self,
        resp: &ResponseHeader,
        length: Option<usize>,
        sent: Sent<'_>,
        map_request: impl FnOnce() -> bool,
    ) {
        if super::exception::is_service_exception(resp, map_request) {
            // Not stored, and the tile not remembered as one not to cache: the upstream's
            // failure, as a 5xx is.
            crate::metrics::metrics().upstream_error(crate::metrics::SERVICE_EXCEPTION);
            // The requests waiting on this fetch take their turns (see `super::lock`).
            self.outcome = LockStatus::TransientError;
            self.reported = true;
            return;
        }
        // A fill that stores nothing (a tile missed fewer times than `minUses`) has no more
        // to judge.
        if self.permit.is_none() {
            return;
        }
        let present = super::freshness::Present::of(&resp.headers);
        // (A content-coded answer that does not say it varies by `Accept-Encoding` does, and
        // one allowed to one web origin that does not say it varies by `Origin`: its variants
        // are stored with that `Vary` by Pingora's cache phases, and this answer says so.)
        // (Nothing is stored for the tile: no variant's `Vary` to keep.)
        self.lacks_vary = (present.content_encoding || present.allow_origin)
            .then(|| super::vary::missing_vary(&resp.headers, super::vary::Kept::default()))
            .flatten();
        let varies = present.vary || self.lacks_vary.is_some();
        if varies {
            // This answer is stored as the tile's first variant, as Pingora's cache phases
            // store one (the requests waiting on this fetch find it there, and a request for
            // another variant fetches and stores its own); the tile's later misses go
            // through those phases, which look its variants up.
            mark_varied(self.hash);
        }
        match super::freshness::judge_with(resp, &self.rule, &present) {
            Ok(fresh) => {
                if length.is_some_and(|n| n > self.rule.max_object_size) {
                    self.outcome = LockStatus::GiveUp;
                    return;
                }
                if !self.cache.admits(self.hash, length) {
                    // Requests that came to wait on this fetch after it was judged try again
                    // (one of them fetches and, the tile missed twice now, stores it).
                    self.outcome = LockStatus::TransientError;
                    return;
                }
                let not_stored = &super::store::head::NOT_STORED;
                let head = match self.lacks_vary {
                    None => StoredHead::of(resp, not_stored),
                    // (Stored with the `Vary` the answer is given.)
                    Some(vary) => {
                        let mut given = resp.clone();
                        if given.append_header(http::header::VARY, vary).is_err() {
                            self.outcome = LockStatus::TransientError;
                            return;
                        }
                        StoredHead::of(&given, not_stored)
                    }
                };
                let variance = varies
                    .then(|| {
                        let lines = resp.headers.get_all(http::header::VARY).iter();
                        let given = self.lacks_vary.map(str::as_bytes);
                        let lines = lines.map(|v| v.as_bytes()).chain(given);
                        super::vary::variance_of(lines, sent.req, sent.edits)
                    })
                    .flatten();
                let meta = StoredMeta::new(fresh, head).with_variance(variance);
                self.filling = Some(self.cache.store.filling(self.hash, meta, self.seen));
            }
            // The upstream failed: the requests waiting on this fetch take their turns.
            Err(_) if resp.status.is_server_error() => {
                self.outcome = LockStatus::TransientError;
            }
            Err(reason) => {
                self.cache.predictor.mark_uncacheable(&self.key, reason);
                self.outcome = LockStatus::GiveUp;
            }
        }
    }

    /// A piece of the body as it goes to the client; past the step's size limit the fill is
    /// given up.
    pub fn body(&mut self, data: &[u8]) {
        let Some(f) = &mut self.filling else {
            return;
        };
        if f.size() + data.len() > self.rule.max_object_size {
            self.give_up_too_large();
            return;
        }
        f.append(data);
        // Not to be stored (the fills under way hold the most memory they may): the requests
        // waiting on the tile go on now, not once this fill's client has read it all.
        if f.is_over() {
            self.filling = None;
            self.outcome = LockStatus::TransientError;
            self.release();
        }
    }

    fn give_up_too_large(&mut self) {
        self.filling = None;
        self.cache
            .predictor
            .mark_uncacheable(&self.key, NoCacheReason::ResponseTooLarge);
        self.outcome = LockStatus::GiveUp;
    }

    /// The whole body arrived as its framing says: the response is stored (when it may be)
    /// and the requests waiting on the lock go on. The stored object, when it was.
    pub fn complete(mut self) -> Option<Arc<Object>> {
        let mut f = self.filling.take()?;
        match f.store() {
            Ok(object) => {
                self.outcome = LockStatus::Done;
                Some(object)
            }
            Err(e) => {
                log::debug!("tile cache fill: {e}");
                None
            }
        }
    }
}

impl Fill {
    /// Lets the requests waiting on the tile go on, as `outcome` says.
    fn release(&mut self) {
        if let Some(permit) = self.permit.take() {
            permit.release(self.outcome);
        }
    }
}

impl Drop for Fill {
    fn drop(&mut self) {
        self.release();
    }
}
