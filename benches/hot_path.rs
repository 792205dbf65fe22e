//! The request path in isolation: route matching over 10, 100 and 1,000 endpoints (first, last
//! and miss), the whole request phase of the plain `cors + proxy` pipeline (which includes the
//! stripPath rewrite), http-proxy's URL join, key-auth lookup among 1M credentials, JWT
//! verification with and without the verified-token cache, and the metrics update.
//! `cargo bench --bench hot_path` (as a test, with `cargo test`, it runs each once with 1,000
//! credentials).

use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use http::{HeaderMap, HeaderValue, Method};
use tollgate::gateway::{Gateway, Shared};
use tollgate::pipeline::context::Request;
use tollgate::pipeline::Exchange;
use tollgate::policies::proxy::url_join;
use tollgate::routing::Target;

/// A config with `n` endpoints, each `/svcN/*` with cors + proxy (stripPath).
fn gateway_with_endpoints(n: usize) -> Gateway {
    let mut yml = String::from("http: {port: 8080}\napiEndpoints:\n");
    for i in 0..n {
        yml += &format!("  e{i}: {{host: '*', paths: '/svc{i}/*'}}\n");
    }
    yml += "serviceEndpoints:\n  up: {url: 'http://127.0.0.1:18080/wmts'}\npolicies: [cors, proxy]\npipelines:\n";
    for i in 0..n {
        yml += &format!("  p{i}:\n    apiEndpoints: [e{i}]\n    policies:\n      - cors:\n      - proxy: [{{action: {{serviceEndpoint: up, stripPath: true}}}}]\n");
    }
    let dir = std::env::temp_dir().join(format!("tollgate-bench-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("bench dir");
    std::fs::write(dir.join("gateway.config.yml"), yml).expect("write config");
    let gw = tollgate::server::load_gateway(
        &tollgate::config::ConfigDirs::single(&dir),
        &Shared::detached(),
    )
    .expect("valid config");
    let _ = std::fs::remove_dir_all(&dir);
    gw
}

fn gateway_with_100_endpoints() -> Gateway {
    gateway_with_endpoints(100)
}

/// The first endpoint, the last and a miss among 10, 100 and 1,000 endpoints: with the route
/// index the cost does not grow with the config.
fn routing(c: &mut Criterion) {
    let get = Method::GET;
    for n in [10, 100, 1000] {
        let gw = gateway_with_endpoints(n);
        let last = format!("/svc{}/1/2/3.png", n - 1);
        let cases = [
            ("hit_first", "/svc0/1/2/3.png"),
            ("hit_last", last.as_str()),
            ("miss", "/nothing/here.png"),
        ];
        for (name, path) in cases {
            c.bench_function(&format!("route/{name}_of_{n}"), |b| {
                b.iter(|| {
                    gw.router.find(
                        0,
                        black_box(Some("tiles.example.com")),
                        black_box(path),
                        &get,
                    )
                })
            });
            // The same without the index: what every request paid before it.
            c.bench_function(&format!("route/scan_{name}_of_{n}"), |b| {
                b.iter(|| {
                    gw.router.find_by_scan(
                        0,
                        black_box(Some("tiles.example.com")),
                        black_box(path),
                        &get,
                    )
                })
            });
        }
    }
}

fn pipeline(c: &mut Criterion) {
    let gw = gateway_with_100_endpoints();
    let mut headers = HeaderMap::new();
    headers.insert("host", HeaderValue::from_static("tiles.example.com"));
    headers.insert(
        "origin",
        HeaderValue::from_static("https://map.example.com"),
    );
    let method = Method::GET;
    let path = "/svc42/1/2/3.png";
    let ri = gw
        .router
        .find(0, Some("tiles.example.com"), path, &method)
        .expect("route");
    let route = &gw.router.routes()[ri];
    let Target::Pipeline(pi) = route.target else {
        panic!("no pipeline")
    };
    let req = Request {
        method: &method,
        path,
        query: Some("v=1"),
        url: "/svc42/1/2/3.png?v=1",
        host: Some("tiles.example.com"),
        headers: &headers,
        client_ip: Some("127.0.0.1".parse().expect("ip")),
        server_port: Some(8080),
        tls: false,
        endpoint: &gw.endpoints[route.endpoint],
        strip_at: route.path.strip_at,
    };
    c.bench_function("pipeline/cors_proxy_request_phase", |b| {
        b.iter(|| {
            let mut x = Exchange::default();
            let out = gw.pipelines[pi].run(0, black_box(&req), &mut x);
            black_box((out, x))
        })
    });
    c.bench_function("strip_path/url_join", |b| {
        b.iter(|| url_join(black_box("/wmts"), black_box("/1/2/3.png?v=1")))
    });
}

/// 1M credentials under `cargo bench`, 1,000 when run as a test.
fn credential_count() -> usize {
    if std::env::args().any(|a| a == "--bench") {
        1_000_000
    } else {
        1_000
    }
}

fn auth(c: &mut Criterion) {
    use tollgate::consumers::layout::Layout;
    use tollgate::consumers::setup::ConsumerLayer;
    use tollgate::store::{embedded::EmbeddedStore, Store, Write};
    let n = credential_count();
    let store: Arc<dyn Store> = Arc::new(EmbeddedStore::in_memory());
    let layout = Layout::new("EG");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut batch = vec![Write::HSet {
        key: layout.app("app"),
        fields: vec![
            ("isActive".into(), "true".into()),
            ("id".into(), "app".into()),
            ("scopes".into(), "wmts".into()),
        ],
    }];
    for i in 0..n {
        batch.push(Write::HSet {
            key: format!("EG-key-auth:key{i}"),
            fields: vec![
                ("isActive".into(), "true".into()),
                ("keyId".into(), format!("key{i}")),
                ("keySecret".into(), format!("secret{i}")),
                ("scopes".into(), r#"["wmts"]"#.into()),
                ("consumerId".into(), "app".into()),
            ],
        });
    }
    batch.push(Write::HSet {
        key: "EG-jwt:jwt-key".into(),
        fields: vec![
            ("isActive".into(), "true".into()),
            ("keyId".into(), "jwt-key".into()),
            ("consumerId".into(), "app".into()),
        ],
    });
    rt.block_on(store.apply(&batch)).expect("fill");
    drop(batch);
    let layer = ConsumerLayer::over(store, "EG", tollgate::consumers::models::Models::kargo(), 4);
    rt.block_on(layer.cache.load()).expect("load");
    let scopes = vec!["wmts".to_string()];
    let probe = format!("key{}", n / 2);
    let secret = format!("secret{}", n / 2);
    c.bench_function("auth/key_auth_lookup", |b| {
        b.iter(|| {
            layer
                .cache
                .key_auth(black_box(&probe), black_box(&secret), &scopes)
        })
    });

    // JWT: the signature check alone, and the policy with its verified-token cache.
    let secret = "bench-secret";
    let claims = serde_json::json!({"sub": "jwt-key", "exp": 4_102_444_800u64});
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("sign");
    let key = jsonwebtoken::DecodingKey::from_secret(secret.as_bytes());
    let validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
    c.bench_function("jwt/verify_without_cache", |b| {
        b.iter(|| {
            jsonwebtoken::decode::<serde_json::Value>(black_box(&token), &key, &validation).is_ok()
        })
    });
    let params: tollgate::policies::jwt::Params =
        serde_json::from_value(serde_json::json!({"secretOrPublicKey": secret})).expect("params");
    let policy = tollgate::policies::jwt::Jwt::build(
        params,
        &tollgate::config::ConfigDirs::single(std::path::Path::new(".")),
        &layer.cache,
    )
    .expect("policy");
    let mut headers = HeaderMap::new();
    headers.insert(
        "authorization",
        HeaderValue::from_str(&format!("Bearer {token}")).expect("header"),
    );
    let endpoint = tollgate::pipeline::context::ApiEndpoint {
        name: Arc::from("wmts"),
        scopes: scopes.clone(),
        metrics: tollgate::metrics::metrics().endpoint("wmts"),
    };
    let method = Method::GET;
    let req = Request {
        method: &method,
        path: "/wmts/1/2/3.png",
        query: None,
        url: "/wmts/1/2/3.png",
        host: Some("tiles"),
        headers: &headers,
        client_ip: None,
        server_port: None,
        tls: false,
        endpoint: &endpoint,
        strip_at: None,
    };
    use tollgate::pipeline::Policy;
    c.bench_function("jwt/policy_with_cache", |b| {
        b.iter(|| {
            let mut x = Exchange::default();
            let out = policy.on_request(black_box(&req), &mut x);
            black_box((out, x.consumer.is_some()))
        })
    });
}

fn metrics_update(c: &mut Criterion) {
    let m = tollgate::metrics::metrics();
    let endpoint = m.endpoint("wmts");
    c.bench_function("metrics/eg_counter", |b| {
        b.iter(|| {
            m.count(
                black_box(200),
                Some(black_box("6e5b8d7a-9b4b-4958-9930-2f0af98b2749")),
                black_box("wmts"),
            )
        })
    });
    c.bench_function("metrics/endpoint_record", |b| {
        b.iter(|| {
            endpoint.record(
                black_box(200),
                black_box(0.0012),
                Some(0.0008),
                0,
                black_box(20480),
            )
        })
    });
}

/// The clock readings a request makes: the precise clocks against the coarse ones the request
/// path reads for what needs only seconds (`tollgate::clock`).
fn clocks(c: &mut Criterion) {
    c.bench_function("clock/system_time_now", |b| {
        b.iter(|| black_box(std::time::SystemTime::now()))
    });
    c.bench_function("clock/wall_coarse", |b| {
        b.iter(|| black_box(tollgate::clock::wall()))
    });
    c.bench_function("clock/instant_now", |b| {
        b.iter(|| black_box(std::time::Instant::now()))
    });
    c.bench_function("clock/soon_coarse", |b| {
        b.iter(|| black_box(tollgate::clock::soon()))
    });
    c.bench_function("clock/date_pingora_cached", |b| {
        b.iter(|| black_box(pingora_core::protocols::http::date::get_cached_date()))
    });
    c.bench_function("clock/date_coarse", |b| {
        b.iter(|| black_box(tollgate::clock::http_date()))
    });
}

criterion_group!(benches, routing, pipeline, auth, metrics_update, clocks);
criterion_main!(benches);
