//! Users: find, create, update, activate, delete, list.

use serde_json::{Map, Value};

use super::model::{self, Fields};
use super::{invalid, to_fields, ConsumerError, ConsumerService, Result};
use crate::store::Write;

impl ConsumerService {
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
        // An id given that is another user's would merge the two; one that is an app's would
        // make the app's credentials the user's (and a delete of the user theirs).
        if self.store.key_type(&self.layout.user(&id)).await? != crate::store::KeyType::None {
            return Err(ConsumerError::Conflict("user id already exists".into()));
        }
        if self.store.key_type(&self.layout.app(&id)).await? != crate::store::KeyType::None {
            return Err(ConsumerError::Conflict(
                "the id is an application's: a consumer id names one consumer".into(),
            ));
        }
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
            self.set_fields(self.layout.user(&id), changes, &[format!("user:{id}")])
                .await?;
        }
        self.get_user(&id).await
    }

    /// Sets a user's status; deactivating deactivates its applications (as EG).
    pub async fn set_user_status(
        &self,
        id_or_name: &str,
        wanted: Option<bool>,
    ) -> Result<&'static str> {
        let Some((id, fields)) = self.find_user(id_or_name).await? else {
            return Err(ConsumerError::NotFound(format!(
                "user not found: {id_or_name}"
            )));
        };
        let active = wanted == Some(true);
        let current = fields.iter().any(|(k, v)| k == "isActive" && v == "true");
        if wanted == Some(current) {
            // Announced again (a retry of a write that landed unannounced).
            self.announce(&[format!("user:{id}")], true).await;
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

    pub async fn list_users(&self, cursor: u64, count: usize) -> Result<(Vec<Value>, u64)> {
        let prefix = self.layout.user_prefix();
        self.page(&prefix, cursor, count, model::USER_ORDER).await
    }
}
