//! The shared tile cache with real processes: an upstream in a process of its own that counts
//! what it serves, the real binary, consumers in the embedded store. One upstream request for
//! many consumers; nothing served to a request that authentication or scopes refuse; HTTP
//! caching (Cache-Control, ETag, 304, Age, stale windows); a truncated body never stored; the
//! disk tier across a restart and with a damaged file; purge; a scan within the budget.

mod support;

use std::time::{Duration, Instant};

use support::load::Load;
use support::upstream::PyUpstream;
use support::{get, send_json, ConfigDir, GatewayProcess, Response};

const CONSUMERS: usize = 10;

fn consumers_file() -> String {
    let mut users = Vec::new();
    for i in 0..CONSUMERS {
        users.push(format!(
            r#""user{i}": {{"app{i}": {{"type": "key-auth", "keyId": "k{i}", "keySecret": "s{i}", "scopes": ["tiles"]}}}}"#
        ));
    }
    users.push(
        r#""other": {"elevation": {"type": "key-auth", "keyId": "e0", "keySecret": "es", "scopes": ["elevation"]}}"#
            .to_string(),
    );
    format!(
        r#"{{"scopes": ["tiles", "elevation"], "users": {{{}}}}}"#,
        users.join(", ")
    )
}

fn config(up: &PyUpstream, cache_action: &str) -> String {
    format!(
        r#"http: {{port: ${{PORT}}}}
admin: {{port: ${{ADMIN_PORT}}, host: 127.0.0.1}}
apiEndpoints:
  tiles: {{paths: ['/tiles/*'], scopes: [tiles]}}
  open: {{paths: ['/open/*']}}
serviceEndpoints:
  up: {{url: '{up}'}}
policies: [metrics, key-auth, scopes, cache, proxy]
pipelines:
  tiles:
    apiEndpoints: [tiles]
    policies:
      - metrics:
      - key-auth: [{{action: {{apiKeyField: apiKey}}}}]
      - scopes:
      - cache: [{{action: {cache_action}}}]
      - proxy: [{{action: {{serviceEndpoint: up, stripPath: false}}}}]
  open:
    apiEndpoints: [open]
    policies:
      - cache: [{{action: {cache_action}}}]
      - proxy: [{{action: {{serviceEndpoint: up}}}}]
"#,
        up = up.url("")
    )
}

fn start(up: &PyUpstream, cache_action: &str, args: &[&str]) -> (ConfigDir, GatewayProcess) {
    let dir = ConfigDir::new(&config(up, cache_action));
    dir.write("consumers.json", &consumers_file());
    let file = dir.file("consumers.json");
    let mut all = vec!["--populate", file.as_str()];
    all.extend_from_slice(args);
    let gw = GatewayProcess::start_with(&dir, &all, &[]);
    (dir, gw)
}

fn key(i: usize) -> String {
    format!("apiKey k{i}:s{i}")
}

fn tile(gw: &GatewayProcess, path: &str, consumer: usize) -> Response {
    get(gw.port, "GET", path, &[("Authorization", &key(consumer))])
}

fn cache_status(r: &Response) -> &str {
    r.header("x-cache-status").unwrap_or("")
}

#[test]
fn one_upstream_request_for_a_hundred_requests_of_ten_consumers() {
    let up = PyUpstream::start("tiles", 5.0);
    let (_dir, gw) = start(&up, "{ttl: 60}", &[]);
    let port = gw.port;
    // 100 requests for one tile from 10 consumers at once, the tile slow to render.
    let threads: Vec<_> = (0..CONSUMERS)
        .map(|i| {
            std::thread::spawn(move || {
                (0..10)
                    .map(|_| {
                        let r = get(
                            port,
                            "GET",
                            "/tiles/slow/300/5/10/12.png",
                            &[("Authorization", &key(i))],
                        );
                        (
                            r.status,
                            r.header("x-cache-status").map(str::to_string),
                            r.body,
                        )
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let answers: Vec<_> = threads
        .into_iter()
        .flat_map(|t| t.join().expect("client thread"))
        .collect();
    assert_eq!(answers.len(), 100);
    assert!(
        answers.iter().all(|(s, _, _)| *s == 200),
        "{:?}",
        answers.iter().map(|a| a.0).collect::<Vec<_>>()
    );
    let body = &answers[0].2;
    assert!(
        answers.iter().all(|(_, _, b)| b == body),
        "every consumer got the same tile"
    );
    assert_eq!(
        up.served(),
        1,
        "one upstream request for 100 requests of 10 consumers"
    );
    let misses = answers
        .iter()
        .filter(|(_, c, _)| c.as_deref() == Some("MISS"))
        .count();
    assert_eq!(
        misses,
        1,
        "{:?}",
        answers.iter().map(|a| a.1.clone()).collect::<Vec<_>>()
    );
    // Kargo's counter counts every tile, hit or miss, with its consumer.
    for i in 0..CONSUMERS {
        let n = gw.metric_when(
            &format!(
                r#"eg{{api_endpoint="tiles",consumer="{}",status_code="200",type="SUCCESS"}}"#,
                consumer_id(&gw, i)
            ),
            |n| n >= 10.0,
        );
        assert_eq!(n, 10.0, "consumer {i}");
    }
    assert!(
        gw.metric(r#"tollgate_cache_requests_total{api_endpoint="tiles",status="HIT"}"#) >= 90.0
    );
    assert!(gw.metric(r#"tollgate_cache_served_bytes_total{api_endpoint="tiles"}"#) > 0.0);
    assert!(gw.metric(r#"tollgate_cache_objects{tier="memory"}"#) >= 1.0);
    assert!(
        gw.metric("tollgate_cache_lock_wait_seconds_count") >= 1.0,
        "the others waited on the fill"
    );
}

fn consumer_id(gw: &GatewayProcess, i: usize) -> String {
    let r = get(gw.admin_port, "GET", &format!("/apps/app{i}"), &[]);
    support::json_body(&r)["id"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

#[test]
fn a_cached_tile_is_never_served_to_a_refused_request() {
    let up = PyUpstream::start("tiles", 5.0);
    let (_dir, gw) = start(&up, "{ttl: 60}", &[]);
    let path = "/tiles/1/2/3.png";
    assert_eq!(cache_status(&tile(&gw, path, 0)), "MISS");
    assert_eq!(cache_status(&tile(&gw, path, 1)), "HIT");
    // Anonymous, wrong key, another scope: refused while the tile is cached.
    assert_eq!(get(gw.port, "GET", path, &[]).status, 401);
    assert_eq!(
        get(
            gw.port,
            "GET",
            path,
            &[("Authorization", "apiKey k0:wrong")]
        )
        .status,
        401
    );
    let wrong_scope = get(gw.port, "GET", path, &[("Authorization", "apiKey e0:es")]);
    assert!(
        matches!(wrong_scope.status, 401 | 403),
        "{}",
        wrong_scope.status
    );
    assert_eq!(wrong_scope.header("x-cache-status"), None);
    // Revoked: refused.
    let r = send_json(
        gw.admin_port,
        "PUT",
        "/credentials/key-auth/k2/status",
        r#"{"status": false}"#,
    );
    assert!(r.status < 300, "{}", r.text());
    let deadline = Instant::now() + Duration::from_secs(3);
    while tile(&gw, path, 2).status != 401 {
        assert!(Instant::now() < deadline, "a revoked key is still served");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(up.served(), 1);
}

#[test]
fn the_key_is_shared_and_the_fill_carries_no_credentials() {
    let up = PyUpstream::start("tiles", 5.0);
    let (_dir, gw) = start(&up, "{ttl: 60, ignoreParams: ['_']}", &[]);
    // Consumers' credentials in the query, OGC parameters in any order and case, a buster.
    let a = get(
        gw.port,
        "GET",
        "/tiles/wms?SERVICE=WMS&REQUEST=GetMap&LAYERS=roads&apiKey=k0:s0&_=1",
        &[],
    );
    assert_eq!((a.status, cache_status(&a)), (200, "MISS"), "{}", a.text());
    let upstream_saw: serde_json::Value = serde_json::from_slice(&a.body).expect("json");
    let path = upstream_saw["path"].as_str().unwrap_or("");
    assert!(
        !path.contains("apiKey") && !path.contains("s0"),
        "the fill carried a credential: {path}"
    );
    let b = get(
        gw.port,
        "GET",
        "/tiles/wms?layers=roads&request=GetMap&service=WMS&apiKey=k1:s1&_=2",
        &[],
    );
    assert_eq!((b.status, cache_status(&b)), (200, "HIT"));
    let c = get(
        gw.port,
        "GET",
        "/tiles/wms?SERVICE=WMS&REQUEST=GetMap&LAYERS=rivers&apiKey=k1:s1",
        &[],
    );
    assert_eq!(cache_status(&c), "MISS", "another layer is another tile");
    // The Authorization header of a consumer does not reach the upstream on a fill either.
    let d = tile(&gw, "/tiles/header-check.png", 3);
    let saw: serde_json::Value = serde_json::from_slice(&d.body).expect("json");
    assert_eq!(saw["path"], "/tiles/header-check.png");
    assert_eq!(up.served(), 3);
}

#[test]
fn http_caching_rules() {
    let up = PyUpstream::start("tiles", 5.0);
    let (_dir, gw) = start(
        &up,
        "{ttl: 60, staleWhileRevalidate: 0, staleIfError: 0}",
        &[],
    );
    let open = |path: &str, headers: &[(&str, &str)]| get(gw.port, "GET", path, headers);
    // Never stored: no-store, private, Set-Cookie, a status the step does not keep.
    for path in [
        "/open/a?cc=no-store",
        "/open/b?cc=private",
        "/open/c?header=Set-Cookie:s%3D1",
        "/open/status/500/d",
    ] {
        let before = up.served();
        open(path, &[]);
        let again = open(path, &[]);
        assert_ne!(cache_status(&again), "HIT", "{path}");
        assert_eq!(up.served(), before + 2, "{path} was stored");
    }
    // Age on a hit; only GET and HEAD.
    open("/open/e", &[]);
    let hit = open("/open/e", &[]);
    assert_eq!(cache_status(&hit), "HIT");
    assert!(hit.header("age").is_some(), "a hit says its age");
    // A client's own directives (a browser's reload) do not bypass the shared copy.
    for (name, value) in [
        ("Cache-Control", "no-cache"),
        ("Pragma", "no-cache"),
        ("Cache-Control", "max-age=0"),
        ("Cache-Control", "no-store"),
    ] {
        let r = open("/open/e", &[(name, value)]);
        assert_eq!(
            (r.status, cache_status(&r)),
            (200, "HIT"),
            "{name}: {value}"
        );
    }
    // A miss says the age the upstream gave it (a cache before it), and none of its own.
    let aged = open("/open/i?header=Age:7", &[]);
    assert_eq!(
        (cache_status(&aged), aged.header("age")),
        ("MISS", Some("7"))
    );
    let fetched = open("/open/j", &[]);
    assert_eq!(
        (cache_status(&fetched), fetched.header("age")),
        ("MISS", None)
    );
    // The upstream connection's own headers reach no client, on a miss or on a hit.
    let hop = "/open/k?header=Upgrade:h2c&header=X-Hop:1&header=Connection:X-Hop";
    for round in ["MISS", "HIT"] {
        let r = open(hop, &[]);
        assert_eq!(cache_status(&r), round);
        for name in ["upgrade", "x-hop"] {
            assert!(r.header(name).is_none(), "{round}: {name} {:?}", r.headers);
        }
    }
    let head = get(gw.port, "HEAD", "/open/e", &[]);
    assert_eq!((head.status, cache_status(&head)), (200, "HIT"));
    let post = support::request(
        gw.port,
        "POST /open/e HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        false,
    );
    assert_eq!(cache_status(&post), "BYPASS");
    // A client's conditional request is answered 304 from the cache.
    let etagged = "/open/f?header=ETag:%22v1%22";
    let first = open(etagged, &[]);
    assert_eq!(first.header("etag"), Some("\"v1\""));
    let before = up.served();
    let not_modified = open(etagged, &[("If-None-Match", "\"v1\"")]);
    assert_eq!(
        (not_modified.status, cache_status(&not_modified)),
        (304, "HIT")
    );
    assert_eq!(up.served(), before);
    // Expired: revalidated with the upstream (its 304 keeps the stored body).
    let short = "/open/g?cc=max-age%3D1&header=ETag:%22v2%22";
    let body = open(short, &[]).body;
    std::thread::sleep(Duration::from_millis(1600));
    let revalidated = open(short, &[]);
    assert_eq!(cache_status(&revalidated), "REVALIDATED");
    assert_eq!(revalidated.body, body);
    assert!(
        up.not_modified() >= 1,
        "the upstream was asked if it changed"
    );
    // Without validators an expired object is fetched again.
    let plain = "/open/h?cc=max-age%3D1";
    open(plain, &[]);
    std::thread::sleep(Duration::from_millis(1600));
    assert_eq!(cache_status(&open(plain, &[])), "EXPIRED");
}

#[test]
fn stale_while_revalidate_and_stale_if_error() {
    let mut up = PyUpstream::start("tiles", 5.0);
    let (_dir, gw) = start(
        &up,
        "{ttl: 1, staleWhileRevalidate: 30, staleIfError: 300, ignoreParams: [status]}",
        &[],
    );
    let open = |path: &str| get(gw.port, "GET", path, &[]);
    // Stale within stale-while-revalidate: answered at once, refreshed in the background.
    let slow = "/open/slow/800/swr.png";
    assert_eq!(cache_status(&open(slow)), "MISS");
    std::thread::sleep(Duration::from_millis(1500));
    let t = Instant::now();
    let stale = open(slow);
    assert_eq!((stale.status, cache_status(&stale)), (200, "STALE"));
    assert!(
        t.elapsed() < Duration::from_millis(600),
        "a stale answer does not wait for the refresh: {:?}",
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
    let failing = open(&format!("{sie}&status=503"));
    assert_eq!(
        (failing.status, cache_status(&failing)),
        (200, "STALE"),
        "{}",
        failing.text()
    );
    up.kill();
    let down = open(sie);
    assert_eq!(
        (down.status, cache_status(&down)),
        (200, "STALE"),
        "{}\n{}",
        down.text(),
        gw.log_text()
    );
    // A tile never cached is a 502 when the upstream is down.
    assert_eq!(open("/open/never.png").status, 502);
    up.restart();
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
    phase(2500); // down: refused
    let state = support::json_body(&get(gw.admin_port, "GET", "/tollgate/cache", &[]));
    assert_eq!(state["failingTiles"], 4, "{state}");
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
        while_frozen > before / 2.0,
        "{while_frozen:.0} requests/s while the upstream was frozen against {before:.0}/s before: they waited on it"
    );
    assert!(
        slowest < Duration::from_millis(3 * TIMEOUT_MS),
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
    std::thread::sleep(Duration::from_millis(300));
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
fn a_truncated_body_is_never_stored() {
    let up = PyUpstream::start("tiles", 5.0);
    let (_dir, gw) = start(&up, "{ttl: 60}", &[]);
    for _ in 0..2 {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", gw.port)).expect("connect");
        use std::io::{Read, Write};
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        s.write_all(b"GET /open/truncate/40000 HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
            .expect("send");
        let mut got = Vec::new();
        let _ = s.read_to_end(&mut got);
        let text = String::from_utf8_lossy(&got);
        assert!(
            !text.contains("x-cache-status: HIT"),
            "a truncated body was cached: {}",
            &text[..text.len().min(300)]
        );
        // A miss is answered once its whole body is in: the client never gets part of a tile.
        assert!(
            text.starts_with("HTTP/1.1 502"),
            "{}",
            &text[..text.len().min(300)]
        );
    }
    assert_eq!(up.served(), 2, "both requests went to the upstream");
}

/// An upstream that sends more than its `Content-Length` (in the same write as the body): the
/// tile is what its length says, stored so, and the connection the extra bytes came on is not
/// used again (the next tiles come whole).
#[test]
fn bytes_past_the_content_length_are_neither_part_of_the_tile_nor_of_the_next() {
    let up = PyUpstream::start("tiles", 5.0);
    let (_dir, gw) = start(&up, "{ttl: 60}", &[]);
    let expected: Vec<u8> = (0..20_000u32).map(|j| ((j * 7) % 251) as u8).collect();
    for status in ["MISS", "HIT"] {
        let r = get(gw.port, "GET", "/open/overlong/20000", &[]);
        assert_eq!((r.status, cache_status(&r)), (200, status));
        assert!(r.body == expected, "{status}: {} bytes", r.body.len());
    }
    for n in 0..5 {
        let name = format!("next{n}");
        let r = get(gw.port, "GET", &format!("/open/unique/9000/{name}"), &[]);
        assert_eq!((r.status, r.body.len()), (200, 9000), "tile {n}");
        assert!(r.body.starts_with(name.as_bytes()), "tile {n}");
    }
    assert_eq!(up.served(), 6);
}

#[test]
fn a_body_that_pauses_is_stored_whole_and_one_that_stalls_past_the_read_timeout_is_not() {
    let up = PyUpstream::start("tiles", 5.0);
    let conf = config(&up, "{ttl: 60}").replace(
        "{serviceEndpoint: up}",
        "{serviceEndpoint: up, readTimeout: 1500}",
    );
    let dir = ConfigDir::new(&conf);
    let gw = GatewayProcess::start_with(&dir, &[], &[]);
    let expected: Vec<u8> = (0..40_000u32).map(|j| ((j * 7) % 251) as u8).collect();
    // Half the body, a pause shorter than the read timeout, the rest: stored whole.
    let path = "/open/stall/200/bytes/40000";
    let first = get(gw.port, "GET", path, &[]);
    assert_eq!((first.status, cache_status(&first)), (200, "MISS"));
    assert!(
        first.body == expected,
        "the body that paused came back altered"
    );
    let second = get(gw.port, "GET", path, &[]);
    assert_eq!((second.status, cache_status(&second)), (200, "HIT"));
    assert!(
        second.body == expected,
        "the stored body differs from the upstream's"
    );
    // A pause past the read timeout: a 502 (the client gets no part of a tile), nothing stored.
    let stalled = "/open/stall/4000/bytes/40000";
    for _ in 0..2 {
        let started = Instant::now();
        let r = get(gw.port, "GET", stalled, &[]);
        assert_eq!(r.status, 502, "{}", r.text());
        assert!(
            started.elapsed() < Duration::from_millis(3900),
            "answered only after {:?}: the read timeout was not applied",
            started.elapsed()
        );
    }
    assert_eq!(up.served(), 3, "the stalled tile was stored");
}

#[test]
fn a_fill_whose_client_left_is_stored_for_the_next() {
    let up = PyUpstream::start("tiles", 5.0);
    let (_dir, gw) = start(&up, "{ttl: 60}", &[]);
    // The client asks for a slow tile and leaves before it comes.
    {
        use std::io::Write;
        let mut s = std::net::TcpStream::connect(("127.0.0.1", gw.port)).expect("connect");
        s.write_all(b"GET /open/slow/400/left.png HTTP/1.1\r\nHost: h\r\n\r\n")
            .expect("send");
        std::thread::sleep(Duration::from_millis(100));
    }
    // The fetch went on for everyone: the next request is a hit, the upstream asked once.
    let stored = (0..50).any(|_| {
        std::thread::sleep(Duration::from_millis(50));
        up.served() == 1 && gw.metric(r#"tollgate_cache_objects{tier="memory"}"#) >= 1.0
    });
    assert!(stored, "{}", gw.log_text());
    let next = get(gw.port, "GET", "/open/slow/400/left.png", &[]);
    assert_eq!((next.status, cache_status(&next)), (200, "HIT"));
    assert_eq!(up.served(), 1);
}

#[test]
fn a_response_past_the_size_limit_is_not_stored_on_either_path() {
    let up = PyUpstream::start("tiles", 5.0);
    for fast_path in ["on", "off"] {
        let (_dir, gw) = start(
            &up,
            "{ttl: 60, maxObjectSize: 1000}",
            &["--fast-path", fast_path],
        );
        let big = format!("/open/{fast_path}/bytes/2000");
        let before = up.served();
        for _ in 0..2 {
            let r = get(gw.port, "GET", &big, &[]);
            assert_eq!(
                (r.status, r.body.len()),
                (200, 2000),
                "fast path {fast_path}"
            );
            assert_eq!(cache_status(&r), "MISS", "fast path {fast_path}");
        }
        assert_eq!(up.served(), before + 2, "fast path {fast_path}: stored");
        let small = format!("/open/{fast_path}/bytes/500");
        let first = get(gw.port, "GET", &small, &[]);
        let second = get(gw.port, "GET", &small, &[]);
        assert_eq!(
            (cache_status(&first), cache_status(&second)),
            ("MISS", "HIT"),
            "fast path {fast_path}"
        );
        assert_eq!(second.body, first.body);
    }
}

/// `minUses: 3`: a tile is fetched for each of its first two misses without being stored (a
/// tile asked for once costs no store), stored on the third, a hit from then on; on both paths,
/// and counted for the tile, not the consumer (credentials are not part of what is counted).
#[test]
fn a_tile_is_stored_from_its_min_uses_th_miss_on_either_path() {
    let up = PyUpstream::start("tiles", 5.0);
    for fast_path in ["on", "off"] {
        let (_dir, gw) = start(&up, "{ttl: 60, minUses: 3}", &["--fast-path", fast_path]);
        let path = format!("/tiles/{fast_path}/unique/3000/min-uses-{fast_path}.png");
        let before = up.served();
        let mut statuses = Vec::new();
        let mut bodies = Vec::new();
        for consumer in 0..5 {
            let r = tile(&gw, &path, consumer);
            assert_eq!(r.status, 200, "fast path {fast_path}");
            statuses.push(cache_status(&r).to_string());
            bodies.push(r.body);
            if consumer == 1 {
                assert_eq!(
                    gw.metric(r#"tollgate_cache_objects{tier="memory"}"#),
                    0.0,
                    "fast path {fast_path}: nothing stored before the third miss"
                );
            }
        }
        assert_eq!(
            statuses,
            ["MISS", "MISS", "MISS", "HIT", "HIT"],
            "fast path {fast_path}"
        );
        assert_eq!(up.served(), before + 3, "fast path {fast_path}");
        assert!(
            bodies.iter().all(|b| *b == bodies[0] && !b.is_empty()),
            "fast path {fast_path}: every answer is the tile"
        );
        // A tile whose first miss was not stored is not remembered as uncacheable: another
        // tile asked for once stays a miss, and three times is stored.
        let once = format!("/tiles/{fast_path}/unique/3000/once.png");
        assert_eq!(cache_status(&tile(&gw, &once, 0)), "MISS");
        assert_eq!(
            gw.metric(r#"tollgate_cache_objects{tier="memory"}"#),
            1.0,
            "fast path {fast_path}"
        );
    }
}

#[test]
fn purge_a_url_and_an_api_endpoint() {
    let up = PyUpstream::start("tiles", 5.0);
    let (dir, gw) = start(&up, "{ttl: 600}", &[]);
    for p in ["/tiles/p/1.png", "/tiles/p/2.png"] {
        assert_eq!(cache_status(&tile(&gw, p, 0)), "MISS");
        assert_eq!(cache_status(&tile(&gw, p, 0)), "HIT");
    }
    // One URL, through the CLI.
    let out = support::gateway::run_tollgate(
        &[
            "cache",
            "purge",
            "/tiles/p/1.png?apiKey=k9:s9",
            "--admin-url",
            &format!("http://127.0.0.1:{}", gw.admin_port),
        ],
        &[],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("1 object"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(cache_status(&tile(&gw, "/tiles/p/1.png", 1)), "MISS");
    assert_eq!(cache_status(&tile(&gw, "/tiles/p/2.png", 1)), "HIT");
    // Everything of an api endpoint, through the Admin API.
    let r = send_json(
        gw.admin_port,
        "POST",
        "/tollgate/cache/purge",
        r#"{"apiEndpoint": "tiles"}"#,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(cache_status(&tile(&gw, "/tiles/p/2.png", 1)), "MISS");
    let state = support::json_body(&get(gw.admin_port, "GET", "/tollgate/cache", &[]));
    assert_eq!(state["generations"]["tiles"], 1);
    assert!(
        state["memory"]["objects"].as_u64().unwrap_or(0) >= 1,
        "{state}"
    );
    let r = send_json(
        gw.admin_port,
        "POST",
        "/tollgate/cache/purge",
        r#"{"apiEndpoint": "nope"}"#,
    );
    assert_eq!(r.status, 404);
    drop(dir);
}

/// The objects stored in a disk tier's directory (in its shards, not its `tmp`).
fn disk_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let Ok(shards) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    shards
        .flatten()
        .filter(|s| s.path().is_dir() && s.file_name() != "tmp")
        .flat_map(|s| std::fs::read_dir(s.path()).into_iter().flatten().flatten())
        .map(|f| f.path())
        .collect()
}

#[test]
fn the_disk_tier_survives_a_restart_and_a_damaged_file_is_a_miss() {
    let mut up = PyUpstream::start("tiles", 5.0);
    let cache_dir = std::env::temp_dir().join(format!("tollgate-disk-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&cache_dir);
    let dir_arg = cache_dir.display().to_string();
    let args = ["--cache-dir", dir_arg.as_str(), "--cache-disk-size", "10M"];
    let (dir, gw) = start(&up, "{ttl: 600}", &args);
    let first = tile(&gw, "/tiles/bytes/20000/a.png", 0);
    assert_eq!(cache_status(&first), "MISS");
    let second = tile(&gw, "/tiles/bytes/30000/b.png", 0);
    assert_eq!(cache_status(&second), "MISS");
    // Written in the background (to a temporary file, then renamed into its shard).
    let deadline = Instant::now() + Duration::from_secs(5);
    while disk_files(&cache_dir).len() < 2 {
        assert!(
            Instant::now() < deadline,
            "the tiles never reached the disk"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(gw);
    up.kill();
    // A new process, the upstream gone: answered from disk.
    let gw = GatewayProcess::start_with(
        &dir,
        &[
            "--populate",
            &dir.file("consumers.json"),
            "--cache-dir",
            &dir_arg,
        ],
        &[],
    );
    let again = tile(&gw, "/tiles/bytes/20000/a.png", 0);
    assert_eq!(
        (again.status, cache_status(&again)),
        (200, "HIT"),
        "{}",
        again.text()
    );
    assert_eq!(again.body, first.body);
    // Damage every file on disk: each reads as a miss (here: the upstream is down, so a 502),
    // never as a bad tile.
    drop(gw);
    let files = disk_files(&cache_dir);
    for f in &files {
        let mut bytes = std::fs::read(f).expect("read");
        let n = bytes.len();
        bytes.truncate(n - 100);
        std::fs::write(f, bytes).expect("damage");
    }
    assert!(!files.is_empty());
    let gw = GatewayProcess::start_with(
        &dir,
        &[
            "--populate",
            &dir.file("consumers.json"),
            "--cache-dir",
            &dir_arg,
        ],
        &[],
    );
    let r = tile(&gw, "/tiles/bytes/30000/b.png", 0);
    assert_eq!(
        r.status,
        502,
        "a damaged file is a miss: {} {:?}",
        r.status,
        r.header("x-cache-status")
    );
    up.restart();
    let r = tile(&gw, "/tiles/bytes/30000/b.png", 0);
    assert_eq!(
        (r.status, cache_status(&r), r.body.len()),
        (200, "MISS", 30000)
    );
    assert!(gw.metric("tollgate_cache_disk_damaged_total") >= 1.0);
    let _ = std::fs::remove_dir_all(&cache_dir);
}

/// Tile bodies in the memory tier live in shared memory and hits are sent from it by
/// `sendfile`: with a small budget, tiles of every size (below, within and above the sizes kept
/// there) asked for by concurrent clients, popular ones hit again and again while a stream of
/// others pushes tiles out and their places are taken again — every answer is its own tile's
/// body, whole.
#[test]
fn tiles_from_shared_memory_are_whole_and_their_own_while_the_memory_tier_churns() {
    let up = PyUpstream::start("tiles", 5.0);
    let (_dir, gw) = start(&up, "{ttl: 600}", &["--cache-memory", "2MiB"]);
    let sizes = [3000usize, 8192, 20000, 65541, 300_000];
    let expected = |name: &str, n: usize| -> Vec<u8> { name.bytes().cycle().take(n).collect() };
    let port = gw.port;
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            std::thread::spawn(move || {
                let mut hits = 0;
                let mut r = t * 7919 + 1;
                for i in 0..400u64 {
                    r = r
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    let pick = (r >> 33) as usize;
                    // Seven in ten from ten popular tiles, the rest from a stream of others.
                    let (name, size) = if pick % 10 < 7 {
                        (format!("hot{}", pick % 10), sizes[pick % 10 % sizes.len()])
                    } else {
                        (format!("cold-{t}-{i}"), sizes[pick % sizes.len()])
                    };
                    let path = format!("/open/unique/{size}/{name}");
                    let resp = get(port, "GET", &path, &[]);
                    assert_eq!(resp.status, 200, "{path}");
                    assert!(
                        resp.body == expected(&name, size),
                        "{path}: {} bytes, not its own body ({:?})",
                        resp.body.len(),
                        String::from_utf8_lossy(&resp.body[..resp.body.len().min(40)])
                    );
                    hits += usize::from(cache_status(&resp) == "HIT");
                }
                hits
            })
        })
        .collect();
    let hits: usize = threads.into_iter().map(|t| t.join().expect("client")).sum();
    assert!(hits > 500, "{hits} hits of 1600 requests");
    let evictions = gw.metric(r#"tollgate_cache_evictions_total{tier="memory"}"#);
    assert!(evictions > 50.0, "{evictions} evictions");
    // The bodies were in shared memory, counted in the gateway's resident memory.
    let pid = gw.child.id();
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    assert!(
        maps.contains("memfd:tollgate-tiles"),
        "no shared memory mapped"
    );
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let shmem_kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("RssShmem:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    assert!(shmem_kb > 100, "RssShmem {shmem_kb} kB");
    let state = support::json_body(&get(gw.admin_port, "GET", "/tollgate/cache", &[]));
    let shared = &state["sharedMemory"];
    // The file is sized half again as large as the budget; bodies pushed out are let go a
    // little after (the memory tier frees them when no thread still reads its maps).
    let (used, size) = (shared["used"].as_u64(), shared["size"].as_u64());
    assert!(
        used.is_some_and(|u| u > 0 && u <= 3 << 20) && size == Some(3 << 20),
        "{state}"
    );
    assert_eq!(
        gw.metric(r#"tollgate_cache_shared_memory_bytes{state="size"}"#),
        f64::from(3 << 20)
    );
    let used = gw.metric(r#"tollgate_cache_shared_memory_bytes{state="used"}"#);
    assert!(used > 0.0 && used <= f64::from(3 << 20), "{used}");
    // Every popular tile once more, after the churn: still its own.
    for (k, size) in sizes.iter().cycle().take(10).enumerate() {
        let name = format!("hot{k}");
        let resp = get(port, "GET", &format!("/open/unique/{size}/{name}"), &[]);
        assert!(resp.body == expected(&name, *size), "hot{k}");
    }
}

/// Clients that leave in the middle of a hit sent by `sendfile` (a 250 KB tile, the connection
/// reset after a few bytes, with a small receive buffer so most of the tile is still to send)
/// cost only their own request: the gateway goes on, and the tile goes out whole to the next.
#[test]
fn clients_that_leave_during_a_hit_sent_from_shared_memory_cost_only_their_own_request() {
    use std::io::{Read, Write};
    let up = PyUpstream::start("tiles", 5.0);
    let (_dir, gw) = start(&up, "{ttl: 600}", &[]);
    let path = "/open/unique/250000/big";
    let expected: Vec<u8> = "big".bytes().cycle().take(250_000).collect();
    assert_eq!(cache_status(&get(gw.port, "GET", path, &[])), "MISS");
    let leavers: Vec<_> = (0..8)
        .map(|_| {
            let port = gw.port;
            std::thread::spawn(move || {
                for _ in 0..10 {
                    let s =
                        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
                            .expect("socket");
                    s.set_recv_buffer_size(4096).expect("rcvbuf");
                    let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
                    s.connect(&addr.into()).expect("connect");
                    let mut s: std::net::TcpStream = s.into();
                    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: h\r\n\r\n").as_bytes())
                        .expect("send");
                    let mut some = [0u8; 64];
                    let _ = s.read(&mut some);
                    // Unread bytes: the close resets the connection mid-tile.
                    drop(s);
                }
            })
        })
        .collect();
    for l in leavers {
        l.join().expect("client");
    }
    for _ in 0..5 {
        let r = get(gw.port, "GET", path, &[]);
        assert_eq!((r.status, cache_status(&r)), (200, "HIT"));
        assert!(r.body == expected, "{} bytes, not the tile", r.body.len());
    }
    assert_eq!(up.served(), 1);
}

/// A tile sent by `sendfile` to a client that has not read it yet stays its own when it is
/// pushed out and its pages cut out of the shared memory — also on a system that gives shared
/// memory huge pages (`shmem_enabled: always`, as some hosts set for databases), where a hole
/// punched in part of a huge page zeroes it in place (without the gateway's advice against
/// them, this client got zeros). Run where the setting can be changed (root, `/sys`
/// writable); it is put back after.
#[test]
fn a_slow_clients_tile_stays_its_own_when_the_system_gives_shared_memory_huge_pages() {
    use std::io::{Read, Write};
    use support::hugepages;
    let Some(_setting) = hugepages::ShmemHugePages::set("always") else {
        eprintln!("not run: the system's shmem_enabled cannot be changed here");
        return;
    };
    if !hugepages::memfd_gets_huge_pages() {
        // A kernel that cannot find free 2 MiB blocks gives none; then there is nothing to show.
        eprintln!("not run: shmem_enabled: always gave this process no huge pages");
        return;
    }
    let up = PyUpstream::start("tiles", 5.0);
    let (_dir, gw) = start(&up, "{ttl: 600}", &["--cache-memory", "2MiB"]);
    let path = "/open/unique/20000/first";
    let expected: Vec<u8> = "first".bytes().cycle().take(20000).collect();
    assert_eq!(cache_status(&get(gw.port, "GET", path, &[])), "MISS");
    // The slow client: its hit is sent and waits, unread, in its socket.
    let mut slow = std::net::TcpStream::connect(("127.0.0.1", gw.port)).expect("connect");
    slow.write_all(format!("GET {path} HTTP/1.1\r\nHost: h\r\n\r\n").as_bytes())
        .expect("send");
    std::thread::sleep(Duration::from_millis(300));
    // Tiles never asked for before push it out of the 2 MiB memory tier; its body is let go
    // a little after (once no thread still reads the tier's maps) and, as it went by
    // `sendfile`, its pages are cut out of the file. Tiles stored after that may take them.
    let cuts = || {
        let state = support::json_body(&get(gw.admin_port, "GET", "/tollgate/cache", &[]));
        state["sharedMemory"]["cuts"].as_u64().unwrap_or(0)
    };
    let mut after_cut = None;
    for i in 0..3000 {
        let other = format!("/open/unique/20000/other{i}");
        assert_eq!(cache_status(&get(gw.port, "GET", &other, &[])), "MISS");
        if after_cut.is_none() && i % 10 == 9 && cuts() > 0 {
            after_cut = Some(i);
        }
        if after_cut.is_some_and(|at| i >= at + 10) {
            break;
        }
    }
    assert!(after_cut.is_some(), "the tile's pages were never cut out");
    let mut answer = Vec::new();
    slow.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 8192];
    let body_at = loop {
        let n = slow.read(&mut buf).expect("read");
        assert!(n > 0, "the connection closed");
        answer.extend_from_slice(&buf[..n]);
        if let Some(at) = answer.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
    };
    while answer.len() < body_at + expected.len() {
        let n = slow.read(&mut buf).expect("read");
        assert!(n > 0, "the connection closed mid-tile");
        answer.extend_from_slice(&buf[..n]);
    }
    let head = String::from_utf8_lossy(&answer[..body_at]).to_lowercase();
    assert!(head.contains("x-cache-status: hit"), "{head}");
    let body = &answer[body_at..];
    assert!(
        body == expected,
        "the slow client got other bytes than its tile: {:?}",
        String::from_utf8_lossy(&body[..40])
    );
    // The gateway's shared memory is in 4 KiB pages, whatever the setting.
    let smaps = std::path::PathBuf::from(format!("/proc/{}/smaps", gw.child.id()));
    assert_eq!(hugepages::huge_kib(&smaps, "memfd:tollgate-tiles"), 0);
}

#[test]
fn a_scan_of_distinct_tiles_stays_within_the_memory_budget() {
    let up = PyUpstream::start("tiles", 5.0);
    let (_dir, gw) = start(&up, "{ttl: 600}", &["--cache-memory", "8MiB"]);
    let rss = || {
        std::fs::read_to_string(format!("/proc/{}/status", gw.child.id()))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("VmRSS:"))
                    .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            })
            .unwrap_or(0)
            * 1024
    };
    // A popular tile, requested often.
    for _ in 0..20 {
        assert_eq!(tile(&gw, "/open/bytes/16000/popular.png", 0).status, 200);
    }
    let before = rss();
    // 3000 distinct 16 KB tiles (48 MB) through an 8 MiB cache.
    let port = gw.port;
    let threads: Vec<_> = (0..4)
        .map(|t| {
            std::thread::spawn(move || {
                for i in 0..750 {
                    let p = format!("/open/bytes/16000/scan-{t}-{i}.png");
                    assert_eq!(get(port, "GET", &p, &[]).status, 200);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("scan thread");
    }
    let after = rss();
    let stored = gw.metric(r#"tollgate_cache_bytes{tier="memory"}"#);
    assert!(stored <= 8.0 * 1024.0 * 1024.0, "stored {stored} bytes");
    let grown = after.saturating_sub(before);
    assert!(
        grown < 24 * 1024 * 1024,
        "RSS grew by {} MB over an 8 MiB budget",
        grown >> 20
    );
    // The popular tile survived the scan.
    assert_eq!(
        cache_status(&tile(&gw, "/open/bytes/16000/popular.png", 0)),
        "HIT"
    );
}
