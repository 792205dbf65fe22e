//! The read-only gateway routes of the Admin API: `/api-endpoints`, `/service-endpoints`,
//! `/pipelines` (each also `/:name`) and `/policies`, answering with the config as EG does.

use http::{Response, StatusCode};

use super::{empty, json};
use crate::gateway::Gateway;

/// The config sections the Admin API serves: route name, config key.
pub(super) const SECTIONS: &[(&str, &str)] = &[
    ("api-endpoints", "apiEndpoints"),
    ("service-endpoints", "serviceEndpoints"),
    ("pipelines", "pipelines"),
];

/// Answers a GET on a config route; `None` when the path is not one of them.
pub fn route(gw: &Gateway, segments: &[&str]) -> Option<Response<Vec<u8>>> {
    match segments {
        ["policies"] => Some(json(
            StatusCode::OK,
            gw.raw
                .get("policies")
                .unwrap_or(&serde_json::Value::Array(Vec::new())),
        )),
        [route, rest @ ..] if rest.len() <= 1 => {
            let (_, key) = SECTIONS.iter().find(|(r, _)| r == route)?;
            let no_section = serde_json::json!({});
            let section = gw
                .raw
                .get(*key)
                .filter(|v| v.is_object())
                .unwrap_or(&no_section);
            Some(match rest.first() {
                None => json(StatusCode::OK, section),
                Some(name) => match section.get(*name) {
                    Some(item) => json(StatusCode::OK, item),
                    None => empty(StatusCode::NOT_FOUND),
                },
            })
        }
        _ => None,
    }
}
