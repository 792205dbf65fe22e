//! HTTP/2 connections as their streams see them, so that a connection is bound as an HTTP/1
//! one is: its idle limit applies only between requests (a stream waiting on a slow upstream
//! sends no byte for as long as the upstream takes, and its connection must not be closed
//! under it), and counts from the end of its last stream, not from its last byte (a client
//! that pings holds no idle connection); a request body that stops coming closes it after the
//! body timeout; and a client that keeps abandoning the streams it opens (HTTP/2's rapid
//! reset) has it closed. Pingora serves each stream apart from the connection, so a
//! connection is known to its streams by its two ends (the client's and the listener's
//! addresses).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

type Ends = (SocketAddr, SocketAddr);

fn connections() -> &'static Mutex<HashMap<Ends, Arc<Shared>>> {
    static CONNECTIONS: OnceLock<Mutex<HashMap<Ends, Arc<Shared>>>> = OnceLock::new();
    CONNECTIONS.get_or_init(Default::default)
}

/// How many more of its streams a connection's client may abandon (reset, or leave) before
/// their answers were whole than it let finish; past them the connection is closed. A
/// browser that pans a map away cancels the tiles it no longer needs, a few dozen at a time,
/// among the many it lets finish; a flood of resets, each costing the gateway a request's
/// work, abandons them all.
pub const MAX_ABANDONED: usize = 200;

/// How many streams whose requests had gone upstream a connection's client may abandon
/// within [`RECENT_MS`], however many it lets finish beside them: a client that pads a reset
/// flood with cheap requests (a health check after each reset) abandons as many as it
/// finishes, and the upstream's work for each goes on when the stream is reset.
pub const MAX_ABANDONED_RECENT: usize = 400;
/// The time [`MAX_ABANDONED_RECENT`] counts over (ms).
pub const RECENT_MS: u64 = 10_000;

/// What a connection and its streams share.
struct Shared {
    open: AtomicUsize,
    /// Whether a stream was opened on it yet.
    began: AtomicBool,
    /// When its last stream ended (the coarse monotonic clock, ms; 0: none has).
    last_end: AtomicU64,
    abandoned: AtomicUsize,
    finished: AtomicUsize,
    /// Streams abandoned recently: the current span of [`RECENT_MS`] (its start, coarse ms)
    /// and the one before it.
    recent: Mutex<Recent>,
    /// The request bodies being read, each the time of its last piece (0: read whole).
    reading: Mutex<Vec<Arc<AtomicU64>>>,
    /// The listener's connection cap, which each stream but one takes a place of while open.
    intake: Arc<super::Intake>,
    /// Whether the connection's own place is free for a stream (one stream at a time holds
    /// it; the others each take one of the cap's).
    own_place_free: AtomicBool,
}

/// Streams abandoned in two consecutive spans of [`RECENT_MS`].
#[derive(Default)]
struct Recent {
    since: u64,
    current: usize,
    before: usize,
}

impl Recent {
    /// Moves the spans on to `at` (coarse ms).
    fn at(&mut self, at: u64) {
        let passed = at.saturating_sub(self.since);
        if passed >= 2 * RECENT_MS {
            (self.before, self.current, self.since) = (0, 0, at);
        } else if passed >= RECENT_MS {
            (self.before, self.current) = (self.current, 0);
            self.since += RECENT_MS;
        }
    }

    /// About how many were abandoned in the last [`RECENT_MS`]: the current span's and the
    /// part of the span before that the last [`RECENT_MS`] still covers.
    fn count(&mut self, at: u64) -> usize {
        self.at(at);
        let into = at.saturating_sub(self.since).min(RECENT_MS);
        self.current + (self.before as u64 * (RECENT_MS - into) / RECENT_MS) as usize
    }
}

/// Why a connection is closed for the streams its client abandoned.
pub enum Flood {
    /// More than [`MAX_ABANDONED`] more than it let finish.
    MoreThanFinished,
    /// More than [`MAX_ABANDONED_RECENT`] within [`RECENT_MS`].
    TooManyRecently,
}

/// An HTTP/2 connection being served: its streams are counted while this lives.
pub struct Connection {
    ends: Ends,
    shared: Arc<Shared>,
}

impl Connection {
    /// `intake`: the listener's, whose connection cap its streams take places of (see
    /// [`Stream::begun`]).
    pub(super) fn new(
        client: SocketAddr,
        local: SocketAddr,
        intake: Arc<super::Intake>,
    ) -> Connection {
        let shared = Arc::new(Shared {
            open: AtomicUsize::new(0),
            began: AtomicBool::new(false),
            last_end: AtomicU64::new(0),
            abandoned: AtomicUsize::new(0),
            finished: AtomicUsize::new(0),
            recent: Mutex::new(Recent::default()),
            reading: Mutex::new(Vec::new()),
            intake,
            own_place_free: AtomicBool::new(true),
        });
        let ends = (client, local);
        connections()
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(ends, shared.clone());
        Connection { ends, shared }
    }

    /// Whether a stream is open on it.
    pub fn busy(&self) -> bool {
        self.shared.open.load(Ordering::Relaxed) > 0
    }

    /// Whether a stream was ever opened on it.
    pub fn began(&self) -> bool {
        self.shared.began.load(Ordering::Relaxed)
    }

    /// When its last stream ended (coarse ms), if one has.
    pub fn last_end(&self) -> Option<u64> {
        Some(self.shared.last_end.load(Ordering::Relaxed)).filter(|t| *t > 0)
    }

    /// Whether its client abandoned [`MAX_ABANDONED`] more streams than it let finish, or more
    /// than [`MAX_ABANDONED_RECENT`] within [`RECENT_MS`] before `now` (coarse ms).
    pub fn flooded(&self, now: u64) -> Option<Flood> {
        let finished = self.shared.finished.load(Ordering::Relaxed);
        let abandoned = self.shared.abandoned.load(Ordering::Relaxed);
        if abandoned > finished + MAX_ABANDONED {
            return Some(Flood::MoreThanFinished);
        }
        let mut recent = self.shared.recent.lock().unwrap_or_else(|p| p.into_inner());
        (recent.count(now) > MAX_ABANDONED_RECENT).then_some(Flood::TooManyRecently)
    }

    /// Whether a request body on it has had no piece for `limit` at `now` (coarse ms).
    pub fn body_stalled(&self, now: u64, limit: Duration) -> bool {
        let mut reading = self
            .shared
            .reading
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        reading.retain(|r| r.load(Ordering::Relaxed) != 0);
        reading
            .iter()
            .any(|r| u128::from(now.saturating_sub(r.load(Ordering::Relaxed))) >= limit.as_millis())
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
pub struct Stream {
    shared: Arc<Shared>,
    /// Its request body while it is being read.
    body: Option<Arc<AtomicU64>>,
    abandoned: bool,
    /// Its place under the connection cap: the connection's own, or one of the cap's.
    place: Place,
}

/// Where a stream's place under the connection cap is.
enum Place {
    /// The connection's own.
    Own,
    /// One of the cap's, given back when the stream ends.
    Cap {
        _permit: tokio::sync::OwnedSemaphorePermit,
    },
}

/// A stream begun on an HTTP/2 connection.
pub enum Begun {
    Counted(Stream),
    /// The connection cap has no place for it: each stream may hold an upstream connection
    /// (a descriptor, as a client connection does), so a hundred streams of one connection
    /// count as a hundred connections.
    AtCap,
}

impl Stream {
    /// The stream of a request that came on the connection between `client` and `local`, if
    /// that is an HTTP/2 connection being served. Each stream but one takes a place under the
    /// connection cap while it is open (the connection holds one): at the cap, none is left
    /// for it. Before, forty-five connections of a hundred streams each, to an upstream that
    /// did not answer, held every descriptor: nothing else was served, the Admin API neither.
    pub fn begun(client: SocketAddr, local: SocketAddr) -> Option<Begun> {
        let shared = connections()
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(client, local))?
            .clone();
        let place = if shared.own_place_free.swap(false, Ordering::Relaxed) {
            Place::Own
        } else {
            match shared.intake.permits.clone().try_acquire_owned() {
                Ok(_permit) => Place::Cap { _permit },
                // (No keep-alive connection is asked to make room: the stream is answered at
                // once, and a room nobody waits for would close one for nothing.)
                Err(_) => return Some(Begun::AtCap),
            }
        };
        shared.open.fetch_add(1, Ordering::Relaxed);
        shared.began.store(true, Ordering::Relaxed);
        Some(Begun::Counted(Stream {
            shared,
            body: None,
            abandoned: false,
            place,
        }))
    }

    /// Its request body is waited for from now on (the request goes upstream): a pause of
    /// the body timeout in it closes the connection.
    pub fn body_awaited(&mut self) {
        if self.body.is_none() {
            let last = Arc::new(AtomicU64::new(crate::clock::coarse_millis().max(1)));
            self.shared
                .reading
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(last.clone());
            self.body = Some(last);
        }
    }

    /// A piece of the request body came (`done`: its last).
    pub fn body_read(&self, done: bool) {
        if let Some(b) = &self.body {
            let now = if done {
                0
            } else {
                crate::clock::coarse_millis().max(1)
            };
            b.store(now, Ordering::Relaxed);
        }
    }

    /// The client abandoned the stream before its answer was whole; `asked_upstream`: its
    /// request had gone upstream, whose work goes on (counted among the recent ones: a
    /// stream abandoned while a tile came from the cache costs nothing more).
    pub fn abandoned(&mut self, asked_upstream: bool) {
        if !std::mem::replace(&mut self.abandoned, true) {
            self.shared.abandoned.fetch_add(1, Ordering::Relaxed);
            if !asked_upstream {
                return;
            }
            let now = crate::clock::coarse_millis();
            let mut recent = self.shared.recent.lock().unwrap_or_else(|p| p.into_inner());
            recent.at(now);
            recent.current += 1;
        }
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        if !self.abandoned {
            self.shared.finished.fetch_add(1, Ordering::Relaxed);
        }
        self.body_read(true);
        self.shared
            .last_end
            .store(crate::clock::coarse_millis().max(1), Ordering::Relaxed);
        self.shared.open.fetch_sub(1, Ordering::Relaxed);
        if matches!(self.place, Place::Own) {
            self.shared.own_place_free.store(true, Ordering::Relaxed);
        }
    }
}

/// The HTTP/2 settings the gateway serves with: Pingora's bounded defaults (a decoded header
/// list of 64 KiB, 100 streams at once — fewer under a smaller `--max-connections`, where
/// each stream takes a place: a browser told 100 sent 100 and had those past the cap
/// refused, where told the cap it queues them), and at most 64 KiB of an answer buffered per
/// stream for a client that does not read (h2's default, 400 KiB, would hold 40 MB per
/// connection).
pub fn options(max_connections: usize) -> pingora_core::protocols::http::v2::server::H2Options {
    let mut o = pingora_core::protocols::http::v2::server::default_h2_options();
    o.max_send_buffer_size(64 * 1024);
    o.max_concurrent_streams(MAX_STREAMS.min(max_connections.max(1) as u32));
    o
}

/// What an HTTP/2 stream refused at the connection cap is told besides its `503`: to try
/// again in a second, and, for a web page, that it may read the refusal (which holds nothing
/// but itself: the pipeline's `cors` step has not run) — a page shown a CORS error instead
/// cannot tell a busy gateway from a broken one, nor retry.
pub fn at_cap_edits(
    head: &pingora_http::RequestHeader,
) -> Vec<crate::pipeline::context::HeaderEdit> {
    use crate::pipeline::context::HeaderEdit;
    let mut edits = vec![HeaderEdit::Set(
        http::header::RETRY_AFTER,
        http::HeaderValue::from_static("1"),
    )];
    if let Some(origin) = head.headers.get(http::header::ORIGIN) {
        edits.push(HeaderEdit::Set(
            http::header::ACCESS_CONTROL_ALLOW_ORIGIN,
            origin.clone(),
        ));
        edits.push(HeaderEdit::Set(
            http::header::ACCESS_CONTROL_EXPOSE_HEADERS,
            http::HeaderValue::from_static("Retry-After"),
        ));
        edits.push(HeaderEdit::Set(
            http::header::VARY,
            http::HeaderValue::from_static("Origin"),
        ));
    }
    edits
}

/// Pingora's streams at once per HTTP/2 connection.
const MAX_STREAMS: u32 = 100;

#[cfg(test)]
mod tests {
    use super::{Recent, RECENT_MS};

    /// A stream refused at the cap is told to come back in a second, and a page may read that
    /// (its `Origin` allowed, the answer said to vary by it).
    #[test]
    fn a_stream_refused_at_the_cap_is_readable_by_its_page() {
        use crate::pipeline::context::HeaderEdit;
        let mut head = pingora_http::RequestHeader::build("GET", b"/t/1.png", None).unwrap();
        let names = |edits: Vec<HeaderEdit>| -> Vec<(String, String)> {
            edits
                .iter()
                .map(|e| match e {
                    HeaderEdit::Set(n, v) => (n.to_string(), v.to_str().unwrap().to_string()),
                    _ => panic!("a set"),
                })
                .collect()
        };
        assert_eq!(
            names(super::at_cap_edits(&head)),
            [("retry-after".to_string(), "1".to_string())]
        );
        head.insert_header("Origin", "https://maps.example")
            .unwrap();
        let told = names(super::at_cap_edits(&head));
        assert!(told.contains(&(
            "access-control-allow-origin".into(),
            "https://maps.example".into()
        )));
        assert!(told.contains(&("vary".into(), "Origin".into())));
    }

    /// The recent count holds what was abandoned in the last span, fading out the span
    /// before it as the last one moves past it, and forgets what is older.
    #[test]
    fn abandoned_streams_are_counted_over_the_last_span() {
        let mut r = Recent {
            since: 1000,
            ..Recent::default()
        };
        let abandon = |r: &mut Recent, at: u64, n: usize| {
            r.at(at);
            r.current += n;
        };
        abandon(&mut r, 1000, 300);
        abandon(&mut r, 1000 + RECENT_MS - 1, 100);
        assert_eq!(r.count(1000 + RECENT_MS - 1), 400);
        // Half a span on: half of the span before, and this one's.
        abandon(&mut r, 1000 + RECENT_MS + RECENT_MS / 2, 50);
        assert_eq!(r.count(1000 + RECENT_MS + RECENT_MS / 2), 200 + 50);
        assert_eq!(r.count(1000 + 2 * RECENT_MS), 50);
        assert_eq!(r.count(1000 + 5 * RECENT_MS), 0);
    }
}
