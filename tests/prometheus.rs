//! A real Prometheus (Debian's `prometheus`) scrapes a real tollgate under traffic: every query
//! of the shipped Grafana dashboard (deploy/grafana/queries.txt) and every query the README
//! documents return series, and the shipped rules pass `promtool check` and `promtool test`.

mod support;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::upstream::PyUpstream;
use support::{free_port, get, send_json, ConfigDir, GatewayProcess};

fn repo(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(path)
}

struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn config(up: &PyUpstream) -> String {
    format!(
        "http: {{port: ${{PORT}}}}\nadmin: {{port: ${{ADMIN_PORT}}, host: 127.0.0.1}}\napiEndpoints:\n  wmts: {{paths: '/wmts/*'}}\n  dead: {{paths: '/dead/*'}}\nserviceEndpoints:\n  up: {{url: '{}'}}\n  dead: {{url: 'http://127.0.0.1:1'}}\npolicies: [metrics, cache, proxy]\npipelines:\n  wmts:\n    apiEndpoints: [wmts]\n    policies:\n      - metrics:\n      - cache: [{{action: {{ttl: 600}}}}]\n      - proxy: [{{action: {{serviceEndpoint: up}}}}]\n  dead:\n    apiEndpoints: [dead]\n    policies:\n      - metrics:\n      - proxy: [{{action: {{serviceEndpoint: dead}}}}]\n",
        up.url("")
    )
}

/// The PromQL queries of the README's Metrics section.
fn readme_queries() -> Vec<String> {
    let readme = std::fs::read_to_string(repo("README.md")).expect("README");
    let section = readme
        .split("### Metrics")
        .nth(1)
        .and_then(|s| s.split("```").nth(1))
        .expect("a code block of queries in the Metrics section");
    // A query may continue on the next line (an indented `/ ...`); comments go.
    let mut queries: Vec<String> = Vec::new();
    for line in section.lines() {
        let code = line.split("  #").next().unwrap_or("").trim_end();
        if code.trim().is_empty() {
            continue;
        }
        if line.starts_with(' ') {
            if let Some(last) = queries.last_mut() {
                last.push(' ');
                last.push_str(code.trim());
                continue;
            }
        }
        queries.push(code.trim().to_string());
    }
    queries
}

#[test]
fn a_real_prometheus_answers_every_documented_query() {
    for tool in ["prometheus", "promtool"] {
        assert!(
            Command::new(tool).arg("--version").output().is_ok(),
            "{tool} is not installed (scripts/test.sh installs Debian's prometheus)"
        );
    }
    // The shipped rules: checked and unit-tested.
    let check = Command::new("bash")
        .arg(repo("deploy/prometheus/check.sh"))
        .output()
        .expect("run check.sh");
    assert!(
        check.status.success(),
        "{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );

    let up = PyUpstream::start("tiles", 5.0);
    let dir = ConfigDir::new(&config(&up));
    let gw = GatewayProcess::start(&dir);
    // A reload that fails, so the config series have both results.
    let good = std::fs::read_to_string(dir.path.join("gateway.config.yml")).expect("config");
    std::fs::write(dir.path.join("gateway.config.yml"), "apiEndpoints: [").expect("write");
    assert_eq!(
        send_json(gw.admin_port, "POST", "/tollgate/reload", "").status,
        422
    );
    std::fs::write(dir.path.join("gateway.config.yml"), &good).expect("write");
    assert_eq!(
        send_json(gw.admin_port, "POST", "/tollgate/reload", "").status,
        200
    );

    // Traffic all along: hits, misses, fills others wait on, upstream failures, unrouted.
    let stop = Arc::new(AtomicBool::new(false));
    let port = gw.port;
    let traffic = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                get(port, "GET", &format!("/wmts/tile-{}.png", i % 5), &[]);
                if i.is_multiple_of(10) {
                    get(port, "GET", "/dead/x", &[]);
                    get(port, "GET", "/nowhere", &[]);
                }
                if i.is_multiple_of(50) {
                    let burst: Vec<_> = (0..8)
                        .map(|_| {
                            let path = format!("/wmts/slow/200/burst-{i}.png");
                            std::thread::spawn(move || get(port, "GET", &path, &[]))
                        })
                        .collect();
                    for b in burst {
                        let _ = b.join();
                    }
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };

    let prom_port = free_port();
    let prom_dir = ConfigDir::empty();
    prom_dir.write(
        "prometheus.yml",
        &format!(
            "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\nrule_files: ['{}']\nscrape_configs:\n  - job_name: tollgate\n    static_configs: [{{targets: ['127.0.0.1:{}']}}]\n",
            repo("deploy/prometheus/rules.yml").display(),
            gw.admin_port
        ),
    );
    let prometheus = Running(
        Command::new("prometheus")
            .arg(format!("--config.file={}", prom_dir.file("prometheus.yml")))
            .arg(format!(
                "--storage.tsdb.path={}",
                prom_dir.path.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start prometheus"),
    );
    let query = |q: &str| -> serde_json::Value {
        let out = Command::new("curl")
            .args(["-s", "--max-time", "5"])
            .arg(format!("http://127.0.0.1:{prom_port}/api/v1/query"))
            .args(["--data-urlencode", &format!("query={q}")])
            .output()
            .expect("curl");
        serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
    };
    // Wait until Prometheus has a few scrapes of tollgate.
    let start = Instant::now();
    while query("count_over_time(up{job=\"tollgate\"}[1m])")["data"]["result"][0]["value"][1]
        .as_str()
        .and_then(|v| v.parse::<u32>().ok())
        .unwrap_or(0)
        < 6
    {
        assert!(
            start.elapsed() < Duration::from_secs(40),
            "Prometheus did not scrape tollgate"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let dashboard = std::fs::read_to_string(repo("deploy/grafana/queries.txt")).expect("queries");
    let mut queries: Vec<String> = dashboard
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect();
    let documented = readme_queries();
    assert!(documented.len() >= 4, "{documented:?}");
    queries.extend(documented);
    let mut empty = Vec::new();
    for q in &queries {
        let v = query(q);
        assert_eq!(v["status"], "success", "{q}: {v}");
        if v["data"]["result"].as_array().is_none_or(|r| r.is_empty()) {
            empty.push(q.clone());
        }
    }
    stop.store(true, Ordering::Relaxed);
    let _ = traffic.join();
    drop(prometheus);
    assert!(empty.is_empty(), "queries without series: {empty:#?}");
}
