//! YAML tags as Express Gateway's reader (js-yaml 3's `load`, its full schema) takes them:
//! those of YAML's core types and js-yaml's own `!!js/…` ones, and no other (a file with `!Ref`
//! or `!!python/object` is refused there). A `!!js/…` value is read as the text it is written
//! with.

use super::Pos;
use crate::config::error::ConfigError;

/// The tags Express Gateway's reader knows: YAML's core types', and js-yaml's own.
const KNOWN_TAGS: [&str; 15] = [
    "str",
    "int",
    "float",
    "bool",
    "null",
    "seq",
    "map",
    "binary",
    "timestamp",
    "omap",
    "pairs",
    "set",
    "js/regexp",
    "js/undefined",
    "js/function",
];

/// Whether `tag` is one of [`KNOWN_TAGS`] (`!!str`, `!<tag:yaml.org,2002:str>`) or the
/// non-specific `!`.
fn known(tag: &yaml_rust2::parser::Tag) -> bool {
    const CORE: &str = "tag:yaml.org,2002:";
    let suffix = match tag.handle.as_str() {
        "!!" | CORE => tag.suffix.as_str(),
        // (The non-specific `!` has no handle.)
        "" if tag.suffix == "!" => return true,
        "" => match tag.suffix.strip_prefix(CORE) {
            Some(s) => s,
            None => return false,
        },
        _ => return false,
    };
    KNOWN_TAGS.contains(&suffix)
}

/// The error for `tag` at `pos` when Express Gateway's reader does not know it.
pub(super) fn unknown(tag: &yaml_rust2::parser::Tag, pos: &Pos) -> Option<ConfigError> {
    if known(tag) {
        return None;
    }
    let written = match tag.handle.as_str() {
        "" => format!("!<{}>", tag.suffix),
        "tag:yaml.org,2002:" => format!("!!{}", tag.suffix),
        handle => format!("{handle}{}", tag.suffix),
    };
    Some(ConfigError::new(
        pos,
        format!("unknown YAML tag `{written}`: Express Gateway's reader refuses the file (a string is written without one, or with `!!str`)"),
    ))
}
