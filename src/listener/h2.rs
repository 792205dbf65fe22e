//! HTTP/2 connections' open streams, so that a connection's idle limit applies only between
//! requests, as HTTP/1's keep-alive does: a stream waiting on a slow upstream sends no byte
//! for as long as the upstream takes, and its connection must not be closed under it.
//! Pingora serves each stream apart from the connection, so a connection is known to its
//! streams by its two ends (the client's and the listener's addresses).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

type Ends = (SocketAddr, SocketAddr);

fn connections() -> &'static Mutex<HashMap<Ends, Arc<AtomicUsize>>> {
    static CONNECTIONS: OnceLock<Mutex<HashMap<Ends, Arc<AtomicUsize>>>> = OnceLock::new();
    CONNECTIONS.get_or_init(Default::default)
}

/// An HTTP/2 connection being served: its streams are counted while this lives.
pub struct Connection {
    ends: Ends,
    open: Arc<AtomicUsize>,
}

impl Connection {
    pub fn new(client: SocketAddr, local: SocketAddr) -> Connection {
        let open = Arc::new(AtomicUsize::new(0));
        let ends = (client, local);
        connections()
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(ends, open.clone());
        Connection { ends, open }
    }

    /// Whether a stream is open on it.
    pub fn busy(&self) -> bool {
        self.open.load(Ordering::Relaxed) > 0
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        connections()
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.ends);
    }
}

/// A stream of an HTTP/2 connection, counted open while this lives.
pub struct Stream(Arc<AtomicUsize>);

impl Stream {
    /// The stream of a request that came on the connection between `client` and `local`, if
    /// that is an HTTP/2 connection being served.
    pub fn begun(client: SocketAddr, local: SocketAddr) -> Option<Stream> {
        let open = connections()
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(client, local))?
            .clone();
        open.fetch_add(1, Ordering::Relaxed);
        Some(Stream(open))
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}
