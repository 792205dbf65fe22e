//! A stored tile revalidated by the upstream's `304` (RFC 9111 §4.3.4): the `304`'s header
//! fields replace the stored ones (Pingora's cache phases carry over only a few of them), and a
//! `304` whose entity tag, `Vary`, `Content-Encoding` or `Content-Type` is not the stored
//! tile's updates nothing.

use http::header::{
    HeaderName, AGE, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE, ETAG, LAST_MODIFIED, VARY,
};
use http::{HeaderMap, HeaderValue};
use pingora_http::ResponseHeader;

/// Fields a `304` never replaces: the connection's own and the stored body's length and range
/// (RFC 9111 §3.2: a hit sets its own), and `Vary` (the stored variants were made by the one they have, as Pingora's
/// cache phases keep it; a `304` with another selects nothing, see [`selects`]).
const KEPT: [&str; 10] = crate::wire::concat(
    crate::wire::HOP_BY_HOP,
    ["content-length", "content-range", "trailer", "vary"],
);

/// The stored head `stored` with the fields of `not_modified` in place of its own; its `Age`
/// is the `304`'s (none without one).
pub fn updated(stored: &ResponseHeader, not_modified: &ResponseHeader) -> ResponseHeader {
    let mut out = stored.clone();
    let named: Vec<&[u8]> = crate::wire::connection_tokens(&not_modified.headers).collect();
    let mut names: Vec<&HeaderName> = not_modified.headers.keys().collect();
    names.dedup();
    for name in names {
        let n = name.as_str();
        if KEPT.contains(&n) || named.iter().any(|t| t.eq_ignore_ascii_case(n.as_bytes())) {
            continue;
        }
        out.remove_header(name);
        for value in not_modified.headers.get_all(name) {
            // A name and a value the 304 held are valid.
            let _ = out.append_header(name.clone(), value.clone());
        }
    }
    if !not_modified.headers.contains_key(AGE) {
        out.remove_header(&AGE);
    }
    debug_assert!(out.headers.get(CONTENT_LENGTH) == stored.headers.get(CONTENT_LENGTH));
    out
}

/// Whether a `304` is about the stored tile whose head's fields are `stored`: unless it names
/// an entity tag that is not the stored tile's, or, neither having a tag, a `Last-Modified`
/// that is not the stored tile's (RFC 9111 §4.3.4: a strong one identifies the
/// body, a weak one must match the stored tile's; compared weakly, as a server that weakens
/// the tag of what it compresses may send the strong one on a 304, or the weak one), or a
/// `Vary` that is not the stored tile's (the upstream negotiates the tile by other headers
/// now: the stored copy is no longer one for every request it would answer; a `304` without
/// one leaves it as it is).
pub fn selects(stored: Option<&HeaderMap>, not_modified: &ResponseHeader) -> bool {
    let tag = |v: &HeaderValue| {
        let b = v.as_bytes();
        b.strip_prefix(b"W/").unwrap_or(b).to_vec()
    };
    let same_tag = match not_modified.headers.get(ETAG) {
        Some(new) => stored.and_then(|h| h.get(ETAG)).map(tag) == Some(tag(new)),
        None => true,
    };
    let same_vary = !not_modified.headers.contains_key(VARY)
        || stored.is_some_and(|h| varies_by(h) == vary_of_304_for(h, &not_modified.headers));
    // A body the 304 describes otherwise (RFC 9111 §3.2 warns of a stored `Content-Encoding`
    // replaced): as a tag of another body, or every later hit would serve the stored bytes
    // under the new description (a PNG as gzip, or as a service exception's XML).
    let same_coding = !not_modified.headers.contains_key(CONTENT_ENCODING)
        || stored.is_some_and(|h| codings(h) == codings(&not_modified.headers));
    // Without tags, a `Last-Modified` the stored tile does not have names another body
    // (RFC 9111 §4.3.4: the stored response to update is the one with that date).
    let date = |v: &HeaderValue| {
        let text = v.to_str().map(str::trim).unwrap_or_default();
        httpdate::parse_http_date(text).map_err(|_| v.as_bytes().to_vec())
    };
    let same_date = match (
        not_modified.headers.get(LAST_MODIFIED),
        not_modified.headers.contains_key(ETAG) || stored.is_some_and(|h| h.contains_key(ETAG)),
    ) {
        (Some(new), false) => stored
            .and_then(|h| h.get(LAST_MODIFIED))
            .is_some_and(|old| date(old) == date(new)),
        _ => true,
    };
    // A 304 that allows one web origin (nginx's `add_header … $http_origin` answers 304s
    // too) is about an answer per origin: a tile stored for every origin would take that
    // origin for all (see [`super::vary::allowed_origin_without_vary`]).
    let same_audience = !super::vary::allows_one_origin(&not_modified.headers)
        || stored.is_some_and(|h| varies_by(h).iter().any(|n| n == "origin" || n == "*"));
    let same_type = match not_modified.headers.get(CONTENT_TYPE) {
        Some(new) => stored
            .and_then(|h| h.get(CONTENT_TYPE))
            .is_some_and(|old| media_type(old) == media_type(new)),
        None => true,
    };
    same_tag && same_date && same_vary && same_coding && same_audience && same_type
}

/// The `Vary` of a `304` as it stands for the stored tile whose head's fields are `stored`: a
/// content-coded tile was stored with `Accept-Encoding` among them where the upstream did not
/// name it (see [`super::vary::add_missing_vary`]), which the upstream's `304` does not name
/// either (without it every revalidation of such a tile found another `Vary`: the tile was
/// dropped and fetched whole each time).
fn vary_of_304_for(stored: &HeaderMap, not_modified: &HeaderMap) -> Vec<String> {
    let mut names = varies_by(not_modified);
    let mut add = |name: &str| {
        if !names.iter().any(|n| n == name) {
            names.push(name.into());
            names.sort_unstable();
        }
    };
    if !codings(stored).is_empty() {
        add("accept-encoding");
    }
    // The same for an answer kept per web origin (`Origin`, see
    // [`super::vary::missing_vary`]): one allowed to one origin, and that tile's answer
    // allowed to none, which has only the `Vary` to say so.
    if varies_by(stored).iter().any(|n| n == "origin") {
        add("origin");
    }
    names
}

/// A `Content-Type` as compared: without whitespace, in lower case (`text/xml;charset=UTF-8`
/// is `text/xml; charset=utf-8`).
fn media_type(v: &HeaderValue) -> Vec<u8> {
    v.as_bytes()
        .iter()
        .filter(|b| !b.is_ascii_whitespace())
        .map(u8::to_ascii_lowercase)
        .collect()
}

/// The content codings a head's `Content-Encoding` lines name, lowercase, in order, but
/// `identity` (no coding).
fn codings(headers: &HeaderMap) -> Vec<String> {
    crate::wire::list(headers, &CONTENT_ENCODING)
        .map(|c| String::from_utf8_lossy(c).to_ascii_lowercase())
        .filter(|c| c != "identity")
        .collect()
}

/// The header names a head's `Vary` lines name, lowercase, sorted, once each.
fn varies_by(headers: &HeaderMap) -> Vec<String> {
    let mut names: Vec<String> = crate::wire::list(headers, &VARY)
        .map(|n| String::from_utf8_lossy(n).to_ascii_lowercase())
        .collect();
    names.sort_unstable();
    names.dedup();
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(status: u16, headers: &[(&str, &str)]) -> ResponseHeader {
        let mut h = ResponseHeader::build(status, None).unwrap();
        for (n, v) in headers {
            h.append_header(n.to_string(), *v).unwrap();
        }
        h
    }

    #[test]
    fn a_304s_fields_replace_the_stored_ones_but_the_length_and_connection() {
        let stored = head(
            200,
            &[
                ("Content-Length", "5"),
                ("Last-Modified", "Mon, 30 Nov 2026 10:00:00 GMT"),
                ("X-Version", "1"),
                ("X-Kept", "a"),
                ("Vary", "X-Style"),
                ("Age", "40"),
            ],
        );
        let not_modified = head(
            304,
            &[
                ("Last-Modified", "Tue, 01 Dec 2026 10:00:00 GMT"),
                ("X-Version", "2"),
                ("X-Version", "3"),
                ("Content-Length", "0"),
                ("Vary", "X-Other"),
                ("Connection", "X-Hop"),
                ("X-Hop", "1"),
            ],
        );
        let out = updated(&stored, &not_modified);
        let all = |n: &str| -> Vec<&str> {
            out.headers
                .get_all(n)
                .iter()
                .map(|v| v.to_str().unwrap())
                .collect()
        };
        assert_eq!(out.status, 200);
        assert_eq!(all("last-modified"), ["Tue, 01 Dec 2026 10:00:00 GMT"]);
        assert_eq!(all("x-version"), ["2", "3"]);
        assert_eq!(all("x-kept"), ["a"]);
        assert_eq!(all("content-length"), ["5"]);
        assert_eq!(all("vary"), ["X-Style"]);
        assert!(all("x-hop").is_empty() && all("connection").is_empty());
        assert!(all("age").is_empty(), "the 304 said no age");
    }

    #[test]
    fn a_304_with_another_entity_tag_selects_nothing() {
        let stored = |tag: &'static str| {
            let mut h = HeaderMap::new();
            h.insert(ETAG, HeaderValue::from_static(tag));
            h
        };
        let (v1, weak) = (stored("\"v1\""), stored("W/\"v1\""));
        assert!(selects(Some(&v1), &head(304, &[("ETag", "\"v1\"")])));
        assert!(!selects(Some(&v1), &head(304, &[("ETag", "\"v2\"")])));
        assert!(!selects(None, &head(304, &[("ETag", "\"v2\"")])));
        assert!(selects(Some(&v1), &head(304, &[])));
        assert!(selects(Some(&weak), &head(304, &[("ETag", "\"v1\"")])));
        // A weak tag selects only the stored tile it matches.
        assert!(selects(Some(&v1), &head(304, &[("ETag", "W/\"v1\"")])));
        assert!(selects(Some(&weak), &head(304, &[("ETag", "W/\"v1\"")])));
        assert!(!selects(Some(&v1), &head(304, &[("ETag", "W/\"v2\"")])));
        assert!(!selects(Some(&weak), &head(304, &[("ETag", "W/\"v2\"")])));
        assert!(!selects(None, &head(304, &[("ETag", "W/\"v2\"")])));
    }

    #[test]
    fn a_304_that_allows_one_origin_selects_only_a_tile_stored_per_origin() {
        let acao = "Access-Control-Allow-Origin";
        let shared = head(200, &[("ETag", "\"v\"")]);
        let per_origin = head(
            200,
            &[("ETag", "\"v\""), ("Vary", "Accept-Encoding, Origin")],
        );
        let b = [("ETag", "\"v\""), (acao, "https://b.example")];
        assert!(!selects(Some(&shared.headers), &head(304, &b)));
        assert!(selects(Some(&per_origin.headers), &head(304, &b)));
        assert!(selects(Some(&shared.headers), &head(304, &[(acao, "*")])));
    }

    #[test]
    fn without_tags_a_304_with_another_date_selects_nothing() {
        let date = "Sun, 06 Dec 2026 10:00:00 GMT";
        let stored = head(200, &[("Last-Modified", date)]);
        let stored = Some(&stored.headers);
        let with = |h: &[(&str, &str)]| selects(stored, &head(304, h));
        assert!(with(&[("Last-Modified", date)]));
        // (The same date written otherwise.)
        assert!(with(&[("Last-Modified", "Sunday, 06-Dec-26 10:00:00 GMT")]));
        assert!(with(&[]));
        assert!(!with(&[("Last-Modified", "Sun, 06 Dec 2026 11:00:00 GMT")]));
        assert!(!selects(None, &head(304, &[("Last-Modified", date)])));
        // With a tag, the tag decides.
        let tagged = head(200, &[("ETag", "\"v\""), ("Last-Modified", date)]);
        let later = [
            ("ETag", "\"v\""),
            ("Last-Modified", "Sun, 06 Dec 2026 11:00:00 GMT"),
        ];
        assert!(selects(Some(&tagged.headers), &head(304, &later)));
    }

    #[test]
    fn a_304_that_describes_another_body_selects_nothing() {
        let stored = head(200, &[("ETag", "\"v\""), ("Content-Type", "image/png")]);
        let stored = Some(&stored.headers);
        let with = |h: &[(&str, &str)]| selects(stored, &head(304, h));
        assert!(with(&[("Content-Type", "Image/PNG ")]));
        let xml = head(200, &[("Content-Type", "text/xml;charset=UTF-8")]);
        assert!(selects(
            Some(&xml.headers),
            &head(304, &[("Content-Type", "text/xml; charset=utf-8")])
        ));
        assert!(with(&[("Content-Encoding", "identity")]));
        assert!(!with(&[("Content-Encoding", "gzip")]));
        assert!(!with(&[("Content-Type", "text/html")]));
        assert!(!with(&[("Content-Type", "application/vnd.ogc.se_xml")]));
        let gzip = head(200, &[("Content-Encoding", "GZIP")]);
        assert!(selects(
            Some(&gzip.headers),
            &head(304, &[("Content-Encoding", "gzip")])
        ));
        assert!(!selects(
            Some(&gzip.headers),
            &head(304, &[("Content-Encoding", "br")])
        ));
        assert!(!selects(None, &head(304, &[("Content-Type", "image/png")])));
        // A range is the hit's own, never the 304's.
        let out = updated(
            &head(200, &[("Content-Length", "5")]),
            &head(304, &[("Content-Range", "bytes 0-1/2")]),
        );
        assert!(out.headers.get("content-range").is_none());
    }

    #[test]
    fn a_304_with_another_vary_selects_nothing() {
        let stored = head(200, &[("ETag", "\"v\""), ("Vary", "Accept, X-Style")]);
        let stored = Some(&stored.headers);
        let with = |vary: &[&str]| {
            let mut h: Vec<(&str, &str)> = vec![("ETag", "\"v\"")];
            h.extend(vary.iter().map(|v| ("Vary", *v)));
            selects(stored, &head(304, &h))
        };
        assert!(with(&[]), "a 304 without Vary leaves the stored one");
        assert!(with(&["accept,x-style"]));
        assert!(with(&["X-Style", " Accept "]));
        assert!(!with(&["Accept"]));
        assert!(!with(&["Accept, X-Style, Accept-Encoding"]));
        assert!(!with(&["*"]));
        let plain = head(200, &[("ETag", "\"v\"")]);
        assert!(!selects(
            Some(&plain.headers),
            &head(304, &[("Vary", "Accept-Encoding")])
        ));
        // A coded tile stored with the `Accept-Encoding` the gateway added to its `Vary`.
        let coded = head(
            200,
            &[
                ("ETag", "\"v\""),
                ("Content-Encoding", "gzip"),
                ("Vary", "Accept"),
                ("Vary", "Accept-Encoding"),
            ],
        );
        let coded = Some(&coded.headers);
        assert!(selects(coded, &head(304, &[("Vary", "Accept")])));
        assert!(selects(
            coded,
            &head(304, &[("Vary", "Accept, Accept-Encoding")])
        ));
        assert!(!selects(coded, &head(304, &[("Vary", "Origin")])));
    }
}
