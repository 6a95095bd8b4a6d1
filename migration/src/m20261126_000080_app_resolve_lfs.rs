//! An app may turn LFS resolution off (`resolve_lfs`, on for every app
//! stored before): it then gets the pointer files as they are in git. The
//! scan is shared by every subscriber of a repository, so a manifest row of
//! an LFS object keeps the pointer file's own SHA-256 and size beside the
//! object's. Rows stored before have none; an app that does not resolve
//! gets such a file resolved (marked `"lfs": true`) until a scan rewrites
//! its row.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

// The trait's signature elides SchemaManager's lifetime; matching it needs the elision.
#[allow(elided_lifetimes_in_paths)]
#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // One column per statement: SQLite alters one at a time.
        for (table, column) in [
            (
                Apps::Table.into_iden(),
                boolean(Apps::ResolveLfs).default(true).to_owned(),
            ),
            (
                ManifestEntries::Table.into_iden(),
                string_null(ManifestEntries::PointerSha256),
            ),
            (
                ManifestEntries::Table.into_iden(),
                big_integer_null(ManifestEntries::PointerSize),
            ),
        ] {
            manager
                .alter_table(Table::alter().table(table).add_column(column).to_owned())
                .await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for (table, column) in [
            (
                ManifestEntries::Table.into_iden(),
                ManifestEntries::PointerSize.into_iden(),
            ),
            (
                ManifestEntries::Table.into_iden(),
                ManifestEntries::PointerSha256.into_iden(),
            ),
            (Apps::Table.into_iden(), Apps::ResolveLfs.into_iden()),
        ] {
            manager
                .alter_table(Table::alter().table(table).drop_column(column).to_owned())
                .await?;
        }
        Ok(())
    }
}

#[derive(DeriveIden)]
enum Apps {
    Table,
    ResolveLfs,
}

#[derive(DeriveIden)]
enum ManifestEntries {
    Table,
    PointerSha256,
    PointerSize,
}
