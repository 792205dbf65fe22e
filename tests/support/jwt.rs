//! Signing test tokens: HS256 with a secret, RS256 and ES256 with keys made on the fly.

use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use openssl::ec::{EcGroup, EcKey};
use openssl::nid::Nid;
use openssl::pkey::PKey;
use openssl::rsa::Rsa;

pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub fn hs256(secret: &str, claims: &serde_json::Value) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("sign")
}

/// A key pair as (private PEM, public PEM).
pub struct KeyPair {
    pub private_pem: Vec<u8>,
    pub public_pem: String,
}

pub fn rsa_pair() -> KeyPair {
    let rsa = Rsa::generate(2048).expect("rsa");
    let key = PKey::from_rsa(rsa).expect("pkey");
    KeyPair {
        private_pem: key.private_key_to_pem_pkcs8().expect("pem"),
        public_pem: String::from_utf8(key.public_key_to_pem().expect("pem")).expect("utf8"),
    }
}

pub fn ec_pair() -> KeyPair {
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).expect("curve");
    let key = PKey::from_ec_key(EcKey::generate(&group).expect("ec")).expect("pkey");
    KeyPair {
        private_pem: key.private_key_to_pem_pkcs8().expect("pem"),
        public_pem: String::from_utf8(key.public_key_to_pem().expect("pem")).expect("utf8"),
    }
}

pub fn rs256(pair: &KeyPair, claims: &serde_json::Value) -> String {
    encode(
        &Header::new(Algorithm::RS256),
        claims,
        &EncodingKey::from_rsa_pem(&pair.private_pem).expect("key"),
    )
    .expect("sign")
}

pub fn es256(pair: &KeyPair, claims: &serde_json::Value) -> String {
    encode(
        &Header::new(Algorithm::ES256),
        claims,
        &EncodingKey::from_ec_pem(&pair.private_pem).expect("key"),
    )
    .expect("sign")
}

/// A token with `alg: none` and no signature.
pub fn unsigned(claims: &serde_json::Value) -> String {
    use base64::Engine;
    let b64 = |v: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
    format!(
        "{}.{}.",
        b64(r#"{"alg":"none","typ":"JWT"}"#),
        b64(&claims.to_string())
    )
}
