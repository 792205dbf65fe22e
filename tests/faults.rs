//! Faults under load, with real processes: Redis stopped (SIGSTOP) and killed, an upstream
//! killed and brought back, the gateway itself terminated; and request smuggling attempts,
//! checked against what the upstream received.

mod support;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::load::Load;
use support::redis::{eg_fixture, RedisServer};
use support::upstream::PyUpstream;
use support::{get, request, send_json, ConfigDir, EchoUpstream, GatewayProcess};

fn tiles_config(upstream_url: &str, extra_policies: &str) -> String {
    format!(
        "http: {{port: ${{PORT}}}}\nadmin: {{port: ${{ADMIN_PORT}}, host: 127.0.0.1}}\napiEndpoints:\n  tiles: {{paths: '/tiles/*', scopes: [wmts]}}\nserviceEndpoints:\n  up: {{url: '{upstream_url}'}}\npolicies: [key-auth, scopes, proxy]\npipelines:\n  tiles:\n    apiEndpoints: [tiles]\n    policies:\n{extra_policies}      - proxy: [{{action: {{serviceEndpoint: up, timeout: 3000}}}}]\n"
    )
}

const KEY: &str = "GET /tiles/1 HTTP/1.1\r\nHost: localhost\r\nAuthorization: apiKey kargo-ka-id:kargo-ka-secret\r\nConnection: close\r\n\r\n";

fn post(port: u16, path: &str, body: &str) -> (u16, Duration) {
    let t = Instant::now();
    let r = send_json(port, "POST", path, body);
    (r.status, t.elapsed())
}

#[test]
fn redis_stopped_and_killed_under_load() {
    let mut redis = RedisServer::start();
    redis.load_dump(&eg_fixture());
    let up = EchoUpstream::start("tiles");
    let dir = ConfigDir::new(&tiles_config(
        &up.url(""),
        "      - key-auth:\n      - scopes:\n",
    ));
    dir.write(
        "system.config.yml",
        &format!(
            "db:\n  redis:\n    emulate: false\n    host: 127.0.0.1\n    port: {}\n    namespace: EG\n",
            redis.port
        ),
    );
    let gw = GatewayProcess::start_with(&dir, &["--resync-seconds", "1"], &[]);
    assert_eq!(request(gw.port, KEY, false).status, 200);
    let load = Load::start(gw.port, 4, KEY, Duration::from_millis(2));
    std::thread::sleep(Duration::from_millis(500));

    // Stopped: nothing answers, connections hang.
    redis.signal("STOP");
    std::thread::sleep(Duration::from_millis(300));
    let (status, took) = post(gw.admin_port, "/scopes", r#"{"scopes": ["paused"]}"#);
    assert_eq!(status, 503, "a write while Redis hangs");
    assert!(took < Duration::from_secs(5), "answered after {took:?}");
    std::thread::sleep(Duration::from_secs(2));
    redis.signal("CONT");
    std::thread::sleep(Duration::from_millis(500));

    // Killed: connections refused.
    let port = redis.port;
    redis.save();
    redis.stop();
    let (status, took) = post(gw.admin_port, "/scopes", r#"{"scopes": ["gone"]}"#);
    assert_eq!(status, 503, "a write while Redis is down");
    assert!(took < Duration::from_secs(5), "answered after {took:?}");
    std::thread::sleep(Duration::from_secs(3));

    // Back, with what it had saved (a resync in the meantime sees the same credentials).
    let _back = RedisServer::start_on(port);
    std::thread::sleep(Duration::from_millis(1500));
    let report = load.stop();
    let failed = report.failed(200);
    assert!(
        failed.is_empty(),
        "{} of {} requests failed: {:?}",
        failed.len(),
        report.count(),
        &failed[..failed.len().min(5)]
    );
    assert!(report.count() > 200, "the load ran: {}", report.count());
    eprintln!(
        "Redis stopped 2 s and killed 3 s under load: {} requests, 0 failed; Admin writes 503 in {took:?}",
        report.count()
    );

    // New credentials work once it is back.
    let deadline = Instant::now() + Duration::from_secs(10);
    let created = loop {
        let r = send_json(
            gw.admin_port,
            "POST",
            "/credentials",
            r#"{"consumerId": "app2", "type": "key-auth", "credential": {"keyId": "after", "keySecret": "s", "scopes": ["wmts"]}}"#,
        );
        if r.status == 201 || r.status == 200 {
            break r;
        }
        assert!(
            Instant::now() < deadline,
            "writes never came back: {} {}",
            r.status,
            r.text()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(created.text().contains("after"), "{}", created.text());
    let fresh = [("Authorization", "apiKey after:s")];
    let deadline = Instant::now() + Duration::from_secs(5);
    while get(gw.port, "GET", "/tiles/1", &fresh).status != 200 {
        assert!(
            Instant::now() < deadline,
            "the new credential is not served"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Errors: the store going away, said once each time.
    let errors = gw.error_lines();
    assert!(
        errors.len() <= 2
            && errors
                .iter()
                .all(|l| l.contains("consumer store unreachable")),
        "{errors:#?}"
    );
}

#[test]
fn an_upstream_killed_and_back() {
    let mut up = PyUpstream::start("tiles", 5.0);
    let dir = ConfigDir::new(&tiles_config(&up.url(""), ""));
    let gw = GatewayProcess::start(&dir);
    let raw = "GET /tiles/a HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
    assert_eq!(request(gw.port, raw, false).status, 200);
    up.kill();
    for _ in 0..20 {
        let t = Instant::now();
        let r = request(gw.port, raw, false);
        assert_eq!(r.status, 502, "{}", r.text());
        assert!(
            t.elapsed() < Duration::from_secs(3),
            "a 502 within the connect timeout (3 s), took {:?}",
            t.elapsed()
        );
    }
    up.restart();
    let deadline = Instant::now() + Duration::from_secs(5);
    while request(gw.port, raw, false).status != 200 {
        assert!(
            Instant::now() < deadline,
            "not served again after the upstream came back"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn sigterm_under_load_answers_every_request_it_read() {
    sigterm_under_load(&[]);
}

/// The same through Pingora's session alone (the general path: what the fast path hands over).
#[test]
fn sigterm_under_load_on_the_general_path_answers_every_request_it_read() {
    sigterm_under_load(&["--fast-path", "off"]);
}

fn sigterm_under_load(args: &[&str]) {
    let up = EchoUpstream::start("tiles");
    let dir = ConfigDir::new(&tiles_config(&up.url(""), ""));
    let mut gw = GatewayProcess::start_with(&dir, &[&["--grace-period", "10"], args].concat(), &[]);
    let slow = "GET /tiles/slow/300 HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
    let load = Load::start(gw.port, 8, slow, Duration::ZERO);
    std::thread::sleep(Duration::from_millis(1000));
    let signalled = load.started.elapsed();
    gw.signal("TERM");
    let deadline = Instant::now() + Duration::from_secs(8);
    let status = loop {
        if let Some(s) = gw.child.try_wait().expect("wait") {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "the gateway did not exit after draining"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let report = load.stop();
    assert!(status.success(), "{status}");
    // Every request connected before the signal was read and answered (those still in the
    // listening socket's backlog included).
    let before: Vec<_> = report
        .outcomes
        .iter()
        .filter(|o| o.connected.is_some_and(|c| c < signalled))
        .collect();
    assert!(before.len() >= 8, "{}", before.len());
    let unanswered: Vec<_> = before.iter().filter(|o| o.status != Some(200)).collect();
    assert!(unanswered.is_empty(), "{unanswered:?}");
    // After it, a client is refused (not left hanging) or served.
    for o in report.outcomes.iter().filter(|o| o.at > signalled) {
        assert!(
            o.status == Some(200) || o.failed.is_some(),
            "after the signal: {o:?}"
        );
    }
}

/// An upstream that records the raw bytes of every connection and answers `200 ok` once the
/// client has been quiet for a moment.
struct Recorder {
    port: u16,
    seen: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl Recorder {
    fn start() -> Recorder {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let s = s.clone();
                std::thread::spawn(move || {
                    let _ = conn.set_read_timeout(Some(Duration::from_millis(300)));
                    let mut got = Vec::new();
                    let mut chunk = [0u8; 4096];
                    loop {
                        match conn.read(&mut chunk) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => got.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let _ = conn.write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
                    );
                    s.lock().expect("seen").push(got);
                });
            }
        });
        Recorder { port, seen }
    }

    fn seen(&self) -> Vec<String> {
        self.seen
            .lock()
            .expect("seen")
            .iter()
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .collect()
    }
}

#[test]
fn request_smuggling_is_refused_or_normalised() {
    let rec = Recorder::start();
    let dir = ConfigDir::new(&tiles_config(&format!("http://127.0.0.1:{}", rec.port), ""));
    let gw = GatewayProcess::start(&dir);
    let send = |raw: &str| support::send_until_close(gw.port, raw.as_bytes());
    let refused = [
        (
            "two different Content-Lengths",
            "POST /tiles/a HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        ),
        (
            "a Content-Length list",
            "POST /tiles/a HTTP/1.1\r\nHost: h\r\nContent-Length: 5, 6\r\n\r\nhello!",
        ),
        (
            "a Content-Length list of equal values",
            "POST /tiles/a HTTP/1.1\r\nHost: h\r\nContent-Length: 5, 5\r\n\r\nhello",
        ),
        (
            "two equal Content-Lengths",
            "POST /tiles/a HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
        ),
        (
            "a GET with two equal Content-Lengths",
            "GET /tiles/a HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\nContent-Length: 0\r\n\r\n",
        ),
        (
            "a signed Content-Length",
            "POST /tiles/a HTTP/1.1\r\nHost: h\r\nContent-Length: +5\r\n\r\nhello",
        ),
        (
            "a transfer coding other than chunked last",
            "POST /tiles/a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, gzip\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        ),
        (
            "an unknown transfer coding",
            "POST /tiles/a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: xchunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        ),
        (
            "a space before the colon",
            "POST /tiles/a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding : chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        ),
        // Targets neither a path nor absolute-form: Pingora's reader anchors them to `/`.
        (
            "two spaces after the method",
            "GET  /tiles/a HTTP/1.1\r\nHost: h\r\n\r\n",
        ),
        (
            "a target without its leading slash",
            "GET tiles/a HTTP/1.1\r\nHost: h\r\n\r\n",
        ),
        (
            "a target with a scheme and no authority the parser takes",
            "GET foo:bar://h/tiles/a HTTP/1.1\r\nHost: h\r\n\r\n",
        ),
        ("a Host with a space and a slash", "GET /tiles/a HTTP/1.1\r\nHost: a b/c\r\n\r\n"),
        ("a Host whose port is no number", "GET /tiles/a HTTP/1.1\r\nHost: h:abc\r\n\r\n"),
        ("a Host with two colons", "GET /tiles/a HTTP/1.1\r\nHost: h:80:81\r\n\r\n"),
        ("an IPv6 Host not closed", "GET /tiles/a HTTP/1.1\r\nHost: [::1:80\r\n\r\n"),
        (
            "a POST with two spaces after the method",
            "POST  /tiles/a HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\nhi",
        ),
    ];
    // A coding before chunked: not implemented (the upstream would get the body labelled
    // chunked alone), as nginx answers.
    let not_implemented = [
        (
            "a coding before chunked",
            "POST /tiles/a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        ),
        (
            "a coding and chunked on two lines",
            "POST /tiles/a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        ),
    ];
    let refused = refused
        .into_iter()
        .map(|(what, raw)| (what, raw, "HTTP/1.1 400"))
        .chain(
            not_implemented
                .into_iter()
                .map(|(w, r)| (w, r, "HTTP/1.1 501")),
        );
    for (what, raw, status) in refused {
        let before = rec.seen().len();
        let answer = send(raw);
        assert!(answer.starts_with(status), "{what}: {answer:?}");
        std::thread::sleep(Duration::from_millis(400));
        assert_eq!(
            rec.seen().len(),
            before,
            "{what}: reached the upstream: {:?}",
            rec.seen()
        );
    }

    // Bad chunk sizes: refused; whatever reached the upstream carries one framing only.
    for raw in [
        "POST /tiles/a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
        "POST /tiles/a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffffffff\r\nhello\r\n0\r\n\r\n",
    ] {
        let answer = send(raw);
        assert!(
            answer.starts_with("HTTP/1.1 400") || answer.is_empty(),
            "bad chunk size: {answer:?}"
        );
        // The connection closes after it, and the answer says so.
        assert!(
            answer.is_empty() || answer.to_ascii_lowercase().contains("connection: close"),
            "{answer:?}"
        );
    }

    // Both framings: normalised to chunked alone, and the connection is not reused (nothing
    // smuggled behind it is read as a request).
    let answer = send(
        "POST /tiles/a HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\nGET /tiles/smuggled HTTP/1.1\r\nHost: h\r\n\r\n",
    );
    assert!(
        answer.starts_with("HTTP/1.1 200") || answer.starts_with("HTTP/1.1 400"),
        "{answer:?}"
    );
    std::thread::sleep(Duration::from_millis(500));
    for got in rec.seen() {
        let head = got
            .split("\r\n\r\n")
            .next()
            .unwrap_or("")
            .to_ascii_lowercase();
        assert!(
            !(head.contains("content-length:") && head.contains("transfer-encoding:")),
            "the upstream saw both framings: {got:?}"
        );
        assert!(
            !got.contains("/tiles/smuggled"),
            "a smuggled request reached the upstream: {got:?}"
        );
    }
    assert_eq!(
        answer.matches("HTTP/1.1").count(),
        1,
        "one answer only: {answer:?}"
    );
}

/// A `Connection` that names the body's framing is refused: the headers it names are dropped
/// as the head is read, and without its `Content-Length` or `Transfer-Encoding` the body was
/// left on the connection and read as the client's next request (request smuggling). Both
/// paths, a body on a GET too.
#[test]
fn a_connection_naming_the_framing_is_refused() {
    let rec = Recorder::start();
    let dir = ConfigDir::new(&tiles_config(&format!("http://127.0.0.1:{}", rec.port), ""));
    let smuggled = "GET /tiles/smuggled HTTP/1.1\r\nHost: h\r\n\r\n";
    let n = smuggled.len();
    let requests = [
        format!("POST /tiles/a HTTP/1.1\r\nHost: h\r\nConnection: Content-Length\r\nContent-Length: {n}\r\n\r\n{smuggled}"),
        format!("POST /tiles/a HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, content-length\r\nContent-Length: {n}\r\n\r\n{smuggled}"),
        format!("POST /tiles/a HTTP/1.1\r\nHost: h\r\nConnection: Transfer-Encoding\r\nTransfer-Encoding: chunked\r\n\r\n{n:x}\r\n{smuggled}\r\n0\r\n\r\n"),
        format!("GET /tiles/a HTTP/1.1\r\nHost: h\r\nConnection: Content-Length\r\nContent-Length: {n}\r\n\r\n{smuggled}"),
    ];
    for fast in ["on", "off"] {
        let gw = GatewayProcess::start_with(&dir, &["--fast-path", fast], &[]);
        for raw in &requests {
            let before = rec.seen().len();
            let answer = support::send_until_close(gw.port, raw.as_bytes());
            assert!(
                answer.starts_with("HTTP/1.1 400"),
                "{fast}: {raw:?}: {answer:?}"
            );
            assert_eq!(answer.matches("HTTP/1.1 ").count(), 1, "{fast}: {answer:?}");
            std::thread::sleep(Duration::from_millis(300));
            assert_eq!(
                rec.seen()[before..],
                [] as [String; 0],
                "{fast}: {raw:?} reached the upstream"
            );
        }
        // More options than any client gives (each looked for among the headers): refused on
        // both paths, as Pingora's proxy refuses them; as many as it takes, served.
        let options = |n: usize| {
            (0..n)
                .map(|i| format!("x-o{i}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        for (n, status) in [(10, "400"), (9, "200")] {
            let raw = format!(
                "GET /tiles/a HTTP/1.1\r\nHost: h\r\nConnection: close, {}\r\n\r\n",
                options(n - 1)
            );
            let answer = support::send_until_close(gw.port, raw.as_bytes());
            assert!(
                answer.starts_with(&format!("HTTP/1.1 {status}")),
                "{fast}: {n} options: {answer:?}"
            );
        }
    }
}

/// Upstreams whose answers are framed ambiguously, each with what is wrong with it.
fn ambiguous_upstreams() -> Vec<(&'static str, u16)> {
    fn answer(conn: &mut std::net::TcpStream, head: &[u8], body: &[u8]) {
        let _ = conn.write_all(&[head, b"Cache-Control: max-age=60\r\n\r\n", body].concat());
        std::thread::sleep(Duration::from_millis(300));
    }
    vec![
        (
            "two equal Content-Length lines",
            support::upstream::raw(|c| {
                answer(
                    c,
                    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n",
                    b"hello",
                )
            }),
        ),
        (
            "a Content-Length past 63 bits",
            support::upstream::raw(|c| {
                answer(
                    c,
                    b"HTTP/1.1 200 OK\r\nContent-Length: 18446744073709551615\r\n",
                    b"hello",
                )
            }),
        ),
        (
            "a coding before chunked",
            support::upstream::raw(|c| {
                answer(
                    c,
                    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n",
                    b"5\r\nhello\r\n0\r\n\r\n",
                )
            }),
        ),
        (
            "chunked twice",
            support::upstream::raw(|c| {
                answer(
                    c,
                    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, chunked\r\n",
                    b"5\r\nhello\r\n0\r\n\r\n",
                )
            }),
        ),
        (
            // Read by its literal last element (none): until the upstream closes, so what
            // follows the last chunk would reach the client as the next answer.
            "an empty coding after chunked",
            support::upstream::raw(|c| {
                answer(
                    c,
                    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked,\r\n",
                    b"5\r\nhello\r\n0\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nevil",
                )
            }),
        ),
    ]
}

/// An upstream's answer framed ambiguously is a `502`, as nginx answers it, on both paths,
/// through a `cache` step or not, for every kind of request (a conditional or range one goes
/// through Pingora's cache phases): never relayed (two `Content-Length` lines make strict
/// clients refuse the answer; a coding before `chunked` reached the client, and the cache, as
/// a body in that coding labelled as none), never stored, and never a panic — a length past
/// 64 bits aborted the gateway in the cache's admission arithmetic.
#[test]
fn an_upstream_answer_framed_ambiguously_is_a_502() {
    let upstreams = ambiguous_upstreams();
    let mut conf = String::from(
        "http: {port: ${PORT}}\nadmin: {port: ${ADMIN_PORT}, host: 127.0.0.1}\napiEndpoints:\n",
    );
    for (i, _) in upstreams.iter().enumerate() {
        conf += &format!("  e{i}: {{paths: '/e{i}/*'}}\n  c{i}: {{paths: '/c{i}/*'}}\n");
    }
    conf += "serviceEndpoints:\n";
    for (i, (_, port)) in upstreams.iter().enumerate() {
        conf += &format!("  u{i}: {{url: 'http://127.0.0.1:{port}'}}\n");
    }
    conf += "policies: [cache, proxy]\npipelines:\n";
    for (i, _) in upstreams.iter().enumerate() {
        conf += &format!("  e{i}:\n    apiEndpoints: [e{i}]\n    policies:\n      - proxy: [{{action: {{serviceEndpoint: u{i}}}}}]\n");
        conf += &format!("  c{i}:\n    apiEndpoints: [c{i}]\n    policies:\n      - cache: [{{action: {{ttl: 60}}}}]\n      - proxy: [{{action: {{serviceEndpoint: u{i}}}}}]\n");
    }
    let dir = ConfigDir::new(&conf);
    for fast_path in ["on", "off"] {
        let gw = GatewayProcess::start_with(&dir, &["--fast-path", fast_path], &[]);
        for (i, (what, _)) in upstreams.iter().enumerate() {
            for (route, request) in [
                ("e", "GET /{r}{i}/t HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"),
                ("e", "POST /{r}{i}/t HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nConnection: close\r\n\r\nx"),
                ("c", "GET /{r}{i}/t HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"),
                ("c", "GET /{r}{i}/t HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"),
                ("c", "GET /{r}{i}/r HTTP/1.1\r\nHost: h\r\nRange: bytes=0-1\r\nConnection: close\r\n\r\n"),
                ("c", "GET /{r}{i}/n HTTP/1.1\r\nHost: h\r\nIf-None-Match: \"x\"\r\nConnection: close\r\n\r\n"),
                ("c", "HEAD /{r}{i}/h HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"),
            ] {
                let request = request.replace("{r}", route).replace("{i}", &i.to_string());
                let text = support::send_until_close(gw.port, request.as_bytes());
                assert!(
                    text.starts_with("HTTP/1.1 502") && !text.contains("hello"),
                    "{what}, fast path {fast_path}, {request:?}:\n{text}\n{}",
                    gw.log_text()
                );
            }
        }
        assert!(!gw.log_text().contains("panicked"), "{}", gw.log_text());
    }
}

/// An answer framed ambiguously is the url's failure on both paths: the request is retried on
/// another url (nothing of it reached the client) and the url is ejected after its failures.
/// On Pingora's path the answer counted as begun: a 502, no retry, never ejected.
#[test]
fn an_answer_framed_ambiguously_is_retried_on_another_url_on_both_paths() {
    let (_, bad) = ambiguous_upstreams().remove(2);
    let good = support::upstream::raw(|c| {
        let _ = c.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok");
    });
    let conf = format!(
        "http: {{port: ${{PORT}}}}\nadmin: {{port: ${{ADMIN_PORT}}, host: 127.0.0.1}}\napiEndpoints:\n  t: {{paths: '/t/*'}}\nserviceEndpoints:\n  up:\n    urls: ['http://127.0.0.1:{bad}', 'http://127.0.0.1:{good}']\n    tollgate: {{retries: 1, outlierDetection: {{consecutiveFailures: 2, ejectSeconds: 60}}}}\npolicies: [proxy]\npipelines:\n  t:\n    apiEndpoints: [t]\n    policies:\n      - proxy: [{{action: {{serviceEndpoint: up}}}}]\n"
    );
    let dir = ConfigDir::new(&conf);
    for fast_path in ["on", "off"] {
        let gw = GatewayProcess::start_with(&dir, &["--fast-path", fast_path], &[]);
        for i in 0..6 {
            let text = support::send_until_close(
                gw.port,
                b"GET /t/a HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
            );
            assert!(
                text.starts_with("HTTP/1.1 200") && text.ends_with("ok"),
                "fast path {fast_path}, request {i}:\n{text}\n{}",
                gw.log_text()
            );
        }
        let state = support::json_body(&get(gw.admin_port, "GET", "/tollgate/upstreams", &[]));
        let bad_url = format!("http://127.0.0.1:{bad}");
        let ejected = state["serviceEndpoints"][0]["urls"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|u| u["url"] == bad_url.as_str() && u["ejectedForSeconds"].is_number());
        assert!(ejected, "fast path {fast_path}: {state}");
    }
}

/// An upstream that answers every request with a chunked body it breaks after `hello`: an
/// invalid chunk size, then nothing.
fn broken_chunks_upstream() -> u16 {
    support::upstream::raw(|conn| {
        let _ = conn.write_all(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
        );
        std::thread::sleep(Duration::from_millis(200));
        let _ = conn.write_all(b"zz\r\nnot a chunk\r\n");
        std::thread::sleep(Duration::from_millis(500));
    })
}

/// A body the upstream breaks after the head went out reaches the client as what it is: cut
/// short, its connection closed without the last chunk, never a whole answer with an error
/// text in it. On both paths, with and without a compression step.
#[test]
fn a_body_broken_after_its_head_went_out_ends_the_connection_unfinished() {
    let port = broken_chunks_upstream();
    let conf = |extra: &str| {
        format!(
            "http: {{port: ${{PORT}}}}\nadmin: {{port: ${{ADMIN_PORT}}, host: 127.0.0.1}}\napiEndpoints:\n  t: {{paths: '/t/*'}}\nserviceEndpoints:\n  up: {{url: 'http://127.0.0.1:{port}'}}\npolicies: [compression, proxy]\npipelines:\n  t:\n    apiEndpoints: [t]\n    policies:\n{extra}      - proxy: [{{action: {{serviceEndpoint: up}}}}]\n"
        )
    };
    for (extra, fast_path) in [("", "on"), ("", "off"), ("      - compression:\n", "on")] {
        let dir = ConfigDir::new(&conf(extra));
        let gw = GatewayProcess::start_with(&dir, &["--fast-path", fast_path], &[]);
        for request in [
            "GET /t/a HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
            "POST /t/a HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nConnection: close\r\n\r\nx",
            "GET /t/a HTTP/1.1\r\nHost: h\r\nAccept-Encoding: gzip\r\nConnection: close\r\n\r\n",
        ] {
            let text = support::send_until_close(gw.port, request.as_bytes());
            let case = format!("{extra:?} fast path {fast_path}, {request:?}");
            assert!(
                !text.contains("Bad gateway"),
                "{case}: an error text in the body:\n{text}"
            );
            if let Some(rest) = text.strip_prefix("HTTP/1.1 200") {
                // The head went out: the body must not look whole.
                assert!(
                    !rest.ends_with("0\r\n\r\n"),
                    "{case}: a broken body was finished as if whole:\n{text}"
                );
            } else {
                assert!(text.starts_with("HTTP/1.1 502"), "{case}:\n{text}");
            }
        }
    }
    // The storage route, its provider the same upstream.
    let dir = ConfigDir::new(&conf(""));
    dir.write(
        "system.config.yml",
        &format!("db: {{redis: {{emulate: true}}}}\nplugins:\n  storage:\n    package: './plugins/storage/manifest.js'\n    endpointName: /s3\n    providers:\n      local:\n        endpoint: 'http://127.0.0.1:{port}'\n        accessKeyId: k\n        secretAccessKey: s\n        default: true\n"),
    );
    let gw = GatewayProcess::start(&dir);
    let text = support::send_until_close(
        gw.admin_port,
        b"GET /s3/local/tiles/a.png HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    );
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(
        !text.contains("Bad gateway"),
        "an error text in the body:\n{text}"
    );
    assert!(
        !text.ends_with("0\r\n\r\n"),
        "finished as if whole:\n{text}"
    );
}

/// An upstream that answers with a chunked body of a byte every 100 ms, for 5 s.
fn trickling_upstream() -> u16 {
    support::upstream::raw(|conn| {
        let _ = conn.write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
        for _ in 0..50 {
            if conn.write_all(b"1\r\nx\r\n").is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = conn.write_all(b"0\r\n\r\n");
    })
}

/// A body that keeps coming past the total timeout is the upstream's failure on both paths:
/// cut short, logged as an upstream failure and counted as a read timeout.
#[test]
fn a_body_past_the_total_timeout_is_counted_as_the_upstreams_read_timeout() {
    let port = trickling_upstream();
    let dir = ConfigDir::new(&format!(
        "http: {{port: ${{PORT}}}}\nadmin: {{port: ${{ADMIN_PORT}}, host: 127.0.0.1}}\napiEndpoints:\n  t: {{paths: '/t/*'}}\nserviceEndpoints:\n  up: {{url: 'http://127.0.0.1:{port}'}}\npolicies: [proxy]\npipelines:\n  t:\n    apiEndpoints: [t]\n    policies:\n      - proxy: [{{action: {{serviceEndpoint: up, totalTimeout: 1000, readTimeout: 5000}}}}]\n"
    ));
    // Every failure its own line (not folded with the one before).
    let gw = GatewayProcess::start_with(&dir, &[], &[("TOLLGATE_LOG_FOLD_SECONDS", "0")]);
    let series = r#"tollgate_upstream_errors_total{kind="read_timeout"}"#;
    // GET goes the fast path, POST (a body) the general one.
    for (i, request) in [
        "GET /t/a HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
        "POST /t/a HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nConnection: close\r\n\r\nx",
    ]
    .into_iter()
    .enumerate()
    {
        let started = Instant::now();
        let text = support::send_until_close(gw.port, request.as_bytes());
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{request:?}: answered after {:?}",
            started.elapsed()
        );
        assert!(
            !text.ends_with("0\r\n\r\n"),
            "{request:?}: finished as if whole"
        );
        let counted = gw.metric_when(series, |n| n >= (i + 1) as f64);
        assert_eq!(counted, (i + 1) as f64, "{request:?}: {}", gw.log_text());
    }
    assert_eq!(
        gw.log_text().matches("upstream failure").count(),
        2,
        "{}",
        gw.log_text()
    );
}

/// With Redis hung from the start (no connection made yet), callers of the store wait on one
/// connection attempt together, each at most the command timeout: six concurrent Admin API
/// writes are all refused (503) within about 2 s. They queued behind each other's attempts:
/// 8, 14, 20… s.
#[test]
fn callers_share_one_connection_attempt_while_redis_hangs() {
    let redis = RedisServer::start();
    redis.signal("STOP");
    let up = EchoUpstream::start("tiles");
    let dir = ConfigDir::new(&tiles_config(&up.url(""), "      - key-auth:\n"));
    dir.write(
        "system.config.yml",
        &format!(
            "db:\n  redis:\n    emulate: false\n    host: 127.0.0.1\n    port: {}\n    namespace: EG\n",
            redis.port
        ),
    );
    let gw = GatewayProcess::start(&dir);
    let admin = gw.admin_port;
    let writers: Vec<_> = (0..6)
        .map(|i| {
            std::thread::spawn(move || {
                post(admin, "/scopes", &format!(r#"{{"scopes": ["s{i}"]}}"#))
            })
        })
        .collect();
    let answers: Vec<(u16, Duration)> = writers
        .into_iter()
        .map(|w| w.join().expect("writer"))
        .collect();
    redis.signal("CONT");
    for (status, took) in &answers {
        assert_eq!(*status, 503, "{answers:?}");
        assert!(*took < Duration::from_secs(4), "{answers:?}");
    }
}

/// To an HTTP/1.0 client a body of unknown length ends with the connection: cut short by the
/// upstream, the connection is reset (on both paths), so the client sees the failure — closed
/// in order, the part looked like the whole body. A whole one still ends in order.
#[test]
fn a_body_that_ends_with_the_connection_is_reset_when_cut_short() {
    let broken = broken_chunks_upstream();
    let whole = support::upstream::raw(|conn| {
        let _ = conn.write_all(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        );
        std::thread::sleep(Duration::from_millis(300));
    });
    let conf = format!(
        "http: {{port: ${{PORT}}}}\nadmin: {{port: ${{ADMIN_PORT}}, host: 127.0.0.1}}\napiEndpoints:\n  b: {{paths: '/b/*'}}\n  w: {{paths: '/w/*'}}\nserviceEndpoints:\n  broken: {{url: 'http://127.0.0.1:{broken}'}}\n  whole: {{url: 'http://127.0.0.1:{whole}'}}\npolicies: [proxy]\npipelines:\n  b: {{apiEndpoints: [b], policies: [{{proxy: [{{action: {{serviceEndpoint: broken}}}}]}}]}}\n  w: {{apiEndpoints: [w], policies: [{{proxy: [{{action: {{serviceEndpoint: whole}}}}]}}]}}\n"
    );
    let dir = ConfigDir::new(&conf);
    let gw = GatewayProcess::start(&dir);
    let read_all = |request: &str| {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", gw.port)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        s.write_all(request.as_bytes()).expect("send");
        let mut got = Vec::new();
        let ended = s.read_to_end(&mut got);
        (
            ended.map_err(|e| e.kind()),
            String::from_utf8_lossy(&got).into_owned(),
        )
    };
    for method in ["GET", "POST"] {
        let body = if method == "POST" {
            "Content-Length: 0\r\n"
        } else {
            ""
        };
        let (ended, got) = read_all(&format!("{method} /b/x HTTP/1.0\r\nHost: h\r\n{body}\r\n"));
        assert_eq!(
            ended.err(),
            Some(std::io::ErrorKind::ConnectionReset),
            "{method}: {got}"
        );
        let (ended, got) = read_all(&format!("{method} /w/x HTTP/1.0\r\nHost: h\r\n{body}\r\n"));
        assert!(ended.is_ok(), "{method}: {ended:?}");
        assert!(
            got.starts_with("HTTP/1.1 200") && got.ends_with("\r\n\r\nhello"),
            "{method}: {got:?}"
        );
    }
}

/// Idle upstream connections hold descriptors the connection cap does not count. When the
/// process runs out of descriptors — here its limit lowered under it, to what the idle
/// connections to five upstreams and the next burst's client connections take — those idle
/// connections are closed and every request of the burst (whose upstream connections need
/// descriptors the limit no longer has) is served.
#[test]
fn idle_upstream_connections_give_way_when_descriptors_run_out() {
    const FILLED: usize = 5;
    const AT_ONCE: usize = 40;
    let ups: Vec<PyUpstream> = (0..=FILLED)
        .map(|i| PyUpstream::start(&format!("u{i}"), 120.0))
        .collect();
    let mut yml = String::from("http: {port: ${PORT}}\napiEndpoints:\n");
    for i in 0..ups.len() {
        yml.push_str(&format!("  e{i}: {{paths: '/u{i}/*'}}\n"));
    }
    yml.push_str("serviceEndpoints:\n");
    for (i, up) in ups.iter().enumerate() {
        yml.push_str(&format!("  s{i}: {{url: '{}'}}\n", up.url("")));
    }
    yml.push_str("policies: [proxy]\npipelines:\n");
    for i in 0..ups.len() {
        yml.push_str(&format!(
            "  p{i}:\n    apiEndpoints: [e{i}]\n    policies:\n      - proxy: [{{action: {{serviceEndpoint: s{i}}}}}]\n"
        ));
    }
    let dir = ConfigDir::new(&yml);
    let gw = GatewayProcess::start_with(&dir, &["--threads", "1", "--max-connections", "200"], &[]);
    // AT_ONCE requests to upstream `i` at once, each answered after 300 ms: as many upstream
    // connections, idle in the pool after.
    let burst = |i: usize| -> Vec<u16> {
        let port = gw.port;
        let asks: Vec<_> = (0..AT_ONCE)
            .map(|_| {
                std::thread::spawn(move || get(port, "GET", &format!("/u{i}/slow/300"), &[]).status)
            })
            .collect();
        asks.into_iter().map(|t| t.join().unwrap_or(0)).collect()
    };
    for i in 0..FILLED {
        let statuses = burst(i);
        assert!(statuses.iter().all(|s| *s == 200), "u{i}: {statuses:?}");
    }
    let pid = gw.child.id();
    let count = || {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .expect("the gateway's descriptors")
            .count()
    };
    // Once the bursts' client connections have closed: the count holds still.
    let mut open = count();
    for _ in 0..50 {
        std::thread::sleep(Duration::from_millis(100));
        let now = count();
        if now == open {
            break;
        }
        open = now;
    }
    assert!(
        open >= FILLED * AT_ONCE,
        "the idle upstream connections are open: {open} descriptors"
    );
    // Room for the burst's client connections and a few more, not for their upstream ones.
    let limit = (open + AT_ONCE + 10) as libc::rlim_t;
    let mut old = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    let new = libc::rlimit {
        rlim_cur: limit,
        rlim_max: limit,
    };
    let set = unsafe { libc::prlimit(pid as libc::pid_t, libc::RLIMIT_NOFILE, &new, &mut old) };
    assert_eq!(set, 0, "{}", std::io::Error::last_os_error());
    let statuses = burst(FILLED);
    let log = std::fs::read_to_string(&gw.log).expect("log");
    assert!(
        statuses.iter().all(|s| *s == 200),
        "{} of {AT_ONCE} failed under a limit of {limit}: {statuses:?}\n{log}",
        statuses.iter().filter(|s| **s != 200).count()
    );
    assert!(
        log.contains("out of file descriptors: the idle upstream connections are closed"),
        "{log}"
    );
    // The gateway's shortage is no upstream's failure.
    assert!(
        !log.contains("tried again") && !log.contains("ejected") && !log.contains("panicked"),
        "{log}"
    );
}
