//! Unknown entities looked up lately, so a flood of one unknown key costs one store lookup per
//! [`NEGATIVE_TTL`]. Kept by a hash of the name (a key id may be as long as a request head: the
//! names themselves would let a flood of long unknown keys hold gigabytes here) in two
//! generations that take turns each [`NEGATIVE_TTL`]: no request ever sweeps the table, and a
//! generation that fills up within its turn (a flood of distinct keys) lets no more lookups
//! through until the next one.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::time::{Duration, Instant};

/// How long an unknown key is not looked up again.
pub const NEGATIVE_TTL: Duration = Duration::from_secs(5);
/// The most names a generation holds.
const MAX_NEGATIVE: usize = 50_000;

pub struct RecentlyMissed {
    current: HashMap<u64, Instant>,
    previous: HashMap<u64, Instant>,
    /// When `current` began.
    since: Instant,
    /// Seeded at start: the hashes cannot be aimed at.
    hasher: std::hash::RandomState,
}

impl Default for RecentlyMissed {
    fn default() -> Self {
        RecentlyMissed {
            current: HashMap::new(),
            previous: HashMap::new(),
            since: Instant::now(),
            hasher: std::hash::RandomState::new(),
        }
    }
}

impl RecentlyMissed {
    /// Whether `entity` may be looked up `now` (it was not within [`NEGATIVE_TTL`], and the
    /// table has room); if so, it is counted as looked up.
    pub fn may_look_up(&mut self, entity: &str, now: Instant) -> bool {
        if now.duration_since(self.since) >= NEGATIVE_TTL {
            self.previous = std::mem::take(&mut self.current);
            self.since = now;
        }
        let id = self.hasher.hash_one(entity);
        let recent = |t: &Instant| now.duration_since(*t) < NEGATIVE_TTL;
        if self.current.get(&id).is_some_and(recent) || self.previous.get(&id).is_some_and(recent) {
            return false;
        }
        if self.current.len() >= MAX_NEGATIVE {
            return false; // a flood: the next generation, or the periodic resync, finds it
        }
        self.current.insert(id, now);
        true
    }

    pub fn clear(&mut self) {
        self.current.clear();
        self.previous.clear();
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.current.len() + self.previous.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_is_looked_up_once_a_window_and_a_flood_is_bounded() {
        let mut m = RecentlyMissed::default();
        let t0 = m.since;
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        assert!(m.may_look_up("a", at(0)));
        assert!(!m.may_look_up("a", at(1000)));
        assert!(m.may_look_up("b", at(3000)));
        // `b` is in the previous generation now, still within its time; `a` is past it.
        assert!(!m.may_look_up("b", at(6000)));
        assert!(m.may_look_up("a", at(6000)));
        assert!(!m.may_look_up("b", at(7900)));
        assert!(m.may_look_up("b", at(8100)));
        // A flood of distinct names fills one generation, then is refused without a sweep.
        let t1 = at(11_000);
        let let_through = (0..MAX_NEGATIVE + 1000)
            .filter(|i| m.may_look_up(&format!("k{i}"), t1))
            .count();
        assert_eq!(let_through, MAX_NEGATIVE, "a new generation");
        // The next turns let lookups through again, and the table never holds more than two
        // generations.
        assert!(m.may_look_up("fresh", t1 + Duration::from_secs(5)));
        assert!(m.may_look_up("fresh2", t1 + Duration::from_secs(10)));
        assert!(m.len() <= 2 * MAX_NEGATIVE);
        m.clear();
        assert!(m.may_look_up("a", t1 + Duration::from_secs(10)));
    }
}
