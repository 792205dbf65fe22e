//! The listeners of a gateway file: `http`, `https` (with its certificates by host) and
//! `admin`, and two of them on one port.

use super::{
    map_entries, name_of, optional_string, GatewayFile, HttpsDef, ListenerDef, TlsCertDef,
};
use std::path::Path;

use crate::config::error::ConfigErrors;
use crate::config::node::{Node, Value};
use crate::config::ConfigDirs;

pub(super) fn port_of(node: &Node, what: &str, errors: &mut ConfigErrors) -> Option<u16> {
    let parsed = match &node.value {
        Value::Int(i) => u16::try_from(*i).ok(),
        Value::Str(s) => s.trim().parse::<u16>().ok(),
        _ => None,
    };
    if parsed.is_none() {
        let shown = match &node.value {
            Value::Int(_) | Value::Str(_) => node.scalar_text().unwrap_or_default(),
            _ => node.kind().to_string(),
        };
        errors.push(
            &node.pos,
            format!("`{what}.port` must be a port number (0-65535), not {shown}"),
        );
    }
    parsed
}

pub(super) fn listener(
    node: &Node,
    what: &str,
    default_port: Option<u16>,
    errors: &mut ConfigErrors,
) -> Option<ListenerDef> {
    if node.is_null() {
        return None;
    }
    if node.as_map().is_none() {
        errors.push(
            &node.pos,
            format!("`{what}` must be a map, not {}", node.kind()),
        );
        return None;
    }
    let port = match node.get("port") {
        Some(p) if p.is_null() => return None,
        Some(p) => port_of(p, what, errors)?,
        None => default_port?,
    };
    let host =
        optional_string(node, "hostname", errors).or_else(|| optional_string(node, "host", errors));
    if let Some((h, at)) = &host {
        if !is_listen_host(h) {
            errors.push(
                at,
                format!("`{what}.hostname` must be an IP address or a host name, not `{h}`"),
            );
            return None;
        }
    }
    let host = host.map(|(h, _)| h);
    Some(ListenerDef { host, port })
}

/// Whether a listener's `hostname` can be listened on: empty (every address), an IPv4 or IPv6
/// address (with or without brackets), or a host name (letters, digits, `-`, `.`, `_`).
fn is_listen_host(h: &str) -> bool {
    let bare = h
        .strip_prefix('[')
        .and_then(|r| r.strip_suffix(']'))
        .unwrap_or(h);
    bare.parse::<std::net::IpAddr>().is_ok()
        || h.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
}

/// Two listeners on one port of one address (the second could not listen): reported at the
/// later one's port, as `check` and a reload should say, not as the start's bind error.
pub(super) fn same_port_twice(root: &Node, file: &GatewayFile, errors: &mut ConfigErrors) {
    // The admin listener's default address is the loopback one (the server binds it so).
    let admin = file.admin.as_ref().map(|a| ListenerDef {
        host: a.host.clone().or_else(|| Some("127.0.0.1".into())),
        port: a.port,
    });
    let listeners = [
        ("http", file.http.as_ref()),
        ("https", file.https.as_ref().map(|h| &h.listener)),
        ("admin", admin.as_ref()),
    ];
    let every_address = |h: &Option<String>| {
        matches!(
            h.as_deref(),
            None | Some("") | Some("0.0.0.0") | Some("::") | Some("[::]")
        )
    };
    // (Names are resolved only for listeners on one port, as the listener binds them: its
    // first address.)
    let address = |l: &ListenerDef| address_of(l.host.as_deref().unwrap_or(""), l.port);
    let mut seen: Vec<(&str, &ListenerDef)> = Vec::new();
    for (name, listener) in listeners {
        let Some(l) = listener else { continue };
        let clash = seen.iter().find(|(_, other)| {
            other.port == l.port
                && (every_address(&other.host)
                    || every_address(&l.host)
                    || other.host == l.host
                    || address(other).is_some_and(|a| address(l) == Some(a)))
        });
        if let Some((other, _)) = clash {
            let at = root
                .get(name)
                .map(|n| n.get("port").unwrap_or(n).pos.clone());
            if let Some(at) = at {
                errors.push(
                    &at,
                    format!("`{name}` listens on port {} as `{other}` does", l.port),
                );
            }
        }
        seen.push((name, l));
    }
}

/// The address a listener's host name binds (the resolver's first, as the listener takes
/// it); none when it does not resolve.
pub(super) fn address_of(host: &str, port: u16) -> Option<std::net::IpAddr> {
    use std::net::ToSocketAddrs;
    let host = host.trim_matches(['[', ']']);
    if let Ok(ip) = host.parse::<std::net::IpAddr>() {
        return Some(ip);
    }
    (host, port).to_socket_addrs().ok()?.next().map(|a| a.ip())
}

/// What of an `https` section (EG's, which hands `options` and each certificate's other keys
/// to Node's TLS) tollgate does not act on: client certificates are an error (every client
/// would be let in, silently), anything else a warning at its place.
fn https_not_acted_on(node: &Node, errors: &mut ConfigErrors) {
    let keys = |n: &Node| -> Vec<(String, Node)> {
        n.as_map()
            .unwrap_or_default()
            .iter()
            .filter_map(|(k, v)| Some((k.scalar_text()?, v.clone())))
            .collect()
    };
    let unacted = |at: &Node, what: &str, hint: &str| {
        log::warn!("{}: `{what}` is not acted on by tollgate{hint}", at.pos);
    };
    for (key, value) in keys(node) {
        match key.as_str() {
            "port" | "hostname" | "host" | "tls" => {}
            "options" => {
                for (option, v) in keys(&value) {
                    // (As Node reads it: JavaScript's truth.)
                    let on = match &v.value {
                        Value::Null | Value::Bool(false) => false,
                        Value::Int(i) => *i != 0,
                        Value::Float(f) => *f != 0.0 && !f.is_nan(),
                        Value::Str(s) => !s.is_empty(),
                        _ => true,
                    };
                    if option == "requestCert" && on {
                        errors.push(
                            &v.pos,
                            "`https.options.requestCert`: client certificates are not supported: every client would be let in without one (check them in front of the gateway)",
                        );
                    } else {
                        unacted(&v, &format!("https.options.{option}"), "");
                    }
                }
            }
            other => unacted(&value, &format!("https.{other}"), ""),
        }
    }
    for (host, entry) in node.get("tls").map(keys).unwrap_or_default() {
        for (key, v) in keys(&entry) {
            match key.as_str() {
                "key" | "cert" => {}
                "ca" => unacted(
                    &v,
                    &format!("https.tls.{host}.ca"),
                    " (the certificate's chain goes in its `cert` file, after it)",
                ),
                other => unacted(&v, &format!("https.tls.{host}.{other}"), ""),
            }
        }
    }
}

/// The `https` listener. A relative `key` or `cert` path is the file of that name in the
/// last config directory that has one (as a jwt step's `secretOrPublicKeyFile`), else the path
/// as given, from the working directory (where EG reads it).
pub(super) fn https(node: &Node, dirs: &ConfigDirs, errors: &mut ConfigErrors) -> Option<HttpsDef> {
    let listener = listener(node, "https", None, errors)?;
    https_not_acted_on(node, errors);
    let mut certs = Vec::new();
    match node.get("tls") {
        Some(tls) => {
            for (key, value) in map_entries(tls, "https.tls", errors) {
                let host_glob = name_of(key, errors);
                let key_file = optional_string(value, "key", errors);
                let cert_file = optional_string(value, "cert", errors);
                let in_dirs = |(path, _): (String, _)| match dirs.resolve(Path::new(&path)) {
                    Some(found) => found.display().to_string(),
                    None => path,
                };
                match (key_file.map(in_dirs), cert_file.map(in_dirs)) {
                    (Some(key), Some(cert)) => {
                        // Read now, as the start reads them: `check` and a reload refuse what
                        // the next start could not use (a reload keeps the listener it has).
                        if let Err(e) = crate::listener::tls_acceptor_by_name(&cert, &key, &[]) {
                            errors.push(
                                &value.pos,
                                format!("https certificate `{host_glob}`: {e:#}"),
                            );
                        }
                        certs.push(TlsCertDef {
                            host_glob,
                            key,
                            cert,
                            pos: value.pos.clone(),
                        })
                    }
                    _ => errors.push(
                        &value.pos,
                        format!("`https.tls.{host_glob}` needs `key` and `cert` file paths"),
                    ),
                }
            }
        }
        None => errors.push(
            &node.pos,
            "`https` needs a `tls` section with at least a `default` key and cert",
        ),
    }
    let empty = |t: &&Node| t.is_null() || t.as_map().is_some_and(|m| m.is_empty());
    if let Some(tls) = node.get("tls").filter(empty) {
        errors.push(
            &tls.pos,
            "`https.tls` needs at least a `default` key and cert",
        );
    }
    Some(HttpsDef { listener, certs })
}
