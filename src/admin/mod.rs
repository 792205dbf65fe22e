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
        .header(
            http::header::CONTENT_TYPE,
            "application/json; charset=utf-8",
        )
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

fn empty(status: StatusCode) -> Response<Vec<u8>> {
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_LENGTH, 0)
        .body(Vec::new())
        .unwrap_or_default()
}

/// The config sections the Admin API serves: route name, config key.
const SECTIONS: &[(&str, &str)] = &[
    ("api-endpoints", "apiEndpoints"),
    ("service-endpoints", "serviceEndpoints"),
    ("pipelines", "pipelines"),
];

impl AdminApi {
    fn route(&self, method: &Method, path: &str) -> Response<Vec<u8>> {
        let gw = self.gateway.load();
        let segments: Vec<&str> = path
            .trim_matches('/')
            .split('/')
            .filter(|s| !s.is_empty())
            .collect();
        if *method != Method::GET && *method != Method::HEAD {
            return text(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed");
        }
        match segments.as_slice() {
            ["policies"] => json(
                StatusCode::OK,
                gw.raw
                    .get("policies")
                    .unwrap_or(&serde_json::Value::Array(Vec::new())),
            ),
            [route, rest @ ..] if rest.len() <= 1 => {
                let Some((_, key)) = SECTIONS.iter().find(|(r, _)| r == route) else {
                    return text(StatusCode::NOT_FOUND, "Not Found");
                };
                let no_section = serde_json::json!({});
                let section = gw
                    .raw
                    .get(*key)
                    .filter(|v| v.is_object())
                    .unwrap_or(&no_section);
                match rest.first() {
                    None => json(StatusCode::OK, section),
                    Some(name) => {
                        let name = percent_encoding::percent_decode_str(name).decode_utf8_lossy();
                        match section.get(name.as_ref()) {
                            Some(item) => json(StatusCode::OK, item),
                            None => empty(StatusCode::NOT_FOUND),
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
