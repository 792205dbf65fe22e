//! Environment interpolation of a config file's raw text, as Express Gateway does it before
//! parsing: `${VAR}` and `${VAR:-default}`.
//!
//! A set variable wins even when empty; an unset one takes a non-empty default; otherwise the
//! reference becomes the text `null`. Unset references are reported so the caller can warn.
//! The parser sees the interpolated text; [`Places`] takes its positions back to the file as
//! written, so an error after a value of another length (a PEM key of many lines) names the
//! line and column it is at in the file.

/// A line (1-based) and a column (0-based, in characters).
pub type LineCol = (usize, usize);

/// Where the references were replaced: in the interpolated text and in the file.
#[derive(Debug, Default)]
pub struct Places {
    /// Per replaced reference: its value's start and end in the text, the reference's start
    /// and end in the file.
    replaced: Vec<[LineCol; 4]>,
}

impl Places {
    /// The place in the file of `at`, a place in the interpolated text (inside a value: its
    /// reference's start).
    pub fn in_file(&self, at: LineCol) -> LineCol {
        // The last value that starts at or before `at`.
        let Some(r) = self.replaced.iter().rev().find(|r| r[0] <= at) else {
            return at;
        };
        let [_, text_end, file_start, file_end] = *r;
        if at < text_end {
            return file_start;
        }
        if at.0 == text_end.0 {
            (file_end.0, file_end.1 + (at.1 - text_end.1))
        } else {
            (file_end.0 + (at.0 - text_end.0), at.1)
        }
    }
}

/// Moves `at` over `s`.
fn advance(at: &mut LineCol, s: &str) {
    for c in s.chars() {
        if c == '\n' {
            *at = (at.0 + 1, 0);
        } else {
            at.1 += 1;
        }
    }
}

/// Replaces every `${NAME}` / `${NAME:-default}` in `text` using `lookup`.
/// Returns the new text, the names that resolved to `null` and where values replaced
/// references.
pub fn interpolate(
    text: &str,
    lookup: impl Fn(&str) -> Option<String>,
) -> (String, Vec<String>, Places) {
    let mut out = String::with_capacity(text.len());
    let mut unresolved = Vec::new();
    let mut places = Places::default();
    let (mut in_text, mut in_file) = ((1, 0), (1, 0));
    let mut rest = text;
    // Copies `part` (the file's own text) as it is.
    let copy = |out: &mut String, in_text: &mut LineCol, in_file: &mut LineCol, part: &str| {
        out.push_str(part);
        advance(in_text, part);
        advance(in_file, part);
    };
    while let Some(start) = rest.find("${") {
        // `$${NAME}` is an escape: EG leaves it as written.
        if start > 0 && rest.as_bytes()[start - 1] == b'$' {
            let end = rest[start..]
                .find('}')
                .map_or(rest.len(), |e| start + e + 1);
            copy(&mut out, &mut in_text, &mut in_file, &rest[..end]);
            rest = &rest[end..];
            continue;
        }
        copy(&mut out, &mut in_text, &mut in_file, &rest[..start]);
        let after = &rest[start + 2..];
        match parse_reference(after) {
            Some((name, default, consumed)) => {
                let value = match lookup(name) {
                    Some(value) => value,
                    None => match default {
                        Some(d) if !d.is_empty() => d.to_string(),
                        _ => {
                            unresolved.push(name.to_string());
                            "null".to_string()
                        }
                    },
                };
                let (text_start, file_start) = (in_text, in_file);
                out.push_str(&value);
                advance(&mut in_text, &value);
                advance(&mut in_file, &rest[start..start + 2 + consumed]);
                places
                    .replaced
                    .push([text_start, in_text, file_start, in_file]);
                rest = &after[consumed..];
            }
            None => {
                copy(&mut out, &mut in_text, &mut in_file, "${");
                rest = after;
            }
        }
    }
    out.push_str(rest);
    (out, unresolved, places)
}

/// Parses `NAME}` or `NAME:-default}` at the start of `s`.
/// Returns the name, the default (if any) and how many bytes were consumed.
fn parse_reference(s: &str) -> Option<(&str, Option<&str>, usize)> {
    let name_len = s
        .bytes()
        .take_while(|b| b.is_ascii_alphanumeric() || *b == b'_')
        .count();
    if name_len == 0 {
        return None;
    }
    let name = &s[..name_len];
    let tail = &s[name_len..];
    if tail.starts_with('}') {
        return Some((name, None, name_len + 1));
    }
    if let Some(def_part) = tail.strip_prefix(":-") {
        // (On its line, as EG's pattern reads it: a `}` on a later line closes nothing.)
        let end = def_part.find(['}', '\n', '\r'])?;
        if def_part.as_bytes()[end] != b'}' {
            return None;
        }
        return Some((name, Some(&def_part[..end]), name_len + 2 + end + 1));
    }
    None
}

/// Interpolates from the process environment.
pub fn interpolate_env(text: &str) -> (String, Vec<String>, Places) {
    interpolate(text, |name| {
        let value = std::env::var(name).ok()?;
        super::error::note_env_value(name, &value);
        Some(value)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "SET" => Some("value".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn set_variable_wins_even_when_empty() {
        assert_eq!(interpolate("a${SET}b", env).0, "avalueb");
        assert_eq!(interpolate("a${EMPTY:-d}b", env).0, "ab");
    }

    #[test]
    fn unset_takes_default_or_null() {
        assert_eq!(interpolate("${NOPE:-dflt}", env).0, "dflt");
        let (text, unresolved, _) = interpolate("x: ${NOPE}", env);
        assert_eq!(text, "x: null");
        assert_eq!(unresolved, vec!["NOPE".to_string()]);
        assert_eq!(interpolate("${NOPE:-}", env).0, "null");
    }

    #[test]
    fn default_stops_at_first_brace_and_bad_references_stay() {
        assert_eq!(interpolate("${NOPE:-a{b}c}", env).0, "a{bc}");
        assert_eq!(interpolate("${} ${-x} $SET", env).0, "${} ${-x} $SET");
        assert_eq!(interpolate("${SET", env).0, "${SET");
        assert_eq!(interpolate("$${SET} ${SET}", env).0, "$${SET} value");
        // A default ends on its line, as EG's reads it.
        assert_eq!(
            interpolate("[\"${NOPE:-first\n  second}\"]", env).0,
            "[\"${NOPE:-first\n  second}\"]"
        );
    }

    #[test]
    fn places_in_the_text_are_taken_back_to_the_file() {
        let pem =
            |name: &str| (name == "PEM").then(|| "-----BEGIN-----\nabc\n-----END-----".to_string());
        let file = "a: 1\nkey: \"${PEM}\"\nb: ${NOPE:-xy} c\nd: 2\n";
        let (text, _, places) = interpolate(file, pem);
        assert_eq!(
            text,
            "a: 1\nkey: \"-----BEGIN-----\nabc\n-----END-----\"\nb: xy c\nd: 2\n"
        );
        // Before any reference: as it is.
        assert_eq!(places.in_file((1, 3)), (1, 3));
        // Inside a value: its reference.
        assert_eq!(places.in_file((2, 9)), (2, 6));
        assert_eq!(places.in_file((3, 1)), (2, 6));
        // On the value's last line, after it: shifted by the lengths.
        assert_eq!(places.in_file((4, 13)), (2, 12));
        // Lines after a value of three lines: two lines up.
        assert_eq!(places.in_file((5, 0)), (3, 0));
        assert_eq!(places.in_file((5, 6)), (3, 15));
        assert_eq!(places.in_file((6, 3)), (4, 3));
    }
}
