//! Conditions and the request/response policies (cors, terminate, headers, transformers,
//! rate-limit, log) as a client and the upstream see them.

mod support;

use support::{get, ConfigDir, EchoUpstream, GatewayProcess};

fn start(
    endpoints: &str,
    policies: &str,
    pipelines: &str,
    upstream: &EchoUpstream,
) -> (ConfigDir, GatewayProcess) {
    let yml = format!(
        "http:\n  port: ${{PORT}}\nadmin:\n  port: ${{ADMIN_PORT}}\n  host: 127.0.0.1\napiEndpoints:\n{endpoints}serviceEndpoints:\n  up: {{url: '{}'}}\npolicies: [{policies}]\npipelines:\n{pipelines}",
        upstream.url("")
    );
    let dir = ConfigDir::new(&yml);
    let gw = GatewayProcess::start(&dir);
    (dir, gw)
}

fn term(status: u16, msg: &str, condition: &str) -> String {
    format!("      - terminate:\n          - condition: {condition}\n            action: {{statusCode: {status}, message: {msg}}}\n")
}

#[test]
fn every_condition() {
    let up = EchoUpstream::start("up");
    let mut p = String::from("  c:\n    apiEndpoints: [c]\n    policies:\n");
    p += &term(201, "exact", "{name: pathExact, path: '/c/exact?q=1'}");
    p += &term(202, "match", "{name: pathMatch, pattern: 'q=2'}");
    p += &term(203, "method", "{name: method, methods: [DELETE]}");
    p += &term(206, "method-string", "{name: method, methods: PATCH}");
    p += &term(207, "host", "{name: hostMatch, pattern: 'h.test:*'}");
    p += &term(208, "allof", "{name: allOf, conditions: [{name: method, methods: [PUT]}, {name: pathMatch, pattern: 'all'}]}");
    p += &term(209, "oneof", "{name: oneOf, conditions: [{name: pathMatch, pattern: one1}, {name: pathMatch, pattern: one2}]}");
    p += &term(210, "never", "{name: never}");
    p += &term(
        211,
        "anonymous",
        "{name: allOf, conditions: [{name: pathMatch, pattern: anon}, {name: anonymous}]}",
    );
    p += &term(
        212,
        "authenticated",
        "{name: allOf, conditions: [{name: pathMatch, pattern: auth}, {name: authenticated}]}",
    );
    p += &term(213, "not", "{name: allOf, conditions: [{name: pathMatch, pattern: 'not$'}, {name: not, condition: {name: pathMatch, pattern: zzz}}]}");
    p += "      - proxy:\n          - condition: {name: always}\n            action: {serviceEndpoint: up}\n";
    let (_d, gw) = start("  c: {paths: '/c/*'}\n", "terminate, proxy", &p, &up);
    let status = |method: &str, path: &str, host: &str| {
        let len = [("Host", host), ("Content-Length", "0")];
        get(gw.port, method, path, &len).status
    };
    assert_eq!(status("GET", "/c/exact?q=1", "h"), 201);
    assert_eq!(
        status("GET", "/c/exact", "h"),
        200,
        "pathExact compares the URL with its query"
    );
    assert_eq!(status("GET", "/c/x?q=2", "h"), 202);
    assert_eq!(status("DELETE", "/c/x", "h"), 203);
    assert_eq!(status("PATCH", "/c/x", "h"), 206);
    assert_eq!(status("GET", "/c/x", "h.test:80"), 207);
    assert_eq!(
        status("GET", "/c/x", "h.test"),
        200,
        "hostMatch sees the port"
    );
    assert_eq!(status("PUT", "/c/all", "h"), 208);
    assert_eq!(status("GET", "/c/all", "h"), 200);
    assert_eq!(status("GET", "/c/one2", "h"), 209);
    assert_eq!(status("GET", "/c/anon", "h"), 211);
    assert_eq!(
        status("GET", "/c/auth", "h"),
        200,
        "no auth policy ran, so not authenticated"
    );
    assert_eq!(status("GET", "/c/not", "h"), 213);
    assert_eq!(status("GET", "/c/zzz-not", "h"), 200);
}

#[test]
fn cors_default_simple_and_preflight() {
    let up = EchoUpstream::start("up");
    let p = "  c:\n    apiEndpoints: [c]\n    policies:\n      - cors:\n      - proxy: [{action: {serviceEndpoint: up}}]\n";
    let (_d, gw) = start("  c: {paths: '/c/*'}\n", "cors, proxy", p, &up);
    let r = get(gw.port, "GET", "/c/x", &[("Origin", "http://x")]);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("access-control-allow-origin"), Some("*"));
    assert_eq!(r.header("vary"), None, "no Vary for origin *");
    let hits = up.hits.load(std::sync::atomic::Ordering::SeqCst);
    let r = get(
        gw.port,
        "OPTIONS",
        "/c/x",
        &[
            ("Origin", "http://x"),
            ("Access-Control-Request-Method", "PUT"),
            ("Access-Control-Request-Headers", "X-Foo, content-type"),
        ],
    );
    assert_eq!(r.status, 204);
    assert!(r.body.is_empty());
    assert_eq!(r.header("content-length"), Some("0"));
    assert_eq!(r.header("access-control-allow-origin"), Some("*"));
    assert_eq!(
        r.header("access-control-allow-methods"),
        Some("GET,HEAD,PUT,PATCH,POST,DELETE")
    );
    assert_eq!(
        r.header("access-control-allow-headers"),
        Some("X-Foo, content-type")
    );
    assert_eq!(r.header("vary"), Some("Access-Control-Request-Headers"));
    assert_eq!(
        up.hits.load(std::sync::atomic::Ordering::SeqCst),
        hits,
        "a preflight is not proxied"
    );
}

#[test]
fn cors_options() {
    let up = EchoUpstream::start("up");
    let p = "  refl:\n    apiEndpoints: [refl]\n    policies:\n      - cors: [{action: {origin: true, credentials: true, maxAge: 600, exposedHeaders: [a, b]}}]\n      - proxy: [{action: {serviceEndpoint: up}}]\n  list:\n    apiEndpoints: [list]\n    policies:\n      - cors: [{action: {origin: ['http://x', 'http://y', '/[.]example$/'], allowedHeaders: [X-Q, X-R], methods: 'GET,POST'}}]\n      - proxy: [{action: {serviceEndpoint: up}}]\n";
    let (_d, gw) = start(
        "  refl: {paths: '/refl/*'}\n  list: {paths: '/list/*'}\n",
        "cors, proxy",
        p,
        &up,
    );
    let r = get(gw.port, "GET", "/refl/x", &[("Origin", "http://x")]);
    assert_eq!(r.header("access-control-allow-origin"), Some("http://x"));
    assert_eq!(r.header("vary"), Some("Origin"));
    assert_eq!(r.header("access-control-allow-credentials"), Some("true"));
    assert_eq!(r.header("access-control-expose-headers"), Some("a,b"));
    let r = get(gw.port, "GET", "/refl/x", &[]);
    assert_eq!(r.header("access-control-allow-origin"), None);
    assert_eq!(r.header("vary"), Some("Origin"));
    let r = get(
        gw.port,
        "OPTIONS",
        "/refl/x",
        &[
            ("Origin", "http://x"),
            ("Access-Control-Request-Headers", "X-Foo"),
        ],
    );
    assert_eq!(r.status, 204);
    assert_eq!(
        r.header("vary"),
        Some("Origin, Access-Control-Request-Headers")
    );
    assert_eq!(r.header("access-control-max-age"), Some("600"));
    assert_eq!(r.header("access-control-allow-headers"), Some("X-Foo"));
    let r = get(gw.port, "GET", "/list/x", &[("Origin", "http://y")]);
    assert_eq!(r.header("access-control-allow-origin"), Some("http://y"));
    let r = get(gw.port, "GET", "/list/x", &[("Origin", "http://evil")]);
    assert_eq!(r.status, 200, "a disallowed origin is still proxied");
    assert_eq!(r.header("access-control-allow-origin"), None);
    assert_eq!(r.header("vary"), Some("Origin"));
    // A `'/…/'` entry is text to npm's `cors` too (a RegExp cannot be written in a config):
    // it allows no more origins, and the config's reader says so.
    let r = get(gw.port, "GET", "/list/x", &[("Origin", "http://a.example")]);
    assert_eq!(r.header("access-control-allow-origin"), None);
    assert!(
        gw.log_text()
            .contains("origin `/[.]example$/` is compared as text"),
        "{}",
        gw.log_text()
    );
    let r = get(gw.port, "OPTIONS", "/list/x", &[("Origin", "http://x")]);
    assert_eq!(r.header("access-control-allow-methods"), Some("GET,POST"));
    assert_eq!(r.header("access-control-allow-headers"), Some("X-Q,X-R"));
}

/// An `origin` that is no origin — `''`, or null (an unset variable) — turns CORS off, as
/// npm's `cors` (EG's) reads it: a preflight goes upstream, no origin is allowed (null allowed
/// every origin, `*`; `''` answered preflights with an empty allowed origin).
#[test]
fn an_origin_that_is_none_turns_cors_off() {
    let up = EchoUpstream::start("up");
    let p = "  empty:\n    apiEndpoints: [empty]\n    policies:\n      - cors: [{action: {origin: ''}}]\n      - proxy: [{action: {serviceEndpoint: up}}]\n  unset:\n    apiEndpoints: [unset]\n    policies:\n      - cors: [{action: {origin: null}}]\n      - proxy: [{action: {serviceEndpoint: up}}]\n";
    let (_d, gw) = start(
        "  empty: {paths: '/empty/*'}\n  unset: {paths: '/unset/*'}\n",
        "cors, proxy",
        p,
        &up,
    );
    for path in ["/empty/x", "/unset/x"] {
        let r = get(gw.port, "GET", path, &[("Origin", "http://evil.example")]);
        assert_eq!(r.status, 200);
        assert_eq!(r.header("access-control-allow-origin"), None, "{path}");
        let r = get(
            gw.port,
            "OPTIONS",
            path,
            &[
                ("Origin", "http://evil.example"),
                ("Access-Control-Request-Method", "GET"),
            ],
        );
        assert_eq!(
            r.echoed().url(),
            path,
            "{path}: the preflight goes upstream"
        );
        assert_eq!(r.header("access-control-allow-origin"), None, "{path}");
    }
}

/// `allowedHeaders` as npm's `cors` (EG's) reads it: an empty string is no setting (the
/// request's headers are reflected: a browser's preflight for `Authorization` passes), an
/// empty list lists none (before, both sent an empty `Access-Control-Allow-Headers`).
#[test]
fn cors_empty_allowed_headers_as_npm_cors() {
    let up = EchoUpstream::start("up");
    let step = |name: &str, allowed: &str| {
        format!("  {name}:\n    apiEndpoints: [{name}]\n    policies:\n      - cors: [{{action: {{allowedHeaders: {allowed}}}}}]\n      - proxy: [{{action: {{serviceEndpoint: up}}}}]\n")
    };
    let p = step("blank", "''")
        + &step("none", "[], methods: []")
        + &step("cont", "[x-a], preflightContinue: true");
    let (_d, gw) = start(
        "  blank: {paths: '/blank/*'}\n  none: {paths: '/none/*'}\n  cont: {paths: '/cont/*'}\n",
        "cors, proxy",
        &p,
        &up,
    );
    let preflight = |path: &str| {
        get(
            gw.port,
            "OPTIONS",
            path,
            &[
                ("Origin", "http://x"),
                ("Access-Control-Request-Headers", "authorization"),
            ],
        )
    };
    let r = preflight("/blank/x");
    assert_eq!(r.status, 204);
    assert_eq!(
        r.header("access-control-allow-headers"),
        Some("authorization")
    );
    assert_eq!(r.header("vary"), Some("Access-Control-Request-Headers"));
    assert_eq!(
        r.header("access-control-allow-methods"),
        Some("GET,HEAD,PUT,PATCH,POST,DELETE")
    );
    let r = preflight("/none/x");
    assert_eq!(r.status, 204);
    assert_eq!(
        r.header("access-control-allow-headers"),
        None,
        "{:?}",
        r.headers
    );
    assert_eq!(r.header("vary"), None, "{:?}", r.headers);
    // An empty `methods` is no header either (npm's `cors` sets only a value).
    assert_eq!(
        r.header("access-control-allow-methods"),
        None,
        "{:?}",
        r.headers
    );
    // `preflightContinue`: the preflight's headers are set and it goes on, to the upstream.
    let r = preflight("/cont/x");
    assert_eq!(r.status, 200, "{:?}", r.headers);
    assert_eq!(r.echoed().method(), "OPTIONS");
    assert_eq!(r.header("access-control-allow-headers"), Some("x-a"));
    assert_eq!(r.header("access-control-allow-origin"), Some("*"));
}

#[test]
fn terminate_defaults_and_cors_on_terminated_answers() {
    let up = EchoUpstream::start("up");
    let p = "  t:\n    apiEndpoints: [t]\n    policies:\n      - cors:\n      - terminate:\n";
    let (_d, gw) = start("  t: {paths: '/t/*'}\n", "cors, terminate", p, &up);
    let r = get(gw.port, "GET", "/t/x", &[]);
    assert_eq!(r.status, 400);
    assert_eq!(r.text(), "Terminated");
    assert_eq!(r.header("content-type"), Some("text/html; charset=utf-8"));
    assert_eq!(r.header("access-control-allow-origin"), Some("*"));
}

#[test]
fn header_transforms_both_ways() {
    let up = EchoUpstream::start("up");
    let p = r#"  rq:
    apiEndpoints: [rq]
    policies:
      - request-transformer:
          - action:
              headers:
                add: {X-Added: "'v'", X-Host-Copy: req.headers.host, X-Num: 42, X-Joined: "'id-' + req.headers['x-client']", X-Ip: req.ip}
                remove: [X-Drop]
      - headers:
          - action: {headersPrefix: 'eg-', forwardHeaders: {id: 'egContext.requestID', Foo: "'bar'"}}
      - response-transformer:
          - action: {headers: {add: {X-Resp: "'yes'"}, remove: [x-upstream]}}
      - proxy: [{action: {serviceEndpoint: up}}]
  urls:
    apiEndpoints: [urls]
    policies:
      - request-transformer:
          - action: {headers: {add: {X-Url-Before: req.url, X-Missing: "req.headers['x-none'] + '-' + req.method", X-Lone: "req.headers['x-none']", X-Who: req.user.id, X-Both: "req.headers['x-two']", X-Agent: "req.headers['user-agent']"}}}
      - response-transformer:
          - action: {headers: {add: {X-Url: req.url, X-Path: req.path, X-Orig: req.originalUrl}}}
      - proxy: [{action: {serviceEndpoint: up, stripPath: true}}]
  kargo:
    apiEndpoints: [kargo]
    policies:
      - response-transformer:
          - condition: {name: anonymous}
            action: {headers: {add: {WWW-Authenticate: "'Basic'"}}}
      - terminate:
          - condition: {name: anonymous}
            action: {statusCode: 401, message: Unauthorized}
"#;
    let (_d, gw) = start(
        "  rq: {paths: '/rq/*'}\n  urls: {paths: '/urls/*'}\n  kargo: {paths: '/k/*'}\n",
        "request-transformer, response-transformer, headers, terminate, proxy",
        p,
        &up,
    );
    let r = get(
        gw.port,
        "GET",
        "/rq/x",
        &[
            ("Host", "front.test"),
            ("X-Drop", "gone"),
            ("X-Client", "c7"),
        ],
    );
    assert_eq!(r.header("x-resp"), Some("yes"));
    assert_eq!(
        r.header("x-upstream"),
        None,
        "response-transformer removed it"
    );
    let e = r.echoed();
    assert_eq!(e.header("x-added").as_deref(), Some("v"));
    assert_eq!(e.header("x-host-copy").as_deref(), Some("front.test"));
    assert_eq!(e.header("x-num").as_deref(), Some("42"));
    assert_eq!(e.header("x-joined").as_deref(), Some("id-c7"));
    // `req.ip` as EG shows an IPv4 client: Node listens on `::` (dual-stack) without a
    // `hostname`, where the machine has IPv6 (rate-limit keys are made of it: one window
    // for both on one Redis).
    let dual_stack = std::net::TcpListener::bind("[::]:0").is_ok();
    let ip = if dual_stack {
        "::ffff:127.0.0.1"
    } else {
        "127.0.0.1"
    };
    assert_eq!(e.header("x-ip").as_deref(), Some(ip));
    assert_eq!(e.header("x-drop"), None);
    assert_eq!(e.header("eg-foo").as_deref(), Some("bar"));
    assert_eq!(
        e.header("eg-id"),
        e.header("eg-request-id"),
        "egContext.requestID is the request id"
    );
    // EG's proxy rewrites `req.url` (`stripPath`) before the response's headers are made;
    // a missing value is JavaScript's `undefined`.
    // A header on two lines is one value, as Node's parser makes it: joined, or the first
    // line alone for those Node keeps once.
    let r = get(
        gw.port,
        "GET",
        "/urls/x/y?a=1",
        &[
            ("X-Two", "a"),
            ("X-Two", "b"),
            ("User-Agent", "u1"),
            ("User-Agent", "u2"),
        ],
    );
    let e = r.echoed();
    assert_eq!(e.header("x-both").as_deref(), Some("a, b"));
    assert_eq!(e.header("x-agent").as_deref(), Some("u1"));
    assert_eq!(e.header("x-url-before").as_deref(), Some("/urls/x/y?a=1"));
    assert_eq!(e.header("x-missing").as_deref(), Some("undefined-GET"));
    // A value that is only a missing one is no header (EG's `setHeader` throws on it).
    assert_eq!(e.header("x-lone"), None);
    assert_eq!(e.header("x-who"), None);
    assert_eq!(r.header("x-url"), Some("/x/y?a=1"));
    assert_eq!(r.header("x-path"), Some("/x/y"));
    assert_eq!(r.header("x-orig"), Some("/urls/x/y?a=1"));
    let r = get(gw.port, "GET", "/k/x", &[]);
    assert_eq!((r.status, r.text().as_str()), (401, "Unauthorized"));
    assert_eq!(
        r.header("www-authenticate"),
        Some("Basic"),
        "Kargo's \"'Basic'\" sends Basic"
    );
}

/// A header a step sets is what later steps read, as in EG (its steps change `req.headers`):
/// a rate limit keyed by a header a `request-transformer` fixed counts every client together
/// (it read the client's own value: a client sending a new one each time was never limited),
/// and a later transformer's value sees it.
#[test]
fn later_steps_read_the_headers_earlier_steps_set() {
    let up = EchoUpstream::start("up");
    let p = r#"  rt:
    apiEndpoints: [rt]
    policies:
      - request-transformer:
          - action: {headers: {add: {X-Tenant: "'fixed'"}}}
      - request-transformer:
          - action: {headers: {add: {X-Copy: "req.headers['x-tenant']"}}}
      - rate-limit: [{action: {max: 1, windowMs: 60000, rateLimitBy: "${req.headers['x-tenant']}"}}]
      - proxy: [{action: {serviceEndpoint: up}}]
"#;
    let (_d, gw) = start(
        "  rt: {paths: '/rt/*'}\n",
        "request-transformer, rate-limit, proxy",
        p,
        &up,
    );
    let first = get(gw.port, "GET", "/rt/x", &[("X-Tenant", "a")]);
    assert_eq!(first.status, 200);
    assert_eq!(first.echoed().header("x-copy").as_deref(), Some("fixed"));
    for tenant in ["b", "c"] {
        let r = get(gw.port, "GET", "/rt/x", &[("X-Tenant", tenant)]);
        assert_eq!(r.status, 429, "{tenant}");
    }
}

/// A `response-transformer` acts on the response as it is finally written, as EG's (which
/// edits the head when it is written): placed before `rate-limit`, its `remove` takes the
/// rate limit's headers off (they were set after it, and stayed) and its `add` wins over them.
#[test]
fn a_response_transformer_edits_the_final_head() {
    let up = EchoUpstream::start("up");
    let p = r#"  rt:
    apiEndpoints: [rt]
    policies:
      - response-transformer:
          - action: {headers: {add: {X-RateLimit-Limit: "'hidden'", X-Order: "'first'"}, remove: [x-ratelimit-remaining]}}
      - response-transformer:
          - action: {headers: {add: {X-Order: "'second'"}}}
      - rate-limit: [{action: {max: 5, windowMs: 60000}}]
      - proxy: [{action: {serviceEndpoint: up}}]
"#;
    let (_d, gw) = start(
        "  rt: {paths: '/rt/*'}\n",
        "response-transformer, rate-limit, proxy",
        p,
        &up,
    );
    let r = get(gw.port, "GET", "/rt/x", &[]);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-ratelimit-remaining"), None, "{:?}", r.headers);
    assert_eq!(
        r.header("x-ratelimit-limit"),
        Some("hidden"),
        "{:?}",
        r.headers
    );
    // Two transformers: EG wraps the head's writing once each, the last innermost, so the
    // first one's edit is made last.
    assert_eq!(r.header("x-order"), Some("first"), "{:?}", r.headers);
}

#[test]
fn rate_limit_headers_and_429_as_text_or_json() {
    let up = EchoUpstream::start("up");
    let p = "  rl:\n    apiEndpoints: [rl]\n    policies:\n      - rate-limit: [{action: {max: 2, windowMs: 60000}}]\n      - proxy: [{action: {serviceEndpoint: up}}]\n  byhdr:\n    apiEndpoints: [byhdr]\n    policies:\n      - rate-limit: [{action: {max: 1, windowMs: 60000, rateLimitBy: \"${req.headers['x-client']}\", statusCode: 503, message: slow down}}]\n      - proxy: [{action: {serviceEndpoint: up}}]\n";
    let (_d, gw) = start(
        "  rl: {paths: '/rl/*'}\n  byhdr: {paths: '/by/*'}\n",
        "rate-limit, proxy",
        p,
        &up,
    );
    let r1 = get(gw.port, "GET", "/rl/x", &[]);
    assert_eq!(r1.status, 200);
    assert_eq!(r1.header("x-ratelimit-limit"), Some("2"));
    assert_eq!(r1.header("x-ratelimit-remaining"), Some("1"));
    let reset: u64 = r1
        .header("x-ratelimit-reset")
        .and_then(|v| v.parse().ok())
        .expect("reset");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    assert!(
        reset > now && reset <= now + 61,
        "reset {reset} is within the window from {now}"
    );
    let r2 = get(gw.port, "GET", "/rl/x", &[]);
    assert_eq!(
        (r2.status, r2.header("x-ratelimit-remaining")),
        (200, Some("0"))
    );
    let r3 = get(gw.port, "GET", "/rl/x", &[]);
    assert_eq!(r3.status, 429);
    assert_eq!(r3.text(), "Too many requests, please try again later.");
    assert_eq!(r3.header("content-type"), Some("text/html; charset=utf-8"));
    assert_eq!(r3.header("retry-after"), Some("60"));
    let r4 = get(gw.port, "GET", "/rl/x", &[("Accept", "application/json")]);
    assert_eq!(r4.status, 429);
    assert_eq!(
        r4.text(),
        r#"{"message":"Too many requests, please try again later."}"#
    );
    assert_eq!(
        r4.header("content-type"),
        Some("application/json; charset=utf-8")
    );
    // rateLimitBy: each client has its own window.
    assert_eq!(
        get(gw.port, "GET", "/by/x", &[("X-Client", "a")]).status,
        200
    );
    assert_eq!(
        get(gw.port, "GET", "/by/x", &[("X-Client", "b")]).status,
        200
    );
    let limited = get(gw.port, "GET", "/by/x", &[("X-Client", "a")]);
    assert_eq!(
        (limited.status, limited.text().as_str()),
        (503, "slow down")
    );
}

#[test]
fn log_policy_writes_its_message_and_goes_on() {
    let up = EchoUpstream::start("up");
    let p = "  l:\n    apiEndpoints: [l]\n    policies:\n      - log: [{action: {message: 'hello ${req.method} ${req.url}'}}]\n      - proxy: [{action: {serviceEndpoint: up}}]\n";
    let (_d, gw) = start("  l: {paths: '/l/*'}\n", "log, proxy", p, &up);
    assert_eq!(get(gw.port, "GET", "/l/x?b=1", &[]).status, 200);
    std::thread::sleep(std::time::Duration::from_millis(100));
    assert!(
        gw.log_text().contains("hello GET /l/x?b=1"),
        "{}",
        gw.log_text()
    );
}

/// A gateway-made answer whose status has no body (204, 205, 304) goes out without one and
/// without a length (a 205 with `Content-Length: 0`), whatever message the step gives: on the
/// fast path (GET) and the general one (POST).
#[test]
fn an_answer_whose_status_has_no_body_gets_none() {
    let up = EchoUpstream::start("up");
    let p: String = [204, 205, 304]
        .iter()
        .map(|s| {
            format!(
                "  t{s}:\n    apiEndpoints: [t{s}]\n    policies:\n{}",
                term(*s, "gone", "{name: always}")
            )
        })
        .collect();
    let e: String = [204, 205, 304]
        .iter()
        .map(|s| format!("  t{s}: {{paths: '/t{s}'}}\n"))
        .collect();
    let (_dir, gw) = start(&e, "terminate", &p, &up);
    for status in [204, 205, 304] {
        for method in ["GET", "POST"] {
            let raw = format!(
                "{method} /t{status} HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
            let text = support::send_until_close(gw.port, raw.as_bytes());
            let case = format!("{method} {status}");
            assert!(
                text.starts_with(&format!("HTTP/1.1 {status}")),
                "{case}: {text}"
            );
            let (head, body) = text.split_once("\r\n\r\n").expect("a head");
            assert_eq!(body, "", "{case}: a body");
            let head = head.to_ascii_lowercase();
            assert!(!head.contains("content-type"), "{case}: {head}");
            match status {
                205 => assert!(head.contains("content-length: 0"), "{case}: {head}"),
                _ => assert!(!head.contains("content-length"), "{case}: {head}"),
            }
        }
    }
}

/// `delayMs` or `delayAfter` set alone delays as EG does, the other at EG's default (1 and
/// 1000 ms); neither set, nothing is delayed.
#[test]
fn a_delay_set_alone_delays_as_eg() {
    let up = EchoUpstream::start("up");
    let pipeline = |name: &str, action: &str| {
        format!("  {name}:\n    apiEndpoints: [{name}]\n    policies:\n      - rate-limit: [{{action: {{max: 100, {action}}}}}]\n      - terminate: [{{action: {{statusCode: 200, message: ok}}}}]\n")
    };
    let p = [
        pipeline("ms", "delayMs: 1000"),
        pipeline("none", "windowMs: 60000"),
    ]
    .concat();
    let (_dir, gw) = start(
        "  ms: {paths: '/ms'}\n  none: {paths: '/none'}\n",
        "rate-limit, terminate",
        &p,
        &up,
    );
    let took = |path: &str| {
        let t = std::time::Instant::now();
        assert_eq!(get(gw.port, "GET", path, &[]).status, 200);
        t.elapsed()
    };
    let ms = std::time::Duration::from_millis;
    assert!(took("/ms") < ms(700), "the first request is not delayed");
    assert!(took("/ms") >= ms(990), "the second is, by delayMs");
    for _ in 0..3 {
        assert!(took("/none") < ms(700), "no delay unless asked");
    }
}

/// The upstream's own `X-RateLimit-*` headers reach the client as over EG (http-proxy sets
/// the upstream's after the policy set its own); of two `rate-limit` steps, the later one's
/// count is said (EG's `setHeader` replaced the earlier's).
#[test]
fn the_upstreams_rate_limit_headers_win_and_the_later_step_speaks() {
    let up = support::upstream::PyUpstream::start("rl", 5.0);
    let yml = format!(
        "http: {{port: ${{PORT}}}}\nadmin: {{port: ${{ADMIN_PORT}}, host: 127.0.0.1}}\napiEndpoints:\n  rl: {{paths: '/rl/*'}}\nserviceEndpoints:\n  up: {{url: '{}'}}\npolicies: [rate-limit, proxy]\npipelines:\n  rl:\n    apiEndpoints: [rl]\n    policies:\n      - rate-limit: [{{action: {{max: 5, windowMs: 60000, rateLimitBy: wide}}}}]\n      - rate-limit: [{{action: {{max: 3, windowMs: 60000, rateLimitBy: narrow}}}}]\n      - proxy: [{{action: {{serviceEndpoint: up, stripPath: true}}}}]\n",
        up.url("")
    );
    let dir = ConfigDir::new(&yml);
    let gw = GatewayProcess::start(&dir);
    let r = get(gw.port, "GET", "/rl/x", &[]);
    assert_eq!(
        (
            r.header("x-ratelimit-limit"),
            r.header("x-ratelimit-remaining")
        ),
        (Some("3"), Some("2")),
        "{:?}",
        r.headers
    );
    let r = get(gw.port, "GET", "/rl/x?header=X-RateLimit-Limit:999", &[]);
    assert_eq!(
        (
            r.header("x-ratelimit-limit"),
            r.header("x-ratelimit-remaining")
        ),
        (Some("999"), Some("1")),
        "{:?}",
        r.headers
    );
}
