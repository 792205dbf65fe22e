//! The Redis store: standalone or Sentinel, shared by every gateway (and by Express Gateway
//! itself, whose key layout the consumer layer writes). Connections reconnect by themselves;
//! every command has a timeout so a dead Redis never hangs a caller.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::future::{BoxFuture, FutureExt, Shared};
use redis::aio::ConnectionManager;
use redis::{AsyncCommands, Client};
use tokio::sync::{broadcast, Mutex};

use super::{KeyType, Store, StoreError, StoreResult, WindowCount, Write};
use crate::config::system_file::RedisDef;
use target::{client_for, connect, url_for, Target};

mod pubsub;
mod target;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// A command not answered within this fails: the Admin API says 503 well within 5 s of a hung Redis.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);
const SCAN_COUNT: usize = 10_000;
/// A listing page's `SCAN`s look at up to this many keys each (or the page's count).
const SCAN_STEP: usize = 1_000;
/// The most keys a listing page's `SCAN`s look at.
const SCAN_PAGE_MOST: usize = 100_000;
const PIPELINE_CHUNK: usize = 1000;
/// How many keys written by other programs may wait for the consumer cache.
const KEYS_QUEUED: usize = 16_384;

pub struct RedisStore {
    target: Target,
    /// The database the store uses (its keyspace notifications are that database's).
    db: i64,
    describe: String,
    conn: Mutex<Conn>,
    channels: Arc<std::sync::Mutex<HashMap<String, broadcast::Sender<String>>>>,
    /// The questions of [`Store::ask_caught_up`], for every subscription's relay.
    caught_up: broadcast::Sender<u64>,
}

/// The connection, and the attempt to make one under way: one attempt at a time, every caller
/// waiting on it (each at most [`RESPONSE_TIMEOUT`]) — a caller that waited for the attempts of
/// those before it, one after another, waited seconds per caller ahead of it.
#[derive(Default)]
struct Conn {
    manager: Option<ConnectionManager>,
    attempt: Option<Attempt>,
}

type Attempt = Shared<BoxFuture<'static, StoreResult<ConnectionManager>>>;

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

/// A Redis error as an operator reads it: the server's errors of a pipeline or a transaction in
/// their own words, without the redis crate's numbering of the pipeline's commands (`Index 0`,
/// and MULTI's `Index 18446744073709551615`).
fn server_words(e: redis::RedisError) -> String {
    let whole = e.to_string();
    match e.into_server_errors() {
        Some(errors) if !errors.is_empty() => errors
            .iter()
            .map(|(_, error)| error.to_string())
            .collect::<Vec<_>>()
            .join("; "),
        _ => whole,
    }
}

impl RedisStore {
    /// Prepares the store; the connection is made on first use and remade when lost.
    pub fn new(def: &RedisDef) -> RedisStore {
        let db = def.db.unwrap_or(0);
        let (target, describe) = if def.sentinels.is_empty() {
            let host = def.host.clone().unwrap_or_else(|| "127.0.0.1".into());
            let port = def.port.unwrap_or(6379);
            (
                Target::Url {
                    url: url_for(
                        &host,
                        port,
                        (def.username.as_deref(), def.password.as_deref()),
                        db,
                        def.tls.as_ref(),
                    ),
                    tls: def.tls.clone(),
                },
                format!("redis {host}:{port}/{db}"),
            )
        } else {
            let master = def
                .sentinel_name
                .clone()
                .unwrap_or_else(|| "mymaster".into());
            let sentinels: Vec<String> = def
                .sentinels
                .iter()
                .map(|(h, p)| url_for(h, *p, (None, None), 0, None))
                .collect();
            let names: Vec<String> = def
                .sentinels
                .iter()
                .map(|(h, p)| format!("{h}:{p}"))
                .collect();
            (
                Target::Sentinel {
                    sentinels,
                    master: master.clone(),
                    username: def.username.clone(),
                    password: def.password.clone(),
                    db,
                    tls: def.tls.clone(),
                },
                format!("redis master `{master}` via sentinels {}", names.join(", ")),
            )
        };
        RedisStore {
            target,
            db,
            describe,
            conn: Mutex::default(),
            channels: Arc::new(std::sync::Mutex::new(HashMap::new())),
            caught_up: broadcast::channel(16).0,
        }
    }

    async fn client(&self) -> StoreResult<Client> {
        client_for(&self.target).await
    }

    /// Runs `command` (Lua, on `KEYS[1]` = `name` and `ARGV[2]` = `arg`) only while the lock
    /// `name` holds `token`, in one script (nobody else's lock is touched between the check
    /// and the command); its result, 0 when the lock is not held.
    async fn while_held(
        &self,
        name: &str,
        token: &str,
        command: &str,
        arg: Option<u64>,
    ) -> StoreResult<i64> {
        let script = redis::Script::new(&format!(
            "if redis.call('GET', KEYS[1]) == ARGV[1] then return {command} else return 0 end"
        ));
        let mut c = self.conn().await?;
        let mut call = script.key(name);
        call.arg(token);
        if let Some(a) = arg {
            call.arg(a);
        }
        call.invoke_async(&mut c).await.map_err(unavailable)
    }

    /// A live connection: the one there is, or the one the attempt under way (started now if
    /// none is) makes.
    async fn conn(&self) -> StoreResult<ConnectionManager> {
        let attempt = {
            let mut c = self.conn.lock().await;
            if let Some(m) = &c.manager {
                return Ok(m.clone());
            }
            // An attempt that failed while nobody waited is old news: another is made.
            // (`now_or_never` polls it: a result no one polled yet is seen too.)
            if c.attempt
                .clone()
                .and_then(|a| a.now_or_never())
                .is_some_and(|r| r.is_err())
            {
                c.attempt = None;
            }
            c.attempt.get_or_insert_with(|| self.attempt()).clone()
        };
        let result = tokio::time::timeout(RESPONSE_TIMEOUT, attempt.clone())
            .await
            .unwrap_or_else(|_| {
                Err(unavailable(format!(
                    "{}: not connected yet (connecting)",
                    self.describe
                )))
            });
        // (A failed attempt is replaced by the next caller, above.)
        if let Ok(m) = &result {
            let mut c = self.conn.lock().await;
            c.manager = Some(m.clone());
            c.attempt = None;
        }
        result
    }

    /// An attempt to connect, on a task of its own (it goes on when its callers stop
    /// waiting).
    fn attempt(&self) -> Attempt {
        let (target, describe) = (self.target.clone(), self.describe.clone());
        let task = tokio::spawn(async move { connect(&target, &describe).await });
        async move {
            task.await
                .unwrap_or_else(|e| Err(unavailable(format!("connecting: {e}"))))
        }
        .boxed()
        .shared()
    }

    /// Forgets the connection after an error, so Sentinel is asked again next time.
    async fn on_error(&self, e: redis::RedisError) -> StoreError {
        if matches!(self.target, Target::Sentinel { .. })
            && (e.is_io_error() || e.is_connection_dropped())
        {
            self.conn.lock().await.manager = None;
        }
        unavailable(format!("{}: {}", self.describe, server_words(e)))
    }

    async fn query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> StoreResult<T> {
        let mut c = self.conn().await?;
        match cmd.query_async(&mut c).await {
            Ok(v) => Ok(v),
            Err(e) => Err(self.on_error(e).await),
        }
    }

    /// One `SCAN` from `cursor` for keys matching `pattern`: the next cursor and the keys, as
    /// bytes (one that is not UTF-8, written by another tool, is for the caller to pass over).
    async fn scan(
        &self,
        cursor: u64,
        pattern: &str,
        count: usize,
    ) -> StoreResult<(u64, Vec<Vec<u8>>)> {
        self.query(
            redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(pattern)
                .arg("COUNT")
                .arg(count),
        )
        .await
    }

    async fn query_pipe<T: redis::FromRedisValue>(&self, pipe: &redis::Pipeline) -> StoreResult<T> {
        let mut c = self.conn().await?;
        match pipe.query_async(&mut c).await {
            Ok(v) => Ok(v),
            Err(e) => Err(self.on_error(e).await),
        }
    }
}

/// A value as text: one that is not UTF-8 (written by another tool) with its bad bytes as
/// U+FFFD — read as text, it failed the whole read it was part of, and every full load with it.
fn text(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// A hash's fields and values as text (see [`text`]).
fn texts(raw: HashMap<Vec<u8>, Vec<u8>>) -> HashMap<String, String> {
    raw.into_iter().map(|(k, v)| (text(k), text(v))).collect()
}

fn key_type_of(s: &str) -> KeyType {
    match s {
        "none" => KeyType::None,
        "hash" => KeyType::Hash,
        "set" => KeyType::Set,
        _ => KeyType::Other,
    }
}

#[async_trait]
impl Store for RedisStore {
    fn describe(&self) -> String {
        self.describe.clone()
    }

    async fn ping(&self) -> StoreResult<()> {
        self.query::<String>(&redis::cmd("PING")).await.map(|_| ())
    }

    async fn key_type(&self, key: &str) -> StoreResult<KeyType> {
        let t: String = self.query(redis::cmd("TYPE").arg(key)).await?;
        Ok(key_type_of(&t))
    }

    async fn hgetall(&self, key: &str) -> StoreResult<HashMap<String, String>> {
        Ok(self
            .hgetall_many(&[key.to_string()])
            .await?
            .pop()
            .unwrap_or_default())
    }

    async fn hgetall_many(&self, keys: &[String]) -> StoreResult<Vec<HashMap<String, String>>> {
        let mut out = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(PIPELINE_CHUNK) {
            let mut pipe = redis::pipe();
            for k in chunk {
                pipe.cmd("HGETALL").arg(k);
            }
            pipe.ignore_errors();
            let part: Vec<redis::RedisResult<HashMap<Vec<u8>, Vec<u8>>>> =
                self.query_pipe(&pipe).await?;
            for hash in part {
                out.push(match hash {
                    Ok(raw) => texts(raw),
                    // A key of another type (another program's string or set where a
                    // consumer's hash would be; a credential's id that names a set) holds no
                    // object, as a missing key: one such key failed every listing it was in.
                    Err(e) if e.code() == Some("WRONGTYPE") => HashMap::new(),
                    Err(e) => return Err(self.on_error(e).await),
                });
            }
        }
        Ok(out)
    }

    async fn hash_fields_many(
        &self,
        keys: &[String],
        fields: &[&str],
    ) -> StoreResult<Vec<Option<Vec<Option<String>>>>> {
        // Server side: the type check and HMGET of a whole chunk in one round trip.
        let script = redis::Script::new(
            "local out = {} \
             for i, k in ipairs(KEYS) do \
               if redis.call('TYPE', k).ok == 'hash' then out[i] = redis.call('HMGET', k, unpack(ARGV)) else out[i] = false end \
             end \
             return out",
        );
        let mut out = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(PIPELINE_CHUNK) {
            let mut inv = script.prepare_invoke();
            for k in chunk {
                inv.key(k);
            }
            for f in fields {
                inv.arg(*f);
            }
            let mut c = self.conn().await?;
            let rows: Vec<Option<Vec<Option<Vec<u8>>>>> = match inv.invoke_async(&mut c).await {
                Ok(v) => v,
                Err(e) => return Err(self.on_error(e).await),
            };
            out.extend(
                rows.into_iter()
                    .map(|row| row.map(|fields| fields.into_iter().map(|v| v.map(text)).collect())),
            );
        }
        Ok(out)
    }

    async fn key_types(&self, keys: &[String]) -> StoreResult<Vec<KeyType>> {
        let mut out = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(PIPELINE_CHUNK) {
            let mut pipe = redis::pipe();
            for k in chunk {
                pipe.cmd("TYPE").arg(k);
            }
            let part: Vec<String> = self.query_pipe(&pipe).await?;
            out.extend(part.iter().map(|t| key_type_of(t)));
        }
        Ok(out)
    }

    async fn smembers(&self, key: &str) -> StoreResult<Vec<String>> {
        // A member that is not UTF-8 (written by another tool) names none of the gateway's
        // objects and is passed over: it failed every read of its set (`503`, Redis up).
        let raw: Vec<Vec<u8>> = self.query(redis::cmd("SMEMBERS").arg(key)).await?;
        let mut members: Vec<String> = raw
            .into_iter()
            .filter_map(|m| String::from_utf8(m).ok())
            .collect();
        members.sort();
        Ok(members)
    }

    async fn keys_with_prefix(&self, prefix: &str) -> StoreResult<Vec<String>> {
        let pattern = format!("{}*", redis_glob_escape(prefix));
        let mut cursor: u64 = 0;
        let mut keys = Vec::new();
        loop {
            // Keys as bytes: one that is not UTF-8 (written by another tool) is none of the
            // gateway's and is passed over, not a failure of the whole scan.
            let (next, batch) = self.scan(cursor, &pattern, SCAN_COUNT).await?;
            keys.extend(batch.into_iter().filter_map(|k| String::from_utf8(k).ok()));
            if next == 0 {
                break;
            }
            cursor = next;
        }
        keys.sort();
        keys.dedup();
        Ok(keys)
    }

    async fn scan_prefix(
        &self,
        prefix: &str,
        mut cursor: u64,
        count: usize,
    ) -> StoreResult<(Vec<String>, u64)> {
        let pattern = format!("{}*", redis_glob_escape(prefix));
        let mut keys: Vec<String> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        // `SCAN` may answer a page without a match while keys remain (EG ends its listing
        // there): it is asked again until it gave `count` keys or the scan ends — for twice as
        // many keys each time, up to [`SCAN_STEP`], and for at most [`SCAN_PAGE_MOST`] keys
        // looked at in all (a page of one, in a Redis of 250,000 other keys, took as many
        // round trips and 4.5 s; such a page may now be empty, its cursor not 0).
        let (mut looked, mut step) = (0, count.max(1));
        loop {
            looked += step;
            let (next, batch) = self.scan(cursor, &pattern, step).await?;
            for k in batch.into_iter().filter_map(|k| String::from_utf8(k).ok()) {
                if seen.insert(k.clone()) {
                    keys.push(k);
                }
            }
            cursor = next;
            if cursor == 0 || keys.len() >= count || looked >= SCAN_PAGE_MOST {
                return Ok((keys, cursor));
            }
            step = (step * 2).min(count.max(SCAN_STEP));
        }
    }

    async fn apply(&self, batch: &[Write]) -> StoreResult<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        pipe.atomic();
        for w in batch {
            match w {
                Write::HSet { key, fields } if !fields.is_empty() => {
                    pipe.cmd("HSET").arg(key);
                    for (f, v) in fields {
                        pipe.arg(f).arg(v);
                    }
                    pipe.ignore();
                }
                Write::HDel { key, fields } if !fields.is_empty() => {
                    pipe.cmd("HDEL").arg(key).arg(fields).ignore();
                }
                Write::SAdd { key, members } if !members.is_empty() => {
                    pipe.cmd("SADD").arg(key).arg(members).ignore();
                }
                Write::SRem { key, members } if !members.is_empty() => {
                    pipe.cmd("SREM").arg(key).arg(members).ignore();
                }
                Write::Del { key } => {
                    pipe.cmd("DEL").arg(key).ignore();
                }
                _ => {}
            }
        }
        self.query_pipe::<()>(&pipe).await
    }

    async fn incr_window(&self, key: &str, window: Duration) -> StoreResult<WindowCount> {
        // As rate-limit-redis: MULTI INCR PTTL EXEC, then PEXPIRE on the first hit.
        let mut pipe = redis::pipe();
        pipe.atomic().cmd("INCR").arg(key).cmd("PTTL").arg(key);
        let (count, pttl): (u64, i64) = self.query_pipe(&pipe).await?;
        let window_ms = window.as_millis() as i64;
        let resets_in = if count == 1 || pttl < 0 {
            let mut c = self.conn().await?;
            let _: () = c.pexpire(key, window_ms).await.map_err(unavailable)?;
            window_ms
        } else {
            pttl
        };
        Ok(WindowCount {
            count,
            resets_in: Duration::from_millis(resets_in.max(0) as u64),
        })
    }

    async fn publish(&self, channel: &str, message: &str) -> StoreResult<()> {
        self.query::<i64>(redis::cmd("PUBLISH").arg(channel).arg(message))
            .await
            .map(|_| ())
    }

    async fn subscribe(&self, channel: &str) -> StoreResult<broadcast::Receiver<String>> {
        let (rx, new) = {
            let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
            match channels.get(channel) {
                Some(tx) if tx.receiver_count() > 0 => (tx.subscribe(), None),
                _ => {
                    let (tx, rx) = broadcast::channel(4096);
                    channels.insert(channel.to_string(), tx.clone());
                    (rx, Some(tx))
                }
            }
        };
        if let Some(tx) = new {
            self.spawn_relay(pubsub::Follow::Channel(channel.to_string()), tx);
        }
        Ok(rx)
    }

    async fn follow_keys(&self, prefix: &str) -> StoreResult<Option<broadcast::Receiver<String>>> {
        // Room for a bulk write's burst (an import: each credential two or three keys) while
        // the consumer cache reads what it names, a batch at a time; beyond, it reads
        // everything again.
        let (tx, rx) = broadcast::channel(KEYS_QUEUED);
        let pattern = pubsub::keyspace_pattern(self.db, prefix);
        self.spawn_relay(pubsub::Follow::Keys(pattern), tx);
        Ok(Some(rx))
    }

    fn ask_caught_up(&self, question: u64) {
        let _ = self.caught_up.send(question);
    }

    async fn try_lock(&self, name: &str, ttl: Duration) -> StoreResult<Option<String>> {
        let token = uuid::Uuid::new_v4().to_string();
        let set: StoreResult<Option<String>> = self
            .query(
                redis::cmd("SET")
                    .arg(name)
                    .arg(&token)
                    .arg("NX")
                    .arg("PX")
                    .arg(ttl.as_millis() as u64),
            )
            .await;
        if set.is_err() {
            // Unanswered, it may still be done once the server answers (a server stopped,
            // not gone): the lock would stand for `ttl` under a token nobody has, and the
            // next populate waited it out. Released as soon as the server answers.
            let store = self.with_own_connection();
            let (name, token) = (name.to_string(), token.clone());
            tokio::spawn(async move {
                let until = tokio::time::Instant::now() + ttl;
                while store.unlock(&name, &token).await.is_err()
                    && tokio::time::Instant::now() < until
                {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            });
        }
        Ok(set?.map(|_| token))
    }

    async fn unlock(&self, name: &str, token: &str) -> StoreResult<()> {
        self.while_held(name, token, "redis.call('DEL', KEYS[1])", None)
            .await
            .map(|_| ())
    }

    async fn renew_lock(&self, name: &str, token: &str, ttl: Duration) -> StoreResult<bool> {
        let command = "redis.call('PEXPIRE', KEYS[1], ARGV[2])";
        let held = self
            .while_held(name, token, command, Some(ttl.as_millis() as u64))
            .await?;
        Ok(held == 1)
    }
}

/// Escapes Redis glob characters in a literal prefix.
fn redis_glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}
