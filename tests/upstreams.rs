//! Upstreams that fail gracefully, with real processes started and killed by the tests: active
//! health checks, outlier ejection, retries on another url (one upstream killed under load:
//! no failed request), timeouts, balancing (weights, least-connections, consistent hashing),
//! and compression of text responses.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use support::load::Load;
use support::upstream::PyUpstream;
use support::{get, request, send_json, ConfigDir, GatewayProcess};

fn config(urls: &[String], tollgate: &str, proxy_extra: &str, extra_steps: &str) -> String {
    let urls = urls
        .iter()
        .map(|u| format!("'{u}'"))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "http: {{port: ${{PORT}}}}\nadmin: {{port: ${{ADMIN_PORT}}, host: 127.0.0.1}}\napiEndpoints:\n  tiles: {{paths: '/tiles/*'}}\nserviceEndpoints:\n  maps:\n    urls: [{urls}]\n    tollgate: {tollgate}\npolicies: [cache, proxy, compression]\npipelines:\n  tiles:\n    apiEndpoints: [tiles]\n    policies:\n{extra_steps}      - proxy: [{{action: {{serviceEndpoint: maps{proxy_extra}}}}}]\n"
    )
}

fn name_of(r: &support::Response) -> String {
    serde_json::from_slice::<serde_json::Value>(&r.body)
        .ok()
        .and_then(|v| v["name"].as_str().map(str::to_string))
        .unwrap_or_default()
}

fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    start.elapsed()
}

/// A health check's path may carry a provider's key in its query (checks go to the url's host
/// without the url's own query): the line that says a url is unhealthy shows it as `?…`.
#[test]
fn a_failing_health_checks_line_shows_no_query() {
    let a = PyUpstream::start("a", 5.0);
    let b = PyUpstream::start("b", 5.0);
    let dir = ConfigDir::new(&config(
        &[a.url(""), b.url("")],
        "{healthCheck: {path: '/status/503?token=HC-SECRET-789', interval: 0.2, timeout: 0.5, unhealthyThreshold: 1}}",
        "",
        "      - cache:\n",
    ));
    let gw = GatewayProcess::start(&dir);
    wait_for("a line", Duration::from_secs(5), || {
        gw.log_text().contains("is unhealthy")
    });
    let log = gw.log_text();
    assert!(log.contains("/status/503?… answered 503"), "{log}");
    assert!(!log.contains("HC-SECRET-789"), "{log}");
    // Both urls out: the lines say no url is left (not that the others take the requests),
    // and a request's failure names none of them (none was asked; a `cache` step's request
    // goes on to its fill, where a stored tile may answer).
    wait_for("both out", Duration::from_secs(5), || {
        gw.log_text().matches("is unhealthy").count() == 2
    });
    let r = get(gw.port, "GET", "/tiles/x", &[]);
    assert_eq!(r.status, 502, "{}", r.text());
    // (Its line is written once the answer went.)
    wait_for("the failure's line", Duration::from_secs(5), || {
        gw.log_text().contains("; answered 502")
    });
    let log = gw.log_text();
    assert!(!log.contains("requests go to the others"), "{log}");
    assert!(log.contains("no url of it is available now"), "{log}");
    let failure = log
        .lines()
        .find(|l| l.contains("upstream failure"))
        .unwrap_or_else(|| panic!("no failure line: {log}"));
    assert!(failure.contains("upstream (none available)"), "{failure}");
    // Nor does the Admin API show it.
    let state = get(gw.admin_port, "GET", "/tollgate/upstreams", &[]).text();
    assert!(state.contains("/status/503?…"), "{state}");
    assert!(!state.contains("HC-SECRET-789"), "{state}");
}

#[test]
fn active_health_checks_skip_a_dead_url_and_bring_it_back() {
    let a = PyUpstream::start("a", 5.0);
    let mut b = PyUpstream::start("b", 5.0);
    let dir = ConfigDir::new(&config(
        &[a.url(""), b.url("")],
        "{healthCheck: {path: /health, interval: 0.2, timeout: 0.5, unhealthyThreshold: 2, healthyThreshold: 2}, outlierDetection: false, retries: 0}",
        "",
        "",
    ));
    let gw = GatewayProcess::start(&dir);
    let healthy = |url: &str| {
        gw.metric(&format!(
            r#"tollgate_upstream_healthy{{service="maps",url="{url}"}}"#
        ))
    };
    wait_for("both healthy", Duration::from_secs(3), || {
        healthy(&a.url("")) == 1.0 && healthy(&b.url("")) == 1.0
    });
    b.kill();
    let ejected = wait_for("b unhealthy", Duration::from_secs(3), || {
        healthy(&b.url("")) == 0.0
    });
    // Every request now goes to a.
    for _ in 0..20 {
        let r = get(gw.port, "GET", "/tiles/x", &[]);
        assert_eq!((r.status, name_of(&r)), (200, "a".to_string()));
    }
    let state = support::json_body(&get(gw.admin_port, "GET", "/tollgate/upstreams", &[]));
    let urls = &state["serviceEndpoints"][0]["urls"];
    assert_eq!(urls[1]["healthy"], false, "{state}");
    // (Said once every url's state is set.)
    wait_for("said unhealthy", Duration::from_secs(3), || {
        gw.log_text().contains("is unhealthy")
    });
    b.restart();
    let back = wait_for("b healthy again", Duration::from_secs(3), || {
        healthy(&b.url("")) == 1.0
    });
    let mut names: Vec<String> = (0..10)
        .map(|_| name_of(&get(gw.port, "GET", "/tiles/x", &[])))
        .collect();
    names.sort();
    names.dedup();
    assert_eq!(names, vec!["a", "b"]);
    // Both down: a 502 at once, without waiting for a connect (10 s by default).
    let a_url = a.url("");
    drop(a);
    b.kill();
    wait_for("both unhealthy", Duration::from_secs(3), || {
        healthy(&a_url) == 0.0 && healthy(&b.url("")) == 0.0
    });
    let t = Instant::now();
    let r = get(gw.port, "GET", "/tiles/x", &[]);
    assert_eq!(r.status, 502);
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    // The health check taken out by a reload: the urls it left out are back in rotation (no
    // check would ever bring them back), b answers again.
    b.restart();
    std::fs::write(
        dir.path.join("gateway.config.yml"),
        config(
            &[a_url.clone(), b.url("")],
            "{outlierDetection: false, retries: 0}",
            "",
            "",
        ),
    )
    .expect("config");
    let r = send_json(gw.admin_port, "POST", "/tollgate/reload", "");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(healthy(&b.url("")), 1.0);
    let answered_by_b = (0..10)
        .filter(|_| name_of(&get(gw.port, "GET", "/tiles/x", &[])) == "b")
        .count();
    assert!(answered_by_b > 0, "b is left out after its check went");
    assert!(
        gw.log_text().contains("no health check now"),
        "{}",
        gw.log_text()
    );
    eprintln!("ejected after {ejected:?}, back after {back:?}");
}

/// A reload stops the checker of the config before it, although a request that began under
/// that config still runs (it holds the config's service endpoints until it ends): left
/// running, a checker whose `healthCheck` the reload took away went on failing the url, and
/// took it out of rotation with no checker left to bring it back.
#[test]
fn a_reload_stops_the_checker_it_replaces_while_an_old_request_runs() {
    let a = PyUpstream::start("a", 5.0);
    // Ten failures (3 s) before the url goes out: the reload comes well before, on a busy box
    // too.
    let failing = "{healthCheck: {path: /status/404/h, interval: 0.3, timeout: 0.5, unhealthyThreshold: 10, healthyThreshold: 1}, outlierDetection: false, retries: 0}";
    let dir = ConfigDir::new(&config(&[a.url("")], failing, "", ""));
    let gw = GatewayProcess::start(&dir);
    let port = gw.port;
    // A request that runs past the reload (7 s), started while the url is in rotation.
    let long = std::thread::spawn(move || get(port, "GET", "/tiles/slow/7000/x", &[]).status);
    std::thread::sleep(Duration::from_millis(200));
    std::fs::write(
        dir.path.join("gateway.config.yml"),
        config(
            &[a.url("")],
            "{outlierDetection: false, retries: 0}",
            "",
            "",
        ),
    )
    .expect("config");
    let r = send_json(gw.admin_port, "POST", "/tollgate/reload", "");
    assert_eq!(r.status, 200, "{}", r.text());
    // Longer than the old checker's ten failures take.
    std::thread::sleep(Duration::from_millis(4000));
    let healthy = gw.metric(&format!(
        r#"tollgate_upstream_healthy{{service="maps",url="{}"}}"#,
        a.url("")
    ));
    assert_eq!(healthy, 1.0, "{}", gw.log_text());
    assert_eq!(get(gw.port, "GET", "/tiles/x", &[]).status, 200);
    assert_eq!(long.join().expect("the long request"), 200);
    assert!(!gw.log_text().contains("is unhealthy"), "{}", gw.log_text());
}

#[test]
fn retries_and_ejection_keep_requests_from_failing_when_an_upstream_dies() {
    let a = PyUpstream::start("a", 5.0);
    let mut b = PyUpstream::start("b", 5.0);
    let dir = ConfigDir::new(&config(
        &[a.url(""), b.url("")],
        "{outlierDetection: {consecutiveFailures: 2, ejectSeconds: 30}, retries: 1}",
        "",
        "",
    ));
    let gw = GatewayProcess::start(&dir);
    let raw = "GET /tiles/x HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n";
    let load = Load::start(gw.port, 6, raw, Duration::from_millis(2));
    std::thread::sleep(Duration::from_millis(700));
    b.kill();
    std::thread::sleep(Duration::from_millis(1500));
    let report = load.stop();
    let failed = report.failed(200);
    assert!(
        failed.is_empty(),
        "{} of {} failed: {:?}\n{}",
        failed.len(),
        report.count(),
        &failed[..failed.len().min(5)],
        gw.log_text()
    );
    // The load ran through the death (the count only shows that it ran).
    assert!(report.count() > 100, "{}", report.count());
    assert!(gw.log_text().contains("ejected"), "{}", gw.log_text());
    // The failures retried on the other url, though no request failed, are upstream failures:
    // counted and logged.
    let refused = gw.metric(r#"tollgate_upstream_errors_total{kind="refused"}"#)
        + gw.metric(r#"tollgate_upstream_errors_total{kind="reset"}"#);
    assert!(refused >= 1.0, "{}", gw.log_text());
    assert!(gw.log_text().contains("; tried again"), "{}", gw.log_text());
    // Other methods are not retried: a POST that meets the dead url fails rather than being
    // sent twice (after the ejection the dead url gets no more requests).
    let state = support::json_body(&get(gw.admin_port, "GET", "/tollgate/upstreams", &[]));
    assert_eq!(
        state["serviceEndpoints"][0]["urls"][1]["available"], false,
        "{state}"
    );
}

/// An ejection moves load off a url; it never makes an outage while the url answers: with the
/// other url gone, requests go to the ejected one (before, every request was a `502` at once
/// for the rest of the ejection, the ejected url back up and idle), on both paths. A POST
/// whose connection is refused is retried too: nothing of it went upstream.
#[test]
fn an_ejected_url_answers_when_no_other_is_left() {
    let mut a = PyUpstream::start("a", 5.0);
    let mut b = PyUpstream::start("b", 5.0);
    let dir = ConfigDir::new(&config(
        &[a.url(""), b.url("")],
        "{outlierDetection: {consecutiveFailures: 2, ejectSeconds: 60}, retries: 1}",
        "",
        "",
    ));
    let gw = GatewayProcess::start(&dir);
    b.kill();
    for _ in 0..6 {
        let r = get(gw.port, "GET", "/tiles/x", &[]);
        assert_eq!((r.status, name_of(&r)), (200, "a".to_string()));
    }
    let state = support::json_body(&get(gw.admin_port, "GET", "/tollgate/upstreams", &[]));
    assert_eq!(
        state["serviceEndpoints"][0]["urls"][1]["available"], false,
        "{state}"
    );
    b.restart();
    a.kill();
    for _ in 0..4 {
        let r = get(gw.port, "GET", "/tiles/x", &[]);
        assert_eq!(
            (r.status, name_of(&r)),
            (200, "b".to_string()),
            "{}",
            gw.log_text()
        );
        let post = "POST /tiles/x HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello";
        let r = support::request(gw.port, post, false);
        assert_eq!(
            (r.status, name_of(&r)),
            (200, "b".to_string()),
            "{}",
            gw.log_text()
        );
    }
}

/// A client cannot take urls out by asking for a path that fails: a `500` (one request's
/// failure) counts against no url — nine in a row ejected two urls of three, and their load
/// went to the third — while `502`, `503` and `504` (the url or what is behind it unwell)
/// do, and `failureStatuses` chooses. A url out of turn shares its turns among the others by
/// weight (its next url in the rotation took them all: twice its share).
#[test]
fn a_clients_failing_path_ejects_no_url_and_a_url_out_shares_its_turns() {
    let a = PyUpstream::start("a", 5.0);
    let b = PyUpstream::start("b", 5.0);
    let c = PyUpstream::start("c", 5.0);
    let dir = ConfigDir::new(&config(
        &[a.url(""), b.url(""), c.url("")],
        "{outlierDetection: {consecutiveFailures: 2, ejectSeconds: 60}, retries: 0}",
        "",
        "",
    ));
    let gw = GatewayProcess::start(&dir);
    let available = |gw: &GatewayProcess| {
        let state = support::json_body(&get(gw.admin_port, "GET", "/tollgate/upstreams", &[]));
        state["serviceEndpoints"][0]["urls"]
            .as_array()
            .expect("urls")
            .iter()
            .map(|u| u["available"] == true)
            .collect::<Vec<_>>()
    };
    for _ in 0..9 {
        assert_eq!(get(gw.port, "GET", "/tiles/status/500/x", &[]).status, 500);
    }
    assert_eq!(available(&gw), [true, true, true], "{}", gw.log_text());
    // 503s: the first two urls to fail twice are ejected, never the last.
    for _ in 0..6 {
        assert_eq!(get(gw.port, "GET", "/tiles/status/503/x", &[]).status, 503);
    }
    let left = available(&gw);
    assert_eq!(left.iter().filter(|a| **a).count(), 1, "{left:?}");
    // With one url out (a fresh gateway, where a 500 counts and ejects at once: the first
    // url, whose turn the first request is), the others share its turns evenly.
    drop(gw);
    let dir = ConfigDir::new(&config(
        &[a.url(""), b.url(""), c.url("")],
        "{outlierDetection: {consecutiveFailures: 1, ejectSeconds: 60, failureStatuses: [500]}, retries: 0}",
        "",
        "",
    ));
    let gw = GatewayProcess::start(&dir);
    assert_eq!(get(gw.port, "GET", "/tiles/status/500/x", &[]).status, 500);
    assert_eq!(available(&gw), [false, true, true], "{}", gw.log_text());
    let mut served = std::collections::BTreeMap::new();
    for _ in 0..60 {
        let r = get(gw.port, "GET", "/tiles/x", &[]);
        assert_eq!(r.status, 200);
        *served.entry(name_of(&r)).or_insert(0) += 1;
    }
    assert_eq!(
        served.into_iter().collect::<Vec<_>>(),
        [("b".to_string(), 30), ("c".to_string(), 30)]
    );
}

/// A url that cuts its answers short after their heads went out (a large tile streamed to the
/// client as it comes) counts each against its passive health, on both paths, and is ejected
/// after `consecutiveFailures` of them: each head cleared the failure of the body before it,
/// and such a url kept its share of the requests, every one of them broken.
#[test]
fn a_url_that_breaks_its_answers_bodies_is_ejected() {
    let a = PyUpstream::start("a", 5.0);
    let b = PyUpstream::start("b", 5.0);
    const LEN: usize = 600_000;
    for args in [&[][..], &["--fast-path", "off"][..]] {
        let dir = ConfigDir::new(&config(
            &[
                a.url(&format!("/bytes/{LEN}")),
                b.url(&format!("/truncate/{LEN}")),
            ],
            "{outlierDetection: {consecutiveFailures: 2, ejectSeconds: 60}, retries: 0}",
            "",
            "",
        ));
        let gw = GatewayProcess::start_with(&dir, args, &[]);
        let mut cut = 0;
        for i in 0..12 {
            use std::io::{Read, Write};
            let mut s = std::net::TcpStream::connect(("127.0.0.1", gw.port)).expect("connect");
            s.set_read_timeout(Some(Duration::from_secs(10)))
                .expect("timeout");
            s.write_all(
                format!("GET /tiles/{i} HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            )
            .expect("send");
            // (A body cut short ends in a reset: what came before it is what was read.)
            let mut got = Vec::new();
            let _ = s.read_to_end(&mut got);
            let body = got
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
                .map_or(0, |at| got.len() - at - 4);
            if body != LEN {
                cut += 1;
            }
        }
        assert_eq!(cut, 2, "{args:?}: {}", gw.log_text());
        let state = support::json_body(&get(gw.admin_port, "GET", "/tollgate/upstreams", &[]));
        let urls = &state["serviceEndpoints"][0]["urls"];
        assert_eq!(urls[1]["available"], false, "{args:?}: {state}");
        assert!(gw.log_text().contains("ejected"), "{args:?}");
    }
}

/// A url whose WMS answers every tile with an OGC service exception (XML, status 200: its
/// database away) counts it as a failure, as a 5xx, where `outlierDetection` says
/// `serviceExceptions`: it is ejected and the other url draws the tiles, on both paths (and for
/// an answer too large to be read whole, relayed as it comes). Without it (the default: most
/// reports are the client's, a layer it misspelt) the reports are relayed and eject nothing.
#[test]
fn a_url_that_answers_service_exceptions_is_ejected_where_they_count() {
    let reporting = PyUpstream::start_typed("reporting", 5.0, Some("text/xml"));
    let drawing = PyUpstream::start("drawing", 5.0);
    let urls = [reporting.url(""), drawing.url("")];
    let cache = "      - cache: [{action: {ttl: 60}}]\n";
    let by_default = ConfigDir::new(&config(
        &urls,
        "{outlierDetection: {consecutiveFailures: 2, ejectSeconds: 60}}",
        "",
        cache,
    ));
    let gw = GatewayProcess::start(&by_default);
    let reports = (0..8)
        .map(|i| get(gw.port, "GET", &format!("/tiles/3/2/{i}.png"), &[]))
        .filter(|r| r.header("content-type") == Some("text/xml"))
        .count();
    assert_eq!(reports, 4, "{}", gw.log_text());
    assert!(!gw.log_text().contains("ejected"), "{}", gw.log_text());
    drop(gw);
    let dir = ConfigDir::new(&config(
        &urls,
        "{outlierDetection: {consecutiveFailures: 2, ejectSeconds: 60, serviceExceptions: true}}",
        "",
        cache,
    ));
    // A map asked for by its path, and one of 2 MB asked for by `REQUEST`.
    let tile = |i: usize| format!("/tiles/3/2/{i}.png");
    let large = |i: usize| format!("/tiles/bytes/2000000?REQUEST=GetMap&n={i}");
    let cases: [(&str, &dyn Fn(usize) -> String); 3] =
        [("on", &tile), ("off", &tile), ("on", &large)];
    for (fast_path, path) in cases {
        let gw = GatewayProcess::start_with(&dir, &["--fast-path", fast_path], &[]);
        let mut reports = 0;
        for i in 0..8 {
            let r = get(gw.port, "GET", &path(i), &[]);
            assert_eq!(r.status, 200, "fast path {fast_path}: {}", gw.log_text());
            if r.header("content-type") == Some("text/xml") {
                reports += 1;
            } else {
                assert_eq!(r.header("x-cache-status"), Some("MISS"));
            }
        }
        let asked = path(0);
        assert_eq!(
            reports,
            2,
            "fast path {fast_path}, {asked}: {}",
            gw.log_text()
        );
        assert!(gw.log_text().contains("ejected"), "{}", gw.log_text());
        let state = support::json_body(&get(gw.admin_port, "GET", "/tollgate/upstreams", &[]));
        let url = &state["serviceEndpoints"][0]["urls"][0];
        assert_eq!(url["url"], reporting.url("").as_str(), "{state}");
        assert!(
            url["ejectedForSeconds"].is_number(),
            "fast path {fast_path}: {state}"
        );
        assert_eq!(
            gw.metric(r#"tollgate_upstream_errors_total{kind="service_exception"}"#),
            2.0
        );
    }
}

/// Connections to the upstream of [`answer_cut_short`].
static CUT_SHORT: AtomicUsize = AtomicUsize::new(0);

/// An upstream that sends a tile's head and a tenth of its body, then closes.
fn answer_cut_short(conn: &mut std::net::TcpStream) {
    use std::io::Write;
    CUT_SHORT.fetch_add(1, Ordering::SeqCst);
    let _ = conn.write_all(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"name\": \"",
    );
}

/// A tile the fast path reads whole before answering has reached no client when its body
/// breaks off: it is asked of another url (a GET, a retry left), as a request whose
/// connection broke before any answer is — and, through a cache step, what is stored is the
/// whole answer of the url that gave one.
#[test]
fn an_answer_cut_short_before_the_client_got_any_of_it_is_retried_on_another_url() {
    let cut = format!(
        "http://127.0.0.1:{}",
        support::upstream::raw(answer_cut_short)
    );
    let a = PyUpstream::start("a", 5.0);
    for steps in ["", "      - cache: [{action: {ttl: 600}}]\n"] {
        let dir = ConfigDir::new(&config(
            &[cut.clone(), a.url("")],
            "{outlierDetection: false, retries: 1}",
            "",
            steps,
        ));
        let gw = GatewayProcess::start(&dir);
        let before = CUT_SHORT.load(Ordering::SeqCst);
        for i in 0..6 {
            let r = get(gw.port, "GET", &format!("/tiles/{i}"), &[]);
            assert_eq!((r.status, name_of(&r)), (200, "a".to_string()), "{steps}");
        }
        let cut_short = CUT_SHORT.load(Ordering::SeqCst) - before;
        assert!(
            cut_short >= 2,
            "round-robin sent {cut_short} of 6 to the url that cuts short"
        );
        assert!(gw.log_text().contains("; tried again"), "{}", gw.log_text());
        if !steps.is_empty() {
            for i in 0..6 {
                let r = get(gw.port, "GET", &format!("/tiles/{i}"), &[]);
                assert_eq!(r.header("x-cache-status"), Some("HIT"), "tile {i}");
                assert_eq!(name_of(&r), "a", "tile {i}");
            }
        }
    }
}

/// A POST whose connection is refused is retried on another url: nothing of it went upstream
/// (as nginx retries it). One whose exchange broke once sent is not (the upstream may have
/// acted on it); a GET is.
#[test]
fn a_post_is_retried_on_another_url_only_when_its_connection_failed() {
    let a = PyUpstream::start("a", 5.0);
    let post =
        "POST /tiles/x HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi";
    let dead = format!("http://127.0.0.1:{}", support::free_port());
    let dir = ConfigDir::new(&config(
        &[dead, a.url("")],
        "{outlierDetection: false, retries: 1}",
        "",
        "",
    ));
    let gw = GatewayProcess::start(&dir);
    let statuses: Vec<u16> = (0..6)
        .map(|_| request(gw.port, post, false).status)
        .collect();
    assert_eq!(statuses, [200; 6], "{}", gw.log_text());
    assert_eq!(a.served(), 6);
    drop(gw);
    // An upstream that takes the request and closes without a word.
    let closes = support::upstream::raw(|conn| {
        let _ = conn.shutdown(std::net::Shutdown::Both);
    });
    let dir = ConfigDir::new(&config(
        &[format!("http://127.0.0.1:{closes}"), a.url("")],
        "{outlierDetection: false, retries: 1}",
        "",
        "",
    ));
    let gw = GatewayProcess::start(&dir);
    let statuses: Vec<u16> = (0..6)
        .map(|_| request(gw.port, post, false).status)
        .collect();
    assert!(
        statuses.contains(&502),
        "a POST the upstream broke off fails: {statuses:?}"
    );
    let gets: Vec<u16> = (0..6)
        .map(|_| get(gw.port, "GET", "/tiles/x", &[]).status)
        .collect();
    assert!(
        gets.iter().all(|s| *s == 200),
        "a GET is retried on the live url: {gets:?}"
    );
    assert_eq!(
        a.served(),
        6 + 6 + statuses.iter().filter(|s| **s == 200).count() as u64
    );
}

#[test]
fn timeouts_cut_a_slow_upstream() {
    let a = PyUpstream::start("a", 5.0);
    let dir = ConfigDir::new(&config(
        &[a.url("")],
        "{retries: 0, outlierDetection: false}",
        ", readTimeout: 300",
        "",
    ));
    let gw = GatewayProcess::start(&dir);
    let t = Instant::now();
    let r = get(gw.port, "GET", "/tiles/slow/2000/x", &[]);
    assert_eq!(r.status, 502, "{}", r.text());
    assert!(
        t.elapsed() < Duration::from_millis(1500),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(get(gw.port, "GET", "/tiles/slow/50/x", &[]).status, 200);
    // EG's proxyTimeout keeps its meaning.
    let dir = ConfigDir::new(&config(
        &[a.url("")],
        "{retries: 0}",
        ", proxyTimeout: 300",
        "",
    ));
    let gw = GatewayProcess::start(&dir);
    let t = Instant::now();
    assert_eq!(get(gw.port, "GET", "/tiles/slow/2000/x", &[]).status, 502);
    assert!(
        t.elapsed() < Duration::from_millis(1500),
        "{:?}",
        t.elapsed()
    );
    // The total timeout bounds the whole exchange.
    let dir = ConfigDir::new(&config(
        &[a.url("")],
        "{retries: 0}",
        ", readTimeout: 5000, totalTimeout: 400",
        "",
    ));
    let gw = GatewayProcess::start(&dir);
    let t = Instant::now();
    assert_eq!(get(gw.port, "GET", "/tiles/slow/2000/x", &[]).status, 502);
    assert!(
        t.elapsed() < Duration::from_millis(1500),
        "{:?}",
        t.elapsed()
    );
}

#[test]
fn balancing_by_weight_by_load_and_by_path() {
    let a = PyUpstream::start("a", 5.0);
    let b = PyUpstream::start("b", 5.0);
    let urls = [a.url(""), b.url("")];
    // Weighted round-robin: 2 to 1.
    let dir = ConfigDir::new(&config(&urls, "{weights: [2, 1]}", "", ""));
    let gw = GatewayProcess::start(&dir);
    let names: Vec<String> = (0..30)
        .map(|_| name_of(&get(gw.port, "GET", "/tiles/x", &[])))
        .collect();
    assert_eq!(names.iter().filter(|n| *n == "a").count(), 20, "{names:?}");
    drop(gw);
    // Consistent hashing: a path always goes to the same url; paths spread over both.
    let dir = ConfigDir::new(&config(&urls, "{balance: consistent-hash}", "", ""));
    let gw = GatewayProcess::start(&dir);
    let mut spread = [0usize; 2];
    for i in 0..40 {
        let path = format!("/tiles/{i}.png");
        let first = name_of(&get(gw.port, "GET", &path, &[]));
        for _ in 0..3 {
            assert_eq!(name_of(&get(gw.port, "GET", &path, &[])), first, "{path}");
        }
        spread[usize::from(first == "b")] += 1;
    }
    assert!(spread[0] >= 8 && spread[1] >= 8, "{spread:?}");
    // A WMS's tiles differ by their query alone: hashed with it (they all went to one url),
    // without the credentials (one tile, one url, whoever asks).
    let mut spread = [0usize; 2];
    for i in 0..40 {
        let path = format!("/tiles/wms?SERVICE=WMS&REQUEST=GetMap&BBOX={i},0,{i},1");
        let first = name_of(&get(gw.port, "GET", &path, &[]));
        for who in ["jwt=t1", "apiKey=k2", "JWT=t3"] {
            let theirs = format!("{path}&{who}");
            assert_eq!(
                name_of(&get(gw.port, "GET", &theirs, &[])),
                first,
                "{theirs}"
            );
        }
        spread[usize::from(first == "b")] += 1;
    }
    assert!(spread[0] >= 8 && spread[1] >= 8, "{spread:?}");
    drop(gw);
    // Least connections: while a is busy with slow requests, b takes the rest.
    let dir = ConfigDir::new(&config(&urls, "{balance: least-connections}", "", ""));
    let gw = GatewayProcess::start(&dir);
    let port = gw.port;
    // Slow enough to be in flight through the quick ones on a busy machine.
    let slow: Vec<_> = (0..3)
        .map(|_| std::thread::spawn(move || get(port, "GET", "/tiles/slow/4000/x", &[])))
        .collect();
    // Requests in flight per url, as the gateway counts them.
    let in_flight = || -> Vec<u64> {
        let state = support::json_body(&get(gw.admin_port, "GET", "/tollgate/upstreams", &[]));
        state["serviceEndpoints"][0]["urls"]
            .as_array()
            .map(|urls| {
                urls.iter()
                    .map(|u| u["inFlight"].as_u64().unwrap_or(0))
                    .collect()
            })
            .unwrap_or_default()
    };
    wait_for(
        "the slow requests in flight",
        Duration::from_secs(5),
        || in_flight().iter().sum::<u64>() == 3,
    );
    let busy = in_flight();
    let names: Vec<String> = (0..10)
        .map(|_| name_of(&get(gw.port, "GET", "/tiles/x", &[])))
        .collect();
    assert_eq!(in_flight(), busy, "the slow requests are still in flight");
    for s in slow {
        assert_eq!(s.join().expect("slow request").status, 200);
    }
    // The quick ones went to the url with fewer slow ones in flight.
    let less_busy = if busy[0] > busy[1] { "b" } else { "a" };
    let to_less_busy = names.iter().filter(|n| *n == less_busy).count();
    assert!(to_less_busy >= 9, "in flight {busy:?}; quick: {names:?}");
}

#[test]
fn text_is_compressed_for_clients_that_accept_it_and_images_are_not() {
    let a = PyUpstream::start("a", 5.0);
    let dir = ConfigDir::new(&config(&[a.url("")], "{}", "", "      - compression:\n"));
    let gw = GatewayProcess::start(&dir);
    let json = get(
        gw.port,
        "GET",
        "/tiles/caps.json",
        &[("Accept-Encoding", "gzip")],
    );
    assert_eq!(
        json.header("content-encoding"),
        Some("gzip"),
        "{:?}",
        json.headers
    );
    assert!(json
        .header("vary")
        .is_some_and(|v| v.to_ascii_lowercase().contains("accept-encoding")));
    let mut decoded = String::new();
    use std::io::Read;
    flate2::read::GzDecoder::new(&json.body[..])
        .read_to_string(&mut decoded)
        .expect("gzip body");
    assert!(decoded.contains("\"name\": \"a\""), "{decoded}");
    let br = get(
        gw.port,
        "GET",
        "/tiles/caps.json",
        &[("Accept-Encoding", "br")],
    );
    assert_eq!(br.header("content-encoding"), Some("br"));
    // A whole brotli stream, its last block included.
    let mut unbrotlied = String::new();
    brotli::Decompressor::new(&br.body[..], 4096)
        .read_to_string(&mut unbrotlied)
        .expect("brotli body");
    assert!(
        unbrotlied.contains("\"path\": \"/tiles/caps.json\""),
        "{unbrotlied}"
    );
    let plain = get(gw.port, "GET", "/tiles/caps.json", &[]);
    assert_eq!(plain.header("content-encoding"), None);
    // q-values count: `q=0` refuses a coding, the highest ranked is chosen.
    for (accept, coding) in [
        ("gzip;q=0", None),
        ("gzip;q=0, br;q=0", None),
        ("br;q=0.1, gzip", Some("gzip")),
    ] {
        let r = get(
            gw.port,
            "GET",
            "/tiles/caps.json",
            &[("Accept-Encoding", accept)],
        );
        assert_eq!(r.header("content-encoding"), coding, "{accept}");
    }
    let image = get(
        gw.port,
        "GET",
        "/tiles/bytes/5000/a.png?header=Content-Type:image/png",
        &[("Accept-Encoding", "gzip, br")],
    );
    assert_eq!(
        image.header("content-encoding"),
        None,
        "images are not compressed"
    );
    assert_eq!(image.body.len(), 5000);
}

/// What compression leaves as the upstream sent it: a part of a resource (a `206` with its
/// `Content-Range`: a gzip of a fragment is nothing a client can use), a `no-transform`
/// answer (RFC 9110 §7.7), an event stream (each event must arrive when it comes) and binary
/// types; a HEAD's head says what the GET's does.
#[test]
fn parts_no_transform_and_event_streams_are_not_compressed() {
    let a = PyUpstream::start("a", 5.0);
    let dir = ConfigDir::new(&config(&[a.url("")], "{}", "", "      - compression:\n"));
    let gw = GatewayProcess::start(&dir);
    let gzip = [("Accept-Encoding", "gzip")];
    let text = "/tiles/unique/2000/text";
    let compressed = get(
        gw.port,
        "GET",
        &format!("{text}?header=Content-Type:text/plain"),
        &gzip,
    );
    assert_eq!(compressed.header("content-encoding"), Some("gzip"));
    for (query, why) in [
        (
            "?status=206&header=Content-Type:text/plain&header=Content-Range:bytes%200-1999/5000",
            "a part",
        ),
        (
            "?header=Content-Type:text/plain&cc=max-age=5,%20no-transform",
            "no-transform",
        ),
        ("?header=Content-Type:text/event-stream", "an event stream"),
        ("?header=Content-Type:application/pdf", "a binary type"),
    ] {
        let r = get(gw.port, "GET", &format!("{text}{query}"), &gzip);
        assert_eq!(r.header("content-encoding"), None, "{why}: {:?}", r.headers);
        assert_eq!(r.body.len(), 2000, "{why}");
    }
    let head = get(
        gw.port,
        "HEAD",
        &format!("{text}?header=Content-Type:text/plain"),
        &gzip,
    );
    assert_eq!(
        (head.status, head.header("content-encoding")),
        (200, Some("gzip")),
        "{:?}",
        head.headers
    );
    assert!(head.body.is_empty());
    assert!(head
        .header("vary")
        .is_some_and(|v| v.to_ascii_lowercase().contains("accept-encoding")));
}

/// On a pipeline that compresses: an upstream out of reach is a 502 with its text (the error
/// reply went through the encoder before any head was decided, which panicked: the client's
/// connection was reset), and a request sent with `Expect: 100-continue` still gets its final
/// answer compressed (the interim `100` turned compression off).
#[test]
fn compression_survives_failed_upstreams_and_interim_answers() {
    let dead = ConfigDir::new(&config(
        &["http://127.0.0.1:1".to_string()],
        "{}",
        "",
        "      - compression:\n",
    ));
    let gw = GatewayProcess::start(&dead);
    for fast in ["GET", "POST"] {
        let r = get(gw.port, fast, "/tiles/x", &[("Accept-Encoding", "gzip")]);
        assert_eq!(r.status, 502, "{fast}: {:?}", r.headers);
        assert!(r.text().contains("Bad gateway"), "{fast}: {}", r.text());
    }
    assert!(gw.error_lines().is_empty(), "{:?}", gw.error_lines());
    let a = PyUpstream::start("a", 5.0);
    let dir = ConfigDir::new(&config(&[a.url("")], "{}", "", "      - compression:\n"));
    let gw = GatewayProcess::start(&dir);
    let text = support::send_until_close(
        gw.port,
        b"POST /tiles/unique/2000/t?header=Content-Type:text/plain HTTP/1.1\r\nHost: h\r\nAccept-Encoding: gzip\r\nExpect: 100-continue\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi",
    );
    let lower = text.to_ascii_lowercase();
    assert!(
        lower.contains("content-encoding: gzip"),
        "{}",
        &text[..text.len().min(600)]
    );
}

/// A cors step whose answer depends on the origin adds `Origin` to whatever `Vary` the answer
/// has — the upstream's, a compressed answer's — so no cache serves one origin's answer to
/// another (it was left out wherever the answer had a `Vary`).
#[test]
fn cors_adds_origin_to_the_answers_vary() {
    let a = PyUpstream::start("a", 5.0);
    let yml = config(
        &[a.url("")],
        "{}",
        "",
        "      - cors: [{action: {origin: ['http://x.example', 'http://y.example']}}]\n      - compression:\n",
    )
    .replace("policies: [cache, proxy, compression]", "policies: [cache, proxy, compression, cors]");
    let dir = ConfigDir::new(&yml);
    let gw = GatewayProcess::start(&dir);
    let vary = |r: &support::Response| -> Vec<String> {
        r.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case("vary"))
            .flat_map(|(_, v)| v.split(',').map(|t| t.trim().to_ascii_lowercase()))
            .collect()
    };
    let origin = ("Origin", "http://x.example");
    for (path, headers, other) in [
        (
            "/tiles/png/1.png?header=Vary:Accept-Language",
            vec![origin],
            "accept-language",
        ),
        (
            "/tiles/unique/2000/t?header=Content-Type:text/plain",
            vec![origin, ("Accept-Encoding", "gzip")],
            "accept-encoding",
        ),
    ] {
        let r = get(gw.port, "GET", path, &headers);
        assert_eq!(
            r.header("access-control-allow-origin"),
            Some("http://x.example")
        );
        let v = vary(&r);
        assert!(
            v.contains(&"origin".to_string()) && v.contains(&other.to_string()),
            "{path}: {:?}",
            r.headers
        );
    }
    // An answer that varies by `Origin` already, or by everything (`*`), is left as it is
    // (it said `Vary: Origin, Origin`): uncached, and through a cache step its miss and hit.
    let cached = ConfigDir::new(&config(
        &[a.url("")],
        "{}",
        "",
        "      - cors: [{action: {origin: ['http://x.example', 'http://y.example']}}]\n      - cache: [{action: {ttl: 60}}]\n",
    )
    .replace("policies: [cache, proxy, compression]", "policies: [cache, proxy, cors]"));
    let cached = GatewayProcess::start(&cached);
    let plain = ConfigDir::new(
        &config(
            &[a.url("")],
            "{}",
            "",
            "      - cors: [{action: {origin: ['http://x.example', 'http://y.example']}}]\n",
        )
        .replace(
            "policies: [cache, proxy, compression]",
            "policies: [proxy, cors]",
        ),
    );
    let plain = GatewayProcess::start(&plain);
    for (gateway, cache) in [(&gw, false), (&plain, false), (&cached, true)] {
        for (path, want) in [
            ("/tiles/png/2.png?header=Vary:Origin", vec!["origin"]),
            ("/tiles/png/3.png?header=Vary:%2A", vec!["*"]),
            (
                "/tiles/png/4.png?header=Vary:Accept,%20origin",
                vec!["accept", "origin"],
            ),
            ("/tiles/unique/5000/t?header=Vary:Origin", vec!["origin"]),
        ] {
            // `Vary: *` is never stored.
            let rounds = match (cache, want == ["*"]) {
                (false, _) => ["", ""],
                (true, false) => ["MISS", "HIT"],
                (true, true) => ["MISS", "MISS"],
            };
            for round in rounds {
                let r = get(gateway.port, "GET", path, &[origin]);
                assert_eq!(r.status, 200, "{path} {round}");
                assert_eq!(
                    r.header("x-cache-status").unwrap_or_default(),
                    round,
                    "{path}"
                );
                assert_eq!(vary(&r), want, "{path} {round}: {:?}", r.headers);
            }
        }
    }
}

/// An upstream on a thread of the test: each connection's first request is answered; a PUT
/// on a connection used before has 150 kB of its body read, then the connection is closed
/// with the rest unread (a reset), recorded as a cut (`usize::MAX`). Every PUT answered
/// records the body bytes it got.
fn cutting_upstream() -> (u16, std::sync::Arc<std::sync::Mutex<Vec<usize>>>) {
    use std::io::{BufRead, BufReader, Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let answered = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = answered.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let record = record.clone();
            std::thread::spawn(move || {
                let mut r = BufReader::new(conn.try_clone().expect("clone"));
                let mut w = conn;
                for n in 1.. {
                    let mut line = String::new();
                    if r.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    let (mut chunked, mut length) = (false, 0usize);
                    loop {
                        let mut h = String::new();
                        if r.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                            break;
                        }
                        let h = h.to_ascii_lowercase();
                        chunked |= h.starts_with("transfer-encoding:") && h.contains("chunked");
                        if let Some(v) = h.strip_prefix("content-length:") {
                            length = v.trim().parse().unwrap_or(0);
                        }
                    }
                    let cut = n > 1 && line.starts_with("PUT");
                    let mut got = 0usize;
                    let take = |r: &mut BufReader<std::net::TcpStream>, len: usize| {
                        let mut buf = vec![0u8; len];
                        r.read_exact(&mut buf).is_ok()
                    };
                    if chunked {
                        loop {
                            let mut size = String::new();
                            if r.read_line(&mut size).unwrap_or(0) == 0 {
                                return;
                            }
                            let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
                            if size == 0 {
                                let mut end = String::new();
                                let _ = r.read_line(&mut end);
                                break;
                            }
                            if !take(&mut r, size + 2) {
                                return;
                            }
                            got += size;
                            if cut && got >= 150_000 {
                                record.lock().expect("record").push(usize::MAX);
                                return; // closed with the rest unread: a reset
                            }
                        }
                    } else if length > 0 {
                        if !take(&mut r, length) {
                            return;
                        }
                        got = length;
                    }
                    if line.starts_with("PUT") {
                        record.lock().expect("record").push(got);
                    }
                    let body = format!("got {got}");
                    let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len());
                    if w.write_all(format!("{head}{body}").as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    (port, answered)
}

/// A request whose body went upstream in part before a pooled connection broke is never sent
/// again: the gateway no longer holds the whole body, and a resend would hand the upstream a
/// well-formed, truncated one.
#[test]
fn a_request_whose_body_was_cut_is_not_sent_again() {
    let (port, answered) = cutting_upstream();
    let dir = ConfigDir::new(&config(
        &[format!("http://127.0.0.1:{port}")],
        "{outlierDetection: false, retries: 1}",
        "",
        "",
    ));
    // One worker thread: both requests meet the same pool (Pingora's, where the PUT goes).
    let gw = GatewayProcess::start_with(&dir, &["--threads", "1", "--fast-path", "off"], &[]);
    // A GET leaves the upstream connection in the (worker thread's) pool (one that carried a
    // body is not pooled).
    let small = "GET /tiles/x HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n";
    assert_eq!(request(gw.port, small, false).status, 200);
    // (The connection goes back to the pool once the answer is relayed.)
    std::thread::sleep(Duration::from_millis(300));
    // A 1,000,000-byte chunked PUT on it: the upstream cuts it after 150 kB.
    let mut raw = b"PUT /tiles/x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n".to_vec();
    for _ in 0..100 {
        raw.extend_from_slice(b"2710\r\n");
        raw.extend(std::iter::repeat_n(b'x', 10_000));
        raw.extend_from_slice(b"\r\n");
    }
    raw.extend_from_slice(b"0\r\n\r\n");
    let r = {
        use std::io::Write;
        let mut s = std::net::TcpStream::connect(("127.0.0.1", gw.port)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        // The gateway may stop reading once the upstream is gone: the write's end is not
        // what is tested.
        let _ = s.write_all(&raw);
        support::client::read_response(&mut s, false)
    };
    let answered = answered.lock().expect("answered").clone();
    assert_eq!(answered[..1], [usize::MAX], "the pooled connection was cut");
    assert!(
        answered[1..].iter().all(|n| *n == 1_000_000),
        "the upstream answered a truncated body: {answered:?}"
    );
    assert_ne!(r.status, 200, "{}", r.text());
}

/// A body the upstream cuts short (it closes half-way through its length) on Pingora's path:
/// the head and what came reach the client, then the connection closes before the promised
/// length. Small, they sat in the connection's write buffer, which went with the connection:
/// the client got nothing at all (the access log said 200).
#[test]
fn a_small_body_cut_short_reaches_the_client_as_far_as_it_came() {
    let a = PyUpstream::start("a", 5.0);
    let dir = ConfigDir::new(&config(&[a.url("")], "{}", "", ""));
    let gw = GatewayProcess::start_with(&dir, &["--fast-path", "off"], &[]);
    for len in [400, 4000, 16000] {
        let text = support::send_until_close(
            gw.port,
            format!("GET /tiles/truncate/{len} HTTP/1.1\r\nHost: h\r\n\r\n").as_bytes(),
        );
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        assert!(head.starts_with("HTTP/1.1 200"), "{len}: {text:?}");
        assert!(
            head.to_ascii_lowercase()
                .contains(&format!("content-length: {len}")),
            "{head}"
        );
        assert!(body.len() < len, "{len}: {} bytes of body", body.len());
    }
}

/// Clients that leave in the middle of their request's body (or while their GET waits on a
/// slow upstream) are their own failure: the url they were sent to is not blamed (before,
/// two such requests in a row ejected it, so a client could empty an endpoint on purpose),
/// and nothing is retried on another url for a client that is gone.
#[test]
fn clients_that_leave_mid_request_are_not_the_upstreams_failure() {
    let a = PyUpstream::start("a", 5.0);
    let b = PyUpstream::start("b", 5.0);
    let dir = ConfigDir::new(&config(
        &[a.url(""), b.url("")],
        "{outlierDetection: {consecutiveFailures: 2, ejectSeconds: 30}, retries: 1}",
        "",
        "",
    ));
    // Pingora's path for the GETs too (the fast path has a client watch of its own).
    let gw = GatewayProcess::start_with(&dir, &["--fast-path", "off"], &[]);
    let leave_after = |raw: &[u8], wait: Duration| {
        use std::io::Write;
        let mut s = std::net::TcpStream::connect(("127.0.0.1", gw.port)).expect("connect");
        s.write_all(raw).expect("send");
        std::thread::sleep(wait);
    };
    let served_before = a.served() + b.served();
    for _ in 0..4 {
        // 10 bytes of a 100-byte body, then gone.
        leave_after(
            b"POST /tiles/up HTTP/1.1\r\nHost: h\r\nContent-Length: 100\r\n\r\n0123456789",
            Duration::from_millis(300),
        );
    }
    for _ in 0..4 {
        // Gone before the upstream's answer a second later.
        leave_after(
            b"GET /tiles/slow/1000/x HTTP/1.1\r\nHost: h\r\n\r\n",
            Duration::from_millis(300),
        );
    }
    std::thread::sleep(Duration::from_millis(1500));
    let log = gw.log_text();
    assert!(!log.contains("ejected"), "{log}");
    assert!(!log.contains("tried again"), "{log}");
    let errors = gw.metric_sum("tollgate_upstream_errors_total");
    assert_eq!(errors, 0.0, "{log}");
    // Each request went upstream once at most (the upstream counts a cut body's too), none
    // again on the other url.
    let served = a.served() + b.served() - served_before;
    assert!(served <= 8, "{served} requests upstream\n{log}");
    // Both urls still serve.
    let names: std::collections::BTreeSet<String> = (0..4)
        .map(|_| name_of(&get(gw.port, "GET", "/tiles/x", &[])))
        .collect();
    assert_eq!(names.len(), 2, "{names:?}\n{log}");
}

/// The last url that may be chosen is never ejected: a url of weight 0 is never chosen, so
/// beside one the other is the last (before, three 5xx in a row ejected it, and every request
/// was answered 502 at once for `ejectSeconds`).
#[test]
fn a_url_of_weight_zero_does_not_count_as_another_to_fall_back_on() {
    let a = PyUpstream::start("a", 5.0);
    let b = PyUpstream::start("b", 5.0);
    let dir = ConfigDir::new(&config(
        &[a.url(""), b.url("")],
        "{weights: [1, 0], outlierDetection: {consecutiveFailures: 2, ejectSeconds: 30}, retries: 1}",
        "",
        "",
    ));
    let gw = GatewayProcess::start(&dir);
    for _ in 0..4 {
        let r = get(gw.port, "GET", "/tiles/status/503/x", &[]);
        assert_eq!(
            (r.status, name_of(&r)),
            (503, "a".to_string()),
            "{}",
            gw.log_text()
        );
    }
    let r = get(gw.port, "GET", "/tiles/x", &[]);
    assert_eq!(
        (r.status, name_of(&r)),
        (200, "a".to_string()),
        "{}",
        gw.log_text()
    );
    assert!(!gw.log_text().contains("ejected"), "{}", gw.log_text());
}

/// A service endpoint whose url carries a key in its query (as some WMTS providers want) is
/// shown without it: in `tollgate_upstream_healthy` (which Kargo serves on a public
/// `/metrics`), the Admin API and the logs; the upstream still gets it.
#[test]
fn an_upstream_urls_query_is_never_shown() {
    let a = PyUpstream::start("a", 5.0);
    let url = format!("{}/keyed?apikey=SECRET-KEY", a.url(""));
    let dir = ConfigDir::new(&config(&[url], "{retries: 0}", ", stripPath: true", ""));
    let gw = GatewayProcess::start(&dir);
    let r = get(gw.port, "GET", "/tiles/x", &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.text().contains("apikey=SECRET-KEY"), "{}", r.text());
    let metrics = get(gw.admin_port, "GET", "/metrics", &[]).text();
    let state = get(gw.admin_port, "GET", "/tollgate/upstreams", &[]).text();
    for shown in [&metrics, &state, &gw.log_text()] {
        assert!(!shown.contains("SECRET-KEY"), "{shown}");
    }
    assert!(
        metrics.contains(&format!("url=\"{}/keyed?…\"", a.url(""))),
        "{metrics}"
    );
}

/// A cache fill retried on another url — the first refused the connection — fetches for
/// every consumer there too: its path keeps only the parameters that make the key, never the
/// credential the client sent in its query.
#[test]
fn a_fill_retried_on_another_url_sends_no_credential_there() {
    let alive = PyUpstream::start("alive", 5.0);
    let dead = format!("http://127.0.0.1:{}", support::free_port());
    let dir = ConfigDir::new(&config(
        &[dead, alive.url("")],
        "{outlierDetection: false, retries: 1}",
        "",
        "      - cache: [{action: {ttl: 60}}]\n",
    ));
    for fast_path in ["on", "off"] {
        let gw = GatewayProcess::start_with(&dir, &["--fast-path", fast_path], &[]);
        // On a failure: the request's own log line (written once it is answered) and what
        // the live url served.
        let why = |i: usize| {
            std::thread::sleep(std::time::Duration::from_millis(300));
            let served = match std::net::TcpStream::connect(("127.0.0.1", alive.port)) {
                Ok(_) => get(alive.port, "GET", "/__count", &[]).text(),
                Err(e) => format!("nothing: {e}"),
            };
            format!(
                "fast path {fast_path}, request {i}; the live url served {served}\n{}",
                gw.log_text()
            )
        };
        for i in 0..4 {
            let r = get(
                gw.port,
                "GET",
                &format!("/tiles/{fast_path}/{i}.png?apiKey=k1:s1&layer=a"),
                &[],
            );
            assert_eq!(r.status, 200, "{}", why(i));
            assert_eq!(r.header("x-cache-status"), Some("MISS"));
            let saw: serde_json::Value = serde_json::from_slice(&r.body).expect("json");
            let path = saw["path"].as_str().unwrap_or("");
            assert!(path.ends_with("?layer=a"), "fast path {fast_path}: {path}");
        }
        // Half of the fills were sent to the dead url first.
        assert!(
            gw.metric(r#"tollgate_upstream_errors_total{kind="refused"}"#) >= 2.0,
            "fast path {fast_path}: {}",
            gw.log_text()
        );
    }
}
