//! What an app already holds of a repository it never got a snapshot from
//! Herald for: the files another system delivered to it (an import from
//! Docora). A subscription with rows here starts from them instead of from
//! nothing: its first snapshot sends only the difference, and the rows go
//! in the same transaction.

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
                    .table(HeldFiles::Table)
                    .col(string(HeldFiles::SubscriptionId))
                    .col(string(HeldFiles::Path))
                    .col(string(HeldFiles::Sha256))
                    .primary_key(
                        Index::create()
                            .col(HeldFiles::SubscriptionId)
                            .col(HeldFiles::Path),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .from(HeldFiles::Table, HeldFiles::SubscriptionId)
                            .to(Subscriptions::Table, Subscriptions::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(HeldFiles::Table).to_owned())
            .await
    }
}

#[derive(DeriveIden)]
enum HeldFiles {
    Table,
    SubscriptionId,
    Path,
    Sha256,
}

#[derive(DeriveIden)]
enum Subscriptions {
    Table,
    Id,
}
