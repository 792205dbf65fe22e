//! A service endpoint's `tollgate:` block — what Express Gateway configs can omit: how its urls
//! are balanced and weighted, active health checks, outlier ejection, retries and HTTP/2.
//!
//! ```yaml
//! serviceEndpoints:
//!   mapcache:
//!     urls: [http://tiles-a:8080/mapcache, http://tiles-b:8080/mapcache]
//!     tollgate:
//!       balance: consistent-hash        # round-robin (default), least-connections
//!       weights: [2, 1]
//!       healthCheck: {path: /health, interval: 5, timeout: 2}
//!       outlierDetection: {consecutiveFailures: 3, ejectSeconds: 10, failureStatuses: [502, 503, 504], serviceExceptions: false}
//!       retries: 1
//! ```

use std::time::Duration;

use serde::Deserialize;

/// How a url is chosen among the available ones.
#[derive(Clone, Copy, Debug, Default, Deserialize, serde::Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Balance {
    /// In turn, by weight (EG's).
    #[default]
    RoundRobin,
    /// The fewest requests in flight per unit of weight.
    LeastConnections,
    /// By the request path, so an upstream tile cache sees each tile on one node; a url that
    /// goes away moves only its own share.
    ConsistentHash,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HealthCheck {
    /// The path requested on each url (GET).
    pub path: String,
    /// Statuses that mean healthy.
    #[serde(default = "default_statuses")]
    pub statuses: Vec<u16>,
    /// Seconds between two checks of a url.
    #[serde(default = "default_interval")]
    pub interval: f64,
    /// Seconds a check may take.
    #[serde(default = "default_check_timeout")]
    pub timeout: f64,
    /// Consecutive passed checks that make an unhealthy url healthy again.
    #[serde(default = "two")]
    pub healthy_threshold: u32,
    /// Consecutive failed checks that make a url unhealthy.
    #[serde(default = "three")]
    pub unhealthy_threshold: u32,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Outlier {
    /// Consecutive failures (connect failures, timeouts, broken answers, the statuses of
    /// `failure_statuses`) that eject a url.
    #[serde(default = "three")]
    pub consecutive_failures: u32,
    /// The answers that count as the url's failure: by default a gateway's failures (502,
    /// 503, 504), which say the url or what is behind it is unwell, not a 500, which one
    /// request may draw (a client asking for a path that fails could eject every url).
    #[serde(default = "default_failure_statuses")]
    pub failure_statuses: Vec<u16>,
    /// Seconds an ejected url is left out.
    #[serde(default = "default_eject")]
    pub eject_seconds: f64,
    /// Whether an OGC service exception relayed through a `cache` step (see
    /// [`crate::cache::exception`]) counts as a failure too. Off by default: many are the
    /// client's (a layer not defined, a format not offered), and a client could eject the
    /// urls by asking for such maps.
    #[serde(default)]
    pub service_exceptions: bool,
}

impl Default for Outlier {
    fn default() -> Self {
        Outlier {
            consecutive_failures: 3,
            failure_statuses: default_failure_statuses(),
            eject_seconds: default_eject(),
            service_exceptions: false,
        }
    }
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpstreamSettings {
    #[serde(default)]
    pub balance: Balance,
    /// One weight per url (default 1 each).
    pub weights: Option<Vec<u32>>,
    pub health_check: Option<HealthCheck>,
    /// Passive health: on by default; `outlierDetection: false` turns it off.
    #[serde(default = "outlier_on", deserialize_with = "outlier_setting")]
    pub outlier_detection: Option<Outlier>,
    /// How many times a request is tried again on another url when its connection fails
    /// before any response byte.
    #[serde(default = "one")]
    pub retries: u32,
    /// Methods that are retried (idempotent ones only by default).
    #[serde(default = "default_retry_methods")]
    pub retry_methods: Vec<String>,
    /// HTTP/2 to the upstream (https urls negotiate it; falls back to HTTP/1.1).
    #[serde(default)]
    pub http2: bool,
}

impl Default for UpstreamSettings {
    fn default() -> Self {
        UpstreamSettings {
            balance: Balance::default(),
            weights: None,
            health_check: None,
            outlier_detection: outlier_on(),
            retries: 1,
            retry_methods: default_retry_methods(),
            http2: false,
        }
    }
}

fn outlier_on() -> Option<Outlier> {
    Some(Outlier::default())
}

fn outlier_setting<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Outlier>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Setting {
        Switch(bool),
        Given(Outlier),
    }
    Ok(match Setting::deserialize(d)? {
        Setting::Switch(false) => None,
        Setting::Switch(true) => Some(Outlier::default()),
        Setting::Given(o) => Some(o),
    })
}

fn default_statuses() -> Vec<u16> {
    vec![200]
}
fn default_interval() -> f64 {
    5.0
}
fn default_check_timeout() -> f64 {
    2.0
}
fn default_failure_statuses() -> Vec<u16> {
    vec![502, 503, 504]
}
fn default_eject() -> f64 {
    10.0
}
fn one() -> u32 {
    1
}
fn two() -> u32 {
    2
}
fn three() -> u32 {
    3
}
fn default_retry_methods() -> Vec<String> {
    vec!["GET".into(), "HEAD".into()]
}

/// A number of seconds from a millisecond (a smaller one is no time at all: a check every
/// 0 s would never wait) to a day.
fn seconds(v: f64, what: &str) -> Result<Duration, String> {
    if v.is_finite() && (0.001..86_400.0).contains(&v) {
        Ok(Duration::from_secs_f64(v))
    } else {
        Err(format!(
            "`{what}` must be a number of seconds from 0.001 to below 86400"
        ))
    }
}

impl HealthCheck {
    pub fn interval(&self) -> Duration {
        Duration::from_secs_f64(self.interval)
    }
    pub fn timeout(&self) -> Duration {
        Duration::from_secs_f64(self.timeout)
    }
}

impl Outlier {
    pub fn eject(&self) -> Duration {
        Duration::from_secs_f64(self.eject_seconds)
    }
}

/// The largest weight: round-robin walks a list as long as the weights' sum.
pub const MAX_WEIGHT: u32 = 1000;

impl UpstreamSettings {
    /// Checks what serde cannot: against the number of urls and value ranges.
    pub fn validate(&self, urls: usize) -> Result<(), String> {
        if let Some(w) = &self.weights {
            if w.len() != urls {
                return Err(format!(
                    "`weights` has {} values for {urls} url(s)",
                    w.len()
                ));
            }
            if w.iter().all(|w| *w == 0) {
                return Err("`weights` are all 0".into());
            }
            if let Some(w) = w.iter().find(|w| **w > MAX_WEIGHT) {
                return Err(format!("a weight of {w}: at most {MAX_WEIGHT}"));
            }
        }
        if let Some(h) = &self.health_check {
            if !h.path.starts_with('/') {
                return Err("`healthCheck.path` must start with /".into());
            }
            // Refused where every check would fail to be sent (and every url be unhealthy).
            if h.path.parse::<http::uri::PathAndQuery>().is_err() {
                return Err(format!(
                    "`healthCheck.path` {:?} is not a URL path (spaces and control characters are written %XX)",
                    h.path
                ));
            }
            seconds(h.interval, "healthCheck.interval")?;
            seconds(h.timeout, "healthCheck.timeout")?;
            if h.healthy_threshold == 0 || h.unhealthy_threshold == 0 {
                return Err("health check thresholds must be at least 1".into());
            }
        }
        if let Some(o) = &self.outlier_detection {
            seconds(o.eject_seconds, "outlierDetection.ejectSeconds")?;
            if o.consecutive_failures == 0 {
                return Err("`outlierDetection.consecutiveFailures` must be at least 1".into());
            }
            if let Some(s) = o
                .failure_statuses
                .iter()
                .find(|s| !(500..=599).contains(*s))
            {
                return Err(format!(
                    "`outlierDetection.failureStatuses`: {s} is not a status from 500 to 599"
                ));
            }
        }
        if self.retries > 10 {
            return Err("`retries` is at most 10".into());
        }
        for m in &self.retry_methods {
            if http::Method::from_bytes(m.as_bytes()).is_err() {
                return Err(format!("`retryMethods`: `{m}` is not an HTTP method"));
            }
        }
        Ok(())
    }

    pub fn weight(&self, i: usize) -> u32 {
        self.weights
            .as_ref()
            .and_then(|w| w.get(i).copied())
            .unwrap_or(1)
    }

    pub fn retries_method(&self, m: &http::Method) -> bool {
        self.retry_methods
            .iter()
            .any(|r| r.eq_ignore_ascii_case(m.as_str()))
    }
}

#[cfg(test)]
mod tests {
    use super::{seconds, UpstreamSettings};

    /// A health check's path is one a request can carry: where it is not, every check would
    /// fail and every url be unhealthy.
    #[test]
    fn a_health_check_path_must_be_a_url_path() {
        let with_path = |p: &str| {
            let check = serde_json::json!({ "path": p });
            let s = UpstreamSettings {
                health_check: Some(serde_json::from_value(check).expect("a health check")),
                ..UpstreamSettings::default()
            };
            s.validate(1)
        };
        for fine in ["/", "/health", "/h?x=1", "/h%20x"] {
            assert!(with_path(fine).is_ok(), "{fine}");
        }
        for wrong in ["h", "/h x", "/h\r\nX-Injected: 1", "/h\u{0}"] {
            assert!(with_path(wrong).is_err(), "{wrong:?}");
        }
    }

    /// A length of time too small to be one (a check every 0 s panicked the checker's
    /// timer) is refused with the config's other errors, as one too large is.
    #[test]
    fn seconds_from_a_millisecond_to_below_a_day() {
        for fine in [0.001, 0.2, 5.0, 86_399.9] {
            assert!(seconds(fine, "t").is_ok_and(|d| !d.is_zero()), "{fine}");
        }
        for wrong in [1e-10, 0.0009, 0.0, -1.0, 86_400.0, f64::NAN, f64::INFINITY] {
            assert!(seconds(wrong, "t").is_err(), "{wrong}");
        }
    }
}
