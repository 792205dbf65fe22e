//! `tollgate credentials ...`: list, show, create (one, or one per line of standard input),
//! activate, deactivate and the scopes of a credential.

use std::io::Read;

use serde_json::{Map, Value};

use super::{
    call, check, each, enc, pretty, props_object, CredentialScopesCmd, CredentialsCmd,
    OneCredential, Outcome, Props,
};
use crate::cli::admin_client::AdminClient;

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
            let creds = check(answer)?.listing("credentials")?;
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
    // (`-q`: the id alone, as EG's CLI prints it.)
    if o.quiet {
        println!("{}", o.id);
    } else {
        eprintln!(
            "✔ {} {}",
            if active { "Activated" } else { "Deactivated" },
            o.id
        );
    }
    Ok(())
}
