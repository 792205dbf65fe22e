//! A real upstream in a process of its own (tests/fixtures/python/upstream.py), so a test can
//! kill it under load and start it again on the same port.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::gateway::free_port;

pub struct PyUpstream {
    pub port: u16,
    pub name: String,
    idle_timeout: f64,
    /// Every answer's Content-Type, when set.
    content_type: Option<String>,
    child: Option<Child>,
}

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/python/upstream.py")
}

impl PyUpstream {
    /// Starts on a free port; idle keep-alive connections are closed after `idle_timeout` s.
    pub fn start(name: &str, idle_timeout: f64) -> PyUpstream {
        Self::start_typed(name, idle_timeout, None)
    }

    /// Starts one whose every answer has `content_type` as its Content-Type (the request
    /// header `X-Test-Content-Type` still sets one answer's).
    pub fn start_typed(name: &str, idle_timeout: f64, content_type: Option<&str>) -> PyUpstream {
        let mut up = PyUpstream {
            port: free_port(),
            name: name.to_string(),
            idle_timeout,
            content_type: content_type.map(str::to_string),
            child: None,
        };
        up.restart();
        up
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.port, path)
    }

    /// Starts the process (again) on its port and waits until it accepts.
    pub fn restart(&mut self) {
        let child = Command::new("python3")
            .arg(script())
            .args(["--port", &self.port.to_string(), "--name", &self.name])
            .args(["--idle-timeout", &self.idle_timeout.to_string()])
            .args(
                self.content_type
                    .iter()
                    .flat_map(|t| ["--content-type", t.as_str()]),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the python upstream");
        self.child = Some(child);
        let start = Instant::now();
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "the python upstream did not listen on {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends a signal (`STOP`: it freezes, its port still completes handshakes into the backlog
    /// and its connections stay open, answering nothing; `CONT`: it goes on).
    pub fn signal(&self, sig: &str) {
        if let Some(c) = &self.child {
            Command::new("kill")
                .arg(format!("-{sig}"))
                .arg(c.id().to_string())
                .status()
                .expect("kill");
        }
    }

    /// Kills the process (SIGKILL): its connections are reset, its port refuses.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Requests it has answered with a body (a 304 is not counted).
    pub fn served(&self) -> u64 {
        self.count("served")
    }

    /// Conditional requests it answered 304.
    pub fn not_modified(&self) -> u64 {
        self.count("not_modified")
    }

    /// The most requests it was answering at once.
    pub fn max_in_flight(&self) -> u64 {
        self.count("max_in_flight")
    }

    fn count(&self, what: &str) -> u64 {
        let r = super::get(self.port, "GET", "/__count", &[]);
        super::json_body(&r)[what].as_u64().unwrap_or(0)
    }
}

impl Drop for PyUpstream {
    fn drop(&mut self) {
        self.kill();
    }
}

/// An upstream on threads of the test, for answers no real server gives (broken framing, a
/// body that trickles or stalls): each connection's first request head is read, then `answer`
/// writes what it will on the connection. Its port.
pub fn raw(answer: fn(&mut TcpStream)) -> u16 {
    use std::io::Read;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            std::thread::spawn(move || {
                let mut head = [0u8; 4096];
                let _ = conn.read(&mut head);
                answer(&mut conn);
            });
        }
    });
    port
}
