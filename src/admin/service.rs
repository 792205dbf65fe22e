//! The admin listener on Pingora: `/s3/*` (the storage route) is proxied, streamed and signed,
//! to the S3 provider; every other request is answered by the [`AdminApi`] in the request phase.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use bytes::Bytes;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_core::{Error, ErrorSource, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{FailToProxy, ProxyHttp, Session};

use super::storage::{ObjectRequest, Storage};
use super::AdminApi;
use crate::gateway::Gateway;

pub struct AdminService {
    pub api: AdminApi,
    pub gateway: Arc<ArcSwap<Gateway>>,
}

pub struct AdminCtx {
    object: Option<(Arc<Storage>, ObjectRequest)>,
}

/// Writes a whole response (HEAD gets the headers only).
async fn write(session: &mut Session, resp: http::Response<Vec<u8>>) -> Result<()> {
    let (parts, body) = resp.into_parts();
    // A body not read whole (too slow, too large, broken) leaves the connection unusable:
    // its answer says `Connection: close`.
    if parts
        .headers
        .get(http::header::CONNECTION)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"))
    {
        session.set_keepalive(None);
    }
    let mut head = ResponseHeader::build(parts.status, Some(parts.headers.len() + 1))?;
    for (n, v) in &parts.headers {
        head.insert_header(n.clone(), v.clone())?;
    }
    if !parts.headers.contains_key(http::header::CONTENT_LENGTH) {
        head.insert_header(http::header::CONTENT_LENGTH, body.len())?;
    }
    let head_only = session.req_header().method == http::Method::HEAD || body.is_empty();
    session
        .write_response_header(Box::new(head), head_only)
        .await?;
    if !head_only {
        session
            .write_response_body(Some(Bytes::from(body)), true)
            .await?;
    }
    Ok(())
}

#[async_trait]
impl ProxyHttp for AdminService {
    type CTX = AdminCtx;

    fn new_ctx(&self) -> AdminCtx {
        AdminCtx { object: None }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut AdminCtx) {
        crate::listener::io::body_unread(session.as_downstream_mut(), e);
        let Some(e) = e else { return };
        // The client's doing (it left, its body stalled: answered 408): at debug, as on the
        // gateway's port.
        if e.esource() == &ErrorSource::Downstream {
            log::debug!("admin API: a request ended on the client's side: {e}");
            return;
        }
        let Some((storage, o)) = &ctx.object else {
            log::warn!("admin API: a request failed: {e}");
            return;
        };
        // One line per provider and failure, folded while it repeats (Pingora's own line, at
        // error level, named each object; the error names no object).
        let provider = storage.providers.get(o.provider).map_or("", |p| &*p.name);
        let answered = match session.response_written().map(|r| r.status.as_u16()) {
            Some(s) if s < 400 => format!("cut short after its {s} head"),
            Some(s) => format!("answered {s}"),
            None => "closed".into(),
        };
        log::warn!("storage route: provider `{provider}`: {e}; {answered}");
    }

    /// Written by `logging` instead: one line per provider and kind of failure.
    fn suppress_error_log(&self, _session: &Session, _ctx: &Self::CTX, _error: &Error) -> bool {
        true
    }

    /// The request as Pingora's own log lines name it (a failure to reach a storage
    /// provider): its query's credentials redacted.
    fn request_summary(&self, session: &Session, _ctx: &AdminCtx) -> String {
        crate::access_log::summary(session.req_header(), &self.gateway.load())
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut AdminCtx) -> Result<bool> {
        // The process is leaving (an upgrade took its sockets; Pingora's session minds only a
        // shutdown): the answer says the connection closes, so that a kept connection's next
        // request — a scraper's, or the gateway's pool proxying Kargo's `/metrics` route —
        // goes to the new process (it was answered with this one's counters until it ended).
        if crate::listener::leaving() {
            session.set_keepalive(None);
        }
        let gw = self.gateway.load_full();
        if let Some(storage) = &gw.storage {
            let head = session.req_header();
            if storage.owns(head.uri.path()) {
                if !super::storage_admitted(head, &self.api) {
                    write(
                        session,
                        super::plain(http::StatusCode::UNAUTHORIZED, "Unauthorized"),
                    )
                    .await?;
                    return Ok(true);
                }
                if let Some(why) = super::storage_refusal(head, &self.api) {
                    log::warn!("storage route: refused a request {why}");
                    let forbidden = format!("Forbidden: {why}");
                    write(
                        session,
                        super::plain(http::StatusCode::FORBIDDEN, &forbidden),
                    )
                    .await?;
                    return Ok(true);
                }
                // The client's credentials (the pipeline's `?jwt=`) are not the provider's.
                let query = head
                    .uri
                    .query()
                    .and_then(|q| crate::access_log::without_secrets(q, &gw.secret_query_params));
                match storage.route(&head.method, head.uri.path(), query.as_deref()) {
                    // A read with a body (unsigned, it reached the provider, framed by
                    // Pingora as chunked): refused, the body unread.
                    Ok(_) if carries_body(head) => {
                        session.set_keepalive(None);
                        let answer = super::plain(
                            http::StatusCode::BAD_REQUEST,
                            "Bad Request: a storage read carries no body",
                        );
                        write(session, answer).await?;
                        return Ok(true);
                    }
                    Ok(object) => {
                        ctx.object = Some((storage.clone(), object));
                        return Ok(false);
                    }
                    Err(refusal) => {
                        let status = http::StatusCode::from_u16(refusal.status)
                            .unwrap_or(http::StatusCode::BAD_REQUEST);
                        let mut answer = super::plain(status, &refusal.message);
                        if status == http::StatusCode::METHOD_NOT_ALLOWED {
                            answer.headers_mut().insert(
                                http::header::ALLOW,
                                http::HeaderValue::from_static("GET, HEAD"),
                            );
                        }
                        write(session, answer).await?;
                        return Ok(true);
                    }
                }
            }
        }
        let resp = self.api.handle(session.as_downstream_mut()).await;
        write(session, resp).await?;
        Ok(true)
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut AdminCtx,
    ) -> Result<Box<HttpPeer>> {
        let Some((storage, object)) = &ctx.object else {
            return Error::e_explain(ErrorType::InternalError, "no storage request");
        };
        let target = &storage.providers[object.provider].target;
        let Some(addr) = target.addr() else {
            return Error::e_explain(
                ErrorType::ConnectNoRoute,
                format!("storage endpoint {} has no resolved address", target.url),
            );
        };
        let mut peer = HttpPeer::new(addr, target.tls, target.hostname.clone());
        peer.options.connection_timeout = Some(Duration::from_secs(10));
        peer.options.read_timeout = Some(Duration::from_secs(60));
        Ok(Box::new(peer))
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut AdminCtx,
    ) -> Result<()> {
        let Some((storage, object)) = &ctx.object else {
            return Ok(());
        };
        let method = session.req_header().method.as_str().to_string();
        let signed = storage
            .signed_headers(object, &method, &session.req_header().headers)
            .map_err(|e| {
                Error::explain(
                    ErrorType::InternalError,
                    format!("cannot sign the storage request: {e}"),
                )
            })?;
        let uri = storage
            .upstream_path(object)
            .parse::<http::Uri>()
            .map_err(|e| Error::because(ErrorType::InvalidHTTPHeader, "storage path", e))?;
        upstream.set_uri(uri);
        // Only what was signed goes to the provider.
        let names: Vec<http::header::HeaderName> = upstream.headers.keys().cloned().collect();
        for n in names {
            upstream.remove_header(&n);
        }
        for (n, v) in signed {
            upstream.insert_header(n, v)?;
        }
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut AdminCtx,
    ) -> Result<()> {
        // The provider refusing the gateway's own credentials (a rotated key, a clock that
        // drifted, a bucket policy) or failing: passed to the client as it is, and said here
        // (folded while it repeats), or an operator learned of it from the clients.
        if let Some((storage, o)) = &ctx.object {
            let status = upstream_response.status.as_u16();
            if status == 403 || status >= 500 {
                let provider = storage.providers.get(o.provider).map_or("", |p| &*p.name);
                let why = match status {
                    403 => "it refuses the gateway's credentials or their access to the object (its clock, a key, a bucket policy: the code is in its answer)",
                    _ => "it failed",
                };
                log::warn!(
                    "storage route: provider `{provider}` answered {status}: {why}; passed to the client"
                );
            }
        }
        crate::fastpath::relay::framed(upstream_response)
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        _ctx: &mut AdminCtx,
    ) -> FailToProxy {
        let code = match e.esource() {
            ErrorSource::Downstream => match e.etype() {
                ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed => 0,
                // A request body that stopped coming, as the gateway answers it.
                ErrorType::ReadTimedout => 408,
                _ => 400,
            },
            _ => 502,
        };
        // The connection closes after an error reply: its head says so.
        session.set_keepalive(None);
        // A response whose head went out already is cut short as it is (see the gateway's
        // `fail_to_proxy`).
        if code > 0 && session.response_written().is_none() {
            let status = http::StatusCode::from_u16(code).unwrap_or(http::StatusCode::BAD_GATEWAY);
            let message = match code {
                502 => "Bad gateway: the storage provider could not be reached",
                408 => "Request Timeout",
                _ => "Bad Request",
            };
            if let Err(err) = write(session, super::text(status, message)).await {
                log::debug!("could not send the error response: {err}");
            }
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }
}

/// Whether a request has a body: a `Transfer-Encoding`, or a `Content-Length` other than 0.
fn carries_body(head: &pingora_http::RequestHeader) -> bool {
    head.headers.contains_key(http::header::TRANSFER_ENCODING)
        || head
            .headers
            .get(http::header::CONTENT_LENGTH)
            .is_some_and(|v| {
                v.as_bytes()
                    .iter()
                    .any(|b| *b != b'0' && !b.is_ascii_whitespace())
            })
}
