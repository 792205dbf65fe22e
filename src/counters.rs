//! Fixed-window counters for `rate-limit`, keyed as EG keys them in Redis (`rl:<key>`): the
//! first hit of a window starts it, later hits count until it expires. Kept in memory here;
//! every rate-limit step of the process shares them, as EG's steps share Redis keys.
//!
//! Windows that ended are swept as new ones come, and at most [`CAP`] are held: past it (a
//! flood of made-up keys whose windows have not ended), a key with no window is counted in one
//! that is not kept, and its request let through, as while Redis cannot be reached; one warning
//! says so when the first of its shards fills, and one info line once sweeps have left every
//! full shard half empty again.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

const SHARDS: usize = 16;

/// The most windows held at once (about 150 bytes each).
pub const CAP: usize = 1_000_000;

/// A shard sweeps the windows that ended after this many new ones.
const SWEEP_EVERY: usize = 4096;

/// A window's count and when it ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hit {
    pub count: u64,
    pub resets_at: Instant,
}

pub struct Counters {
    hasher: RandomState,
    shards: Vec<Mutex<Shard>>,
    /// The most windows a shard holds.
    shard_cap: usize,
    /// Shards full (past the cap once, and not yet swept below half of it): the first to
    /// fill says so, the last to empty says that too.
    full_shards: AtomicUsize,
}

#[derive(Default)]
struct Shard {
    windows: HashMap<String, Hit>,
    inserts_since_sweep: usize,
    /// Counted in [`Counters::full_shards`].
    full: bool,
}

impl Default for Counters {
    fn default() -> Self {
        Counters::with_cap(CAP)
    }
}

impl Counters {
    /// Counters that hold at most `cap` windows.
    pub fn with_cap(cap: usize) -> Counters {
        Counters {
            hasher: RandomState::new(),
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            shard_cap: cap.div_ceil(SHARDS),
            full_shards: AtomicUsize::new(0),
        }
    }

    /// Counts one hit on `key` in a window of `window` length.
    pub fn incr(&self, key: &str, window: Duration, now: Instant) -> Hit {
        let shard = &self.shards[(self.hasher.hash_one(key) as usize) % SHARDS];
        let mut shard = shard
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(hit) = shard.windows.get_mut(key) {
            if hit.resets_at > now {
                hit.count += 1;
                return *hit;
            }
            *hit = Hit {
                count: 1,
                resets_at: now + window,
            };
            return *hit;
        }
        shard.inserts_since_sweep += 1;
        let mut emptied = false;
        if shard.inserts_since_sweep >= SWEEP_EVERY {
            shard.inserts_since_sweep = 0;
            shard.windows.retain(|_, hit| hit.resets_at > now);
            // After a burst of keys (a flood of addresses), the table gives its room back.
            if shard.windows.capacity() > 2 * shard.windows.len() + SWEEP_EVERY {
                shard.windows.shrink_to_fit();
            }
            emptied = shard.full && shard.windows.len() < self.shard_cap / 2;
            shard.full &= !emptied;
        }
        let hit = Hit {
            count: 1,
            resets_at: now + window,
        };
        let filled = shard.windows.len() >= self.shard_cap;
        let newly_full = filled && !shard.full;
        shard.full |= filled;
        if !filled {
            shard.windows.insert(key.to_string(), hit);
        }
        drop(shard);
        // (Said outside the shard's lock.)
        if emptied && self.full_shards.fetch_sub(1, Ordering::Relaxed) == 1 {
            log::info!("rate-limit: windows ended; new keys are counted again");
        }
        if newly_full && self.full_shards.fetch_add(1, Ordering::Relaxed) == 0 {
            log::warn!(
                "rate-limit: {} windows are counting at once, the most held in memory: requests whose key has no window are let through until windows end",
                self.shard_cap * SHARDS
            );
        }
        hit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_within_a_window_then_restarts() {
        let c = Counters::default();
        let t0 = Instant::now();
        let w = Duration::from_secs(10);
        assert_eq!(c.incr("rl:a", w, t0).count, 1);
        assert_eq!(c.incr("rl:a", w, t0).count, 2);
        assert_eq!(c.incr("rl:b", w, t0).count, 1);
        let later = t0 + Duration::from_secs(11);
        let hit = c.incr("rl:a", w, later);
        assert_eq!(hit.count, 1);
        assert_eq!(hit.resets_at, later + w);
    }

    #[test]
    fn windows_past_are_swept_and_their_room_given_back() {
        let c = Counters::default();
        let t0 = Instant::now();
        let w = Duration::from_secs(1);
        for i in 0..200_000 {
            c.incr(&format!("rl:burst-{i}"), w, t0);
        }
        let room = |c: &Counters| -> usize {
            c.shards
                .iter()
                .map(|s| s.lock().unwrap().windows.capacity())
                .sum()
        };
        assert!(room(&c) >= 200_000);
        // Later keys sweep every shard's windows that ended.
        let later = t0 + Duration::from_secs(2);
        for i in 0..SHARDS * 4500 {
            c.incr(&format!("rl:later-{i}"), w, later);
        }
        let held: usize = c
            .shards
            .iter()
            .map(|s| s.lock().unwrap().windows.len())
            .sum();
        assert!(held <= SHARDS * 4500, "{held} windows held");
        assert!(room(&c) < 200_000, "{} slots kept", room(&c));
    }

    #[test]
    fn past_the_cap_new_keys_are_counted_but_not_kept() {
        let c = Counters::with_cap(SHARDS * 8);
        let t0 = Instant::now();
        let w = Duration::from_secs(60);
        let held = |c: &Counters| -> usize {
            c.shards
                .iter()
                .map(|s| s.lock().unwrap().windows.len())
                .sum()
        };
        for i in 0..SHARDS * 100 {
            c.incr(&format!("rl:flood-{i}"), w, t0);
        }
        assert_eq!(held(&c), SHARDS * 8);
        // Every shard filled, and is counted so once (one warning).
        assert_eq!(c.full_shards.load(Ordering::Relaxed), SHARDS);
        // A key with a window goes on counting in it ...
        let kept = c
            .shards
            .iter()
            .find_map(|s| s.lock().unwrap().windows.keys().next().cloned())
            .expect("a window");
        assert_eq!(c.incr(&kept, w, t0).count, 2);
        // ... one without is let through, every time.
        for _ in 0..3 {
            assert_eq!(c.incr("rl:latecomer", w, t0).count, 1);
        }
        assert_eq!(held(&c), SHARDS * 8);
        // Once the windows ended, the shard's next sweep (within its next SWEEP_EVERY new
        // keys) makes room: the key is kept and counted.
        let later = t0 + Duration::from_secs(61);
        let mut counted = 0;
        for _ in 0..=SWEEP_EVERY {
            counted = c.incr("rl:latecomer", w, later).count;
            if counted > 1 {
                break;
            }
        }
        assert_eq!(counted, 2);
        assert_eq!(c.incr("rl:latecomer", w, later).count, 3);
        assert!(held(&c) < SHARDS * 8);
        // The latecomer's shard is no longer full; the others are until they are swept.
        assert_eq!(c.full_shards.load(Ordering::Relaxed), SHARDS - 1);
    }
}
