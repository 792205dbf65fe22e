//! Which worker thread serves a new connection: the one serving the fewest. Pingora's runtime
//! hands out a thread at random, and with a few dozen long keep-alive connections that leaves
//! one thread with half as many again as another (measured: the busier thread saturates while
//! the other idles). A worker becomes known when it serves its first connection; until every
//! worker is known, connections go to a random one, so that each soon is.

use std::cell::RefCell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::runtime::Handle;

/// The worker threads of one listening service and the connections each serves.
pub struct Workers {
    expected: usize,
    known: Mutex<Vec<Worker>>,
}

struct Worker {
    handle: Handle,
    live: Arc<AtomicUsize>,
}

thread_local! {
    /// This thread's count of live connections (a thread belongs to one service's runtime).
    static LIVE: RefCell<Option<Arc<AtomicUsize>>> = const { RefCell::new(None) };
}

/// Counts one connection on its thread while it lives.
pub struct Live(Arc<AtomicUsize>);

impl Drop for Live {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Workers {
    pub fn new(expected: usize) -> Workers {
        Workers {
            expected: expected.max(1),
            known: Mutex::new(Vec::new()),
        }
    }

    /// The event loop a new connection is to be served on, and its count of it when the
    /// worker is known (counted at once: a burst of connections accepted before any of them
    /// runs is spread too).
    pub fn pick(&self) -> (Handle, Option<Live>) {
        let known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        if known.len() < self.expected {
            return (pingora_runtime::current_handle(), None);
        }
        match known.iter().min_by_key(|w| w.live.load(Ordering::Relaxed)) {
            Some(w) => {
                w.live.fetch_add(1, Ordering::Relaxed);
                (w.handle.clone(), Some(Live(w.live.clone())))
            }
            None => (pingora_runtime::current_handle(), None),
        }
    }

    /// Called on the thread that serves a connection [`Self::pick`] did not count, for as long
    /// as it is served; makes the thread known.
    pub fn enter(&self) -> Live {
        let live = LIVE.with_borrow_mut(|mine| {
            mine.get_or_insert_with(|| {
                let live = Arc::new(AtomicUsize::new(0));
                self.known
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(Worker {
                        handle: Handle::current(),
                        live: live.clone(),
                    });
                live
            })
            .clone()
        });
        live.fetch_add(1, Ordering::Relaxed);
        Live(live)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_least_busy_known_worker_gets_the_next_connection() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let w = Workers::new(1);
            let first = w.enter();
            let second = w.enter();
            assert_eq!(w.known.lock().expect("lock").len(), 1, "one thread, once");
            assert_eq!(first.0.load(Ordering::Relaxed), 2);
            drop(second);
            drop(first);
            let known = w.known.lock().expect("lock");
            assert_eq!(known[0].live.load(Ordering::Relaxed), 0);
        });
    }
}
