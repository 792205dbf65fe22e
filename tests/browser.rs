//! A web map in a real browser: OpenLayers (from the npm registry) on a page of another origin
//! shows an XYZ layer whose tiles come through Kargo's tile pipeline (metrics, cors, jwt from
//! `?jwt=` with a credential check, scopes, proxy) with a token minted by PyJWT. Headless
//! Chromium (Debian's) loads it: every tile is a 200 and drawn; without the token every tile is
//! a 401 and none is drawn. Screenshots: target/browser/map.png, target/browser/map-anonymous.png.
//! With the tile cache in the pipeline, two consumers on pages of two origins see the same map
//! from one upstream request per tile: the second's tiles are hits that carry its own origin's
//! CORS answer (else its canvas could not be read); the first page opened again is answered
//! 304 from the cache (the browser revalidates with the tiles' ETags); a page without a token
//! is refused every cached tile. Screenshots: target/browser/cached-*.png.

mod support;

use std::path::PathBuf;
use std::process::Command;

use support::pyjwt::{mint, Mint};
use support::upstream::PyUpstream;
use support::{free_port, ConfigDir, GatewayProcess};

const SECRET: &str = "kano-browser-signing-secret-0123456789abcdef0123456789";

fn repo(p: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(p)
}

/// Kargo's tile pipeline; with `origins` it puts the tile cache before the proxy and lets
/// the cors step answer only those origins, reflected.
fn config(up: &PyUpstream, origins: &[&str]) -> String {
    let (cors, cache) = if origins.is_empty() {
        (String::new(), "")
    } else {
        (
            format!("[{{action: {{origin: ['{}']}}}}]", origins.join("', '")),
            "      - cache: [{action: {ttl: 600}}]\n",
        )
    };
    format!(
        r#"http: {{port: ${{PORT}}}}
admin: {{port: ${{ADMIN_PORT}}, host: 127.0.0.1}}
apiEndpoints:
  wmts: {{host: '*', paths: '/wmts/*', scopes: [wmts]}}
serviceEndpoints:
  tiles: {{url: '{}'}}
policies: [metrics, cors, jwt, scopes, cache, proxy]
pipelines:
  wmts:
    apiEndpoints: [wmts]
    policies:
      - metrics:
      - cors: {cors}
      - jwt: [{{action: {{secretOrPublicKey: '{SECRET}', checkCredentialExistence: true, jwtExtractor: query, jwtExtractorField: jwt}}}}]
      - scopes:
{cache}      - proxy: [{{action: {{serviceEndpoint: tiles, changeOrigin: true}}}}]
"#,
        up.url("")
    )
}

/// Runs the page, served from `host` and `port` (its origin; 0: any port), in a Chromium of
/// its own, opened `visits` times; its report (the later visits under `revisits`).
fn load_map(
    gateway: &str,
    token: &str,
    screenshot: &std::path::Path,
    (host, port): (&str, u16),
    visits: u32,
) -> serde_json::Value {
    let dir = repo("target/browser");
    assert!(
        dir.join("node_modules/ol/dist/ol.js").is_file(),
        "OpenLayers is not installed in {}: run scripts/install-test-servers.sh",
        dir.display()
    );
    // The page and its runner next to their modules.
    for f in ["map.html", "run.mjs"] {
        std::fs::copy(repo("tests/fixtures/browser").join(f), dir.join(f)).expect("copy");
    }
    let out = Command::new("node")
        .arg(dir.join("run.mjs"))
        .args([gateway, token, &screenshot.display().to_string(), host])
        .arg(visits.to_string())
        .arg(port.to_string())
        .output()
        .expect("node");
    assert!(
        out.status.success(),
        "the browser run failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("not a report: {}", String::from_utf8_lossy(&out.stdout)))
}

#[test]
fn a_web_map_loads_its_tiles_through_kargos_pipeline() {
    let up = PyUpstream::start("tiles", 5.0);
    let dir = ConfigDir::new(&config(&up, &[]));
    dir.write(
        "consumers.json",
        r#"{"scopes": ["wmts"], "users": {"kano": {"browser": {"type": "jwt", "keyId": "browser-jwt", "keySecret": "unused", "scopes": ["wmts"]}}}}"#,
    );
    let gw = GatewayProcess::start_with(&dir, &["--populate", &dir.file("consumers.json")], &[]);
    let token = mint(&[Mint::new(
        "HS256",
        SECRET,
        serde_json::json!({"sub": "browser-jwt", "exp": support::jwt::now() + 600}),
    )])
    .remove(0);
    let gateway = format!("http://127.0.0.1:{}", gw.port);
    let shots = repo("target/browser");
    std::fs::create_dir_all(&shots).expect("dir");

    let map = load_map(
        &gateway,
        &token,
        &shots.join("map.png"),
        ("127.0.0.1", 0),
        1,
    );
    let tiles = map["tiles"].as_array().cloned().unwrap_or_default();
    assert!(tiles.len() >= 4, "a map view asks for tiles: {map}");
    assert!(
        tiles.iter().all(|t| t["status"] == 200),
        "every tile through the pipeline is a 200: {map}"
    );
    assert_eq!(map["loaded"].as_u64(), Some(tiles.len() as u64), "{map}");
    assert_eq!(map["failed"], 0, "{map}");
    assert!(
        map["painted"].as_f64().unwrap_or(0.0) > 0.95,
        "the tiles cover the map (and CORS let the page read them): {map}"
    );
    let counted = gw.metric_when(
        &format!(
            r#"eg{{api_endpoint="wmts",consumer="{}",status_code="200",type="SUCCESS"}}"#,
            support::json_body(&support::get(gw.admin_port, "GET", "/apps/browser", &[]))["id"]
                .as_str()
                .unwrap_or("")
        ),
        |n| n >= tiles.len() as f64,
    );
    assert_eq!(
        counted,
        tiles.len() as f64,
        "each tile counted for its consumer"
    );

    let anonymous = load_map(
        &gateway,
        "-",
        &shots.join("map-anonymous.png"),
        ("127.0.0.1", 0),
        1,
    );
    let tiles = anonymous["tiles"].as_array().cloned().unwrap_or_default();
    assert!(!tiles.is_empty(), "{anonymous}");
    assert!(tiles.iter().all(|t| t["status"] == 401), "{anonymous}");
    assert_eq!(anonymous["loaded"], 0, "no tile is drawn: {anonymous}");
    assert_eq!(anonymous["painted"], 0.0, "an empty map: {anonymous}");
    eprintln!(
        "screenshots: {} and {}",
        shots.join("map.png").display(),
        shots.join("map-anonymous.png").display()
    );
}

/// The tiles a page asked for, each once: their paths (the token left out).
fn tile_paths(report: &serde_json::Value) -> std::collections::BTreeSet<String> {
    report["tiles"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t["url"].as_str())
        .map(|u| u.split('?').next().unwrap_or(u).to_string())
        .collect()
}

/// Every tile of `report` answered `status` with `cache` as its `X-Cache-Status`.
fn all_tiles(report: &serde_json::Value, status: u64, cache: Option<&str>) -> bool {
    let tiles = report["tiles"].as_array().cloned().unwrap_or_default();
    !tiles.is_empty()
        && tiles
            .iter()
            .all(|t| t["status"] == status && t["cache"].as_str() == cache)
}

#[test]
fn the_tile_cache_serves_two_consumers_on_two_origins_one_copy_behind_authentication() {
    let up = PyUpstream::start("tiles", 5.0);
    // The two pages' origins, the only ones the cors step allows.
    let (one, two) = (("127.0.0.1", free_port()), ("127.0.0.2", free_port()));
    let origins = [one, two].map(|(h, p)| format!("http://{h}:{p}"));
    let dir = ConfigDir::new(&config(&up, &[&origins[0], &origins[1]]));
    dir.write(
        "consumers.json",
        r#"{"scopes": ["wmts"], "users": {
            "kano": {"browser": {"type": "jwt", "keyId": "kano-jwt", "keySecret": "unused", "scopes": ["wmts"]}},
            "ada": {"atlas": {"type": "jwt", "keyId": "ada-jwt", "keySecret": "unused", "scopes": ["wmts"]}}}}"#,
    );
    let gw = GatewayProcess::start_with(&dir, &["--populate", &dir.file("consumers.json")], &[]);
    let minted = mint(&["kano-jwt", "ada-jwt"].map(|sub| {
        Mint::new(
            "HS256",
            SECRET,
            serde_json::json!({"sub": sub, "exp": support::jwt::now() + 600}),
        )
    }));
    let gateway = format!("http://127.0.0.1:{}", gw.port);
    let shots = repo("target/browser");
    std::fs::create_dir_all(&shots).expect("dir");

    // The first consumer's page fills the cache: every tile a miss, fetched once.
    let first = load_map(
        &gateway,
        &minted[0],
        &shots.join("cached-first.png"),
        one,
        2,
    );
    let paths = tile_paths(&first);
    assert!(paths.len() >= 4, "a map view asks for tiles: {first}");
    assert!(all_tiles(&first, 200, Some("MISS")), "{first}");
    assert_eq!(first["failed"], 0, "{first}");
    assert!(first["painted"].as_f64().unwrap_or(0.0) > 0.95, "{first}");
    assert_eq!(
        up.served(),
        paths.len() as u64,
        "one upstream request per tile"
    );
    // The same page opened again in the same browser: the browser asks with the tiles' ETags
    // (they carry no freshness of their own) and the cache answers 304 without the upstream.
    let again = &first["revisits"][0];
    assert_eq!(tile_paths(again), paths, "{again}");
    assert!(all_tiles(again, 304, Some("HIT")), "{again}");
    assert_eq!(again["failed"], 0, "{again}");
    assert!(again["painted"].as_f64().unwrap_or(0.0) > 0.95, "{again}");
    assert_eq!(up.served(), paths.len() as u64);
    assert_eq!(up.not_modified(), 0, "the cache's copy is fresh: {again}");

    // Another consumer on a page of another origin, in a browser of its own: the same tiles,
    // every one a hit whose CORS answer names this page's origin, all drawn; the upstream asked
    // for nothing more.
    let second = load_map(
        &gateway,
        &minted[1],
        &shots.join("cached-second.png"),
        two,
        1,
    );
    assert_ne!(first["origin"], second["origin"]);
    assert_eq!(tile_paths(&second), paths, "the same view: {second}");
    assert!(all_tiles(&second, 200, Some("HIT")), "{second}");
    assert!(
        second["tiles"]
            .as_array()
            .into_iter()
            .flatten()
            .all(|t| t["allowOrigin"] == second["origin"]),
        "each hit allows the page that asked for it: {second}"
    );
    assert_eq!(second["failed"], 0, "{second}");
    assert!(
        second["painted"].as_f64().unwrap_or(0.0) > 0.95,
        "the cached tiles cover the map and the canvas reads back: {second}"
    );
    assert_eq!(up.served(), paths.len() as u64, "no tile fetched again");

    // Without a token every tile is refused though every one is cached; nothing drawn.
    let anonymous = load_map(&gateway, "-", &shots.join("cached-anonymous.png"), two, 1);
    assert!(all_tiles(&anonymous, 401, None), "{anonymous}");
    assert_eq!(anonymous["loaded"], 0, "{anonymous}");
    assert_eq!(anonymous["painted"], 0.0, "{anonymous}");
    assert_eq!(up.served(), paths.len() as u64);

    // Kargo's counter counts every tile with its consumer, hit, miss or 304.
    for (app, report, code, kind) in [
        ("browser", &first, 200, "SUCCESS"),
        ("browser", again, 304, "FAILED"),
        ("atlas", &second, 200, "SUCCESS"),
    ] {
        let id = support::json_body(&support::get(
            gw.admin_port,
            "GET",
            &format!("/apps/{app}"),
            &[],
        ))["id"]
            .as_str()
            .unwrap_or("")
            .to_string();
        let tiles = report["tiles"].as_array().map_or(0, Vec::len) as f64;
        let series = format!(
            r#"eg{{api_endpoint="wmts",consumer="{id}",status_code="{code}",type="{kind}"}}"#
        );
        assert_eq!(gw.metric_when(&series, |n| n >= tiles), tiles, "{series}");
    }
}
