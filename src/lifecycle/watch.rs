//! Watching the config directories (the directories, not the files: editors rename over a
//! file on save, Kubernetes swaps a `..data` symlink) and their parents (a directory removed
//! and made anew is watched again), and the folders of the inputs that lie outside them
//! (certificates, key files by absolute path), debounced: a burst of changes is one reload,
//! once the directories have been quiet for [`QUIET`] (at most [`QUIET_AT_MOST`] after the
//! first change). Changes under the data directory or the tile cache's directory, to the
//! access log, and reads are not config changes, and do not hold a reload off.
//! `EG_DISABLE_CONFIG_WATCH` set to anything (even `false`, as in EG) turns watching off.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use notify::{RecommendedWatcher, RecursiveMode, Watcher};

use super::{Lifecycle, Trigger};

/// How long the directories must be quiet before a reload: as EG's watcher waits for a file
/// to stop changing (chokidar's `awaitWriteFinish`, 2 s), so that a file written in two
/// steps, closed between them, is never in force half written.
pub const QUIET: Duration = Duration::from_secs(2);
/// The longest a reload waits for quiet: changes that never stop do not hold it off.
const QUIET_AT_MOST: Duration = Duration::from_secs(10);

/// Whether EG's switch turns watching off.
pub fn disabled() -> bool {
    std::env::var_os("EG_DISABLE_CONFIG_WATCH").is_some_and(|v| !v.is_empty())
}

/// A path as given (made absolute: the paths of a watched directory's events begin so) and
/// where it leads (through links; looked up again when a config directory is watched again).
struct Named {
    given: PathBuf,
    canonical: PathBuf,
}

impl Named {
    fn new(p: &Path) -> Named {
        let given = super::absolute(p);
        let canonical = canonical(&given);
        Named { given, canonical }
    }

    fn look_up_again(&mut self) {
        self.canonical = canonical(&self.given);
    }
}

fn canonical(p: &Path) -> PathBuf {
    std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf())
}

/// Where `p` leads: the real path of its nearest ancestor that is there, with the rest (a file
/// renamed away or removed by now is judged by its directory).
fn leads_to(p: &Path) -> PathBuf {
    let mut rest = Vec::new();
    let mut at = p;
    loop {
        if let Ok(real) = std::fs::canonicalize(at) {
            return rest.iter().rev().fold(real, |real, name| real.join(name));
        }
        match (at.parent(), at.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name);
                at = parent;
            }
            _ => return p.to_path_buf(),
        }
    }
}

/// Which events are config changes.
struct Relevance {
    roots: Vec<Named>,
    /// Directories (and the access log) whose changes are not config changes.
    ignore: Vec<Named>,
    /// Inputs of the config in force outside the roots.
    outside: Vec<PathBuf>,
}

impl Relevance {
    /// A change (not a read) to a path under a root and not under an ignored directory, or to
    /// an input outside the roots (or a `..` entry beside it: a Kubernetes Secret's swap). The
    /// busy parent of a root sends many events that are none of these, judged without a system
    /// call. Events were lost (the kernel's queue overflowed): a change, and about the roots.
    fn of(&self, e: &notify::Event) -> bool {
        e.need_rescan()
            || (!matches!(e.kind, notify::EventKind::Access(_))
                && e.paths.iter().any(|p| self.path(p)))
    }

    fn path(&self, p: &Path) -> bool {
        for r in &self.roots {
            if let Ok(rest) = p.strip_prefix(&r.given) {
                if self.ignore.iter().any(|i| p.starts_with(&i.given)) {
                    return false;
                }
                // Where it leads: through the root's link, or through a link inside the root
                // (the data directory a link to a volume) — looked up only for a path under a
                // root that is not ignored as given.
                let at = r.canonical.join(rest);
                let led = leads_to(p);
                return !self
                    .ignore
                    .iter()
                    .any(|i| at.starts_with(&i.canonical) || led.starts_with(&i.canonical));
            }
        }
        self.outside.iter().any(|f| {
            f == p
                || (f.parent() == p.parent()
                    && p.file_name()
                        .is_some_and(|n| n.as_encoded_bytes().starts_with(b"..")))
        })
    }

    /// Whether the event is about a root itself (removed, made anew, a link swapped), or may
    /// have been (events were lost).
    fn touches_root(&self, e: &notify::Event) -> bool {
        e.need_rescan()
            || e.paths
                .iter()
                .any(|p| self.roots.iter().any(|r| r.given == *p))
    }
}

/// The files the process's standard output and error are written to, where they are files
/// (read from `/proc`; none elsewhere, nor for a terminal or a pipe).
pub fn own_log_files() -> Vec<PathBuf> {
    ["/proc/self/fd/1", "/proc/self/fd/2"]
        .iter()
        .filter_map(|fd| std::fs::canonicalize(fd).ok())
        .filter(|p| std::fs::metadata(p).is_ok_and(|m| m.is_file()))
        .collect()
}

/// Watches every directory of the stack, reloading on changes, on a thread of its own.
/// `ignore`: directories (and files) whose changes are not config changes.
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
    let roots: Vec<Named> = lifecycle
        .dirs()
        .dirs()
        .iter()
        .map(|d| Named::new(d))
        .collect();
    let mut watched = 0;
    for r in &roots {
        match watcher.watch(&r.given, RecursiveMode::Recursive) {
            Ok(()) => watched += 1,
            Err(e) => log::warn!("cannot watch {}: {e}", r.given.display()),
        }
    }
    if watched == 0 {
        return;
    }
    watch_parents(&mut watcher, &roots);
    let mut relevance = Relevance {
        roots,
        ignore: ignore.iter().map(|i| Named::new(i)).collect(),
        outside: Vec::new(),
    };
    lifecycle.set_watching(watched == relevance.roots.len());
    let spawned = std::thread::Builder::new()
        .name("tollgate-watch".into())
        .spawn(move || {
            // The watcher lives as long as this thread.
            let mut watcher = watcher;
            // A file saved between the start's load and the watch's start made no event.
            lifecycle.reload(Trigger::Watch);
            watch_outside(&mut watcher, &lifecycle, &mut relevance);
            while let Ok(first) = rx.recv() {
                let first = match first {
                    Ok(e) if relevance.of(&e) => e,
                    Ok(_) => continue,
                    Err(e) => {
                        log::warn!("config watch: {e}");
                        continue;
                    }
                };
                let mut root_touched = relevance.touches_root(&first);
                let mut writing = Writing::default();
                writing.note(&first);
                // Wait for quiet: the end of an editor's save, a `cp -r`, a symlink swap — and
                // for the files written to be closed (a writer that pauses in the middle of a
                // file left a part of it that parses in force for the pause).
                let began = Instant::now();
                let mut quiet_from = began;
                loop {
                    let waited = began.elapsed();
                    if waited >= QUIET_AT_MOST {
                        break;
                    }
                    let mut left = (quiet_from + QUIET).saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        if writing.0.is_empty() {
                            break;
                        }
                        left = QUIET;
                    }
                    match rx.recv_timeout(left.min(QUIET_AT_MOST - waited)) {
                        Ok(Ok(e)) if relevance.of(&e) => {
                            root_touched |= relevance.touches_root(&e);
                            writing.note(&e);
                            quiet_from = Instant::now();
                        }
                        Ok(Ok(e)) => {
                            if e.paths.iter().any(|p| relevance.path(p)) {
                                writing.note(&e);
                            }
                        }
                        Ok(Err(e)) => log::warn!("config watch: {e}"),
                        Err(mpsc::RecvTimeoutError::Timeout) => {}
                        Err(mpsc::RecvTimeoutError::Disconnected) => return,
                    }
                }
                if root_touched {
                    rewatch(&mut watcher, &lifecycle, &mut relevance);
                }
                lifecycle.reload(Trigger::Watch);
                watch_outside(&mut watcher, &lifecycle, &mut relevance);
            }
        });
    if let Err(e) = spawned {
        log::warn!("cannot start the config watcher: {e}");
    }
}

/// The config files (gateway and system config, models) written to since the first change of
/// a burst and not closed since. Other files are not waited for: an editor keeps its swap file
/// open while it runs.
#[derive(Default)]
struct Writing(std::collections::HashSet<PathBuf>);

impl Writing {
    fn note(&mut self, e: &notify::Event) {
        use notify::event::{AccessKind, AccessMode, EventKind, ModifyKind};
        // Only inotify says when a file written to is closed: elsewhere nothing is waited for.
        if !cfg!(target_os = "linux") {
            return;
        }
        match e.kind {
            EventKind::Modify(ModifyKind::Data(_)) => {
                self.0
                    .extend(e.paths.iter().filter(|p| config_file(p)).cloned());
            }
            EventKind::Access(AccessKind::Close(AccessMode::Write))
            | EventKind::Remove(_)
            | EventKind::Modify(ModifyKind::Name(_)) => {
                for p in &e.paths {
                    self.0.remove(p);
                }
            }
            _ => {}
        }
    }
}

/// Whether `p` names a config file: `gateway.config.*`, `system.config.*`, a model.
fn config_file(p: &Path) -> bool {
    let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
    name.starts_with("gateway.config.")
        || name.starts_with("system.config.")
        || (matches!(name, "users.json" | "applications.json")
            && p.parent()
                .and_then(Path::file_name)
                .is_some_and(|d| d == "models"))
}

/// Watches the parent of each root (its entries only): a root removed and made anew, or a
/// link swapped for another, is seen there.
fn watch_parents(watcher: &mut RecommendedWatcher, roots: &[Named]) {
    for r in roots {
        // A parent within a config directory (one directory of the stack in another) is
        // watched with it: watching it again, alone, would end the watch of its subfolders.
        if let Some(parent) = r.given.parent().filter(|p| p.is_dir() && !within(p, roots)) {
            if let Err(e) = watcher.watch(parent, RecursiveMode::NonRecursive) {
                log::debug!("cannot watch {}: {e}", parent.display());
            }
        }
    }
}

/// Whether `folder` is watched with a config directory (under one, by either name).
fn within(folder: &Path, roots: &[Named]) -> bool {
    roots.iter().any(|r| folder.starts_with(&r.given)) || {
        let c = canonical(folder);
        roots.iter().any(|r| c.starts_with(&r.canonical))
    }
}

/// Watches the roots again after an event about one of them: a directory made anew is
/// another one (and a link may lead elsewhere now). One that is not back yet is watched when
/// its parent says it is.
fn rewatch(watcher: &mut RecommendedWatcher, lifecycle: &Lifecycle, relevance: &mut Relevance) {
    let mut all = true;
    for r in relevance.roots.iter_mut() {
        match watcher.watch(&r.given, RecursiveMode::Recursive) {
            Ok(()) => r.look_up_again(),
            Err(e) if not_found(&e) => {
                log::debug!("{} is not there (yet)", r.given.display());
                all = false;
            }
            Err(e) => {
                log::warn!("cannot watch {} again: {e}", r.given.display());
                all = false;
            }
        }
    }
    relevance.ignore.iter_mut().for_each(Named::look_up_again);
    watch_parents(watcher, &relevance.roots);
    lifecycle.set_watching(all);
}

/// Watches the folders of the config's inputs outside its directories, as the config in force
/// names them (a reload may name others; a folder made anew is watched again).
fn watch_outside(
    watcher: &mut RecommendedWatcher,
    lifecycle: &Lifecycle,
    relevance: &mut Relevance,
) {
    relevance.outside = lifecycle.outside_inputs();
    let mut done: Vec<&Path> = Vec::new();
    for f in &relevance.outside {
        let Some(parent) = f.parent() else { continue };
        // Watched already: here, or with a config directory (watching it again, alone, would
        // end the watch of its subfolders).
        if done.contains(&parent) || within(parent, &relevance.roots) {
            continue;
        }
        done.push(parent);
        if let Err(e) = watcher.watch(parent, RecursiveMode::NonRecursive) {
            log::warn!(
                "cannot watch {} (of {}): {e}",
                parent.display(),
                f.display()
            );
        }
    }
}

fn not_found(e: &notify::Error) -> bool {
    match &e.kind {
        notify::ErrorKind::PathNotFound => true,
        notify::ErrorKind::Io(io) => io.kind() == std::io::ErrorKind::NotFound,
        _ => false,
    }
}
