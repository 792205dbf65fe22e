//! Idle upstream connections of the fast path, one pool per worker thread.
//!
//! Each worker runs its own single-threaded runtime and a connection's socket is registered
//! with the runtime that opened it, so a connection is only ever reused on its own thread: no
//! lock, no task watching it while idle, no wake-up of another thread. An idle connection is
//! checked when it is taken (a read that must find nothing: the upstream closed it or sent
//! something unasked for, and it is dropped) and closed after [`MAX_IDLE`]: by the next use of
//! its upstream, else by a sweep of the thread's pool every [`SWEEP_EVERY`] (an upstream a
//! reload removed, or one a thread no longer serves, keeps none open).
//!
//! Idle connections hold descriptors the connection cap does not count. When the process runs
//! out of them (a connect or an accept fails with `EMFILE` or `ENFILE`), every thread's idle
//! connections are closed, as HAProxy closes its idle server connections when descriptors run
//! low ([`out_of_descriptors`]).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use pingora_core::protocols::Stream;
use tokio::io::AsyncReadExt;

/// How long a connection may sit idle in the pool (nginx's upstreams keep theirs 60 s by
/// default; a connection the upstream closed first is found out when taken).
pub const MAX_IDLE: Duration = Duration::from_secs(55);
/// Idle connections kept per upstream and thread; past it the oldest is closed.
const PER_UPSTREAM: usize = 256;

/// How often a thread's pool is swept of connections idle past [`MAX_IDLE`].
const SWEEP_EVERY: Duration = Duration::from_secs(30);

type Idle = Vec<(Stream, Instant)>;

thread_local! {
    static POOL: RefCell<HashMap<u64, Idle>> = RefCell::new(HashMap::new());
    /// Whether this thread's sweep runs.
    static SWEEPING: Cell<bool> = const { Cell::new(false) };
    /// The last of [`DRAINS`] this thread's pool was emptied for.
    static DRAINED: Cell<u64> = const { Cell::new(0) };
}

/// How many times the process ran out of descriptors: a thread whose pool was last emptied for
/// an earlier one empties it at its next use of it, or when its sweep is woken ([`WAKE`]).
static DRAINS: AtomicU64 = AtomicU64::new(0);
/// Wakes every thread's sweep when the process ran out of descriptors.
static WAKE: tokio::sync::Notify = tokio::sync::Notify::const_new();

/// The process ran out of file descriptors: this thread's idle connections are closed now,
/// every other thread's as it next uses its pool or its sweep wakes (at once, when it is
/// waiting for work).
pub fn out_of_descriptors() {
    DRAINS.fetch_add(1, Ordering::Relaxed);
    WAKE.notify_waiters();
    // (One line, folded while it repeats: a lasting shortage asks again at each accept.)
    log::warn!("out of file descriptors: the idle upstream connections are closed");
    drain_if_asked();
}

/// Empties this thread's pool when the process ran out of descriptors since it was last
/// emptied.
fn drain_if_asked() {
    let asked = DRAINS.load(Ordering::Relaxed);
    if DRAINED.get() < asked {
        DRAINED.set(asked);
        POOL.with(|p| p.borrow_mut().clear());
    }
}

/// Whether `e` is the process's (or the system's) shortage of file descriptors.
pub fn is_out_of_descriptors(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}

/// An open idle connection to the upstream `key` names, the most recently used first.
pub fn take(key: u64) -> Option<Stream> {
    drain_if_asked();
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
    drain_if_asked();
    if !SWEEPING.replace(true) {
        // The thread's runtime is its own (one thread): the sweep runs here, where the pool is.
        // It is also woken when the process ran out of descriptors (the wake is waited for
        // before the pool is looked at: one that comes in between is not missed).
        tokio::spawn(async {
            let start = tokio::time::Instant::now() + SWEEP_EVERY;
            let mut every = tokio::time::interval_at(start, SWEEP_EVERY);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                let woken = WAKE.notified();
                tokio::pin!(woken);
                woken.as_mut().enable();
                drain_if_asked();
                tokio::select! {
                    _ = every.tick() => {
                        sweep(crate::clock::soon());
                    }
                    () = woken => {}
                }
            }
        });
    }
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

/// Closes this thread's connections idle past [`MAX_IDLE`] at `now`; how many.
fn sweep(now: Instant) -> usize {
    POOL.with(|p| {
        let mut pool = p.borrow_mut();
        let mut closed = 0;
        pool.retain(|_, idle| {
            let before = idle.len();
            idle.retain(|(_, since)| now.saturating_duration_since(*since) < MAX_IDLE);
            closed += before - idle.len();
            !idle.is_empty()
        });
        closed
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sweep_closes_what_sat_idle_too_long_of_every_upstream() {
        // (This thread's pool is not emptied by a shortage another test makes.)
        DRAINED.set(u64::MAX);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            let addr = listener.local_addr().expect("address");
            for key in [1, 2, 2] {
                let s = tokio::net::TcpStream::connect(addr).await.expect("connect");
                put(key, Box::new(crate::listener::io::ClientIo::new(s)));
            }
            let now = crate::clock::soon();
            assert_eq!(sweep(now), 0, "none idle long");
            assert_eq!(sweep(now + MAX_IDLE), 3);
            assert!(
                POOL.with(|p| p.borrow().is_empty()),
                "no upstream left behind"
            );
        });
    }
}
