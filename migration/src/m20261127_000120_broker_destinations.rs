//! An app may deliver to a broker (`delivery` = `nats`, `amqp` or `redis`):
//! where (its URL, which carries the broker's credentials, and the subject,
//! exchange and routing key, or stream templates) is one JSON document,
//! sealed with the secrets key like the app's signing key. Apps stored
//! before have none.

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
                    .add_column(text_null(Apps::DestinationCiphertext))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(Apps::Table)
                    .drop_column(Apps::DestinationCiphertext)
                    .to_owned(),
            )
            .await
    }
}

#[derive(DeriveIden)]
enum Apps {
    Table,
    DestinationCiphertext,
}
