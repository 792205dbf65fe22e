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
/// (`password`, `secret…`, `…token`, `cipherKey`; not a `…File`, which names a path) and the
/// password of a URL's user (`redis://user:pass@host`). A value that only names an environment
/// variable (`${REDIS_PASSWORD}`) is no secret and is shown.
pub fn redact(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.split_inclusive('\n') {
        let body = line.trim_end_matches(['\n', '\r']);
        out.push_str(&redact_url_password(&redact_keyed(body)));
        out.push_str(&line[body.len()..]);
    }
    out
}

/// `key: value`, `- key: value`, `"key": "value",` with a secret's name: the value replaced.
fn redact_keyed(line: &str) -> String {
    let Some((key, colon)) = key_of(line) else {
        return line.to_string();
    };
    if !is_secret_name(key) {
        return line.to_string();
    }
    let after = &line[colon + 1..];
    let value = after.trim();
    let value = value.strip_suffix(',').map(str::trim_end).unwrap_or(value);
    let comma = if after.trim_end().ends_with(',') {
        ","
    } else {
        ""
    };
    // A mapping or a list below (nothing after the colon), or an environment reference.
    if value.is_empty()
        || value.starts_with('{') && !value.ends_with('}')
        || is_env_reference(value)
    {
        return line.to_string();
    }
    format!("{}: {REDACTED}{comma}", &line[..colon])
}

/// The key of a `key: value` line and the colon's index; None for any other line.
fn key_of(line: &str) -> Option<(&str, usize)> {
    let trimmed = line.trim_start();
    let rest = trimmed.strip_prefix("- ").unwrap_or(trimmed).trim_start();
    if rest.starts_with('#') {
        return None;
    }
    let start = line.len() - rest.len();
    let (key, key_len) = match rest.as_bytes().first()? {
        q @ (b'"' | b'\'') => {
            let close = rest[1..].find(*q as char)? + 1;
            (&rest[1..close], close + 1)
        }
        _ => {
            let end = rest.find(':')?;
            (rest[..end].trim_end(), end)
        }
    };
    let colon = start + key_len + rest[key_len..].find(':')?;
    // `key :` and `key:` but not `key x:` (a colon further on belongs to a value).
    if !line[start + key_len..colon].trim().is_empty() {
        return None;
    }
    // A colon that ends the line or is followed by a space: YAML's mapping colon.
    match line.as_bytes().get(colon + 1) {
        None | Some(b' ' | b'\t') => Some((key, colon)),
        _ => None,
    }
}

fn is_secret_name(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    if k.ends_with("file") || k.ends_with("path") {
        return false;
    }
    k.contains("password")
        || k.contains("passwd")
        || k.contains("secret")
        || k.ends_with("token")
        || k == "cipherkey"
}

fn is_env_reference(value: &str) -> bool {
    let v = value.trim_matches(|c| c == '"' || c == '\'');
    v.starts_with("${") && v.ends_with('}') && !v[2..v.len() - 1].contains(['$', '{', '}'])
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
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn secrets_values_are_left_out_line_for_line() {
        let yml = "db:\n  redis:\n    host: localhost\n    password: hunter2 # old\n    url: redis://ann:hunter3@r:6379/0\ncrypto:\n  cipherKey: sensitiveKey\nsession:\n  secret: keyboard cat\naccessTokens:\n  timeToExpiry: 7200000\n";
        let shown = redact(yml);
        assert_eq!(shown.lines().count(), yml.lines().count());
        for secret in ["hunter2", "hunter3", "sensitiveKey", "keyboard cat"] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        assert!(shown.contains("    password: \"<redacted>\"\n"), "{shown}");
        assert!(shown.contains("redis://ann:<redacted>@r:6379/0"), "{shown}");
        assert!(
            shown.contains("accessTokens:\n  timeToExpiry: 7200000\n"),
            "{shown}"
        );
        assert!(shown.contains("    host: localhost\n"), "{shown}");
    }

    #[test]
    fn policies_secrets_and_json() {
        let yml = "      - jwt:\n          - action:\n              secretOrPublicKey: 's3cr3t'\n              secretOrPublicKeyFile: /etc/keys/pub.pem\n    secretAccessKey: AKIAsecretvalue\n    adminToken: ${ADMIN_TOKEN}\n";
        let shown = redact(yml);
        assert!(
            !shown.contains("s3cr3t") && !shown.contains("AKIAsecretvalue"),
            "{shown}"
        );
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
}
