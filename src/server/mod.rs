//! Starting the gateway: load and compile the config, load the consumers and apply
//! `--populate` (`consumers_start`), start the proxy and admin listeners on Pingora, keep
//! upstream addresses resolved (`drain`), act on signals (`signals`) and drain in-flight
//! requests on SIGTERM (`drain`).

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use arc_swap::ArcSwap;
use pingora_core::server::configuration::{Opt, ServerConf};
use pingora_core::server::{RunArgs, Server};

use crate::admin::service::AdminService;
use crate::admin::AdminApi;
use crate::config;
use crate::consumers::populate;
use crate::consumers::setup::ConsumerLayer;
use crate::counters::Counters;
use crate::gateway::{Gateway, Shared};
use crate::health::Health;
use crate::listener::{ClientLimits, Endpoint, ListenerService};
use crate::proxy::Tollgate;
use consumers_start::{first_load, populate_when_reachable, subscribed_before_handover};

mod consumers_start;
mod drain;
mod signals;
mod start_checks;
mod upgrade_sock;

use drain::{exit_when_drained, start_dns_refresh};
use signals::{Signals, Taken};
use start_checks::{before_the_sockets, check_free};

/// How `tollgate serve` runs.
pub struct ServeOptions {
    /// The config directory stack, defaults first.
    pub config_dirs: config::ConfigDirs,
    /// Worker threads; `None` = one per core.
    pub threads: Option<usize>,
    /// The longest SIGTERM waits for in-flight requests.
    pub grace_period: u64,
    /// Where the embedded store keeps its files.
    pub data_dir: std::path::PathBuf,
    /// A consumers file to apply before serving (Kargo's populate plugin).
    pub populate: Option<std::path::PathBuf>,
    /// How often the consumer cache reloads everything.
    pub resync: Duration,
    /// A bearer token the Admin API requires, when set.
    pub admin_token: Option<String>,
    /// Where the access log goes, if anywhere.
    pub access_log: Option<crate::access_log::Target>,
    /// What a client connection may take.
    pub client_limits: ClientLimits,
    /// Whether the connection cap was set by the operator (a lower one is then worth a warning).
    pub max_connections_given: bool,
    /// Serve what it can on the fast path.
    pub fast_path: bool,
    /// Where the tile cache keeps objects.
    pub cache: crate::cache::StoreOptions,
    /// Take the listening sockets over from a running gateway (a binary upgrade).
    pub upgrade: bool,
    /// The socket the listening sockets are handed over on.
    pub upgrade_sock: std::path::PathBuf,
}

/// How long an upgrading process waits for the old one to let go of the embedded store.
const HANDOVER_WAIT: Duration = Duration::from_secs(60);

/// How often upstream names are looked up again.
const DNS_REFRESH: Duration = Duration::from_secs(30);

/// How long a quick shutdown waits for the worker runtimes before the process exits anyway.
const RUNTIME_EXIT_LIMIT: Duration = Duration::from_secs(2);

/// Client connections the Admin API holds at most (it stays reachable when the gateway's
/// listeners are at their cap).
const ADMIN_MAX_CONNECTIONS: usize = 256;

/// Descriptors kept for everything but client connections (upstream pools, Redis, files).
const RESERVED_FDS: u64 = 256;

/// Loads and compiles a config stack, or returns the errors as one printable block.
pub fn load_gateway(
    dirs: &config::ConfigDirs,
    shared: &Shared,
) -> Result<Gateway, config::error::ConfigErrors> {
    let loaded = config::load_dirs(dirs)?;
    Gateway::build(loaded, shared)
}

/// The https listener's address and its TLS acceptor: the `default` certificate (else the
/// first), the others by SNI in the config's order.
pub(crate) fn https_acceptor(
    h: &config::gateway_file::HttpsDef,
) -> anyhow::Result<(String, Arc<pingora_core::tls::ssl::SslAcceptor>)> {
    let cert = h
        .certs
        .iter()
        .find(|c| c.host_glob == "default")
        .or_else(|| h.certs.first())
        .context("https needs a certificate")?;
    let addr = bind_addr(h.listener.host.as_deref(), "0.0.0.0", h.listener.port);
    // Every certificate but `default` is looked for by name in the config's order: also the
    // first when it stands in for a missing `default` (left out, a later glob matching the
    // same name won over it).
    let by_name: Vec<(String, String, String)> = h
        .certs
        .iter()
        .filter(|c| c.host_glob != "default")
        .map(|c| (c.host_glob.clone(), c.cert.clone(), c.key.clone()))
        .collect();
    let tls = crate::listener::tls_acceptor_by_name(&cert.cert, &cert.key, &by_name)
        .with_context(|| format!("https on {addr}"))?;
    Ok((addr, tls))
}

/// Runs until a signal stops the process. Returns only on a start-up error.
pub fn serve(opts: ServeOptions) -> anyhow::Result<()> {
    // Background work (cache refresh, store I/O of the Admin API) runs on a runtime of its own.
    let background = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("tollgate-bg")
        .enable_all()
        .build()
        .context("cannot start the background runtime")?;
    // SIGHUP from the start: one that comes while a large config is read (a reload sent to a
    // process starting, an upgrade's) waits for the server, which then reads the config
    // again, instead of ending the process (its default action).
    let early_hup = background
        .block_on(async { tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) })
        .inspect_err(|e| log::warn!("cannot take SIGHUP before the server runs: {e}"))
        .ok();
    let before = crate::lifecycle::ReadBefore::of(&opts.config_dirs, &[]);
    let loaded = match config::load_dirs(&opts.config_dirs) {
        Ok(l) if l.errors.0.is_empty() => l,
        // Nothing is opened or changed (the consumer store, `--populate`) on a config with
        // an error: a refused setting is read as its default, another Redis database perhaps.
        // Compiled all the same, for every problem at once.
        Ok(l) => {
            let errors = Gateway::build(l, &Shared::detached()).err();
            eprintln!("{}", errors.unwrap_or_default());
            std::process::exit(2);
        }
        Err(errors) => {
            eprintln!("{errors}");
            std::process::exit(2);
        }
    };
    loaded.say_defaults();
    // The listening sockets first (from the old process, when upgrading): what takes long —
    // opening the embedded store (it reads all of it), the consumers' first load, the disk
    // tier's scan — comes after. The old process offers them for a few seconds only; after a
    // slower start both would be gone. Meanwhile clients wait in the sockets' backlog.
    let threads = opts
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    // (Raised once, to its hard limit: the threads' runtimes and the connections share it.)
    let fds = crate::listener::raise_fd_limit();
    let threads = start_checks::room_for_threads(threads, opts.threads.is_some(), fds)?;
    start_checks::upgrade_sock_usable(&opts.upgrade_sock, opts.upgrade)?;
    let conf = ServerConf {
        threads,
        grace_period_seconds: Some(opts.grace_period),
        graceful_shutdown_timeout_seconds: Some(1),
        // One single-threaded runtime per worker, as nginx runs one process per core: a
        // connection stays on its thread. Measured against work stealing on the tile
        // benchmark: p99 4.0 ms instead of 5.3 ms at the same throughput (within 3%).
        work_stealing: false,
        upgrade_sock: opts.upgrade_sock.display().to_string(),
        ..ServerConf::default()
    };
    let opt = Opt {
        upgrade: opts.upgrade,
        ..Opt::default()
    };
    // The certificates before the sockets: an upgrading process that cannot use them leaves
    // before it took the sockets from the old one, which goes on serving.
    let https_acceptor = match &loaded.gateway.https {
        Some(h) => Some(https_acceptor(h)?),
        None => None,
    };
    // So is a config that reads but does not compile (a pipeline naming an endpoint that is
    // not there), where acting first would cost: on an upgrade, found before the handover,
    // not after it, when the old process stops accepting and this one leaves with nothing
    // listening; with `--populate`, before the consumer store is changed. (A second read of
    // the files: the real compile needs the consumers, opened later.)
    if opts.upgrade || opts.populate.is_some() {
        let compiled = config::load_dirs(&opts.config_dirs)
            .and_then(|again| Gateway::build(again, &Shared::detached()).map(drop));
        if let Err(errors) = compiled {
            eprintln!("{errors}");
            std::process::exit(2);
        }
    }
    // The consumers file too: one missing or wrong, found after the sockets were taken from
    // an upgraded process, left nothing serving.
    let populate_file = match &opts.populate {
        Some(path) => match populate::read_file(path) {
            Ok(file) => Some((path, file)),
            Err(e) => {
                eprintln!("tollgate: populate from {}: {e:#}", path.display());
                std::process::exit(2);
            }
        },
        None => None,
    };
    if opts.upgrade {
        let g = &loaded.gateway;
        let listen = listen_addrs(g.http.as_ref(), g.https.as_ref(), g.admin.as_ref());
        before_the_sockets(&opts, &listen)?;
    }
    // (Before the sockets too: a file that cannot be opened ends the start.)
    if let Some(target) = &opts.access_log {
        crate::access_log::start(target.clone())
            .with_context(|| format!("cannot open the access log {}", target.describe()))?;
    }
    let mut server = Server::new_with_opt_and_conf(opt, conf);
    server.bootstrap();
    // From here on this process holds the sockets: SIGTERM, SIGQUIT and SIGHUP are taken (one
    // that comes before Pingora's signal loop runs waits for it instead of taking its default
    // action: the end of the process, the connections queued reset). SIGINT still stops at
    // once. An upgrading process is the service's main one from now on (systemd: the old one
    // leaves before this one is ready when its start takes long).
    let early = background
        .block_on(async { Taken::now(early_hup) })
        .inspect_err(|e| log::warn!("cannot take the signals before the server runs: {e}"))
        .ok();
    if opts.upgrade {
        crate::lifecycle::notify_main_pid();
    }
    let consumers = ConsumerLayer::open(
        &loaded.system,
        &opts.config_dirs,
        &opts.data_dir,
        opts.upgrade.then_some(HANDOVER_WAIT),
    )?;
    let loaded_redis_emulated = loaded.system.redis.emulate;
    log::info!("consumers: {}", consumers.store.describe());
    // An upgrade serves with the tables of the process it takes over from (whatever the
    // store answers now) until its own load from the store, in the background. Taken at once:
    // that process leaves seconds after the sockets went. Subscribed to the store's changes
    // before: what changes after the tables were taken is heard (followed once they are in).
    // (None offered — the old process's own first read had not ended — nothing is waited
    // for: the old process stops accepting 5 s after the sockets went.)
    let offered = opts.upgrade
        && crate::consumers::cache::ConsumerCache::offered_by_upgraded(&opts.upgrade_sock);
    if opts.upgrade && !offered {
        log::warn!(
            "consumer cache: the process upgraded offered no tables (its first read of the store had not ended, or it offers none): serving at once, each credential looked up in the store until this process's read of it ends"
        );
    }
    let mut following = offered.then(|| consumers.cache.start(background.handle(), opts.resync));
    if let Some(f) = following.as_mut() {
        subscribed_before_handover(&background, f);
    }
    let handed = offered && consumers.cache.take_from_upgraded(&opts.upgrade_sock);
    match populate_file {
        // An upgrade holds the sockets now and the old process stops accepting: a populate
        // that failed here, waited for a Redis that is down or for another run's lock, or
        // hashed thousands of passwords, left nothing serving meanwhile (or at all). It runs
        // in the background once this process serves (its changes reach the consumer cache as
        // they are made, the store's consumers in force until then, as in the process taken
        // over from, which applied its file at its own start); a failure is an `error` line.
        Some((path, file)) if opts.upgrade => {
            let service = consumers.service.clone();
            let path = path.clone();
            background.spawn(async move {
                match populate_when_reachable(&service, &file).await {
                    Ok(report) => log::info!("populate {}: {report}", path.display()),
                    Err(e) => log::error!(
                        "populate from {}: {e:#}; the consumers the store holds stay in force",
                        path.display()
                    ),
                }
            });
        }
        Some((path, file)) => {
            let report = background
                .block_on(populate_when_reachable(&consumers.service, &file))
                .with_context(|| format!("populate from {}", path.display()))?;
            log::info!("populate {}: {report}", path.display());
        }
        None => {}
    }
    // Subscribed before the first read of the store: what changes while it runs (seconds with
    // many credentials) is followed at once, not lost until a read after it.
    following
        .unwrap_or_else(|| consumers.cache.start(background.handle(), opts.resync))
        .go(!handed);
    if !handed {
        first_load(&background, &consumers.cache, opts.upgrade);
    }
    let health = Arc::new(Health::new(consumers.cache.clone()));
    health.start_probe(background.handle(), consumers.store.clone());
    let shared = Shared {
        counters: Arc::new(Counters::default()),
        consumers: consumers.cache.clone(),
        upstreams: Arc::default(),
        shared_windows: (!loaded_redis_emulated).then(|| consumers.store.clone()),
        storage_pass: loaded
            .gateway
            .admin
            .as_ref()
            .map(|admin| crate::admin::StoragePass {
                value: crate::admin::storage_pass(opts.admin_token.as_deref()),
                port: admin.port,
                consumers_only: opts.admin_token.is_some(),
            }),
    };
    let tiles = crate::cache::init(&opts.cache)?;
    log::info!("{}", tiles.describe());
    start_checks::cache_memory_fits(opts.cache.memory as u64, start_checks::memory_limit());
    crate::cache::keep_records(background.handle());
    let started = crate::lifecycle::Started::of(&loaded, before);
    let gateway = match Gateway::build(loaded, &shared) {
        Ok(g) => g,
        Err(errors) => {
            crate::metrics::metrics().config_loaded(false);
            eprintln!("{errors}");
            std::process::exit(2);
        }
    };

    if gateway.http.is_none() && gateway.https.is_none() {
        bail!("{}: the gateway config has no `http` or `https` section, so there is nothing to listen on", opts.config_dirs.display());
    }
    let http = gateway.http.clone();
    let https = gateway.https.clone();
    crate::pipeline::expr::show_clients_as_eg_listening_on(
        http.as_ref()
            .map(|l| l.host.as_deref())
            .or_else(|| https.as_ref().map(|l| l.listener.host.as_deref()))
            .flatten(),
    );
    let admin = gateway.admin.clone();
    let current = Arc::new(ArcSwap::from_pointee(gateway));
    // Every name looked up before the first request (then refreshed in the background).
    crate::upstream::carry_addresses(std::iter::empty(), current.load().targets());
    start_dns_refresh(current.clone());
    crate::upstream::health::start_all(
        current.load().service_endpoints.values(),
        background.handle(),
    );
    crate::metrics::metrics().on_scrape(Box::new({
        let current = current.clone();
        move || crate::upstream::publish_health(&current.load())
    }));
    let lifecycle = Arc::new(crate::lifecycle::Lifecycle::new(
        started,
        shared,
        consumers.service.clone(),
        current.clone(),
        background.handle().clone(),
    ));
    let mut not_config = vec![opts.data_dir.clone()];
    not_config.extend(opts.cache.disk.as_ref().map(|(d, _)| d.clone()));
    if let Some(crate::access_log::Target::File(f)) = &opts.access_log {
        not_config.push(f.clone());
    }
    // The gateway's own log, where its standard output or error go to a file (`2>log` in a
    // config directory: each line written made a change, whose "no config input changed" at
    // debug made the next).
    not_config.extend(crate::lifecycle::watch::own_log_files());
    crate::lifecycle::watch::start(lifecycle.clone(), not_config);

    let listen = listen_addrs(http.as_ref(), https.as_ref(), admin.as_ref());
    if !opts.upgrade {
        check_free(&listen)?;
    }

    let limits = fit_to_fd_limit(
        opts.client_limits.clone(),
        opts.max_connections_given,
        fds,
        admin.is_some(),
    );
    let mut gateway_service = ListenerService::new(
        "tollgate gateway",
        {
            let mut proxy = pingora_proxy::http_proxy(
                &server.configuration,
                Tollgate {
                    gateway: current.clone(),
                    health: health.clone(),
                    h2_send_timeout: limits.send_timeout,
                    request_timeout: limits.request_timeout,
                    body_timeout: limits.body_timeout,
                },
            );
            proxy.h2_options = Some(crate::listener::h2::options(limits.max_connections));
            proxy
        },
        limits.clone(),
        Some(threads),
    );
    if opts.fast_path {
        gateway_service = gateway_service.with_fast_path(crate::fastpath::FastPath::new(
            current.clone(),
            health.clone(),
        ));
    }
    if let Some(l) = &http {
        let addr = bind_addr(l.host.as_deref(), "0.0.0.0", l.port);
        log::info!("gateway listening on http://{addr}");
        gateway_service.add(Endpoint { addr, tls: None });
    }
    if let Some((addr, tls)) = https_acceptor {
        log::info!("gateway listening on https://{addr}");
        gateway_service.add(Endpoint {
            addr,
            tls: Some(tls),
        });
    }
    server.add_service(gateway_service);

    if let Some(a) = &admin {
        let addr = bind_addr(a.host.as_deref(), "127.0.0.1", a.port);
        warn_open_admin(&addr, opts.admin_token.is_some());
        if opts.admin_token.is_none() {
            warn_proxied_admin(&current.load(), a.port);
        }
        let admin_service = AdminService {
            api: AdminApi {
                gateway: current.clone(),
                consumers: consumers.service.clone(),
                token: opts.admin_token.clone(),
                lifecycle: Some(lifecycle.clone()),
                storage_pass: crate::admin::storage_pass(opts.admin_token.as_deref()),
                request_timeout: limits.request_timeout,
                loopback: crate::admin::on_loopback(a.host.as_deref()),
            },
            gateway: current.clone(),
        };
        let mut service = ListenerService::new(
            "tollgate admin",
            pingora_proxy::http_proxy(&server.configuration, admin_service),
            ClientLimits {
                max_connections: ADMIN_MAX_CONNECTIONS.min(limits.max_connections),
                ..limits.clone()
            },
            Some(threads),
        )
        .leaving_at_hand_over();
        service.add(Endpoint {
            addr: addr.clone(),
            tls: None,
        });
        server.add_service(service);
        log::info!("admin API listening on http://{addr}");
    }

    // Where this process answers, for the CLI (healthcheck, reload, consumers) on this machine.
    crate::lifecycle::runfile::publish(
        &opts.config_dirs,
        &crate::lifecycle::runfile::Running {
            pid: std::process::id(),
            gateway: http
                .as_ref()
                .map(|l| crate::lifecycle::runfile::local_url("http", l.host.as_deref(), l.port))
                .or_else(|| {
                    https.as_ref().map(|h| {
                        crate::lifecycle::runfile::local_url(
                            "https",
                            h.listener.host.as_deref(),
                            h.listener.port,
                        )
                    })
                }),
            health_path: current.load().healthcheck.source.clone(),
            admin: admin
                .as_ref()
                .map(|a| crate::lifecycle::runfile::local_url("http", a.host.as_deref(), a.port)),
            listening: listen.clone(),
        },
    );
    exit_when_drained(
        &server,
        Duration::from_secs(opts.grace_period),
        consumers.store.clone(),
        listen.clone(),
    );
    // The background runtime lives as long as the process: the server's run ends in exit.
    std::mem::forget(background);
    server.run(RunArgs {
        shutdown_signal: Box::new(Signals {
            lifecycle,
            early: std::sync::Mutex::new(early),
            upgrade_sock: opts.upgrade_sock.clone(),
            consumers: consumers.cache.clone(),
        }),
    });
    // (Pingora's run ends here when its runtimes stopped first: SIGINT, or a grace period
    // that ran out before the drain thread saw no request in flight.)
    crate::cache::save_forwardings();
    crate::lifecycle::runfile::withdraw();
    std::process::exit(0)
}

/// Lowers the connection cap when the process's descriptor limit cannot hold it. The default
/// leaves room for an upstream connection per client connection; a cap given on the command
/// line only needs a descriptor per client connection (idle clients, as map users between two
/// views, hold none upstream).
fn fit_to_fd_limit(
    mut limits: ClientLimits,
    given: bool,
    fds: Option<u64>,
    admin: bool,
) -> ClientLimits {
    let Some(fds) = fds else {
        return limits;
    };
    // The Admin API's connections are its own, beside the cap: their descriptors were not
    // counted (a probe held its 256 under a limit of 1024 and the gateway's port ran out).
    let admin_fds = if admin {
        ADMIN_MAX_CONNECTIONS as u64
    } else {
        0
    };
    let usable = fds.saturating_sub(RESERVED_FDS + admin_fds);
    let fit = (if given { usable } else { usable / 2 }).max(16) as usize;
    if limits.max_connections > fit {
        if given {
            log::warn!(
                "the open-files limit ({fds}) holds {fit} client connections, not {}: the cap is {fit}",
                limits.max_connections
            );
        }
        limits.max_connections = fit;
    }
    log::info!(
        "client connections: at most {} per listener (open-files limit {fds})",
        limits.max_connections
    );
    limits
}

/// A pipeline that proxies to the Admin API's port (Kargo's example does, for the Host
/// `express-gateway`) opens it to everyone who reaches the gateway's own port.
fn warn_proxied_admin(gw: &Gateway, admin_port: u16) {
    for ep in gw.service_endpoints.values() {
        if ep
            .targets
            .iter()
            .any(|t| crate::admin::is_own_admin(t, admin_port))
        {
            log::warn!(
                "service endpoint `{}` is the Admin API without --admin-token: anyone who reaches the gateway through a pipeline that proxies to it can manage consumers",
                ep.name
            );
        }
    }
}

/// An Admin API reachable from other hosts without a token lets anyone manage consumers.
fn warn_open_admin(addr: &str, has_token: bool) {
    let loopback = addr
        .rsplit_once(':')
        .map(|(h, _)| h.trim_start_matches('[').trim_end_matches(']'))
        .and_then(|h| h.parse::<std::net::IpAddr>().ok())
        .is_some_and(|ip| ip.is_loopback());
    if !loopback && !has_token {
        log::warn!(
            "the Admin API listens on {addr}, beyond loopback, without --admin-token: anyone who reaches it can manage consumers"
        );
    }
}

/// The addresses the gateway's listeners bind: http, https, the Admin API.
fn listen_addrs(
    http: Option<&config::gateway_file::ListenerDef>,
    https: Option<&config::gateway_file::HttpsDef>,
    admin: Option<&config::gateway_file::ListenerDef>,
) -> Vec<String> {
    [
        http.map(|l| bind_addr(l.host.as_deref(), "0.0.0.0", l.port)),
        https.map(|h| bind_addr(h.listener.host.as_deref(), "0.0.0.0", h.listener.port)),
        admin.map(|a| bind_addr(a.host.as_deref(), "127.0.0.1", a.port)),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// `localhost` binds loopback; no host binds every interface.
fn bind_addr(host: Option<&str>, default: &str, port: u16) -> String {
    let host = match host {
        None | Some("") => default,
        Some("localhost") => "127.0.0.1",
        Some(h) => h,
    };
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The cap keeps two descriptors per client connection (one for its upstream) within the
    /// open-files limit, after the spare ones and, where the Admin API listens, its own
    /// connections; a cap given keeps one.
    #[test]
    fn the_connection_cap_leaves_the_admin_apis_descriptors_out() {
        let cap = |given: bool, asked: usize, admin: bool| {
            let limits = ClientLimits {
                max_connections: asked,
                ..ClientLimits::default()
            };
            fit_to_fd_limit(limits, given, Some(1024), admin).max_connections
        };
        assert_eq!(cap(false, 10_000, true), (1024 - 256 - 256) / 2);
        assert_eq!(cap(false, 10_000, false), (1024 - 256) / 2);
        assert_eq!(cap(true, 10_000, true), 1024 - 256 - 256);
        assert_eq!(cap(true, 100, true), 100);
    }
}
