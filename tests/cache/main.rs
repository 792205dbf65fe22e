//! The shared tile cache with real processes: an upstream in a process of its own that counts
//! what it serves, the real binary, consumers in the embedded store. One upstream request for
//! many consumers; nothing served to a request that authentication or scopes refuse; HTTP
//! caching (Cache-Control, ETag, 304, Age, stale windows); a truncated body never stored; the
//! disk tier across a restart and with a damaged file; purge; a scan within the budget.

#[path = "../support/mod.rs"]
mod support;

mod bodies;
mod stale;
mod storage;

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
    start_config(&config(up, cache_action), args)
}

/// A config of one api endpoint (`endpoint`: its name and definition) whose pipeline runs
/// `steps` (each `name: [steps]`), proxying to `up`.
fn pipeline_config(up: &PyUpstream, endpoint: &str, steps: &[&str]) -> String {
    let name = endpoint.split(':').next().unwrap_or("tiles");
    let policies: Vec<&str> = steps
        .iter()
        .map(|s| s.split(':').next().unwrap_or(""))
        .collect();
    let steps: String = steps.iter().map(|s| format!("      - {s}\n")).collect();
    format!(
        "http: {{port: ${{PORT}}}}\nadmin: {{port: ${{ADMIN_PORT}}, host: 127.0.0.1}}\napiEndpoints:\n  {endpoint}\nserviceEndpoints:\n  up: {{url: '{up}'}}\npolicies: [{policies}]\npipelines:\n  {name}:\n    apiEndpoints: [{name}]\n    policies:\n{steps}",
        up = up.url(""),
        policies = policies.join(", "),
    )
}

/// The gateway with `gateway_yml` and the consumers of [`consumers_file`].
fn start_config(gateway_yml: &str, args: &[&str]) -> (ConfigDir, GatewayProcess) {
    let dir = ConfigDir::new(gateway_yml);
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

/// A tile of 250,000 bytes (just under the largest body the memory tier keeps in shared
/// memory, 256 KiB), fetched once so that it is stored: its path and its body.
fn stored_big_tile(gw: &GatewayProcess) -> (&'static str, Vec<u8>) {
    let path = "/open/unique/250000/big";
    let expected: Vec<u8> = "big".bytes().cycle().take(250_000).collect();
    assert_eq!(cache_status(&get(gw.port, "GET", path, &[])), "MISS");
    (path, expected)
}

/// `POST /tollgate/cache/purge` with `body` on the gateway's Admin API.
fn purge(gw: &GatewayProcess, body: &str) -> Response {
    send_json(gw.admin_port, "POST", "/tollgate/cache/purge", body)
}

fn cache_status(r: &Response) -> &str {
    r.header("x-cache-status").unwrap_or("")
}

/// Waits (up to 5 s) until the gateway has a request in flight at its first upstream: one a
/// test started in a thread of its own has reached the upstream.
fn wait_in_flight(gw: &GatewayProcess) {
    let start = Instant::now();
    loop {
        let state = support::json_body(&get(gw.admin_port, "GET", "/tollgate/upstreams", &[]));
        if state["serviceEndpoints"][0]["urls"][0]["inFlight"].as_u64() >= Some(1) {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "no request reached the upstream: {state}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
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

/// When the fetch the others wait on fails with a 5xx, they take their turns: the next asks
/// the upstream in its place (a fill, as the first was), and what it brings is stored for the
/// rest — as with nginx's `proxy_cache_lock`. Before, they all went upstream at once, as
/// uncached requests, and none stored what they got: an overloaded upstream's 503 brought it
/// every waiter's request together. An upstream that fails every request gets them one at a
/// time.
#[test]
fn the_requests_waiting_on_a_fetch_that_failed_take_their_turns() {
    for fast_path in ["on", "off"] {
        let up = PyUpstream::start("tiles", 5.0);
        let (_dir, gw) = start(&up, "{ttl: 60}", &["--fast-path", fast_path]);
        let port = gw.port;
        let ask = move |path: &'static str, i: usize| {
            std::thread::spawn(move || {
                let r = get(port, "GET", path, &[("Authorization", &key(i))]);
                (r.status, r.header("x-cache-status").map(str::to_string))
            })
        };
        // The tile's first answer a 503 after 600 ms; those that came meanwhile wait on it.
        let path = "/tiles/slow/600/once/1/2/3.png?first_status=503";
        let first = ask(path, 0);
        std::thread::sleep(Duration::from_millis(200));
        let waiters: Vec<_> = (1..6).map(|i| ask(path, i)).collect();
        assert_eq!(first.join().expect("first").0, 503, "fast path {fast_path}");
        let mut got: Vec<_> = waiters
            .into_iter()
            .map(|w| w.join().expect("waiter"))
            .collect();
        got.sort();
        let statuses: Vec<_> = got.iter().map(|(s, c)| (*s, c.as_deref())).collect();
        assert_eq!(
            statuses,
            [
                (200, Some("HIT")),
                (200, Some("HIT")),
                (200, Some("HIT")),
                (200, Some("HIT")),
                (200, Some("MISS"))
            ],
            "fast path {fast_path}"
        );
        assert_eq!(
            up.served(),
            2,
            "fast path {fast_path}: the 503, then one 200"
        );
        assert_eq!(up.max_in_flight(), 1, "fast path {fast_path}");
        // An upstream that fails every request: each waiter's in turn, never two at once.
        let path = "/tiles/slow/200/status/503/always/1/2/3.png";
        let all: Vec<_> = (0..5).map(|i| ask(path, i)).collect();
        for a in all {
            assert_eq!(a.join().expect("client").0, 503, "fast path {fast_path}");
        }
        assert_eq!(up.served(), 2 + 5, "fast path {fast_path}");
        assert_eq!(up.max_in_flight(), 1, "fast path {fast_path}");
    }
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
    assert!(!path.contains("_="), "the fill carried the buster: {path}");
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

/// A parameter left out of the key (one `keyParams` does not list, one `ignoreParams` names)
/// is not sent upstream by a fill either: no consumer's parameter shapes the tile everyone
/// else gets from the cache.
#[test]
fn parameters_left_out_of_the_key_do_not_reach_the_upstream_on_a_fill() {
    let up = PyUpstream::start("tiles", 5.0);
    for (rule, extra) in [
        ("{ttl: 60, keyParams: [LAYER]}", "STYLE=evil"),
        ("{ttl: 60, ignoreParams: [style]}", "Style=evil"),
    ] {
        let (_dir, gw) = start(&up, rule, &[]);
        let a = get(gw.port, "GET", &format!("/open/w?layer=a&{extra}"), &[]);
        assert_eq!((a.status, cache_status(&a)), (200, "MISS"), "{rule}");
        let saw: serde_json::Value = serde_json::from_slice(&a.body).expect("json");
        let path = saw["path"].as_str().unwrap_or("");
        assert!(path.contains("layer=a"), "{rule}: {path}");
        assert!(!path.contains("evil"), "{rule}: the fill sent {path}");
        let b = get(gw.port, "GET", "/open/w?layer=a", &[]);
        assert_eq!((cache_status(&b), &b.body), ("HIT", &a.body), "{rule}");
    }
}

/// The query of the service endpoint's url (a provider's key, a style) reaches the upstream
/// on a fill as the url has it, as without the cache (EG's); only the client's parameters are
/// cut down to the key's. A url's `apiKey` was cut out of every fill: a provider taking its
/// key so refused them all. On both paths, and on a retry on the endpoint's second url.
#[test]
fn the_query_of_a_service_endpoints_url_reaches_the_upstream_on_a_fill() {
    let up = PyUpstream::start("tiles", 5.0);
    let dead = support::free_port();
    for fast_path in ["on", "off"] {
        for urls in [
            format!("['{}']", up.url("/prov?apiKey=PROVKEY&style=x")),
            format!(
                "['http://127.0.0.1:{dead}/prov?apiKey=PROVKEY&style=x', '{}']",
                up.url("/prov?apiKey=PROVKEY&style=x")
            ),
        ] {
            let yml = format!(
                r#"http: {{port: ${{PORT}}}}
admin: {{port: ${{ADMIN_PORT}}, host: 127.0.0.1}}
apiEndpoints:
  prov: {{paths: ['/prov/*']}}
serviceEndpoints:
  up: {{urls: {urls}}}
policies: [cache, proxy]
pipelines:
  prov:
    apiEndpoints: [prov]
    policies:
      - cache: [{{action: {{ttl: 60, keyParams: [LAYERS]}}}}]
      - proxy: [{{action: {{serviceEndpoint: up, stripPath: true, strategy: round-robin}}}}]
"#
            );
            let (_dir, gw) = start_config(&yml, &["--fast-path", fast_path]);
            let a = get(
                gw.port,
                "GET",
                "/prov/t.png?LAYERS=a&apiKey=client&jwt=t&style=evil",
                &[],
            );
            assert_eq!(
                (a.status, cache_status(&a)),
                (200, "MISS"),
                "{fast_path} {urls}"
            );
            let saw: serde_json::Value = serde_json::from_slice(&a.body).expect("json");
            let path = saw["path"].as_str().unwrap_or("");
            assert!(
                path.starts_with("/prov?apiKey=PROVKEY&style=x/"),
                "{fast_path} {urls}: the fill sent {path}"
            );
            assert!(path.contains("LAYERS=a"), "{fast_path} {urls}: {path}");
            for left_out in ["client", "jwt", "evil"] {
                assert!(
                    !path.contains(left_out),
                    "{fast_path} {urls}: the fill sent {path}"
                );
            }
            let b = get(gw.port, "GET", "/prov/t.png?LAYERS=a", &[]);
            assert_eq!(cache_status(&b), "HIT", "{fast_path} {urls}");
            // The client's parameters make the key (not cut off by the url's query before
            // them).
            let c = get(gw.port, "GET", "/prov/t.png?LAYERS=b", &[]);
            assert_eq!(cache_status(&c), "MISS", "{fast_path} {urls}");
            let saw: serde_json::Value = serde_json::from_slice(&c.body).expect("json");
            let path = saw["path"].as_str().unwrap_or("");
            assert!(path.ends_with("LAYERS=b"), "{fast_path} {urls}: {path}");
        }
    }
}

/// The request headers the upstream saw, from its JSON answer (asked with `echo=headers`).
fn upstream_saw_headers(r: &Response) -> serde_json::Map<String, serde_json::Value> {
    let saw: serde_json::Value = serde_json::from_slice(&r.body).expect("json");
    saw["headers"]
        .as_object()
        .cloned()
        .expect("the upstream's headers")
}

#[test]
fn a_fill_sends_no_header_that_carries_credentials() {
    let up = PyUpstream::start("tiles", 5.0);
    // Consumers present their key in a header of the config's choosing.
    let yml = pipeline_config(
        &up,
        "tiles: {paths: ['/tiles/*'], scopes: [tiles]}",
        &[
            "key-auth: [{action: {apiKeyHeader: X-Api-Key}}]",
            "scopes:",
            "cache: [{action: {ttl: 60}}]",
            "proxy: [{action: {serviceEndpoint: up}}]",
        ],
    );
    let (_dir, gw) = start_config(&yml, &[]);
    let path = "/tiles/creds.png?echo=headers";
    let r = get(
        gw.port,
        "GET",
        path,
        &[
            ("X-Api-Key", "apiKey k0:s0"),
            ("Authorization", "Bearer someone-elses"),
            ("Proxy-Authorization", "Basic cHJveHk6cGFzcw=="),
            ("Cookie", "session=ann"),
            ("X-Map-Client", "viewer"),
        ],
    );
    assert_eq!((r.status, cache_status(&r)), (200, "MISS"), "{}", r.text());
    let saw = upstream_saw_headers(&r);
    for name in [
        "x-api-key",
        "authorization",
        "proxy-authorization",
        "cookie",
        "eg-consumer-id",
    ] {
        assert!(!saw.contains_key(name), "the fill sent {name}: {saw:?}");
    }
    assert_eq!(
        saw["x-map-client"], "viewer",
        "other headers go on: {saw:?}"
    );
    let other = get(gw.port, "GET", path, &[("X-Api-Key", "apiKey k1:s1")]);
    assert_eq!((other.status, cache_status(&other)), (200, "HIT"));
    assert_eq!(up.served(), 1);
}

/// An upstream that builds URLs from the forwarding headers it receives (a capabilities
/// document): a consumer who sends its own `X-Forwarded-Host` gets a copy of its own, never
/// stored for everyone; a proxy in front that sends the same values on every request shares
/// one copy; a purge of the URL removes the copies of every combination.
#[test]
fn forwarding_headers_a_client_sends_are_part_of_the_key() {
    let up = PyUpstream::start("tiles", 5.0);
    let (_dir, gw) = start(&up, "{ttl: 600}", &[]);
    let path = "/tiles/capabilities.xml?echo=headers";
    let fetch = |consumer: usize, forwarding: &[(&str, &str)]| {
        let k = key(consumer);
        let mut h = vec![("Authorization", k.as_str())];
        h.extend_from_slice(forwarding);
        let r = get(gw.port, "GET", path, &h);
        assert_eq!(r.status, 200, "{}", r.text());
        let saw = upstream_saw_headers(&r);
        let host = saw
            .get("x-forwarded-host")
            .and_then(|v| v.as_str())
            .unwrap_or("")
            .to_string();
        (cache_status(&r).to_string(), host)
    };
    let evil = [("X-Forwarded-Host", "evil.example")];
    assert_eq!(fetch(0, &evil), ("MISS".into(), "evil.example".into()));
    assert_eq!(fetch(0, &evil), ("HIT".into(), "evil.example".into()));
    // Another consumer without the header: not the document made for evil.example.
    assert_eq!(fetch(1, &[]), ("MISS".into(), String::new()));
    assert_eq!(fetch(2, &[]), ("HIT".into(), String::new()));
    // `Forwarded`'s host counts, its `for` (each client's address) does not.
    let by = |addr: &'static str| {
        [(
            "Forwarded",
            match addr {
                "a" => "for=192.0.2.1;host=evil.example",
                _ => "for=192.0.2.2;host=evil.example",
            },
        )]
    };
    assert_eq!(fetch(3, &by("a")).0, "MISS");
    assert_eq!(fetch(4, &by("b")).0, "HIT");
    assert_eq!(fetch(5, &[]).0, "HIT");
    // A proxy in front sending the same on every request (and each client's address): one copy.
    let proxy = |addr: &'static str| {
        [
            ("X-Forwarded-Host", "tiles.example"),
            ("X-Forwarded-Proto", "https"),
            ("X-Forwarded-For", addr),
        ]
    };
    assert_eq!(
        fetch(6, &proxy("192.0.2.1")),
        ("MISS".into(), "tiles.example".into())
    );
    assert_eq!(
        fetch(7, &proxy("192.0.2.2")),
        ("HIT".into(), "tiles.example".into())
    );
    assert_eq!(up.served(), 4);
    // One purge of the URL: every copy goes.
    let r = purge(&gw, &format!(r#"{{"url": "{path}"}}"#));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(support::json_body(&r)["purged"], 4, "{}", r.text());
    assert_eq!(fetch(8, &proxy("192.0.2.3")).0, "MISS");
    assert_eq!(fetch(9, &[]).0, "MISS");
    assert_eq!(fetch(0, &evil).0, "MISS");
    assert_eq!(up.served(), 7);
    // Values too long to remember for purges: not cached, every time to the upstream.
    let long = "h".repeat(3000);
    for _ in 0..2 {
        let (status, host) = fetch(1, &[("X-Forwarded-Host", long.as_str())]);
        assert_eq!((status.as_str(), host == long), ("BYPASS", true));
    }
    assert_eq!(up.served(), 9);
}

/// The client's whole target as a proxy in front passes it on (`X-Original-URI`,
/// `X-Original-URL`…) holds the consumer's credentials in its query: sent upstream by a fill
/// (and keyed, IIS's) without them, every consumer shares one copy and no upstream's document
/// is made from one consumer's key for everyone.
#[test]
fn a_whole_target_a_proxy_passes_on_is_keyed_and_sent_without_credentials() {
    let up = PyUpstream::start("tiles", 5.0);
    let (_dir, gw) = start(&up, "{ttl: 600}", &[]);
    let path = "/tiles/whole.xml?echo=headers";
    for (name, first) in [("X-Original-URI", 0), ("X-Original-URL", 2)] {
        let mut seen = Vec::new();
        for consumer in [first, first + 1] {
            let k = key(consumer);
            let target = format!("{path}&apiKey=secret-of-{consumer}");
            let r = get(
                gw.port,
                "GET",
                path,
                &[("Authorization", k.as_str()), (name, target.as_str())],
            );
            assert_eq!(r.status, 200, "{}", r.text());
            let saw = upstream_saw_headers(&r);
            let sent = saw[name.to_ascii_lowercase().as_str()]
                .as_str()
                .unwrap_or("")
                .to_string();
            seen.push((cache_status(&r).to_string(), sent));
        }
        assert_eq!(
            seen,
            [
                ("MISS".to_string(), path.to_string()),
                ("HIT".to_string(), path.to_string())
            ],
            "{name}"
        );
    }
    assert_eq!(up.served(), 2);
}

/// With `xfwd` the proxy step appends to the client's forwarding headers (its edits are in the
/// key): a purge of the URL finds the copies the client's own values made too.
#[test]
fn a_purge_finds_the_copies_of_forwarding_headers_an_xfwd_step_appended_to() {
    let up = PyUpstream::start("tiles", 5.0);
    let yml = pipeline_config(
        &up,
        "xf: {paths: ['/xf/*']}",
        &[
            "cache: [{action: {ttl: 600}}]",
            "proxy: [{action: {serviceEndpoint: up, xfwd: true}}]",
        ],
    );
    let (_dir, gw) = start_config(&yml, &[]);
    let path = "/xf/q1";
    let sent: [&[(&str, &str)]; 5] = [
        &[],
        &[("X-Forwarded-Host", "evil.example")],
        &[("X-Forwarded-Proto", "https")],
        &[("X-Forwarded-Port", "8443")],
        &[("Forwarded", "host=f.example")],
    ];
    let fetch = |extra: &[(&str, &str)]| {
        let mut h = vec![("Host", "tiles.example")];
        h.extend_from_slice(extra);
        let r = get(gw.port, "GET", path, &h);
        assert_eq!(r.status, 200, "{}", r.text());
        cache_status(&r).to_string()
    };
    for extra in sent {
        assert_eq!(fetch(extra), "MISS", "{extra:?}");
        assert_eq!(fetch(extra), "HIT", "{extra:?}");
    }
    let r = purge(
        &gw,
        &format!(r#"{{"url": "{path}", "host": "tiles.example"}}"#),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(support::json_body(&r)["purged"], 5, "{}", r.text());
    for extra in sent {
        assert_eq!(fetch(extra), "MISS", "{extra:?} outlived the purge");
    }
}

#[test]
fn a_tile_not_cacheable_once_is_fetched_without_credentials_when_it_becomes_cacheable() {
    let up = PyUpstream::start("tiles", 5.0);
    let (_dir, gw) = start(&up, "{ttl: 60}", &[]);
    // The first answer is private (not stored, and remembered as not cacheable); the next,
    // fetched past the cache, may be stored: it is fetched for everyone.
    let path = "/tiles/flip.png?first=Cache-Control:private&echo=headers";
    let first = tile(&gw, path, 0);
    assert_eq!((first.status, cache_status(&first)), (200, "MISS"));
    assert_eq!(first.header("cache-control"), Some("private"));
    let second = tile(&gw, path, 1);
    assert_eq!(second.status, 200, "{}", second.text());
    let saw = upstream_saw_headers(&second);
    for name in ["authorization", "eg-consumer-id"] {
        assert!(!saw.contains_key(name), "the fill sent {name}: {saw:?}");
    }
    let third = tile(&gw, path, 2);
    assert_eq!((third.status, cache_status(&third)), (200, "HIT"));
    assert_eq!(
        third.body, second.body,
        "the copy stored is the neutral fetch's"
    );
    assert_eq!(up.served(), 2);
}

#[test]
fn a_header_a_step_sends_upstream_is_part_of_the_key_wherever_the_cache_step_stands() {
    let up = PyUpstream::start("tiles", 5.0);
    // A step after `cache` sends each consumer's id upstream: the answer may be the
    // consumer's own, so each consumer has a copy of their own.
    let yml = pipeline_config(
        &up,
        "tiles: {paths: ['/tiles/*'], scopes: [tiles]}",
        &[
            "key-auth:",
            "scopes:",
            "cache: [{action: {ttl: 60}}]",
            "headers: [{action: {headersPrefix: 'x-', forwardHeaders: {tenant: 'consumer.id'}}}]",
            "proxy: [{action: {serviceEndpoint: up}}]",
        ],
    );
    let (_dir, gw) = start_config(&yml, &[]);
    let path = "/tiles/tenant.png?echo=headers";
    let ann = tile(&gw, path, 0);
    assert_eq!((ann.status, cache_status(&ann)), (200, "MISS"));
    let ann_id = consumer_id(&gw, 0);
    assert_eq!(upstream_saw_headers(&ann)["x-tenant"], ann_id.as_str());
    let bob = tile(&gw, path, 1);
    assert_eq!(
        cache_status(&bob),
        "MISS",
        "another consumer's answer was served"
    );
    assert_eq!(
        upstream_saw_headers(&bob)["x-tenant"],
        consumer_id(&gw, 1).as_str()
    );
    let ann_again = tile(&gw, path, 0);
    assert_eq!(
        (cache_status(&ann_again), &ann_again.body),
        ("HIT", &ann.body)
    );
}

/// Two pipelines to one service endpoint whose proxy steps send different headers upstream
/// (a tier): each has its own copy of a tile — the anonymous one never gets the other's. The
/// `X-Forwarded-*` headers (each client's own) stay out of the key.
#[test]
fn the_headers_a_proxy_step_sends_are_part_of_the_key() {
    let up = PyUpstream::start("tiles", 5.0);
    let yml = format!(
        r#"http: {{port: ${{PORT}}}}
admin: {{port: ${{ADMIN_PORT}}, host: 127.0.0.1}}
apiEndpoints:
  premium: {{paths: ['/premium/*'], scopes: [tiles]}}
  free: {{paths: ['/free/*']}}
serviceEndpoints:
  up: {{url: '{up}'}}
policies: [key-auth, scopes, cache, proxy]
pipelines:
  premium:
    apiEndpoints: [premium]
    policies:
      - key-auth: [{{action: {{apiKeyField: apiKey}}}}]
      - scopes:
      - cache: [{{action: {{ttl: 60}}}}]
      - proxy: [{{action: {{serviceEndpoint: up, stripPath: true, headers: {{X-Tier: premium}}, xfwd: true}}}}]
  free:
    apiEndpoints: [free]
    policies:
      - cache: [{{action: {{ttl: 60}}}}]
      - proxy: [{{action: {{serviceEndpoint: up, stripPath: true, headers: {{X-Tier: free}}, xfwd: true}}}}]
"#,
        up = up.url("/tiles")
    );
    let (_dir, gw) = start_config(&yml, &[]);
    let premium = tile(&gw, "/premium/9.png?echo=headers", 0);
    assert_eq!((premium.status, cache_status(&premium)), (200, "MISS"));
    assert_eq!(upstream_saw_headers(&premium)["x-tier"], "premium");
    let free = get(gw.port, "GET", "/free/9.png?echo=headers", &[]);
    assert_eq!(
        (
            cache_status(&free),
            upstream_saw_headers(&free)["x-tier"].as_str()
        ),
        ("MISS", Some("free")),
        "the premium copy was served to the free pipeline"
    );
    // Each pipeline's own copy is a hit, whoever the client (X-Forwarded-For differs).
    let again = get(
        gw.port,
        "GET",
        "/free/9.png?echo=headers",
        &[("X-Forwarded-For", "10.1.2.3")],
    );
    assert_eq!((cache_status(&again), &again.body), ("HIT", &free.body));
    assert_eq!(up.served(), 2);
    // The forwarded host is part of the key: a client's Host (which changeOrigin keeps from
    // the upstream) reaches it as X-Forwarded-Host, which it may build URLs from.
    let elsewhere = get(
        gw.port,
        "GET",
        "/free/9.png?echo=headers",
        &[("Host", "elsewhere.example")],
    );
    assert_eq!(cache_status(&elsewhere), "MISS", "another host's copy");
    assert_eq!(
        upstream_saw_headers(&elsewhere)["x-forwarded-host"],
        "elsewhere.example"
    );
    let back = get(gw.port, "GET", "/free/9.png?echo=headers", &[]);
    assert_eq!((cache_status(&back), &back.body), ("HIT", &free.body));
    // An answer that varies by the client's address (`Vary: X-Forwarded-For`) is one copy per
    // address as the upstream received it (before, the client's own header was compared:
    // absent for every client, so one client's answer went to all).
    let varied = "/free/10.png?echo=headers&header=Vary:X-Forwarded-For";
    let from = |source: &str| {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("socket");
        let source: std::net::SocketAddr = format!("{source}:0").parse().expect("address");
        socket.bind(&source.into()).expect("bind");
        let to: std::net::SocketAddr = format!("127.0.0.1:{}", gw.port).parse().expect("to");
        socket.connect(&to.into()).expect("connect");
        let mut s: std::net::TcpStream = socket.into();
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let raw = format!("GET {varied} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
        std::io::Write::write_all(&mut s, raw.as_bytes()).expect("send");
        support::client::read_response(&mut s, false)
    };
    let first = from("127.0.0.1");
    assert_eq!(cache_status(&first), "MISS");
    assert_eq!(upstream_saw_headers(&first)["x-forwarded-for"], "127.0.0.1");
    // The first answer, which shows the tile varies, is stored as the variant it is.
    let again = from("127.0.0.1");
    assert_eq!(cache_status(&again), "HIT", "{:?}", again.headers);
    let other = from("127.0.0.2");
    assert_ne!(
        cache_status(&other),
        "HIT",
        "127.0.0.1's answer went to 127.0.0.2"
    );
    assert_eq!(upstream_saw_headers(&other)["x-forwarded-for"], "127.0.0.2");
}

/// A tile whose answers vary (its `Vary`, or one the gateway gives it: an origin allowed, a
/// coding) is fetched once for the requests of one variant at once, stored as that variant by
/// its first answer (which was answered and let go, and every tile of such an upstream fetched
/// twice: rendered twice); a request for another variant fetches its own.
#[test]
fn a_varied_tile_is_fetched_once_for_its_first_variant() {
    let up = PyUpstream::start("tiles", 5.0);
    let (_dir, gw) = start(&up, "{ttl: 600}", &[]);
    let port = gw.port;
    let cases = [
        ("reflect", "cors=reflect", ("Origin", "https://a.example")),
        (
            "vary",
            "header=Vary:Accept-Encoding",
            ("Accept-Encoding", "gzip"),
        ),
        ("coded", "negotiate=gzip", ("Accept-Encoding", "gzip")),
    ];
    for (name, query, (header, value)) in cases {
        let path = format!("/open/slow/300/{name}?cc=max-age%3D600&{query}");
        let served = up.served();
        let threads: Vec<_> = (0..10)
            .map(|_| {
                let path = path.clone();
                std::thread::spawn(move || {
                    let r = get(port, "GET", &path, &[(header, value)]);
                    (
                        r.status,
                        cache_status(&r).to_string(),
                        r.header("vary").map(str::to_string),
                    )
                })
            })
            .collect();
        for t in threads {
            let (status, _, vary) = t.join().expect("client thread");
            assert_eq!(status, 200, "{name}");
            assert!(vary.is_some(), "{name}: every answer says it varies");
        }
        assert_eq!(
            up.served() - served,
            1,
            "{name}: one fetch for ten requests of one variant"
        );
        let r = get(port, "GET", &path, &[(header, value)]);
        assert_eq!(cache_status(&r), "HIT", "{name}: {:?}", r.headers);
        // Another variant is its own.
        let other = match header {
            "Origin" => "https://b.example",
            _ => "identity",
        };
        let r = get(port, "GET", &path, &[(header, other)]);
        assert_eq!(cache_status(&r), "MISS", "{name}: {:?}", r.headers);
        assert_eq!(up.served() - served, 2, "{name}");
        if header == "Origin" {
            assert_eq!(r.header("access-control-allow-origin"), Some(other));
        } else {
            assert_eq!(r.header("content-encoding"), None, "{name}");
        }
        let r = get(port, "GET", &path, &[(header, value)]);
        assert_eq!(cache_status(&r), "HIT", "{name}: the first variant kept");
    }
}

/// A reload that points a service endpoint at another upstream starts its tiles afresh: the
/// old upstream's copies are not served for the new one.
#[test]
fn a_service_endpoint_pointed_elsewhere_by_a_reload_is_not_answered_with_the_old_tiles() {
    let a = PyUpstream::start("a", 5.0);
    let b = PyUpstream::start("b", 5.0);
    let (dir, gw) = start(&a, "{ttl: 600}", &[]);
    let path = "/open/unique/100/t";
    let first = get(gw.port, "GET", path, &[]);
    assert_eq!(cache_status(&first), "MISS");
    assert_eq!(cache_status(&get(gw.port, "GET", path, &[])), "HIT");
    dir.write("gateway.config.yml", &config(&b, "{ttl: 600}"));
    let r = send_json(gw.admin_port, "POST", "/tollgate/reload", "");
    assert_eq!(r.status, 200, "{}", r.text());
    let after = get(gw.port, "GET", path, &[]);
    assert_eq!(
        cache_status(&after),
        "MISS",
        "the old upstream's tile was served"
    );
    assert_eq!((a.served(), b.served()), (1, 1));
}

#[test]
fn a_hits_age_counts_from_the_age_the_upstream_gave_and_a_revalidation_starts_it_again() {
    let up = PyUpstream::start("tiles", 5.0);
    let (_dir, gw) = start(
        &up,
        "{ttl: 60, staleWhileRevalidate: 0, staleIfError: 0}",
        &[],
    );
    let open = |headers: &[(&str, &str)]| {
        // Fresh for 100 s, of which a cache before the upstream used 97 (its first answer
        // only: the 304 that revalidates it has no Age).
        let r = get(
            gw.port,
            "GET",
            "/open/aged?cc=max-age%3D100&first=Age:97&header=ETag:%22a1%22",
            headers,
        );
        let age = r.header("age").map(|a| a.parse::<u64>().expect("a number"));
        (r.status, cache_status(&r).to_string(), age)
    };
    let miss = open(&[]);
    assert_eq!(miss, (200, "MISS".into(), Some(97)));
    // On the fast path, and through Pingora's cache phases (a conditional request that does
    // not match): the upstream's 97 s and the seconds it has been stored.
    for (how, headers) in [
        ("fast path", &[][..]),
        ("cache phases", &[("If-None-Match", "\"other\"")][..]),
    ] {
        let (status, cache, age) = open(headers);
        assert_eq!((status, cache.as_str()), (200, "HIT"), "{how}");
        assert!(matches!(age, Some(97..=99)), "{how}: Age {age:?}");
    }
    // Three seconds on it is stale: revalidated, its age is the 304's (none), and it is fresh
    // for the 100 s the upstream gives it now.
    std::thread::sleep(Duration::from_millis(3600));
    let (_, cache, age) = open(&[]);
    assert_eq!(cache, "REVALIDATED");
    assert!(age.unwrap_or(0) <= 1, "revalidated: Age {age:?}");
    std::thread::sleep(Duration::from_millis(1200));
    let (_, cache, age) = open(&[]);
    assert_eq!(cache, "HIT");
    assert!(matches!(age, Some(1..=2)), "a hit after it: Age {age:?}");
    assert_eq!(up.not_modified(), 1);
}

/// An upstream whose 304 names another entity tag than the stored tile's (its tile
/// changed, and it answers the conditional request wrongly): the client gets the stored body
/// with its own ETag, never the old body under the new ETag; the next request fetches the new
/// tile whole.
#[test]
fn a_304_naming_another_validator_never_labels_the_old_body_with_it() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let first = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            let first = first.clone();
            std::thread::spawn(move || serve_versions(conn, &first));
        }
    });
    let yml = format!(
        "http: {{port: ${{PORT}}}}\napiEndpoints:\n  t: {{paths: ['/t/*']}}\nserviceEndpoints:\n  up: {{url: 'http://127.0.0.1:{port}'}}\npolicies: [cache, proxy]\npipelines:\n  t:\n    apiEndpoints: [t]\n    policies:\n      - cache: [{{action: {{staleWhileRevalidate: 0, staleIfError: 0}}}}]\n      - proxy: [{{action: {{serviceEndpoint: up}}}}]\n"
    );
    let (_dir, gw) = start_config(&yml, &[]);
    let open = || {
        let r = get(gw.port, "GET", "/t/1.png", &[]);
        (r.text(), r.header("etag").unwrap_or("").to_string())
    };
    assert_eq!(open(), ("OLD".into(), "\"v1\"".into()));
    std::thread::sleep(Duration::from_millis(1600));
    assert_eq!(
        open(),
        ("OLD".into(), "\"v1\"".into()),
        "the 304's ETag on the old body"
    );
    assert_eq!(open(), ("NEW".into(), "\"v2\"".into()));
}

/// Answers one connection of [`a_304_naming_another_validator_never_labels_the_old_body_with_it`]'s
/// upstream: `OLD` with ETag "v1" first; then a conditional request gets a 304 naming "v2",
/// another the new body.
fn serve_versions(conn: std::net::TcpStream, first: &std::sync::atomic::AtomicBool) {
    use std::io::{BufRead, BufReader, Write};
    let mut reader = BufReader::new(conn.try_clone().expect("clone"));
    let mut out = conn;
    loop {
        let mut conditional = false;
        let mut line = String::new();
        while reader.read_line(&mut line).is_ok_and(|n| n > 0) && line != "\r\n" {
            conditional |= line.to_ascii_lowercase().starts_with("if-none-match");
            line.clear();
        }
        if line != "\r\n" {
            break;
        }
        let answer: &[u8] = match (first.swap(false, std::sync::atomic::Ordering::SeqCst), conditional) {
                    (true, _) => b"HTTP/1.1 200 OK\r\nETag: \"v1\"\r\nCache-Control: max-age=1\r\nContent-Length: 3\r\n\r\nOLD",
                    (false, true) => b"HTTP/1.1 304 Not Modified\r\nETag: \"v2\"\r\nCache-Control: max-age=1\r\n\r\n",
                    (false, false) => b"HTTP/1.1 200 OK\r\nETag: \"v2\"\r\nCache-Control: max-age=1\r\nContent-Length: 3\r\n\r\nNEW",
                };
        if out.write_all(answer).is_err() {
            break;
        }
    }
}

/// RFC 9111 §4.3.4: the fields of the upstream's 304 replace the stored tile's own.
#[test]
fn a_revalidations_304_updates_the_stored_head() {
    let up = PyUpstream::start("tiles", 5.0);
    let (_dir, gw) = start(
        &up,
        "{ttl: 60, staleWhileRevalidate: 0, staleIfError: 0}",
        &[],
    );
    let path =
        "/open/versioned?cc=max-age%3D1&header=ETag:%22e1%22&first=X-Version:1&later=X-Version:2";
    let open = || {
        let r = get(gw.port, "GET", path, &[]);
        let version = r.header("x-version").map(str::to_string);
        (cache_status(&r).to_string(), version)
    };
    assert_eq!(open(), ("MISS".into(), Some("1".into())));
    assert_eq!(open(), ("HIT".into(), Some("1".into())));
    std::thread::sleep(Duration::from_millis(1600));
    assert_eq!(open(), ("REVALIDATED".into(), Some("2".into())));
    assert_eq!(open(), ("HIT".into(), Some("2".into())));
    assert_eq!(up.not_modified(), 1);
}

/// A revalidation's 304 that describes another body than the stored tile's (a
/// `Content-Encoding` it was not stored with) updates nothing: the stored bytes are never
/// served under the 304's description (a PNG labelled gzip for every later hit), and the next
/// request fetches the tile whole.
#[test]
fn a_304_that_describes_another_body_updates_nothing() {
    let up = PyUpstream::start("tiles", 5.0);
    let (_dir, gw) = start(
        &up,
        "{ttl: 60, staleWhileRevalidate: 0, staleIfError: 0}",
        &[],
    );
    let path = "/open/recoded?cc=max-age%3D1&header=ETag:%22r1%22&later=Content-Encoding:gzip";
    let open = || {
        let r = get(gw.port, "GET", path, &[]);
        assert_eq!(r.status, 200, "{}", r.text());
        let coding = r.header("content-encoding").map(str::to_string);
        (cache_status(&r).to_string(), coding)
    };
    assert_eq!(open(), ("MISS".into(), None));
    assert_eq!(open(), ("HIT".into(), None));
    std::thread::sleep(Duration::from_millis(1600));
    let served = up.served();
    let (status, coding) = open();
    assert_eq!(
        coding, None,
        "the stored body under the 304's coding ({status})"
    );
    assert_eq!(up.not_modified(), 1);
    assert_eq!(open().1.as_deref(), Some("gzip"), "fetched whole again");
    assert!(up.served() > served, "the tile was not fetched again");
}

/// An upstream that gzips for the clients that take it without saying its answer varies (no
/// `Vary: Accept-Encoding`): the tile is stored per the codings clients take, with that `Vary`
/// added for the caches after this one — the gzip body never answered to a client that takes
/// no coding (stored as it came, whichever client filled first chose for all).
#[test]
fn a_coded_answer_that_does_not_say_it_varies_is_stored_per_coding() {
    let up = PyUpstream::start("tiles", 5.0);
    let (_dir, gw) = start(&up, "{ttl: 600}", &[]);
    let path = "/open/compressed?cc=max-age%3D600&negotiate=gzip";
    let open = |coding: Option<&str>| {
        let headers: Vec<(&str, &str)> =
            coding.map(|c| ("Accept-Encoding", c)).into_iter().collect();
        let r = get(gw.port, "GET", path, &headers);
        assert_eq!(r.status, 200, "{}", r.text());
        let vary = r.header("vary").map(str::to_string);
        (
            cache_status(&r).to_string(),
            r.header("content-encoding").map(str::to_string),
            vary,
        )
    };
    let gzip = Some("gzip");
    let first = open(gzip);
    assert_eq!(
        (first.1.as_deref(), first.2.as_deref()),
        (Some("gzip"), Some("Accept-Encoding")),
        "the first answer says it varies too: {first:?}"
    );
    let mut last = open(gzip);
    for _ in 0..2 {
        last = open(gzip);
    }
    assert_eq!(
        last,
        (
            "HIT".into(),
            Some("gzip".into()),
            Some("Accept-Encoding".into())
        )
    );
    // (Its identity answer says nothing of a `Vary`, and is stored as it came: any client
    // takes it.)
    for round in 0..3 {
        let plain = open(None);
        assert_eq!(
            plain.1, None,
            "the gzip body to a client that takes none: {plain:?}"
        );
        assert_eq!(plain.0 == "HIT", round > 0, "{plain:?}");
        let coded = open(gzip);
        assert_eq!(coded.0, "HIT", "{coded:?}");
    }
}

/// An upstream that allows the origin of the page that asked (its `Origin` answered as
/// `Access-Control-Allow-Origin`) without saying its answer varies by it: the tile is stored
/// per origin, with `Vary: Origin` added — every other site's page was served the first one's
/// origin, which browsers refuse (a blank map). Revalidated, the variant stays.
#[test]
fn an_answer_allowed_to_one_origin_is_stored_per_origin() {
    let up = PyUpstream::start("tiles", 5.0);
    let (_dir, gw) = start(
        &up,
        "{ttl: 600, staleWhileRevalidate: 0, staleIfError: 0}",
        &[],
    );
    let path = "/open/reflected?cc=max-age%3D1&cors=reflect&header=ETag:%22o1%22";
    let open = |origin: Option<&str>| {
        let headers: Vec<(&str, &str)> = origin.map(|o| ("Origin", o)).into_iter().collect();
        let r = get(gw.port, "GET", path, &headers);
        assert_eq!(r.status, 200, "{}", r.text());
        (
            cache_status(&r).to_string(),
            r.header("access-control-allow-origin").map(str::to_string),
            r.header("vary").map(str::to_string),
        )
    };
    let (a, b) = (Some("https://a.example"), Some("https://b.example"));
    let first = open(a);
    assert_eq!(
        (first.1.as_deref(), first.2.as_deref()),
        (a, Some("Origin")),
        "{first:?}"
    );
    for _ in 0..2 {
        for origin in [a, b, None] {
            let r = open(origin);
            assert_eq!(r.1.as_deref(), origin, "{origin:?}: {r:?}");
        }
    }
    assert_eq!(open(b).0, "HIT");
    // Stale: revalidated with the upstream (its 304 names no `Vary`), the variant kept.
    std::thread::sleep(Duration::from_millis(1600));
    let r = open(b);
    assert_eq!((r.0.as_str(), r.1.as_deref()), ("REVALIDATED", b), "{r:?}");
    assert_eq!(open(b).0, "HIT");
    // An upstream whose answers (its 304s too) say `Vary: Accept-Encoding`: the variant
    // without an origin, which only the `Vary` added says is kept per origin, is revalidated
    // and kept too (its 304's `Vary` compared as the gateway's: it was dropped and fetched
    // whole at each revalidation).
    let path = "/open/reflected-vary?cc=max-age%3D1&cors=reflect&header=ETag:%22o2%22&header=Vary:Accept-Encoding";
    let open = |origin: Option<&str>| {
        let headers: Vec<(&str, &str)> = origin.map(|o| ("Origin", o)).into_iter().collect();
        let r = get(gw.port, "GET", path, &headers);
        assert_eq!(r.status, 200, "{}", r.text());
        cache_status(&r).to_string()
    };
    open(a);
    open(None);
    open(None);
    assert_eq!(open(None), "HIT");
    std::thread::sleep(Duration::from_millis(1600));
    let served = up.served();
    assert_eq!(open(None), "REVALIDATED");
    assert_eq!(open(None), "HIT");
    assert_eq!(up.served(), served, "fetched whole again");
}

/// A tile stored for every page (its first answer, to a request without `Origin`, allowed no
/// origin) revalidated by a page whose origin the upstream's 304 allows: the 304 is about an
/// answer per origin, so the tile is fetched again and stored per origin — merged into the
/// shared tile, that origin went to every other page (whose browsers refuse the tile).
#[test]
fn a_304_allowing_one_origin_does_not_give_a_shared_tile_its_origin() {
    let up = PyUpstream::start("tiles", 5.0);
    let (_dir, gw) = start(
        &up,
        "{ttl: 600, staleWhileRevalidate: 0, staleIfError: 0}",
        &[],
    );
    let path = "/open/shared-origin?cc=max-age%3D1&cors=reflect&header=ETag:%22s9%22";
    let open = |origin: Option<&str>| {
        let headers: Vec<(&str, &str)> = origin.map(|o| ("Origin", o)).into_iter().collect();
        let r = get(gw.port, "GET", path, &headers);
        assert_eq!(r.status, 200, "{}", r.text());
        r.header("access-control-allow-origin").map(str::to_string)
    };
    let (a, b) = ("https://a.example", "https://b.example");
    assert_eq!(open(None), None);
    std::thread::sleep(Duration::from_millis(1600));
    open(Some(b));
    for _ in 0..2 {
        for origin in [a, b] {
            let allowed = open(Some(origin));
            assert!(
                allowed.is_none() || allowed.as_deref() == Some(origin),
                "{origin}'s page was allowed {allowed:?}"
            );
        }
    }
    assert_eq!(open(Some(a)).as_deref(), Some(a));
}

/// A revalidation's 304 with a `Vary` the stored tile did not have (the upstream negotiates
/// the tile now) updates nothing: that answer carries the 304's `Vary`, the tile is fetched
/// again, and from then on it is stored per variant.
#[test]
fn a_304_that_brings_a_vary_updates_nothing() {
    let up = PyUpstream::start("tiles", 5.0);
    let (_dir, gw) = start(
        &up,
        "{ttl: 60, staleWhileRevalidate: 0, staleIfError: 0}",
        &[],
    );
    let path = "/open/negotiated?cc=max-age%3D1&header=ETag:%22n1%22&later=Vary:Accept-Encoding";
    let open = |encoding: &str| {
        let r = get(gw.port, "GET", path, &[("Accept-Encoding", encoding)]);
        (
            cache_status(&r).to_string(),
            r.header("vary").map(str::to_string),
        )
    };
    assert_eq!(open("gzip"), ("MISS".into(), None));
    assert_eq!(open("br"), ("HIT".into(), None));
    std::thread::sleep(Duration::from_millis(1600));
    let served = up.served();
    assert_eq!(
        open("gzip"),
        ("REVALIDATED".into(), Some("Accept-Encoding".into())),
        "the 304's Vary reaches the client"
    );
    assert_eq!(up.not_modified(), 1);
    // The stored copy was let go: the next request fetches the tile whole, which shows that
    // it varies (not stored), and the one after stores its variant.
    assert_eq!(open("br").1.as_deref(), Some("Accept-Encoding"));
    assert!(up.served() > served, "the tile was not fetched again");
    let mut last = (String::new(), None);
    for _ in 0..3 {
        last = open("br");
    }
    assert_eq!(last, ("HIT".into(), Some("Accept-Encoding".into())));
    assert_ne!(
        open("identity").0,
        "HIT",
        "another variant was answered from br's copy"
    );
}

/// A revalidation's 304 updates the tile it revalidated, not another stored since: a HEAD's
/// slow revalidation (a HEAD takes no lock) overtaken by a GET that brought the tile's new
/// version leaves the new version whole, its head with its body.
#[test]
fn a_late_304_does_not_put_the_old_head_on_a_newer_tile() {
    let up = PyUpstream::start("tiles", 5.0);
    let (_dir, gw) = start(
        &up,
        "{ttl: 60, staleWhileRevalidate: 0, staleIfError: 0}",
        &[],
    );
    let path = "/open/overtaken?cc=max-age%3D3&header=ETag:%22v1%22";
    let served = |r: &Response| support::json_body(r)["served"].as_u64();
    let first = get(gw.port, "GET", path, &[]);
    assert_eq!(cache_status(&first), "MISS");
    std::thread::sleep(Duration::from_millis(3500));
    // Stale now: the HEAD's revalidation is answered 304 (the tile unchanged for it), late.
    let port = gw.port;
    let head = std::thread::spawn(move || get(port, "HEAD", path, &[("X-Test-Delay", "1500")]));
    wait_in_flight(&gw);
    // Meanwhile the tile changed: a GET's revalidation brings the new one, stored.
    let new = get(gw.port, "GET", path, &[("X-Test-ETag", "\"v2\"")]);
    assert_eq!(
        (cache_status(&new), new.header("etag")),
        ("EXPIRED", Some("\"v2\""))
    );
    let head = head.join().expect("the HEAD");
    assert_eq!(head.status, 200);
    let hit = get(gw.port, "GET", path, &[]);
    assert_eq!(
        (cache_status(&hit), hit.header("etag"), served(&hit)),
        ("HIT", Some("\"v2\""), served(&new)),
        "the stored tile is the new one, whole"
    );
    assert_eq!(
        up.not_modified(),
        1,
        "the HEAD's revalidation was answered 304"
    );
}

#[test]
fn a_variant_stays_stored_when_another_variant_of_its_tile_is_revalidated() {
    // With a validator: the stale variant is revalidated (a 304).
    let up = variant_refreshed("/open/styled?header=ETag:%22s1%22", "REVALIDATED");
    assert_eq!((up.served(), up.not_modified()), (2, 1));
}

#[test]
fn a_variant_stays_stored_when_another_variant_of_its_tile_is_fetched_again() {
    // No validator: the stale variant is fetched again whole.
    let up = variant_refreshed("/open/restyled?", "EXPIRED");
    assert_eq!((up.served(), up.not_modified()), (3, 0));
}

/// Requests that came while the first fetch of a tile was under way, once that fetch's
/// answer showed the tile varies: one for the same variant is answered from what that fetch
/// stores, one for another variant fetches its variant itself and stores it.
#[test]
fn requests_that_came_during_a_fetch_whose_answer_varies_get_their_variants() {
    let up = PyUpstream::start("tiles", 5.0);
    let (_dir, gw) = start(&up, "{ttl: 60}", &[]);
    // The head at once, half the body, the rest 1.5 s later.
    let url = "/open/stall/1500/bytes/4000?cc=max-age%3D60&header=Vary:X-Style";
    let port = gw.port;
    let style =
        |s: &'static str| std::thread::spawn(move || get(port, "GET", url, &[("X-Style", s)]));
    let first = style("a");
    std::thread::sleep(Duration::from_millis(400));
    let (same, other) = (style("a"), style("b"));
    let [first, same, other] = [first, same, other].map(|t| t.join().expect("a request"));
    assert_eq!((first.status, same.status, other.status), (200, 200, 200));
    assert_eq!(
        [&first, &same, &other].map(cache_status),
        ["MISS", "HIT", "MISS"]
    );
    assert_eq!(same.body, first.body);
    for s in ["a", "b"] {
        let again = get(gw.port, "GET", url, &[("X-Style", s)]);
        assert_eq!((again.status, cache_status(&again)), (200, "HIT"), "{s}");
    }
    assert_eq!(up.served(), 2);
}

/// Stores variants `a` and `b` of a `Vary: X-Style` tile (at `path`, fresh for 3 s), `b`
/// 1.5 s after `a`; once `a` is stale and `b` is not, `a` is refreshed (`how`) and `b` stays
/// stored. The upstream, for its counts.
fn variant_refreshed(path: &str, how: &str) -> PyUpstream {
    let up = PyUpstream::start("tiles", 5.0);
    let (_dir, gw) = start(
        &up,
        "{ttl: 60, staleWhileRevalidate: 0, staleIfError: 0}",
        &[],
    );
    let url = format!("{path}&cc=max-age%3D3&header=Vary:X-Style");
    let open = |style: &str| {
        let r = get(gw.port, "GET", &url, &[("X-Style", style)]);
        assert_eq!(r.status, 200, "{url} {style}: {}", r.text());
        cache_status(&r).to_string()
    };
    // The first answer shows the tile varies: stored as its variant.
    assert_eq!([open("a"), open("a")], ["MISS", "HIT"]);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!([open("b"), open("b")], ["MISS", "HIT"]);
    // `a` is stale now (3 s), `b` is not (till 4.5 s).
    std::thread::sleep(Duration::from_millis(1700));
    assert_eq!(open("a"), how);
    assert_eq!([open("b"), open("a")], ["HIT", "HIT"]);
    up
}

/// A stale tile fetched again whose new answer is not stored is EXPIRED (it was in the cache,
/// expired), not MISS, as nginx's `$upstream_cache_status` says.
#[test]
fn an_expired_tile_whose_new_answer_is_not_stored_is_labelled_expired() {
    let up = PyUpstream::start("tiles", 5.0);
    let (_dir, gw) = start(
        &up,
        "{ttl: 600, staleWhileRevalidate: 0, staleIfError: 0}",
        &[],
    );
    // The upstream answers with the status `X-Test-Status` asks for.
    let status = |asked: &str| {
        let r = get(
            gw.port,
            "GET",
            "/open/expiring?cc=max-age%3D1",
            &[("X-Test-Status", asked)],
        );
        (r.status, cache_status(&r).to_string())
    };
    assert_eq!(status("200"), (200, "MISS".into()));
    assert_eq!(status("200"), (200, "HIT".into()));
    std::thread::sleep(Duration::from_millis(2100));
    // The expired tile stays stored until an answer replaces it.
    assert_eq!(status("403"), (403, "EXPIRED".into()));
    assert_eq!(status("403"), (403, "EXPIRED".into()));
    assert_eq!(status("200"), (200, "EXPIRED".into()));
    assert_eq!(status("200"), (200, "HIT".into()));
}

/// RFC 9111 §4.4: a non-error answer to an unsafe request for a URL invalidates what is
/// stored for it; an error answer, or one for another URL, leaves it.
#[test]
fn an_unsafe_request_that_succeeds_invalidates_the_stored_tile() {
    let up = PyUpstream::start("tiles", 5.0);
    // `status` (the upstream's answer's status) is not part of the key.
    let (_dir, gw) = start(&up, "{ttl: 600, ignoreParams: [status]}", &[]);
    let status = |method: &str, path: &str| {
        let raw = format!(
            "{method} {path} HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        let r = support::request(gw.port, &raw, method == "HEAD");
        (r.status, cache_status(&r).to_string())
    };
    for path in ["/open/edited", "/open/kept"] {
        status("GET", path);
    }
    assert_eq!(status("GET", "/open/edited").1, "HIT");
    assert_eq!(status("POST", "/open/other").0, 200);
    assert_eq!(status("GET", "/open/edited").1, "HIT", "another URL's POST");
    assert_eq!(status("POST", "/open/edited?status=503").0, 503);
    assert_eq!(status("GET", "/open/edited").1, "HIT", "a POST that failed");
    assert_eq!(status("POST", "/open/edited"), (200, "BYPASS".into()));
    assert_eq!(status("GET", "/open/edited").1, "MISS", "its own POST");
    assert_eq!(status("GET", "/open/edited").1, "HIT");
    assert_eq!(status("GET", "/open/kept").1, "HIT");
    // Every copy of the URL goes, whatever forwarding headers it was stored for: one the
    // unsafe request sent none of (in the background, a moment later), and the one without
    // any by a request that sent some (at once).
    let forwarded = |method: &str, host: &str| {
        let raw = format!(
            "{method} /open/edited HTTP/1.1\r\nHost: h\r\nX-Forwarded-Host: {host}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        let r = support::request(gw.port, &raw, false);
        (r.status, cache_status(&r).to_string())
    };
    let soon_missed = |what: &str| {
        let deadline = Instant::now() + Duration::from_secs(3);
        while forwarded("GET", "a.example").1 != "MISS" {
            assert!(Instant::now() < deadline, "{what}: still stored");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    assert_eq!(forwarded("GET", "a.example").1, "MISS");
    assert_eq!(forwarded("GET", "a.example").1, "HIT");
    let put = || status("PUT", "/open/edited").0;
    let delete = || forwarded("DELETE", "b.example").0;
    let unsafe_requests: [(&dyn Fn() -> u16, &str); 2] = [
        (&put, "a PUT without the header"),
        (&delete, "a DELETE with another header"),
    ];
    for (send, what) in unsafe_requests {
        assert_eq!(send(), 200, "{what}");
        assert_eq!(
            status("GET", "/open/edited").1,
            "MISS",
            "{what}: the copy without one"
        );
        soon_missed(what);
        assert_eq!(forwarded("GET", "a.example").1, "HIT");
        assert_eq!(status("GET", "/open/edited").1, "HIT");
    }
    assert_eq!(status("GET", "/open/kept").1, "HIT", "another URL");
}

#[test]
fn http_caching_rules() {
    for fast_path in ["on", "off"] {
        http_caching_rules_on(fast_path);
    }
}

fn http_caching_rules_on(fast_path: &str) {
    let up = PyUpstream::start("tiles", 5.0);
    let (_dir, gw) = start(
        &up,
        "{ttl: 60, staleWhileRevalidate: 0, staleIfError: 0}",
        &["--fast-path", fast_path],
    );
    let open = |path: &str, headers: &[(&str, &str)]| get(gw.port, "GET", path, headers);
    // Never stored: no-store, private, Set-Cookie, a status the step does not keep.
    for path in [
        "/open/a?cc=no-store",
        "/open/b?cc=private",
        "/open/b2?cc=max-age%3D600,%20private%3D%22X-Session%22&header=X-Session:abc",
        "/open/c?header=Set-Cookie:s%3D1",
        "/open/status/500/d",
    ] {
        let before = up.served();
        open(path, &[]);
        let again = open(path, &[]);
        // Fetched and not stored, the second time too (not `BYPASS`, which is for methods
        // the cache does not serve).
        assert_eq!(
            cache_status(&again),
            "MISS",
            "{path}, fast path {fast_path}"
        );
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
    // `*` matches any stored tile, one without an `ETag` too (RFC 9110 §13.1.2).
    open("/open/any", &[]);
    let any = open("/open/any", &[("If-None-Match", "*")]);
    assert_eq!((any.status, cache_status(&any)), (304, "HIT"));
    assert_eq!(up.served(), before + 1);
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

/// A HEAD that misses takes no lock: Pingora answers it at the upstream's head and dropped its
/// fill, whose lock stayed held — the tile's GETs then waited the step's `lockTimeout` each
/// (and a debug build panicked on the dangling lock). The GET after it fetches at once and
/// stores the tile; a HEAD then is a hit. A HEAD's miss stores nothing, whatever the timing
/// (it went upstream as a GET, and its tile was stored when the body came before its answer
/// ended: most often, for a small tile), and asks the upstream for a head only.
#[test]
fn a_head_miss_leaves_no_lock_behind() {
    let up = PyUpstream::start("tiles", 5.0);
    let (_dir, gw) = start(&up, "{ttl: 60, lockTimeout: 5}", &[]);
    // The upstream sends the head and half of the body, then the rest 1.5 s later.
    let path = "/open/stall/1500/head-first.png";
    let head = support::request(
        gw.port,
        &format!("HEAD {path} HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"),
        true,
    );
    assert_eq!(head.status, 200);
    let t = Instant::now();
    let r = get(gw.port, "GET", path, &[]);
    let took = t.elapsed();
    assert_eq!(r.status, 200);
    assert!(
        took < Duration::from_millis(3500),
        "the GET after a HEAD miss waited {took:?}\n{}",
        gw.log_text()
    );
    assert_eq!(cache_status(&get(gw.port, "GET", path, &[])), "HIT");
    let head = support::request(
        gw.port,
        &format!("HEAD {path} HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"),
        true,
    );
    assert_eq!((head.status, cache_status(&head)), (200, "HIT"));
    for i in 0..5 {
        let path = format!("/open/small/head-{i}.png");
        let served = up.served();
        let head = support::request(
            gw.port,
            &format!("HEAD {path} HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"),
            true,
        );
        assert_eq!((head.status, cache_status(&head)), (200, "MISS"));
        std::thread::sleep(Duration::from_millis(200));
        let r = get(gw.port, "GET", &path, &[]);
        assert_eq!((r.status, cache_status(&r)), (200, "MISS"), "{path}");
        assert_eq!(up.served(), served + 2, "{path}");
        // What the upstream saw (its answer's body says): the GET's own request.
        assert!(r.text().contains(r#""method": "GET""#), "{}", r.text());
    }
    assert!(gw.error_lines().is_empty(), "{:?}", gw.error_lines());
}

/// On a pipeline that compresses, a tile revalidated with the upstream and served from the
/// cache arrives whole, compressed: its body ends apart from its last piece, and the encoder
/// is finished then (it was never finished: a 10-byte gzip header was the body).
#[test]
fn a_compressed_answer_revalidated_from_the_cache_arrives_whole() {
    use std::io::Read;
    let up = PyUpstream::start("tiles", 5.0);
    let cfg = pipeline_config(
        &up,
        "open: {paths: ['/open/*']}",
        &[
            "compression:",
            "cache: [{action: {staleWhileRevalidate: 0, staleIfError: 0}}]",
            "proxy: [{action: {serviceEndpoint: up}}]",
        ],
    );
    let (_dir, gw) = start_config(&cfg, &[]);
    let path = "/open/unique/30000/capabilities?cc=max-age=1&header=ETag:%22v1%22&header=Content-Type:text/xml";
    let identity = get(gw.port, "GET", path, &[]);
    assert_eq!((identity.status, identity.body.len()), (200, 30000));
    std::thread::sleep(Duration::from_millis(1500));
    for coding in ["br", "gzip"] {
        let r = get(gw.port, "GET", path, &[("Accept-Encoding", coding)]);
        assert_eq!(
            (r.status, r.header("content-encoding")),
            (200, Some(coding)),
            "{:?}",
            r.headers
        );
        let mut decoded = Vec::new();
        match coding {
            "gzip" => flate2::read::GzDecoder::new(&r.body[..])
                .read_to_end(&mut decoded)
                .map(|_| ()),
            _ => brotli::Decompressor::new(&r.body[..], 4096)
                .read_to_end(&mut decoded)
                .map(|_| ()),
        }
        .unwrap_or_else(|e| {
            panic!(
                "{coding} body of {} bytes ({}): {e}",
                r.body.len(),
                cache_status(&r)
            )
        });
        assert_eq!(decoded, identity.body, "{coding}: {}", cache_status(&r));
    }
}

/// On a pipeline that compresses, a range request whose answer may be compressed gets the
/// whole answer (a range of the identity body sent gzip-coded was a broken 206), on a miss and
/// on a hit; without `Accept-Encoding` the range is served.
#[test]
fn a_range_of_an_answer_that_may_be_compressed_gets_the_whole_answer() {
    let up = PyUpstream::start("tiles", 5.0);
    let cfg = pipeline_config(
        &up,
        "open: {paths: ['/open/*']}",
        &[
            "compression:",
            "cache: [{action: {ttl: 60}}]",
            "proxy: [{action: {serviceEndpoint: up}}]",
        ],
    );
    let (_dir, gw) = start_config(&cfg, &[]);
    let path = "/open/unique/6490/capabilities?header=Content-Type:text/xml";
    for round in ["MISS", "HIT"] {
        let r = get(
            gw.port,
            "GET",
            path,
            &[("Accept-Encoding", "gzip"), ("Range", "bytes=0-99")],
        );
        assert_eq!(
            (r.status, cache_status(&r), r.header("content-encoding")),
            (200, round, Some("gzip")),
            "{:?}",
            r.headers
        );
        assert!(r.header("content-range").is_none(), "{:?}", r.headers);
    }
    let r = get(gw.port, "GET", path, &[("Range", "bytes=0-99")]);
    assert_eq!((r.status, r.body.len()), (206, 100), "{:?}", r.headers);
}

/// A header the client's `Connection` names goes no further than the gateway (RFC 9110
/// §7.6.1), and the key (its host, its forwarding headers, a variant) is made without it, as
/// the upstream request is: `Connection: X-Forwarded-Host` had a tile fetched without the
/// header stored as the answer with it, for every client that sends it. `Connection: Host`
/// leaves the request without a Host: 400. A GET with a body is not cached (`BYPASS`): the
/// body goes upstream, and no key holds it. On both paths.
#[test]
fn what_the_upstream_would_not_get_makes_no_key() {
    let up = PyUpstream::start("tiles", 5.0);
    for fast in ["on", "off"] {
        let (_dir, gw) = start(&up, "{ttl: 60}", &["--fast-path", fast]);
        let served = up.served();
        // Headers Pingora's proxy refuses to see named (a 400 there): refused alike.
        for (named, value) in [
            ("Host", "tiles.example.com"),
            ("X-Forwarded-Host", "tiles.example.com"),
            ("X-Forwarded-Proto", "https"),
        ] {
            // (One Host line: two are refused by another rule.)
            let host = if named == "Host" { "" } else { "Host: h\r\n" };
            let r = support::request(
                gw.port,
                &format!(
                    "GET /open/named.xml HTTP/1.1\r\n{host}{named}: {value}\r\nConnection: keep-alive, {named}\r\n\r\n"
                ),
                false,
            );
            assert_eq!(r.status, 400, "{fast}: Connection: {named}");
        }
        assert_eq!(up.served(), served, "{fast}: fetched for a refused request");
        // Another forwarding header of the key, named: left out of the key as it is left out
        // of the upstream request.
        let path = format!("/open/{fast}/forwarded.xml?echo=headers");
        let ask = |extra: &str| {
            support::request(
                gw.port,
                &format!("GET {path} HTTP/1.1\r\nHost: h\r\n{extra}\r\n"),
                false,
            )
        };
        let named =
            ask("Forwarded: host=tiles.example.com\r\nConnection: keep-alive, Forwarded\r\n");
        assert_eq!(
            (named.status, cache_status(&named)),
            (200, "MISS"),
            "{fast}"
        );
        assert!(
            !named
                .text()
                .to_ascii_lowercase()
                .contains("tiles.example.com"),
            "{fast}: the named header reached the upstream: {}",
            named.text()
        );
        // Stored as the answer without the header (it is) ...
        assert_eq!(cache_status(&ask("")), "HIT", "{fast}");
        // ... not as the one with it.
        let forwarded = ask("Forwarded: host=tiles.example.com\r\n");
        assert_eq!(
            cache_status(&forwarded),
            "MISS",
            "{fast}: the answer fetched without Forwarded was served for it"
        );
        // The connection's own headers may be named, as clients name them.
        let r = support::request(
            gw.port,
            "GET /open/te.xml HTTP/1.1\r\nHost: h\r\nTE: trailers\r\nConnection: keep-alive, TE\r\n\r\n",
            false,
        );
        assert_eq!(r.status, 200, "{fast}: Connection: TE");
        let path = format!("/open/{fast}/with-body.png?echo=headers");
        let r = support::request(
            gw.port,
            &format!("GET {path} HTTP/1.1\r\nHost: h\r\nContent-Length: 9\r\n\r\nPOISONED!"),
            false,
        );
        assert_eq!((r.status, cache_status(&r)), (200, "BYPASS"), "{fast}");
        let next = get(gw.port, "GET", &path, &[]);
        assert_eq!(
            cache_status(&next),
            "MISS",
            "{fast}: the answer to a GET with a body was stored"
        );
    }
}

/// A request with a body leaves its upstream connection unpooled: an upstream that answers
/// without reading the body (as servers that ignore a GET's body do) reads it as its next
/// request, and the next request sent on that connection — a fill, for every consumer — got
/// the answer to the one the body held (a consumer's GET whose body was a request for
/// another tile had that tile stored as the next one filled).
#[test]
fn a_body_the_upstream_leaves_unread_answers_no_later_request() {
    let up = PyUpstream::start("tiles", 5.0);
    // (Fills on Pingora's path, where the request with the body went: the fast path's
    // connections are its own.)
    let (_dir, gw) = start(&up, "{}", &["--fast-path", "off"]);
    for (round, method) in ["GET", "POST", "GET"].iter().enumerate() {
        let smuggled =
            format!("GET /open/unread/smuggled-{round}.png HTTP/1.1\r\nHost: h\r\nX-Ignore: ");
        let r = support::request(
            gw.port,
            &format!(
                "{method} /open/unread/carrier-{round}.png HTTP/1.1\r\nHost: h\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{smuggled}",
                smuggled.len()
            ),
            false,
        );
        assert_eq!(r.status, 200, "{method}: {}", r.text());
        let victim = format!("/open/unread/victim-{round}.png");
        for _ in 0..2 {
            let r = get(gw.port, "GET", &victim, &[]);
            assert_eq!(r.status, 200, "{}", r.text());
            assert!(
                r.text().contains(&format!("victim-{round}")) && !r.text().contains("smuggled"),
                "{method}: {victim} was answered with {}",
                r.text()
            );
        }
    }
}

/// An interim answer (`103 Early Hints`) relayed through Pingora's cache phases says nothing
/// of the cache: the final answer has the `X-Cache-Status`.
#[test]
fn an_interim_answer_has_no_cache_status() {
    use std::io::{Read, Write};
    let hints = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = hints.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for conn in hints.incoming() {
            let Ok(mut conn) = conn else { continue };
            let mut buf = [0; 4096];
            let _ = conn.read(&mut buf);
            let _ = conn.write_all(
                b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\nHTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nContent-Length: 2\r\n\r\nok",
            );
        }
    });
    let yml = format!(
        "http: {{port: ${{PORT}}}}\nadmin: {{port: ${{ADMIN_PORT}}, host: 127.0.0.1}}\napiEndpoints:\n  open: {{paths: '/open/*'}}\nserviceEndpoints:\n  up: {{url: 'http://127.0.0.1:{port}'}}\npolicies: [cache, proxy]\npipelines:\n  open:\n    apiEndpoints: [open]\n    policies:\n      - cache:\n      - proxy: [{{action: {{serviceEndpoint: up}}}}]\n"
    );
    let (_dir, gw) = start_config(&yml, &["--fast-path", "off"]);
    let mut s = support::client::connect(gw.port, 10);
    s.write_all(b"GET /open/hinted HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
        .expect("send");
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw).to_ascii_lowercase();
    let (interim, last) = text.split_once("\r\n\r\n").expect("two heads");
    assert!(interim.starts_with("http/1.1 103"), "{text}");
    assert!(!interim.contains("x-cache-status"), "{text}");
    assert!(last.contains("x-cache-status: miss"), "{text}");
}
