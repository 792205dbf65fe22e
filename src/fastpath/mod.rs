//! The fast path: what most tiles are — a GET or HEAD over HTTP/1 without a body whose pipeline
//! answers itself or only proxies after its request steps — served with Pingora's own HTTP/1
//! client session (`pingora-core`) and an upstream connection pool per worker thread, instead
//! of through `pingora-proxy`'s general machinery. Most answers are written on the connection
//! itself ([`direct`], [`fill`], hits here); the rest through Pingora's HTTP/1 server session.
//!
//! The request is routed and its pipelines run exactly as on the general path
//! ([`crate::exchange`]); a fresh tile in the cache is answered from it, and a tile nothing is
//! stored for is fetched and stored on the way ([`crate::cache::hit`]).
//! A request the fast path does not serve is handed to Pingora's proxy before anything of it
//! ran (a method with a body, an upgrade, a head Pingora's parser must judge), or with its
//! decision when it needs what only the general path does (a cache miss or revalidation,
//! compression, an HTTP/2 upstream). The client session reads the upstream's body by its
//! length, chunks or close and knows HEAD, 204 and 304 have none; an answer streamed through
//! the server session is framed by its response's headers.

mod direct;
mod fill;
mod head;
pub(crate) mod pool;
pub(crate) mod relay;

use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use bytes::BytesMut;
use pingora_core::connectors::TransportConnector;
use pingora_core::protocols::http::v1::server::HttpSession;
use pingora_core::protocols::http::ServerSession;
use pingora_core::protocols::Stream;
use pingora_core::{Error, ErrorType};

use crate::cache::hit::Lookup;
use crate::exchange::{self, Decision, Ended};
use crate::gateway::Gateway;
use crate::health::Health;
use crate::listener::boxed;
use crate::listener::io::{write_pair, Partial};
use crate::pipeline::context::{Exchange, HeaderEdit, Reply};
use crate::proxy::Decided;
use head::{Reading, Unread};

/// How the fast path left a connection.
pub enum Served {
    /// The request was answered; the connection waits for the next one.
    KeepAlive(Stream),
    /// The request was answered (or the client left); the connection is closed.
    Closed,
    /// Pingora's proxy serves this request: the session holds its head, unread, and what the
    /// fast path decided for it, if it ran its pipelines.
    HandOver(Box<ServerSession>),
    /// The request head is malformed (why: the error, and whether it is a HEAD's): the
    /// listener refuses it (a 400) and closes.
    Malformed(Stream, Box<pingora_core::Error>, bool),
}

/// The fast path of the gateway's listener.
pub struct FastPath {
    gateway: Arc<ArcSwap<Gateway>>,
    health: Arc<Health>,
    connector: TransportConnector,
}

/// The timeouts and keep-alive a client session gets.
pub struct SessionLimits {
    pub keepalive_secs: Option<u64>,
    pub read_timeout: std::time::Duration,
}

impl FastPath {
    pub fn new(gateway: Arc<ArcSwap<Gateway>>, health: Arc<Health>) -> FastPath {
        FastPath {
            gateway,
            health,
            connector: TransportConnector::new(None),
        }
    }

    /// Serves the request whose complete head is `head`, or hands it over.
    pub async fn serve(&self, stream: Stream, head: BytesMut, limits: &SessionLimits) -> Served {
        if !head.starts_with(b"GET ") && !head.starts_with(b"HEAD ") {
            return Served::HandOver(Box::new(hand_over(stream, head, None)));
        }
        let gw = self.gateway.load_full();
        let reading = match Reading::of(stream, head, limits).await {
            Ok(r) => r,
            // Malformed: Pingora's proxy would answer a bare 400 of its own.
            Err(Unread(stream, head, Some(refused))) => {
                let head_request = head.starts_with(b"HEAD ");
                return Served::Malformed(stream, refused, head_request);
            }
            Err(Unread(stream, head, None)) => {
                return Served::HandOver(Box::new(hand_over(stream, head, None)))
            }
        };

        let started = Instant::now();
        crate::proxy::request_started();
        let mut x = Exchange::default();
        let facts = reading.facts();
        let decision = exchange::decide(&gw, &self.health, &facts, &mut x).await;
        let looked_up = match decision {
            Decision::Proxy if x.cache.is_some() && x.compress.is_none() => {
                let path = facts.target.path;
                Some(crate::cache::hit::lookup(reading.req(), path, &x, !http2_upstream(&x)).await)
            }
            _ => None,
        };
        // A fresh hit whose head is ready to write needs no session: it goes on the connection.
        let looked_up = match looked_up {
            Some(Lookup::Fresh(hit)) => {
                let keepalive = reading.keepalive(limits);
                match hit.wire_head(&x.response_edits, keepalive) {
                    Some(head) if reading.alone() => {
                        let hit = RawHit {
                            head,
                            hit,
                            keepalive,
                        };
                        return self.answer_hit(reading, hit, &gw, &mut x, started).await;
                    }
                    _ => Some(Lookup::Fresh(hit)),
                }
            }
            // A miss whose connection holds nothing else: fetched, stored, answered.
            // (Boxed: inline, its state would make every request's future larger, and every
            // request moves it.)
            Some(Lookup::Fill(fill)) if reading.alone() => {
                let answer = || self.answer_fill(reading, fill, &gw, &mut x, started, limits);
                return boxed(answer).await;
            }
            // A reply of the gateway's own (a 401, a 403, a health check) is written on the
            // connection when its head can be.
            None if reading.alone() && matches!(decision, Decision::Reply(_)) => {
                if let Decision::Reply(reply) = &decision {
                    let keepalive = reading.keepalive(limits);
                    if let Some(head) = direct::reply_head(reply, &x.response_edits, keepalive) {
                        let answer = RawAnswer {
                            head: &head,
                            body: &reply.body,
                            hit: None,
                            status: reply.status,
                            keepalive,
                            upstream_time: None,
                            cache: None,
                        };
                        return answer_raw(reading, answer, &gw, &mut x, started).await;
                    }
                }
                None
            }
            // No cache step: relayed whole when the answer is a tile's (boxed as a miss is).
            None if matches!(decision, Decision::Proxy)
                && x.cache.is_none()
                && x.compress.is_none()
                && !http2_upstream(&x)
                && reading.alone() =>
            {
                let answer = || self.answer_direct(reading, &gw, &mut x, started, limits);
                return boxed(answer).await;
            }
            other => other,
        };
        // Boxed: the session's state is large, and every request's future would carry it.
        boxed(|| self.through_session(reading, decision, looked_up, gw, x, started, limits)).await
    }

    /// Serves a request the connection's own writes do not answer through Pingora's HTTP/1
    /// server session, or hands it to Pingora's proxy.
    #[allow(clippy::too_many_arguments)]
    async fn through_session(
        &self,
        reading: Reading,
        decision: Decision,
        looked_up: Option<Lookup>,
        gw: Arc<Gateway>,
        mut x: Exchange,
        started: Instant,
        limits: &SessionLimits,
    ) -> Served {
        let (mut s, head) = match reading.into_session(limits).await {
            Ok(session) => session,
            Err(Unread(stream, head, _)) => {
                // A head read here that the session refuses (it reads every such head alike,
                // so this should not happen): Pingora's proxy reads it again and answers.
                log::debug!("a request head read on the fast path was refused by the session");
                crate::proxy::request_ended();
                return Served::HandOver(Box::new(hand_over(stream, head, None)));
            }
        };
        let mut end = Finish::default();
        match (decision, looked_up) {
            (Decision::Proxy, Some(Lookup::Fresh(hit))) => {
                write_hit(&mut s, hit, &x.response_edits).await;
                end.cache = Some(("HIT", Some(s.body_bytes_sent())));
            }
            (Decision::Proxy, Some(Lookup::Fill(fill))) => {
                crate::cache::neutral_fill(&mut x);
                relay::proxy(&self.connector, &mut s, &mut x, &mut end, Some(*fill)).await;
                end.cache = Some(("MISS", None));
            }
            (Decision::Proxy, Some(Lookup::General)) => {
                return hand_over_decided(*s, head, Decided { x, started })
            }
            (Decision::Proxy, None) => {
                if x.cache.is_some() || x.compress.is_some() || http2_upstream(&x) {
                    return hand_over_decided(*s, head, Decided { x, started });
                }
                relay::proxy(&self.connector, &mut s, &mut x, &mut end, None).await;
            }
            (Decision::Reply(reply), _) => {
                if let Err(e) = write_reply(&mut s, reply, &x.response_edits).await {
                    log::debug!("client went away: {e}");
                    s.set_server_keepalive(None);
                }
            }
            (Decision::Refuse(reply), _) => {
                s.set_server_keepalive(None);
                if let Err(e) = write_reply(&mut s, reply, &[]).await {
                    log::debug!("client went away: {e}");
                }
            }
        }
        self.finish(*s, &gw, &mut x, started, end).await
    }

    /// Accounts for the request and gives the connection back for the next one.
    async fn finish(
        &self,
        s: HttpSession,
        gw: &Gateway,
        x: &mut Exchange,
        started: Instant,
        end: Finish,
    ) -> Served {
        let ended = Ended {
            status: crate::exchange::final_status(s.response_written()),
            elapsed: started.elapsed(),
            upstream_time: end.upstream_time,
            bytes_in: s.body_bytes_read(),
            bytes_out: s.body_bytes_sent(),
            error: end.error.as_deref(),
            cache: end.cache,
        };
        settle(gw, &exchange::Requested::of(s.req_header()), x, &ended);
        match s.reuse().await {
            Ok(Some(reusable)) => Served::KeepAlive(reusable.into_parts().0),
            _ => Served::Closed,
        }
    }

    /// Answers a hit whose head is ready to write, on the connection itself: the session's
    /// work (keep-alive, framing) is done, the head carries both.
    async fn answer_hit(
        &self,
        reading: Reading,
        raw: RawHit,
        gw: &Gateway,
        x: &mut Exchange,
        started: Instant,
    ) -> Served {
        let answer = RawAnswer {
            head: &raw.head,
            body: raw.hit.body(),
            hit: Some(&raw.hit),
            status: raw.hit.status(),
            keepalive: raw.keepalive,
            upstream_time: None,
            cache: Some("HIT"),
        };
        answer_raw(reading, answer, gw, x, started).await
    }
}

/// An answer written on the connection itself, without Pingora's session.
pub struct RawAnswer<'a> {
    /// The head, with its framing and `Connection`.
    pub head: &'a [u8],
    /// The body (not sent to a HEAD request).
    pub body: &'a [u8],
    /// The hit the body is, when it is one: sent from the memory tier by `sendfile` where the
    /// connection allows it, and counted as bytes served from the cache.
    pub hit: Option<&'a crate::cache::hit::FreshHit>,
    pub status: u16,
    /// What the head's `Connection` says.
    pub keepalive: bool,
    pub upstream_time: Option<std::time::Duration>,
    /// The cache's verdict, if a cache step ran.
    pub cache: Option<&'static str>,
}

/// Writes `answer` on the connection itself, accounts for the request and gives the connection
/// back for the next one.
async fn answer_raw(
    reading: Reading,
    answer: RawAnswer<'_>,
    gw: &Gateway,
    x: &mut Exchange,
    started: Instant,
) -> Served {
    // The access log names the request; what holds its head goes now.
    let (mut stream, head_only, logged) = reading.into_stream();
    let body = if head_only { &[][..] } else { answer.body };
    // Only a body that will go out by `sendfile` is marked as sent.
    let by_file = !head_only && answer.hit.is_some() && crate::listener::io::sends_files(&stream);
    let file = answer.hit.filter(|_| by_file).and_then(|hit| hit.file());
    let written = match file {
        Some(file) => send_raw(&mut stream, answer.head, body, file).await,
        // A client that takes nothing for the send timeout fails the write (the connection's
        // own bound, `ClientIo`'s), one that keeps taking never does.
        None => write_pair(&mut stream, answer.head, body).await,
    };
    // A write that failed after the head went answered all the same (the client left while
    // a large tile went out): its status and the body's bytes that went are accounted for.
    let (error, written) = match written {
        Ok(()) => (None, answer.head.len() + body.len()),
        Err(partial) => (Some(write_error(partial.error)), partial.written),
    };
    let answered = written >= answer.head.len();
    let sent = written.saturating_sub(answer.head.len());
    let from_cache = answer.hit.map(|_| sent);
    let ended = Ended {
        status: if answered { answer.status } else { 0 },
        elapsed: started.elapsed(),
        upstream_time: answer.upstream_time,
        bytes_in: 0,
        bytes_out: sent,
        error: error.as_deref(),
        cache: answer.cache.map(|status| (status, from_cache)),
    };
    settle(gw, &logged_as(&logged), x, &ended);
    after_raw(stream, answer.keepalive, error).await
}

/// Writes a response's head and its body from the memory tier's shared memory by `sendfile`,
/// as [`write_pair`] does with bytes (which it falls back to on a connection that cannot).
async fn send_raw(
    stream: &mut Stream,
    head: &[u8],
    body: &[u8],
    file: crate::cache::store::shared::FileRange,
) -> Result<(), Partial> {
    let sent =
        crate::listener::io::send_pair_from_file(stream, head, file.fd, file.offset, file.len)
            .await;
    match sent {
        None => write_pair(stream, head, body).await,
        Some(result) => result,
    }
}

/// The error of a response's write that ended.
fn write_error(e: std::io::Error) -> Box<Error> {
    let etype = match e.kind() {
        std::io::ErrorKind::TimedOut => ErrorType::WriteTimedout,
        _ => ErrorType::WriteError,
    };
    Error::because(etype, "writing a response", e).into_down()
}

/// The connection after a response written on it: kept for the next request, or closed.
async fn after_raw(mut stream: Stream, keepalive: bool, error: Option<Box<Error>>) -> Served {
    match error {
        None if keepalive => Served::KeepAlive(stream),
        None => {
            let _ = stream.shutdown().await;
            Served::Closed
        }
        Some(_) => Served::Closed,
    }
}

/// The request as the access log names it (nothing when no access log is written).
fn logged_as(logged: &Option<(String, String)>) -> exchange::Requested<'_> {
    logged.as_ref().map_or(
        exchange::Requested {
            method: "",
            url: "",
        },
        |(method, url)| exchange::Requested { method, url },
    )
}

/// A request answered: it is no longer in flight, its upstream attempt (if any) is over, and
/// it is accounted for.
fn settle(gw: &Gateway, requested: &exchange::Requested<'_>, x: &mut Exchange, ended: &Ended<'_>) {
    crate::proxy::request_ended();
    crate::upstream::attempt::end(&mut x.proxy);
    exchange::account(gw, requested, x, ended);
}

/// A cache hit with its head serialised.
struct RawHit {
    head: BytesMut,
    hit: crate::cache::hit::FreshHit,
    /// What the head's `Connection` says.
    keepalive: bool,
}

/// What the upstream exchange (or the cache) left for the account of the request.
#[derive(Default)]
pub struct Finish {
    upstream_time: Option<std::time::Duration>,
    error: Option<Box<Error>>,
    cache: Option<(&'static str, Option<usize>)>,
}

/// Whether the request goes to its upstream over HTTP/2 (only the general path speaks it).
fn http2_upstream(x: &Exchange) -> bool {
    x.proxy.as_ref().is_none_or(|p| p.endpoint.settings.http2)
}

/// Hands a request whose pipelines ran to Pingora's proxy, with their decision; it is in flight
/// there from now on.
fn hand_over_decided(s: HttpSession, head: BytesMut, decided: Decided) -> Served {
    crate::proxy::request_ended();
    Served::HandOver(Box::new(hand_over(s.into_inner(), head, Some(decided))))
}

/// A fresh session for Pingora's proxy that will read `head` as its request.
fn hand_over(stream: Stream, head: BytesMut, decided: Option<Decided>) -> ServerSession {
    crate::listener::io::hold_after_request(&stream, &head);
    let mut session = ServerSession::new_http1(stream);
    session.set_pipelined_prefix(head);
    if let Some(d) = decided {
        session.set_connection_user_context(Some(Box::new(d)));
    }
    session
}

/// Answers from the tile cache: the stored head with `X-Cache-Status: HIT` and the pipeline's
/// edits, then the body.
async fn write_hit(s: &mut HttpSession, hit: crate::cache::hit::FreshHit, edits: &[HeaderEdit]) {
    if let Err(e) = send_hit(s, hit, edits).await {
        log::debug!("client went away: {e}");
        s.set_server_keepalive(None);
    }
}

async fn send_hit(
    s: &mut HttpSession,
    hit: crate::cache::hit::FreshHit,
    edits: &[HeaderEdit],
) -> pingora_core::Result<()> {
    let mut header = hit.header()?;
    header.insert_header(crate::cache::X_CACHE_STATUS.clone(), "HIT")?;
    exchange::apply_edits(&mut header, edits)?;
    s.write_response_header(Box::new(header)).await?;
    if s.req_header().method != http::Method::HEAD {
        s.write_body(hit.body()).await?;
    }
    s.finish_body().await?;
    Ok(())
}

/// Writes a gateway-made response.
async fn write_reply(
    s: &mut HttpSession,
    reply: Reply,
    edits: &[HeaderEdit],
) -> pingora_core::Result<()> {
    let resp = exchange::reply_header(&reply, edits)?;
    s.write_response_header(Box::new(resp)).await?;
    if s.req_header().method != http::Method::HEAD && !reply.body.is_empty() {
        s.write_body(&reply.body).await?;
    }
    s.finish_body().await?;
    Ok(())
}
