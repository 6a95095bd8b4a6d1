//! Access is proven per subscriber: each subscription records whether its
//! own credential (its token, or none) can read the repository and when that
//! was last checked; a repository records whether it needs a credential at
//! all (`is_private`, the same for every subscriber).

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

// The trait's signature elides SchemaManager's lifetime; matching it needs the elision.
#[allow(elided_lifetimes_in_paths)]
#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // SQLite alters one column per statement.
        manager
            .alter_table(
                Table::alter()
                    .table(Subscriptions::Table)
                    .add_column(string(Subscriptions::Access).default("granted"))
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(Subscriptions::Table)
                    .add_column(big_integer_null(Subscriptions::AccessCheckedAt))
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(Repositories::Table)
                    .add_column(boolean(Repositories::IsPrivate).default(false))
                    .to_owned(),
            )
            .await?;
        // Before this migration a repository counted as private when some
        // subscriber had given a token.
        let with_token = Query::select()
            .column(Subscriptions::RepositoryId)
            .from(Subscriptions::Table)
            .and_where(Expr::col(Subscriptions::GitTokenCiphertext).is_not_null())
            .to_owned();
        manager
            .exec_stmt(
                Query::update()
                    .table(Repositories::Table)
                    .value(Repositories::IsPrivate, true)
                    .and_where(Expr::col(Repositories::Id).in_subquery(with_token))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(Repositories::Table)
                    .drop_column(Repositories::IsPrivate)
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(Subscriptions::Table)
                    .drop_column(Subscriptions::AccessCheckedAt)
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(Subscriptions::Table)
                    .drop_column(Subscriptions::Access)
                    .to_owned(),
            )
            .await
    }
}

#[derive(DeriveIden)]
enum Subscriptions {
    Table,
    RepositoryId,
    GitTokenCiphertext,
    Access,
    AccessCheckedAt,
}

#[derive(DeriveIden)]
enum Repositories {
    Table,
    Id,
    IsPrivate,
}
