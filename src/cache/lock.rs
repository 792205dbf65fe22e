//! The tiles' fetch lock: Pingora's cache lock (its permits, its waiting and its statuses, so
//! its cache phases wait on the fast path's fetches and the other way round), kept in a table
//! of its own. Pingora's table hashes each 128-bit key again with SipHash on every lookup,
//! and takes a read lock, then a write lock, to take a tile's lock; the keys here are already
//! keyed hashes (see [`super::key::digest`]), so their own bits place them, and one mutex per
//! shard is taken once.
//!
//! A fill on the fast path takes a tile's lock as a mark in the table ([`FastPermit`]):
//! Pingora's lock (an allocation, a semaphore, a clock reading) is made for it only when a
//! request comes to wait on it, which most fills never see.
//!
//! Besides, the requests waiting on a fetch the store declined (a tile new to a full memory
//! tier) compete to fetch it again — the next fetch finds it missed twice and stores it —
//! and so do those waiting on a fetch the upstream failed (a 5xx, a service exception: one of
//! them asks next, as with a failed connection), where a response that may not be stored
//! lets them all go upstream at once.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use pingora_cache::key::{CacheHashKey, HashBinary};
use pingora_cache::lock::{CacheKeyLock, LockStatus, LockStub, Locked, ReadLock, WritePermit};
use pingora_cache::CacheKey;

use super::exception::SERVICE_EXCEPTION;
use super::verdict::{DECLINED, FAILED};

const SHARDS: usize = 16;

/// Hashes a key by its own bits: they are a keyed hash already, which no request can steer.
#[derive(Default)]
struct KeyBits(u64);

impl Hasher for KeyBits {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `u128` keys are hashed here; any other input still gets a usable hash.
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }

    fn write_u128(&mut self, n: u128) {
        self.0 = (n as u64) ^ ((n >> 64) as u64);
    }
}

/// A tile's lock in the table.
enum Held {
    /// Taken by Pingora's cache phases: its lock.
    Pingora(LockStub),
    /// Taken by a fill on the fast path (its number, from when): the lock its waiters wait on
    /// is made when the first of them comes, with what is left of the age.
    Fast {
        fill: u64,
        since: Instant,
        waited: Option<Box<(WritePermit, LockStub)>>,
    },
}

impl Held {
    /// Whether it is a lock to wait on: not one its writer dropped unreleased, nor one held
    /// past its age (the requests after it compete for a new one).
    fn live(&self, age: Duration) -> bool {
        match self {
            Held::Pingora(stub) => !matches!(
                stub.0.lock_status(),
                LockStatus::Dangling | LockStatus::AgeTimeout
            ),
            Held::Fast { since, .. } => since.elapsed() < age,
        }
    }

    /// A wait on it. A fast fill's first waiter makes the lock they all wait on, with what
    /// is left of its `age`.
    fn read_lock(&mut self, age: Duration) -> ReadLock {
        match self {
            Held::Pingora(stub) => stub.read_lock(),
            Held::Fast { since, waited, .. } => {
                let left = age.saturating_sub(since.elapsed());
                let waited = waited.get_or_insert_with(|| {
                    Box::new(WritePermit::new(left, false, http::Extensions::new()))
                });
                waited.1.read_lock()
            }
        }
    }

    /// Lets a lock taken out of the table go, outside the shard's mutex: a fast fill's
    /// waiters, when it was replaced past its age, stop waiting on it.
    fn retire(self) {
        if let Held::Fast {
            waited: Some(mut waited),
            ..
        } = self
        {
            waited.0.unlock(LockStatus::AgeTimeout);
        }
    }
}

/// A key's number in the table: its hash's bits.
fn number(key: &CacheKey) -> u128 {
    u128::from_be_bytes(key.combined_bin())
}

type Shard = HashMap<u128, Held, BuildHasherDefault<KeyBits>>;

pub(super) struct TileLock {
    shards: [Mutex<Shard>; SHARDS],
    /// How long a fetch may hold a tile's lock before its waiters stop waiting on it.
    age: Duration,
    /// The number of the next fill on the fast path.
    fills: AtomicU64,
}

/// A tile's lock held by a fill on the fast path; released with how the fill ended (one
/// dropped unreleased lets its waiters compete again, as Pingora's does).
pub(super) struct FastPermit {
    table: &'static TileLock,
    n: u128,
    fill: u64,
    released: bool,
}

impl FastPermit {
    pub(super) fn release(mut self, reason: LockStatus) {
        self.released = true;
        self.table.release_fast(self.n, self.fill, reason);
    }
}

impl Drop for FastPermit {
    fn drop(&mut self) {
        if !self.released {
            self.table
                .release_fast(self.n, self.fill, LockStatus::Dangling);
        }
    }
}

impl TileLock {
    pub(super) fn new(age: Duration) -> TileLock {
        TileLock {
            shards: std::array::from_fn(|_| Mutex::new(Shard::default())),
            age,
            fills: AtomicU64::new(0),
        }
    }

    /// The shard of key number `n` (locked; a shard poisoned by a panic elsewhere is still a
    /// table of locks).
    fn shard(&self, n: u128) -> MutexGuard<'_, Shard> {
        // The high bits pick the shard, the low ones the bucket within it.
        let shard = &self.shards[(n >> 124) as usize % SHARDS];
        shard.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes the lock of the tile whose key hashes to `hash` for a fill on the fast path;
    /// `None` when another fetch holds it.
    pub(super) fn take(&'static self, hash: HashBinary) -> Option<FastPermit> {
        let n = u128::from_be_bytes(hash);
        let mut shard = self.shard(n);
        if shard.get(&n).is_some_and(|h| h.live(self.age)) {
            return None;
        }
        let fill = self.fills.fetch_add(1, Ordering::Relaxed);
        let held = Held::Fast {
            fill,
            since: crate::clock::soon(),
            waited: None,
        };
        let replaced = shard.insert(n, held);
        drop(shard);
        if let Some(held) = replaced {
            held.retire();
        }
        Some(FastPermit {
            table: self,
            n,
            fill,
            released: false,
        })
    }

    /// Takes fill `fill`'s lock of key number `n` out of the table (not another's that
    /// replaced it past its age), and lets its waiters go on as `reason` says.
    fn release_fast(&self, n: u128, fill: u64, reason: LockStatus) {
        let mut shard = self.shard(n);
        let own = matches!(shard.get(&n), Some(Held::Fast { fill: f, .. }) if *f == fill);
        let held = if own { shard.remove(&n) } else { None };
        drop(shard);
        if let Some(Held::Fast {
            waited: Some(mut waited),
            ..
        }) = held
        {
            waited.0.unlock(reason);
        }
    }
}

impl CacheKeyLock for TileLock {
    fn lock(&self, key: &CacheKey, stale_writer: bool) -> Locked {
        let n = number(key);
        let mut shard = self.shard(n);
        if let Some(held) = shard.get_mut(&n).filter(|h| h.live(self.age)) {
            return Locked::Read(held.read_lock(self.age));
        }
        let (permit, stub) = WritePermit::new(self.age, stale_writer, http::Extensions::new());
        let replaced = shard.insert(n, Held::Pingora(stub));
        // A lock replaced is let go outside the shard's mutex, as in `release`.
        drop(shard);
        if let Some(held) = replaced {
            held.retire();
        }
        Locked::Write(permit)
    }

    fn release(&self, key: &CacheKey, mut permit: WritePermit, reason: LockStatus) {
        if permit.lock_status() == LockStatus::AgeTimeout {
            // Held past its age: the requests after it may have put a new lock in its place
            // already, which stays; this one stays timed out for its waiters.
            permit.unlock(LockStatus::AgeTimeout);
            return;
        }
        let n = number(key);
        let mut shard = self.shard(n);
        // Only this permit's own lock: one past its age may have been replaced between the
        // look at its status and the shard's mutex (a waiter timed out, a new fetch began).
        let own = matches!(
            shard.get(&n),
            Some(Held::Pingora(s)) if std::ptr::eq(s.extensions(), permit.extensions())
        );
        let stub = if own { shard.remove(&n) } else { None };
        drop(shard);
        // Its waiters go on when it is unlocked; the table's handle to it is let go outside
        // the shard's mutex.
        permit.unlock(reason);
        drop(stub);
    }

    fn custom_lock_status(&self, reason: &'static str) -> LockStatus {
        if reason == DECLINED || reason == FAILED || reason == SERVICE_EXCEPTION {
            LockStatus::TransientError
        } else {
            // As Pingora's: a custom reason not to cache gives up the lock.
            LockStatus::GiveUp
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(path: &str) -> CacheKey {
        super::super::key::cache_key(path.to_string())
    }

    #[test]
    fn one_writer_then_readers_until_it_is_released() {
        let lock = TileLock::new(Duration::from_secs(30));
        let k = key("/a");
        let Locked::Write(permit) = lock.lock(&k, false) else {
            panic!("the first request writes");
        };
        let Locked::Read(read) = lock.lock(&k, false) else {
            panic!("the second waits");
        };
        let Locked::Write(other) = lock.lock(&key("/b"), false) else {
            panic!("another tile's fetch writes");
        };
        lock.release(&key("/b"), other, LockStatus::Done);
        lock.release(&k, permit, LockStatus::Done);
        assert_eq!(read.lock_status(), LockStatus::Done);
        assert!(!read.locked());
        let Locked::Write(again) = lock.lock(&k, false) else {
            panic!("released: a new fetch writes");
        };
        lock.release(&k, again, LockStatus::Done);
    }

    #[test]
    fn a_lock_its_writer_left_dangling_is_taken_over() {
        let lock = TileLock::new(Duration::from_secs(30));
        let k = key("/a");
        let Locked::Write(mut permit) = lock.lock(&k, false) else {
            panic!("the first request writes");
        };
        let Locked::Read(read) = lock.lock(&k, false) else {
            panic!("the second waits");
        };
        // What a writer dropped unreleased leaves: its lock in the table, marked dangling.
        permit.unlock(LockStatus::Dangling);
        assert_eq!(read.lock_status(), LockStatus::Dangling);
        let Locked::Write(next) = lock.lock(&k, false) else {
            panic!("the next request writes");
        };
        lock.release(&k, next, LockStatus::Done);
    }

    #[test]
    fn a_lock_past_its_age_is_taken_over_and_its_release_leaves_the_new_one() {
        use futures_util::FutureExt;
        let lock = TileLock::new(Duration::ZERO);
        let k = key("/a");
        let Locked::Write(old) = lock.lock(&k, false) else {
            panic!("the first request writes");
        };
        let Locked::Read(read) = lock.lock(&k, false) else {
            panic!("the lock is in the table until a wait finds it past its age");
        };
        // A waiter finds it past its age and marks it so (without waiting).
        assert!(read.wait().now_or_never().is_some());
        assert_eq!(read.lock_status(), LockStatus::AgeTimeout);
        let Locked::Write(new) = lock.lock(&k, false) else {
            panic!("a timed-out lock is replaced");
        };
        // The old fetch ends late: the new one's lock stays.
        lock.release(&k, old, LockStatus::Done);
        let Locked::Read(waiting) = lock.lock(&k, false) else {
            panic!("the new fetch's lock was taken out by the old one's release");
        };
        lock.release(&k, new, LockStatus::Done);
        assert_eq!(waiting.lock_status(), LockStatus::Done);
        let Locked::Write(next) = lock.lock(&k, false) else {
            panic!("released: a new fetch writes");
        };
        lock.release(&k, next, LockStatus::Done);
    }

    /// A table for the fast path's permits (which hold it for as long as they live).
    fn table(age: Duration) -> &'static TileLock {
        Box::leak(Box::new(TileLock::new(age)))
    }

    #[test]
    fn a_fast_fill_is_waited_on_by_pingoras_phases() {
        let lock = table(Duration::from_secs(30));
        let k = key("/a");
        let fill = lock
            .take(k.combined_bin())
            .expect("the first fetch takes the lock");
        assert!(lock.take(k.combined_bin()).is_none(), "one fetch at a time");
        let Locked::Read(read) = lock.lock(&k, false) else {
            panic!("Pingora's phases wait on the fill");
        };
        let Locked::Read(second) = lock.lock(&k, false) else {
            panic!("and so does the next request");
        };
        assert!(read.locked() && !read.expired());
        fill.release(LockStatus::Done);
        for r in [&read, &second] {
            assert_eq!(r.lock_status(), LockStatus::Done);
            assert!(!r.locked());
        }
        // Released without waiters too, the tile's lock is free again.
        let fill = lock.take(k.combined_bin()).expect("released: a new fetch");
        fill.release(LockStatus::TransientError);
        let Locked::Write(permit) = lock.lock(&k, false) else {
            panic!("released: Pingora's phases fetch");
        };
        assert!(
            lock.take(k.combined_bin()).is_none(),
            "a fill waits for Pingora's fetch"
        );
        lock.release(&k, permit, LockStatus::Done);
    }

    #[test]
    fn a_fast_fill_dropped_unreleased_lets_its_waiters_compete() {
        let lock = table(Duration::from_secs(30));
        let k = key("/a");
        let fill = lock.take(k.combined_bin()).expect("the first fetch");
        let Locked::Read(read) = lock.lock(&k, false) else {
            panic!("a waiter");
        };
        drop(fill);
        assert_eq!(read.lock_status(), LockStatus::Dangling);
        let again = lock.take(k.combined_bin()).expect("the lock is free again");
        again.release(LockStatus::Done);
    }

    #[test]
    fn a_fast_fills_waiters_wait_for_what_is_left_of_its_age() {
        let lock = table(Duration::from_millis(400));
        let k = key("/a");
        let old = lock.take(k.combined_bin()).expect("the first fetch");
        std::thread::sleep(Duration::from_millis(250));
        let Locked::Read(read) = lock.lock(&k, false) else {
            panic!("a waiter, well within the lock's age");
        };
        assert!(read.locked() && !read.expired());
        // Past the fill's age, not the 400 ms a lock made now would have.
        std::thread::sleep(Duration::from_millis(200));
        assert!(read.expired());
        let Locked::Write(new) = lock.lock(&k, false) else {
            panic!("a fill past its age is replaced");
        };
        // Its waiters are let go, not left on a lock nobody releases.
        assert!(!read.locked());
        assert_eq!(read.lock_status(), LockStatus::AgeTimeout);
        // The old fill ends late: the new fetch's lock stays.
        old.release(LockStatus::Done);
        let Locked::Read(waiting) = lock.lock(&k, false) else {
            panic!("the new fetch's lock was taken out by the old fill's release");
        };
        lock.release(&k, new, LockStatus::Done);
        assert_eq!(waiting.lock_status(), LockStatus::Done);
    }

    #[test]
    fn a_fast_fill_replaced_by_another_leaves_it_in_place_when_it_ends() {
        let lock = table(Duration::from_millis(100));
        let k = key("/a");
        let old = lock.take(k.combined_bin()).expect("the first fetch");
        std::thread::sleep(Duration::from_millis(150));
        let new = lock
            .take(k.combined_bin())
            .expect("a fill past its age is replaced");
        old.release(LockStatus::Done);
        assert!(
            lock.take(k.combined_bin()).is_none(),
            "the old fill's release took the new fill's lock out"
        );
        drop(new);
        let again = lock.take(k.combined_bin()).expect("released: a new fetch");
        again.release(LockStatus::Done);
    }

    #[tokio::test]
    async fn a_waiter_on_a_fast_fill_goes_on_with_its_outcome() {
        let lock = table(Duration::from_secs(30));
        let k = key("/a");
        let fill = lock.take(k.combined_bin()).expect("the first fetch");
        let Locked::Read(read) = lock.lock(&k, false) else {
            panic!("a waiter");
        };
        let waiting = tokio::spawn(async move {
            read.wait().await;
            read.lock_status()
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished(), "the waiter waits for the fill");
        fill.release(LockStatus::TransientError);
        let status = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("the waiter goes on")
            .expect("the waiter's task");
        assert_eq!(status, LockStatus::TransientError);
    }

    #[test]
    fn declined_fetches_are_competed_for_again() {
        let lock = TileLock::new(Duration::from_secs(30));
        assert_eq!(
            lock.custom_lock_status(DECLINED),
            LockStatus::TransientError
        );
        assert_eq!(lock.custom_lock_status("other"), LockStatus::GiveUp);
    }
}
