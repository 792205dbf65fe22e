//! Kargo's `metrics` policy: marks the request to be counted in the `eg` counter when its
//! response completes (whatever answers it: the upstream, a 401, a 502). It sits first in
//! Kargo's pipelines so every outcome counts. `consumerIdHeaderName` is accepted and ignored:
//! the consumer is the one an auth policy authenticated, never a header a client sent.

use crate::pipeline::{Exchange, Outcome, Policy, Request};

pub struct Metrics;

impl Policy for Metrics {
    fn on_request(&self, _req: &Request<'_>, x: &mut Exchange) -> Outcome {
        x.metered = true;
        Outcome::Continue
    }
}
