//! What the mirror must keep: each snapshot's commit (and each replay's
//! `to` commit, under the replay's id) stays pinned until no pending or
//! dead event refers to it; these find the pins that can go and record
//! that they went.

use entity::{EventStatus, event, replay, snapshot};
use sea_orm::sea_query::{Expr, ExprTrait, Query, SelectStatement};
use sea_orm::{ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QuerySelect};

use super::outbox::BATCH;
use super::{Store, StoreError};
use crate::ids::{ReplayId, RepoId};

impl Store {
    /// Pinned snapshots (and replays) of a repository that no pending or
    /// dead event refers to any more: their commits need not stay pinned in
    /// the mirror (the current one stays reachable through the branch, and a
    /// diff falls back to the stored manifest when it is gone).
    pub async fn settled_snapshots(&self, repo: &RepoId) -> Result<Vec<String>, StoreError> {
        let waiting = still_waiting(repo, event::Column::SnapshotId);
        let mut settled: Vec<String> = snapshot::Entity::find()
            .select_only()
            .column(snapshot::Column::Id)
            .filter(snapshot::Column::RepositoryId.eq(repo.as_str()))
            .filter(snapshot::Column::Pinned.eq(true))
            .filter(snapshot::Column::Id.not_in_subquery(waiting))
            .into_tuple()
            .all(&self.db)
            .await?;
        // A replay pins its `to` commit under its own id, the same way.
        settled.extend(settled_replays(&self.db, repo).await?);
        Ok(settled)
    }

    /// Records that the mirror no longer pins these snapshots (and replays).
    pub async fn mark_unpinned(&self, snapshots: &[String]) -> Result<(), StoreError> {
        for batch in snapshots.chunks(BATCH) {
            snapshot::Entity::update_many()
                .col_expr(snapshot::Column::Pinned, Expr::value(false))
                .filter(snapshot::Column::Id.is_in(batch.iter().cloned()))
                .exec(&self.db)
                .await?;
        }
        mark_replays_unpinned(&self.db, snapshots).await
    }
}

/// The `pin` column (`snapshot_id` or `replay_id`) of `repo`'s events still
/// pending or dead: the pins they hold.
fn still_waiting(repo: &RepoId, pin: event::Column) -> SelectStatement {
    Query::select()
        .column(pin)
        .from(event::Entity)
        .and_where(Expr::col(event::Column::RepositoryId).eq(repo.as_str()))
        .and_where(
            Expr::col(event::Column::Status).is_in([EventStatus::Pending, EventStatus::Dead]),
        )
        .and_where(Expr::col(pin).is_not_null())
        .to_owned()
}

/// Replays of `repo` still pinned in its mirror whose events are all
/// settled (none pending or dead): their pins can go, as settled
/// snapshots' do.
async fn settled_replays<C: ConnectionTrait>(
    conn: &C,
    repo: &RepoId,
) -> Result<Vec<String>, StoreError> {
    let waiting = still_waiting(repo, event::Column::ReplayId);
    Ok(replay::Entity::find()
        .select_only()
        .column(replay::Column::Id)
        .filter(replay::Column::RepositoryId.eq(repo.as_str()))
        .filter(replay::Column::Pinned.eq(true))
        .filter(replay::Column::Id.not_in_subquery(waiting))
        .into_tuple()
        .all(conn)
        .await?)
}

/// Records that the mirror no longer pins these replays' commits (ids that
/// are not replays' are ignored).
async fn mark_replays_unpinned<C: ConnectionTrait>(
    conn: &C,
    ids: &[String],
) -> Result<(), StoreError> {
    let replays: Vec<&String> = ids
        .iter()
        .filter(|id| id.starts_with(ReplayId::PREFIX))
        .collect();
    for batch in replays.chunks(BATCH) {
        replay::Entity::update_many()
            .col_expr(replay::Column::Pinned, Expr::value(false))
            .filter(replay::Column::Id.is_in(batch.iter().map(|id| id.as_str())))
            .exec(conn)
            .await?;
    }
    Ok(())
}
