//! Express Gateway 1.16 reads what tollgate writes: consumers created through tollgate's Admin
//! API in Redis authenticate through EG itself and show through EG's Admin API. (The other
//! direction, tollgate reading a Redis EG wrote, is tests/redis_store.rs with EG's fixture.)

mod support;

use support::eg::ExpressGateway;
use support::redis::RedisServer;
use support::{get, jwt, send_json, ConfigDir, EchoUpstream, GatewayProcess};

fn post_json(port: u16, path: &str, body: &str) -> serde_json::Value {
    let r = send_json(port, "POST", path, body);
    assert!(
        (200..300).contains(&r.status),
        "{path}: {} {}",
        r.status,
        r.text()
    );
    serde_json::from_slice(&r.body).unwrap_or(serde_json::Value::Null)
}

#[test]
fn express_gateway_reads_what_tollgate_writes() {
    let redis = RedisServer::start();
    let up = EchoUpstream::start("up");
    // tollgate writes the consumers.
    let dir =
        ConfigDir::new("http: {port: ${PORT}}\nadmin: {port: ${ADMIN_PORT}, host: 127.0.0.1}\n");
    dir.write(
        "system.config.yml",
        &format!(
            "db:\n  redis:\n    emulate: false\n    port: {}\n    namespace: EG\n",
            redis.port
        ),
    );
    let tg = GatewayProcess::start(&dir);
    let a = tg.admin_port;
    post_json(a, "/scopes", r#"{"scopes": ["wms"]}"#);
    let user = post_json(
        a,
        "/users",
        r#"{"username": "ann", "firstname": "Ann", "lastname": "Lee"}"#,
    );
    let user_id = user["id"].as_str().expect("user id").to_string();
    let app = post_json(
        a,
        "/apps",
        r#"{"userId": "ann", "name": "viewer", "scopes": ["wms"]}"#,
    );
    let app_id = app["id"].as_str().expect("app id").to_string();
    post_json(
        a,
        "/credentials",
        r#"{"consumerId": "viewer", "type": "key-auth", "credential": {"keyId": "kk", "keySecret": "ks", "scopes": ["wms"]}}"#,
    );
    post_json(
        a,
        "/credentials",
        r#"{"consumerId": "viewer", "type": "jwt", "credential": {"keyId": "jj", "keySecret": "unused"}}"#,
    );
    post_json(
        a,
        "/credentials",
        r#"{"consumerId": "ann", "type": "basic-auth", "credential": {"password": "pw", "scopes": ["wms"]}}"#,
    );
    drop(tg);

    // Express Gateway reads them.
    let eg = ExpressGateway::start(
        &format!(
            "apiEndpoints:\n  keyed: {{paths: '/keyed/*', scopes: [wms]}}\n  token: {{paths: '/token/*'}}\n  basic: {{paths: '/basic/*', scopes: [wms]}}\nserviceEndpoints:\n  up: {{url: '{}'}}\npolicies: [key-auth, jwt, basic-auth, proxy]\npipelines:\n  keyed: {{apiEndpoints: [keyed], policies: [{{key-auth: null}}, {{proxy: [{{action: {{serviceEndpoint: up}}}}]}}]}}\n  token: {{apiEndpoints: [token], policies: [{{jwt: [{{action: {{secretOrPublicKey: interop-secret, checkCredentialExistence: true}}}}]}}, {{proxy: [{{action: {{serviceEndpoint: up}}}}]}}]}}\n  basic: {{apiEndpoints: [basic], policies: [{{basic-auth: null}}, {{proxy: [{{action: {{serviceEndpoint: up}}}}]}}]}}\n",
            up.url("")
        ),
        redis.port,
    );
    let r = get(
        eg.port,
        "GET",
        "/keyed/x",
        &[("Authorization", "apiKey kk:ks")],
    );
    assert_eq!(
        r.status,
        200,
        "EG refused tollgate's key-auth credential: {}\n{}",
        r.text(),
        eg.log()
    );
    assert_eq!(r.echoed().header("eg-consumer-id"), Some(app_id.clone()));
    assert_eq!(
        get(
            eg.port,
            "GET",
            "/keyed/x",
            &[("Authorization", "apiKey kk:wrong")]
        )
        .status,
        401
    );
    let t = jwt::hs256("interop-secret", &serde_json::json!({"sub": "jj"}));
    let r = get(
        eg.port,
        "GET",
        "/token/x",
        &[("Authorization", &format!("Bearer {t}"))],
    );
    assert_eq!(r.echoed().header("eg-consumer-id"), Some(app_id.clone()));
    use base64::Engine;
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("ann:pw")
    );
    let r = get(eg.port, "GET", "/basic/x", &[("Authorization", &basic)]);
    assert_eq!(
        r.status,
        200,
        "EG refused tollgate's bcrypt hash: {}",
        r.text()
    );
    assert_eq!(r.echoed().header("eg-consumer-id"), Some(user_id.clone()));

    // And its Admin API shows them.
    let user: serde_json::Value =
        serde_json::from_slice(&get(eg.admin_port, "GET", "/users/ann", &[]).body).expect("user");
    assert_eq!(
        (
            user["id"].as_str(),
            user["firstname"].as_str(),
            &user["isActive"]
        ),
        (
            Some(user_id.as_str()),
            Some("Ann"),
            &serde_json::json!(true)
        )
    );
    let app: serde_json::Value =
        serde_json::from_slice(&get(eg.admin_port, "GET", "/apps/viewer", &[]).body).expect("app");
    assert_eq!(app["scopes"], "wms");
    let cred: serde_json::Value =
        serde_json::from_slice(&get(eg.admin_port, "GET", "/credentials/key-auth/kk", &[]).body)
            .expect("cred");
    assert_eq!(
        (cred["keySecret"].as_str(), &cred["scopes"]),
        (Some("ks"), &serde_json::json!(["wms"]))
    );
}

/// Replaces what differs between two runs by nature (dates, generated ids and secrets, the
/// consumers' uuids) with placeholders, so EG's and tollgate's answers compare as equal.
fn normalise(v: &serde_json::Value, ids: &[(String, &str)]) -> serde_json::Value {
    use serde_json::Value;
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, x)| {
                    let x = match (k.as_str(), x) {
                        ("createdAt" | "updatedAt", _) => Value::String("<date>".into()),
                        (_, Value::String(s)) => match ids.iter().find(|(id, _)| id == s) {
                            Some((_, name)) => Value::String(format!("<{name}>")),
                            None if s.len() == 22 || s.len() == 36 => {
                                Value::String("<generated>".into())
                            }
                            None => x.clone(),
                        },
                        _ => normalise(x, ids),
                    };
                    (k.clone(), x)
                })
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(|x| normalise(x, ids)).collect()),
        other => other.clone(),
    }
}

/// EG 1.16.11 (on a Redis of its own) and tollgate, each with an Admin API and nothing else, to
/// send the same requests to.
fn admin_apis() -> (RedisServer, ExpressGateway, ConfigDir, GatewayProcess) {
    let redis = RedisServer::start();
    let eg = ExpressGateway::start("policies: [proxy]\n", redis.port);
    let dir =
        ConfigDir::new("http: {port: ${PORT}}\nadmin: {port: ${ADMIN_PORT}, host: 127.0.0.1}\n");
    let tg = GatewayProcess::start(&dir);
    (redis, eg, dir, tg)
}

/// The Admin API's credential answers, compared with EG 1.16.11's for the same requests: every
/// credential type, given and generated secrets, scopes (which EG's jwt model drops), reads
/// and lists.
#[test]
fn credential_answers_are_egs() {
    let (_redis, eg, _dir, tg) = admin_apis();
    let mut answers: Vec<Vec<(u16, serde_json::Value)>> = Vec::new();
    for admin in [eg.admin_port, tg.admin_port] {
        let call = |method: &str, path: &str, body: &str| {
            let r = if method == "GET" {
                get(admin, "GET", path, &[])
            } else {
                send_json(admin, method, path, body)
            };
            (
                r.status,
                serde_json::from_slice(&r.body).unwrap_or(serde_json::Value::Null),
            )
        };
        let u1 = call(
            "POST",
            "/users",
            r#"{"username": "u1", "firstname": "a", "lastname": "b"}"#,
        );
        let u2 = call(
            "POST",
            "/users",
            r#"{"username": "u2", "firstname": "c", "lastname": "d"}"#,
        );
        let id = |u: &(u16, serde_json::Value)| u.1["id"].as_str().unwrap_or("").to_string();
        let (u1_id, u2_id) = (id(&u1), id(&u2));
        let mut run = vec![u1, u2, call("POST", "/scopes", r#"{"scopes": ["a"]}"#)];
        for body in [
            r#"{"consumerId": "u1", "type": "basic-auth", "credential": {"password": "p", "scopes": ["a"]}}"#,
            r#"{"consumerId": "u2", "type": "basic-auth", "credential": {}}"#,
            r#"{"consumerId": "u1", "type": "oauth2", "credential": {"secret": "s"}}"#,
            r#"{"consumerId": "u2", "type": "oauth2"}"#,
            r#"{"consumerId": "u1", "type": "key-auth", "credential": {"keyId": "kid1", "keySecret": "ksec1"}}"#,
            r#"{"consumerId": "u1", "type": "key-auth", "credential": {"keyId": "kid2", "keySecret": "ksec2", "scopes": ["a"]}}"#,
            r#"{"consumerId": "u2", "type": "key-auth"}"#,
            r#"{"consumerId": "u1", "type": "jwt", "credential": {"keyId": "jid1", "keySecret": "jsec1"}}"#,
            r#"{"consumerId": "u1", "type": "jwt", "credential": {"keyId": "jid2", "keySecret": "jsec2", "scopes": ["a"]}}"#,
            r#"{"consumerId": "u1", "type": "jwt", "credential": {"keyId": "jid3", "scopes": ["no-such-scope"]}}"#,
        ] {
            run.push(call("POST", "/credentials", body));
        }
        for path in [
            "/credentials/key-auth/kid2".to_string(),
            "/credentials/jwt/jid2".to_string(),
            format!("/credentials/basic-auth/{u1_id}"),
            format!("/credentials/oauth2/{u1_id}"),
            "/credentials/key-auth/nope".to_string(),
        ] {
            run.push(call("GET", &path, ""));
        }
        let ids = [(u1_id.clone(), "u1"), (u2_id.clone(), "u2")];
        let mut run: Vec<(u16, serde_json::Value)> =
            run.iter().map(|(s, v)| (*s, normalise(v, &ids))).collect();
        // A consumer's list (EG's order within a type is a set's: compare sorted).
        let (status, list) = call("GET", "/credentials/u1", "");
        let mut entries: Vec<String> = list["credentials"]
            .as_array()
            .map(|a| a.iter().map(|e| normalise(e, &ids).to_string()).collect())
            .unwrap_or_default();
        entries.sort();
        run.push((status, serde_json::json!(entries)));
        answers.push(run);
    }
    let (eg_run, tg_run) = (&answers[0], &answers[1]);
    assert_eq!(eg_run.len(), tg_run.len());
    for (i, (e, t)) in eg_run.iter().zip(tg_run).enumerate() {
        assert_eq!(e, t, "answer {i}: EG {e:?}\ntollgate {t:?}");
    }
}

/// The Admin API routes as EG's Express does — a HEAD answered as a GET without its body, the
/// routes' own words without case, an empty segment matching nothing — and a status route's
/// answers to bodies that are not the current boolean (EG compares strictly: anything but
/// `true` deactivates, again if need be): compared with EG 1.16.11 for the same requests.
#[test]
fn admin_routing_and_status_answers_are_egs() {
    let (_redis, eg, _dir, tg) = admin_apis();
    let mut answers: Vec<Vec<(u16, serde_json::Value)>> = Vec::new();
    for admin in [eg.admin_port, tg.admin_port] {
        let call = |method: &str, path: &str, body: &str| {
            let r = match method {
                "GET" => get(admin, "GET", path, &[]),
                "HEAD" => support::request(
                    admin,
                    &format!(
                        "HEAD {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
                    ),
                    true,
                ),
                // A POST expecting what no server meets.
                "EXPECT" => support::request(
                    admin,
                    &format!("POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nExpect: foo\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len()),
                    false,
                ),
                _ => send_json(admin, method, path, body),
            };
            let body = serde_json::from_slice(&r.body).unwrap_or(serde_json::Value::Null);
            // (Only what both name the same way: the user's name, a status, a list's length.)
            let shown = match (&body["username"], &body["status"], &body["users"]) {
                (serde_json::Value::String(u), _, _) => serde_json::json!(u),
                (_, serde_json::Value::String(s), _) => serde_json::json!(s),
                (_, _, serde_json::Value::Array(a)) => serde_json::json!(a.len()),
                _ => serde_json::Value::Null,
            };
            (r.status, shown)
        };
        let mut run = vec![call(
            "POST",
            "/users",
            r#"{"username": "u1", "firstname": "a", "lastname": "b"}"#,
        )];
        for (method, path) in [
            ("GET", "/Users"),
            ("GET", "/USERS/u1"),
            ("GET", "/users/u1/"),
            ("HEAD", "/users"),
            ("HEAD", "/users/u1"),
            ("HEAD", "/users/nobody"),
            ("GET", "//users"),
            ("GET", "/users//u1"),
        ] {
            run.push(call(method, path, ""));
        }
        run.push(call(
            "EXPECT",
            "/users",
            r#"{"username": "u2", "firstname": "c", "lastname": "d"}"#,
        ));
        run.push(call("GET", "/users/u2", ""));
        for (path, body) in [
            ("/users/u1/status", r#"{"status": false}"#),
            ("/users/u1/status", r#"{"status": false}"#),
            ("/users/u1/status", r#"{}"#),
            ("/users/u1/status", r#"{"status": "false"}"#),
            ("/users/u1/status", r#"{"status": 1}"#),
            ("/users/u1/Status", r#"{"status": true}"#),
            ("/users/u1/status", r#"{"status": true}"#),
            ("/users/u1/status", r#"{"status": "true"}"#),
        ] {
            run.push(call("PUT", path, body));
        }
        answers.push(run);
    }
    let (eg_run, tg_run) = (&answers[0], &answers[1]);
    assert_eq!(eg_run.len(), tg_run.len());
    for (i, (e, t)) in eg_run.iter().zip(tg_run).enumerate() {
        assert_eq!(e, t, "answer {i}: EG {e:?}\ntollgate {t:?}");
    }
}

/// `hostMatch` reads its pattern as EG's minimatch does — braces, ranges, classes, a negated
/// pattern — checked against EG itself: the same pipeline, the same Host headers, the same
/// answers. (Only `*` and `?` were read: the others never matched, so a rule meant to keep
/// every host but internal ones out let everything through.)
#[test]
fn host_patterns_match_as_in_express_gateway() {
    let redis = RedisServer::start();
    let pipelines = "apiEndpoints:\n  all: {paths: '/h/*'}\npolicies: [terminate]\npipelines:\n  p:\n    apiEndpoints: [all]\n    policies:\n      - terminate:\n          - condition: {name: hostMatch, pattern: '{a,b}.example.com'}\n            action: {statusCode: 211}\n          - condition: {name: hostMatch, pattern: '[xy].example.com'}\n            action: {statusCode: 212}\n          - condition: {name: hostMatch, pattern: 'tile{1..3}.example.com:*'}\n            action: {statusCode: 213}\n          - condition: {name: hostMatch, pattern: '!*.internal'}\n            action: {statusCode: 214}\n          - action: {statusCode: 215}\n";
    let eg = ExpressGateway::start(pipelines, redis.port);
    let dir = ConfigDir::new(&format!(
        "http: {{port: ${{PORT}}}}\nadmin: {{port: ${{ADMIN_PORT}}, host: 127.0.0.1}}\n{pipelines}"
    ));
    let tg = GatewayProcess::start(&dir);
    let hosts = [
        "a.example.com",
        "b.example.com",
        "c.example.com",
        "x.example.com",
        "tile2.example.com:8080",
        "tile4.example.com:8080",
        "www.example.com",
        "db.internal",
        ".internal",
    ];
    let answers = |port: u16| -> Vec<u16> {
        hosts
            .iter()
            .map(|h| get(port, "GET", "/h/x", &[("Host", h)]).status)
            .collect()
    };
    let (theirs, ours) = (answers(eg.port), answers(tg.port));
    assert_eq!(ours, theirs, "{hosts:?}");
    assert_eq!(ours, [211, 211, 214, 212, 213, 214, 214, 215, 214]);
}
