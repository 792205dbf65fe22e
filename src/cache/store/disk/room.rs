//! The disk tier's budget on a file system that fills: lowered below what the tier holds when
//! a write finds the file system full, raised back (to the configured budget at most) once it
//! has room again.

use std::path::Path;
use std::sync::atomic::Ordering;

use super::{DiskTier, LOW_WATER};

/// How often a full file system may lower the budget (see [`DiskTier::write_failed`]).
const LOWER_EVERY_MS: u64 = 5_000;
/// How often a lowered budget is checked against the room the file system has again.
pub(super) const RAISE_EVERY_MS: u64 = 30_000;

impl DiskTier {
    /// A write failed: counted; when the file system is full, the budget comes down to below
    /// what the tier holds (the tiles least recently used go), so that writes go on within
    /// what the disk has room for rather than all fail from now on.
    pub(super) fn write_failed(&self, e: &std::io::Error) {
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
                "tile cache directory {}: the file system is full ({e}) with {} of tiles \
                 stored; the tier keeps {} from now on (was {})",
                self.dir.display(),
                size_text(stored),
                size_text(lowered),
                size_text(was)
            );
            self.evict_if_needed();
        }
    }

    /// A budget lowered for a full file system comes back up, to at most the configured one,
    /// once the file system has room again: what the tier holds and nine tenths of what is
    /// free, when that is a tenth above the lowered budget (what the lowering's own eviction
    /// frees is less: the budget does not go up and down on its own). Looked at every
    /// [`RAISE_EVERY_MS`] at most, after a write (blocking: one `statvfs`).
    pub(super) fn raise_if_room(&self) {
        let budget = self.budget();
        if budget >= self.largest {
            return;
        }
        let now = crate::clock::coarse_millis().max(1);
        let last = self
            .room_checked_at
            .load(Ordering::Relaxed)
            .max(self.lowered_at.load(Ordering::Relaxed));
        if now.saturating_sub(last) < RAISE_EVERY_MS {
            return;
        }
        self.room_checked_at.store(now, Ordering::Relaxed);
        // (A file system out of inodes is full too, whatever bytes it has free: the budget
        // went up and down every 30 s.)
        let Some(free) = free_bytes(&self.dir) else {
            return;
        };
        let stored = self.stored_bytes.load(Ordering::Relaxed);
        let room = stored.saturating_add(free / 10 * 9).min(self.largest);
        if room <= budget.saturating_add(budget / 10) {
            return;
        }
        if self
            .budget
            .compare_exchange(budget, room, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            log::info!(
                "tile cache directory {}: the file system has room again ({} free); the tier \
                 keeps {} from now on (was {})",
                self.dir.display(),
                size_text(free),
                size_text(room),
                size_text(budget)
            );
        }
    }
}

/// The bytes the file system holding `dir` has free for this process (`statvfs`'s
/// available blocks); 0 while fewer than a hundredth of its inodes are free (where it counts
/// them).
pub(super) fn free_bytes(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `path` is a NUL-terminated string and `st` a buffer of the type `statvfs`
    // fills; it is read only when the call succeeded.
    let st = unsafe {
        if libc::statvfs(path.as_ptr(), st.as_mut_ptr()) != 0 {
            return None;
        }
        st.assume_init()
    };
    let (inodes, free_inodes) = (st.f_files as u64, st.f_favail as u64);
    if inodes > 0 && free_inodes < inodes / 100 + 1 {
        return Some(0);
    }
    Some((st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
}

/// A size for a log line: MiB, KiB below one (a budget lowered on a small file system read
/// `0 MiB`).
pub(super) fn size_text(bytes: u64) -> String {
    if bytes >= 1 << 20 {
        format!("{} MiB", bytes >> 20)
    } else {
        format!("{} KiB", bytes.div_ceil(1 << 10))
    }
}
