//! Answers written on the connection itself, without Pingora's server session — which would
//! read the request head a second time and rebuild the response head header by header (a
//! fifth of a proxied tile's instructions, with the clone of the upstream's head).
//!
//! - An answer no cache step handles, relayed whole: a final answer of known length up to
//!   [`DIRECT_MAX`] (what a tile is) is read into the worker thread's buffer and written with
//!   its head in one `writev`, as a miss is ([`super::fill`]). The head is the upstream's as
//!   the session would send it: the upstream connection's own headers gone, the pipeline's
//!   edits applied, the gateway's `Date` and `Connection`. Anything else — a larger body or
//!   one of unknown length, an informational answer, edits the head cannot take as written
//!   here, a failure — goes through the session as before ([`super::relay::relay`]), streamed
//!   as it comes.
//! - A reply of the gateway's own (a 401, a 403, a health check): [`reply_head`].

use std::time::Instant;

use pingora_core::protocols::http::v1::client::HttpSession as Upstream;

use bytes::BytesMut;
use http::header::{HeaderName, CONTENT_LENGTH};
use pingora_http::{HeaderNameVariant, ResponseHeader};

use super::fill::{length_and_age, Asking};
use super::head::Reading;
use super::{FastPath, Served, SessionLimits};
use crate::cache::fill::Fill;
use crate::exchange;
use crate::gateway::Gateway;
use crate::pipeline::context::{Exchange, HeaderEdit, Reply};
use crate::wire;

/// The largest body relayed whole; a larger one goes to the client as it arrives.
pub const DIRECT_MAX: usize = 256 * 1024;

/// Headers that belong to one connection or that the gateway writes itself: never copied
/// from the upstream's head, and an edit of one leaves the answer to the session.
const OWN: [&str; 9] = wire::concat(
    wire::HOP_BY_HOP,
    ["transfer-encoding", "content-length", "date"],
);

impl FastPath {
    /// Proxies a request no cache step handles and answers it.
    pub(super) async fn answer_direct(
        &self,
        reading: Reading,
        gw: &Gateway,
        x: &mut Exchange,
        started: Instant,
        limits: &SessionLimits,
    ) -> Served {
        let head_for = |_: &mut Option<Box<Fill>>, up: &Upstream, _: &_, x: &Exchange, ka| {
            wire_head(up.resp_header()?, &x.response_edits, ka)
        };
        let asking = Asking {
            fill: None,
            cache: None,
        };
        self.ask_and_answer(reading, asking, head_for, gw, x, started, limits)
            .await
    }
}

/// The client's head for the upstream's answer `resp`, when it is relayed whole: a final
/// answer whose length is known and at most [`DIRECT_MAX`], and `edits` that each name a
/// header once and none of [`OWN`]. The upstream's headers in its order and spelling, but
/// those of [`OWN`], those its `Connection` names and those a `Set` or `Remove` edit replaces;
/// then the edits' values; then `Content-Length`, `Date` and `Connection`.
pub fn wire_head(resp: &ResponseHeader, edits: &[HeaderEdit], keepalive: bool) -> Option<BytesMut> {
    let (len, _) = length_and_age(resp)?;
    if len > DIRECT_MAX || resp.headers.get_all(CONTENT_LENGTH).iter().count() != 1 {
        return None;
    }
    for (i, edit) in edits.iter().enumerate() {
        let n = edit.name();
        if own(n.as_str().as_bytes()) || edits[..i].iter().any(|e| e.name() == n) {
            return None;
        }
    }
    // The headers the upstream's `Connection` names (most answers have none).
    let named: smallvec::SmallVec<[&[u8]; 4]> = wire::connection_tokens(&resp.headers).collect();
    let named = |name: &[u8]| named.iter().any(|t| t.eq_ignore_ascii_case(name));
    let replaced = |name: &[u8]| {
        edits.iter().any(|e| {
            matches!(e, HeaderEdit::Set(..) | HeaderEdit::Remove(_))
                && e.name().as_str().as_bytes().eq_ignore_ascii_case(name)
        })
    };
    let mut buf = BytesMut::with_capacity(128 + 48 * (resp.headers.len() + edits.len()));
    wire::status_line(&mut buf, resp.status, resp.get_reason_phrase());
    let _ = resp.map(|name, value| {
        let name: &[u8] = match &name {
            HeaderNameVariant::Case(n) => n.as_slice(),
            HeaderNameVariant::Titled(n) => n.as_bytes(),
        };
        if !(own(name) || named(name) || replaced(name)) {
            wire::header_line(&mut buf, name, value.as_bytes());
        }
        Ok(())
    });
    let upstream_has =
        |n: &HeaderName| resp.headers.contains_key(n) && !named(n.as_str().as_bytes());
    for edit in edits {
        match edit {
            HeaderEdit::Set(n, v) => {
                wire::header_line(&mut buf, n.as_str().as_bytes(), v.as_bytes())
            }
            HeaderEdit::Append(n, v)
                if named(n.as_str().as_bytes()) || !wire::lists(&resp.headers, n, v.as_bytes()) =>
            {
                wire::header_line(&mut buf, n.as_str().as_bytes(), v.as_bytes())
            }
            HeaderEdit::Append(..) => {}
            HeaderEdit::Default(n, v) if !upstream_has(n) => {
                wire::header_line(&mut buf, n.as_str().as_bytes(), v.as_bytes())
            }
            HeaderEdit::Default(..) | HeaderEdit::Remove(_) => {}
        }
    }
    let mut digits = itoa::Buffer::new();
    wire::header_line(&mut buf, b"Content-Length", digits.format(len).as_bytes());
    end_head(&mut buf, keepalive);
    Some(buf)
}

/// The head of a gateway-made reply (as [`exchange::reply_header`] makes it) with the
/// gateway's `Date` and `Connection`, as Pingora's session writes it. `None` (the session
/// writes it, framing the body by the head) for a status without a body (a `rateLimit`
/// `statusCode` may be any), a `Content-Length` an edit made that is not the body's, or an
/// edit that set another of [`OWN`].
pub fn reply_head(reply: &Reply, edits: &[HeaderEdit], keepalive: bool) -> Option<BytesMut> {
    if matches!(reply.status, 100..=199 | 204 | 304) {
        return None;
    }
    let status = http::StatusCode::from_u16(reply.status).ok()?;
    let lines = exchange::reply_lines(reply, edits).0;
    let mut lengths = lines.iter().filter(|(n, _)| *n == CONTENT_LENGTH);
    let length = lengths
        .next()
        .and_then(|(_, v)| v.to_str().ok()?.parse::<usize>().ok());
    if length != Some(reply.body.len()) || lengths.next().is_some() {
        return None;
    }
    if lines
        .iter()
        .any(|(n, _)| *n != CONTENT_LENGTH && own(n.as_str().as_bytes()))
    {
        return None;
    }
    let mut buf = BytesMut::with_capacity(160 + 48 * lines.len());
    wire::status_line(&mut buf, status, status.canonical_reason());
    for (n, v) in &lines {
        wire::header_line(&mut buf, titled(n), v.as_bytes());
    }
    end_head(&mut buf, keepalive);
    Some(buf)
}

/// A header name as Pingora's session writes it: the common ones titled, others as they are.
fn titled(name: &HeaderName) -> &[u8] {
    use http::header::*;
    let titled = match *name {
        CONTENT_TYPE => "Content-Type",
        CONTENT_LENGTH => "Content-Length",
        CACHE_CONTROL => "Cache-Control",
        CONTENT_ENCODING => "Content-Encoding",
        ACCEPT_RANGES => "Accept-Ranges",
        AGE => "Age",
        SERVER => "Server",
        SET_COOKIE => "Set-Cookie",
        _ => name.as_str(),
    };
    titled.as_bytes()
}

/// The gateway's `Date` and `Connection`, and the head's end.
fn end_head(buf: &mut BytesMut, keepalive: bool) {
    wire::header_line(buf, b"Date", &crate::clock::http_date());
    wire::end_with_connection(buf, keepalive);
}

/// Whether `name` is one of [`OWN`], in any case (the lengths compared first: most names
/// match none).
fn own(name: &[u8]) -> bool {
    OWN.iter()
        .any(|o| o.len() == name.len() && name.eq_ignore_ascii_case(o.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn upstream(status: u16, headers: &[(&str, &str)]) -> ResponseHeader {
        let mut resp = ResponseHeader::build(status, None).expect("status");
        for (n, v) in headers {
            resp.append_header(n.to_string(), *v).expect("header");
        }
        resp
    }

    fn text(head: Option<BytesMut>) -> String {
        let head = head.expect("relayed whole");
        String::from_utf8(head.to_vec()).expect("utf-8")
    }

    fn set(n: &'static str, v: &'static str) -> HeaderEdit {
        HeaderEdit::Set(HeaderName::from_static(n), HeaderValue::from_static(v))
    }

    #[test]
    fn the_upstream_head_goes_out_in_its_order_and_spelling_without_its_connection_headers() {
        let resp = upstream(
            200,
            &[
                ("Content-Type", "image/png"),
                ("Connection", "keep-alive, X-Hop"),
                ("X-Hop", "secret"),
                ("Keep-Alive", "timeout=5"),
                ("Date", "Mon, 01 Jan 2024 00:00:00 GMT"),
                ("set-cookie", "a=1"),
                ("set-cookie", "b=2"),
                ("Content-Length", "5"),
            ],
        );
        let head = text(wire_head(&resp, &[], true));
        let lines: Vec<&str> = head.split("\r\n").collect();
        assert_eq!(lines[0], "HTTP/1.1 200 OK");
        assert_eq!(
            &lines[1..4],
            [
                "Content-Type: image/png",
                "set-cookie: a=1",
                "set-cookie: b=2"
            ]
        );
        assert_eq!(lines[4], "Content-Length: 5");
        assert!(
            lines[5].starts_with("Date: ") && !lines[5].contains("2024"),
            "{head}"
        );
        assert_eq!(&lines[6..], ["Connection: keep-alive", "", ""]);
        let closing = text(wire_head(&resp, &[], false));
        assert!(closing.ends_with("Connection: close\r\n\r\n"), "{closing}");
    }

    #[test]
    fn edits_apply_as_on_the_session() {
        let resp = upstream(
            404,
            &[
                ("X-A", "up"),
                ("X-B", "up"),
                ("X-C", "up"),
                ("Content-Length", "0"),
            ],
        );
        let edits = [
            set("x-a", "edit"),
            HeaderEdit::Remove(HeaderName::from_static("x-b")),
            HeaderEdit::Default(
                HeaderName::from_static("x-c"),
                HeaderValue::from_static("edit"),
            ),
            HeaderEdit::Default(
                HeaderName::from_static("x-d"),
                HeaderValue::from_static("edit"),
            ),
            HeaderEdit::Append(
                HeaderName::from_static("x-e"),
                HeaderValue::from_static("edit"),
            ),
        ];
        let head = text(wire_head(&resp, &edits, true));
        let mut lines: Vec<&str> = head
            .split("\r\n")
            .filter(|l| l.starts_with("X-") || l.starts_with("x-"))
            .collect();
        lines.sort_unstable();
        assert_eq!(
            lines,
            ["X-C: up", "x-a: edit", "x-d: edit", "x-e: edit"],
            "{head}"
        );
        assert!(head.starts_with("HTTP/1.1 404 Not Found\r\n"), "{head}");
    }

    #[test]
    fn the_headers_the_gateway_writes_are_known_in_any_case() {
        for name in OWN {
            assert!(own(name.as_bytes()), "{name}");
            assert!(own(name.to_ascii_uppercase().as_bytes()), "{name}");
        }
        for name in ["x-date", "dat", "content-type", "connectionx", ""] {
            assert!(!own(name.as_bytes()), "{name}");
        }
    }

    #[test]
    fn a_reply_has_its_headers_and_the_gateways_date_and_connection() {
        let mut reply = Reply::text(401, "Unauthorized");
        reply.headers.push((
            HeaderName::from_static("www-authenticate"),
            HeaderValue::from_static("Bearer"),
        ));
        let edits = [set("x-edit", "1")];
        let head = text(reply_head(&reply, &edits, false));
        assert!(head.starts_with("HTTP/1.1 401 Unauthorized\r\n"), "{head}");
        for expected in [
            "Content-Type: text/plain; charset=utf-8\r\n",
            "www-authenticate: Bearer\r\n",
            "x-edit: 1\r\n",
            "Content-Length: 12\r\n",
            "Date: ",
        ] {
            assert!(head.contains(expected), "{expected} in {head}");
        }
        assert!(head.ends_with("Connection: close\r\n\r\n"), "{head}");
        assert!(reply_head(&reply, &[set("connection", "x")], true).is_none());
        // The body must be what the head frames: else the session writes it.
        assert!(reply_head(&reply, &[set("content-length", "3")], true).is_none());
        let length = || HeaderName::from_static("content-length");
        let twelve = || HeaderEdit::Append(length(), HeaderValue::from_static("12"));
        assert!(reply_head(&reply, &[twelve()], true).is_some());
        let thirteen = HeaderEdit::Append(length(), HeaderValue::from_static("13"));
        assert!(reply_head(&reply, &[twelve(), thirteen], true).is_none());
        for status in [100, 204, 304] {
            let mut bodiless = Reply::text(status, "x");
            bodiless.body = bytes::Bytes::new();
            assert!(reply_head(&bodiless, &[], true).is_none(), "{status}");
        }
    }

    #[test]
    fn what_the_session_must_frame_or_edit_is_left_to_it() {
        let sized = upstream(200, &[("Content-Length", "5")]);
        assert!(wire_head(&sized, &[], true).is_some());
        for resp in [
            upstream(200, &[("Transfer-Encoding", "chunked")]),
            upstream(200, &[]),
            upstream(100, &[]),
            upstream(200, &[("Content-Length", &(DIRECT_MAX + 1).to_string())]),
            upstream(200, &[("Content-Length", "5"), ("Content-Length", "6")]),
        ] {
            assert!(wire_head(&resp, &[], true).is_none(), "{resp:?}");
        }
        for edits in [
            vec![set("connection", "close")],
            vec![set("content-length", "1")],
            vec![set("x-a", "1"), set("x-a", "2")],
        ] {
            assert!(wire_head(&sized, &edits, true).is_none(), "{edits:?}");
        }
    }
}
