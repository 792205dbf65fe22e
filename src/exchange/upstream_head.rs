//! The upstream's request head made from the client's: an HTTP/2 head settled as HTTP/1's,
//! the headers the client's `Connection` names dropped, the plan's path and Host, the
//! pipeline's edits, and for a cache fill none of the credentials.

use http::header::{HeaderName, HeaderValue};
use pingora_core::{Error, ErrorType, Result};
use pingora_http::RequestHeader;

use super::{apply_edits, EG_CONSUMER_ID};
use crate::pipeline::context::{Exchange, HeaderEdit, Reply};

/// Settles an HTTP/2 request's head as an HTTP/1 one would be read, or refuses it as
/// malformed (RFC 9113 §8.2.1, §8.3.1): a `:path` that is not absolute (`?a=1`; `*` only for
/// `OPTIONS`), a field value with whitespace at either end (HTTP/1's parser trims it, so a
/// credential with a trailing space authenticated there but not here). Its `cookie` fields,
/// which HTTP/2 clients send one per cookie, are joined into one with `; ` for the HTTP/1
/// upstream (RFC 9113 §8.2.3).
pub fn settle_http2_head(head: &mut RequestHeader) -> Result<(), Reply> {
    let path = head.raw_path();
    let absolute =
        path.first() == Some(&b'/') || (path == b"*" && head.method == http::Method::OPTIONS);
    let padded = |v: &HeaderValue| {
        let b = v.as_bytes();
        matches!(b.first(), Some(b' ' | b'\t')) || matches!(b.last(), Some(b' ' | b'\t'))
    };
    if !absolute || head.headers.values().any(padded) {
        return Err(Reply::text(400, "Bad Request"));
    }
    let cookies = head.headers.get_all(http::header::COOKIE);
    if cookies.iter().nth(1).is_some() {
        let mut joined = Vec::new();
        for c in cookies {
            if !joined.is_empty() {
                joined.extend_from_slice(b"; ");
            }
            joined.extend_from_slice(c.as_bytes());
        }
        let joined =
            HeaderValue::from_bytes(&joined).map_err(|_| Reply::text(400, "Bad Request"))?;
        head.insert_header(http::header::COOKIE, joined)
            .map_err(|_| Reply::text(400, "Bad Request"))?;
    }
    Ok(())
}

/// Removes the headers the request's `Connection` names (but the connection's own, which the
/// upstream request leaves out later): they go no further than the gateway (RFC 9110 §7.6.1),
/// so routing, authentication and a tile's key must not read them either — left until the
/// upstream request was made, `Connection: X-Forwarded-Host` had a tile fetched without the
/// header stored as the answer with it, and `Connection: Host` routed by a Host the upstream
/// never got. Done as the head is read, on both paths (a head the fast path reads itself has
/// a `Connection` of `close` or `keep-alive` only).
pub fn drop_connection_named(head: &mut RequestHeader) {
    if !head.headers.contains_key(http::header::CONNECTION) {
        return;
    }
    for name in crate::wire::named_by_connection(&head.headers) {
        head.remove_header(&name);
    }
}

/// Turns the client's request head into the upstream's: the plan's path and Host, the
/// pipeline's edits, never a consumer id the client sent, and for a cache fill (made for every
/// consumer) none of the headers that carry credentials (the cache step's
/// [`crate::cache::policy::CacheRule::secret_headers`]; a header a step sets is sent, and is
/// part of the key).
pub fn upstream_request(upstream: &mut RequestHeader, x: &Exchange, filling: bool) -> Result<()> {
    // A client never speaks for the gateway about who the consumer is: nor with `_` for `-`
    // (`eg_consumer_id`), which a WSGI or CGI upstream reads as the same header.
    if upstream.headers.contains_key(&EG_CONSUMER_ID) {
        upstream.remove_header(&EG_CONSUMER_ID);
    }
    let posing: smallvec::SmallVec<[HeaderName; 1]> = upstream
        .headers
        .keys()
        .filter(|n| poses_as_consumer_id(n.as_str()))
        .cloned()
        .collect();
    for name in &posing {
        upstream.remove_header(name);
    }
    // A header sent on several lines that Node's parser keeps once (`authorization`, …) goes
    // upstream as its first line, as EG forwards it: the upstream never reads a credential
    // authentication did not. (Most heads repeat no name: two lengths compared.)
    if upstream.headers.len() != upstream.headers.keys_len() {
        keep_first_lines(upstream)?;
    }
    if filling {
        let secret = x
            .cache
            .as_ref()
            .map_or(&[http::header::AUTHORIZATION][..], |u| {
                &u.rule.secret_headers[..]
            });
        // One pass over the request's few headers first: most tile requests carry none.
        if upstream.headers.keys().any(|n| secret.contains(n)) {
            for name in secret {
                upstream.remove_header(name);
            }
        }
        // Nor the credentials in the client's target a proxy in front passes on.
        if let Some(u) = &x.cache {
            crate::cache::forwarding::neutralise(upstream, &u.rule);
        }
    }
    if let Some(plan) = &x.proxy {
        let uri = plan
            .path
            .parse::<http::Uri>()
            .map_err(|e| Error::because(ErrorType::InvalidHTTPHeader, "upstream path", e))?;
        upstream.set_uri(uri);
    }
    match &x.proxy {
        Some(plan) => {
            let (before, own) = x
                .upstream_edits
                .split_at(plan.edits_before.min(x.upstream_edits.len()));
            apply_upstream_edits(upstream, before, filling)?;
            if let Ok(id) = HeaderValue::from_str(x.request_id.get()) {
                upstream.insert_header(crate::policies::proxy::REQUEST_ID.clone(), id)?;
            }
            apply_upstream_edits(upstream, own, filling)?;
            // As EG's proxy: `changeOrigin` sets the url's Host after every step's edits; a
            // request left without one (a step removed it) gets the url's, as Node's client
            // gives it. Never a request without Host.
            match &plan.host {
                Some(host) => upstream.insert_header(http::header::HOST, host.clone())?,
                None if !upstream.headers.contains_key(http::header::HOST) => {
                    let url = &plan.endpoint.targets[plan.target];
                    upstream.insert_header(http::header::HOST, url.host_header.clone())?;
                }
                None => {}
            }
        }
        None => apply_upstream_edits(upstream, &x.upstream_edits, filling)?,
    }
    Ok(())
}

/// Leaves only the first line of each header the head repeats that Node keeps once
/// ([`crate::wire::node_keeps_first`]).
fn keep_first_lines(head: &mut RequestHeader) -> Result<()> {
    let repeated: smallvec::SmallVec<[(HeaderName, HeaderValue); 1]> = head
        .headers
        .keys()
        .filter(|n| crate::wire::node_keeps_first(n))
        .filter_map(|n| {
            let mut lines = head.headers.get_all(n).iter();
            let first = lines.next()?.clone();
            lines.next().map(|_| (n.clone(), first))
        })
        .collect();
    for (name, first) in repeated {
        head.insert_header(name, first)?;
    }
    Ok(())
}

/// Whether a header name is `eg-consumer-id` with a `_` for one of its `-`.
fn poses_as_consumer_id(name: &str) -> bool {
    let want = EG_CONSUMER_ID.as_str().as_bytes();
    name.len() == want.len()
        && name.contains('_')
        && name
            .bytes()
            .zip(want)
            .all(|(a, b)| a == *b || (a == b'_' && *b == b'-'))
}

/// Applies the pipeline's `edits` to the upstream request; for a cache fill (made for every
/// consumer) without those of `eg-consumer-id`, which names one.
fn apply_upstream_edits(
    upstream: &mut RequestHeader,
    edits: &[HeaderEdit],
    filling: bool,
) -> Result<()> {
    apply_edits(
        upstream,
        edits
            .iter()
            .filter(|e| !filling || *e.name() != EG_CONSUMER_ID),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_consumer_id_with_underscores_is_one() {
        for name in ["eg_consumer_id", "eg-consumer_id", "eg_consumer-id"] {
            assert!(poses_as_consumer_id(name), "{name}");
        }
        for name in [
            "eg-consumer-id",
            "eg_consumer_idx",
            "x_consumer_id",
            "eg_request_id",
        ] {
            assert!(!poses_as_consumer_id(name), "{name}");
        }
    }
}
