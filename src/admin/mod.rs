//! The Admin API listener (loopback by default): the gateway's config (read-only), consumer
//! management with EG's routes, `/metrics`, and the storage route. When a token is configured every request must
//! carry `Authorization: Bearer <token>`.

pub mod config_routes;
pub mod consumer_routes;
pub mod service;
pub mod state_routes;
pub mod storage;

use std::sync::Arc;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use http::{Method, Response, StatusCode};
use pingora_core::apps::http_app::ServeHttp;
use pingora_core::protocols::http::ServerSession;
use subtle::ConstantTimeEq;

use crate::consumers::service::ConsumerService;
use crate::gateway::Gateway;

/// Largest request body the Admin API reads (a consumers file for populate included).
const MAX_BODY: usize = 16 * 1024 * 1024;
/// The longest body EG's consumer routes take (body-parser's `100kb`): a user of megabytes was
/// stored, and shown in every page of the listing after.
const MAX_CONSUMER_BODY: usize = 100 * 1024;

pub struct AdminApi {
    pub gateway: Arc<ArcSwap<Gateway>>,
    pub consumers: Arc<ConsumerService>,
    pub token: Option<String>,
    /// The config's lifecycle (status and reload), when serving.
    pub lifecycle: Option<Arc<crate::lifecycle::Lifecycle>>,
    /// What the storage route takes from the gateway's own `proxy` step in place of the
    /// token (see [`storage_pass`]), made once from it (from no token: the gateway's own
    /// requests are told from a web page's by it).
    pub storage_pass: http::HeaderValue,
    /// The longest a request's body may take to arrive whole (`--request-timeout`).
    pub request_timeout: std::time::Duration,
    /// The Admin API's listener is on loopback (see [`on_loopback`]): from its address as it
    /// was bound at the start, which a reload does not move (a reloaded `admin.host` applies
    /// at the next start, and read from the running config it let DNS rebinding through).
    pub loopback: bool,
}

pub fn json(status: StatusCode, body: &serde_json::Value) -> Response<Vec<u8>> {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    respond(status, Some("application/json; charset=utf-8"), bytes)
}

/// A message, typed `text/html` as Express's `res.send(string)` types it.
pub fn text(status: StatusCode, body: &str) -> Response<Vec<u8>> {
    respond(
        status,
        Some("text/html; charset=utf-8"),
        body.as_bytes().to_vec(),
    )
}

/// A message as text, never read as markup (the storage route's refusals: they name what the
/// client sent, and the route is reached from the gateway's origin, through a pipeline).
pub fn plain(status: StatusCode, body: &str) -> Response<Vec<u8>> {
    let mut r = respond(
        status,
        Some("text/plain; charset=utf-8"),
        body.as_bytes().to_vec(),
    );
    r.headers_mut().insert(
        http::header::X_CONTENT_TYPE_OPTIONS,
        http::HeaderValue::from_static("nosniff"),
    );
    r
}

pub fn empty(status: StatusCode) -> Response<Vec<u8>> {
    respond(status, None, Vec::new())
}

fn respond(status: StatusCode, content_type: Option<&str>, body: Vec<u8>) -> Response<Vec<u8>> {
    let mut b = Response::builder().status(status);
    if let Some(ct) = content_type {
        b = b.header(http::header::CONTENT_TYPE, ct);
    }
    b.header(http::header::CONTENT_LENGTH, body.len())
        .body(body)
        .unwrap_or_default()
}

/// Whether a listener's host is the loopback interface.
fn is_loopback(host: &str) -> bool {
    host == "localhost"
        || host
            .trim_matches(['[', ']'])
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The first segments of the Admin API's own routes (beside the metrics path).
pub const ROUTES: &[&str] = &[
    "users",
    "apps",
    "credentials",
    "scopes",
    "policies",
    "api-endpoints",
    "service-endpoints",
    "pipelines",
    "tollgate",
];

/// The header the gateway's own `proxy` step sends to its Admin API's storage route with a
/// request a step before it authenticated (see [`storage_pass`]).
pub static STORAGE_PASS: http::HeaderName =
    http::HeaderName::from_static("x-tollgate-storage-pass");

/// With `--admin-token`, what the storage route takes instead of the token from the gateway's
/// own `proxy` step: a value made from the token (the same in both processes of a graceful
/// upgrade), not the token itself. Without one the storage route is open to what reaches it,
/// as EG's is, but a web page of another site: the pass, made from no token, tells the
/// gateway's own requests (which forward the page's `Origin`) from a page's own, which cannot
/// send a header of its choosing to the Admin API (that needs a preflight, which it refuses).
pub fn storage_pass(token: Option<&str>) -> http::HeaderValue {
    use sha2::Digest;
    let token = token.unwrap_or("");
    let digest = sha2::Sha256::digest(format!("tollgate storage pass\n{token}").as_bytes());
    let hex = crate::wire::hex(&digest);
    // (Hexadecimal digits: always a header value.)
    http::HeaderValue::from_str(&hex).unwrap_or_else(|_| http::HeaderValue::from_static("-"))
}

/// What the gateway's `proxy` steps to its own Admin API send its storage route.
#[derive(Clone)]
pub struct StoragePass {
    /// The pass (see [`storage_pass`]).
    pub value: http::HeaderValue,
    /// The port the Admin API was started on: bound at the start (a reloaded `admin.port`
    /// applies at the next start; followed, the pass went to whatever listened on loopback
    /// there).
    pub port: u16,
    /// With `--admin-token`: sent only with a request a step before authenticated (the route
    /// refuses one without it); without a token with every request (the route answers what
    /// reaches it, the pass tells it from a web page's own).
    pub consumers_only: bool,
}

/// Whether a service endpoint's url is this gateway's Admin API (loopback, its port).
pub fn is_own_admin(target: &crate::upstream::UpstreamTarget, admin_port: u16) -> bool {
    target.port == admin_port && is_loopback(&target.hostname)
}

/// Whether a request carries `token` as its `Authorization: Bearer` (compared in constant
/// time).
fn bears(head: &pingora_http::RequestHeader, token: &str) -> bool {
    let given = head
        .headers
        .get(http::header::AUTHORIZATION)
        .map(http::HeaderValue::as_bytes)
        .and_then(|v| {
            v.strip_prefix(b"Bearer ")
                .or_else(|| v.strip_prefix(b"bearer "))
        })
        .unwrap_or(b"");
    given.ct_eq(token.as_bytes()).into()
}

/// Whether a request may use the storage route: always without `--admin-token` (as EG's);
/// with one, when it carries the token, or the pass of the gateway's own `proxy` step for a
/// request a step before it authenticated ([`storage_pass`]). Kargo's example proxies every
/// path of the Host `express-gateway` to the Admin API, authenticating nothing: through it,
/// anyone reaching the gateway's port read the buckets with the gateway's keys, the token
/// set or not.
pub fn storage_admitted(head: &pingora_http::RequestHeader, api: &AdminApi) -> bool {
    let Some(token) = &api.token else {
        return true;
    };
    bears(head, token) || carries_pass(head, api)
}

/// Whether a request carries the storage pass of the gateway's own `proxy` step.
fn carries_pass(head: &pingora_http::RequestHeader, api: &AdminApi) -> bool {
    head.headers
        .get(&STORAGE_PASS)
        .is_some_and(|p| bool::from(p.as_bytes().ct_eq(api.storage_pass.as_bytes())))
}

/// Whether an Admin API listener on `host` (the config's `admin.host`; loopback by default)
/// listens on loopback only.
pub fn on_loopback(host: Option<&str>) -> bool {
    is_loopback(host.unwrap_or("127.0.0.1"))
}

/// Why a request comes from a web page rather than an operator's tool, if it does: a browser
/// says where a page is (`Origin`, `Sec-Fetch-Site`), and a page on another site must not drive
/// the Admin API (it could send a simple cross-site POST). `by_name`: the API listens on
/// loopback without a token, so a `Host` that names neither an address nor `localhost` is a
/// page whose name was pointed at this machine (DNS rebinding) and is refused.
fn from_elsewhere(head: &pingora_http::RequestHeader, by_name: bool) -> Option<&'static str> {
    let header = |n: &str| head.headers.get(n).and_then(|v| v.to_str().ok());
    let host = host_of(head);
    if header("sec-fetch-site").is_some_and(|s| s.eq_ignore_ascii_case("cross-site")) {
        return Some("from a page of another site");
    }
    if let Some(origin) = header("origin") {
        let authority = origin.split_once("://").map_or(origin, |(_, a)| a);
        if !authority.eq_ignore_ascii_case(host) {
            return Some("from a page of another origin");
        }
    }
    if by_name && named_elsewhere(host) {
        return Some("for a host name other than localhost (set --admin-token to allow any)");
    }
    None
}

/// A request's `Host` as text: empty without one; one that is not ASCII (no browser sends
/// such: it sends names in punycode) as U+FFFD, which names no address.
fn host_of(head: &pingora_http::RequestHeader) -> &str {
    head.headers
        .get(http::header::HOST)
        .map_or("", |v| v.to_str().unwrap_or("\u{fffd}"))
}

/// Whether a request's `Host` names neither an address nor `localhost`: a page whose name
/// was pointed at this machine (DNS rebinding), for an API that listens on loopback.
fn named_elsewhere(host: &str) -> bool {
    let name = match host.rsplit_once(':') {
        Some((n, port)) if port.bytes().all(|b| b.is_ascii_digit()) => n,
        _ => host,
    };
    let address = name
        .trim_matches(['[', ']'])
        .parse::<std::net::IpAddr>()
        .is_ok();
    !(address || name.eq_ignore_ascii_case("localhost") || name.is_empty())
}

/// Why a request for the storage route is refused, if it is: with the admin listener on
/// loopback, one for a host name other than an address or `localhost` (DNS rebinding: a web
/// page reading the buckets through a name pointed at this machine). The gateway's own `/s3`
/// step reaches it by the admin url's name (`changeOrigin`: `localhost`), a tool by an
/// address or `localhost`. (Who may use the route at all: [`storage_admitted`].)
///
/// Without a token on loopback, also one from a web page of another site (`Origin`,
/// `Sec-Fetch-Site`), as the Admin API's other routes refuse it, unless it carries the
/// gateway's own pass: a page could otherwise read the buckets through a browser on the
/// gateway's machine. (On a private network the gateway's steps to the route name it by an
/// address the pass is not sent to, forwarding their pages' `Origin`: not refused there.)
pub fn storage_refusal(head: &pingora_http::RequestHeader, api: &AdminApi) -> Option<&'static str> {
    if api.loopback && named_elsewhere(host_of(head)) {
        return Some("for a host name other than an address or localhost");
    }
    if api.loopback && api.token.is_none() && !carries_pass(head, api) {
        return from_elsewhere(head, false);
    }
    None
}

impl AdminApi {
    fn authorized(&self, session: &ServerSession) -> bool {
        self.token
            .as_deref()
            .is_none_or(|token| bears(session.req_header(), token))
    }

    /// Whether a token is set and the request bears it.
    fn authorized_by_token(&self, session: &ServerSession) -> bool {
        self.token
            .as_deref()
            .is_some_and(|token| bears(session.req_header(), token))
    }

    async fn body(
        session: &mut ServerSession,
        deadline: tokio::time::Instant,
    ) -> Result<(serde_json::Value, usize), Response<Vec<u8>>> {
        let mut buf = Vec::new();
        // A body not read whole leaves the connection unusable: its answer closes it.
        let closing = |status, message: &str| {
            let mut r = text(status, message);
            r.headers_mut().insert(
                http::header::CONNECTION,
                http::HeaderValue::from_static("close"),
            );
            r
        };
        let timed_out = || closing(StatusCode::REQUEST_TIMEOUT, "Request Timeout");
        loop {
            let Ok(read) = tokio::time::timeout_at(deadline, session.read_request_body()).await
            else {
                return Err(timed_out());
            };
            match read {
                Ok(Some(chunk)) => {
                    buf.extend_from_slice(&chunk);
                    if buf.len() > MAX_BODY {
                        return Err(closing(
                            StatusCode::PAYLOAD_TOO_LARGE,
                            "request body too large",
                        ));
                    }
                }
                Ok(None) => break,
                Err(e) if e.etype() == &pingora_core::ErrorType::ReadTimedout => {
                    return Err(timed_out())
                }
                Err(e) => {
                    return Err(closing(
                        StatusCode::BAD_REQUEST,
                        &format!("cannot read the request body: {e}"),
                    ))
                }
            }
        }
        // A byte order mark before the JSON, as EG's body-parser takes it.
        let json = buf.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(&buf);
        if json.iter().all(u8::is_ascii_whitespace) {
            return Ok((serde_json::Value::Object(Default::default()), buf.len()));
        }
        serde_json::from_slice(json)
            .map(|v| (v, buf.len()))
            .map_err(|e| text(StatusCode::BAD_REQUEST, &format!("invalid JSON body: {e}")))
    }

    fn metrics(&self, accept: Option<&str>) -> Response<Vec<u8>> {
        let m = crate::metrics::metrics();
        let wants_json_only = accept.is_some_and(|a| {
            a.contains("application/json") && !a.contains("text/plain") && !a.contains("*/*")
        });
        if wants_json_only {
            return json(StatusCode::OK, &m.json());
        }
        respond(
            StatusCode::OK,
            Some("text/plain; version=0.0.4; charset=utf-8"),
            m.text().into_bytes(),
        )
    }
}

#[async_trait]
impl ServeHttp for AdminApi {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        self.handle(session).await
    }
}

impl AdminApi {
    /// `GET /tollgate/config` (the running config's status) and `POST /tollgate/reload`.
    async fn lifecycle_route(
        &self,
        method: &Method,
        segments: &[&str],
    ) -> Option<Response<Vec<u8>>> {
        let lifecycle = self.lifecycle.as_ref()?;
        match (method, segments) {
            (&Method::GET, ["tollgate", "config"]) => {
                Some(json(StatusCode::OK, &lifecycle.describe()))
            }
            (&Method::POST, ["tollgate", "reload"]) => {
                let l = lifecycle.clone();
                let outcome =
                    tokio::task::spawn_blocking(move || l.reload(crate::lifecycle::Trigger::Admin))
                        .await;
                Some(match outcome {
                    Ok(o) => {
                        let status = if o.result == "failed" {
                            StatusCode::UNPROCESSABLE_ENTITY
                        } else {
                            StatusCode::OK
                        };
                        json(status, &serde_json::to_value(&o).unwrap_or_default())
                    }
                    Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
                })
            }
            _ => None,
        }
    }

    /// Answers one Admin API request.
    pub async fn handle(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let deadline = tokio::time::Instant::now() + self.request_timeout;
        // An expectation it cannot meet: 417 before anything runs, as EG's Node answers (its
        // body unread, the connection closes).
        use crate::exchange::expect::{expectation, Expectation};
        if expectation(session.req_header()) == Expectation::Unmet {
            let mut r = text(StatusCode::EXPECTATION_FAILED, "Expectation Failed");
            r.headers_mut().insert(
                http::header::CONNECTION,
                http::HeaderValue::from_static("close"),
            );
            return r;
        }
        if let Some(why) =
            from_elsewhere(session.req_header(), self.loopback && self.token.is_none())
        {
            log::warn!("admin API: refused a request {why}");
            return text(StatusCode::FORBIDDEN, &format!("Forbidden: {why}"));
        }
        let head = session.req_header();
        let method = head.method.clone();
        let path = head.uri.path().to_string();
        let gw = self.gateway.load_full();
        // The metrics are read without the token (Prometheus, and Kargo's route that proxies
        // to them, which forwards none, answered 401 with a token set): they change nothing
        // and hold no secret (an upstream url's query is shown as `?…`; Kargo's `eg` counter
        // names consumers by id, as Kargo's public route shows them).
        let metrics =
            (method == Method::GET || method == Method::HEAD) && gw.metrics.matches(&path);
        if !metrics && !self.authorized(session) {
            return text(StatusCode::UNAUTHORIZED, "Unauthorized");
        }
        // Read without the token, they are refused to a page whose name was pointed at this
        // loopback listener (DNS rebinding), as every route is without a token.
        if metrics
            && self.loopback
            && !self.authorized_by_token(session)
            && named_elsewhere(host_of(session.req_header()))
        {
            log::warn!("admin API: refused a request for the metrics by a host name other than an address or localhost");
            return text(
                StatusCode::FORBIDDEN,
                "Forbidden: for a host name other than localhost (set --admin-token and send it to allow any)",
            );
        }
        let query = head.uri.query().map(str::to_string);
        let accept = head
            .headers
            .get(http::header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        // A path that begins with an empty segment (`//users`) matches no route, as in EG's
        // Express (which reads one later, `/users//u1`, as `/users/u1`).
        if path.starts_with("//") {
            return text(
                StatusCode::NOT_FOUND,
                &format!("<pre>Cannot {method} {path}</pre>"),
            );
        }
        let decoded: Vec<String> = path
            .split('/')
            .filter(|s| !s.is_empty())
            .map(|s| {
                percent_encoding::percent_decode_str(s)
                    .decode_utf8_lossy()
                    .into_owned()
            })
            .collect();
        let segments: Vec<&str> = decoded.iter().map(String::as_str).collect();
        if metrics {
            return self.metrics(accept.as_deref());
        }
        if method == Method::GET || method == Method::HEAD {
            if let Some(r) = config_routes::route(&gw, &segments) {
                return r;
            }
        }
        let (body, length) = match Self::body(session, deadline).await {
            Ok(b) => b,
            Err(r) => return r,
        };
        if let Some(r) = state_routes::route(&gw, &method, &segments, &body).await {
            return r;
        }
        if let Some(r) = self.lifecycle_route(&method, &segments).await {
            return r;
        }
        if length > MAX_CONSUMER_BODY && segments.first() != Some(&"tollgate") {
            return text(StatusCode::PAYLOAD_TOO_LARGE, "request entity too large");
        }
        if let Some(r) =
            consumer_routes::route(&self.consumers, &method, &segments, query.as_deref(), &body)
                .await
        {
            return r;
        }
        let message = format!("<pre>Cannot {} {}</pre>", method, path);
        text(StatusCode::NOT_FOUND, &message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The routes a storage `endpointName` may not take include every config section's.
    #[test]
    fn the_admin_routes_include_every_config_section() {
        for (route, _) in config_routes::SECTIONS {
            assert!(ROUTES.contains(route), "{route}");
        }
    }

    fn head(headers: &[(&str, &str)]) -> pingora_http::RequestHeader {
        let mut h = pingora_http::RequestHeader::build("POST", b"/users", None).expect("head");
        for (n, v) in headers {
            h.insert_header(n.to_string(), *v).expect("header");
        }
        h
    }

    #[test]
    fn pages_elsewhere_may_not_drive_the_admin_api() {
        let tool = head(&[("host", "127.0.0.1:9876")]);
        assert_eq!(from_elsewhere(&tool, true), None);
        for ok in [
            head(&[
                ("host", "localhost:9876"),
                ("origin", "http://localhost:9876"),
            ]),
            head(&[("host", "[::1]:9876")]),
            head(&[("host", "10.0.0.5:9876")]),
        ] {
            assert_eq!(from_elsewhere(&ok, true), None, "{ok:?}");
        }
        let cross = head(&[
            ("host", "127.0.0.1:9876"),
            ("origin", "http://evil.example"),
        ]);
        assert!(from_elsewhere(&cross, false).is_some());
        let fetch = head(&[("host", "127.0.0.1:9876"), ("sec-fetch-site", "cross-site")]);
        assert!(from_elsewhere(&fetch, false).is_some());
        // DNS rebinding: same origin, a name pointed at loopback.
        let rebound = head(&[
            ("host", "evil.example:9876"),
            ("origin", "http://evil.example:9876"),
        ]);
        assert!(from_elsewhere(&rebound, true).is_some());
        assert_eq!(
            from_elsewhere(&rebound, false),
            None,
            "with a token or beyond loopback"
        );
        // A Host that is not ASCII names no address.
        let mut odd = head(&[]);
        odd.insert_header(
            "host",
            http::HeaderValue::from_bytes(b"\xc3\xa9vil.example").expect("a value"),
        )
        .expect("header");
        assert!(from_elsewhere(&odd, true).is_some());
        assert!(is_loopback("127.0.0.1") && is_loopback("::1") && is_loopback("localhost"));
        assert!(!is_loopback("0.0.0.0") && !is_loopback("10.0.0.5"));
    }
}
