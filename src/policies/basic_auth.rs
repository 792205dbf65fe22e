//! `basic-auth`: `Authorization: Basic base64(user-id:password)`, where the user id is an app
//! id, a user id or a username; the password is checked against the consumer's bcrypt-hashed
//! basic-auth credential (once per password, then remembered). Every failure, a missing scope
//! included, is a 401.

use std::sync::Arc;

use base64::Engine;
use serde::Deserialize;

use super::auth_common::{fail, succeed};
use crate::consumers::cache::ConsumerCache;
use crate::pipeline::{Exchange, Outcome, Policy, Request};

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Params {
    #[serde(default)]
    pass_through: bool,
}

pub struct BasicAuth {
    pass_through: bool,
    cache: Arc<ConsumerCache>,
}

impl BasicAuth {
    pub fn build(p: Params, cache: &Arc<ConsumerCache>) -> BasicAuth {
        BasicAuth {
            pass_through: p.pass_through,
            cache: cache.clone(),
        }
    }
}

/// `(user id, password)` from an `Authorization: Basic ...` header.
fn credentials(req: &Request<'_>) -> Option<(String, String)> {
    let value = req.header("authorization")?;
    let (scheme, encoded) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    (!user.is_empty() && !password.is_empty()).then(|| (user.to_string(), password.to_string()))
}

impl Policy for BasicAuth {
    fn on_request(&self, req: &Request<'_>, x: &mut Exchange) -> Outcome {
        let Some((user, password)) = credentials(req) else {
            return fail(x, self.pass_through, 401);
        };
        match self.cache.basic(&user, &password, &req.endpoint.scopes) {
            Some(consumer) => succeed(x, consumer),
            None => fail(x, self.pass_through, 401),
        }
    }
}
