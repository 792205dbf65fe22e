//! Kargo's `scopes` policy: when the matched endpoint has scopes, the consumer (an application,
//! whose `scopes` Kargo stores comma-joined) must hold every one of them; otherwise 401. With no
//! consumer at all the answer is 401 too (Kargo's plugin crashed with a 500). An endpoint that
//! declares no scopes lets every request through, anonymous or not, as Kargo's plugin does.

use crate::pipeline::context::Reply;
use crate::pipeline::{Exchange, Outcome, Policy, Request};

pub struct Scopes;

impl Policy for Scopes {
    fn on_request(&self, req: &Request<'_>, x: &mut Exchange) -> Outcome {
        if req.endpoint.scopes.is_empty() {
            return Outcome::Continue;
        }
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
