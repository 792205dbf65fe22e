//! A miss answered like a hit: a tile nothing is stored for, asked for on a connection that
//! holds nothing else, is fetched, stored whole, and answered from the stored object on the
//! connection itself — its head written from the stored head as a hit's is (with
//! `X-Cache-Status: MISS`), head and body in one `writev`, without Pingora's session (which
//! would read the request head a second time and rebuild the response head). A tile missed
//! fewer times than its step's `minUses` is answered the same way from a buffer of the worker
//! thread's, not stored. What is not answered this way — a body of unknown or large length, a
//! head a hit is not answered with as stored, pipeline edits that replace a stored header, an
//! informational answer, a failure — goes through Pingora's session as before
//! ([`relay::relay`]), streamed as it comes.

use std::cell::Cell;
use std::time::Instant;

use bytes::BytesMut;

use http::header::{AGE, TRANSFER_ENCODING};
use pingora_core::protocols::http::v1::client::HttpSession as Upstream;
use pingora_core::protocols::http::v1::server::HttpSession;
use pingora_core::protocols::Stream;
use pingora_core::{Error, ErrorType};
use pingora_http::{RequestHeader, ResponseHeader};
use tokio::io::AsyncReadExt;

use super::head::{Reading, Unread};
use super::relay;
use super::{hand_over, FastPath, Finish, RawAnswer, Served, SessionLimits};
use crate::cache::fill::{Fill, Sent};
use crate::cache::hit::{miss_wire_head, unstored_miss_head};
use crate::gateway::Gateway;
use crate::pipeline::context::Exchange;
use crate::upstream::attempt;

/// The largest body a miss holds whole before answering; a larger one goes to the client as
/// it arrives.
const WHOLE_MAX: usize = 1024 * 1024;

/// An answer fetched and read whole in this long (by the kernel's coarse clock) or longer is
/// one its client may have left during: the client's connection is looked at before it is
/// answered.
const SLOW_ANSWER_MS: u64 = 10;

impl FastPath {
    /// Fetches the tile `fill` holds the lock for, for everyone, and answers the request.
    pub(super) async fn answer_fill(
        &self,
        reading: Reading,
        fill: Box<Fill>,
        gw: &Gateway,
        x: &mut Exchange,
        started: Instant,
        limits: &SessionLimits,
    ) -> Served {
        crate::cache::neutral_fill(x);
        let head_for = |fill: &mut Option<Box<Fill>>, up: &Upstream, client: &_, x: &_, ka| {
            whole(fill.as_mut()?, up, client, x, ka)
        };
        let asked = Asking {
            fill: Some(fill),
            cache: MISS,
        };
        self.ask_and_answer(reading, asked, head_for, gw, x, started, limits)
            .await
    }

    /// Sends the request upstream and answers it: read whole and written on the connection
    /// when `head_for` makes the client's head for the upstream's answer (and the fill, if
    /// any, stores it when it may), else relayed through Pingora's session as it comes. An
    /// answer read whole whose body breaks off has reached no client yet: it is asked again
    /// where a retry may be made (of another url).
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn ask_and_answer(
        &self,
        reading: Reading,
        asking: Asking,
        mut head_for: impl FnMut(
            &mut Option<Box<Fill>>,
            &Upstream,
            &RequestHeader,
            &Exchange,
            bool,
        ) -> Option<BytesMut>,
        gw: &Gateway,
        x: &mut Exchange,
        started: Instant,
        limits: &SessionLimits,
    ) -> Served {
        let Asking { mut fill, cache } = asking;
        let upstream_started = Instant::now();
        let asked_at = crate::clock::coarse_millis();
        let filling = fill.is_some();
        let how = loop {
            let (client, url) = (reading.req(), reading.target().url);
            let asking = relay::connect_and_ask(&self.connector, client, url, x, filling);
            // A client that leaves while the upstream has not answered ends the exchange, as
            // on Pingora's proxy (and nginx's): the upstream's connection goes. A fill goes
            // on, for the requests after it.
            let asked = match reading.stream().filter(|_| !filling) {
                Some(stream) => tokio::select! {
                    biased;
                    asked = asking => Some(asked),
                    () = crate::listener::io::client_gone(stream) => None,
                },
                None => Some(asking.await),
            };
            let Some(asked) = asked else {
                client_left(reading, gw, x, started, None, cache, Left::Waiting);
                return Served::Closed;
            };
            let (up, key) = match asked {
                Ok(asked) => asked,
                Err(e) => break relayed(Err(e), fill, upstream_started),
            };
            // Judged once the upstream answered: a stop that began meanwhile closes.
            let keepalive = reading.keepalive(limits);
            let Some(head) = head_for(&mut fill, &up, reading.req(), x, keepalive) else {
                break relayed(Ok((up, key)), fill, upstream_started);
            };
            let status = up.resp_header().map_or(0, |r| r.status.as_u16());
            // Until the answer's head came, as on the relayed path.
            let upstream_time = upstream_started.elapsed();
            let mut body = body_buffer();
            let read = read_whole(up, &mut body, x).await;
            let reusable = match read {
                Ok(reusable) => reusable,
                Err(e) => {
                    give_back(body);
                    match ask_again(x, &reading.req().method, e) {
                        Ok(()) => {
                            if let Some(f) = &mut fill {
                                f.again();
                            }
                            continue;
                        }
                        // Nothing went to the client yet: it gets the error's status. The
                        // requests waiting on the tile go on now, not once it has.
                        Err(error) => {
                            drop(fill);
                            break InSession::Failed {
                                error,
                                upstream_time,
                            };
                        }
                    }
                }
            };
            if let Some(plan) = &mut x.proxy {
                let reported = fill.as_ref().is_some_and(|f| f.reported());
                attempt::answered(plan, status, reported);
            }
            attempt::end(&mut x.proxy);
            // Done with the fill: the requests waiting on the tile go on now.
            if let Some(mut fill) = fill.filter(|f| f.stores()) {
                fill.body(&body);
                fill.complete();
            }
            if let Some(upstream) = reusable {
                super::pool::put(key, upstream);
            }
            // A client that left while an answer that took its time was fetched gets nothing
            // and is not counted as answered (its write would seem to succeed: the kernel
            // takes it). (One that came at once leaves no time to leave in; a fill's client is
            // not watched while it waits for the head, as others wait on the fill.)
            if crate::clock::coarse_millis().saturating_sub(asked_at) >= SLOW_ANSWER_MS
                && reading
                    .stream()
                    .is_some_and(crate::listener::io::client_gone_now)
            {
                give_back(body);
                client_left(
                    reading,
                    gw,
                    x,
                    started,
                    Some(upstream_time),
                    cache,
                    Left::Waiting,
                );
                return Served::Closed;
            }
            let answer = RawAnswer {
                head: &head,
                body: &body,
                hit: None,
                status,
                keepalive,
                upstream_time: Some(upstream_time),
                cache,
            };
            let served = super::answer_raw(reading, answer, gw, x, started).await;
            give_back(body);
            return served;
        };
        // Boxed: its future is large, and inline it would be copied whole as every miss's
        // future is built.
        crate::listener::boxed(|| self.end_in_session(reading, how, gw, x, started, limits, cache))
            .await
    }

    /// Ends a request not answered whole through Pingora's session; `cache` is the cache's
    /// verdict on it, if a cache step ran.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn end_in_session(
        &self,
        reading: Reading,
        how: InSession,
        gw: &Gateway,
        x: &mut Exchange,
        started: Instant,
        limits: &SessionLimits,
        cache: Option<&'static str>,
    ) -> Served {
        // A failure before anything went out (no head: a timeout, a refused connection, a
        // body read whole that broke) to a client that has left is no answer: not counted as
        // a 502 it never got (a frozen upstream's timeouts were counted so, for clients long
        // gone).
        // (The upstream's failure is counted and logged still.)
        let gone = |r: &Reading| r.stream().is_some_and(crate::listener::io::client_gone_now);
        let how = match how {
            InSession::Failed {
                error,
                upstream_time,
            } if gone(&reading) => {
                let left = Left::Failed(error);
                client_left(reading, gw, x, started, Some(upstream_time), cache, left);
                return Served::Closed;
            }
            InSession::Relay {
                asked: Err(error), ..
            } if gone(&reading) => {
                client_left(reading, gw, x, started, None, cache, Left::Failed(error));
                return Served::Closed;
            }
            how => how,
        };
        let (mut s, mut end) = match in_session(reading, x, limits).await {
            Ok(session) => session,
            Err(handed) => return handed,
        };
        match how {
            InSession::Relay {
                asked,
                fill,
                upstream_started,
            } => {
                relay::relay(
                    &mut s,
                    asked,
                    x,
                    &mut end,
                    fill.map(|f| *f),
                    upstream_started,
                )
                .await
            }
            InSession::Failed {
                error,
                upstream_time,
            } => {
                end.upstream_time = Some(upstream_time);
                relay::fail(&mut s, x, error, &mut end).await;
            }
        }
        end.cache = cache.map(|status| (status, None));
        self.finish(*s, gw, x, started, end).await
    }
}

/// An answer relayed through Pingora's session as it comes.
fn relayed(asked: relay::Asked, fill: Option<Box<Fill>>, upstream_started: Instant) -> InSession {
    InSession::Relay {
        asked,
        fill,
        upstream_started,
    }
}

/// After the body of an answer read whole broke off, nothing of it sent to the client:
/// `Ok` when it is asked again, of another url, as a request broken before its answer is (the
/// url's failure counted, the retry logged); else the failure the client is answered with.
fn ask_again(x: &mut Exchange, method: &http::Method, e: Box<Error>) -> Result<(), Box<Error>> {
    let Some(plan) = x.proxy.as_mut() else {
        return Err(e);
    };
    let e = attempt::broke(plan, method, false, false, false, e);
    match e.retry() {
        true => Ok(()),
        false => Err(e),
    }
}

/// When a client that left was found gone.
enum Left {
    /// While it waited.
    Waiting,
    /// When the upstream's failure was to be answered: the failure is logged and counted.
    Failed(Box<Error>),
}

/// Accounts for a request whose client left before it was answered (before the upstream's
/// head came, or while the answer was read whole): the client's doing (logged at debug, as on
/// Pingora's proxy), not a failure; nothing was written (status 0).
fn client_left(
    reading: Reading,
    gw: &Gateway,
    x: &mut Exchange,
    started: Instant,
    upstream_time: Option<std::time::Duration>,
    cache: Option<&'static str>,
    left: Left,
) {
    let e = match left {
        Left::Waiting => Error::explain(
            ErrorType::ConnectionClosed,
            "the client left before it was answered",
        )
        .into_down(),
        Left::Failed(e) => e,
    };
    let ended = crate::exchange::Ended {
        status: 0,
        elapsed: started.elapsed(),
        // `None` when no answer's head came.
        upstream_time,
        bytes_in: 0,
        bytes_out: 0,
        error: Some(&e),
        cache: cache.map(|status| (status, None)),
    };
    let requested = crate::exchange::Requested {
        method: reading.req().method.as_str(),
        url: reading.target().url,
    };
    super::settle(gw, &requested, x, &ended);
}

thread_local! {
    /// The worker thread's buffer for the bodies of misses answered whole (taken while in
    /// use).
    static BUFFER: Cell<Option<BytesMut>> = const { Cell::new(None) };
}

/// The worker thread's buffer for a miss's body (a new one when it is in use).
fn body_buffer() -> BytesMut {
    BUFFER.with(Cell::take).unwrap_or_default()
}

/// The largest buffer a worker thread keeps for the next body.
const BUFFER_KEPT: usize = 256 * 1024;

/// Gives a buffer from [`body_buffer`] back, empty, for the next body (one grown past
/// [`BUFFER_KEPT`] for a large body goes).
fn give_back(mut buf: BytesMut) {
    if buf.capacity() <= BUFFER_KEPT {
        buf.clear();
        BUFFER.with(|b| b.set(Some(buf)));
    }
}

/// How a request not answered whole ends, through Pingora's session. (Its size is no cost:
/// it only lives in the boxed future of [`FastPath::end_in_session`].)
#[allow(clippy::large_enum_variant)]
pub(super) enum InSession {
    /// The upstream's answer relayed as it comes, stored on the way when it is.
    Relay {
        asked: relay::Asked,
        fill: Option<Box<Fill>>,
        upstream_started: Instant,
    },
    /// A fetch that failed before anything went to the client: the error's status.
    Failed {
        error: Box<Error>,
        upstream_time: std::time::Duration,
    },
}

/// The cache's verdict on a miss.
const MISS: Option<&str> = Some("MISS");

/// What a request sent upstream is asked for: a fill (that stores the answer when it may) and
/// the cache's verdict, when a cache step ran.
pub(super) struct Asking {
    pub fill: Option<Box<Fill>>,
    pub cache: Option<&'static str>,
}

/// The client's head when the upstream's answer is read and answered whole: a final answer
/// of known length up to [`WHOLE_MAX`], whose head (as stored, when it is stored) a hit is
/// answered with as it is, pipeline edits that only add headers to it, an `Age` (if any) that
/// is a number.
fn whole(
    fill: &mut Fill,
    up: &Upstream,
    client: &RequestHeader,
    x: &Exchange,
    keepalive: bool,
) -> Option<BytesMut> {
    let resp = up.resp_header()?;
    let edits = &x.response_edits;
    let (len, age) = length_and_age(resp).filter(|(n, _)| *n <= WHOLE_MAX)?;
    let sent = Sent {
        req: client,
        edits: &x.upstream_edits,
    };
    fill.decide(resp, Some(len), sent, || {
        crate::cache::exception::asks_for_map(x)
    });
    // A fill that stores the answer holds its head; one that does not (below `minUses`, not
    // admitted, judged one not stored: it let its lock go) is answered as the upstream sent
    // it (a head that cannot be written so, with `Vary`, goes through Pingora's session).
    match fill.answer_head() {
        Some(stored) if fill.stores() => miss_wire_head(stored, len, edits, keepalive, age),
        // (One that lacks a `Vary`, which it is given, goes through the session.)
        _ if fill.lacks_vary() => None,
        _ => unstored_miss_head(resp, Some(len), len, edits, keepalive, age),
    }
}

/// The length of a final answer of known length, and its `Age`, when it has one that is a
/// number (`None`: the answer is not written from a head made here).
pub(super) fn length_and_age(resp: &ResponseHeader) -> Option<(usize, Option<u64>)> {
    // A 204 or 304 has no body whatever its `Content-Length` says: the session frames it.
    if matches!(resp.status.as_u16(), 100..=199 | 204 | 304)
        || resp.headers.contains_key(TRANSFER_ENCODING)
    {
        return None;
    }
    let len = crate::cache::store::content_length(resp)?;
    // (Several `Age` lines go through the session, relayed as they came.)
    let mut ages = resp.headers.get_all(AGE).iter();
    let age = match (ages.next(), ages.next()) {
        (None, _) => None,
        (Some(v), None) => Some(v.to_str().ok()?.trim().parse().ok()?),
        (Some(_), Some(_)) => return None,
    };
    Some((len, age))
}

/// Reads the upstream's body into `buf`: what came with the head through the upstream
/// session, the rest straight from the connection. `Ok`: the body came whole, with the
/// connection when it may be used again.
async fn read_whole(
    mut up: Upstream,
    buf: &mut BytesMut,
    x: &Exchange,
) -> Result<Option<Stream>, Box<Error>> {
    match up.read_body_ref().await {
        Ok(chunk) => buf.extend_from_slice(chunk.unwrap_or_default()),
        Err(mut e) => {
            e.as_up();
            return Err(e);
        }
    }
    relay::overdue(x)?;
    let declared = up
        .resp_header()
        .and_then(crate::cache::store::content_length)
        .unwrap_or(0);
    let mut left = declared.saturating_sub(up.body_bytes_received());
    up.respect_keepalive();
    if up.is_body_done() || left == 0 {
        return Ok(relay::reusable(up));
    }
    let reuse = up.will_keepalive();
    let read_timeout = up.read_timeout;
    let mut stream = up.into_inner();
    // A byte more than the body: the last read comes back short (below).
    buf.reserve(left + 1);
    // Read with all the room the buffer has, not only the body's rest: a read that comes
    // back shorter than asked tells the runtime the connection is drained, so taking it from
    // the pool needs no read to see it idle.
    while left > 0 {
        let read = stream.read_buf(buf);
        let n = match read_timeout {
            Some(t) => tokio::time::timeout(t, read).await.map_err(|_| {
                relay::upstream_error(ErrorType::ReadTimedout, "reading the body timed out")
            })?,
            None => read.await,
        }
        .map_err(|e| {
            let mut e = Error::because(ErrorType::ReadError, "reading the upstream's body", e);
            e.as_up();
            e
        })?;
        if n == 0 {
            return Err(relay::upstream_error(
                ErrorType::ConnectionClosed,
                "the upstream closed before the body's end",
            ));
        }
        let Some(rest) = left.checked_sub(n) else {
            // More than the body: the upstream's mistake. As nginx does, the body is what its
            // length says and the connection is not used again.
            buf.truncate(buf.len() - (n - left));
            log::warn!("the upstream sent more than its Content-Length: the rest is dropped");
            return Ok(None);
        };
        left = rest;
        relay::overdue(x)?;
    }
    Ok(reuse.then_some(stream))
}

/// Pingora's session for the request, with nothing of its end known yet; `Err`: the request
/// handed to Pingora's proxy, which reads it again.
async fn in_session(
    reading: Reading,
    x: &mut Exchange,
    limits: &SessionLimits,
) -> Result<(Box<HttpSession>, Finish), Served> {
    match reading.into_session(limits).await {
        Ok((s, _)) => Ok((s, Finish::default())),
        Err(Unread(stream, head, _)) => {
            // Not expected: the session reads every head the fast path reads alike.
            log::debug!("a request head read on the fast path was refused by the session");
            attempt::end(&mut x.proxy);
            crate::proxy::request_ended();
            Err(Served::HandOver(Box::new(hand_over(stream, head, None))))
        }
    }
}
