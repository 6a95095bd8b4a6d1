//! A console session is bound to the admin token it was opened with: the
//! row keeps an HMAC of the session token under the admin token
//! (`admin_binding`), so a restart with another admin token ends every
//! session. Sessions opened before carry no binding and end here.

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
            .exec_stmt(
                Query::delete()
                    .from_table(ConsoleSessions::Table)
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(ConsoleSessions::Table)
                    .add_column(string(ConsoleSessions::AdminBinding).default(""))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(ConsoleSessions::Table)
                    .drop_column(ConsoleSessions::AdminBinding)
                    .to_owned(),
            )
            .await
    }
}

#[derive(DeriveIden)]
enum ConsoleSessions {
    Table,
    AdminBinding,
}
