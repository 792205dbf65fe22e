//! The memory tier's tile bodies in shared memory: an anonymous file (`memfd`) mapped into the
//! gateway, so a hit's body goes to the client's socket with `sendfile(2)` — the kernel hands
//! the tile's pages to the socket instead of copying the bytes — while everything else reads
//! the body as ordinary memory (a [`Bytes`] over the mapping).
//!
//! Bodies take whole pages: each is an extent of [`PAGE`]-sized pages, from free lists by size
//! or from the unused end of the file; a free extent is joined with the free ones beside it
//! ([`free`]). A page handed to a socket by `sendfile` is referenced by
//! the kernel until the client has read it, which may be long after the call returned: an
//! extent that went out so is never written over in place — when its body is dropped, its pages
//! are cut out of the file (`fallocate` punching a hole; the socket keeps the old pages, a new
//! body gets new ones). An extent that never went out (a tile stored and pushed out unread, as
//! in a scan) keeps its pages for the next body (free extents with their pages are taken
//! first), up to a bound on such idle pages; past it they are cut out too. Bodies smaller
//! than [`MIN_BODY`] (a page would be mostly padding) or larger than [`MAX_BODY`], and any
//! body when the file is full, stay in ordinary memory and are written as before.
//!
//! A body is written into its place with non-temporal stores ([`Writing::write_past_caches`]):
//! the place was last used a budget's worth of tiles ago, so ordinary stores would first read
//! every line of it from memory only to write it over. A miss is answered from the buffer it
//! was read into, which the caches hold.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;

mod free;
use free::Free;

pub const PAGE: usize = 4096;
/// The smallest body kept in shared memory.
pub const MIN_BODY: usize = 8 * 1024;
/// The largest body kept in shared memory (64 pages).
pub const MAX_BODY: usize = 256 * 1024;
const MAX_PAGES: usize = MAX_BODY / PAGE;
/// Free pages kept for the next bodies: an eighth of the budget, at least this much (bodies
/// pushed out of the memory tier are let go in batches, and a batch past what is kept would
/// be cut out only to be faulted in again by the next fills).
const IDLE_MIN: usize = 4 << 20;

/// Whether a body of `len` bytes is kept in shared memory (when there is room).
pub fn kept_here(len: usize) -> bool {
    (MIN_BODY..=MAX_BODY).contains(&len)
}

/// Shared memory for the bodies of a memory tier.
pub struct SharedBodies {
    fd: OwnedFd,
    base: NonNull<u8>,
    pages: u32,
    free: Mutex<Free>,
    /// Per page: a body on it went to a socket by `sendfile`.
    sent: Box<[AtomicBool]>,
    /// Cutting an extent out failed (said once).
    cut_failed: AtomicBool,
}

// The mapping is shared memory the gateway's threads read; each extent is written only by
// the one fill that allocated it, before its body is shared.
unsafe impl Send for SharedBodies {}
unsafe impl Sync for SharedBodies {}

/// What the shared memory holds (`GET /tollgate/cache`): in bytes the file's size, the bodies
/// in it and the free pages kept for the next bodies; the bodies whose pages were cut out, and
/// those of a size kept here that found no room (kept in ordinary memory), of which those the
/// free pages together would have held (free in pieces too short for them).
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct SharedState {
    pub size: u64,
    pub used: u64,
    pub idle: u64,
    pub cuts: u64,
    pub refused: u64,
    pub fragmented: u64,
}

/// A body's place in the file, for `sendfile`.
#[derive(Clone, Copy, Debug)]
pub struct FileRange {
    pub fd: RawFd,
    pub offset: u64,
    pub len: usize,
}

impl SharedBodies {
    /// Shared memory for `budget` bytes of bodies (the file is sized half again as large, so
    /// extents of mixed lengths still find room). Its pages are taken as they are written.
    pub fn new(budget: usize) -> std::io::Result<Arc<SharedBodies>> {
        Self::with_idle(budget, (budget / 8).max(IDLE_MIN))
    }

    /// The same, keeping at most `idle_max` bytes of free pages.
    fn with_idle(budget: usize, idle_max: usize) -> std::io::Result<Arc<SharedBodies>> {
        // A hole punched in part of a larger page zeroes that part in place, under a socket
        // that may still be sending it.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        if page != PAGE as libc::c_long {
            return Err(std::io::Error::other(format!(
                "the system's page size is {page} bytes, not {PAGE}"
            )));
        }
        let bytes = (budget + budget / 2).max(MAX_BODY).next_multiple_of(PAGE);
        let pages = u32::try_from(bytes / PAGE)
            .map_err(|_| std::io::Error::other("memory budget too large for shared memory"))?;
        let fd = unsafe { libc::memfd_create(c"tollgate-tiles".as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        if unsafe { libc::ftruncate(fd.as_raw_fd(), bytes as libc::off_t) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        // A body that went out by `sendfile` is cut out when it goes: a system that cannot
        // punch holes in the file (some sandboxes' memory files) would lose every such
        // extent, one by one.
        punch_hole(fd.as_raw_fd(), pages - 1, 1).map_err(|e| {
            std::io::Error::other(format!("holes cannot be punched in shared memory: {e}"))
        })?;
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_NORESERVE,
                fd.as_raw_fd(),
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let base = NonNull::new(base.cast::<u8>()).ok_or_else(|| std::io::Error::other("mmap"))?;
        // Never huge pages, whatever the system's `shmem_enabled` says (`always`, `force`): a
        // hole punched in part of one zeroes it in place, so a client still being sent a body
        // would get zeros (or, once the place is taken again, the next body's bytes). A
        // kernel without huge pages refuses the advice (EINVAL) and has none to give.
        if unsafe { libc::madvise(base.as_ptr().cast(), bytes, libc::MADV_NOHUGEPAGE) } != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EINVAL) {
                unsafe { libc::munmap(base.as_ptr().cast(), bytes) };
                return Err(std::io::Error::other(format!(
                    "shared memory could not be kept out of huge pages: {e}"
                )));
            }
        }
        Ok(Arc::new(SharedBodies {
            fd,
            base,
            pages,
            free: Mutex::new(Free::new(idle_max / PAGE, pages)),
            sent: (0..pages).map(|_| AtomicBool::new(false)).collect(),
            cut_failed: AtomicBool::new(false),
        }))
    }

    /// A copy of `body` in shared memory; `None` when it is not kept there (its size, or no
    /// room).
    pub fn hold(self: &Arc<Self>, body: &[u8]) -> Option<Bytes> {
        let mut w = self.writing(body.len())?;
        w.write_past_caches(body);
        Some(w.done())
    }

    /// An extent for a body of `len` bytes to be written into as it arrives; `None` when a
    /// body of that size is not kept here or there is no room.
    pub fn writing(self: &Arc<Self>, len: usize) -> Option<Writing> {
        if !kept_here(len) {
            return None;
        }
        let pages = len.div_ceil(PAGE) as u32;
        let first = self.allocate(pages)?;
        Some(Writing(Extent {
            bodies: self.clone(),
            first,
            pages,
            len: 0,
        }))
    }

    /// Where `body` lies in the file, when it is a body held here (or a part of one starting on
    /// a page); the body counts as sent from then on.
    pub fn send(&self, body: &[u8]) -> Option<FileRange> {
        let at = self.offset_of(body)?;
        if at % PAGE != 0 || body.is_empty() {
            return None;
        }
        let page = at / PAGE;
        let last = (at + body.len() - 1) / PAGE;
        for p in &self.sent[page..=last] {
            if !p.load(Ordering::Relaxed) {
                p.store(true, Ordering::Relaxed);
            }
        }
        Some(FileRange {
            fd: self.fd.as_raw_fd(),
            offset: at as u64,
            len: body.len(),
        })
    }

    /// The bytes of a body's pages (rounded up), as the budget counts them; `None` for a body
    /// not held here.
    pub fn footprint(&self, body: &[u8]) -> Option<usize> {
        self.offset_of(body)
            .map(|_| body.len().next_multiple_of(PAGE))
    }

    /// Where `body` starts in the file, when it lies in the mapping.
    fn offset_of(&self, body: &[u8]) -> Option<usize> {
        let at = (body.as_ptr() as usize).checked_sub(self.base.as_ptr() as usize)?;
        (at < self.pages as usize * PAGE).then_some(at)
    }

    fn page_ptr(&self, page: u32) -> *mut u8 {
        unsafe { self.base.as_ptr().add(page as usize * PAGE) }
    }

    /// What the shared memory holds, in bytes.
    pub fn state(&self) -> SharedState {
        let free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        SharedState {
            size: self.pages as u64 * PAGE as u64,
            used: (free.used * PAGE) as u64,
            idle: (free.idle * PAGE) as u64,
            cuts: free.cuts,
            refused: free.refused,
            fragmented: free.fragmented,
        }
    }

    fn allocate(&self, pages: u32) -> Option<u32> {
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        free.take(pages, self.pages)
    }

    /// An extent whose body is gone: its pages are cut out of the file if a socket may still
    /// hold them or too many are idle, and it is free for another body.
    fn release(&self, first: u32, pages: u32) {
        let range = first as usize..(first + pages) as usize;
        let mut sent = false;
        for p in &self.sent[range] {
            sent |= p.swap(false, Ordering::Relaxed);
        }
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        if !sent && free.keep(first, pages) {
            return;
        }
        drop(free);
        let cut = self.cut_out(first, pages);
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        if cut {
            free.cut(first, pages);
        } else {
            free.lose(pages);
        }
    }

    /// Gives an extent's pages back to the system: the file has a hole there, any socket still
    /// holding them keeps them, and the next write there gets fresh pages.
    fn cut_out(&self, first: u32, pages: u32) -> bool {
        let Err(e) = punch_hole(self.fd.as_raw_fd(), first, pages) else {
            return true;
        };
        // Said once: it fails for every extent alike (the start checked that it works).
        if !self.cut_failed.swap(true, Ordering::Relaxed) {
            log::warn!("tile cache: could not release shared memory ({e}); the pages of tile bodies sent by sendfile are no longer reused");
        }
        false
    }
}

/// Punches a hole of `pages` pages from page `first` in the file `fd`, its size kept.
fn punch_hole(fd: RawFd, first: u32, pages: u32) -> std::io::Result<()> {
    let r = unsafe {
        libc::fallocate(
            fd,
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            (first as usize * PAGE) as libc::off_t,
            (pages as usize * PAGE) as libc::off_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

impl Drop for SharedBodies {
    fn drop(&mut self) {
        unsafe {
            libc::munmap(self.base.as_ptr().cast(), self.pages as usize * PAGE);
        }
    }
}

/// A body being written into its extent (by one fill, the extent its alone): the bytes so far.
pub struct Writing(Extent);

impl Writing {
    pub fn len(&self) -> usize {
        self.0.len
    }

    pub fn is_empty(&self) -> bool {
        self.0.len == 0
    }

    /// Bytes the extent still has room for.
    pub fn room(&self) -> usize {
        self.0.pages as usize * PAGE - self.0.len
    }

    pub fn as_slice(&self) -> &[u8] {
        self.0.as_ref()
    }

    /// The body as written, to be shared.
    pub fn done(self) -> Bytes {
        Bytes::from_owner(self.0)
    }

    /// Writes `data` after the bytes written, past the processor's caches: a tile is written
    /// here once, into a place the cache last used long ago (its lines are in no cache), and
    /// read back by a hit much later, so fetching those lines first to write them (what
    /// ordinary stores do) is wasted memory traffic.
    pub fn write_past_caches(&mut self, data: &[u8]) {
        assert!(data.len() <= self.room(), "written past the extent");
        // Within the extent (checked above), which only this writer writes.
        unsafe {
            let at = self.0.bodies.page_ptr(self.0.first).add(self.0.len);
            super::stream::copy(at, data);
        }
        self.0.len += data.len();
    }
}

/// A body's extent, owned by the body's [`Bytes`]: released when the last of them goes.
struct Extent {
    bodies: Arc<SharedBodies>,
    first: u32,
    pages: u32,
    len: usize,
}

impl AsRef<[u8]> for Extent {
    fn as_ref(&self) -> &[u8] {
        unsafe { std::slice::from_raw_parts(self.bodies.page_ptr(self.first), self.len) }
    }
}

impl Drop for Extent {
    fn drop(&mut self) {
        self.bodies.release(self.first, self.pages);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn body(len: usize, salt: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31) ^ salt)
            .collect()
    }

    #[test]
    fn bodies_of_tile_size_are_held_whole_and_others_are_not() {
        let shared = SharedBodies::new(1 << 20).unwrap();
        for len in [MIN_BODY, 20 * 1024, 20 * 1024 + 1, MAX_BODY] {
            let b = body(len, 7);
            let held = shared.hold(&b).expect("held");
            assert!(held[..] == b[..], "{len}");
            assert_eq!(shared.footprint(&held), Some(len.next_multiple_of(PAGE)));
        }
        for len in [0, 100, MIN_BODY - 1, MAX_BODY + 1] {
            assert!(shared.hold(&body(len, 1)).is_none(), "{len}");
        }
        assert_eq!(shared.footprint(&body(20 * 1024, 0)), None);
        assert!(shared.send(&body(20 * 1024, 0)).is_none());
    }

    #[test]
    fn a_body_never_sent_leaves_its_pages_for_the_next_and_a_full_file_holds_no_more() {
        // Room for 1.5 × 1 MiB: 96 extents of 4 pages.
        let shared = SharedBodies::new(1 << 20).unwrap();
        let mut held: Vec<Bytes> = (0..96)
            .map(|i| shared.hold(&body(16 * 1024, i as u8)).expect("room"))
            .collect();
        assert!(
            shared.hold(&body(16 * 1024, 0)).is_none(),
            "the file is full"
        );
        assert_eq!(shared.state().used, 96 * 4 * PAGE as u64);
        let place = held[10].as_ptr();
        held.remove(10);
        assert_eq!(
            (shared.state().used, shared.state().idle),
            (95 * 4 * PAGE as u64, 4 * PAGE as u64)
        );
        let again = shared.hold(&body(16 * 1024, 99)).expect("the freed extent");
        assert_eq!(again.as_ptr(), place);
        assert!(again[..] == body(16 * 1024, 99)[..]);
        // A shorter body takes part of a longer free extent; the rest stays free.
        let place = held[20].as_ptr();
        held.remove(20);
        let short = shared.hold(&body(8 * 1024, 5)).expect("part of the extent");
        assert_eq!(short.as_ptr(), place);
        let rest = shared.hold(&body(8 * 1024, 6)).expect("the rest of it");
        assert_eq!(rest.as_ptr() as usize, place as usize + 2 * PAGE);
        for (i, b) in held.iter().enumerate() {
            // Bodies 10 and 21 went.
            let salt = if i < 10 {
                i
            } else if i < 20 {
                i + 1
            } else {
                i + 2
            } as u8;
            assert!(b[..] == body(16 * 1024, salt)[..], "body {i} intact");
        }
    }

    #[test]
    fn a_body_is_written_into_its_place_and_one_left_unfinished_gives_it_back() {
        let shared = SharedBodies::new(1 << 20).unwrap();
        let whole = body(20 * 1024, 3);
        let mut w = shared.writing(whole.len()).expect("room");
        assert_eq!(w.room(), 5 * PAGE);
        // Pieces that start and end off the 16-byte boundaries the stores past the caches use.
        w.write_past_caches(&whole[..7001]);
        w.write_past_caches(&whole[7001..7010]);
        w.write_past_caches(&whole[7010..]);
        assert_eq!((w.len(), w.room()), (whole.len(), 5 * PAGE - whole.len()));
        let done = w.done();
        assert!(done[..] == whole[..]);
        assert!(shared.footprint(&done).is_some());
        let mut unfinished = shared.writing(whole.len()).unwrap();
        unfinished.write_past_caches(&whole[..100]);
        let place = unfinished.as_slice().as_ptr();
        drop(unfinished);
        let next = shared.writing(whole.len()).unwrap();
        assert_eq!(next.as_slice().as_ptr(), place, "the extent came back");
        assert!(next.is_empty());
        assert!(shared.writing(MIN_BODY - 1).is_none() && shared.writing(MAX_BODY + 1).is_none());
    }

    /// Once as many free pages are kept as allowed (a burst of bodies let go), bodies stored
    /// and let go one by one reuse the kept pages: none is cut out.
    #[test]
    fn kept_pages_are_reused_first_so_a_scan_cuts_nothing_out() {
        // 128 KiB of idle pages kept: 8 bodies of 4 pages.
        let shared = SharedBodies::with_idle(1 << 20, 128 << 10).unwrap();
        let mut held: std::collections::VecDeque<Bytes> = (0..40)
            .map(|i| shared.hold(&body(16 * 1024, i)).unwrap())
            .collect();
        held.drain(..20);
        let after_burst = shared.state();
        assert_eq!((after_burst.idle, after_burst.cuts), (32 * PAGE as u64, 12));
        for i in 0..200 {
            held.push_back(shared.hold(&body(16 * 1024, i as u8)).unwrap());
            held.pop_front();
        }
        assert_eq!(shared.state().cuts, 12, "bodies cut out in the scan");
        for (i, b) in held.iter().enumerate() {
            assert!(b[..] == body(16 * 1024, (180 + i) as u8)[..], "body {i}");
        }
    }

    /// The reason for the rule: a body that went to a socket by `sendfile` and was dropped
    /// before the client read it — its extent taken by a new body — still reaches the client
    /// as it was.
    #[test]
    fn a_body_sent_and_dropped_reaches_the_client_unchanged_when_its_place_is_reused() {
        let shared = SharedBodies::new(1 << 20).unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        let first = body(20 * 1024, 1);
        let held = shared.hold(&first).unwrap();
        let place = held.as_ptr();
        let file = shared.send(&held).unwrap();
        let mut at = file.offset as libc::off_t;
        let n = unsafe { libc::sendfile(server.as_raw_fd(), file.fd, &mut at, file.len) };
        assert_eq!(n as usize, file.len, "the socket took the body");
        drop(held);
        // The client has not read yet; the next body takes the same place.
        let second = shared.hold(&body(20 * 1024, 2)).unwrap();
        assert_eq!(second.as_ptr(), place);
        let mut got = vec![0u8; first.len()];
        client.read_exact(&mut got).unwrap();
        assert!(
            got == first,
            "the client got the bytes written over its body"
        );
        assert!(second[..] == body(20 * 1024, 2)[..]);
    }
    /// The start checks that holes can be punched in the file: on a descriptor that cannot
    /// (a pipe here; some sandboxes' memory files) the check fails, and the memory tier keeps
    /// its bodies in ordinary memory.
    #[test]
    fn holes_are_punched_in_shared_memory_and_not_in_what_cannot_have_them() {
        let shared = SharedBodies::new(1 << 20).unwrap();
        assert!(punch_hole(shared.fd.as_raw_fd(), 0, 2).is_ok());
        let mut ends = [0; 2];
        assert_eq!(unsafe { libc::pipe(ends.as_mut_ptr()) }, 0);
        assert!(punch_hole(ends[1], 0, 1).is_err());
        unsafe {
            libc::close(ends[0]);
            libc::close(ends[1]);
        }
    }

    /// Bodies of mixed sizes stored and pushed out as a cache cycling through its budget does
    /// them, for long: the free pages between bodies are joined again as they come free, so
    /// nearly every body still finds room (the file is half again as large as the budget).
    #[test]
    fn free_extents_side_by_side_are_joined_so_mixed_sizes_keep_finding_room() {
        let budget = 64 << 20;
        let shared = SharedBodies::with_idle(budget, budget / 8).unwrap();
        let mut next = crate::cache::store::xorshift(0x2545_f491_4f6c_dd1d_u64);
        let mut held: std::collections::VecDeque<Writing> = Default::default();
        let (mut bytes, mut stored, mut refused) = (0, 0, 0);
        for i in 0..60_000 {
            // Tiles of 8 to 64 KiB, one in ten up to 256 KiB.
            let r = next();
            let pages = if r.is_multiple_of(10) {
                17 + r / 10 % 48
            } else {
                2 + r / 10 % 15
            } as usize;
            let len = pages * PAGE;
            while bytes + len > budget {
                bytes -= held.pop_front().expect("something held").room();
            }
            match shared.writing(len) {
                Some(w) => {
                    bytes += w.room();
                    held.push_back(w);
                    stored += usize::from(i >= 20_000);
                }
                None if i >= 20_000 => refused += 1,
                None => {}
            }
        }
        assert!(
            refused * 1000 < stored,
            "{refused} bodies refused, {stored} stored"
        );
    }

    /// Tiles of two sizes, one of them the largest kept (20 KiB and 256 KiB, half each), nine
    /// in ten of them sent before they go, any of them let go (as TinyUFO's eviction picks):
    /// the free pages beside each other are one extent however long, so none is refused
    /// (joined only as far as 256 KiB, about one in ten found no room: two free extents of
    /// 40 pages side by side held no body of 64).
    #[test]
    fn the_largest_bodies_find_room_in_free_pages_joined_past_their_length() {
        let budget = 64 << 20;
        let shared = SharedBodies::with_idle(budget, budget / 8).unwrap();
        let mut next = crate::cache::store::xorshift(0x9e37_79b9_7f4a_7c15_u64);
        let mut held: Vec<Bytes> = Vec::new();
        let (mut bytes, mut stored, mut refused) = (0, 0, 0);
        let fill = vec![7; MAX_PAGES * PAGE];
        for i in 0..30_000 {
            let pages = if next().is_multiple_of(2) {
                5
            } else {
                MAX_PAGES
            };
            let len = pages * PAGE;
            while bytes + len > budget {
                let at = (next() % held.len() as u64) as usize;
                bytes -= held.swap_remove(at).len();
            }
            match shared.writing(len) {
                Some(mut w) => {
                    w.write_past_caches(&fill[..len]);
                    let body = w.done();
                    if !next().is_multiple_of(10) {
                        assert!(shared.send(&body).is_some());
                    }
                    bytes += body.len();
                    held.push(body);
                    stored += usize::from(i >= 10_000);
                }
                None if i >= 10_000 => refused += 1,
                None => {}
            }
        }
        assert!(
            refused * 1000 < stored,
            "{refused} bodies refused, {stored} stored"
        );
    }
}
