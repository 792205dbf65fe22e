//! Following the store: the change messages tollgate's writes publish, the keys other programs
//! write (where the store tells of them), the lookups of keys the cache does not know, and the
//! full reads — in one task, in turn.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::broadcast::error::{RecvError, TryRecvError};

use super::refresh::BATCH;
use super::sync::LOOKUPS_QUEUED;
use super::ConsumerCache;

/// The task that follows the store, started: it subscribes at once, and follows what it
/// hears from [`Following::go`] on (what comes before waits in the subscriptions' queues).
pub struct Following {
    subscribed: tokio::sync::watch::Receiver<bool>,
    go: tokio::sync::oneshot::Sender<bool>,
}

impl Following {
    /// Waits until the store's subscriptions are made (its marks queued), for `within` at
    /// most: whether they are.
    pub async fn subscribed(&mut self, within: Duration) -> bool {
        tokio::time::timeout(within, self.subscribed.wait_for(|s| *s))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Begins following. `first_read_follows`: the start's first read of the store begins
    /// now (it asks for its own retry if it fails); else a cache not read from the store
    /// owes a read.
    pub fn go(self, first_read_follows: bool) {
        let _ = self.go.send(first_read_follows);
    }
}

impl ConsumerCache {
    /// Follows invalidation messages and resyncs every `resync_every`, on `runtime`, from
    /// [`Following::go`] on.
    pub fn start(
        self: &Arc<Self>,
        runtime: &tokio::runtime::Handle,
        resync_every: Duration,
    ) -> Following {
        let (lookup, mut lookups) = tokio::sync::mpsc::channel::<String>(LOOKUPS_QUEUED);
        *self.lookups.lock().unwrap_or_else(|p| p.into_inner()) = Some(lookup);
        let (catch_up, mut catching_up) = tokio::sync::mpsc::channel(4);
        *self.catch_up.lock().unwrap_or_else(|p| p.into_inner()) = Some(catch_up);
        let (subscribed, told) = tokio::sync::watch::channel(false);
        let (go, mut begin) = tokio::sync::oneshot::channel();
        let cache = self.clone();
        runtime.spawn(async move {
            // Subscribed first, before the store is read: a load of many credentials takes
            // seconds (the start's first one; an upgraded process serves with the tables
            // handed over, its read still to come), and what changes meanwhile is followed at
            // once (and kept by the read's swap), not lost until a read after it.
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
            // Told once both subscriptions are made: the store's mark of each is queued (a
            // store over the network subscribes after the calls return; the embedded store
            // has no marks, its messages are its own process's).
            // (Not waited for once told to go: a store that does not answer makes none. One
            // refused, its relay ended, makes none either.)
            let made =
                |rx: &tokio::sync::broadcast::Receiver<String>| !rx.is_empty() || rx.is_closed();
            let mut told_to_go = None;
            while cache.store.embedded_dir().is_none()
                && !(made(&messages) && keys.as_ref().is_none_or(made))
            {
                match begin.try_recv() {
                    Ok(first_read_follows) => told_to_go = Some(first_read_follows),
                    Err(tokio::sync::oneshot::error::TryRecvError::Closed) => {
                        told_to_go = Some(true)
                    }
                    Err(tokio::sync::oneshot::error::TryRecvError::Empty) => {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                        continue;
                    }
                }
                break;
            }
            let _ = subscribed.send(true);
            let first_read_follows = match told_to_go {
                Some(told) => told,
                None => begin.await.unwrap_or(true),
            };
            // The first full load (before serving, or owed below) is followed by one each period.
            let mut ticker =
                tokio::time::interval_at(tokio::time::Instant::now() + resync_every, resync_every);
            // A full read owed since a (re)subscription or lost messages, tried again each
            // second until done: what changed meanwhile was not heard of.
            let mut owed = false;
            let retry = tokio::time::sleep(Duration::ZERO);
            tokio::pin!(retry);
            // Not read from the store yet, and no first read begun (the tables handed over by
            // an upgrade): a read is owed, tried each second until done. The subscriptions'
            // marks ask for it too: one read.
            if !cache.loaded_from_store() && !first_read_follows {
                owe(&mut owed, retry.as_mut());
            }
            // Lookups run from here on: a request may wait for its own.
            cache.looking_up.store(true, Ordering::Relaxed);
            let mut catching = CatchingUp::default();
            loop {
                tokio::select! {
                    Some(entity) = lookups.recv() => {
                        // With the lookups queued behind it, in one refresh.
                        let mut entities = vec![entity];
                        while entities.len() < BATCH {
                            match lookups.try_recv() {
                                Ok(entity) => entities.push(entity),
                                Err(_) => break,
                            }
                        }
                        // (Told before the lookups' end: their requests answer 503, not 401.)
                        match cache.refresh_many(&entities).await {
                            Ok(_) => cache.set_store_answers(true),
                            Err(e) => {
                                log::debug!(
                                    "consumer cache: lookup of {} failed: {e}",
                                    named(&entities)
                                );
                                cache.set_store_answers(false);
                            }
                        }
                        for entity in &entities {
                            cache.looked_up(entity);
                        }
                    }
                    Some(answer) = catching_up.recv() => {
                        catching.asked(answer, keys.is_some());
                        cache.store.ask_caught_up();
                    }
                    msg = messages.recv() => {
                        let heard = Heard::drain(msg, &mut messages, Some);
                        let (closed, caught_up) = (heard.closed, heard.caught_up);
                        if cache.follow(heard).await {
                            owe(&mut owed, retry.as_mut());
                        }
                        if caught_up {
                            catching.messages_followed();
                        }
                        if closed {
                            break;
                        }
                    }
                    key = next_key(&mut keys) => {
                        let entity = |key: String| cache.layout.entity_of(&key);
                        // (Some: a key was heard of.)
                        let Some(rx) = keys.as_mut() else { continue };
                        let heard = Heard::drain(key, rx, entity);
                        let (closed, caught_up) = (heard.closed, heard.caught_up);
                        if cache.follow(heard).await {
                            owe(&mut owed, retry.as_mut());
                        }
                        if caught_up || closed {
                            catching.keys_followed();
                        }
                        if closed {
                            keys = None;
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
        Following {
            subscribed: told,
            go,
        }
    }

    /// Whether what the store told of before this call has been followed (the change
    /// messages and the keys written it had sent, each refreshed), waited for `within` at
    /// most; blocks, for a thread of its own. What an upgrade's process hands over is then
    /// what the store held when the new process had subscribed (see
    /// [`crate::store::Store::ask_caught_up`]).
    pub fn caught_up_blocking(&self, within: Duration) -> bool {
        let (answer, answered) = std::sync::mpsc::sync_channel(1);
        let asked = self
            .catch_up
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .is_some_and(|ask| ask.try_send(answer).is_ok());
        asked && answered.recv_timeout(within).is_ok()
    }

    /// Follows what was heard at once: whether everything is to be read again — a
    /// (re)subscription, messages dropped, a change not followed (the store did not answer: a
    /// revocation waits no resync period).
    async fn follow(&self, heard: Heard) -> bool {
        let mut everything = heard.everything;
        if !heard.entities.is_empty() {
            if let Err(e) = self.refresh_many(&heard.entities).await {
                log::warn!(
                    "consumer cache: cannot refresh {}: {e}; reading everything again",
                    named(&heard.entities)
                );
                everything = true;
            }
        }
        everything
    }
}

/// The questions of [`ConsumerCache::caught_up_blocking`] waiting for the subscriptions'
/// marks ([`crate::store::CAUGHT_UP`]): answered once each subscription gave its mark and
/// what came before it was followed.
#[derive(Default)]
struct CatchingUp {
    answers: Vec<std::sync::mpsc::SyncSender<()>>,
    messages: bool,
    keys: bool,
}

impl CatchingUp {
    /// A question (the marks asked for again: of the change messages, and of the keys written
    /// when they are followed).
    fn asked(&mut self, answer: std::sync::mpsc::SyncSender<()>, keys_followed: bool) {
        self.answers.push(answer);
        self.messages = true;
        self.keys = keys_followed;
    }

    fn messages_followed(&mut self) {
        self.messages = false;
        self.answer();
    }

    /// (Also when the keys written are no longer told: nothing more to wait for there.)
    fn keys_followed(&mut self) {
        self.keys = false;
        self.answer();
    }

    fn answer(&mut self) {
        if !self.messages && !self.keys {
            for answer in self.answers.drain(..) {
                let _ = answer.try_send(());
            }
        }
    }
}

/// The change messages (or keys written) heard at once: the first, and those already queued
/// behind it (up to [`BATCH`]), refreshed together.
struct Heard {
    /// The entities they name, each once.
    entities: Vec<String>,
    /// Whether everything is to be read again: a (re)subscription, messages dropped.
    everything: bool,
    /// Whether no more will come.
    closed: bool,
    /// Whether the subscription's mark [`crate::store::CAUGHT_UP`] came with them: what it
    /// gave before is among them, or was followed before them.
    caught_up: bool,
}

impl Heard {
    /// `first` and what `rx` holds behind it; `entity`: the entity a message names, if any.
    fn drain(
        first: Result<String, RecvError>,
        rx: &mut tokio::sync::broadcast::Receiver<String>,
        entity: impl Fn(String) -> Option<String>,
    ) -> Heard {
        let mut heard = Heard {
            entities: Vec::new(),
            everything: false,
            closed: false,
            caught_up: false,
        };
        let mut seen = HashSet::new();
        let mut next = Some(first);
        while let Some(message) = next.take() {
            match message {
                Ok(m) if m == crate::store::SUBSCRIBED || m == crate::store::EVERYTHING_CHANGED => {
                    heard.everything = true
                }
                Ok(m) if m == crate::store::CAUGHT_UP => heard.caught_up = true,
                Ok(m) => {
                    if let Some(e) = entity(m) {
                        if seen.insert(e.clone()) {
                            heard.entities.push(e);
                        }
                    }
                }
                // Messages were dropped (a (re)subscription's among them, maybe).
                Err(RecvError::Lagged(_)) => heard.everything = true,
                Err(RecvError::Closed) => {
                    heard.closed = true;
                    break;
                }
            }
            if heard.entities.len() < BATCH {
                next = match rx.try_recv() {
                    Ok(m) => Some(Ok(m)),
                    Err(TryRecvError::Lagged(n)) => Some(Err(RecvError::Lagged(n))),
                    Err(TryRecvError::Closed) => Some(Err(RecvError::Closed)),
                    Err(TryRecvError::Empty) => None,
                };
            }
        }
        heard
    }
}

/// How long a full read owed waits for what else owes one: the subscriptions of the start (to
/// the change messages and to the keys written) are one read, not one each.
const SETTLE: Duration = Duration::from_millis(100);

/// Owes a full read, begun [`SETTLE`] from the first reason for it.
fn owe(owed: &mut bool, retry: std::pin::Pin<&mut tokio::time::Sleep>) {
    if !std::mem::replace(owed, true) {
        retry.reset(tokio::time::Instant::now() + SETTLE);
    }
}

/// The entities of a refresh, for the log: the one, or how many and the first.
fn named(entities: &[String]) -> String {
    match entities {
        [one] => one.clone(),
        [first, ..] => format!("{} entities ({first}, ...)", entities.len()),
        [] => "nothing".into(),
    }
}

/// The next key written, of a store that tells them; pends for good for one that does not.
async fn next_key(
    keys: &mut Option<tokio::sync::broadcast::Receiver<String>>,
) -> Result<String, RecvError> {
    match keys {
        Some(keys) => keys.recv().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use tokio::sync::broadcast;

    use super::{Heard, BATCH};

    fn entity(m: String) -> Option<String> {
        m.strip_prefix("EG-").map(String::from)
    }

    #[test]
    fn what_is_queued_is_heard_at_once_each_entity_once() {
        let (tx, mut rx) = broadcast::channel(BATCH * 2);
        for m in [
            "EG-a",
            "EG-b",
            "other",
            "EG-a",
            crate::store::SUBSCRIBED,
            crate::store::CAUGHT_UP,
            "EG-c",
        ] {
            tx.send(m.to_string()).expect("send");
        }
        let first = rx.try_recv().map_err(|_| super::RecvError::Closed);
        let heard = Heard::drain(first, &mut rx, entity);
        assert_eq!(heard.entities, ["a", "b", "c"]);
        assert!(heard.everything, "a subscription's mark");
        assert!(heard.caught_up, "the mark of a catch-up");
        assert!(!heard.closed);
        // No more than a batch at once: the rest stays queued.
        for i in 0..BATCH + 3 {
            tx.send(format!("EG-{i}")).expect("send");
        }
        let first = rx.try_recv().map_err(|_| super::RecvError::Closed);
        let heard = Heard::drain(first, &mut rx, entity);
        assert_eq!(heard.entities.len(), BATCH);
        assert!(!heard.everything && !heard.caught_up);
        assert_eq!(rx.len(), 3);
    }

    #[test]
    fn messages_dropped_or_the_end_are_heard_with_the_rest() {
        let (tx, mut rx) = broadcast::channel(2);
        for m in ["EG-a", "EG-b", "EG-c", "EG-d"] {
            tx.send(m.to_string()).expect("send");
        }
        // The oldest were dropped: everything is read again, and what is left is refreshed.
        let first = Err(super::RecvError::Lagged(2));
        let heard = Heard::drain(first, &mut rx, entity);
        assert!(heard.everything);
        drop(tx);
        assert_eq!(heard.entities, ["c", "d"]);
        assert!(!heard.closed);
        let first = rx.try_recv().map_err(|_| super::RecvError::Closed);
        let heard = Heard::drain(first, &mut rx, entity);
        assert!(heard.closed, "the sender is gone");
    }
}
