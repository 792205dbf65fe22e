//! The named entries of a gateway file: api endpoints (their hosts, paths, methods and
//! scopes), service endpoints and pipelines (their api endpoints and policy steps).

use super::{name_of, optional_string, string_list};
use super::{ApiEndpointDef, EndpointDef, PipelineDef, ServiceEndpointDef, StepDef};
use crate::config::error::{ConfigErrors, Pos};
use crate::config::node::{Node, Value};

pub(super) fn api_endpoint(key: &Node, value: &Node, errors: &mut ConfigErrors) -> ApiEndpointDef {
    let name = name_of(key, errors);
    let nodes: Vec<&Node> = match &value.value {
        Value::Seq(items) => items.iter().collect(),
        // (An empty value's place is where the next line begins: said at its key.)
        Value::Null => {
            let at = Node::null(key.pos.clone());
            endpoint_entry(&name, &at, errors);
            Vec::new()
        }
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

pub(super) fn endpoint_entry(
    name: &str,
    node: &Node,
    errors: &mut ConfigErrors,
) -> Option<EndpointDef> {
    // (Null too, as EG refuses it: an endpoint whose fields were all commented out matched
    // every request, ahead of the endpoints after it and their authentication. `{}` says so.)
    if node.as_map().is_none() {
        errors.push(
            &node.pos,
            format!(
                "apiEndpoint `{name}` must be a map (or a list of maps), not {}{}",
                node.kind(),
                if node.is_null() {
                    " (`{}` for one that matches every request)"
                } else {
                    ""
                }
            ),
        );
        return None;
    }
    super::ignored_keys(
        node,
        &[
            "host",
            "hostRegex",
            "paths",
            "path",
            "pathRegex",
            "methods",
            "scopes",
        ],
        "field of an apiEndpoint",
    );
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
            // (As EG refuses it: scopes commented out left the endpoint open to every
            // consumer.)
            if n.is_null() {
                errors.push(
                    &n.pos,
                    format!("`scopes` of apiEndpoint `{name}` must be a scope or a list of them, not null (leave the key out for none)"),
                );
            }
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

pub(super) fn service_endpoint(
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
    super::ignored_keys(
        value,
        &["url", "urls", "proxyOptions", "tollgate"],
        "field of a serviceEndpoint",
    );
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

pub(super) fn pipeline(key: &Node, value: &Node, errors: &mut ConfigErrors) -> Option<PipelineDef> {
    let name = name_of(key, errors);
    if value.as_map().is_none() {
        errors.push(
            &value.pos,
            format!("pipeline `{name}` must be a map, not {}", value.kind()),
        );
        return None;
    }
    super::ignored_keys(
        value,
        &["apiEndpoints", "apiEndpoint", "policies", "policy"],
        "field of a pipeline",
    );
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
                    if let Some(entries @ [(first, first_value), (second, _), ..]) = item.as_map() {
                        let (a, b) = (name_of(first, errors), name_of(second, errors));
                        // `- proxy:` with its `action:` at the same indent, not under it: said
                        // once, as what it is (not as a policy `action` never declared).
                        let part = |k: &Node| {
                            matches!(k.scalar_text().as_deref(), Some("action" | "condition"))
                        };
                        if first_value.is_null() && part(second) {
                            errors.push(
                                &second.pos,
                                format!(
                                    "pipeline `{name}`: `{b}` is at the indent of `{a}`, not under it: indent it below `{a}:` (as written the item holds two policies, `{a}` and `{b}`)"
                                ),
                            );
                            let kept = Node {
                                pos: item.pos.clone(),
                                value: Value::Map(
                                    entries.iter().filter(|(k, _)| !part(k)).cloned().collect(),
                                ),
                            };
                            policy_steps(&name, &kept, &mut steps, errors);
                            continue;
                        }
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
pub(super) fn policy_steps(
    pipeline: &str,
    item: &Node,
    steps: &mut Vec<StepDef>,
    errors: &mut ConfigErrors,
) {
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
                    {
                        super::ignored_keys(n, &["condition", "action"], "part of a policy step");
                        n.get("condition").filter(|c| !c.is_null()).cloned()
                    },
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
