//! The store's subscriptions: each channel's messages relayed into a broadcast channel by a
//! task of its own, resubscribing when the connection is lost or stops answering pings.

use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::{broadcast, Mutex};

use super::RedisStore;

impl RedisStore {
    /// The same store on a connection of its own, for a task of its own.
    pub(super) fn with_own_connection(&self) -> RedisStore {
        RedisStore {
            target: self.target.clone(),
            describe: self.describe.clone(),
            conn: Mutex::default(),
            channels: self.channels.clone(),
        }
    }

    /// Relays messages of `channel` into `tx`, reconnecting as needed, until nobody listens.
    pub(super) fn spawn_relay(&self, channel: String, tx: broadcast::Sender<String>) {
        let target_store = self.with_own_connection();
        tokio::spawn(async move {
            // Whether a subscription was lost (its return is said once).
            let mut lost = false;
            loop {
                if tx.receiver_count() == 0 {
                    break;
                }
                match target_store.client().await {
                    Ok(client) => {
                        match tokio::time::timeout(PUBSUB_WAIT, client.get_async_pubsub()).await {
                            Ok(Ok(pubsub)) => {
                                let (mut sink, stream) = pubsub.split();
                                let subscribed =
                                    tokio::time::timeout(PUBSUB_WAIT, sink.subscribe(&channel))
                                        .await;
                                if matches!(subscribed, Ok(Ok(()))) {
                                    if lost {
                                        log::info!(
                                            "{}: subscribed to `{channel}` again",
                                            target_store.describe
                                        );
                                    }
                                    let _ = tx.send(crate::store::SUBSCRIBED.to_string());
                                    relay_messages(&mut sink, stream, &tx).await;
                                    log::warn!(
                                        "{}: subscription to `{channel}` lost; resubscribing",
                                        target_store.describe
                                    );
                                    lost = true;
                                } else {
                                    log::warn!(
                                        "{}: cannot subscribe to `{channel}`; trying again",
                                        target_store.describe
                                    );
                                }
                            }
                            Ok(Err(e)) => {
                                log::warn!("{}: cannot subscribe: {e}", target_store.describe)
                            }
                            Err(_) => log::warn!(
                                "{}: cannot subscribe: no answer within {PUBSUB_WAIT:?}",
                                target_store.describe
                            ),
                        }
                    }
                    Err(e) => log::warn!("{e}"),
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
    }
}

/// How often the subscription's connection is asked for a sign of life, and how long its
/// connect, subscription and answers are waited for: a Redis host that died or went out of
/// reach without closing the connection sent nothing more, and the subscription was held
/// for good (every change message lost until the process restarted, the periodic resync the
/// only way changes came).
const PUBSUB_PING: Duration = Duration::from_secs(5);
const PUBSUB_WAIT: Duration = Duration::from_secs(5);

/// Relays the subscription's messages into `tx` until its connection ends or stops answering
/// pings.
async fn relay_messages(
    sink: &mut redis::aio::PubSubSink,
    mut stream: redis::aio::PubSubStream,
    tx: &broadcast::Sender<String>,
) {
    let mut beat = tokio::time::interval_at(tokio::time::Instant::now() + PUBSUB_PING, PUBSUB_PING);
    beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            msg = stream.next() => match msg {
                Some(msg) => {
                    if let Ok(text) = msg.get_payload::<String>() {
                        let _ = tx.send(text);
                    }
                }
                None => return,
            },
            _ = beat.tick() => {
                let pong = tokio::time::timeout(PUBSUB_WAIT, sink.ping::<redis::Value>()).await;
                if !matches!(pong, Ok(Ok(_))) {
                    return;
                }
            }
        }
    }
}
