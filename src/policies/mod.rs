//! The policies a pipeline step can run, one file each, and the registry that builds a policy
//! from its name and `action` parameters.

pub mod auth_common;
pub mod basic_auth;
pub mod compression;
pub mod cors;
pub mod header_values;
pub mod headers;
pub mod jwt;
pub mod key_auth;
pub mod log;
pub mod metrics;
pub mod proxy;
pub mod rate_limit;
pub mod request_transformer;
pub mod response_transformer;
pub mod scopes;
pub mod terminate;

use std::collections::HashMap;
use std::sync::Arc;

use serde::de::DeserializeOwned;

use crate::config::error::{ConfigErrors, Pos};
use crate::config::node::Node;
use crate::consumers::cache::ConsumerCache;
use crate::counters::Counters;
use crate::pipeline::Policy;
use crate::upstream::ServiceEndpoint;

/// What building a policy may look at besides its own parameters.
pub struct BuildContext<'a> {
    pub service_endpoints: &'a HashMap<String, Arc<ServiceEndpoint>>,
    /// Rate-limit windows, shared by every step and kept across config reloads.
    pub counters: &'a Arc<Counters>,
    /// Where auth policies look consumers up.
    pub consumers: &'a Arc<ConsumerCache>,
    /// The shared store rate-limit windows live in (Redis), when there is one.
    pub shared_windows: Option<&'a Arc<dyn crate::store::Store>>,
    /// The config directories (key files are found in them, the last one first).
    pub config_dirs: &'a crate::config::ConfigDirs,
    /// Query parameters that carry credentials (kept out of cache keys).
    pub secret_query_params: &'a [String],
    /// Request headers that carry credentials (a cache fill sends none of them).
    pub secret_headers: &'a [http::HeaderName],
    /// The pass a `proxy` step to the Admin API's port sends its storage route.
    pub storage_pass: Option<&'a crate::admin::StoragePass>,
}

/// Policies tollgate provides.
pub const AVAILABLE: &[&str] = &[
    "proxy",
    "cors",
    "terminate",
    "headers",
    "rate-limit",
    "request-transformer",
    "response-transformer",
    "log",
    "key-auth",
    "jwt",
    "basic-auth",
    "scopes",
    "metrics",
    "cache",
    "compression",
];

/// EG policies tollgate does not provide, with the reason given to the user.
pub const UNSUPPORTED: &[(&str, &str)] = &[
    (
        "oauth2",
        "oauth2 is not supported by tollgate; use jwt or key-auth",
    ),
    (
        "oauth2-introspect",
        "oauth2-introspect is not supported by tollgate; use jwt",
    ),
    (
        "expression",
        "expression runs JavaScript, which tollgate does not; use conditions and transformers",
    ),
];

/// Builds one step's policy. `None` when something is wrong; the reasons are in `errors`.
pub fn build(
    name: &str,
    action: Option<&Node>,
    pos: &Pos,
    cx: &BuildContext<'_>,
    errors: &mut ConfigErrors,
) -> Option<Arc<dyn Policy>> {
    let policy: Arc<dyn Policy> = match name {
        "proxy" => Arc::new(proxy::Proxy::build(action, pos, cx, errors)?),
        "cors" => {
            let p: cors::Params = params(name, action, pos, errors)?;
            let status = p.options_success_status;
            final_status(name, "optionsSuccessStatus", status, action, pos, errors)?;
            Arc::new(cors::Cors::build(p, action, errors)?)
        }
        "terminate" => {
            let p: terminate::Params = params(name, action, pos, errors)?;
            final_status(name, "statusCode", p.status_code, action, pos, errors)?;
            Arc::new(terminate::Terminate::build(p))
        }
        "headers" => Arc::new(headers::Headers::build(
            params(name, action, pos, errors)?,
            action,
            errors,
        )?),
        "rate-limit" => Arc::new(rate_limit::RateLimit::build(
            params(name, action, pos, errors)?,
            action,
            pos,
            match cx.shared_windows {
                Some(store) => rate_limit::Windows::Shared(store.clone()),
                None => rate_limit::Windows::Memory(cx.counters.clone()),
            },
            errors,
        )?),
        "request-transformer" => Arc::new(request_transformer::RequestTransformer::build(
            action, pos, errors,
        )?),
        "response-transformer" => Arc::new(response_transformer::ResponseTransformer::build(
            action, pos, errors,
        )?),
        "log" => Arc::new(log::Log::build(
            params(name, action, pos, errors)?,
            crate::pipeline::expr::Secrets {
                params: cx.secret_query_params.to_vec(),
                headers: cx.secret_headers.to_vec(),
            },
            action,
            errors,
        )?),
        "key-auth" => {
            match key_auth::KeyAuth::build(params(name, action, pos, errors)?, cx.consumers) {
                Ok(p) => Arc::new(p),
                Err(why) => return built_error(name, why, pos, errors),
            }
        }
        "jwt" => match jwt::Jwt::build(
            params(name, action, pos, errors)?,
            cx.config_dirs,
            cx.consumers,
        ) {
            Ok(p) => Arc::new(p),
            Err(why) => {
                return built_error(name, why.clone(), jwt_error_pos(action, &why, pos), errors)
            }
        },
        "basic-auth" => Arc::new(basic_auth::BasicAuth::build(
            params(name, action, pos, errors)?,
            cx.consumers,
        )),
        "scopes" => Arc::new(scopes::Scopes),
        "metrics" => Arc::new(metrics::Metrics),
        "compression" => {
            match compression::Compression::build(params(name, action, pos, errors)?) {
                Ok(p) => Arc::new(p),
                Err(why) => return built_error(name, why, pos, errors),
            }
        }
        "cache" => match crate::cache::policy::Cache::build(
            params(name, action, pos, errors)?,
            cx.secret_query_params,
            cx.secret_headers,
        ) {
            Ok(p) => Arc::new(p),
            // Every one, each at its parameter.
            Err(problems) => {
                for (param, why) in problems {
                    let at = param_pos(action, param, pos);
                    errors.push(at, format!("policy `{name}`: {why}"));
                }
                return None;
            }
        },
        _ => {
            errors.push(pos, unknown_reason(name));
            return None;
        }
    };
    Some(policy)
}

fn built_error(
    name: &str,
    why: String,
    pos: &Pos,
    errors: &mut ConfigErrors,
) -> Option<Arc<dyn Policy>> {
    errors.push(pos, format!("policy `{name}`: {why}"));
    None
}

/// Where a `jwt` step's build error belongs: at the parameter it is about (the key, the key
/// file, the algorithms), else at the step.
fn jwt_error_pos<'a>(action: Option<&'a Node>, why: &str, step: &'a Pos) -> &'a Pos {
    let about = if why.contains("`secretOrPublicKeyFile`") {
        Some("secretOrPublicKeyFile")
    } else if why.contains("algorithm") {
        Some("algorithms")
    } else {
        ["secretOrPublicKeyFile", "secretOrPublicKey"]
            .into_iter()
            .find(|k| action.and_then(|a| a.get(k)).is_some())
    };
    about.map_or(step, |k| param_pos(action, k, step))
}

/// Why a policy name cannot be used.
pub fn unknown_reason(name: &str) -> String {
    if let Some((_, why)) = UNSUPPORTED.iter().find(|(n, _)| *n == name) {
        return format!("policy `{name}`: {why}");
    }
    format!(
        "unknown policy `{name}` (tollgate provides: {})",
        AVAILABLE.join(", ")
    )
}

/// Deserialises a step's `action` into the policy's parameters; a missing action gives the
/// defaults. A wrong type is reported at the offending value.
pub fn params<T: DeserializeOwned>(
    policy: &str,
    action: Option<&Node>,
    pos: &Pos,
    errors: &mut ConfigErrors,
) -> Option<T> {
    let json = action.map_or_else(|| serde_json::json!({}), Node::to_param_json);
    match coerced::<T>(json, policy) {
        Ok(p) => Some(p),
        Err(e) => {
            let at = action.map_or(pos, |a| &a.locate(e.path()).pos);
            let path = e.path().to_string();
            let field = if path == "." {
                String::new()
            } else {
                format!(" `{path}`")
            };
            errors.push(at, format!("policy `{policy}`{field}: {}", e.inner()));
            None
        }
    }
}

/// Reads a step's parameters as EG's schema check does (ajv with `coerceTypes`): a number or a
/// boolean written as a string (`statusCode: '401'`, `credentials: 'true'`, what a quoted
/// `'${VAR}'` gives) is taken as one, and a number or boolean where text is expected as its
/// text; `1` and `0` where a boolean is expected are `true` and `false`; a whole number
/// written as a float (`6e4`, `60000.0`) is a whole number; and null (a key left empty, an
/// unset `${VAR}`) is `false`, `0` or `''` — with a warning naming the parameter (`secure`
/// or `checkCredentialExistence` turned off so is silent in EG) — but in `headers`, which
/// EG's schema does not type (an empty header was sent). Anything else that does not fit is
/// the error it was; so is a boolean where the proxy step asks for a number (`1`, `0` elsewhere,
/// as EG's schema coerces it): the proxy's timeouts are http-proxy's, untyped by EG's schema,
/// and `proxyTimeout: true` was a timeout of 1 ms.
pub fn coerced<T: DeserializeOwned>(
    mut json: serde_json::Value,
    policy: &str,
) -> Result<T, serde_path_to_error::Error<serde_json::Error>> {
    loop {
        let e = match serde_path_to_error::deserialize::<_, T>(json.clone()) {
            Ok(p) => return Ok(p),
            Err(e) => e,
        };
        let message = e.inner().to_string();
        let untyped = policy == "proxy";
        if !message.starts_with("invalid type")
            || !coerce_at(&mut json, e.path(), &message, untyped)
        {
            return Err(e);
        }
        if message.starts_with("invalid type: null") {
            let zero = if message.contains("expected a boolean") {
                "false"
            } else if message.contains("expected a string") {
                "''"
            } else {
                "0"
            };
            ::log::warn!(
                "policy `{policy}` `{}`: null (a key left empty, or an unset variable) is read as {zero}, as EG reads it",
                e.path()
            );
        }
    }
}

/// Coerces the value at `path` as `message` (serde's "invalid type: …, expected …") asks.
fn coerce_at(
    json: &mut serde_json::Value,
    path: &serde_path_to_error::Path,
    message: &str,
    untyped: bool,
) -> bool {
    use serde_json::Value;
    let mut v = json;
    for seg in path.iter() {
        let next = match seg {
            serde_path_to_error::Segment::Map { key } => v.get_mut(key.as_str()),
            serde_path_to_error::Segment::Seq { index } => v.get_mut(*index),
            _ => None,
        };
        match next {
            Some(n) => v = n,
            None => return false,
        }
    }
    let wants_text = message.contains("expected a string");
    let wants_bool = message.contains("expected a boolean");
    // (serde names the numeric types: `u64`, `i32`, `f64`...)
    let wants_number = ["expected u", "expected i", "expected f"]
        .iter()
        .any(|w| message.contains(w));
    let in_headers = path
        .iter()
        .any(|s| matches!(s, serde_path_to_error::Segment::Map { key } if key == "headers"));
    let new = match &*v {
        Value::Null if wants_text && !in_headers => Some(Value::String(String::new())),
        Value::Null if wants_bool => Some(Value::Bool(false)),
        Value::Null if wants_number => Some(Value::from(0)),
        // (Not the proxy's: its timeouts are http-proxy's, which EG's schema does not type;
        // `proxyTimeout: true` was a timeout of 1 ms.)
        Value::Bool(b) if wants_number && !untyped => Some(Value::from(u8::from(*b))),
        Value::Number(n) if wants_bool => match n.as_f64() {
            Some(1.0) => Some(Value::Bool(true)),
            Some(0.0) => Some(Value::Bool(false)),
            _ => None,
        },
        Value::Number(n) if wants_number && !n.is_i64() && !n.is_u64() => n
            .as_f64()
            .filter(|f| f.fract() == 0.0 && f.abs() < 9.0e15)
            .map(|f| Value::from(f as i64)),
        Value::String(s) if !wants_text => {
            let t = s.trim();
            if message.contains("boolean") {
                match t {
                    "true" => Some(Value::Bool(true)),
                    "false" => Some(Value::Bool(false)),
                    _ => None,
                }
            } else if let Ok(i) = t.parse::<i64>() {
                Some(Value::from(i))
            } else {
                t.parse::<f64>()
                    .ok()
                    .and_then(serde_json::Number::from_f64)
                    .map(Value::Number)
            }
        }
        Value::Number(n) if wants_text => Some(Value::String(n.to_string())),
        Value::Bool(b) if wants_text => Some(Value::String(b.to_string())),
        _ => None,
    };
    match new {
        Some(n) => {
            *v = n;
            true
        }
        None => false,
    }
}

/// A status the gateway answers with (the step's parameter `param`) must be a final one
/// (200–599): an informational status would leave the client waiting for the answer after it.
pub fn final_status(
    name: &str,
    param: &str,
    status: u16,
    action: Option<&Node>,
    pos: &Pos,
    errors: &mut ConfigErrors,
) -> Option<()> {
    if (200..=599).contains(&status) {
        return Some(());
    }
    errors.push(
        param_pos(action, param, pos),
        format!("policy `{name}`: `{param}` {status} is not a final HTTP status (200–599)"),
    );
    None
}

/// The position of a parameter of an action, or the step's own when absent.
pub fn param_pos<'a>(action: Option<&'a Node>, key: &str, fallback: &'a Pos) -> &'a Pos {
    action.and_then(|a| a.get(key)).map_or(fallback, |n| &n.pos)
}
