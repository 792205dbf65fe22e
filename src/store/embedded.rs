//! The embedded store: Redis-like hashes and sets in memory, kept on disk in a data directory
//! as a snapshot plus a journal of batches. Every batch is one journal line, written and
//! synced before it is applied, so a crash loses nothing acknowledged and never leaves half a
//! batch: on start the snapshot is loaded and the journal replayed, and a torn last line (a
//! crash mid-write) is dropped. The journal is folded into a new snapshot (written aside, synced,
//! then renamed over the old) when it grows. One process at a time owns a data directory.
//!
//! The disk's work (a batch's write and sync, a compaction) runs on a blocking thread, never on
//! the runtime's, and holds only the writers' lock: reads, rate-limit windows and locks go on
//! beside a sync. A compaction holds the data for reading while it serialises it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, BufWriter, Write as _};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use super::packed_hash::PackedHash;
use super::{KeyType, Store, StoreError, StoreResult, WindowCount, Write};

mod writes;
use writes::apply_batch;

const SNAPSHOT: &str = "store.snapshot.json";
const JOURNAL: &str = "store.journal";
const LOCK: &str = "store.lock";

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "lowercase")]
enum Value {
    #[default]
    Empty,
    Hash(PackedHash),
    Set(BTreeSet<String>),
}

/// The journal's side: held by one writer at a time, across its batch's write, sync and apply.
struct Journal {
    file: Option<File>,
    /// Where the journal's last whole batch ends ...
    bytes: u64,
    /// ... and whether a write that failed may have left part of one past it.
    torn: bool,
    snapshot_bytes: u64,
}

/// Counters and locks are not persisted (EG's rate-limit windows are short-lived).
type Locks = HashMap<String, (String, Instant)>;

struct Inner {
    dir: Option<PathBuf>,
    data: RwLock<BTreeMap<String, Value>>,
    journal: Mutex<Journal>,
    windows: crate::counters::Counters,
    locks: Mutex<Locks>,
    channels: Mutex<HashMap<String, broadcast::Sender<String>>>,
    /// Held while this process owns the directory; released when it hands the store over.
    lock_file: Mutex<Option<File>>,
    handed_over: std::sync::atomic::AtomicBool,
}

pub struct EmbeddedStore(Arc<Inner>);

/// A lock, whether or not a thread panicked holding it (every change is whole before it is
/// made visible).
fn held<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl EmbeddedStore {
    /// A store that lives only in memory (tests, `check`).
    pub fn in_memory() -> EmbeddedStore {
        EmbeddedStore::new(None, BTreeMap::new(), None, 0, 0, None)
    }

    fn new(
        dir: Option<PathBuf>,
        data: BTreeMap<String, Value>,
        journal: Option<File>,
        journal_bytes: u64,
        snapshot_bytes: u64,
        lock_file: Option<File>,
    ) -> EmbeddedStore {
        EmbeddedStore(Arc::new(Inner {
            dir,
            data: RwLock::new(data),
            journal: Mutex::new(Journal {
                file: journal,
                bytes: journal_bytes,
                torn: false,
                snapshot_bytes,
            }),
            windows: crate::counters::Counters::default(),
            locks: Mutex::new(HashMap::new()),
            channels: Mutex::new(HashMap::new()),
            lock_file: Mutex::new(lock_file),
            handed_over: std::sync::atomic::AtomicBool::new(false),
        }))
    }

    /// Opens the store, waiting up to `wait` for another process to let go of it (the process
    /// being upgraded hands it over once the new one has taken its sockets).
    pub fn open_waiting(dir: &Path, wait: std::time::Duration) -> StoreResult<EmbeddedStore> {
        let start = std::time::Instant::now();
        loop {
            match EmbeddedStore::open(dir) {
                Err(StoreError::Unavailable(_)) if start.elapsed() < wait => {
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                other => return other,
            }
        }
    }

    /// Opens (or creates) the store in `dir`, recovering from a crash if there was one; its
    /// directory and files readable by the gateway's user only.
    pub fn open(dir: &Path) -> StoreResult<EmbeddedStore> {
        let io = |what: &str, e: std::io::Error| {
            StoreError::Io(format!("{what} in {}: {e}", dir.display()))
        };
        std::fs::create_dir_all(dir).map_err(|e| io("cannot create the data directory", e))?;
        // Its files hold credentials' secrets: the gateway's user's alone, whatever the umask
        // (those of a store made before are tightened).
        private(dir, 0o700).map_err(|e| io("cannot restrict the data directory", e))?;
        let lock_file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(dir.join(LOCK))
            .map_err(|e| io("cannot open the lock file", e))?;
        lock_file.try_lock().map_err(|_| {
            StoreError::Unavailable(format!(
                "{} is in use by another tollgate process (share consumers between gateways with Redis: db.redis.emulate: false)",
                dir.display()
            ))
        })?;
        let mut data = BTreeMap::new();
        let snapshot_path = dir.join(SNAPSHOT);
        let mut snapshot_bytes = 0;
        if snapshot_path.exists() {
            let file = File::open(&snapshot_path).map_err(|e| io("cannot read the snapshot", e))?;
            snapshot_bytes = file
                .metadata()
                .map_err(|e| io("cannot read the snapshot", e))?
                .len();
            // Read through a buffer: the whole text of a large snapshot beside the parsed data
            // would double the memory at start-up.
            data = serde_json::from_reader(BufReader::with_capacity(1 << 20, file))
                .map_err(|e| StoreError::Corrupt(format!("{}: {e}", snapshot_path.display())))?;
        }
        let journal_path = dir.join(JOURNAL);
        let mut good_bytes = 0u64;
        if journal_path.exists() {
            let file = File::open(&journal_path).map_err(|e| io("cannot read the journal", e))?;
            let total = file
                .metadata()
                .map_err(|e| io("cannot read the journal", e))?
                .len();
            let mut lines = BufReader::new(file).split(b'\n').peekable();
            while let Some(line) = lines.next() {
                let line = line.map_err(|e| io("cannot read the journal", e))?;
                let is_last = lines.peek().is_none();
                match serde_json::from_slice::<Vec<Write>>(&line) {
                    Ok(batch) => {
                        apply_batch(&mut data, &batch);
                        good_bytes += line.len() as u64 + 1;
                    }
                    // A whole last line (its line end written) that does not read is no
                    // interrupted write but damage: dropped, it took an acknowledged change
                    // with it (a revocation undone) and the evidence too.
                    Err(e)
                        if is_last
                            && good_bytes + (line.len() as u64) < total
                            && !line.iter().all(|b| *b == 0 || b.is_ascii_whitespace()) =>
                    {
                        return Err(StoreError::Corrupt(format!(
                            "{}: the last entry is damaged, not cut short by an interrupted write: {e}",
                            journal_path.display()
                        )))
                    }
                    Err(_) if is_last => {
                        log::warn!(
                            "{}: dropping a torn last journal entry (interrupted write)",
                            journal_path.display()
                        );
                    }
                    Err(e) => {
                        return Err(StoreError::Corrupt(format!(
                            "{}: a damaged entry before the last one: {e}",
                            journal_path.display()
                        )))
                    }
                }
            }
        }
        let mut journal = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&journal_path)
            .map_err(|e| io("cannot open the journal", e))?;
        for file in [&journal_path, &snapshot_path] {
            if file.exists() {
                private(file, 0o600).map_err(|e| io("cannot restrict the store's files", e))?;
            }
        }
        // Cut a torn tail so the next entry starts on a line of its own. A whole last entry
        // whose line end was not written (counted above with it) gets it: cut to its length,
        // the file grew by a NUL, and the next entry ran on in its line — lost at the next
        // start, or refusing it when more came after.
        let on_disk = journal
            .metadata()
            .map_err(|e| io("cannot read the journal", e))?
            .len();
        let repaired = match good_bytes > on_disk {
            true => journal
                .set_len(on_disk)
                .and_then(|()| journal.write_all(b"\n"))
                .and_then(|()| journal.sync_data()),
            false => journal.set_len(good_bytes),
        };
        repaired.map_err(|e| io("cannot repair the journal", e))?;
        Ok(EmbeddedStore::new(
            Some(dir.to_path_buf()),
            data,
            Some(journal),
            good_bytes,
            snapshot_bytes,
            Some(lock_file),
        ))
    }

    fn data(&self) -> RwLockReadGuard<'_, BTreeMap<String, Value>> {
        self.0.data.read().unwrap_or_else(|p| p.into_inner())
    }
}

impl Inner {
    /// Folds the journal into a new snapshot (`st`: the writers' lock, held).
    fn compact(&self, st: &mut Journal) -> StoreResult<()> {
        let Some(dir) = &self.dir else { return Ok(()) };
        let io = |what: &str, e: std::io::Error| StoreError::Io(format!("{what}: {e}"));
        let tmp = dir.join(format!("{SNAPSHOT}.tmp"));
        // Written through a buffer: the whole text beside the data would double the memory.
        let written = (|| {
            let f = OpenOptions::new()
                .create(true)
                .write(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)
                .map_err(|e| io("cannot write the snapshot", e))?;
            let mut out = BufWriter::with_capacity(1 << 20, f);
            {
                let data = self.data.read().unwrap_or_else(|p| p.into_inner());
                serde_json::to_writer(&mut out, &*data)
                    .map_err(|e| StoreError::Io(format!("cannot write the snapshot: {e}")))?;
            }
            let f = out
                .into_inner()
                .map_err(|e| io("cannot write the snapshot", e.into_error()))?;
            f.sync_all()
                .map_err(|e| io("cannot sync the snapshot", e))?;
            let len = f
                .metadata()
                .map_err(|e| io("cannot write the snapshot", e))?
                .len();
            std::fs::rename(&tmp, dir.join(SNAPSHOT))
                .map_err(|e| io("cannot replace the snapshot", e))?;
            Ok(len)
        })();
        let snapshot_bytes = match written {
            Ok(len) => len,
            Err(e) => {
                // A partial snapshot (a full disk) would take the room the journal needs.
                let _ = std::fs::remove_file(&tmp);
                return Err(e);
            }
        };
        // The journal is emptied only once the new snapshot's name is durable: else a power
        // cut could leave the old snapshot and an empty journal.
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io("cannot sync the data directory", e))?;
        st.snapshot_bytes = snapshot_bytes;
        if let Some(j) = &st.file {
            j.set_len(0)
                .map_err(|e| io("cannot truncate the journal", e))?;
            // Empty now, whether or not the sync below goes through.
            st.bytes = 0;
            st.torn = false;
            j.sync_all().map_err(|e| io("cannot sync the journal", e))?;
        }
        st.bytes = 0;
        st.torn = false;
        Ok(())
    }

    /// A batch written to the journal and synced, then applied; compacts when the journal has
    /// grown. Blocking: run on a thread of its own.
    fn apply(&self, batch: &[Write]) -> StoreResult<()> {
        let mut st = held(&self.journal);
        // Handed over since the caller looked: the journal is the new process's now.
        if self.dir.is_some() && st.file.is_none() {
            return Err(StoreError::Unavailable(
                "the store was handed over to the upgraded process".into(),
            ));
        }
        let (ends, torn) = (st.bytes, st.torn);
        if let Some(journal) = st.file.as_mut() {
            let mut line = serde_json::to_vec(batch).map_err(|e| StoreError::Io(e.to_string()))?;
            line.push(b'\n');
            // Part of a batch whose write failed (a full disk) is cut before the next is
            // written: the two would make one line, dropped as a torn tail on the next start
            // (the next batch lost) or refused as damage before others.
            let written = (if torn { journal.set_len(ends) } else { Ok(()) })
                .and_then(|_| journal.write_all(&line))
                .and_then(|_| journal.sync_data());
            if let Err(e) = written {
                let cut = journal.set_len(ends).is_ok();
                st.torn = !cut;
                return Err(StoreError::Io(format!("cannot write the journal: {e}")));
            }
            st.torn = false;
            st.bytes += line.len() as u64;
        }
        apply_batch(
            &mut self.data.write().unwrap_or_else(|p| p.into_inner()),
            batch,
        );
        if st.file.is_some() && st.bytes > (1 << 20).max(st.snapshot_bytes) {
            if let Err(e) = self.compact(&mut st) {
                log::error!(
                    "{}: compaction failed (the journal keeps the data): {e}",
                    describe(self.dir.as_deref())
                );
            }
        }
        Ok(())
    }
}

fn describe(dir: Option<&Path>) -> String {
    match dir {
        Some(d) => format!("embedded store in {}", d.display()),
        None => "in-memory store".into(),
    }
}

/// Restricts `path` to `mode` when it allows more (group or others).
fn private(path: &Path, mode: u32) -> std::io::Result<()> {
    let perms = std::fs::metadata(path)?.permissions();
    if perms.mode() & 0o077 != 0 {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    }
    Ok(())
}

/// A key's place in a listing's pages: 1 to 2^52 - 1 (a JSON number any client reads exactly;
/// 0 is the first page's cursor), from the key alone (FNV-1a), the same in every process and
/// version.
fn scan_place(key: &str) -> u64 {
    crate::wire::fnv1a(key.as_bytes()) % ((1 << 52) - 1) + 1
}

#[async_trait]
impl Store for EmbeddedStore {
    fn embedded_dir(&self) -> Option<&Path> {
        self.0.dir.as_deref()
    }

    fn describe(&self) -> String {
        describe(self.0.dir.as_deref())
    }

    async fn ping(&self) -> StoreResult<()> {
        Ok(())
    }

    async fn key_type(&self, key: &str) -> StoreResult<KeyType> {
        Ok(match self.data().get(key) {
            None | Some(Value::Empty) => KeyType::None,
            Some(Value::Hash(_)) => KeyType::Hash,
            Some(Value::Set(_)) => KeyType::Set,
        })
    }

    async fn hgetall(&self, key: &str) -> StoreResult<HashMap<String, String>> {
        Ok(match self.data().get(key) {
            Some(Value::Hash(h)) => h.iter().map(|(k, v)| (k.into(), v.into())).collect(),
            _ => HashMap::new(),
        })
    }

    async fn hgetall_many(&self, keys: &[String]) -> StoreResult<Vec<HashMap<String, String>>> {
        let data = self.data();
        Ok(keys
            .iter()
            .map(|k| match data.get(k) {
                Some(Value::Hash(h)) => h.iter().map(|(k, v)| (k.into(), v.into())).collect(),
                _ => HashMap::new(),
            })
            .collect())
    }

    async fn hash_fields_many(
        &self,
        keys: &[String],
        fields: &[&str],
    ) -> StoreResult<Vec<Option<Vec<Option<String>>>>> {
        let data = self.data();
        Ok(keys
            .iter()
            .map(|k| match data.get(k) {
                Some(Value::Hash(h)) => {
                    Some(fields.iter().map(|f| h.get(f).map(String::from)).collect())
                }
                _ => None,
            })
            .collect())
    }

    async fn key_types(&self, keys: &[String]) -> StoreResult<Vec<KeyType>> {
        let data = self.data();
        Ok(keys
            .iter()
            .map(|k| match data.get(k) {
                None | Some(Value::Empty) => KeyType::None,
                Some(Value::Hash(_)) => KeyType::Hash,
                Some(Value::Set(_)) => KeyType::Set,
            })
            .collect())
    }

    async fn smembers(&self, key: &str) -> StoreResult<Vec<String>> {
        Ok(match self.data().get(key) {
            Some(Value::Set(s)) => s.iter().cloned().collect(),
            _ => Vec::new(),
        })
    }

    async fn keys_with_prefix(&self, prefix: &str) -> StoreResult<Vec<String>> {
        Ok(self
            .data()
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, _)| k.clone())
            .collect())
    }

    async fn scan_prefix(
        &self,
        prefix: &str,
        cursor: u64,
        count: usize,
    ) -> StoreResult<(Vec<String>, u64)> {
        // Keys in the order of their places, a number of each key's own; the cursor is the
        // place to go on from, so a key's turn does not move when others come or go.
        let data = self.data();
        let mut found: Vec<(u64, &str)> = data
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, _)| (scan_place(k), k.as_str()))
            .filter(|(place, _)| *place >= cursor)
            .collect();
        let count = count.max(1);
        if found.len() > count {
            // The page's keys first (in no order), then in order: not a sort of them all.
            found.select_nth_unstable(count - 1);
            found[..count].sort_unstable();
            // Keys of one place go on one page.
            let last = found[count - 1].0;
            let (page, rest) = found.split_at_mut(count);
            let mut page = page.to_vec();
            page.extend(rest.iter().filter(|(place, _)| *place == last));
            let next = rest
                .iter()
                .map(|(place, _)| *place)
                .filter(|place| *place > last)
                .min()
                .unwrap_or(0);
            return Ok((page.into_iter().map(|(_, k)| k.to_string()).collect(), next));
        }
        found.sort_unstable();
        Ok((found.into_iter().map(|(_, k)| k.to_string()).collect(), 0))
    }

    fn hand_over(&self) {
        let inner = &self.0;
        inner
            .handed_over
            .store(true, std::sync::atomic::Ordering::SeqCst);
        held(&inner.journal).file = None;
        // Closing the lock file releases the directory.
        held(&inner.lock_file).take();
        log::info!("embedded store handed over to the upgraded process");
    }

    async fn apply(&self, batch: &[Write]) -> StoreResult<()> {
        if batch.is_empty() {
            return Ok(());
        }
        if self.0.handed_over.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(StoreError::Unavailable(
                "the store was handed over to the upgraded process".into(),
            ));
        }
        if self.0.dir.is_none() {
            // Nothing to write to disk: applied here.
            return self.0.apply(batch);
        }
        let (inner, batch) = (self.0.clone(), batch.to_vec());
        tokio::task::spawn_blocking(move || inner.apply(&batch))
            .await
            .map_err(|e| StoreError::Io(format!("the journal's writer failed: {e}")))?
    }

    async fn incr_window(&self, key: &str, window: Duration) -> StoreResult<WindowCount> {
        let now = Instant::now();
        let hit = self.0.windows.incr(key, window, now);
        Ok(WindowCount {
            count: hit.count,
            resets_in: hit.resets_at.saturating_duration_since(now),
        })
    }

    async fn publish(&self, channel: &str, message: &str) -> StoreResult<()> {
        if let Some(tx) = held(&self.0.channels).get(channel) {
            let _ = tx.send(message.to_string());
        }
        Ok(())
    }

    async fn subscribe(&self, channel: &str) -> StoreResult<broadcast::Receiver<String>> {
        let mut channels = held(&self.0.channels);
        Ok(channels
            .entry(channel.to_string())
            .or_insert_with(|| broadcast::channel(1024).0)
            .subscribe())
    }

    fn ask_caught_up(&self, question: u64) {
        // (What is published here is in the subscribers' channels as it is published.)
        for tx in held(&self.0.channels).values() {
            let _ = tx.send(super::CaughtUp::message(question, true));
        }
    }

    async fn try_lock(&self, name: &str, ttl: Duration) -> StoreResult<Option<String>> {
        let mut locks = held(&self.0.locks);
        let now = Instant::now();
        if let Some((_, until)) = locks.get(name) {
            if *until > now {
                return Ok(None);
            }
        }
        let token = uuid::Uuid::new_v4().to_string();
        locks.insert(name.to_string(), (token.clone(), now + ttl));
        Ok(Some(token))
    }

    async fn unlock(&self, name: &str, token: &str) -> StoreResult<()> {
        let mut locks = held(&self.0.locks);
        if locks.get(name).is_some_and(|(t, _)| t == token) {
            locks.remove(name);
        }
        Ok(())
    }

    async fn renew_lock(&self, name: &str, token: &str, ttl: Duration) -> StoreResult<bool> {
        match held(&self.0.locks).get_mut(name) {
            Some((t, until)) if t == token => {
                *until = Instant::now() + ttl;
                Ok(true)
            }
            _ => Ok(false),
        }
    }
}

#[cfg(test)]
mod tests;
