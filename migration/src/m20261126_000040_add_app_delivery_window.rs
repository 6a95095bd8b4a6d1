//! An app chooses how many webhooks of one subscription may be in flight
//! at once (`PATCH /api/app {"window": N}`, 1 to 64). Every app stored
//! before keeps 1: strict order within a subscription. The column is not
//! named `window`, an SQL keyword.

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
            .alter_table(
                Table::alter()
                    .table(Apps::Table)
                    .add_column(integer(Apps::DeliveryWindow).default(1))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(Apps::Table)
                    .drop_column(Apps::DeliveryWindow)
                    .to_owned(),
            )
            .await
    }
}

#[derive(DeriveIden)]
enum Apps {
    Table,
    DeliveryWindow,
}
