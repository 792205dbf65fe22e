//! Config errors: each one names the file, line and column it is about and says what is wrong.

use std::fmt;
use std::sync::Arc;

/// A place in a config file (line and column are 1-based).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pos {
    pub file: Arc<str>,
    pub line: usize,
    pub col: usize,
}

impl Pos {
    pub fn new(file: &Arc<str>, line: usize, col: usize) -> Pos {
        Pos {
            file: file.clone(),
            line,
            col,
        }
    }

    /// The start of a file, for errors about the file as a whole.
    pub fn file_start(file: &Arc<str>) -> Pos {
        Pos::new(file, 1, 1)
    }
}

impl fmt::Display for Pos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file, self.line, self.col)
    }
}

/// One problem found in the config.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    pub pos: Pos,
    pub reason: String,
}

impl ConfigError {
    pub fn new(pos: &Pos, reason: impl Into<String>) -> ConfigError {
        ConfigError {
            pos: pos.clone(),
            reason: reason.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.pos, self.reason)
    }
}

/// Every problem found in one load, in file order.
#[derive(Debug, Default)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl ConfigErrors {
    pub fn push(&mut self, pos: &Pos, reason: impl Into<String>) {
        self.0.push(ConfigError::new(pos, reason));
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn extend(&mut self, other: ConfigErrors) {
        self.0.extend(other.0);
    }

    /// Ok when nothing was found, else the errors sorted by file and position.
    pub fn into_result(mut self) -> Result<(), ConfigErrors> {
        if self.0.is_empty() {
            return Ok(());
        }
        self.0.sort_by(|a, b| {
            (&a.pos.file, a.pos.line, a.pos.col).cmp(&(&b.pos.file, b.pos.line, b.pos.col))
        });
        self.0.dedup();
        Err(self)
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}
