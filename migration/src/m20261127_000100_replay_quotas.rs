//! Replay quotas (docs/limits.md): a replay's row is written when its git
//! work starts, holding a lease (`running_until`) while it runs, so that
//! every instance sharing the database counts an app's replays under way;
//! and each written replay records the database bytes it wrote (`bytes`),
//! which an app may spend only so fast. Replays written before count as
//! finished, having written nothing.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

const INDEX: &str = "ix_replays_app_created";

// The trait's signature elides SchemaManager's lifetime; matching it needs the elision.
#[allow(elided_lifetimes_in_paths)]
#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // One column an ALTER: SQLite adds no more at once.
        manager
            .alter_table(
                Table::alter()
                    .table(Replays::Table)
                    .add_column(big_integer(Replays::Bytes).default(0))
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(Replays::Table)
                    .add_column(big_integer_null(Replays::RunningUntil))
                    .to_owned(),
            )
            .await?;
        // An app's replays under way and those of its last hour.
        manager
            .create_index(
                Index::create()
                    .name(INDEX)
                    .table(Replays::Table)
                    .col(Replays::AppId)
                    .col(Replays::CreatedAt)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_index(Index::drop().name(INDEX).table(Replays::Table).to_owned())
            .await?;
        for column in [Replays::RunningUntil, Replays::Bytes] {
            manager
                .alter_table(
                    Table::alter()
                        .table(Replays::Table)
                        .drop_column(column)
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }
}

#[derive(DeriveIden)]
enum Replays {
    Table,
    AppId,
    CreatedAt,
    Bytes,
    RunningUntil,
}
