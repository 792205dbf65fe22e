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

use bytes::Bytes;
use pingora_cache::key::HashBinary;
use pingora_cache::CacheMeta;
use tokio::sync::Semaphore;

use super::{Object, Seen};

mod evict;

const MAGIC: &[u8; 4] = b"TGC1";
/// magic, key, three lengths, checksum.
const HEAD: usize = 4 + 16 + 4 + 4 + 8 + 4;
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
/// How often a full file system may lower the budget (see [`DiskTier::write_failed`]).
const LOWER_EVERY_MS: u64 = 5_000;
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
    /// Objects written so far (what a use from memory is told by, see [`DiskTier::used`]).
    writes: AtomicU64,
    pub stored_bytes: AtomicU64,
    pub stored_objects: AtomicU64,
    pub evictions: AtomicU64,
    pub corrupt: AtomicU64,
}

/// What a file of `len` bytes takes of the budget: the blocks it fills (a file system gives
/// each file whole blocks, 4 KiB on most; a tile of 300 bytes takes one).
fn on_disk(len: u64) -> u64 {
    len.max(1).next_multiple_of(4096)
}

fn hex(key: &HashBinary) -> String {
    key.iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether `s` is two lowercase hex digits (a shard's name).
fn is_shard_name(s: &str) -> bool {
    s.len() == 2 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn unhex(name: &str) -> Option<HashBinary> {
    if name.len() != 32 {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(name.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// The bytes of an object file.
fn encode(obj: &Object) -> pingora_core::Result<Vec<u8>> {
    let (internal, header) = obj.meta.to_meta()?.serialize()?;
    let mut out = Vec::with_capacity(HEAD + internal.len() + header.len() + obj.body.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&obj.key);
    out.extend_from_slice(&(internal.len() as u32).to_le_bytes());
    out.extend_from_slice(&(header.len() as u32).to_le_bytes());
    out.extend_from_slice(&(obj.body.len() as u64).to_le_bytes());
    let mut crc = crc32fast::Hasher::new();
    crc.update(&internal);
    crc.update(&header);
    crc.update(&obj.body);
    out.extend_from_slice(&crc.finalize().to_le_bytes());
    out.extend_from_slice(&internal);
    out.extend_from_slice(&header);
    out.extend_from_slice(&obj.body);
    Ok(out)
}

/// An object from file bytes, when they are whole and for `key`.
fn decode(key: &HashBinary, bytes: Vec<u8>) -> Option<Object> {
    if bytes.len() < HEAD || &bytes[..4] != MAGIC || bytes[4..20] != key[..] {
        return None;
    }
    let u32_at = |i: usize| {
        bytes
            .get(i..i + 4)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_le_bytes)
    };
    let internal_len = u32_at(20)? as usize;
    let header_len = u32_at(24)? as usize;
    let body_len = usize::try_from(u64::from_le_bytes(bytes.get(28..36)?.try_into().ok()?)).ok()?;
    let crc = u32_at(36)?;
    if bytes.len()
        != HEAD
            .checked_add(internal_len)?
            .checked_add(header_len)?
            .checked_add(body_len)?
    {
        return None;
    }
    let rest = &bytes[HEAD..];
    if crc32fast::hash(rest) != crc {
        return None;
    }
    let (internal, rest) = rest.split_at(internal_len);
    let (header, body) = rest.split_at(header_len);
    let meta = CacheMeta::deserialize(internal, header).ok()?;
    let body = Bytes::copy_from_slice(body);
    Some(Object::new(*key, super::StoredMeta::from_meta(&meta), body))
}

/// The bytes of the regular file at `path`. Anything else there (a FIFO, whose open would wait
/// for a writer and hold one of the tier's I/O slots for ever; a directory) cannot be read.
fn read_regular(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    let meta = f.metadata()?;
    if !meta.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{} is not a regular file", path.display()),
        ));
    }
    let mut bytes = Vec::with_capacity((meta.len() as usize).min(16 << 20));
    f.read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// The directory's secret, and whether it was made now (none was there, or none whole).
fn secret_of(dir: &Path) -> std::io::Result<([u8; 16], bool)> {
    let path = dir.join(SECRET_FILE);
    let context =
        |e: std::io::Error| std::io::Error::new(e.kind(), format!("{}: {e}", path.display()));
    let damaged = match std::fs::read(&path) {
        Ok(bytes) => {
            if let Ok(secret) = <[u8; 16]>::try_from(&bytes[..]) {
                return Ok((secret, false));
            }
            log::warn!(
                "{}: not a key hash secret; a new one is made",
                path.display()
            );
            true
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => return Err(context(e)),
    };
    let secret = crate::cache::key::new_secret()?;
    // Whole or not at all: written aside under a name of this process's own (two gateways
    // starting on a new directory at once each write one), then put in place — linked where
    // there was none, so that when another process's secret got there first this one is
    // dropped and that one used; renamed over a damaged one.
    let aside = dir.join(format!(
        "{SECRET_FILE}.{}.{}",
        std::process::id(),
        fastrand::u32(..)
    ));
    let placed = (|| -> std::io::Result<bool> {
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&aside)?;
        f.write_all(&secret)?;
        f.sync_all()?;
        if damaged {
            // Out of the way, then linked as where there was none (a process starting beside
            // this one may have put its own in place meanwhile: then that one is used).
            match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        match std::fs::hard_link(&aside, &path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
            // A file system without hard links: renamed (no other process's to keep).
            Err(e)
                if e.kind() == std::io::ErrorKind::Unsupported
                    || matches!(e.raw_os_error(), Some(libc::EPERM | libc::EOPNOTSUPP)) =>
            {
                std::fs::rename(&aside, &path).map(|()| true)
            }
            Err(e) => Err(e),
        }
    })();
    let _ = std::fs::remove_file(&aside);
    if placed.map_err(context)? {
        return Ok((secret, true));
    }
    let bytes = std::fs::read(&path).map_err(context)?;
    let secret = <[u8; 16]>::try_from(&bytes[..]).map_err(|_| {
        context(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "another process's key hash secret is not whole",
        ))
    })?;
    Ok((secret, false))
}

impl DiskTier {
    /// Opens (creating) the directory and indexes the objects already in it.
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
        // Leftovers of writes a crash interrupted.
        for e in std::fs::read_dir(dir.join("tmp"))?.flatten() {
            let _ = std::fs::remove_file(e.path());
        }
        let (secret, made_now) = secret_of(dir)?;
        let tier = DiskTier {
            secret,
            dir: dir.to_path_buf(),
            budget: AtomicU64::new(budget),
            index: Mutex::new(HashMap::new()),
            purges: Default::default(),
            clock: AtomicU64::new(0),
            io: Semaphore::new(MAX_IO),
            queued: AtomicU64::new(0),
            skipped: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            lowered_at: AtomicU64::new(0),
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
            for (key, _, _) in found.drain(..) {
                let _ = std::fs::remove_file(tier.path(&key));
            }
            log::info!(
                "tile cache directory {}: its tiles were stored under another key hash; removed",
                dir.display()
            );
        }
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
        tier.evict_if_needed();
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
        let read = tokio::task::spawn_blocking(move || read_regular(&path))
            .await
            .ok()?;
        match read {
            Ok(bytes) => match decode(&key, bytes) {
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
                log::warn!("tile cache: cannot read a tile's file: {e}; read as a miss");
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
            Ok(Some(())) => self.evict_if_needed(),
            Ok(None) => {}
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                self.write_failed(&e);
            }
        }
    }

    /// A write failed: counted; when the file system is full, the budget comes down to below
    /// what the tier holds (the tiles least recently used go), so that writes go on within
    /// what the disk has room for rather than all fail from now on.
    fn write_failed(&self, e: &std::io::Error) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        let full = matches!(e.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT));
        if !full {
            log::warn!("tile cache: cannot write to {}: {e}", self.dir.display());
            return;
        }
        let stored = self.stored_bytes.load(Ordering::Relaxed);
        // Once per a few seconds: the writes under way as the disk filled fail together, and
        // the space eviction frees comes as its files go.
        let now = crate::clock::coarse_millis().max(1);
        let last = self.lowered_at.load(Ordering::Relaxed);
        let recent = last > 0 && now.saturating_sub(last) < LOWER_EVERY_MS;
        if stored == 0
            || recent
            || self
                .lowered_at
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            if !recent {
                log::warn!("tile cache: cannot write to {}: {e}", self.dir.display());
            }
            return;
        }
        let lowered = (stored as f64 * LOW_WATER) as u64;
        let was = self.budget.fetch_min(lowered, Ordering::Relaxed);
        if lowered < was {
            log::warn!(
                "tile cache directory {}: the file system is full ({e}) with {} MiB of tiles \
                 stored; the tier keeps {} MiB from now on (was {} MiB)",
                self.dir.display(),
                stored >> 20,
                lowered >> 20,
                was >> 20
            );
            self.evict_if_needed();
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
            move || std::fs::remove_file(path)
        })
        .await
        .map_err(std::io::Error::other)?;
        match removed {
            // (On a read-only file system `unlink` fails so whether the file is there or not.)
            Err(e)
                if e.kind() != std::io::ErrorKind::NotFound && path.symlink_metadata().is_ok() =>
            {
                Err(std::io::Error::new(
                    e.kind(),
                    format!("cannot remove {}: {e}", path.display()),
                ))
            }
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
mod tests {
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
            let dir = std::env::temp_dir()
                .join(format!("tollgate-disk-race-{round}-{}", std::process::id()));
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
}
