//! TLS on both sides: https upstreams (SNI, certificate verification, `secure: false`) and the
//! gateway's own `https` listener.

mod support;

use support::echo::Echoed;
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
