//! Header names with value expressions, as the transformers and `headers` take them
//! (`{X-Name: "'literal'" | req.headers.x | 5}`), compiled once.

use http::header::{HeaderName, HeaderValue};

use crate::config::error::ConfigErrors;
use crate::config::node::{Node, Value};
use crate::pipeline::context::HeaderEdit;
use crate::pipeline::expr::Expr;
use crate::pipeline::{Exchange, Request};

/// A header to set, with the expression that gives its value.
pub struct HeaderExpr {
    pub name: HeaderName,
    pub value: Expr,
    /// The value, pre-built when the expression does not depend on the request.
    pub fixed: Option<HeaderValue>,
}

impl HeaderExpr {
    pub fn edit(&self, req: &Request<'_>, x: &Exchange) -> Option<HeaderEdit> {
        let value = match &self.fixed {
            Some(v) => v.clone(),
            None => node_header_value(&self.value.eval_header(req, x)?)?,
        };
        Some(HeaderEdit::Set(self.name.clone(), value))
    }
}

/// `text` as Node's `setHeader` writes it: each character a byte (Latin-1), refused when one is
/// past U+00FF or a control character other than tab.
fn node_header_value(text: &str) -> Option<HeaderValue> {
    if text.is_ascii() {
        return HeaderValue::from_str(text).ok();
    }
    let bytes = text
        .chars()
        .map(|c| u8::try_from(u32::from(c)).ok())
        .collect::<Option<Vec<u8>>>()?;
    HeaderValue::from_bytes(&bytes).ok()
}

/// What makes `text` no header value, said without the value (it may be a credential).
fn refused_char(text: &str) -> String {
    let (at, c) = text
        .chars()
        .enumerate()
        .find(|(_, c)| matches!(u32::from(*c), 0..=8 | 0x0A..=0x1F | 0x7F | 0x100..))
        .unwrap_or((0, '?'));
    format!("its character {} (U+{:04X})", at + 1, u32::from(c))
}

/// Compiles `{name: expression}` (with an optional name prefix).
pub fn compile_map(
    node: &Node,
    prefix: &str,
    what: &str,
    errors: &mut ConfigErrors,
) -> Vec<HeaderExpr> {
    let Some(entries) = node.as_map() else {
        if !node.is_null() {
            errors.push(
                &node.pos,
                format!(
                    "`{what}` must be a map of header names to values, not {}",
                    node.kind()
                ),
            );
        }
        return Vec::new();
    };
    let mut out = Vec::new();
    for (k, v) in entries {
        let key = k.scalar_text().unwrap_or_default();
        let name = match HeaderName::from_bytes(
            format!("{prefix}{key}").to_ascii_lowercase().as_bytes(),
        ) {
            Ok(n) => n,
            Err(_) => {
                errors.push(
                    &k.pos,
                    format!("`{prefix}{key}` is not a valid header name"),
                );
                continue;
            }
        };
        let expr = match &v.value {
            Value::Str(s) => Expr::parse(s),
            Value::Int(_) | Value::Float(_) | Value::Bool(_) => {
                Ok(Expr::literal(v.scalar_text().unwrap_or_default()))
            }
            _ => Err(format!("must be a string or a number, not {}", v.kind())),
        };
        match expr {
            Ok(value) => {
                let fixed = match value.as_literal() {
                    None => None,
                    Some(s) => match node_header_value(&s) {
                        Some(v) => Some(v),
                        None => {
                            // EG's `setHeader` throws on every request; refused here, once.
                            errors.push(
                                &v.pos,
                                format!(
                                    "value of header `{key}` in `{what}`: {} cannot be in a header value (Node refuses it)",
                                    refused_char(&s)
                                ),
                            );
                            continue;
                        }
                    },
                };
                out.push(HeaderExpr { name, value, fixed });
            }
            Err(why) => errors.push(
                &v.pos,
                format!("value of header `{key}` in `{what}`: {why}"),
            ),
        }
    }
    out
}

/// Compiles `remove: [names]`.
pub fn compile_remove(node: &Node, what: &str, errors: &mut ConfigErrors) -> Vec<HeaderName> {
    let Some(items) = node.as_seq() else {
        errors.push(
            &node.pos,
            format!(
                "`{what}.remove` must be a list of header names, not {}",
                node.kind()
            ),
        );
        return Vec::new();
    };
    items
        .iter()
        .filter_map(|n| {
            let name = n
                .scalar_text()
                .and_then(|s| HeaderName::from_bytes(s.to_ascii_lowercase().as_bytes()).ok());
            if name.is_none() {
                errors.push(&n.pos, "not a valid header name");
            }
            name
        })
        .collect()
}

/// `headers: {add: {...}, remove: [...]}` of the transformers.
pub struct AddRemove {
    pub add: Vec<HeaderExpr>,
    pub remove: Vec<HeaderName>,
}

impl AddRemove {
    pub fn compile(node: Option<&Node>, what: &str, errors: &mut ConfigErrors) -> AddRemove {
        let add = node
            .and_then(|n| n.get("add"))
            .map(|n| compile_map(n, "", &format!("{what}.add"), errors))
            .unwrap_or_default();
        let remove = node
            .and_then(|n| n.get("remove"))
            .map(|n| compile_remove(n, what, errors))
            .unwrap_or_default();
        AddRemove { add, remove }
    }

    /// The edits for this request: additions first, then removals, as EG applies them.
    pub fn edits(&self, req: &Request<'_>, x: &Exchange) -> Vec<HeaderEdit> {
        let mut out = Vec::with_capacity(self.add.len() + self.remove.len());
        out.extend(self.add.iter().filter_map(|h| h.edit(req, x)));
        out.extend(self.remove.iter().cloned().map(HeaderEdit::Remove));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::node_header_value;

    #[test]
    fn values_are_written_as_node_writes_them() {
        assert_eq!(node_header_value("Basic").expect("ascii"), "Basic");
        assert_eq!(
            node_header_value("caf\u{e9}").expect("latin-1").as_bytes(),
            b"caf\xe9"
        );
        assert!(node_header_value("a\nb").is_none());
        assert!(node_header_value("\u{20ac}").is_none());
    }
}
