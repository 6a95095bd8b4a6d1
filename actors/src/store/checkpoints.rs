//! SQLite's write-ahead log checkpointed beside the writes, not in them.
//!
//! SQLite's own automatic checkpoint runs inside the commit that takes the
//! log past 1,000 pages, and its fsyncs (milliseconds each) then stand
//! between that commit and whatever waits on it: a first sync's events and
//! their first webhook, a lane's next batch. Herald turns it off on every
//! connection (`wal_autocheckpoint = 0`) and checkpoints from a task of its
//! own every [`EVERY`], in `PASSIVE` mode: it copies what no reader still
//! needs and never waits for a lock or holds one up. Commits stay durable
//! as before (WAL, `synchronous = NORMAL`); the log starts over once a
//! checkpoint has copied all of it, so it holds about [`EVERY`] of writes.

use std::time::Duration;

use sea_orm::{ConnectionTrait, DatabaseConnection};
use tokio::time::MissedTickBehavior;
use tokio_util::task::AbortOnDropHandle;

/// How often the log is checkpointed.
pub(super) const EVERY: Duration = Duration::from_millis(500);

/// Checkpoints `db` every `every`, until the handle is dropped.
pub(super) fn spawn(db: DatabaseConnection, every: Duration) -> AbortOnDropHandle<()> {
    AbortOnDropHandle::new(tokio::spawn(async move {
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut failing = false;
        loop {
            ticks.tick().await;
            match db
                .execute_unprepared("PRAGMA wal_checkpoint(PASSIVE)")
                .await
            {
                Ok(_) => failing = false,
                // Said once, not every tick, while it lasts.
                Err(err) if !failing => {
                    failing = true;
                    tracing::warn!(error = %err, "the database's write-ahead log could not be checkpointed; trying again");
                }
                Err(_) => {}
            }
        }
    }))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::crypto::Keyring;
    use crate::store::Store;

    /// The main database file's size.
    fn size(path: &std::path::Path) -> u64 {
        std::fs::metadata(path).map_or(0, |m| m.len())
    }

    async fn write_8_mib(store: &Store) {
        let db = store.db();
        db.execute_unprepared("CREATE TABLE bulk (x BLOB)")
            .await
            .expect("a table");
        let txn = store.begin_write().await.expect("a write");
        for _ in 0..2_048 {
            txn.execute_unprepared("INSERT INTO bulk VALUES (zeroblob(4096))")
                .await
                .expect("a row");
        }
        txn.commit().await.expect("committed");
    }

    #[tokio::test]
    async fn a_commit_leaves_the_checkpoint_to_the_task_beside_it() {
        let dir = tempfile::tempdir().expect("a directory");
        let path = dir.path().join("herald.db");
        let url = format!("sqlite://{}?mode=rwc", path.display());
        let keys = Arc::new(Keyring::from_hex(&Keyring::generate_hex(), &[]).expect("a fresh key"));

        // A task that never comes in time: the commit alone decides.
        let store = Store::connect_with(&url, keys.clone(), Duration::from_secs(3_600))
            .await
            .expect("a store");
        write_8_mib(&store).await;
        assert!(
            size(&path) < 1 << 20,
            "the commit checkpointed its 8 MiB itself: {} bytes",
            size(&path)
        );
        store.close().await.expect("closed");

        let path = dir.path().join("again.db");
        let url = format!("sqlite://{}?mode=rwc", path.display());
        let store = Store::connect_with(&url, keys, Duration::from_millis(50))
            .await
            .expect("a store");
        write_8_mib(&store).await;
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while size(&path) < 8 << 20 {
            assert!(
                std::time::Instant::now() < deadline,
                "the log was never checkpointed: {} bytes",
                size(&path)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
