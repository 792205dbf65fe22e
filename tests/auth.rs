//! Authentication end to end on the embedded store: Kargo's tile pipeline (metrics, cors,
//! basic-auth passThrough, bearer jwt, `?jwt=` jwt, WWW-Authenticate + 401 for anonymous,
//! scopes, proxy), key-auth, bad tokens, revocation, a restart, and the `eg` counter.

mod support;

use support::jwt::{self, now};
use support::{get, ConfigDir, EchoUpstream, GatewayProcess};

const JWT_SECRET: &str = "kargo-signing-secret";

const CONSUMERS: &str = r#"{
  "scopes": ["wms", "wmts", "k2"],
  "users": {
    "kalisio": {
      "kano": {"type": "jwt", "keyId": "kano-jwt", "keySecret": "unused", "scopes": ["wms", "wmts"]},
      "mobile": {"scopes": ["k2"], "credential": {"type": "auth-key", "keyId": "mobile-key", "keySecret": "mobile-secret"}},
      "qgis": {"type": "basic-auth", "password": "qgis-pass", "scopes": ["wmts"]}
    }
  }
}"#;

fn config(up: &EchoUpstream, jwt_key: &str) -> String {
    format!(
        r#"http: {{port: ${{PORT}}}}
admin: {{port: ${{ADMIN_PORT}}, host: 127.0.0.1}}
apiEndpoints:
  wmts: {{host: '*', paths: '/wmts*', scopes: [wmts]}}
  wms: {{host: '*', paths: '/wms*', scopes: [wms]}}
  k2: {{host: '*', paths: '/k2/*', scopes: [k2]}}
  open: {{host: '*', paths: '/open/*'}}
  public: {{host: '*', paths: '/public/*'}}
serviceEndpoints:
  up: {{url: '{up}'}}
  dead: {{url: 'http://127.0.0.1:1'}}
policies: [metrics, cors, basic-auth, jwt, response-transformer, terminate, scopes, proxy, key-auth]
pipelines:
  tiles:
    apiEndpoints: [wmts, wms]
    policies:
      - metrics:
      - cors:
      - basic-auth: [{{action: {{passThrough: true}}}}]
      - jwt:
          - condition: {{name: anonymous}}
            action: {{secretOrPublicKey: '{key}', checkCredentialExistence: true, audience: kargo.test, passThrough: true}}
      - jwt:
          - condition: {{name: anonymous}}
            action: {{secretOrPublicKey: '{key}', checkCredentialExistence: true, audience: kargo.test, passThrough: true, jwtExtractor: query, jwtExtractorField: jwt}}
      - response-transformer:
          - condition: {{name: anonymous}}
            action: {{headers: {{add: {{WWW-Authenticate: "'Basic'"}}}}}}
      - terminate:
          - condition: {{name: anonymous}}
            action: {{statusCode: 401, message: Unauthorized}}
      - scopes:
      - proxy: [{{action: {{serviceEndpoint: up, changeOrigin: true, stripPath: true, timeout: 120000}}}}]
  k2:
    apiEndpoints: [k2]
    policies:
      - metrics:
      - key-auth:
      - proxy: [{{action: {{serviceEndpoint: up, stripPath: true}}}}]
  open:
    apiEndpoints: [open]
    policies:
      - metrics:
      - key-auth: [{{action: {{passThrough: true}}}}]
      - proxy: [{{action: {{serviceEndpoint: dead}}}}]
  public:
    apiEndpoints: [public]
    policies:
      - key-auth: [{{action: {{passThrough: true}}}}]
      - scopes:
      - proxy: [{{action: {{serviceEndpoint: up}}}}]
"#,
        up = up.url(""),
        key = jwt_key.replace('\n', "\\n").replace('\'', "''"),
    )
}

fn start(dir: &ConfigDir) -> GatewayProcess {
    let data = dir.path.join("data").display().to_string();
    let consumers = dir.file("consumers.config.json");
    GatewayProcess::start_with(dir, &["--data-dir", &data, "--populate", &consumers], &[])
}

fn app_id(gw: &GatewayProcess, name: &str) -> String {
    let r = get(gw.admin_port, "GET", &format!("/apps/{name}"), &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    let v: serde_json::Value = serde_json::from_slice(&r.body).expect("json");
    v["id"].as_str().expect("id").to_string()
}

fn token(sub: &str, aud: &str, exp_in: i64) -> String {
    jwt::hs256(
        JWT_SECRET,
        &serde_json::json!({"sub": sub, "aud": aud, "exp": (now() as i64 + exp_in)}),
    )
}

fn bearer(t: &str) -> String {
    format!("Bearer {t}")
}

/// The value of an `eg` series; counting happens as a response completes, so wait a little.
fn metric_line(gw: &GatewayProcess, labels: &str) -> Option<f64> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    loop {
        let text = get(gw.admin_port, "GET", "/metrics", &[]).text();
        let value = text
            .lines()
            .find(|l| l.starts_with(&format!("eg{{{labels}}}")))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok());
        if value.is_some() || std::time::Instant::now() > deadline {
            return value;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn kargo_tile_pipeline_end_to_end() {
    let up = EchoUpstream::start("tiles");
    let dir = ConfigDir::new(&config(&up, JWT_SECRET));
    dir.write("consumers.config.json", CONSUMERS);
    let gw = start(&dir);
    let kano = app_id(&gw, "kano");
    let qgis = app_id(&gw, "qgis");

    // No credentials: 401 with WWW-Authenticate: Basic, counted as anonymous.
    let r = get(gw.port, "GET", "/wmts/1/2/3.png", &[]);
    assert_eq!((r.status, r.text().as_str()), (401, "Unauthorized"));
    assert_eq!(r.header("www-authenticate"), Some("Basic"));
    assert_eq!(r.header("access-control-allow-origin"), Some("*"));
    assert_eq!(
        r.header("eg-consumer-id"),
        Some("anonymous"),
        "passThrough marks the response"
    );

    // Bearer token of a known jwt credential: proxied, consumer sent upstream, forged id replaced.
    let t = token("kano-jwt", "kargo.test", 600);
    let r = get(
        gw.port,
        "GET",
        "/wmts/1/2/3.png",
        &[
            ("Authorization", &bearer(&t)),
            ("eg-consumer-id", "forged"),
            // Read as `eg-consumer-id` by a WSGI or CGI upstream (HTTP_EG_CONSUMER_ID).
            ("eg_consumer_id", "forged"),
        ],
    );
    let e = r.echoed();
    assert_eq!(e.url(), "/1/2/3.png");
    assert_eq!(e.header_all("eg-consumer-id"), vec![kano.clone()]);
    assert!(
        e.header_all("eg_consumer_id").is_empty(),
        "a forged id with `_`"
    );
    // The same token in the query (browser tiles).
    let r = get(gw.port, "GET", &format!("/wms?SERVICE=WMS&jwt={t}"), &[]);
    assert_eq!(r.echoed().header("eg-consumer-id"), Some(kano.clone()));
    // QGIS with basic-auth (the app id as user id).
    let basic = format!("Basic {}", base64_encode(&format!("{qgis}:qgis-pass")));
    let r = get(
        gw.port,
        "GET",
        "/wmts/1/2/3.png",
        &[("Authorization", &basic)],
    );
    assert_eq!(r.echoed().header("eg-consumer-id"), Some(qgis.clone()));
    // Sent twice, the credential goes upstream once, the one authentication read (as EG
    // forwards what Node's parser keeps: the first line).
    let r = get(
        gw.port,
        "GET",
        "/wmts/1/2/3.png",
        &[
            ("Authorization", &basic),
            ("Authorization", "Bearer forged"),
        ],
    );
    let e = r.echoed();
    assert_eq!(e.header("eg-consumer-id"), Some(qgis.clone()));
    assert_eq!(e.header_all("authorization"), vec![basic.clone()]);
    // Without its padding, as Node (EG) reads base64 too.
    let unpadded = basic.trim_end_matches('=').to_string();
    assert_ne!(unpadded, basic, "the test's credentials must need padding");
    let r = get(
        gw.port,
        "GET",
        "/wmts/1/2/3.png",
        &[("Authorization", &unpadded)],
    );
    assert_eq!(r.echoed().header("eg-consumer-id"), Some(qgis.clone()));
    let wrong = format!("Basic {}", base64_encode(&format!("{qgis}:nope")));
    assert_eq!(
        get(
            gw.port,
            "GET",
            "/wmts/1/2/3.png",
            &[("Authorization", &wrong)]
        )
        .status,
        401
    );
    // qgis lacks the wms scope: basic-auth refuses, so the request is anonymous.
    assert_eq!(
        get(gw.port, "GET", "/wms?x", &[("Authorization", &basic)]).status,
        401
    );

    // Bad tokens: never a 500, always 401 with a short body.
    let bad = [
        token("kano-jwt", "other.audience", 600),
        token("kano-jwt", "kargo.test", -3600),
        token("no-such-key", "kargo.test", 600),
        jwt::hs256(
            "wrong-secret",
            &serde_json::json!({"sub": "kano-jwt", "aud": "kargo.test"}),
        ),
        jwt::unsigned(&serde_json::json!({"sub": "kano-jwt", "aud": "kargo.test"})),
        "garbage".to_string(),
        "a.b.c".to_string(),
        format!("{}x", &t[..t.len() - 1]),
        "é".repeat(3000),
    ];
    for b in &bad {
        let r = get(
            gw.port,
            "GET",
            "/wmts/1/2/3.png",
            &[("Authorization", &bearer(b))],
        );
        assert_eq!(
            (r.status, r.text().as_str()),
            (401, "Unauthorized"),
            "token {b:.40}"
        );
        let r = get(
            gw.port,
            "GET",
            &format!("/wmts/x?jwt={}", b.replace('é', "%C3%A9")),
            &[],
        );
        assert_eq!(r.status, 401, "query token {b:.40}");
    }
    let r = get(
        gw.port,
        "GET",
        "/wmts/1",
        &[("Authorization", &"x".repeat(20_000))],
    );
    assert_eq!(r.status, 401);

    // key-auth: header with scheme, query, wrong secret, missing scope.
    let mobile = app_id(&gw, "mobile");
    let r = get(
        gw.port,
        "GET",
        "/k2/ping",
        &[("Authorization", "apiKey mobile-key:mobile-secret")],
    );
    assert_eq!(r.echoed().header("eg-consumer-id"), Some(mobile.clone()));
    assert_eq!(
        get(
            gw.port,
            "GET",
            "/k2/ping?apiKey=mobile-key:mobile-secret",
            &[]
        )
        .status,
        200
    );
    // As EG reads them: an encoded parameter name is the name; a key given twice is a list,
    // no key; a header with the scheme alone is a key (that no credential has), so the query
    // is not read.
    let status = |path: &str, headers: &[(&str, &str)]| get(gw.port, "GET", path, headers).status;
    assert_eq!(
        status("/k2/ping?%61piKey=mobile-key:mobile-secret", &[]),
        200
    );
    assert_eq!(
        status(
            "/k2/ping?apiKey=mobile-key:mobile-secret&apiKey=mobile-key:mobile-secret",
            &[]
        ),
        401
    );
    assert_eq!(
        status(
            "/k2/ping?apiKey=mobile-key:mobile-secret",
            &[("Authorization", "apiKey")]
        ),
        401
    );
    assert_eq!(
        get(
            gw.port,
            "GET",
            "/k2/ping",
            &[("Authorization", "APIKEY mobile-key:mobile-secret")]
        )
        .status,
        200
    );
    let r = get(
        gw.port,
        "GET",
        "/k2/ping",
        &[("Authorization", "apiKey mobile-key:wrong")],
    );
    assert_eq!(
        (r.status, r.text().as_str(), r.header("content-type")),
        (401, "Unauthorized", Some("text/plain; charset=utf-8"))
    );
    assert_eq!(
        get(
            gw.port,
            "GET",
            "/k2/ping",
            &[("Authorization", "Bearer mobile-key:mobile-secret")]
        )
        .status,
        401
    );
    assert_eq!(
        get(
            gw.port,
            "GET",
            "/k2/ping",
            &[("Authorization", "apiKey nocolon")]
        )
        .status,
        401
    );

    // A jwt consumer whose app lacks the endpoint's scope is stopped by `scopes`.
    let r = get(gw.port, "GET", "/k2/x", &[("Authorization", &bearer(&t))]);
    assert_eq!(r.status, 401);

    // The eg counter: Kargo's name and labels.
    assert!(
        metric_line(
            &gw,
            &format!(r#"api_endpoint="wmts",consumer="{kano}",status_code="200",type="SUCCESS""#)
        )
        .unwrap_or(0.0)
            >= 1.0
    );
    assert!(
        metric_line(
            &gw,
            r#"api_endpoint="wmts",consumer="anonymous",status_code="401",type="FAILED""#
        )
        .unwrap_or(0.0)
            >= 1.0
    );
    assert!(metric_line(
        &gw,
        &format!(r#"api_endpoint="wms",consumer="{kano}",status_code="200",type="SUCCESS""#)
    )
    .is_some());
    // A 502 counts too (passThrough key-auth, dead upstream).
    assert_eq!(get(gw.port, "GET", "/open/x", &[]).status, 502);
    assert!(metric_line(
        &gw,
        r#"api_endpoint="open",consumer="anonymous",status_code="502",type="FAILED""#
    )
    .is_some());
    let metrics = get(gw.admin_port, "GET", "/metrics", &[]);
    assert!(metrics.text().contains("# TYPE eg counter"));
    assert!(!metrics.text().contains("eg_total"));
    let as_json = get(
        gw.admin_port,
        "GET",
        "/metrics",
        &[("Accept", "application/json")],
    );
    let v: serde_json::Value = serde_json::from_slice(&as_json.body).expect("json metrics");
    assert_eq!(v[0]["name"], "eg");
}

#[test]
fn revocation_and_restart() {
    let up = EchoUpstream::start("tiles");
    let dir = ConfigDir::new(&config(&up, JWT_SECRET));
    dir.write("consumers.config.json", CONSUMERS);
    let mut gw = start(&dir);
    let t = token("kano-jwt", "kargo.test", 600);
    let auth = bearer(&t);
    assert_eq!(
        get(gw.port, "GET", "/wmts/a", &[("Authorization", &auth)]).status,
        200
    );
    // Deactivate the credential through the Admin API: the cached token is refused at once.
    let r = support::request(
        gw.admin_port,
        "PUT /credentials/jwt/kano-jwt/status HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 17\r\nConnection: close\r\n\r\n{\"status\": false}",
        false,
    );
    assert_eq!(r.text(), r#"{"status":"Deactivated"}"#);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
    loop {
        let s = get(gw.port, "GET", "/wmts/a", &[("Authorization", &auth)]).status;
        if s == 401 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still accepted after revocation"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // A restart keeps the store: the key-auth credential still works, the revoked one does not.
    let _ = gw.child.kill();
    let _ = gw.child.wait();
    let data = dir.path.join("data").display().to_string();
    gw = GatewayProcess::start_with(&dir, &["--data-dir", &data], &[]);
    assert_eq!(
        get(
            gw.port,
            "GET",
            "/k2/x",
            &[("Authorization", "apiKey mobile-key:mobile-secret")]
        )
        .status,
        200
    );
    assert_eq!(
        get(gw.port, "GET", "/wmts/a", &[("Authorization", &auth)]).status,
        401
    );
    // A credential made switched off (as a provisioning script makes one, to hand out later)
    // stays off, as in EG, until it is activated: it was stored active.
    let made = support::send_json(
        gw.admin_port,
        "POST",
        "/credentials",
        r#"{"consumerId": "kalisio", "type": "key-auth", "credential": {"keyId": "later-key", "keySecret": "later-secret", "isActive": false, "scopes": ["k2"]}}"#,
    );
    assert!(made.status < 300, "{}", made.text());
    assert_eq!(
        support::json_body(&made)["isActive"],
        false,
        "{}",
        made.text()
    );
    let later = [("Authorization", "apiKey later-key:later-secret")];
    assert_eq!(get(gw.port, "GET", "/k2/x", &later).status, 401);
    let on = support::send_json(
        gw.admin_port,
        "PUT",
        "/credentials/key-auth/later-key/status",
        r#"{"status": true}"#,
    );
    assert_eq!(on.text(), r#"{"status":"Activated"}"#);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    while get(gw.port, "GET", "/k2/x", &later).status != 200 {
        assert!(
            std::time::Instant::now() < deadline,
            "not let in once activated"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn public_key_algorithms_and_key_confusion() {
    let up = EchoUpstream::start("tiles");
    for (pair, sign) in [
        (
            jwt::rsa_pair(),
            jwt::rs256 as fn(&jwt::KeyPair, &serde_json::Value) -> String,
        ),
        (jwt::ec_pair(), jwt::es256),
    ] {
        let dir = ConfigDir::new(&config(&up, &pair.public_pem));
        dir.write("consumers.config.json", CONSUMERS);
        let gw = start(&dir);
        let claims =
            serde_json::json!({"sub": "kano-jwt", "aud": "kargo.test", "exp": now() + 600});
        let good = sign(&pair, &claims);
        assert_eq!(
            get(
                gw.port,
                "GET",
                "/wmts/a",
                &[("Authorization", &bearer(&good))]
            )
            .status,
            200
        );
        // HS256 signed with the public key's text as the secret must not pass.
        let confused = jwt::hs256_with_pem(&pair.public_pem, &claims);
        assert_eq!(
            get(
                gw.port,
                "GET",
                "/wmts/a",
                &[("Authorization", &bearer(&confused))]
            )
            .status,
            401
        );
        assert_eq!(
            get(
                gw.port,
                "GET",
                "/wmts/a",
                &[("Authorization", &bearer(&jwt::unsigned(&claims)))]
            )
            .status,
            401
        );
    }
}

/// Kargo's `scopes` on an endpoint that declares no scopes lets every request through, as
/// Kargo's plugin does under Express Gateway (checked there: 200, upstream reached, no
/// `eg-consumer-id` for an anonymous request).
#[test]
fn scopes_on_an_open_endpoint_let_everyone_through() {
    let up = EchoUpstream::start("tiles");
    let dir = ConfigDir::new(&config(&up, JWT_SECRET));
    dir.write("consumers.config.json", CONSUMERS);
    let gw = start(&dir);
    let anonymous = get(gw.port, "GET", "/public/a", &[]).echoed();
    assert_eq!(anonymous.header("eg-consumer-id"), None);
    let known = get(
        gw.port,
        "GET",
        "/public/a",
        &[("Authorization", "apiKey mobile-key:mobile-secret")],
    )
    .echoed();
    assert!(
        known
            .header("eg-consumer-id")
            .is_some_and(|id| !id.is_empty()),
        "the consumer travels on"
    );
    // A scoped endpoint still refuses the anonymous request.
    assert_eq!(get(gw.port, "GET", "/wmts/a", &[]).status, 401);
}

/// bcrypt takes its CPU time off the threads that serve: with a single worker thread, requests
/// that need no password are answered while wrong passwords are still being checked.
#[test]
fn password_checks_do_not_hold_up_other_requests() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::time::{Duration, Instant};
    let up = EchoUpstream::start("tiles");
    let dir = ConfigDir::new(&config(&up, JWT_SECRET));
    dir.write("consumers.config.json", CONSUMERS);
    let data = dir.path.join("data").display().to_string();
    let consumers = dir.file("consumers.config.json");
    let gw = GatewayProcess::start_with(
        &dir,
        &[
            "--data-dir",
            &data,
            "--populate",
            &consumers,
            "--threads",
            "1",
        ],
        &[],
    );
    let qgis = app_id(&gw, "qgis");
    // Two clients keep sending wrong passwords, a new one each time (each one a bcrypt check
    // of cost 10: a wrong password checked once is remembered).
    let stop = Arc::new(AtomicBool::new(false));
    let checkers: Vec<_> = (0..2)
        .map(|i| {
            let (port, stop) = (gw.port, stop.clone());
            let qgis = qgis.clone();
            std::thread::spawn(move || {
                let mut spans = Vec::new();
                for n in 0.. {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let wrong =
                        format!("Basic {}", base64_encode(&format!("{qgis}:wrong-{i}-{n}")));
                    let sent = Instant::now();
                    let r = get(port, "GET", "/wmts/1/2/3.png", &[("Authorization", &wrong)]);
                    assert_eq!(r.status, 401, "a wrong password is refused");
                    spans.push((sent, Instant::now()));
                }
                spans
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(50));
    let mut health = Vec::new();
    for _ in 0..5 {
        let sent = Instant::now();
        assert_eq!(get(gw.port, "GET", "/healthcheck", &[]).status, 200);
        health.push((sent, Instant::now()));
        std::thread::sleep(Duration::from_millis(30));
    }
    stop.store(true, Ordering::Relaxed);
    let checks: Vec<(Instant, Instant)> = checkers
        .into_iter()
        .flat_map(|c| c.join().expect("checker thread"))
        .collect();
    // Answered while a check sent before it was still running: had the check held the only
    // worker thread, the health check would have waited for it to finish.
    let answered_meanwhile = health
        .iter()
        .filter(|h| checks.iter().any(|c| c.0 < h.0 && h.1 < c.1))
        .count();
    assert!(
        answered_meanwhile >= 3,
        "only {answered_meanwhile} of 5 health checks were answered during a password check"
    );
}

/// A password's bcrypt check runs once: what it found, a match or not, is remembered for that
/// password and the stored hash (a map client with a stale password fired a check per tile),
/// and the requests that bring it while it runs wait for it.
#[test]
fn a_password_is_checked_once_right_or_wrong() {
    let up = EchoUpstream::start("tiles");
    let dir = ConfigDir::new(&config(&up, JWT_SECRET));
    dir.write("consumers.config.json", CONSUMERS);
    let gw = start(&dir);
    let qgis = app_id(&gw, "qgis");
    let checks = |result: &str| {
        gw.metric(&format!(
            "tollgate_password_checks_total{{result=\"{result}\"}}"
        ))
    };
    let basic = |password: &str| {
        let auth = format!("Basic {}", base64_encode(&format!("{qgis}:{password}")));
        get(
            gw.port,
            "GET",
            "/wmts/1/2/3.png",
            &[("Authorization", &auth)],
        )
    };
    // Twenty tiles at once with a password not checked yet (a map view after a restart): one
    // check, which the others wait for.
    std::thread::scope(|scope| {
        let tiles: Vec<_> = (0..20)
            .map(|_| scope.spawn(|| basic("qgis-pass").status))
            .collect();
        for t in tiles {
            assert_eq!(t.join().expect("client"), 200);
        }
    });
    assert_eq!(checks("match"), 1.0);
    for _ in 0..5 {
        // passThrough: a wrong password goes on anonymously, and is refused further on.
        assert_eq!(basic("stale").status, 401);
        assert_eq!(basic("qgis-pass").status, 200);
    }
    assert_eq!((checks("match"), checks("mismatch")), (1.0, 1.0));
    assert_eq!(basic("another").status, 401);
    assert_eq!(checks("mismatch"), 2.0);
}

fn base64_encode(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// An apiEndpoint written as a list of entries: a request needs the scopes of the entry it
/// matched (as in EG, where each entry is the request's `apiEndpoint`), not those of all.
#[test]
fn each_entry_of_an_endpoint_list_asks_for_its_own_scopes() {
    let up = EchoUpstream::start("tiles");
    let yml = format!(
        r#"http: {{port: ${{PORT}}}}
admin: {{port: ${{ADMIN_PORT}}, host: 127.0.0.1}}
apiEndpoints:
  maps:
    - {{host: '*', paths: '/maps/wmts/*', scopes: [wmts]}}
    - {{host: '*', paths: '/maps/k2/*', scopes: [k2]}}
serviceEndpoints:
  up: {{url: '{up}'}}
policies: [key-auth, basic-auth, scopes, proxy]
pipelines:
  maps:
    apiEndpoints: [maps]
    policies:
      - key-auth: [{{action: {{passThrough: true}}}}]
      - basic-auth: [{{action: {{passThrough: true}}}}]
      - scopes:
      - proxy: [{{action: {{serviceEndpoint: up}}}}]
"#,
        up = up.url("")
    );
    let dir = ConfigDir::new(&yml);
    dir.write("consumers.config.json", CONSUMERS);
    let gw = start(&dir);
    // `mobile` holds k2 (key-auth), `qgis` wmts (basic-auth).
    let mobile = [("Authorization", "apiKey mobile-key:mobile-secret")];
    let qgis_auth = format!(
        "Basic {}",
        base64_encode(&format!("{}:qgis-pass", app_id(&gw, "qgis")))
    );
    let qgis = [("Authorization", qgis_auth.as_str())];
    let status = |path: &str, h: &[(&str, &str)]| get(gw.port, "GET", path, h).status;
    assert_eq!(status("/maps/k2/a", &mobile), 200);
    assert_eq!(status("/maps/wmts/a", &qgis), 200);
    assert_eq!(status("/maps/wmts/a", &mobile), 401);
    assert_eq!(status("/maps/k2/a", &qgis), 401);
    assert_eq!(status("/maps/k2/a", &[]), 401);
}

/// A `response-transformer` before a step that ends the pipeline after work off the event loop
/// (basic-auth's password check refusing a wrong password) still edits the refusal: its edits
/// were never made on that path.
#[test]
fn a_transformer_edits_a_refusal_made_after_a_password_check() {
    let up = EchoUpstream::start("up");
    let dir = ConfigDir::new(
        "http: {port: ${PORT}}\nadmin: {port: ${ADMIN_PORT}, host: 127.0.0.1}\napiEndpoints:\n  g: {paths: '/g/*'}\nserviceEndpoints:\n  up: {url: 'UP'}\npolicies: [response-transformer, basic-auth, proxy]\npipelines:\n  g:\n    apiEndpoints: [g]\n    policies:\n      - response-transformer:\n          - action: {headers: {add: {X-Seen: \"'yes'\"}}}\n      - basic-auth:\n      - proxy: [{action: {serviceEndpoint: up}}]\n"
            .replace("UP", &up.url(""))
            .as_str(),
    );
    dir.write("consumers.config.json", CONSUMERS);
    let gw = start(&dir);
    let qgis = app_id(&gw, "qgis");
    let wrong = format!("Basic {}", base64_encode(&format!("{qgis}:nope")));
    let r = get(gw.port, "GET", "/g/x", &[("Authorization", &wrong)]);
    assert_eq!(r.status, 401);
    assert_eq!(r.header("x-seen"), Some("yes"), "{:?}", r.headers);
    let right = format!("Basic {}", base64_encode(&format!("{qgis}:qgis-pass")));
    let r = get(gw.port, "GET", "/g/x", &[("Authorization", &right)]);
    assert_eq!((r.status, r.header("x-seen")), (200, Some("yes")));
}
