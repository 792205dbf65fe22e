//! What an operator sees: tollgate's metric families beside Kargo's `eg` (checked with a real
//! Prometheus text parser), `/metrics` through a gateway pipeline as Kargo's `prometheus`
//! endpoint does, readiness, and the JSON access log with credentials redacted.

mod support;

use std::time::{Duration, Instant};

use support::redis::RedisServer;
use support::{get, jwt, ConfigDir, EchoUpstream, GatewayProcess};

fn config(up: &EchoUpstream) -> String {
    format!(
        r#"http: {{port: ${{PORT}}}}
admin: {{port: ${{ADMIN_PORT}}, host: 127.0.0.1}}
apiEndpoints:
  wmts: {{paths: '/wmts/*'}}
  prometheus: {{paths: '/metrics'}}
  dead: {{paths: '/dead/*'}}
serviceEndpoints:
  up: {{url: '{up}'}}
  admin: {{url: 'http://127.0.0.1:${{ADMIN_PORT}}/metrics'}}
  dead: {{url: 'http://127.0.0.1:1'}}
policies: [metrics, jwt, key-auth, proxy]
pipelines:
  wmts:
    apiEndpoints: [wmts]
    policies:
      - metrics:
      - jwt: [{{action: {{secretOrPublicKey: s, checkCredentialExistence: false, jwtExtractor: query, jwtExtractorField: token, passThrough: true}}}}]
      - key-auth: [{{action: {{apiKeyField: key, passThrough: true}}}}]
      - proxy: [{{action: {{serviceEndpoint: up, stripPath: true}}}}]
  prometheus:
    apiEndpoints: [prometheus]
    policies:
      - proxy: [{{action: {{serviceEndpoint: admin, changeOrigin: true, stripPath: true}}}}]
  dead:
    apiEndpoints: [dead]
    policies:
      - metrics:
      - proxy: [{{action: {{serviceEndpoint: dead}}}}]
"#,
        up = up.url("")
    )
}

fn scrape(port: u16) -> prometheus_parse::Scrape {
    let text = get(port, "GET", "/metrics", &[]).text();
    let lines = text.lines().map(|l| Ok(l.to_string()));
    prometheus_parse::Scrape::parse(lines)
        .unwrap_or_else(|e| panic!("the exposition does not parse: {e}\n{text}"))
}

fn value(s: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    s.samples
        .iter()
        .filter(|x| x.metric == name && labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v)))
        .map(|x| match &x.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => *v,
            prometheus_parse::Value::Histogram(h) => h.iter().map(|b| b.count).fold(0.0, f64::max),
            prometheus_parse::Value::Summary(_) => 0.0,
        })
        .reduce(f64::max)
}

#[test]
fn metric_families_and_metrics_through_a_pipeline() {
    let up = EchoUpstream::start("up");
    let dir = ConfigDir::new(&config(&up));
    let gw = GatewayProcess::start(&dir);
    for _ in 0..3 {
        assert_eq!(get(gw.port, "GET", "/wmts/1/2/3.png", &[]).status, 200);
    }
    assert_eq!(get(gw.port, "GET", "/dead/x", &[]).status, 502);
    assert_eq!(get(gw.port, "GET", "/nowhere", &[]).status, 404);
    // Requests are recorded as their responses complete: wait until all of them are.
    let deadline = Instant::now() + Duration::from_secs(5);
    let s = loop {
        let s = scrape(gw.admin_port);
        let done = value(&s, "tollgate_upstream_errors_total", &[("kind", "refused")])
            .unwrap_or(0.0)
            >= 1.0
            && value(&s, "tollgate_store_up", &[]) == Some(1.0)
            && value(
                &s,
                "eg",
                &[("api_endpoint", "wmts"), ("status_code", "200")],
            ) == Some(3.0)
            && value(
                &s,
                "tollgate_request_duration_seconds",
                &[("api_endpoint", ""), ("status_class", "4xx")],
            )
            .unwrap_or(0.0)
                >= 1.0;
        if done || Instant::now() > deadline {
            break s;
        }
        std::thread::sleep(Duration::from_millis(100));
    };

    assert_eq!(
        value(
            &s,
            "eg",
            &[
                ("api_endpoint", "wmts"),
                ("status_code", "200"),
                ("type", "SUCCESS"),
                ("consumer", "anonymous")
            ]
        ),
        Some(3.0)
    );
    assert_eq!(
        value(
            &s,
            "eg",
            &[("api_endpoint", "dead"), ("status_code", "502")]
        ),
        Some(1.0)
    );
    assert!(
        value(
            &s,
            "tollgate_request_duration_seconds",
            &[("api_endpoint", "wmts"), ("status_class", "2xx")]
        )
        .unwrap_or(0.0)
            >= 3.0
    );
    assert!(
        value(
            &s,
            "tollgate_request_duration_seconds",
            &[("api_endpoint", ""), ("status_class", "4xx")]
        )
        .unwrap_or(0.0)
            >= 1.0,
        "unrouted requests count under an empty endpoint"
    );
    assert!(
        value(
            &s,
            "tollgate_upstream_duration_seconds",
            &[("api_endpoint", "wmts")]
        )
        .unwrap_or(0.0)
            >= 3.0
    );
    // A request no answer's head came for (the upstream refused it) has no upstream time.
    assert_eq!(
        value(
            &s,
            "tollgate_upstream_duration_seconds",
            &[("api_endpoint", "dead")]
        )
        .unwrap_or(0.0),
        0.0
    );
    assert!(
        value(
            &s,
            "tollgate_response_body_bytes_total",
            &[("api_endpoint", "wmts")]
        )
        .unwrap_or(0.0)
            > 0.0
    );
    assert_eq!(
        value(&s, "tollgate_upstream_errors_total", &[("kind", "refused")]),
        Some(1.0)
    );
    assert_eq!(
        value(&s, "tollgate_config_loads_total", &[("result", "ok")]),
        Some(1.0)
    );
    assert_eq!(value(&s, "tollgate_store_up", &[]), Some(1.0));
    assert!(value(&s, "tollgate_requests_in_flight", &[]).is_some());
    assert!(
        value(&s, "tollgate_consumer_cache_last_resync_age_seconds", &[]).unwrap_or(-1.0) >= 0.0
    );
    // A credential looked up is counted in the next scrape, not after the store's probe.
    let misses = |s: &prometheus_parse::Scrape| {
        value(s, "tollgate_consumer_cache_misses_total", &[]).expect("the misses counter")
    };
    let before = misses(&scrape(gw.admin_port));
    for n in 1..=3 {
        let r = get(gw.port, "GET", &format!("/wmts/1/2/3.png?key=k{n}:s"), &[]);
        assert_eq!(r.status, 200, "passThrough");
        assert_eq!(misses(&scrape(gw.admin_port)), before + f64::from(n));
    }
    // Scrapes at once each see every url's health (the gauge is rebuilt for each scrape).
    let healthy = |text: &str| {
        text.lines()
            .filter(|l| l.starts_with("tollgate_upstream_healthy{"))
            .count()
    };
    let port = gw.admin_port;
    let urls = healthy(&get(port, "GET", "/metrics", &[]).text());
    assert!(urls >= 2, "{urls}");
    let scrapers: Vec<_> = (0..8)
        .map(|_| {
            std::thread::spawn(move || {
                (0..40)
                    .map(|_| healthy(&get(port, "GET", "/metrics", &[]).text()))
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    for scraper in scrapers {
        let seen = scraper.join().expect("a scraper");
        assert!(
            seen.iter().all(|n| *n == urls),
            "urls' health per scrape: {seen:?}"
        );
    }
    // No unbounded labels outside `eg`: nothing carries a raw path.
    assert!(!s
        .samples
        .iter()
        .any(|x| x.labels.values().any(|v| v.contains("/wmts/1"))));
    // Kargo's `prometheus` endpoint as Kargo writes it: /metrics through a pipeline to the
    // admin port's `/metrics` url with `stripPath`, which asks the Admin API for `/metrics/`
    // (it was 404: the path had to be equal, where EG's Express takes one trailing slash and
    // any case).
    let through = get(gw.port, "GET", "/metrics", &[]);
    assert_eq!(through.status, 200, "{}", through.text());
    assert!(through.text().contains("# TYPE eg counter"));
    for path in ["/metrics/", "/METRICS"] {
        let r = get(gw.admin_port, "GET", path, &[]);
        assert_eq!(r.status, 200, "{path}");
        assert!(r.text().contains("# TYPE eg counter"), "{path}");
    }
    assert_eq!(get(gw.admin_port, "GET", "/metrics//", &[]).status, 404);
    // Kargo's healthcheck plugin, an Express route too.
    for path in ["/healthcheck/", "/HEALTHCHECK"] {
        let r = get(gw.port, "GET", path, &[]);
        assert_eq!((r.status, r.text().as_str()), (200, "OK"), "{path}");
    }
}

#[test]
fn readiness_follows_the_store() {
    let mut redis = RedisServer::start();
    let up = EchoUpstream::start("up");
    let dir = ConfigDir::new(&config(&up));
    dir.write(
        "system.config.yml",
        &format!(
            "db:\n  redis:\n    emulate: false\n    port: {}\n",
            redis.port
        ),
    );
    let gw = GatewayProcess::start(&dir);
    let ready = get(gw.port, "GET", "/healthcheck?ready", &[]);
    assert_eq!(
        (ready.status, ready.text().as_str()),
        (200, r#"{"status":"ready"}"#)
    );
    redis.stop();
    let deadline = Instant::now() + Duration::from_secs(6);
    let r = loop {
        let r = get(gw.port, "GET", "/healthcheck?ready", &[]);
        if r.status == 503 || Instant::now() > deadline {
            break r;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(r.status, 503);
    let body: serde_json::Value = serde_json::from_slice(&r.body).expect("json");
    assert_eq!(body["status"], "not ready");
    // Why, without the store's address (the answer goes to whoever reaches the port).
    assert_eq!(
        body["reason"], "the consumer store is unreachable",
        "{body}"
    );
    assert!(!r.text().contains(&redis.port.to_string()), "{}", r.text());
    // Kargo's plain healthcheck stays 200 OK.
    let plain = get(gw.port, "GET", "/healthcheck", &[]);
    assert_eq!((plain.status, plain.text().as_str()), (200, "OK"));
}

#[test]
fn access_log_lines_redact_credentials() {
    let up = EchoUpstream::start("up");
    let dir = ConfigDir::new(&config(&up));
    let log = dir.path.join("access.log");
    let gw = GatewayProcess::start_with(&dir, &["--access-log", &log.display().to_string()], &[]);
    let token = jwt::hs256("s", &serde_json::json!({"id": "c1"}));
    assert_eq!(
        get(
            gw.port,
            "GET",
            &format!("/wmts/1?token={token}&x=1"),
            &[("Authorization", "Bearer secret-bearer")]
        )
        .status,
        200
    );
    assert_eq!(
        get(gw.port, "GET", "/wmts/2?key=id:secret-key&jwt=a.b.c", &[]).status,
        200
    );
    let deadline = Instant::now() + Duration::from_secs(3);
    let text = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.lines().count() >= 2 || Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert_eq!(lines.len(), 2, "{text}");
    let first = &lines[0];
    assert_eq!(first["path"], "/wmts/1?token=REDACTED&x=1");
    assert_eq!(
        (first["method"].as_str(), first["status"].as_u64()),
        (Some("GET"), Some(200))
    );
    assert_eq!(first["consumer"], "c1");
    assert_eq!(first["api_endpoint"], "wmts");
    assert!(first["upstream"]
        .as_str()
        .is_some_and(|u| u.ends_with(&format!(":{}", up.port))));
    assert_eq!(first["request_id"].as_str().map(str::len), Some(22));
    assert!(first["duration_ms"].as_f64().is_some() && first["upstream_ms"].as_f64().is_some());
    assert!(first["bytes_out"].as_u64().unwrap_or(0) > 0);
    assert_eq!(lines[1]["path"], "/wmts/2?key=REDACTED&jwt=REDACTED");
    assert!(
        !text.contains("secret") && !text.contains(&token),
        "no secret reaches the log: {text}"
    );
}

/// The access log's line count, 0 for no file.
fn lines_in(path: &std::path::Path) -> usize {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .count()
}

/// Waits up to 5 s for `done`.
fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !done() {
        assert!(Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `logrotate` moves the access log away (or removes it): the gateway opens a new file at its
/// path within a second or so, and no line is lost on the way (those written before the new
/// file was opened are in the old one).
#[test]
fn the_access_log_is_reopened_when_its_file_is_moved_or_removed() {
    let up = EchoUpstream::start("up");
    let dir = ConfigDir::new(&config(&up));
    let log = dir.path.join("access.log");
    let gw = GatewayProcess::start_with(&dir, &["--access-log", &log.display().to_string()], &[]);
    let sent = std::cell::Cell::new(0);
    let request = || {
        assert_eq!(get(gw.port, "GET", "/wmts/1", &[]).status, 200);
        sent.set(sent.get() + 1);
    };
    request();
    wait_for("the first line", || lines_in(&log) == 1);
    let rotated = dir.path.join("access.log.1");
    std::fs::rename(&log, &rotated).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while lines_in(&log) == 0 {
        assert!(Instant::now() < deadline, "no new access log at {log:?}");
        request();
        std::thread::sleep(Duration::from_millis(100));
    }
    wait_for("every request's line in one of the two files", || {
        lines_in(&rotated) + lines_in(&log) == sent.get()
    });
    assert!(lines_in(&rotated) >= 1, "the old file keeps its lines");
    // Removed (the lines in it go with it): a new file again.
    std::fs::remove_file(&log).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while lines_in(&log) == 0 {
        assert!(
            Instant::now() < deadline,
            "no new access log after a removal"
        );
        request();
        std::thread::sleep(Duration::from_millis(100));
    }
    let text = std::fs::read_to_string(&log).unwrap();
    let line: serde_json::Value =
        serde_json::from_str(text.lines().next().unwrap()).expect("a JSON line");
    assert_eq!(
        (line["path"].as_str(), line["status"].as_u64()),
        (Some("/wmts/1"), Some(200))
    );
}

/// An access log that cannot be written (a full disk: `/dev/full`) says so once, not once per
/// line, and the requests are answered all the same.
#[test]
fn an_access_log_that_cannot_be_written_says_so_once() {
    let up = EchoUpstream::start("up");
    let dir = ConfigDir::new(&config(&up));
    let gw = GatewayProcess::start_with(&dir, &["--access-log", "/dev/full"], &[]);
    let said = "access log: lines cannot be written";
    for _ in 0..5 {
        assert_eq!(get(gw.port, "GET", "/wmts/1", &[]).status, 200);
        wait_for("the failure said", || gw.log_text().contains(said));
    }
    let log = gw.log_text();
    assert_eq!(log.matches(said).count(), 1, "{log}");
}

/// Kargo's `eg` counter counts responses that complete: a client that leaves before its answer
/// (a map panned away from tiles still loading) is not a `FAILED` request with status `0`, nor
/// with the status of an interim answer it got (`100 Continue`, an upstream's `103`).
#[test]
fn a_client_that_leaves_before_its_answer_is_not_counted_in_eg() {
    let up = support::upstream::PyUpstream::start("tiles", 5.0);
    // And an upstream that sends an interim `103 Early Hints`, then nothing more.
    let hints = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let hints_port = hints.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        for conn in hints.incoming() {
            let Ok(mut conn) = conn else { continue };
            std::thread::spawn(move || {
                let mut buf = [0; 4096];
                let _ = conn.read(&mut buf);
                let _ = conn.write_all(b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n");
                std::thread::sleep(Duration::from_secs(3));
            });
        }
    });
    let yml = format!(
        "http: {{port: ${{PORT}}}}\nadmin: {{port: ${{ADMIN_PORT}}, host: 127.0.0.1}}\napiEndpoints:\n  tiles: {{paths: '/tiles/*'}}\n  hints: {{paths: '/hints/*'}}\nserviceEndpoints:\n  up: {{url: '{}'}}\n  hints: {{url: 'http://127.0.0.1:{hints_port}'}}\npolicies: [metrics, proxy]\npipelines:\n  tiles:\n    apiEndpoints: [tiles]\n    policies:\n      - metrics:\n      - proxy: [{{action: {{serviceEndpoint: up}}}}]\n  hints:\n    apiEndpoints: [hints]\n    policies:\n      - metrics:\n      - proxy: [{{action: {{serviceEndpoint: hints}}}}]\n",
        up.url("")
    );
    let dir = ConfigDir::new(&yml);
    let gw = GatewayProcess::start(&dir);
    {
        use std::io::Write;
        let mut s = std::net::TcpStream::connect(("127.0.0.1", gw.port)).expect("connect");
        write!(s, "GET /hints/x HTTP/1.1\r\nHost: h\r\n\r\n").expect("send");
        std::thread::sleep(Duration::from_millis(500));
        drop(s);
    }
    for fast_path in [true, false] {
        use std::io::Write;
        let mut s = std::net::TcpStream::connect(("127.0.0.1", gw.port)).expect("connect");
        // `Expect` takes the request to Pingora's path.
        let extra = if fast_path {
            ""
        } else {
            "Expect: 100-continue\r\n"
        };
        write!(
            s,
            "GET /tiles/slow/1000/x HTTP/1.1\r\nHost: h\r\n{extra}\r\n"
        )
        .expect("send");
        std::thread::sleep(Duration::from_millis(300));
        drop(s);
    }
    {
        // The answer's head and half its body come at once, the rest a second later: the
        // fast path reads it whole before it answers, and the client is gone by then.
        use std::io::Write;
        let mut s = std::net::TcpStream::connect(("127.0.0.1", gw.port)).expect("connect");
        write!(
            s,
            "GET /tiles/bytes/50000/stall/1000 HTTP/1.1\r\nHost: h\r\n\r\n"
        )
        .expect("send");
        std::thread::sleep(Duration::from_millis(300));
        drop(s);
    }
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(get(gw.port, "GET", "/tiles/x", &[]).status, 200);
    let deadline = Instant::now() + Duration::from_secs(5);
    let text = loop {
        let text = get(gw.admin_port, "GET", "/metrics", &[]).text();
        if text.contains("status_code=\"200\"") || Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let eg: Vec<&str> = text.lines().filter(|l| l.starts_with("eg{")).collect();
    assert_eq!(eg.len(), 1, "{eg:?}");
    assert!(eg[0].contains("status_code=\"200\""), "{eg:?}");
    assert!(
        eg[0].ends_with(" 1"),
        "the one answered request alone: {eg:?}"
    );
}

/// Through a `cache` step: a client that leaves while its tile's fill waits for the
/// upstream's head (a WMS drawing it) is not counted in `eg`; a client that closed its side of
/// the connection after sending its next request is answered the request it still waits on,
/// and taken as gone (as nginx takes it) for its last.
#[test]
fn a_fills_client_that_left_is_not_counted_and_a_pipelined_request_keeps_it_answered() {
    use std::io::{Read, Write};
    let up = support::upstream::PyUpstream::start("tiles", 5.0);
    let yml = format!(
        "http: {{port: ${{PORT}}}}\nadmin: {{port: ${{ADMIN_PORT}}, host: 127.0.0.1}}\napiEndpoints:\n  tiles: {{paths: '/tiles/*'}}\nserviceEndpoints:\n  up: {{url: '{}'}}\npolicies: [metrics, cache, proxy]\npipelines:\n  tiles:\n    apiEndpoints: [tiles]\n    policies:\n      - metrics:\n      - cache:\n      - proxy: [{{action: {{serviceEndpoint: up}}}}]\n",
        up.url("")
    );
    let dir = ConfigDir::new(&yml);
    let gw = GatewayProcess::start(&dir);
    // (Also one that sent a blank line before it left: no sign it was there.)
    for (path, after) in [("left", ""), ("left-blank", "\r\n")] {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", gw.port)).expect("connect");
        write!(s, "GET /tiles/slow/400/{path} HTTP/1.1\r\nHost: h\r\n\r\n").expect("send");
        std::thread::sleep(Duration::from_millis(50));
        write!(s, "{after}").expect("send");
        std::thread::sleep(Duration::from_millis(50));
        drop(s);
    }
    let mut s = std::net::TcpStream::connect(("127.0.0.1", gw.port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    write!(s, "GET /tiles/stall/300/first HTTP/1.1\r\nHost: h\r\n\r\n").expect("send");
    std::thread::sleep(Duration::from_millis(100));
    write!(s, "GET /tiles/stall/300/second HTTP/1.1\r\nHost: h\r\n\r\n").expect("send");
    s.shutdown(std::net::Shutdown::Write).expect("half close");
    let mut answers = Vec::new();
    let _ = s.read_to_end(&mut answers);
    let answers = String::from_utf8_lossy(&answers);
    assert_eq!(answers.matches("HTTP/1.1 200").count(), 1, "{answers}");
    assert!(answers.contains("/tiles/stall/300/first"), "{answers}");
    std::thread::sleep(Duration::from_millis(800));
    let text = get(gw.admin_port, "GET", "/metrics", &[]).text();
    let eg: Vec<&str> = text.lines().filter(|l| l.starts_with("eg{")).collect();
    assert_eq!(eg.len(), 1, "{eg:?}");
    assert!(
        eg[0].contains("status_code=\"200\"") && eg[0].ends_with(" 1"),
        "the one answered request alone: {eg:?}"
    );
    // A client gone before its fill's upstream timed out is no 502 answered: not counted.
    dir.write(
        "gateway.config.yml",
        &yml.replace(
            "serviceEndpoint: up}",
            "serviceEndpoint: up, readTimeout: 600}",
        ),
    );
    let reload = support::send_json(gw.admin_port, "POST", "/tollgate/reload", "");
    assert_eq!(reload.status, 200, "{}", reload.text());
    {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", gw.port)).expect("connect");
        write!(s, "GET /tiles/slow/1500/gone HTTP/1.1\r\nHost: h\r\n\r\n").expect("send");
        std::thread::sleep(Duration::from_millis(100));
        drop(s);
    }
    std::thread::sleep(Duration::from_millis(1200));
    let text = get(gw.admin_port, "GET", "/metrics", &[]).text();
    let eg: Vec<&str> = text.lines().filter(|l| l.starts_with("eg{")).collect();
    assert_eq!(eg.len(), 1, "no 502 for the client that left: {eg:?}");
    // The upstream's failure is counted and said still.
    assert!(
        text.lines().any(
            |l| l.starts_with("tollgate_upstream_errors_total{kind=\"read_timeout\"")
                && l.ends_with(" 1")
        ),
        "{text}"
    );
    assert!(
        gw.log_text()
            .contains("read_timeout; nothing answered: the client had left"),
        "{}",
        gw.log_text()
    );
}

/// A warning that keeps coming is written with its count once per fold interval while it
/// comes (it was written plainly each interval, its count left for when it stopped, which
/// then said the whole run came in the last interval).
#[test]
fn a_repeating_warning_is_written_with_its_count_while_it_repeats() {
    let up = EchoUpstream::start("up");
    let dir = ConfigDir::new(&config(&up));
    let gw = GatewayProcess::start_with(&dir, &[], &[("TOLLGATE_LOG_FOLD_SECONDS", "1")]);
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(3600) {
        assert_eq!(get(gw.port, "GET", "/dead/x", &[]).status, 502);
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = gw.log_text();
    let failures: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("upstream failure") && l.contains("`dead`"))
        .collect();
    let counted: Vec<&&str> = failures
        .iter()
        .filter(|l| l.contains("(repeated "))
        .collect();
    assert!(counted.len() >= 2, "{log}");
    // Each count covers about an interval, not the run.
    for line in &counted {
        let secs: f64 = line
            .rsplit("in the last ")
            .next()
            .and_then(|s| s.trim_end_matches("s)").parse().ok())
            .unwrap_or(f64::MAX);
        assert!(secs < 2.0, "{line}");
    }
}
