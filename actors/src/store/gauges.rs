//! The levels `/metrics` reports, read from the database at scrape time: the
//! outbox of every app, the breakers, the disabled apps. Read here rather than
//! kept in memory, they hold across restarts and across instances.

use std::collections::HashMap;

use entity::{BreakerKind, app, breaker, event};
use sea_orm::{ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter, QuerySelect, Select};

use super::{Store, StoreError};

/// The gauges of one scrape.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Gauges {
    /// Every app with its number of events waiting for delivery (0 included,
    /// so a drained outbox reads 0 rather than its last value).
    pub outbox_depth: Vec<(String, u64)>,
    /// Every persisted breaker: kind, subject, and 0 closed / 1 half-open
    /// (a probe is due) / 2 open.
    pub breakers: Vec<(BreakerKind, String, f64)>,
    pub apps_disabled: u64,
}

/// The events waiting for delivery: counted by app for the outbox gauge,
/// by subscription for the console's pending samples (`store/rollups.rs`).
pub(super) fn pending_events() -> Select<event::Entity> {
    event::Entity::find().filter(event::Column::Status.eq(entity::EventStatus::Pending))
}

impl Store {
    /// Reads the gauges at `now` (unix ms).
    pub async fn gauges(&self, now: i64) -> Result<Gauges, StoreError> {
        let apps: Vec<String> = app::Entity::find()
            .select_only()
            .column(app::Column::Id)
            .into_tuple()
            .all(&self.db)
            .await?;
        let pending: HashMap<String, i64> = pending_events()
            .select_only()
            .column(event::Column::AppId)
            .column_as(super::count_rows(), "pending")
            .group_by(event::Column::AppId)
            .into_tuple::<(String, i64)>()
            .all(&self.db)
            .await?
            .into_iter()
            .collect();
        let outbox_depth = apps
            .into_iter()
            .map(|id| {
                let depth = pending.get(&id).copied().unwrap_or(0);
                (id, u64::try_from(depth).unwrap_or(0))
            })
            .collect();
        let breakers = breaker::Entity::find()
            .all(&self.db)
            .await?
            .into_iter()
            .map(|row| {
                let level = if row.state == entity::BreakerStatus::Closed {
                    0.0
                } else if row.state == entity::BreakerStatus::HalfOpen
                    || row.cooldown_until.is_none_or(|at| at <= now)
                {
                    1.0
                } else {
                    2.0
                };
                (row.kind, row.subject_id, level)
            })
            .collect();
        let apps_disabled = app::Entity::find()
            .filter(app::Column::Status.eq(entity::AppStatus::Disabled))
            .count(&self.db)
            .await?;
        Ok(Gauges {
            outbox_depth,
            breakers,
            apps_disabled,
        })
    }
}
