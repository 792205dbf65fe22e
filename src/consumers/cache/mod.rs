//! Every authentication decision, answered from memory.
//!
//! The cache is filled from the store at start, follows the invalidation messages every tollgate
//! write publishes, and resyncs in full periodically for writes made behind its back (EG,
//! redis-cli). A key it does not know is looked up once in the background (never on the request
//! path) and then not again for a short while, so random keys cannot flood the store. If the
//! store goes away, what is cached keeps working.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::layout::Layout;
use crate::pipeline::context::Consumer;
use crate::store::Store;

mod carry;
mod checks;
mod follow;
pub use checks::Turn;
pub use follow::Following;
mod handover;
pub use handover::handing_over;
mod missed;
mod passwords;
mod refresh;
mod sync;
pub use sync::Lookup;

/// A key-auth or jwt credential.
#[derive(Clone, Debug)]
struct KeyedCredential {
    secret: Box<str>,
    consumer_id: Arc<str>,
    active: bool,
    scopes: Option<Arc<[String]>>,
}

/// A basic-auth credential (keyed by its consumer id).
#[derive(Clone, Debug)]
struct PasswordCredential {
    hash: Box<str>,
    active: bool,
    scopes: Option<Arc<[String]>>,
}

#[derive(Clone, Debug)]
struct ConsumerEntry {
    active: bool,
    consumer: Consumer,
    /// A user's name, as its hash has it (a name another user leaves is found here).
    username: Option<Box<str>>,
}

/// A table of the store's records by id. Its keys come from the store, not from requests (a
/// request only looks up), so a fast hasher with a per-process seed is enough.
type Table<V> = HashMap<Box<str>, V, foldhash::fast::RandomState>;

#[derive(Default)]
struct Tables {
    key_auth: Table<KeyedCredential>,
    jwt: Table<KeyedCredential>,
    basic: Table<PasswordCredential>,
    apps: Table<ConsumerEntry>,
    users: Table<ConsumerEntry>,
    usernames: Table<Arc<str>>,
    /// Names more than one user has had (in a store written by hand): when its holder leaves
    /// one, the users are looked through for another.
    shared_names: HashSet<Box<str>>,
}

/// Whether a credential is asked for by its request, or again once its lookup ended.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Asking {
    First,
    AfterLookup,
}

/// The answer to a key-auth attempt.
#[derive(Debug)]
pub enum KeyAuthResult {
    Ok(Consumer),
    Unauthorized,
    /// No credential has the key id: being looked up in the store when `Some` (see
    /// [`Lookup`]).
    Unknown(Option<Lookup>),
    /// Known and valid, but missing a scope the endpoint requires (EG: 403).
    Forbidden,
}

/// Counters the metrics layer reads.
#[derive(Default)]
pub struct CacheStats {
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    /// Full loads from the store that succeeded.
    pub full_loads: AtomicU64,
}

pub struct ConsumerCache {
    tables: RwLock<Tables>,
    store: Arc<dyn Store>,
    layout: Layout,
    /// Whether the tables hold what a full load read, from the store or from the process
    /// upgraded (see [`handover`]).
    loaded: AtomicBool,
    /// Whether a full load from the store succeeded.
    from_store: AtomicBool,
    /// Whether the store answered its last question (the health probe's ping, a lookup): a
    /// credential not known while it does not is not refused for what it is.
    store_answers: AtomicBool,
    /// When the refresh running now began (coarse milliseconds; 0: none runs).
    refreshing_since: AtomicU64,
    last_resync: Mutex<Option<Instant>>,
    recently_missed: Mutex<missed::RecentlyMissed>,
    verified_passwords: Mutex<passwords::PasswordMemos>,
    /// Passwords that failed their check against the stored hash they were checked with.
    refused_passwords: Mutex<passwords::PasswordMemos>,
    /// The checks running.
    checks: checks::InFlight,
    /// Full loads run one at a time.
    load_lock: tokio::sync::Mutex<()>,
    /// The full loads begun, and the number of the last that swapped its tables in (a change
    /// missed is in the tables once a load begun after it did).
    loads_begun: AtomicU64,
    last_load_done: AtomicU64,
    /// Refreshes run one at a time (see [`Self::refresh_many`]).
    refresh_turn: tokio::sync::Mutex<()>,
    /// While a full load runs: what refreshes changed meanwhile, carried into what it read
    /// when it swaps its tables in (it may have read them before they changed).
    changed_while_loading: Mutex<Option<carry::Changes>>,
    /// The background full loads (resyncs), off the task that follows change messages.
    loads: Mutex<sync::LoadRequests>,
    /// Unknown entities to look up, for the task that follows change messages (set by
    /// `start`): looked up in turn with the changes announced, a lookup never writes what it
    /// read before a change to the same entity was applied (run on a task of its own, a lookup
    /// that read a credential before its revocation put it back after it).
    /// Bounded ([`sync::LOOKUPS_QUEUED`]): a flood of made-up keys, or a store that does not
    /// answer, leaves the rest for the periodic reload.
    lookups: Mutex<Option<tokio::sync::mpsc::Sender<String>>>,
    /// The questions of [`Self::caught_up_blocking`], for the task that follows the store
    /// (set by `start`): each answered once what the store told of before it is followed.
    catch_up: Mutex<Option<tokio::sync::mpsc::Sender<std::sync::mpsc::SyncSender<bool>>>>,
    /// The lookups queued or running, for the requests that wait on them ([`Lookup`]).
    pending_lookups: Mutex<HashMap<String, tokio::sync::watch::Sender<bool>>>,
    /// Whether the task that runs lookups is running them (from its subscriptions on, the
    /// store read or not): a request waits only for a lookup that will run.
    looking_up: AtomicBool,
    pub stats: CacheStats,
    /// How far the running full load is: entries read, of how many.
    pub progress: LoadProgress,
}

#[derive(Default)]
pub struct LoadProgress {
    pub done: std::sync::atomic::AtomicUsize,
    pub total: std::sync::atomic::AtomicUsize,
}

fn scopes_arc(list: Option<Vec<String>>) -> Option<Arc<[String]>> {
    list.map(Arc::from)
}

impl ConsumerCache {
    pub fn new(store: Arc<dyn Store>, layout: Layout) -> ConsumerCache {
        ConsumerCache {
            tables: RwLock::new(Tables::default()),
            store,
            layout,
            loaded: AtomicBool::new(false),
            from_store: AtomicBool::new(false),
            store_answers: AtomicBool::new(true),
            refreshing_since: AtomicU64::new(0),
            last_resync: Mutex::new(None),
            recently_missed: Mutex::new(missed::RecentlyMissed::default()),
            verified_passwords: Mutex::new(passwords::PasswordMemos::default()),
            refused_passwords: Mutex::new(passwords::PasswordMemos::default()),
            checks: checks::InFlight::default(),
            lookups: Mutex::new(None),
            catch_up: Mutex::new(None),
            loads_begun: AtomicU64::new(0),
            last_load_done: AtomicU64::new(0),
            pending_lookups: Mutex::new(HashMap::new()),
            looking_up: AtomicBool::new(false),
            load_lock: tokio::sync::Mutex::new(()),
            refresh_turn: tokio::sync::Mutex::new(()),
            changed_while_loading: Mutex::new(None),
            loads: Mutex::new(sync::LoadRequests::default()),
            stats: CacheStats::default(),
            progress: LoadProgress::default(),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Tables> {
        self.tables.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Tables> {
        self.tables.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether a full load has succeeded at least once (or the process upgraded handed its
    /// tables over).
    pub fn is_loaded(&self) -> bool {
        self.loaded.load(Ordering::Relaxed)
    }

    /// Whether the store answered its last question (see [`Health`](crate::health::Health)'s
    /// probe and the lookups).
    pub fn store_answers(&self) -> bool {
        self.store_answers.load(Ordering::Relaxed)
    }

    pub fn set_store_answers(&self, answers: bool) {
        self.store_answers.store(answers, Ordering::Relaxed);
    }

    /// Whether a full load from the store has succeeded at least once.
    fn loaded_from_store(&self) -> bool {
        self.from_store.load(Ordering::Relaxed)
    }

    /// Time since the last full load, if any.
    pub fn since_resync(&self) -> Option<Duration> {
        self.last_resync
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .map(|t| t.elapsed())
    }

    /// Number of credentials held.
    pub fn len(&self) -> usize {
        let t = self.read();
        t.key_auth.len() + t.jwt.len() + t.basic.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// EG's `validateConsumer`: an active app, else an active user, else (when allowed) the
    /// active user with that username.
    fn resolve(&self, t: &Tables, id: &str, by_username: bool) -> Option<Consumer> {
        if let Some(app) = t.apps.get(id).filter(|a| a.active) {
            return Some(app.consumer.clone());
        }
        if let Some(user) = t.users.get(id).filter(|u| u.active) {
            return Some(user.consumer.clone());
        }
        if by_username {
            let uid = t.usernames.get(id)?;
            return t
                .users
                .get(&**uid)
                .filter(|u| u.active)
                .map(|u| u.consumer.clone());
        }
        None
    }

    fn hit(&self, found: bool) {
        let c = if found {
            &self.stats.hits
        } else {
            &self.stats.misses
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// key-auth: the secret must match (constant time), credential and consumer be active, and
    /// the credential hold every scope the endpoint requires.
    pub fn key_auth(
        &self,
        key_id: &str,
        secret: &str,
        endpoint_scopes: &[String],
    ) -> KeyAuthResult {
        self.key_auth_as(key_id, secret, endpoint_scopes, Asking::First)
    }

    /// The same once the key's lookup ended: not counted again, not looked up again.
    pub fn key_auth_looked_up(
        &self,
        key_id: &str,
        secret: &str,
        endpoint_scopes: &[String],
    ) -> KeyAuthResult {
        self.key_auth_as(key_id, secret, endpoint_scopes, Asking::AfterLookup)
    }

    fn key_auth_as(
        &self,
        key_id: &str,
        secret: &str,
        endpoint_scopes: &[String],
        asking: Asking,
    ) -> KeyAuthResult {
        let t = self.read();
        let Some(cred) = t.key_auth.get(key_id) else {
            drop(t);
            if asking == Asking::AfterLookup {
                return KeyAuthResult::Unknown(None);
            }
            self.hit(false);
            return KeyAuthResult::Unknown(self.lookup_later(format!("key-auth:{key_id}")));
        };
        if asking == Asking::First {
            self.hit(true);
        }
        // A stored credential without a secret (written behind tollgate's back) opens to
        // nothing.
        let secret_ok: bool = cred.secret.as_bytes().ct_eq(secret.as_bytes()).into();
        if !secret_ok || cred.secret.is_empty() || !cred.active {
            return KeyAuthResult::Unauthorized;
        }
        let Some(consumer) = self.resolve(&t, &cred.consumer_id, true) else {
            return KeyAuthResult::Unauthorized;
        };
        if !endpoint_scopes.is_empty() && !has_all(cred.scopes.as_deref(), endpoint_scopes) {
            return KeyAuthResult::Forbidden;
        }
        KeyAuthResult::Ok(consumer)
    }

    /// jwt with `checkCredentialExistence`: `sub` names an active jwt credential of an active
    /// consumer.
    pub fn jwt_subject(&self, sub: &str) -> Option<Consumer> {
        self.jwt_subject_as(sub, Asking::First).ok()
    }

    /// The same, or, when no credential is `sub`, its lookup in the store when one is made
    /// (see [`Lookup`]).
    pub fn jwt_subject_or_lookup(&self, sub: &str) -> Result<Consumer, Option<Lookup>> {
        self.jwt_subject_as(sub, Asking::First)
    }

    /// The same once the subject's lookup ended: not counted again, not looked up again.
    pub fn jwt_subject_looked_up(&self, sub: &str) -> Option<Consumer> {
        self.jwt_subject_as(sub, Asking::AfterLookup).ok()
    }

    fn jwt_subject_as(&self, sub: &str, asking: Asking) -> Result<Consumer, Option<Lookup>> {
        let t = self.read();
        let Some(cred) = t.jwt.get(sub) else {
            drop(t);
            if asking == Asking::AfterLookup {
                return Err(None);
            }
            self.hit(false);
            return Err(self.lookup_later(format!("jwt:{sub}")));
        };
        if asking == Asking::First {
            self.hit(true);
        }
        if !cred.active {
            return Err(None);
        }
        self.resolve(&t, &cred.consumer_id, false).ok_or(None)
    }

    /// Whether a jwt credential is still there and active (for cached tokens).
    pub fn jwt_still_valid(&self, sub: &str) -> bool {
        self.jwt_subject(sub).is_some()
    }

    /// basic-auth: `user_id` is an app id, a user id or a username. A password seen before with
    /// the same stored hash is accepted at once; any other needs a bcrypt check, which the caller
    /// runs off the request thread ([`PasswordCheck::verify`]) and reports back with
    /// [`ConsumerCache::remember_password`] (keyed by the stored hash, so a new password forgets it).
    pub fn basic(&self, user_id: &str, password: &str, endpoint_scopes: &[String]) -> BasicAnswer {
        let (consumer, hash) = {
            let t = self.read();
            let Some(consumer) = self.resolve(&t, user_id, true) else {
                drop(t);
                self.hit(false);
                self.lookup_later(format!("username:{user_id}"));
                self.lookup_later(format!("user:{user_id}"));
                self.lookup_later(format!("app:{user_id}"));
                return BasicAnswer::Refused;
            };
            let Some(cred) = t.basic.get(&*consumer.id) else {
                drop(t);
                self.hit(false);
                self.lookup_later(format!("basic-auth:{}", consumer.id));
                return BasicAnswer::Refused;
            };
            self.hit(true);
            if !cred.active
                || (!endpoint_scopes.is_empty()
                    && !has_all(cred.scopes.as_deref(), endpoint_scopes))
            {
                return BasicAnswer::Refused;
            }
            (consumer, cred.hash.clone())
        };
        let mut digest = Sha256::new();
        digest.update(consumer.id.as_bytes());
        digest.update([0]);
        digest.update(hash.as_bytes());
        digest.update([0]);
        digest.update(password.as_bytes());
        let memo: [u8; 32] = digest.finalize().into();
        if self
            .verified_passwords
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&memo)
        {
            return BasicAnswer::Accepted(consumer);
        }
        if self
            .refused_passwords
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&memo)
        {
            return BasicAnswer::Wrong;
        }
        BasicAnswer::Check(PasswordCheck {
            consumer,
            hash,
            password: password.to_string(),
            memo,
        })
    }

    /// Whether the password of `memo` is remembered as matching (or as not).
    fn remembered(&self, memo: &[u8; 32]) -> Option<bool> {
        let held = |m: &Mutex<passwords::PasswordMemos>| {
            m.lock().unwrap_or_else(|p| p.into_inner()).contains(memo)
        };
        if held(&self.verified_passwords) {
            return Some(true);
        }
        held(&self.refused_passwords).then_some(false)
    }

    /// Records what [`PasswordCheck::verify`] found.
    pub fn remember_password(&self, checked: &Checked) {
        let (memos, memo) = match checked {
            Checked::Match(_, memo) => (&self.verified_passwords, memo),
            Checked::Mismatch(memo) => (&self.refused_passwords, memo),
        };
        memos
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(*memo);
    }
}

/// The answer to a basic-auth attempt.
#[derive(Debug)]
pub enum BasicAnswer {
    Accepted(Consumer),
    Refused,
    /// A password that failed its check before, against the same stored hash.
    Wrong,
    /// The password still needs its bcrypt check.
    Check(PasswordCheck),
}

/// A password to check against its stored bcrypt hash: tens of milliseconds of CPU, so never on
/// a thread that serves requests.
pub struct PasswordCheck {
    consumer: Consumer,
    hash: Box<str>,
    password: String,
    memo: [u8; 32],
}

impl PasswordCheck {
    /// What the check's outcome is remembered by.
    pub fn memo(&self) -> [u8; 32] {
        self.memo
    }

    /// The outcome another request's check of the same password found.
    pub fn settled(self, matched: bool) -> Checked {
        match matched {
            true => Checked::Match(self.consumer, self.memo),
            false => Checked::Mismatch(self.memo),
        }
    }

    /// Checks the password (a stored hash bcrypt cannot read matches nothing).
    pub fn verify(self) -> Checked {
        match bcrypt::verify(&self.password, &self.hash).unwrap_or(false) {
            true => Checked::Match(self.consumer, self.memo),
            false => Checked::Mismatch(self.memo),
        }
    }
}

/// What a password's check found, with the memo to remember it by
/// ([`ConsumerCache::remember_password`]).
pub enum Checked {
    Match(Consumer, [u8; 32]),
    Mismatch([u8; 32]),
}

impl std::fmt::Debug for PasswordCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PasswordCheck")
            .field("consumer", &self.consumer.id)
            .finish_non_exhaustive()
    }
}

fn has_all(held: Option<&[String]>, required: &[String]) -> bool {
    let held = held.unwrap_or(&[]);
    required.iter().all(|r| held.contains(r))
}
