//! The initial schema: apps, repositories, subscriptions, snapshots and their
//! manifest, the event outbox, delivery attempts, inbound hooks and breakers.
//!
//! Times are Unix milliseconds (`BIGINT`) so that lease expiry and due-time
//! comparisons behave the same on SQLite and PostgreSQL.

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
                    .table(Apps::Table)
                    .col(string(Apps::Id).primary_key())
                    .col(string(Apps::Name))
                    .col(string(Apps::BaseUrl))
                    .col(string(Apps::Email))
                    .col(string_null(Apps::Website))
                    .col(text_null(Apps::Description))
                    .col(text(Apps::ClientAuthKeyCiphertext))
                    .col(text_null(Apps::PreviousKeyCiphertext))
                    .col(big_integer_null(Apps::PreviousKeyExpiresAt))
                    .col(string_uniq(Apps::TokenLookup))
                    .col(string(Apps::TokenHash))
                    .col(string(Apps::Status))
                    .col(string_null(Apps::BackoffPolicy))
                    .col(big_integer_null(Apps::BackoffBaseMs))
                    .col(big_integer_null(Apps::BackoffMaxMs))
                    .col(boolean(Apps::NotifySynced).default(false))
                    .col(big_integer_null(Apps::FailingSince))
                    .col(big_integer_null(Apps::DisabledAt))
                    .col(big_integer(Apps::CreatedAt))
                    .col(big_integer(Apps::UpdatedAt))
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(Repositories::Table)
                    .col(string(Repositories::Id).primary_key())
                    .col(string(Repositories::Url))
                    .col(string(Repositories::FetchUrl))
                    .col(string(Repositories::Owner))
                    .col(string(Repositories::Name))
                    .col(string(Repositories::Branch))
                    .col(string_null(Repositories::ResolvedBranch))
                    .col(string_null(Repositories::HeadCommit))
                    .col(string_null(Repositories::CurrentSnapshotId))
                    .col(big_integer(Repositories::NextScanAt))
                    .col(big_integer_null(Repositories::LastScannedAt))
                    .col(text_null(Repositories::LastError))
                    .col(string_null(Repositories::ScanLeaseOwner))
                    .col(big_integer_null(Repositories::ScanLeaseUntil))
                    .col(big_integer(Repositories::CreatedAt))
                    .col(big_integer(Repositories::UpdatedAt))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("ux_repositories_url_branch")
                    .table(Repositories::Table)
                    .col(Repositories::Url)
                    .col(Repositories::Branch)
                    .unique()
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("ix_repositories_next_scan_at")
                    .table(Repositories::Table)
                    .col(Repositories::NextScanAt)
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(Subscriptions::Table)
                    .col(string(Subscriptions::Id).primary_key())
                    .col(string(Subscriptions::AppId))
                    .col(string(Subscriptions::RepositoryId))
                    .col(string(Subscriptions::Status))
                    .col(text(Subscriptions::Include))
                    .col(text(Subscriptions::Exclude))
                    .col(text_null(Subscriptions::GitTokenCiphertext))
                    .col(text_null(Subscriptions::LastError))
                    .col(integer(Subscriptions::RetryCount).default(0))
                    .col(big_integer(Subscriptions::NextSeq).default(1))
                    .col(string_null(Subscriptions::LastSnapshotId))
                    .col(string_null(Subscriptions::LastSyncedCommit))
                    .col(string_null(Subscriptions::DeliveryLeaseOwner))
                    .col(big_integer_null(Subscriptions::DeliveryLeaseUntil))
                    .col(big_integer(Subscriptions::CreatedAt))
                    .col(big_integer(Subscriptions::UpdatedAt))
                    .foreign_key(
                        ForeignKey::create()
                            .from(Subscriptions::Table, Subscriptions::AppId)
                            .to(Apps::Table, Apps::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .from(Subscriptions::Table, Subscriptions::RepositoryId)
                            .to(Repositories::Table, Repositories::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("ux_subscriptions_app_repository")
                    .table(Subscriptions::Table)
                    .col(Subscriptions::AppId)
                    .col(Subscriptions::RepositoryId)
                    .unique()
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("ix_subscriptions_repository")
                    .table(Subscriptions::Table)
                    .col(Subscriptions::RepositoryId)
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(Snapshots::Table)
                    .col(string(Snapshots::Id).primary_key())
                    .col(string(Snapshots::RepositoryId))
                    .col(string(Snapshots::CommitSha))
                    .col(string(Snapshots::Branch))
                    .col(string_null(Snapshots::PreviousSnapshotId))
                    .col(big_integer(Snapshots::FileCount))
                    .col(big_integer(Snapshots::TotalBytes))
                    .col(big_integer(Snapshots::ObservedAt))
                    .col(boolean(Snapshots::Pinned).default(true))
                    .foreign_key(
                        ForeignKey::create()
                            .from(Snapshots::Table, Snapshots::RepositoryId)
                            .to(Repositories::Table, Repositories::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("ix_snapshots_repository")
                    .table(Snapshots::Table)
                    .col(Snapshots::RepositoryId)
                    .col(Snapshots::ObservedAt)
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(ManifestEntries::Table)
                    .col(string(ManifestEntries::RepositoryId))
                    .col(string(ManifestEntries::Path))
                    .col(string(ManifestEntries::Sha256))
                    .col(big_integer(ManifestEntries::Size))
                    .col(string(ManifestEntries::BlobId))
                    .col(boolean(ManifestEntries::Binary))
                    .primary_key(
                        Index::create()
                            .col(ManifestEntries::RepositoryId)
                            .col(ManifestEntries::Path),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .from(ManifestEntries::Table, ManifestEntries::RepositoryId)
                            .to(Repositories::Table, Repositories::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(Events::Table)
                    .col(string(Events::Id).primary_key())
                    .col(string(Events::SubscriptionId))
                    .col(string(Events::AppId))
                    .col(string(Events::RepositoryId))
                    .col(string_null(Events::SnapshotId))
                    .col(big_integer(Events::Seq))
                    .col(string(Events::Kind))
                    .col(text_null(Events::Path))
                    .col(string_null(Events::Sha256))
                    .col(string_null(Events::PreviousSha256))
                    .col(big_integer_null(Events::Size))
                    .col(string_null(Events::BlobId))
                    .col(boolean(Events::Binary).default(false))
                    .col(text_null(Events::RenamedFrom))
                    .col(string_null(Events::CommitSha))
                    .col(text_null(Events::Payload))
                    .col(string(Events::Status))
                    .col(integer(Events::Attempts).default(0))
                    .col(big_integer(Events::NextAttemptAt))
                    .col(text_null(Events::LastError))
                    .col(big_integer(Events::CreatedAt))
                    .col(big_integer_null(Events::DeliveredAt))
                    .foreign_key(
                        ForeignKey::create()
                            .from(Events::Table, Events::SubscriptionId)
                            .to(Subscriptions::Table, Subscriptions::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("ux_events_subscription_seq")
                    .table(Events::Table)
                    .col(Events::SubscriptionId)
                    .col(Events::Seq)
                    .unique()
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("ix_events_app_status")
                    .table(Events::Table)
                    .col(Events::AppId)
                    .col(Events::Status)
                    .col(Events::NextAttemptAt)
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(DeliveryAttempts::Table)
                    .col(string(DeliveryAttempts::Id).primary_key())
                    .col(string(DeliveryAttempts::EventId))
                    .col(integer_null(DeliveryAttempts::ChunkIndex))
                    .col(big_integer(DeliveryAttempts::AttemptedAt))
                    .col(integer_null(DeliveryAttempts::StatusCode))
                    .col(big_integer(DeliveryAttempts::LatencyMs))
                    .col(string_null(DeliveryAttempts::ErrorClass))
                    .col(text_null(DeliveryAttempts::ResponseExcerpt))
                    .foreign_key(
                        ForeignKey::create()
                            .from(DeliveryAttempts::Table, DeliveryAttempts::EventId)
                            .to(Events::Table, Events::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("ix_delivery_attempts_event")
                    .table(DeliveryAttempts::Table)
                    .col(DeliveryAttempts::EventId)
                    .col(DeliveryAttempts::AttemptedAt)
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(InboundHooks::Table)
                    .col(string(InboundHooks::Id).primary_key())
                    .col(string(InboundHooks::Provider))
                    .col(string(InboundHooks::DeliveryId))
                    .col(string(InboundHooks::EventType))
                    .col(blob(InboundHooks::Body))
                    .col(string(InboundHooks::Status))
                    .col(text_null(InboundHooks::Result))
                    .col(big_integer(InboundHooks::ReceivedAt))
                    .col(big_integer_null(InboundHooks::ProcessedAt))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("ux_inbound_hooks_provider_delivery")
                    .table(InboundHooks::Table)
                    .col(InboundHooks::Provider)
                    .col(InboundHooks::DeliveryId)
                    .unique()
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(Breakers::Table)
                    .col(string(Breakers::Kind))
                    .col(string(Breakers::SubjectId))
                    .col(string(Breakers::State))
                    .col(integer(Breakers::ConsecutiveFailures).default(0))
                    .col(integer(Breakers::Openings).default(0))
                    .col(big_integer_null(Breakers::OpenedAt))
                    .col(big_integer_null(Breakers::CooldownUntil))
                    .col(string_null(Breakers::LastErrorClass))
                    .col(text_null(Breakers::LastError))
                    .col(big_integer(Breakers::UpdatedAt))
                    .primary_key(Index::create().col(Breakers::Kind).col(Breakers::SubjectId))
                    .to_owned(),
            )
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in [
            Breakers::Table.into_iden(),
            InboundHooks::Table.into_iden(),
            DeliveryAttempts::Table.into_iden(),
            Events::Table.into_iden(),
            ManifestEntries::Table.into_iden(),
            Snapshots::Table.into_iden(),
            Subscriptions::Table.into_iden(),
            Repositories::Table.into_iden(),
            Apps::Table.into_iden(),
        ] {
            manager
                .drop_table(Table::drop().table(table).to_owned())
                .await?;
        }
        Ok(())
    }
}

#[derive(DeriveIden)]
enum Apps {
    Table,
    Id,
    Name,
    BaseUrl,
    Email,
    Website,
    Description,
    ClientAuthKeyCiphertext,
    PreviousKeyCiphertext,
    PreviousKeyExpiresAt,
    TokenLookup,
    TokenHash,
    Status,
    BackoffPolicy,
    BackoffBaseMs,
    BackoffMaxMs,
    NotifySynced,
    FailingSince,
    DisabledAt,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum Repositories {
    Table,
    Id,
    Url,
    FetchUrl,
    Owner,
    Name,
    Branch,
    ResolvedBranch,
    HeadCommit,
    CurrentSnapshotId,
    NextScanAt,
    LastScannedAt,
    LastError,
    ScanLeaseOwner,
    ScanLeaseUntil,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum Subscriptions {
    Table,
    Id,
    AppId,
    RepositoryId,
    Status,
    Include,
    Exclude,
    GitTokenCiphertext,
    LastError,
    RetryCount,
    NextSeq,
    LastSnapshotId,
    LastSyncedCommit,
    DeliveryLeaseOwner,
    DeliveryLeaseUntil,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum Snapshots {
    Table,
    Id,
    RepositoryId,
    CommitSha,
    Branch,
    PreviousSnapshotId,
    FileCount,
    TotalBytes,
    ObservedAt,
    Pinned,
}

#[derive(DeriveIden)]
enum ManifestEntries {
    Table,
    RepositoryId,
    Path,
    Sha256,
    Size,
    BlobId,
    Binary,
}

#[derive(DeriveIden)]
enum Events {
    Table,
    Id,
    SubscriptionId,
    AppId,
    RepositoryId,
    SnapshotId,
    Seq,
    Kind,
    Path,
    Sha256,
    PreviousSha256,
    Size,
    BlobId,
    Binary,
    RenamedFrom,
    CommitSha,
    Payload,
    Status,
    Attempts,
    NextAttemptAt,
    LastError,
    CreatedAt,
    DeliveredAt,
}

#[derive(DeriveIden)]
enum DeliveryAttempts {
    Table,
    Id,
    EventId,
    ChunkIndex,
    AttemptedAt,
    StatusCode,
    LatencyMs,
    ErrorClass,
    ResponseExcerpt,
}

#[derive(DeriveIden)]
enum InboundHooks {
    Table,
    Id,
    Provider,
    DeliveryId,
    EventType,
    Body,
    Status,
    Result,
    ReceivedAt,
    ProcessedAt,
}

#[derive(DeriveIden)]
enum Breakers {
    Table,
    Kind,
    SubjectId,
    State,
    ConsecutiveFailures,
    Openings,
    OpenedAt,
    CooldownUntil,
    LastErrorClass,
    LastError,
    UpdatedAt,
}
