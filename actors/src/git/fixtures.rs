//! Real repositories for the engine's tests, made with the `git` command.

use std::path::{Path, PathBuf};

pub(crate) fn git(dir: &Path, args: &[&str]) -> String {
    let out = std::process::Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "Herald Tests")
        .env("GIT_AUTHOR_EMAIL", "tests@herald.invalid")
        .env("GIT_COMMITTER_NAME", "Herald Tests")
        .env("GIT_COMMITTER_EMAIL", "tests@herald.invalid")
        .output()
        .expect("git runs");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

pub(crate) fn commit(dir: &Path, file: &str, content: &str) -> String {
    std::fs::write(dir.join(file), content).expect("write");
    git(dir, &["add", "-A"]);
    git(dir, &["commit", "-q", "--no-gpg-sign", "-m", content]);
    git(dir, &["rev-parse", "HEAD"])
}

/// A temporary directory with an empty repository, `source`, on `main`.
pub(crate) fn source_repository() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    let source = dir.path().join("source");
    std::fs::create_dir(&source).expect("dir");
    git(&source, &["init", "-q", "-b", "main"]);
    (dir, source)
}
