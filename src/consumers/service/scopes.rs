//! Scopes: the list every credential's scopes are checked against.

use super::model;
use super::{ConsumerError, ConsumerService, CredentialType, Result};
use crate::store::Write;

impl ConsumerService {
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
        self.set_fields(self.layout.scopes(), fields, &[]).await
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
        // One pass over the namespace's keys (a SCAN per credential type walked all of Redis
        // four times), sorted into the types; of each key only its `scopes`, read where its type
        // is checked (a key of a consumer's keyIds is a set: no credential).
        let types = [
            CredentialType::KeyAuth,
            CredentialType::Jwt,
            CredentialType::BasicAuth,
            CredentialType::Oauth2,
        ];
        let prefixes = types.map(|t| self.layout.credential_prefix(t));
        let mut keys: [Vec<String>; 4] = Default::default();
        for k in self.store.keys_with_prefix(&self.layout.prefix()).await? {
            if let Some(i) = prefixes.iter().position(|p| k.starts_with(p.as_str())) {
                keys[i].push(k);
            }
        }
        let mut changed = Vec::new();
        for ((t, prefix), keys) in types.iter().zip(&prefixes).zip(&keys) {
            let rows = self.store.hash_fields_many(keys, &["scopes"]).await?;
            for (key, row) in keys.iter().zip(rows) {
                let stored = row.and_then(|mut r| r.pop().flatten());
                let Some(mut scopes) = stored.as_deref().and_then(model::scopes_text) else {
                    continue;
                };
                if scopes.iter().any(|s| s == scope) {
                    scopes.retain(|s| s != scope);
                    batch.push(Write::HSet {
                        key: key.clone(),
                        fields: vec![(
                            "scopes".into(),
                            serde_json::to_string(&scopes).unwrap_or_default(),
                        )],
                    });
                    changed.push(format!("{}:{}", t.as_str(), &key[prefix.len()..]));
                }
            }
        }
        self.commit(&batch, &changed).await
    }
}
