//! `rate-limit`, as EG's (express-rate-limit 2): a fixed window per key (`rateLimitBy`, default
//! the client IP), `X-RateLimit-Limit` / `-Remaining` / `-Reset` on every answer, and past `max`
//! a `statusCode` (429) with `Retry-After` and `message` — as JSON `{"message": ...}` when the
//! client prefers JSON, else as text. Delaying (`delayAfter`, `delayMs`) is off unless set.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http::header::{HeaderName, HeaderValue, ACCEPT, RETRY_AFTER};
use serde::Deserialize;

use crate::config::error::{ConfigErrors, Pos};
use crate::config::node::Node;
use crate::counters::Counters;
use crate::pipeline::context::{Finish, HeaderEdit, Reply};
use crate::pipeline::expr::Template;
use crate::pipeline::{Exchange, Outcome, Policy, Request};
use crate::store::Store;

/// The longest `windowMs`: 2^53 - 1, the largest whole number JavaScript holds exactly.
pub const MAX_WINDOW_MS: u64 = (1 << 53) - 1;

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
        // At most the largest whole number EG's JavaScript holds: a larger one wrapped to a
        // negative expiry in Redis, which deleted each count as it was made (nothing limited).
        if p.window_ms == 0 || p.window_ms > MAX_WINDOW_MS {
            errors.push(
                super::param_pos(action, "windowMs", pos),
                format!("policy `rate-limit`: `windowMs` must be from 1 to {MAX_WINDOW_MS}"),
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
            // EG keys by the client's address unless `rateLimitBy` is truthy: an empty one (a
            // variable set to nothing) is no template, not one window for everyone.
            None => None,
            Some(t) if t.is_empty() => None,
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
                .map(crate::pipeline::expr::express_ip)
                .unwrap_or_default(),
        };
        window_key(&raw)
    }
}

/// Adds a step's headers to the answer's, in place of an earlier step's of the same names (a
/// later step's count is the one EG's answer says: its `setHeader` replaced the earlier).
fn put(x: &mut Exchange, edits: Vec<HeaderEdit>) {
    if !edits.is_empty() {
        x.response_edits.retain(|e| {
            !(matches!(e, HeaderEdit::Default(..)) && edits.iter().any(|n| n.name() == e.name()))
        });
        x.response_edits.extend(edits);
    }
}

/// The longest `rateLimitBy` value kept as it is in a window's key: a longer one (a header a
/// client fills) is keyed by its SHA-256, so that the windows of values a client makes up
/// hold a bounded size each, in memory or in Redis.
const LONGEST_KEY: usize = 128;

/// A window's key, `rl:<value>` as EG's (so EG and tollgate share a Redis's windows), but for
/// a long value, or one that looks like a digest's key (no value shares another's window).
fn window_key(raw: &str) -> String {
    if raw.len() <= LONGEST_KEY && !raw.starts_with("sha256:") {
        return format!("rl:{raw}");
    }
    use sha2::{Digest, Sha256};
    format!(
        "rl:sha256:{}",
        crate::wire::hex(&Sha256::digest(raw.as_bytes()))
    )
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
            // The upstream's own wins, as over EG's (http-proxy sets the upstream's headers
            // after the policy set its own); of two steps', the later (see [`put`]).
            edits.push(HeaderEdit::Default(
                LIMIT.clone(),
                HeaderValue::from(self.max),
            ));
            edits.push(HeaderEdit::Default(
                REMAINING.clone(),
                HeaderValue::from(self.max.saturating_sub(count)),
            ));
            edits.push(HeaderEdit::Default(
                RESET.clone(),
                HeaderValue::from(reset_at),
            ));
        }
        if self.max > 0 && count > self.max {
            return (Outcome::Respond(self.too_many(wants_json)), edits);
        }
        if self.delay_after > 0 && !self.delay.is_zero() && count > self.delay_after {
            let times = u32::try_from(count - self.delay_after).unwrap_or(u32::MAX);
            // Never past the window's end, when the count starts again (EG's grows without
            // bound: a client that left still held its connection's place for hours).
            let wait = self.delay.saturating_mul(times).min(resets_in);
            return (Outcome::Wait(wait), edits);
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
/// them (the negotiator): each type takes the most specific range that matches it (exact, then
/// `type/*`, then `*/*`; of equals the higher q, then the earlier), and is not acceptable when
/// that range's q is 0; then the higher q wins, then the more specific range, then the earlier
/// range; a tie is HTML's.
fn prefers_json(accept: Option<&str>) -> bool {
    let Some(accept) = accept else { return false };
    // (q, specificity, -place) of the range that takes `kind/sub`.
    let rank = |kind: &str, sub: &str| -> Option<(f32, u8, isize)> {
        accept
            .split(',')
            .enumerate()
            .filter_map(|(place, part)| {
                let mut it = part.split(';');
                let media = it.next()?.trim().to_ascii_lowercase();
                let q = it
                    .filter_map(|p| {
                        let (name, value) = p.split_once('=')?;
                        name.trim()
                            .eq_ignore_ascii_case("q")
                            .then_some(value.trim())
                    })
                    .find_map(|q| q.parse::<f32>().ok())
                    .unwrap_or(1.0);
                let (t, st) = media.split_once('/')?;
                let specific = match (t, st) {
                    _ if t == kind && st == sub => 2,
                    (_, "*") if t == kind => 1,
                    ("*", "*") => 0,
                    _ => return None,
                };
                Some((q, specific, -(place as isize)))
            })
            .max_by(|a, b| {
                (a.1, a.0, a.2)
                    .partial_cmp(&(b.1, b.0, b.2))
                    .unwrap_or(std::cmp::Ordering::Equal)
            })
            .filter(|(q, _, _)| *q > 0.0)
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
        // (Every `Accept` line, joined as Node's parser joins them.)
        let wants_json = prefers_json(x.header_now(req, &ACCEPT).as_deref());
        match &self.windows {
            Windows::Memory(counters) => {
                let now = Instant::now();
                let hit = counters.incr(&key, self.settings.window, now);
                let (outcome, edits) = self.settings.decide(
                    hit.count,
                    hit.resets_at.saturating_duration_since(now),
                    wants_json,
                );
                put(x, edits);
                outcome
            }
            Windows::Shared(store) => {
                match STORE_ASKED.now() {
                    Asking::Store => {}
                    // The store failed a moment ago: the request goes on at once, uncounted,
                    // rather than wait for the store's timeout too.
                    Asking::Nobody => return Outcome::Continue,
                    Asking::Trial => {
                        let (store, window) = (store.clone(), self.settings.window);
                        tokio::spawn(async move {
                            match store.incr_window(&key, window).await {
                                Ok(_) => STORE_ASKED.answered(),
                                Err(e) => STORE_ASKED.failed(&e, true),
                            }
                        });
                        return Outcome::Continue;
                    }
                }
                let store = store.clone();
                let settings = self.settings.clone();
                Outcome::Defer(Box::pin(async move {
                    let (outcome, edits) = match store.incr_window(&key, settings.window).await {
                        Ok(w) => settings.decide(w.count, w.resets_in, wants_json),
                        Err(e) => {
                            // Better to serve tiles unlimited for a moment than to refuse them all.
                            STORE_ASKED.failed(&e, false);
                            (Outcome::Continue, Vec::new())
                        }
                    };
                    Box::new(move |x: &mut Exchange| {
                        put(x, edits);
                        outcome
                    }) as Finish
                }))
            }
        }
    }
}

/// Whether the shared windows' store is asked: not for [`STORE_PAUSE`] after it failed — the
/// requests meanwhile go on uncounted at once, where each waited for the store's timeout (2 s
/// a request with Redis frozen, and every request of a keep-alive connection behind it) — then
/// by one request's count, in the background, until the store answers again.
struct StoreAsked {
    /// [`crate::clock::coarse_millis`] until which the store is not asked; 0: asked.
    paused_until: AtomicU64,
}

/// How long requests go on uncounted after the store failed before one asks it again.
const STORE_PAUSE: Duration = Duration::from_secs(1);

/// The most a request that asks a failed store again waits for its answer (the store's own
/// timeouts bound it: a connection's 3 s and two commands' 2 s each) before another may ask.
const STORE_TRIAL: Duration = Duration::from_secs(10);

static STORE_ASKED: StoreAsked = StoreAsked {
    paused_until: AtomicU64::new(0),
};

/// How a request's window is counted now.
enum Asking {
    /// In the store, the request waiting for its count.
    Store,
    /// Not: the store failed a moment ago.
    Nobody,
    /// In the store in the background (the request goes on): whether the store that failed
    /// answers again.
    Trial,
}

impl StoreAsked {
    fn now(&self) -> Asking {
        let until = self.paused_until.load(Ordering::Relaxed);
        if until == 0 {
            return Asking::Store;
        }
        let now = crate::clock::coarse_millis();
        if now < until {
            return Asking::Nobody;
        }
        // One request tries the store again; the others go on until it has its answer.
        let next = now + STORE_TRIAL.as_millis() as u64;
        match self
            .paused_until
            .compare_exchange(until, next, Ordering::Relaxed, Ordering::Relaxed)
        {
            Ok(_) => Asking::Trial,
            Err(_) => Asking::Nobody,
        }
    }

    fn answered(&self) {
        if self.paused_until.swap(0, Ordering::Relaxed) != 0 {
            log::info!("rate-limit: the store answers again; requests are counted");
        }
    }

    /// The store failed a request (`trial`: the one that asked it again).
    fn failed(&self, e: &dyn std::fmt::Display, trial: bool) {
        let until = crate::clock::coarse_millis() + STORE_PAUSE.as_millis() as u64;
        // A trial's failure sets the next; another's never sets it sooner than it is (one
        // that failed while a trial runs would cut the trial's time short, and another would
        // begin beside it).
        let before = if trial {
            self.paused_until.swap(until, Ordering::Relaxed)
        } else {
            self.paused_until.fetch_max(until, Ordering::Relaxed)
        };
        if before == 0 {
            log::warn!(
                "rate-limit: {e}; requests go on uncounted until the store answers (asked again every {} s)",
                STORE_PAUSE.as_secs()
            );
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
        // The most specific range decides a type's q, a refusal (q=0) included.
        assert!(prefers_json(Some("text/html;q=0, */*")));
        assert!(prefers_json(Some(
            "text/html;q=0.1, application/json;q=0.3, */*"
        )));
        assert!(prefers_json(Some(
            "application/json;Q=0.9, text/html;Q=0.5"
        )));
    }

    fn built(action: serde_json::Value) -> super::RateLimit {
        let params = serde_json::from_value(action).expect("params");
        let pos = crate::config::error::Pos::new(&"gateway.config.yml".into(), 1, 1);
        let windows = super::Windows::Memory(Default::default());
        let mut errors = crate::config::error::ConfigErrors::default();
        super::RateLimit::build(params, None, &pos, windows, &mut errors).expect("valid")
    }

    /// An empty `rateLimitBy` (a variable set to nothing) keys by the client's address, as EG
    /// (which reads it only when truthy), not one window for every client.
    #[test]
    fn an_empty_rate_limit_by_is_the_client_address() {
        assert!(built(serde_json::json!({"rateLimitBy": ""})).key.is_none());
        assert!(built(serde_json::json!({"rateLimitBy": "x"})).key.is_some());
    }

    /// A delay never outlasts the window, whose end starts the count again.
    #[test]
    fn a_delay_ends_with_its_window() {
        let rl = built(serde_json::json!({"max": 0, "delayAfter": 1, "delayMs": 1000}));
        let ends = std::time::Duration::from_secs(3);
        for (count, wait) in [(2, 1), (3, 2), (4, 3), (1000, 3)] {
            let (outcome, _) = rl.settings.decide(count, ends, false);
            let crate::pipeline::Outcome::Wait(w) = outcome else {
                panic!("{count}: not a wait");
            };
            assert_eq!(w, std::time::Duration::from_secs(wait), "{count}");
        }
    }

    #[test]
    fn long_values_are_keyed_by_their_digest() {
        assert_eq!(super::window_key("192.0.2.1"), "rl:192.0.2.1");
        let long = "k".repeat(40_000);
        let key = super::window_key(&long);
        assert!(key.starts_with("rl:sha256:") && key.len() == 74, "{key}");
        assert_ne!(key, super::window_key(&"k".repeat(40_001)));
        // A value written as a digest's key is hashed too: it shares no long value's window.
        assert_ne!(super::window_key(&key["rl:".len()..]), key);
    }
}
