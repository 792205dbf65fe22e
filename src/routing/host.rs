//! Host matching as EG's `vhost` does it: `*` or nothing = any host; a glob whose `*` stands for
//! one or more characters of one DNS label (`*.example.com`, `tiles-*.example.com`), compared
//! case-insensitively with the Host header minus its port; or an anchored, case-insensitive
//! `hostRegex`.

use regex::Regex;

use crate::pipeline::context::strip_port;

#[derive(Debug)]
pub enum HostMatcher {
    Any,
    /// Labels of the glob, lower-cased; `None` is a `*` label.
    Glob(Vec<Option<Label>>),
    Regex(Regex),
}

impl HostMatcher {
    pub fn glob(host: Option<&str>) -> HostMatcher {
        match host.map(str::trim) {
            None | Some("") | Some("*") => HostMatcher::Any,
            Some(h) => HostMatcher::Glob(
                h.split('.')
                    .map(|label| (label != "*").then(|| Label::of(label)))
                    .collect(),
            ),
        }
    }

    pub fn regex(pattern: &str) -> Result<HostMatcher, String> {
        Regex::new(&format!("(?i)^(?:{pattern})$"))
            .map(HostMatcher::Regex)
            .map_err(|e| crate::pipeline::condition::short_reason(&e.to_string()))
    }

    /// The one host name this matches (lower-cased), when it is a glob without a `*` label.
    pub fn exact_name(&self) -> Option<String> {
        match self {
            HostMatcher::Glob(labels) => labels
                .iter()
                .map(|l| match l {
                    Some(Label::Exact(name)) => Some(name.as_str()),
                    _ => None,
                })
                .collect::<Option<Vec<&str>>>()
                .map(|l| l.join(".")),
            _ => None,
        }
    }

    /// `host` is the Host header as sent (with its port), if any.
    pub fn matches(&self, host: Option<&str>) -> bool {
        match self {
            HostMatcher::Any => true,
            HostMatcher::Glob(labels) => {
                let Some(host) = host else { return false };
                let name = strip_port(host);
                let mut parts = name.split('.');
                for label in labels {
                    match (parts.next(), label) {
                        (Some(p), None) if !p.is_empty() => {}
                        (Some(p), Some(l)) if l.matches(p) => {}
                        _ => return false,
                    }
                }
                parts.next().is_none()
            }
            HostMatcher::Regex(re) => host.is_some_and(|h| re.is_match(strip_port(h))),
        }
    }
}

/// One label of a host glob, lower-cased.
#[derive(Debug)]
pub enum Label {
    Exact(String),
    /// The text around its `*`s, each of which stands for one or more characters.
    Wild(Vec<String>),
}

impl Label {
    fn of(label: &str) -> Label {
        let lower = label.to_ascii_lowercase();
        if lower.contains('*') {
            Label::Wild(lower.split('*').map(str::to_string).collect())
        } else {
            Label::Exact(lower)
        }
    }

    fn matches(&self, part: &str) -> bool {
        match self {
            Label::Exact(l) => part.eq_ignore_ascii_case(l),
            Label::Wild(pieces) => wild(part.as_bytes(), pieces),
        }
    }
}

/// Whether `text` is `pieces` (two or more, lower-cased) with one or more characters between
/// each two, ignoring case. Each middle piece is taken where it first fits: linear in the
/// text, whatever a client sends as its Host.
fn wild(text: &[u8], pieces: &[String]) -> bool {
    let (Some(first), Some(last)) = (pieces.first(), pieces.last()) else {
        return text.is_empty();
    };
    let (first, last) = (first.as_bytes(), last.as_bytes());
    if pieces.len() < 2 || text.len() < first.len() + last.len() + pieces.len() - 1 {
        return false;
    }
    let end = text.len() - last.len();
    if !text[..first.len()].eq_ignore_ascii_case(first) || !text[end..].eq_ignore_ascii_case(last) {
        return false;
    }
    let mut at = first.len();
    for piece in &pieces[1..pieces.len() - 1] {
        let piece = piece.as_bytes();
        // The `*` before it takes one character at least.
        at += 1;
        let found = (at..=end.saturating_sub(piece.len()))
            .find(|&i| text[i..i + piece.len()].eq_ignore_ascii_case(piece));
        match found {
            Some(i) => at = i + piece.len(),
            None => return false,
        }
    }
    // And the last `*`.
    at < end
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn star_is_one_label() {
        let g = HostMatcher::glob(Some("*.acme.com"));
        assert!(g.matches(Some("a.acme.com")));
        assert!(g.matches(Some("A.ACME.com:8080")));
        assert!(!g.matches(Some("acme.com")));
        assert!(!g.matches(Some("b.a.acme.com")));
        assert!(!g.matches(None));
    }

    /// As EG's `vhost`: a `*` inside a label stands for one or more characters of it.
    #[test]
    fn star_inside_a_label() {
        let g = HostMatcher::glob(Some("tiles-*.example.com"));
        assert!(g.matches(Some("tiles-a.example.com")));
        assert!(g.matches(Some("TILES-eu1.example.com:443")));
        assert!(!g.matches(Some("tiles-.example.com")));
        assert!(!g.matches(Some("tiles-a.b.example.com")));
        assert!(!g.matches(Some("maps-a.example.com")));
        assert_eq!(g.exact_name(), None);
        let g = HostMatcher::glob(Some("a*b*c.x"));
        assert!(g.matches(Some("a1b2c.x")));
        assert!(!g.matches(Some("abc.x")));
        assert!(!g.matches(Some("a1b2c3.x")));
    }

    #[test]
    fn any_and_regex() {
        assert!(HostMatcher::glob(Some("*")).matches(None));
        assert!(HostMatcher::glob(None).matches(Some("x")));
        let r = HostMatcher::regex("(a|b)\\.example\\.org").expect("compiles");
        assert!(r.matches(Some("A.example.org:80")));
        assert!(!r.matches(Some("c.example.org")));
        assert!(!r.matches(Some("xa.example.org")));
    }
}
