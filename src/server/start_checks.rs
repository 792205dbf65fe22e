//! What the start tries before Pingora takes over, where Pingora would panic (a thread it
//! cannot start, a socket path it cannot bind) or an upgrade would leave nothing serving.

use std::path::Path;

use anyhow::{bail, Context};

use super::upgrade_sock::AtPath;
use super::ServeOptions;

/// Descriptors each worker thread takes (its runtimes' for the gateway and the Admin API:
/// their polls and wake-ups, measured), and those the process takes whatever the threads.
const FDS_PER_THREAD: u64 = 8;
const FDS_BASE: u64 = 64;

/// The worker threads the open-files limit, raised as far as it goes, holds with some
/// connections: Pingora panicked building runtimes it could not ("Too many open files"), or
/// after the start said it was listening. Threads asked for (`given`) that it cannot hold are
/// refused; the default (one per core) is lowered to what it holds, with a warning.
pub(super) fn room_for_threads(
    threads: usize,
    given: bool,
    fds: Option<u64>,
) -> anyhow::Result<usize> {
    let Some(fds) = fds else {
        return Ok(threads);
    };
    let needed = FDS_BASE + FDS_PER_THREAD * threads as u64;
    if fds >= needed {
        return Ok(threads);
    }
    let held = (fds.saturating_sub(FDS_BASE) / FDS_PER_THREAD) as usize;
    if given || held == 0 {
        bail!(
            "the open-files limit ({fds}) is too low for {threads} worker threads: they need at least {needed} (raise it with `ulimit -n` or systemd's LimitNOFILE, or lower --threads)"
        );
    }
    log::warn!(
        "the open-files limit ({fds}) holds {held} worker threads, not one per core ({threads}): {held} run (raise it with `ulimit -n` or systemd's LimitNOFILE)"
    );
    Ok(held)
}

/// The memory this process may use: the machine's (`MemTotal`), or its control group's limit
/// where that is lower (a container's); `None` when neither can be read.
pub(super) fn memory_limit() -> Option<u64> {
    let total = std::fs::read_to_string("/proc/meminfo").ok().and_then(|m| {
        m.lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kib| kib << 10)
    });
    let group = std::fs::read_to_string("/proc/self/cgroup")
        .ok()
        .and_then(|c| group_limit(&c, std::path::Path::new("/sys/fs/cgroup")));
    match (total, group) {
        (Some(t), Some(g)) => Some(t.min(g)),
        (t, g) => t.or(g),
    }
}

/// The lowest memory limit of the process's control group and those above it, `cgroup` being
/// `/proc/self/cgroup` and `root` where the groups are mounted: v2's `memory.max` (`max`: none),
/// else v1's `memory.limit_in_bytes` (a systemd unit's `MemoryMax=`, a container's limit).
fn group_limit(cgroup: &str, root: &Path) -> Option<u64> {
    let (base, file, path) = cgroup.lines().find_map(|l| {
        let mut parts = l.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        if controllers.is_empty() {
            Some((root.to_path_buf(), "memory.max", path))
        } else if controllers.split(',').any(|c| c == "memory") {
            Some((root.join("memory"), "memory.limit_in_bytes", path))
        } else {
            None
        }
    })?;
    let mut dir = base.join(path.trim_start_matches('/'));
    let mut lowest: Option<u64> = None;
    loop {
        if let Some(limit) = std::fs::read_to_string(dir.join(file))
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
        {
            lowest = Some(lowest.map_or(limit, |l| l.min(limit)));
        }
        if dir == base || !dir.pop() || !dir.starts_with(&base) {
            return lowest;
        }
    }
}

/// A memory tier larger than the memory the process may use (`limit`) is said at start: it
/// fills as tiles come, and the process is killed for want of memory once it passes it (an
/// operator's `--cache-memory 1T` started without a word).
pub(super) fn cache_memory_fits(memory: u64, limit: Option<u64>) -> bool {
    match limit {
        Some(limit) if memory > limit => {
            log::warn!(
                "--cache-memory ({} MiB) is more than the memory this process may use ({} MiB, \
                 the machine's or its control group's): as the tile cache fills, the process \
                 may be killed for want of memory",
                memory >> 20,
                limit >> 20
            );
            false
        }
        _ => true,
    }
}

/// The upgrade socket's path as Pingora uses it: a new process (`-u`) removes what is there
/// and binds a socket, an old one connects to it when it hands over. A path it cannot bind
/// made an upgrading process panic, and a file of the operator's there was removed: refused
/// then; a process that is not upgrading only warns (it makes no socket: a read-only file
/// system with no upgrades is no reason not to start).
pub(super) fn upgrade_sock_usable(path: &Path, upgrading: bool) -> anyhow::Result<()> {
    // Another upgrading process waits there (the running gateway has not sent it the sockets
    // yet, or it has them and has not read them yet): this one would take the path from
    // under it, and the first, done, would remove this one's socket file — the old process
    // then sent the sockets nowhere and ended, and nothing served. One upgrade at a time.
    if upgrading && super::upgrade_sock::at_path(path) == AtPath::Waiting {
        anyhow::bail!(
            "--upgrade-sock {}: another upgrading process waits for the listening sockets there: one upgrade at a time (start this one once that one serves, or has given up)",
            path.display()
        );
    }
    match unusable(path) {
        Some(why) if upgrading => Err(anyhow::anyhow!("{why}")),
        Some(why) => {
            log::warn!("{why}; an upgrade to a new process (serve -u) would fail");
            Ok(())
        }
        None => Ok(()),
    }
}

/// Why no socket can be made at `path` for an upgrade, if it cannot.
fn unusable(path: &Path) -> Option<String> {
    use std::os::unix::ffi::OsStrExt;
    let shown = path.display();
    // (A socket's path holds 108 bytes with its NUL.)
    if path.as_os_str().len() > 107 {
        return Some(format!(
            "--upgrade-sock {shown}: longer than a socket's path may be (107 bytes)"
        ));
    }
    match super::upgrade_sock::at_path(path) {
        AtPath::Nothing | AtPath::Left => {}
        // (For an upgrade: refused by the caller.)
        AtPath::Waiting => {}
        AtPath::NotSocket => {
            return Some(format!(
                "--upgrade-sock {shown}: there is something other than a socket there (an upgrade would remove it)"
            ))
        }
        AtPath::OtherUser(uid) => {
            return Some(format!(
                "--upgrade-sock {shown}: the file there is another user's (uid {uid}): this process cannot put its socket in its place, and the running gateway does not hand its sockets to it (give a directory only the gateway's user writes in)"
            ))
        }
        AtPath::Unreadable(e) => return Some(format!("--upgrade-sock {shown}: {e}")),
    }
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if !dir.is_dir() {
        return Some(format!(
            "--upgrade-sock {shown}: its directory {} does not exist",
            dir.display()
        ));
    }
    let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else {
        return Some(format!("--upgrade-sock {shown}: a NUL in the path"));
    };
    // SAFETY: a NUL-terminated path; `access` only reads it.
    if unsafe { libc::access(c.as_ptr(), libc::W_OK) } != 0 {
        return Some(format!(
            "--upgrade-sock {shown}: no socket can be made in {}: {}",
            dir.display(),
            std::io::Error::last_os_error()
        ));
    }
    None
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The process's own group's limit is read, and those of the groups above it (a systemd
    /// unit's `MemoryMax=` sits on a parent): the lowest wins; `max` is none.
    #[test]
    fn the_lowest_limit_of_the_process_group_and_its_parents() {
        let root = std::env::temp_dir().join(format!("tollgate-cgroup-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let write = |rel: &str, v: &str| {
            let f = root.join(rel);
            std::fs::create_dir_all(f.parent().unwrap()).unwrap();
            std::fs::write(f, v).unwrap();
        };
        write("memory.max", "100");
        write("svc/memory.max", "5000\n");
        write("svc/inner/memory.max", "max\n");
        assert_eq!(group_limit("0::/svc/inner\n", &root), Some(100));
        std::fs::remove_file(root.join("memory.max")).unwrap();
        assert_eq!(group_limit("0::/svc/inner\n", &root), Some(5000));
        assert_eq!(group_limit("0::/elsewhere\n", &root), None);
        // v1: the memory controller's own hierarchy.
        write("memory/box/memory.limit_in_bytes", "700");
        let v1 = "9:name=systemd:/\n5:cpu,memory:/box\n0::/\n";
        assert_eq!(group_limit(v1, &root), Some(700));
        let _ = std::fs::remove_dir_all(&root);
    }
}
