//! What a request does, whichever engine serves it: route and run the pipelines, build the
//! upstream request and the gateway's own responses, and account for the request when it ends
//! (metrics, counters, the access log, one line per failure: [`ended`]). Pingora's proxy
//! (`proxy.rs`) and the fast path (`fastpath/`) both call these.

mod ended;
pub mod expect;

pub use ended::{
    account, count_upstream_failure, failure_reply, final_status, refreshed, upstream_error_kind,
    upstream_error_label, Ended, Requested,
};

use std::net::IpAddr;

use http::header::{HeaderName, HeaderValue};
use pingora_core::{Error, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};

use crate::gateway::Gateway;
use crate::health::Health;
use crate::pipeline::context::{Exchange, HeaderEdit, Outcome, Reply, Request};
use crate::request_id::RequestId;
use crate::responses;
use crate::routing::Target;

/// The largest request head served (HTTP/1 heads are bounded as they are read; this bounds
/// the others).
const MAX_REQUEST_HEAD: usize = crate::listener::MAX_REQUEST_HEAD;

pub static EG_CONSUMER_ID: HeaderName = HeaderName::from_static("eg-consumer-id");

/// What the request phase decided.
pub enum Decision {
    Reply(Reply),
    /// Answer and close the connection: what follows the head cannot be trusted.
    Refuse(Reply),
    Proxy,
}

/// The request as the pipelines see it, beyond its head.
pub struct Facts<'a> {
    /// The method and headers (its `uri` is not read: see `target`).
    pub head: &'a RequestHeader,
    pub target: RequestTarget<'a>,
    pub client_ip: Option<IpAddr>,
    pub server_port: Option<u16>,
    pub tls: bool,
    /// The head has neither `Content-Length` nor `Transfer-Encoding` (its reader refused any):
    /// its framing needs no check.
    pub bodiless: bool,
}

/// A request's target, in the parts the pipelines read.
#[derive(Clone, Copy)]
pub struct RequestTarget<'a> {
    pub path: &'a str,
    pub query: Option<&'a str>,
    /// The path and query.
    pub url: &'a str,
    /// The authority of an absolute-form target.
    pub authority: Option<&'a str>,
}

impl<'a> RequestTarget<'a> {
    /// An origin-form target (a path and maybe a query) as `http`'s parser would split it.
    pub fn origin_form(url: &'a str) -> RequestTarget<'a> {
        // `?` is ASCII: both sides of it are text.
        let (path, query) = match memchr::memchr(b'?', url.as_bytes()) {
            Some(q) => (&url[..q], Some(&url[q + 1..])),
            None => (url, None),
        };
        RequestTarget {
            path,
            query,
            url,
            authority: None,
        }
    }

    /// The target of a head whose `uri` is the request's.
    pub fn of(head: &'a RequestHeader) -> RequestTarget<'a> {
        let uri = &head.uri;
        RequestTarget {
            path: uri.path(),
            query: uri.query(),
            url: uri
                .path_and_query()
                .map_or_else(|| uri.path(), |p| p.as_str()),
            authority: uri.authority().map(|a| a.as_str()),
        }
    }
}

/// Whether a Host holds only the bytes a host has ([`HOST_BYTE`]) and its port, if it names
/// one, is a number. (One pass: the port is looked at only in a Host with a `:` or `[`.)
fn host_is_valid(host: &[u8]) -> bool {
    let mut classes = 0;
    for &b in host {
        let class = HOST_BYTE[usize::from(b)];
        if class == 0 {
            return false;
        }
        classes |= class;
    }
    classes & PORT_OR_LITERAL == 0 || port_is_number(host)
}

/// [`HOST_BYTE`]'s class of a byte that is a host's (`0`: one that is not) ...
const IN_HOST: u8 = 1;
/// ... and of `:` and `[`, which begin a port or an IP literal.
const PORT_OR_LITERAL: u8 = 2;

/// Whether the port a Host names, if it names one, is digits (RFC 3986 §3.2.3: it may be
/// empty); an IPv6 literal's colons are within its brackets.
fn port_is_number(host: &[u8]) -> bool {
    // (Byte by byte: a host is a few bytes, less than `memchr`'s set-up.)
    let after_name = match host.first() {
        Some(b'[') => match host.iter().position(|b| *b == b']') {
            Some(i) => &host[i + 1..],
            None => return false,
        },
        _ => match host.iter().position(|b| *b == b':') {
            Some(i) => &host[i..],
            None => return true,
        },
    };
    match after_name.split_first() {
        None => true,
        Some((b':', port)) => port.iter().all(u8::is_ascii_digit),
        Some(_) => false,
    }
}

/// The bytes a Host may hold (RFC 3986's reg-name, an IP literal's brackets and colons, a
/// port), by class: [`IN_HOST`], with [`PORT_OR_LITERAL`] for `:` and `[`; `0` for others.
static HOST_BYTE: [u8; 256] = {
    let mut class = [0; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        let ok = c.is_ascii_alphanumeric()
            || matches!(
                c,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b';'
                    | b'='
                    | b':'
                    | b'['
                    | b']'
                    | b'%'
            );
        class[b] = match (ok, c) {
            (false, _) => 0,
            (true, b':' | b'[') => IN_HOST | PORT_OR_LITERAL,
            (true, _) => IN_HOST,
        };
        b += 1;
    }
    class
};

/// Routes the request and runs pipelines until one responds or proxies.
pub async fn decide(
    gw: &Gateway,
    health: &Health,
    facts: &Facts<'_>,
    x: &mut Exchange,
) -> Decision {
    let head = facts.head;
    let method = &head.method;
    let RequestTarget {
        path,
        query,
        url,
        authority,
    } = facts.target;
    let host_line = head.headers.get(http::header::HOST);
    let host = host_line.and_then(|h| h.to_str().ok()).or(authority);
    let head_size = url.len()
        + head
            .headers
            .iter()
            .map(|(n, v)| n.as_str().len() + v.len() + 4)
            .sum::<usize>();
    // (HTTP/1 heads are bounded as they are read; HTTP/2 ones in lines only here.)
    if head_size > MAX_REQUEST_HEAD || head.headers.len() > crate::listener::MAX_HEADER_LINES {
        return Decision::Reply(Reply::text(431, "Request Header Fields Too Large"));
    }
    let framing = if facts.bodiless {
        None
    } else {
        crate::framing::problem(&head.headers)
    };
    if let Some((status, why)) = framing {
        log::debug!("refused a request: {why}");
        return Decision::Refuse(match status {
            501 => Reply::text(501, "Not Implemented"),
            _ => Reply::text(400, "Bad Request"),
        });
    }
    // A target neither origin-form (`/…`), absolute-form nor `*` (two spaces after the method,
    // `foo/bar`, `x:y://h/`): Pingora's reader anchors it to `/`, which would route as what the
    // client did not ask for. Refused, as nginx does.
    let raw = head.raw_path();
    let absolute = |scheme: &[u8]| {
        raw.get(..scheme.len())
            .is_some_and(|s| s.eq_ignore_ascii_case(scheme))
    };
    if !raw.is_empty()
        && raw[0] != b'/'
        && authority.is_none()
        && raw != b"*"
        && !absolute(b"http://")
        && !absolute(b"https://")
    {
        log::debug!("refused a request: a target that is no path");
        return Decision::Refuse(Reply::text(400, "Bad Request"));
    }
    if path == gw.healthcheck_path
        && (*method == http::Method::GET || *method == http::Method::HEAD)
    {
        if query.is_some_and(|q| {
            q.split('&')
                .any(|p| p == "ready" || p.starts_with("ready="))
        }) {
            return Decision::Reply(responses::readiness(health.not_ready()));
        }
        return Decision::Reply(responses::healthy());
    }
    // RFC 9112 §3.2: an HTTP/1.1 request names its host, once (a health probe may not). (A
    // head without a name twice has no second Host: most heads are looked at no further.)
    let two_hosts = head.headers.len() != head.headers.keys_len()
        && head
            .headers
            .get_all(http::header::HOST)
            .iter()
            .nth(1)
            .is_some();
    if two_hosts || (host_line.is_none() && head.version == http::Version::HTTP_11) {
        log::debug!("refused a request: no Host, or two");
        return Decision::Refuse(Reply::text(400, "Bad Request"));
    }
    // A Host that is no host (`a b/c`): routed by host globs, forwarded, and part of a tile's
    // key when it reaches the upstream. Refused, as nginx does; so is one whose port is no
    // number (`h:abc`, `a:b:c`; RFC 9112 §3.2: an invalid Host).
    // (The Host line's bytes, else the target's authority: HTTP/2's `:authority`, which
    // `http`'s parser takes with a port that is no number.)
    let named_host = host_line
        .map(|h| h.as_bytes())
        .or(authority.map(str::as_bytes));
    if named_host.is_some_and(|h| !host_is_valid(h)) {
        log::debug!("refused a request: a Host that is no host, or whose port is no number");
        return Decision::Refuse(Reply::text(400, "Bad Request"));
    }
    // A method in lower case (`delete`): an apiEndpoint's `methods` and a `method` condition
    // name methods in capitals, so it would pass by them, while upstreams that read methods
    // without case act on it. Refused, as EG's parser (Node's) refuses it.
    if method.as_str().bytes().any(|b| b.is_ascii_lowercase()) {
        log::debug!("refused a request: a method in lower case");
        return Decision::Refuse(Reply::text(400, "Bad Request"));
    }
    // A `.` or `..` segment would be resolved by the upstream to another path than the one
    // routed and authorised here (`/wmts/../k2/x` under the wmts scope): refused, as no map
    // client sends one.
    let shape = crate::wire::path_shape(path);
    if shape.dot_segment {
        log::debug!("refused a request: a dot segment in its path");
        return Decision::Refuse(Reply::text(400, "Bad Request"));
    }
    // Repeated slashes are made one (`//admin/x` is `/admin/x`), as the proxy's join makes
    // them one upstream, and escapes of unreserved characters decoded (`/%61dmin/x`), as an
    // upstream decodes them: routed as it came, such a spelling missed its endpoint (and its
    // scopes), fell to a catch-all route, and reached the endpoint's path upstream
    // unauthorised. Routed and forwarded in that form.
    let collapsed = shape
        .other_form
        .then(|| crate::wire::normalised_target(url))
        .flatten();
    let (path, url) = match &collapsed {
        Some(c) => {
            let end = memchr::memchr(b'?', c.as_bytes()).unwrap_or(c.len());
            (&c[..end], c.as_str())
        }
        None => (path, url),
    };
    let (client_ip, server_port, tls) = (facts.client_ip, facts.server_port, facts.tls);
    let mut from = 0;
    while let Some(ri) = gw.router.find(from, host, path, method) {
        let route = &gw.router.routes()[ri];
        let Target::Pipeline(pi) = route.target else {
            return Decision::Reply(responses::not_found());
        };
        let req = Request {
            method,
            path,
            query,
            url,
            host,
            headers: &head.headers,
            client_ip,
            server_port,
            tls,
            endpoint: &gw.endpoints[route.endpoint],
            strip_at: route.path.strip_at,
        };
        let pipeline = &gw.pipelines[pi];
        x.endpoint = Some(gw.endpoints[route.endpoint].clone());
        if from > 0 {
            x.request_id = RequestId::default(); // EG makes a new context per route match
        }
        let mut step = 0;
        loop {
            let (mut outcome, next) = pipeline.run(step, &req, x);
            if let Outcome::Defer(work) = outcome {
                let finish = work.await;
                outcome = match finish(x) {
                    Outcome::Continue if next < pipeline.steps.len() => {
                        step = next;
                        continue;
                    }
                    // A delay (`rate-limit` counted in Redis): the pipeline goes on after it.
                    wait @ Outcome::Wait(_) => wait,
                    other => {
                        // (The pipeline ends here: the deferred step answered.)
                        x.make_late_edits(&req);
                        other
                    }
                };
            }
            match outcome {
                Outcome::Respond(reply) => return Decision::Reply(reply),
                Outcome::Proxy => return Decision::Proxy,
                Outcome::Wait(d) => {
                    tokio::time::sleep(d).await;
                    step = next;
                }
                Outcome::Continue | Outcome::Defer(_) => break,
            }
        }
        from = ri + 1;
    }
    Decision::Reply(responses::cannot(method.as_str(), path))
}

/// Request and response headers of Pingora both take edits.
pub trait EditableHeaders {
    fn has(&self, name: &HeaderName) -> bool;
    fn set(&mut self, name: HeaderName, value: HeaderValue) -> Result<()>;
    fn add(&mut self, name: HeaderName, value: HeaderValue) -> Result<()>;
    fn remove(&mut self, name: &HeaderName);
}

macro_rules! editable {
    ($t:ty) => {
        impl HeaderMapped for $t {
            fn headers(&self) -> &http::HeaderMap {
                &self.headers
            }
        }
        impl EditableHeaders for $t {
            fn has(&self, name: &HeaderName) -> bool {
                self.headers.contains_key(name)
            }
            fn set(&mut self, name: HeaderName, value: HeaderValue) -> Result<()> {
                self.insert_header(name, value)
            }
            fn add(&mut self, name: HeaderName, value: HeaderValue) -> Result<()> {
                self.append_header(name, value).map(|_| ())
            }
            fn remove(&mut self, name: &HeaderName) {
                self.remove_header(name);
            }
        }
    };
}
editable!(RequestHeader);
editable!(ResponseHeader);

/// [`crate::wire::HOP_BY_HOP`] as header names.
static HOP_BY_HOP: std::sync::LazyLock<[HeaderName; 6]> =
    std::sync::LazyLock::new(|| crate::wire::HOP_BY_HOP.map(HeaderName::from_static));

/// Pingora's request and response heads: their headers in a map.
pub trait HeaderMapped: EditableHeaders {
    fn headers(&self) -> &http::HeaderMap;
}

/// Removes the connection's own headers, and those its `Connection` header names.
pub fn strip_hop_by_hop(head: &mut impl HeaderMapped) {
    let headers = head.headers();
    if !HOP_BY_HOP.iter().any(|h| headers.contains_key(h)) {
        return;
    }
    let named: Vec<HeaderName> = crate::wire::connection_tokens(headers)
        .filter_map(|t| HeaderName::from_bytes(t).ok())
        .collect();
    for h in HOP_BY_HOP.iter().chain(named.iter()) {
        head.remove(h);
    }
}

pub fn apply_edits<'a>(
    target: &mut impl EditableHeaders,
    edits: impl IntoIterator<Item = &'a HeaderEdit>,
) -> Result<()> {
    for edit in edits {
        match edit {
            HeaderEdit::Set(n, v) => target.set(n.clone(), v.clone())?,
            HeaderEdit::Default(n, v) => {
                if !target.has(n) {
                    target.set(n.clone(), v.clone())?;
                }
            }
            HeaderEdit::Append(n, v) => target.add(n.clone(), v.clone())?,
            HeaderEdit::Remove(n) => target.remove(n),
        }
    }
    Ok(())
}

/// The headers of a gateway-made response in their order, as a list: what its head is made
/// of (on the fast path written as it is, without Pingora's two header maps). Edits apply to
/// it as to Pingora's heads: setting a header replaces its values where its first one was.
#[derive(Debug, Default)]
pub struct ReplyLines(pub smallvec::SmallVec<[(HeaderName, HeaderValue); 8]>);

impl EditableHeaders for ReplyLines {
    fn has(&self, name: &HeaderName) -> bool {
        self.0.iter().any(|(n, _)| n == name)
    }
    fn set(&mut self, name: HeaderName, value: HeaderValue) -> Result<()> {
        match self.0.iter().position(|(n, _)| *n == name) {
            Some(first) => {
                // The first keeps its place with the new value; the others go.
                self.0[first].1 = value;
                let mut i = first + 1;
                while i < self.0.len() {
                    if self.0[i].0 == name {
                        self.0.remove(i);
                    } else {
                        i += 1;
                    }
                }
            }
            None => self.0.push((name, value)),
        }
        Ok(())
    }
    fn add(&mut self, name: HeaderName, value: HeaderValue) -> Result<()> {
        self.0.push((name, value));
        Ok(())
    }
    fn remove(&mut self, name: &HeaderName) {
        self.0.retain(|(n, _)| n != name);
    }
}

/// The headers of a gateway-made response, with the header edits the pipeline collected: its
/// `Content-Type`, its own headers, the edits, and a `Content-Length` unless an edit gave one.
pub fn reply_lines(reply: &Reply, edits: &[HeaderEdit]) -> ReplyLines {
    let mut lines = ReplyLines::default();
    if let Some(ct) = reply.content_type {
        lines
            .0
            .push((http::header::CONTENT_TYPE, HeaderValue::from_static(ct)));
    }
    for (n, v) in &reply.headers {
        let _ = lines.set(n.clone(), v.clone());
    }
    let _ = apply_edits(&mut lines, edits);
    // A 204 or 304 gets no length of the gateway's (RFC 9110 §8.6; `cors`'s preflight says
    // `Content-Length: 0` itself, as EG's does); a 205's is 0.
    if !lines.has(&http::header::CONTENT_LENGTH) && !matches!(reply.status, 204 | 304) {
        lines.0.push((
            http::header::CONTENT_LENGTH,
            HeaderValue::from(reply.body.len()),
        ));
    }
    lines
}

/// The head of a gateway-made response, with the header edits the pipeline collected (see
/// [`reply_lines`]).
pub fn reply_header(reply: &Reply, edits: &[HeaderEdit]) -> Result<ResponseHeader> {
    let lines = reply_lines(reply, edits);
    let mut resp = ResponseHeader::build(reply.status, Some(lines.0.len()))?;
    for (n, v) in lines.0 {
        resp.append_header(n, v)?;
    }
    Ok(resp)
}

/// Settles an HTTP/2 request's head as an HTTP/1 one would be read, or refuses it as
/// malformed (RFC 9113 §8.2.1, §8.3.1): a `:path` that is not absolute (`?a=1`; `*` only for
/// `OPTIONS`), a field value with whitespace at either end (HTTP/1's parser trims it, so a
/// credential with a trailing space authenticated there but not here). Its `cookie` fields,
/// which HTTP/2 clients send one per cookie, are joined into one with `; ` for the HTTP/1
/// upstream (RFC 9113 §8.2.3).
pub fn settle_http2_head(head: &mut RequestHeader) -> Result<(), Reply> {
    let path = head.raw_path();
    let absolute =
        path.first() == Some(&b'/') || (path == b"*" && head.method == http::Method::OPTIONS);
    let padded = |v: &HeaderValue| {
        let b = v.as_bytes();
        matches!(b.first(), Some(b' ' | b'\t')) || matches!(b.last(), Some(b' ' | b'\t'))
    };
    if !absolute || head.headers.values().any(padded) {
        return Err(Reply::text(400, "Bad Request"));
    }
    let cookies = head.headers.get_all(http::header::COOKIE);
    if cookies.iter().nth(1).is_some() {
        let mut joined = Vec::new();
        for c in cookies {
            if !joined.is_empty() {
                joined.extend_from_slice(b"; ");
            }
            joined.extend_from_slice(c.as_bytes());
        }
        let joined =
            HeaderValue::from_bytes(&joined).map_err(|_| Reply::text(400, "Bad Request"))?;
        head.insert_header(http::header::COOKIE, joined)
            .map_err(|_| Reply::text(400, "Bad Request"))?;
    }
    Ok(())
}

/// Removes the headers the request's `Connection` names (but the connection's own, which the
/// upstream request leaves out later): they go no further than the gateway (RFC 9110 §7.6.1),
/// so routing, authentication and a tile's key must not read them either — left until the
/// upstream request was made, `Connection: X-Forwarded-Host` had a tile fetched without the
/// header stored as the answer with it, and `Connection: Host` routed by a Host the upstream
/// never got. Done as the head is read, on both paths (a head the fast path reads itself has
/// a `Connection` of `close` or `keep-alive` only).
pub fn drop_connection_named(head: &mut RequestHeader) {
    if !head.headers.contains_key(http::header::CONNECTION) {
        return;
    }
    for name in crate::wire::named_by_connection(&head.headers) {
        head.remove_header(&name);
    }
}

/// Turns the client's request head into the upstream's: the plan's path and Host, the
/// pipeline's edits, never a consumer id the client sent, and for a cache fill (made for every
/// consumer) none of the headers that carry credentials (the cache step's
/// [`crate::cache::policy::CacheRule::secret_headers`]; a header a step sets is sent, and is
/// part of the key).
pub fn upstream_request(upstream: &mut RequestHeader, x: &Exchange, filling: bool) -> Result<()> {
    // A client never speaks for the gateway about who the consumer is: nor with `_` for `-`
    // (`eg_consumer_id`), which a WSGI or CGI upstream reads as the same header.
    if upstream.headers.contains_key(&EG_CONSUMER_ID) {
        upstream.remove_header(&EG_CONSUMER_ID);
    }
    let posing: smallvec::SmallVec<[HeaderName; 1]> = upstream
        .headers
        .keys()
        .filter(|n| poses_as_consumer_id(n.as_str()))
        .cloned()
        .collect();
    for name in &posing {
        upstream.remove_header(name);
    }
    // A header sent on several lines that Node's parser keeps once (`authorization`, …) goes
    // upstream as its first line, as EG forwards it: the upstream never reads a credential
    // authentication did not. (Most heads repeat no name: two lengths compared.)
    if upstream.headers.len() != upstream.headers.keys_len() {
        keep_first_lines(upstream)?;
    }
    if filling {
        let secret = x
            .cache
            .as_ref()
            .map_or(&[http::header::AUTHORIZATION][..], |u| {
                &u.rule.secret_headers[..]
            });
        // One pass over the request's few headers first: most tile requests carry none.
        if upstream.headers.keys().any(|n| secret.contains(n)) {
            for name in secret {
                upstream.remove_header(name);
            }
        }
        // Nor the credentials in the client's target a proxy in front passes on.
        if let Some(u) = &x.cache {
            crate::cache::forwarding::neutralise(upstream, &u.rule);
        }
    }
    if let Some(plan) = &x.proxy {
        let uri = plan
            .path
            .parse::<http::Uri>()
            .map_err(|e| Error::because(ErrorType::InvalidHTTPHeader, "upstream path", e))?;
        upstream.set_uri(uri);
    }
    match &x.proxy {
        Some(plan) => {
            let (before, own) = x
                .upstream_edits
                .split_at(plan.edits_before.min(x.upstream_edits.len()));
            apply_upstream_edits(upstream, before, filling)?;
            if let Ok(id) = HeaderValue::from_str(x.request_id.get()) {
                upstream.insert_header(crate::policies::proxy::REQUEST_ID.clone(), id)?;
            }
            apply_upstream_edits(upstream, own, filling)?;
            // As EG's proxy: `changeOrigin` sets the url's Host after every step's edits; a
            // request left without one (a step removed it) gets the url's, as Node's client
            // gives it. Never a request without Host.
            match &plan.host {
                Some(host) => upstream.insert_header(http::header::HOST, host.clone())?,
                None if !upstream.headers.contains_key(http::header::HOST) => {
                    let url = &plan.endpoint.targets[plan.target];
                    upstream.insert_header(http::header::HOST, url.host_header.clone())?;
                }
                None => {}
            }
        }
        None => apply_upstream_edits(upstream, &x.upstream_edits, filling)?,
    }
    Ok(())
}

/// Leaves only the first line of each header the head repeats that Node keeps once
/// ([`crate::wire::node_keeps_first`]).
fn keep_first_lines(head: &mut RequestHeader) -> Result<()> {
    let repeated: smallvec::SmallVec<[(HeaderName, HeaderValue); 1]> = head
        .headers
        .keys()
        .filter(|n| crate::wire::node_keeps_first(n))
        .filter_map(|n| {
            let mut lines = head.headers.get_all(n).iter();
            let first = lines.next()?.clone();
            lines.next().map(|_| (n.clone(), first))
        })
        .collect();
    for (name, first) in repeated {
        head.insert_header(name, first)?;
    }
    Ok(())
}

/// Whether a header name is `eg-consumer-id` with a `_` for one of its `-`.
fn poses_as_consumer_id(name: &str) -> bool {
    let want = EG_CONSUMER_ID.as_str().as_bytes();
    name.len() == want.len()
        && name.contains('_')
        && name
            .bytes()
            .zip(want)
            .all(|(a, b)| a == *b || (a == b'_' && *b == b'-'))
}

/// Applies the pipeline's `edits` to the upstream request; for a cache fill (made for every
/// consumer) without those of `eg-consumer-id`, which names one.
fn apply_upstream_edits(
    upstream: &mut RequestHeader,
    edits: &[HeaderEdit],
    filling: bool,
) -> Result<()> {
    apply_edits(
        upstream,
        edits
            .iter()
            .filter(|e| !filling || *e.name() != EG_CONSUMER_ID),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_consumer_id_with_underscores_is_one() {
        for name in ["eg_consumer_id", "eg-consumer_id", "eg_consumer-id"] {
            assert!(poses_as_consumer_id(name), "{name}");
        }
        for name in [
            "eg-consumer-id",
            "eg_consumer_idx",
            "x_consumer_id",
            "eg_request_id",
        ] {
            assert!(!poses_as_consumer_id(name), "{name}");
        }
    }

    #[test]
    fn a_hosts_port_is_digits() {
        for ok in [
            "h",
            "h.example",
            "h:8080",
            "h:",
            "[::1]",
            "[::1]:80",
            "[::1]:",
        ] {
            assert!(port_is_number(ok.as_bytes()), "{ok}");
            assert!(host_is_valid(ok.as_bytes()), "{ok}");
        }
        for bad in [
            "h:abc", "h:80:81", "h:8a", "[::1", "[::1]x", "[::1]:x", "a:b:c",
        ] {
            assert!(!port_is_number(bad.as_bytes()), "{bad}");
            assert!(!host_is_valid(bad.as_bytes()), "{bad}");
        }
        assert!(!host_is_valid(b"a b/c"));
    }

    /// Each name's values in order, names sorted.
    fn by_name(pairs: impl Iterator<Item = (String, String)>) -> Vec<(String, Vec<String>)> {
        let mut out: Vec<(String, Vec<String>)> = Vec::new();
        for (n, v) in pairs {
            match out.iter_mut().find(|(m, _)| *m == n) {
                Some((_, vs)) => vs.push(v),
                None => out.push((n, vec![v])),
            }
        }
        out.sort();
        out
    }

    fn edit(op: u8, name: &str, value: &str) -> HeaderEdit {
        let (n, v) = (
            HeaderName::from_bytes(name.as_bytes()).expect("name"),
            HeaderValue::from_str(value).expect("value"),
        );
        match op % 4 {
            0 => HeaderEdit::Set(n, v),
            1 => HeaderEdit::Default(n, v),
            2 => HeaderEdit::Append(n, v),
            _ => HeaderEdit::Remove(n),
        }
    }

    proptest::proptest! {
        /// A reply's headers as a list are those Pingora's header maps make of the same reply
        /// and edits: the same names, each with the same values in the same order.
        #[test]
        fn reply_lines_take_edits_as_pingoras_heads_do(
            own in proptest::collection::vec((0..3usize, "[a-c]"), 0..3),
            edits in proptest::collection::vec((0..4u8, 0..4usize, "[a-c]"), 0..8),
        ) {
            let names = ["x-a", "x-b", "content-type", "content-length"];
            let mut reply = Reply::text(401, "Unauthorized");
            for (n, v) in &own {
                reply.headers.push((
                    HeaderName::from_static(names[*n]),
                    HeaderValue::from_str(v).expect("value"),
                ));
            }
            let edits: Vec<HeaderEdit> =
                edits.iter().map(|(op, n, v)| edit(*op, names[*n], v)).collect();
            // Pingora's heads, as the reply was made before the list.
            let mut resp = ResponseHeader::build(reply.status, None).expect("status");
            if let Some(ct) = reply.content_type {
                resp.insert_header(http::header::CONTENT_TYPE, ct).expect("ct");
            }
            for (n, v) in &reply.headers {
                resp.insert_header(n.clone(), v.clone()).expect("header");
            }
            apply_edits(&mut resp, &edits).expect("edits");
            if resp.headers.get(http::header::CONTENT_LENGTH).is_none() {
                resp.insert_header(http::header::CONTENT_LENGTH, reply.body.len()).expect("cl");
            }
            let text = |n: &HeaderName, v: &HeaderValue| {
                (n.as_str().to_string(), v.to_str().expect("text").to_string())
            };
            let expected = by_name(resp.headers.iter().map(|(n, v)| text(n, v)));
            let lines = reply_lines(&reply, &edits);
            proptest::prop_assert_eq!(by_name(lines.0.iter().map(|(n, v)| text(n, v))), expected.clone());
            let header = reply_header(&reply, &edits).expect("head");
            proptest::prop_assert_eq!(by_name(header.headers.iter().map(|(n, v)| text(n, v))), expected);
        }
    }
}
