use super::*;
use crate::pipeline::context::testing::OwnedRequest;
use jsonwebtoken::{encode, EncodingKey, Header};

fn policy(params: serde_json::Value) -> Jwt {
    let p: Params = serde_json::from_value(params).expect("params");
    Jwt::build(
        p,
        &crate::config::ConfigDirs::single(Path::new(".")),
        &crate::gateway::Shared::detached().consumers,
    )
    .expect("builds")
}

fn hs(alg: Algorithm, secret: &str, claims: serde_json::Value) -> String {
    encode(
        &Header::new(alg),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("sign")
}

/// A step built again with the same key and rules (a reload) shares what the one before
/// verified; the tokens verified with a key no step has any more go with its last step.
#[test]
fn verified_tokens_are_shared_by_a_key_and_go_with_its_last_step() {
    let validation = Validation::new(Algorithm::HS256);
    let old = remembered_for("a key rotated away", &validation);
    let again = remembered_for("a key rotated away", &validation);
    assert!(
        Arc::ptr_eq(&old, &again),
        "a reload keeping the key keeps them"
    );
    let verified = Verified {
        sub: None,
        id: None,
        scopes: Arc::from(Vec::new()),
        exp: None,
        nbf: None,
    };
    old.write().unwrap().insert("token".into(), verified);
    let watch = Arc::downgrade(&old);
    drop((old, again));
    assert!(
        watch.upgrade().is_none(),
        "nothing holds them once no step has the key"
    );
    let new = remembered_for("a key rotated away", &validation);
    assert!(
        new.read().unwrap().is_empty(),
        "a step with the key again starts afresh"
    );
}

fn passes(p: &Jwt, r: &OwnedRequest) -> bool {
    let mut x = Exchange::default();
    matches!(p.on_request(&r.req(), &mut x), Outcome::Continue) && x.consumer.is_some()
}

/// A decimal `exp` is remembered as its second: the token expires when it says, not
/// never (it was remembered without one).
#[test]
fn a_decimal_exp_is_remembered_and_kept() {
    let p =
        policy(serde_json::json!({"secretOrPublicKey": "s", "checkCredentialExistence": false}));
    let base = now();
    let t = hs(
        Algorithm::HS256,
        "s",
        serde_json::json!({"id": "c1", "exp": base as f64 + 100.25}),
    );
    assert_eq!(p.verify(&t).and_then(|v| v.exp), Some(base + 100));
    let remembered = p.remembered.read().unwrap_or_else(|e| e.into_inner());
    assert_eq!(
        remembered.get(t.as_str()).and_then(|v| v.exp),
        Some(base + 100)
    );
    drop(remembered);
    assert_eq!(time_claim(Some(&serde_json::json!(7.6))), Ok(Some(8)));
    assert_eq!(time_claim(Some(&serde_json::json!(7.4))), Ok(Some(7)));
    assert_eq!(time_claim(Some(&serde_json::json!("7"))), Err(()));
    assert_eq!(time_claim(Some(&serde_json::json!(-1))), Ok(Some(0)));
    assert_eq!(time_claim(None), Ok(None));
}

/// Times as EG's library reads them: any number (`1e20`, past what 64 bits hold, passes;
/// a negative `nbf` is long past, a negative `exp` too), anything else refused.
#[test]
fn time_claims_are_any_number_of_seconds() {
    let p =
        policy(serde_json::json!({"secretOrPublicKey": "s", "checkCredentialExistence": false}));
    let passes_with = |claims: serde_json::Value| {
        let t = hs(Algorithm::HS256, "s", claims);
        passes(
            &p,
            &OwnedRequest::get("/t", &[("authorization", &format!("Bearer {t}"))], &[]),
        )
    };
    assert!(passes_with(serde_json::json!({"id": "c1", "exp": 1e20})));
    assert!(passes_with(serde_json::json!({"id": "c1", "nbf": -5})));
    assert!(!passes_with(serde_json::json!({"id": "c1", "exp": -5})));
    assert!(!passes_with(serde_json::json!({"id": "c1", "exp": "soon"})));
    assert!(!passes_with(serde_json::json!({"id": "c1", "nbf": null})));
    assert!(!passes_with(serde_json::json!({"id": "c1", "exp": 1000})));
}

/// A token whose `exp` is as far away as a number can say passes every time, the first
/// and the remembered ones (the leeway added to it overflowed).
#[test]
fn an_exp_at_the_end_of_time_passes_again_and_again() {
    let p =
        policy(serde_json::json!({"secretOrPublicKey": "s", "checkCredentialExistence": false}));
    let t = hs(
        Algorithm::HS256,
        "s",
        serde_json::json!({"id": "c1", "exp": u64::MAX}),
    );
    for i in 0..3 {
        assert!(
            passes(
                &p,
                &OwnedRequest::get("/t", &[("authorization", &format!("Bearer {t}"))], &[])
            ),
            "request {i}"
        );
    }
}

#[test]
fn extractors() {
    let t = hs(Algorithm::HS256, "s", serde_json::json!({"id": "c1"}));
    let header = policy(
        serde_json::json!({"secretOrPublicKey": "s", "checkCredentialExistence": false, "jwtExtractor": "header", "jwtExtractorField": "X-Token"}),
    );
    assert!(passes(
        &header,
        &OwnedRequest::get("/t", &[("x-token", &t)], &[])
    ));
    assert!(!passes(
        &header,
        &OwnedRequest::get("/t", &[("authorization", &format!("Bearer {t}"))], &[])
    ));
    let scheme = policy(
        serde_json::json!({"secretOrPublicKey": "s", "checkCredentialExistence": false, "jwtExtractor": "authScheme", "jwtExtractorField": "JWT"}),
    );
    assert!(passes(
        &scheme,
        &OwnedRequest::get("/t", &[("authorization", &format!("jwt {t}"))], &[])
    ));
    assert!(!passes(
        &scheme,
        &OwnedRequest::get("/t", &[("authorization", &format!("Bearer {t}"))], &[])
    ));
    // Twice: Node joins the lines (`a, b`), no token — but Authorization's first stands.
    assert!(!passes(
        &header,
        &OwnedRequest::get("/t", &[("x-token", &t), ("x-token", "other")], &[])
    ));
    let bearer =
        policy(serde_json::json!({"secretOrPublicKey": "s", "checkCredentialExistence": false}));
    assert!(passes(
        &bearer,
        &OwnedRequest::get(
            "/t",
            &[
                ("authorization", &format!("Bearer {t}")),
                ("authorization", "Bearer other")
            ],
            &[]
        )
    ));
    let mut x = Exchange::default();
    header.on_request(
        &OwnedRequest::get("/t", &[("x-token", &t)], &[]).req(),
        &mut x,
    );
    assert_eq!(
        x.consumer.map(|c| c.id.to_string()),
        Some("c1".to_string()),
        "without a credential check the token's id is the consumer"
    );
}

/// As EG's jsonwebtoken: an empty audience or issuer (a variable set to nothing) checks
/// nothing (every token was refused), and an `iss` that is a list is no issuer (one that
/// held the configured one passed).
#[test]
fn empty_audience_or_issuer_and_a_list_of_issuers() {
    let bearer =
        |t: &str| OwnedRequest::get("/t", &[("authorization", &format!("Bearer {t}"))], &[]);
    let t = hs(
        Algorithm::HS256,
        "s",
        serde_json::json!({"id": "u", "aud": "kargo.test", "iss": "kargo"}),
    );
    for empty in [
        serde_json::json!({"secretOrPublicKey": "s", "checkCredentialExistence": false, "audience": ""}),
        serde_json::json!({"secretOrPublicKey": "s", "checkCredentialExistence": false, "issuer": ""}),
    ] {
        assert!(passes(&policy(empty.clone()), &bearer(&t)), "{empty}");
    }
    let p = policy(
        serde_json::json!({"secretOrPublicKey": "s", "checkCredentialExistence": false, "issuer": "kargo"}),
    );
    assert!(passes(&p, &bearer(&t)));
    let listed = hs(
        Algorithm::HS256,
        "s",
        serde_json::json!({"id": "u", "iss": ["evil", "kargo"]}),
    );
    assert!(!passes(&p, &bearer(&listed)));
}

#[test]
fn issuer_algorithms_and_not_before() {
    let p = policy(
        serde_json::json!({"secretOrPublicKey": "s", "checkCredentialExistence": false, "issuer": "kargo", "algorithms": ["HS512"]}),
    );
    let bearer =
        |t: &str| OwnedRequest::get("/t", &[("authorization", &format!("Bearer {t}"))], &[]);
    assert!(passes(
        &p,
        &bearer(&hs(
            Algorithm::HS512,
            "s",
            serde_json::json!({"iss": "kargo"})
        ))
    ));
    assert!(
        !passes(
            &p,
            &bearer(&hs(
                Algorithm::HS256,
                "s",
                serde_json::json!({"iss": "kargo"})
            ))
        ),
        "HS256 is not allowed"
    );
    assert!(!passes(
        &p,
        &bearer(&hs(
            Algorithm::HS512,
            "s",
            serde_json::json!({"iss": "other"})
        ))
    ));
    let later = now() + 3600;
    assert!(!passes(
        &p,
        &bearer(&hs(
            Algorithm::HS512,
            "s",
            serde_json::json!({"iss": "kargo", "nbf": later})
        ))
    ));
    let p: Params = serde_json::from_value(
        serde_json::json!({"secretOrPublicKey": "s", "algorithms": ["RS256"]}),
    )
    .expect("params");
    assert!(
        Jwt::build(
            p,
            &crate::config::ConfigDirs::single(Path::new(".")),
            &crate::gateway::Shared::detached().consumers
        )
        .is_err(),
        "RS256 cannot go with a secret"
    );
}

#[test]
fn eddsa_from_a_key_file() {
    let key = openssl::pkey::PKey::generate_ed25519().expect("ed25519");
    let dir = std::env::temp_dir().join(format!("tollgate-jwt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    std::fs::write(dir.join("ed.pub"), key.public_key_to_pem().expect("pem")).expect("write");
    let p: Params = serde_json::from_value(
        serde_json::json!({"secretOrPublicKeyFile": "ed.pub", "checkCredentialExistence": false}),
    )
    .expect("params");
    let policy = Jwt::build(
        p,
        &crate::config::ConfigDirs::single(&dir),
        &crate::gateway::Shared::detached().consumers,
    )
    .expect("builds");
    let enc = EncodingKey::from_ed_pem(&key.private_key_to_pem_pkcs8().expect("pem")).expect("key");
    let t = encode(
        &Header::new(Algorithm::EdDSA),
        &serde_json::json!({"id": "e"}),
        &enc,
    )
    .expect("sign");
    assert!(passes(
        &policy,
        &OwnedRequest::get("/t", &[("authorization", &format!("Bearer {t}"))], &[])
    ));
    let _ = std::fs::remove_dir_all(&dir);
}

/// A secret of nothing but whitespace (a key file left with its line feed, a value of
/// spaces), or `null` (what `'${KEY}'` reads as when KEY is not set), is refused as an empty
/// one is: anyone would guess it.
#[test]
fn a_secret_of_whitespace_is_refused() {
    for secret in ["", " ", "\n", " \t\r\n", "null", "undefined"] {
        let p: Params = serde_json::from_value(serde_json::json!({"secretOrPublicKey": secret}))
            .expect("params");
        let built = Jwt::build(
            p,
            &crate::config::ConfigDirs::single(Path::new(".")),
            &crate::gateway::Shared::detached().consumers,
        );
        assert!(built.is_err(), "{secret:?}");
    }
}

/// An EC key on a curve no algorithm here verifies (ES512's P-521) is a config error, not a
/// key whose every token is refused.
#[test]
fn an_ec_key_on_a_curve_without_an_algorithm_is_refused() {
    const P256: &str = "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEwZKMix0JmCmPBNL3fgAoIl1dzbEx\nYdeGlDLeaPxvoPqAk5qqnsuNrMfRGXYg2HZXxPFKYpxGHIbPDROujCD2sA==\n-----END PUBLIC KEY-----";
    const P384: &str = "-----BEGIN PUBLIC KEY-----\nMHYwEAYHKoZIzj0CAQYFK4EEACIDYgAErGW+t8lyVA/DM9r9C959eMH/DYKB14vc\nD1htHnWo4ncXPwUCvCCKIKp4PFIzfZhKtUOjthjd8wUuaAcBYQcxigjMvnLhR4X9\nxYZCSo9DJSSUERhuQu+9QsZNjEqMbtJ3\n-----END PUBLIC KEY-----";
    const P521: &str = "-----BEGIN PUBLIC KEY-----\nMIGbMBAGByqGSM49AgEGBSuBBAAjA4GGAAQA4UdQJ44dtkaj+hGKcZNgvWhjsohS\nH9e8a1VOTtABA0Hrn1r4Oc4/YV5NYMMdq4Odtm6KrAQnmnVAlGECC3fzBlcBAVXd\nBhpT2vhhBhnRDWgZsenYuHTRfhXZCyt0zup2ccBR3BF5U2hCiLDrCB5jOEzPMLfO\nDEOcnCRCdD62cHpQR94=\n-----END PUBLIC KEY-----";
    let family = |pem: &str| decoding_key(pem).map(|(_, algorithms)| algorithms);
    let es = Ok(vec![Algorithm::ES256, Algorithm::ES384]);
    assert_eq!(family(P256), es);
    assert_eq!(family(P384), es);
    // (As an environment variable carries it.)
    assert_eq!(family(&P384.replace('\n', "\\n")), es);
    // A certificate (jsonwebtoken reads its key), after text and before another one.
    const CHAIN: &str = "subject=CN = x\nissuer=CN = x\n-----BEGIN CERTIFICATE-----\nMIIBbjCCAROgAwIBAgIUU7Wqy2FtHTS/pWYfFCWJmCK4GlkwCgYIKoZIzj0EAwIw\nDDEKMAgGA1UEAwwBeDAeFw0yNjEyMDYxMzM1MTRaFw0zNjEyMDMxMzM1MTRaMAwx\nCjAIBgNVBAMMAXgwWTATBgcqhkjOPQIBBggqhkjOPQMBBwNCAATBkoyLHQmYKY8E\n0vd+ACgiXV3NsTFh14aUMt5o/G+g+oCTmqqey42sx9EZdiDYdlfE8UpinEYchs8N\nE66MIPawo1MwUTAdBgNVHQ4EFgQUKBpBWXX454JalOriOEVyNzkAIuMwHwYDVR0j\nBBgwFoAUKBpBWXX454JalOriOEVyNzkAIuMwDwYDVR0TAQH/BAUwAwEB/zAKBggq\nhkjOPQQDAgNJADBGAiEA31x1QcPiOcV3ZwRmkLZtMhqH4W2J1PNCioJo/afEU/QC\nIQC1M3BG+aIVYlyX9M1M7/RV06adk7jSH8O+Iw1eKBhEQA==\n-----END CERTIFICATE-----\n-----BEGIN CERTIFICATE-----\nMIIBqTCCATCgAwIBAgIUB1Vgcu7p3bBt3CHy9q+qKUOeFfEwCgYIKoZIzj0EAwIw\nDDEKMAgGA1UEAwwBeTAeFw0yNjEyMDYxMzM1MTRaFw0zNjEyMDMxMzM1MTRaMAwx\nCjAIBgNVBAMMAXkwdjAQBgcqhkjOPQIBBgUrgQQAIgNiAASsZb63yXJUD8Mz2v0L\n3n14wf8NgoHXi9wPWG0edajidxc/BQK8IIogqng8UjN9mEq1Q6O2GN3zBS5oBwFh\nBzGKCMy+cuFHhf3FhkJKj0MlJJQRGG5C771Cxk2MSoxu0nejUzBRMB0GA1UdDgQW\nBBRDNLCwyHF8dryi5Fqoui1cPt7V+jAfBgNVHSMEGDAWgBRDNLCwyHF8dryi5Fqo\nui1cPt7V+jAPBgNVHRMBAf8EBTADAQH/MAoGCCqGSM49BAMCA2cAMGQCMCVOUn6i\n3HaPBjyV+Y10dTlMnOg3vTJ+gkYrdnXix8mBh+0epz72Agj6oN+vywpYTgIwYoZ3\n+tQKJBtNgzJDLv67Cdwn+nu/8kjrOydgz3c+eSMCck+ndBCi0d2wsNkFsBGC\n-----END CERTIFICATE-----\n";
    assert_eq!(family(CHAIN), es);
    let refused = family(P521).expect_err("P-521");
    assert!(refused.contains("ES512"), "{refused}");
}
