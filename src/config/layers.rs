//! A stack of config directories, defaults first and a workspace last, as Kargo's `configure`
//! lays them out: a file in a later directory replaces the file of the same name (the same path
//! under the directory) in an earlier one — no merging inside files. The gateway and system
//! config, key files and `models/` all resolve this way.

use std::path::{Path, PathBuf};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigDirs(Vec<PathBuf>);

/// Where a config input came from.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Source {
    /// The path under the stack (`gateway.config.yml`, `models/users.json`, `keys/a.pem`).
    pub name: String,
    /// The file read.
    pub path: String,
    /// The directory of the stack it came from.
    pub dir: String,
    /// SHA-256 of its bytes, hex.
    pub sha256: String,
}

/// A config file's extensions in EG's order (`.yml`, then `.json`; EG reads no `.yaml`,
/// taken last).
pub const CONFIG_EXTENSIONS: [&str; 3] = ["yml", "json", "yaml"];

impl ConfigDirs {
    /// A stack; an empty list means the shipped `conf/`.
    pub fn new(dirs: Vec<PathBuf>) -> ConfigDirs {
        if dirs.is_empty() {
            ConfigDirs(vec![PathBuf::from("conf")])
        } else {
            ConfigDirs(dirs)
        }
    }

    pub fn single(dir: &Path) -> ConfigDirs {
        ConfigDirs(vec![dir.to_path_buf()])
    }

    pub fn dirs(&self) -> &[PathBuf] {
        &self.0
    }

    /// The workspace: the last directory (where the embedded store's data goes by default).
    pub fn last(&self) -> &Path {
        self.0.last().map_or(Path::new("conf"), PathBuf::as_path)
    }

    /// `a:b:c` for messages.
    pub fn display(&self) -> String {
        self.0
            .iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(":")
    }

    /// The file `rel` from the last directory that has it. An absolute path is itself.
    pub fn resolve(&self, rel: &Path) -> Option<PathBuf> {
        if rel.is_absolute() {
            return rel.is_file().then(|| rel.to_path_buf());
        }
        self.0
            .iter()
            .rev()
            .map(|d| d.join(rel))
            .find(|p| p.is_file())
    }

    /// `stem.yml`, `.yaml` or `.json` (in that order) from the last directory that has one:
    /// by its name, whatever it is — a directory or a dangling link there (a mount gone wrong)
    /// is the config's error when it is read, not a file to do without.
    pub fn find_config(&self, stem: &str) -> Option<PathBuf> {
        self.0.iter().rev().find_map(|d| {
            CONFIG_EXTENSIONS
                .iter()
                .map(|ext| d.join(format!("{stem}.{ext}")))
                .find(|p| p.symlink_metadata().is_ok())
        })
    }

    /// Which directory of the stack a resolved file is in.
    pub fn dir_of(&self, path: &Path) -> Option<&Path> {
        self.0
            .iter()
            .rev()
            .find(|d| path.starts_with(d))
            .map(PathBuf::as_path)
    }

    /// A resolved input, described for the status and `config show`.
    pub fn source(&self, path: &Path) -> Source {
        use sha2::Digest;
        let bytes = std::fs::read(path).unwrap_or_default();
        let dir = self.dir_of(path).unwrap_or(Path::new(""));
        let name = path.strip_prefix(dir).unwrap_or(path).display().to_string();
        Source {
            name,
            path: path.display().to_string(),
            dir: dir.display().to_string(),
            sha256: crate::wire::hex(&sha2::Sha256::digest(&bytes)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_later_directory_replaces_a_file() {
        let base = std::env::temp_dir().join(format!("tollgate-layers-{}", std::process::id()));
        let (a, b) = (base.join("defaults"), base.join("workspace"));
        for d in [&a, &b] {
            std::fs::create_dir_all(d.join("models")).expect("dir");
        }
        std::fs::write(a.join("gateway.config.yml"), "a").expect("write");
        std::fs::write(a.join("system.config.yml"), "a").expect("write");
        std::fs::write(b.join("gateway.config.yaml"), "b").expect("write");
        std::fs::write(a.join("models/users.json"), "{}").expect("write");
        let dirs = ConfigDirs::new(vec![a.clone(), b.clone()]);
        assert_eq!(
            dirs.find_config("gateway.config"),
            Some(b.join("gateway.config.yaml"))
        );
        assert_eq!(
            dirs.find_config("system.config"),
            Some(a.join("system.config.yml"))
        );
        assert_eq!(
            dirs.resolve(Path::new("models/users.json")),
            Some(a.join("models/users.json"))
        );
        assert_eq!(
            dirs.source(&a.join("models/users.json")).name,
            "models/users.json"
        );
        assert_eq!(
            dirs.dir_of(&b.join("gateway.config.yaml")),
            Some(b.as_path())
        );
        let _ = std::fs::remove_dir_all(&base);
    }
}
