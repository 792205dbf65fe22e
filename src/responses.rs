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

/// The upstream could not be reached or failed.
pub fn bad_gateway() -> Reply {
    Reply::text(502, "Bad gateway.")
}

/// Kargo's healthcheck answer.
pub fn healthy() -> Reply {
    Reply::text(200, "OK")
}

/// Percent-encodes what `encodeurl` would: characters outside the URL set, keeping existing
/// escapes.
fn encode_url(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        let is_escape = b == b'%'
            && bytes.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
            && bytes.get(i + 2).is_some_and(u8::is_ascii_hexdigit);
        let allowed = b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/?#[]".contains(&b);
        if allowed || is_escape {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
        i += 1;
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
    }
}
