//! Where tiles live: purge, the disk tier across a restart, the memory tier's shared memory
//! under churn, slow and leaving clients, a scan within the budget, and admission to a full
//! memory tier.

use super::*;

/// `tollgate cache purge ARGS` against `gw`'s Admin API.
fn cli_purge(gw: &GatewayProcess, args: &[&str]) -> std::process::Output {
    let admin = format!("http://127.0.0.1:{}", gw.admin_port);
    let mut all = vec!["cache", "purge"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--admin-url", &admin]);
    support::gateway::run_tollgate(&all, &[])
}

#[test]
fn purge_a_url_and_an_api_endpoint() {
    let up = PyUpstream::start("tiles", 5.0);
    let (dir, gw) = start(&up, "{ttl: 600}", &[]);
    for p in ["/tiles/p/1.png", "/tiles/p/2.png"] {
        assert_eq!(cache_status(&tile(&gw, p, 0)), "MISS");
        assert_eq!(cache_status(&tile(&gw, p, 0)), "HIT");
    }
    // One URL, through the CLI.
    // `tollgate cache purge URL` against this gateway: whether it succeeded, and what it said.
    let purge_url = |url: &str| {
        let out = cli_purge(&gw, &[url]);
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, said) = purge_url("/tiles/p/1.png?apiKey=k9:s9");
    assert!(ok, "{said}");
    assert!(said.contains("1 object"), "{said}");
    assert_eq!(cache_status(&tile(&gw, "/tiles/p/1.png", 1)), "MISS");
    assert_eq!(cache_status(&tile(&gw, "/tiles/p/2.png", 1)), "HIT");
    // A URL no pipeline caches: nothing purged, and the CLI says so with its exit status.
    let (ok, said) = purge_url("/elsewhere/1.png");
    assert!(!ok, "a purge of nothing succeeded");
    assert!(said.contains("not cached by any pipeline"), "{said}");
    // A URL whose query holds a URL (WMS's SLD), through the Admin API: that tile goes.
    let sld = "/tiles/p/3.png?SLD=http://styles.example/a.sld";
    assert_eq!(cache_status(&tile(&gw, sld, 0)), "MISS");
    assert_eq!(cache_status(&tile(&gw, sld, 0)), "HIT");
    let r = purge(&gw, &format!(r#"{{"url": "{sld}"}}"#));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(support::json_body(&r)["purged"], 1, "{}", r.text());
    assert_eq!(cache_status(&tile(&gw, sld, 1)), "MISS");
    // A URL in another spelling of the same target (an escaped letter, `//`): the tile the
    // requests of either spelling share goes, as a request of it would find it.
    assert_eq!(cache_status(&tile(&gw, "/tiles/p/%41.png", 0)), "MISS");
    assert_eq!(cache_status(&tile(&gw, "/tiles/p/A.png", 0)), "HIT");
    let r = purge(&gw, r#"{"url": "/tiles//p/%41.png"}"#);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(support::json_body(&r)["purged"], 1, "{}", r.text());
    assert_eq!(cache_status(&tile(&gw, "/tiles/p/A.png", 1)), "MISS");
    // What no request could ask for: refused with the reason.
    for bad in [
        "/tiles/p/../q/A.png",
        "ftp://h/tiles/p/A.png",
        "http://u:p@h/tiles/p/A.png",
    ] {
        let r = purge(&gw, &format!(r#"{{"url": "{bad}"}}"#));
        assert_eq!(r.status, 422, "{bad}: {}", r.text());
        assert!(r.text().starts_with("`url`"), "{bad}: {}", r.text());
    }
    // Everything of an api endpoint, through the Admin API.
    let r = purge(&gw, r#"{"apiEndpoint": "tiles"}"#);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(cache_status(&tile(&gw, "/tiles/p/2.png", 1)), "MISS");
    let state = support::json_body(&get(gw.admin_port, "GET", "/tollgate/cache", &[]));
    // A generation never taken before: past the clock's microseconds at the purge.
    let generation = state["generations"]["tiles"].as_u64().unwrap_or(0);
    assert!(generation > 1_700_000_000_000_000, "{state}");
    assert!(
        state["memory"]["objects"].as_u64().unwrap_or(0) >= 1,
        "{state}"
    );
    let r = purge(&gw, r#"{"apiEndpoint": "nope"}"#);
    assert_eq!(r.status, 404);
    // And through the CLI.
    assert_eq!(cache_status(&tile(&gw, "/tiles/p/2.png", 0)), "HIT");
    let out = cli_purge(&gw, &["--api-endpoint", "tiles"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(cache_status(&tile(&gw, "/tiles/p/2.png", 1)), "MISS");
    // Counted by what they named (the URL no pipeline caches, and the unknown api endpoint,
    // purged nothing).
    for (kind, n) in [("url", 3.0), ("api_endpoint", 2.0), ("prefix", 0.0)] {
        let metric = format!("tollgate_cache_purges_total{{kind=\"{kind}\"}}");
        assert_eq!(gw.metric(&metric), n, "{metric}");
    }
    drop(dir);
}

/// Two api endpoints of one pipeline whose tiles share their keys (the path stripped of each
/// endpoint's prefix): purging each in turn leaves neither with a tile fetched before its own
/// purge (the purges' counts were once in the key without the endpoint's name, so the second
/// endpoint's first purge found the first endpoint's tiles of after its purge).
#[test]
fn api_endpoints_that_share_tiles_are_purged_each_on_its_own() {
    let up = PyUpstream::start("tiles", 5.0);
    let yml = format!(
        "http: {{port: ${{PORT}}}}\nadmin: {{port: ${{ADMIN_PORT}}, host: 127.0.0.1}}\napiEndpoints:\n  pa: {{paths: ['/pa/*']}}\n  pb: {{paths: ['/pb/*']}}\nserviceEndpoints:\n  up: {{url: '{}'}}\npolicies: [cache, proxy]\npipelines:\n  p:\n    apiEndpoints: [pa, pb]\n    policies:\n      - cache: [{{action: {{ttl: 600}}}}]\n      - proxy: [{{action: {{serviceEndpoint: up, stripPath: true}}}}]\n",
        up.url("")
    );
    let (_dir, gw) = start_config(&yml, &[]);
    let open = |path: &str| get(gw.port, "GET", path, &[]);
    let purge_endpoint = |endpoint: &str| {
        let body = format!(r#"{{"apiEndpoint": "{endpoint}"}}"#);
        let r = purge(&gw, &body);
        assert_eq!(r.status, 200, "{}", r.text());
    };
    assert_eq!(cache_status(&open("/pa/1.png")), "MISS");
    assert_eq!(cache_status(&open("/pb/1.png")), "HIT", "one copy for both");
    purge_endpoint("pa");
    assert_eq!(cache_status(&open("/pa/1.png")), "MISS");
    purge_endpoint("pb");
    assert_eq!(
        cache_status(&open("/pb/1.png")),
        "MISS",
        "a tile fetched before pb's purge"
    );
    assert_eq!(
        cache_status(&open("/pa/1.png")),
        "HIT",
        "pa's own, after its purge"
    );
}

/// Everything cached under a path prefix (a layer), through the CLI and the Admin API: its
/// tiles are fetched again whatever their query or consumer, the others stay; a URL under it is
/// purged one by one as before; recorded beside the disk tier, a restart keeps them purged, and
/// a damaged record empties the disk tier.
#[test]
fn purge_a_path_prefix_and_it_stays_purged_across_a_restart() {
    let up = PyUpstream::start("tiles", 5.0);
    let (cache_dir, dir_arg) = fresh_cache_dir("prefixes");
    let (dir, gw) = start(&up, "{ttl: 600}", &["--cache-dir", &dir_arg]);
    let roads = ["/tiles/roads/1/1.png", "/tiles/roads/2/1.png?STYLE=dark"];
    let (signs, rivers) = ("/tiles/roadsigns/1.png", "/tiles/rivers/1/1.png");
    let spelled = ("/tiles/roads/3/1.png", "/tiles//roads/3/1.png");
    let all = [roads[0], roads[1], signs, rivers, spelled.0];
    for p in all {
        assert_eq!(cache_status(&tile(&gw, p, 0)), "MISS", "{p}");
        assert_eq!(cache_status(&tile(&gw, p, 1)), "HIT", "{p}");
    }
    let fetched = up.served();
    let out = cli_purge(&gw, &["--prefix", "/tiles/roads/"]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{said}");
    assert!(
        said.contains("Purged everything cached under /tiles/roads/"),
        "{said}"
    );
    for p in roads {
        assert_eq!(cache_status(&tile(&gw, p, 2)), "MISS", "{p}");
        assert_eq!(cache_status(&tile(&gw, p, 0)), "HIT", "{p}");
    }
    assert_eq!(
        up.served(),
        fetched + 2,
        "each of the layer's tiles fetched again"
    );
    // Another spelling of a path under the prefix (the proxy step joins the `//`): the tile
    // stored before the purge is not served for it either.
    assert_eq!(cache_status(&tile(&gw, spelled.1, 2)), "MISS");
    assert_eq!(cache_status(&tile(&gw, spelled.0, 2)), "HIT");
    assert_eq!(
        cache_status(&tile(&gw, signs, 2)),
        "HIT",
        "a prefix ends at a /"
    );
    assert_eq!(cache_status(&tile(&gw, rivers, 2)), "HIT");
    // A URL under the prefix is found by its purge.
    let r = purge(&gw, &format!(r#"{{"url": "{}"}}"#, roads[0]));
    assert_eq!(support::json_body(&r)["purged"], 1, "{}", r.text());
    assert_eq!(cache_status(&tile(&gw, roads[0], 1)), "MISS");
    // What is not a prefix, or more than one purge at once.
    for body in [
        r#"{"prefix": "/tiles/roads"}"#,
        r#"{"prefix": "tiles/roads/"}"#,
        r#"{"prefix": "/tiles/?STYLE=dark/"}"#,
        r#"{"prefix": 7}"#,
        r#"{"prefix": "/tiles/", "apiEndpoint": "tiles"}"#,
    ] {
        let r = purge(&gw, body);
        assert_eq!(r.status, 422, "{body}: {}", r.text());
    }
    let state = support::json_body(&get(gw.admin_port, "GET", "/tollgate/cache", &[]));
    let generation = state["prefixes"]["/tiles/roads/"].as_u64().unwrap_or(0);
    assert!(generation > 1_700_000_000_000_000, "{state}");
    // The rivers layer, through the Admin API; then a restart on the same disk tier: it stays
    // purged, the others are served from disk.
    wait_for_disk(&cache_dir, 7);
    let r = purge(&gw, r#"{"prefix": "/tiles/Rivers/"}"#);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        support::json_body(&r)["prefix"],
        "/tiles/rivers/",
        "as paths are compared"
    );
    assert_eq!(
        gw.metric("tollgate_cache_purges_total{kind=\"prefix\"}"),
        2.0
    );
    drop(gw);
    let gw = restarted(&dir, &dir_arg);
    assert_eq!(cache_status(&tile(&gw, rivers, 0)), "MISS");
    assert_eq!(cache_status(&tile(&gw, roads[1], 0)), "HIT");
    assert_eq!(cache_status(&tile(&gw, signs, 0)), "HIT");
    // A damaged record: no tile stored before it is served from disk again.
    drop(gw);
    std::fs::write(cache_dir.join("prefixes.json"), b"{\"/tiles/").expect("damage");
    let gw = restarted(&dir, &dir_arg);
    assert_eq!(cache_status(&tile(&gw, signs, 0)), "MISS");
    assert!(gw.log_text().contains("is damaged"), "{}", gw.log_text());
    drop(gw);
}

/// The objects stored in a disk tier's directory (in its shards, not its `tmp`).
fn disk_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let Ok(shards) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    shards
        .flatten()
        .filter(|s| s.path().is_dir() && s.file_name() != "tmp")
        .flat_map(|s| std::fs::read_dir(s.path()).into_iter().flatten().flatten())
        .map(|f| f.path())
        .collect()
}

/// Waits (5 s at most) until the disk tier in `dir` holds `n` files: tiles are written in
/// the background (to a temporary file, then renamed into their shard).
fn wait_for_disk(dir: &std::path::Path, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while disk_files(dir).len() < n {
        assert!(
            Instant::now() < deadline,
            "the tiles never reached the disk"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Makes the api endpoints' purge record impossible to write for the gateway process `pid`
/// (the name of its temporary file taken by a directory), or possible again.
fn block_purge_record(cache_dir: &std::path::Path, pid: u32, blocked: bool) {
    let in_the_way = cache_dir.join(format!("generations.{pid}.tmp"));
    match blocked {
        true => std::fs::create_dir_all(in_the_way).expect("in the way"),
        false => std::fs::remove_dir_all(in_the_way).expect("cleared"),
    }
}

/// The gateway of `dir` started again on the disk tier in `dir_arg` (its consumers too).
fn restarted(dir: &ConfigDir, dir_arg: &str) -> GatewayProcess {
    let populate = dir.file("consumers.json");
    GatewayProcess::start_with(dir, &["--populate", &populate, "--cache-dir", dir_arg], &[])
}

/// An empty directory for a disk tier (`name` tells the tests apart), and its path as an
/// argument. Removed when dropped: after the gateway started after it (a gateway still running
/// writes its purge records again into a directory removed under it).
fn fresh_cache_dir(name: &str) -> (CacheDir, String) {
    let dir = std::env::temp_dir().join(format!("tollgate-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let arg = dir.display().to_string();
    (CacheDir(dir), arg)
}

/// A disk tier's directory, removed when dropped (kept for a look when its test failed).
struct CacheDir(std::path::PathBuf);

impl std::ops::Deref for CacheDir {
    type Target = std::path::Path;
    fn deref(&self) -> &std::path::Path {
        &self.0
    }
}

impl AsRef<std::path::Path> for CacheDir {
    fn as_ref(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for CacheDir {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

#[test]
fn the_disk_tier_survives_a_restart_and_a_damaged_file_is_a_miss() {
    let mut up = PyUpstream::start("tiles", 5.0);
    let (cache_dir, dir_arg) = fresh_cache_dir("disk");
    let args = ["--cache-dir", dir_arg.as_str(), "--cache-disk-size", "10M"];
    let (dir, gw) = start(&up, "{ttl: 600}", &args);
    // The gateway again on the same disk tier (without `--cache-disk-size`: the default).
    let restart = || restarted(&dir, &dir_arg);
    let first = tile(&gw, "/tiles/bytes/20000/a.png", 0);
    assert_eq!(cache_status(&first), "MISS");
    let second = tile(&gw, "/tiles/bytes/30000/b.png", 0);
    assert_eq!(cache_status(&second), "MISS");
    wait_for_disk(&cache_dir, 2);
    drop(gw);
    up.kill();
    // A new process, the upstream gone: answered from disk.
    let gw = restart();
    let again = tile(&gw, "/tiles/bytes/20000/a.png", 0);
    assert_eq!(
        (again.status, cache_status(&again)),
        (200, "HIT"),
        "{}",
        again.text()
    );
    assert_eq!(again.body, first.body);
    // Writing and reading tiles' heads is no warning (Pingora's serialiser wants a dictionary).
    assert!(!gw.log_text().contains("WARN"), "{}", gw.log_text());
    // Damage every file on disk: each reads as a miss (here: the upstream is down, so a 502),
    // never as a bad tile.
    drop(gw);
    let files = disk_files(&cache_dir);
    for f in &files {
        let mut bytes = std::fs::read(f).expect("read");
        let n = bytes.len();
        bytes.truncate(n - 100);
        std::fs::write(f, bytes).expect("damage");
    }
    assert!(!files.is_empty());
    let gw = restart();
    let r = tile(&gw, "/tiles/bytes/30000/b.png", 0);
    assert_eq!(
        r.status,
        502,
        "a damaged file is a miss: {} {:?}",
        r.status,
        r.header("x-cache-status")
    );
    up.restart();
    let r = tile(&gw, "/tiles/bytes/30000/b.png", 0);
    assert_eq!(
        (r.status, cache_status(&r), r.body.len()),
        (200, "MISS", 30000)
    );
    assert!(gw.metric("tollgate_cache_disk_damaged_total") >= 1.0);
}

/// The disk tier's directory removed while running (by hand, a clean-up script): it is made
/// again with the secret the keys are hashed with, the tiles gone are no longer counted, and
/// the tiles written from then on survive a restart (they were all removed at the next start
/// as stored under another secret).
#[test]
fn a_disk_tier_removed_while_running_is_made_again() {
    let up = PyUpstream::start("tiles", 5.0);
    let (cache_dir, dir_arg) = fresh_cache_dir("disk-removed");
    let args = ["--cache-dir", dir_arg.as_str(), "--cache-disk-size", "10M"];
    let (dir, gw) = start(&up, "{ttl: 600}", &args);
    let disk_objects = || {
        let state = support::json_body(&get(gw.admin_port, "GET", "/tollgate/cache", &[]));
        state["disk"]["objects"].as_u64().unwrap_or(u64::MAX)
    };
    for i in 0..3 {
        let r = tile(&gw, &format!("/tiles/bytes/20000/before{i}.png"), 0);
        assert_eq!(cache_status(&r), "MISS");
    }
    wait_for_disk(&cache_dir, 3);
    // A purge before: its generation is in the keys of the tiles written after, and its
    // record is written again too.
    let r = purge(&gw, r#"{"apiEndpoint": "tiles"}"#);
    assert_eq!(r.status, 200, "{}", r.text());
    std::fs::remove_dir_all(&cache_dir).expect("remove the directory");
    let said = "removed while running";
    let deadline = Instant::now() + Duration::from_secs(5);
    while !gw.log_text().contains(said) {
        assert!(Instant::now() < deadline, "{}", gw.log_text());
        std::thread::sleep(Duration::from_millis(100));
    }
    // (The secret before the line, the purges' record after it.)
    assert!(
        cache_dir.join("hash.key").exists(),
        "the secret written again"
    );
    while !cache_dir.join("generations.json").exists() {
        assert!(
            Instant::now() < deadline,
            "the purges not written again:\n{}",
            gw.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(disk_objects(), 0, "the tiles gone are not counted");
    for i in 0..2 {
        let r = tile(&gw, &format!("/tiles/bytes/20000/after{i}.png"), 0);
        assert_eq!(cache_status(&r), "MISS");
    }
    wait_for_disk(&cache_dir, 2);
    assert_eq!(disk_objects(), 2);
    drop(gw);
    let gw = restarted(&dir, &dir_arg);
    for i in 0..2 {
        let r = tile(&gw, &format!("/tiles/bytes/20000/after{i}.png"), 0);
        assert_eq!((r.status, cache_status(&r)), (200, "HIT"), "after{i}");
    }
    assert!(
        !gw.log_text().contains("key hash secret no longer there"),
        "{}",
        gw.log_text()
    );
}

/// The disk tier lets its least recently used files go: a tile hit again and again from memory
/// is in use, and outlives the one-off tiles written after it — across a restart too.
#[test]
fn a_tile_hit_from_memory_stays_on_disk_while_one_off_tiles_push_others_out() {
    let up = PyUpstream::start("tiles", 5.0);
    let (_cache_dir, dir_arg) = fresh_cache_dir("disk-lru");
    // Room on disk for about four 20 kB tiles; the memory tier holds them all.
    let args = ["--cache-dir", dir_arg.as_str(), "--cache-disk-size", "100k"];
    let (dir, gw) = start(&up, "{ttl: 600}", &args);
    // Tiles written to disk so far: those there and those pushed out.
    let written = || {
        let state = support::json_body(&get(gw.admin_port, "GET", "/tollgate/cache", &[]));
        let disk = &state["disk"];
        disk["objects"].as_u64().unwrap_or(0) + disk["evictions"].as_u64().unwrap_or(0)
    };
    let wait_for_written = |n: u64| {
        let deadline = Instant::now() + Duration::from_secs(5);
        while written() < n {
            assert!(
                Instant::now() < deadline,
                "the tiles never reached the disk"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let hot = "/tiles/bytes/20000/hot.png";
    assert_eq!(cache_status(&tile(&gw, hot, 0)), "MISS");
    wait_for_written(1);
    for i in 0..10 {
        let once = format!("/tiles/bytes/20000/once-{i}.png");
        assert_eq!(cache_status(&tile(&gw, &once, 0)), "MISS");
        // Written before the hot tile is used again (the order the test is about).
        wait_for_written(i + 2);
        for _ in 0..5 {
            assert_eq!(cache_status(&tile(&gw, hot, 0)), "HIT");
        }
    }
    assert!(gw.metric(r#"tollgate_cache_evictions_total{tier="disk"}"#) >= 5.0);
    drop(gw);
    let populate = dir.file("consumers.json");
    let gw = GatewayProcess::start_with(
        &dir,
        &[
            "--populate",
            &populate,
            "--cache-dir",
            &dir_arg,
            "--cache-disk-size",
            "100k",
        ],
        &[],
    );
    assert_eq!(
        cache_status(&tile(&gw, hot, 0)),
        "HIT",
        "the hot tile went from disk"
    );
}

/// An api endpoint's purge is recorded beside the disk tier: one that cannot be written is
/// answered 500 (in effect until a restart only), and a record damaged at start empties the
/// disk tier rather than bring purged tiles back.
#[test]
fn a_purge_that_cannot_be_recorded_says_so_and_a_damaged_record_empties_the_disk_tier() {
    let up = PyUpstream::start("tiles", 5.0);
    let (cache_dir, dir_arg) = fresh_cache_dir("generations");
    let (dir, gw) = start(&up, "{ttl: 600}", &["--cache-dir", &dir_arg]);
    let path = "/tiles/bytes/20000/g.png";
    assert_eq!(cache_status(&tile(&gw, path, 0)), "MISS");
    wait_for_disk(&cache_dir, 1);
    // The record's temporary file cannot be made.
    let pid = gw.child.id();
    block_purge_record(&cache_dir, pid, true);
    let r = purge(&gw, r#"{"apiEndpoint": "tiles"}"#);
    assert_eq!(r.status, 500, "{}", r.text());
    assert!(r.text().contains("cannot record the purge"), "{}", r.text());
    assert_eq!(
        cache_status(&tile(&gw, path, 0)),
        "MISS",
        "purged in this process"
    );
    drop(gw);
    block_purge_record(&cache_dir, pid, false);
    // A damaged record: the tile stored before the purge is not served from disk again.
    std::fs::write(cache_dir.join("generations.json"), b"{\"tiles\": ").expect("damage");
    let gw = restarted(&dir, &dir_arg);
    assert_eq!(cache_status(&tile(&gw, path, 0)), "MISS");
    assert!(gw.log_text().contains("is damaged"), "{}", gw.log_text());
    // Recorded afresh: the tile stored now is there after the next start.
    wait_for_disk(&cache_dir, 1);
    drop(gw);
    let gw = restarted(&dir, &dir_arg);
    assert_eq!(cache_status(&tile(&gw, path, 0)), "HIT");
    assert!(!gw.log_text().contains("is damaged"), "{}", gw.log_text());
}

/// A URL's purge whose tile file cannot be removed says so (500, and the CLI's exit status)
/// — the next start would index the file again — and the tile is no longer served by this
/// process. Before, the purge answered `purged: 1` and the tile came back at the next start.
#[test]
fn a_url_purge_whose_file_cannot_be_removed_says_so() {
    let up = PyUpstream::start("tiles", 5.0);
    let (cache_dir, dir_arg) = fresh_cache_dir("unremovable");
    let (_dir, gw) = start(&up, "{ttl: 600}", &["--cache-dir", &dir_arg]);
    let path = "/tiles/bytes/20000/u.png";
    assert_eq!(cache_status(&tile(&gw, path, 0)), "MISS");
    wait_for_disk(&cache_dir, 1);
    // What `unlink` refuses (as a read-only or unwritable directory would, for root too): a
    // directory where the tile's file was.
    let file = disk_files(&cache_dir).remove(0);
    std::fs::remove_file(&file).expect("remove");
    std::fs::create_dir(&file).expect("in the way");
    let out = cli_purge(&gw, &[path]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{said}");
    assert!(
        said.contains("the purge failed (500): ") && said.contains("until the next restart only"),
        "{said}"
    );
    let r = purge(&gw, &format!(r#"{{"url": "{path}"}}"#));
    assert_eq!(r.status, 500, "{}", r.text());
    assert_eq!(cache_status(&tile(&gw, path, 1)), "MISS");
}

/// A purge record removed while the gateway was stopped says nothing of the purges the disk
/// tier's tiles went through: the tiles go, as for a damaged one. A missing record was read
/// as no purge at all, and the copies purged before were hits again. A new directory's first
/// start writes both records, so a later start that finds none knows they were removed.
#[test]
fn a_removed_purge_record_empties_the_disk_tier() {
    let up = PyUpstream::start("tiles", 5.0);
    let (cache_dir, dir_arg) = fresh_cache_dir("record-removed");
    let (dir, mut gw) = start(&up, "{ttl: 600}", &["--cache-dir", &dir_arg]);
    for record in ["generations.json", "prefixes.json", "records.kept"] {
        assert!(
            cache_dir.join(record).is_file(),
            "{record} at the first start"
        );
    }
    let paths = ["/tiles/bytes/20000/r1.png", "/tiles/bytes/20000/r2.png"];
    for (record, purge_body) in [
        ("prefixes.json", r#"{"prefix": "/tiles/bytes/"}"#),
        ("generations.json", r#"{"apiEndpoint": "tiles"}"#),
    ] {
        for p in paths {
            tile(&gw, p, 0);
            assert_eq!(cache_status(&tile(&gw, p, 0)), "HIT", "{p}");
        }
        let r = purge(&gw, purge_body);
        assert_eq!(r.status, 200, "{}", r.text());
        // One of them stored again after the purge, the other's copy from before it.
        assert_eq!(cache_status(&tile(&gw, paths[0], 0)), "MISS");
        wait_for_disk(&cache_dir, 3);
        drop(gw);
        std::fs::remove_file(cache_dir.join(record)).expect("remove the record");
        gw = restarted(&dir, &dir_arg);
        for p in paths {
            assert_eq!(cache_status(&tile(&gw, p, 0)), "MISS", "{record}: {p}");
        }
        assert!(
            gw.log_text()
                .contains(&format!("{record} is damaged (missing)")),
            "{}",
            gw.log_text()
        );
        assert!(cache_dir.join(record).is_file(), "{record} written again");
    }
    // A directory of an earlier version (which wrote each record at its first purge only, and
    // no marker) keeps its tiles: an upgrade emptied it.
    let path = "/tiles/bytes/20000/r3.png";
    assert_eq!(cache_status(&tile(&gw, path, 0)), "MISS");
    // On disk: the two tiles fetched since the last start emptied the tier, and this one.
    gw.metric_when("tollgate_cache_objects{tier=\"disk\"}", |n| n >= 3.0);
    drop(gw);
    for file in ["generations.json", "prefixes.json", "records.kept"] {
        std::fs::remove_file(cache_dir.join(file)).expect("remove");
    }
    let gw = restarted(&dir, &dir_arg);
    assert_eq!(cache_status(&tile(&gw, path, 0)), "HIT");
    for file in ["generations.json", "prefixes.json", "records.kept"] {
        assert!(cache_dir.join(file).is_file(), "{file} written");
    }
    drop(gw);
}

/// The purge records removed while the gateway runs (a directory emptied by hand: its secret,
/// made again at once, escaped the removal, the records did not) are written again from what
/// the process knows, and the next start keeps the tiles and the purge: before, they stayed
/// gone, and the next start took the tiles for ones of purges it could not know.
#[test]
fn purge_records_removed_while_running_are_written_again() {
    let up = PyUpstream::start("tiles", 5.0);
    let (cache_dir, dir_arg) = fresh_cache_dir("records-removed-running");
    let (dir, gw) = start(&up, "{ttl: 600}", &["--cache-dir", &dir_arg]);
    let (purged, kept) = ("/tiles/bytes/20000/p.png", "/tiles/bytes/20000/k.png");
    assert_eq!(cache_status(&tile(&gw, purged, 0)), "MISS");
    assert_eq!(purge(&gw, r#"{"apiEndpoint": "tiles"}"#).status, 200);
    assert_eq!(cache_status(&tile(&gw, kept, 0)), "MISS");
    wait_for_disk(&cache_dir, 2);
    let records = ["generations.json", "prefixes.json", "records.kept"];
    for record in records {
        std::fs::remove_file(cache_dir.join(record)).expect("remove the record");
    }
    // Written again, and said so (the line follows the files).
    let deadline = Instant::now() + Duration::from_secs(10);
    while !(records.iter().all(|r| cache_dir.join(r).is_file())
        && gw
            .log_text()
            .contains("purge records were removed while running"))
    {
        assert!(
            Instant::now() < deadline,
            "records not written again, or not said so:\n{}",
            gw.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(gw);
    let gw = restarted(&dir, &dir_arg);
    // The tile stored after the purge is kept; the purge holds.
    assert_eq!(
        cache_status(&tile(&gw, kept, 0)),
        "HIT",
        "{}",
        gw.log_text()
    );
    assert_eq!(cache_status(&tile(&gw, purged, 0)), "MISS");
    drop(gw);
}

/// An api endpoint's purge whose record could not be written is in effect until a restart;
/// the next purge after the restart does not take its generation again (which would bring
/// back the tiles stored under it).
#[test]
fn a_purge_after_an_unrecorded_one_and_a_restart_takes_a_new_generation() {
    let up = PyUpstream::start("tiles", 5.0);
    let (cache_dir, dir_arg) = fresh_cache_dir("generations-again");
    let (dir, gw) = start(&up, "{ttl: 600}", &["--cache-dir", &dir_arg]);
    let path = "/tiles/bytes/20000/again.png";
    assert_eq!(cache_status(&tile(&gw, path, 0)), "MISS");
    let pid = gw.child.id();
    block_purge_record(&cache_dir, pid, true);
    assert_eq!(purge(&gw, r#"{"apiEndpoint": "tiles"}"#).status, 500);
    // Stored under the unrecorded generation.
    assert_eq!(cache_status(&tile(&gw, path, 0)), "MISS");
    wait_for_disk(&cache_dir, 2);
    drop(gw);
    block_purge_record(&cache_dir, pid, false);
    let gw = restarted(&dir, &dir_arg);
    let r = purge(&gw, r#"{"apiEndpoint": "tiles"}"#);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        cache_status(&tile(&gw, path, 0)),
        "MISS",
        "a tile stored before this purge"
    );
    drop(gw);
}

/// Tile bodies in the memory tier live in shared memory and hits are sent from it by
/// `sendfile`: with a small budget, tiles of every size (below, within and above the sizes kept
/// there) asked for by concurrent clients, popular ones hit again and again while a stream of
/// others pushes tiles out and their places are taken again — every answer is its own tile's
/// body, whole.
#[test]
fn tiles_from_shared_memory_are_whole_and_their_own_while_the_memory_tier_churns() {
    let up = PyUpstream::start("tiles", 5.0);
    let (_dir, gw) = start(&up, "{ttl: 600}", &["--cache-memory", "2MiB"]);
    let sizes = [3000usize, 8192, 20000, 65541, 300_000];
    let expected = |name: &str, n: usize| -> Vec<u8> { name.bytes().cycle().take(n).collect() };
    let port = gw.port;
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            std::thread::spawn(move || {
                let mut hits = 0;
                let mut r = t * 7919 + 1;
                for i in 0..400u64 {
                    r = r
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    let pick = (r >> 33) as usize;
                    // Seven in ten from ten popular tiles, the rest from a stream of others.
                    let (name, size) = if pick % 10 < 7 {
                        (format!("hot{}", pick % 10), sizes[pick % 10 % sizes.len()])
                    } else {
                        (format!("cold-{t}-{i}"), sizes[pick % sizes.len()])
                    };
                    let path = format!("/open/unique/{size}/{name}");
                    // The others twice: a full memory tier stores a tile from its second
                    // miss on, pushing others out.
                    let times = if name.starts_with("hot") { 1 } else { 2 };
                    for _ in 0..times {
                        let resp = get(port, "GET", &path, &[]);
                        assert_eq!(resp.status, 200, "{path}");
                        assert!(
                            resp.body == expected(&name, size),
                            "{path}: {} bytes, not its own body ({:?})",
                            resp.body.len(),
                            String::from_utf8_lossy(&resp.body[..resp.body.len().min(40)])
                        );
                        hits += usize::from(cache_status(&resp) == "HIT");
                    }
                }
                hits
            })
        })
        .collect();
    let hits: usize = threads.into_iter().map(|t| t.join().expect("client")).sum();
    assert!(hits > 500, "{hits} hits of about 2000 requests");
    let evictions = gw.metric(r#"tollgate_cache_evictions_total{tier="memory"}"#);
    assert!(evictions > 50.0, "{evictions} evictions");
    // The bodies were in shared memory, counted in the gateway's resident memory.
    let pid = gw.child.id();
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    assert!(
        maps.contains("memfd:tollgate-tiles"),
        "no shared memory mapped"
    );
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let shmem_kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("RssShmem:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    assert!(shmem_kb > 100, "RssShmem {shmem_kb} kB");
    let state = support::json_body(&get(gw.admin_port, "GET", "/tollgate/cache", &[]));
    let shared = &state["sharedMemory"];
    // The file is sized half again as large as the budget; bodies pushed out are let go a
    // little after (the memory tier frees them when no thread still reads its maps).
    let (used, size) = (shared["used"].as_u64(), shared["size"].as_u64());
    assert!(
        used.is_some_and(|u| u > 0 && u <= 3 << 20) && size == Some(3 << 20),
        "{state}"
    );
    assert_eq!(
        gw.metric(r#"tollgate_cache_shared_memory_bytes{state="size"}"#),
        f64::from(3 << 20)
    );
    let used = gw.metric(r#"tollgate_cache_shared_memory_bytes{state="used"}"#);
    assert!(used > 0.0 && used <= f64::from(3 << 20), "{used}");
    // Every popular tile once more, after the churn: still its own.
    for (k, size) in sizes.iter().cycle().take(10).enumerate() {
        let name = format!("hot{k}");
        let resp = get(port, "GET", &format!("/open/unique/{size}/{name}"), &[]);
        assert!(resp.body == expected(&name, *size), "hot{k}");
    }
}

/// Tiles of mixed sizes (8 to 64 KiB) cycled through a small memory tier four times over: the
/// places of the tiles pushed out are joined as they come free, so the tiles stored later still
/// find room in shared memory (and go out by `sendfile`) instead of staying in ordinary memory,
/// as `sharedMemory.fragmented` counts.
#[test]
fn tiles_of_mixed_sizes_cycled_through_the_memory_tier_keep_finding_room_in_shared_memory() {
    let up = PyUpstream::start("tiles", 5.0);
    let (_dir, gw) = start(&up, "{ttl: 600}", &["--cache-memory", "16MiB"]);
    let port = gw.port;
    // Bodies stored in the memory tier so far, and those that found no room in shared memory
    // although its free pages together would have held them (those it refused while its free
    // pages were too few depend on how soon the tiles pushed out let their places go).
    let counts = || {
        let state = support::json_body(&get(gw.admin_port, "GET", "/tollgate/cache", &[]));
        let n = |v: &serde_json::Value| v.as_u64().unwrap_or(0);
        let memory = &state["memory"];
        (
            n(&memory["objects"]) + n(&memory["evictions"]),
            n(&state["sharedMemory"]["fragmented"]),
        )
    };
    let run = |round: u64| {
        let threads: Vec<_> = (0..4u64)
            .map(|t| {
                std::thread::spawn(move || {
                    let mut r = round * 104_729 + t * 7919 + 1;
                    for i in 0..250u64 {
                        r = r
                            .wrapping_mul(6364136223846793005)
                            .wrapping_add(1442695040888963407);
                        let size = 8192 + (r >> 33) as usize % (56 * 1024);
                        let path = format!("/open/unique/{size}/mixed-{round}-{t}-{i}");
                        // Twice: a full memory tier stores a tile from its second miss on.
                        for _ in 0..2 {
                            assert_eq!(get(port, "GET", &path, &[]).status, 200, "{path}");
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("client");
        }
    };
    // About 35 MiB of tiles through a tier of 16, then as many again, counted.
    run(0);
    let (stored_before, refused_before) = counts();
    run(1);
    let (stored, refused) = counts();
    let (stored, refused) = (stored - stored_before, refused - refused_before);
    assert!(stored > 300, "{stored} tiles stored");
    // With free places only split, about 1 in 20 found no room by then (and more as the tier
    // went on cycling); joined, none or next to none.
    assert!(
        refused * 50 < stored,
        "{refused} of {stored} tiles found no room in shared memory's free pages in pieces"
    );
}

/// Clients that leave in the middle of a hit sent by `sendfile` (a 250 KB tile, the connection
/// reset after a few bytes, with a small receive buffer so most of the tile is still to send)
/// cost only their own request: the gateway goes on, and the tile goes out whole to the next.
#[test]
fn clients_that_leave_during_a_hit_sent_from_shared_memory_cost_only_their_own_request() {
    use std::io::{Read, Write};
    let up = PyUpstream::start("tiles", 5.0);
    let (_dir, gw) = start(&up, "{ttl: 600}", &[]);
    let (path, expected) = stored_big_tile(&gw);
    let leavers: Vec<_> = (0..8)
        .map(|_| {
            let port = gw.port;
            std::thread::spawn(move || {
                for _ in 0..10 {
                    let s =
                        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
                            .expect("socket");
                    s.set_recv_buffer_size(4096).expect("rcvbuf");
                    let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
                    s.connect(&addr.into()).expect("connect");
                    let mut s: std::net::TcpStream = s.into();
                    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: h\r\n\r\n").as_bytes())
                        .expect("send");
                    let mut some = [0u8; 64];
                    let _ = s.read(&mut some);
                    // Unread bytes: the close resets the connection mid-tile.
                    drop(s);
                }
            })
        })
        .collect();
    for l in leavers {
        l.join().expect("client");
    }
    for _ in 0..5 {
        let r = get(gw.port, "GET", path, &[]);
        assert_eq!((r.status, cache_status(&r)), (200, "HIT"));
        assert!(r.body == expected, "{} bytes, not the tile", r.body.len());
    }
    assert_eq!(up.served(), 1);
}

/// A tile sent by `sendfile` to a client that has not read it yet stays its own when it is
/// pushed out and its pages cut out of the shared memory — also on a system that gives shared
/// memory huge pages (`shmem_enabled: always`, as some hosts set for databases), where a hole
/// punched in part of a huge page zeroes it in place (without the gateway's advice against
/// them, this client got zeros). Run where the setting can be changed (root, `/sys`
/// writable); it is put back after.
#[test]
fn a_slow_clients_tile_stays_its_own_when_the_system_gives_shared_memory_huge_pages() {
    use std::io::Write;
    use support::hugepages;
    let Some(_setting) = hugepages::ShmemHugePages::set("always") else {
        eprintln!("not run: the system's shmem_enabled cannot be changed here");
        return;
    };
    if !hugepages::memfd_gets_huge_pages() {
        // A kernel that cannot find free 2 MiB blocks gives none; then there is nothing to show.
        eprintln!("not run: shmem_enabled: always gave this process no huge pages");
        return;
    }
    let up = PyUpstream::start("tiles", 5.0);
    let (_dir, gw) = start(&up, "{ttl: 600}", &["--cache-memory", "2MiB"]);
    let path = "/open/unique/20000/first";
    let expected: Vec<u8> = "first".bytes().cycle().take(20000).collect();
    assert_eq!(cache_status(&get(gw.port, "GET", path, &[])), "MISS");
    // The slow client: its hit is sent and waits, unread, in its socket.
    let mut slow = std::net::TcpStream::connect(("127.0.0.1", gw.port)).expect("connect");
    slow.write_all(format!("GET {path} HTTP/1.1\r\nHost: h\r\n\r\n").as_bytes())
        .expect("send");
    std::thread::sleep(Duration::from_millis(300));
    // Other tiles, each asked for twice (a full memory tier stores a tile from its second
    // miss on), push it out of the 2 MiB memory tier; its body is let go a little after (once
    // no thread still reads the tier's maps) and, as it went by `sendfile`, its pages are cut
    // out of the file. Tiles stored after that may take them.
    let cuts = || {
        let state = support::json_body(&get(gw.admin_port, "GET", "/tollgate/cache", &[]));
        state["sharedMemory"]["cuts"].as_u64().unwrap_or(0)
    };
    let mut after_cut = None;
    for i in 0..3000 {
        let other = format!("/open/unique/20000/other{i}");
        assert_eq!(cache_status(&get(gw.port, "GET", &other, &[])), "MISS");
        let again = get(gw.port, "GET", &other, &[]);
        assert!(matches!(cache_status(&again), "MISS" | "HIT"), "{other}");
        if after_cut.is_none() && i % 10 == 9 && cuts() > 0 {
            after_cut = Some(i);
        }
        if after_cut.is_some_and(|at| i >= at + 10) {
            break;
        }
    }
    assert!(after_cut.is_some(), "the tile's pages were never cut out");
    slow.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut past = Vec::new();
    let r = support::client::read_next_response(&mut slow, &mut past, false);
    assert_eq!(cache_status(&r), "HIT");
    assert!(past.is_empty(), "bytes past the tile");
    assert!(
        r.body == expected,
        "the slow client got other bytes than its tile: {:?}",
        String::from_utf8_lossy(&r.body[..40])
    );
    // The gateway's shared memory is in 4 KiB pages, whatever the setting.
    let smaps = std::path::PathBuf::from(format!("/proc/{}/smaps", gw.child.id()));
    assert_eq!(hugepages::huge_kib(&smaps, "memfd:tollgate-tiles"), 0);
}

#[test]
fn a_scan_of_distinct_tiles_stays_within_the_memory_budget() {
    let up = PyUpstream::start("tiles", 5.0);
    let (_dir, gw) = start(&up, "{ttl: 600}", &["--cache-memory", "8MiB"]);
    let rss = || {
        std::fs::read_to_string(format!("/proc/{}/status", gw.child.id()))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("VmRSS:"))
                    .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            })
            .unwrap_or(0)
            * 1024
    };
    // A popular tile, requested often.
    for _ in 0..20 {
        assert_eq!(tile(&gw, "/open/bytes/16000/popular.png", 0).status, 200);
    }
    let before = rss();
    // 3000 distinct 16 KB tiles (48 MB) through an 8 MiB cache.
    let port = gw.port;
    let threads: Vec<_> = (0..4)
        .map(|t| {
            std::thread::spawn(move || {
                for i in 0..750 {
                    let p = format!("/open/bytes/16000/scan-{t}-{i}.png");
                    assert_eq!(get(port, "GET", &p, &[]).status, 200);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("scan thread");
    }
    let after = rss();
    let stored = gw.metric(r#"tollgate_cache_bytes{tier="memory"}"#);
    assert!(stored <= 8.0 * 1024.0 * 1024.0, "stored {stored} bytes");
    let grown = after.saturating_sub(before);
    assert!(
        grown < 24 * 1024 * 1024,
        "RSS grew by {} MB over an 8 MiB budget",
        grown >> 20
    );
    // The popular tile survived the scan.
    assert_eq!(
        cache_status(&tile(&gw, "/open/bytes/16000/popular.png", 0)),
        "HIT"
    );
}

/// Once the memory tier is full, a tile is stored (pushing others out) only from its second
/// miss on, on either path: a scan of tiles asked for once stores nothing and pushes nothing
/// out, a tile asked for again is stored, and requests that come together for a new tile make
/// one upstream request on the fast path (the others, waiting on its fetch, count as its second
/// miss), at most two on Pingora's general path (whose waiters are not counted: they fetch
/// once more when the first fetch was declined, and store it).
#[test]
fn a_full_memory_tier_admits_a_tile_from_its_second_miss_on() {
    let up = PyUpstream::start("tiles", 5.0);
    for fast_path in ["on", "off"] {
        let (_dir, gw) = start(
            &up,
            "{ttl: 600}",
            &["--cache-memory", "2MiB", "--fast-path", fast_path],
        );
        let declined = || gw.metric("tollgate_cache_declined_total");
        let evictions = || gw.metric(r#"tollgate_cache_evictions_total{tier="memory"}"#);
        let path = |name: &str| format!("/open/bytes/16000/{fast_path}-{name}.png");
        let status = |p: &str| cache_status(&get(gw.port, "GET", p, &[])).to_string();
        // While there is room, a first miss is stored.
        let first = path("first");
        assert_eq!(status(&first), "MISS");
        // A tile in demand (asked for five times: no newcomer's count reaches its by chance).
        for _ in 0..4 {
            assert_eq!(status(&first), "HIT");
        }
        assert_eq!(declined(), 0.0);
        // 200 tiles of 16 KB for 2 MiB: the tier fills up, the tiles past it are declined.
        for i in 0..200 {
            let r = get(gw.port, "GET", &path(&format!("fill-{i}")), &[]);
            assert_eq!((r.status, cache_status(&r)), (200, "MISS"));
        }
        let stored = gw.metric(r#"tollgate_cache_bytes{tier="memory"}"#);
        assert!(stored > 1.5 * 1024.0 * 1024.0, "{stored} bytes stored");
        assert!(declined() >= 50.0, "{} declined", declined());
        // A scan of 300 new tiles: none is stored, none pushes another out (a count shared by
        // chance with tiles seen before admits one now and then).
        let (declined_before, evictions_before) = (declined(), evictions());
        for i in 0..300 {
            let r = get(gw.port, "GET", &path(&format!("scan-{i}")), &[]);
            assert_eq!((r.status, r.body.len()), (200, 16000));
        }
        let scan_declined = declined() - declined_before;
        assert!(scan_declined >= 290.0, "{scan_declined} of 300 declined");
        let pushed_out = evictions() - evictions_before;
        assert!(pushed_out <= 10.0, "the scan pushed {pushed_out} tiles out");
        assert_eq!(status(&first), "HIT");
        let state = support::json_body(&get(gw.admin_port, "GET", "/tollgate/cache", &[]));
        assert_eq!(state["declined"].as_f64(), Some(declined()), "{state}");
        // A tile of the scan asked for again is stored. The few scan tiles admitted by a
        // shared count are hits already; the first one that was declined is taken.
        let again = (0..300)
            .rev()
            .map(|i| path(&format!("scan-{i}")))
            .take(20)
            .find(|p| status(p) == "MISS")
            .expect("a declined tile of the scan among its last 20");
        assert_eq!(status(&again), "HIT");
        // Ten requests at once for a new tile slow to render.
        let before = up.served();
        let port = gw.port;
        let new = format!("/open/slow/300/bytes/16000/{fast_path}-new.png");
        let together: Vec<_> = (0..10)
            .map(|_| {
                let new = new.clone();
                std::thread::spawn(move || {
                    let r = get(port, "GET", &new, &[]);
                    (r.status, r.body.len())
                })
            })
            .collect();
        for t in together {
            assert_eq!(t.join().expect("client"), (200, 16000));
        }
        let fetched = up.served() - before;
        match fast_path {
            "on" => assert_eq!(fetched, 1, "upstream requests for the new tile"),
            _ => assert!((1..=2).contains(&fetched), "{fetched} upstream requests"),
        }
        assert_eq!(status(&new), "HIT");
    }
}

#[test]
fn a_tile_being_fetched_when_it_is_purged_is_not_stored() {
    let up = PyUpstream::start("tiles", 5.0);
    let (_dir, gw) = start(&up, "{ttl: 600}", &[]);
    // The upstream takes a second; the purge comes while it does (the new tile may be on its
    // way already: the fetch begun before the purge may bring the old one).
    let path = "/open/slow/1000/purged.png";
    let port = gw.port;
    let fetching = std::thread::spawn(move || get(port, "GET", path, &[]));
    super::wait_in_flight(&gw);
    let r = purge(&gw, &format!(r#"{{"url": "{path}"}}"#));
    assert_eq!(r.status, 200, "{}", r.text());
    let first = fetching.join().expect("the fetch");
    assert_eq!((first.status, cache_status(&first)), (200, "MISS"));
    let next = get(gw.port, "GET", path, &[]);
    assert_eq!(
        cache_status(&next),
        "MISS",
        "the fetch begun before the purge was stored"
    );
    assert_eq!(cache_status(&get(gw.port, "GET", path, &[])), "HIT");
    assert_eq!(up.served(), 2);
}

/// RFC 9111 §4.4 against a fill under way: a tile whose fetch began before an unsafe request
/// for its URL succeeded may be the old one, and is stored neither in memory nor on disk (on
/// the fast path's fill and on Pingora's).
#[test]
fn a_tile_being_fetched_when_its_url_is_written_is_not_stored() {
    let up = PyUpstream::start("tiles", 5.0);
    for fast_path in ["on", "off"] {
        let (cache_dir, dir_arg) = fresh_cache_dir(&format!("written-{fast_path}"));
        let (dir, gw) = start(
            &up,
            "{ttl: 600}",
            &["--fast-path", fast_path, "--cache-dir", &dir_arg],
        );
        // The upstream's first answer for the path says `X-Version: 1`; the GET is slow.
        let path = format!("/open/written-{fast_path}.png?first=X-Version:1");
        let (port, slow) = (gw.port, path.clone());
        let served = up.served();
        let fetching =
            std::thread::spawn(move || get(port, "GET", &slow, &[("X-Test-Delay", "1000")]));
        // The upstream has read the GET (the PUT after it is the path's second request: on a
        // busy machine the gateway's request can be on its way still when it counts in flight).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while up.served() == served {
            assert!(std::time::Instant::now() < deadline, "the GET never came");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let raw = format!(
            "PUT {path} HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        assert_eq!(support::request(gw.port, &raw, false).status, 200);
        let old = fetching.join().expect("the fetch");
        assert_eq!(
            (old.status, cache_status(&old), old.header("x-version")),
            (200, "MISS", Some("1")),
            "fast path {fast_path}"
        );
        let next = get(gw.port, "GET", &path, &[]);
        assert_eq!(
            (cache_status(&next), next.header("x-version")),
            ("MISS", None),
            "fast path {fast_path}: the tile fetched before the PUT was stored"
        );
        assert_eq!(cache_status(&get(gw.port, "GET", &path, &[])), "HIT");
        // Nor did the old tile reach the disk: after a restart, the one stored after the PUT.
        wait_for_disk(&cache_dir, 1);
        drop(gw);
        let gw = restarted(&dir, &dir_arg);
        let after = get(gw.port, "GET", &path, &[]);
        assert_eq!(
            (cache_status(&after), after.header("x-version")),
            ("HIT", None),
            "fast path {fast_path}: after a restart"
        );
        drop(gw);
    }
}

#[test]
fn a_purge_of_a_tile_cached_by_the_clients_host_names_the_host() {
    let up = PyUpstream::start("tiles", 5.0);
    // The client's host reaches the upstream as `Host`, or as `xfwd`'s `X-Forwarded-Host`.
    for proxy in ["changeOrigin: false", "xfwd: true"] {
        purged_by_host(&up, proxy);
    }
}

fn purged_by_host(up: &PyUpstream, proxy: &str) {
    let proxy_step = format!("proxy: [{{action: {{serviceEndpoint: up, {proxy}}}}}]");
    let yml = pipeline_config(
        up,
        "open: {paths: ['/open/*']}",
        &["cache: [{action: {ttl: 600}}]", proxy_step.as_str()],
    );
    let (_dir, gw) = start_config(&yml, &[]);
    let path = "/open/hosted.png";
    let at = |host: &str| get(gw.port, "GET", path, &[("Host", host)]);
    assert_eq!(cache_status(&at("a.example:8080")), "MISS");
    assert_eq!(cache_status(&at("b.example")), "MISS", "one copy per host");
    let without = purge(&gw, &format!(r#"{{"url": "{path}"}}"#));
    assert_eq!(without.status, 422, "{}", without.text());
    assert!(without.text().contains("host"), "{}", without.text());
    // A URL that is none, and a URL with an api endpoint (which of the two?): refused.
    for body in [
        r#"{"url": "http://[bad"}"#.to_string(),
        format!(r#"{{"url": "{path}", "apiEndpoint": "open"}}"#),
    ] {
        let r = purge(&gw, &body);
        assert_eq!(r.status, 422, "{body}: {}", r.text());
    }
    assert_eq!(cache_status(&at("b.example")), "HIT", "nothing was purged");
    let with = purge(
        &gw,
        &format!(r#"{{"url": "{path}", "host": "a.example:8080"}}"#),
    );
    assert_eq!(
        (with.status, support::json_body(&with)["purged"].as_u64()),
        (200, Some(1)),
        "{}",
        with.text()
    );
    assert_eq!(cache_status(&at("a.example:8080")), "MISS");
    assert_eq!(cache_status(&at("b.example")), "HIT");
    // The CLI's `--host`, the same.
    let out = cli_purge(&gw, &[path, "--host", "b.example"]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && said.contains("1 object"), "{said}");
    assert_eq!(cache_status(&at("b.example")), "MISS");
    assert_eq!(cache_status(&at("a.example:8080")), "HIT");
}

/// A service endpoint whose only url's name does not resolve when the gateway starts (DNS
/// down at a restart): the tiles its disk tier holds still answer, on both paths; a tile it
/// does not hold is a 502, counted as a `dns` failure.
#[test]
fn stored_tiles_answer_while_the_upstreams_name_does_not_resolve() {
    let up = PyUpstream::start("tiles", 5.0);
    let (cache_dir, dir_arg) = fresh_cache_dir("nodns");
    let dir = ConfigDir::new(
        "http: {port: ${PORT}}\nadmin: {port: ${ADMIN_PORT}, host: 127.0.0.1}\napiEndpoints:\n  tiles: {paths: '/*'}\nserviceEndpoints:\n  up: {url: 'http://tiles.invalid:81'}\npolicies: [cache, proxy]\npipelines:\n  tiles:\n    apiEndpoints: [tiles]\n    policies:\n      - cache: {ttl: 600}\n      - proxy: [{action: {serviceEndpoint: up}}]\n",
    );
    // While the name resolves (here: the gateway is told where it is).
    let connect_to = format!(
        "tiles.invalid:81={}",
        up.url("").trim_start_matches("http://")
    );
    let gw = GatewayProcess::start_with(
        &dir,
        &["--cache-dir", &dir_arg, "--connect-to", &connect_to],
        &[],
    );
    let r = get(gw.port, "GET", "/bytes/20000/a.png", &[]);
    assert_eq!((r.status, cache_status(&r)), (200, "MISS"));
    wait_for_disk(&cache_dir, 1);
    drop(gw);
    for fast_path in ["on", "off"] {
        let gw = GatewayProcess::start_with(
            &dir,
            &["--cache-dir", &dir_arg, "--fast-path", fast_path],
            &[],
        );
        let r = get(gw.port, "GET", "/bytes/20000/a.png", &[]);
        assert_eq!(
            (r.status, cache_status(&r), r.body.len()),
            (200, "HIT", 20000),
            "{fast_path}"
        );
        let r = get(gw.port, "GET", "/bytes/20000/b.png", &[]);
        assert_eq!(
            (r.status, r.text().as_str()),
            (502, "Bad gateway."),
            "{fast_path}"
        );
        // Counted and logged once the answer is written.
        let deadline = Instant::now() + Duration::from_secs(5);
        let counted = || {
            gw.metric(r#"tollgate_upstream_errors_total{kind="dns"}"#) == 1.0
                && gw
                    .log_text()
                    .contains("upstream http://tiles.invalid:81, dns")
        };
        while !counted() {
            assert!(Instant::now() < deadline, "{fast_path}: {}", gw.log_text());
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A URL whose tile varies (`Vary`): its purge removes every variant, not only the object
/// its primary key names.
#[test]
fn a_purge_of_a_url_removes_every_variant_of_its_tile() {
    let up = PyUpstream::start("tiles", 5.0);
    let (_dir, gw) = start(&up, "{ttl: 600}", &[]);
    let url = "/open/varied?cc=max-age%3D600&header=Vary:X-Style";
    let open = |style: &str| {
        let r = get(gw.port, "GET", url, &[("X-Style", style)]);
        assert_eq!(r.status, 200, "{}", r.text());
        cache_status(&r).to_string()
    };
    // The first answer shows the tile varies: stored as its variant.
    assert_eq!([open("a"), open("a")], ["MISS", "HIT"]);
    assert_eq!([open("b"), open("b")], ["MISS", "HIT"]);
    let r = purge(&gw, &format!(r#"{{"url": "{url}"}}"#));
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        support::json_body(&r)["purged"].as_u64().unwrap_or(0) >= 1,
        "{}",
        r.text()
    );
    // The variant stored last first, then the first one.
    assert_eq!(open("b"), "MISS", "variant b outlived its URL's purge");
    assert_eq!(open("a"), "MISS", "variant a outlived its URL's purge");
}

/// The forwarding headers' combinations requests sent are kept beside the disk tier — written
/// every 10 s when one came, and as the gateway exits — so that the purge of a URL after a
/// restart, before any request sends them again, finds the disk copies each of them keyed.
#[test]
fn a_purge_after_a_restart_finds_the_disk_copies_of_forwarding_headers_sent_before_it() {
    let up = PyUpstream::start("tiles", 5.0);
    let (cache_dir, dir_arg) = fresh_cache_dir("forwarding");
    let args = ["--cache-dir", dir_arg.as_str(), "--cache-disk-size", "10M"];
    let (dir, gw) = start(&up, "{ttl: 600}", &args);
    let url = "/open/forwarded.png?cc=max-age%3D600";
    let via = |gw: &GatewayProcess, host: &str| {
        let r = get(gw.port, "GET", url, &[("X-Forwarded-Host", host)]);
        assert_eq!(r.status, 200, "{}", r.text());
        cache_status(&r).to_string()
    };
    let record = cache_dir.join("forwarding.json");
    let recorded = |host: &str| std::fs::read_to_string(&record).is_ok_and(|t| t.contains(host));
    let wait_recorded = |host: &str, within: Duration, why: &str| {
        let deadline = Instant::now() + within;
        while !recorded(host) {
            assert!(Instant::now() < deadline, "{why}");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    // One combination written while the gateway runs (a crash after it keeps it).
    assert_eq!(via(&gw, "a.example"), "MISS");
    let never = "the combination was never written";
    wait_recorded("a.example", Duration::from_secs(15), never);
    // Another written as the gateway exits (the timer wrote the first a moment ago: the next
    // of its writes is seconds away).
    assert_eq!(via(&gw, "b.example"), "MISS");
    wait_for_disk(&cache_dir, 2);
    assert!(!recorded("b.example"), "written before the exit");
    gw.signal("TERM");
    let exit = "the exit did not write the combinations";
    wait_recorded("b.example", Duration::from_secs(10), exit);
    drop(gw);
    let gw = restarted(&dir, &dir_arg);
    let r = purge(&gw, &format!(r#"{{"url": "{url}"}}"#));
    assert_eq!(r.status, 200, "{}", r.text());
    for host in ["a.example", "b.example"] {
        assert_eq!(
            via(&gw, host),
            "MISS",
            "{host}'s disk copy outlived the purge"
        );
    }
    drop(gw);
}
