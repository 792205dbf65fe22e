//! The access log: one JSON line per request — time, method, path (credentials in the query
//! redacted), status, duration, upstream time, bytes, consumer, api endpoint, upstream address,
//! request id. Lines are handed to a writer thread through a bounded channel; when the writer
//! falls behind a line is dropped and counted, the request never waits. Headers (and so
//! `Authorization`) are never logged.

use std::io::Write;
use std::path::PathBuf;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::OnceLock;
use std::time::Duration;

/// Where the lines go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    Stdout,
    File(PathBuf),
}

impl Target {
    /// `off` (or empty) → none; `-` or `stdout` → stdout; anything else is a file path.
    pub fn parse(s: &str) -> Option<Target> {
        match s {
            "" | "off" | "false" | "none" => None,
            "-" | "stdout" => Some(Target::Stdout),
            path => Some(Target::File(PathBuf::from(path))),
        }
    }
}

const QUEUE: usize = 65_536;

pub struct AccessLog {
    tx: SyncSender<String>,
}

static LOG: OnceLock<AccessLog> = OnceLock::new();

/// Starts the writer; later calls to [`write`] go to it.
pub fn start(target: Target) -> std::io::Result<()> {
    let mut out: Box<dyn Write + Send> = match &target {
        Target::Stdout => Box::new(std::io::stdout()),
        Target::File(p) => Box::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)?,
        ),
    };
    let (tx, rx) = sync_channel::<String>(QUEUE);
    std::thread::Builder::new()
        .name("tollgate-access-log".into())
        .spawn(move || writer(&mut out, rx))?;
    let _ = LOG.set(AccessLog { tx });
    Ok(())
}

fn writer(out: &mut Box<dyn Write + Send>, rx: Receiver<String>) {
    let mut buf = std::io::BufWriter::with_capacity(64 * 1024, out);
    loop {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(line) => {
                let _ = buf.write_all(line.as_bytes());
                let _ = buf.write_all(b"\n");
                // Take what else is queued before flushing.
                while let Ok(more) = rx.try_recv() {
                    let _ = buf.write_all(more.as_bytes());
                    let _ = buf.write_all(b"\n");
                }
                let _ = buf.flush();
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(_) => break,
        }
    }
}

/// Whether an access log is being written.
pub fn enabled() -> bool {
    LOG.get().is_some()
}

/// Queues a line; drops it (and counts the drop) rather than wait.
pub fn write(line: String) {
    if let Some(log) = LOG.get() {
        if let Err(TrySendError::Full(_)) = log.tx.try_send(line) {
            crate::metrics::metrics().access_log_dropped.inc();
        }
    }
}

/// The path with the values of `secret_params` in its query replaced by `REDACTED`.
pub fn redact(url: &str, secret_params: &[String]) -> String {
    let Some((path, query)) = url.split_once('?') else {
        return url.to_string();
    };
    let parts: Vec<String> = query
        .split('&')
        .map(|pair| {
            let name = pair.split('=').next().unwrap_or("");
            // Compared decoded, as the policies read it (`%6Awt` is `jwt`).
            let decoded = crate::cache::key::decoded(name);
            if secret_params
                .iter()
                .any(|s| s.eq_ignore_ascii_case(&decoded))
            {
                format!("{name}=REDACTED")
            } else {
                pair.to_string()
            }
        })
        .collect();
    format!("{path}?{}", parts.join("&"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_credentials_are_redacted() {
        let secrets = vec!["jwt".to_string(), "apiKey".to_string()];
        assert_eq!(
            redact("/wmts/1?jwt=abc.def&x=1", &secrets),
            "/wmts/1?jwt=REDACTED&x=1"
        );
        assert_eq!(redact("/k2?APIKEY=a:b", &secrets), "/k2?APIKEY=REDACTED");
        assert_eq!(
            redact("/w?%6Awt=abc&api%4Bey=k", &secrets),
            "/w?%6Awt=REDACTED&api%4Bey=REDACTED"
        );
        assert_eq!(redact("/plain", &secrets), "/plain");
    }

    #[test]
    fn targets() {
        assert_eq!(Target::parse("off"), None);
        assert_eq!(Target::parse("-"), Some(Target::Stdout));
        assert_eq!(
            Target::parse("/var/log/x"),
            Some(Target::File(PathBuf::from("/var/log/x")))
        );
    }
}
