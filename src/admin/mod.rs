//! The Admin API listener (loopback by default). Read-only gateway routes for now:
//! `/api-endpoints`, `/service-endpoints`, `/pipelines` (each also `/:name`) and `/policies`,
//! answering with the config as EG does.

use std::sync::Arc;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use http::{Method, Response, StatusCode};
use pingora_core::apps::http_app::ServeHttp;
use pingora_core::protocols::http::ServerSession;

use crate::gateway::Gateway;

pub struct AdminApi {
    pub gateway: Arc<ArcSwap<Gateway>>,
}

fn json(status: StatusCode, body: &serde_json::Value) -> Response<Vec<u8>> {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, "application/json; charset=utf-8")
        .header(http::header::CONTENT_LENGTH, bytes.len())
        .body(bytes)
        .unwrap_or_default()
}

fn text(status: StatusCode, body: &str) -> Response<Vec<u8>> {
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .header(http::header::CONTENT_LENGTH, body.len())
        .body(body.as_bytes().to_vec())
        .unwrap_or_default()
}

/// The config sections the Admin API serves, by route name.
const SECTIONS: &[(&str, &str, &str)] = &[
    ("api-endpoints", "apiEndpoints", "apiEndpoint"),
    ("service-endpoints", "serviceEndpoints", "serviceEndpoint"),
    ("pipelines", "pipelines", "pipeline"),
];

impl AdminApi {
    fn route(&self, method: &Method, path: &str) -> Response<Vec<u8>> {
        let gw = self.gateway.load();
        let segments: Vec<&str> = path.trim_matches('/').split('/').filter(|s| !s.is_empty()).collect();
        if *method != Method::GET && *method != Method::HEAD {
            return text(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed");
        }
        match segments.as_slice() {
            ["policies"] => json(
                StatusCode::OK,
                gw.raw.get("policies").unwrap_or(&serde_json::Value::Array(Vec::new())),
            ),
            [route, rest @ ..] if rest.len() <= 1 => {
                let Some((_, key, singular)) = SECTIONS.iter().find(|(r, _, _)| r == route) else {
                    return text(StatusCode::NOT_FOUND, "Not Found");
                };
                let empty = serde_json::json!({});
                let section = gw.raw.get(*key).filter(|v| v.is_object()).unwrap_or(&empty);
                match rest.first() {
                    None => json(StatusCode::OK, section),
                    Some(name) => {
                        let name = percent_encoding::percent_decode_str(name).decode_utf8_lossy();
                        match section.get(name.as_ref()) {
                            Some(item) => json(StatusCode::OK, item),
                            None => text(StatusCode::NOT_FOUND, &format!("{singular} not found: {name}")),
                        }
                    }
                }
            }
            _ => text(StatusCode::NOT_FOUND, "Not Found"),
        }
    }
}

#[async_trait]
impl ServeHttp for AdminApi {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let head = session.req_header();
        self.route(&head.method, head.uri.path())
    }
}
