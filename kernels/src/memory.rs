//! How freed tensor memory goes back to the C allocator.
//!
//! libtorch allocates every CPU tensor with the C library's `malloc`. glibc serves a block above
//! its mmap threshold (at most 32 MB) with a fresh `mmap` and unmaps it on `free`, and returns
//! the top of its heap to the system past a trim threshold. A forward pass allocates and frees
//! the same large blocks layer after layer (a batch's MLP hidden state, a logits tensor of
//! hundreds of MB), so under the defaults each one comes back as new pages that the kernel must
//! fault in and zero: on the 2-core development machine `eval` spent 40% of its time in the
//! kernel clearing pages, and a harvest 15–20%. Kept in the heap, the blocks are reused as they
//! are. (What `eval` still spends there is the first touch of its peak heap, once a process:
//! 679 thousand page faults for 2,048 tokens and for 8,192 alike.) The cost is
//! that the process keeps its peak heap until it exits (28% more resident
//! memory for `eval`'s defaults), which suits batch jobs that run at one size throughout; a
//! one-off buffer, such as a checkpoint read whole, is given back with
//! [`release_freed_memory`].

/// Makes glibc keep freed memory for reuse: no block is served by its own `mmap`, and the heap
/// is never trimmed. Call it first thing in a process, before libtorch allocates. Elsewhere
/// than Linux with glibc it does nothing. Returns whether both settings took.
pub fn keep_freed_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only changes the allocator's parameters; glibc documents both
        // settings as valid at any time, and a block already mmapped is still unmapped on free.
        // With mmap disallowed, glibc still falls back to it when the heap cannot grow. A trim
        // threshold of −1 turns trimming off (the largest positive one, 2 GB, still let an
        // MP-SAE step's 2 GB of temporaries go back and be faulted in again each step).
        unsafe {
            libc::mallopt(libc::M_MMAP_MAX, 0) == 1
                && libc::mallopt(libc::M_TRIM_THRESHOLD, -1) == 1
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

/// Hands the allocator's free memory back to the system (glibc's `malloc_trim`, which also
/// releases free pages inside the heap). For after a large one-off buffer, such as a checkpoint
/// read whole, that [`keep_freed_memory`] would otherwise keep. Elsewhere than Linux with glibc
/// it does nothing.
pub fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free memory; it is safe to call at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}
