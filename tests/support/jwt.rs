//! Test tokens, minted by PyJWT (see [`super::pyjwt`]): HS256 with a secret, RS256 and ES256
//! with keys made on the fly.

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

/// An HS256 token, minted by PyJWT.
pub fn hs256(secret: &str, claims: &serde_json::Value) -> String {
    minted("HS256", secret, claims)
}

/// An HS256 token signed with a public key's PEM text as the secret (the RS→HS confusion
/// attack, which PyJWT refuses to sign: made beside it by the same script).
pub fn hs256_with_pem(pem: &str, claims: &serde_json::Value) -> String {
    let mut mint = super::pyjwt::Mint::new("HS256", pem, claims.clone());
    mint.hmac_with_pem = true;
    super::pyjwt::mint(&[mint]).remove(0)
}

fn minted(alg: &'static str, key: &str, claims: &serde_json::Value) -> String {
    super::pyjwt::mint(&[super::pyjwt::Mint::new(alg, key, claims.clone())]).remove(0)
}

/// A key pair as (private PEM, public PEM).
pub struct KeyPair {
    pub private_pem: Vec<u8>,
    pub public_pem: String,
}

impl KeyPair {
    fn private_pem_text(&self) -> String {
        String::from_utf8(self.private_pem.clone()).expect("a PEM is text")
    }
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

/// An RS256 token, minted by PyJWT.
pub fn rs256(pair: &KeyPair, claims: &serde_json::Value) -> String {
    minted("RS256", &pair.private_pem_text(), claims)
}

/// An ES256 token, minted by PyJWT.
pub fn es256(pair: &KeyPair, claims: &serde_json::Value) -> String {
    minted("ES256", &pair.private_pem_text(), claims)
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
