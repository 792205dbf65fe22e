//! `tollgate users|apps|scopes|credentials ...`: EG's CLI over the Admin API. Output is EG's:
//! objects as indented JSON on stdout, `✔ ...` confirmations and `✖ ...` errors on stderr; unlike
//! EG, a failure exits with status 1.

use std::io::Read;

use serde_json::{Map, Value};

use super::admin_client::{AdminClient, Answer};

mod args;
mod credentials;

pub use args::*;
pub use credentials::credentials;

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

fn check(a: Answer) -> Result<Answer, String> {
    if a.ok() {
        Ok(a)
    } else {
        Err(a.failure())
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
    let mut seen = std::collections::HashSet::new();
    let mut start = 0;
    loop {
        let a = check(
            c.call("GET", &format!("/{route}?start={start}&count=1000"), None)
                .map_err(|e| e.to_string())?,
        )?;
        let items = a.listing(key)?;
        let page = a.json();
        // A page may repeat an object an earlier one listed (Redis' `SCAN` does, when its
        // table grows between two pages).
        for v in items {
            // (One without an id, written by hand, by the whole of it.)
            let id = v["id"]
                .as_str()
                .map_or_else(|| v.to_string(), |id| format!("\"{id}"));
            if seen.insert(id) {
                out.push(v);
            }
        }
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
        // (`-q`: the name alone, as EG's CLI prints it: a script reads what was done.)
        if m.quiet {
            println!("{id}");
        } else {
            eprintln!("✔ {word} {id}");
        }
        Ok(())
    })
}

fn remove_each(c: &AdminClient, route: &str, m: &Many) -> Outcome {
    each(m.ids.iter(), |id| {
        call(c, "DELETE", &format!("/{route}/{}", enc(id)), None)?;
        if m.quiet {
            println!("{id}");
        } else {
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
            // (The scope's name, as EG's CLI prints it, `-q` or not.)
            let s = call(c, "GET", &format!("/scopes/{}", enc(&o.id)), None)?.json();
            println!("{}", s["scope"].as_str().unwrap_or(&o.id));
            Ok(())
        }
        ScopesCmd::Create(m) => {
            call(
                c,
                "POST",
                "/scopes",
                Some(&serde_json::json!({ "scopes": m.ids })),
            )?;
            if m.quiet {
                for id in &m.ids {
                    println!("{id}");
                }
            } else {
                eprintln!("✔ Created {}", m.ids.join(","));
            }
            Ok(())
        }
        ScopesCmd::Remove(m) => remove_each(c, "scopes", &m),
    }
}
