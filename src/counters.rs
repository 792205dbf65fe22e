//! Fixed-window counters for `rate-limit`, keyed as EG keys them in Redis (`rl:<key>`): the
//! first hit of a window starts it, later hits count until it expires. Kept in memory here;
//! every rate-limit step of the process shares them, as EG's steps share Redis keys.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::Mutex;
use std::time::{Duration, Instant};

const SHARDS: usize = 16;

/// A window's count and when it ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hit {
    pub count: u64,
    pub resets_at: Instant,
}

pub struct Counters {
    hasher: RandomState,
    shards: Vec<Mutex<Shard>>,
}

#[derive(Default)]
struct Shard {
    windows: HashMap<String, Hit>,
    inserts_since_sweep: usize,
}

impl Default for Counters {
    fn default() -> Self {
        Counters {
            hasher: RandomState::new(),
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
        }
    }
}

impl Counters {
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
        if shard.inserts_since_sweep >= 4096 {
            shard.inserts_since_sweep = 0;
            shard.windows.retain(|_, hit| hit.resets_at > now);
            // After a burst of keys (a flood of addresses), the table gives its room back.
            if shard.windows.capacity() > 2 * shard.windows.len() + 4096 {
                shard.windows.shrink_to_fit();
            }
        }
        let hit = Hit {
            count: 1,
            resets_at: now + window,
        };
        shard.windows.insert(key.to_string(), hit);
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
}
