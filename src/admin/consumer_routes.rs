//! The consumer routes of the Admin API, with EG's paths and shapes: `/users`, `/apps`,
//! `/scopes`, `/credentials`; plus tollgate's `DELETE /credentials/:type/:id` and
//! `POST /tollgate/populate` / `POST /tollgate/clean` (body: a Kargo consumers file).

use http::{Method, Response, StatusCode};
use serde_json::{Map, Value};

use super::{empty, json, text};
use crate::consumers::populate::{self, ConsumersFile};
use crate::consumers::service::{ConsumerError, ConsumerService};

fn error(e: ConsumerError) -> Response<Vec<u8>> {
    if let ConsumerError::Store(err) = &e {
        log::warn!("admin API: answered 503: {err}");
    }
    let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    text(status, &e.to_string())
}

fn answer<T>(
    r: Result<T, ConsumerError>,
    ok: impl FnOnce(T) -> Response<Vec<u8>>,
) -> Response<Vec<u8>> {
    match r {
        Ok(v) => ok(v),
        Err(e) => error(e),
    }
}

fn status_answer(r: Result<&'static str, ConsumerError>) -> Response<Vec<u8>> {
    answer(r, |s| {
        json(StatusCode::OK, &serde_json::json!({ "status": s }))
    })
}

/// `?start=&count=` of list routes (count defaults to 100, as EG's).
fn paging(query: Option<&str>) -> (u64, usize) {
    let get = |name: &str| query_value(query, name)?.parse::<u64>().ok();
    (
        get("start").unwrap_or(0),
        get("count").unwrap_or(100).clamp(1, 10_000) as usize,
    )
}

/// A query parameter's value, decoded.
fn query_value(query: Option<&str>, name: &str) -> Option<String> {
    query?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == name).then(|| {
            percent_encoding::percent_decode_str(&v.replace('+', " "))
                .decode_utf8_lossy()
                .into_owned()
        })
    })
}

fn body_object(body: &Value) -> Result<&Map<String, Value>, &'static str> {
    body.as_object().ok_or("the body must be a JSON object")
}

/// The `status` a status route's body asks for: only a JSON boolean equal to the current one
/// leaves it as it is (`Active` / `Inactive`); anything but `true` deactivates, again if need
/// be (`Deactivated`), as EG's strict comparisons have it.
fn status_of(body: &Value) -> Option<bool> {
    body["status"].as_bool()
}

fn scope_list(v: &Value) -> Result<Vec<String>, &'static str> {
    v.as_array()
        .and_then(|a| {
            a.iter()
                .map(|s| s.as_str().map(str::to_string))
                .collect::<Option<Vec<_>>>()
        })
        .ok_or("`scopes` must be a list of scope names")
}

fn unprocessable(why: &str) -> Response<Vec<u8>> {
    text(StatusCode::UNPROCESSABLE_ENTITY, why)
}

/// The Admin API's consumer writes take turns: each checks the store (a name or key id taken,
/// a second basic-auth credential) and then writes, and two at once both found the name free
/// (20 concurrent creates of one username made 20 users, of one key id two credentials of two
/// consumers). A write waits [`TURN_WAIT`] at most for its turn, then is answered `503` with
/// `Retry-After`: writes take milliseconds, and one held up by a store that hangs (or a
/// populate that runs for minutes) would otherwise hold every other write up behind it — six
/// writers to a hung Redis were answered after 2, 4 … 12 s instead of all after the store's
/// timeout. (A write that went on without its turn made duplicates again: ten users of one
/// name behind a burst of bcrypt-hashed credentials.) Between processes sharing a Redis the
/// check and the write are still apart, as in EG.
static WRITES: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The longest a consumer write waits for its turn.
const TURN_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// Answers a consumer route; `None` when the path is not one of them.
pub async fn route(
    svc: &ConsumerService,
    method: &Method,
    segments: &[&str],
    query: Option<&str>,
    body: &Value,
) -> Option<Response<Vec<u8>>> {
    let _turn = match *method {
        Method::GET | Method::HEAD => None,
        _ => match tokio::time::timeout(TURN_WAIT, WRITES.lock()).await {
            Ok(turn) => Some(turn),
            // (Only a consumer route's write is turned away: another path is none of these.)
            Err(_) => {
                if !matches!(
                    segments.first(),
                    Some(&("users" | "apps" | "scopes" | "credentials"))
                ) {
                    return answer_route(svc, method, segments, query, body).await;
                }
                let mut busy = text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "another consumer write is under way; try again",
                );
                busy.headers_mut().insert(
                    http::header::RETRY_AFTER,
                    http::HeaderValue::from_static("1"),
                );
                return Some(busy);
            }
        },
    };
    answer_route(svc, method, segments, query, body).await
}

/// `segments` with the routes' own words in the case they are matched in: EG's Express
/// matches them without case (`/Users/Ann` is user `Ann`), its parameters as they are.
fn route_words<'a>(segments: &[&'a str]) -> Vec<&'a str> {
    let word = |seg: &mut &'a str, words: &[&'static str]| {
        if let Some(w) = words.iter().find(|w| w.eq_ignore_ascii_case(seg)) {
            *seg = w;
        }
    };
    let mut out = segments.to_vec();
    if let Some(first) = out.first_mut() {
        word(first, &["users", "apps", "scopes", "credentials"]);
    }
    let at = match out.first() {
        Some(&("users" | "apps")) => 2,
        Some(&"credentials") => 3,
        _ => return out,
    };
    if out.len() > at {
        word(&mut out[at], &["status", "scopes"]);
    }
    out
}

async fn answer_route(
    svc: &ConsumerService,
    method: &Method,
    segments: &[&str],
    query: Option<&str>,
    body: &Value,
) -> Option<Response<Vec<u8>>> {
    use Method as M;
    let words = route_words(segments);
    let segments = &words[..];
    // A HEAD is a GET whose body is not sent (as Express answers it).
    let m = if *method == M::HEAD {
        M::GET
    } else {
        method.clone()
    };
    let obj = || body_object(body);
    let r = match (m, segments) {
        (M::GET, ["users"]) => {
            let (start, count) = paging(query);
            answer(svc.list_users(start, count).await, |(users, next)| {
                json(
                    StatusCode::OK,
                    &serde_json::json!({"users": users, "nextKey": next}),
                )
            })
        }
        (M::POST, ["users"]) => match obj() {
            Ok(b) => answer(svc.create_user(b).await, |u| json(StatusCode::OK, &u)),
            Err(why) => unprocessable(why),
        },
        (M::GET, ["users", id]) => answer(svc.get_user(id).await, |u| json(StatusCode::OK, &u)),
        (M::PUT, ["users", id]) => match obj() {
            Ok(b) => answer(svc.update_user(id, b).await, |u| json(StatusCode::OK, &u)),
            Err(why) => unprocessable(why),
        },
        (M::DELETE, ["users", id]) => {
            answer(svc.delete_user(id).await, |_| empty(StatusCode::NO_CONTENT))
        }
        (M::PUT, ["users", id, "status"]) => {
            status_answer(svc.set_user_status(id, status_of(body)).await)
        }

        (M::GET, ["apps"]) => {
            let (start, count) = paging(query);
            answer(svc.list_apps(start, count).await, |(apps, next)| {
                json(
                    StatusCode::OK,
                    &serde_json::json!({"apps": apps, "nextKey": next}),
                )
            })
        }
        (M::POST, ["apps"]) => match obj() {
            Ok(b) => answer(svc.create_app(b).await, |a| json(StatusCode::OK, &a)),
            Err(why) => unprocessable(why),
        },
        (M::GET, ["apps", id]) => answer(svc.get_app(id).await, |a| json(StatusCode::OK, &a)),
        (M::PUT, ["apps", id]) => match obj() {
            Ok(b) => answer(svc.update_app(id, b).await, |a| json(StatusCode::OK, &a)),
            Err(why) => unprocessable(why),
        },
        (M::DELETE, ["apps", id]) => {
            answer(svc.delete_app(id).await, |_| empty(StatusCode::NO_CONTENT))
        }
        (M::PUT, ["apps", id, "status"]) => {
            status_answer(svc.set_app_status(id, status_of(body)).await)
        }

        (M::GET, ["scopes"]) => answer(svc.scopes().await, |s| {
            let list = if s.is_empty() {
                Value::Null
            } else {
                serde_json::json!(s)
            };
            json(StatusCode::OK, &serde_json::json!({ "scopes": list }))
        }),
        (M::POST, ["scopes"]) => match scope_list(&body["scopes"]) {
            Ok(list) => answer(svc.create_scopes(&list).await, |_| {
                empty(StatusCode::CREATED)
            }),
            Err(why) => unprocessable(why),
        },
        (M::GET, ["scopes", s]) => answer(svc.scopes().await, |all| {
            if all.iter().any(|x| x == s) {
                json(StatusCode::OK, &serde_json::json!({ "scope": s }))
            } else {
                text(StatusCode::NOT_FOUND, &format!("scope not found: {s}"))
            }
        }),
        (M::PUT, ["scopes", s]) => answer(svc.create_scopes(&[s.to_string()]).await, |_| {
            empty(StatusCode::CREATED)
        }),
        (M::DELETE, ["scopes", s]) => {
            answer(svc.delete_scope(s).await, |_| empty(StatusCode::NO_CONTENT))
        }

        (M::GET, ["credentials"]) => answer(svc.all_credentials().await, |c| {
            json(StatusCode::OK, &serde_json::json!({ "credentials": c }))
        }),
        (M::POST, ["credentials"]) => {
            let consumer = body["consumerId"].as_str().unwrap_or("");
            let kind = body["type"].as_str().unwrap_or("");
            let empty_map = Map::new();
            let cred = body["credential"].as_object().unwrap_or(&empty_map);
            if !(body["credential"].is_object() || body["credential"].is_null()) {
                // (EG's `500 data should be object`: a list made a key-auth credential here.)
                unprocessable("data.credential should be object")
            } else if consumer.is_empty() {
                text(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid username: consumerId is required",
                )
            } else if kind.is_empty() {
                text(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "Invalid credentials: type is required",
                )
            } else {
                answer(svc.create_credential(consumer, kind, cred).await, |c| {
                    json(StatusCode::OK, &c)
                })
            }
        }
        (M::GET, ["credentials", kind, id]) => answer(svc.get_credential(kind, id).await, |c| {
            json(StatusCode::OK, &c.unwrap_or(Value::Null))
        }),
        (M::DELETE, ["credentials", kind, id]) => {
            answer(svc.delete_credential(kind, id).await, |_| {
                empty(StatusCode::NO_CONTENT)
            })
        }
        (M::PUT, ["credentials", kind, id, "status"]) => {
            status_answer(svc.set_credential_status(kind, id, status_of(body)).await)
        }
        (M::PUT, ["credentials", kind, id, "scopes"]) => match scope_list(&body["scopes"]) {
            Ok(list) => answer(svc.set_credential_scopes(kind, id, &list).await, |_| {
                empty(StatusCode::NO_CONTENT)
            }),
            Err(why) => unprocessable(why),
        },
        (M::PUT, ["credentials", kind, id, "scopes", scope]) => {
            answer(svc.add_credential_scope(kind, id, scope).await, |_| {
                empty(StatusCode::NO_CONTENT)
            })
        }
        (M::DELETE, ["credentials", kind, id, "scopes", scope]) => {
            answer(svc.remove_credential_scope(kind, id, scope).await, |_| {
                empty(StatusCode::NO_CONTENT)
            })
        }
        (M::GET, ["credentials", consumer]) => match svc.consumer_credentials(consumer).await {
            Ok(c) => json(StatusCode::OK, &serde_json::json!({ "credentials": c })),
            Err(ConsumerError::NotFound(_)) => json(StatusCode::NOT_FOUND, &serde_json::json!({})),
            Err(e) => error(e),
        },

        (M::POST, ["tollgate", action @ ("populate" | "clean")]) => {
            // The CLI given `--data-dir` says which store it means: another than this
            // gateway's is refused (it was worked on in that one's place, silently).
            if let Some(meant) = query_value(query, "dataDir") {
                let store = svc.store();
                // (Two directories that are not there are not one.)
                let own = store
                    .embedded_dir()
                    .and_then(|d| std::fs::canonicalize(d).ok());
                let named = std::fs::canonicalize(&meant).ok();
                if own.is_none() || own != named {
                    let theirs = match &own {
                        Some(d) => format!("embedded store in {}", d.display()),
                        None => store.describe(),
                    };
                    return Some(text(
                        StatusCode::CONFLICT,
                        &format!(
                            "this gateway's consumers are in the {theirs}, not the embedded store \
                             in {meant}: leave --data-dir out to {action} its store, or stop it to \
                             {action} the one in {meant}"
                        ),
                    ));
                }
            }
            let file = match ConsumersFile::parse(&body.to_string()) {
                Ok(f) => f,
                Err(why) => return Some(text(StatusCode::UNPROCESSABLE_ENTITY, &why)),
            };
            let result = if *action == "populate" {
                populate::populate(svc, &file).await
            } else {
                populate::clean(svc, &file).await
            };
            answer(result, |r| {
                json(
                    StatusCode::OK,
                    &serde_json::json!({"created": r.created, "removed": r.removed, "unchanged": r.unchanged, "deactivated": r.deactivated}),
                )
            })
        }
        _ => return None,
    };
    Some(r)
}
