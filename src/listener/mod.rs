//! Client connections: tollgate's own listening service on Pingora's HTTP apps.
//!
//! Pingora's listening service accepts without bound and lets a connection sit forever
//! between keep-alive requests or in the middle of a request head. This one:
//! - holds at most `max_connections` client connections per listener service; past that it
//!   stops accepting, so new connections wait in the kernel's accept backlog instead of using
//!   descriptors;
//! - bounds every request head (header timeout, size), keep-alive waits, and reads and writes
//!   of bodies ([`ClientLimits`]);
//! - writes through a buffer that exists only while a response is written ([`io`]);
//! - answers a request head Pingora's parser refuses with its own 400 (Pingora's proxy would
//!   answer a bare one with its own name), counted among the connections closed.
//!
//! The listening sockets go in Pingora's descriptor table, so a graceful upgrade hands them to
//! the new process as Pingora's own would be. Everything Pingora-specific about accepting
//! connections lives in this module.

mod conn;
pub mod h2;
mod head;
pub mod io;
mod workers;

pub use conn::awaiting_an_answer;
/// The most header lines a request head may have.
pub use head::MAX_HEADER_LINES;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// Accept loops that have not yet finished (their backlog taken in, on a shutdown).
static ACCEPTING: AtomicUsize = AtomicUsize::new(0);
/// Set once the listening sockets went to an upgrading process, which shares their queues.
static HANDED_OVER: AtomicBool = AtomicBool::new(false);
/// Set once the listening sockets have been sent to an upgrading process, for the accept
/// loops that stop then (see [`ListenerService::leaving_at_hand_over`]).
static SENT: std::sync::LazyLock<tokio::sync::watch::Sender<bool>> =
    std::sync::LazyLock::new(|| tokio::sync::watch::Sender::new(false));
/// Set by the hand-over or by a graceful stop: [`leaving`] is one load on the hot path.
static LEAVING: AtomicBool = AtomicBool::new(false);

/// How many listening sockets are still being accepted on: the drain on a shutdown waits for
/// them to take in what their backlog holds.
pub fn accepting() -> usize {
    ACCEPTING.load(Ordering::Relaxed)
}

/// The listening sockets went to an upgrading process: on the shutdown that follows, what
/// their backlogs hold is left to it.
pub fn sockets_handed_over() {
    HANDED_OVER.store(true, Ordering::Relaxed);
    LEAVING.store(true, Ordering::Relaxed);
}

/// The listening sockets have gone to the upgrading process (Pingora's sending of them is
/// over): the services that leave at the hand-over stop accepting.
pub fn sockets_sent() {
    SENT.send_replace(true);
}

/// Whether the listening sockets went to an upgrading process: this one is leaving, its
/// answers tell clients to close so that their next requests go to the new one.
pub(crate) fn handed_over() -> bool {
    HANDED_OVER.load(Ordering::Relaxed)
}

/// A graceful stop (SIGTERM) began: the answers of the requests in flight say
/// `Connection: close` (they said keep-alive, then the connection closed under the client's
/// next request).
pub fn stopping_now() {
    LEAVING.store(true, Ordering::Relaxed);
}

/// Whether this process is leaving (a graceful stop, or its sockets handed to an upgrading
/// one): an answer written now tells the client to close.
pub(crate) fn leaving() -> bool {
    LEAVING.load(Ordering::Relaxed)
}

/// One more in a process-wide count while this lives (an accept loop in [`accepting`], a
/// connection or request in [`awaiting_an_answer`]).
struct Counted(&'static AtomicUsize);

impl Counted {
    fn new(count: &'static AtomicUsize) -> Counted {
        count.fetch_add(1, Ordering::Relaxed);
        Counted(count)
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

use std::os::fd::{AsRawFd, FromRawFd};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use pingora_core::apps::HttpServerApp;
use pingora_core::server::{ListenFds, ShutdownWatch};
use pingora_core::tls::ssl::{SslAcceptor, SslMethod};
use tokio::sync::Semaphore;

/// What a client connection may take of the gateway.
#[derive(Clone, Debug)]
pub struct ClientLimits {
    /// A request head (request line and headers) must be complete within this, counted from
    /// its first byte (from the connect for a connection's first request, TLS included).
    pub header_timeout: Duration,
    /// How long a keep-alive connection may wait for its next request.
    pub keepalive_timeout: Duration,
    /// The longest wait between two reads of a request body.
    pub body_timeout: Duration,
    /// The longest wait between two writes of a response to a client that does not read.
    pub send_timeout: Duration,
    /// The longest a request's body may take to arrive whole, however it trickles.
    pub request_timeout: Duration,
    /// Client connections open at once, per listening service.
    pub max_connections: usize,
    /// The largest request head accepted (431 past it).
    pub max_head: usize,
}

impl Default for ClientLimits {
    fn default() -> Self {
        ClientLimits {
            header_timeout: Duration::from_secs(10),
            keepalive_timeout: Duration::from_secs(60),
            body_timeout: Duration::from_secs(60),
            send_timeout: Duration::from_secs(60),
            request_timeout: Duration::from_secs(300),
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_head: MAX_REQUEST_HEAD,
        }
    }
}

/// Client connections per listener service unless configured (or fewer, when the open-files
/// limit cannot hold them).
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;

/// The largest request head served. Node, and so EG, refuses more than 16 KiB; tollgate is
/// never stricter than that.
pub const MAX_REQUEST_HEAD: usize = 32 * 1024;

/// Connections the kernel queues for a listener while tollgate is not accepting (it clamps
/// this to `net.core.somaxconn`).
const BACKLOG: i32 = 65_535;

/// One address to listen on, with TLS when it has an acceptor.
pub struct Endpoint {
    pub addr: String,
    pub tls: Option<Arc<SslAcceptor>>,
}

/// A listening service: its endpoints, the HTTP app that serves their connections, and its
/// connection cap.
pub struct ListenerService<A> {
    name: String,
    endpoints: Vec<Endpoint>,
    app: Arc<A>,
    limits: Arc<ClientLimits>,
    threads: Option<usize>,
    fast: Option<Arc<crate::fastpath::FastPath>>,
    /// Whether its accept loops stop at an upgrade's hand-over (see
    /// [`Self::leaving_at_hand_over`]).
    leaves_at_hand_over: bool,
}

impl<A> ListenerService<A> {
    pub fn new(
        name: &str,
        app: A,
        limits: ClientLimits,
        threads: Option<usize>,
    ) -> ListenerService<A> {
        ListenerService {
            name: name.to_string(),
            endpoints: Vec::new(),
            app: Arc::new(app),
            limits: Arc::new(limits),
            threads,
            fast: None,
            leaves_at_hand_over: false,
        }
    }

    /// Stops accepting as soon as an upgrade has sent the listening sockets over (the new
    /// process takes what comes; what waits in the backlog waits for it), where the gateway's
    /// ports go on accepting until the shutdown, five seconds later, so that a new process
    /// slow to start is never waited on. For the Admin API: two processes answering its
    /// `/metrics` by turns had Prometheus see the counters fall and rise again (a reset
    /// counted at every turn, `increase()` twice the requests served).
    pub fn leaving_at_hand_over(mut self) -> Self {
        self.leaves_at_hand_over = true;
        self
    }

    /// Serves the HTTP/1 requests it can on the fast path, the others on the app.
    pub fn with_fast_path(mut self, fast: crate::fastpath::FastPath) -> Self {
        self.fast = Some(Arc::new(fast));
        self
    }

    pub fn add(&mut self, endpoint: Endpoint) {
        self.endpoints.push(endpoint);
    }
}

#[async_trait]
impl<A> pingora_core::services::Service for ListenerService<A>
where
    A: HttpServerApp + Send + Sync + 'static,
{
    async fn start_service(
        &mut self,
        fds: Option<ListenFds>,
        shutdown: ShutdownWatch,
        _listeners_per_fd: usize,
    ) {
        let intake = Arc::new(Intake {
            permits: Arc::new(Semaphore::new(self.limits.max_connections.max(1))),
            workers: workers::Workers::new(self.threads.unwrap_or(1)),
            stop: tokio::sync::watch::Sender::new(Stop::default()),
            sheds_wanted: std::sync::atomic::AtomicU64::new(0),
        });
        tokio::spawn({
            let (intake, mut shutdown) = (intake.clone(), shutdown.clone());
            async move {
                conn::shutting_down(&mut shutdown).await;
                intake.stop.send_modify(|s| s.shutdown = true);
            }
        });
        let mut loops = Vec::new();
        for ep in &self.endpoints {
            let listener = match listen(&ep.addr, fds.as_ref()) {
                Ok(l) => l,
                Err(e) => {
                    log::error!("{}: {e:#}", self.name);
                    std::process::exit(1);
                }
            };
            let serving = Serving {
                tls: ep.tls.clone(),
                app: self.app.clone(),
                fast: self.fast.clone(),
                limits: self.limits.clone(),
                intake: intake.clone(),
                shutdown: shutdown.clone(),
                leaves_at_hand_over: self.leaves_at_hand_over,
            };
            let counted = Counted::new(&ACCEPTING);
            loops.push(tokio::spawn(accept_loop(listener, serving, counted)));
        }
        for l in loops {
            let _ = l.await;
        }
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn threads(&self) -> Option<usize> {
        self.threads
    }

    /// Every address this service listens on (the keys of [`listen`]'s descriptor table):
    /// Pingora closes the sockets an upgrade handed over that no service of the new process
    /// listens on. Before, a listener the new config moved or dropped stayed open, connections
    /// to it were taken and never served, and an upgrade back to its address found it in use.
    fn listen_addresses(&self) -> Option<Vec<String>> {
        Some(self.endpoints.iter().map(|e| e.addr.clone()).collect())
    }
}

/// The listening socket for `addr`: the one an upgrading predecessor handed over, else a new
/// one, recorded in the descriptor table for a later upgrade.
fn listen(addr: &str, fds: Option<&ListenFds>) -> anyhow::Result<tokio::net::TcpListener> {
    let inherited = fds.and_then(|t| t.lock().get(addr).copied());
    let std_listener = match inherited {
        // Safety: the descriptor came from the upgrade socket and nothing else owns it.
        Some(fd) => unsafe { std::net::TcpListener::from_raw_fd(fd) },
        None => {
            let l = bind(addr).with_context(|| format!("cannot listen on {addr}"))?;
            if let Some(t) = fds {
                t.lock().add(addr.to_string(), l.as_raw_fd());
            }
            l
        }
    };
    std_listener
        .set_nonblocking(true)
        .with_context(|| format!("{addr}: cannot make the socket non-blocking"))?;
    tokio::net::TcpListener::from_std(std_listener)
        .with_context(|| format!("{addr}: cannot register the socket"))
}

/// Binds `addr` with address reuse and a long backlog.
pub fn bind(addr: &str) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Socket, Type};
    let sock_addr: std::net::SocketAddr = std::net::ToSocketAddrs::to_socket_addrs(addr)?
        .next()
        .ok_or_else(|| std::io::Error::other("the address resolves to nothing"))?;
    let socket = Socket::new(Domain::for_address(sock_addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.bind(&sock_addr.into())?;
    socket.listen(BACKLOG)?;
    Ok(socket.into())
}

/// Who may come in, and where they are served: the connection cap's permits and the worker
/// threads.
struct Intake {
    permits: Arc<Semaphore>,
    workers: workers::Workers,
    /// What the connections waiting for their next request close for: the shutdown, and a
    /// connection come while the cap is reached, for which one of them makes room (as
    /// nginx's keep-alive connections do). One signal, so that such a wait registers with one.
    stop: tokio::sync::watch::Sender<Stop>,
    /// Connections waiting for their next request asked to close, each to make room for one
    /// that came at the cap: the first woken take them.
    sheds_wanted: std::sync::atomic::AtomicU64,
}

/// See [`Intake::stop`].
#[derive(Clone, Copy, Default)]
struct Stop {
    shutdown: bool,
    /// Times a connection came at the cap.
    sheds_asked: u64,
}

impl Intake {
    /// Asks one connection waiting for its next request to close.
    fn ask_shed(&self) {
        self.sheds_wanted.fetch_add(1, Ordering::Relaxed);
        self.stop.send_modify(|s| s.sheds_asked += 1);
    }

    /// Whether the caller is to close, to make room (one of [`Self::ask_shed`]'s).
    fn take_shed(&self) -> bool {
        self.sheds_wanted
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |w| w.checked_sub(1))
            .is_ok()
    }
}

/// What every connection accepted on one listening socket is served with.
struct Serving<A> {
    tls: Option<Arc<SslAcceptor>>,
    app: Arc<A>,
    fast: Option<Arc<crate::fastpath::FastPath>>,
    limits: Arc<ClientLimits>,
    intake: Arc<Intake>,
    shutdown: ShutdownWatch,
    leaves_at_hand_over: bool,
}

async fn accept_loop<A>(listener: tokio::net::TcpListener, serving: Serving<A>, _accepting: Counted)
where
    A: HttpServerApp + Send + Sync + 'static,
{
    let (intake, limits) = (&serving.intake, &serving.limits);
    let mut shutdown = serving.shutdown.clone();
    let addr = listener
        .local_addr()
        .map_or_else(|_| "?".to_string(), |a| a.to_string());
    let mut at_cap_logged = false;
    let mut sent = SENT.subscribe();
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = conn::shutting_down(&mut shutdown) => break,
            _ = async { drop(sent.wait_for(|sent| *sent).await) }, if serving.leaves_at_hand_over => {
                // No longer accepting, the socket kept open until the shutdown: its
                // descriptor is the one Pingora sent (closed while it was being sent, the
                // sending failed and no socket went to the new process).
                log::info!("{addr}: the upgraded process accepts from now on");
                conn::shutting_down(&mut shutdown).await;
                break;
            }
        };
        // Taken once a connection came, not held while none comes: each listener of the
        // service held one so, and a burst of as many clients as the cap had one left waiting.
        let free = intake.permits.clone().try_acquire_owned();
        let permit = match free {
            Ok(p) => p,
            Err(_) => {
                // At the cap: this connection is held (the others wait in the kernel's backlog)
                // while one waiting for its next request makes room for it.
                if !at_cap_logged {
                    log::warn!(
                        "{addr}: {} client connections open (the cap); new ones wait in the backlog",
                        limits.max_connections
                    );
                    at_cap_logged = true;
                }
                crate::metrics::metrics().client_cap_waits.inc();
                if accepted.is_ok() {
                    intake.ask_shed();
                }
                // (Not given up on a shutdown: connections close then, and it is served.)
                let Ok(p) = intake.permits.clone().acquire_owned().await else {
                    return;
                };
                // The room came, made by that connection or by another that closed.
                intake.sheds_wanted.store(0, Ordering::Relaxed);
                p
            }
        };
        match accepted {
            Ok((tcp, _peer)) => {
                at_cap_logged = false;
                // The socket leaves this thread's event loop: the thread that serves the
                // connection registers it with its own, so its readiness wakes that thread
                // alone (not this one, which would then have to wake the other).
                match tcp.into_std() {
                    Ok(tcp) => admit(tcp, permit, &serving),
                    Err(e) => log::warn!("{addr}: cannot hand an accepted connection over: {e}"),
                }
            }
            // A connection reset before it was taken: nothing to serve, nothing wrong.
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionAborted | std::io::ErrorKind::Interrupted
                ) => {}
            Err(e) => {
                // Out of descriptors (EMFILE, ENFILE): accept would fail at once again; let
                // connections close first, the idle upstream ones at once.
                log::warn!("{addr}: accept failed: {e}");
                if crate::fastpath::pool::is_out_of_descriptors(&e) {
                    crate::fastpath::pool::out_of_descriptors();
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    // Connections the kernel completed before the shutdown are served, not reset when the
    // socket closes. After an upgrade the new process holds the socket too and takes them.
    let mut taken = 0;
    if !HANDED_OVER.load(Ordering::Relaxed) {
        if let Ok(queue) = listener.into_std() {
            while taken < BACKLOG {
                let Ok(permit) = intake.permits.clone().try_acquire_owned() else {
                    break;
                };
                match queue.accept() {
                    Ok((tcp, _)) => {
                        if tcp.set_nonblocking(true).is_ok() {
                            admit(tcp, permit, &serving);
                        }
                        taken += 1;
                    }
                    // A client that gave up while queued, or a signal: the next one.
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::ConnectionAborted | std::io::ErrorKind::Interrupted
                        ) => {}
                    Err(_) => break,
                }
            }
        }
    }
    if taken > 0 {
        log::info!("{addr}: {taken} connections waiting in the backlog taken in before closing");
    }
    log::info!("{addr}: no longer accepting connections");
}

/// The future `make` makes, in a box allocated before it is made: made in its place, not
/// made on the stack and copied whole into the box (a request's future is kilobytes, most of
/// them not yet written when it is made).
pub(crate) fn boxed<F: std::future::Future>(make: impl FnOnce() -> F) -> std::pin::Pin<Box<F>> {
    Box::into_pin(Box::write(Box::new_uninit(), make()))
}

/// Serves an accepted connection (non-blocking) on the worker thread with the fewest.
fn admit<A>(tcp: std::net::TcpStream, permit: tokio::sync::OwnedSemaphorePermit, s: &Serving<A>)
where
    A: HttpServerApp + Send + Sync + 'static,
{
    let served_by = s.intake.clone();
    let (tls, app, fast) = (s.tls.clone(), s.app.clone(), s.fast.clone());
    let (limits, shutdown) = (s.limits.clone(), s.shutdown.clone());
    let (worker, counted) = s.intake.workers.pick();
    // Counted before its task runs: a shutdown's drain does not miss it.
    let fresh = conn::fresh();
    let admitted = conn::Admitted {
        permit,
        fresh,
        intake: s.intake.clone(),
    };
    worker.spawn(async move {
        let _live = counted.unwrap_or_else(|| served_by.workers.enter());
        conn::serve(tcp, tls, app, fast, limits, shutdown, admitted).await;
    });
}

/// A TLS acceptor for a certificate (chain) and key in PEM files: Mozilla's intermediate
/// settings; HTTP/2 when the client offers it (ALPN), else HTTP/1.1.
pub fn tls_acceptor(cert: &str, key: &str) -> anyhow::Result<Arc<SslAcceptor>> {
    tls_acceptor_by_name(cert, key, &[])
}

/// A TLS acceptor with a `default` certificate and, by SNI, the first of `by_name` (host glob,
/// certificate, key) whose glob matches the name the client asks for (`*` one or more
/// characters of a label, as apiEndpoints' hosts): EG's `https.tls` section.
pub fn tls_acceptor_by_name(
    cert: &str,
    key: &str,
    by_name: &[(String, String, String)],
) -> anyhow::Result<Arc<SslAcceptor>> {
    use pingora_core::tls::ssl::NameType;
    let mut b = tls_builder(cert, key)?;
    let mut named = Vec::new();
    for (glob, cert, key) in by_name {
        let context = tls_builder(cert, key)?.build().into_context();
        named.push((crate::routing::host::HostMatcher::glob(Some(glob)), context));
    }
    if !named.is_empty() {
        b.set_servername_callback(move |ssl, _alert| {
            // A fully qualified name's trailing dot names the same host.
            let name = ssl
                .servername(NameType::HOST_NAME)
                .map(|n| n.strip_suffix('.').unwrap_or(n).to_string());
            if let Some((_, context)) = name
                .as_deref()
                .and_then(|n| named.iter().find(|(glob, _)| glob.matches(Some(n))))
            {
                // Best effort: the default certificate answers when it cannot be swapped.
                let _ = ssl.set_ssl_context(context);
            }
            Ok(())
        });
    }
    Ok(Arc::new(b.build()))
}

/// An acceptor's settings with one certificate: ALPN (h2, then HTTP/1.1), the certificate
/// chain and its key; no renegotiation (a client could make the gateway do handshake after
/// handshake on one connection, and HTTP/2 forbids it).
fn tls_builder(
    cert: &str,
    key: &str,
) -> anyhow::Result<pingora_core::tls::ssl::SslAcceptorBuilder> {
    use pingora_core::tls::ssl::{select_next_proto, AlpnError};
    let mut b =
        SslAcceptor::mozilla_intermediate_v5(SslMethod::tls()).context("cannot set up TLS")?;
    b.set_options(pingora_core::tls::ssl::SslOptions::NO_RENEGOTIATION);
    b.set_alpn_select_callback(|_, offered| {
        select_next_proto(b"\x02h2\x08http/1.1", offered).ok_or(AlpnError::NOACK)
    });
    let (cert_shown, key_shown) = (shown_path(cert), shown_path(key));
    // (OpenSSL's own error would repeat the path it could not open.)
    for (what, path) in [("certificate", cert), ("key", key)] {
        if path.contains("-----BEGIN") {
            anyhow::bail!("the {what} is {}", shown_path(path));
        }
    }
    // Read first: OpenSSL's own error for a file it cannot open is its error stack.
    let pem =
        std::fs::read(cert).with_context(|| format!("cannot read the certificate {cert_shown}"))?;
    // (`TRUSTED CERTIFICATE` and the old `X509 CERTIFICATE` too, as OpenSSL reads them.)
    if !pem.windows(16).any(|w| w == b"CERTIFICATE-----")
        || !pem.windows(11).any(|w| w == b"-----BEGIN ")
    {
        anyhow::bail!(
            "the certificate {cert_shown} holds no PEM certificate (`-----BEGIN CERTIFICATE-----`)"
        );
    }
    b.set_certificate_chain_file(cert)
        .with_context(|| format!("cannot use the certificate {cert_shown}"))?;
    let private = private_key(key)?;
    b.set_private_key(&private)
        .with_context(|| format!("cannot use the key {key_shown}"))?;
    b.check_private_key().with_context(|| {
        format!("the key {key_shown} does not match the certificate {cert_shown}")
    })?;
    Ok(b)
}

/// A certificate's or key's path as errors show it: PEM text given where a path goes (a key
/// written inline) is not repeated into logs and the Admin API.
fn shown_path(path: &str) -> std::borrow::Cow<'_, str> {
    match path.contains("-----BEGIN") {
        true => "(PEM text where a file path goes: give the file's path)".into(),
        false => path.into(),
    }
}

/// The private key in the PEM file at `path`, never asking for a passphrase (OpenSSL's own
/// reader asks on the terminal for an encrypted key, and the gateway, or a reload, waited
/// there for good).
fn private_key(
    path: &str,
) -> anyhow::Result<pingora_core::tls::pkey::PKey<pingora_core::tls::pkey::Private>> {
    use pingora_core::tls::pkey::PKey;
    let shown = shown_path(path);
    let pem = std::fs::read(path).with_context(|| format!("cannot read the key {shown}"))?;
    let encrypted = pem.windows(9).any(|w| w == b"ENCRYPTED");
    PKey::private_key_from_pem_callback(&pem, |_| Ok(0)).map_err(|e| match encrypted {
        true => anyhow::anyhow!(
            "the key {shown} is encrypted: give it without a passphrase (`openssl pkey -in KEY -out PLAIN`)"
        ),
        false => anyhow::Error::new(e).context(format!("cannot use the key {shown}")),
    })
}

/// Raises the soft limit of open descriptors to the hard limit, and returns the limit now in
/// force (`None` when it cannot be read).
pub fn raise_fd_limit() -> Option<u64> {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => Some(n),
        Err(e) => {
            log::warn!("cannot raise the open-files limit: {e}");
            rlimit::getrlimit(rlimit::Resource::NOFILE)
                .ok()
                .map(|(soft, _)| soft)
        }
    }
}
