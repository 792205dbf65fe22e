//! Request heads on a client connection: read within their bounds (the header and keep-alive
//! timeouts, the size), and refused with the gateway's own answers — a head too large or with
//! too many lines (431), one that stops short (408), one Pingora's parser refuses (400), a
//! tunnel (405) — where Pingora's proxy would answer a bare one naming itself, or none.

use std::future::Future;
use std::pin::Pin;

use bytes::BytesMut;
use pingora_core::protocols::http::v1::server::HttpSession;
use pingora_core::protocols::Stream;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::{Instant, Sleep};

use super::conn::{fresh, Fresh};
use super::io::by_deadline;
use super::ClientLimits;
use crate::metrics::ConnClose;

/// How much of a head is read at a time; most heads fit in one read.
const HEAD_CHUNK: usize = 4096;

/// Why no request head came.
pub(super) enum Refused {
    /// Close without a word: the client closed, the connection broke, or it sent nothing.
    Close(ConnClose),
    /// Answer this (a fixed response) and close.
    Reply(ConnClose, &'static [u8]),
}

const TIMEOUT_408: &[u8] = b"HTTP/1.1 408 Request Timeout\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 15\r\nConnection: close\r\n\r\nRequest Timeout";
pub(super) const BAD_REQUEST_400: &[u8] = b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 11\r\nConnection: close\r\n\r\nBad Request";
pub(super) const PLAIN_HTTP_400: &[u8] = b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 46\r\nConnection: close\r\n\r\nA plain HTTP request was sent to an HTTPS port";
pub(super) const NOT_ALLOWED_405: &[u8] = b"HTTP/1.1 405 Method Not Allowed\r\nAllow: GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 18\r\nConnection: close\r\n\r\nMethod Not Allowed";
pub(super) const TOO_LARGE_431: &[u8] = b"HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 31\r\nConnection: close\r\n\r\nRequest Header Fields Too Large";

/// `response`, a fixed one, as the answer to the request whose bytes begin `head`: without its
/// body to a `HEAD` (RFC 9110 §9.3.2).
pub(super) fn answer_to(head: &[u8], response: &'static [u8]) -> &'static [u8] {
    match memchr::memmem::find(response, b"\r\n\r\n") {
        Some(end) if head.starts_with(b"HEAD ") => &response[..end + 4],
        _ => response,
    }
}

/// Reads one request head. Waits for its first byte until `wait_until` (`timer`, the
/// connection's, is moved to it when it would go off later), holding no buffer while it waits
/// where the transport can tell without reading.
/// From the first byte (for a connection's first request: from the connect) the whole head
/// must arrive within the header timeout; a head that stops short gets a 408, a connection that
/// never began one is closed. A later request that has not begun when `stopping` ends is not
/// waited for; one whose head takes more than one read is counted in `partial` from then.
/// `carried`: what of this head came with the request before, if anything (the head has begun:
/// it must be whole within the header timeout from now).
#[allow(clippy::too_many_arguments)]
pub(super) async fn read_head(
    stream: &mut Stream,
    carried: BytesMut,
    wait_until: Instant,
    mut timer: Pin<&mut Sleep>,
    first: bool,
    partial: &mut Option<Fresh>,
    mut stopping: Pin<&mut impl Future<Output = ConnClose>>,
    limits: &ClientLimits,
) -> Result<BytesMut, Refused> {
    let silent = if first {
        ConnClose::HeaderTimeout
    } else {
        ConnClose::KeepaliveTimeout
    };
    // A head that came with the request before has begun: it must be whole within the
    // header timeout from now.
    let begun = !carried.is_empty();
    if begun && head_complete(&carried, 0) {
        return Ok(carried);
    }
    // What came with the request before is looked at as a read's bytes are (below).
    if begun && never_a_head(&carried, 0) {
        let answer = answer_to(&carried, BAD_REQUEST_400);
        return Err(Refused::Reply(ConnClose::Malformed, answer));
    }
    let mut probe = [0u8; 1];
    if timer.deadline() > wait_until {
        // The wait ends sooner than the timer would go off (the first wait after the header
        // timeout, when keep-alive is shorter).
        timer.as_mut().reset(wait_until);
    }
    let mut peeked = begun
        || loop {
            tokio::select! {
                biased;
                peeked = crate::listener::io::request_begun(stream, &mut probe) => match peeked {
                    Ok(peeked) => break peeked,
                    Err(_) => return Err(Refused::Close(ConnClose::Done)),
                },
                () = timer.as_mut() => {
                    if Instant::now() >= wait_until {
                        return Err(Refused::Close(silent));
                    }
                    timer.as_mut().reset(wait_until);
                }
                why = stopping.as_mut(), if !first => return Err(Refused::Close(why)),
            }
        };
    // A later request's head is timed from its beginning: taken when a read first has to wait
    // (most heads come whole in the first read, which needs no clock).
    let mut deadline = if begun {
        Some(Instant::now() + limits.header_timeout)
    } else if !first && peeked {
        None
    } else {
        Some(wait_until)
    };
    let mut buf = if begun {
        carried
    } else {
        BytesMut::with_capacity(HEAD_CHUNK)
    };
    loop {
        if buf.capacity() - buf.len() < 512 {
            buf.reserve(HEAD_CHUNK);
        }
        let before = buf.len();
        let read = by_deadline(stream.read_buf(&mut buf), || {
            *deadline.get_or_insert_with(|| Instant::now() + limits.header_timeout)
        });
        let read = if before == 0 && !first && !peeked {
            // Still waiting for the request to begin.
            tokio::select! {
                biased;
                read = read => read,
                why = stopping.as_mut() => return Err(Refused::Close(why)),
            }
        } else {
            read.await
        };
        match read {
            None if before == 0 => return Err(Refused::Close(silent)),
            None => {
                let answer = answer_to(&buf, TIMEOUT_408);
                return Err(Refused::Reply(ConnClose::HeaderTimeout, answer));
            }
            Some(Err(e)) => {
                log::debug!("client connection: read error before a request head: {e}");
                return Err(Refused::Close(ConnClose::Done));
            }
            Some(Ok(0)) => return Err(Refused::Close(ConnClose::Done)),
            Some(Ok(_)) => {}
        }
        if before == 0 {
            skip_blank_lines(&mut buf);
            if buf.is_empty() {
                // Still waiting for the request to begin, as before the empty line.
                if !first {
                    peeked = false;
                    deadline = Some(wait_until);
                }
                continue;
            }
        }
        if before == 0 && !first && !peeked {
            // The transport could not tell when the request began: it begins now.
            deadline = Some(Instant::now() + limits.header_timeout);
        }
        if head_complete(&buf, before) {
            // A head past the limit that came whole in one read is refused as one that came
            // in pieces is (it went on as a request Pingora's parser refused, and was
            // counted as one answered).
            if buf.len() > limits.max_head && head_end(&buf) > limits.max_head {
                let answer = answer_to(&buf, TOO_LARGE_431);
                return Err(Refused::Reply(ConnClose::HeadTooLarge, answer));
            }
            return Ok(buf);
        }
        if never_a_head(&buf, before) {
            let answer = answer_to(&buf, BAD_REQUEST_400);
            return Err(Refused::Reply(ConnClose::Malformed, answer));
        }
        if !first && partial.is_none() {
            *partial = Some(fresh());
        }
        if buf.len() > limits.max_head {
            let answer = answer_to(&buf, TOO_LARGE_431);
            return Err(Refused::Reply(ConnClose::HeadTooLarge, answer));
        }
    }
}

/// Writes `response`, a refusal, and closes the connection: after [`linger`]ing, unless the
/// client stopped short (a 408: it is sending nothing to linger for). Best effort: the client
/// may be gone already. Returns `why`, how the connection is counted.
pub(super) async fn refuse(mut stream: Stream, why: ConnClose, response: &[u8]) -> ConnClose {
    if stream.write_all(response).await.is_ok() {
        let _ = stream.flush().await;
    }
    let _ = stream.shutdown().await;
    if why != ConnClose::HeaderTimeout {
        linger(&mut stream).await;
    }
    why
}

/// The longest a refused connection is read from after its answer.
const LINGER: std::time::Duration = std::time::Duration::from_secs(5);
/// A refused connection is closed once nothing came from it for this long.
const LINGER_IDLE: std::time::Duration = std::time::Duration::from_secs(1);

/// Reads (and discards) what the client still sends after a refusal, until it is done (it
/// closes its side), [`LINGER_IDLE`] passes without a byte, or [`LINGER`] in all: closed with
/// bytes unread, the connection would be reset under a client still sending (the rest of a
/// head too large, the body of a refused request), whose writes then fail, and many clients
/// give up without reading the answer (nginx's lingering close).
pub(super) async fn linger<S: tokio::io::AsyncRead + Unpin + ?Sized>(stream: &mut S) {
    // On the heap: the connection's future does not carry it.
    let mut sink = vec![0u8; 16 * 1024];
    let discard = async {
        while let Ok(Ok(n)) = tokio::time::timeout(LINGER_IDLE, stream.read(&mut sink)).await {
            if n == 0 {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(LINGER, discard).await;
}

/// Answers a request head Pingora's parser refused (`e`) with a 400 and closes. The log line
/// says why, never with a part of the head (an error's context made for the head holds it, the
/// target or the whole head: it may hold a credential; a fixed one does not).
pub(super) async fn refuse_malformed(
    stream: Stream,
    e: &pingora_core::Error,
    head_request: bool,
) -> ConnClose {
    let why = match (&e.cause, &e.context) {
        (Some(cause), _) => cause.to_string(),
        (None, Some(context)) if !context.is_owned() => context.to_string(),
        _ => e.etype().as_str().to_string(),
    };
    log::debug!("client connection: a malformed request head ({why}): answered 400");
    let answer = match head_request {
        true => answer_to(b"HEAD ", BAD_REQUEST_400),
        false => BAD_REQUEST_400,
    };
    refuse(stream, ConnClose::Malformed, answer).await
}

/// Whether the fast path reads `head` itself (a `GET` or `HEAD`; it refuses a malformed one
/// too, as [`malformed`] finds it).
pub(super) fn fast_reads(head: &[u8]) -> bool {
    head.starts_with(b"GET ") || head.starts_with(b"HEAD ")
}

/// Why Pingora's parser refuses the complete request head at the start of `head` (its proxy
/// would answer a bare 400 with its own name and count nothing), found by reading a copy as
/// its proxy would; `None` when it reads it. Every rule of its is applied as it applies them,
/// its repair of a request line with unescaped characters in the target included.
pub(super) async fn malformed(head: &[u8]) -> Option<Box<pingora_core::Error>> {
    if let Some(refused) = crate::wire::request_line_refusal(head) {
        return Some(refused);
    }
    // Nothing beyond the head is read: the copy is read from an empty stream.
    let mut copy = HttpSession::new(Box::new(std::io::Cursor::new(Vec::<u8>::new())));
    copy.set_pipelined_prefix(BytesMut::from(head));
    match copy.read_request().await {
        Err(e) if e.etype() == &pingora_core::ErrorType::InvalidHTTPHeader => Some(e),
        _ => None,
    }
}

/// The most header lines Pingora's parser takes: a head with more is refused there with a
/// bare 400, where a 431 says what is wrong (RFC 6585 §5), as for a head too long.
pub const MAX_HEADER_LINES: usize = 256;

/// Whether the first request head in `buf` (complete) has more than [`MAX_HEADER_LINES`]
/// header lines. A head shorter than that many of the shortest lines (`a:` and a bare `\n`)
/// cannot, and is not looked at: a tile's head never is.
pub(super) fn too_many_headers(buf: &[u8]) -> bool {
    if buf.len() <= MAX_HEADER_LINES * 3 {
        return false;
    }
    let lead = crate::wire::blank_lines(buf);
    let head = &buf[lead..];
    let mut lines = 0;
    for at in memchr::memchr_iter(b'\n', head) {
        // The request line, then the header lines.
        lines += 1;
        if lines > MAX_HEADER_LINES + 1 {
            return true;
        }
        // The empty line that ends the head follows.
        if head.get(at + 1) == Some(&b'\n') || head.get(at + 1..at + 3) == Some(b"\r\n") {
            break;
        }
    }
    false
}

/// Drops the empty lines a client may send before a request line (after the request before
/// it, most often): RFC 9112 §2.2 says to ignore them, not to take them for a head begun.
pub(super) fn skip_blank_lines(buf: &mut BytesMut) {
    let blank = crate::wire::blank_lines(buf);
    if blank > 0 {
        let _ = buf.split_to(blank);
    }
}

/// Where the first request in `buf` ends, when more bytes follow it that can only be the next
/// request's: its head parses whole and announces no protocol switch (`Upgrade`), no tunnel
/// (`CONNECT`) and no body or one of a single `Content-Length` (no `Transfer-Encoding`), all of
/// which `buf` holds. Otherwise `None`, and the bytes stay together (the rest of a body, or
/// what Pingora's session makes of them).
pub(super) fn next_request_at(buf: &[u8]) -> Option<usize> {
    let end = head_end(buf);
    if end >= buf.len() {
        return None;
    }
    let next = end.checked_add(announced_body(&buf[..end])?)?;
    (next < buf.len()).then_some(next)
}

/// How many bytes of its body a request whose first bytes are `buf` (its head, and what came
/// of the body with it) still has to send, when its head says so: `0` for one without a body,
/// the rest of a single `Content-Length`. `None` for a head that is not whole, or one whose end
/// is not told by its length (see [`next_request_at`]).
pub(super) fn body_still_to_come(buf: &[u8]) -> Option<usize> {
    // (A head not whole yet does not parse whole.)
    let end = head_end(buf);
    let body = announced_body(&buf[..end])?;
    Some(body.saturating_sub(buf.len() - end))
}

/// The length of the body the request head `head` (all of it, and nothing more) announces: `0`
/// without one. `None` for a head that does not parse whole, a tunnel, a protocol switch, a
/// `Transfer-Encoding`, or a `Content-Length` that is not one line of digits.
fn announced_body(head: &[u8]) -> Option<usize> {
    // (As many lines as a head may have: a longer one is refused when it is read.)
    let mut headers =
        [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADER_LINES];
    let mut req = httparse::Request::new(&mut []);
    match req.parse_with_uninit_headers(head, &mut headers) {
        Ok(httparse::Status::Complete(n)) if n == head.len() => {
            (req.method != Some("CONNECT")).then_some(())?;
            length_of(req.headers)
        }
        Ok(_) => None,
        // A request line Pingora's session escapes (a space or a quote in the target) and then
        // reads: its header lines, read alone, frame its body there.
        Err(_) => {
            let line_end = memchr::memchr(b'\n', head)? + 1;
            if head.starts_with(b"CONNECT ") {
                return None;
            }
            let mut headers = vec![httparse::EMPTY_HEADER; MAX_HEADER_LINES];
            match httparse::parse_headers(&head[line_end..], &mut headers) {
                Ok(httparse::Status::Complete((n, lines))) if line_end + n == head.len() => {
                    length_of(lines)
                }
                _ => None,
            }
        }
    }
}

/// The body's length header lines announce (see [`announced_body`]).
fn length_of(lines: &[httparse::Header<'_>]) -> Option<usize> {
    let mut length = None;
    for h in lines {
        if h.name.eq_ignore_ascii_case("transfer-encoding")
            || h.name.eq_ignore_ascii_case("upgrade")
        {
            return None;
        }
        if h.name.eq_ignore_ascii_case("content-length") {
            let digits = h.value.trim_ascii();
            if length.is_some() || digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
                return None;
            }
            length = Some(std::str::from_utf8(digits).ok()?.parse::<usize>().ok()?);
        }
    }
    Some(length.unwrap_or(0))
}

/// Whether `buf` holds the end of a request head: an empty line after something else (bare
/// `\n` line ends count, as they do for the parser; blank lines before a request are skipped,
/// as RFC 9112 allows). `from` is where the bytes of the last read start.
/// Whether the bytes a head began with (blank lines skipped) can never make a head Pingora's
/// parser reads, whatever follows: a first byte that begins no method (a TLS handshake on the
/// plain port, binary), a bare CR (RFC 9112 §2.2), or a first line that ends without an HTTP
/// version (HTTP/0.9, text that is no HTTP). Such a client, which may wait for an answer
/// without ever ending a head, is answered `400` at once rather than `408` at the header
/// timeout. (Looked at only when a read did not complete the head; `from`: where the bytes of
/// the last read start — what came before was looked at already, so a head sent a byte at a
/// time costs each byte once.)
fn never_a_head(buf: &[u8], from: usize) -> bool {
    let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if from == 0 && buf.first().is_some_and(|b| !token(*b)) {
        return true;
    }
    // (A CR that ended the last read is followed by the first byte of this one.)
    let start = from.saturating_sub(1);
    let new = &buf[start..];
    if memchr::memchr_iter(b'\r', new).any(|cr| new.get(cr + 1).is_some_and(|b| *b != b'\n')) {
        return true;
    }
    // The first line, once: when this read ended it (not yet ended, or ended before).
    if memchr::memchr(b'\n', &buf[from..]).is_none()
        || from > 0 && memchr::memchr(b'\n', &buf[..from]).is_some()
    {
        return false;
    }
    let Some(line) = crate::wire::request_line(buf) else {
        return false;
    };
    // ` HTTP/<digit>.<digit>` at its end.
    let version = line.len().checked_sub(9).map(|at| &line[at..]);
    !version.is_some_and(|v| {
        v.starts_with(b" HTTP/") && v[6].is_ascii_digit() && v[7] == b'.' && v[8].is_ascii_digit()
    })
}

/// Where the first head in `buf` ends (after its first empty line, blank lines before it
/// skipped); `buf.len()` when none ends in it.
fn head_end(buf: &[u8]) -> usize {
    let lead = buf
        .iter()
        .position(|b| *b != b'\r' && *b != b'\n')
        .unwrap_or(0);
    let rest = &buf[lead..];
    // Line by line, up to the first empty one (a search for each kind of ending went through
    // the whole of a pipelined batch, for each request in it, when one kind was not there).
    memchr::memchr_iter(b'\n', rest)
        .find_map(|i| match rest.get(i + 1..) {
            Some([b'\n', ..]) => Some(i + 2),
            Some([b'\r', b'\n', ..]) => Some(i + 3),
            _ => None,
        })
        .map_or(buf.len(), |end| lead + end)
}

fn head_complete(buf: &[u8], from: usize) -> bool {
    let Some(lead) = buf.iter().position(|b| *b != b'\r' && *b != b'\n') else {
        return false;
    };
    // Most reads end with the head.
    if buf.ends_with(b"\r\n\r\n") || buf.ends_with(b"\n\n") {
        return true;
    }
    // An end within earlier reads would have been seen then; look a little back for an end
    // that straddles two reads.
    let tail = &buf[from.saturating_sub(3).max(lead)..];
    tail.windows(2).enumerate().any(|(i, w)| match w {
        b"\n\n" => true,
        b"\n\r" => tail.get(i + 2) == Some(&b'\n'),
        _ => false,
    })
}

#[cfg(test)]
mod tests;
