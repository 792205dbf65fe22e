//! A real `redis-server` per test, on a free port, saving to disk only when asked
//! ([`RedisServer::save`]); and EG's fixture loaded into it.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::gateway::free_port;

pub struct RedisServer {
    pub port: u16,
    /// Its TLS port, when it has one ([`RedisServer::start_tls`]).
    pub tls_port: Option<u16>,
    child: Child,
    /// Where [`RedisServer::save`] writes, and where a server started on the same port
    /// reads what was saved.
    dir: PathBuf,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        RedisServer::start_on(free_port())
    }

    /// A new server on a given port (a restart after [`RedisServer::stop`]), with what was
    /// last saved on that port, if anything.
    pub fn start_on(port: u16) -> RedisServer {
        RedisServer::start_with(port, None, &[])
    }

    /// A server that also speaks TLS on a port of its own with `cert` and `key` (PEM), and
    /// asks its clients for a certificate signed by `client_ca` (PEM): the tests look at its
    /// data on the plain port.
    pub fn start_tls(cert: &str, key: &str, client_ca: &str) -> RedisServer {
        let port = free_port();
        let tls_port = free_port();
        let dir = RedisServer::dir_for(port);
        let file = |name: &str, pem: &str| {
            let path = dir.join(name);
            std::fs::write(&path, pem).expect("certificate file");
            path.display().to_string()
        };
        let args = [
            "--tls-port".to_string(),
            tls_port.to_string(),
            "--tls-cert-file".into(),
            file("server.pem", cert),
            "--tls-key-file".into(),
            file("server.key", key),
            "--tls-ca-cert-file".into(),
            file("clients.pem", client_ca),
            "--tls-auth-clients".into(),
            "yes".into(),
        ];
        RedisServer::start_with(port, Some(tls_port), &args)
    }

    fn dir_for(port: u16) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("tollgate-test-redis-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("redis directory");
        dir
    }

    fn start_with(port: u16, tls_port: Option<u16>, extra: &[String]) -> RedisServer {
        let dir = RedisServer::dir_for(port);
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                &dir.display().to_string(),
            ])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (scripts/test.sh installs it)");
        let server = RedisServer {
            port,
            tls_port,
            child,
            dir,
        };
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            if let Ok(mut c) = server.client().get_connection() {
                if redis::cmd("PING").query::<String>(&mut c).is_ok() {
                    return server;
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("redis-server did not start on {port}");
    }

    pub fn client(&self) -> redis::Client {
        redis::Client::open(format!("redis://127.0.0.1:{}/", self.port)).expect("redis url")
    }

    pub fn conn(&self) -> redis::Connection {
        self.client().get_connection().expect("redis connection")
    }

    /// Loads a dump (`[{key, type, value}]`, as in tests/fixtures) into the server.
    pub fn load_dump(&self, dump: &serde_json::Value) {
        let mut c = self.conn();
        for entry in dump.as_array().expect("dump array") {
            let key = entry["key"].as_str().expect("key");
            match entry["type"].as_str() {
                Some("hash") => {
                    let mut cmd = redis::cmd("HSET");
                    cmd.arg(key);
                    for (f, v) in entry["value"].as_object().expect("hash") {
                        cmd.arg(f).arg(v.as_str().expect("hash value"));
                    }
                    cmd.query::<()>(&mut c).expect("HSET");
                }
                Some("set") => {
                    let mut cmd = redis::cmd("SADD");
                    cmd.arg(key);
                    for m in entry["value"].as_array().expect("set") {
                        cmd.arg(m.as_str().expect("member"));
                    }
                    cmd.query::<()>(&mut c).expect("SADD");
                }
                Some("string") => {
                    redis::cmd("SET")
                        .arg(key)
                        .arg(entry["value"].as_str().expect("string"))
                        .query::<()>(&mut c)
                        .expect("SET");
                }
                other => panic!("unknown type {other:?}"),
            }
        }
    }

    /// Every key, sorted.
    pub fn keys(&self) -> Vec<String> {
        let keys: Vec<Vec<u8>> = redis::cmd("KEYS")
            .arg("*")
            .query(&mut self.conn())
            .expect("KEYS");
        let mut keys: Vec<String> = keys
            .iter()
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .collect();
        keys.sort();
        keys
    }

    pub fn key_type(&self, key: &str) -> String {
        redis::cmd("TYPE")
            .arg(key)
            .query(&mut self.conn())
            .expect("TYPE")
    }

    /// Sets one field of a hash, behind the gateways' backs (no change message), as EG or
    /// redis-cli would.
    pub fn hset(&self, key: &str, field: &str, value: &str) {
        let _: i64 = redis::cmd("HSET")
            .arg(key)
            .arg(field)
            .arg(value)
            .query(&mut self.conn())
            .expect("HSET");
    }

    /// Adds `thousands` × 1,000 key-auth credentials of `consumer` (`bulk-<t>-<i>`, secret `s`):
    /// enough that a full load takes seconds.
    pub fn add_bulk_key_auth(&self, thousands: usize, consumer: &str) {
        let mut c = self.conn();
        for chunk in 0..thousands {
            let mut pipe = redis::pipe();
            for i in 0..1000 {
                let id = format!("bulk-{chunk}-{i}");
                pipe.cmd("HSET")
                    .arg(format!("EG-key-auth:{id}"))
                    .arg("keyId")
                    .arg(&id)
                    .arg("keySecret")
                    .arg("s")
                    .arg("consumerId")
                    .arg(consumer)
                    .arg("isActive")
                    .arg("true")
                    .ignore();
            }
            let _: () = pipe.query(&mut c).expect("bulk credentials");
        }
    }

    /// Sets the server's `notify-keyspace-events`.
    pub fn notify_keyspace(&self, flags: &str) {
        let _: () = redis::cmd("CONFIG")
            .arg("SET")
            .arg("notify-keyspace-events")
            .arg(flags)
            .query(&mut self.conn())
            .expect("config set");
    }

    /// Revokes a key-auth credential as a tollgate writing to this Redis does it: the change,
    /// then its message.
    pub fn revoke_key_auth(&self, id: &str) {
        let mut c = self.conn();
        let _: i64 = redis::cmd("HSET")
            .arg(format!("EG-key-auth:{id}"))
            .arg("isActive")
            .arg("false")
            .query(&mut c)
            .expect("HSET");
        let _: i64 = redis::cmd("PUBLISH")
            .arg("EG-tollgate-invalidate")
            .arg(format!("key-auth:{id}"))
            .query(&mut c)
            .expect("PUBLISH");
    }

    pub fn hgetall(&self, key: &str) -> std::collections::HashMap<String, String> {
        redis::cmd("HGETALL")
            .arg(key)
            .query(&mut self.conn())
            .expect("HGETALL")
    }

    pub fn smembers(&self, key: &str) -> Vec<String> {
        let mut m: Vec<String> = redis::cmd("SMEMBERS")
            .arg(key)
            .query(&mut self.conn())
            .expect("SMEMBERS");
        m.sort();
        m
    }

    /// Sends a signal (`STOP`, `CONT`) to the server process.
    pub fn signal(&self, sig: &str) {
        Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("kill");
    }

    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Saves the data to disk: a server started on this port later begins with it.
    pub fn save(&self) {
        let _: String = redis::cmd("SAVE").query(&mut self.conn()).expect("SAVE");
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// EG's fixture dump.
pub fn eg_fixture() -> serde_json::Value {
    let text = include_str!("../fixtures/eg-1.16.11/eg-redis-dump.json");
    serde_json::from_str(text).expect("fixture JSON")
}

/// Revokes the key-auth credential `id` (see [`RedisServer::revoke_key_auth`]) and waits until
/// the gateway on `port` refuses it, for no longer than a message is followed in: a message
/// held (or lost) until a full read of the store ends waits anywhere up to a whole read, and
/// half the longest read in `log` (a second at least) tells it from a busy machine's slow
/// round trip.
pub fn revoke_and_see_it_followed(
    redis: &RedisServer,
    port: u16,
    id: &str,
    secret: &str,
    log: impl Fn() -> String,
) {
    redis.revoke_key_auth(id);
    let published = std::time::Instant::now();
    let auth = format!("apiKey {id}:{secret}");
    while super::get(port, "GET", "/wmts/1", &[("Authorization", auth.as_str())]).status != 401 {
        let log = log();
        let bound = longest_consumer_load(&log)
            .div_f64(2.0)
            .max(std::time::Duration::from_secs(1));
        assert!(
            published.elapsed() < bound,
            "the revocation of {id} waited for a read of the store ({bound:?}):\n{log}"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// The longest of the credential loads the log reports (`… credentials loaded from … in
/// 1.23s`).
pub fn longest_consumer_load(log: &str) -> Duration {
    log.lines()
        .filter(|l| l.contains("credentials loaded"))
        .filter_map(|l| {
            let took = l.rsplit(" in ").next()?.trim();
            let (number, unit) = took.split_at(took.find(|c: char| c.is_alphabetic() || c == 'µ')?);
            let n: f64 = number.parse().ok()?;
            let secs = match unit {
                "s" => n,
                "ms" => n / 1e3,
                "µs" => n / 1e6,
                "ns" => n / 1e9,
                _ => return None,
            };
            Some(Duration::from_secs_f64(secs))
        })
        .max()
        .unwrap_or_default()
}
