//! The threads the own kernels run on: as many as libtorch is allowed, the calling thread
//! included, so a kernel never competes with more threads than libtorch's own would.

use std::sync::{Arc, Mutex};

/// The threads libtorch is allowed (`tch::set_num_threads`): the kernels use as many.
pub(crate) fn threads() -> usize {
    tch::get_num_threads().max(1) as usize
}

/// A pool of `threads - 1` threads to work beside the calling one (none for one thread),
/// rebuilt if libtorch's thread count changes.
pub(crate) fn helpers(threads: usize) -> Option<Arc<rayon::ThreadPool>> {
    static POOL: Mutex<Option<(usize, Arc<rayon::ThreadPool>)>> = Mutex::new(None);
    if threads < 2 {
        return None;
    }
    let mut guard = POOL.lock().unwrap_or_else(|e| e.into_inner());
    match guard.as_ref() {
        Some((n, p)) if *n == threads => Some(p.clone()),
        _ => {
            let p = Arc::new(
                rayon::ThreadPoolBuilder::new()
                    .num_threads(threads - 1)
                    .thread_name(|i| format!("saescope-kernel-{i}"))
                    .build()
                    .expect("a thread pool starts"),
            );
            *guard = Some((threads, p.clone()));
            Some(p)
        }
    }
}

/// Runs `work` on every share, the first on the calling thread and the others on the pool,
/// and returns when all are done.
pub(crate) fn run_shares<S: Send>(shares: impl Iterator<Item = S>, work: impl Fn(S) + Sync) {
    let mut shares = shares;
    let Some(first) = shares.next() else { return };
    match helpers(threads()) {
        None => {
            work(first);
            shares.for_each(&work);
        }
        Some(pool) => pool.in_place_scope(|scope| {
            let work = &work;
            for s in shares {
                scope.spawn(move |_| work(s));
            }
            work(first);
        }),
    }
}

/// Whether this CPU has AVX2 and FMA, which the own kernels' fast paths use.
pub(crate) fn has_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether this CPU has AVX-512F.
pub(crate) fn has_avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}
