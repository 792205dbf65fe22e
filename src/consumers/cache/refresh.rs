//! The refresh of the entities named by change messages, by keys other programs wrote, or by
//! the lookups of keys the cache does not know: however many come at once, they are read in a
//! few pipelined round trips and put in the tables under one lock. (One at a time, a storm of
//! writes — a bulk import through EG's Admin API — cost the gateway two round trips and a
//! write lock per key, and fell behind the store's messages.)

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::carry::Changed;
use super::{
    scopes_arc, ConsumerCache, ConsumerEntry, KeyedCredential, PasswordCredential, Tables,
};
use crate::consumers::layout::CredentialType;
use crate::consumers::model;
use crate::pipeline::context::Consumer;
use crate::store::{KeyType, StoreResult};

/// How long a refresh may wait for the store's answer before the store is taken for one that
/// does not answer (Redis answers in a millisecond or two).
pub(super) const STALLED: Duration = Duration::from_millis(500);

/// The most entities read in one refresh: what more came at once waits for the next.
pub(super) const BATCH: usize = 512;

/// The fields of each kind the tables hold, as the full load reads them.
pub(super) const USER_FIELDS: &[&str] = &["isActive", "username", "scopes"];
pub(super) const APP_FIELDS: &[&str] = &["isActive", "scopes"];
pub(super) const KEYED_FIELDS: &[&str] = &["keySecret", "consumerId", "isActive", "scopes"];
pub(super) const BASIC_FIELDS: &[&str] = &["password", "isActive", "scopes"];
/// (An oauth2 credential is not held: read for its consumer only.)
const OAUTH2_FIELDS: &[&str] = &["secret", "isActive", "scopes"];

/// A hash's fields, as read (`None`: the key holds no hash).
type Row = Option<HashMap<String, String>>;

/// What one refresh puts in the tables, made before their lock is taken (`None`: gone).
#[derive(Default)]
struct Entries {
    apps: Vec<(String, Option<ConsumerEntry>)>,
    /// With the name each has.
    users: Vec<(String, Option<Named>)>,
    credentials: Vec<(CredentialType, String, Credential)>,
}

/// A user's entry and its name.
type Named = (ConsumerEntry, Option<String>);

enum Credential {
    Keyed(Option<KeyedCredential>),
    Password(Option<PasswordCredential>),
    NotHeld,
}

impl ConsumerCache {
    /// A refresh in turn asks the store again: its wait is timed from now (a batch is a few
    /// round trips; the store not answering is one of them waiting).
    fn asking(&self) {
        let now = crate::clock::coarse_millis().max(1);
        let _ = self
            .refreshing_since
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |since| {
                (since != 0).then_some(now)
            });
    }

    /// Whether a refresh has been waiting for the store for [`STALLED`] or longer.
    pub(super) fn refresh_stalled(&self) -> bool {
        let since = self.refreshing_since.load(Ordering::Relaxed);
        since != 0
            && crate::clock::coarse_millis().saturating_sub(since) >= STALLED.as_millis() as u64
    }

    /// Re-reads one entity named by an invalidation message (`key-auth:<keyId>`, `user:<id>`, ...).
    pub async fn refresh(&self, entity: &str) -> StoreResult<()> {
        self.refresh_many(std::slice::from_ref(&entity.to_string()))
            .await
    }

    /// Re-reads the entities named (`key-auth:<keyId>`, `user:<id>`, `username:<name>`,
    /// `app:<id>`; others are no entity of the cache's) and puts what the store holds for them
    /// in the tables at once: a credential's consumer the cache does not know yet (its own
    /// message may come next) is read with it, so the credential works at once. Four round
    /// trips at most, however many: the names' types and their users, the credentials (each
    /// key's type checked where it is read: a key that holds no hash is none), their
    /// consumers.
    ///
    /// One refresh at a time, from its first read to its last write in the tables: of two
    /// refreshes of one entity (an Admin API write's, and the change message of another
    /// gateway's write just after), the one that read first wrote last, and an entity
    /// revoked in the store worked again until its next change or the next full read.
    ///
    /// Timed while it runs, from its turn (a refresh before it is no store stalling): the
    /// lookups wait on it, whoever's it is (see [`super::Lookup::done`]).
    pub async fn refresh_many(&self, entities: &[String]) -> StoreResult<()> {
        let _turn = self.refresh_turn.lock().await;
        let began = crate::clock::coarse_millis().max(1);
        self.refreshing_since.store(began, Ordering::Relaxed);
        // (No longer timed however it ends: an Admin API request's may be dropped.)
        let _timed = Timed(&self.refreshing_since);
        self.refresh_turn_taken(entities).await
    }

    /// [`Self::refresh_many`], the turn taken.
    async fn refresh_turn_taken(&self, entities: &[String]) -> StoreResult<()> {
        let mut users = Vec::new();
        let mut apps = Vec::new();
        let mut names = Vec::new();
        let mut credentials = Vec::new();
        let mut seen = HashSet::new();
        for entity in entities {
            let Some((kind, id)) = entity.split_once(':') else {
                continue;
            };
            if !seen.insert(entity.as_str()) {
                continue;
            }
            match kind {
                "user" => users.push(id.to_string()),
                "app" => apps.push(id.to_string()),
                "username" => names.push(self.layout.username(id)),
                other => {
                    if let Some(ty) = CredentialType::parse(other) {
                        credentials.push((ty, id.to_string()));
                    }
                }
            }
        }
        if !names.is_empty() {
            // A name's user (the first of its set), all asked at once; a key of the names'
            // that holds no set (another program's) names none.
            self.asking();
            let types = self.store.key_types(&names).await?;
            let sets = names
                .iter()
                .zip(types)
                .filter(|(_, t)| *t == KeyType::Set)
                .map(|(name, _)| self.store.smembers(name));
            let members = futures_util::future::try_join_all(sets).await?;
            users.extend(members.into_iter().filter_map(|m| m.into_iter().next()));
        }
        let credentials = self.read_credentials(credentials).await?;
        // The consumers of the credentials read that the tables do not know yet.
        {
            let t = self.read();
            let mut owners = HashSet::new();
            for (ty, id, row) in &credentials {
                let owner = match (ty.is_keyed(), row) {
                    (true, Some(h)) => h.get("consumerId").map(String::as_str),
                    (false, Some(_)) => Some(id.as_str()),
                    (_, None) => None,
                };
                if let Some(owner) = owner {
                    let known = t.apps.contains_key(owner) || t.users.contains_key(owner);
                    if !known && owners.insert(owner) {
                        users.push(owner.to_string());
                        apps.push(owner.to_string());
                    }
                }
            }
        }
        dedup(&mut users);
        dedup(&mut apps);
        let user_keys: Vec<String> = users.iter().map(|id| self.layout.user(id)).collect();
        let app_keys: Vec<String> = apps.iter().map(|id| self.layout.app(id)).collect();
        self.asking();
        let (user_rows, app_rows) = futures_util::future::try_join(
            self.rows(&user_keys, USER_FIELDS),
            self.rows(&app_keys, APP_FIELDS),
        )
        .await?;
        let entries = Entries {
            apps: apps
                .into_iter()
                .zip(app_rows)
                .map(|(id, row)| {
                    let entry = row.map(|h| app_entry(&id, &h));
                    (id, entry)
                })
                .collect(),
            users: users
                .into_iter()
                .zip(user_rows)
                .map(|(id, row)| {
                    let entry = row.map(|h| user_entry(&id, &h));
                    (id, entry)
                })
                .collect(),
            credentials: credentials
                .into_iter()
                .map(|(ty, id, row)| {
                    let held = match ty {
                        CredentialType::KeyAuth | CredentialType::Jwt => {
                            Credential::Keyed(row.as_ref().and_then(keyed_credential))
                        }
                        CredentialType::BasicAuth => Credential::Password(
                            row.as_ref().and_then(|h| password_credential(h, ty)),
                        ),
                        CredentialType::Oauth2 => Credential::NotHeld,
                    };
                    (ty, id, held)
                })
                .collect(),
        };
        self.put(entries);
        Ok(())
    }

    /// What the store holds for `credentials`, the fields of each kind at once.
    async fn read_credentials(
        &self,
        credentials: Vec<(CredentialType, String)>,
    ) -> StoreResult<Vec<(CredentialType, String, Row)>> {
        if credentials.is_empty() {
            return Ok(Vec::new());
        }
        // The kinds of credentials by the fields read of them.
        let kinds = [KEYED_FIELDS, BASIC_FIELDS, OAUTH2_FIELDS];
        let kind = |ty: CredentialType| match ty {
            CredentialType::KeyAuth | CredentialType::Jwt => 0,
            CredentialType::BasicAuth => 1,
            CredentialType::Oauth2 => 2,
        };
        let mut keys: [Vec<String>; 3] = Default::default();
        for (ty, id) in &credentials {
            keys[kind(*ty)].push(self.layout.credential(*ty, id));
        }
        self.asking();
        let rows = futures_util::future::try_join_all(
            kinds
                .iter()
                .zip(&keys)
                .map(|(fields, keys)| self.rows(keys, fields)),
        )
        .await?;
        let mut rows: Vec<_> = rows.into_iter().map(Vec::into_iter).collect();
        Ok(credentials
            .into_iter()
            .map(|(ty, id)| {
                let row = rows[kind(ty)].next().flatten();
                (ty, id, row)
            })
            .collect())
    }

    /// The `fields` of each hash among `keys` (none asked of the store for no key).
    async fn rows(&self, keys: &[String], fields: &[&str]) -> StoreResult<Vec<Row>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let rows = self.store.hash_fields_many(keys, fields).await?;
        Ok(rows
            .into_iter()
            .map(|row| row.map(|values| fields_of(fields, values)))
            .collect())
    }

    /// Puts what was read in the tables, each change noted for a full load that runs.
    fn put(&self, entries: Entries) {
        let mut t = self.write();
        for (id, entry) in entries.apps {
            self.note(Changed::App(id.as_str().into()), entry.is_some());
            match entry {
                Some(entry) => t.apps.insert(id.into(), entry),
                None => t.apps.remove(id.as_str()),
            };
        }
        // The names users leave (renamed, removed) are known by their entries: no pass over
        // every name (it was one per refresh of a renamed or removed user, under the lock).
        let mut left: Vec<Box<str>> = Vec::new();
        let mut named = Vec::new();
        for (id, entry) in entries.users {
            self.note(Changed::User(id.as_str().into()), entry.is_some());
            let new_name = entry.as_ref().and_then(|(_, u)| u.as_deref());
            let held = t.users.get(id.as_str()).and_then(|e| e.username.clone());
            if let Some(old) = held.filter(|old| Some(&**old) != new_name) {
                if t.usernames.get(&*old).is_some_and(|v| **v == *id) {
                    t.usernames.remove(&*old);
                    left.push(old);
                }
            }
            let Some((entry, username)) = entry else {
                t.users.remove(id.as_str());
                continue;
            };
            if let Some(u) = username {
                if t.usernames.get(u.as_str()).is_none_or(|v| **v != *id) {
                    named.push((u, entry.consumer.id.clone()));
                }
            }
            t.users.insert(id.into(), entry);
        }
        for (name, id) in named {
            left.retain(|l| **l != *name);
            if let Some(other) = t.usernames.insert(name.as_str().into(), id.clone()) {
                if other != id {
                    t.shared_names.insert(name.into());
                }
            }
        }
        // A name left that another user has too (two users of one name for a while, in a
        // store written by hand: it was nobody's until the next full read) is given to one of
        // them, found among the users (only for a name known to be shared).
        let mut left: HashSet<Box<str>> = left
            .into_iter()
            .filter(|n| t.shared_names.contains(n))
            .collect();
        if !left.is_empty() {
            let Tables {
                users, usernames, ..
            } = &mut *t;
            let mut given = Vec::new();
            for entry in users.values() {
                if let Some(name) = entry.username.as_deref().filter(|n| left.contains(*n)) {
                    left.remove(name);
                    usernames.insert(name.into(), entry.consumer.id.clone());
                    given.push(entry.consumer.id.clone());
                    if left.is_empty() {
                        break;
                    }
                }
            }
            // (A full load that runs keeps the names so given, as those of the users refreshed.)
            for id in given {
                self.note(Changed::User(Box::from(&*id)), true);
            }
        }
        for (ty, id, held) in entries.credentials {
            let found = matches!(
                held,
                Credential::Keyed(Some(_)) | Credential::Password(Some(_))
            );
            self.note(Changed::Credential(ty, id.as_str().into()), found);
            let id = id.as_str();
            match held {
                Credential::Keyed(c) => {
                    let table = if ty == CredentialType::KeyAuth {
                        &mut t.key_auth
                    } else {
                        &mut t.jwt
                    };
                    match c {
                        Some(c) => table.insert(id.into(), c),
                        None => table.remove(id),
                    };
                }
                Credential::Password(c) => {
                    match c {
                        Some(c) => t.basic.insert(id.into(), c),
                        None => t.basic.remove(id),
                    };
                }
                Credential::NotHeld => {}
            }
        }
    }
}

/// Ends the timing of the refresh running when dropped.
struct Timed<'a>(&'a std::sync::atomic::AtomicU64);

impl Drop for Timed<'_> {
    fn drop(&mut self) {
        self.0.store(0, Ordering::Relaxed);
    }
}

/// A hash's `fields` as read (`values`, in their order), those it has.
pub(super) fn fields_of(fields: &[&str], values: Vec<Option<String>>) -> HashMap<String, String> {
    fields
        .iter()
        .zip(values)
        .filter_map(|(f, v)| v.map(|v| (f.to_string(), v)))
        .collect()
}

/// Leaves the first of each id, in order.
fn dedup(ids: &mut Vec<String>) {
    let mut seen = HashSet::new();
    ids.retain(|id| seen.insert(id.clone()));
}

pub(super) fn user_entry(id: &str, h: &HashMap<String, String>) -> (ConsumerEntry, Option<String>) {
    let username = h.get("username").cloned();
    let entry = ConsumerEntry {
        active: h.get("isActive").map(String::as_str) == Some("true"),
        consumer: Consumer::new(Arc::from(id), Arc::from(model::app_scopes(h))),
        username: username.as_deref().map(Box::from),
    };
    (entry, username)
}

pub(super) fn app_entry(id: &str, h: &HashMap<String, String>) -> ConsumerEntry {
    ConsumerEntry {
        active: h.get("isActive").map(String::as_str) == Some("true"),
        consumer: Consumer::new(Arc::from(id), Arc::from(model::app_scopes(h))),
        username: None,
    }
}

pub(super) fn keyed_credential(h: &HashMap<String, String>) -> Option<KeyedCredential> {
    Some(KeyedCredential {
        secret: h.get("keySecret").cloned().unwrap_or_default().into(),
        consumer_id: Arc::from(h.get("consumerId")?.as_str()),
        active: h.get("isActive").map(String::as_str) == Some("true"),
        scopes: scopes_arc(model::credential_scopes(h)),
    })
}

pub(super) fn password_credential(
    h: &HashMap<String, String>,
    ty: CredentialType,
) -> Option<PasswordCredential> {
    Some(PasswordCredential {
        hash: h.get(ty.password_field())?.clone().into(),
        active: h.get("isActive").map(String::as_str) == Some("true"),
        scopes: scopes_arc(model::credential_scopes(h)),
    })
}

#[cfg(test)]
mod tests;
