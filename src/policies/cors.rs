//! `cors`, as the `cors` npm module EG uses: origin `*` by default (a string is fixed; `true`
//! reflects the request's Origin; a list reflects a listed origin, where `/.../` entries are
//! regexes), credentials, exposed headers; an OPTIONS request is a preflight answered here with
//! 204 and `Content-Length: 0` unless `preflightContinue`.

use http::header::{self, HeaderValue};
use http::Method;
use serde::Deserialize;

use crate::config::error::ConfigErrors;
use crate::config::node::Node;
use crate::pipeline::context::{Edits, HeaderEdit, Reply};
use crate::pipeline::{Exchange, Outcome, Policy, Request};

#[derive(Deserialize)]
#[serde(untagged)]
pub enum OriginParam {
    Flag(bool),
    One(String),
    List(Vec<String>),
}

#[derive(Deserialize)]
#[serde(untagged)]
pub enum ListParam {
    Joined(String),
    List(Vec<String>),
}

impl ListParam {
    fn joined(&self) -> String {
        match self {
            ListParam::Joined(s) => s.clone(),
            ListParam::List(l) => l.join(","),
        }
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
pub enum MaxAgeParam {
    Number(u64),
    Text(String),
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Params {
    /// Absent: `*`. Given as null (an unset variable) or `''`: CORS off, as npm's `cors`
    /// (EG's) reads a value that is no origin.
    #[serde(default, deserialize_with = "given")]
    origin: Option<Option<OriginParam>>,
    methods: Option<ListParam>,
    allowed_headers: Option<ListParam>,
    headers: Option<ListParam>,
    /// A list, as EG's schema has it (a string is refused there: its config is not loaded).
    exposed_headers: Option<Vec<String>>,
    #[serde(default)]
    credentials: bool,
    max_age: Option<MaxAgeParam>,
    #[serde(default)]
    preflight_continue: bool,
    #[serde(default = "default_success")]
    pub options_success_status: u16,
}

/// A parameter that is there, null or not.
fn given<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<OriginParam>>, D::Error> {
    Option::<OriginParam>::deserialize(d).map(Some)
}

fn default_success() -> u16 {
    204
}

enum Origin {
    /// `origin: false`: the policy does nothing.
    Off,
    /// A fixed value (`*` or a configured origin).
    Fixed(HeaderValue),
    /// Reflect the request's Origin when it is one of these, compared as text as npm's
    /// `cors` compares strings (its regular expressions are RegExp objects, which no YAML or
    /// JSON config can hold: a `'/…/'` string is text to EG too).
    Reflect(Vec<String>),
    /// `origin: true`: reflect any Origin.
    ReflectAny,
}

pub struct Cors {
    origin: Origin,
    /// `None` for an empty list: no header, as npm's `cors` (which sets only a non-empty value).
    methods: Option<HeaderValue>,
    /// `None`: the request's are reflected; `Some(None)`: none are listed.
    allowed_headers: Option<Option<HeaderValue>>,
    exposed_headers: Option<HeaderValue>,
    credentials: bool,
    max_age: Option<HeaderValue>,
    preflight_continue: bool,
    success_status: u16,
}

fn header_value(
    text: &str,
    what: &str,
    node: Option<&Node>,
    errors: &mut ConfigErrors,
) -> Option<HeaderValue> {
    match HeaderValue::from_str(text) {
        Ok(v) => Some(v),
        Err(_) => {
            if let Some(n) = node {
                errors.push(
                    &n.pos,
                    format!("policy `cors`: `{what}` is not a valid header value"),
                );
            }
            None
        }
    }
}

impl Cors {
    pub fn build(p: Params, action: Option<&Node>, errors: &mut ConfigErrors) -> Option<Cors> {
        let at = |key: &str| action.and_then(|a| a.get(key));
        let before = errors.0.len();
        let origin = match &p.origin {
            None => Origin::Fixed(HeaderValue::from_static("*")),
            Some(None | Some(OriginParam::Flag(false))) => Origin::Off,
            Some(Some(OriginParam::One(s))) if s.is_empty() => Origin::Off,
            Some(Some(OriginParam::Flag(true))) => Origin::ReflectAny,
            Some(Some(OriginParam::One(s))) => {
                Origin::Fixed(header_value(s, "origin", at("origin"), errors)?)
            }
            Some(Some(OriginParam::List(list))) => {
                for o in list {
                    if o.len() > 2 && o.starts_with('/') && o.ends_with('/') {
                        if let Some(n) = at("origin") {
                            log::warn!(
                                "{}: policy `cors`: origin `{o}` is compared as text, as EG \
                                 compares it (a regular expression cannot be written in a \
                                 config): no browser sends it",
                                n.pos
                            );
                        }
                    }
                }
                Origin::Reflect(list.clone())
            }
        };
        let methods = p.methods.as_ref().map_or_else(
            || "GET,HEAD,PUT,PATCH,POST,DELETE".to_string(),
            ListParam::joined,
        );
        let methods = header_value(&methods, "methods", at("methods"), errors);
        // As npm's `cors`: an empty string is no setting (the request's headers are
        // reflected), a list is one even when empty (no header then).
        fn given(l: &Option<ListParam>) -> Option<&ListParam> {
            l.as_ref()
                .filter(|l| !matches!(l, ListParam::Joined(s) if s.is_empty()))
        }
        let allowed_headers = given(&p.allowed_headers).or(given(&p.headers)).map(|l| {
            Some(l.joined())
                .filter(|h| !h.is_empty())
                .and_then(|h| header_value(&h, "allowedHeaders", at("allowedHeaders"), errors))
        });
        let exposed_headers = p
            .exposed_headers
            .as_ref()
            .map(|l| l.join(","))
            .filter(|h| !h.is_empty())
            .and_then(|h| header_value(&h, "exposedHeaders", at("exposedHeaders"), errors));
        let max_age = match &p.max_age {
            None => None,
            Some(MaxAgeParam::Number(n)) => Some(HeaderValue::from(*n)),
            Some(MaxAgeParam::Text(s)) if s.is_empty() => None,
            Some(MaxAgeParam::Text(s)) => header_value(s, "maxAge", at("maxAge"), errors),
        };
        if errors.0.len() != before {
            return None;
        }
        Some(Cors {
            origin,
            methods: Some(methods?).filter(|m| !m.is_empty()),
            allowed_headers,
            exposed_headers,
            credentials: p.credentials,
            max_age,
            preflight_continue: p.preflight_continue,
            success_status: p.options_success_status,
        })
    }

    /// Adds the origin and credentials headers; true when the response varies by Origin.
    fn origin_edits(&self, req: &Request<'_>, out: &mut Edits) -> bool {
        let varies = match &self.origin {
            Origin::Off => false,
            Origin::Fixed(v) => {
                out.push(HeaderEdit::Default(
                    header::ACCESS_CONTROL_ALLOW_ORIGIN,
                    v.clone(),
                ));
                v != "*"
            }
            Origin::ReflectAny | Origin::Reflect(_) => {
                let origin = req.headers.get(header::ORIGIN);
                let allowed = match (&self.origin, origin.and_then(|o| o.to_str().ok())) {
                    (Origin::ReflectAny, Some(_)) => true,
                    (Origin::Reflect(list), Some(o)) => list.iter().any(|a| a == o),
                    _ => false,
                };
                if let (true, Some(o)) = (allowed, origin) {
                    out.push(HeaderEdit::Default(
                        header::ACCESS_CONTROL_ALLOW_ORIGIN,
                        o.clone(),
                    ));
                }
                true
            }
        };
        if self.credentials {
            out.push(HeaderEdit::Default(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            ));
        }
        varies
    }

    fn exposed(&self, out: &mut Edits) {
        if let Some(v) = &self.exposed_headers {
            out.push(HeaderEdit::Default(
                header::ACCESS_CONTROL_EXPOSE_HEADERS,
                v.clone(),
            ));
        }
    }
}

impl Policy for Cors {
    fn on_request(&self, req: &Request<'_>, x: &mut Exchange) -> Outcome {
        if matches!(self.origin, Origin::Off) {
            return Outcome::Continue;
        }
        let out = &mut x.response_edits;
        let varies_by_origin = self.origin_edits(req, out);
        if *req.method != Method::OPTIONS {
            // Added to whatever `Vary` the answer has (the upstream's `Accept-Encoding`, a
            // compressed answer's, a 429's `Accept`): a cache must not serve one origin's
            // answer to another.
            if varies_by_origin {
                out.push(HeaderEdit::Append(
                    header::VARY,
                    HeaderValue::from_static("Origin"),
                ));
            }
            self.exposed(out);
            return Outcome::Continue;
        }
        if let Some(methods) = &self.methods {
            out.push(HeaderEdit::Default(
                header::ACCESS_CONTROL_ALLOW_METHODS,
                methods.clone(),
            ));
        }
        let vary = match (&self.allowed_headers, varies_by_origin) {
            (Some(_), true) => Some("Origin"),
            (Some(_), false) => None,
            (None, true) => Some("Origin, Access-Control-Request-Headers"),
            (None, false) => Some("Access-Control-Request-Headers"),
        };
        if let Some(v) = vary {
            out.push(HeaderEdit::Default(
                header::VARY,
                HeaderValue::from_static(v),
            ));
        }
        match &self.allowed_headers {
            Some(Some(v)) => out.push(HeaderEdit::Default(
                header::ACCESS_CONTROL_ALLOW_HEADERS,
                v.clone(),
            )),
            Some(None) => {}
            None => {
                if let Some(requested) = req
                    .headers
                    .get(header::ACCESS_CONTROL_REQUEST_HEADERS)
                    .filter(|v| !v.is_empty())
                {
                    out.push(HeaderEdit::Default(
                        header::ACCESS_CONTROL_ALLOW_HEADERS,
                        requested.clone(),
                    ));
                }
            }
        }
        if let Some(v) = &self.max_age {
            out.push(HeaderEdit::Default(
                header::ACCESS_CONTROL_MAX_AGE,
                v.clone(),
            ));
        }
        self.exposed(out);
        if self.preflight_continue {
            return Outcome::Continue;
        }
        let mut reply = Reply::empty(self.success_status);
        reply
            .headers
            .push((header::CONTENT_LENGTH, HeaderValue::from_static("0")));
        Outcome::Respond(reply)
    }
}
