//! moto's server (installed by scripts/install-test-servers.sh into target/py) as a real
//! S3-compatible server that checks SigV4 signatures: the first calls (unauthenticated) create
//! an IAM user, its access key and an allow-all policy; from then on every request must be
//! signed with that key, and a wrong secret is `403 SignatureDoesNotMatch`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use aws_sigv4::http_request::{
    sign, PayloadChecksumKind, SignableBody, SignableRequest, SigningSettings,
};

use super::gateway::free_port;

pub struct S3Server {
    pub port: u16,
    pub access_key: String,
    pub secret_key: String,
    child: Child,
}

fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/py/bin/moto_server")
}

fn raw(port: u16, request: &[u8]) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.write_all(request).expect("send");
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

fn xml_value(xml: &str, tag: &str) -> String {
    let open = format!("<{tag}>");
    let start = xml
        .find(&open)
        .unwrap_or_else(|| panic!("no <{tag}> in {xml}"))
        + open.len();
    let end = xml[start..]
        .find('<')
        .map(|e| start + e)
        .unwrap_or(xml.len());
    xml[start..end].to_string()
}

impl S3Server {
    /// Starts the server with an IAM user that may do everything, and the given buckets.
    pub fn start(buckets: &[&str]) -> S3Server {
        let bin = binary();
        assert!(bin.is_file(), "moto is not installed at {}: run scripts/install-test-servers.sh (scripts/test.sh does)", bin.display());
        // A port another test's server took between `free_port` and moto's bind makes this one
        // exit while the other answers: started again on another port.
        let (port, child) = (0..5)
            .find_map(|_| {
                let port = free_port();
                let mut child = Command::new(&bin)
                    .args(["-H", "127.0.0.1", "-p", &port.to_string()])
                    .env("INITIAL_NO_AUTH_ACTION_COUNT", "3")
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("moto_server");
                let start = Instant::now();
                loop {
                    if child.try_wait().ok().flatten().is_some() {
                        return None;
                    }
                    if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                        // Ours, still running, answers.
                        return child
                            .try_wait()
                            .ok()
                            .flatten()
                            .is_none()
                            .then_some((port, child));
                    }
                    assert!(
                        start.elapsed() < Duration::from_secs(30),
                        "moto did not start"
                    );
                    std::thread::sleep(Duration::from_millis(50));
                }
            })
            .expect("moto started on a free port");
        // The three unauthenticated calls: IAM is chosen by the signature's scope.
        let iam = |query: &str| {
            raw(
                port,
                format!("POST /?{query}&Version=2010-05-08 HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: AWS4-HMAC-SHA256 Credential=setup/20260101/us-east-1/iam/aws4_request, SignedHeaders=host, Signature=0\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").as_bytes(),
            )
        };
        iam("Action=CreateUser&UserName=tollgate");
        let key = iam("Action=CreateAccessKey&UserName=tollgate");
        let policy = percent_encoding::utf8_percent_encode(
            r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"*","Resource":"*"}]}"#,
            percent_encoding::NON_ALPHANUMERIC,
        );
        iam(&format!(
            "Action=PutUserPolicy&UserName=tollgate&PolicyName=all&PolicyDocument={policy}"
        ));
        let server = S3Server {
            port,
            access_key: xml_value(&key, "AccessKeyId"),
            secret_key: xml_value(&key, "SecretAccessKey"),
            child,
        };
        for b in buckets {
            let answer = server.signed("PUT", &format!("/{b}"), "", &[]);
            assert!(
                answer.starts_with("HTTP/1.1 200"),
                "create bucket {b}: {answer}"
            );
        }
        server
    }

    /// Puts an object; panics unless S3 answers 200.
    pub fn put(&self, bucket: &str, key: &str, content_type: &str, body: &[u8]) {
        let answer = self.signed("PUT", &format!("/{bucket}/{key}"), content_type, body);
        assert!(
            answer.starts_with("HTTP/1.1 200"),
            "PUT {bucket}/{key}: {answer}"
        );
    }

    fn signed(&self, method: &str, path: &str, content_type: &str, body: &[u8]) -> String {
        let host = format!("127.0.0.1:{}", self.port);
        let url = format!("http://{host}{path}");
        let identity = aws_credential_types::Credentials::new(
            &self.access_key,
            &self.secret_key,
            None,
            None,
            "test",
        )
        .into();
        let mut settings = SigningSettings::default();
        settings.payload_checksum_kind = PayloadChecksumKind::XAmzSha256;
        // As S3 clients sign: the path as sent (keys with `%XX` or `//` are their own).
        settings.percent_encoding_mode = aws_sigv4::http_request::PercentEncodingMode::Single;
        settings.uri_path_normalization_mode =
            aws_sigv4::http_request::UriPathNormalizationMode::Disabled;
        let params = aws_sigv4::sign::v4::SigningParams::builder()
            .identity(&identity)
            .region("us-east-1")
            .name("s3")
            .time(SystemTime::now())
            .settings(settings)
            .build()
            .expect("params")
            .into();
        let length = body.len().to_string();
        let mut headers = vec![("host", host.as_str()), ("content-length", length.as_str())];
        if !content_type.is_empty() {
            headers.push(("content-type", content_type));
        }
        let signable = SignableRequest::new(
            method,
            url.as_str(),
            headers.iter().copied(),
            SignableBody::Bytes(body),
        )
        .expect("signable");
        let (instructions, _) = sign(signable, &params).expect("sign").into_parts();
        let (signed, _) = instructions.into_parts();
        let mut head = format!("{method} {path} HTTP/1.1\r\n");
        for (k, v) in &headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        for h in &signed {
            head.push_str(&format!("{}: {}\r\n", h.name(), h.value()));
        }
        head.push_str("Connection: close\r\n\r\n");
        let mut request = head.into_bytes();
        request.extend_from_slice(body);
        raw(self.port, &request)
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
