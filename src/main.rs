use clap::Parser;

use std::alloc::{GlobalAlloc, Layout};
use std::ffi::c_void;

use libmimalloc_sys::{mi_free, mi_malloc, mi_malloc_aligned, mi_realloc, mi_realloc_aligned};
use libmimalloc_sys::{mi_zalloc, mi_zalloc_aligned};

/// mimalloc: Pingora allocates and frees a body buffer per read; glibc's allocator spent a
/// fifth of the gateway's CPU on that in the load benchmark.
#[global_allocator]
static GLOBAL: Mimalloc = Mimalloc;

/// mimalloc, asked for an alignment only when a type needs more than every block has. Its
/// aligned entry point (what the `mimalloc` crate calls for every allocation) takes a slow
/// over-allocating path for any block over 1 KiB whose size class is not a power of two, even
/// for the 8-byte alignment every block has anyway: four or five times per request (a request's
/// future, a response head), a hundred instructions or more each.
struct Mimalloc;

/// The alignment every mimalloc block has (blocks are whole words).
const BLOCK_ALIGN: usize = std::mem::size_of::<usize>();

// SAFETY: each call passes the layout's size (and its alignment where a block's own is not
// enough) to mimalloc, whose blocks are at least word-aligned; what it returns is freed and
// grown by mimalloc only.
unsafe impl GlobalAlloc for Mimalloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.align() <= BLOCK_ALIGN {
            mi_malloc(layout.size()) as *mut u8
        } else {
            mi_malloc_aligned(layout.size(), layout.align()) as *mut u8
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if layout.align() <= BLOCK_ALIGN {
            mi_zalloc(layout.size()) as *mut u8
        } else {
            mi_zalloc_aligned(layout.size(), layout.align()) as *mut u8
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        mi_free(ptr as *mut c_void);
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if layout.align() <= BLOCK_ALIGN {
            mi_realloc(ptr as *mut c_void, new_size) as *mut u8
        } else {
            mi_realloc_aligned(ptr as *mut c_void, new_size, layout.align()) as *mut u8
        }
    }
}

fn main() {
    tollgate::logging::init();
    tollgate::cli::unset_empty_variables();
    let cli = tollgate::cli::Cli::parse();
    std::process::exit(tollgate::cli::run(cli));
}
