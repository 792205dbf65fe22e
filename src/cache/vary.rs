//! The variant of a stored response a request wants: the values of the headers the response's
//! `Vary` names, as the upstream receives them; and the `Vary` a content-coded answer, or one
//! allowed to one web origin, lacks.

use pingora_cache::key::HashBinary;
use pingora_cache::{CacheMeta, VarianceBuilder};
use pingora_http::RequestHeader;

use crate::pipeline::context::HeaderEdit;

/// The variant of a stored response a request wants, from the response's `Vary`: the values
/// of the headers it names as the upstream receives them — the client's (every line of a
/// repeated one) with the pipeline's upstream `edits` (`xfwd`'s `X-Forwarded-*` among them).
pub fn variance(meta: &CacheMeta, req: &RequestHeader, edits: &[HeaderEdit]) -> Option<HashBinary> {
    let lines = meta.headers().get_all(http::header::VARY);
    variance_of(lines.iter().map(|v| v.as_bytes()), req, edits)
}

/// The same for a response whose `Vary` lines are `lines`.
pub fn variance_of<'a>(
    lines: impl Iterator<Item = &'a [u8]>,
    req: &RequestHeader,
    edits: &[HeaderEdit],
) -> Option<HashBinary> {
    let mut builder = VarianceBuilder::new();
    let mut any = false;
    for vary in lines {
        for name in std::str::from_utf8(vary)
            .unwrap_or("")
            .split(',')
            .map(str::trim)
        {
            if name.is_empty() {
                continue;
            }
            let lower = name.to_ascii_lowercase();
            let value = sent_value(&lower, req, edits).unwrap_or_default();
            builder.add_owned_name_value(lower, value);
            any = true;
        }
    }
    if any {
        builder.finalize()
    } else {
        None
    }
}

/// The value of header `name` (lowercase) as the upstream receives it: the client's lines
/// joined, then the upstream `edits` applied in order; `None` when it is not sent.
fn sent_value(name: &str, req: &RequestHeader, edits: &[HeaderEdit]) -> Option<Vec<u8>> {
    fn add(value: &mut Option<Vec<u8>>, more: &[u8]) {
        match value {
            Some(v) => {
                v.extend_from_slice(b", ");
                v.extend_from_slice(more);
            }
            None => *value = Some(more.to_vec()),
        }
    }
    let mut value = None;
    for line in req.headers.get_all(name) {
        add(&mut value, line.as_bytes());
    }
    for edit in edits.iter().filter(|e| e.name().as_str() == name) {
        match edit {
            HeaderEdit::Set(_, v) => value = Some(v.as_bytes().to_vec()),
            HeaderEdit::Default(_, v) => {
                value.get_or_insert_with(|| v.as_bytes().to_vec());
            }
            HeaderEdit::Append(_, v) => add(&mut value, v.as_bytes()),
            HeaderEdit::Remove(_) => value = None,
        }
    }
    value
}

/// Whether an answer is content-coded (a `Content-Encoding` other than `identity`) without a
/// `Vary` that names `Accept-Encoding` (or `*`): an upstream that compresses for the clients
/// that say they take it, and does not say so. Stored as it is, the coded body would be
/// answered to every client, those that take no coding too.
pub fn coded_without_vary(headers: &http::HeaderMap) -> bool {
    use crate::wire::list;
    list(headers, &http::header::CONTENT_ENCODING).any(|c| !c.eq_ignore_ascii_case(b"identity"))
        && !list(headers, &http::header::VARY)
            .any(|n| n == b"*" || n.eq_ignore_ascii_case(b"accept-encoding"))
}

/// Whether an answer is allowed to one web origin (an `Access-Control-Allow-Origin` other
/// than `*`) without a `Vary` that names `Origin` (or `*`): an upstream that names the origin
/// of the page that asked (nginx's `add_header … $http_origin`, MapServer's and QGIS Server's
/// CORS set-ups). Stored as it is, every later page would be served the first one's origin,
/// which browsers refuse: a blank map on every other site.
pub fn allowed_origin_without_vary(headers: &http::HeaderMap) -> bool {
    use crate::wire::list;
    allows_one_origin(headers)
        && !list(headers, &http::header::VARY)
            .any(|n| n == b"*" || n.eq_ignore_ascii_case(b"origin"))
}

/// Whether an answer allows one web origin (an `Access-Control-Allow-Origin` other than `*`).
pub fn allows_one_origin(headers: &http::HeaderMap) -> bool {
    headers
        .get_all(http::header::ACCESS_CONTROL_ALLOW_ORIGIN)
        .iter()
        .any(|v| v.as_bytes().trim_ascii() != b"*")
}

/// Of the `Vary` names the gateway gives answers that lack them, those a stored variant of a
/// tile names: an answer for the tile without them (one allowed to no origin, to a request
/// without `Origin`; one not coded) is given them too, and stored as a variant of its own —
/// stored as it came, it took the tile's place for every variant (every page of another
/// origin was served an answer its browser refuses).
#[derive(Clone, Copy, Debug, Default)]
pub struct Kept {
    pub coding: bool,
    pub origin: bool,
}

impl Kept {
    /// The names of these the stored head `meta` says it varies by.
    pub fn of(meta: &CacheMeta) -> Kept {
        let mut kept = Kept::default();
        for name in crate::wire::list(meta.headers(), &http::header::VARY) {
            kept.coding |= name.eq_ignore_ascii_case(b"accept-encoding");
            kept.origin |= name.eq_ignore_ascii_case(b"origin");
        }
        kept
    }
}

/// The `Vary` an upstream's answer to a request through a `cache` step lacks: `Accept-Encoding`
/// for one content-coded ([`coded_without_vary`]), `Origin` for one allowed to one web origin
/// ([`allowed_origin_without_vary`]), and either where the tile's stored variant names it
/// (`kept`).
pub fn missing_vary(headers: &http::HeaderMap, kept: Kept) -> Option<&'static str> {
    let names = |name: &[u8]| {
        crate::wire::list(headers, &http::header::VARY)
            .any(|n| n == b"*" || n.eq_ignore_ascii_case(name))
    };
    let coding = coded_without_vary(headers) || (kept.coding && !names(b"accept-encoding"));
    let origin = allowed_origin_without_vary(headers) || (kept.origin && !names(b"origin"));
    match (coding, origin) {
        (true, true) => Some("Accept-Encoding, Origin"),
        (true, false) => Some("Accept-Encoding"),
        (false, true) => Some("Origin"),
        (false, false) => None,
    }
}

/// An upstream's answer to a request through a `cache` step is given the `Vary` it lacks
/// ([`missing_vary`]) before it is judged: stored per variant (the codings clients take, the
/// origin of the page that asks), and said so to the caches after this one.
pub fn add_missing_vary(resp: &mut pingora_http::ResponseHeader, kept: Kept) {
    if resp.status == http::StatusCode::NOT_MODIFIED {
        return;
    }
    if let Some(vary) = missing_vary(&resp.headers, kept) {
        let _ = resp.append_header(http::header::VARY, http::HeaderValue::from_static(vary));
    }
}

#[cfg(test)]
mod tests {
    use super::{allowed_origin_without_vary, coded_without_vary};

    fn headers(lines: &[(&str, &str)]) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        for (n, v) in lines {
            h.append(
                http::HeaderName::from_bytes(n.as_bytes()).unwrap(),
                http::HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn an_answer_allowed_to_one_origin_without_a_vary_on_origin() {
        let with = |lines: &[(&str, &str)]| allowed_origin_without_vary(&headers(lines));
        let acao = "Access-Control-Allow-Origin";
        assert!(with(&[(acao, "https://a.example")]));
        assert!(with(&[(acao, "null"), ("Vary", "Accept-Encoding")]));
        assert!(!with(&[(acao, "*")]));
        assert!(!with(&[]));
        assert!(!with(&[
            (acao, "https://a.example"),
            ("Vary", "Accept, origin")
        ]));
        assert!(!with(&[(acao, "https://a.example"), ("Vary", "*")]));
    }

    #[test]
    fn a_coded_answer_without_a_vary_on_accept_encoding() {
        let with = |lines: &[(&str, &str)]| coded_without_vary(&headers(lines));
        assert!(with(&[("Content-Encoding", "gzip")]));
        assert!(with(&[("Content-Encoding", "identity, br")]));
        assert!(with(&[("Content-Encoding", "gzip"), ("Vary", "Accept")]));
        assert!(!with(&[]));
        assert!(!with(&[("Content-Encoding", "identity")]));
        assert!(!with(&[
            ("Content-Encoding", "gzip"),
            ("Vary", "Origin, accept-encoding")
        ]));
        assert!(!with(&[
            ("Content-Encoding", "gzip"),
            ("Vary", "Accept"),
            ("Vary", "Accept-Encoding")
        ]));
        assert!(!with(&[("Content-Encoding", "gzip"), ("Vary", "*")]));
    }
}
