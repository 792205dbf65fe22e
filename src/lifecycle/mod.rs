//! The running config's lifecycle: reloading in place (on a change in a watched directory,
//! SIGHUP, or `POST /tollgate/reload`), what needs a restart instead, and what the running
//! config is (`GET /tollgate/config`).
//!
//! A reload reads and compiles the whole stack again; when that fails the running config stays,
//! and the error is logged as `file:line:column: reason`, counted and kept in the status. When
//! it succeeds the new config is swapped in: a request in flight finishes on the config it
//! started with; what the gateway keeps across configs (rate-limit windows, verified tokens,
//! consumers, upstream health, connection pools, the tile cache) stays. Listeners, ports,
//! certificates and the consumer store are read at start only: a change to them is said in the
//! log and in the status, and applies at the next start.

pub mod runfile;
pub mod watch;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;

use crate::config::error::{ConfigError, ConfigErrors, Pos};
use crate::config::layers::Source;
use crate::config::{ConfigDirs, LoadedConfig};
use crate::consumers::models::Models;
use crate::consumers::service::ConsumerService;
use crate::gateway::{Gateway, Shared};

/// What asked for a reload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trigger {
    /// A change in a watched directory (skipped when no input changed).
    Watch,
    /// SIGHUP.
    Signal,
    /// `POST /tollgate/reload` (`tollgate reload`).
    Admin,
}

impl Trigger {
    fn as_str(self) -> &'static str {
        match self {
            Trigger::Watch => "a change in the config directories",
            Trigger::Signal => "SIGHUP",
            Trigger::Admin => "the Admin API",
        }
    }
}

/// How a reload went.
#[derive(Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Outcome {
    /// `reloaded`, `unchanged` or `failed`.
    pub result: &'static str,
    pub errors: Vec<String>,
    /// What reading the config warned of (as logged): fields ignored, names not found.
    pub warnings: Vec<String>,
    pub restart_required: Vec<String>,
}

#[derive(Default, serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct Status {
    dirs: Vec<String>,
    files: Vec<Source>,
    loaded_at: String,
    reloads: u64,
    failed_reloads: u64,
    last_error: Option<LastError>,
    /// Whether the config on disk is one the last reload refused (the running config stays
    /// until it is mended).
    refused_on_disk: bool,
    restart_required: Vec<String>,
    watching: bool,
}

#[derive(Clone, serde::Serialize)]
struct LastError {
    at: String,
    trigger: &'static str,
    errors: Vec<String>,
}

/// The settings read at start only, as the process runs with them.
#[derive(Clone, PartialEq)]
struct StartOnly(Vec<(&'static str, String)>);

impl StartOnly {
    /// `before`: the hashes of the inputs, the certificates' among them.
    fn of(loaded: &LoadedConfig, before: &ReadBefore) -> StartOnly {
        let https = loaded.gateway.https.as_ref().map(|h| {
            // The certificates' contents count, not only their paths.
            let certs: Vec<String> = h
                .certs
                .iter()
                .map(|c| {
                    let hash = |p: &str| before.0.get(&absolute(Path::new(p))).cloned();
                    format!("{} {:?} {:?}", c.host_glob, hash(&c.cert), hash(&c.key))
                })
                .collect();
            format!("{:?} {:?}", h.listener, certs)
        });
        StartOnly(vec![
            ("the http listener", format!("{:?}", loaded.gateway.http)),
            (
                "the https listener or its certificates",
                format!("{https:?}"),
            ),
            ("the admin listener", format!("{:?}", loaded.gateway.admin)),
            (
                "the consumer store (db.redis)",
                format!("{:?}", loaded.system.redis),
            ),
            // (The one `crypto` setting tollgate uses: `cipherKey` and `algorithm` cipher EG's
            // oauth2 secrets, which tollgate has not; a change of them was said to be one of
            // `saltRounds`.)
            (
                "crypto.saltRounds",
                loaded.system.crypto.salt_rounds.to_string(),
            ),
        ])
    }

    /// What differs from `running`, as sentences.
    fn changes_from(&self, running: &StartOnly) -> Vec<String> {
        self.0
            .iter()
            .zip(&running.0)
            .filter(|(new, old)| new.1 != old.1)
            .map(|(new, _)| format!("{} changed: applies at the next start", new.0))
            .collect()
    }
}

pub struct Lifecycle {
    dirs: ConfigDirs,
    shared: Shared,
    consumers: Arc<ConsumerService>,
    pub current: Arc<ArcSwap<Gateway>>,
    runtime: tokio::runtime::Handle,
    running: StartOnly,
    status: Mutex<Status>,
    /// One reload at a time.
    reloading: Mutex<()>,
}

fn now_text() -> String {
    crate::consumers::model::rfc3339_now()
}

/// What a loaded config was read from, taken before it is compiled.
pub struct Started {
    dirs: ConfigDirs,
    gateway_path: PathBuf,
    system_path: Option<PathBuf>,
    start_only: StartOnly,
    /// Files the compile reads: `secretOrPublicKeyFile`s, as the stack resolves them.
    key_files: Vec<PathBuf>,
    /// The https listener's certificates and keys, as given (read at start only: a change is
    /// said to wait for a restart).
    tls_files: Vec<PathBuf>,
    before: ReadBefore,
}

impl Started {
    /// What `loaded` was loaded from; `before`: the inputs' hashes taken before it was read
    /// (those of the files the compile reads are taken now, before it does).
    pub fn of(loaded: &LoadedConfig, mut before: ReadBefore) -> Started {
        let dirs = &loaded.dirs;
        let mut keys = Vec::new();
        collect_key_files(&loaded.gateway.raw, &mut keys);
        let key_files: Vec<PathBuf> = keys
            .iter()
            .filter_map(|k| dirs.resolve(Path::new(k)))
            .collect();
        let tls_files: Vec<PathBuf> = loaded
            .gateway
            .https
            .iter()
            .flat_map(|h| &h.certs)
            .flat_map(|c| [&c.cert, &c.key])
            .map(|p| absolute(Path::new(p)))
            .collect();
        before.add(dirs, key_files.iter().chain(&tls_files));
        Started {
            dirs: dirs.clone(),
            gateway_path: loaded.gateway_path.clone(),
            system_path: loaded.system_path.clone(),
            start_only: StartOnly::of(loaded, &before),
            key_files,
            tls_files,
            before,
        }
    }
}

/// The SHA-256 of a config's inputs taken before a load reads them: the hashes the status
/// records as in force. A file changed while the load runs is then recorded with its content
/// from before the change, which the watcher sees differ from the file and loads again; hashes
/// taken after the load could record the new content while the old one runs, and the change
/// would never be loaded.
#[derive(Default)]
pub struct ReadBefore(HashMap<PathBuf, String>);

impl ReadBefore {
    /// The gateway and system config and the models the stack `dirs` has now, and `also`
    /// (the files of the config in force: its key files and certificates).
    pub fn of(dirs: &ConfigDirs, also: &[Source]) -> ReadBefore {
        let stack = [
            dirs.find_config("gateway.config"),
            dirs.find_config("system.config"),
            dirs.resolve(Path::new("models/users.json")),
            dirs.resolve(Path::new("models/applications.json")),
        ];
        let mut before = ReadBefore::default();
        let in_force: Vec<PathBuf> = also.iter().map(|f| PathBuf::from(&f.path)).collect();
        before.add(dirs, stack.iter().flatten().chain(&in_force));
        before
    }

    /// Hashes those of `paths` (files) not hashed yet.
    fn add<'a>(&mut self, dirs: &ConfigDirs, paths: impl Iterator<Item = &'a PathBuf>) {
        for p in paths {
            if !self.0.contains_key(p) && p.is_file() {
                self.0.insert(p.clone(), dirs.source(p).sha256);
            }
        }
    }
}

/// The input files of a config stack as it is on disk now (for `tollgate config show`).
pub fn inputs_of(dirs: &ConfigDirs) -> Result<Vec<Source>, crate::config::error::ConfigErrors> {
    let before = ReadBefore::of(dirs, &[]);
    let loaded = crate::config::load_dirs(dirs)?;
    let started = Started::of(&loaded, before);
    Gateway::build(loaded, &Shared::detached())?;
    Ok(inputs(&started))
}

/// Every file a config reads: the gateway and system config, models, key files, the https
/// listener's certificates and keys (named by their whole path: they are not looked up in
/// the stack), with their hashes as they were before the load.
fn inputs(started: &Started) -> Vec<Source> {
    let dirs = &started.dirs;
    let mut paths = vec![started.gateway_path.clone()];
    paths.extend(started.system_path.clone());
    for m in ["models/users.json", "models/applications.json"] {
        paths.extend(dirs.resolve(Path::new(m)));
    }
    paths.extend(started.key_files.iter().cloned());
    paths.dedup();
    let mut sources: Vec<Source> = paths.iter().map(|p| dirs.source(p)).collect();
    for p in &started.tls_files {
        if p.is_file() && !paths.contains(p) {
            let mut source = dirs.source(p);
            source.name.clone_from(&source.path);
            sources.push(source);
        }
    }
    for source in &mut sources {
        if let Some(hash) = started.before.0.get(Path::new(&source.path)) {
            source.sha256.clone_from(hash);
        }
    }
    sources
}

/// The inputs of the config in force that lie outside the config directories (certificates,
/// key files given by an absolute path): the watcher watches where they are.
/// A file of the config directories that is a link to a file elsewhere counts by its target
/// too (an edit there changes no entry of the directory).
pub fn outside(files: &[Source], dirs: &ConfigDirs) -> Vec<PathBuf> {
    let roots: Vec<PathBuf> = dirs.dirs().iter().map(|d| absolute(d)).collect();
    let real_roots: Vec<PathBuf> = roots
        .iter()
        .map(|r| std::fs::canonicalize(r).unwrap_or_else(|_| r.clone()))
        .collect();
    let mut out = Vec::new();
    for f in files {
        let p = absolute(Path::new(&f.path));
        if !roots.iter().any(|r| p.starts_with(r)) {
            out.push(p);
        } else if let Ok(real) = std::fs::canonicalize(&p) {
            if !real_roots.iter().any(|r| real.starts_with(r)) {
                out.push(real);
            }
        }
    }
    out
}

/// `p` from the root (the working directory's path before a relative one).
pub(crate) fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

fn collect_key_files(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    ("secretOrPublicKeyFile", serde_json::Value::String(s)) => out.push(s.clone()),
                    _ => collect_key_files(v, out),
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|v| collect_key_files(v, out)),
        _ => {}
    }
}

impl Lifecycle {
    /// Takes over the config the gateway started with.
    pub fn new(
        started: Started,
        shared: Shared,
        consumers: Arc<ConsumerService>,
        current: Arc<ArcSwap<Gateway>>,
        runtime: tokio::runtime::Handle,
    ) -> Lifecycle {
        let dirs = started.dirs.clone();
        let files = inputs(&started);
        let status = Status {
            dirs: dirs
                .dirs()
                .iter()
                .map(|d| d.display().to_string())
                .collect(),
            files,
            loaded_at: now_text(),
            ..Status::default()
        };
        crate::metrics::metrics().config_loaded(true);
        Lifecycle {
            running: started.start_only,
            dirs,
            shared,
            consumers,
            current,
            runtime,
            status: Mutex::new(status),
            reloading: Mutex::new(()),
        }
    }

    pub fn dirs(&self) -> &ConfigDirs {
        &self.dirs
    }

    /// The input files of the config in force, as the status lists them.
    fn files_in_force(&self) -> Vec<Source> {
        let st = self.status.lock().unwrap_or_else(|p| p.into_inner());
        st.files.clone()
    }

    /// The inputs of the config in force outside its directories (see [`outside`]).
    pub fn outside_inputs(&self) -> Vec<PathBuf> {
        outside(&self.files_in_force(), &self.dirs)
    }

    pub fn set_watching(&self, on: bool) {
        self.status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .watching = on;
    }

    /// Whether any input file differs from the running config's: another content, another
    /// directory of the stack now providing it, or a new input (a later directory's file,
    /// a models file).
    fn inputs_changed(&self) -> bool {
        let listed = self.files_in_force();
        let is_listed = |p: &Path| listed.iter().any(|f| Path::new(&f.path) == p);
        let fresh = [
            self.dirs.find_config("gateway.config"),
            self.dirs.find_config("system.config"),
            self.dirs.resolve(Path::new("models/users.json")),
            self.dirs.resolve(Path::new("models/applications.json")),
        ];
        if fresh.iter().flatten().any(|p| !is_listed(p)) {
            return true;
        }
        listed.iter().any(|f| {
            let p = Path::new(&f.path);
            let provider = self.dirs.resolve(Path::new(&f.name));
            provider.as_deref() != Some(p) || self.dirs.source(p).sha256 != f.sha256
        })
    }

    /// Reads and compiles the config stack again and puts it in force, or keeps the running
    /// one and says why.
    pub fn reload(&self, trigger: Trigger) -> Outcome {
        let _one = self.reloading.lock().unwrap_or_else(|p| p.into_inner());
        if trigger == Trigger::Watch && !self.inputs_changed() {
            let back = std::mem::take(
                &mut self
                    .status
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .refused_on_disk,
            );
            if back {
                crate::metrics::metrics().refused_on_disk(false);
                // The refused reload's folded lines are written before the line that ends it.
                log::logger().flush();
                log::info!(
                    "config directories are back to the config in force: the last reload's errors no longer apply"
                );
            } else {
                log::debug!("config directories changed, but no config input did");
            }
            return Outcome {
                result: "unchanged",
                errors: Vec::new(),
                warnings: Vec::new(),
                restart_required: self.restart_required(),
            };
        }
        let m = crate::metrics::metrics();
        let before = ReadBefore::of(&self.dirs, &self.files_in_force());
        let ((models, built), warnings) = crate::logging::capture_warnings(|| {
            let models = Models::load(&self.dirs);
            let built = crate::config::load_dirs(&self.dirs).and_then(|loaded| {
                self.inputs_kept(&loaded)?;
                let started = Started::of(&loaded, before);
                Ok((Gateway::build(loaded, &self.shared)?, started))
            });
            (models, built)
        });
        // Every problem at once, the models' with the config's (as `check` says them).
        let built = match (built, models) {
            (Ok((gateway, started)), Ok(models)) => Ok((gateway, models, started)),
            (Err(mut errors), Err(e)) => {
                errors.0.push(e);
                Err(errors)
            }
            (Err(errors), Ok(_)) => Err(errors),
            (Ok(_), Err(e)) => Err(crate::config::error::ConfigErrors(vec![e])),
        };
        match built {
            Err(errors) => {
                let lines: Vec<String> = errors.0.iter().map(ToString::to_string).collect();
                for l in &lines {
                    log::error!("config reload failed, the running config stays: {l}");
                }
                m.config_loaded(false);
                let mut st = self.status.lock().unwrap_or_else(|p| p.into_inner());
                st.failed_reloads += 1;
                st.refused_on_disk = true;
                m.refused_on_disk(true);
                st.last_error = Some(LastError {
                    at: now_text(),
                    trigger: trigger.as_str(),
                    errors: lines.clone(),
                });
                Outcome {
                    result: "failed",
                    errors: lines,
                    warnings,
                    restart_required: st.restart_required.clone(),
                }
            }
            Ok((gateway, models, started)) => {
                let gateway = Arc::new(gateway);
                crate::upstream::carry_addresses(self.current.load().targets(), gateway.targets());
                crate::upstream::health::start_all(
                    gateway.service_endpoints.values(),
                    &self.runtime,
                );
                let files = inputs(&started);
                let start_only = started.start_only;
                runfile::health_path_changed(&self.dirs, &gateway.healthcheck.source);
                self.current.store(gateway);
                self.consumers.set_models(models);
                m.config_loaded(true);
                let restart_required = start_only.changes_from(&self.running);
                for r in &restart_required {
                    log::warn!("config reloaded, but {r}");
                }
                log::logger().flush();
                log::info!("config reloaded ({})", trigger.as_str());
                let mut st = self.status.lock().unwrap_or_else(|p| p.into_inner());
                st.reloads += 1;
                st.refused_on_disk = false;
                m.refused_on_disk(false);
                st.files = files;
                st.loaded_at = now_text();
                st.restart_required = restart_required.clone();
                Outcome {
                    result: "reloaded",
                    errors: Vec::new(),
                    warnings,
                    restart_required,
                }
            }
        }
    }

    /// A reload that finds no system config, or no model, where the config in force has one is
    /// refused: a file deleted for a moment (a save that removes it, then writes it again)
    /// would put the embedded store and every default (or the built-in models) in force —
    /// routes the plugins add gone — until it is back.
    fn inputs_kept(&self, loaded: &LoadedConfig) -> Result<(), ConfigErrors> {
        let gone: Vec<ConfigError> = self
            .files_in_force()
            .iter()
            .filter(|f| {
                if f.name.starts_with("system.config.") {
                    loaded.system_path.is_none()
                } else if f.name.starts_with("models/") {
                    self.dirs.resolve(Path::new(&f.name)).is_none()
                } else {
                    false
                }
            })
            .map(|f| {
                ConfigError::new(
                    &Pos::file_start(&Arc::from(f.path.as_str())),
                    "the file is gone, though the running config has it: a reload does not \
                     take it away (restart without it for the defaults)",
                )
            })
            .collect();
        match gone.is_empty() {
            true => Ok(()),
            false => Err(ConfigErrors(gone)),
        }
    }

    fn restart_required(&self) -> Vec<String> {
        self.status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .restart_required
            .clone()
    }

    /// The running config: which files from which directories, their hashes, when it was
    /// loaded, the last reload error, what waits for a restart.
    pub fn describe(&self) -> serde_json::Value {
        let st = self.status.lock().unwrap_or_else(|p| p.into_inner());
        let mut v = serde_json::to_value(&*st).unwrap_or_default();
        if let Some(o) = v.as_object_mut() {
            let since = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64());
            o.insert("now".into(), serde_json::json!(since));
        }
        v
    }
}

/// Tells systemd (`Type=notify`, when `NOTIFY_SOCKET` is set) that this process is ready and
/// is the service's main process — after a binary upgrade the new process takes over from the
/// old one. Waits until the gateway's listeners accept first.
pub async fn notify_ready_when_listening(listen: &[String]) {
    let Some(socket) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    for addr in listen {
        let probe = addr.replace("0.0.0.0", "127.0.0.1");
        while tokio::net::TcpStream::connect(&probe).await.is_err() {
            if std::time::Instant::now() > deadline {
                log::warn!("{addr} does not accept: not telling systemd we are ready");
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
    let message = format!("READY=1\nMAINPID={}\n", std::process::id());
    if let Err(e) = sd_notify(&socket, message.as_bytes()) {
        log::warn!("cannot notify systemd: {e}");
    }
}

/// Tells systemd (when it runs the gateway) that this process is the service's main one: an
/// upgrading process, once it holds the listening sockets, before its start is done.
pub fn notify_main_pid() {
    let Some(socket) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let message = format!("MAINPID={}\n", std::process::id());
    if let Err(e) = sd_notify(&socket, message.as_bytes()) {
        log::warn!("cannot notify systemd: {e}");
    }
}

fn sd_notify(socket: &std::ffi::OsStr, message: &[u8]) -> std::io::Result<()> {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::net::{SocketAddr, UnixDatagram};
    let bytes = socket.as_bytes();
    let addr = match bytes.strip_prefix(b"@") {
        Some(name) => SocketAddr::from_abstract_name(name)?,
        None => SocketAddr::from_pathname(std::path::Path::new(socket))?,
    };
    UnixDatagram::unbound()?.send_to_addr(message, &addr)?;
    Ok(())
}
