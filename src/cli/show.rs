//! `tollgate config show`: the merged view of a config stack, each file as it is in force, with
//! its secrets' values left out (a Redis password, a jwt secret, an S3 secret key, a URL's
//! password): the output is what an operator pastes into a ticket.

use crate::config::ConfigDirs;

/// What a secret's value is shown as (a YAML and JSON string both).
const REDACTED: &str = "\"<redacted>\"";

pub fn show_config(dirs: &ConfigDirs) -> i32 {
    match crate::lifecycle::inputs_of(dirs) {
        Ok(files) => {
            println!("# config stack: {}", dirs.display());
            println!("# (secrets' values are shown as {REDACTED})");
            for f in files {
                println!("\n# {}  from {}  (sha256 {})", f.name, f.dir, f.sha256);
                let is_config = [".yml", ".yaml", ".json"]
                    .iter()
                    .any(|ext| f.name.ends_with(ext));
                if !is_config {
                    println!("# (a key file: its content is not shown)");
                    continue;
                }
                match std::fs::read_to_string(&f.path) {
                    Ok(text) => print!("{}", redact(&text)),
                    Err(e) => println!("# cannot read {}: {e}", f.path),
                }
            }
            0
        }
        Err(errors) => {
            eprintln!("{errors}");
            2
        }
    }
}

/// The text with each secret's value replaced, line for line (a line number in an error still
/// points at the same line). A secret is the scalar value of a key whose name says so
/// (`password`, `passphrase`, `secret…`, `…token`, `cipherKey`, `apiKey`, `privateKey`,
/// `authorization`, a proxy's `auth`; not a `…File` or `…Path`, which names a path) — in a
/// block mapping, a flow mapping (`{password: x}`) or JSON (`"password":"x"`), the lines of a
/// block scalar under it (`secretOrPublicKey: |`) too — and the password of a URL's user
/// (`redis://user:pass@host`). A value that only names an environment variable
/// (`${REDIS_PASSWORD}`) is no secret and is shown; one with a default (`${P:-x}`) is not.
/// A secret scalar that goes on over the lines below (plain or quoted) has them shown as
/// comments, `# <redacted>`, so the text stays YAML.
pub fn redact(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    // Where a secret's value goes on over the lines below.
    let mut below: Option<Below> = None;
    for line in text.split_inclusive('\n') {
        let body = line.trim_end_matches(['\n', '\r']);
        let indent = body.len() - body.trim_start().len();
        let ending = &line[body.len()..];
        let blank = body.trim().is_empty();
        match below {
            // (A plain scalar's lines below are its own whatever they look like: `- b` too.)
            Some(Below::Indented { key_indent, scalar })
                if blank
                    || (indent > key_indent
                        && if scalar {
                            !body.trim_start().starts_with('#')
                        } else {
                            !looks_like_key(body.trim_start())
                        }) =>
            {
                if !blank {
                    out.push_str(&body[..indent]);
                    out.push_str(if scalar { CONTINUED } else { REDACTED });
                }
                out.push_str(ending);
                continue;
            }
            Some(Below::Quoted(q, depth)) => {
                out.push_str(&body[..indent]);
                // (A quoted scalar that never closes: every line after it.)
                match closing_quote(body, q) {
                    // What follows the value (in a flow mapping, its other entries) is read
                    // as a line is.
                    Some(end) if !body[end..].trim().is_empty() => {
                        let (rest, goes_on) = redact_keyed_at(body[end..].trim_start(), depth);
                        out.push_str(&redact_url_password(&rest));
                        below = goes_on.map(|g| g.below(indent));
                    }
                    Some(_) => {
                        out.push_str(CONTINUED);
                        below = None;
                    }
                    None if blank => {}
                    None => out.push_str(CONTINUED),
                }
                out.push_str(ending);
                continue;
            }
            Some(Below::Flow(depth)) => {
                out.push_str(&body[..indent]);
                match body.find([',', '}', ']']) {
                    Some(end) => {
                        let (rest, goes_on) = redact_keyed_at(&body[end..], depth);
                        out.push_str(&redact_url_password(&rest));
                        below = goes_on.map(|g| g.below(indent));
                    }
                    None if blank => {}
                    None => out.push_str(CONTINUED),
                }
                out.push_str(ending);
                continue;
            }
            _ => {}
        }
        let (redacted, goes_on) = redact_keyed(body);
        below = goes_on.map(|g| g.below(indent));
        out.push_str(&redact_url_password(&redacted));
        out.push_str(ending);
    }
    out
}

/// What a secret's value continued on a line below is shown as.
const CONTINUED: &str = "# <redacted>";

/// Where a secret's value goes on over the lines below its key's.
#[derive(Clone, Copy)]
enum Below {
    /// The lines more indented than the key's that begin no entry: a block scalar's (each
    /// shown as a redacted value: they are the scalar's text) or a plain scalar's (shown as
    /// comments).
    Indented { key_indent: usize, scalar: bool },
    /// A quoted scalar's, up to its closing quote (in flow collections this deep).
    Quoted(u8, usize),
    /// A plain scalar's in a flow collection (this deep), up to its `,`, `}` or `]`.
    Flow(usize),
}

/// How a secret's value on a line goes on below it.
enum GoesOn {
    /// A block scalar (`|`, `>`) or nothing after the colon.
    Block,
    /// A plain scalar, perhaps continued on lines indented past its key (at this column: a
    /// list item's key stands after its `- `, and the item's next keys at its column).
    Plain(usize),
    /// A quoted scalar not closed on its line (in flow collections this deep).
    Quoted(u8, usize),
    /// A plain scalar in a flow collection (this deep) that the line does not end.
    Flow(usize),
}

impl GoesOn {
    /// Where the value goes on, below a line indented by `indent`.
    fn below(self, indent: usize) -> Below {
        match self {
            GoesOn::Block => Below::Indented {
                key_indent: indent,
                scalar: false,
            },
            GoesOn::Plain(key_column) => Below::Indented {
                key_indent: key_column.max(indent),
                scalar: true,
            },
            GoesOn::Quoted(q, depth) => Below::Quoted(q, depth),
            GoesOn::Flow(depth) => Below::Flow(depth),
        }
    }
}

/// Where a quoted scalar's text, continued from a line above, ends on `line` (after its
/// closing quote `q`).
fn closing_quote(line: &str, q: u8) -> Option<usize> {
    closing_quote_from(line, q, 0)
}

/// Where the text of a scalar quoted by `q` that goes on at `from` ends (after its closing
/// quote).
fn closing_quote_from(line: &str, q: u8, from: usize) -> Option<usize> {
    let bytes = line.as_bytes();
    let mut j = from;
    while j < bytes.len() {
        if bytes[j] == b'\\' && q == b'"' {
            j += 2;
            continue;
        }
        if bytes[j] == q {
            // `''` in a single-quoted scalar is a quote.
            if q == b'\'' && bytes.get(j + 1) == Some(&b'\'') {
                j += 2;
                continue;
            }
            return Some(j + 1);
        }
        j += 1;
    }
    None
}

/// Whether a line (without its indentation) begins a mapping entry or a list item: a nested
/// mapping under a key, not the lines of its scalar.
fn looks_like_key(line: &str) -> bool {
    line.starts_with("- ")
        || line == "-"
        || line.starts_with('#')
        || key_at(line, 0).is_some_and(|(_, _, value_at)| value_at <= line.len())
}

/// The key that begins at `at` in `line` (quoted or not), the index of its colon and where
/// its value begins: a YAML colon is followed by a space or the line's end, a quoted key's
/// (JSON's) by anything.
fn key_at(line: &str, at: usize) -> Option<(&str, usize, usize)> {
    let rest = &line[at..];
    let (key, after) = match rest.as_bytes().first()? {
        q @ (b'"' | b'\'') => {
            let close = rest[1..].find(char::from(*q))? + 1;
            (&rest[1..close], close + 1)
        }
        _ => {
            let end = rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '-'))?;
            (&rest[..end], end)
        }
    };
    if key.is_empty() {
        return None;
    }
    let spaces = rest[after..].len() - rest[after..].trim_start_matches(' ').len();
    let colon = after + spaces;
    if rest.as_bytes().get(colon) != Some(&b':') {
        return None;
    }
    let quoted = after > key.len();
    match rest.as_bytes().get(colon + 1) {
        None | Some(b' ' | b'\t') => {}
        Some(_) if quoted => {}
        Some(_) => return None,
    }
    Some((key, at + colon, at + colon + 1))
}

/// Every secret's value in `line` replaced; and how a secret's value goes on below, when it
/// may.
fn redact_keyed(line: &str) -> (String, Option<GoesOn>) {
    redact_keyed_at(line, 0)
}

/// [`redact_keyed`] for a line that begins `depth` flow collections deep (the rest of one
/// whose value went on over lines).
fn redact_keyed_at(line: &str, depth: usize) -> (String, Option<GoesOn>) {
    let bytes = line.as_bytes();
    let mut out = String::with_capacity(line.len());
    // Open `{` / `[`: in a flow collection a value ends at `,`, `}` or `]`.
    let mut depth = depth;
    let mut i = 0;
    let mut copied = 0;
    let mut goes_on = None;
    while i < bytes.len() {
        let b = bytes[i];
        // A key begins a line (after its indentation and `- `), or follows `{` or `,`.
        let starts_key = line.is_char_boundary(i) && {
            let before = line[..i].trim_end_matches([' ', '\t']);
            let before = before.strip_suffix('-').map_or(before, str::trim_end);
            before.is_empty() || before.ends_with('{') || before.ends_with(',')
        };
        if b == b'#' && (i == 0 || bytes[i - 1] == b' ') {
            break;
        }
        if starts_key {
            if let Some((key, _, value_at)) = key_at(line, i) {
                let value_start =
                    value_at + (line[value_at..].len() - line[value_at..].trim_start().len());
                let end = value_end(line, value_start, depth > 0);
                let value = line[value_start..end].trim_end();
                if is_secret_name(key) {
                    let block = value.is_empty()
                        || (value.starts_with(['|', '>'])
                            && value[1..]
                                .chars()
                                .all(|c| matches!(c, '-' | '+') || c.is_ascii_digit()));
                    if block {
                        goes_on = (depth == 0).then_some(GoesOn::Block);
                    } else if !value.starts_with(['{', '[']) && !is_env_reference(value) {
                        out.push_str(&line[copied..value_start]);
                        out.push_str(REDACTED);
                        copied = value_start + value.len();
                        goes_on = match bytes[value_start] {
                            q @ (b'"' | b'\'') if quoted_end(line, value_start).is_none() => {
                                Some(GoesOn::Quoted(q, depth))
                            }
                            b'"' | b'\'' => None,
                            _ if depth > 0 && end == line.len() => Some(GoesOn::Flow(depth)),
                            _ if depth > 0 => None,
                            _ => Some(GoesOn::Plain(line[..i].chars().count())),
                        };
                        i = copied;
                        continue;
                    }
                }
                i = value_start.max(i + 1);
                continue;
            }
        }
        match b {
            b'{' | b'[' => depth += 1,
            b'}' | b']' => depth = depth.saturating_sub(1),
            b'"' | b'\'' => {
                // A quoted scalar: skipped whole (its `:` and `#` are text).
                if let Some(close) = quoted_end(line, i) {
                    i = close;
                    continue;
                }
            }
            _ => {}
        }
        i += 1;
    }
    out.push_str(&line[copied..]);
    (out, goes_on)
}

/// Where a quoted scalar that opens at `at` ends (after its closing quote).
fn quoted_end(line: &str, at: usize) -> Option<usize> {
    closing_quote_from(line, line.as_bytes()[at], at + 1)
}

/// Where a value that begins at `at` ends: after its closing quote; else at a comment, or, in
/// a flow collection, at `,`, `}` or `]`.
fn value_end(line: &str, at: usize, in_flow: bool) -> usize {
    let bytes = line.as_bytes();
    if matches!(bytes.get(at), Some(b'"' | b'\'')) {
        return quoted_end(line, at).unwrap_or(line.len());
    }
    let mut j = at;
    while j < bytes.len() {
        let b = bytes[j];
        if b == b'#' && j > at && bytes[j - 1] == b' ' {
            return j;
        }
        if in_flow && matches!(b, b',' | b'}' | b']') {
            return j;
        }
        j += 1;
    }
    line.len()
}

fn is_secret_name(key: &str) -> bool {
    let k = key.to_ascii_lowercase().replace(['_', '-'], "");
    if k.ends_with("file") || k.ends_with("path") {
        return false;
    }
    k.contains("password")
        || k.contains("passwd")
        || k.contains("passphrase")
        || k.contains("secret")
        || k.ends_with("token")
        || k == "cipherkey"
        || k == "apikey"
        || k.contains("privatekey")
        || k == "authorization"
        || k == "auth"
}

/// A value that only names an environment variable, without a default (`${P:-x}` holds one).
fn is_env_reference(value: &str) -> bool {
    let v = value.trim_matches(|c| c == '"' || c == '\'');
    v.starts_with("${")
        && v.ends_with('}')
        && v[2..v.len() - 1]
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// `scheme://user:password@host`: the password replaced (whatever key the URL is under).
fn redact_url_password(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut rest = line;
    while let Some(at) = rest.find("://") {
        let (before, after) = rest.split_at(at + 3);
        out.push_str(before);
        let authority_end = after
            .find(['/', '?', '#', '"', '\'', ' ', ','])
            .unwrap_or(after.len());
        let authority = &after[..authority_end];
        match (authority.rfind('@'), authority.find(':')) {
            (Some(at), Some(colon))
                if colon < at && !is_env_reference(&authority[colon + 1..at]) =>
            {
                out.push_str(&authority[..colon + 1]);
                out.push_str("<redacted>");
                out.push_str(&authority[at..]);
            }
            _ => out.push_str(authority),
        }
        rest = &after[authority_end..];
        let url_end = url_end(rest);
        out.push_str(&redact_query(&rest[..url_end]));
        rest = &rest[url_end..];
    }
    out.push_str(rest);
    out
}

/// Where a URL's path and query that `rest` begins with end: at a space or a quote; at a
/// flow collection's `,`, `}` or `]` when a space or the line's end follows it (a query's
/// own commas, `LAYERS=a,b` or `BBOX=1,2,3,4`, are followed by more of it); an environment
/// reference (`${KEY}`) is part of it.
fn url_end(rest: &str) -> usize {
    let bytes = rest.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'$' if bytes.get(i + 1) == Some(&b'{') => match rest[i..].find('}') {
                Some(close) => i += close,
                None => return rest.len(),
            },
            b' ' | b'\t' | b'\r' | b'"' | b'\'' => return i,
            b',' | b'}' | b']'
                if matches!(
                    bytes.get(i + 1),
                    None | Some(b' ' | b'\t' | b'\r' | b'\n' | b',' | b'}' | b']')
                ) =>
            {
                return i
            }
            _ => {}
        }
        i += 1;
    }
    rest.len()
}

/// A URL's path and query with the value of each query parameter that carries a credential
/// replaced: one whose name says so as a key's would (`apiKey`, `token`, `secret`…), a `jwt`,
/// a `key` and a signature (`sig`, `signature`, `X-Amz-Signature`, `X-Amz-Credential`).
fn redact_query(path_and_query: &str) -> String {
    let Some((path, query)) = path_and_query.split_once('?') else {
        return path_and_query.to_string();
    };
    let (query, fragment) = match query.find('#') {
        Some(at) => query.split_at(at),
        None => (query, ""),
    };
    let mut out = String::with_capacity(path_and_query.len());
    out.push_str(path);
    out.push('?');
    for (i, param) in query.split('&').enumerate() {
        if i > 0 {
            out.push('&');
        }
        match param.split_once('=') {
            Some((name, value)) if is_secret_param(name) && !is_env_reference(value) => {
                out.push_str(name);
                out.push_str("=<redacted>");
            }
            _ => out.push_str(param),
        }
    }
    out.push_str(fragment);
    out
}

fn is_secret_param(name: &str) -> bool {
    let n = name.to_ascii_lowercase().replace(['_', '-'], "");
    let n = ["xamz", "xgoog"]
        .iter()
        .find_map(|p| n.strip_prefix(p))
        .unwrap_or(&n);
    is_secret_name(n)
        || matches!(
            n,
            "jwt" | "key" | "sig" | "signature" | "credential" | "accesskey" | "pass" | "pwd"
        )
}

#[cfg(test)]
mod tests {
    use super::redact;

    fn hidden(text: &str, secrets: &[&str]) -> String {
        let shown = redact(text);
        assert_eq!(shown.lines().count(), text.lines().count(), "{shown}");
        for secret in secrets {
            assert!(!shown.contains(secret), "{secret} in\n{shown}");
        }
        shown
    }

    #[test]
    fn secrets_values_are_left_out_line_for_line() {
        let yml = "db:\n  redis:\n    host: localhost\n    password: hunter2 # old\n    url: redis://ann:hunter3@r:6379/0\ncrypto:\n  cipherKey: sensitiveKey\nsession:\n  secret: keyboard cat\naccessTokens:\n  timeToExpiry: 7200000\n";
        let shown = hidden(yml, &["hunter2", "hunter3", "sensitiveKey", "keyboard cat"]);
        assert!(
            shown.contains("    password: \"<redacted>\" # old\n"),
            "{shown}"
        );
        assert!(shown.contains("redis://ann:<redacted>@r:6379/0"), "{shown}");
        assert!(
            shown.contains("accessTokens:\n  timeToExpiry: 7200000\n"),
            "{shown}"
        );
        assert!(shown.contains("    host: localhost\n"), "{shown}");
    }

    /// A credential in a URL's query (an upstream reached with a key in its URL, a presigned
    /// object store URL) is left out; the other parameters are shown.
    #[test]
    fn credentials_in_a_urls_query_are_left_out() {
        let yml = "serviceEndpoints:\n  wms:\n    url: https://maps.example/wms?LAYERS=a,b&BBOX=1,2,3,4&apiKey=qk1&LAYERS=a\n  q: {url: \"http://q/?X-Goog-Signature=qk7&pwd=qk8\", x: 1}\n  k2: {url: 'http://k2:8080/api?token=qk2&jwt=qk3#top', changeOrigin: true}\n  s3:\n    url: \"https://b.s3/x?X-Amz-Credential=qk4&X-Amz-Signature=qk5&X-Amz-Expires=60\"\n  env:\n    url: http://e/?key=${E2E_KEY}&sig=qk6\n";
        let shown = hidden(
            yml,
            &["qk1", "qk2", "qk3", "qk4", "qk5", "qk6", "qk7", "qk8"],
        );
        for kept in [
            "url: https://maps.example/wms?LAYERS=a,b&BBOX=1,2,3,4&apiKey=<redacted>&LAYERS=a\n",
            "\"http://q/?X-Goog-Signature=<redacted>&pwd=<redacted>\", x: 1}",
            "'http://k2:8080/api?token=<redacted>&jwt=<redacted>#top', changeOrigin: true}",
            "X-Amz-Credential=<redacted>&X-Amz-Signature=<redacted>&X-Amz-Expires=60\"",
            "http://e/?key=${E2E_KEY}&sig=<redacted>\n",
        ] {
            assert!(shown.contains(kept), "{kept} not in\n{shown}");
        }
        assert_eq!(
            redact("url: http://h/p?x=1&y\n"),
            "url: http://h/p?x=1&y\n",
            "a query without credentials is shown as it is"
        );
    }

    #[test]
    fn policies_secrets_and_json() {
        let yml = "      - jwt:\n          - action:\n              secretOrPublicKey: 's3cr3t'\n              secretOrPublicKeyFile: /etc/keys/pub.pem\n    secretAccessKey: AKIAsecretvalue\n    adminToken: ${ADMIN_TOKEN}\n";
        let shown = hidden(yml, &["s3cr3t", "AKIAsecretvalue"]);
        assert!(
            shown.contains("secretOrPublicKeyFile: /etc/keys/pub.pem"),
            "{shown}"
        );
        assert!(shown.contains("adminToken: ${ADMIN_TOKEN}"), "{shown}");
        assert!(
            shown.contains("              secretOrPublicKey: \"<redacted>\"\n"),
            "{shown}"
        );
        let json = "{\n  \"password\": \"pw\",\n  \"name\": \"x: y\"\n}\n";
        let shown = redact(json);
        assert_eq!(
            shown,
            "{\n  \"password\": \"<redacted>\",\n  \"name\": \"x: y\"\n}\n"
        );
        assert_eq!(
            redact("a: b\r\npassword: c\r\n"),
            "a: b\r\npassword: \"<redacted>\"\r\n"
        );
        assert_eq!(redact("password: c"), "password: \"<redacted>\"");
    }

    /// Flow mappings, JSON on one line, block scalars, a value on the next line, defaults of
    /// environment references, and the names of other credentials.
    #[test]
    fn secrets_in_every_form_yaml_and_json_write_them() {
        let shown = hidden(
            "db: {redis: {emulate: true, password: flowpw}}\ncrypto: {cipherKey: flowcipher, algorithm: aes256}\n",
            &["flowpw", "flowcipher"],
        );
        assert!(
            shown.contains("emulate: true") && shown.contains("algorithm: aes256"),
            "{shown}"
        );
        let shown = hidden(
            "{\"db\":{\"redis\":{\"password\":\"jsonpw\",\"port\":6379}},\"k\":{\"keySecret\":\"ks1\"}}\n",
            &["jsonpw", "ks1"],
        );
        assert!(shown.contains("\"port\":6379"), "{shown}");
        let shown = hidden(
            "jwt:\n  secretOrPublicKey: |\n    -----BEGIN PUBLIC KEY-----\n    MIIBIjANBgkqhkiG9w0BAQEFAAOC\n    -----END PUBLIC KEY-----\n  algorithms: [RS256]\nredis:\n  password:\n    hunter4\n  host: r\n",
            &["MIIBIjANBgkqhkiG9w0BAQEFAAOC", "BEGIN PUBLIC", "hunter4"],
        );
        assert!(
            shown.contains("  algorithms: [RS256]\n") && shown.contains("  host: r\n"),
            "{shown}"
        );
        hidden(
            "redis:\n  password: ${REDIS_PASSWORD:-hunter5}\n  url: redis://u:${P:-hunter6}@h\n",
            &["hunter5", "hunter6"],
        );
        let shown = hidden(
            "proxy: [{action: {serviceEndpoint: s, auth: 'user:pw7-secret'}}]\nheaders: {Authorization: 'Basic dXNlcjpwdw=='}\nsshPassphrase: pp8\nprivate_key: pk9\napiKey: ak10\n",
            &["pw7-secret", "dXNlcjpwdw==", "pp8", "pk9", "ak10"],
        );
        assert!(shown.contains("serviceEndpoint: s"), "{shown}");
        // A secret scalar continued on the lines below: plain, quoted, in a flow mapping;
        // the text stays YAML, line for line.
        let text = "db:\n  redis:\n    password: plainFirst\n      plainSecond\n    host: h\nsecretOrPublicKey: \"dqFirst\n  dqSecond\\\" dq\"  # note\nprivateKey: 'a\n\n  b-second-line-secret'\nproxy: [{action: {auth: user:pw\n    more-of-it, serviceEndpoint: s}}]\ncrypto: {cipherKey: \"ck1\n  ck2\", algorithm: aes}\n";
        let shown = hidden(
            text,
            &["plain", "dq", "b-second", "pw", "more-of-it", "ck1", "ck2"],
        );
        assert_eq!(
            shown,
            "db:\n  redis:\n    password: \"<redacted>\"\n      # <redacted>\n    host: h\nsecretOrPublicKey: \"<redacted>\"\n  # note\nprivateKey: \"<redacted>\"\n\n  # <redacted>\nproxy: [{action: {auth: \"<redacted>\"\n    , serviceEndpoint: s}}]\ncrypto: {cipherKey: \"<redacted>\"\n  , algorithm: aes}\n"
        );
        let as_yaml = |t: &str| serde_yaml::from_str::<serde_yaml::Value>(t).map(drop);
        assert!(as_yaml(text).is_ok());
        assert!(as_yaml(&shown).is_ok(), "{:?}", as_yaml(&shown));
        // A continued plain value's line that looks like a list item is the value's; what
        // follows a continued value in a flow mapping is read as a line is (its secrets too).
        let text = "password: firstpart\n      - secondpart\nsession: {secret: \"s1\n  s2\", password: leakme}\nx: {auth: plain1\n    plain2, sessionSecret: leak2, name: shown}\n";
        let shown = hidden(
            text,
            &[
                "firstpart",
                "secondpart",
                "s1",
                "s2",
                "leakme",
                "plain1",
                "plain2",
                "leak2",
            ],
        );
        assert!(shown.contains("name: shown}"), "{shown}");
        // A list item's keys after its secret are its own, not the secret's lines.
        let text = "extras:\n  - apiKey: k123\n    url: http://example.org\n    timeout: 5\n  - password: p1\n     p2\n    host: h\n";
        let shown = hidden(text, &["k123", "p1", "p2"]);
        assert!(
            shown.contains("    url: http://example.org\n    timeout: 5\n")
                && shown.contains("    host: h\n"),
            "{shown}"
        );
        assert!(as_yaml(text).is_ok());
        assert!(as_yaml(&shown).is_ok(), "{shown}\n{:?}", as_yaml(&shown));
        assert!(as_yaml(text).is_ok());
        assert!(as_yaml(&shown).is_ok(), "{shown}\n{:?}", as_yaml(&shown));
        // Odd lines pass through.
        for odd in [
            "",
            ":",
            "é: x",
            "  - ",
            "key: \"value # with hash\"",
            "\"a\\\"b\": 1",
            "{",
            "'unclosed: x",
        ] {
            assert_eq!(redact(odd), odd);
        }
    }
}
