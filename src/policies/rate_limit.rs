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
use crate::pipeline::context::{Finish, HeaderEdit, Reply};
use crate::pipeline::expr::{ip_text, Template};
use crate::pipeline::{Exchange, Outcome, Policy, Request};
use crate::store::Store;

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
    /// Unset with `delayMs` unset: no delay (EG's defaults, 1 and 1000, slow every second
    /// request); set one, and the other is EG's default.
    delay_after: Option<u64>,
    delay_ms: Option<u64>,
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

/// What a rate-limit step decides with, shared with its deferred work.
struct Settings {
    max: u64,
    window: Duration,
    status: u16,
    message: String,
    headers: bool,
    delay_after: u64,
    delay: Duration,
}

/// Where the windows are counted: in this process, or in the shared store (Redis), so that
/// several gateways share one limit.
pub enum Windows {
    Memory(Arc<Counters>),
    Shared(Arc<dyn Store>),
}

pub struct RateLimit {
    settings: Arc<Settings>,
    key: Option<Template>,
    windows: Windows,
}

static LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
static REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
static RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");

impl RateLimit {
    pub fn build(
        p: Params,
        action: Option<&Node>,
        pos: &Pos,
        windows: Windows,
        errors: &mut ConfigErrors,
    ) -> Option<RateLimit> {
        if p.window_ms == 0 {
            errors.push(
                super::param_pos(action, "windowMs", pos),
                "policy `rate-limit`: `windowMs` must be more than 0",
            );
            return None;
        }
        super::final_status(
            "rate-limit",
            "statusCode",
            p.status_code,
            action,
            pos,
            errors,
        )?;
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
            settings: Arc::new(Settings {
                max: p.max,
                window: Duration::from_millis(p.window_ms),
                status: p.status_code,
                message: p.message,
                headers: p.headers,
                delay_after: match (p.delay_after, p.delay_ms) {
                    (None, None) => 0,
                    (after, _) => after.unwrap_or(1),
                },
                delay: Duration::from_millis(match (p.delay_after, p.delay_ms) {
                    (None, None) => 0,
                    (_, ms) => ms.unwrap_or(1000),
                }),
            }),
            key,
            windows,
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
}

impl Settings {
    /// The outcome and the headers for the `count`-th hit of a window ending in `resets_in`.
    fn decide(
        &self,
        count: u64,
        resets_in: Duration,
        wants_json: bool,
    ) -> (Outcome, Vec<HeaderEdit>) {
        let mut edits = Vec::new();
        if self.headers {
            let reset_at = SystemTime::now()
                .checked_add(resets_in)
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_secs() + u64::from(d.subsec_nanos() > 0));
            edits.push(HeaderEdit::Set(LIMIT.clone(), HeaderValue::from(self.max)));
            edits.push(HeaderEdit::Set(
                REMAINING.clone(),
                HeaderValue::from(self.max.saturating_sub(count)),
            ));
            edits.push(HeaderEdit::Set(RESET.clone(), HeaderValue::from(reset_at)));
        }
        if self.max > 0 && count > self.max {
            return (Outcome::Respond(self.too_many(wants_json)), edits);
        }
        if self.delay_after > 0 && !self.delay.is_zero() && count > self.delay_after {
            let times = u32::try_from(count - self.delay_after).unwrap_or(u32::MAX);
            return (Outcome::Wait(self.delay.saturating_mul(times)), edits);
        }
        (Outcome::Continue, edits)
    }

    fn too_many(&self, wants_json: bool) -> Reply {
        let (mut reply, content_type) = if wants_json {
            let r = Reply::text(
                self.status,
                serde_json::json!({ "message": self.message }).to_string(),
            );
            (r, "application/json; charset=utf-8")
        } else {
            let r = Reply::text(self.status, self.message.clone());
            (r, "text/html; charset=utf-8")
        };
        // (None for a status without a body.)
        if reply.content_type.is_some() {
            reply.content_type = Some(content_type);
        }
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

/// Whether `Accept` ranks JSON above HTML as Express's `res.format` (html listed first) ranks
/// them (the negotiator): by q, then by how specific the range that takes each is (exact, then
/// `type/*`, then `*/*`), then by the range's place in the header; a tie is HTML's.
fn prefers_json(accept: Option<&str>) -> bool {
    let Some(accept) = accept else { return false };
    // The best (q, specificity, -place) of the ranges that take `kind/sub`.
    let rank = |kind: &str, sub: &str| -> Option<(f32, u8, isize)> {
        accept
            .split(',')
            .enumerate()
            .filter_map(|(place, part)| {
                let mut it = part.split(';');
                let media = it.next()?.trim().to_ascii_lowercase();
                let q = it
                    .filter_map(|p| p.trim().strip_prefix("q="))
                    .find_map(|q| q.parse::<f32>().ok())
                    .unwrap_or(1.0);
                let (t, st) = media.split_once('/')?;
                let specific = match (t, st) {
                    _ if t == kind && st == sub => 2,
                    (_, "*") if t == kind => 1,
                    ("*", "*") => 0,
                    _ => return None,
                };
                (q > 0.0).then_some((q, specific, -(place as isize)))
            })
            .max_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal))
    };
    match (rank("application", "json"), rank("text", "html")) {
        (Some(json), Some(html)) => json.partial_cmp(&html) == Some(std::cmp::Ordering::Greater),
        (Some(_), None) => true,
        _ => false,
    }
}

impl Policy for RateLimit {
    fn on_request(&self, req: &Request<'_>, x: &mut Exchange) -> Outcome {
        if x.refresh {
            // The gateway's own request (a stale tile's refresh): the client's was counted.
            return Outcome::Continue;
        }
        let key = self.key(req, x);
        let wants_json = prefers_json(req.header(ACCEPT.as_str()));
        match &self.windows {
            Windows::Memory(counters) => {
                let now = Instant::now();
                let hit = counters.incr(&key, self.settings.window, now);
                let (outcome, edits) = self.settings.decide(
                    hit.count,
                    hit.resets_at.saturating_duration_since(now),
                    wants_json,
                );
                x.response_edits.extend(edits);
                outcome
            }
            Windows::Shared(store) => {
                let store = store.clone();
                let settings = self.settings.clone();
                Outcome::Defer(Box::pin(async move {
                    let (outcome, edits) = match store.incr_window(&key, settings.window).await {
                        Ok(w) => settings.decide(w.count, w.resets_in, wants_json),
                        Err(e) => {
                            // Better to serve tiles unlimited for a moment than to refuse them all.
                            log::warn!("rate-limit: {e}; letting the request through");
                            (Outcome::Continue, Vec::new())
                        }
                    };
                    Box::new(move |x: &mut Exchange| {
                        x.response_edits.extend(edits);
                        outcome
                    }) as Finish
                }))
            }
        }
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
        // As Express's negotiator: an exact range over a wildcard one of the same q, and the
        // earlier of two exact ones (axios sends the first).
        assert!(prefers_json(Some("application/json, text/plain, */*")));
        assert!(prefers_json(Some("application/json, text/html")));
        assert!(prefers_json(Some("text/*, application/json")));
        assert!(prefers_json(Some("*/*;q=0.5, application/json;q=0.5")));
        assert!(!prefers_json(Some("application/json;q=0.5, text/html")));
        assert!(!prefers_json(Some("application/json;q=0, */*")));
    }
}
