//! Where the running gateway answers, for the CLI on the same machine: `tollgate serve` writes
//! its health check's and its Admin API's URLs to a small file named by its config
//! directories (in the system's temporary directory) when it starts, and the health check's
//! path again on every reload. `tollgate healthcheck`, `reload` and the consumer commands ask
//! the gateway that runs, not the config on disk: a config being edited — broken, or with a
//! port change that waits for a restart — does not make the running gateway look dead or
//! send the CLI to another port.
//!
//! The file names the process; a file whose process is gone is not used.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::config::ConfigDirs;

/// What the running gateway published.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Running {
    pub pid: u32,
    /// `scheme://127.0.0.1:port` of the gateway's listener (http first).
    pub gateway: Option<String>,
    /// The health check's path, as the running config has it.
    pub health_path: String,
    /// The Admin API's URL.
    pub admin: Option<String>,
    /// The addresses it listens on (`host:port`, as bound): an upgrading process binds only
    /// the others itself (empty from a process that did not say).
    #[serde(default)]
    pub listening: Vec<String>,
}

impl Running {
    /// The health check's URL.
    pub fn health_url(&self) -> Option<String> {
        self.gateway
            .as_ref()
            .map(|g| format!("{g}{}", self.health_path))
    }
}

/// The URL a client on this machine reaches a listener on `host` (as configured) by: the
/// loopback address for a listener on every address, an IPv6 address in brackets.
pub fn local_url(scheme: &str, host: Option<&str>, port: u16) -> String {
    let host = match host {
        None | Some("") | Some("0.0.0.0") => "127.0.0.1",
        Some("::") | Some("[::]") => "::1",
        Some(h) => h,
    };
    if host.contains(':') && !host.starts_with('[') {
        format!("{scheme}://[{host}]:{port}")
    } else {
        format!("{scheme}://{host}:{port}")
    }
}

/// The file for these config directories.
/// The files for these config directories: named by the directories as given (made absolute,
/// links not followed) and by where they resolve. `serve --config conf` and `healthcheck
/// --config ./conf` find the same file, and so does the CLI on a directory link swapped to
/// another version since the start (`current` → `v2`), whose resolved name changed.
fn paths(dirs: &ConfigDirs) -> Vec<PathBuf> {
    let name = |resolve: bool| -> PathBuf {
        let text: String = dirs
            .dirs()
            .iter()
            .map(|d| {
                let named = if resolve {
                    std::fs::canonicalize(d)
                } else {
                    std::path::absolute(d)
                };
                named.unwrap_or_else(|_| d.clone()).display().to_string()
            })
            .collect::<Vec<_>>()
            .join(":");
        let hash = crate::wire::fnv1a(text.as_bytes());
        std::env::temp_dir().join(format!("tollgate-{hash:016x}.json"))
    };
    let (named, resolved) = (name(false), name(true));
    if named == resolved {
        vec![named]
    } else {
        vec![named, resolved]
    }
}

/// The files this process published, withdrawn when it exits.
static PUBLISHED: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());

/// What the files this process published said before it, where they named another gateway
/// that ran (a second gateway on the same config directories, or the process this one
/// upgrades): put back at this process's exit if that gateway still runs, so the CLI finds it
/// (an upgrade that gave up, a second gateway stopped).
static BEFORE: std::sync::Mutex<Vec<(PathBuf, Running)>> = std::sync::Mutex::new(Vec::new());

/// Publishes where this process answers: a file only its user can read or write (it names
/// the Admin API the CLI sends its token to), made anew and renamed into place.
pub fn publish(dirs: &ConfigDirs, running: &Running) {
    for file in paths(dirs) {
        publish_in(file, running);
    }
}

fn publish_in(file: PathBuf, running: &Running) {
    if running.pid == std::process::id() {
        let mut before = BEFORE.lock().unwrap_or_else(|p| p.into_inner());
        if !before.iter().any(|(f, _)| f == &file) {
            if let Some(other) = read_file(&file).filter(|r| r.pid != running.pid && alive(r.pid)) {
                before.push((file.clone(), other));
            }
        }
    }
    if write_file(&file, running) {
        let mut published = PUBLISHED.lock().unwrap_or_else(|p| p.into_inner());
        if !published.contains(&file) {
            published.push(file);
        }
    }
}

/// Writes `running` into `file`, made anew and renamed into place; said when it cannot be.
fn write_file(file: &std::path::Path, running: &Running) -> bool {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let tmp = file.with_extension(format!("json.{}.{nanos}", std::process::id()));
    let text = serde_json::to_string(running).unwrap_or_default();
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .and_then(|()| std::fs::rename(&tmp, file));
    match written {
        Ok(()) => true,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            log::warn!(
                "cannot say where this gateway answers in {} (the CLI reads its config instead): {e}",
                file.display()
            );
            false
        }
    }
}

/// Removes what this process published (it is exiting), or puts back what a file said before
/// it where that gateway still runs.
pub fn withdraw() {
    let before = std::mem::take(&mut *BEFORE.lock().unwrap_or_else(|p| p.into_inner()));
    for file in std::mem::take(&mut *PUBLISHED.lock().unwrap_or_else(|p| p.into_inner())) {
        if read_file(&file).is_none_or(|r| r.pid != std::process::id()) {
            continue;
        }
        match before.iter().find(|(f, r)| f == &file && alive(r.pid)) {
            Some((_, other)) => {
                write_file(&file, other);
            }
            None => {
                let _ = std::fs::remove_file(&file);
            }
        }
    }
}

/// The health check's path changed with a reload: published again (by the process that wrote
/// the file only).
pub fn health_path_changed(dirs: &ConfigDirs, health_path: &str) {
    let Some(mut running) = read(dirs) else {
        return;
    };
    if running.pid != std::process::id() || running.health_path == health_path {
        return;
    }
    running.health_path = health_path.to_string();
    publish(dirs, &running);
}

/// What the gateway running on these config directories published, if it still runs: a file
/// of this user's (not one another user put there), naming a tollgate process of this user's.
pub fn find(dirs: &ConfigDirs) -> Option<Running> {
    paths(dirs)
        .iter()
        .filter_map(|f| read_file(f))
        .find(|r| alive(r.pid))
}

/// What this process published for these config directories.
fn read(dirs: &ConfigDirs) -> Option<Running> {
    paths(dirs)
        .iter()
        .filter_map(|f| read_file(f))
        .find(|r| r.pid == std::process::id())
}

fn read_file(file: &std::path::Path) -> Option<Running> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::symlink_metadata(file).ok()?;
    if !meta.is_file() || meta.uid() != euid() || meta.mode() & 0o077 != 0 {
        return None;
    }
    let text = std::fs::read_to_string(file).ok()?;
    serde_json::from_str(&text).ok()
}

fn euid() -> u32 {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() }
}

/// Whether a tollgate process of this user's runs with this id (one that exited is reaped
/// or a zombie: not running).
fn alive(pid: u32) -> bool {
    use std::os::unix::fs::MetadataExt;
    let ours = std::fs::metadata(format!("/proc/{pid}")).is_ok_and(|m| m.uid() == euid());
    let tollgate = std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .is_ok_and(|c| c.trim_end().starts_with("tollgate"));
    let running = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            // The state follows the command's closing parenthesis.
            let state = s.rsplit_once(')')?.1.trim_start().chars().next()?;
            Some(state != 'Z' && state != 'X')
        })
        .unwrap_or(false);
    ours && tollgate && running
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn published_found_while_the_process_runs_and_not_after() {
        a_directory_link_swapped_since_the_start_finds_the_gateway();
        a_gateway_that_exits_gives_the_file_back_to_the_one_before();
        let dir =
            std::env::temp_dir().join(format!("tollgate-runfile-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let dirs = ConfigDirs::single(&dir);
        let running = Running {
            pid: std::process::id(),
            gateway: Some("http://127.0.0.1:8080".into()),
            health_path: "/healthcheck".into(),
            admin: Some("http://localhost:9876".into()),
            listening: vec!["0.0.0.0:8080".into()],
        };
        publish(&dirs, &running);
        let found = find(&dirs).expect("found");
        assert_eq!(
            found.health_url().as_deref(),
            Some("http://127.0.0.1:8080/healthcheck")
        );
        health_path_changed(&dirs, "/up");
        assert_eq!(
            find(&dirs).and_then(|r| r.health_url()).as_deref(),
            Some("http://127.0.0.1:8080/up")
        );
        // A process that is gone (a pid no process has) is not found.
        publish(
            &dirs,
            &Running {
                pid: u32::MAX - 1,
                ..running.clone()
            },
        );
        assert!(find(&dirs).is_none());
        // A file others could have written is not read.
        publish(&dirs, &running);
        assert!(find(&dirs).is_some());
        use std::os::unix::fs::PermissionsExt;
        let file = &paths(&dirs)[0];
        std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        assert!(find(&dirs).is_none(), "a file of mode 644");
        // Withdrawn at exit.
        std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        withdraw();
        assert!(!file.exists());
        let _ = std::fs::remove_dir(&dir);
    }

    /// A second gateway on the same config directories (or an upgrade that gave up) exits
    /// while the first still runs: the file names the first again, and the CLI finds it. Once
    /// the first is gone too, the file goes. (Run by the test above.)
    fn a_gateway_that_exits_gives_the_file_back_to_the_one_before() {
        let root =
            std::env::temp_dir().join(format!("tollgate-runfile-before-{}", std::process::id()));
        std::fs::create_dir_all(&root).expect("dir");
        // Another gateway: a process of this user's whose name starts with `tollgate`.
        let sleeper = root.join("tollgate-first");
        let sleep = ["/bin/sleep", "/usr/bin/sleep"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .expect("sleep");
        std::fs::copy(sleep, &sleeper).expect("copy sleep");
        let mut first = std::process::Command::new(&sleeper)
            .arg("60")
            .spawn()
            .expect("start the first gateway");
        // (Its name is the test thread's until its exec has gone through.)
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !alive(first.id()) {
            assert!(
                std::time::Instant::now() < deadline,
                "the first gateway runs"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let dirs = ConfigDirs::single(&root);
        let file = paths(&dirs)[0].clone();
        let theirs = Running {
            pid: first.id(),
            admin: Some("http://127.0.0.1:1111".into()),
            ..Running::default()
        };
        assert!(write_file(&file, &theirs));
        assert_eq!(find(&dirs).map(|r| r.pid), Some(first.id()));
        let ours = Running {
            pid: std::process::id(),
            admin: Some("http://127.0.0.1:2222".into()),
            ..Running::default()
        };
        publish(&dirs, &ours);
        assert_eq!(find(&dirs).map(|r| r.pid), Some(std::process::id()));
        withdraw();
        let found = find(&dirs).expect("the first gateway found again");
        assert_eq!(found.pid, first.id());
        assert_eq!(found.admin.as_deref(), Some("http://127.0.0.1:1111"));
        // The first gone, this process's file goes at its exit.
        publish(&dirs, &ours);
        first.kill().expect("stop the first gateway");
        first.wait().expect("reaped");
        withdraw();
        assert!(!file.exists(), "the file of gateways gone");
        let _ = std::fs::remove_dir_all(&root);
    }

    /// A config directory that is a link swapped to another version after the start (an
    /// operator's release by `ln -sfn v2 current`) still finds the gateway started on it:
    /// the file was named only by where the link resolved. (Run by the test above: both
    /// publish as this process, whose exit withdraws all it published.)
    fn a_directory_link_swapped_since_the_start_finds_the_gateway() {
        let root =
            std::env::temp_dir().join(format!("tollgate-runfile-swap-{}", std::process::id()));
        for v in ["v1", "v2"] {
            std::fs::create_dir_all(root.join(v)).expect("dir");
        }
        let current = root.join("current");
        let _ = std::fs::remove_file(&current);
        std::os::unix::fs::symlink("v1", &current).expect("link");
        let dirs = ConfigDirs::single(&current);
        let running = Running {
            pid: std::process::id(),
            health_path: "/healthcheck".into(),
            ..Running::default()
        };
        publish(&dirs, &running);
        let swap = root.join("current.new");
        std::os::unix::fs::symlink("v2", &swap).expect("link");
        std::fs::rename(&swap, &current).expect("swap");
        assert_eq!(find(&dirs).map(|r| r.pid), Some(std::process::id()));
        // (And by the name it resolved to at the start.)
        let v1 = ConfigDirs::single(&root.join("v1"));
        assert_eq!(find(&v1).map(|r| r.pid), Some(std::process::id()));
        for f in paths(&dirs).iter().chain(&paths(&v1)) {
            let _ = std::fs::remove_file(f);
        }
        let _ = std::fs::remove_dir_all(&root);
    }
}
