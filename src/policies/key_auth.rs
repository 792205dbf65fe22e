//! `key-auth`: `keyId:keySecret` from a header (with a scheme, `apiKey` by default) or a query
//! parameter, checked against the consumer cache. A credential lacking an endpoint scope is a
//! 403, any other failure a 401.

use std::sync::Arc;

use serde::Deserialize;

use super::auth_common::{fail, query_param, succeed};
use crate::consumers::cache::{ConsumerCache, KeyAuthResult};
use crate::pipeline::{Exchange, Outcome, Policy, Request};

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Params {
    #[serde(default = "default_header")]
    api_key_header: String,
    #[serde(default = "default_scheme")]
    api_key_header_scheme: String,
    #[serde(default = "default_field")]
    api_key_field: String,
    #[serde(default)]
    disable_headers: bool,
    #[serde(default)]
    disable_headers_scheme: bool,
    #[serde(default)]
    disable_query_param: bool,
    #[serde(default)]
    pass_through: bool,
}

fn default_header() -> String {
    "Authorization".into()
}
fn default_scheme() -> String {
    "apiKey".into()
}
fn default_field() -> String {
    "apiKey".into()
}

pub struct KeyAuth {
    p: Params,
    header: http::header::HeaderName,
    cache: Arc<ConsumerCache>,
}

impl KeyAuth {
    pub fn build(p: Params, cache: &Arc<ConsumerCache>) -> Result<KeyAuth, String> {
        let header =
            http::header::HeaderName::from_bytes(p.api_key_header.to_ascii_lowercase().as_bytes())
                .map_err(|_| format!("`{}` is not a valid header name", p.api_key_header))?;
        Ok(KeyAuth {
            p,
            header,
            cache: cache.clone(),
        })
    }

    /// The presented key, from the header when it has one, else from the query.
    fn key(&self, req: &Request<'_>) -> Option<String> {
        if !self.p.disable_headers {
            if let Some(value) = req.headers.get(&self.header).and_then(|v| v.to_str().ok()) {
                let parts: Vec<&str> = value.split(' ').collect();
                let scheme_ok = self.p.disable_headers_scheme
                    || (parts.len() > 1
                        && parts[0].eq_ignore_ascii_case(&self.p.api_key_header_scheme));
                if scheme_ok {
                    if let Some(last) = parts.last().filter(|k| !k.is_empty()) {
                        return Some((*last).to_string());
                    }
                }
            }
        }
        if self.p.disable_query_param {
            return None;
        }
        query_param(req.query, &self.p.api_key_field)
    }
}

impl Policy for KeyAuth {
    fn on_request(&self, req: &Request<'_>, x: &mut Exchange) -> Outcome {
        let Some(key) = self.key(req) else {
            return fail(x, self.p.pass_through, 401);
        };
        let mut parts = key.split(':');
        let (Some(key_id), Some(secret)) = (parts.next(), parts.next()) else {
            return fail(x, self.p.pass_through, 401);
        };
        if key_id.is_empty() {
            return fail(x, self.p.pass_through, 401);
        }
        match self.cache.key_auth(key_id, secret, &req.endpoint.scopes) {
            KeyAuthResult::Ok(consumer) => succeed(x, consumer),
            KeyAuthResult::Forbidden => fail(x, self.p.pass_through, 403),
            KeyAuthResult::Unauthorized => fail(x, self.p.pass_through, 401),
        }
    }
}
