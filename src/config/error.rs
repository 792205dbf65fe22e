//! Config errors: each one names the file, line and column it is about and says what is wrong.

use std::fmt;
use std::sync::{Arc, RwLock};

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
            reason: one_line(without_env_values(reason.into())),
        }
    }
}

/// `reason` on one line: a control character a value brought into it (a line feed in a
/// quoted string) written as its escape, so each error stays one `file:line:column: reason`
/// line and the log's lines stay whole.
fn one_line(reason: String) -> String {
    if !reason.chars().any(char::is_control) {
        return reason;
    }
    reason
        .chars()
        .map(|c| match c {
            c if c.is_control() => c.escape_default().to_string(),
            c => c.to_string(),
        })
        .collect()
}

/// The values the environment gave config files (`${NAME}`), each in the forms an error may
/// show it in, with the reference it replaced, longest first: a config error (logged, kept as
/// the last reload's error, answered by the Admin API) names the reference, never the value —
/// a secret passed in the environment and written where the config expects something else
/// stays out of them.
static FROM_ENV: RwLock<Vec<(String, String)>> = RwLock::new(Vec::new());

/// Values shorter than this are left as they are: a short one (`true`, a port) would be found
/// inside the words of any message, and hides nothing worth hiding.
const SHORTEST_HIDDEN: usize = 6;

/// Notes that the environment variable `name` gave a config file `value` (see [`FROM_ENV`]):
/// as it is, as YAML leaves it (without the spaces around it, each of its lines apart) and as
/// a message quotes it (escaped, as `{:?}` writes it).
pub fn note_env_value(name: &str, value: &str) {
    let mut forms = vec![value.to_string(), value.trim().to_string()];
    forms.extend(value.lines().map(|l| l.trim().to_string()));
    for plain in forms.clone() {
        let quoted = format!("{plain:?}");
        forms.push(quoted[1..quoted.len() - 1].to_string());
    }
    let reference = format!("${{{name}}}");
    let mut known = FROM_ENV.write().unwrap_or_else(|p| p.into_inner());
    for form in forms {
        if form.chars().count() >= SHORTEST_HIDDEN && !known.iter().any(|(v, _)| *v == form) {
            known.push((form, reference.clone()));
        }
    }
    known.sort_by_key(|(v, _)| std::cmp::Reverse(v.len()));
}

/// `reason` with every value the environment gave the config replaced by its reference, in one
/// pass over it (the longest value found at each place; a reference put in is never looked at
/// again).
fn without_env_values(reason: String) -> String {
    let known = FROM_ENV.read().unwrap_or_else(|p| p.into_inner());
    if !known.iter().any(|(v, _)| reason.contains(v.as_str())) {
        return reason;
    }
    let mut out = String::with_capacity(reason.len());
    let mut rest = reason.as_str();
    while let Some(c) = rest.chars().next() {
        match known.iter().find(|(v, _)| rest.starts_with(v.as_str())) {
            Some((value, reference)) => {
                out.push_str(reference);
                rest = &rest[value.len()..];
            }
            None => {
                out.push(c);
                rest = &rest[c.len_utf8()..];
            }
        }
    }
    out
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

    /// How many were found so far.
    pub fn len(&self) -> usize {
        self.0.len()
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

#[cfg(test)]
mod tests {
    /// A reason stays on one line whatever a value brought into it.
    #[test]
    fn a_reason_is_one_line() {
        assert_eq!(super::one_line("plain `x`".into()), "plain `x`");
        assert_eq!(
            super::one_line("not a port: a\nb\r\u{1b}".into()),
            "not a port: a\\nb\\r\\u{1b}"
        );
    }

    use super::*;

    #[test]
    fn a_value_from_the_environment_is_named_in_every_form_an_error_shows_it() {
        note_env_value("TG_UNIT_A", "abc\"def\\ghi");
        note_env_value("TG_UNIT_B", "top\tsecretvalue");
        note_env_value("TG_UNIT_C", "  spacedsecret  ");
        note_env_value("TG_UNIT_SECRETKEY", "mysecretkeyXY");
        note_env_value("TG_UNIT_E", "SECRETKEY");
        let shown = |m: &str| without_env_values(m.to_string());
        assert_eq!(
            shown(r#"invalid type: string "abc\"def\\ghi""#),
            r#"invalid type: string "${TG_UNIT_A}""#
        );
        assert_eq!(
            shown(r#"string "top\tsecretvalue""#),
            r#"string "${TG_UNIT_B}""#
        );
        assert_eq!(shown("string \"spacedsecret\""), "string \"${TG_UNIT_C}\"");
        // One pass: a value inside another's reference or another value is not looked at.
        assert_eq!(
            shown("mysecretkeyXY and SECRETKEY"),
            "${TG_UNIT_SECRETKEY} and ${TG_UNIT_E}"
        );
        assert_eq!(shown("nothing of them"), "nothing of them");
    }
}
