//! The answers the gateway gives by itself, byte for byte as Express Gateway gives them.

use bytes::Bytes;

use crate::pipeline::context::Reply;

/// No route matched: Express's final handler, `Cannot GET /path` in a small HTML page.
pub fn cannot(method: &str, path: &str) -> Reply {
    let message = format!("Cannot {} {}", method, escape_html(&encode_url(path)));
    let body = format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>Error</title>\n</head>\n<body>\n<pre>{message}</pre>\n</body>\n</html>\n"
    );
    let mut reply = Reply::text(404, Bytes::from(body));
    reply.content_type = Some("text/html; charset=utf-8");
    reply.headers.push((
        http::header::CONTENT_SECURITY_POLICY,
        http::HeaderValue::from_static("default-src 'none'"),
    ));
    reply.headers.push((
        http::header::X_CONTENT_TYPE_OPTIONS,
        http::HeaderValue::from_static("nosniff"),
    ));
    reply
}

/// An endpoint matched but no pipeline uses it (`res.sendStatus(404)`).
pub fn not_found() -> Reply {
    Reply::text(404, "Not Found")
}

/// The upstream could not be reached or failed (`res.status(502).send('Bad gateway.')`).
pub fn bad_gateway() -> Reply {
    html(502, "Bad gateway.")
}

/// A stored tile that may not be used stale could not be revalidated: the upstream failed
/// (RFC 9111 §5.2.2.2), worded as the 502.
pub fn gateway_timeout() -> Reply {
    html(504, "Gateway timeout.")
}

/// A string body sent with Express's `res.send`, which types it `text/html`.
pub fn html(status: u16, body: impl Into<Bytes>) -> Reply {
    let mut reply = Reply::text(status, body);
    if reply.content_type.is_some() {
        reply.content_type = Some("text/html; charset=utf-8");
    }
    reply
}

/// The readiness answer: 200 when ready, else 503 with the reason, as JSON.
pub fn readiness(not_ready: Option<String>) -> Reply {
    let (status, body) = match not_ready {
        None => (200, serde_json::json!({"status": "ready"})),
        Some(reason) => (
            503,
            serde_json::json!({"status": "not ready", "reason": reason}),
        ),
    };
    let mut reply = Reply::text(status, body.to_string());
    reply.content_type = Some("application/json; charset=utf-8");
    reply
}

/// Kargo's healthcheck answer.
pub fn healthy() -> Reply {
    Reply::text(200, "OK")
}

/// Percent-encodes as `encodeurl` does: bytes outside `[\x21\x23-\x3B\x3D\x3F-\x5F\x61-\x7A\x7C\x7E]`
/// and a `%` that does not start a valid escape.
fn encode_url(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    for (i, &b) in bytes.iter().enumerate() {
        let kept = matches!(b, 0x21 | 0x23..=0x3B | 0x3D | 0x3F..=0x5F | 0x61..=0x7A | 0x7C | 0x7E);
        let valid_escape = b != b'%'
            || (bytes.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
                && bytes.get(i + 2).is_some_and(u8::is_ascii_hexdigit));
        if kept && valid_escape {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cannot_page_escapes_the_path() {
        let r = cannot("GET", "/a<b>");
        let body = String::from_utf8(r.body.to_vec()).expect("utf8");
        assert!(body.contains("<pre>Cannot GET /a%3Cb%3E</pre>"));
        assert_eq!(r.status, 404);
        let r = cannot("GET", "/a<b>\"c'{}|^`");
        let body = String::from_utf8(r.body.to_vec()).expect("utf8");
        assert!(
            body.contains("<pre>Cannot GET /a%3Cb%3E%22c&#39;%7B%7D|^%60</pre>"),
            "{body}"
        );
        assert_eq!(r.body.len(), 167);
        let r = cannot("GET", "/%E2%82%AC/%zz/%2F");
        assert!(String::from_utf8_lossy(&r.body).contains("/%E2%82%AC/%25zz/%2F"));
    }
}
