//! Consumer management with EG's semantics over any [`Store`]: users, applications, scopes and
//! credentials, written in EG's key layout so EG and tollgate read each other's data. Every
//! change is one atomic batch, and announces what it changed on the invalidation channel so
//! every gateway's [`super::cache::ConsumerCache`] follows.
//!
//! Where EG is buggy tollgate does the evident thing: deleting a user deletes its applications
//! and every credential of both; deleting an application deletes its credentials.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::Value;

use super::layout::{CredentialType, Layout};
use super::model::{self, Fields};
use super::models::Models;
use crate::store::{Store, StoreError, Write};

mod apps;
mod credentials;
mod scopes;
mod users;

/// Why a consumer operation failed, with the status the Admin API answers.
#[derive(Debug, thiserror::Error)]
pub enum ConsumerError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl ConsumerError {
    pub fn status(&self) -> u16 {
        match self {
            ConsumerError::NotFound(_) => 404,
            ConsumerError::Conflict(_) => 409,
            ConsumerError::Invalid(_) => 422,
            ConsumerError::Store(_) => 503,
        }
    }
}

pub type Result<T> = std::result::Result<T, ConsumerError>;

/// Who a credential belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConsumerRef {
    User(String),
    App(String),
}

impl ConsumerRef {
    pub fn id(&self) -> &str {
        match self {
            ConsumerRef::User(id) | ConsumerRef::App(id) => id,
        }
    }
}

pub struct ConsumerService {
    store: Arc<dyn Store>,
    layout: Layout,
    /// Replaced when the config is reloaded.
    models: arc_swap::ArcSwap<Models>,
    salt_rounds: u32,
    /// This process's consumer cache: a change is in it before its write is answered (it
    /// followed the store's announcement on a task of its own, and a key just created was
    /// refused for some milliseconds after its `201`).
    cache: Option<Arc<crate::consumers::cache::ConsumerCache>>,
}

fn invalid(msg: impl Into<String>) -> ConsumerError {
    ConsumerError::Invalid(msg.into())
}

fn to_fields(map: HashMap<String, String>, order: &[&str]) -> Fields {
    model::ordered(map, order)
}

/// The most changed entities a write announces one by one (see [`ConsumerService::announce`]).
const ANNOUNCED_ONE_BY_ONE: usize = 1_000;

impl ConsumerService {
    pub fn new(
        store: Arc<dyn Store>,
        layout: Layout,
        models: Models,
        salt_rounds: u32,
    ) -> ConsumerService {
        ConsumerService {
            store,
            layout,
            models: arc_swap::ArcSwap::from_pointee(models),
            salt_rounds,
            cache: None,
        }
    }

    /// Keeps `cache` up to date with each write before the write is answered.
    pub fn following(mut self, cache: Arc<crate::consumers::cache::ConsumerCache>) -> Self {
        self.cache = Some(cache);
        self
    }

    /// Puts new models in force (a config reload).
    pub fn set_models(&self, models: Models) {
        self.models.store(Arc::new(models));
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The bcrypt cost of the passwords it stores (`crypto.saltRounds`).
    pub fn salt_rounds(&self) -> u32 {
        self.salt_rounds
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Applies a batch and announces the changed entities.
    pub(crate) async fn commit(&self, batch: &[Write], changed: &[String]) -> Result<()> {
        let applied = self.store.apply(batch).await;
        // Announced when the write failed too: one that timed out may have landed (a
        // revocation answered 503 was in the store and not followed until the next resync); a
        // change announced that was not made only has its entities read again.
        self.announce(changed, applied.is_ok()).await;
        applied?;
        if let Some(cache) = &self.cache {
            // All at once: one by one, a scope's removal from 25,000 credentials took 25,000
            // round trips before its answer.
            if let Err(e) = cache.refresh_many(changed).await {
                log::debug!(
                    "consumer cache: refresh of {} entities after a write failed: {e}",
                    changed.len()
                );
            }
        }
        Ok(())
    }

    /// Announces changed entities to every gateway on the store (`say`: a failure to is
    /// logged as a warning).
    pub(crate) async fn announce(&self, changed: &[String], say: bool) {
        let channel = self.layout.invalidation_channel();
        // Past this many, one message that says everything changed: a populate of 50,000
        // consumers sent a message each, one round trip after another, and their flood closed
        // every gateway's subscription at Redis' pubsub output limit.
        let everything = [crate::store::EVERYTHING_CHANGED.to_string()];
        let changed = if changed.len() > ANNOUNCED_ONE_BY_ONE {
            &everything[..]
        } else {
            changed
        };
        for c in changed {
            if let Err(e) = self.store.publish(&channel, c).await {
                if say {
                    log::warn!("could not announce a change of {c}: {e}");
                } else {
                    log::debug!("could not announce a change of {c}: {e}");
                }
            }
        }
    }

    /// Sets fields of one hash and announces the changed entities.
    async fn set_fields(
        &self,
        key: String,
        fields: Vec<(String, String)>,
        changed: &[String],
    ) -> Result<()> {
        self.commit(&[Write::HSet { key, fields }], changed).await
    }

    /// One page of a listing of the objects under `prefix`, from `cursor` (0: the first), and
    /// the next page's cursor (0: none), as [`Store::scan_prefix`] pages.
    async fn page(
        &self,
        prefix: &str,
        cursor: u64,
        count: usize,
        order: &[&str],
    ) -> Result<(Vec<Value>, u64)> {
        let (keys, next) = self.store.scan_prefix(prefix, cursor, count).await?;
        let hashes = self.store.hgetall_many(&keys).await?;
        let items = hashes
            .into_iter()
            .filter(|h| !h.is_empty())
            .map(|h| model::object_json(&to_fields(h, order)))
            .collect();
        Ok((items, next))
    }

    /// The writes that take a credential out of its scopes' indexes.
    fn scope_index_removal(
        &self,
        t: CredentialType,
        id: &str,
        cred: &HashMap<String, String>,
        batch: &mut Vec<Write>,
    ) {
        for s in model::credential_scopes(cred).unwrap_or_default() {
            batch.push(Write::HDel {
                key: self.layout.scope_credentials(&s),
                fields: vec![self.layout.credential(t, id)],
            });
        }
    }
}

/// bcrypt at the configured cost: tens of milliseconds of CPU, run on the blocking pool so the
/// admin listener's event loop (which the storage route shares) keeps serving meanwhile.
async fn hash_password(plain: String, rounds: u32) -> Result<String> {
    tokio::task::spawn_blocking(move || bcrypt::hash(plain, rounds))
        .await
        .map_err(|e| invalid(format!("cannot hash the password: {e}")))?
        .map_err(|e| invalid(format!("cannot hash the password: {e}")))
}
