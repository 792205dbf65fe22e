//! EG's value expressions, without a JavaScript engine.
//!
//! EG evaluates header values (request/response-transformer, `forwardHeaders`) and the
//! `rateLimitBy` template as JavaScript against the request. Real configs use a small set of
//! forms, which tollgate compiles once: quoted literals (`'Basic'`), numbers, property paths
//! (`req.headers.host`, `req.headers['x-name']`, `req.ip`, `req.hostname`, `req.method`,
//! `req.url`, `req.path`, `req.user.id`, `egContext.requestID`, `apiEndpoint.apiEndpointName`)
//! and `+` concatenation. Anything else is a config error naming the value.

use http::header::HeaderName;

use super::context::{Exchange, Request};

#[derive(Clone, Debug, PartialEq)]
enum Term {
    Literal(String),
    Header(HeaderName),
    Ip,
    Hostname,
    Method,
    /// EG's `req.url`: the client's, until the proxy step rewrote it (`stripPath`).
    Url,
    /// `req.originalUrl`: the client's, always.
    OriginalUrl,
    /// `req.path`: [`Term::Url`]'s path.
    Path,
    ConsumerId,
    RequestId,
    EndpointName,
}

/// A compiled expression: terms joined with `+`.
#[derive(Clone, Debug, PartialEq)]
pub struct Expr(Vec<Term>);

impl Expr {
    /// Compiles a JavaScript-like expression; `Err` says why it is not supported.
    pub fn parse(src: &str) -> Result<Expr, String> {
        let parts =
            split_plus(src).ok_or_else(|| format!("unbalanced quotes or brackets in `{src}`"))?;
        let terms = parts
            .iter()
            .map(|p| parse_term(p.trim()))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Expr(terms))
    }

    /// A fixed literal, for values given as YAML numbers or booleans.
    pub fn literal(text: impl Into<String>) -> Expr {
        Expr(vec![Term::Literal(text.into())])
    }

    /// The literal text when the expression does not depend on the request.
    pub fn as_literal(&self) -> Option<String> {
        self.0
            .iter()
            .map(|t| match t {
                Term::Literal(s) => Some(s.as_str()),
                _ => None,
            })
            .collect::<Option<Vec<_>>>()
            .map(|parts| parts.concat())
    }

    /// Appends the value to `out`; a missing value (no such header, no Host, an anonymous
    /// request's consumer) is `undefined`, as JavaScript's string concatenation and EG's
    /// header values make it: a rate-limit key EG writes (`rl:k-undefined-GET`) is the same
    /// key, shared by both on one Redis.
    pub fn eval_into(&self, req: &Request<'_>, x: &Exchange, out: &mut String) {
        self.eval_redacting(req, x, out, None);
    }

    /// The value as a header's: `None` when it is one value the request does not have (EG's
    /// `setHeader` throws on `undefined`, a 500; the header is left out here, never sent as
    /// the word `undefined`, which a client could send itself).
    pub fn eval_header(&self, req: &Request<'_>, x: &Exchange) -> Option<String> {
        if self.throws(x) {
            return None;
        }
        let mut s = String::new();
        let missing = self.eval_redacting(req, x, &mut s, None);
        (!(missing && self.0.len() == 1)).then_some(s)
    }

    /// As [`Self::eval_into`], with the credentials `secrets` names replaced by `REDACTED`
    /// (the URL's secret query parameters, the secret headers' values).
    /// Whether a value was missing (and written as `undefined`).
    fn eval_redacting(
        &self,
        req: &Request<'_>,
        x: &Exchange,
        out: &mut String,
        secrets: Option<&Secrets>,
    ) -> bool {
        if self.throws(x) {
            out.push_str(UNDEFINED);
            return true;
        }
        let mut missing = false;
        let mut undefined = |out: &mut String| {
            missing = true;
            out.push_str(UNDEFINED);
        };
        for term in &self.0 {
            match term {
                Term::Literal(s) => out.push_str(s),
                Term::Header(name) if secrets.is_some_and(|s| s.headers.contains(name)) => {
                    match x.header_now(req, name) {
                        Some(_) => out.push_str("REDACTED"),
                        None => undefined(out),
                    }
                }
                Term::Url | Term::OriginalUrl if secrets.is_some() => {
                    let params = secrets.map_or(&[][..], |s| &s.params[..]);
                    let url = if *term == Term::Url {
                        url_now(req, x)
                    } else {
                        req.url
                    };
                    out.push_str(&crate::access_log::redact(url, params));
                }
                // A header that carries a credential's value under another name (a
                // transformer's copy of `Authorization`) is one too.
                Term::Header(name) if secrets.is_some() => match x.header_now(req, name) {
                    Some(v) => {
                        let carried = secrets.is_some_and(|s| carries_secret(&v, req, s));
                        out.push_str(if carried { "REDACTED" } else { &v });
                    }
                    None => undefined(out),
                },
                Term::Header(name) => match x.header_now(req, name) {
                    Some(v) => out.push_str(&v),
                    None => undefined(out),
                },
                Term::Ip => match req.client_ip {
                    Some(ip) => out.push_str(&express_ip(ip)),
                    None => undefined(out),
                },
                Term::Hostname => match req.hostname() {
                    Some(h) => out.push_str(h),
                    None => undefined(out),
                },
                Term::Method => out.push_str(req.method.as_str()),
                Term::Url => out.push_str(url_now(req, x)),
                Term::OriginalUrl => out.push_str(req.url),
                Term::Path => {
                    let path = match &x.proxy {
                        Some(p) => p.path_recipe.url.split('?').next().unwrap_or(""),
                        None => req.path,
                    };
                    // A segment's `;jwt=…` too, where `req.url`'s are.
                    match secrets {
                        Some(s) => out.push_str(&crate::access_log::redact_path(path, &s.params)),
                        None => out.push_str(path),
                    }
                }
                Term::ConsumerId => match &x.consumer {
                    Some(c) => out.push_str(&c.id),
                    None => undefined(out),
                },
                Term::RequestId => out.push_str(x.request_id.get()),
                Term::EndpointName => out.push_str(&req.endpoint.name),
            }
        }
        missing
    }

    pub fn eval(&self, req: &Request<'_>, x: &Exchange) -> String {
        let mut s = String::new();
        self.eval_into(req, x, &mut s);
        s
    }

    /// Whether EG's evaluation of it throws: `req.user.id` (`consumer.id`…) of a request
    /// without a consumer reads `id` of `undefined` (a `TypeError`), and EG takes the whole
    /// value as `undefined` — `ka-${req.user.id}` is the key `rl:undefined` there, for every
    /// anonymous request of every such template, not `rl:ka-undefined`.
    fn throws(&self, x: &Exchange) -> bool {
        x.consumer.is_none() && self.0.iter().any(|t| matches!(t, Term::ConsumerId))
    }
}

/// EG's `req.url` now: the client's, or once the proxy step ran (a `response-transformer`'s
/// values are made after it) the URL it made (`stripPath` rewrites `req.url`), as EG's
/// response headers read it.
fn url_now<'a>(req: &Request<'a>, x: &'a Exchange) -> &'a str {
    x.proxy
        .as_ref()
        .map_or(req.url, |p| p.path_recipe.url.as_str())
}

/// What JavaScript makes of a missing value in a string.
const UNDEFINED: &str = "undefined";

/// Whether EG, on this config and machine, sees IPv4 clients as `::ffff:a.b.c.d`: Node listens
/// on `::` (dual-stack) without a `hostname`, where the machine has IPv6, and with `'::'`.
/// Set once at the start (a listener's address applies at the next start).
static IPV4_MAPPED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Shows IPv4 clients in rate-limit keys and `req.ip` as EG does for a listener on `host`
/// (the config's `http`, else `https`, `hostname`).
pub fn show_clients_as_eg_listening_on(host: Option<&str>) {
    let mapped = match host {
        None => std::net::TcpListener::bind((std::net::Ipv6Addr::UNSPECIFIED, 0)).is_ok(),
        Some(h) => h
            .trim_matches(['[', ']'])
            .parse::<std::net::Ipv6Addr>()
            .is_ok_and(|a| a.is_unspecified()),
    };
    IPV4_MAPPED.store(mapped, std::sync::atomic::Ordering::Relaxed);
}

/// The client's address as EG's `req.ip` shows it (see [`show_clients_as_eg_listening_on`]):
/// a rate-limit key EG writes for the client (`rl:::ffff:127.0.0.1`) is the same key, one
/// window for both on one Redis.
pub fn express_ip(ip: std::net::IpAddr) -> String {
    match ip_text(ip) {
        std::net::IpAddr::V4(v4) if IPV4_MAPPED.load(std::sync::atomic::Ordering::Relaxed) => {
            format!("::ffff:{v4}")
        }
        other => other.to_string(),
    }
}

/// The client IP as an IPv4 client's address reads: one on a dual-stack socket
/// (`::ffff:a.b.c.d`) as plain IPv4 (the `X-Forwarded-For` the proxy step adds).
pub fn ip_text(ip: std::net::IpAddr) -> std::net::IpAddr {
    match ip {
        std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, std::net::IpAddr::V4),
        v4 => v4,
    }
}

/// Whether `value` holds the value of one of the client's credentials `secrets` names (a
/// secret header's, a secret query parameter's, or the secret part of one: see
/// [`secret_parts`]; those of fewer than 4 bytes aside, which would be found in any text).
fn carries_secret(value: &str, req: &Request<'_>, secrets: &Secrets) -> bool {
    let holds = |secret: &[u8]| {
        secret.len() >= 4 && memchr::memmem::find(value.as_bytes(), secret).is_some()
    };
    // A part is a secret of 8 bytes or more: a cookie's `true` or `dark`, a password's `2024`,
    // would take every log value holding those words.
    let holds_part = |part: &[u8]| part.len() >= 8 && holds(part);
    // (As sent, and as Latin-1 text, which is how `value` reads a header's bytes past ASCII.)
    let held = |credential: &[u8]| {
        let text = crate::pipeline::context::node_text_of(credential);
        holds(credential)
            || holds(text.as_bytes())
            || secret_parts(text.as_bytes()).any(|p| holds_part(&p))
    };
    let in_headers = secrets
        .headers
        .iter()
        .any(|name| req.headers.get_all(name).iter().any(|v| held(v.as_bytes())));
    // A query credential as written and as its escapes decode (`id%3Asecret` is `id:secret`
    // in a header made of it); its name as the access log matches it (`%61piKey`).
    in_headers
        || req.query.is_some_and(|q| {
            q.split('&').any(|pair| {
                let v = pair.split_once('=').map_or("", |(_, v)| v);
                crate::access_log::secret_name(pair, &secrets.params).is_some()
                    && (held(v.as_bytes()) || held(crate::cache::key::decoded(v).as_bytes()))
            })
        })
}

/// The parts of a credential that are secrets of their own, found in other text without the
/// rest: the token after an `Authorization` scheme (`Bearer <token>` copied into a `Referer`'s
/// `?jwt=`), what follows a key's `:` (`apiKey id:secret`), a basic-auth password (decoded),
/// a JWT's signature (the rest of the token is predictable or public), a cookie's values.
fn secret_parts(credential: &[u8]) -> impl Iterator<Item = Vec<u8>> {
    use base64::Engine;
    let text = String::from_utf8_lossy(credential);
    let mut parts: Vec<Vec<u8>> = Vec::new();
    let after_scheme = text
        .trim()
        .split_once(' ')
        .map(|(scheme, rest)| (scheme, rest.trim()));
    let token = after_scheme.map_or(text.trim(), |(_, rest)| rest);
    parts.push(token.as_bytes().to_vec());
    if let Some((_, secret)) = token.split_once(':') {
        parts.push(secret.as_bytes().to_vec());
    }
    if let Some(signature) = token
        .rsplit_once('.')
        .map(|(_, s)| s)
        .filter(|_| token.matches('.').count() == 2)
    {
        parts.push(signature.as_bytes().to_vec());
    }
    if after_scheme.is_some_and(|(scheme, _)| scheme.eq_ignore_ascii_case("basic")) {
        let engine = base64::engine::GeneralPurpose::new(
            &base64::alphabet::STANDARD,
            base64::engine::GeneralPurposeConfig::new()
                .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
        );
        if let Ok(decoded) = engine.decode(token.replace('-', "+").replace('_', "/")) {
            if let Some(colon) = decoded.iter().position(|b| *b == b':') {
                parts.push(decoded[colon + 1..].to_vec());
            }
            parts.push(decoded);
        }
    }
    for cookie in text.split(';') {
        if let Some((_, v)) = cookie.split_once('=') {
            parts.push(v.trim().as_bytes().to_vec());
        }
    }
    parts.into_iter()
}

/// What carries credentials in a request: kept out of what is logged.
#[derive(Clone, Debug, Default)]
pub struct Secrets {
    /// Query parameters (`jwt`, `apiKey`, those the config's auth steps read).
    pub params: Vec<String>,
    /// Headers (`Authorization`, `Cookie`, those the config's auth steps read).
    pub headers: Vec<HeaderName>,
}

/// A template: text with `${expression}` parts (EG's `rateLimitBy`).
#[derive(Clone, Debug)]
pub struct Template(Vec<TemplatePart>);

#[derive(Clone, Debug)]
enum TemplatePart {
    Text(String),
    Expr(Expr),
}

impl Template {
    pub fn parse(src: &str) -> Result<Template, String> {
        let mut parts = Vec::new();
        let mut rest = src;
        while let Some(start) = rest.find("${") {
            if start > 0 {
                parts.push(TemplatePart::Text(rest[..start].to_string()));
            }
            let after = &rest[start + 2..];
            let end = after
                .find('}')
                .ok_or_else(|| format!("unclosed `${{` in template `{src}`"))?;
            parts.push(TemplatePart::Expr(Expr::parse(&after[..end])?));
            rest = &after[end + 1..];
        }
        if !rest.is_empty() {
            parts.push(TemplatePart::Text(rest.to_string()));
        }
        Ok(Template(parts))
    }

    pub fn eval(&self, req: &Request<'_>, x: &Exchange) -> String {
        self.eval_redacting(req, x, None)
    }

    /// The text to log: as [`Self::eval`], with the credentials `secrets` names redacted.
    pub fn eval_for_log(&self, req: &Request<'_>, x: &Exchange, secrets: &Secrets) -> String {
        self.eval_redacting(req, x, Some(secrets))
    }

    fn eval_redacting(&self, req: &Request<'_>, x: &Exchange, secrets: Option<&Secrets>) -> String {
        // (One part that throws makes the whole template `undefined`, as EG's JavaScript.)
        if self
            .0
            .iter()
            .any(|p| matches!(p, TemplatePart::Expr(e) if e.throws(x)))
        {
            return UNDEFINED.to_string();
        }
        let mut out = String::new();
        for part in &self.0 {
            match part {
                TemplatePart::Text(t) => out.push_str(t),
                TemplatePart::Expr(e) => {
                    e.eval_redacting(req, x, &mut out, secrets);
                }
            }
        }
        out
    }
}

/// Splits on `+` outside quotes and brackets; `None` when they do not balance.
fn split_plus(src: &str) -> Option<Vec<&str>> {
    let mut parts = Vec::new();
    let mut quote: Option<char> = None;
    let mut depth = 0i32;
    let mut start = 0;
    let mut escaped = false;
    for (i, c) in src.char_indices() {
        if let Some(q) = quote {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == q {
                quote = None;
            }
            continue;
        }
        match c {
            '\'' | '"' | '`' => quote = Some(c),
            '[' | '(' => depth += 1,
            ']' | ')' => depth -= 1,
            '+' if depth == 0 => {
                parts.push(&src[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if quote.is_some() || depth != 0 {
        return None;
    }
    parts.push(&src[start..]);
    Some(parts)
}

/// A term an error names: whole when it reads as code (a call, a property read), else
/// (text left unquoted, perhaps a key, a token or a password put in from the environment) its
/// first characters only.
fn shown_term(t: &str) -> String {
    let code = t.contains('(')
        || ["req.", "egContext.", "apiEndpoint."]
            .iter()
            .any(|p| t.starts_with(p));
    if t.chars().count() <= 8 || code {
        return t.to_string();
    }
    let start: String = t.chars().take(3).collect();
    format!(
        "{start}… ({} characters; a literal is quoted)",
        t.chars().count()
    )
}

fn unquote(s: &str) -> Option<String> {
    let q = s.chars().next()?;
    if !matches!(q, '\'' | '"' | '`') || s.len() < 2 || !s.ends_with(q) {
        return None;
    }
    let inner = &s[1..s.len() - 1];
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some('n') => out.push('\n'),
                Some('t') => out.push('\t'),
                Some(other) => out.push(other),
                None => return None,
            }
        } else if c == q {
            return None;
        } else {
            out.push(c);
        }
    }
    if q == '`' && out.contains("${") {
        return None;
    }
    Some(out)
}

fn parse_term(t: &str) -> Result<Term, String> {
    if t.is_empty() {
        return Err("an empty operand around `+`".into());
    }
    if let Some(lit) = unquote(t) {
        return Ok(Term::Literal(lit));
    }
    if t.parse::<f64>().is_ok() || t == "true" || t == "false" {
        return Ok(Term::Literal(t.to_string()));
    }
    let term = match t {
        "req.ip" => Term::Ip,
        "req.hostname" => Term::Hostname,
        "req.method" => Term::Method,
        "req.url" => Term::Url,
        "req.originalUrl" => Term::OriginalUrl,
        "req.path" => Term::Path,
        "req.user.id" | "consumer.id" | "egContext.consumer.id" => Term::ConsumerId,
        "requestID" | "egContext.requestID" | "req.egContext.requestID" => Term::RequestId,
        "apiEndpoint.apiEndpointName" | "req.egContext.apiEndpoint.apiEndpointName" => {
            Term::EndpointName
        }
        _ => {
            let header = t
                .strip_prefix("req.headers.")
                .map(str::to_string)
                .or_else(|| {
                    t.strip_prefix("req.headers[")
                        .and_then(|r| r.strip_suffix(']'))
                        .and_then(|q| unquote(q.trim()))
                });
            match header.map(|h| HeaderName::from_bytes(h.to_ascii_lowercase().as_bytes())) {
                Some(Ok(name)) => Term::Header(name),
                _ => {
                    return Err(format!(
                        "`{}` is not a supported value expression (use a quoted literal like \"'Basic'\", req.headers.<name>, req.ip, req.hostname, req.user.id, egContext.requestID, apiEndpoint.apiEndpointName, joined with +)",
                        shown_term(t)
                    ))
                }
            }
        }
    };
    Ok(term)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A header that holds a credential's value is redacted in a log line, the credential
    /// sent in a header or in the query (as written or with its escapes decoded, its name
    /// too); other headers, and values too short to tell, are not.
    #[test]
    fn headers_holding_a_credential_are_redacted_in_log_lines() {
        use crate::pipeline::context::testing::OwnedRequest;
        let secrets = Secrets {
            params: vec!["apiKey".into()],
            headers: vec![http::header::AUTHORIZATION],
        };
        let t = Template::parse("c=${req.headers['x-copy']}").expect("template");
        let line = |url: &str, headers: &[(&str, &str)]| {
            let owned = OwnedRequest::get(url, headers, &[]);
            t.eval_for_log(&owned.req(), &Exchange::default(), &secrets)
        };
        let with = |h: &'static str| [("authorization", "apiKey id:secret"), ("x-copy", h)];
        assert_eq!(line("/a", &with("apiKey id:secret")), "c=REDACTED");
        assert_eq!(line("/a", &with("plain")), "c=plain");
        let copy = [("x-copy", "id:secret")];
        assert_eq!(line("/a?apiKey=id:secret", &copy), "c=REDACTED");
        assert_eq!(line("/a?apiKey=id%3Asecret", &copy), "c=REDACTED");
        assert_eq!(line("/a?%61piKey=id%3Asecret", &copy), "c=REDACTED");
        assert_eq!(line("/a?other=id:secret", &copy), "c=id:secret");
        assert_eq!(line("/a?apiKey=abc", &[("x-copy", "abcdef")]), "c=abcdef");
        // A part of a credential copied elsewhere: a bearer token in a `Referer`'s `?jwt=`, a
        // key's secret, a basic-auth password, a JWT without its header, a cookie's value.
        let jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhIn0.c2lnbmF0dXJlLW9mLXRoZS10b2tlbg";
        let bearer = format!("Bearer {jwt}");
        let referer = format!("https://app.example/map?jwt={jwt}");
        let headless = jwt.split_once('.').map(|(_, r)| r).unwrap_or_default();
        for (credential, copy) in [
            (bearer.as_str(), referer.as_str()),
            (bearer.as_str(), headless),
            ("apiKey AKEYID123:AKEYSECRET456", "ua AKEYSECRET456"),
            ("Basic dXNlcjpodW50ZXIyLXB3", "pw=hunter2-pw"),
        ] {
            let h = [("authorization", credential), ("x-copy", copy)];
            assert_eq!(line("/a", &h), "c=REDACTED", "{credential} in {copy}");
        }
        let cookie_secrets = Secrets {
            params: vec![],
            headers: vec![http::header::COOKIE],
        };
        let owned = OwnedRequest::get(
            "/a",
            &[
                ("cookie", "theme=dark; session=s3ss10nvalue"),
                ("x-copy", "s3ss10nvalue"),
            ],
            &[],
        );
        assert_eq!(
            t.eval_for_log(&owned.req(), &Exchange::default(), &cookie_secrets),
            "c=REDACTED"
        );
        assert_eq!(
            line(
                "/a",
                &[("authorization", "Bearer abc"), ("x-copy", "Bearer xyz")]
            ),
            "c=Bearer xyz"
        );
        // A short part (a cookie's `dark`, a password's `2024`) takes no other value with it.
        let owned = OwnedRequest::get(
            "/a",
            &[
                ("cookie", "theme=dark; session=s3ss10nvalue"),
                ("x-copy", "dark mode"),
            ],
            &[],
        );
        assert_eq!(
            t.eval_for_log(&owned.req(), &Exchange::default(), &cookie_secrets),
            "c=dark mode"
        );
        // A credential past ASCII, copied: read as Latin-1 both.
        let owned = OwnedRequest::get(
            "/a",
            &[
                ("cookie", "session=clé-secrète-1"),
                ("x-copy", "u clé-secrète-1"),
            ],
            &[],
        );
        assert_eq!(
            t.eval_for_log(&owned.req(), &Exchange::default(), &cookie_secrets),
            "c=REDACTED"
        );
    }

    #[test]
    fn literals_and_paths_parse() {
        assert_eq!(
            Expr::parse("'Basic'").map(|e| e.as_literal()),
            Ok(Some("Basic".into()))
        );
        assert_eq!(
            Expr::parse("\"a\" + 'b'").map(|e| e.as_literal()),
            Ok(Some("ab".into()))
        );
        assert_eq!(
            Expr::parse("42").map(|e| e.as_literal()),
            Ok(Some("42".into()))
        );
        assert!(Expr::parse("req.headers['x-name'] + '-' + req.ip").is_ok());
        assert!(Expr::parse("req.headers.host").is_ok());
    }

    #[test]
    fn unsupported_forms_are_rejected() {
        assert!(Expr::parse("Basic").is_err());
        assert!(Expr::parse("require('fs')").is_err());
        assert!(Expr::parse("'open").is_err());
        assert!(Expr::parse("'a' +").is_err());
    }

    /// A value the request does not have is `undefined`, as in EG's JavaScript: the same
    /// header values, and the same rate-limit keys in a Redis both write.
    #[test]
    fn a_missing_value_is_undefined() {
        use crate::pipeline::context::testing::OwnedRequest;
        let owned = OwnedRequest::get("/a", &[("x-who", "bob")], &[]);
        let x = Exchange::default();
        let eval = |src: &str| Expr::parse(src).expect("expression").eval(&owned.req(), &x);
        assert_eq!(eval("req.headers.missing"), "undefined");
        assert_eq!(
            eval("req.headers['user-agent'] + '-' + req.method"),
            "undefined-GET"
        );
        assert_eq!(eval("req.user.id"), "undefined");
        assert_eq!(eval("req.headers['x-who']"), "bob");
        // As a header's value: a lone missing one is none.
        let header = |src: &str| {
            Expr::parse(src)
                .expect("expression")
                .eval_header(&owned.req(), &x)
        };
        assert_eq!(header("req.headers.missing"), None);
        assert_eq!(header("req.user.id"), None);
        assert_eq!(
            header("req.headers.missing + '!'").as_deref(),
            Some("undefined!")
        );
        assert_eq!(header("req.headers['x-who']").as_deref(), Some("bob"));
        let t = Template::parse("k-${req.headers['x-none']}-${req.method}").expect("template");
        assert_eq!(t.eval(&owned.req(), &x), "k-undefined-GET");
        // `req.user.id` of an anonymous request throws in EG: the whole value is undefined.
        assert_eq!(eval("'u-' + req.user.id"), "undefined");
        assert_eq!(header("req.user.id + '!'"), None);
        let t = Template::parse("ka-${req.user.id}-${req.method}").expect("template");
        assert_eq!(t.eval(&owned.req(), &x), "undefined");
    }

    #[test]
    fn templates_split_text_and_expressions() {
        assert!(Template::parse("${req.ip}").is_ok());
        assert!(Template::parse("key-${req.headers.host}-x").is_ok());
        assert!(Template::parse("${req.ip").is_err());
    }
}
