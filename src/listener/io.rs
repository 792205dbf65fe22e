//! A client connection as Pingora's HTTP sessions see it: the TCP socket, with the gateway's own
//! write buffering.
//!
//! Pingora's sessions write a response head and then its body; sending both with one `write`
//! wakes the client once per response (+10% tile throughput over a segment each). The buffer
//! exists only while a response is being written: it is allocated on the first write and
//! released when the response is flushed, so a keep-alive connection waiting for its next
//! request holds no buffer at all. A large write (a tile's body) is not copied into the
//! buffer: it goes out with the buffered head in one `writev`. Reads go straight to the
//! socket: the sessions read into buffers of their own (a session of Pingora's proxy no
//! further than its request's body: [`hold`]).

use std::future::Future;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use pingora_core::protocols::raw_connect::ProxyDigest;
use pingora_core::protocols::Stream;
use pingora_core::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl,
    TimingDigest, UniqueID, UniqueIDType,
};
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;

mod deadline;
mod hold;
mod watch;

pub use deadline::{by_deadline, ByDeadline};
pub use hold::{hold_after_request, next_request_read, release};
pub use watch::{client_gone, client_gone_now, request_begun};

/// Bytes buffered before a write reaches the socket: holds a whole tile and its head.
/// Chunked and close-delimited bodies are flushed by Pingora as they come; a body of known
/// length is flushed when complete, so a large body reaches the client in steps of this size.
pub const WRITE_BUFFER: usize = 32 * 1024;

/// A write at least this large goes to the socket with what is buffered before it (one
/// `writev`) instead of being copied into the buffer.
const DIRECT_WRITE: usize = 8 * 1024;

#[derive(Debug)]
pub struct ClientIo {
    tcp: TcpStream,
    /// Bytes waiting to be written; `written` of them already went out.
    out: Vec<u8>,
    written: usize,
    digest: Arc<SocketDigest>,
    established: SystemTime,
    /// A write fails when the client takes nothing for this long ...
    send_timeout: Duration,
    /// ... counted from the write that found the socket full.
    stalled: Option<Pin<Box<tokio::time::Sleep>>>,
    /// How the response being written ends ([`CLOSE_DELIMITED`], [`CUT`], [`SHUT_DOWN`]):
    /// one byte, set through a shared reference ([`ends_with_close`], [`cut_short`]).
    ending: std::sync::atomic::AtomicU8,
    /// How far Pingora's session serving a request may read ([`hold`]).
    hold: hold::Hold,
    /// The client sent its next request before this one's answer, and the listener read
    /// (part of) it: a close that follows it is not the client leaving this one ([`hold`]).
    next_read: std::sync::atomic::AtomicBool,
}

/// The response ends with the connection (an HTTP/1.0 client's, without length or chunks).
const CLOSE_DELIMITED: u8 = 1;
/// A close-delimited response was cut short: no orderly shutdown, a reset.
const CUT: u8 = 2;
/// The connection was shut down (its response finished), not dropped.
const SHUT_DOWN: u8 = 4;
/// A request's body was left unread: the connection lingers when it is let go.
const BODY_UNREAD: u8 = 8;

/// Connections lingering after they were let go, at most [`MAX_LINGERING`]: they no longer
/// count against `--max-connections` (each holds a descriptor for up to 5 s), so past that
/// one closes at once, as before.
static LINGERING: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
const MAX_LINGERING: usize = 256;

/// How long a write waits for a client that takes nothing, unless set
/// ([`ClientIo::with_send_timeout`]).
const SEND_TIMEOUT: Duration = Duration::from_secs(60);

impl ClientIo {
    pub fn new(tcp: TcpStream) -> ClientIo {
        let digest = Arc::new(SocketDigest::from_raw_fd(tcp.as_raw_fd()));
        ClientIo {
            tcp,
            out: Vec::new(),
            written: 0,
            digest,
            established: SystemTime::now(),
            send_timeout: SEND_TIMEOUT,
            stalled: None,
            ending: std::sync::atomic::AtomicU8::new(0),
            hold: hold::Hold::free(),
            next_read: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// The same, with writes that fail when the client takes nothing for `limit`: every write
    /// on the connection, also those no session bounds (a head's flush, the buffer drained
    /// when the connection is shut down), so a client that stops reading never holds its
    /// connection for longer.
    pub fn with_send_timeout(mut self, limit: Duration) -> ClientIo {
        self.send_timeout = limit;
        self
    }

    /// Runs a write on the socket: one that waits counts towards the send timeout from the
    /// first that did, one that goes through starts the count again.
    fn poll_socket<R>(
        &mut self,
        cx: &mut Context<'_>,
        write: impl FnOnce(Pin<&mut TcpStream>, &mut Context<'_>) -> Poll<io::Result<R>>,
    ) -> Poll<io::Result<R>> {
        match write(Pin::new(&mut self.tcp), cx) {
            Poll::Pending => {
                let limit = self.send_timeout;
                let stalled = self
                    .stalled
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
                ready!(stalled.as_mut().poll(cx));
                self.stalled = None;
                Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the client took nothing for the send timeout",
                )))
            }
            done => {
                self.stalled = None;
                done
            }
        }
    }

    /// Writes out what is buffered.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.out.len() {
            let (out, written) = (std::mem::take(&mut self.out), self.written);
            let n = self.poll_socket(cx, |tcp, cx| tcp.poll_write(cx, &out[written..]));
            self.out = out;
            let n = ready!(n)?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        // Nothing waits: let the memory go, an idle connection keeps no buffer.
        self.out = Vec::new();
        self.written = 0;
        Poll::Ready(Ok(()))
    }

    /// Writes what is buffered and then `data` straight from where it is, in one system call
    /// when the socket takes it all: a large body is not copied into the buffer first.
    fn poll_write_through(&mut self, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        loop {
            let pending = self.out.len() - self.written;
            if pending == 0 {
                self.out = Vec::new();
                self.written = 0;
                return self.poll_socket(cx, |tcp, cx| tcp.poll_write(cx, data));
            }
            let (out, written) = (std::mem::take(&mut self.out), self.written);
            let bufs = [io::IoSlice::new(&out[written..]), io::IoSlice::new(data)];
            let n = self.poll_socket(cx, |tcp, cx| tcp.poll_write_vectored(cx, &bufs));
            self.out = out;
            let n = ready!(n)?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            if n < pending {
                self.written += n;
                continue;
            }
            self.out = Vec::new();
            self.written = 0;
            if n > pending {
                return Poll::Ready(Ok(n - pending));
            }
        }
    }
}

impl ClientIo {
    /// Ready when the socket has something to read (or was closed), by the socket's one read
    /// waker (the connection's task is its only reader): tokio's `readable()` future joins the
    /// socket's list of waiters under a lock and takes the lock again when it is dropped.
    fn read_ready(&self) -> impl std::future::Future<Output = io::Result<()>> + '_ {
        std::future::poll_fn(|cx| self.tcp.poll_read_ready(cx))
    }

    /// Writes `head`, then `len` bytes of `file` from `offset` by `sendfile` (the kernel takes
    /// the file's pages, nothing is copied), when nothing is buffered before them.
    async fn send_with_file(
        &self,
        head: &[u8],
        file: RawFd,
        offset: u64,
        len: usize,
    ) -> Result<(), Partial> {
        let socket = self.tcp.as_raw_fd();
        let mut done = 0;
        while done < head.len() {
            // MSG_MORE: the head waits for the body's first segment.
            let rest = &head[done..];
            let flags = libc::MSG_MORE | libc::MSG_NOSIGNAL;
            let sent = self
                .writable(|| {
                    let n = unsafe { libc::send(socket, rest.as_ptr().cast(), rest.len(), flags) };
                    usize::try_from(n).map_err(|_| io::Error::last_os_error())
                })
                .await
                .map_err(|error| Partial {
                    written: done,
                    error,
                })?;
            done += sent;
        }
        let mut at = offset as libc::off_t;
        let end = at + len as libc::off_t;
        let partial = |at: libc::off_t, error| Partial {
            written: done + (at - offset as libc::off_t) as usize,
            error,
        };
        while at < end {
            let sent = self
                .writable(|| {
                    let n = unsafe { libc::sendfile(socket, file, &mut at, (end - at) as usize) };
                    usize::try_from(n).map_err(|_| io::Error::last_os_error())
                })
                .await
                .map_err(|e| partial(at, e))?;
            if sent == 0 {
                return Err(partial(at, io::ErrorKind::WriteZero.into()));
            }
        }
        Ok(())
    }

    /// Runs `write` once the socket takes it, as the connection's other writes do: a client
    /// that takes nothing for the send timeout fails it (a slow one that keeps taking does
    /// not, however long the whole response takes).
    async fn writable<R>(&self, write: impl FnMut() -> io::Result<R>) -> io::Result<R> {
        let limit = self.send_timeout;
        by_deadline(when_writable(&self.tcp, write), || {
            tokio::time::Instant::now() + limit
        })
        .await
        .unwrap_or_else(|| {
            Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client took nothing for the send timeout",
            ))
        })
    }
}

/// Runs `write` (a system call on `tcp`) once the socket takes it, waiting by the socket's one
/// write waker (the connection's task is its only writer): tokio's `async_io` waits on a
/// `Readiness` future, which locks the socket's list of waiters when it is dropped, even after
/// a write that did not wait.
async fn when_writable<R>(
    tcp: &TcpStream,
    mut write: impl FnMut() -> io::Result<R>,
) -> io::Result<R> {
    std::future::poll_fn(|cx| loop {
        ready!(tcp.poll_write_ready(cx))?;
        match tcp.try_io(Interest::WRITABLE, &mut write) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            done => return Poll::Ready(done),
        }
    })
    .await
}

/// The connection as one a file can be sent on by `sendfile`: a plain TCP connection of the
/// gateway's listener (not TLS) with nothing buffered.
fn file_sink(stream: &Stream) -> Option<&ClientIo> {
    let io = stream.as_any().downcast_ref::<ClientIo>()?;
    (io.written == io.out.len()).then_some(io)
}

/// The response being written on this connection ends with the connection (no length, no
/// chunks): dropped without its shutdown (the response cut short), the connection is reset —
/// a part of such a body, closed normally, would look whole to the client.
pub fn ends_with_close(stream: &Stream) {
    mark_ending(stream, CLOSE_DELIMITED);
}

/// The close-delimited response being written on this connection was cut short: the
/// connection is reset rather than shut down (its orderly end would say the body is whole).
pub fn cut_short(stream: &Stream) {
    mark_ending(stream, CUT);
}

/// The request just served on this connection left (part of) its body unread: an answer made
/// before reading it (a 401, a 404, a framing 400). When the connection is let go, what the
/// client still sends is read and discarded for a while before the close (nginx's lingering
/// close): closed with bytes unread, the connection is reset under the client, whose writes
/// fail before it reads the answer. (A body that stopped coming, answered 408, closes at once.)
pub fn body_unread(
    session: &mut pingora_core::protocols::http::ServerSession,
    e: Option<&pingora_core::Error>,
) {
    // A body that stopped coming (answered 408, by Pingora's timeout or the Admin API's
    // deadline) closes at once: the client is not sending.
    let timed_out = e.is_some_and(|e| e.etype() == &pingora_core::ErrorType::ReadTimedout)
        || session
            .response_written()
            .is_some_and(|r| r.status == http::StatusCode::REQUEST_TIMEOUT);
    // A body whose framing broke (a chunk size that is no number, a chunk extension or a
    // trailer past its limit: answered 400) is done for Pingora's reader, and the client may
    // still be sending it: it lingers too (closed at once, the client's writes failed before
    // it read the 400).
    let framing = e.is_some_and(|e| {
        e.esource() == &pingora_core::ErrorSource::Downstream
            && matches!(
                e.etype(),
                pingora_core::ErrorType::Custom(_) | pingora_core::ErrorType::InvalidHTTPHeader
            )
    });
    if timed_out || (session.is_body_done() && !framing) {
        return;
    }
    if let Some(stream) = session.stream() {
        mark_ending(stream, BODY_UNREAD);
    }
}

fn mark_ending(stream: &Stream, flag: u8) {
    let any = stream.as_any();
    // The connection itself, or (for a lingering close only: how a TLS session ends its
    // answers is its own) under TLS.
    let io = any.downcast_ref::<ClientIo>().or_else(|| {
        any.downcast_ref::<pingora_core::protocols::tls::SslStream<ClientIo>>()
            .filter(|_| flag == BODY_UNREAD)
            .map(|tls| tls.get_ref())
    });
    if let Some(io) = io {
        io.ending
            .fetch_or(flag, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Whether [`send_pair_from_file`] can write on this connection.
pub fn sends_files(stream: &Stream) -> bool {
    file_sink(stream).is_some()
}

/// Writes a head and then part of a file (by `sendfile`) on a client connection; `None` when
/// the connection cannot take it so ([`sends_files`]), and the caller writes the bytes itself.
pub async fn send_pair_from_file(
    stream: &Stream,
    head: &[u8],
    file: RawFd,
    offset: u64,
    len: usize,
) -> Option<Result<(), Partial>> {
    let io = file_sink(stream)?;
    Some(io.send_with_file(head, file, offset, len).await)
}

impl AsyncRead for ClientIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        match this.hold.left() {
            None => Pin::new(&mut this.tcp).poll_read(cx, buf),
            Some(left) => {
                let next_read = *this.next_read.get_mut();
                hold::poll_read_held(&mut this.tcp, &mut this.hold, left, next_read, cx, buf)
            }
        }
    }
}

impl AsyncWrite for ClientIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if data.len() >= DIRECT_WRITE {
            return this.poll_write_through(cx, data);
        }
        if this.out.len() + data.len() > WRITE_BUFFER {
            ready!(this.poll_drain(cx))?;
            if data.len() >= WRITE_BUFFER {
                return this.poll_socket(cx, |tcp, cx| tcp.poll_write(cx, data));
            }
        }
        if this.out.capacity() == 0 {
            this.out.reserve_exact(WRITE_BUFFER);
        }
        this.out.extend_from_slice(data);
        Poll::Ready(Ok(data.len()))
    }

    /// Several pieces at least as large as a direct write, with nothing buffered, go to the
    /// socket in one `writev` (a cache hit's head and body); anything else is written as the
    /// first piece alone.
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        if this.written == this.out.len() && total >= DIRECT_WRITE {
            return this.poll_socket(cx, |tcp, cx| tcp.poll_write_vectored(cx, bufs));
        }
        let first = bufs
            .iter()
            .find(|b| !b.is_empty())
            .map_or(&[][..], |b| &**b);
        Pin::new(this).poll_write(cx, first)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_drain(cx))?;
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if *self.ending.get_mut() & CUT != 0 {
            // No orderly end for a response cut short (see `cut_short`).
            return Poll::Ready(Ok(()));
        }
        ready!(self.poll_drain(cx))?;
        // (Only once all of it went: a drain that failed leaves the end a reset.)
        *self.ending.get_mut() |= SHUT_DOWN;
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

/// A connection dropped with bytes still buffered (a response cut short by its upstream:
/// Pingora lets the session go without a flush) gives them to the socket if it takes them
/// now: the client gets the head and what came of the body, then the close, rather than
/// nothing at all.
impl Drop for ClientIo {
    fn drop(&mut self) {
        // A body that ends with the connection would look whole, cut short.
        let ending = *self.ending.get_mut();
        if ending & (CLOSE_DELIMITED | CUT) != 0 {
            // Cut short (a finished one was shut down first; one cut never is): the
            // connection is reset, so the client sees the failure rather than a shorter body
            // ending normally.
            if ending & SHUT_DOWN == 0 {
                let _ = socket2::SockRef::from(&self.tcp).set_linger(Some(Duration::ZERO));
            }
            return;
        }
        while self.written < self.out.len() {
            match self.tcp.try_write(&self.out[self.written..]) {
                Ok(n) if n > 0 => self.written += n,
                _ => return,
            }
        }
        if ending & BODY_UNREAD != 0 {
            self.linger();
        }
    }
}

impl ClientIo {
    /// The first bytes the client sent, left to be read (waits for them).
    pub async fn peek(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.tcp.peek(buf).await
    }

    /// Lingers (see [`body_unread`]) on a duplicate of the socket, in a task of its own.
    fn linger(&self) {
        use std::sync::atomic::Ordering::Relaxed;
        let sock = socket2::SockRef::from(&self.tcp);
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if LINGERING.fetch_add(1, Relaxed) >= MAX_LINGERING {
            LINGERING.fetch_sub(1, Relaxed);
            return;
        }
        let Ok(dup) = sock.try_clone() else {
            LINGERING.fetch_sub(1, Relaxed);
            return;
        };
        runtime.spawn(async move {
            if let Ok(mut tcp) = TcpStream::from_std(dup.into()) {
                let _ = tokio::io::AsyncWriteExt::shutdown(&mut tcp).await;
                super::head::linger(&mut tcp).await;
            }
            LINGERING.fetch_sub(1, Relaxed);
        });
    }
}

#[async_trait]
impl Shutdown for ClientIo {
    async fn shutdown(&mut self) {
        if let Err(e) = tokio::io::AsyncWriteExt::shutdown(self).await {
            log::debug!("client connection shutdown: {e}");
        }
    }
}

impl UniqueID for ClientIo {
    fn id(&self) -> UniqueIDType {
        self.tcp.as_raw_fd()
    }
}

impl Ssl for ClientIo {}

impl GetTimingDigest for ClientIo {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        vec![Some(TimingDigest {
            established_ts: self.established,
            ..TimingDigest::default()
        })]
    }
}

impl GetProxyDigest for ClientIo {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        None
    }
}

impl GetSocketDigest for ClientIo {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        Some(self.digest.clone())
    }
}

#[async_trait]
impl Peek for ClientIo {
    /// Waits until the client sends something (or closes), without reading it: a connection
    /// waiting for its next request holds no read buffer either. The socket's readiness says
    /// so without a system call (tokio clears it after a read that drained the socket).
    async fn try_peek(&mut self, _buf: &mut [u8]) -> io::Result<bool> {
        self.read_ready().await?;
        Ok(true)
    }
}

/// A response's write that ended before all of it went: how many of its bytes the connection
/// took (a rest it held, buffered, when its flush failed counted among them, as Pingora's
/// session counts them), and why it ended.
#[derive(Debug)]
pub struct Partial {
    pub written: usize,
    pub error: io::Error,
}

/// Writes a head and a body and flushes them: in one `writev` when the transport takes them so
/// (see [`ClientIo`]'s vectored write).
pub async fn write_pair<W: AsyncWrite + Unpin + ?Sized>(
    w: &mut W,
    head: &[u8],
    body: &[u8],
) -> Result<(), Partial> {
    use tokio::io::AsyncWriteExt;
    let mut done = 0;
    let partial = |written, error| Partial { written, error };
    while done < head.len() + body.len() {
        let n = if done < head.len() {
            w.write_vectored(&[io::IoSlice::new(&head[done..]), io::IoSlice::new(body)])
                .await
        } else {
            w.write(&body[done - head.len()..]).await
        }
        .map_err(|e| partial(done, e))?;
        if n == 0 {
            return Err(partial(done, io::ErrorKind::WriteZero.into()));
        }
        done += n;
    }
    w.flush().await.map_err(|e| partial(done, e))
}

#[cfg(test)]
mod tests;
