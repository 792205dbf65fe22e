//! The access log: one JSON line per request — time, method, path (credentials in the query
//! redacted), status, duration, upstream time, bytes, consumer, api endpoint, upstream address,
//! request id. Lines are handed to a writer thread through a bounded channel; when the writer
//! falls behind a line is dropped and counted, the request never waits. Headers (and so
//! `Authorization`) are never logged.

use std::io::Write;
use std::path::PathBuf;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

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

    /// As an error names it: the file's path, or standard output.
    pub fn describe(&self) -> String {
        match self {
            Target::Stdout => "on standard output".into(),
            Target::File(p) => p.display().to_string(),
        }
    }
}

const QUEUE: usize = 65_536;

pub struct AccessLog {
    tx: SyncSender<String>,
}

static LOG: OnceLock<AccessLog> = OnceLock::new();

/// How often the file's path is checked for a file moved or removed (rotated).
const CHECK_EVERY: Duration = Duration::from_secs(1);

/// Starts the writer; later calls to [`write()`] go to it.
pub fn start(target: Target) -> std::io::Result<()> {
    let mut out = match target {
        Target::Stdout => Out::Stdout(std::io::BufWriter::with_capacity(
            64 * 1024,
            std::io::stdout(),
        )),
        Target::File(path) => Out::File(LogFile::open(path)?),
    };
    let (tx, rx) = sync_channel::<String>(QUEUE);
    std::thread::Builder::new()
        .name("tollgate-access-log".into())
        .spawn(move || writer(&mut out, rx))?;
    let _ = LOG.set(AccessLog { tx });
    Ok(())
}

/// Where the writer writes.
enum Out {
    Stdout(std::io::BufWriter<std::io::Stdout>),
    File(LogFile),
}

impl Out {
    fn buf(&mut self) -> &mut dyn Write {
        match self {
            Out::Stdout(b) => b,
            Out::File(f) => &mut f.buf,
        }
    }
}

/// The log file, reopened at its path when the file there is no longer the one written (it
/// was moved or removed, as `logrotate` does): lines go to the new file from then on, and the
/// old one can be compressed or removed with nothing holding it open.
struct LogFile {
    path: PathBuf,
    buf: std::io::BufWriter<std::fs::File>,
    /// The open file's device and inode.
    id: (u64, u64),
    checked: Instant,
}

impl LogFile {
    fn open(path: PathBuf) -> std::io::Result<LogFile> {
        use std::os::unix::fs::MetadataExt;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)?;
        let meta = file.metadata()?;
        Ok(LogFile {
            path,
            buf: std::io::BufWriter::with_capacity(64 * 1024, file),
            id: (meta.dev(), meta.ino()),
            checked: Instant::now(),
        })
    }

    /// Reopens the file at the path when it is not the one open (at most every
    /// [`CHECK_EVERY`]). One that cannot be opened is tried again at the next check, the lines
    /// going on to the old file meanwhile.
    fn follow_path(&mut self) {
        use std::os::unix::fs::MetadataExt;
        if self.checked.elapsed() < CHECK_EVERY {
            return;
        }
        self.checked = Instant::now();
        let same = std::fs::metadata(&self.path).is_ok_and(|m| (m.dev(), m.ino()) == self.id);
        if same {
            return;
        }
        let _ = self.buf.flush();
        match LogFile::open(self.path.clone()) {
            Ok(new) => {
                log::info!(
                    "access log: {} reopened (the file there was moved or removed)",
                    self.path.display()
                );
                *self = new;
            }
            Err(e) => log::warn!(
                "access log: {} cannot be reopened: {e}",
                self.path.display()
            ),
        }
    }
}

fn writer(out: &mut Out, rx: Receiver<String>) {
    // Whether the last write failed: one line when writing stops working, one when it works
    // again (a full disk, a closed pipe), not one per line.
    let mut failing = false;
    loop {
        let received = rx.recv_timeout(Duration::from_millis(200));
        if let Out::File(f) = out {
            f.follow_path();
        }
        match received {
            Ok(line) => {
                let buf = out.buf();
                let mut written = buf
                    .write_all(line.as_bytes())
                    .and_then(|()| buf.write_all(b"\n"));
                // Take what else is queued before flushing.
                while let Ok(more) = rx.try_recv() {
                    written = written
                        .and(buf.write_all(more.as_bytes()))
                        .and(buf.write_all(b"\n"));
                }
                match written.and(buf.flush()) {
                    Err(e) if !failing => {
                        failing = true;
                        log::warn!("access log: lines cannot be written: {e}");
                    }
                    Ok(()) if failing => {
                        failing = false;
                        log::info!("access log: written again");
                    }
                    _ => {}
                }
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
            let dropped = &crate::metrics::metrics().access_log_dropped;
            if dropped.get() == 0 {
                log::warn!(
                    "access log: its writer falls behind; lines are dropped (counted in tollgate_access_log_dropped_total)"
                );
            }
            dropped.inc();
        }
    }
}

/// The path with the values of `secret_params` in its query replaced by `REDACTED`: those of
/// a parameter whose name begins with one of them too (`jwt[]`, `apiKey%20`: a client's
/// near miss carries a real token all the same, refused or not), and of a `;name=value`
/// parameter of a path segment so named.
pub fn redact(url: &str, secret_params: &[String]) -> String {
    let (path, query) = match url.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (url, None),
    };
    let mut out = String::with_capacity(url.len());
    for (i, piece) in path.split(';').enumerate() {
        if i > 0 {
            out.push(';');
            // The parameter runs to the segment's end.
            let (param, rest) = piece.split_at(piece.find('/').unwrap_or(piece.len()));
            push_redacted(&mut out, param, secret_params);
            out.push_str(rest);
        } else {
            out.push_str(piece);
        }
    }
    if let Some(query) = query {
        out.push('?');
        for (i, pair) in query.split('&').enumerate() {
            if i > 0 {
                out.push('&');
            }
            push_redacted(&mut out, pair, secret_params);
        }
    }
    out
}

/// `pair` as it is; `name=REDACTED` when its name is one of `secret_params`; `jwt…=REDACTED`
/// (the parameter's name as configured) when its name only begins with one — the rest of such
/// a name may hold the token itself (`apiKey%3D<token>`, `apiKey:<token>`).
fn push_redacted(out: &mut String, pair: &str, secret_params: &[String]) {
    let name = pair.split('=').next().unwrap_or("");
    let decoded = crate::cache::key::decoded(name);
    let begins = |s: &&String| {
        decoded
            .as_bytes()
            .get(..s.len())
            .is_some_and(|p| p.eq_ignore_ascii_case(s.as_bytes()))
    };
    match secret_params.iter().find(begins) {
        Some(s) if s.len() == decoded.len() => {
            out.push_str(name);
            out.push_str("=REDACTED");
        }
        Some(s) => {
            out.push_str(s);
            out.push_str("…=REDACTED");
        }
        None => out.push_str(pair),
    }
}

/// A path with its segments' `;name=value` parameters that carry credentials redacted (see
/// [`redact`]).
pub fn redact_path<'a>(path: &'a str, secret_params: &[String]) -> std::borrow::Cow<'a, str> {
    if !path.contains(';') {
        return std::borrow::Cow::Borrowed(path);
    }
    std::borrow::Cow::Owned(redact(path, secret_params))
}

/// A request as a log line names it: its method and target, the query's credentials
/// redacted.
pub fn summary(head: &pingora_http::RequestHeader, gw: &crate::gateway::Gateway) -> String {
    let url = head
        .uri
        .path_and_query()
        .map_or_else(|| head.uri.path(), |p| p.as_str());
    format!("{} {}", head.method, redact(url, &gw.secret_query_params))
}

/// A query without its pairs of `secret_params` (`None` when nothing is left).
pub fn without_secrets(query: &str, secret_params: &[String]) -> Option<String> {
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| secret_name(pair, secret_params).is_none())
        .collect();
    (!kept.is_empty()).then(|| kept.join("&"))
}

/// The name of a query pair, when it is one of `secret_params` (compared decoded, as the
/// policies read it: `%6Awt` is `jwt`).
pub(crate) fn secret_name<'a>(pair: &'a str, secret_params: &[String]) -> Option<&'a str> {
    let name = pair.split('=').next().unwrap_or("");
    let decoded = crate::cache::key::decoded(name);
    secret_params
        .iter()
        .any(|s| s.eq_ignore_ascii_case(&decoded))
        .then_some(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_credentials_are_left_out() {
        let secrets = vec!["jwt".to_string(), "apiKey".to_string()];
        let kept = |q| without_secrets(q, &secrets);
        assert_eq!(
            kept("versionId=3&%6Awt=t&APIKEY=k"),
            Some("versionId=3".into())
        );
        assert_eq!(kept("jwt=t"), None);
    }

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
        // Near misses carry a token all the same.
        assert_eq!(
            redact("/w?jwt[]=t&jwt%5B%5D=t&jwt.=t&jwt%00=t&apiKey%20=k&jwts=t&j=1", &secrets),
            "/w?jwt…=REDACTED&jwt…=REDACTED&jwt…=REDACTED&jwt…=REDACTED&apiKey…=REDACTED&jwt…=REDACTED&j=1"
        );
        // The token within the name (a `=` encoded twice, a `:` for the `=`).
        assert_eq!(
            redact("/w?apiKey%3DK1:S1&apiKey:K2:S2&%6Awt=t", &secrets),
            "/w?apiKey…=REDACTED&apiKey…=REDACTED&%6Awt=REDACTED"
        );
        assert_eq!(
            redact("/w;apiKey=k/1;v=2;JWT=t;apiKey%3Dk?x=1", &secrets),
            "/w;apiKey=REDACTED/1;v=2;JWT=REDACTED;apiKey…=REDACTED?x=1"
        );
        assert_eq!(redact_path("/w;jwt=t/x", &secrets), "/w;jwt=REDACTED/x");
        assert_eq!(redact("/w;x/y?", &secrets), "/w;x/y?");
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
