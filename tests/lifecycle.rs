//! The config lifecycle with the real binary: hot reload on a change in the directory (an
//! editor's rename-on-save), SIGHUP and `tollgate reload`; a bad file keeps the running config
//! and says why; 100 reloads under load lose no request; a slow request finishes on the
//! upstream it started with; state survives; a save during a reload is loaded after it;
//! layered directories (one inside another too); directories replaced whole (a ConfigMap's
//! swap, `rm -rf` and a copy) or named relatively; a data directory linked into the config
//! directory; renewed certificates; changes that need a restart; and a zero-downtime binary
//! upgrade under load.

mod support;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::gateway::{binary, run_tollgate};
use support::load::Load;
use support::upstream::PyUpstream;
use support::{get, send_json, ConfigDir, GatewayProcess, Reaped};

/// Longer than the config watcher waits for quiet (2 s) before it reloads: a reload that
/// was to come has come.
const PAST_QUIET: Duration = Duration::from_millis(2600);

fn gateway_yml(path: &str, upstream: &str, extra: &str) -> String {
    format!(
        "http: {{port: ${{PORT}}}}\nadmin: {{port: ${{ADMIN_PORT}}, host: 127.0.0.1}}\napiEndpoints:\n  tiles: {{paths: '{path}'}}\nserviceEndpoints:\n  up: {{url: '{upstream}'}}\npolicies: [proxy, rate-limit, log]\npipelines:\n  tiles:\n    apiEndpoints: [tiles]\n    policies:\n{extra}      - proxy: [{{action: {{serviceEndpoint: up}}}}]\n"
    )
}

/// Writes a file the way editors save: a temporary file renamed over it.
fn save(dir: &ConfigDir, name: &str, content: &str) {
    let path = dir.path.join(name);
    let file = path.file_name().and_then(|f| f.to_str()).unwrap_or("file");
    let tmp = path.with_file_name(format!(".{file}.swp"));
    std::fs::write(&tmp, content).expect("write");
    std::fs::rename(&tmp, &path).expect("rename");
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !done() {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{what}: not within 5 s"
        );
        std::thread::sleep(Duration::from_millis(30));
    }
    start.elapsed()
}

fn name_of(r: &support::Response) -> String {
    serde_json::from_slice::<serde_json::Value>(&r.body)
        .ok()
        .and_then(|v| v["name"].as_str().map(str::to_string))
        .unwrap_or_default()
}

#[test]
fn reload_on_a_change_on_sighup_and_on_demand() {
    let up = PyUpstream::start("a", 5.0);
    let dir = ConfigDir::new(&gateway_yml("/one/*", &up.url(""), ""));
    let gw = GatewayProcess::start(&dir);
    assert_eq!(get(gw.port, "GET", "/one/x", &[]).status, 200);
    save(
        &dir,
        "gateway.config.yml",
        &gateway_yml("/two/*", &up.url(""), ""),
    );
    let took = wait_for("the watched change", || {
        get(gw.port, "GET", "/two/x", &[]).status == 200
    });
    assert_eq!(get(gw.port, "GET", "/one/x", &[]).status, 404);
    eprintln!("reloaded {took:?} after the save");
    wait_for("the reload counted", || {
        gw.metric(r#"tollgate_config_loads_total{result="ok"}"#) >= 2.0
    });

    // Watching off (EG's switch): SIGHUP and `tollgate reload` reload.
    let dir = ConfigDir::new(&gateway_yml("/one/*", &up.url(""), ""));
    let mut gw = GatewayProcess::start_with(&dir, &[], &[("EG_DISABLE_CONFIG_WATCH", "false")]);
    save(
        &dir,
        "gateway.config.yml",
        &gateway_yml("/two/*", &up.url(""), ""),
    );
    std::thread::sleep(PAST_QUIET);
    assert_eq!(
        get(gw.port, "GET", "/two/x", &[]).status,
        404,
        "not watching"
    );
    gw.signal("HUP");
    wait_for("SIGHUP reload", || {
        get(gw.port, "GET", "/two/x", &[]).status == 200
    });
    // (With a field mistyped: the answer says what the log says of it.)
    save(
        &dir,
        "gateway.config.yml",
        &gateway_yml("/three/*", &up.url(""), "")
            .replace("{paths: '/three/*'}", "{paths: '/three/*', scope: [wms]}"),
    );
    let admin = format!("http://127.0.0.1:{}", gw.admin_port);
    let out = run_tollgate(&["reload", "--admin-url", &admin], &[]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{said}");
    assert!(
        said.contains("warning: ") && said.contains("`scope` is no field of an apiEndpoint"),
        "{said}"
    );
    assert_eq!(get(gw.port, "GET", "/three/x", &[]).status, 200);
    assert!(
        gw.child.try_wait().expect("wait").is_none(),
        "still running"
    );
}

/// The file that says where the gateway answers (in the temporary directory) goes with the
/// process however it ends: SIGINT, SIGTERM, and SIGTERM whose grace period runs out with a
/// request still in flight. It stayed after the first and the last, naming a pid that may
/// later be another process's.
#[test]
fn the_run_file_goes_with_the_process_however_it_ends() {
    let up = PyUpstream::start("a", 5.0);
    for (sig, slow) in [("INT", false), ("TERM", false), ("TERM", true)] {
        let dir = ConfigDir::new(&gateway_yml("/one/*", &up.url(""), ""));
        let tmp = dir.path.join("tmp");
        std::fs::create_dir_all(&tmp).expect("tmp");
        let tmp_arg = tmp.display().to_string();
        let mut gw =
            GatewayProcess::start_with(&dir, &["--grace-period", "1"], &[("TMPDIR", &tmp_arg)]);
        let files = || {
            std::fs::read_dir(&tmp)
                .expect("tmp")
                .flatten()
                .filter(|f| f.file_name().to_string_lossy().starts_with("tollgate-"))
                .count()
        };
        assert_eq!(files(), 1, "{sig}: published");
        let port = gw.port;
        let request = slow.then(|| {
            std::thread::spawn(move || get(port, "GET", "/one/x", &[("X-Test-Delay", "3000")]))
        });
        if slow {
            std::thread::sleep(Duration::from_millis(300));
        }
        gw.signal(sig);
        let start = Instant::now();
        while gw.child.try_wait().expect("wait").is_none() {
            assert!(
                start.elapsed() < Duration::from_secs(15),
                "{sig}: still running"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(
            files(),
            0,
            "{sig} (a request in flight: {slow}): left behind"
        );
        drop(request);
    }
}

/// Steady writes in the config directory that are not config (the access log kept there) do
/// not hold a real change off.
#[test]
fn a_change_is_applied_while_the_access_log_in_the_directory_grows() {
    let up = PyUpstream::start("a", 5.0);
    let dir = ConfigDir::new(&gateway_yml("/one/*", &up.url(""), ""));
    let log = dir.path.join("access.log").display().to_string();
    let gw = GatewayProcess::start_with(&dir, &["--access-log", &log], &[]);
    let load = closing_load(gw.port, "/one/x");
    std::thread::sleep(Duration::from_millis(500));
    save(
        &dir,
        "gateway.config.yml",
        &gateway_yml("/two/*", &up.url(""), ""),
    );
    let took = wait_for("the change under traffic", || {
        get(gw.port, "GET", "/two/x", &[]).status == 200
    });
    drop(load.stop());
    assert!(
        std::fs::metadata(&log).is_ok_and(|m| m.len() > 0),
        "nothing logged"
    );
    eprintln!("reloaded {took:?} after the save, under traffic");
}

#[test]
fn a_bad_file_keeps_the_running_config() {
    let up = PyUpstream::start("a", 5.0);
    let dir = ConfigDir::new(&gateway_yml("/one/*", &up.url(""), ""));
    let gw = GatewayProcess::start(&dir);
    let load = Load::start(
        gw.port,
        3,
        "GET /one/x HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
        Duration::from_millis(5),
    );
    std::thread::sleep(Duration::from_millis(300));
    let failed_loads = || gw.metric(r#"tollgate_config_loads_total{result="failed"}"#);
    save(
        &dir,
        "gateway.config.yml",
        "http: {port: 1}\napiEndpoints:\n  tiles: {paths: '/x'\n",
    );
    wait_for("the broken file refused", || failed_loads() >= 1.0);
    save(
        &dir,
        "gateway.config.yml",
        &gateway_yml("/one/*", &up.url(""), "      - nope:\n"),
    );
    let last_errors = || -> (serde_json::Value, Vec<String>) {
        let status = support::json_body(&get(gw.admin_port, "GET", "/tollgate/config", &[]));
        let errors = status["lastError"]["errors"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|e| e.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        (status, errors)
    };
    wait_for("the unknown policy refused", || {
        last_errors()
            .1
            .first()
            .is_some_and(|e| e.contains("`nope`"))
    });
    // Requests go on being served meanwhile.
    std::thread::sleep(Duration::from_millis(300));
    let report = load.stop();
    assert!(report.failed(200).is_empty(), "{:?}", report.failed(200));
    let (status, errors) = last_errors();
    let well_formed = |e: &str| {
        let rest = e.split("gateway.config.yml:").nth(1).unwrap_or("");
        let mut parts = rest.splitn(3, ':');
        parts.next().is_some_and(|l| l.parse::<u32>().is_ok())
            && parts.next().is_some_and(|c| c.parse::<u32>().is_ok())
            && parts.next().is_some_and(|r| !r.trim().is_empty())
    };
    assert!(
        !errors.is_empty() && errors.iter().all(|e| well_formed(e)),
        "file:line:column: reason: {status}"
    );
    assert!(errors[0].contains("`nope`"), "{status}");
    assert!(failed_loads() >= 2.0);
    assert!(gw.metric("tollgate_config_last_reload_success_timestamp_seconds") > 0.0);
    let log = gw.log_text();
    assert!(
        log.lines().any(|l| l.contains(" ERROR ")
            && l.contains("gateway.config.yml:")
            && l.contains("the running config stays")),
        "{log}"
    );
    // `tollgate reload` says it failed, with the reason.
    let admin = format!("http://127.0.0.1:{}", gw.admin_port);
    let out = run_tollgate(&["reload", "--admin-url", &admin], &[]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("gateway.config.yml:"));
    assert_eq!(last_errors().0["refusedOnDisk"], true);
    assert_eq!(gw.metric("tollgate_config_refused_on_disk"), 1.0);
    // Put back as it runs: nothing to reload, but the status and the log say that the
    // refused file's errors no longer apply.
    save(
        &dir,
        "gateway.config.yml",
        &gateway_yml("/one/*", &up.url(""), ""),
    );
    // (The status first, then the metric and the line.)
    wait_for("the running config back on disk", || {
        last_errors().0["refusedOnDisk"] == false
            && gw.metric("tollgate_config_refused_on_disk") == 0.0
            && gw
                .log_text()
                .lines()
                .any(|l| l.contains(" INFO ") && l.contains("back to the config in force"))
    });
    // Fixed: in force again.
    save(
        &dir,
        "gateway.config.yml",
        &gateway_yml("/fixed/*", &up.url(""), ""),
    );
    wait_for("the fixed file", || {
        get(gw.port, "GET", "/fixed/x", &[]).status == 200
    });
}

/// Files that would have taken the running gateway down, or put defaults in its place, are
/// refused on a reload and the running config serves on under load: collections nested
/// thousands deep (a stack overflow aborted the process, by the watcher, SIGHUP and the Admin
/// API alike), a NUL (the file read up to it: every route gone), the system config deleted (a
/// save that removes it first put the embedded store and every default in force).
#[test]
fn reloads_that_would_break_the_gateway_are_refused_under_load() {
    let up = PyUpstream::start("a", 5.0);
    let good = gateway_yml("/one/*", &up.url(""), "");
    let dir = ConfigDir::new(&good);
    let gw = GatewayProcess::start_with(&dir, &[], &[("EG_DISABLE_CONFIG_WATCH", "true")]);
    let load = closing_load(gw.port, "/one/x");
    let reload = || send_json(gw.admin_port, "POST", "/tollgate/reload", "{}");
    // A users model in force.
    std::fs::create_dir_all(dir.path.join("models")).expect("models");
    dir.write(
        "models/users.json",
        r#"{"type": "object", "properties": {"username": {"type": "string"}}, "required": ["username"]}"#,
    );
    assert_eq!(reload().status, 200);
    let nested = format!("{good}x:\n  {}1\n", "- ".repeat(3000));
    let nul = good.replacen("pipelines:", "\u{0}pipelines:", 1);
    // An https listener applies at the next start, which could not use these: refused now.
    dir.write("bad.pem", "not a certificate\n");
    let pem = dir.path.join("bad.pem").display().to_string();
    let port = support::free_port();
    let bad_cert = format!(
        "{good}https: {{port: {port}, tls: {{default: {{key: '{pem}', cert: '{pem}'}}}}}}\n"
    );
    let no_cert = format!("{good}https: {{port: {port}, tls: {{}}}}\n");
    let null_cert = format!("{good}https: {{port: {port}, tls: ~}}\n");
    let bad_host = format!("{good}https: {{port: {port}, hostname: 'not a host!', tls: {{}}}}\n");
    for (what, file, content, said) in [
        (
            "nested",
            "gateway.config.yml",
            Some(nested.as_str()),
            "nested more than",
        ),
        (
            "a NUL",
            "gateway.config.yml",
            Some(nul.as_str()),
            "a control character",
        ),
        (
            "a certificate that is not one",
            "gateway.config.yml",
            Some(bad_cert.as_str()),
            "https certificate `default`",
        ),
        (
            "no certificate",
            "gateway.config.yml",
            Some(no_cert.as_str()),
            "`https.tls` needs at least a `default` key and cert",
        ),
        (
            "a null certificate section",
            "gateway.config.yml",
            Some(null_cert.as_str()),
            "`https.tls` needs at least a `default` key and cert",
        ),
        (
            "a listener's host that is none",
            "gateway.config.yml",
            Some(bad_host.as_str()),
            "`https.hostname` must be an IP address or a host name, not `not a host!`",
        ),
        (
            "no system file",
            "system.config.yml",
            None,
            "the file is gone",
        ),
        (
            "no users model",
            "models/users.json",
            None,
            "the file is gone",
        ),
    ] {
        let path = dir.path.join(file);
        let kept = std::fs::read(&path).expect("read");
        match content {
            Some(c) => save(&dir, file, c),
            None => std::fs::remove_file(&path).expect("remove"),
        }
        let r = reload();
        assert_eq!(r.status, 422, "{what}: {}", r.text());
        assert!(r.text().contains(said), "{what}: {}", r.text());
        assert_eq!(get(gw.port, "GET", "/one/x", &[]).status, 200, "{what}");
        std::fs::write(&path, kept).expect("restore");
    }
    // The config and a model broken at once: both said, as `check` says them (the model's
    // came only once the config's was mended).
    let kept: Vec<(&str, Vec<u8>)> = ["gateway.config.yml", "models/users.json"]
        .into_iter()
        .map(|f| (f, std::fs::read(dir.path.join(f)).expect("read")))
        .collect();
    save(&dir, "gateway.config.yml", &nul);
    save(&dir, "models/users.json", "{\n  \"type\": \"object\",\n}\n");
    let r = reload();
    assert_eq!(r.status, 422, "{}", r.text());
    assert!(
        r.text().contains("a control character") && r.text().contains("models/users.json"),
        "{}",
        r.text()
    );
    for (f, bytes) in kept {
        std::fs::write(dir.path.join(f), bytes).expect("restore");
    }
    assert_eq!(reload().status, 200);
    std::thread::sleep(Duration::from_millis(200));
    let report = load.stop();
    assert!(report.failed(200).is_empty(), "{:?}", report.failed(200));
    let log = gw.log_text();
    assert!(!log.contains("panicked"), "{log}");
    // The system config refused as gone is not said to be replaced by defaults.
    assert!(
        !log.contains("using the embedded store and defaults"),
        "{log}"
    );
}

/// The upstream is named by a host name, as in most configs: each new config starts with the
/// addresses the running one resolved.
#[test]
fn a_hundred_reloads_under_load_lose_no_request() {
    let up = PyUpstream::start("a", 5.0);
    let url = up.url("").replace("127.0.0.1", "localhost");
    let dir = ConfigDir::new(&gateway_yml("/tiles/*", &url, ""));
    let gw = GatewayProcess::start(&dir);
    let load = Load::start(
        gw.port,
        4,
        "GET /tiles/x HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
        Duration::from_millis(2),
    );
    let started = Instant::now();
    for i in 0..100 {
        // Every other config adds a step, so each reload builds something new.
        let extra = if i % 2 == 0 {
            "      - rate-limit: [{action: {max: 1000000, windowMs: 60000}}]\n"
        } else {
            ""
        };
        save(
            &dir,
            "gateway.config.yml",
            &gateway_yml("/tiles/*", &url, extra),
        );
        let r = send_json(gw.admin_port, "POST", "/tollgate/reload", "");
        assert_eq!(r.status, 200, "{}", r.text());
        std::thread::sleep(Duration::from_millis(40));
    }
    let report = load.stop();
    let failed = report.failed(200);
    assert!(
        failed.is_empty(),
        "{} of {} failed over 100 reloads: {:?}",
        failed.len(),
        report.count(),
        &failed[..failed.len().min(5)]
    );
    // The load ran through the reloads (the count only shows that it ran).
    assert!(report.count() > 100, "{}", report.count());
    eprintln!(
        "100 reloads in {:?} under load: {} requests, 0 failed",
        started.elapsed(),
        report.count()
    );
}

#[test]
fn a_slow_request_finishes_on_the_upstream_it_started_with() {
    let a = PyUpstream::start("a", 5.0);
    let b = PyUpstream::start("b", 5.0);
    let dir = ConfigDir::new(&gateway_yml("/tiles/*", &a.url(""), ""));
    let gw = GatewayProcess::start(&dir);
    let port = gw.port;
    let before = a.served();
    let slow = std::thread::spawn(move || get(port, "GET", "/tiles/slow/1500/x", &[]));
    wait_for("the slow request at a", || a.served() > before);
    save(
        &dir,
        "gateway.config.yml",
        &gateway_yml("/tiles/*", &b.url(""), ""),
    );
    wait_for("new requests to b", || {
        name_of(&get(gw.port, "GET", "/tiles/x", &[])) == "b"
    });
    let r = slow.join().expect("slow request");
    assert_eq!((r.status, name_of(&r)), (200, "a".to_string()));
}

#[test]
fn rate_limit_windows_survive_a_reload() {
    let up = PyUpstream::start("a", 5.0);
    let limit = "      - rate-limit: [{action: {max: 3, windowMs: 60000, rateLimitBy: 'all'}}]\n";
    let dir = ConfigDir::new(&gateway_yml("/tiles/*", &up.url(""), limit));
    let gw = GatewayProcess::start(&dir);
    for _ in 0..3 {
        assert_eq!(get(gw.port, "GET", "/tiles/x", &[]).status, 200);
    }
    // Another path, the same limit: the window is not reset by the reload.
    save(
        &dir,
        "gateway.config.yml",
        &gateway_yml(
            "/tiles/*",
            &up.url(""),
            &format!("{limit}      - log: [{{action: {{message: 'reloaded'}}}}]\n"),
        ),
    );
    let r = send_json(gw.admin_port, "POST", "/tollgate/reload", "");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(get(gw.port, "GET", "/tiles/x", &[]).status, 429);
}

#[test]
fn restart_only_changes_are_said_and_wait_for_the_next_start() {
    let up = PyUpstream::start("a", 5.0);
    let dir = ConfigDir::new(&gateway_yml("/tiles/*", &up.url(""), ""));
    let gw = GatewayProcess::start(&dir);
    let other = support::free_port();
    save(
        &dir,
        "gateway.config.yml",
        &gateway_yml("/tiles/*", &up.url(""), "").replace("${PORT}", &other.to_string()),
    );
    let r = support::json_body(&send_json(gw.admin_port, "POST", "/tollgate/reload", ""));
    assert_eq!(r["result"], "reloaded");
    assert!(
        r["restartRequired"].to_string().contains("http listener"),
        "{r}"
    );
    assert_eq!(
        get(gw.port, "GET", "/tiles/x", &[]).status,
        200,
        "still on the old port"
    );
    assert!(std::net::TcpStream::connect(("127.0.0.1", other)).is_err());
    assert!(gw.log_text().contains("applies at the next start"));
    // Of `crypto`, only `saltRounds` is used: a new `cipherKey` changes nothing.
    let system = "db:\n  redis:\n    emulate: true\n";
    let reload_with = |crypto: &str| {
        save(
            &dir,
            "system.config.yml",
            &format!("{system}crypto: {crypto}\n"),
        );
        let r = support::json_body(&send_json(gw.admin_port, "POST", "/tollgate/reload", ""));
        assert_eq!(r["result"], "reloaded", "{r}");
        r["restartRequired"].to_string()
    };
    let said = reload_with("{cipherKey: another}");
    assert!(!said.contains("crypto"), "{said}");
    let said = reload_with("{cipherKey: another, saltRounds: 12}");
    assert!(said.contains("crypto.saltRounds changed"), "{said}");
}

/// The rest of an https gateway's config: the Admin API and one pipeline to `up`.
fn https_rest(up: &PyUpstream) -> String {
    format!(
        "admin: {{port: ${{ADMIN_PORT}}, host: 127.0.0.1}}\napiEndpoints:\n  tiles: {{paths: '/tiles/*'}}\nserviceEndpoints:\n  up: {{url: '{}'}}\npolicies: [proxy]\npipelines:\n  tiles:\n    apiEndpoints: [tiles]\n    policies:\n      - proxy: [{{action: {{serviceEndpoint: up}}}}]\n",
        up.url("")
    )
}

/// A new certificate for the https listener (read at start only), saved in the config
/// directory, in a directory of its own (where an ACME client keeps them) or swapped in a
/// Kubernetes Secret volume, is seen by the watch and said to wait for the next start; the
/// listener keeps serving the one it started with.
#[test]
fn a_new_certificate_is_said_to_wait_for_a_restart() {
    let up = PyUpstream::start("a", 5.0);
    let (dir, gw) = support::tls::https_gateway(&https_rest(&up));
    let config = std::fs::read_to_string(dir.path.join("gateway.config.yml")).expect("config");
    let (crt, key) = (dir.path.join("tls.crt"), dir.path.join("tls.key"));
    // The same config with the certificate and key elsewhere: a folder of their own, and a
    // Kubernetes Secret volume (each file a link through `..data`, swapped on renewal).
    let elsewhere = ConfigDir::empty();
    std::fs::copy(&crt, elsewhere.path.join("tls.crt")).expect("copy");
    std::fs::copy(&key, elsewhere.path.join("tls.key")).expect("copy");
    let secret = ConfigDir::empty();
    let version = |n: u32, cert: &support::tls::SelfSigned| {
        let v = secret.path.join(format!("..2026_12_03_{n}"));
        std::fs::create_dir_all(&v).expect("version");
        std::fs::write(v.join("tls.crt"), cert.cert_pem()).expect("write");
        std::fs::write(v.join("tls.key"), cert.key_pem()).expect("write");
        let tmp = secret.path.join("..data_tmp");
        std::os::unix::fs::symlink(v.file_name().expect("name"), &tmp).expect("link");
        std::fs::rename(&tmp, secret.path.join("..data")).expect("swap");
    };
    let first = support::tls::SelfSigned {
        cert: openssl::x509::X509::from_pem(&std::fs::read(&crt).expect("crt")).expect("pem"),
        key: openssl::pkey::PKey::private_key_from_pem(&std::fs::read(&key).expect("key"))
            .expect("pem"),
    };
    version(1, &first);
    for f in ["tls.crt", "tls.key"] {
        std::os::unix::fs::symlink(format!("..data/{f}"), secret.path.join(f)).expect("link");
    }
    let moved_to = |certs: &ConfigDir| {
        let moved = ConfigDir::new(&config.replace(
            &dir.path.display().to_string(),
            &certs.path.display().to_string(),
        ));
        let gw = GatewayProcess::start(&moved);
        (moved, gw)
    };
    let (_a, gw_elsewhere) = moved_to(&elsewhere);
    let (_b, gw_secret) = moved_to(&secret);
    let renew_in_place = |certs: &ConfigDir, renewed: &support::tls::SelfSigned| {
        save(certs, "tls.key", &renewed.key_pem());
        save(certs, "tls.crt", &renewed.cert_pem());
    };
    let cases: [(&ConfigDir, &GatewayProcess); 3] = [
        (&dir, &gw),
        (&elsewhere, &gw_elsewhere),
        (&secret, &gw_secret),
    ];
    for (certs, gw) in cases {
        let status = || support::json_body(&get(gw.admin_port, "GET", "/tollgate/config", &[]));
        let listed = status()["files"].to_string();
        assert!(listed.contains(&certs.file("tls.crt")), "{}", status());
        let renewed = support::tls::SelfSigned::new();
        if std::ptr::eq(certs, &secret) {
            version(2, &renewed);
            std::fs::remove_dir_all(secret.path.join("..2026_12_03_1")).expect("old version");
        } else {
            renew_in_place(certs, &renewed);
        }
        wait_for("the renewed certificate noticed", || {
            status()["restartRequired"]
                .to_string()
                .contains("certificates")
        });
        let served = support::tls::tls_request(
            gw.port,
            "GET /tiles/x HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
        );
        assert!(served.starts_with("HTTP/1.1 200"), "{served}");
    }
}

/// A config directory named relative to the working directory (`--config conf`, as the README
/// runs it) whose https certificate lies in it: a folder made in it later is watched too (a
/// second watch of the directory for the certificate's sake would end that).
#[test]
fn a_relative_config_directory_with_its_certificate_watches_new_folders() {
    let up = PyUpstream::start("a", 5.0);
    let rel = PathBuf::from(format!("target/tollgate-relative-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&rel);
    std::fs::create_dir_all(&rel).expect("dir");
    let dir = support::tls::https_config(ConfigDir { path: rel.clone() }, &https_rest(&up));
    let gw = GatewayProcess::start(&dir);
    // EG's own model of a user asks for no more than a name.
    let named = |name: &str| {
        send_json(
            gw.admin_port,
            "POST",
            "/users",
            &format!(r#"{{"username": "{name}"}}"#),
        )
        .status
    };
    assert!(named("ann") < 300);
    // A models folder made now, then a model saved in it: the model is in force.
    std::fs::create_dir_all(rel.join("models")).expect("models");
    std::thread::sleep(PAST_QUIET);
    save(
        &dir,
        "models/users.json",
        r#"{"type": "object", "properties": {"username": {"type": "string"}, "email": {"type": "string"}}, "required": ["username", "email"]}"#,
    );
    let mut n = 0;
    wait_for("the model saved in the new folder", || {
        n += 1;
        named(&format!("user{n}")) == 422
    });
}

/// A stack whose workspace lies inside its defaults directory: a folder made in the defaults
/// later is watched too (watching the defaults as the workspace's parent would end that).
#[test]
fn a_workspace_inside_the_defaults_directory_leaves_its_new_folders_watched() {
    let up = PyUpstream::start("a", 5.0);
    let defaults = ConfigDir::new(&gateway_yml("/tiles/*", &up.url(""), ""));
    let workspace = defaults.path.join("workspace");
    std::fs::create_dir_all(&workspace).expect("workspace");
    let w = workspace.display().to_string();
    let gw = GatewayProcess::start_with(&defaults, &["--config", &w], &[]);
    let mut n = 0;
    let mut named = || {
        n += 1;
        let body = format!(r#"{{"username": "user{n}"}}"#);
        send_json(gw.admin_port, "POST", "/users", &body).status
    };
    assert!(named() < 300);
    std::fs::create_dir_all(defaults.path.join("models")).expect("models");
    std::thread::sleep(PAST_QUIET);
    save(
        &defaults,
        "models/users.json",
        r#"{"type": "object", "properties": {"username": {"type": "string"}, "email": {"type": "string"}}, "required": ["username", "email"]}"#,
    );
    wait_for("the model saved in the defaults' new folder", || {
        named() == 422
    });
}

#[test]
fn layered_directories_a_later_file_wins() {
    let up = PyUpstream::start("a", 5.0);
    let defaults = ConfigDir::new(&gateway_yml("/default/*", &up.url(""), ""));
    std::fs::create_dir_all(defaults.path.join("models")).expect("models");
    defaults.write(
        "models/users.json",
        r#"{"type": "object", "properties": {"username": {"type": "string"}, "email": {"type": "string"}}, "required": ["username", "email"]}"#,
    );
    // A Redis password the emulated store never uses: `config show` must not print it.
    defaults.write(
        "system.config.yml",
        "db:\n  redis:\n    emulate: true\n    password: hunter2-not-shown\n",
    );
    let workspace = ConfigDir::empty();
    workspace.write(
        "gateway.config.yml",
        &gateway_yml("/workspace/*", &up.url(""), ""),
    );
    let d = defaults.path.display().to_string();
    let w = workspace.path.display().to_string();
    // `check` and `config show` see the stack.
    let out = run_tollgate(
        &["check", "--config", &d, "--config", &w],
        &[("PORT", "28695"), ("ADMIN_PORT", "28696")],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run_tollgate(
        &["config", "show"],
        &[
            ("EG_CONFIG_DIR", &format!("{d}:{w}")),
            ("PORT", "28695"),
            ("ADMIN_PORT", "28696"),
        ],
    );
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(
        shown.contains(&format!("# gateway.config.yml  from {w}")),
        "{shown}"
    );
    assert!(
        shown.contains(&format!("# system.config.yml  from {d}")),
        "{shown}"
    );
    assert!(
        shown.contains(&format!("# models/users.json  from {d}")),
        "{shown}"
    );
    assert!(
        !shown.contains("hunter2") && shown.contains("    password: \"<redacted>\"\n"),
        "{shown}"
    );
    // Served from the stack: the workspace's routes, the defaults' models.
    let gw = GatewayProcess::start_with(&workspace, &["--config", &d, "--config", &w], &[]);
    assert_eq!(get(gw.port, "GET", "/workspace/x", &[]).status, 200);
    assert_eq!(get(gw.port, "GET", "/default/x", &[]).status, 404);
    let r = send_json(gw.admin_port, "POST", "/users", r#"{"username": "ann"}"#);
    assert_eq!(
        r.status,
        422,
        "the defaults' model requires an email: {}",
        r.text()
    );
    // A change to a shadowed file is no change; one to the workspace's is.
    save(
        &defaults,
        "gateway.config.yml",
        &gateway_yml("/shadowed/*", &up.url(""), ""),
    );
    std::thread::sleep(PAST_QUIET);
    assert_eq!(
        gw.metric(r#"tollgate_config_loads_total{result="ok"}"#),
        1.0
    );
    // The workspace takes a models file of its own: it replaces the defaults'.
    std::fs::create_dir_all(workspace.path.join("models")).expect("models");
    save(
        &workspace,
        "models/users.json",
        r#"{"type": "object", "properties": {"username": {"type": "string"}}, "required": ["username"]}"#,
    );
    wait_for("the workspace's model", || {
        send_json(gw.admin_port, "POST", "/users", r#"{"username": "bob"}"#).status < 300
    });
    wait_for("the workspace's model among the files read", || {
        let status = support::json_body(&get(gw.admin_port, "GET", "/tollgate/config", &[]));
        status["files"]
            .to_string()
            .contains(&format!("{w}/models/users.json"))
    });
}

/// A file saved while a reload is reading the config is loaded after it: the reload records
/// the files' content as it was when it read them, so the watcher sees the later save as a
/// change. The reload is held in the middle by a key file that is a named pipe: reading it
/// waits until the test writes the key.
#[test]
fn a_save_during_a_reload_is_loaded_after_it() {
    use std::io::Write;
    let up = PyUpstream::start("a", 5.0);
    let pipes = ConfigDir::empty();
    let fifo = pipes.path.join("key.fifo");
    let made = Command::new("mkfifo").arg(&fifo).status().expect("mkfifo");
    assert!(made.success());
    let yml = |path: &str| {
        format!(
            "http: {{port: ${{PORT}}}}\nadmin: {{port: ${{ADMIN_PORT}}, host: 127.0.0.1}}\napiEndpoints:\n  tiles: {{paths: '{path}'}}\n  signed: {{paths: '/signed/*'}}\nserviceEndpoints:\n  up: {{url: '{up}'}}\npolicies: [proxy, jwt]\npipelines:\n  tiles:\n    apiEndpoints: [tiles]\n    policies:\n      - proxy: [{{action: {{serviceEndpoint: up}}}}]\n  signed:\n    apiEndpoints: [signed]\n    policies:\n      - jwt: [{{action: {{secretOrPublicKeyFile: '{key}', checkCredentialExistence: false}}}}]\n      - proxy: [{{action: {{serviceEndpoint: up}}}}]\n",
            up = up.url(""),
            key = fifo.display(),
        )
    };
    // Each message lets one read of the key through: when the reader is there the feeder says
    // so and, for a held read, writes the key only once told to.
    let (feed, feeds) = std::sync::mpsc::channel::<bool>();
    let (here_tx, here) = std::sync::mpsc::channel::<()>();
    let (release, released) = std::sync::mpsc::channel::<()>();
    let to = fifo.clone();
    std::thread::spawn(move || {
        for held in feeds {
            let mut w = std::fs::OpenOptions::new()
                .write(true)
                .open(&to)
                .expect("open the pipe");
            let _ = here_tx.send(());
            if held && released.recv().is_err() {
                return;
            }
            w.write_all(b"a key of the test").expect("write the key");
        }
    });
    let within = Duration::from_secs(10);
    feed.send(false).expect("feed");
    let dir = ConfigDir::new(&yml("/one/*"));
    let gw = GatewayProcess::start(&dir);
    here.recv_timeout(within).expect("the start read the key");
    assert_eq!(get(gw.port, "GET", "/one/x", &[]).status, 200);
    // A save: its reload reads the new file, then waits on the key.
    feed.send(true).expect("feed");
    save(&dir, "gateway.config.yml", &yml("/two/*"));
    here.recv_timeout(within)
        .expect("the reload reading the key");
    // Another save while it waits; then the key for it, and for the reload after it.
    save(&dir, "gateway.config.yml", &yml("/three/*"));
    release.send(()).expect("release");
    wait_for("the first reload", || {
        get(gw.port, "GET", "/two/x", &[]).status == 200
    });
    feed.send(false).expect("feed");
    wait_for("the save made during the first reload", || {
        get(gw.port, "GET", "/three/x", &[]).status == 200
    });
}

/// The two ways config directories are replaced whole in deployments are watched through:
/// a Kubernetes ConfigMap volume (each file a symlink through `..data`, which the kubelet
/// swaps to a new timestamped directory: the directory itself stays) and a directory removed
/// and copied anew (the watch on the old one is gone with it: the gateway sees the new one in
/// the parent and watches it — the second copy fails without that).
#[test]
fn config_directories_replaced_whole_are_still_watched() {
    use std::os::unix::fs::symlink;
    let up = PyUpstream::start("a", 5.0);
    let parent = ConfigDir::empty();
    let data = parent.path.join("data").display().to_string();
    let system = "db:\n  redis:\n    emulate: true\n";

    // A ConfigMap volume: files are links through `..data`.
    // A directory with the two files, routing `path`.
    let fill = |d: &std::path::Path, path: &str| {
        std::fs::create_dir_all(d).expect("dir");
        std::fs::write(
            d.join("gateway.config.yml"),
            gateway_yml(path, &up.url(""), ""),
        )
        .expect("write");
        std::fs::write(d.join("system.config.yml"), system).expect("write");
    };
    let volume = parent.path.join("configmap");
    let version = |n: u32, path: &str| {
        let d = volume.join(format!("..2026_12_03_{n}"));
        fill(&d, path);
        d
    };
    let first = version(1, "/one/*");
    symlink(first.file_name().expect("name"), volume.join("..data")).expect("..data");
    for f in ["gateway.config.yml", "system.config.yml"] {
        symlink(format!("..data/{f}"), volume.join(f)).expect("link");
    }
    let dir = ConfigDir {
        path: volume.clone(),
    };
    let gw = GatewayProcess::start_with(&dir, &["--data-dir", &data], &[]);
    assert_eq!(get(gw.port, "GET", "/one/x", &[]).status, 200);
    // The kubelet's update: a new version, `..data_tmp` renamed over `..data`, the old removed.
    for (n, path, probe) in [(2, "/two/*", "/two/x"), (3, "/three/*", "/three/x")] {
        let next = version(n, path);
        let tmp = dir.path.join("..data_tmp");
        symlink(next.file_name().expect("name"), &tmp).expect("..data_tmp");
        std::fs::rename(&tmp, dir.path.join("..data")).expect("swap");
        std::fs::remove_dir_all(dir.path.join(format!("..2026_12_03_{}", n - 1))).expect("old");
        wait_for("the swapped ConfigMap", || {
            get(gw.port, "GET", probe, &[]).status == 200
        });
    }
    drop(gw);

    // A directory removed and copied anew, twice: the second copy proves the new one is watched.
    let conf = ConfigDir {
        path: parent.path.join("conf"),
    };
    fill(&conf.path, "/one/*");
    let gw = GatewayProcess::start_with(&conf, &["--data-dir", &data], &[]);
    assert_eq!(get(gw.port, "GET", "/one/x", &[]).status, 200);
    for (path, probe) in [("/two/*", "/two/x"), ("/three/*", "/three/x")] {
        // Quiet between the copies: no reload is under way from the one before.
        std::thread::sleep(PAST_QUIET);
        let copy = parent.path.join("conf.new");
        fill(&copy, path);
        std::fs::remove_dir_all(&conf.path).expect("rm -rf");
        std::fs::rename(&copy, &conf.path).expect("mv");
        wait_for("the directory copied anew", || {
            get(gw.port, "GET", probe, &[]).status == 200
        });
    }
    let status = support::json_body(&get(gw.admin_port, "GET", "/tollgate/config", &[]));
    assert_eq!(status["watching"], true, "{status}");
}

/// A data directory that is a link in the config directory to a volume elsewhere, the gateway
/// given the volume's own path: the store's writes there (its journal appended, a snapshot
/// written aside and renamed over, so the event names a file that is gone) are no config
/// change and start no check; a file saved beside the config does (so the count observed is
/// real); a config change is still applied.
#[test]
fn writes_in_a_data_directory_linked_into_the_config_directory_start_no_check() {
    let up = PyUpstream::start("a", 5.0);
    let dir = ConfigDir::new(&gateway_yml("/one/*", &up.url(""), ""));
    let elsewhere = ConfigDir::empty();
    let volume = elsewhere.path.join("volume");
    std::fs::create_dir_all(&volume).expect("volume");
    std::os::unix::fs::symlink(&volume, dir.path.join("data")).expect("link");
    // The log outside the config directory: its own writes would be checks.
    let log = elsewhere.path.join("tollgate.log");
    let gw = GatewayProcess::start_logging(
        &dir,
        Some(&log),
        &["--data-dir", &volume.display().to_string()],
        &[("RUST_LOG", "info,tollgate::lifecycle=debug")],
    );
    let checks = || gw.log_text().matches("no config input did").count();
    // The watcher's first look, at its start, is a check of its own: counted once it came
    // and no more follow.
    wait_for("the watcher's first check", || checks() >= 1);
    let settled = Instant::now();
    let mut before = checks();
    loop {
        std::thread::sleep(PAST_QUIET);
        let now = checks();
        if now == before {
            break;
        }
        assert!(
            settled.elapsed() < Duration::from_secs(10),
            "checks keep coming with nothing written: {}",
            gw.log_text()
        );
        before = now;
    }
    for i in 0..4 {
        let user = format!(r#"{{"username":"u{i}","firstname":"F","lastname":"L"}}"#);
        assert_eq!(
            send_json(gw.admin_port, "POST", "/users", &user).status,
            200
        );
        let tmp = volume.join("store.snapshot.json.tmp");
        std::fs::write(&tmp, format!("{{\"n\":{i}}}")).expect("write");
        std::fs::rename(&tmp, volume.join("store.snapshot.json")).expect("rename");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        volume.join("store.journal").exists(),
        "the store wrote no journal in the volume"
    );
    // Longer than the watcher's quiet wait.
    std::thread::sleep(PAST_QUIET);
    assert_eq!(checks(), before, "{}", gw.log_text());
    // A file beside the config is looked at.
    std::fs::write(dir.path.join("notes.txt"), "x").expect("write");
    wait_for("a check after a write beside the config", || {
        checks() > before
    });
    save(
        &dir,
        "gateway.config.yml",
        &gateway_yml("/two/*", &up.url(""), ""),
    );
    wait_for("the change", || {
        get(gw.port, "GET", "/two/x", &[]).status == 200
    });
}

#[test]
fn a_binary_upgrade_under_load_refuses_nothing() {
    let up = PyUpstream::start("a", 5.0);
    let dir = ConfigDir::new(&gateway_yml("/tiles/*", &up.url(""), ""));
    let sock = dir.path.join("upgrade.sock").display().to_string();
    let old = GatewayProcess::start_with(
        &dir,
        &["--upgrade-sock", &sock, "--grace-period", "10"],
        &[],
    );
    let load = Load::start(
        old.port,
        4,
        "GET /tiles/x HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
        Duration::from_millis(2),
    );
    let load_started = load.started;
    // Clients that keep their connections: each is told to close after an answer once the
    // old process is leaving, none finds its connection closed under a request it sent.
    let kept = Load::keep_alive(
        old.port,
        4,
        "GET /tiles/kept HTTP/1.1\r\nHost: h\r\n\r\n",
        Duration::from_millis(2),
    );
    // A client that sends bodies (Pingora's session serves those) on a connection of the
    // old process's.
    let mut posting = std::net::TcpStream::connect(("127.0.0.1", old.port)).expect("connect");
    posting
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let post = "POST /tiles/posted HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\nhi";
    let before = exchange(&mut posting, post);
    assert!(!before.contains("connection: close"), "{before}");
    std::thread::sleep(Duration::from_millis(500));
    // The new process, same config and ports, takes the sockets over.
    let mut new = start_upgrade(&dir, &old, &sock, &[], &[]);
    std::thread::sleep(Duration::from_millis(500));
    old.signal("QUIT");
    let quit = Instant::now();
    // The old process is leaving once the new one has its sockets (at SIGQUIT): its answer tells the
    // client to close.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let answer = exchange(&mut posting, post);
        assert!(answer.starts_with("http/1.1 200"), "{answer}");
        if answer.contains("connection: close") {
            break;
        }
        assert!(Instant::now() < deadline, "still kept: {answer}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut old = old;
    let deadline = Instant::now() + Duration::from_secs(20);
    while old.child.try_wait().expect("wait").is_none() {
        assert!(
            Instant::now() < deadline,
            "the old process did not leave: {}",
            old.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let left = quit.elapsed();
    std::thread::sleep(Duration::from_millis(700));
    let report = load.stop();
    let kept = kept.stop();
    let new_log = std::fs::read_to_string(dir.path.join("new.log")).unwrap_or_default();
    assert!(
        new.0.try_wait().expect("wait").is_none(),
        "the new process runs: {new_log}"
    );
    let failed = report.failed(200);
    assert!(
        failed.is_empty(),
        "{} of {} failed during the upgrade (SIGQUIT at {:?} into the load): first {:?}, last {:?}\nold: {}\nnew: {new_log}",
        failed.len(),
        report.count(),
        quit.duration_since(load_started),
        &failed[..failed.len().min(5)],
        failed.last(),
        old.log_text()
    );
    let failed_kept = kept.failed(200);
    assert!(
        failed_kept.is_empty(),
        "{} of {} requests on kept connections failed during the upgrade (SIGQUIT at {:?} into the load): first {:?}, last {:?}",
        failed_kept.len(),
        kept.count(),
        quit.duration_since(load_started),
        &failed_kept[..failed_kept.len().min(5)],
        failed_kept.last(),
    );
    // The load ran through the upgrade (the count only shows that it ran).
    assert!(report.count() > 100, "{}", report.count());
    assert!(kept.count() > 100, "{}", kept.count());
    eprintln!(
        "binary upgrade under load: {} requests, {} on kept connections, 0 failed, 0 refused; the old process left {:?} after SIGQUIT",
        report.count(),
        kept.count(),
        left
    );
    // The new process owns the embedded store: it takes writes.
    let r = send_json(
        old.admin_port,
        "POST",
        "/users",
        r#"{"username": "after-upgrade"}"#,
    );
    assert!(r.status < 300, "{} {}", r.status, r.text());
}

/// From an upgrade's hand-over on, the Admin API is the new process's alone: fresh
/// connections are the new process's (the old one went on accepting them for five seconds,
/// as it does the gateway's, and Prometheus, scraping the two by turns, saw every counter fall
/// and rise again: a reset at every turn), and a connection kept to the old one is told to
/// close (it was answered with the old counters until the old process ended).
#[test]
fn after_the_hand_over_the_admin_api_answers_from_the_new_process() {
    let up = PyUpstream::start("a", 5.0);
    let dir = ConfigDir::new(&gateway_yml("/tiles/*", &up.url(""), ""));
    let sock = dir.path.join("upgrade.sock").display().to_string();
    let old = GatewayProcess::start_with(&dir, &["--upgrade-sock", &sock], &[]);
    for _ in 0..20 {
        assert_eq!(get(old.port, "GET", "/tiles/x", &[]).status, 200);
    }
    // The bytes of the tiles a process has served: the old one's, never the new one's, which
    // serves none here.
    let served = |metrics: &str| -> f64 {
        metrics
            .lines()
            .filter(|l| l.starts_with("tollgate_response_body_bytes_total"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let scrape = || get(old.admin_port, "GET", "/metrics", &[("Host", "127.0.0.1")]);
    let old_served = served(&scrape().text());
    assert!(old_served > 0.0, "{}", scrape().text());
    let ask = "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
    let mut kept = std::net::TcpStream::connect(("127.0.0.1", old.admin_port)).expect("connect");
    kept.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let first = exchange(&mut kept, ask);
    assert!(!first.contains("connection: close"), "{first}");

    let new = start_upgrade(&dir, &old, &sock, &[], &[]);
    std::thread::sleep(Duration::from_secs(1));
    old.signal("QUIT");
    wait_for("the hand-over", || {
        old.log_text()
            .contains("the upgraded process accepts from now on")
    });
    let next = exchange(&mut kept, ask);
    assert!(next.contains("connection: close"), "{next}");
    // Well within the five seconds the old process accepts on the gateway's port.
    let until = Instant::now() + Duration::from_secs(3);
    let mut asked = 0;
    while Instant::now() < until {
        let answer = scrape();
        assert_eq!(answer.status, 200, "{}", answer.text());
        assert!(
            served(&answer.text()) < old_served,
            "scrape {asked} after the hand-over answered by the old process"
        );
        asked += 1;
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(asked > 20, "{asked}");
    drop(new);
}

/// An upgrade to a config whose listeners moved (the gateway's and the Admin API's ports)
/// closes the sockets it was handed for the old addresses: they were kept open and never
/// served (connections taken and left hanging), and an upgrade back to those addresses found
/// them in use.
#[test]
fn an_upgrade_that_moves_the_listeners_closes_the_old_sockets() {
    let up = PyUpstream::start("a", 5.0);
    let dir = ConfigDir::new(&gateway_yml("/tiles/*", &up.url(""), ""));
    let sock = dir.path.join("upgrade.sock").display().to_string();
    let old = GatewayProcess::start_with(&dir, &["--upgrade-sock", &sock], &[]);
    assert_eq!(get(old.port, "GET", "/tiles/x", &[]).status, 200);
    let (port, admin_port) = (support::free_port(), support::free_port());
    let moved = gateway_yml("/tiles/*", &up.url(""), "")
        .replace("${PORT}", &port.to_string())
        .replace("${ADMIN_PORT}", &admin_port.to_string());
    save(&dir, "gateway.config.yml", &moved);
    std::thread::sleep(PAST_QUIET);
    let new = start_upgrade(&dir, &old, &sock, &[], &[]);
    std::thread::sleep(Duration::from_secs(1));
    old.signal("QUIT");
    let mut old = old;
    wait_until_gone(&mut old);
    let new_log = || std::fs::read_to_string(dir.path.join("new.log")).unwrap_or_default();
    assert_eq!(
        get(port, "GET", "/tiles/x", &[]).status,
        200,
        "{}",
        new_log()
    );
    assert_eq!(
        get(admin_port, "GET", "/metrics", &[("Host", "127.0.0.1")]).status,
        200
    );
    // The old addresses are free: no socket of the new process listens there.
    for (what, at) in [("gateway", old.port), ("Admin API", old.admin_port)] {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("socket");
        // (Despite the connections the old process closed, in TIME_WAIT.)
        s.set_reuse_address(true).expect("SO_REUSEADDR");
        let addr: std::net::SocketAddr = format!("0.0.0.0:{at}").parse().expect("address");
        let bound = s.bind(&addr.into()).and_then(|()| s.listen(1));
        assert!(
            bound.is_ok(),
            "the old {what} port {at} is still held: {bound:?}\nnew: {}",
            new_log()
        );
    }
    assert!(
        new_log().contains("Closed 2 inherited listening socket(s) not claimed"),
        "{}",
        new_log()
    );
    drop(new);
}

/// A Redis holding EG's fixture, an upstream, and a config of one key-auth route to it on
/// that Redis.
fn keyed_on_redis() -> (support::redis::RedisServer, PyUpstream, ConfigDir) {
    let redis = support::redis::RedisServer::start();
    redis.load_dump(&support::redis::eg_fixture());
    let up = PyUpstream::start("a", 5.0);
    let dir = ConfigDir::new(&format!(
        "http: {{port: ${{PORT}}}}\nadmin: {{port: ${{ADMIN_PORT}}, host: 127.0.0.1}}\napiEndpoints:\n  wmts: {{paths: '/wmts/*', scopes: [wmts]}}\nserviceEndpoints:\n  up: {{url: '{}'}}\npolicies: [key-auth, proxy]\npipelines:\n  keyed:\n    apiEndpoints: [wmts]\n    policies:\n      - key-auth:\n      - proxy: [{{action: {{serviceEndpoint: up}}}}]\n",
        up.url("")
    ));
    dir.write(
        "system.config.yml",
        &format!(
            "db:\n  redis:\n    emulate: false\n    host: 127.0.0.1\n    port: {}\n    namespace: EG\n",
            redis.port
        ),
    );
    (redis, up, dir)
}

/// An upgrade while Redis is down: the new process authenticates with the tables the old one
/// hands it over (before, it knew no credential until Redis came back: every authenticated
/// request `503`), and its load from Redis, once Redis is back, replaces them.
#[test]
fn an_upgrade_while_redis_is_down_keeps_authenticating() {
    let (mut redis, _up, dir) = keyed_on_redis();
    let sock = dir.path.join("upgrade.sock").display().to_string();
    let old = GatewayProcess::start_with(&dir, &["--upgrade-sock", &sock], &[]);
    let key = [("Authorization", "apiKey kargo-ka-id:kargo-ka-secret")];
    let wrong = [("Authorization", "apiKey kargo-ka-id:wrong")];
    assert_eq!(get(old.port, "GET", "/wmts/1", &key).status, 200);
    let redis_port = redis.port;
    redis.stop();
    let new = start_upgrade(&dir, &old, &sock, &[], &[]);
    std::thread::sleep(Duration::from_millis(500));
    old.signal("QUIT");
    let mut old = old;
    wait_until_gone(&mut old);
    let new_log = || std::fs::read_to_string(dir.path.join("new.log")).unwrap_or_default();
    for _ in 0..5 {
        let r = get(old.port, "GET", "/wmts/1", &key);
        assert_eq!(r.status, 200, "{}\nnew: {}", r.text(), new_log());
        assert_eq!(get(old.port, "GET", "/wmts/1", &wrong).status, 401);
    }
    assert!(
        new_log().contains("credentials taken from the process upgraded"),
        "{}",
        new_log()
    );
    assert!(
        !std::path::Path::new(&format!("{sock}.consumers")).exists(),
        "the offer's socket was left behind"
    );
    // Redis back, the credential revoked there: the new process's load from it stands.
    let redis = support::redis::RedisServer::start_on(redis_port);
    redis.load_dump(&support::redis::eg_fixture());
    redis.hset("EG-key-auth:kargo-ka-id", "isActive", "false");
    let back = Instant::now();
    while get(old.port, "GET", "/wmts/1", &key).status != 401 {
        assert!(
            back.elapsed() < Duration::from_secs(15),
            "the store's load did not replace the tables handed over:\n{}",
            new_log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(new);
}

/// An upgrade from a process whose first read of the store has not ended (a store that does
/// not answer; in production a large one on a slow link): it has no tables to hand over, and
/// the new process serves at once, looking credentials up as the old one did. Before, the new
/// process waited 10 s for its own read while the old one stopped accepting 5 s after the
/// sockets went: clients waited in the backlog with no process accepting.
#[test]
fn an_upgrade_from_a_process_still_reading_the_store_leaves_no_gap() {
    let (redis, up, dir) = keyed_on_redis();
    dir.write(
        "gateway.config.yml",
        &format!(
            "http: {{port: ${{PORT}}}}\napiEndpoints:\n  open: {{paths: '/open/*'}}\n  wmts: {{paths: '/wmts/*'}}\nserviceEndpoints:\n  up: {{url: '{}'}}\npolicies: [key-auth, proxy]\npipelines:\n  open:\n    apiEndpoints: [open]\n    policies: [{{proxy: [{{action: {{serviceEndpoint: up}}}}]}}]\n  keyed:\n    apiEndpoints: [wmts]\n    policies:\n      - key-auth:\n      - proxy: [{{action: {{serviceEndpoint: up}}}}]\n",
            up.url("")
        ),
    );
    // Many credentials, and the store's connection a full read goes on answers each command
    // 1.5 s late (within the store's timeout): a read takes most of a minute.
    redis.add_bulk_key_auth(200, "7107c894-3da0-4369-b5ac-913d8700cc6c");
    through_relay(
        &dir,
        redis.port,
        Duration::ZERO,
        Arc::new(AtomicU64::new(1_500)),
        b"SCAN",
    );
    let sock = dir.path.join("upgrade.sock").display().to_string();
    let old = GatewayProcess::start_with(&dir, &["--upgrade-sock", &sock], &[]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !old.log_text().contains("serving meanwhile") {
        assert!(Instant::now() < deadline, "{}", old.log_text());
        std::thread::sleep(Duration::from_millis(100));
    }
    let load = closing_load(old.port, "/open/x");
    let new = start_upgrade(&dir, &old, &sock, &[], &[]);
    wait_for("the new process waits", || {
        std::path::Path::new(&sock).exists()
    });
    old.signal("QUIT");
    let mut old = old;
    wait_until_gone(&mut old);
    std::thread::sleep(Duration::from_millis(300));
    let report = load.stop();
    let new_log = std::fs::read_to_string(dir.path.join("new.log")).unwrap_or_default();
    none_failed(&report, &new_log);
    let slowest = report
        .outcomes
        .iter()
        .map(|o| o.took)
        .max()
        .unwrap_or_default();
    assert!(
        slowest < Duration::from_secs(3),
        "a request waited {slowest:?} with no process accepting:\n{new_log}"
    );
    assert!(
        old.log_text()
            .contains("no tables for the upgrading process")
            && new_log.contains("offered no tables"),
        "old:\n{}\nnew:\n{new_log}",
        old.log_text()
    );
    drop(new);
}

/// A revocation just after an upgrade is followed at once. The new process serves with the
/// credentials handed over while it reads the store, seconds with many credentials; it
/// subscribed to the change messages only after that read, and a message published during it
/// was lost until a second read (the one owed to the subscription) ended: twice the read's time.
#[test]
fn a_revocation_during_the_first_read_after_an_upgrade_is_followed_at_once() {
    let b = bulk_upgrade(None, "");
    let BulkUpgrade {
        redis,
        old,
        port,
        admin_port,
        ..
    } = &b;
    let port = *port;
    std::thread::sleep(PAST_QUIET);
    let new = b.upgrade();
    let new_log = || b.new_log();
    let reads = || full_loads(*admin_port);
    // Revoked while the new process's read of the store runs, some credentials after the
    // read passed them: each followed at once (within half the old process's read of the
    // same store), and none brought back by the read's swap.
    let logs = || format!("{}\nnew:\n{}", old.log_text(), new_log());
    let mut revoked = vec![("kargo-ka-id".to_string(), "kargo-ka-secret")];
    support::redis::revoke_and_see_it_followed(redis, port, "kargo-ka-id", "kargo-ka-secret", logs);
    while reads() < 1.0 {
        let id = format!("bulk-{}-{}", revoked.len() * 7 % 200, revoked.len());
        support::redis::revoke_and_see_it_followed(redis, port, &id, "s", logs);
        revoked.push((id, "s"));
        assert!(revoked.len() < 1000, "the read did not end:\n{}", new_log());
        std::thread::sleep(Duration::from_millis(100));
    }
    for (id, secret) in &revoked {
        let auth = format!("apiKey {id}:{secret}");
        let status = get(port, "GET", "/wmts/1", &[("Authorization", auth.as_str())]).status;
        assert_eq!(status, 401, "{id} after the read:\n{}", new_log());
    }
    drop(new);
}

/// A revocation published while an upgrade takes over is followed by the new process at once.
/// It took the old process's tables and then subscribed to the change messages: what was
/// published between the two (here, a store slow to answer the new process's connections:
/// 400 ms) worked on the new process until its first read of the store ended, seconds with
/// many credentials. Now it subscribes before it takes the tables. And the old process
/// follows what it was told of before it hands them over: here the store's messages reach it
/// late ([`OLD_LAG_MS`]), and those published that long before the new process had subscribed
/// were in neither. (The store tells of the keys written too, and half the
/// revocations come that way alone: the old process catches up on both subscriptions.)
#[test]
fn a_revocation_while_an_upgrade_takes_over_is_followed_at_once() {
    let old_lag = Arc::new(AtomicU64::new(0));
    let b = bulk_upgrade(Some(&old_lag), "KA");
    let BulkUpgrade {
        redis,
        dir,
        port,
        admin_port,
        ..
    } = &b;
    let port = *port;
    // The old process's read of the store after its subscriptions over (until then, a change
    // published before them may be missing from its tables: it says so as it hands them over).
    let deadline = Instant::now() + Duration::from_secs(60);
    while b.old.metric("tollgate_consumer_cache_full_loads_total") < 2.0 {
        assert!(Instant::now() < deadline, "{}", b.old.log_text());
        std::thread::sleep(Duration::from_millis(100));
    }
    // The new process's store behind a relay that holds each new connection 400 ms.
    through_relay(
        dir,
        redis.port,
        Duration::from_millis(400),
        Arc::default(),
        b"SUBSCRIBE",
    );
    std::thread::sleep(PAST_QUIET);
    old_lag.store(OLD_LAG_MS, Ordering::Relaxed);
    let new_log = || b.new_log();
    // Revocations every 30 ms from before the upgrade until the new process serves: every
    // other one as tollgate makes them (the change, then its message), the others as another
    // program does (the change alone, told by the keyspace notifications).
    let serving = std::sync::atomic::AtomicBool::new(false);
    let revoked = std::thread::scope(|s| {
        let revoker = s.spawn(|| {
            let mut revoked = Vec::new();
            while !serving.load(Ordering::Relaxed) {
                let id = format!("bulk-{}-{}", revoked.len() * 7 % 200, revoked.len());
                if revoked.len() % 2 == 0 {
                    redis.revoke_key_auth(&id);
                } else {
                    redis.hset(&format!("EG-key-auth:{id}"), "isActive", "false");
                }
                revoked.push(id);
                std::thread::sleep(Duration::from_millis(30));
            }
            revoked
        });
        std::thread::sleep(Duration::from_millis(300));
        let new = b.upgrade();
        serving.store(true, Ordering::Relaxed);
        (revoker.join().expect("revocations"), new)
    });
    let (revoked, new) = revoked;
    // Each refused by the new process within a second, long before its read of the store
    // ends.
    for id in &revoked {
        let auth = format!("apiKey {id}:s");
        let deadline = Instant::now() + Duration::from_secs(1);
        while get(port, "GET", "/wmts/1", &[("Authorization", auth.as_str())]).status != 401 {
            assert!(
                Instant::now() < deadline,
                "{id} (of {} revoked during the upgrade) still works on the new process:\n{}",
                revoked.len(),
                new_log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    assert_eq!(
        full_loads(*admin_port),
        0.0,
        "the new process's read ended before the checks: they tell nothing\n{}",
        new_log()
    );
    // The old process followed all it was told of, in time.
    let old_log = b.old.log_text();
    assert!(
        old_log.contains("credentials handed to the upgraded process")
            && !old_log.contains("not followed within")
            && !old_log.contains("may miss"),
        "{old_log}"
    );
    drop(new);
}

/// How late the store's messages reach the old process in the test of an upgrade's catch-up:
/// longer than the time from the new process's subscriptions to its taking the tables (a few
/// hundred ms: 150 ms told nothing, 450 ms a missing catch-up one run of two), short enough
/// for two pings in a row (the catch-up's behind a heartbeat's) within the old process's 3 s
/// for it.
const OLD_LAG_MS: u64 = 600;

/// Redis with 200,000 credentials more than Kargo's (a read of it takes seconds), a gateway
/// serving from it with an upgrade socket, and its config moved to ports of their own for the
/// new process of an upgrade: what answers there is the new process alone, from the moment it
/// serves (the old one keeps accepting on its ports for a few seconds).
struct BulkUpgrade {
    redis: support::redis::RedisServer,
    _up: PyUpstream,
    dir: ConfigDir,
    sock: String,
    old: GatewayProcess,
    port: u16,
    admin_port: u16,
}

impl BulkUpgrade {
    /// Upgrades to a new process, then stops the old one, once the new one serves (it
    /// installed the tables handed over: seconds for 200,000 credentials in a debug build on a
    /// busy machine).
    fn upgrade(&self) -> Reaped {
        let new = start_upgrade(&self.dir, &self.old, &self.sock, &[], &[]);
        std::thread::sleep(Duration::from_millis(500));
        self.old.signal("QUIT");
        let key = [("Authorization", "apiKey kargo-ka-id:kargo-ka-secret")];
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err()
            || get(self.port, "GET", "/wmts/1", &key).status != 200
        {
            assert!(
                Instant::now() < deadline,
                "the new process:\n{}",
                self.new_log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(
            self.new_log()
                .contains("credentials taken from the process upgraded"),
            "{}",
            self.new_log()
        );
        new
    }

    fn new_log(&self) -> String {
        std::fs::read_to_string(self.dir.path.join("new.log")).unwrap_or_default()
    }
}

/// `old_lag`: the old process reaches its store through a [`relay`] with this lag (the new
/// one reaches it directly); `keyspace`: the store's `notify-keyspace-events`.
fn bulk_upgrade(old_lag: Option<&Arc<AtomicU64>>, keyspace: &str) -> BulkUpgrade {
    let (redis, up, dir) = keyed_on_redis();
    redis.add_bulk_key_auth(200, "7107c894-3da0-4369-b5ac-913d8700cc6c");
    redis.notify_keyspace(keyspace);
    let sock = dir.path.join("upgrade.sock").display().to_string();
    let system = old_lag
        .map(|lag| through_relay(&dir, redis.port, Duration::ZERO, lag.clone(), b"SUBSCRIBE"));
    let old = GatewayProcess::start_with(&dir, &["--upgrade-sock", &sock], &[]);
    if let Some(system) = system {
        save(&dir, "system.config.yml", &system);
    }
    let key = [("Authorization", "apiKey kargo-ka-id:kargo-ka-secret")];
    // (A read past the start's 10 s wait on a busy machine: the credential is looked up
    // meanwhile, and the tables are offered to an upgrade once the read ended.)
    let deadline = Instant::now() + Duration::from_secs(60);
    while get(old.port, "GET", "/wmts/1", &key).status != 200
        || !old.log_text().contains("credentials loaded")
    {
        assert!(Instant::now() < deadline, "{}", old.log_text());
        std::thread::sleep(Duration::from_millis(100));
    }
    let (port, admin_port) = (support::free_port(), support::free_port());
    let yml = std::fs::read_to_string(dir.path.join("gateway.config.yml")).expect("config");
    let moved = yml
        .replace("${PORT}", &port.to_string())
        .replace("${ADMIN_PORT}", &admin_port.to_string());
    save(&dir, "gateway.config.yml", &moved);
    BulkUpgrade {
        redis,
        _up: up,
        dir,
        sock,
        old,
        port,
        admin_port,
    }
}

/// The full reads of the store the gateway whose Admin API is on `admin_port` made.
fn full_loads(admin_port: u16) -> f64 {
    get(admin_port, "GET", "/metrics", &[("Host", "127.0.0.1")])
        .text()
        .lines()
        .find_map(|l| {
            l.strip_prefix("tollgate_consumer_cache_full_loads_total ")?
                .trim()
                .parse::<f64>()
                .ok()
        })
        .unwrap_or(0.0)
}

/// Points the store of the config in `dir` at a new [`relay`] to Redis on `redis_port`; the
/// system file as it was.
fn through_relay(
    dir: &ConfigDir,
    redis_port: u16,
    hold: Duration,
    lag: Arc<AtomicU64>,
    lags: &'static [u8],
) -> String {
    let relay_port = relay(redis_port, hold, lag, lags);
    let system = std::fs::read_to_string(dir.path.join("system.config.yml")).expect("system");
    let relayed = system.replace(
        &format!("port: {redis_port}"),
        &format!("port: {relay_port}"),
    );
    assert_ne!(relayed, system);
    save(dir, "system.config.yml", &relayed);
    system
}

/// A TCP relay to the port `to` on loopback that holds each connection for `hold` before it
/// connects it (a store slow to answer a new connection), and passes on what the server sends
/// on a connection the command `lags` was sent on `lag` milliseconds after it came (with
/// `SUBSCRIBE`, the store's messages late, its answers to reads not; `lag` changed while it
/// runs). Its port.
fn relay(to: u16, hold: Duration, lag: Arc<AtomicU64>, lags: &'static [u8]) -> u16 {
    use std::io::{Read, Write};
    use std::net::{Shutdown, TcpListener, TcpStream};
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind the relay");
    let port = listener.local_addr().expect("relay address").port();
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(client) = client else { continue };
            let lag = lag.clone();
            std::thread::spawn(move || {
                std::thread::sleep(hold);
                let Ok(server) = TcpStream::connect(("127.0.0.1", to)) else {
                    return;
                };
                let (Ok(mut from_client), Ok(mut to_server), Ok(mut from_server)) =
                    (client.try_clone(), server.try_clone(), server.try_clone())
                else {
                    return;
                };
                // (A connection that `lags` was sent on: `SUBSCRIBE` for one that subscribes, or
                // `PSUBSCRIBE`; `SCAN` for the one a full read of the store goes on.)
                let subscribes = Arc::new(std::sync::atomic::AtomicBool::new(false));
                let subscriber = subscribes.clone();
                let up = std::thread::spawn(move || {
                    let mut buf = vec![0u8; 64 * 1024];
                    while let Ok(n @ 1..) = from_client.read(&mut buf) {
                        if buf[..n].windows(lags.len()).any(|w| w == lags) {
                            subscriber.store(true, Ordering::Relaxed);
                        }
                        if to_server.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    let _ = to_server.shutdown(Shutdown::Write);
                });
                // What the server sent, with when it came, given on by this thread when due.
                let (came, due) = std::sync::mpsc::channel::<(Instant, Vec<u8>)>();
                std::thread::spawn(move || {
                    let mut buf = vec![0u8; 64 * 1024];
                    while let Ok(n @ 1..) = from_server.read(&mut buf) {
                        if came.send((Instant::now(), buf[..n].to_vec())).is_err() {
                            break;
                        }
                    }
                });
                let mut to_client = client;
                for (at, bytes) in due {
                    let lag = if subscribes.load(Ordering::Relaxed) {
                        lag.load(Ordering::Relaxed)
                    } else {
                        0
                    };
                    let when = at + Duration::from_millis(lag);
                    std::thread::sleep(when.saturating_duration_since(Instant::now()));
                    if to_client.write_all(&bytes).is_err() {
                        break;
                    }
                }
                let _ = to_client.shutdown(Shutdown::Both);
                let _ = server.shutdown(Shutdown::Both);
                let _ = up.join();
            });
        }
    });
    port
}

/// An upgrade with `--populate` while Redis is down serves at once with the credentials taken
/// over, and applies the file once Redis answers, in the background (the new process had the
/// sockets and waited for Redis before serving: 60 s of nothing, then it left and nothing
/// served).
#[test]
fn an_upgrade_with_populate_while_redis_is_down_serves_and_applies_the_file_later() {
    let (mut redis, _up, dir) = keyed_on_redis();
    dir.write(
        "consumers.json",
        r#"{"scopes": ["wmts"], "users": {"filed": {"viewer": {"type": "key-auth", "keyId": "filed-key", "keySecret": "filed-secret", "scopes": ["wmts"]}}}}"#,
    );
    let file = dir.file("consumers.json");
    let sock = dir.path.join("upgrade.sock").display().to_string();
    let old = GatewayProcess::start_with(&dir, &["--upgrade-sock", &sock], &[]);
    let kept = [("Authorization", "apiKey kargo-ka-id:kargo-ka-secret")];
    let filed = [("Authorization", "apiKey filed-key:filed-secret")];
    assert_eq!(get(old.port, "GET", "/wmts/1", &kept).status, 200);
    let redis_port = redis.port;
    redis.stop();
    let mut new = start_upgrade(&dir, &old, &sock, &["--populate", &file], &[]);
    std::thread::sleep(Duration::from_secs(1));
    let new_log = || std::fs::read_to_string(dir.path.join("new.log")).unwrap_or_default();
    assert!(new.0.try_wait().expect("wait").is_none(), "{}", new_log());
    old.signal("QUIT");
    let mut old = old;
    wait_until_gone(&mut old);
    // Served by the new process, Redis still down.
    let r = get(old.port, "GET", "/wmts/1", &kept);
    assert_eq!(r.status, 200, "{}\nnew: {}", r.text(), new_log());
    assert!(new_log().contains("cannot be reached"), "{}", new_log());
    // Redis back: the file is applied (its key works; the users it does not list are gone).
    let redis = support::redis::RedisServer::start_on(redis_port);
    redis.load_dump(&support::redis::eg_fixture());
    let back = Instant::now();
    while get(old.port, "GET", "/wmts/1", &filed).status != 200 {
        assert!(
            back.elapsed() < Duration::from_secs(20),
            "the file was not applied once Redis answered:\n{}",
            new_log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(new_log().contains("populate"), "{}", new_log());
    assert!(new.0.try_wait().expect("wait").is_none(), "{}", new_log());
}

/// An upgrade whose `--populate` file is missing or is no consumers file leaves the old
/// process serving: the new one reads the file before it takes the sockets, and leaves with
/// the file's error (it read the file after taking them, and left with nothing serving).
#[test]
fn an_upgrade_whose_consumers_file_is_wrong_leaves_the_old_process_serving() {
    let up = PyUpstream::start("a", 5.0);
    let dir = ConfigDir::new(&gateway_yml("/tiles/*", &up.url(""), ""));
    dir.write("broken.json", "{ not json");
    dir.write(
        "unknown-scope.json",
        r#"{"scopes": [], "users": {"u": {"a": {"type": "key-auth", "scopes": ["nowhere"]}}}}"#,
    );
    let sock = dir.path.join("upgrade.sock").display().to_string();
    let old = GatewayProcess::start_with(&dir, &["--upgrade-sock", &sock], &[]);
    assert_eq!(get(old.port, "GET", "/tiles/x", &[]).status, 200);
    for (file, says) in [
        (
            dir.path.join("missing.json").display().to_string(),
            "cannot read",
        ),
        (dir.file("broken.json"), "broken.json"),
        (dir.file("unknown-scope.json"), "nowhere"),
    ] {
        let (left, new_log) = upgrade_as_systemd(&dir, &old, &sock, &["--populate", &file]);
        assert!(
            left.is_some_and(|s| s.code() == Some(2)),
            "{file}: the new process still runs a second after its start: {new_log}"
        );
        assert!(new_log.contains(says), "{file}: {new_log}");
    }
    // Past the five seconds an old process accepts for after handing its sockets over.
    std::thread::sleep(Duration::from_secs(6));
    assert_eq!(
        get(old.port, "GET", "/tiles/x", &[]).status,
        200,
        "the old process stopped serving"
    );
}

/// Sends `raw` on `s` and reads the answer's head (lowercased) and its body.
fn exchange(s: &mut std::net::TcpStream, raw: &str) -> String {
    use std::io::{Read, Write};
    s.write_all(raw.as_bytes()).expect("send");
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let head_end = loop {
        if let Some(at) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        let n = s.read(&mut buf).expect("read the answer");
        assert!(n > 0, "closed before the answer's head");
        got.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&got[..head_end]).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("a content-length");
    while got.len() < head_end + length {
        let n = s.read(&mut buf).expect("read the body");
        assert!(n > 0, "closed before the body's end");
        got.extend_from_slice(&buf[..n]);
    }
    head
}

/// Waits (20 s at most) for the process an upgrade took over from to end.
fn wait_until_gone(old: &mut GatewayProcess) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while old.child.try_wait().expect("wait").is_none() {
        assert!(Instant::now() < deadline, "the old process did not leave");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Two clients asking for `path` on `port`, each request on a connection of its own, 5 ms
/// apart.
fn closing_load(port: u16, path: &str) -> Load {
    Load::start(
        port,
        2,
        &format!("GET {path} HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"),
        Duration::from_millis(5),
    )
}

/// Asserts that a load ran (more than 50 requests) and that each of its requests was answered
/// 200; `context` follows a failure's message.
fn none_failed(report: &support::load::Report, context: &str) {
    assert!(report.count() > 50, "{}", report.count());
    let failed = report.failed(200);
    assert!(
        failed.is_empty(),
        "{} failed: {:?}\n{context}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
}

/// Starts the new process of a binary upgrade of `old` (same config and ports, `extra`
/// arguments), its log in `new.log`; stopped however the test ends: it holds the gateway's
/// ports.
fn start_upgrade(
    dir: &ConfigDir,
    old: &GatewayProcess,
    sock: &str,
    extra: &[&str],
    envs: &[(&str, &str)],
) -> Reaped {
    let log = std::fs::File::create(dir.path.join("new.log")).expect("log");
    let new = Command::new(binary())
        .args(["serve", "--config", &dir.path.display().to_string()])
        .args(["--upgrade", "--upgrade-sock", sock])
        .args(extra)
        .envs(envs.iter().copied())
        .env("PORT", old.port.to_string())
        .env("ADMIN_PORT", old.admin_port.to_string())
        .env("RUST_LOG", "info")
        .env_remove("EG_CONFIG_DIR")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start the new process");
    Reaped(new)
}

/// An upgrade as systemd's reload runs it: the new process started, `SIGQUIT` to the old one
/// only if the new one still runs a second later. How the new one ended (`None`: it runs) and
/// its log.
fn upgrade_as_systemd(
    dir: &ConfigDir,
    old: &GatewayProcess,
    sock: &str,
    extra: &[&str],
) -> (Option<std::process::ExitStatus>, String) {
    let mut new = start_upgrade(dir, old, sock, extra, &[]);
    std::thread::sleep(Duration::from_secs(1));
    let left = new.0.try_wait().expect("wait");
    if left.is_none() {
        old.signal("QUIT");
    }
    let log = std::fs::read_to_string(dir.path.join("new.log")).unwrap_or_default();
    (left, log)
}

/// A new process slow to start (here the disk tier's scan of 250,000 files, seconds in this
/// build, each removed: no secret names them; in production also a large consumer store's
/// first load) still takes the sockets over: it takes them before that work, not after (the
/// old process offers them for a few seconds only: after a slower start both processes were
/// gone).
#[test]
fn a_binary_upgrade_to_a_process_slow_to_start_keeps_the_gateway() {
    let up = PyUpstream::start("a", 5.0);
    let dir = ConfigDir::new(&gateway_yml("/tiles/*", &up.url(""), ""));
    let cache = dir.path.join("cache");
    for shard in 0..256 {
        std::fs::create_dir_all(cache.join(format!("{shard:02x}"))).expect("shard");
    }
    for i in 0..250_000u128 {
        let name = format!(
            "{:032x}",
            i.wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835)
        );
        std::fs::File::create(cache.join(&name[..2]).join(format!("{name}.obj")))
            .expect("a tile file");
    }
    let sock = dir.path.join("upgrade.sock").display().to_string();
    let old = GatewayProcess::start_with(&dir, &["--upgrade-sock", &sock], &[]);
    assert_eq!(get(old.port, "GET", "/tiles/x", &[]).status, 200);
    let cache_arg = cache.display().to_string();
    // What the new process tells systemd, in order.
    let notify_path = dir.path.join("notify.sock");
    let notify = std::os::unix::net::UnixDatagram::bind(&notify_path).expect("notify socket");
    notify
        .set_read_timeout(Some(Duration::from_secs(60)))
        .expect("timeout");
    let told = std::thread::spawn(move || {
        let mut messages = Vec::new();
        let mut buf = [0; 256];
        while let Ok(n) = notify.recv(&mut buf) {
            let m = String::from_utf8_lossy(&buf[..n]).into_owned();
            let ready = m.contains("READY=1");
            messages.push(m);
            if ready {
                break;
            }
        }
        messages
    });
    let notify_env = notify_path.display().to_string();
    let mut new = start_upgrade(
        &dir,
        &old,
        &sock,
        &["--cache-dir", &cache_arg],
        &[("NOTIFY_SOCKET", notify_env.as_str())],
    );
    std::thread::sleep(Duration::from_millis(500));
    old.signal("QUIT");
    // A reload asked of it while it starts (it holds the sockets by then) waits for it to
    // serve; it is not the end of the process.
    std::thread::sleep(Duration::from_secs(2));
    unsafe {
        libc::kill(new.0.id() as libc::pid_t, libc::SIGHUP);
    }
    let new_log = || std::fs::read_to_string(dir.path.join("new.log")).unwrap_or_default();
    let mut old = old;
    let deadline = Instant::now() + Duration::from_secs(60);
    while old.child.try_wait().expect("wait").is_none() {
        assert!(Instant::now() < deadline, "the old process did not leave");
        std::thread::sleep(Duration::from_millis(100));
    }
    // The old process is gone: served by the new one, once its start is done.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(
            new.0.try_wait().expect("wait").is_none(),
            "the new process ended: {}\nold: {}",
            new_log(),
            old.log_text()
        );
        if std::net::TcpStream::connect(("127.0.0.1", old.port)).is_ok()
            && get(old.port, "GET", "/tiles/x", &[]).status == 200
        {
            break;
        }
        assert!(Instant::now() < deadline, "not served again: {}", new_log());
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        new_log().contains("250000 tiles named by a key hash secret no longer there"),
        "{}",
        new_log()
    );
    // The main process from the moment it held the sockets, ready once it served.
    let pid = new.0.id();
    assert_eq!(
        told.join().expect("notify"),
        [
            format!("MAINPID={pid}\n"),
            format!("READY=1\nMAINPID={pid}\n")
        ]
    );
}

/// A config file written in place with a pause in the middle (a writer that flushes part of
/// it, then the rest) is loaded once it is closed, not as the part that came first: that part
/// parsed (the pipelines after the cut missing), and it was in force for the pause — its
/// routes answered 404.
#[test]
fn a_file_written_with_a_pause_is_loaded_once_closed() {
    written_with_a_pause(false);
}

/// A config file written in two steps, closed between them (`cat a > f; sleep 1; cat b >> f`,
/// a script that writes a section at a time), is loaded once quiet for 2 s, as EG's watcher
/// (chokidar's `awaitWriteFinish`) waits: the first part was in force for the pause, its
/// routes 404 and, cut before an endpoint's `scopes`, that endpoint open to every consumer.
#[test]
fn a_file_written_in_two_steps_is_loaded_once_whole() {
    written_with_a_pause(true);
}

/// Writes the config with a pause of 1.2 s in the middle (the file closed meanwhile when
/// `closed_between`): the part written first is never in force.
fn written_with_a_pause(closed_between: bool) {
    let up = PyUpstream::start("a", 5.0);
    let config = |names: &[&str]| {
        let mut yml = String::from(
            "http: {port: ${PORT}}\nadmin: {port: ${ADMIN_PORT}, host: 127.0.0.1}\napiEndpoints:\n",
        );
        for n in names {
            yml += &format!("  {n}: {{paths: '/{n}/*'}}\n");
        }
        yml += &format!(
            "serviceEndpoints:\n  up: {{url: '{}'}}\npolicies: [proxy]\npipelines:\n",
            up.url("")
        );
        for n in names {
            yml += &format!("  {n}:\n    apiEndpoints: [{n}]\n    policies:\n      - proxy: [{{action: {{serviceEndpoint: up}}}}]\n");
        }
        yml
    };
    let dir = ConfigDir::new(&config(&["one", "two"]));
    let gw = GatewayProcess::start(&dir);
    assert_eq!(get(gw.port, "GET", "/two/x", &[]).status, 200);
    // The watcher's own first look at the files (made once it watches) is over.
    std::thread::sleep(Duration::from_millis(1000));
    let new = config(&["one", "two", "three"]);
    let cut = new
        .find("  two:\n    apiEndpoints")
        .expect("the second pipeline");
    let writer = {
        let (path, new) = (dir.path.join("gateway.config.yml"), new.clone());
        std::thread::spawn(move || {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .truncate(true)
                .open(&path)
                .expect("open");
            f.write_all(&new.as_bytes()[..cut]).expect("write");
            f.flush().expect("flush");
            if closed_between {
                drop(f);
                std::thread::sleep(Duration::from_millis(1200));
                f = std::fs::OpenOptions::new()
                    .append(true)
                    .open(path)
                    .expect("open again");
            } else {
                std::thread::sleep(Duration::from_millis(1200));
            }
            f.write_all(&new.as_bytes()[cut..]).expect("write");
        })
    };
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(1500) {
        let r = get(gw.port, "GET", "/two/x", &[]);
        assert_eq!(
            r.status,
            200,
            "the part written first was put in force: {}",
            gw.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    writer.join().expect("writer");
    wait_for("the whole file", || {
        get(gw.port, "GET", "/three/x", &[]).status == 200
    });
    assert_eq!(get(gw.port, "GET", "/two/x", &[]).status, 200);
}

/// A SIGQUIT that comes before the upgrading process waits for the sockets (started a moment
/// after the signal, or slow to read a large config) waits for it, serving meanwhile, and the
/// sockets go to it once it waits: no request fails. Before, the sockets went to nobody after
/// five tries a second apart and the old process ended all the same: nothing was left
/// serving. A SIGHUP while the new process reads its config waits for its server instead of
/// ending it (SIGHUP's default action ended it, status 129).
#[test]
fn a_sigquit_before_the_upgrading_process_waits_for_it() {
    let up = PyUpstream::start("a", 5.0);
    // Large enough that reading it takes a moment (twenty thousand api endpoints).
    let mut yml = gateway_yml("/tiles/*", &up.url(""), "");
    let endpoints: String = (0..20_000)
        .map(|i| format!("  e{i}: {{paths: '/e{i}/*'}}\n"))
        .collect();
    yml = yml.replacen("apiEndpoints:\n", &format!("apiEndpoints:\n{endpoints}"), 1);
    let dir = ConfigDir::new(&yml);
    let sock = dir.path.join("upgrade.sock").display().to_string();
    let mut old = GatewayProcess::start_with(&dir, &["--upgrade-sock", &sock], &[]);
    let load = closing_load(old.port, "/tiles/x");
    std::thread::sleep(Duration::from_millis(300));
    old.signal("QUIT");
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        old.child.try_wait().expect("wait").is_none(),
        "{}",
        old.log_text()
    );
    assert_eq!(get(old.port, "GET", "/tiles/x", &[]).status, 200);
    assert!(
        old.log_text().contains("waiting for the upgrading process"),
        "{}",
        old.log_text()
    );
    let mut new = start_upgrade(&dir, &old, &sock, &[], &[]);
    std::thread::sleep(Duration::from_millis(300));
    // SAFETY: a signal to a child of this test.
    unsafe {
        libc::kill(new.0.id() as libc::pid_t, libc::SIGHUP);
    }
    let new_log = || std::fs::read_to_string(dir.path.join("new.log")).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(60);
    while old.child.try_wait().expect("wait").is_none() {
        assert!(
            Instant::now() < deadline,
            "the old process did not leave: {}",
            old.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(500));
    let report = load.stop();
    assert!(
        new.0.try_wait().expect("wait").is_none(),
        "the new process ended: {}",
        new_log()
    );
    assert_eq!(
        get(old.port, "GET", "/tiles/x", &[]).status,
        200,
        "{}",
        new_log()
    );
    none_failed(&report, "");
}

/// Two upgrades at once: a second upgrading process started while the first still waits for
/// the sockets is refused in one line (before, it put its own socket at the path; the first,
/// handed the sockets, removed the path when done, taking the second's file with it; the
/// SIGQUIT for the second upgrade then sent the sockets to a name that led nowhere, the
/// process ended all the same, and nothing served). The first goes on; an upgrade after it
/// works.
#[test]
fn a_second_upgrade_while_the_first_waits_is_refused() {
    let up = PyUpstream::start("a", 5.0);
    let dir = ConfigDir::new(&gateway_yml("/tiles/*", &up.url(""), ""));
    let sock = dir.path.join("upgrade.sock").display().to_string();
    let old = GatewayProcess::start_with(&dir, &["--upgrade-sock", &sock], &[]);
    let load = closing_load(old.port, "/tiles/x");
    let mut first = start_upgrade(&dir, &old, &sock, &[], &[]);
    wait_for("the first upgrading process waits", || {
        std::path::Path::new(&sock).exists()
    });
    let second = Command::new(binary())
        .args(["serve", "--config", &dir.path.display().to_string()])
        .args(["--upgrade", "--upgrade-sock", &sock])
        .env("PORT", old.port.to_string())
        .env("ADMIN_PORT", old.admin_port.to_string())
        .env_remove("EG_CONFIG_DIR")
        .output()
        .expect("the second upgrading process");
    let said = String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(1), "{said}");
    assert!(
        said.contains("another upgrading process waits") && said.lines().count() == 1,
        "{said}"
    );
    assert!(
        std::path::Path::new(&sock).exists(),
        "the first's socket was taken away"
    );
    old.signal("QUIT");
    let mut old = old;
    wait_until_gone(&mut old);
    assert!(
        first.0.try_wait().expect("wait").is_none(),
        "the first upgrade ended"
    );
    assert_eq!(get(old.port, "GET", "/tiles/x", &[]).status, 200);
    // And the next upgrade, from the first: handed over whole.
    let first_pid = first.0.id();
    let next = start_upgrade(&dir, &old, &sock, &[], &[]);
    wait_for("the next upgrading process waits", || {
        std::path::Path::new(&sock).exists()
    });
    // SAFETY: a signal to a child of this test.
    unsafe {
        libc::kill(first_pid as libc::pid_t, libc::SIGQUIT);
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while first.0.try_wait().expect("wait").is_none() {
        assert!(
            Instant::now() < deadline,
            "the first upgraded process did not leave"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut next = next;
    assert!(
        next.0.try_wait().expect("wait").is_none(),
        "the next upgrade ended"
    );
    assert_eq!(get(old.port, "GET", "/tiles/x", &[]).status, 200);
    let report = load.stop();
    none_failed(&report, "");
}

/// An upgrade to a process that cannot use its certificates leaves the old process serving:
/// `tollgate check` refuses them, and the new process leaves before it takes the sockets, so
/// the reload's guard (deploy/systemd: SIGQUIT only if the new process still runs a second
/// later) never stops the old one.
#[test]
fn an_upgrade_whose_certificates_cannot_be_used_leaves_the_old_process_serving() {
    let dir = support::tls::https_config(
        ConfigDir::empty(),
        "admin: {port: ${ADMIN_PORT}, host: 127.0.0.1}\napiEndpoints:\n  a: {paths: '/a'}\npolicies: [terminate]\npipelines:\n  p: {apiEndpoints: [a], policies: [{terminate: {action: {statusCode: 200, message: ok}}}]}\n",
    );
    let sock = dir.path.join("upgrade.sock").display().to_string();
    let old = GatewayProcess::start_with(&dir, &["--upgrade-sock", &sock], &[]);
    assert_eq!(get(old.admin_port, "GET", "/users", &[]).status, 200);
    // The certificate replaced by one that is none.
    dir.write(
        "tls.crt",
        "-----BEGIN CERTIFICATE-----\nbroken\n-----END CERTIFICATE-----\n",
    );
    let port = old.port.to_string();
    let checked = run_tollgate(
        &["check", "--config", &dir.path.display().to_string()],
        &[("PORT", &port)],
    );
    assert_eq!(checked.status.code(), Some(2));
    let said = String::from_utf8_lossy(&checked.stderr).into_owned();
    assert!(said.contains("cannot use the certificate"), "{said}");
    // Where the file names it.
    let at = format!("{}:", dir.file("gateway.config.yml"));
    assert!(
        said.lines()
            .any(|l| l.starts_with(&at) && l.contains("https certificate")),
        "{said}"
    );
    // The reload as systemd runs it.
    let (left, new_log) = upgrade_as_systemd(&dir, &old, &sock, &[]);
    assert!(
        left.is_some_and(|s| !s.success()),
        "the new process still runs a second after its start: {new_log}"
    );
    assert!(new_log.contains("cannot use the certificate"), "{new_log}");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        get(old.admin_port, "GET", "/users", &[]).status,
        200,
        "the old process stopped serving"
    );
}

/// An upgrade to a config that reads but does not compile (a pipeline naming a service
/// endpoint that is not there) leaves the old process serving: the new one says where the
/// config is wrong and leaves before it takes the sockets (taken, the old process stops
/// accepting five seconds later, and nothing listens once the new one has left).
#[test]
fn an_upgrade_to_a_config_that_does_not_compile_leaves_the_old_process_serving() {
    let good = "http: {port: ${PORT}}\nadmin: {port: ${ADMIN_PORT}, host: 127.0.0.1}\napiEndpoints:\n  a: {paths: '/a'}\npolicies: [terminate]\npipelines:\n  p: {apiEndpoints: [a], policies: [{terminate: {action: {statusCode: 200, message: ok}}}]}\n";
    let dir = ConfigDir::new(good);
    let sock = dir.path.join("upgrade.sock").display().to_string();
    let old = GatewayProcess::start_with(&dir, &["--upgrade-sock", &sock], &[]);
    assert_eq!(get(old.port, "GET", "/a", &[]).status, 200);
    let broken = "http: {port: ${PORT}}\nadmin: {port: ${ADMIN_PORT}, host: 127.0.0.1}\napiEndpoints:\n  a: {paths: '/a'}\npolicies: [proxy]\npipelines:\n  p: {apiEndpoints: [a], policies: [{proxy: {action: {serviceEndpoint: nowhere}}}]}\n";
    dir.write("gateway.config.yml", broken);
    let (left, new_log) = upgrade_as_systemd(&dir, &old, &sock, &[]);
    assert!(
        left.is_some_and(|s| s.code() == Some(2)),
        "the new process still runs a second after its start: {new_log}"
    );
    let at = format!("{}:", dir.file("gateway.config.yml"));
    assert!(
        new_log
            .lines()
            .any(|l| l.starts_with(&at) && l.contains("nowhere")),
        "{new_log}"
    );
    // Past the five seconds an old process accepts for after handing its sockets over.
    std::thread::sleep(Duration::from_secs(6));
    assert_eq!(
        get(old.port, "GET", "/a", &[]).status,
        200,
        "the old process stopped serving"
    );
}

/// An upgrade whose new process could not serve once it had the sockets — a port changed to
/// one another program listens on, a tile cache directory that is a file — leaves the old
/// process serving: the new one binds the addresses the old one does not listen on, and
/// writes in the disk tier's directory, before it takes the sockets. (It took them, then
/// failed and left; the old process stopped accepting five seconds later: nothing served.)
#[test]
fn an_upgrade_that_could_not_serve_leaves_the_old_process_serving() {
    let yml = |port: &str| {
        format!("http: {{port: {port}}}\nadmin: {{port: ${{ADMIN_PORT}}, host: 127.0.0.1}}\napiEndpoints:\n  a: {{paths: '/a'}}\npolicies: [terminate]\npipelines:\n  p: {{apiEndpoints: [a], policies: [{{terminate: {{action: {{statusCode: 200, message: ok}}}}}}]}}\n")
    };
    let taken = std::net::TcpListener::bind("0.0.0.0:0").expect("another program's port");
    let taken_port = taken.local_addr().expect("addr").port().to_string();
    let not_a_dir = ConfigDir::empty();
    not_a_dir.write("cache", "a file");
    let cache_arg = not_a_dir.path.join("cache").display().to_string();
    for (case, new_yml, extra) in [
        ("a port taken", yml(&taken_port), vec![]),
        (
            "a cache directory that is a file",
            yml("${PORT}"),
            vec!["--cache-dir", cache_arg.as_str()],
        ),
    ] {
        let dir = ConfigDir::new(&yml("${PORT}"));
        let sock = dir.path.join("upgrade.sock").display().to_string();
        let old = GatewayProcess::start_with(&dir, &["--upgrade-sock", &sock], &[]);
        assert_eq!(get(old.port, "GET", "/a", &[]).status, 200, "{case}");
        dir.write("gateway.config.yml", &new_yml);
        let (left, new_log) = upgrade_as_systemd(&dir, &old, &sock, &extra);
        assert!(
            left.is_some_and(|s| !s.success()),
            "{case}: the new process still runs a second after its start: {new_log}"
        );
        assert!(
            new_log.contains("cannot listen on") || new_log.contains("tile cache directory"),
            "{case}: {new_log}"
        );
        // Past the five seconds an old process accepts for after handing its sockets over.
        std::thread::sleep(Duration::from_secs(6));
        assert_eq!(
            get(old.port, "GET", "/a", &[]).status,
            200,
            "{case}: the old process stopped serving"
        );
    }
    drop(taken);
}

/// A config file that is a link to a file kept elsewhere is reloaded when that file is edited
/// (in place, or saved by rename): the edit changes no entry of the config directory, and went
/// unnoticed until a SIGHUP.
#[test]
fn a_config_file_linked_from_elsewhere_reloads_when_edited_there() {
    let up = PyUpstream::start("a", 5.0);
    // Kept in a directory of its own, away from the config directory and its parent.
    let store = ConfigDir::empty();
    std::fs::create_dir_all(store.path.join("kept/here")).expect("mkdir");
    let elsewhere = ConfigDir {
        path: store.path.join("kept/here"),
    };
    elsewhere.write("gw.yml", &gateway_yml("/one/*", &up.url(""), ""));
    let dir = ConfigDir::empty();
    std::os::unix::fs::symlink(
        elsewhere.path.join("gw.yml"),
        dir.path.join("gateway.config.yml"),
    )
    .expect("link");
    let gw = GatewayProcess::start(&dir);
    assert_eq!(get(gw.port, "GET", "/one/x", &[]).status, 200);
    // The watcher's own first look at the files (made once it watches) is over.
    std::thread::sleep(Duration::from_millis(1500));
    // In place.
    std::fs::write(
        elsewhere.path.join("gw.yml"),
        gateway_yml("/two/*", &up.url(""), ""),
    )
    .expect("write");
    wait_for("the edit in place", || {
        get(gw.port, "GET", "/two/x", &[]).status == 200
    });
    // Saved by rename.
    save(
        &elsewhere,
        "gw.yml",
        &gateway_yml("/three/*", &up.url(""), ""),
    );
    wait_for("the save by rename", || {
        get(gw.port, "GET", "/three/x", &[]).status == 200
    });
}

/// `--upgrade-sock` is tried before Pingora uses it: for an upgrading process, a file that is
/// no socket stays where it is (it was removed), a path no socket can be made at is one line
/// and exit 1 (Pingora panicked); so is an open-files limit too low for the worker threads'
/// runtimes (Pingora panicked building them, or after the start said it listened).
#[test]
fn unusable_upgrade_socket_paths_and_too_few_descriptors_are_refused_at_start() {
    let dir = ConfigDir::new("http: {port: ${PORT}}\napiEndpoints: {}\n");
    let precious = dir.path.join("precious.txt");
    std::fs::write(&precious, "data").expect("write");
    let precious = precious.display().to_string();
    let long = format!("{}/{}.sock", dir.path.display(), "x".repeat(110));
    let config_dir = dir.path.display().to_string();
    let port = support::free_port().to_string();
    let serve = |limit: &str, args: &[&str]| {
        // (Bounded: a start that went on would serve until the deadline.)
        let out = Command::new("bash")
            .arg("-c")
            .arg(format!("ulimit -n {limit} && exec timeout 20 \"$@\""))
            .arg("serve")
            .args([binary(), "serve", "--config", &config_dir])
            .args(args)
            .env("PORT", &port)
            .env_remove("EG_CONFIG_DIR")
            .output()
            .expect("run tollgate serve");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    for (limit, args, says) in [
        (
            "4096",
            vec!["-u", "--upgrade-sock", precious.as_str()],
            "precious.txt: there is something other than a socket there",
        ),
        (
            "4096",
            vec!["-u", "--upgrade-sock", config_dir.as_str()],
            "there is something other than a socket there",
        ),
        (
            "4096",
            vec!["-u", "--upgrade-sock", "/nonexistent-tollgate-dir/up.sock"],
            "its directory /nonexistent-tollgate-dir does not exist",
        ),
        (
            "4096",
            vec!["-u", "--upgrade-sock", long.as_str()],
            "longer than a socket's path may be",
        ),
        (
            "40",
            vec!["--threads", "4"],
            "the open-files limit (40) is too low for 4 worker threads",
        ),
    ] {
        let (code, said) = serve(limit, &args);
        assert_eq!(code, Some(1), "{args:?}\n{said}");
        assert!(
            said.contains(says) && !said.contains("panicked"),
            "{args:?}\n{said}"
        );
    }
    assert_eq!(std::fs::read_to_string(&precious).expect("kept"), "data");
    // Not given, the threads are what the limit holds (the start then ends at its port,
    // which is taken: no run until the deadline).
    let taken = std::net::TcpListener::bind(("0.0.0.0", 0)).expect("bind");
    let port = taken.local_addr().expect("addr").port().to_string();
    let out = Command::new("bash")
        .arg("-c")
        .arg("ulimit -n 75 && exec timeout 20 \"$@\"")
        .arg("serve")
        .args([binary(), "serve", "--config", &config_dir])
        .env("PORT", &port)
        .env_remove("EG_CONFIG_DIR")
        .output()
        .expect("run tollgate serve");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("the open-files limit (75) holds 1 worker threads")
            && said.contains("cannot listen"),
        "{said}"
    );
}
