//! The variant of a stored response a request wants: the values of the headers the response's
//! `Vary` names, as the upstream receives them; and the `Vary` a content-coded answer lacks.

use pingora_cache::key::HashBinary;
use pingora_cache::{CacheMeta, VarianceBuilder};
use pingora_http::RequestHeader;

use crate::pipeline::context::HeaderEdit;

/// The variant of a stored response a request wants, from the response's `Vary`: the values
/// of the headers it names as the upstream receives them — the client's (every line of a
/// repeated one) with the pipeline's upstream `edits` (`xfwd`'s `X-Forwarded-*` among them).
pub fn variance(meta: &CacheMeta, req: &RequestHeader, edits: &[HeaderEdit]) -> Option<HashBinary> {
    let mut builder = VarianceBuilder::new();
    let mut any = false;
    for vary in meta.headers().get_all(http::header::VARY) {
        for name in vary.to_str().unwrap_or("").split(',').map(str::trim) {
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

/// An upstream's answer to a request through a `cache` step, content-coded without saying it
/// varies by `Accept-Encoding` ([`coded_without_vary`]), is given that `Vary` before it is
/// judged: stored per the codings clients take, and said so to the caches after this one.
pub fn add_coding_vary(resp: &mut pingora_http::ResponseHeader) {
    if resp.status != http::StatusCode::NOT_MODIFIED && coded_without_vary(&resp.headers) {
        let _ = resp.append_header(
            http::header::VARY,
            http::HeaderValue::from_static("Accept-Encoding"),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::coded_without_vary;

    #[test]
    fn a_coded_answer_without_a_vary_on_accept_encoding() {
        let with = |lines: &[(&str, &str)]| {
            let mut h = http::HeaderMap::new();
            for (n, v) in lines {
                h.append(
                    http::HeaderName::from_bytes(n.as_bytes()).unwrap(),
                    http::HeaderValue::from_str(v).unwrap(),
                );
            }
            coded_without_vary(&h)
        };
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
