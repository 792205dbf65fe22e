//! Environment interpolation of a config file's raw text, as Express Gateway does it before
//! parsing: `${VAR}` and `${VAR:-default}`.
//!
//! A set variable wins even when empty; an unset one takes a non-empty default; otherwise the
//! reference becomes the text `null`. Unset references are reported so the caller can warn.

/// Replaces every `${NAME}` / `${NAME:-default}` in `text` using `lookup`.
/// Returns the new text and the names that resolved to `null`.
pub fn interpolate(text: &str, lookup: impl Fn(&str) -> Option<String>) -> (String, Vec<String>) {
    let mut out = String::with_capacity(text.len());
    let mut unresolved = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        // `$${NAME}` is an escape: EG leaves it as written.
        if start > 0 && rest.as_bytes()[start - 1] == b'$' {
            let end = rest[start..]
                .find('}')
                .map_or(rest.len(), |e| start + e + 1);
            out.push_str(&rest[..end]);
            rest = &rest[end..];
            continue;
        }
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        match parse_reference(after) {
            Some((name, default, consumed)) => {
                match lookup(name) {
                    Some(value) => out.push_str(&value),
                    None => match default {
                        Some(d) if !d.is_empty() => out.push_str(d),
                        _ => {
                            out.push_str("null");
                            unresolved.push(name.to_string());
                        }
                    },
                }
                rest = &after[consumed..];
            }
            None => {
                out.push_str("${");
                rest = after;
            }
        }
    }
    out.push_str(rest);
    (out, unresolved)
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
        let end = def_part.find('}')?;
        return Some((name, Some(&def_part[..end]), name_len + 2 + end + 1));
    }
    None
}

/// Interpolates from the process environment.
pub fn interpolate_env(text: &str) -> (String, Vec<String>) {
    interpolate(text, |name| std::env::var(name).ok())
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
        let (text, unresolved) = interpolate("x: ${NOPE}", env);
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
    }
}
