//! Pipelines: ordered policy steps, each behind an optional condition, and the [`Policy`] trait
//! every policy implements.

pub mod condition;
pub mod context;
pub mod expr;
pub mod glob;

use std::sync::Arc;

pub use condition::Condition;
pub use context::{Exchange, Outcome, Request};

/// A policy action, built once per config from its parameters.
///
/// `on_request` runs in the request phase. It may change the [`Exchange`] (header edits for the
/// upstream request or for the response, the consumer, the proxy plan) and decides whether the
/// pipeline goes on. It must not block: everything it needs is in memory.
pub trait Policy: Send + Sync {
    fn on_request(&self, req: &Request<'_>, x: &mut Exchange) -> Outcome;
}

/// One `{condition, action}` step.
pub struct Step {
    pub policy_name: Arc<str>,
    pub condition: Option<Condition>,
    pub action: Arc<dyn Policy>,
}

/// A named pipeline: its steps in order.
pub struct Pipeline {
    pub name: Arc<str>,
    pub steps: Vec<Step>,
}

impl Pipeline {
    /// Whether the pipeline has a `cache` step.
    pub fn caches(&self) -> bool {
        self.steps.iter().any(|s| &*s.policy_name == "cache")
    }

    /// Runs the steps in order from step `from`. Returns the outcome and the step to resume
    /// at after an `Outcome::Wait`. `Outcome::Continue` means the pipeline ended without
    /// responding, and routing falls through to the next matching route.
    pub fn run(&self, from: usize, req: &Request<'_>, x: &mut Exchange) -> (Outcome, usize) {
        for (i, step) in self.steps.iter().enumerate().skip(from) {
            if let Some(cond) = &step.condition {
                if !cond.eval(req, x) {
                    continue;
                }
            }
            match step.action.on_request(req, x) {
                Outcome::Continue => {}
                done @ (Outcome::Wait(_) | Outcome::Defer(_)) => return (done, i + 1),
                done => {
                    x.make_late_edits(req);
                    return (done, i + 1);
                }
            }
        }
        x.make_late_edits(req);
        (Outcome::Continue, self.steps.len())
    }
}
