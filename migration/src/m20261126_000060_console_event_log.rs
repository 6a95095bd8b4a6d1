//! What the console's event log, event pages and repository pages read.
//!
//! - Events are listed newest first by id (ids are time-ordered), with or
//!   without an app, a repository or a commit: an index for each, so a page
//!   is a short walk of one index whatever the table's size.
//! - The index retention reads (status, delivered time) ends with the id:
//!   dead events (never delivered) are then listed newest first straight
//!   from it, with no more to write when an event changes status.
//! - Each delivery attempt keeps the `webhook-timestamp` it was signed with
//!   and the `traceparent` it carried, so an attempt's request headers can
//!   be shown as they were sent (the signatures themselves are not kept).
//! - `scans` keeps each repository's recent scans: when, how long, the
//!   commit read, how many files changed and how it ended; polls in a row
//!   that find the branch unchanged share one row that counts them.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

const EVENT_INDEXES: [(&str, Events); 3] = [
    ("ix_events_app_id_order", Events::AppId),
    ("ix_events_repository_id_order", Events::RepositoryId),
    ("ix_events_commit", Events::CommitSha),
];

// The trait's signature elides SchemaManager's lifetime; matching it needs the elision.
#[allow(elided_lifetimes_in_paths)]
#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for (name, column) in EVENT_INDEXES {
            let mut index = Index::create();
            index.name(name).table(Events::Table).col(column);
            if !matches!(column, Events::CommitSha) {
                index.col(Events::Id);
            }
            manager.create_index(index.to_owned()).await?;
        }
        manager
            .drop_index(
                Index::drop()
                    .name("ix_events_status_delivered_at")
                    .table(Events::Table)
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("ix_events_status_delivered_at_id")
                    .table(Events::Table)
                    .col(Events::Status)
                    .col(Events::DeliveredAt)
                    .col(Events::Id)
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(DeliveryAttempts::Table)
                    .add_column(big_integer_null(DeliveryAttempts::RequestTimestamp))
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(DeliveryAttempts::Table)
                    .add_column(string_null(DeliveryAttempts::Traceparent))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(Scans::Table)
                    .col(string(Scans::Id).primary_key())
                    .col(string(Scans::RepositoryId))
                    .col(big_integer(Scans::StartedAt))
                    .col(big_integer(Scans::LastStartedAt))
                    .col(big_integer(Scans::Times).default(1))
                    .col(big_integer(Scans::DurationMs))
                    .col(string(Scans::Outcome))
                    .col(string_null(Scans::CommitSha))
                    .col(big_integer(Scans::Changes))
                    .col(big_integer(Scans::Events))
                    .col(string_null(Scans::Error))
                    .foreign_key(
                        ForeignKey::create()
                            .from(Scans::Table, Scans::RepositoryId)
                            .to(Repositories::Table, Repositories::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("ix_scans_repository")
                    .table(Scans::Table)
                    .col(Scans::RepositoryId)
                    .col(Scans::Id)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(Scans::Table).to_owned())
            .await?;
        for column in [
            DeliveryAttempts::RequestTimestamp,
            DeliveryAttempts::Traceparent,
        ] {
            manager
                .alter_table(
                    Table::alter()
                        .table(DeliveryAttempts::Table)
                        .drop_column(column)
                        .to_owned(),
                )
                .await?;
        }
        for (name, _) in EVENT_INDEXES {
            manager
                .drop_index(Index::drop().name(name).table(Events::Table).to_owned())
                .await?;
        }
        manager
            .drop_index(
                Index::drop()
                    .name("ix_events_status_delivered_at_id")
                    .table(Events::Table)
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("ix_events_status_delivered_at")
                    .table(Events::Table)
                    .col(Events::Status)
                    .col(Events::DeliveredAt)
                    .to_owned(),
            )
            .await
    }
}

#[derive(DeriveIden, Clone, Copy)]
enum Events {
    Table,
    Id,
    AppId,
    RepositoryId,
    CommitSha,
    Status,
    DeliveredAt,
}

#[derive(DeriveIden)]
enum DeliveryAttempts {
    Table,
    RequestTimestamp,
    Traceparent,
}

#[derive(DeriveIden)]
enum Repositories {
    Table,
    Id,
}

#[derive(DeriveIden)]
enum Scans {
    Table,
    Id,
    RepositoryId,
    StartedAt,
    LastStartedAt,
    Times,
    DurationMs,
    Outcome,
    CommitSha,
    Changes,
    Events,
    Error,
}
