//! Threads for the work a delivery lane does beside its sends: files read
//! and rendered ahead, chunks signed ahead, the next batch of events read
//! and delivered ones written. The lane does not wait for that work now; it
//! waits for the answer to the request in flight, and for nothing else.
//!
//! On a machine with few cores both kinds of work want a core at the same
//! moment: an answer arrives while a file is being rendered ahead. Run at
//! the same priority, the lane's thread waited behind the renderer for the
//! rest of its time slice, and each request left that much later
//! (BENCHMARKS.md, "Where Herald's CPU goes while it delivers"). Here that
//! work runs on a blocking pool of its own whose threads run at a lower
//! priority ([`NICENESS`]): the kernel then gives the core to the lane as
//! soon as its answer is in, and the renderer takes it back while the next
//! request is in flight. Idle cores still run it at full speed; a lower
//! priority only decides who goes first when both want the same core.
//! SQLite's connection threads, where the lanes' writes and batch reads
//! run, are lowered the same way (`store::below_the_lanes`).

use std::sync::OnceLock;

use tokio::runtime::{Builder, Runtime};
use tokio::task::JoinHandle;

/// The nice value of the threads that run work beside the lanes: 10 steps
/// below the lanes' own. At the same load the kernel gives such a thread
/// about a tenth of a core's time against a thread at 0, and lets a waking
/// thread at 0 take the core from it.
pub const NICENESS: i32 = 10;

/// Runs `work` on a thread of the pool for work beside the lanes.
pub fn spawn_blocking<T, F>(work: F) -> JoinHandle<T>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    pool().spawn_blocking(work)
}

/// A current-thread runtime that no thread drives, used only for its
/// blocking pool, whose threads start at [`NICENESS`]. What they run and
/// wait for (the database's futures, the mirror's reads) belongs to the
/// runtime that handed the work over.
fn pool() -> &'static Runtime {
    static POOL: OnceLock<Runtime> = OnceLock::new();
    POOL.get_or_init(|| {
        Builder::new_current_thread()
            .thread_name("herald-beside")
            .on_thread_start(lower_priority)
            .build()
            .expect("a runtime for blocking threads can be built")
    })
}

/// Sets the calling thread's nice value [`NICENESS`] steps above the
/// process's (its main thread's, whatever thread started this one), at
/// most 19. Raising a nice value needs no privilege; should it fail all the
/// same, the thread runs at the lanes' priority, as every thread did before.
#[cfg(target_os = "linux")]
pub(crate) fn lower_priority() {
    // SAFETY: `getpid`, `gettid`, `getpriority` and `setpriority` take and
    // return plain integers; on Linux `PRIO_PROCESS` with a thread id reads
    // or changes that thread alone (the process id is its main thread's).
    #[allow(unsafe_code)]
    let lowered = unsafe {
        let process = libc::getpriority(libc::PRIO_PROCESS, libc::getpid() as libc::id_t);
        let thread = libc::gettid() as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, thread, (process + NICENESS).min(19))
    };
    if lowered != 0 {
        tracing::debug!(
            error = %std::io::Error::last_os_error(),
            "a thread for work beside the lanes keeps its priority"
        );
    }
}

#[cfg(not(target_os = "linux"))]
pub(crate) fn lower_priority() {}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    /// The nice value of the calling thread, and of the process.
    fn niceness() -> (i32, i32) {
        // SAFETY: as in `lower_priority`; `getpriority` only reads.
        #[allow(unsafe_code)]
        unsafe {
            (
                libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t),
                libc::getpriority(libc::PRIO_PROCESS, libc::getpid() as libc::id_t),
            )
        }
    }

    #[tokio::test]
    async fn work_beside_the_lanes_runs_below_their_priority() {
        let (lanes, process) = niceness();
        let (beside, _) = spawn_blocking(niceness).await.expect("the work ran");
        assert_eq!(beside, (process + NICENESS).min(19));
        assert!(
            beside > lanes || lanes == 19,
            "{beside} is not below the lanes' {lanes}"
        );
        // The thread that handed the work over keeps its own priority.
        assert_eq!(niceness().0, lanes);
        // A thread started from a thread of the pool is not lowered twice.
        let (nested, _) = spawn_blocking(|| {
            std::thread::scope(|scope| {
                scope
                    .spawn(|| {
                        let runtime = Builder::new_current_thread().build().expect("runtime");
                        runtime.block_on(async { spawn_blocking(niceness).await })
                    })
                    .join()
            })
        })
        .await
        .expect("the work ran")
        .expect("the thread ran")
        .expect("the nested work ran");
        assert_eq!(nested, beside);
    }

    #[tokio::test]
    async fn work_beside_the_lanes_awaits_the_callers_runtime() {
        let caller = tokio::runtime::Handle::current();
        let (tx, rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            let _ = tx.send(7);
        });
        let got = spawn_blocking(move || caller.block_on(rx))
            .await
            .expect("the work ran");
        assert_eq!(got, Ok(7));
    }
}
