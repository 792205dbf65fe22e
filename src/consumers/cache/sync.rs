//! Keeping the cache in step with the store: the full load (at start and every resync), and
//! the background lookup of a key the cache does not know (run with the refreshes, see
//! `refresh.rs`).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::carry::{longest_id, Changed, Changes};
use super::refresh::{
    app_entry, fields_of, keyed_credential, password_credential, user_entry, APP_FIELDS,
    BASIC_FIELDS, KEYED_FIELDS, USER_FIELDS,
};
use super::{ConsumerCache, Tables};
use crate::consumers::layout::CredentialType;
use crate::store::{StoreError, StoreResult};

/// How many lookups of unknown entities may wait for the task that follows change messages
/// (which runs them in turn with the changes).
pub(super) const LOOKUPS_QUEUED: usize = 1024;

/// How long a request whose credential is not known waits for its lookup in the store (a
/// credential another gateway, or EG, just created works on its first request) before it is
/// answered as unknown.
const LOOKUP_WAIT: Duration = Duration::from_secs(1);

/// A lookup of an unknown entity in the store, queued or running.
#[derive(Debug)]
pub struct Lookup(tokio::sync::watch::Receiver<bool>);

impl Lookup {
    /// Until the lookup ended (its entity is in the tables if the store has it), or for
    /// [`LOOKUP_WAIT`]: whether the store did not answer — the lookup did not end while the
    /// store's answer to one before it (or to it) has been awaited for
    /// [`super::refresh::STALLED`]. That is the
    /// store not answering (see [`ConsumerCache::store_answers`]) until it answers again; a
    /// lookup queued behind many (a burst of unknown keys) with the store answering is not.
    pub async fn done(mut self, cache: &ConsumerCache) -> bool {
        let ended = tokio::time::timeout(LOOKUP_WAIT, self.0.wait_for(|done| *done))
            .await
            .is_ok_and(|r| r.is_ok());
        let silent = !ended && cache.refresh_stalled();
        if silent {
            cache.set_store_answers(false);
        }
        silent
    }
}

/// Full loads asked for: whether one runs, and whether another is wanted after it (`Some`;
/// `true`: tried again each second until it succeeds).
#[derive(Default)]
pub(super) struct LoadRequests {
    running: bool,
    wanted: Option<bool>,
}

impl ConsumerCache {
    /// Loads everything from the store and swaps it in at once. Hashes are read and converted
    /// a chunk at a time, so a million credentials never sit in memory twice. What change
    /// messages refreshed while it read is kept as they left it.
    pub async fn load(&self) -> StoreResult<()> {
        let _one_at_a_time = self.load_lock.lock().await;
        let number = self.loads_begun.fetch_add(1, Ordering::Relaxed) + 1;
        let started = Instant::now();
        *self.changes() = Some(Changes::default());
        let read = self.read_everything().await;
        let mut t = match read {
            Ok(t) => t,
            Err(e) => {
                *self.changes() = None;
                return Err(e);
            }
        };
        t.key_auth.shrink_to_fit();
        t.jwt.shrink_to_fit();
        // Before the tables' lock: the changes kept as hashes (a flood of made-up keys while
        // it read) looked for in what it read, a pass over it; kept whole from now on.
        // (Its longest id found first: a refresh waits for the changes' lock with the tables'.)
        let longest = longest_id(&t);
        let hashed = self.changes().as_mut().map(|c| c.seal(longest));
        if let Some(found) = hashed.map(|h| h.found_in(&t)) {
            if let Some(changes) = self.changes().as_mut() {
                changes.add_found(found);
            }
        }
        let count = t.key_auth.len() + t.jwt.len() + t.basic.len();
        let noteworthy;
        let replaced;
        {
            // Under the tables' lock, which a refresh notes its change under: each change is
            // either carried here or made in the new tables.
            let mut live = self.write();
            let changed = self.changes().take().unwrap_or_default();
            changed.carry(&live, &mut t);
            // A resync that found what the tables held (most of them) is not an event an
            // operator reads the log for: the first load, a changed count or a slow load is.
            let before = live.key_auth.len() + live.jwt.len() + live.basic.len();
            noteworthy = !self.from_store.load(Ordering::Relaxed)
                || before != count
                || started.elapsed() >= Duration::from_secs(1);
            replaced = std::mem::replace(&mut *live, t);
            // (Under the lock: tables handed over by the process upgraded never replace
            // these.)
            self.from_store.store(true, Ordering::Relaxed);
            self.loaded.store(true, Ordering::Relaxed);
            self.stats.full_loads.fetch_add(1, Ordering::Relaxed);
            self.last_load_done.fetch_max(number, Ordering::Relaxed);
        }
        // The tables replaced are freed here, not under the lock every authentication takes:
        // a million credentials are as many allocations to free.
        drop(replaced);
        log::log!(
            if noteworthy {
                log::Level::Info
            } else {
                log::Level::Debug
            },
            "consumer cache: {count} credentials loaded from {} in {:.2?}",
            self.store.describe(),
            started.elapsed()
        );
        *self.last_resync.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
        self.recently_missed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        Ok(())
    }

    /// The full loads begun so far: a change missed now is in the tables once a load with a
    /// later number ended ([`Self::loaded_since`]).
    pub(super) fn loads_begun(&self) -> u64 {
        self.loads_begun.load(Ordering::Relaxed)
    }

    /// Whether a full load begun after the `begun`th swapped its tables in.
    pub(super) fn loaded_since(&self, begun: u64) -> bool {
        self.last_load_done.load(Ordering::Relaxed) > begun
    }

    fn changes(&self) -> std::sync::MutexGuard<'_, Option<Changes>> {
        self.changed_while_loading
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Notes a refresh's change for a full load that runs (call it holding the tables' lock);
    /// `found`: the refresh found the entity in the store.
    pub(super) fn note(&self, changed: Changed, found: bool) {
        if let Some(changes) = self.changes().as_mut() {
            changes.note(changed, found);
        }
    }

    /// Runs a full load in the background, after the one running if there is one (`retry`:
    /// until it succeeds, each second), so that change messages are followed meanwhile: a
    /// load of millions of credentials takes seconds, a revocation must not wait for it.
    /// The load runs on a thread of its own: sorting and converting what it read takes tens of
    /// milliseconds between two reads, and on the runtime's worker each step of a refresh (and
    /// the upstreams' health checks) would wait behind them.
    pub fn load_in_background(self: &Arc<Self>, retry: bool) {
        {
            let mut loads = self.loads.lock().unwrap_or_else(|p| p.into_inner());
            loads.wanted = Some(loads.wanted.unwrap_or(false) || retry);
            if std::mem::replace(&mut loads.running, true) {
                return;
            }
        }
        let cache = self.clone();
        on_own_thread(async move { cache.run_loads().await });
    }

    /// Runs one full load on a thread of its own, as [`Self::load_in_background`] does: the
    /// background runtime's worker also serves the Admin API's store I/O, the store's probe
    /// and the upstreams' health checks.
    pub async fn load_off_worker(self: &Arc<Self>) -> StoreResult<()> {
        let cache = self.clone();
        on_own_thread(async move { cache.load().await })
            .await
            .unwrap_or_else(|e| Err(StoreError::Io(format!("the load stopped: {e}"))))
    }

    /// Runs the full loads asked for until none is wanted.
    async fn run_loads(&self) {
        loop {
            // After the load running, if any (the start's first one): what is asked for
            // until then is one load, begun after every ask.
            drop(self.load_lock.lock().await);
            let retry = {
                let mut loads = self.loads.lock().unwrap_or_else(|p| p.into_inner());
                match loads.wanted.take() {
                    Some(retry) => retry,
                    None => {
                        loads.running = false;
                        return;
                    }
                }
            };
            let mut tries = 0;
            while let Err(e) = self.load().await {
                if !retry {
                    log::warn!("consumer cache: resync failed (serving what is cached): {e}");
                    break;
                }
                // (The first try after a subscription made again may find the store's other
                // connection still down: said from the second on.)
                tries += 1;
                let level = if tries > 1 {
                    log::Level::Warn
                } else {
                    log::Level::Debug
                };
                let what = if self.loaded_from_store() {
                    "cannot read the changes it missed"
                } else {
                    "not read from the store yet"
                };
                log::log!(level, "consumer cache: {what} (trying again): {e}");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }

    /// Reads every consumer and credential of the store into new tables.
    async fn read_everything(&self) -> StoreResult<Tables> {
        let mut t = Tables::default();
        // One pass over the namespace's keys (a SCAN per kind would walk all of Redis each time),
        // sorted into kinds without copying them.
        let (user_prefix, app_prefix) = (self.layout.user_prefix(), self.layout.app_prefix());
        let ka_prefix = self.layout.credential_prefix(CredentialType::KeyAuth);
        let jwt_prefix = self.layout.credential_prefix(CredentialType::Jwt);
        let basic_prefix = self.layout.credential_prefix(CredentialType::BasicAuth);
        let (mut users, mut apps, mut key_auth, mut jwt, mut basic) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for k in self
            .store
            .keys_with_prefix(&format!("{}-", self.layout.namespace()))
            .await?
        {
            let kind = if k.starts_with(&user_prefix) {
                &mut users
            } else if k.starts_with(&app_prefix) {
                &mut apps
            } else if k.starts_with(&ka_prefix) {
                &mut key_auth
            } else if k.starts_with(&jwt_prefix) {
                &mut jwt
            } else if k.starts_with(&basic_prefix) {
                &mut basic
            } else {
                continue;
            };
            kind.push(k);
        }
        {
            use std::sync::atomic::Ordering::Relaxed;
            let n = users.len() + apps.len() + key_auth.len() + jwt.len() + basic.len();
            self.progress.done.store(0, Relaxed);
            self.progress.total.store(n, Relaxed);
        }
        self.each_hash(&users, USER_FIELDS, |key, h| {
            let id = &key[user_prefix.len()..];
            let (entry, username) = user_entry(id, &h);
            if let Some(u) = username {
                if let Some(other) = t
                    .usernames
                    .insert(u.as_str().into(), entry.consumer.id.clone())
                {
                    if other != entry.consumer.id {
                        t.shared_names.insert(u.into());
                    }
                }
            }
            t.users.insert(id.into(), entry);
        })
        .await?;
        self.each_hash(&apps, APP_FIELDS, |key, h| {
            let id = &key[app_prefix.len()..];
            t.apps.insert(id.into(), app_entry(id, &h));
        })
        .await?;
        // Credentials share their consumer's id and, mostly, a few scope lists: keep one copy.
        let mut interned_scopes: HashSet<Arc<[String]>> = HashSet::new();
        for (ty, keys) in [
            (CredentialType::KeyAuth, key_auth),
            (CredentialType::Jwt, jwt),
        ] {
            let prefix = self.layout.credential_prefix(ty);
            self.each_hash(&keys, KEYED_FIELDS, |key, h| {
                if let Some(mut c) = keyed_credential(&h) {
                    let owner = t
                        .apps
                        .get(&*c.consumer_id)
                        .or_else(|| t.users.get(&*c.consumer_id));
                    if let Some(owner) = owner {
                        c.consumer_id = owner.consumer.id.clone();
                    }
                    if let Some(scopes) = c.scopes.take() {
                        let shared = match interned_scopes.get(&*scopes) {
                            Some(s) => s.clone(),
                            None => {
                                interned_scopes.insert(scopes.clone());
                                scopes
                            }
                        };
                        c.scopes = Some(shared);
                    }
                    let table = if ty == CredentialType::KeyAuth {
                        &mut t.key_auth
                    } else {
                        &mut t.jwt
                    };
                    table.insert(key[prefix.len()..].into(), c);
                }
            })
            .await?;
        }
        self.each_hash(&basic, BASIC_FIELDS, |key, h| {
            if let Some(c) = password_credential(&h, CredentialType::BasicAuth) {
                t.basic.insert(key[basic_prefix.len()..].into(), c);
            }
        })
        .await?;
        Ok(t)
    }

    /// Calls `f` with `fields` of every hash among `keys` (sets sharing the key space are
    /// skipped), a chunk at a time with a few chunks in flight.
    async fn each_hash(
        &self,
        keys: &[String],
        fields: &[&str],
        mut f: impl FnMut(&str, HashMap<String, String>),
    ) -> StoreResult<()> {
        const CHUNK: usize = 1000;
        const IN_FLIGHT: usize = 4;
        let chunks: Vec<&[String]> = keys.chunks(CHUNK).collect();
        for group in chunks.chunks(IN_FLIGHT) {
            let results = futures_util::future::try_join_all(
                group.iter().map(|c| self.store.hash_fields_many(c, fields)),
            )
            .await?;
            for (key, row) in group
                .iter()
                .flat_map(|c| c.iter())
                .zip(results.into_iter().flatten())
            {
                let Some(row) = row else { continue };
                f(key, fields_of(fields, row));
            }
            let n: usize = group.iter().map(|c| c.len()).sum();
            self.progress
                .done
                .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
        }
        Ok(())
    }

    /// Looks an unknown entity up in the background, at most once per
    /// [`super::missed::NEGATIVE_TTL`].
    /// The lookup, when one is queued or running, which a request may wait on.
    pub(super) fn lookup_later(&self, entity: String) -> Option<Lookup> {
        let lookups = self
            .lookups
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()?;
        let mut pending = self
            .pending_lookups
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(running) = pending.get(&entity) {
            return Some(Lookup(running.subscribe()));
        }
        let may = self
            .recently_missed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .may_look_up(&entity, Instant::now());
        if !may {
            return None;
        }
        // Full (a flood, a store not answering): not looked up now; the periodic reload finds
        // it, or a request after the negative time. (Closed only with the process.) Queued
        // under the lock of the lookups pending, so that its end is told after it is noted.
        if lookups.try_send(entity.clone()).is_err() {
            log::debug!("consumer cache: too many lookups waiting; one left for later");
            return None;
        }
        // Queued before the lookups run (the task that runs them is not subscribed yet): none
        // waits for it.
        if !self.looking_up.load(Ordering::Relaxed) {
            return None;
        }
        let (done, waiting) = tokio::sync::watch::channel(false);
        pending.insert(entity, done);
        Some(Lookup(waiting))
    }

    /// Tells the requests waiting on the lookup of `entity` that it ended.
    pub(super) fn looked_up(&self, entity: &str) {
        let done = self
            .pending_lookups
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(entity);
        if let Some(done) = done {
            done.send_replace(true);
        }
    }
}

/// Runs `work` on the current runtime, polled by a thread of its own (the runtime's blocking
/// pool), not by a worker.
fn on_own_thread<T: Send + 'static>(
    work: impl std::future::Future<Output = T> + Send + 'static,
) -> tokio::task::JoinHandle<T> {
    let runtime = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || runtime.block_on(work))
}
