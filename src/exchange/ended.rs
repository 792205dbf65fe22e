//! How a request ends: accounted for (metrics, Kargo's counter, the access log), and a failure
//! answered and logged, one line each.

use std::time::Duration;

use bytes::Bytes;
use pingora_core::{Error, ErrorSource, ErrorType};
use pingora_http::RequestHeader;

use super::RequestTarget;
use crate::gateway::Gateway;
use crate::pipeline::context::{Exchange, Reply};
use crate::responses;

/// How a request ended, for [`account`].
pub struct Ended<'a> {
    /// The status written to the client (0: none).
    pub status: u16,
    pub elapsed: Duration,
    pub upstream_time: Option<Duration>,
    pub bytes_in: usize,
    pub bytes_out: usize,
    pub error: Option<&'a Error>,
    /// The cache's verdict, and the bytes it served, when a cache step ran.
    pub cache: Option<(&'static str, Option<usize>)>,
}

/// The request as the access log names it.
pub struct Requested<'a> {
    pub method: &'a str,
    /// The path and query.
    pub url: &'a str,
}

impl<'a> Requested<'a> {
    pub fn of(head: &'a RequestHeader) -> Requested<'a> {
        Requested {
            method: head.method.as_str(),
            url: RequestTarget::of(head).url,
        }
    }
}

/// Accounts for a finished request: the endpoint's metrics, the consumer counters, the
/// access log, and one line when it failed.
pub fn account(gw: &Gateway, req: &Requested<'_>, x: &Exchange, end: &Ended<'_>) {
    let m = crate::metrics::metrics();
    let upstream = end.upstream_time.map(|d| d.as_secs_f64());
    let endpoint = x.endpoint.as_deref();
    let metrics = endpoint.map_or(&m.unrouted, |ep| &ep.metrics);
    metrics.record(
        end.status,
        end.elapsed.as_secs_f64(),
        upstream,
        end.bytes_in,
        end.bytes_out,
    );
    if let Some(e) = end.error {
        log_failure(e, x, end.status);
        count_upstream_failure(e);
    }
    if let Some((status, from_cache)) = end.cache {
        metrics.cache.record(status, from_cache);
    }
    let consumer = x.consumer.as_ref().map(|c| &*c.id);
    // Counted when the response completes, as Kargo's plugin does: a client that left before
    // any answer (a map panned away from its tiles) has none to count.
    if x.metered && end.status != 0 {
        m.count(end.status, consumer, endpoint.map_or("", |ep| &*ep.name));
    }
    if crate::access_log::enabled() {
        let line = serde_json::json!({
            "time": crate::consumers::model::rfc3339_now(),
            "method": req.method,
            "path": crate::access_log::redact(req.url, &gw.secret_query_params),
            "status": end.status,
            "duration_ms": (end.elapsed.as_secs_f64() * 1000.0 * 1000.0).round() / 1000.0,
            "upstream_ms": upstream.map(|u| (u * 1000.0 * 1000.0).round() / 1000.0),
            "bytes_in": end.bytes_in,
            "bytes_out": end.bytes_out,
            "consumer": consumer.unwrap_or("anonymous"),
            "api_endpoint": endpoint.map(|ep| &*ep.name),
            "upstream": x.proxy.as_ref().filter(|p| !p.none_available()).map(|p| p.upstream_text()),
            "cache": end.cache.map(|c| c.0),
            "request_id": x.request_id.get(),
        });
        crate::access_log::write(line.to_string());
    }
}

/// Accounts for a background refresh of a stale tile ([`Exchange::refresh`]), whose cache
/// status was `status`: a refresh that ended serving the stale tile (the upstream failed it; the
/// failure is counted and logged where the stale tile stood in) or with an error failed.
pub fn refreshed(x: &Exchange, status: &str, error: Option<&Error>) {
    let failed = status == "STALE" || error.is_some();
    if let Some(e) = error {
        let (endpoint, upstream) = named(x);
        log::warn!(
            "tile cache: a stale tile's background refresh failed: api endpoint `{endpoint}`, upstream {upstream}: {e}"
        );
        count_upstream_failure(e);
    }
    if let Some(ep) = &x.endpoint {
        ep.metrics.cache.refreshed(failed);
    }
}

/// The status a failed request is answered with (0: nothing can be written, the client is
/// gone), and the response for it.
pub fn failure_reply(e: &Error) -> (u16, Option<Reply>) {
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
    let reply = match code {
        0 => None,
        502 => Some(responses::bad_gateway()),
        400 => Some(Reply::text(400, "Bad Request")),
        c => Some(Reply::text(
            c,
            Bytes::from(
                http::StatusCode::from_u16(c)
                    .ok()
                    .and_then(|s| s.canonical_reason())
                    .unwrap_or("Error"),
            ),
        )),
    };
    (code, reply)
}

/// The status of the final response head written to a client; 0 when none was (an interim
/// 1xx alone is none: the exchange has no answer yet; a `101` is final: the connection is
/// switched).
pub fn final_status(written: Option<&pingora_http::ResponseHeader>) -> u16 {
    written
        .map(|r| r.status)
        .filter(|s| !s.is_informational() || *s == http::StatusCode::SWITCHING_PROTOCOLS)
        .map_or(0, |s| s.as_u16())
}

/// The api endpoint and the upstream of an exchange, as log lines name them.
fn named(x: &Exchange) -> (&str, String) {
    (
        x.endpoint.as_ref().map_or("", |ep| &*ep.name),
        x.proxy
            .as_ref()
            .map_or_else(|| "?".to_string(), |p| p.upstream_text()),
    )
}

/// One line for a request that failed: a warning naming the api endpoint, the upstream and the
/// kind of failure when the upstream failed; debug when the client went away.
fn log_failure(e: &Error, x: &Exchange, status: u16) {
    match e.esource() {
        ErrorSource::Upstream => {
            let kind = upstream_error_label(e);
            let (endpoint, upstream) = named(x);
            // A TLS failure says why (an untrusted issuer, a name or a date the certificate
            // does not have, a plain HTTP answer), as OpenSSL tells it.
            let why = match (kind, &e.context, &e.cause) {
                ("tls", Some(context), _) => format!(" ({context})"),
                ("tls", None, Some(cause)) => format!(" ({cause})"),
                _ => String::new(),
            };
            let answered = match status {
                0 => "nothing answered: the client had left".to_string(),
                s => format!("answered {s}"),
            };
            log::warn!(
                "upstream failure: api endpoint `{endpoint}`, upstream {upstream}, {kind}{why}; {answered}"
            );
        }
        ErrorSource::Downstream => log::debug!("client went away: {e}"),
        _ => log::warn!(
            "request failed: api endpoint `{}`: {e}; answered {status}",
            x.endpoint.as_ref().map_or("", |ep| &*ep.name)
        ),
    }
}

/// Counts `e` in `tollgate_upstream_errors_total` when it is the upstream's failure (not an
/// answer of it, such as a 5xx a stale tile replaced).
pub fn count_upstream_failure(e: &Error) {
    if e.esource() == &ErrorSource::Upstream && !matches!(e.etype(), ErrorType::HTTPStatus(_)) {
        crate::metrics::metrics().upstream_error(upstream_error_kind(e));
    }
}

/// The name of an upstream error's kind (see [`upstream_error_kind`]), as the metrics and the
/// log say it.
pub fn upstream_error_label(e: &Error) -> &'static str {
    crate::metrics::UPSTREAM_ERROR_KINDS
        .get(upstream_error_kind(e))
        .copied()
        .unwrap_or("other")
}

/// Which of [`crate::metrics::UPSTREAM_ERROR_KINDS`] an upstream error is.
pub fn upstream_error_kind(e: &Error) -> usize {
    match e.etype() {
        ErrorType::ConnectRefused => 0,
        ErrorType::ConnectNoRoute => crate::metrics::UNAVAILABLE,
        t if *t == crate::upstream::attempt::UNRESOLVED => crate::metrics::DNS,
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
        ErrorType::Custom(crate::cache::exception::SERVICE_EXCEPTION) => {
            crate::metrics::SERVICE_EXCEPTION
        }
        _ => 6,
    }
}
