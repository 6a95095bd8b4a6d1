//! The apps' settings a snapshot advance reads: which watchers opted in to
//! `synced` notices and `submodule` events, and which are sent LFS pointer
//! files as git holds them.

use std::collections::HashSet;

use entity::{app, subscription};
use sea_orm::sea_query::{Expr, ExprTrait};
use sea_orm::{
    ColumnTrait, DatabaseTransaction, EntityTrait, FromQueryResult, QueryFilter, QuerySelect,
};

use crate::store::StoreError;

/// The settings of a repository's apps that differ from the defaults: who
/// gets `synced` notices, who gets `submodule` events, and who is sent LFS
/// pointer files as git holds them.
#[derive(Debug, Default)]
pub(super) struct OptIns {
    pub(super) notify_synced: HashSet<String>,
    pub(super) notify_submodules: HashSet<String>,
    pub(super) unresolved_lfs: HashSet<String>,
}

/// One app's settings, as [`OptIns::load`] reads them.
#[derive(Debug, FromQueryResult)]
struct AppSettings {
    id: String,
    notify_synced: bool,
    notify_submodules: bool,
    resolve_lfs: bool,
}

impl OptIns {
    /// The opt-ins of the apps that watch `repository`: only the apps whose
    /// settings differ from the defaults are read.
    pub(super) async fn load(
        txn: &DatabaseTransaction,
        repository: &str,
    ) -> Result<Self, StoreError> {
        let watchers = sea_orm::sea_query::Query::select()
            .column(subscription::Column::AppId)
            .from(subscription::Entity)
            .and_where(Expr::col(subscription::Column::RepositoryId).eq(repository))
            .to_owned();
        let apps = app::Entity::find()
            .select_only()
            .column(app::Column::Id)
            .column(app::Column::NotifySynced)
            .column(app::Column::NotifySubmodules)
            .column(app::Column::ResolveLfs)
            .filter(app::Column::Id.in_subquery(watchers))
            .filter(
                app::Column::NotifySynced
                    .eq(true)
                    .or(app::Column::NotifySubmodules.eq(true))
                    .or(app::Column::ResolveLfs.eq(false)),
            )
            .into_model::<AppSettings>()
            .all(txn)
            .await?;
        let mut opt_ins = Self::default();
        for app in apps {
            if app.notify_synced {
                opt_ins.notify_synced.insert(app.id.clone());
            }
            if app.notify_submodules {
                opt_ins.notify_submodules.insert(app.id.clone());
            }
            if !app.resolve_lfs {
                opt_ins.unresolved_lfs.insert(app.id);
            }
        }
        Ok(opt_ins)
    }
}
