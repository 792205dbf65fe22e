//! A client's `Expect` (RFC 9110 §10.1.1), read as EG's Node reads it: the gateway answers
//! `100-continue` itself (see `proxy::downstream`) and any other expectation with `417`, on the
//! gateway's port and the Admin API's.

use pingora_http::RequestHeader;

/// What an HTTP/1.1 client's `Expect` asks, read as EG's Node reads it (`100-continue` as a
/// word anywhere in it, in any case); an HTTP/1.0 client's is not read.
#[derive(Debug, PartialEq, Eq)]
pub enum Expectation {
    None,
    Continue,
    /// Another expectation, which the gateway cannot meet: `417 Expectation Failed` (RFC 9110
    /// §10.1.1), as EG answers it, before the pipeline runs.
    Unmet,
}

pub fn expectation(req: &RequestHeader) -> Expectation {
    if req.version != http::Version::HTTP_11 {
        return Expectation::None;
    }
    let mut values = req.headers.get_all(http::header::EXPECT).iter().peekable();
    if values.peek().is_none() {
        Expectation::None
    } else if values.any(|v| names_continue(v.as_bytes())) {
        Expectation::Continue
    } else {
        Expectation::Unmet
    }
}

/// Whether `value` has `100-continue` with no letter, digit or `_` on either side.
fn names_continue(value: &[u8]) -> bool {
    const WORD: &[u8] = b"100-continue";
    let word = |c: &u8| c.is_ascii_alphanumeric() || *c == b'_';
    value.windows(WORD.len()).enumerate().any(|(i, w)| {
        w.eq_ignore_ascii_case(WORD)
            && (i == 0 || !word(&value[i - 1]))
            && value.get(i + WORD.len()).is_none_or(|c| !word(c))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(version: http::Version, expect: &[&str]) -> RequestHeader {
        let mut req = RequestHeader::build("POST", b"/", None).expect("head");
        req.set_version(version);
        for v in expect {
            req.append_header("Expect", *v).expect("header");
        }
        req
    }

    #[test]
    fn expectations_are_read_as_node_reads_them() {
        use http::Version;
        use Expectation::*;
        for (version, expect, read) in [
            (Version::HTTP_11, &[][..], None),
            (Version::HTTP_11, &["100-continue"][..], Continue),
            (Version::HTTP_11, &[" 100-Continue "][..], Continue),
            (Version::HTTP_11, &["foo, 100-continue"][..], Continue),
            (Version::HTTP_11, &["foo", "100-continue"][..], Continue),
            (Version::HTTP_11, &["foo"][..], Unmet),
            (Version::HTTP_11, &[""][..], Unmet),
            (Version::HTTP_11, &["100-continued"][..], Unmet),
            (Version::HTTP_11, &["x100-continue"][..], Unmet),
            (Version::HTTP_10, &["foo"][..], None),
            (Version::HTTP_10, &["100-continue"][..], None),
        ] {
            assert_eq!(
                expectation(&head(version, expect)),
                read,
                "{version:?} {expect:?}"
            );
        }
    }
}
