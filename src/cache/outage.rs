//! Tiles whose upstream has just failed them. When the refresh of a stale tile fails (the
//! upstream refused, timed out or answered 5xx) and the tile is served stale (stale-if-error),
//! the tile is remembered: the requests that follow get the stale copy at once instead of each
//! waiting on the upstream in turn, and one request per tile asks the upstream again every
//! [`RETRY`]. Without this, the requests waiting on the failed refresh's lock each became the
//! next refresh: with a frozen upstream a tile's n-th concurrent request waited n timeouts,
//! and those past the lock's retries were answered 502 while the stale copy was there.
//!
//! Only stale lookups and failures come here; a fresh hit never does.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

/// How often one request per failing tile asks the upstream again.
pub const RETRY: Duration = Duration::from_secs(1);

/// Tiles remembered at most; past it, entries older than [`FORGET`] go, and a tile that finds
/// no room is not remembered (its requests ask the upstream as before).
const MAX_TILES: usize = 100_000;
/// An entry older than this is of no use: its tile was refreshed or nobody asked for it.
const FORGET: Duration = Duration::from_secs(60);

#[derive(Debug)]
struct Outage {
    /// The last failure.
    failed: SystemTime,
    /// Since when a request has been asking the upstream again, if one is.
    retrying: Option<SystemTime>,
}

/// The failing tiles, by their key's primary hash.
#[derive(Debug, Default)]
pub struct Outages {
    tiles: Mutex<HashMap<u128, Outage>>,
}

/// What a request for a stale tile does.
#[derive(Debug, PartialEq, Eq)]
pub enum Stale {
    /// Serve the stale copy now: its upstream failed it a moment ago, or another request is
    /// asking again.
    Serve,
    /// Ask the upstream (nothing is known against it, or it is this request's turn to retry).
    Ask,
}

impl Outages {
    /// The upstream failed the tile `key` at `now`.
    pub fn failed(&self, key: u128, now: SystemTime) {
        let mut tiles = self.tiles.lock().unwrap_or_else(|p| p.into_inner());
        if tiles.len() >= MAX_TILES && !tiles.contains_key(&key) {
            tiles.retain(|_, o| elapsed(o.failed, now) < FORGET);
            if tiles.len() >= MAX_TILES {
                return;
            }
        }
        tiles.insert(
            key,
            Outage {
                failed: now,
                retrying: None,
            },
        );
    }

    /// A request found the tile `key` stale (and within its stale-if-error window), stored at
    /// `updated`.
    pub fn stale(&self, key: u128, updated: SystemTime, now: SystemTime) -> Stale {
        let mut tiles = self.tiles.lock().unwrap_or_else(|p| p.into_inner());
        let Some(o) = tiles.get_mut(&key) else {
            return Stale::Ask;
        };
        // Stored after the failure: a refresh has landed since; the entry is done with.
        if updated > o.failed || elapsed(o.failed, now) >= FORGET {
            tiles.remove(&key);
            return Stale::Ask;
        }
        if elapsed(o.failed, now) < RETRY {
            return Stale::Serve;
        }
        match o.retrying {
            Some(since) if elapsed(since, now) < RETRY => Stale::Serve,
            _ => {
                o.retrying = Some(now);
                Stale::Ask
            }
        }
    }

    /// Tiles the upstream failed within the last [`FORGET`] and not refreshed since, as far as
    /// their requests showed.
    pub fn failing(&self, now: SystemTime) -> usize {
        let tiles = self.tiles.lock().unwrap_or_else(|p| p.into_inner());
        tiles
            .values()
            .filter(|o| elapsed(o.failed, now) < FORGET)
            .count()
    }
}

fn elapsed(since: SystemTime, now: SystemTime) -> Duration {
    now.duration_since(since).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000) + Duration::from_millis(ms)
    }

    #[test]
    fn a_failed_tile_is_served_stale_and_asked_again_once_per_retry() {
        let o = Outages::default();
        let stored = at(0);
        assert_eq!(o.stale(7, stored, at(10)), Stale::Ask, "nothing known yet");
        o.failed(7, at(400));
        // Within RETRY of the failure: everyone is served the stale copy.
        for t in [400, 900, 1399] {
            assert_eq!(o.stale(7, stored, at(t)), Stale::Serve, "{t}");
        }
        // Then one request asks again; the others are served while it does.
        assert_eq!(o.stale(7, stored, at(1400)), Stale::Ask);
        assert_eq!(o.stale(7, stored, at(1500)), Stale::Serve);
        assert_eq!(o.stale(7, stored, at(2399)), Stale::Serve);
        // The retry never reported back (its client left): another asks.
        assert_eq!(o.stale(7, stored, at(2400)), Stale::Ask);
        // It failed again: a new round.
        o.failed(7, at(2800));
        assert_eq!(o.stale(7, stored, at(3000)), Stale::Serve);
        // Other tiles are not concerned.
        assert_eq!(o.stale(8, stored, at(3000)), Stale::Ask);
    }

    #[test]
    fn a_tile_refreshed_after_the_failure_is_forgotten() {
        let o = Outages::default();
        o.failed(7, at(100));
        // The copy found was stored after the failure (a refresh landed, and went stale since).
        assert_eq!(o.stale(7, at(200), at(300)), Stale::Ask);
        assert_eq!(o.failing(at(300)), 0);
        // An old failure is forgotten too.
        o.failed(7, at(100));
        assert_eq!(o.failing(at(200)), 1);
        assert_eq!(o.failing(at(100) + FORGET), 0);
        assert_eq!(o.stale(7, at(0), at(100) + FORGET), Stale::Ask);
        assert_eq!(o.tiles.lock().unwrap().len(), 0);
    }

    #[test]
    fn the_table_is_bounded() {
        let o = Outages::default();
        for k in 0..MAX_TILES as u128 {
            o.failed(k, at(0));
        }
        // Full of recent failures: a new tile is not remembered.
        o.failed(u128::MAX, at(10));
        assert_eq!(o.failing(at(10)), MAX_TILES);
        assert_eq!(o.stale(u128::MAX, at(0), at(20)), Stale::Ask);
        // Once those are old, they make room.
        o.failed(u128::MAX, at(0) + FORGET);
        assert_eq!(o.tiles.lock().unwrap().len(), 1);
    }
}
