//! A breaker's probe is claimed in the database (`breakers.probe_until`), so
//! exactly one request probes an endpoint after a cooldown, however many
//! lanes, actors or instances are waiting.

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
                    .table(Breakers::Table)
                    .add_column(big_integer_null(Breakers::ProbeUntil))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(Breakers::Table)
                    .drop_column(Breakers::ProbeUntil)
                    .to_owned(),
            )
            .await
    }
}

#[derive(DeriveIden)]
enum Breakers {
    Table,
    ProbeUntil,
}
