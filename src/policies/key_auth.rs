//! `key-auth`: `keyId:keySecret` from a header (with a scheme, `apiKey` by default) or a query
//! parameter, checked against the consumer cache. A credential lacking an endpoint scope is a
//! 403, any other failure a 401.

use std::sync::Arc;

use serde::Deserialize;

use super::auth_common::{fail, query_param, store_silent, store_unread, succeed};
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
            // A header sent on several lines reads as Node (EG) gives it: the first line of one
            // it keeps the first of (`Authorization`), else the lines joined with `, ` (whose
            // last word is the key: the last line's).
            let mut lines = req.headers.get_all(&self.header).iter();
            let joined: Option<String>;
            let value = match (lines.next(), lines.next()) {
                (Some(first), Some(second)) if !crate::wire::node_keeps_first(&self.header) => {
                    let all = [first, second].into_iter().chain(lines);
                    joined = all
                        .map(|v| v.to_str().ok())
                        .collect::<Option<Vec<_>>>()
                        .map(|v| v.join(", "));
                    joined.as_deref()
                }
                (first, _) => first.and_then(|v| v.to_str().ok()),
            };
            if let Some(value) = value {
                // As EG's strategy reads it: the last word is the key (the scheme alone is a
                // key too, which no credential has).
                let parts: Vec<&str> = value.split(' ').collect();
                let scheme_ok = self.p.disable_headers_scheme
                    || parts[0].eq_ignore_ascii_case(&self.p.api_key_header_scheme);
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
        query_param(req.query, &self.p.api_key_field).map(|k| k.into_owned())
    }
}

impl Policy for KeyAuth {
    fn on_request(&self, req: &Request<'_>, x: &mut Exchange) -> Outcome {
        let Some(key) = self.key(req) else {
            return fail(x, self.p.pass_through, 401, "key-auth: no key");
        };
        let mut parts = key.split(':');
        let (Some(key_id), Some(secret)) = (parts.next(), parts.next()) else {
            return fail(x, self.p.pass_through, 401, "key-auth: not keyId:keySecret");
        };
        // As EG's credential check: an empty id or secret never authenticates (`keyId:` is
        // not a key whose secret is empty).
        if key_id.is_empty() || secret.is_empty() {
            return fail(
                x,
                self.p.pass_through,
                401,
                "key-auth: empty keyId or keySecret",
            );
        }
        match self.cache.key_auth(key_id, secret, &req.endpoint.scopes) {
            KeyAuthResult::Unknown(_) | KeyAuthResult::Unauthorized if !self.cache.is_loaded() => {
                store_unread(x, self.p.pass_through, "key-auth: unknown key")
            }
            KeyAuthResult::Unknown(None) if !self.cache.store_answers() => {
                store_silent(x, self.p.pass_through, "key-auth: unknown key")
            }
            // A key no credential has is looked up in the store (one another gateway, or
            // EG, created a moment ago works on its first request); answered once it was.
            KeyAuthResult::Unknown(Some(lookup)) => {
                let (cache, pass_through) = (self.cache.clone(), self.p.pass_through);
                let (id, secret) = (key_id.to_string(), secret.to_string());
                let scopes = req.endpoint.scopes.clone();
                Outcome::Defer(Box::pin(async move {
                    let silent = lookup.done(&cache).await;
                    Box::new(move |x: &mut Exchange| {
                        match cache.key_auth_looked_up(&id, &secret, &scopes) {
                            KeyAuthResult::Unknown(_) if silent || !cache.store_answers() => {
                                store_silent(x, pass_through, "key-auth: unknown key")
                            }
                            found => answer(x, found, pass_through),
                        }
                    }) as crate::pipeline::context::Finish
                }))
            }
            found => answer(x, found, self.p.pass_through),
        }
    }
}

/// The step's answer for what the consumer cache found for the key.
fn answer(x: &mut Exchange, found: KeyAuthResult, pass_through: bool) -> Outcome {
    match found {
        KeyAuthResult::Ok(consumer) => succeed(x, consumer),
        KeyAuthResult::Forbidden => fail(x, pass_through, 403, "key-auth: the key lacks a scope"),
        KeyAuthResult::Unknown(_) | KeyAuthResult::Unauthorized => fail(
            x,
            pass_through,
            401,
            "key-auth: unknown key, wrong secret or inactive",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consumers::layout::Layout;
    use crate::pipeline::context::testing::OwnedRequest;
    use crate::store::{embedded::EmbeddedStore, Store, Write};

    fn cache() -> Arc<ConsumerCache> {
        let store: Arc<dyn Store> = Arc::new(EmbeddedStore::in_memory());
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("rt");
        rt.block_on(store.apply(&[
            Write::HSet {
                key: "EG-application:app".into(),
                fields: vec![
                    ("isActive".into(), "true".into()),
                    ("id".into(), "app".into()),
                ],
            },
            Write::HSet {
                key: "EG-key-auth:k".into(),
                fields: vec![
                    ("isActive".into(), "true".into()),
                    ("keySecret".into(), "s".into()),
                    ("consumerId".into(), "app".into()),
                    ("scopes".into(), r#"["wms"]"#.into()),
                ],
            },
        ]))
        .expect("fill");
        let cache = Arc::new(ConsumerCache::new(store, Layout::new("EG")));
        rt.block_on(cache.load()).expect("load");
        cache
    }

    fn outcome(
        params: serde_json::Value,
        r: &OwnedRequest,
        cache: &Arc<ConsumerCache>,
    ) -> (Option<u16>, bool) {
        let p =
            KeyAuth::build(serde_json::from_value(params).expect("params"), cache).expect("builds");
        let mut x = Exchange::default();
        match p.on_request(&r.req(), &mut x) {
            Outcome::Respond(reply) => (Some(reply.status), false),
            _ => (None, x.consumer.is_some()),
        }
    }

    /// A header sent on several lines is read as Node gives it to EG: a custom one's lines
    /// joined (the last line's key counts), `Authorization`'s first line.
    #[test]
    fn a_header_on_several_lines_is_read_as_eg_reads_it() {
        let c = cache();
        let custom = serde_json::json!({"apiKeyHeader": "X-Api-Key", "apiKeyHeaderScheme": "MyScheme", "disableQueryParam": true});
        let lines = |lines: &[&str]| {
            let headers: Vec<(&str, &str)> = lines.iter().map(|l| ("x-api-key", *l)).collect();
            outcome(custom.clone(), &OwnedRequest::get("/x", &headers, &[]), &c)
        };
        assert_eq!(lines(&["MyScheme k:s"]), (None, true));
        assert_eq!(
            lines(&["MyScheme k:s", "MyScheme bad:bad"]),
            (Some(401), false)
        );
        assert_eq!(lines(&["MyScheme bad:bad", "MyScheme k:s"]), (None, true));
        assert_eq!(lines(&["MyScheme k:s", ""]), (Some(401), false));
        let authorization = |lines: &[&str]| {
            let headers: Vec<(&str, &str)> = lines.iter().map(|l| ("authorization", *l)).collect();
            let r = OwnedRequest::get("/x", &headers, &[]);
            outcome(serde_json::json!({}), &r, &c)
        };
        assert_eq!(
            authorization(&["apiKey k:s", "apiKey bad:bad"]),
            (None, true)
        );
        assert_eq!(
            authorization(&["apiKey bad:bad", "apiKey k:s"]),
            (Some(401), false)
        );
    }

    #[test]
    fn header_variants_query_and_scopes() {
        let c = cache();
        let none = serde_json::json!({});
        assert_eq!(
            outcome(
                none.clone(),
                &OwnedRequest::get("/x", &[("authorization", "apiKey k:s")], &["wms"]),
                &c
            ),
            (None, true)
        );
        assert_eq!(
            outcome(
                none.clone(),
                &OwnedRequest::get("/x?apiKey=k:s", &[], &[]),
                &c
            ),
            (None, true)
        );
        assert_eq!(
            outcome(
                none.clone(),
                &OwnedRequest::get("/x", &[("authorization", "apiKey k:s")], &["k2"]),
                &c
            ),
            (Some(403), false)
        );
        let custom = serde_json::json!({"apiKeyHeader": "X-Api-Key", "disableHeadersScheme": true, "disableQueryParam": true});
        assert_eq!(
            outcome(
                custom.clone(),
                &OwnedRequest::get("/x", &[("x-api-key", "k:s")], &[]),
                &c
            ),
            (None, true)
        );
        assert_eq!(
            outcome(
                custom.clone(),
                &OwnedRequest::get("/x?apiKey=k:s", &[], &[]),
                &c
            ),
            (Some(401), false)
        );
        let field = serde_json::json!({"apiKeyField": "key", "disableHeaders": true});
        assert_eq!(
            outcome(
                field.clone(),
                &OwnedRequest::get("/x?key=k%3As", &[], &[]),
                &c
            ),
            (None, true)
        );
        assert_eq!(
            outcome(
                field,
                &OwnedRequest::get("/x", &[("authorization", "apiKey k:s")], &[]),
                &c
            ),
            (Some(401), false)
        );
        let pass = serde_json::json!({"passThrough": true});
        assert_eq!(
            outcome(
                pass,
                &OwnedRequest::get("/x", &[("authorization", "apiKey k:bad")], &[]),
                &c
            ),
            (None, false)
        );
    }
}
