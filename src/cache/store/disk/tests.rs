use super::room::{free_bytes, size_text, RAISE_EVERY_MS};
use super::*;

/// A tier in a fresh directory of its own (`name` tells the tests apart), for the test's
/// whole run, and its directory.
fn leaked_tier(name: &str) -> (&'static DiskTier, PathBuf) {
    let dir = std::env::temp_dir().join(format!("tollgate-disk-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let tier = Box::leak(Box::new(DiskTier::open(&dir, 1 << 30).unwrap()));
    (tier, dir)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime")
}

/// A write begun before a purge (of this tile or any) leaves nothing on disk; one begun
/// after it is written.
#[test]
fn a_write_begun_before_a_purge_puts_nothing_back() {
    let (tier, dir) = leaked_tier("purge");
    let rt = runtime();
    let key = [5u8; 16];
    let obj = crate::cache::store::memory::tests::object(key, 3000);
    let seen = tier.purges.epoch();
    drop(tier.purges.begin());
    rt.block_on(tier.remove(&[6u8; 16])).unwrap();
    tier.write(&obj, seen);
    assert!(!tier.contains(&key) && !tier.path(&key).exists());
    assert_eq!(tier.stored_objects.load(Ordering::Relaxed), 0);
    tier.write(&obj, tier.purges.epoch());
    assert!(tier.contains(&key) && tier.path(&key).exists());
    assert_eq!(
        std::fs::read_dir(dir.join("tmp")).unwrap().count(),
        0,
        "no file left"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A disk behind the misses holds at most [`QUEUE_MAX`] bytes of bodies waiting: a fill
/// past them is not written (and counted); one within them is.
#[test]
fn writes_past_the_queue_are_skipped() {
    let (tier, dir) = leaked_tier("queue");
    let rt = runtime();
    let object =
        |k: u8| std::sync::Arc::new(crate::cache::store::memory::tests::object([k; 16], 3000));
    rt.block_on(async {
        // The disk is behind: as many bytes wait as may.
        tier.queued.store(QUEUE_MAX, Ordering::Relaxed);
        tier.put(object(1), tier.purges.epoch());
        assert_eq!(tier.skipped.load(Ordering::Relaxed), 1);
        assert_eq!(tier.queued.load(Ordering::Relaxed), QUEUE_MAX);
        tier.queued.store(0, Ordering::Relaxed);
        tier.put(object(2), tier.purges.epoch());
        assert!(tier.queued.load(Ordering::Relaxed) > 0, "waiting");
        for _ in 0..500 {
            if tier.queued.load(Ordering::Relaxed) == 0 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    });
    assert_eq!(tier.queued.load(Ordering::Relaxed), 0);
    assert!(tier.contains(&[2; 16]) && !tier.contains(&[1; 16]));
    assert_eq!(tier.skipped.load(Ordering::Relaxed), 1);
    let _ = std::fs::remove_dir_all(&dir);
}

/// An object larger than what the budget keeps after an eviction is not written: it would
/// push out every other object and then itself.
#[test]
fn an_object_past_the_budget_is_not_written_and_pushes_nothing_out() {
    let dir = std::env::temp_dir().join(format!("tollgate-disk-past-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let tier: &'static DiskTier = Box::leak(Box::new(DiskTier::open(&dir, 64 << 10).unwrap()));
    let rt = runtime();
    let object = |k: u8, len: usize| {
        std::sync::Arc::new(crate::cache::store::memory::tests::object([k; 16], len))
    };
    for k in 1..=3 {
        tier.write(&object(k, 3000), tier.purges.epoch());
    }
    rt.block_on(async {
        tier.put(object(9, 100_000), tier.purges.epoch());
        tier.put(object(4, 3000), tier.purges.epoch());
        for _ in 0..500 {
            if tier.queued.load(Ordering::Relaxed) == 0 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    });
    assert!(!tier.contains(&[9; 16]) && !tier.path(&[9; 16]).exists());
    for k in 1..=4 {
        assert!(tier.contains(&[k; 16]), "{k}");
    }
    assert_eq!(tier.evictions.load(Ordering::Relaxed), 0);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A file grown past what was written (a sparse gigabyte here) reads as damaged — removed, a
/// miss — without being read past its head: it held a gigabyte of the gateway's memory, kept
/// by the allocator.
#[test]
fn a_file_grown_past_what_was_written_is_damaged_and_not_read_whole() {
    let (tier, dir) = leaked_tier("grown");
    let rt = runtime();
    let key = [7u8; 16];
    tier.write(
        &crate::cache::store::memory::tests::object(key, 3000),
        tier.purges.epoch(),
    );
    let path = tier.path(&key);
    let whole = std::fs::read(&path).unwrap();
    assert_eq!(file::read_regular(&path, 1 << 30).unwrap(), Some(whole));
    let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    file.set_len(1 << 30).unwrap();
    // Refused by its head's lengths, within the tier's budget: nothing past the head read.
    assert_eq!(file::read_regular(&path, 1 << 40).unwrap(), None);
    assert!(rt.block_on(tier.get(key)).is_none());
    assert_eq!(tier.corrupt.load(Ordering::Relaxed), 1);
    assert!(!tier.contains(&key) && !path.exists());
    let _ = std::fs::remove_dir_all(&dir);
}

/// A waiting write counts what it holds besides its bytes: with tiny tiles the bytes alone
/// let hundreds of thousands of writes wait (each a task and an object), many times the
/// memory budget.
#[test]
fn a_waiting_write_counts_more_than_its_bytes() {
    let (tier, dir) = leaked_tier("queue-small");
    let rt = runtime();
    let tiny = std::sync::Arc::new(crate::cache::store::memory::tests::object([3; 16], 100));
    let bytes = tiny.body.len() as u64 + tiny.meta.head.wire_size() as u64;
    rt.block_on(async {
        // Room for the tile's bytes, not for what its write holds besides them.
        tier.queued
            .store(QUEUE_MAX - bytes - WAITING_WRITE / 2, Ordering::Relaxed);
        tier.put(tiny, tier.purges.epoch());
    });
    assert_eq!(tier.skipped.load(Ordering::Relaxed), 1);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A file that cannot be removed fails the purge (the tile would come back at the next
/// start, which indexes the directory again); this process no longer serves it.
#[test]
fn a_tile_file_that_cannot_be_removed_fails_its_purge() {
    let (tier, dir) = leaked_tier("unremovable");
    let rt = runtime();
    let key = [12u8; 16];
    tier.write(
        &crate::cache::store::memory::tests::object(key, 3000),
        tier.purges.epoch(),
    );
    // What `unlink` refuses: a directory where the file was.
    let file = tier.path(&key);
    std::fs::remove_file(&file).unwrap();
    std::fs::create_dir(&file).unwrap();
    let removed = rt.block_on(tier.remove(&key));
    assert!(removed.is_err(), "{removed:?}");
    assert!(!tier.contains(&key));
    // Gone already: no failure.
    assert!(!rt.block_on(tier.remove(&[13u8; 16])).unwrap());
    // A file in a directory that cannot be searched (a gateway not run as root, the directory
    // `chmod 000`; here a loop, which stops root too): `stat` fails as `unlink` does, and the
    // file may be there. The purge said `purged` and the tile came back at the next start.
    let key = [14u8; 16];
    let shard = tier.path(&key).parent().unwrap().to_path_buf();
    let _ = std::fs::remove_dir_all(&shard);
    std::os::unix::fs::symlink(&shard, &shard).unwrap();
    let removed = rt.block_on(tier.remove(&key));
    assert!(removed.is_err(), "{removed:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A FIFO at a tile's name is a miss at once: opened as a file, it waited for a writer
/// and held one of the tier's I/O slots for ever.
#[test]
fn a_fifo_at_a_tiles_name_is_a_miss_at_once() {
    let (tier, dir) = leaked_tier("fifo");
    let rt = runtime();
    let key = [14u8; 16];
    tier.write(
        &crate::cache::store::memory::tests::object(key, 3000),
        tier.purges.epoch(),
    );
    let file = tier.path(&key);
    std::fs::remove_file(&file).unwrap();
    let name = std::ffi::CString::new(file.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid C string for the call's duration.
    assert_eq!(unsafe { libc::mkfifo(name.as_ptr(), 0o600) }, 0);
    let read = rt.block_on(async {
        tokio::time::timeout(std::time::Duration::from_secs(5), tier.get(key)).await
    });
    assert!(matches!(read, Ok(None)), "{:?}", read.map(|o| o.is_some()));
    let _ = std::fs::remove_dir_all(&dir);
}

/// A directory or a FIFO under a tile's name is not indexed at the next start (each
/// lookup of the tile cost a blocking read that failed, with a warning, for ever); a
/// secret a start wrote aside and never put in place is cleared once it is old.
#[test]
fn what_is_no_tile_file_is_not_indexed_at_start() {
    let (tier, dir) = leaked_tier("scan");
    let object = |k| crate::cache::store::memory::tests::object(k, 3000);
    let (a, b, c) = ([21u8; 16], [22u8; 16], [23u8; 16]);
    for k in [a, b, c] {
        tier.write(&object(k), tier.purges.epoch());
    }
    std::fs::remove_file(tier.path(&a)).unwrap();
    std::fs::create_dir(tier.path(&a)).unwrap();
    std::fs::remove_file(tier.path(&b)).unwrap();
    let name = std::ffi::CString::new(tier.path(&b).as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid C string for the call's duration.
    assert_eq!(unsafe { libc::mkfifo(name.as_ptr(), 0o600) }, 0);
    let stray = dir.join(format!("{SECRET_FILE}.1.2"));
    std::fs::write(&stray, b"0123456789abcdef").unwrap();
    let old = std::time::SystemTime::now() - std::time::Duration::from_secs(120);
    std::fs::File::options()
        .write(true)
        .open(&stray)
        .unwrap()
        .set_modified(old)
        .unwrap();
    let again = DiskTier::open(&dir, 1 << 30).unwrap();
    assert!(!again.contains(&a) && !again.contains(&b) && again.contains(&c));
    assert!(!stray.exists());
    let _ = std::fs::remove_dir_all(&dir);
}

/// Two processes opening a new directory at once both start, with one secret: the secret
/// was written in `tmp/`, which each start empties, so one of them failed (and one
/// started with a secret the other then replaced).
#[test]
fn two_tiers_opening_a_new_directory_at_once_share_its_secret() {
    for round in 0..20 {
        let dir =
            std::env::temp_dir().join(format!("tollgate-disk-race-{round}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let start = std::sync::Arc::new(std::sync::Barrier::new(2));
        let opening: Vec<_> = (0..2)
            .map(|_| {
                let (dir, start) = (dir.clone(), start.clone());
                std::thread::spawn(move || {
                    start.wait();
                    DiskTier::open(&dir, 1 << 20).map(|t| t.secret)
                })
            })
            .collect();
        let secrets: Vec<[u8; 16]> = opening
            .into_iter()
            .map(|t| t.join().unwrap().expect("opened"))
            .collect();
        assert_eq!(secrets[0], secrets[1], "round {round}");
        assert_eq!(std::fs::read(dir.join(SECRET_FILE)).unwrap(), secrets[0]);
        let strays = std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("hash.key."))
            .count();
        assert_eq!(strays, 0, "round {round}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// The directory's `tmp` removed while the gateway runs (`rm -rf DIR/*`) is made again by
/// the next write: before, no write succeeded again until a restart.
#[test]
fn a_tmp_directory_removed_while_running_is_made_again() {
    let (tier, dir) = leaked_tier("tmp-gone");
    std::fs::remove_dir_all(dir.join("tmp")).unwrap();
    let key = [15u8; 16];
    tier.write(
        &crate::cache::store::memory::tests::object(key, 3000),
        tier.purges.epoch(),
    );
    assert!(tier.contains(&key) && tier.path(&key).exists());
    assert_eq!(tier.failed.load(Ordering::Relaxed), 0);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A write of a tile whose fetch began before an invalidation of it (under way or over)
/// puts nothing back; one begun after it ended is written.
#[test]
fn a_write_of_an_object_fetched_before_its_invalidation_puts_nothing_back() {
    let (tier, dir) = leaked_tier("inval");
    let rt = runtime();
    let (key, other) = ([9u8; 16], [10u8; 16]);
    let object = |k| crate::cache::store::memory::tests::object(k, 3000);
    let before = tier.purges.epoch();
    let under_way = tier.purges.invalidate(&key);
    let during = tier.purges.epoch();
    tier.write(&object(key), before);
    tier.write(&object(key), during);
    assert!(!tier.contains(&key) && !tier.path(&key).exists());
    // Another tile's write goes on.
    tier.write(&object(other), before);
    assert!(tier.contains(&other));
    drop(under_way);
    tier.write(&object(key), before);
    assert!(!tier.contains(&key), "begun before, written after");
    tier.write(&object(key), during);
    assert!(tier.contains(&key) && tier.path(&key).exists());
    // Invalidated: the file goes.
    assert!(rt.block_on(tier.invalidate(&key)).unwrap());
    assert!(!tier.path(&key).exists() && !tier.contains(&key));
    let _ = std::fs::remove_dir_all(&dir);
}

/// A file that cannot be read for now is a miss that keeps its place (it is read again
/// later); one gone is taken out of the index.
#[test]
fn a_file_unreadable_for_now_stays_indexed_and_one_gone_does_not() {
    let (tier, dir) = leaked_tier("read");
    let rt = runtime();
    let key = [11u8; 16];
    tier.write(
        &crate::cache::store::memory::tests::object(key, 3000),
        tier.purges.epoch(),
    );
    let file = tier.path(&key);
    let kept = dir.join("kept");
    std::fs::rename(&file, &kept).unwrap();
    // Unreadable: a directory where the file was.
    std::fs::create_dir(&file).unwrap();
    assert!(rt.block_on(tier.get(key)).is_none());
    assert!(tier.contains(&key));
    assert_eq!(tier.stored_objects.load(Ordering::Relaxed), 1);
    std::fs::remove_dir(&file).unwrap();
    std::fs::rename(&kept, &file).unwrap();
    assert!(rt.block_on(tier.get(key)).is_some(), "read again");
    std::fs::remove_file(&file).unwrap();
    assert!(rt.block_on(tier.get(key)).is_none());
    assert!(!tier.contains(&key));
    assert_eq!(tier.stored_objects.load(Ordering::Relaxed), 0);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A write that fails is counted; one that finds the file system full brings the budget
/// down below what the tier holds, the tiles least recently used going.
#[test]
fn a_full_file_system_brings_the_budget_down() {
    let dir = std::env::temp_dir().join(format!("tollgate-disk-full-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let tier = DiskTier::open(&dir, 1 << 30).unwrap();
    for k in 0..10u8 {
        tier.write(
            &crate::cache::store::memory::tests::object([k; 16], 3000),
            tier.purges.epoch(),
        );
    }
    let stored = tier.stored_bytes.load(Ordering::Relaxed);
    assert_eq!(stored, 10 * 4096);
    // A write that cannot be made: its temporary file's directory is a file.
    std::fs::remove_dir_all(dir.join("tmp")).unwrap();
    std::fs::write(dir.join("tmp"), b"in the way").unwrap();
    tier.write(
        &crate::cache::store::memory::tests::object([20; 16], 3000),
        tier.purges.epoch(),
    );
    assert_eq!(tier.failed.load(Ordering::Relaxed), 1);
    assert_eq!(tier.budget(), 1 << 30, "not for want of room");
    tier.write_failed(&std::io::Error::from_raw_os_error(libc::ENOSPC));
    assert_eq!(tier.failed.load(Ordering::Relaxed), 2);
    assert_eq!(tier.budget(), stored * 9 / 10);
    let now = tier.stored_bytes.load(Ordering::Relaxed);
    assert!(now <= tier.budget() && now > 0, "{now} bytes kept");
    assert!(
        !tier.contains(&[0; 16]) && tier.contains(&[9; 16]),
        "the oldest went"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A budget lowered for a full file system comes back up to the configured one once the file
/// system has room again — not at once (the lowering's own eviction frees room), but at the
/// first write a while after.
#[test]
fn a_lowered_budget_comes_back_up_when_the_file_system_has_room() {
    let dir = std::env::temp_dir().join(format!("tollgate-disk-room-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let configured = 1 << 20;
    let tier = DiskTier::open(&dir, configured).unwrap();
    let write = |k: u8| {
        tier.write(
            &crate::cache::store::memory::tests::object([k; 16], 3000),
            tier.purges.epoch(),
        )
    };
    for k in 0..10u8 {
        write(k);
    }
    tier.write_failed(&std::io::Error::from_raw_os_error(libc::ENOSPC));
    let lowered = tier.budget();
    assert_eq!(lowered, 10 * 4096 * 9 / 10);
    write(10);
    assert_eq!(tier.budget(), lowered, "not right after the lowering");
    assert!(
        free_bytes(&dir).unwrap() > 2 * configured,
        "this test needs 2 MiB free"
    );
    let a_while_ago = crate::clock::coarse_millis() - RAISE_EVERY_MS - 1;
    tier.lowered_at.store(a_while_ago, Ordering::Relaxed);
    write(11);
    assert_eq!(
        tier.budget(),
        configured,
        "raised, to the configured budget at most"
    );
    write(12);
    assert_eq!(tier.budget(), configured);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Only the tier's shards are read at start: what else the directory holds (a
/// filesystem's `lost+found`, an operator's notes) is neither indexed nor a reason to
/// fail.
#[test]
fn only_the_shards_are_read_at_start() {
    let dir = std::env::temp_dir().join(format!("tollgate-disk-shards-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let tier = DiskTier::open(&dir, 1 << 30).unwrap();
    let key = [7u8; 16];
    tier.write(
        &crate::cache::store::memory::tests::object(key, 3000),
        tier.purges.epoch(),
    );
    let file = tier.path(&key);
    drop(tier);
    let name = format!("{}.obj", hex(&[8u8; 16]));
    for other in ["lost+found", "notes", "0g"] {
        std::fs::create_dir_all(dir.join(other)).unwrap();
        std::fs::write(dir.join(other).join(&name), b"not a tile").unwrap();
    }
    std::fs::write(dir.join("README"), b"tiles").unwrap();
    // The tile's file again, in another shard and under its name in capitals: one key.
    let h = hex(&key);
    std::fs::create_dir_all(dir.join("00")).unwrap();
    std::fs::copy(&file, dir.join("00").join(format!("{h}.obj"))).unwrap();
    let capitals = format!("{}.obj", h.to_ascii_uppercase());
    std::fs::copy(&file, dir.join(&h[..2]).join(capitals)).unwrap();
    let tier = DiskTier::open(&dir, 1 << 30).unwrap();
    assert!(tier.contains(&key));
    assert!(!tier.contains(&[8u8; 16]));
    assert_eq!(tier.stored_objects.load(Ordering::Relaxed), 1);
    assert_eq!(
        tier.stored_bytes.load(Ordering::Relaxed),
        on_disk(std::fs::metadata(&file).unwrap().len())
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Writes of one tile at once (two fills, a fill and a revalidation) replace each other:
/// the index keeps one entry and the gauges count it once.
#[test]
fn objects_written_over_each_other_at_once_are_counted_once() {
    let dir = std::env::temp_dir().join(format!("tollgate-disk-race-{}", std::process::id()));
    let tier: &'static DiskTier = Box::leak(Box::new(DiskTier::open(&dir, 1 << 30).unwrap()));
    let key = [5u8; 16];
    let obj = std::sync::Arc::new(crate::cache::store::memory::tests::object(key, 3000));
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let obj = obj.clone();
            std::thread::spawn(move || {
                for _ in 0..300 {
                    tier.write(&obj, tier.purges.epoch());
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let size = on_disk(std::fs::metadata(tier.path(&key)).unwrap().len());
    let counted = (
        tier.stored_objects.load(Ordering::Relaxed),
        tier.stored_bytes.load(Ordering::Relaxed),
    );
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(counted, (1, size));
}

/// A directory keeps its secret across openings; one whose secret is new (a directory of
/// a release before it, or whose secret was deleted) is emptied of tiles, which no key
/// names now.
#[test]
fn the_secret_stays_with_its_directory_and_a_new_one_empties_it() {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(format!("tollgate-disk-secret-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let first = DiskTier::open(&dir, 1 << 30).unwrap();
    let key = [9u8; 16];
    first.write(
        &crate::cache::store::memory::tests::object(key, 100),
        first.purges.epoch(),
    );
    let mode = std::fs::metadata(dir.join(SECRET_FILE))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let again = DiskTier::open(&dir, 1 << 30).unwrap();
    assert_eq!(again.secret, first.secret);
    assert!(again.contains(&key));
    std::fs::remove_file(dir.join(SECRET_FILE)).unwrap();
    let renewed = DiskTier::open(&dir, 1 << 30).unwrap();
    let emptied = (renewed.contains(&key), renewed.path(&key).exists());
    let objects = renewed.stored_objects.load(Ordering::Relaxed);
    let _ = std::fs::remove_dir_all(&dir);
    assert_ne!(renewed.secret, first.secret);
    assert_eq!((emptied, objects), ((false, false), 0));
}

#[test]
fn names_round_trip() {
    let k: HashBinary = [0xab; 16];
    assert_eq!(unhex(&hex(&k)), Some(k));
    assert_eq!(unhex("zz"), None);
}

/// A start removes the writes a crash interrupted from `tmp/`, and nothing else there: an
/// operator's files in the `tmp` of a directory shared with others went too.
#[test]
fn a_start_removes_only_its_own_files_from_tmp() {
    let dir = std::env::temp_dir().join(format!("tollgate-disk-tmp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("tmp")).expect("tmp");
    let tmp = dir.join("tmp");
    let interrupted = tmp.join(format!("{}.{}", "ab".repeat(16), 12345));
    let probe = tmp.join("usable.77");
    let secret_aside = tmp.join(SECRET_FILE);
    let others = [
        "db-dump.sql",
        "notes",
        "usable.x",
        "0123.5",
        &format!("{}.1", "AB".repeat(16)),
        &format!("{}.", "ab".repeat(16)),
    ];
    for f in [&interrupted, &probe, &secret_aside] {
        std::fs::write(f, b"part").expect("write");
    }
    for f in others {
        std::fs::write(tmp.join(f), b"keep").expect("write");
    }
    DiskTier::open(&dir, 1 << 20).expect("open");
    assert!(!interrupted.exists() && !probe.exists() && !secret_aside.exists());
    for f in others {
        assert!(tmp.join(f).exists(), "{f} removed");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn sizes_in_log_lines_below_a_mebibyte_are_kibibytes() {
    assert_eq!(size_text(432 << 10), "432 KiB");
    assert_eq!(size_text(1), "1 KiB");
    assert_eq!(size_text(64 << 20), "64 MiB");
}
