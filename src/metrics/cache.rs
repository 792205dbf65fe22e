//! The tile cache's families: requests by cache status and api endpoint, bytes served from the
//! cache, what each tier holds, evictions, misses not admitted to a full memory tier or not
//! stored for the memory the fills under way held, damaged disk files and writes the disk was
//! too far behind for, waits on another request's fill, and purges.

use prometheus::{
    Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

use super::must;

/// The `X-Cache-Status` values, as the `status` label.
pub const CACHE_STATUSES: [&str; 6] = ["HIT", "MISS", "STALE", "EXPIRED", "REVALIDATED", "BYPASS"];

const TIERS: [&str; 2] = ["memory", "disk"];

/// What a purge through the Admin API named, as the `kind` label.
pub const PURGE_KINDS: [&str; 3] = ["url", "api_endpoint", "prefix"];

pub struct CacheMetrics {
    requests: IntCounterVec,
    served_bytes: IntCounterVec,
    refreshes: IntCounterVec,
    objects: Vec<IntGauge>,
    bytes: Vec<IntGauge>,
    budget: Vec<IntGauge>,
    evictions: Vec<IntCounter>,
    declined: IntCounter,
    /// Fills not stored: the fills under way held the most ordinary memory they may.
    fills_over: IntCounter,
    damaged: IntCounter,
    disk_skipped: IntCounter,
    disk_failed: IntCounter,
    /// The shared memory for tile bodies: its size, bytes of bodies, idle pages kept.
    shared: [IntGauge; 3],
    shared_cuts: IntCounter,
    /// Bodies that found no room in it: with too few free pages, with free pages in pieces.
    shared_refused: [IntCounter; 2],
    pub lock_wait: Histogram,
    /// Purges through the Admin API, by [`PURGE_KINDS`].
    purges: [IntCounter; 3],
}

/// One api endpoint's cache handles, resolved when the config is built.
pub struct EndpointCache {
    requests: Vec<IntCounter>,
    served_bytes: IntCounter,
    /// Background refreshes: done, failed.
    refreshes: [IntCounter; 2],
}

impl EndpointCache {
    /// Counts a request that went through a `cache` step.
    pub fn record(&self, status: &str, bytes_from_cache: Option<usize>) {
        if let Some(i) = CACHE_STATUSES.iter().position(|s| *s == status) {
            self.requests[i].inc();
        }
        if let Some(b) = bytes_from_cache {
            self.served_bytes.inc_by(b as u64);
        }
    }

    /// Counts a background refresh of a stale tile.
    pub fn refreshed(&self, failed: bool) {
        self.refreshes[usize::from(failed)].inc();
    }
}

impl CacheMetrics {
    pub fn new(registry: &Registry) -> CacheMetrics {
        let reg = |c: Box<dyn prometheus::core::Collector>| must(registry.register(c));
        let requests = must(IntCounterVec::new(
            Opts::new(
                "tollgate_cache_requests_total",
                "Requests through a cache step, by X-Cache-Status",
            ),
            &["api_endpoint", "status"],
        ));
        reg(Box::new(requests.clone()));
        let served_bytes = must(IntCounterVec::new(
            Opts::new(
                "tollgate_cache_served_bytes_total",
                "Response body bytes served from the tile cache",
            ),
            &["api_endpoint"],
        ));
        reg(Box::new(served_bytes.clone()));
        let refreshes = must(IntCounterVec::new(
            Opts::new(
                "tollgate_cache_refreshes_total",
                "Background refreshes of stale tiles (stale-while-revalidate), by result: done (the upstream answered) or failed (the stale tile stays)",
            ),
            &["api_endpoint", "result"],
        ));
        reg(Box::new(refreshes.clone()));
        let gauge = |name: &str, help: &str| {
            let g = must(IntGaugeVec::new(Opts::new(name, help), &["tier"]));
            reg(Box::new(g.clone()));
            TIERS
                .iter()
                .map(|t| g.with_label_values(&[t]))
                .collect::<Vec<_>>()
        };
        let objects = gauge(
            "tollgate_cache_objects",
            "Objects in the tile cache, per tier",
        );
        let bytes = gauge(
            "tollgate_cache_bytes",
            "Bytes the tile cache holds, per tier",
        );
        let budget = gauge(
            "tollgate_cache_budget_bytes",
            "The tile cache's byte budget, per tier",
        );
        let evictions = must(IntCounterVec::new(
            Opts::new(
                "tollgate_cache_evictions_total",
                "Objects the tile cache let go to stay within its budget, per tier",
            ),
            &["tier"],
        ));
        reg(Box::new(evictions.clone()));
        let declined = must(IntCounter::new(
            "tollgate_cache_declined_total",
            "Misses not stored because the memory tier was full and the tile not asked for before",
        ));
        reg(Box::new(declined.clone()));
        let fills_over = must(IntCounter::new(
            "tollgate_cache_fills_over_memory_total",
            "Misses not stored because the fills under way held the most ordinary memory they may",
        ));
        reg(Box::new(fills_over.clone()));
        let damaged = must(IntCounter::new(
            "tollgate_cache_disk_damaged_total",
            "Damaged or partial disk cache files found (read as misses and removed)",
        ));
        reg(Box::new(damaged.clone()));
        let disk_skipped = must(IntCounter::new(
            "tollgate_cache_disk_skipped_total",
            "Stored tiles not written to the disk tier because the disk was behind",
        ));
        reg(Box::new(disk_skipped.clone()));
        let disk_failed = must(IntCounter::new(
            "tollgate_cache_disk_write_failures_total",
            "Stored tiles whose write to the disk tier failed (the file system full, an I/O error)",
        ));
        reg(Box::new(disk_failed.clone()));
        let shared = must(IntGaugeVec::new(
            Opts::new(
                "tollgate_cache_shared_memory_bytes",
                "The memory tier's shared memory for tile bodies: the file's size, the bodies in it, the free pages kept",
            ),
            &["state"],
        ));
        reg(Box::new(shared.clone()));
        let shared_cuts = must(IntCounter::new(
            "tollgate_cache_shared_memory_cuts_total",
            "Tile bodies sent by sendfile (or past the kept free pages) whose pages were cut out of the shared memory when they went",
        ));
        reg(Box::new(shared_cuts.clone()));
        let shared_refused = must(IntCounterVec::new(
            Opts::new(
                "tollgate_cache_shared_memory_refused_total",
                "Tile bodies of a size kept in shared memory that found no room there (kept in ordinary memory, sent by copying): too few free pages (full), or free pages in pieces too short (fragmented)",
            ),
            &["reason"],
        ));
        reg(Box::new(shared_refused.clone()));
        let lock_wait = must(Histogram::with_opts(
            HistogramOpts::new(
                "tollgate_cache_lock_wait_seconds",
                "Time a request waited for another request's fill of the same object",
            )
            .buckets(super::DURATION_BUCKETS.to_vec()),
        ));
        reg(Box::new(lock_wait.clone()));
        let purges = must(IntCounterVec::new(
            Opts::new(
                "tollgate_cache_purges_total",
                "Purges through the Admin API, by what they named: one URL, an api endpoint, a path prefix",
            ),
            &["kind"],
        ));
        reg(Box::new(purges.clone()));
        CacheMetrics {
            requests,
            served_bytes,
            refreshes,
            objects,
            bytes,
            budget,
            evictions: TIERS
                .iter()
                .map(|t| evictions.with_label_values(&[t]))
                .collect(),
            declined,
            fills_over,
            damaged,
            disk_skipped,
            disk_failed,
            shared: ["size", "used", "idle"].map(|s| shared.with_label_values(&[s])),
            shared_cuts,
            shared_refused: ["full", "fragmented"].map(|r| shared_refused.with_label_values(&[r])),
            lock_wait,
            purges: PURGE_KINDS.map(|k| purges.with_label_values(&[k])),
        }
    }

    /// Counts a purge through the Admin API of `kind` (one of [`PURGE_KINDS`]).
    pub fn purged(&self, kind: &str) {
        if let Some(i) = PURGE_KINDS.iter().position(|k| *k == kind) {
            self.purges[i].inc();
        }
    }

    pub fn endpoint(&self, name: &str) -> EndpointCache {
        EndpointCache {
            requests: CACHE_STATUSES
                .iter()
                .map(|s| self.requests.with_label_values(&[name, s]))
                .collect(),
            served_bytes: self.served_bytes.with_label_values(&[name]),
            refreshes: ["done", "failed"].map(|r| self.refreshes.with_label_values(&[name, r])),
        }
    }

    /// Brings the tier gauges and counters up to the store's own figures.
    pub fn refresh(&self) {
        let Some(c) = crate::cache::get() else {
            return;
        };
        // Counters are brought up by what they lack: two scrapes at once would both add it.
        static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
        let s = c.store.tiers();
        for (i, t) in s.iter().enumerate() {
            self.objects[i].set(t.objects as i64);
            self.bytes[i].set(t.bytes as i64);
            self.budget[i].set(t.budget as i64);
            let seen = self.evictions[i].get();
            self.evictions[i].inc_by(t.evictions.saturating_sub(seen));
        }
        if let Some(m) = c.store.memory.shared() {
            for (g, v) in self.shared.iter().zip([m.size, m.used, m.idle]) {
                g.set(v as i64);
            }
            self.shared_cuts
                .inc_by(m.cuts.saturating_sub(self.shared_cuts.get()));
            let full = m.refused.saturating_sub(m.fragmented);
            for (c, n) in self.shared_refused.iter().zip([full, m.fragmented]) {
                c.inc_by(n.saturating_sub(c.get()));
            }
        }
        self.declined
            .inc_by(c.declined().saturating_sub(self.declined.get()));
        self.fills_over
            .inc_by(c.store.fills_over().saturating_sub(self.fills_over.get()));
        let damaged = c.store.damaged();
        self.damaged
            .inc_by(damaged.saturating_sub(self.damaged.get()));
        let skipped = c.store.disk_skipped();
        self.disk_skipped
            .inc_by(skipped.saturating_sub(self.disk_skipped.get()));
        let failed = c.store.disk_failed();
        self.disk_failed
            .inc_by(failed.saturating_sub(self.disk_failed.get()));
    }
}
