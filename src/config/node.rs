//! A YAML/JSON document as a tree whose every node knows where it was written, so that config
//! errors can point at `file:line:column`. Anchors, aliases and `<<` merge keys are resolved.

use std::collections::HashMap;
use std::sync::Arc;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

use super::error::{ConfigError, Pos};
use super::interpolate::Places;

mod tags;

/// A value with the position it was written at.
#[derive(Clone, Debug)]
pub struct Node {
    pub pos: Pos,
    pub value: Value,
}

#[derive(Clone, Debug)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    Map(Vec<(Node, Node)>),
}

impl Node {
    pub fn null(pos: Pos) -> Node {
        Node {
            pos,
            value: Value::Null,
        }
    }

    pub fn is_null(&self) -> bool {
        matches!(self.value, Value::Null)
    }

    pub fn as_str(&self) -> Option<&str> {
        match &self.value {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_seq(&self) -> Option<&[Node]> {
        match &self.value {
            Value::Seq(items) => Some(items),
            _ => None,
        }
    }

    pub fn as_map(&self) -> Option<&[(Node, Node)]> {
        match &self.value {
            Value::Map(entries) => Some(entries),
            _ => None,
        }
    }

    /// The text of a scalar as a map key or a name (numbers and booleans spelled out).
    pub fn scalar_text(&self) -> Option<String> {
        match &self.value {
            Value::Str(s) => Some(s.clone()),
            Value::Int(i) => Some(i.to_string()),
            Value::Float(f) => Some(f.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            Value::Null => Some("null".to_string()),
            _ => None,
        }
    }

    /// The value under `key` in a map node.
    pub fn get(&self, key: &str) -> Option<&Node> {
        self.as_map()?
            .iter()
            .find(|(k, _)| k.scalar_text().as_deref() == Some(key))
            .map(|(_, v)| v)
    }

    /// A short name of the node's kind, for error messages.
    pub fn kind(&self) -> &'static str {
        match self.value {
            Value::Null => "null",
            Value::Bool(_) => "a boolean",
            Value::Int(_) | Value::Float(_) => "a number",
            Value::Str(_) => "a string",
            Value::Seq(_) => "a list",
            Value::Map(_) => "a map",
        }
    }

    /// The node as JSON, as the Admin API serves it: a number JSON has not (`.nan`, `.inf`,
    /// `1e999`) is `null`, as EG's `JSON.stringify` writes it.
    pub fn to_json(&self) -> serde_json::Value {
        self.json(false)
    }

    /// The node as JSON for reading parameters with serde: a number JSON has not is its text
    /// as Node writes it (`NaN`, `Infinity`, `-Infinity`), which no numeric parameter takes —
    /// as `null` it read as not set, and a `readTimeout` of `.inf` was no timeout, silently.
    pub fn to_param_json(&self) -> serde_json::Value {
        self.json(true)
    }

    fn json(&self, params: bool) -> serde_json::Value {
        use serde_json::Value as J;
        match &self.value {
            Value::Null => J::Null,
            Value::Bool(b) => J::Bool(*b),
            Value::Int(i) => J::from(*i),
            Value::Float(f) => match serde_json::Number::from_f64(*f) {
                Some(n) => J::Number(n),
                None if !params => J::Null,
                None if f.is_nan() => J::String("NaN".into()),
                None if *f > 0.0 => J::String("Infinity".into()),
                None => J::String("-Infinity".into()),
            },
            Value::Str(s) => J::String(s.clone()),
            Value::Seq(items) => J::Array(items.iter().map(|n| n.json(params)).collect()),
            Value::Map(entries) => J::Object(
                entries
                    .iter()
                    .map(|(k, v)| (k.scalar_text().unwrap_or_default(), v.json(params)))
                    .collect(),
            ),
        }
    }

    /// The deepest node along a serde path (as printed by `serde_path_to_error`), for pointing
    /// a deserialisation error at the value that caused it.
    pub fn locate(&self, path: &serde_path_to_error::Path) -> &Node {
        use serde_path_to_error::Segment;
        let mut node = self;
        for seg in path.iter() {
            let next = match seg {
                Segment::Map { key } => node.get(key),
                Segment::Seq { index } => node.as_seq().and_then(|s| s.get(*index)),
                _ => None,
            };
            match next {
                Some(n) => node = n,
                None => break,
            }
        }
        node
    }
}

/// The reason [`parse`] gives a text YAML's syntax does not allow.
const SYNTAX: &str = "invalid YAML: ";

/// Whether an error of [`parse`] is one of YAML's syntax (not a key given twice, say).
pub fn is_syntax_error(e: &ConfigError) -> bool {
    e.reason.starts_with(SYNTAX)
}

/// Parses a whole document. An empty document is a null node.
pub fn parse(text: &str, file: &Arc<str>) -> Result<Node, ConfigError> {
    parse_placed(text, file, &Places::default())
}

/// Parses a whole document interpolated from a file (see [`Places`]): positions are the
/// file's.
pub fn parse_placed(text: &str, file: &Arc<str>, places: &Places) -> Result<Node, ConfigError> {
    if let Some((line, col, byte)) = unprintable(text) {
        let (line, col) = places.in_file((line, col));
        return Err(ConfigError::new(
            &Pos::new(file, line, col + 1),
            format!("{SYNTAX}a control character (0x{byte:02x}) where YAML allows none"),
        ));
    }
    let mut builder = TreeBuilder {
        places,
        file: file.clone(),
        stack: Vec::new(),
        anchors: HashMap::new(),
        root: None,
        duplicate: None,
        second_document: None,
        aliased: 0,
        too_many_aliased: None,
        too_deep: None,
        unknown_tag: None,
    };
    let mut parser = Parser::new_from_str(text);
    // Every document, so that a second one is seen (and refused). Event by event (the parser's
    // own `load` recurses once per level of nesting, and thousands of levels overflowed the
    // stack before the tree could refuse them), up to the first level too deep.
    loop {
        let (ev, mark) = match parser.next_token() {
            Ok(event) => event,
            Err(e) => {
                return Err(ConfigError::new(
                    &builder.pos(*e.marker()),
                    format!("{SYNTAX}{}", e.info()),
                ))
            }
        };
        let end = ev == Event::StreamEnd;
        builder.on_event(ev, mark);
        if end || builder.too_deep.is_some() {
            break;
        }
    }
    if let Some(e) = builder
        .too_deep
        .or(builder.too_many_aliased)
        .or(builder.duplicate)
        .or(builder.second_document)
        .or(builder.unknown_tag)
    {
        return Err(e);
    }
    Ok(builder
        .root
        .unwrap_or_else(|| Node::null(Pos::file_start(file))))
}

enum Frame {
    Seq {
        pos: Pos,
        anchor: usize,
        items: Vec<Node>,
    },
    Map {
        pos: Pos,
        anchor: usize,
        entries: Vec<(Node, Node)>,
        key: Option<Node>,
    },
}

struct TreeBuilder<'a> {
    places: &'a Places,
    file: Arc<str>,
    stack: Vec<Frame>,
    anchors: HashMap<usize, Node>,
    root: Option<Node>,
    /// The first key given twice in one map (Express Gateway's YAML reader refuses the file).
    duplicate: Option<ConfigError>,
    /// A document after the first (Express Gateway's YAML reader refuses the file; read, the
    /// rest would be ignored without a word).
    second_document: Option<ConfigError>,
    /// Values the aliases so far stand for: an alias is a copy of its anchor's value, and
    /// nested aliases grow a small file into billions of values.
    aliased: usize,
    /// The alias past [`ALIASED_MAX`].
    too_many_aliased: Option<ConfigError>,
    /// The collection past [`DEPTH_MAX`]; the events after it are not built into the tree.
    too_deep: Option<ConfigError>,
    /// The first tag Express Gateway's YAML reader does not know (it refuses the file).
    unknown_tag: Option<ConfigError>,
}

/// The deepest a file's collections may nest: far more than any config's (Kargo's nest about
/// eight deep), far less than what the recursive reading of the tree (and its drop) would
/// overflow a thread's stack with — a few thousand `- ` in 10 KB aborted the gateway, on a
/// reload too.
const DEPTH_MAX: usize = 100;

/// The first character YAML does not allow in a stream (a C0 control but tab, line feed and
/// carriage return; DEL): its line (from 1), column (from 0, in characters) and byte. A NUL
/// ended the parser's reading of the file there, and the rest of it was ignored without a word.
fn unprintable(text: &str) -> Option<(usize, usize, u8)> {
    let at = text
        .bytes()
        .position(|b| (b < 0x20 && !matches!(b, b'\t' | b'\n' | b'\r')) || b == 0x7f)?;
    let before = &text[..at];
    let line = before.bytes().filter(|b| *b == b'\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    Some((
        line,
        before[line_start..].chars().count(),
        text.as_bytes()[at],
    ))
}

/// The most values a file's aliases may stand for, together: far more than any config's, far
/// less than what exhausts the gateway's memory (a string counts a value per 64 bytes).
const ALIASED_MAX: usize = 100_000;

/// How deep `node`'s collections nest (a scalar 0), counted up to `limit` + 1.
fn height(node: &Node, limit: usize) -> usize {
    let children: Box<dyn Iterator<Item = &Node>> = match &node.value {
        Value::Seq(items) => Box::new(items.iter()),
        Value::Map(entries) => Box::new(entries.iter().flat_map(|(k, v)| [k, v])),
        _ => return 0,
    };
    if limit == 0 {
        return 1;
    }
    let mut deepest = 0;
    for c in children {
        deepest = deepest.max(height(c, limit - 1));
        if deepest >= limit {
            break;
        }
    }
    1 + deepest
}

/// The values in `node` (itself included; a string one per 64 bytes), counted up to `limit`.
fn values_in(node: &Node, limit: usize) -> usize {
    let mut n = match &node.value {
        Value::Str(text) => 1 + text.len() / 64,
        _ => 1,
    };
    let mut children = |nodes: &mut dyn Iterator<Item = &Node>| {
        for c in nodes {
            if n > limit {
                break;
            }
            n += values_in(c, limit - n.min(limit));
        }
    };
    match &node.value {
        Value::Seq(items) => children(&mut items.iter()),
        Value::Map(entries) => children(&mut entries.iter().flat_map(|(k, v)| [k, v])),
        _ => {}
    }
    n
}

impl TreeBuilder<'_> {
    fn pos(&self, mark: Marker) -> Pos {
        let (line, col) = self.places.in_file((mark.line(), mark.col()));
        Pos::new(&self.file, line, col + 1)
    }

    fn finish(&mut self, node: Node, anchor: usize) {
        if anchor > 0 {
            self.anchors.insert(anchor, node.clone());
        }
        match self.stack.last_mut() {
            None => {
                if self.root.is_none() {
                    self.root = Some(node);
                } else if self.second_document.is_none() {
                    self.second_document = Some(ConfigError::new(
                        &node.pos,
                        "a second YAML document: a config file is one document (`---` starts another)",
                    ));
                }
            }
            Some(Frame::Seq { items, .. }) => items.push(node),
            Some(Frame::Map { entries, key, .. }) => match key.take() {
                None => *key = Some(node),
                Some(k) => entries.push((k, node)),
            },
        }
    }
}

impl MarkedEventReceiver for TreeBuilder<'_> {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        if self.too_deep.is_some() {
            return;
        }
        let pos = self.pos(mark);
        if let Event::Scalar(_, _, _, Some(tag))
        | Event::SequenceStart(_, Some(tag))
        | Event::MappingStart(_, Some(tag)) = &ev
        {
            if self.unknown_tag.is_none() {
                self.unknown_tag = tags::unknown(tag, &pos);
            }
        }
        if matches!(ev, Event::SequenceStart(..) | Event::MappingStart(..))
            && self.stack.len() >= DEPTH_MAX
        {
            self.too_deep = Some(ConfigError::new(
                &pos,
                format!("collections nested more than {DEPTH_MAX} deep"),
            ));
            return;
        }
        match ev {
            Event::Scalar(text, style, anchor, tag) => {
                // `!!str` makes a plain scalar a string (`!!str 0123`, `!!str true`).
                let string_tag = tag.is_some_and(|t| {
                    t.suffix == "str" && (t.handle == "!!" || t.handle == "tag:yaml.org,2002:")
                });
                let value = if style == TScalarStyle::Plain && !string_tag {
                    resolve_plain(text)
                } else {
                    Value::Str(text)
                };
                self.finish(Node { pos, value }, anchor);
            }
            Event::Alias(id) => {
                let room = ALIASED_MAX.saturating_sub(self.aliased);
                let node = match self.anchors.get(&id) {
                    // A copy of its anchor's value where it stands: nested as deep as it is,
                    // below this place (a chain of anchors, each aliasing the one before, grew
                    // past any limit on the file's own nesting).
                    Some(anchored)
                        if self.stack.len() + height(anchored, DEPTH_MAX) > DEPTH_MAX =>
                    {
                        self.too_deep = Some(ConfigError::new(
                            &pos,
                            format!(
                                "collections nested more than {DEPTH_MAX} deep (through aliases)"
                            ),
                        ));
                        return;
                    }
                    Some(anchored) if self.too_many_aliased.is_none() => {
                        let n = values_in(anchored, room);
                        self.aliased += n;
                        if n > room {
                            self.too_many_aliased = Some(ConfigError::new(
                                &pos,
                                format!("the file's aliases stand for more than {ALIASED_MAX} values (aliases nested in aliases?)"),
                            ));
                            Node::null(pos)
                        } else {
                            anchored.clone()
                        }
                    }
                    _ => Node::null(pos),
                };
                self.finish(node, 0);
            }
            Event::SequenceStart(anchor, _) => self.stack.push(Frame::Seq {
                pos,
                anchor,
                items: Vec::new(),
            }),
            Event::MappingStart(anchor, _) => self.stack.push(Frame::Map {
                pos,
                anchor,
                entries: Vec::new(),
                key: None,
            }),
            Event::SequenceEnd => {
                if let Some(Frame::Seq { pos, anchor, items }) = self.stack.pop() {
                    self.finish(
                        Node {
                            pos,
                            value: Value::Seq(items),
                        },
                        anchor,
                    );
                }
            }
            Event::MappingEnd => {
                if let Some(Frame::Map {
                    pos,
                    anchor,
                    entries,
                    ..
                }) = self.stack.pop()
                {
                    if self.duplicate.is_none() {
                        self.duplicate = duplicate_key(&entries).or_else(|| bad_merge(&entries));
                    }
                    // A block map is marked where its first key's `:` is: it is where its
                    // first key begins.
                    let pos = match entries.first() {
                        Some((k, _)) if (k.pos.line, k.pos.col) < (pos.line, pos.col) => {
                            k.pos.clone()
                        }
                        _ => pos,
                    };
                    let value = Value::Map(apply_merge_keys(entries));
                    self.finish(Node { pos, value }, anchor);
                }
            }
            _ => {}
        }
    }
}

/// A `<<` whose value is no map, nor a list of maps: EG's reader refuses it (it merges maps
/// only); dropped, it left out whatever the file meant to bring there.
fn bad_merge(entries: &[(Node, Node)]) -> Option<ConfigError> {
    let (_, v) = entries.iter().find(|(k, v)| {
        k.as_str() == Some("<<")
            && match &v.value {
                Value::Map(_) => false,
                Value::Seq(items) => items.iter().any(|i| !matches!(i.value, Value::Map(_))),
                _ => true,
            }
    })?;
    Some(ConfigError::new(
        &v.pos,
        format!(
            "`<<` merges maps only (an alias of a map, or a list of them), not {}",
            v.kind()
        ),
    ))
}

/// A key a map's own entries (not those merged in with `<<`) give twice.
fn duplicate_key(entries: &[(Node, Node)]) -> Option<ConfigError> {
    let mut seen: HashMap<String, usize> = HashMap::with_capacity(entries.len());
    for (k, _) in entries {
        let Some(name) = k.scalar_text().filter(|n| n != "<<") else {
            continue;
        };
        if let Some(first) = seen.get(&name) {
            return Some(ConfigError::new(
                &k.pos,
                format!("duplicated mapping key `{name}` (first at line {first})"),
            ));
        }
        seen.insert(name, k.pos.line);
    }
    None
}

/// Resolves `<<: *anchor` (or a list of them) as EG's reader (js-yaml) does: their entries
/// come where the `<<` stands, each unless the map has its key already (from before the `<<`
/// or an earlier source); a key of the map's own after it takes the merged entry's value in
/// its place. (The order matters: routes are tried in the order their endpoints are listed.)
fn apply_merge_keys(entries: Vec<(Node, Node)>) -> Vec<(Node, Node)> {
    if !entries.iter().any(|(k, _)| k.as_str() == Some("<<")) {
        return entries;
    }
    // Each entry, and whether it came from a merge (a later own key replaces it in place).
    let mut out: Vec<(Node, Node, bool)> = Vec::new();
    let position = |out: &[(Node, Node, bool)], k: &Node| {
        let name = k.scalar_text();
        out.iter().position(|(ok, _, _)| ok.scalar_text() == name)
    };
    for (k, v) in entries {
        if k.as_str() == Some("<<") {
            let sources: Vec<Node> = match v.value {
                Value::Seq(items) => items,
                _ => vec![v],
            };
            for src in sources {
                if let Value::Map(src_entries) = src.value {
                    for (sk, sv) in src_entries {
                        if position(&out, &sk).is_none() {
                            out.push((sk, sv, true));
                        }
                    }
                }
            }
            continue;
        }
        match position(&out, &k) {
            Some(i) if out[i].2 => out[i] = (k, v, false),
            _ => out.push((k, v, false)),
        }
    }
    out.into_iter().map(|(k, v, _)| (k, v)).collect()
}

/// Types a plain (unquoted) scalar as YAML's core schema does.
fn resolve_plain(text: String) -> Value {
    match text.as_str() {
        "" | "~" | "null" | "Null" | "NULL" => return Value::Null,
        "true" | "True" | "TRUE" => return Value::Bool(true),
        "false" | "False" | "FALSE" => return Value::Bool(false),
        ".inf" | ".Inf" | ".INF" | "+.inf" => return Value::Float(f64::INFINITY),
        "-.inf" | "-.Inf" | "-.INF" => return Value::Float(f64::NEG_INFINITY),
        ".nan" | ".NaN" | ".NAN" => return Value::Float(f64::NAN),
        _ => {}
    }
    if let Some(i) = yaml11_int(&text) {
        return Value::Int(i);
    }
    // Digits after a leading `0` that are no octal number (`0189`, `08080`) are text to EG's
    // reader: a password or key of digits given in a variable stays what it is.
    let unsigned = text.strip_prefix(['-', '+']).unwrap_or(&text);
    if unsigned.len() > 1
        && unsigned.starts_with('0')
        && unsigned.bytes().all(|b| b.is_ascii_digit())
    {
        return Value::Str(text);
    }
    if let Ok(i) = text.parse::<i64>() {
        return Value::Int(i);
    }
    if let Some(hex) = text.strip_prefix("0x") {
        if let Ok(i) = i64::from_str_radix(hex, 16) {
            return Value::Int(i);
        }
    }
    if let Some(oct) = text.strip_prefix("0o") {
        if let Ok(i) = i64::from_str_radix(oct, 8) {
            return Value::Int(i);
        }
    }
    let looks_numeric = text
        .bytes()
        .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'+' | b'-'))
        && text.bytes().any(|b| b.is_ascii_digit());
    if looks_numeric {
        if let Ok(f) = text.parse::<f64>() {
            return Value::Float(f);
        }
    }
    Value::Str(text)
}

/// The integers EG's YAML reader (js-yaml, YAML 1.1's forms) reads where YAML 1.2 reads
/// text or another number: `_` between digits (`120_000`), a leading `0` for octal (`0755`),
/// `0b` for binary.
fn yaml11_int(text: &str) -> Option<i64> {
    let (negative, body) = match text.as_bytes().first()? {
        b'-' => (true, &text[1..]),
        b'+' => (false, &text[1..]),
        _ => (false, text),
    };
    let digits = |s: &str, radix: u32| -> Option<i64> {
        let clean: String = s.chars().filter(|&c| c != '_').collect();
        if clean.is_empty() || s.starts_with('_') || s.ends_with('_') {
            return None;
        }
        i64::from_str_radix(&clean, radix).ok()
    };
    let value = if let Some(bin) = body.strip_prefix("0b") {
        digits(bin, 2)?
    } else if body.len() > 1
        && body.starts_with('0')
        && body[1..].bytes().all(|b| matches!(b, b'0'..=b'7' | b'_'))
    {
        digits(&body[1..], 8)?
    } else if body.contains('_') && body.bytes().all(|b| b.is_ascii_digit() || b == b'_') {
        digits(body, 10)?
    } else {
        return None;
    };
    Some(if negative { -value } else { value })
}

#[cfg(test)]
mod tests;
