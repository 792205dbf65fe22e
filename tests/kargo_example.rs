//! Kargo's guide, as written: its example `gateway.config.yml` (conf/examples/kargo, unchanged,
//! ports 8080 and 9876) served against upstreams on loopback (its Docker names reached with
//! `--connect-to`), its consumers file populated, and the consumers listed with the CLI as the
//! guide does with `eg users list` / `eg apps list` / `eg credentials list`.

mod support;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::gateway::{binary, run_tollgate};
use support::upstream::PyUpstream;
use support::{get, json_body, Reaped};

fn example() -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("conf/examples/kargo")
        .display()
        .to_string()
}

fn name_of(r: &support::Response) -> String {
    json_body(r)["name"].as_str().unwrap_or("").to_string()
}

#[test]
fn the_guides_example_runs_unchanged() {
    // The example's own ports: another process on them would be what the test talks to.
    for port in [8080, 9876] {
        assert!(
            std::net::TcpListener::bind(("0.0.0.0", port)).is_ok(),
            "port {port}, which the example listens on, is taken by another process"
        );
    }
    let mapproxy = PyUpstream::start("mapproxy", 5.0);
    let k2 = PyUpstream::start("k2", 5.0);
    let data = std::env::temp_dir().join(format!("tollgate-kargo-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data);
    let log_path = data.with_extension("log");
    let log = std::fs::File::create(&log_path).expect("log");
    let child = Command::new(binary())
        .args([
            "serve",
            "--config",
            &example(),
            "--data-dir",
            &data.display().to_string(),
        ])
        .args([
            "--connect-to",
            &format!("mapproxy:8080=127.0.0.1:{}", mapproxy.port),
        ])
        .args(["--connect-to", &format!("k2:8080=127.0.0.1:{}", k2.port)])
        .env_remove("EG_CONFIG_DIR")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start tollgate");
    let mut serving = Reaped(child);
    let start = Instant::now();
    while get_ok(8080, "/healthcheck").is_none() || get_ok(9876, "/scopes").is_none() {
        if let Ok(Some(status)) = serving.0.try_wait() {
            panic!(
                "the example exited with {status}: {}",
                std::fs::read_to_string(&log_path).unwrap_or_default()
            );
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the example did not start: {}",
            std::fs::read_to_string(&log_path).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // `node populate.js` becomes `tollgate populate` (the consumers file next to the config).
    let dir = example();
    let out = run_tollgate(&["populate", "--config", &dir], &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("created"));

    // `eg users list`, `eg apps list`, `eg credentials list`.
    let list = |what: &str| -> String {
        let out = run_tollgate(&[what, "list", "--config", &dir], &[]);
        assert!(
            out.status.success(),
            "{what}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let users = list("users");
    assert!(
        users.contains("\"username\": \"customer1\"")
            && users.contains("\"username\": \"customer2\""),
        "{users}"
    );
    let apps = list("apps");
    for app in ["app1", "app2", "app3"] {
        assert!(apps.contains(&format!("\"name\": \"{app}\"")), "{apps}");
    }
    assert!(
        apps.contains("\"scopes\": \"wmts,k2\""),
        "Kargo's app scopes, comma-joined: {apps}"
    );
    let credentials = list("credentials");
    for key in ["customer1-app1", "customer1-app2", "customer2-app3"] {
        assert!(
            credentials.contains(&format!("\"keyId\": \"{key}\"")),
            "{credentials}"
        );
    }
    assert!(
        credentials.contains("\"type\": \"jwt\"") && credentials.contains("\"type\": \"key-auth\"")
    );

    // The routes of the example, with cors.
    let wms = get(
        8080,
        "GET",
        "/wms?SERVICE=WMS&REQUEST=GetCapabilities",
        &[("Origin", "http://kano.test")],
    );
    assert_eq!((wms.status, name_of(&wms)), (200, "mapproxy".to_string()));
    assert!(
        wms.header("access-control-allow-origin").is_some(),
        "{:?}",
        wms.headers
    );
    let wmts = get(
        8080,
        "GET",
        "/wmts/1.0.0/layer/default/grid/5/10/12.png",
        &[],
    );
    assert_eq!((wmts.status, name_of(&wmts)), (200, "mapproxy".to_string()));
    let path = json_body(&wmts)["path"].as_str().unwrap_or("").to_string();
    assert_eq!(path, "/wmts/1.0.0/layer/default/grid/5/10/12.png");
    let elevation = get(8080, "GET", "/k2/elevation?lat=43&lon=1", &[]);
    assert_eq!(
        (elevation.status, name_of(&elevation)),
        (200, "k2".to_string())
    );
    // The admin endpoint: Host express-gateway reaches the Admin API through the gateway.
    let admin = get(8080, "GET", "/users", &[("Host", "express-gateway")]);
    assert_eq!(admin.status, 200);
    assert_eq!(json_body(&admin)["users"].as_array().map(Vec::len), Some(2));
    drop(serving);
    let _ = std::fs::remove_dir_all(&data);
    let _ = std::fs::remove_file(&log_path);
}

fn get_ok(port: u16, path: &str) -> Option<()> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    use std::io::{Read, Write};
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    out.starts_with("HTTP/1.1 200").then_some(())
}
