//! The async runtime Herald runs on, and how many worker threads it has.
//!
//! A worker thread per core is tokio's default. Herald's async workers
//! mostly hand bytes between sockets and tasks: rendering, signing, git and
//! SQLite run on threads of their own (`actors::background`, the scan and
//! blocking pools). With a worker per core, every task woken from another
//! thread (a broker client's answer, work done beside a lane) woke one
//! worker, which, finding the task, woke the next to look for more work,
//! which found none and slept again: a context switch on a second core for
//! each webhook, taking that core from the receiver or the broker the lane
//! was waiting for (BENCHMARKS.md, "The reference workload"). Half the
//! cores, rounded up, leaves them that room; `TOKIO_WORKER_THREADS` (tokio's
//! own variable) sets another number.

use anyhow::{Context, bail};

/// The variable that sets the number of worker threads.
const WORKERS_VARIABLE: &str = "TOKIO_WORKER_THREADS";

/// A multi-threaded runtime with [`workers`] worker threads.
pub fn build() -> anyhow::Result<tokio::runtime::Runtime> {
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let set = std::env::var(WORKERS_VARIABLE).ok();
    let workers = workers(set.as_deref(), cores)?;
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// Worker threads for `cores` cores: `set` (the variable's value) when
/// given, half the cores, rounded up, otherwise.
fn workers(set: Option<&str>, cores: usize) -> anyhow::Result<usize> {
    match set.map(str::trim) {
        None | Some("") => Ok(cores.div_ceil(2).max(1)),
        Some(value) => match value.parse::<usize>() {
            Ok(0) | Err(_) => {
                bail!("{WORKERS_VARIABLE} must be a positive number of threads, not {value:?}")
            }
            Ok(n) => Ok(n),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_the_cores_rounded_up_unless_the_variable_says() {
        let cases = [
            (None, 1, 1),
            (None, 2, 1),
            (None, 3, 2),
            (None, 16, 8),
            (Some(""), 4, 2),
            (Some("3"), 2, 3),
            (Some(" 4 "), 2, 4),
        ];
        for (set, cores, expected) in cases {
            let got = workers(set, cores).expect("a number of threads");
            assert_eq!(got, expected, "{set:?} on {cores} cores");
        }
        for bad in ["0", "-1", "two", "1.5"] {
            let err = workers(Some(bad), 2).expect_err(bad).to_string();
            assert!(err.contains(WORKERS_VARIABLE) && err.contains(bad), "{err}");
        }
    }
}
