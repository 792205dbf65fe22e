//! The request headers an upstream builds its own URLs from: `X-Forwarded-Host`, `-Proto`,
//! `-Port`, `-Prefix`, `Forwarded`'s `host` and `proto`, and their kin (named with `_` for
//! `-` too, as a CGI upstream reads them). A capabilities
//! document (WMS, WMTS), a redirect or a tile template lists URLs made from them, and a fill
//! sends the client's on to the upstream (a proxy in front of tollgate sets them), so their
//! values are part of a tile's key: a request that sends others gets a copy of its own, never
//! the document everyone else is served (cache poisoning by an unkeyed header).
//!
//! A purge of a URL has to find those copies too: the cache remembers the combinations of
//! values it has met ([`Seen`]) and a purge removes the URL under each of them.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Mutex;

use http::HeaderMap;

/// The headers, in the order their values are written into a key.
const HEADERS: [&str; 11] = [
    "forwarded",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-forwarded-port",
    "x-forwarded-prefix",
    "x-forwarded-server",
    "x-forwarded-scheme",
    "x-scheme",
    "x-original-host",
    "x-original-url",
    "x-rewrite-url",
];

/// The key's part for the forwarding headers a request carries, `None` without any: one
/// `name:value` line each in [`HEADERS`]' order (the lines of a repeated header joined by
/// `, `), of `Forwarded` only its `host` and `proto` parameters (its `for`, each client's own
/// address, would give every client a copy of its own).
pub fn of(headers: &HeaderMap) -> Option<String> {
    // Most requests carry none: a look at each name's length and first byte tells.
    fn maybe(name: &str) -> bool {
        name.len() >= 8 && matches!(name.as_bytes()[0], b'x' | b'f')
    }
    if !headers.keys().any(|n| maybe(n.as_str())) {
        return None;
    }
    let mut found: [Option<String>; HEADERS.len()] = Default::default();
    let mut any = false;
    for (name, value) in headers {
        let name = name.as_str();
        if !maybe(name) {
            continue;
        }
        // `X_Forwarded_Host` too: a CGI upstream (MapServer's) reads both as
        // `HTTP_X_FORWARDED_HOST`.
        let same = |h: &&str| {
            h.len() == name.len()
                && h.bytes()
                    .zip(name.bytes())
                    .all(|(a, b)| a == b || (a == b'-' && b == b'_'))
        };
        let Some(i) = HEADERS.iter().position(same) else {
            continue;
        };
        let value = String::from_utf8_lossy(value.as_bytes());
        let value = if i == 0 {
            // Only a client's address (`for`): nothing that shapes a URL.
            match forwarded_params(&value) {
                v if v.is_empty() => continue,
                v => v,
            }
        } else {
            value.into_owned()
        };
        match &mut found[i] {
            Some(v) => {
                v.push_str(", ");
                v.push_str(&value);
            }
            slot => *slot = Some(value),
        }
        any = true;
    }
    if !any {
        return None;
    }
    let mut out = String::new();
    for (name, value) in HEADERS.iter().zip(found) {
        if let Some(v) = value {
            if !out.is_empty() {
                out.push('\n');
            }
            out.push_str(name);
            out.push(':');
            out.push_str(&v);
        }
    }
    Some(out)
}

/// `Forwarded`'s `host` and `proto` parameters (RFC 7239), in order, names lowercased.
fn forwarded_params(value: &str) -> String {
    let mut out = String::new();
    for pair in value.split([',', ';']) {
        let Some((name, v)) = pair.split_once('=') else {
            continue;
        };
        let name = name.trim().to_ascii_lowercase();
        if name == "host" || name == "proto" {
            if !out.is_empty() {
                out.push(';');
            }
            out.push_str(&name);
            out.push('=');
            out.push_str(v.trim());
        }
    }
    out
}

/// How many combinations a purge tries at most.
const REMEMBERED: usize = 256;

/// The combinations of forwarding headers met lately, for purges: the most used ones when there
/// are more than [`REMEMBERED`] (a proxy in front sends one or a few, on every request).
#[derive(Default)]
pub struct Seen {
    uses: Mutex<HashMap<Box<str>, u64>>,
}

thread_local! {
    /// The combination this thread recorded last: a run of requests with the same one (those
    /// through one proxy) records it once.
    static LAST: RefCell<String> = const { RefCell::new(String::new()) };
}

impl Seen {
    /// Notes a request's combination (see [`of`]).
    pub fn record(&self, combination: &str) {
        let new = LAST.with(|last| {
            let mut last = last.borrow_mut();
            if *last == combination {
                return false;
            }
            last.clear();
            last.push_str(combination);
            true
        });
        if !new {
            return;
        }
        let mut uses = self.uses.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = uses.get_mut(combination) {
            *n += 1;
            return;
        }
        if uses.len() >= REMEMBERED {
            // The least used goes (its copies are served to requests that send it alone).
            if let Some(least) = uses.iter().min_by_key(|(_, n)| **n).map(|(k, _)| k.clone()) {
                uses.remove(&least);
            }
        }
        uses.insert(combination.into(), 1);
    }

    /// Every combination remembered.
    pub fn all(&self) -> Vec<Box<str>> {
        let uses = self.uses.lock().unwrap_or_else(|p| p.into_inner());
        uses.keys().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(list: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in list {
            h.append(*n, http::HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn the_forwarding_headers_make_one_part_in_a_fixed_order() {
        assert_eq!(of(&headers(&[("host", "a"), ("accept", "*/*")])), None);
        let a = of(&headers(&[
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "tiles.example"),
            ("x-forwarded-for", "192.0.2.1"),
        ]));
        let b = of(&headers(&[
            ("x-forwarded-host", "tiles.example"),
            ("x-forwarded-for", "192.0.2.2"),
            ("x-forwarded-proto", "https"),
        ]));
        assert_eq!(a, b);
        assert_eq!(
            a.as_deref(),
            Some("x-forwarded-host:tiles.example\nx-forwarded-proto:https")
        );
        let repeated = of(&headers(&[
            ("x-forwarded-host", "a"),
            ("x-forwarded-host", "b"),
        ]));
        assert_eq!(repeated.as_deref(), Some("x-forwarded-host:a, b"));
        // A CGI upstream reads underscores as dashes.
        assert_eq!(
            of(&headers(&[("x_forwarded_host", "a")])).as_deref(),
            Some("x-forwarded-host:a")
        );
    }

    #[test]
    fn forwarded_counts_by_its_host_and_proto_alone() {
        let one = of(&headers(&[(
            "forwarded",
            "for=192.0.2.60;proto=https;Host=tiles.example;by=203.0.113.43",
        )]));
        let other = of(&headers(&[(
            "forwarded",
            "for=198.51.100.7; proto=https; host=tiles.example",
        )]));
        assert_eq!(one, other);
        assert_eq!(
            one.as_deref(),
            Some("forwarded:proto=https;host=tiles.example")
        );
        // Only a client's address: nothing that shapes a URL.
        assert_eq!(of(&headers(&[("forwarded", "for=192.0.2.60")])), None);
    }

    #[test]
    fn the_most_used_combinations_are_remembered() {
        let seen = Seen::default();
        // Each record on another thread: the thread's memo of its last one does not count.
        let record = |c: String| {
            std::thread::scope(|s| {
                s.spawn(|| seen.record(&c));
            })
        };
        for _ in 0..3 {
            record("x-forwarded-host:proxy".into());
        }
        for i in 0..REMEMBERED + 10 {
            record(format!("x-forwarded-host:other{i}"));
        }
        let all = seen.all();
        assert_eq!(all.len(), REMEMBERED);
        assert!(all.iter().any(|c| &**c == "x-forwarded-host:proxy"));
    }
}
