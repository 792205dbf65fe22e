//! The process's logger: env_logger's format and `RUST_LOG` filter, plus two things an operator
//! reading the log needs:
//! - Pingora's messages about normal events (an upstream closing an idle pooled connection, a
//!   client going away mid-response) are logged at debug, not as errors;
//! - a warning or error repeated word for word is written once, and then once per
//!   [`FOLD_INTERVAL`] with the number of repeats, instead of once per request;
//! - Pingora's own debug and trace output, which dumps raw request and response headers and
//!   bodies (credentials included), is written only when `RUST_LOG` names a Pingora module
//!   (`RUST_LOG=debug,pingora_proxy=debug`): `RUST_LOG=debug` shows tollgate's debug lines,
//!   which never hold a secret.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use log::{Level, Log, Metadata, Record};

/// How long identical warnings and errors are folded into one line, unless
/// `TOLLGATE_LOG_FOLD_SECONDS` says otherwise.
pub const FOLD_INTERVAL: Duration = Duration::from_secs(10);

fn fold_interval() -> Duration {
    static INTERVAL: OnceLock<Duration> = OnceLock::new();
    *INTERVAL.get_or_init(|| {
        std::env::var("TOLLGATE_LOG_FOLD_SECONDS")
            .ok()
            .and_then(|v| v.trim().parse::<f64>().ok())
            .filter(|v| *v >= 0.0 && v.is_finite())
            .map_or(FOLD_INTERVAL, Duration::from_secs_f64)
    })
}

/// Distinct folded messages remembered at most (past it the memory is cleared).
const MAX_FOLDS: usize = 1024;

/// Pingora messages (by how they start) that report normal events, logged at debug.
const NORMAL_EVENTS: &[&str] = &[
    // The upstream closed a pooled connection while it was idle: a new one is made.
    "failed to acquire reusable stream",
    // The client went away before the response was complete.
    "failed to send error response to downstream",
    "Error finish sending body to downstream",
    "Fail to proxy: Downstream",
    // The client went away while a stored tile was sent (a range of it, a stale one).
    "Fail to serve cache: Downstream",
    // A stale tile answered for the upstream's service exception (counted in the metrics, as
    // a 5xx it answers for is).
    "Fail to proxy: Upstream service exception",
    // The disk tier writes tiles' heads with Pingora's serialiser, which compresses them
    // without a dictionary (none is set: the files' format stays the same from one build to
    // the next).
    "no header compression dictionary loaded",
    "H2 handshake error",
    "Downstream handshake error",
    // A waiter's wait for a fill (counted in `tollgate_cache_lock_wait_seconds`), one line per
    // tile when an upstream is slow.
    "Cache lock timeout",
    "Cache lock retry limit exceeded",
    "Dangling cache lock",
    // An upgrading process waiting, a second at a time, for the old one to be sent SIGQUIT
    // (its giving up after five tries stays an error).
    "No incoming socket transfer",
    // A request body's write upstream failed (a pooled connection the upstream closed, or an
    // upstream that answered before it took the body): tollgate's own line says what came of
    // a failure, one per event.
    "send error, draining read buf",
];

/// Pingora messages (by what they hold) about a normal event: a purge that came while a tile
/// was fetched (the tile is answered, not stored: see The tile cache's Operations), a fill not
/// stored for the memory the fills under way held (counted in
/// `tollgate_cache_fills_over_memory_total`; a warning per tile flooded the log in just the
/// overload the bound is for).
const NORMAL_WITHIN: &[&str] = &[
    "purged while it was fetched",
    "the fills under way held the most memory they may",
];

/// Pingora messages (by what they hold) that name each tile, written by tollgate once per api
/// endpoint instead: a stale tile answered for an upstream failure.
const PER_TILE: &[&str] = &[", serving stale, "];

/// Whether a folded message has repeats not yet written: an `info` line (a recovery) writes
/// those of its own module first, so that the log tells what happened in its order (a count
/// of failures written after the line that said they ended read as if they went on). Only its
/// own: an info line a client can cause (one per connection) would write them all each time.
static UNWRITTEN_REPEATS: AtomicBool = AtomicBool::new(false);

/// The `log` policy's target: its lines, one per request, write no folded counts.
pub(crate) const POLICY_LOG: &str = "tollgate::policy::log";

/// Which folded messages' counts [`Logger::flush_folds`] writes.
#[derive(Clone, Copy)]
enum Flush<'a> {
    All,
    /// Those of one target (module).
    Of(&'a str),
    /// Those a fold interval old.
    Due,
}

struct Fold {
    level: Level,
    target: String,
    last_written: Instant,
    repeats: u64,
}

struct Logger {
    inner: env_logger::Logger,
    folds: Mutex<HashMap<String, Fold>>,
    /// Which of [`DUMPING`] `RUST_LOG` asks for the verbose output of, by name.
    named: Vec<&'static str>,
}

/// The libraries whose debug output dumps raw headers and bodies, credentials included
/// (Pingora's of the requests and answers it proxies, ureq's of the CLI's Admin API calls, its
/// token with them), or feeds itself (notify's traces every file event the config watcher
/// gets: a log written beside the config directories made an event of each of its lines, 2.5
/// million lines in 15 s): muted below `info` unless `RUST_LOG` names one of them at `debug`
/// or `trace`.
const DUMPING: [&str; 3] = ["pingora", "ureq", "notify"];

/// The libraries of [`DUMPING`] that `rust_log` names at `debug` or `trace` (a directive of
/// a module of theirs; without a level, every level): lowering one of their modules
/// (`pingora_core::server=warn`) asks for none of it.
fn named_verbose(rust_log: &str) -> Vec<&'static str> {
    let filters = rust_log.split('/').next().unwrap_or("");
    DUMPING
        .into_iter()
        .filter(|lib| {
            filters.split(',').any(|d| {
                let (target, level) = d.trim().split_once('=').unwrap_or((d.trim(), "trace"));
                target.starts_with(lib)
                    && ["debug", "trace"]
                        .iter()
                        .any(|l| level.eq_ignore_ascii_case(l))
            })
        })
        .collect()
}

/// Installs the logger (call once, first thing).
pub fn init() {
    static LOGGER: OnceLock<Logger> = OnceLock::new();
    let inner =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).build();
    let max = inner.filter();
    let named = named_verbose(&std::env::var("RUST_LOG").unwrap_or_default());
    let logger = LOGGER.get_or_init(|| Logger {
        inner,
        folds: Mutex::new(HashMap::new()),
        named,
    });
    if log::set_logger(logger).is_ok() {
        log::set_max_level(max);
        let _ = std::thread::Builder::new()
            .name("tollgate-log".into())
            .spawn(move || loop {
                // A quarter of the interval: a count is written within a quarter of its due
                // time (sleeping a whole interval, up to two went by).
                std::thread::sleep((fold_interval() / 4).max(Duration::from_millis(100)));
                logger.flush_folds(Flush::Due);
            });
    }
}

/// Pingora's server's own steps of starting and stopping (by how they start), logged at
/// debug: tollgate says what an operator needs of them (where it listens, what it loaded),
/// and Pingora's lines that matter are kept (the signal taken, the grace period's start and
/// end, the exit).
const SERVER_STEPS: &[&str] = &[
    "Bootstrap starting",
    "Bootstrap done",
    "Server starting",
    "Starting services in dependency order",
    "Starting service: ",
    "Broadcasting graceful shutdown",
    "Graceful shutdown started!",
    "Broadcast graceful shutdown complete",
    "Waiting for runtimes to exit",
    "Waiting for service runtime",
    "Service runtime ",
    "service '",
];

/// The level a record is really written at: Pingora's normal events go down to debug.
fn effective_level(record: &Record<'_>) -> Level {
    if record.level() == Level::Info && record.target().starts_with("pingora_core::server") {
        let text = record.args().as_str().map_or_else(
            || std::borrow::Cow::Owned(record.args().to_string()),
            std::borrow::Cow::Borrowed,
        );
        if SERVER_STEPS.iter().any(|p| text.starts_with(p)) {
            return Level::Debug;
        }
    }
    // The watcher's own note that a watched directory went (removed and made again: the
    // config watcher watches the new one, see `lifecycle::watch`).
    if record.level() == Level::Warn
        && record.target().starts_with("notify")
        && record
            .args()
            .to_string()
            .starts_with("Unable to remove the path from the watches")
    {
        return Level::Debug;
    }
    if record.level() <= Level::Warn && record.target().starts_with("pingora") {
        let text = record.args().as_str().map_or_else(
            || std::borrow::Cow::Owned(record.args().to_string()),
            std::borrow::Cow::Borrowed,
        );
        if NORMAL_EVENTS.iter().any(|p| text.starts_with(p))
            || NORMAL_WITHIN
                .iter()
                .chain(PER_TILE)
                .any(|p| text.contains(p))
        {
            return Level::Debug;
        }
    }
    record.level()
}

impl Logger {
    /// The verbose output of a library of [`DUMPING`], unless asked for by name.
    fn muted(&self, target: &str, level: Level) -> bool {
        level > Level::Info
            && DUMPING
                .iter()
                .any(|lib| target.starts_with(lib) && !self.named.contains(lib))
    }

    fn write(&self, level: Level, target: &str, args: std::fmt::Arguments<'_>) {
        self.inner.log(
            &Record::builder()
                .level(level)
                .target(target)
                .args(args)
                .build(),
        );
    }

    /// Writes the repeat counts of folded messages (`Flush::All`, those of one target, or
    /// those a fold interval old); forgets the quiet ones.
    fn flush_folds(&self, which: Flush<'_>) {
        let mut pending = Vec::new();
        {
            let mut folds = self.folds.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            folds.retain(|msg, f| {
                let age = now.duration_since(f.last_written);
                let due = match which {
                    Flush::All => true,
                    Flush::Of(target) => f.target == target,
                    Flush::Due => age >= fold_interval(),
                };
                if f.repeats > 0 && due {
                    pending.push((f.level, f.target.clone(), msg.clone(), f.repeats, age));
                    f.repeats = 0;
                    f.last_written = now;
                    return true;
                }
                age < fold_interval()
            });
            let left = folds.values().any(|f| f.repeats > 0);
            UNWRITTEN_REPEATS.store(left, Ordering::Relaxed);
        }
        for (level, target, msg, repeats, age) in pending {
            self.write(
                level,
                &target,
                format_args!(
                    "{msg} (repeated {repeats} more time{} in the last {:.1}s)",
                    if repeats == 1 { "" } else { "s" },
                    age.as_secs_f64()
                ),
            );
        }
    }
}

thread_local! {
    /// The warnings [`capture_warnings`] collects on this thread while it runs.
    static CAPTURED: std::cell::RefCell<Option<Vec<String>>> = const { std::cell::RefCell::new(None) };
}

/// Runs `f`, and gives with its result tollgate's warnings logged on this thread meanwhile
/// (written to the log as ever): a reload's answer says what the config's reading warned of
/// (a field that is ignored, a pipeline naming an api endpoint that is not there), which
/// before only the log said. (Warnings are collected as they are logged: not at all under
/// `RUST_LOG=error`.)
pub fn capture_warnings<T>(f: impl FnOnce() -> T) -> (T, Vec<String>) {
    /// Puts back what was collected before, however `f` ends (a panic too: the thread, one of
    /// the blocking pool's, would collect every later warning without end).
    struct Restore(Option<Vec<String>>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let outer = self.0.take();
            let _ = CAPTURED.try_with(|c| *c.borrow_mut() = outer);
        }
    }
    let restore = Restore(CAPTURED.with(|c| c.borrow_mut().replace(Vec::new())));
    let out = f();
    let captured = CAPTURED.with(|c| c.borrow_mut().take());
    drop(restore);
    (out, captured.unwrap_or_default())
}

impl Log for Logger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        self.inner.enabled(metadata) && !self.muted(metadata.target(), metadata.level())
    }

    fn log(&self, record: &Record<'_>) {
        if record.level() == Level::Warn
            && record.target().starts_with("tollgate")
            && CAPTURED
                .try_with(|c| c.try_borrow().is_ok_and(|c| c.is_some()))
                .unwrap_or(false)
        {
            // (Formatted before the borrow: a value whose formatting logs would find it held.)
            let text = record.args().to_string();
            let _ = CAPTURED.try_with(|c| {
                if let Ok(mut c) = c.try_borrow_mut() {
                    if let Some(w) = c.as_mut() {
                        w.push(text);
                    }
                }
            });
        }
        let level = effective_level(record);
        if self.muted(record.target(), level) {
            return;
        }
        let meta = Metadata::builder()
            .level(level)
            .target(record.target())
            .build();
        if !self.inner.enabled(&meta) {
            return;
        }
        if level == Level::Info
            && UNWRITTEN_REPEATS.load(Ordering::Relaxed)
            && record.target() != POLICY_LOG
        {
            self.flush_folds(Flush::Of(record.target()));
        }
        // The count of a message let go to make room, written once the table is let go.
        let mut evicted = None;
        if level <= Level::Warn {
            let text = record.args().to_string();
            let mut folds = self.folds.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(f) = folds.get_mut(&text) {
                let age = f.last_written.elapsed();
                if age < fold_interval() {
                    f.repeats += 1;
                    UNWRITTEN_REPEATS.store(true, Ordering::Relaxed);
                    return;
                }
                f.last_written = Instant::now();
                // A message that kept coming: written with its count, this one among them
                // (written plainly, its count was left for when it stopped, and then said the
                // whole run came in the last interval).
                let repeats = std::mem::take(&mut f.repeats);
                if repeats > 0 {
                    drop(folds);
                    self.write(
                        level,
                        record.target(),
                        format_args!(
                            "{text} (repeated {} more times in the last {:.1}s)",
                            repeats + 1,
                            age.as_secs_f64()
                        ),
                    );
                    return;
                }
            } else {
                if folds.len() >= MAX_FOLDS {
                    // The message written longest ago goes, its repeats written first (clearing
                    // them all wrote every folded message again, and lost their counts).
                    let oldest = folds
                        .iter()
                        .min_by_key(|(_, f)| f.last_written)
                        .map(|(m, _)| m.clone());
                    evicted = oldest
                        .and_then(|m| folds.remove(&m).map(|f| (m, f)))
                        .filter(|(_, f)| f.repeats > 0);
                }
                folds.insert(
                    text,
                    Fold {
                        level,
                        target: record.target().to_string(),
                        last_written: Instant::now(),
                        repeats: 0,
                    },
                );
            }
        }
        if let Some((msg, f)) = evicted {
            self.write(
                f.level,
                &f.target,
                format_args!("{msg} (repeated {} more times)", f.repeats),
            );
        }
        self.inner.log(
            &Record::builder()
                .level(level)
                .target(record.target())
                .module_path(record.module_path())
                .file(record.file())
                .line(record.line())
                .args(*record.args())
                .build(),
        );
    }

    fn flush(&self) {
        self.flush_folds(Flush::All);
        self.inner.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A capture ends with its closure, however that ends (a reload that panics left its
    /// thread collecting every later warning), and a capture within another gives the outer
    /// one back.
    #[test]
    fn a_capture_of_warnings_ends_with_its_closure() {
        let collecting = || CAPTURED.with(|c| c.borrow().is_some());
        let panicked = std::panic::catch_unwind(|| capture_warnings(|| panic!("a reload")));
        assert!(panicked.is_err());
        assert!(!collecting());
        // Within the outer capture: the inner one ends, and the outer one is collecting again.
        let ((inner_empty, outer_again), _) =
            capture_warnings(|| (capture_warnings(|| ()).1.is_empty(), collecting()));
        assert!(inner_empty && outer_again);
        assert!(!collecting());
    }

    #[test]
    fn dumping_libraries_are_verbose_only_when_named_at_debug_or_trace() {
        assert_eq!(named_verbose("debug,pingora_proxy=debug"), ["pingora"]);
        assert_eq!(named_verbose("pingora_core"), ["pingora"]);
        assert_eq!(named_verbose("info,ureq_proto=TRACE"), ["ureq"]);
        assert_eq!(named_verbose("notify=trace"), ["notify"]);
        assert_eq!(
            named_verbose("pingora=trace,ureq=debug/foo"),
            ["pingora", "ureq"]
        );
        for quiet in [
            "",
            "trace",
            "debug",
            "trace,pingora_core::server=warn",
            "debug,ureq=info",
            "tollgate=debug",
            "trace,tollgate=trace",
        ] {
            assert!(named_verbose(quiet).is_empty(), "{quiet}");
        }
    }
}

#[cfg(test)]
mod levels {
    use super::*;

    fn level_of(level: Level, target: &str, text: &str) -> Level {
        effective_level(
            &Record::builder()
                .level(level)
                .target(target)
                .args(format_args!("{text}"))
                .build(),
        )
    }

    /// Pingora's line of an event tollgate writes its own line about goes to debug; its line
    /// of an answer longer than its `Content-Length` stays (the only one of it).
    #[test]
    fn pingoras_line_of_a_failed_body_write_is_debug() {
        let text = "send error, draining read buf: Upstream WriteError";
        assert_eq!(
            level_of(Level::Warn, "pingora_proxy::proxy_h1", text),
            Level::Debug
        );
        let text = "Peer sent more data than expected: extra 10 bytes";
        let target = "pingora_core::protocols::http::v1::body";
        assert_eq!(level_of(Level::Warn, target, text), Level::Warn);
    }

    /// Pingora's line of a fill the memory bound kept from being stored is debug: counted.
    #[test]
    fn a_fill_over_the_memory_bound_is_debug() {
        let text = "Failed to finish cache miss admission: InternalError context: the fills under way held the most memory they may: not stored";
        assert_eq!(
            level_of(Level::Warn, "pingora_proxy::proxy_cache", text),
            Level::Debug
        );
    }

    /// The watcher's note that a watched directory went is debug (the config directory
    /// removed and made again is watched anew); its other warnings stay.
    #[test]
    fn a_watched_directory_gone_is_debug() {
        let text = "Unable to remove the path from the watches: Error { kind: WatchNotFound }";
        assert_eq!(level_of(Level::Warn, "notify::inotify", text), Level::Debug);
        let text = "inotify watch limit reached";
        assert_eq!(level_of(Level::Warn, "notify::inotify", text), Level::Warn);
    }

    /// Pingora's server's steps of starting and stopping go to debug; its lines about the
    /// signal taken and the grace period stay, and so does everything of other targets.
    #[test]
    fn pingoras_server_steps_are_debug_and_its_signals_info() {
        let server = "pingora_core::server";
        for step in ["Bootstrap starting", "Starting service: tollgate gateway"] {
            assert_eq!(level_of(Level::Info, server, step), Level::Debug, "{step}");
        }
        for kept in [
            "SIGTERM received, gracefully exiting",
            "Graceful shutdown: grace period 5s starts",
        ] {
            assert_eq!(level_of(Level::Info, server, kept), Level::Info, "{kept}");
        }
        assert_eq!(
            level_of(Level::Info, "tollgate::server", "Bootstrap starting"),
            Level::Info
        );
        // An upgrade's wait for the sockets, a second at a time, is no error; giving up is.
        let transfer = "pingora_core::server::transfer_fd";
        let waiting = "No incoming socket transfer, sleep 1s and try again";
        assert_eq!(level_of(Level::Error, transfer, waiting), Level::Debug);
        let gave_up = "Giving up reading socket";
        assert_eq!(level_of(Level::Error, transfer, gave_up), Level::Error);
        // A purge that came while a tile was fetched: normal, the tile is not stored.
        let cache = "pingora_proxy::proxy_cache";
        let raced = "Failed to finish cache miss admission: InternalError context: purged while it was fetched: not stored, GET /t/1.png";
        assert_eq!(level_of(Level::Warn, cache, raced), Level::Debug);
        let failed = "Failed to finish cache miss admission: InternalError context: other";
        assert_eq!(level_of(Level::Warn, cache, failed), Level::Warn);
    }
}
