//! What the gateway does with the client's request head for Pingora's phases: what it asks of
//! the connection, a head answered by itself (400, 417), an `Expect: 100-continue` answered by
//! the gateway, and an HTTP/2 head made one Pingora can write for a stale tile's background
//! refresh.

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

/// What the client's head asks of its connection (to close; no informational answer to an
/// HTTP/1.0 client), and whether it is answered by its head alone: a `Connection` naming the
/// framing (400), an expectation the gateway cannot meet (417) — before anything runs, the
/// body unread, the connection closed after the answer.
pub(super) async fn answered_by_its_head(session: &mut Session) -> Result<bool> {
    use crate::exchange::expect::{expectation, Expectation};
    use crate::pipeline::context::Reply;
    // The client asks to close, or the gateway is leaving (an upgrade took its sockets:
    // Pingora's session minds only a shutdown).
    if crate::wire::asks_close(&session.req_header().headers) || crate::listener::leaving() {
        session.set_keepalive(None);
    }
    // RFC 9110 §15.2: no informational answer to an HTTP/1.0 client, which would take it
    // for the final one (as on the fast path).
    if session.req_header().version < http::Version::HTTP_11 {
        session.set_ignore_info_resp(true);
    }
    let refusal = if crate::wire::connection_refused(&session.req_header().headers) {
        Reply::text(400, "Bad Request")
    } else if expectation(session.req_header()) == Expectation::Unmet {
        Reply::text(417, "Expectation Failed")
    } else {
        return Ok(false);
    };
    session.set_keepalive(None);
    super::send_reply(session, refusal, &[]).await?;
    Ok(true)
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
