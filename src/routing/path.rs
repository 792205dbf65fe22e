//! Express 4 path patterns (`/wms*`, `/users/:id`, `/admin/*`) and `pathRegex`, compiled once.
//!
//! Patterns are matched against the raw path (no query), case-insensitively, anchored, with one
//! optional trailing slash, as Express's `path-to-regexp` 0.1 does. A literal prefix is checked
//! before the regex so that most misses cost a byte comparison.

use regex::Regex;

#[derive(Debug)]
pub struct PathMatcher {
    kind: Kind,
    /// Where the pattern's first `:` or `*` sits; the proxy's `stripPath` cuts the URL there.
    pub strip_at: Option<usize>,
    /// The pattern as configured (for messages and the Admin API).
    pub source: String,
}

#[derive(Debug)]
enum Kind {
    /// No `paths`: every path.
    Any,
    /// A pattern without any special character: equal, ignoring case and one trailing slash.
    Literal(String),
    /// Literal text then one `*` (`/wmts/*`, `/wms*`): every path that starts with the text,
    /// lower-cased here.
    Prefix(String),
    /// A pattern with parameters or wildcards; `prefix` is its literal start, lower-cased.
    Pattern { prefix: String, re: Regex },
    /// `pathRegex`: unanchored and case-sensitive.
    Regex(Regex),
}

impl PathMatcher {
    pub fn any() -> PathMatcher {
        PathMatcher {
            kind: Kind::Any,
            strip_at: Some(0),
            source: "*".into(),
        }
    }

    /// Compiles an Express path pattern.
    pub fn express(pattern: &str) -> Result<PathMatcher, String> {
        let strip_at = pattern.find([':', '*']);
        if pattern == "*" {
            return Ok(PathMatcher {
                kind: Kind::Any,
                strip_at,
                source: pattern.into(),
            });
        }
        let special = |c: char| {
            matches!(
                c,
                ':' | '*' | '(' | ')' | '?' | '+' | '[' | ']' | '{' | '}' | '|' | '^' | '$' | '\\'
            )
        };
        let kind = if !pattern.contains(special) {
            Kind::Literal(pattern.trim_end_matches('/').to_ascii_lowercase())
        } else if let Some(text) = pattern
            .strip_suffix('*')
            .filter(|t| !t.is_empty() && !t.contains(special))
        {
            // `*` is `(.*)` then an optional slash: whatever follows the text.
            Kind::Prefix(text.to_ascii_lowercase())
        } else {
            let re = Regex::new(&express_to_regex(pattern))
                .map_err(|e| crate::pipeline::condition::short_reason(&e.to_string()))?;
            Kind::Pattern {
                prefix: literal_prefix(pattern),
                re,
            }
        };
        Ok(PathMatcher {
            kind,
            strip_at,
            source: pattern.into(),
        })
    }

    /// Compiles a `pathRegex`.
    pub fn regex(pattern: &str) -> Result<PathMatcher, String> {
        let re = Regex::new(pattern)
            .map_err(|e| crate::pipeline::condition::short_reason(&e.to_string()))?;
        Ok(PathMatcher {
            kind: Kind::Regex(re),
            // EG fails on stripPath with a regex mount; tollgate leaves the path as it is.
            strip_at: Some(0),
            source: pattern.into(),
        })
    }

    /// What every path this matcher matches starts with, ASCII case aside (for the index).
    pub fn literal_start(&self) -> &str {
        match &self.kind {
            Kind::Any | Kind::Regex(_) => "",
            Kind::Literal(lit) | Kind::Prefix(lit) => lit,
            Kind::Pattern { prefix, .. } => prefix,
        }
    }

    pub fn matches(&self, path: &str) -> bool {
        match &self.kind {
            Kind::Any => true,
            Kind::Literal(lit) => {
                let p = path.strip_suffix('/').unwrap_or(path);
                p.eq_ignore_ascii_case(lit)
            }
            Kind::Prefix(prefix) => {
                path.len() >= prefix.len()
                    && path.as_bytes()[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
            }
            Kind::Pattern { prefix, re } => {
                path.len() >= prefix.len()
                    && path.as_bytes()[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
                    && re.is_match(path)
            }
            Kind::Regex(re) => re.is_match(path),
        }
    }
}

/// The literal start of a pattern (before any special character), without a character a `?`
/// or `+` applies to, and without a trailing slash (which Express makes optional) unless a `*`
/// follows it: `*` is literal text for any characters, so the slash before it is required.
fn literal_prefix(pattern: &str) -> String {
    let end = pattern
        .find([':', '*', '(', '?', '+', '[', '{', '|', '\\', '^', '$'])
        .unwrap_or(pattern.len());
    let mut prefix = &pattern[..end];
    let next = pattern[end..].chars().next();
    if matches!(next, Some('?' | '+')) && end > 0 {
        let cut = prefix.char_indices().last().map_or(0, |(i, _)| i);
        prefix = &prefix[..cut];
    }
    if next != Some('*') {
        prefix = prefix.trim_end_matches('/');
    }
    prefix.to_ascii_lowercase()
}

/// Translates an Express 4 route pattern to a regex, following `path-to-regexp` 0.1.7:
/// `:name` → `([^/]+?)` (or the given `(regex)`), `:name?` makes it and its slash optional,
/// `:name*` takes the rest, `*` → `(.*)`, `/` and `.` are literal, other regex syntax passes.
fn express_to_regex(pattern: &str) -> String {
    let chars: Vec<char> = pattern.chars().collect();
    let mut out = String::from("(?i)^");
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            ':' if chars
                .get(i + 1)
                .is_some_and(|n| n.is_alphanumeric() || *n == '_') =>
            {
                i += 1;
                while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                    i += 1;
                }
                let mut capture = String::from("([^/]+?)");
                if chars.get(i) == Some(&'(') {
                    let start = i;
                    let mut depth = 0;
                    while i < chars.len() {
                        match chars[i] {
                            '(' => depth += 1,
                            ')' => {
                                depth -= 1;
                                if depth == 0 {
                                    i += 1;
                                    break;
                                }
                            }
                            _ => {}
                        }
                        i += 1;
                    }
                    capture = chars[start..i].iter().collect();
                }
                let star = chars.get(i) == Some(&'*');
                if star {
                    i += 1;
                }
                let optional = chars.get(i) == Some(&'?');
                if optional {
                    i += 1;
                }
                // The slash written before the parameter moves inside the group when optional.
                let slash = out.ends_with("\\/");
                if slash && optional {
                    out.truncate(out.len() - 2);
                }
                out.push_str("(?:");
                if slash && optional {
                    out.push_str("\\/");
                }
                out.push_str(&capture);
                if star {
                    out.push_str("((?:[\\/].+?)?)");
                }
                out.push(')');
                if optional {
                    out.push('?');
                }
                continue;
            }
            '*' => out.push_str("(.*)"),
            '/' if chars.get(i + 1) == Some(&'(') => {
                out.push_str("\\/(?:");
                i += 2;
                continue;
            }
            '/' | '.' => {
                out.push('\\');
                out.push(c);
            }
            // A brace is a repetition only as `{n}`, `{n,}` or `{n,m}`; otherwise text, as
            // JavaScript's patterns (EG's) read it (`/a{x}` was refused as a bad repetition).
            '{' => {
                let close = chars[i..].iter().position(|&c| c == '}').map(|p| i + p);
                let inner: Option<String> = close.map(|e| chars[i + 1..e].iter().collect());
                let counted = inner.as_deref().is_some_and(|t| {
                    let (n, m) = t.split_once(',').unwrap_or((t, ""));
                    !n.is_empty()
                        && n.bytes().all(|b| b.is_ascii_digit())
                        && m.bytes().all(|b| b.is_ascii_digit())
                        && i > 0
                });
                match (counted, close) {
                    (true, Some(e)) => {
                        out.extend(&chars[i..=e]);
                        i = e + 1;
                        continue;
                    }
                    _ => out.push_str("\\{"),
                }
            }
            '}' => out.push_str("\\}"),
            // An escape stands with what it escapes (`\{` is a brace, as written).
            '\\' => {
                out.push(c);
                if let Some(next) = chars.get(i + 1) {
                    out.push(*next);
                    i += 1;
                }
            }
            _ => out.push(c),
        }
        i += 1;
    }
    if pattern.ends_with('/') {
        out.push('?');
    } else {
        out.push_str("\\/?");
    }
    out.push('$');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(pattern: &str, path: &str) -> bool {
        PathMatcher::express(pattern)
            .expect("compiles")
            .matches(path)
    }

    /// A brace is text unless it is a repetition, as JavaScript reads EG's patterns.
    #[test]
    fn braces_are_text_unless_a_repetition() {
        assert!(m("/a2{x}", "/a2{x}"));
        assert!(!m("/a2{x}", "/a2x"));
        assert!(m("/{tile}/:z", "/{tile}/3"));
        assert!(m("/a}", "/a}"));
        assert!(m("/ab{2}", "/abb"));
        assert!(!m("/ab{2}", "/ab"));
        assert!(m("/ab{1,}c", "/abbbc"));
        // Escaped, as written: a brace (it was a backslash and a bare brace).
        assert!(m("/a\\{x\\}", "/a{x}"));
        assert!(m("/q\\{2\\}", "/q{2}"));
        assert!(m("/tiles/\\{z\\}/:x", "/tiles/{z}/3"));
    }

    #[test]
    fn the_spec_table() {
        assert!(m("/admin", "/admin") && m("/admin", "/admin/") && !m("/admin", "/admin/new"));
        assert!(
            m("/admin/*", "/admin/") && m("/admin/*", "/admin/x/y") && !m("/admin/*", "/admin")
        );
        assert!(
            m("/wms*", "/wms")
                && m("/wms*", "/wmsfoo")
                && m("/wms*", "/wms/a/b")
                && !m("/wms*", "/wm")
        );
        assert!(
            m("/users/:id", "/users/1")
                && !m("/users/:id", "/users/")
                && !m("/users/:id", "/users/1/x")
        );
    }

    /// A plugin's route (Kargo's `/metrics`, `/healthcheck`) as Express matches it.
    #[test]
    fn a_plugins_route_is_matched_as_express_matches_it() {
        for path in ["/metrics", "/metrics/", "/METRICS", "/Metrics/"] {
            assert!(m("/metrics", path), "{path}");
            assert!(m("/metrics/", path), "{path}");
        }
        for path in [
            "/metrics//",
            "/metric",
            "/metricsx",
            "/metrics/x",
            "/",
            "",
            "//metrics",
        ] {
            assert!(!m("/metrics", path), "{path}");
        }
        assert!(m("/", "/"));
    }

    #[test]
    fn case_insensitive_and_optional_params() {
        assert!(m("/WMS*", "/wms/x"));
        assert!(m("/Admin", "/ADMIN"));
        assert!(m("/users/:id?", "/users") && m("/users/:id?", "/users/7"));
        assert!(m("/files/:name.:ext", "/files/a.png"));
        assert!(m("/n/:id(\\d+)", "/n/12") && !m("/n/:id(\\d+)", "/n/ab"));
    }

    #[test]
    fn strip_position() {
        assert_eq!(
            PathMatcher::express("/wms*").map(|p| p.strip_at),
            Ok(Some(4))
        );
        assert_eq!(
            PathMatcher::express("/api/*/then/*").map(|p| p.strip_at),
            Ok(Some(5))
        );
        assert_eq!(
            PathMatcher::express("/capture").map(|p| p.strip_at),
            Ok(None)
        );
    }

    #[test]
    fn literal_starts() {
        let start = |p: &str| {
            PathMatcher::express(p)
                .expect("compiles")
                .literal_start()
                .to_string()
        };
        assert_eq!(start("/svc9/*"), "/svc9/");
        assert_eq!(start("/wms*"), "/wms");
        assert_eq!(start("/Admin/"), "/admin");
        assert_eq!(start("/users/:id?"), "/users");
        assert_eq!(start("/ab?c"), "/a");
        assert_eq!(start("/a/(b)"), "/a");
    }

    proptest::proptest! {
        /// The literal start only spares the regex, and a prefix pattern matches without it:
        /// neither ever decides otherwise than the pattern's regex.
        #[test]
        fn shortcuts_decide_as_the_pattern_does(
            pattern in "(/[aB1:*?+.()]{0,4}){1,3}/?\\*?",
            path in "(/[aAbB1.]{0,4}){0,4}/?",
        ) {
            if let Ok(m) = PathMatcher::express(&pattern) {
                if matches!(m.kind, Kind::Pattern { .. } | Kind::Prefix(_)) {
                    let re = Regex::new(&express_to_regex(&pattern)).expect("compiles");
                    proptest::prop_assert_eq!(re.is_match(&path), m.matches(&path), "{} {}", pattern, path);
                }
            }
        }
    }

    #[test]
    fn path_regex_is_unanchored_and_case_sensitive() {
        let p = PathMatcher::regex("tiles/[0-9]+").expect("compiles");
        assert!(p.matches("/a/tiles/12/x"));
        assert!(!p.matches("/a/TILES/12"));
    }
}
