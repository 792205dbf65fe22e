//! A plain request head read without Pingora's session: a hit, a miss, a proxied tile or a
//! reply of the gateway's own is answered on the connection itself, and Pingora's session
//! (which reads the head again) is made only for what needs one. Building the session's
//! request head costs about a quarter of a hit's instructions; this reading costs about half
//! of that.
//!
//! Only heads whose reading leaves no room for judgement are read here: GET or HEAD, HTTP/1.0
//! or 1.1, an origin-form target without a fragment, at most one `Host` without userinfo, at
//! most one `Connection` naming only `close` or `keep-alive`, nothing that announces a body or
//! a protocol switch, and nothing after the head. Pingora's session reads every such head to
//! the same request, so what the pipeline decided on this one holds for the session's. Any
//! other head is left to the session, as before.

use std::net::IpAddr;

use bytes::{Bytes, BytesMut};
use http::header::{CONTENT_LENGTH, EXPECT, TRANSFER_ENCODING, UPGRADE};
use http::{HeaderName, HeaderValue, Method, Uri, Version};
use pingora_core::protocols::http::v1::server::HttpSession;
use pingora_core::protocols::l4::socket::SocketAddr as PeerAddr;
use pingora_core::protocols::{SocketDigest, Stream};
use pingora_http::RequestHeader;

use super::SessionLimits;
use crate::exchange::{Facts, RequestTarget};

/// A request head as the fast path read it.
pub enum Reading {
    /// Read here; Pingora's session is made when one is needed.
    Own {
        stream: Stream,
        /// The method, version and headers; not the target (see [`Reading::target`]).
        req: Box<RequestHeader>,
        /// Whether the client wants its connection kept.
        keepalive: bool,
        /// The head as read: the request's target and header values share it.
        head: Bytes,
        /// Where the target is in `head`.
        target: std::ops::Range<usize>,
    },
    /// Read by Pingora's session (`head`: what it read, for a hand-over).
    Session { s: Box<HttpSession>, head: BytesMut },
}

/// A head the fast path does not serve: the connection and the head, for Pingora's proxy to
/// read (and answer) itself, and why Pingora's parser refuses the head, when it does (it is
/// malformed: the listener answers it).
pub struct Unread(
    pub Stream,
    pub BytesMut,
    pub Option<Box<pingora_core::Error>>,
);

impl Reading {
    /// Reads `head` here when it is plain, else through Pingora's session; `Err` when the session cannot serve it (it goes to Pingora's proxy
    /// unread).
    pub async fn of(
        stream: Stream,
        head: BytesMut,
        limits: &SessionLimits,
    ) -> Result<Reading, Unread> {
        let head = head.freeze();
        if let Some(plain) = read(&head) {
            return Ok(Reading::Own {
                stream,
                req: Box::new(plain.req),
                keepalive: plain.keepalive,
                head,
                target: plain.target,
            });
        }
        // Nothing shares the head now: it is the same buffer again.
        let head = BytesMut::from(head);
        if let Some(refused) = crate::wire::request_line_refusal(&head) {
            return Err(Unread(stream, head, Some(refused)));
        }
        match session(stream, &head, limits).await {
            Ok(mut s) => {
                if crate::wire::connection_refused(&s.req_header().headers) {
                    let refused = pingora_core::Error::explain(
                        pingora_core::ErrorType::InvalidHTTPHeader,
                        "protected header cannot be nominated by the Connection header",
                    );
                    return Err(Unread(s.into_inner(), head, Some(refused)));
                }
                crate::exchange::drop_connection_named(s.req_header_mut());
                Ok(Reading::Session { s, head })
            }
            Err((stream, refused)) => Err(Unread(stream, head, refused)),
        }
    }

    /// The request's method, version and headers. Its `uri` is the request's only when the
    /// session read it: a head read here keeps its target in [`Self::target`].
    pub fn req(&self) -> &RequestHeader {
        match self {
            Reading::Own { req, .. } => req,
            Reading::Session { s, .. } => s.req_header(),
        }
    }

    /// The request's target as the pipelines see it.
    pub fn target(&self) -> RequestTarget<'_> {
        match self {
            Reading::Own { head, target, .. } => {
                let target = &head[target.clone()];
                // SAFETY: `read` found these bytes as httparse's `&str` (the request's target),
                // and nothing writes a `Bytes`.
                RequestTarget::origin_form(unsafe { std::str::from_utf8_unchecked(target) })
            }
            Reading::Session { s, .. } => RequestTarget::of(s.req_header()),
        }
    }

    pub fn facts(&self) -> Facts<'_> {
        let ((client_ip, server_port), tls) = match self {
            Reading::Own { stream, .. } => (
                addresses(stream.get_socket_digest().as_deref()),
                stream.get_ssl_digest().is_some(),
            ),
            Reading::Session { s, .. } => (
                addresses(s.digest().socket_digest.as_deref()),
                s.digest().ssl_digest.is_some(),
            ),
        };
        Facts {
            head: self.req(),
            target: self.target(),
            client_ip,
            server_port,
            tls,
            // `read` leaves any head with a body's framing headers to the session.
            bodiless: matches!(self, Reading::Own { .. }),
        }
    }

    /// Whether the connection stays open after this request.
    pub fn keepalive(&self, limits: &SessionLimits) -> bool {
        match self {
            Reading::Own { keepalive, .. } => {
                *keepalive && limits.keepalive_secs.is_some() && !crate::listener::leaving()
            }
            Reading::Session { s, .. } => s.will_keepalive(),
        }
    }

    /// The client's connection, when this reading holds it (not Pingora's session).
    pub fn stream(&self) -> Option<&Stream> {
        match self {
            Reading::Own { stream, .. } => Some(stream),
            Reading::Session { .. } => None,
        }
    }

    /// Whether nothing of a next request was read with this one: the head's first blank line
    /// ends what was read. (The length of what the session read is not enough: a request line
    /// it escapes grows, and would match a head with as many bytes more behind it.)
    pub fn alone(&self) -> bool {
        match self {
            Reading::Own { .. } => true,
            Reading::Session { s, head } => {
                s.get_headers_raw_bytes().len() == head.len() && head_end(head) == Some(head.len())
            }
        }
    }

    /// The connection, whether the request is a HEAD, and its method and url for the access
    /// log (when one is written).
    pub fn into_stream(self) -> (Stream, bool, Option<(String, String)>) {
        let head_only = self.req().method == Method::HEAD;
        let logged = crate::access_log::enabled()
            .then(|| (self.req().method.to_string(), self.target().url.to_owned()));
        let stream = match self {
            Reading::Own { stream, .. } => stream,
            Reading::Session { s, .. } => s.into_inner(),
        };
        (stream, head_only, logged)
    }

    /// Pingora's session for the request and the head it read.
    pub async fn into_session(
        self,
        limits: &SessionLimits,
    ) -> Result<(Box<HttpSession>, BytesMut), Unread> {
        match self {
            Reading::Session { s, head } => Ok((s, head)),
            Reading::Own {
                stream, head, req, ..
            } => {
                drop(req);
                let head = BytesMut::from(head);
                match session(stream, &head, limits).await {
                    Ok(s) => Ok((s, head)),
                    Err((stream, refused)) => Err(Unread(stream, head, refused)),
                }
            }
        }
    }
}

/// Pingora's session for a request whose complete head is `head`, set up for the fast path;
/// `Err` when it reads no request the fast path serves: the connection, and why the session's
/// parser refused the head when it did.
async fn session(
    stream: Stream,
    head: &BytesMut,
    limits: &SessionLimits,
) -> Result<Box<HttpSession>, (Stream, Option<Box<pingora_core::Error>>)> {
    let mut s = Box::new(HttpSession::new(stream));
    s.set_pipelined_prefix(head.clone());
    match s.read_request().await {
        Ok(Some(_)) if bodiless(s.req_header()) => {}
        Err(e) if e.etype() == &pingora_core::ErrorType::InvalidHTTPHeader => {
            return Err((s.into_inner(), Some(e)))
        }
        _ => return Err((s.into_inner(), None)),
    }
    // Reading the request applied the client's wish (HTTP/1.0 closes unless it asks for
    // keep-alive, `Connection: close` closes); the server's only narrows it.
    if crate::wire::asks_close(&s.req_header().headers) {
        s.set_server_keepalive(None);
    } else if s.will_keepalive() {
        s.set_server_keepalive(limits.keepalive_secs);
    }
    s.set_read_timeout(Some(limits.read_timeout));
    // The send timeout is the connection's own, a pause (see `listener::conn`).
    Ok(s)
}

/// The client's address and the port it connected to.
fn addresses(socket: Option<&SocketDigest>) -> (Option<IpAddr>, Option<u16>) {
    let inet = |a: Option<&PeerAddr>| a.and_then(PeerAddr::as_inet).copied();
    (
        inet(socket.and_then(SocketDigest::peer_addr)).map(|a| a.ip()),
        inet(socket.and_then(SocketDigest::local_addr)).map(|a| a.port()),
    )
}

/// A request without a body, on HTTP/1, not asking to switch protocols: one the fast path can
/// serve whatever its pipeline decides.
fn bodiless(head: &RequestHeader) -> bool {
    matches!(head.method, Method::GET | Method::HEAD)
        && matches!(head.version, Version::HTTP_11 | Version::HTTP_10)
        && !head.headers.keys().any(|n| SESSION_ONLY.contains(n))
}

/// More headers than this and the session reads the head.
const MAX_HEADERS: usize = 48;

/// Headers whose presence leaves the head to the session.
const SESSION_ONLY: [HeaderName; 4] = [CONTENT_LENGTH, TRANSFER_ENCODING, UPGRADE, EXPECT];
/// [`SESSION_ONLY`]'s names as bytes, for [`judged`].
const SESSION_ONLY_NAMES: [&[u8]; 4] = [
    b"content-length",
    b"transfer-encoding",
    b"upgrade",
    b"expect",
];

/// Names browsers send with map tiles that `http` has no constant for: taken from [`COMMON`],
/// not made anew (a name `http` parses is a new allocation).
const COMMON_NAMES: [&str; 7] = [
    "sec-ch-ua",
    "sec-ch-ua-mobile",
    "sec-ch-ua-platform",
    "sec-fetch-site",
    "sec-fetch-mode",
    "sec-fetch-dest",
    "sec-fetch-user",
];

static COMMON: [HeaderName; 7] = [
    HeaderName::from_static(COMMON_NAMES[0]),
    HeaderName::from_static(COMMON_NAMES[1]),
    HeaderName::from_static(COMMON_NAMES[2]),
    HeaderName::from_static(COMMON_NAMES[3]),
    HeaderName::from_static(COMMON_NAMES[4]),
    HeaderName::from_static(COMMON_NAMES[5]),
    HeaderName::from_static(COMMON_NAMES[6]),
];

/// The name of [`COMMON`] `name` is (in any case), if it is one.
fn common(name: &[u8]) -> Option<&'static HeaderName> {
    if name.len() < 9 || !name[..4].eq_ignore_ascii_case(b"sec-") {
        return None;
    }
    let i = COMMON_NAMES
        .iter()
        .position(|n| name.eq_ignore_ascii_case(n.as_bytes()))?;
    COMMON.get(i)
}

/// What a header's name says of how its head is read here.
enum Judged {
    /// One of [`SESSION_ONLY`].
    SessionOnly,
    Host,
    Connection,
    Other,
}

/// Judges a header name as it came (any case). (A comparison of slices looks at their lengths
/// first: most names are none of these after one comparison each.)
fn judged(name: &[u8]) -> Judged {
    let is = |n: &&[u8]| name.eq_ignore_ascii_case(n);
    if is(&&b"host"[..]) {
        Judged::Host
    } else if is(&&b"connection"[..]) {
        Judged::Connection
    } else if SESSION_ONLY_NAMES.iter().any(is) {
        Judged::SessionOnly
    } else {
        Judged::Other
    }
}

/// A head read here.
pub struct Plain {
    /// The method, version and headers; its `uri` is left as it was made (`/`) when the target
    /// is plain (see [`plain_target`]), which saves building one for every request.
    pub req: RequestHeader,
    /// Where the target is in the head.
    pub target: std::ops::Range<usize>,
    /// Whether the client wants its connection kept after this request, as Pingora's session
    /// judges it: HTTP/1.1 unless `Connection: close`, HTTP/1.0 only with `keep-alive`.
    pub keepalive: bool,
}

/// The request `head` (exactly one complete head) carries, when it is plain enough to read here.
pub fn read(head: &Bytes) -> Option<Plain> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut headers);
    match parsed.parse(head) {
        Ok(httparse::Status::Complete(n)) if n == head.len() => {}
        _ => return None,
    }
    let mut parts = http::Request::new(()).into_parts().0;
    parts.method = match parsed.method? {
        "GET" => Method::GET,
        "HEAD" => Method::HEAD,
        _ => return None,
    };
    parts.version = match parsed.version? {
        1 => Version::HTTP_11,
        0 => Version::HTTP_10,
        _ => return None,
    };
    let target = parsed.path?.as_bytes();
    if target.first() != Some(&b'/') || memchr::memchr(b'#', target).is_some() {
        return None;
    }
    // A target of only the bytes `http` accepts anywhere needs no judging by it; any other
    // is judged (and kept) as the session would.
    if !plain_target(target) {
        parts.uri = Uri::from_maybe_shared(head.slice_ref(target)).ok()?;
    }
    let start = target.as_ptr() as usize - head.as_ptr() as usize;
    let target = start..start + target.len();
    parts.headers.reserve(parsed.headers.len());
    let (mut hosts, mut connection) = (0, None);
    for h in parsed.headers.iter() {
        let raw = h.name.as_bytes();
        match judged(raw) {
            Judged::SessionOnly => return None,
            Judged::Host => {
                hosts += 1;
                if hosts > 1 || h.value.contains(&b'@') {
                    return None;
                }
            }
            Judged::Connection => {
                if connection.is_some() {
                    return None;
                }
                connection = Some(connection_says(h.value)?);
            }
            Judged::Other => {}
        }
        let name = match common(raw) {
            Some(common) => common.clone(),
            None => HeaderName::from_bytes(raw).ok()?,
        };
        // SAFETY: httparse accepted the value: its bytes are tab, space, visible ASCII or
        // 0x80–0xFF, which are the bytes a `HeaderValue` may hold (a debug build checks).
        let value = unsafe { HeaderValue::from_maybe_shared_unchecked(head.slice_ref(h.value)) };
        parts.headers.append(name, value);
    }
    let keepalive = connection.unwrap_or(parts.version == Version::HTTP_11);
    Some(Plain {
        req: RequestHeader::from(parts),
        target,
        keepalive,
    })
}

/// Whether `target` (origin-form, without a fragment) is one `http`'s URI parser accepts
/// whatever position each byte is in: visible ASCII but `"`, `#`, `<`, `>` and `` ` ``, which it
/// refuses in the path or the query, and shorter than its limit. Judged a whole block of bytes
/// at a time (no early exit), where `http` looks each byte up in a table.
fn plain_target(target: &[u8]) -> bool {
    const BLOCK: usize = 32;
    fn plain(block: &[u8; BLOCK]) -> bool {
        block.iter().fold(true, |plain, &b| {
            plain
                & (b.wrapping_sub(0x21) < 0x5e)
                & (b != b'"')
                & (b != b'#')
                & (b != b'<')
                & (b != b'>')
                & (b != b'`')
        })
    }
    let mut blocks = target.chunks_exact(BLOCK);
    let whole = blocks
        .by_ref()
        .all(|b| <&[u8; BLOCK]>::try_from(b).is_ok_and(plain));
    // The rest in a block of its own, filled up with a byte that is plain.
    let rest = blocks.remainder();
    let mut last = [b'/'; BLOCK];
    last[..rest.len()].copy_from_slice(rest);
    target.len() < usize::from(u16::MAX) - 1 && whole && plain(&last)
}

/// Where the first blank line of `bytes` ends (a line end of `\r\n` or a bare `\n`).
fn head_end(bytes: &[u8]) -> Option<usize> {
    let crlf = memchr::memmem::find(bytes, b"\n\r\n").map(|i| i + 3);
    let lf = memchr::memmem::find(bytes, b"\n\n").map(|i| i + 2);
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// What a `Connection` value says of keep-alive: `Some(true)` for `keep-alive`, `Some(false)`
/// for `close`, `None` for anything else.
fn connection_says(value: &[u8]) -> Option<bool> {
    let token = value.trim_ascii();
    if token.eq_ignore_ascii_case(b"keep-alive") {
        Some(true)
    } else if token.eq_ignore_ascii_case(b"close") {
        Some(false)
    } else {
        None
    }
}

#[cfg(test)]
mod tests;
