//! `system.config.yml` (or `.json`): the store (`db.redis`), `crypto`, `cli`, and the settings of
//! Kargo's plugins, which tollgate builds in. EG sections tollgate does not use (session,
//! accessTokens, ...) are accepted as they are, so a Kargo config directory loads unchanged.

use super::error::{ConfigErrors, Pos};
use super::node::{Node, Value};

/// `db.redis`: where consumers live. `emulate: true` (or no section) selects the embedded store.
/// (Its `Debug` shows the password by a fingerprint: a change still shows, the value never.)
#[derive(Clone)]
pub struct RedisDef {
    pub emulate: bool,
    pub namespace: String,
    pub host: Option<String>,
    pub port: Option<u16>,
    /// An ACL user (Redis 6 and later; ioredis' `username`), with `password`.
    pub username: Option<String>,
    pub password: Option<String>,
    pub db: Option<i64>,
    pub sentinels: Vec<(String, u16)>,
    pub sentinel_name: Option<String>,
    /// `tls`: Redis over TLS (`None`: plain TCP).
    pub tls: Option<RedisTls>,
    pub configured: bool,
}

/// `db.redis.tls`, as EG hands it to ioredis and Node's TLS: `true` or `{}` checks the server's
/// certificate against the system's roots; `ca` (PEM text or a file's path, one or a list;
/// EG's `caFile`) trusts those instead; `cert` and `key` (the same; EG's `certFile` and
/// `keyFile`) answer a server that asks for a client certificate; `rejectUnauthorized: false`
/// checks nothing. (Its `Debug` shows the PEMs by
/// fingerprints, as [`RedisDef`]'s password.)
#[derive(Clone)]
pub struct RedisTls {
    pub ca: Vec<String>,
    /// The client's certificate and key.
    pub client: Option<(String, String)>,
    pub verify: bool,
}

impl std::fmt::Debug for RedisTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ca: Vec<String> = self.ca.iter().map(|c| fingerprint(c)).collect();
        let client = self
            .client
            .as_ref()
            .map(|(c, k)| (fingerprint(c), fingerprint(k)));
        f.debug_struct("RedisTls")
            .field("ca", &ca)
            .field("client", &client)
            .field("verify", &self.verify)
            .finish()
    }
}

impl Default for RedisDef {
    /// No `db.redis` section: the embedded store, EG's namespace.
    fn default() -> Self {
        RedisDef {
            emulate: true,
            namespace: "EG".into(),
            host: None,
            port: None,
            username: None,
            password: None,
            db: None,
            sentinels: Vec::new(),
            sentinel_name: None,
            tls: None,
            configured: false,
        }
    }
}

/// (Its `Debug` shows `cipherKey` by a fingerprint, as [`RedisDef`]'s password.)
#[derive(Clone)]
pub struct CryptoDef {
    pub cipher_key: Option<String>,
    pub algorithm: Option<String>,
    pub salt_rounds: u32,
}

impl Default for CryptoDef {
    fn default() -> Self {
        CryptoDef {
            cipher_key: None,
            algorithm: None,
            salt_rounds: 10,
        }
    }
}

/// A secret as `Debug` shows it: the start of its SHA-256, which tells two values apart.
fn fingerprint(secret: &str) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(format!("tollgate config secret\n{secret}").as_bytes());
    format!("sha256:{}…", &crate::wire::hex(&digest)[..12])
}

impl std::fmt::Debug for RedisDef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisDef")
            .field("emulate", &self.emulate)
            .field("namespace", &self.namespace)
            .field("host", &self.host)
            .field("port", &self.port)
            .field("username", &self.username)
            .field("password", &self.password.as_deref().map(fingerprint))
            .field("db", &self.db)
            .field("sentinels", &self.sentinels)
            .field("sentinel_name", &self.sentinel_name)
            .field("tls", &self.tls)
            .field("configured", &self.configured)
            .finish()
    }
}

impl std::fmt::Debug for CryptoDef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CryptoDef")
            .field("cipher_key", &self.cipher_key.as_deref().map(fingerprint))
            .field("algorithm", &self.algorithm)
            .field("salt_rounds", &self.salt_rounds)
            .finish()
    }
}

/// One plugin's settings (`plugins: {name: {package?, ...settings}}`); `package` is ignored.
#[derive(Clone, Debug)]
pub struct PluginDef {
    pub name: String,
    pub pos: Pos,
    pub settings: Node,
}

#[derive(Clone, Debug, Default)]
pub struct SystemFile {
    pub redis: RedisDef,
    pub crypto: CryptoDef,
    pub cli_url: Option<String>,
    pub plugins: Vec<PluginDef>,
}

/// The plugins Kargo ships; all are built into tollgate.
pub const KNOWN_PLUGINS: &[&str] = &["healthcheck", "metrics", "scopes", "storage", "s3"];

/// The sections of EG's system config (its schema's and `cli`, which EG's CLI reads): a key
/// that is none of them is said where it is, as in the gateway config (EG ignores it, and so
/// does tollgate).
const SECTIONS: [&str; 8] = [
    "db",
    "crypto",
    "session",
    "accessTokens",
    "refreshTokens",
    "authorizationCodes",
    "plugins",
    "cli",
];

impl SystemFile {
    pub fn from_node(root: &Node, errors: &mut ConfigErrors) -> SystemFile {
        let mut sys = SystemFile::default();
        if root.is_null() {
            return sys;
        }
        if root.as_map().is_none() {
            errors.push(
                &root.pos,
                format!("the system config must be a map, not {}", root.kind()),
            );
            return sys;
        }
        super::gateway_file::ignored_keys(root, &SECTIONS, "section of the system config");
        if let Some(redis) = root.get("db").and_then(|db| db.get("redis")) {
            sys.redis = redis_def(redis, errors);
        } else {
            sys.redis.namespace = "EG".into();
            sys.redis.emulate = true;
        }
        if let Some(crypto) = root.get("crypto") {
            sys.crypto.cipher_key = text(crypto, "cipherKey", errors);
            sys.crypto.algorithm = text(crypto, "algorithm", errors);
            if let Some(n) = crypto.get("saltRounds") {
                // A number in a string (`'12'`, an interpolated variable) too, as EG's schema
                // coerces it.
                let rounds = match &n.value {
                    Value::Int(i) => Some(*i),
                    Value::Float(f) if f.fract() == 0.0 && f.abs() < 1e9 => Some(*f as i64),
                    Value::Str(s) => s.trim().parse::<i64>().ok(),
                    _ => None,
                };
                // As EG's bcrypt takes them: 0 for its default (10), 1 to 3 raised to 4. (More
                // than 31 is refused, where EG's would take 31: a cost of days per password.)
                match (&n.value, rounds) {
                    (_, Some(0)) => sys.crypto.salt_rounds = 10,
                    (_, Some(i @ 1..=31)) => sys.crypto.salt_rounds = i.max(4) as u32,
                    (Value::Null, _) => {}
                    _ => errors.push(
                        &n.pos,
                        "`crypto.saltRounds` must be a whole number from 0 to 31",
                    ),
                }
            }
        }
        if let Some(cli) = root.get("cli") {
            sys.cli_url = text(cli, "url", errors);
        }
        if let Some(plugins) = root.get("plugins") {
            match &plugins.value {
                Value::Map(entries) => {
                    for (k, v) in entries {
                        let name = k.scalar_text().unwrap_or_default();
                        if !KNOWN_PLUGINS.contains(&name.as_str()) {
                            log::warn!(
                                "{}: plugin `{name}` is not built into tollgate; its settings are ignored",
                                k.pos
                            );
                        }
                        sys.plugins.push(PluginDef {
                            name,
                            pos: k.pos.clone(),
                            settings: v.clone(),
                        });
                    }
                }
                Value::Null => {}
                _ => errors.push(
                    &plugins.pos,
                    format!("`plugins` must be a map, not {}", plugins.kind()),
                ),
            }
        }
        sys
    }

    /// The settings of a built-in plugin, when the system config names it.
    pub fn plugin(&self, name: &str) -> Option<&Node> {
        self.plugins
            .iter()
            .find(|p| p.name == name)
            .map(|p| &p.settings)
    }

    /// A plugin's `endpointName` setting, or the default path.
    pub fn plugin_endpoint(&self, name: &str, default: &str) -> String {
        self.plugin(name)
            .and_then(|s| s.get("endpointName"))
            .and_then(|n| n.as_str())
            .map(|s| {
                if s.starts_with('/') {
                    s.to_string()
                } else {
                    format!("/{s}")
                }
            })
            .unwrap_or_else(|| default.to_string())
    }
}

fn text(parent: &Node, key: &str, errors: &mut ConfigErrors) -> Option<String> {
    let n = parent.get(key)?;
    match &n.value {
        Value::Null => None,
        Value::Map(_) | Value::Seq(_) => {
            errors.push(
                &n.pos,
                format!("`{key}` must be a string, not {}", n.kind()),
            );
            None
        }
        _ => n.scalar_text(),
    }
}

fn redis_def(node: &Node, errors: &mut ConfigErrors) -> RedisDef {
    let mut def = RedisDef {
        emulate: false,
        configured: true,
        ..RedisDef::default()
    };
    if node.as_map().is_none() {
        if !node.is_null() {
            errors.push(
                &node.pos,
                format!("`db.redis` must be a map, not {}", node.kind()),
            );
        }
        def.emulate = true;
        return def;
    }
    if let Some(n) = node.get("emulate") {
        match &n.value {
            Value::Bool(b) => def.emulate = *b,
            Value::Null => {}
            Value::Str(s) if s == "true" || s == "false" => def.emulate = s == "true",
            // (As EG's schema coerces it.)
            Value::Int(i @ (0 | 1)) => def.emulate = *i == 1,
            _ => errors.push(&n.pos, "`db.redis.emulate` must be true or false"),
        }
    }
    if let Some(ns) = text(node, "namespace", errors) {
        def.namespace = ns;
    }
    def.host = text(node, "host", errors);
    // (A URL there passed the check, and the store stayed unreachable for good.)
    if let (Some(h), Some(n)) = (&def.host, node.get("host")) {
        if h.contains(['/', '@']) || h.trim() != h || h.is_empty() {
            errors.push(
                &n.pos,
                "`db.redis.host` must be a host name or an address, not a URL (`port`, `password`, `db` and `tls` are keys of their own)",
            );
        }
    }
    def.username = text(node, "username", errors);
    def.password = text(node, "password", errors);
    def.sentinel_name = text(node, "name", errors);
    if let Some(n) = node.get("port") {
        match &n.value {
            Value::Int(p) if (1..=65535).contains(p) => def.port = Some(*p as u16),
            Value::Str(s) if s.parse::<u16>().is_ok() => def.port = s.parse().ok(),
            Value::Null => {}
            _ => errors.push(&n.pos, "`db.redis.port` must be a port number"),
        }
    }
    if let Some(n) = node.get("db") {
        match &n.value {
            Value::Int(d) if *d >= 0 => def.db = Some(*d),
            // (As ioredis sends it to `SELECT`: a number written as a string is one.)
            Value::Str(s) if s.parse::<u32>().is_ok() => def.db = s.parse().ok(),
            Value::Null => {}
            _ => errors.push(&n.pos, "`db.redis.db` must be a database number"),
        }
    }
    if let Some(n) = node.get("tls") {
        def.tls = redis_tls(n, errors);
    }
    if let Some(list) = node.get("sentinels").and_then(Node::as_seq) {
        for s in list {
            let host = s.get("host").and_then(Node::scalar_text);
            let port = match s.get("port").map(|p| &p.value) {
                Some(Value::Int(p)) => u16::try_from(*p).ok(),
                Some(Value::Str(p)) => p.parse().ok(),
                _ => None,
            };
            match (host, port) {
                (Some(h), Some(p)) => def.sentinels.push((h, p)),
                _ => errors.push(&s.pos, "a sentinel needs `host` and `port`"),
            }
        }
    }
    def
}

/// `db.redis.tls` (see [`RedisTls`]).
fn redis_tls(n: &Node, errors: &mut ConfigErrors) -> Option<RedisTls> {
    let mut tls = RedisTls {
        ca: Vec::new(),
        client: None,
        verify: true,
    };
    let entries = match &n.value {
        Value::Null | Value::Bool(false) => return None,
        Value::Str(s) if s == "false" => return None,
        Value::Bool(true) => return Some(tls),
        Value::Str(s) if s == "true" => return Some(tls),
        Value::Map(entries) => entries,
        _ => {
            errors.push(
                &n.pos,
                format!(
                    "`db.redis.tls` must be true, false or a map of TLS options, not {}",
                    n.kind()
                ),
            );
            return None;
        }
    };
    // (`caFile`, `certFile`, `keyFile`: EG's own, files it reads for ioredis, in place of
    // `ca`, `cert`, `key` when given.)
    let (mut ca, mut ca_file) = (None::<Vec<String>>, None::<Vec<String>>);
    let (mut cert, mut cert_file, mut key, mut key_file) = (None, None, None, None);
    for (k, v) in entries {
        let name = k.scalar_text().unwrap_or_default();
        let pems = |errors: &mut ConfigErrors| match v.as_seq() {
            Some(list) => list.iter().filter_map(|c| pem(c, &name, errors)).collect(),
            None => pem(v, &name, errors).into_iter().collect(),
        };
        match name.as_str() {
            "ca" => ca = Some(pems(errors)),
            "caFile" => ca_file = Some(pems(errors)),
            "cert" => cert = pem(v, &name, errors),
            "certFile" => cert_file = pem(v, &name, errors),
            "key" => key = pem(v, &name, errors),
            "keyFile" => key_file = pem(v, &name, errors),
            "rejectUnauthorized" => match &v.value {
                Value::Bool(b) => tls.verify = *b,
                _ => errors.push(
                    &v.pos,
                    "`db.redis.tls.rejectUnauthorized` must be true or false",
                ),
            },
            other => log::warn!(
                "{}: `db.redis.tls.{other}` is not used by tollgate (it reads `ca`, `cert`, `key`, EG's `caFile`, `certFile`, `keyFile`, and `rejectUnauthorized`)",
                k.pos
            ),
        }
    }
    tls.ca = ca_file.or(ca).unwrap_or_default();
    let (cert, key) = (cert_file.or(cert), key_file.or(key));
    match (cert, key) {
        // (The redis crate sends no certificate on a connection that checks none.)
        (Some(_), Some(_)) if !tls.verify => errors.push(
            &n.pos,
            "`db.redis.tls` cannot send a client certificate (`cert`, `key`) with `rejectUnauthorized: false`: give the server's `ca` instead",
        ),
        (Some(c), Some(k)) => tls.client = Some((c, k)),
        (None, None) => {}
        _ => errors.push(
            &n.pos,
            "`db.redis.tls` needs both `cert` and `key` for a client certificate",
        ),
    }
    Some(tls)
}

/// A PEM setting of `db.redis.tls`: the text, or the file it names.
fn pem(v: &Node, what: &str, errors: &mut ConfigErrors) -> Option<String> {
    let Some(text) = v.as_str().filter(|t| !t.trim().is_empty()) else {
        errors.push(
            &v.pos,
            format!("`db.redis.tls.{what}` must be PEM text or a file's path"),
        );
        return None;
    };
    if text.contains("-----BEGIN") {
        return Some(text.to_string());
    }
    match std::fs::read_to_string(text) {
        Ok(t) if t.contains("-----BEGIN") => Some(t),
        Ok(_) => {
            errors.push(
                &v.pos,
                format!("`db.redis.tls.{what}`: {text} holds no PEM"),
            );
            None
        }
        Err(e) => {
            errors.push(
                &v.pos,
                format!("`db.redis.tls.{what}`: cannot read {text}: {e}"),
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `Debug` (which the reload compares to tell what waits for a restart) tells two
    /// passwords apart and shows neither.
    #[test]
    fn debug_shows_secrets_by_fingerprint() {
        let with = |pw: &str| {
            let r = RedisDef {
                password: Some(pw.into()),
                ..Default::default()
            };
            let c = CryptoDef {
                cipher_key: Some(pw.into()),
                ..Default::default()
            };
            (format!("{r:?}"), format!("{c:?}"))
        };
        let (a, b) = (with("hunter2-secret"), with("hunter3-secret"));
        assert!(
            !a.0.contains("hunter2") && !a.1.contains("hunter2"),
            "{a:?}"
        );
        assert_ne!(a.0, b.0);
        assert_ne!(a.1, b.1);
    }

    /// The system config `text`, when it reads without an error.
    fn read_system(text: &str) -> Option<SystemFile> {
        let root = super::super::node::parse(text, &std::sync::Arc::from("s.yml")).expect("parses");
        let mut errors = ConfigErrors::default();
        let sys = SystemFile::from_node(&root, &mut errors);
        errors.0.is_empty().then_some(sys)
    }

    /// `crypto.saltRounds` as EG's bcrypt takes it: 0 its default, 1 to 3 raised to 4, a whole
    /// number written as a float; past 31 (days per password) or a fraction refused.
    #[test]
    fn salt_rounds_as_eg_takes_them() {
        let read = |v: &str| {
            read_system(&format!("crypto: {{saltRounds: {v}}}\n")).map(|s| s.crypto.salt_rounds)
        };
        assert_eq!(read("0"), Some(10));
        assert_eq!(read("1"), Some(4));
        assert_eq!(read("12"), Some(12));
        assert_eq!(read("12.0"), Some(12));
        assert_eq!(read("'5'"), Some(5));
        assert_eq!(read("32"), None);
        assert_eq!(read("12.5"), None);
        assert_eq!(read("-1"), None);
    }

    /// `db.redis` as ioredis reads it: a database number as a string; `emulate` as 0 or 1; a
    /// host that is a URL, a `tls` with a client certificate but no checking, refused.
    #[test]
    fn redis_settings_as_eg_takes_them() {
        let read = |v: &str| read_system(&format!("db: {{redis: {{{v}}}}}\n")).map(|s| s.redis);
        assert_eq!(read("db: '2'").and_then(|r| r.db), Some(2));
        assert!(read("db: -1").is_none());
        assert_eq!(read("emulate: 0").map(|r| r.emulate), Some(false));
        assert_eq!(read("emulate: 1").map(|r| r.emulate), Some(true));
        assert!(read("host: 'redis://127.0.0.1:6379'").is_none());
        assert!(read("host: 'u:p@h'").is_none());
        assert_eq!(
            read("host: redis.internal").and_then(|r| r.host).as_deref(),
            Some("redis.internal")
        );
        let tls = |v: &str| {
            read(&format!("tls: {v}"))
                .map(|r| r.tls.map(|t| (t.verify, t.ca.len(), t.client.is_some())))
        };
        assert_eq!(tls("true"), Some(Some((true, 0, false))));
        assert_eq!(tls("false"), Some(None));
        assert_eq!(
            tls("{rejectUnauthorized: false}"),
            Some(Some((false, 0, false)))
        );
        let pem = "'-----BEGIN CERTIFICATE-----\\nx\\n-----END CERTIFICATE-----'";
        assert_eq!(
            tls(&format!("{{ca: [{pem}, {pem}]}}")),
            Some(Some((true, 2, false)))
        );
        assert_eq!(
            tls(&format!("{{cert: {pem}, key: {pem}}}")),
            Some(Some((true, 0, true)))
        );
        assert!(tls(&format!("{{cert: {pem}}}")).is_none());
        assert!(tls(&format!(
            "{{cert: {pem}, key: {pem}, rejectUnauthorized: false}}"
        ))
        .is_none());
        assert!(tls("{ca: /nonexistent/ca.pem}").is_none());
        // EG's `*File` keys stand in place of the others, as EG's db.js puts them.
        assert_eq!(
            tls(&format!("{{ca: [{pem}, {pem}], caFile: {pem}}}")),
            Some(Some((true, 1, false)))
        );
        assert!(tls("{caFile: /nonexistent/ca.pem}").is_none());
        assert!(tls("3").is_none());
    }
}
