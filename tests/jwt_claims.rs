//! The jwt policy against tokens minted by PyJWT, an implementation independent of tollgate's,
//! for every key family tollgate accepts (HS256/384/512, RS256/512, PS256, ES256, ES384,
//! EdDSA): what Express Gateway accepts passes, what it refuses is 401 — a configured audience
//! or issuer must be present in the token, not only match when present.

mod support;

use openssl::ec::{EcGroup, EcKey};
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::rsa::Rsa;
use support::jwt::now;
use support::pyjwt::{mint, Mint};
use support::{get, ConfigDir, EchoUpstream, GatewayProcess};

const SECRET: &str = "kargo-hmac-secret-long-enough-for-every-hmac-hash-0123456789abcdef";

struct Family {
    /// The apiEndpoint path prefix whose jwt step holds this family's key.
    path: &'static str,
    algs: &'static [&'static str],
    /// The signing key (secret or private PEM) and the key the gateway holds.
    signing: String,
    verifying: String,
    /// Another key of the same kind, which the gateway does not trust.
    stranger: String,
}

fn pem(key: &PKey<Private>) -> (String, String) {
    (
        String::from_utf8(key.private_key_to_pem_pkcs8().expect("private pem")).expect("utf8"),
        String::from_utf8(key.public_key_to_pem().expect("public pem")).expect("utf8"),
    )
}

fn rsa() -> PKey<Private> {
    PKey::from_rsa(Rsa::generate(2048).expect("rsa")).expect("pkey")
}

fn ec(curve: Nid) -> PKey<Private> {
    let group = EcGroup::from_curve_name(curve).expect("curve");
    PKey::from_ec_key(EcKey::generate(&group).expect("ec")).expect("pkey")
}

fn ed() -> PKey<Private> {
    PKey::generate_ed25519().expect("ed25519")
}

fn family(
    path: &'static str,
    algs: &'static [&'static str],
    make: fn() -> PKey<Private>,
) -> Family {
    let (signing, verifying) = pem(&make());
    let (stranger, _) = pem(&make());
    Family {
        path,
        algs,
        signing,
        verifying,
        stranger,
    }
}

fn families() -> Vec<Family> {
    vec![
        Family {
            path: "/hs",
            algs: &["HS256", "HS384", "HS512"],
            signing: SECRET.into(),
            verifying: SECRET.into(),
            stranger: "another-secret".into(),
        },
        family("/rsa", &["RS256", "RS512", "PS256"], rsa),
        family("/p256", &["ES256"], || ec(Nid::X9_62_PRIME256V1)),
        family("/p384", &["ES384"], || ec(Nid::SECP384R1)),
        family("/ed", &["EdDSA"], ed),
    ]
}

fn config(up: &EchoUpstream, families: &[Family]) -> String {
    let mut endpoints = String::new();
    let mut pipelines = String::new();
    for f in families {
        let name = &f.path[1..];
        endpoints.push_str(&format!("  {name}: {{paths: '{}/*'}}\n", f.path));
        let key = if f.verifying.contains("BEGIN") {
            format!("secretOrPublicKeyFile: {name}.pub")
        } else {
            format!("secretOrPublicKey: '{}'", f.verifying)
        };
        pipelines.push_str(&format!(
            "  {name}:\n    apiEndpoints: [{name}]\n    policies:\n      - jwt: [{{action: {{{key}, audience: tiles, issuer: kargo, checkCredentialExistence: false}}}}]\n      - proxy: [{{action: {{serviceEndpoint: up}}}}]\n"
        ));
    }
    format!(
        "http: {{port: ${{PORT}}}}\nadmin: {{port: ${{ADMIN_PORT}}, host: 127.0.0.1}}\napiEndpoints:\n{endpoints}serviceEndpoints:\n  up: {{url: '{}'}}\npolicies: [jwt, proxy]\npipelines:\n{pipelines}",
        up.url("")
    )
}

fn good_claims() -> serde_json::Value {
    serde_json::json!({"id": "consumer-1", "aud": "tiles", "iss": "kargo", "exp": now() + 600})
}

fn with(
    claims: serde_json::Value,
    edit: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>),
) -> serde_json::Value {
    let mut c = claims;
    if let Some(map) = c.as_object_mut() {
        edit(map);
    }
    c
}

fn status(gw: &GatewayProcess, path: &str, authorization: &str) -> (u16, String) {
    let r = get(gw.port, "GET", path, &[("Authorization", authorization)]);
    (r.status, r.text())
}

#[test]
fn tokens_from_pyjwt_for_every_family() {
    let up = EchoUpstream::start("tiles");
    let fams = families();
    let dir = ConfigDir::new(&config(&up, &fams));
    for f in &fams {
        if f.verifying.contains("BEGIN") {
            dir.write(&format!("{}.pub", &f.path[1..]), &f.verifying);
        }
    }
    let gw = GatewayProcess::start(&dir);

    // (family index, description, token request, expected status)
    let mut cases: Vec<(usize, String, Mint, u16)> = Vec::new();
    for (i, f) in fams.iter().enumerate() {
        for alg in f.algs {
            cases.push((
                i,
                format!("{alg} valid"),
                Mint::new(alg, &f.signing, good_claims()),
                200,
            ));
        }
        let alg = f.algs[0];
        let refused: Vec<(&str, serde_json::Value)> = vec![
            (
                "expired",
                with(good_claims(), |c| {
                    c.insert("exp".into(), (now() - 60).into());
                }),
            ),
            (
                "nbf in the future",
                with(good_claims(), |c| {
                    c.insert("nbf".into(), (now() + 60).into());
                }),
            ),
            (
                "wrong aud",
                with(good_claims(), |c| {
                    c.insert("aud".into(), "other".into());
                }),
            ),
            (
                "missing aud",
                with(good_claims(), |c| {
                    c.remove("aud");
                }),
            ),
            (
                "wrong iss",
                with(good_claims(), |c| {
                    c.insert("iss".into(), "other".into());
                }),
            ),
            (
                "missing iss",
                with(good_claims(), |c| {
                    c.remove("iss");
                }),
            ),
            (
                "exp not a number",
                with(good_claims(), |c| {
                    c.insert("exp".into(), "9999999999".into());
                }),
            ),
        ];
        for (what, claims) in refused {
            cases.push((
                i,
                format!("{alg} {what}"),
                Mint::new(alg, &f.signing, claims),
                401,
            ));
        }
        cases.push((
            i,
            format!("{alg} wrong key"),
            Mint::new(alg, &f.stranger, good_claims()),
            401,
        ));
        // As Express Gateway (jsonwebtoken): an aud list passes when it holds the audience, and
        // a token without exp does not expire.
        cases.push((
            i,
            format!("{alg} aud list holding the audience"),
            Mint::new(
                alg,
                &f.signing,
                with(good_claims(), |c| {
                    c.insert("aud".into(), serde_json::json!(["x", "tiles"]));
                }),
            ),
            200,
        ));
        cases.push((
            i,
            format!("{alg} aud list without the audience"),
            Mint::new(
                alg,
                &f.signing,
                with(good_claims(), |c| {
                    c.insert("aud".into(), serde_json::json!(["x", "y"]));
                }),
            ),
            401,
        ));
        cases.push((
            i,
            format!("{alg} no exp"),
            Mint::new(
                alg,
                &f.signing,
                with(good_claims(), |c| {
                    c.remove("exp");
                }),
            ),
            200,
        ));
    }
    // HS256 signed with the RSA public key's text as the secret.
    let rsa = &fams[1];
    cases.push((
        1,
        "HS256 signed with the RSA public PEM".into(),
        Mint {
            hmac_with_pem: true,
            ..Mint::new("HS256", &rsa.verifying, good_claims())
        },
        401,
    ));
    // A token for one family is refused by another's key.
    cases.push((
        2,
        "HS256 token at the ES256 endpoint".into(),
        Mint::new("HS256", SECRET, good_claims()),
        401,
    ));

    let tokens = mint(
        &cases
            .iter()
            .map(|(_, _, m, _)| Mint {
                alg: m.alg,
                key: m.key.clone(),
                claims: m.claims.clone(),
                hmac_with_pem: m.hmac_with_pem,
            })
            .collect::<Vec<_>>(),
    );
    let mut failures = Vec::new();
    for ((i, what, _, want), token) in cases.iter().zip(&tokens) {
        let path = format!("{}/tile.png", fams[*i].path);
        let (got, body) = status(&gw, &path, &format!("Bearer {token}"));
        if got != *want {
            failures.push(format!("{what}: {got} {body:?}, expected {want}"));
        } else if got == 401 {
            assert_eq!(body, "Unauthorized", "{what}: a short body");
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // Tokens that are not tokens, on every family.
    let none = {
        use base64::Engine;
        let b64 = |v: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
        format!(
            "{}.{}.",
            b64(r#"{"alg":"none","typ":"JWT"}"#),
            b64(&good_claims().to_string())
        )
    };
    for f in &fams {
        let path = format!("{}/tile.png", f.path);
        for auth in [
            format!("Bearer {none}"),
            "Bearer garbage".to_string(),
            "Bearer a.b.c".to_string(),
            "Bearer ".to_string(),
            "Bearer".to_string(),
            "Basic dXNlcjpwYXNz".to_string(),
        ] {
            let (got, body) = status(&gw, &path, &auth);
            assert_eq!(
                (got, body.as_str()),
                (401, "Unauthorized"),
                "{}: {auth:?}",
                f.path
            );
        }
    }
    let log = gw.log_text();
    assert!(!log.contains("panicked"), "{log}");
}
