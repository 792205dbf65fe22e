//! `tollgate healthcheck`: whether the gateway on this machine answers its own health check,
//! for a container's HEALTHCHECK (the image has no curl).

use std::time::Duration;

use clap::Args;

use super::{seconds, ConfigArg};
use crate::config::ConfigDirs;

#[derive(Args)]
pub struct HealthcheckArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// The URL to ask (default: where the gateway running on the config directory said it
    /// listens, else the config's http listener on 127.0.0.1; the healthcheck plugin's path).
    #[arg(long)]
    pub url: Option<String>,
    /// Ask for readiness (the consumer store answers, the consumer cache has loaded).
    #[arg(long)]
    pub ready: bool,
    /// Seconds to wait for the answer.
    #[arg(long, default_value = "3", value_parser = seconds)]
    pub timeout: Duration,
}

/// The URL of the gateway's own health check: where the gateway running on these config
/// directories said it answers, else from the config.
fn healthcheck_url(dirs: &ConfigDirs, ready: bool) -> Result<String, String> {
    let query = if ready { "?ready" } else { "" };
    if let Some(url) = crate::lifecycle::runfile::find(dirs).and_then(|r| r.health_url()) {
        return Ok(format!("{url}{query}"));
    }
    let loaded = crate::config::load_dirs(dirs).map_err(|e| e.to_string())?;
    let path = loaded
        .system
        .plugin_endpoint("healthcheck", crate::gateway::HEALTHCHECK_PATH);
    let (scheme, port) = match (&loaded.gateway.http, &loaded.gateway.https) {
        (Some(h), _) => ("http", h.port),
        (None, Some(h)) => ("https", h.listener.port),
        (None, None) => return Err("the config has no http or https listener".into()),
    };
    Ok(format!("{scheme}://127.0.0.1:{port}{path}{query}"))
}

/// `tollgate healthcheck`: 0 when the gateway answers its health check with 200, else 1 with
/// the reason on stderr.
pub fn run(a: &HealthcheckArgs) -> i32 {
    let url = match a
        .url
        .clone()
        .map_or_else(|| healthcheck_url(&a.config.dirs(), a.ready), Ok)
    {
        Ok(u) => u,
        Err(e) => {
            eprintln!("tollgate healthcheck: {e}");
            return 1;
        }
    };
    if url.starts_with("https://") {
        return match https_probe(&url, a.timeout) {
            Ok((200, _)) => 0,
            Ok((status, body)) => {
                eprintln!(
                    "tollgate healthcheck: {url} answered {status}: {}",
                    body.trim()
                );
                1
            }
            Err(e) => {
                eprintln!("tollgate healthcheck: {url}: {e}");
                1
            }
        };
    }
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(a.timeout))
        .build()
        .into();
    match agent.get(&url).call() {
        Ok(resp) if resp.status() == 200 => 0,
        Ok(mut resp) => {
            let body = resp.body_mut().read_to_string().unwrap_or_default();
            eprintln!(
                "tollgate healthcheck: {url} answered {}: {}",
                resp.status(),
                body.trim()
            );
            1
        }
        Err(ureq::Error::Timeout(_)) => {
            eprintln!(
                "tollgate healthcheck: {url}: no answer within {:?} (--timeout)",
                a.timeout
            );
            1
        }
        Err(e) => {
            eprintln!("tollgate healthcheck: {url}: {e}");
            1
        }
    }
}

/// `GET url` over TLS, the certificate not verified: the health check asks the gateway on
/// this machine whether it answers, whatever names its certificates carry. The status and
/// body.
fn https_probe(url: &str, timeout: std::time::Duration) -> Result<(u16, String), String> {
    use pingora_core::tls::ssl::{SslConnector, SslMethod, SslVerifyMode};
    use std::io::{Read, Write};
    let uri: http::Uri = url.parse().map_err(|e| format!("{e}"))?;
    let host = uri.host().ok_or("no host")?.trim_matches(['[', ']']);
    let port = uri.port_u16().unwrap_or(443);
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let addr = std::net::ToSocketAddrs::to_socket_addrs(&(host, port))
        .map_err(|e| e.to_string())?
        .next()
        .ok_or("no address")?;
    let tcp = std::net::TcpStream::connect_timeout(&addr, timeout).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    tcp.set_write_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    let mut connector = SslConnector::builder(SslMethod::tls()).map_err(|e| e.to_string())?;
    connector.set_verify(SslVerifyMode::NONE);
    let mut config = connector.build().configure().map_err(|e| e.to_string())?;
    config.set_verify_hostname(false);
    let mut tls = config.connect(host, tcp).map_err(|e| e.to_string())?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: tollgate-healthcheck\r\nConnection: close\r\n\r\n"
    );
    tls.write_all(request.as_bytes())
        .map_err(|e| e.to_string())?;
    let mut answer = Vec::new();
    // A peer that closes without TLS's close_notify still gave its answer.
    if let Err(e) = tls.read_to_end(&mut answer) {
        let timed_out = matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        );
        if timed_out && answer.is_empty() {
            return Err(format!("no answer within {timeout:?} (--timeout)"));
        }
    }
    let text = String::from_utf8_lossy(&answer);
    let status = text
        .strip_prefix("HTTP/1.")
        .and_then(|rest| rest.get(2..5))
        .and_then(|code| code.parse().ok())
        .ok_or("no HTTP answer")?;
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    Ok((status, body))
}
