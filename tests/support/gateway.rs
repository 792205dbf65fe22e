//! Config directories in temp folders and the real `tollgate` binary running on free ports.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// A port for a process a test starts, which binds it later.
///
/// The port comes from below the kernel's ephemeral range, walked by a counter from an offset
/// taken from this test binary's pid: the kernel never hands those ports to `bind(0)` or to an
/// outgoing connection, and two tests of one binary never get the same one. A port taken from
/// `bind(0)` and released could be handed to a concurrent test (or be bound by another process)
/// before the process meant to listen on it did, and a readiness check would then talk to the
/// wrong listener.
pub fn free_port() -> u16 {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let Some((low, high)) = reserved_range() else {
        return TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
    };
    let span = usize::from(high - low);
    let offset = (std::process::id() as usize).wrapping_mul(7919) % span;
    for _ in 0..span {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = low + ((offset + n) % span) as u16;
        let bindable = |host: &str| TcpListener::bind((host, port)).is_ok();
        if bindable("0.0.0.0") && bindable("127.0.0.1") {
            return port;
        }
    }
    panic!("no free port in {low}..{high}");
}

/// Ports 10000 up to the start of the kernel's ephemeral range, when that leaves at least 2000.
fn reserved_range() -> Option<(u16, u16)> {
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    let ephemeral_low: u16 = range.split_whitespace().next()?.parse().ok()?;
    (ephemeral_low >= 12_000).then_some((10_000, ephemeral_low))
}

/// A config directory that is removed when dropped.
pub struct ConfigDir {
    pub path: PathBuf,
}

static DIRS: AtomicUsize = AtomicUsize::new(0);

impl ConfigDir {
    /// A directory holding `gateway.config.yml` and a minimal `system.config.yml`.
    pub fn new(gateway_yml: &str) -> ConfigDir {
        let dir = ConfigDir::empty();
        dir.write("gateway.config.yml", gateway_yml);
        dir.write("system.config.yml", "db:\n  redis:\n    emulate: true\n");
        dir
    }

    pub fn empty() -> ConfigDir {
        let n = DIRS.fetch_add(1, Ordering::SeqCst);
        let path = std::env::temp_dir().join(format!("tollgate-test-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create config dir");
        ConfigDir { path }
    }

    pub fn write(&self, name: &str, content: &str) {
        std::fs::write(self.path.join(name), content).expect("write config file");
    }

    pub fn file(&self, name: &str) -> String {
        self.path.join(name).display().to_string()
    }
}

impl Drop for ConfigDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_tollgate")
}

/// Runs `tollgate <args>` to completion.
pub fn run_tollgate(args: &[&str], envs: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(binary());
    cmd.args(args).env_remove("EG_CONFIG_DIR");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd.output().expect("run tollgate")
}

/// [`run_tollgate`] with `input` on its standard input.
pub fn run_tollgate_with_input(args: &[&str], envs: &[(&str, &str)], input: &str) -> Output {
    use std::io::Write;
    let mut cmd = Command::new(binary());
    cmd.args(args)
        .env_remove("EG_CONFIG_DIR")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("run tollgate");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("write stdin");
    child.wait_with_output().expect("run tollgate")
}

/// A running `tollgate serve`; killed when dropped.
pub struct GatewayProcess {
    pub child: Child,
    pub port: u16,
    pub admin_port: u16,
    pub log: PathBuf,
}

impl GatewayProcess {
    /// Starts the binary on `dir` (whose config reads `${PORT}` and `${ADMIN_PORT}`) and waits
    /// until it answers on the gateway port.
    pub fn start(dir: &ConfigDir) -> GatewayProcess {
        GatewayProcess::start_with(dir, &[], &[])
    }

    pub fn start_with(dir: &ConfigDir, args: &[&str], envs: &[(&str, &str)]) -> GatewayProcess {
        GatewayProcess::start_logging(dir, None, args, envs)
    }

    /// As [`GatewayProcess::start_with`], its log written to `log` (`None`: a file of its
    /// own in the config directory).
    pub fn start_logging(
        dir: &ConfigDir,
        log: Option<&std::path::Path>,
        args: &[&str],
        envs: &[(&str, &str)],
    ) -> GatewayProcess {
        let port = free_port();
        let admin_port = free_port();
        // One log per process: two gateways may share a config directory.
        let log = log.map_or_else(
            || dir.path.join(format!("tollgate-{port}.log")),
            std::path::Path::to_path_buf,
        );
        let log_file = std::fs::File::create(&log).expect("log file");
        let mut cmd = Command::new(binary());
        cmd.arg("serve")
            .arg("--config")
            .arg(&dir.path)
            .args(args)
            .env("PORT", port.to_string())
            .env("ADMIN_PORT", admin_port.to_string())
            // TOLLGATE_TEST_LOG: another level for every gateway a test starts (`debug`).
            .env(
                "RUST_LOG",
                std::env::var("TOLLGATE_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .env_remove("EG_CONFIG_DIR")
            .stdout(Stdio::null())
            .stderr(log_file);
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("start tollgate");
        let mut gw = GatewayProcess {
            child,
            port,
            admin_port,
            log,
        };
        // A config that opens the admin listener: wait for it as for the gateway's.
        let admin = ["gateway.config.yml", "gateway.config.json"]
            .iter()
            .any(|f| {
                std::fs::read_to_string(dir.path.join(f)).is_ok_and(|c| c.contains("${ADMIN_PORT}"))
            });
        gw.wait_ready(admin);
        gw
    }

    fn wait_ready(&mut self, admin: bool) {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(20) {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "tollgate exited with {status} before listening:\n{}",
                    self.log_text()
                );
            }
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                // The admin listener starts beside the gateway's; a config that does not name
                // `${ADMIN_PORT}` does not listen on it.
                let admin_wait = Instant::now();
                while admin && TcpStream::connect(("127.0.0.1", self.admin_port)).is_err() {
                    assert!(
                        admin_wait.elapsed() < Duration::from_secs(20),
                        "the admin API did not listen on {} within 20 s:\n{}",
                        self.admin_port,
                        self.log_text()
                    );
                    std::thread::sleep(Duration::from_millis(10));
                }
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "tollgate did not listen on {} within 20 s:\n{}",
            self.port,
            self.log_text()
        );
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends a signal (`TERM`, `INT`) to the process.
    pub fn signal(&self, sig: &str) {
        Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("kill");
    }

    pub fn path(&self) -> &Path {
        &self.log
    }

    /// The value of one series of the Admin API's `/metrics` (`name{labels}` as exposed, labels
    /// in their exposition order), or 0 when it is absent (a label value not met yet). Its
    /// family must be exposed: a misspelt name would read 0 for ever.
    pub fn metric(&self, series: &str) -> f64 {
        let text = super::get(self.admin_port, "GET", "/metrics", &[]).text();
        assert_family(&text, series);
        text.lines()
            .find_map(|l| {
                l.strip_prefix(series)?
                    .strip_prefix(' ')?
                    .trim()
                    .parse()
                    .ok()
            })
            .unwrap_or(0.0)
    }

    /// The sum of every series of a family (`tollgate_upstream_errors_total`: every kind).
    pub fn metric_sum(&self, family: &str) -> f64 {
        let text = super::get(self.admin_port, "GET", "/metrics", &[]).text();
        assert_family(&text, family);
        text.lines()
            .filter_map(|l| {
                let rest = l.strip_prefix(family)?;
                let value = match rest.strip_prefix('{') {
                    Some(labelled) => labelled.split_once("} ")?.1,
                    None => rest.strip_prefix(' ')?,
                };
                value.trim().parse::<f64>().ok()
            })
            .sum()
    }

    /// The value of a series once `done` holds for it, or its last value after 5 s: what a
    /// request changes is counted just after its answer is sent.
    pub fn metric_when(&self, series: &str, done: impl Fn(f64) -> bool) -> f64 {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let v = self.metric(series);
            if done(v) || Instant::now() >= deadline {
                return v;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Lines of the gateway's log at ERROR level.
    pub fn error_lines(&self) -> Vec<String> {
        self.log_text()
            .lines()
            .filter(|l| l.contains(" ERROR "))
            .map(str::to_string)
            .collect()
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        super::forget_run_files(self.child.id());
        // A failing test's gateway log goes with its directory: its end is kept in the
        // test's output, where a failure in CI can be read.
        if std::thread::panicking() {
            let text = self.log_text();
            let lines: Vec<&str> = text.lines().collect();
            let tail = &lines[lines.len().saturating_sub(LOG_TAIL)..];
            eprintln!(
                "--- the last {} lines of the gateway's log (port {}) ---\n{}",
                tail.len(),
                self.port,
                tail.join("\n")
            );
        }
    }
}

/// Lines of a gateway's log shown when its test fails.
const LOG_TAIL: usize = 80;

/// Panics unless the exposition `text` declares the family of `series` (a histogram's
/// `_bucket`, `_count` and `_sum` are its family's).
fn assert_family(text: &str, series: &str) {
    let name = series.split('{').next().unwrap_or(series);
    let declared = |family: &str| {
        text.lines().any(|l| {
            l.strip_prefix("# TYPE ")
                .and_then(|t| t.strip_prefix(family))
                .is_some_and(|t| t.starts_with(' '))
        })
    };
    let found = declared(name)
        || ["_bucket", "_count", "_sum"]
            .iter()
            .any(|s| name.strip_suffix(s).is_some_and(declared));
    assert!(found, "no metric family `{name}` is exposed");
}
