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
use crate::store::CaughtUp;

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
                        let question = catching.asked(answer, keys.is_some());
                        cache.store.ask_caught_up(question);
                    }
                    msg = messages.recv() => {
                        let mut heard = Heard::drain(msg, &mut messages, Some);
                        let (closed, caught_up) = (heard.closed, heard.caught_up.take());
                        if cache.follow(heard).await {
                            owe(&mut owed, retry.as_mut());
                            catching.missed(cache.loads_begun());
                        }
                        if let Some(caught_up) = caught_up {
                            let read = |n| cache.loaded_since(n);
                            catching.heard_answer(Subscription::Messages, caught_up, read);
                        }
                        if closed {
                            break;
                        }
                    }
                    key = next_key(&mut keys) => {
                        let entity = |key: String| cache.layout.entity_of(&key);
                        // (Some: a key was heard of.)
                        let Some(rx) = keys.as_mut() else { continue };
                        let mut heard = Heard::drain(key, rx, entity);
                        let (closed, caught_up) = (heard.closed, heard.caught_up.take());
                        if cache.follow(heard).await {
                            owe(&mut owed, retry.as_mut());
                            catching.missed(cache.loads_begun());
                        }
                        let read = |n| cache.loaded_since(n);
                        if let Some(caught_up) = caught_up {
                            catching.heard_answer(Subscription::Keys, caught_up, read);
                        }
                        if closed {
                            keys = None;
                            catching.keys_closed(read);
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

    /// Waits, `within` at most, until what the store told of before this call has been
    /// followed (the change messages and the keys written it had sent, each refreshed);
    /// blocks, for a thread of its own. What an upgrade's process hands over is then what the
    /// store held when the new process had subscribed (see
    /// [`crate::store::Store::ask_caught_up`]).
    pub fn caught_up_blocking(&self, within: Duration) -> CatchUp {
        let (answer, answered) = std::sync::mpsc::sync_channel(1);
        let asked = self
            .catch_up
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .is_some_and(|ask| ask.try_send(answer).is_ok());
        if !asked {
            return CatchUp::NotAsked;
        }
        match answered.recv_timeout(within) {
            Ok(true) => CatchUp::Whole,
            Ok(false) => CatchUp::MayMiss,
            Err(_) => CatchUp::NotWithin,
        }
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

/// What [`ConsumerCache::caught_up_blocking`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CatchUp {
    /// Everything the store told of before the question is in the tables.
    Whole,
    /// Followed, but the tables may miss a change: a subscription was down, a refresh the
    /// store did not answer, changes dropped for coming faster than they were followed (a full
    /// read is owed, or runs).
    MayMiss,
    /// No answer within the time given.
    NotWithin,
    /// Nothing follows the store (its task not started, or ended), or it has questions
    /// enough waiting.
    NotAsked,
}

/// The questions of [`ConsumerCache::caught_up_blocking`], numbered, waiting for the
/// subscriptions' answers to the last ([`CaughtUp`]): answered once each subscription gave
/// its answer and what came before it was followed.
#[derive(Default)]
struct CatchingUp {
    answers: Vec<std::sync::mpsc::SyncSender<bool>>,
    /// The last question asked.
    question: u64,
    /// The last question each subscription answered (the keys written: `None` when they are
    /// not followed).
    messages: u64,
    keys: Option<u64>,
    /// Whether the subscriptions were made all along, as their answers to the questions
    /// waiting say.
    whole: bool,
    /// The full loads begun when a change was last missed: the tables miss it until a load
    /// begun after has ended.
    missed_at: Option<u64>,
}

#[derive(Clone, Copy)]
enum Subscription {
    Messages,
    Keys,
}

impl CatchingUp {
    /// A question: its number, to ask the subscriptions' answers to (the change messages', and
    /// the keys written's when they are followed).
    fn asked(&mut self, answer: std::sync::mpsc::SyncSender<bool>, keys_followed: bool) -> u64 {
        if self.answers.is_empty() {
            self.whole = true;
        }
        self.answers.push(answer);
        self.question += 1;
        if !keys_followed {
            self.keys = None;
        } else if self.keys.is_none() {
            self.keys = Some(0);
        }
        self.question
    }

    /// A change was missed (a full read is owed), `loads_begun` full loads begun so far:
    /// the questions waiting are answered at once (the tables may miss it, whatever comes;
    /// the subscriptions' answers may be among what was dropped).
    fn missed(&mut self, loads_begun: u64) {
        self.missed_at = Some(loads_begun);
        for answer in self.answers.drain(..) {
            let _ = answer.try_send(false);
        }
    }

    /// A subscription's answer, what came before it followed; `read(n)`: whether a full load
    /// begun after the `n`th has ended.
    fn heard_answer(&mut self, by: Subscription, caught_up: CaughtUp, read: impl Fn(u64) -> bool) {
        if caught_up.question < self.question {
            return;
        }
        self.whole &= caught_up.whole;
        match by {
            Subscription::Messages => self.messages = caught_up.question,
            Subscription::Keys => self.keys = self.keys.map(|_| caught_up.question),
        }
        self.answer(read);
    }

    /// The keys written are no longer told: no answer is waited for there.
    fn keys_closed(&mut self, read: impl Fn(u64) -> bool) {
        self.keys = None;
        self.answer(read);
    }

    fn answer(&mut self, read: impl Fn(u64) -> bool) {
        let answered = |at: u64| at >= self.question;
        if answered(self.messages) && self.keys.is_none_or(answered) {
            let whole = self.whole && self.missed_at.is_none_or(read);
            for answer in self.answers.drain(..) {
                let _ = answer.try_send(whole);
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
    /// The subscription's answer to a catch-up's question ([`CaughtUp`]), when it came with
    /// them: what it gave before is among them, or was followed before them.
    caught_up: Option<CaughtUp>,
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
            caught_up: None,
        };
        let mut seen = HashSet::new();
        let mut next = Some(first);
        while let Some(message) = next.take() {
            match message {
                Ok(m) if m == crate::store::SUBSCRIBED || m == crate::store::EVERYTHING_CHANGED => {
                    heard.everything = true
                }
                Ok(m) => match CaughtUp::of(&m) {
                    Some(caught_up) => heard.caught_up = Some(caught_up),
                    None => {
                        if let Some(e) = entity(m) {
                            if seen.insert(e.clone()) {
                                heard.entities.push(e);
                            }
                        }
                    }
                },
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
            &crate::store::CaughtUp::message(3, true),
            "EG-c",
        ] {
            tx.send(m.to_string()).expect("send");
        }
        let first = rx.try_recv().map_err(|_| super::RecvError::Closed);
        let heard = Heard::drain(first, &mut rx, entity);
        assert_eq!(heard.entities, ["a", "b", "c"]);
        assert!(heard.everything, "a subscription's mark");
        let caught_up = crate::store::CaughtUp {
            question: 3,
            whole: true,
        };
        assert_eq!(heard.caught_up, Some(caught_up), "a catch-up's answer");
        assert!(!heard.closed);
        // No more than a batch at once: the rest stays queued.
        for i in 0..BATCH + 3 {
            tx.send(format!("EG-{i}")).expect("send");
        }
        let first = rx.try_recv().map_err(|_| super::RecvError::Closed);
        let heard = Heard::drain(first, &mut rx, entity);
        assert_eq!(heard.entities.len(), BATCH);
        assert!(!heard.everything && heard.caught_up.is_none());
        assert_eq!(rx.len(), 3);
    }

    /// A question is answered once both subscriptions answered it (an answer to an earlier
    /// question answers none), and says whether anything may be missing.
    #[test]
    fn a_catch_up_is_answered_by_the_answers_to_its_own_question() {
        use super::{CatchingUp, Subscription};
        use crate::store::CaughtUp;
        let said = |question, whole| CaughtUp { question, whole };
        // (No full load ended since a change was missed.)
        let unread = |_| false;
        let mut catching = CatchingUp::default();
        let (first, first_answer) = std::sync::mpsc::sync_channel(1);
        assert_eq!(catching.asked(first, true), 1);
        let (second, second_answer) = std::sync::mpsc::sync_channel(1);
        assert_eq!(catching.asked(second, true), 2);
        catching.heard_answer(Subscription::Messages, said(1, true), unread);
        catching.heard_answer(Subscription::Keys, said(1, true), unread);
        assert!(
            first_answer.try_recv().is_err(),
            "answered by the first's answers"
        );
        catching.heard_answer(Subscription::Messages, said(2, true), unread);
        assert!(
            first_answer.try_recv().is_err(),
            "the keys' answer is waited for"
        );
        catching.heard_answer(Subscription::Keys, said(2, true), unread);
        assert_eq!(first_answer.try_recv(), Ok(true));
        assert_eq!(second_answer.try_recv(), Ok(true));
        // A subscription down: not whole.
        let (tx, answer) = std::sync::mpsc::sync_channel(1);
        let question = catching.asked(tx, true);
        catching.heard_answer(Subscription::Keys, said(question, false), unread);
        catching.heard_answer(Subscription::Messages, said(question, true), unread);
        assert_eq!(answer.try_recv(), Ok(false));
        // A change missed while a question waits: answered at once, not whole.
        let (tx, answer) = std::sync::mpsc::sync_channel(1);
        catching.asked(tx, true);
        catching.missed(7);
        assert_eq!(answer.try_recv(), Ok(false));
        // Missed before the question: not whole until a full load begun after it ended.
        for (read, whole) in [(false, false), (true, true)] {
            let (tx, answer) = std::sync::mpsc::sync_channel(1);
            let question = catching.asked(tx, true);
            let loaded = |n| n == 7 && read;
            catching.heard_answer(Subscription::Keys, said(question, true), loaded);
            catching.heard_answer(Subscription::Messages, said(question, true), loaded);
            assert_eq!(answer.try_recv(), Ok(whole), "read since: {read}");
        }
        // The keys no longer told: the messages' answer alone answers.
        let (tx, answer) = std::sync::mpsc::sync_channel(1);
        let question = catching.asked(tx, true);
        catching.keys_closed(|_| true);
        catching.heard_answer(Subscription::Messages, said(question, true), |_| true);
        assert_eq!(answer.try_recv(), Ok(true));
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
