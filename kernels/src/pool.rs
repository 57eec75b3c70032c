//! The threads the own kernels run on: as many as libtorch is allowed, the calling thread
//! included, so a kernel never competes with more threads than libtorch's own would.
//!
//! Where libtorch runs on GNU OpenMP (the Linux builds), the kernels run on the very threads
//! libtorch's operations use, through libgomp's `GOMP_parallel`. After each of its parallel
//! operations an OpenMP thread spins for a while waiting for the next; a kernel on a pool of
//! its own then shares a core with a spinning thread, and on a 2-core machine its second half
//! waits for a time slice. On the 2-core development machine, moving the kernels onto
//! libtorch's threads made a bf16 harvest 10-20% faster and MP-SAE's training step 30%.
//! Elsewhere a rayon pool of the same size takes the work.

use std::ffi::{c_uint, c_void};
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

/// The threads libtorch is allowed (`tch::set_num_threads`): the kernels use as many.
pub(crate) fn threads() -> usize {
    tch::get_num_threads().max(1) as usize
}

/// A pool of `threads - 1` threads to work beside the calling one (none for one thread),
/// rebuilt if libtorch's thread count changes.
fn helpers(threads: usize) -> Option<Arc<rayon::ThreadPool>> {
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

/// libgomp's entry to a parallel region: runs `f(data)` on the calling thread and on up to
/// `threads - 1` threads of its team, and returns when all have.
type GompParallel = unsafe extern "C" fn(extern "C" fn(*mut c_void), *mut c_void, c_uint, c_uint);

/// libgomp's `GOMP_parallel`, where the process has loaded libgomp (libtorch's Linux builds do).
fn openmp() -> Option<GompParallel> {
    static FOUND: OnceLock<Option<GompParallel>> = OnceLock::new();
    *FOUND.get_or_init(|| {
        // SAFETY: dlsym with a NUL-terminated name only looks the symbol up.
        let p = unsafe { libc::dlsym(libc::RTLD_DEFAULT, c"GOMP_parallel".as_ptr()) };
        // SAFETY: the symbol, where present, is libgomp's GOMP_parallel, whose C signature
        // (libgomp's ABI, stable since GCC 4.9) is `GompParallel`.
        (!p.is_null()).then(|| unsafe { std::mem::transmute::<*mut c_void, GompParallel>(p) })
    })
}

/// Runs `work` on every share and returns when all are done: on libtorch's OpenMP threads
/// where it has them (see the module's note), otherwise the first on the calling thread and
/// the others on a rayon pool. A share's result never depends on which thread ran it.
pub(crate) fn run_shares<S: Send>(shares: impl Iterator<Item = S>, work: impl Fn(S) + Sync) {
    let threads = threads();
    match openmp() {
        Some(parallel) if threads > 1 => on_openmp(parallel, threads, shares.collect(), &work),
        _ => on_rayon(shares, work),
    }
}

/// What each thread of an OpenMP team runs: shares taken in turn until none is left, a panic
/// kept to be raised again on the calling thread (it may not unwind through libgomp).
struct Team<'a, S, W> {
    shares: Vec<Mutex<Option<S>>>,
    next: AtomicUsize,
    work: &'a W,
    panic: Mutex<Option<Box<dyn std::any::Any + Send>>>,
}

extern "C" fn team_member<S: Send, W: Fn(S) + Sync>(data: *mut c_void) {
    // SAFETY: `on_openmp` passes a pointer to its `Team`, which outlives the parallel region.
    let team = unsafe { &*(data as *const Team<S, W>) };
    let taken = catch_unwind(AssertUnwindSafe(|| {
        while let Some(slot) = team.shares.get(team.next.fetch_add(1, Ordering::Relaxed)) {
            let share = slot.lock().unwrap_or_else(|e| e.into_inner()).take();
            if let Some(share) = share {
                (team.work)(share);
            }
        }
    }));
    if let Err(p) = taken {
        *team.panic.lock().unwrap_or_else(|e| e.into_inner()) = Some(p);
    }
}

fn on_openmp<S: Send, W: Fn(S) + Sync>(
    parallel: GompParallel,
    threads: usize,
    shares: Vec<S>,
    work: &W,
) {
    let n = shares.len().min(threads);
    let team = Team {
        shares: shares.into_iter().map(|s| Mutex::new(Some(s))).collect(),
        next: AtomicUsize::new(0),
        work,
        panic: Mutex::new(None),
    };
    if n > 0 {
        // SAFETY: `team_member::<S, W>` reads `data` as the `Team<S, W>` it points to, which
        // lives until GOMP_parallel returns, and GOMP_parallel returns only when every member
        // has; `Team` is shared across threads only through atomics, mutexes and `Sync` work.
        unsafe {
            parallel(
                team_member::<S, W>,
                &team as *const Team<S, W> as *mut c_void,
                n as c_uint,
                0,
            )
        };
    }
    if let Some(p) = team.panic.into_inner().unwrap_or_else(|e| e.into_inner()) {
        resume_unwind(p);
    }
}

/// The first share on the calling thread, the others on the rayon pool.
fn on_rayon<S: Send>(shares: impl Iterator<Item = S>, work: impl Fn(S) + Sync) {
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

/// Whether this CPU has AVX-512F and AVX-512BW (word-sized lanes, which bf16 kernels pack
/// their results with).
pub(crate) fn has_avx512_bw() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("avx512bw")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// libtorch's Linux builds bring libgomp; the kernels' speed there depends on finding it.
    #[cfg(target_os = "linux")]
    #[test]
    fn finds_libtorchs_openmp() {
        let _ = tch::get_num_threads(); // libtorch is loaded
        assert!(openmp().is_some());
    }

    #[test]
    fn runs_every_share_once_and_raises_a_share_panic() {
        let before = tch::get_num_threads();
        for threads in [1, 2, 3] {
            tch::set_num_threads(threads);
            let mut out = vec![0u32; 1000];
            run_shares(out.chunks_mut(7).enumerate(), |(i, c)| {
                c.iter_mut().for_each(|v| *v += i as u32 + 1)
            });
            let want: Vec<u32> = (0..1000).map(|j| j as u32 / 7 + 1).collect();
            assert_eq!(out, want, "{threads} threads");
            let raised = catch_unwind(|| {
                run_shares(0..10, |i| assert!(i != 6, "share six"));
            });
            let message = raised.expect_err("the panic reaches the caller");
            let text = message
                .downcast_ref::<&str>()
                .copied()
                .or_else(|| message.downcast_ref::<String>().map(|s| s.as_str()));
            assert_eq!(text, Some("share six"));
        }
        tch::set_num_threads(before);
    }
}
