//! A miss answered like a hit: a tile nothing is stored for, asked for on a connection that
//! holds nothing else, is fetched, stored whole, and answered from the stored object on the
//! connection itself — its head written from the stored head as a hit's is (with
//! `X-Cache-Status: MISS`), head and body in one `writev`, without Pingora's session (which
//! would read the request head a second time and rebuild the response head). What is not
//! stored this way — a body of unknown or large length, a head a hit is not answered with as
//! stored, pipeline edits that replace a stored header, an informational answer, a failure —
//! goes through Pingora's session as before ([`relay::relay`]), streamed as it comes.

use std::time::Instant;

use bytes::BytesMut;

use http::header::{AGE, TRANSFER_ENCODING};
use pingora_core::protocols::http::v1::client::HttpSession as Upstream;
use pingora_core::protocols::http::v1::server::HttpSession;
use pingora_core::protocols::Stream;
use pingora_core::{Error, ErrorType};
use tokio::io::AsyncReadExt;

use super::head::{Reading, Unread};
use super::relay;
use super::{
    after_raw, hand_over, logged_as, settle, write_raw, FastPath, Finish, Served, SessionLimits,
};
use crate::cache::fill::Fill;
use crate::cache::hit::miss_wire_head;
use crate::exchange::Ended;
use crate::gateway::Gateway;
use crate::pipeline::context::{Exchange, HeaderEdit};
use crate::upstream::attempt;

/// The largest body a miss holds whole before answering; a larger one goes to the client as
/// it arrives.
const WHOLE_MAX: usize = 1024 * 1024;

impl FastPath {
    /// Fetches the tile `fill` holds the lock for, for everyone, and answers the request.
    pub(super) async fn answer_fill(
        &self,
        reading: Reading,
        mut fill: Fill,
        gw: &Gateway,
        x: &mut Exchange,
        started: Instant,
        limits: &SessionLimits,
    ) -> Served {
        crate::cache::neutral_fill(x);
        let upstream_started = Instant::now();
        let asked = relay::connect_and_ask(&self.connector, reading.req(), x, true).await;
        let keepalive = reading.keepalive(limits);
        let asked = match asked {
            Ok((up, key)) => match whole(&mut fill, &up, &x.response_edits, keepalive) {
                Some(head) => {
                    let fetched = Fetched {
                        up,
                        key,
                        head,
                        keepalive,
                        upstream_time: upstream_started.elapsed(),
                    };
                    return self
                        .answer_whole(reading, fill, fetched, gw, x, started, limits)
                        .await;
                }
                None => Ok((up, key)),
            },
            Err(e) => Err(e),
        };
        let (mut s, mut end) = match in_session(reading, x, limits).await {
            Ok(session) => session,
            Err(handed) => return handed,
        };
        relay::relay(&mut s, asked, x, &mut end, Some(fill), upstream_started).await;
        end.cache = Some(("MISS", None));
        self.finish(*s, gw, x, started, end).await
    }

    /// Reads the whole body into the store and answers from the stored object.
    #[allow(clippy::too_many_arguments)]
    async fn answer_whole(
        &self,
        reading: Reading,
        mut fill: Fill,
        f: Fetched,
        gw: &Gateway,
        x: &mut Exchange,
        started: Instant,
        limits: &SessionLimits,
    ) -> Served {
        if let (Some(plan), Some(resp)) = (&x.proxy, f.up.resp_header()) {
            attempt::answered(plan, resp.status.as_u16());
        }
        let read = read_whole(f.up, &mut fill, x).await;
        attempt::end(&mut x.proxy);
        // Done with the fill either way: the requests waiting on the tile go on now (a failed
        // one's lock is not held while its client reads the error).
        let (object, read) = match read {
            Ok(reusable) => (fill.complete(), Ok(reusable)),
            Err(e) => {
                drop(fill);
                (None, Err(e))
            }
        };
        let Some(object) = object else {
            // Nothing went to the client yet: it gets the error's status.
            let e = read.err().unwrap_or_else(|| {
                relay::upstream_error(ErrorType::InternalError, "the tile was not stored")
            });
            let (mut s, mut end) = match in_session(reading, x, limits).await {
                Ok(session) => session,
                Err(handed) => return handed,
            };
            end.upstream_time = Some(f.upstream_time);
            relay::fail(&mut s, x, e, &mut end).await;
            end.cache = Some(("MISS", None));
            return self.finish(*s, gw, x, started, end).await;
        };
        if let Ok(Some(upstream)) = read {
            super::pool::put(f.key, upstream);
        }
        let (mut stream, _, logged) = reading.into_stream();
        let error = write_raw(&mut stream, &f.head, &object.body, limits).await;
        let ended = Ended {
            status: if error.is_none() {
                object.meta.head().status().as_u16()
            } else {
                0
            },
            elapsed: started.elapsed(),
            upstream_time: Some(f.upstream_time),
            bytes_in: 0,
            bytes_out: if error.is_none() {
                object.body.len()
            } else {
                0
            },
            error: error.as_deref(),
            cache: Some(("MISS", None)),
        };
        settle(gw, &logged_as(&logged), x, &ended);
        after_raw(stream, f.keepalive, error).await
    }
}

/// An upstream answer whose body is to be read whole.
struct Fetched {
    up: Upstream,
    /// The upstream connection's pool key.
    key: u64,
    /// The client's head, made from the stored head.
    head: BytesMut,
    /// Whether the client's connection stays open.
    keepalive: bool,
    upstream_time: std::time::Duration,
}

/// The client's head when the upstream's answer is stored and answered whole: a final answer
/// of known length up to [`WHOLE_MAX`], stored, whose head a hit is answered with as stored,
/// pipeline edits that only add headers to it, an `Age` (if any) that is a number.
fn whole(
    fill: &mut Fill,
    up: &Upstream,
    edits: &[HeaderEdit],
    keepalive: bool,
) -> Option<BytesMut> {
    let resp = up.resp_header()?;
    if resp.status.is_informational() || resp.headers.contains_key(TRANSFER_ENCODING) {
        return None;
    }
    let len = crate::cache::store::content_length(resp).filter(|n| *n <= WHOLE_MAX)?;
    let age = match resp.headers.get(AGE) {
        None => None,
        Some(v) => Some(v.to_str().ok()?.trim().parse().ok()?),
    };
    fill.decide(resp);
    miss_wire_head(fill.stored_head()?, len, edits, keepalive, age)
}

/// Reads the upstream's body into the fill: what came with the head through the upstream
/// session, the rest straight from the connection into the stored body's buffer (no copy of
/// the tile between buffers). `Ok`: the body came whole, with the connection when it may be
/// used again.
async fn read_whole(
    mut up: Upstream,
    fill: &mut Fill,
    x: &Exchange,
) -> Result<Option<Stream>, Box<Error>> {
    match up.read_body_ref().await {
        Ok(chunk) => fill.body(chunk.unwrap_or_default()),
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
    let remaining = declared.saturating_sub(up.body_bytes_received());
    up.respect_keepalive();
    if up.is_body_done() || remaining == 0 {
        return Ok(relay::reusable(up));
    }
    let reuse = up.will_keepalive();
    let read_timeout = up.read_timeout;
    let mut stream = up.into_inner();
    let Some(buf) = fill.room(remaining) else {
        return Err(relay::upstream_error(
            ErrorType::InternalError,
            "the tile is larger than the step stores",
        ));
    };
    let end = buf.len() + remaining;
    while buf.len() < end {
        let left = (end - buf.len()) as u64;
        let mut rest = (&mut stream).take(left);
        let read = rest.read_buf(buf);
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
        Err(Unread(stream, head)) => {
            // Not expected: the session reads every head the fast path reads alike.
            log::debug!("a request head read on the fast path was refused by the session");
            attempt::end(&mut x.proxy);
            crate::proxy::request_ended();
            Err(Served::HandOver(Box::new(hand_over(stream, head, None))))
        }
    }
}
