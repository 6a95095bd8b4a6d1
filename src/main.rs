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
/// freed its mmap threshold rises, so the next big bodies come from those
/// arenas and stay there. Two arenas, and bodies over 128 KiB always mapped
/// and unmapped, give that memory back (BENCHMARKS.md, "Tunings of the
/// delivery path").
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn bound_allocator_memory() {
    // SAFETY: `mallopt` only changes malloc's tunables; it is called once, at
    // the start of `main`, before Herald allocates anything large.
    #[allow(unsafe_code)]
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn bound_allocator_memory() {}
