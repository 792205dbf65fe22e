//! The cache key: one copy of a tile for every consumer. It is made of what the upstream's
//! answer depends on — the service endpoint, the Host when the client's is forwarded, the path
//! and a normalised query the upstream receives, the headers earlier steps add upstream and
//! the client's forwarding headers (see [`super::forwarding`]) —
//! and of nothing a consumer brings: the query parameters that carry credentials are removed
//! (and are not sent upstream by a fill either), the rest sorted; OGC (WMS, WMTS, WCS, WFS)
//! parameter names compare without case.

use std::borrow::Cow;
use std::sync::OnceLock;

use pingora_cache::key::HashBinary;
use pingora_cache::CacheKey;

use crate::pipeline::context::HeaderEdit;

use super::policy::CacheRule;

/// Headers the gateway adds upstream that say nothing about the tile: they stay out of the key.
const NOT_IN_KEY: &[&str] = &["eg-request-id", "eg-consumer-id"];

/// Headers whose presence decides the upstream's answer but whose value is a secret: the key
/// holds their names alone. The storage route answers the pass the proxy step adds only for a
/// consumer, and refuses a request without it: an anonymous request (a `passThrough`
/// authentication, a pipeline that authenticates nothing) is keyed apart.
const NAME_IN_KEY: &[&str] = &["x-tollgate-storage-pass"];

/// The secret the keys' hashes are made with: the disk tier's own (kept with it), else one
/// drawn at start (see [`use_secret`]).
static SECRET: OnceLock<[u8; 16]> = OnceLock::new();

/// Makes the keys' hashes with `secret` (the disk tier's, before any request is served); false
/// when hashes were already made with another.
pub fn use_secret(secret: [u8; 16]) -> bool {
    *SECRET.get_or_init(|| secret) == secret
}

/// 16 bytes from the system's random source.
pub fn new_secret() -> std::io::Result<[u8; 16]> {
    let mut secret = [0; 16];
    getrandom::fill(&mut secret).map_err(|e| std::io::Error::other(e.to_string()))?;
    Ok(secret)
}

/// The secret; `cache::init` sets it before any request is served, so drawing one here is
/// for the unit tests alone.
fn secret() -> &'static [u8; 16] {
    SECRET.get_or_init(|| new_secret().unwrap_or_else(|e| panic!("no random source: {e}")))
}

/// The hash objects are stored and locked by: SipHash-1-3 (128 bits) of the primary key
/// text, keyed by a secret, so that no request can be made to collide with another tile's
/// key (Pingora's own is an unkeyed BLAKE2, which costs about six times as many instructions).
pub fn digest(primary: &[u8]) -> HashBinary {
    siphasher::sip128::SipHasher13::new_with_key(secret())
        .hash(primary)
        .as_bytes()
}

/// The cache key of a request's primary key text, with its hash made by [`digest`]. (A key
/// given a variance later is hashed with it by Pingora.)
pub fn cache_key(primary: String) -> CacheKey {
    let hash = digest(primary.as_bytes());
    keyed(primary, hash)
}

/// The cache key of a request's primary key text whose [`digest`] is `hash` (made already: a
/// lookup that finds the tile needs only the hash).
pub fn keyed(primary: String, hash: HashBinary) -> CacheKey {
    let mut key = CacheKey::new(primary, "");
    key.set_primary_bin_override(hash);
    key
}

/// The purges of many tiles whose generations a key holds (see [`super::generations`]).
#[derive(Clone, Copy, Default)]
pub struct Purged<'a> {
    /// The key lines of the purged path prefixes the client's path begins with.
    pub prefixes: &'a str,
    /// The api endpoint, and its generation (0: never purged).
    pub endpoint: (&'a str, u64),
}

/// The primary key text of a request whose upstream path's query is the client's from its
/// first `?` (a service endpoint's url without a query of its own).
#[cfg(test)]
pub fn primary(
    service: &str,
    forwarded_host: Option<&str>,
    forwarding: Option<&str>,
    upstream_path: &str,
    edits: &[HeaderEdit],
    rule: &CacheRule,
    purged: Purged<'_>,
) -> String {
    let at = upstream_path.find('?').unwrap_or(upstream_path.len());
    let path = (upstream_path, at);
    primary_at(
        service,
        forwarded_host,
        forwarding,
        path,
        edits,
        rule,
        purged,
    )
}

/// The primary key text of a request. `upstream_path`: the path and query sent upstream, and
/// where the client's query begins in it (its `?`; the path's length without one): the part
/// before it (a service endpoint url's own query among it) is in the key as it is, the
/// client's query by its parameters that make the key.
pub fn primary_at(
    service: &str,
    forwarded_host: Option<&str>,
    forwarding: Option<&str>,
    (upstream_path, query_at): (&str, usize),
    edits: &[HeaderEdit],
    rule: &CacheRule,
    purged: Purged<'_>,
) -> String {
    let (path, query) = match upstream_path.get(query_at..) {
        Some(q) if q.starts_with('?') => (&upstream_path[..query_at], Some(&q[1..])),
        _ => (upstream_path, None),
    };
    let mut key = String::with_capacity(service.len() + upstream_path.len() + 32);
    key.push_str(service);
    key.push('\n');
    if let Some(h) = forwarded_host {
        key.push_str(&h.to_ascii_lowercase());
    }
    key.push('\n');
    key.push_str(path);
    key.push('?');
    if let Some(q) = query {
        normalised_query(q, rule, &mut key);
    }
    for edit in edits {
        let (op, name, value) = match edit {
            HeaderEdit::Set(n, v) => ('=', n, Some(v)),
            HeaderEdit::Default(n, v) => ('~', n, Some(v)),
            HeaderEdit::Append(n, v) => ('+', n, Some(v)),
            HeaderEdit::Remove(n) => ('-', n, None),
        };
        if NOT_IN_KEY.contains(&name.as_str()) {
            continue;
        }
        key.push('\n');
        key.push(op);
        key.push_str(name.as_str());
        if NAME_IN_KEY.contains(&name.as_str()) {
            continue;
        }
        if let Some(v) = value {
            key.push(':');
            key.push_str(&String::from_utf8_lossy(v.as_bytes()));
        }
    }
    // The client's forwarding headers (see `forwarding`), one line each.
    for line in forwarding.into_iter().flat_map(|f| f.split('\n')) {
        key.push_str("\n>");
        key.push_str(line);
    }
    // A step whose every request asks for a tile judges answers otherwise (an XML answer is
    // a service exception, never stored): it keeps tiles of its own.
    if rule.tiles_only {
        key.push_str("\n!tiles");
    }
    // The latest generation of the purged path prefixes the client's path begins with (a
    // line of its own: `\n^`).
    key.push_str(purged.prefixes);
    // The api endpoint's purge generation, by its name: endpoints that share a tile's key
    // (one pipeline, `stripPath`) are purged each on its own count.
    if let (endpoint, g @ 1..) = purged.endpoint {
        key.push_str("\n#");
        key.push_str(endpoint);
        key.push(':');
        key.push_str(itoa::Buffer::new().format(g));
    }
    key
}

/// A query parameter's name as the key compares it (and the access log, which redacts the
/// values of credentials by it).
pub fn decoded(s: &str) -> std::borrow::Cow<'_, str> {
    // A short name is read byte by byte (`memchr2`'s setup costs more); a value may be a
    // long token.
    let escaped = match s.len() {
        0..32 => s.bytes().any(|b| b == b'%' || b == b'+'),
        _ => memchr::memchr2(b'%', b'+', s.as_bytes()).is_some(),
    };
    if escaped {
        std::borrow::Cow::Owned(
            percent_encoding::percent_decode_str(&s.replace('+', " "))
                .decode_utf8_lossy()
                .into_owned(),
        )
    } else {
        std::borrow::Cow::Borrowed(s)
    }
}

/// Appends the query's parameters that make the key, sorted, to `out`.
fn normalised_query(query: &str, rule: &CacheRule, out: &mut String) {
    // Names are compared decoded, as the upstream reads them; what goes into the key is the
    // raw text of each part, `=` or not (a URI holds no line break, so no parameter can pose
    // as another part of the key).
    let mut ogc = false;
    // (decoded name, raw name, the rest of the part from its `=`)
    let mut kept: Vec<(Cow<'_, str>, Cow<'_, str>, &str)> = Vec::new();
    for part in query_parts(query).filter(|p| !p.is_empty()) {
        let raw = param_name(part);
        let name = decoded(raw);
        // Only what stays in the key says the request is OGC's: a fill's query (only what
        // stays) then makes the same key as the client's.
        if left_out(&name, rule) {
            continue;
        }
        ogc |= name.eq_ignore_ascii_case("service") || name.eq_ignore_ascii_case("request");
        kept.push((name, Cow::Borrowed(raw), &part[raw.len()..]));
    }
    if ogc {
        for (_, raw, _) in &mut kept {
            if raw.bytes().any(|b| b.is_ascii_uppercase()) {
                *raw = Cow::Owned(raw.to_ascii_lowercase());
            }
        }
    }
    // By decoded name (without case for OGC's), a repeated parameter's values kept in their
    // order however each is spelt (an upstream may read the first, or each in turn: `%61=2&a=1`
    // and `a=1&%61=2` are two answers).
    if ogc {
        kept.sort_by(|a, b| folded(&a.0).cmp(folded(&b.0)));
    } else {
        kept.sort_by(|a, b| a.0.cmp(&b.0));
    }
    for (i, (_, raw, rest)) in kept.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        out.push_str(raw);
        out.push_str(rest);
    }
}

/// Whether a query parameter (by its decoded name) is left out of the key: one that carries
/// credentials, one the step ignores, one its `keyParams` do not list.
fn left_out(name: &str, rule: &CacheRule) -> bool {
    let listed = |list: &[String]| list.iter().any(|l| l.eq_ignore_ascii_case(name));
    rule.secret_params.iter().any(|s| s == name)
        || listed(&rule.ignore_params)
        || rule.key_params.as_deref().is_some_and(|k| !listed(k))
}

/// The upstream path and query with only the parameters that make the key: a fill fetches for
/// every consumer, so it sends none of one consumer's credentials, and nothing the key does
/// not hold (a parameter left out of it changes no stored tile, whoever sends it). `None`
/// when nothing is left out. One pass over the query, which holds a long token most often.
pub fn neutral(upstream_path: &str, rule: &CacheRule) -> Option<String> {
    let q = memchr::memchr(b'?', upstream_path.as_bytes())?;
    neutral_at(upstream_path, q, rule)
}

/// [`neutral`] of a path whose query (the part cut down) begins at `q`, its `?` (what comes
/// before — a url's own query among it — stays as it is).
pub fn neutral_at(upstream_path: &str, q: usize, rule: &CacheRule) -> Option<String> {
    if upstream_path.as_bytes().get(q) != Some(&b'?') {
        return None;
    }
    let (path, query) = (&upstream_path[..q], &upstream_path[q + 1..]);
    let mut out: Option<String> = None;
    // Where the part begins, and whether `out` has a part of the query yet.
    let (mut start, mut any) = (0, false);
    for part in query_parts(query) {
        let secret = left_out(&decoded(param_name(part)), rule);
        match &mut out {
            // The first secret: the parts before it are kept as they are.
            None if secret => {
                let mut o = String::with_capacity(upstream_path.len());
                o.push_str(path);
                if start > 0 {
                    o.push('?');
                    o.push_str(&query[..start - 1]);
                    any = true;
                }
                out = Some(o);
            }
            Some(o) if !secret => {
                o.push(if any { '&' } else { '?' });
                o.push_str(part);
                any = true;
            }
            _ => {}
        }
        start += part.len() + 1;
    }
    out
}

/// The parts of a query between its `&`s (cut byte by byte: `&` is ASCII, so every cut is at
/// a character boundary).
fn query_parts(query: &str) -> impl Iterator<Item = &str> {
    let mut start = 0;
    memchr::memchr_iter(b'&', query.as_bytes())
        .chain(std::iter::once(query.len()))
        .map(move |end| {
            let part = &query[start..end];
            start = end + 1;
            part
        })
}

/// A name's bytes without ASCII case.
fn folded(s: &str) -> impl Iterator<Item = u8> + '_ {
    s.bytes().map(|c| c.to_ascii_lowercase())
}

/// A query parameter's name, raw: what comes before its `=`.
fn param_name(part: &str) -> &str {
    memchr::memchr(b'=', part.as_bytes()).map_or(part, |i| &part[..i])
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::time::Duration;

    pub(crate) fn rule(key_params: Option<&[&str]>, ignore: &[&str]) -> CacheRule {
        CacheRule {
            ttl: Duration::from_secs(60),
            min_ttl: Duration::ZERO,
            max_ttl: Duration::from_secs(3600),
            statuses: vec![200],
            key_params: key_params.map(|k| k.iter().map(|s| s.to_string()).collect()),
            ignore_params: ignore.iter().map(|s| s.to_string()).collect(),
            secret_params: vec!["jwt".into(), "apiKey".into()],
            secret_headers: vec![http::header::AUTHORIZATION],
            stale_while_revalidate: 0,
            stale_if_error: 0,
            max_object_size: 1 << 20,
            lock_timeout: Duration::from_secs(1),
            min_uses: 1,
            tiles_only: false,
        }
    }

    fn key(path: &str, r: &CacheRule) -> String {
        primary("wms", None, None, path, &[], r, Purged::default())
    }

    #[test]
    fn one_copy_for_every_consumer() {
        let r = rule(None, &[]);
        let a = key(
            "/wms?SERVICE=WMS&REQUEST=GetMap&LAYERS=a&jwt=token-of-ann",
            &r,
        );
        let b = key(
            "/wms?request=GetMap&layers=a&service=WMS&jwt=token-of-bob",
            &r,
        );
        assert_eq!(a, b, "credentials removed, OGC names without case, sorted");
        assert!(!a.contains("token"));
        let c = key("/wms?SERVICE=WMS&REQUEST=GetMap&LAYERS=b", &r);
        assert_ne!(a, c, "another layer is another tile");
        // Values keep their case; names outside OGC requests do too.
        assert_ne!(key("/t?x=A", &r), key("/t?x=a", &r));
        assert_ne!(key("/t?X=a", &r), key("/t?x=a", &r));
        assert_eq!(key("/t?b=2&a=1", &r), key("/t?a=1&b=2", &r));
        // A repeated parameter's values keep their order: an upstream may read the first.
        assert_ne!(key("/t?l=a&l=b", &r), key("/t?l=b&l=a", &r));
        assert_eq!(key("/t?l=a&x=1&l=b", &r), key("/t?x=1&l=a&l=b", &r));
        // Order is judged by the name the upstream reads: escaped or not, one parameter.
        assert_ne!(key("/t?%61=2&a=1", &r), key("/t?a=1&%61=2", &r));
        assert_ne!(
            key("/w?SERVICE=WMS&LAYERS=a&%6Cayers=b", &r),
            key("/w?SERVICE=WMS&%6Cayers=b&LAYERS=a", &r)
        );
        assert_eq!(
            key("/w?SERVICE=WMS&x=1&LAYERS=a&%6Cayers=b", &r),
            key("/w?service=WMS&LAYERS=a&%6Cayers=b&x=1", &r)
        );
        // A name without `=` is sent upstream as it is: it is not the same part as `x=`.
        assert_ne!(key("/t?x", &r), key("/t?x=", &r));
    }

    #[test]
    fn allow_and_ignore_lists() {
        let r = rule(None, &["_"]);
        assert_eq!(key("/t/1.png?_=123", &r), key("/t/1.png?_=456", &r));
        let r = rule(Some(&["layer", "style"]), &[]);
        assert_eq!(
            key("/t?layer=a&style=s&v=1", &r),
            key("/t?style=s&layer=a&v=2", &r)
        );
    }

    #[test]
    fn the_service_host_and_added_headers_are_part_of_the_key() {
        let r = rule(None, &[]);
        assert_ne!(
            primary("wms", None, None, "/a", &[], &r, Purged::default()),
            primary("wmts", None, None, "/a", &[], &r, Purged::default())
        );
        assert_ne!(
            primary(
                "wms",
                Some("a.example"),
                None,
                "/a",
                &[],
                &r,
                Purged::default()
            ),
            primary(
                "wms",
                Some("b.example"),
                None,
                "/a",
                &[],
                &r,
                Purged::default()
            )
        );
        let edit = |n: &'static str, v: &'static str| {
            HeaderEdit::Set(
                http::header::HeaderName::from_static(n),
                http::header::HeaderValue::from_static(v),
            )
        };
        let with =
            |edits: &[HeaderEdit]| primary("wms", None, None, "/a", edits, &r, Purged::default());
        assert_ne!(
            with(&[edit("x-tenant", "a")]),
            with(&[edit("x-tenant", "b")])
        );
        assert_eq!(
            with(&[edit("eg-consumer-id", "ann")]),
            with(&[edit("eg-consumer-id", "bob")])
        );
        // The storage pass: whether it is sent, not its (secret) value.
        let pass = with(&[edit("x-tollgate-storage-pass", "s3cr3t")]);
        assert_ne!(pass, with(&[]));
        assert!(!pass.contains("s3cr3t"), "{pass}");
        assert_ne!(
            primary("wms", None, None, "/a", &[], &r, Purged::default()),
            primary(
                "wms",
                None,
                None,
                "/a",
                &[],
                &r,
                Purged {
                    prefixes: "",
                    endpoint: ("a", 1)
                }
            ),
            "a purged api endpoint starts afresh"
        );
        let under = Purged {
            prefixes: "\n^7",
            endpoint: ("", 0),
        };
        assert_ne!(
            primary("wms", None, None, "/a/1.png", &[], &r, Purged::default()),
            primary("wms", None, None, "/a/1.png", &[], &r, under),
            "a purged prefix starts afresh"
        );
        let tiles = CacheRule {
            tiles_only: true,
            ..rule(None, &[])
        };
        assert_ne!(
            primary("wms", None, None, "/a/1", &[], &r, Purged::default()),
            primary("wms", None, None, "/a/1", &[], &tiles, Purged::default()),
            "a step that takes every request for a tile keeps tiles of its own"
        );
        let forwarded = |f| primary("wms", None, f, "/a", &[], &r, Purged::default());
        assert_ne!(forwarded(None), forwarded(Some("x-forwarded-host:a")));
        assert_ne!(
            forwarded(Some("x-forwarded-host:a")),
            forwarded(Some("x-forwarded-host:b"))
        );
    }

    #[test]
    fn a_key_is_known_by_the_keyed_hash_of_its_text_variance_and_all() {
        use pingora_cache::key::CacheHashKey;
        let key = cache_key("wmts\n\n/1/2/3.png?".into());
        assert_eq!(key.primary_bin(), digest(b"wmts\n\n/1/2/3.png?"));
        assert_eq!(key.combined_bin(), key.primary_bin());
        assert_ne!(
            cache_key("wmts\n\n/1/2/4.png?".into()).primary_bin(),
            key.primary_bin()
        );
        // Not Pingora's own hash, which anyone can compute for any text.
        assert_ne!(
            key.primary_bin(),
            CacheKey::new("wmts\n\n/1/2/3.png?", "").primary_bin()
        );
        let mut varied = key.clone();
        varied.set_variance_key([7; 16]);
        assert_ne!(varied.combined_bin(), key.primary_bin());
        // The secret is fixed once hashes were made with it.
        let made_with = *secret();
        assert!(use_secret(made_with));
        let other = made_with.map(|b| !b);
        assert!(!use_secret(other));
        assert_eq!(*secret(), made_with);
    }

    #[test]
    fn fills_send_no_credentials() {
        let s = rule(None, &[]);
        assert_eq!(
            neutral("/wmts/1.png?jwt=t&x=1", &s).as_deref(),
            Some("/wmts/1.png?x=1")
        );
        assert_eq!(
            neutral("/wmts/1.png?jwt=t", &s).as_deref(),
            Some("/wmts/1.png")
        );
        assert_eq!(neutral("/wmts/1.png?x=1", &s), None);
        assert_eq!(
            neutral("/w?a=1&&jwt=t&%6Awt=u&b&apiKey&c=", &s).as_deref(),
            Some("/w?a=1&&b&c=")
        );
        assert_eq!(neutral("/w?&jwt=t", &s).as_deref(), Some("/w?"));
        assert_eq!(neutral("/w?", &s), None);
    }

    #[test]
    fn fills_send_only_the_parameters_that_make_the_key() {
        let ignoring = rule(None, &["_"]);
        assert_eq!(
            neutral("/w?layer=a&_=17&jwt=t", &ignoring).as_deref(),
            Some("/w?layer=a")
        );
        let listing = rule(Some(&["LAYER", "tilematrix"]), &[]);
        assert_eq!(
            neutral("/w?layer=a&style=evil&TileMatrix=3", &listing).as_deref(),
            Some("/w?layer=a&TileMatrix=3")
        );
        assert_eq!(neutral("/w?layer=a", &listing), None);
        // An OGC request whose SERVICE and REQUEST the list leaves out: its fill's query makes
        // the same key as the client's.
        let asked = "/w?SERVICE=WMTS&REQUEST=GetTile&LAYER=a&TileMatrix=3";
        let sent = neutral(asked, &listing).expect("left out");
        assert_eq!(
            primary("w", None, None, asked, &[], &listing, Purged::default()),
            primary("w", None, None, &sent, &[], &listing, Purged::default())
        );
        // What is sent makes the same key as what was asked.
        assert_eq!(
            primary(
                "w",
                None,
                None,
                "/w?layer=a&TileMatrix=3",
                &[],
                &listing,
                Purged::default()
            ),
            primary(
                "w",
                None,
                None,
                "/w?layer=a&style=evil&TileMatrix=3",
                &[],
                &listing,
                Purged::default()
            )
        );
    }

    /// The parameters a fill keeps, as `neutral` is specified: every part of the query whose
    /// decoded name is not left out of the key, in order.
    fn kept_parts(upstream_path: &str, r: &CacheRule) -> Option<String> {
        let (path, query) = upstream_path.split_once('?')?;
        let secret = |p: &str| left_out(&decoded(p.split_once('=').map_or(p, |(n, _)| n)), r);
        if !query.split('&').any(secret) {
            return None;
        }
        let kept: Vec<&str> = query.split('&').filter(|p| !secret(p)).collect();
        Some(if kept.is_empty() {
            path.to_string()
        } else {
            format!("{path}?{}", kept.join("&"))
        })
    }

    proptest::proptest! {
        #[test]
        fn fills_keep_every_other_parameter_in_order(
            parts in proptest::collection::vec("(jwt|apiKey|%6Awt|a|b\\+c|)(=[a-z%&]{0,3})?", 0..6),
        ) {
            let s = rule(None, &[]);
            let path = format!("/wmts/1.png?{}", parts.join("&"));
            proptest::prop_assert_eq!(neutral(&path, &s), kept_parts(&path, &s), "{}", path);
        }

        #[test]
        fn a_retry_makes_its_path_as_neutral_as_the_first(
            parts in proptest::collection::vec("(jwt|apiKey|a|)(=[a-z%]{0,2})?", 0..4),
            base in "(/|/wms|/b/)",
            prepend in proptest::bool::ANY,
            ignore in proptest::bool::ANY,
        ) {
            let s = std::sync::Arc::new(rule(None, &[]));
            let url = format!("/1.png?{}", parts.join("&"));
            let mut recipe = crate::pipeline::context::PathRecipe {
                url: url.clone(),
                prepend_path: prepend,
                ignore_path: ignore,
                neutral: None,
            };
            let path = recipe.path_for(&base);
            let first = neutral(&path, &s).unwrap_or(path);
            recipe.neutral = Some(s);
            proptest::prop_assert_eq!(recipe.path_for(&base), first, "from {}", url);
        }
    }
}
