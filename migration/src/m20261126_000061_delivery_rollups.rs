//! Per-minute rollups for the console's delivery-health charts, so a chart
//! over a day reads at most 1,440 rows per app instead of every delivery
//! attempt: `delivery_rollups` ((app, minute) → attempts, delivered,
//! failed, a latency histogram), `pending_samples` ((subscription, minute)
//! → events pending), and the index on `delivery_attempts.attempted_at`
//! the rollup reads the last minutes by. Both tables cascade with their app
//! (and subscription), and upkeep prunes them after
//! `delivery.rollup_retention`.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

/// The latency histogram's buckets: `bucket_00` … `bucket_12` (the
/// store's `rollups::LATENCY_BOUNDS_MS` gives their upper bounds).
const LATENCY_BUCKETS: usize = 13;

#[derive(DeriveMigrationName)]
pub struct Migration;

// The trait's signature elides SchemaManager's lifetime; matching it needs the elision.
#[allow(elided_lifetimes_in_paths)]
#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let mut rollups = Table::create();
        rollups
            .table(DeliveryRollups::Table)
            .col(string(DeliveryRollups::AppId))
            .col(big_integer(DeliveryRollups::Minute))
            .col(big_integer(DeliveryRollups::Attempts))
            .col(big_integer(DeliveryRollups::Delivered))
            .col(big_integer(DeliveryRollups::Failed))
            .col(big_integer(DeliveryRollups::LatencyMaxMs));
        for bucket in 0..LATENCY_BUCKETS {
            rollups.col(big_integer(Alias::new(format!("bucket_{bucket:02}"))).default(0));
        }
        manager
            .create_table(
                rollups
                    .primary_key(
                        Index::create()
                            .col(DeliveryRollups::AppId)
                            .col(DeliveryRollups::Minute),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .from(DeliveryRollups::Table, DeliveryRollups::AppId)
                            .to(Apps::Table, Apps::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("ix_delivery_rollups_minute")
                    .table(DeliveryRollups::Table)
                    .col(DeliveryRollups::Minute)
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(PendingSamples::Table)
                    .col(string(PendingSamples::SubscriptionId))
                    .col(big_integer(PendingSamples::Minute))
                    .col(string(PendingSamples::AppId))
                    .col(big_integer(PendingSamples::Pending))
                    .primary_key(
                        Index::create()
                            .col(PendingSamples::SubscriptionId)
                            .col(PendingSamples::Minute),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .from(PendingSamples::Table, PendingSamples::SubscriptionId)
                            .to(Subscriptions::Table, Subscriptions::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .from(PendingSamples::Table, PendingSamples::AppId)
                            .to(Apps::Table, Apps::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("ix_pending_samples_app_minute")
                    .table(PendingSamples::Table)
                    .col(PendingSamples::AppId)
                    .col(PendingSamples::Minute)
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("ix_pending_samples_minute")
                    .table(PendingSamples::Table)
                    .col(PendingSamples::Minute)
                    .to_owned(),
            )
            .await?;

        // The rollup reads the attempts of the last minutes.
        manager
            .create_index(
                Index::create()
                    .name("ix_delivery_attempts_attempted_at")
                    .table(DeliveryAttempts::Table)
                    .col(DeliveryAttempts::AttemptedAt)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_index(
                Index::drop()
                    .name("ix_delivery_attempts_attempted_at")
                    .table(DeliveryAttempts::Table)
                    .to_owned(),
            )
            .await?;
        manager
            .drop_table(Table::drop().table(PendingSamples::Table).to_owned())
            .await?;
        manager
            .drop_table(Table::drop().table(DeliveryRollups::Table).to_owned())
            .await
    }
}

#[derive(DeriveIden)]
enum DeliveryRollups {
    Table,
    AppId,
    Minute,
    Attempts,
    Delivered,
    Failed,
    LatencyMaxMs,
}

#[derive(DeriveIden)]
enum PendingSamples {
    Table,
    SubscriptionId,
    Minute,
    AppId,
    Pending,
}

#[derive(DeriveIden)]
enum Apps {
    Table,
    Id,
}

#[derive(DeriveIden)]
enum Subscriptions {
    Table,
    Id,
}

#[derive(DeriveIden)]
enum DeliveryAttempts {
    Table,
    AttemptedAt,
}
