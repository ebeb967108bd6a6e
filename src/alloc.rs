//! The global allocator: mimalloc, through its plain entry points where
//! Rust's alignment is one every mimalloc block has anyway.
//!
//! The `mimalloc` crate passes every allocation to `mi_malloc_aligned`.
//! mimalloc 3 serves an aligned request from its fast path only when the
//! size is small and a free block happens to sit at the alignment; any
//! other goes through its generic aligned path, which over-allocates by
//! `alignment - 1` bytes (an 8 KiB read buffer becomes a 10 KiB block).
//! Under callgrind that path was ~1.3k instructions of each kept-alive
//! proxied request (issue 13). Every mimalloc block is aligned to at least
//! a machine word (block sizes are whole words, pages are aligned), so a
//! layout whose alignment is at most a word is what `mi_malloc` gives; a
//! larger alignment still goes to the `_aligned` functions.

use std::alloc::{GlobalAlloc, Layout};
use std::ffi::c_void;

use libmimalloc_sys as mi;

/// The largest alignment every mimalloc block has: one machine word.
const WORD: usize = std::mem::size_of::<usize>();

/// mimalloc as the global allocator (see the module documentation).
#[derive(Debug, Clone, Copy, Default)]
pub struct Mimalloc;

// SAFETY: each function hands back memory from mimalloc of at least the
// layout's size and alignment (the plain calls only when the alignment is
// at most a word, which every mimalloc block has), or null; `dealloc` and
// `realloc` get pointers this allocator returned, which mimalloc frees and
// resizes whichever entry point allocated them (its API documentation).
unsafe impl GlobalAlloc for Mimalloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.align() <= WORD {
            // SAFETY: see the impl.
            unsafe { mi::mi_malloc(layout.size()).cast() }
        } else {
            // SAFETY: see the impl.
            unsafe { mi::mi_malloc_aligned(layout.size(), layout.align()).cast() }
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if layout.align() <= WORD {
            // SAFETY: see the impl.
            unsafe { mi::mi_zalloc(layout.size()).cast() }
        } else {
            // SAFETY: see the impl.
            unsafe { mi::mi_zalloc_aligned(layout.size(), layout.align()).cast() }
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        // SAFETY: see the impl.
        unsafe { mi::mi_free(ptr.cast::<c_void>()) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if layout.align() <= WORD {
            // SAFETY: see the impl.
            unsafe { mi::mi_realloc(ptr.cast::<c_void>(), new_size).cast() }
        } else {
            // SAFETY: see the impl.
            unsafe { mi::mi_realloc_aligned(ptr.cast::<c_void>(), new_size, layout.align()).cast() }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::alloc::{GlobalAlloc, Layout};

    use super::Mimalloc;

    fn filled(p: *const u8, n: usize, byte: u8) -> bool {
        // SAFETY: callers pass a live allocation of at least `n` bytes.
        #[allow(unsafe_code)]
        unsafe {
            std::slice::from_raw_parts(p, n).iter().all(|&b| b == byte)
        }
    }

    /// Sizes from 1 byte to 4 MiB (every size to 600, then a spread) at
    /// every alignment from 1 to 4096: aligned, zeroed when asked, and the
    /// contents kept by a realloc up and back down.
    #[test]
    #[allow(unsafe_code)]
    fn every_layout_gets_its_alignment_and_keeps_its_bytes() {
        let sizes = (1..=600usize)
            .chain((600..5000).step_by(37))
            .chain((12..=22).map(|p| 1usize << p))
            .chain((12..=22).map(|p| (1usize << p) + 8));
        for size in sizes {
            for align in (0..=12).map(|p| 1usize << p) {
                let layout = Layout::from_size_align(size, align).expect("a valid layout");
                let grown = Layout::from_size_align(size * 2 + 7, align).expect("a valid layout");
                // SAFETY: nonzero sizes; every pointer comes from this
                // allocator and is freed once, with the layout it has.
                unsafe {
                    let p = Mimalloc.alloc_zeroed(layout);
                    assert!(!p.is_null());
                    assert_eq!(p as usize % align, 0, "size {size} align {align}");
                    assert!(filled(p, size, 0));
                    std::ptr::write_bytes(p, 0xa5, size);
                    let q = Mimalloc.realloc(p, layout, grown.size());
                    assert_eq!(q as usize % align, 0, "grown {size} align {align}");
                    assert!(filled(q, size, 0xa5));
                    std::ptr::write_bytes(q, 0x5a, grown.size());
                    let r = Mimalloc.realloc(q, grown, size);
                    assert_eq!(r as usize % align, 0, "shrunk {size} align {align}");
                    assert!(filled(r, size, 0x5a));
                    Mimalloc.dealloc(r, layout);
                    let a = Mimalloc.alloc(layout);
                    assert_eq!(a as usize % align, 0, "alloc {size} align {align}");
                    std::ptr::write_bytes(a, 0xff, size);
                    Mimalloc.dealloc(a, layout);
                }
            }
        }
    }
}
