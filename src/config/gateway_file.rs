//! `gateway.config.yml` (or `.json`) read into typed definitions that keep the position of
//! every name, so that cross-references can be checked and reported precisely later.

use super::error::{ConfigErrors, Pos};
use super::node::{Node, Value};

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
    for (key, _) in root.as_map().unwrap_or_default() {
        let Some(name) = key.as_str() else { continue };
        if SECTIONS.contains(&name) {
            continue;
        }
        let like = SECTIONS
            .iter()
            .find(|s| one_edit_apart(s, name))
            .map_or(String::new(), |s| format!(" (`{s}`?)"));
        log::warn!(
            "{}: `{name}` is no section of the gateway config and is ignored{like}",
            key.pos
        );
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
    pub fn from_node(root: &Node, errors: &mut ConfigErrors) -> GatewayFile {
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
        let mut file = GatewayFile {
            http: root
                .get("http")
                .and_then(|n| listener(n, "http", None, errors)),
            https: root.get("https").and_then(|n| https(n, errors)),
            admin: root
                .get("admin")
                .and_then(|n| listener(n, "admin", Some(DEFAULT_ADMIN_PORT), errors)),
            api_endpoints: Vec::new(),
            service_endpoints: Vec::new(),
            policies: Vec::new(),
            pipelines: Vec::new(),
            raw: normalized_json(root),
        };
        if file.http.is_none() && file.https.is_none() && root.as_map().is_some() {
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

fn port_of(node: &Node, what: &str, errors: &mut ConfigErrors) -> Option<u16> {
    let parsed = match &node.value {
        Value::Int(i) => u16::try_from(*i).ok(),
        Value::Str(s) => s.trim().parse::<u16>().ok(),
        _ => None,
    };
    if parsed.is_none() {
        let shown = match &node.value {
            Value::Int(_) | Value::Str(_) => node.scalar_text().unwrap_or_default(),
            _ => node.kind().to_string(),
        };
        errors.push(
            &node.pos,
            format!("`{what}.port` must be a port number (0-65535), not {shown}"),
        );
    }
    parsed
}

fn listener(
    node: &Node,
    what: &str,
    default_port: Option<u16>,
    errors: &mut ConfigErrors,
) -> Option<ListenerDef> {
    if node.is_null() {
        return None;
    }
    if node.as_map().is_none() {
        errors.push(
            &node.pos,
            format!("`{what}` must be a map, not {}", node.kind()),
        );
        return None;
    }
    let port = match node.get("port") {
        Some(p) if p.is_null() => return None,
        Some(p) => port_of(p, what, errors)?,
        None => default_port?,
    };
    let host = optional_string(node, "hostname", errors)
        .or_else(|| optional_string(node, "host", errors))
        .map(|(h, _)| h);
    Some(ListenerDef { host, port })
}

/// Two listeners on one port of one address (the second could not listen): reported at the
/// later one's port, as `check` and a reload should say, not as the start's bind error.
fn same_port_twice(root: &Node, file: &GatewayFile, errors: &mut ConfigErrors) {
    // The admin listener's default address is the loopback one (the server binds it so).
    let admin = file.admin.as_ref().map(|a| ListenerDef {
        host: a.host.clone().or_else(|| Some("127.0.0.1".into())),
        port: a.port,
    });
    let listeners = [
        ("http", file.http.as_ref()),
        ("https", file.https.as_ref().map(|h| &h.listener)),
        ("admin", admin.as_ref()),
    ];
    let every_address = |h: &Option<String>| {
        matches!(
            h.as_deref(),
            None | Some("") | Some("0.0.0.0") | Some("::") | Some("[::]")
        )
    };
    // (Names are resolved only for listeners on one port, as the listener binds them: its
    // first address.)
    let address = |l: &ListenerDef| address_of(l.host.as_deref().unwrap_or(""), l.port);
    let mut seen: Vec<(&str, &ListenerDef)> = Vec::new();
    for (name, listener) in listeners {
        let Some(l) = listener else { continue };
        let clash = seen.iter().find(|(_, other)| {
            other.port == l.port
                && (every_address(&other.host)
                    || every_address(&l.host)
                    || other.host == l.host
                    || address(other).is_some_and(|a| address(l) == Some(a)))
        });
        if let Some((other, _)) = clash {
            let at = root
                .get(name)
                .map(|n| n.get("port").unwrap_or(n).pos.clone());
            if let Some(at) = at {
                errors.push(
                    &at,
                    format!("`{name}` listens on port {} as `{other}` does", l.port),
                );
            }
        }
        seen.push((name, l));
    }
}

/// The address a listener's host name binds (the resolver's first, as the listener takes
/// it); none when it does not resolve.
fn address_of(host: &str, port: u16) -> Option<std::net::IpAddr> {
    use std::net::ToSocketAddrs;
    let host = host.trim_matches(['[', ']']);
    if let Ok(ip) = host.parse::<std::net::IpAddr>() {
        return Some(ip);
    }
    (host, port).to_socket_addrs().ok()?.next().map(|a| a.ip())
}

fn https(node: &Node, errors: &mut ConfigErrors) -> Option<HttpsDef> {
    let listener = listener(node, "https", None, errors)?;
    let mut certs = Vec::new();
    match node.get("tls") {
        Some(tls) => {
            for (key, value) in map_entries(tls, "https.tls", errors) {
                let host_glob = name_of(key, errors);
                let key_file = optional_string(value, "key", errors);
                let cert_file = optional_string(value, "cert", errors);
                match (key_file, cert_file) {
                    (Some((key, _)), Some((cert, _))) => certs.push(TlsCertDef {
                        host_glob,
                        key,
                        cert,
                        pos: value.pos.clone(),
                    }),
                    _ => errors.push(
                        &value.pos,
                        format!("`https.tls.{host_glob}` needs `key` and `cert` file paths"),
                    ),
                }
            }
        }
        None => errors.push(
            &node.pos,
            "`https` needs a `tls` section with at least a `default` key and cert",
        ),
    }
    Some(HttpsDef { listener, certs })
}

fn api_endpoint(key: &Node, value: &Node, errors: &mut ConfigErrors) -> ApiEndpointDef {
    let name = name_of(key, errors);
    let nodes: Vec<&Node> = match &value.value {
        Value::Seq(items) => items.iter().collect(),
        _ => vec![value],
    };
    let entries = nodes
        .into_iter()
        .filter_map(|n| endpoint_entry(&name, n, errors))
        .collect();
    ApiEndpointDef {
        name,
        pos: key.pos.clone(),
        entries,
    }
}

fn endpoint_entry(name: &str, node: &Node, errors: &mut ConfigErrors) -> Option<EndpointDef> {
    if node.is_null() {
        return Some(EndpointDef {
            pos: node.pos.clone(),
            host: None,
            host_regex: None,
            paths: Vec::new(),
            path_regex: None,
            methods: None,
            scopes: Vec::new(),
        });
    }
    if node.as_map().is_none() {
        errors.push(
            &node.pos,
            format!(
                "apiEndpoint `{name}` must be a map (or a list of maps), not {}",
                node.kind()
            ),
        );
        return None;
    }
    let mut paths = Vec::new();
    for key in ["paths", "path"] {
        if let Some(n) = node.get(key) {
            paths.extend(string_list(n, key, errors));
        }
    }
    let methods = node.get("methods").and_then(|n| {
        let listed: Vec<String> = string_list(n, "methods", errors)
            .into_iter()
            .flat_map(|(m, _)| {
                m.split(',')
                    .map(|s| s.trim().to_ascii_uppercase())
                    .filter(|s| !s.is_empty())
                    .collect::<Vec<_>>()
            })
            .collect();
        if listed.is_empty() || listed.iter().any(|m| m == "*") {
            None
        } else {
            Some(listed)
        }
    });
    let scopes = node
        .get("scopes")
        .map(|n| {
            string_list(n, "scopes", errors)
                .into_iter()
                .map(|(s, _)| s)
                .collect()
        })
        .unwrap_or_default();
    Some(EndpointDef {
        pos: node.pos.clone(),
        host: optional_string(node, "host", errors).map(|(h, _)| h),
        host_regex: optional_string(node, "hostRegex", errors),
        paths,
        path_regex: optional_string(node, "pathRegex", errors),
        methods,
        scopes,
    })
}

fn service_endpoint(
    key: &Node,
    value: &Node,
    errors: &mut ConfigErrors,
) -> Option<ServiceEndpointDef> {
    let name = name_of(key, errors);
    if value.as_map().is_none() {
        errors.push(
            &value.pos,
            format!(
                "serviceEndpoint `{name}` must be a map with `url` or `urls`, not {}",
                value.kind()
            ),
        );
        return None;
    }
    let url = optional_string(value, "url", errors);
    let urls = value.get("urls").map(|n| string_list(n, "urls", errors));
    let urls = match (url, urls) {
        (Some(_), Some(_)) => {
            errors.push(
                &key.pos,
                format!("serviceEndpoint `{name}` has both `url` and `urls`; use one"),
            );
            return None;
        }
        (Some(u), None) => vec![u],
        (None, Some(list)) if !list.is_empty() => list,
        _ => {
            errors.push(
                &key.pos,
                format!("serviceEndpoint `{name}` needs `url` or `urls`"),
            );
            return None;
        }
    };
    Some(ServiceEndpointDef {
        name,
        pos: key.pos.clone(),
        urls,
        proxy_options: value.get("proxyOptions").filter(|n| !n.is_null()).cloned(),
        tollgate: value.get("tollgate").filter(|n| !n.is_null()).cloned(),
    })
}

fn pipeline(key: &Node, value: &Node, errors: &mut ConfigErrors) -> Option<PipelineDef> {
    let name = name_of(key, errors);
    if value.as_map().is_none() {
        errors.push(
            &value.pos,
            format!("pipeline `{name}` must be a map, not {}", value.kind()),
        );
        return None;
    }
    let api_endpoints = match value
        .get("apiEndpoints")
        .or_else(|| value.get("apiEndpoint"))
    {
        Some(n) => string_list(n, "apiEndpoints", errors),
        None => {
            errors.push(&key.pos, format!("pipeline `{name}` needs `apiEndpoints`"));
            Vec::new()
        }
    };
    let mut steps = Vec::new();
    let list = value.get("policies").or_else(|| value.get("policy"));
    if list.is_none() {
        // As EG's schema: a misspelt `policies` would leave the route answering 404.
        errors.push(&key.pos, format!("pipeline `{name}` needs `policies`"));
    }
    if let Some(list) = list {
        match &list.value {
            Value::Map(_) => policy_steps(&name, list, &mut steps, errors),
            Value::Seq(items) => {
                for item in items {
                    // One policy per item, as EG's schema says (`- cors:` and `proxy:` at one
                    // indent are one item holding two).
                    if let Some([(first, _), (second, _), ..]) = item.as_map() {
                        let (a, b) = (name_of(first, errors), name_of(second, errors));
                        errors.push(
                            &second.pos,
                            format!(
                                "pipeline `{name}`: one policy per list item; `{b}` shares an item with `{a}` (start it with its own `- `)"
                            ),
                        );
                    }
                    policy_steps(&name, item, &mut steps, errors);
                }
            }
            Value::Null => {}
            _ => errors.push(
                &list.pos,
                format!(
                    "`policies` of pipeline `{name}` must be a list, not {}",
                    list.kind()
                ),
            ),
        }
    }
    Some(PipelineDef {
        name,
        pos: key.pos.clone(),
        api_endpoints,
        steps,
    })
}

/// One item of a pipeline's `policies` list: `{name: null | step | [steps]}` (or a bare name).
fn policy_steps(pipeline: &str, item: &Node, steps: &mut Vec<StepDef>, errors: &mut ConfigErrors) {
    let entries: Vec<(String, Pos, Option<&Node>)> = match &item.value {
        Value::Str(s) => vec![(s.clone(), item.pos.clone(), None)],
        Value::Map(entries) => entries
            .iter()
            .map(|(k, v)| (name_of(k, errors), k.pos.clone(), Some(v)))
            .collect(),
        _ => {
            errors.push(
                &item.pos,
                format!(
                    "a policy in pipeline `{pipeline}` must be `- name:` with its steps, not {}",
                    item.kind()
                ),
            );
            return;
        }
    };
    for (policy, pos, body) in entries {
        let step_nodes: Vec<Option<&Node>> = match body.map(|b| &b.value) {
            None | Some(Value::Null) => vec![None],
            Some(Value::Seq(items)) if items.is_empty() => vec![None],
            Some(Value::Seq(items)) => items.iter().map(Some).collect(),
            Some(Value::Map(_)) => vec![body],
            Some(_) => {
                let b = body.map(|b| b.kind()).unwrap_or("null");
                errors.push(&pos, format!("policy `{policy}` in pipeline `{pipeline}` must hold a step or a list of steps, not {b}"));
                continue;
            }
        };
        for step in step_nodes {
            let (condition, action, step_pos) = match step {
                None => (None, None, pos.clone()),
                Some(n) if n.is_null() => (None, None, n.pos.clone()),
                Some(n) if n.as_map().is_some() => (
                    n.get("condition").filter(|c| !c.is_null()).cloned(),
                    n.get("action").filter(|a| !a.is_null()).cloned(),
                    n.pos.clone(),
                ),
                Some(n) => {
                    errors.push(&n.pos, format!("a step of policy `{policy}` must be a map with `condition` and/or `action`, not {}", n.kind()));
                    continue;
                }
            };
            steps.push(StepDef {
                policy: policy.clone(),
                pos: step_pos,
                condition,
                action,
            });
        }
    }
}
