//! The proxy policy against a real upstream on loopback: path rewriting (stripPath,
//! prependPath, ignorePath), Host (changeOrigin), round-robin, X-Forwarded-*, request ids,
//! and what the client sees when the upstream fails.

mod support;

use support::echo::Echoed;
use support::{free_port, get, ConfigDir, EchoUpstream, GatewayProcess};

struct Setup {
    _dir: ConfigDir,
    gw: GatewayProcess,
    a: EchoUpstream,
    b: EchoUpstream,
}

/// One gateway with a route per rewriting case; `a` and `b` are two echo upstreams.
fn setup() -> Setup {
    setup_with(&[])
}

/// [`setup`] with more environment for the gateway.
fn setup_with(envs: &[(&str, &str)]) -> Setup {
    let a = EchoUpstream::start("a");
    let b = EchoUpstream::start("b");
    let dead = free_port();
    let yml = format!(
        r#"http:
  port: ${{PORT}}
admin:
  port: ${{ADMIN_PORT}}
  host: 127.0.0.1
apiEndpoints:
  wms: {{paths: '/wms*'}}
  np: {{paths: '/np*'}}
  api: {{paths: '/api/*/then/*'}}
  exact: {{paths: '/exact'}}
  param: {{paths: '/p/:id/*'}}
  ig: {{paths: '/ig*'}}
  pp: {{paths: '/pp*'}}
  keephost: {{paths: '/keephost/*'}}
  rr: {{paths: '/rr/*'}}
  xf: {{paths: '/xf/*'}}
  multi: {{paths: ['/m1/*', '/m2/*']}}
  dead: {{paths: '/dead/*'}}
  slow: {{paths: '/slow/*'}}
  nodns: {{paths: '/nodns/*'}}
  raw: {{paths: '/raw/*'}}
  basic: {{paths: '/basic/*'}}
serviceEndpoints:
  wms: {{url: '{a}/wms'}}
  root: {{url: '{a_root}'}}
  base: {{url: '{a}/base/'}}
  basenoslash: {{url: '{a}/base'}}
  pair: {{urls: ['{a_root}', '{b_root}']}}
  dead: {{url: 'http://127.0.0.1:{dead}'}}
  nodns: {{url: 'http://no-such-host.invalid:81'}}
  withopts:
    url: '{a_root}'
    proxyOptions: {{xfwd: true}}
policies: [proxy]
pipelines:
  wms: {{apiEndpoints: [wms], policies: [{{proxy: {{action: {{serviceEndpoint: wms, stripPath: true}}}}}}]}}
  np: {{apiEndpoints: [np], policies: [{{proxy: {{action: {{serviceEndpoint: root, stripPath: true}}}}}}]}}
  api: {{apiEndpoints: [api], policies: [{{proxy: {{action: {{serviceEndpoint: base, stripPath: true}}}}}}]}}
  exact: {{apiEndpoints: [exact], policies: [{{proxy: {{action: {{serviceEndpoint: root, stripPath: true}}}}}}]}}
  param: {{apiEndpoints: [param], policies: [{{proxy: {{action: {{serviceEndpoint: base, stripPath: true}}}}}}]}}
  ig: {{apiEndpoints: [ig], policies: [{{proxy: {{action: {{serviceEndpoint: basenoslash, ignorePath: true}}}}}}]}}
  pp: {{apiEndpoints: [pp], policies: [{{proxy: {{action: {{serviceEndpoint: basenoslash, prependPath: false}}}}}}]}}
  keephost: {{apiEndpoints: [keephost], policies: [{{proxy: {{action: {{serviceEndpoint: root, changeOrigin: false}}}}}}]}}
  rr: {{apiEndpoints: [rr], policies: [{{proxy: {{action: {{serviceEndpoint: pair}}}}}}]}}
  xf: {{apiEndpoints: [xf], policies: [{{proxy: {{action: {{serviceEndpoint: withopts}}}}}}]}}
  multi: {{apiEndpoints: [multi], policies: [{{proxy: {{action: {{serviceEndpoint: root, stripPath: true}}}}}}]}}
  dead: {{apiEndpoints: [dead], policies: [{{proxy: {{action: {{serviceEndpoint: dead}}}}}}]}}
  slow: {{apiEndpoints: [slow], policies: [{{proxy: {{action: {{serviceEndpoint: root, proxyTimeout: 300}}}}}}]}}
  nodns: {{apiEndpoints: [nodns], policies: [{{proxy: {{action: {{serviceEndpoint: nodns}}}}}}]}}
  raw: {{apiEndpoints: [raw], policies: [{{proxy: {{action: {{serviceEndpoint: root}}}}}}]}}
  basic: {{apiEndpoints: [basic], policies: [{{proxy: {{action: {{serviceEndpoint: root, auth: 'tiles:s3cr:et', followRedirects: true}}}}}}]}}
"#,
        a = a.url(""),
        a_root = a.url(""),
        b_root = b.url(""),
    );
    let dir = ConfigDir::new(&yml);
    let gw = GatewayProcess::start_with(&dir, &[], envs);
    Setup {
        _dir: dir,
        gw,
        a,
        b,
    }
}

fn upstream_url(s: &Setup, path: &str) -> String {
    get(s.gw.port, "GET", path, &[]).echoed().url().to_string()
}

#[test]
fn strip_path_examples() {
    let s = setup();
    let cases = [
        ("/wms", "/wms/"),
        ("/wms?SERVICE=WMS", "/wms/?SERVICE=WMS"),
        ("/wmsfoo", "/wms/foo"),
        ("/wms/a/b", "/wms/a/b"),
        ("/np", "/"),
        ("/np?x=1", "/?x=1"),
        ("/npfoo", "/foo"),
        ("/np/a/b", "/a/b"),
        ("/api/x%2Fy/then/z?a=2", "/base/x%2Fy/then/z?a=2"),
        ("/exact", "/"),
        ("/exact?q=1", "/?q=1"),
        ("/p/7/a/b?c=1", "/base/7/a/b?c=1"),
        ("/m2/y?z=1", "/y?z=1"),
    ];
    for (path, want) in cases {
        assert_eq!(upstream_url(&s, path), want, "request {path}");
    }
}

/// A path with `.` or `..` segments, as written or percent-encoded, would reach another
/// upstream path than the one routed (and authorised): refused 400 (the upstream would echo
/// a 200). Dots within a segment are a name like any other.
#[test]
fn dot_segments_are_refused() {
    let s = setup();
    // Also those stripPath would leave (`/np*` strips `/np`): `/np../k2` reaches the upstream as
    // `/../k2` otherwise, under the route and scopes of `/np*`.
    for path in [
        "/np/../k2/x",
        "/np/%2e%2E/k2",
        "/np/./x",
        "/np/a/..",
        "/np../k2/x",
        "/np%2e%2e/k2",
        "/np.%2E/k2",
        "/np..;a/k2",
        "/np..",
    ] {
        for headers in [&[][..], &[("Expect", "100-continue")][..]] {
            let r = get(s.gw.port, "GET", path, headers);
            assert_eq!(r.status, 400, "{path} {headers:?}: {}", r.text());
        }
    }
    assert_eq!(upstream_url(&s, "/np/a..b/3.png"), "/a..b/3.png");
    // A `%` that escapes nothing is no URI's (EG and nginx refuse it too); one that escapes a
    // byte is sent on (an unreserved one decoded, see `normalised_target`).
    for path in ["/np/%zz", "/np/a%", "/np/a%4", "/np/%g1/x"] {
        let r = get(s.gw.port, "GET", path, &[]);
        assert_eq!(r.status, 400, "{path}: {}", r.text());
    }
    assert_eq!(upstream_url(&s, "/np/a%41%2f"), "/aA%2f");
}

#[test]
fn ignore_path_and_prepend_path() {
    let s = setup();
    assert_eq!(
        upstream_url(&s, "/igfoo?q=1"),
        "/base",
        "ignorePath sends only the target path"
    );
    assert_eq!(
        upstream_url(&s, "/ppfoo?x=1"),
        "/ppfoo?x=1",
        "prependPath false drops the target path"
    );
    // Joined with nothing all the same, as http-proxy does: repeated slashes go.
    assert_eq!(upstream_url(&s, "/ppfoo//bar?x=//1"), "/ppfoo/bar?x=//1");
    // A path that carries a URL keeps its `http://`.
    assert_eq!(upstream_url(&s, "/wms/http://h//x"), "/wms/http://h/x");
}

#[test]
fn change_origin_sets_host_unless_disabled() {
    let s = setup();
    let e = get(s.gw.port, "GET", "/raw/x", &[("Host", "client.test:8080")]).echoed();
    assert_eq!(e.header("host"), Some(format!("127.0.0.1:{}", s.a.port)));
    let e = get(
        s.gw.port,
        "GET",
        "/keephost/x",
        &[("Host", "client.test:8080")],
    )
    .echoed();
    assert_eq!(e.header("host").as_deref(), Some("client.test:8080"));
}

#[test]
fn round_robin_over_urls() {
    let s = setup();
    let seen: Vec<String> = (0..4)
        .map(|_| {
            get(s.gw.port, "GET", "/rr/x", &[])
                .echoed()
                .upstream()
                .to_string()
        })
        .collect();
    assert_eq!(
        seen[0..2].iter().filter(|u| *u == "a").count(),
        1,
        "{seen:?}"
    );
    assert_eq!(seen[0], seen[2]);
    assert_eq!(seen[1], seen[3]);
    assert_ne!(seen[0], seen[1]);
    assert!(s.b.hits.load(std::sync::atomic::Ordering::SeqCst) >= 2);
}

#[test]
fn request_id_headers_and_method_reach_the_upstream() {
    let s = setup();
    let r = get(
        s.gw.port,
        "GET",
        "/raw/x?q=1",
        &[
            ("X-Custom", "v1"),
            ("eg-consumer-id", "forged"),
            ("Authorization", "apiKey a:b"),
        ],
    );
    let e = r.echoed();
    assert_eq!(e.method(), "GET");
    assert_eq!(e.url(), "/raw/x?q=1");
    assert_eq!(e.header("x-custom").as_deref(), Some("v1"));
    assert_eq!(
        e.header("authorization").as_deref(),
        Some("apiKey a:b"),
        "EG passes Authorization on"
    );
    assert_eq!(
        e.header("eg-consumer-id"),
        None,
        "a client-sent consumer id is never forwarded"
    );
    let id = e.header("eg-request-id").expect("eg-request-id");
    assert_eq!(id.len(), 22);
    assert!(id.bytes().all(|c| c.is_ascii_alphanumeric()));
    let id2 = get(s.gw.port, "GET", "/raw/x", &[])
        .echoed()
        .header("eg-request-id");
    assert_ne!(Some(id), id2);
    let head = get(s.gw.port, "HEAD", "/raw/x", &[]);
    assert_eq!(head.status, 200);
    assert_eq!(head.header("x-upstream"), Some("a"));
    let post = support::request(
        s.gw.port,
        "POST /raw/up HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
        false,
    );
    let e = post.echoed();
    assert_eq!(e.method(), "POST");
    assert_eq!(e.0["body"], "hello");
}

/// `auth` (Node's, as EG's http-proxy passes it on): the upstream request's `Authorization:
/// Basic`, unless the client sent an `Authorization` of its own; an http-proxy option tollgate
/// does not act on is a warning at its place.
#[test]
fn auth_sends_basic_credentials_upstream() {
    let s = setup();
    let e = get(s.gw.port, "GET", "/basic/x", &[]).echoed();
    // base64("tiles:s3cr:et")
    assert_eq!(
        e.header("authorization").as_deref(),
        Some("Basic dGlsZXM6czNjcjpldA==")
    );
    let e = get(
        s.gw.port,
        "GET",
        "/basic/x",
        &[("Authorization", "Bearer own")],
    )
    .echoed();
    assert_eq!(e.header("authorization").as_deref(), Some("Bearer own"));
    let log = s.gw.log_text();
    assert!(
        log.lines().any(|l| l.contains("gateway.config.yml:")
            && l.contains("`followRedirects` is not supported by tollgate and is ignored")),
        "{log}"
    );
}

#[test]
fn xfwd_from_proxy_options() {
    let s = setup();
    let e = get(
        s.gw.port,
        "GET",
        "/xf/x",
        &[("Host", "front.test:8443"), ("X-Forwarded-For", "1.2.3.4")],
    )
    .echoed();
    assert_eq!(
        e.header("x-forwarded-for").as_deref(),
        Some("1.2.3.4,127.0.0.1")
    );
    assert_eq!(e.header("x-forwarded-port").as_deref(), Some("8443"));
    assert_eq!(e.header("x-forwarded-proto").as_deref(), Some("http"));
    assert_eq!(
        e.header("x-forwarded-host").as_deref(),
        Some("front.test:8443")
    );
    let plain = get(s.gw.port, "GET", "/raw/x", &[]).echoed();
    assert_eq!(
        plain.header("x-forwarded-for"),
        None,
        "no xfwd, no X-Forwarded-*"
    );
}

#[test]
fn upstream_failures_are_502_bad_gateway() {
    let s = setup();
    for path in ["/dead/x", "/slow/2000", "/raw/close", "/nodns/x"] {
        let r = get(s.gw.port, "GET", path, &[]);
        assert_eq!(r.status, 502, "{path}: {}", r.text());
        assert_eq!(r.text(), "Bad gateway.", "{path}");
        assert_eq!(r.header("content-type"), Some("text/html; charset=utf-8"));
    }
    // After the interim `100 Continue` a request that asked for one gets, the failure is
    // still answered (the connection was closed without a final answer).
    for path in ["/dead/x", "/raw/close", "/slow/2000"] {
        use std::io::{Read, Write};
        let mut c = std::net::TcpStream::connect(("127.0.0.1", s.gw.port)).expect("connect");
        c.set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .expect("timeout");
        write!(
            c,
            "GET {path} HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n"
        )
        .expect("send");
        let mut answer = Vec::new();
        let _ = c.read_to_end(&mut answer);
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.contains("HTTP/1.1 502"), "{path}: {answer:?}");
    }
    // The gateway is still fine afterwards.
    assert_eq!(get(s.gw.port, "GET", "/raw/ok", &[]).status, 200);
}

#[test]
fn keep_alive_connection_serves_many_requests() {
    let s = setup();
    use std::io::{BufRead, BufReader, Read, Write};
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", s.gw.port)).expect("connect");
    let mut reader = BufReader::new(conn.try_clone().expect("clone"));
    for i in 0..5 {
        write!(conn, "GET /raw/{i} HTTP/1.1\r\nHost: h\r\n\r\n").expect("send");
        let mut status = String::new();
        reader.read_line(&mut status).expect("status");
        assert!(status.starts_with("HTTP/1.1 200"), "{status}");
        let mut len = 0;
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).expect("header");
            if line == "\r\n" {
                break;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                len = v.trim().parse().expect("length");
            }
        }
        let mut body = vec![0; len];
        reader.read_exact(&mut body).expect("body");
        assert_eq!(Echoed::parse(&body).url(), format!("/raw/{i}"));
    }
}

#[test]
fn malformed_requests_get_a_4xx_and_the_gateway_keeps_serving() {
    // Logging all it logs: a malformed head's line too.
    let s = setup_with(&[("RUST_LOG", "debug")]);
    // Heads the HTTP parser refuses, on the fast path (GET) and the general one: the gateway's
    // own 400 with a short body (not the bare one of the proxy library, with its name),
    // counted among the connections closed, and the head never written to the log.
    let closed = "tollgate_client_connections_closed_total{reason=\"malformed\"}";
    let before = s.gw.metric(closed);
    let refused = [
        "GARBAGE\r\n\r\n",
        "GET /raw/x?apiKey=k:s3cret HTTP/9.9\r\nHost: h\r\n\r\n",
        "GET /raw/x HTTP/1.1\r\nHo st: h\r\n\r\n",
        "GET /raw/x HTTP/1.1\r\nHost: h\r\nX-Bad: a\x01b\r\n\r\n",
        "POST /raw/x HTTP/1.1\r\nHost: h\r\nX-Bad: a\x01b\r\nContent-Length: 0\r\n\r\n",
        "DELETE /raw/x?apiKey=k:s3cret HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        // A target the URI parser refuses (its error quotes it).
        "GET /raw/x?apiKey=k:s3cret&CQL_FILTER=pop>5 HTTP/1.1\r\nHost: h\r\n\r\n",
        "POST /raw/x?apiKey=k:s3cret&CQL_FILTER=pop>5 HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n",
    ];
    for raw in refused {
        let r = support::request(s.gw.port, raw, false);
        assert_eq!(
            (r.status, r.text().as_str(), r.header("server")),
            (400, "Bad Request", None),
            "{raw:?}"
        );
    }
    assert_eq!(
        s.gw.metric_when(closed, |v| v >= before + refused.len() as f64),
        before + refused.len() as f64,
        "each malformed head counted"
    );
    assert!(
        !s.gw.log_text().contains("s3cret"),
        "a refused head written to the log"
    );
    // CONNECT asks for a tunnel, which the gateway does not make: 405, in the gateway's words.
    let connect = support::request(
        s.gw.port,
        "CONNECT h:443 HTTP/1.1\r\nHost: h:443\r\n\r\n",
        false,
    );
    assert_eq!(
        (
            connect.status,
            connect.text().as_str(),
            connect.header("server")
        ),
        (405, "Method Not Allowed", None)
    );
    assert!(connect.header("allow").is_some_and(|a| a.contains("GET")));
    // A request line with characters the parser repairs (a space in the target) is no
    // malformed head: it is served.
    let repaired = support::request(
        s.gw.port,
        "GET /raw/a b HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
        false,
    );
    assert_eq!(repaired.status, 200, "{}", repaired.text());
    let huge = format!(
        "GET /raw/x HTTP/1.1\r\nHost: h\r\nX-Big: {}\r\nConnection: close\r\n\r\n",
        "a".repeat(200_000)
    );
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", s.gw.port)).expect("connect");
    use std::io::{Read, Write};
    // The client is still sending when the refusal comes: the gateway reads on (and discards)
    // until the client is done, so the client's writes are not cut by a reset of the
    // connection (many clients give up then without reading the answer).
    conn.write_all(huge.as_bytes())
        .expect("the rest of the head is taken in");
    std::thread::sleep(std::time::Duration::from_millis(300));
    for _ in 0..3 {
        conn.write_all(&[b'a'; 16 * 1024])
            .expect("what the client sends after the refusal is taken in");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    conn.shutdown(std::net::Shutdown::Write).expect("shutdown");
    let mut answer = Vec::new();
    let read = conn.read_to_end(&mut answer);
    let head = String::from_utf8_lossy(&answer);
    assert!(
        head.starts_with("HTTP/1.1 431"),
        "oversized headers: {head}"
    );
    assert!(read.is_ok(), "the connection was reset: {read:?}");
    // More header lines than the parser takes, the head itself short: 431 too, not a bare 400.
    let lines = |n: usize| -> String { (0..n).map(|i| format!("X-H{i}: v\r\n")).collect() };
    let with_lines = |n: usize| {
        let head = format!(
            "GET /raw/x HTTP/1.1\r\nHost: h\r\n{}Connection: close\r\n\r\n",
            lines(n)
        );
        support::request(s.gw.port, &head, false).status
    };
    assert_eq!(with_lines(300), 431, "300 header lines");
    assert_eq!(with_lines(200), 200, "200 header lines");
    // A head past 32 KiB that comes whole in one piece is refused at the listener as one
    // that comes in pieces (it went on to Pingora's parser, counted as a connection done).
    let too_large = r#"tollgate_client_connections_closed_total{reason="head_too_large"}"#;
    let before = s.gw.metric(too_large);
    let whole = format!(
        "GET /raw/x HTTP/1.1\r\nHost: h\r\nX-Big: {}\r\n\r\n",
        "a".repeat(40_000)
    );
    assert_eq!(support::request(s.gw.port, &whole, false).status, 431);
    assert_eq!(s.gw.metric_when(too_large, |v| v > before), before + 1.0);
    // The same behind another request on its connection (pipelined): answered, then the 431.
    let lines = lines(300);
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", s.gw.port)).expect("connect");
    let _ = conn.write_all(
        format!("GET /raw/first HTTP/1.1\r\nHost: h\r\n\r\nGET /raw/x HTTP/1.1\r\nHost: h\r\n{lines}\r\n")
            .as_bytes(),
    );
    let mut answers = Vec::new();
    let _ = conn.read_to_end(&mut answers);
    let answers = String::from_utf8_lossy(&answers);
    let statuses: Vec<&str> = answers
        .match_indices("HTTP/1.1 ")
        .map(|(i, _)| &answers[i + 9..i + 12])
        .collect();
    assert_eq!(statuses, ["200", "431"], "{answers}");
    let bad_length = support::request(
        s.gw.port,
        "POST /raw/x HTTP/1.1\r\nHost: h\r\nContent-Length: abc\r\n\r\n",
        false,
    );
    assert!(
        (400..500).contains(&bad_length.status),
        "{}",
        bad_length.status
    );
    // RFC 9112 §3.2: an HTTP/1.1 request without Host, or any with two, is a 400; HTTP/1.0
    // may leave it out.
    for (raw, status) in [
        ("GET /raw/x HTTP/1.1\r\nConnection: close\r\n\r\n", 400),
        (
            "GET /raw/x HTTP/1.1\r\nHost: a\r\nHost: b\r\nConnection: close\r\n\r\n",
            400,
        ),
        ("GET /raw/x HTTP/1.0\r\n\r\n", 200),
        (
            "GET /healthcheck HTTP/1.1\r\nConnection: close\r\n\r\n",
            200,
        ),
        (
            "GET http://h/raw/x HTTP/1.1\r\nConnection: close\r\n\r\n",
            400,
        ),
        (
            "GET http://h/raw/x HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
            200,
        ),
    ] {
        let r = support::request(s.gw.port, raw, false);
        assert_eq!(r.status, status, "{raw:?}: {}", r.text());
    }
    assert_eq!(
        get(s.gw.port, "GET", "/raw/ok", &[]).status,
        200,
        "still serving"
    );
}

/// A step's edit of `Host` meets the proxy's as in EG: `changeOrigin` sets the url's Host after
/// every step (it wins), without it the step's edit stands, and a request a step left without
/// Host gets the url's (never none). On the fast path (GET) and the general one (POST).
#[test]
fn a_steps_host_edit_and_change_origin() {
    let up = EchoUpstream::start("up");
    let yml = format!(
        "http: {{port: ${{PORT}}}}\napiEndpoints:\n  add: {{paths: '/add/*'}}\n  addkeep: {{paths: '/addkeep/*'}}\n  rm: {{paths: '/rm/*'}}\n  rmkeep: {{paths: '/rmkeep/*'}}\nserviceEndpoints:\n  up: {{url: '{up}'}}\npolicies: [request-transformer, proxy]\npipelines:\n  add:\n    apiEndpoints: [add]\n    policies:\n      - request-transformer: [{{action: {{headers: {{add: {{host: \"'virt.example'\"}}}}}}}}]\n      - proxy: [{{action: {{serviceEndpoint: up}}}}]\n  addkeep:\n    apiEndpoints: [addkeep]\n    policies:\n      - request-transformer: [{{action: {{headers: {{add: {{host: \"'virt.example'\"}}}}}}}}]\n      - proxy: [{{action: {{serviceEndpoint: up, changeOrigin: false}}}}]\n  rm:\n    apiEndpoints: [rm]\n    policies:\n      - request-transformer: [{{action: {{headers: {{remove: [host]}}}}}}]\n      - proxy: [{{action: {{serviceEndpoint: up}}}}]\n  rmkeep:\n    apiEndpoints: [rmkeep]\n    policies:\n      - request-transformer: [{{action: {{headers: {{remove: [host]}}}}}}]\n      - proxy: [{{action: {{serviceEndpoint: up, changeOrigin: false}}}}]\n",
        up = up.url("")
    );
    let dir = ConfigDir::new(&yml);
    let gw = GatewayProcess::start(&dir);
    let target = format!("127.0.0.1:{}", up.port);
    for method in ["GET", "POST"] {
        for (path, host) in [
            ("/add/x", target.as_str()),
            ("/addkeep/x", "virt.example"),
            ("/rm/x", target.as_str()),
            ("/rmkeep/x", target.as_str()),
        ] {
            let headers = [("Host", "client.test"), ("Content-Length", "0")];
            let n = if method == "GET" { 1 } else { 2 };
            let e = get(gw.port, method, path, &headers[..n]).echoed();
            assert_eq!(e.header("host").as_deref(), Some(host), "{method} {path}");
        }
    }
}

/// A request answered before its body was read (a 404 here; a 401, a 400 of its framing
/// alike) reaches a client still sending that body: the gateway reads on and discards the rest
/// before it closes, rather than closing with bytes unread — which resets the connection
/// under the client, whose writes then fail before it reads the answer (nginx's lingering
/// close; Python's `http.client` uploading 4 MB got `BrokenPipeError` and never the status).
#[test]
fn an_answer_sent_before_the_body_was_read_reaches_a_client_still_sending_it() {
    use std::io::{Read, Write};
    let s = setup();
    // All at once, and paced as an uplink sends it (a segment every few milliseconds: the
    // connection is let go between two of them, with nothing waiting to be read).
    for (size, chunk, pause) in [(4 << 20, 64 * 1024, 0), (300 * 1460, 1460, 3)] {
        let mut conn = std::net::TcpStream::connect(("127.0.0.1", s.gw.port)).expect("connect");
        conn.write_all(
            format!("POST /nowhere HTTP/1.1\r\nHost: h\r\nContent-Length: {size}\r\n\r\n")
                .as_bytes(),
        )
        .expect("head");
        let chunk = vec![b'x'; chunk];
        let mut sent = 0;
        while sent < size {
            conn.write_all(&chunk)
                .unwrap_or_else(|e| panic!("the body's write failed after {sent} bytes: {e}"));
            sent += chunk.len();
            std::thread::sleep(std::time::Duration::from_millis(pause));
        }
        conn.shutdown(std::net::Shutdown::Write).expect("shutdown");
        let mut answer = Vec::new();
        let read = conn.read_to_end(&mut answer);
        let text = String::from_utf8_lossy(&answer);
        assert!(read.is_ok(), "the connection was reset: {read:?} {text}");
        assert!(text.starts_with("HTTP/1.1 404"), "{text}");
    }
}

/// A chunked body whose framing breaks while the client still sends it (a chunk size that is
/// no number, a chunk extension past its limit) is answered `400` and the rest read and
/// discarded before the close, as for an answer made before the body was read: the body was
/// done for the parser, the connection closed with bytes unread, and the client's writes
/// failed before it read the 400.
#[test]
fn a_body_whose_framing_broke_is_read_on_before_the_close() {
    use std::io::{Read, Write};
    // An upstream that reads what it is sent and never answers: the answer is the gateway's
    // 400 for the body.
    let reader = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = reader.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for conn in reader.incoming() {
            let Ok(mut conn) = conn else { continue };
            std::thread::spawn(move || {
                let mut buf = [0u8; 65536];
                while matches!(conn.read(&mut buf), Ok(n) if n > 0) {}
            });
        }
    });
    let dir = ConfigDir::new(&format!(
        "http: {{port: ${{PORT}}}}\nadmin: {{port: ${{ADMIN_PORT}}, host: 127.0.0.1}}\napiEndpoints:\n  up: {{paths: '/up/*'}}\nserviceEndpoints:\n  reader: {{url: 'http://127.0.0.1:{port}'}}\npolicies: [proxy]\npipelines:\n  up: {{apiEndpoints: [up], policies: [{{proxy: {{action: {{serviceEndpoint: reader}}}}}}]}}\n"
    ));
    let gw = GatewayProcess::start(&dir);
    let long_extension = format!("5;{}", "x".repeat(300 * 1024));
    for start in ["zz\r\n", long_extension.as_str()] {
        let mut conn = std::net::TcpStream::connect(("127.0.0.1", gw.port)).expect("connect");
        conn.write_all(b"POST /up/x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n")
            .expect("head");
        let mut body = start.as_bytes().to_vec();
        body.extend(std::iter::repeat_n(b'y', 300 * 1024));
        for (i, piece) in body.chunks(16 * 1024).enumerate() {
            conn.write_all(piece).unwrap_or_else(|e| {
                panic!("{}: the body's write failed at piece {i}: {e}", &start[..2])
            });
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        conn.shutdown(std::net::Shutdown::Write).expect("shutdown");
        let mut answer = Vec::new();
        let read = conn.read_to_end(&mut answer);
        let text = String::from_utf8_lossy(&answer);
        assert!(read.is_ok(), "{}: reset: {read:?} {text}", &start[..2]);
        assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    }
}

/// What can never become an HTTP/1 head — an HTTP/0.9 request line, a TLS handshake on the
/// plain port, bare CR line ends — is answered `400` at once; it waited out the header
/// timeout (10 s) for a blank line that never comes, then got a `408`.
#[test]
fn what_is_no_http_is_refused_at_once() {
    use std::io::{Read, Write};
    use std::time::{Duration, Instant};
    let s = setup();
    for sent in [
        &b"GET /raw/x\r\n"[..],
        b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03",
        b"GET /raw/x HTTP/1.1\rHost: h\r",
    ] {
        let mut conn = std::net::TcpStream::connect(("127.0.0.1", s.gw.port)).expect("connect");
        conn.set_read_timeout(Some(Duration::from_secs(8)))
            .expect("timeout");
        let started = Instant::now();
        conn.write_all(sent).expect("send");
        let mut answer = [0u8; 12];
        let read = conn.read_exact(&mut answer);
        assert!(read.is_ok(), "{}: {read:?}", sent.escape_ascii());
        assert_eq!(&answer, b"HTTP/1.1 400", "{}", sent.escape_ascii());
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{}: answered after {:?}",
            sent.escape_ascii(),
            started.elapsed()
        );
    }
    // A control character in a target is refused (it was escaped, `%00`, and proxied), and
    // so is `*` but for OPTIONS (it was routed as a path); a space is escaped and served.
    for (target, status) in [
        ("/raw/a\u{0}b", 400),
        ("/raw/a\tb", 400),
        ("/raw/a\u{7f}", 400),
        ("*", 400),
        ("/raw/a b", 200),
    ] {
        for method in ["GET", "POST"] {
            let r = support::request(
                s.gw.port,
                &format!("{method} {target} HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"),
                false,
            );
            assert_eq!(r.status, status, "{method} {}", target.escape_debug());
        }
    }
    // A HEAD refused so gets the head of the 400 without its text (RFC 9110 §9.3.2): as an
    // HTTP/0.9 line, with a version in lower case, with `*` for a target.
    for sent in [
        &b"HEAD /raw/x\r\n"[..],
        b"HEAD /raw/x http/1.1\r\nHost: h\r\n\r\n",
        b"HEAD * HTTP/1.1\r\nHost: h\r\n\r\n",
    ] {
        let mut conn = std::net::TcpStream::connect(("127.0.0.1", s.gw.port)).expect("connect");
        conn.set_read_timeout(Some(Duration::from_secs(8)))
            .expect("timeout");
        conn.write_all(sent).expect("send");
        let mut answer = Vec::new();
        let _ = conn.read_to_end(&mut answer);
        let text = String::from_utf8_lossy(&answer);
        assert!(
            text.starts_with("HTTP/1.1 400 "),
            "{}: {text}",
            sent.escape_ascii()
        );
        assert!(
            text.ends_with("\r\n\r\n"),
            "{}: a body: {text}",
            sent.escape_ascii()
        );
    }
    // A head still on its way is waited for.
    assert_eq!(get(s.gw.port, "GET", "/raw/x", &[]).status, 200);
}

/// A client's `Expect: 100-continue` is answered `100 Continue` once the pipeline let the
/// request through, and not sent upstream (as EG's Node and nginx answer it: forwarded, the
/// client waited a second for an upstream that sends none, curl's uploads among them); the
/// connection stays open for the next request.
#[test]
fn expect_continue_is_answered_by_the_gateway() {
    use std::io::{Read, Write};
    let s = setup();
    let mut c = support::client::connect(s.gw.port, 5);
    let body = "x".repeat(2000);
    let head = format!(
        "POST /raw/upload HTTP/1.1\r\nHost: h\r\nContent-Length: {}\r\nExpect: 100-continue\r\n\r\n",
        body.len()
    );
    c.write_all(head.as_bytes()).expect("head");
    c.set_read_timeout(Some(std::time::Duration::from_millis(800)))
        .expect("timeout");
    let mut interim = [0u8; 25];
    c.read_exact(&mut interim)
        .expect("the 100 Continue, before the body is sent");
    assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
    c.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .expect("timeout");
    c.write_all(body.as_bytes()).expect("body");
    let r = support::client::read_response(&mut c, false);
    assert_eq!(r.status, 200, "{}", r.text());
    let e = r.echoed();
    assert_eq!(e.0["body"].as_str().map(str::len), Some(body.len()));
    assert_eq!(e.header("expect"), None, "the Expect went upstream");
    assert_ne!(r.header("connection"), Some("close"), "{:?}", r.headers);
    c.write_all(b"GET /raw/again HTTP/1.1\r\nHost: h\r\n\r\n")
        .expect("next");
    let again = support::client::read_response(&mut c, false);
    assert_eq!(again.echoed().url(), "/raw/again");
    // One of an HTTP/1.0 client (which knows none) is not sent upstream either.
    let raw =
        "POST /raw/x HTTP/1.0\r\nHost: h\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\nok";
    let r = support::request(s.gw.port, raw, false);
    assert_eq!(r.status, 200);
    assert_eq!(r.echoed().header("expect"), None);
    // Another expectation is one the gateway cannot meet: 417, as EG answers it, and the
    // request goes nowhere; with `100-continue` among others it is met.
    let upstream_before = s.a.hits.load(std::sync::atomic::Ordering::SeqCst);
    let raw = "POST /raw/x HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\nExpect: foo\r\n\r\nok";
    let r = support::request(s.gw.port, raw, false);
    assert_eq!(r.status, 417, "{}", r.text());
    assert_eq!(r.text(), "Expectation Failed");
    assert_eq!(r.header("connection"), Some("close"));
    let upstream_after = s.a.hits.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(upstream_after, upstream_before, "the request went upstream");
    let mut c = support::client::connect(s.gw.port, 5);
    c.write_all(b"POST /raw/x HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\nExpect: foo, 100-Continue\r\n\r\n")
        .expect("head");
    c.read_exact(&mut interim).expect("the 100 Continue");
    assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
    c.write_all(b"ok").expect("body");
    let r = support::client::read_response(&mut c, false);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.echoed().0["body"].as_str(), Some("ok"));
}
