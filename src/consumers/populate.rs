//! `populate` and `clean`: make the store equal a Kargo consumers file, and undo it.
//!
//! The file lists scopes and, per user, applications each with one credential:
//! `{"scopes": [...], "users": {"<username>": {"<app>": {"type", "keyId", "keySecret" |
//! "password", "scopes"}}}}`, or the newer form with the credential nested
//! (`{"scopes": [...], "credential": {"type", ...}}`); `auth-key` is read as `key-auth`.
//!
//! Populate computes the whole difference first — missing scopes, users, apps and credentials;
//! apps whose scopes or credential (type, keyId, secret, password) changed are recreated; users,
//! apps and scopes the file no longer lists are removed with their credentials — then applies
//! it as one atomic batch, under a store lock so gateways starting together do not race. Run
//! twice, the second run changes nothing. Clean removes the file's users (with their apps and
//! every credential) and its scopes.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use super::layout::CredentialType;
use super::model::{self, Fields};
use super::service::{ConsumerError, ConsumerService};
use crate::store::{KeyType, Write};

/// One application of the file, with its credential.
#[derive(Clone, Debug, PartialEq)]
pub struct AppSpec {
    pub name: String,
    pub scopes: Vec<String>,
    pub kind: CredentialType,
    pub key_id: Option<String>,
    pub secret: Option<String>,
}

/// A consumers file, read and checked.
#[derive(Clone, Debug, Default)]
pub struct ConsumersFile {
    pub scopes: Vec<String>,
    /// username → apps
    pub users: BTreeMap<String, Vec<AppSpec>>,
}

/// What a run changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Report {
    pub created: usize,
    pub removed: usize,
    pub unchanged: usize,
    /// Users and applications the file lists that were deactivated (through the Admin API or
    /// the CLI) and stay so: a run never gives a revoked key back.
    pub deactivated: usize,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} created, {} removed, {} unchanged",
            self.created, self.removed, self.unchanged
        )?;
        if self.deactivated > 0 {
            write!(f, ", {} left deactivated", self.deactivated)?;
        }
        Ok(())
    }
}

const LOCK_TTL: Duration = Duration::from_secs(60);

impl ConsumersFile {
    pub fn parse(text: &str) -> Result<ConsumersFile, String> {
        let root: Value = serde_json::from_str(text)
            .map_err(|e| format!("{}:{}: invalid JSON: {e}", e.line(), e.column()))?;
        let strings = |v: &Value, what: &str| -> Result<Vec<String>, String> {
            match v {
                Value::Null => Ok(Vec::new()),
                Value::Array(items) => items
                    .iter()
                    .map(|i| {
                        i.as_str()
                            .map(str::to_string)
                            .ok_or_else(|| format!("{what} must be a list of strings"))
                    })
                    .collect(),
                _ => Err(format!("{what} must be a list of strings")),
            }
        };
        let mut file = ConsumersFile {
            scopes: strings(&root["scopes"], "`scopes`")?,
            users: BTreeMap::new(),
        };
        let users = root["users"]
            .as_object()
            .ok_or("`users` must be an object of usernames")?;
        // A key id names one credential of its type: two applications with one would take it
        // from each other on every run.
        let mut key_ids: HashMap<(CredentialType, String), String> = HashMap::new();
        for (username, apps) in users {
            let apps = apps
                .as_object()
                .ok_or_else(|| format!("user `{username}` must be an object of applications"))?;
            let mut specs = Vec::new();
            for (name, app) in apps {
                let where_ = format!("application `{name}` of user `{username}`");
                let cred = if app.get("credential").is_some_and(Value::is_object) {
                    &app["credential"]
                } else {
                    app
                };
                let type_name = cred["type"]
                    .as_str()
                    .ok_or_else(|| format!("{where_} needs a credential `type`"))?;
                let kind = CredentialType::parse(type_name)
                    .filter(|k| *k != CredentialType::Oauth2)
                    .ok_or_else(|| format!("{where_}: unknown credential type `{type_name}` (key-auth, jwt, basic-auth)"))?;
                let scopes = strings(&app["scopes"], &format!("`scopes` of {where_}"))?;
                if let Some(s) = scopes.iter().find(|s| !file.scopes.contains(s)) {
                    return Err(format!(
                        "{where_}: scope `{s}` is not in the file's `scopes`"
                    ));
                }
                // An empty id, secret or password is none: an id or secret is made, as EG's
                // credential service does, a password is missing.
                let text = |k: &str| {
                    cred.get(k)
                        .and_then(Value::as_str)
                        .filter(|v| !v.is_empty())
                        .map(str::to_string)
                };
                let (key_id, secret) = if kind.is_keyed() {
                    (text("keyId"), text("keySecret"))
                } else {
                    (None, text("password"))
                };
                if let Some(id) = &key_id {
                    if let Some(first) = key_ids.insert((kind, id.clone()), where_.clone()) {
                        return Err(format!(
                            "{where_}: keyId `{id}` is also {first}'s (a keyId names one credential)"
                        ));
                    }
                }
                specs.push(AppSpec {
                    name: name.clone(),
                    scopes,
                    kind,
                    key_id,
                    secret,
                });
            }
            file.users.insert(username.clone(), specs);
        }
        Ok(file)
    }
}

/// Reads and checks a consumers file (nothing is applied).
pub fn read_file(path: &Path) -> anyhow::Result<ConsumersFile> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
    ConsumersFile::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

/// Runs `f` while holding the populate lock.
async fn locked<T>(
    service: &ConsumerService,
    work: impl std::future::Future<Output = Result<T, ConsumerError>>,
) -> Result<T, ConsumerError> {
    let name = service.layout().populate_lock();
    let started = std::time::Instant::now();
    let token = loop {
        if let Some(t) = service.store().try_lock(&name, LOCK_TTL).await? {
            break t;
        }
        if started.elapsed() > LOCK_TTL {
            return Err(ConsumerError::Conflict(
                "another populate or clean is running".into(),
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // Held as long as the work runs (a populate of thousands of consumers, each password
    // hashed, runs for minutes: the lock ran out under it, and a second run made every user
    // it had not reached yet a second time).
    let mut work = std::pin::pin!(work);
    let mut renew = tokio::time::interval(LOCK_TTL / 4);
    renew.tick().await;
    let result = loop {
        tokio::select! {
            result = &mut work => break result,
            _ = renew.tick() => {
                match service.store().renew_lock(&name, &token, LOCK_TTL).await {
                    Ok(true) => {}
                    Ok(false) => log::warn!("the populate lock ran out while the work ran"),
                    Err(e) => log::warn!("could not hold the populate lock: {e}"),
                }
            }
        }
    };
    if let Err(e) = service.store().unlock(&name, &token).await {
        log::warn!("could not release the populate lock (it expires by itself): {e}");
    }
    result
}

pub async fn populate(
    service: &ConsumerService,
    file: &ConsumersFile,
) -> Result<Report, ConsumerError> {
    locked(service, plan_and_apply(service, file)).await
}

pub async fn clean(
    service: &ConsumerService,
    file: &ConsumersFile,
) -> Result<Report, ConsumerError> {
    locked(service, async {
        let mut batch = Vec::new();
        let mut changed = Vec::new();
        let mut report = Report::default();
        for username in file.users.keys() {
            if let Some((id, _)) = service.find_user(username).await? {
                remove_user(service, &id, username, &mut batch, &mut changed).await?;
                report.removed += 1;
            }
        }
        let existing = service.scopes().await?;
        for s in file.scopes.iter().filter(|s| existing.contains(s)) {
            batch.push(Write::HDel {
                key: service.layout().scopes(),
                fields: vec![s.clone()],
            });
            batch.push(Write::Del {
                key: service.layout().scope_credentials(s),
            });
            report.removed += 1;
        }
        service.commit(&batch, &changed).await?;
        Ok(report)
    })
    .await
}

async fn remove_user(
    service: &ConsumerService,
    id: &str,
    username: &str,
    batch: &mut Vec<Write>,
    changed: &mut Vec<String>,
) -> Result<(), ConsumerError> {
    let l = service.layout();
    batch.push(Write::Del { key: l.user(id) });
    batch.push(Write::SRem {
        key: l.username(username),
        members: vec![id.to_string()],
    });
    changed.push(format!("user:{id}"));
    service.credential_removals(id, batch, changed).await?;
    for app in service.store().smembers(&l.user_apps(id)).await? {
        service.app_removal(&app, batch, changed).await?;
    }
    batch.push(Write::Del {
        key: l.user_apps(id),
    });
    Ok(())
}

/// The app's current credential, as the file would describe it.
async fn current_credential(
    service: &ConsumerService,
    app_id: &str,
) -> Result<Option<(CredentialType, Option<String>, HashMap<String, String>)>, ConsumerError> {
    let l = service.layout();
    for t in [CredentialType::KeyAuth, CredentialType::Jwt] {
        let set = l.credential(t, app_id);
        if service.store().key_type(&set).await? == KeyType::Set {
            if let Some(key_id) = service.store().smembers(&set).await?.into_iter().next() {
                let h = service.store().hgetall(&l.credential(t, &key_id)).await?;
                if !h.is_empty() {
                    return Ok(Some((t, Some(key_id), h)));
                }
            }
        }
    }
    let h = service
        .store()
        .hgetall(&l.credential(CredentialType::BasicAuth, app_id))
        .await?;
    Ok((!h.is_empty()).then_some((CredentialType::BasicAuth, None, h)))
}

/// How an existing app (hash `app`, credential `cred`) compares with what the file asks for.
struct Compared {
    /// Its scopes, credential type, key and secret (or password) are the file's.
    same: bool,
    /// Its key and secret (or password) are the file's: the same grant, whatever else changed.
    same_key: bool,
    /// The app or its credential was deactivated.
    deactivated: bool,
}

fn compare(
    spec: &AppSpec,
    app: &HashMap<String, String>,
    cred: &Option<(CredentialType, Option<String>, HashMap<String, String>)>,
) -> Compared {
    let inactive =
        |h: &HashMap<String, String>| h.get("isActive").map(String::as_str) != Some("true");
    let Some((t, key_id, h)) = cred else {
        return Compared {
            same: false,
            same_key: false,
            deactivated: inactive(app),
        };
    };
    let same_key = *t == spec.kind && same_key(spec, key_id, h);
    Compared {
        same: same_key
            && model::app_scopes(app) == spec.scopes
            && model::credential_scopes(h).unwrap_or_default() == spec.scopes,
        same_key,
        deactivated: inactive(app) || inactive(h),
    }
}

/// Whether a credential (its key id and hash `h`) holds the file's key and secret, or its
/// password.
fn same_key(spec: &AppSpec, key_id: &Option<String>, h: &HashMap<String, String>) -> bool {
    if spec.kind.is_keyed() {
        let same_id = spec
            .key_id
            .as_ref()
            .is_none_or(|k| Some(k) == key_id.as_ref());
        let same_secret = spec
            .secret
            .as_ref()
            .is_none_or(|s| Some(s) == h.get("keySecret"));
        same_id && same_secret
    } else {
        match (&spec.secret, h.get("password")) {
            (Some(p), Some(hash)) => bcrypt::verify(p, hash).unwrap_or(false),
            (None, Some(_)) => true,
            _ => false,
        }
    }
}

async fn plan_and_apply(
    service: &ConsumerService,
    file: &ConsumersFile,
) -> Result<Report, ConsumerError> {
    let l = service.layout().clone();
    // What goes, then what comes: a credential whose key moves to another app (of this user
    // or one listed before) is removed before it is written again, not after.
    let mut removals = Vec::new();
    let mut batch = Vec::new();
    let mut changed = Vec::new();
    let mut report = Report::default();
    let now = model::js_date_now();
    let salt = service.salt_rounds();

    // Scopes: exactly the file's.
    let existing_scopes = service.scopes().await?;
    let new_scopes: Fields = file
        .scopes
        .iter()
        .filter(|s| !existing_scopes.contains(s))
        .map(|s| (s.clone(), "true".into()))
        .collect();
    report.created += new_scopes.len();
    // (A scope the store has is counted as unchanged, as it was counted as created.)
    report.unchanged += file.scopes.len() - new_scopes.len();
    if !new_scopes.is_empty() {
        batch.push(Write::HSet {
            key: l.scopes(),
            fields: new_scopes,
        });
    }
    for s in existing_scopes.iter().filter(|s| !file.scopes.contains(s)) {
        removals.push(Write::HDel {
            key: l.scopes(),
            fields: vec![s.clone()],
        });
        removals.push(Write::Del {
            key: l.scope_credentials(s),
        });
        report.removed += 1;
    }

    // Users the file no longer lists go, with everything they own.
    for key in service.store().keys_with_prefix(&l.user_prefix()).await? {
        let id = key[l.user_prefix().len()..].to_string();
        let h = service.store().hgetall(&key).await?;
        let username = h.get("username").cloned().unwrap_or_default();
        if !file.users.contains_key(&username) {
            remove_user(service, &id, &username, &mut removals, &mut changed).await?;
            report.removed += 1;
        }
    }

    for (username, apps) in &file.users {
        let user_id = match service.find_user(username).await? {
            Some((id, fields)) => {
                // A user deactivated through the Admin API or the CLI stays so (as Kargo's
                // populate leaves it): the file says who exists, not who may be let back in.
                if fields.iter().any(|(k, v)| k == "isActive" && v != "true") {
                    report.deactivated += 1;
                } else {
                    report.unchanged += 1;
                }
                id
            }
            None => {
                let id = uuid::Uuid::new_v4().to_string();
                batch.push(Write::HSet {
                    key: l.user(&id),
                    fields: vec![
                        ("isActive".into(), "true".into()),
                        ("username".into(), username.clone()),
                        ("id".into(), id.clone()),
                        ("createdAt".into(), now.clone()),
                        ("updatedAt".into(), now.clone()),
                    ],
                });
                batch.push(Write::SAdd {
                    key: l.username(username),
                    members: vec![id.clone()],
                });
                changed.push(format!("user:{id}"));
                report.created += 1;
                id
            }
        };
        // The user's current apps, by name.
        let mut current: HashMap<String, (String, HashMap<String, String>)> = HashMap::new();
        for app_id in service.store().smembers(&l.user_apps(&user_id)).await? {
            let h = service.store().hgetall(&l.app(&app_id)).await?;
            if let Some(name) = h.get("name").cloned() {
                current.insert(name, (app_id, h));
            }
        }
        for (name, (app_id, _)) in &current {
            if !apps.iter().any(|a| &a.name == name) {
                service
                    .app_removal(app_id, &mut removals, &mut changed)
                    .await?;
                report.removed += 1;
            }
        }
        for spec in apps {
            // An app deactivated (or its credential) stays so, also when it is made again for
            // other scopes with the same key: only a new key in the file is a new grant.
            let mut active = true;
            if let Some((app_id, app)) = current.get(&spec.name) {
                let cred = current_credential(service, app_id).await?;
                let c = compare(spec, app, &cred);
                if c.same {
                    match c.deactivated {
                        true => report.deactivated += 1,
                        false => report.unchanged += 1,
                    }
                    continue;
                }
                active = !(c.deactivated && c.same_key);
                service
                    .app_removal(app_id, &mut removals, &mut changed)
                    .await?;
                report.removed += 1;
            }
            let app = NewApp {
                user_id: &user_id,
                spec,
                active,
            };
            add_app(&l, app, &now, salt, &mut batch, &mut changed)?;
            report.created += 1;
            if !active {
                report.deactivated += 1;
            }
        }
    }
    removals.append(&mut batch);
    service.commit(&removals, &changed).await?;
    Ok(report)
}

/// An app to make: its user, what the file says of it, and whether it is active.
struct NewApp<'a> {
    user_id: &'a str,
    spec: &'a AppSpec,
    active: bool,
}

fn add_app(
    l: &super::layout::Layout,
    NewApp {
        user_id,
        spec,
        active,
    }: NewApp<'_>,
    now: &str,
    salt_rounds: u32,
    batch: &mut Vec<Write>,
    changed: &mut Vec<String>,
) -> Result<(), ConsumerError> {
    let app_id = uuid::Uuid::new_v4().to_string();
    batch.push(Write::HSet {
        key: l.app(&app_id),
        fields: vec![
            ("isActive".into(), active.to_string()),
            ("id".into(), app_id.clone()),
            ("userId".into(), user_id.to_string()),
            ("name".into(), spec.name.clone()),
            ("scopes".into(), spec.scopes.join(",")),
            ("createdAt".into(), now.to_string()),
            ("updatedAt".into(), now.to_string()),
        ],
    });
    batch.push(Write::SAdd {
        key: l.user_apps(user_id),
        members: vec![app_id.clone()],
    });
    batch.push(Write::SAdd {
        key: l.app_name(&spec.name),
        members: vec![app_id.clone()],
    });
    changed.push(format!("app:{app_id}"));
    let scopes_json = serde_json::to_string(&spec.scopes).unwrap_or_default();
    let cred_id = if spec.kind.is_keyed() {
        let key_id = spec.key_id.clone().unwrap_or_else(model::uuid62);
        let secret = spec.secret.clone().unwrap_or_else(model::uuid62);
        batch.push(Write::HSet {
            key: l.credential(spec.kind, &key_id),
            fields: vec![
                ("isActive".into(), active.to_string()),
                ("createdAt".into(), now.to_string()),
                ("updatedAt".into(), now.to_string()),
                ("keyId".into(), key_id.clone()),
                ("keySecret".into(), secret),
                ("scopes".into(), scopes_json),
                ("consumerId".into(), app_id.clone()),
                ("id".into(), key_id.clone()),
            ],
        });
        batch.push(Write::SAdd {
            key: l.credential(spec.kind, &app_id),
            members: vec![key_id.clone()],
        });
        key_id
    } else {
        let password = spec.secret.clone().ok_or_else(|| {
            ConsumerError::Invalid(format!(
                "application `{}`: basic-auth needs a `password`",
                spec.name
            ))
        })?;
        let hash = bcrypt::hash(&password, salt_rounds)
            .map_err(|e| ConsumerError::Invalid(e.to_string()))?;
        batch.push(Write::HSet {
            key: l.credential(spec.kind, &app_id),
            fields: vec![
                ("isActive".into(), active.to_string()),
                ("createdAt".into(), now.to_string()),
                ("updatedAt".into(), now.to_string()),
                ("scopes".into(), scopes_json),
                ("password".into(), hash),
                ("autoGeneratePassword".into(), "true".into()),
                ("passwordKey".into(), "password".into()),
            ],
        });
        app_id.clone()
    };
    for s in &spec.scopes {
        batch.push(Write::HSet {
            key: l.scope_credentials(s),
            fields: vec![(l.credential(spec.kind, &cred_id), "true".into())],
        });
    }
    changed.push(format!("{}:{cred_id}", spec.kind.as_str()));
    Ok(())
}
