//! The command line: `serve` and `check`.

use std::path::PathBuf;
use std::sync::Arc;

use clap::{Args, Parser, Subcommand};

use crate::counters::Counters;
use crate::server::{self, ServeOptions};

#[derive(Parser)]
#[command(
    name = "tollgate",
    version,
    about = "An API gateway that runs Express Gateway configs, on Pingora"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the gateway.
    Serve(ServeArgs),
    /// Check a config directory: exit 0 when valid, 2 with `file:line:column: reason` lines when not.
    Check(ConfigArg),
}

#[derive(Args)]
pub struct ConfigArg {
    /// The config directory (gateway.config.yml, system.config.yml).
    #[arg(long, short = 'c', env = "EG_CONFIG_DIR", default_value = "conf")]
    pub config: PathBuf,
}

#[derive(Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// Worker threads (default: one per core).
    #[arg(long, env = "TOLLGATE_THREADS")]
    pub threads: Option<usize>,
    /// Seconds SIGTERM waits for in-flight requests before exiting.
    #[arg(long, env = "TOLLGATE_GRACE_PERIOD", default_value_t = 5)]
    pub grace_period: u64,
}

/// Runs a command; returns the process exit code.
pub fn run(cli: Cli) -> i32 {
    match cli.command {
        Command::Serve(args) => {
            let opts = ServeOptions {
                config_dir: args.config.config,
                threads: args.threads.filter(|t| *t > 0),
                grace_period: args.grace_period,
            };
            match server::serve(opts) {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("tollgate: {e:#}");
                    1
                }
            }
        }
        Command::Check(args) => check(&args.config),
    }
}

fn check(dir: &std::path::Path) -> i32 {
    match server::load_gateway(dir, &Arc::new(Counters::default())) {
        Ok(gw) => {
            println!(
                "{}: valid ({} apiEndpoints, {} serviceEndpoints, {} pipelines)",
                dir.display(),
                gw.endpoints.len(),
                gw.service_endpoints.len(),
                gw.pipelines.len()
            );
            0
        }
        Err(errors) => {
            eprintln!("{errors}");
            2
        }
    }
}
