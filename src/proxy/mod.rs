//! The glue between Pingora's proxy phases and the gateway: route, run the pipeline, hand the
//! proxy plan to Pingora, apply the header edits. Nothing else lives here.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use bytes::Bytes;
use pingora_cache::key::HashBinary;
use pingora_cache::{CacheKey, CacheMeta, ForcedFreshness, HitHandler, RespCacheable};
use pingora_core::protocols::l4::socket::SocketAddr as PeerAddr;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_core::{Error, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{FailToProxy, ProxyHttp, Session};

use crate::exchange::{self, apply_edits, Decision, Ended, Facts};
use crate::gateway::Gateway;
use crate::health::Health;
use crate::pipeline::context::{Exchange, HeaderEdit, Reply};

mod compression;
mod downstream;
mod ranges;

use downstream::{answer_continue, head_for_refresh};

/// A request begins being served: `tollgate_requests_in_flight` counts it (the drain on
/// SIGTERM waits for it to reach 0).
pub fn request_started() {
    crate::metrics::metrics().in_flight.inc();
}

/// A request [`request_started`] counted is done.
pub fn request_ended() {
    crate::metrics::metrics().in_flight.dec();
}

/// Requests being served right now.
pub fn requests_in_flight() -> i64 {
    crate::metrics::metrics().in_flight.get()
}

pub struct Tollgate {
    pub gateway: Arc<ArcSwap<Gateway>>,
    pub health: Arc<Health>,
    /// How long a write to an HTTP/2 client may wait for it to take anything (its flow
    /// control: the send timeout of the connection's socket never starts when the socket
    /// has room and the stream has none).
    pub h2_send_timeout: Duration,
    /// How long a request's body may take to arrive whole (then `408`): the body timeout
    /// bounds each pause only, and a body trickling a byte a minute would hold its
    /// connection and its upstream's for ever.
    pub request_timeout: Duration,
    /// How long a read of a request's body may wait (the connection's `--body-timeout`).
    pub body_timeout: Duration,
}

impl Tollgate {
    /// The next read of the request's body waits the body timeout, or what is left of the
    /// request timeout when that is less: the request timeout was looked at only as a piece
    /// came, and a body trickling a byte every few seconds got its `408` up to a body timeout
    /// late. (An upgrade's frames are no body: the request timeout does not bound them.)
    fn bound_body_read(&self, session: &mut Session, ctx: &RequestCtx) {
        let wait = if session.is_upgrade_req() || session.was_upgraded() {
            self.body_timeout
        } else {
            let left = self.request_timeout.saturating_sub(ctx.started.elapsed());
            self.body_timeout.min(left).max(Duration::from_millis(1))
        };
        session.set_read_timeout(Some(wait));
    }
}

/// Per-request state across Pingora's phases.
pub struct RequestCtx {
    x: Exchange,
    started: Instant,
    upstream_started: Option<Instant>,
    upstream_time: Option<Duration>,
    /// What the fast path decided for this request before it left it to Pingora.
    decided: Option<Decided>,
    /// The upstream's `304` to a revalidation of a stored tile.
    not_modified: Option<Box<ResponseHeader>>,
    /// The revalidation's `304` named another validator than the stored tile's: the tile goes.
    other_validator: bool,
    /// An HTTP/2 request's stream, counted open on its connection while the request lasts.
    _h2_stream: Option<crate::listener::h2::Stream>,
    /// An HTTP/2 request's head says HTTP/1.1 for the background refresh of its stale tile
    /// (see [`head_for_refresh`]) until its answer is written.
    h2_head_for_refresh: bool,
}

/// A request the fast path ran the pipelines of and hands to Pingora's proxy to finish.
pub struct Decided {
    pub x: Exchange,
    pub started: Instant,
}

/// Writes a gateway-made response, with the header edits the pipeline collected.
async fn send_reply(session: &mut Session, reply: Reply, edits: &[HeaderEdit]) -> Result<()> {
    let resp = exchange::reply_header(&reply, edits)?;
    let head_only = session.req_header().method == http::Method::HEAD || reply.body.is_empty();
    // A write that fails is the client's leaving (a reset stream, a closed connection): its
    // doing, not a failure of the gateway's (logged at debug, as on the fast path; an HTTP/2
    // stream so left counts as abandoned).
    session
        .write_response_header(Box::new(resp), head_only)
        .await
        .map_err(|e| e.into_down())?;
    if !head_only {
        session
            .write_response_body(Some(reply.body), true)
            .await
            .map_err(|e| e.into_down())?;
    }
    Ok(())
}

/// The request as the pipelines see it, from Pingora's session.
fn facts(session: &Session) -> Facts<'_> {
    Facts {
        head: session.req_header(),
        target: crate::exchange::RequestTarget::of(session.req_header()),
        client_ip: session
            .client_addr()
            .and_then(PeerAddr::as_inet)
            .map(|a| a.ip()),
        server_port: session
            .server_addr()
            .and_then(PeerAddr::as_inet)
            .map(|a| a.port()),
        tls: session.digest().is_some_and(|d| d.ssl_digest.is_some()),
        bodiless: false,
    }
}

#[async_trait]
impl ProxyHttp for Tollgate {
    type CTX = RequestCtx;

    /// One downstream module, the `compression` step's (idle unless a pipeline asks for it),
    /// in place of Pingora's default one.
    fn init_downstream_modules(&self, modules: &mut pingora_core::modules::http::HttpModules) {
        modules.add_module(compression::module());
    }

    fn new_ctx(&self) -> RequestCtx {
        request_started();
        RequestCtx {
            x: Exchange::default(),
            started: Instant::now(),
            upstream_started: None,
            upstream_time: None,
            decided: None,
            not_modified: None,
            other_validator: false,
            _h2_stream: None,
            h2_head_for_refresh: false,
        }
    }

    /// A request the fast path routed and ran the pipelines of, but leaves to this engine (it
    /// needs the cache, compression or HTTP/2 upstream): its decision comes along.
    fn on_connection_reuse(
        &self,
        _session: &mut Session,
        ctx: &mut RequestCtx,
        prev: Box<dyn std::any::Any + Send + Sync>,
    ) {
        if let Ok(decided) = prev.downcast::<Decided>() {
            ctx.decided = Some(*decided);
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        self.bound_body_read(session, ctx);
        if session.is_http2() {
            session.set_write_timeout(Some(self.h2_send_timeout));
            let client = session.client_addr().and_then(PeerAddr::as_inet).copied();
            let local = session.server_addr().and_then(PeerAddr::as_inet).copied();
            if let (Some(client), Some(local)) = (client, local) {
                use crate::listener::h2::{Begun, Stream};
                match Stream::begun(client, local) {
                    Some(Begun::Counted(s)) => ctx._h2_stream = Some(s),
                    Some(Begun::AtCap) => {
                        crate::metrics::metrics().client_cap_waits.inc();
                        let reply = Reply::text(503, "Service Unavailable");
                        let edits = crate::listener::h2::at_cap_edits(session.req_header());
                        send_reply(session, reply, &edits).await?;
                        return Ok(true);
                    }
                    None => {}
                }
            }
            if let Err(reply) = exchange::settle_http2_head(session.req_header_mut()) {
                send_reply(session, reply, &[]).await?;
                return Ok(true);
            }
        }
        if downstream::answered_by_its_head(session).await? {
            return Ok(true);
        }
        // (A head the fast path decided for was read again here: its named headers too.)
        exchange::drop_connection_named(session.req_header_mut());
        let decision = match ctx.decided.take() {
            Some(Decided { x, started }) => {
                ctx.x = x;
                ctx.started = started;
                Decision::Proxy
            }
            None => {
                let gw = self.gateway.load();
                ctx.x.refresh = session.subrequest_ctx.is_some();
                exchange::decide(&gw, &self.health, &facts(session), &mut ctx.x).await
            }
        };
        match decision {
            Decision::Proxy => {
                if let Some(level) = ctx.x.compress {
                    compression::start(session, level);
                }
                Ok(false)
            }
            Decision::Reply(reply) => {
                send_reply(session, reply, &ctx.x.response_edits).await?;
                Ok(true)
            }
            Decision::Refuse(reply) => {
                session.set_keepalive(None);
                send_reply(session, reply, &[]).await?;
                Ok(true)
            }
        }
    }

    fn request_cache_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<()> {
        crate::cache::enable(session, &mut ctx.x);
        Ok(())
    }

    fn cache_key_callback(&self, session: &Session, ctx: &mut RequestCtx) -> Result<CacheKey> {
        crate::cache::key(session, &ctx.x)
    }

    fn response_cache_filter(
        &self,
        session: &Session,
        resp: &ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<RespCacheable> {
        crate::cache::note_expired(session, &mut ctx.x);
        Ok(crate::cache::cacheable(
            session,
            resp,
            &ctx.x,
            ctx.not_modified.as_deref(),
        ))
    }

    fn cache_vary_filter(
        &self,
        meta: &CacheMeta,
        ctx: &mut RequestCtx,
        req: &RequestHeader,
    ) -> Option<HashBinary> {
        crate::cache::variance(meta, req, &mut ctx.x)
    }

    /// The lookup found nothing to serve or revalidate: whatever an earlier lookup of this
    /// request found (before it waited on another's fill) no longer applies.
    fn cache_miss(&self, session: &mut Session, ctx: &mut RequestCtx) {
        crate::cache::note_miss(&mut ctx.x);
        session.cache.cache_miss();
    }

    async fn cache_hit_filter(
        &self,
        session: &mut Session,
        meta: &CacheMeta,
        _hit_handler: &mut HitHandler,
        is_fresh: bool,
        ctx: &mut RequestCtx,
    ) -> Result<Option<ForcedFreshness>> {
        Ok(crate::cache::hit_filter(
            session, meta, is_fresh, &mut ctx.x,
        ))
    }

    /// A client's conditions as Pingora judges them, on a stored tile's answer only: one from
    /// the upstream goes whole (see [`crate::cache::served_from_store`]).
    fn cache_not_modified_filter(
        &self,
        session: &Session,
        resp: &ResponseHeader,
        _ctx: &mut RequestCtx,
    ) -> Result<bool> {
        let req = session.req_header();
        Ok(crate::cache::served_from_store(session)
            && (pingora_core::protocols::http::conditional_filter::not_modified_filter(req, resp)
                || crate::cache::hit::any_tag_matches(req, resp)))
    }

    /// Ranges as Pingora applies them, except where a `compression` step may compress the
    /// answer: a range of the identity body sent gzip-coded is no range of anything (nginx's
    /// gzip turns ranges off too). Such a request gets the whole answer, `200`; so does one
    /// whose answer the cache is filling (see [`crate::cache::filling`]). Ranges of no bytes
    /// are refused (see [`ranges`]).
    fn range_header_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        _ctx: &mut RequestCtx,
    ) -> pingora_proxy::RangeType {
        if compression::may_compress(session, resp) {
            return pingora_proxy::RangeType::None;
        }
        let length = crate::cache::store::content_length(resp);
        if crate::cache::filling(session) {
            // Offered as Pingora offers them on an answer with no range asked for.
            if resp.status == http::StatusCode::OK && length.is_some() {
                let _ = resp.insert_header(http::header::ACCEPT_RANGES, "bytes");
            }
            return pingora_proxy::RangeType::None;
        }
        ranges::apply(session, resp)
    }

    fn should_serve_stale(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        error: Option<&Error>,
    ) -> bool {
        let serve = crate::cache::serve_stale(session, error);
        if serve && error.is_none() && session.is_http2() {
            ctx.h2_head_for_refresh = head_for_refresh(session);
        }
        if let (true, Some(e)) = (serve, error) {
            // Pingora does not use the client's connection again after an upstream failure,
            // even one a stale tile answered; after a 5xx answer it reads on from the upstream
            // while the client has its stale tile, and a request the client sends meanwhile
            // ends the connection (reset, with that request unanswered). The answer says the
            // connection closes (it said keep-alive, and the client's next request on it
            // failed). A tile's failure is asked again once a second: its other requests are
            // answered stale without asking, on connections kept.
            session.set_keepalive(None);
            // One line per api endpoint and kind of failure (folded while it repeats), where
            // Pingora's own names each tile.
            let endpoint = ctx.x.endpoint.as_ref().map_or("", |e| &*e.name);
            match e.etype() {
                ErrorType::HTTPStatus(s) => log::warn!(
                    "upstream failure: api endpoint `{endpoint}`: status {s}; answered from a stale tile"
                ),
                _ => log::warn!(
                    "upstream failure: api endpoint `{endpoint}`: {}; answered from a stale tile",
                    crate::exchange::upstream_error_label(e)
                ),
            }
        }
        serve
    }

    /// What Pingora writes about a request in its own log lines: no credential in the query.
    fn request_summary(&self, session: &Session, _ctx: &RequestCtx) -> String {
        crate::access_log::summary(session.req_header(), &self.gateway.load())
    }

    async fn upstream_peer(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        let Some(plan) = &mut ctx.x.proxy else {
            return Error::e_explain(ErrorType::InternalError, "no proxy plan for this request");
        };
        ctx.upstream_started.get_or_insert_with(Instant::now);
        let url = session.req_header().uri.path_and_query();
        let resend = plan.resend_next;
        let mut peer = crate::upstream::attempt::begin(plan, url.map_or("/", |u| u.as_str()))?;
        if resend {
            crate::upstream::attempt::fresh_connection(&mut peer);
        }
        Ok(peer)
    }

    fn fail_to_connect(
        &self,
        session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut RequestCtx,
        e: Box<Error>,
    ) -> Box<Error> {
        match &mut ctx.x.proxy {
            Some(plan) => {
                crate::upstream::attempt::connect_failed(plan, &session.req_header().method, e)
            }
            None => e,
        }
    }

    fn error_while_proxy(
        &self,
        _peer: &HttpPeer,
        session: &mut Session,
        mut e: Box<Error>,
        ctx: &mut RequestCtx,
        client_reused: bool,
    ) -> Box<Error> {
        // (The gateway's own `100 Continue` is no start of the answer.)
        let started =
            ctx.upstream_time.is_some() || exchange::final_status(session.response_written()) != 0;
        match &mut ctx.x.proxy {
            Some(plan) => crate::upstream::attempt::broke(
                plan,
                &session.req_header().method,
                started,
                client_reused,
                session.as_ref().retry_buffer_truncated(),
                e,
            ),
            None => {
                e.retry.decide_reuse(client_reused);
                e
            }
        }
    }

    fn suppress_proxy_warn_log(
        &self,
        _session: &Session,
        _ctx: &RequestCtx,
        _error: &Error,
        _context: pingora_proxy::ProxyWarnLogContext,
    ) -> bool {
        true
    }

    async fn request_body_filter(
        &self,
        session: &mut Session,
        _body: &mut Option<bytes::Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if let Some(stream) = &ctx._h2_stream {
            stream.body_read(end_of_stream);
        }
        // (An upgraded connection's frames are no request body.)
        if !end_of_stream && !session.was_upgraded() && ctx.started.elapsed() > self.request_timeout
        {
            let mut e = Error::explain(
                ErrorType::ReadTimedout,
                "the request's body took longer than the request timeout",
            );
            e.as_down();
            return Err(e);
        }
        self.bound_body_read(session, ctx);
        Ok(())
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        // An HTTP/2 request body is waited for from here on (before, the gateway had not
        // asked for it: a hit, a connect that takes long).
        if let Some(stream) = &mut ctx._h2_stream {
            if !session.is_body_done() {
                stream.body_awaited();
            }
        }
        crate::cache::keep_head(session, upstream);
        // (Once the upstream is connected: a hit, or a refusal, sends none.) An `Expect` is
        // the gateway's to meet, never sent upstream (as nginx leaves it).
        answer_continue(session).await?;
        upstream.remove_header(&http::header::EXPECT);
        exchange::upstream_request(upstream, &ctx.x, crate::cache::active(session))?;
        // An HTTP/1 upstream connection that carried a request body is not used again: an
        // upstream that answers without reading the body (as servers that ignore a GET's body
        // do) reads it as its next request, and the next request sent on the connection — a
        // cache fill, for every consumer — got the answer to the one the body held.
        if upstream.version == http::Version::HTTP_11 && !session.is_body_empty() {
            upstream.insert_header(http::header::CONNECTION, "close")?;
        }
        // The body's first read comes after the upstream's connect: it waits what is left then.
        self.bound_body_read(session, ctx);
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        // A protocol switch the client did not ask for would open a tunnel past the pipeline
        // (Pingora refuses only a switch one side asked for and the other not): 502, as on
        // the fast path. So is an answer framed ambiguously, and a service exception where a
        // stale tile may answer instead. All before the answer counts as begun
        // (`upstream_time`): nothing of it reached the client, so the request is retried on
        // another url and the url blamed, as on the fast path.
        if upstream_response.status == http::StatusCode::SWITCHING_PROTOCOLS
            && !(session.is_upgrade_req() && session.req_header().version == http::Version::HTTP_11)
        {
            return Err(crate::fastpath::relay::upstream_error(
                ErrorType::InvalidHTTPHeader,
                "101 to a request without Upgrade",
            ));
        }
        crate::fastpath::relay::framed(upstream_response)?;
        crate::cache::add_missing_vary(&ctx.x, upstream_response);
        let reported = crate::cache::exception_as_failure(session, &ctx.x, upstream_response)?;
        if ctx.upstream_time.is_none() {
            ctx.upstream_time = ctx.upstream_started.map(|t| t.elapsed());
        }
        if let Some(plan) = &mut ctx.x.proxy {
            let status = upstream_response.status.as_u16();
            crate::upstream::attempt::answered(plan, status, reported);
        }
        if let Some(r) = crate::cache::not_modified(&ctx.x, upstream_response) {
            ctx.not_modified = Some(r);
            ctx.other_validator = crate::cache::drop_other_validator(session, upstream_response);
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if std::mem::take(&mut ctx.h2_head_for_refresh) {
            session.req_header_mut().set_version(http::Version::HTTP_2);
        }
        // A stop that began while the upstream was asked: the answer says the connection
        // closes, as it will.
        if crate::listener::leaving() {
            session.set_keepalive(None);
        }
        // The upstream connection's own headers reach no client (but a protocol switch's).
        if upstream_response.status != http::StatusCode::SWITCHING_PROTOCOLS {
            exchange::strip_hop_by_hop(upstream_response);
        }
        if upstream_response.status == http::StatusCode::NO_CONTENT {
            // A 204 has no body: neither length nor framing (RFC 9110 §8.6, RFC 9112 §6.1).
            upstream_response.remove_header(&http::header::CONTENT_LENGTH);
            upstream_response.remove_header(&http::header::TRANSFER_ENCODING);
        }
        // (An interim answer, `100` or `103`, says nothing of the cache: the final one does.)
        if ctx.x.cache.is_some() && !upstream_response.status.is_informational() {
            upstream_response.insert_header(
                crate::cache::X_CACHE_STATUS.clone(),
                crate::cache::status(session, &ctx.x),
            )?;
            crate::cache::add_upstream_age(session, ctx.not_modified.as_deref(), upstream_response);
            crate::cache::invalidate_after(
                session,
                &self.gateway,
                &ctx.x,
                upstream_response.status,
            )
            .await;
            if ctx.other_validator {
                crate::cache::forget(session).await;
                crate::cache::vary_of_304(ctx.not_modified.as_deref(), upstream_response);
            }
        }
        // HTTP/2 frames a compressed body itself.
        if compression::response_header(session, upstream_response) && session.is_http2() {
            upstream_response.remove_header(&http::header::TRANSFER_ENCODING);
        }
        let mut close_delimited = false;
        if !session.is_http2() {
            // The gateway's own version (RFC 9110 §2.5) ...
            upstream_response.set_version(http::Version::HTTP_11);
            // ... and no chunks to an HTTP/1.0 client, which knows none (RFC 9112 §6.1): the
            // body ends with the connection.
            if session.req_header().version < http::Version::HTTP_11
                && upstream_response
                    .headers
                    .contains_key(http::header::TRANSFER_ENCODING)
            {
                upstream_response.remove_header(&http::header::TRANSFER_ENCODING);
                session.set_keepalive(None);
                close_delimited = true;
            }
        }
        apply_edits(upstream_response, &ctx.x.response_edits)?;
        // Marked once the head is sure to go (an error reply in its place is whole).
        if close_delimited {
            if let Some(stream) = session.as_downstream().stream() {
                crate::listener::io::ends_with_close(stream);
            }
        }
        Ok(())
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        let (mut code, reply) = exchange::failure_reply(e);
        // The connection closes after an error reply: its head says so.
        session.set_keepalive(None);
        // A response whose head went out already is cut short as it is: the connection closes
        // without its body's end, so the client sees it incomplete (an error reply would go
        // into its body, and finish it as if whole). An interim `100 Continue` alone is no
        // answer yet.
        let mut reply = reply.filter(|_| exchange::final_status(session.response_written()) == 0);
        // The cache step's verdict (no header without one).
        let mut label = "";
        if reply.is_some() && ctx.x.cache.is_some() {
            let (status, verdict) = crate::cache::failed(session, &ctx.x, e, code);
            label = verdict;
            if status != code {
                code = status;
                reply = Some(crate::responses::gateway_timeout());
            }
        }
        if let Some(reply) = reply {
            let edits = crate::cache::answer_edits(&ctx.x, label);
            if let Err(err) = send_reply(session, reply, &edits).await {
                log::debug!("could not send the error response: {err}");
            }
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    /// Pingora would log every failed request at error level; `logging` writes one line per
    /// upstream failure instead (folded when repeated), and client departures at debug.
    fn suppress_error_log(&self, _session: &Session, _ctx: &Self::CTX, _error: &Error) -> bool {
        true
    }

    fn upstream_response_body_filter(
        &self,
        _session: &mut Session,
        _body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<Option<Duration>> {
        if end_of_stream {
            // The url's answer is in whole, while the client may still be reading it.
            crate::upstream::attempt::end(&mut ctx.x.proxy);
        }
        match &ctx.x.proxy {
            // The upstream's failure (logged and counted as one, as on the fast path).
            Some(plan) if crate::upstream::attempt::overdue(plan) => Err(Error::create(
                ErrorType::ReadTimedout,
                pingora_core::ErrorSource::Upstream,
                Some("the total timeout passed".into()),
                None,
            )),
            _ => Ok(None),
        }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        request_ended();
        crate::listener::io::body_unread(session.as_downstream_mut(), e);
        // An HTTP/2 stream its client reset (or left) before its answer was whole.
        if let (Some(stream), Some(e)) = (&mut ctx._h2_stream, e) {
            if e.esource() == &pingora_core::ErrorSource::Downstream {
                let asked_upstream = ctx.x.proxy.as_ref().is_some_and(|p| p.attempts > 0);
                stream.abandoned(asked_upstream);
            }
        }
        crate::upstream::attempt::end(&mut ctx.x.proxy);
        crate::cache::refresh_broke(session, &ctx.x, e);
        if ctx.x.refresh {
            let status = crate::cache::status(session, &ctx.x);
            exchange::refreshed(&ctx.x, status, e);
            return;
        }
        let cache = ctx.x.cache.as_ref().map(|_| {
            let from_cache =
                crate::cache::served_from_cache(session).then_some(session.body_bytes_sent());
            (crate::cache::status(session, &ctx.x), from_cache)
        });
        if cache.is_some() {
            if let Some(waited) = crate::cache::lock_wait(session) {
                crate::metrics::metrics()
                    .cache
                    .lock_wait
                    .observe(waited.as_secs_f64());
            }
        }
        let ended = Ended {
            status: exchange::final_status(session.response_written()),
            elapsed: ctx.started.elapsed(),
            upstream_time: ctx.upstream_time,
            bytes_in: session.body_bytes_read(),
            bytes_out: session.body_bytes_sent(),
            error: e,
            cache,
        };
        let gw = self.gateway.load();
        exchange::account(
            &gw,
            &exchange::Requested::of(session.req_header()),
            &ctx.x,
            &ended,
        );
    }
}
