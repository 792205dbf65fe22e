//! The fast path (bodiless HTTP/1 GET and HEAD on Pingora's sessions, an upstream pool per
//! worker thread) against a scripted upstream that answers with every framing there is: each
//! case runs with `--fast-path on` and `off`, and both must give the client the same answer.
//! Then what the fast path must get right itself: hop-by-hop headers, upstream errors and
//! timeouts as 502, connection reuse and a pooled connection the upstream dropped, a client
//! that leaves mid-body, and requests it hands to Pingora's proxy.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use support::client::{connect, read_next_response, read_response};
use support::{request, ConfigDir, GatewayProcess, Response};

/// An upstream whose answer the request path picks; it counts connections and keeps the
/// request heads it received.
struct Scripted {
    port: u16,
    connections: Arc<AtomicUsize>,
    heads: Arc<Mutex<Vec<String>>>,
}

impl Scripted {
    fn start() -> Scripted {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let connections = Arc::new(AtomicUsize::new(0));
        let heads = Arc::new(Mutex::new(Vec::new()));
        let (c, h) = (connections.clone(), heads.clone());
        thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                c.fetch_add(1, Ordering::SeqCst);
                let h = h.clone();
                thread::spawn(move || serve(conn, &h));
            }
        });
        Scripted {
            port,
            connections,
            heads,
        }
    }
}

fn serve(conn: TcpStream, heads: &Mutex<Vec<String>>) {
    let mut reader = BufReader::new(conn.try_clone().expect("clone"));
    let mut out = conn;
    let mut served = 0;
    loop {
        let mut head = String::new();
        loop {
            let mut line = String::new();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            if line == "\r\n" {
                break;
            }
            head.push_str(&line);
        }
        heads.lock().expect("heads").push(head.clone());
        // A request's body of known length is read, and answered by `/echo-body`.
        let length = head
            .lines()
            .filter_map(|l| l.split_once(':'))
            .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.trim().parse::<usize>().ok())
            .unwrap_or(0);
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let path = head.split(' ').nth(1).unwrap_or("/").to_string();
        served += 1;
        let w = |out: &mut TcpStream, bytes: &[u8]| {
            let _ = out.write_all(bytes);
        };
        match path.as_str() {
            "/cl" => w(&mut out, b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Up: cl\r\n\r\nhello"),
            "/spelled" => w(
                &mut out,
                b"HTTP/1.1 203 Tile From Elsewhere\r\nX-MiXeD-Case: 1\r\nset-COOKIE: a=1\r\nDate: Mon, 01 Jan 2001 00:00:00 GMT\r\nset-COOKIE: b=2\r\nContent-Length: 4\r\n\r\ntile",
            ),
            "/chunked" => w(
                &mut out,
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Up: chunked\r\n\r\n3\r\nhel\r\n2\r\nlo\r\n0\r\n\r\n",
            ),
            // Chunks with a trailer after the last one.
            "/trailers" => w(
                &mut out,
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-T\r\n\r\n3\r\nhel\r\n2\r\nlo\r\n0\r\nX-T: v\r\n\r\n",
            ),
            "/close" => {
                w(&mut out, b"HTTP/1.1 200 OK\r\nX-Up: close\r\n\r\nhello until close");
                return;
            }
            // An HTTP/1.0 server: no length, the body ends when it closes.
            "/http10" => {
                w(&mut out, b"HTTP/1.0 200 OK\r\nX-Up: http10\r\n\r\nold server");
                return;
            }
            "/204" => w(&mut out, b"HTTP/1.1 204 No Content\r\nX-Up: 204\r\n\r\n"),
            // A 204 with a length it must not have: there is no body all the same.
            "/204-length" => w(
                &mut out,
                b"HTTP/1.1 204 No Content\r\nContent-Length: 7\r\nX-Up: 204\r\n\r\n",
            ),
            "/204-zero" => w(
                &mut out,
                b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\nX-Up: 204\r\n\r\n",
            ),
            // A 204 with framing it must not have: no body is read, none is written.
            "/204-chunked" => w(
                &mut out,
                b"HTTP/1.1 204 No Content\r\nTransfer-Encoding: chunked\r\nX-Up: 204\r\n\r\n",
            ),
            "/304" => w(&mut out, b"HTTP/1.1 304 Not Modified\r\nETag: \"t1\"\r\nX-Up: 304\r\n\r\n"),
            "/continue" => w(
                &mut out,
                b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
            ),
            "/hop" => w(
                &mut out,
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive, X-Up-Hop\r\nX-Up-Hop: secret\r\nKeep-Alive: timeout=30\r\nX-Up: hop\r\n\r\nok",
            ),
            // The body's framing named by `Connection`: it is the answer's all the same.
            "/hop-length" => w(
                &mut out,
                b"HTTP/1.1 200 OK\r\nConnection: Content-Length\r\nContent-Length: 5\r\n\r\nhello",
            ),
            "/hop-chunked" => w(
                &mut out,
                b"HTTP/1.1 200 OK\r\nConnection: Transfer-Encoding\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            ),
            "/tile" => w(
                &mut out,
                b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nCache-Control: max-age=300\r\nETag: \"t1\"\r\nContent-Length: 5\r\n\r\ntile!",
            ),
            "/varied" => w(
                &mut out,
                b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nCache-Control: max-age=300\r\nVary: Accept\r\nContent-Length: 6\r\n\r\nvaried",
            ),
            "/text" => {
                let body = "text ".repeat(40);
                w(
                    &mut out,
                    format!("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}", body.len()).as_bytes(),
                );
            }
            "/echo" => {
                let body = head.clone();
                w(
                    &mut out,
                    format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}", body.len()).as_bytes(),
                );
            }
            // Half the promised body, then gone.
            "/short" => {
                w(&mut out, b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello");
                return;
            }
            // The same with a body too large to be relayed whole (it streams).
            "/short-large" => {
                w(&mut out, b"HTTP/1.1 200 OK\r\nContent-Length: 1048576\r\n\r\n");
                w(&mut out, &[b'L'; 1000]);
                return;
            }
            "/garbage" => {
                w(&mut out, b"NOT HTTP AT ALL\r\n\r\n");
                return;
            }
            p if p.starts_with("/wait") => {
                thread::sleep(Duration::from_millis(300));
                w(&mut out, b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nwaited");
            }
            "/echo-body" => w(
                &mut out,
                &[format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len()).as_bytes(), &body].concat(),
            ),
            "/slow" => {
                thread::sleep(Duration::from_millis(1500));
                w(&mut out, b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nslow");
            }
            "/big" => {
                let body = vec![b'B'; 4 << 20];
                w(&mut out, format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len()).as_bytes());
                w(&mut out, &body);
            }
            // Answers the first request of a connection; a connection's later requests are
            // dropped unanswered (as an upstream that closed an idle connection the moment it
            // was reused).
            "/once" if served > 1 => return,
            "/once" => w(&mut out, b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nonce"),
            _ => w(&mut out, b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"),
        }
    }
}

fn gateway(up: &Scripted, fast: &str) -> (ConfigDir, GatewayProcess) {
    let yml = format!(
        "http:\n  port: ${{PORT}}\nadmin:\n  port: ${{ADMIN_PORT}}\n  host: 127.0.0.1\napiEndpoints:\n  all:\n    paths: '/*'\nserviceEndpoints:\n  up:\n    url: 'http://127.0.0.1:{}'\npolicies: [proxy, cors]\npipelines:\n  p:\n    apiEndpoints: [all]\n    policies:\n      - cors:\n      - proxy:\n          - action: {{serviceEndpoint: up, readTimeout: 800}}\n",
        up.port
    );
    let dir = ConfigDir::new(&yml);
    let gw = GatewayProcess::start_with(&dir, &["--fast-path", fast], &[]);
    (dir, gw)
}

/// One request on a fresh connection; the parts of the answer both paths must agree on.
fn answer(port: u16, method: &str, path: &str) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let raw = format!("{method} {path} HTTP/1.1\r\nHost: tiles\r\nOrigin: http://map\r\nConnection: close\r\n\r\n");
    let r = request(port, &raw, method == "HEAD");
    let mut headers: Vec<(String, String)> = r
        .headers
        .iter()
        .filter(|(k, _)| !k.eq_ignore_ascii_case("date"))
        .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
        .collect();
    headers.sort();
    (r.status, headers, r.body)
}

#[test]
fn every_framing_reaches_the_client_as_on_the_general_path() {
    let up = Scripted::start();
    let (_d1, fast) = gateway(&up, "on");
    let (_d2, general) = gateway(&up, "off");
    let cases = [
        ("GET", "/cl"),
        ("HEAD", "/cl"),
        ("GET", "/chunked"),
        ("GET", "/close"),
        ("GET", "/204"),
        ("GET", "/304"),
        ("GET", "/continue"),
        ("GET", "/nothing-here"),
        ("GET", "/healthcheck"),
    ];
    for (method, path) in cases {
        let a = answer(fast.port, method, path);
        let b = answer(general.port, method, path);
        assert_eq!(a, b, "{method} {path}: fast path vs general path");
    }
    let (status, headers, body) = answer(fast.port, "GET", "/chunked");
    assert_eq!((status, body.as_slice()), (200, &b"hello"[..]));
    assert!(headers.contains(&("access-control-allow-origin".into(), "*".into())));
    let (status, _, body) = answer(fast.port, "GET", "/close");
    assert_eq!((status, body.as_slice()), (200, &b"hello until close"[..]));
    let (status, _, body) = answer(fast.port, "HEAD", "/cl");
    assert_eq!((status, body.len()), (200, 0));
    assert_eq!(answer(fast.port, "GET", "/304").0, 304);
}

/// RFC 9110 §15.2: an HTTP/1.0 client gets no informational answer (it would take it for the
/// final one), on either path, with a body or without; an HTTP/1.1 client gets it.
#[test]
fn an_http10_client_gets_no_informational_answer() {
    use std::io::{Read, Write};
    let up = Scripted::start();
    for fast in ["on", "off"] {
        let (_dir, gw) = gateway(&up, fast);
        for (version, body) in [("1.0", ""), ("1.0", "hi"), ("1.1", "")] {
            let method = if body.is_empty() { "GET" } else { "POST" };
            let raw = format!(
                "{method} /continue HTTP/{version}\r\nHost: tiles\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let mut s = std::net::TcpStream::connect(("127.0.0.1", gw.port)).expect("connect");
            s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
                .expect("timeout");
            s.write_all(raw.as_bytes()).expect("send");
            let mut out = Vec::new();
            let _ = s.read_to_end(&mut out);
            let out = String::from_utf8_lossy(&out);
            let expected = match version {
                "1.0" => "HTTP/1.1 200 ",
                _ => "HTTP/1.1 100 ",
            };
            assert!(
                out.starts_with(expected) && out.ends_with("\r\n\r\nok"),
                "--fast-path {fast}, {method} HTTP/{version}: {out:?}"
            );
        }
    }
}

/// A malformed head gets the gateway's own 400 on both paths, counted as such, and reaches
/// no upstream.
#[test]
fn a_malformed_head_is_refused_alike_on_both_paths() {
    let up = Scripted::start();
    let heads = [
        "GET /ok HTTP/1.1\r\nHost: tiles\r\nX-Bad: a\x01b\r\n\r\n",
        "GET /ok?q=a>b HTTP/1.1\r\nHost: tiles\r\n\r\n",
        "HEAD /ok HTTP/1.1\r\nHo st: tiles\r\n\r\n",
        "OPTIONS /ok HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    ];
    let mut seen = Vec::new();
    for fast in ["on", "off"] {
        let (_dir, gw) = gateway(&up, fast);
        for raw in heads {
            // A HEAD's 400 has no body (RFC 9110 §9.3.2).
            let head = raw.starts_with("HEAD ");
            let r = request(gw.port, raw, head);
            let text = if head { "" } else { "Bad Request" };
            assert_eq!(
                (r.status, r.text(), r.header("server")),
                (400, text.to_string(), None),
                "--fast-path {fast}: {raw:?}"
            );
        }
        let closed = "tollgate_client_connections_closed_total{reason=\"malformed\"}";
        let n = heads.len() as f64;
        assert_eq!(gw.metric_when(closed, |v| v >= n), n, "--fast-path {fast}");
        seen.push(up.heads.lock().unwrap().len());
    }
    assert_eq!(seen, [0, 0], "a malformed head reached the upstream");
}

#[test]
fn a_close_delimited_body_goes_to_a_keep_alive_client_in_chunks() {
    let up = Scripted::start();
    let (_d, gw) = gateway(&up, "on");
    let mut s = connect(gw.port, 10);
    for _ in 0..3 {
        s.write_all(b"GET /close HTTP/1.1\r\nHost: tiles\r\n\r\n")
            .expect("send");
        let r = read_response(&mut s, false);
        assert_eq!(r.status, 200);
        assert_eq!(r.header("transfer-encoding"), Some("chunked"));
        assert_eq!(r.text(), "hello until close");
    }
}

/// `Connection: close` on a second `Connection` line closes the connection too.
#[test]
fn close_on_any_connection_line_closes_the_connection() {
    let up = Scripted::start();
    for fast in ["on", "off"] {
        let (_d, gw) = gateway(&up, fast);
        let mut s = connect(gw.port, 10);
        s.write_all(
            b"GET /cl HTTP/1.1\r\nHost: tiles\r\nConnection: keep-alive\r\nConnection: close\r\n\r\n",
        )
        .expect("send");
        let all = String::from_utf8_lossy(&read_to_close(&mut s)).to_ascii_lowercase();
        assert!(all.starts_with("http/1.1 200"), "fast path {fast}: {all}");
        assert!(
            all.contains("connection: close\r\n"),
            "fast path {fast}: {all}"
        );
        assert!(all.ends_with("\r\n\r\nhello"), "fast path {fast}: {all}");
    }
}

/// A 204 has no body, whatever length or framing the upstream gives it: none is read or
/// written, no `Content-Length` nor `Transfer-Encoding` is sent (RFC 9110 §8.6, RFC 9112 §6.1),
/// from the upstream or from the cache, and the connection serves the next request.
#[test]
fn a_204_goes_out_without_a_length_and_its_connection_serves_on() {
    let up = Scripted::start();
    for fast in ["on", "off"] {
        for cached in [false, true] {
            let (_d, gw) = if cached {
                caching_gateway(&up, fast)
            } else {
                gateway(&up, fast)
            };
            let mut s = connect(gw.port, 10);
            // Each 204 twice: stored by the first, a hit the second time with the cache.
            for (i, path) in ["/204-length", "/204-zero", "/204", "/204-chunked", "/cl"]
                .repeat(2)
                .into_iter()
                .enumerate()
            {
                s.write_all(format!("GET {path} HTTP/1.1\r\nHost: tiles\r\n\r\n").as_bytes())
                    .expect("send");
                let r = read_response(&mut s, false);
                let what = format!("fast path {fast}, cache {cached}, {path}: {:?}", r.headers);
                if path == "/cl" {
                    assert_eq!((r.status, r.text().as_str()), (200, "hello"), "{what}");
                } else {
                    assert_eq!(r.status, 204, "{what}");
                    assert_eq!(r.header("content-length"), None, "{what}");
                    assert_eq!(r.header("transfer-encoding"), None, "{what}");
                    assert!(r.body.is_empty(), "{what}");
                    // Stored but for the one whose length is not its body's.
                    if cached && i >= 5 && path != "/204-length" {
                        assert_eq!(r.header("x-cache-status"), Some("HIT"), "{what}");
                    }
                }
            }
        }
    }
}

/// The gateway answers in its own HTTP version whatever the upstream's, and frames a body of
/// unknown length as each client can read it: in chunks for HTTP/1.1, until the connection
/// closes for HTTP/1.0 (which knows no chunks).
#[test]
fn an_answer_is_framed_for_the_clients_version_whatever_the_upstreams() {
    let up = Scripted::start();
    for fast in ["on", "off"] {
        framed_for_the_clients_version(&up, fast);
    }
}

fn framed_for_the_clients_version(up: &Scripted, fast: &str) {
    let (_d, gw) = gateway(up, fast);
    let mut s = connect(gw.port, 10);
    s.write_all(b"GET /http10 HTTP/1.1\r\nHost: tiles\r\n\r\n")
        .expect("send");
    let r = read_response(&mut s, false);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("transfer-encoding"), Some("chunked"));
    assert_eq!(r.text(), "old server");
    s.write_all(b"GET /http10 HTTP/1.1\r\nHost: tiles\r\nConnection: close\r\n\r\n")
        .expect("send");
    let raw = read_to_close(&mut s);
    assert!(
        raw.starts_with(b"HTTP/1.1 200 "),
        "{}",
        String::from_utf8_lossy(&raw)
    );
    for path in ["/http10", "/chunked", "/close"] {
        let mut s = connect(gw.port, 10);
        let req = format!("GET {path} HTTP/1.0\r\nHost: tiles\r\nConnection: keep-alive\r\n\r\n");
        s.write_all(req.as_bytes()).expect("send");
        let raw = String::from_utf8_lossy(&read_to_close(&mut s)).to_string();
        let (head, body) = raw.split_once("\r\n\r\n").expect("a head");
        assert!(head.starts_with("HTTP/1.1 200 "), "{path}: {raw}");
        let lower = head.to_ascii_lowercase();
        assert!(
            !lower.contains("transfer-encoding"),
            "{path}: chunks to HTTP/1.0: {raw}"
        );
        assert!(lower.contains("connection: close"), "{path}: {raw}");
        let expected = match path {
            "/http10" => "old server",
            "/chunked" => "hello",
            _ => "hello until close",
        };
        assert_eq!(body, expected, "{path}");
    }
    // Nor on a head of a chunked answer (a HEAD's), which has no body to frame.
    let mut s = connect(gw.port, 10);
    s.write_all(b"HEAD /chunked HTTP/1.0\r\nHost: tiles\r\n\r\n")
        .expect("send");
    let raw = String::from_utf8_lossy(&read_to_close(&mut s)).to_ascii_lowercase();
    assert!(raw.starts_with("http/1.1 200 "), "HEAD: {raw}");
    assert!(
        !raw.contains("transfer-encoding"),
        "HEAD: chunks to HTTP/1.0: {raw}"
    );
}

/// An upstream's chunked answer with a trailer ends once for the client: the connection then
/// serves the next request (the fast path ended it twice, and the client read the second end
/// as the next answer).
#[test]
fn a_chunked_answer_with_a_trailer_ends_once() {
    let up = Scripted::start();
    for fast in ["on", "off"] {
        let (_d, gw) = gateway(&up, fast);
        let mut s = connect(gw.port, 10);
        for _ in 0..2 {
            s.write_all(b"GET /trailers HTTP/1.1\r\nHost: tiles\r\n\r\n")
                .expect("send");
            let r = read_response(&mut s, false);
            assert_eq!((r.status, r.text().as_str()), (200, "hello"), "{fast}");
        }
        s.write_all(b"GET /cl HTTP/1.1\r\nHost: tiles\r\nConnection: close\r\n\r\n")
            .expect("send");
        let raw = String::from_utf8_lossy(&read_to_close(&mut s)).to_string();
        assert!(
            raw.starts_with("HTTP/1.1 200 ") && raw.ends_with("\r\n\r\nhello"),
            "fast path {fast}: {raw:?}"
        );
    }
}

#[test]
fn hop_by_hop_headers_stay_on_their_connection() {
    for fast in ["on", "off"] {
        hop_by_hop_headers_stay_on_their_connection_with(fast);
    }
}

fn hop_by_hop_headers_stay_on_their_connection_with(fast: &str) {
    let up = Scripted::start();
    let (_d, gw) = gateway(&up, fast);
    let raw = "GET /echo HTTP/1.1\r\nHost: tiles\r\nConnection: keep-alive, X-Client-Hop\r\nX-Client-Hop: 1\r\nKeep-Alive: timeout=300\r\nTE: trailers\r\nX-Kept: yes\r\n\r\n";
    let mut s = connect(gw.port, 10);
    s.write_all(raw.as_bytes()).expect("send");
    let r = read_response(&mut s, false);
    let sent = r.text().to_ascii_lowercase();
    assert!(sent.contains("x-kept: yes"), "{sent}");
    for gone in ["x-client-hop", "keep-alive", "te:", "connection:"] {
        assert!(
            !sent.contains(gone),
            "fast path {fast}: `{gone}` reached the upstream:\n{sent}"
        );
    }
    s.write_all(b"GET /hop HTTP/1.1\r\nHost: tiles\r\n\r\n")
        .expect("send");
    let r = read_response(&mut s, false);
    assert_eq!((r.status, r.text().as_str()), (200, "ok"));
    assert_eq!(r.header("x-up"), Some("hop"));
    assert_eq!(
        r.header("x-up-hop"),
        None,
        "fast path {fast}: {:?}",
        r.headers
    );
    assert_eq!(
        r.header("keep-alive"),
        None,
        "fast path {fast}: {:?}",
        r.headers
    );
    assert_eq!(r.header("connection"), Some("keep-alive"));
    // An answer whose `Connection` names its framing keeps it, and the connection serves on:
    // the next request, sent with it, is answered.
    for path in ["/hop-length", "/hop-chunked"] {
        let mut pending = Vec::new();
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: tiles\r\n\r\nGET /hop HTTP/1.1\r\nHost: tiles\r\n\r\n")
                .as_bytes(),
        )
        .expect("send");
        let r = read_next_response(&mut s, &mut pending, false);
        assert_eq!(
            (r.status, r.text().as_str()),
            (200, "hello"),
            "fast path {fast}: {path}"
        );
        assert!(
            r.header("content-length").is_some() || r.header("transfer-encoding").is_some(),
            "fast path {fast}: {path} lost its framing: {:?}",
            r.headers
        );
        let r = read_next_response(&mut s, &mut pending, false);
        assert_eq!(
            (r.status, r.text().as_str()),
            (200, "ok"),
            "fast path {fast}: the request after {path}"
        );
    }
}

/// An answer read whole is written with a head made from the upstream's: its reason, its
/// headers' spelling and order, the gateway's `Date`; a reply of the gateway's own to a HEAD has
/// its length and no body; the connection serves the next request after both.
#[test]
fn answers_written_on_the_connection_keep_the_upstreams_head_and_the_connection() {
    let up = Scripted::start();
    let (_d, gw) = gateway(&up, "on");
    let mut s = connect(gw.port, 10);
    s.write_all(b"GET /spelled HTTP/1.1\r\nHost: tiles\r\nOrigin: http://map\r\n\r\n")
        .expect("send");
    let r = read_response(&mut s, false);
    assert_eq!((r.status, r.text().as_str()), (203, "tile"));
    let names: Vec<&str> = r.headers.iter().map(|(k, _)| k.as_str()).collect();
    let at = |name: &str| names.iter().position(|n| *n == name);
    assert!(at("X-MiXeD-Case").is_some(), "{names:?}");
    let cookies: Vec<&str> = r
        .headers
        .iter()
        .filter(|(k, _)| k == "set-COOKIE")
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(cookies, ["a=1", "b=2"], "{:?}", r.headers);
    assert!(at("X-MiXeD-Case") < at("set-COOKIE"), "{names:?}");
    let date = r.header("date").expect("a Date");
    assert!(
        !date.contains("2001"),
        "the upstream's Date went out: {date}"
    );
    assert_eq!(
        r.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case("date"))
            .count(),
        1
    );
    assert_eq!(r.header("content-length"), Some("4"));
    assert_eq!(r.header("access-control-allow-origin"), Some("*"));
    assert_eq!(r.header("connection"), Some("keep-alive"));
    s.write_all(b"HEAD /healthcheck HTTP/1.1\r\nHost: tiles\r\n\r\n")
        .expect("send");
    let r = read_response(&mut s, true);
    assert_eq!(r.status, 200);
    assert!(r.body.is_empty());
    assert_eq!(r.header("content-length"), Some("2"), "{:?}", r.headers);
    s.write_all(b"GET /cl HTTP/1.1\r\nHost: tiles\r\n\r\n")
        .expect("send");
    let r = read_response(&mut s, false);
    assert_eq!((r.status, r.text().as_str()), (200, "hello"));
}

#[test]
fn upstream_failures_and_timeouts_are_502_and_the_client_connection_survives_none() {
    let up = Scripted::start();
    let (_d, gw) = gateway(&up, "on");
    for path in ["/garbage", "/slow"] {
        let (status, _, body) = answer(gw.port, "GET", path);
        assert_eq!(
            (status, body.as_slice()),
            (502, &b"Bad gateway."[..]),
            "{path}"
        );
    }
    // Nobody listens on port 1.
    let dead_port = 1;
    let dir = ConfigDir::new(&format!(
        "http:\n  port: ${{PORT}}\nadmin:\n  port: ${{ADMIN_PORT}}\n  host: 127.0.0.1\napiEndpoints:\n  all:\n    paths: '/*'\nserviceEndpoints:\n  up:\n    url: 'http://127.0.0.1:{dead_port}'\npolicies: [proxy]\npipelines:\n  p:\n    apiEndpoints: [all]\n    policies:\n      - proxy: [{{action: {{serviceEndpoint: up}}}}]\n"
    ));
    let refused = GatewayProcess::start_with(&dir, &["--fast-path", "on"], &[]);
    assert_eq!(answer(refused.port, "GET", "/x").0, 502);
    // The request is accounted for once its answer is out.
    let counted = (0..100).any(|_| {
        thread::sleep(Duration::from_millis(20));
        refused.metric("tollgate_upstream_errors_total{kind=\"refused\"}") >= 1.0
    });
    assert!(counted, "{}", refused.log_text());
    // A body cut short, relayed whole: nothing of it went out, so the client gets a 502 (a
    // tile is not answered truncated), and its connection is closed.
    let text = support::send_until_close(gw.port, b"GET /short HTTP/1.1\r\nHost: tiles\r\n\r\n");
    assert!(text.starts_with("HTTP/1.1 502"), "{text}");
    assert!(text.ends_with("Bad gateway."), "{text}");
    // Streamed: the head and what came went out, then the connection is closed before the
    // promised length.
    let text =
        support::send_until_close(gw.port, b"GET /short-large HTTP/1.1\r\nHost: tiles\r\n\r\n");
    assert!(
        text.starts_with("HTTP/1.1 200"),
        "{}",
        &text[..text.len().min(300)]
    );
    assert!(
        text.ends_with(&"L".repeat(1000)) && !text.ends_with(&"L".repeat(1001)),
        "the connection must close after what came: {} bytes",
        text.len()
    );
}

#[test]
fn upstream_connections_are_reused_and_a_dropped_one_is_replaced() {
    let up = Scripted::start();
    let (_d, gw) = gateway(&up, "on");
    let mut s = connect(gw.port, 10);
    for _ in 0..50 {
        s.write_all(b"GET /cl HTTP/1.1\r\nHost: tiles\r\n\r\n")
            .expect("send");
        assert_eq!(read_response(&mut s, false).text(), "hello");
    }
    // One client connection lives on one worker thread, whose pool kept one connection.
    assert_eq!(up.connections.load(Ordering::SeqCst), 1);
    // Each pooled connection is dropped when reused: every request is sent again on a new
    // connection, and every client gets its answer.
    for _ in 0..20 {
        s.write_all(b"GET /once HTTP/1.1\r\nHost: tiles\r\n\r\n")
            .expect("send");
        let r = read_response(&mut s, false);
        assert_eq!((r.status, r.text().as_str()), (200, "once"));
    }
    assert!(up.connections.load(Ordering::SeqCst) >= 20);
    assert_eq!(gw.metric_sum("tollgate_upstream_errors_total"), 0.0);
}

/// With several pooled connections, every one dropped by the upstream when reused, a request
/// broken on one is sent again on a new connection, not on the next pooled one (which broke
/// too, and the client got a 502: on Pingora's path, every HTTP/2 request's and every PUT's),
/// on both paths.
#[test]
fn a_request_broken_on_a_pooled_connection_is_sent_again_on_a_new_one() {
    for fast in ["on", "off"] {
        let up = Scripted::start();
        let (_d, gw) = gateway(&up, fast);
        let port = gw.port;
        let clients: Vec<_> = (0..16)
            .map(|_| {
                thread::spawn(move || {
                    let mut s = connect(port, 10);
                    let mut statuses = Vec::new();
                    for _ in 0..40 {
                        s.write_all(b"GET /once HTTP/1.1\r\nHost: tiles\r\n\r\n")
                            .expect("send");
                        let r = read_response(&mut s, false);
                        statuses.push((r.status, r.text()));
                        if r.status != 200 {
                            s = connect(port, 10);
                        }
                    }
                    statuses
                })
            })
            .collect();
        for c in clients {
            for (status, text) in c.join().expect("client") {
                assert_eq!((status, text.as_str()), (200, "once"), "fast path {fast}");
            }
        }
        assert_eq!(
            gw.metric_sum("tollgate_upstream_errors_total"),
            0.0,
            "fast path {fast}"
        );
    }
}

/// A 502 for an upstream's failure leaves the client's connection open for its next request
/// (as EG's and nginx's): during an outage a browser's tiles each opened a connection (over
/// TLS, a handshake each).
#[test]
fn a_502_keeps_the_clients_connection() {
    let up = Scripted::start();
    let dead = support::free_port();
    let yml = format!(
        "http:\n  port: ${{PORT}}\nadmin:\n  port: ${{ADMIN_PORT}}\n  host: 127.0.0.1\napiEndpoints:\n  dead: {{paths: '/dead/*'}}\n  all: {{paths: '/*'}}\nserviceEndpoints:\n  dead: {{url: 'http://127.0.0.1:{dead}'}}\n  up: {{url: 'http://127.0.0.1:{}'}}\npolicies: [proxy]\npipelines:\n  d: {{apiEndpoints: [dead], policies: [{{proxy: {{action: {{serviceEndpoint: dead}}}}}}]}}\n  p: {{apiEndpoints: [all], policies: [{{proxy: {{action: {{serviceEndpoint: up}}}}}}]}}\n",
        up.port
    );
    let dir = ConfigDir::new(&yml);
    let gw = GatewayProcess::start(&dir);
    let mut s = connect(gw.port, 10);
    for _ in 0..3 {
        s.write_all(b"GET /dead/1.png HTTP/1.1\r\nHost: tiles\r\n\r\n")
            .expect("send");
        let r = read_response(&mut s, false);
        assert_eq!(r.status, 502, "{}", r.text());
        assert_ne!(r.header("connection"), Some("close"), "{:?}", r.headers);
    }
    s.write_all(b"GET /cl HTTP/1.1\r\nHost: tiles\r\n\r\n")
        .expect("the next request on the same connection");
    assert_eq!(read_response(&mut s, false).text(), "hello");
}

#[test]
fn a_client_leaving_mid_body_costs_only_its_own_request() {
    let up = Scripted::start();
    let (_d, gw) = gateway(&up, "on");
    for _ in 0..5 {
        let mut s = TcpStream::connect(("127.0.0.1", gw.port)).expect("connect");
        s.write_all(b"GET /big HTTP/1.1\r\nHost: tiles\r\n\r\n")
            .expect("send");
        let mut first = [0u8; 1024];
        let _ = s.read(&mut first);
        drop(s);
    }
    thread::sleep(Duration::from_millis(300));
    let (status, _, body) = answer(gw.port, "GET", "/cl");
    assert_eq!((status, body.as_slice()), (200, &b"hello"[..]));
    assert!(gw.error_lines().is_empty(), "{}", gw.log_text());
}

#[test]
fn what_the_fast_path_leaves_to_the_general_path_is_served_there() {
    let up = Scripted::start();
    let (_d, gw) = gateway(&up, "on");
    // A body, an upgrade request, and a head Pingora's parser judges: all answered.
    let r = request(
        gw.port,
        "POST /echo HTTP/1.1\r\nHost: tiles\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc",
        false,
    );
    assert_eq!(r.status, 200);
    assert!(r.text().starts_with("POST /echo"), "{}", r.text());
    let r = request(
        gw.port,
        "GET /cl HTTP/1.1\r\nHost: tiles\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        false,
    );
    assert_eq!((r.status, r.text().as_str()), (200, "hello"));
    let r = request(
        gw.port,
        "GET /cl HTTP/1.1\r\nHost: tiles\r\nContent-Length: x\r\nConnection: close\r\n\r\n",
        false,
    );
    assert_eq!(r.status, 400);
    let r = request(
        gw.port,
        "GET /cl HTTP/1.1\r\nHost: tiles\r\nNo colon here\r\nConnection: close\r\n\r\n",
        false,
    );
    assert_eq!(r.status, 400);
    // A pipeline that compresses: its decision goes along to Pingora's proxy, which
    // compresses; the pipeline ran once (one request reached the upstream).
    let dir = ConfigDir::new(&format!(
        "http:\n  port: ${{PORT}}\napiEndpoints:\n  all:\n    paths: '/*'\nserviceEndpoints:\n  up:\n    url: 'http://127.0.0.1:{}'\npolicies: [proxy, compression]\npipelines:\n  p:\n    apiEndpoints: [all]\n    policies:\n      - compression:\n      - proxy: [{{action: {{serviceEndpoint: up}}}}]\n",
        up.port
    ));
    let compressing = GatewayProcess::start_with(&dir, &["--fast-path", "on"], &[]);
    let before = up.heads.lock().expect("heads").len();
    let r: Response = request(
        compressing.port,
        "GET /text HTTP/1.1\r\nHost: tiles\r\nAccept-Encoding: gzip\r\nConnection: close\r\n\r\n",
        false,
    );
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-encoding"),
        Some("gzip"),
        "{:?}",
        r.headers
    );
    let mut text = String::new();
    flate2::read::GzDecoder::new(&r.body[..])
        .read_to_string(&mut text)
        .expect("gzip");
    assert_eq!(text, "text ".repeat(40));
    assert_eq!(up.heads.lock().expect("heads").len(), before + 1);
}

fn caching_gateway(up: &Scripted, fast: &str) -> (ConfigDir, GatewayProcess) {
    caching_gateway_with(up, fast, "")
}

/// The caching pipeline with `steps` (YAML list items) before its cache step.
fn caching_gateway_with(up: &Scripted, fast: &str, steps: &str) -> (ConfigDir, GatewayProcess) {
    let yml = format!(
        "http:\n  port: ${{PORT}}\nadmin:\n  port: ${{ADMIN_PORT}}\n  host: 127.0.0.1\napiEndpoints:\n  all:\n    paths: '/*'\nserviceEndpoints:\n  up:\n    url: 'http://127.0.0.1:{}'\npolicies: [proxy, cors, cache, response-transformer]\npipelines:\n  p:\n    apiEndpoints: [all]\n    policies:\n      - cors:\n{steps}      - cache:\n      - proxy: [{{action: {{serviceEndpoint: up}}}}]\n",
        up.port
    );
    let dir = ConfigDir::new(&yml);
    let gw = GatewayProcess::start_with(&dir, &["--fast-path", fast], &[]);
    (dir, gw)
}

/// A request with extra headers on a fresh connection; the answer without `Date` and `Age`.
fn answer_with(
    port: u16,
    method: &str,
    path: &str,
    extra: &str,
) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let raw = format!("{method} {path} HTTP/1.1\r\nHost: tiles\r\nOrigin: http://map\r\n{extra}Connection: close\r\n\r\n");
    let r = request(port, &raw, method == "HEAD");
    let mut headers: Vec<(String, String)> = r
        .headers
        .iter()
        .filter(|(k, _)| !k.eq_ignore_ascii_case("date") && !k.eq_ignore_ascii_case("age"))
        .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
        .collect();
    headers.sort();
    (r.status, headers, r.body)
}

#[test]
fn fresh_tiles_from_the_cache_are_the_same_on_both_paths() {
    let up = Scripted::start();
    let (_d1, fast) = caching_gateway(&up, "on");
    let (_d2, general) = caching_gateway(&up, "off");
    // Misses: the fast path fetches and stores the tile itself, the general path through
    // Pingora's cache phases; the client sees the same answer.
    for path in ["/tile", "/varied"] {
        let a = answer_with(fast.port, "GET", path, "");
        let b = answer_with(general.port, "GET", path, "");
        assert_eq!(a, b, "GET {path} (a miss): fast path vs general path");
        assert_eq!(a.0, 200);
        assert!(
            a.1.contains(&("x-cache-status".into(), "MISS".into())),
            "{:?}",
            a.1
        );
    }
    let heads_before = up.heads.lock().expect("heads").len();
    let cases = [
        ("GET", "/tile", ""),
        ("HEAD", "/tile", ""),
        ("GET", "/tile", "If-None-Match: \"t1\"\r\n"),
        ("GET", "/tile", "Range: bytes=0-1\r\n"),
        ("GET", "/varied", "Accept: image/png\r\n"),
    ];
    for (method, path, extra) in cases {
        let a = answer_with(fast.port, method, path, extra);
        let b = answer_with(general.port, method, path, extra);
        assert_eq!(a, b, "{method} {path} {extra:?}: fast path vs general path");
    }
    let (status, headers, body) = answer_with(fast.port, "GET", "/tile", "");
    assert_eq!((status, body.as_slice()), (200, &b"tile!"[..]));
    assert!(
        headers.contains(&("x-cache-status".into(), "HIT".into())),
        "{headers:?}"
    );
    assert!(
        headers.contains(&("access-control-allow-origin".into(), "*".into())),
        "{headers:?}"
    );
    let r = request(
        fast.port,
        "GET /tile HTTP/1.1\r\nHost: tiles\r\nConnection: close\r\n\r\n",
        false,
    );
    assert!(
        r.header("age").is_some_and(|a| a.parse::<u64>().is_ok()),
        "{:?}",
        r.headers
    );
    // Hits did not reach the upstream (the varied tile answered from the cache too, or went
    // there once per path: either way each path behaved the same).
    let upstream_requests = up.heads.lock().expect("heads").len() - heads_before;
    assert!(
        upstream_requests <= 2,
        "{upstream_requests} requests reached the upstream"
    );
    let counted = (0..100).any(|_| {
        thread::sleep(Duration::from_millis(20));
        fast.metric("tollgate_cache_requests_total{api_endpoint=\"all\",status=\"HIT\"}") >= 4.0
    });
    assert!(counted, "{}", fast.log_text());
}

/// Reads from a connection until the peer closes it.
fn read_to_close(s: &mut TcpStream) -> Vec<u8> {
    let mut all = Vec::new();
    let _ = s.read_to_end(&mut all);
    all
}

#[test]
fn hits_keep_their_connection_and_every_kind_of_hit_is_answered_in_full() {
    let up = Scripted::start();
    let (_d, fast) = caching_gateway(&up, "on");
    assert_eq!(
        answer_with(fast.port, "GET", "/tile", "").0,
        200,
        "the fill"
    );

    // One keep-alive connection: hits one after another.
    let mut s = connect(fast.port, 10);
    for method in ["GET", "HEAD", "GET"] {
        s.write_all(format!("{method} /tile HTTP/1.1\r\nHost: tiles\r\n\r\n").as_bytes())
            .expect("send");
        let r = read_response(&mut s, method == "HEAD");
        assert_eq!(r.status, 200, "{method}");
        assert_eq!(r.header("x-cache-status"), Some("HIT"), "{:?}", r.headers);
        assert_eq!(r.header("connection"), Some("keep-alive"));
        assert_eq!(r.header("content-length"), Some("5"));
        let body: &[u8] = if method == "HEAD" { b"" } else { b"tile!" };
        assert_eq!(r.body, body, "{method}");
    }
    // Two requests in one write: the first is answered in full; the connection then ends
    // (pipelined requests are not served) rather than hanging.
    s.write_all(
        b"GET /tile HTTP/1.1\r\nHost: tiles\r\n\r\nGET /tile HTTP/1.1\r\nHost: tiles\r\n\r\n",
    )
    .expect("send");
    let all = read_to_close(&mut s);
    let text = String::from_utf8_lossy(&all);
    assert!(
        text.starts_with("HTTP/1.1 200 OK\r\n") && text.contains("\r\n\r\ntile!"),
        "{text}"
    );

    // HTTP/1.0 without keep-alive: the hit says close, and the connection closes.
    let mut s = connect(fast.port, 10);
    s.write_all(b"GET /tile HTTP/1.0\r\nHost: tiles\r\n\r\n")
        .expect("send");
    let all = read_to_close(&mut s);
    let text = String::from_utf8_lossy(&all).to_ascii_lowercase();
    assert!(
        text.contains("connection: close\r\n") && text.ends_with("\r\n\r\ntile!"),
        "{text}"
    );
    assert_eq!(
        up.heads.lock().expect("heads").len(),
        1,
        "one fill, then hits"
    );
}

/// A tile the upstream sent in chunks (or until it closed) is stored with its length: a hit
/// of it has a `Content-Length`, which an HTTP/1.0 client reads too.
#[test]
fn a_tile_that_came_without_a_length_is_a_hit_with_one() {
    let up = Scripted::start();
    for fast in ["on", "off"] {
        let (_d, gw) = caching_gateway(&up, fast);
        for (path, body) in [("/chunked", "hello"), ("/http10", "old server")] {
            let fill = answer_with(gw.port, "GET", path, "");
            assert_eq!(fill.0, 200, "{fast} {path}");
            let mut s = connect(gw.port, 10);
            for version in ["1.1", "1.0"] {
                let req = format!(
                    "GET {path} HTTP/{version}\r\nHost: tiles\r\nConnection: keep-alive\r\n\r\n"
                );
                s.write_all(req.as_bytes()).expect("send");
                let r = read_response(&mut s, false);
                let what = format!("fast path {fast}, {path}, HTTP/{version}: {:?}", r.headers);
                assert_eq!(r.header("x-cache-status"), Some("HIT"), "{what}");
                let length = body.len().to_string();
                assert_eq!(r.header("content-length"), Some(length.as_str()), "{what}");
                assert_eq!(r.header("transfer-encoding"), None, "{what}");
                assert_eq!(r.text(), body, "{what}");
            }
        }
    }
}

/// Asks a caching gateway with the pipeline `steps` for the same tile once per round, on the
/// fast path and on the general path: the same answer on both, which `check` then looks at.
fn same_on_both_paths(steps: &str, rounds: &[&str], check: impl Fn(&str, &[(String, String)])) {
    let up = Scripted::start();
    let (_d1, fast) = caching_gateway_with(&up, "on", steps);
    let (_d2, general) = caching_gateway_with(&up, "off", steps);
    for round in rounds {
        let a = answer_with(fast.port, "GET", "/tile", "");
        let b = answer_with(general.port, "GET", "/tile", "");
        assert_eq!(a, b, "{round}: fast path vs general path");
        check(round, &a.1);
    }
}

#[test]
fn a_pipeline_setting_a_header_a_hit_adds_is_the_same_on_both_paths() {
    // Accept-Ranges: the stored tile has none, a hit of a 200 of known length adds it.
    let steps = "      - response-transformer:\n          - action: {headers: {add: {Accept-Ranges: \"'none'\"}}}\n";
    same_on_both_paths(steps, &["miss", "hit"], |round, headers| {
        let ranges = headers.iter().filter(|(k, _)| k == "accept-ranges").count();
        assert_eq!(ranges, 1, "{round}: {headers:?}");
    });
}

#[test]
fn response_headers_a_pipeline_adds_to_a_hit_are_the_same_on_both_paths() {
    // One header the stored tile has (replaced) and one it has not (added).
    let steps = "      - response-transformer:\n          - action: {headers: {add: {Content-Type: \"'text/x-edited'\", X-Extra: \"'yes'\"}}}\n";
    same_on_both_paths(steps, &["miss", "hit", "hit again"], |round, headers| {
        let has = |k: &str, v: &str| headers.contains(&(k.into(), v.into()));
        assert!(has("content-type", "text/x-edited"), "{round}: {headers:?}");
        assert!(has("x-extra", "yes"), "{round}: {headers:?}");
    });
}

/// Reads `methods.len()` answers from `s`, one per request in that order (HTTP/1.1
/// pipelining: answers follow each other on the connection). Status and body of each.
fn read_answers(s: &mut TcpStream, methods: &[&str]) -> Vec<(u16, Vec<u8>)> {
    let mut pending = Vec::new();
    let answers = methods
        .iter()
        .map(|m| read_next_response(s, &mut pending, *m == "HEAD"))
        .map(|r| (r.status, r.body))
        .collect();
    assert!(
        pending.is_empty(),
        "bytes past the last answer: {:?}",
        String::from_utf8_lossy(&pending)
    );
    answers
}

/// HTTP/1.1 pipelining: requests sent in one write, before any answer, are each answered, in
/// order, and the connection serves the next request after them — on both paths, with and
/// without a cache (misses, hits, a HEAD, streamed and empty answers, the first head with 200
/// lines, the last with bare `\n` line ends).
#[test]
fn pipelined_requests_are_each_answered_in_order_on_both_paths() {
    let up = Scripted::start();
    let text = "text ".repeat(40);
    let expected: [(&str, &str, u16, &[u8]); 8] = [
        ("GET", "/cl", 200, b"hello"),
        ("GET", "/tile", 200, b"tile!"),
        ("GET", "/tile", 200, b"tile!"),
        ("HEAD", "/tile", 200, b""),
        ("GET", "/chunked", 200, b"hello"),
        ("GET", "/204", 204, b""),
        ("GET", "/cl", 200, b"hello"),
        ("GET", "/text", 200, text.as_bytes()),
    ];
    let mut batch = String::new();
    for (i, (method, path, ..)) in expected.iter().enumerate() {
        if i == 7 {
            batch.push_str(&format!("{method} {path} HTTP/1.1\nHost: tiles\n\n"));
        } else if i == 0 {
            // (More lines than the search for the next head's end read: the requests behind
            // it went to Pingora's session whole, which answered the first and closed.)
            let lines: String = (0..199).map(|n| format!("X-{n}: v\r\n")).collect();
            batch.push_str(&format!(
                "{method} {path} HTTP/1.1\r\nHost: tiles\r\n{lines}\r\n"
            ));
        } else {
            batch.push_str(&format!("{method} {path} HTTP/1.1\r\nHost: tiles\r\n\r\n"));
        }
    }
    let methods: Vec<&str> = expected.iter().map(|e| e.0).collect();
    for fast in ["on", "off"] {
        for cached in [false, true] {
            let (_dir, gw) = if cached {
                caching_gateway(&up, fast)
            } else {
                gateway(&up, fast)
            };
            let mut s = connect(gw.port, 15);
            s.write_all(batch.as_bytes()).expect("send");
            let answers = read_answers(&mut s, &methods);
            for (i, ((method, path, status, body), got)) in
                expected.iter().zip(&answers).enumerate()
            {
                let case = format!("fast path {fast}, cache {cached}: #{i} {method} {path}");
                assert_eq!(got.0, *status, "{case}");
                assert!(
                    got.1 == *body,
                    "{case}: {:?}",
                    String::from_utf8_lossy(&got.1)
                );
            }
            // The connection is still the client's.
            s.write_all(b"GET /cl HTTP/1.1\r\nHost: tiles\r\n\r\n")
                .expect("send");
            assert_eq!(
                read_answers(&mut s, &["GET"]),
                vec![(200, b"hello".to_vec())]
            );
        }
    }
}

/// HTTP/1.1 pipelining on Pingora's proxy (the requests the fast path hands over, and every
/// one with the fast path off): a next request sent in a later write, while the one before
/// waits for its upstream, is answered after it (it was taken for bytes after the body, and the
/// first request answered `400`); so is one that follows a request's body of known length in
/// the same write (the connection closed after the first answer). The client's close while it
/// waits still ends the exchange (see below).
#[test]
fn requests_pipelined_behind_one_on_pingoras_path_are_answered_after_it() {
    let up = Scripted::start();
    // (A `GET` with `Content-Length: 0`, a `POST`, a range miss through a cache: handed over.)
    let cases = [
        (
            false,
            "GET /wait HTTP/1.1\r\nHost: tiles\r\nContent-Length: 0\r\n\r\n",
            "waited",
        ),
        (
            false,
            "POST /wait HTTP/1.1\r\nHost: tiles\r\nContent-Length: 3\r\n\r\nabc",
            "waited",
        ),
        (
            true,
            "GET /wait HTTP/1.1\r\nHost: tiles\r\nRange: bytes=0-5\r\n\r\n",
            "waited",
        ),
        // (A target Pingora's session escapes: its header lines frame the body.)
        (
            false,
            "POST /wait?a b HTTP/1.1\r\nHost: tiles\r\nContent-Length: 3\r\n\r\nabc",
            "waited",
        ),
    ];
    for fast in ["on", "off"] {
        for (cached, first, body) in cases {
            let (_dir, gw) = match cached {
                true => caching_gateway(&up, fast),
                false => gateway(&up, fast),
            };
            let case = format!("fast path {fast}: {first:?}");
            let mut s = connect(gw.port, 10);
            s.write_all(first.as_bytes()).expect("send");
            // The first request is with its upstream (300 ms) when the next comes.
            thread::sleep(Duration::from_millis(100));
            s.write_all(b"GET /cl HTTP/1.1\r\nHost: tiles\r\n\r\n")
                .expect("send");
            let answers = read_answers(&mut s, &["GET", "GET"]);
            let statuses: Vec<u16> = answers.iter().map(|a| a.0).collect();
            assert!(
                statuses[0] == 200 || statuses[0] == 206,
                "{case}: {statuses:?}"
            );
            assert_eq!(answers[0].1, body.as_bytes(), "{case}");
            assert_eq!(answers[1], (200, b"hello".to_vec()), "{case}");
            // The connection is still the client's.
            s.write_all(b"GET /cl HTTP/1.1\r\nHost: tiles\r\n\r\n")
                .expect("send");
            assert_eq!(
                read_answers(&mut s, &["GET"]),
                vec![(200, b"hello".to_vec())],
                "{case}"
            );
        }
        // A batch in one write, the client's side closed after it: the close is no sign it
        // left while a next request of its is still to be answered, so the first is answered
        // (it was cut short, and nothing answered). The last, after which the client closed its
        // side, is taken as left, as nginx and Pingora take a client that half-closes.
        for first in [
            "POST /wait HTTP/1.1\r\nHost: tiles\r\nContent-Length: 3\r\n\r\nabc",
            "GET /wait HTTP/1.1\r\nHost: tiles\r\n\r\n",
        ] {
            let (_dir, gw) = gateway(&up, fast);
            let mut s = connect(gw.port, 10);
            s.write_all(format!("{first}GET /wait HTTP/1.1\r\nHost: tiles\r\n\r\n").as_bytes())
                .expect("send");
            thread::sleep(Duration::from_millis(100));
            s.shutdown(std::net::Shutdown::Write).expect("shutdown");
            let method = &first[..first.find(' ').expect("method")];
            let mut pending = Vec::new();
            let r = read_next_response(&mut s, &mut pending, method == "HEAD");
            assert_eq!(
                (r.status, r.body.as_slice()),
                (200, b"waited".as_slice()),
                "fast path {fast}: {first:?}, then the client's side closed"
            );
        }
        // A body of known length, the next request behind it in the same write.
        let (_dir, gw) = gateway(&up, fast);
        let mut s = connect(gw.port, 10);
        s.write_all(b"POST /echo-body HTTP/1.1\r\nHost: tiles\r\nContent-Length: 5\r\n\r\nabcdeGET /cl HTTP/1.1\r\nHost: tiles\r\n\r\n")
            .expect("send");
        assert_eq!(
            read_answers(&mut s, &["POST", "GET"]),
            vec![(200, b"abcde".to_vec()), (200, b"hello".to_vec())],
            "fast path {fast}: behind a body"
        );
    }
}

/// A head whose lines end in a bare `\n` is split from a request behind it in the same write
/// on both paths (it was split only as the last of a batch: Pingora's session answered it and
/// closed the connection).
#[test]
fn a_bare_lf_head_is_split_from_the_request_behind_it() {
    let up = Scripted::start();
    for fast in ["on", "off"] {
        let (_dir, gw) = gateway(&up, fast);
        let mut s = connect(gw.port, 10);
        s.write_all(b"GET /cl HTTP/1.1\nHost: tiles\n\nGET /text HTTP/1.1\r\nHost: tiles\r\n\r\n")
            .expect("send");
        let answers = read_answers(&mut s, &["GET", "GET"]);
        assert_eq!(answers[0], (200, b"hello".to_vec()), "fast path {fast}");
        assert_eq!(answers[1].0, 200, "fast path {fast}");
        s.write_all(b"GET /cl HTTP/1.1\r\nHost: tiles\r\n\r\n")
            .expect("send");
        assert_eq!(
            read_answers(&mut s, &["GET"]),
            vec![(200, b"hello".to_vec())]
        );
    }
}

/// A request line Pingora's session escapes (a space in the target) grows as it is read: what
/// the client sent after the head — here the start of its next request — is neither dropped
/// nor taken for a request of its own (the tail `T /cl` as a request with method `T`).
#[test]
fn what_follows_a_request_line_the_session_escapes_stays_the_next_requests() {
    let up = Scripted::start();
    for fast in ["on", "off"] {
        let (_dir, gw) = gateway(&up, fast);
        let mut s = connect(gw.port, 10);
        s.write_all(b"GET /c l HTTP/1.1\r\nHost: tiles\r\n\r\nGE")
            .expect("send");
        thread::sleep(Duration::from_millis(200));
        // The gateway may have closed the connection already: the rest need not arrive.
        let _ = s.write_all(b"T /cl HTTP/1.1\r\nHost: tiles\r\nConnection: close\r\n\r\n");
        let mut seen = Vec::new();
        let mut chunk = [0u8; 4096];
        while let Ok(n @ 1..) = s.read(&mut chunk) {
            seen.extend_from_slice(&chunk[..n]);
        }
        let text = String::from_utf8_lossy(&seen).to_string();
        let statuses: Vec<&str> = text
            .match_indices("HTTP/1.1 ")
            .map(|(i, _)| &text[i + 9..i + 12])
            .collect();
        assert!(
            !statuses.is_empty(),
            "fast path {fast}: no answer: {text:?}"
        );
        // The next request, when answered, is `GET /cl`.
        if statuses.len() > 1 {
            assert_eq!(statuses[1..], ["200"], "fast path {fast}: {text:?}");
            assert!(text.ends_with("hello"), "fast path {fast}: {text:?}");
        }
        let heads = up.heads.lock().expect("heads");
        assert!(
            heads.iter().all(|h| !h.starts_with("T ")),
            "fast path {fast}: the tail of a request went upstream as one: {heads:?}"
        );
    }
}

/// A client that leaves while the upstream has not answered (an upstream that never does, and
/// no `readTimeout`) ends the exchange on both paths: the upstream's connection is closed at
/// once, not held (with the client's) until the upstream answers.
#[test]
fn a_client_that_leaves_before_the_upstream_answers_ends_the_exchange() {
    for fast in ["on", "off"] {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let (tx, rx) = std::sync::mpsc::channel();
        let (read_tx, read) = std::sync::mpsc::channel();
        thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let (tx, read_tx) = (tx.clone(), read_tx.clone());
                thread::spawn(move || {
                    // The request, then nothing: how long until the gateway closes.
                    let mut buf = [0; 4096];
                    let _ = conn.read(&mut buf);
                    let _ = read_tx.send(());
                    let asked = std::time::Instant::now();
                    conn.set_read_timeout(Some(Duration::from_secs(8)))
                        .expect("timeout");
                    let closed = matches!(conn.read(&mut buf), Ok(0));
                    let _ = tx.send((closed, asked.elapsed()));
                });
            }
        });
        let yml = format!(
            "http:\n  port: ${{PORT}}\napiEndpoints:\n  all:\n    paths: '/*'\nserviceEndpoints:\n  up:\n    url: 'http://127.0.0.1:{port}'\npolicies: [proxy]\npipelines:\n  p:\n    apiEndpoints: [all]\n    policies:\n      - proxy: [{{action: {{serviceEndpoint: up}}}}]\n"
        );
        let dir = ConfigDir::new(&yml);
        let gw = GatewayProcess::start_with(&dir, &["--fast-path", fast], &[]);
        // (Also after a blank line, which a client may send between requests: no sign it is
        // still there. Taken for a next request, it kept the exchange going.)
        for after_it in ["", "\r\n"] {
            let mut s = connect(gw.port, 5);
            s.write_all(b"GET /hang HTTP/1.1\r\nHost: tiles\r\n\r\n")
                .expect("send");
            read.recv_timeout(Duration::from_secs(10))
                .expect("the request reached the upstream");
            s.write_all(after_it.as_bytes()).expect("send");
            thread::sleep(Duration::from_millis(50));
            drop(s);
            let (closed, after) = rx.recv_timeout(Duration::from_secs(10)).expect("asked");
            assert!(
                closed && after < Duration::from_secs(3),
                "fast path {fast}, {after_it:?} sent: the upstream's connection was {} after {after:?}",
                if closed { "closed" } else { "still open" }
            );
        }
        // The client's doing: no failure is logged (browsers cancel tiles all the time). (The
        // account comes just after the upstream's connection closes.)
        std::thread::sleep(Duration::from_millis(300));
        assert!(
            gw.log_text()
                .lines()
                .all(|l| !l.contains("ERROR") && !l.contains("WARN")),
            "fast path {fast}: {}",
            gw.log_text()
        );
    }
}
