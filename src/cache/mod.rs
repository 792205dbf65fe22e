//! The shared tile cache: authentication and scopes before it, one copy for all consumers.
//!
//! A pipeline's `cache` step ([`policy`]) marks a request as one the cache may answer; the
//! proxy phases then call in here: [`enable`] (Pingora's `request_cache_filter`), [`key()`]
//! (`cache_key_callback`), [`cacheable`] (`response_cache_filter`), [`variance`]
//! (`cache_vary_filter`), [`hit_filter`] (`cache_hit_filter`), [`serve_stale`]
//! (`should_serve_stale`) and [`status`] (the `X-Cache-Status` header). The fast path answers
//! fresh hits itself ([`hit`]) and fills plain misses ([`fill`]). Objects live in a
//! [`store::TileStore`]: memory (TinyUFO) and optionally disk; stale tiles being refreshed or
//! just failed in [`outage`]. This module is the only place that knows `pingora-cache`.

pub mod exception;
pub mod fill;
pub mod forwarding;
pub mod freshness;
pub mod generations;
pub mod hit;
pub mod key;
mod lock;
pub mod outage;
mod outcome;
pub mod policy;
pub mod purge;
mod records;
mod revalidate;
pub mod sightings;
pub mod store;
mod vary;
mod verdict;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use pingora_cache::key::HashBinary;
use pingora_cache::lock::CacheKeyLockImpl;
use pingora_cache::predictor::Predictor;
use pingora_cache::{CacheKey, CacheMeta, CacheOptionOverrides};
use pingora_core::{Error, ErrorType, Result};
use pingora_proxy::Session;

pub use outcome::{
    answer_edits, exception_as_failure, failed, filling, hit_filter, lock_wait, note_expired,
    note_miss, refresh_broke, serve_stale, served_from_cache, served_from_store, status,
};
pub use policy::{CacheRule, CacheUse};
pub use records::{keep_records, save_forwardings};
pub use verdict::{add_upstream_age, cacheable, drop_other_validator, not_modified, vary_of_304};
use verdict::{DECLINED, FAILED, HEAD_REQUEST, NOT_YET, OTHER_VALIDATOR, PURGED};

use crate::gateway::Gateway;
use crate::pipeline::Exchange;
use lock::TileLock;
use store::TileStore;

/// Where the tile store keeps objects.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// The memory tier's byte budget.
    pub memory: usize,
    /// The disk tier: a directory and its byte budget.
    pub disk: Option<(PathBuf, u64)>,
}

/// The header that tells a client where its response came from.
pub static X_CACHE_STATUS: http::header::HeaderName =
    http::header::HeaderName::from_static("x-cache-status");

/// The process's tile cache.
pub struct TileCache {
    pub store: &'static TileStore,
    lock: &'static TileLock,
    predictor: &'static Predictor<16>,
    /// Per api endpoint: purging all of it starts a new generation, part of its keys.
    pub endpoints: generations::Generations,
    /// The same per path prefix (a layer): part of the keys of the URLs under it.
    pub prefixes: generations::Generations,
    pub options: StoreOptions,
    /// Stale tiles being refreshed, and tiles whose upstream has just failed them.
    pub outages: outage::Outages,
    /// How often tiles nothing is stored for were asked for lately (a step's `minUses`, and
    /// admission to a full memory tier).
    sightings: sightings::Sightings,
    /// Misses not stored because the memory tier was full and the tile new.
    declined: AtomicU64,
    /// The combinations of forwarding headers requests sent, for purges.
    pub forwarding: forwarding::Seen,
    /// Where the combinations are kept across restarts (with the disk tier, whose copies
    /// they name).
    forwarding_file: Option<PathBuf>,
}

static CACHE: OnceLock<TileCache> = OnceLock::new();

/// How long a fill may hold an object's lock before others stop waiting on it.
const LOCK_AGE: Duration = Duration::from_secs(30);
/// How many times a request waiting on a tile's fetch looks again after one failed (see
/// [`enable`]'s use): more than any tile's waiters, the wait itself bounded by `lockTimeout`.
const LOCK_RETRIES: usize = 10_000;

/// Whether the disk tier's directory, if there is one, can be used (see
/// [`store::disk::DiskTier::usable`]).
pub fn disk_usable(opts: &StoreOptions) -> anyhow::Result<()> {
    match &opts.disk {
        Some((dir, _)) => store::disk::DiskTier::usable(dir)
            .map_err(|e| anyhow::anyhow!("tile cache directory {}: {e}", dir.display())),
        None => Ok(()),
    }
}

/// Beside a disk tier: says both purge records were written (see [`init`]).
pub(crate) const RECORDS_KEPT: &str = "records.kept";

/// Opens the store (and the disk tier's index); called once at start.
pub fn init(opts: &StoreOptions) -> anyhow::Result<&'static TileCache> {
    // (A path that is no directory is said so, not read as damaged records.)
    disk_usable(opts)?;
    if let Some(c) = CACHE.get() {
        return Ok(c);
    }
    // The purges' records, read before the disk tier opens: a record that cannot be read
    // says nothing of the purges its tiles went through, so they go (with the secret their
    // files are named by).
    let record = |name: &str| opts.disk.as_ref().map(|(d, _)| d.join(name));
    // Where the marker is, both records were written (by this version, at the directory's
    // first start): one missing was removed. A directory of an earlier version, which wrote
    // each only at its first purge, has none, and its tiles stay.
    let expected = opts.disk.as_ref().is_some_and(|(d, _)| {
        !matches!(std::fs::symlink_metadata(d.join(RECORDS_KEPT)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound)
    });
    let (endpoints, endpoints_damaged) =
        generations::Generations::open(record("generations.json"), false, expected);
    let (prefixes, prefixes_damaged) =
        generations::Generations::open(record("prefixes.json"), true, expected);
    if let (true, Some((dir, _))) = (endpoints_damaged || prefixes_damaged, &opts.disk) {
        let _ = std::fs::remove_file(dir.join(store::disk::SECRET_FILE));
    }
    if endpoints_damaged {
        endpoints.record_afresh();
    }
    if prefixes_damaged {
        prefixes.record_afresh();
    }
    // Both records, then the marker, before the secret and any tile: a process starting on
    // the directory at once finds the marker only with the records beside it.
    endpoints.record_if_missing();
    prefixes.record_if_missing();
    if let (false, Some((dir, _))) = (expected, &opts.disk) {
        records::mark_kept(dir);
    }
    let disk = match &opts.disk {
        Some((dir, budget)) => Some(
            store::disk::DiskTier::open(dir, *budget)
                .map_err(|e| anyhow::anyhow!("tile cache directory {}: {e}", dir.display()))?,
        ),
        None => None,
    };
    // Keys are hashed with the disk tier's secret (its files are named by them), else with
    // one drawn now, before any request is served.
    let secret = match &disk {
        Some(tier) => tier.secret,
        None => key::new_secret()
            .map_err(|e| anyhow::anyhow!("tile cache: no random source for its key hash: {e}"))?,
    };
    if !key::use_secret(secret) {
        anyhow::bail!("the tile cache's keys were hashed before its storage opened");
    }
    let store: &'static TileStore = Box::leak(Box::new(TileStore::new(
        store::memory::MemoryTier::new(opts.memory),
        disk,
    )));
    let lock: &'static TileLock = Box::leak(Box::new(TileLock::new(LOCK_AGE)));
    // Do not remember a key as uncacheable for a status the step does not store (an error
    // now is no reason to stop caching the tile later).
    let predictor: &'static Predictor<16> = Box::leak(Box::new(Predictor::new(
        1024,
        Some(|reason| {
            reason == "status"
                || reason == NOT_YET
                || reason == DECLINED
                || reason == FAILED
                || reason == PURGED
                || reason == HEAD_REQUEST
                || reason == OTHER_VALIDATOR
                || reason == exception::SERVICE_EXCEPTION
        }),
    )));
    let cache = TileCache {
        store,
        lock,
        predictor,
        endpoints,
        prefixes,
        options: opts.clone(),
        outages: outage::Outages::default(),
        sightings: sightings::Sightings::new(store::memory::typical_objects(
            opts.memory
                .saturating_add(opts.disk.as_ref().map_or(0, |(_, budget)| {
                    usize::try_from(*budget).unwrap_or(usize::MAX)
                })),
        )),
        declined: AtomicU64::new(0),
        forwarding: forwarding::Seen::default(),
        forwarding_file: opts
            .disk
            .as_ref()
            .map(|(d, _)| d.join(records::FORWARDING_FILE)),
    };
    if let Some(f) = &cache.forwarding_file {
        cache.forwarding.restore(records::read_forwardings(f));
    }
    Ok(CACHE.get_or_init(|| cache))
}

/// The tile cache, when the gateway opened one.
pub fn get() -> Option<&'static TileCache> {
    CACHE.get()
}

impl TileCache {
    /// One line for the log at start.
    pub fn describe(&self) -> String {
        let mut s = format!("tile cache: memory {} MiB", self.options.memory >> 20);
        if let (Some((dir, budget)), Some(d)) = (&self.options.disk, &self.store.disk) {
            s.push_str(&format!(
                ", disk {} ({} MiB, {} objects in it)",
                dir.display(),
                budget >> 20,
                d.stored_objects.load(std::sync::atomic::Ordering::Relaxed)
            ));
        }
        s
    }

    /// Counts a miss of the tile whose key hashes to `hash`; whether it may be stored this
    /// time (the step's `minUses` reached).
    pub fn stores_miss(&self, hash: HashBinary, rule: &CacheRule) -> bool {
        self.sightings.sighted(hash) >= rule.min_uses
    }

    /// Whether a miss's response, `len` bytes of body (`None`: not known yet), is stored now:
    /// always while the memory tier has room for it; once the tier is full (storing it would
    /// push others out), only when the tile was missed before — by an earlier request, or by
    /// one now waiting on this fetch. A tile asked for once then costs no write and pushes
    /// nothing out: a scan, a crawler, a map panned across leave the tier as they found it.
    pub fn admits(&self, hash: HashBinary, len: Option<usize>) -> bool {
        let len = len.unwrap_or(store::memory::TYPICAL_OBJECT);
        if self.store.memory.has_room(len) || self.sightings.count(hash) >= 2 {
            return true;
        }
        self.declined.fetch_add(1, Ordering::Relaxed);
        false
    }

    /// Misses not stored so far because the memory tier was full and the tile new.
    pub fn declined(&self) -> u64 {
        self.declined.load(Ordering::Relaxed)
    }
}

/// Turns the cache on for a request whose pipeline went through a `cache` step: GET and HEAD
/// only. A fill fetches for every consumer, so it carries no consumer's credentials upstream.
pub fn enable(session: &mut Session, x: &mut Exchange) {
    let (Some(cache), Some(u)) = (get(), &x.cache) else {
        return;
    };
    let method = session.req_header().method.clone();
    if method != http::Method::GET && method != http::Method::HEAD {
        return;
    }
    // A GET with a body: it goes upstream with it, and the key holds no body — the answer
    // made for it would be stored as everyone's. (HTTP/2 says so by the stream not ending
    // with the head.)
    if !session.as_downstream_mut().is_body_empty() {
        return;
    }
    if forwarding::of(&session.req_header().headers, &u.rule).is_err() {
        return; // not cached: see [`forwarding::MAX_PART`]
    }
    let rule = u.rule.clone();
    let mut overrides = CacheOptionOverrides::default();
    overrides.wait_timeout = Some(rule.lock_timeout);
    // A waiter whose fetch failed or was declined looks again and waits on the next fetch,
    // as often as it takes: its waits together end at `lockTimeout` (Pingora counts each
    // from what the earlier ones took), so the waiters of an upstream that fails every
    // request take their turns as with nginx's `proxy_cache_lock`, never all at once.
    overrides.max_lock_retries = Some(LOCK_RETRIES);
    // A HEAD's miss takes no lock: it stores nothing (see [`keep_head`]), and a lock left
    // held made the tile's GETs wait `lockTimeout` each, for the lock's age. A HEAD is
    // answered from what is stored.
    let lock = (method == http::Method::GET).then_some(cache.lock as &'static CacheKeyLockImpl);
    session.cache.enable(
        cache.store,
        None,
        Some(cache.predictor),
        lock,
        Some(overrides),
    );
    session.cache.set_max_file_size_bytes(rule.max_object_size);
    neutral_fill(x);
}

/// A HEAD goes upstream as a HEAD. Pingora's cache phases make it a GET, to store the body;
/// but a HEAD's answer ends at its head, and whether the body had come by then was a matter of
/// timing — so a HEAD stores nothing (a revalidation's `304` still updates the tile, see
/// [`cacheable`]), and asks the upstream for no body.
pub fn keep_head(session: &Session, upstream: &mut pingora_http::RequestHeader) {
    if session.req_header().method == http::Method::HEAD && session.cache.enabled() {
        upstream.set_method(http::Method::HEAD);
    }
}

/// Makes the upstream request of a fill neutral: it fetches for every consumer, so its path
/// carries no credentials (the headers that do are left out by the upstream request) and only
/// the query parameters that make the key (see [`key::neutral`]).
pub fn neutral_fill(x: &mut Exchange) {
    let Some(u) = &x.cache else {
        return;
    };
    if let Some(plan) = &mut x.proxy {
        plan.make_neutral(u.rule.clone());
    }
}

/// Whether what the upstream answers this request may be stored (its upstream request is
/// made neutral): the cache is on for it, or bypassed for a tile that was not cacheable the
/// last time — Pingora stores its answer when it now is.
pub fn active(session: &Session) -> bool {
    session.cache.enabled() || session.cache.bypassing()
}

/// The request's cache key.
pub fn key(session: &Session, x: &Exchange) -> Result<CacheKey> {
    let (Some(u), Some(_)) = (&x.cache, &x.proxy) else {
        return Error::e_explain(ErrorType::InternalError, "cache key without a cache step");
    };
    // As routing takes it: `Host`, else the target's authority (HTTP/2's `:authority`).
    let req = session.req_header();
    let client_host = req
        .headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri.authority().map(|a| a.as_str()));
    let Ok(forwarding) = forwarding_of(&req.headers, &u.rule) else {
        // (Not reached: [`enable`] turned the cache on only for a request that is keyable.)
        return Error::e_explain(
            ErrorType::InternalError,
            "cache key of an unkeyable request",
        );
    };
    Ok(key::cache_key(primary_of(
        x,
        req.uri.path(),
        client_host,
        forwarding.as_deref(),
    )))
}

/// The part of a request's key its forwarding headers make (see [`forwarding`]), noted for
/// purges; `Err` for one that is not cached (see [`forwarding::MAX_PART`]).
pub(crate) fn forwarding_of(
    headers: &http::HeaderMap,
    rule: &CacheRule,
) -> Result<Option<String>, forwarding::Unkeyable> {
    let part = forwarding::of(headers, rule)?;
    if let (Some(c), Some(part)) = (get(), &part) {
        c.forwarding.record(part);
    }
    Ok(part)
}

/// The primary key text of a request that went through a `cache` and a `proxy` step, with
/// its forwarding headers' part (see [`forwarding_of`]) and the purges of its api endpoint and
/// of the prefixes of its path as the client sent it (`client_path`), read now: a purge that
/// has answered is in the key of every request that looks up after it.
pub(crate) fn primary_of(
    x: &Exchange,
    client_path: &str,
    client_host: Option<&str>,
    forwarding: Option<&str>,
) -> String {
    let (Some(u), Some(plan)) = (&x.cache, &x.proxy) else {
        return String::new();
    };
    // The client's Host reaches the upstream (no changeOrigin): the answer may depend on it.
    let host = if plan.host.is_some() {
        None
    } else {
        client_host
    };
    let mut prefixes = String::new();
    let endpoint = match (get(), &x.endpoint) {
        (Some(c), Some(ep)) => {
            c.prefixes.prefixes_of(client_path, &mut prefixes);
            (&*ep.name, c.endpoints.of(&ep.name))
        }
        _ => ("", 0),
    };
    // Every header a step before the proxy and the proxy step itself set reaches the upstream:
    // all are in the key (wherever the `cache` step stands among them).
    let edits = &x.upstream_edits[..plan.edits_in_key.min(x.upstream_edits.len())];
    key::primary_at(
        &plan.endpoint.cache_name,
        host,
        forwarding,
        (&plan.path, plan.query_at()),
        edits,
        &u.rule,
        key::Purged {
            prefixes: &prefixes,
            endpoint,
        },
    )
}

/// An upstream's answer to a request through a `cache` step is given the `Vary` it lacks (see
/// [`vary::missing_vary`]).
pub fn add_missing_vary(x: &Exchange, resp: &mut pingora_http::ResponseHeader) {
    if let Some(u) = &x.cache {
        vary::add_missing_vary(resp, u.stored_varies);
    }
}

/// The variant of the tile a request wants (Pingora's `cache_vary_filter`, given the stored
/// variant's head `meta`), noting the `Vary` names of the gateway's it holds (see
/// [`vary::Kept`]).
pub fn variance(
    meta: &CacheMeta,
    req: &pingora_http::RequestHeader,
    x: &mut Exchange,
) -> Option<HashBinary> {
    if let Some(u) = &mut x.cache {
        u.stored_varies = vary::Kept::of(meta);
    }
    vary::variance(meta, req, &x.upstream_edits)
}

/// Removes what is stored for the request's key.
pub async fn forget(session: &Session) {
    if let (Some(cache), Some(key)) = (get(), session.cache.maybe_cache_key()) {
        cache.store.invalidate(key).await;
    }
}

/// A non-error answer (2xx, 3xx) to an unsafe request (POST, PUT, DELETE, PATCH...) through a
/// `cache` step invalidates what is stored for its URL (RFC 9111 §4.4): the request's own key
/// and a GET's without forwarding headers at once (the next GET fetches it anew), the copies
/// of the forwarding headers' combinations in the background (see [`purge::invalidate_url`]).
pub async fn invalidate_after(
    session: &Session,
    gateway: &arc_swap::ArcSwap<Gateway>,
    x: &Exchange,
    status: http::StatusCode,
) {
    let (Some(cache), Some(_), Some(_)) = (get(), &x.cache, &x.proxy) else {
        return;
    };
    let req = session.req_header();
    if req.method.is_safe() || !(status.is_success() || status.is_redirection()) {
        return;
    }
    if let Ok(key) = key(session, x) {
        cache.store.invalidate(&key).await;
    }
    let target = crate::exchange::RequestTarget::of(req);
    let host = req.headers.get(http::header::HOST);
    let host = host.and_then(|h| h.to_str().ok()).or(target.authority);
    // In the form requests are keyed in (`//t/%41.png` is `/t/A.png`).
    let url = crate::wire::normalised_target(target.url);
    let url = url.as_deref().unwrap_or(target.url);
    purge::invalidate_url(gateway.load_full(), host, url).await;
}
