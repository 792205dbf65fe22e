//! A request served by Pingora's proxy reads no further than its own body: what the client sends
//! after it (its next request, pipelined while this one waits for its upstream) stays in the
//! socket for the listener, which reads the next head itself once the session is done.
//!
//! Pingora's HTTP/1 session looks at the client while it waits for the upstream: a read at the
//! body's end that brings bytes is "data after the end of the body", and the request is failed
//! (`400`). Held, that read sees only what it is for — the client's close (end of stream) or a
//! failure — and pends when the client has sent more. Over TLS the session reads records, not
//! the request's bytes, and nothing is held.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{ready, Context, Poll};

use pingora_core::protocols::Stream;
use tokio::io::{AsyncRead, ReadBuf};
use tokio::net::TcpStream;

use super::ClientIo;

/// How much a session may still read of the connection: the rest of its request's body, or
/// anything ([`FREE`]).
#[derive(Debug)]
pub(super) struct Hold(AtomicUsize);

/// No hold: reads go to the socket as they are asked.
const FREE: usize = usize::MAX;

impl Hold {
    pub(super) fn free() -> Hold {
        Hold(AtomicUsize::new(FREE))
    }

    /// The bytes the session may still read, when it is held.
    #[inline]
    pub(super) fn left(&mut self) -> Option<usize> {
        let left = *self.0.get_mut();
        (left != FREE).then_some(left)
    }
}

/// Holds the reads of the session about to serve the request `head` (the bytes it is given: the
/// head, and what came of the body with it) to the rest of the request's body, when its framing
/// says how long that is. A connection of another kind, or a request whose body is chunked,
/// upgraded or framed in a way the listener does not read, is not held.
pub fn hold_after_request(stream: &Stream, head: &[u8]) {
    let Some(io) = stream.as_any().downcast_ref::<ClientIo>() else {
        return;
    };
    if let Some(left) = crate::listener::head::body_still_to_come(head) {
        io.hold.0.store(left, Ordering::Relaxed);
    }
}

/// Says whether the client's next request is read already (HTTP/1.1 pipelining: it came with
/// or after the request about to be served, before its answer): its close that follows is then
/// no sign it left — it waits for both answers — neither to Pingora's session ([`Hold`]) nor
/// to the fast path ([`super::client_gone`]).
pub fn next_request_read(stream: &Stream, read: bool) {
    if let Some(io) = stream.as_any().downcast_ref::<ClientIo>() {
        io.next_read.store(read, Ordering::Relaxed);
    }
}

/// Lets the connection be read as before: its session is done.
pub fn release(stream: &Stream) {
    if let Some(io) = stream.as_any().downcast_ref::<ClientIo>() {
        io.hold.0.store(FREE, Ordering::Relaxed);
    }
}

/// A read of a held connection that may still read `left` bytes (see [`Hold`]);
/// `next_read`: the client's next request is read already ([`next_request_read`]).
pub(super) fn poll_read_held(
    tcp: &mut TcpStream,
    hold: &mut Hold,
    left: usize,
    next_read: bool,
    cx: &mut Context<'_>,
    buf: &mut ReadBuf<'_>,
) -> Poll<io::Result<()>> {
    if left == 0 {
        // A client whose next request came is still there, whatever follows it: the read
        // pends, and wakes no one.
        if next_read {
            return Poll::Pending;
        }
        return poll_body_end(tcp, cx);
    }
    let mut part = buf.take(left);
    ready!(Pin::new(tcp).poll_read(cx, &mut part))?;
    let n = part.filled().len();
    // SAFETY: `part` is `buf`'s unfilled part; the read initialised its first `n` bytes.
    unsafe { buf.assume_init(n) };
    buf.advance(n);
    *hold.0.get_mut() = left - n;
    Poll::Ready(Ok(()))
}

/// A read at the body's end (Pingora's session's, or the fast path's watch of a client waiting
/// for its answer: [`super::client_gone`]): the client's close or a failure is the read's, the
/// blank lines a client may send between requests are taken (RFC 9112 §2.2), anything else it
/// sent is left where it is, for the listener: the client is still there, and the read pends
/// (waking no one for bytes that are no news).
pub(super) fn poll_body_end(tcp: &TcpStream, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
    loop {
        let mut seen = [std::mem::MaybeUninit::uninit(); 64];
        let mut seen = ReadBuf::uninit(&mut seen);
        ready!(tcp.poll_peek(cx, &mut seen))?;
        let seen = seen.filled();
        let blank = crate::wire::blank_lines(seen);
        if seen.is_empty() {
            return Poll::Ready(Ok(()));
        }
        if blank == 0 {
            return Poll::Pending;
        }
        // The blank lines go; what follows them is looked at again.
        let mut taken = [0u8; 64];
        match tcp.try_read(&mut taken[..blank]) {
            // (Looked at again: the peek waits for the socket, its waker set.)
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Poll::Ready(Err(e)),
            Ok(_) => {}
        }
    }
}
