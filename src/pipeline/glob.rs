//! minimatch's patterns (3.x, its default options, as EG's `hostMatch` reads them) as anchored
//! regular expressions: `*` and `?` (not across `/`, nor a leading `.`), `[...]` classes
//! (`[!...]` and `[^...]` negated), `{a,b}` and `{1..3}` braces (nested too), `\` escapes, a
//! leading `!` negating the whole pattern and a leading `#` making it a comment (matching
//! nothing). minimatch's extended globs (`+(a|b)`, `@(...)`, `!(...)`, `?(...)`, `*(...)`) are
//! refused rather than read otherwise.

use regex::Regex;

/// A compiled pattern.
#[derive(Debug)]
pub struct Glob {
    /// One per pattern the braces expand to, each with whether it may match a text that
    /// begins with `.` (not when it begins with a wildcard: minimatch's `dot: false`); none: a
    /// comment, which matches nothing.
    alternatives: Vec<(Regex, bool)>,
    negated: bool,
}

impl Glob {
    pub fn new(pattern: &str) -> Result<Glob, String> {
        let bang = pattern.bytes().take_while(|&b| b == b'!').count();
        let rest = &pattern[bang..];
        if bang == 0 && pattern.starts_with('#') {
            return Ok(Glob {
                alternatives: Vec::new(),
                negated: false,
            });
        }
        let mut alternatives = Vec::new();
        for p in expand_braces(rest)? {
            let re = Regex::new(&format!("^(?:{})$", translate(&p)?))
                .map_err(|e| super::condition::short_reason(&e.to_string()))?;
            let dot_ok = !matches!(p.as_bytes().first(), Some(b'*' | b'?' | b'['));
            alternatives.push((re, dot_ok));
        }
        Ok(Glob {
            alternatives,
            negated: bang % 2 == 1,
        })
    }

    /// Whether `text` matches (an empty text matches nothing, as in minimatch).
    pub fn is_match(&self, text: &str) -> bool {
        let matched = !text.is_empty()
            && self
                .alternatives
                .iter()
                .any(|(re, dot_ok)| (*dot_ok || !text.starts_with('.')) && re.is_match(text));
        matched != self.negated
    }
}

/// The most patterns braces may expand to (`{1..100000}` would be a regex of that size).
const EXPANDED_MAX: usize = 1000;

/// The patterns `{...}` stands for, left to right (minimatch's brace expansion); a brace
/// without a comma or a range is kept as it is.
fn expand_braces(p: &str) -> Result<Vec<String>, String> {
    let b = p.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'\\' => i += 2,
            b'{' => {
                if let Some((close, parts)) = brace_parts(p, i) {
                    let (head, tail) = (&p[..i], &p[close + 1..]);
                    let mut out = Vec::new();
                    for part in parts {
                        for rest in expand_braces(&format!("{part}{tail}"))? {
                            out.push(format!("{head}{rest}"));
                            if out.len() > EXPANDED_MAX {
                                return Err(format!(
                                    "braces expand to more than {EXPANDED_MAX} patterns"
                                ));
                            }
                        }
                    }
                    return Ok(out);
                }
                i += 1;
            }
            _ => i += 1,
        }
    }
    Ok(vec![p.to_string()])
}

/// The matching `}` of the `{` at `open` and what the brace stands for: its comma-separated
/// parts, or the numbers (or letters) of a `a..b` range; `None` when it stands for itself.
fn brace_parts(p: &str, open: usize) -> Option<(usize, Vec<String>)> {
    let b = p.as_bytes();
    let (mut depth, mut i, mut start) = (0, open + 1, open + 1);
    let mut parts = Vec::new();
    while i < b.len() {
        match b[i] {
            b'\\' => i += 1,
            b'{' => depth += 1,
            b'}' if depth > 0 => depth -= 1,
            b'}' => {
                parts.push(p[start..i].to_string());
                if parts.len() > 1 {
                    return Some((i, parts));
                }
                return range(&parts[0]).map(|r| (i, r));
            }
            b',' if depth == 0 => {
                parts.push(p[start..i].to_string());
                start = i + 1;
            }
            _ => {}
        }
        i += 1;
    }
    None
}

/// `1..3`, `01..10` (padded to the wider bound), `1..9..2` (a step) or `a..e` (letters) as
/// its members, as brace expansion reads them; `None` for anything else (kept as written).
fn range(inner: &str) -> Option<Vec<String>> {
    let mut parts = inner.split("..");
    let (a, z, step) = (parts.next()?, parts.next()?, parts.next());
    if parts.next().is_some() {
        return None;
    }
    let step = match step {
        Some(s) => s.parse::<i64>().ok()?.unsigned_abs().max(1),
        None => 1,
    };
    if let (Ok(lo), Ok(hi)) = (a.parse::<i64>(), z.parse::<i64>()) {
        let n = lo.abs_diff(hi) / step;
        if n >= EXPANDED_MAX as u64 {
            return None;
        }
        // (In i128: no bound or step overflows.)
        let (lo, step) = (i128::from(lo), i128::from(step));
        let padded = |s: &str| {
            let digits = s.trim_start_matches('-');
            digits.len() > 1 && digits.starts_with('0')
        };
        let width = if padded(a) || padded(z) {
            a.len().max(z.len())
        } else {
            0
        };
        let dir: i128 = if lo <= i128::from(hi) { 1 } else { -1 };
        return Some(
            (0..=i128::from(n))
                .map(|k| {
                    let v = lo + dir * k * step;
                    if v < 0 {
                        format!("-{:0>w$}", -v, w = width.saturating_sub(1))
                    } else {
                        format!("{v:0>width$}")
                    }
                })
                .collect(),
        );
    }
    let (mut ac, mut zc) = (a.chars(), z.chars());
    let (Some(a), None, Some(z), None) = (ac.next(), ac.next(), zc.next(), zc.next()) else {
        return None;
    };
    if !(a.is_ascii_alphabetic() && z.is_ascii_alphabetic()) {
        return None;
    }
    // From the first bound towards the second, a step at a time.
    let (a, z) = (a as u8, z as u8);
    let members = a.abs_diff(z) as u64 / step;
    Some(
        (0..=members)
            .map(|k| {
                let off = (k * step) as u8;
                let c = if a <= z { a + off } else { a - off };
                (c as char).to_string()
            })
            .collect(),
    )
}

/// One brace-free pattern as a regex (unanchored).
fn translate(p: &str) -> Result<String, String> {
    let chars: Vec<char> = p.chars().collect();
    let mut re = String::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if matches!(c, '+' | '@' | '!' | '?' | '*') && chars.get(i + 1) == Some(&'(') {
            return Err(format!(
                "extended glob `{c}(...)` is not supported: use braces or a pathMatch regex"
            ));
        }
        match c {
            '\\' => {
                i += 1;
                if let Some(&e) = chars.get(i) {
                    re.push_str(&regex::escape(&e.to_string()));
                }
            }
            '*' => {
                while chars.get(i + 1) == Some(&'*') {
                    i += 1;
                }
                re.push_str("[^/]*");
            }
            '?' => re.push_str("[^/]"),
            '[' => match class(&chars, i) {
                Some((end, class)) => {
                    re.push_str(&class);
                    i = end;
                }
                None => re.push_str(r"\["),
            },
            c => re.push_str(&regex::escape(&c.to_string())),
        }
        i += 1;
    }
    Ok(re)
}

/// The class `[...]` opened at `open`: where it closes and its regex; `None` when it never
/// closes (a plain `[`).
fn class(chars: &[char], open: usize) -> Option<(usize, String)> {
    let mut i = open + 1;
    let mut out = String::from("[");
    if matches!(chars.get(i), Some('!' | '^')) {
        out.push('^');
        i += 1;
    }
    let first = i;
    while i < chars.len() {
        let c = chars[i];
        if c == ']' && i > first {
            out.push(']');
            return Some((i, out));
        }
        match c {
            '\\' => {
                i += 1;
                out.push_str(&regex::escape(&chars.get(i)?.to_string()));
            }
            '-' => out.push('-'),
            c => out.push_str(&regex::escape(&c.to_string())),
        }
        i += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::Glob;

    fn matches(pattern: &str, host: &str) -> bool {
        Glob::new(pattern).expect("pattern").is_match(host)
    }

    #[test]
    fn as_minimatch_reads_them() {
        assert!(matches("*.example.com", "a.example.com"));
        assert!(!matches("*.example.com", "example.com"));
        assert!(matches("*.example.com:*", "a.example.com:8080"));
        assert!(matches("{a,b}.example.com", "b.example.com"));
        assert!(!matches("{a,b}.example.com", "c.example.com"));
        assert!(matches("[xy].example.com", "x.example.com"));
        assert!(!matches("[!xy].example.com", "x.example.com"));
        assert!(matches("[^xy].example.com", "z.example.com"));
        assert!(matches("[a-c]?.example.com", "b7.example.com"));
        assert!(matches("tile{1..3}.example.com", "tile2.example.com"));
        assert!(!matches("tile{1..3}.example.com", "tile4.example.com"));
        assert!(matches("{a,{b,c}x}.example.com", "cx.example.com"));
        assert!(matches("!*.internal", "www.example.com"));
        assert!(!matches("!*.internal", "db.internal"));
        assert!(matches("!!*.internal", "db.internal"));
        assert!(!matches("#comment", "#comment"));
        assert!(matches(r"a\*b", "a*b"));
        assert!(!matches(r"a\*b", "axb"));
        assert!(matches("{solo}", "{solo}"));
        assert!(matches("a[b", "a[b"));
        assert!(!matches("*", ".hidden"));
        assert!(!matches("*.example.com", ".example.com"));
        assert!(matches("!*.internal", ".internal"));
        assert!(!matches("*", ""));
        assert!(!matches("[.a]b", ".b"));
        assert!(matches("tile{01..03}", "tile01"));
        assert!(!matches("tile{01..03}", "tile1"));
        assert!(matches("{1..9..2}", "3"));
        assert!(!matches("{1..9..2}", "4"));
        assert!(matches("{!..#}", "{!..#}"));
        assert!(matches("{a..e}x", "cx"));
        assert!(matches("{e..b..2}", "c") && !matches("{e..b..2}", "d"));
        assert!(matches(
            "{-9223372036854775808..9223372036854775807..9223372036854775807}",
            "-9223372036854775808"
        ));
        assert!(matches("Example.com", "Example.com"));
        assert!(!matches("Example.com", "example.com"));
    }

    #[test]
    fn extended_globs_and_huge_braces_are_refused() {
        assert!(Glob::new("+(a|b).example.com").is_err());
        assert!(Glob::new("@(a).example.com").is_err());
        assert!(Glob::new("{a,b}{c,d}{e,f}{g,h}{i,j}{k,l}{m,n}{o,p}{q,r}{s,t}{u,v}").is_err());
    }
}
