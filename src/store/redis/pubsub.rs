//! The store's subscriptions: each channel's messages relayed into a broadcast channel by a
//! task of its own, resubscribing when the connection is lost or stops answering pings.

use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::{broadcast, Mutex};

use super::RedisStore;
use crate::store::CaughtUp;

impl RedisStore {
    /// The same store on a connection of its own, for a task of its own.
    pub(super) fn with_own_connection(&self) -> RedisStore {
        RedisStore {
            target: self.target.clone(),
            db: self.db,
            describe: self.describe.clone(),
            conn: Mutex::default(),
            channels: self.channels.clone(),
            caught_up: self.caught_up.clone(),
        }
    }

    /// The server's `notify-keyspace-events` (`None`: it does not say, as managed servers that
    /// refuse CONFIG may not).
    async fn keyspace_flags(&self) -> Option<String> {
        let asked: super::StoreResult<Vec<String>> = self
            .query(
                redis::cmd("CONFIG")
                    .arg("GET")
                    .arg("notify-keyspace-events"),
            )
            .await;
        asked.ok().and_then(|v| v.get(1).cloned())
    }

    /// Says whether the server tells of the keys written (`notify-keyspace-events`): where it
    /// does not, what other programs write reaches the consumer cache at its next full read.
    /// Whether it tells (`None`: not known).
    pub(super) async fn say_keyspace_notifications(&self) -> Option<bool> {
        let flags = self.keyspace_flags().await;
        match &flags {
            Some(flags) if tells_of_keys(flags) => log::info!(
                "{}: following the consumers other programs write (keyspace notifications `{flags}`)",
                self.describe
            ),
            Some(flags) => log::info!(
                "{}: keyspace notifications do not tell of the consumers written (notify-keyspace-events `{flags}`): {NOT_TOLD}",
                self.describe
            ),
            // (A server that refuses CONFIG, as managed ones may: it is not said.)
            None => log::debug!("{}: cannot read notify-keyspace-events", self.describe),
        }
        flags.map(|f| tells_of_keys(&f))
    }

    /// Looks at `notify-keyspace-events` again while the keys are followed (a `CONFIG SET`
    /// while the gateway runs), and says a change: `told`, whether it told until now; what it
    /// tells now. Turned on again, the subscriber reads everything again (`tx` is given the
    /// mark of a new subscription): what was written meanwhile was not told.
    async fn keyspace_notifications_again(
        &self,
        told: Option<bool>,
        tx: &broadcast::Sender<String>,
    ) -> Option<bool> {
        let Some(flags) = self.keyspace_flags().await else {
            return told;
        };
        let tells = tells_of_keys(&flags);
        match (told, tells) {
            (Some(true), false) => log::warn!(
                "{}: keyspace notifications no longer tell of the consumers written (notify-keyspace-events `{flags}`): {NOT_TOLD}",
                self.describe
            ),
            (Some(false), true) => {
                log::info!(
                    "{}: following the consumers other programs write again (keyspace notifications `{flags}`); reading what was written meanwhile",
                    self.describe
                );
                let _ = tx.send(crate::store::SUBSCRIBED.to_string());
            }
            _ => {}
        }
        Some(tells)
    }

    /// Relays messages of `follow` into `tx`, reconnecting as needed, until nobody listens.
    pub(super) fn spawn_relay(&self, follow: Follow, tx: broadcast::Sender<String>) {
        let target_store = self.with_own_connection();
        let channel = follow.name().to_string();
        let mut asked = self.caught_up.subscribe();
        tokio::spawn(async move {
            // Whether a subscription was lost (its return is said once).
            let mut lost = false;
            // Whether the server told of the keys written, as last known (kept across
            // subscriptions: a server restarted without the setting is said as turned off).
            let mut told: Option<bool> = None;
            loop {
                if tx.receiver_count() == 0 {
                    break;
                }
                let attempt = target_store.subscribe_to(&follow, &channel);
                match answering_down(attempt, &mut asked, &tx).await {
                    Attempt::Subscribed(mut sink, stream) => {
                        // Looked at again at each subscription: a server restarted may tell
                        // otherwise.
                        if let Follow::Keys(_) = follow {
                            let looked = async {
                                match told {
                                    None => target_store.say_keyspace_notifications().await,
                                    Some(_) => {
                                        target_store.keyspace_notifications_again(told, &tx).await
                                    }
                                }
                            };
                            told = answering_down(looked, &mut asked, &tx).await;
                        }
                        if lost {
                            log::info!(
                                "{}: subscribed to `{channel}` again",
                                target_store.describe
                            );
                        }
                        let _ = tx.send(crate::store::SUBSCRIBED.to_string());
                        let keys =
                            matches!(follow, Follow::Keys(_)).then_some((&target_store, &mut told));
                        relay_messages(&mut sink, stream, &tx, &mut asked, keys).await;
                        log::warn!(
                            "{}: subscription to `{channel}` lost; resubscribing",
                            target_store.describe
                        );
                        lost = true;
                    }
                    Attempt::Refused => return,
                    Attempt::Failed => {}
                }
                answering_down(tokio::time::sleep(Duration::from_secs(1)), &mut asked, &tx).await;
            }
        });
    }

    /// One attempt at subscribing to `follow` (`channel`, its name), on a connection of its
    /// own; a failure said.
    async fn subscribe_to(&self, follow: &Follow, channel: &str) -> Attempt {
        let client = match self.client().await {
            Ok(client) => client,
            Err(e) => {
                log::warn!("{e}");
                return Attempt::Failed;
            }
        };
        let pubsub = match tokio::time::timeout(PUBSUB_WAIT, client.get_async_pubsub()).await {
            Ok(Ok(pubsub)) => pubsub,
            Ok(Err(e)) => {
                log::warn!("{}: cannot subscribe: {e}", self.describe);
                return Attempt::Failed;
            }
            Err(_) => {
                log::warn!(
                    "{}: cannot subscribe: no answer within {PUBSUB_WAIT:?}",
                    self.describe
                );
                return Attempt::Failed;
            }
        };
        let (mut sink, stream) = pubsub.split();
        let subscribe = async {
            match follow {
                Follow::Channel(c) => sink.subscribe(c).await,
                Follow::Keys(p) => sink.psubscribe(p).await,
            }
        };
        match tokio::time::timeout(PUBSUB_WAIT, subscribe).await {
            Ok(Ok(())) => Attempt::Subscribed(sink, stream),
            // Refused by the server (a user its ACL does not let follow the keys: NOPERM):
            // said once, not tried every second.
            Ok(Err(e)) if matches!(follow, Follow::Keys(_)) && e.code().is_some() => {
                log::info!(
                    "{}: cannot follow the keys other programs write ({e}): what they write reaches the consumer cache at its next full read (--resync-seconds)",
                    self.describe
                );
                Attempt::Refused
            }
            _ => {
                log::warn!(
                    "{}: cannot subscribe to `{channel}`; trying again",
                    self.describe
                );
                Attempt::Failed
            }
        }
    }
}

/// What an attempt at subscribing came to.
enum Attempt {
    Subscribed(redis::aio::PubSubSink, redis::aio::PubSubStream),
    /// Refused by the server for good.
    Refused,
    /// Tried again in a second.
    Failed,
}

/// Runs `work` (a subscription not made, or made and not relayed yet) answering the catch-up
/// questions meanwhile as down: nothing the store sends is received.
async fn answering_down<T>(
    work: impl std::future::Future<Output = T>,
    asked: &mut broadcast::Receiver<u64>,
    tx: &broadcast::Sender<String>,
) -> T {
    tokio::pin!(work);
    loop {
        tokio::select! {
            out = &mut work => return out,
            Ok(question) = asked.recv() => {
                let _ = tx.send(CaughtUp::message(question, false));
            }
        }
    }
}

/// What a subscription follows.
pub(super) enum Follow {
    /// The messages published on a channel.
    Channel(String),
    /// The names of the keys written, of the keyspace notifications whose channels match a
    /// pattern (`__keyspace@<db>__:<key>`).
    Keys(String),
}

impl Follow {
    fn name(&self) -> &str {
        match self {
            Follow::Channel(name) | Follow::Keys(name) => name,
        }
    }
}

/// The pattern of the keyspace notifications of the keys starting with `prefix` in database
/// `db` (another database's writes, another program's, are no work of the gateway's), the
/// prefix as written (`*`, `?`, `[`, `]` and `\` in a namespace are the pattern's otherwise).
pub(super) fn keyspace_pattern(db: i64, prefix: &str) -> String {
    let mut pattern = format!("__keyspace@{db}__:");
    for c in prefix.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('*');
    pattern
}

/// What it means that the keys written are not told of, and what to do.
const NOT_TOLD: &str = "what other programs write (EG's Admin API, redis-cli) reaches the consumer cache at its next full read (--resync-seconds); `notify-keyspace-events KA` in redis.conf (or `CONFIG SET`, then `CONFIG REWRITE` to keep it past a restart) follows it at once";

/// Whether `notify-keyspace-events` flags tell of the writes to consumers' hashes and sets and
/// of their removal, expiry and eviction (`K` with `A`, or with `h`, `s`, `g`, `x` and `e`).
fn tells_of_keys(flags: &str) -> bool {
    flags.contains('K')
        && (flags.contains('A') || ['h', 's', 'g', 'x', 'e'].iter().all(|c| flags.contains(*c)))
}

/// How often the subscription's connection is asked for a sign of life, and how long its
/// connect, subscription and answers are waited for: a Redis host that died or went out of
/// reach without closing the connection sent nothing more, and the subscription was held
/// for good (every change message lost until the process restarted, the periodic resync the
/// only way changes came).
const PUBSUB_PING: Duration = Duration::from_secs(5);
const PUBSUB_WAIT: Duration = Duration::from_secs(5);

/// Relays the subscription's messages into `tx` until its connection ends or stops answering
/// pings. `asked`: the questions of [`crate::store::Store::ask_caught_up`], each answered by a
/// ping on the subscription's connection (the server answers it after every message it sent
/// before), the messages received before its answer, then the question's [`CaughtUp`] (as down
/// when the ping is not answered: the subscription is made again). `keys`: for a
/// subscription to the keys written, the store, whose `notify-keyspace-events` is looked at
/// again with each ping, and whether it told of them.
async fn relay_messages(
    sink: &mut redis::aio::PubSubSink,
    mut stream: redis::aio::PubSubStream,
    tx: &broadcast::Sender<String>,
    asked: &mut broadcast::Receiver<u64>,
    mut keys: Option<(&RedisStore, &mut Option<bool>)>,
) {
    use futures_util::FutureExt;
    let mut beat = tokio::time::interval_at(tokio::time::Instant::now() + PUBSUB_PING, PUBSUB_PING);
    beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            msg = stream.next() => match msg {
                Some(msg) => relay(msg, tx),
                None => return,
            },
            Ok(question) = asked.recv() => {
                let answered = answers_ping(sink).await;
                // The connection's reader queued the messages before the answer before it gave
                // the answer: all of them taken now, however many (not the runtime's budget of
                // polls a task makes at once, which would leave the rest for after the mark).
                let ended = tokio::task::coop::unconstrained(async {
                    while let Some(next) = stream.next().now_or_never() {
                        match next {
                            Some(msg) => relay(msg, tx),
                            None => return true,
                        }
                    }
                    false
                })
                .await;
                let _ = tx.send(CaughtUp::message(question, answered && !ended));
                if !answered || ended {
                    return;
                }
            },
            _ = beat.tick() => {
                if !answers_ping(sink).await {
                    return;
                }
                if let Some((store, told)) = keys.as_mut() {
                    let again = store.keyspace_notifications_again(**told, tx);
                    if let Ok(tells) = tokio::time::timeout(PUBSUB_WAIT, again).await {
                        **told = tells;
                    }
                }
            }
        }
    }
}

/// Whether the subscription's connection answers a ping within [`PUBSUB_WAIT`].
async fn answers_ping(sink: &mut redis::aio::PubSubSink) -> bool {
    let pong = tokio::time::timeout(PUBSUB_WAIT, sink.ping::<redis::Value>()).await;
    matches!(pong, Ok(Ok(_)))
}

/// Relays one message of a subscription into `tx`.
fn relay(msg: redis::Msg, tx: &broadcast::Sender<String>) {
    // A key written: its name, after the notification's `__keyspace@<db>__:`.
    if msg.from_pattern() {
        // (Not a key read that found nothing, `keymiss` where the server tells of those: the
        // refresh reads the key again, which told of another.)
        let event = msg.get_payload_bytes();
        match msg.get_channel_name().split_once("__:") {
            Some((_, key)) if event != b"keymiss" => {
                let _ = tx.send(key.to_string());
            }
            _ => {}
        }
    } else if let Ok(text) = msg.get_payload::<String>() {
        let _ = tx.send(text);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_namespace_is_matched_as_written() {
        assert_eq!(super::keyspace_pattern(0, "EG-"), "__keyspace@0__:EG-*");
        assert_eq!(
            super::keyspace_pattern(2, "T[1]*?\\-"),
            "__keyspace@2__:T\\[1\\]\\*\\?\\\\-*"
        );
    }

    #[test]
    fn flags_that_tell_of_consumers_written() {
        for (flags, tells) in [
            ("", false),
            ("KA", true),
            ("AK", true),
            ("EA", false),
            ("Khsg", false),
            ("Khsgxe", true),
            ("Kgsh$xe", true),
            ("Kh", false),
            ("KEA", true),
        ] {
            assert_eq!(super::tells_of_keys(flags), tells, "{flags}");
        }
    }
}
