//! The embedded store's journal when a write fails part way (a full disk; here the process's
//! file size limit): what the failed batch left is cut, so the next batch is a line of its own
//! and survives a restart (before, it joined the torn part's line and was dropped on the next
//! start as a torn tail, or the store was refused as damaged). Its own test binary: the
//! limit is the process's.

use std::time::Duration;

use tollgate::store::embedded::EmbeddedStore;
use tollgate::store::{Store, Write};

fn hset(key: &str, value: &str) -> Vec<Write> {
    vec![Write::HSet {
        key: key.into(),
        fields: vec![("v".into(), value.into())],
    }]
}

/// Sets the soft limit on the size of files this process writes.
fn file_size_limit(bytes: libc::rlim_t) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_FSIZE, &mut lim), 0);
        lim.rlim_cur = bytes.min(lim.rlim_max);
        assert_eq!(libc::setrlimit(libc::RLIMIT_FSIZE, &lim), 0);
    }
}

#[test]
fn a_batch_after_a_write_that_failed_part_way_survives_a_restart() {
    // A write past the limit fails (EFBIG) instead of ending the process.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }
    let dir = std::env::temp_dir().join(format!("tollgate-journal-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let store = EmbeddedStore::open(&dir).expect("open");
        store.apply(&hset("a", "before")).await.expect("a");
        let journal: u64 = std::fs::read_dir(&dir)
            .expect("dir")
            .filter_map(Result::ok)
            .map(|e| e.metadata().map_or(0, |m| m.len()))
            .max()
            .unwrap_or(0);
        // Room for part of the next batch only.
        file_size_limit(journal as libc::rlim_t + 100);
        let big = "x".repeat(4000);
        let failed = store.apply(&hset("b", &big)).await;
        file_size_limit(libc::RLIM_INFINITY);
        assert!(failed.is_err(), "the write past the limit failed");
        store.apply(&hset("c", "after")).await.expect("c");
        drop(store);
        let store = EmbeddedStore::open_waiting(&dir, Duration::from_secs(5)).expect("reopen");
        let value = |k: &'static str| {
            let store = &store;
            async move { store.hgetall(k).await.expect("read").get("v").cloned() }
        };
        assert_eq!(value("a").await.as_deref(), Some("before"));
        assert_eq!(value("c").await.as_deref(), Some("after"));
        assert_eq!(value("b").await, None, "the failed batch");
    });
    let _ = std::fs::remove_dir_all(&dir);
}
