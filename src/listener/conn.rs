//! One client connection: the TLS handshake, then HTTP/2 (Pingora's) or the HTTP/1 request
//! loop, which reads each request head itself so that it can bound it: the whole head must
//! arrive within the header timeout, a keep-alive connection may wait for its next request
//! only so long, and a head larger than the limit is refused before Pingora parses it
//! ([`super::head`]). The head is then handed to Pingora's session as already-read bytes, so
//! Pingora parses it without another read.

use bytes::BytesMut;
use pingora_core::apps::{HttpServerApp, ServerApp};
use pingora_core::protocols::http::ServerSession;
use pingora_core::protocols::{Stream, ALPN};
use pingora_core::server::ShutdownWatch;
use pingora_core::tls::ssl::SslAcceptor;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::{timeout_at, Instant};

use super::head::{
    answer_to, fast_reads, malformed, next_request_at, read_head, refuse, refuse_malformed,
    skip_blank_lines, too_many_headers, Refused, NOT_ALLOWED_405, PLAIN_HTTP_400, TOO_LARGE_431,
};
use super::io::ClientIo;
use super::ClientLimits;
use crate::fastpath::{FastPath, Served, SessionLimits};
use crate::metrics::{metrics, ConnClose};

/// Connections accepted whose first request has not been answered yet, and requests whose
/// head is arriving in more than one read.
static FRESH: AtomicUsize = AtomicUsize::new(0);

/// How many accepted connections have not had their first request answered yet (a client
/// that connected just before a shutdown may not have sent it yet), HTTP/2 connections
/// included until they close, and how many later requests are partly read: the drain waits
/// for them as for requests in flight.
pub fn awaiting_an_answer() -> usize {
    FRESH.load(Ordering::Relaxed)
}

/// One connection or request counted in [`awaiting_an_answer`] while this lives.
pub(super) type Fresh = super::Counted;

pub(super) fn fresh() -> Fresh {
    super::Counted::new(&FRESH)
}

/// What an accepted connection holds from its accept.
pub(super) struct Admitted {
    /// Its place under the process's connection cap, given back when it closes.
    pub(super) permit: OwnedSemaphorePermit,
    /// Counts it until its first request is answered.
    pub(super) fresh: Fresh,
    /// The intake it came through (told when the cap is reached).
    pub(super) intake: Arc<super::Intake>,
}

/// Serves one accepted connection until it closes.
pub async fn serve<A>(
    tcp: std::net::TcpStream,
    tls: Option<Arc<SslAcceptor>>,
    app: Arc<A>,
    fast: Option<Arc<FastPath>>,
    limits: Arc<ClientLimits>,
    shutdown: ShutdownWatch,
    admitted: Admitted,
) where
    A: HttpServerApp + Send + Sync + 'static,
{
    let m = metrics();
    let accepted = Instant::now();
    let Admitted {
        permit: _permit,
        fresh,
        intake,
    } = admitted;
    let tcp = match TcpStream::from_std(tcp) {
        Ok(t) => t,
        Err(e) => {
            log::warn!("client connection: cannot register the socket: {e}");
            return;
        }
    };
    m.client_connections.inc();
    if let Err(e) = tcp.set_nodelay(true) {
        log::debug!("client connection: cannot set TCP_NODELAY: {e}");
    }
    let io = ClientIo::new(tcp).with_send_timeout(limits.send_timeout);
    let stream: Stream = match tls {
        None => Box::new(io),
        Some(acceptor) => {
            let deadline = accepted + limits.header_timeout;
            // Plain HTTP sent to the TLS port: answered so (as nginx does), where the failed
            // handshake was a bare close. (A TLS client's first byte is a handshake record's,
            // 0x16; a request line's is a method's letter. A `HEAD` gets the answer's head.)
            let mut first = [0u8; 5];
            if let Ok(Ok(n @ 1..)) = timeout_at(deadline, io.peek(&mut first)).await {
                if first[0].is_ascii_alphabetic() {
                    let answer = answer_to(&first[..n], PLAIN_HTTP_400);
                    let why = refuse(Box::new(io), ConnClose::Malformed, answer).await;
                    m.client_closed(why);
                    m.client_connections.dec();
                    return;
                }
            }
            let handshake = pingora_core::protocols::tls::server::handshake(&acceptor, io);
            match timeout_at(deadline, handshake).await {
                Ok(Ok(s)) => Box::new(s),
                Ok(Err(e)) => {
                    log::debug!("client TLS handshake failed: {e}");
                    m.client_closed(ConnClose::TlsFailed);
                    m.client_connections.dec();
                    return;
                }
                Err(_) => {
                    m.client_closed(ConnClose::HeaderTimeout);
                    m.client_connections.dec();
                    return;
                }
            }
        }
    };
    let reason = if matches!(stream.selected_alpn_proto(), Some(ALPN::H2)) {
        // Counted until it closes: its streams are counted as requests in flight only once
        // their heads are read. On a shutdown Pingora sends a GOAWAY.
        let why = http2(stream, &app, &shutdown, &limits, intake.clone()).await;
        drop(fresh);
        why
    } else {
        http1(
            stream,
            accepted,
            fresh,
            &app,
            fast.as_deref(),
            &limits,
            shutdown,
            intake,
        )
        .await
    };
    m.client_closed(reason);
    m.client_connections.dec();
}

/// How long an HTTP/2 connection may sit without a stream once the gateway is shutting down
/// (it got a GOAWAY; one that does not close is closed).
const HTTP2_IDLE_ON_SHUTDOWN: Duration = Duration::from_secs(1);

/// Serves an HTTP/2 connection until it closes, or until it sat without a stream for as long
/// as an HTTP/1 connection may wait between requests: the header timeout before its first
/// stream, the keep-alive timeout after its last one ended (whatever frames, pings, come
/// meanwhile), a second once a shutdown began — so that idle clients can neither hold the
/// connection cap nor keep a stopping process waiting. A request body that stops coming for
/// the body timeout, or a client that abandons more than [`super::h2::MAX_ABANDONED`] of its
/// streams, closes it too.
async fn http2<A>(
    stream: Stream,
    app: &Arc<A>,
    shutdown: &ShutdownWatch,
    limits: &ClientLimits,
    intake: Arc<super::Intake>,
) -> ConnClose
where
    A: HttpServerApp + Send + Sync + 'static,
{
    let ends = stream
        .get_socket_digest()
        .and_then(|d| Some((*d.peer_addr()?.as_inet()?, *d.local_addr()?.as_inet()?)));
    let Some((client, local)) = ends else {
        app.process_new(stream, shutdown).await;
        return ConnClose::Done;
    };
    // Its streams, counted: the idle limit applies while none is open.
    let connection = super::h2::Connection::new(client, local, intake.clone());
    let opened = crate::clock::coarse_millis();
    let served = app.process_new(stream, shutdown);
    tokio::pin!(served);
    let mut look = tokio::time::interval(Duration::from_millis(250));
    loop {
        tokio::select! {
            _ = &mut served => return ConnClose::Done,
            _ = look.tick() => {
                let now = crate::clock::coarse_millis();
                if let Some(flood) = connection.flooded(now) {
                    use super::h2::{Flood, MAX_ABANDONED, MAX_ABANDONED_RECENT, RECENT_MS};
                    match flood {
                        Flood::MoreThanFinished => log::info!(
                            "closing an HTTP/2 connection whose client abandoned {MAX_ABANDONED} more streams than it let finish"
                        ),
                        Flood::TooManyRecently => log::info!(
                            "closing an HTTP/2 connection whose client abandoned more than {MAX_ABANDONED_RECENT} streams gone upstream within {} s",
                            RECENT_MS / 1000
                        ),
                    }
                    return ConnClose::Abandoned;
                }
                if connection.body_stalled(now, limits.body_timeout) {
                    log::debug!("closing an HTTP/2 connection: a request body stalled");
                    return ConnClose::BodyTimeout;
                }
                if connection.busy() {
                    continue;
                }
                // Idle after a stream (not before its first: it may be on its way), it makes
                // room for a connection come at the cap, as an HTTP/1 one waiting for its
                // next request does.
                if connection.last_end().is_some() && intake.take_shed() {
                    log::debug!("closing an idle HTTP/2 connection to make room for another");
                    return ConnClose::Shed;
                }
                let (since, limit, why) = match connection.last_end() {
                    None if !connection.began() => {
                        (now.saturating_sub(opened), limits.header_timeout, ConnClose::HeaderTimeout)
                    }
                    // (A stream begun and not yet counted ended: busy a moment ago.)
                    None => continue,
                    Some(end) if *shutdown.borrow() => {
                        (now.saturating_sub(end), HTTP2_IDLE_ON_SHUTDOWN, ConnClose::Shutdown)
                    }
                    Some(end) => {
                        (now.saturating_sub(end), limits.keepalive_timeout, ConnClose::KeepaliveTimeout)
                    }
                };
                // Before its first stream, a shutdown closes it at once.
                let limit = if *shutdown.borrow() { limit.min(HTTP2_IDLE_ON_SHUTDOWN) } else { limit };
                if u128::from(since) >= limit.as_millis() {
                    log::debug!("closing an HTTP/2 connection idle for {since} ms");
                    return why;
                }
            }
        }
    }
}

/// The HTTP/1 request loop of one connection.
///
/// On a shutdown, a connection waiting for its next request closes at once; so does one when the
/// connection cap is reached (the cap's waiting connections take its place). One whose first
/// request has not come yet (its client may have sent it just as the shutdown began) still
/// gets it within the header timeout, and a head that has begun to arrive is read: both are
/// answered, with `Connection: close`.
#[allow(clippy::too_many_arguments)]
async fn http1<A>(
    mut stream: Stream,
    accepted: Instant,
    fresh: Fresh,
    app: &Arc<A>,
    fast: Option<&FastPath>,
    limits: &ClientLimits,
    shutdown: ShutdownWatch,
    intake: Arc<super::Intake>,
) -> ConnClose
where
    A: HttpServerApp + Send + Sync + 'static,
{
    // The first request's head must be complete within the header timeout of the connect;
    // later ones may keep the client waiting up to the keep-alive timeout before they start.
    let mut wait_until = accepted + limits.header_timeout;
    let mut first = Some(fresh);
    // One wait for the shutdown for the connection's life, not one per request: each would
    // register with the signal, under its lock, and leave it again.
    let mut signal = intake.stop.subscribe();
    let mut stopping = std::pin::pin!(async move {
        loop {
            if signal.borrow_and_update().shutdown {
                return ConnClose::Shutdown;
            }
            // Room asked for while a request was served (this connection's first among them:
            // its wait begins after it) is looked at as the wait begins, not only when asked
            // again — the room may have been made meanwhile. Missed, the connections a burst
            // of clients opened at the cap all stayed, and the next client waited until one
            // closed by itself.
            if intake.take_shed() {
                return ConnClose::Shed;
            }
            if signal.changed().await.is_err() {
                return ConnClose::Shutdown; // the server is gone
            }
        }
    });
    // One timer for the waits between requests, for the connection's life: it is set again
    // when it would go off after a wait's end or goes off before it, not for every request
    // (each wait ends later than the one before).
    let mut timer = std::pin::pin!(tokio::time::sleep_until(wait_until));
    // What a client sent of its next request with the one before (HTTP/1.1 pipelining).
    let mut carried = BytesMut::new();
    // Whether the connection was told a next request came (told again only when that changes).
    let mut next_told = false;
    loop {
        // A later request whose head comes in more than one read is counted from its second.
        let mut partial = None;
        let head = read_head(
            &mut stream,
            std::mem::take(&mut carried),
            wait_until,
            timer.as_mut(),
            first.is_some(),
            &mut partial,
            stopping.as_mut(),
            limits,
        )
        .await
        .and_then(|h| match too_many_headers(&h) {
            true => Err(Refused::Reply(
                ConnClose::HeadTooLarge,
                answer_to(&h, TOO_LARGE_431),
            )),
            false => Ok(h),
        });
        let head = match head {
            Ok(mut h) => {
                // A request without a body that has the next one behind it: each goes its own
                // way (the fast path answers only a head that comes alone, and Pingora's
                // session would take the next request for this one's leftovers and close).
                if let Some(end) = next_request_at(&h) {
                    carried = h.split_off(end);
                    skip_blank_lines(&mut carried);
                }
                h
            }
            Err(Refused::Close(why)) => return why,
            Err(Refused::Reply(why, response)) => return refuse(stream, why, response).await,
        };
        // A head the fast path does not read goes to Pingora's proxy, whose parser answers
        // one it refuses with a bare 400 of its own and counts nothing: refused here instead.
        if !fast.is_some_and(|_| fast_reads(&head)) {
            if let Some(e) = malformed(&head).await {
                let head_request = head.starts_with(b"HEAD ");
                return refuse_malformed(stream, &e, head_request).await;
            }
            // A tunnel is no request a gateway proxies (Pingora's proxy refuses it too, with a
            // bare 405 of its own).
            if head.starts_with(b"CONNECT ") {
                return refuse(stream, ConnClose::Done, NOT_ALLOWED_405).await;
            }
        }
        let next = !carried.is_empty();
        if next != next_told {
            super::io::next_request_read(&stream, next);
            next_told = next;
        }
        match one_request(stream, head, app, fast, limits, &shutdown).await {
            Next::KeepAlive(s) => stream = s,
            Next::Close(why) => return why,
        }
        drop(partial);
        first = None;
        // Seconds away: the kernel's last tick is near enough.
        wait_until = Instant::from_std(crate::clock::soon()) + limits.keepalive_timeout;
    }
}

/// What follows a request on its connection.
enum Next {
    KeepAlive(Stream),
    Close(ConnClose),
}

/// Serves one request whose complete head has been read, on the fast path or Pingora's proxy.
async fn one_request<A>(
    stream: Stream,
    head: BytesMut,
    app: &Arc<A>,
    fast: Option<&FastPath>,
    limits: &ClientLimits,
    shutdown: &ShutdownWatch,
) -> Next
where
    A: HttpServerApp + Send + Sync + 'static,
{
    // Leaving (a shutdown, or an upgrade that took the listening sockets, seconds before the
    // shutdown begins): the answer says `Connection: close`, so the client's next request
    // goes on a new connection (to the new process) instead of racing the close of this one.
    let draining = *shutdown.borrow() || super::leaving();
    let keepalive = (!draining).then_some(limits.keepalive_timeout.as_secs().max(1));
    let session = match fast {
        Some(fast) => {
            let session_limits = SessionLimits {
                keepalive_secs: keepalive,
                read_timeout: limits.body_timeout,
            };
            // Boxed: what serving a request needs lives only while it is served, not in every
            // idle connection's task.
            match super::boxed(|| fast.serve(stream, head, &session_limits)).await {
                Served::KeepAlive(s) if !*shutdown.borrow() => return Next::KeepAlive(s),
                Served::KeepAlive(_) => return Next::Close(ConnClose::Shutdown),
                Served::Closed => return Next::Close(ConnClose::Done),
                Served::Malformed(s, e, head_request) => {
                    return Next::Close(refuse_malformed(s, &e, head_request).await)
                }
                Served::HandOver(session) => session,
            }
        }
        None => {
            super::io::hold_after_request(&stream, &head);
            let mut session = Box::new(ServerSession::new_http1(stream));
            session.set_pipelined_prefix(head);
            session
        }
    };
    // Boxed: Pingora's proxy serves what the fast path does not, and its state is large; in
    // the request's future every request would carry (and move) it.
    Box::pin(through_proxy(session, app, keepalive, limits, shutdown)).await
}

/// Serves one request with Pingora's proxy.
async fn through_proxy<A>(
    mut session: Box<ServerSession>,
    app: &Arc<A>,
    keepalive: Option<u64>,
    limits: &ClientLimits,
    shutdown: &ShutdownWatch,
) -> Next
where
    A: HttpServerApp + Send + Sync + 'static,
{
    session.set_keepalive(keepalive);
    session.set_read_timeout(Some(limits.body_timeout));
    // No write timeout of the session's: it bounds a whole write (a stored tile's body is
    // one), where the send timeout is a pause; the connection's own writes keep that
    // (`ClientIo`), whoever writes.
    match app.process_new_http(*session, shutdown).await {
        Some(reused) if !*shutdown.borrow() => {
            let stream = reused.consume().0;
            super::io::release(&stream);
            Next::KeepAlive(stream)
        }
        Some(_) => Next::Close(ConnClose::Shutdown),
        None => Next::Close(ConnClose::Done),
    }
}

pub(super) async fn shutting_down(watch: &mut ShutdownWatch) {
    while !*watch.borrow() {
        if watch.changed().await.is_err() {
            // The server is gone: nothing will ever be served again.
            return;
        }
    }
}
