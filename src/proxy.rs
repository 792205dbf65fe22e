//! The glue between Pingora's proxy phases and the gateway: route, run the pipeline, hand the
//! proxy plan to Pingora, apply the header edits. Nothing else lives here.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use pingora_cache::key::HashBinary;
use pingora_cache::{CacheKey, CacheMeta, RespCacheable};
use pingora_core::protocols::http::compression::ResponseCompressionCtx;
use pingora_core::protocols::l4::socket::SocketAddr as PeerAddr;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_core::{Error, ErrorSource, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{FailToProxy, ProxyHttp, Session};

use crate::gateway::Gateway;
use crate::health::Health;
use crate::pipeline::context::{Exchange, HeaderEdit, Outcome, Reply, Request};
use crate::request_id::new_request_id;
use crate::responses;
use crate::routing::Target;

/// Requests being served right now (the drain on SIGTERM waits for this to reach 0).
pub static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);

/// The largest request head served (HTTP/1 heads are bounded as they are read; this bounds
/// the others).
const MAX_REQUEST_HEAD: usize = crate::listener::MAX_REQUEST_HEAD;

static EG_CONSUMER_ID: HeaderName = HeaderName::from_static("eg-consumer-id");
static X_CACHE_STATUS: HeaderName = HeaderName::from_static("x-cache-status");

pub struct Tollgate {
    pub gateway: Arc<ArcSwap<Gateway>>,
    pub health: Arc<Health>,
}

/// Per-request state across Pingora's phases.
pub struct RequestCtx {
    x: Exchange,
    /// Compression of this response, when its pipeline asked for it.
    compression: Option<Box<ResponseCompressionCtx>>,
    started: Instant,
    upstream_started: Option<Instant>,
    upstream_time: Option<Duration>,
}

/// What the request phase decided.
enum Decision {
    Reply(Reply),
    /// Answer and close the connection: what follows the head cannot be trusted.
    Refuse(Reply),
    Proxy,
}

impl Tollgate {
    /// Routes the request and runs pipelines until one responds or proxies.
    async fn decide(&self, session: &Session, x: &mut Exchange) -> Decision {
        let gw = self.gateway.load();
        let head = session.req_header();
        let method = &head.method;
        let path = head.uri.path();
        let host = head
            .headers
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| head.uri.authority().map(|a| a.as_str()));
        let head_size = head.uri.path_and_query().map_or(0, |p| p.as_str().len())
            + head
                .headers
                .iter()
                .map(|(n, v)| n.as_str().len() + v.len() + 4)
                .sum::<usize>();
        if head_size > MAX_REQUEST_HEAD {
            return Decision::Reply(Reply::text(431, "Request Header Fields Too Large"));
        }
        if let Some(why) = crate::framing::problem(&head.headers) {
            log::debug!("refused a request: {why}");
            return Decision::Refuse(Reply::text(400, "Bad Request"));
        }
        if path == gw.healthcheck_path
            && (*method == http::Method::GET || *method == http::Method::HEAD)
        {
            if head.uri.query().is_some_and(|q| {
                q.split('&')
                    .any(|p| p == "ready" || p.starts_with("ready="))
            }) {
                return Decision::Reply(responses::readiness(self.health.not_ready()));
            }
            return Decision::Reply(responses::healthy());
        }
        let url = head.uri.path_and_query().map_or(path, |pq| pq.as_str());
        let client_ip = session
            .client_addr()
            .and_then(PeerAddr::as_inet)
            .map(|a| a.ip());
        let server_port = session
            .server_addr()
            .and_then(PeerAddr::as_inet)
            .map(|a| a.port());
        let tls = session.digest().is_some_and(|d| d.ssl_digest.is_some());
        let mut from = 0;
        while let Some(ri) = gw.router.find(from, host, path, method) {
            let route = &gw.router.routes()[ri];
            let Target::Pipeline(pi) = route.target else {
                return Decision::Reply(responses::not_found());
            };
            let req = Request {
                method,
                path,
                query: head.uri.query(),
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
                x.request_id = new_request_id(); // EG makes a new context per route match
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
                        other => other,
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
}

/// Writes a gateway-made response, with the header edits the pipeline collected.
async fn send_reply(session: &mut Session, reply: Reply, edits: &[HeaderEdit]) -> Result<()> {
    let mut resp =
        ResponseHeader::build(reply.status, Some(4 + reply.headers.len() + edits.len()))?;
    if let Some(ct) = reply.content_type {
        resp.insert_header(http::header::CONTENT_TYPE, ct)?;
    }
    for (n, v) in reply.headers {
        resp.insert_header(n, v)?;
    }
    apply_edits(&mut resp, edits)?;
    if resp.headers.get(http::header::CONTENT_LENGTH).is_none() {
        resp.insert_header(http::header::CONTENT_LENGTH, reply.body.len())?;
    }
    let head_only = session.req_header().method == http::Method::HEAD || reply.body.is_empty();
    session
        .write_response_header(Box::new(resp), head_only)
        .await?;
    if !head_only {
        session.write_response_body(Some(reply.body), true).await?;
    }
    Ok(())
}

/// Request and response headers of Pingora both take edits.
trait EditableHeaders {
    fn has(&self, name: &HeaderName) -> bool;
    fn set(&mut self, name: HeaderName, value: HeaderValue) -> Result<()>;
    fn add(&mut self, name: HeaderName, value: HeaderValue) -> Result<()>;
    fn remove(&mut self, name: &HeaderName);
}

macro_rules! editable {
    ($t:ty) => {
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

fn apply_edits(target: &mut impl EditableHeaders, edits: &[HeaderEdit]) -> Result<()> {
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

#[async_trait]
impl ProxyHttp for Tollgate {
    type CTX = RequestCtx;

    /// No downstream modules: Pingora's default adds a (disabled) compression module that
    /// every response would still pass through; tiles are already compressed.
    fn init_downstream_modules(&self, _modules: &mut pingora_core::modules::http::HttpModules) {}

    fn new_ctx(&self) -> RequestCtx {
        IN_FLIGHT.fetch_add(1, Ordering::Relaxed);
        crate::metrics::metrics().in_flight.inc();
        RequestCtx {
            x: Exchange::default(),
            compression: None,
            started: Instant::now(),
            upstream_started: None,
            upstream_time: None,
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        ctx.x.request_id = new_request_id();
        match self.decide(session, &mut ctx.x).await {
            Decision::Proxy => {
                if let Some(level) = ctx.x.compress {
                    let mut c = ResponseCompressionCtx::new(level, false, false);
                    c.request_filter(session.req_header());
                    ctx.compression = Some(Box::new(c));
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
        _session: &Session,
        resp: &ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<RespCacheable> {
        Ok(crate::cache::cacheable(resp, &ctx.x))
    }

    fn cache_vary_filter(
        &self,
        meta: &CacheMeta,
        _ctx: &mut RequestCtx,
        req: &RequestHeader,
    ) -> Option<HashBinary> {
        crate::cache::variance(meta, req)
    }

    fn should_serve_stale(
        &self,
        _session: &mut Session,
        _ctx: &mut RequestCtx,
        error: Option<&Error>,
    ) -> bool {
        crate::cache::serve_stale(error)
    }

    /// What Pingora writes about a request in its own log lines: no credential in the query.
    fn request_summary(&self, session: &Session, _ctx: &RequestCtx) -> String {
        let head = session.req_header();
        let url = head
            .uri
            .path_and_query()
            .map_or_else(|| head.uri.path(), |p| p.as_str());
        let gw = self.gateway.load();
        format!(
            "{} {}",
            head.method,
            crate::access_log::redact(url, &gw.secret_query_params)
        )
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
        crate::upstream::attempt::begin(plan, session.req_header().uri.path())
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
        let started = ctx.upstream_time.is_some() || session.response_written().is_some();
        match &mut ctx.x.proxy {
            Some(plan) => crate::upstream::attempt::broke(
                plan,
                &session.req_header().method,
                started,
                client_reused,
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

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        // A client never speaks for the gateway about who the consumer is.
        upstream.remove_header(&EG_CONSUMER_ID);
        let filling = crate::cache::active(session);
        if filling {
            // A cache fill fetches for every consumer: none of one consumer's credentials.
            upstream.remove_header(&http::header::AUTHORIZATION);
        }
        if let Some(plan) = &ctx.x.proxy {
            let uri = plan
                .path
                .parse::<http::Uri>()
                .map_err(|e| Error::because(ErrorType::InvalidHTTPHeader, "upstream path", e))?;
            upstream.set_uri(uri);
            if let Some(host) = &plan.host {
                upstream.insert_header(http::header::HOST, host.clone())?;
            }
        }
        apply_edits(upstream, &ctx.x.upstream_edits)?;
        if filling {
            upstream.remove_header(&EG_CONSUMER_ID);
        }
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        _upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if ctx.upstream_time.is_none() {
            ctx.upstream_time = ctx.upstream_started.map(|t| t.elapsed());
        }
        if let Some(plan) = &ctx.x.proxy {
            crate::upstream::attempt::answered(plan, _upstream_response.status.as_u16());
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if ctx.x.cache.is_some() {
            upstream_response
                .insert_header(X_CACHE_STATUS.clone(), crate::cache::status(session))?;
        }
        if let Some(c) = &mut ctx.compression {
            let no_body = session.req_header().method == http::Method::HEAD
                || matches!(upstream_response.status.as_u16(), 204 | 304);
            c.response_header_filter(upstream_response, no_body);
            if session.is_http2() {
                // HTTP/2 frames the body itself.
                upstream_response.remove_header(&http::header::TRANSFER_ENCODING);
            }
        }
        apply_edits(upstream_response, &ctx.x.response_edits)
    }

    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<Option<Duration>> {
        if let Some(c) = &mut ctx.compression {
            if c.is_enabled() {
                *body = c.response_body_filter(body.as_ref(), end_of_stream);
            }
        }
        Ok(None)
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        let code = match e.etype() {
            ErrorType::HTTPStatus(code) => *code,
            _ => match e.esource() {
                ErrorSource::Downstream => match e.etype() {
                    ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed => 0,
                    // A request body that stopped arriving (the body timeout).
                    ErrorType::ReadTimedout => 408,
                    ErrorType::WriteTimedout => 0,
                    _ => 400,
                },
                _ => 502,
            },
        };
        if code > 0 {
            let reply = match code {
                502 => responses::bad_gateway(),
                400 => Reply::text(400, "Bad Request"),
                c => Reply::text(
                    c,
                    Bytes::from(
                        http::StatusCode::from_u16(c)
                            .ok()
                            .and_then(|s| s.canonical_reason())
                            .unwrap_or("Error"),
                    ),
                ),
            };
            if let Err(err) = send_reply(session, reply, &ctx.x.response_edits).await {
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
        _end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<Option<Duration>> {
        match &ctx.x.proxy {
            Some(plan) if crate::upstream::attempt::overdue(plan) => {
                Error::e_explain(ErrorType::ReadTimedout, "the total timeout passed")
            }
            _ => Ok(None),
        }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        IN_FLIGHT.fetch_sub(1, Ordering::Relaxed);
        if let Some(plan) = &mut ctx.x.proxy {
            crate::upstream::attempt::end(plan);
        }
        let m = crate::metrics::metrics();
        m.in_flight.dec();
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        let elapsed = ctx.started.elapsed();
        let upstream = ctx.upstream_time.map(|d| d.as_secs_f64());
        let (bytes_in, bytes_out) = (session.body_bytes_read(), session.body_bytes_sent());
        let endpoint = ctx.x.endpoint.as_deref();
        endpoint.map_or(&m.unrouted, |ep| &ep.metrics).record(
            status,
            elapsed.as_secs_f64(),
            upstream,
            bytes_in,
            bytes_out,
        );
        if let Some(e) = e {
            log_failure(e, ctx, status);
            if e.esource() == &ErrorSource::Upstream {
                m.upstream_error(upstream_error_kind(e));
            }
        }
        let cache_status = ctx.x.cache.as_ref().map(|_| crate::cache::status(session));
        if let Some(status) = cache_status {
            let from_cache = crate::cache::served_from_cache(session).then_some(bytes_out);
            endpoint
                .map_or(&m.unrouted, |ep| &ep.metrics)
                .cache
                .record(status, from_cache);
            if let Some(waited) = crate::cache::lock_wait(session) {
                m.cache.lock_wait.observe(waited.as_secs_f64());
            }
        }
        let consumer = ctx.x.consumer.as_ref().map(|c| &*c.id);
        if ctx.x.metered {
            m.count(status, consumer, endpoint.map_or("", |ep| &*ep.name));
        }
        if crate::access_log::enabled() {
            let head = session.req_header();
            let url = head
                .uri
                .path_and_query()
                .map_or_else(|| head.uri.path(), |p| p.as_str());
            let gw = self.gateway.load();
            let line = serde_json::json!({
                "time": crate::consumers::model::rfc3339_now(),
                "method": head.method.as_str(),
                "path": crate::access_log::redact(url, &gw.secret_query_params),
                "status": status,
                "duration_ms": (elapsed.as_secs_f64() * 1000.0 * 1000.0).round() / 1000.0,
                "upstream_ms": upstream.map(|u| (u * 1000.0 * 1000.0).round() / 1000.0),
                "bytes_in": bytes_in,
                "bytes_out": bytes_out,
                "consumer": consumer.unwrap_or("anonymous"),
                "api_endpoint": endpoint.map(|ep| &*ep.name),
                "upstream": ctx.x.proxy.as_ref().map(|p| p.addr.to_string()),
                "cache": cache_status,
                "request_id": ctx.x.request_id,
            });
            crate::access_log::write(line.to_string());
        }
    }
}

/// One line for a request that failed: a warning naming the api endpoint, the upstream and the
/// kind of failure when the upstream failed; debug when the client went away.
fn log_failure(e: &Error, ctx: &RequestCtx, status: u16) {
    match e.esource() {
        ErrorSource::Upstream => {
            let kind = crate::metrics::UPSTREAM_ERROR_KINDS
                .get(upstream_error_kind(e))
                .copied()
                .unwrap_or("other");
            log::warn!(
                "upstream failure: api endpoint `{}`, upstream {}, {kind}; answered {status}",
                ctx.x.endpoint.as_ref().map_or("", |ep| &*ep.name),
                ctx.x
                    .proxy
                    .as_ref()
                    .map_or_else(|| "?".to_string(), |p| p.addr.to_string()),
            );
        }
        ErrorSource::Downstream => log::debug!("client went away: {e}"),
        _ => log::warn!(
            "request failed: api endpoint `{}`: {e}; answered {status}",
            ctx.x.endpoint.as_ref().map_or("", |ep| &*ep.name)
        ),
    }
}

/// Which of [`crate::metrics::UPSTREAM_ERROR_KINDS`] an upstream error is.
fn upstream_error_kind(e: &Error) -> usize {
    match e.etype() {
        ErrorType::ConnectRefused => 0,
        ErrorType::ConnectNoRoute => crate::metrics::UNAVAILABLE,
        ErrorType::ConnectTimedout => 1,
        ErrorType::ReadTimedout | ErrorType::WriteTimedout => 2,
        ErrorType::ConnectionClosed
        | ErrorType::ReadError
        | ErrorType::WriteError
        | ErrorType::ConnectError => 3,
        ErrorType::TLSHandshakeFailure
        | ErrorType::TLSHandshakeTimedout
        | ErrorType::InvalidCert
        | ErrorType::HandshakeError => 4,
        _ => 6,
    }
}
