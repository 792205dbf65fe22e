//! A stored response head, kept serialised in one buffer.
//!
//! A response head as Pingora holds it (`ResponseHeader`) is a dozen or more small allocations:
//! the header map's tables, a buffer per value, and the same again for the names' case. Kept
//! for every stored tile, they are scattered over the memory tier and freed one by one when
//! the tile is evicted; on a cache cycling through its budget every fill then allocates in
//! memory long out of the CPU's caches. A stored head is instead its status line and header
//! lines (names cased as the upstream sent them) in one buffer, with what the fast path asks of
//! it on every hit (status, length, `Vary`) beside it. A `ResponseHeader` is made from it when
//! Pingora's cache phases or the disk tier need one, and kept from then on.

use std::sync::OnceLock;

use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderName, HeaderValue, StatusCode};
use pingora_core::{Error, ErrorType, Result};
use pingora_http::{HeaderNameVariant, ResponseHeader};

/// Headers a stored head leaves out (lowercase), with their name bits (see [`name_bit`]) made
/// once, when the set is.
pub struct Skip {
    names: &'static [&'static str],
    bits: u64,
    /// Whether `connection` is among them: then so are the headers its `Connection` names.
    connection: bool,
}

impl Skip {
    pub const fn new(names: &'static [&'static str]) -> Skip {
        let (mut bits, mut connection, mut i) = (0, false, 0);
        while i < names.len() {
            bits |= name_bit(names[i].as_bytes());
            connection |= eq_bytes(names[i].as_bytes(), b"connection");
            i += 1;
        }
        Skip {
            names,
            bits,
            connection,
        }
    }

    /// None left out.
    pub const NONE: Skip = Skip::new(&[]);

    pub fn names(&self) -> &'static [&'static str] {
        self.names
    }
}

const fn eq_bytes(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

/// Headers a stored head never keeps: the upstream connection's own (RFC 9110 §7.6.1; with
/// `connection` skipped, the headers its `Connection` names go too). The `Age` the upstream
/// gave is kept with those a hit gets per response: a hit's own `Age` counts from it.
pub const NOT_STORED: Skip = Skip::new(&NOT_STORED_NAMES);
const NOT_STORED_NAMES: [&str; 7] =
    crate::wire::concat(crate::wire::HOP_BY_HOP, ["transfer-encoding"]);

/// Headers a hit's head gets per response, never from the stored head.
const PER_RESPONSE: [&[u8]; 6] = [
    b"age",
    b"date",
    b"connection",
    b"keep-alive",
    b"transfer-encoding",
    b"x-cache-status",
];

pub struct StoredHead {
    status: StatusCode,
    /// `HTTP/1.1 <status> <reason>\r\n` and one `Name: value\r\n` per header: first those a
    /// hit's head carries as they are, then (from `shared` on) those it gets per response.
    wire: Bytes,
    /// Where the headers a hit's head carries as they are end in `wire`.
    shared: usize,
    content_length: Option<usize>,
    varies: bool,
    /// The `Age` the upstream gave the response (a cache before it), in seconds: 0 without
    /// one (or with one that is not a number).
    age: u64,
    /// One bit per header name (by [`name_bit`]): most names a hit asks about are not there.
    names: u64,
    parsed: OnceLock<ResponseHeader>,
}

/// A name's bit in [`StoredHead::names`], case-insensitively, from its length and three of its
/// bytes (a name sharing a bit is found by reading the lines). The multiplier gives the names
/// a stored head leaves out or writes per response bits of their own among the headers tile
/// servers, object stores and CDNs commonly send (see the test): a name sharing one was
/// compared with each of them on every miss (`Last-Modified`, with the first multiplier tried).
const fn name_bit(name: &[u8]) -> u64 {
    const fn at(name: &[u8], i: usize) -> u64 {
        if i < name.len() {
            name[i].to_ascii_lowercase() as u64
        } else {
            0
        }
    }
    let n = name.len();
    let mix =
        (n as u64) | at(name, 0) << 8 | at(name, n / 2) << 16 | at(name, n.wrapping_sub(1)) << 24;
    1 << (mix.wrapping_mul(0x2b00_b570_f93e_e7cd) >> 58)
}

/// The bits of `names` (a name whose bit is not among them is none of them).
fn bits_of<'a>(names: impl IntoIterator<Item = &'a [u8]>) -> u64 {
    names.into_iter().fold(0, |bits, n| bits | name_bit(n))
}

/// The bits of [`PER_RESPONSE`].
const PER_RESPONSE_BITS: u64 = {
    let (mut bits, mut i) = (0, 0);
    while i < PER_RESPONSE.len() {
        bits |= name_bit(PER_RESPONSE[i]);
        i += 1;
    }
    bits
};
const ACCEPT_RANGES_BIT: u64 = name_bit(b"accept-ranges");
const AGE_BIT: u64 = name_bit(b"age");

/// The `Age` of `resp` in seconds (0 without one, or with one that is not a number: RFC 9111
/// §5.1 has a cache ignore it); of several lines, the greatest (a tile is never younger than
/// one of them says: the first kept one of `10` and `20000` fresh).
pub fn age_of(resp: &ResponseHeader) -> u64 {
    resp.headers
        .get_all(http::header::AGE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|v| crate::cache::freshness::parse_delta(v.trim()))
        .max()
        .unwrap_or(0)
}

/// The part of a hit's head that is the same for every request (see
/// [`StoredHead::hit_template`]).
pub struct Template<'a> {
    /// The status line and the header lines a hit carries as they are.
    pub lines: &'a [u8],
    /// Whether `Accept-Ranges: bytes` follows them.
    pub ranges: bool,
    /// The bits of the names the head has (see [`name_bit`]).
    names: u64,
}

impl<'a> Template<'a> {
    /// The template in `lines`, as [`write_template`] wrote it (with its `ranges` and name
    /// bits).
    pub fn new(lines: &'a [u8], ranges: bool, names: u64) -> Template<'a> {
        Template {
            lines,
            ranges,
            names,
        }
    }

    /// Whether the lines have header `name`. (Of the headers a hit gets per response, only
    /// those the lines have are found.)
    pub fn has(&self, name: &HeaderName) -> bool {
        has_line(self.lines, self.names, name)
    }
}

/// Writes the template of a hit's head ([`StoredHead::hit_template`]) for `resp` as it would
/// be stored (without [`NOT_STORED`]) into `out`, without storing it: what a miss that is not
/// stored is answered with. `content_length`: that of `resp`. Its `ranges` and name bits;
/// `None` (nothing written) when the head is not sent as it is stored.
pub fn write_template(
    resp: &ResponseHeader,
    content_length: Option<usize>,
    body_len: usize,
    out: &mut BytesMut,
) -> Option<(bool, u64)> {
    let varies = resp.headers.contains_key(http::header::VARY);
    if !sent_as_stored(resp.status, content_length, varies, body_len) {
        return None;
    }
    let ranges = super::offers_ranges(resp.status, content_length);
    crate::wire::status_line(out, resp.status, resp.get_reason_phrase());
    Some((ranges, write_lines(resp, &NOT_STORED, ranges, out, None)))
}

/// Whether a head is sent as it is stored (see [`StoredHead::hit_template`]).
fn sent_as_stored(
    status: StatusCode,
    content_length: Option<usize>,
    varies: bool,
    body_len: usize,
) -> bool {
    !matches!(status.as_u16(), 100..=199 | 204 | 304) && content_length == Some(body_len) && !varies
}

/// Writes the header lines of `resp` a stored head keeps — all but those named in `skip`
/// (and, when `skip` has `connection`, those the upstream's `Connection` names) — in the
/// upstream's order: those a hit carries as they are into `shared`, those it gets per response
/// (and `Accept-Ranges` when a hit offers `ranges` itself) into `per_response`, or nowhere
/// without one. The bits of the names kept.
fn write_lines(
    resp: &ResponseHeader,
    skip: &Skip,
    ranges: bool,
    shared: &mut BytesMut,
    mut per_response: Option<&mut BytesMut>,
) -> u64 {
    let mut names = 0;
    // Most names are none of those skipped or sent per response: their bits say so.
    let skip_bits = skip.bits;
    // The headers the upstream's `Connection` names belong to its connection too (a bit per
    // name, read once; a name whose bit is there is looked for).
    let tokens = || crate::wire::connection_tokens(&resp.headers);
    let named_bits = if skip.connection {
        bits_of(tokens())
    } else {
        0
    };
    let ranges_bit = if ranges { ACCEPT_RANGES_BIT } else { 0 };
    let looked_at = skip_bits | named_bits | PER_RESPONSE_BITS | ranges_bit;
    let _ = resp.map(|name, value| {
        let name: &[u8] = match &name {
            HeaderNameVariant::Case(n) => n.as_slice(),
            HeaderNameVariant::Titled(n) => n.as_bytes(),
        };
        let bit = name_bit(name);
        if looked_at & bit == 0 {
            names |= bit;
            crate::wire::header_line(shared, name, value.as_bytes());
            return Ok(());
        }
        if (skip_bits & bit != 0
            && skip
                .names
                .iter()
                .any(|s| name.eq_ignore_ascii_case(s.as_bytes())))
            || (named_bits & bit != 0 && tokens().any(|t| t.eq_ignore_ascii_case(name)))
        {
            return Ok(());
        }
        names |= bit;
        let per = (PER_RESPONSE_BITS & bit != 0
            && PER_RESPONSE.iter().any(|n| name.eq_ignore_ascii_case(n)))
            || (ranges && bit == ACCEPT_RANGES_BIT && name.eq_ignore_ascii_case(b"accept-ranges"));
        let out = match (per, per_response.as_deref_mut()) {
            (false, _) => &mut *shared,
            (true, Some(out)) => out,
            (true, None) => return Ok(()),
        };
        crate::wire::header_line(out, name, value.as_bytes());
        Ok(())
    });
    names
}

/// Whether the header lines in `wire` (after its first line), whose names have the bits
/// `names`, have header `name`.
fn has_line(wire: &[u8], names: u64, name: &HeaderName) -> bool {
    let name = name.as_str().as_bytes();
    if names & name_bit(name) == 0 {
        return false;
    }
    // Each line after a line end; a name is followed by its colon.
    memchr::memchr_iter(b'\n', wire).any(|end| {
        let line = &wire[end + 1..];
        line.len() > name.len()
            && line[name.len()] == b':'
            && line[..name.len()].eq_ignore_ascii_case(name)
    })
}

impl StoredHead {
    /// The head of `resp` without the headers named in `skip` (lowercase), in the upstream's
    /// order, except that those a hit's head gets per response come last.
    pub fn of(resp: &ResponseHeader, skip: &Skip) -> StoredHead {
        let content_length = super::content_length(resp);
        let ranges = super::offers_ranges(resp.status, content_length);
        let mut wire = BytesMut::with_capacity(64 + 48 * resp.headers.len());
        crate::wire::status_line(&mut wire, resp.status, resp.get_reason_phrase());
        let mut per_response = BytesMut::with_capacity(128);
        let names = write_lines(resp, skip, ranges, &mut wire, Some(&mut per_response));
        let shared = wire.len();
        wire.put_slice(&per_response);
        StoredHead {
            status: resp.status,
            wire: wire.freeze(),
            shared,
            content_length,
            varies: resp.headers.contains_key(http::header::VARY),
            age: if names & AGE_BIT == 0 {
                0
            } else {
                age_of(resp)
            },
            names,
            parsed: OnceLock::new(),
        }
    }

    /// The head of `resp` as it is, with `resp` kept as its parsed form.
    pub fn keep(resp: ResponseHeader) -> StoredHead {
        let head = StoredHead::of(&resp, &Skip::NONE);
        let _ = head.parsed.set(resp);
        head
    }

    pub fn status(&self) -> StatusCode {
        self.status
    }

    pub fn content_length(&self) -> Option<usize> {
        self.content_length
    }

    /// The `Age` the upstream gave the response, in seconds.
    pub fn age(&self) -> u64 {
        self.age
    }

    /// Whether the response varies by request headers.
    pub fn varies(&self) -> bool {
        self.varies
    }

    /// Bytes the serialised head takes.
    pub fn wire_size(&self) -> usize {
        self.wire.len()
    }

    /// Whether the head has header `name`.
    pub fn has(&self, name: &HeaderName) -> bool {
        has_line(&self.wire, self.names, name)
    }

    /// The part of a hit's head that is the same for every request, serialised: the status
    /// line and the stored headers but those written per response (`Age`, `Date`,
    /// `Connection`, `X-Cache-Status`), and whether `Accept-Ranges: bytes` follows them (on a
    /// 200, as Pingora's cache phases answer a hit, see [`super::offer_ranges`]). `None` when
    /// the head is not sent as it is stored: a status without a body, no length or one the
    /// body (`body_len` bytes) does not have (a hit is then chunked), a `Vary`.
    pub fn hit_template(&self, body_len: usize) -> Option<Template<'_>> {
        sent_as_stored(self.status, self.content_length, self.varies, body_len).then(|| Template {
            lines: &self.wire[..self.shared],
            ranges: self.offers_ranges(),
            names: self.names,
        })
    }

    /// Whether a hit says `Accept-Ranges: bytes` (see [`super::offer_ranges`]).
    pub fn offers_ranges(&self) -> bool {
        super::offers_ranges(self.status, self.content_length)
    }

    /// Name and value of each header line.
    fn lines(&self) -> impl Iterator<Item = (&[u8], &[u8])> + '_ {
        self.wire.split(|b| *b == b'\n').skip(1).filter_map(|line| {
            let line = line.strip_suffix(b"\r")?;
            let colon = line.iter().position(|b| *b == b':')?;
            Some((&line[..colon], line[colon + 1..].trim_ascii_start()))
        })
    }

    /// The head as Pingora's `ResponseHeader`, made on first use and kept. Only this module
    /// writes the buffer, from a valid head, so reading it back fails only on a bug: that is an
    /// error for the request, never a panic.
    pub fn header(&self) -> Result<&ResponseHeader> {
        if let Some(h) = self.parsed.get() {
            return Ok(h);
        }
        let parsed = self.parse()?;
        Ok(self.parsed.get_or_init(|| parsed))
    }

    /// A new `ResponseHeader` from the serialised head (its values share the buffer).
    pub fn parse(&self) -> Result<ResponseHeader> {
        let (first, _) = self
            .wire
            .split_at(self.wire.iter().position(|b| *b == b'\n').unwrap_or(0));
        let reason = first
            .strip_suffix(b"\r")
            .unwrap_or(first)
            .splitn(3, |b| *b == b' ')
            .nth(2)
            .and_then(|r| std::str::from_utf8(r).ok());
        let mut header = ResponseHeader::build(self.status, Some(self.lines().count()))?;
        header.set_reason_phrase(reason)?;
        for (name, value) in self.lines() {
            let value = HeaderValue::from_maybe_shared(self.wire.slice_ref(value))
                .map_err(|_| Error::explain(ErrorType::InternalError, "a stored header value"))?;
            header.append_header(self.wire.slice_ref(name), value)?;
        }
        Ok(header)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A response head with `headers`, in that order and case.
    pub(crate) fn response(status: u16, headers: &[(&str, &str)]) -> ResponseHeader {
        let mut h = ResponseHeader::build(status, None).unwrap();
        for (name, value) in headers {
            h.append_header(name.to_string(), *value).unwrap();
        }
        h
    }

    /// Headers tile servers (MapServer, MapCache, GeoServer), object stores and CDNs send: none
    /// shares a bit with a name [`write_lines`] looks at more closely, so each goes out at
    /// once.
    #[test]
    fn common_names_share_no_bit_with_those_looked_at() {
        let looked_at = NOT_STORED.bits | PER_RESPONSE_BITS | ACCEPT_RANGES_BIT;
        let common = [
            "server",
            "content-type",
            "content-length",
            "last-modified",
            "etag",
            "cache-control",
            "expires",
            "vary",
            "content-encoding",
            "content-disposition",
            "content-language",
            "content-range",
            "pragma",
            "link",
            "location",
            "set-cookie",
            "access-control-allow-origin",
            "access-control-expose-headers",
            "access-control-allow-credentials",
            "timing-allow-origin",
            "x-content-type-options",
            "strict-transport-security",
            "x-frame-options",
            "x-xss-protection",
            "content-security-policy",
            "referrer-policy",
            "x-request-id",
            "x-powered-by",
            "www-authenticate",
            "retry-after",
            "via",
            "alt-svc",
            "x-amz-request-id",
            "x-amz-id-2",
            "x-amz-version-id",
            "x-cache",
            "x-served-by",
            "x-timer",
            "cf-ray",
            "surrogate-key",
        ];
        for name in common {
            assert_eq!(name_bit(name.as_bytes()) & looked_at, 0, "{name}");
            assert_eq!(
                name_bit(name.to_ascii_uppercase().as_bytes()),
                name_bit(name.as_bytes()),
                "{name}"
            );
        }
    }

    fn upstream_head() -> ResponseHeader {
        response(
            200,
            &[
                ("Content-Type", "image/png"),
                ("content-length", "20"),
                ("Connection", "keep-alive"),
                ("X-Tile", "a"),
                ("x-tile", "b:c"),
                ("ETag", "\"v1\""),
                ("Age", "3"),
                ("X-Empty", ""),
            ],
        )
    }

    fn wire(h: &ResponseHeader) -> Vec<u8> {
        let mut b = BytesMut::new();
        h.header_to_h1_wire(&mut b);
        b.to_vec()
    }

    #[test]
    fn a_stored_head_reads_back_as_it_was_without_the_skipped_headers() {
        let up = upstream_head();
        let head = StoredHead::of(&up, &NOT_STORED);
        let mut expected = up.clone();
        for n in NOT_STORED.names() {
            expected.remove_header(*n);
        }
        // The upstream's `Age` goes last, with the headers a hit gets per response.
        expected.remove_header("age");
        expected.append_header("Age", "3").unwrap();
        let back = head.parse().unwrap();
        assert_eq!(back.status, expected.status);
        assert_eq!(back.get_reason_phrase(), Some("OK"));
        assert_eq!(back.headers, expected.headers);
        // In the upstream's order (removing from a header map moves its last header up).
        assert_eq!(
            String::from_utf8(wire(&back)).unwrap(),
            "Content-Type: image/png\r\ncontent-length: 20\r\nX-Tile: a\r\nx-tile: b:c\r\nETag: \"v1\"\r\nX-Empty: \r\nAge: 3\r\n"
        );
        assert_eq!(head.content_length(), Some(20));
        assert_eq!(head.age(), 3);
        assert_eq!(
            StoredHead::keep(back.clone()).age(),
            3,
            "read back from a file"
        );
        assert!(!head.varies());
        assert!(head.has(&http::header::ETAG));
        assert!(head.has(&HeaderName::from_static("x-tile")));
        assert!(head.has(&http::header::AGE));
        assert!(!head.has(&http::header::CONNECTION));
        assert!(!head.has(&http::header::ACCESS_CONTROL_ALLOW_ORIGIN));
        assert!(head.has(&http::header::CONTENT_TYPE));
        assert!(head.has(&http::header::CONTENT_LENGTH));
        assert!(head.has(&HeaderName::from_static("x-empty")));
        assert_eq!(head.header().unwrap().headers, back.headers);
    }

    #[test]
    fn the_upstream_connections_headers_are_not_stored() {
        let up = response(
            200,
            &[
                ("Content-Length", "2"),
                ("Connection", "keep-alive, X-Hop"),
                ("X-Hop", "1"),
                ("Upgrade", "h2,h2c"),
                ("Proxy-Connection", "keep-alive"),
                ("X-Tile", "a"),
            ],
        );
        let head = StoredHead::of(&up, &NOT_STORED);
        let back = head.parse().unwrap();
        let names: Vec<&str> = back.headers.keys().map(|n| n.as_str()).collect();
        assert_eq!(names, ["content-length", "x-tile"]);
        assert!(!head.has(&HeaderName::from_static("x-hop")));
    }

    #[test]
    fn a_hit_template_is_the_stored_head_without_what_each_response_gets() {
        let mut up = upstream_head();
        up.append_header("Date", "Tue, 01 Dec 2026 10:00:00 GMT")
            .unwrap();
        up.append_header("X-Cache-Status", "MISS").unwrap();
        up.append_header("accept-ranges", "none").unwrap();
        let head = StoredHead::of(&up, &NOT_STORED);
        let template = head.hit_template(20).unwrap();
        assert!(template.ranges);
        assert_eq!(
            std::str::from_utf8(template.lines).unwrap(),
            "HTTP/1.1 200 OK\r\nContent-Type: image/png\r\ncontent-length: 20\r\nX-Tile: a\r\nx-tile: b:c\r\nETag: \"v1\"\r\nX-Empty: \r\n"
        );
        // What a hit gets per response is kept too, after the rest.
        let back = head.parse().unwrap();
        assert_eq!(
            back.headers.get("date").unwrap(),
            "Tue, 01 Dec 2026 10:00:00 GMT"
        );
        assert_eq!(back.headers.get("accept-ranges").unwrap(), "none");
        assert!(head.has(&http::header::DATE));
        // A length the body does not have, a status without a body, a Vary: no template.
        assert!(head.hit_template(19).is_none());
        let mut nothing = ResponseHeader::build(204, None).unwrap();
        nothing.append_header("Content-Length", "0").unwrap();
        assert!(StoredHead::of(&nothing, &NOT_STORED)
            .hit_template(0)
            .is_none());
        up.append_header("Vary", "Accept").unwrap();
        assert!(StoredHead::of(&up, &NOT_STORED).hit_template(20).is_none());
        // Another status keeps the upstream's Accept-Ranges and gets none added.
        let mut other = ResponseHeader::build(203, None).unwrap();
        other.append_header("Content-Length", "2").unwrap();
        other.append_header("Accept-Ranges", "none").unwrap();
        let other = StoredHead::of(&other, &NOT_STORED);
        let t = other.hit_template(2).unwrap();
        assert!(!t.ranges);
        assert_eq!(
            std::str::from_utf8(t.lines).unwrap(),
            "HTTP/1.1 203 Non Authoritative Information\r\nContent-Length: 2\r\nAccept-Ranges: none\r\n"
        );
    }

    #[test]
    fn a_custom_reason_and_vary_are_kept() {
        let mut up = ResponseHeader::build(203, None).unwrap();
        up.set_reason_phrase(Some("Tile Made Elsewhere")).unwrap();
        up.append_header("Vary", "Accept").unwrap();
        let head = StoredHead::keep(up);
        assert!(head.varies());
        assert_eq!(head.status().as_u16(), 203);
        let back = head.parse().unwrap();
        assert_eq!(back.get_reason_phrase(), Some("Tile Made Elsewhere"));
        assert_eq!(back.headers.get("vary").unwrap(), "Accept");
        assert_eq!(
            head.header().unwrap().get_reason_phrase(),
            Some("Tile Made Elsewhere")
        );
    }
}
