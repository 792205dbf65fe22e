//! The tile store behind Pingora's cache phases: a memory tier, and optionally a disk tier
//! under it. A lookup tries memory, then disk (a disk hit is put back in memory); a fill is
//! written to memory when complete and to disk in the background. Only whole responses are
//! stored: a fill cut short (the upstream closed mid-body, the client left) is dropped.

pub mod disk;
mod filling;
pub mod head;
pub mod memory;
mod phases;
pub mod shared;
mod stream;

pub use filling::{FillBody, Filling};

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use bytes::{Bytes, BytesMut};
use pingora_cache::key::{CacheHashKey, HashBinary};
use pingora_cache::{CacheKey, CacheMeta};
use pingora_core::Result;
use pingora_http::ResponseHeader;

use disk::DiskTier;
use head::StoredHead;
use memory::MemoryTier;

/// A stored response's metadata, kept as parts so a hit rebuilds it without parsing.
pub struct StoredMeta {
    fresh_until: SystemTime,
    /// When the response was first stored, or its family of `Vary` variants began (Pingora's
    /// provenance): a revalidation or a refetch keeps it, and Pingora checks the tile's other
    /// variants against it ...
    created: SystemTime,
    /// ... and when it was stored or last revalidated: its age counts from here.
    updated: SystemTime,
    stale_while_revalidate: u32,
    stale_if_error: u32,
    variance: Option<HashBinary>,
    head: StoredHead,
}

impl StoredMeta {
    /// A fill's metadata: how long it stays fresh, and its stored head.
    pub fn new(f: super::freshness::Freshness, head: StoredHead) -> StoredMeta {
        StoredMeta {
            fresh_until: f.fresh_until,
            created: f.updated,
            updated: f.updated,
            stale_while_revalidate: f.stale_while_revalidate,
            stale_if_error: f.stale_if_error,
            variance: None,
            head,
        }
    }

    /// The same stored as the variant `variance` of its tile (in the tile's first place, as
    /// Pingora's cache phases store the first variant they fetch).
    pub fn with_variance(self, variance: Option<HashBinary>) -> StoredMeta {
        StoredMeta { variance, ..self }
    }

    pub fn from_meta(m: &CacheMeta) -> StoredMeta {
        StoredMeta {
            fresh_until: m.fresh_until(),
            // When the object's family (a `Vary` tile's variants) began, which Pingora carries
            // over a refetch of the same variant; it checks the other variants against it
            // (and sets it to `created` where the family starts anew).
            created: m.provenance(),
            // Pingora counts age and freshness from here (its `updated`, or the override
            // `to_meta` sets).
            updated: m.epoch(),
            stale_while_revalidate: m.stale_while_revalidate_sec(),
            stale_if_error: m.stale_if_error_sec(),
            variance: m.variance(),
            head: StoredHead::keep(m.response_header_copy()),
        }
    }

    pub fn to_meta(&self) -> Result<CacheMeta> {
        let mut m = CacheMeta::new(
            self.fresh_until,
            self.created,
            self.stale_while_revalidate,
            self.stale_if_error,
            self.head.header()?.clone(),
        );
        // Pingora's metadata takes one time for both; a revalidated object's age counts
        // from its revalidation.
        if self.updated != self.created {
            m.set_epoch_override(self.updated);
        }
        if let Some(v) = self.variance {
            m.set_variance(v);
        }
        Ok(m)
    }

    /// How old the object is at `now` (the age the upstream gave it plus the seconds since it
    /// was stored or revalidated), when it is fresh and does not vary by request headers;
    /// `None` otherwise.
    pub fn fresh_age(&self, now: SystemTime) -> Option<u64> {
        if self.fresh_until < now || self.variance.is_some() || self.head.varies() {
            return None;
        }
        let here = now.duration_since(self.updated).unwrap_or_default();
        Some(self.head.age().saturating_add(here.as_secs()))
    }

    /// The same with `Content-Length: len` in its head.
    fn with_length(mut self, len: usize) -> Result<StoredMeta> {
        let mut h = self.head.parse()?;
        h.insert_header(http::header::CONTENT_LENGTH, len)?;
        self.head = StoredHead::of(&h, &head::Skip::NONE);
        Ok(self)
    }

    /// The stored response head.
    pub fn head(&self) -> &StoredHead {
        &self.head
    }

    /// About how many bytes the header takes: serialised, and again as parts once Pingora's
    /// cache phases or the disk tier asked for them.
    pub fn header_size(&self) -> usize {
        2 * (self.head.wire_size() + 32)
    }
}

/// One stored response.
pub struct Object {
    pub key: HashBinary,
    pub meta: StoredMeta,
    pub body: Bytes,
    /// The disk tier's clock when a use of this object from memory was last told to it (see
    /// [`disk::DiskTier::used`]).
    disk_stamp: std::sync::atomic::AtomicU64,
}

impl Object {
    pub fn new(key: HashBinary, meta: StoredMeta, body: Bytes) -> Object {
        Object {
            key,
            meta,
            body,
            disk_stamp: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Which stored response this is (its copies in memory and on disk are the same one).
    pub fn found(&self) -> Found {
        Found(self.meta.updated, self.body.len())
    }
}

/// The object a lookup found (when it was stored or revalidated, and its body's length: the
/// same for its copies in memory and on disk), put in the metadata Pingora's cache phases
/// hand back when they revalidate it: the 304's update applies to that object's body only,
/// not to another stored under its key since (a HEAD's revalidation takes no lock, and a
/// GET's may overtake it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Found(SystemTime, usize);

pub struct TileStore {
    pub memory: MemoryTier,
    pub disk: Option<DiskTier>,
    /// Purges (shared with the disk tier): what a fetch, a disk read or a revalidation begun
    /// before or during a purge would store is not stored.
    purges: Arc<Purges>,
    /// Bytes the fills under way hold in ordinary memory (bodies the shared memory has no
    /// place for), and the most they may ([`FILLING_MAX_SHARE`] of the memory tier's budget,
    /// at least [`FILLING_MAX_LEAST`]): see [`Filling::append`].
    pub(super) filling_bytes: std::sync::atomic::AtomicUsize,
    pub(super) filling_max: usize,
    /// Fills not stored because the fills under way held [`Self::filling_max`].
    pub(super) fills_over: std::sync::atomic::AtomicU64,
}

/// The share of the memory tier's budget the fills under way may hold besides it (a quarter).
const FILLING_MAX_SHARE: usize = 4;
/// The least the fills under way may hold: the largest `maxObjectSize` (60 MiB) fits.
const FILLING_MAX_LEAST: usize = 64 << 20;

/// The store's count of purges when a request's fetch began ([`TileStore::epoch`]), put in
/// the metadata of its answer for the storage calls Pingora makes with it.
#[derive(Clone, Copy, Debug)]
pub struct Begun(pub Seen);

/// The store's purges, as a count each side of them: work that began when no purge was under
/// way stores its object only if none began since. And its invalidations (an unsafe request's
/// URL, RFC 9111 §4.4), by tile: what a fetch begun before one of its tile's would store is
/// not stored, nor what a disk read begun while one was under way found.
pub struct Purges {
    begun: AtomicU64,
    ended: AtomicU64,
    /// Invalidations begun so far: each one's number.
    invalidations: AtomicU64,
    /// Per slot of tiles (by key), the number of the last invalidation begun of one of them
    /// ...
    invalidated: Box<[AtomicU64]>,
    /// ... and how many of them are under way.
    invalidating: Box<[AtomicU64]>,
    /// Orders a purge's start, and an invalidation's, with the disk tier putting a file in
    /// place.
    order: std::sync::Mutex<()>,
}

/// Slots of [`Purges`]' invalidations: tiles that share one (by chance) share their
/// invalidations, which only costs a fetch begun before one of them its store.
const INVALIDATION_SLOTS: usize = 4096;

/// When work that may store began ([`TileStore::epoch`]): the purges and the invalidations
/// begun so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Seen {
    purges: u64,
    invalidations: u64,
}

/// [`Seen::purges`] while a purge is under way.
const PURGING: u64 = u64::MAX;

impl Default for Purges {
    fn default() -> Purges {
        let slots = || (0..INVALIDATION_SLOTS).map(|_| AtomicU64::new(0)).collect();
        Purges {
            begun: AtomicU64::new(0),
            ended: AtomicU64::new(0),
            invalidations: AtomicU64::new(0),
            invalidated: slots(),
            invalidating: slots(),
            order: std::sync::Mutex::new(()),
        }
    }
}

fn invalidation_slot(key: &HashBinary) -> usize {
    u128::from_le_bytes(*key) as usize % INVALIDATION_SLOTS
}

impl Purges {
    /// Taken when work that will store begins: the purges begun so far (or [`PURGING`]), and
    /// the invalidations.
    pub fn epoch(&self) -> Seen {
        let invalidations = self.invalidations.load(Ordering::Acquire);
        // Ended first: equal counts mean no purge was under way when the begun one was read.
        let ended = self.ended.load(Ordering::Acquire);
        let begun = self.begun.load(Ordering::Acquire);
        let purges = if begun == ended { begun } else { PURGING };
        Seen {
            purges,
            invalidations,
        }
    }

    /// Whether what work begun at `seen` would store under `key` must not be stored now: a
    /// purge was under way then or began since, or an invalidation of the tile is under way
    /// or began since.
    pub fn since(&self, seen: Seen, key: &HashBinary) -> bool {
        let slot = invalidation_slot(key);
        seen.purges == PURGING
            || self.begun.load(Ordering::Acquire) != seen.purges
            || self.invalidating[slot].load(Ordering::Acquire) > 0
            || self.invalidated[slot].load(Ordering::Acquire) > seen.invalidations
    }

    /// Whether an invalidation of the tile under `key` is under way: a file read now may be
    /// the one it removes.
    pub fn invalidating(&self, key: &HashBinary) -> bool {
        self.invalidating[invalidation_slot(key)].load(Ordering::Acquire) > 0
    }

    /// Held while the disk tier puts a file in place: a purge begins wholly before or after.
    pub fn order(&self) -> std::sync::MutexGuard<'_, ()> {
        self.order.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Begins a purge; it ends when the guard is dropped (also when its task is cancelled).
    fn begin(&self) -> PurgeUnderWay<'_> {
        let _order = self.order();
        self.begun.fetch_add(1, Ordering::AcqRel);
        PurgeUnderWay(self)
    }

    /// Begins an invalidation of the tile under `key`; it ends when the guard is dropped.
    fn invalidate(&self, key: &HashBinary) -> InvalidationUnderWay<'_> {
        let slot = invalidation_slot(key);
        let _order = self.order();
        self.invalidating[slot].fetch_add(1, Ordering::AcqRel);
        let n = self.invalidations.fetch_add(1, Ordering::AcqRel) + 1;
        self.invalidated[slot].fetch_max(n, Ordering::AcqRel);
        InvalidationUnderWay(self, slot)
    }
}

struct PurgeUnderWay<'a>(&'a Purges);

impl Drop for PurgeUnderWay<'_> {
    fn drop(&mut self) {
        self.0.ended.fetch_add(1, Ordering::AcqRel);
    }
}

struct InvalidationUnderWay<'a>(&'a Purges, usize);

impl Drop for InvalidationUnderWay<'_> {
    fn drop(&mut self) {
        self.0.invalidating[self.1].fetch_sub(1, Ordering::AcqRel);
    }
}

/// The most a fill reserves ahead from a declared length.
const MAX_RESERVE: usize = 64 * 1024 * 1024;

/// The `Content-Length` of `h`: its first line, digits only (around them spaces and tabs),
/// within `usize`. (On every miss, several times: no UTF-8 check, no Unicode trim.)
pub(crate) fn content_length(h: &ResponseHeader) -> Option<usize> {
    let v = h
        .headers
        .get(http::header::CONTENT_LENGTH)?
        .as_bytes()
        .trim_ascii();
    if v.is_empty() || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    v.iter().try_fold(0usize, |n, d| {
        n.checked_mul(10)?.checked_add(usize::from(d - b'0'))
    })
}

/// Whether a whole response of this status and length is offered in ranges: a 200 of known
/// length (a hit says `Accept-Ranges: bytes` then, whatever the upstream said).
pub(crate) fn offers_ranges(status: http::StatusCode, content_length: Option<usize>) -> bool {
    status == http::StatusCode::OK && content_length.is_some()
}

/// Says `Accept-Ranges: bytes` on a 200 of known length: a whole response the cache holds may
/// be asked for in ranges (as nginx says, and Pingora's cache phases, on hits and fills).
pub(crate) fn offer_ranges(h: &mut ResponseHeader) -> Result<()> {
    if offers_ranges(h.status, content_length(h)) {
        h.insert_header(http::header::ACCEPT_RANGES, "bytes")?;
    }
    Ok(())
}

fn slot(key: &CacheKey) -> HashBinary {
    key.combined_bin()
}

/// What one tier holds.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct TierState {
    pub objects: u64,
    pub bytes: u64,
    pub budget: u64,
    pub evictions: u64,
}

impl TileStore {
    pub fn new(memory: MemoryTier, disk: Option<DiskTier>) -> TileStore {
        let purges = disk
            .as_ref()
            .map_or_else(Default::default, DiskTier::purges);
        TileStore {
            filling_max: (memory.budget() / FILLING_MAX_SHARE).max(FILLING_MAX_LEAST),
            memory,
            disk,
            purges,
            filling_bytes: Default::default(),
            fills_over: Default::default(),
        }
    }

    /// Taken when a fetch begins, for [`Self::filling`] (see [`Purges::epoch`]).
    pub fn epoch(&self) -> Seen {
        self.purges.epoch()
    }

    /// When the fetch whose answer `meta` is began, as [`Self::epoch`]: carried in the
    /// metadata Pingora's cache phases hand back (see [`Begun`]); now, for metadata without.
    fn begun(&self, meta: &CacheMeta) -> Seen {
        meta.extensions()
            .get::<Begun>()
            .map_or_else(|| self.epoch(), |b| b.0)
    }

    /// Whether work begun at `seen` ([`Self::epoch`]) must store nothing under `key`: a purge
    /// was under way then, or began since, or an invalidation of the tile did.
    pub fn purged_since(&self, seen: Seen, key: &HashBinary) -> bool {
        self.purges.since(seen, key)
    }

    /// Puts an object in memory unless a purge, or an invalidation of its tile, began after
    /// `seen`; whether it is there.
    fn keep_in_memory(&self, obj: Arc<Object>, seen: Seen) -> bool {
        let key = obj.key;
        if self.purges.since(seen, &key) {
            return false;
        }
        self.memory.put(obj);
        // A purge or an invalidation between the look and the put: taken out again.
        if self.purges.since(seen, &key) {
            self.memory.remove(&key);
            return false;
        }
        true
    }

    /// Fills not stored so far because the fills under way held the most ordinary memory
    /// they may.
    pub fn fills_over(&self) -> u64 {
        self.fills_over.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Memory, then disk (zeros when there is no disk tier).
    pub fn tiers(&self) -> [TierState; 2] {
        use std::sync::atomic::Ordering::Relaxed;
        let m = &self.memory;
        let memory = TierState {
            objects: m.stored_objects.load(Relaxed),
            bytes: m.stored_bytes.load(Relaxed),
            budget: m.budget() as u64,
            evictions: m.evictions.load(Relaxed),
        };
        let disk = self.disk.as_ref().map_or(
            TierState {
                objects: 0,
                bytes: 0,
                budget: 0,
                evictions: 0,
            },
            |d| TierState {
                objects: d.stored_objects.load(Relaxed),
                bytes: d.stored_bytes.load(Relaxed),
                budget: d.budget(),
                evictions: d.evictions.load(Relaxed),
            },
        );
        [memory, disk]
    }

    /// Damaged disk files found so far.
    pub fn damaged(&self) -> u64 {
        self.disk
            .as_ref()
            .map_or(0, |d| d.corrupt.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// Objects not written to disk because the disk was behind (see [`disk::DiskTier::put`]).
    pub fn disk_skipped(&self) -> u64 {
        self.disk
            .as_ref()
            .map_or(0, |d| d.skipped.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// Disk writes that failed (see [`disk::DiskTier::write`]).
    pub fn disk_failed(&self) -> u64 {
        self.disk
            .as_ref()
            .map_or(0, |d| d.failed.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// Starts collecting a response to store under `key`; `seen`: [`Self::epoch`] when its
    /// fetch began (a purge since, and it is not stored).
    pub fn filling(&'static self, key: HashBinary, meta: StoredMeta, seen: Seen) -> Filling {
        // A body of known length gets exactly its room (growing by doubling would keep up to
        // twice the tile's size in memory for as long as it is cached).
        let declared = meta.head.content_length().unwrap_or(0);
        let body = match self.memory.writing(declared) {
            Some(w) => FillBody::Shared(w),
            None => FillBody::Heap(BytesMut::with_capacity(declared.min(MAX_RESERVE))),
        };
        let room_refused = declared > 0 && matches!(body, FillBody::Heap(_));
        Filling {
            store: self,
            key,
            meta: Some(meta),
            body,
            seen,
            room_refused,
            held: 0,
            over: false,
        }
    }

    /// Removes what is stored under `key` without counting a purge (an unsafe request's URL,
    /// RFC 9111 §4.4): fills of other tiles under way go on storing, those of this one begun
    /// before store nothing. Whether anything was stored.
    pub async fn invalidate(&'static self, key: &CacheKey) -> bool {
        let k = slot(key);
        let _under_way = self.purges.invalidate(&k);
        let in_memory = self.memory.remove(&k);
        let on_disk = match &self.disk {
            Some(d) => d.invalidate(&k).await.unwrap_or_else(|e| {
                // Not served by this process; the next start would find it again.
                log::warn!("tile cache: an invalidated tile stays on disk: {e}");
                true
            }),
            None => false,
        };
        in_memory || on_disk
    }

    /// The object stored under a key's hash (`CacheKey::combined_bin`), from memory or (then
    /// kept in memory) from disk.
    pub async fn find(&'static self, k: HashBinary) -> Option<Arc<Object>> {
        if let Some(o) = self.memory.get(&k) {
            // A tile hit in memory is in use on disk too: its file is not the next to go.
            if let Some(d) = &self.disk {
                d.used(&o);
            }
            return Some(o);
        }
        let disk = self.disk.as_ref()?;
        // Taken first: an invalidation that begins after the look below is one begun since.
        let seen = self.epoch();
        // The file may be the one an invalidation under way removes: a miss.
        if self.purges.invalidating(&k) {
            return None;
        }
        let mut obj = disk.get(k).await?;
        if let Some(shared) = self.memory.hold(&obj.body) {
            obj.body = shared;
        }
        let obj = Arc::new(obj);
        // Perhaps this very tile was purged while it was read: a miss, kept nowhere.
        self.keep_in_memory(obj.clone(), seen).then_some(obj)
    }
}

/// A fixed sequence of numbers for the tests (xorshift from `seed`).
#[cfg(test)]
pub(crate) fn xorshift(mut state: u64) -> impl FnMut() -> u64 {
    move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    }
}

#[cfg(test)]
pub(crate) mod tests;
