//! A raw HTTP/1.1 client: sends exactly the bytes a test writes, reads the response whole.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// The first value of a header (name compared case-insensitively).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn echoed(&self) -> super::echo::Echoed {
        assert_eq!(
            self.status,
            200,
            "expected the upstream's answer, got {} {}",
            self.status,
            self.text()
        );
        super::echo::Echoed::parse(&self.body)
    }
}

/// A connection to the gateway on `port` whose reads give up after `secs` seconds.
pub fn connect(port: u16, secs: u64) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", port)).expect("connect to the gateway");
    s.set_read_timeout(Some(Duration::from_secs(secs)))
        .expect("timeout");
    s
}

/// Sends `raw` and reads one response. `head_request` says the response has no body.
pub fn request(port: u16, raw: &str, head_request: bool) -> Response {
    let mut s = connect(port, 20);
    s.write_all(raw.as_bytes()).expect("send");
    read_response(&mut s, head_request)
}

/// Sends `raw` and returns everything the gateway sends back until it closes the connection
/// (or 5 s pass without a byte): what a client sees, framing and all.
pub fn send_until_close(port: u16, raw: &[u8]) -> String {
    let mut s = connect(port, 5);
    s.write_all(raw).expect("send");
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// `GET`-like request with extra headers, `Connection: close`.
pub fn get(port: u16, method: &str, path: &str, headers: &[(&str, &str)]) -> Response {
    let mut raw = format!("{method} {path} HTTP/1.1\r\n");
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        raw.push_str("Host: localhost\r\n");
    }
    for (k, v) in headers {
        raw.push_str(&format!("{k}: {v}\r\n"));
    }
    raw.push_str("Connection: close\r\n\r\n");
    request(port, &raw, method == "HEAD")
}

/// Reads one response from a connection (a keep-alive one may carry more; what was read past
/// this one is dropped).
pub fn read_response(s: &mut TcpStream, head_request: bool) -> Response {
    read_next_response(s, &mut Vec::new(), head_request)
}

/// Reads the next response from a connection on which answers follow each other (HTTP/1.1
/// pipelining): `pending` holds what was read past the response before, and after the call
/// what was read past this one.
pub fn read_next_response(
    s: &mut TcpStream,
    pending: &mut Vec<u8>,
    head_request: bool,
) -> Response {
    let mut more = |buf: &mut Vec<u8>, what: &str| -> usize {
        let mut chunk = [0u8; 16384];
        let n = s
            .read(&mut chunk)
            .unwrap_or_else(|e| panic!("read {what}: {e}"));
        buf.extend_from_slice(&chunk[..n]);
        n
    };
    let header_end = loop {
        if let Some(i) = find(pending, b"\r\n\r\n") {
            break i;
        }
        assert!(
            more(pending, "response head") > 0,
            "connection closed before a response head: {:?}",
            String::from_utf8_lossy(pending)
        );
    };
    let head = String::from_utf8_lossy(&pending[..header_end]).into_owned();
    pending.drain(..header_end + 4);
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let find_h = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    };
    let body = if head_request || status == 204 || status == 304 {
        Vec::new()
    } else if let Some(len) = find_h("content-length").and_then(|v| v.parse::<usize>().ok()) {
        while pending.len() < len {
            assert!(more(pending, "body") > 0, "connection closed mid-body");
        }
        pending.drain(..len).collect()
    } else if find_h("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        let mut body = Vec::new();
        loop {
            let line_end = loop {
                if let Some(i) = find(pending, b"\r\n") {
                    break i;
                }
                assert!(
                    more(pending, "chunk size") > 0,
                    "closed before a chunk size"
                );
            };
            let size =
                usize::from_str_radix(String::from_utf8_lossy(&pending[..line_end]).trim(), 16)
                    .expect("chunk size");
            pending.drain(..line_end + 2);
            if size == 0 {
                // Trailers, if any, to the empty line that ends them.
                loop {
                    let line_end = loop {
                        if let Some(i) = find(pending, b"\r\n") {
                            break i;
                        }
                        assert!(more(pending, "trailer") > 0, "closed in the trailers");
                    };
                    pending.drain(..line_end + 2);
                    if line_end == 0 {
                        return Response {
                            status,
                            headers,
                            body,
                        };
                    }
                }
            }
            while pending.len() < size + 2 {
                assert!(more(pending, "chunk") > 0, "closed mid-chunk");
            }
            body.extend_from_slice(&pending[..size]);
            pending.drain(..size + 2);
        }
    } else {
        let mut chunk = [0u8; 16384];
        loop {
            let n = s.read(&mut chunk).unwrap_or(0);
            if n == 0 {
                break std::mem::take(pending);
            }
            pending.extend_from_slice(&chunk[..n]);
        }
    };
    Response {
        status,
        headers,
        body,
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// A request with a JSON body (`Connection: close`).
pub fn send_json(port: u16, method: &str, path: &str, body: &str) -> Response {
    request(
        port,
        &format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len()),
        false,
    )
}

/// The body as JSON; panics (showing the answer) when it is not.
pub fn json_body(r: &Response) -> serde_json::Value {
    serde_json::from_slice(&r.body)
        .unwrap_or_else(|_| panic!("not JSON: {} {}", r.status, r.text()))
}
