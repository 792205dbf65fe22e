//! Secrets stay secret: after key-auth, basic-auth and jwt requests, good and bad, through
//! headers and query parameters, and credentials written through the Admin API, neither the
//! log at debug level nor the access log holds a key secret, a password or a token. And an
//! Admin API beyond loopback without a token is warned about.

mod support;

use support::jwt::{hs256, now};
use support::{get, send_json, ConfigDir, EchoUpstream, GatewayProcess};

const JWT_KEY: &str = "policy-signing-key-kept-secret";

fn config(up: &EchoUpstream, admin_host: &str) -> String {
    format!(
        r#"http: {{port: ${{PORT}}}}
admin: {{port: ${{ADMIN_PORT}}, host: {admin_host}}}
apiEndpoints:
  keyed: {{paths: '/keyed/*'}}
  basic: {{paths: '/basic/*'}}
  token: {{paths: '/token/*'}}
serviceEndpoints:
  up: {{url: '{up}'}}
policies: [log, request-transformer, key-auth, basic-auth, jwt, proxy]
pipelines:
  keyed:
    apiEndpoints: [keyed]
    policies:
      - request-transformer: [{{action: {{headers: {{add: {{x-copied: req.headers.authorization}}}}}}}}]
      - log: [{{action: {{message: 'seen ${{req.method}} ${{req.url}} auth=${{req.headers.authorization}} copied=${{req.headers[''x-copied'']}}'}}}}]
      - key-auth:
      - proxy: [{{action: {{serviceEndpoint: up}}}}]
  basic:
    apiEndpoints: [basic]
    policies:
      - log: [{{action: {{message: 'seen ${{req.method}} ${{req.url}} auth=${{req.headers.authorization}}'}}}}]
      - basic-auth:
      - proxy: [{{action: {{serviceEndpoint: up}}}}]
  token:
    apiEndpoints: [token]
    policies:
      - log: [{{action: {{message: 'seen ${{req.method}} ${{req.url}} path=${{req.path}} auth=${{req.headers.authorization}}'}}}}]
      - jwt: [{{action: {{secretOrPublicKey: {JWT_KEY}, checkCredentialExistence: true, passThrough: true}}}}]
      - jwt: [{{condition: {{name: anonymous}}, action: {{secretOrPublicKey: {JWT_KEY}, checkCredentialExistence: true, jwtExtractor: query, jwtExtractorField: jwt}}}}]
      - proxy: [{{action: {{serviceEndpoint: up}}}}]
"#,
        up = up.url("")
    )
}

#[test]
fn no_secret_reaches_the_logs() {
    let up = EchoUpstream::start("up");
    let dir = ConfigDir::new(&config(&up, "127.0.0.1"));
    let access = dir.path.join("access.log");
    let gw = GatewayProcess::start_with(
        &dir,
        &["--access-log", &access.display().to_string()],
        &[("RUST_LOG", "debug")],
    );
    let a = gw.admin_port;
    let user = send_json(a, "POST", "/users", r#"{"username": "ann"}"#);
    assert!(user.status < 300, "{}", user.text());
    let key = send_json(
        a,
        "POST",
        "/credentials",
        r#"{"consumerId": "ann", "type": "key-auth", "credential": {"keyId": "ann-key", "keySecret": "key-secret-4711"}}"#,
    );
    assert!(key.status < 300, "{}", key.text());
    let basic = send_json(
        a,
        "POST",
        "/credentials",
        r#"{"consumerId": "ann", "type": "basic-auth", "credential": {"password": "password-0815"}}"#,
    );
    assert!(basic.status < 300, "{}", basic.text());
    let jwt = send_json(
        a,
        "POST",
        "/credentials",
        r#"{"consumerId": "ann", "type": "jwt", "credential": {"keyId": "ann-jwt", "keySecret": "jwt-credential-secret"}}"#,
    );
    assert!(jwt.status < 300, "{}", jwt.text());

    let good_token = hs256(
        JWT_KEY,
        &serde_json::json!({"sub": "ann-jwt", "exp": now() + 600}),
    );
    let bad_token = hs256(
        "not-the-key",
        &serde_json::json!({"sub": "ann-jwt", "exp": now() + 600}),
    );
    let b64 = |s: &str| {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(s)
    };
    let basic_good = format!("Basic {}", b64("ann:password-0815"));
    let basic_bad = format!("Basic {}", b64("ann:wrong-password-999"));
    // (path, headers, expected status)
    type Case<'a> = (String, Vec<(&'a str, String)>, u16);
    let requests: Vec<Case> = vec![
        (
            "/keyed/a".into(),
            vec![("Authorization", "apiKey ann-key:key-secret-4711".into())],
            200,
        ),
        (
            "/keyed/a".into(),
            vec![("Authorization", "apiKey ann-key:wrong-secret-123".into())],
            401,
        ),
        (
            "/keyed/a?apiKey=ann-key:key-secret-4711".into(),
            vec![],
            200,
        ),
        (
            "/keyed/a?apiKey=ann-key:wrong-secret-123&x=1".into(),
            vec![],
            401,
        ),
        (
            "/basic/a".into(),
            vec![("Authorization", basic_good.clone())],
            200,
        ),
        (
            "/basic/a".into(),
            vec![("Authorization", basic_bad.clone())],
            401,
        ),
        (
            "/token/a".into(),
            vec![("Authorization", format!("Bearer {good_token}"))],
            200,
        ),
        (
            "/token/a".into(),
            vec![("Authorization", format!("Bearer {bad_token}"))],
            401,
        ),
        (format!("/token/a?jwt={good_token}"), vec![], 200),
        (format!("/token/a?jwt={bad_token}"), vec![], 401),
        ("/token/a?jwt=garbage.not-a.token-xyz".into(), vec![], 401),
        // Near misses of the parameters' names carry a real credential all the same.
        (format!("/token/a?jwt[]={good_token}"), vec![], 401),
        (format!("/token/a?jwt%00={good_token}"), vec![], 401),
        (format!("/token/a?jwt%3D{good_token}"), vec![], 401),
        (format!("/token/a;jwt={good_token}/b"), vec![], 401),
        (
            "/keyed/a?apiKey%20=ann-key:key-secret-4711".into(),
            vec![],
            401,
        ),
        (
            "/keyed/a;apiKey=ann-key:key-secret-4711".into(),
            vec![],
            401,
        ),
    ];
    for (path, headers, want) in &requests {
        let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let r = get(gw.port, "GET", path, &h);
        assert_eq!(r.status, *want, "{path}: {}", r.text());
    }
    // The access log's lines go through a writer thread: waited for.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let access_log = loop {
        let text = std::fs::read_to_string(&access).unwrap_or_default();
        if text.lines().count() >= requests.len() || std::time::Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let log = gw.log_text();
    assert!(access_log.lines().count() >= requests.len(), "{access_log}");
    assert!(log.contains("DEBUG"), "the log ran at debug level");
    // The `log` steps ran, and said what they could without the credentials.
    for seen in [
        // (A transformer's copy of a credential is one too.)
        "seen GET /keyed/a auth=REDACTED copied=REDACTED",
        // (A header not sent is `undefined`, as in EG's template strings.)
        "seen GET /keyed/a?apiKey=REDACTED auth=undefined copied=undefined",
        "seen GET /keyed/a?apiKey=REDACTED&x=1 auth=undefined copied=undefined",
        "seen GET /basic/a auth=REDACTED",
        "seen GET /token/a?jwt=REDACTED path=/token/a auth=undefined",
        // (A segment's parameter in `req.path` too.)
        "seen GET /token/a;jwt=REDACTED/b path=/token/a;jwt=REDACTED/b auth=undefined",
    ] {
        assert!(log.contains(seen), "no `{seen}` in the log:\n{log}");
    }
    let signature = |t: &str| t.rsplit('.').next().unwrap_or("").to_string();
    let secrets = [
        "key-secret-4711".to_string(),
        "wrong-secret-123".to_string(),
        "password-0815".to_string(),
        "wrong-password-999".to_string(),
        "jwt-credential-secret".to_string(),
        JWT_KEY.to_string(),
        b64("ann:password-0815"),
        b64("ann:wrong-password-999"),
        good_token.clone(),
        bad_token.clone(),
        signature(&good_token),
        signature(&bad_token),
        "garbage.not-a.token-xyz".to_string(),
    ];
    for s in &secrets {
        assert!(!log.contains(s.as_str()), "the log holds `{s}`:\n{log}");
        assert!(
            !access_log.contains(s.as_str()),
            "the access log holds `{s}`:\n{access_log}"
        );
    }
}

#[test]
fn an_admin_api_beyond_loopback_without_a_token_is_warned_about() {
    let up = EchoUpstream::start("up");
    let dir = ConfigDir::new(&config(&up, "0.0.0.0"));
    let gw = GatewayProcess::start(&dir);
    assert!(
        gw.log_text().contains("without --admin-token"),
        "{}",
        gw.log_text()
    );
    drop(gw);
    let gw = GatewayProcess::start_with(&dir, &["--admin-token", "t0ken"], &[]);
    assert!(
        !gw.log_text().contains("without --admin-token"),
        "{}",
        gw.log_text()
    );
    let dir = ConfigDir::new(&config(&up, "127.0.0.1"));
    let gw = GatewayProcess::start(&dir);
    assert!(
        !gw.log_text().contains("without --admin-token"),
        "{}",
        gw.log_text()
    );
}

/// A secret passed in the environment and written where the config expects something else (a
/// boolean, a file, a template) is named by its reference in config errors, never shown: by
/// `check`, and on a reload in the log, the Admin API's answer and the config's status.
#[test]
fn config_errors_name_a_secret_from_the_environment_by_its_reference() {
    const SIGNING: &str = "JWTSIGN789qrsSECRET";
    const TOKEN: &str = "UPTOKEN222cccSECRET";
    let up = EchoUpstream::start("up");
    let good = format!(
        "http: {{port: ${{PORT}}}}\nadmin: {{port: ${{ADMIN_PORT}}, host: 127.0.0.1}}\napiEndpoints: {{a: {{paths: '/a/*'}}}}\nserviceEndpoints: {{up: {{url: '{}'}}}}\npolicies: [jwt, request-transformer, proxy]\npipelines:\n  p:\n    apiEndpoints: [a]\n    policies:\n      - proxy: [{{action: {{serviceEndpoint: up}}}}]\n",
        up.url("")
    );
    let bad = good.replace(
        "      - proxy:",
        "      - jwt: [{action: {secretOrPublicKey: x, passThrough: '${TG_SIGNING}', secretOrPublicKeyFile: '${TG_SIGNING}'}}]\n      - request-transformer: [{action: {headers: {add: {x-token: \"'${TG_TOKEN}\"}}}}]\n      - proxy:",
    );
    let envs = [("TG_SIGNING", SIGNING), ("TG_TOKEN", TOKEN)];
    let dir = ConfigDir::new(&bad);
    let out =
        support::gateway::run_tollgate(&["check", "-c", &dir.path.display().to_string()], &envs);
    assert_eq!(out.status.code(), Some(2));
    let said = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(said.contains("${TG_SIGNING}"), "{said}");
    assert!(said.contains("${TG_TOKEN}"), "{said}");
    for secret in [SIGNING, TOKEN, &SIGNING[..12], &TOKEN[..12]] {
        assert!(!said.contains(secret), "`{secret}` in:\n{said}");
    }
    // The same on a reload of a running gateway.
    let dir = ConfigDir::new(&good);
    let gw = GatewayProcess::start_with(&dir, &[], &envs);
    dir.write("gateway.config.yml", &bad);
    let answer = send_json(gw.admin_port, "POST", "/tollgate/reload", "").text();
    let status = get(gw.admin_port, "GET", "/tollgate/config", &[]).text();
    std::thread::sleep(std::time::Duration::from_millis(300));
    let log = gw.log_text();
    assert!(answer.contains("${TG_SIGNING}"), "{answer}");
    for (what, text) in [("answer", &answer), ("status", &status), ("log", &log)] {
        for secret in [SIGNING, TOKEN] {
            assert!(!text.contains(secret), "`{secret}` in the {what}:\n{text}");
        }
    }
}

/// The CLI's own verbose output (`RUST_LOG=trace`) holds neither the Admin API's token nor a
/// password in the Admin API's URL.
#[test]
fn the_cli_at_trace_level_shows_no_admin_token() {
    const TOKEN: &str = "ADMINTOKEN111bbbSECRET";
    let up = EchoUpstream::start("up");
    let dir = ConfigDir::new(&config(&up, "127.0.0.1"));
    let gw = GatewayProcess::start_with(&dir, &["--admin-token", TOKEN], &[]);
    let url = format!("http://127.0.0.1:{}", gw.admin_port);
    let out = support::gateway::run_tollgate(
        &["users", "list"],
        &[
            ("EG_ADMIN_URL", url.as_str()),
            ("TOLLGATE_ADMIN_TOKEN", TOKEN),
            ("RUST_LOG", "trace"),
        ],
    );
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(0), "{said}");
    // Whole or split across a dump's lines.
    for part in [TOKEN, &TOKEN[..8], &TOKEN[8..16]] {
        assert!(!said.contains(part), "`{part}` in:\n{said}");
    }
    // A password in the URL of an Admin API that cannot be reached.
    let closed = format!(
        "http://bob:URLPASS555word@127.0.0.1:{}",
        support::free_port()
    );
    let out =
        support::gateway::run_tollgate(&["users", "list"], &[("EG_ADMIN_URL", closed.as_str())]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("cannot reach the Admin API"), "{said}");
    assert!(!said.contains("URLPASS555word"), "{said}");
}
