//! The request path in isolation: route matching over 100 endpoints (hit and miss), the whole
//! request phase of the plain `cors + proxy` pipeline (which includes the stripPath rewrite),
//! and http-proxy's URL join. `cargo bench --bench hot_path`.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use http::{HeaderMap, HeaderValue, Method};
use tollgate::counters::Counters;
use tollgate::gateway::Gateway;
use tollgate::pipeline::context::Request;
use tollgate::pipeline::Exchange;
use tollgate::policies::proxy::url_join;
use tollgate::routing::Target;

/// A config with 100 endpoints, each `/svcN/*` with cors + proxy (stripPath).
fn gateway_with_100_endpoints() -> Gateway {
    let mut yml = String::from("http: {port: 8080}\napiEndpoints:\n");
    for i in 0..100 {
        yml += &format!("  e{i}: {{host: '*', paths: '/svc{i}/*'}}\n");
    }
    yml += "serviceEndpoints:\n  up: {url: 'http://127.0.0.1:18080/wmts'}\npolicies: [cors, proxy]\npipelines:\n";
    for i in 0..100 {
        yml += &format!("  p{i}:\n    apiEndpoints: [e{i}]\n    policies:\n      - cors:\n      - proxy: [{{action: {{serviceEndpoint: up, stripPath: true}}}}]\n");
    }
    let dir = std::env::temp_dir().join(format!("tollgate-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("bench dir");
    std::fs::write(dir.join("gateway.config.yml"), yml).expect("write config");
    let gw =
        tollgate::server::load_gateway(&dir, &Arc::new(Counters::default())).expect("valid config");
    let _ = std::fs::remove_dir_all(&dir);
    gw
}

fn routing(c: &mut Criterion) {
    let gw = gateway_with_100_endpoints();
    let get = Method::GET;
    c.bench_function("route/hit_last_of_100", |b| {
        b.iter(|| {
            gw.router.find(
                0,
                black_box(Some("tiles.example.com")),
                black_box("/svc99/1/2/3.png"),
                &get,
            )
        })
    });
    c.bench_function("route/hit_first_of_100", |b| {
        b.iter(|| {
            gw.router.find(
                0,
                black_box(Some("tiles.example.com")),
                black_box("/svc0/1/2/3.png"),
                &get,
            )
        })
    });
    c.bench_function("route/miss_100", |b| {
        b.iter(|| {
            gw.router.find(
                0,
                black_box(Some("tiles.example.com")),
                black_box("/nothing/here.png"),
                &get,
            )
        })
    });
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
    let route = &gw.router.routes[ri];
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

criterion_group!(benches, routing, pipeline);
criterion_main!(benches);
