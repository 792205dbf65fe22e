//! `tollgate cache status` and `tollgate cache purge`, over the Admin API.

use clap::Subcommand;
use serde_json::json;

use super::admin_client::AdminClient;
use super::consumers::{call, pretty, Outcome};

#[derive(Subcommand)]
pub enum CacheCmd {
    /// What the tile cache holds: objects and bytes per tier, evictions, declined misses, purge
    /// generations.
    Status,
    /// Purge one URL (as clients request it: `/wmts/1/2/3.png?...`, or an absolute URL), or
    /// everything cached for an api endpoint.
    Purge {
        /// The URL to purge.
        #[arg(
            required_unless_present = "api_endpoint",
            conflicts_with = "api_endpoint"
        )]
        url: Option<String>,
        /// The Host the URL is requested with, port included, as clients send it (when routes
        /// depend on it, or a route with `changeOrigin: false` keys tiles by it).
        #[arg(long, conflicts_with = "api_endpoint")]
        host: Option<String>,
        /// Purge everything cached for this api endpoint.
        #[arg(long)]
        api_endpoint: Option<String>,
    },
}

pub fn run(c: &AdminClient, cmd: CacheCmd) -> Outcome {
    match cmd {
        CacheCmd::Status => {
            println!(
                "{}",
                pretty(&call(c, "GET", "/tollgate/cache", None)?.json())
            );
            Ok(())
        }
        CacheCmd::Purge {
            url,
            host,
            api_endpoint,
        } => {
            let body = match (url, api_endpoint) {
                (_, Some(e)) => json!({ "apiEndpoint": e }),
                (Some(u), None) => json!({ "url": u, "host": host }),
                (None, None) => return Err("give a URL or --api-endpoint".into()),
            };
            let answered = c
                .call("POST", "/tollgate/cache/purge", Some(&body))
                .map_err(|e| e.to_string())?;
            let answer = answered.json();
            if !answered.ok() {
                // Refused, or purged until the next restart only: the reason.
                let why = answer["error"].as_str().map_or(answered.body.trim(), |e| e);
                return Err(format!("the purge failed ({}): {why}", answered.status));
            }
            if let Some(e) = answer["apiEndpoint"].as_str() {
                eprintln!("✔ Purged everything cached for api endpoint {e}");
            } else if answer["cached"] == json!(false) {
                // Nothing purged: a script must see it (a mistyped URL purges nothing).
                return Err(format!(
                    "{} is not cached by any pipeline",
                    answer["url"].as_str().unwrap_or("")
                ));
            } else {
                eprintln!(
                    "✔ Purged {} ({} object(s))",
                    answer["url"].as_str().unwrap_or(""),
                    answer["purged"]
                );
            }
            Ok(())
        }
    }
}
