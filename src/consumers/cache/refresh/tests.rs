//! A refresh of many entities at once against the embedded store: what each kind leaves in
//! the tables, as one refresh each would.

use std::sync::Arc;
use std::time::Duration;

use crate::consumers::cache::follow::CatchUp;
use crate::consumers::cache::ConsumerCache;
use crate::consumers::layout::Layout;
use crate::store::embedded::EmbeddedStore;
use crate::store::{Store, Write};

fn hset(key: &str, fields: &[(&str, &str)]) -> Write {
    Write::HSet {
        key: key.into(),
        fields: fields
            .iter()
            .map(|(f, v)| (f.to_string(), v.to_string()))
            .collect(),
    }
}

fn user(id: &str, name: &str) -> Vec<Write> {
    vec![
        hset(
            &format!("EG-user:{id}"),
            &[("id", id), ("username", name), ("isActive", "true")],
        ),
        Write::SAdd {
            key: format!("EG-username:{name}"),
            members: vec![id.into()],
        },
    ]
}

fn key_auth(key_id: &str, owner: &str) -> Write {
    hset(
        &format!("EG-key-auth:{key_id}"),
        &[
            ("keyId", key_id),
            ("keySecret", "s"),
            ("consumerId", owner),
            ("isActive", "true"),
            ("scopes", r#"["wmts"]"#),
        ],
    )
}

async fn loaded(writes: Vec<Write>) -> (Arc<EmbeddedStore>, ConsumerCache) {
    let store = Arc::new(EmbeddedStore::in_memory());
    store.apply(&writes).await.expect("seed");
    let cache = ConsumerCache::new(store.clone(), Layout::new("EG"));
    cache.load().await.expect("load");
    (store, cache)
}

fn named(cache: &ConsumerCache, name: &str) -> Option<String> {
    cache.read().usernames.get(name).map(|id| id.to_string())
}

#[tokio::test]
async fn users_renamed_removed_and_untouched_in_one_refresh() {
    let seed = [user("u1", "a"), user("u2", "b"), user("u3", "c")].concat();
    let (store, cache) = loaded(seed).await;
    let mut writes = user("u1", "x");
    writes.push(Write::Del {
        key: "EG-user:u2".into(),
    });
    store.apply(&writes).await.expect("writes");
    let batch = ["user:u1", "user:u2", "user:u3", "user:u1"].map(String::from);
    cache.refresh_many(&batch).await.expect("refresh");
    assert_eq!(named(&cache, "x").as_deref(), Some("u1"));
    assert_eq!(named(&cache, "a"), None, "the old name");
    assert_eq!(named(&cache, "b"), None, "the removed user's");
    assert_eq!(named(&cache, "c").as_deref(), Some("u3"));
    let t = cache.read();
    assert!(t.users.contains_key("u1") && t.users.contains_key("u3"));
    assert!(!t.users.contains_key("u2"));
}

#[tokio::test]
async fn two_users_swapping_names_in_one_refresh() {
    let (store, cache) = loaded([user("u1", "a"), user("u2", "b")].concat()).await;
    store
        .apply(&[user("u1", "b"), user("u2", "a")].concat())
        .await
        .expect("swap");
    let batch = ["user:u2", "user:u1"].map(String::from);
    cache.refresh_many(&batch).await.expect("refresh");
    assert_eq!(named(&cache, "a").as_deref(), Some("u2"));
    assert_eq!(named(&cache, "b").as_deref(), Some("u1"));
}

#[tokio::test]
async fn a_credential_comes_with_its_unknown_consumer_and_a_name_with_its_user() {
    let (store, cache) = loaded(user("u1", "a")).await;
    let mut writes = vec![
        key_auth("k-new", "app-new"),
        hset(
            "EG-application:app-new",
            &[("id", "app-new"), ("isActive", "true")],
        ),
    ];
    writes.extend(user("u9", "late"));
    store.apply(&writes).await.expect("writes");
    let batch = [
        "key-auth:k-new",
        "username:late",
        "no-colon",
        "nothing:here",
    ]
    .map(String::from);
    cache.refresh_many(&batch).await.expect("refresh");
    let t = cache.read();
    assert!(t.key_auth.contains_key("k-new"));
    assert!(t.apps.contains_key("app-new"), "the credential's consumer");
    assert!(t.users.contains_key("u9"), "the name's user");
    drop(t);
    assert_eq!(named(&cache, "late").as_deref(), Some("u9"));
}

#[tokio::test]
async fn a_credential_gone_or_no_hash_is_removed_with_the_others_read() {
    let mut seed = user("u1", "a");
    seed.extend(["k1", "k2", "k3"].map(|k| key_auth(k, "u1")));
    let (store, cache) = loaded(seed).await;
    store
        .apply(&[
            Write::Del {
                key: "EG-key-auth:k1".into(),
            },
            Write::Del {
                key: "EG-key-auth:k2".into(),
            },
            Write::SAdd {
                key: "EG-key-auth:k2".into(),
                members: vec!["not a hash".into()],
            },
            hset("EG-key-auth:k3", &[("isActive", "false")]),
        ])
        .await
        .expect("writes");
    let batch = ["key-auth:k1", "key-auth:k2", "key-auth:k3"].map(String::from);
    cache.refresh_many(&batch).await.expect("refresh");
    let t = cache.read();
    assert!(!t.key_auth.contains_key("k1"));
    assert!(!t.key_auth.contains_key("k2"));
    assert!(t.key_auth.get("k3").is_some_and(|c| !c.active));
}

#[tokio::test]
async fn a_name_two_users_had_for_a_while_stays_with_the_one_that_keeps_it() {
    let seed = [
        user("u-a", "alice"),
        user("u-b", "bob"),
        user("u-c", "carol"),
    ]
    .concat();
    let (store, cache) = loaded(seed).await;
    // Another program names two more users `bob` for a while (EG's Admin API would not).
    for id in ["u-a", "u-c"] {
        store.apply(&user(id, "bob")).await.expect("rename");
        cache
            .refresh_many(&[format!("user:{id}")])
            .await
            .expect("refresh");
    }
    // One gives the name back, the other is removed: it is the one that kept it's again.
    store.apply(&user("u-a", "alice")).await.expect("rename");
    cache.refresh("user:u-a").await.expect("refresh");
    assert_ne!(named(&cache, "bob").as_deref(), Some("u-a"));
    store
        .apply(&[Write::Del {
            key: "EG-user:u-c".into(),
        }])
        .await
        .expect("remove");
    cache.refresh("user:u-c").await.expect("refresh");
    assert_eq!(named(&cache, "bob").as_deref(), Some("u-b"));
    assert_eq!(named(&cache, "alice").as_deref(), Some("u-a"));
}

#[tokio::test]
async fn credentials_of_every_kind_in_one_refresh() {
    let (store, cache) = loaded(user("u1", "a")).await;
    let mut writes = vec![
        key_auth("k5", "u1"),
        hset(
            "EG-basic-auth:u1",
            &[("password", "$2b$04$hash"), ("isActive", "true")],
        ),
        hset("EG-oauth2:u-o", &[("secret", "s"), ("isActive", "true")]),
    ];
    writes.extend(user("u-o", "oauth"));
    store.apply(&writes).await.expect("writes");
    let batch = ["oauth2:u-o", "basic-auth:u1", "key-auth:k5"].map(String::from);
    cache.refresh_many(&batch).await.expect("refresh");
    let t = cache.read();
    assert!(t.key_auth.get("k5").is_some_and(|c| c.active));
    assert!(t.basic.get("u1").is_some_and(|c| &*c.hash == "$2b$04$hash"));
    assert!(
        t.users.contains_key("u-o"),
        "the oauth2 credential's consumer"
    );
}

/// Two writers of one credential, each refreshing the cache after its write (an Admin API
/// write's refresh, and the change message of another's write just after): the cache ends
/// as the store does, whatever the interleaving. Two refreshes at once, the one that read
/// first could write last, and a credential revoked in the store worked again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refreshes_of_one_credential_leave_it_as_the_store_has_it() {
    let mut writes = user("u1", "one");
    writes.push(key_auth("K", "u1"));
    let (store, cache) = loaded(writes).await;
    let cache = Arc::new(cache);
    for round in 0..10_000 {
        let writer = |active: &'static str| {
            let (store, cache) = (store.clone(), cache.clone());
            tokio::spawn(async move {
                let write = hset("EG-key-auth:K", &[("isActive", active)]);
                store.apply(&[write]).await.expect("write");
                // (With its consumer: a round trip more between the read and the write.)
                let batch = ["key-auth:K".to_string(), "user:u1".to_string()];
                cache.refresh_many(&batch).await.expect("refresh");
            })
        };
        let (on, off) = (writer("true"), writer("false"));
        on.await.expect("on");
        off.await.expect("off");
        let stored = store.hgetall("EG-key-auth:K").await.expect("read")["isActive"] == "true";
        let cached = cache.read().key_auth.get("K").map(|c| c.active);
        assert_eq!(cached, Some(stored), "round {round}");
    }
}

/// Asked whether it has caught up (as an upgrade's old process asks before it hands its
/// tables over), the cache answers once what the store told of before the question is in its
/// tables: each round, a credential written and announced, never refreshed by its writer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_was_told_before_a_catch_up_is_in_the_tables_when_it_answers() {
    let mut writes = user("u1", "one");
    writes.push(key_auth("K", "u1"));
    let (store, cache) = loaded(writes).await;
    let cache = Arc::new(cache);
    cache
        .start(
            &tokio::runtime::Handle::current(),
            Duration::from_secs(3600),
        )
        .go(true);
    let channel = Layout::new("EG").invalidation_channel();
    let caught_up = |cache: &Arc<ConsumerCache>| {
        let asking = cache.clone();
        tokio::task::spawn_blocking(move || asking.caught_up_blocking(Duration::from_secs(5)))
    };
    // (Answered once it follows: subscribed.)
    assert_eq!(caught_up(&cache).await.expect("asked"), CatchUp::Whole);
    for round in 0..1_000 {
        let active = if round % 2 == 0 { "false" } else { "true" };
        let write = hset("EG-key-auth:K", &[("isActive", active)]);
        store.apply(&[write]).await.expect("write");
        store
            .publish(&channel, "key-auth:K")
            .await
            .expect("publish");
        let answer = caught_up(&cache).await.expect("asked");
        assert_eq!(answer, CatchUp::Whole, "round {round}");
        let cached = cache.read().key_auth.get("K").map(|c| c.active);
        assert_eq!(cached, Some(active == "true"), "round {round}");
    }
}
