//! Service endpoints: their upstream URLs, parsed once, with addresses resolved off the request
//! path (at load, then refreshed in the background), so serving a request never waits on DNS.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::Arc;

use arc_swap::ArcSwapOption;
use http::header::HeaderValue;

use crate::config::node::Node;

/// One upstream URL of a service endpoint.
#[derive(Debug)]
pub struct UpstreamTarget {
    pub url: String,
    pub tls: bool,
    pub hostname: String,
    pub port: u16,
    /// The URL's path and query (`/` when it has none), what stripPath joins onto.
    pub base_path: String,
    /// `host[:port]` as written in the URL, the Host sent with `changeOrigin`.
    pub host_header: HeaderValue,
    addr: ArcSwapOption<SocketAddr>,
}

impl UpstreamTarget {
    pub fn parse(url: &str) -> Result<UpstreamTarget, String> {
        let uri: http::Uri = url
            .parse()
            .map_err(|e| format!("`{url}` is not a valid URL: {e}"))?;
        let tls = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            Some(other) => {
                return Err(format!(
                    "`{url}`: scheme `{other}` is not supported (use http or https)"
                ))
            }
            None => return Err(format!("`{url}` needs a scheme (http:// or https://)")),
        };
        let authority = uri
            .authority()
            .ok_or_else(|| format!("`{url}` has no host"))?;
        if authority.as_str().contains('@') {
            return Err(format!("`{url}`: credentials in the URL are not supported"));
        }
        let hostname = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = authority.port_u16().unwrap_or(if tls { 443 } else { 80 });
        let base_path = uri.path_and_query().map_or("/", |p| p.as_str());
        let base_path = if base_path.is_empty() { "/" } else { base_path }.to_string();
        let host_header = HeaderValue::from_str(authority.as_str())
            .map_err(|_| format!("`{url}` has an invalid host"))?;
        let target = UpstreamTarget {
            url: url.to_string(),
            tls,
            hostname,
            port,
            base_path,
            host_header,
            addr: ArcSwapOption::empty(),
        };
        if let Ok(ip) = target.hostname.parse::<IpAddr>() {
            target.addr.store(Some(Arc::new(SocketAddr::new(ip, port))));
        }
        Ok(target)
    }

    /// The address to connect to, if the name has resolved.
    pub fn addr(&self) -> Option<SocketAddr> {
        self.addr.load().as_deref().copied()
    }

    /// Whether the host is a name that needs DNS (not an IP literal).
    pub fn needs_dns(&self) -> bool {
        self.hostname.parse::<IpAddr>().is_err()
    }

    /// Looks the name up (blocking; call off the request path). Keeps the last good address
    /// when the lookup fails.
    pub fn resolve(&self) {
        if !self.needs_dns() {
            return;
        }
        match (self.hostname.as_str(), self.port).to_socket_addrs() {
            Ok(addrs) => {
                let addrs: Vec<SocketAddr> = addrs.collect();
                let pick = addrs
                    .iter()
                    .find(|a| a.is_ipv4())
                    .or(addrs.first())
                    .copied();
                if let Some(a) = pick {
                    if self.addr() != Some(a) {
                        log::debug!("upstream {} resolved to {a}", self.hostname);
                    }
                    self.addr.store(Some(Arc::new(a)));
                }
            }
            Err(e) => {
                if self.addr().is_none() {
                    log::warn!(
                        "upstream {}: cannot resolve `{}`: {e}",
                        self.url,
                        self.hostname
                    );
                }
            }
        }
    }
}

/// A named service endpoint: one URL or several (balanced by the proxy policy).
#[derive(Debug)]
pub struct ServiceEndpoint {
    pub name: String,
    pub targets: Vec<Arc<UpstreamTarget>>,
    /// `proxyOptions`, merged over every proxy action that uses this endpoint.
    pub proxy_options: Option<Node>,
}
