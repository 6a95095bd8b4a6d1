//! The index a replay's progress is counted with holds replays' events
//! only. Every other event has no `replay_id`, yet its entry in the index
//! was rewritten each time its status changed: one more B-tree write for
//! every delivered event. A query for a replay's events (`replay_id = ?`)
//! still uses the index; SQLite and PostgreSQL both see that it implies
//! `replay_id IS NOT NULL`.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

/// The index before, on every event.
const EVERY_EVENT: &str = "ix_events_replay_status";
/// The index now, on replays' events only.
const REPLAYS_ONLY: &str = "ix_replay_events_status";

/// Replaces the index on every event with the one on replays' events only
/// (`replays_only`), or back. In one transaction, the drop first: a pooled
/// SQLite connection plans with the schema it last read, and only a
/// statement run on it brings that up to date, so the index created next is
/// checked against the schema as it is.
async fn replace_index(manager: &SchemaManager<'_>, replays_only: bool) -> Result<(), DbErr> {
    let (to, from) = if replays_only {
        (REPLAYS_ONLY, EVERY_EVENT)
    } else {
        (EVERY_EVENT, REPLAYS_ONLY)
    };
    let mut index = Index::create();
    index
        .name(to)
        .table(Events::Table)
        .col(Events::ReplayId)
        .col(Events::Status);
    if replays_only {
        index.and_where(Expr::col(Events::ReplayId).is_not_null());
    }
    let txn = manager.begin().await?;
    txn.drop_index(Index::drop().name(from).table(Events::Table).to_owned())
        .await?;
    txn.create_index(index.to_owned()).await?;
    txn.commit().await
}

// The trait's signature elides SchemaManager's lifetime; matching it needs the elision.
#[allow(elided_lifetimes_in_paths)]
#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        replace_index(manager, true).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        replace_index(manager, false).await
    }
}

#[derive(DeriveIden, Clone, Copy)]
enum Events {
    Table,
    ReplayId,
    Status,
}
