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
