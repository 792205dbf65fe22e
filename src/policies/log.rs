//! `log`: writes its `message` template (`${req.url}` ...) at info level and goes on, with the
//! credentials a request carries redacted (EG writes them as they are).

use serde::Deserialize;

use crate::config::error::ConfigErrors;
use crate::config::node::Node;
use crate::pipeline::expr::{Secrets, Template};
use crate::pipeline::{Exchange, Outcome, Policy, Request};

#[derive(Deserialize)]
pub struct Params {
    message: String,
}

pub struct Log {
    message: Template,
    secrets: Secrets,
}

impl Log {
    pub fn build(
        p: Params,
        secrets: Secrets,
        action: Option<&Node>,
        errors: &mut ConfigErrors,
    ) -> Option<Log> {
        match Template::parse(&p.message) {
            Ok(message) => Some(Log { message, secrets }),
            Err(why) => {
                let pos = action.and_then(|a| a.get("message")).map(|n| n.pos.clone());
                if let Some(pos) = pos {
                    errors.push(&pos, format!("policy `log` message: {why}"));
                }
                None
            }
        }
    }
}

impl Policy for Log {
    fn on_request(&self, req: &Request<'_>, x: &mut Exchange) -> Outcome {
        if x.refresh {
            // The gateway's own request (a stale tile's refresh): the client's was written.
            return Outcome::Continue;
        }
        let line = self.message.eval_for_log(req, x, &self.secrets);
        // (A control character a header's Latin-1 text holds — C1's among them, which some
        // terminals obey — is written escaped: a line can neither be forged nor steer one.)
        if line.chars().any(char::is_control) {
            let mut escaped = String::with_capacity(line.len() + 8);
            for c in line.chars() {
                if c.is_control() {
                    escaped.extend(c.escape_default());
                } else {
                    escaped.push(c);
                }
            }
            log::info!(target: crate::logging::POLICY_LOG, "{escaped}");
        } else {
            log::info!(target: crate::logging::POLICY_LOG, "{line}");
        }
        Outcome::Continue
    }
}
