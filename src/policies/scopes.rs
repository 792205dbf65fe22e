//! Kargo's `scopes` policy: when the matched endpoint has scopes, the consumer (an application,
//! whose `scopes` Kargo stores comma-joined) must hold every one of them; otherwise 401. With no
//! consumer at all the answer is 401 too (Kargo's plugin crashed with a 500).

use crate::pipeline::context::Reply;
use crate::pipeline::{Exchange, Outcome, Policy, Request};

pub struct Scopes;

impl Policy for Scopes {
    fn on_request(&self, req: &Request<'_>, x: &mut Exchange) -> Outcome {
        let Some(consumer) = &x.consumer else {
            return Outcome::Respond(Reply::text(401, "Unauthorized"));
        };
        if req
            .endpoint
            .scopes
            .iter()
            .all(|s| consumer.scopes.contains(s))
        {
            Outcome::Continue
        } else {
            Outcome::Respond(Reply::text(401, "Unauthorized"))
        }
    }
}
