//! What the gateway does with the client's request head for Pingora's phases: it answers an
//! `Expect: 100-continue` itself (and another expectation with `417`), and makes an HTTP/2 head one Pingora can write for a stale
//! tile's background refresh.

use pingora_core::Result;
use pingora_http::RequestHeader;
use pingora_proxy::Session;

/// Pingora makes a stale tile's background refresh from the client's request head written as
/// HTTP/1: an HTTP/2 head as `HTTP/2`, which its own reader then refuses, and without a `Host`
/// (HTTP/2 names the host in the target). The refresh of a tile an HTTP/2 client found stale
/// never ran, and its fetch lock held the tile's other refreshes off for 30 s. The head says
/// HTTP/1.1 and names its host for the refresh; whether it was changed (it says HTTP/2 again
/// before the client's answer is written).
pub(super) fn head_for_refresh(session: &mut Session) -> bool {
    let head = session.req_header_mut();
    if head.version != http::Version::HTTP_2 {
        return false;
    }
    if !head.headers.contains_key(http::header::HOST) {
        let Some(authority) = head.uri.authority().map(|a| a.as_str().to_string()) else {
            return false;
        };
        if head.insert_header(http::header::HOST, authority).is_err() {
            return false;
        }
    }
    head.set_version(http::Version::HTTP_11);
    true
}

/// Answers an HTTP/1.1 client's `Expect: 100-continue` with `100 Continue` once its request
/// goes upstream (as EG's Node and nginx answer it: forwarded, a client waited a second for
/// an upstream that sends none before it sent its body); once (a retry finds it sent). (An HTTP/2
/// stream's `100` cannot be sent: Pingora's HTTP/2 session drops informational heads.)
pub(super) async fn answer_continue(session: &mut Session) -> Result<()> {
    if expectation(session.req_header()) != Expectation::Continue
        || session.is_http2()
        || session.is_body_done()
        || session.response_written().is_some()
    {
        return Ok(());
    }
    // (An informational answer before the body is read would close the connection after
    // the final one, as an answer before the body does.)
    session.set_close_on_response_before_downstream_finish(false);
    let written = session.write_continue_response().await;
    session.set_close_on_response_before_downstream_finish(true);
    written
}

/// What an HTTP/1.1 client's `Expect` asks, read as EG's Node reads it (`100-continue` as a
/// word anywhere in it, in any case); an HTTP/1.0 client's is not read.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Expectation {
    None,
    Continue,
    /// Another expectation, which the gateway cannot meet: `417 Expectation Failed` (RFC 9110
    /// §10.1.1), as EG answers it, before the pipeline runs.
    Unmet,
}

pub(super) fn expectation(req: &RequestHeader) -> Expectation {
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
