//! Express Gateway's config files: finding them in a directory, env interpolation, parsing with
//! positions, and reading them into typed definitions. Compiling those into a running gateway
//! is [`crate::gateway`]'s job.

pub mod error;
pub mod gateway_file;
pub mod interpolate;
pub mod layers;
pub mod node;
pub mod system_file;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use error::{ConfigError, ConfigErrors, Pos};
use gateway_file::GatewayFile;
use node::Node;
use system_file::SystemFile;

pub use layers::ConfigDirs;

/// Says that a config file of the same name beside `read` (`gateway.config.json` beside
/// `gateway.config.yml`) is not read: an operator editing it would see nothing change.
fn unread_beside(read: &std::path::Path) {
    let (Some(dir), Some(stem)) = (read.parent(), read.file_stem()) else {
        return;
    };
    for ext in layers::CONFIG_EXTENSIONS {
        let other = dir.join(format!("{}.{ext}", stem.to_string_lossy()));
        if other != read && other.symlink_metadata().is_ok() {
            log::warn!(
                "{}: not read: {} is (as EG, `.yml` before `.json`, `.yaml` last)",
                other.display(),
                read.display()
            );
        }
    }
}

/// The two files of a config directory stack, read and typed.
pub struct LoadedConfig {
    pub dirs: ConfigDirs,
    pub gateway_path: PathBuf,
    pub system_path: Option<PathBuf>,
    pub gateway: GatewayFile,
    pub system: SystemFile,
    /// Problems found while reading the files that do not stop the rest from being checked;
    /// compiling reports them together with its own.
    pub errors: ConfigErrors,
}

impl LoadedConfig {
    /// Says that the config has no system config, when it has none: the embedded store and
    /// every default are in force.
    pub fn say_defaults(&self) {
        if self.system_path.is_none() {
            no_system_config(&self.dirs);
        }
    }

    /// The config, when reading it found nothing wrong: what opens the consumer store (a
    /// gateway's start, the CLI working on the store) must not act on a setting read as its
    /// default because the file's value was refused (`db.redis.db: -1` read as database 0).
    pub fn checked(mut self) -> Result<LoadedConfig, ConfigErrors> {
        match std::mem::take(&mut self.errors).into_result() {
            Ok(()) => Ok(self),
            Err(errors) => Err(errors),
        }
    }

    /// As [`LoadedConfig::checked`], for what works on the consumer store alone (the CLI's
    /// `populate` and `clean` with no gateway running): the system config's errors, where
    /// the store's settings are (a gateway config's `${PORT}` unset in an operator's shell is
    /// no reason to refuse).
    pub fn store_checked(mut self) -> Result<LoadedConfig, ConfigErrors> {
        let system = self.system_path.as_ref().map(|p| p.display().to_string());
        self.errors
            .0
            .retain(|e| system.as_deref() == Some(&*e.pos.file));
        self.checked()
    }
}

/// The warning that a config stack has no system config.
pub fn no_system_config(dirs: &ConfigDirs) {
    log::warn!(
        "{}: no system.config.yml; using the embedded store and defaults",
        dirs.display()
    );
}

/// The first of `gateway.config.yml`, `.yaml`, `.json` (likewise `system.config.*`) in `dir`.
pub fn find_file(dir: &Path, stem: &str) -> Option<PathBuf> {
    ["yml", "yaml", "json"]
        .iter()
        .map(|ext| dir.join(format!("{stem}.{ext}")))
        .find(|p| p.is_file())
}

/// A config file's text as EG reads it: a byte-order mark (Notepad's, PowerShell's) left
/// out, bytes that are not UTF-8 read as U+FFFD (with a warning naming the first one's line).
pub fn text_of(bytes: &[u8], name: &str) -> String {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    match String::from_utf8_lossy(bytes) {
        std::borrow::Cow::Borrowed(text) => text.to_string(),
        std::borrow::Cow::Owned(text) => {
            let valid = std::str::from_utf8(bytes).map_or_else(|e| e.valid_up_to(), |_| 0);
            let line = 1 + bytes[..valid].iter().filter(|&&b| b == b'\n').count();
            log::warn!("{name}:{line}: bytes that are not UTF-8, read as U+FFFD");
            text
        }
    }
}

/// Reads, interpolates and parses one file.
pub fn read_document(path: &Path) -> Result<Node, ConfigError> {
    let name: Arc<str> = Arc::from(path.display().to_string());
    // Found by its name (see [`ConfigDirs::find_config`]): a directory, a FIFO (whose read
    // would wait for a writer) or a dangling link there is an error of its own.
    match std::fs::metadata(path) {
        Ok(m) if !m.is_file() => {
            return Err(ConfigError::new(
                &Pos::file_start(&name),
                "cannot read the file: not a regular file",
            ))
        }
        _ => {}
    }
    let bytes = std::fs::read(path).map_err(|e| {
        ConfigError::new(
            &Pos::file_start(&name),
            format!("cannot read the file: {e}"),
        )
    })?;
    let raw = text_of(&bytes, &name);
    let (text, unresolved, places) = interpolate::interpolate_env(&raw);
    for var in unresolved {
        log::warn!(
            "{name}: environment variable `{var}` is not set and has no default; it reads as null"
        );
    }
    match node::parse_placed(&text, &name, &places) {
        Ok(n) => Ok(n),
        // Valid JSON that YAML's syntax rejects (tabs, say): read it as JSON, without positions.
        // What the syntax allows but a config may not hold (a key given twice, as EG's reader
        // refuses it too) is reported where it is.
        Err(e) if path.extension().is_some_and(|e| e == "json") && node::is_syntax_error(&e) => {
            match serde_json::from_str::<serde_json::Value>(&text) {
                Ok(v) => Ok(json_to_node(&v, &Pos::file_start(&name))),
                Err(e) => {
                    let (line, col) = places.in_file((e.line(), e.column().saturating_sub(1)));
                    Err(ConfigError::new(
                        &Pos::new(&name, line, col + 1),
                        // (Its own position is the interpolated text's.)
                        format!("invalid JSON: {}", without_position(&e.to_string())),
                    ))
                }
            }
        }
        Err(e) => Err(e),
    }
}

/// serde_json's message without the " at line L column C" it ends with.
fn without_position(message: &str) -> &str {
    message
        .rfind(" at line ")
        .map_or(message, |i| &message[..i])
}

fn json_to_node(v: &serde_json::Value, pos: &Pos) -> Node {
    use node::Value as V;
    let value = match v {
        serde_json::Value::Null => V::Null,
        serde_json::Value::Bool(b) => V::Bool(*b),
        serde_json::Value::Number(n) => n
            .as_i64()
            .map_or_else(|| V::Float(n.as_f64().unwrap_or(0.0)), V::Int),
        serde_json::Value::String(s) => V::Str(s.clone()),
        serde_json::Value::Array(a) => V::Seq(a.iter().map(|x| json_to_node(x, pos)).collect()),
        serde_json::Value::Object(o) => V::Map(
            o.iter()
                .map(|(k, x)| {
                    (
                        Node {
                            pos: pos.clone(),
                            value: V::Str(k.clone()),
                        },
                        json_to_node(x, pos),
                    )
                })
                .collect(),
        ),
    };
    Node {
        pos: pos.clone(),
        value,
    }
}

/// Loads a config directory.
pub fn load_dir(dir: &Path) -> Result<LoadedConfig, ConfigErrors> {
    load_dirs(&ConfigDirs::single(dir))
}

/// Loads a stack of config directories. Fails only when there is nothing further to check (no
/// directory, no gateway file, a file that does not parse); other problems travel in `errors`.
pub fn load_dirs(dirs: &ConfigDirs) -> Result<LoadedConfig, ConfigErrors> {
    let mut errors = ConfigErrors::default();
    let dir_name: Arc<str> = Arc::from(dirs.display());
    for dir in dirs.dirs() {
        if !dir.is_dir() {
            errors.push(
                &Pos::file_start(&Arc::from(dir.display().to_string())),
                if dir.exists() {
                    "not a directory: give the config directory, not a file in it"
                } else {
                    "the config directory does not exist"
                },
            );
        }
    }
    if !errors.0.is_empty() {
        return Err(errors);
    }
    let Some(gateway_path) = dirs.find_config("gateway.config") else {
        errors.push(
            &Pos::file_start(&Arc::from(
                dirs.last().join("gateway.config.yml").display().to_string(),
            )),
            "no gateway.config.yml (or .yaml, .json) in the config directories",
        );
        return Err(errors);
    };
    let system_path = dirs.find_config("system.config");
    for found in std::iter::once(&gateway_path).chain(system_path.as_ref()) {
        unread_beside(found);
    }
    let gateway_root = read_document(&gateway_path);
    let system_root = system_path.as_deref().map(read_document);
    if let Err(e) = &gateway_root {
        errors.0.push(e.clone());
    }
    if let Some(Err(e)) = &system_root {
        errors.0.push(e.clone());
    }
    let (Ok(gateway_root), None | Some(Ok(_))) = (gateway_root, &system_root) else {
        return Err(errors.into_result().err().unwrap_or_default());
    };
    let gateway = GatewayFile::from_node(&gateway_root, dirs, &mut errors);
    let system = match system_root {
        Some(Ok(root)) if root.is_null() => {
            errors.push(
                &root.pos,
                "the system config is empty: it must be a map (db, crypto, plugins…)",
            );
            SystemFile::from_node(&root, &mut errors)
        }
        Some(Ok(root)) => SystemFile::from_node(&root, &mut errors),
        // (Said where a gateway starts or a config is checked: on a reload, the running
        // config stays when its system config is gone.)
        _ => SystemFile::from_node(&Node::null(Pos::file_start(&dir_name)), &mut errors),
    };
    Ok(LoadedConfig {
        dirs: dirs.clone(),
        gateway_path,
        system_path,
        gateway,
        system,
        errors,
    })
}
