//! What a policy sees and changes while a request travels through a pipeline.
//!
//! [`Request`] is a read-only view of the client's request. [`Exchange`] is the per-request
//! state the policies build up: header edits for the upstream request and for whatever response
//! is finally sent, the consumer an auth policy found, and the upstream the proxy chose.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Method};

/// The apiEndpoint a request matched.
#[derive(Debug)]
pub struct ApiEndpoint {
    pub name: Arc<str>,
    pub scopes: Vec<String>,
    /// Its metric handles, resolved when the config was built.
    pub metrics: crate::metrics::EndpointMetrics,
}

/// A read-only view of the client's request.
pub struct Request<'a> {
    pub method: &'a Method,
    /// The raw path, without the query.
    pub path: &'a str,
    /// The raw query, without `?`.
    pub query: Option<&'a str>,
    /// The raw path with its query, as sent (EG's `req.url`).
    pub url: &'a str,
    /// The Host header as sent (port included).
    pub host: Option<&'a str>,
    pub headers: &'a HeaderMap,
    pub client_ip: Option<IpAddr>,
    /// The port the client connected to (for `X-Forwarded-Port`).
    pub server_port: Option<u16>,
    pub tls: bool,
    pub endpoint: &'a ApiEndpoint,
    /// Where the matched path pattern's first `:` or `*` sits (`None`: it has neither);
    /// the proxy's `stripPath` cuts the URL there.
    pub strip_at: Option<usize>,
}

impl Request<'_> {
    /// The Host header without its port (EG's `req.hostname`).
    pub fn hostname(&self) -> Option<&str> {
        self.host.map(strip_port)
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// `host:port` → `host`, `[::1]:80` → `[::1]`.
pub fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return match host.find(']') {
            Some(end) => &host[..=end],
            None => host,
        };
    }
    match host.rfind(':') {
        Some(i) => &host[..i],
        None => host,
    }
}

/// A request's header edits: a few each way on a tile request (the consumer's id, CORS), held
/// inline so that a request allocates none for them.
pub type Edits = smallvec::SmallVec<[HeaderEdit; 4]>;

/// A change to a header set.
#[derive(Clone, Debug)]
pub enum HeaderEdit {
    /// Replace any value.
    Set(HeaderName, HeaderValue),
    /// Set only when absent (a value the upstream sends wins, as in EG where policies set
    /// response headers before the proxy copies the upstream's over them).
    Default(HeaderName, HeaderValue),
    /// Add a token to the header's list (`Origin` to a `Vary`) unless the list has it already,
    /// or `*`: a token twice says nothing more.
    Append(HeaderName, HeaderValue),
    Remove(HeaderName),
}

impl HeaderEdit {
    /// The header the edit changes.
    pub fn name(&self) -> &HeaderName {
        match self {
            HeaderEdit::Set(n, _)
            | HeaderEdit::Default(n, _)
            | HeaderEdit::Append(n, _)
            | HeaderEdit::Remove(n) => n,
        }
    }
}

/// The consumer an auth policy authenticated.
#[derive(Clone, Debug)]
pub struct Consumer {
    pub id: Arc<str>,
    pub scopes: Arc<[String]>,
    /// The id as the `eg-consumer-id` header sent upstream (`None`: no header can hold it),
    /// made once with the consumer, not for each request.
    pub id_header: Option<HeaderValue>,
}

impl Consumer {
    pub fn new(id: Arc<str>, scopes: Arc<[String]>) -> Consumer {
        let id_header = HeaderValue::from_str(&id).ok();
        Consumer {
            id,
            scopes,
            id_header,
        }
    }
}

/// Where and how the proxy policy sends this request. The url of the service endpoint is
/// chosen per attempt: a retry goes to another one ([`ProxyPlan::retarget`]).
#[derive(Clone, Debug)]
pub struct ProxyPlan {
    /// The service endpoint's name.
    pub service: Arc<str>,
    pub endpoint: Arc<crate::upstream::ServiceEndpoint>,
    /// The url of this attempt, and those tried before (a bit each).
    pub target: usize,
    pub tried: u64,
    /// Attempts made so far (the first is 1).
    pub attempts: u32,
    /// Of those, the ones that sent the request again to the same url after a pooled
    /// connection broke (the upstream had closed it): they are not retries.
    pub resends: u32,
    /// The next attempt sends the request again to this attempt's url.
    pub resend_next: bool,
    /// Whether this attempt is counted in its url's requests in flight.
    pub counted: bool,
    /// The url answered with a status that clears its failures: cleared when the attempt
    /// ends, unless the answer's body broke first (see [`crate::upstream::attempt::answered`]).
    pub clears_at_end: bool,
    /// No url was available when the request was planned (the tile cache may still answer).
    pub unavailable: bool,
    /// Of those: the url chosen has no address (its name did not resolve).
    pub unresolved: bool,
    pub addr: SocketAddr,
    pub tls: bool,
    pub verify_cert: bool,
    /// Host header for the upstream (`changeOrigin`); `None` keeps the client's.
    pub host: Option<HeaderValue>,
    /// Path and query sent upstream.
    pub path: String,
    /// How the path is made from a url's own path: the client's URL (after `stripPath`),
    /// `prependPath`, `ignorePath`.
    pub path_recipe: PathRecipe,
    pub change_origin: bool,
    pub connect_timeout: Option<Duration>,
    pub read_timeout: Option<Duration>,
    /// When the whole exchange with the upstream must be over.
    pub deadline: Option<std::time::Instant>,
    /// How many of the exchange's upstream edits came before the proxy step: the request id
    /// header goes between those and the step's own (it is made only for a request that goes
    /// upstream).
    pub edits_before: usize,
    /// How many of them make the cache key: those before the proxy step and the step's own
    /// `headers`, not the `X-Forwarded-*` it adds (the client's own address and Host).
    pub edits_in_key: usize,
}

/// How the upstream path is made for a url (`http-proxy`'s rules).
#[derive(Clone, Debug)]
pub struct PathRecipe {
    pub url: String,
    pub prepend_path: bool,
    pub ignore_path: bool,
    /// For a cache fill (made for every consumer): the `cache` step whose key's query
    /// parameters are all the url keeps of its query (see [`crate::cache::key::neutral`]),
    /// applied when a path is made from it (a retry on another url; the first url's path is
    /// made neutral as the fill begins).
    pub neutral: Option<std::sync::Arc<crate::cache::policy::CacheRule>>,
}

impl PathRecipe {
    pub fn path_for(&self, base_path: &str) -> String {
        if self.ignore_path {
            return if self.prepend_path {
                base_path.to_string()
            } else {
                "/".into()
            };
        }
        let neutral = self
            .neutral
            .as_ref()
            .and_then(|rule| crate::cache::key::neutral(&self.url, rule));
        self.joined(base_path, neutral.as_deref().unwrap_or(&self.url))
    }

    /// The client's `url` (as it is, or made neutral) joined to the url's path (the join ends
    /// with `url`'s query as it is).
    fn joined(&self, base_path: &str, url: &str) -> String {
        // (Without the url's path, joined all the same: http-proxy joins it with nothing.)
        let base = if self.prepend_path { base_path } else { "" };
        crate::policies::proxy::url_join(base, url)
    }
}

impl ProxyPlan {
    /// Points this plan at url `i` of its service endpoint. `false` when the url has no
    /// resolved address.
    pub fn retarget(&mut self, i: usize) -> bool {
        // Read where the url is kept (no count taken on it: every thread would write it).
        let Some(addr) = self.endpoint.targets.get(i).and_then(|t| t.addr()) else {
            return false;
        };
        self.aim(i);
        self.addr = addr;
        true
    }

    /// Points this plan at url `i` whose name has no address: nothing can be sent to it, but
    /// its path and Host are the tile cache's key, so a stored tile may still answer. A plan
    /// that had no url available stays one (its failure is that, not the name's).
    pub fn aim_unresolved(&mut self, i: usize) {
        self.aim(i);
        self.unresolved = !self.unavailable;
        self.unavailable = true;
    }

    /// Whether no url was available for the request: none was asked (see
    /// [`Self::upstream_text`]).
    pub fn none_available(&self) -> bool {
        self.unavailable && !self.unresolved
    }

    /// The upstream as logs name it: the address of this attempt, or the url of a plan whose
    /// url has no address; `(none available)` when no url was (the url the plan was pointed at
    /// was named, as if tried).
    pub fn upstream_text(&self) -> String {
        if self.none_available() {
            return "(none available)".to_string();
        }
        match self.endpoint.targets.get(self.target) {
            Some(t) if self.unresolved => t.shown.clone(),
            _ => self.addr.to_string(),
        }
    }

    /// Where the client's query begins in `path` (its `?`), after the url's path and the url's
    /// own query if it has one; `path`'s length without one.
    pub fn query_at(&self) -> usize {
        let first = || memchr::memchr(b'?', self.path.as_bytes()).unwrap_or(self.path.len());
        let recipe = &self.path_recipe;
        let base_query = self
            .endpoint
            .targets
            .get(self.target)
            .is_some_and(|t| t.base_path.contains('?'));
        if !base_query || !recipe.prepend_path {
            return first();
        }
        if recipe.ignore_path {
            return self.path.len();
        }
        // (Rare: a url with a query of its own.) The path ends with the client's query as it
        // was joined: made neutral, or as it is.
        let neutral = recipe
            .neutral
            .as_ref()
            .and_then(|rule| crate::cache::key::neutral(&recipe.url, rule));
        let url = neutral.as_deref().unwrap_or(&recipe.url);
        let query = memchr::memchr(b'?', url.as_bytes()).map_or(0, |q| url.len() - q);
        self.path.len().saturating_sub(query)
    }

    /// Makes the path a cache fill's (see [`crate::cache::key::neutral`]): only the client's
    /// part of the query is cut down to the parameters that make the key — the url's own
    /// query (a provider's key, a style) reaches the upstream as the url has it, as it does
    /// without the cache (the url is in the key already: see `ServiceEndpoint::cache_name`).
    /// Its retries on other urls make their paths so too.
    pub fn make_neutral(&mut self, rule: std::sync::Arc<crate::cache::policy::CacheRule>) {
        // The client's query is the path's end, as it was joined: cut down in place (most
        // often nothing is left out, and the path stays as it is).
        if self.path_recipe.neutral.is_none() {
            let at = self.query_at();
            if let Some(path) = crate::cache::key::neutral_at(&self.path, at, &rule) {
                self.path = path;
            }
        }
        self.path_recipe.neutral = Some(rule);
    }

    /// The path, Host and scheme of url `i`, which must exist.
    fn aim(&mut self, i: usize) {
        let t = &self.endpoint.targets[i];
        let path = self.path_recipe.path_for(&t.base_path);
        let (tls, host) = (t.tls, self.change_origin.then(|| t.host_header.clone()));
        self.target = i;
        if i < 64 {
            self.tried |= 1 << i;
        }
        self.tls = tls;
        self.host = host;
        self.path = path;
    }
}

/// A response a policy produced itself.
#[derive(Clone, Debug)]
pub struct Reply {
    pub status: u16,
    pub content_type: Option<&'static str>,
    pub body: Bytes,
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

impl Reply {
    /// A text answer; for a status that has no body (204, 205, 304: RFC 9110 §15.3.5–6,
    /// §15.4.5), none, whatever text a step gave (a `terminate` with `statusCode: 204`).
    pub fn text(status: u16, body: impl Into<Bytes>) -> Reply {
        if matches!(status, 204 | 205 | 304) {
            return Reply::empty(status);
        }
        Reply {
            status,
            content_type: Some("text/plain; charset=utf-8"),
            body: body.into(),
            headers: Vec::new(),
        }
    }

    pub fn empty(status: u16) -> Reply {
        Reply {
            status,
            content_type: None,
            body: Bytes::new(),
            headers: Vec::new(),
        }
    }
}

/// Work a step must wait for (a Redis round trip, a bcrypt check on the blocking pool) without
/// holding up the worker's event loop. It resolves to what finishes the step back on the
/// request: a function of the exchange that records what the work found (a consumer, response
/// headers) and gives the step's real outcome.
pub type Deferred = std::pin::Pin<Box<dyn std::future::Future<Output = Finish> + Send>>;

/// The last part of a deferred step; see [`Deferred`].
pub type Finish = Box<dyn FnOnce(&mut Exchange) -> Outcome + Send>;

/// What a policy step decided.
pub enum Outcome {
    /// Go on with the next step.
    Continue,
    /// Answer the client now; the pipeline ends.
    Respond(Reply),
    /// The proxy policy filled in [`Exchange::proxy`]; the pipeline ends.
    Proxy,
    /// Pause this long, then go on with the next step (rate-limit's delay).
    Wait(Duration),
    /// Finish asynchronously; only policies that wait for I/O or for work elsewhere use it.
    Defer(Deferred),
}

impl std::fmt::Debug for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outcome::Continue => write!(f, "Continue"),
            Outcome::Respond(r) => write!(f, "Respond({})", r.status),
            Outcome::Proxy => write!(f, "Proxy"),
            Outcome::Wait(d) => write!(f, "Wait({d:?})"),
            Outcome::Defer(_) => write!(f, "Defer"),
        }
    }
}

/// Header edits made once the pipeline has run (see [`Exchange::late_response_edits`]); one
/// pointer while there are none (the exchange is moved about on every request).
#[derive(Default)]
pub struct LateEdits(Option<Box<LateList>>);

type LateList = smallvec::SmallVec<[Arc<crate::policies::header_values::AddRemove>; 2]>;

impl LateEdits {
    pub fn push(&mut self, edits: Arc<crate::policies::header_values::AddRemove>) {
        self.0.get_or_insert_with(Default::default).push(edits);
    }
}

impl std::fmt::Debug for LateEdits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LateEdits({})", self.0.as_ref().map_or(0, |v| v.len()))
    }
}

/// Per-request state the policies build up.
#[derive(Debug, Default)]
pub struct Exchange {
    pub request_id: crate::request_id::RequestId,
    /// The apiEndpoint of the route being run.
    pub endpoint: Option<Arc<ApiEndpoint>>,
    /// Whether the `metrics` policy asked for this request to be counted.
    pub metered: bool,
    pub consumer: Option<Consumer>,
    pub upstream_edits: Edits,
    pub response_edits: Edits,
    /// `response-transformer` steps that ran: their edits are made once the pipeline has run
    /// ([`Exchange::make_late_edits`]), after every other step's, with what the steps after
    /// them learnt (EG applies them as the head is written: a transformer before `key-auth`
    /// names the consumer, one before `rate-limit` removes its headers).
    pub late_response_edits: LateEdits,
    pub proxy: Option<ProxyPlan>,
    /// Set by a `cache` step: the tile cache may answer this request.
    pub cache: Option<crate::cache::CacheUse>,
    /// Set by a `compression` step: the level text responses are compressed at.
    pub compress: Option<u32>,
    /// A background refresh of a stale tile (stale-while-revalidate): the gateway's own
    /// request, made after a client's that was answered with the stale tile and counted. It
    /// runs the pipeline (the refresh is refused as the client's request would be now), but is
    /// not counted against a rate limit, not written by a `log` step and not counted as a
    /// request (`tollgate_cache_refreshes_total` counts it).
    pub refresh: bool,
}

impl Exchange {
    /// Makes the late response edits (the pipeline has run): after every other step's.
    #[inline]
    pub fn make_late_edits(&mut self, req: &Request<'_>) {
        if let Some(late) = self.late_response_edits.0.take() {
            self.make_these(req, *late);
        }
    }

    fn make_these(&mut self, req: &Request<'_>, late: LateList) {
        // EG wraps the head's writing once per transformer, the last innermost: the first
        // transformer's edits are made last, and win.
        for t in late.into_iter().rev() {
            let edits = t.edits(req, self);
            self.response_edits.extend(edits);
        }
    }

    /// A request header as the steps so far left it (EG's steps change `req.headers` itself:
    /// a `request-transformer`'s header is what a later step's `rateLimitBy` or log template
    /// reads): the client's value with the edits for the upstream applied in order.
    pub fn header_now<'a>(
        &'a self,
        req: &Request<'a>,
        name: &HeaderName,
    ) -> Option<std::borrow::Cow<'a, str>> {
        use std::borrow::Cow;
        let mut lines = req.headers.get_all(name).iter().peekable();
        let mut value: Option<Cow<'a, str>> = lines.next().map(node_text);
        // A header sent on several lines is what Node's parser makes of it, as an
        // expression reads it: one value, the lines joined (`cookie` with `; `, `set-cookie`,
        // an array in a string, with `,`, others with `, `), or the first line alone for those
        // it keeps once (`authorization`, `user-agent`…).
        if let (Some(first), Some(_)) = (&value, lines.peek()) {
            if !crate::wire::node_keeps_first(name) {
                let sep = match name {
                    n if n == http::header::COOKIE => "; ",
                    n if n == http::header::SET_COOKIE => ",",
                    _ => ", ",
                };
                let mut joined = first.to_string();
                for more in lines.map(node_text) {
                    joined.push_str(sep);
                    joined.push_str(&more);
                }
                value = Some(Cow::Owned(joined));
            }
        }
        // An HTTP/2 request names its host in `:authority`, most without a `host` line: what
        // Node's HTTP/2 compatibility layer gives EG's `req.headers.host` too.
        if value.is_none() && name == http::header::HOST {
            value = req.host.map(Cow::Borrowed);
        }
        for edit in self.upstream_edits.iter().filter(|e| e.name() == name) {
            match edit {
                HeaderEdit::Set(_, v) => value = Some(node_text(v)),
                HeaderEdit::Default(_, v) if value.is_none() => value = Some(node_text(v)),
                HeaderEdit::Default(..) => {}
                HeaderEdit::Append(_, v) => {
                    value = Some(match value {
                        Some(old) => Cow::Owned(format!("{old}, {}", node_text(v))),
                        None => node_text(v),
                    })
                }
                HeaderEdit::Remove(_) => value = None,
            }
        }
        value
    }
}

/// A header value as Node's parser gives it to EG: its bytes as Latin-1 text (a byte past
/// ASCII is the character of that number). Read as UTF-8 text or nothing, a `User-Agent`
/// with such a byte was `undefined` in a template, and every such client shared one
/// `rateLimitBy` window.
fn node_text(v: &HeaderValue) -> std::borrow::Cow<'_, str> {
    node_text_of(v.as_bytes())
}

/// Bytes as Latin-1 text (see [`node_text`]).
pub fn node_text_of(bytes: &[u8]) -> std::borrow::Cow<'_, str> {
    if bytes.is_ascii() {
        // (ASCII is UTF-8.)
        std::borrow::Cow::Borrowed(std::str::from_utf8(bytes).unwrap_or_default())
    } else {
        std::borrow::Cow::Owned(bytes.iter().map(|b| char::from(*b)).collect())
    }
}

/// Requests for unit tests of policies.
#[cfg(test)]
pub mod testing {
    use super::*;

    pub struct OwnedRequest {
        pub method: Method,
        pub url: String,
        pub headers: HeaderMap,
        pub endpoint: ApiEndpoint,
    }

    impl OwnedRequest {
        pub fn get(url: &str, headers: &[(&str, &str)], scopes: &[&str]) -> OwnedRequest {
            let mut map = HeaderMap::new();
            for (k, v) in headers {
                map.append(
                    http::header::HeaderName::from_bytes(k.as_bytes()).expect("name"),
                    HeaderValue::from_str(v).expect("value"),
                );
            }
            OwnedRequest {
                method: Method::GET,
                url: url.to_string(),
                headers: map,
                endpoint: ApiEndpoint {
                    name: Arc::from("test"),
                    scopes: scopes.iter().map(|s| s.to_string()).collect(),
                    metrics: crate::metrics::metrics().endpoint("test"),
                },
            }
        }

        pub fn req(&self) -> Request<'_> {
            let (path, query) = match self.url.split_once('?') {
                Some((p, q)) => (p, Some(q)),
                None => (self.url.as_str(), None),
            };
            Request {
                method: &self.method,
                path,
                query,
                url: &self.url,
                host: self.headers.get("host").and_then(|h| h.to_str().ok()),
                headers: &self.headers,
                client_ip: Some("127.0.0.1".parse().expect("ip")),
                server_port: Some(8080),
                tls: false,
                endpoint: &self.endpoint,
                strip_at: None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::OwnedRequest;
    use super::*;

    /// A header value past ASCII reads as Node gives it to EG: its bytes as Latin-1 (UTF-8's
    /// two bytes of `é` as `Ã©`), not as nothing.
    #[test]
    fn header_values_past_ascii_read_as_latin_1() {
        let owned = OwnedRequest::get("/a", &[("user-agent", "carte né")], &[]);
        let x = Exchange::default();
        let ua = http::header::USER_AGENT;
        assert_eq!(
            x.header_now(&owned.req(), &ua).as_deref(),
            Some("carte nÃ©")
        );
    }
}
