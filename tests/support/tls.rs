//! TLS for tests: a self-signed certificate made on the fly, an echo upstream behind TLS, a
//! gateway with an https listener, and a TLS client that does not verify (for that listener).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::thread;

use openssl::asn1::Asn1Time;
use openssl::hash::MessageDigest;
use openssl::pkey::{PKey, Private};
use openssl::rsa::Rsa;
use openssl::ssl::{SslAcceptor, SslConnector, SslMethod, SslVerifyMode};
use openssl::x509::extension::SubjectAlternativeName;
use openssl::x509::{X509NameBuilder, X509};

/// A self-signed certificate for `localhost` and 127.0.0.1, with its key, as PEM.
pub struct SelfSigned {
    pub cert: X509,
    pub key: PKey<Private>,
}

impl SelfSigned {
    pub fn new() -> SelfSigned {
        let key = PKey::from_rsa(Rsa::generate(2048).expect("rsa")).expect("pkey");
        let mut name = X509NameBuilder::new().expect("name");
        name.append_entry_by_text("CN", "localhost").expect("cn");
        let name = name.build();
        let mut b = X509::builder().expect("x509");
        b.set_version(2).expect("version");
        b.set_subject_name(&name).expect("subject");
        b.set_issuer_name(&name).expect("issuer");
        b.set_pubkey(&key).expect("pubkey");
        b.set_not_before(&Asn1Time::days_from_now(0).expect("time"))
            .expect("nb");
        b.set_not_after(&Asn1Time::days_from_now(2).expect("time"))
            .expect("na");
        let san = SubjectAlternativeName::new()
            .dns("localhost")
            .ip("127.0.0.1")
            .build(&b.x509v3_context(None, None))
            .expect("san");
        b.append_extension(san).expect("ext");
        b.sign(&key, MessageDigest::sha256()).expect("sign");
        SelfSigned {
            cert: b.build(),
            key,
        }
    }

    pub fn cert_pem(&self) -> String {
        String::from_utf8(self.cert.to_pem().expect("pem")).expect("utf8")
    }

    pub fn key_pem(&self) -> String {
        String::from_utf8(self.key.private_key_to_pem_pkcs8().expect("pem")).expect("utf8")
    }
}

/// The echo upstream behind TLS with a self-signed certificate.
pub struct TlsEchoUpstream {
    pub port: u16,
    pub hits: Arc<AtomicUsize>,
}

impl TlsEchoUpstream {
    pub fn start(name: &str, cert: &SelfSigned) -> TlsEchoUpstream {
        let mut acceptor =
            SslAcceptor::mozilla_intermediate_v5(SslMethod::tls()).expect("acceptor");
        acceptor.set_private_key(&cert.key).expect("key");
        acceptor.set_certificate(&cert.cert).expect("cert");
        let acceptor = Arc::new(acceptor.build());
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let hits = Arc::new(AtomicUsize::new(0));
        let (h, name) = (hits.clone(), name.to_string());
        thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let (acceptor, h, name) = (acceptor.clone(), h.clone(), name.clone());
                thread::spawn(move || {
                    if let Ok(tls) = acceptor.accept(conn) {
                        super::echo::serve_stream(tls, &name, &h);
                    }
                });
            }
        });
        TlsEchoUpstream { port, hits }
    }
}

/// Sends a request over TLS without verifying the server, returns the raw response text.
pub fn tls_request(port: u16, raw: &str) -> String {
    let mut connector = SslConnector::builder(SslMethod::tls()).expect("connector");
    connector.set_verify(SslVerifyMode::NONE);
    let tcp = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    let mut tls = connector
        .build()
        .connect("localhost", tcp)
        .expect("handshake");
    tls.write_all(raw.as_bytes()).expect("send");
    let mut out = Vec::new();
    let _ = tls.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// A gateway whose `https` listener serves a fresh self-signed certificate (embedded store);
/// `rest` is the rest of its gateway config (endpoints, policies, pipelines).
pub fn https_gateway(rest: &str) -> (super::ConfigDir, super::GatewayProcess) {
    let dir = https_config(super::ConfigDir::empty(), rest);
    let gw = super::GatewayProcess::start(&dir);
    (dir, gw)
}

/// Writes into `dir` the config of [`https_gateway`], its certificate and key named by `dir`'s
/// path as it is given (relative or not).
pub fn https_config(dir: super::ConfigDir, rest: &str) -> super::ConfigDir {
    let cert = SelfSigned::new();
    dir.write("tls.crt", &cert.cert_pem());
    dir.write("tls.key", &cert.key_pem());
    dir.write("system.config.yml", "db: {redis: {emulate: true}}\n");
    dir.write(
        "gateway.config.yml",
        &format!(
            "https:\n  port: ${{PORT}}\n  tls:\n    default:\n      key: '{key}'\n      cert: '{crt}'\n{rest}",
            key = dir.file("tls.key"),
            crt = dir.file("tls.crt"),
        ),
    );
    dir
}
