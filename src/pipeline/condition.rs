//! EG's step conditions: `always`, `never`, `allOf`, `oneOf`, `not`, `pathExact`, `pathMatch`,
//! `method`, `hostMatch`, `authenticated`, `anonymous`. Compiled once per config.

use http::Method;
use regex::Regex;

use super::context::{Exchange, Request};
use crate::config::error::ConfigErrors;
use crate::config::node::{Node, Value};

pub enum Condition {
    Always,
    Never,
    AllOf(Vec<Condition>),
    OneOf(Vec<Condition>),
    Not(Box<Condition>),
    /// Equals the URL with its query.
    PathExact(String),
    /// Unanchored regex on the URL with its query.
    PathMatch(Regex),
    Method(Vec<Method>),
    /// Glob on the raw Host header (port included), as minimatch reads it.
    HostMatch(super::glob::Glob),
    Authenticated,
    Anonymous,
}

impl Condition {
    pub fn eval(&self, req: &Request<'_>, x: &Exchange) -> bool {
        match self {
            Condition::Always => true,
            Condition::Never => false,
            Condition::AllOf(list) => list.iter().all(|c| c.eval(req, x)),
            Condition::OneOf(list) => list.iter().any(|c| c.eval(req, x)),
            Condition::Not(c) => !c.eval(req, x),
            Condition::PathExact(p) => req.url == p,
            Condition::PathMatch(re) => re.is_match(req.url),
            Condition::Method(methods) => methods.iter().any(|m| m == req.method),
            // No Host, or an empty one: no match, negated pattern or not (EG's handler).
            Condition::HostMatch(glob) => req
                .host
                .filter(|h| !h.is_empty())
                .is_some_and(|h| glob.is_match(h)),
            Condition::Authenticated => x.consumer.is_some(),
            Condition::Anonymous => x.consumer.is_none(),
        }
    }

    /// Builds a condition from `{name: ..., ...params}`; problems go to `errors`.
    pub fn from_node(node: &Node, errors: &mut ConfigErrors) -> Option<Condition> {
        let name_pos = node.get("name").map_or(&node.pos, |n| &n.pos);
        let Some(name) = node.get("name").and_then(Node::as_str) else {
            errors.push(&node.pos, "a condition needs a `name` (always, never, allOf, oneOf, not, pathExact, pathMatch, method, hostMatch, authenticated, anonymous)");
            return None;
        };
        let param = |key: &str, errors: &mut ConfigErrors| -> Option<&Node> {
            let n = node.get(key);
            if n.is_none() {
                errors.push(&node.pos, format!("condition `{name}` needs `{key}`"));
            }
            n
        };
        let text_param = |key: &str, errors: &mut ConfigErrors| -> Option<String> {
            let n = param(key, errors)?;
            match n.as_str() {
                Some(s) => Some(s.to_string()),
                None => {
                    errors.push(
                        &n.pos,
                        format!(
                            "`{key}` of condition `{name}` must be a string, not {}",
                            n.kind()
                        ),
                    );
                    None
                }
            }
        };
        let list_param = |key: &str, errors: &mut ConfigErrors| -> Option<Vec<Condition>> {
            let n = param(key, errors)?;
            match n.as_seq() {
                Some(items) => Some(
                    items
                        .iter()
                        .filter_map(|c| Condition::from_node(c, errors))
                        .collect(),
                ),
                None => {
                    errors.push(
                        &n.pos,
                        format!(
                            "`{key}` of condition `{name}` must be a list of conditions, not {}",
                            n.kind()
                        ),
                    );
                    None
                }
            }
        };
        match name {
            "always" => Some(Condition::Always),
            "never" => Some(Condition::Never),
            "authenticated" => Some(Condition::Authenticated),
            "anonymous" => Some(Condition::Anonymous),
            "allOf" => list_param("conditions", errors).map(Condition::AllOf),
            "oneOf" => list_param("conditions", errors).map(Condition::OneOf),
            "not" => {
                let inner = param("condition", errors)?;
                Condition::from_node(inner, errors).map(|c| Condition::Not(Box::new(c)))
            }
            "pathExact" => text_param("path", errors).map(Condition::PathExact),
            "pathMatch" => {
                let pattern = text_param("pattern", errors)?;
                match Regex::new(&pattern) {
                    Ok(re) => Some(Condition::PathMatch(re)),
                    Err(e) => {
                        let pos = node.get("pattern").map_or(&node.pos, |n| &n.pos);
                        errors.push(
                            pos,
                            format!("bad regex in pathMatch: {}", short_reason(&e.to_string())),
                        );
                        None
                    }
                }
            }
            "hostMatch" => {
                let pattern = text_param("pattern", errors)?;
                match super::glob::Glob::new(&pattern) {
                    Ok(glob) => Some(Condition::HostMatch(glob)),
                    Err(why) => {
                        errors.push(name_pos, format!("bad hostMatch pattern: {why}"));
                        None
                    }
                }
            }
            "method" => {
                let n = param("methods", errors)?;
                let names: Vec<&Node> = match &n.value {
                    Value::Seq(items) => items.iter().collect(),
                    _ => vec![n],
                };
                let mut methods = Vec::new();
                for m in names {
                    match m
                        .as_str()
                        .map(|s| Method::from_bytes(s.to_ascii_uppercase().as_bytes()))
                    {
                        Some(Ok(method)) => methods.push(method),
                        _ => errors.push(
                            &m.pos,
                            "`methods` of condition `method` must be method names",
                        ),
                    }
                }
                Some(Condition::Method(methods))
            }
            "expression" | "json-schema" => {
                errors.push(
                    name_pos,
                    format!("condition `{name}` is not supported by tollgate (it would run JavaScript or parse bodies); use pathMatch, method, hostMatch or allOf/oneOf/not instead"),
                );
                None
            }
            other => {
                errors.push(name_pos, format!("unknown condition `{other}`"));
                None
            }
        }
    }
}

/// The telling line of a multi-line error message (regex errors end with it).
pub(crate) fn short_reason(s: &str) -> String {
    let line = s
        .lines()
        .rfind(|l| !l.trim().is_empty())
        .unwrap_or(s)
        .trim();
    line.strip_prefix("error: ").unwrap_or(line).to_string()
}
