//! Indexes for events that are kept only for a while
//! (`delivery.event_retention`): a lane finds its subscription's first
//! undelivered event without walking the delivered ones, and retention finds
//! the delivered and skipped events past their time.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

// The trait's signature elides SchemaManager's lifetime; matching it needs the elision.
#[allow(elided_lifetimes_in_paths)]
#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_index(
                Index::create()
                    .name("ix_events_subscription_status_seq")
                    .table(Events::Table)
                    .col(Events::SubscriptionId)
                    .col(Events::Status)
                    .col(Events::Seq)
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

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for name in [
            "ix_events_subscription_status_seq",
            "ix_events_status_delivered_at",
        ] {
            manager
                .drop_index(Index::drop().name(name).table(Events::Table).to_owned())
                .await?;
        }
        Ok(())
    }
}

#[derive(DeriveIden)]
enum Events {
    Table,
    SubscriptionId,
    Status,
    Seq,
    DeliveredAt,
}
