//! Whether an upstream response may be stored, and for how long: HTTP caching as a shared
//! cache does it (`Cache-Control` s-maxage / max-age, then `Expires` less `Date`, then the
//! step's default TTL, clamped by the step; freshness information that is invalid or given
//! twice with different values makes it stale), never `no-store`, `private` (with field
//! names too), `Set-Cookie` (or `Set-Cookie2`), `Vary: *` or a response that varies on
//! credentials; `no-cache` (with field names too) is stored but revalidated before every use.

use std::time::{Duration, SystemTime};

use pingora_cache::cache_control::CacheControl;
use pingora_cache::{CacheMeta, NoCacheReason, RespCacheable};
use pingora_http::ResponseHeader;

use super::policy::CacheRule;
use super::store::head::{age_of, StoredHead};

/// Request headers that carry credentials or a consumer's identity: a response varying on
/// them is one consumer's.
const PERSONAL: &[&str] = &["authorization", "cookie", "eg-consumer-id"];

/// How long a response that may be stored stays fresh, and its stale windows.
pub struct Freshness {
    pub fresh_until: SystemTime,
    pub updated: SystemTime,
    pub stale_while_revalidate: u32,
    pub stale_if_error: u32,
}

/// Decides for one response, as Pingora's cache phases take it. The head is stored as a fill
/// on the fast path stores it (without hop-by-hop and per-exchange headers, the rest in the
/// upstream's order).
pub fn decide(resp: &ResponseHeader, rule: &CacheRule) -> RespCacheable {
    let stored = |resp| StoredHead::of(resp, &super::store::head::NOT_STORED).parse();
    match judge(resp, rule).map(|f| (f, stored(resp))) {
        Ok((f, Ok(header))) => RespCacheable::Cacheable(CacheMeta::new(
            f.fresh_until,
            f.updated,
            f.stale_while_revalidate,
            f.stale_if_error,
            header,
        )),
        Ok((_, Err(_))) => RespCacheable::Uncacheable(NoCacheReason::Custom("head")),
        Err(reason) => RespCacheable::Uncacheable(reason),
    }
}

/// The longest a response stays fresh: 2^31 seconds, what RFC 9111 §1.2.2 has a cache take
/// for a delta-seconds it cannot represent. A step's `ttl` and `maxTtl` near 2^63 seconds
/// overflowed the clock (a panic on every request).
const LONGEST: Duration = Duration::from_secs(1 << 31);

/// Which of the headers [`judge`] reads a response has, from one pass over its names: looking
/// up a header that is not there costs as much as one that is, and most tiles have few of
/// these.
#[derive(Default)]
pub struct Present {
    pub set_cookie: bool,
    pub vary: bool,
    pub cache_control: bool,
    pub expires: bool,
    pub age: bool,
    pub content_encoding: bool,
    pub allow_origin: bool,
}

impl Present {
    pub fn of(headers: &http::HeaderMap) -> Present {
        use http::header::{AGE, CACHE_CONTROL, CONTENT_ENCODING, EXPIRES, SET_COOKIE, VARY};
        let mut p = Present::default();
        for name in headers.keys() {
            if name == CACHE_CONTROL {
                p.cache_control = true;
            } else if name == EXPIRES {
                p.expires = true;
            } else if name == AGE {
                p.age = true;
            } else if name == VARY {
                p.vary = true;
            } else if name == CONTENT_ENCODING {
                p.content_encoding = true;
            } else if name == http::header::ACCESS_CONTROL_ALLOW_ORIGIN {
                p.allow_origin = true;
            } else if name == SET_COOKIE || name.as_str() == "set-cookie2" {
                // RFC 2965's `Set-Cookie2` is obsolete, and still a consumer's cookie.
                p.set_cookie = true;
            }
        }
        p
    }
}

/// Whether one response may be stored, and how long it stays fresh.
pub fn judge(resp: &ResponseHeader, rule: &CacheRule) -> Result<Freshness, NoCacheReason> {
    judge_with(resp, rule, &Present::of(&resp.headers))
}

/// [`judge`], with the headers `resp` has looked for already.
pub fn judge_with(
    resp: &ResponseHeader,
    rule: &CacheRule,
    present: &Present,
) -> Result<Freshness, NoCacheReason> {
    let uncacheable = NoCacheReason::Custom;
    if !rule.statuses.contains(&resp.status.as_u16()) {
        return Err(uncacheable("status"));
    }
    if present.set_cookie {
        return Err(uncacheable("set-cookie"));
    }
    let varies = present
        .vary
        .then(|| resp.headers.get_all(http::header::VARY));
    for vary in varies.into_iter().flatten() {
        let Ok(v) = vary.to_str() else {
            return Err(uncacheable("vary"));
        };
        for field in v.split(',').map(str::trim) {
            // (Nor one varying on a header the route's key-auth or jwt step reads, which a
            // fill does not send: a variant per consumer, keyed by a credential.)
            if field == "*"
                || PERSONAL.iter().any(|p| field.eq_ignore_ascii_case(p))
                || rule
                    .secret_headers
                    .iter()
                    .any(|h| field.eq_ignore_ascii_case(h.as_str()))
            {
                return Err(uncacheable("vary"));
            }
        }
    }
    let cc = present
        .cache_control
        .then(|| CacheControl::from_resp_headers(resp))
        .flatten();
    if let Some(cc) = &cc {
        if cc.no_store() {
            return Err(uncacheable("no-store"));
        }
        // `private="…"` too: a shared cache may not store the fields it names (RFC 9111
        // §5.2.2.7); this one stores none of the response.
        if cc.has_key("private") {
            return Err(uncacheable("private"));
        }
    }
    let now = SystemTime::now();
    // `no-cache="…"` too: the fields it names may not be sent without revalidation (RFC 9111
    // §5.2.2.4); this cache revalidates the whole response before each use.
    let no_cache = cc.as_ref().is_some_and(|cc| cc.has_key("no-cache"));
    // What is left of the lifetime is clamped by the step. (The stored time stays the fetch's
    // own: Pingora takes it for when the object was admitted, which a `Vary` tile's variants
    // are checked against.)
    // What is left of the lifetime, and how long the response has been stale already when
    // none is.
    let (left, stale_by) = if no_cache {
        (Duration::ZERO, Duration::ZERO)
    } else {
        let age = Duration::from_secs(if present.age { age_of(resp) } else { 0 });
        let (left, stale_by) = match lifetime(resp, now, present) {
            // Counted from when the response was made: the age the upstream gave it (a cache
            // before it) has passed of it already (RFC 9111 §4.2.3).
            Some(Lifetime::Made(d)) => (d.saturating_sub(age), age.saturating_sub(d)),
            Some(Lifetime::Left(d)) => (d, Duration::ZERO),
            None => (rule.ttl.saturating_sub(age), age.saturating_sub(rule.ttl)),
        };
        let left = left.clamp(rule.min_ttl, rule.max_ttl).min(LONGEST);
        (left, stale_by.min(LONGEST))
    };
    // The step's stale windows apply unless the upstream forbids serving the response stale
    // (`no-cache`, `must-revalidate`, `proxy-revalidate`, and `s-maxage`, which carries
    // `proxy-revalidate` for a shared cache: RFC 9111 §4.2.4, §5.2.2.10); windows the
    // upstream gives itself apply, but never stale-while-revalidate to `no-cache`, which is
    // revalidated before every use.
    let no_stale = cc.as_ref().is_some_and(forbids_stale);
    let window =
        |upstream: Option<u32>, step: u32| upstream.unwrap_or(if no_stale { 0 } else { step });
    let swr = if no_cache {
        0
    } else {
        window(
            cc.as_ref()
                .and_then(|cc| cc.stale_while_revalidate().ok().flatten()),
            rule.stale_while_revalidate,
        )
    };
    let sie = window(
        cc.as_ref()
            .and_then(|cc| cc.stale_if_error().ok().flatten()),
        rule.stale_if_error,
    );
    // Stale since it became so (at least a second ago): its stale windows count from then, so
    // that an answer that came decades stale (`Age` from a cache before this one) is not
    // served for another `staleWhileRevalidate`. (No further back than past both windows: a
    // time before 1970 is no time the disk tier can write.)
    let fresh_until = if left.is_zero() {
        let past_windows = Duration::from_secs(u64::from(swr.max(sie)) + 1);
        let since = stale_by.clamp(Duration::from_secs(1), past_windows);
        now.checked_sub(since).unwrap_or(std::time::UNIX_EPOCH)
    } else {
        now + left
    };
    Ok(Freshness {
        fresh_until,
        updated: now,
        stale_while_revalidate: swr,
        stale_if_error: sie,
    })
}

/// Whether `cc` forbids serving the response stale (`no-cache`, `must-revalidate`,
/// `proxy-revalidate`, and `s-maxage`, which carries `proxy-revalidate` for a shared cache:
/// RFC 9111 §4.2.4, §5.2.2.10).
fn forbids_stale(cc: &CacheControl) -> bool {
    [
        "no-cache",
        "must-revalidate",
        "proxy-revalidate",
        "s-maxage",
    ]
    .iter()
    .any(|d| cc.has_key(d))
}

/// Whether a stored response must be revalidated before each use once stale (see
/// [`forbids_stale`]): never served stale while another request refreshes it.
pub fn revalidate_each_use(resp: &ResponseHeader) -> bool {
    CacheControl::from_resp_headers(resp).is_some_and(|cc| forbids_stale(&cc))
}

/// The lifetime the upstream gives a response.
#[derive(Debug, PartialEq)]
enum Lifetime {
    /// Counted from when it was made (`s-maxage`, `max-age`, `Expires` less `Date`).
    Made(Duration),
    /// What is left of it from now (`Expires` without a `Date`).
    Left(Duration),
}

/// The lifetime `resp` says it has: `s-maxage`, then `max-age`, then `Expires`; `None` when it
/// says nothing. Freshness information that is invalid or given twice with different values
/// makes the response stale (RFC 9111 §4.2.1, §5.3: an invalid `Expires` is a time past).
fn lifetime(resp: &ResponseHeader, now: SystemTime, present: &Present) -> Option<Lifetime> {
    let directives = present.cache_control.then_some(["s-maxage", "max-age"]);
    for directive in directives.into_iter().flatten() {
        match delta_seconds(resp, directive) {
            Delta::Absent => {}
            Delta::Seconds(s) => return Some(Lifetime::Made(Duration::from_secs(s))),
            Delta::Invalid => return Some(Lifetime::Made(Duration::ZERO)),
        }
    }
    if !present.expires {
        return None;
    }
    let Ok(Some(at)) = one_date(resp, &http::header::EXPIRES) else {
        return Some(Lifetime::Made(Duration::ZERO));
    };
    let date = one_date(resp, &http::header::DATE).ok().flatten();
    Some(match date {
        // The upstream's own clock on both ends: right however far off it is.
        Some(date) => Lifetime::Made(at.duration_since(date).unwrap_or_default()),
        None => Lifetime::Left(at.duration_since(now).unwrap_or_default()),
    })
}

/// The time the lines of header `name` give: `Err` when one is not a date or two give
/// different times (the same time on two lines, as two modules of a server may each write
/// it, is that time).
fn one_date(resp: &ResponseHeader, name: &http::HeaderName) -> Result<Option<SystemTime>, ()> {
    let mut found = None;
    for v in resp.headers.get_all(name) {
        let at = http_date(v).ok_or(())?;
        if found.is_some_and(|f| f != at) {
            return Err(());
        }
        found = Some(at);
    }
    Ok(found)
}

fn http_date(v: &http::HeaderValue) -> Option<SystemTime> {
    httpdate::parse_http_date(v.to_str().ok()?.trim()).ok()
}

/// A delta-seconds `Cache-Control` directive, over all of the response's `Cache-Control`
/// lines.
#[derive(Debug, PartialEq)]
enum Delta {
    Absent,
    Seconds(u64),
    /// Not a number, or given twice with different values.
    Invalid,
}

fn delta_seconds(resp: &ResponseHeader, name: &str) -> Delta {
    let mut found = None;
    for line in resp.headers.get_all(http::header::CACHE_CONTROL) {
        let Ok(line) = line.to_str() else {
            continue;
        };
        for item in line.split(',') {
            let (n, v) = match item.split_once('=') {
                Some((n, v)) => (n.trim(), Some(v.trim().trim_matches('"'))),
                None => (item.trim(), None),
            };
            if !n.eq_ignore_ascii_case(name) {
                continue;
            }
            match (v.and_then(parse_delta), found) {
                (None, _) => return Delta::Invalid,
                (Some(s), Some(f)) if s != f => return Delta::Invalid,
                (Some(s), _) => found = Some(s),
            }
        }
    }
    found.map_or(Delta::Absent, Delta::Seconds)
}

/// Delta-seconds: digits only; one too large for the cache is 2^31 (RFC 9111 §1.2.2).
pub(crate) fn parse_delta(v: &str) -> Option<u64> {
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(v.parse::<u64>().map_or(1 << 31, |n| n.min(1 << 31)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule() -> CacheRule {
        CacheRule {
            ttl: Duration::from_secs(300),
            min_ttl: Duration::from_secs(10),
            max_ttl: Duration::from_secs(3600),
            statuses: vec![200, 404],
            key_params: None,
            ignore_params: vec![],
            secret_params: vec![],
            secret_headers: vec![],
            stale_while_revalidate: 60,
            stale_if_error: 600,
            max_object_size: 1 << 20,
            lock_timeout: Duration::from_secs(1),
            min_uses: 1,
            tiles_only: false,
        }
    }

    fn resp(status: u16, headers: &[(&str, &str)]) -> ResponseHeader {
        let mut r = ResponseHeader::build(status, None).expect("header");
        for (k, v) in headers {
            r.append_header(k.to_string(), *v).expect("header");
        }
        r
    }

    fn ttl(r: &ResponseHeader) -> Option<u64> {
        match decide(r, &rule()) {
            RespCacheable::Cacheable(m) => Some(m.fresh_sec()),
            RespCacheable::Uncacheable(_) => None,
        }
    }

    #[test]
    fn an_answer_stale_on_arrival_is_stale_since_its_lifetime_ended() {
        let now = SystemTime::now();
        let no_least = CacheRule {
            min_ttl: Duration::ZERO,
            ..rule()
        };
        let fresh_until = |headers: &[(&str, &str)]| match decide(&resp(200, headers), &no_least) {
            RespCacheable::Cacheable(m) => m.fresh_until(),
            RespCacheable::Uncacheable(r) => panic!("{r:?}"),
        };
        let stale_for = |headers: &[(&str, &str)]| {
            now.duration_since(fresh_until(headers))
                .unwrap_or_default()
                .as_secs()
        };
        // 150 s old with 100 s of life: stale for 50 s.
        let s = stale_for(&[("cache-control", "max-age=100"), ("age", "150")]);
        assert!((49..=51).contains(&s), "{s}");
        // Decades old: stale since past both its windows (600 s here), no further back.
        let s = stale_for(&[
            ("cache-control", "max-age=100"),
            ("age", "99999999999999999999"),
        ]);
        assert!((600..=602).contains(&s), "{s}");
        // The step's default lifetime counts so too; an answer of no age is stale for a
        // second at most when it has no life.
        let s = stale_for(&[("age", "400")]);
        assert!((99..=101).contains(&s), "{s}");
        let s = stale_for(&[("cache-control", "max-age=0")]);
        assert!(s <= 2, "{s}");
        // Of two `Age` lines, the greater.
        let s = stale_for(&[
            ("cache-control", "max-age=60"),
            ("age", "10"),
            ("age", "200"),
        ]);
        assert!((139..=141).contains(&s), "{s}");
        // A step's `minTtl` keeps it fresh all the same.
        assert_eq!(
            ttl(&resp(
                200,
                &[("cache-control", "max-age=100"), ("age", "150")]
            )),
            Some(10)
        );
    }

    #[test]
    fn freshness() {
        assert_eq!(ttl(&resp(200, &[])), Some(300), "the step's default");
        assert_eq!(
            ttl(&resp(200, &[("cache-control", "max-age=120")])),
            Some(120)
        );
        assert_eq!(
            ttl(&resp(
                200,
                &[("cache-control", "max-age=120, s-maxage=600")]
            )),
            Some(600),
            "s-maxage wins in a shared cache"
        );
        assert_eq!(
            ttl(&resp(200, &[("cache-control", "max-age=1")])),
            Some(10),
            "clamped up"
        );
        assert_eq!(
            ttl(&resp(200, &[("cache-control", "max-age=99999")])),
            Some(3600),
            "clamped down"
        );
        assert_eq!(ttl(&resp(200, &[("cache-control", "no-cache")])), Some(0));
        let expires = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(200));
        let t = ttl(&resp(200, &[("expires", &expires)])).expect("cacheable");
        assert!((195..=200).contains(&t), "{t}");
    }

    #[test]
    fn the_age_the_upstream_gave_has_passed_of_a_lifetime() {
        let judged = |h: &[(&str, &str)]| judge(&resp(200, h), &rule()).expect("cacheable");
        let secs = |later: SystemTime, earlier: SystemTime| {
            later.duration_since(earlier).unwrap_or_default().as_secs()
        };
        let now = SystemTime::now();
        let f = judged(&[("cache-control", "max-age=120"), ("age", "100")]);
        assert!((19..=20).contains(&secs(f.fresh_until, now)));
        assert!(secs(f.updated, now) <= 1, "stored now");
        let f = judged(&[("age", "100")]);
        assert!(
            (199..=200).contains(&secs(f.fresh_until, now)),
            "the step's too"
        );
        let f = judged(&[("cache-control", "max-age=60"), ("age", "100")]);
        assert!(
            (9..=10).contains(&secs(f.fresh_until, now)),
            "what is left, clamped"
        );
        let f = judged(&[("cache-control", "max-age=99999"), ("age", "100")]);
        assert!(
            (3599..=3600).contains(&secs(f.fresh_until, now)),
            "clamped down"
        );
        let expires = httpdate::fmt_http_date(now + Duration::from_secs(200));
        let f = judged(&[("expires", &expires), ("age", "100")]);
        assert!(
            (195..=200).contains(&secs(f.fresh_until, now)),
            "Expires is the end"
        );
        let f = judged(&[("cache-control", "max-age=120"), ("age", "soon")]);
        assert!(
            (119..=120).contains(&secs(f.fresh_until, now)),
            "no number, no age"
        );
    }

    #[test]
    fn the_steps_stale_windows_are_not_for_responses_that_forbid_it() {
        let windows = |cc: &str| {
            let f = judge(&resp(200, &[("cache-control", cc)]), &rule()).expect("cacheable");
            (f.stale_while_revalidate, f.stale_if_error)
        };
        assert_eq!(windows("max-age=60"), (60, 600), "the step's");
        for cc in [
            "max-age=60, must-revalidate",
            "max-age=60, proxy-revalidate",
            "s-maxage=60",
        ] {
            assert_eq!(windows(cc), (0, 0), "{cc}");
        }
        assert_eq!(windows("no-cache"), (0, 0));
        assert_eq!(
            windows("max-age=60, must-revalidate, stale-if-error=30"),
            (0, 30),
            "the upstream's own window"
        );
        assert_eq!(
            windows("no-cache, stale-while-revalidate=30, stale-if-error=30"),
            (0, 30),
            "no-cache is revalidated before every use"
        );
    }

    /// Seconds `h` is fresh for under a step without clamps.
    fn lifetime_of(h: &[(&str, &str)]) -> Option<u64> {
        let rule = CacheRule {
            min_ttl: Duration::ZERO,
            max_ttl: Duration::from_secs(1 << 32),
            ..rule()
        };
        let now = SystemTime::now();
        judge(&resp(200, h), &rule)
            .ok()
            .map(|f| f.fresh_until.duration_since(now).map_or(0, |d| d.as_secs()))
    }

    /// A lifetime past what the clock holds (a step's `ttl` and `maxTtl` of 2^63 − 1
    /// seconds, an upstream's `max-age` as large) is 2^31 seconds: it panicked on every
    /// request.
    #[test]
    fn a_lifetime_past_the_clock_is_2_to_the_31_seconds() {
        let rule = CacheRule {
            ttl: Duration::from_secs(i64::MAX as u64),
            max_ttl: Duration::from_secs(i64::MAX as u64),
            ..rule()
        };
        let now = SystemTime::now();
        for cc in [None, Some("max-age=9223372036854775807")] {
            let h: Vec<(&str, &str)> = cc.iter().map(|v| ("cache-control", *v)).collect();
            let f = judge(&resp(200, &h), &rule).expect("cacheable");
            let left = f.fresh_until.duration_since(now).expect("ahead").as_secs();
            assert!(((1 << 31) - 5..=1 << 31).contains(&left), "{cc:?}: {left}");
        }
    }

    #[test]
    fn freshness_information_that_is_invalid_or_given_twice_makes_it_stale() {
        for (cc, fresh) in [
            ("max-age=abc", 0),
            ("max-age=-1", 0),
            ("max-age=1.5", 0),
            ("max-age", 0),
            ("max-age=120, max-age=120", 120),
            ("max-age=120, max-age=86400", 0),
            ("s-maxage=x, max-age=120", 0),
            ("max-age=\"120\"", 120),
            ("max-age=99999999999999999999", 1 << 31),
        ] {
            let got = lifetime_of(&[("cache-control", cc)]).expect("stored");
            assert!(got == fresh || got + 1 == fresh, "{cc}: {got}");
        }
        // Two lines of one header are one list.
        let two_lines = lifetime_of(&[
            ("cache-control", "max-age=60"),
            ("cache-control", "max-age=86400"),
        ]);
        assert_eq!(two_lines, Some(0));
        let later = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(200));
        let other = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(300));
        for expires in [
            &[("expires", "0")][..],
            &[("expires", &later), ("expires", &other)],
            &[("expires", &later), ("expires", "0")],
        ] {
            assert_eq!(lifetime_of(expires), Some(0), "{expires:?}");
        }
        // The same time on two lines (two modules of a server each writing it) is that time.
        let t = lifetime_of(&[("expires", &later), ("expires", &later)]).expect("stored");
        assert!((199..=200).contains(&t), "{t}");
        // An Age too large to count is 2^31 seconds.
        let aged = lifetime_of(&[
            ("cache-control", "max-age=600"),
            ("age", "99999999999999999999"),
        ]);
        assert_eq!(aged, Some(0));
    }

    #[test]
    fn expires_counts_from_the_upstreams_date() {
        // An upstream whose clock is 1000 s behind: its tile lives the 200 s it means.
        let date = SystemTime::now() - Duration::from_secs(1000);
        let fmt = httpdate::fmt_http_date;
        let h = [
            ("date", fmt(date)),
            ("expires", fmt(date + Duration::from_secs(200))),
        ];
        let h: Vec<(&str, &str)> = h.iter().map(|(n, v)| (*n, v.as_str())).collect();
        let t = lifetime_of(&h).expect("stored");
        assert!((199..=200).contains(&t), "{t}");
        // Without a Date: what is left from now.
        let t = lifetime_of(&h[1..]).expect("stored");
        assert_eq!(t, 0, "expired 800 s ago by the gateway's clock");
    }

    #[test]
    fn field_names_on_private_and_no_cache_are_the_whole_response_here() {
        assert_eq!(
            lifetime_of(&[("cache-control", "max-age=600, private=\"X-Session\"")]),
            None
        );
        assert_eq!(
            lifetime_of(&[("cache-control", "max-age=600, no-cache=\"X-Session\"")]),
            Some(0)
        );
        for cc in [
            "no-cache=\"X-A\"",
            "s-maxage=60",
            "must-revalidate",
            "proxy-revalidate",
        ] {
            assert!(
                revalidate_each_use(&resp(200, &[("cache-control", cc)])),
                "{cc}"
            );
        }
        assert!(!revalidate_each_use(&resp(
            200,
            &[("cache-control", "max-age=60")]
        )));
    }

    #[test]
    fn never_stored() {
        assert_eq!(ttl(&resp(500, &[])), None);
        assert_eq!(ttl(&resp(200, &[("cache-control", "no-store")])), None);
        assert_eq!(ttl(&resp(200, &[("cache-control", "private")])), None);
        assert_eq!(ttl(&resp(200, &[("set-cookie", "a=b")])), None);
        assert_eq!(ttl(&resp(200, &[("set-cookie2", "a=b")])), None);
        assert_eq!(ttl(&resp(200, &[("vary", "*")])), None);
        assert_eq!(ttl(&resp(200, &[("vary", "Accept, Authorization")])), None);
        assert_eq!(ttl(&resp(200, &[("vary", "Accept-Encoding")])), Some(300));
        // A header the route's key-auth step reads (a fill does not send it).
        let keyed = CacheRule {
            secret_headers: vec![http::HeaderName::from_static("x-api-key")],
            ..rule()
        };
        let varies = resp(200, &[("vary", "Accept, X-API-Key")]);
        assert!(judge(&varies, &keyed).is_err());
        assert!(judge(&varies, &rule()).is_ok());
    }

    #[test]
    fn stale_windows() {
        let RespCacheable::Cacheable(m) = decide(&resp(200, &[]), &rule()) else {
            panic!("cacheable")
        };
        assert_eq!(
            (m.stale_while_revalidate_sec(), m.stale_if_error_sec()),
            (60, 600)
        );
        let RespCacheable::Cacheable(m) = decide(
            &resp(
                200,
                &[(
                    "cache-control",
                    "max-age=60, stale-while-revalidate=5, stale-if-error=7",
                )],
            ),
            &rule(),
        ) else {
            panic!("cacheable")
        };
        assert_eq!(
            (m.stale_while_revalidate_sec(), m.stale_if_error_sec()),
            (5, 7)
        );
    }
}
