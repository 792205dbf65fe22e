//! What the start tries before Pingora takes over, where Pingora would panic (a thread it
//! cannot start, a socket path it cannot bind) or an upgrade would leave nothing serving.

use std::path::Path;

use anyhow::{bail, Context};

use super::ServeOptions;

/// Descriptors each worker thread takes (its runtimes' for the gateway and the Admin API:
/// their polls and wake-ups, measured), and those the process takes whatever the threads.
const FDS_PER_THREAD: u64 = 8;
const FDS_BASE: u64 = 64;

/// Fails with the open-files limit, raised as far as it goes, when it cannot hold the worker
/// threads' runtimes and some connections: Pingora panicked building them ("Too many open
/// files"), or after the start said it was listening.
pub(super) fn room_for_threads(threads: usize) -> anyhow::Result<()> {
    let Some(fds) = crate::listener::raise_fd_limit() else {
        return Ok(());
    };
    let needed = FDS_BASE + FDS_PER_THREAD * threads as u64;
    if fds < needed {
        bail!(
            "the open-files limit ({fds}) is too low for {threads} worker threads: they need at least {needed} (raise it with `ulimit -n` or systemd's LimitNOFILE, or lower --threads)"
        );
    }
    Ok(())
}

/// The upgrade socket's path as Pingora uses it: a new process (`-u`) removes what is there
/// and binds a socket, an old one connects to it when it hands over. A path it cannot bind
/// made it panic, and a file of the operator's there was removed.
pub(super) fn upgrade_sock_usable(path: &Path) -> anyhow::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::FileTypeExt;
    let shown = path.display();
    // (A socket's path holds 108 bytes with its NUL.)
    if path.as_os_str().len() > 107 {
        bail!("--upgrade-sock {shown}: longer than a socket's path may be (107 bytes)");
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {}
        Ok(_) => bail!(
            "--upgrade-sock {shown}: there is something other than a socket there (an upgrade would remove it)"
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => bail!("--upgrade-sock {shown}: {e}"),
    }
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if !dir.is_dir() {
        bail!(
            "--upgrade-sock {shown}: its directory {} does not exist",
            dir.display()
        );
    }
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .with_context(|| format!("--upgrade-sock {shown}"))?;
    // SAFETY: a NUL-terminated path; `access` only reads it.
    if unsafe { libc::access(c.as_ptr(), libc::W_OK) } != 0 {
        bail!(
            "--upgrade-sock {shown}: no socket can be made in {}: {}",
            dir.display(),
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

/// What an upgrading process could fail at once it has taken the listening sockets — the old
/// process then stops accepting, and nothing serves — is tried before it takes them: the
/// addresses the running process does not listen on (a port changed) are bound, and the tile
/// cache's disk directory is written in. (An old process that did not say where it listens
/// is taken to listen on every address.)
pub(super) fn before_the_sockets(opts: &ServeOptions, listen: &[String]) -> anyhow::Result<()> {
    let held = crate::lifecycle::runfile::find(&opts.config_dirs)
        .map(|r| r.listening)
        .unwrap_or_default();
    if !held.is_empty() {
        let new: Vec<String> = listen
            .iter()
            .filter(|a| !held.contains(a))
            .cloned()
            .collect();
        check_free(&new)?;
    }
    crate::cache::disk_usable(&opts.cache)
}

/// Fails with the address when a port is taken: Pingora would retry for a while and then panic.
pub(super) fn check_free(addrs: &[String]) -> anyhow::Result<()> {
    for addr in addrs {
        std::net::TcpListener::bind(addr.as_str())
            .with_context(|| format!("cannot listen on {addr}"))?;
    }
    Ok(())
}
