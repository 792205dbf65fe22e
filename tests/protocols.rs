//! What browsers and front-ends speak through the gateway: HTTP/2 to clients on the https
//! listener (100 tiles over one connection, with curl), HTTP/2 to an upstream (hypercorn), and
//! WebSockets after the pipeline's authentication (a real echo server and client, Python's
//! `websockets`).

mod support;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::tls::SelfSigned;
use support::upstream::PyUpstream;
use support::{free_port, get, ConfigDir, GatewayProcess};

fn python() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/py/bin/python")
}

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/python")
        .join(name)
}

/// A Python server of the fixtures, killed when dropped.
struct Server(Child);

impl Server {
    fn start(script: &str, args: &[&str], port: u16) -> Server {
        let child = Command::new(python())
            .arg(fixture(script))
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start a python server (scripts/install-test-servers.sh installs target/py)");
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(15),
                "{script} did not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Server(child)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn https_gateway(up_url: &str, extra_yaml: &str) -> (ConfigDir, GatewayProcess) {
    support::tls::https_gateway(&format!(
        "admin: {{port: ${{ADMIN_PORT}}, host: 127.0.0.1}}\napiEndpoints:\n  tiles: {{paths: '/tiles/*'}}\nserviceEndpoints:\n  up: {{url: '{up_url}'}}\npolicies: [proxy]\npipelines:\n  p: {{apiEndpoints: [tiles], policies: [{{proxy: {{action: {{serviceEndpoint: up}}}}}}]}}\n{extra_yaml}"
    ))
}

/// `curl` over TLS without verification; one line of `-w` output per URL.
fn curl(args: &[&str], urls: &[String]) -> (Vec<String>, Duration) {
    let t = Instant::now();
    let mut cmd = Command::new("curl");
    cmd.arg("-sk").args(args);
    for u in urls {
        cmd.args(["-o", "/dev/null", u]);
    }
    let out = cmd
        .output()
        .expect("curl (scripts/install-deps.sh installs it)");
    let elapsed = t.elapsed();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect(),
        elapsed,
    )
}

/// A gateway whose `https` listener serves the api endpoint `tiles` (`endpoint`: its
/// definition) through a `cache` step (`cache`: its action) to `up`, with the client's host.
fn caching_https_gateway(
    up: &PyUpstream,
    endpoint: &str,
    cache: &str,
) -> (ConfigDir, GatewayProcess) {
    support::tls::https_gateway(&format!(
        "admin: {{port: ${{ADMIN_PORT}}, host: 127.0.0.1}}\napiEndpoints:\n  tiles: {endpoint}\nserviceEndpoints:\n  up: {{url: '{up}'}}\npolicies: [cache, proxy]\npipelines:\n  p: {{apiEndpoints: [tiles], policies: [{{cache: {{action: {cache}}}}}, {{proxy: {{action: {{serviceEndpoint: up, changeOrigin: false}}}}}}]}}\n",
        up = up.url("")
    ))
}

/// `GET path` over HTTP/2 to `host` (resolved to the gateway): the protocol and the
/// `X-Cache-Status`.
fn h2_cache_status(port: u16, host: &str, path: &str) -> Vec<String> {
    let resolve = format!("{host}:{port}:127.0.0.1");
    let url = format!("https://{host}:{port}{path}");
    let args = [
        "--http2",
        "--resolve",
        &resolve,
        "-w",
        "%{http_version} %header{x-cache-status}\n",
    ];
    curl(&args, &[url]).0
}

#[test]
fn http2_clients_of_two_hosts_each_get_their_hosts_tile_from_the_cache() {
    // The upstream is asked with the client's host (no changeOrigin): HTTP/2 names it in
    // `:authority`, and the cache key takes it from there as routing does.
    let up = PyUpstream::start("tiles", 5.0);
    let (_dir, gw) = caching_https_gateway(&up, "{paths: '/tiles/*'}", "{ttl: 60}");
    let fetch = |host: &str| h2_cache_status(gw.port, host, "/tiles/hosted.png");
    assert_eq!(fetch("a.example"), ["2 MISS"]);
    assert_eq!(fetch("a.example"), ["2 HIT"]);
    assert_eq!(
        fetch("b.example"),
        ["2 MISS"],
        "another host's tile was served"
    );
    assert_eq!(up.served(), 2);
    // A GET with a body (its stream goes on after the head, no Content-Length) is not cached:
    // the body goes upstream, and no key holds it.
    let resolve = format!("a.example:{}:127.0.0.1", gw.port);
    let url = format!("https://a.example:{}/tiles/with-body.png", gw.port);
    let with_body = [
        "--http2",
        "--resolve",
        &resolve,
        "-X",
        "GET",
        "--data-binary",
        "POISONED!",
        "-H",
        "Content-Length:",
        "-H",
        "Content-Type:",
        "-w",
        "%{http_version} %header{x-cache-status}\n",
    ];
    assert_eq!(curl(&with_body, std::slice::from_ref(&url)).0, ["2 BYPASS"]);
    let plain = [
        "--http2",
        "--resolve",
        &resolve,
        "-w",
        "%{http_version} %header{x-cache-status}\n",
    ];
    assert_eq!(
        curl(&plain, &[url]).0,
        ["2 MISS"],
        "the answer to a GET with a body was stored"
    );
}

/// A tile an HTTP/2 client finds stale within `staleWhileRevalidate` is refreshed in the
/// background, as for an HTTP/1 client: Pingora made the refresh's request from the HTTP/2
/// head written as `HTTP/2`, which its own reader refused — the upstream was never asked, and
/// the tile's fetch lock held off every other refresh for 30 s (it stayed STALE).
/// A conditional request whose miss is not stored (the upstream said `no-store`) gets the
/// whole tile, `200`, on HTTP/2 and HTTP/1.1 alike: its conditions were not sent upstream. Its
/// `304` on HTTP/2 went out with the tile's body after it, a stream curl resets as malformed
/// (RFC 9113 §8.1.1).
#[test]
fn a_conditional_request_whose_miss_is_not_stored_gets_the_whole_tile() {
    let up = PyUpstream::start("tiles", 5.0);
    let (_dir, gw) = caching_https_gateway(&up, "{paths: '/tiles/*'}", "{ttl: 60}");
    let resolve = format!("a.example:{}:127.0.0.1", gw.port);
    for (i, version) in ["--http2", "--http1.1"].into_iter().enumerate() {
        let url = format!(
            "https://a.example:{}/tiles/bytes/30000/nostore{i}.png?cc=no-store",
            gw.port
        );
        let args = [
            version,
            "--resolve",
            &resolve,
            "-H",
            "If-None-Match: \"v1\"",
            "-H",
            "X-Test-ETag: \"v1\"",
            "-w",
            "%{http_version} %{http_code} %{size_download} %header{x-cache-status}\n",
        ];
        let want = format!("{} 200 30000 MISS", if i == 0 { "2" } else { "1.1" });
        assert_eq!(curl(&args, &[url]).0, [want]);
    }
}

#[test]
fn a_stale_tile_an_http2_client_finds_is_refreshed_in_the_background() {
    let up = PyUpstream::start("tiles", 5.0);
    let (_dir, gw) = caching_https_gateway(
        &up,
        "{host: 'a.example', paths: '/tiles/*'}",
        "{ttl: 60, staleWhileRevalidate: 60}",
    );
    let fetch = || h2_cache_status(gw.port, "a.example", "/tiles/refreshed.png?cc=max-age%3D1");
    assert_eq!(fetch(), ["2 MISS"]);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(fetch(), ["2 STALE"]);
    let deadline = Instant::now() + Duration::from_secs(5);
    while up.served() < 2 {
        assert!(
            Instant::now() < deadline,
            "the stale tile was never refreshed: {}",
            gw.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while fetch() != ["2 HIT"] {
        assert!(Instant::now() < deadline, "the refresh was not stored");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `req.headers.host` reads the host an HTTP/2 request names in `:authority` (curl and
/// browsers send no `host` line): every HTTP/2 client's rate-limit bucket by host was one, the
/// empty host's.
#[test]
fn http2_requests_have_their_host_in_req_headers_host() {
    let up = PyUpstream::start("tiles", 5.0);
    let (_dir, gw) = support::tls::https_gateway(&format!(
        "admin: {{port: ${{ADMIN_PORT}}, host: 127.0.0.1}}\napiEndpoints:\n  tiles: {{paths: '/tiles/*'}}\nserviceEndpoints:\n  up: {{url: '{up}'}}\npolicies: [rate-limit, proxy]\npipelines:\n  p: {{apiEndpoints: [tiles], policies: [{{rate-limit: {{action: {{max: 1, windowMs: 60000, rateLimitBy: 'host-${{req.headers.host}}'}}}}}}, {{proxy: {{action: {{serviceEndpoint: up}}}}}}]}}\n",
        up = up.url("")
    ));
    let fetch = |host: &str| {
        let resolve = format!("{host}:{}:127.0.0.1", gw.port);
        let url = format!("https://{host}:{}/tiles/x.png", gw.port);
        let args = [
            "--http2",
            "--resolve",
            &resolve,
            "-w",
            "%{http_version} %{http_code}\n",
        ];
        curl(&args, &[url]).0
    };
    assert_eq!(fetch("a.example"), ["2 200"]);
    assert_eq!(fetch("a.example"), ["2 429"]);
    assert_eq!(fetch("b.example"), ["2 200"], "one bucket for every host");
}

/// An HTTP/2 request as written (tests/fixtures/python/h2_client.py): the status, the body.
fn h2_request(port: u16, path: &str, headers: &[(&str, &str)]) -> (String, String) {
    let req = serde_json::json!({ "path": path, "headers": headers });
    let out = Command::new(python())
        .arg(fixture("h2_client.py"))
        .arg(port.to_string())
        .arg(req.to_string())
        .output()
        .expect("the HTTP/2 client (scripts/install-test-servers.sh installs target/py)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (status, body) = text.split_once('\n').unwrap_or((&text, ""));
    (status.to_string(), body.to_string())
}

/// An HTTP/2 request reaches the HTTP/1 upstream as an HTTP/1 one would: its cookies, one
/// field each in HTTP/2, joined into one (RFC 9113 §8.2.3); more than 256 header lines `431`
/// as on HTTP/1; and malformed ones refused (RFC 9113 §8.2.1, §8.3.1): a value with spaces at
/// an end (HTTP/1's parser trims them: a key with a trailing space authenticated there and not
/// here, and went upstream as it came), a `:path` that is not absolute.
#[test]
fn http2_heads_are_settled_as_http1_ones_are_read() {
    let up = PyUpstream::start("tiles", 5.0);
    let (_dir, gw) = https_gateway(&up.url(""), "");
    let (status, body) = h2_request(
        gw.port,
        "/tiles/c?echo=headers",
        &[("cookie", "a=1"), ("cookie", "b=2"), ("x-kept", "v")],
    );
    assert_eq!(status, "200", "{body}");
    let saw: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(saw["headers"]["cookie"], "a=1; b=2", "{body}");
    assert_eq!(saw["headers"]["x-kept"], "v", "{body}");
    let many: Vec<(String, String)> = (0..300).map(|i| (format!("x-h{i}"), "1".into())).collect();
    let many: Vec<(&str, &str)> = many.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
    assert_eq!(h2_request(gw.port, "/tiles/many", &many).0, "431");
    for (path, headers) in [
        ("/tiles/padded", &[("x-key", "k ")][..]),
        ("/tiles/padded", &[("x-key", "\tk")][..]),
        ("?a=1", &[][..]),
    ] {
        assert_eq!(
            h2_request(gw.port, path, headers).0,
            "400",
            "{path} {headers:?}"
        );
    }
    assert_eq!(up.served(), 1);
}

#[test]
fn a_hundred_tiles_over_one_http2_connection() {
    let up = PyUpstream::start("tiles", 5.0);
    let (_dir, gw) = https_gateway(&up.url(""), "");
    let urls: Vec<String> = (0..100)
        .map(|i| format!("https://127.0.0.1:{}/tiles/bytes/20000/{i}.png", gw.port))
        .collect();
    let (lines, h2_time) = curl(
        &[
            "--http2",
            "--parallel",
            "--parallel-max",
            "100",
            "-w",
            "%{http_code} %{http_version} %{num_connects}\n",
        ],
        &urls,
    );
    assert_eq!(lines.len(), 100, "{lines:?}");
    let connects: u32 = lines
        .iter()
        .map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            assert_eq!((f[0], f[1]), ("200", "2"), "{l}");
            f[2].parse::<u32>().unwrap_or(0)
        })
        .sum();
    assert_eq!(connects, 1, "one connection carried all 100 tiles");
    // An HTTP/1.1-only client still works on the same listener.
    let (lines, _) = curl(
        &["--http1.1", "-w", "%{http_code} %{http_version}\n"],
        &urls[..1],
    );
    assert_eq!(lines, vec!["200 1.1"]);
    // What a browser does without HTTP/2: at most six HTTP/1.1 connections per host.
    let (lines, h1_time) = curl(
        &[
            "--http1.1",
            "--parallel",
            "--parallel-max",
            "6",
            "-w",
            "%{http_code} %{http_version}\n",
        ],
        &urls,
    );
    assert_eq!(lines.len(), 100, "{lines:?}");
    eprintln!(
        "100 tiles: over one HTTP/2 connection {h2_time:?}, over six HTTP/1.1 connections {h1_time:?}"
    );
}

#[test]
fn http2_to_an_upstream() {
    let cert = SelfSigned::new();
    let dir = ConfigDir::empty();
    dir.write("up.crt", &cert.cert_pem());
    dir.write("up.key", &cert.key_pem());
    let port = free_port();
    let _up = Server::start(
        "h2_upstream.py",
        &[&port.to_string(), &dir.file("up.crt"), &dir.file("up.key")],
        port,
    );
    dir.write("system.config.yml", "db: {redis: {emulate: true}}\n");
    dir.write(
        "gateway.config.yml",
        &format!(
            "http: {{port: ${{PORT}}}}\nadmin: {{port: ${{ADMIN_PORT}}, host: 127.0.0.1}}\napiEndpoints:\n  h2: {{paths: '/h2/*'}}\n  h1: {{paths: '/h1/*'}}\nserviceEndpoints:\n  two: {{url: 'https://localhost:{port}', tollgate: {{http2: true}}}}\n  one: {{url: 'https://localhost:{port}'}}\npolicies: [proxy]\npipelines:\n  a: {{apiEndpoints: [h2], policies: [{{proxy: {{action: {{serviceEndpoint: two, secure: false}}}}}}]}}\n  b: {{apiEndpoints: [h1], policies: [{{proxy: {{action: {{serviceEndpoint: one, secure: false}}}}}}]}}\n"
        ),
    );
    let gw = GatewayProcess::start(&dir);
    let v = |path: &str| {
        let r = get(gw.port, "GET", path, &[]);
        assert_eq!(r.status, 200, "{}", r.text());
        support::json_body(&r)["http_version"]
            .as_str()
            .unwrap_or("")
            .to_string()
    };
    assert_eq!(v("/h2/x"), "2");
    assert_eq!(v("/h1/x"), "1.1");
}

fn ws_client(url: &str, close_by: &str) -> serde_json::Value {
    ws_client_paced(url, 20, close_by, "0")
}

/// [`ws_client`] with `n` messages, `pause` seconds apart.
fn ws_client_paced(url: &str, n: usize, close_by: &str, pause: &str) -> serde_json::Value {
    let out = Command::new(python())
        .arg(fixture("ws_client.py"))
        .args([url, &n.to_string(), close_by, pause])
        .output()
        .expect("run the websocket client");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
        panic!(
            "client said: {} {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

#[test]
fn websockets_after_authentication() {
    let port = free_port();
    let _echo = Server::start("ws_echo.py", &[&port.to_string()], port);
    let dir = ConfigDir::new(&format!(
        "http: {{port: ${{PORT}}}}\nadmin: {{port: ${{ADMIN_PORT}}, host: 127.0.0.1}}\napiEndpoints:\n  live: {{paths: '/live/*'}}\nserviceEndpoints:\n  ws: {{url: 'http://127.0.0.1:{port}'}}\npolicies: [key-auth, proxy]\npipelines:\n  live:\n    apiEndpoints: [live]\n    policies:\n      - key-auth:\n      - proxy: [{{action: {{serviceEndpoint: ws, stripPath: true}}}}]\n"
    ));
    dir.write(
        "consumers.json",
        r#"{"scopes": [], "users": {"ann": {"front": {"type": "key-auth", "keyId": "ws", "keySecret": "pass"}}}}"#,
    );
    // A request timeout shorter than a socket's life: its frames are no request body.
    let gw = GatewayProcess::start_with(
        &dir,
        &[
            "--populate",
            &dir.file("consumers.json"),
            "--request-timeout",
            "1",
        ],
        &[],
    );
    let url = |q: &str| format!("ws://127.0.0.1:{}/live/feed{q}", gw.port);
    // Refused without a key: the upgrade never reaches the upstream.
    let refused = ws_client(&url(""), "client");
    assert_eq!(refused["refused"], 401, "{refused}");
    // With one: frames both ways, closed by either side.
    let r = ws_client(&url("?apiKey=ws:pass"), "client");
    assert_eq!(
        (r["echoed"].as_u64(), r.get("error")),
        (Some(20), None),
        "{r}"
    );
    assert_eq!(r["close_code"], 1000, "{r}");
    let r = ws_client(&url("?apiKey=ws:pass"), "server");
    assert_eq!(r["echoed"].as_u64(), Some(20), "{r}");
    assert_eq!(
        r["close_code"], 4000,
        "the server's close reached the client: {r}"
    );
    // Open longer than the request timeout, frames going both ways throughout.
    let r = ws_client_paced(&url("?apiKey=ws:pass"), 5, "client", "0.6");
    assert_eq!(r["echoed"].as_u64(), Some(5), "{r}");
    assert_eq!(gw.error_lines(), Vec::<String>::new());
}

/// An HTTP/2 connection over TLS that sits idle: the gateway closes it.
fn h2_connection(port: u16, preface: bool) -> openssl::ssl::SslStream<std::net::TcpStream> {
    use openssl::ssl::{SslConnector, SslMethod, SslVerifyMode};
    use std::io::Write;
    let mut connector = SslConnector::builder(SslMethod::tls()).expect("connector");
    connector.set_verify(SslVerifyMode::NONE);
    connector.set_alpn_protos(b"\x02h2").expect("alpn");
    let tcp = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let mut tls = connector
        .build()
        .connect("localhost", tcp)
        .expect("handshake");
    assert_eq!(tls.ssl().selected_alpn_protocol(), Some(&b"h2"[..]));
    if preface {
        // The client preface and an empty SETTINGS frame.
        tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
            .expect("preface");
    }
    tls
}

/// An HTTP/2 frame.
fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = len.to_be_bytes()[1..].to_vec();
    f.extend_from_slice(&[kind, flags]);
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// A HEADERS frame of a request (HPACK: indexed and literal fields, no Huffman), the end of
/// its stream with it when `end`.
fn h2_headers(stream: u32, method: &str, path: &str, end: bool) -> Vec<u8> {
    let mut block = vec![match method {
        "GET" => 0x82,
        _ => 0x83,
    }];
    block.push(0x87); // :scheme https
    for (index, value) in [(4u8, path), (1u8, "localhost")] {
        block.push(index); // a literal, its name indexed, not indexed itself
        block.push(value.len() as u8);
        block.extend_from_slice(value.as_bytes());
    }
    let flags = 0x4 | if end { 0x1 } else { 0 };
    h2_frame(1, flags, stream, &block)
}

fn h2_send(tls: &mut openssl::ssl::SslStream<std::net::TcpStream>, bytes: &[u8]) {
    use std::io::Write;
    tls.write_all(bytes).expect("send");
}

/// A frame as read: its type, flags and stream.
#[derive(Debug)]
#[allow(dead_code)]
struct Frame {
    kind: u8,
    flags: u8,
    stream: u32,
}

/// The frames the gateway sends on `tls` for `wait`, and whether it closed the connection.
fn h2_frames_for(
    tls: &mut openssl::ssl::SslStream<std::net::TcpStream>,
    wait: Duration,
) -> (Vec<Frame>, bool) {
    use std::io::Read;
    let until = Instant::now() + wait;
    let mut bytes = Vec::new();
    let mut closed = false;
    let mut buf = [0u8; 16384];
    while Instant::now() < until {
        let left = until
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1));
        tls.get_ref().set_read_timeout(Some(left)).expect("timeout");
        match tls.read(&mut buf) {
            Ok(0) => {
                closed = true;
                break;
            }
            Ok(n) => bytes.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => {
                closed = true;
                break;
            }
        }
    }
    let mut frames = Vec::new();
    let mut at = 0;
    while at + 9 <= bytes.len() {
        let len = u32::from_be_bytes([0, bytes[at], bytes[at + 1], bytes[at + 2]]) as usize;
        let stream =
            u32::from_be_bytes([bytes[at + 5], bytes[at + 6], bytes[at + 7], bytes[at + 8]])
                & 0x7fff_ffff;
        frames.push(Frame {
            kind: bytes[at + 3],
            flags: bytes[at + 4],
            stream,
        });
        at += 9 + len;
    }
    (frames, closed)
}

/// HTTP/2 clients are bound as HTTP/1 ones are when they stall: a request body that stops
/// coming closes the connection after the body timeout; an answer the client's flow control
/// lets through nothing of is given up after the send timeout; and a client that keeps
/// abandoning the streams it opens (a reset flood) has its connection closed.
#[test]
fn stalled_and_abandoned_http2_streams_end() {
    let up = PyUpstream::start("slow", 5.0);
    let dir = support::tls::https_config(
        ConfigDir::empty(),
        &format!("admin: {{port: ${{ADMIN_PORT}}, host: 127.0.0.1}}\napiEndpoints:\n  s: {{paths: '/s/*'}}\nserviceEndpoints:\n  up: {{url: '{}'}}\npolicies: [proxy]\npipelines:\n  s: {{apiEndpoints: [s], policies: [{{proxy: {{action: {{serviceEndpoint: up, stripPath: true}}}}}}]}}\n", up.url("")),
    );
    let gw = GatewayProcess::start_with(
        &dir,
        &[
            "--body-timeout",
            "2",
            "--send-timeout",
            "2",
            "--keepalive-timeout",
            "30",
        ],
        &[],
    );
    // A POST whose body never comes.
    let mut posting = h2_connection(gw.port, true);
    h2_send(&mut posting, &h2_headers(1, "POST", "/s/posted", false));
    let started = Instant::now();
    let (_, closed) = h2_frames_for(&mut posting, Duration::from_secs(6));
    let took = started.elapsed();
    assert!(
        closed && took >= Duration::from_millis(1500) && took < Duration::from_millis(4500),
        "a stalled request body: closed {closed} after {took:?}"
    );
    let stalled = "tollgate_client_connections_closed_total{reason=\"body_timeout\"}";
    assert_eq!(gw.metric_when(stalled, |v| v >= 1.0), 1.0);
    // A client whose window lets nothing of a 200 kB answer through.
    let mut shut = h2_connection(gw.port, false);
    // Its preface with SETTINGS_INITIAL_WINDOW_SIZE = 0.
    h2_send(&mut shut, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
    h2_send(&mut shut, &h2_frame(4, 0, 0, &[0, 4, 0, 0, 0, 0]));
    h2_send(&mut shut, &h2_headers(1, "GET", "/s/bytes/200000", true));
    let started = Instant::now();
    let (frames, _) = h2_frames_for(&mut shut, Duration::from_secs(5));
    let reset = frames.iter().any(|f| f.kind == 3 && f.stream == 1);
    assert!(
        reset,
        "no RST_STREAM within 5 s (send timeout 2 s): {frames:?}"
    );
    assert!(started.elapsed() >= Duration::from_millis(1500));
    // A flood of streams opened, each on a slow upstream's path, and reset once the gateway
    // has taken them up (those reset before, h2 itself bounds): a hundred at a time.
    let mut flooding = h2_connection(gw.port, true);
    let before = up.served();
    let mut closed = false;
    let mut batches = 0;
    while !closed && batches < 5 {
        let first = 200 * batches + 1;
        let streams: Vec<u32> = (0..100).map(|i| first + 2 * i).collect();
        let heads: Vec<u8> = streams
            .iter()
            .flat_map(|s| h2_headers(*s, "GET", &format!("/s/slow/1000/{s}"), true))
            .collect();
        h2_send(&mut flooding, &heads);
        let (_, gone) = h2_frames_for(&mut flooding, Duration::from_millis(300));
        // RST_STREAM, CANCEL.
        let resets: Vec<u8> = streams
            .iter()
            .flat_map(|s| h2_frame(3, 0, *s, &8u32.to_be_bytes()))
            .collect();
        use std::io::Write;
        closed = gone || flooding.write_all(&resets).is_err();
        closed = closed || h2_frames_for(&mut flooding, Duration::from_millis(1500)).1;
        batches += 1;
    }
    assert!(
        closed,
        "a connection that reset {} streams stays open",
        100 * batches
    );
    let flood = "tollgate_client_connections_closed_total{reason=\"abandoned_streams\"}";
    assert_eq!(gw.metric_when(flood, |v| v >= 1.0), 1.0);
    eprintln!(
        "reset flood: closed after {batches} batches of 100 streams, the upstream asked {} times",
        up.served() - before
    );
    // The same flood padded with a cheap stream let finish for each one reset (the gateway's
    // health check): as many finished as abandoned, but more abandoned than a client may
    // within 10 s.
    let mut padded = h2_connection(gw.port, true);
    let mut closed = false;
    let mut batches = 0;
    while !closed && batches < 8 {
        let first = 400 * batches + 1;
        let cheap: Vec<u8> = (0..100)
            .flat_map(|i| h2_headers(first + 2 * i, "GET", "/healthcheck", true))
            .collect();
        h2_send(&mut padded, &cheap);
        let (_, gone) = h2_frames_for(&mut padded, Duration::from_millis(200));
        let streams: Vec<u32> = (0..100).map(|i| first + 200 + 2 * i).collect();
        let heads: Vec<u8> = streams
            .iter()
            .flat_map(|s| h2_headers(*s, "GET", &format!("/s/slow/1000/{s}"), true))
            .collect();
        use std::io::Write;
        closed = gone || padded.write_all(&heads).is_err();
        closed = closed || h2_frames_for(&mut padded, Duration::from_millis(300)).1;
        let resets: Vec<u8> = streams
            .iter()
            .flat_map(|s| h2_frame(3, 0, *s, &8u32.to_be_bytes()))
            .collect();
        closed = closed || padded.write_all(&resets).is_err();
        closed = closed || h2_frames_for(&mut padded, Duration::from_millis(500)).1;
        batches += 1;
    }
    assert!(
        closed,
        "a connection that reset {} streams among as many finished stays open",
        100 * batches
    );
    assert_eq!(gw.metric_when(flood, |v| v >= 2.0), 2.0);
    let said = "abandoned more than 400 streams gone upstream within 10 s";
    assert!(gw.log_text().contains(said), "{}", gw.log_text());
}

/// Each HTTP/2 stream but one takes a place under the connection cap while it is open (each
/// may hold an upstream connection, a descriptor, as a client connection does): a stream past
/// the cap is answered `503` at once (with `Retry-After`), and the places come back as streams
/// end. Before, one connection's hundred streams to an upstream that did not answer held a
/// hundred descriptors, and a few such connections held them all. A connection is told it
/// may open no more streams at once than the cap (a browser told 100 sent 100 and had those
/// past the cap refused; told the cap, it queues them).
#[test]
fn http2_streams_take_places_under_the_connection_cap() {
    let up = PyUpstream::start("slow", 5.0);
    let dir = support::tls::https_config(
        ConfigDir::empty(),
        &format!("admin: {{port: ${{ADMIN_PORT}}, host: 127.0.0.1}}\napiEndpoints:\n  s: {{paths: '/s/*'}}\nserviceEndpoints:\n  up: {{url: '{}'}}\npolicies: [proxy]\npipelines:\n  s: {{apiEndpoints: [s], policies: [{{proxy: {{action: {{serviceEndpoint: up, stripPath: true}}}}}}]}}\n", up.url("")),
    );
    let gw = GatewayProcess::start_with(&dir, &["--max-connections", "8"], &[]);
    // The server's SETTINGS (the first frame it sends): SETTINGS_MAX_CONCURRENT_STREAMS (3).
    let told = {
        use std::io::Read;
        let mut c = h2_connection(gw.port, true);
        let mut head = [0u8; 9];
        c.read_exact(&mut head).expect("a frame");
        assert_eq!(head[3], 4, "SETTINGS first");
        let mut payload = vec![0u8; usize::from(head[1]) << 8 | usize::from(head[2])];
        c.read_exact(&mut payload).expect("its settings");
        payload
            .chunks(6)
            .find(|s| s[..2] == [0, 3])
            .map(|s| u32::from_be_bytes([s[2], s[3], s[4], s[5]]))
    };
    assert_eq!(told, Some(8));
    std::thread::sleep(Duration::from_millis(300)); // the probes' connections close
    let answers = |frames: &[Frame]| frames.iter().filter(|f| f.kind == 1).count();
    let ask = |c: &mut openssl::ssl::SslStream<std::net::TcpStream>, first: u32| {
        let heads: Vec<u8> = (0..6)
            .map(|i| first + 2 * i)
            .flat_map(|s| h2_headers(s, "GET", &format!("/s/slow/2000/{s}"), true))
            .collect();
        h2_send(c, &heads);
    };
    let mut a = h2_connection(gw.port, true);
    let mut b = h2_connection(gw.port, true);
    for round in 0..2 {
        // Of the eight places each connection holds one, its first stream no more: `a`'s
        // other five take five, `b`'s the one left, and its four others are refused at once.
        ask(&mut a, 1 + 20 * round);
        std::thread::sleep(Duration::from_millis(200));
        ask(&mut b, 1 + 20 * round);
        let (frames, closed) = h2_frames_for(&mut b, Duration::from_millis(1200));
        assert!(!closed);
        assert_eq!(answers(&frames), 4, "round {round}: {frames:?}");
        let (frames, _) = h2_frames_for(&mut a, Duration::from_millis(2500));
        assert_eq!(answers(&frames), 6, "round {round}: {frames:?}");
        let (frames, _) = h2_frames_for(&mut b, Duration::from_millis(500));
        assert_eq!(answers(&frames), 2, "round {round}: {frames:?}");
    }
    let waits = "tollgate_client_connection_cap_reached_total";
    assert_eq!(gw.metric_when(waits, |v| v >= 8.0), 8.0);
    drop(a);
    let c = b;
    // The places come back; the streams refused left no asks for room behind (each would
    // close a keep-alive connection later, with no one waiting): HTTP/1 connections keep
    // theirs between requests.
    drop(c);
    std::thread::sleep(Duration::from_millis(300));
    let mut kept: Vec<_> = (0..7).map(|_| tls_http1(gw.port)).collect();
    for round in 0..2 {
        for k in &mut kept {
            let r = tls_exchange(k, "GET /healthcheck HTTP/1.1\r\nHost: localhost\r\n\r\n");
            assert!(r.starts_with("HTTP/1.1 200"), "round {round}: {r}");
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// At the cap, an HTTP/2 connection idle after its streams makes room for a new client, as
/// an HTTP/1 one waiting for its next request does (before, it held its place for the
/// keep-alive timeout).
#[test]
fn an_idle_http2_connection_makes_room_at_the_cap() {
    let dir = support::tls::https_config(
        ConfigDir::empty(),
        "admin: {port: ${ADMIN_PORT}, host: 127.0.0.1}\n",
    );
    let gw = GatewayProcess::start_with(
        &dir,
        &["--max-connections", "1", "--keepalive-timeout", "600"],
        &[],
    );
    std::thread::sleep(Duration::from_millis(300)); // the readiness probes' connections close
    let mut idle = h2_connection(gw.port, true);
    h2_send(&mut idle, &h2_headers(1, "GET", "/healthcheck", true));
    let (frames, _) = h2_frames_for(&mut idle, Duration::from_millis(500));
    assert!(frames.iter().any(|f| f.kind == 1), "{frames:?}");
    let asked = Instant::now();
    let mut next = tls_http1(gw.port);
    let r = tls_exchange(
        &mut next,
        "GET /healthcheck HTTP/1.1\r\nHost: localhost\r\n\r\n",
    );
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    assert!(
        asked.elapsed() < Duration::from_secs(5),
        "{:?}",
        asked.elapsed()
    );
    let (_, closed) = h2_frames_for(&mut idle, Duration::from_millis(500));
    assert!(closed, "the idle HTTP/2 connection was not the one closed");
    let shed = r#"tollgate_client_connections_closed_total{reason="shed"}"#;
    assert_eq!(gw.metric_when(shed, |v| v >= 1.0), 1.0);
}

/// An HTTP/1.1 connection over TLS.
fn tls_http1(port: u16) -> openssl::ssl::SslStream<std::net::TcpStream> {
    use openssl::ssl::{SslConnector, SslMethod, SslVerifyMode};
    let mut connector = SslConnector::builder(SslMethod::tls()).expect("connector");
    connector.set_verify(SslVerifyMode::NONE);
    let tcp = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    connector
        .build()
        .connect("localhost", tcp)
        .expect("handshake")
}

/// Sends `raw` on `tls` and reads its answer (head and a body of `Content-Length`), as text;
/// empty when the connection closed first.
fn tls_exchange(tls: &mut openssl::ssl::SslStream<std::net::TcpStream>, raw: &str) -> String {
    use std::io::{Read, Write};
    if tls.write_all(raw.as_bytes()).is_err() {
        return String::new();
    }
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&got).into_owned();
        if let Some(end) = text.find("\r\n\r\n") {
            let length: usize = text[..end]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().to_string())
                })
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            if got.len() >= end + 4 + length {
                return text;
            }
        }
        match tls.read(&mut buf) {
            Ok(n) if n > 0 => got.extend_from_slice(&buf[..n]),
            _ => return String::from_utf8_lossy(&got).into_owned(),
        }
    }
}

/// How long until the gateway closes `tls` (reading whatever it sends meanwhile).
fn closed_after(tls: &mut openssl::ssl::SslStream<std::net::TcpStream>) -> Duration {
    use std::io::Read;
    let started = Instant::now();
    let mut buf = [0u8; 4096];
    while let Ok(n) = tls.read(&mut buf) {
        if n == 0 {
            break;
        }
    }
    started.elapsed()
}

/// HTTP/2 connections are bound as HTTP/1 ones are: one that sends nothing after the TLS
/// handshake is closed after the header timeout, one idle after its preface after the
/// keep-alive timeout — between requests only: a request waiting longer than that on its
/// upstream is answered; and an idle one does not hold a stopping gateway for its grace period.
#[test]
fn idle_http2_connections_are_closed_and_do_not_hold_a_shutdown() {
    let up = PyUpstream::start("slow", 5.0);
    let dir = support::tls::https_config(
        ConfigDir::empty(),
        &format!("apiEndpoints:\n  a: {{paths: '/a/*'}}\n  s: {{paths: '/s/*'}}\nserviceEndpoints:\n  up: {{url: '{}'}}\npolicies: [terminate, proxy]\npipelines:\n  p: {{apiEndpoints: [a], policies: [{{terminate: {{action: {{statusCode: 200, message: ok}}}}}}]}}\n  s: {{apiEndpoints: [s], policies: [{{proxy: {{action: {{serviceEndpoint: up, stripPath: true}}}}}}]}}\n", up.url("")),
    );
    let gw = GatewayProcess::start_with(
        &dir,
        &[
            "--header-timeout",
            "2",
            "--keepalive-timeout",
            "4",
            "--grace-period",
            "20",
        ],
        &[],
    );
    let silent = closed_after(&mut h2_connection(gw.port, false));
    assert!(
        silent >= Duration::from_millis(1500) && silent < Duration::from_millis(3500),
        "a silent HTTP/2 connection was closed after {silent:?}"
    );
    // Its preface is no request: the header timeout still holds.
    let idle = closed_after(&mut h2_connection(gw.port, true));
    assert!(
        idle >= Duration::from_millis(1500) && idle < Duration::from_millis(3500),
        "an HTTP/2 connection without a request was closed after {idle:?}"
    );
    // After a request, the keep-alive timeout from its end, whatever pings come meanwhile.
    let mut pinging = h2_connection(gw.port, true);
    let answered = Instant::now();
    h2_send(&mut pinging, &h2_headers(1, "GET", "/a/x", true));
    let (frames, _) = h2_frames_for(&mut pinging, Duration::from_millis(500));
    assert!(
        frames.iter().any(|f| f.kind == 1 && f.stream == 1),
        "no answer: {frames:?}"
    );
    let closed = loop {
        // A PING every 700 ms (the gateway answers each).
        h2_send(&mut pinging, &h2_frame(6, 0, 0, b"pingpong"));
        let (_, closed) = h2_frames_for(&mut pinging, Duration::from_millis(700));
        if closed {
            break answered.elapsed();
        }
        assert!(
            answered.elapsed() < Duration::from_secs(10),
            "a pinging HTTP/2 connection stays open"
        );
    };
    assert!(
        closed >= Duration::from_millis(3500) && closed < Duration::from_secs(6),
        "an idle HTTP/2 connection that pings was closed after {closed:?}"
    );
    // A request that waits 5 s on its upstream, longer than the keep-alive timeout.
    let url = format!("https://127.0.0.1:{}/s/slow/5000/x", gw.port);
    let (codes, took) = curl(&["--http2", "-w", "%{http_version} %{http_code}\n"], &[url]);
    assert_eq!(codes, ["2 200"], "after {took:?}");
    // An idle connection open, the gateway is told to stop: it leaves well before its grace
    // period.
    let _held = h2_connection(gw.port, true);
    std::thread::sleep(Duration::from_millis(300));
    let mut gw = gw;
    gw.signal("TERM");
    let stopping = Instant::now();
    while gw.child.try_wait().expect("wait").is_none() {
        assert!(
            stopping.elapsed() < Duration::from_secs(8),
            "an idle HTTP/2 connection held the shutdown: {}",
            gw.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
