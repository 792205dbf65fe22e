//! Request framing a gateway must not pass on ambiguously (request smuggling): one
//! `Content-Length`, a plain number (two, or a list, even of equal values, are refused as Node,
//! and so EG, refuses them: passed on, a strict upstream would refuse them in turn);
//! `Transfer-Encoding` ending in `chunked`.
//! (Pingora itself drops `Content-Length` when `Transfer-Encoding` is present and closes the
//! connection after such a request, so the upstream never sees both.)

use http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
use http::HeaderMap;

/// Why a request's framing is refused (400), if it is.
pub fn problem(headers: &HeaderMap) -> Option<&'static str> {
    let mut length: Option<&[u8]> = None;
    for value in headers.get_all(CONTENT_LENGTH) {
        for part in value.as_bytes().split(|b| *b == b',') {
            let part = part.trim_ascii();
            if part.is_empty() || !part.iter().all(u8::is_ascii_digit) {
                return Some("invalid Content-Length");
            }
            match length {
                Some(l) if l != part => return Some("conflicting Content-Length values"),
                Some(_) => return Some("more than one Content-Length"),
                None => length = Some(part),
            }
        }
    }
    let mut codings = headers
        .get_all(TRANSFER_ENCODING)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|c| !c.is_empty())
        .peekable();
    if codings.peek().is_some()
        && !codings
            .last()
            .is_some_and(|c| c.eq_ignore_ascii_case(b"chunked"))
    {
        return Some("unsupported Transfer-Encoding");
    }
    None
}

#[cfg(test)]
mod tests {
    use super::problem;
    use http::HeaderMap;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::header::HeaderName::from_bytes(k.as_bytes()).expect("name"),
                v.parse().expect("value"),
            );
        }
        h
    }

    #[test]
    fn framing() {
        assert_eq!(problem(&headers(&[("content-length", "5")])), None);
        assert_eq!(
            problem(&headers(&[
                ("content-length", "5"),
                ("content-length", "5")
            ])),
            Some("more than one Content-Length")
        );
        assert!(problem(&headers(&[("content-length", "5, 5")])).is_some());
        assert!(problem(&headers(&[
            ("content-length", "5"),
            ("content-length", "6")
        ]))
        .is_some());
        assert!(problem(&headers(&[("content-length", "5, 6")])).is_some());
        assert!(problem(&headers(&[("content-length", "+5")])).is_some());
        assert!(problem(&headers(&[("content-length", "")])).is_some());
        assert_eq!(problem(&headers(&[("transfer-encoding", "chunked")])), None);
        assert_eq!(
            problem(&headers(&[("transfer-encoding", "gzip, Chunked")])),
            None
        );
        assert!(problem(&headers(&[("transfer-encoding", "chunked, gzip")])).is_some());
        assert!(problem(&headers(&[("transfer-encoding", "xchunked")])).is_some());
        assert_eq!(problem(&headers(&[])), None);
    }
}
