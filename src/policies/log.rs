//! `log`: writes its `message` template (`${req.url}` ...) at info level and goes on.

use serde::Deserialize;

use crate::config::error::ConfigErrors;
use crate::config::node::Node;
use crate::pipeline::expr::Template;
use crate::pipeline::{Exchange, Outcome, Policy, Request};

#[derive(Deserialize)]
pub struct Params {
    message: String,
}

pub struct Log {
    message: Template,
}

impl Log {
    pub fn build(p: Params, action: Option<&Node>, errors: &mut ConfigErrors) -> Option<Log> {
        match Template::parse(&p.message) {
            Ok(message) => Some(Log { message }),
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
        log::info!(target: "tollgate::policy::log", "{}", self.message.eval(req, x));
        Outcome::Continue
    }
}
