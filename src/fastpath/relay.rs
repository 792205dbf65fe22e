//! The fast path's exchange with the upstream: attempts (retries as the service endpoint
//! allows them), the request head, the response head and body relayed to the client (and
//! stored on the way by a cache fill), the connection kept for the next request when the
//! exchange ended cleanly.

use std::time::Instant;

use futures_util::FutureExt;

use http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
use pingora_core::connectors::TransportConnector;
use pingora_core::protocols::http::v1::client::HttpSession as Upstream;
use pingora_core::protocols::http::v1::server::HttpSession;
use pingora_core::protocols::Stream;
use pingora_core::upstreams::peer::Peer;
use pingora_core::{Error, ErrorType};
use pingora_http::{RequestHeader, ResponseHeader};

use super::{pool, Finish};
use crate::cache::fill::Fill;
use crate::exchange::{self, apply_edits};
use crate::pipeline::context::Exchange;
use crate::upstream::attempt;

/// Proxies the request to the plan's upstream and relays the answer to the client. Every
/// failure ends here: before the response head, as a 502 (or the status the error carries);
/// after it, by closing the client's connection.
pub async fn proxy(
    connector: &TransportConnector,
    s: &mut HttpSession,
    x: &mut Exchange,
    end: &mut Finish,
    fill: Option<Fill>,
) {
    let upstream_started = Instant::now();
    let client = s.req_header();
    // (The path and query: `consistent-hash` hashes both.)
    let url = client.uri.path_and_query().map_or("/", |u| u.as_str());
    let asked = connect_and_ask(connector, client, url, x, fill.is_some()).await;
    relay(s, asked, x, end, fill, upstream_started).await;
}

/// The upstream connection a request was sent on (with its answer's head read) and its pool
/// key, or why that failed.
pub type Asked = Result<(Upstream, u64), Box<Error>>;

/// Relays the upstream's answer to the request (or the failure to get one) to the client.
pub async fn relay(
    s: &mut HttpSession,
    asked: Asked,
    x: &mut Exchange,
    end: &mut Finish,
    mut fill: Option<Fill>,
    upstream_started: Instant,
) {
    let (mut up, key) = match asked {
        Ok(asked) => asked,
        // No answer's head came: no upstream time (as on Pingora's path).
        Err(e) => {
            fail(s, x, e, end).await;
            return;
        }
    };
    // Informational answers go on to the client (to an HTTP/1.1 one) as they come.
    while let Some(status @ 100..=199) = up.resp_header().map(|r| r.status.as_u16()) {
        if status == 101 {
            let e = upstream_error(
                ErrorType::InvalidHTTPHeader,
                "101 to a request without Upgrade",
            );
            fail(s, x, e, end).await;
            return;
        }
        if s.req_header().version == http::Version::HTTP_11 {
            let Some(info) = up.resp_header() else {
                break;
            };
            let mut info = Box::new(info.clone());
            if response_head(&mut info, s.req_header(), &x.response_edits).is_ok() {
                if let Err(e) = Box::pin(s.write_response_header(info)).await {
                    log::debug!("client went away: {e}");
                    s.set_server_keepalive(None);
                    return;
                }
            }
        }
        if let Err(mut e) = read_head(&mut up).await {
            e.as_up();
            fail(s, x, e, end).await;
            return;
        }
    }
    end.upstream_time = Some(upstream_started.elapsed());
    let Some(resp) = up.resp_header() else {
        return;
    };
    // Where a body of declared length ends: the upstream's part is done there.
    let declared = match resp.headers.contains_key(TRANSFER_ENCODING) {
        true => None,
        false => crate::cache::store::content_length(resp),
    };
    let mut received = 0;
    let mut resp = Box::new(resp.clone());
    let judged = fill.as_mut().map(|f| {
        let sent = crate::cache::fill::Sent {
            req: s.req_header(),
            edits: &x.upstream_edits,
        };
        f.head(&mut resp, sent, || crate::cache::exception::asks_for_map(x))
    });
    if let Some(plan) = &mut x.proxy {
        let reported = fill.as_ref().is_some_and(|f| f.reported());
        attempt::answered(plan, resp.status.as_u16(), reported);
    }
    if let Some(Err(e)) = judged {
        fail(s, x, e, end).await;
        return;
    }
    // (A stop that began while the upstream was asked: the answer says so.)
    if crate::listener::leaving() {
        s.set_server_keepalive(None);
    }
    let close_delimited = match response_head(&mut resp, s.req_header(), &x.response_edits) {
        // The session says `Connection: close` when it is told before the head.
        Ok(true) => {
            s.set_server_keepalive(None);
            true
        }
        Ok(false) => false,
        Err(e) => {
            fail(s, x, e, end).await;
            return;
        }
    };
    if let Err(mut e) = s.write_response_header(resp).await {
        e.as_down();
        log::debug!("client went away: {e}");
        s.set_server_keepalive(None);
        return;
    }
    if close_delimited {
        // Let go without its end (a client that took nothing for the send timeout), the
        // connection is reset: closed in order, the part sent would look whole.
        crate::listener::io::ends_with_close(s.stream());
    }
    // The body, chunk by chunk as it arrives: written before the next is read.
    loop {
        let chunk = match up.read_body_ref().await {
            // (Empty after the last chunk when a trailer follows it: written, an empty chunk
            // is the body's end, and the session's own end came after it.)
            Ok(Some([])) => continue,
            Ok(Some(chunk)) => chunk,
            Ok(None) => break,
            Err(mut e) => {
                e.as_up();
                attempt::body_broke(&mut x.proxy);
                s.set_server_keepalive(None);
                end.error = Some(e);
                if close_delimited {
                    // Ended normally, a body cut short would look whole: a reset.
                    crate::listener::io::cut_short(s.stream());
                }
                return;
            }
        };
        if let Err(e) = overdue(x) {
            attempt::body_overdue(&mut x.proxy);
            s.set_server_keepalive(None);
            end.error = Some(e);
            if close_delimited {
                crate::listener::io::cut_short(s.stream());
            }
            return;
        }
        if let Some(f) = &mut fill {
            f.body(chunk);
        }
        received += chunk.len();
        if declared == Some(received) {
            // The url's answer is in whole before the client has the last of it.
            attempt::end(&mut x.proxy);
        }
        if let Err(mut e) = s.write_body(chunk).await {
            e.as_down();
            log::debug!("client went away: {e}");
            s.set_server_keepalive(None);
            return;
        }
    }
    attempt::end(&mut x.proxy);
    if let Some(f) = fill {
        if up.is_body_done() {
            f.complete();
        }
    }
    if let Err(e) = s.finish_body().await {
        log::debug!("client went away: {e}");
        s.set_server_keepalive(None);
    }
    keep(up, key);
}

/// Connects (or takes a pooled connection), sends the request head and reads the response
/// head, trying again where the plan allows it. `client` gives the method and headers (the
/// plan gives the upstream's target), `path` is the client's, for the balancer.
pub async fn connect_and_ask(
    connector: &TransportConnector,
    client: &RequestHeader,
    url: &str,
    x: &mut Exchange,
    filling: bool,
) -> Asked {
    let method = client.method.clone();
    // After a pooled connection broke, the request goes on a new one.
    let mut fresh = false;
    loop {
        let Some(plan) = x.proxy.as_mut() else {
            return Err(upstream_error(ErrorType::InternalError, "no proxy plan"));
        };
        let peer = attempt::begin(plan, url)?;
        let key = peer.reuse_hash();
        let pooled = if fresh { None } else { pool::take(key) };
        let (stream, reused) = match pooled {
            Some(stream) => (stream, true),
            // Boxed: a new connection is rare next to pooled ones, and its future (the
            // connect, TLS) would make every request's future larger.
            None => match Box::pin(connector.new_stream(&*peer)).await {
                Ok(stream) => (stream, false),
                Err(mut e) => {
                    e.as_up();
                    let e = attempt::connect_failed(plan, &method, e);
                    if e.retry() {
                        continue;
                    }
                    return Err(e);
                }
            },
        };
        let mut up = Upstream::new_with_options(stream, &*peer);
        up.read_timeout = peer.options.read_timeout;
        up.write_timeout = peer.options.write_timeout;
        match ask(&mut up, client, x, filling).await {
            Ok(()) => return Ok((up, key)),
            Err(mut e) => {
                e.as_up();
                let Some(plan) = x.proxy.as_mut() else {
                    return Err(e);
                };
                let e = attempt::broke(plan, &method, false, reused, false, e);
                fresh = reused;
                if e.retry() {
                    continue;
                }
                return Err(e);
            }
        }
    }
}

/// Sends the request head; reads the first response head.
async fn ask(
    up: &mut Upstream,
    client: &RequestHeader,
    x: &Exchange,
    filling: bool,
) -> pingora_core::Result<()> {
    let mut req = Box::new(client.clone());
    req.set_version(http::Version::HTTP_11);
    exchange::strip_hop_by_hop(&mut *req);
    exchange::upstream_request(&mut req, x, filling)?;
    up.write_request_header(req).await?;
    up.read_response().await?;
    up.resp_header().map_or(Ok(()), framed)
}

/// Reads the upstream's next response head (after an informational one): one framed
/// ambiguously is the upstream's failure (see [`framed`]), and its connection is not used
/// again. ([`ask`] reads the first one so.)
async fn read_head(up: &mut Upstream) -> pingora_core::Result<()> {
    up.read_response().await?;
    up.resp_header().map_or(Ok(()), framed)
}

/// An upstream's answer framed ambiguously (two `Content-Length` lines, one too large, a
/// coding before `chunked`; see [`crate::framing::response_problem`]) is a `502`, as nginx
/// answers it, on every path.
pub fn framed(resp: &ResponseHeader) -> pingora_core::Result<()> {
    match crate::framing::response_problem(&resp.headers) {
        Some(why) => Err(upstream_error(ErrorType::InvalidHTTPHeader, why)),
        None => Ok(()),
    }
}

/// The upstream's response head as the client gets it: in the gateway's HTTP version (RFC
/// 9110 §2.5), without the upstream connection's headers, with the pipeline's edits, framed
/// for the client: a body of unknown length goes to an HTTP/1.1 client in chunks, so its
/// connection stays open, and to an HTTP/1.0 client, which knows no chunks (RFC 9112 §6.1),
/// until the connection closes. `true`: the body ends with the connection.
fn response_head(
    resp: &mut ResponseHeader,
    req: &RequestHeader,
    edits: &[crate::pipeline::context::HeaderEdit],
) -> pingora_core::Result<bool> {
    resp.set_version(http::Version::HTTP_11);
    exchange::strip_hop_by_hop(resp);
    if resp.status == http::StatusCode::NO_CONTENT {
        // A 204 has no body: neither length nor framing (RFC 9110 §8.6, RFC 9112 §6.1).
        resp.remove_header(&CONTENT_LENGTH);
        resp.remove_header(&TRANSFER_ENCODING);
    } else if resp.headers.contains_key(TRANSFER_ENCODING) {
        // The body is read by its chunks: a length beside them must not reach the client.
        resp.remove_header(&CONTENT_LENGTH);
    }
    apply_edits(resp, edits)?;
    let bodiless =
        req.method == http::Method::HEAD || matches!(resp.status.as_u16(), 100..=199 | 204 | 304);
    if bodiless || resp.headers.contains_key(CONTENT_LENGTH) {
        if req.version < http::Version::HTTP_11 {
            // (A HEAD's or a 304's head of a chunked answer: no chunks named to HTTP/1.0.)
            resp.remove_header(&TRANSFER_ENCODING);
        }
        return Ok(false);
    }
    if req.version == http::Version::HTTP_11 {
        if !resp.headers.contains_key(TRANSFER_ENCODING) {
            resp.insert_header(TRANSFER_ENCODING, "chunked")?;
        }
        return Ok(false);
    }
    resp.remove_header(&TRANSFER_ENCODING);
    Ok(true)
}

/// A failure before the response head: answered with the status it calls for. The client's
/// connection goes on after the upstream's failure (its request was read whole and the answer
/// is), as with EG and nginx: during an outage a browser's tiles did not each open a
/// connection of their own (a TLS handshake each).
pub async fn fail(s: &mut HttpSession, x: &Exchange, e: Box<Error>, end: &mut Finish) {
    let (_, reply) = exchange::failure_reply(&e);
    if reply.is_none() || e.esource() != &pingora_core::ErrorSource::Upstream {
        s.set_server_keepalive(None);
    }
    end.error = Some(e);
    if let Some(reply) = reply {
        // Through a cache step, a tile being filled: nothing was stored for it.
        let edits = crate::cache::answer_edits(x, "MISS");
        // Boxed: a failure is rare, and its write would make every relay's future larger.
        if let Err(err) = Box::pin(super::write_reply(s, reply, &edits)).await {
            log::debug!("could not send the error response: {err}");
        }
    }
}

/// Puts the upstream connection back in this thread's pool when its exchange ended cleanly.
/// Not `async`: a connection kept is handed back at once (Pingora's `reuse` only waits when it
/// shuts one down, and dropping it closes it as well), and inline its future was 1.9 KB of
/// every proxied request's future.
pub fn keep(up: Upstream, key: u64) {
    if let Some(stream) = reusable(up) {
        pool::put(key, stream);
    }
}

/// The upstream connection, when its exchange ended so that it may be used again.
pub fn reusable(mut up: Upstream) -> Option<Stream> {
    up.respect_keepalive();
    if !up.will_keepalive() || !up.is_body_done() {
        return None;
    }
    up.reuse().now_or_never().flatten()
}

/// An error once the request's total timeout has passed.
pub fn overdue(x: &Exchange) -> Result<(), Box<Error>> {
    if x.proxy.as_ref().is_some_and(attempt::overdue) {
        return Err(upstream_error(
            ErrorType::ReadTimedout,
            "the total timeout passed",
        ));
    }
    Ok(())
}

pub fn upstream_error(kind: ErrorType, why: &'static str) -> Box<Error> {
    Error::create(
        kind,
        pingora_core::ErrorSource::Upstream,
        Some(why.into()),
        None,
    )
}
