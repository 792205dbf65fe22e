//! `rate-limit`, as EG's (express-rate-limit 2): a fixed window per key (`rateLimitBy`, default
//! the client IP), `X-RateLimit-Limit` / `-Remaining` / `-Reset` on every answer, and past `max`
//! a `statusCode` (429) with `Retry-After` and `message` — as JSON `{"message": ...}` when the
//! client prefers JSON, else as text. Delaying (`delayAfter`, `delayMs`) is off unless set.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http::header::{HeaderName, HeaderValue, ACCEPT, RETRY_AFTER};
use serde::Deserialize;

use crate::config::error::{ConfigErrors, Pos};
use crate::config::node::Node;
use crate::counters::Counters;
use crate::pipeline::context::{HeaderEdit, Reply};
use crate::pipeline::expr::{ip_text, Template};
use crate::pipeline::{Exchange, Outcome, Policy, Request};

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Params {
    #[serde(default = "default_max")]
    max: u64,
    #[serde(default = "default_window")]
    window_ms: u64,
    rate_limit_by: Option<String>,
    #[serde(default = "default_status")]
    status_code: u16,
    #[serde(default = "default_message")]
    message: String,
    #[serde(default = "default_true")]
    headers: bool,
    #[serde(default)]
    delay_after: u64,
    #[serde(default)]
    delay_ms: u64,
}

fn default_max() -> u64 {
    5
}
fn default_window() -> u64 {
    60_000
}
fn default_status() -> u16 {
    429
}
fn default_message() -> String {
    "Too many requests, please try again later.".into()
}
fn default_true() -> bool {
    true
}

pub struct RateLimit {
    max: u64,
    window: Duration,
    key: Option<Template>,
    status: u16,
    message: String,
    headers: bool,
    delay_after: u64,
    delay: Duration,
    counters: Arc<Counters>,
}

static LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
static REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
static RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");

impl RateLimit {
    pub fn build(
        p: Params,
        action: Option<&Node>,
        pos: &Pos,
        counters: &Arc<Counters>,
        errors: &mut ConfigErrors,
    ) -> Option<RateLimit> {
        if p.window_ms == 0 {
            errors.push(
                super::param_pos(action, "windowMs", pos),
                "policy `rate-limit`: `windowMs` must be more than 0",
            );
            return None;
        }
        let key = match &p.rate_limit_by {
            None => None,
            Some(t) => match Template::parse(t) {
                Ok(t) => Some(t),
                Err(why) => {
                    errors.push(
                        super::param_pos(action, "rateLimitBy", pos),
                        format!("policy `rate-limit` rateLimitBy: {why}"),
                    );
                    return None;
                }
            },
        };
        Some(RateLimit {
            max: p.max,
            window: Duration::from_millis(p.window_ms),
            key,
            status: p.status_code,
            message: p.message,
            headers: p.headers,
            delay_after: p.delay_after,
            delay: Duration::from_millis(p.delay_ms),
            counters: counters.clone(),
        })
    }

    fn key(&self, req: &Request<'_>, x: &Exchange) -> String {
        let raw = match &self.key {
            Some(t) => t.eval(req, x),
            None => req
                .client_ip
                .map(|ip| ip_text(ip).to_string())
                .unwrap_or_default(),
        };
        format!("rl:{raw}")
    }

    fn too_many(&self, req: &Request<'_>) -> Reply {
        let mut reply = if prefers_json(req.header(ACCEPT.as_str())) {
            let mut r = Reply::text(
                self.status,
                serde_json::json!({ "message": self.message }).to_string(),
            );
            r.content_type = Some("application/json; charset=utf-8");
            r
        } else {
            let mut r = Reply::text(self.status, self.message.clone());
            r.content_type = Some("text/html; charset=utf-8");
            r
        };
        reply
            .headers
            .push((http::header::VARY, HeaderValue::from_static("Accept")));
        if self.headers {
            reply.headers.push((
                RETRY_AFTER,
                HeaderValue::from(self.window.as_millis().div_ceil(1000) as u64),
            ));
        }
        reply
    }
}

/// Whether `Accept` ranks JSON above HTML (express's `res.format` with html listed first).
fn prefers_json(accept: Option<&str>) -> bool {
    let Some(accept) = accept else { return false };
    let q_of = |wanted: &[&str]| -> f32 {
        accept
            .split(',')
            .filter_map(|part| {
                let mut it = part.split(';');
                let media = it.next()?.trim().to_ascii_lowercase();
                let q = it
                    .filter_map(|p| p.trim().strip_prefix("q="))
                    .find_map(|q| q.parse::<f32>().ok())
                    .unwrap_or(1.0);
                wanted.contains(&media.as_str()).then_some(q)
            })
            .fold(0.0, f32::max)
    };
    let json = q_of(&["application/json", "application/*"]);
    let html = q_of(&["text/html", "text/*", "*/*"]);
    json > html
}

impl Policy for RateLimit {
    fn on_request(&self, req: &Request<'_>, x: &mut Exchange) -> Outcome {
        let key = self.key(req, x);
        let hit = self.counters.incr(&key, self.window, Instant::now());
        if self.headers {
            let remaining = self.max.saturating_sub(hit.count);
            let reset_in = hit.resets_at.saturating_duration_since(Instant::now());
            let reset_at = SystemTime::now()
                .checked_add(reset_in)
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_secs() + u64::from(d.subsec_nanos() > 0));
            x.response_edits
                .push(HeaderEdit::Set(LIMIT.clone(), HeaderValue::from(self.max)));
            x.response_edits.push(HeaderEdit::Set(
                REMAINING.clone(),
                HeaderValue::from(remaining),
            ));
            x.response_edits
                .push(HeaderEdit::Set(RESET.clone(), HeaderValue::from(reset_at)));
        }
        if self.max > 0 && hit.count > self.max {
            return Outcome::Respond(self.too_many(req));
        }
        if self.delay_after > 0 && !self.delay.is_zero() && hit.count > self.delay_after {
            let times = u32::try_from(hit.count - self.delay_after).unwrap_or(u32::MAX);
            return Outcome::Wait(self.delay.saturating_mul(times));
        }
        Outcome::Continue
    }
}

#[cfg(test)]
mod tests {
    use super::prefers_json;

    #[test]
    fn accept_negotiation() {
        assert!(!prefers_json(None));
        assert!(!prefers_json(Some("*/*")));
        assert!(prefers_json(Some("application/json")));
        assert!(!prefers_json(Some("text/html,application/json")));
        assert!(prefers_json(Some("application/json, text/plain;q=0.5")));
        assert!(!prefers_json(Some("image/png")));
    }
}
