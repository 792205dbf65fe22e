//! `headers` (EG's deprecated predecessor of request-transformer): adds
//! `headersPrefix + name: value` to the request sent upstream for each `forwardHeaders` entry.

use serde::Deserialize;

use crate::config::error::ConfigErrors;
use crate::config::node::Node;
use crate::pipeline::{Exchange, Outcome, Policy, Request};

use super::header_values::{compile_map, HeaderExpr};

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Params {
    #[serde(default)]
    headers_prefix: String,
}

pub struct Headers {
    forward: Vec<HeaderExpr>,
}

impl Headers {
    pub fn build(p: Params, action: Option<&Node>, errors: &mut ConfigErrors) -> Option<Headers> {
        let before = errors.0.len();
        let forward = action
            .and_then(|a| a.get("forwardHeaders"))
            .map(|n| compile_map(n, &p.headers_prefix, "forwardHeaders", errors))
            .unwrap_or_default();
        (errors.0.len() == before).then_some(Headers { forward })
    }
}

impl Policy for Headers {
    fn on_request(&self, req: &Request<'_>, x: &mut Exchange) -> Outcome {
        let edits: Vec<_> = self.forward.iter().filter_map(|h| h.edit(req, x)).collect();
        x.upstream_edits.extend(edits);
        Outcome::Continue
    }
}
