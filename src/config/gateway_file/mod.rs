//! `gateway.config.yml` (or `.json`) read into typed definitions that keep the position of
//! every name, so that cross-references can be checked and reported precisely later.

use super::error::{ConfigErrors, Pos};
use super::node::{Node, Value};
use super::ConfigDirs;

mod entries;
mod listeners;

use entries::{api_endpoint, pipeline, service_endpoint};
use listeners::{https, listener, same_port_twice};

/// A plain listener (`http`, `admin`).
#[derive(Clone, Debug)]
pub struct ListenerDef {
    pub host: Option<String>,
    pub port: u16,
}

/// One certificate of the `https.tls` section, selected by a host glob (or `default`).
#[derive(Clone, Debug)]
pub struct TlsCertDef {
    pub host_glob: String,
    pub key: String,
    pub cert: String,
    pub pos: Pos,
}

#[derive(Clone, Debug)]
pub struct HttpsDef {
    pub listener: ListenerDef,
    pub certs: Vec<TlsCertDef>,
}

/// One entry of an apiEndpoint (an apiEndpoint may be a list of them).
#[derive(Clone, Debug)]
pub struct EndpointDef {
    pub pos: Pos,
    pub host: Option<String>,
    pub host_regex: Option<(String, Pos)>,
    pub paths: Vec<(String, Pos)>,
    pub path_regex: Option<(String, Pos)>,
    /// Upper-cased; `None` means every method.
    pub methods: Option<Vec<String>>,
    pub scopes: Vec<String>,
}

#[derive(Clone, Debug)]
pub struct ApiEndpointDef {
    pub name: String,
    pub pos: Pos,
    pub entries: Vec<EndpointDef>,
}

#[derive(Clone, Debug)]
pub struct ServiceEndpointDef {
    pub name: String,
    pub pos: Pos,
    pub urls: Vec<(String, Pos)>,
    pub proxy_options: Option<Node>,
    /// tollgate's own settings (balancing, health checks, retries), which EG configs omit.
    pub tollgate: Option<Node>,
}

/// One `{condition?, action?}` step of a policy in a pipeline.
#[derive(Clone, Debug)]
pub struct StepDef {
    pub policy: String,
    pub pos: Pos,
    pub condition: Option<Node>,
    pub action: Option<Node>,
}

#[derive(Clone, Debug)]
pub struct PipelineDef {
    pub name: String,
    pub pos: Pos,
    pub api_endpoints: Vec<(String, Pos)>,
    pub steps: Vec<StepDef>,
}

#[derive(Clone, Debug)]
pub struct GatewayFile {
    pub http: Option<ListenerDef>,
    pub https: Option<HttpsDef>,
    pub admin: Option<ListenerDef>,
    pub api_endpoints: Vec<ApiEndpointDef>,
    pub service_endpoints: Vec<ServiceEndpointDef>,
    pub policies: Vec<(String, Pos)>,
    pub pipelines: Vec<PipelineDef>,
    /// The whole file as JSON (after interpolation), for the Admin API.
    pub raw: serde_json::Value,
}

/// Default Admin API port, as EG's.
pub const DEFAULT_ADMIN_PORT: u16 = 9876;

/// The sections of a gateway config.
const SECTIONS: [&str; 8] = [
    "http",
    "https",
    "admin",
    "apiEndpoints",
    "serviceEndpoints",
    "policies",
    "pipelines",
    "pipeline",
];

/// Says where the file has a key that is no section (EG ignores it, and so does tollgate): a
/// misspelt `piplines` left every route without its pipeline, and nothing said why.
fn unknown_sections(root: &Node) {
    ignored_keys(root, &SECTIONS, "section of the gateway config");
}

/// Says where a map has a key that is none of `known` (EG ignores it, and so does tollgate),
/// with the one it looks like: a misspelt `scope:` left an api endpoint without its scopes (the
/// `scopes` step then let every consumer through), a `conditon:` ran its step for every
/// request, and nothing said why. `what` names what the keys are of.
pub(super) fn ignored_keys(node: &Node, known: &[&str], what: &str) {
    for (key, _) in node.as_map().unwrap_or_default() {
        let Some(name) = key.as_str() else { continue };
        if known.contains(&name) {
            continue;
        }
        let like = known
            .iter()
            .find(|s| one_edit_apart(s, name))
            .map_or(String::new(), |s| format!(" (`{s}`?)"));
        log::warn!("{}: `{name}` is no {what} and is ignored{like}", key.pos);
    }
}

/// Whether `a` and `b` differ by one edit at most (a letter left out, added, changed, or two
/// neighbours swapped), case aside: a misspelling.
fn one_edit_apart(a: &str, b: &str) -> bool {
    let (a, b) = (a.to_ascii_lowercase(), b.to_ascii_lowercase());
    let (short, long) = if a.len() <= b.len() {
        (a.as_bytes(), b.as_bytes())
    } else {
        (b.as_bytes(), a.as_bytes())
    };
    if long.len() - short.len() > 1 {
        return false;
    }
    let i = short.iter().zip(long).take_while(|(x, y)| x == y).count();
    if i == short.len() {
        return true;
    }
    if short.len() < long.len() {
        return short[i..] == long[i + 1..];
    }
    short[i + 1..] == long[i + 1..]
        || (i + 1 < short.len()
            && short[i] == long[i + 1]
            && short[i + 1] == long[i]
            && short[i + 2..] == long[i + 2..])
}

impl GatewayFile {
    /// The gateway file `root` of the config directories `dirs` (relative certificate and key
    /// paths are looked for in them).
    pub fn from_node(root: &Node, dirs: &ConfigDirs, errors: &mut ConfigErrors) -> GatewayFile {
        if root.is_null() {
            // Nothing in the file (a save caught half-way, truncated before it is written):
            // EG refuses it too (`data should be object`).
            errors.push(
                &root.pos,
                "the gateway config is empty: it must be a map (http, apiEndpoints, pipelines…)",
            );
        } else if root.as_map().is_none() {
            errors.push(
                &root.pos,
                format!("the gateway config must be a map, not {}", root.kind()),
            );
        }
        let found_before = errors.len();
        let http = root
            .get("http")
            .and_then(|n| listener(n, "http", None, errors));
        let https = root.get("https").and_then(|n| https(n, dirs, errors));
        // (Not when a listener's own error said why: a port that is none.)
        let listeners_said = errors.len() > found_before;
        let mut file = GatewayFile {
            http,
            https,
            admin: root
                .get("admin")
                .and_then(|n| listener(n, "admin", Some(DEFAULT_ADMIN_PORT), errors)),
            api_endpoints: Vec::new(),
            service_endpoints: Vec::new(),
            policies: Vec::new(),
            pipelines: Vec::new(),
            raw: normalized_json(root),
        };
        if file.http.is_none() && file.https.is_none() && root.as_map().is_some() && !listeners_said
        {
            // (`serve` would refuse it; `check` and a reload say so, where the file says it.)
            let (at, why) = match root.get("http").or_else(|| root.get("https")) {
                Some(n) => (
                    n.get("port").unwrap_or(n).pos.clone(),
                    "no port (an unset variable?): the gateway would listen nowhere",
                ),
                None => (
                    root.pos.clone(),
                    "no `http` or `https` section: the gateway would listen nowhere",
                ),
            };
            errors.push(&at, why);
        }
        same_port_twice(root, &file, errors);
        unknown_sections(root);
        if let Some(n) = root.get("apiEndpoints") {
            for (key, value) in map_entries(n, "apiEndpoints", errors) {
                file.api_endpoints.push(api_endpoint(key, value, errors));
            }
        }
        if let Some(n) = root.get("serviceEndpoints") {
            for (key, value) in map_entries(n, "serviceEndpoints", errors) {
                if let Some(se) = service_endpoint(key, value, errors) {
                    file.service_endpoints.push(se);
                }
            }
        }
        if let Some(n) = root.get("policies") {
            file.policies = string_list(n, "policies", errors);
        }
        if let Some(n) = root.get("pipelines").or_else(|| root.get("pipeline")) {
            // EG's schema allows a list too: its pipelines are named by their place.
            let listed: Vec<(Node, Node)>;
            let entries = match &n.value {
                Value::Seq(items) => {
                    listed = items
                        .iter()
                        .enumerate()
                        .map(|(i, item)| {
                            let key = Node {
                                pos: item.pos.clone(),
                                value: Value::Str(i.to_string()),
                            };
                            (key, item.clone())
                        })
                        .collect();
                    &listed[..]
                }
                _ => map_entries(n, "pipelines", errors),
            };
            for (key, value) in entries {
                if let Some(p) = pipeline(key, value, errors) {
                    file.pipelines.push(p);
                }
            }
        }
        file
    }
}

/// The file as JSON, with pipelines normalized as EG's Admin API shows them: `apiEndpoints`
/// and `policies` always lists (also when written with the singular `apiEndpoint` / `policy`).
fn normalized_json(root: &Node) -> serde_json::Value {
    use serde_json::Value as J;
    let mut json = root.to_json();
    let wrap = |v: J| if v.is_array() { v } else { J::Array(vec![v]) };
    if let Some(pipelines) = json.get_mut("pipelines").and_then(J::as_object_mut) {
        for p in pipelines.values_mut() {
            let Some(obj) = p.as_object_mut() else {
                continue;
            };
            for (plural, singular) in [("apiEndpoints", "apiEndpoint"), ("policies", "policy")] {
                let value = obj.get(plural).or_else(|| obj.get(singular)).cloned();
                if let Some(v) = value {
                    obj.insert(plural.to_string(), wrap(v));
                }
            }
        }
    }
    json
}

fn name_of(key: &Node, errors: &mut ConfigErrors) -> String {
    key.scalar_text().unwrap_or_else(|| {
        errors.push(&key.pos, "a name must be a plain string");
        String::new()
    })
}

/// The entries of a map node; null is an empty map, anything else is an error.
fn map_entries<'a>(node: &'a Node, what: &str, errors: &mut ConfigErrors) -> &'a [(Node, Node)] {
    match &node.value {
        Value::Map(entries) => entries,
        Value::Null => &[],
        _ => {
            errors.push(
                &node.pos,
                format!("`{what}` must be a map, not {}", node.kind()),
            );
            &[]
        }
    }
}

/// A list of strings, also accepting one string (and, for `methods`, a comma-joined string).
fn string_list(node: &Node, what: &str, errors: &mut ConfigErrors) -> Vec<(String, Pos)> {
    match &node.value {
        Value::Null => Vec::new(),
        Value::Str(s) => vec![(s.clone(), node.pos.clone())],
        Value::Seq(items) => items
            .iter()
            .filter_map(|item| match item.scalar_text() {
                Some(s) if !item.is_null() => Some((s, item.pos.clone())),
                _ => {
                    errors.push(
                        &item.pos,
                        format!("`{what}` must hold strings, not {}", item.kind()),
                    );
                    None
                }
            })
            .collect(),
        _ => {
            errors.push(
                &node.pos,
                format!(
                    "`{what}` must be a string or a list of strings, not {}",
                    node.kind()
                ),
            );
            Vec::new()
        }
    }
}

fn optional_string(parent: &Node, key: &str, errors: &mut ConfigErrors) -> Option<(String, Pos)> {
    let n = parent.get(key)?;
    match &n.value {
        Value::Null => None,
        Value::Str(s) => Some((s.clone(), n.pos.clone())),
        Value::Int(_) | Value::Float(_) | Value::Bool(_) => {
            n.scalar_text().map(|s| (s, n.pos.clone()))
        }
        _ => {
            errors.push(
                &n.pos,
                format!("`{key}` must be a string, not {}", n.kind()),
            );
            None
        }
    }
}
