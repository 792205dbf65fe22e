//! The query of a storage read: what of it reaches the provider, signed as S3 reads it.
//!
//! The route reads objects with the gateway's own keys, for any client its pipeline lets
//! through: it forwards only what picks the object read (`versionId`, `partNumber`). A
//! parameter that would make the provider answer something else (an object's `acl`, `tagging`,
//! `torrent`, `attributes`, `retention`, `legal-hold`, a multipart upload's parts) or override
//! the headers of its answer (`response-content-type` and the other `response-*`) is refused;
//! any other (a client's cache buster) is left out, as the provider would ignore it.

/// The parameters forwarded (S3 reads their names as written).
const FORWARDED: [&str; 2] = ["versionId", "partNumber"];

/// Parameters S3 reads as another operation on the object than reading it (compared without
/// case: a provider other than S3 may read them so).
const OTHER_OPERATIONS: [&str; 10] = [
    "acl",
    "attributes",
    "legal-hold",
    "retention",
    "tagging",
    "torrent",
    "uploadId",
    "uploads",
    "restore",
    "select",
];

/// The characters S3's signature leaves unencoded in a path segment (AWS's `UriEncode`).
pub(super) const S3_SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// Appends what of `query` is forwarded, as S3's signature reads it (see [`s3_query`]); `Err`
/// with the name of a parameter that is refused.
pub(super) fn forwarded(query: &str, out: &mut String) -> Result<(), String> {
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let raw_name = pair.split_once('=').map_or(pair, |(n, _)| n);
        let name = percent_encoding::percent_decode_str(raw_name).decode_utf8_lossy();
        if FORWARDED.contains(&name.as_ref()) {
            if !out.is_empty() {
                out.push('&');
            }
            s3_query(pair, out);
        } else if refused(&name) {
            return Err(name.into_owned());
        }
    }
    Ok(())
}

fn refused(name: &str) -> bool {
    name.to_ascii_lowercase().starts_with("response-")
        || OTHER_OPERATIONS
            .iter()
            .any(|o| o.eq_ignore_ascii_case(name))
}

/// Appends `query` as S3's signature reads it: each name and value decoded, then encoded as
/// AWS's `UriEncode` does (a `+` is a `+`, sent `%2B`; a space `%20`). Sent as the client wrote
/// it, a query the signer reads otherwise (`+` as a space, `/` or `:` left raw) failed S3's
/// signature check.
pub(super) fn s3_query(query: &str, out: &mut String) {
    let mut first = true;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        if !first {
            out.push('&');
        }
        first = false;
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        for (i, part) in [name, value].into_iter().enumerate() {
            if i == 1 {
                out.push('=');
            }
            let bytes: Vec<u8> = percent_encoding::percent_decode_str(part).collect();
            out.extend(percent_encoding::percent_encode(&bytes, S3_SEGMENT));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_go_as_s3_signs_them() {
        let q = |raw: &str| {
            let mut out = String::new();
            s3_query(raw, &mut out);
            out
        };
        assert_eq!(
            q("response-content-type=image/png"),
            "response-content-type=image%2Fpng"
        );
        assert_eq!(q("x=a+b&y=a b&z=a%2fb"), "x=a%2Bb&y=a%20b&z=a%2Fb");
        assert_eq!(q("versionId&&w=(1)"), "versionId=&w=%281%29");
    }

    #[test]
    fn only_what_picks_the_object_is_forwarded() {
        let f = |raw: &str| {
            let mut out = String::new();
            forwarded(raw, &mut out).map(|()| out)
        };
        assert_eq!(
            f("versionId=a+b&v=2&partNumber=1").as_deref(),
            Ok("versionId=a%2Bb&partNumber=1")
        );
        assert_eq!(f("t=123&x").as_deref(), Ok(""));
        assert_eq!(
            f("%76ersionId=3").as_deref(),
            Ok("versionId=3"),
            "an encoded name"
        );
        assert_eq!(
            f("versionid=3").as_deref(),
            Ok(""),
            "S3's names are as written"
        );
        for (query, name) in [
            ("acl", "acl"),
            ("versionId=3&ACL=", "ACL"),
            ("response-content-type=text/html", "response-content-type"),
            ("Response-Expires=0", "Response-Expires"),
            ("%61cl", "acl"),
            ("tagging&versionId=1", "tagging"),
            ("uploadId=x", "uploadId"),
            ("torrent", "torrent"),
        ] {
            assert_eq!(f(query), Err(name.to_string()), "{query}");
        }
    }
}
