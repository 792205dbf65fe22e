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
    /// Purge one URL (as clients request it: `/wmts/1/2/3.png?...`, or an absolute URL),
    /// everything cached for an api endpoint, or everything cached for the URLs under a path.
    Purge {
        /// The URL to purge.
        #[arg(required_unless_present_any = ["api_endpoint", "prefix"], conflicts_with_all = ["api_endpoint", "prefix"])]
        url: Option<String>,
        /// The Host the URL is requested with, port included, as clients send it (when routes
        /// depend on it, or a route with `changeOrigin: false` keys tiles by it).
        #[arg(long, conflicts_with_all = ["api_endpoint", "prefix"])]
        host: Option<String>,
        /// Purge everything cached for this api endpoint.
        #[arg(long, conflicts_with = "prefix")]
        api_endpoint: Option<String>,
        /// Purge everything cached for the URLs whose path begins with this one, which ends
        /// with `/` (a layer: `/wmts/1.0.0/roads/`), whatever their host and query.
        #[arg(long)]
        prefix: Option<String>,
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
            prefix,
        } => {
            let body = match (url, api_endpoint, prefix) {
                (_, Some(e), _) => json!({ "apiEndpoint": e }),
                (_, None, Some(p)) => json!({ "prefix": p }),
                (Some(u), None, None) => json!({ "url": u, "host": host }),
                (None, None, None) => return Err("give a URL, --api-endpoint or --prefix".into()),
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
            } else if let Some(p) = answer["prefix"].as_str() {
                eprintln!("✔ Purged everything cached under {p}");
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
