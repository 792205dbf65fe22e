//! What every auth policy does on success and failure, as EG's common auth callback: success
//! sets the consumer and sends `eg-consumer-id` upstream; failure answers 401 (or 403) with a
//! short text body, or with `passThrough` goes on anonymously and marks the response
//! `eg-consumer-id: anonymous`.

use std::borrow::Cow;

use http::header::{HeaderName, HeaderValue};

use crate::pipeline::context::{Consumer, HeaderEdit, Reply};
use crate::pipeline::{Exchange, Outcome};

pub static EG_CONSUMER_ID: HeaderName = HeaderName::from_static("eg-consumer-id");

pub fn succeed(x: &mut Exchange, consumer: Consumer) -> Outcome {
    if let Some(v) = &consumer.id_header {
        x.upstream_edits
            .push(HeaderEdit::Set(EG_CONSUMER_ID.clone(), v.clone()));
    }
    x.consumer = Some(consumer);
    Outcome::Continue
}

/// A failed attempt: `status` is 401 or 403. `why` says what was wrong, in words that never
/// hold the credential itself (it is logged at debug).
/// A credential not found while the consumer store has never been read (unreachable since the
/// start: a wrong password, Redis down): no credential is known, so none is refused for what
/// it is — `503`, where a `401` told the client its key was wrong. (With `passThrough`, the
/// request goes on as anonymous, as for a refusal.)
pub fn store_unread(x: &mut Exchange, pass_through: bool, why: &'static str) -> Outcome {
    store_unasked(x, pass_through, why, "has not been read yet")
}

/// A credential not found while the store does not answer (its lookup failed or did not end,
/// the health probe's ping went unanswered): one created since the last read may be there —
/// `503`, as [`store_unread`].
pub fn store_silent(x: &mut Exchange, pass_through: bool, why: &'static str) -> Outcome {
    store_unasked(x, pass_through, why, "does not answer")
}

fn store_unasked(x: &mut Exchange, pass_through: bool, why: &'static str, store: &str) -> Outcome {
    if pass_through {
        return fail(x, true, 401, why);
    }
    log::debug!(
        "request {}: {why}, and the consumer store {store}: 503",
        x.request_id.get()
    );
    Outcome::Respond(Reply::text(503, "Service Unavailable"))
}

pub fn fail(x: &mut Exchange, pass_through: bool, status: u16, why: &'static str) -> Outcome {
    log::debug!(
        "request {}: {why}: {}",
        x.request_id.get(),
        if pass_through {
            "going on as anonymous"
        } else if status == 403 {
            "403"
        } else {
            "401"
        }
    );
    if pass_through {
        x.response_edits.push(HeaderEdit::Set(
            EG_CONSUMER_ID.clone(),
            HeaderValue::from_static("anonymous"),
        ));
        return Outcome::Continue;
    }
    let body = if status == 403 {
        "Forbidden"
    } else {
        "Unauthorized"
    };
    Outcome::Respond(Reply::text(status, body))
}

/// The value of query parameter `name`, percent-decoded (borrowed when it has no escapes), as
/// Express's query parser (EG's) reads a query: names are decoded too (`%61piKey`), and a name
/// given twice is a list, which no credential extractor takes (none).
pub fn query_param<'q>(query: Option<&'q str>, name: &str) -> Option<Cow<'q, str>> {
    let query = query?;
    if name.contains('=') {
        return None; // no name the query can hold
    }
    let decoded = crate::cache::key::decoded;
    let mut found = None;
    // Pairs are cut at `&` byte by byte: every byte of a `&` and `=` is ASCII, so each cut
    // is at a character boundary.
    let mut start = 0;
    while start <= query.len() {
        let end =
            memchr::memchr(b'&', &query.as_bytes()[start..]).map_or(query.len(), |i| start + i);
        let pair = &query[start..end];
        let (key, value) = match memchr::memchr(b'=', pair.as_bytes()) {
            Some(i) => (&pair[..i], &pair[i + 1..]),
            None => (pair, ""),
        };
        if key == name || (key.len() >= name.len() && decoded(key) == name) {
            if found.is_some() {
                return None;
            }
            found = Some(decoded(value));
        }
        start = end + 1;
    }
    found
}
