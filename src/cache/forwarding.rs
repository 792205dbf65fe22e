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

use super::policy::CacheRule;

/// The headers, in the order their values are written into a key: the host, scheme, port
/// and path prefix a proxy in front says clients used, in the forms proxies and upstreams
/// (GeoServer, MapServer, QGIS Server, Spring, MapProxy's and WSGI's `X-Script-Name`) name them, and IIS's `X-Original-URL` and
/// `X-Rewrite-URL` (see [`WHOLE_TARGET`]). Not nginx's and Traefik's `X-Original-URI` and
/// `X-Forwarded-Uri`: sent by a proxy in front with every request, each URL would be a
/// combination of its own (a purge finds the 256 most sent only, and every request would
/// count its own).
const HEADERS: [&str; 23] = [
    "forwarded",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-forwarded-port",
    "x-forwarded-prefix",
    "x-forwarded-path",
    "x-forwarded-server",
    "x-forwarded-scheme",
    "x-forwarded-protocol",
    "x-forwarded-ssl",
    "x-url-scheme",
    "x-scheme",
    "front-end-https",
    "x-host",
    "x-original-host",
    "x-script-name",
    "x-original-url",
    "x-rewrite-url",
    "x-qgis-service-url",
    "x-qgis-wms-service-url",
    "x-qgis-wfs-service-url",
    "x-qgis-wcs-service-url",
    "x-qgis-wmts-service-url",
];

/// The headers that carry the client's whole target (`X-Original-URL` and `X-Rewrite-URL` as
/// IIS's rewriting passes it on, `X-Original-URI` and `X-Forwarded-Uri` as nginx's and
/// Traefik's): its query holds the consumer's credentials. In what a fill sends upstream, and
/// in the key for those keyed, such a value keeps only the query parameters the key keeps (see
/// [`super::key::neutral`]): no credential is stored, written into the disk tier's record of
/// these values or sent upstream by a fill (whose answer, a capabilities document listing URLs
/// made from it, everyone is served), and every consumer shares one copy.
const WHOLE_TARGET: [&str; 4] = [
    "x-original-url",
    "x-rewrite-url",
    "x-original-uri",
    "x-forwarded-uri",
];

/// Whether a request header's name may be one of [`HEADERS`]: most requests carry none, and
/// a look at each name's length and first byte tells.
fn maybe(name: &str) -> bool {
    name.len() >= 6 && matches!(name.as_bytes()[0], b'x' | b'f')
}

/// Whether `name` (lowercase, as a request names it) is `header`, with `_` for `-` too.
fn same(header: &str, name: &str) -> bool {
    header.len() == name.len()
        && header
            .bytes()
            .zip(name.bytes())
            .all(|(a, b)| a == b || (a == b'-' && b == b'_'))
}

/// A whole-target value (see [`WHOLE_TARGET`]) with only the query parameters the key keeps,
/// when it has others.
fn neutral_target(value: &[u8], rule: &CacheRule) -> Option<String> {
    super::key::neutral(std::str::from_utf8(value).ok()?, rule)
}

/// Makes the whole-target headers of a fill's upstream request carry only the query
/// parameters the key keeps (see [`WHOLE_TARGET`]); their other headers' order stays.
pub fn neutralise(req: &mut pingora_http::RequestHeader, rule: &CacheRule) {
    if !req.headers.keys().any(|n| maybe(n.as_str())) {
        return;
    }
    let mut changed: Vec<(http::HeaderName, Vec<http::HeaderValue>)> = Vec::new();
    for name in req.headers.keys() {
        if !WHOLE_TARGET.iter().any(|h| same(h, name.as_str())) {
            continue;
        }
        let values: Vec<(&http::HeaderValue, Option<http::HeaderValue>)> = req
            .headers
            .get_all(name)
            .iter()
            .map(|v| {
                let neutral = neutral_target(v.as_bytes(), rule);
                (
                    v,
                    neutral.and_then(|n| http::HeaderValue::from_str(&n).ok()),
                )
            })
            .collect();
        if values.iter().any(|(_, n)| n.is_some()) {
            let values = values
                .into_iter()
                .map(|(v, n)| n.unwrap_or_else(|| v.clone()));
            changed.push((name.clone(), values.collect()));
        }
    }
    for (name, values) in changed {
        req.remove_header(&name);
        for v in values {
            // (Infallible: a name and value taken from a header map.)
            let _ = req.append_header(name.clone(), v);
        }
    }
}

/// The longest key part ([`of`]) a request's forwarding headers may make: a request whose
/// headers make a longer one is not cached (`BYPASS`). Their combinations are remembered for
/// purges, in memory and in the disk tier's record, rewritten when one comes: without a bound,
/// a client sending long values would make each of them megabytes.
pub const MAX_PART: usize = 2048;

/// A request's forwarding headers make a key part longer than [`MAX_PART`].
#[derive(Debug)]
pub struct Unkeyable;

/// The key's part for the forwarding headers a request carries, `None` without any: one
/// `name:value` line per header line, in [`HEADERS`]' order (a repeated header's lines in
/// theirs), the name as the request wrote it (`X_Forwarded_Host` is one of them too: a CGI
/// upstream, MapServer's, reads it as `HTTP_X_FORWARDED_HOST`), bytes outside visible ASCII
/// and `\` written `\xHH`; of `Forwarded` only its `host`, `proto` and `path` parameters (its
/// `for`, each client's own address, would give every client a copy of its own).
pub fn of(headers: &HeaderMap, rule: &CacheRule) -> Result<Option<String>, Unkeyable> {
    if !headers.keys().any(|n| maybe(n.as_str())) {
        return Ok(None);
    }
    let mut found: Vec<(usize, &str, std::borrow::Cow<'_, [u8]>)> = Vec::new();
    for (name, value) in headers {
        let name = name.as_str();
        if !maybe(name) {
            continue;
        }
        let Some(i) = HEADERS.iter().position(|h| same(h, name)) else {
            continue;
        };
        let value = if i == 0 {
            // Only a client's address (`for`): nothing that shapes a URL.
            match forwarded_params(value.as_bytes()) {
                v if v.is_empty() => continue,
                v => std::borrow::Cow::Owned(v),
            }
        } else if WHOLE_TARGET.contains(&HEADERS[i]) {
            match neutral_target(value.as_bytes(), rule) {
                Some(v) => std::borrow::Cow::Owned(v.into_bytes()),
                None => std::borrow::Cow::Borrowed(value.as_bytes()),
            }
        } else {
            std::borrow::Cow::Borrowed(value.as_bytes())
        };
        found.push((i, name, value));
    }
    if found.is_empty() {
        return Ok(None);
    }
    // (Stable: a header's lines keep their order.)
    found.sort_by_key(|(i, _, _)| *i);
    let mut out = String::new();
    for (_, name, value) in found {
        if !out.is_empty() {
            out.push('\n');
        }
        out.push_str(name);
        out.push(':');
        for &b in value.iter() {
            if b.is_ascii_graphic() && b != b'\\' || b == b' ' {
                out.push(b as char);
            } else {
                out.push_str(&format!("\\x{b:02x}"));
            }
        }
        if out.len() > MAX_PART {
            return Err(Unkeyable);
        }
    }
    Ok(Some(out))
}

/// The request headers a key's part (see [`of`]) was made of, as far as it tells them
/// (`Forwarded` with its `host`, `proto` and `path` alone): for a purge, whose key is made
/// by the pipeline's steps, which may read them (`xfwd` appends to them).
pub fn headers_of(part: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for line in part.split('\n') {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let mut bytes = Vec::with_capacity(value.len());
        let mut rest = value.as_bytes();
        while let Some((&b, more)) = rest.split_first() {
            match (b, more) {
                (b'\\', [b'x', h, l, tail @ ..]) => {
                    let hex = [*h, *l];
                    let byte = std::str::from_utf8(&hex)
                        .ok()
                        .and_then(|x| u8::from_str_radix(x, 16).ok());
                    bytes.push(byte.unwrap_or(b'?'));
                    rest = tail;
                }
                _ => {
                    bytes.push(b);
                    rest = more;
                }
            }
        }
        if let (Ok(n), Ok(v)) = (
            http::HeaderName::from_bytes(name.as_bytes()),
            http::HeaderValue::from_bytes(&bytes),
        ) {
            headers.append(n, v);
        }
    }
    headers
}

/// `Forwarded`'s `host`, `proto` and `path` parameters (RFC 7239; `path` as GeoServer reads
/// it), in order, names lowercased.
fn forwarded_params(value: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for pair in value.split(|b| *b == b',' || *b == b';') {
        let Some(eq) = pair.iter().position(|b| *b == b'=') else {
            continue;
        };
        let name = pair[..eq].trim_ascii().to_ascii_lowercase();
        if [&b"host"[..], b"proto", b"path"].contains(&&name[..]) {
            if !out.is_empty() {
                out.push(b';');
            }
            out.extend_from_slice(&name);
            out.push(b'=');
            out.extend_from_slice(pair[eq + 1..].trim_ascii());
        }
    }
    out
}

/// How many combinations a purge tries at most.
const REMEMBERED: usize = 256;

/// A thread's requests of one combination counted before they are added to [`Seen`].
const BATCH: u64 = 64;

/// The combinations of forwarding headers met, for purges: the 256 most sent when there are
/// more (a proxy in front sends one or a few, on every request; a client making up values
/// sends each on its few requests).
#[derive(Default)]
pub struct Seen {
    uses: Mutex<HashMap<Box<str>, u64>>,
    /// A combination came or went since the record was last written (see [`Self::changed`]).
    changed: std::sync::atomic::AtomicBool,
}

thread_local! {
    /// The combination this thread met last and how many requests of it are not yet added:
    /// a run of requests through one proxy takes the lock once per [`BATCH`].
    static LAST: RefCell<(String, u64)> = const { RefCell::new((String::new(), 0)) };
}

impl Seen {
    /// Counts a request's combination (see [`of`]).
    pub fn record(&self, combination: &str) {
        LAST.with(|last| {
            let mut last = last.borrow_mut();
            let (seen, pending) = &mut *last;
            if seen == combination {
                *pending += 1;
                if *pending >= BATCH {
                    self.add(seen, std::mem::take(pending));
                }
                return;
            }
            if *pending > 0 {
                self.add(seen, std::mem::take(pending));
            }
            seen.clear();
            seen.push_str(combination);
            self.add(combination, 1);
        });
    }

    fn add(&self, combination: &str, n: u64) {
        let mut uses = self.uses.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = uses.get_mut(combination) {
            *count += n;
            return;
        }
        if uses.len() >= REMEMBERED {
            // The least sent goes (its copies are served to the requests that send it alone).
            if let Some(least) = uses.iter().min_by_key(|(_, c)| **c).map(|(k, _)| k.clone()) {
                uses.remove(&least);
            }
        }
        uses.insert(combination.into(), n);
        self.changed
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Takes in the combinations a record kept (with their counts): those remembered before a
    /// restart, whose copies the disk tier still holds.
    pub fn restore(&self, kept: HashMap<Box<str>, u64>) {
        let mut uses = self.uses.lock().unwrap_or_else(|p| p.into_inner());
        for (combination, n) in kept.into_iter().take(REMEMBERED) {
            uses.entry(combination).or_insert(n);
        }
    }

    /// A write of [`Self::changed`]'s failed: the next call returns them again.
    pub fn unsaved(&self) {
        self.changed
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// The combinations and their counts when one came or went since the last call; `None`
    /// when none did.
    pub fn changed(&self) -> Option<HashMap<Box<str>, u64>> {
        if !self
            .changed
            .swap(false, std::sync::atomic::Ordering::Relaxed)
        {
            return None;
        }
        Some(self.uses.lock().unwrap_or_else(|p| p.into_inner()).clone())
    }

    /// Every combination remembered.
    pub fn all(&self) -> Vec<Box<str>> {
        let uses = self.uses.lock().unwrap_or_else(|p| p.into_inner());
        uses.keys().cloned().collect()
    }
}

/// A record's combinations and this process's, each with the larger of its counts: the
/// [`REMEMBERED`] with the most.
pub fn merged(
    kept: HashMap<Box<str>, u64>,
    mine: HashMap<Box<str>, u64>,
) -> HashMap<Box<str>, u64> {
    let mut all = kept;
    for (combination, n) in mine {
        let count = all.entry(combination).or_insert(0);
        *count = (*count).max(n);
    }
    if all.len() > REMEMBERED {
        let mut by_count: Vec<_> = all.into_iter().collect();
        by_count.sort_by_key(|c| std::cmp::Reverse(c.1));
        by_count.truncate(REMEMBERED);
        all = by_count.into_iter().collect();
    }
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The part of `headers` for a step that keeps every parameter but the credentials.
    fn of(headers: &HeaderMap) -> Option<String> {
        super::of(headers, &crate::cache::key::tests::rule(None, &[])).expect("keyable")
    }

    #[test]
    fn forwarding_values_past_the_bound_make_a_request_unkeyable() {
        let rule = crate::cache::key::tests::rule(None, &[]);
        let long = "h".repeat(MAX_PART);
        let mut h = HeaderMap::new();
        h.insert(
            "x-forwarded-host",
            long[..MAX_PART - 20].parse().expect("value"),
        );
        assert!(super::of(&h, &rule).expect("short enough").is_some());
        h.insert("x-forwarded-host", long.parse().expect("value"));
        assert!(super::of(&h, &rule).is_err());
        // Many short lines add up.
        let mut h = HeaderMap::new();
        for _ in 0..100 {
            h.append("x-forwarded-proto", "https, https".parse().expect("value"));
        }
        assert!(super::of(&h, &rule).is_err());
    }

    fn headers(list: &[(&'static str, &'static [u8])]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in list {
            h.append(*n, http::HeaderValue::from_bytes(v).expect("value"));
        }
        h
    }

    #[test]
    fn the_forwarding_headers_make_one_part_in_a_fixed_order() {
        assert_eq!(of(&headers(&[("host", b"a"), ("accept", b"*/*")])), None);
        let a = of(&headers(&[
            ("x-forwarded-proto", b"https"),
            ("x-forwarded-host", b"tiles.example"),
            ("x-forwarded-for", b"192.0.2.1"),
        ]));
        let b = of(&headers(&[
            ("x-forwarded-host", b"tiles.example"),
            ("x-forwarded-for", b"192.0.2.2"),
            ("x-forwarded-proto", b"https"),
        ]));
        assert_eq!(a, b);
        assert_eq!(
            a.as_deref(),
            Some("x-forwarded-host:tiles.example\nx-forwarded-proto:https")
        );
        // Two lines, one line of both, the name with underscores: each its own.
        let parts = [
            of(&headers(&[
                ("x-forwarded-host", b"a"),
                ("x-forwarded-host", b"b"),
            ])),
            of(&headers(&[("x-forwarded-host", b"a, b")])),
            of(&headers(&[
                ("x-forwarded-host", b"a"),
                ("x_forwarded_host", b"b"),
            ])),
            of(&headers(&[("x_forwarded_host", b"a, b")])),
        ];
        for (i, p) in parts.iter().enumerate() {
            assert!(p.is_some());
            for q in &parts[i + 1..] {
                assert_ne!(p, q);
            }
        }
        // Bytes that are no visible ASCII are kept apart (not all made U+FFFD).
        let odd = [
            of(&headers(&[("x-forwarded-host", b"a\xffb")])),
            of(&headers(&[("x-forwarded-host", b"a\xfeb")])),
            of(&headers(&[("x-forwarded-host", "a\u{fffd}b".as_bytes())])),
            of(&headers(&[("x-forwarded-host", b"a\\xffb")])),
        ];
        for (i, p) in odd.iter().enumerate() {
            for q in &odd[i + 1..] {
                assert_ne!(p, q);
            }
        }
        for name in [
            "x-forwarded-path",
            "x-qgis-wms-service-url",
            "x-host",
            "front-end-https",
            "x-script-name",
            "x_script_name",
        ] {
            let mut h = HeaderMap::new();
            h.insert(
                http::HeaderName::from_static(name),
                http::HeaderValue::from_static("v"),
            );
            assert!(of(&h).is_some(), "{name}");
        }
    }

    /// The client's whole target, as IIS passes it on, is keyed without the consumer's
    /// credentials (one copy for all; none in the record of parts), and a fill sends it so;
    /// nginx's and Traefik's are not keyed (each URL would be a combination of its own).
    #[test]
    fn a_whole_target_counts_and_goes_upstream_without_credentials() {
        for name in ["x-original-uri", "x_forwarded_uri"] {
            let mut h = HeaderMap::new();
            h.insert(
                http::HeaderName::from_bytes(name.as_bytes()).expect("name"),
                http::HeaderValue::from_static("/t?apiKey=ann-secret"),
            );
            assert_eq!(of(&h), None, "{name}");
        }
        for name in ["x-original-url", "x-rewrite-url", "x_rewrite_url"] {
            let part = |target: &'static [u8]| {
                let mut h = headers(&[("x-forwarded-proto", b"https")]);
                h.append(
                    http::HeaderName::from_bytes(name.as_bytes()).expect("name"),
                    http::HeaderValue::from_bytes(target).expect("value"),
                );
                of(&h).expect("a part")
            };
            let ann = part(b"/wmts/1/2/3.png?apiKey=ann-secret&LAYER=a");
            assert_eq!(
                ann,
                part(b"/wmts/1/2/3.png?LAYER=a&jwt=bob.token.x"),
                "{name}"
            );
            assert!(
                !ann.contains("secret") && ann.contains("LAYER=a"),
                "{name}: {ann}"
            );
            assert_ne!(ann, part(b"/wmts/1/2/3.png?LAYER=b"), "{name}");
        }
        let mut req = pingora_http::RequestHeader::build("GET", b"/t", None).expect("request");
        for (n, v) in [
            ("Accept", "image/png"),
            ("X-Original-URI", "/t?apiKey=ann-secret&LAYER=a"),
            ("X-Forwarded-Host", "maps.example.com"),
        ] {
            req.append_header(n, v).expect("header");
        }
        neutralise(&mut req, &crate::cache::key::tests::rule(None, &[]));
        let sent: Vec<(String, String)> = req
            .headers
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_str().unwrap_or("").to_string()))
            .collect();
        assert!(
            sent.contains(&("x-original-uri".into(), "/t?LAYER=a".into())),
            "{sent:?}"
        );
        assert_eq!(sent.len(), 3, "{sent:?}");
        let mut wire = Vec::new();
        req.header_to_h1_wire(&mut wire);
        assert!(!String::from_utf8_lossy(&wire).contains("secret"));
    }

    #[test]
    fn a_part_gives_back_the_headers_it_was_made_of() {
        let h = headers(&[
            ("x-forwarded-host", b"a\xffb"),
            ("x-forwarded-host", b"c"),
            ("x_forwarded_proto", b"https"),
        ]);
        let part = of(&h).expect("a part");
        let back = headers_of(&part);
        assert_eq!(of(&back).as_deref(), Some(&*part));
        let hosts: Vec<&[u8]> = back
            .get_all("x-forwarded-host")
            .iter()
            .map(|v| v.as_bytes())
            .collect();
        assert_eq!(hosts, [&b"a\xffb"[..], b"c"]);
    }

    #[test]
    fn forwarded_counts_by_its_host_proto_and_path_alone() {
        let one = of(&headers(&[(
            "forwarded",
            b"for=192.0.2.60;proto=https;Host=tiles.example;by=203.0.113.43",
        )]));
        let other = of(&headers(&[(
            "forwarded",
            b"for=198.51.100.7; proto=https; host=tiles.example",
        )]));
        assert_eq!(one, other);
        assert_eq!(
            one.as_deref(),
            Some("forwarded:proto=https;host=tiles.example")
        );
        assert_ne!(
            one,
            of(&headers(&[(
                "forwarded",
                b"proto=https;host=tiles.example;path=/x"
            )]))
        );
        // Only a client's address: nothing that shapes a URL.
        assert_eq!(of(&headers(&[("forwarded", b"for=192.0.2.60")])), None);
    }

    #[test]
    fn the_most_sent_combinations_are_remembered() {
        let seen = Seen::default();
        // A proxy's steady requests on one thread.
        std::thread::scope(|s| {
            s.spawn(|| {
                for _ in 0..200 {
                    seen.record("x-forwarded-host:proxy");
                }
                // Its last requests are added when the thread meets another combination.
                seen.record("x-forwarded-host:once");
            });
        });
        // Many made-up values, each sent a few times, alternating.
        std::thread::scope(|s| {
            s.spawn(|| {
                for i in 0..REMEMBERED + 10 {
                    for _ in 0..3 {
                        seen.record(&format!("x-forwarded-host:other{i}"));
                        seen.record(&format!("x-forwarded-host:more{i}"));
                    }
                }
            });
        });
        let all = seen.all();
        assert_eq!(all.len(), REMEMBERED);
        assert!(all.iter().any(|c| &**c == "x-forwarded-host:proxy"));
    }

    #[test]
    fn a_record_and_a_process_keep_each_others_combinations_most_sent_first() {
        let map = |list: &[(&str, u64)]| -> HashMap<Box<str>, u64> {
            list.iter().map(|(c, n)| (Box::from(*c), *n)).collect()
        };
        let both = merged(map(&[("a", 5), ("b", 1)]), map(&[("b", 3), ("c", 2)]));
        assert_eq!(both, map(&[("a", 5), ("b", 3), ("c", 2)]));
        let many: Vec<(String, u64)> = (0..REMEMBERED as u64 + 10)
            .map(|i| (format!("x{i}"), i))
            .collect();
        let many: HashMap<Box<str>, u64> =
            many.iter().map(|(c, n)| (Box::from(&**c), *n)).collect();
        let kept = merged(many, map(&[("top", u64::MAX)]));
        assert_eq!(kept.len(), REMEMBERED);
        assert!(kept.contains_key("top"));
        assert!(!kept.contains_key("x0"), "the least sent went");
    }
}
