//! Git content beyond plain files. A manifest row and an event say whether
//! their file is an LFS object (`lfs`: its sha and size are the real
//! content's, which delivery fetches from the LFS server). Rows stored
//! before are plain files. An app opts in to `submodule` events
//! (`notify_submodules`); every app stored before has not.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

/// The new columns: each a flag, false for every row stored before.
fn columns() -> [(DynIden, DynIden); 3] {
    [
        (Events::Table.into_iden(), Events::Lfs.into_iden()),
        (
            ManifestEntries::Table.into_iden(),
            ManifestEntries::Lfs.into_iden(),
        ),
        (Apps::Table.into_iden(), Apps::NotifySubmodules.into_iden()),
    ]
}

// The trait's signature elides SchemaManager's lifetime; matching it needs the elision.
#[allow(elided_lifetimes_in_paths)]
#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for (table, column) in columns() {
            manager
                .alter_table(
                    Table::alter()
                        .table(table)
                        .add_column(boolean(column).default(false))
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for (table, column) in columns().into_iter().rev() {
            manager
                .alter_table(Table::alter().table(table).drop_column(column).to_owned())
                .await?;
        }
        Ok(())
    }
}

#[derive(DeriveIden)]
enum Events {
    Table,
    Lfs,
}

#[derive(DeriveIden)]
enum ManifestEntries {
    Table,
    Lfs,
}

#[derive(DeriveIden)]
enum Apps {
    Table,
    NotifySubmodules,
}
