//! The tiles' fetch lock: Pingora's cache lock (its permits, its waiting and its statuses, so
//! its cache phases wait on the fast path's fetches and the other way round), kept in a table
//! of its own. Pingora's table hashes each 128-bit key again with SipHash on every lookup,
//! and takes a read lock, then a write lock, to take a tile's lock; the keys here are already
//! keyed hashes (see [`super::key::digest`]), so their own bits place them, and one mutex per
//! shard is taken once.
//!
//! Besides, the requests waiting on a fetch the store declined (a tile new to a full memory
//! tier) compete to fetch it again — the next fetch finds it missed twice and stores it —
//! where a response that may not be stored lets them all go upstream at once.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use pingora_cache::key::CacheHashKey;
use pingora_cache::lock::{CacheKeyLock, LockStatus, LockStub, Locked, WritePermit};
use pingora_cache::CacheKey;

use super::verdict::DECLINED;

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

type Shard = HashMap<u128, LockStub, BuildHasherDefault<KeyBits>>;

pub(super) struct TileLock {
    shards: [Mutex<Shard>; SHARDS],
    /// How long a fetch may hold a tile's lock before its waiters stop waiting on it.
    age: Duration,
}

impl TileLock {
    pub(super) fn new(age: Duration) -> TileLock {
        TileLock {
            shards: std::array::from_fn(|_| Mutex::new(Shard::default())),
            age,
        }
    }

    /// The key's number and its shard (locked; a shard poisoned by a panic elsewhere is still
    /// a table of locks).
    fn shard(&self, key: &CacheKey) -> (u128, MutexGuard<'_, Shard>) {
        let n = u128::from_be_bytes(key.combined_bin());
        // The high bits pick the shard, the low ones the bucket within it.
        let shard = &self.shards[(n >> 124) as usize % SHARDS];
        (n, shard.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// Whether a lock found in the table is one to wait on: not one its writer dropped
/// unreleased, nor one held past its age (the requests after it compete for a new one).
fn live(stub: &LockStub) -> bool {
    !matches!(
        stub.0.lock_status(),
        LockStatus::Dangling | LockStatus::AgeTimeout
    )
}

impl CacheKeyLock for TileLock {
    fn lock(&self, key: &CacheKey, stale_writer: bool) -> Locked {
        let (n, mut shard) = self.shard(key);
        if let Some(stub) = shard.get(&n).filter(|s| live(s)) {
            return Locked::Read(stub.read_lock());
        }
        let (permit, stub) = WritePermit::new(self.age, stale_writer, http::Extensions::new());
        let replaced = shard.insert(n, stub);
        // A lock replaced is let go outside the shard's mutex, as in `release`.
        drop(shard);
        drop(replaced);
        Locked::Write(permit)
    }

    fn release(&self, key: &CacheKey, mut permit: WritePermit, reason: LockStatus) {
        if permit.lock_status() == LockStatus::AgeTimeout {
            // Held past its age: the requests after it may have put a new lock in its place
            // already, which stays; this one stays timed out for its waiters.
            permit.unlock(LockStatus::AgeTimeout);
            return;
        }
        let (n, mut shard) = self.shard(key);
        // Only this permit's own lock: one past its age may have been replaced between the
        // look at its status and the shard's mutex (a waiter timed out, a new fetch began).
        let own = shard
            .get(&n)
            .is_some_and(|s| std::ptr::eq(s.extensions(), permit.extensions()));
        let stub = if own { shard.remove(&n) } else { None };
        drop(shard);
        // Its waiters go on when it is unlocked; the table's handle to it is let go outside
        // the shard's mutex.
        permit.unlock(reason);
        drop(stub);
    }

    fn custom_lock_status(&self, reason: &'static str) -> LockStatus {
        if reason == DECLINED {
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
