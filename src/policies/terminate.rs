//! `terminate`: ends the pipeline with a fixed status and message (sent as Express's
//! `res.send` sends a string: `text/html; charset=utf-8`).

use bytes::Bytes;
use serde::Deserialize;

use crate::pipeline::{Exchange, Outcome, Policy, Request};

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Params {
    #[serde(default = "default_status")]
    pub status_code: u16,
    #[serde(default = "default_message")]
    message: String,
}

fn default_status() -> u16 {
    400
}

fn default_message() -> String {
    "Terminated".into()
}

pub struct Terminate {
    status: u16,
    body: Bytes,
}

impl Terminate {
    pub fn build(p: Params) -> Terminate {
        Terminate {
            status: p.status_code,
            body: Bytes::from(p.message),
        }
    }
}

impl Policy for Terminate {
    fn on_request(&self, _req: &Request<'_>, _x: &mut Exchange) -> Outcome {
        Outcome::Respond(crate::responses::html(self.status, self.body.clone()))
    }
}
