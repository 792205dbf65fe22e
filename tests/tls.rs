//! TLS on both sides: https upstreams (SNI, certificate verification, `secure: false`) and the
//! gateway's own `https` listener.

mod support;

use support::echo::Echoed;
use support::gateway::run_tollgate;
use support::tls::{https_gateway, tls_request, SelfSigned, TlsEchoUpstream};
use support::upstream::PyUpstream;
use support::{get, ConfigDir, EchoUpstream, GatewayProcess};

#[test]
fn https_upstream_is_verified_unless_secure_is_false() {
    let cert = SelfSigned::new();
    let up = TlsEchoUpstream::start("tls-up", &cert);
    let yml = format!(
        "http:\n  port: ${{PORT}}\nadmin:\n  port: ${{ADMIN_PORT}}\n  host: 127.0.0.1\napiEndpoints:\n  insecure: {{paths: '/insecure/*'}}\n  verified: {{paths: '/verified/*'}}\nserviceEndpoints:\n  up: {{url: 'https://localhost:{port}/base'}}\npolicies: [proxy]\npipelines:\n  a: {{apiEndpoints: [insecure], policies: [{{proxy: {{action: {{serviceEndpoint: up, secure: false, stripPath: true}}}}}}]}}\n  b: {{apiEndpoints: [verified], policies: [{{proxy: {{action: {{serviceEndpoint: up}}}}}}]}}\n",
        port = up.port
    );
    let dir = ConfigDir::new(&yml);
    let gw = GatewayProcess::start(&dir);
    let r = get(gw.port, "GET", "/insecure/x?y=1", &[]);
    let e = r.echoed();
    assert_eq!(e.upstream(), "tls-up");
    assert_eq!(e.url(), "/base/x?y=1");
    assert_eq!(e.header("host"), Some(format!("localhost:{}", up.port)));
    // A self-signed certificate is not trusted when verification is on.
    let r = get(gw.port, "GET", "/verified/x", &[]);
    assert_eq!((r.status, r.text().as_str()), (502, "Bad gateway."));
    // The log says why, as OpenSSL tells it (every TLS failure was the same line); written
    // once the exchange ended.
    let said = |log: &str| {
        log.lines().any(|l| {
            l.contains("upstream failure: api endpoint `verified`")
                && l.contains("tls (")
                && l.contains("certificate")
        })
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !said(&gw.log_text()) {
        assert!(std::time::Instant::now() < deadline, "{}", gw.log_text());
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Health checks verify an https url's certificate as its traffic does: with `secure: false`
/// (in the endpoint's `proxyOptions` or a proxy step) a self-signed upstream stays healthy
/// and in use; with verification on everywhere, it is taken out.
#[test]
fn health_checks_verify_certificates_as_the_traffic_does() {
    let cert = SelfSigned::new();
    let up = TlsEchoUpstream::start("tls-up", &cert);
    let check = "tollgate: {healthCheck: {path: /health, interval: 0.2, timeout: 0.5, unhealthyThreshold: 2, healthyThreshold: 2}}";
    for (endpoint, step, healthy) in [
        ("proxyOptions: {secure: false}, ", "", true),
        ("", ", secure: false", true),
        ("", "", false),
    ] {
        let yml = format!(
            "http: {{port: ${{PORT}}}}\nadmin: {{port: ${{ADMIN_PORT}}, host: 127.0.0.1}}\napiEndpoints:\n  t: {{paths: '/t/*'}}\nserviceEndpoints:\n  up: {{url: 'https://localhost:{port}', {endpoint}{check}}}\npolicies: [proxy]\npipelines:\n  a: {{apiEndpoints: [t], policies: [{{proxy: {{action: {{serviceEndpoint: up{step}}}}}}}]}}\n",
            port = up.port
        );
        let dir = ConfigDir::new(&yml);
        let gw = GatewayProcess::start(&dir);
        // Well past the checks that would take it out.
        std::thread::sleep(std::time::Duration::from_millis(1500));
        let case = format!("{endpoint:?} {step:?}");
        // Taken out, it is within a few seconds more on a busy machine.
        let metric = gw.metric_when(
            &format!(
                "tollgate_upstream_healthy{{service=\"up\",url=\"https://localhost:{}\"}}",
                up.port
            ),
            |v| v == f64::from(u8::from(healthy)),
        );
        if healthy {
            assert_eq!(metric, 1.0, "{case}: {}", gw.log_text());
            assert_eq!(get(gw.port, "GET", "/t/x", &[]).status, 200, "{case}");
        } else {
            assert_eq!(metric, 0.0, "{case}: {}", gw.log_text());
            assert_eq!(get(gw.port, "GET", "/t/x", &[]).status, 502, "{case}");
        }
    }
}

#[test]
fn https_listener_serves_with_the_default_certificate() {
    let up = EchoUpstream::start("plain-up");
    let (_dir, gw) = https_gateway(&format!(
        "apiEndpoints:\n  all: {{paths: '/t/*'}}\nserviceEndpoints:\n  up: {{url: '{up}'}}\npolicies: [proxy]\npipelines:\n  p: {{apiEndpoints: [all], policies: [{{proxy: {{action: {{serviceEndpoint: up, xfwd: true}}}}}}]}}\n",
        up = up.url("")
    ));
    let raw = tls_request(
        gw.port,
        "GET /t/secure HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    );
    assert!(raw.starts_with("HTTP/1.1 200"), "{raw}");
    let body = raw.split("\r\n\r\n").nth(1).unwrap_or("");
    let e = Echoed::parse(body.as_bytes());
    assert_eq!(e.url(), "/t/secure");
    assert_eq!(e.header("x-forwarded-proto").as_deref(), Some("https"));
    assert_eq!(e.header("x-forwarded-port").as_deref(), Some("443"));
}

/// A relative certificate and key path names the files in the config directory (as a jwt
/// step's key file), whatever the gateway's working directory: before, they were read from
/// the working directory only, and a config directory that held its certificate beside it
/// started only from inside it.
#[test]
fn relative_certificate_paths_are_read_from_the_config_directory() {
    // (Its certificate and key as `tls.crt` and `tls.key`, named here by relative paths.)
    let dir = support::tls::https_config(ConfigDir::empty(), "");
    dir.write(
        "gateway.config.yml",
        "https:\n  port: ${PORT}\n  tls:\n    default: {key: tls.key, cert: tls.crt}\napiEndpoints:\n  a: {paths: '/a'}\npolicies: [terminate]\npipelines:\n  p: {apiEndpoints: [a], policies: [{terminate: {action: {statusCode: 200, message: ok}}}]}\n",
    );
    assert!(
        !std::path::Path::new("tls.key").exists(),
        "the tests' working directory has no tls.key"
    );
    let gw = GatewayProcess::start(&dir);
    let raw = tls_request(
        gw.port,
        "GET /a HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    );
    assert!(raw.starts_with("HTTP/1.1 200"), "{raw}");
}

/// An https gateway proxying `/t/*` to `up`.
fn proxying_https_gateway(up: &EchoUpstream) -> (ConfigDir, GatewayProcess) {
    https_gateway(&format!(
        "apiEndpoints:\n  all: {{paths: '/t/*'}}\nserviceEndpoints:\n  up: {{url: '{up}'}}\npolicies: [proxy]\npipelines:\n  p: {{apiEndpoints: [all], policies: [{{proxy: {{action: {{serviceEndpoint: up}}}}}}]}}\n",
        up = up.url("")
    ))
}

/// Plain HTTP sent to the `https` listener is answered `400` saying so (as nginx does), not
/// closed without a word; TLS clients are served as before.
#[test]
fn plain_http_to_the_https_port_is_told_so() {
    use std::io::{Read, Write};
    let up = EchoUpstream::start("plain-up");
    let (_dir, gw) = proxying_https_gateway(&up);
    // What a plain request of `method` is answered, read to the close.
    let plain = |method: &str| {
        let mut conn = std::net::TcpStream::connect(("127.0.0.1", gw.port)).expect("connect");
        let ask = format!("{method} /t/plain HTTP/1.1\r\nHost: localhost\r\n\r\n");
        conn.write_all(ask.as_bytes()).expect("send");
        conn.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .expect("timeout");
        let mut answer = Vec::new();
        let read = conn.read_to_end(&mut answer);
        assert!(read.is_ok(), "{read:?}");
        String::from_utf8_lossy(&answer).into_owned()
    };
    let text = plain("GET");
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    assert!(
        text.ends_with("A plain HTTP request was sent to an HTTPS port"),
        "{text}"
    );
    // A HEAD gets the head alone (RFC 9110 §9.3.2).
    let text = plain("HEAD");
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    assert!(text.ends_with("Connection: close\r\n\r\n"), "{text}");
    let raw = tls_request(
        gw.port,
        "GET /t/secure HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    );
    assert!(raw.starts_with("HTTP/1.1 200"), "{raw}");
}

/// An answer made before the request's body was read reaches a client uploading over TLS too
/// (its connection lingers as a plain one does; the reset came under its TLS session).
#[test]
fn an_answer_before_the_body_reaches_a_client_uploading_over_tls() {
    use openssl::ssl::{SslConnector, SslMethod, SslVerifyMode};
    use std::io::{Read, Write};
    let up = EchoUpstream::start("plain-up");
    let (_dir, gw) = proxying_https_gateway(&up);
    let mut connector = SslConnector::builder(SslMethod::tls()).expect("connector");
    connector.set_verify(SslVerifyMode::NONE);
    let tcp = std::net::TcpStream::connect(("127.0.0.1", gw.port)).expect("connect");
    let mut tls = connector
        .build()
        .connect("localhost", tcp)
        .expect("handshake");
    let size = 2 << 20;
    tls.write_all(
        format!("POST /nowhere HTTP/1.1\r\nHost: localhost\r\nContent-Length: {size}\r\n\r\n")
            .as_bytes(),
    )
    .expect("head");
    let chunk = vec![b'x'; 16 * 1024];
    let mut sent = 0;
    while sent < size {
        tls.write_all(&chunk)
            .unwrap_or_else(|e| panic!("the body's write failed after {sent} bytes: {e}"));
        sent += chunk.len();
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    let mut answer = Vec::new();
    let _ = tls.read_to_end(&mut answer);
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 404"), "{text}");
}

/// A cached tile over the `https` listener: its body, kept in the memory tier's shared memory
/// for `sendfile` on plain connections, is written through TLS from memory, whole.
#[test]
fn a_cached_tile_is_answered_whole_over_the_https_listener() {
    let up = PyUpstream::start("tiles", 5.0);
    let (_dir, gw) = https_gateway(&format!(
        "apiEndpoints:\n  all: {{paths: '/t/*'}}\nserviceEndpoints:\n  up: {{url: '{up}'}}\npolicies: [cache, proxy]\npipelines:\n  p: {{apiEndpoints: [all], policies: [{{cache: {{action: {{ttl: 60}}}}}}, {{proxy: {{action: {{serviceEndpoint: up}}}}}}]}}\n",
        up = up.url("")
    ));
    let expected: String = "tlstile".chars().cycle().take(20000).collect();
    for status in ["MISS", "HIT", "HIT"] {
        let raw = tls_request(
            gw.port,
            "GET /t/unique/20000/tlstile HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
        );
        let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(
            head.to_ascii_lowercase()
                .contains(&format!("x-cache-status: {}", status.to_ascii_lowercase())),
            "{head}"
        );
        assert!(
            body == expected,
            "{status}: {} bytes, not the tile",
            body.len()
        );
    }
    assert_eq!(up.served(), 1);
}

/// EG's `https.tls` with several certificates: a client naming a host (SNI) gets the first
/// whose glob matches it, any other (or one naming none) the `default` one.
#[test]
fn the_certificate_is_chosen_by_the_name_the_client_asks_for() {
    use openssl::ssl::{SslConnector, SslMethod, SslVerifyMode};
    let dir = ConfigDir::empty();
    let certs: Vec<(&str, SelfSigned)> = ["a", "b", "default"]
        .into_iter()
        .map(|n| (n, SelfSigned::new()))
        .collect();
    for (n, c) in &certs {
        dir.write(&format!("{n}.crt"), &c.cert_pem());
        dir.write(&format!("{n}.key"), &c.key_pem());
    }
    let entry = |glob: &str, n: &str| {
        format!(
            "    '{glob}': {{key: '{}', cert: '{}'}}\n",
            dir.file(&format!("{n}.key")),
            dir.file(&format!("{n}.crt"))
        )
    };
    dir.write("system.config.yml", "db: {redis: {emulate: true}}\n");
    let config = |entries: String| {
        format!(
            "https:\n  port: ${{PORT}}\n  tls:\n{entries}apiEndpoints:\n  a: {{paths: '/a'}}\npolicies: [terminate]\npipelines:\n  p: {{apiEndpoints: [a], policies: [{{terminate: {{action: {{statusCode: 200, message: ok}}}}}}]}}\n"
        )
    };
    dir.write(
        "gateway.config.yml",
        &config(entry("*.a.test", "a") + &entry("b.test", "b") + &entry("default", "default")),
    );
    let gw = GatewayProcess::start(&dir);
    let served = |port: u16, sni: Option<&str>| {
        let mut connector = SslConnector::builder(SslMethod::tls()).expect("connector");
        connector.set_verify(SslVerifyMode::NONE);
        connector
            .set_alpn_protos(b"\x02h2\x08http/1.1")
            .expect("alpn");
        let mut config = connector.build().configure().expect("configure");
        config.set_use_server_name_indication(sni.is_some());
        config.set_verify_hostname(false);
        let tcp = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
        let tls = config
            .connect(sni.unwrap_or("none"), tcp)
            .expect("handshake");
        // HTTP/2 is offered whichever certificate answers.
        assert_eq!(
            tls.ssl().selected_alpn_protocol(),
            Some(&b"h2"[..]),
            "{sni:?}"
        );
        let der = tls
            .ssl()
            .peer_certificate()
            .expect("a certificate")
            .to_der()
            .expect("der");
        certs
            .iter()
            .find(|(_, c)| c.cert.to_der().expect("der") == der)
            .map(|(n, _)| *n)
            .expect("one of the certificates")
    };
    assert_eq!(served(gw.port, Some("x.a.test")), "a");
    assert_eq!(served(gw.port, Some("TILES.A.TEST")), "a");
    assert_eq!(served(gw.port, Some("b.test")), "b");
    assert_eq!(
        served(gw.port, Some("b.test.")),
        "b",
        "a fully qualified name"
    );
    assert_eq!(served(gw.port, Some("c.test")), "default");
    assert_eq!(
        served(gw.port, Some("a.test")),
        "default",
        "`*` is one label at least"
    );
    assert_eq!(served(gw.port, None), "default");
    // Without `default`: the first certificate answers a name no glob matches, and is looked
    // for by its name first, as listed (it was left out: a later glob won over it).
    drop(gw);
    dir.write(
        "gateway.config.yml",
        &config(entry("*.a.test", "a") + &entry("x.a.test", "b")),
    );
    let gw = GatewayProcess::start(&dir);
    assert_eq!(served(gw.port, Some("x.a.test")), "a");
    assert_eq!(served(gw.port, Some("c.test")), "a");
    assert_eq!(served(gw.port, None), "a");
}

/// `tollgate check` on an https section it cannot serve as written: an encrypted key is an
/// error that says so (OpenSSL's own reader asked for its passphrase on the terminal, and a
/// gateway with one waited there), a key written inline is not repeated into the error,
/// client certificates are an error (every client would be let in without one), and what
/// else EG hands to Node's TLS is a warning at its place.
#[test]
fn check_says_what_of_an_https_section_it_cannot_serve() {
    let cert = SelfSigned::new();
    // `key`: the default certificate's key line, given the config directory.
    let https = |key: &dyn Fn(&ConfigDir) -> String, more: &str| {
        let dir = ConfigDir::empty();
        dir.write("tls.crt", &cert.cert_pem());
        dir.write("tls.key", &cert.key_pem());
        let encrypted = cert
            .key
            .private_key_to_pem_pkcs8_passphrase(openssl::symm::Cipher::aes_256_cbc(), b"secret")
            .expect("encrypted pem");
        dir.write(
            "encrypted.key",
            &String::from_utf8(encrypted).expect("utf8"),
        );
        dir.write("system.config.yml", "db: {redis: {emulate: true}}\n");
        let yml = format!(
            "https:\n  port: 1\n{more}  tls:\n    default:\n{key}apiEndpoints:\n  t: {{paths: '/t/*'}}\npolicies: [terminate]\npipelines:\n  t: {{apiEndpoints: [t], policies: [{{terminate: {{action: {{statusCode: 200, message: ok}}}}}}]}}\n",
            key = key(&dir),
        );
        dir.write("gateway.config.yml", &yml);
        let out = support::gateway::run_tollgate(
            &["check", "--config", &dir.path.display().to_string()],
            &[],
        );
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // The certificate's line and the key's.
    let file = |name: &'static str| {
        move |dir: &ConfigDir| {
            format!(
                "      cert: '{}'\n      key: '{}'\n",
                dir.file("tls.crt"),
                dir.file(name)
            )
        }
    };
    let (code, err) = https(&file("tls.key"), "");
    assert_eq!(code, Some(0), "{err}");
    let (code, err) = https(&file("encrypted.key"), "");
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("is encrypted"), "{err}");
    let inline = cert.key_pem().replace('\n', "\n        ");
    let (code, err) = https(
        &|dir: &ConfigDir| {
            let crt = dir.file("tls.crt");
            format!("      cert: '{crt}'\n      key: |\n        {inline}\n")
        },
        "",
    );
    assert_eq!(code, Some(2), "{err}");
    assert!(
        !err.contains("BEGIN"),
        "the key written inline was repeated: {err}"
    );
    // A certificate written inline too (OpenSSL's error repeated the path it tried).
    let inline_cert = cert.cert_pem().replace('\n', "\n        ");
    let (code, err) = https(
        &|dir: &ConfigDir| {
            let key = dir.file("tls.key");
            format!("      cert: |\n        {inline_cert}\n      key: '{key}'\n")
        },
        "",
    );
    assert_eq!(code, Some(2), "{err}");
    assert!(
        !err.contains("BEGIN"),
        "the certificate written inline was repeated: {err}"
    );
    let (code, err) = https(&file("tls.key"), "  options: {requestCert: 0}\n");
    assert_eq!(code, Some(0), "as Node reads 0: {err}");
    let (code, err) = https(
        &file("tls.key"),
        "  options: {requestCert: true, rejectUnauthorized: true, minVersion: TLSv1.3}\n",
    );
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("requestCert"), "{err}");
    assert!(err.contains("https.options.minVersion"), "{err}");
    let with_ca = |dir: &ConfigDir| format!("{}      ca: [ca.crt]\n", file("tls.key")(dir));
    let (code, err) = https(&with_ca, "");
    assert_eq!(code, Some(0), "{err}");
    assert!(
        err.contains("`https.tls.default.ca` is not acted on"),
        "{err}"
    );
    // A certificate file missing, or holding no certificate: one line, not OpenSSL's stack
    // (`error:80000002:system library:file_ctrl...`).
    let missing = |dir: &ConfigDir| {
        let key = dir.file("tls.key");
        format!(
            "      cert: '{}'\n      key: '{key}'\n",
            dir.file("none.crt")
        )
    };
    let (code, err) = https(&missing, "");
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("cannot read the certificate")
            && err.contains("No such file")
            && !err.contains("error:"),
        "{err}"
    );
    let garbage = |dir: &ConfigDir| {
        dir.write("garbage.crt", "not a certificate\n");
        let key = dir.file("tls.key");
        format!(
            "      cert: '{}'\n      key: '{key}'\n",
            dir.file("garbage.crt")
        )
    };
    let (code, err) = https(&garbage, "");
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("holds no PEM certificate"), "{err}");
}

/// The CLI reaches an Admin API behind TLS (an https `--admin-url`, `cli.url`): verified
/// against the system's trust store, or the one `SSL_CERT_FILE` names; a certificate not
/// trusted is one line, and nothing is done. (It could not: the client had no TLS.)
#[test]
fn the_cli_reaches_an_admin_api_behind_tls() {
    // The https listener proxies to the Admin API, as a TLS proxy in front of it would.
    let (dir, gw) = https_gateway(
        "admin:\n  port: ${ADMIN_PORT}\n  host: 127.0.0.1\napiEndpoints:\n  admin: {paths: ['/users', '/users/*']}\nserviceEndpoints:\n  admin: {url: 'http://127.0.0.1:${ADMIN_PORT}'}\npolicies: [proxy]\npipelines:\n  admin: {apiEndpoints: [admin], policies: [{proxy: {action: {serviceEndpoint: admin}}}]}\n",
    );
    let url = format!("https://localhost:{}", gw.port);
    let ca = dir.file("tls.crt");
    let create = [
        "users",
        "create",
        "-p",
        "username=ann",
        "-p",
        "firstname=Ann",
        "-p",
        "lastname=Lee",
        "--admin-url",
        &url,
    ];
    // Not trusted: the self-signed certificate is in no trust store of the system's.
    let out = run_tollgate(&create, &[]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(said.contains("certificate"), "{said}");
    assert_eq!(said.trim().lines().count(), 1, "{said}");
    let listed = run_tollgate(
        &["users", "list", "--admin-url", &url],
        &[("SSL_CERT_FILE", &ca)],
    );
    assert!(
        !String::from_utf8_lossy(&listed.stdout).contains("ann"),
        "nothing was done"
    );
    // Trusted through `SSL_CERT_FILE`.
    let out = run_tollgate(&create, &[("SSL_CERT_FILE", &ca)]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed = run_tollgate(
        &["users", "list", "--admin-url", &url],
        &[("SSL_CERT_FILE", &ca)],
    );
    assert!(
        listed.status.success(),
        "{}",
        String::from_utf8_lossy(&listed.stderr)
    );
    assert!(String::from_utf8_lossy(&listed.stdout).contains("ann"));
}
