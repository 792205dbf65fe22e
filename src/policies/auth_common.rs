//! What every auth policy does on success and failure, as EG's common auth callback: success
//! sets the consumer and sends `eg-consumer-id` upstream; failure answers 401 (or 403) with a
//! short text body, or with `passThrough` goes on anonymously and marks the response
//! `eg-consumer-id: anonymous`.

use http::header::{HeaderName, HeaderValue};

use crate::pipeline::context::{Consumer, HeaderEdit, Reply};
use crate::pipeline::{Exchange, Outcome};

pub static EG_CONSUMER_ID: HeaderName = HeaderName::from_static("eg-consumer-id");

pub fn succeed(x: &mut Exchange, consumer: Consumer) -> Outcome {
    if let Ok(v) = HeaderValue::from_str(&consumer.id) {
        x.upstream_edits
            .push(HeaderEdit::Set(EG_CONSUMER_ID.clone(), v));
    }
    x.consumer = Some(consumer);
    Outcome::Continue
}

/// A failed attempt: `status` is 401 or 403. `why` says what was wrong, in words that never
/// hold the credential itself (it is logged at debug).
pub fn fail(x: &mut Exchange, pass_through: bool, status: u16, why: &'static str) -> Outcome {
    log::debug!(
        "request {}: {why}: {}",
        x.request_id,
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

/// The value of query parameter `name`, percent-decoded.
pub fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    query?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then(|| {
            if !v.contains(['%', '+']) {
                return v.to_string();
            }
            percent_encoding::percent_decode_str(&v.replace('+', " "))
                .decode_utf8_lossy()
                .into_owned()
        })
    })
}
