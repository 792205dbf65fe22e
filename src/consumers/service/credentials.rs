//! Credentials of users and applications: create, read, activate, change scopes, delete.

use std::collections::HashMap;

use serde_json::{Map, Value};

use super::model::{self, Fields};
use super::{
    hash_password, invalid, ConsumerError, ConsumerRef, ConsumerService, CredentialType, Result,
};
use crate::store::{KeyType, Write};

/// Consumers whose credentials a listing of all of them reads at once.
const LISTED_AT_ONCE: usize = 512;

impl ConsumerService {
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
        // Active unless the body says otherwise, as EG takes it (its value written as given:
        // a credential made switched off stays off until it is activated).
        let active = match body.get("isActive") {
            None | Some(Value::Null) => "true".to_string(),
            Some(v) => model::js_string(v),
        };
        let mut fields: Fields = vec![
            ("isActive".into(), active),
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
            // Any key there, not only a credential: a consumer's set of key ids shares the
            // name space (a keyId that is a consumer's id would replace that set).
            let existing = self
                .store
                .key_type(&self.layout.credential(t, &key_id))
                .await?;
            if existing != crate::store::KeyType::None {
                return Err(ConsumerError::Conflict(format!(
                    "a {} credential with keyId {key_id} already exists",
                    t.as_str()
                )));
            }
            // A keyId that is a consumer's id would take the name of that consumer's set of
            // key ids; a set name a keyId took (written elsewhere) cannot be the owner's.
            for consumer in [self.layout.user(&key_id), self.layout.app(&key_id)] {
                if self.store.key_type(&consumer).await? != crate::store::KeyType::None {
                    return Err(ConsumerError::Conflict(format!(
                        "keyId {key_id} is a consumer's id: a {} credential's keyId cannot be",
                        t.as_str()
                    )));
                }
            }
            let owners_set = self.layout.credential(t, &consumer_id);
            if !matches!(
                self.store.key_type(&owners_set).await?,
                crate::store::KeyType::None | crate::store::KeyType::Set
            ) {
                return Err(ConsumerError::Conflict(format!(
                    "the consumer's {} key ids cannot be kept: a credential's keyId is its id",
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
            // Written over the switched-off one it replaces, as EG writes it: what the new one
            // does not set (its scopes, when none are given) it keeps.
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
        let mut all = self.credentials_of_many(&[consumer_id.to_string()]).await?;
        Ok(all.pop().unwrap_or_default())
    }

    /// The credentials of each of `consumers` (basic-auth, key-auth, jwt, oauth2), read for
    /// all of them at once: a few round trips per kind, not a few per consumer (the listing
    /// of every credential took one after the other for each consumer).
    async fn credentials_of_many(&self, consumers: &[String]) -> Result<Vec<Vec<Value>>> {
        let mut out = vec![Vec::new(); consumers.len()];
        for t in CredentialType::ALL {
            let keys: Vec<String> = consumers
                .iter()
                .map(|c| self.layout.credential(t, c))
                .collect();
            let types = self.store.key_types(&keys).await?;
            if t.is_keyed() {
                // The consumer's set of key ids, then each key's hash.
                let sets: Vec<usize> = (0..consumers.len())
                    .filter(|i| types[*i] == KeyType::Set)
                    .collect();
                let members = futures_util::future::try_join_all(
                    sets.iter().map(|i| self.store.smembers(&keys[*i])),
                )
                .await?;
                let owned: Vec<(usize, String)> = sets
                    .iter()
                    .zip(members)
                    .flat_map(|(i, ids)| ids.into_iter().map(move |k| (*i, k)))
                    .collect();
                let hash_keys: Vec<String> = owned
                    .iter()
                    .map(|(_, k)| self.layout.credential(t, k))
                    .collect();
                let hashes = self.store.hgetall_many(&hash_keys).await?;
                for ((i, k), h) in owned.iter().zip(hashes) {
                    if h.get("consumerId") == Some(&consumers[*i]) {
                        out[*i].push(model::credential_json(t, k, &h));
                    }
                }
            } else {
                let held: Vec<usize> = (0..consumers.len())
                    .filter(|i| types[*i] == KeyType::Hash)
                    .collect();
                let hash_keys: Vec<String> = held.iter().map(|i| keys[*i].clone()).collect();
                let hashes = self.store.hgetall_many(&hash_keys).await?;
                for (i, h) in held.iter().zip(hashes) {
                    out[*i].push(model::credential_json(t, &consumers[*i], &h));
                }
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
        for chunk in consumers.chunks(LISTED_AT_ONCE) {
            for (c, creds) in chunk.iter().zip(self.credentials_of_many(chunk).await?) {
                for cred in creds {
                    let mut obj = Map::new();
                    obj.insert("consumerId".into(), Value::String(c.clone()));
                    if let Value::Object(fields) = cred {
                        obj.extend(fields);
                    }
                    out.push(Value::Object(obj));
                }
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
        wanted: Option<bool>,
    ) -> Result<&'static str> {
        let t = CredentialType::parse(type_name)
            .ok_or_else(|| ConsumerError::NotFound(format!("No credential found with id: {id}")))?;
        let cred = self.existing_credential(t, id).await?;
        let active = wanted == Some(true);
        if wanted == Some(cred.get("isActive").map(String::as_str) == Some("true")) {
            // Announced again: the request may be a retry of one answered 503 whose write
            // landed unannounced.
            self.announce(&[format!("{}:{id}", t.as_str())], true).await;
            return Ok(if active { "Active" } else { "Inactive" });
        }
        let fields = vec![
            ("isActive".to_string(), active.to_string()),
            ("updatedAt".to_string(), model::js_date_now()),
        ];
        self.set_fields(
            self.layout.credential(t, id),
            fields,
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
