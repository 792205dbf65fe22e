//! Applications: find, create, update, activate, delete, list.

use serde_json::{Map, Value};

use super::model::{self, Fields};
use super::{invalid, to_fields, ConsumerError, ConsumerService, CredentialType, Result};
use crate::store::{KeyType, Write};

impl ConsumerService {
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
            return Err(invalid("invalid username: userId is required"));
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
        // An apps model may leave `name` out of `required`: an app has one all the same.
        let Some(name) = props
            .get("name")
            .map(model::js_string)
            .filter(|n| !n.is_empty())
        else {
            return Err(invalid("name is required"));
        };
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
        self.set_fields(self.layout.app(&id), changes, &[format!("app:{id}")])
            .await?;
        self.get_app(&id).await
    }

    pub async fn set_app_status(
        &self,
        id_or_name: &str,
        wanted: Option<bool>,
    ) -> Result<&'static str> {
        let Some((id, fields)) = self.find_app(id_or_name).await? else {
            return Err(ConsumerError::NotFound(format!(
                "Application not found: {id_or_name}"
            )));
        };
        let active = wanted == Some(true);
        let current = fields.iter().any(|(k, v)| k == "isActive" && v == "true");
        if wanted == Some(current) {
            // Announced again (a retry of a write that landed unannounced).
            self.announce(&[format!("app:{id}")], true).await;
            return Ok(if active { "Active" } else { "Inactive" });
        }
        let status = vec![
            ("isActive".to_string(), active.to_string()),
            ("updatedAt".to_string(), model::js_date_now()),
        ];
        self.set_fields(self.layout.app(&id), status, &[format!("app:{id}")])
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

    pub async fn list_apps(&self, cursor: u64, count: usize) -> Result<(Vec<Value>, u64)> {
        let prefix = self.layout.app_prefix();
        self.page(&prefix, cursor, count, model::APP_ORDER).await
    }
}
