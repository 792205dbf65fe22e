//! The signals the server acts on: SIGTERM drains, SIGINT stops, SIGQUIT hands the listening
//! sockets to an upgrading process, SIGHUP reloads the config.

use std::sync::Arc;
use std::time::{Duration, Instant};

use pingora_core::server::{ShutdownSignal, ShutdownSignalWatch};

use super::upgrade_sock::{at_path, AtPath};

/// Pingora's signals (SIGTERM drains, SIGINT stops, SIGQUIT hands the sockets to an upgrading
/// process) and SIGHUP, which reloads the config.
pub(super) struct Signals {
    pub(super) lifecycle: Arc<crate::lifecycle::Lifecycle>,
    /// The signals taken before the server ran (one that came meanwhile is waiting in them).
    pub(super) early: std::sync::Mutex<Option<Taken>>,
    /// Where an upgrading process waits for the listening sockets.
    pub(super) upgrade_sock: std::path::PathBuf,
    /// Offered to the upgrading process with the sockets.
    pub(super) consumers: Arc<crate::consumers::cache::ConsumerCache>,
}

/// How long a SIGQUIT waits for an upgrading process to wait for the sockets (one that reads
/// a large config first, or is started a moment after the signal) before it is dropped.
const UPGRADE_WAIT: Duration = Duration::from_secs(60);

/// Whether an upgrading process of this process's user waits for the sockets at `path` (see
/// [`at_path`]). A file of another user's there is said once per SIGQUIT, and not sent to: in
/// a directory every user may write in (`/tmp`), anyone could put a socket there first and be
/// handed the gateway's listening sockets — its clients, their credentials with them.
fn upgrade_offered(path: &std::path::Path, said: &mut bool) -> bool {
    match at_path(path) {
        AtPath::Waiting => true,
        AtPath::OtherUser(uid) => {
            if !std::mem::replace(said, true) {
                log::error!(
                    "SIGQUIT: the socket at {} is another user's (uid {uid}), not this gateway's: the listening sockets are not handed to it (give --upgrade-sock a directory only the gateway's user writes in)",
                    path.display()
                );
            }
            false
        }
        _ => false,
    }
}

/// The signals the server acts on besides SIGINT, each a stream from the moment it was made.
pub(super) struct Taken {
    quit: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Taken {
    /// `hup`: SIGHUP's stream when it was taken before.
    pub(super) fn now(hup: Option<tokio::signal::unix::Signal>) -> std::io::Result<Taken> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Taken {
            quit: signal(SignalKind::quit())?,
            term: signal(SignalKind::terminate())?,
            hup: match hup {
                Some(hup) => hup,
                None => signal(SignalKind::hangup())?,
            },
        })
    }
}

impl Signals {
    /// The upgrade begins: the consumer cache is offered (before the sockets go, so that the
    /// new process finds it as soon as it has them).
    fn upgrade(&self) -> ShutdownSignal {
        self.consumers.offer_to_upgrade(&self.upgrade_sock);
        ShutdownSignal::GracefulUpgrade
    }
}

#[async_trait::async_trait]
impl ShutdownSignalWatch for Signals {
    async fn recv(&self) -> ShutdownSignal {
        let early = self.early.lock().unwrap_or_else(|p| p.into_inner()).take();
        let taken = early.map_or_else(|| Taken::now(None), Ok);
        let int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt());
        let (
            Ok(Taken {
                mut quit,
                mut term,
                mut hup,
            }),
            Ok(mut int),
        ) = (taken, int)
        else {
            log::error!("cannot install the signal handlers; SIGTERM and SIGINT stop at once");
            return std::future::pending().await;
        };
        // Since when a SIGQUIT waits for an upgrading process: the sockets are handed over only
        // to one that waits for them (handed to none, Pingora's server ends this process all
        // the same, and nothing is left serving).
        let mut quit_since: Option<Instant> = None;
        let mut said = false;
        let sock = self.upgrade_sock.as_path();
        loop {
            tokio::select! {
                _ = quit.recv() => {
                    said = false;
                    if upgrade_offered(sock, &mut said) {
                        return self.upgrade();
                    }
                    if quit_since.is_none() {
                        log::info!(
                            "SIGQUIT: waiting for the upgrading process to take the sockets at {} (at most {}s)",
                            sock.display(),
                            UPGRADE_WAIT.as_secs()
                        );
                    }
                    quit_since = Some(Instant::now());
                }
                () = tokio::time::sleep(Duration::from_millis(50)), if quit_since.is_some() => {
                    if upgrade_offered(sock, &mut said) {
                        return self.upgrade();
                    }
                    if quit_since.is_some_and(|t| t.elapsed() >= UPGRADE_WAIT) {
                        log::error!(
                            "SIGQUIT: no upgrading process waited for the sockets at {} within {}s; this process serves on",
                            sock.display(),
                            UPGRADE_WAIT.as_secs()
                        );
                        quit_since = None;
                    }
                }
                _ = term.recv() => {
                    crate::listener::stopping_now();
                    return ShutdownSignal::GracefulTerminate;
                }
                _ = int.recv() => return ShutdownSignal::FastShutdown,
                _ = hup.recv() => {
                    let lifecycle = self.lifecycle.clone();
                    // Off the signal loop, and not waited on: a reload reads files, and a
                    // signal that comes meanwhile (a SIGQUIT of an upgrade, a SIGINT) is acted
                    // on at once. Reloads take turns.
                    drop(tokio::task::spawn_blocking(move || {
                        lifecycle.reload(crate::lifecycle::Trigger::Signal)
                    }));
                }
            }
        }
    }
}
