//! Host matching as EG's `vhost` does it: `*` or nothing = any host; a glob whose `*` is one DNS
//! label, compared case-insensitively with the Host header minus its port; or an anchored,
//! case-insensitive `hostRegex`.

use regex::Regex;

use crate::pipeline::context::strip_port;

#[derive(Debug)]
pub enum HostMatcher {
    Any,
    /// Labels of the glob, lower-cased; `None` is a `*` label.
    Glob(Vec<Option<String>>),
    Regex(Regex),
}

impl HostMatcher {
    pub fn glob(host: Option<&str>) -> HostMatcher {
        match host.map(str::trim) {
            None | Some("") | Some("*") => HostMatcher::Any,
            Some(h) => HostMatcher::Glob(
                h.split('.')
                    .map(|label| (label != "*").then(|| label.to_ascii_lowercase()))
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
                .map(|l| l.as_deref())
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
                        (Some(p), Some(l)) if p.eq_ignore_ascii_case(l) => {}
                        _ => return false,
                    }
                }
                parts.next().is_none()
            }
            HostMatcher::Regex(re) => host.is_some_and(|h| re.is_match(strip_port(h))),
        }
    }
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
