//! Lock files a writer killed mid-update left in a mirror. git rewrites a
//! file (a ref, `packed-refs`, `shallow`, `config`, `FETCH_HEAD`) by
//! creating `{file}.lock` beside it, writing that, and renaming it over the
//! file; it takes the lock by creating the file, and refuses while the file
//! exists. A process killed between the two (SIGKILL, the OOM killer, a
//! power cut) leaves the lock behind, and every later fetch into the mirror
//! would then fail until someone removed it by hand.
//!
//! A [`super::Mirror`] removes them when it opens: it holds the mirror's
//! write lock, so no writer of this process is under way, and only this
//! process writes its mirrors (a data directory belongs to one instance;
//! `startup::instance_id`). Whatever lock is there was left by a writer
//! that is gone, as with the temporary packs `pack::sweep_stale` removes.

use std::path::Path;

/// git's suffix for the file that stands for a lock.
const LOCK_SUFFIX: &str = ".lock";

/// Removes the lock files in the mirror's top directory and under its
/// `refs/`; how many it removed.
pub(super) fn sweep(mirror: &Path) -> usize {
    sweep_dir(mirror, false) + sweep_dir(&mirror.join("refs"), true)
}

/// Removes the lock files in `dir`, and with `deep` in the directories
/// below it (refs nest: `refs/heads/feature/x.lock`).
fn sweep_dir(dir: &Path, deep: bool) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        if kind.is_dir() {
            if deep {
                removed += sweep_dir(&entry.path(), true);
            }
        } else if kind.is_file()
            && entry.file_name().to_string_lossy().ends_with(LOCK_SUFFIX)
            && std::fs::remove_file(entry.path()).is_ok()
        {
            removed += 1;
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use git2::Oid;

    use super::super::super::fixtures::{commit, source_repository};
    use super::super::super::refs::mirror_ref;
    use super::super::super::remote::tests::spec;
    use super::super::Mirror;

    #[test]
    fn locks_a_killed_writer_left_are_removed_and_the_next_fetch_goes_through() {
        let (dir, source) = source_repository();
        let remote = spec(format!("file://{}", source.display()), true);
        let path = dir.path().join("mirror.git");
        commit(&source, "x.md", "before the crash\n");
        let mirror = Mirror::open(&path).expect("mirror");
        mirror.fetch(&remote, "main").expect("fetched");
        drop(mirror);

        // What a writer killed in the middle of a fetch leaves: a lock
        // beside each file git was rewriting, a nested ref's included.
        let branch = path.join(mirror_ref("main"));
        let locks = [
            branch.with_extension("lock"),
            path.join("refs/heads/feature/x.lock"),
            path.join("shallow.lock"),
            path.join("packed-refs.lock"),
            path.join("config.lock"),
            path.join("FETCH_HEAD.lock"),
        ];
        for lock in &locks {
            std::fs::create_dir_all(lock.parent().expect("a parent")).expect("its directory");
            std::fs::write(lock, "").expect("a lock file");
        }
        let kept = path.join("refs/heads/feature/notes");
        std::fs::write(&kept, "not a lock\n").expect("a file");
        let tip = commit(&source, "x.md", "after the crash\n");

        let mirror = Mirror::open(&path).expect("the mirror opens");
        for lock in &locks {
            assert!(!lock.exists(), "{} is still there", lock.display());
        }
        assert!(kept.exists(), "only lock files are removed");
        let head = mirror
            .fetch(&remote, "main")
            .expect("the fetch goes through");
        assert_eq!(head, Oid::from_str(&tip).expect("an id"));
    }
}
