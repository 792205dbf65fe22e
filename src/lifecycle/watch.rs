//! Watching the config directories (the directories, not the files: editors rename over a
//! file on save, Kubernetes swaps a `..data` symlink) and their parents (a directory removed
//! and made anew is watched again), debounced: a burst of changes is one
//! reload, once the directory has been quiet for [`QUIET`] (at most [`QUIET_AT_MOST`] after
//! the first change). Changes under the data directory or the tile cache's directory, to the
//! access log, and reads are not config changes, and do not hold a reload off. `EG_DISABLE_CONFIG_WATCH` set to
//! anything (even `false`, as in EG) turns watching off.

use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};

use super::{Lifecycle, Trigger};

/// How long the directories must be quiet before a reload.
pub const QUIET: Duration = Duration::from_millis(250);
/// The longest a reload waits for quiet: changes that never stop do not hold it off.
const QUIET_AT_MOST: Duration = Duration::from_secs(3);

/// Whether EG's switch turns watching off.
pub fn disabled() -> bool {
    std::env::var_os("EG_DISABLE_CONFIG_WATCH").is_some_and(|v| !v.is_empty())
}

/// Watches every directory of the stack, reloading on changes, on a thread of its own.
/// `ignore`: directories whose changes are not config changes.
pub fn start(lifecycle: Arc<Lifecycle>, ignore: Vec<PathBuf>) {
    if disabled() {
        log::info!("config watching is off (EG_DISABLE_CONFIG_WATCH)");
        return;
    }
    let (tx, rx) = mpsc::channel::<notify::Result<notify::Event>>();
    let mut watcher = match notify::recommended_watcher(tx) {
        Ok(w) => w,
        Err(e) => {
            log::warn!("cannot watch the config directories ({e}); reload with SIGHUP or `tollgate reload`");
            return;
        }
    };
    let canon = |p: &PathBuf| std::fs::canonicalize(p).unwrap_or_else(|_| p.clone());
    let ignore: Vec<PathBuf> = ignore.iter().map(canon).collect();
    // Each directory as given (made absolute, a symlink not followed: a link swapped for
    // another is seen in its parent) and where it leads now.
    let roots: Vec<PathBuf> = lifecycle
        .dirs()
        .dirs()
        .iter()
        .map(|d| std::path::absolute(d).unwrap_or_else(|_| d.clone()))
        .collect();
    let led_to: Vec<PathBuf> = roots.iter().map(canon).collect();
    let mut watched = 0;
    for dir in &roots {
        match watcher.watch(dir, RecursiveMode::Recursive) {
            Ok(()) => watched += 1,
            Err(e) => log::warn!("cannot watch {}: {e}", dir.display()),
        }
        // A directory removed and made anew (`rm -rf` and a copy, a link swapped) is another
        // directory: its parent says when it is back, and it is watched again then.
        if let Some(parent) = dir.parent().filter(|p| p.is_dir()) {
            if let Err(e) = watcher.watch(parent, RecursiveMode::NonRecursive) {
                log::debug!("cannot watch {}: {e}", parent.display());
            }
        }
    }
    if watched == 0 {
        return;
    }
    lifecycle.set_watching(true);
    let config_path = {
        let roots = roots.clone();
        move |p: &std::path::Path| {
            let p = p.to_path_buf();
            let c = canon(&p);
            (roots.iter().any(|r| p.starts_with(r)) || led_to.iter().any(|r| c.starts_with(r)))
                && !ignore.iter().any(|i| c.starts_with(i))
        }
    };
    let relevant = move |e: &notify::Event| {
        !matches!(e.kind, notify::EventKind::Access(_)) && e.paths.iter().any(|p| config_path(p))
    };
    let spawned = std::thread::Builder::new()
        .name("tollgate-watch".into())
        .spawn(move || {
            // The watcher lives as long as this thread.
            let mut watcher = watcher;
            while let Ok(first) = rx.recv() {
                if !first.as_ref().is_ok_and(&relevant) {
                    continue;
                }
                // Wait for quiet: the end of an editor's save, a `cp -r`, a symlink swap.
                let began = std::time::Instant::now();
                let mut quiet_from = began;
                loop {
                    let waited = began.elapsed();
                    if waited >= QUIET_AT_MOST {
                        break;
                    }
                    let left =
                        (quiet_from + QUIET).saturating_duration_since(std::time::Instant::now());
                    if left.is_zero() {
                        break;
                    }
                    match rx.recv_timeout(left.min(QUIET_AT_MOST - waited)) {
                        Ok(e) if e.as_ref().is_ok_and(&relevant) => {
                            quiet_from = std::time::Instant::now();
                        }
                        Ok(_) => {}
                        Err(mpsc::RecvTimeoutError::Timeout) => {}
                        Err(mpsc::RecvTimeoutError::Disconnected) => return,
                    }
                }
                // A directory made anew is watched again (watching one still watched changes
                // nothing); one not back yet is, once its parent says it is.
                for dir in &roots {
                    if let Err(e) = watcher.watch(dir, RecursiveMode::Recursive) {
                        log::debug!("cannot watch {} yet: {e}", dir.display());
                    }
                }
                lifecycle.reload(Trigger::Watch);
            }
        });
    if let Err(e) = spawned {
        log::warn!("cannot start the config watcher: {e}");
    }
}
