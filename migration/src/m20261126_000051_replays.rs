//! Replays (`POST /api/repositories/{id}/replay`): the changes between two
//! commits put back in front of one subscription as new events. A replay
//! is a row of its own (what was asked, how many events it wrote, whether
//! its `to` commit is still pinned in the mirror); each event it wrote
//! names it in `events.replay_id`, so its progress is counted from the
//! events still waiting, and stays right once retention prunes the others.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

// The trait's signature elides SchemaManager's lifetime; matching it needs the elision.
#[allow(elided_lifetimes_in_paths)]
#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Replays::Table)
                    .col(string(Replays::Id).primary_key())
                    .col(string(Replays::SubscriptionId))
                    .col(string(Replays::AppId))
                    .col(string(Replays::RepositoryId))
                    .col(string(Replays::FromCommit))
                    .col(string(Replays::ToCommit))
                    .col(big_integer(Replays::EventsTotal))
                    .col(boolean(Replays::Pinned).default(true))
                    .col(big_integer(Replays::CreatedAt))
                    .foreign_key(
                        ForeignKey::create()
                            .from(Replays::Table, Replays::SubscriptionId)
                            .to(Subscriptions::Table, Subscriptions::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("ix_replays_repository_pinned")
                    .table(Replays::Table)
                    .col(Replays::RepositoryId)
                    .col(Replays::Pinned)
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(Events::Table)
                    .add_column(string_null(Events::ReplayId))
                    .to_owned(),
            )
            .await?;
        // A replay's progress counts its events still waiting.
        manager
            .create_index(
                Index::create()
                    .name("ix_events_replay_status")
                    .table(Events::Table)
                    .col(Events::ReplayId)
                    .col(Events::Status)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_index(
                Index::drop()
                    .name("ix_events_replay_status")
                    .table(Events::Table)
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(Events::Table)
                    .drop_column(Events::ReplayId)
                    .to_owned(),
            )
            .await?;
        manager
            .drop_table(Table::drop().table(Replays::Table).to_owned())
            .await
    }
}

#[derive(DeriveIden)]
enum Replays {
    Table,
    Id,
    SubscriptionId,
    AppId,
    RepositoryId,
    FromCommit,
    ToCommit,
    EventsTotal,
    Pinned,
    CreatedAt,
}

#[derive(DeriveIden)]
enum Subscriptions {
    Table,
    Id,
}

#[derive(DeriveIden)]
enum Events {
    Table,
    ReplayId,
    Status,
}
