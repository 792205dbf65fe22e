//! `response-transformer`: adds and removes headers of whatever response the request finally
//! gets — the upstream's, or one a later step produces (Kargo adds `WWW-Authenticate: Basic` to
//! the 401 of a following `terminate`).

use crate::config::error::{ConfigErrors, Pos};
use crate::config::node::Node;
use crate::pipeline::{Exchange, Outcome, Policy, Request};

use super::header_values::AddRemove;
use super::request_transformer::transformer_headers;

pub struct ResponseTransformer {
    headers: std::sync::Arc<AddRemove>,
}

impl ResponseTransformer {
    pub fn build(
        action: Option<&Node>,
        pos: &Pos,
        errors: &mut ConfigErrors,
    ) -> Option<ResponseTransformer> {
        let headers = transformer_headers("response-transformer", action, pos, errors)?;
        Some(ResponseTransformer {
            headers: std::sync::Arc::new(headers),
        })
    }
}

impl Policy for ResponseTransformer {
    /// Its edits are made once the pipeline has run, after every other step's
    /// ([`Exchange::make_late_edits`]).
    fn on_request(&self, _req: &Request<'_>, x: &mut Exchange) -> Outcome {
        x.late_response_edits.push(self.headers.clone());
        Outcome::Continue
    }
}
