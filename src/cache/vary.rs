//! The variant of a stored response a request wants: the values of the headers the response's
//! `Vary` names, as the upstream receives them.

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
