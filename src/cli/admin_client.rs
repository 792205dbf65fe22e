//! The CLI's side of the Admin API: where it is (`EG_ADMIN_URL`, else where the gateway
//! running on the config directories said it answers, else the system config's `cli.url`,
//! else the gateway config's admin host and port) and plain HTTP calls to it.

use std::time::Duration;

use serde_json::Value;

use crate::config;

pub struct AdminClient {
    pub base: String,
    token: Option<String>,
    agent: ureq::Agent,
    /// Why the Admin API could not be located: the config does not load and no gateway
    /// runs on it (every call fails with this).
    not_located: Option<String>,
}

/// An answer of the Admin API.
pub struct Answer {
    pub status: u16,
    pub body: String,
}

impl Answer {
    /// What a failed call says: the Admin API's own words, its status's name when it gave
    /// none; for a page of markup (another server: `--admin-url` naming the gateway's port or
    /// a web server) its status and that, not the whole page.
    pub fn failure(&self) -> String {
        let text = self.body.trim();
        let reason = http::StatusCode::from_u16(self.status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("error");
        if text.is_empty() || text == "{}" {
            reason.to_string()
        } else if text.starts_with('<') {
            format!(
                "{} {reason} with a page of markup: that is no Admin API (see --admin-url, EG_ADMIN_URL)",
                self.status
            )
        } else {
            text.to_string()
        }
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }

    /// The list under `key` of a listing's answer; an answer that is no such JSON is a
    /// failure (it was read as an empty list: `You have no users`, exit 0).
    pub fn listing(&self, key: &str) -> Result<Vec<Value>, String> {
        match self.json().get(key) {
            Some(Value::Array(items)) => Ok(items.clone()),
            Some(Value::Null) => Ok(Vec::new()),
            _ => {
                let start: String = self.body.chars().take(80).collect();
                Err(format!(
                    "the Admin API's answer is not a listing of {key}: {start:?}"
                ))
            }
        }
    }

    pub fn ok(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// Why the Admin API could not be asked.
#[derive(Debug, thiserror::Error)]
#[error("{}", self.said())]
pub struct Unreachable {
    pub url: String,
    pub reason: String,
    /// The gateway took the request and did not answer in time: it may still be working on
    /// it.
    pub timed_out: bool,
    /// Nothing of the request reached a gateway: no name, no address, no connection (a
    /// connection that broke afterwards may have carried it, and the gateway acted on it).
    pub not_reached: bool,
}

impl Unreachable {
    fn said(&self) -> String {
        let (url, reason) = (&self.url, &self.reason);
        if self.not_reached {
            format!(
                "cannot reach the Admin API at {url}: {reason} (is `tollgate serve` running? \
                 set EG_ADMIN_URL to point elsewhere)"
            )
        } else {
            // It took the request: its answer did not come whole.
            format!("the Admin API at {url} took the request: {reason}")
        }
    }
}

impl AdminClient {
    /// Finds the Admin API for a config directory.
    pub fn locate(
        config_dirs: &config::ConfigDirs,
        explicit: Option<&str>,
        token: Option<String>,
    ) -> AdminClient {
        let running = || crate::lifecycle::runfile::find(config_dirs).and_then(|r| r.admin);
        // The running gateway before `cli.url`: it says where its Admin API is, where
        // `cli.url` may be read with another environment than the gateway's (the shipped
        // `conf/` names the port by `${TOLLGATE_ADMIN_PORT:-9876}`). The config is read only
        // when neither says: a running gateway's own answer says what its config warns of
        // (`reload`), the CLI's reading of it said each warning a second time.
        let mut not_located = None;
        let base = explicit.map(str::to_string).or_else(running).or_else(|| {
            let loaded = match config::load_dirs(config_dirs) {
                Ok(loaded) => loaded,
                Err(e) => {
                    not_located = Some(format!(
                        "the config in {} does not load, and no gateway runs on it: {e}",
                        config_dirs.display()
                    ));
                    return None;
                }
            };
            let cli_url = loaded.system.cli_url.filter(|u| !u.is_empty());
            let configured_admin = loaded.gateway.admin.as_ref().map(|a| {
                // `localhost` for every address, as EG's CLI does.
                match a.host.as_deref() {
                    None | Some("") | Some("0.0.0.0") => format!("http://localhost:{}", a.port),
                    host => crate::lifecycle::runfile::local_url("http", host, a.port),
                }
            });
            cli_url.or(configured_admin)
        });
        let base = base.unwrap_or_else(|| "http://localhost:9876".into());
        // An https admin URL (the Admin API behind a TLS proxy) is verified against the
        // system's trust store, as OpenSSL finds it (`SSL_CERT_FILE` / `SSL_CERT_DIR` name
        // another).
        let tls = ureq::tls::TlsConfig::builder()
            .provider(ureq::tls::TlsProvider::NativeTls)
            .root_certs(ureq::tls::RootCerts::PlatformVerifier)
            .build();
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .tls_config(tls)
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(120)))
            .timeout_connect(Some(Duration::from_secs(5)))
            .build()
            .into();
        AdminClient {
            base: base.trim_end_matches('/').to_string(),
            token,
            agent,
            not_located,
        }
    }

    /// Sends a request; `body` is JSON when given.
    pub fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Answer, Unreachable> {
        if let Some(why) = &self.not_located {
            return Err(Unreachable {
                url: "the address its config gives".into(),
                reason: why.clone(),
                timed_out: false,
                not_reached: true,
            });
        }
        let url = format!("{}{path}", self.base);
        let unreachable = |e: ureq::Error| Unreachable {
            // Without a password the URL may hold.
            url: crate::upstream::displayed(&self.base),
            timed_out: matches!(e, ureq::Error::Timeout(_)),
            not_reached: match &e {
                ureq::Error::HostNotFound | ureq::Error::ConnectionFailed => true,
                ureq::Error::Timeout(t) => {
                    matches!(t, ureq::Timeout::Resolve | ureq::Timeout::Connect)
                }
                ureq::Error::Io(io) => matches!(
                    io.kind(),
                    std::io::ErrorKind::ConnectionRefused
                        | std::io::ErrorKind::AddrNotAvailable
                        | std::io::ErrorKind::NotFound
                ),
                _ => false,
            },
            reason: e.to_string(),
        };
        let auth = self.token.as_ref().map(|t| format!("Bearer {t}"));
        let text = body.map(Value::to_string);
        let result = match method {
            "GET" | "DELETE" => {
                let mut req = if method == "GET" {
                    self.agent.get(&url)
                } else {
                    self.agent.delete(&url)
                };
                if let Some(a) = &auth {
                    req = req.header("Authorization", a);
                }
                req.call()
            }
            _ => {
                let mut req = if method == "POST" {
                    self.agent.post(&url)
                } else {
                    self.agent.put(&url)
                };
                if let Some(a) = &auth {
                    req = req.header("Authorization", a);
                }
                match &text {
                    Some(t) => req
                        .header("Content-Type", "application/json")
                        .send(t.as_str()),
                    None => req.send_empty(),
                }
            }
        };
        let mut resp = result.map_err(unreachable)?;
        let status = resp.status().as_u16();
        // Read whole, however long (ureq stops at 10 MiB: the list of 32,000 credentials was
        // read as none), and a body that cannot be read is a failure, not an empty answer.
        let body = resp
            .body_mut()
            .with_config()
            .limit(u64::MAX)
            .read_to_string()
            .map_err(|e| Unreachable {
                reason: format!("the answer could not be read: {e}"),
                not_reached: false,
                timed_out: matches!(e, ureq::Error::Timeout(_)),
                url: crate::upstream::displayed(&self.base),
            })?;
        Ok(Answer { status, body })
    }
}
