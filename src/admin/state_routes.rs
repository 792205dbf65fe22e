//! tollgate's own state on the Admin API: `GET /tollgate/upstreams` (each service endpoint's
//! urls: health, ejection, requests in flight) and the tile cache: `GET /tollgate/cache` (what each tier holds, which
//! pipelines cache, the purges' generations) and `POST /tollgate/cache/purge`
//! with `{"url": "/wmts/1/2/3.png", "host": "..."}` (one URL, as a client requests it) or
//! `{"apiEndpoint": "wmts"}` (everything cached for it) or `{"prefix": "/wmts/roads/"}`
//! (everything cached for the URLs under a path).

use std::borrow::Cow;

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
            "skipped": cache.store.disk_skipped(), "failed": cache.store.disk_failed(),
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
            "generations": cache.endpoints.all(),
            "prefixes": cache.prefixes.all(),
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
    let named: Vec<&str> = ["url", "apiEndpoint", "prefix"]
        .into_iter()
        .filter(|k| body.get(*k).is_some())
        .collect();
    if named.len() > 1 {
        return text(
            StatusCode::UNPROCESSABLE_ENTITY,
            &format!(
                "give one of `url`, `apiEndpoint` and `prefix`, not {}",
                named.join(" and ")
            ),
        );
    }
    if let Some(endpoint) = body.get("apiEndpoint").and_then(Value::as_str) {
        if !gw.endpoints.iter().any(|e| &*e.name == endpoint) {
            return text(
                StatusCode::NOT_FOUND,
                &format!("no apiEndpoint `{endpoint}`"),
            );
        }
        return generation_purged(
            ("apiEndpoint", "api_endpoint"),
            endpoint,
            cache.endpoints.advance(endpoint, usize::MAX),
        );
    }
    if let Some(prefix) = body.get("prefix") {
        let Some(prefix) = prefix.as_str() else {
            return text(
                StatusCode::UNPROCESSABLE_ENTITY,
                "`prefix` must be a string",
            );
        };
        if let Some(e) = crate::cache::generations::prefix_error(prefix) {
            return text(StatusCode::UNPROCESSABLE_ENTITY, e);
        }
        // As requests' paths are compared with it (the answer names this form).
        let prefix = crate::cache::generations::canonical(prefix);
        return generation_purged(
            ("prefix", "prefix"),
            &prefix,
            cache
                .prefixes
                .advance(&prefix, crate::cache::generations::MAX_PREFIXES),
        );
    }
    let Some(url) = body.get("url").and_then(Value::as_str) else {
        return text(
            StatusCode::UNPROCESSABLE_ENTITY,
            "give `url` (a path with its query, as clients request it), `apiEndpoint` or `prefix` (a path ending with `/`)",
        );
    };
    let (url_host, path) = match purge_target(url) {
        Ok(target) => target,
        Err(why) => return text(StatusCode::UNPROCESSABLE_ENTITY, why),
    };
    // An absolute URL gives its host; a path uses `host`, if given.
    let host = url_host.or_else(|| body.get("host").and_then(Value::as_str));
    let path = &*path;
    if host.is_none() && crate::cache::purge::keyed_by_host(gw, path) {
        return text(
            StatusCode::UNPROCESSABLE_ENTITY,
            "this URL is cached by the client's host (its proxy step sends the client's Host: \
             changeOrigin: false): give `host` as clients send it (with the port they name)",
        );
    }
    let keys = crate::cache::purge::keys_for(gw, host, path).len();
    let (purged, failed) = crate::cache::purge::purge_url(gw, host, path).await;
    if keys > 0 {
        crate::metrics::metrics().cache.purged("url");
    }
    let shown = crate::access_log::redact(path, &gw.secret_query_params);
    match failed {
        None => {
            log::info!("tile cache: purged {shown}: {purged} object(s)");
            json(
                StatusCode::OK,
                &json!({"url": path, "cached": keys > 0, "purged": purged}),
            )
        }
        // Purged in this process, but not for good: the operator must know.
        Some(e) => {
            let e = e.root_cause().to_string();
            log::warn!("tile cache: purged {shown} until the next restart only: {e}");
            json(
                StatusCode::INTERNAL_SERVER_ERROR,
                &json!({
                    "url": path, "cached": keys > 0, "purged": purged,
                    "error": format!("{e}: purged until the next restart only; purge again once it can be removed"),
                }),
            )
        }
    }
}

/// The answer to the purge of an api endpoint or a path prefix, a new generation of its keys
/// (`what`: the field that named it, and the purge's `kind` in the metrics).
fn generation_purged(
    (what, kind): (&str, &str),
    name: &str,
    advanced: crate::cache::generations::Advanced,
) -> Response<Vec<u8>> {
    use crate::cache::generations::Advanced;
    if !matches!(advanced, Advanced::Full) {
        crate::metrics::metrics().cache.purged(kind);
    }
    match advanced {
        Advanced::Recorded(generation) => {
            log::info!("tile cache: purged {what} `{name}` (generation {generation})");
            json(
                StatusCode::OK,
                &json!({what: name, "generation": generation}),
            )
        }
        // Purged in this process, but not for good: the operator must know.
        Advanced::Unrecorded(generation, e) => json(
            StatusCode::INTERNAL_SERVER_ERROR,
            &json!({
                what: name, "generation": generation,
                "error": format!("{e}: purged until the next restart only; purge again once it can be written"),
            }),
        ),
        Advanced::Full => text(
            StatusCode::UNPROCESSABLE_ENTITY,
            &format!(
                "{} prefixes are purged already, the most there may be: purge a shorter prefix that holds some of them (it takes their places), or `/` (everything)",
                crate::cache::generations::MAX_PREFIXES
            ),
        ),
    }
}

/// The host (of an absolute URL) and the path with its query of a URL to purge, in the form
/// requests are routed and keyed in: a space escaped as Pingora's reader escapes it in a
/// request line (`%20`), a fragment left out as the request's URI leaves it, then
/// [`crate::wire::normalised_target`] (`%41` is `A`, `//` is `/`). A path is taken as it is
/// (its query may hold URLs: WMS's `SLD=http://…`), an http(s) URL is cut at the end of its
/// authority (`/`, `?`). For anything no request could ask for (another scheme, user info, a
/// dot segment, which requests are refused for), the reason it is refused.
fn purge_target(url: &str) -> Result<(Option<&str>, Cow<'_, str>), &'static str> {
    const NOT_A_URL: &str = "`url` must be a path (/...) or an http(s) URL";
    let (host, path) = if url.starts_with('/') {
        (None, url)
    } else {
        let (scheme, rest) = url.split_once("://").ok_or(NOT_A_URL)?;
        if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
            return Err(NOT_A_URL);
        }
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (host, path) = rest.split_at(end);
        if host.contains('@') {
            return Err("`url` has user info: give the host as clients send it");
        }
        host.parse::<http::uri::Authority>()
            .map_err(|_| "`url`'s host is no host")?;
        (Some(host), path)
    };
    let path = path.split('#').next().unwrap_or("");
    let path: Cow<'_, str> = match path.as_bytes().first() {
        None => "/".into(),
        Some(b'?') => format!("/{path}").into(),
        // A space is the one byte a request line holds escaped (Pingora's reader escapes it
        // where the parser refuses it); `"` and UTF-8 reach the key as they came.
        Some(_) if path.contains(' ') => path.replace(' ', "%20").into(),
        Some(_) => path.into(),
    };
    // (No request's head is longer, and the URI parser takes 65,534 bytes at most: a longer
    // `url` was said to have a character no request target has.)
    if path.len() > crate::listener::MAX_REQUEST_HEAD {
        return Err("`url` is longer than any request's head may be (32 KiB)");
    }
    if path.parse::<http::uri::PathAndQuery>().is_err() {
        return Err("`url` has a character no request target has");
    }
    if crate::wire::has_dot_segment(path.split('?').next().unwrap_or("")) {
        return Err("`url` has a `.` or `..` segment, which requests are refused for");
    }
    Ok(match crate::wire::normalised_target(&path) {
        Some(normal) => (host, Cow::Owned(normal)),
        None => (host, path),
    })
}

#[cfg(test)]
mod tests {
    use super::purge_target;

    fn target(url: &str) -> Option<(Option<&str>, String)> {
        purge_target(url).ok().map(|(h, p)| (h, p.into_owned()))
    }

    #[test]
    fn a_purge_url_is_a_path_or_an_absolute_url() {
        let sld = "/wms?SERVICE=WMS&REQUEST=GetMap&SLD=http://styles.example/a.sld";
        assert_eq!(target(sld), Some((None, sld.into())));
        assert_eq!(
            target("https://tiles.example:8443/wmts/1.png?x=http://a/b"),
            Some((
                Some("tiles.example:8443"),
                "/wmts/1.png?x=http://a/b".into()
            ))
        );
        assert_eq!(target("http://x?y=1"), Some((Some("x"), "/?y=1".into())));
        assert_eq!(target("http://x"), Some((Some("x"), "/".into())));
        // In the form requests are routed and keyed in.
        assert_eq!(
            target("/tiles/dd/%41.png"),
            Some((None, "/tiles/dd/A.png".into()))
        );
        assert_eq!(
            target("HTTPS://h//tiles//a.png?q=%41"),
            Some((Some("h"), "/tiles/a.png?q=%41".into()))
        );
        // As a request line's target reaches the gateway: escaped, without its fragment.
        assert_eq!(
            target("/tiles/a b.png#top"),
            Some((None, "/tiles/a%20b.png".into()))
        );
        // `"` and UTF-8 as a request line holds them, unescaped.
        assert_eq!(
            target("/tiles/dq\"k\u{e9}.png"),
            Some((None, "/tiles/dq\"k\u{e9}.png".into()))
        );
        for bad in [
            "ftp://h/tiles/x",
            "http://user:pw@h/tiles/x",
            "/tiles/../k2/x",
            "/tiles/%2e%2e/k2/x",
            "wms?x=http://a/b",
            "",
            "http:///a",
            "://x/a",
            "h t://x/a",
            "http://[bad",
            "http://a b/c",
        ] {
            assert_eq!(target(bad), None, "{bad}");
        }
        let long = format!("/{}", "a".repeat(100_000));
        assert_eq!(
            purge_target(&long).err(),
            Some("`url` is longer than any request's head may be (32 KiB)")
        );
    }
}
