use super::*;

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("tollgate-embedded-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// Asserts that none of `paths` is open to the group or others.
fn assert_private(paths: &[PathBuf]) {
    for path in paths {
        let mode = std::fs::metadata(path).expect("there").permissions().mode();
        assert_eq!(mode & 0o077, 0, "{} is {mode:o}", path.display());
    }
}

/// Writes `bytes` at the journal's end in `d`, as a write the store did not finish would.
/// A store's directory (`name`) whose journal holds one written user, the store closed.
async fn journal_of_one_user(name: &str) -> PathBuf {
    let d = dir(name);
    let s = EmbeddedStore::open(&d).expect("open");
    s.apply(&[hset("EG-user:1", "username", "ann")])
        .await
        .expect("apply");
    d
}

fn append_to_journal(d: &Path, bytes: &[u8]) {
    let mut j = OpenOptions::new()
        .append(true)
        .open(d.join(JOURNAL))
        .expect("journal");
    j.write_all(bytes).expect("append");
}

/// The users of the store in `d` after `s` (opened on a repaired journal) wrote `user` and the
/// store was opened again.
async fn users_after_a_write(s: EmbeddedStore, d: &Path, user: &str) -> Vec<String> {
    s.apply(&[hset(user, "username", "x")])
        .await
        .expect("write after repair");
    drop(s);
    let s = EmbeddedStore::open(d).expect("reopen again");
    s.keys_with_prefix("EG-user:").await.expect("keys")
}

fn hset(key: &str, f: &str, v: &str) -> Write {
    Write::HSet {
        key: key.into(),
        fields: vec![(f.into(), v.into())],
    }
}

#[tokio::test]
async fn survives_a_restart_and_drops_a_torn_tail() {
    let d = dir("restart");
    {
        let s = EmbeddedStore::open(&d).expect("open");
        s.apply(&[
            hset("EG-user:1", "username", "ann"),
            Write::SAdd {
                key: "EG-username:ann".into(),
                members: vec!["1".into()],
            },
        ])
        .await
        .expect("apply");
        s.apply(&[hset("EG-user:2", "username", "bob")])
            .await
            .expect("apply");
    }
    // A crash in the middle of writing a third batch.
    append_to_journal(&d, b"[{\"op\":\"hset\",\"key\":\"EG-user:3\",\"fie");
    let s = EmbeddedStore::open(&d).expect("reopen");
    assert_eq!(
        s.hgetall("EG-user:1")
            .await
            .expect("get")
            .get("username")
            .map(String::as_str),
        Some("ann")
    );
    assert_eq!(
        s.smembers("EG-username:ann").await.expect("get"),
        vec!["1".to_string()]
    );
    assert_eq!(s.hgetall("EG-user:2").await.expect("get").len(), 1);
    assert!(
        s.hgetall("EG-user:3").await.expect("get").is_empty(),
        "the torn batch is not applied"
    );
    assert_eq!(
        users_after_a_write(s, &d, "EG-user:4").await,
        vec!["EG-user:1", "EG-user:2", "EG-user:4"]
    );
    let _ = std::fs::remove_dir_all(&d);
}

/// A last entry written whole, its line end too, that does not read is damage, not an
/// interrupted write: the store is refused, the file left as it is (dropped, it took an
/// acknowledged change with it — a revoked key worked again — and the evidence too).
#[tokio::test]
async fn a_whole_last_entry_that_does_not_read_is_damage() {
    let d = journal_of_one_user("damaged-last").await;
    append_to_journal(
        &d,
        b"[{\"op\":\"hset\",\"key\":\"EG-user:2\",\"fi@lds\":[]}]\n",
    );
    let before = std::fs::read(d.join(JOURNAL)).expect("journal");
    let err = EmbeddedStore::open(&d).err().expect("refused");
    assert!(
        err.to_string().contains("the last entry is damaged"),
        "{err}"
    );
    assert_eq!(std::fs::read(d.join(JOURNAL)).expect("journal"), before);
    let _ = std::fs::remove_dir_all(&d);
}

/// A last entry written whole but for its line end (a crash between the two): kept, and the
/// entry written after the next start has a line of its own (the repair made the file a NUL
/// longer, and the next entry ran on in that line: lost at the start after).
#[tokio::test]
async fn a_last_entry_without_its_line_end_is_kept_and_ended() {
    let d = journal_of_one_user("unended").await;
    // An entry without its line end.
    append_to_journal(
        &d,
        br#"[{"op":"hset","key":"EG-user:2","fields":[["username","bob"]]}]"#,
    );
    let s = EmbeddedStore::open(&d).expect("reopen");
    assert_eq!(s.hgetall("EG-user:2").await.expect("get").len(), 1);
    assert_eq!(
        users_after_a_write(s, &d, "EG-user:3").await,
        vec!["EG-user:1", "EG-user:2", "EG-user:3"]
    );
    let journal = std::fs::read(d.join(JOURNAL)).expect("journal");
    assert!(!journal.contains(&0), "a NUL in the journal");
    let _ = std::fs::remove_dir_all(&d);
}

#[tokio::test]
async fn compaction_keeps_everything_and_a_second_process_is_refused() {
    let d = dir("compact");
    let s = EmbeddedStore::open(&d).expect("open");
    assert!(
        EmbeddedStore::open(&d).is_err(),
        "the data directory is locked"
    );
    let big = "x".repeat(4096);
    for i in 0..400 {
        s.apply(&[hset(&format!("k:{i}"), "v", &big)])
            .await
            .expect("apply");
    }
    s.apply(&[Write::Del { key: "k:0".into() }])
        .await
        .expect("del");
    assert!(
        d.join(SNAPSHOT).exists(),
        "the journal was folded into a snapshot"
    );
    drop(s);
    let s = EmbeddedStore::open(&d).expect("reopen");
    assert_eq!(s.keys_with_prefix("k:").await.expect("keys").len(), 399);
    assert_eq!(s.key_type("k:0").await.expect("type"), KeyType::None);
    assert_eq!(s.key_type("k:1").await.expect("type"), KeyType::Hash);
    // The store holds credentials' secrets: its directory and files are the gateway's
    // user's alone, whatever the umask.
    assert_private(&[d.clone(), d.join(JOURNAL), d.join(SNAPSHOT), d.join(LOCK)]);
    let _ = std::fs::remove_dir_all(&d);
}

/// A store made readable by others (by a release before, or by hand) is restricted when
/// it opens.
#[test]
fn a_readable_store_is_restricted_when_it_opens() {
    let d = dir("perms");
    drop(EmbeddedStore::open(&d).expect("open"));
    std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    std::fs::set_permissions(d.join(JOURNAL), std::fs::Permissions::from_mode(0o644))
        .expect("chmod");
    drop(EmbeddedStore::open(&d).expect("reopen"));
    assert_private(&[d.clone(), d.join(JOURNAL)]);
    let _ = std::fs::remove_dir_all(&d);
}

/// A write after the store was handed over to an upgraded process fails (its client is
/// told): applied in memory only, it would be answered as done and lost.
#[tokio::test]
async fn a_write_after_the_hand_over_fails() {
    let d = dir("handover");
    let s = EmbeddedStore::open(&d).expect("open");
    s.hand_over();
    // As a write that looked before the hand-over and took the state after it.
    s.0.handed_over
        .store(false, std::sync::atomic::Ordering::SeqCst);
    assert!(s
        .apply(&[hset("EG-user:9", "username", "late")])
        .await
        .is_err());
    drop(s);
    let s = EmbeddedStore::open(&d).expect("reopen");
    assert_eq!(s.key_type("EG-user:9").await.expect("type"), KeyType::None);
    let _ = std::fs::remove_dir_all(&d);
}

#[tokio::test]
async fn windows_locks_and_messages() {
    let s = EmbeddedStore::in_memory();
    let w = Duration::from_secs(60);
    assert_eq!(s.incr_window("rl:a", w).await.expect("incr").count, 1);
    assert_eq!(s.incr_window("rl:a", w).await.expect("incr").count, 2);
    let token = s
        .try_lock("populate", w)
        .await
        .expect("lock")
        .expect("free");
    assert!(s.try_lock("populate", w).await.expect("lock").is_none());
    s.unlock("populate", &token).await.expect("unlock");
    assert!(s.try_lock("populate", w).await.expect("lock").is_some());
    // Renewed, a short lock outlives its first term; another's token renews nothing.
    let short = Duration::from_millis(100);
    let token = s.try_lock("p2", short).await.expect("lock").expect("free");
    tokio::time::sleep(Duration::from_millis(60)).await;
    assert!(s.renew_lock("p2", &token, short).await.expect("renew"));
    assert!(!s.renew_lock("p2", "other", short).await.expect("renew"));
    tokio::time::sleep(Duration::from_millis(60)).await;
    assert!(
        s.try_lock("p2", short).await.expect("lock").is_none(),
        "still held"
    );
    let mut rx = s.subscribe("c").await.expect("sub");
    s.publish("c", "hello").await.expect("pub");
    assert_eq!(rx.recv().await.expect("msg"), "hello");
}

/// The writers' lock held by another thread, as by a batch whose sync takes long, until the
/// sender is used (or 10 s pass: the test has failed by then). The thread answers whether the
/// sender released it.
fn hold_writers(s: &EmbeddedStore) -> (std::sync::mpsc::Sender<()>, std::thread::JoinHandle<bool>) {
    let (inner, (release, wait), (taken, is_taken)) = (
        s.0.clone(),
        std::sync::mpsc::channel(),
        std::sync::mpsc::channel(),
    );
    let holder = std::thread::spawn(move || {
        let _writing = held(&inner.journal);
        taken.send(()).expect("test waits");
        wait.recv_timeout(Duration::from_secs(10)).is_ok()
    });
    is_taken.recv().expect("holder runs");
    (release, holder)
}

/// A write waiting on the disk holds up neither the runtime it was made on nor reads, rate-limit
/// windows and locks.
#[tokio::test]
async fn a_write_at_the_disk_holds_up_neither_readers_nor_the_runtime() {
    let d = dir("beside");
    let s = Arc::new(EmbeddedStore::open(&d).expect("open"));
    s.apply(&[hset("EG-user:1", "username", "a")])
        .await
        .expect("write");
    let (release, holder) = hold_writers(&s);
    let writer = tokio::spawn({
        let s = s.clone();
        async move { s.apply(&[hset("EG-user:2", "username", "b")]).await }
    });
    tokio::task::yield_now().await;
    let user = s.hgetall("EG-user:1").await.expect("read");
    assert_eq!(user.get("username").map(String::as_str), Some("a"));
    let w = Duration::from_secs(60);
    assert_eq!(s.incr_window("rl:a", w).await.expect("incr").count, 1);
    assert!(s.try_lock("populate", w).await.expect("lock").is_some());
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(!writer.is_finished(), "written while the journal was held");
    release.send(()).expect("holder waits");
    assert!(
        holder.join().expect("holder"),
        "the test went on only after 10 s"
    );
    writer.await.expect("writer").expect("write");
    let user = s.hgetall("EG-user:2").await.expect("read");
    assert_eq!(user.get("username").map(String::as_str), Some("b"));
    drop(s);
    let s = EmbeddedStore::open(&d).expect("reopen");
    assert_eq!(s.key_type("EG-user:2").await.expect("type"), KeyType::Hash);
    let _ = std::fs::remove_dir_all(&d);
}

/// A listing's pages from `scan_prefix` show every key there from the first page to the last
/// once, while what each page shows is removed and new keys come; keys of another prefix never.
#[tokio::test]
async fn scan_pages_hold_through_removals_and_additions() {
    let s = EmbeddedStore::in_memory();
    let writes: Vec<Write> = (0..300)
        .map(|i| hset(&format!("EG-user:{i}"), "username", "x"))
        .chain([hset("EG-userx", "a", "b"), hset("EG-app:1", "a", "b")])
        .collect();
    s.apply(&writes).await.expect("apply");
    let (mut cursor, mut seen, mut pages) = (0, Vec::new(), 0);
    loop {
        let (keys, next) = s.scan_prefix("EG-user:", cursor, 13).await.expect("page");
        pages += 1;
        assert!((13..=15).contains(&keys.len()) || next == 0, "{keys:?}");
        let removals: Vec<Write> = keys.iter().map(|k| Write::Del { key: k.clone() }).collect();
        let added = hset(&format!("EG-user:new{pages}"), "username", "x");
        s.apply(&[removals, vec![added]].concat())
            .await
            .expect("write");
        seen.extend(keys);
        if next == 0 {
            break;
        }
        assert!(next > cursor, "{next} after {cursor}");
        cursor = next;
    }
    let old: Vec<&String> = seen.iter().filter(|k| !k.contains("new")).collect();
    let mut unique = old.clone();
    unique.sort();
    unique.dedup();
    assert_eq!((old.len(), unique.len()), (300, 300), "{pages} pages");
    assert!(seen.iter().all(|k| k.starts_with("EG-user:")));
    // A cursor past every key's place is an empty last page.
    assert_eq!(
        s.scan_prefix("EG-user:", u64::MAX, 10).await.expect("page"),
        (vec![], 0)
    );
}

/// A batch's writes, the hash writes of one key applied together, leave what the same writes
/// one at a time leave: hash writes around a key's removal, its sets' writes, a hash over a
/// set, the last field removed.
#[test]
fn a_batch_leaves_what_its_writes_one_at_a_time_leave() {
    let keys = ["a", "b", "c"];
    let mut x: u32 = 7;
    let mut next = |n: u32| {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        x % n
    };
    for _ in 0..300 {
        let batch: Vec<Write> = (0..12)
            .map(|_| {
                let key = keys[next(3) as usize].to_string();
                let field = format!("f{}", next(3));
                match next(5) {
                    0 | 1 => Write::HSet {
                        key,
                        fields: vec![(field, format!("v{}", next(9)))],
                    },
                    2 => Write::HDel {
                        key,
                        fields: vec![field],
                    },
                    3 => Write::SAdd {
                        key,
                        members: vec![field],
                    },
                    _ => Write::Del { key },
                }
            })
            .collect();
        let (mut whole, mut one_by_one) = (BTreeMap::new(), BTreeMap::new());
        apply_batch(&mut whole, &batch);
        for w in &batch {
            apply_batch(&mut one_by_one, std::slice::from_ref(w));
        }
        assert_eq!(format!("{whole:?}"), format!("{one_by_one:?}"), "{batch:?}");
    }
}
