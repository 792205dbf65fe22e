//! The header edits a pipeline collects, applied alike to Pingora's request and response heads
//! and to the gateway's own replies as a list of lines.

use http::header::{HeaderName, HeaderValue};
use pingora_core::Result;
use pingora_http::{RequestHeader, ResponseHeader};

use crate::pipeline::context::{HeaderEdit, Reply};

/// Request and response headers of Pingora both take edits.
pub trait EditableHeaders {
    fn has(&self, name: &HeaderName) -> bool;
    fn set(&mut self, name: HeaderName, value: HeaderValue) -> Result<()>;
    fn add(&mut self, name: HeaderName, value: HeaderValue) -> Result<()>;
    fn remove(&mut self, name: &HeaderName);
    /// Whether header `name`'s list has `token` (without case) or `*`.
    fn lists(&self, name: &HeaderName, token: &[u8]) -> bool;
}

macro_rules! editable {
    ($t:ty) => {
        impl HeaderMapped for $t {
            fn headers(&self) -> &http::HeaderMap {
                &self.headers
            }
        }
        impl EditableHeaders for $t {
            fn has(&self, name: &HeaderName) -> bool {
                self.headers.contains_key(name)
            }
            fn set(&mut self, name: HeaderName, value: HeaderValue) -> Result<()> {
                self.insert_header(name, value)
            }
            fn add(&mut self, name: HeaderName, value: HeaderValue) -> Result<()> {
                self.append_header(name, value).map(|_| ())
            }
            fn remove(&mut self, name: &HeaderName) {
                self.remove_header(name);
            }
            fn lists(&self, name: &HeaderName, token: &[u8]) -> bool {
                crate::wire::lists(&self.headers, name, token)
            }
        }
    };
}
editable!(RequestHeader);
editable!(ResponseHeader);

/// [`crate::wire::HOP_BY_HOP`] as header names.
static HOP_BY_HOP: std::sync::LazyLock<[HeaderName; 6]> =
    std::sync::LazyLock::new(|| crate::wire::HOP_BY_HOP.map(HeaderName::from_static));

/// Pingora's request and response heads: their headers in a map.
pub trait HeaderMapped: EditableHeaders {
    fn headers(&self) -> &http::HeaderMap;
}

/// Removes the connection's own headers, and those its `Connection` header names but the
/// body's framing: an upstream's `Connection: Content-Length` took the answer's length away,
/// and the client got a body that ended only when its connection closed, under a head saying
/// `keep-alive` (a request it had sent behind it was lost). (A request naming them is refused,
/// see [`crate::wire::connection_refused`].)
pub fn strip_hop_by_hop(head: &mut impl HeaderMapped) {
    let headers = head.headers();
    if !HOP_BY_HOP.iter().any(|h| headers.contains_key(h)) {
        return;
    }
    let named: Vec<HeaderName> = crate::wire::connection_tokens(headers)
        .filter_map(|t| HeaderName::from_bytes(t).ok())
        .filter(|n| *n != http::header::CONTENT_LENGTH && *n != http::header::TRANSFER_ENCODING)
        .collect();
    for h in HOP_BY_HOP.iter().chain(named.iter()) {
        head.remove(h);
    }
}

pub fn apply_edits<'a>(
    target: &mut impl EditableHeaders,
    edits: impl IntoIterator<Item = &'a HeaderEdit>,
) -> Result<()> {
    for edit in edits {
        match edit {
            HeaderEdit::Set(n, v) => target.set(n.clone(), v.clone())?,
            HeaderEdit::Default(n, v) => {
                if !target.has(n) {
                    target.set(n.clone(), v.clone())?;
                }
            }
            HeaderEdit::Append(n, v) => {
                if !target.lists(n, v.as_bytes()) {
                    target.add(n.clone(), v.clone())?;
                }
            }
            HeaderEdit::Remove(n) => target.remove(n),
        }
    }
    Ok(())
}

/// The headers of a gateway-made response in their order, as a list: what its head is made
/// of (on the fast path written as it is, without Pingora's two header maps). Edits apply to
/// it as to Pingora's heads: setting a header replaces its values where its first one was.
#[derive(Debug, Default)]
pub struct ReplyLines(pub smallvec::SmallVec<[(HeaderName, HeaderValue); 8]>);

impl EditableHeaders for ReplyLines {
    fn has(&self, name: &HeaderName) -> bool {
        self.0.iter().any(|(n, _)| n == name)
    }
    fn set(&mut self, name: HeaderName, value: HeaderValue) -> Result<()> {
        match self.0.iter().position(|(n, _)| *n == name) {
            Some(first) => {
                // The first keeps its place with the new value; the others go.
                self.0[first].1 = value;
                let mut i = first + 1;
                while i < self.0.len() {
                    if self.0[i].0 == name {
                        self.0.remove(i);
                    } else {
                        i += 1;
                    }
                }
            }
            None => self.0.push((name, value)),
        }
        Ok(())
    }
    fn add(&mut self, name: HeaderName, value: HeaderValue) -> Result<()> {
        self.0.push((name, value));
        Ok(())
    }
    fn remove(&mut self, name: &HeaderName) {
        self.0.retain(|(n, _)| n != name);
    }
    fn lists(&self, name: &HeaderName, token: &[u8]) -> bool {
        self.0
            .iter()
            .filter(|(n, _)| n == name)
            .flat_map(|(_, v)| v.as_bytes().split(|b| *b == b','))
            .map(<[u8]>::trim_ascii)
            .any(|t| t == b"*" || t.eq_ignore_ascii_case(token))
    }
}

/// The headers of a gateway-made response, with the header edits the pipeline collected: its
/// `Content-Type`, its own headers, the edits, and a `Content-Length` unless an edit gave one.
pub fn reply_lines(reply: &Reply, edits: &[HeaderEdit]) -> ReplyLines {
    let mut lines = ReplyLines::default();
    if let Some(ct) = reply.content_type {
        lines
            .0
            .push((http::header::CONTENT_TYPE, HeaderValue::from_static(ct)));
    }
    for (n, v) in &reply.headers {
        let _ = lines.set(n.clone(), v.clone());
    }
    let _ = apply_edits(&mut lines, edits);
    // A 204 or 304 gets no length of the gateway's (RFC 9110 §8.6; `cors`'s preflight says
    // `Content-Length: 0` itself, as EG's does); a 205's is 0.
    if !lines.has(&http::header::CONTENT_LENGTH) && !matches!(reply.status, 204 | 304) {
        lines.0.push((
            http::header::CONTENT_LENGTH,
            HeaderValue::from(reply.body.len()),
        ));
    }
    lines
}

/// The head of a gateway-made response, with the header edits the pipeline collected (see
/// [`reply_lines`]).
pub fn reply_header(reply: &Reply, edits: &[HeaderEdit]) -> Result<ResponseHeader> {
    let lines = reply_lines(reply, edits);
    let mut resp = ResponseHeader::build(reply.status, Some(lines.0.len()))?;
    for (n, v) in lines.0 {
        resp.append_header(n, v)?;
    }
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::context::Reply;

    /// Each name's values in order, names sorted.
    fn by_name(pairs: impl Iterator<Item = (String, String)>) -> Vec<(String, Vec<String>)> {
        let mut out: Vec<(String, Vec<String>)> = Vec::new();
        for (n, v) in pairs {
            match out.iter_mut().find(|(m, _)| *m == n) {
                Some((_, vs)) => vs.push(v),
                None => out.push((n, vec![v])),
            }
        }
        out.sort();
        out
    }

    fn edit(op: u8, name: &str, value: &str) -> HeaderEdit {
        let (n, v) = (
            HeaderName::from_bytes(name.as_bytes()).expect("name"),
            HeaderValue::from_str(value).expect("value"),
        );
        match op % 4 {
            0 => HeaderEdit::Set(n, v),
            1 => HeaderEdit::Default(n, v),
            2 => HeaderEdit::Append(n, v),
            _ => HeaderEdit::Remove(n),
        }
    }

    proptest::proptest! {
        /// A reply's headers as a list are those Pingora's header maps make of the same reply
        /// and edits: the same names, each with the same values in the same order.
        #[test]
        fn reply_lines_take_edits_as_pingoras_heads_do(
            own in proptest::collection::vec((0..3usize, "[a-c]"), 0..3),
            edits in proptest::collection::vec((0..4u8, 0..4usize, "[a-c]"), 0..8),
        ) {
            let names = ["x-a", "x-b", "content-type", "content-length"];
            let mut reply = Reply::text(401, "Unauthorized");
            for (n, v) in &own {
                reply.headers.push((
                    HeaderName::from_static(names[*n]),
                    HeaderValue::from_str(v).expect("value"),
                ));
            }
            let edits: Vec<HeaderEdit> =
                edits.iter().map(|(op, n, v)| edit(*op, names[*n], v)).collect();
            // Pingora's heads, as the reply was made before the list.
            let mut resp = ResponseHeader::build(reply.status, None).expect("status");
            if let Some(ct) = reply.content_type {
                resp.insert_header(http::header::CONTENT_TYPE, ct).expect("ct");
            }
            for (n, v) in &reply.headers {
                resp.insert_header(n.clone(), v.clone()).expect("header");
            }
            apply_edits(&mut resp, &edits).expect("edits");
            if resp.headers.get(http::header::CONTENT_LENGTH).is_none() {
                resp.insert_header(http::header::CONTENT_LENGTH, reply.body.len()).expect("cl");
            }
            let text = |n: &HeaderName, v: &HeaderValue| {
                (n.as_str().to_string(), v.to_str().expect("text").to_string())
            };
            let expected = by_name(resp.headers.iter().map(|(n, v)| text(n, v)));
            let lines = reply_lines(&reply, &edits);
            proptest::prop_assert_eq!(by_name(lines.0.iter().map(|(n, v)| text(n, v))), expected.clone());
            let header = reply_header(&reply, &edits).expect("head");
            proptest::prop_assert_eq!(by_name(header.headers.iter().map(|(n, v)| text(n, v))), expected);
        }
    }
}
