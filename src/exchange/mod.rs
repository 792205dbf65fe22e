//! What a request does, whichever engine serves it: route and run the pipelines, build the
//! upstream request and the gateway's own responses, and account for the request when it ends
//! (metrics, counters, the access log, one line per failure: [`ended`]). Pingora's proxy
//! (`proxy.rs`) and the fast path (`fastpath/`) both call these.

mod ended;
pub mod expect;
mod headers;
mod upstream_head;

pub use ended::{
    account, count_upstream_failure, failure_reply, final_status, refreshed, upstream_error_kind,
    upstream_error_label, Ended, Requested,
};
pub use headers::{
    apply_edits, reply_header, reply_lines, strip_hop_by_hop, EditableHeaders, HeaderMapped,
    ReplyLines,
};
pub use upstream_head::{drop_connection_named, settle_http2_head, upstream_request};

use std::net::IpAddr;

use http::header::HeaderName;
use pingora_http::RequestHeader;

use crate::gateway::Gateway;
use crate::health::Health;
use crate::pipeline::context::{Exchange, Outcome, Reply, Request};
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

/// The methods Node's HTTP parser (EG's) takes, beyond the common ones (`http.METHODS` of
/// Node 20); any other it answers `400` before EG sees the request.
const NODE_EXTENSION_METHODS: [&str; 26] = [
    "ACL",
    "BIND",
    "CHECKOUT",
    "COPY",
    "LINK",
    "LOCK",
    "M-SEARCH",
    "MERGE",
    "MKACTIVITY",
    "MKCALENDAR",
    "MKCOL",
    "MOVE",
    "NOTIFY",
    "PROPFIND",
    "PROPPATCH",
    "PURGE",
    "QUERY",
    "REBIND",
    "REPORT",
    "SEARCH",
    "SOURCE",
    "SUBSCRIBE",
    "UNBIND",
    "UNLINK",
    "UNLOCK",
    "UNSUBSCRIBE",
];

/// Whether Node's HTTP parser takes `method` (in capitals, as it must be).
fn node_knows(method: &http::Method) -> bool {
    use http::Method;
    matches!(
        *method,
        Method::GET
            | Method::HEAD
            | Method::POST
            | Method::PUT
            | Method::DELETE
            | Method::OPTIONS
            | Method::PATCH
            | Method::CONNECT
            | Method::TRACE
    ) || NODE_EXTENSION_METHODS.contains(&method.as_str())
}

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
    if gw.healthcheck.matches(path)
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
    // without case act on it. Refused, as EG's parser (Node's) refuses it, and so is a
    // method Node's parser does not know (`FOO` reached the upstream).
    if !node_knows(method) {
        log::debug!("refused a request: a method EG's parser does not know (or in lower case)");
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
    // A `%` that escapes nothing (`/wmts/%zz`): no URI has it; EG (its `decodeURIComponent`)
    // and nginx refuse it, where it was routed, authorised and sent upstream as it came.
    if shape.bad_escape {
        log::debug!("refused a request: a `%` in its path that escapes nothing");
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
