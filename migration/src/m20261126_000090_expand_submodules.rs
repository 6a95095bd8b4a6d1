//! A repository watched with its submodules expanded (`expand_submodules`)
//! is a repository of its own: the flag joins `url` and `branch` in the
//! identity, so the unique index on (url, branch) becomes one on (url,
//! branch, expand_submodules). Every repository stored before is plain.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

const OLD_INDEX: &str = "ux_repositories_url_branch";
const NEW_INDEX: &str = "ux_repositories_url_branch_expand";

/// The identity index: on (url, branch), and the flag when `expand`.
fn identity(expand: bool) -> IndexCreateStatement {
    let mut index = Index::create();
    index
        .name(if expand { NEW_INDEX } else { OLD_INDEX })
        .table(Repositories::Table)
        .col(Repositories::Url)
        .col(Repositories::Branch)
        .unique();
    if expand {
        index.col(Repositories::ExpandSubmodules);
    }
    index.to_owned()
}

fn drop_identity(expand: bool) -> IndexDropStatement {
    Index::drop()
        .name(if expand { NEW_INDEX } else { OLD_INDEX })
        .table(Repositories::Table)
        .to_owned()
}

// The trait's signature elides SchemaManager's lifetime; matching it needs the elision.
#[allow(elided_lifetimes_in_paths)]
#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(Repositories::Table)
                    .add_column(boolean(Repositories::ExpandSubmodules).default(false))
                    .to_owned(),
            )
            .await?;
        manager.drop_index(drop_identity(false)).await?;
        manager.create_index(identity(true)).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.drop_index(drop_identity(true)).await?;
        manager.create_index(identity(false)).await?;
        manager
            .alter_table(
                Table::alter()
                    .table(Repositories::Table)
                    .drop_column(Repositories::ExpandSubmodules)
                    .to_owned(),
            )
            .await
    }
}

#[derive(DeriveIden)]
enum Repositories {
    Table,
    Url,
    Branch,
    ExpandSubmodules,
}
