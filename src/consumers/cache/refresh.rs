//! The refresh of the entities named by change messages, by keys other programs wrote, or by
//! the lookups of keys the cache does not know: however many come at once, they are read in a
//! few pipelined round trips and put in the tables under one lock. (One at a time, a storm of
//! writes — a bulk import through EG's Admin API — cost the gateway two round trips and a
//! write lock per key, and fell behind the store's messages.)

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::sync::Changed;
use super::{scopes_arc, ConsumerCache, ConsumerEntry, KeyedCredential, PasswordCredential};
use crate::consumers::layout::CredentialType;
use crate::consumers::model;
use crate::pipeline::context::Consumer;
use crate::store::{KeyType, StoreResult};

/// How long a refresh may wait for the store's answer before the store is taken for one that
/// does not answer (Redis answers in a millisecond or two).
pub(super) const STALLED: Duration = Duration::from_millis(500);

/// The most entities read in one refresh: what more came at once waits for the next.
pub(super) const BATCH: usize = 512;

/// What the store holds for the entities of one refresh (an empty hash: nothing).
#[derive(Default)]
struct Read {
    users: Vec<(String, HashMap<String, String>)>,
    apps: Vec<(String, HashMap<String, String>)>,
    credentials: Vec<(CredentialType, String, HashMap<String, String>)>,
}

impl ConsumerCache {
    /// [`ConsumerCache::refresh_many`] by the task that runs the lookups in turn, noted while
    /// it runs (see [`super::Lookup::done`]): the lookups wait on it (refreshes elsewhere, an
    /// Admin API write's, are no queue's head).
    pub(super) async fn refresh_in_turn(&self, entities: &[String]) -> StoreResult<()> {
        let began = crate::clock::coarse_millis().max(1);
        self.refreshing_since.store(began, Ordering::Relaxed);
        let refreshed = self.refresh_many(entities).await;
        self.refreshing_since.store(0, Ordering::Relaxed);
        refreshed
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
    /// message may come next) is read with it, so the credential works at once.
    pub async fn refresh_many(&self, entities: &[String]) -> StoreResult<()> {
        let mut users = Vec::new();
        let mut apps = Vec::new();
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
                // (A name's user: one round trip each, a name is rarely written.)
                "username" => {
                    let ids = self.store.smembers(&self.layout.username(id)).await?;
                    users.extend(ids.into_iter().take(1));
                }
                other => {
                    if let Some(ty) = CredentialType::parse(other) {
                        credentials.push((ty, id.to_string()));
                    }
                }
            }
        }
        let mut read = Read {
            credentials: self.read_credentials(credentials).await?,
            ..Read::default()
        };
        // The consumers of the credentials read that the tables do not know yet.
        {
            let t = self.read();
            let mut owners = HashSet::new();
            for (ty, id, h) in &read.credentials {
                let owner = if ty.is_keyed() {
                    h.get("consumerId").map(String::as_str)
                } else {
                    (!h.is_empty()).then_some(id.as_str())
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
        read.users = users
            .into_iter()
            .zip(self.hashes(&user_keys).await?)
            .collect();
        read.apps = apps
            .into_iter()
            .zip(self.hashes(&app_keys).await?)
            .collect();
        self.put(read);
        Ok(())
    }

    /// What the store holds for `credentials` (nothing for a key that is no hash).
    async fn read_credentials(
        &self,
        credentials: Vec<(CredentialType, String)>,
    ) -> StoreResult<Vec<(CredentialType, String, HashMap<String, String>)>> {
        if credentials.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = credentials
            .iter()
            .map(|(ty, id)| self.layout.credential(*ty, id))
            .collect();
        let types = self.store.key_types(&keys).await?;
        let hash_keys: Vec<String> = keys
            .into_iter()
            .zip(&types)
            .filter(|(_, t)| **t == KeyType::Hash)
            .map(|(k, _)| k)
            .collect();
        let mut hashes = self.hashes(&hash_keys).await?.into_iter();
        Ok(credentials
            .into_iter()
            .zip(types)
            .map(|((ty, id), t)| {
                let h = if t == KeyType::Hash {
                    hashes.next().unwrap_or_default()
                } else {
                    HashMap::new()
                };
                (ty, id, h)
            })
            .collect())
    }

    /// The hashes at `keys`, none asked of the store for none.
    async fn hashes(&self, keys: &[String]) -> StoreResult<Vec<HashMap<String, String>>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        self.store.hgetall_many(keys).await
    }

    /// Puts what was read in the tables, each change noted for a full load that runs.
    fn put(&self, read: Read) {
        let mut t = self.write();
        for (id, h) in read.apps {
            self.note(Changed::App(id.as_str().into()));
            if h.is_empty() {
                t.apps.remove(id.as_str());
            } else {
                let entry = app_entry(&id, &h);
                t.apps.insert(id.into(), entry);
            }
        }
        // A name that names its user already stays as it is (most writes to a user change
        // something else); the names are looked through once, for the users gone or renamed.
        let mut unnamed: HashSet<&str> = HashSet::new();
        let mut named = Vec::new();
        for (id, h) in &read.users {
            self.note(Changed::User(id.as_str().into()));
            if h.is_empty() {
                unnamed.insert(id);
                t.users.remove(id.as_str());
                continue;
            }
            let (entry, username) = user_entry(id, h);
            let kept = username
                .as_deref()
                .is_some_and(|u| t.usernames.get(u).is_some_and(|v| **v == **id));
            if !kept {
                unnamed.insert(id);
                if let Some(u) = username {
                    named.push((u, entry.consumer.id.clone()));
                }
            }
            t.users.insert(id.as_str().into(), entry);
        }
        if !unnamed.is_empty() {
            t.usernames.retain(|_, v| !unnamed.contains(&**v));
        }
        for (name, id) in named {
            t.usernames.insert(name.into(), id);
        }
        for (ty, id, h) in read.credentials {
            self.note(Changed::Credential(ty, id.as_str().into()));
            let id = id.as_str();
            match ty {
                CredentialType::KeyAuth | CredentialType::Jwt => {
                    let table = if ty == CredentialType::KeyAuth {
                        &mut t.key_auth
                    } else {
                        &mut t.jwt
                    };
                    match keyed_credential(&h) {
                        Some(c) => table.insert(id.into(), c),
                        None => table.remove(id),
                    };
                }
                CredentialType::BasicAuth => {
                    match password_credential(&h, ty) {
                        Some(c) => t.basic.insert(id.into(), c),
                        None => t.basic.remove(id),
                    };
                }
                CredentialType::Oauth2 => {}
            }
        }
    }
}

/// Leaves the first of each id, in order.
fn dedup(ids: &mut Vec<String>) {
    let mut seen = HashSet::new();
    ids.retain(|id| seen.insert(id.clone()));
}

pub(super) fn user_entry(id: &str, h: &HashMap<String, String>) -> (ConsumerEntry, Option<String>) {
    let entry = ConsumerEntry {
        active: h.get("isActive").map(String::as_str) == Some("true"),
        consumer: Consumer::new(Arc::from(id), Arc::from(model::app_scopes(h))),
    };
    (entry, h.get("username").cloned())
}

pub(super) fn app_entry(id: &str, h: &HashMap<String, String>) -> ConsumerEntry {
    ConsumerEntry {
        active: h.get("isActive").map(String::as_str) == Some("true"),
        consumer: Consumer::new(Arc::from(id), Arc::from(model::app_scopes(h))),
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
