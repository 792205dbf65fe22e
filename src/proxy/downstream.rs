//! What the gateway does with the client's request head for Pingora's phases: it answers an
//! `Expect: 100-continue` itself, and makes an HTTP/2 head one Pingora can write for a stale
//! tile's background refresh.

use pingora_core::Result;
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
    use crate::exchange::expect::{expectation, Expectation};
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
