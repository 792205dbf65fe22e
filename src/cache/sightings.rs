//! How often tiles nothing is stored for were asked for lately: for a `cache` step's
//! `minUses` (a tile is stored from its `minUses`-th miss on) and for admission to a full
//! memory tier (a tile is stored there, pushing others out, only from its second miss on). So
//! a tile asked for once (a crawler, a map panned across) costs what the uncached pipeline
//! costs — no write of its body into the store, nothing pushed out for it.
//!
//! A count-min sketch of 4-bit counters (four per key, the least of them counts, only the least
//! raised), small enough to stay in the processor's cache (8 bytes per tile the tiers hold),
//! halved every two store-fulls of sightings, so a tile asked for once is remembered while
//! about as many other tiles are asked for as the store holds: the TinyLFU way of counting
//! recent popularity in little memory. A count may be too high (keys share counters: a tile now
//! and then stored a miss early), never too low: the sketch never keeps a tile from the store
//! longer than its `minUses` says.

use std::sync::atomic::{AtomicU64, Ordering};

use pingora_cache::key::HashBinary;

/// Counters per 64-bit word.
const PER_WORD: u32 = 16;
/// The largest count kept (4 bits).
pub const MAX_COUNT: u8 = 15;
/// Every counter of a word halved, in one operation.
const HALVE_MASK: u64 = 0x7777_7777_7777_7777;

pub struct Sightings {
    words: Box<[AtomicU64]>,
    /// `counters - 1` (a power of two).
    mask: u64,
    /// Sightings since the counters were last halved.
    seen: AtomicU64,
    /// How many sightings make the counters halve.
    period: u64,
}

impl Sightings {
    /// A sketch for a store that holds about `objects` tiles (at least 1024): sixteen
    /// counters per tile, so that in one period (two sightings per tile) few keys seen once
    /// share all four of their counters with others.
    pub fn new(objects: usize) -> Sightings {
        let objects = objects.max(1024);
        let counters = (objects * 16).next_power_of_two();
        let words = (0..counters / PER_WORD as usize)
            .map(|_| AtomicU64::new(0))
            .collect();
        Sightings {
            words,
            mask: counters as u64 - 1,
            seen: AtomicU64::new(0),
            period: objects as u64 * 2,
        }
    }

    /// Counts one more sighting of the key whose hash is `hash`; how many there were lately,
    /// this one included (at most [`MAX_COUNT`]).
    pub fn sighted(&self, hash: HashBinary) -> u8 {
        let slots = self.slots(hash);
        let counts = slots.map(|slot| self.count_at(slot));
        let least = counts.into_iter().min().unwrap_or(0);
        if least < MAX_COUNT {
            // Only the counters at the least go up: the others already count more than this
            // key's sightings.
            for (slot, count) in slots.into_iter().zip(counts) {
                if count == least {
                    self.increment(slot);
                }
            }
        }
        if self.seen.fetch_add(1, Ordering::Relaxed) + 1 >= self.period {
            self.halve();
        }
        (least + 1).min(MAX_COUNT)
    }

    /// How many sightings of the key whose hash is `hash` there were lately (at most
    /// [`MAX_COUNT`]), without counting one more.
    pub fn count(&self, hash: HashBinary) -> u8 {
        self.slots(hash)
            .map(|slot| self.count_at(slot))
            .into_iter()
            .min()
            .unwrap_or(0)
    }

    /// Where a counter lies: its word and the shift of its 4 bits there.
    fn place(&self, slot: u64) -> (&AtomicU64, u64) {
        let word = &self.words[(slot / u64::from(PER_WORD)) as usize];
        (word, (slot % u64::from(PER_WORD)) * 4)
    }

    fn count_at(&self, slot: u64) -> u8 {
        let (word, shift) = self.place(slot);
        ((word.load(Ordering::Relaxed) >> shift) & 0xf) as u8
    }

    /// The four counters of a key: independent bits of its hash (which is already a hash).
    fn slots(&self, hash: HashBinary) -> [u64; 4] {
        let h = u128::from_be_bytes(hash);
        std::array::from_fn(|i| ((h >> (i * 32)) as u64 & 0xffff_ffff) & self.mask)
    }

    /// Adds one to a counter, unless it is full.
    fn increment(&self, slot: u64) {
        let (word, shift) = self.place(slot);
        let _ = word.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |w| {
            ((w >> shift) & 0xf < u64::from(MAX_COUNT)).then_some(w + (1 << shift))
        });
    }

    /// Halves every counter (by the thread whose sighting ended the period).
    fn halve(&self) {
        if self.seen.swap(0, Ordering::Relaxed) < self.period {
            return; // another thread is halving them
        }
        for word in self.words.iter() {
            // A sighting counted between the load and the store may be lost: a count
            // then reads one lower (a tile stored one miss later), never higher.
            let w = word.load(Ordering::Relaxed);
            word.store((w >> 1) & HALVE_MASK, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u64) -> HashBinary {
        // Spread like the cache's key hashes (which are hashes).
        use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
        let half = |salt: u64| BuildHasherDefault::<DefaultHasher>::default().hash_one((n, salt));
        ((u128::from(half(1)) << 64) | u128::from(half(2))).to_be_bytes()
    }

    #[test]
    fn counts_each_key_from_one() {
        let s = Sightings::new(1000);
        for n in 0..500 {
            assert_eq!(s.sighted(key(n)), 1, "key {n} seen first");
        }
        for n in 0..500 {
            assert_eq!(s.sighted(key(n)), 2, "key {n} seen again");
        }
        for _ in 0..20 {
            s.sighted(key(7));
        }
        assert_eq!(s.sighted(key(7)), MAX_COUNT, "saturates");
    }

    #[test]
    fn reading_a_count_does_not_raise_it() {
        let s = Sightings::new(1000);
        assert_eq!(s.count(key(3)), 0, "never seen");
        s.sighted(key(3));
        assert_eq!((s.count(key(3)), s.count(key(3))), (1, 1));
        assert_eq!(s.sighted(key(3)), 2);
        assert_eq!(s.count(key(3)), 2);
    }

    #[test]
    fn old_sightings_fade() {
        let s = Sightings::new(1024);
        assert_eq!(s.sighted(key(1)), 1);
        assert_eq!(s.sighted(key(1)), 2);
        // A period of other keys: the counts halve (2 → 1).
        for n in 100..100 + s.period - 2 {
            s.sighted(key(n));
        }
        assert_eq!(
            s.seen.load(Ordering::Relaxed),
            0,
            "halved at the period's end"
        );
        assert_eq!(s.sighted(key(1)), 2, "one left of two, and this one");
    }

    #[test]
    fn keys_seen_once_rarely_read_as_seen_before() {
        // A scan: ten periods of keys never seen before. Fewer than one in a hundred is taken
        // for a key seen before (all four of its counters shared by chance with others).
        let s = Sightings::new(4096);
        let n = 10 * s.period;
        let again = (0..n)
            .filter(|i| s.sighted(key(*i + 1_000_000)) > 1)
            .count();
        assert!(
            again < n as usize / 100,
            "{again} of {n} read as seen before"
        );
    }
}
