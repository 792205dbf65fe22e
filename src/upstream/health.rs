//! Active health checks: every `interval`, each url of a service endpoint with a
//! `healthCheck` gets `GET <path>` (on the url's host, through Pingora's connector, TLS and
//! certificate checks as for traffic); a status in `statuses` within `timeout` passes. A url
//! turns unhealthy after `unhealthyThreshold` failed checks in a row and healthy again after
//! `healthyThreshold` passed ones; each change is one log line. A config's checkers stop
//! when another config runs (see [`start_all`]), whatever requests of theirs are still going.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use pingora_core::connectors::http::Connector;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_http::RequestHeader;

use super::settings::HealthCheck;
use super::state::Change;
use super::{ServiceEndpoint, UpstreamTarget};

/// The config whose checkers run, counted: a checker of an earlier one stops at its next
/// tick. (A request that began under that config holds its endpoints until it ends — a long
/// download, a WebSocket —; its checker, probing with the old `healthCheck`, would meanwhile
/// mark urls out that the new config has no checker to bring back, or two checkers would
/// count into the same urls' states.)
static RUNNING: AtomicU64 = AtomicU64::new(0);

/// Starts the checkers of a config's service endpoints (at the start, and with every config a
/// reload brings in), stopping those of the config before.
pub fn start_all<'a>(
    endpoints: impl IntoIterator<Item = &'a Arc<ServiceEndpoint>>,
    runtime: &tokio::runtime::Handle,
) {
    let config = RUNNING.fetch_add(1, Ordering::AcqRel) + 1;
    for endpoint in endpoints {
        start(endpoint, config, runtime);
    }
}

/// Starts the checker of a service endpoint of config number `config`, if it has a health
/// check; without one (a reload took it away), a url the checks had left out is back in
/// rotation.
fn start(endpoint: &Arc<ServiceEndpoint>, config: u64, runtime: &tokio::runtime::Handle) {
    let Some(check) = endpoint.settings.health_check.clone() else {
        for (target, state) in endpoint.targets.iter().zip(&endpoint.states) {
            if state.checks_off() {
                log::info!(
                    "upstream {} of service endpoint `{}` has no health check now: back in rotation",
                    target.shown,
                    endpoint.name
                );
            }
        }
        return;
    };
    let weak: Weak<ServiceEndpoint> = Arc::downgrade(endpoint);
    runtime.spawn(async move {
        let connector = Connector::new(None);
        let mut tick = tokio::time::interval(check.interval());
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let replaced = || RUNNING.load(Ordering::Acquire) != config;
        loop {
            tick.tick().await;
            if replaced() {
                return;
            }
            let Some(ep) = weak.upgrade() else {
                return;
            };
            let probes = ep
                .targets
                .iter()
                .map(|t| {
                    let verify = ep.checks_verify_certificates();
                    probe(&connector, t, &check, ep.settings.http2, verify)
                });
            let results = futures_util::future::join_all(probes).await;
            // (A reload while they ran: the new config's checker judges.)
            if replaced() {
                return;
            }
            let changes: Vec<_> = ep
                .states
                .iter()
                .zip(results)
                .map(|(state, result)| {
                    let change = state.check_result(
                        result.is_ok(),
                        check.healthy_threshold,
                        check.unhealthy_threshold,
                    );
                    (change, result)
                })
                .collect();
            for (i, (change, result)) in changes.into_iter().enumerate() {
                let target = &ep.targets[i];
                match (change, result) {
                    (Change::BecameUnhealthy, Err(why)) => log::warn!(
                        "upstream {} of service endpoint `{}` is unhealthy: {why}; {}",
                        target.shown,
                        ep.name,
                        // (Judged once the round's results are all in.)
                        if i < 64 && !ep.any_available(1 << i) {
                            "no url of it is available now: its requests are answered 502 (or from the tile cache)"
                        } else {
                            "requests go to the others"
                        }
                    ),
                    (Change::BecameHealthy, _) => log::info!(
                        "upstream {} of service endpoint `{}` is healthy again",
                        target.shown,
                        ep.name
                    ),
                    _ => {}
                }
            }
        }
    });
}

/// One check of one url: `Ok` when it answered a healthy status in time.
async fn probe(
    connector: &Connector,
    target: &UpstreamTarget,
    check: &HealthCheck,
    http2: bool,
    verify_certificates: bool,
) -> Result<(), String> {
    let addr = target
        .addr()
        .ok_or_else(|| format!("`{}` does not resolve", target.hostname))?;
    let mut peer = HttpPeer::new(addr, target.tls, target.hostname.clone());
    peer.options.connection_timeout = Some(check.timeout());
    peer.options.read_timeout = Some(check.timeout());
    peer.options.write_timeout = Some(check.timeout());
    peer.options.verify_cert = verify_certificates;
    peer.options.verify_hostname = verify_certificates;
    if http2 {
        peer.options.set_http_version(2, 1);
    }
    let exchange = async {
        let (mut session, _reused) = connector
            .get_http_session(&peer)
            .await
            .map_err(|e| format!("cannot connect: {}", e.etype().as_str()))?;
        let mut req =
            RequestHeader::build("GET", check.path.as_bytes(), None).map_err(|e| e.to_string())?;
        req.insert_header(http::header::HOST, target.host_header.clone())
            .map_err(|e| e.to_string())?;
        req.insert_header(http::header::USER_AGENT, "tollgate-health-check")
            .map_err(|e| e.to_string())?;
        session
            .write_request_header(Box::new(req))
            .await
            .map_err(|e| format!("cannot send the check: {}", e.etype().as_str()))?;
        // The request has no body: said so (over HTTP/2 its headers went without the end of
        // the stream, and an upstream may wait for it before it answers).
        session
            .finish_request_body()
            .await
            .map_err(|e| format!("cannot send the check: {}", e.etype().as_str()))?;
        session
            .read_response_header()
            .await
            .map_err(|e| format!("no answer: {}", e.etype().as_str()))?;
        let status = session.response_header().map_or(0, |h| h.status.as_u16());
        // The body is not needed; the connection is not reused.
        session.shutdown().await;
        if check.statuses.contains(&status) {
            Ok(())
        } else {
            // (Its query shown as `?…`: a provider's key goes there too.)
            Err(format!(
                "{} answered {status}",
                super::displayed(&check.path)
            ))
        }
    };
    match tokio::time::timeout(check.timeout(), exchange).await {
        Ok(r) => r,
        Err(_) => Err(format!("no answer within {:?}", check.timeout())),
    }
}
