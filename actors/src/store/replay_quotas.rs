//! Replay quotas (docs/limits.md, Replay quotas): what one app's replays may
//! take, counted in the database so that every instance sharing it applies
//! the same count.
//!
//! - Replays under way: a replay's row is written when its git work starts,
//!   with a lease (`running_until`) its handler renews while it works
//!   ([`ReplayRun`]); rows whose lease ran out (their instance died) no
//!   longer count and are removed by the app's next start. The count and
//!   the insert happen under the app's row lock (PostgreSQL) or the write
//!   lock (SQLite), so two instances cannot both take the last place.
//! - Events waiting: the app's pending and dead events, all subscriptions.
//! - Bytes an hour: what the app's replays written within the last hour
//!   recorded in `replays.bytes`.
//!
//! The places under way and a budget already spent are checked at start,
//! before any git work; the events waiting and the bytes again when the
//! replay is written, now that its size is known
//! ([`Store::record_replay`]).

use std::time::Duration;

use entity::{EventStatus, app, event, replay};
use sea_orm::sea_query::{Alias, Expr, Func, LockType};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder,
    QuerySelect, Set,
};

use super::{Store, StoreError};
use crate::clock::now_ms;
use crate::ids::{AppId, ReplayId, RepoId};

/// The window the bytes budget is counted over.
pub const BUDGET_WINDOW: Duration = Duration::from_secs(3600);

/// What one app's replays may take (`[replay]` settings).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplayQuotas {
    /// Replays of the app under way at once, across instances.
    pub max_running: u64,
    /// Events of the app waiting for delivery (pending or dead) that a
    /// replay may bring the count to.
    pub max_waiting_events: u64,
    /// Database bytes the app's replays may write within [`BUDGET_WINDOW`].
    pub max_bytes_per_hour: u64,
    /// How long a started replay holds its place unless renewed.
    pub lease: Duration,
}

/// Why a replay is refused; nothing of it is written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuotaRefusal {
    #[error(
        "this app already has {running} replay(s) under way, the most it may have at once ({limit}); retry once it has been written"
    )]
    Running { running: u64, limit: u64 },
    #[error(
        "{waiting} events of this app wait for delivery{}; at most {limit} may wait: retry once the app has taken delivery of more",
        adding_text(*.adding)
    )]
    Waiting {
        waiting: u64,
        /// The replay's own events, once known (0: checked before).
        adding: u64,
        limit: u64,
    },
    #[error(
        "this app's replays wrote {used} bytes to the database within the last hour{}, and may write {limit}; the budget frees enough in {} s",
        adding_text(*.adding),
        secs_rounded_up(*.frees_in)
    )]
    Budget {
        used: u64,
        adding: u64,
        limit: u64,
        /// When enough of the budget is free again.
        frees_in: Duration,
    },
    #[error(
        "the replay would write {events} events, more than the {limit} events of this app that may wait for delivery; replay a narrower range of commits"
    )]
    TooManyEvents { events: u64, limit: u64 },
    #[error(
        "the replay would write {bytes} bytes to the database, more than this app's replays may write in an hour ({limit}); replay a narrower range of commits"
    )]
    TooManyBytes { bytes: u64, limit: u64 },
}

fn adding_text(adding: u64) -> String {
    if adding == 0 {
        String::new()
    } else {
        format!(" and the replay would add {adding}")
    }
}

/// Whole seconds, rounded up, at least 1: a `Retry-After`.
pub fn secs_rounded_up(duration: Duration) -> u64 {
    duration.as_millis().div_ceil(1000).max(1) as u64
}

impl QuotaRefusal {
    /// Whether waiting can ever lift it (a refusal of the replay's own size
    /// cannot).
    pub fn is_temporary(&self) -> bool {
        !matches!(
            self,
            QuotaRefusal::TooManyEvents { .. } | QuotaRefusal::TooManyBytes { .. }
        )
    }
}

/// A replay about to start its git work.
#[derive(Debug, Clone)]
pub struct ReplayStart<'a> {
    pub id: &'a ReplayId,
    pub app: &'a AppId,
    pub repository: &'a RepoId,
    pub subscription_id: &'a str,
    /// The commits as asked (the written row holds them resolved).
    pub from: &'a str,
    pub to: &'a str,
}

/// The events (pending or dead) of `app` waiting for delivery.
pub(crate) async fn waiting_events<C: ConnectionTrait>(
    conn: &C,
    app: &str,
) -> Result<u64, StoreError> {
    let n: Option<i64> = event::Entity::find()
        .select_only()
        .column_as(super::count_rows(), "n")
        .filter(event::Column::AppId.eq(app))
        .filter(event::Column::Status.is_in([EventStatus::Pending, EventStatus::Dead]))
        .into_tuple()
        .one(conn)
        .await?;
    Ok(n.and_then(|n| u64::try_from(n).ok()).unwrap_or(0))
}

/// Written replays of `app` within the budget window ending at `now`.
fn in_window(app: &str, now: i64) -> sea_orm::Select<replay::Entity> {
    let since = now - i64::try_from(BUDGET_WINDOW.as_millis()).unwrap_or(i64::MAX);
    replay::Entity::find()
        .filter(replay::Column::AppId.eq(app))
        .filter(replay::Column::RunningUntil.is_null())
        .filter(replay::Column::CreatedAt.gt(since))
}

/// The bytes `app`'s replays wrote within the budget window.
async fn bytes_in_window<C: ConnectionTrait>(
    conn: &C,
    app: &str,
    now: i64,
) -> Result<u64, StoreError> {
    let sum = Func::cast_as(
        Func::sum(Expr::col(replay::Column::Bytes)),
        Alias::new("BIGINT"),
    );
    let used: Option<Option<i64>> = in_window(app, now)
        .select_only()
        .expr_as(sum, "used")
        .into_tuple()
        .one(conn)
        .await?;
    Ok(used
        .flatten()
        .and_then(|n| u64::try_from(n).ok())
        .unwrap_or(0))
}

/// Checks the bytes budget for a replay adding `adding` bytes (0: before
/// its size is known, when some budget must be left).
async fn check_budget<C: ConnectionTrait>(
    conn: &C,
    app: &str,
    now: i64,
    adding: u64,
    limit: u64,
) -> Result<Result<(), QuotaRefusal>, StoreError> {
    if adding > limit {
        return Ok(Err(QuotaRefusal::TooManyBytes {
            bytes: adding,
            limit,
        }));
    }
    let used = bytes_in_window(conn, app, now).await?;
    // Before its size is known a replay needs some budget left; once known,
    // room for all of it.
    let over = if adding == 0 {
        (used + 1).saturating_sub(limit)
    } else {
        (used + adding).saturating_sub(limit)
    };
    if over == 0 {
        return Ok(Ok(()));
    }
    let written: Vec<(i64, i64)> = in_window(app, now)
        .select_only()
        .column(replay::Column::CreatedAt)
        .column(replay::Column::Bytes)
        .order_by_asc(replay::Column::CreatedAt)
        .into_tuple()
        .all(conn)
        .await?;
    Ok(Err(QuotaRefusal::Budget {
        used,
        adding,
        limit,
        frees_in: budget_frees_in(&written, now, over),
    }))
}

/// How long until replays written at these times (oldest first, with
/// their bytes) leave the window enough to free `over` bytes.
fn budget_frees_in(written: &[(i64, i64)], now: i64, over: u64) -> Duration {
    let window = i64::try_from(BUDGET_WINDOW.as_millis()).unwrap_or(i64::MAX);
    let mut freed = 0u64;
    for (created_at, bytes) in written {
        freed += u64::try_from(*bytes).unwrap_or(0);
        if freed >= over {
            let at = created_at + window;
            return Duration::from_millis(u64::try_from(at - now).unwrap_or(0));
        }
    }
    // Not reached while the bytes counted are those listed.
    BUDGET_WINDOW
}

/// Checks that `adding` more events keep `app`'s waiting events within the
/// limit (0: before the replay's size is known, when one more must fit).
async fn check_waiting<C: ConnectionTrait>(
    conn: &C,
    app: &str,
    adding: u64,
    limit: u64,
) -> Result<Result<(), QuotaRefusal>, StoreError> {
    if adding > limit {
        return Ok(Err(QuotaRefusal::TooManyEvents {
            events: adding,
            limit,
        }));
    }
    let waiting = waiting_events(conn, app).await?;
    if waiting + std::cmp::max(adding, 1) > limit {
        return Ok(Err(QuotaRefusal::Waiting {
            waiting,
            adding,
            limit,
        }));
    }
    Ok(Ok(()))
}

/// Checks what a replay of `events` events and `bytes` bytes takes
/// against `app`'s quotas, within the transaction that writes it.
pub(crate) async fn check_written<C: ConnectionTrait>(
    conn: &C,
    app: &str,
    events: u64,
    bytes: u64,
    quotas: &ReplayQuotas,
) -> Result<Result<(), QuotaRefusal>, StoreError> {
    if let Err(refusal) = check_waiting(conn, app, events, quotas.max_waiting_events).await? {
        return Ok(Err(refusal));
    }
    check_budget(conn, app, now_ms(), bytes, quotas.max_bytes_per_hour).await
}

fn lease_ms(lease: Duration) -> i64 {
    i64::try_from(lease.as_millis()).unwrap_or(i64::MAX)
}

impl Store {
    /// Starts a replay of `start.app`'s: unless one of its quotas refuses
    /// it, its row is written, holding one of the app's places for replays
    /// under way for `quotas.lease` (renew it with [`Self::renew_replay`]).
    pub async fn start_replay(
        &self,
        start: &ReplayStart<'_>,
        quotas: &ReplayQuotas,
    ) -> Result<Result<(), QuotaRefusal>, StoreError> {
        let app = start.app.as_str();
        let now = now_ms();
        let txn = self.begin_write().await?;
        // Starts of one app take turns (SQLite's writers already do).
        app::Entity::find_by_id(app)
            .lock(LockType::NoKeyUpdate)
            .one(&txn)
            .await?;
        // Places held by replays whose instance stopped renewing them.
        replay::Entity::delete_many()
            .filter(replay::Column::AppId.eq(app))
            .filter(replay::Column::RunningUntil.lt(now))
            .exec(&txn)
            .await?;
        let running: i64 = replay::Entity::find()
            .select_only()
            .column_as(super::count_rows(), "n")
            .filter(replay::Column::AppId.eq(app))
            .filter(replay::Column::RunningUntil.is_not_null())
            .into_tuple()
            .one(&txn)
            .await?
            .unwrap_or(0);
        let running = u64::try_from(running).unwrap_or(0);
        if running >= quotas.max_running {
            return Ok(Err(QuotaRefusal::Running {
                running,
                limit: quotas.max_running,
            }));
        }
        if let Err(refusal) = check_waiting(&txn, app, 0, quotas.max_waiting_events).await? {
            return Ok(Err(refusal));
        }
        if let Err(refusal) = check_budget(&txn, app, now, 0, quotas.max_bytes_per_hour).await? {
            return Ok(Err(refusal));
        }
        replay::ActiveModel {
            id: Set(start.id.as_str().to_owned()),
            subscription_id: Set(start.subscription_id.to_owned()),
            app_id: Set(app.to_owned()),
            repository_id: Set(start.repository.as_str().to_owned()),
            from_commit: Set(start.from.to_owned()),
            to_commit: Set(start.to.to_owned()),
            events_total: Set(0),
            // Pinned once written: until then no mirror upkeep sees it.
            pinned: Set(false),
            created_at: Set(now),
            bytes: Set(0),
            running_until: Set(Some(now.saturating_add(lease_ms(quotas.lease)))),
        }
        .insert(&txn)
        .await?;
        txn.commit().await?;
        Ok(Ok(()))
    }

    /// Extends a started replay's place by `lease` from now (nothing once
    /// it is written or abandoned).
    pub async fn renew_replay(&self, id: &ReplayId, lease: Duration) -> Result<(), StoreError> {
        replay::Entity::update_many()
            .col_expr(
                replay::Column::RunningUntil,
                Expr::value(now_ms().saturating_add(lease_ms(lease))),
            )
            .filter(replay::Column::Id.eq(id.as_str()))
            .filter(replay::Column::RunningUntil.is_not_null())
            .exec(&self.db)
            .await?;
        Ok(())
    }

    /// Gives up a started replay: its row goes, and its place with it
    /// (nothing once it is written).
    pub async fn abandon_replay(&self, id: &ReplayId) -> Result<(), StoreError> {
        replay::Entity::delete_many()
            .filter(replay::Column::Id.eq(id.as_str()))
            .filter(replay::Column::RunningUntil.is_not_null())
            .exec(&self.db)
            .await?;
        Ok(())
    }
}

/// A started replay's place, held while its handler works: renewed every
/// third of its lease, and given up when dropped unless [`Self::written`]
/// said it was written (a handler that fails, or whose client leaves,
/// gives its place back at once rather than after the lease).
pub struct ReplayRun {
    store: Store,
    id: ReplayId,
    renewal: tokio::task::JoinHandle<()>,
    written: bool,
}

impl ReplayRun {
    /// Holds the place of replay `id`, started with `lease`.
    pub fn hold(store: Store, id: ReplayId, lease: Duration) -> Self {
        let renewal = tokio::spawn({
            let (store, id) = (store.clone(), id.clone());
            async move {
                let every = (lease / 3).max(Duration::from_millis(100));
                loop {
                    tokio::time::sleep(every).await;
                    if let Err(err) = store.renew_replay(&id, lease).await {
                        tracing::warn!(replay = %id, error = %err, "renewing a replay's place failed");
                    }
                }
            }
        });
        Self {
            store,
            id,
            renewal,
            written: false,
        }
    }

    /// The replay was written (or its write refused it, removing its row):
    /// nothing is left to give up.
    pub fn written(mut self) {
        self.written = true;
    }
}

impl Drop for ReplayRun {
    fn drop(&mut self) {
        self.renewal.abort();
        if self.written {
            return;
        }
        let (store, id) = (self.store.clone(), self.id.clone());
        tokio::spawn(async move {
            if let Err(err) = store.abandon_replay(&id).await {
                // Its lease runs out instead.
                tracing::warn!(replay = %id, error = %err, "giving up a replay's place failed");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: i64 = 3_600_000;

    #[test]
    fn the_budget_frees_when_enough_of_the_oldest_replays_leave_the_window() {
        let now = 10 * HOUR;
        let written = [(now - HOUR + 1_000, 100), (now - 600_000, 50), (now, 10)];
        // The oldest leaves the window in a second.
        assert_eq!(
            budget_frees_in(&written, now, 1),
            Duration::from_millis(1_000)
        );
        assert_eq!(
            budget_frees_in(&written, now, 100),
            Duration::from_millis(1_000)
        );
        // Its 100 bytes are not enough: the second must leave too.
        assert_eq!(
            budget_frees_in(&written, now, 101),
            Duration::from_millis(u64::try_from(HOUR - 600_000).expect("fits"))
        );
        assert_eq!(
            budget_frees_in(&written, now, 160),
            Duration::from_millis(u64::try_from(HOUR).expect("fits"))
        );
    }

    #[test]
    fn refusals_name_their_numbers_and_retry_after_rounds_up() {
        let budget = QuotaRefusal::Budget {
            used: 900,
            adding: 200,
            limit: 1000,
            frees_in: Duration::from_millis(1_500),
        };
        let text = budget.to_string();
        assert!(
            text.contains("900") && text.contains("add 200") && text.contains("in 2 s"),
            "{text}"
        );
        assert!(budget.is_temporary());
        let waiting = QuotaRefusal::Waiting {
            waiting: 30,
            adding: 0,
            limit: 30,
        };
        assert!(!waiting.to_string().contains("add"), "{waiting}");
        assert!(!QuotaRefusal::TooManyBytes { bytes: 2, limit: 1 }.is_temporary());
        assert_eq!(secs_rounded_up(Duration::ZERO), 1);
        assert_eq!(secs_rounded_up(Duration::from_millis(3_001)), 4);
    }
}
