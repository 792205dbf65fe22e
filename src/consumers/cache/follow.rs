//! Following the store: the change messages tollgate's writes publish, the keys other programs
//! write (where the store tells of them), the lookups of keys the cache does not know, and the
//! full reads — in one task, in turn.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::sync::LOOKUPS_QUEUED;
use super::ConsumerCache;

impl ConsumerCache {
    /// Follows invalidation messages and resyncs every `resync_every`, on `runtime`.
    pub fn start(self: &Arc<Self>, runtime: &tokio::runtime::Handle, resync_every: Duration) {
        let (lookup, mut lookups) = tokio::sync::mpsc::channel::<String>(LOOKUPS_QUEUED);
        *self.lookups.lock().unwrap_or_else(|p| p.into_inner()) = Some(lookup);
        let cache = self.clone();
        runtime.spawn(async move {
            // Until a first load succeeds (the store may be down at start), keep trying.
            while !cache.loaded_from_store() {
                if let Err(e) = cache.load_off_worker().await {
                    log::warn!("consumer cache: not loaded yet: {e}");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
            let channel = cache.layout.invalidation_channel();
            let mut messages = loop {
                match cache.store.subscribe(&channel).await {
                    Ok(rx) => break rx,
                    Err(e) => {
                        log::warn!("consumer cache: cannot follow changes yet: {e}");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            };
            // What other programs write (EG's Admin API, redis-cli), where the store tells it.
            let mut keys = match cache.store.follow_keys(&cache.layout.prefix()).await {
                Ok(keys) => keys,
                Err(e) => {
                    log::warn!("consumer cache: cannot follow other programs' writes: {e}");
                    None
                }
            };
            // The first full load happened before serving; the next one is due after a period.
            let mut ticker =
                tokio::time::interval_at(tokio::time::Instant::now() + resync_every, resync_every);
            // A full read owed since a (re)subscription or lost messages, tried again each
            // second until done: what changed meanwhile was not heard of.
            let mut owed = false;
            let retry = tokio::time::sleep(Duration::ZERO);
            tokio::pin!(retry);
            // Lookups run from here on: a request may wait for its own.
            cache.looking_up.store(true, Ordering::Relaxed);
            loop {
                tokio::select! {
                    Some(entity) = lookups.recv() => {
                        // (Told before the lookup's end: its requests answer 503, not 401.)
                        match cache.refresh_in_turn(&entity).await {
                            Ok(_) => cache.set_store_answers(true),
                            Err(e) => {
                                log::debug!("consumer cache: lookup of {entity} failed: {e}");
                                cache.set_store_answers(false);
                            }
                        }
                        cache.looked_up(&entity);
                    }
                    msg = messages.recv() => match cache.follow(msg, Some).await {
                        Some(true) => {
                            owed = true;
                            retry.as_mut().reset(tokio::time::Instant::now());
                        }
                        Some(false) => {}
                        None => break,
                    },
                    key = next_key(&mut keys) => {
                        let entity = |key: String| cache.layout.entity_of(&key);
                        match cache.follow(key, entity).await {
                            Some(true) => {
                                owed = true;
                                retry.as_mut().reset(tokio::time::Instant::now());
                            }
                            Some(false) => {}
                            None => keys = None,
                        }
                    }
                    () = &mut retry, if owed => {
                        // Begun from now, after what was missed.
                        owed = false;
                        cache.load_in_background(true);
                    }
                    _ = ticker.tick() => cache.load_in_background(false),
                }
            }
            // No more lookups: the requests waiting on one go on (a lookup that will not run
            // is waited for by none).
            cache.looking_up.store(false, Ordering::Relaxed);
            cache
                .pending_lookups
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clear();
        });
    }

    /// Follows what a change message (or a key written, `entity` its entity) says: `Some(true)`
    /// when everything is to be read again — a (re)subscription, messages dropped, a change
    /// not followed (the store did not answer: a revocation waits no resync period) —; `None`
    /// when no more will come.
    async fn follow(
        &self,
        heard: Result<String, tokio::sync::broadcast::error::RecvError>,
        entity: impl FnOnce(String) -> Option<String>,
    ) -> Option<bool> {
        match heard {
            Ok(heard) if heard == crate::store::SUBSCRIBED => Some(true),
            Ok(heard) => {
                let Some(entity) = entity(heard) else {
                    return Some(false);
                };
                let failed = self.refresh_in_turn(&entity).await.err();
                if let Some(e) = &failed {
                    log::warn!(
                        "consumer cache: cannot refresh {entity}: {e}; reading everything again"
                    );
                }
                Some(failed.is_some())
            }
            // Messages were dropped (a (re)subscription's among them, maybe).
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => Some(true),
            Err(_) => None,
        }
    }
}

/// The next key written, of a store that tells them; pends for good for one that does not.
async fn next_key(
    keys: &mut Option<tokio::sync::broadcast::Receiver<String>>,
) -> Result<String, tokio::sync::broadcast::error::RecvError> {
    match keys {
        Some(keys) => keys.recv().await,
        None => std::future::pending().await,
    }
}
