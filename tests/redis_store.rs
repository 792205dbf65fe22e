//! tollgate on a real Redis: a Redis written by Express Gateway 1.16 works unchanged, what
//! tollgate writes has EG's layout, two gateways share one Redis (a revocation through one is
//! refused by the other within a second), known credentials survive Redis going away,
//! rate-limit windows are shared, and clean leaves no orphan keys.

mod support;

use std::time::{Duration, Instant};

use support::redis::{eg_fixture, RedisServer};
use support::{get, json_body, jwt, request, send_json, ConfigDir, EchoUpstream, GatewayProcess};

const KANO: &str = "6e5b8d7a-9b4b-4958-9930-2f0af98b2749";
const APP1: &str = "f8766334-1d5f-423e-9c53-2a594adad297";
const APP2: &str = "7107c894-3da0-4369-b5ac-913d8700cc6c";
const CUSTOMER1: &str = "22e88000-4eb8-460a-ac67-acf1042cc865";
const POLICY_SECRET: &str = "policysecret";

fn config(up: &EchoUpstream, redis: &RedisServer) -> ConfigDir {
    let dir = ConfigDir::new(&format!(
        r#"http: {{port: ${{PORT}}}}
admin: {{port: ${{ADMIN_PORT}}, host: 127.0.0.1}}
apiEndpoints:
  wmts: {{paths: '/wmts/*', scopes: [wmts]}}
  wms: {{paths: '/wms/*', scopes: [wms]}}
  basic: {{paths: '/basic/*', scopes: [wms]}}
  token: {{paths: '/token/*'}}
  limited: {{paths: '/limited/*'}}
  delayed: {{paths: '/delayed/*'}}
serviceEndpoints:
  up: {{url: '{up}'}}
policies: [key-auth, jwt, basic-auth, scopes, proxy, rate-limit, response-transformer]
pipelines:
  keyed:
    apiEndpoints: [wmts, wms]
    policies:
      - key-auth:
      - proxy: [{{action: {{serviceEndpoint: up}}}}]
  basic:
    apiEndpoints: [basic]
    policies:
      - basic-auth:
      - proxy: [{{action: {{serviceEndpoint: up}}}}]
  token:
    apiEndpoints: [token]
    policies:
      - jwt: [{{action: {{secretOrPublicKey: {POLICY_SECRET}}}}}]
      - proxy: [{{action: {{serviceEndpoint: up}}}}]
  limited:
    apiEndpoints: [limited]
    policies:
      - rate-limit: [{{action: {{max: 3, windowMs: 60000, rateLimitBy: 'shared'}}}}]
      - proxy: [{{action: {{serviceEndpoint: up}}}}]
  delayed:
    apiEndpoints: [delayed]
    policies:
      - response-transformer: [{{action: {{headers: {{add: {{X-User: req.user.id}}}}}}}}]
      - rate-limit: [{{action: {{max: 100, windowMs: 60000, delayAfter: 1, delayMs: 1, rateLimitBy: 'delayed'}}}}]
      - key-auth:
      - proxy: [{{action: {{serviceEndpoint: up}}}}]
"#,
        up = up.url("")
    ));
    dir.write(
        "system.config.yml",
        &format!("db:\n  redis:\n    emulate: false\n    host: 127.0.0.1\n    port: {}\n    namespace: EG\ncrypto:\n  saltRounds: 4\n", redis.port),
    );
    dir
}

/// A Redis holding EG's fixture, an upstream, and a config directory using both.
/// A Redis, an upstream and a gateway on both.
fn gateway_on_redis() -> (RedisServer, EchoUpstream, ConfigDir, GatewayProcess) {
    let redis = RedisServer::start();
    let up = EchoUpstream::start("up");
    let dir = config(&up, &redis);
    let gw = GatewayProcess::start(&dir);
    (redis, up, dir, gw)
}

fn with_eg_fixture() -> (RedisServer, EchoUpstream, ConfigDir) {
    let redis = RedisServer::start();
    redis.load_dump(&eg_fixture());
    let up = EchoUpstream::start("up");
    let dir = config(&up, &redis);
    (redis, up, dir)
}

/// A request delayed by a `rate-limit` counted in Redis goes on through the pipeline, and a
/// `response-transformer` before it reads what the later steps made (the consumer), as with
/// every other request: its values are read once the pipeline has run.
#[test]
fn a_delay_counted_in_redis_leaves_the_response_edits_to_the_end() {
    let (_redis, _up, dir) = with_eg_fixture();
    let gw = GatewayProcess::start(&dir);
    let key = [("Authorization", "apiKey kargo-ka-id:kargo-ka-secret")];
    for delayed in [false, true] {
        let r = get(gw.port, "GET", "/delayed/1", &key);
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(consumer_of(&r), Some(APP2.to_string()));
        assert_eq!(r.header("x-user"), Some(APP2), "delayed: {delayed}");
    }
}

fn consumer_of(r: &support::Response) -> Option<String> {
    r.echoed().header("eg-consumer-id")
}

fn put_json(port: u16, path: &str, body: &str) -> support::Response {
    send_json(port, "PUT", path, body)
}

fn post_json(port: u16, path: &str, body: &str) -> support::Response {
    send_json(port, "POST", path, body)
}

fn json_of(r: &support::Response) -> serde_json::Value {
    json_body(r)
}

#[test]
fn a_redis_written_by_eg_works_unchanged() {
    let (_redis, _up, dir) = with_eg_fixture();
    let gw = GatewayProcess::start(&dir);
    let p = gw.port;
    // key-auth of an app: its scopes allow wmts, not wms (403 as EG).
    let r = get(
        p,
        "GET",
        "/wmts/1",
        &[("Authorization", "apiKey kargo-ka-id:kargo-ka-secret")],
    );
    assert_eq!(consumer_of(&r), Some(APP2.to_string()));
    let r = get(
        p,
        "GET",
        "/wms/1",
        &[("Authorization", "apiKey kargo-ka-id:kargo-ka-secret")],
    );
    assert_eq!((r.status, r.text().as_str()), (403, "Forbidden"));
    // A generated key of a user.
    let r = get(
        p,
        "GET",
        "/wms/1",
        &[(
            "Authorization",
            "apiKey 7dL52oTuHMzvE6mllpVzyb:2Dc4EVTRuNnAlJOuycoPgd",
        )],
    );
    assert_eq!(
        consumer_of(&r),
        Some("30be431e-ca2c-47b6-b881-b535bc034279".to_string())
    );
    // The credential of an inactive app is refused.
    assert_eq!(
        get(
            p,
            "GET",
            "/wms/1",
            &[("Authorization", "apiKey old-ka-id:old-ka-secret")]
        )
        .status,
        401
    );
    // jwt with checkCredentialExistence: sub is the credential's keyId.
    let t = jwt::hs256(POLICY_SECRET, &serde_json::json!({"sub": "kargo-jwt-id"}));
    let r = get(
        p,
        "GET",
        "/token/x",
        &[("Authorization", &format!("Bearer {t}"))],
    );
    assert_eq!(consumer_of(&r), Some(APP1.to_string()));
    // The very token EG accepted in the fixture's checks.
    let eg_token = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJrYXJnby1qd3QtaWQifQ.RBVItzaaZbq9Xrvb8H2ADiLuCqZZsMMBnItb0n3XdNQ";
    assert_eq!(
        get(
            p,
            "GET",
            "/token/x",
            &[("Authorization", &format!("Bearer {eg_token}"))]
        )
        .status,
        200
    );
    // basic-auth with bcrypt hashes written by EG: username, user id, app id.
    use base64::Engine;
    let b = |s: &str| {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(s)
        )
    };
    let r = get(
        p,
        "GET",
        "/basic/x",
        &[("Authorization", &b("customer1:s3cret"))],
    );
    assert_eq!(consumer_of(&r), Some(CUSTOMER1.to_string()));
    assert_eq!(
        get(
            p,
            "GET",
            "/basic/x",
            &[("Authorization", &b(&format!("{CUSTOMER1}:s3cret")))]
        )
        .status,
        200
    );
    assert_eq!(
        consumer_of(&get(
            p,
            "GET",
            "/basic/x",
            &[("Authorization", &b(&format!("{KANO}:s3cret")))]
        )),
        Some(KANO.to_string())
    );
    assert_eq!(
        get(
            p,
            "GET",
            "/basic/x",
            &[("Authorization", &b("customer1:wrong"))]
        )
        .status,
        401
    );
    assert_eq!(
        get(
            p,
            "GET",
            "/basic/x",
            &[("Authorization", &b("kano:s3cret"))]
        )
        .status,
        401,
        "an app name is not a basic-auth user id"
    );
    // The Admin API reads EG's objects as EG shows them.
    let user = json_of(&get(gw.admin_port, "GET", "/users/kalisio", &[]));
    assert_eq!(user["firstname"], "Jane");
    assert_eq!(user["isActive"], true);
    let app = json_of(&get(gw.admin_port, "GET", "/apps/app1", &[]));
    assert_eq!(app["scopes"], "wms,wmts");
    let cred = json_of(&get(
        gw.admin_port,
        "GET",
        "/credentials/key-auth/kargo-ka-id",
        &[],
    ));
    assert_eq!(cred["scopes"], serde_json::json!(["wmts", "k2"]));
    assert_eq!(cred["consumerId"], APP2);
    let basic = json_of(&get(
        gw.admin_port,
        "GET",
        &format!("/credentials/basic-auth/{CUSTOMER1}"),
        &[],
    ));
    assert!(basic.get("password").is_none(), "passwords are never shown");
    let listed = json_of(&get(gw.admin_port, "GET", "/credentials/app2", &[]));
    assert_eq!(listed["credentials"][0]["keyId"], "kargo-ka-id");
}

/// A script that lists users and apps page by page and removes what each page shows removes
/// them all (a page began at an offset into a list made again for each page: 8 of 40 users
/// were never shown, and another program's additions were shown twice).
#[test]
fn a_listing_pages_through_removals_as_egs_does() {
    let (_redis, _up, _dir, gw) = gateway_on_redis();
    let a = gw.admin_port;
    for i in 0..40 {
        let r = post_json(a, "/users", &format!(r#"{{"username": "pg{i:02}"}}"#));
        assert_eq!(r.status, 200, "{}", r.text());
        let r = post_json(
            a,
            "/apps",
            &format!(r#"{{"userId": "pg{i:02}", "name": "app{i:02}"}}"#),
        );
        assert_eq!(r.status, 200, "{}", r.text());
    }
    for (route, key, what) in [("apps", "apps", "name"), ("users", "users", "username")] {
        let mut start = 0;
        let (mut pages, mut removed) = (0, std::collections::BTreeSet::new());
        loop {
            let page = json_of(&get(
                a,
                "GET",
                &format!("/{route}?start={start}&count=7"),
                &[],
            ));
            pages += 1;
            for item in page[key].as_array().expect("a list") {
                let id = item["id"].as_str().expect("id");
                let r = send_json(a, "DELETE", &format!("/{route}/{id}"), "");
                assert_eq!(r.status, 204, "{}", r.text());
                removed.insert(item[what].as_str().expect("name").to_string());
            }
            // Another program adds one while the listing runs: it may or may not be shown.
            if pages == 2 {
                let r = post_json(a, "/users", &format!(r#"{{"username": "late-{route}"}}"#));
                assert_eq!(r.status, 200, "{}", r.text());
            }
            start = page["nextKey"].as_u64().expect("nextKey");
            if start == 0 {
                break;
            }
        }
        removed.retain(|n| !n.starts_with("late-"));
        assert_eq!(removed.len(), 40, "{route}: {removed:?}");
        // `SCAN`'s `COUNT` is a hint: pages of about 7.
        assert!(pages >= 3, "{route}: {pages} pages of 7");
    }
    let users = json_of(&get(a, "GET", "/users", &[]));
    let left: Vec<_> = users["users"]
        .as_array()
        .expect("users")
        .iter()
        .map(|u| u["username"].clone())
        .collect();
    assert!(left.len() <= 2, "{left:?}");
}

/// A page of a listing in a Redis of many other keys looks at a bounded number of them (a
/// page of one, with no app among 120,000 keys, took a `SCAN` round trip per key: 4.5 s with
/// 250,000), and the listing still ends with every app; the CLI's listing shows users written
/// by hand without an id apart (it took them for one).
#[test]
fn a_page_among_many_other_keys_looks_at_a_bounded_number() {
    let (redis, _up, _dir, gw) = gateway_on_redis();
    let a = gw.admin_port;
    let mut c = redis.conn();
    let _: () = redis::cmd("EVAL")
        .arg("for i = 1, tonumber(ARGV[1]) do redis.call('SET', 'other:' .. i, 'x') end")
        .arg(0)
        .arg(120_000)
        .query(&mut c)
        .expect("other keys");
    let _: () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query(&mut c)
        .expect("resetstat");
    let page = json_of(&get(a, "GET", "/apps?count=1", &[]));
    assert_eq!(page["apps"], serde_json::json!([]), "{page}");
    let stats: String = redis::cmd("INFO")
        .arg("commandstats")
        .query(&mut c)
        .expect("info");
    let scans: u64 = stats
        .lines()
        .find_map(|l| l.strip_prefix("cmdstat_scan:calls="))
        .and_then(|l| l.split(',').next())
        .and_then(|n| n.parse().ok())
        .expect("scan calls");
    assert!(scans <= 200, "{scans} SCANs for one page");
    // Pages, empty ones too, go on to the end.
    assert_eq!(post_json(a, "/users", r#"{"username": "ann"}"#).status, 200);
    for name in ["v1", "v2", "v3"] {
        let body = format!(r#"{{"userId": "ann", "name": "{name}"}}"#);
        assert_eq!(post_json(a, "/apps", &body).status, 200);
    }
    let (mut start, mut names) = (0, Vec::new());
    loop {
        let page = json_of(&get(a, "GET", &format!("/apps?count=1&start={start}"), &[]));
        names.extend(
            page["apps"]
                .as_array()
                .expect("apps")
                .iter()
                .map(|p| p["name"].clone()),
        );
        start = page["nextKey"].as_u64().expect("nextKey");
        if start == 0 {
            break;
        }
    }
    names.sort_by_key(|n| n.to_string());
    assert_eq!(names, ["v1", "v2", "v3"]);
    for name in ["hand1", "hand2"] {
        redis.hset(&format!("EG-user:{name}"), "username", name);
    }
    let admin = format!("http://127.0.0.1:{a}");
    let out = support::gateway::run_tollgate(&["users", "list", "-q"], &[("EG_ADMIN_URL", &admin)]);
    let listed = String::from_utf8_lossy(&out.stdout).into_owned();
    for name in ["ann", "hand1", "hand2"] {
        assert!(listed.lines().any(|l| l == name), "{name} in {listed}");
    }
}

/// The CLI reads an answer of more than 10 MiB whole (the list of some 32,000 credentials was
/// read as none: `✖ No credentials`, its reader stopped at 10 MiB and its failure was taken
/// for an empty answer).
#[test]
fn the_cli_reads_a_long_answer_whole() {
    let (redis, _up, _dir, gw) = gateway_on_redis();
    let a = gw.admin_port;
    let user = json_of(&post_json(a, "/users", r#"{"username": "ann"}"#));
    let uid = user["id"].as_str().expect("id").to_string();
    // Twelve credentials of a megabyte each (their scopes' text), written by another program.
    let _: () = redis::cmd("EVAL")
        .arg(
            "local big = '[\"' .. string.rep('s', 1000000) .. '\"]' \
             for i = 1, 12 do \
               redis.call('HSET', 'EG-key-auth:big' .. i, 'keyId', 'big' .. i, 'keySecret', 'x', \
                 'consumerId', ARGV[1], 'isActive', 'true', 'scopes', big) \
               redis.call('SADD', 'EG-key-auth:' .. ARGV[1], 'big' .. i) \
             end",
        )
        .arg(0)
        .arg(&uid)
        .query(&mut redis.conn())
        .expect("credentials");
    let admin = format!("http://127.0.0.1:{a}");
    let out =
        support::gateway::run_tollgate(&["credentials", "list", "-q"], &[("EG_ADMIN_URL", &admin)]);
    let listed = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        listed.lines().count(),
        12,
        "{}",
        &listed[..listed.len().min(300)]
    );
}

/// A consumer's set of key ids that names a key of another type (EG leaves its own user's id
/// there after a failed write: the member's credential key is the set itself) is one bad
/// member, not a store that does not answer: its consumer's credentials and every listing
/// were `503 the store is unavailable … WRONGTYPE`.
#[test]
fn a_key_of_another_type_in_a_listing_is_passed_over() {
    let (redis, _up, _dir, gw) = gateway_on_redis();
    let a = gw.admin_port;
    let user = json_of(&post_json(a, "/users", r#"{"username": "ann"}"#));
    let uid = user["id"].as_str().expect("id").to_string();
    let cred = json_of(&post_json(
        a,
        "/credentials",
        r#"{"consumerId": "ann", "type": "key-auth", "credential": {"keyId": "k1", "keySecret": "s1"}}"#,
    ));
    assert_eq!(cred["keyId"], "k1");
    let _: () = redis::cmd("SADD")
        .arg(format!("EG-key-auth:{uid}"))
        .arg(&uid)
        .query(&mut redis.conn())
        .expect("sadd");
    // A member that is not UTF-8 (another tool's), beside the real one.
    let _: () = redis::cmd("SADD")
        .arg(format!("EG-key-auth:{uid}"))
        .arg(&[0xffu8, 0xfe][..])
        .query(&mut redis.conn())
        .expect("sadd");
    redis.hset("EG-user:zzz", "username", "zzz");
    let _: () = redis::cmd("SET")
        .arg("EG-user:other")
        .arg("a string")
        .query(&mut redis.conn())
        .expect("set");
    for path in [format!("/credentials/{uid}"), "/credentials".to_string()] {
        let r = get(a, "GET", &path, &[]);
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        let creds = json_of(&r)["credentials"].clone();
        let ids: Vec<_> = creds
            .as_array()
            .expect("credentials")
            .iter()
            .map(|c| c["keyId"].clone())
            .collect();
        assert_eq!(ids, vec![serde_json::json!("k1")], "{path}: {creds}");
    }
    let users = json_of(&get(a, "GET", "/users", &[]));
    let mut names: Vec<_> = users["users"]
        .as_array()
        .expect("users")
        .iter()
        .map(|u| u["username"].as_str().unwrap_or_default().to_string())
        .collect();
    names.sort();
    assert_eq!(names, ["ann", "zzz"], "{users}");
}

/// Deleting a scope takes it from every credential that holds it — one written by hand into
/// Redis without the scope's index too — and the gateway refuses it at once; keys of other
/// types under the credentials' prefixes are passed over.
#[test]
fn deleting_a_scope_takes_it_from_every_credential_holding_it() {
    let (redis, _up, _dir, gw) = gateway_on_redis();
    let a = gw.admin_port;
    assert!(post_json(a, "/scopes", r#"{"scopes": ["wms", "wmts"]}"#).status < 300);
    let user = json_of(&post_json(a, "/users", r#"{"username": "ann"}"#));
    let uid = user["id"].as_str().expect("id").to_string();
    let made = post_json(
        a,
        "/credentials",
        r#"{"consumerId": "ann", "type": "key-auth", "credential": {"keyId": "k1", "keySecret": "s1", "scopes": ["wms", "wmts"]}}"#,
    );
    assert_eq!(made.status, 200, "{}", made.text());
    let made = post_json(
        a,
        "/credentials",
        r#"{"consumerId": "ann", "type": "basic-auth", "credential": {"password": "pw", "scopes": ["wms"]}}"#,
    );
    assert_eq!(made.status, 200, "{}", made.text());
    for (field, value) in [
        ("keyId", "hand"),
        ("keySecret", "hs"),
        ("id", "hand"),
        ("consumerId", uid.as_str()),
        ("isActive", "true"),
        ("scopes", r#"["wmts","wms"]"#),
    ] {
        redis.hset("EG-key-auth:hand", field, value);
    }
    let _: () = redis::cmd("SET")
        .arg("EG-jwt:odd")
        .arg("a string")
        .query(&mut redis.conn())
        .expect("set");
    let tile = |path: &str, key: &str| {
        get(
            gw.port,
            "GET",
            path,
            &[("Authorization", &format!("apiKey {key}"))],
        )
        .status
    };
    assert_eq!(tile("/wms/1", "k1:s1"), 200);
    assert_eq!(tile("/wms/1", "hand:hs"), 200);

    let r = send_json(a, "DELETE", "/scopes/wms", "");
    assert_eq!(r.status, 204, "{}", r.text());
    assert_eq!(tile("/wms/1", "k1:s1"), 403);
    assert_eq!(tile("/wms/1", "hand:hs"), 403);
    assert_eq!(tile("/wmts/1", "hand:hs"), 200);
    for key in ["EG-key-auth:k1", "EG-key-auth:hand"] {
        assert_eq!(redis.hgetall(key)["scopes"], r#"["wmts"]"#, "{key}");
    }
    assert_eq!(
        redis.hgetall(&format!("EG-basic-auth:{uid}"))["scopes"],
        "[]"
    );
    assert_eq!(redis.key_type("EG-jwt:odd"), "string");
    assert_eq!(redis.key_type(&format!("EG-key-auth:{uid}")), "set");
    let scopes = json_of(&get(a, "GET", "/scopes", &[]));
    assert_eq!(scopes["scopes"], serde_json::json!(["wmts"]));
}

#[test]
fn what_tollgate_writes_has_egs_layout() {
    let (redis, _up, _dir, gw) = gateway_on_redis();
    let a = gw.admin_port;
    assert_eq!(
        post_json(a, "/scopes", r#"{"scopes": ["wms", "wmts"]}"#).status,
        201
    );
    let user = json_of(&post_json(
        a,
        "/users",
        r#"{"username": "ann", "firstname": "Ann", "lastname": "Lee", "email": "ann@example.com"}"#,
    ));
    let uid = user["id"].as_str().expect("id").to_string();
    assert_eq!(post_json(a, "/users", r#"{"username": "ann"}"#).status, 409);
    let app = json_of(&post_json(
        a,
        "/apps",
        r#"{"userId": "ann", "name": "viewer", "scopes": ["wms", "wmts"]}"#,
    ));
    let app_id = app["id"].as_str().expect("id").to_string();
    let cred = json_of(&post_json(
        a,
        "/credentials",
        r#"{"consumerId": "viewer", "type": "key-auth", "credential": {"scopes": ["wms"]}}"#,
    ));
    let key_id = cred["keyId"].as_str().expect("keyId").to_string();
    assert_eq!(key_id.len(), 22);
    let basic = json_of(&post_json(
        a,
        "/credentials",
        r#"{"consumerId": "ann", "type": "basic-auth", "credential": {"password": "pw", "scopes": ["wmts"]}}"#,
    ));
    assert!(
        basic.get("password").is_none(),
        "a given password is not echoed"
    );

    // Compare with what EG wrote for the same kinds of objects.
    let fixture = eg_fixture();
    let fields_of = |key: &str| -> Vec<String> {
        let e = fixture
            .as_array()
            .expect("dump")
            .iter()
            .find(|e| e["key"] == key)
            .expect("fixture key");
        let mut f: Vec<String> = e["value"]
            .as_object()
            .expect("hash")
            .keys()
            .cloned()
            .collect();
        f.sort();
        f
    };
    let sorted = |h: std::collections::HashMap<String, String>| {
        let mut k: Vec<String> = h.into_keys().collect();
        k.sort();
        k
    };
    let user_hash = redis.hgetall(&format!("EG-user:{uid}"));
    assert_eq!(user_hash["isActive"], "true");
    let date = regex::Regex::new(r"^[A-Z][a-z]{2} [A-Z][a-z]{2} \d{2} \d{4} \d{2}:\d{2}:\d{2} GMT\+0000 \(Coordinated Universal Time\)$").expect("re");
    assert!(
        date.is_match(&user_hash["createdAt"]),
        "{}",
        user_hash["createdAt"]
    );
    assert_eq!(
        sorted(user_hash),
        fields_of("EG-user:30be431e-ca2c-47b6-b881-b535bc034279"),
        "a user with email as EG's kalisio"
    );
    assert_eq!(redis.smembers("EG-username:ann"), vec![uid.clone()]);
    let app_hash = redis.hgetall(&format!("EG-application:{app_id}"));
    assert_eq!(app_hash["scopes"], "wms,wmts");
    assert_eq!(
        sorted(app_hash),
        fields_of(&format!("EG-application:{KANO}"))
    );
    assert_eq!(
        redis.smembers(&format!("EG-user-applications:{uid}")),
        vec![app_id.clone()]
    );
    assert_eq!(
        redis.smembers("EG-application-name:viewer"),
        vec![app_id.clone()]
    );
    let cred_hash = redis.hgetall(&format!("EG-key-auth:{key_id}"));
    assert_eq!(cred_hash["scopes"], r#"["wms"]"#);
    assert_eq!(cred_hash["consumerId"], app_id);
    assert_eq!(sorted(cred_hash), fields_of("EG-key-auth:kargo-ka-id"));
    assert_eq!(redis.key_type(&format!("EG-key-auth:{app_id}")), "set");
    assert_eq!(
        redis.smembers(&format!("EG-key-auth:{app_id}")),
        vec![key_id.clone()]
    );
    let basic_hash = redis.hgetall(&format!("EG-basic-auth:{uid}"));
    assert!(basic_hash["password"].starts_with("$2"), "bcrypt");
    assert_eq!(
        sorted(basic_hash),
        fields_of(&format!("EG-basic-auth:{CUSTOMER1}"))
    );
    assert_eq!(
        redis
            .hgetall("EG-scope-credentials:wms")
            .get(&format!("EG-key-auth:{key_id}"))
            .map(String::as_str),
        Some("true")
    );
    assert_eq!(
        sorted(redis.hgetall("EG-scope")),
        vec!["wms".to_string(), "wmts".to_string()]
    );

    // Deleting the user removes its app and every credential of both: nothing is left.
    let del = request(
        a,
        &format!("DELETE /users/{uid} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"),
        false,
    );
    assert_eq!(del.status, 204);
    let left: Vec<String> = redis
        .keys()
        .into_iter()
        .filter(|k| !k.starts_with("EG-scope"))
        .collect();
    assert!(left.is_empty(), "orphans: {left:?}");
    assert!(redis.hgetall("EG-scope-credentials:wms").is_empty());
}

/// A write of many consumers at once (a populate of 1,500) is announced in one message that
/// has every other gateway read everything again, not one message each (50,000 were sent one
/// round trip after another, and their flood closed the other gateways' subscriptions at
/// Redis' pubsub output limit); the other gateway has the new keys within seconds.
#[test]
fn a_write_of_many_consumers_is_announced_in_one_message() {
    let (redis, _up, dir) = with_eg_fixture();
    let a = GatewayProcess::start(&dir);
    let b = GatewayProcess::start(&dir);
    let loads = start_loads_over(&b);
    // The fixture's key, which the file does not list: removed by the populate.
    let old = [("Authorization", "apiKey kargo-ka-id:kargo-ka-secret")];
    assert_eq!(get(b.port, "GET", "/wmts/1", &old).status, 200);
    let _: () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query(&mut redis.conn())
        .expect("resetstat");
    let users: Vec<String> = (0..1500)
        .map(|i| format!(r#""m{i}": {{"app{i}": {{"type": "key-auth", "keyId": "M{i}", "keySecret": "S", "scopes": ["wmts"]}}}}"#))
        .collect();
    let file = format!(
        r#"{{"scopes": ["wms", "wmts", "k2"], "users": {{{}}}}}"#,
        users.join(", ")
    );
    let r = send_json(a.admin_port, "POST", "/tollgate/populate", &file);
    assert_eq!(r.status, 200, "{}", r.text());
    let key = [("Authorization", "apiKey M1499:S")];
    let deadline = Instant::now() + Duration::from_secs(10);
    while get(b.port, "GET", "/wmts/1", &key).status != 200 {
        assert!(
            Instant::now() < deadline,
            "the populate did not reach the other gateway"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // (A new key is looked up when first seen; a removed one only the message tells of.)
    while get(b.port, "GET", "/wmts/1", &old).status != 401 {
        assert!(
            Instant::now() < deadline,
            "the removal did not reach the other gateway"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(b.metric(FULL_LOADS) > loads);
    let stats: String = redis::cmd("INFO")
        .arg("commandstats")
        .query(&mut redis.conn())
        .expect("info");
    let publishes: u64 = stats
        .lines()
        .find_map(|l| l.strip_prefix("cmdstat_publish:calls="))
        .and_then(|l| l.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(publishes < 50, "{publishes} messages");
}

#[test]
fn two_gateways_share_one_redis() {
    let (redis, _up, dir) = with_eg_fixture();
    let a = GatewayProcess::start(&dir);
    let b = GatewayProcess::start(&dir);
    let key = [("Authorization", "apiKey kargo-ka-id:kargo-ka-secret")];
    assert_eq!(get(b.port, "GET", "/wmts/1", &key).status, 200);
    // A credential created through A works on B without waiting for a resync.
    let cred = json_of(&post_json(
        a.admin_port,
        "/credentials",
        r#"{"consumerId": "app2", "type": "key-auth", "credential": {"keyId": "fresh", "keySecret": "s", "scopes": ["wmts"]}}"#,
    ));
    assert_eq!(cred["keyId"], "fresh");
    let fresh = [("Authorization", "apiKey fresh:s")];
    // Within seconds (the resync is a minute away).
    let deadline = Instant::now() + Duration::from_secs(5);
    while get(b.port, "GET", "/wmts/1", &fresh).status != 200 {
        assert!(
            Instant::now() < deadline,
            "a new credential did not reach the other gateway"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Revoked through A: refused by B within seconds.
    assert_eq!(
        put_json(
            a.admin_port,
            "/credentials/key-auth/kargo-ka-id/status",
            r#"{"status": false}"#
        )
        .status,
        200
    );
    let revoked_at = Instant::now();
    while get(b.port, "GET", "/wmts/1", &key).status != 401 {
        assert!(
            revoked_at.elapsed() < Duration::from_secs(5),
            "the revocation did not reach the other gateway"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Rate-limit windows are shared: 3 in all, across both gateways.
    let statuses: Vec<u16> = (0..4)
        .map(|i| {
            get(
                if i % 2 == 0 { a.port } else { b.port },
                "GET",
                "/limited/x",
                &[],
            )
            .status
        })
        .collect();
    assert_eq!(statuses, vec![200, 200, 200, 429]);
    assert_eq!(
        redis.key_type("rl:shared"),
        "string",
        "the window is a counter, as EG's"
    );
}

/// A resync that finds what the consumer cache holds is not written at `info` (one a minute
/// was most of a quiet gateway's log); the first load is, and so is a resync that finds
/// another number of credentials.
#[test]
fn only_a_resync_that_finds_a_change_is_an_info_line() {
    let (redis, _up, dir) = with_eg_fixture();
    let gw = GatewayProcess::start_with(&dir, &["--resync-seconds", "1"], &[]);
    let loads = || gw.log_text().matches("credentials loaded").count();
    let key = [("Authorization", "apiKey kargo-ka-id:kargo-ka-secret")];
    assert_eq!(get(gw.port, "GET", "/wmts/1", &key).status, 200);
    // Resyncs ran meanwhile (due every second), each finding the same credentials.
    std::thread::sleep(Duration::from_millis(3500));
    let age = gw.metric("tollgate_consumer_cache_last_resync_age_seconds");
    assert!((0.0..2.0).contains(&age), "no resync ran: age {age}");
    assert_eq!(loads(), 1, "{}", gw.log_text());
    // A credential removed behind the gateway's back (no change message): the next resync
    // finds one fewer, and says so.
    let mut c = redis.conn();
    let _: i64 = redis::cmd("DEL")
        .arg("EG-key-auth:kargo-ka-id")
        .query(&mut c)
        .expect("DEL");
    let deadline = Instant::now() + Duration::from_secs(15);
    while loads() < 2 {
        assert!(Instant::now() < deadline, "no info line: {}", gw.log_text());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(get(gw.port, "GET", "/wmts/1", &key).status, 401);
}

/// A revocation is followed while a full load runs: with many credentials a load takes
/// seconds, and resyncs due every second keep one running nearly all the time; the change
/// message is not held until the load ends, and the load's swap does not bring back what it
/// read before the change.
#[test]
fn a_revocation_is_followed_while_a_long_resync_runs() {
    let (redis, _up, dir) = with_eg_fixture();
    // 200,000 credentials more: a load takes seconds.
    redis.add_bulk_key_auth(200, APP2);
    // (A resync that changes nothing is logged at debug.)
    let gw = GatewayProcess::start_with(
        &dir,
        &["--resync-seconds", "1"],
        &[("RUST_LOG", "info,tollgate::consumers=debug")],
    );
    let key = [("Authorization", "apiKey kargo-ka-id:kargo-ka-secret")];
    // (A first load past the start's 10 s wait on a busy machine: a credential is looked up
    // meanwhile, and the revocations below would meet the first load, not a resync; the
    // bound they are held to, half the longest load logged, is not known before it ends.)
    let deadline = Instant::now() + Duration::from_secs(60);
    while get(gw.port, "GET", "/wmts/1", &key).status != 200
        || !gw.log_text().contains("credentials loaded")
    {
        assert!(Instant::now() < deadline, "{}", gw.log_text());
        std::thread::sleep(Duration::from_millis(100));
    }
    // Resyncs are due every second from the start: one is running by now.
    std::thread::sleep(Duration::from_millis(1500));
    // Revoked as a tollgate writing to the same Redis does it: the change, then its message;
    // followed at once (within a second), not after the resync.
    let revoke = |id: &str, secret: &str| {
        support::redis::revoke_and_see_it_followed(&redis, gw.port, id, secret, || gw.log_text());
        format!("{id}:{secret}")
    };
    let mut revoked = vec![revoke("kargo-ka-id", "kargo-ka-secret")];
    // More revocations through a whole load, some after it read the credential: each is
    // followed at once, and none is undone by the load's swap.
    for i in 0..25 {
        revoked.push(revoke(&format!("bulk-{}-{i}", i * 7), "s"));
        std::thread::sleep(Duration::from_millis(150));
    }
    let loads = || gw.log_text().matches("credentials loaded").count();
    let before = loads();
    let deadline = Instant::now() + Duration::from_secs(60);
    let all_refused = || {
        revoked.iter().all(|k| {
            let h = [("Authorization", format!("apiKey {k}"))];
            let h: Vec<(&str, &str)> = h.iter().map(|(n, v)| (*n, v.as_str())).collect();
            get(gw.port, "GET", "/wmts/1", &h).status == 401
        })
    };
    while loads() < before + 2 {
        assert!(
            Instant::now() < deadline,
            "no resync ended: {}",
            gw.log_text()
        );
        assert!(all_refused(), "a resync brought a revoked credential back");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(all_refused());
}

/// A credential revoked while a start's first read of the store runs is refused as soon as
/// the gateway serves: the subscriptions are made before that read, and its swap keeps what
/// they changed. (They were made after it: a revocation published while it ran, after it
/// passed the credential, was followed only when the read after the subscriptions ended.)
#[test]
fn a_revocation_during_the_first_read_at_a_start_is_followed_at_once() {
    let (redis, _up, dir) = with_eg_fixture();
    // 200,000 credentials more: a read takes seconds.
    redis.add_bulk_key_auth(200, APP2);
    let key = [("Authorization", "apiKey kargo-ka-id:kargo-ka-secret")];
    // (Set once the first read ended.)
    let serving = std::sync::atomic::AtomicBool::new(false);
    let (gw, revoked) = std::thread::scope(|s| {
        // Revocations from the start until the first read ended, one each 100 ms, as a
        // tollgate writing to the same Redis makes them: the change, then its message.
        let revoker = s.spawn(|| {
            let mut revoked = Vec::new();
            while !serving.load(std::sync::atomic::Ordering::Relaxed) {
                let id = format!("bulk-{}-{}", revoked.len() * 7 % 200, revoked.len());
                redis.revoke_key_auth(&id);
                revoked.push(id);
                assert!(revoked.len() < 1000, "the first read did not end");
                std::thread::sleep(Duration::from_millis(100));
            }
            revoked
        });
        let gw = GatewayProcess::start(&dir);
        // (A first read past the start's 10 s wait on a busy machine: the gateway serves
        // meanwhile, unknown keys looked up one by one.)
        // (The read counted, then said with its time, which bounds the checks below.)
        let deadline = Instant::now() + Duration::from_secs(60);
        while gw.metric(FULL_LOADS) < 1.0
            || support::redis::longest_consumer_load(&gw.log_text()).is_zero()
        {
            assert!(Instant::now() < deadline, "{}", gw.log_text());
            std::thread::sleep(Duration::from_millis(20));
        }
        serving.store(true, std::sync::atomic::Ordering::Relaxed);
        assert_eq!(get(gw.port, "GET", "/wmts/1", &key).status, 200);
        (gw, revoker.join().expect("the revocations"))
    });
    assert!(revoked.len() >= 3, "{} revocations", revoked.len());
    // Each refused within half the read (at least a second), not after another read.
    let read = support::redis::longest_consumer_load(&gw.log_text());
    let bound = read.div_f64(2.0).max(Duration::from_secs(1));
    let checked = Instant::now();
    for id in &revoked {
        let auth = format!("apiKey {id}:s");
        while get(
            gw.port,
            "GET",
            "/wmts/1",
            &[("Authorization", auth.as_str())],
        )
        .status
            != 401
        {
            assert!(
                checked.elapsed() < bound,
                "{id}, revoked during the first read ({read:?}), still works:\n{}",
                gw.log_text()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// A change message whose refresh fails (Redis paused past the command timeout just after
/// the message) is not dropped: everything is read again as soon as Redis answers, and the
/// revocation is followed then, not at the next periodic resync a minute later.
#[test]
fn a_change_whose_refresh_failed_is_read_again_when_the_store_answers() {
    let (redis, _up, dir) = with_eg_fixture();
    let gw = GatewayProcess::start(&dir);
    let key = [("Authorization", "apiKey kargo-ka-id:kargo-ka-secret")];
    assert_eq!(get(gw.port, "GET", "/wmts/1", &key).status, 200);
    let mut c = redis.conn();
    // The change, its message, and at once a pause of every client longer than the
    // gateway's 2 s command timeout: the refresh the message starts times out.
    let _: () = redis::pipe()
        .cmd("HSET")
        .arg("EG-key-auth:kargo-ka-id")
        .arg("isActive")
        .arg("false")
        .ignore()
        .cmd("PUBLISH")
        .arg("EG-tollgate-invalidate")
        .arg("key-auth:kargo-ka-id")
        .ignore()
        .cmd("CLIENT")
        .arg("PAUSE")
        .arg(3000)
        .arg("ALL")
        .ignore()
        .query(&mut c)
        .expect("revoke and pause");
    let published = Instant::now();
    while get(gw.port, "GET", "/wmts/1", &key).status != 401 {
        assert!(
            published.elapsed() < Duration::from_secs(15),
            "the revocation waited for the periodic resync:\n{}",
            gw.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        gw.log_text()
            .contains("cannot refresh key-auth:kargo-ka-id"),
        "the refresh did not fail: the test tested nothing\n{}",
        gw.log_text()
    );
}

#[test]
fn a_change_made_while_a_gateway_was_not_subscribed_reaches_it_when_it_subscribes_again() {
    let (redis, _up, dir) = with_eg_fixture();
    let gw = GatewayProcess::start(&dir);
    let key = [("Authorization", "apiKey kargo-ka-id:kargo-ka-secret")];
    assert_eq!(get(gw.port, "GET", "/wmts/1", &key).status, 200);
    // Revoked behind its back, with no change message (as EG or redis-cli would), then its
    // subscription broken: what it missed is read when it subscribes again, well before its
    // resync (a minute away).
    redis.hset("EG-key-auth:kargo-ka-id", "isActive", "false");
    let mut c = redis.conn();
    assert_eq!(
        get(gw.port, "GET", "/wmts/1", &key).status,
        200,
        "not heard of yet"
    );
    let killed: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("pubsub")
        .query(&mut c)
        .expect("CLIENT KILL");
    assert!(killed >= 1, "the gateway's subscription");
    let revoked_at = Instant::now();
    while get(gw.port, "GET", "/wmts/1", &key).status != 401 {
        assert!(
            revoked_at.elapsed() < Duration::from_secs(10),
            "the change was not read after the subscription came back:\n{}",
            gw.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A subscription whose Redis stops answering without closing the connection (its host died,
/// a partition: here, the server frozen) is noticed by its pings and made again, and what
/// changed meanwhile is read then: it was held for good, and every change after waited for the
/// periodic resync (a minute away).
#[test]
fn a_subscription_that_stops_answering_is_made_again() {
    let (redis, _up, dir) = with_eg_fixture();
    let gw = GatewayProcess::start(&dir);
    let key = [("Authorization", "apiKey kargo-ka-id:kargo-ka-secret")];
    assert_eq!(get(gw.port, "GET", "/wmts/1", &key).status, 200);
    // Revoked behind its back, with no change message (as EG or redis-cli would).
    redis.hset("EG-key-auth:kargo-ka-id", "isActive", "false");
    assert_eq!(
        get(gw.port, "GET", "/wmts/1", &key).status,
        200,
        "not heard of yet"
    );
    redis.signal("STOP");
    let frozen = Instant::now();
    while !gw.log_text().contains("lost; resubscribing") {
        assert!(
            frozen.elapsed() < Duration::from_secs(20),
            "the frozen subscription was not noticed:\n{}",
            gw.log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    redis.signal("CONT");
    let revoked_at = Instant::now();
    while get(gw.port, "GET", "/wmts/1", &key).status != 401 {
        assert!(
            revoked_at.elapsed() < Duration::from_secs(20),
            "the change was not read after the subscription was made again:\n{}",
            gw.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Its return said once.
    let again = "subscribed to `EG-tollgate-invalidate` again";
    wait_for_line(&gw, again);
    assert_eq!(gw.log_text().matches(again).count(), 1, "{}", gw.log_text());
}

/// While Redis is away the same warning comes each second, folded; when it is back, the
/// count of those repeats is written before the line that says so, not after it (read in its
/// order, the log said the failures went on after the recovery).
#[test]
fn the_repeats_of_a_failure_are_written_before_its_recovery() {
    let (mut redis, _up, dir) = with_eg_fixture();
    let gw = GatewayProcess::start_with(&dir, &[], &[("TOLLGATE_LOG_FOLD_SECONDS", "120")]);
    let port = redis.port;
    redis.stop();
    // The subscription is tried again each second: one line written, the others folded.
    std::thread::sleep(Duration::from_millis(3500));
    let _redis = RedisServer::start_on(port);
    let again = "subscribed to `EG-tollgate-invalidate` again";
    wait_for_line(&gw, again);
    let log = gw.log_text();
    let recovery = log.find(again).expect("the recovery line");
    let line = log
        .lines()
        .find(|l| l.contains("cannot subscribe") && l.contains("(repeated "))
        .unwrap_or_else(|| panic!("no count of the subscription's repeats:\n{log}"));
    let counted = log.find(line).expect("the count's line");
    assert!(counted < recovery, "the count after the recovery:\n{log}");
}

/// With Redis frozen, a rate-limited request waits for Redis's timeout once, not each: the
/// requests after the first failure go on uncounted at once (each waited 2 s, and a keep-alive
/// connection's other requests behind it), one of them asking Redis again in the background
/// each second; counting resumes when Redis answers.
#[test]
fn a_frozen_redis_holds_up_one_rate_limited_request_not_every_one() {
    let (redis, _up, dir) = with_eg_fixture();
    let gw = GatewayProcess::start(&dir);
    assert_eq!(get(gw.port, "GET", "/limited/x", &[]).status, 200);
    redis.signal("STOP");
    // The first finds Redis gone (after its timeout).
    assert_eq!(get(gw.port, "GET", "/limited/x", &[]).status, 200);
    let waited: Vec<Duration> = (0..12)
        .map(|_| {
            let asked = Instant::now();
            assert_eq!(get(gw.port, "GET", "/limited/x", &[]).status, 200);
            std::thread::sleep(Duration::from_millis(200));
            asked.elapsed()
        })
        .collect();
    redis.signal("CONT");
    assert!(
        waited.iter().all(|w| *w < Duration::from_millis(1500)),
        "requests waited for the frozen Redis: {waited:?}"
    );
    // Counted again: the window (3) fills and the next is refused.
    let back = Instant::now();
    while get(gw.port, "GET", "/limited/x", &[]).status != 429 {
        assert!(
            back.elapsed() < Duration::from_secs(10),
            "not counted again after Redis came back:\n{}",
            gw.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = gw.log_text();
    assert_eq!(log.matches("requests go on uncounted").count(), 1, "{log}");
    assert_eq!(log.matches("the store answers again").count(), 1, "{log}");
}

/// A command Redis refuses (an ACL without `INCR`) is logged in Redis's own words, not by its
/// place in the redis crate's pipeline (`Index 18446744073709551615`, MULTI's place).
#[test]
fn a_refused_rate_limit_command_is_logged_in_redis_words() {
    let (redis, _up, dir) = with_eg_fixture();
    let gw = GatewayProcess::start(&dir);
    assert_eq!(get(gw.port, "GET", "/limited/x", &[]).status, 200);
    let _: () = redis::cmd("ACL")
        .arg("SETUSER")
        .arg("default")
        .arg("-incr")
        .query(&mut redis.conn())
        .expect("ACL SETUSER");
    assert_eq!(get(gw.port, "GET", "/limited/x", &[]).status, 200);
    wait_for_line(&gw, "requests go on uncounted");
    let log = gw.log_text();
    let line = log
        .lines()
        .find(|l| l.contains("requests go on uncounted"))
        .expect("the warning");
    assert!(
        line.contains("no permissions to run the 'incr' command") && !line.contains("Index"),
        "{line}"
    );
}

const FULL_LOADS: &str = "tollgate_consumer_cache_full_loads_total";

/// Waits until the full loads of the start (the first, and the one after the subscriptions)
/// are over, so that what the test writes next reaches the gateway only as the test has it:
/// how many there were.
fn start_loads_over(gw: &GatewayProcess) -> f64 {
    let loads = gw.metric_when(FULL_LOADS, |n| n >= 2.0);
    assert!(loads >= 2.0, "{loads} full loads\n{}", gw.log_text());
    // (None follows: both subscriptions were made before the second began.)
    let age = "tollgate_consumer_cache_last_resync_age_seconds";
    gw.metric_when(age, |a| a >= 0.3);
    gw.metric(FULL_LOADS)
}

/// Waits (10 s at most) until the gateway's log holds `line`.
fn wait_for_line(gw: &GatewayProcess, line: &str) {
    let since = Instant::now();
    while !gw.log_text().contains(line) {
        assert!(
            since.elapsed() < Duration::from_secs(10),
            "no `{line}`:\n{}",
            gw.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn known_credentials_keep_working_when_redis_goes_away() {
    let (mut redis, _up, dir) = with_eg_fixture();
    let gw = GatewayProcess::start(&dir);
    let key = [("Authorization", "apiKey kargo-ka-id:kargo-ka-secret")];
    assert_eq!(get(gw.port, "GET", "/wmts/1", &key).status, 200);
    redis.stop();
    for _ in 0..5 {
        assert_eq!(get(gw.port, "GET", "/wmts/1", &key).status, 200);
    }
    assert_eq!(
        get(
            gw.port,
            "GET",
            "/wmts/1",
            &[("Authorization", "apiKey kargo-ka-id:wrong")]
        )
        .status,
        401
    );
    // Writes say the store is down instead of pretending.
    assert_eq!(
        post_json(gw.admin_port, "/scopes", r#"{"scopes": ["x"]}"#).status,
        503
    );
}

/// A credential written behind the gateway's back (by EG, or another gateway on the same
/// Redis), of an app written so too, works on its first request: the request waits for the
/// lookup of its unknown key (it was refused while the lookup ran in the background, and the
/// key worked from the next request on). A key no credential has is still refused.
#[test]
fn a_credential_written_elsewhere_works_on_its_first_request() {
    let (redis, _up, dir) = with_eg_fixture();
    let mut conn = redis.conn();
    let gw = GatewayProcess::start(&dir);
    start_loads_over(&gw);
    let app = write_elsewhere(&redis);
    let _: () = redis::cmd("PING").query(&mut conn).expect("ping");
    let keyed = get(
        gw.port,
        "GET",
        "/wmts/1",
        &[("Authorization", "apiKey fresh-ka:fresh-ka-secret")],
    );
    assert_eq!(keyed.status, 200, "{}\n{}", keyed.text(), gw.log_text());
    assert_eq!(consumer_of(&keyed).as_deref(), Some(app));
    let token = jwt::hs256(POLICY_SECRET, &serde_json::json!({"sub": "fresh-jwt"}));
    let bearer = format!("Bearer {token}");
    let signed = get(gw.port, "GET", "/token/1", &[("Authorization", &bearer)]);
    assert_eq!(signed.status, 200, "{}", signed.text());
    assert_eq!(consumer_of(&signed).as_deref(), Some(app));
    for key in ["apiKey fresh-ka:wrong", "apiKey nobody:nothing"] {
        let r = get(gw.port, "GET", "/wmts/1", &[("Authorization", key)]);
        assert_eq!(r.status, 401, "{key}");
    }
    let token = jwt::hs256(POLICY_SECRET, &serde_json::json!({"sub": "nobody"}));
    let r = get(
        gw.port,
        "GET",
        "/token/1",
        &[("Authorization", &format!("Bearer {token}"))],
    );
    assert_eq!(r.status, 401);
}

/// What another program writes (EG's Admin API, redis-cli, redis-commander) — a credential
/// deactivated, its scopes changed, removed — reaches the gateway at once where Redis tells of
/// the keys written (`notify-keyspace-events`), as a tollgate write's change message does; it
/// waited for the next full read (`--resync-seconds`, a minute), a revoked key let through
/// meanwhile. Where Redis does not tell of them, the start says so, and what to set.
#[test]
fn what_another_program_writes_is_followed_at_once_where_redis_tells_of_it() {
    let (redis, _up, dir) = with_eg_fixture();
    let set = |key: &str, field: &str, value: &str| {
        let _: () = redis::cmd("HSET")
            .arg(key)
            .arg(field)
            .arg(value)
            .query(&mut redis.conn())
            .expect("hset");
    };
    let config = |flags: &str| redis.notify_keyspace(flags);
    config("");
    let gw = GatewayProcess::start(&dir);
    wait_for_line(
        &gw,
        "keyspace notifications do not tell of the consumers written",
    );
    drop(gw);
    config("KA");
    let gw = GatewayProcess::start(&dir);
    wait_for_line(&gw, "following the consumers other programs write");
    write_elsewhere(&redis);
    let key = [("Authorization", "apiKey fresh-ka:fresh-ka-secret")];
    assert_eq!(get(gw.port, "GET", "/wmts/1", &key).status, 200);
    // Within a moment, not a resync period, each write is followed.
    let becomes = |path: &str, status: u16| {
        let deadline = std::time::Instant::now() + Duration::from_secs(3);
        loop {
            let got = get(gw.port, "GET", path, &key).status;
            if got == status {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{path}: {got}, not {status}\n{}",
                gw.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    set("EG-key-auth:fresh-ka", "scopes", r#"["wms"]"#);
    becomes("/wmts/1", 403);
    becomes("/wms/1", 200);
    set("EG-key-auth:fresh-ka", "isActive", "false");
    becomes("/wms/1", 401);
    set("EG-key-auth:fresh-ka", "isActive", "true");
    becomes("/wms/1", 200);
    let _: () = redis::cmd("DEL")
        .arg("EG-key-auth:fresh-ka")
        .query(&mut redis.conn())
        .expect("del");
    becomes("/wms/1", 401);
}

/// The gateway's connections to Redis closed by the server (as a restart between two of the
/// store's probes closes them): the probe's first ping on a closed connection fails, and the
/// store is asked again at once before it is called unreachable (an ERROR line said so while
/// Redis answered, and readiness failed for two seconds).
#[test]
fn connections_the_server_closed_are_no_unreachable_store() {
    let (redis, _up, dir) = with_eg_fixture();
    let gw = GatewayProcess::start(&dir);
    let key = [("Authorization", "apiKey kargo-ka-id:kargo-ka-secret")];
    assert_eq!(get(gw.port, "GET", "/wmts/1", &key).status, 200);
    // (The probe has pinged on its connection.)
    std::thread::sleep(Duration::from_millis(2500));
    let killed: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("normal")
        .query(&mut redis.conn())
        .expect("CLIENT KILL");
    assert!(killed >= 1, "the gateway's connection");
    std::thread::sleep(Duration::from_millis(4500));
    assert!(
        !gw.log_text().contains("consumer store unreachable"),
        "{}",
        gw.log_text()
    );
    assert_eq!(gw.metric("tollgate_store_up"), 1.0);
    assert_eq!(get(gw.port, "GET", "/healthcheck?ready", &[]).status, 200);
}

/// `notify-keyspace-events` changed while the gateway runs (`CONFIG SET`): turned off, a
/// WARN line says that other programs' writes now wait for the next full read (it was not
/// seen); turned on again, what was written meanwhile is read at once (it waited for the
/// periodic resync, a revoked key let through for up to a minute).
#[test]
fn notifications_turned_off_and_on_while_running_are_said_and_caught_up() {
    let (redis, _up, dir) = with_eg_fixture();
    let config = |flags: &str| redis.notify_keyspace(flags);
    config("KA");
    write_elsewhere(&redis);
    let gw = GatewayProcess::start(&dir);
    wait_for_line(&gw, "following the consumers other programs write");
    start_loads_over(&gw);
    let key = [("Authorization", "apiKey fresh-ka:fresh-ka-secret")];
    assert_eq!(get(gw.port, "GET", "/wmts/1", &key).status, 200);
    config("");
    wait_for_line(
        &gw,
        "keyspace notifications no longer tell of the consumers written",
    );
    assert!(
        gw.log_text().contains(" WARN ") && gw.error_lines().is_empty(),
        "{}",
        gw.log_text()
    );
    redis.hset("EG-key-auth:fresh-ka", "isActive", "false");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        get(gw.port, "GET", "/wmts/1", &key).status,
        200,
        "not told of"
    );
    config("KA");
    wait_for_line(&gw, "following the consumers other programs write again");
    let told = Instant::now();
    while get(gw.port, "GET", "/wmts/1", &key).status != 401 {
        assert!(
            told.elapsed() < Duration::from_secs(3),
            "what was written meanwhile is not read\n{}",
            gw.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A Redis restarted without the setting (a `CONFIG SET` never written with `CONFIG
/// REWRITE`): said as turned off, a WARN line, as when it is turned off while the gateway runs
/// (nothing was said: the look at the setting at the new subscription went on a connection
/// still down, and the state it was in was forgotten).
#[test]
fn a_redis_restarted_without_notifications_is_said() {
    let (mut redis, _up, dir) = with_eg_fixture();
    redis.notify_keyspace("KA");
    let gw = GatewayProcess::start(&dir);
    wait_for_line(&gw, "following the consumers other programs write");
    let port = redis.port;
    redis.stop();
    let _back = RedisServer::start_on(port);
    let since = Instant::now();
    while !gw
        .log_text()
        .contains("keyspace notifications no longer tell of the consumers written")
    {
        assert!(
            since.elapsed() < Duration::from_secs(15),
            "not said\n{}",
            gw.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Where the server also tells of keys read and not found (`m`: `keymiss`), those are no
/// writes: the refresh of one read the key again, and the server told of that read (the
/// probe: 41,000 refreshes a second for good, half a core of the gateway's and of Redis').
#[test]
fn keys_read_and_not_found_are_no_writes() {
    let (redis, _up, dir) = with_eg_fixture();
    redis.notify_keyspace("KAm");
    let gw = GatewayProcess::start(&dir);
    wait_for_line(&gw, "following the consumers other programs write");
    start_loads_over(&gw);
    let _: std::collections::HashMap<String, String> = redis::cmd("HGETALL")
        .arg("EG-key-auth:nobody")
        .query(&mut redis.conn())
        .expect("hgetall");
    let scripts = || -> u64 {
        let info: String = redis::cmd("INFO")
            .arg("commandstats")
            .query(&mut redis.conn())
            .expect("info");
        info.lines()
            .find_map(|l| l.strip_prefix("cmdstat_evalsha:calls="))
            .and_then(|rest| rest.split(',').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    std::thread::sleep(Duration::from_millis(500));
    let before = scripts();
    std::thread::sleep(Duration::from_secs(1));
    let after = scripts();
    assert!(
        after - before < 5,
        "{} refreshes in a second",
        after - before
    );
}

/// Keys of another type where consumers' keys are (another program's string or set at a
/// name's, a user's or a credential's key) are no consumer: a revocation written with them is
/// followed, and nothing is read again in full (the refresh of the batch they came in failed
/// with `WRONGTYPE`, "the store is unavailable", and everything was read again each time).
#[test]
fn keys_of_another_type_among_the_consumers_are_no_failure() {
    let (redis, _up, dir) = with_eg_fixture();
    redis.notify_keyspace("KA");
    write_elsewhere(&redis);
    let gw = GatewayProcess::start(&dir);
    wait_for_line(&gw, "following the consumers other programs write");
    let before = start_loads_over(&gw);
    let key = [("Authorization", "apiKey fresh-ka:fresh-ka-secret")];
    assert_eq!(get(gw.port, "GET", "/wmts/1", &key).status, 200);
    let _: () = redis::pipe()
        .cmd("SET")
        .arg("EG-username:junk")
        .arg("x")
        .ignore()
        .cmd("SET")
        .arg("EG-user:junk")
        .arg("x")
        .ignore()
        .cmd("SADD")
        .arg("EG-key-auth:junk")
        .arg("x")
        .ignore()
        .cmd("HSET")
        .arg("EG-key-auth:fresh-ka")
        .arg("isActive")
        .arg("false")
        .ignore()
        .query(&mut redis.conn())
        .expect("writes");
    let written = Instant::now();
    while get(gw.port, "GET", "/wmts/1", &key).status != 401 {
        assert!(
            written.elapsed() < Duration::from_secs(5),
            "the revocation is not followed\n{}",
            gw.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(gw.metric(FULL_LOADS), before, "{}", gw.log_text());
    assert!(
        !gw.log_text().contains("cannot refresh"),
        "{}",
        gw.log_text()
    );
}

/// The start reads the store twice, not once per subscription: the first load, before
/// serving, and one after the subscriptions to the change messages and to the keys written
/// are made (on a connection of their own, beside the first load: what was written before they
/// were made was heard of by neither). With a million credentials each read is seconds of a
/// core.
#[test]
fn the_start_reads_everything_again_once_for_both_subscriptions() {
    let (redis, _up, dir) = with_eg_fixture();
    redis.notify_keyspace("KA");
    let gw = GatewayProcess::start(&dir);
    wait_for_line(&gw, "following the consumers other programs write");
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(gw.metric(FULL_LOADS), 2.0, "{}", gw.log_text());
}

/// A bulk write by another program (an import through EG's Admin API, a script): thousands of
/// keys at once, read by the consumer cache a batch at a time, are each followed — the
/// credentials revoked refused, the new ones let in — without the cache falling behind Redis'
/// notifications and reading everything again (which, with many consumers, took the gateway's
/// CPU for seconds each time, again and again in a longer storm).
#[test]
fn a_bulk_write_by_another_program_is_followed_key_by_key() {
    let (redis, _up, dir) = with_eg_fixture();
    redis.notify_keyspace("KA");
    let app = write_elsewhere(&redis);
    const BULK: usize = 4_000;
    let credentials = |name: &str, active: bool| {
        let mut pipe = redis::pipe();
        for i in 0..BULK {
            pipe.cmd("HSET")
                .arg(format!("EG-key-auth:{name}-{i}"))
                .arg("keyId")
                .arg(format!("{name}-{i}"))
                .arg("keySecret")
                .arg(format!("{name}-secret-{i}"))
                .arg("consumerId")
                .arg(app)
                .arg("isActive")
                .arg(active.to_string())
                .arg("scopes")
                .arg(r#"["wmts"]"#)
                .ignore();
        }
        pipe
    };
    let _: () = credentials("old", true)
        .query(&mut redis.conn())
        .expect("credentials");
    let gw = GatewayProcess::start(&dir);
    wait_for_line(&gw, "following the consumers other programs write");
    let status = |name: &str, i: usize| {
        let auth = format!("apiKey {name}-{i}:{name}-secret-{i}");
        get(
            gw.port,
            "GET",
            "/wmts/1",
            &[("Authorization", auth.as_str())],
        )
        .status
    };
    let samples = [0, BULK / 2, BULK - 1];
    for i in samples {
        assert_eq!(status("old", i), 200, "old-{i} before");
    }
    let before = start_loads_over(&gw);
    // Every old credential revoked and as many new ones, in one write.
    let mut bulk = credentials("old", false);
    for cmd in credentials("new", true).cmd_iter() {
        bulk.add_command(cmd.clone()).ignore();
    }
    let _: () = bulk.query(&mut redis.conn()).expect("bulk write");
    let written = Instant::now();
    for (name, want) in [("old", 401), ("new", 200)] {
        for i in samples {
            while status(name, i) != want {
                assert!(
                    written.elapsed() < Duration::from_secs(10),
                    "{name}-{i} is not followed\n{}",
                    gw.log_text()
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
    let after = gw.metric(FULL_LOADS);
    assert_eq!(
        after,
        before,
        "the cache read everything again\n{}",
        gw.log_text()
    );
}

/// A server whose ACL does not let the gateway follow the keys written (Redis 7's
/// `resetchannels` for a user granted the change messages' channel only): said once, not tried
/// (and warned of) every second; the change messages are still followed.
#[test]
fn keys_the_server_does_not_let_be_followed_are_said_once() {
    let (redis, _up, dir) = with_eg_fixture();
    let _: () = redis::cmd("ACL")
        .arg("SETUSER")
        .arg("default")
        .arg("resetchannels")
        .arg("&EG-tollgate-invalidate")
        .query(&mut redis.conn())
        .expect("acl");
    let gw = GatewayProcess::start(&dir);
    wait_for_line(&gw, "cannot follow the keys other programs write");
    std::thread::sleep(Duration::from_millis(2500));
    let log = gw.log_text();
    assert_eq!(log.matches("cannot follow the keys").count(), 1, "{log}");
    assert!(!log.contains("cannot subscribe"), "{log}");
}

/// A credential written behind the gateway's back while Redis hangs (stopped, not gone): its
/// requests are `503` while the store does not answer — the first after its lookup's wait,
/// the next at once — not a `401` telling the client its key is wrong (EG holds them until
/// Redis answers). Once Redis answers again the key works, and a key no credential has is
/// `401` again.
#[test]
fn a_credential_unknown_while_redis_hangs_is_503_not_401() {
    let (redis, _up, dir) = with_eg_fixture();
    let gw = GatewayProcess::start(&dir);
    start_loads_over(&gw);
    write_elsewhere(&redis);
    let key = ("Authorization", "apiKey fresh-ka:fresh-ka-secret");
    let token = jwt::hs256(POLICY_SECRET, &serde_json::json!({"sub": "fresh-jwt"}));
    let bearer = format!("Bearer {token}");
    redis.signal("STOP");
    let statuses: Vec<u16> = (0..3)
        .map(|_| get(gw.port, "GET", "/wmts/1", &[key]).status)
        .chain([get(gw.port, "GET", "/token/1", &[("Authorization", &bearer)]).status])
        .collect();
    redis.signal("CONT");
    assert_eq!(statuses, [503, 503, 503, 503], "{}", gw.log_text());
    let deadline = Instant::now() + Duration::from_secs(15);
    while get(gw.port, "GET", "/wmts/1", &[key]).status != 200 {
        assert!(Instant::now() < deadline, "{}", gw.log_text());
        std::thread::sleep(Duration::from_millis(100));
    }
    let r = get(
        gw.port,
        "GET",
        "/wmts/1",
        &[("Authorization", "apiKey nobody:nothing")],
    );
    assert_eq!(r.status, 401);
}

/// A populate refused while Redis hangs (`503`: its lock's `SET` unanswered) leaves no lock
/// behind once Redis answers: the `SET` done late held the lock for its minute under a token
/// nobody had, and the next populate waited it out.
#[test]
fn a_populate_refused_while_redis_hangs_leaves_no_lock() {
    let (redis, _up, dir) = with_eg_fixture();
    let gw = GatewayProcess::start(&dir);
    let file = r#"{"scopes": ["wmts"], "users": {"hung": {"app": {"type": "key-auth", "keyId": "HUNG", "keySecret": "S", "scopes": ["wmts"]}}}}"#;
    redis.signal("STOP");
    let refused = send_json(gw.admin_port, "POST", "/tollgate/populate", file);
    redis.signal("CONT");
    assert_eq!(refused.status, 503, "{}", refused.text());
    let started = Instant::now();
    let done = send_json(gw.admin_port, "POST", "/tollgate/populate", file);
    assert_eq!(done.status, 200, "{}", done.text());
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the second populate took {:?}",
        started.elapsed()
    );
}

/// A burst of unknown keys while Redis answers, slowly (8 ms a lookup, behind a proxy): the
/// lookups queue past their 1 s wait, and their requests are `401`, not `503` — a queue is no
/// store that does not answer (the first version took any lookup that outlasted its wait for
/// one, and answered a flood of bogus keys `503`, as an outage).
#[test]
fn a_burst_of_unknown_keys_behind_a_slow_redis_is_401_not_503() {
    let (redis, _up, dir) = with_eg_fixture();
    let proxy = DelayProxy::start(redis.port, Duration::from_millis(4));
    dir.write(
        "system.config.yml",
        &format!("db:\n  redis:\n    emulate: false\n    host: 127.0.0.1\n    port: {}\n    namespace: EG\ncrypto:\n  saltRounds: 4\n", proxy.port),
    );
    let gw = GatewayProcess::start(&dir);
    let port = gw.port;
    let statuses: Vec<u16> = std::thread::scope(|s| {
        let clients: Vec<_> = (0..200)
            .map(|c| {
                s.spawn(move || {
                    let until = Instant::now() + Duration::from_secs(3);
                    let mut seen = Vec::new();
                    let mut i = 0;
                    while Instant::now() < until {
                        let key = format!("apiKey bogus-{c}-{i}:x");
                        seen.push(get(port, "GET", "/wmts/1", &[("Authorization", &key)]).status);
                        i += 1;
                    }
                    seen
                })
            })
            .collect();
        clients
            .into_iter()
            .flat_map(|c| c.join().expect("client"))
            .collect()
    });
    let slow = statuses.iter().filter(|s| **s == 503).count();
    assert!(statuses.len() >= 200, "{}", statuses.len());
    assert_eq!(slow, 0, "{slow} of {} answered 503", statuses.len());
    assert!(statuses.iter().all(|s| *s == 401), "{statuses:?}");
}

/// A TCP proxy on loopback that holds each piece it passes on for `delay`, both ways.
struct DelayProxy {
    port: u16,
}

impl DelayProxy {
    fn start(target: u16, delay: Duration) -> DelayProxy {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let Ok(server) = std::net::TcpStream::connect(("127.0.0.1", target)) else {
                    continue;
                };
                for (mut from, mut to) in [
                    (
                        client.try_clone().expect("clone"),
                        server.try_clone().expect("clone"),
                    ),
                    (server, client),
                ] {
                    std::thread::spawn(move || {
                        let mut buf = [0u8; 16384];
                        while let Ok(n) = from.read(&mut buf) {
                            if n == 0 {
                                break;
                            }
                            std::thread::sleep(delay);
                            if to.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                        let _ = to.shutdown(std::net::Shutdown::Write);
                    });
                }
            }
        });
        DelayProxy { port }
    }
}

/// Writes an app of Kano's with a key-auth credential (`fresh-ka`) and a jwt one
/// (`fresh-jwt`) into Redis as EG writes them, behind the gateway's back (no change
/// message); the app's id.
fn write_elsewhere(redis: &RedisServer) -> &'static str {
    let app = "0a1b2c3d-0000-4000-8000-000000000001";
    let hset = |key: String, fields: &[(&str, &str)]| {
        let mut cmd = redis::cmd("HSET");
        cmd.arg(key);
        for (k, v) in fields {
            cmd.arg(*k).arg(*v);
        }
        let _: () = cmd.query(&mut redis.conn()).expect("hset");
    };
    hset(
        format!("EG-application:{app}"),
        &[
            ("id", app),
            ("isActive", "true"),
            ("name", "fresh"),
            ("userId", "22e88000-4eb8-460a-ac67-acf1042cc865"),
        ],
    );
    for (ty, id, secret) in [
        ("key-auth", "fresh-ka", "fresh-ka-secret"),
        ("jwt", "fresh-jwt", "fresh-jwt-secret"),
    ] {
        hset(
            format!("EG-{ty}:{id}"),
            &[
                ("id", id),
                ("keyId", id),
                ("keySecret", secret),
                ("consumerId", app),
                ("isActive", "true"),
                ("scopes", r#"["wmts"]"#),
            ],
        );
    }
    app
}

/// A key-auth credential without a secret opens to nothing: `keyId:` with nothing after the
/// colon is refused whatever the store holds (a hash written without `keySecret`, or with an
/// empty one), and populate makes a secret for a credential whose file gives an empty one, as
/// EG's credential service does.
#[test]
fn a_key_auth_credential_without_a_secret_opens_to_nothing() {
    let (redis, _up, dir) = with_eg_fixture();
    let mut conn = redis.conn();
    let credential = |key_id: &str, secret: Option<&str>| {
        let mut cmd = redis::cmd("HSET");
        cmd.arg(format!("EG-key-auth:{key_id}"))
            .arg("keyId")
            .arg(key_id)
            .arg("consumerId")
            .arg(APP2)
            .arg("isActive")
            .arg("true")
            .arg("scopes")
            .arg(r#"["wmts"]"#);
        if let Some(secret) = secret {
            cmd.arg("keySecret").arg(secret);
        }
        cmd
    };
    let gw = GatewayProcess::start(&dir);
    // Written behind the gateway's back: each is looked up after its first request.
    for (key_id, secret) in [
        ("nosecret", None),
        ("emptysecret", Some("")),
        ("hand", Some("hs")),
    ] {
        let _: () = credential(key_id, secret).query(&mut conn).expect("hset");
    }
    let status = |key: &str| {
        get(
            gw.port,
            "GET",
            "/wmts/1",
            &[("Authorization", &format!("apiKey {key}"))],
        )
        .status
    };
    let query = |key: &str| get(gw.port, "GET", &format!("/wmts/1?apiKey={key}"), &[]).status;
    for key in ["nosecret:", "emptysecret:", "hand:hs", "kargo-ka-id:"] {
        status(key);
    }
    // The one with a secret is found: the others were looked up as well.
    let deadline = Instant::now() + Duration::from_secs(5);
    while status("hand:hs") != 200 {
        assert!(
            Instant::now() < deadline,
            "the credential written by hand was never found"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    for key in [
        "nosecret:",
        "emptysecret:",
        "kargo-ka-id:",
        "nosecret",
        "emptysecret",
    ] {
        assert_eq!(status(key), 401, "apiKey {key}");
        assert_eq!(query(key), 401, "?apiKey={key}");
    }
    assert_eq!(status("kargo-ka-id:kargo-ka-secret"), 200);
    // Populate: an empty keySecret is none, and one is made.
    dir.write(
        "consumers.config.json",
        r#"{"scopes": ["wmts"], "users": {"emptied": {
            "app": {"type": "key-auth", "keyId": "open-key", "keySecret": "", "scopes": ["wmts"]}}}}"#,
    );
    let out = support::gateway::run_tollgate(
        &["populate", "--config", &dir.path.display().to_string()],
        &[],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stored = redis.hgetall("EG-key-auth:open-key");
    let secret = stored.get("keySecret").cloned().unwrap_or_default();
    assert!(secret.len() >= 16, "populate stored the secret {secret:?}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while status(&format!("open-key:{secret}")) != 200 {
        assert!(
            Instant::now() < deadline,
            "the populated credential was never found"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(status("open-key:"), 401);
}

/// Runs `tollgate populate` on the config in `dir` with `file` as its consumers file; what it
/// said (it must succeed).
fn populate_file(dir: &ConfigDir, file: &str) -> String {
    dir.write("consumers.config.json", file);
    let config_arg = dir.path.display().to_string();
    let out = support::gateway::run_tollgate(&["populate", "--config", &config_arg], &[]);
    let text = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{text}");
    text
}

/// An app that keeps its key while it moves to a user listed before its old one: populate
/// removes the old app's credential before it writes the key again, not after (which left the
/// key deleted until a second run).
#[test]
fn populate_keeps_a_key_that_moves_to_an_app_listed_before() {
    let redis = RedisServer::start();
    let up = EchoUpstream::start("up");
    let dir = config(&up, &redis);
    let populate = |file: &str| populate_file(&dir, file);
    let app =
        r#"{"mover": {"type": "auth-key", "keyId": "KA", "keySecret": "KS", "scopes": ["wmts"]}}"#;
    let first = populate(&format!(
        r#"{{"scopes": ["wmts"], "users": {{"customer1": {{}}, "customer2": {app}}}}}"#
    ));
    // A scope, two users, an app.
    assert!(
        first.contains("4 created, 0 removed, 0 unchanged"),
        "{first}"
    );
    let moved =
        format!(r#"{{"scopes": ["wmts"], "users": {{"customer1": {app}, "customer2": {{}}}}}}"#);
    let out = populate(&moved);
    assert!(out.contains("1 created, 1 removed"), "{out}");
    let gw = GatewayProcess::start(&dir);
    let key = [("Authorization", "apiKey KA:KS")];
    assert_eq!(
        get(gw.port, "GET", "/wmts/1", &key).status,
        200,
        "{}",
        gw.log_text()
    );
    // Run again, the scope is counted among what is unchanged, as it was among what was made.
    let again = populate(&moved);
    assert!(
        again.contains("0 created, 0 removed, 4 unchanged"),
        "{again}"
    );
}

#[test]
fn populate_is_idempotent_and_clean_leaves_nothing() {
    let redis = RedisServer::start();
    let up = EchoUpstream::start("up");
    let dir = config(&up, &redis);
    let file = r#"{"scopes": ["wms", "wmts"], "users": {"customer1": {
        "app1": {"type": "jwt", "keyId": "ID", "keySecret": "SECRET", "scopes": ["wms", "wmts"]},
        "app2": {"type": "auth-key", "keyId": "KA", "keySecret": "KS", "scopes": ["wmts"]},
        "qgis": {"scopes": ["wms"], "credential": {"type": "basic-auth", "password": "pw"}}}}}"#;
    dir.write("consumers.config.json", file);
    let config_arg = dir.path.display().to_string();
    let run = |cmd: &str| {
        let out = support::gateway::run_tollgate(&[cmd, "--config", &config_arg], &[]);
        assert!(
            out.status.success(),
            "{cmd}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    // Without a running gateway, populate works on the store directly.
    let first = run("populate");
    assert!(
        first.contains("6 created"),
        "two scopes, the user, three apps: {first}"
    );
    assert!(
        run("populate").contains("0 created, 0 removed"),
        "a second run changes nothing"
    );
    // Passwords are hashed at the config's bcrypt cost (`crypto.saltRounds: 4`), not 10.
    let hashes: Vec<String> = redis
        .keys()
        .into_iter()
        .filter(|k| k.starts_with("EG-basic-auth:"))
        .filter_map(|k| redis.hgetall(&k).remove("password"))
        .collect();
    assert_eq!(hashes.len(), 1, "{hashes:?}");
    assert!(hashes[0].starts_with("$2b$04$"), "{hashes:?}");
    // A key that is not UTF-8 under the namespace (another tool's) is passed over: the
    // consumers load (the whole load failed, every second, for ever).
    redis::cmd("SET")
        .arg(b"EG-junk:\xff\xfe".as_slice())
        .arg("1")
        .query::<()>(&mut redis.conn())
        .expect("set");
    // So is a value that is not UTF-8 in a consumer's hash (a field another tool added): read
    // with its bad bytes replaced (it failed the whole load too).
    redis::cmd("HSET")
        .arg("EG-key-auth:JUNK")
        .arg("keyId")
        .arg("JUNK")
        .arg("isActive")
        .arg("true")
        .arg("keySecret")
        .arg(b"caf\xe9".as_slice())
        .query::<()>(&mut redis.conn())
        .expect("hset");
    let gw = GatewayProcess::start(&dir);
    assert_eq!(
        get(
            gw.port,
            "GET",
            "/wmts/1",
            &[("Authorization", "apiKey KA:KS")]
        )
        .status,
        200
    );
    // A changed secret is noticed: the app is recreated with the new one.
    dir.write("consumers.config.json", &file.replace("\"KS\"", "\"KS2\""));
    let out = run("populate");
    assert!(out.contains("1 created, 1 removed"), "{out}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while get(
        gw.port,
        "GET",
        "/wmts/1",
        &[("Authorization", "apiKey KA:KS")],
    )
    .status
        != 401
    {
        assert!(Instant::now() < deadline, "the old secret still works");
        std::thread::sleep(Duration::from_millis(20));
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while get(
        gw.port,
        "GET",
        "/wmts/1",
        &[("Authorization", "apiKey KA:KS2")],
    )
    .status
        != 200
    {
        assert!(Instant::now() < deadline, "the new secret is not accepted");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!gw.log_text().contains("utf-8"), "{}", gw.log_text());
    // Clean, through the running gateway: no key is left behind.
    run("clean");
    let left: Vec<String> = redis
        .keys()
        .into_iter()
        .filter(|k| !k.starts_with("rl:") && !k.starts_with("EG-junk:") && k != "EG-key-auth:JUNK")
        .collect();
    assert!(left.is_empty(), "orphans: {left:?}");
    // Two applications with one keyId (of one type) would take it from each other on every
    // run: the file is refused.
    dir.write(
        "consumers.config.json",
        r#"{"scopes": [], "users": {"alpha": {"a1": {"type": "key-auth", "keyId": "SHARED", "keySecret": "S1"}},
            "beta": {"b1": {"type": "key-auth", "keyId": "SHARED", "keySecret": "S2"}}}}"#,
    );
    let out = support::gateway::run_tollgate(&["populate", "--config", &config_arg], &[]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{said}");
    assert!(said.contains("keyId `SHARED` is also"), "{said}");
}

/// A user or credential deactivated through the Admin API stays deactivated when populate
/// runs again with the same file (at every start, in Kargo's workflow): before, populate made
/// it active again, and a revoked key worked again after the next restart. An application
/// made again for new scopes with the same key stays deactivated too; a new key in the file
/// is a new grant.
#[test]
fn populate_leaves_what_was_deactivated_deactivated() {
    let redis = RedisServer::start();
    let up = EchoUpstream::start("up");
    let dir = config(&up, &redis);
    let populate = |file: &str| populate_file(&dir, file);
    let file = |scopes: &str, secret: &str| {
        format!(
            r#"{{"scopes": ["wms", "wmts"], "users": {{"customer1": {{"app": {{"type": "key-auth", "keyId": "KA", "keySecret": "{secret}", "scopes": {scopes}}}}}, "customer2": {{"other": {{"type": "key-auth", "keyId": "KB", "keySecret": "KS", "scopes": ["wmts"]}}}}}}}}"#
        )
    };
    populate(&file(r#"["wmts"]"#, "KS"));
    let gw = GatewayProcess::start(&dir);
    let status_of = |key: &str| {
        get(
            gw.port,
            "GET",
            "/wmts/1",
            &[("Authorization", &format!("apiKey {key}"))],
        )
        .status
    };
    let wait_for = |key: &str, want: u16| {
        let deadline = Instant::now() + Duration::from_secs(5);
        while status_of(key) != want {
            assert!(Instant::now() < deadline, "{key}: never {want}");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    wait_for("KA:KS", 200);
    let r = send_json(
        gw.admin_port,
        "PUT",
        "/credentials/key-auth/KA/status",
        r#"{"status": false}"#,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    wait_for("KA:KS", 401);
    let active = |key: &str| {
        redis
            .hgetall(key)
            .get("isActive")
            .cloned()
            .unwrap_or_default()
    };
    // The same file: nothing changes, the key stays revoked.
    let out = populate(&file(r#"["wmts"]"#, "KS"));
    assert!(
        out.contains("0 created, 0 removed") && out.contains("1 left deactivated"),
        "{out}"
    );
    assert_eq!(active("EG-key-auth:KA"), "false");
    // New scopes, the same key: made again, still deactivated.
    let out = populate(&file(r#"["wms", "wmts"]"#, "KS"));
    assert!(
        out.contains("1 created, 1 removed") && out.contains("1 left deactivated"),
        "{out}"
    );
    assert_eq!(active("EG-key-auth:KA"), "false");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(status_of("KA:KS"), 401);
    // A new secret: a new grant, active.
    populate(&file(r#"["wms", "wmts"]"#, "KS2"));
    wait_for("KA:KS2", 200);
    // A user deactivated stays so too.
    wait_for("KB:KS", 200);
    let r = send_json(
        gw.admin_port,
        "PUT",
        "/users/customer2/status",
        r#"{"status": false}"#,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    wait_for("KB:KS", 401);
    let out = populate(&file(r#"["wms", "wmts"]"#, "KS2"));
    // The user and its application (deactivated with it).
    assert!(out.contains("2 left deactivated"), "{out}");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(status_of("KB:KS"), 401);
    assert_eq!(status_of("KA:KS2"), 200);
}

#[test]
fn gateways_starting_together_populate_without_racing() {
    let redis = RedisServer::start();
    let up = EchoUpstream::start("up");
    let dir = config(&up, &redis);
    dir.write(
        "consumers.config.json",
        r#"{"scopes": ["wmts"], "users": {"u": {"a": {"type": "key-auth", "keyId": "K", "keySecret": "S", "scopes": ["wmts"]}}}}"#,
    );
    let file = dir.file("consumers.config.json");
    let gateways: Vec<GatewayProcess> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..3)
            .map(|_| s.spawn(|| GatewayProcess::start_with(&dir, &["--populate", &file], &[])))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("start"))
            .collect()
    });
    assert_eq!(
        redis
            .keys()
            .iter()
            .filter(|k| k.starts_with("EG-user:"))
            .count(),
        1,
        "one user, not one per gateway"
    );
    assert_eq!(redis.smembers("EG-username:u").len(), 1);
    assert_eq!(
        redis
            .keys()
            .iter()
            .filter(|k| k.starts_with("EG-application:"))
            .count(),
        1
    );
    for gw in &gateways {
        assert_eq!(
            get(
                gw.port,
                "GET",
                "/wmts/1",
                &[("Authorization", "apiKey K:S")]
            )
            .status,
            200
        );
    }
}

#[test]
fn redis_through_sentinel() {
    let redis = RedisServer::start();
    redis.load_dump(&eg_fixture());
    let sentinel_port = support::free_port();
    let sdir = ConfigDir::empty();
    sdir.write(
        "sentinel.conf",
        &format!(
            "port {sentinel_port}\nbind 127.0.0.1\nsentinel monitor tiles 127.0.0.1 {} 1\n",
            redis.port
        ),
    );
    let _sentinel = support::Reaped(
        std::process::Command::new("redis-server")
            .arg(sdir.file("sentinel.conf"))
            .arg("--sentinel")
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server --sentinel"),
    );
    let up = EchoUpstream::start("up");
    let dir = config(&up, &redis);
    dir.write(
        "system.config.yml",
        &format!("db:\n  redis:\n    emulate: false\n    namespace: EG\n    name: tiles\n    sentinels:\n      - host: 127.0.0.1\n        port: {sentinel_port}\n"),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", sentinel_port)).is_err() {
        assert!(Instant::now() < deadline, "sentinel did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let gw = GatewayProcess::start(&dir);
    let r = get(
        gw.port,
        "GET",
        "/wmts/1",
        &[("Authorization", "apiKey kargo-ka-id:kargo-ka-secret")],
    );
    assert_eq!(consumer_of(&r), Some(APP2.to_string()));
    assert!(gw.log_text().contains("via sentinels"), "{}", gw.log_text());
}

/// `serve --populate` with a Redis that is not up yet (started beside the gateway) waits for
/// it, then applies the file and serves (the start failed at once).
#[test]
fn populate_at_start_waits_for_a_store_not_up_yet() {
    let up = EchoUpstream::start("up");
    let mut first = RedisServer::start();
    let port = first.port;
    let dir = config(&up, &first);
    first.stop();
    dir.write(
        "consumers.config.json",
        r#"{"scopes": ["wmts"], "users": {"late": {"app": {"type": "key-auth", "keyId": "LATE", "keySecret": "S", "scopes": ["wmts"]}}}}"#,
    );
    let later = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(2));
        RedisServer::start_on(port)
    });
    let gw = GatewayProcess::start_with(
        &dir,
        &["--populate", &dir.file("consumers.config.json")],
        &[],
    );
    let _redis = later.join().expect("redis");
    assert!(
        gw.log_text().contains("cannot be reached yet"),
        "{}",
        gw.log_text()
    );
    let r = get(
        gw.port,
        "GET",
        "/wmts/1",
        &[("Authorization", "apiKey LATE:S")],
    );
    assert_eq!(r.status, 200, "{}", r.text());
}

/// A `db.redis` setting the config refuses stops `serve --populate` and the CLI's `populate`
/// before the store is opened: read as its default, the populate made database 0 equal the
/// file, removing the consumers there, and only then said the config was wrong. A database
/// number written as a string is one, as ioredis takes it.
#[test]
fn a_refused_redis_setting_changes_no_database() {
    let redis = RedisServer::start();
    let up = EchoUpstream::start("up");
    let dir = config(&up, &redis);
    redis.hset("EG-user:important", "username", "important");
    let before = redis.keys();
    dir.write(
        "consumers.config.json",
        r#"{"scopes": ["wmts"], "users": {"new": {"app": {"type": "key-auth", "keyId": "NEW", "keySecret": "S", "scopes": ["wmts"]}}}}"#,
    );
    let consumers = dir.file("consumers.config.json");
    let config_arg = dir.path.display().to_string();
    let data_dir = dir.path.join("data").display().to_string();
    let system = |db: &str| {
        format!(
            "db:\n  redis:\n    emulate: false\n    host: 127.0.0.1\n    port: {}\n    db: {db}\ncrypto:\n  saltRounds: 4\n",
            redis.port
        )
    };
    for db in ["-1", "one"] {
        dir.write("system.config.yml", &system(db));
        // (Bounded: a start that went on would serve until the deadline, exit 124.)
        let serve = std::process::Command::new("timeout")
            .args([
                "20",
                support::gateway::binary(),
                "serve",
                "--config",
                &config_arg,
            ])
            .args(["--data-dir", &data_dir, "--populate", &consumers])
            .env("PORT", support::free_port().to_string())
            .env("ADMIN_PORT", support::free_port().to_string())
            .env_remove("EG_CONFIG_DIR")
            .output()
            .expect("run tollgate serve");
        let said = String::from_utf8_lossy(&serve.stderr);
        assert_eq!(serve.status.code(), Some(2), "db: {db}\n{said}");
        assert!(
            said.contains("system.config.yml:6:9: `db.redis.db`"),
            "db: {db}\n{said}"
        );
        let cli = support::gateway::run_tollgate(&["populate", "--config", &config_arg], &[]);
        let said = String::from_utf8_lossy(&cli.stderr);
        assert!(!cli.status.success(), "db: {db}\n{said}");
        assert!(said.contains("db.redis.db"), "db: {db}\n{said}");
        assert_eq!(redis.keys(), before, "db: {db}: the store was changed");
    }
    dir.write("system.config.yml", &system("'2'"));
    populate_file(
        &dir,
        &std::fs::read_to_string(&consumers).expect("consumers file"),
    );
    let mut db2 = redis.client().get_connection().expect("redis connection");
    redis::cmd("SELECT")
        .arg(2)
        .exec(&mut db2)
        .expect("select 2");
    let users: Vec<String> = redis::cmd("KEYS")
        .arg("EG-user:*")
        .query(&mut db2)
        .expect("keys in database 2");
    assert_eq!(users.len(), 1, "{users:?}");
    assert_eq!(redis.keys(), before, "database 0 was changed");
}

/// Consumers in a Redis over TLS (`db.redis.tls`, as ioredis takes Node's options): the
/// server's certificate checked against `ca` (PEM text) or EG's `caFile`, a client
/// certificate and key (EG's `certFile`, `keyFile`) given to a server that asks for one. A
/// certificate nothing trusts (the system's roots) is refused and the log says why;
/// `rejectUnauthorized: false` takes it (and sends no client certificate: a config asking
/// for both is refused). (The redis crate was built without TLS: `tls` passed the config
/// check and no consumer ever loaded.)
#[test]
fn consumers_live_in_a_redis_over_tls() {
    let server = support::tls::SelfSigned::new();
    let client = support::tls::SelfSigned::new();
    let redis = RedisServer::start_tls(&server.cert_pem(), &server.key_pem(), &client.cert_pem());
    let tls_port = redis.tls_port.expect("a TLS port");
    let up = EchoUpstream::start("up");
    let dir = config(&up, &redis);
    dir.write("client.pem", &client.cert_pem());
    dir.write("client.key", &client.key_pem());
    // (EG's own keys for files, as its db.js reads them for ioredis.)
    let client_files = format!(
        "certFile: {}\n      keyFile: {}\n",
        dir.file("client.pem"),
        dir.file("client.key")
    );
    let system = |tls: &str| {
        format!(
            "db:\n  redis:\n    emulate: false\n    host: 127.0.0.1\n    port: {tls_port}\n    tls:\n{tls}crypto:\n  saltRounds: 4\n"
        )
    };
    let ca = server
        .cert_pem()
        .lines()
        .map(|l| format!("        {l}\n"))
        .collect::<String>();
    dir.write(
        "system.config.yml",
        &system(&format!("      ca: |\n{ca}      {client_files}")),
    );
    populate_file(
        &dir,
        r#"{"scopes": ["wmts"], "users": {"tls": {"app": {"type": "key-auth", "keyId": "TLSKEY", "keySecret": "S", "scopes": ["wmts"]}}}}"#,
    );
    assert!(redis.keys().contains(&"EG-key-auth:TLSKEY".to_string()));
    let answers = |gw: &GatewayProcess| {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let r = get(
                gw.port,
                "GET",
                "/wmts/1",
                &[("Authorization", "apiKey TLSKEY:S")],
            );
            if r.status == 200 || Instant::now() > deadline {
                return r.status;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let gw = GatewayProcess::start(&dir);
    assert_eq!(answers(&gw), 200, "{}", gw.log_text());
    drop(gw);
    dir.write("server-ca.pem", &server.cert_pem());
    let ca_file = format!("      caFile: {}\n", dir.file("server-ca.pem"));
    dir.write(
        "system.config.yml",
        &system(&format!("{ca_file}      {client_files}")),
    );
    let gw = GatewayProcess::start(&dir);
    assert_eq!(answers(&gw), 200, "caFile: {}", gw.log_text());
    drop(gw);

    dir.write(
        "system.config.yml",
        &system(&format!("      {client_files}")),
    );
    let gw = GatewayProcess::start(&dir);
    let r = get(
        gw.port,
        "GET",
        "/wmts/1",
        &[("Authorization", "apiKey TLSKEY:S")],
    );
    assert_eq!(r.status, 503, "{}", r.text());
    let log = gw.log_text();
    assert!(log.contains("certificate verify failed"), "{log}");
    drop(gw);

    dir.write(
        "system.config.yml",
        &system(&format!(
            "      rejectUnauthorized: false\n      {client_files}"
        )),
    );
    let config_arg = dir.path.display().to_string();
    let check = support::gateway::run_tollgate(&["check", "--config", &config_arg], &[]);
    let said = String::from_utf8_lossy(&check.stderr);
    assert!(!check.status.success(), "{said}");
    assert!(
        said.contains("system.config.yml:7:7: `db.redis.tls` cannot send"),
        "{said}"
    );
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("tls-auth-clients")
        .arg("no")
        .query(&mut redis.conn())
        .expect("CONFIG SET");
    dir.write(
        "system.config.yml",
        &system("      rejectUnauthorized: false\n"),
    );
    let gw = GatewayProcess::start(&dir);
    assert_eq!(answers(&gw), 200, "{}", gw.log_text());
}

/// Concurrent Admin API creates on Redis make one of each, the others `409`: each checked the
/// store and then wrote, and 20 at once made up to 7 users of one name and one key id for two
/// consumers (only one of whose secrets worked).
#[test]
fn concurrent_admin_creates_make_one_of_each() {
    let (_redis, _up, _dir, gw) = gateway_on_redis();
    let a = gw.admin_port;
    let at_once = |make: &(dyn Fn(usize) -> (String, String) + Sync)| -> Vec<u16> {
        std::thread::scope(|s| {
            let calls: Vec<_> = (0..20)
                .map(|i| {
                    s.spawn(move || {
                        let (path, body) = make(i);
                        post_json(a, &path, &body).status
                    })
                })
                .collect();
            calls.into_iter().map(|c| c.join().expect("call")).collect()
        })
    };
    let made = |statuses: &[u16]| statuses.iter().filter(|s| **s < 300).count();
    let users = at_once(&|_| ("/users".into(), r#"{"username": "racer"}"#.into()));
    assert_eq!(made(&users), 1, "{users:?}");
    assert!(users.iter().all(|s| *s < 300 || *s == 409), "{users:?}");
    for name in ["r0", "r1"] {
        let body = format!(r#"{{"username": "{name}"}}"#);
        assert_eq!(post_json(a, "/users", &body).status, 200);
    }
    let keys = at_once(&|i| {
        (
            "/credentials".into(),
            format!(
                r#"{{"consumerId": "r{}", "type": "key-auth", "credential": {{"keyId": "racekey", "keySecret": "s{i}"}}}}"#,
                i % 2
            ),
        )
    });
    assert_eq!(made(&keys), 1, "{keys:?}");
}

/// While the consumer store has never been read (here a password the gateway does not have),
/// a request whose key it cannot know is `503`, not a `401` that tells the client its key is
/// wrong; once the store can be read, the key works without a restart.
#[test]
fn keys_are_unavailable_not_refused_until_the_store_was_read() {
    let (redis, _up, dir) = with_eg_fixture();
    let mut admin = redis.conn();
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("requirepass")
        .arg("not-the-gateways")
        .query(&mut admin)
        .expect("requirepass");
    let gw = GatewayProcess::start(&dir);
    let key = [("Authorization", "apiKey kargo-ka-id:kargo-ka-secret")];
    let r = get(gw.port, "GET", "/wmts/1", &key);
    assert_eq!(r.status, 503, "{}", r.text());
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("requirepass")
        .arg("")
        .query(&mut admin)
        .expect("no password");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let r = get(gw.port, "GET", "/wmts/1", &key);
        if r.status == 200 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{} {}\n{}",
            r.status,
            r.text(),
            gw.log_text()
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// `db.redis.username`, an ACL user (Redis 6 and later; ioredis' option, which EG hands on):
/// the gateway logs in as that user (the option was not read: the password went to the
/// default user, and a Redis whose default user has another one refused every connection).
#[test]
fn an_acl_user_is_who_the_gateway_logs_in_as() {
    let (redis, _up, dir) = with_eg_fixture();
    let mut c = redis.conn();
    for rules in [
        &["gateway", "on", ">gateway-pw", "~*", "&*", "+@all"][..],
        &["default", "resetpass", ">default-pw"][..],
    ] {
        let _: () = redis::cmd("ACL")
            .arg("SETUSER")
            .arg(rules)
            .query(&mut c)
            .expect("acl");
    }
    dir.write(
        "system.config.yml",
        &format!("db:\n  redis:\n    emulate: false\n    host: 127.0.0.1\n    port: {}\n    username: gateway\n    password: gateway-pw\n    namespace: EG\ncrypto:\n  saltRounds: 4\n", redis.port),
    );
    let gw = GatewayProcess::start(&dir);
    let key = [("Authorization", "apiKey kargo-ka-id:kargo-ka-secret")];
    let since = Instant::now();
    while get(gw.port, "GET", "/wmts/1", &key).status != 200 {
        assert!(
            since.elapsed() < Duration::from_secs(5),
            "{}",
            gw.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!gw.log_text().contains("WRONGPASS"), "{}", gw.log_text());
}

/// The library's store on `redis`, and a runtime to use it on.
fn store_of(redis: &RedisServer) -> (tollgate::store::redis::RedisStore, tokio::runtime::Runtime) {
    let def = tollgate::config::system_file::RedisDef {
        emulate: false,
        host: Some("127.0.0.1".into()),
        port: Some(redis.port),
        configured: true,
        ..Default::default()
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    (tollgate::store::redis::RedisStore::new(&def), rt)
}

/// The store's named locks on a real Redis: renewed and released only by the token that holds
/// them (a populate's lock, renewed while it runs, is never another's to let go).
#[test]
fn a_lock_is_renewed_and_released_only_by_its_holder() {
    use tollgate::store::Store;
    let redis = RedisServer::start();
    let (store, rt) = store_of(&redis);
    rt.block_on(async {
        let short = Duration::from_millis(400);
        let token = store
            .try_lock("p", short)
            .await
            .expect("lock")
            .expect("free");
        assert!(store.try_lock("p", short).await.expect("lock").is_none());
        assert!(!store.renew_lock("p", "other", short).await.expect("renew"));
        store.unlock("p", "other").await.expect("unlock");
        assert!(
            store.try_lock("p", short).await.expect("lock").is_none(),
            "another's token let it go"
        );
        // Renewed past its first TTL: still held.
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert!(store.renew_lock("p", &token, short).await.expect("renew"));
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert!(
            store.try_lock("p", short).await.expect("lock").is_none(),
            "renewed, still held"
        );
        store.unlock("p", &token).await.expect("unlock");
        assert!(
            store.try_lock("p", short).await.expect("lock").is_some(),
            "released"
        );
    });
}

/// A subscription asked whether it caught up, on a real Redis, gives its mark after every
/// message published before the question, however many are queued: bursts of 3,000 (the
/// relay takes them past the runtime's budget of polls per task, which would leave all but
/// the first 128 after the mark), for the change messages and the keys written alike.
#[test]
fn a_catch_up_mark_comes_after_every_message_published_before_it() {
    use tollgate::store::{CaughtUp, Store};
    let redis = RedisServer::start();
    redis.notify_keyspace("KA");
    let (store, rt) = store_of(&redis);
    rt.block_on(async {
        let mut messages = store.subscribe("C").await.expect("subscribe");
        let mut keys = store
            .follow_keys("EG-")
            .await
            .expect("follow")
            .expect("told");
        for rx in [&mut messages, &mut keys] {
            let made = tokio::time::timeout(Duration::from_secs(10), rx.recv()).await;
            assert_eq!(
                made.expect("in time").expect("mark"),
                tollgate::store::SUBSCRIBED
            );
        }
        for question in 1..=3u64 {
            // (Pipelined: published at once, most of them queued behind the ping's answer.)
            let mut burst = redis::pipe();
            for i in 0..3_000 {
                burst.cmd("PUBLISH").arg("C").arg(format!("m{i}")).ignore();
                burst
                    .cmd("SET")
                    .arg(format!("EG-k{i}"))
                    .arg(question)
                    .ignore();
            }
            let () = burst.query(&mut redis.conn()).expect("burst");
            store.ask_caught_up(question);
            for (name, rx) in [("messages", &mut messages), ("keys", &mut keys)] {
                let mut before = 0;
                loop {
                    let next = tokio::time::timeout(Duration::from_secs(10), rx.recv()).await;
                    let m = next.expect("in time").expect("received");
                    match CaughtUp::of(&m) {
                        Some(mark) => {
                            assert_eq!((mark.question, mark.whole), (question, true), "{name}");
                            break;
                        }
                        None => before += 1,
                    }
                }
                assert_eq!(before, 3_000, "{name}: what came before the mark");
            }
        }
    });
}
