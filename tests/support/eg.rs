//! Express Gateway 1.16.11 itself (installed by scripts/install-test-servers.sh into target/eg), started
//! on loopback against a given Redis.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::gateway::{free_port, ConfigDir};

pub struct ExpressGateway {
    pub port: u16,
    pub admin_port: u16,
    child: Child,
    pub dir: ConfigDir,
}

/// Where EG's package is: `TOLLGATE_EG_DIR`, else target/eg (scripts/install-test-servers.sh).
pub fn package_dir() -> PathBuf {
    std::env::var_os("TOLLGATE_EG_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/eg/node_modules/express-gateway")
        })
}

impl ExpressGateway {
    /// Starts EG with `pipelines_yml` (apiEndpoints, serviceEndpoints, policies and pipelines
    /// sections) on Redis at `redis_port`, namespace EG.
    pub fn start(pipelines_yml: &str, redis_port: u16) -> ExpressGateway {
        let pkg = package_dir();
        assert!(
            pkg.join("lib/index.js").is_file(),
            "Express Gateway is not installed at {}: run scripts/install-test-servers.sh (scripts/test.sh does) or set TOLLGATE_EG_DIR",
            pkg.display()
        );
        let port = free_port();
        let admin_port = free_port();
        let dir = ConfigDir::empty();
        dir.write(
            "gateway.config.yml",
            &format!("http:\n  hostname: 127.0.0.1\n  port: {port}\nadmin:\n  host: 127.0.0.1\n  port: {admin_port}\n{pipelines_yml}"),
        );
        dir.write(
            "system.config.yml",
            &format!(
                "db:\n  redis:\n    emulate: false\n    host: 127.0.0.1\n    port: {redis_port}\n    namespace: EG\ncli:\n  url: 'http://127.0.0.1:{admin_port}'\ncrypto:\n  cipherKey: interopCipherKey\n  algorithm: aes256\n  saltRounds: 4\nsession:\n  secret: interop\n  resave: false\n  saveUninitialized: false\naccessTokens:\n  timeToExpiry: 7200000\nrefreshTokens:\n  timeToExpiry: 7200000\nauthorizationCodes:\n  timeToExpiry: 300000\n"
            ),
        );
        std::fs::create_dir_all(dir.path.join("models")).expect("models dir");
        for m in ["users.json", "applications.json", "credentials.json"] {
            std::fs::copy(
                pkg.join("lib/config/models").join(m),
                dir.path.join("models").join(m),
            )
            .expect("copy model");
        }
        let log = std::fs::File::create(dir.path.join("eg.log")).expect("log");
        let child = Command::new("node")
            .arg(pkg.join("lib/index.js"))
            .env("EG_CONFIG_DIR", &dir.path)
            .env("NODE_ENV", "production")
            .env_remove("http_proxy")
            .env_remove("HTTP_PROXY")
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .expect("node must be installed (scripts/install-test-servers.sh installs it)");
        let mut eg = ExpressGateway {
            port,
            admin_port,
            child,
            dir,
        };
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(60) {
            if let Ok(Some(status)) = eg.child.try_wait() {
                panic!("Express Gateway exited ({status}): {}", eg.log());
            }
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
                && std::net::TcpStream::connect(("127.0.0.1", admin_port)).is_ok()
            {
                return eg;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("Express Gateway did not start: {}", eg.log());
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path.join("eg.log")).unwrap_or_default()
    }
}

impl Drop for ExpressGateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
