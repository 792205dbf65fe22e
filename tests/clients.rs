//! What a client connection may take of the gateway: the header timeout (half-sent heads are
//! closed while good requests are served), the keep-alive and body timeouts, the connection
//! cap (new connections wait in the backlog, no descriptors taken), the open-files limit,
//! SIGHUP, and a log an operator can read.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use support::client::read_response;
use support::upstream::PyUpstream;
use support::{get, ConfigDir, EchoUpstream, GatewayProcess};

fn config(upstream_url: &str) -> String {
    format!(
        "http: {{port: ${{PORT}}}}\nadmin: {{port: ${{ADMIN_PORT}}, host: 127.0.0.1}}\napiEndpoints:\n  tiles: {{paths: '/tiles/*'}}\nserviceEndpoints:\n  up: {{url: '{upstream_url}'}}\npolicies: [proxy]\npipelines:\n  tiles:\n    apiEndpoints: [tiles]\n    policies:\n      - proxy: [{{action: {{serviceEndpoint: up}}}}]\n"
    )
}

fn connect(port: u16) -> TcpStream {
    support::client::connect(port, 15)
}

fn open_fds(gw: &GatewayProcess) -> usize {
    std::fs::read_dir(format!("/proc/{}/fd", gw.child.id()))
        .map(|d| d.count())
        .unwrap_or(0)
}

#[test]
fn half_sent_heads_are_closed_after_the_header_timeout() {
    let up = EchoUpstream::start("tiles");
    let dir = ConfigDir::new(&config(&up.url("")));
    let gw = GatewayProcess::start_with(&dir, &["--header-timeout", "2"], &[]);
    let start = Instant::now();
    // 300 connections: a third send nothing, the rest half a request head.
    let mut held: Vec<(bool, TcpStream)> = (0..300)
        .map(|i| {
            let mut s = connect(gw.port);
            let half = i % 3 != 0;
            if half {
                s.write_all(b"GET /tiles/a HTTP/1.1\r\nHost: localhost\r\nAccept: */")
                    .expect("send half a head");
            }
            (half, s)
        })
        .collect();
    // Good requests are served meanwhile.
    for _ in 0..30 {
        assert_eq!(get(gw.port, "GET", "/tiles/a", &[]).status, 200);
    }
    let mut first_close = None;
    for (half, s) in &mut held {
        let mut answer = Vec::new();
        s.read_to_end(&mut answer)
            .expect("the gateway closes the connection within the timeout");
        first_close.get_or_insert_with(|| start.elapsed());
        let text = String::from_utf8_lossy(&answer);
        if *half {
            assert!(
                text.starts_with("HTTP/1.1 408 Request Timeout\r\n")
                    && text.ends_with("Request Timeout"),
                "a half-sent head gets a 408: {text:?}"
            );
        } else {
            assert!(
                answer.is_empty(),
                "a connection that sent nothing is just closed: {text:?}"
            );
        }
    }
    let first_close = first_close.unwrap_or_default();
    assert!(
        first_close >= Duration::from_millis(1900),
        "closed before the header timeout: {first_close:?}"
    );
    assert!(
        start.elapsed() < Duration::from_secs(8),
        "closing took {:?}",
        start.elapsed()
    );
    // A connection is counted as it ends, just after its socket closed: the last few may
    // still be on their way.
    let counted = gw.metric_when(
        r#"tollgate_client_connections_closed_total{reason="header_timeout"}"#,
        |n| n >= 300.0,
    );
    assert!(counted >= 300.0, "{counted} header timeouts counted");
    // A slow sender that keeps trickling bytes is bounded by the whole head, not per read.
    let mut slow = connect(gw.port);
    let t = Instant::now();
    let mut answer = Vec::new();
    for b in b"GET /tiles/a HTTP/1.1\r\nHost: localhost\r\nX-Slow: 0123456789" {
        if slow.write_all(&[*b]).is_err() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        if t.elapsed() > Duration::from_secs(3) {
            break;
        }
    }
    let _ = slow.read_to_end(&mut answer);
    assert!(
        String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 408"),
        "{:?}",
        String::from_utf8_lossy(&answer)
    );
    assert!(t.elapsed() < Duration::from_secs(4), "{:?}", t.elapsed());
    assert_eq!(get(gw.port, "GET", "/tiles/a", &[]).status, 200);
    // A later request on a kept connection is timed from its first byte too: half of its
    // head, sent whole in one write or a byte at a time, gets its 408 after the header
    // timeout, long before the keep-alive timeout (60 s) would close the connection.
    for trickle in [false, true] {
        let mut kept = connect(gw.port);
        kept.write_all(b"GET /tiles/a HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .expect("first request");
        assert_eq!(read_response(&mut kept, false).status, 200);
        let half = b"GET /tiles/a HTTP/1.1\r\nHost: localhost\r\nAccept: */";
        let t = Instant::now();
        if trickle {
            for b in half {
                // Slowed past the timeout (a loaded machine), the connection is closed
                // under the trickle: the answer read below says why.
                if kept.write_all(&[*b]).is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(30));
            }
        } else {
            kept.write_all(half).expect("half a head");
        }
        let mut answer = Vec::new();
        kept.read_to_end(&mut answer)
            .expect("the gateway closes the connection");
        let text = String::from_utf8_lossy(&answer);
        assert!(
            text.starts_with("HTTP/1.1 408"),
            "trickled {trickle}: {text:?}"
        );
        assert!(
            // Trickled, the head takes 1.6 s: timed from its last byte it would be 3.6 s.
            t.elapsed() >= Duration::from_millis(1900) && t.elapsed() < Duration::from_millis(3500),
            "trickled {trickle}: closed after {:?}",
            t.elapsed()
        );
    }
}

/// What can never become a head is answered 400 at once when it came behind a request too (in
/// the same write, pipelined), not 408 at the header timeout.
#[test]
fn what_can_never_be_a_head_behind_a_request_is_refused_at_once() {
    let up = EchoUpstream::start("tiles");
    let dir = ConfigDir::new(&config(&up.url("")));
    let gw = GatewayProcess::start_with(&dir, &["--header-timeout", "120"], &[]);
    for never in [&b"\x16\x03\x01\x02\x00\x01"[..], b"GET /tiles/b\r\n"] {
        let mut s = connect(gw.port);
        let mut sent = b"GET /tiles/a HTTP/1.1\r\nHost: localhost\r\n\r\n".to_vec();
        sent.extend_from_slice(never);
        s.write_all(&sent).expect("send");
        s.set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        // (Both answers read to the close: the two may come in one read.)
        let mut all = Vec::new();
        s.read_to_end(&mut all)
            .expect("answered and closed well before the header timeout");
        let text = String::from_utf8_lossy(&all);
        let second = text.find("HTTP/1.1 400 ");
        assert!(
            text.starts_with("HTTP/1.1 200 ") && second.is_some_and(|at| at > 0),
            "{text:?}"
        );
    }
}

#[test]
fn idle_keep_alive_connections_and_stalled_bodies_are_closed() {
    let up = EchoUpstream::start("tiles");
    let dir = ConfigDir::new(&config(&up.url("")));
    let gw = GatewayProcess::start_with(
        &dir,
        &["--keepalive-timeout", "1", "--body-timeout", "1"],
        &[],
    );
    let mut s = connect(gw.port);
    for _ in 0..3 {
        s.write_all(b"GET /tiles/a HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .expect("send");
        assert_eq!(read_response(&mut s, false).status, 200);
    }
    let t = Instant::now();
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).expect("closed by the gateway");
    assert!(rest.is_empty(), "{:?}", String::from_utf8_lossy(&rest));
    let idle = t.elapsed();
    assert!(
        idle >= Duration::from_millis(900) && idle < Duration::from_secs(4),
        "idle keep-alive connection closed after {idle:?}"
    );
    assert!(
        gw.metric_when(
            r#"tollgate_client_connections_closed_total{reason="keepalive_timeout"}"#,
            |n| n >= 1.0
        ) >= 1.0
    );

    // A request body that stops arriving.
    let mut s = connect(gw.port);
    s.write_all(
        b"POST /tiles/upload HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100\r\n\r\n0123456789",
    )
    .expect("send");
    let t = Instant::now();
    let r = read_response(&mut s, false);
    assert_eq!(r.status, 408, "{}", r.text());
    assert!(t.elapsed() < Duration::from_secs(4), "{:?}", t.elapsed());
}

/// A request body that trickles (a byte within each body timeout) is given up once it has
/// taken the request timeout, not at the first byte after it: 408, the connection closed.
#[test]
fn a_trickling_request_body_is_given_up_after_the_request_timeout() {
    let up = EchoUpstream::start("tiles");
    let dir = ConfigDir::new(&config(&up.url("")));
    let gw = GatewayProcess::start_with(
        &dir,
        &["--body-timeout", "2", "--request-timeout", "3"],
        &[],
    );
    let mut s = connect(gw.port);
    s.write_all(b"POST /tiles/upload HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1000\r\n\r\n")
        .expect("send");
    let t = Instant::now();
    let trickle = {
        let mut s = s.try_clone().expect("clone");
        std::thread::spawn(move || {
            while t.elapsed() < Duration::from_secs(8) {
                if s.write_all(b"x").is_err() {
                    return;
                }
                // Bytes at 0, 1.9 and 3.8 s: the 408 was at 3.8 s, when the byte after the
                // request timeout came.
                std::thread::sleep(Duration::from_millis(1900));
            }
        })
    };
    let r = read_response(&mut s, false);
    let took = t.elapsed();
    assert_eq!(r.status, 408, "{}", r.text());
    assert!(
        took >= Duration::from_millis(2900) && took < Duration::from_millis(3600),
        "{took:?}"
    );
    let _ = trickle.join();
}

/// An upstream that answers every request with 4 MB in chunks of 1000 bytes.
fn chunky_upstream() -> u16 {
    support::upstream::raw(|conn| {
        let _ = conn.write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
        let chunk = format!("3e8\r\n{}\r\n", "x".repeat(1000));
        for _ in 0..4000 {
            if conn.write_all(chunk.as_bytes()).is_err() {
                return;
            }
        }
        let _ = conn.write_all(b"0\r\n\r\n");
    })
}

/// A client with a small receive buffer that sends `request` to `port` (and reads nothing).
fn not_reading(port: u16, request: &[u8]) -> TcpStream {
    let s =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    s.set_recv_buffer_size(4096)
        .expect("a small receive buffer");
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    s.connect(&addr.into()).expect("connect");
    let mut s: TcpStream = s.into();
    s.write_all(request).expect("send");
    s
}

/// A client that stops reading a response is let go after the send timeout, whatever is left
/// to write: its connection is closed, not held until it reads again.
#[test]
fn a_client_that_stops_reading_is_let_go_after_the_send_timeout() {
    let port = chunky_upstream();
    let dir = ConfigDir::new(&config(&format!("http://127.0.0.1:{port}")));
    for fast in ["on", "off"] {
        let gw =
            GatewayProcess::start_with(&dir, &["--send-timeout", "1", "--fast-path", fast], &[]);
        let s = not_reading(
            gw.port,
            b"GET /tiles/big HTTP/1.1\r\nHost: localhost\r\n\r\n",
        );
        // It reads nothing: once the socket's buffers are full, writes wait.
        std::thread::sleep(Duration::from_secs(3));
        // The one open is the scrape's own.
        let open = gw.metric_when("tollgate_client_connections", |n| n <= 1.0);
        assert_eq!(open, 1.0, "fast path {fast}: the connection is still held");
        drop(s);
    }
}

/// A body that ends with the connection (to an HTTP/1.0 client, which knows no chunks) and is
/// let go after the send timeout is reset, on both paths: closed in order, the part the client
/// had would look like the whole body.
#[test]
fn a_close_delimited_body_let_go_after_the_send_timeout_is_reset() {
    let port = chunky_upstream();
    let dir = ConfigDir::new(&config(&format!("http://127.0.0.1:{port}")));
    for fast in ["on", "off"] {
        let gw =
            GatewayProcess::start_with(&dir, &["--send-timeout", "1", "--fast-path", fast], &[]);
        let mut s = not_reading(
            gw.port,
            b"GET /tiles/big HTTP/1.0\r\nHost: localhost\r\n\r\n",
        );
        // It reads nothing until the gateway has let it go.
        std::thread::sleep(Duration::from_secs(3));
        gw.metric_when("tollgate_client_connections", |n| n <= 1.0);
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let mut got = Vec::new();
        let ended = s.read_to_end(&mut got);
        let text = String::from_utf8_lossy(&got[..got.len().min(200)]).into_owned();
        assert!(
            text.is_empty() || (text.starts_with("HTTP/1.1 200") && !text.contains("chunked")),
            "fast path {fast}: {text:?}"
        );
        assert_eq!(
            ended.map_err(|e| e.kind()).err(),
            Some(std::io::ErrorKind::ConnectionReset),
            "fast path {fast}: a body cut short ended in order after {} bytes",
            got.len()
        );
    }
}

#[test]
fn past_the_connection_cap_new_connections_wait_in_the_backlog() {
    let up = EchoUpstream::start("tiles");
    let dir = ConfigDir::new(&config(&up.url("")));
    let gw = GatewayProcess::start_with(
        &dir,
        &["--max-connections", "4", "--header-timeout", "30"],
        &[],
    );
    std::thread::sleep(Duration::from_millis(300)); // the readiness probes' connections close
    let mut holders: Vec<TcpStream> = (0..4).map(|_| connect(gw.port)).collect();
    std::thread::sleep(Duration::from_millis(300));
    let fds_at_cap = open_fds(&gw);
    // A fifth connection is made by the kernel but not served while four are open.
    let mut waiting = connect(gw.port);
    waiting
        .write_all(b"GET /tiles/a HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .expect("send");
    waiting
        .set_read_timeout(Some(Duration::from_millis(800)))
        .expect("timeout");
    let mut probe = [0u8; 1];
    assert!(
        waiting.read(&mut probe).is_err(),
        "a connection past the cap must not be served yet"
    );
    // Many more connections take no descriptors of the gateway's.
    let queued: Vec<TcpStream> = (0..100).map(|_| connect(gw.port)).collect();
    std::thread::sleep(Duration::from_millis(300));
    let fds_with_queue = open_fds(&gw);
    assert!(
        fds_with_queue <= fds_at_cap + 2,
        "queued connections took descriptors: {fds_at_cap} -> {fds_with_queue}"
    );
    assert!(gw.metric("tollgate_client_connection_cap_reached_total") >= 1.0);
    drop(queued);
    // One holder leaves: the waiting request is served.
    holders.pop();
    waiting
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let r = read_response(&mut waiting, false);
    assert_eq!(r.status, 200, "{}", r.text());
}

/// At the cap, connections waiting for their next request close (as nginx's do) and make room
/// for the ones the backlog holds; one whose first request has not come yet is not closed (its
/// request may be on its way).
#[test]
fn at_the_connection_cap_idle_keepalive_connections_make_room() {
    let up = EchoUpstream::start("tiles");
    let dir = ConfigDir::new(&config(&up.url("")));
    let gw = GatewayProcess::start_with(
        &dir,
        &[
            "--max-connections",
            "4",
            "--keepalive-timeout",
            "600",
            "--header-timeout",
            "600",
        ],
        &[],
    );
    std::thread::sleep(Duration::from_millis(300)); // the readiness probes' connections close
    let fresh = connect(gw.port);
    let ask = |s: &mut TcpStream| {
        s.write_all(b"GET /tiles/a HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .expect("send");
        read_response(s, false).status
    };
    let mut idle: Vec<TcpStream> = (0..3)
        .map(|_| {
            let mut s = connect(gw.port);
            assert_eq!(ask(&mut s), 200);
            s
        })
        .collect();
    // At the cap with no one waiting, the idle connections stay: each is asked again.
    std::thread::sleep(Duration::from_millis(300));
    for s in &mut idle {
        assert_eq!(ask(s), 200, "an idle connection closed with no one waiting");
    }
    let shed = r#"tollgate_client_connections_closed_total{reason="shed"}"#;
    assert_eq!(gw.metric(shed), 0.0);
    // A fifth connection: served once one idle connection made room, within the 600 s they
    // may wait.
    let mut next = connect(gw.port);
    next.write_all(b"GET /tiles/b HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .expect("send");
    next.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let r = read_response(&mut next, false);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(gw.metric_when(shed, |v| v >= 1.0), 1.0);
    // One closed (it reads the end), the others are served on.
    let mut open = Vec::new();
    for mut s in idle {
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let mut probe = [0u8; 1];
        match s.write_all(b"GET /tiles/a HTTP/1.1\r\nHost: localhost\r\n\r\n") {
            Ok(()) if s.peek(&mut probe).is_ok_and(|n| n > 0) => open.push(s),
            _ => {}
        }
    }
    assert_eq!(open.len(), 2, "exactly one connection made the room");
    assert_eq!(gw.metric(shed), 1.0);
    // The connection that has not sent its first request is still served.
    let mut fresh = fresh;
    fresh
        .write_all(b"GET /tiles/c HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .expect("send");
    assert_eq!(read_response(&mut fresh, false).status, 200);
}

/// Room asked for while the connections at the cap were each serving a request (a map view's
/// burst, opened at once) is made once one of them waits for its next request: before, the
/// ask went unseen by connections in their first request, and the next client waited until
/// one closed by itself (the keep-alive timeout).
#[test]
fn room_asked_for_during_the_requests_at_the_cap_is_made_after_them() {
    let up = EchoUpstream::start("tiles");
    let dir = ConfigDir::new(&config(&up.url("")));
    let gw = GatewayProcess::start_with(
        &dir,
        &["--max-connections", "4", "--keepalive-timeout", "600"],
        &[],
    );
    std::thread::sleep(Duration::from_millis(300)); // the readiness probes' connections close
    let mut busy: Vec<TcpStream> = (0..4)
        .map(|_| {
            let mut s = connect(gw.port);
            s.write_all(b"GET /tiles/slow/800 HTTP/1.1\r\nHost: localhost\r\n\r\n")
                .expect("send");
            s
        })
        .collect();
    // At the cap while all four are served: this one asks for room.
    std::thread::sleep(Duration::from_millis(200));
    let mut next = connect(gw.port);
    next.write_all(b"GET /tiles/b HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .expect("send");
    for s in &mut busy {
        assert_eq!(read_response(s, false).status, 200);
    }
    next.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let r = read_response(&mut next, false);
    assert_eq!(r.status, 200, "{}", r.text());
    let shed = r#"tollgate_client_connections_closed_total{reason="shed"}"#;
    assert_eq!(gw.metric_when(shed, |v| v >= 1.0), 1.0);
}

#[test]
fn open_files_limit_is_raised_and_sighup_does_not_stop_the_gateway() {
    let up = EchoUpstream::start("tiles");
    let dir = ConfigDir::new(&config(&up.url("")));
    let gw = GatewayProcess::start(&dir);
    let limits =
        std::fs::read_to_string(format!("/proc/{}/limits", gw.child.id())).expect("process limits");
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("open files line");
    let nums: Vec<&str> = line.split_whitespace().skip(3).take(2).collect();
    assert_eq!(
        nums[0], nums[1],
        "soft limit raised to the hard limit: {line}"
    );

    gw.signal("HUP");
    std::thread::sleep(Duration::from_millis(300));
    gw.signal("HUP");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(get(gw.port, "GET", "/tiles/a", &[]).status, 200);
    // (Said once a reload ended: a busy machine may take longer.)
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !gw.log_text().contains("SIGHUP") {
        assert!(std::time::Instant::now() < deadline, "{}", gw.log_text());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(get(gw.port, "GET", "/tiles/a", &[]).status, 200);
}

/// Traffic to an upstream that closes idle pooled connections (as Python and Node servers do)
/// writes no error; an upstream that is down writes one warning per kind of failure, folded.
#[test]
fn the_log_has_no_errors_for_normal_events_and_folds_repeats() {
    let mut up = PyUpstream::start("tiles", 0.2);
    let dir = ConfigDir::new(&config(&up.url("")));
    let gw = GatewayProcess::start_with(&dir, &[], &[("TOLLGATE_LOG_FOLD_SECONDS", "1")]);
    let mut failed = 0;
    for round in 0..6 {
        for _ in 0..40 {
            if get(gw.port, "GET", "/tiles/a", &[]).status != 200 {
                failed += 1;
            }
        }
        // Let the upstream close the pooled connections (idle timeout 0.2 s).
        if round < 5 {
            std::thread::sleep(Duration::from_millis(400));
        }
    }
    assert_eq!(failed, 0);
    assert_eq!(gw.error_lines(), Vec::<String>::new());

    up.kill();
    for _ in 0..50 {
        assert_eq!(get(gw.port, "GET", "/tiles/a", &[]).status, 502);
    }
    // The repeats are counted in a line of their own, written once they are a second old.
    let folded = Instant::now();
    let log = loop {
        let log = gw.log_text();
        if log.contains("repeated") || folded.elapsed() > Duration::from_secs(6) {
            break log;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let failures: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("upstream failure: api endpoint `tiles`"))
        .collect();
    assert!(
        !failures.is_empty() && failures.len() <= 3,
        "one line per kind, folded: {failures:#?}"
    );
    assert!(
        failures.iter().any(|l| l.contains("repeated")),
        "the repeats are counted: {failures:#?}"
    );
    assert!(failures[0].contains(" WARN "), "{}", failures[0]);
    assert_eq!(gw.error_lines(), Vec::<String>::new());
}

/// Empty lines before a request line are ignored (RFC 9112 §2.2): a client that ends a request
/// with one more CRLF, with the request or in a write of its own, keeps its connection for the
/// next request — no `408` when the header timeout passes.
#[test]
fn empty_lines_between_requests_are_ignored() {
    let up = PyUpstream::start("a", 5.0);
    let dir = ConfigDir::new(&config(&up.url("")));
    let gw = GatewayProcess::start_with(&dir, &["--header-timeout", "1"], &[]);
    for how in ["with the request", "a write of its own"] {
        let mut s = connect(gw.port);
        if how == "with the request" {
            s.write_all(b"GET /tiles/a HTTP/1.1\r\nHost: h\r\n\r\n\r\n")
                .expect("send");
            assert_eq!(read_response(&mut s, false).status, 200);
        } else {
            s.write_all(b"GET /tiles/a HTTP/1.1\r\nHost: h\r\n\r\n")
                .expect("send");
            assert_eq!(read_response(&mut s, false).status, 200);
            s.write_all(b"\r\n").expect("send");
        }
        // Longer than the header timeout (the empty line began no head), shorter than
        // keep-alive's: nothing comes, the connection stays.
        std::thread::sleep(Duration::from_millis(1500));
        s.set_read_timeout(Some(Duration::from_millis(200)))
            .expect("timeout");
        let mut got = [0; 64];
        let read = s.read(&mut got);
        assert!(
            matches!(&read, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock
                || e.kind() == std::io::ErrorKind::TimedOut),
            "{how}: {read:?} {:?}",
            String::from_utf8_lossy(&got)
        );
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        s.write_all(b"\r\nGET /tiles/b HTTP/1.1\r\nHost: h\r\n\r\n")
            .expect("send");
        let r = read_response(&mut s, false);
        assert_eq!(r.status, 200, "{how}: {}", r.text());
    }
}

/// An upstream that switches protocols whatever it was asked, then sends raw bytes.
fn switching_upstream() -> u16 {
    support::upstream::raw(|conn| {
        let _ = conn.write_all(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: foo\r\nConnection: upgrade\r\n\r\nRAW-BYTES",
        );
        std::thread::sleep(Duration::from_secs(2));
    })
}

/// A `101` to a request that asked for no protocol switch opens no tunnel past the pipeline:
/// `502`, on the fast path (a GET) and on Pingora's (a POST with a body, an HTTP/1.0 request
/// whose `Upgrade` is not forwarded).
#[test]
fn a_switch_the_client_did_not_ask_for_is_a_502() {
    let port = switching_upstream();
    let dir = ConfigDir::new(&config(&format!("http://127.0.0.1:{port}")));
    let gw = GatewayProcess::start(&dir);
    for request in [
        "GET /tiles/a HTTP/1.1\r\nHost: localhost\r\n\r\n",
        "POST /tiles/a HTTP/1.1\r\nHost: localhost\r\nContent-Length: 3\r\n\r\nabc",
        "GET /tiles/a HTTP/1.0\r\nHost: localhost\r\nConnection: upgrade\r\nUpgrade: foo\r\n\r\n",
    ] {
        let mut s = connect(gw.port);
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        s.write_all(request.as_bytes()).expect("send");
        let mut got = Vec::new();
        let _ = s.read_to_end(&mut got);
        let got = String::from_utf8_lossy(&got);
        assert!(
            got.starts_with("HTTP/1.1 502") && !got.contains("RAW-BYTES"),
            "{request:?}: {got}"
        );
    }
}
