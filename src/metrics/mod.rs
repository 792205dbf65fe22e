//! The Prometheus registry: Kargo's `eg` counter, unchanged (no `_total`, its four labels), and
//! tollgate's own families beside it. Label sets are bounded — api endpoint, status class,
//! error kind — and the per-endpoint handles are resolved once when a config is built
//! ([`EndpointMetrics`]), not per request.

pub mod cache;

mod eg_series;

use std::sync::OnceLock;

use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    Opts, Registry, TextEncoder,
};

/// Seconds; tiles are served in microseconds to seconds.
pub(crate) const DURATION_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Status classes a duration is filed under.
pub const STATUS_CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "none"];

/// Kinds of upstream failure.
pub const UPSTREAM_ERROR_KINDS: [&str; 9] = [
    "refused",
    "connect_timeout",
    "read_timeout",
    "reset",
    "tls",
    "dns",
    "other",
    "unavailable",
    "service_exception",
];

/// The kind of an attempt at a url whose name has no address.
pub const DNS: usize = 5;

/// The kind of a request no url could take (all unhealthy or ejected).
pub const UNAVAILABLE: usize = 7;

/// The kind of an answer that was an OGC service exception (see [`crate::cache::exception`]).
pub const SERVICE_EXCEPTION: usize = 8;

/// Why a client connection closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnClose {
    /// The client closed it, or the exchange ended it (`Connection: close`, an error).
    Done,
    /// A request head did not arrive in time (or a connection never sent one).
    HeaderTimeout,
    /// A keep-alive connection sent no new request in time.
    KeepaliveTimeout,
    /// A request head was larger than the limit.
    HeadTooLarge,
    /// A request head was malformed (answered 400).
    Malformed,
    /// The TLS handshake failed.
    TlsFailed,
    /// The gateway was shutting down.
    Shutdown,
    /// A request body stopped coming for the body timeout (HTTP/2: the connection goes).
    BodyTimeout,
    /// The client abandoned too many of its HTTP/2 streams (a reset flood).
    Abandoned,
    /// An idle keep-alive connection closed to make room at the connection cap.
    Shed,
}

impl ConnClose {
    pub const ALL: [ConnClose; 10] = [
        ConnClose::Done,
        ConnClose::HeaderTimeout,
        ConnClose::KeepaliveTimeout,
        ConnClose::HeadTooLarge,
        ConnClose::Malformed,
        ConnClose::TlsFailed,
        ConnClose::Shutdown,
        ConnClose::BodyTimeout,
        ConnClose::Abandoned,
        ConnClose::Shed,
    ];

    pub fn label(self) -> &'static str {
        match self {
            ConnClose::Done => "done",
            ConnClose::HeaderTimeout => "header_timeout",
            ConnClose::KeepaliveTimeout => "keepalive_timeout",
            ConnClose::HeadTooLarge => "head_too_large",
            ConnClose::Malformed => "malformed",
            ConnClose::TlsFailed => "tls_failed",
            ConnClose::Shutdown => "shutdown",
            ConnClose::BodyTimeout => "body_timeout",
            ConnClose::Abandoned => "abandoned_streams",
            ConnClose::Shed => "shed",
        }
    }
}

pub struct Metrics {
    pub registry: Registry,
    /// Kargo's request counter.
    pub eg: IntCounterVec,
    request_duration: HistogramVec,
    upstream_duration: HistogramVec,
    bytes_in: IntCounterVec,
    bytes_out: IntCounterVec,
    pub in_flight: IntGauge,
    upstream_errors: Vec<IntCounter>,
    pub cache_credentials: IntGauge,
    pub cache_hits: IntCounter,
    pub cache_misses: IntCounter,
    pub cache_resync_age: Gauge,
    pub cache_full_loads: IntCounter,
    /// basic-auth's bcrypt checks: the password matched, or not.
    pub password_matched: IntCounter,
    pub password_mismatched: IntCounter,
    pub store_up: IntGauge,
    config_loads_ok: IntCounter,
    config_loads_failed: IntCounter,
    config_last_success: Gauge,
    /// Whether the config on disk is one the last reload refused (see [`Metrics::refused_on_disk`]).
    config_refused_on_disk: IntGauge,
    pub access_log_dropped: IntCounter,
    /// Client connections open.
    pub client_connections: IntGauge,
    client_closed: Vec<IntCounter>,
    /// Times a listener stopped accepting because the connection cap was reached.
    pub client_cap_waits: IntCounter,
    /// Requests that matched no apiEndpoint.
    pub unrouted: EndpointMetrics,
    pub cache: cache::CacheMetrics,
    /// Per service endpoint url: 1 when requests may go to it (healthy, not ejected).
    pub upstream_healthy: prometheus::IntGaugeVec,
    /// Work that brings gauges up to date when metrics are read.
    on_scrape: std::sync::Mutex<Vec<Box<dyn Fn() + Send + Sync>>>,
}

/// The handles of one apiEndpoint, resolved when the config is built.
pub struct EndpointMetrics {
    duration: Vec<Histogram>,
    upstream: Histogram,
    bytes_in: IntCounter,
    bytes_out: IntCounter,
    pub cache: cache::EndpointCache,
}

impl std::fmt::Debug for EndpointMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "EndpointMetrics")
    }
}

impl EndpointMetrics {
    /// Records one finished request.
    pub fn record(
        &self,
        status: u16,
        seconds: f64,
        upstream_seconds: Option<f64>,
        bytes_in: usize,
        bytes_out: usize,
    ) {
        let class = match status {
            100..=199 => 0,
            200..=299 => 1,
            300..=399 => 2,
            400..=499 => 3,
            500..=599 => 4,
            _ => 5,
        };
        self.duration[class].observe(seconds);
        if let Some(u) = upstream_seconds {
            self.upstream.observe(u);
        }
        if bytes_in > 0 {
            self.bytes_in.inc_by(bytes_in as u64);
        }
        if bytes_out > 0 {
            self.bytes_out.inc_by(bytes_out as u64);
        }
    }
}

pub(crate) fn must<T>(r: prometheus::Result<T>) -> T {
    r.unwrap_or_else(|e| panic!("static metric definition: {e}"))
}

impl Metrics {
    fn new() -> Metrics {
        let registry = Registry::new();
        let reg = |c: Box<dyn prometheus::core::Collector>| must(registry.register(c));
        let eg = must(IntCounterVec::new(
            Opts::new(
                "eg",
                "Requests through pipelines that have the metrics policy (Kargo's counter)",
            ),
            &["type", "status_code", "consumer", "api_endpoint"],
        ));
        reg(Box::new(eg.clone()));
        let request_duration = must(HistogramVec::new(
            HistogramOpts::new(
                "tollgate_request_duration_seconds",
                "Time from request to response completion",
            )
            .buckets(DURATION_BUCKETS.to_vec()),
            &["api_endpoint", "status_class"],
        ));
        reg(Box::new(request_duration.clone()));
        let upstream_duration = must(HistogramVec::new(
            HistogramOpts::new(
                "tollgate_upstream_duration_seconds",
                "Time from choosing the upstream to its response header",
            )
            .buckets(DURATION_BUCKETS.to_vec()),
            &["api_endpoint"],
        ));
        reg(Box::new(upstream_duration.clone()));
        let bytes_in = must(IntCounterVec::new(
            Opts::new(
                "tollgate_request_body_bytes_total",
                "Request body bytes read from clients",
            ),
            &["api_endpoint"],
        ));
        reg(Box::new(bytes_in.clone()));
        let bytes_out = must(IntCounterVec::new(
            Opts::new(
                "tollgate_response_body_bytes_total",
                "Response body bytes sent to clients",
            ),
            &["api_endpoint"],
        ));
        reg(Box::new(bytes_out.clone()));
        let in_flight = must(IntGauge::new(
            "tollgate_requests_in_flight",
            "Requests being served",
        ));
        reg(Box::new(in_flight.clone()));
        let errors = must(IntCounterVec::new(
            Opts::new(
                "tollgate_upstream_errors_total",
                "Upstream failures by kind",
            ),
            &["kind"],
        ));
        reg(Box::new(errors.clone()));
        let upstream_errors = UPSTREAM_ERROR_KINDS
            .iter()
            .map(|k| errors.with_label_values(&[k]))
            .collect();
        let cache_credentials = must(IntGauge::new(
            "tollgate_consumer_cache_credentials",
            "Credentials held by the consumer cache",
        ));
        reg(Box::new(cache_credentials.clone()));
        let cache_hits = must(IntCounter::new(
            "tollgate_consumer_cache_hits_total",
            "Credential lookups answered by the cache",
        ));
        reg(Box::new(cache_hits.clone()));
        let cache_misses = must(IntCounter::new(
            "tollgate_consumer_cache_misses_total",
            "Credential lookups of unknown keys",
        ));
        reg(Box::new(cache_misses.clone()));
        let cache_resync_age = must(Gauge::new(
            "tollgate_consumer_cache_last_resync_age_seconds",
            "Seconds since the consumer cache last loaded everything (-1: never)",
        ));
        reg(Box::new(cache_resync_age.clone()));
        let cache_full_loads = must(IntCounter::new(
            "tollgate_consumer_cache_full_loads_total",
            "Full loads of the consumer cache from the store (the start's, the periodic resyncs, those after a subscription or lost messages)",
        ));
        reg(Box::new(cache_full_loads.clone()));
        let password_checks = must(IntCounterVec::new(
            Opts::new(
                "tollgate_password_checks_total",
                "basic-auth's bcrypt checks of passwords not checked before, by result",
            ),
            &["result"],
        ));
        reg(Box::new(password_checks.clone()));
        let store_up = must(IntGauge::new(
            "tollgate_store_up",
            "Whether the consumer store answers (1) or not (0)",
        ));
        reg(Box::new(store_up.clone()));
        let loads = must(IntCounterVec::new(
            Opts::new("tollgate_config_loads_total", "Config loads by result"),
            &["result"],
        ));
        reg(Box::new(loads.clone()));
        let config_refused_on_disk = must(IntGauge::new(
            "tollgate_config_refused_on_disk",
            "Whether the config on disk is one the last reload refused (1; a restart would fail on it) or not (0)",
        ));
        reg(Box::new(config_refused_on_disk.clone()));
        let config_last_success = must(Gauge::new(
            "tollgate_config_last_reload_success_timestamp_seconds",
            "When the config in force was loaded (Unix time)",
        ));
        reg(Box::new(config_last_success.clone()));
        let access_log_dropped = must(IntCounter::new(
            "tollgate_access_log_dropped_total",
            "Access log lines dropped because the writer fell behind",
        ));
        reg(Box::new(access_log_dropped.clone()));
        let client_connections = must(IntGauge::new(
            "tollgate_client_connections",
            "Client connections open",
        ));
        reg(Box::new(client_connections.clone()));
        let closed = must(IntCounterVec::new(
            Opts::new(
                "tollgate_client_connections_closed_total",
                "Client connections closed, by reason",
            ),
            &["reason"],
        ));
        reg(Box::new(closed.clone()));
        let client_cap_waits = must(IntCounter::new(
            "tollgate_client_connection_cap_reached_total",
            "Times a listener stopped accepting because its connection cap was reached, and HTTP/2 streams refused for it",
        ));
        reg(Box::new(client_cap_waits.clone()));
        let cache = cache::CacheMetrics::new(&registry);
        let upstream_healthy = must(prometheus::IntGaugeVec::new(
            Opts::new(
                "tollgate_upstream_healthy",
                "Whether requests may go to a url of a service endpoint (1) or not (0: unhealthy or ejected)",
            ),
            &["service", "url"],
        ));
        reg(Box::new(upstream_healthy.clone()));
        let unrouted = EndpointMetrics {
            duration: STATUS_CLASSES
                .iter()
                .map(|c| request_duration.with_label_values(&["", c]))
                .collect(),
            upstream: upstream_duration.with_label_values(&[""]),
            bytes_in: bytes_in.with_label_values(&[""]),
            bytes_out: bytes_out.with_label_values(&[""]),
            cache: cache.endpoint(""),
        };
        Metrics {
            registry,
            eg,
            request_duration,
            upstream_duration,
            bytes_in,
            bytes_out,
            in_flight,
            upstream_errors,
            cache_credentials,
            cache_hits,
            cache_misses,
            cache_resync_age,
            cache_full_loads,
            password_matched: password_checks.with_label_values(&["match"]),
            password_mismatched: password_checks.with_label_values(&["mismatch"]),
            store_up,
            config_loads_ok: loads.with_label_values(&["ok"]),
            config_loads_failed: loads.with_label_values(&["failed"]),
            config_last_success,
            config_refused_on_disk,
            access_log_dropped,
            client_connections,
            client_closed: ConnClose::ALL
                .iter()
                .map(|r| closed.with_label_values(&[r.label()]))
                .collect(),
            client_cap_waits,
            unrouted,
            cache,
            upstream_healthy,
            on_scrape: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// The handles of an apiEndpoint.
    pub fn endpoint(&self, name: &str) -> EndpointMetrics {
        EndpointMetrics {
            duration: STATUS_CLASSES
                .iter()
                .map(|c| self.request_duration.with_label_values(&[name, c]))
                .collect(),
            upstream: self.upstream_duration.with_label_values(&[name]),
            bytes_in: self.bytes_in.with_label_values(&[name]),
            bytes_out: self.bytes_out.with_label_values(&[name]),
            cache: self.cache.endpoint(name),
        }
    }

    /// Counts one finished request of a metered pipeline in Kargo's `eg` counter.
    pub fn count(&self, status: u16, consumer: Option<&str>, endpoint: &str) {
        let consumer = consumer.filter(|c| !c.is_empty()).unwrap_or("anonymous");
        eg_series::inc(&self.eg, status, consumer, endpoint);
    }

    /// Counts an upstream failure of one of [`UPSTREAM_ERROR_KINDS`].
    pub fn upstream_error(&self, kind: usize) {
        if let Some(c) = self.upstream_errors.get(kind) {
            c.inc();
        }
    }

    /// Counts a closed client connection.
    pub fn client_closed(&self, why: ConnClose) {
        if let Some(i) = ConnClose::ALL.iter().position(|r| *r == why) {
            self.client_closed[i].inc();
        }
    }

    /// The config on disk is one the last reload refused (`true`), or is in force again.
    pub fn refused_on_disk(&self, refused: bool) {
        self.config_refused_on_disk.set(i64::from(refused));
    }

    pub fn config_loaded(&self, ok: bool) {
        if ok {
            self.config_loads_ok.inc();
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64());
            self.config_last_success.set(now);
        } else {
            self.config_loads_failed.inc();
        }
    }

    /// Adds work that brings gauges up to date before metrics are read.
    pub fn on_scrape(&self, f: Box<dyn Fn() + Send + Sync>) {
        self.on_scrape
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(f);
    }

    fn refresh(&self) {
        self.cache.refresh();
        for f in self
            .on_scrape
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            f();
        }
    }

    /// The metrics as they are now, gauges brought up to date. One scrape at a time: a gauge
    /// rebuilt for a scrape (the urls' health, reset and set again) would be read half
    /// rebuilt by another (series missing from it).
    fn gather(&self) -> Vec<prometheus::proto::MetricFamily> {
        static SCRAPE: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _one = SCRAPE.lock().unwrap_or_else(|p| p.into_inner());
        self.refresh();
        self.registry.gather()
    }

    /// The Prometheus text exposition.
    pub fn text(&self) -> String {
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.gather(), &mut out) {
            log::error!("cannot encode metrics: {e}");
        }
        String::from_utf8(out).unwrap_or_default()
    }

    /// The metrics as JSON, in prom-client's `getMetricsAsJSON` shape.
    pub fn json(&self) -> serde_json::Value {
        let families = self.gather();
        serde_json::Value::Array(
            families
                .iter()
                .map(|f| {
                    let values: Vec<serde_json::Value> = f
                        .get_metric()
                        .iter()
                        .map(|m| {
                            let labels: serde_json::Map<String, serde_json::Value> = m
                                .get_label()
                                .iter()
                                .map(|l| {
                                    (
                                        l.name().to_string(),
                                        serde_json::Value::String(l.value().to_string()),
                                    )
                                })
                                .collect();
                            let value = match f.get_field_type() {
                                prometheus::proto::MetricType::COUNTER => {
                                    m.get_counter().get_value()
                                }
                                prometheus::proto::MetricType::HISTOGRAM => {
                                    m.get_histogram().get_sample_count() as f64
                                }
                                _ => m.get_gauge().get_value(),
                            };
                            serde_json::json!({"value": value, "labels": labels})
                        })
                        .collect();
                    serde_json::json!({
                        "help": f.help(),
                        "name": f.name(),
                        "type": format!("{:?}", f.get_field_type()).to_lowercase(),
                        "values": values,
                        "aggregator": "sum",
                    })
                })
                .collect(),
        )
    }
}

/// The process-wide metrics.
pub fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}
