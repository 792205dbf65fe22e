//! Purging one URL, as a client requests it through the gateway (everything cached for an api
//! endpoint or a path prefix takes a new generation of its keys: see [`super::generations`]).
//!
//! A URL's key is found the way a request's is: it is routed, and its pipeline's `cache` step,
//! the steps before it that add upstream headers (`request-transformer`, `headers`) and its
//! `proxy` step run on it — authentication does not (the key never depends on a consumer).

use std::sync::Arc;

use pingora_cache::storage::{PurgeTarget, PurgeType, Storage};
use pingora_cache::trace::Span;

use crate::gateway::Gateway;
use crate::pipeline::{Exchange, Outcome, Request};
use crate::routing::Target;

/// Steps that run when a purge looks for a URL's key.
const KEY_STEPS: &[&str] = &["request-transformer", "headers", "cache", "proxy"];

/// Whether a URL is cached by a route whose keys hold the client's host (its proxy step sends
/// the client's `Host` upstream: `changeOrigin: false`, or `xfwd`'s `X-Forwarded-Host`): a
/// purge of it must name the host.
pub fn keyed_by_host(gw: &Gateway, url: &str) -> bool {
    let mut by_host = false;
    keys_with(gw, None, url, &mut by_host, &met());
    by_host
}

/// The cache keys a URL has through the gateway (one per route whose pipeline caches it), as
/// requests without forwarding headers ask for it and with each combination of them the cache
/// has met.
pub fn keys_for(gw: &Gateway, host: Option<&str>, url: &str) -> Vec<String> {
    keys_with(gw, host, url, &mut false, &met())
}

/// The combinations of forwarding headers the cache has met.
fn met() -> Vec<Box<str>> {
    super::get().map(|c| c.forwarding.all()).unwrap_or_default()
}

/// The cache keys a URL has as requests without forwarding headers ask for it, and with each
/// of `forwardings` (the steps see them: `xfwd` appends to them, and its edits are in the
/// key).
fn keys_with(
    gw: &Gateway,
    host: Option<&str>,
    url: &str,
    by_host: &mut bool,
    forwardings: &[Box<str>],
) -> Vec<String> {
    let (path, query) = match url.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (url, None),
    };
    let asked: Vec<(Option<&str>, http::HeaderMap)> =
        std::iter::once((None, http::HeaderMap::new()))
            .chain(
                forwardings
                    .iter()
                    .map(|f| (Some(&**f), super::forwarding::headers_of(f))),
            )
            .collect();
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(ri) = gw.router.find(from, host, path, &http::Method::GET) {
        from = ri + 1;
        let route = &gw.router.routes()[ri];
        let Target::Pipeline(pi) = route.target else {
            continue;
        };
        let endpoint = &gw.endpoints[route.endpoint];
        // Over http and https: with `xfwd` the scheme (and its port) is part of the key; for
        // an anonymous request and one with a consumer (the storage pass a `proxy` step to the
        // Admin API adds for one with `--admin-token` is part of the key).
        let each = asked
            .iter()
            .flat_map(|a| [(a, false), (a, true)])
            .flat_map(|a| [(a, false), (a, true)]);
        for (((forwarding, headers), tls), consumer) in each {
            let req = Request {
                method: &http::Method::GET,
                path,
                query,
                url,
                host,
                headers,
                client_ip: None,
                server_port: None,
                tls,
                endpoint,
                strip_at: route.path.strip_at,
            };
            let mut x = Exchange {
                endpoint: Some(endpoint.clone()),
                consumer: consumer.then(|| {
                    crate::pipeline::context::Consumer::new(Arc::from("purge"), Arc::from([]))
                }),
                ..Exchange::default()
            };
            for step in &gw.pipelines[pi].steps {
                if !KEY_STEPS.contains(&&*step.policy_name) {
                    continue;
                }
                if step.condition.as_ref().is_some_and(|c| !c.eval(&req, &x)) {
                    continue;
                }
                let proxied = matches!(step.action.on_request(&req, &mut x), Outcome::Proxy);
                if proxied {
                    break;
                }
            }
            if let (Some(u), Some(plan)) = (&x.cache, &mut x.proxy) {
                plan.make_neutral(u.rule.clone());
                // The client's host is in the key when it reaches the upstream: as `Host`
                // (`changeOrigin: false`) or as `xfwd`'s `X-Forwarded-Host` (which comes with
                // the `X-Forwarded-Proto` it sets whatever the host).
                let key_edits = &x.upstream_edits[..plan.edits_in_key.min(x.upstream_edits.len())];
                *by_host |= plan.host.is_none()
                    || key_edits
                        .iter()
                        .any(|e| e.name().as_str().starts_with("x-forwarded-"));
                out.push(super::primary_of(&x, path, host, *forwarding));
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// Removes a URL's objects; returns how many there were, and what kept one of them on disk
/// (no longer served by this process, found again at the next start), if anything did.
pub async fn purge_url(
    gw: &Gateway,
    host: Option<&str>,
    url: &str,
) -> (usize, Option<pingora_core::BError>) {
    let Some(cache) = super::get() else {
        return (0, None);
    };
    let (mut purged, mut failed) = (0, None);
    for primary in keys_for(gw, host, url) {
        let compact = super::key::cache_key(primary).to_compact();
        let outcome = cache
            .store
            .purge(
                PurgeTarget::Active(&compact),
                PurgeType::Invalidation,
                &Span::inactive().handle(),
            )
            .await;
        match outcome {
            Ok(pingora_cache::storage::PurgeOutcome::Purged(_)) => purged += 1,
            Ok(_) => {}
            Err(e) => {
                purged += 1;
                failed.get_or_insert(e);
            }
        }
    }
    (purged, failed)
}

/// Removes what is stored for a URL without counting a purge (the target of an unsafe request
/// that succeeded, RFC 9111 §4.4): under every key a GET of it without forwarding headers has
/// through the gateway at once, and (when the cache has met any) under each combination of
/// them in a task of its own, so that the answer does not wait on hundreds of keys.
pub async fn invalidate_url(gw: Arc<Gateway>, host: Option<&str>, url: &str) {
    let plain = keys_with(&gw, host, url, &mut false, &[]);
    invalidate_keys(plain.clone()).await;
    let forwardings = met();
    if forwardings.is_empty() {
        return;
    }
    let (host, url) = (host.map(str::to_owned), url.to_owned());
    tokio::spawn(async move {
        // Not those gone already: a fetch of one begun since brings the new tile.
        let keys = keys_with(&gw, host.as_deref(), &url, &mut false, &forwardings)
            .into_iter()
            .filter(|k| !plain.contains(k))
            .collect();
        invalidate_keys(keys).await;
    });
}

async fn invalidate_keys(primaries: Vec<String>) {
    let Some(cache) = super::get() else {
        return;
    };
    for primary in primaries {
        cache
            .store
            .invalidate(&super::key::cache_key(primary))
            .await;
    }
}
