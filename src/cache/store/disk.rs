//! The disk tier: one file per object under a directory, within a byte budget, surviving a
//! restart. A file is written whole to a temporary name and renamed into place, and carries
//! its key, lengths and a checksum of everything after its header: a corrupt, truncated or
//! foreign file reads as a miss (and is removed), never as a bad tile. The least recently used
//! objects go first when the budget is exceeded. File I/O runs on the blocking pool, a bounded
//! number of operations at a time.
//!
//! Files are named by their key's hash, which is made with a secret kept beside them
//! ([`SECRET_FILE`]): a directory whose secret is new holds no file a key can name, and is
//! emptied when opened.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use pingora_cache::key::HashBinary;
use tokio::sync::Semaphore;

use super::{Object, Seen};

mod evict;
mod file;
mod room;

use file::{
    decode, encode, hex, is_shard_name, on_disk, place_secret, read_regular, secret_of, unhex,
};

/// Disk operations in flight at most.
const MAX_IO: usize = 32;
/// The most bytes waiting for the disk (bodies, heads and [`WAITING_WRITE`] a write): past
/// them a fill is not written (it is in
/// memory; a disk slower than the misses would otherwise hold every body waiting, evicted from
/// memory or not, and grow the gateway past its budget).
const QUEUE_MAX: u64 = 64 << 20;
/// What a waiting write holds besides its object's bytes, counted against [`QUEUE_MAX`]: its
/// task, the object's entry and bookkeeping (about 2 KiB measured; with 200-byte tiles a slow
/// disk let 220k writes wait, 17× the memory budget, when only the bytes counted).
const WAITING_WRITE: u64 = 2048;
/// When over budget, evict down to this share of it.
const LOW_WATER: f64 = 0.9;
/// The secret the keys' hashes are made with (see `cache::key::digest`), readable by the
/// gateway's user only.
pub const SECRET_FILE: &str = "hash.key";

struct Entry {
    size: u64,
    last_used: u64,
}

pub struct DiskTier {
    /// The secret this directory's file names were made with.
    pub secret: [u8; 16],
    dir: PathBuf,
    /// The bytes the tier keeps at most: as configured, lower once the file system was found
    /// full below it.
    budget: AtomicU64,
    /// The budget the tier opened with: no file it writes is larger.
    largest: u64,
    index: Mutex<HashMap<HashBinary, Entry>>,
    /// The whole store's purges: a write begun before or during one puts nothing back.
    purges: std::sync::Arc<super::Purges>,
    clock: AtomicU64,
    io: Semaphore,
    /// Bytes of bodies waiting to be written (or being written).
    queued: AtomicU64,
    /// Writes not made because [`QUEUE_MAX`] bytes were waiting already.
    pub skipped: AtomicU64,
    /// Writes that failed (the file system full, an I/O error).
    pub failed: AtomicU64,
    /// When the budget was last lowered for a full file system (coarse ms; 0: never).
    lowered_at: AtomicU64,
    /// When a lowered budget was last checked against the file system's room (coarse ms).
    room_checked_at: AtomicU64,
    /// Objects written so far (what a use from memory is told by, see [`DiskTier::used`]).
    writes: AtomicU64,
    pub stored_bytes: AtomicU64,
    pub stored_objects: AtomicU64,
    pub evictions: AtomicU64,
    pub corrupt: AtomicU64,
}

/// Whether a file in the directory's `tmp` is one the tier writes there: an object being
/// written (`<its key's hash in hex>.<a number>`, see [`DiskTier::write`]), the probe of
/// [`DiskTier::usable`] (`usable.<a process id>`), or the key hash secret as releases of
/// 2026-12-02 to 12-05 wrote it aside (`hash.key`).
fn own_temporary(name: &str) -> bool {
    if name == SECRET_FILE {
        return true;
    }
    let Some((stem, n)) = name.split_once('.') else {
        return false;
    };
    let numbered = !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit());
    let key = stem.len() == 32 && stem.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    numbered && (key || stem == "usable")
}

impl DiskTier {
    /// Opens (creating) the directory and indexes the objects already in it.
    /// Whether a disk tier can be opened in `dir`: it is (or can be made) a directory this
    /// process writes files in. Asked by an upgrading process before it takes the listening
    /// sockets (an unusable directory found after them left nothing serving).
    pub fn usable(dir: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(dir.join("tmp"))?;
        let probe = dir
            .join("tmp")
            .join(format!("usable.{}", std::process::id()));
        std::fs::write(&probe, b"")?;
        std::fs::remove_file(&probe)
    }

    pub fn open(dir: &Path, budget: u64) -> std::io::Result<DiskTier> {
        std::fs::create_dir_all(dir.join("tmp"))?;
        // Secrets written aside by a start that ended before it put its own in place (one of
        // a start under way now is younger than this).
        for e in std::fs::read_dir(dir)?.flatten() {
            let stray = e
                .file_name()
                .to_string_lossy()
                .starts_with(&format!("{SECRET_FILE}."));
            let old = e.metadata().and_then(|m| m.modified()).is_ok_and(|t| {
                t.elapsed()
                    .is_ok_and(|a| a > std::time::Duration::from_secs(60))
            });
            if stray && old {
                let _ = std::fs::remove_file(e.path());
            }
        }
        // Leftovers of writes a crash interrupted: the tier's own files only (an operator's
        // in a `tmp` of a directory shared with others were removed too).
        for e in std::fs::read_dir(dir.join("tmp"))?.flatten() {
            if e.file_name().to_str().is_some_and(own_temporary) {
                let _ = std::fs::remove_file(e.path());
            }
        }
        let (secret, made_now) = secret_of(dir)?;
        let tier = DiskTier {
            secret,
            dir: dir.to_path_buf(),
            budget: AtomicU64::new(budget),
            largest: budget,
            index: Mutex::new(HashMap::new()),
            purges: Default::default(),
            clock: AtomicU64::new(0),
            io: Semaphore::new(MAX_IO),
            queued: AtomicU64::new(0),
            skipped: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            lowered_at: AtomicU64::new(0),
            room_checked_at: AtomicU64::new(0),
            writes: AtomicU64::new(0),
            stored_bytes: AtomicU64::new(0),
            stored_objects: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
            corrupt: AtomicU64::new(0),
        };
        let mut found = Vec::new();
        for shard in std::fs::read_dir(dir)?.flatten() {
            // Only the shards (two hex digits) are the tier's: a filesystem's own `lost+found`
            // (unreadable to the gateway's user) or anything else there is left alone.
            let is_shard = shard.file_name().to_str().is_some_and(is_shard_name);
            if !is_shard || !shard.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let files = match std::fs::read_dir(shard.path()) {
                Ok(files) => files,
                Err(e) => {
                    log::warn!(
                        "tile cache directory: cannot read {}: {e}; its tiles are left out",
                        shard.path().display()
                    );
                    continue;
                }
            };
            for f in files.flatten() {
                let name = f.file_name();
                let Some(key) = name
                    .to_str()
                    .and_then(|n| n.strip_suffix(".obj"))
                    .and_then(unhex)
                else {
                    continue;
                };
                // Only a key's own file (its name as written, in its shard): another spelling
                // of the name, or a copy in another shard, would count one key twice.
                if f.path() != tier.path(&key) {
                    continue;
                }
                // A directory or a FIFO under a tile's name is no tile.
                let Ok(md) = f.metadata() else { continue };
                if !md.is_file() {
                    continue;
                }
                let used = md
                    .modified()
                    .ok()
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map_or(0, |d| d.as_secs());
                found.push((key, on_disk(md.len()), used));
            }
        }
        if made_now && !found.is_empty() {
            // Named by another secret's hashes (or by a release before the secret): no key
            // names them now.
            let gone = found.len();
            for (key, _, _) in found.drain(..) {
                let _ = std::fs::remove_file(tier.path(&key));
            }
            log::info!(
                "tile cache directory {}: {gone} tiles named by a key hash secret no longer there (missing, damaged, or removed for a damaged purge record); removed",
                dir.display()
            );
        }
        let found_count = found.len();
        // Oldest first, so the clock orders them as they were used.
        found.sort_by_key(|(_, _, used)| *used);
        {
            let mut index = tier.index.lock().unwrap_or_else(|p| p.into_inner());
            for (key, size, _) in found {
                let t = tier.clock.fetch_add(1, Ordering::Relaxed);
                let replaced = index.insert(key, Entry { size, last_used: t });
                tier.count_put(size, replaced);
            }
        }
        let evicted = tier.evictions.load(Ordering::Relaxed);
        tier.evict_if_needed();
        let evicted = tier.evictions.load(Ordering::Relaxed) - evicted;
        if evicted > 0 {
            log::info!(
                "tile cache directory {}: {found_count} tiles found, the {evicted} least recently used removed to fit its budget ({} MiB)",
                dir.display(),
                budget >> 20
            );
        }
        Ok(tier)
    }

    pub fn budget(&self) -> u64 {
        self.budget.load(Ordering::Relaxed)
    }

    fn path(&self, key: &HashBinary) -> PathBuf {
        let h = hex(key);
        self.dir.join(&h[..2]).join(format!("{h}.obj"))
    }

    /// Whether the index knows the key (no I/O).
    pub fn contains(&self, key: &HashBinary) -> bool {
        self.index
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(key)
    }

    /// Reads an object; a damaged file is removed and reads as a miss.
    pub async fn get(&'static self, key: HashBinary) -> Option<Object> {
        if !self.contains(&key) {
            return None;
        }
        let _permit = self.io.acquire().await.ok()?;
        let path = self.path(&key);
        // None is written larger than the budget the tier opened with.
        let largest = self.largest;
        let read = tokio::task::spawn_blocking(move || read_regular(&path, largest))
            .await
            .ok()?;
        match read.map(|bytes| bytes.and_then(|b| decode(&key, b))) {
            Ok(read) => match read {
                Some(obj) => {
                    self.touch(&key);
                    Some(obj)
                }
                None => {
                    self.corrupt.fetch_add(1, Ordering::Relaxed);
                    log::warn!(
                        "tile cache: {} is damaged; removed (read as a miss)",
                        self.path(&key).display()
                    );
                    let _ = self.remove(&key).await;
                    None
                }
            },
            // Gone (removed by hand): out of the index, unless a write put it back since.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let path = self.path(&key);
                let back = tokio::task::spawn_blocking(move || path.exists()).await;
                if !back.unwrap_or(true) {
                    self.unindex(&key);
                }
                None
            }
            // Unreadable for now (out of descriptors, permissions, an I/O error): a miss, the
            // file kept and counted.
            Err(e) => {
                log::warn!(
                    "tile cache: cannot read {}: {e}; read as a miss",
                    self.path(&key).display()
                );
                None
            }
        }
    }

    /// A use of `obj` from memory: the tier's least recently used files go first, and a tile
    /// hit in memory is never read from disk. Told once the tier has written a quarter of its
    /// objects since it was last told (at most four uses a write, whatever the hits), so a
    /// hit costs three atomic reads: a hot tile never drifts to the end of the order. The file's time is set too (in
    /// the background): the order at the next start is the files' times.
    pub fn used(&self, obj: &Object) {
        let now = self.writes.load(Ordering::Relaxed);
        let stamp = obj.disk_stamp.load(Ordering::Relaxed);
        let every = (self.stored_objects.load(Ordering::Relaxed) / 4).max(1);
        if now.saturating_sub(stamp) >= every
            && obj
                .disk_stamp
                .compare_exchange(stamp, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
            && self.touch(&obj.key)
        {
            let path = self.path(&obj.key);
            drop(tokio::task::spawn_blocking(move || {
                use std::os::unix::fs::OpenOptionsExt;
                // Not waiting for a writer, should a FIFO be there.
                let _ = std::fs::OpenOptions::new()
                    .read(true)
                    .custom_flags(libc::O_NONBLOCK)
                    .open(&path)
                    .and_then(|f| f.set_modified(std::time::SystemTime::now()));
            }));
        }
    }

    /// Marks `key` used now; whether the tier holds it.
    fn touch(&self, key: &HashBinary) -> bool {
        let t = self.clock.fetch_add(1, Ordering::Relaxed);
        let mut index = self.index.lock().unwrap_or_else(|p| p.into_inner());
        index.get_mut(key).map(|e| e.last_used = t).is_some()
    }

    fn unindex(&self, key: &HashBinary) -> bool {
        let mut index = self.index.lock().unwrap_or_else(|p| p.into_inner());
        // Counted under the lock, as a write counts: the gauges never go below zero.
        let removed = index.remove(key);
        if let Some(e) = &removed {
            self.stored_bytes.fetch_sub(e.size, Ordering::Relaxed);
            self.stored_objects.fetch_sub(1, Ordering::Relaxed);
        }
        removed.is_some()
    }

    /// Whether the directory lost its secret while running (removed by hand, and the files
    /// with it): then it is made again — its `tmp` and the secret the keys are hashed with —
    /// and the files gone are forgotten. Else every tile written from then on was stored
    /// under no secret, and the next start removed them all as stored under another; the
    /// gauges counted the files gone. Looked at each second.
    pub fn made_again(&self) -> bool {
        // A process that handed its sockets to an upgrading one leaves the directory to it.
        if crate::listener::handed_over() {
            return false;
        }
        match std::fs::symlink_metadata(self.dir.join(SECRET_FILE)) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            _ => return false,
        }
        let made = std::fs::create_dir_all(self.dir.join("tmp"))
            .and_then(|()| place_secret(&self.dir, &self.secret, false));
        match made {
            Ok(true) => {}
            // Another process put its own there first (a gateway started on the directory).
            Ok(false) => {
                let theirs = std::fs::read(self.dir.join(SECRET_FILE)).unwrap_or_default();
                if theirs != self.secret {
                    log::warn!(
                        "tile cache directory {}: removed while running, and another process \
                         made it again with a key hash secret of its own: the tiles this one \
                         writes are removed at its next start",
                        self.dir.display()
                    );
                }
            }
            Err(e) => {
                log::warn!(
                    "tile cache directory {}: its key hash secret is gone and cannot be written \
                     again: {e}",
                    self.dir.display()
                );
                return false;
            }
        }
        let known: Vec<HashBinary> = {
            let index = self.index.lock().unwrap_or_else(|p| p.into_inner());
            index.keys().copied().collect()
        };
        // Each looked at while no write can put it in place (a write's rename and index entry
        // come under the same order).
        let gone = known
            .iter()
            .filter(|key| {
                let _order = self.purges.order();
                !self.path(key).exists() && self.unindex(key)
            })
            .count();
        log::warn!(
            "tile cache directory {}: removed while running (its key hash secret was gone); \
             made again, {gone} tile(s) lost with it",
            self.dir.display()
        );
        true
    }

    /// The purges the store shares with this tier (see [`super::TileStore::epoch`]).
    pub fn purges(&self) -> std::sync::Arc<super::Purges> {
        self.purges.clone()
    }

    /// Writes an object in the background: the response does not wait for the disk. `seen`:
    /// when its fetch began; a purge since (of any tile: purges are rare), or an invalidation
    /// of its tile, leaves it unwritten.
    /// At most [`QUEUE_MAX`] bytes wait: past them the object is not written (counted).
    pub fn put(&'static self, obj: std::sync::Arc<Object>, seen: Seen) {
        // The process is leaving (an upgrade took its sockets): the directory is the new
        // one's, which indexed it already and would not know of a file written now.
        if crate::listener::handed_over() {
            return;
        }
        // An object past what the budget keeps after an eviction could not stay: writing it
        // would push out every other object and then itself.
        let file = on_disk(obj.body.len() as u64 + obj.meta.head.wire_size() as u64);
        if file as f64 > self.budget() as f64 * LOW_WATER {
            log::debug!(
                "tile cache directory {}: an object of {file} bytes is past the disk budget: not written",
                self.dir.display()
            );
            return;
        }
        let size = obj.body.len() as u64 + obj.meta.head.wire_size() as u64 + WAITING_WRITE;
        let before = self.queued.fetch_add(size, Ordering::Relaxed);
        if before > 0 && before + size > QUEUE_MAX {
            self.queued.fetch_sub(size, Ordering::Relaxed);
            if self.skipped.fetch_add(1, Ordering::Relaxed) == 0 {
                log::warn!(
                    "tile cache directory {}: the disk is slower than the misses: tiles are \
                     left out of it while {} MiB wait (counted in the cache's state)",
                    self.dir.display(),
                    QUEUE_MAX >> 20
                );
            }
            return;
        }
        tokio::spawn(async move {
            if let Ok(_permit) = self.io.acquire().await {
                let _ = tokio::task::spawn_blocking(move || self.write(&obj, seen)).await;
            }
            self.queued.fetch_sub(size, Ordering::Relaxed);
        });
    }

    /// Writes an object file whole, then renames it into place (blocking), unless a purge, or
    /// an invalidation of its tile, came after `seen`.
    fn write(&self, obj: &Object, seen: Seen) {
        let key = obj.key;
        let path = self.path(&key);
        let tmp = self
            .dir
            .join("tmp")
            .join(format!("{}.{}", hex(&key), fastrand::u64(..)));
        let written = (|| -> std::io::Result<Option<()>> {
            let bytes = encode(obj).map_err(|e| std::io::Error::other(e.to_string()))?;
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)?;
            }
            let mut f = match std::fs::File::create(&tmp) {
                // The directory's `tmp` removed by hand while running: made again.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    std::fs::create_dir_all(self.dir.join("tmp"))?;
                    std::fs::File::create(&tmp)?
                }
                f => f?,
            };
            f.write_all(&bytes)?;
            drop(f);
            // Put in place and indexed while a purge or an invalidation cannot begin (the
            // purges' own lock, not the index's, which requests take): it comes wholly before
            // (and removes the file) or wholly after (and this write is not made).
            let _order = self.purges.order();
            if self.purges.since(seen, &key) || crate::listener::handed_over() {
                let _ = std::fs::remove_file(&tmp);
                return Ok(None);
            }
            std::fs::rename(&tmp, &path).inspect_err(|_| {
                let _ = std::fs::remove_file(&tmp);
            })?;
            let size = on_disk(bytes.len() as u64);
            let t = self.clock.fetch_add(1, Ordering::Relaxed);
            self.writes.fetch_add(1, Ordering::Relaxed);
            // One step, counted with it, so a write of the same tile at once cannot count it
            // twice, nor a removal of it count before it.
            let mut index = self.index.lock().unwrap_or_else(|p| p.into_inner());
            let replaced = index.insert(key, Entry { size, last_used: t });
            self.count_put(size, replaced);
            Ok(Some(()))
        })();
        match written {
            Ok(Some(())) => {
                self.raise_if_room();
                self.evict_if_needed()
            }
            Ok(None) => {}
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                self.write_failed(&e);
            }
        }
    }

    /// Counts an object written (`replaced`: the index's entry it took the place of).
    fn count_put(&self, size: u64, replaced: Option<Entry>) {
        self.stored_bytes.fetch_add(size, Ordering::Relaxed);
        match replaced {
            Some(old) => self.stored_bytes.fetch_sub(old.size, Ordering::Relaxed),
            None => self.stored_objects.fetch_add(1, Ordering::Relaxed),
        };
    }

    /// Removes an object an unsafe request invalidated (while the store's invalidation of
    /// it is under way: a write of it waiting for the disk, begun before, puts nothing back).
    pub async fn invalidate(&'static self, key: &HashBinary) -> std::io::Result<bool> {
        // Removed even when not indexed: a file another process put in the directory after
        // this one read it (the process before an upgrade) is indexed at the next start.
        self.remove(key).await
    }

    /// Removes a purged object (while the store's purge is under way); whether the tier held
    /// it. A file that cannot be removed (a read-only or unwritable directory) is an error: it
    /// is no longer served by this process, but the next start would index it again.
    pub async fn remove(&'static self, key: &HashBinary) -> std::io::Result<bool> {
        let known = self.unindex(key);
        let path = self.path(key);
        let removed = tokio::task::spawn_blocking({
            let path = path.clone();
            move || {
                std::fs::remove_file(&path)?;
                // The removal survives a power loss once its directory is synced: before, the
                // file could come back, and be served at the next start, after the purge had
                // answered. (Only where a file went: most invalidations find none.)
                match path.parent() {
                    Some(dir) => std::fs::File::open(dir)?.sync_all(),
                    None => Ok(()),
                }
            }
        })
        .await
        .map_err(std::io::Error::other)?;
        // (On a read-only file system `unlink` fails so whether the file is there or not; in
        // a directory the process may not search, `stat` fails too, and the file is there.)
        let gone = |e: &std::io::Error| e.kind() == std::io::ErrorKind::NotFound;
        match removed {
            Err(e) if !gone(&e) && !path.symlink_metadata().is_err_and(|m| gone(&m)) => Err(
                std::io::Error::new(e.kind(), format!("cannot remove {}: {e}", path.display())),
            ),
            _ => Ok(known),
        }
    }

    /// Removes the least recently used objects while over budget, down to the low water
    /// (blocking). The index's lock is taken once per reading of it ([`evict::cutoff`]), not
    /// for the whole choice.
    fn evict_if_needed(&self) {
        let stored = self.stored_bytes.load(Ordering::Relaxed);
        let budget = self.budget();
        if stored <= budget {
            return;
        }
        let target = (budget as f64 * LOW_WATER) as u64;
        let read = |f: &mut dyn FnMut(u64, u64)| {
            let index = self.index.lock().unwrap_or_else(|p| p.into_inner());
            for e in index.values() {
                f(e.last_used, e.size);
            }
        };
        let cutoff = evict::cutoff(read, stored - target);
        let victims: Vec<HashBinary> = {
            let index = self.index.lock().unwrap_or_else(|p| p.into_inner());
            index
                .iter()
                .filter(|(_, e)| e.last_used < cutoff)
                .map(|(k, _)| *k)
                .collect()
        };
        for key in victims {
            if self.unindex(&key) {
                self.evictions.fetch_add(1, Ordering::Relaxed);
                let _ = std::fs::remove_file(self.path(&key));
            }
        }
    }
}

#[cfg(test)]
mod tests;
