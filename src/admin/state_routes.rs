//! tollgate's own state on the Admin API: `GET /tollgate/upstreams` (each service endpoint's
//! urls: health, ejection, requests in flight) and the tile cache: `GET /tollgate/cache` (what each tier holds, which
//! pipelines cache, the api endpoints' purge generations) and `POST /tollgate/cache/purge`
//! with `{"url": "/wmts/1/2/3.png", "host": "..."}` (one URL, as a client requests it) or
//! `{"apiEndpoint": "wmts"}` (everything cached for it).

use http::{Method, Response, StatusCode};
use serde_json::{json, Value};

use super::{json, text};
use crate::gateway::Gateway;

pub async fn route(
    gw: &Gateway,
    method: &Method,
    segments: &[&str],
    body: &Value,
) -> Option<Response<Vec<u8>>> {
    match (method, segments) {
        (&Method::GET, ["tollgate", "upstreams"]) => {
            Some(json(StatusCode::OK, &crate::upstream::describe(gw)))
        }
        (&Method::GET, ["tollgate", "cache"]) => Some(state(gw)),
        (&Method::POST, ["tollgate", "cache", "purge"]) => Some(purge(gw, body).await),
        (_, ["tollgate", "cache", ..]) => Some(text(
            StatusCode::METHOD_NOT_ALLOWED,
            "use GET /tollgate/cache or POST /tollgate/cache/purge",
        )),
        _ => None,
    }
}

fn state(gw: &Gateway) -> Response<Vec<u8>> {
    let pipelines: Vec<Value> = gw
        .pipelines
        .iter()
        .filter(|p| p.caches())
        .map(|p| json!(p.name.to_string()))
        .collect();
    let Some(cache) = crate::cache::get() else {
        return json(
            StatusCode::OK,
            &json!({"enabled": false, "pipelines": pipelines}),
        );
    };
    let [memory, disk] = cache.store.tiers();
    let disk = cache.options.disk.as_ref().map(|(dir, _)| {
        json!({
            "path": dir.display().to_string(),
            "objects": disk.objects, "bytes": disk.bytes, "budget": disk.budget,
            "evictions": disk.evictions, "damaged": cache.store.damaged(),
        })
    });
    json(
        StatusCode::OK,
        &json!({
            "enabled": true,
            "memory": memory,
            "declined": cache.declined(),
            "sharedMemory": cache.store.memory.shared(),
            "disk": disk,
            "pipelines": pipelines,
            "generations": cache.generations(),
            "failingTiles": cache.outages.failing(std::time::SystemTime::now()),
        }),
    )
}

async fn purge(gw: &Gateway, body: &Value) -> Response<Vec<u8>> {
    let Some(cache) = crate::cache::get() else {
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            "the tile cache is not running",
        );
    };
    if let Some(endpoint) = body.get("apiEndpoint").and_then(Value::as_str) {
        if !gw.endpoints.iter().any(|e| &*e.name == endpoint) {
            return text(
                StatusCode::NOT_FOUND,
                &format!("no apiEndpoint `{endpoint}`"),
            );
        }
        let generation = cache.purge_endpoint(endpoint);
        log::info!("tile cache: purged api endpoint `{endpoint}` (generation {generation})");
        return json(
            StatusCode::OK,
            &json!({"apiEndpoint": endpoint, "generation": generation}),
        );
    }
    let Some(url) = body.get("url").and_then(Value::as_str) else {
        return text(
            StatusCode::UNPROCESSABLE_ENTITY,
            "give `url` (a path with its query, as clients request it) or `apiEndpoint`",
        );
    };
    // An absolute URL gives its host; a path uses `host`, if given.
    let (host, path) = match url.split_once("://") {
        Some((_, rest)) => match rest.find('/') {
            Some(i) => (Some(&rest[..i]), &rest[i..]),
            None => (Some(rest), "/"),
        },
        None => (body.get("host").and_then(Value::as_str), url),
    };
    if !path.starts_with('/') {
        return text(
            StatusCode::UNPROCESSABLE_ENTITY,
            "`url` must be a path (/...) or an absolute URL",
        );
    }
    if host.is_none() && crate::cache::purge::keyed_by_host(gw, path) {
        return text(
            StatusCode::UNPROCESSABLE_ENTITY,
            "this URL is cached by the client's host (its proxy step sends the client's Host: \
             changeOrigin: false): give `host` as clients send it (with the port they name)",
        );
    }
    let keys = crate::cache::purge::keys_for(gw, host, path).len();
    let purged = crate::cache::purge::purge_url(gw, host, path).await;
    log::info!("tile cache: purged {path}: {purged} object(s)");
    json(
        StatusCode::OK,
        &json!({"url": path, "cached": keys > 0, "purged": purged}),
    )
}
