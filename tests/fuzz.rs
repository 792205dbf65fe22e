//! Property-based fuzzing (proptest, stable Rust) of every parser that takes outside input:
//! the gateway and system config (YAML with positions, env interpolation, compiled into a
//! gateway), EG value expressions and templates, Express path patterns, host globs, JWTs and
//! their extractors, key-auth and basic-auth headers, the consumers file, Admin API bodies,
//! the storage route's paths and request framing headers; and the route index, which must find
//! exactly what a scan of every route finds.
//!
//! Each target must never panic, and what it refuses it refuses with a reason (config errors as
//! `file:line:column: reason`). The test command runs a short pass (`PROPTEST_CASES`, default
//! 1000 per target); `scripts/fuzz.sh` runs each target for a million inputs in release mode.

mod support;

use std::sync::Arc;

use proptest::prelude::*;
use proptest::test_runner::Config;

use tollgate::config::error::ConfigErrors;
use tollgate::config::gateway_file::GatewayFile;
use tollgate::config::system_file::SystemFile;
use tollgate::config::{interpolate, node, LoadedConfig};
use tollgate::consumers::layout::Layout;
use tollgate::consumers::models::Models;
use tollgate::consumers::populate::ConsumersFile;
use tollgate::consumers::service::ConsumerService;
use tollgate::gateway::{Gateway, Shared};
use tollgate::pipeline::context::ApiEndpoint;
use tollgate::pipeline::expr::{Expr, Template};
use tollgate::pipeline::{Exchange, Outcome, Policy, Request};
use tollgate::routing::{HostMatcher, PathMatcher};

fn config() -> Config {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    }
}

/// Text built from the pieces a config file is made of, glued by arbitrary characters.
fn yamlish() -> impl Strategy<Value = String> {
    let token = prop_oneof![
        Just("apiEndpoints:".to_string()),
        Just("serviceEndpoints:".to_string()),
        Just("pipelines:".to_string()),
        Just("policies:".to_string()),
        Just("http:".to_string()),
        Just("admin:".to_string()),
        Just("https:".to_string()),
        Just("db:".to_string()),
        Just("redis:".to_string()),
        Just("plugins:".to_string()),
        Just("paths:".to_string()),
        Just("host:".to_string()),
        Just("hostRegex:".to_string()),
        Just("pathRegex:".to_string()),
        Just("methods:".to_string()),
        Just("scopes:".to_string()),
        Just("url:".to_string()),
        Just("urls:".to_string()),
        Just("proxy:".to_string()),
        Just("action:".to_string()),
        Just("condition:".to_string()),
        Just("name:".to_string()),
        Just("serviceEndpoint:".to_string()),
        Just("port:".to_string()),
        Just("key-auth".to_string()),
        Just("jwt".to_string()),
        Just("cors".to_string()),
        Just("rate-limit".to_string()),
        Just("http://127.0.0.1:1".to_string()),
        Just("'/a/*'".to_string()),
        Just("/:id".to_string()),
        Just("${PORT}".to_string()),
        Just("${X:-d}".to_string()),
        Just("$${Y}".to_string()),
        Just("\n".to_string()),
        Just("\n  ".to_string()),
        Just("\n    - ".to_string()),
        Just("- ".to_string()),
        Just("{".to_string()),
        Just("}".to_string()),
        Just("[".to_string()),
        Just("]".to_string()),
        Just(", ".to_string()),
        Just(": ".to_string()),
        Just("&a ".to_string()),
        Just("*a".to_string()),
        Just("!!str ".to_string()),
        Just("\t".to_string()),
        "[a-z0-9]{1,6}",
        any::<String>(),
    ];
    prop::collection::vec(token, 0..40).prop_map(|v| v.concat())
}

/// A syntactically plausible gateway config with fuzzed values.
fn structured_gateway() -> impl Strategy<Value = String> {
    (
        "[ -~]{0,12}",
        "[ -~]{0,12}",
        "[ -~]{0,12}",
        prop::sample::select(vec![
            "proxy", "cors", "key-auth", "jwt", "basic-auth", "rate-limit", "terminate",
            "headers", "log", "scopes", "metrics", "request-transformer",
            "response-transformer", "oauth2", "nope",
        ]),
        "[ -~]{0,24}",
    )
        .prop_map(|(path, host, url, policy, value)| {
            format!(
                "http: {{port: 1}}\napiEndpoints:\n  a: {{host: '{host}', paths: ['{path}']}}\nserviceEndpoints:\n  s: {{url: '{url}'}}\npolicies: [{policy}, proxy]\npipelines:\n  p:\n    apiEndpoints: [a]\n    policies:\n      - {policy}: [{{action: {{x: '{value}', message: '{value}', max: '{value}', origin: '{value}'}}}}]\n      - proxy: [{{action: {{serviceEndpoint: s}}}}]\n",
                path = path.replace('\'', "''"),
                host = host.replace('\'', "''"),
                url = url.replace('\'', "''"),
                value = value.replace('\'', "''"),
            )
        })
}

/// Every error of a failed config load reads `file:line:column: reason`.
fn well_formed(errors: &ConfigErrors) {
    for e in &errors.0 {
        let text = e.to_string();
        let mut parts = text.splitn(4, ':');
        let (file, line, col, reason) = (parts.next(), parts.next(), parts.next(), parts.next());
        assert!(file.is_some_and(|f| !f.is_empty()), "{text}");
        assert!(line.is_some_and(|l| l.parse::<u64>().is_ok()), "{text}");
        assert!(col.is_some_and(|c| c.parse::<u64>().is_ok()), "{text}");
        assert!(reason.is_some_and(|r| !r.trim().is_empty()), "{text}");
    }
}

/// Parses and compiles a gateway config (and a system config) the way `serve` does.
fn load(gateway_text: &str, system_text: &str) {
    let lookup = |name: &str| (name == "PORT").then(|| "8080".to_string());
    let (gw_text, _, gw_places) = interpolate::interpolate(gateway_text, lookup);
    let (sys_text, _, sys_places) = interpolate::interpolate(system_text, lookup);
    let gw_name: Arc<str> = Arc::from("gateway.config.yml");
    let sys_name: Arc<str> = Arc::from("system.config.yml");
    let mut errors = ConfigErrors::default();
    let gw_root = match node::parse_placed(&gw_text, &gw_name, &gw_places) {
        Ok(n) => n,
        Err(e) => {
            errors.0.push(e);
            well_formed(&errors);
            return;
        }
    };
    let sys_root = node::parse_placed(&sys_text, &sys_name, &sys_places)
        .unwrap_or_else(|_| node::Node::null(tollgate::config::error::Pos::file_start(&sys_name)));
    let dirs = tollgate::config::ConfigDirs::single(&std::env::temp_dir());
    let gateway = GatewayFile::from_node(&gw_root, &dirs, &mut errors);
    let system = SystemFile::from_node(&sys_root, &mut errors);
    let loaded = LoadedConfig {
        dirs,
        gateway_path: "gateway.config.yml".into(),
        system_path: None,
        gateway,
        system,
        errors,
    };
    if let Err(errors) = Gateway::build(loaded, &Shared::detached()) {
        well_formed(&errors);
    }
}

fn endpoint() -> ApiEndpoint {
    ApiEndpoint {
        name: Arc::from("fuzz"),
        scopes: vec!["wms".into()],
        metrics: tollgate::metrics::metrics().endpoint("fuzz"),
    }
}

/// Runs a policy on a GET with the given url and headers (invalid header bytes are skipped).
fn run_policy(policy: &dyn Policy, url: &str, headers: &[(String, Vec<u8>)]) -> Outcome {
    let mut map = http::HeaderMap::new();
    for (k, v) in headers {
        if let (Ok(n), Ok(v)) = (
            http::header::HeaderName::from_bytes(k.as_bytes()),
            http::header::HeaderValue::from_bytes(v),
        ) {
            map.append(n, v);
        }
    }
    let (path, query) = match url.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (url, None),
    };
    let ep = endpoint();
    let req = Request {
        method: &http::Method::GET,
        path,
        query,
        url,
        host: Some("localhost"),
        headers: &map,
        client_ip: None,
        server_port: Some(8080),
        tls: false,
        endpoint: &ep,
        strip_at: None,
    };
    let mut x = Exchange::default();
    policy.on_request(&req, &mut x)
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Strings that look like JWTs: three segments of base64 of JSON or bytes, or junk.
fn tokenish() -> impl Strategy<Value = String> {
    let json_value = prop_oneof![
        Just(r#"{"alg":"HS256","typ":"JWT"}"#.to_string()),
        Just(r#"{"alg":"none"}"#.to_string()),
        Just(r#"{"alg":"RS256"}"#.to_string()),
        Just(r#"{"sub":"k","exp":99999999999,"aud":"tiles"}"#.to_string()),
        Just(r#"{"exp":"x","nbf":[],"aud":{}}"#.to_string()),
        any::<String>(),
    ];
    prop_oneof![
        (
            json_value.clone(),
            json_value,
            prop::collection::vec(any::<u8>(), 0..80)
        )
            .prop_map(|(h, c, s)| format!(
                "{}.{}.{}",
                b64(h.as_bytes()),
                b64(c.as_bytes()),
                b64(&s)
            )),
        "[A-Za-z0-9_.=+/ -]{0,200}",
        any::<String>(),
    ]
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn config_text(gateway in yamlish(), system in yamlish()) {
        load(&gateway, &system);
    }

    #[test]
    fn config_values(gateway in structured_gateway()) {
        load(&gateway, "db:\n  redis:\n    emulate: true\n");
    }

    #[test]
    fn env_interpolation(text in "[$a-zA-Z{}:_ \\n-]{0,60}|\\PC{0,60}") {
        let (out, unresolved, places) = interpolate::interpolate(&text, |n| {
            // Values of other lengths, some of two lines.
            (n.len() % 2 == 0).then(|| if n.len() % 4 == 0 { format!("{n}\n{n}") } else { n.to_string() })
        });
        // Every place of the interpolated text is a place of the file.
        let lines: Vec<usize> = text.split('\n').map(|l| l.chars().count()).collect();
        let mut at = (1, 0);
        for c in out.chars().chain(['\n']) {
            let (line, col) = places.in_file(at);
            prop_assert!(line >= 1 && line <= lines.len() && col <= lines[line - 1], "{:?} -> {:?}", at, (line, col));
            at = if c == '\n' { (at.0 + 1, 0) } else { (at.0, at.1 + 1) };
        }
        // Text without `$` comes through unchanged.
        if !text.contains('$') {
            prop_assert_eq!(out, text);
            prop_assert!(unresolved.is_empty());
        }
    }

    #[test]
    fn expressions_and_templates(src in "[a-zA-Z.\\[\\]'\"+ ${}()_-]{0,60}|\\PC{0,60}") {
        let ep = endpoint();
        let map = http::HeaderMap::new();
        let req = Request {
            method: &http::Method::GET, path: "/a", query: Some("x=1"), url: "/a?x=1",
            host: Some("h"), headers: &map, client_ip: None, server_port: None, tls: false,
            endpoint: &ep, strip_at: None,
        };
        let x = Exchange::default();
        if let Ok(e) = Expr::parse(&src) {
            let _ = e.eval(&req, &x);
        }
        if let Ok(t) = Template::parse(&src) {
            let _ = t.eval(&req, &x);
        }
    }

    #[test]
    fn path_patterns(pattern in "[/a-zA-Z0-9:*?()+.\\\\-]{0,24}|\\PC{0,24}", path in "[/a-zA-Z0-9%.-]{0,32}|\\PC{0,32}") {
        if let Ok(m) = PathMatcher::express(&pattern) {
            let _ = m.matches(&path);
        }
        if let Ok(m) = PathMatcher::regex(&pattern) {
            let _ = m.matches(&path);
        }
    }

    #[test]
    fn literal_paths_match_themselves(path in "(/[a-zA-Z0-9_~-]{1,8}){1,4}") {
        let m = PathMatcher::express(&path).expect("a literal path is a valid pattern");
        prop_assert!(m.matches(&path));
        prop_assert!(m.matches(&path.to_uppercase()), "paths match without case");
        let with_slash = format!("{}/", path);
        prop_assert!(m.matches(&with_slash));
    }

    #[test]
    fn route_index_finds_what_a_scan_finds(
        routes in prop::collection::vec((0..5usize, "/|\\*|(/[aAb:*?.]{0,4}){1,3}/?|\\PC{0,6}", any::<bool>(), any::<bool>()), 0..24),
        requests in prop::collection::vec((0..7usize, any::<prop::sample::Index>(), any::<u32>(), "(/[aAbB0-9.]{0,4}){0,3}/?|\\PC{0,8}", any::<bool>(), any::<bool>()), 1..16),
    ) {
        let router = router_of(&routes);
        let host_names = [None, Some("a.example"), Some("A.EXAMPLE:8080"), Some("b.example"), Some("c.example"), Some("b.example."), Some("x")];
        for (h, pick, flips, tail, from_pattern, head) in &requests {
            // Most requests are a route's own pattern with its case changed and more path
            // after it, so that they match something.
            let path = match (from_pattern, routes.is_empty()) {
                (true, false) => {
                    let pattern = &routes[pick.index(routes.len())].1;
                    let mut p: String = pattern.chars().enumerate().map(|(i, c)| match c {
                        ':' | '*' | '?' => 'x',
                        c if flips & (1 << (i % 32)) != 0 => c.to_ascii_uppercase(),
                        c => c,
                    }).collect();
                    p.push_str(tail);
                    p
                }
                _ => tail.clone(),
            };
            let method = if *head { http::Method::HEAD } else { http::Method::POST };
            for from in 0..=router.routes().len() {
                prop_assert_eq!(
                    router.find(from, host_names[*h], &path, &method),
                    router.find_by_scan(from, host_names[*h], &path, &method),
                    "from {} host {:?} path {:?}", from, host_names[*h], path
                );
            }
        }
    }

    #[test]
    fn host_globs(glob in "[a-z0-9*.:-]{0,20}|\\PC{0,20}", host in "[a-zA-Z0-9.:-]{0,24}|\\PC{0,24}") {
        let _ = HostMatcher::glob(Some(&glob)).matches(Some(&host));
        if let Ok(m) = HostMatcher::regex(&glob) {
            let _ = m.matches(Some(&host));
        }
    }

    #[test]
    fn literal_hosts_match_themselves(host in "[a-z0-9-]{1,10}(\\.[a-z0-9-]{1,10}){0,3}") {
        prop_assert!(HostMatcher::glob(Some(&host)).matches(Some(&host.to_uppercase())));
        let with_port = format!("{host}:8080");
        prop_assert!(HostMatcher::glob(Some(&host)).matches(Some(&with_port)));
    }

    #[test]
    fn jwt_tokens_and_extractors(token in tokenish(), scheme in "Bearer|bearer|JWT|[A-Za-z]{0,8}", sep in " |  |\t|", query_name in "jwt|token|[a-z]{0,4}") {
        let cache = Shared::detached().consumers;
        for params in [
            serde_json::json!({"secretOrPublicKey": "s", "checkCredentialExistence": false, "audience": "tiles"}),
            serde_json::json!({"secretOrPublicKey": "s", "jwtExtractor": "query", "jwtExtractorField": query_name}),
            serde_json::json!({"secretOrPublicKey": "s", "jwtExtractor": "authScheme", "jwtExtractorField": "JWT", "passThrough": true}),
            serde_json::json!({"secretOrPublicKey": "s", "jwtExtractor": "header", "jwtExtractorField": "x-token"}),
        ] {
            let p: tollgate::policies::jwt::Params = serde_json::from_value(params).expect("params");
            let policy = tollgate::policies::jwt::Jwt::build(p, &tollgate::config::ConfigDirs::single(std::path::Path::new(".")), &cache).expect("builds");
            let auth = format!("{scheme}{sep}{token}");
            let url = format!("/a?{query_name}={token}");
            let headers = vec![
                ("authorization".to_string(), auth.into_bytes()),
                ("x-token".to_string(), token.clone().into_bytes()),
            ];
            match run_policy(&policy, &url, &headers) {
                Outcome::Respond(r) => prop_assert!(r.status == 401),
                Outcome::Continue => {}
                other => prop_assert!(false, "unexpected {other:?}"),
            }
        }
    }

    #[test]
    fn key_auth_and_basic_auth_headers(value in prop::collection::vec(any::<u8>(), 0..120), text in "(apiKey|Basic|basic|Bearer) [A-Za-z0-9:+/=%-]{0,60}|\\PC{0,60}", query in "[a-zA-Z0-9=&:%+-]{0,60}") {
        let cache = Shared::detached().consumers;
        let key: tollgate::policies::key_auth::Params = serde_json::from_value(serde_json::json!({})).expect("params");
        let key = tollgate::policies::key_auth::KeyAuth::build(key, &cache).expect("builds");
        let basic: tollgate::policies::basic_auth::Params = serde_json::from_value(serde_json::json!({})).expect("params");
        let basic = tollgate::policies::basic_auth::BasicAuth::build(basic, &cache);
        let url = format!("/a?{query}");
        for v in [value.clone(), text.clone().into_bytes()] {
            let headers = vec![("authorization".to_string(), v)];
            for policy in [&key as &dyn Policy, &basic] {
                match run_policy(policy, &url, &headers) {
                    // (503: no credential is known while the store was never read, as here.)
                    Outcome::Respond(r) => prop_assert!(
                        r.status == 401 || r.status == 403 || (r.status == 503 && !cache.is_loaded())
                    ),
                    Outcome::Continue | Outcome::Defer(_) => {}
                    other => prop_assert!(false, "unexpected {other:?}"),
                }
            }
        }
    }

    #[test]
    fn consumers_files(text in "[{}\\[\\]\":, a-z0-9]{0,80}|\\PC{0,80}", json in arb_json()) {
        let _ = ConsumersFile::parse(&text);
        let _ = ConsumersFile::parse(&json.to_string());
        let wrapped = serde_json::json!({"scopes": ["a"], "users": {"u": {"app": json}}});
        let _ = ConsumersFile::parse(&wrapped.to_string());
    }

    #[test]
    fn admin_api_bodies(
        method in prop::sample::select(vec!["GET", "POST", "PUT", "DELETE", "PATCH"]),
        segments in prop::collection::vec(prop::sample::select(vec![
            "users", "apps", "scopes", "credentials", "key-auth", "jwt", "basic-auth", "oauth2",
            "status", "u1", "a1", "tollgate", "populate", "clean", "", "%", "..",
        ]), 0..5),
        query in proptest::option::of("[a-z=&0-9]{0,20}"),
        body in arb_json(),
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let store: Arc<dyn tollgate::store::Store> = Arc::new(tollgate::store::embedded::EmbeddedStore::in_memory());
        let svc = ConsumerService::new(store, Layout::new("EG"), Models::kargo(), 4);
        let method = http::Method::from_bytes(method.as_bytes()).expect("method");
        rt.block_on(async {
            // A user and an app to act on, then the fuzzed request.
            let seed = serde_json::json!({"username": "u1"});
            let _ = tollgate::admin::consumer_routes::route(&svc, &http::Method::POST, &["users"], None, &seed).await;
            let app = serde_json::json!({"userId": "u1", "name": "a1"});
            let _ = tollgate::admin::consumer_routes::route(&svc, &http::Method::POST, &["apps"], None, &app).await;
            if let Some(r) = tollgate::admin::consumer_routes::route(&svc, &method, &segments, query.as_deref(), &body).await {
                assert!(r.status().as_u16() < 500 || r.status().as_u16() == 503, "{} {:?}: {}", r.status(), segments, String::from_utf8_lossy(r.body()));
            }
        });
    }

    #[test]
    fn storage_paths(path in "/s3(/[a-z0-9%._-]{0,10}){0,4}|\\PC{0,40}", query in proptest::option::of("\\PC{0,20}")) {
        let storage = storage();
        if storage.owns(&path) {
            if let Ok(r) = storage.route(&http::Method::GET, &path, query.as_deref()) {
                let _ = storage.upstream_path(&r);
            }
        }
    }

    #[test]
    fn request_framing(values in prop::collection::vec(("content-length|transfer-encoding", prop::collection::vec(any::<u8>(), 0..20)), 0..4)) {
        let mut map = http::HeaderMap::new();
        for (k, v) in &values {
            if let Ok(v) = http::header::HeaderValue::from_bytes(v) {
                map.append(http::header::HeaderName::from_bytes(k.as_bytes()).expect("name"), v);
            }
        }
        let _ = tollgate::framing::problem(&map);
    }
}

/// A router over five host groups (any, exact, glob, regex, exact in capitals) with the given
/// routes: (group, Express pattern, is it a pathRegex, GET only).
fn router_of(routes: &[(usize, String, bool, bool)]) -> tollgate::routing::Router {
    use tollgate::routing::{Route, Router, Target};
    let hosts = vec![
        HostMatcher::glob(None),
        HostMatcher::glob(Some("a.example")),
        HostMatcher::glob(Some("*.example")),
        HostMatcher::regex("(a|b)\\.example").expect("valid"),
        HostMatcher::glob(Some("B.Example")),
    ];
    let routes = routes
        .iter()
        .enumerate()
        .filter_map(|(i, (group, pattern, regex, get_only))| {
            let path = if *regex {
                PathMatcher::regex(pattern).ok()?
            } else {
                PathMatcher::express(pattern).ok()?
            };
            Some(Route {
                group: *group,
                endpoint: i,
                path,
                methods: get_only.then(|| vec![http::Method::GET]),
                target: Target::NoPipeline,
            })
        })
        .collect();
    Router::new(hosts, routes)
}

fn arb_json() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::Bool),
        any::<i64>().prop_map(|n| serde_json::json!(n)),
        "[a-z0-9 ,:-]{0,12}|\\PC{0,12}".prop_map(serde_json::Value::String),
        prop::sample::select(vec![
            "wms",
            "key-auth",
            "jwt",
            "basic-auth",
            "u1",
            "a1",
            "true"
        ])
        .prop_map(|s| serde_json::Value::String(s.to_string())),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::Array),
            prop::collection::vec(
                (
                    prop::sample::select(vec![
                        "username",
                        "userId",
                        "name",
                        "scopes",
                        "type",
                        "consumerId",
                        "credential",
                        "keyId",
                        "keySecret",
                        "password",
                        "status",
                        "users",
                        "redirectUri",
                        "isActive",
                        "x",
                    ]),
                    inner
                ),
                0..5
            )
            .prop_map(|kv| serde_json::Value::Object(
                kv.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
            )),
        ]
    })
}

fn storage() -> tollgate::admin::storage::Storage {
    let name: Arc<str> = Arc::from("system.config.yml");
    let root = node::parse(
        "plugins:\n  storage:\n    providers:\n      aws: {accessKeyId: a, secretAccessKey: b, region: eu-west-1, default: true}\n      ovh: {endpoint: 'https://s3.example.org', accessKeyId: a, secretAccessKey: b}\n",
        &name,
    )
    .expect("system config");
    let mut errors = ConfigErrors::default();
    let system = SystemFile::from_node(&root, &mut errors);
    tollgate::admin::storage::Storage::from_system(&system, &mut errors).expect("storage")
}
