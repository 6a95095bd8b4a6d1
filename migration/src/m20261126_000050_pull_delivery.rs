//! Pull delivery: an app chooses between webhooks (`push`, every app stored
//! before) and consuming its events itself (`pull`, `GET /api/stream` and
//! `GET /api/changes`). A pull app's events get a place in its stream the
//! first time a consumer reads past them (`events.stream_pos`, numbered from
//! `apps.stream_next`), so the stream's order is the order in which they
//! were committed, whichever instance wrote them. The index finds an app's
//! events not placed yet, oldest first, and its stream from a place on.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

// The trait's signature elides SchemaManager's lifetime; matching it needs the elision.
#[allow(elided_lifetimes_in_paths)]
#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // SQLite alters one column per statement.
        manager
            .alter_table(
                Table::alter()
                    .table(Apps::Table)
                    .add_column(string_len(Apps::DeliveryMode, 8).default("push"))
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(Apps::Table)
                    .add_column(big_integer(Apps::StreamNext).default(1))
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(Events::Table)
                    .add_column(big_integer_null(Events::StreamPos))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("ix_events_app_stream_pos")
                    .table(Events::Table)
                    .col(Events::AppId)
                    .col(Events::StreamPos)
                    .col(Events::CreatedAt)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_index(
                Index::drop()
                    .name("ix_events_app_stream_pos")
                    .table(Events::Table)
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(Events::Table)
                    .drop_column(Events::StreamPos)
                    .to_owned(),
            )
            .await?;
        for column in [Apps::StreamNext, Apps::DeliveryMode] {
            manager
                .alter_table(
                    Table::alter()
                        .table(Apps::Table)
                        .drop_column(column)
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }
}

#[derive(DeriveIden)]
enum Apps {
    Table,
    DeliveryMode,
    StreamNext,
}

#[derive(DeriveIden)]
enum Events {
    Table,
    AppId,
    StreamPos,
    CreatedAt,
}
