//! `tollgate users|apps|scopes|credentials ...`: EG's CLI over the Admin API. Output is EG's:
//! objects as indented JSON on stdout, `✔ ...` confirmations and `✖ ...` errors on stderr; unlike
//! EG, a failure exits with status 1.

use std::io::Read;

use clap::{Args, Subcommand};
use serde_json::{Map, Value};

use super::admin_client::{AdminClient, Answer};

#[derive(Args)]
pub struct Props {
    /// A property `key=value` (repeatable); values that parse as JSON are sent as JSON.
    #[arg(short = 'p', long = "property", value_name = "KEY=VALUE")]
    pub props: Vec<String>,
    /// Read the properties as a JSON object from standard input.
    #[arg(long)]
    pub stdin: bool,
}

#[derive(Subcommand)]
pub enum UsersCmd {
    /// List users.
    List(Quiet),
    /// Show one user (by username or id).
    Info(OneQuiet),
    /// Create a user.
    Create(CreateUser),
    /// Change a user's properties.
    Update(Update),
    /// Activate users.
    Activate(Many),
    /// Deactivate users (and their applications).
    Deactivate(Many),
    /// Remove users with their applications and credentials.
    Remove(Many),
}

#[derive(Subcommand)]
pub enum AppsCmd {
    /// List applications.
    List(Quiet),
    /// Show one application (by id or name).
    Info(OneQuiet),
    /// Create an application for a user.
    Create(CreateApp),
    /// Change an application's properties.
    Update(Update),
    /// Activate applications.
    Activate(Many),
    /// Deactivate applications.
    Deactivate(Many),
    /// Remove applications with their credentials.
    Remove(Many),
}

#[derive(Subcommand)]
pub enum ScopesCmd {
    /// List scopes.
    List(Quiet),
    /// Show one scope.
    Info(OneQuiet),
    /// Create scopes.
    Create(Many),
    /// Remove scopes (and take them from every credential).
    Remove(Many),
}

#[derive(Subcommand)]
pub enum CredentialsCmd {
    /// List credentials (every consumer's, or one consumer's with -c).
    List(ListCredentials),
    /// Show one credential.
    Info(OneCredential),
    /// Create a credential for a consumer (user or application).
    Create(CreateCredential),
    /// Activate a credential.
    Activate(OneCredential),
    /// Deactivate a credential.
    Deactivate(OneCredential),
    /// Remove a credential.
    Remove(OneCredential),
    /// Add, remove or set a credential's scopes.
    #[command(subcommand)]
    Scopes(CredentialScopesCmd),
}

#[derive(Subcommand)]
pub enum CredentialScopesCmd {
    Add(CredentialScopes),
    Remove(CredentialScopes),
    Set(CredentialScopes),
}

#[derive(Args)]
pub struct Quiet {
    /// Print only names or ids.
    #[arg(short, long)]
    pub quiet: bool,
}

#[derive(Args)]
pub struct OneQuiet {
    pub id: String,
    #[arg(short, long)]
    pub quiet: bool,
}

#[derive(Args)]
pub struct Many {
    #[arg(required = true)]
    pub ids: Vec<String>,
    #[arg(short, long)]
    pub quiet: bool,
}

#[derive(Args)]
pub struct Update {
    pub id: String,
    #[command(flatten)]
    pub props: Props,
    #[arg(short, long)]
    pub quiet: bool,
}

#[derive(Args)]
pub struct CreateUser {
    #[command(flatten)]
    pub props: Props,
    #[arg(short, long)]
    pub quiet: bool,
}

#[derive(Args)]
pub struct CreateApp {
    /// The owning user (username or id).
    #[arg(short = 'u', long = "user")]
    pub user: String,
    #[command(flatten)]
    pub props: Props,
    #[arg(short, long)]
    pub quiet: bool,
}

#[derive(Args)]
pub struct ListCredentials {
    /// Only this consumer's (user or application, by name or id).
    #[arg(short = 'c', long = "consumer")]
    pub consumer: Option<String>,
    /// `active` (default), `archived` (inactive) or `all` (another is refused, as EG's
    /// `Unrecognised filter type`: it meant `active`).
    #[arg(short = 'f', long = "filter", default_value = "active", value_parser = ["active", "archived", "all"])]
    pub filter: String,
    #[arg(short, long)]
    pub quiet: bool,
}

#[derive(Args)]
pub struct OneCredential {
    /// keyId (key-auth, jwt) or consumer id (basic-auth, oauth2).
    pub id: String,
    #[arg(short = 't', long = "type")]
    pub kind: String,
    #[arg(short, long)]
    pub quiet: bool,
}

#[derive(Args)]
pub struct CreateCredential {
    /// The consumer (with `--stdin`, each credential's `consumer` field stands for it).
    #[arg(short = 'c', long = "consumer", required_unless_present = "stdin")]
    pub consumer: Option<String>,
    /// key-auth, jwt, basic-auth or oauth2 (with `--stdin`, each credential's `type` field
    /// stands for it).
    #[arg(short = 't', long = "type", required_unless_present = "stdin")]
    pub kind: Option<String>,
    #[command(flatten)]
    pub props: Props,
    /// Print only `keyId:keySecret` (or `consumerId:password`).
    #[arg(short, long)]
    pub quiet: bool,
}

#[derive(Args)]
pub struct CredentialScopes {
    pub id: String,
    #[arg(short = 't', long = "type")]
    pub kind: String,
    /// At least one, as EG's `<scopes..>` (none set them all away, and reported success).
    #[arg(required = true)]
    pub scopes: Vec<String>,
}

/// Reports of a command run: what it printed and whether it failed.
pub type Outcome = Result<(), String>;

pub(crate) fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default()
}

/// One object as the CLI prints it: its `field` alone with -q, else the whole object.
fn shown(v: &Value, quiet: bool, field: &str) -> String {
    if quiet {
        v[field].as_str().unwrap_or("").to_string()
    } else {
        pretty(v)
    }
}

fn failure(a: &Answer) -> String {
    let text = a.body.trim();
    if text.is_empty() || text == "{}" {
        http::StatusCode::from_u16(a.status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("error")
            .to_string()
    } else {
        text.to_string()
    }
}

fn check(a: Answer) -> Result<Answer, String> {
    if a.ok() {
        Ok(a)
    } else {
        Err(failure(&a))
    }
}

fn enc(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

fn props_object(p: &Props) -> Result<Map<String, Value>, String> {
    let mut obj = if p.stdin {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|e| format!("cannot read standard input: {e}"))?;
        match serde_json::from_str::<Value>(&text)
            .map_err(|e| format!("standard input is not JSON: {e}"))?
        {
            Value::Object(o) => o,
            _ => return Err("standard input must hold a JSON object".into()),
        }
    } else {
        Map::new()
    };
    for kv in &p.props {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| format!("`{kv}` is not key=value"))?;
        let value = match serde_json::from_str::<Value>(v) {
            Ok(
                j @ (Value::Array(_)
                | Value::Object(_)
                | Value::Bool(_)
                | Value::Number(_)
                | Value::Null),
            ) => j,
            _ => Value::String(v.to_string()),
        };
        obj.insert(k.to_string(), value);
    }
    Ok(obj)
}

/// Lists every page of `/users` or `/apps`.
fn list_all(c: &AdminClient, route: &str, key: &str) -> Result<Vec<Value>, String> {
    let mut out = Vec::new();
    let mut start = 0;
    loop {
        let a = check(
            c.call("GET", &format!("/{route}?start={start}&count=1000"), None)
                .map_err(|e| e.to_string())?,
        )?;
        let page = a.json();
        out.extend(page[key].as_array().cloned().unwrap_or_default());
        match page["nextKey"].as_u64() {
            Some(n) if n > 0 => start = n,
            _ => return Ok(out),
        }
    }
}

pub(crate) fn call(
    c: &AdminClient,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> Result<Answer, String> {
    check(c.call(method, path, body).map_err(|e| e.to_string())?)
}

fn status_each(c: &AdminClient, route: &str, m: &Many, active: bool) -> Outcome {
    let word = if active { "Activated" } else { "Deactivated" };
    let body = serde_json::json!({ "status": active });
    each(m.ids.iter(), |id| {
        call(
            c,
            "PUT",
            &format!("/{route}/{}/status", enc(id)),
            Some(&body),
        )?;
        if !m.quiet {
            eprintln!("✔ {word} {id}");
        }
        Ok(())
    })
}

fn remove_each(c: &AdminClient, route: &str, m: &Many) -> Outcome {
    each(m.ids.iter(), |id| {
        call(c, "DELETE", &format!("/{route}/{}", enc(id)), None)?;
        if !m.quiet {
            eprintln!("✔ Removed {id}");
        }
        Ok(())
    })
}

/// Does `one` for every name, as EG's CLI does: a name that fails is said (`✖`) and the
/// others are still done; the outcome fails when one did (one name alone: with its reason).
fn each<'a>(
    names: impl ExactSizeIterator<Item = &'a String>,
    mut one: impl FnMut(&str) -> Outcome,
) -> Outcome {
    let all = names.len();
    if all == 1 {
        return names.into_iter().try_for_each(|n| one(n));
    }
    let mut failed = 0;
    for name in names {
        if let Err(why) = one(name) {
            failed += 1;
            eprintln!("✖ {why}");
        }
    }
    match failed {
        0 => Ok(()),
        n => Err(format!("{n} of {all} failed")),
    }
}

/// Users and applications are listed, shown, created and updated alike; these are the parts.
struct Kind {
    route: &'static str,
    /// The field `-q` prints.
    quiet_field: &'static str,
    none: &'static str,
}

const USERS: Kind = Kind {
    route: "users",
    quiet_field: "username",
    none: "You have no users",
};
const APPS: Kind = Kind {
    route: "apps",
    quiet_field: "id",
    none: "You have no apps",
};

fn list_kind(c: &AdminClient, k: &Kind, quiet: bool) -> Outcome {
    let items = list_all(c, k.route, k.route)?;
    if items.is_empty() && !quiet {
        println!("{}", k.none);
    }
    for item in items {
        println!("{}", shown(&item, quiet, k.quiet_field));
    }
    Ok(())
}

fn info_kind(c: &AdminClient, k: &Kind, o: &OneQuiet) -> Outcome {
    let v = call(c, "GET", &format!("/{}/{}", k.route, enc(&o.id)), None)?.json();
    println!("{}", shown(&v, o.quiet, "id"));
    Ok(())
}

/// Prints what a create or update returned: the id with -q, else the object and a confirmation.
fn written(v: &Value, quiet: bool, confirmation: &str) {
    let id = v["id"].as_str().unwrap_or("");
    if quiet {
        println!("{id}");
    } else {
        println!("{}", pretty(v));
        eprintln!("✔ {confirmation} {id}");
    }
}

fn update_kind(c: &AdminClient, k: &Kind, up: &Update) -> Outcome {
    let body = Value::Object(props_object(&up.props)?);
    let v = call(
        c,
        "PUT",
        &format!("/{}/{}", k.route, enc(&up.id)),
        Some(&body),
    )?
    .json();
    written(&v, up.quiet, "Updated");
    Ok(())
}

pub fn users(c: &AdminClient, cmd: UsersCmd) -> Outcome {
    match cmd {
        UsersCmd::List(q) => list_kind(c, &USERS, q.quiet),
        UsersCmd::Info(o) => info_kind(c, &USERS, &o),
        UsersCmd::Create(cu) => {
            let v = call(
                c,
                "POST",
                "/users",
                Some(&Value::Object(props_object(&cu.props)?)),
            )?
            .json();
            written(&v, cu.quiet, "Created");
            Ok(())
        }
        UsersCmd::Update(up) => update_kind(c, &USERS, &up),
        UsersCmd::Activate(m) => status_each(c, "users", &m, true),
        UsersCmd::Deactivate(m) => status_each(c, "users", &m, false),
        UsersCmd::Remove(m) => remove_each(c, "users", &m),
    }
}

pub fn apps(c: &AdminClient, cmd: AppsCmd) -> Outcome {
    match cmd {
        AppsCmd::List(q) => list_kind(c, &APPS, q.quiet),
        AppsCmd::Info(o) => info_kind(c, &APPS, &o),
        AppsCmd::Create(ca) => {
            let mut body = props_object(&ca.props)?;
            body.insert("userId".into(), Value::String(ca.user.clone()));
            let v = call(c, "POST", "/apps", Some(&Value::Object(body)))?.json();
            written(&v, ca.quiet, "Created");
            Ok(())
        }
        AppsCmd::Update(up) => update_kind(c, &APPS, &up),
        AppsCmd::Activate(m) => status_each(c, "apps", &m, true),
        AppsCmd::Deactivate(m) => status_each(c, "apps", &m, false),
        AppsCmd::Remove(m) => remove_each(c, "apps", &m),
    }
}

pub fn scopes(c: &AdminClient, cmd: ScopesCmd) -> Outcome {
    match cmd {
        ScopesCmd::List(q) => {
            let list = call(c, "GET", "/scopes", None)?.json();
            let scopes = list["scopes"].as_array().cloned().unwrap_or_default();
            if scopes.is_empty() && !q.quiet {
                println!("You have no scopes");
            }
            for s in scopes {
                println!("{}", s.as_str().unwrap_or(""));
            }
            Ok(())
        }
        ScopesCmd::Info(o) => {
            let s = call(c, "GET", &format!("/scopes/{}", enc(&o.id)), None)?.json();
            println!("{}", shown(&s, o.quiet, "scope"));
            Ok(())
        }
        ScopesCmd::Create(m) => {
            call(
                c,
                "POST",
                "/scopes",
                Some(&serde_json::json!({ "scopes": m.ids })),
            )?;
            if !m.quiet {
                eprintln!("✔ Created {}", m.ids.join(","));
            }
            Ok(())
        }
        ScopesCmd::Remove(m) => remove_each(c, "scopes", &m),
    }
}

pub fn credentials(c: &AdminClient, cmd: CredentialsCmd) -> Outcome {
    match cmd {
        CredentialsCmd::List(l) => {
            let path = match &l.consumer {
                Some(id) => format!("/credentials/{}", enc(id)),
                None => "/credentials".to_string(),
            };
            let answer = c.call("GET", &path, None).map_err(|e| e.to_string())?;
            if answer.status == 404 {
                return Err(format!(
                    "Consumer {} not found",
                    l.consumer.as_deref().unwrap_or("")
                ));
            }
            let creds = check(answer)?.json()["credentials"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let wanted: Vec<&Value> = creds
                .iter()
                .filter(|cr| match l.filter.as_str() {
                    "archived" => cr["isActive"] == Value::Bool(false),
                    "all" => true,
                    _ => cr["isActive"] == Value::Bool(true),
                })
                .collect();
            if wanted.is_empty() {
                return Err(match l.consumer.as_deref() {
                    Some(c) => format!("Consumer {c} has no credentials"),
                    // (EG's says `Consumer undefined`.)
                    None => "No credentials".into(),
                });
            }
            for cr in wanted {
                if l.quiet {
                    println!(
                        "{}",
                        cr["keyId"].as_str().or(cr["id"].as_str()).unwrap_or("")
                    );
                } else {
                    println!("{}", pretty(cr));
                }
            }
            Ok(())
        }
        CredentialsCmd::Info(o) => {
            let cr = call(
                c,
                "GET",
                &format!("/credentials/{}/{}", enc(&o.kind), enc(&o.id)),
                None,
            )?
            .json();
            if cr.is_null() {
                return Err(format!("No {} credential {}", o.kind, o.id));
            }
            // `-q`: its id alone, as EG's (the whole credential, its secret too, went out).
            match o.quiet {
                true => println!(
                    "{}",
                    cr["keyId"].as_str().or(cr["id"].as_str()).unwrap_or(&o.id)
                ),
                false => println!("{}", pretty(&cr)),
            }
            Ok(())
        }
        CredentialsCmd::Create(cc) if cc.props.stdin => {
            // As EG's: one credential per line of JSON, its `consumer` and `type` taken out of
            // it (else `-c` and `-t`), the `-p` properties added to each.
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .map_err(|e| format!("cannot read standard input: {e}"))?;
            let extra = props_object(&Props {
                props: cc.props.props.clone(),
                stdin: false,
            })?;
            // One that fails is said and the others are still made (as EG's).
            // (Numbered as the input's lines are, blank ones counted.)
            let lines: Vec<String> = text
                .lines()
                .enumerate()
                .filter(|(_, l)| !l.trim().is_empty())
                .map(|(i, l)| format!("{}\n{l}", i + 1))
                .collect();
            each(lines.iter(), |numbered| {
                let (n, line) = numbered.split_once('\n').unwrap_or(("", numbered));
                let Value::Object(mut props) = serde_json::from_str::<Value>(line)
                    .map_err(|e| format!("line {n} of standard input is not JSON: {e}"))?
                else {
                    return Err(format!(
                        "line {n} of standard input does not hold a JSON object"
                    ));
                };
                let mut taken = |field: &str, flag: char, given: &Option<String>| {
                    match props
                    .remove(field)
                {
                    Some(Value::String(v)) => Ok(v),
                    _ => given.clone().ok_or_else(|| {
                        format!("line {n} of standard input: a credential without `{field}` (nor -{flag})")
                    }),
                }
                };
                let consumer = taken("consumer", 'c', &cc.consumer)?;
                let kind = taken("type", 't', &cc.kind)?;
                props.extend(extra.clone());
                create_credential(c, &consumer, &kind, props, cc.quiet)
                    .map_err(|why| format!("line {n} of standard input: {why}"))
            })
        }
        CredentialsCmd::Create(cc) => {
            let (Some(consumer), Some(kind)) = (&cc.consumer, &cc.kind) else {
                return Err(
                    "must include either --stdin or -c with -t (--consumer with --type)".into(),
                );
            };
            let props = props_object(&cc.props)?;
            create_credential(c, consumer, kind, props, cc.quiet)
        }
        CredentialsCmd::Activate(o) => credential_status(c, &o, true),
        CredentialsCmd::Deactivate(o) => credential_status(c, &o, false),
        CredentialsCmd::Remove(o) => {
            call(
                c,
                "DELETE",
                &format!("/credentials/{}/{}", enc(&o.kind), enc(&o.id)),
                None,
            )?;
            if !o.quiet {
                eprintln!("✔ Removed {}", o.id);
            }
            Ok(())
        }
        CredentialsCmd::Scopes(sc) => {
            let (verb, s) = match sc {
                CredentialScopesCmd::Add(s) => ("add", s),
                CredentialScopesCmd::Remove(s) => ("remove", s),
                CredentialScopesCmd::Set(s) => ("set", s),
            };
            let base = format!("/credentials/{}/{}/scopes", enc(&s.kind), enc(&s.id));
            match verb {
                "set" => {
                    call(
                        c,
                        "PUT",
                        &base,
                        Some(&serde_json::json!({ "scopes": s.scopes })),
                    )?;
                }
                _ => {
                    let method = if verb == "add" { "PUT" } else { "DELETE" };
                    each(s.scopes.iter(), |scope| {
                        call(c, method, &format!("{base}/{}", enc(scope)), None).map(drop)
                    })?;
                }
            }
            eprintln!("✔ Scopes of {} updated", s.id);
            Ok(())
        }
    }
}

/// Creates a credential of `kind` for `consumer` with `props` and prints it (`quiet`: its key
/// and secret alone).
fn create_credential(
    c: &AdminClient,
    consumer: &str,
    kind: &str,
    mut props: Map<String, Value>,
    quiet: bool,
) -> Outcome {
    // One scope given as `-p scopes=wms` is a list of one, as EG's CLI makes it.
    if let Some(Value::String(one)) = props.get("scopes") {
        let list = Value::Array(vec![Value::String(one.clone())]);
        props.insert("scopes".into(), list);
    }
    let body = serde_json::json!({
        "consumerId": consumer,
        "type": kind,
        "credential": Value::Object(props),
    });
    let cr = call(c, "POST", "/credentials", Some(&body))?.json();
    let id = cr["keyId"]
        .as_str()
        .or(cr["id"].as_str())
        .unwrap_or("")
        .to_string();
    if quiet {
        if cr["keyId"].is_string() {
            println!("{}:{}", id, cr["keySecret"].as_str().unwrap_or(""));
        } else {
            let secret = cr["password"].as_str().or(cr["secret"].as_str());
            match secret {
                Some(s) => println!("{id}:{s}"),
                None => println!("{id}"),
            }
        }
    } else {
        println!("{}", pretty(&cr));
        eprintln!("✔ Created {id}");
    }
    Ok(())
}

fn credential_status(c: &AdminClient, o: &OneCredential, active: bool) -> Outcome {
    call(
        c,
        "PUT",
        &format!("/credentials/{}/{}/status", enc(&o.kind), enc(&o.id)),
        Some(&serde_json::json!({ "status": active })),
    )?;
    if !o.quiet {
        eprintln!(
            "✔ {} {}",
            if active { "Activated" } else { "Deactivated" },
            o.id
        );
    }
    Ok(())
}
