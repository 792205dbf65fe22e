//! `jwt`: a token from the Authorization header (Bearer, or a named scheme), another header, or
//! a query parameter, verified with the policy's key: HS256/384/512 with a secret, RS256/384/512,
//! ES256/384 or EdDSA with a PEM public key. The key decides the algorithm family, so `alg: none`
//! and RS/HS confusion are refused. `exp` and `nbf` are enforced (5 s leeway), `audience` and
//! `issuer` when set. With `checkCredentialExistence`, `sub` must name an active jwt credential
//! of an active consumer (the credential's keySecret is not used, as in EG).
//!
//! Verified tokens are remembered (bounded), so a map client sending the same token for every
//! tile pays for one signature check; a remembered token still honours `exp` and revocation.

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, RwLock};

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use super::auth_common::{fail, query_param, store_silent, store_unread, succeed};
use crate::consumers::cache::ConsumerCache;
use crate::pipeline::context::Consumer;
use crate::pipeline::{Exchange, Outcome, Policy, Request};

/// Seconds of clock skew allowed on `exp` and `nbf`.
const LEEWAY: u64 = 5;
/// Verified tokens remembered at most (the oldest half is dropped past this).
const MAX_REMEMBERED: usize = 20_000;
/// Longest token accepted.
const MAX_TOKEN: usize = 16 * 1024;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Params {
    secret_or_public_key: Option<String>,
    secret_or_public_key_file: Option<String>,
    #[serde(default = "default_extractor")]
    jwt_extractor: String,
    jwt_extractor_field: Option<String>,
    audience: Option<AudienceParam>,
    issuer: Option<String>,
    algorithms: Option<Vec<String>>,
    #[serde(default = "yes")]
    check_credential_existence: bool,
    #[serde(default)]
    pass_through: bool,
}

#[derive(Deserialize)]
#[serde(untagged)]
pub enum AudienceParam {
    One(String),
    Many(Vec<String>),
}

fn default_extractor() -> String {
    "authBearer".into()
}
fn yes() -> bool {
    true
}

enum Extractor {
    Bearer,
    Scheme(String),
    Header(http::header::HeaderName),
    Query(String),
}

/// What a verified token said that matters later.
#[derive(Clone)]
struct Verified {
    sub: Option<Arc<str>>,
    id: Option<Arc<str>>,
    scopes: Arc<[String]>,
    exp: Option<u64>,
    nbf: Option<u64>,
}

/// A time claim (`exp`, `nbf`) in whole seconds: a decimal one (JavaScript issuers write
/// `Date.now() / 1000 + 3600`) rounded to the nearest; one before 1970 as 1970 (long past);
/// one past what 64 bits hold as the end of time. `Err` for one that is not a number, which
/// EG's library refuses.
fn time_claim(v: Option<&serde_json::Value>) -> Result<Option<u64>, ()> {
    match v {
        None => Ok(None),
        Some(v) => match v.as_f64() {
            Some(f) if f.is_finite() => Ok(Some(f.max(0.0).round() as u64)),
            _ => Err(()),
        },
    }
}

/// Tokens verified under one key and one set of claim rules.
/// Only verified tokens are stored, so a per-process seeded fast hash is enough.
type RememberedTokens = RwLock<HashMap<Box<str>, Verified, foldhash::quality::RandomState>>;
type Remembered = Arc<RememberedTokens>;

pub struct Jwt {
    key: DecodingKey,
    validation: Validation,
    extractor: Extractor,
    check_credential: bool,
    pass_through: bool,
    cache: Arc<ConsumerCache>,
    remembered: Remembered,
}

/// The verified tokens of every jwt step, by what decides a token's validity (the key and
/// the claim rules): a config reload that keeps a step's key and rules keeps what it verified.
/// Those of a key or rules no step has any more (a reload rotated the key) go with the last
/// step that had them.
fn remembered_for(material: &str, validation: &Validation) -> Remembered {
    use sha2::Digest;
    static ALL: std::sync::OnceLock<
        std::sync::Mutex<HashMap<[u8; 32], std::sync::Weak<RememberedTokens>>>,
    > = std::sync::OnceLock::new();
    let mut h = sha2::Sha256::new();
    h.update(material.as_bytes());
    h.update(format!("{:?}", validation.algorithms));
    h.update(format!("{:?}", validation.aud));
    h.update(format!("{:?}", validation.iss));
    h.update(format!("{:?}", validation.required_spec_claims));
    h.update(validation.leeway.to_le_bytes());
    let fingerprint: [u8; 32] = h.finalize().into();
    let mut all = ALL
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    all.retain(|_, r| r.strong_count() > 0);
    if let Some(r) = all.get(&fingerprint).and_then(std::sync::Weak::upgrade) {
        return r;
    }
    let r = Remembered::default();
    all.insert(fingerprint, Arc::downgrade(&r));
    r
}

fn now() -> u64 {
    crate::clock::unix_secs()
}

fn algorithm(name: &str) -> Option<Algorithm> {
    Some(match name {
        "HS256" => Algorithm::HS256,
        "HS384" => Algorithm::HS384,
        "HS512" => Algorithm::HS512,
        "RS256" => Algorithm::RS256,
        "RS384" => Algorithm::RS384,
        "RS512" => Algorithm::RS512,
        "PS256" => Algorithm::PS256,
        "PS384" => Algorithm::PS384,
        "PS512" => Algorithm::PS512,
        "ES256" => Algorithm::ES256,
        "ES384" => Algorithm::ES384,
        "EdDSA" => Algorithm::EdDSA,
        _ => return None,
    })
}

/// The key and the algorithms its kind allows.
fn decoding_key(material: &str) -> Result<(DecodingKey, Vec<Algorithm>), String> {
    use Algorithm::*;
    if !material.contains("-----BEGIN") {
        if material.is_empty() {
            return Err("the secret is empty".into());
        }
        // (A key file left with its line feed alone, a value of spaces: a secret anyone
        // guesses.)
        if material.trim().is_empty() {
            return Err("the secret is only whitespace".into());
        }
        // What `'${KEY}'` reads as when KEY is not set (as EG reads it): a secret every
        // attacker would try first, that signed tokens anyone makes.
        if material == "null" || material == "undefined" {
            return Err(format!(
                "the secret is `{material}` (an environment variable that is not set?)"
            ));
        }
        return Ok((
            DecodingKey::from_secret(material.as_bytes()),
            vec![HS256, HS384, HS512],
        ));
    }
    // A PEM passed through an environment variable often has its newlines written as `\n`.
    let normalized = material.replace("\\n", "\n");
    let pem = normalized.as_bytes();
    if let Ok(k) = DecodingKey::from_rsa_pem(pem) {
        return Ok((k, vec![RS256, RS384, RS512, PS256, PS384, PS512]));
    }
    if let Ok(k) = DecodingKey::from_ec_pem(pem) {
        // (On another curve every token would be refused: ES512's P-521, secp256k1.)
        if !on_es_curve(&normalized) {
            return Err("the EC public key is on a curve other than P-256 (ES256) or P-384 (ES384): ES512 (P-521) is not supported".into());
        }
        return Ok((k, vec![ES256, ES384]));
    }
    if let Ok(k) = DecodingKey::from_ed_pem(pem) {
        return Ok((k, vec![EdDSA]));
    }
    Err("the PEM is not an RSA, EC or Ed25519 public key".into())
}

/// Whether an EC public key in PEM (or the first certificate's) is on P-256 or P-384, as
/// OpenSSL reads it; true when it cannot tell (jsonwebtoken has the last word then).
fn on_es_curve(pem: &str) -> bool {
    use pingora_core::tls::nid::Nid;
    use pingora_core::tls::pkey::PKey;
    use pingora_core::tls::x509::X509;
    let key = PKey::public_key_from_pem(pem.as_bytes())
        .ok()
        .or_else(|| X509::from_pem(pem.as_bytes()).ok()?.public_key().ok());
    let curve = key
        .and_then(|k| k.ec_key().ok())
        .and_then(|k| k.group().curve_name());
    match curve {
        Some(nid) => nid == Nid::X9_62_PRIME256V1 || nid == Nid::SECP384R1,
        None => true,
    }
}

impl Jwt {
    pub fn build(
        p: Params,
        config_dirs: &crate::config::ConfigDirs,
        cache: &Arc<ConsumerCache>,
    ) -> Result<Jwt, String> {
        let material = match (&p.secret_or_public_key, &p.secret_or_public_key_file) {
            (Some(s), None) => s.clone(),
            (None, Some(f)) => {
                let path = Path::new(f);
                let path = config_dirs
                    .resolve(path)
                    .unwrap_or_else(|| path.to_path_buf());
                std::fs::read_to_string(&path).map_err(|e| {
                    format!(
                        "cannot read `secretOrPublicKeyFile` {}: {e}",
                        path.display()
                    )
                })?
            }
            (Some(_), Some(_)) => {
                return Err("give `secretOrPublicKey` or `secretOrPublicKeyFile`, not both".into())
            }
            (None, None) => {
                return Err("needs `secretOrPublicKey` or `secretOrPublicKeyFile`".into())
            }
        };
        let (key, family) = decoding_key(&material)?;
        let algorithms = match &p.algorithms {
            None => family.clone(),
            Some(names) => {
                let mut algs = Vec::new();
                for n in names {
                    let a = algorithm(n).ok_or_else(|| format!("unknown algorithm `{n}`"))?;
                    if !family.contains(&a) {
                        return Err(format!(
                            "algorithm `{n}` does not fit the key (a {} key)",
                            if family.contains(&Algorithm::HS256) {
                                "secret"
                            } else {
                                "public"
                            }
                        ));
                    }
                    algs.push(a);
                }
                algs
            }
        };
        // An empty list would refuse every token (EG's jsonwebtoken: "invalid algorithm").
        let Some(&first) = algorithms.first() else {
            return Err("`algorithms` is empty: no token could be verified".into());
        };
        let mut validation = Validation::new(first);
        validation.algorithms = algorithms;
        validation.leeway = LEEWAY;
        // `exp` and `nbf` are judged here (`verify`), as EG's library judges them: any number of
        // seconds (`1e20` too, past what this library reads), anything else refused.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.required_spec_claims.clear();
        // As jsonwebtoken (Node) under EG: a configured audience or issuer must be present in
        // the token, not only match when present. A token minted for one deployment
        // (`audience: ${SUBDOMAIN}`) is refused by another.
        // An empty one (`audience: '${SUBDOMAIN}'` with the variable set to nothing) checks
        // nothing, as there (a falsy option).
        let audience = match &p.audience {
            Some(AudienceParam::One(a)) if a.is_empty() => None,
            other => other.as_ref(),
        };
        match audience {
            Some(AudienceParam::One(a)) => validation.set_audience(&[a]),
            Some(AudienceParam::Many(list)) => validation.set_audience(list),
            None => validation.validate_aud = false,
        }
        if audience.is_some() {
            validation.required_spec_claims.insert("aud".into());
        }
        if let Some(iss) = p.issuer.as_ref().filter(|i| !i.is_empty()) {
            validation.set_issuer(&[iss]);
            validation.required_spec_claims.insert("iss".into());
        }
        let field = p.jwt_extractor_field.clone();
        let extractor = match p.jwt_extractor.as_str() {
            "authBearer" => Extractor::Bearer,
            "authScheme" => Extractor::Scheme(
                field.ok_or("`jwtExtractor: authScheme` needs `jwtExtractorField` (the scheme)")?,
            ),
            "header" => Extractor::Header(
                http::header::HeaderName::from_bytes(
                    field
                        .ok_or("`jwtExtractor: header` needs `jwtExtractorField`")?
                        .to_ascii_lowercase()
                        .as_bytes(),
                )
                .map_err(|_| "`jwtExtractorField` is not a valid header name".to_string())?,
            ),
            "query" => {
                Extractor::Query(field.ok_or("`jwtExtractor: query` needs `jwtExtractorField`")?)
            }
            other => {
                return Err(format!(
                    "unknown jwtExtractor `{other}` (authBearer, authScheme, header, query)"
                ))
            }
        };
        let remembered = remembered_for(&material, &validation);
        Ok(Jwt {
            key,
            validation,
            extractor,
            check_credential: p.check_credential_existence,
            pass_through: p.pass_through,
            cache: cache.clone(),
            remembered,
        })
    }

    fn token<'r>(&self, req: &Request<'r>) -> Option<Cow<'r, str>> {
        let from_scheme = |scheme: &str| {
            let headers: &'r http::HeaderMap = req.headers;
            let value = headers.get("authorization")?.to_str().ok()?;
            let mut parts = value.split_whitespace();
            let (s, t) = (parts.next()?, parts.next()?);
            s.eq_ignore_ascii_case(scheme).then_some(Cow::Borrowed(t))
        };
        match &self.extractor {
            Extractor::Bearer => from_scheme("bearer"),
            Extractor::Scheme(s) => from_scheme(s),
            Extractor::Header(h) => {
                let mut values = req.headers.get_all(h).iter();
                let first = values.next()?;
                // Node (EG) joins the lines of a header it does not keep the first of:
                // `a, b` is no token.
                if values.next().is_some() && !crate::wire::node_keeps_first(h) {
                    return None;
                }
                first.to_str().ok().map(Cow::Borrowed)
            }
            Extractor::Query(q) => query_param(req.query, q),
        }
    }

    /// Verifies the signature and claims, or finds the token already verified.
    fn verify(&self, token: &str) -> Option<Verified> {
        let t = now();
        let fresh = |v: &Verified| {
            v.exp.is_none_or(|e| t <= e.saturating_add(LEEWAY))
                && v.nbf.is_none_or(|n| n <= t.saturating_add(LEEWAY))
        };
        if let Some(v) = self
            .remembered
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(token)
        {
            return fresh(v).then(|| v.clone());
        }
        let data = jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(
            token,
            &self.key,
            &self.validation,
        )
        .ok()?;
        let claims = data.claims;
        // EG's jsonwebtoken compares `iss` as a string: a list of issuers (accepted here when
        // one of them matched) is none.
        if self.validation.iss.is_some()
            && !matches!(claims.get("iss"), Some(serde_json::Value::String(_)))
        {
            return None;
        }
        let text = |k: &str| -> Option<Arc<str>> {
            match claims.get(k)? {
                serde_json::Value::String(s) => Some(Arc::from(s.as_str())),
                serde_json::Value::Number(n) => Some(Arc::from(n.to_string().as_str())),
                _ => None,
            }
        };
        let scopes: Vec<String> = match claims.get("scopes") {
            Some(serde_json::Value::String(s)) => s
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect(),
            Some(serde_json::Value::Array(a)) => a
                .iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect(),
            _ => Vec::new(),
        };
        let (Ok(exp), Ok(nbf)) = (time_claim(claims.get("exp")), time_claim(claims.get("nbf")))
        else {
            // A time that is no number of seconds (`"exp": "soon"`, a negative one).
            return None;
        };
        let verified = Verified {
            sub: text("sub"),
            id: text("id"),
            scopes: Arc::from(scopes),
            exp,
            nbf,
        };
        if !fresh(&verified) {
            return None;
        }
        let mut remembered = self.remembered.write().unwrap_or_else(|p| p.into_inner());
        if remembered.len() >= MAX_REMEMBERED {
            // Drop expired ones, then (if still full) everything: a simple bound.
            remembered.retain(|_, v| v.exp.is_some_and(|e| t <= e.saturating_add(LEEWAY)));
            if remembered.len() >= MAX_REMEMBERED {
                remembered.clear();
            }
        }
        remembered.insert(token.into(), verified.clone());
        Some(verified)
    }
}

impl Policy for Jwt {
    fn on_request(&self, req: &Request<'_>, x: &mut Exchange) -> Outcome {
        let Some(token) = self
            .token(req)
            .filter(|t| !t.is_empty() && t.len() <= MAX_TOKEN)
        else {
            return fail(x, self.pass_through, 401, "jwt: no token");
        };
        let Some(v) = self.verify(&token) else {
            return fail(
                x,
                self.pass_through,
                401,
                "jwt: bad signature, claims or format",
            );
        };
        if !self.check_credential {
            // The token itself is the consumer, as in EG.
            let consumer = Consumer::new(
                v.id.clone().unwrap_or_else(|| Arc::from("")),
                v.scopes.clone(),
            );
            if consumer.id.is_empty() {
                x.consumer = Some(consumer);
                return Outcome::Continue;
            }
            return succeed(x, consumer);
        }
        let Some(sub) = v.sub.as_deref() else {
            return fail(x, self.pass_through, 401, "jwt: no sub claim");
        };
        match self.cache.jwt_subject_or_lookup(sub) {
            Ok(consumer) => succeed(x, consumer),
            Err(_) if !self.cache.is_loaded() => {
                store_unread(x, self.pass_through, "jwt: sub unknown")
            }
            Err(None) if !self.cache.store_answers() => {
                store_silent(x, self.pass_through, "jwt: sub unknown")
            }
            // A subject no credential is, is looked up in the store (one another gateway,
            // or EG, created a moment ago works on its first request).
            Err(Some(lookup)) => {
                let (cache, pass_through) = (self.cache.clone(), self.pass_through);
                let sub = sub.to_string();
                Outcome::Defer(Box::pin(async move {
                    let silent = lookup.done(&cache).await;
                    Box::new(
                        move |x: &mut Exchange| match cache.jwt_subject_looked_up(&sub) {
                            Some(consumer) => succeed(x, consumer),
                            None if silent || !cache.store_answers() => {
                                store_silent(x, pass_through, "jwt: sub unknown")
                            }
                            None => unknown_subject(x, pass_through),
                        },
                    ) as crate::pipeline::context::Finish
                }))
            }
            Err(None) => unknown_subject(x, self.pass_through),
        }
    }
}

fn unknown_subject(x: &mut Exchange, pass_through: bool) -> Outcome {
    fail(x, pass_through, 401, "jwt: sub is no active credential")
}

#[cfg(test)]
mod tests;
