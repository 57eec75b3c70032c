//! What the pass asks of the operating system: folding threads at idle priority, their CPU
//! time, and a restart with OpenMP threads that wait passively.

use crate::error::{AnalysisError, Result};

/// The threads that fold codes into feature states. On Linux they run at idle priority: when
/// the encoder keeps every core busy (a CPU encoder does), folding takes only the cycles the
/// encoder leaves (its serial stretches, its waits on the reader), instead of preempting one of
/// its threads and leaving the others waiting at the next barrier. The encoder waits for the
/// folder only once two encoded batches are queued, and then the cores are free for it.
pub(crate) fn fold_pool() -> Result<rayon::ThreadPool> {
    rayon::ThreadPoolBuilder::new()
        .num_threads(rayon::current_num_threads())
        .thread_name(|i| format!("saescope-fold-{i}"))
        .start_handler(|_| idle_priority())
        .build()
        .map_err(|e| AnalysisError::Config(format!("cannot start the folding threads: {e}")))
}

/// Puts the calling thread at idle priority (Linux), for work that should take only the cycles
/// the encoder leaves.
#[cfg(target_os = "linux")]
pub(crate) fn idle_priority() {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: sched_setscheduler reads `param` and changes only the calling thread's policy
    // (pid 0); a failure leaves the thread at normal priority, which is harmless.
    unsafe {
        libc::sched_setscheduler(0, libc::SCHED_IDLE, &param);
    }
}

#[cfg(not(target_os = "linux"))]
pub(crate) fn idle_priority() {}

/// CPU time the calling thread has used, in seconds (0 where the clock is missing).
#[cfg(target_os = "linux")]
pub(crate) fn thread_cpu_seconds() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec through a valid pointer.
    let ok = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) } == 0;
    if ok {
        ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
    } else {
        0.0
    }
}

#[cfg(not(target_os = "linux"))]
pub(crate) fn thread_cpu_seconds() -> f64 {
    0.0
}

/// Marks the process that [`reexec_with_passive_openmp`] starts.
pub const PASSIVE_OPENMP_MARK: &str = "SAESCOPE_PASSIVE_OPENMP";

/// Starts the current program again, in place (same pid and streams), with OpenMP's wait policy
/// set to PASSIVE, unless the user chose a policy or this process is already that restart.
/// Returns only when it did not restart: `Some` with the error if the exec failed.
///
/// Why: by default libtorch's OpenMP threads (libgomp) spin for a while after every parallel
/// region, holding their cores, so the idle-priority folding threads get a core only once the
/// encoder blocks on them. With PASSIVE they sleep at once, and folding runs in the encoder's
/// idle cycles instead. libgomp reads the variable once, when it loads, before `main`, so only
/// a fresh process image can change it. For binaries: call it first in `main`, before any
/// thread starts.
#[cfg(unix)]
pub fn reexec_with_passive_openmp() -> Option<std::io::Error> {
    use std::os::unix::process::CommandExt;
    if std::env::var_os("OMP_WAIT_POLICY").is_some()
        || std::env::var_os(PASSIVE_OPENMP_MARK).is_some()
    {
        return None;
    }
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => return Some(e),
    };
    Some(
        std::process::Command::new(exe)
            .args(std::env::args_os().skip(1))
            .env("OMP_WAIT_POLICY", "PASSIVE")
            .env(PASSIVE_OPENMP_MARK, "1")
            .exec(),
    )
}

#[cfg(not(unix))]
pub fn reexec_with_passive_openmp() -> Option<std::io::Error> {
    None
}
