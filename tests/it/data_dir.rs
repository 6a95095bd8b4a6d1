//! What Herald creates in its data directory is private: the directory and
//! the mirrors 0700, the SQLite database and its WAL and shared-memory files
//! 0600, whatever the umask.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::helpers::{Remotes, TestApp, watch};

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|err| panic!("{}: {err}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

#[tokio::test]
async fn the_data_directory_and_database_are_private_under_umask_022() {
    // The usual umask, under which files are created world-readable; the
    // server inherits it.
    #[allow(unsafe_code)]
    // SAFETY: umask has no memory effects; it only sets the process's mask.
    unsafe {
        libc::umask(0o022);
    }
    let remotes = Remotes::serve(&["acme/widgets.git"]);
    // SQLite in the data directory, even when the suite runs on PostgreSQL.
    let app = TestApp::builder()
        .fast()
        .env("HERALD__DATABASE__URL", "")
        .spawn()
        .await;
    let client = app.onboard("acme").await;
    let id = watch(&app, &client, &remotes.url("acme/widgets.git")).await;
    let head = remotes.repo.head();
    app.wait_for_commit(&client, &id, &head).await;

    let data = app.data_path();
    assert_eq!(mode(&data), 0o700, "data_dir");
    assert_eq!(mode(&data.join("mirrors")), 0o700, "mirrors");
    assert_eq!(app.mirror_dirs().len(), 1, "a mirror was written");
    for file in [
        "herald.db",
        "herald.db-wal",
        "herald.db-shm",
        "encryption.key",
        "instance.id",
    ] {
        assert_eq!(mode(&data.join(file)), 0o600, "{file}");
    }
}
