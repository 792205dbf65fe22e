//! Liveness and readiness. `/healthcheck` stays Kargo's plain `200 OK`; `/healthcheck?ready`
//! answers 503 with a short JSON reason while the consumer cache has never loaded or the
//! configured store does not answer. A probe pings the store every couple of seconds and keeps
//! the store's gauge current, so neither readiness nor a scrape waits on the store; a scrape
//! reads the consumer cache's figures as they are.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::consumers::cache::ConsumerCache;
use crate::metrics::metrics;
use crate::store::Store;

const PROBE_EVERY: Duration = Duration::from_secs(2);

pub struct Health {
    cache: Arc<ConsumerCache>,
    store_up: AtomicBool,
}

impl Health {
    pub fn new(cache: Arc<ConsumerCache>) -> Health {
        Health {
            cache,
            store_up: AtomicBool::new(true),
        }
    }

    /// `None` when ready, else why not.
    pub fn not_ready(&self) -> Option<String> {
        if !self.cache.is_loaded() {
            return Some("the consumer cache has not loaded yet".into());
        }
        if !self.store_up.load(Ordering::Relaxed) {
            // (Not why: the answer goes to whoever reaches the gateway's port, and the store's
            // error names its address. The log says it.)
            return Some("the consumer store is unreachable".into());
        }
        None
    }

    /// Pings the store and sets its gauge now and every [`PROBE_EVERY`]; a scrape reads the
    /// consumer cache's figures.
    pub fn start_probe(self: &Arc<Self>, runtime: &tokio::runtime::Handle, store: Arc<dyn Store>) {
        let health = self.clone();
        runtime.spawn(async move {
            let mut ticker = tokio::time::interval(PROBE_EVERY);
            loop {
                ticker.tick().await;
                let ping = || async {
                    match tokio::time::timeout(Duration::from_secs(2), store.ping()).await {
                        Ok(Ok(())) => (true, String::new()),
                        Ok(Err(e)) => (false, e.to_string()),
                        Err(_) => (false, "no answer within 2 s".to_string()),
                    }
                };
                let (mut up, mut error) = ping().await;
                if !up && health.store_up.load(Ordering::Relaxed) {
                    // Asked again at once, on a new connection: a connection the server closed
                    // (it restarted between two probes) fails the first command sent on it, and
                    // the store was called unreachable once it answered again.
                    (up, error) = ping().await;
                }
                let was_up = health.store_up.swap(up, Ordering::Relaxed);
                health.cache.set_store_answers(up);
                if was_up && !up {
                    log::error!("consumer store unreachable: {error}; known credentials are served from memory, Admin API writes answer 503");
                } else if up && !was_up {
                    log::info!("consumer store reachable again");
                }
                metrics().store_up.set(i64::from(up));
            }
        });
        // The consumer cache's figures as they are when scraped (scrapes come one at a time,
        // so the counters are carried forward by one writer).
        let cache = self.cache.clone();
        metrics().on_scrape(Box::new(move || publish_cache(&cache)));
    }
}

/// Copies the consumer cache's size, resync age and lookup counts into the registry.
fn publish_cache(cache: &ConsumerCache) {
    let m = metrics();
    m.cache_credentials.set(cache.len() as i64);
    m.cache_resync_age
        .set(cache.since_resync().map_or(-1.0, |d| d.as_secs_f64()));
    let hits = cache.stats.hits.load(Ordering::Relaxed);
    let misses = cache.stats.misses.load(Ordering::Relaxed);
    m.cache_hits.inc_by(hits.saturating_sub(m.cache_hits.get()));
    m.cache_misses
        .inc_by(misses.saturating_sub(m.cache_misses.get()));
    let loads = cache.stats.full_loads.load(Ordering::Relaxed);
    m.cache_full_loads
        .inc_by(loads.saturating_sub(m.cache_full_loads.get()));
}
