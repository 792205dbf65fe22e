//! `basic-auth`: `Authorization: Basic base64(user-id:password)`, where the user id is an app
//! id, a user id or a username; the password is checked against the consumer's bcrypt-hashed
//! basic-auth credential (once per password, then remembered). Every failure, a missing scope
//! included, is a 401.

use std::sync::{Arc, OnceLock};

use tokio::sync::Semaphore;

use base64::Engine;
use serde::Deserialize;

use super::auth_common::{fail, store_unread, succeed};
use crate::consumers::cache::{BasicAnswer, Checked, ConsumerCache, PasswordCheck, Turn};
use crate::pipeline::context::Finish;
use crate::pipeline::{Exchange, Outcome, Policy, Request};

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Params {
    #[serde(default)]
    pass_through: bool,
}

pub struct BasicAuth {
    pass_through: bool,
    cache: Arc<ConsumerCache>,
}

impl BasicAuth {
    pub fn build(p: Params, cache: &Arc<ConsumerCache>) -> BasicAuth {
        BasicAuth {
            pass_through: p.pass_through,
            cache: cache.clone(),
        }
    }
}

/// `(user id, password)` from an `Authorization: Basic ...` header.
fn credentials(req: &Request<'_>) -> Option<(String, String)> {
    let value = req.header("authorization")?;
    // Two words one space apart (passport-http, EG's, takes the second word of those: after
    // two spaces, an empty one, which it refuses; a word after them is refused here).
    let mut words = value.trim().split(' ');
    let (scheme, encoded) = (words.next()?, words.next()?);
    if words.next().is_some() {
        return None;
    }
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    // As Node's `Buffer.from(…, 'base64')` reads it (EG's): padding or none, either
    // alphabet.
    let engine = base64::engine::GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
    );
    let standard: String = encoded
        .trim()
        .chars()
        .map(|c| match c {
            '-' => '+',
            '_' => '/',
            c => c,
        })
        .collect();
    let decoded = engine.decode(standard).ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    (!user.is_empty() && !password.is_empty()).then(|| (user.to_string(), password.to_string()))
}

impl Policy for BasicAuth {
    fn on_request(&self, req: &Request<'_>, x: &mut Exchange) -> Outcome {
        let Some((user, password)) = credentials(req) else {
            return fail(x, self.pass_through, 401, "basic-auth: no credentials");
        };
        match self.cache.basic(&user, &password, &req.endpoint.scopes) {
            BasicAnswer::Accepted(consumer) => succeed(x, consumer),
            BasicAnswer::Refused if !self.cache.is_loaded() => {
                store_unread(x, self.pass_through, "basic-auth: unknown user")
            }
            BasicAnswer::Refused => fail(
                x,
                self.pass_through,
                401,
                "basic-auth: unknown user, inactive or lacking a scope",
            ),
            BasicAnswer::Wrong => fail(x, self.pass_through, 401, "basic-auth: wrong password"),
            BasicAnswer::Check(check) => {
                let cache = self.cache.clone();
                let pass_through = self.pass_through;
                Outcome::Defer(Box::pin(async move {
                    let checked = checked_once(&cache, check).await;
                    Box::new(move |x: &mut Exchange| match checked {
                        Some(Checked::Match(consumer, _)) => succeed(x, consumer),
                        _ => fail(x, pass_through, 401, "basic-auth: wrong password"),
                    }) as Finish
                }))
            }
        }
    }
}

/// The outcome of `check`'s password: remembered meanwhile, found by the check of another
/// request that brought it, or checked here for the requests that come with it meanwhile.
async fn checked_once(cache: &Arc<ConsumerCache>, check: PasswordCheck) -> Option<Checked> {
    let leader = match cache.password_turn(check.memo()) {
        Turn::Known(matched) => return Some(check.settled(matched)),
        Turn::Follow(mut rx) => {
            let found = rx.wait_for(Option::is_some).await.ok().and_then(|v| *v);
            if let Some(matched) = found {
                return Some(check.settled(matched));
            }
            None // its leader gave up: checked here
        }
        Turn::Lead(leader) => Some(leader),
    };
    let checked = bcrypt_off_thread(check).await?;
    let m = crate::metrics::metrics();
    match &checked {
        Checked::Match(..) => m.password_matched.inc(),
        Checked::Mismatch(_) => m.password_mismatched.inc(),
    }
    match leader {
        Some(leader) => leader.finish(&checked),
        None => cache.remember_password(&checked),
    }
    Some(checked)
}

/// bcrypt checks running at once: one per core. More would not finish sooner; a burst of wrong
/// passwords queues here, while the workers' event loops go on serving.
fn bcrypt_permits() -> &'static Semaphore {
    static PERMITS: OnceLock<Semaphore> = OnceLock::new();
    PERMITS
        .get_or_init(|| Semaphore::new(std::thread::available_parallelism().map_or(1, |n| n.get())))
}

/// Runs the bcrypt check on tokio's blocking pool, so the request threads keep serving.
/// `None` when it could not run.
async fn bcrypt_off_thread(check: PasswordCheck) -> Option<Checked> {
    let permit = bcrypt_permits().acquire().await.ok()?;
    // The permit goes with the check: it is released when the check is done, even if the
    // request waiting for it is dropped meanwhile.
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        check.verify()
    })
    .await
    .ok()
}

#[cfg(test)]
mod tests {
    use super::credentials;
    use crate::pipeline::context::testing::OwnedRequest;

    fn read(value: &str) -> Option<(String, String)> {
        credentials(&OwnedRequest::get("/x", &[("authorization", value)], &[]).req())
    }

    #[test]
    fn credentials_are_read_as_passport_http_reads_them() {
        let alice = Some(("alice".to_string(), "pw".to_string()));
        // base64("alice:pw")
        assert_eq!(read("Basic YWxpY2U6cHc="), alice);
        assert_eq!(read("basic YWxpY2U6cHc"), alice);
        assert_eq!(read("Basic YWxpY2U6cHc= more"), None);
        // Two spaces: the second word is empty (EG refuses it).
        assert_eq!(read("Basic  YWxpY2U6cHc="), None);
        assert_eq!(read("Basic"), None);
        assert_eq!(read("Bearer YWxpY2U6cHc="), None);
    }
}
