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
/// The index now, on replays' events only. A name of its own: SQLite's
/// other pooled connections may still hold the schema from before the old
/// index was dropped, and would refuse its name as taken.
const REPLAYS_ONLY: &str = "ix_replay_events_status";

fn replay_index(name: &str) -> IndexCreateStatement {
    let mut index = Index::create();
    index
        .name(name)
        .table(Events::Table)
        .col(Events::ReplayId)
        .col(Events::Status);
    if name == REPLAYS_ONLY {
        index.and_where(Expr::col(Events::ReplayId).is_not_null());
    }
    index.to_owned()
}

/// Creates index `to` and drops `from`.
async fn replace_index(manager: &SchemaManager<'_>, from: &str, to: &str) -> Result<(), DbErr> {
    manager.create_index(replay_index(to)).await?;
    manager
        .drop_index(Index::drop().name(from).table(Events::Table).to_owned())
        .await
}

// The trait's signature elides SchemaManager's lifetime; matching it needs the elision.
#[allow(elided_lifetimes_in_paths)]
#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        replace_index(manager, EVERY_EVENT, REPLAYS_ONLY).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        replace_index(manager, REPLAYS_ONLY, EVERY_EVENT).await
    }
}

#[derive(DeriveIden, Clone, Copy)]
enum Events {
    Table,
    ReplayId,
    Status,
}
