//! Gives back the memory libgit2's indexer maps while a fetch resolves the
//! new pack's deltas.
//!
//! libgit2 reads a pack through windows it maps into memory, and closes the
//! least recently used ones once more than the process's cap is mapped (16
//! MiB, [`super::configure_process`]). The indexer that writes a fetched
//! pack takes that pack off the list of files the cap may close from
//! (`git_mwindow_free_all`, called as the pack grows), so every window that
//! delta resolution opens stays mapped until `git_indexer_commit` frees
//! them: about 200 MiB for the 100,000-file reference repository, counted
//! in Herald's RSS (libgit2 1.9, its issue #6097; BENCHMARKS.md, "Where the
//! 100,000-file peak comes from").
//!
//! While the deltas are resolved, the fetch's progress callback asks the
//! kernel, every [`INTERVAL`], to drop this process's pages of those
//! windows (`MADV_DONTNEED`). The windows are read-only maps of the pack
//! file, so nothing is lost: a page read again is mapped again from the page
//! cache, which keeps the file as long as the kernel can afford to. (The
//! pages stay charged to Herald's cgroup as page cache, which the kernel
//! reclaims under pressure.) A thin pack, completed with local objects after
//! its deltas are resolved, is read once more whole without a progress
//! report; that happens on incremental fetches, whose packs are small.
//!
//! Why this is sound: a page range is only dropped while it still maps the
//! pack, which holds as long as nobody unmaps the window. Only the fetch's
//! own thread does, because (1) the indexer's pack is off libgit2's list of
//! closable files, so no other thread's reads close its windows, and (2) a
//! mirror is written by one [`super::Mirror`] at a time in the process (it
//! holds the mirror's write lock while it is open, by the directory's
//! canonical place), so the `pack_git2_*` files of its pack directory are
//! this fetch's. The callback runs on that thread, between two deltas.
//! Point (1) is libgit2 1.9's behaviour, so the release switches itself off
//! on any other version (a test fails when libgit2 is upgraded, to have this
//! checked again).

use std::path::Path;
use std::time::{Duration, Instant};

/// How often, at most, the pages are released while deltas are resolved:
/// about 4 MiB of windows at the rate the 100,000-file pack is resolved.
const INTERVAL: Duration = Duration::from_millis(20);

/// The name libgit2 gives a pack while it is being indexed, in the pack
/// directory (`git_indexer_new`): `pack_git2_` and a random suffix.
const INDEXING_PACK_PREFIX: &str = "pack_git2_";

/// The libgit2 release whose indexer this was checked against.
const CHECKED_LIBGIT2: (u32, u32) = (1, 9);

/// Releases the indexer's mapped pages for one fetch into one mirror.
pub(super) struct IndexerWindows {
    /// `{canonical pack dir}/pack_git2_`, or `None` when releasing is off.
    prefix: Option<String>,
    next: Instant,
}

impl IndexerWindows {
    /// For a fetch into the bare mirror at `git_dir`, by the
    /// [`super::Mirror`] that holds its write lock.
    pub(super) fn new(git_dir: &Path) -> Self {
        let prefix = (cfg!(target_os = "linux") && libgit2_checked())
            .then(|| std::fs::canonicalize(git_dir.join("objects").join("pack")).ok())
            .flatten()
            .and_then(|dir| {
                dir.to_str()
                    .map(|dir| format!("{dir}/{INDEXING_PACK_PREFIX}"))
            });
        Self {
            prefix,
            next: Instant::now(),
        }
    }

    /// Called with each progress report of the fetch: releases the pages
    /// once the pack is received and its deltas are being resolved (before
    /// that the indexer closes its windows itself), at most every
    /// [`INTERVAL`].
    pub(super) fn on_progress(&mut self, progress: &git2::Progress<'_>) {
        let resolving =
            progress.total_deltas() > 0 && progress.received_objects() == progress.total_objects();
        if !resolving {
            return;
        }
        let now = Instant::now();
        if now < self.next {
            return;
        }
        self.next = now + INTERVAL;
        self.release();
    }

    /// Drops this process's pages of every read-only map of an indexing
    /// pack in the mirror; returns how many bytes of address space that
    /// covered.
    fn release(&self) -> usize {
        let Some(prefix) = &self.prefix else {
            return 0;
        };
        let Ok(maps) = std::fs::read_to_string("/proc/self/maps") else {
            return 0;
        };
        let released = maps
            .lines()
            .filter_map(|line| indexing_window(line, prefix))
            .map(|(start, len)| if drop_pages(start, len) { len } else { 0 })
            .sum();
        #[cfg(test)]
        RELEASED.set(RELEASED.get() + released);
        released
    }
}

#[cfg(test)]
thread_local! {
    /// Bytes released by fetches on this thread, for tests.
    static RELEASED: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// How many bytes of windows fetches on this thread released so far.
#[cfg(test)]
pub(super) fn released_on_this_thread() -> usize {
    RELEASED.get()
}

fn libgit2_checked() -> bool {
    let (major, minor, _) = git2::Version::get().libgit2_version();
    (major, minor) == CHECKED_LIBGIT2
}

/// The address range of a `/proc/self/maps` line (`start-end perms offset
/// dev inode path`) when it is a read-only map of a file under `prefix`.
fn indexing_window(line: &str, prefix: &str) -> Option<(usize, usize)> {
    let mut fields = line.splitn(6, ' ');
    let range = fields.next()?;
    let perms = fields.next()?;
    let path = fields.nth(3)?.trim_start();
    if !path.starts_with(prefix) || !perms.starts_with("r-") {
        return None;
    }
    let (start, end) = range.split_once('-')?;
    let start = usize::from_str_radix(start, 16).ok()?;
    let end = usize::from_str_radix(end, 16).ok()?;
    Some((start, end.checked_sub(start)?))
}

#[cfg(target_os = "linux")]
fn drop_pages(start: usize, len: usize) -> bool {
    // SAFETY: `start..start + len` is, per the module's argument, a
    // read-only map of a pack file that no other thread can unmap while this
    // runs; dropping the pages of such a map only makes the next read fault
    // them in again from the file. `madvise` touches no memory itself.
    #[allow(unsafe_code)]
    let answer = unsafe { libc::madvise(start as *mut libc::c_void, len, libc::MADV_DONTNEED) };
    answer == 0
}

#[cfg(not(target_os = "linux"))]
fn drop_pages(_start: usize, _len: usize) -> bool {
    false
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    /// Resident KiB of the maps of `path` in this process, from
    /// `/proc/self/smaps`.
    fn resident_kib(path: &Path) -> u64 {
        let smaps = std::fs::read_to_string("/proc/self/smaps").expect("smaps");
        let path = path.to_str().expect("utf-8 path");
        let mut inside = false;
        let mut total = 0;
        for line in smaps.lines() {
            // A map's header starts with its address range, `start-end`.
            if line.split(' ').next().is_some_and(|r| r.contains('-')) {
                inside = line.ends_with(path);
            } else if inside && let Some(rss) = line.strip_prefix("Rss:") {
                total += rss
                    .trim()
                    .trim_end_matches(" kB")
                    .parse::<u64>()
                    .expect("kB");
            }
        }
        total
    }

    #[test]
    fn the_release_is_checked_against_the_linked_libgit2() {
        // When this fails, libgit2 was upgraded: check that its indexer
        // still keeps the pack it writes off the list of closable files (the
        // module's point 1) before moving CHECKED_LIBGIT2 on, or remove the
        // release if the upgrade fixed the leak.
        assert!(
            libgit2_checked(),
            "linked libgit2 {:?}",
            git2::Version::get().libgit2_version()
        );
    }

    #[test]
    fn an_indexing_packs_pages_are_released_and_read_back_intact() {
        let dir = tempfile::tempdir().expect("temp dir");
        let pack_dir = dir.path().join("objects").join("pack");
        std::fs::create_dir_all(&pack_dir).expect("pack dir");
        let pack = pack_dir.join("pack_git2_a1b2c3");
        let other = pack_dir.join("pack-0123.pack");
        let len = 1 << 20;
        let content: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        std::fs::write(&pack, &content).expect("pack");
        std::fs::write(&other, &content).expect("other pack");

        let map = |path: &Path| {
            let file = std::fs::File::open(path).expect("open");
            // SAFETY: a fresh read-only shared map of a file this test owns;
            // it is read only through the slice below, while the map lives.
            #[allow(unsafe_code)]
            let ptr = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    len,
                    libc::PROT_READ,
                    libc::MAP_SHARED,
                    std::os::fd::AsRawFd::as_raw_fd(&file),
                    0,
                )
            };
            assert_ne!(ptr, libc::MAP_FAILED);
            ptr
        };
        let (pack_map, other_map) = (map(&pack), map(&other));
        // SAFETY: both maps are `len` bytes long and stay mapped until the
        // `munmap`s at the end of the test.
        #[allow(unsafe_code)]
        let (pack_bytes, other_bytes) = unsafe {
            (
                std::slice::from_raw_parts(pack_map.cast::<u8>(), len),
                std::slice::from_raw_parts(other_map.cast::<u8>(), len),
            )
        };
        let sum = |bytes: &[u8]| bytes.iter().map(|&b| u64::from(b)).sum::<u64>();
        let expected = sum(&content);
        assert_eq!(sum(pack_bytes), expected);
        assert_eq!(sum(other_bytes), expected);
        let (pack, other) = (
            std::fs::canonicalize(&pack).expect("canonical"),
            std::fs::canonicalize(&other).expect("canonical"),
        );
        assert_eq!(resident_kib(&pack), 1024);

        let released = IndexerWindows::new(dir.path()).release();

        assert_eq!(released, len, "only the indexing pack's map is released");
        assert_eq!(resident_kib(&pack), 0);
        assert_eq!(resident_kib(&other), 1024, "other packs keep their pages");
        assert_eq!(sum(pack_bytes), expected, "read back from the file");
        assert_eq!(resident_kib(&pack), 1024);

        // SAFETY: the maps made above, no longer read.
        #[allow(unsafe_code)]
        unsafe {
            libc::munmap(pack_map, len);
            libc::munmap(other_map, len);
        }
    }

    #[test]
    fn maps_lines_are_read_field_by_field() {
        let prefix = "/data/mirrors/r/objects/pack/pack_git2_";
        let line = "7f00a000-7f00e000 r--s 00400000 fd:01 1234     /data/mirrors/r/objects/pack/pack_git2_x y";
        assert_eq!(indexing_window(line, prefix), Some((0x7f00_a000, 0x4000)));
        let writable = line.replace("r--s", "rw-s");
        assert_eq!(indexing_window(&writable, prefix), None);
        let anonymous = "7f00a000-7f00e000 rw-p 00000000 00:00 0 ";
        assert_eq!(indexing_window(anonymous, prefix), None);
        let other = line.replace("pack_git2_x y", "pack-1.pack");
        assert_eq!(indexing_window(&other, prefix), None);
    }
}
