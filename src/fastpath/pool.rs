//! Idle upstream connections of the fast path, one pool per worker thread.
//!
//! Each worker runs its own single-threaded runtime and a connection's socket is registered
//! with the runtime that opened it, so a connection is only ever reused on its own thread: no
//! lock, no task watching it while idle, no wake-up of another thread. An idle connection is
//! checked when it is taken (a read that must find nothing: the upstream closed it or sent
//! something unasked for, and it is dropped) and dropped after [`MAX_IDLE`].

use std::cell::RefCell;
use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use pingora_core::protocols::Stream;
use tokio::io::AsyncReadExt;

/// How long a connection may sit idle in the pool (nginx's upstreams keep theirs 60 s by
/// default; a connection the upstream closed first is found out when taken).
pub const MAX_IDLE: Duration = Duration::from_secs(55);
/// Idle connections kept per upstream and thread; past it the oldest is closed.
const PER_UPSTREAM: usize = 256;

type Idle = Vec<(Stream, Instant)>;

thread_local! {
    static POOL: RefCell<HashMap<u64, Idle>> = RefCell::new(HashMap::new());
}

/// An open idle connection to the upstream `key` names, the most recently used first.
pub fn take(key: u64) -> Option<Stream> {
    loop {
        let (mut stream, since) = POOL.with(|p| p.borrow_mut().get_mut(&key)?.pop())?;
        // Idle times are seconds long: the kernel's last tick is near enough.
        let idle = crate::clock::soon().saturating_duration_since(since);
        if idle < MAX_IDLE && still_idle(&mut stream) {
            return Some(stream);
        }
    }
}

/// Keeps a connection whose exchange ended cleanly for the next request to `key`.
pub fn put(key: u64, stream: Stream) {
    POOL.with(|p| {
        let mut pool = p.borrow_mut();
        let idle = pool.entry(key).or_default();
        let now = crate::clock::soon();
        let stale = idle
            .iter()
            .take_while(|(_, since)| now.duration_since(*since) >= MAX_IDLE)
            .count();
        idle.drain(..stale);
        if idle.len() >= PER_UPSTREAM {
            idle.remove(0);
        }
        idle.push((stream, now));
    });
}

/// Whether an idle connection is still open with nothing to read: a read must not be ready.
fn still_idle(stream: &mut Stream) -> bool {
    let mut byte = [0u8; 1];
    // `unconstrained`: the read must not give way to the scheduler's budget, which would
    // make a closed connection look idle.
    tokio::task::unconstrained(stream.read(&mut byte))
        .now_or_never()
        .is_none()
}
