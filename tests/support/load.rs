//! Steady client load in background threads, each request on a connection of its own, with
//! every outcome recorded: a status, or how the exchange failed and whether the request had
//! been written in full before it did.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// What became of one request.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// When it started, from the start of the load.
    pub at: Duration,
    /// When its connection was made (none: it was not).
    pub connected: Option<Duration>,
    pub status: Option<u16>,
    /// Why there is no status: `connect`, `write`, `read`.
    pub failed: Option<String>,
    /// How long it took, to its answer read whole or its failure.
    pub took: Duration,
}

#[derive(Default, Debug)]
pub struct Report {
    pub outcomes: Vec<Outcome>,
}

impl Report {
    pub fn statuses(&self) -> BTreeMap<u16, usize> {
        let mut m = BTreeMap::new();
        for o in &self.outcomes {
            if let Some(s) = o.status {
                *m.entry(s).or_default() += 1;
            }
        }
        m
    }

    /// Requests without a `want` answer (any failure or another status).
    pub fn failed(&self, want: u16) -> Vec<&Outcome> {
        self.outcomes
            .iter()
            .filter(|o| o.status != Some(want))
            .collect()
    }

    pub fn count(&self) -> usize {
        self.outcomes.len()
    }
}

pub struct Load {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    report: Arc<Mutex<Report>>,
    pub started: Instant,
}

impl Load {
    /// Starts `threads` clients sending `raw` (a whole request, `Connection: close`) to `port`
    /// one after another, with `pause` between two requests of a client, once the request is
    /// answered 200 (everything behind the gateway is up).
    pub fn start(port: u16, threads: usize, raw: &str, pause: Duration) -> Load {
        let ready = Instant::now();
        loop {
            let o = one(port, raw, ready);
            if o.status == Some(200) {
                break;
            }
            assert!(
                ready.elapsed() < Duration::from_secs(10),
                "the load's request is not answered 200: {o:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let raw = raw.to_string();
        Load::clients(threads, pause, move || {
            let raw = raw.clone();
            move |started| one(port, &raw, started)
        })
    }

    /// Starts `threads` clients each sending `raw` (a whole request without `Connection:
    /// close`) on a keep-alive connection of its own, one request after another with `pause`
    /// between them, as a careful HTTP/1.1 client does: a new connection only once an answer
    /// said `Connection: close` (or before the first request). A request written on a
    /// connection that then closed without its answer is a failure (`read`), whatever it was
    /// reused for before.
    pub fn keep_alive(port: u16, threads: usize, raw: &str, pause: Duration) -> Load {
        let raw = raw.to_string();
        Load::clients(threads, pause, move || {
            let raw = raw.clone();
            let mut conn: Option<(TcpStream, Duration)> = None;
            move |started| {
                let at = started.elapsed();
                let (o, keep) = on_connection(&mut conn, port, &raw, started, at);
                if !keep {
                    conn = None;
                }
                o
            }
        })
    }

    /// Starts `threads` clients, each making requests with what `client` makes for it (one
    /// request per call, given when the load started) until the load stops, `pause` between
    /// two.
    fn clients<C, R>(threads: usize, pause: Duration, client: C) -> Load
    where
        C: Fn() -> R,
        R: FnMut(Instant) -> Outcome + Send + 'static,
    {
        let stop = Arc::new(AtomicBool::new(false));
        let report = Arc::new(Mutex::new(Report::default()));
        let started = Instant::now();
        let threads = (0..threads)
            .map(|_| {
                let (stop, report, mut request) = (stop.clone(), report.clone(), client());
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        let o = request(started);
                        report.lock().expect("report").outcomes.push(o);
                        if !pause.is_zero() {
                            std::thread::sleep(pause);
                        }
                    }
                })
            })
            .collect();
        Load {
            stop,
            threads,
            report,
            started,
        }
    }

    /// Requests made so far.
    pub fn so_far(&self) -> usize {
        self.report.lock().expect("report").outcomes.len()
    }

    pub fn stop(mut self) -> Report {
        self.stop.store(true, Ordering::Relaxed);
        for t in std::mem::take(&mut self.threads) {
            let _ = t.join();
        }
        std::mem::take(&mut *self.report.lock().expect("report"))
    }
}

/// A load a test dropped without stopping it (it panicked): its clients stop, rather than go
/// on sending to whatever takes the port next.
impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn one(port: u16, raw: &str, started: Instant) -> Outcome {
    let at = started.elapsed();
    let fail = |why: &str, connected| Outcome {
        at,
        connected,
        status: None,
        failed: Some(why.to_string()),
        took: started.elapsed() - at,
    };
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return fail("connect", None);
    };
    let connected = Some(started.elapsed());
    let _ = s.set_read_timeout(Some(Duration::from_secs(20)));
    if s.write_all(raw.as_bytes()).is_err() {
        return fail("write", connected);
    }
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(_) => {
                if buf.is_empty() {
                    return fail("read", connected);
                }
                break;
            }
        }
    }
    let head = String::from_utf8_lossy(&buf);
    match head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse::<u16>().ok())
        .filter(|_| head.starts_with("HTTP/1."))
    {
        Some(status) => Outcome {
            at,
            connected,
            status: Some(status),
            failed: None,
            took: started.elapsed() - at,
        },
        None => fail("read", connected),
    }
}

/// One request on the client's keep-alive connection (made first when there is none): its
/// outcome, and whether the connection may carry the next request.
fn on_connection(
    conn: &mut Option<(TcpStream, Duration)>,
    port: u16,
    raw: &str,
    started: Instant,
    at: Duration,
) -> (Outcome, bool) {
    let fail = |why: &str, connected| Outcome {
        at,
        connected,
        status: None,
        failed: Some(why.to_string()),
        took: started.elapsed() - at,
    };
    if conn.is_none() {
        let Ok(s) = TcpStream::connect(("127.0.0.1", port)) else {
            return (fail("connect", None), false);
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(20)));
        *conn = Some((s, started.elapsed()));
    }
    let Some((s, connected)) = conn.as_mut() else {
        return (fail("connect", None), false);
    };
    let connected = Some(*connected);
    if s.write_all(raw.as_bytes()).is_err() {
        return (fail("write", connected), false);
    }
    // The head, then as many bytes as its Content-Length says.
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match s.read(&mut chunk) {
            Ok(n) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            _ => return (fail("read", connected), false),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let header = |name: &str| {
        head.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(':')))
            .map(|v| v.trim().to_string())
    };
    let Some(length) = header("content-length").and_then(|v| v.parse::<usize>().ok()) else {
        return (fail("framing", connected), false);
    };
    while buf.len() < head_end + length {
        match s.read(&mut chunk) {
            Ok(n) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            _ => return (fail("read", connected), false),
        }
    }
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse::<u16>().ok())
        .filter(|_| head.starts_with("http/1."));
    let keep = header("connection").is_none_or(|v| !v.contains("close"));
    let o = Outcome {
        at,
        connected,
        status,
        failed: status.is_none().then(|| "read".to_string()),
        took: started.elapsed() - at,
    };
    (o, keep && status.is_some())
}
