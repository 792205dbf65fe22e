//! The `cache` policy: a pipeline step, normally between `scopes` and `proxy`. A request that
//! reaches it has passed every step before it (authentication, scopes), and only such a request
//! may be answered from the cache or fill it; the step itself only says how. The lookup, the
//! fill and the freshness rules run in the proxy phases ([`super`]).

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use crate::pipeline::{Exchange, Outcome, Policy, Request};

/// The step's parameters, with their defaults.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Params {
    /// Seconds a response stays fresh when the upstream says nothing (no `Cache-Control`
    /// max-age or s-maxage, no `Expires`).
    #[serde(default = "default_ttl")]
    ttl: u64,
    /// Clamps on the upstream's own freshness, in seconds.
    #[serde(default)]
    min_ttl: u64,
    #[serde(default = "default_max_ttl")]
    max_ttl: u64,
    /// The statuses that are stored.
    #[serde(default = "default_statuses")]
    statuses: Vec<u16>,
    /// Only these query parameters make the key (names compared without case); the others are
    /// ignored. Default: all of them.
    key_params: Option<Vec<String>>,
    /// Query parameters left out of the key (cache busters), names compared without case.
    #[serde(default)]
    ignore_params: Vec<String>,
    /// Seconds a stale response is served while it is refreshed in the background, unless the
    /// upstream's `stale-while-revalidate` says otherwise.
    #[serde(default = "default_swr")]
    stale_while_revalidate: u32,
    /// Seconds a stale response is served when the upstream is down or answers 5xx, unless the
    /// upstream's `stale-if-error` says otherwise.
    #[serde(default = "default_sie")]
    stale_if_error: u32,
    /// The largest response body stored, in bytes.
    #[serde(default = "default_max_object_size")]
    max_object_size: u64,
    /// Seconds concurrent misses of one object wait for the request fetching it.
    #[serde(default = "default_lock_timeout")]
    lock_timeout: f64,
    /// The miss from which on a tile is stored (nginx's `proxy_cache_min_uses`): 1 stores it
    /// on its first; 2 leaves a tile asked for once to the upstream alone.
    #[serde(default = "default_min_uses")]
    min_uses: u8,
    /// Every request through the step asks for a map or a tile (an XYZ server whose paths
    /// have no extension): an XML answer is a service exception whatever its path.
    #[serde(default)]
    tiles_only: bool,
}

fn default_ttl() -> u64 {
    300
}
fn default_max_ttl() -> u64 {
    7 * 24 * 3600
}
fn default_statuses() -> Vec<u16> {
    vec![200, 203, 204, 300, 301, 308, 404, 410]
}
fn default_swr() -> u32 {
    60
}
fn default_sie() -> u32 {
    24 * 3600
}
/// The largest `maxObjectSize`: the memory tier weighs an object in KiB in 16 bits (64 MiB
/// with its head), and every stored object passes through it.
const MAX_OBJECT_SIZE: u64 = 60 << 20;

fn default_max_object_size() -> u64 {
    8 * 1024 * 1024
}
fn default_lock_timeout() -> f64 {
    5.0
}
fn default_min_uses() -> u8 {
    1
}

/// A compiled `cache` step.
#[derive(Debug)]
pub struct CacheRule {
    pub ttl: Duration,
    pub min_ttl: Duration,
    pub max_ttl: Duration,
    pub statuses: Vec<u16>,
    /// Lower-case names.
    pub key_params: Option<Vec<String>>,
    /// Lower-case names: the step's ignored parameters.
    pub ignore_params: Vec<String>,
    /// Query parameters that carry credentials (`jwt`, `apiKey`, and those the config's
    /// key-auth and jwt steps read): never in the key, never sent upstream by a fill.
    pub secret_params: Vec<String>,
    /// Request headers that carry credentials (`Authorization`, `Proxy-Authorization`,
    /// `Cookie`, and those the config's key-auth and jwt steps read): never sent upstream by a
    /// fill.
    pub secret_headers: Vec<http::HeaderName>,
    pub stale_while_revalidate: u32,
    pub stale_if_error: u32,
    pub max_object_size: usize,
    pub lock_timeout: Duration,
    /// The miss from which on a tile is stored (1: the first).
    pub min_uses: u8,
    /// Every request through the step asks for a map or a tile (see
    /// [`super::exception::asks_for_map`]).
    pub tiles_only: bool,
}

/// The cache as a request uses it: its step's rule.
#[derive(Clone, Debug)]
pub struct CacheUse {
    pub rule: Arc<CacheRule>,
    /// The store's purges and invalidations when the step ran: what its fetch brings is
    /// stored only if no purge, and no invalidation of its tile, came since.
    pub epoch: super::store::Seen,
    /// A stale copy is served without asking the upstream, which has just failed the tile.
    pub stale_held: bool,
    /// The lookup found the tile expired (its new answer, stored or not, is `EXPIRED`).
    pub expired: bool,
    /// The lookup found the tile stale, and its upstream forbids serving it stale
    /// (`must-revalidate` and its kin): when it cannot be revalidated, the answer is a 504.
    pub stale_forbidden: bool,
    /// The `Vary` names the gateway gives answers that lack them (see
    /// [`super::vary::missing_vary`]) that the tile's stored variant named at the lookup: the
    /// new answer keeps them, or it would take the tile's place for every variant.
    pub stored_varies: super::vary::Kept,
}

pub struct Cache {
    rule: Arc<CacheRule>,
}

impl Cache {
    /// The step, or every problem of its parameters, each with the parameter it is about.
    pub fn build(
        p: Params,
        secret_params: &[String],
        secret_headers: &[http::HeaderName],
    ) -> Result<Cache, Vec<(&'static str, String)>> {
        let mut problems: Vec<(&'static str, String)> = Vec::new();
        if p.min_ttl > p.max_ttl {
            problems.push((
                "minTtl",
                format!(
                    "`minTtl` ({}) is larger than `maxTtl` ({})",
                    p.min_ttl, p.max_ttl
                ),
            ));
        }
        for s in &p.statuses {
            let why = match s {
                200..=599 if ![206, 304].contains(s) => continue,
                // An interim answer, a part of a body or an answer to a condition: none of
                // them answers the next request for the tile.
                100..=199 => format!(
                    "`statuses`: {s} is an interim answer, it cannot be stored (statuses are 200 to 599)"
                ),
                206 | 304 => format!(
                    "`statuses`: {s} answers one request only (a range, a condition), it cannot be stored"
                ),
                _ => format!("`statuses`: {s} is not an HTTP status"),
            };
            problems.push(("statuses", why));
        }
        if !(p.lock_timeout.is_finite() && p.lock_timeout >= 0.0 && p.lock_timeout <= 600.0) {
            problems.push((
                "lockTimeout",
                "`lockTimeout` must be between 0 and 600 seconds".into(),
            ));
        }
        if !(1..=super::sightings::MAX_COUNT).contains(&p.min_uses) {
            problems.push((
                "minUses",
                format!(
                    "`minUses` must be between 1 and {}",
                    super::sightings::MAX_COUNT
                ),
            ));
        }
        if p.max_object_size == 0 {
            problems.push((
                "maxObjectSize",
                "`maxObjectSize` must be more than 0".into(),
            ));
        }
        if p.max_object_size > MAX_OBJECT_SIZE {
            // (A larger answer was read whole, then not kept.)
            problems.push((
                "maxObjectSize",
                format!(
                    "`maxObjectSize` must be at most {MAX_OBJECT_SIZE} (60 MiB): the memory tier holds no larger object"
                ),
            ));
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        let lower = |v: &[String]| v.iter().map(|s| s.to_ascii_lowercase()).collect();
        Ok(Cache {
            rule: Arc::new(CacheRule {
                ttl: Duration::from_secs(p.ttl),
                min_ttl: Duration::from_secs(p.min_ttl),
                max_ttl: Duration::from_secs(p.max_ttl),
                statuses: p.statuses,
                key_params: p.key_params.as_deref().map(lower),
                ignore_params: lower(&p.ignore_params),
                secret_params: secret_params.to_vec(),
                secret_headers: secret_headers.to_vec(),
                stale_while_revalidate: p.stale_while_revalidate,
                stale_if_error: p.stale_if_error,
                max_object_size: usize::try_from(p.max_object_size).unwrap_or(usize::MAX),
                lock_timeout: Duration::from_secs_f64(p.lock_timeout),
                min_uses: p.min_uses,
                tiles_only: p.tiles_only,
            }),
        })
    }
}

impl Policy for Cache {
    fn on_request(&self, _req: &Request<'_>, x: &mut Exchange) -> Outcome {
        x.cache = Some(CacheUse {
            rule: self.rule.clone(),
            epoch: super::get().map(|c| c.store.epoch()).unwrap_or_default(),
            stale_held: false,
            expired: false,
            stale_forbidden: false,
            stored_varies: super::vary::Kept::default(),
        });
        Outcome::Continue
    }
}
