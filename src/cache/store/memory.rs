//! The memory tier: objects in TinyUFO (TinyLFU admission, S3-FIFO eviction) within a byte
//! budget. Admission resists one-off scans: a tile seen once does not push out tiles seen
//! often. TinyUFO keys by a 64-bit hash, so each object keeps its full key and a hit compares it.
//! Tile-sized bodies live in shared memory ([`super::shared`]), so a hit is sent from it by
//! `sendfile`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard};

use pingora_cache::key::HashBinary;
use tinyufo::TinyUfo;

use bytes::Bytes;

use super::shared::{FileRange, SharedBodies};
use super::Object;

/// Weight is counted in units of this many bytes (TinyUFO weighs in 16 bits).
const UNIT: usize = 1024;
/// Bytes counted for an object beyond its body and header: its entry, key and bookkeeping.
const OVERHEAD: usize = 512;
/// The body size the budget is sized for (a typical tile).
pub const TYPICAL_OBJECT: usize = 16 * 1024;

/// Bytes counted for a typical tile's stored head (serialised and as parts).
const TYPICAL_HEAD: usize = 640;

/// What an object weighs in units: its body (by its footprint), head and bookkeeping.
fn units(body: usize, head: usize) -> usize {
    body.saturating_add(head + OVERHEAD).div_ceil(UNIT)
}

/// Stripes of keys whose stores and removals take turns.
const TURNS: usize = 64;

/// What a removed object's place holds. TinyUFO's own removal leaves the key in its queue:
/// stored again, the key is queued twice, and the second eviction takes its weight off again
/// (the count wraps: an overflow panic in a debug build; in a release one the tier believes
/// itself over its budget and pushes out everything it stores). Replacing an object where it
/// stands (what TinyUFO's put does with a key it holds) keeps one queue entry per key.
static REMOVED: LazyLock<Arc<Object>> = LazyLock::new(|| {
    let resp = pingora_http::ResponseHeader::from(http::Response::new(()).into_parts().0);
    let epoch = std::time::SystemTime::UNIX_EPOCH;
    let fresh = crate::cache::freshness::Freshness {
        fresh_until: epoch,
        updated: epoch,
        stale_while_revalidate: 0,
        stale_if_error: 0,
    };
    let meta = super::StoredMeta::new(fresh, super::head::StoredHead::keep(resp));
    Arc::new(Object::new([0xff; 16], meta, Bytes::new()))
});

/// Bodies in ordinary memory at least this long are held through a [`Slot`].
const LARGE: usize = 64 * 1024;

/// What TinyUFO holds for an object. An object TinyUFO lets go (pushed out, replaced,
/// removed) stays in its maps until their memory reclamation (`seize`) frees it, in batches
/// of 120 removals per thread: a large body in ordinary memory (a WMS image of a few MiB) was
/// held that long, and with such objects going through, the process grew by 120 of them per
/// thread past the budget (a probe: 900 MB of 7 MiB images through a 64 MiB tier). Held
/// through a slot, it is dropped as it goes (a request that found it just before reads a
/// miss), and only the empty slot waits.
#[derive(Clone)]
enum Held {
    Object(Arc<Object>),
    Large(Arc<Slot>),
}

/// A large object's place: emptied when TinyUFO lets it go.
struct Slot {
    key: HashBinary,
    object: Mutex<Option<Arc<Object>>>,
}

impl Held {
    fn of(obj: Arc<Object>, in_shared_memory: bool) -> Held {
        if obj.body.len() >= LARGE && !in_shared_memory {
            Held::Large(Arc::new(Slot {
                key: obj.key,
                object: Mutex::new(Some(obj)),
            }))
        } else {
            Held::Object(obj)
        }
    }

    /// The object (`None`: let go since it was found).
    fn object(self) -> Option<Arc<Object>> {
        match self {
            Held::Object(o) => Some(o),
            Held::Large(slot) => slot
                .object
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        }
    }

    /// Lets the object go: a large one's body is dropped now (unless a request holds it).
    fn release(&self) {
        if let Held::Large(slot) = self {
            let gone = slot.object.lock().unwrap_or_else(|e| e.into_inner()).take();
            drop(gone);
        }
    }

    /// The object's key (each object keeps its whole key: TinyUFO's is a 64-bit hash).
    fn key(&self) -> HashBinary {
        match self {
            Held::Object(o) => o.key,
            Held::Large(slot) => slot.key,
        }
    }

    fn is_removed(&self) -> bool {
        matches!(self, Held::Object(o) if Arc::ptr_eq(o, &REMOVED))
    }
}

/// One stripe's turn, on a cache line of its own.
#[repr(align(64))]
#[derive(Default)]
struct Turn(Mutex<()>);

pub struct MemoryTier {
    objects: TinyUfo<HashBinary, Held>,
    /// Stores and removals of one key take turns: TinyUFO's weights (what it evicts by) drift
    /// when a key is removed and put at once, and the gauges would count an object twice.
    turns: Box<[Turn]>,
    /// Stores and removals, one at a time (lookups do not take it): TinyUFO's weight counts
    /// drift when one thread evicts (or moves between its queues) a key another is storing
    /// or removing, until a count wraps (an overflow panic in a debug build; in a release one
    /// the tier believes itself over its budget and pushes out all it stores).
    writes: Mutex<()>,
    /// Where tile-sized bodies are kept (`None` when the system gives no shared memory).
    shared: Option<Arc<SharedBodies>>,
    budget: usize,
    pub stored_bytes: AtomicU64,
    pub stored_objects: AtomicU64,
    pub evictions: AtomicU64,
}

/// About how many tiles a budget of `budget` bytes holds.
pub fn typical_objects(budget: usize) -> usize {
    (budget / TYPICAL_OBJECT).clamp(64, 4_000_000)
}

impl MemoryTier {
    pub fn new(budget: usize) -> MemoryTier {
        let units = (budget / UNIT).max(1);
        let estimated = typical_objects(budget);
        let shared = SharedBodies::new(budget)
            .map_err(|e| {
                log::warn!("tile cache: no shared memory for tile bodies ({e}): hits are copied to the socket")
            })
            .ok();
        MemoryTier {
            objects: TinyUfo::new(units, estimated),
            turns: (0..TURNS).map(|_| Turn::default()).collect(),
            writes: Mutex::new(()),
            shared,
            budget,
            stored_bytes: AtomicU64::new(0),
            stored_objects: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
        }
    }

    pub fn budget(&self) -> usize {
        self.budget
    }

    /// A copy of a body to store in shared memory, when it is kept there.
    pub fn hold(&self, body: &[u8]) -> Option<Bytes> {
        self.shared.as_ref()?.hold(body)
    }

    /// Room in shared memory for a body of `len` bytes to be written into, when it is kept
    /// there.
    pub fn writing(&self, len: usize) -> Option<super::shared::Writing> {
        self.shared.as_ref()?.writing(len)
    }

    /// What the shared memory for bodies holds (`None`: there is none).
    pub fn shared(&self) -> Option<super::shared::SharedState> {
        self.shared.as_ref().map(|s| s.state())
    }

    /// Where a stored body lies for `sendfile`, when it is in shared memory.
    pub fn send(&self, body: &[u8]) -> Option<FileRange> {
        self.shared.as_ref()?.send(body)
    }

    /// What an object weighs in the budget, in units (a body in shared memory by its whole
    /// pages); `None` when it is too heavy to hold.
    fn weight(&self, obj: &Object) -> Option<u16> {
        let body = self
            .shared
            .as_ref()
            .and_then(|s| s.footprint(&obj.body))
            .unwrap_or(obj.body.len());
        u16::try_from(units(body, obj.meta.header_size())).ok()
    }

    /// Whether a body of `len` bytes is stored without pushing another object out (about: its
    /// head counted as a typical one).
    pub fn has_room(&self, len: usize) -> bool {
        let body = match self.shared {
            Some(_) if super::shared::kept_here(len) => len.next_multiple_of(super::shared::PAGE),
            _ => len,
        };
        let bytes = units(body, TYPICAL_HEAD).saturating_mul(UNIT) as u64;
        let limit = ((self.budget / UNIT).max(1) * UNIT) as u64;
        self.stored_bytes
            .load(Ordering::Relaxed)
            .saturating_add(bytes)
            <= limit
    }

    pub fn get(&self, key: &HashBinary) -> Option<Arc<Object>> {
        self.objects
            .get(key)
            .and_then(Held::object)
            .filter(|o| o.key == *key && !Arc::ptr_eq(o, &REMOVED))
    }

    /// Stores an object (replacing one under the same key); TinyUFO may decline it or push
    /// others out. One the tier cannot hold takes the one under its key out: a newer version
    /// of the tile, stored on disk only, is not hidden behind the old one here.
    pub fn put(&self, obj: Arc<Object>) {
        // An object past the whole budget would push out every other and still not fit.
        let Some(w) = self
            .weight(&obj)
            .filter(|w| usize::from(*w) * UNIT <= self.budget)
        else {
            self.remove(&obj.key);
            return;
        };
        let key = obj.key;
        let _turn = self.turn(&key);
        let _one = self.writes.lock().unwrap_or_else(|e| e.into_inner());
        // Replaced where it stands (TinyUFO's put over a key it holds), never taken out first:
        // see `REMOVED`.
        let old = self.objects.get(&key).filter(|h| !h.is_removed());
        if let Some(o) = old.clone().and_then(Held::object) {
            self.forget(&o, u64::from(self.weight(&o).unwrap_or(0)));
        }
        let size = u64::from(w) * UNIT as u64;
        self.stored_bytes.fetch_add(size, Ordering::Relaxed);
        self.stored_objects.fetch_add(1, Ordering::Relaxed);
        let shared = self.send(&obj.body).is_some();
        let out = self.objects.put(key, Held::of(obj, shared), w);
        if let Some(old) = old {
            old.release();
        }
        self.counted_out(out, &key);
    }

    /// Counts out what TinyUFO pushed out (or declined) while storing `key`.
    fn counted_out(&self, out: Vec<tinyufo::KV<Held>>, key: &HashBinary) {
        for out in out {
            if out.data.is_removed() {
                continue;
            }
            let size = u64::from(out.weight) * UNIT as u64;
            self.stored_bytes.fetch_sub(size, Ordering::Relaxed);
            self.stored_objects.fetch_sub(1, Ordering::Relaxed);
            if out.data.key() != *key {
                self.evictions.fetch_add(1, Ordering::Relaxed);
            }
            out.data.release();
        }
    }

    /// The turn of `key`'s stripe.
    fn turn(&self, key: &HashBinary) -> MutexGuard<'_, ()> {
        let stripe = key[0] as usize % TURNS;
        self.turns[stripe]
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    fn forget(&self, _old: &Object, units: u64) {
        self.stored_bytes
            .fetch_sub(units * UNIT as u64, Ordering::Relaxed);
        self.stored_objects.fetch_sub(1, Ordering::Relaxed);
    }

    /// Removes the object stored under `key`, if it is there: its place holds [`REMOVED`]
    /// until TinyUFO pushes that out or the key is stored again.
    pub fn remove(&self, key: &HashBinary) -> bool {
        let _turn = self.turn(key);
        let _one = self.writes.lock().unwrap_or_else(|e| e.into_inner());
        let held = self.objects.get(key).filter(|h| !h.is_removed());
        match held.clone().and_then(Held::object) {
            Some(old) if old.key == *key => {
                self.forget(&old, u64::from(self.weight(&old).unwrap_or(0)));
                let out = self
                    .objects
                    .force_put(*key, Held::Object(REMOVED.clone()), 1);
                if let Some(held) = held {
                    held.release();
                }
                self.counted_out(out, key);
                true
            }
            // Nothing, a removed one, or another object under the same 64-bit hash.
            _ => false,
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// An object of `len` bytes of body under `key`, its body in ordinary memory.
    pub(crate) fn object(key: HashBinary, len: usize) -> Object {
        let resp = pingora_http::ResponseHeader::build(200, None).unwrap();
        let meta = crate::cache::store::tests::meta(&resp);
        Object::new(key, meta, Bytes::from(vec![1u8; len]))
    }

    /// A large object in ordinary memory goes as TinyUFO lets it go — pushed out, replaced or
    /// removed — not when its maps reclaim their memory, 120 removals per thread later (the
    /// process grew by 120 such bodies per thread past its budget); one a request holds stays
    /// whole for it.
    #[test]
    fn large_objects_go_as_they_are_let_go() {
        let tier = MemoryTier::new(1 << 20);
        let key = |i: u8| [i; 16];
        let big = |i: u8| Arc::new(object(key(i), 200 * 1024));
        // Replaced, then removed.
        let first = big(1);
        let gone = Arc::downgrade(&first);
        tier.put(first);
        assert!(tier.get(&key(1)).is_some(), "stored");
        tier.put(big(1));
        assert!(gone.upgrade().is_none(), "replaced");
        let second = tier.get(&key(1)).expect("stored");
        tier.remove(&key(1));
        assert!(tier.get(&key(1)).is_none());
        assert_eq!(
            second.body.len(),
            200 * 1024,
            "whole for the request holding it"
        );
        let weak = Arc::downgrade(&second);
        drop(second);
        assert!(weak.upgrade().is_none(), "removed");
        // Pushed out: no more than the tier holds are alive.
        let all: Vec<_> = (10..60)
            .map(|i| {
                let o = big(i);
                let w = Arc::downgrade(&o);
                tier.put(o);
                w
            })
            .collect();
        let alive = all.iter().filter(|w| w.upgrade().is_some()).count();
        let stored = tier.stored_objects.load(Ordering::Relaxed) as usize;
        assert!(
            alive <= stored && stored <= 5,
            "{alive} alive, {stored} stored"
        );
    }

    /// Stores of one tile at once (requests that find it on disk each put it back in memory,
    /// a fill older than the lock's age, a revalidation) replace each other: the tier keeps
    /// one object and its gauges count it once. Without the turns, TinyUFO's weights drifted
    /// (an overflow in its eviction check) and the gauges counted objects twice.
    #[test]
    fn objects_stored_over_each_other_at_once_are_counted_once() {
        let tier: &'static MemoryTier = Box::leak(Box::new(MemoryTier::new(64 << 20)));
        let key = [3u8; 16];
        let threads: Vec<_> = (0..4)
            .map(|_| {
                std::thread::spawn(move || {
                    for _ in 0..20_000 {
                        tier.put(Arc::new(object(key, 100)));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let kept = tier.get(&key).expect("the tile");
        let units = u64::from(tier.weight(&kept).unwrap());
        assert_eq!(
            (
                tier.stored_objects.load(Ordering::Relaxed),
                tier.stored_bytes.load(Ordering::Relaxed)
            ),
            (1, units * UNIT as u64)
        );
    }

    /// A new version of a tile too large for the tier takes the old one out (it hid the new
    /// one, stored on disk, from every lookup, each of which fetched it again).
    #[test]
    fn a_version_too_large_for_the_tier_takes_the_old_one_out() {
        let tier = MemoryTier::new(64 * 1024);
        let key = [5u8; 16];
        tier.put(Arc::new(object(key, 100)));
        assert!(tier.get(&key).is_some());
        tier.put(Arc::new(object(key, 128 * 1024)));
        assert!(tier.get(&key).is_none());
        assert_eq!(
            (
                tier.stored_objects.load(Ordering::Relaxed),
                tier.stored_bytes.load(Ordering::Relaxed)
            ),
            (0, 0)
        );
    }

    /// Purges (removals) while stores push objects out of a full tier, at once: each object
    /// is counted out once. Without the exclusion a removal of an object being evicted took
    /// its weight off twice: TinyUFO's count overflowed (a panic in this debug build) and the
    /// gauges wrapped.
    #[test]
    fn removals_during_evictions_count_each_object_out_once() {
        // Room for about 40 of the objects: every store pushes others out.
        let tier: &'static MemoryTier = Box::leak(Box::new(MemoryTier::new(40 * 2048)));
        let key = |i: u32| {
            let mut k = [0u8; 16];
            k[..4].copy_from_slice(&i.to_le_bytes());
            k[4] = (i % 7) as u8;
            k
        };
        let threads: Vec<_> = (0..4u32)
            .map(|t| {
                std::thread::spawn(move || {
                    let mut x = t.wrapping_mul(2_654_435_761).wrapping_add(1);
                    for _ in 0..60_000 {
                        x ^= x << 13;
                        x ^= x >> 17;
                        x ^= x << 5;
                        let k = key(x % 120);
                        if t % 2 == 0 {
                            tier.put(Arc::new(object(k, 1500 + (x % 400) as usize)));
                        } else {
                            tier.remove(&k);
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("no panic");
        }
        for i in 0..120 {
            tier.remove(&key(i));
        }
        assert_eq!(
            (
                tier.stored_objects.load(Ordering::Relaxed),
                tier.stored_bytes.load(Ordering::Relaxed)
            ),
            (0, 0),
            "every object counted out once"
        );
    }
}
