//! The command line: `serve`, `check`, consumer management over the Admin API (`users`, `apps`,
//! `scopes`, `credentials`), and `populate` / `clean`.

pub mod admin_client;
pub mod cache;
pub mod consumers;
pub mod healthcheck;
pub mod populate;
pub mod progress;
pub mod show;

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::config::ConfigDirs;
use crate::gateway::Shared;
use crate::server::{self, ServeOptions};
pub use healthcheck::HealthcheckArgs;

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
    Serve(Box<ServeArgs>),
    /// Check a config directory: exit 0 when valid, 2 with `file:line:column: reason` lines when not.
    Check(ConfigArg),
    /// Manage users.
    Users(ClientCmd<consumers::UsersCmd>),
    /// Manage applications.
    Apps(ClientCmd<consumers::AppsCmd>),
    /// Manage scopes.
    Scopes(ClientCmd<consumers::ScopesCmd>),
    /// Manage credentials.
    Credentials(ClientCmd<consumers::CredentialsCmd>),
    /// Make the consumer store equal a consumers file (Kargo's format), in one change.
    Populate(populate::PopulateArgs),
    /// Remove what a consumers file created: its users (with apps and credentials) and scopes.
    Clean(populate::PopulateArgs),
    /// The tile cache: its state, and purging.
    Cache(ClientCmd<cache::CacheCmd>),
    /// Reload the running gateway's config now (as SIGHUP does); exit 1 when it fails.
    Reload(ClientArgs),
    /// Exit 0 when the gateway answers its health check (`--ready`: readiness), else 1 — for a
    /// container's HEALTHCHECK, with no curl in the image.
    Healthcheck(HealthcheckArgs),
    /// Print shell completions (bash, zsh, fish, elvish, powershell).
    Completions { shell: clap_complete::Shell },
    /// Print the man page (roff).
    Man,
    /// The config stack.
    Config(ConfigCmd),
}

#[derive(Args)]
pub struct ConfigCmd {
    #[command(subcommand)]
    pub command: ConfigSub,
}

#[derive(Subcommand)]
pub enum ConfigSub {
    /// Print the merged view: each file in force, the directory it comes from, its content.
    Show(ConfigArg),
}

/// Where the Admin API is, for the commands that use it.
#[derive(Args)]
pub struct ClientArgs {
    /// The config directories, to find the Admin API (the gateway running on them, else the
    /// system config's `cli.url`, else the admin host and port); several are layered as for
    /// `serve`.
    #[arg(
        long,
        global = true,
        env = "EG_CONFIG_DIR",
        value_delimiter = ':',
        default_value = "conf"
    )]
    pub config: Vec<PathBuf>,
    /// The Admin API URL.
    #[arg(long, global = true, env = "EG_ADMIN_URL")]
    pub admin_url: Option<String>,
    /// Bearer token for the Admin API.
    #[arg(
        long,
        global = true,
        env = "TOLLGATE_ADMIN_TOKEN",
        hide_env_values = true
    )]
    pub admin_token: Option<String>,
}

impl ClientArgs {
    pub fn client(&self) -> admin_client::AdminClient {
        admin_client::AdminClient::locate(
            &ConfigDirs::new(self.config.clone()),
            self.admin_url.as_deref(),
            self.admin_token.clone(),
        )
    }
}

#[derive(Args)]
pub struct ClientCmd<T: Subcommand> {
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(subcommand)]
    pub command: T,
}

#[derive(Args)]
pub struct ConfigArg {
    /// A config directory (gateway.config.yml, system.config.yml, models/, key files). Given
    /// several times (or `EG_CONFIG_DIR=a:b`), defaults first and workspace last: a file in a
    /// later directory replaces the same file of an earlier one.
    #[arg(
        long,
        short = 'c',
        env = "EG_CONFIG_DIR",
        value_delimiter = ':',
        default_value = "conf"
    )]
    pub config: Vec<PathBuf>,
}

impl ConfigArg {
    pub fn dirs(&self) -> ConfigDirs {
        ConfigDirs::new(self.config.clone())
    }
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
    /// Where the embedded consumer store keeps its files (default: DIR/data).
    #[arg(long, env = "TOLLGATE_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Make the consumer store equal this consumers file before serving (as Kargo's populate plugin).
    #[arg(long, env = "TOLLGATE_POPULATE")]
    pub populate: Option<PathBuf>,
    /// Seconds between full reloads of the consumer cache.
    #[arg(long, env = "TOLLGATE_RESYNC_SECONDS", default_value_t = 60)]
    pub resync_seconds: u64,
    /// Require `Authorization: Bearer <token>` on the Admin API.
    #[arg(long, env = "TOLLGATE_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Access log: `off`, `-` (stdout) or a file path; one JSON line per request.
    #[arg(long, env = "TOLLGATE_ACCESS_LOG", default_value = "off")]
    pub access_log: String,
    /// Seconds a client has to send a whole request head (a connection's first: from the connect).
    #[arg(long, env = "TOLLGATE_HEADER_TIMEOUT", default_value = "10", value_parser = seconds)]
    pub header_timeout: Duration,
    /// Seconds a keep-alive client connection may wait for its next request.
    #[arg(long, env = "TOLLGATE_KEEPALIVE_TIMEOUT", default_value = "60", value_parser = seconds)]
    pub keepalive_timeout: Duration,
    /// Seconds between two reads of a request body before the request is given up.
    #[arg(long, env = "TOLLGATE_BODY_TIMEOUT", default_value = "60", value_parser = seconds)]
    pub body_timeout: Duration,
    /// Seconds between two writes of a response to a client that does not read it.
    #[arg(long, env = "TOLLGATE_SEND_TIMEOUT", default_value = "60", value_parser = seconds)]
    pub send_timeout: Duration,
    /// Seconds a request's body may take to arrive whole (Node's `requestTimeout`, EG's).
    #[arg(long, env = "TOLLGATE_REQUEST_TIMEOUT", default_value = "300", value_parser = seconds)]
    pub request_timeout: Duration,
    /// The tile cache's memory budget (bytes; `k`, `M`, `G`, `T` suffixes, `KiB`... too).
    #[arg(long, env = "TOLLGATE_CACHE_MEMORY", default_value = "256MiB", value_parser = cache_budget)]
    pub cache_memory: u64,
    /// A directory for the tile cache's disk tier (none: memory only).
    #[arg(long, env = "TOLLGATE_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,
    /// The disk tier's budget.
    #[arg(long, env = "TOLLGATE_CACHE_DISK_SIZE", default_value = "1GiB", value_parser = cache_budget)]
    pub cache_disk_size: u64,
    /// Reach the upstream named HOST:PORT at ADDR:PORT (repeatable, or comma-separated in the
    /// variable), keeping HOST as Host header and TLS name — as curl's --connect-to.
    #[arg(long, env = "TOLLGATE_CONNECT_TO", value_name = "HOST:PORT=ADDR:PORT")]
    pub connect_to: Vec<String>,
    /// Take the listening sockets over from the running gateway (a zero-downtime binary
    /// upgrade: start this, then send SIGQUIT to the old process).
    #[arg(long, short = 'u')]
    pub upgrade: bool,
    /// The socket the listening sockets are handed over on (old and new process agree on it).
    #[arg(
        long,
        env = "TOLLGATE_UPGRADE_SOCK",
        default_value = "/tmp/tollgate-upgrade.sock"
    )]
    pub upgrade_sock: PathBuf,
    /// Client connections open at once per listener service; past it new ones wait in the
    /// backlog (default: 10000, or what the open-files limit holds).
    #[arg(long, env = "TOLLGATE_MAX_CONNECTIONS", value_parser = connections)]
    pub max_connections: Option<usize>,
    /// Serve bodiless HTTP/1 GET and HEAD requests on the fast path (`on`), or every request
    /// through Pingora's general proxy (`off`).
    #[arg(long, env = "TOLLGATE_FAST_PATH", default_value = "on", value_parser = ["on", "off"])]
    pub fast_path: String,
}

/// A size in bytes: `1048576`, `512k`, `256M`, `1G`, `2T` (powers of 1000 with `kB`/`MB`/`GB`/`TB`,
/// of 1024 with `k`/`M`/`G`/`T` or `KiB`/`MiB`/`GiB`/`TiB`).
pub fn size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a size (bytes, or with k, M, G, T)"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "t" | "tib" => 1 << 40,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        _ => return Err(format!("`{s}`: unknown size unit `{unit}`")),
    };
    let bytes = n * mult as f64;
    if !(bytes.is_finite() && (0.0..1e18).contains(&bytes)) {
        return Err(format!("`{s}` is out of range"));
    }
    Ok(bytes as u64)
}

/// A tile cache tier's budget: a [`size`] above 0 (a tier of none stores nothing: every
/// tile the cache stores passes through the memory tier, to the disk tier too, and every
/// request was a miss without a word).
pub fn cache_budget(s: &str) -> Result<u64, String> {
    match size(s)? {
        0 => Err(format!(
            "`{s}`: a tier of 0 bytes stores no tile (remove the pipelines' `cache` steps to \
             turn the cache off, leave out --cache-dir for no disk tier)"
        )),
        bytes => Ok(bytes),
    }
}

/// A positive number of seconds (fractions allowed).
fn seconds(s: &str) -> Result<Duration, String> {
    match s.trim().parse::<f64>() {
        Ok(v) if v > 0.0 && v.is_finite() && v < 1e9 => Ok(Duration::from_secs_f64(v)),
        _ => Err(format!("`{s}` is not a positive number of seconds")),
    }
}

/// A number of connections: at least one.
fn connections(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("`{s}` is not a number of connections (1 or more)")),
    }
}

/// Runs a command; returns the process exit code.
pub fn run(cli: Cli) -> i32 {
    if !matches!(cli.command, Command::Serve(_)) {
        // A command's output into a pipe its reader closed (`| head`) ends the command
        // quietly, as other command-line tools do; Rust ignores the signal and the next
        // `println!` would panic. (The server keeps ignoring it: a client's closed connection
        // is an error of that write, not the process's end.)
        // SAFETY: resets a signal's disposition before any thread is started.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    match cli.command {
        Command::Serve(args) => {
            let args = *args;
            let data_dir = args
                .data_dir
                .unwrap_or_else(|| args.config.dirs().last().join("data"));
            if let Err(e) = crate::upstream::set_connect_to(&args.connect_to) {
                eprintln!("tollgate: {e}");
                return 2;
            }
            let opts = ServeOptions {
                config_dirs: args.config.dirs(),
                threads: args.threads.filter(|t| *t > 0),
                grace_period: args.grace_period,
                data_dir,
                populate: args.populate,
                resync: std::time::Duration::from_secs(args.resync_seconds.max(1)),
                admin_token: args.admin_token.filter(|t| !t.is_empty()),
                access_log: crate::access_log::Target::parse(&args.access_log),
                client_limits: crate::listener::ClientLimits {
                    header_timeout: args.header_timeout,
                    keepalive_timeout: args.keepalive_timeout,
                    body_timeout: args.body_timeout,
                    send_timeout: args.send_timeout,
                    request_timeout: args.request_timeout,
                    max_connections: args
                        .max_connections
                        .unwrap_or(crate::listener::DEFAULT_MAX_CONNECTIONS)
                        .max(1),
                    ..Default::default()
                },
                max_connections_given: args.max_connections.is_some(),
                fast_path: args.fast_path == "on",
                upgrade: args.upgrade,
                upgrade_sock: args.upgrade_sock,
                cache: crate::cache::StoreOptions {
                    memory: usize::try_from(args.cache_memory).unwrap_or(usize::MAX),
                    disk: args.cache_dir.map(|d| (d, args.cache_disk_size)),
                },
            };
            match server::serve(opts) {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("tollgate: {e:#}");
                    1
                }
            }
        }
        Command::Check(args) => check(&args.dirs()),
        Command::Users(c) => finish(consumers::users(&c.client.client(), c.command)),
        Command::Apps(c) => finish(consumers::apps(&c.client.client(), c.command)),
        Command::Scopes(c) => finish(consumers::scopes(&c.client.client(), c.command)),
        Command::Credentials(c) => finish(consumers::credentials(&c.client.client(), c.command)),
        Command::Populate(args) => finish(populate::run(&args, populate::Action::Populate)),
        Command::Clean(args) => finish(populate::run(&args, populate::Action::Clean)),
        Command::Cache(c) => finish(cache::run(&c.client.client(), c.command)),
        Command::Reload(c) => finish(reload(&c.client())),
        Command::Config(c) => match c.command {
            ConfigSub::Show(a) => show::show_config(&a.dirs()),
        },
        Command::Healthcheck(a) => healthcheck::run(&a),
        Command::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "tollgate",
                &mut std::io::stdout(),
            );
            0
        }
        Command::Man => match man_page(&mut std::io::stdout()) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("tollgate: {e}");
                1
            }
        },
    }
}

/// The manual page: the command, then each of its commands (theirs too) in a section of its
/// own — their synopses, descriptions and options on the one page (no page is made for each,
/// so none is referred to).
fn man_page(w: &mut dyn std::io::Write) -> std::io::Result<()> {
    use clap::CommandFactory;
    let cmd = Cli::command();
    let man = clap_mangen::Man::new(cmd.clone());
    man.render_title(w)?;
    man.render_name_section(w)?;
    man.render_synopsis_section(w)?;
    man.render_description_section(w)?;
    man.render_options_section(w)?;
    fn commands(cmd: &clap::Command, path: &str, out: &mut Vec<clap::Command>) {
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
            let name = format!("{path} {}", sub.get_name());
            out.push(sub.clone().bin_name(name.clone()));
            commands(sub, &name, out);
        }
    }
    let mut all = Vec::new();
    commands(&cmd, "tollgate", &mut all);
    for sub in all {
        let title = sub.get_bin_name().unwrap_or("").to_uppercase();
        let man = clap_mangen::Man::new(sub.clone());
        let mut part = Vec::new();
        man.render_synopsis_section(&mut part)?;
        man.render_description_section(&mut part)?;
        if sub.get_arguments().any(|a| !a.is_hide_set()) {
            man.render_options_section(&mut part)?;
        }
        let part = String::from_utf8_lossy(&part)
            .replace(".SH SYNOPSIS", &format!(".SH \"{title}\"\n.SS Synopsis"))
            .replace(".SH DESCRIPTION", ".SS Description")
            .replace(".SH OPTIONS", ".SS Options");
        w.write_all(part.as_bytes())?;
    }
    Ok(())
}

/// Prints a failure as EG's CLI does, and gives the exit code.
fn finish(result: consumers::Outcome) -> i32 {
    match result {
        Ok(()) => 0,
        Err(why) => {
            eprintln!("✖ {why}");
            1
        }
    }
}

/// Removes the command line's environment variables that are set to nothing: none is a
/// value, as EG reads `EG_CONFIG_DIR=` (the command line took it for an empty `--config`, and
/// `EG_ADMIN_URL=` for an admin URL that is no URL). Run before the threads start.
pub fn unset_empty_variables() {
    use clap::CommandFactory;
    fn named(command: &clap::Command, out: &mut Vec<std::ffi::OsString>) {
        out.extend(
            command
                .get_arguments()
                .filter_map(|a| a.get_env().map(|e| e.to_os_string())),
        );
        for sub in command.get_subcommands() {
            named(sub, out);
        }
    }
    let mut names = Vec::new();
    named(&Cli::command(), &mut names);
    for name in names {
        if std::env::var_os(&name).is_some_and(|v| v.is_empty()) {
            std::env::remove_var(&name);
        }
    }
}

fn reload(client: &admin_client::AdminClient) -> consumers::Outcome {
    let answer = client
        .call("POST", "/tollgate/reload", None)
        .map_err(|e| e.to_string())?;
    let v = answer.json();
    for w in v["warnings"].as_array().into_iter().flatten() {
        eprintln!("warning: {}", w.as_str().unwrap_or(""));
    }
    match v["result"].as_str() {
        Some("failed") => {
            for e in v["errors"].as_array().into_iter().flatten() {
                eprintln!("{}", e.as_str().unwrap_or(""));
            }
            Err("the reload failed; the running config stays".into())
        }
        Some(result) => {
            for r in v["restartRequired"].as_array().into_iter().flatten() {
                eprintln!("! {}", r.as_str().unwrap_or(""));
            }
            eprintln!("✔ {result}");
            Ok(())
        }
        None => Err(answer.failure()),
    }
}

fn check(dirs: &ConfigDirs) -> i32 {
    // The models too: `serve` refuses a config whose models it cannot read (said with the
    // config's own errors, not instead of them).
    let models = crate::consumers::models::Models::load(dirs);
    if let Err(e) = &models {
        eprintln!("{e}");
    }
    match server::load_gateway(dirs, &Shared::detached()) {
        Ok(_) if models.is_err() => 2,
        Ok(gw) => {
            if dirs.find_config("system.config").is_none() {
                crate::config::no_system_config(dirs);
            }
            // The certificates together too (each was read with the config, where the file
            // names it): `serve` (an upgrade's new process) refuses what it cannot use.
            if let Some(h) = &gw.https {
                if let Err(e) = server::https_acceptor(h) {
                    eprintln!("{}: {e:#}", dirs.display());
                    return 2;
                }
            }
            // An endpoint written as a list has an entry each, side by side.
            let mut endpoints: Vec<&str> = gw.endpoints.iter().map(|e| &*e.name).collect();
            endpoints.dedup();
            println!(
                "{}: valid ({} apiEndpoints, {} serviceEndpoints, {} pipelines)",
                dirs.display(),
                endpoints.len(),
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

#[cfg(test)]
mod tests;
