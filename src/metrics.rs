//! The Prometheus registry and Kargo's `eg` counter: `eg{type, status_code, consumer,
//! api_endpoint}`, named exactly as Kargo's metrics plugin named it (no `_total`), so existing
//! Grafana dashboards keep working.

use std::sync::OnceLock;

use prometheus::{Encoder, IntCounterVec, Opts, Registry, TextEncoder};

pub struct Metrics {
    pub registry: Registry,
    /// Kargo's request counter.
    pub eg: IntCounterVec,
}

impl Metrics {
    fn new() -> Metrics {
        let registry = Registry::new();
        let eg = IntCounterVec::new(
            Opts::new(
                "eg",
                "Requests through Express Gateway pipelines that have the metrics policy",
            ),
            &["type", "status_code", "consumer", "api_endpoint"],
        )
        .unwrap_or_else(|e| panic!("static metric definition: {e}"));
        registry
            .register(Box::new(eg.clone()))
            .unwrap_or_else(|e| panic!("static metric registration: {e}"));
        Metrics { registry, eg }
    }

    /// Counts one finished request of a metered pipeline.
    pub fn count(&self, status: u16, consumer: Option<&str>, endpoint: &str) {
        let kind = if (200..300).contains(&status) {
            "SUCCESS"
        } else {
            "FAILED"
        };
        let code = status.to_string();
        let consumer = consumer.filter(|c| !c.is_empty()).unwrap_or("anonymous");
        self.eg
            .with_label_values(&[kind, code.as_str(), consumer, endpoint])
            .inc();
    }

    /// The Prometheus text exposition.
    pub fn text(&self) -> String {
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            log::error!("cannot encode metrics: {e}");
        }
        String::from_utf8(out).unwrap_or_default()
    }

    /// The metrics as JSON, in prom-client's `getMetricsAsJSON` shape.
    pub fn json(&self) -> serde_json::Value {
        let families = self.registry.gather();
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
