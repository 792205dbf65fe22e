//! Kargo's storage route against a real S3-compatible server that checks SigV4 signatures (moto):
//! providers and the default one, streaming, Range → 206, conditional requests → 304, HEAD,
//! S3's errors with their real status (403 for a wrong secret, 404, 416), bad paths, and the
//! route reached through a gateway pipeline as Kargo's `/s3/*` endpoint does.

mod support;

use support::s3::S3Server;
use support::{get, ConfigDir, GatewayProcess};

/// Kargo's storage endpoint: `/s3/*` proxied to the route on the admin port.
const STORAGE_ROUTE: &str = "http: {port: ${PORT}}\nadmin: {port: ${ADMIN_PORT}, host: 127.0.0.1}\napiEndpoints:\n  storage: {paths: '/s3/*', scopes: []}\nserviceEndpoints:\n  storage: {url: 'http://127.0.0.1:${ADMIN_PORT}/s3'}\npolicies: [proxy]\npipelines:\n  storage: {apiEndpoints: [storage], policies: [{proxy: [{action: {serviceEndpoint: storage, changeOrigin: true, stripPath: true}}]}]}\n";

fn gateway(s3: &S3Server) -> (ConfigDir, GatewayProcess) {
    let dir = ConfigDir::new(STORAGE_ROUTE);
    dir.write(
        "system.config.yml",
        &format!(
            "db: {{redis: {{emulate: true}}}}\nplugins:\n  storage:\n    package: './plugins/storage/manifest.js'\n    endpointName: /s3\n    providers:\n      local:\n        endpoint: 'http://127.0.0.1:{p}'\n        accessKeyId: {k}\n        secretAccessKey: {s}\n        default: true\n      forged:\n        endpoint: 'http://127.0.0.1:{p}'\n        accessKeyId: {k}\n        secretAccessKey: not-the-secret\n",
            p = s3.port,
            k = s3.access_key,
            s = s3.secret_key
        ),
    );
    let data = dir.path.join("data").display().to_string();
    let gw = GatewayProcess::start_with(&dir, &["--data-dir", &data], &[]);
    (dir, gw)
}

/// Keys S3 signs in their encoded form: percent-encoded by the client (a space, a letter
/// outside ASCII, parentheses) or not (parentheses, `+`, `!`, which the gateway encodes as S3's
/// signature does), and with an empty segment (`//`).
#[test]
fn keys_with_encoded_characters_and_empty_segments() {
    let s3 = S3Server::start(&["tiles"]);
    // (the key as stored, as the client asks for it)
    let keys = [
        ("a%20b.png", "a%20b.png"),
        ("%C3%A9t%C3%A9.png", "%C3%A9t%C3%A9.png"),
        ("dir//double.png", "dir//double.png"),
        ("a%281%29.png", "a(1).png"),
        ("b%28c%29.png", "b%28c%29.png"),
        ("d%2Be%21f.png", "d+e!f.png"),
    ];
    for (i, (stored, _)) in keys.iter().enumerate() {
        s3.put("tiles", stored, "image/png", format!("tile {i}").as_bytes());
    }
    let (_dir, gw) = gateway(&s3);
    for (i, (_, asked)) in keys.iter().enumerate() {
        let r = get(gw.admin_port, "GET", &format!("/s3/tiles/{asked}"), &[]);
        assert_eq!((r.status, r.text()), (200, format!("tile {i}")), "{asked}");
    }
}

/// A read with a body is refused, on the admin port and through a pipeline, the body never
/// reaching the provider (it went, unsigned, framed as chunked: S3 answers that `501`); a
/// `Content-Length: 0`, as some clients send on a GET, is no body.
#[test]
fn a_read_with_a_body_is_refused() {
    use std::io::{Read, Write};
    let s3 = S3Server::start(&["tiles"]);
    s3.put("tiles", "t.png", "image/png", b"tile");
    let (_dir, gw) = gateway(&s3);
    for port in [gw.admin_port, gw.port] {
        for (framing, body) in [
            ("Content-Length: 9\r\n", "BODYBYTES"),
            (
                "Transfer-Encoding: chunked\r\n",
                "9\r\nBODYBYTES\r\n0\r\n\r\n",
            ),
            ("Content-Length: 0\r\n", ""),
        ] {
            let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
            s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
                .expect("timeout");
            write!(
                s,
                "GET /s3/tiles/t.png HTTP/1.1\r\nHost: 127.0.0.1\r\n{framing}Connection: close\r\n\r\n{body}"
            )
            .expect("send");
            let mut answer = String::new();
            let _ = s.read_to_string(&mut answer);
            let status = if body.is_empty() { "200" } else { "400" };
            assert!(
                answer.starts_with(&format!("HTTP/1.1 {status}")),
                "{port} {framing}: {answer}"
            );
        }
    }
}

#[test]
fn objects_ranges_conditionals_and_errors() {
    let s3 = S3Server::start(&["tiles", "docs"]);
    let tile: Vec<u8> = (0..20480u32).map(|i| (i % 251) as u8).collect();
    s3.put("tiles", "12/2048/1361.png", "image/png", &tile);
    let big: Vec<u8> = (0..6 * 1024 * 1024u32).map(|i| (i % 253) as u8).collect();
    s3.put("docs", "big.bin", "application/octet-stream", &big);
    let (_dir, gw) = gateway(&s3);
    let a = gw.admin_port;

    // A named provider, and the default one when the first segment is a bucket.
    let r = get(a, "GET", "/s3/local/tiles/12/2048/1361.png", &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.body, tile);
    assert_eq!(r.header("content-type"), Some("image/png"));
    let etag = r.header("etag").expect("etag").to_string();
    assert_eq!(get(a, "GET", "/s3/tiles/12/2048/1361.png", &[]).body, tile);
    // Streamed: a 6 MiB object arrives whole.
    let r = get(a, "GET", "/s3/docs/big.bin", &[]);
    assert_eq!((r.status, r.body.len()), (200, big.len()));
    assert!(r.body == big);
    // Range → 206; conditional → 304; HEAD without the body.
    let r = get(
        a,
        "GET",
        "/s3/tiles/12/2048/1361.png",
        &[("Range", "bytes=0-9")],
    );
    assert_eq!((r.status, r.body.as_slice()), (206, &tile[..10]));
    assert_eq!(r.header("content-range"), Some("bytes 0-9/20480"));
    // A range under `If-Range` (a download resumed): the provider is not given the
    // condition, so the whole object comes, never a range of one changed since.
    let r = get(
        a,
        "GET",
        "/s3/tiles/12/2048/1361.png",
        &[("Range", "bytes=0-9"), ("If-Range", "\"an-older-version\"")],
    );
    assert_eq!((r.status, r.body.len()), (200, 20480));
    assert_eq!(
        get(
            a,
            "GET",
            "/s3/tiles/12/2048/1361.png",
            &[("If-None-Match", &etag)]
        )
        .status,
        304
    );

    let r = get(a, "HEAD", "/s3/tiles/12/2048/1361.png", &[]);
    assert_eq!((r.status, r.header("content-length")), (200, Some("20480")));
    // S3's errors with their real status.
    let r = get(a, "GET", "/s3/tiles/nope.png", &[]);
    assert_eq!(r.status, 404);
    assert!(r.text().contains("NoSuchKey"), "{}", r.text());
    assert_eq!(
        get(
            a,
            "GET",
            "/s3/tiles/12/2048/1361.png",
            &[("Range", "bytes=99999-")]
        )
        .status,
        416
    );
    let r = get(a, "GET", "/s3/forged/tiles/12/2048/1361.png", &[]);
    assert_eq!(r.status, 403, "a wrong secret: {}", r.text());
    assert!(r.text().contains("SignatureDoesNotMatch"), "{}", r.text());
    // Said in the gateway's log: the gateway's credentials are refused.
    assert!(
        gw.log_text()
            .contains("storage route: provider `forged` answered 403"),
        "{}",
        gw.log_text()
    );
    // Bad paths are answered at once.
    let r = get(a, "GET", "/s3/tiles", &[]);
    assert_eq!(
        (r.status, r.text().as_str()),
        (400, "expected /s3/[provider/]bucket/key")
    );
    assert_eq!(get(a, "GET", "/s3/", &[]).status, 400);
    let r = get(a, "DELETE", "/s3/tiles/12/2048/1361.png", &[]);
    assert_eq!((r.status, r.header("allow")), (405, Some("GET, HEAD")));
    // The rest of the Admin API is still there.
    assert_eq!(get(a, "GET", "/users", &[]).status, 200);
}

#[test]
fn through_a_gateway_pipeline() {
    let s3 = S3Server::start(&["tiles"]);
    s3.put("tiles", "a/b.png", "image/png", b"not really a png");
    let (_dir, gw) = gateway(&s3);
    let r = get(
        gw.port,
        "GET",
        "/s3/tiles/a/b.png",
        &[("Cookie", "session=secret")],
    );
    assert_eq!((r.status, r.text().as_str()), (200, "not really a png"));
    let r = get(
        gw.port,
        "GET",
        "/s3/local/tiles/a/b.png",
        &[("Range", "bytes=4-9")],
    );
    assert_eq!((r.status, r.text().as_str()), (206, "really"));
    // The parameters forwarded go as S3 signs them (a `/`, `:`, `+` or `(` left raw failed its
    // signature check): the provider looks for the version asked, its signature is good.
    for q in [
        "versionId=a+b",
        "versionId=a:b,c;d",
        "versionId=(b)!&y",
        "versionId=a%2fb",
        "v=2&partNumber=1",
    ] {
        let r = get(gw.admin_port, "GET", &format!("/s3/tiles/a/b.png?{q}"), &[]);
        // (The provider's answer: the object's part, or its word that no such version is.)
        let answered = (r.status == 206 && r.text() == "not really a png")
            || (r.status == 404 && r.text().contains("NoSuchVersion"));
        assert!(answered, "{q}: {} {}", r.status, r.text());
    }
    // What would make the provider answer something else, or override its answer's headers,
    // is refused (read with the gateway's keys, for any client the pipeline lets through).
    for q in [
        "acl",
        "tagging",
        "response-content-type=text/html",
        "versionId=1&torrent",
    ] {
        let r = get(gw.admin_port, "GET", &format!("/s3/tiles/a/b.png?{q}"), &[]);
        assert_eq!(r.status, 400, "{q}: {}", r.text());
        assert!(r.text().contains("is not forwarded"), "{q}: {}", r.text());
    }
    // The refusal names what was sent, as text: never markup run on the gateway's origin
    // (the route is reached through a pipeline, from pages too).
    let r = get(
        gw.admin_port,
        "GET",
        "/s3/tiles/a/b.png?response-%3Cimg%20src%3Dx%20onerror%3Dalert(1)%3E=1",
        &[],
    );
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("text/plain; charset=utf-8"));
    assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
    // A web page reading the buckets through a name pointed at this machine (DNS
    // rebinding, a browser's `Host` and `Origin` its own): refused. A request by address or
    // `localhost` (the gateway's step, a tool) is not.
    let rebound = format!("rebind.example:{}", gw.admin_port);
    let r = get(
        gw.admin_port,
        "GET",
        "/s3/tiles/a/b.png",
        &[
            ("Host", rebound.as_str()),
            ("Origin", &format!("http://{rebound}")),
        ],
    );
    assert_eq!(r.status, 403, "{}", r.text());
    let by_address = format!("127.0.0.1:{}", gw.admin_port);
    let r = get(
        gw.admin_port,
        "GET",
        "/s3/tiles/a/b.png",
        &[("Host", by_address.as_str())],
    );
    assert_eq!(r.status, 200);
    // A page of another site read by a browser on this machine: refused on the admin port,
    // as the Admin API's other routes refuse it; through the gateway's pipeline (which
    // forwards the page's `Origin`) answered.
    let page = [
        ("Origin", "http://pages.example"),
        ("Sec-Fetch-Site", "cross-site"),
    ];
    for headers in [&page[..], &page[..1], &page[1..]] {
        let r = get(gw.admin_port, "GET", "/s3/tiles/a/b.png", headers);
        assert_eq!(r.status, 403, "{headers:?}: {}", r.text());
        let r = get(gw.port, "GET", "/s3/tiles/a/b.png", headers);
        assert_eq!(r.status, 200, "{headers:?}: {}", r.text());
    }
    // Nor can the page send the gateway's pass itself: its preflight is refused.
    let r = get(
        gw.admin_port,
        "OPTIONS",
        "/s3/tiles/a/b.png",
        &[
            ("Origin", "http://pages.example"),
            ("Access-Control-Request-Method", "GET"),
            ("Access-Control-Request-Headers", "x-tollgate-storage-pass"),
        ],
    );
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(r.header("access-control-allow-origin"), None);
}

/// The gateway of the config in `dir` with `--admin-token T0KEN`, the storage route at
/// `endpoint_name` to `s3`, and one consumer of key `K:S`.
fn with_token_and_a_key(dir: &ConfigDir, s3: &S3Server, endpoint_name: &str) -> GatewayProcess {
    dir.write(
        "system.config.yml",
        &format!(
            "db: {{redis: {{emulate: true}}}}\nplugins:\n  storage:\n    endpointName: {endpoint_name}\n    providers:\n      local:\n        endpoint: 'http://127.0.0.1:{p}'\n        accessKeyId: {k}\n        secretAccessKey: {s}\n        default: true\n",
            p = s3.port,
            k = s3.access_key,
            s = s3.secret_key
        ),
    );
    dir.write(
        "consumers.json",
        r#"{"scopes": [], "users": {"u": {"app": {"type": "key-auth", "keyId": "K", "keySecret": "S"}}}}"#,
    );
    let data = dir.path.join("data").display().to_string();
    let consumers = dir.file("consumers.json");
    GatewayProcess::start_with(
        dir,
        &[
            "--data-dir",
            &data,
            "--populate",
            &consumers,
            "--admin-token",
            "T0KEN",
        ],
        &[],
    )
}

/// With `--admin-token`, the route answers the token, or the gateway's own `proxy` step with a
/// request a step before it authenticated: Kargo's example also proxies every path of the
/// Host `express-gateway` to the Admin API, authenticating nothing, and through it anyone
/// who reached the gateway's port read the buckets with the gateway's keys.
#[test]
fn with_an_admin_token_only_authenticated_pipelines_reach_the_route() {
    let s3 = S3Server::start(&["tiles"]);
    s3.put("tiles", "a/b.png", "image/png", b"not really a png");
    let dir = ConfigDir::new(
        "http: {port: ${PORT}}\nadmin: {port: ${ADMIN_PORT}, host: 127.0.0.1}\napiEndpoints:\n  admin: {host: 'express-gateway'}\n  storage: {host: '*', paths: '/s3/*'}\nserviceEndpoints:\n  admin: {url: 'http://localhost:${ADMIN_PORT}'}\n  storage: {url: 'http://127.0.0.1:${ADMIN_PORT}/s3'}\npolicies: [key-auth, proxy]\npipelines:\n  admin: {apiEndpoints: [admin], policies: [{proxy: [{action: {serviceEndpoint: admin, changeOrigin: true, stripPath: true}}]}]}\n  storage: {apiEndpoints: [storage], policies: [{key-auth: {}}, {proxy: [{action: {serviceEndpoint: storage, changeOrigin: true, stripPath: true}}]}]}\n",
    );
    let gw = with_token_and_a_key(&dir, &s3, "/s3");
    let object = "/s3/tiles/a/b.png";
    // Through the authenticating pipeline.
    let r = get(gw.port, "GET", object, &[("Authorization", "apiKey K:S")]);
    assert_eq!((r.status, r.text().as_str()), (200, "not really a png"));
    assert_eq!(get(gw.port, "GET", object, &[]).status, 401);
    // Through the pipeline that authenticates nothing: refused, a forged pass too.
    for forged in [None, Some("0123abcd")] {
        let mut h = vec![("Host", "express-gateway")];
        if let Some(f) = forged {
            h.push(("X-Tollgate-Storage-Pass", f));
        }
        let r = get(gw.port, "GET", object, &h);
        assert_eq!(r.status, 401, "{forged:?}: {}", r.text());
    }
    // The Admin API's own routes through it, as before: the token is asked for.
    assert_eq!(
        get(gw.port, "GET", "/users", &[("Host", "express-gateway")]).status,
        401
    );
    // On the admin port: the token.
    assert_eq!(get(gw.admin_port, "GET", object, &[]).status, 401);
    let r = get(
        gw.admin_port,
        "GET",
        object,
        &[("Authorization", "Bearer T0KEN")],
    );
    assert_eq!((r.status, r.text().as_str()), (200, "not really a png"));
}

/// The storage pass the proxy step adds only for a consumer decides the route's answer: a
/// request without one (a `passThrough` authentication, a pipeline that authenticates nothing)
/// never gets the object an authenticated one had stored.
#[test]
fn a_cached_object_is_not_served_to_requests_the_route_refuses() {
    let s3 = S3Server::start(&["tiles"]);
    s3.put("tiles", "a/b.png", "image/png", b"not really a png");
    let dir = ConfigDir::new(
        "http: {port: ${PORT}}\nadmin: {port: ${ADMIN_PORT}, host: 127.0.0.1}\napiEndpoints:\n  storage: {paths: '/s3/*'}\n  open: {paths: '/open/*'}\nserviceEndpoints:\n  storage: {url: 'http://127.0.0.1:${ADMIN_PORT}/s3'}\npolicies: [key-auth, cache, proxy]\npipelines:\n  storage: {apiEndpoints: [storage], policies: [{key-auth: [{action: {passThrough: true}}]}, {cache: [{action: {ttl: 300}}]}, {proxy: [{action: {serviceEndpoint: storage, changeOrigin: true, stripPath: true}}]}]}\n  open: {apiEndpoints: [open], policies: [{cache: [{action: {ttl: 300}}]}, {proxy: [{action: {serviceEndpoint: storage, changeOrigin: true, stripPath: true}}]}]}\n",
    );
    let gw = with_token_and_a_key(&dir, &s3, "/s3/");
    // (`endpointName: /s3/` is the route `/s3`: its objects at `/s3/bucket/key`.)
    let (object, open) = ("/s3/tiles/a/b.png", "/open/tiles/a/b.png");
    assert_eq!(get(gw.port, "GET", object, &[]).status, 401);
    assert_eq!(get(gw.port, "GET", open, &[]).status, 401);
    let r = get(gw.port, "GET", object, &[("Authorization", "apiKey K:S")]);
    assert_eq!((r.status, r.text().as_str()), (200, "not really a png"));
    let r = get(gw.port, "GET", object, &[("Authorization", "apiKey K:S")]);
    assert_eq!(r.header("x-cache-status"), Some("HIT"));
    for path in [object, open] {
        let r = get(gw.port, "GET", path, &[]);
        assert_eq!(r.status, 401, "{path}: {:?}", r.header("x-cache-status"));
    }
    // A purge of the URL finds the object stored for a consumer (its key holds the pass).
    let body = format!(r#"{{"url": "{object}"}}"#);
    let purged = support::request(
        gw.admin_port,
        &format!("POST /tollgate/cache/purge HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer T0KEN\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len()),
        false,
    );
    assert_eq!(purged.status, 200, "{}", purged.text());
    assert_eq!(
        support::json_body(&purged)["purged"],
        1,
        "{}",
        purged.text()
    );
    let r = get(gw.port, "GET", object, &[("Authorization", "apiKey K:S")]);
    assert_eq!(r.header("x-cache-status"), Some("MISS"));
}

#[test]
fn the_legacy_s3_plugin_settings() {
    let s3 = S3Server::start(&["maps"]);
    s3.put("maps", "world.tif", "image/tiff", b"TIFF bytes");
    let dir =
        ConfigDir::new("http: {port: ${PORT}}\nadmin: {port: ${ADMIN_PORT}, host: 127.0.0.1}\n");
    dir.write(
        "system.config.yml",
        "db: {redis: {emulate: true}}\nplugins:\n  s3:\n    package: './plugins/s3/manifest.js'\n",
    );
    let data = dir.path.join("data").display().to_string();
    let endpoint = format!("http://127.0.0.1:{}", s3.port);
    let gw = GatewayProcess::start_with(
        &dir,
        &["--data-dir", &data],
        &[
            ("S3_ACCESS_KEY", &s3.access_key),
            ("S3_SECRET_ACCESS_KEY", &s3.secret_key),
            ("S3_ENDPOINT", &endpoint),
        ],
    );
    let r = get(gw.admin_port, "GET", "/s3/maps/world.tif", &[]);
    assert_eq!((r.status, r.text().as_str()), (200, "TIFF bytes"));
    assert_eq!(r.header("content-type"), Some("image/tiff"));
    // Kargo's route is `/s3/:bucket/*`: no provider in the path, nor in what it says.
    let r = get(gw.admin_port, "GET", "/s3/maps/", &[]);
    assert_eq!(
        (r.status, r.text().as_str()),
        (400, "expected /s3/bucket/key")
    );
}

/// The client's credentials in the query (Kargo's `?jwt=`) are the gateway's, not the
/// provider's: they do not reach it, and a failure to reach it is logged without them.
#[test]
fn the_clients_credentials_reach_no_provider_and_no_log() {
    let echo = support::EchoUpstream::start("s3");
    let dir = ConfigDir::new(STORAGE_ROUTE);
    let closed = support::free_port();
    dir.write(
        "system.config.yml",
        &format!(
            "db: {{redis: {{emulate: true}}}}\nplugins:\n  storage:\n    package: './plugins/storage/manifest.js'\n    endpointName: /s3\n    providers:\n      echo:\n        endpoint: '{}'\n        accessKeyId: AK\n        secretAccessKey: SK\n        default: true\n      gone:\n        endpoint: 'http://127.0.0.1:{closed}'\n        accessKeyId: AK\n        secretAccessKey: SK\n",
            echo.url("")
        ),
    );
    let data = dir.path.join("data").display().to_string();
    let gw = GatewayProcess::start_with(&dir, &["--data-dir", &data], &[]);
    let token = "eyJhbGciOiJIUzI1NiJ9.c2VjcmV0.tok3n";
    let r = get(
        gw.port,
        "GET",
        &format!("/s3/tiles/a.png?jwt={token}&versionId=3&v=9&partNumber=2"),
        &[],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = support::echo::Echoed::parse(&r.body);
    // (Only what picks the object goes: a cache buster is left out.)
    assert_eq!(seen.url(), "/tiles/a.png?versionId=3&partNumber=2");
    let r = get(
        gw.port,
        "GET",
        &format!("/s3/gone/tiles/a.png?jwt={token}"),
        &[],
    );
    assert_eq!(r.status, 502, "{}", r.text());
    // The failure's line is written once the answer went out.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let mut log = gw.log_text();
    while !log.contains("storage route: provider `gone`") {
        assert!(std::time::Instant::now() < deadline, "{log}");
        std::thread::sleep(std::time::Duration::from_millis(20));
        log = gw.log_text();
    }
    assert!(!log.contains(token), "{log}");
}

/// A provider that cannot be reached is a 502 whose head says the connection closes (it said
/// keep-alive, then closed); a read whose body stops coming is refused at once (a storage read
/// carries no body: it was a 408 after the body timeout, the body sent on as it came).
#[test]
fn a_provider_out_of_reach_is_a_502_that_closes_and_a_read_with_a_stalled_body_a_400() {
    let dir = ConfigDir::new(STORAGE_ROUTE);
    dir.write(
        "system.config.yml",
        "db: {redis: {emulate: true}}\nplugins:\n  storage:\n    endpointName: /s3\n    providers:\n      gone:\n        endpoint: 'http://127.0.0.1:1'\n        accessKeyId: k\n        secretAccessKey: s\n        default: true\n",
    );
    let data = dir.path.join("data").display().to_string();
    let gw = GatewayProcess::start_with(&dir, &["--data-dir", &data, "--body-timeout", "1"], &[]);
    let r = get(gw.admin_port, "GET", "/s3/tiles/a.png", &[]);
    assert_eq!(r.status, 502);
    assert_eq!(r.header("connection"), Some("close"), "{:?}", r.headers);
    // Said once per provider and kind of failure, folded while it repeats, as a warning: not
    // an error line per object.
    for i in 0..5 {
        assert_eq!(
            get(gw.admin_port, "GET", &format!("/s3/tiles/{i}.png"), &[]).status,
            502
        );
    }
    std::thread::sleep(std::time::Duration::from_millis(300));
    let log = gw.log_text();
    let said = "storage route: provider `gone`: ";
    let lines: Vec<&str> = log.lines().filter(|l| l.contains(said)).collect();
    assert_eq!(lines.len(), 1, "{log}");
    assert!(lines[0].ends_with("; answered 502"), "{log}");
    assert!(!log.contains("ERROR"), "{log}");
    // A provider that takes the connection and answers nothing; the client's body stops.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let silent_port = silent.local_addr().expect("addr").port();
    dir.write(
        "system.config.yml",
        &format!("db: {{redis: {{emulate: true}}}}\nplugins:\n  storage:\n    endpointName: /s3\n    providers:\n      silent:\n        endpoint: 'http://127.0.0.1:{silent_port}'\n        accessKeyId: k\n        secretAccessKey: s\n        default: true\n"),
    );
    drop(gw);
    let gw = GatewayProcess::start_with(&dir, &["--data-dir", &data, "--body-timeout", "1"], &[]);
    let text = support::send_until_close(
        gw.admin_port,
        b"GET /s3/tiles/a.png HTTP/1.1\r\nHost: localhost\r\nContent-Length: 10\r\n\r\nhalf",
    );
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    assert!(text.contains("a storage read carries no body"), "{text}");
    drop(silent);
}
