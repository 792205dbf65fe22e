//! The pieces of an HTTP/1 response head the gateway writes as bytes itself (a hit's, a miss's,
//! a stored head's, an answer relayed whole, a reply's): its lines, its end, and the headers
//! that belong to one connection.

use bytes::{BufMut, BytesMut};
use http::{HeaderMap, StatusCode};

/// The headers that belong to one connection (RFC 9110 §7.6.1), lowercase; the headers the
/// `Connection` header names do too ([`connection_tokens`]).
pub const HOP_BY_HOP: [&str; 6] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
];

/// `a` followed by `b`: lists of header names made from others.
pub const fn concat<const A: usize, const B: usize, const N: usize>(
    a: [&'static str; A],
    b: [&'static str; B],
) -> [&'static str; N] {
    assert!(A + B == N, "the list's length is the sum of its parts");
    let mut out = [""; N];
    let mut i = 0;
    while i < A {
        out[i] = a[i];
        i += 1;
    }
    while i < N {
        out[i] = b[i - A];
        i += 1;
    }
    out
}

/// The names the `Connection` headers of `headers` list, trimmed (empty ones left out).
#[inline]
pub fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = &[u8]> {
    list(headers, &http::header::CONNECTION)
}

/// The members of a list header (`Vary`, `Content-Encoding`, `Connection`…) over all its
/// lines, trimmed (empty ones left out).
#[inline]
pub fn list<'a>(headers: &'a HeaderMap, name: &http::HeaderName) -> impl Iterator<Item = &'a [u8]> {
    headers
        .get_all(name)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
}

/// FNV-1a of `bytes`: a hash the same in every process and version (names of files, places
/// of keys).
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Whether header `name`'s list has `token` (without case) or `*`.
pub fn lists(headers: &HeaderMap, name: &http::HeaderName, token: &[u8]) -> bool {
    list(headers, name).any(|t| t == b"*" || t.eq_ignore_ascii_case(token))
}

/// The most options a request's `Connection` may give (clients send one or two): as many as
/// Pingora's proxy takes (it refuses ten or more), so that both paths answer alike.
pub const MAX_CONNECTION_OPTIONS: usize = 9;

/// Whether a request's `Connection` names a header that cannot go at the gateway (the request
/// is answered `400`): those Pingora's proxy refuses to see named — `Host`, `X-Forwarded-For`,
/// `-Host`, `-Proto`, a pseudo-header — and the body's framing, `Content-Length` and
/// `Transfer-Encoding` (dropped as the head is read, the body was left on the connection and
/// read as the client's next request: request smuggling). Both paths refuse them, and a
/// `Connection` of more than [`MAX_CONNECTION_OPTIONS`] options (the fast path took
/// thousands, each looked for among the request's headers: a request cost what eighteen do).
pub fn connection_refused(headers: &HeaderMap) -> bool {
    let mut options = 0;
    connection_tokens(headers).any(|t| {
        options += 1;
        options > MAX_CONNECTION_OPTIONS
            || t.starts_with(b":")
            || [
                &b"host"[..],
                b"x-forwarded-for",
                b"x-forwarded-host",
                b"x-forwarded-proto",
                b"content-length",
                b"transfer-encoding",
            ]
            .iter()
            .any(|p| t.eq_ignore_ascii_case(p))
    })
}

/// The headers a request's `Connection` names that it carries, but the connection's own
/// ([`HOP_BY_HOP`], `HTTP2-Settings`): they go no further than the gateway (RFC 9110 §7.6.1).
pub fn named_by_connection(headers: &HeaderMap) -> smallvec::SmallVec<[http::HeaderName; 2]> {
    connection_tokens(headers)
        .filter(|t| {
            !t.eq_ignore_ascii_case(b"close")
                && !HOP_BY_HOP
                    .iter()
                    .any(|h| t.eq_ignore_ascii_case(h.as_bytes()))
                && !t.eq_ignore_ascii_case(b"http2-settings")
        })
        .filter_map(|t| http::HeaderName::from_bytes(t).ok())
        .filter(|n| headers.contains_key(n))
        .collect()
}

/// Whether a `Connection` header, on any of its lines, says `close` (RFC 9112 §9.6: the
/// connection closes after this exchange; Pingora's session reads only the first line).
pub fn asks_close(headers: &HeaderMap) -> bool {
    connection_tokens(headers).any(|t| t.eq_ignore_ascii_case(b"close"))
}

/// `HTTP/1.1 <status> <reason>`.
#[inline]
pub fn status_line(buf: &mut BytesMut, status: StatusCode, reason: Option<&str>) {
    buf.put_slice(b"HTTP/1.1 ");
    buf.put_slice(status.as_str().as_bytes());
    buf.put_u8(b' ');
    buf.put_slice(reason.unwrap_or("").as_bytes());
    buf.put_slice(b"\r\n");
}

/// `<name>: <value>`. (Always inlined: a hit's head writes several, and a call each cost a
/// hit 0.7% of its instructions.)
#[inline(always)]
pub fn header_line(buf: &mut BytesMut, name: &[u8], value: &[u8]) {
    buf.put_slice(name);
    buf.put_slice(b": ");
    buf.put_slice(value);
    buf.put_slice(b"\r\n");
}

/// `Connection` as the client's connection goes on, and the head's end.
#[inline]
pub fn end_with_connection(buf: &mut BytesMut, keepalive: bool) {
    buf.put_slice(if keepalive {
        b"Connection: keep-alive\r\n\r\n".as_slice()
    } else {
        b"Connection: close\r\n\r\n".as_slice()
    });
}

/// Whether a path has a `.` or `..` segment (RFC 3986 §3.3), its dots written as they are or
/// percent-encoded (`%2e`), also where an upstream may see one: segments are cut at `\` and
/// at an encoded slash (`%2f`, `%5c`) too, and a segment ends at `;` (a path parameter, which
/// Java servers drop before resolving `..;/`).
pub fn has_dot_segment(path: &str) -> bool {
    path_shape(path).dot_segment
}

/// What a path has that the gateway looks for before routing it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PathShape {
    /// A `.` or `..` segment (see [`has_dot_segment`]).
    pub dot_segment: bool,
    /// A `/` twice in a row, or a `%`: the path may have another form (see
    /// [`normalised_target`]).
    pub other_form: bool,
    /// A `%` not followed by two hex digits (RFC 3986 §2.1: no URI has one).
    pub bad_escape: bool,
}

/// The [`PathShape`] of a path.
pub fn path_shape(path: &str) -> PathShape {
    let p = path.as_bytes();
    // Most paths have a dot only in their file name, no `//`, and no `%` or `\`: one pass
    // over their few bytes (cheaper than a `memchr`'s setup). (`b | 1 == b'/'`: a `.` or a
    // `/`, 0x2e and 0x2f.)
    let mut prev = 0;
    let suspect = p.iter().any(|&b| {
        let after_slash = b | 1 == b'/' && prev == b'/';
        prev = b;
        after_slash || b == b'%' || b == b'\\'
    });
    if !suspect {
        return PathShape::default();
    }
    let hex = |i: usize| p.get(i).is_some_and(u8::is_ascii_hexdigit);
    PathShape {
        dot_segment: dot_segment(p),
        other_form: p.contains(&b'%') || p.windows(2).any(|w| w == b"//"),
        bad_escape: memchr::memchr_iter(b'%', p).any(|i| !(hex(i + 1) && hex(i + 2))),
    }
}

/// Whether the bytes of a path have a dot segment (see [`has_dot_segment`]).
fn dot_segment(p: &[u8]) -> bool {
    // `%` then the two bytes, lowercase, at `i`.
    let escape = |i: usize| {
        (p.get(i) == Some(&b'%') && i + 2 < p.len())
            .then(|| (p[i + 1].to_ascii_lowercase(), p[i + 2].to_ascii_lowercase()))
    };
    let (mut dots, mut other, mut params) = (0, false, false);
    let mut i = 0;
    loop {
        let separator = match p.get(i) {
            None => Some(0),
            Some(b'/' | b'\\') => Some(1),
            Some(_) => matches!(escape(i), Some((b'2', b'f') | (b'5', b'c'))).then_some(3),
        };
        if let Some(len) = separator {
            if !other && (dots == 1 || dots == 2) {
                return true;
            }
            if len == 0 {
                return false;
            }
            (dots, other, params) = (0, false, false);
            i += len;
            continue;
        }
        if params {
            i += 1;
        } else if p[i] == b';' {
            params = true;
            i += 1;
        } else if p[i] == b'.' {
            dots += 1;
            i += 1;
        } else if escape(i) == Some((b'2', b'e')) {
            dots += 1;
            i += 3;
        } else {
            other = true;
            i += 1;
        }
    }
}

/// `url` (a path and maybe a query) in the form it is routed and forwarded in: its path's
/// escapes of unreserved characters decoded (`%61` is `a`: RFC 3986 §6.2.2.2, the same URI),
/// its repeated slashes made one, as the proxy's join makes them one upstream; the query as
/// it came. `None` when that is `url` itself.
pub fn normalised_target(url: &str) -> Option<String> {
    let end = memchr::memchr(b'?', url.as_bytes()).unwrap_or(url.len());
    let b = url.as_bytes();
    let hex = |at: usize| b.get(at).and_then(|c| (*c as char).to_digit(16));
    let mut out: Vec<u8> = Vec::with_capacity(url.len());
    let mut i = 0;
    while i < end {
        let mut c = b[i];
        let mut len = 1;
        if let (b'%', Some(h), Some(l)) = (c, hex(i + 1), hex(i + 2)) {
            let decoded = (h * 16 + l) as u8;
            if decoded.is_ascii_alphanumeric() || matches!(decoded, b'-' | b'.' | b'_' | b'~') {
                (c, len) = (decoded, 3);
            }
        }
        if !(c == b'/' && out.last() == Some(&b'/')) {
            out.push(c);
        }
        i += len;
    }
    out.extend_from_slice(&b[end..]);
    // (Only ASCII was decoded, and whole characters were copied: still UTF-8.)
    let out = String::from_utf8(out).ok()?;
    (out != url).then_some(out)
}

/// How many bytes of blank lines `bytes` begins with (`\r` and `\n`: what a client may send
/// before a request, RFC 9112 §2.2).
pub fn blank_lines(bytes: &[u8]) -> usize {
    bytes
        .iter()
        .take_while(|b| matches!(b, b'\r' | b'\n'))
        .count()
}

/// The request line at the start of `head` (blank lines before it skipped), without its line
/// end; `None` while no line end has come.
pub fn request_line(head: &[u8]) -> Option<&[u8]> {
    let head = &head[blank_lines(head)..];
    let line = &head[..memchr::memchr(b'\n', head)?];
    Some(line.strip_suffix(b"\r").unwrap_or(line))
}

/// Why the request line of `head` (a complete head, blank lines before it allowed) is
/// refused, where Pingora's parser takes it: a control character (NUL, tab, DEL…), which
/// RFC 9112 §3.2 allows nowhere in a target and nginx answers 400 (the parser escapes them,
/// `%00`, and the request was served; a space is escaped and served, as clients send them
/// unescaped); or the asterisk-form (`*`) with a method other than OPTIONS (RFC 9112 §3.2.4).
pub fn request_line_refusal(head: &[u8]) -> Option<Box<pingora_core::Error>> {
    let line = request_line(head)?;
    let why = if line.iter().any(u8::is_ascii_control) {
        "a control character in the request line"
    } else if line.split(|b| *b == b' ').nth(1) == Some(b"*") && !line.starts_with(b"OPTIONS ") {
        "the asterisk-form for a method other than OPTIONS"
    } else {
        return None;
    };
    Some(pingora_core::Error::explain(
        pingora_core::ErrorType::InvalidHTTPHeader,
        why,
    ))
}

/// Whether Node's HTTP server (and so EG) keeps the first line of a header that comes twice
/// (it joins the lines of the others with `, `, and `Cookie`'s with `; `).
pub fn node_keeps_first(name: &http::HeaderName) -> bool {
    [
        "age",
        "authorization",
        "content-length",
        "content-type",
        "etag",
        "expires",
        "from",
        "host",
        "if-modified-since",
        "if-unmodified-since",
        "last-modified",
        "location",
        "max-forwards",
        "proxy-authorization",
        "referer",
        "retry-after",
        "server",
        "user-agent",
    ]
    .contains(&name.as_str())
}

/// `bytes` as lowercase hexadecimal digits (digests in headers, file names and keys).
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(2 * bytes.len());
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_paths_shape_and_its_slashes_made_one() {
        for (path, dot, slashes) in [
            ("/wmts/1/2/3.png", false, false),
            ("//admin/x", false, true),
            ("/a/./b", true, false),
            ("/a//../b", true, true),
            ("/a%2f..", true, true),
            ("/%61dmin", false, true),
        ] {
            let shape = path_shape(path);
            assert_eq!(
                (shape.dot_segment, shape.other_form),
                (dot, slashes),
                "{path}"
            );
        }
        let form = |u: &str| normalised_target(u);
        assert_eq!(form("///a//b/?q=//x").as_deref(), Some("/a/b/?q=//x"));
        assert_eq!(form("/é//b").as_deref(), Some("/é/b"));
        assert_eq!(
            form("/%61dmi%6E/x?q=%61").as_deref(),
            Some("/admin/x?q=%61")
        );
        assert_eq!(
            form("/a%2Fb%3a%7E%zz%4").as_deref(),
            Some("/a%2Fb%3a~%zz%4")
        );
        assert_eq!(form("/wmts/1/2/3.png?jwt=x"), None);
        assert_eq!(form("/a%2Fb"), None);
    }

    #[test]
    fn hex_digits() {
        assert_eq!(hex(&[0x00, 0x0f, 0xab, 0xff]), "000fabff");
        assert_eq!(hex(&[]), "");
    }

    #[test]
    fn request_lines_pingora_takes_and_a_gateway_refuses() {
        for refused in [
            &b"GET /a\x00b HTTP/1.1\r\n\r\n"[..],
            b"GET /a\tb HTTP/1.1\r\n\r\n",
            b"\r\nPOST /\x7f HTTP/1.1\r\n\r\n",
            b"GET * HTTP/1.1\r\nHost: h\r\n\r\n",
        ] {
            assert!(
                request_line_refusal(refused).is_some(),
                "{}",
                refused.escape_ascii()
            );
        }
        for taken in [
            &b"GET /a b HTTP/1.1\r\n\r\n"[..],
            b"OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n",
            b"GET /* HTTP/1.1\r\n\r\n",
            b"GET /a HTTP/1.1\r\nX: a\tb\r\n\r\n",
        ] {
            assert!(
                request_line_refusal(taken).is_none(),
                "{}",
                taken.escape_ascii()
            );
        }
    }

    #[test]
    fn lists_concatenate_in_order() {
        const BOTH: [&str; 8] = concat(HOP_BY_HOP, ["a", "b"]);
        assert_eq!(&BOTH[..6], &HOP_BY_HOP);
        assert_eq!(&BOTH[6..], ["a", "b"]);
    }

    #[test]
    fn the_connection_header_names_its_tokens() {
        let mut h = HeaderMap::new();
        h.append("connection", "keep-alive, X-A ,".parse().expect("value"));
        h.append("connection", "x-b".parse().expect("value"));
        let tokens: Vec<&[u8]> = connection_tokens(&h).collect();
        assert_eq!(tokens, [&b"keep-alive"[..], b"X-A", b"x-b"]);
    }

    #[test]
    fn dot_segments_are_found_however_written() {
        for p in [
            "/wmts/../k2/x",
            "/wmts/./x",
            "/wmts/..",
            "/wmts/%2e%2e/k2",
            "/wmts/%2E./k2",
            "/wmts/.%2E/k2",
            "/%2e/x",
            "/..",
            "/wmts/..;/k2/x",
            "/wmts/%2e%2e;x=1/k2",
            "/wmts/..\\k2\\x",
            "/wmts/..%2fk2/x",
            "/wmts/..%5Ck2",
            "/wmts/a%2F..%2Fk2",
        ] {
            assert!(has_dot_segment(p), "{p}");
        }
        for p in [
            "/wmts/1/2/3.png",
            "/wmts/a..b/x",
            "/wmts/.../x",
            "/wmts/.hidden/x",
            "/wmts/x%2e/y",
            "/wmts/%2e%2e%2e/x",
            "/wmts/a;..",
            "/wmts/%2f/x.png",
            "/",
            "",
        ] {
            assert!(!has_dot_segment(p), "{p}");
        }
    }

    #[test]
    fn a_head_is_its_lines_and_its_end() {
        let mut buf = BytesMut::new();
        status_line(&mut buf, StatusCode::NOT_FOUND, Some("Not Found"));
        header_line(&mut buf, b"X-A", b"1");
        end_with_connection(&mut buf, false);
        assert_eq!(
            &buf[..],
            b"HTTP/1.1 404 Not Found\r\nX-A: 1\r\nConnection: close\r\n\r\n"
        );
    }
}
