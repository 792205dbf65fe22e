//! `request-transformer`: adds and removes headers of the request sent upstream.
//! (Body transforms are not supported; a `body` section is a config error.)

use crate::config::error::{ConfigErrors, Pos};
use crate::config::node::Node;
use crate::pipeline::{Exchange, Outcome, Policy, Request};

use super::header_values::AddRemove;

pub struct RequestTransformer {
    headers: AddRemove,
}

impl RequestTransformer {
    pub fn build(
        action: Option<&Node>,
        pos: &Pos,
        errors: &mut ConfigErrors,
    ) -> Option<RequestTransformer> {
        let headers = transformer_headers("request-transformer", action, pos, errors)?;
        Some(RequestTransformer { headers })
    }
}

/// The `headers` section shared by both transformers.
pub fn transformer_headers(
    policy: &str,
    action: Option<&Node>,
    pos: &Pos,
    errors: &mut ConfigErrors,
) -> Option<AddRemove> {
    if let Some(body) = action.and_then(|a| a.get("body")) {
        errors.push(
            &body.pos,
            format!(
                "policy `{policy}`: body transforms are not supported by tollgate; only `headers`"
            ),
        );
        return None;
    }
    let Some(headers) = action.and_then(|a| a.get("headers")) else {
        errors.push(
            pos,
            format!("policy `{policy}` needs `headers` with `add` and/or `remove`"),
        );
        return None;
    };
    let before = errors.0.len();
    let compiled = AddRemove::compile(Some(headers), &format!("{policy}.headers"), errors);
    (errors.0.len() == before).then_some(compiled)
}

impl Policy for RequestTransformer {
    fn on_request(&self, req: &Request<'_>, x: &mut Exchange) -> Outcome {
        let edits = self.headers.edits(req, x);
        x.upstream_edits.extend(edits);
        Outcome::Continue
    }
}
