//! The server as an operator runs it: the read-only Admin API, SIGTERM draining in-flight
//! requests (and the first request of a connection made just before it), SIGINT stopping at
//! once.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use support::client::read_response;
use support::{get, ConfigDir, EchoUpstream, GatewayProcess};

fn config(up: &EchoUpstream) -> String {
    format!(
        "http:\n  port: ${{PORT}}\nadmin:\n  port: ${{ADMIN_PORT}}\n  host: 127.0.0.1\napiEndpoints:\n  multi: {{paths: ['/a/*', '/b/*']}}\n  slow: {{host: '*', paths: '/slow/*'}}\nserviceEndpoints:\n  up: {{url: '{}'}}\npolicies: [proxy, terminate]\npipelines:\n  p:\n    apiEndpoints: [slow]\n    policies:\n      - proxy: [{{action: {{serviceEndpoint: up}}}}]\n  t:\n    apiEndpoints: multi\n    policies:\n      - terminate:\n",
        up.url("")
    )
}

/// An upstream and a gateway in front of it with this grace period (seconds).
fn with_grace_period(secs: &str) -> (EchoUpstream, ConfigDir, GatewayProcess) {
    let up = EchoUpstream::start("up");
    let dir = ConfigDir::new(&config(&up));
    let gw = GatewayProcess::start_with(&dir, &["--grace-period", secs], &[]);
    (up, dir, gw)
}

#[test]
fn admin_api_serves_the_config() {
    let up = EchoUpstream::start("up");
    let dir = ConfigDir::new(&config(&up));
    let gw = GatewayProcess::start(&dir);
    let admin = gw.admin_port;
    let r = get(admin, "GET", "/api-endpoints", &[]);
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-type"),
        Some("application/json; charset=utf-8")
    );
    assert_eq!(
        r.text(),
        r#"{"multi":{"paths":["/a/*","/b/*"]},"slow":{"host":"*","paths":"/slow/*"}}"#
    );
    assert_eq!(
        get(admin, "GET", "/api-endpoints/multi", &[]).text(),
        r#"{"paths":["/a/*","/b/*"]}"#
    );
    assert_eq!(
        get(admin, "GET", "/service-endpoints/up", &[]).text(),
        format!(r#"{{"url":"{}"}}"#, up.url(""))
    );
    assert_eq!(
        get(admin, "GET", "/pipelines/t", &[]).text(),
        r#"{"apiEndpoints":["multi"],"policies":[{"terminate":null}]}"#
    );
    let pipelines: serde_json::Value =
        serde_json::from_slice(&get(admin, "GET", "/pipelines", &[]).body).expect("json");
    assert_eq!(
        pipelines
            .as_object()
            .map(|o| o.keys().cloned().collect::<Vec<_>>()),
        Some(vec!["p".to_string(), "t".to_string()])
    );
    assert_eq!(
        get(admin, "GET", "/policies", &[]).text(),
        r#"["proxy","terminate"]"#
    );
    let missing = get(admin, "GET", "/pipelines/nope", &[]);
    assert_eq!((missing.status, missing.body.len()), (404, 0));
    assert_eq!(get(admin, "GET", "/nothing-here", &[]).status, 404);
    // The admin listener is not the gateway: its routes are not served on the gateway port.
    assert_eq!(get(gw.port, "GET", "/api-endpoints", &[]).status, 404);
}

#[test]
fn sigterm_drains_in_flight_requests_then_exits() {
    let (up, _dir, mut gw) = with_grace_period("10");
    let port = gw.port;
    // On a keep-alive connection: its answer says the connection closes, as it will (it said
    // keep-alive, and the client's next request on it failed).
    let in_flight = std::thread::spawn(move || {
        support::request(
            port,
            "GET /slow/slow/1500 HTTP/1.1\r\nHost: h\r\n\r\n",
            false,
        )
    });
    let deadline = Instant::now() + Duration::from_secs(5);
    while up.hits.load(std::sync::atomic::Ordering::SeqCst) == 0 {
        assert!(
            Instant::now() < deadline,
            "the request never reached the upstream"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let sent = Instant::now();
    gw.signal("TERM");
    let r = in_flight.join().expect("request thread");
    assert_eq!(
        r.status,
        200,
        "the in-flight request completes: {}",
        r.text()
    );
    assert_eq!(r.header("connection"), Some("close"), "{:?}", r.headers);
    let status = exit_within(
        &mut gw,
        Duration::from_secs(9).saturating_sub(sent.elapsed()),
        "still running long after the request finished",
    );
    assert!(status.success(), "{status}");
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "no longer listening"
    );
}

#[test]
fn a_shutdown_answers_a_first_request_still_on_its_way_and_closes_idle_connections() {
    let (_up, _dir, mut gw) = with_grace_period("10");
    let ask = b"GET /slow/x HTTP/1.1\r\nHost: h\r\n\r\n";
    // A connection that has had an answer and waits for its next request.
    let mut idle = TcpStream::connect(("127.0.0.1", gw.port)).expect("connect");
    idle.write_all(ask).expect("send");
    assert_eq!(read_response(&mut idle, false).status, 200);
    // A connection made, its request not sent yet.
    let mut fresh = TcpStream::connect(("127.0.0.1", gw.port)).expect("connect");
    std::thread::sleep(Duration::from_millis(300));
    gw.signal("TERM");
    idle.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut byte = [0u8; 1];
    let closed = Instant::now();
    match idle.read(&mut byte) {
        Ok(0) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("the idle connection was not closed: {other:?}"),
    }
    assert!(
        closed.elapsed() < Duration::from_secs(3),
        "{:?}",
        closed.elapsed()
    );
    // Past the drain's first look: the request arrives while the process is shutting down.
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        gw.child.try_wait().expect("wait").is_none(),
        "the gateway left before the request it had accepted a connection for:\n{}",
        gw.log_text()
    );
    fresh.write_all(ask).expect("send");
    fresh
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let r = read_response(&mut fresh, false);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("connection"), Some("close"));
    let status = exit_within(
        &mut gw,
        Duration::from_secs(4),
        "still running after every connection had its answer",
    );
    assert!(status.success(), "{status}");
}

#[test]
fn a_sigterm_serves_the_connections_waiting_in_the_backlog() {
    let (_up, _dir, mut gw) = with_grace_period("10");
    // Stopped, the gateway accepts nothing: the kernel completes the connections and queues
    // them, requests included. The SIGTERM is there when it runs again.
    gw.signal("STOP");
    let ask = b"GET /slow/x HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n";
    let queued: Vec<TcpStream> = (0..50)
        .map(|_| {
            let mut s = TcpStream::connect(("127.0.0.1", gw.port)).expect("connect");
            s.write_all(ask).expect("send");
            s.set_read_timeout(Some(Duration::from_secs(10)))
                .expect("timeout");
            s
        })
        .collect();
    gw.signal("TERM");
    gw.signal("CONT");
    let answers: Vec<String> = queued
        .into_iter()
        .map(|mut s| {
            let mut answer = Vec::new();
            match s.read_to_end(&mut answer) {
                Ok(_) => String::from_utf8_lossy(&answer)
                    .lines()
                    .next()
                    .unwrap_or("closed without an answer")
                    .to_string(),
                Err(e) => format!("{e}"),
            }
        })
        .collect();
    let unanswered: Vec<&String> = answers
        .iter()
        .filter(|a| !a.starts_with("HTTP/1.1 200"))
        .collect();
    assert!(
        unanswered.is_empty(),
        "{} of 50 not answered: {:?}\n{}",
        unanswered.len(),
        &unanswered[..unanswered.len().min(3)],
        gw.log_text()
    );
    let status = exit_within(&mut gw, Duration::from_secs(9), "still running");
    assert!(status.success(), "{status}");
}

/// The gateway's exit status, once it exits within `limit` of now.
fn exit_within(gw: &mut GatewayProcess, limit: Duration, what: &str) -> std::process::ExitStatus {
    let since = Instant::now();
    loop {
        if let Some(status) = gw.child.try_wait().expect("wait") {
            return status;
        }
        assert!(since.elapsed() < limit, "{what}:\n{}", gw.log_text());
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn sigint_stops_at_once() {
    let (_up, _dir, mut gw) = with_grace_period("30");
    gw.signal("INT");
    exit_within(
        &mut gw,
        Duration::from_secs(10),
        "SIGINT did not stop the gateway",
    );
}

/// A memory tier larger than the machine's memory is said at start (it started without a
/// word, and would have been killed for want of memory as it filled); the gateway serves.
#[test]
fn a_memory_tier_past_the_machines_memory_is_said() {
    let total_kib: u64 = std::fs::read_to_string("/proc/meminfo")
        .expect("meminfo")
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("MemTotal");
    let up = EchoUpstream::start("up");
    let dir = ConfigDir::new(&config(&up));
    let too_much = format!("{}MiB", (total_kib >> 10) * 2);
    let gw = GatewayProcess::start_with(&dir, &["--cache-memory", &too_much], &[]);
    assert_eq!(get(gw.port, "GET", "/slow/x", &[]).status, 200);
    assert!(
        gw.log_text()
            .contains("is more than the memory this process may use"),
        "{}",
        gw.log_text()
    );
    let dir = ConfigDir::new(&config(&up));
    let gw = GatewayProcess::start_with(&dir, &["--cache-memory", "64MiB"], &[]);
    assert!(
        !gw.log_text().contains("more than the memory"),
        "{}",
        gw.log_text()
    );
}

#[test]
fn no_listener_section_is_an_error_on_serve() {
    let dir = ConfigDir::new("apiEndpoints: {}\n");
    let out =
        support::gateway::run_tollgate(&["serve", "-c", &dir.path.display().to_string()], &[]);
    // A config error, where the file is (as `check` says it).
    assert_eq!(out.status.code(), Some(2));
    let said = String::from_utf8_lossy(&out.stderr);
    let at = format!(
        "{}:1:1: no `http` or `https` section",
        dir.file("gateway.config.yml")
    );
    assert!(said.contains(&at), "{said}");
}

#[test]
fn a_taken_port_is_a_clear_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port();
    let dir = ConfigDir::new(&format!("http: {{port: {port}, hostname: 127.0.0.1}}\n"));
    let out =
        support::gateway::run_tollgate(&["serve", "-c", &dir.path.display().to_string()], &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("cannot listen on 127.0.0.1:{port}")),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}
