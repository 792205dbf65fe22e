//! EG's Redis key layout (`<ns>-<kind>:<id>`), in one place.

/// Credential types.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CredentialType {
    KeyAuth,
    Jwt,
    BasicAuth,
    Oauth2,
}

impl CredentialType {
    pub const ALL: [CredentialType; 4] = [
        CredentialType::BasicAuth,
        CredentialType::KeyAuth,
        CredentialType::Jwt,
        CredentialType::Oauth2,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CredentialType::KeyAuth => "key-auth",
            CredentialType::Jwt => "jwt",
            CredentialType::BasicAuth => "basic-auth",
            CredentialType::Oauth2 => "oauth2",
        }
    }

    /// Parses a type name; Kargo's docs spell key-auth `auth-key`.
    pub fn parse(s: &str) -> Option<CredentialType> {
        match s {
            "key-auth" | "auth-key" => Some(CredentialType::KeyAuth),
            "jwt" => Some(CredentialType::Jwt),
            "basic-auth" => Some(CredentialType::BasicAuth),
            "oauth2" => Some(CredentialType::Oauth2),
            _ => None,
        }
    }

    /// key-auth and jwt: many per consumer, keyed by keyId. basic-auth and oauth2: one per
    /// consumer, keyed by the consumer id, with a bcrypt-hashed password.
    pub fn is_keyed(self) -> bool {
        matches!(self, CredentialType::KeyAuth | CredentialType::Jwt)
    }

    /// The field holding the hashed password (basic-auth, oauth2).
    pub fn password_field(self) -> &'static str {
        match self {
            CredentialType::Oauth2 => "secret",
            _ => "password",
        }
    }
}

/// Key names for one namespace.
#[derive(Clone, Debug)]
pub struct Layout {
    ns: String,
}

impl Layout {
    pub fn new(namespace: &str) -> Layout {
        Layout {
            ns: namespace.to_string(),
        }
    }

    pub fn namespace(&self) -> &str {
        &self.ns
    }

    pub fn user(&self, id: &str) -> String {
        format!("{}-user:{id}", self.ns)
    }
    pub fn user_prefix(&self) -> String {
        format!("{}-user:", self.ns)
    }
    pub fn username(&self, name: &str) -> String {
        format!("{}-username:{name}", self.ns)
    }
    pub fn app(&self, id: &str) -> String {
        format!("{}-application:{id}", self.ns)
    }
    pub fn app_prefix(&self) -> String {
        format!("{}-application:", self.ns)
    }
    pub fn user_apps(&self, user_id: &str) -> String {
        format!("{}-user-applications:{user_id}", self.ns)
    }
    pub fn app_name(&self, name: &str) -> String {
        format!("{}-application-name:{name}", self.ns)
    }
    pub fn scopes(&self) -> String {
        format!("{}-scope", self.ns)
    }
    pub fn scope_credentials(&self, scope: &str) -> String {
        format!("{}-scope-credentials:{scope}", self.ns)
    }
    /// `<ns>-<type>:<id>`: a credential hash (keyId, or consumer id for basic-auth/oauth2), or
    /// for key-auth/jwt also the set of a consumer's keyIds.
    pub fn credential(&self, t: CredentialType, id: &str) -> String {
        format!("{}-{}:{id}", self.ns, t.as_str())
    }
    pub fn credential_prefix(&self, t: CredentialType) -> String {
        format!("{}-{}:", self.ns, t.as_str())
    }
    /// The prefix of every key of the namespace's consumers.
    pub fn prefix(&self) -> String {
        format!("{}-", self.ns)
    }
    /// What a key of the namespace holds, as the change messages name it (`user:<id>`,
    /// `app:<id>`, `username:<name>`, `key-auth:<keyId>`...); `None` for another key.
    pub fn entity_of(&self, key: &str) -> Option<String> {
        let (kind, id) = key
            .strip_prefix(&self.ns)?
            .strip_prefix('-')?
            .split_once(':')?;
        let kind = match kind {
            "user" => "user",
            "application" => "app",
            "username" => "username",
            other => CredentialType::parse(other)?.as_str(),
        };
        Some(format!("{kind}:{id}"))
    }
    /// Where every tollgate write announces what it changed.
    pub fn invalidation_channel(&self) -> String {
        format!("{}-tollgate-invalidate", self.ns)
    }
    /// The lock populate takes.
    pub fn populate_lock(&self) -> String {
        format!("{}-tollgate-populate-lock", self.ns)
    }
}

#[cfg(test)]
mod tests {
    use super::Layout;

    #[test]
    fn a_key_names_what_it_holds_as_the_change_messages_do() {
        let l = Layout::new("EG");
        for (key, entity) in [
            ("EG-user:u1", Some("user:u1")),
            ("EG-application:a1", Some("app:a1")),
            ("EG-username:ann", Some("username:ann")),
            ("EG-key-auth:k1", Some("key-auth:k1")),
            ("EG-jwt:j:1", Some("jwt:j:1")),
            ("EG-basic-auth:u1", Some("basic-auth:u1")),
            ("EG-scope", None),
            ("EG-scope-credentials:wms", None),
            ("EG-user-applications:u1", None),
            ("EG-tollgate-populate-lock", None),
            ("EGX-user:u1", None),
            ("rl:shared", None),
        ] {
            assert_eq!(l.entity_of(key).as_deref(), entity, "{key}");
        }
    }
}
