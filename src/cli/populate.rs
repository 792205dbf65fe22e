//! `tollgate populate [FILE]` and `tollgate clean [FILE]`: through the running gateway's Admin
//! API when one answers, else directly on the configured store.

use std::path::PathBuf;

use clap::Args;

use super::ClientArgs;
use crate::config;
use crate::consumers::populate::{self as ops, ConsumersFile};
use crate::consumers::setup::ConsumerLayer;

#[derive(Args)]
pub struct PopulateArgs {
    /// The consumers file (default: DIR/consumers.config.json).
    pub file: Option<PathBuf>,
    #[command(flatten)]
    pub client: ClientArgs,
    /// The embedded store's directory, when no gateway is running (default: DIR/data).
    #[arg(long, env = "TOLLGATE_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Populate,
    Clean,
}

pub fn run(args: &PopulateArgs, action: Action) -> Result<(), String> {
    let dirs = crate::config::ConfigDirs::new(args.client.config.clone());
    let path = args.file.clone().unwrap_or_else(|| {
        dirs.resolve(std::path::Path::new("consumers.config.json"))
            .unwrap_or_else(|| dirs.last().join("consumers.config.json"))
    });
    let text = std::fs::read_to_string(&path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let file = ConsumersFile::parse(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let body: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let route = if action == Action::Populate {
        "/tollgate/populate"
    } else {
        "/tollgate/clean"
    };
    // A store named on the command line: a running gateway works on it only if it is its own.
    // (Not one from `TOLLGATE_DATA_DIR`, which a container or a unit sets for the gateway and
    // the CLI alike, whatever store the gateway uses: a Redis-backed one refused them all.)
    let from_env = std::env::var_os("TOLLGATE_DATA_DIR").map(std::path::PathBuf::from);
    let named = args
        .data_dir
        .as_ref()
        .filter(|d| Some(*d) != from_env.as_ref());
    let route = match named {
        Some(d) => {
            let d = std::path::absolute(d).unwrap_or_else(|_| d.clone());
            let d = percent_encoding::utf8_percent_encode(
                &d.display().to_string(),
                percent_encoding::NON_ALPHANUMERIC,
            )
            .to_string();
            format!("{route}?dataDir={d}")
        }
        None => route.to_string(),
    };
    let route = route.as_str();
    let client = args.client.client();
    let verb = if action == Action::Populate {
        "populating"
    } else {
        "cleaning"
    };
    let users = file.users.len();
    let shown = super::progress::Progress::spinner(&format!(
        "{verb} {users} user(s) from {}",
        path.display()
    ));
    let sent = client.call("POST", route, Some(&body));
    shown.finish();
    match sent {
        Ok(answer) if answer.ok() => {
            let r = answer.json();
            let report = crate::consumers::populate::Report {
                created: count(&r["created"]),
                removed: count(&r["removed"]),
                unchanged: count(&r["unchanged"]),
                deactivated: count(&r["deactivated"]),
            };
            eprintln!(
                "✔ {}: {report} (through {})",
                path.display(),
                crate::upstream::displayed(&client.base)
            );
            Ok(())
        }
        Ok(answer) => Err(answer.failure()),
        // Taken and not answered in time: the gateway may still be at it (a populate of
        // thousands of hashed passwords runs for minutes). Run here as well, it made every
        // user the gateway had not reached yet a second time.
        Err(u) if u.timed_out => Err(format!(
            "{} took the request and did not answer within the time allowed ({}): it may still be \
             running there; not run again here (see `tollgate users list` for its result)",
            u.url, u.reason
        )),
        // Taken and broken off (the gateway died under it): the store it worked on is its own,
        // perhaps not the one this machine's config names; never run here as well.
        Err(u) if !u.not_reached => Err(format!(
            "{} took the request and the connection broke ({}): part of it may be done there; \
             not run here (see `tollgate users list` for its result, and run it again)",
            u.url, u.reason
        )),
        Err(_) => {
            // No gateway answers: work on the store directly.
            let loaded = config::load_dirs(&dirs)
                .and_then(config::LoadedConfig::store_checked)
                .map_err(|e| e.to_string())?;
            loaded.say_defaults();
            let data_dir = args
                .data_dir
                .clone()
                .unwrap_or_else(|| dirs.last().join("data"));
            let layer = ConsumerLayer::open(&loaded.system, &dirs, &data_dir, None)
                .map_err(|e| format!("{e:#}"))?;
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            let shown = super::progress::Progress::spinner(&format!(
                "{verb} {users} user(s) in {}",
                layer.store.describe()
            ));
            let report = rt
                .block_on(async {
                    if action == Action::Populate {
                        ops::populate(&layer.service, &file).await
                    } else {
                        ops::clean(&layer.service, &file).await
                    }
                })
                .map_err(|e| e.to_string());
            shown.finish();
            let report = report?;
            eprintln!(
                "✔ {}: {report} (in {})",
                path.display(),
                layer.store.describe()
            );
            Ok(())
        }
    }
}

/// A count in the gateway's answer (0 when it has none: an older gateway's answer).
fn count(v: &serde_json::Value) -> usize {
    v.as_u64().map_or(0, |n| n as usize)
}
