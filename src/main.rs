//! The `herald` binary: bounds the allocator's memory, then parses and runs
//! the command line ([`herald::cli::main`]); everything else, the async
//! runtime included, is the library.

fn main() -> std::process::ExitCode {
    bound_allocator_memory();
    herald::cli::main()
}

/// glibc's malloc, left to its defaults, keeps what Herald frees: up to
/// eight arenas per core (one per busy thread: tokio workers, the blocking
/// pool reading files, the database's workers), and after a big body is
/// freed its mmap threshold rises up to 32 MiB, so the next big bodies come
/// from those arenas and stay there. Two arenas and a fixed threshold bound
/// that. The threshold is 4 MiB: a file's blob, its body and a chunk's (a
/// chunk is at most 1 MiB of a file) come from the arenas and go back to
/// them for the next file. Mapped afresh for each file, as they were with a
/// threshold of 128 KiB, they cost a page fault for every 4 KiB written and
/// an unmap per buffer: a tenth of Herald's CPU while it delivered. Free
/// memory above 8 MiB at the top of an arena goes back to the system
/// (BENCHMARKS.md, "Tunings of the delivery path").
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn bound_allocator_memory() {
    // SAFETY: `mallopt` only changes malloc's tunables; it is called once, at
    // the start of `main`, before Herald allocates anything large.
    #[allow(unsafe_code)]
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 4 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 8 << 20);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn bound_allocator_memory() {}
