//! Git content beyond plain files. A manifest row and an event say whether
//! their file is an LFS object (`lfs`: its sha and size are the real
//! content's, which delivery fetches from the LFS server). Rows stored
//! before are plain files. An app opts in to `submodule` events
//! (`notify_submodules`); every app stored before has not.

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
                    .table(Events::Table)
                    .add_column(boolean(Events::Lfs).default(false))
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(ManifestEntries::Table)
                    .add_column(boolean(ManifestEntries::Lfs).default(false))
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(Apps::Table)
                    .add_column(boolean(Apps::NotifySubmodules).default(false))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(Apps::Table)
                    .drop_column(Apps::NotifySubmodules)
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(ManifestEntries::Table)
                    .drop_column(ManifestEntries::Lfs)
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(Events::Table)
                    .drop_column(Events::Lfs)
                    .to_owned(),
            )
            .await
    }
}

#[derive(DeriveIden)]
enum Events {
    Table,
    Lfs,
}

#[derive(DeriveIden)]
enum Apps {
    Table,
    NotifySubmodules,
}

#[derive(DeriveIden)]
enum ManifestEntries {
    Table,
    Lfs,
}
