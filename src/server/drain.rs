//! What runs beside the server: the upstream names looked up again, and the process's end
//! once it has drained.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use pingora_core::server::{ExecutionPhase, Server};

use super::{DNS_REFRESH, RUNTIME_EXIT_LIMIT};
use crate::gateway::Gateway;
use crate::proxy::requests_in_flight;

/// Looks upstream names up again every [`DNS_REFRESH`], on a thread of its own.
pub(super) fn start_dns_refresh(gateway: Arc<ArcSwap<Gateway>>) {
    std::thread::Builder::new()
        .name("tollgate-dns".into())
        .spawn(move || loop {
            std::thread::sleep(DNS_REFRESH);
            // Not held while asleep: a config a reload replaced goes (with its health checks).
            let gw = gateway.load_full();
            for target in gw.targets() {
                target.resolve();
            }
        })
        .map(|_| ())
        .unwrap_or_else(|e| log::error!("cannot start the DNS refresh thread: {e}"));
}

/// Follows the server's phases: once running, tells systemd (when it asks); on a graceful
/// upgrade hands the consumer store over to the new process; on SIGTERM (Pingora stops
/// accepting and would wait the whole grace period) ends the process as soon as the listeners
/// have taken in their backlogs, no request is in flight any more and every connection
/// accepted has had its first request answered.
pub(super) fn exit_when_drained(
    server: &Server,
    grace: Duration,
    store: Arc<dyn crate::store::Store>,
    listen: Vec<String>,
) {
    let mut phases = server.watch_execution_phase();
    std::thread::Builder::new()
        .name("tollgate-drain".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            let Ok(rt) = rt else { return };
            rt.block_on(async move {
                loop {
                    match phases.recv().await {
                        Ok(ExecutionPhase::Running) => {
                            let listen = listen.clone();
                            tokio::spawn(async move {
                                crate::lifecycle::notify_ready_when_listening(&listen).await
                            });
                        }
                        Ok(ExecutionPhase::GracefulUpgradeTransferringFds) => {
                            log::info!("SIGQUIT: handing the listening sockets to the new process");
                            crate::listener::sockets_handed_over();
                            store.hand_over();
                        }
                        // Pingora has sent the sockets (or failed to: it said so).
                        Ok(ExecutionPhase::GracefulUpgradeCloseTimeout) => {
                            crate::listener::sockets_sent();
                        }
                        Ok(ExecutionPhase::ShutdownGracePeriod) => break,
                        Ok(ExecutionPhase::ShutdownRuntimes) => {
                            // Quick shutdown (SIGINT). Pingora's accept loop can keep a
                            // per-thread runtime from ever finishing its shutdown; do not wait
                            // on it for more than a moment.
                            tokio::time::sleep(RUNTIME_EXIT_LIMIT).await;
                            log::warn!(
                                "runtimes still stopping after {RUNTIME_EXIT_LIMIT:?}; exiting"
                            );
                            crate::cache::save_forwardings();
                            crate::lifecycle::runfile::withdraw();
                            std::process::exit(0);
                        }
                        Ok(_) => {}
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                        Err(_) => return,
                    }
                }
                let start = Instant::now();
                // Let requests accepted just before the signal register.
                tokio::time::sleep(Duration::from_millis(100)).await;
                let busy = || {
                    requests_in_flight() > 0
                        || crate::listener::awaiting_an_answer() > 0
                        || crate::listener::accepting() > 0
                        || crate::consumers::cache::handing_over()
                };
                while busy() && start.elapsed() < grace {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                log::info!("drained; exiting");
                crate::cache::save_forwardings();
                crate::lifecycle::runfile::withdraw();
                std::process::exit(0);
            });
        })
        .map(|_| ())
        .unwrap_or_else(|e| log::error!("cannot start the drain thread: {e}"));
}
