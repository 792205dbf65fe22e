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

/// Lets the connection be read as before: its session is done.
pub fn release(stream: &Stream) {
    if let Some(io) = stream.as_any().downcast_ref::<ClientIo>() {
        io.hold.0.store(FREE, Ordering::Relaxed);
    }
}

/// A read of a held connection that may still read `left` bytes (see [`Hold`]).
pub(super) fn poll_read_held(
    tcp: &mut TcpStream,
    hold: &mut Hold,
    left: usize,
    cx: &mut Context<'_>,
    buf: &mut ReadBuf<'_>,
) -> Poll<io::Result<()>> {
    if left == 0 {
        // At the body's end: the client's close or a failure is the read's, anything it sent
        // is left where it is. (A client that has sent more is still there: the read pends,
        // and wakes no one for bytes that are no news.)
        let mut probe = [std::mem::MaybeUninit::uninit(); 1];
        let mut probe = ReadBuf::uninit(&mut probe);
        return match ready!(tcp.poll_peek(cx, &mut probe)) {
            Ok(0) => Poll::Ready(Ok(())),
            Ok(_) => Poll::Pending,
            Err(e) => Poll::Ready(Err(e)),
        };
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
