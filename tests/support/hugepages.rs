//! The system's setting for huge pages in shared memory (`shmem_enabled`), changed for a test
//! and put back after; how much of a mapping is in huge pages.

use std::path::Path;

const SHMEM_ENABLED: &str = "/sys/kernel/mm/transparent_hugepage/shmem_enabled";

/// The setting as it was, put back when dropped.
pub struct ShmemHugePages(String);

impl ShmemHugePages {
    /// Sets `value`; `None` where the setting cannot be changed (not root, `/sys` read-only,
    /// a kernel without huge pages).
    pub fn set(value: &str) -> Option<ShmemHugePages> {
        let now = std::fs::read_to_string(SHMEM_ENABLED).ok()?;
        let was = now.split_once('[')?.1.split_once(']')?.0.to_string();
        std::fs::write(SHMEM_ENABLED, value).ok()?;
        Some(ShmemHugePages(was))
    }
}

impl Drop for ShmemHugePages {
    fn drop(&mut self) {
        let _ = std::fs::write(SHMEM_ENABLED, &self.0);
    }
}

/// Whether a `memfd` mapped as the gateway maps its tile bodies, without advice, gets huge
/// pages here.
pub fn memfd_gets_huge_pages() -> bool {
    let bytes = 8 << 20;
    unsafe {
        let fd = libc::memfd_create(c"control".as_ptr(), libc::MFD_CLOEXEC);
        assert!(fd >= 0 && libc::ftruncate(fd, bytes as libc::off_t) == 0);
        let map = libc::mmap(
            std::ptr::null_mut(),
            bytes,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_NORESERVE,
            fd,
            0,
        );
        assert_ne!(map, libc::MAP_FAILED);
        std::ptr::write_bytes(map.cast::<u8>(), 1, bytes);
        let huge = huge_kib(Path::new("/proc/self/smaps"), "memfd:control");
        libc::munmap(map, bytes);
        libc::close(fd);
        huge > 0
    }
}

/// The kibibytes of a process's mappings named `name` that are mapped as huge pages
/// (`ShmemPmdMapped` in its `smaps`).
pub fn huge_kib(smaps: &Path, name: &str) -> u64 {
    let smaps = std::fs::read_to_string(smaps).expect("smaps");
    let mut inside = false;
    let mut kib = 0;
    for line in smaps.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if first.contains('-') && !first.ends_with(':') {
            // A mapping's first line: its addresses, ..., its name.
            inside = line.contains(name);
        } else if let Some(v) = line.strip_prefix("ShmemPmdMapped:").filter(|_| inside) {
            kib += v
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .unwrap_or(0);
        }
    }
    kib
}
