//! Service endpoints: their upstream URLs, parsed once, with addresses resolved off the request
//! path (at load, then refreshed in the background), so serving a request never waits on DNS;
//! which of them are healthy ([`health`], [`state`]), and how one is chosen ([`balance`]).

pub mod attempt;
pub mod balance;
pub mod health;
pub mod settings;
pub mod state;

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use arc_swap::ArcSwapOption;
use http::header::HeaderValue;

use crate::config::node::Node;
use state::TargetState;

/// One upstream URL of a service endpoint.
#[derive(Debug)]
pub struct UpstreamTarget {
    pub url: String,
    /// The url as logs, metrics and the Admin API show it: its query (which may carry an
    /// upstream's key) left out.
    pub shown: String,
    pub tls: bool,
    pub hostname: String,
    pub port: u16,
    /// The URL's path and query (`/` when it has none), what stripPath joins onto.
    pub base_path: String,
    /// `host[:port]` as written in the URL, the Host sent with `changeOrigin`.
    pub host_header: HeaderValue,
    addr: ArcSwapOption<SocketAddr>,
}

/// A URL as logs, errors, metrics and the Admin API's `/tollgate/*` routes show it: its user
/// information (a password) and its query (a token) left out. (EG's own routes,
/// `/service-endpoints` and `/pipelines`, answer the config as it is loaded, as EG does.)
pub fn displayed(url: &str) -> String {
    let (before, query) = match url.split_once('?') {
        Some((before, _)) => (before, "?…"),
        None => (url, ""),
    };
    let rest_at = before.find("://").map_or(0, |i| i + 3);
    // Up to the last `@`: a password may hold a `/` written as it is.
    match before[rest_at..].rfind('@') {
        Some(at) => format!(
            "{}***{}{query}",
            &before[..rest_at],
            &before[rest_at + at..]
        ),
        None => format!("{before}{query}"),
    }
}

impl UpstreamTarget {
    pub fn parse(url: &str) -> Result<UpstreamTarget, String> {
        // Errors name the URL as logs and the Admin API show it: without its credentials.
        let shown = displayed(url);
        let uri: http::Uri = url
            .parse()
            .map_err(|e| format!("`{shown}` is not a valid URL: {e}"))?;
        let tls = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            Some(other) => {
                return Err(format!(
                    "`{shown}`: scheme `{other}` is not supported (use http or https)"
                ))
            }
            None => return Err(format!("`{shown}` needs a scheme (http:// or https://)")),
        };
        let authority = uri
            .authority()
            .ok_or_else(|| format!("`{shown}` has no host"))?;
        if authority.as_str().contains('@') {
            return Err(format!(
                "`{shown}`: credentials in the URL are not supported"
            ));
        }
        let hostname = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = port_of(authority.as_str())
            .map_err(|p| format!("`{shown}`: `{p}` is not a port number (1-65535)"))?
            .unwrap_or(if tls { 443 } else { 80 });
        let base_path = uri.path_and_query().map_or("/", |p| p.as_str());
        let base_path = if base_path.is_empty() { "/" } else { base_path }.to_string();
        let host_header = HeaderValue::from_str(authority.as_str())
            .map_err(|_| format!("`{shown}` has an invalid host"))?;
        let target = UpstreamTarget {
            url: url.to_string(),
            shown,
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
    /// when the lookup fails. A `--connect-to` for the name and port wins over DNS.
    pub fn resolve(&self) {
        if let Some(a) = connect_to(&self.hostname, self.port) {
            self.addr.store(Some(Arc::new(a)));
            return;
        }
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
                        self.shown,
                        self.hostname
                    );
                }
            }
        }
    }
}

/// Gives the targets of a config about to be swapped in (`new`) the addresses the running
/// config's targets (`old`) resolved for the same name and port; a name new to it is looked up
/// now (blocking: call off the request path). A reload then never serves a request with an
/// address not looked up yet, which would wait for the next DNS refresh.
pub fn carry_addresses<'a>(
    old: impl Iterator<Item = &'a Arc<UpstreamTarget>>,
    new: impl Iterator<Item = &'a Arc<UpstreamTarget>>,
) {
    let known: std::collections::HashMap<(&str, u16), SocketAddr> = old
        .filter_map(|t| Some(((t.hostname.as_str(), t.port), t.addr()?)))
        .collect();
    for t in new {
        if !t.needs_dns() && connect_to(&t.hostname, t.port).is_none() {
            continue;
        }
        match known.get(&(t.hostname.as_str(), t.port)) {
            Some(a) => t.addr.store(Some(Arc::new(*a))),
            None => t.resolve(),
        }
    }
}

/// `--connect-to HOST:PORT=ADDR:PORT` (`TOLLGATE_CONNECT_TO`, comma-separated), as curl's:
/// the upstream named HOST:PORT is reached at ADDR:PORT, while the Host header and TLS name
/// stay HOST. For configs written for another network (Docker service names) run elsewhere.
static CONNECT_TO: std::sync::OnceLock<Vec<((String, u16), SocketAddr)>> =
    std::sync::OnceLock::new();

/// Sets the `--connect-to` rules (once, at start); `Err` names a malformed one.
pub fn set_connect_to(rules: &[String]) -> Result<(), String> {
    let mut parsed = Vec::new();
    for rule in rules
        .iter()
        .flat_map(|r| r.split(','))
        .map(str::trim)
        .filter(|r| !r.is_empty())
    {
        let (from, to) = rule
            .split_once('=')
            .ok_or_else(|| format!("--connect-to `{rule}`: expected HOST:PORT=ADDR:PORT"))?;
        let (host, port) = from
            .rsplit_once(':')
            .and_then(|(h, p)| Some((h.to_ascii_lowercase(), p.parse::<u16>().ok()?)))
            .ok_or_else(|| format!("--connect-to `{rule}`: `{from}` is not HOST:PORT"))?;
        let to: SocketAddr = to.parse().map_err(|_| {
            format!("--connect-to `{rule}`: `{to}` is not ADDR:PORT (an IP address)")
        })?;
        parsed.push(((host, port), to));
    }
    let _ = CONNECT_TO.set(parsed);
    Ok(())
}

fn connect_to(host: &str, port: u16) -> Option<SocketAddr> {
    CONNECT_TO
        .get()?
        .iter()
        .find_map(|((h, p), a)| (h.eq_ignore_ascii_case(host) && *p == port).then_some(*a))
}

/// Brings `tollgate_upstream_healthy` up to the running config's urls.
pub fn publish_health(gw: &crate::gateway::Gateway) {
    let gauge = &crate::metrics::metrics().upstream_healthy;
    gauge.reset();
    for ep in gw.service_endpoints.values() {
        for (t, s) in ep.targets.iter().zip(&ep.states) {
            gauge
                .with_label_values(&[ep.name.as_str(), t.shown.as_str()])
                .set(i64::from(s.available()));
        }
    }
}

/// The running config's service endpoints and the state of their urls, for the Admin API.
pub fn describe(gw: &crate::gateway::Gateway) -> serde_json::Value {
    let mut names: Vec<&String> = gw.service_endpoints.keys().collect();
    names.sort();
    let endpoints: Vec<serde_json::Value> = names
        .into_iter()
        .map(|n| {
            let ep = &gw.service_endpoints[n];
            let urls: Vec<serde_json::Value> = ep
                .targets
                .iter()
                .zip(&ep.states)
                .enumerate()
                .map(|(i, (t, s))| {
                    serde_json::json!({
                        "url": t.shown,
                        "address": t.addr().map(|a| a.to_string()),
                        "weight": ep.settings.weight(i),
                        "healthy": s.healthy(),
                        "ejectedForSeconds": s.ejected_for().map(|d| d.as_secs_f64()),
                        "available": s.available(),
                        "inFlight": s.in_flight.load(std::sync::atomic::Ordering::Relaxed),
                    })
                })
                .collect();
            serde_json::json!({
                "name": ep.name,
                "balance": ep.settings.balance,
                // (Its query shown as `?…`, as the urls': a provider's key goes there too.)
                "healthCheck": ep.settings.health_check.as_ref().map(|h| displayed(&h.path)),
                "retries": ep.settings.retries,
                "http2": ep.settings.http2,
                "urls": urls,
            })
        })
        .collect();
    serde_json::json!({ "serviceEndpoints": endpoints })
}

/// A named service endpoint: one URL or several, balanced among those available.
#[derive(Debug)]
pub struct ServiceEndpoint {
    pub name: String,
    pub targets: Vec<Arc<UpstreamTarget>>,
    /// Each url's state (parallel to `targets`), shared across config reloads.
    pub states: Vec<Arc<state::TargetState>>,
    /// `proxyOptions`, merged over every proxy action that uses this endpoint.
    pub proxy_options: Option<Node>,
    pub settings: settings::UpstreamSettings,
    /// The name and a fingerprint of the urls, as the tile cache's keys name the endpoint: a
    /// reload that points the endpoint elsewhere starts its tiles afresh.
    pub cache_name: String,
    wheel: Vec<usize>,
    next: AtomicUsize,
    /// A proxy step sends to this endpoint without verifying certificates (`secure: false`,
    /// its own or the endpoint's `proxyOptions`): its health checks do not verify them either.
    unverified_traffic: std::sync::atomic::AtomicBool,
    /// With `consistent-hash`: the query parameters that carry credentials, left out of what
    /// is hashed (one tile goes to one url whoever asks for it).
    hash_without: Option<Vec<String>>,
}

impl ServiceEndpoint {
    /// Notes that a proxy step sends to this endpoint without verifying certificates.
    pub fn traffic_unverified(&self) {
        self.unverified_traffic
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether health checks verify the urls' certificates: as the traffic does.
    pub fn checks_verify_certificates(&self) -> bool {
        !self
            .unverified_traffic
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn new(
        name: &str,
        targets: Vec<Arc<UpstreamTarget>>,
        proxy_options: Option<Node>,
        settings: settings::UpstreamSettings,
        registry: &state::Registry,
    ) -> ServiceEndpoint {
        let states = targets
            .iter()
            .map(|t| registry.state(name, &t.url))
            .collect();
        let weights: Vec<u32> = (0..targets.len()).map(|i| settings.weight(i)).collect();
        // FNV-1a of the urls: 32 bits tell one endpoint's url lists apart (a short key text
        // costs every hit less to copy and hash).
        let urls = targets
            .iter()
            .flat_map(|t| t.url.bytes().chain([b' ']))
            .fold(0x811c_9dc5u32, |h, b| {
                (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
            });
        ServiceEndpoint {
            name: name.to_string(),
            cache_name: format!("{name}~{urls:08x}"),
            targets,
            states,
            proxy_options,
            wheel: balance::wheel(&weights),
            next: AtomicUsize::new(0),
            unverified_traffic: std::sync::atomic::AtomicBool::new(false),
            settings,
            hash_without: None,
        }
    }

    /// Hashes (`consistent-hash`) a request's path and query without the parameters of
    /// `secret_params`.
    pub fn hashing_without(mut self, secret_params: &[String]) -> ServiceEndpoint {
        if self.settings.balance == settings::Balance::ConsistentHash {
            self.hash_without = Some(secret_params.to_vec());
        }
        self
    }

    /// Whether a url not in `tried` is available and may be chosen (a weight of 0 or a name
    /// with no address yet leaves it out: see [`Self::pick`]).
    pub fn any_available(&self, tried: u64) -> bool {
        self.any(tried, TargetState::available)
    }

    /// Whether a url not in `tried` may be sent a request: an available one, else one that is
    /// only ejected (see [`Self::pick`]).
    pub fn any_to_try(&self, tried: u64) -> bool {
        self.any(tried, TargetState::healthy)
    }

    fn any(&self, tried: u64, usable: fn(&TargetState) -> bool) -> bool {
        self.states.iter().enumerate().any(|(i, s)| {
            (i >= 64 || tried & (1 << i) == 0)
                && usable(s)
                && self.settings.weight(i) > 0
                && self.targets[i].addr().is_some()
        })
    }

    /// Chooses an available url for a request to `path`, leaving out those in `tried` (a bit
    /// per url); when none is and `ejected_too`, one that passive health only ejected (as
    /// nginx tries its failed servers again when none is left, and Envoy's panic mode: an
    /// ejection moves load off a url, it never makes an outage while the url answers).
    /// `None`: none to choose. (A request a `cache` step may answer with a stored tile is
    /// answered so at once instead, without waiting on an ejected url.) `url`: the request's
    /// path and query (`consistent-hash` hashes them; a WMS's or a WMTS KVP's tiles differ by
    /// their query alone), the credentials' parameters left out.
    pub fn pick(&self, url: &str, tried: u64, ejected_too: bool) -> Option<usize> {
        if self.targets.len() == 1 {
            // (The last url is never ejected.)
            return (tried & 1 == 0 && self.states[0].available()).then_some(0);
        }
        let keyed;
        let path = match (&self.hash_without, url.split_once('?')) {
            (Some(secrets), Some((path, query))) => {
                keyed = match crate::access_log::without_secrets(query, secrets) {
                    Some(q) => format!("{path}?{q}"),
                    None => path.to_string(),
                };
                keyed.as_str()
            }
            _ => url,
        };
        self.pick_among(path, tried, TargetState::available, tried == 0)
            .or_else(|| {
                // (The rotation turned for this request already.)
                ejected_too
                    .then(|| self.pick_among(path, tried, TargetState::healthy, false))
                    .flatten()
            })
    }

    fn pick_among(
        &self,
        path: &str,
        tried: u64,
        usable: fn(&TargetState) -> bool,
        turn: bool,
    ) -> Option<usize> {
        let candidates: Vec<Option<balance::Candidate<'_>>> = self
            .targets
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let left_out = i < 64 && tried & (1 << i) != 0;
                // A url whose name has no address yet is not chosen while another has one.
                let usable = usable(&self.states[i]) && t.addr().is_some();
                (!left_out && usable).then(|| balance::Candidate {
                    url: &t.url,
                    weight: self.settings.weight(i),
                    in_flight: self.states[i]
                        .in_flight
                        .load(std::sync::atomic::Ordering::Relaxed),
                })
            })
            .collect();
        let pick = if turn {
            balance::pick
        } else {
            balance::pick_again
        };
        pick(
            self.settings.balance,
            &self.wheel,
            &self.next,
            &candidates,
            path,
        )
    }
}

/// The port an authority names: `None` for none (or an empty one, as URLs have it: the
/// scheme's); `Err` with the text of one that is not a port number from 1 to 65535 (the `http`
/// crate reads those as no port at all, and the scheme's would be used).
fn port_of(authority: &str) -> Result<Option<u16>, &str> {
    let after_host = authority
        .rsplit_once(']')
        .map_or(authority, |(_, rest)| rest);
    match after_host.rsplit_once(':') {
        None | Some((_, "")) => Ok(None),
        Some((_, p)) => match p.parse::<u16>() {
            Ok(n) if n > 0 && p.bytes().all(|b| b.is_ascii_digit()) => Ok(Some(n)),
            _ => Err(p),
        },
    }
}
