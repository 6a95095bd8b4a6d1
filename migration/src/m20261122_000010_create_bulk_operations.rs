//! Bulk operations live in the database, so any instance reports their
//! progress, takes a cancellation, and takes over one whose runner died.

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
                    .table(BulkOperations::Table)
                    .col(string(BulkOperations::Id).primary_key())
                    .col(string(BulkOperations::Kind))
                    .col(string_null(BulkOperations::AppId))
                    .col(string(BulkOperations::Status))
                    .col(big_integer(BulkOperations::Total))
                    .col(big_integer(BulkOperations::Done).default(0))
                    .col(big_integer(BulkOperations::Failed).default(0))
                    .col(string_null(BulkOperations::LastEventId))
                    .col(string_null(BulkOperations::Cursor))
                    .col(boolean(BulkOperations::CancelRequested).default(false))
                    .col(string_null(BulkOperations::Runner))
                    .col(integer(BulkOperations::Claims).default(0))
                    .col(text_null(BulkOperations::Error))
                    .col(big_integer(BulkOperations::StartedAt))
                    .col(big_integer(BulkOperations::UpdatedAt))
                    .col(big_integer_null(BulkOperations::FinishedAt))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("ix_bulk_operations_status_updated")
                    .table(BulkOperations::Table)
                    .col(BulkOperations::Status)
                    .col(BulkOperations::UpdatedAt)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(BulkOperations::Table).to_owned())
            .await
    }
}

#[derive(DeriveIden)]
enum BulkOperations {
    Table,
    Id,
    Kind,
    AppId,
    Status,
    Total,
    Done,
    Failed,
    LastEventId,
    Cursor,
    CancelRequested,
    Runner,
    Claims,
    Error,
    StartedAt,
    UpdatedAt,
    FinishedAt,
}
