//! Scopes: the list every credential's scopes are checked against.

use super::model;
use super::{ConsumerError, ConsumerService, CredentialType, Result};
use crate::store::{KeyType, Write};

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
}
