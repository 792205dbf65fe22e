//! A web map in a real browser: OpenLayers (from the npm registry) on a page of another origin
//! shows an XYZ layer whose tiles come through Kargo's tile pipeline (metrics, cors, jwt from
//! `?jwt=` with a credential check, scopes, proxy) with a token minted by PyJWT. Headless
//! Chromium (Debian's) loads it: every tile is a 200 and drawn; without the token every tile is
//! a 401 and none is drawn. Screenshots: target/browser/map.png, target/browser/map-anonymous.png.

mod support;

use std::path::PathBuf;
use std::process::Command;

use support::pyjwt::{mint, Mint};
use support::upstream::PyUpstream;
use support::{ConfigDir, GatewayProcess};

const SECRET: &str = "kano-browser-signing-secret-0123456789abcdef0123456789";

fn repo(p: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(p)
}

fn config(up: &PyUpstream) -> String {
    format!(
        r#"http: {{port: ${{PORT}}}}
admin: {{port: ${{ADMIN_PORT}}, host: 127.0.0.1}}
apiEndpoints:
  wmts: {{host: '*', paths: '/wmts/*', scopes: [wmts]}}
serviceEndpoints:
  tiles: {{url: '{}'}}
policies: [metrics, cors, jwt, scopes, proxy]
pipelines:
  wmts:
    apiEndpoints: [wmts]
    policies:
      - metrics:
      - cors:
      - jwt: [{{action: {{secretOrPublicKey: '{SECRET}', checkCredentialExistence: true, jwtExtractor: query, jwtExtractorField: jwt}}}}]
      - scopes:
      - proxy: [{{action: {{serviceEndpoint: tiles, changeOrigin: true}}}}]
"#,
        up.url("")
    )
}

/// Runs the page in Chromium; its report.
fn load_map(gateway: &str, token: &str, screenshot: &std::path::Path) -> serde_json::Value {
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
        .args([gateway, token, &screenshot.display().to_string()])
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
    let dir = ConfigDir::new(&config(&up));
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

    let map = load_map(&gateway, &token, &shots.join("map.png"));
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

    let anonymous = load_map(&gateway, "-", &shots.join("map-anonymous.png"));
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
