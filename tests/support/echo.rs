//! An upstream that answers every request with JSON describing what it received: its name,
//! the method, the raw path with query, every header (in order) and the body.
//! A path ending in `/slow/<ms>` waits that long first; `/status/<code>` answers with that
//! status; `/close` drops the connection without answering.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

pub struct EchoUpstream {
    pub port: u16,
    pub hits: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl EchoUpstream {
    pub fn start(name: &str) -> EchoUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind echo upstream");
        let port = listener.local_addr().expect("addr").port();
        let hits = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (h, s, name) = (hits.clone(), stop.clone(), name.to_string());
        thread::spawn(move || {
            for conn in listener.incoming() {
                if s.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let (h, name) = (h.clone(), name.clone());
                thread::spawn(move || serve_connection(conn, &name, &h));
            }
        });
        EchoUpstream { port, hits, stop }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.port, path)
    }
}

impl Drop for EchoUpstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn serve_connection(conn: TcpStream, name: &str, hits: &AtomicUsize) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));
    serve_stream(conn, name, hits);
}

/// Answers requests on one connection (plain or TLS) until it closes.
pub fn serve_stream<S: Read + Write>(stream: S, name: &str, hits: &AtomicUsize) {
    let mut reader = BufReader::new(stream);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut parts = line.trim_end().splitn(3, ' ');
        let method = parts.next().unwrap_or("").to_string();
        let url = parts.next().unwrap_or("").to_string();
        let mut headers: Vec<(String, String)> = Vec::new();
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
            }
        }
        let len = headers
            .iter()
            .find(|(k, _)| k == "content-length")
            .and_then(|(_, v)| v.parse::<usize>().ok())
            .unwrap_or(0);
        let mut body = vec![0u8; len];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        hits.fetch_add(1, Ordering::SeqCst);
        let path = url.split('?').next().unwrap_or("");
        if path.ends_with("/close") {
            return;
        }
        if let Some(ms) = path
            .rsplit_once("/slow/")
            .and_then(|(_, m)| m.parse::<u64>().ok())
        {
            thread::sleep(Duration::from_millis(ms));
        }
        let status = path
            .rsplit_once("/status/")
            .and_then(|(_, c)| c.parse::<u16>().ok())
            .unwrap_or(200);
        let json = serde_json::json!({
            "upstream": name,
            "method": method,
            "url": url,
            "headers": headers,
            "body": String::from_utf8_lossy(&body),
        })
        .to_string();
        let head = format!(
            "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nX-Upstream: {name}\r\n\r\n",
            json.len()
        );
        let payload = if method == "HEAD" { head } else { head + &json };
        if reader.get_mut().write_all(payload.as_bytes()).is_err() {
            return;
        }
    }
}

/// What the echo upstream reported.
pub struct Echoed(pub serde_json::Value);

impl Echoed {
    pub fn parse(body: &[u8]) -> Echoed {
        Echoed(serde_json::from_slice(body).unwrap_or_else(|e| {
            panic!(
                "upstream body is not echo JSON ({e}): {}",
                String::from_utf8_lossy(body)
            )
        }))
    }

    pub fn url(&self) -> &str {
        self.0["url"].as_str().unwrap_or("")
    }

    pub fn method(&self) -> &str {
        self.0["method"].as_str().unwrap_or("")
    }

    pub fn upstream(&self) -> &str {
        self.0["upstream"].as_str().unwrap_or("")
    }

    /// Every value the upstream got for a header (lower-case name).
    pub fn header_all(&self, name: &str) -> Vec<String> {
        self.0["headers"]
            .as_array()
            .map(|hs| {
                hs.iter()
                    .filter(|h| h[0].as_str() == Some(name))
                    .filter_map(|h| h[1].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.header_all(name).into_iter().next()
    }
}
