//! Stale tiles being refreshed, and tiles whose upstream has just failed them. A request that
//! finds a tile stale within its stale-if-error window either refreshes it or, when another
//! request is refreshing it already or the upstream failed it a moment ago, gets the stale copy
//! at once (nginx's `proxy_cache_use_stale updating`). One request per tile asks the upstream
//! again every [`RETRY`] after a failure.
//!
//! Without this, requests waited on the refresh's cache lock: when it failed, each became the
//! next refresh in turn (with a frozen upstream a tile's n-th concurrent request waited n
//! timeouts, and those past the lock's retries were answered 502), and when the refresh took
//! longer than the lock timeout they went upstream without the cache (502 from a hung upstream
//! while the stale copy was there).
//!
//! Only stale lookups and failures come here; a fresh hit never does.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

/// How often one request per failing tile asks the upstream again.
pub const RETRY: Duration = Duration::from_secs(1);

/// How long a refresh is taken to be in flight: a request that left without its refresh
/// finishing leaves its mark, which lapses after this (the cache lock's own age limit).
const REFRESH: Duration = Duration::from_secs(30);

/// Tiles followed at most. Past it, entries with nothing recent in them go (at most once a
/// second), and a tile that finds no room is not followed (its requests wait on the refresh as
/// they would without this).
const MAX_TILES: usize = 200_000;
/// A failure older than this is of no use: the tile was refreshed since or nobody asked for it.
const FORGET: Duration = Duration::from_secs(60);

#[derive(Debug, Default)]
struct Tile {
    /// The last failure.
    failed: Option<SystemTime>,
    /// Since when a request has been refreshing it, if one is.
    refreshing: Option<SystemTime>,
}

impl Tile {
    /// The latest event: a stored copy newer than it was stored after it.
    fn last(&self) -> Option<SystemTime> {
        self.failed.max(self.refreshing)
    }

    fn recent(&self, now: SystemTime) -> bool {
        self.failed.is_some_and(|t| elapsed(t, now) < FORGET)
            || self.refreshing.is_some_and(|t| elapsed(t, now) < REFRESH)
    }
}

/// The tiles followed, by their key's hash (a variant of a tile is a tile of its own).
#[derive(Debug, Default)]
pub struct Outages {
    tiles: Mutex<Tiles>,
}

#[derive(Debug, Default)]
struct Tiles {
    map: HashMap<u128, Tile>,
    pruned: Option<SystemTime>,
}

impl Tiles {
    /// Room for one more tile, if there is or can be made.
    fn room(&mut self, now: SystemTime) -> bool {
        if self.map.len() < MAX_TILES {
            return true;
        }
        if self
            .pruned
            .is_some_and(|t| elapsed(t, now) < Duration::from_secs(1))
        {
            return false;
        }
        self.pruned = Some(now);
        self.map.retain(|_, t| t.recent(now));
        self.map.len() < MAX_TILES
    }
}

/// What a request for a stale tile does.
#[derive(Debug, PartialEq, Eq)]
pub enum Stale {
    /// Serve the stale copy now: another request is refreshing it, or its upstream failed it
    /// a moment ago.
    Serve,
    /// Refresh it (nothing is in flight for it, or it is this request's turn to retry).
    Refresh,
}

impl Outages {
    /// The upstream failed the tile `key` at `now` (its refresh, if one was in flight, ended).
    pub fn failed(&self, key: u128, now: SystemTime) {
        let mut tiles = self.tiles.lock().unwrap_or_else(|p| p.into_inner());
        if !tiles.map.contains_key(&key) && !tiles.room(now) {
            return;
        }
        tiles.map.insert(
            key,
            Tile {
                failed: Some(now),
                refreshing: None,
            },
        );
    }

    /// The upstream answered the refresh of the tile `key` with an answer that is no failure
    /// and was not stored (a 4xx, an answer that may not be stored): the upstream is there, so
    /// the stale copy stands in for it no longer — the next request asks it again.
    pub fn answered(&self, key: u128) {
        let mut tiles = self.tiles.lock().unwrap_or_else(|p| p.into_inner());
        tiles.map.remove(&key);
    }

    /// A request found the tile `key` stale (and within its stale-if-error window), stored at
    /// `updated`. A request that `stores` what it fetches is on record as refreshing the tile
    /// when it is to; one that does not (a HEAD: its fill is dropped) only reads the record:
    /// its mark would have every request of the tile served the stale copy for [`REFRESH`],
    /// with no refresh under way.
    pub fn stale(&self, key: u128, updated: SystemTime, now: SystemTime, stores: bool) -> Stale {
        let mut tiles = self.tiles.lock().unwrap_or_else(|p| p.into_inner());
        let refresh = Tile {
            failed: None,
            refreshing: Some(now),
        };
        let Some(t) = tiles.map.get_mut(&key) else {
            if stores && tiles.room(now) {
                tiles.map.insert(key, refresh);
            }
            return Stale::Refresh;
        };
        // Stored after what is on record: a refresh has landed since; this one starts afresh.
        if t.last().is_none_or(|last| updated > last) || !t.recent(now) {
            if stores {
                *t = refresh;
            }
            return Stale::Refresh;
        }
        if t.failed.is_some_and(|f| elapsed(f, now) < RETRY) {
            return Stale::Serve;
        }
        match t.refreshing {
            Some(since) if elapsed(since, now) < REFRESH => Stale::Serve,
            _ => {
                if stores {
                    t.refreshing = Some(now);
                }
                Stale::Refresh
            }
        }
    }

    /// Tiles the upstream failed within the last [`FORGET`] and not refreshed since, as far as
    /// their requests showed.
    pub fn failing(&self, now: SystemTime) -> usize {
        let tiles = self.tiles.lock().unwrap_or_else(|p| p.into_inner());
        tiles
            .map
            .values()
            .filter(|t| t.failed.is_some_and(|f| elapsed(f, now) < FORGET))
            .count()
    }
}

fn elapsed(since: SystemTime, now: SystemTime) -> Duration {
    // A record from the future: the clock was set back since (taken as long past — as 0 s,
    // it stayed recent for as long as the clock went back, and the tile's stale copy was
    // served that long with no refresh asked), or another thread wrote it just after this
    // request read the clock (0 s: it is that recent).
    match now.duration_since(since) {
        Ok(d) => d,
        Err(e) if e.duration() < Duration::from_secs(1) => Duration::ZERO,
        Err(_) => Duration::MAX,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000) + Duration::from_millis(ms)
    }

    /// The clock set back after a refresh began: the record, now in the future, is no
    /// refresh under way (the stale copy was served, unrefreshed, for as long as the step).
    #[test]
    fn a_record_from_before_the_clock_went_back_is_past() {
        let o = Outages::default();
        assert_eq!(o.stale(7, at(0), at(600_000), true), Stale::Refresh);
        // Ten minutes back, a copy stored after the step, stale again.
        assert_eq!(o.stale(7, at(1_000), at(5_000), true), Stale::Refresh);
        o.failed(8, at(600_000));
        assert_eq!(o.failing(at(5_000)), 0);
        // A record written just after this request read the clock is that recent.
        assert_eq!(o.stale(9, at(0), at(10_000), true), Stale::Refresh);
        assert_eq!(o.stale(9, at(0), at(9_990), true), Stale::Serve);
    }

    #[test]
    fn one_request_refreshes_a_stale_tile_the_others_are_served_it() {
        let o = Outages::default();
        let stored = at(0);
        assert_eq!(o.stale(7, stored, at(10), true), Stale::Refresh);
        // While it refreshes, everyone else gets the stale copy.
        for t in [20, 1_000, 29_000] {
            assert_eq!(o.stale(7, stored, at(t), true), Stale::Serve, "{t}");
        }
        // The refresh landed (a copy stored after it began): the next time the tile is stale,
        // a new refresh.
        assert_eq!(o.stale(7, at(500), at(60_000), true), Stale::Refresh);
        assert_eq!(o.stale(7, at(500), at(60_001), true), Stale::Serve);
        // A refresh that never reported back (its client left) lapses: another refreshes.
        assert_eq!(
            o.stale(7, at(500), at(60_000) + REFRESH, true),
            Stale::Refresh
        );
        // Other tiles are not concerned.
        assert_eq!(o.stale(8, stored, at(20), true), Stale::Refresh);
    }

    #[test]
    fn a_request_that_does_not_store_reads_the_record_and_leaves_no_mark() {
        let o = Outages::default();
        let stored = at(0);
        // A HEAD finds the tile stale: it asks the upstream, but is not on record as refreshing.
        assert_eq!(o.stale(7, stored, at(10), false), Stale::Refresh);
        assert_eq!(o.stale(7, stored, at(20), false), Stale::Refresh);
        assert_eq!(o.stale(7, stored, at(30), true), Stale::Refresh);
        // While a GET refreshes it, a HEAD is served the stale copy as the others are.
        assert_eq!(o.stale(7, stored, at(40), false), Stale::Serve);
        // After a failure too, and it does not take the retry's turn.
        o.failed(7, at(50));
        assert_eq!(o.stale(7, stored, at(60), false), Stale::Serve);
        assert_eq!(o.stale(7, stored, at(1100), false), Stale::Refresh);
        assert_eq!(o.stale(7, stored, at(1200), true), Stale::Refresh);
    }

    #[test]
    fn a_failed_tile_is_served_stale_and_asked_again_once_per_retry() {
        let o = Outages::default();
        let stored = at(0);
        assert_eq!(o.stale(7, stored, at(10), true), Stale::Refresh);
        o.failed(7, at(400));
        assert_eq!(o.failing(at(400)), 1);
        // Within RETRY of the failure: everyone is served the stale copy.
        for t in [400, 900, 1399] {
            assert_eq!(o.stale(7, stored, at(t), true), Stale::Serve, "{t}");
        }
        // Then one request asks again; the others are served while it does.
        assert_eq!(o.stale(7, stored, at(1400), true), Stale::Refresh);
        assert_eq!(o.stale(7, stored, at(1500), true), Stale::Serve);
        assert_eq!(o.stale(7, stored, at(2399), true), Stale::Serve);
        // It failed again: a new round.
        o.failed(7, at(2800));
        assert_eq!(o.stale(7, stored, at(3000), true), Stale::Serve);
        assert_eq!(o.stale(7, stored, at(3800), true), Stale::Refresh);
    }

    #[test]
    fn a_refresh_answered_without_a_copy_to_store_ends_it() {
        let o = Outages::default();
        let stored = at(0);
        assert_eq!(o.stale(7, stored, at(10), true), Stale::Refresh);
        assert_eq!(o.stale(7, stored, at(20), true), Stale::Serve);
        // The upstream answered (a 403, say): nothing stored, nothing in flight any more.
        o.answered(7);
        assert_eq!(o.stale(7, stored, at(30), true), Stale::Refresh);
        // After a failure too.
        o.failed(7, at(40));
        assert_eq!(o.stale(7, stored, at(50), true), Stale::Serve);
        o.answered(7);
        assert_eq!(o.stale(7, stored, at(60), true), Stale::Refresh);
    }

    #[test]
    fn a_tile_refreshed_after_the_failure_is_forgotten() {
        let o = Outages::default();
        o.failed(7, at(100));
        // The copy found was stored after the failure (a refresh landed, and went stale since).
        assert_eq!(o.stale(7, at(200), at(300), true), Stale::Refresh);
        assert_eq!(o.failing(at(300)), 0);
        // An old failure is forgotten too.
        o.failed(7, at(100));
        assert_eq!(o.failing(at(200)), 1);
        assert_eq!(o.failing(at(100) + FORGET), 0);
        assert_eq!(o.stale(7, at(0), at(100) + FORGET, true), Stale::Refresh);
    }

    #[test]
    fn the_table_is_bounded() {
        let o = Outages::default();
        for k in 0..MAX_TILES as u128 {
            o.failed(k, at(0));
        }
        // Full of recent failures: a new tile is not followed (it refreshes, as without this).
        o.failed(u128::MAX, at(10));
        assert_eq!(o.failing(at(10)), MAX_TILES);
        assert_eq!(o.stale(u128::MAX, at(0), at(20), true), Stale::Refresh);
        assert_eq!(o.stale(u128::MAX, at(0), at(30), true), Stale::Refresh);
        // Once those are old, they make room.
        o.failed(u128::MAX, at(0) + FORGET);
        assert_eq!(o.tiles.lock().unwrap().map.len(), 1);
    }
}
