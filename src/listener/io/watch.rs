//! A client connection watched from outside its session: whether the client has sent its next
//! request, or left while it waited for an answer.

use std::io;

use pingora_core::protocols::Stream;

use super::ClientIo;

/// Waits until the client sends something (or closes), as
/// [`pingora_core::protocols::Peek::try_peek`] does; on a connection of ours without the boxed
/// future of Pingora's trait (one per request).
pub async fn request_begun(stream: &mut Stream, probe: &mut [u8]) -> io::Result<bool> {
    match stream.as_any().downcast_ref::<ClientIo>() {
        Some(io) => io.read_ready().await.map(|()| true),
        None => stream.try_peek(probe).await,
    }
}

/// Resolves when the client has closed its connection (or it failed) while it waits for an
/// answer; pends while it is open, and for good once it has sent more (a next request's bytes,
/// left unread for it). A connection that is not one of ours is not watched.
pub async fn client_gone(stream: &Stream) {
    let Some(io) = stream.as_any().downcast_ref::<ClientIo>() else {
        return std::future::pending().await;
    };
    // A client whose next request came waits for this answer too, whatever follows.
    if io.next_read.load(std::sync::atomic::Ordering::Relaxed) {
        return std::future::pending().await;
    }
    // (Blank lines between requests are taken, and are no sign of anything.)
    let _ = std::future::poll_fn(|cx| super::hold::poll_body_end(&io.tcp, cx)).await;
}

/// Whether the client has closed its connection (or it failed), as far as can be told without
/// waiting: the runtime's last look at the socket's events said its side is closed, and it
/// left nothing unread (a next request sent before it closed its side is still to be
/// answered, as [`client_gone`] has it).
pub fn client_gone_now(stream: &Stream) -> bool {
    use std::os::fd::AsRawFd;
    let Some(io) = stream.as_any().downcast_ref::<ClientIo>() else {
        return false;
    };
    if io.next_read.load(std::sync::atomic::Ordering::Relaxed) {
        return false;
    }
    match futures_util::FutureExt::now_or_never(io.tcp.ready(tokio::io::Interest::READABLE)) {
        Some(Ok(ready)) if ready.is_read_closed() => {}
        Some(Ok(_)) | None => return false,
        Some(Err(_)) => return true,
    }
    let mut seen = [0u8; 64];
    loop {
        // SAFETY: at most `seen.len()` bytes into `seen`, which lives through the call.
        let n = unsafe {
            libc::recv(
                io.tcp.as_raw_fd(),
                seen.as_mut_ptr().cast(),
                seen.len(),
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        // 0: nothing left and the side closed; below 0: reset.
        let Ok(n @ 1..) = usize::try_from(n) else {
            return true;
        };
        // Blank lines between requests are no sign the client is there: taken, and looked
        // past (as [`client_gone`] does).
        let blank = crate::wire::blank_lines(&seen[..n]);
        if blank == 0 || io.tcp.try_read(&mut seen[..blank]).is_err() {
            return false;
        }
    }
}
