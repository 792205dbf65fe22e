//! Consumer management with EG's semantics over any [`Store`]: users, applications, scopes and
//! credentials, written in EG's key layout so EG and tollgate read each other's data. Every
//! change is one atomic batch, and announces what it changed on the invalidation channel so
//! every gateway's [`super::cache::ConsumerCache`] follows.
//!
//! Where EG is buggy tollgate does the evident thing: deleting a user deletes its applications
//! and every credential of both; deleting an application deletes its credentials.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::{Map, Value};

use super::layout::{CredentialType, Layout};
use super::model::{self, Fields};
use super::models::Models;
use crate::store::{KeyType, Store, StoreError, Write};

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
}

fn invalid(msg: impl Into<String>) -> ConsumerError {
    ConsumerError::Invalid(msg.into())
}

fn to_fields(map: HashMap<String, String>, order: &[&str]) -> Fields {
    model::ordered(map, order)
}

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
        }
    }

    /// Puts new models in force (a config reload).
    pub fn set_models(&self, models: Models) {
        self.models.store(Arc::new(models));
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Applies a batch and announces the changed entities.
    pub(crate) async fn commit(&self, batch: &[Write], changed: &[String]) -> Result<()> {
        self.store.apply(batch).await?;
        let channel = self.layout.invalidation_channel();
        for c in changed {
            if let Err(e) = self.store.publish(&channel, c).await {
                log::warn!("could not announce a change of {c}: {e}");
            }
        }
        Ok(())
    }

    // ----- users -----

    /// Finds a user by username, then by id.
    pub async fn find_user(&self, id_or_name: &str) -> Result<Option<(String, Fields)>> {
        let ids = self
            .store
            .smembers(&self.layout.username(id_or_name))
            .await?;
        if let Some(id) = ids.first() {
            let h = self.store.hgetall(&self.layout.user(id)).await?;
            if !h.is_empty() {
                return Ok(Some((id.clone(), to_fields(h, model::USER_ORDER))));
            }
        }
        let h = self.store.hgetall(&self.layout.user(id_or_name)).await?;
        Ok((!h.is_empty()).then(|| (id_or_name.to_string(), to_fields(h, model::USER_ORDER))))
    }

    pub async fn get_user(&self, id_or_name: &str) -> Result<Value> {
        match self.find_user(id_or_name).await? {
            Some((_, f)) => Ok(model::object_json(&f)),
            None => Err(ConsumerError::NotFound(format!(
                "User not found: {id_or_name}"
            ))),
        }
    }

    pub async fn create_user(&self, body: &Map<String, Value>) -> Result<Value> {
        self.models
            .load()
            .users
            .validate(body, true)
            .map_err(invalid)?;
        let username = body
            .get("username")
            .map(model::js_string)
            .unwrap_or_default();
        if username.is_empty() {
            return Err(invalid("data should have required property 'username'"));
        }
        if !self
            .store
            .smembers(&self.layout.username(&username))
            .await?
            .is_empty()
        {
            return Err(ConsumerError::Conflict("username already exists".into()));
        }
        let id = body
            .get("id")
            .and_then(Value::as_str)
            .map_or_else(|| uuid::Uuid::new_v4().to_string(), str::to_string);
        let now = model::js_date_now();
        let mut fields: Fields = vec![
            ("isActive".into(), "true".into()),
            ("username".into(), username.clone()),
            ("id".into(), id.clone()),
        ];
        for (k, v) in body {
            if !matches!(k.as_str(), "username" | "id" | "createdAt" | "updatedAt") {
                let v = if k == "isActive" {
                    (v == &Value::Bool(true) || v == "true").to_string()
                } else {
                    model::js_string(v)
                };
                match fields.iter_mut().find(|(f, _)| f == k) {
                    Some(slot) => slot.1 = v,
                    None => fields.push((k.clone(), v)),
                }
            }
        }
        fields.push(("createdAt".into(), now.clone()));
        fields.push(("updatedAt".into(), now));
        self.commit(
            &[
                Write::HSet {
                    key: self.layout.user(&id),
                    fields: fields.clone(),
                },
                Write::SAdd {
                    key: self.layout.username(&username),
                    members: vec![id.clone()],
                },
            ],
            &[format!("user:{id}")],
        )
        .await?;
        Ok(model::object_json(&fields))
    }

    pub async fn update_user(&self, id_or_name: &str, body: &Map<String, Value>) -> Result<Value> {
        let Some((id, _)) = self.find_user(id_or_name).await? else {
            return Err(ConsumerError::NotFound(format!(
                "User not found: {id_or_name}"
            )));
        };
        let mut changes: Fields = Vec::new();
        for (k, v) in body {
            if k == "username" || k == "id" {
                continue; // EG ignores a new username
            }
            if !self.models.load().users.declares(k) {
                return Err(invalid("one or more properties is invalid"));
            }
            changes.push((k.clone(), model::js_string(v)));
        }
        self.models
            .load()
            .users
            .validate(body, false)
            .map_err(invalid)?;
        if !changes.is_empty() {
            changes.push(("updatedAt".into(), model::js_date_now()));
            self.commit(
                &[Write::HSet {
                    key: self.layout.user(&id),
                    fields: changes,
                }],
                &[format!("user:{id}")],
            )
            .await?;
        }
        self.get_user(&id).await
    }

    /// Sets a user's status; deactivating deactivates its applications (as EG).
    pub async fn set_user_status(&self, id_or_name: &str, active: bool) -> Result<&'static str> {
        let Some((id, fields)) = self.find_user(id_or_name).await? else {
            return Err(ConsumerError::NotFound(format!(
                "user not found: {id_or_name}"
            )));
        };
        let current = fields.iter().any(|(k, v)| k == "isActive" && v == "true");
        if current == active {
            return Ok(if active { "Active" } else { "Inactive" });
        }
        let now = model::js_date_now();
        let status = vec![
            ("isActive".to_string(), active.to_string()),
            ("updatedAt".to_string(), now),
        ];
        let mut batch = vec![Write::HSet {
            key: self.layout.user(&id),
            fields: status.clone(),
        }];
        let mut changed = vec![format!("user:{id}")];
        if !active {
            for app in self.store.smembers(&self.layout.user_apps(&id)).await? {
                batch.push(Write::HSet {
                    key: self.layout.app(&app),
                    fields: status.clone(),
                });
                changed.push(format!("app:{app}"));
            }
        }
        self.commit(&batch, &changed).await?;
        Ok(if active { "Activated" } else { "Deactivated" })
    }

    /// Deletes a user, its applications, and every credential of both.
    pub async fn delete_user(&self, id_or_name: &str) -> Result<()> {
        let Some((id, fields)) = self.find_user(id_or_name).await? else {
            return Err(ConsumerError::NotFound(format!(
                "User not found: {id_or_name}"
            )));
        };
        let username = fields
            .iter()
            .find(|(k, _)| k == "username")
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        let mut batch = vec![
            Write::Del {
                key: self.layout.user(&id),
            },
            Write::SRem {
                key: self.layout.username(&username),
                members: vec![id.clone()],
            },
        ];
        let mut changed = vec![format!("user:{id}")];
        self.credential_removals(&id, &mut batch, &mut changed)
            .await?;
        for app in self.store.smembers(&self.layout.user_apps(&id)).await? {
            self.app_removal(&app, &mut batch, &mut changed).await?;
        }
        batch.push(Write::Del {
            key: self.layout.user_apps(&id),
        });
        self.commit(&batch, &changed).await
    }

    pub async fn list_users(&self, start: usize, count: usize) -> Result<(Vec<Value>, usize)> {
        let keys = self
            .store
            .keys_with_prefix(&self.layout.user_prefix())
            .await?;
        self.page(&keys, start, count, model::USER_ORDER).await
    }

    async fn page(
        &self,
        keys: &[String],
        start: usize,
        count: usize,
        order: &[&str],
    ) -> Result<(Vec<Value>, usize)> {
        let end = (start + count.max(1)).min(keys.len());
        let slice = keys.get(start..end).unwrap_or(&[]);
        let hashes = self.store.hgetall_many(slice).await?;
        let items = hashes
            .into_iter()
            .filter(|h| !h.is_empty())
            .map(|h| model::object_json(&to_fields(h, order)))
            .collect();
        let next = if end < keys.len() { end } else { 0 };
        Ok((items, next))
    }

    // ----- applications -----

    /// Finds an app by id, then by name.
    pub async fn find_app(&self, id_or_name: &str) -> Result<Option<(String, Fields)>> {
        let h = self.store.hgetall(&self.layout.app(id_or_name)).await?;
        if !h.is_empty() {
            return Ok(Some((
                id_or_name.to_string(),
                to_fields(h, model::APP_ORDER),
            )));
        }
        let ids = self
            .store
            .smembers(&self.layout.app_name(id_or_name))
            .await?;
        match ids.len() {
            0 => Ok(None),
            1 => {
                let h = self.store.hgetall(&self.layout.app(&ids[0])).await?;
                Ok((!h.is_empty()).then(|| (ids[0].clone(), to_fields(h, model::APP_ORDER))))
            }
            _ => Err(ConsumerError::Conflict(format!(
                "Multiple applications with {id_or_name} have been found: {}. Please search for it using its ID instead",
                ids.join(",")
            ))),
        }
    }

    pub async fn get_app(&self, id_or_name: &str) -> Result<Value> {
        match self.find_app(id_or_name).await? {
            Some((_, f)) => Ok(model::object_json(&f)),
            None => Err(ConsumerError::NotFound(format!(
                "Application not found: {id_or_name}"
            ))),
        }
    }

    pub async fn create_app(&self, body: &Map<String, Value>) -> Result<Value> {
        let Some(user_ref) = body
            .get("userId")
            .map(model::js_string)
            .filter(|s| !s.is_empty())
        else {
            return Err(invalid("invalid username"));
        };
        let mut props = body.clone();
        props.remove("userId");
        self.models
            .load()
            .apps
            .validate(&props, true)
            .map_err(invalid)?;
        let Some((user_id, _)) = self.find_user(&user_ref).await? else {
            return Err(ConsumerError::Conflict(
                "The specified user does not exist".into(),
            ));
        };
        let name = model::js_string(&props["name"]);
        for other in self.store.smembers(&self.layout.app_name(&name)).await? {
            let h = self.store.hgetall(&self.layout.app(&other)).await?;
            if h.get("userId") == Some(&user_id) {
                return Err(ConsumerError::Conflict(format!(
                    "{user_id} has already another application bound with {name} as name"
                )));
            }
        }
        let id = uuid::Uuid::new_v4().to_string();
        let now = model::js_date_now();
        let mut fields: Fields = vec![
            ("isActive".into(), "true".into()),
            ("id".into(), id.clone()),
            ("userId".into(), user_id.clone()),
        ];
        for (k, v) in &props {
            fields.push((k.clone(), model::js_string(v)));
        }
        fields.push(("createdAt".into(), now.clone()));
        fields.push(("updatedAt".into(), now));
        self.commit(
            &[
                Write::HSet {
                    key: self.layout.app(&id),
                    fields: fields.clone(),
                },
                Write::SAdd {
                    key: self.layout.user_apps(&user_id),
                    members: vec![id.clone()],
                },
                Write::SAdd {
                    key: self.layout.app_name(&name),
                    members: vec![id.clone()],
                },
            ],
            &[format!("app:{id}")],
        )
        .await?;
        // The answer shows what was sent (scopes as a list), as EG's does.
        let mut shown = model::object_json(&fields);
        if let (Some(obj), Some(scopes)) = (shown.as_object_mut(), props.get("scopes")) {
            obj.insert("scopes".into(), scopes.clone());
        }
        Ok(shown)
    }

    pub async fn update_app(&self, id_or_name: &str, body: &Map<String, Value>) -> Result<Value> {
        let Some((id, _)) = self.find_app(id_or_name).await? else {
            return Err(ConsumerError::NotFound(format!(
                "Application not found: {id_or_name}"
            )));
        };
        let mut changes: Fields = Vec::new();
        for (k, v) in body {
            if !self.models.load().apps.declares(k) || k == "name" && v.as_str().is_none() {
                return Err(invalid("one or more properties is invalid"));
            }
            changes.push((k.clone(), model::js_string(v)));
        }
        self.models
            .load()
            .apps
            .validate(body, false)
            .map_err(invalid)?;
        changes.push(("updatedAt".into(), model::js_date_now()));
        self.commit(
            &[Write::HSet {
                key: self.layout.app(&id),
                fields: changes,
            }],
            &[format!("app:{id}")],
        )
        .await?;
        self.get_app(&id).await
    }

    pub async fn set_app_status(&self, id_or_name: &str, active: bool) -> Result<&'static str> {
        let Some((id, fields)) = self.find_app(id_or_name).await? else {
            return Err(ConsumerError::NotFound(format!(
                "Application not found: {id_or_name}"
            )));
        };
        let current = fields.iter().any(|(k, v)| k == "isActive" && v == "true");
        if current == active {
            return Ok(if active { "Active" } else { "Inactive" });
        }
        let status = vec![
            ("isActive".to_string(), active.to_string()),
            ("updatedAt".to_string(), model::js_date_now()),
        ];
        self.commit(
            &[Write::HSet {
                key: self.layout.app(&id),
                fields: status,
            }],
            &[format!("app:{id}")],
        )
        .await?;
        Ok(if active { "Activated" } else { "Deactivated" })
    }

    /// Deletes an application and its credentials.
    pub async fn delete_app(&self, id_or_name: &str) -> Result<()> {
        let Some((id, _)) = self.find_app(id_or_name).await? else {
            return Err(ConsumerError::NotFound(format!(
                "Application not found: {id_or_name}"
            )));
        };
        let mut batch = Vec::new();
        let mut changed = Vec::new();
        self.app_removal(&id, &mut batch, &mut changed).await?;
        self.commit(&batch, &changed).await
    }

    /// The writes that remove an application, its indexes and its credentials.
    pub(crate) async fn app_removal(
        &self,
        id: &str,
        batch: &mut Vec<Write>,
        changed: &mut Vec<String>,
    ) -> Result<()> {
        let h = self.store.hgetall(&self.layout.app(id)).await?;
        batch.push(Write::Del {
            key: self.layout.app(id),
        });
        if let Some(user) = h.get("userId") {
            batch.push(Write::SRem {
                key: self.layout.user_apps(user),
                members: vec![id.to_string()],
            });
        }
        if let Some(name) = h.get("name") {
            batch.push(Write::SRem {
                key: self.layout.app_name(name),
                members: vec![id.to_string()],
            });
        }
        changed.push(format!("app:{id}"));
        self.credential_removals(id, batch, changed).await
    }

    /// Every credential of a consumer, removed with its scope index entries.
    pub(crate) async fn credential_removals(
        &self,
        consumer_id: &str,
        batch: &mut Vec<Write>,
        changed: &mut Vec<String>,
    ) -> Result<()> {
        for t in CredentialType::ALL {
            if t.is_keyed() {
                let set_key = self.layout.credential(t, consumer_id);
                if self.store.key_type(&set_key).await? != KeyType::Set {
                    continue;
                }
                for key_id in self.store.smembers(&set_key).await? {
                    let cred = self
                        .store
                        .hgetall(&self.layout.credential(t, &key_id))
                        .await?;
                    if cred.get("consumerId").map(String::as_str) == Some(consumer_id) {
                        self.scope_index_removal(t, &key_id, &cred, batch);
                        batch.push(Write::Del {
                            key: self.layout.credential(t, &key_id),
                        });
                        changed.push(format!("{}:{key_id}", t.as_str()));
                    }
                }
                batch.push(Write::Del { key: set_key });
            } else {
                let key = self.layout.credential(t, consumer_id);
                let cred = self.store.hgetall(&key).await?;
                if !cred.is_empty() {
                    self.scope_index_removal(t, consumer_id, &cred, batch);
                    batch.push(Write::Del { key });
                    changed.push(format!("{}:{consumer_id}", t.as_str()));
                }
            }
        }
        Ok(())
    }

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

    pub async fn list_apps(&self, start: usize, count: usize) -> Result<(Vec<Value>, usize)> {
        let keys = self
            .store
            .keys_with_prefix(&self.layout.app_prefix())
            .await?;
        self.page(&keys, start, count, model::APP_ORDER).await
    }

    // ----- scopes -----

    pub async fn scopes(&self) -> Result<Vec<String>> {
        let mut s: Vec<String> = self
            .store
            .hgetall(&self.layout.scopes())
            .await?
            .into_keys()
            .collect();
        s.sort();
        Ok(s)
    }

    pub async fn create_scopes(&self, scopes: &[String]) -> Result<()> {
        let existing = self.scopes().await?;
        if scopes.iter().any(|s| existing.contains(s)) {
            return Err(ConsumerError::Conflict(
                "One or more scopes already exist.".into(),
            ));
        }
        let fields = scopes
            .iter()
            .map(|s| (s.clone(), "true".to_string()))
            .collect();
        self.commit(
            &[Write::HSet {
                key: self.layout.scopes(),
                fields,
            }],
            &[],
        )
        .await
    }

    /// Deletes a scope and removes it from every credential that holds it.
    pub async fn delete_scope(&self, scope: &str) -> Result<()> {
        let mut batch = vec![
            Write::HDel {
                key: self.layout.scopes(),
                fields: vec![scope.to_string()],
            },
            Write::Del {
                key: self.layout.scope_credentials(scope),
            },
        ];
        let mut changed = Vec::new();
        for t in [
            CredentialType::KeyAuth,
            CredentialType::Jwt,
            CredentialType::BasicAuth,
            CredentialType::Oauth2,
        ] {
            let keys = self
                .store
                .keys_with_prefix(&self.layout.credential_prefix(t))
                .await?;
            let types = self.store.key_types(&keys).await?;
            let hashes: Vec<String> = keys
                .into_iter()
                .zip(types)
                .filter(|(_, ty)| *ty == KeyType::Hash)
                .map(|(k, _)| k)
                .collect();
            for (key, cred) in hashes.iter().zip(self.store.hgetall_many(&hashes).await?) {
                if let Some(mut scopes) = model::credential_scopes(&cred) {
                    if scopes.iter().any(|s| s == scope) {
                        scopes.retain(|s| s != scope);
                        batch.push(Write::HSet {
                            key: key.clone(),
                            fields: vec![(
                                "scopes".into(),
                                serde_json::to_string(&scopes).unwrap_or_default(),
                            )],
                        });
                        let id = &key[self.layout.credential_prefix(t).len()..];
                        changed.push(format!("{}:{id}", t.as_str()));
                    }
                }
            }
        }
        self.commit(&batch, &changed).await
    }

    // ----- credentials -----

    /// Resolves a consumer as EG does: username, user id, app id, app name.
    pub async fn find_consumer(&self, id_or_name: &str) -> Result<Option<ConsumerRef>> {
        if let Some((id, _)) = self.find_user(id_or_name).await? {
            return Ok(Some(ConsumerRef::User(id)));
        }
        Ok(self
            .find_app(id_or_name)
            .await?
            .map(|(id, _)| ConsumerRef::App(id)))
    }

    /// Creates a credential; the answer shows a generated password once.
    pub async fn create_credential(
        &self,
        consumer: &str,
        type_name: &str,
        body: &Map<String, Value>,
    ) -> Result<Value> {
        let t = CredentialType::parse(type_name)
            .ok_or_else(|| invalid(format!("Invalid credential type: {type_name}")))?;
        let Some(owner) = self.find_consumer(consumer).await? else {
            return Err(invalid(format!("No consumer found with id: {consumer}")));
        };
        let consumer_id = owner.id().to_string();
        // EG's jwt credential model has no properties: scopes given at creation are dropped
        // (the answer says `scopes: null`); they can be set afterwards through the scopes routes.
        let scopes: Option<Vec<String>> = match body.get("scopes") {
            _ if t == CredentialType::Jwt => None,
            None | Some(Value::Null) => None,
            Some(Value::Array(items)) => Some(items.iter().map(model::js_string).collect()),
            Some(_) => return Err(invalid("scopes must be a list of scope names")),
        };
        if let Some(list) = &scopes {
            let known = self.scopes().await?;
            if list.iter().any(|s| !known.contains(s)) {
                return Err(invalid("One or more scopes don't exist"));
            }
        }
        let now = model::js_date_now();
        let mut fields: Fields = vec![
            ("isActive".into(), "true".into()),
            ("createdAt".into(), now.clone()),
            ("updatedAt".into(), now),
        ];
        let extras = body.iter().filter(|(k, _)| {
            !matches!(
                k.as_str(),
                "scopes"
                    | "keyId"
                    | "keySecret"
                    | "password"
                    | "secret"
                    | "isActive"
                    | "consumerId"
                    | "id"
            )
        });
        let mut batch = Vec::new();
        let (id, mut shown_extra) = if t.is_keyed() {
            let key_id = body
                .get("keyId")
                .map(model::js_string)
                .filter(|s| !s.is_empty())
                .unwrap_or_else(model::uuid62);
            let key_secret = body
                .get("keySecret")
                .map(model::js_string)
                .filter(|s| !s.is_empty())
                .unwrap_or_else(model::uuid62);
            let existing = self
                .store
                .hgetall(&self.layout.credential(t, &key_id))
                .await?;
            if !existing.is_empty() {
                return Err(ConsumerError::Conflict(format!(
                    "a {} credential with keyId {key_id} already exists",
                    t.as_str()
                )));
            }
            for (k, v) in extras {
                fields.push((k.clone(), model::js_string(v)));
            }
            fields.push(("keyId".into(), key_id.clone()));
            fields.push(("keySecret".into(), key_secret));
            fields.push((
                "scopes".into(),
                serde_json::to_string(&scopes).unwrap_or_else(|_| "null".into()),
            ));
            fields.push(("consumerId".into(), consumer_id.clone()));
            fields.push(("id".into(), key_id.clone()));
            batch.push(Write::SAdd {
                key: self.layout.credential(t, &consumer_id),
                members: vec![key_id.clone()],
            });
            (key_id, Map::new())
        } else {
            let key = self.layout.credential(t, &consumer_id);
            let existing = self.store.hgetall(&key).await?;
            if existing.get("isActive").map(String::as_str) == Some("true") {
                return Err(ConsumerError::Conflict(
                    "Credential already exists and is active".into(),
                ));
            }
            let field = t.password_field();
            let given = body
                .get(field)
                .map(model::js_string)
                .filter(|s| !s.is_empty());
            let plain = given
                .clone()
                .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
            let hash = hash_password(plain.clone(), self.salt_rounds).await?;
            if let Some(list) = &scopes {
                fields.push((
                    "scopes".into(),
                    serde_json::to_string(list).unwrap_or_default(),
                ));
            }
            fields.push((field.into(), hash));
            for (k, v) in extras {
                fields.push((k.clone(), model::js_string(v)));
            }
            fields.push(("autoGeneratePassword".into(), "true".into()));
            fields.push(("passwordKey".into(), field.into()));
            if !existing.is_empty() {
                batch.push(Write::Del { key: key.clone() });
            }
            let mut shown = Map::new();
            if given.is_none() {
                shown.insert(field.to_string(), Value::String(plain));
            }
            (consumer_id.clone(), shown)
        };
        batch.push(Write::HSet {
            key: self.layout.credential(t, &id),
            fields: fields.clone(),
        });
        for s in scopes.iter().flatten() {
            batch.push(Write::HSet {
                key: self.layout.scope_credentials(s),
                fields: vec![(self.layout.credential(t, &id), "true".into())],
            });
        }
        self.commit(&batch, &[format!("{}:{id}", t.as_str())])
            .await?;
        let stored: HashMap<String, String> = fields.into_iter().collect();
        let shown = model::credential_json(t, &id, &stored);
        let Value::Object(mut obj) = shown else {
            return Ok(shown);
        };
        obj.remove("type");
        if !t.is_keyed() {
            // As EG's answer at creation (not when read back): the model's password settings,
            // before the id.
            let id_value = obj.remove("id");
            obj.insert("autoGeneratePassword".into(), Value::Bool(true));
            obj.insert(
                "passwordKey".into(),
                Value::String(t.password_field().to_string()),
            );
            if let Some(v) = id_value {
                obj.insert("id".into(), v);
            }
        }
        obj.append(&mut shown_extra);
        Ok(Value::Object(obj))
    }

    pub async fn get_credential(&self, type_name: &str, id: &str) -> Result<Option<Value>> {
        let Some(t) = CredentialType::parse(type_name) else {
            return Ok(None);
        };
        let key = self.layout.credential(t, id);
        if self.store.key_type(&key).await? != KeyType::Hash {
            return Ok(None);
        }
        let stored = self.store.hgetall(&key).await?;
        Ok(Some(model::credential_json(t, id, &stored)))
    }

    /// A consumer's credentials: basic-auth, key-auth, jwt, oauth2.
    pub async fn consumer_credentials(&self, consumer: &str) -> Result<Vec<Value>> {
        let Some(owner) = self.find_consumer(consumer).await? else {
            return Err(ConsumerError::NotFound(format!(
                "No consumer found with id: {consumer}"
            )));
        };
        self.credentials_of(owner.id()).await
    }

    async fn credentials_of(&self, consumer_id: &str) -> Result<Vec<Value>> {
        let mut out = Vec::new();
        for t in CredentialType::ALL {
            if t.is_keyed() {
                let set = self.layout.credential(t, consumer_id);
                if self.store.key_type(&set).await? != KeyType::Set {
                    continue;
                }
                let ids = self.store.smembers(&set).await?;
                let keys: Vec<String> = ids.iter().map(|k| self.layout.credential(t, k)).collect();
                for (k, h) in ids.iter().zip(self.store.hgetall_many(&keys).await?) {
                    if h.get("consumerId").map(String::as_str) == Some(consumer_id) {
                        out.push(model::credential_json(t, k, &h));
                    }
                }
            } else if let Some(v) = self.get_credential(t.as_str(), consumer_id).await? {
                out.push(v);
            }
        }
        Ok(out)
    }

    /// Every credential of every user and application, each with its consumer id first.
    pub async fn all_credentials(&self) -> Result<Vec<Value>> {
        let mut consumers: Vec<String> = Vec::new();
        for prefix in [self.layout.user_prefix(), self.layout.app_prefix()] {
            for k in self.store.keys_with_prefix(&prefix).await? {
                consumers.push(k[prefix.len()..].to_string());
            }
        }
        let mut out = Vec::new();
        for c in consumers {
            for cred in self.credentials_of(&c).await? {
                let mut obj = Map::new();
                obj.insert("consumerId".into(), Value::String(c.clone()));
                if let Value::Object(fields) = cred {
                    obj.extend(fields);
                }
                out.push(Value::Object(obj));
            }
        }
        Ok(out)
    }

    async fn existing_credential(
        &self,
        t: CredentialType,
        id: &str,
    ) -> Result<HashMap<String, String>> {
        let key = self.layout.credential(t, id);
        if self.store.key_type(&key).await? != KeyType::Hash {
            return Err(ConsumerError::NotFound(format!(
                "No credential found with id: {id}"
            )));
        }
        Ok(self.store.hgetall(&key).await?)
    }

    pub async fn set_credential_status(
        &self,
        type_name: &str,
        id: &str,
        active: bool,
    ) -> Result<&'static str> {
        let t = CredentialType::parse(type_name)
            .ok_or_else(|| ConsumerError::NotFound(format!("No credential found with id: {id}")))?;
        let cred = self.existing_credential(t, id).await?;
        if (cred.get("isActive").map(String::as_str) == Some("true")) == active {
            return Ok(if active { "Active" } else { "Inactive" });
        }
        let fields = vec![
            ("isActive".to_string(), active.to_string()),
            ("updatedAt".to_string(), model::js_date_now()),
        ];
        self.commit(
            &[Write::HSet {
                key: self.layout.credential(t, id),
                fields,
            }],
            &[format!("{}:{id}", t.as_str())],
        )
        .await?;
        Ok(if active { "Activated" } else { "Deactivated" })
    }

    /// Replaces a credential's scopes (every scope must exist).
    pub async fn set_credential_scopes(
        &self,
        type_name: &str,
        id: &str,
        scopes: &[String],
    ) -> Result<()> {
        let t = CredentialType::parse(type_name)
            .ok_or_else(|| ConsumerError::NotFound("credential not found".into()))?;
        let cred = self.existing_credential(t, id).await?;
        let known = self.scopes().await?;
        if scopes.iter().any(|s| !known.contains(s)) {
            return Err(invalid("One or more scopes don't exist"));
        }
        let mut batch = Vec::new();
        self.scope_index_removal(t, id, &cred, &mut batch);
        let mut unique: Vec<String> = Vec::new();
        for s in scopes {
            if !unique.contains(s) {
                unique.push(s.clone());
            }
        }
        batch.push(Write::HSet {
            key: self.layout.credential(t, id),
            fields: vec![(
                "scopes".into(),
                serde_json::to_string(&unique).unwrap_or_default(),
            )],
        });
        for s in &unique {
            batch.push(Write::HSet {
                key: self.layout.scope_credentials(s),
                fields: vec![(self.layout.credential(t, id), "true".into())],
            });
        }
        self.commit(&batch, &[format!("{}:{id}", t.as_str())]).await
    }

    pub async fn add_credential_scope(&self, type_name: &str, id: &str, scope: &str) -> Result<()> {
        let t = CredentialType::parse(type_name)
            .ok_or_else(|| ConsumerError::NotFound("credential not found".into()))?;
        let mut scopes =
            model::credential_scopes(&self.existing_credential(t, id).await?).unwrap_or_default();
        if !scopes.iter().any(|s| s == scope) {
            scopes.push(scope.to_string());
        }
        self.set_credential_scopes(type_name, id, &scopes).await
    }

    pub async fn remove_credential_scope(
        &self,
        type_name: &str,
        id: &str,
        scope: &str,
    ) -> Result<()> {
        let t = CredentialType::parse(type_name)
            .ok_or_else(|| ConsumerError::NotFound("credential not found".into()))?;
        let mut scopes =
            model::credential_scopes(&self.existing_credential(t, id).await?).unwrap_or_default();
        scopes.retain(|s| s != scope);
        self.set_credential_scopes(type_name, id, &scopes).await
    }

    /// Deletes one credential (EG has no route for it).
    pub async fn delete_credential(&self, type_name: &str, id: &str) -> Result<()> {
        let t = CredentialType::parse(type_name)
            .ok_or_else(|| ConsumerError::NotFound(format!("No credential found with id: {id}")))?;
        let cred = self.existing_credential(t, id).await?;
        let mut batch = Vec::new();
        self.scope_index_removal(t, id, &cred, &mut batch);
        batch.push(Write::Del {
            key: self.layout.credential(t, id),
        });
        if let (true, Some(owner)) = (t.is_keyed(), cred.get("consumerId")) {
            batch.push(Write::SRem {
                key: self.layout.credential(t, owner),
                members: vec![id.to_string()],
            });
        }
        self.commit(&batch, &[format!("{}:{id}", t.as_str())]).await
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
