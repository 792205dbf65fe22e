//! Tokens minted by PyJWT (installed by scripts/install-test-servers.sh into target/py): an
//! implementation tollgate's own code and its JWT crate have nothing in common with.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

/// One token to mint: algorithm, key (a secret, or a private key PEM), claims.
pub struct Mint {
    pub alg: &'static str,
    pub key: String,
    pub claims: serde_json::Value,
    /// Sign HS256 with the key's text as the secret (the RS/HS confusion attack).
    pub hmac_with_pem: bool,
}

impl Mint {
    pub fn new(alg: &'static str, key: &str, claims: serde_json::Value) -> Mint {
        Mint {
            alg,
            key: key.to_string(),
            claims,
            hmac_with_pem: false,
        }
    }
}

fn python() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/py/bin/python")
}

/// Mints every token in one run of PyJWT.
pub fn mint(tokens: &[Mint]) -> Vec<String> {
    let py = python();
    assert!(
        py.is_file(),
        "PyJWT is not installed at {}: run scripts/install-test-servers.sh (scripts/test.sh does)",
        py.display()
    );
    let script =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/python/mint_jwt.py");
    let input: Vec<serde_json::Value> = tokens
        .iter()
        .map(|t| {
            serde_json::json!({"alg": t.alg, "key": t.key, "claims": t.claims, "hmac_with_pem": t.hmac_with_pem})
        })
        .collect();
    let mut child = Command::new(py)
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run PyJWT");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(serde_json::Value::Array(input).to_string().as_bytes())
        .expect("write to PyJWT");
    let out = child.wait_with_output().expect("PyJWT output");
    assert!(
        out.status.success(),
        "PyJWT failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("PyJWT's tokens")
}
