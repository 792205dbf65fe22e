//! Routing as EG does it (spec §2): Express path patterns, hosts, EG's order, fall-through,
//! methods, and the 404 answers — through the real binary.

mod support;

use support::{get, ConfigDir, GatewayProcess};

/// Every endpoint answers with its own name (terminate with status 200) so a test sees which
/// route took the request.
fn named(name: &str) -> String {
    format!("  {name}:\n    apiEndpoints: [{name}]\n    policies:\n      - terminate:\n          - action: {{statusCode: 200, message: {name}}}\n")
}

fn gateway(endpoints: &str, names: &[&str], extra_pipelines: &str) -> (ConfigDir, GatewayProcess) {
    let mut yml = String::from(
        "http:\n  port: ${PORT}\nadmin:\n  port: ${ADMIN_PORT}\n  host: 127.0.0.1\napiEndpoints:\n",
    );
    yml.push_str(endpoints);
    yml.push_str("policies: [terminate, log, response-transformer]\npipelines:\n");
    for n in names {
        yml.push_str(&named(n));
    }
    yml.push_str(extra_pipelines);
    let dir = ConfigDir::new(&yml);
    let gw = GatewayProcess::start(&dir);
    (dir, gw)
}

fn body_of(port: u16, path: &str, host: &str) -> String {
    let r = get(port, "GET", path, &[("Host", host)]);
    if r.status == 200 {
        r.text()
    } else {
        format!("{}", r.status)
    }
}

#[test]
fn express_path_table() {
    let (_d, gw) = gateway(
        "  lit: {paths: '/a1'}\n  star: {paths: '/a2/*'}\n  wms: {paths: '/wms*'}\n  user: {paths: '/users/:id'}\n",
        &["lit", "star", "wms", "user"],
        "",
    );
    let cases = [
        ("/a1", "lit"),
        ("/a1/", "lit"),
        ("/a1/new", "404"),
        ("/A1", "lit"),
        ("/a2/", "star"),
        ("/a2/x/y", "star"),
        ("/a2", "404"),
        ("/wms", "wms"),
        ("/wmsfoo", "wms"),
        ("/wms/a/b", "wms"),
        ("/WMS/a?SERVICE=WMS", "wms"),
        ("/wm", "404"),
        ("/users/1", "user"),
        ("/users/", "404"),
        ("/users/1/x", "404"),
    ];
    for (path, want) in cases {
        assert_eq!(body_of(gw.port, path, "localhost"), want, "path {path}");
    }
}

#[test]
fn host_globs_regexes_and_group_order() {
    // Groups in order of first appearance: *.g.test, '*', the regex, exact.test.
    let (_d, gw) = gateway(
        "  glob: {host: '*.g.test', paths: '/o/*'}\n  any: {host: '*', paths: '/o/*'}\n  rx: {hostRegex: '(x|y)\\.example\\.org', paths: '/r/*'}\n  exact: {host: 'exact.test', paths: ['/o/*', '/e/*']}\n  catchall: {host: 'catch.test'}\n",
        &["glob", "any", "rx", "exact", "catchall"],
        "",
    );
    let p = gw.port;
    assert_eq!(body_of(p, "/o/1", "a.g.test"), "glob");
    assert_eq!(body_of(p, "/o/1", "A.G.TEST:8080"), "glob");
    assert_eq!(body_of(p, "/o/1", "g.test"), "any", "`*` needs one label");
    assert_eq!(
        body_of(p, "/o/1", "b.a.g.test"),
        "any",
        "`*` is exactly one label"
    );
    // The '*' group was registered before exact.test's, so it wins for /o/*.
    assert_eq!(body_of(p, "/o/1", "exact.test"), "any");
    assert_eq!(body_of(p, "/e/1", "exact.test"), "exact");
    assert_eq!(body_of(p, "/e/1", "other.test"), "404");
    assert_eq!(body_of(p, "/r/1", "X.example.org:9000"), "rx");
    assert_eq!(
        body_of(p, "/r/1", "xx.example.org"),
        "404",
        "hostRegex is anchored"
    );
    assert_eq!(
        body_of(p, "/anything/at/all", "catch.test"),
        "catchall",
        "no paths = every path"
    );
    // Without a Host header only host-less routes can match.
    let r = support::request(p, "GET /o/1 HTTP/1.0\r\n\r\n", false);
    assert_eq!(r.text(), "any");
}

#[test]
fn fall_through_last_pipeline_wins_and_no_pipeline() {
    let extra = "  first:\n    apiEndpoints: [f1]\n    policies:\n      - response-transformer:\n          - action: {headers: {add: {X-First: \"'yes'\"}}}\n      - log:\n          - action: {message: 'passing ${req.url}'}\n  dupA:\n    apiEndpoints: [dup]\n    policies:\n      - terminate:\n          - action: {statusCode: 201, message: one}\n  dupB:\n    apiEndpoints: [dup]\n    policies:\n      - terminate:\n          - action: {statusCode: 202, message: two}\n";
    let (_d, gw) = gateway(
        "  f1: {paths: '/f/*'}\n  f2: {paths: '/f/*'}\n  dup: {paths: '/dup/*'}\n  orphan: {paths: '/orphan'}\n",
        &["f2"],
        extra,
    );
    let r = get(gw.port, "GET", "/f/x", &[]);
    assert_eq!(
        (r.status, r.text().as_str()),
        (200, "f2"),
        "falls through to the next route"
    );
    assert_eq!(
        r.header("x-first"),
        Some("yes"),
        "headers set before falling through stay"
    );
    let r = get(gw.port, "GET", "/dup/x", &[]);
    assert_eq!(
        (r.status, r.text().as_str()),
        (202, "two"),
        "the last pipeline listing an endpoint wins"
    );
    let r = get(gw.port, "GET", "/orphan", &[]);
    assert_eq!(r.status, 404);
    assert_eq!(r.text(), "Not Found");
    assert_eq!(r.header("content-type"), Some("text/plain; charset=utf-8"));
}

#[test]
fn not_found_bodies_and_head() {
    let (_d, gw) = gateway("  only: {paths: '/only'}\n", &["only"], "");
    let r = get(gw.port, "GET", "/nope?x=1", &[]);
    assert_eq!(r.status, 404);
    assert_eq!(
        r.text(),
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>Error</title>\n</head>\n<body>\n<pre>Cannot GET /nope</pre>\n</body>\n</html>\n"
    );
    assert_eq!(r.header("content-type"), Some("text/html; charset=utf-8"));
    assert_eq!(
        r.header("content-security-policy"),
        Some("default-src 'none'")
    );
    assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(r.header("content-length"), Some("143"));
    let r = get(gw.port, "GET", "/a'{b}|^", &[]);
    assert!(
        r.text().contains("<pre>Cannot GET /a&#39;%7Bb%7D|^</pre>"),
        "{}",
        r.text()
    );
    // A request line with raw `<` is malformed: a 400, not a crash.
    assert_eq!(get(gw.port, "GET", "/a<b>", &[]).status, 400);
    let r = get(gw.port, "HEAD", "/nope", &[]);
    assert_eq!(r.status, 404);
    assert_eq!(r.header("content-length"), Some("144"));
    assert!(r.body.is_empty());
}

#[test]
fn methods_and_head() {
    let (_d, gw) = gateway(
        "  m: {paths: '/m/*', methods: 'GET,POST'}\n  arr: {paths: '/arr/*', methods: [put]}\n  w: {paths: '/w/*', methods: [DELETE]}\n  r: {paths: '/w/*'}\n",
        &["m", "arr", "w", "r"],
        "",
    );
    // A method in lower case would pass by `methods` (those are in capitals) to another
    // route: refused, as EG refuses it.
    assert_eq!(get(gw.port, "DELETE", "/w/x", &[]).text(), "w");
    assert_eq!(get(gw.port, "GET", "/w/x", &[]).text(), "r");
    // So is a method EG's parser (Node's) does not know; one it knows is routed.
    for method in ["delete", "get", "Post", "FOO", "GETX", "M-SEARCHX"] {
        let r = get(gw.port, method, "/w/x", &[("Content-Length", "0")]);
        assert_eq!(
            (r.status, r.text().as_str()),
            (400, "Bad Request"),
            "{method}"
        );
    }
    for method in ["PROPFIND", "PURGE", "M-SEARCH"] {
        let r = get(gw.port, method, "/w/x", &[("Content-Length", "0")]);
        assert_eq!((r.status, r.text().as_str()), (200, "r"), "{method}");
    }
    assert_eq!(get(gw.port, "GET", "/m/x", &[]).text(), "m");
    assert_eq!(
        get(gw.port, "POST", "/m/x", &[("Content-Length", "0")]).text(),
        "m"
    );
    let head = get(gw.port, "HEAD", "/m/x", &[]);
    assert_eq!(head.status, 200, "a GET route answers HEAD");
    assert!(head.body.is_empty());
    let put = get(gw.port, "PUT", "/m/x", &[("Content-Length", "0")]);
    assert_eq!(put.status, 404);
    assert!(put.text().contains("Cannot PUT /m/x"));
    assert_eq!(
        get(gw.port, "PUT", "/arr/x", &[("Content-Length", "0")]).text(),
        "arr"
    );
    assert_eq!(get(gw.port, "GET", "/arr/x", &[]).status, 404);
}

#[test]
fn path_regex_is_unanchored_case_sensitive_and_ignores_query() {
    let (_d, gw) = gateway("  rx: {pathRegex: '^/re/[0-9]+$'}\n", &["rx"], "");
    assert_eq!(body_of(gw.port, "/re/12", "h"), "rx");
    assert_eq!(body_of(gw.port, "/re/12?x=1", "h"), "rx");
    assert_eq!(body_of(gw.port, "/re/12/", "h"), "404");
    assert_eq!(body_of(gw.port, "/RE/12", "h"), "404");
}

#[test]
fn healthcheck_answers_before_pipelines() {
    let (_d, gw) = gateway("  all: {}\n", &["all"], "");
    let r = get(gw.port, "GET", "/healthcheck", &[("Host", "anything.test")]);
    assert_eq!((r.status, r.text().as_str()), (200, "OK"));
    assert_eq!(r.header("content-type"), Some("text/plain; charset=utf-8"));
    assert_eq!(body_of(gw.port, "/other", "h"), "all");
}

/// Repeated slashes are made one before routing, as the proxy's join makes them one upstream,
/// and escapes of unreserved characters decoded, as an upstream decodes them: `//admin/x` and
/// `/%61dmin/x` are routed as `/admin/x`, to the endpoint its upstream path belongs to, not to
/// a catch-all (which proxied them to `/admin/x` unauthorised). A query's `//` stays.
#[test]
fn repeated_slashes_route_as_one() {
    let (_d, gw) = gateway(
        "  admin: {paths: '/admin/*'}\n  all: {paths: '/*'}\n",
        &["admin", "all"],
        "",
    );
    for path in [
        "/admin/x",
        "//admin/x",
        "///admin//x",
        "/admin//x?u=http://h//y",
        // Escapes of unreserved characters, decoded (an upstream decodes them).
        "/%61dmin/x",
        "/admi%6E/x",
    ] {
        assert_eq!(body_of(gw.port, path, "h"), "admin", "{path}");
    }
    assert_eq!(body_of(gw.port, "/other//x", "h"), "all");
}
