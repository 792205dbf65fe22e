//! Where consumers and shared counters live: a small Redis-shaped interface (hashes, sets,
//! fixed-window counters, atomic batches, pub/sub, a lock) with two implementations — a real
//! Redis ([`redis::RedisStore`]) and an embedded store that needs no server
//! ([`embedded::EmbeddedStore`]). The consumer logic is written once, against EG's key layout,
//! on top of this trait, so both stores hold exactly what EG would write to Redis.

pub mod embedded;
mod packed_hash;
pub mod redis;

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

/// A store error: the store is unreachable or answered something unexpected.
#[derive(Clone, Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the store is unavailable: {0}")]
    Unavailable(String),
    #[error("store I/O failed: {0}")]
    Io(String),
    #[error("the store's data is damaged: {0}")]
    Corrupt(String),
}

pub type StoreResult<T> = Result<T, StoreError>;

/// What kind of value a key holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyType {
    None,
    Hash,
    Set,
    Other,
}

/// One change in an atomic batch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum Write {
    /// HSET key field value ...
    HSet {
        key: String,
        fields: Vec<(String, String)>,
    },
    /// HDEL key field ...
    HDel { key: String, fields: Vec<String> },
    /// SADD key member ...
    SAdd { key: String, members: Vec<String> },
    /// SREM key member ...
    SRem { key: String, members: Vec<String> },
    /// DEL key
    Del { key: String },
}

/// A fixed-window count: the count after this hit and how long the window still runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WindowCount {
    pub count: u64,
    pub resets_in: Duration,
}

/// The message a subscription gives each time it is (re)established: what was published
/// before it, or while it was lost, was not seen (a subscriber reads everything again).
pub const SUBSCRIBED: &str = "";

/// The change message that says more changed than is told one by one: every subscriber reads
/// everything again.
pub const EVERYTHING_CHANGED: &str = "*";

/// The answer of a subscription to [`Store::ask_caught_up`], given among its messages (as
/// none anyone publishes): once it has given everything the store sent it before the
/// question, whole; at once, not whole, while it is not subscribed (what is published
/// meanwhile it does not receive; once subscribed again it gives [`SUBSCRIBED`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CaughtUp {
    /// The question answered.
    pub question: u64,
    /// Whether the subscription was made all along.
    pub whole: bool,
}

impl CaughtUp {
    const CAUGHT_UP: &'static str = "\u{1}caught-up:";
    const DOWN: &'static str = "\u{1}down:";

    /// The message of a subscription's answer to `question`.
    pub fn message(question: u64, whole: bool) -> String {
        let kind = if whole { Self::CAUGHT_UP } else { Self::DOWN };
        format!("{kind}{question}")
    }

    /// The answer a message is, if it is one.
    pub fn of(message: &str) -> Option<CaughtUp> {
        let (whole, question) = match message.strip_prefix(Self::CAUGHT_UP) {
            Some(n) => (true, n),
            None => (false, message.strip_prefix(Self::DOWN)?),
        };
        Some(CaughtUp {
            question: question.parse().ok()?,
            whole,
        })
    }
}

#[async_trait]
pub trait Store: Send + Sync {
    /// A short name for logs and errors (`embedded /var/lib/...`, `redis 127.0.0.1:6379`).
    fn describe(&self) -> String;

    /// The embedded store's directory (`None`: another store, or one in memory).
    fn embedded_dir(&self) -> Option<&std::path::Path> {
        None
    }

    /// Lets another process take the store over (a binary upgrade): from now on this process
    /// only reads it. Nothing to do for a shared store.
    fn hand_over(&self) {}

    async fn ping(&self) -> StoreResult<()>;

    async fn key_type(&self, key: &str) -> StoreResult<KeyType>;

    /// HGETALL; an empty map when the key does not exist.
    async fn hgetall(&self, key: &str) -> StoreResult<HashMap<String, String>>;

    /// HGETALL of many keys in one round trip.
    async fn hgetall_many(&self, keys: &[String]) -> StoreResult<Vec<HashMap<String, String>>>;

    /// For each key: `None` unless it holds a hash, else the values of `fields` (HMGET). One
    /// round trip for all of them; what loading a million credentials is made of.
    async fn hash_fields_many(
        &self,
        keys: &[String],
        fields: &[&str],
    ) -> StoreResult<Vec<Option<Vec<Option<String>>>>>;

    /// TYPE of many keys in one round trip.
    async fn key_types(&self, keys: &[String]) -> StoreResult<Vec<KeyType>>;

    async fn smembers(&self, key: &str) -> StoreResult<Vec<String>>;

    /// Every key starting with `prefix`.
    async fn keys_with_prefix(&self, prefix: &str) -> StoreResult<Vec<String>>;

    /// A page of the keys starting with `prefix`: about `count` of them from `cursor` (0: the
    /// first page), and the cursor of the next page (0: none). As Redis' `SCAN`, which EG's
    /// listings page with: a key there from the first page to the last is listed, whatever is
    /// added or removed meanwhile (so a script may remove what each page shows).
    async fn scan_prefix(
        &self,
        prefix: &str,
        cursor: u64,
        count: usize,
    ) -> StoreResult<(Vec<String>, u64)>;

    /// Applies every write or none.
    async fn apply(&self, batch: &[Write]) -> StoreResult<()>;

    /// INCR `key`, starting a window of `window` on the first hit (EG's rate-limit).
    async fn incr_window(&self, key: &str, window: Duration) -> StoreResult<WindowCount>;

    async fn publish(&self, channel: &str, message: &str) -> StoreResult<()>;

    /// Messages published on `channel`, by any process sharing the store. A store shared over
    /// the network sends [`SUBSCRIBED`] each time its subscription is (re)established.
    async fn subscribe(&self, channel: &str) -> StoreResult<broadcast::Receiver<String>>;

    /// The keys starting with `prefix` that anyone writes — another program on a store shared
    /// over the network (EG's Admin API, redis-cli) — as the store tells them, [`SUBSCRIBED`]
    /// each time it begins to tell them again; `None` where no one else writes (the embedded
    /// store).
    async fn follow_keys(&self, prefix: &str) -> StoreResult<Option<broadcast::Receiver<String>>> {
        let _ = prefix;
        Ok(None)
    }

    /// Asks each subscription ([`Self::subscribe`], [`Self::follow_keys`]) for its answer to
    /// `question` ([`CaughtUp`]), given once it has given what the store sent it before: what
    /// was published before the question is then among the messages received, where the
    /// answer says the subscription was made all along.
    fn ask_caught_up(&self, question: u64);

    /// Takes a named lock for at most `ttl`; `None` when someone else holds it.
    async fn try_lock(&self, name: &str, ttl: Duration) -> StoreResult<Option<String>>;

    /// Releases a lock taken with `try_lock` (only if `token` still holds it).
    async fn unlock(&self, name: &str, token: &str) -> StoreResult<()>;

    /// Holds a lock taken with `try_lock` for `ttl` from now; whether `token` still held it.
    async fn renew_lock(&self, name: &str, token: &str, ttl: Duration) -> StoreResult<bool>;
}
