//! Stale tiles: served while they are refreshed, and while the upstream fails (frozen, killed,
//! slower than the cache lock); not once the upstream answers their refresh with a 4xx.

use super::*;

/// Tiles stale after a second, with the step's stale windows.
const STALE_WINDOWS: &str = "{ttl: 1, staleWhileRevalidate: 30, staleIfError: 300}";

/// A request whose upstream answers `status` (the upstream reads it from a request header,
/// which is not part of the key).
fn answered(gw: &GatewayProcess, path: &str, status: &str) -> Response {
    get(gw.port, "GET", path, &[("X-Test-Status", status)])
}

#[test]
fn stale_while_revalidate_and_stale_if_error() {
    let mut up = PyUpstream::start("tiles", 5.0);
    let (_dir, gw) = start(&up, STALE_WINDOWS, &[]);
    let open = |path: &str| get(gw.port, "GET", path, &[]);
    // Stale within stale-while-revalidate: answered at once, refreshed in the background.
    let slow = "/open/slow/2000/swr.png";
    assert_eq!(cache_status(&open(slow)), "MISS");
    std::thread::sleep(Duration::from_millis(1500));
    let t = Instant::now();
    let stale = open(slow);
    assert_eq!((stale.status, cache_status(&stale)), (200, "STALE"));
    assert!(
        t.elapsed() < Duration::from_millis(1200),
        "a stale answer does not wait for the refresh: {:?}",
        t.elapsed()
    );
    // A HEAD within the window is answered stale at once too (it stores nothing, so it
    // cannot refresh the tile; it waited on the upstream's answer before).
    let head_tile = "/open/slow/2000/swr-head.png";
    assert_eq!(cache_status(&open(head_tile)), "MISS");
    std::thread::sleep(Duration::from_millis(1500));
    let t = Instant::now();
    let head = get(gw.port, "HEAD", head_tile, &[]);
    assert_eq!((head.status, cache_status(&head)), (200, "STALE"));
    assert!(
        t.elapsed() < Duration::from_millis(1200),
        "a HEAD of a stale tile waited for the upstream: {:?}",
        t.elapsed()
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while cache_status(&open(slow)) != "HIT" {
        assert!(
            Instant::now() < deadline,
            "the background refresh never landed"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // stale-if-error (no stale-while-revalidate for this tile): the upstream answering 5xx,
    // then the upstream down — the last good tile is served.
    let sie = "/open/sie.png?cc=max-age%3D1%2C+stale-while-revalidate%3D0%2C+stale-if-error%3D300";
    assert_eq!(cache_status(&open(sie)), "MISS");
    std::thread::sleep(Duration::from_millis(1500));
    let failing = answered(&gw, sie, "503");
    assert_eq!(
        (failing.status, cache_status(&failing)),
        (200, "STALE"),
        "{}",
        failing.text()
    );
    // On a keep-alive connection the answer says the connection closes: Pingora reads on
    // from the upstream's 5xx while the client has its answer, and a next request the client
    // sent meanwhile reset the connection (nothing told the client so).
    std::thread::sleep(Duration::from_millis(1100));
    let failing = support::request(
        gw.port,
        &format!("GET {sie} HTTP/1.1\r\nHost: localhost\r\nX-Test-Status: 503\r\n\r\n"),
        false,
    );
    assert_eq!(
        (cache_status(&failing), failing.header("connection")),
        ("STALE", Some("close")),
        "{:?}",
        failing.headers
    );
    up.kill();
    // Asked on a keep-alive connection once the tile's outage is a second old (so the tile's
    // upstream is asked again, and refuses): the answer says the connection closes, as it
    // does (it said keep-alive, and the client's next request on it failed).
    std::thread::sleep(Duration::from_millis(1100));
    let down = support::request(
        gw.port,
        &format!("GET {sie} HTTP/1.1\r\nHost: localhost\r\n\r\n"),
        false,
    );
    assert_eq!(
        (down.status, cache_status(&down)),
        (200, "STALE"),
        "{}\n{}",
        down.text(),
        gw.log_text()
    );
    assert_eq!(
        down.header("connection"),
        Some("close"),
        "{:?}",
        down.headers
    );
    // A tile never cached is a 502 when the upstream is down, and says it missed.
    let never = open("/open/never.png");
    assert_eq!((never.status, cache_status(&never)), (502, "MISS"));
    // The log says so once per api endpoint and kind of failure, not once per tile.
    for _ in 0..3 {
        assert_eq!(cache_status(&open(sie)), "STALE");
    }
    let log = gw.log_text();
    // (A fold's count of repeats, written 10 s on, is no line of its own.)
    let lines = |what: &str| {
        log.lines()
            .filter(|l| l.contains(what) && !l.contains("(repeated "))
            .count()
    };
    assert_eq!(
        lines("upstream failure: api endpoint `open`: status 503; answered from a stale tile"),
        1,
        "{log}"
    );
    assert_eq!(lines("serving stale"), 0, "{log}");
    up.restart();
}

/// A stale tile whose refresh the upstream answers with what is not stored and is no failure
/// (a 403: the tile is forbidden now) is not served in the upstream's place afterwards: each
/// request asks the upstream again (before, the refresh's mark stood for 30 s, and every
/// request in between got the stale tile as 200 STALE).
#[test]
fn a_refresh_answered_403_leaves_the_stale_tile_unserved() {
    let up = PyUpstream::start("tiles", 5.0);
    let (_dir, gw) = start(&up, STALE_WINDOWS, &[]);
    let open = |path: &str| get(gw.port, "GET", path, &[]);
    let tile =
        "/open/forbid.png?cc=max-age%3D1%2C+stale-while-revalidate%3D0%2C+stale-if-error%3D300";
    assert_eq!(cache_status(&open(tile)), "MISS");
    std::thread::sleep(Duration::from_millis(1500));
    let served = up.served();
    for i in 0..3 {
        let r = answered(&gw, tile, "403");
        assert_eq!(
            (r.status, cache_status(&r)),
            (403, "EXPIRED"),
            "request {i} after the refresh's 403"
        );
    }
    assert_eq!(up.served(), served + 3, "each asked the upstream");
    // The upstream serves it again: stored anew.
    assert_eq!(open(tile).status, 200);
    assert_eq!(cache_status(&open(tile)), "HIT");
}

/// A stale tile whose refresh breaks off after the upstream's head came (its body cut short)
/// is served stale to the requests after it, and one request a second asks the upstream again,
/// as after a failure before the head: with the client's own refresh (no stale-while-revalidate
/// window) and with a background one. Before, the broken refresh left the tile marked as being
/// refreshed: 30 s of stale copies and not one request upstream.
#[test]
fn a_refresh_whose_body_breaks_off_is_tried_again_a_second_later() {
    let up = PyUpstream::start("tiles", 5.0);
    let (_dir, gw) = start(&up, STALE_WINDOWS, &[]);
    let ask = |path: &str| {
        let raw = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
        support::send_until_close(gw.port, raw.as_bytes())
    };
    for swr in [0, 30] {
        let tile = format!(
            "/open/breaks/20000/swr{swr}.png?cc=max-age%3D1%2C+stale-while-revalidate%3D{swr}%2C+stale-if-error%3D300"
        );
        let first = ask(&tile);
        assert!(
            first.starts_with("HTTP/1.1 200")
                && first.to_ascii_lowercase().contains("x-cache-status: miss"),
            "{first}"
        );
        std::thread::sleep(Duration::from_millis(1500));
        let before = up.served();
        // The first request after expiry refreshes the tile (answered with what the upstream
        // sends, or stale while the background refresh runs); the upstream breaks it off.
        let _ = ask(&tile);
        let (mut stale, started) = (0, Instant::now());
        while started.elapsed() < Duration::from_millis(3300) {
            std::thread::sleep(Duration::from_millis(150));
            let text = ask(&tile).to_ascii_lowercase();
            if text.starts_with("http/1.1 200") && text.contains("x-cache-status: stale") {
                stale += 1;
            }
        }
        let asked = up.served() - before;
        assert!(
            asked >= 3,
            "swr {swr}: the upstream was asked {asked} times in 3.3 s after the broken refresh (one a second expected)\n{}",
            gw.log_text()
        );
        assert!(stale >= 10, "swr {swr}: {stale} stale answers");
    }
}

/// The tile edge under load while its upstream fails: clients keep asking for tiles past their
/// TTL while the upstream freezes (SIGSTOP: handshakes still complete, nothing is answered),
/// goes on, dies (SIGKILL: refused) and comes back. Every request is answered 200 from the last
/// good copy (stale-if-error) or a fresh one; while the upstream is frozen the clients are
/// served at their usual pace (a failed refresh is not waited on again by every request of the
/// tile), none waits much past one read timeout (before, a tile's concurrent requests waited
/// their turns, up to four timeouts, and some got 502); the tiles are fresh again once it is
/// back.
#[test]
fn the_upstream_frozen_and_killed_under_load_every_cached_tile_is_still_served() {
    const TIMEOUT_MS: u64 = 400;
    let mut up = PyUpstream::start("tiles", 5.0);
    let conf = config(
        &up,
        "{ttl: 1, staleWhileRevalidate: 0, staleIfError: 600}",
    )
    .replace(
        "{serviceEndpoint: up, stripPath: false}",
        &format!(
            "{{serviceEndpoint: up, stripPath: false, connectTimeout: {TIMEOUT_MS}, readTimeout: {TIMEOUT_MS}}}"
        ),
    );
    let dir = ConfigDir::new(&conf);
    dir.write("consumers.json", &consumers_file());
    let gw = GatewayProcess::start_with(&dir, &["--populate", &dir.file("consumers.json")], &[]);
    let tiles: Vec<String> = (0..4).map(|i| format!("/tiles/png/7/{i}/5.png")).collect();
    for (i, t) in tiles.iter().enumerate() {
        let r = tile(&gw, t, i);
        assert_eq!((r.status, cache_status(&r)), (200, "MISS"));
    }
    // Three clients per tile, each request on a connection of its own.
    let loads: Vec<Load> = tiles
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let raw = format!(
                "GET {t} HTTP/1.1\r\nHost: tiles\r\nAuthorization: {}\r\nConnection: close\r\n\r\n",
                key(i)
            );
            Load::start(gw.port, 3, &raw, Duration::from_millis(5))
        })
        .collect();
    let t0 = loads[0].started;
    let phase = |d: u64| std::thread::sleep(Duration::from_millis(d));
    phase(1500); // the tiles expire and are refreshed
    up.signal("STOP");
    let frozen = t0.elapsed();
    phase(3000); // frozen: every tile's copy goes stale, every refresh times out
    up.signal("CONT");
    let thawed = t0.elapsed();
    phase(1000);
    // Answered with the tile or 304 (the png tiles carry an ETag).
    let asked_before_death = up.served() + up.not_modified();
    up.kill();
    // Down: refused. Every tile's refresh fails within the phase's 2.5 s.
    let down = Instant::now();
    let failing = || support::json_body(&get(gw.admin_port, "GET", "/tollgate/cache", &[]));
    let mut state = failing();
    while state["failingTiles"] != 4 && down.elapsed() < Duration::from_millis(2500) {
        phase(50);
        state = failing();
    }
    assert_eq!(state["failingTiles"], 4, "{state}");
    phase(2500u64.saturating_sub(down.elapsed().as_millis() as u64));
    up.restart();
    phase(2000); // back: refreshed
    let reports: Vec<_> = loads.into_iter().map(Load::stop).collect();
    let outcomes: Vec<_> = reports.iter().flat_map(|r| r.outcomes.iter()).collect();
    let failed: Vec<_> = outcomes.iter().filter(|o| o.status != Some(200)).collect();
    let slowest = outcomes.iter().map(|o| o.took).max().unwrap_or_default();
    // Requests per second answered before the upstream froze, and while it was frozen.
    let rate = |from: Duration, to: Duration| {
        let n = outcomes
            .iter()
            .filter(|o| o.at >= from && o.at + o.took <= to)
            .count();
        n as f64 / (to - from).as_secs_f64()
    };
    let (before, while_frozen) = (rate(Duration::ZERO, frozen), rate(frozen, thawed));
    eprintln!(
        "{} requests, {before:.0}/s before the freeze, {while_frozen:.0}/s during it, {} failed, slowest {slowest:?}",
        outcomes.len(),
        failed.len()
    );
    assert!(failed.is_empty(), "{} failed: {failed:?}", failed.len());
    assert!(
        while_frozen > before / 3.0,
        "{while_frozen:.0} requests/s while the upstream was frozen against {before:.0}/s before: they waited on it"
    );
    // Requests that waited their turns on a tile's refreshes each waited two timeouts or
    // more; a stall of the busy machine may hold one or two as long.
    let slow: Vec<_> = outcomes
        .iter()
        .filter(|o| o.took > Duration::from_millis(2 * TIMEOUT_MS))
        .collect();
    assert!(
        slow.len() <= 2,
        "{} requests waited over two timeouts while the upstream was frozen or down: {slow:?}",
        slow.len()
    );
    assert!(
        slowest < Duration::from_millis(10 * TIMEOUT_MS),
        "a request waited {slowest:?} while the upstream was frozen or down"
    );
    let stale = gw.metric(r#"tollgate_cache_requests_total{api_endpoint="tiles",status="STALE"}"#);
    assert!(stale > 0.0, "stale-if-error was not what answered");
    assert!(
        asked_before_death > tiles.len() as u64,
        "the expired tiles were asked of the upstream again: {asked_before_death}"
    );
    // Fresh again: the next requests are hits of a copy the upstream served after it came back.
    for (i, t) in tiles.iter().enumerate() {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let r = tile(&gw, t, i);
            assert_eq!(r.status, 200);
            if cache_status(&r) != "STALE" {
                break;
            }
            assert!(Instant::now() < deadline, "{t} stayed stale");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    assert!(
        up.served() + up.not_modified() >= 1,
        "no tile was refreshed from the restarted upstream"
    );
}

/// A refresh slower than the cache lock's timeout (an upstream that hangs past `lockTimeout`,
/// then times out): the requests that came while it was in flight get the stale tile at once
/// instead of waiting on the lock, giving up and going upstream themselves (where the hung
/// upstream answered them 502 though the stale tile was there).
#[test]
fn requests_during_a_slow_refresh_get_the_stale_tile_at_once() {
    let up = PyUpstream::start("tiles", 5.0);
    let conf = config(
        &up,
        "{ttl: 1, staleWhileRevalidate: 0, staleIfError: 600, lockTimeout: 1}",
    )
    .replace(
        "{serviceEndpoint: up}",
        "{serviceEndpoint: up, readTimeout: 2500}",
    );
    let dir = ConfigDir::new(&conf);
    let gw = GatewayProcess::start_with(&dir, &[], &[]);
    let open = |path: &str| get(gw.port, "GET", path, &[]);
    assert_eq!(cache_status(&open("/open/hung.png")), "MISS");
    std::thread::sleep(Duration::from_millis(1500));
    up.signal("STOP");
    // The tile asked for in a thread of its own: status, X-Cache-Status, how long it took.
    let ask = || {
        let port = gw.port;
        std::thread::spawn(move || {
            let t = Instant::now();
            let r = get(port, "GET", "/open/hung.png", &[]);
            let cache = r.header("x-cache-status").map(str::to_string);
            (r.status, cache, t.elapsed())
        })
    };
    let first = ask();
    super::wait_in_flight(&gw);
    let others: Vec<_> = (0..4).map(|_| ask()).collect();
    for o in others {
        let (status, cache, took) = o.join().expect("request");
        assert_eq!(
            (status, cache.as_deref()),
            (200, Some("STALE")),
            "while the refresh hangs"
        );
        assert!(
            took < Duration::from_millis(800),
            "waited {took:?} on the hung refresh"
        );
    }
    let (status, cache, took) = first.join().expect("request");
    assert_eq!((status, cache.as_deref()), (200, Some("STALE")));
    assert!(
        took >= Duration::from_millis(2400),
        "the refresh itself timed out: {took:?}"
    );
    up.signal("CONT");
    // Back: the next refresh lands.
    let deadline = Instant::now() + Duration::from_secs(5);
    while cache_status(&open("/open/hung.png")) == "STALE" {
        assert!(Instant::now() < deadline, "the tile stayed stale");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_tile_the_upstream_forbids_serving_stale_is_never_served_stale() {
    let mut up = PyUpstream::start("tiles", 5.0);
    let (_dir, gw) = start(&up, STALE_WINDOWS, &[]);
    let open = |path: &str| get(gw.port, "GET", path, &[]);
    // The step's windows are for tiles that allow it: not for these (RFC 9111 §4.2.4).
    let tiles = [
        "/open/mr.png?cc=max-age%3D1%2C+must-revalidate",
        "/open/pr.png?cc=max-age%3D1%2C+proxy-revalidate",
        "/open/sm.png?cc=s-maxage%3D1",
        "/open/nc.png?cc=no-cache",
    ];
    for t in tiles {
        assert_eq!(cache_status(&open(t)), "MISS", "{t}");
    }
    std::thread::sleep(Duration::from_millis(1500));
    let served = up.served();
    for t in tiles {
        let r = open(t);
        assert_eq!(r.status, 200, "{t}");
        assert_ne!(
            cache_status(&r),
            "STALE",
            "{t}: served stale while refreshed"
        );
    }
    assert_eq!(
        up.served(),
        served + 4,
        "each was asked for before it was used"
    );
    std::thread::sleep(Duration::from_millis(1500));
    up.kill();
    for t in tiles {
        // The stored copy may not be used and the upstream cannot be asked: a 504 (RFC 9111
        // §5.2.2.2), labelled as the expired tile it is.
        let r = open(t);
        assert_eq!(
            (r.status, cache_status(&r)),
            (504, "EXPIRED"),
            "{t}: served stale with the upstream down, or not as a gateway timeout\n{}",
            gw.log_text()
        );
    }
    up.restart();
    for t in tiles {
        let r = answered(&gw, t, "503");
        assert_eq!(
            (r.status, cache_status(&r) == "STALE"),
            (503, false),
            "{t}: the upstream's failure is the answer"
        );
    }
}

/// A request that waited on another's revalidation of a tile its upstream forbids serving
/// stale, and then found the tile gone (purged meanwhile), is a plain miss: when the upstream
/// fails it, the answer is the upstream's 502 labelled `MISS`, not the 504 of a stored copy
/// that could not be revalidated (which the request that revalidated gets).
#[test]
fn a_request_that_waited_on_a_revalidation_and_then_found_nothing_is_a_miss() {
    let mut up = PyUpstream::start("tiles", 5.0);
    let (_dir, gw) = start(&up, STALE_WINDOWS, &[]);
    let t = "/open/slow/2500/gone.png?cc=max-age%3D1%2C+must-revalidate";
    assert_eq!(cache_status(&get(gw.port, "GET", t, &[])), "MISS");
    std::thread::sleep(Duration::from_millis(1500));
    let port = gw.port;
    // The first revalidates (the upstream takes 2.5 s), the second waits on its lock.
    let first = std::thread::spawn(move || get(port, "GET", t, &[]));
    super::wait_in_flight(&gw);
    let second = std::thread::spawn(move || get(port, "GET", t, &[]));
    std::thread::sleep(Duration::from_millis(400));
    let r = purge(&gw, &format!(r#"{{"url": "{t}"}}"#));
    assert_eq!(support::json_body(&r)["purged"], 1, "{}", r.text());
    up.kill();
    let (first, second) = (first.join().unwrap(), second.join().unwrap());
    assert_eq!(
        (first.status, cache_status(&first)),
        (504, "EXPIRED"),
        "the revalidation that failed\n{}",
        gw.log_text()
    );
    assert_eq!(
        (second.status, cache_status(&second)),
        (502, "MISS"),
        "the request that found nothing after the wait\n{}",
        gw.log_text()
    );
}

/// A stale tile's background refresh is the gateway's own request, made after a client's that
/// was answered and counted: Kargo's `eg` counter, the cache's request counter and the
/// consumer's rate limit count the clients' requests only, a `log` step writes theirs (each
/// refresh counted and was written as one more request of the consumer);
/// `tollgate_cache_refreshes_total` counts the refreshes, done and failed.
#[test]
fn a_background_refresh_is_not_counted_as_a_clients_request() {
    let mut up = PyUpstream::start("tiles", 5.0);
    // Two seconds fresh: the refreshed copy is still fresh for the third request on a busy
    // machine.
    let cache = "cache: [{action: {ttl: 2, staleWhileRevalidate: 30, staleIfError: 300}}]";
    let steps = [
        "metrics:",
        "key-auth: [{action: {apiKeyField: apiKey}}]",
        "log: [{action: {message: 'logged ${req.method} ${req.originalUrl}'}}]",
        "rate-limit: [{action: {max: 3, windowMs: 600000, rateLimitBy: '${req.headers.authorization}'}}]",
        "scopes:",
        cache,
        "proxy: [{action: {serviceEndpoint: up, stripPath: false}}]",
    ];
    let cfg = pipeline_config(&up, "tiles: {paths: ['/tiles/*'], scopes: [tiles]}", &steps);
    let (_dir, gw) = start_config(&cfg, &[]);
    let refreshes = |result: &str, n: f64| {
        let series =
            format!("tollgate_cache_refreshes_total{{api_endpoint=\"tiles\",result=\"{result}\"}}");
        gw.metric_when(&series, |v| v >= n)
    };
    let t = "/tiles/refreshed.png";
    assert_eq!(cache_status(&tile(&gw, t, 1)), "MISS");
    std::thread::sleep(Duration::from_millis(2500));
    let stale = tile(&gw, t, 1);
    assert_eq!((stale.status, cache_status(&stale)), (200, "STALE"));
    assert_eq!(refreshes("done", 1.0), 1.0);
    // The consumer's third request is its third, whatever the refresh did; the fourth is over.
    let third = tile(&gw, t, 1);
    assert_eq!((third.status, cache_status(&third)), (200, "HIT"));
    assert_eq!(tile(&gw, t, 1).status, 429);
    // A refresh that fails (the upstream gone) leaves the stale tile and is counted failed.
    std::thread::sleep(Duration::from_millis(2500));
    up.kill();
    let down = tile(&gw, t, 2);
    assert_eq!((down.status, cache_status(&down)), (200, "STALE"));
    assert_eq!(refreshes("failed", 1.0), 1.0);
    std::thread::sleep(Duration::from_millis(300));
    let metrics = get(gw.admin_port, "GET", "/metrics", &[]).text();
    let sum = |prefix: &str| -> f64 {
        metrics
            .lines()
            .filter(|l| l.starts_with(prefix))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    assert_eq!(sum("eg{"), 5.0, "five requests of consumers:\n{metrics}");
    let refused: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("eg{") && l.contains("status_code=\"429\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(refused, 1.0, "{metrics}");
    let by_status = |s: &str| {
        gw.metric(&format!(
            "tollgate_cache_requests_total{{api_endpoint=\"tiles\",status=\"{s}\"}}"
        ))
    };
    assert_eq!(
        ["MISS", "STALE", "HIT", "EXPIRED", "REVALIDATED"].map(by_status),
        [1.0, 2.0, 1.0, 0.0, 0.0],
        "the cache's verdicts on the four requests that reached it"
    );
    assert_eq!(refreshes("done", 1.0) + refreshes("failed", 1.0), 2.0);
    let logged = gw
        .log_text()
        .matches("logged GET /tiles/refreshed.png")
        .count();
    assert_eq!(logged, 5, "the log step's lines:\n{}", gw.log_text());
    up.restart();
}

/// A HEAD of a stale tile asks the upstream but stores nothing (Pingora drops a HEAD's fill):
/// it is not on record as refreshing the tile, so the GETs that follow refresh it (before, for
/// 30 s, every request of the tile was served the stale copy and none asked the upstream).
#[test]
fn a_head_of_a_stale_tile_leaves_its_refresh_to_the_gets() {
    let up = PyUpstream::start("tiles", 5.0);
    let (_dir, gw) = start(
        &up,
        "{ttl: 1, staleWhileRevalidate: 0, staleIfError: 300}",
        &[],
    );
    // The body comes in two parts: the HEAD is answered at the head, its fill dropped.
    let t = "/open/stall/300/bytes/50000/head-then-get";
    assert_eq!(cache_status(&get(gw.port, "GET", t, &[])), "MISS");
    std::thread::sleep(Duration::from_millis(1500));
    let head = get(gw.port, "HEAD", t, &[]);
    assert_eq!(head.status, 200);
    let before = up.served();
    let r = get(gw.port, "GET", t, &[]);
    assert_eq!(
        (r.status, cache_status(&r)),
        (200, "EXPIRED"),
        "the GET after the HEAD\n{}",
        gw.log_text()
    );
    assert_eq!(up.served(), before + 1, "the GET asked the upstream");
    assert_eq!(cache_status(&get(gw.port, "GET", t, &[])), "HIT");
}

/// A HEAD of a tile its upstream failed goes upstream once the failure is a second old; the
/// upstream's answer to it (never stored) does not end the tile's outage record, as an answer
/// that is not stored and no failure does: only a GET's refresh says the tile is served fresh
/// again.
#[test]
fn a_heads_answer_leaves_the_tiles_outage_on_record() {
    let mut up = PyUpstream::start("tiles", 5.0);
    let (_dir, gw) = start(
        &up,
        "{ttl: 1, staleWhileRevalidate: 0, staleIfError: 300}",
        &[],
    );
    let failing = || {
        support::json_body(&get(gw.admin_port, "GET", "/tollgate/cache", &[]))["failingTiles"]
            .clone()
    };
    let t = "/open/outage/head.png";
    assert_eq!(cache_status(&get(gw.port, "GET", t, &[])), "MISS");
    std::thread::sleep(Duration::from_millis(1500));
    up.kill();
    let r = get(gw.port, "GET", t, &[]);
    assert_eq!((r.status, cache_status(&r)), (200, "STALE"));
    assert_eq!(failing(), 1);
    up.restart();
    // Past the second after the failure: the next request asks the upstream.
    std::thread::sleep(Duration::from_millis(1200));
    let head = get(gw.port, "HEAD", t, &[]);
    assert_eq!(
        (head.status, cache_status(&head)),
        (200, "EXPIRED"),
        "the HEAD asked the upstream\n{}",
        gw.log_text()
    );
    assert_eq!(
        failing(),
        1,
        "the HEAD's answer ended the tile's outage record"
    );
    let r = get(gw.port, "GET", t, &[]);
    assert_eq!((r.status, cache_status(&r)), (200, "EXPIRED"));
    assert_eq!(cache_status(&get(gw.port, "GET", t, &[])), "HIT");
}

/// An OGC service exception (a WMS server's XML report of its failure, sent with status 200)
/// is never stored as the tile, the tile is stored once the upstream draws it, and a stale
/// copy answers in a later report's place as it does for a 5xx. A map or a tile is asked for by
/// `REQUEST` or by a path that names an image (RESTful WMTS). XML that was asked for (a
/// GetCapabilities) is stored as any answer is.
#[test]
fn service_exceptions_are_not_stored_and_a_stale_tile_answers_for_them() {
    let up = PyUpstream::start("tiles", 5.0);
    let (_dir, gw) = start(&up, STALE_WINDOWS, &[]);
    let windows = "cc=max-age%3D1%2C+stale-while-revalidate%3D0%2C+stale-if-error%3D300";
    let map = format!("/open/wms?SERVICE=WMS&request=GetMap&LAYERS=roads&{windows}");
    let reported =
        |path: &str, ctype: &str| get(gw.port, "GET", path, &[("X-Test-Content-Type", ctype)]);
    let served = up.served();
    // WMS 1.3.0's report (text/xml) to a GetMap, twice: neither stored.
    for _ in 0..2 {
        let r = reported(&map, "text/xml; charset=UTF-8");
        assert_eq!((r.status, cache_status(&r)), (200, "MISS"));
    }
    assert_eq!(up.served(), served + 2, "each report was fetched");
    // Logged as the upstream failure it is (counted, and the log said nothing).
    let deadline = Instant::now() + Duration::from_secs(5);
    while !gw
        .log_text()
        .contains("service exception (an OGC exception report for a map); relayed, not stored")
    {
        assert!(Instant::now() < deadline, "{}", gw.log_text());
        std::thread::sleep(Duration::from_millis(50));
    }
    // WMS 1.1.1's report, whatever was asked for.
    let other = format!("/open/other.png?{windows}");
    for _ in 0..2 {
        let r = reported(&other, "application/vnd.ogc.se_xml");
        assert_eq!((r.status, cache_status(&r)), (200, "MISS"));
    }
    // The parameter's name or value escaped is the same parameter to a WMS.
    let escaped = format!("/open/wms?SERVICE=WMS&%52EQUEST=Get%4Dap&LAYERS=roads&{windows}");
    for _ in 0..2 {
        let r = reported(&escaped, "text/xml");
        assert_eq!((r.status, cache_status(&r)), (200, "MISS"));
    }
    // A RESTful WMTS or TMS tile answered with XML: its path names an image.
    let restful = format!("/open/wmts/roads/default/grid/3/2/1.png?{windows}");
    // GeoWebCache's RESTful WMTS names the image by its `format` parameter.
    let gwc =
        format!("/open/gwc/service/wmts/rest/roads/default/g/g:3/1/7?format=image/png&{windows}");
    for path in [&restful, &restful, &gwc, &gwc] {
        let r = reported(path, "text/xml");
        assert_eq!((r.status, cache_status(&r)), (200, "MISS"), "{path}");
    }
    // Concurrent misses for one tile while the upstream reports failure: each answer relayed
    // and counted (those that waited on the first fetch went upstream themselves).
    let together = format!("/open/wms?REQUEST=GetMap&LAYERS=together&{windows}");
    let port = gw.port;
    let waiting: Vec<_> = (0..5)
        .map(|_| {
            let path = together.clone();
            std::thread::spawn(move || {
                get(
                    port,
                    "GET",
                    &path,
                    &[("X-Test-Content-Type", "text/xml"), ("X-Test-Delay", "300")],
                )
            })
        })
        .collect();
    for w in waiting {
        let r = w.join().expect("a request");
        assert_eq!(
            (r.status, r.header("content-type")),
            (200, Some("text/xml"))
        );
    }
    // XML that was asked for is stored.
    let caps = "/open/wms?SERVICE=WMS&REQUEST=GetCapabilities";
    assert_eq!(cache_status(&reported(caps, "text/xml")), "MISS");
    assert_eq!(cache_status(&reported(caps, "text/xml")), "HIT");
    let restful_caps = "/open/wmts/1.0.0/WMTSCapabilities.xml";
    assert_eq!(cache_status(&reported(restful_caps, "text/xml")), "MISS");
    assert_eq!(cache_status(&reported(restful_caps, "text/xml")), "HIT");
    // The upstream draws the tile: stored at once (the reports left no mark on it).
    let drawn = get(gw.port, "GET", &map, &[]);
    assert_eq!((drawn.status, cache_status(&drawn)), (200, "MISS"));
    assert_eq!(cache_status(&get(gw.port, "GET", &map, &[])), "HIT");
    // Stale, then the upstream fails it with a report: the stale tile answers.
    std::thread::sleep(Duration::from_millis(1500));
    let r = reported(&map, "application/vnd.ogc.se_xml");
    assert_eq!(
        (r.status, cache_status(&r), r.text()),
        (200, "STALE", drawn.text()),
        "{}",
        gw.log_text()
    );
    assert_eq!(
        gw.metric("tollgate_upstream_errors_total{kind=\"service_exception\"}"),
        16.0,
        "fifteen reports fetched for misses, one for the stale tile"
    );
    // The upstream draws it again: once the failure's second has passed, a request refreshes
    // the tile and the refresh is stored.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = get(gw.port, "GET", &map, &[]);
        assert_eq!(r.status, 200);
        if r.text() != drawn.text() {
            break;
        }
        assert!(Instant::now() < deadline, "the tile was never refreshed");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(cache_status(&get(gw.port, "GET", &map, &[])), "HIT");
}

/// An XYZ tile server whose paths have no extension (martin's `/{source}/{z}/{x}/{y}`): with
/// the step's `tilesOnly`, its XML report is a service exception, not stored; without it, the
/// path says nothing of a tile and the report is stored as any answer is.
#[test]
fn a_step_whose_every_request_asks_for_a_tile_never_stores_a_report() {
    let up = PyUpstream::start("tiles", 5.0);
    let report = |gw: &GatewayProcess, path: &str| {
        get(gw.port, "GET", path, &[("X-Test-Content-Type", "text/xml")])
    };
    let cfg = pipeline_config(
        &up,
        "xyz: {paths: ['/xyz/*']}",
        &[
            "cache: [{action: {tilesOnly: true}}]",
            "proxy: [{action: {serviceEndpoint: up}}]",
        ],
    );
    let (_dir, gw) = start_config(&cfg, &[]);
    for _ in 0..2 {
        let r = report(&gw, "/xyz/roads/3/2/1");
        assert_eq!((r.status, cache_status(&r)), (200, "MISS"));
    }
    assert_eq!(
        gw.metric("tollgate_upstream_errors_total{kind=\"service_exception\"}"),
        2.0
    );
    drop(gw);
    let (_dir, gw) = start(&up, "{}", &[]);
    assert_eq!(cache_status(&report(&gw, "/open/roads/3/2/1")), "MISS");
    assert_eq!(cache_status(&report(&gw, "/open/roads/3/2/1")), "HIT");
}
