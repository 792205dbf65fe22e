//! Kargo's storage route (`/s3/*` on the admin port, setting `plugins.storage.endpointName`):
//! `GET|HEAD /s3/[provider/]bucket/key` is proxied, streamed, to the provider's S3 endpoint,
//! signed with AWS SigV4. The first path segment names a provider when one is called so;
//! otherwise it is the bucket, on the default provider. `Range`, `If-None-Match`,
//! `If-Modified-Since`, `If-Match` and `If-Unmodified-Since` are forwarded, so S3's 206 and 304
//! come back as they are, and so do its errors with their real status (403, 404, 416). Of the
//! query only what picks the object read goes ([`query`]). Nothing else of the client's request
//! (no cookie, no Authorization) reaches the provider.
//!
//! Providers are addressed path-style (`https://endpoint/bucket/key`), so every name to resolve
//! is known when the config loads and DNS never runs on the request path. Kargo's legacy `s3`
//! plugin (`S3_ACCESS_KEY`, `S3_SECRET_ACCESS_KEY`, `S3_ENDPOINT`, route `/s3/:bucket/*`) is
//! read as one default provider.

use std::sync::Arc;
use std::time::SystemTime;

use aws_sigv4::http_request::{
    sign, PayloadChecksumKind, PercentEncodingMode, SignableBody, SignableRequest, SigningSettings,
    UriPathNormalizationMode,
};
use http::header::{HeaderName, HeaderValue};

use crate::config::error::ConfigErrors;
use crate::config::node::Node;
use crate::config::system_file::SystemFile;
use crate::upstream::UpstreamTarget;

mod query;

use query::S3_SEGMENT;

/// Client headers forwarded to the provider.
const FORWARDED: [&str; 5] = [
    "range",
    "if-none-match",
    "if-modified-since",
    "if-match",
    "if-unmodified-since",
];

/// The route's path from its `endpointName`: `/s3/` is the route `/s3` (its objects at
/// `/s3/bucket/key`, not `/s3//bucket/key`).
fn route_path(endpoint: String) -> String {
    match endpoint.trim_end_matches('/') {
        "" => endpoint,
        trimmed => trimmed.to_string(),
    }
}

pub struct Provider {
    pub name: String,
    pub target: Arc<UpstreamTarget>,
    region: String,
    access_key: String,
    secret_key: String,
}

impl std::fmt::Debug for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Provider({} at {})", self.name, self.target.url)
    }
}

#[derive(Debug)]
pub struct Storage {
    pub path: String,
    pub providers: Vec<Provider>,
    default: Option<usize>,
    /// Whether a path's first segment may name a provider: not for Kargo's legacy `s3`
    /// plugin, whose route is `/s3/:bucket/*` (its refusals spoke of providers).
    named: bool,
}

/// Where one storage request goes.
#[derive(Debug, PartialEq, Eq)]
pub struct ObjectRequest {
    pub provider: usize,
    /// `/bucket/key` as sent (still percent-encoded) plus the query, if any.
    pub path_and_query: String,
}

/// Why a storage request cannot be served; answered as is.
#[derive(Debug, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    pub message: String,
}

/// A provider's endpoint URL: as given (https when it names no scheme), else AWS's for the region.
fn endpoint_url(given: Option<String>, region: &str) -> String {
    match given {
        Some(e) if e.contains("://") => e,
        Some(e) => format!("https://{e}"),
        None => format!("https://s3.{region}.amazonaws.com"),
    }
}

fn text(n: Option<&Node>, key: &str) -> Option<String> {
    n?.get(key)
        .and_then(Node::scalar_text)
        .filter(|s| !s.is_empty() && s != "null")
}

impl Storage {
    /// The storage route a system config asks for (`plugins.storage`, or the legacy `s3`).
    pub fn from_system(system: &SystemFile, errors: &mut ConfigErrors) -> Option<Storage> {
        let storage = Self::configured(system, errors)?;
        // Taken before the Admin API's own routes: one that would hide them is refused.
        let metrics = system.plugin_endpoint("metrics", crate::gateway::METRICS_PATH);
        let first = storage.path.trim_start_matches('/').split('/').next();
        let hidden = match first {
            Some("") | None => Some("every route".to_string()),
            Some(s) if super::ROUTES.contains(&s) => Some(format!("`/{s}`")),
            _ if storage.owns(&metrics) => Some(format!("`{metrics}`")),
            _ => None,
        };
        if let Some(hidden) = hidden {
            let plugin = ["storage", "s3"].into_iter().find_map(|p| system.plugin(p));
            let at = plugin.map(|p| p.get("endpointName").unwrap_or(p));
            let why = format!(
                "the storage route's `endpointName` `{}` would hide the Admin API's {hidden}",
                storage.path
            );
            match at {
                Some(at) => errors.push(&at.pos, why),
                None => log::error!("{why}"),
            }
            return None;
        }
        Some(storage)
    }

    fn configured(system: &SystemFile, errors: &mut ConfigErrors) -> Option<Storage> {
        if let Some(settings) = system.plugin("storage") {
            let path = route_path(system.plugin_endpoint("storage", "/s3"));
            let mut storage = Storage {
                path,
                providers: Vec::new(),
                default: None,
                named: true,
            };
            let Some(entries) = settings.get("providers").and_then(Node::as_map) else {
                errors.push(
                    &settings.pos,
                    "plugin `storage` needs `providers`: a map of S3 providers",
                );
                return None;
            };
            for (k, v) in entries {
                let name = k.scalar_text().unwrap_or_default();
                let (Some(access_key), Some(secret_key)) = (
                    text(Some(v), "accessKeyId"),
                    text(Some(v), "secretAccessKey"),
                ) else {
                    errors.push(
                        &v.pos,
                        format!(
                            "storage provider `{name}` needs `accessKeyId` and `secretAccessKey`"
                        ),
                    );
                    continue;
                };
                let region = text(Some(v), "region").unwrap_or_else(|| "us-east-1".into());
                let endpoint = endpoint_url(text(Some(v), "endpoint"), &region);
                match UpstreamTarget::parse(&endpoint) {
                    Ok(t) => {
                        use crate::config::node::Value;
                        // (`'true'` and `'false'` as booleans, as EG's schema coerces them: a
                        // `${VAR}` in quotes is a string.)
                        let flag = |d: &Value| match d {
                            Value::Null => Some(false),
                            Value::Bool(b) => Some(*b),
                            Value::Str(s) if s.eq_ignore_ascii_case("true") => Some(true),
                            Value::Str(s) if s.eq_ignore_ascii_case("false") || s.is_empty() => {
                                Some(false)
                            }
                            _ => None,
                        };
                        match v.get("default").map(|d| (d, flag(&d.value))) {
                            None | Some((_, Some(false))) => {}
                            Some((d, Some(true))) => match storage.default {
                                Some(first) => errors.push(
                                    &d.pos,
                                    format!(
                                        "storage providers `{}` and `{name}` are both `default: true`: one may be",
                                        storage.providers[first].name
                                    ),
                                ),
                                None => storage.default = Some(storage.providers.len()),
                            },
                            Some((d, _)) => errors.push(
                                &d.pos,
                                format!("storage provider `{name}`: `default` is true or false"),
                            ),
                        }
                        storage.providers.push(Provider {
                            name,
                            target: Arc::new(t),
                            region,
                            access_key,
                            secret_key,
                        });
                    }
                    Err(why) => errors.push(&v.pos, format!("storage provider `{name}`: {why}")),
                }
            }
            if storage.default.is_none() && storage.providers.len() == 1 {
                storage.default = Some(0);
            }
            return Some(storage);
        }
        let legacy = system.plugin("s3");
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let access_key = text(legacy, "accessKeyId").or_else(|| env("S3_ACCESS_KEY"))?;
        let secret_key = text(legacy, "secretAccessKey").or_else(|| env("S3_SECRET_ACCESS_KEY"))?;
        let region = text(legacy, "region")
            .or_else(|| env("S3_REGION"))
            .unwrap_or_else(|| "us-east-1".into());
        let endpoint = endpoint_url(
            text(legacy, "endpoint").or_else(|| env("S3_ENDPOINT")),
            &region,
        );
        match UpstreamTarget::parse(&endpoint) {
            Ok(t) => Some(Storage {
                path: route_path(system.plugin_endpoint("s3", "/s3")),
                providers: vec![Provider {
                    name: "s3".into(),
                    target: Arc::new(t),
                    region,
                    access_key,
                    secret_key,
                }],
                default: Some(0),
                named: false,
            }),
            Err(why) => {
                // Where the file wrote it; an endpoint from the environment has no place.
                match legacy.and_then(|l| l.get("endpoint")) {
                    Some(at) => errors.push(&at.pos, format!("plugin `s3` `endpoint`: {why}")),
                    None => log::error!("s3 plugin: S3_ENDPOINT: {why}"),
                }
                None
            }
        }
    }

    /// Whether a request path is the storage route's (its own path, or below it).
    pub fn owns(&self, path: &str) -> bool {
        path == self.path
            || path
                .strip_prefix(self.path.as_str())
                .is_some_and(|rest| rest.starts_with('/'))
    }

    /// Where `/s3/[provider/]bucket/key?query` goes.
    pub fn route(
        &self,
        method: &http::Method,
        path: &str,
        query: Option<&str>,
    ) -> Result<ObjectRequest, Refusal> {
        if *method != http::Method::GET && *method != http::Method::HEAD {
            return Err(Refusal {
                status: 405,
                message: "the storage route serves GET and HEAD".into(),
            });
        }
        let rest = path[self.path.len()..].trim_start_matches('/');
        let mut segments = rest.splitn(2, '/');
        let first = segments.next().unwrap_or("");
        let after = segments.next().unwrap_or("");
        let by_name = match self.named {
            true => self.providers.iter().position(|p| p.name == first),
            false => None,
        };
        let (provider, bucket_and_key) = match by_name {
            Some(i) => (i, after),
            None => match self.default {
                Some(d) => (d, rest),
                None => {
                    return Err(Refusal {
                        status: 404,
                        message: format!(
                            "unknown storage provider `{first}` (and no default provider)"
                        ),
                    })
                }
            },
        };
        let (bucket, key) = bucket_and_key
            .split_once('/')
            .unwrap_or((bucket_and_key, ""));
        if bucket.is_empty() || key.is_empty() {
            return Err(Refusal {
                status: 400,
                message: match self.named {
                    true => format!("expected {}/[provider/]bucket/key", self.path),
                    false => format!("expected {}/bucket/key", self.path),
                },
            });
        }
        // Sent as S3 signs it: a client may leave characters such as `(` unencoded, which S3
        // encodes in its canonical request (the same path signed raw would not match).
        let mut path_and_query = String::with_capacity(bucket_and_key.len() + 16);
        path_and_query.push('/');
        s3_encoded(bucket, &mut path_and_query);
        path_and_query.push('/');
        s3_encoded(key, &mut path_and_query);
        if let Some(q) = query.filter(|q| !q.is_empty()) {
            let mut kept = String::new();
            query::forwarded(q, &mut kept).map_err(|name| Refusal {
                status: 400,
                message: format!(
                    "the storage route reads objects: `{name}` is not forwarded (only `versionId` and `partNumber` are)"
                ),
            })?;
            if !kept.is_empty() {
                path_and_query.push('?');
                path_and_query.push_str(&kept);
            }
        }
        let object = ObjectRequest {
            provider,
            path_and_query,
        };
        // The path as it goes (encoded, the endpoint's own path before it) must be a request
        // target the provider's request can carry: a key that only fits encoded past it was
        // a 502 that blamed the provider.
        if self.upstream_path(&object).len() > MAX_TARGET {
            return Err(Refusal {
                status: 414,
                message: "URI Too Long: the object's path, encoded as S3 signs it, is longer than a request target may be".into(),
            });
        }
        Ok(object)
    }

    /// The headers the provider gets: the forwarded conditionals, Host, and SigV4's.
    pub fn signed_headers(
        &self,
        req: &ObjectRequest,
        method: &str,
        client: &http::HeaderMap,
    ) -> Result<Vec<(HeaderName, HeaderValue)>, String> {
        let p = &self.providers[req.provider];
        let host = p
            .target
            .host_header
            .to_str()
            .map_err(|e| e.to_string())?
            .to_string();
        let mut headers: Vec<(String, String)> = vec![("host".into(), host)];
        for name in FORWARDED {
            // A range asked for with `If-Range` (a download resumed) is left out: the
            // provider is not given the condition, and a range of an object changed since
            // would be spliced onto the client's older part; the whole object it gets is.
            if name == "range" && client.contains_key(http::header::IF_RANGE) {
                continue;
            }
            // (Of several lines, the first: S3 compares one entity tag, not a list.)
            if let Some(v) = client.get(name).and_then(|v| v.to_str().ok()) {
                headers.push((name.to_string(), v.to_string()));
            }
        }
        let base = p.target.base_path.trim_end_matches('/');
        let url = format!(
            "{}://{}{base}{}",
            if p.target.tls { "https" } else { "http" },
            headers[0].1,
            req.path_and_query
        );
        let identity = aws_credential_types::Credentials::new(
            &p.access_key,
            &p.secret_key,
            None,
            None,
            "tollgate-storage",
        )
        .into();
        let mut settings = SigningSettings::default();
        settings.payload_checksum_kind = PayloadChecksumKind::XAmzSha256;
        // S3 signs the path as sent: encoded once, never normalised (`a%20b.png`,
        // `dir//double.png` are keys of their own).
        settings.percent_encoding_mode = PercentEncodingMode::Single;
        settings.uri_path_normalization_mode = UriPathNormalizationMode::Disabled;
        let params = aws_sigv4::sign::v4::SigningParams::builder()
            .identity(&identity)
            .region(&p.region)
            .name("s3")
            .time(SystemTime::now())
            .settings(settings)
            .build()
            .map_err(|e| e.to_string())?
            .into();
        let signable = SignableRequest::new(
            method,
            url.as_str(),
            headers.iter().map(|(k, v)| (k.as_str(), v.as_str())),
            SignableBody::UnsignedPayload,
        )
        .map_err(|e| e.to_string())?;
        let (instructions, _) = sign(signable, &params)
            .map_err(|e| e.to_string())?
            .into_parts();
        let (signed, _) = instructions.into_parts();
        let mut out = Vec::new();
        for (k, v) in headers.iter().chain(
            signed
                .iter()
                .map(|h| (h.name().to_string(), h.value().to_string()))
                .collect::<Vec<_>>()
                .iter(),
        ) {
            let name = HeaderName::from_bytes(k.as_bytes()).map_err(|e| e.to_string())?;
            let value = HeaderValue::from_str(v).map_err(|e| e.to_string())?;
            out.push((name, value));
        }
        Ok(out)
    }

    /// The provider's path for an object (its endpoint's own path, if any, first).
    pub fn upstream_path(&self, req: &ObjectRequest) -> String {
        let base = self.providers[req.provider]
            .target
            .base_path
            .trim_end_matches('/');
        format!("{base}{}", req.path_and_query)
    }
}

/// The longest request target the provider's request carries (`http::Uri`'s bound).
const MAX_TARGET: usize = 65_534;

/// Appends `path` (segments separated by `/`, each percent-encoded or not) in S3's canonical
/// form: each segment decoded, then encoded as AWS's `UriEncode` does (every byte but
/// `A-Za-z0-9-_.~` as `%XX`). A `%` that starts no escape is a `%` of the key; `+` is a `+`.
fn s3_encoded(path: &str, out: &mut String) {
    for (i, segment) in path.split('/').enumerate() {
        if i > 0 {
            out.push('/');
        }
        let bytes: Vec<u8> = percent_encoding::percent_decode_str(segment).collect();
        out.extend(percent_encoding::percent_encode(&bytes, S3_SEGMENT));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn storage() -> Storage {
        let t = |u: &str| Arc::new(UpstreamTarget::parse(u).expect("url"));
        Storage {
            path: "/s3".into(),
            providers: vec![
                Provider {
                    name: "aws".into(),
                    target: t("https://s3.eu-west-1.amazonaws.com"),
                    region: "eu-west-1".into(),
                    access_key: "a".into(),
                    secret_key: "s".into(),
                },
                Provider {
                    name: "ovh".into(),
                    target: t("https://s3.gra.example"),
                    region: "gra".into(),
                    access_key: "a".into(),
                    secret_key: "s".into(),
                },
            ],
            default: Some(0),
            named: true,
        }
    }

    /// Kargo's legacy `s3` plugin: `/s3/:bucket/*`, its one provider named by no path.
    #[test]
    fn the_legacy_route_takes_every_first_segment_for_a_bucket() {
        let mut s = storage();
        s.providers.truncate(1);
        s.providers[0].name = "s3".into();
        s.named = false;
        let get = http::Method::GET;
        let r = s.route(&get, "/s3/s3/a.png", None).expect("routes");
        assert_eq!((r.provider, r.path_and_query.as_str()), (0, "/s3/a.png"));
        let e = s.route(&get, "/s3/tiles/", None).expect_err("no key");
        assert_eq!(
            (e.status, e.message.as_str()),
            (400, "expected /s3/bucket/key")
        );
    }

    #[test]
    fn a_key_too_long_once_encoded_is_a_414() {
        let s = storage();
        let get = http::Method::GET;
        // 22,000 bytes as sent, 66,000 encoded (`!` is `%21` to S3).
        let long = format!("/s3/tiles/{}", "!".repeat(22_000));
        assert_eq!(
            s.route(&get, &long, None).map_err(|e| e.status).err(),
            Some(414)
        );
        let fits = format!("/s3/tiles/{}", "!".repeat(21_000));
        assert!(s.route(&get, &fits, None).is_ok());
    }

    #[test]
    fn provider_bucket_and_key() {
        let s = storage();
        let get = http::Method::GET;
        let r = s
            .route(&get, "/s3/ovh/tiles/a/b.png", None)
            .expect("routes");
        assert_eq!(
            (r.provider, r.path_and_query.as_str()),
            (1, "/tiles/a/b.png")
        );
        let r = s
            .route(&get, "/s3/tiles/a/b.png", Some("versionId=3"))
            .expect("routes");
        assert_eq!(
            (r.provider, r.path_and_query.as_str()),
            (0, "/tiles/a/b.png?versionId=3")
        );
        assert_eq!(
            s.route(&get, "/s3/tiles", None).map_err(|e| e.status),
            Err(400)
        );
        assert_eq!(s.route(&get, "/s3/", None).map_err(|e| e.status), Err(400));
        assert_eq!(
            s.route(&http::Method::PUT, "/s3/tiles/a", None)
                .map_err(|e| e.status),
            Err(405)
        );
        assert!(s.owns("/s3/x") && s.owns("/s3") && !s.owns("/s3x/y"));
    }

    /// The path goes to S3 in the form its signature encodes (AWS's `UriEncode` of each
    /// segment): what a client left unencoded is encoded, what it encoded stays, an empty
    /// segment stays, `+` and a `%` that starts no escape are characters of the key. (The
    /// paths are those botocore sends for the same keys.)
    #[test]
    fn the_objects_path_is_sent_as_s3_signs_it() {
        let s = storage();
        let get = http::Method::GET;
        for (asked, sent) in [
            ("/s3/tiles/a(1).png", "/tiles/a%281%29.png"),
            ("/s3/tiles/f%28g%29.png", "/tiles/f%28g%29.png"),
            ("/s3/tiles/a%20b.png", "/tiles/a%20b.png"),
            ("/s3/tiles/a%2fb.png", "/tiles/a%2Fb.png"),
            ("/s3/tiles/dir//double.png", "/tiles/dir//double.png"),
            ("/s3/tiles/%C3%A9t%C3%A9.png", "/tiles/%C3%A9t%C3%A9.png"),
            ("/s3/tiles/\u{e9}.png", "/tiles/%C3%A9.png"),
            ("/s3/tiles/a+b~c_d-e.png", "/tiles/a%2Bb~c_d-e.png"),
            ("/s3/tiles/100%.png", "/tiles/100%25.png"),
            (
                "/s3/tiles/h:i@j,k;l=m&n$o!p*q'r.png",
                "/tiles/h%3Ai%40j%2Ck%3Bl%3Dm%26n%24o%21p%2Aq%27r.png",
            ),
        ] {
            let r = s.route(&get, asked, Some("versionId=3")).expect("routes");
            assert_eq!(r.path_and_query, format!("{sent}?versionId=3"), "{asked}");
        }
    }

    #[test]
    fn signing_adds_sigv4_and_keeps_only_conditionals() {
        let s = storage();
        let r = s
            .route(&http::Method::GET, "/s3/tiles/a.png", None)
            .expect("routes");
        let mut client = http::HeaderMap::new();
        client.insert("range", HeaderValue::from_static("bytes=0-9"));
        client.insert("cookie", HeaderValue::from_static("secret=1"));
        client.insert(
            "authorization",
            HeaderValue::from_static("Bearer client-token"),
        );
        let headers = s.signed_headers(&r, "GET", &client).expect("signs");
        let names: Vec<&str> = headers.iter().map(|(n, _)| n.as_str()).collect();
        assert!(
            names.contains(&"range")
                && names.contains(&"x-amz-date")
                && names.contains(&"x-amz-content-sha256")
        );
        assert!(!names.contains(&"cookie"));
        let auth = headers
            .iter()
            .find(|(n, _)| n == "authorization")
            .map(|(_, v)| v.to_str().unwrap_or(""))
            .unwrap_or("");
        assert!(auth.starts_with("AWS4-HMAC-SHA256 Credential=a/"), "{auth}");
        assert!(auth.contains("/eu-west-1/s3/aws4_request"));
    }
}
