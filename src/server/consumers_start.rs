//! The consumers at the start: the consumer cache's first load from the store, waited for a
//! while, and `--populate`'s consumers file applied once the store can be reached.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::consumers::populate;

/// How long start-up waits for the consumer store before serving from an empty cache.
const FIRST_LOAD_TIMEOUT: Duration = Duration::from_secs(10);

/// How long `--populate` waits for a consumer store it cannot reach (Redis starting beside
/// the gateway) before the start fails.
const POPULATE_WAIT: Duration = Duration::from_secs(60);

/// How long an upgrade's new process waits for its subscriptions to the store's changes
/// before it takes the tables of the process it upgrades (the old process keeps accepting
/// meanwhile).
const SUBSCRIBE_WAIT: Duration = Duration::from_secs(2);

/// Before an upgrade's new process takes the consumer tables of the process it upgrades: its
/// own subscriptions to the store's changes made, so that no change falls between the two
/// (before, a revocation published after the tables went and before the new process had
/// subscribed worked until the new process's first read of the store ended, seconds with many
/// credentials). What was published before them the old process follows before it hands its
/// tables over (see `consumers::cache::handover`). A store that does not answer is not
/// waited for past [`SUBSCRIBE_WAIT`].
pub(super) fn subscribed_before_handover(
    background: &tokio::runtime::Runtime,
    following: &mut crate::consumers::cache::Following,
) {
    let subscribed = background.block_on(following.subscribed(SUBSCRIBE_WAIT));
    if !subscribed {
        log::warn!(
            "consumer cache: not subscribed to the store's changes within {SUBSCRIBE_WAIT:?}; taking the tables handed over (a change they miss comes with the read of the store once subscribed)"
        );
    }
}

/// Waits a while for the consumer cache's first load from the store; a longer one goes on in
/// the background. `upgrade`: the new process of an upgrade, handed no tables, waits not at
/// all — it holds the sockets, and the old process stops accepting 5 s after it sent them
/// (waiting 10 s left clients in the sockets' backlog with no process accepting); it serves
/// meanwhile, as the old process did, each credential looked up in the store until the read
/// ends.
pub(super) fn first_load(
    background: &tokio::runtime::Runtime,
    cache: &Arc<crate::consumers::cache::ConsumerCache>,
    upgrade: bool,
) {
    if upgrade {
        let _in_runtime = background.enter();
        cache.load_in_background(true);
        return;
    }
    let wait = FIRST_LOAD_TIMEOUT;
    let first_load = background.spawn({
        let cache = cache.clone();
        async move {
            let loaded = cache.load_off_worker().await;
            // Not read (the store down or failing): read each second until it is, in the
            // background (before or after the start stopped waiting).
            if loaded.is_err() {
                cache.load_in_background(true);
            }
            loaded
        }
    });
    let shown = crate::cli::progress::Progress::start("loading consumers", {
        let cache = cache.clone();
        move || {
            use std::sync::atomic::Ordering::Relaxed;
            (
                cache.progress.done.load(Relaxed) as u64,
                cache.progress.total.load(Relaxed) as u64,
            )
        }
    });
    let waited = background.block_on(async { tokio::time::timeout(wait, first_load).await });
    shown.finish();
    match waited {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => {
            // (A store that starts after the gateway, as in a compose file, is no failure.)
            log::warn!("consumer cache not loaded yet (retrying in the background): {e}")
        }
        Ok(Err(e)) => log::error!("consumer cache load failed: {e}"),
        Err(_) => log::warn!(
            "consumer cache still loading after {wait:?}; serving meanwhile (each credential looked up in the store until the load ends)"
        ),
    }
}

/// Applies a consumers file, waiting up to [`POPULATE_WAIT`] for a store that cannot be
/// reached yet (as Kargo's populate under EG waited for Redis); any other failure at once.
pub(super) async fn populate_when_reachable(
    service: &crate::consumers::service::ConsumerService,
    file: &populate::ConsumersFile,
) -> anyhow::Result<populate::Report> {
    let started = Instant::now();
    let mut said = false;
    loop {
        match populate::populate(service, file)
            .await
            .map_err(anyhow::Error::from)
        {
            Err(e) if started.elapsed() < POPULATE_WAIT && unreachable_store(&e) => {
                if !said {
                    log::warn!("populate: the consumer store cannot be reached yet ({e:#}); trying again for up to {} s", POPULATE_WAIT.as_secs());
                    said = true;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            done => return done,
        }
    }
}

/// Whether an error is the consumer store out of reach.
fn unreachable_store(e: &anyhow::Error) -> bool {
    use crate::consumers::service::ConsumerError;
    use crate::store::StoreError;
    e.chain().any(|c| {
        matches!(
            c.downcast_ref::<StoreError>(),
            Some(StoreError::Unavailable(_))
        ) || matches!(
            c.downcast_ref::<ConsumerError>(),
            Some(ConsumerError::Store(StoreError::Unavailable(_)))
        )
    })
}
