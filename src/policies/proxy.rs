//! `proxy`: chooses an available url of the service endpoint (its balancing; an immediate 502
//! when none is available), rewrites the path (stripPath, prependPath, ignorePath), sets Host
//! (changeOrigin), X-Forwarded-* (xfwd), `eg-request-id` (added to the request that goes
//! upstream, see [`crate::exchange::upstream_request`]) and any static `headers`, and sets
//! the timeouts: `connectTimeout`, `readTimeout` (between bytes) and `totalTimeout`, in ms;
//! EG's `proxyTimeout` and `timeout` stand for connect and read when those are not given. The
//! transfer itself is Pingora's.

use std::sync::Arc;
use std::time::Duration;

use http::header::{HeaderName, HeaderValue};
use serde::Deserialize;

use crate::config::error::{ConfigErrors, Pos};
use crate::config::node::Node;
use crate::pipeline::context::{HeaderEdit, PathRecipe, ProxyPlan};
use crate::pipeline::expr::ip_text;
use crate::pipeline::{Exchange, Outcome, Policy, Request};
use crate::upstream::ServiceEndpoint;

use super::BuildContext;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Params {
    #[serde(default = "yes")]
    change_origin: bool,
    #[serde(default)]
    strip_path: bool,
    #[serde(default = "yes")]
    prepend_path: bool,
    #[serde(default)]
    ignore_path: bool,
    #[serde(default)]
    xfwd: bool,
    strategy: Option<String>,
    timeout: Option<u64>,
    proxy_timeout: Option<u64>,
    connect_timeout: Option<u64>,
    read_timeout: Option<u64>,
    total_timeout: Option<u64>,
    #[serde(default = "yes")]
    secure: bool,
    #[serde(default)]
    headers: std::collections::BTreeMap<String, String>,
    /// `user:password`: the upstream request's `Authorization: Basic`, when the client's
    /// request has no `Authorization` (Node's `auth`, as EG's http-proxy passes it on).
    auth: Option<String>,
}

/// Options of EG's http-proxy that tollgate does not act on: named in a config, each is a
/// warning at its place (it would otherwise change nothing, silently).
const NOT_SUPPORTED: [&str; 10] = [
    "followRedirects",
    "autoRewrite",
    "hostRewrite",
    "protocolRewrite",
    "cookieDomainRewrite",
    "cookiePathRewrite",
    "toProxy",
    "proxyUrl",
    "proxyOptions",
    "target",
];

fn yes() -> bool {
    true
}

pub struct Proxy {
    service: Arc<str>,
    endpoint: Arc<ServiceEndpoint>,
    change_origin: bool,
    strip_path: bool,
    prepend_path: bool,
    ignore_path: bool,
    xfwd: bool,
    verify_cert: bool,
    connect_timeout: Option<Duration>,
    read_timeout: Option<Duration>,
    total_timeout: Option<Duration>,
    headers: Vec<(HeaderName, HeaderValue)>,
    /// `Authorization: Basic` from `auth`.
    basic_auth: Option<HeaderValue>,
    /// To the gateway's own Admin API: the pass its storage route takes (see
    /// [`crate::admin::storage_admitted`]), and whether only with a request a step before
    /// authenticated (with `--admin-token`).
    storage_pass: Option<(HeaderValue, bool)>,
}

pub static REQUEST_ID: HeaderName = HeaderName::from_static("eg-request-id");
static XFF: HeaderName = HeaderName::from_static("x-forwarded-for");
static XF_PORT: HeaderName = HeaderName::from_static("x-forwarded-port");
static XF_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static XF_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

impl Proxy {
    /// Builds from the step's action merged with the service endpoint's `proxyOptions`
    /// (which win, as in EG).
    pub fn build(
        action: Option<&Node>,
        pos: &Pos,
        cx: &BuildContext<'_>,
        errors: &mut ConfigErrors,
    ) -> Option<Proxy> {
        let name_node = action.and_then(|a| a.get("serviceEndpoint"));
        let Some(name) = name_node.and_then(Node::scalar_text) else {
            errors.push(pos, "policy `proxy` needs `serviceEndpoint`");
            return None;
        };
        let Some(endpoint) = cx.service_endpoints.get(&name) else {
            let at = name_node.map_or(pos, |n| &n.pos);
            errors.push(
                at,
                format!("policy `proxy`: unknown serviceEndpoint `{name}`"),
            );
            return None;
        };
        let p: Params = merged_params(action, endpoint, pos, errors)?;
        if let Some(s) = p.strategy.as_deref().filter(|s| *s != "round-robin") {
            let at = super::param_pos(action, "strategy", pos);
            errors.push(
                at,
                format!("policy `proxy`: unknown strategy `{s}` (only round-robin here; other balancing is the service endpoint's `tollgate.balance`)"),
            );
            return None;
        }
        let mut headers = Vec::new();
        for (k, v) in &p.headers {
            match (
                HeaderName::from_bytes(k.to_ascii_lowercase().as_bytes()),
                HeaderValue::from_str(v),
            ) {
                (Ok(n), Ok(v)) => headers.push((n, v)),
                _ => errors.push(
                    super::param_pos(action, "headers", pos),
                    format!("policy `proxy`: bad header `{k}`"),
                ),
            }
        }
        for (key, at) in [action, endpoint.proxy_options.as_ref()]
            .into_iter()
            .flatten()
            .flat_map(|n| {
                NOT_SUPPORTED
                    .iter()
                    .filter_map(move |k| Some((*k, n.get(k)?)))
            })
        {
            log::warn!(
                "{}: policy `proxy`: `{key}` is not supported by tollgate and is ignored",
                at.pos
            );
        }
        let ms = |v: Option<u64>| v.filter(|t| *t > 0).map(Duration::from_millis);
        let eg_timeout = ms(p.proxy_timeout).or(ms(p.timeout));
        if !p.secure {
            endpoint.traffic_unverified();
        }
        Some(Proxy {
            service: Arc::from(endpoint.name.as_str()),
            endpoint: endpoint.clone(),
            change_origin: p.change_origin,
            strip_path: p.strip_path,
            prepend_path: p.prepend_path,
            ignore_path: p.ignore_path,
            xfwd: p.xfwd,
            verify_cert: p.secure,
            connect_timeout: ms(p.connect_timeout).or(eg_timeout),
            read_timeout: ms(p.read_timeout).or(eg_timeout),
            total_timeout: ms(p.total_timeout),
            headers,
            // (Base64: always a header value.)
            basic_auth: p.auth.as_deref().and_then(basic),
            storage_pass: cx
                .storage_pass
                .filter(|pass| {
                    endpoint
                        .targets
                        .iter()
                        .all(|t| crate::admin::is_own_admin(t, pass.port))
                })
                .map(|pass| (pass.value.clone(), pass.consumers_only)),
        })
    }

    /// How the upstream path is made from a url's path, as http-proxy builds it from the
    /// (possibly stripped) URL.
    fn path_recipe(&self, req: &Request<'_>) -> PathRecipe {
        PathRecipe {
            url: if self.strip_path {
                stripped_url(req)
            } else {
                req.url.to_string()
            },
            prepend_path: self.prepend_path,
            ignore_path: self.ignore_path,
            neutral: None,
        }
    }
}

/// `Authorization: Basic` for `user:password` (as Node encodes `auth`, whatever it holds).
fn basic(auth: &str) -> Option<HeaderValue> {
    use base64::Engine;
    let encoded = base64::engine::general_purpose::STANDARD.encode(auth);
    HeaderValue::from_str(&format!("Basic {encoded}")).ok()
}

fn merged_params(
    action: Option<&Node>,
    endpoint: &ServiceEndpoint,
    pos: &Pos,
    errors: &mut ConfigErrors,
) -> Option<Params> {
    let mut json = action.map_or_else(|| serde_json::json!({}), Node::to_param_json);
    if let (Some(obj), Some(opts)) = (
        json.as_object_mut(),
        endpoint.proxy_options.as_ref().map(Node::to_param_json),
    ) {
        if let Some(extra) = opts.as_object() {
            for (k, v) in extra {
                obj.insert(k.clone(), v.clone());
            }
        }
    }
    match super::coerced::<Params>(json, "proxy") {
        Ok(p) => Some(p),
        Err(e) => {
            // Point at the value in proxyOptions when it came from there, else in the action.
            let first_key = e.path().iter().next().and_then(|s| match s {
                serde_path_to_error::Segment::Map { key } => Some(key.clone()),
                _ => None,
            });
            let from_options = endpoint
                .proxy_options
                .as_ref()
                .filter(|o| first_key.as_deref().is_some_and(|k| o.get(k).is_some()));
            let at = match (from_options, action) {
                (Some(o), _) => &o.locate(e.path()).pos,
                (None, Some(a)) => &a.locate(e.path()).pos,
                (None, None) => pos,
            };
            errors.push(at, format!("policy `proxy` `{}`: {}", e.path(), e.inner()));
            None
        }
    }
}

/// EG's stripPath: cut the URL at the matched pattern's first `:` or `*`.
fn stripped_url(req: &Request<'_>) -> String {
    match req.strip_at {
        None => match req.query {
            Some(q) => format!("/?{q}"),
            None => "/".into(),
        },
        Some(0) => req.url.to_string(),
        Some(at) => {
            let rest = req.url.get(at..).unwrap_or("");
            let mut url = String::with_capacity(rest.len() + 1);
            url.push('/');
            url.push_str(rest);
            url
        }
    }
}

/// Whether `stripPath` cuts the client's URL within a segment (`/wmts../k2` routed by
/// `/wmts*`): only then can what it leaves hold a dot segment the client's path, refused with
/// one before it was routed, does not. A cut where a segment begins leaves whole segments of
/// that path.
fn cut_within_a_segment(req: &Request<'_>) -> bool {
    let url = req.url.as_bytes();
    match req.strip_at {
        Some(at) if at > 0 => !(url.get(at - 1) == Some(&b'/') || url.get(at) == Some(&b'/')),
        _ => false,
    }
}

/// http-proxy's `urlJoin`: join with `/`, collapse repeated slashes in the path, keep the query
/// — and give the first `http:/` and `https:/` of a path whose slashes were collapsed their
/// second slash back, as it does (a path that carries a URL: `/k2/http://h/x`).
pub fn url_join(base: &str, url: &str) -> String {
    let q = memchr::memchr(b'?', url.as_bytes()).unwrap_or(url.len());
    let (url_path, url_query) = url.split_at(q);
    let mut out = String::with_capacity(base.len() + url.len() + 1);
    let mut collapsed = false;
    for part in [base, url_path] {
        collapsed |= push_joined(&mut out, part);
    }
    // (Looked for only where a `//` went: every path pays nothing for it.)
    if collapsed {
        for scheme in ["http:/", "https:/"] {
            if let Some(at) = out.find(scheme) {
                out.insert(at + scheme.len(), '/');
            }
        }
    }
    out.push_str(url_query);
    out
}

/// Appends `part` to a path: a `/` between them when neither has one there, and no `/` twice
/// in a row. Whether a `/` twice in a row within `part` was made one.
fn push_joined(out: &mut String, part: &str) -> bool {
    if part.is_empty() {
        return false;
    }
    let mut rest = part;
    let mut collapsed = false;
    if out.ends_with('/') {
        rest = rest.trim_start_matches('/');
    } else if !out.is_empty() && !rest.starts_with('/') {
        out.push('/');
    }
    let bytes = rest.as_bytes();
    let mut from = 0;
    for i in 1..bytes.len() {
        if bytes[i] == b'/' && bytes[i - 1] == b'/' {
            out.push_str(&rest[from..i]);
            from = i + 1;
            collapsed = true;
        }
    }
    out.push_str(&rest[from..]);
    collapsed
}

impl Policy for Proxy {
    fn on_request(&self, req: &Request<'_>, x: &mut Exchange) -> Outcome {
        let path_recipe = self.path_recipe(req);
        // What stripPath leaves may hold a dot segment the client's path did not (`/wms../k2`
        // routed by `/wms*` leaves `/../k2`): the upstream would resolve it to a path neither
        // routed nor authorised here. Refused, as one in the client's path is.
        if self.strip_path && !self.ignore_path && cut_within_a_segment(req) {
            let url = &path_recipe.url;
            let path = &url[..memchr::memchr(b'?', url.as_bytes()).unwrap_or(url.len())];
            if crate::wire::has_dot_segment(path) {
                log::debug!("refused a request: a dot segment in its path once stripped");
                return Outcome::Respond(crate::pipeline::context::Reply::text(400, "Bad Request"));
            }
        }
        let picked = self.endpoint.pick(req.url, 0, x.cache.is_none());
        if picked.is_none() && x.cache.is_none() {
            log::warn!(
                "upstream failure: api endpoint `{}`, service endpoint `{}`: no url is available (all unhealthy or ejected); answered 502",
                req.endpoint.name,
                self.service
            );
            crate::metrics::metrics().upstream_error(crate::metrics::UNAVAILABLE);
            return Outcome::Respond(crate::responses::bad_gateway());
        }
        // With a cache step the request goes on: a cached (or stale) tile may still answer it.
        let i = picked.unwrap_or(0);
        let mut plan = ProxyPlan {
            service: self.service.clone(),
            endpoint: self.endpoint.clone(),
            target: i,
            tried: 0,
            attempts: 0,
            resends: 0,
            resend_next: false,
            counted: false,
            clears_at_end: false,
            unavailable: picked.is_none(),
            unresolved: false,
            addr: std::net::SocketAddr::from(([0, 0, 0, 0], 0)),
            tls: false,
            verify_cert: self.verify_cert,
            host: None,
            path: String::new(),
            path_recipe,
            change_origin: self.change_origin,
            connect_timeout: self.connect_timeout,
            read_timeout: self.read_timeout,
            deadline: None,
            edits_before: x.upstream_edits.len(),
            edits_in_key: 0,
        };
        if !plan.retarget(i) {
            if x.cache.is_none() {
                log::warn!(
                    "upstream failure: api endpoint `{}`, upstream {}: no resolved address; answered 502",
                    req.endpoint.name,
                    self.endpoint.targets[i].shown
                );
                crate::metrics::metrics().upstream_error(crate::metrics::DNS);
                return Outcome::Respond(crate::responses::bad_gateway());
            }
            // As with no url available: a stored tile may answer, a miss is a 502.
            plan.aim_unresolved(i);
        }
        if let Some(t) = self.total_timeout {
            plan.deadline = Some(std::time::Instant::now() + t);
        }
        for (n, v) in &self.headers {
            x.upstream_edits.push(HeaderEdit::Set(n.clone(), v.clone()));
        }
        // (Set whatever the client sent in its place; with `--admin-token` only with a
        // consumer.)
        if let Some((pass, _)) = self
            .storage_pass
            .as_ref()
            .filter(|(_, consumers_only)| !consumers_only || x.consumer.is_some())
        {
            x.upstream_edits.push(HeaderEdit::Set(
                crate::admin::STORAGE_PASS.clone(),
                pass.clone(),
            ));
        }
        if let Some(v) = &self.basic_auth {
            x.upstream_edits
                .push(HeaderEdit::Default(http::header::AUTHORIZATION, v.clone()));
        }
        if self.xfwd {
            let ip = req
                .client_ip
                .map(|ip| ip_text(ip).to_string())
                .unwrap_or_default();
            let forwarded = |name: &HeaderName, value: String| {
                let v = match req.header(name.as_str()) {
                    Some(prev) => format!("{prev},{value}"),
                    None => value,
                };
                HeaderValue::from_str(&v)
                    .ok()
                    .map(|v| HeaderEdit::Set(name.clone(), v))
            };
            // As http-proxy: the port is the one in Host, else the scheme's default.
            let port = req
                .host
                .and_then(|h| h.rsplit_once(':'))
                .map(|(_, p)| p)
                .filter(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
                .map(str::to_string)
                .unwrap_or_else(|| if req.tls { "443" } else { "80" }.to_string());
            let proto = if req.tls { "https" } else { "http" }.to_string();
            x.upstream_edits.extend(
                [forwarded(&XF_PORT, port), forwarded(&XF_PROTO, proto)]
                    .into_iter()
                    .flatten(),
            );
            // The client's own `X-Forwarded-Host` when it sent one (as http-proxy), else its
            // host: set here either way, so the key holds what the upstream receives.
            let sent: Vec<&[u8]> = req
                .headers
                .get_all(&XF_HOST)
                .iter()
                .map(HeaderValue::as_bytes)
                .collect();
            let host = match sent.as_slice() {
                [] => req.host.and_then(|h| HeaderValue::from_str(h).ok()),
                [one] => HeaderValue::from_bytes(one).ok(),
                // Several lines go on as one, as Node joins them.
                more => HeaderValue::from_bytes(&more.join(&b", "[..])).ok(),
            };
            if let Some(h) = host {
                x.upstream_edits.push(HeaderEdit::Set(XF_HOST.clone(), h));
            }
            // The upstream may build URLs from the forwarded host, port and scheme (a WMS
            // capabilities document): they are part of the key. The client's address is not
            // (one copy per client); an answer that depends on it must say `Vary:
            // X-Forwarded-For`, which keeps a copy per address (see `cache::variance`).
            plan.edits_in_key = x.upstream_edits.len();
            x.upstream_edits.extend(forwarded(&XFF, ip));
        } else {
            plan.edits_in_key = x.upstream_edits.len();
        }
        x.proxy = Some(plan);
        Outcome::Proxy
    }
}

#[cfg(test)]
mod tests {
    use super::url_join;
    use crate::pipeline::{Exchange, Outcome, Request};
    use crate::routing::Target;

    /// A url whose name never resolved: without a cache step the request is a 502 at once;
    /// with one it goes on (a stored tile may answer it), its plan aimed at the url's path and
    /// marked unavailable, so an attempt fails as a `dns` failure.
    #[test]
    fn a_url_that_does_not_resolve_leaves_the_cache_to_answer() {
        let dir = std::env::temp_dir().join(format!("tollgate-nodns-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let yml = "http: {port: 8080}\napiEndpoints:\n  plain: {paths: '/plain/*'}\n  cached: {paths: '/cached/*'}\nserviceEndpoints:\n  nodns: {url: 'http://no-such-host.invalid:81/tiles'}\npolicies: [proxy, cache]\npipelines:\n  plain: {apiEndpoints: [plain], policies: [{proxy: {action: {serviceEndpoint: nodns, stripPath: true}}}]}\n  cached: {apiEndpoints: [cached], policies: [{cache: {}}, {proxy: {action: {serviceEndpoint: nodns, stripPath: true}}}]}\n";
        std::fs::write(dir.join("gateway.config.yml"), yml).expect("config");
        let gw = crate::server::load_gateway(
            &crate::config::ConfigDirs::single(&dir),
            &crate::gateway::Shared::detached(),
        )
        .expect("valid config");
        let _ = std::fs::remove_dir_all(&dir);
        let headers = http::HeaderMap::new();
        let run = |path: &str| {
            let ri = gw
                .router
                .find(0, None, path, &http::Method::GET)
                .expect("route");
            let route = &gw.router.routes()[ri];
            let Target::Pipeline(pi) = route.target else {
                panic!("no pipeline")
            };
            let req = Request {
                method: &http::Method::GET,
                path,
                query: None,
                url: path,
                host: None,
                headers: &headers,
                client_ip: None,
                server_port: Some(8080),
                tls: false,
                endpoint: &gw.endpoints[route.endpoint],
                strip_at: route.path.strip_at,
            };
            let mut x = Exchange::default();
            let (out, _) = gw.pipelines[pi].run(0, &req, &mut x);
            (out, x)
        };
        let (out, _) = run("/plain/1/2/3.png");
        assert!(matches!(out, Outcome::Respond(r) if r.status == 502));
        let (out, mut x) = run("/cached/1/2/3.png");
        assert!(matches!(out, Outcome::Proxy));
        let plan = x.proxy.as_mut().expect("a plan");
        assert!(plan.unavailable && plan.unresolved);
        assert_eq!(plan.path, "/tiles/1/2/3.png");
        assert_eq!(plan.upstream_text(), "http://no-such-host.invalid:81/tiles");
        let e = crate::upstream::attempt::begin(plan, "/1/2/3.png").expect_err("no address");
        assert_eq!(e.etype(), &crate::upstream::attempt::UNRESOLVED);
        assert_eq!(
            crate::exchange::upstream_error_kind(&e),
            crate::metrics::DNS
        );
    }

    #[test]
    fn joins_like_http_proxy() {
        assert_eq!(url_join("/wms", "/?SERVICE=WMS"), "/wms/?SERVICE=WMS");
        assert_eq!(url_join("/wms", "/foo"), "/wms/foo");
        assert_eq!(url_join("/", "/a?x=1"), "/a?x=1");
        assert_eq!(url_join("/wmts", "/1/2/3.png"), "/wmts/1/2/3.png");
        assert_eq!(
            url_join("/base/", "/x%2Fy/then/z?a=2"),
            "/base/x%2Fy/then/z?a=2"
        );
        assert_eq!(url_join("/wmts", ""), "/wmts");
        assert_eq!(url_join("/a//b/", "//c///d/?q=//x"), "/a/b/c/d/?q=//x");
        // http-proxy's own: the first `http:/` and `https:/` get their second slash back.
        assert_eq!(url_join("/", "/k2/http://h//x"), "/k2/http://h/x");
        assert_eq!(
            url_join("/p", "/https://h/http://g"),
            "/p/https://h/http://g"
        );
        assert_eq!(url_join("/p/", "/x/https://h"), "/p/x/https://h");
        assert_eq!(url_join("", "//a//b?x=//y"), "/a/b?x=//y");
    }

    /// The join as http-proxy words it: split both on `/`, put one `/` between the pieces.
    fn by_segments(base: &str, url: &str) -> String {
        let (url_path, url_query) = url.split_at(url.find('?').unwrap_or(url.len()));
        let mut out = String::new();
        for part in [base, url_path] {
            if part.is_empty() {
                continue;
            }
            for (i, segment) in part.split('/').enumerate() {
                if (i > 0 || !out.is_empty()) && !out.ends_with('/') {
                    out.push('/');
                }
                out.push_str(segment);
            }
        }
        out.push_str(url_query);
        out
    }

    #[test]
    fn joins_every_arrangement_of_slashes_as_by_segments() {
        // Every string of up to four pieces from these, as base and as url.
        let pieces = ["", "/", "a", "bc", "é"];
        let mut all = vec![String::new()];
        for _ in 0..4 {
            let longer: Vec<String> = all
                .iter()
                .flat_map(|s| pieces.iter().map(move |p| format!("{s}{p}")))
                .collect();
            all.extend(longer);
        }
        all.sort();
        all.dedup();
        for base in &all {
            for url in &all {
                let url = format!("{url}?x=//y");
                assert_eq!(
                    url_join(base, &url),
                    by_segments(base, &url),
                    "{base:?} + {url:?}"
                );
            }
        }
    }
}
