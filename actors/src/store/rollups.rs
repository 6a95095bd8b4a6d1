//! The console's delivery-health figures, kept per minute so that a chart
//! over a day never reads the raw attempts.
//!
//! - `delivery_rollups`: per app and minute, the attempts made, those
//!   answered 2xx (`delivered`) and the others (`failed`: any other status,
//!   or no answer), and their latencies as a histogram over
//!   [`LATENCY_BOUNDS_MS`], from which [`Histogram::percentile`] reads p50
//!   and p95 by interpolating inside the bucket the rank falls in.
//! - `pending_samples`: per subscription and minute, its events pending
//!   when upkeep looked (only non-zero counts are written).
//!
//! [`Store::roll_up`] recomputes whole minutes from `delivery_attempts` in
//! one `INSERT … SELECT … GROUP BY … ON CONFLICT DO UPDATE`: a minute's
//! row is always the count of what is stored for it, never an increment,
//! so recomputing it again (a later pass, attempts written late by a lane's
//! write-behind, another instance doing the same at the same time) gives
//! the same row. The statement is portable SQL (integer division, `CASE`,
//! upsert), the same on SQLite and PostgreSQL.

use std::collections::{BTreeMap, HashMap};

use entity::{app, delivery_attempt, delivery_rollup, event, pending_sample};
use entity::{repository, subscription};
use sea_orm::sea_query::{Alias, Expr, ExprTrait, OnConflict, Query, SelectStatement};
use sea_orm::{ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QuerySelect, QueryTrait};

use super::gauges::pending_events;
use super::{Store, StoreError};
use crate::ids::AppId;

/// One minute in Unix milliseconds; a rollup's `minute` is `ms / MINUTE_MS`.
pub const MINUTE_MS: i64 = 60_000;

/// Upper bounds (inclusive, in ms) of the latency buckets, about two to
/// two and a half apart: fine where webhooks usually answer, coarse where a
/// slow receiver times out. One more bucket holds what is above the last.
pub const LATENCY_BOUNDS_MS: [i64; 12] = [
    5, 10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 30_000,
];

/// The number of latency buckets, the open-ended one included.
pub const BUCKETS: usize = LATENCY_BOUNDS_MS.len() + 1;

fn bucket_column(bucket: usize) -> Alias {
    Alias::new(format!("bucket_{bucket:02}"))
}

/// A latency histogram over [`LATENCY_BOUNDS_MS`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Histogram {
    pub counts: [u64; BUCKETS],
    /// The slowest attempt counted: the upper end of the last bucket.
    pub max_ms: i64,
}

impl Histogram {
    /// Adds another histogram's counts to this one.
    pub fn add(&mut self, other: &Histogram) {
        for (mine, theirs) in self.counts.iter_mut().zip(other.counts) {
            *mine += theirs;
        }
        self.max_ms = std::cmp::max(self.max_ms, other.max_ms);
    }

    /// The latency (ms) below which a share `q` (0 < q ≤ 1) of the attempts
    /// fall, interpolated linearly inside its bucket (whose upper end is at
    /// most the slowest attempt seen); `None` without attempts.
    pub fn percentile(&self, q: f64) -> Option<f64> {
        let total: u64 = self.counts.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = q.clamp(0.0, 1.0) * total as f64;
        let max = self.max_ms as f64;
        let mut below = 0u64;
        for (bucket, &count) in self.counts.iter().enumerate() {
            if count > 0 && (below + count) as f64 >= rank {
                let low = match bucket {
                    0 => 0.0,
                    _ => LATENCY_BOUNDS_MS[bucket - 1] as f64,
                };
                let high = LATENCY_BOUNDS_MS
                    .get(bucket)
                    .map_or(max, |&bound| (bound as f64).min(max))
                    .max(low);
                let within = (rank - below as f64) / count as f64;
                return Some(low + (high - low) * within);
            }
            below += count;
        }
        Some(max)
    }
}

/// The span a chart shows: whole minutes `from..=to` (Unix minutes), read
/// in bins of `bin` minutes (the last bin may be shorter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChartWindow {
    pub from: i64,
    pub to: i64,
    pub bin: i64,
}

impl ChartWindow {
    /// The `minutes` up to and including the one `now_ms` falls in.
    pub fn ending_at(now_ms: i64, minutes: i64, bin: i64) -> Self {
        let to = now_ms.div_euclid(MINUTE_MS);
        ChartWindow {
            from: to - minutes + 1,
            to,
            bin: std::cmp::max(bin, 1),
        }
    }

    /// How many bins the window holds.
    pub fn bins(&self) -> usize {
        usize::try_from((self.to - self.from) / self.bin + 1).unwrap_or(0)
    }

    /// Where bin `index` starts, in Unix ms.
    pub fn bin_start_ms(&self, index: usize) -> i64 {
        (self.from + self.bin * index as i64) * MINUTE_MS
    }

    /// The bin of each row, as SQL: integers only, written into the text.
    fn slot(&self) -> Expr {
        Expr::cust(format!("(minute - {}) / {}", self.from, self.bin))
    }
}

/// One bin of an app's (or all apps') deliveries.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeliveryBin {
    pub attempts: u64,
    pub delivered: u64,
    pub failed: u64,
    pub latency: Histogram,
}

impl DeliveryBin {
    fn add(&mut self, other: &DeliveryBin) {
        self.attempts += other.attempts;
        self.delivered += other.delivered;
        self.failed += other.failed;
        self.latency.add(&other.latency);
    }
}

/// An app's deliveries over a window, one entry per bin (zeros included).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppDeliveries {
    pub app_id: String,
    pub app_name: String,
    pub bins: Vec<DeliveryBin>,
}

impl AppDeliveries {
    /// The whole window in one bin.
    pub fn total(&self) -> DeliveryBin {
        let mut total = DeliveryBin::default();
        self.bins.iter().for_each(|bin| total.add(bin));
        total
    }
}

/// The deliveries of every app over a window: each app with any, by name,
/// and all of them together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deliveries {
    pub overall: Vec<DeliveryBin>,
    pub apps: Vec<AppDeliveries>,
}

/// A subscription's pending events over a window: the largest sample of
/// each bin (0 where none was written).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingSeries {
    pub subscription_id: String,
    pub app_id: String,
    /// The app's name and the repository's `owner/name`.
    pub app_name: String,
    pub repository: String,
    pub bins: Vec<u64>,
}

/// What one [`Store::roll_up`] wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RollUp {
    /// (app, minute) rows written or rewritten.
    pub minutes: u64,
    /// Subscriptions with pending events sampled.
    pub pending: u64,
}

fn count(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

impl Store {
    /// Recomputes the delivery rollups of the minutes from the one
    /// `from_ms` falls in to the one `now_ms` falls in (that last one
    /// partial until a later pass recomputes it), and samples each
    /// subscription's pending events for `now_ms`'s minute.
    pub async fn roll_up(&self, from_ms: i64, now_ms: i64) -> Result<RollUp, StoreError> {
        let from = from_ms.div_euclid(MINUTE_MS) * MINUTE_MS;
        let to = (now_ms.div_euclid(MINUTE_MS) + 1) * MINUTE_MS;
        let minutes = self.roll_up_deliveries(from, to).await?;
        let pending = self.sample_pending(now_ms.div_euclid(MINUTE_MS)).await?;
        Ok(RollUp { minutes, pending })
    }

    /// One upsert of every (app, minute) with attempts in `[from, to)` ms.
    async fn roll_up_deliveries(&self, from: i64, to: i64) -> Result<u64, StoreError> {
        let attempt =
            |column: delivery_attempt::Column| Expr::col((delivery_attempt::Entity, column));
        // NULL (no status) is neither 2xx nor a match: CASE sends it to ELSE.
        let ones = |condition| Expr::case(condition, 1).finally(0).sum();
        let minute = Expr::cust(format!("delivery_attempts.attempted_at / {MINUTE_MS}"));
        let status = || attempt(delivery_attempt::Column::StatusCode);
        let latency = || attempt(delivery_attempt::Column::LatencyMs);
        let answered_2xx = || status().gte(200).and(status().lt(300));

        let mut select = Query::select();
        select
            .expr(Expr::col((event::Entity, event::Column::AppId)))
            .expr(minute.clone())
            .expr(attempt(delivery_attempt::Column::Id).count())
            .expr(ones(answered_2xx()))
            .expr(Expr::case(answered_2xx(), 0).finally(1).sum())
            .expr(latency().max());
        for bucket in 0..BUCKETS {
            let above = (bucket > 0).then(|| latency().gt(LATENCY_BOUNDS_MS[bucket - 1]));
            let within = LATENCY_BOUNDS_MS.get(bucket).map(|&b| latency().lte(b));
            let condition = match (above, within) {
                (Some(above), Some(within)) => above.and(within),
                (Some(only), None) | (None, Some(only)) => only,
                (None, None) => unreachable!("every bucket has a bound on one side"),
            };
            select.expr(ones(condition));
        }
        select
            .from(delivery_attempt::Entity)
            .inner_join(
                event::Entity,
                Expr::col((event::Entity, event::Column::Id))
                    .equals((delivery_attempt::Entity, delivery_attempt::Column::EventId)),
            )
            .and_where(attempt(delivery_attempt::Column::AttemptedAt).gte(from))
            .and_where(attempt(delivery_attempt::Column::AttemptedAt).lt(to))
            .add_group_by([Expr::col((event::Entity, event::Column::AppId)), minute]);

        let mut counted: Vec<Alias> = ["attempts", "delivered", "failed", "latency_max_ms"]
            .into_iter()
            .map(Alias::new)
            .collect();
        counted.extend((0..BUCKETS).map(bucket_column));
        let mut columns = vec![Alias::new("app_id"), Alias::new("minute")];
        columns.extend(counted.iter().cloned());
        let insert = Query::insert()
            .into_table(delivery_rollup::Entity)
            .columns(columns)
            .select_from(select)
            .expect("as many columns as selected")
            .on_conflict(
                OnConflict::columns([
                    delivery_rollup::Column::AppId,
                    delivery_rollup::Column::Minute,
                ])
                .update_columns(counted)
                .to_owned(),
            )
            .to_owned();
        Ok(self.db.execute(&insert).await?.rows_affected())
    }

    /// Writes each subscription's pending events as its sample of `minute`
    /// (rewriting one written earlier in the same minute): the outbox
    /// gauges' count of pending events, by subscription.
    async fn sample_pending(&self, minute: i64) -> Result<u64, StoreError> {
        let select: SelectStatement = pending_events()
            .select_only()
            .column(event::Column::SubscriptionId)
            .expr(Expr::cust(minute.to_string()))
            .column(event::Column::AppId)
            .column_as(super::count_rows(), "pending")
            .group_by(event::Column::SubscriptionId)
            .group_by(event::Column::AppId)
            .into_query();
        let insert = Query::insert()
            .into_table(pending_sample::Entity)
            .columns([
                pending_sample::Column::SubscriptionId,
                pending_sample::Column::Minute,
                pending_sample::Column::AppId,
                pending_sample::Column::Pending,
            ])
            .select_from(select)
            .expect("as many columns as selected")
            .on_conflict(
                OnConflict::columns([
                    pending_sample::Column::SubscriptionId,
                    pending_sample::Column::Minute,
                ])
                .update_columns([pending_sample::Column::Pending])
                .to_owned(),
            )
            .to_owned();
        Ok(self.db.execute(&insert).await?.rows_affected())
    }

    /// Deletes the rollups and samples of minutes before the one `before_ms`
    /// falls in; how many rows went.
    pub async fn prune_rollups(&self, before_ms: i64) -> Result<u64, StoreError> {
        let minute = before_ms.div_euclid(MINUTE_MS);
        let rollups = delivery_rollup::Entity::delete_many()
            .filter(delivery_rollup::Column::Minute.lt(minute))
            .exec(&self.db)
            .await?
            .rows_affected;
        let samples = pending_sample::Entity::delete_many()
            .filter(pending_sample::Column::Minute.lt(minute))
            .exec(&self.db)
            .await?
            .rows_affected;
        Ok(rollups + samples)
    }

    /// The deliveries over `window`, of one app or of all of them.
    pub async fn deliveries(
        &self,
        window: ChartWindow,
        app: Option<&AppId>,
    ) -> Result<Deliveries, StoreError> {
        let sum = |column: &str| Expr::cust(format!("CAST(SUM({column}) AS BIGINT)"));
        let mut select = Query::select();
        select
            .column(delivery_rollup::Column::AppId)
            .expr_as(window.slot(), Alias::new("slot"))
            .expr_as(sum("attempts"), Alias::new("attempts"))
            .expr_as(sum("delivered"), Alias::new("delivered"))
            .expr_as(sum("failed"), Alias::new("failed"))
            .expr_as(
                Expr::col(delivery_rollup::Column::LatencyMaxMs).max(),
                Alias::new("latency_max_ms"),
            );
        for bucket in 0..BUCKETS {
            let name = format!("bucket_{bucket:02}");
            select.expr_as(sum(&name), Alias::new(name));
        }
        select
            .from(delivery_rollup::Entity)
            .and_where(Expr::col(delivery_rollup::Column::Minute).gte(window.from))
            .and_where(Expr::col(delivery_rollup::Column::Minute).lte(window.to))
            .and_where_option(
                app.map(|id| Expr::col(delivery_rollup::Column::AppId).eq(id.as_str())),
            )
            .add_group_by([
                Expr::col(delivery_rollup::Column::AppId),
                Expr::col(Alias::new("slot")),
            ]);
        let rows = self.db.query_all(&select).await?;

        let mut by_app: BTreeMap<String, Vec<DeliveryBin>> = BTreeMap::new();
        for row in rows {
            let app_id: String = row.try_get("", "app_id")?;
            let slot: i64 = row.try_get("", "slot")?;
            let mut bin = DeliveryBin {
                attempts: count(row.try_get("", "attempts")?),
                delivered: count(row.try_get("", "delivered")?),
                failed: count(row.try_get("", "failed")?),
                latency: Histogram {
                    max_ms: row.try_get("", "latency_max_ms")?,
                    ..Histogram::default()
                },
            };
            for (bucket, slot_count) in bin.latency.counts.iter_mut().enumerate() {
                *slot_count = count(row.try_get("", &format!("bucket_{bucket:02}"))?);
            }
            let bins = by_app
                .entry(app_id)
                .or_insert_with(|| vec![DeliveryBin::default(); window.bins()]);
            if let Some(place) = usize::try_from(slot).ok().and_then(|i| bins.get_mut(i)) {
                *place = bin;
            }
        }

        let names = self.app_names(by_app.keys().cloned().collect()).await?;
        let mut overall = vec![DeliveryBin::default(); window.bins()];
        let mut apps: Vec<AppDeliveries> = by_app
            .into_iter()
            .map(|(app_id, bins)| {
                overall
                    .iter_mut()
                    .zip(&bins)
                    .for_each(|(all, bin)| all.add(bin));
                AppDeliveries {
                    app_name: names
                        .get(&app_id)
                        .cloned()
                        .unwrap_or_else(|| app_id.clone()),
                    app_id,
                    bins,
                }
            })
            .collect();
        apps.sort_by(|a, b| a.app_name.cmp(&b.app_name).then(a.app_id.cmp(&b.app_id)));
        Ok(Deliveries { overall, apps })
    }

    /// The pending events over `window` of the `limit` subscriptions (of one
    /// app or of all) that had the most at some point, most first.
    pub async fn pending_series(
        &self,
        window: ChartWindow,
        app: Option<&AppId>,
        limit: usize,
    ) -> Result<Vec<PendingSeries>, StoreError> {
        let mut select = Query::select();
        select
            .column(pending_sample::Column::SubscriptionId)
            .column(pending_sample::Column::AppId)
            .expr_as(window.slot(), Alias::new("slot"))
            .expr_as(
                Expr::col(pending_sample::Column::Pending).max(),
                Alias::new("pending"),
            )
            .from(pending_sample::Entity)
            .and_where(Expr::col(pending_sample::Column::Minute).gte(window.from))
            .and_where(Expr::col(pending_sample::Column::Minute).lte(window.to))
            .and_where_option(
                app.map(|id| Expr::col(pending_sample::Column::AppId).eq(id.as_str())),
            )
            .add_group_by([
                Expr::col(pending_sample::Column::SubscriptionId),
                Expr::col(pending_sample::Column::AppId),
                Expr::col(Alias::new("slot")),
            ]);
        let rows = self.db.query_all(&select).await?;
        let mut series: HashMap<String, PendingSeries> = HashMap::new();
        for row in rows {
            let subscription_id: String = row.try_get("", "subscription_id")?;
            let slot: i64 = row.try_get("", "slot")?;
            let pending = count(row.try_get("", "pending")?);
            let entry = match series.entry(subscription_id.clone()) {
                std::collections::hash_map::Entry::Occupied(entry) => entry.into_mut(),
                std::collections::hash_map::Entry::Vacant(entry) => entry.insert(PendingSeries {
                    subscription_id,
                    app_id: row.try_get("", "app_id")?,
                    app_name: String::new(),
                    repository: String::new(),
                    bins: vec![0; window.bins()],
                }),
            };
            if let Some(place) = usize::try_from(slot)
                .ok()
                .and_then(|i| entry.bins.get_mut(i))
            {
                *place = pending;
            }
        }
        let mut series: Vec<PendingSeries> = series.into_values().collect();
        let peak = |s: &PendingSeries| s.bins.iter().copied().max().unwrap_or(0);
        series.sort_by(|a, b| {
            peak(b)
                .cmp(&peak(a))
                .then(a.subscription_id.cmp(&b.subscription_id))
        });
        series.truncate(limit);

        let ids: Vec<String> = series.iter().map(|s| s.subscription_id.clone()).collect();
        let labels: HashMap<String, (String, String, String)> = subscription::Entity::find()
            .select_only()
            .column(subscription::Column::Id)
            .column(app::Column::Name)
            .column(repository::Column::Owner)
            .column(repository::Column::Name)
            .inner_join(app::Entity)
            .inner_join(repository::Entity)
            .filter(subscription::Column::Id.is_in(ids))
            .into_tuple::<(String, String, String, String)>()
            .all(&self.db)
            .await?
            .into_iter()
            .map(|(id, app, owner, name)| (id, (app, owner, name)))
            .collect();
        for s in &mut series {
            if let Some((app, owner, name)) = labels.get(&s.subscription_id) {
                s.app_name = app.clone();
                s.repository = format!("{owner}/{name}");
            }
        }
        Ok(series)
    }

    async fn app_names(&self, ids: Vec<String>) -> Result<HashMap<String, String>, StoreError> {
        Ok(app::Entity::find()
            .select_only()
            .column(app::Column::Id)
            .column(app::Column::Name)
            .filter(app::Column::Id.is_in(ids))
            .into_tuple::<(String, String)>()
            .all(&self.db)
            .await?
            .into_iter()
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::now_ms;
    use crate::store::subscriptions::SubscriptionView;
    use crate::test_support::attempts::{Made, pending_events, record_attempts};
    use crate::test_support::{self, TestDatabase};
    use entity::delivery_rollup;

    struct Fixture {
        _dir: tempfile::TempDir,
        _database: TestDatabase,
        store: Store,
        acme: (AppId, SubscriptionView),
        globex: (AppId, SubscriptionView),
    }

    async fn fixture() -> Fixture {
        let database = TestDatabase::create().await;
        let dir = tempfile::tempdir().expect("temp dir");
        let store = test_support::store(&database.url_in(dir.path(), "herald.db")).await;
        let mut apps = Vec::new();
        for name in ["acme", "globex"] {
            let app = test_support::onboard(&store, test_support::new_app(name)).await;
            let url = format!("https://1.1.1.1/{name}/widgets");
            let subscription = test_support::new_subscription(&url, name, "widgets");
            let (view, _) = test_support::subscribe(&store, &app, subscription).await;
            apps.push((app, view));
        }
        let globex = apps.pop().expect("two apps");
        let acme = apps.pop().expect("two apps");
        Fixture {
            _dir: dir,
            _database: database,
            store,
            acme,
            globex,
        }
    }

    fn made(at: i64, status: Option<i32>, latency_ms: i64) -> Made {
        Made {
            at,
            status,
            latency_ms,
        }
    }

    /// The start of the minute `back` minutes before `now`'s (each test
    /// takes its `now` once, so a minute that turns meanwhile changes
    /// nothing).
    fn minute_ago(now: i64, back: i64) -> i64 {
        (now.div_euclid(MINUTE_MS) - back) * MINUTE_MS
    }

    #[tokio::test]
    async fn a_minute_counts_its_attempts_answers_and_latencies() {
        let f = fixture().await;
        let now = now_ms();
        let at = minute_ago(now, 2) + 1_000;
        record_attempts(
            &f.store,
            &f.acme.1,
            &[
                made(at, Some(200), 3),
                made(at, Some(204), 7),
                made(at, None, 12),
                made(at, Some(299), 80),
                made(at, Some(500), 40_000),
                made(at, Some(429), 5),
            ],
        )
        .await;
        f.store
            .roll_up(minute_ago(now, 5), now)
            .await
            .expect("rolled up");

        let window = ChartWindow::ending_at(now, 60, 1);
        let deliveries = f.store.deliveries(window, None).await.expect("read");
        assert_eq!(deliveries.apps.len(), 1);
        let acme = &deliveries.apps[0];
        assert_eq!(
            (acme.app_id.as_str(), acme.app_name.as_str()),
            (f.acme.0.as_str(), "acme")
        );
        let bin = acme.bins[window.bins() - 3];
        assert_eq!((bin.attempts, bin.delivered, bin.failed), (6, 3, 3));
        let mut counts = [0; BUCKETS];
        counts[0] = 2; // 3 and 5 ms
        counts[1] = 1; // 7
        counts[2] = 1; // 12
        counts[4] = 1; // 80
        counts[BUCKETS - 1] = 1; // 40 s
        assert_eq!(
            bin.latency,
            Histogram {
                counts,
                max_ms: 40_000
            }
        );
        assert_eq!(acme.total(), bin, "every other minute is empty");
        assert_eq!(deliveries.overall, acme.bins);
        // p50: the third of six is the 7 ms one, alone in (5, 10].
        assert_eq!(bin.latency.percentile(0.5), Some(10.0));
    }

    #[tokio::test]
    async fn rolling_up_again_rewrites_the_same_rows() {
        let f = fixture().await;
        let now = now_ms();
        let at = minute_ago(now, 1) + 500;
        record_attempts(&f.store, &f.acme.1, &[made(at, Some(200), 30); 3]).await;
        let pass = f
            .store
            .roll_up(minute_ago(now, 5), now)
            .await
            .expect("rolled up");
        assert_eq!(pass.minutes, 1);
        let rows = || delivery_rollup::Entity::find().all(f.store.db());
        let first = rows().await.expect("rows");
        f.store
            .roll_up(minute_ago(now, 5), now)
            .await
            .expect("rolled up");
        assert_eq!(
            rows().await.expect("rows"),
            first,
            "the same rows, not doubled"
        );

        // An attempt written late (a lane's write-behind) lands in its minute.
        record_attempts(&f.store, &f.acme.1, &[made(at + 10, Some(503), 60)]).await;
        f.store
            .roll_up(minute_ago(now, 5), now)
            .await
            .expect("rolled up");
        let rows = rows().await.expect("rows");
        assert_eq!(rows.len(), 1);
        assert_eq!(
            (rows[0].attempts, rows[0].delivered, rows[0].failed),
            (4, 3, 1)
        );
        assert_eq!(rows[0].minute, at / MINUTE_MS);
    }

    #[tokio::test]
    async fn apps_and_minutes_stay_apart() {
        let f = fixture().await;
        let now = now_ms();
        let (early, late) = (minute_ago(now, 10) + 1, minute_ago(now, 3) + 59_999);
        record_attempts(
            &f.store,
            &f.acme.1,
            &[made(early, Some(200), 1), made(late, Some(500), 1)],
        )
        .await;
        record_attempts(&f.store, &f.globex.1, &[made(late, Some(200), 2_000); 2]).await;
        f.store
            .roll_up(minute_ago(now, 30), now)
            .await
            .expect("rolled up");

        let window = ChartWindow::ending_at(now, 60, 1);
        let all = f.store.deliveries(window, None).await.expect("read");
        let names: Vec<&str> = all.apps.iter().map(|a| a.app_name.as_str()).collect();
        assert_eq!(names, ["acme", "globex"]);
        let (at_early, at_late) = (window.bins() - 11, window.bins() - 4);
        assert_eq!(all.apps[0].bins[at_early].delivered, 1);
        assert_eq!(all.apps[0].bins[at_late].failed, 1);
        assert_eq!(all.apps[1].bins[at_late].delivered, 2);
        assert_eq!(all.apps[1].bins[at_early].attempts, 0);
        assert_eq!(all.overall[at_late].attempts, 3);
        assert_eq!(all.overall[at_early].attempts, 1);

        let globex = f
            .store
            .deliveries(window, Some(&f.globex.0))
            .await
            .expect("read");
        assert_eq!(globex.apps.len(), 1);
        assert_eq!(globex.overall, all.apps[1].bins);
        let p95 = globex.apps[0]
            .total()
            .latency
            .percentile(0.95)
            .expect("attempts");
        assert!((1_000.0..=2_000.0).contains(&p95), "{p95}");

        // In bins of 15 minutes, the two minutes of acme fall apart or
        // together as their bins say.
        let wide = ChartWindow::ending_at(now, 60, 15);
        let binned = f
            .store
            .deliveries(wide, Some(&f.acme.0))
            .await
            .expect("read");
        let total: u64 = binned.overall.iter().map(|b| b.attempts).sum();
        assert_eq!(total, 2);
        assert_eq!(binned.overall.len(), 4);
    }

    #[tokio::test]
    async fn pending_events_are_sampled_per_subscription_and_go_with_their_app() {
        let f = fixture().await;
        let now = now_ms();
        pending_events(&f.store, &f.acme.1, 3, now).await;
        pending_events(&f.store, &f.globex.1, 7, now).await;
        let pass = f.store.roll_up(now, now).await.expect("rolled up");
        assert_eq!(pass.pending, 2);
        f.store.roll_up(now, now).await.expect("rolled up again");

        let window = ChartWindow::ending_at(now, 60, 1);
        let series = f
            .store
            .pending_series(window, None, 10)
            .await
            .expect("read");
        let peaks: Vec<(&str, &str, u64)> = series
            .iter()
            .map(|s| {
                (
                    s.app_name.as_str(),
                    s.repository.as_str(),
                    s.bins[window.bins() - 1],
                )
            })
            .collect();
        assert_eq!(
            peaks,
            [("globex", "globex/widgets", 7), ("acme", "acme/widgets", 3)]
        );
        let one = f.store.pending_series(window, None, 1).await.expect("read");
        assert_eq!(one.len(), 1, "only the largest");
        let acme = f
            .store
            .pending_series(window, Some(&f.acme.0), 10)
            .await
            .expect("read");
        assert_eq!(acme.len(), 1);
        assert_eq!(acme[0].subscription_id, f.acme.1.subscription.id);

        record_attempts(&f.store, &f.acme.1, &[made(now, Some(200), 1)]).await;
        f.store.roll_up(now, now).await.expect("rolled up");
        f.store
            .delete_app(&f.acme.0)
            .await
            .expect("deleted")
            .expect("there");
        let left = f
            .store
            .pending_series(window, None, 10)
            .await
            .expect("read");
        assert_eq!(left.len(), 1, "acme's samples went with it");
        let deliveries = f.store.deliveries(window, None).await.expect("read");
        assert!(deliveries.apps.is_empty(), "and its rollups");
    }

    #[tokio::test]
    async fn pruning_drops_the_minutes_before_the_retention() {
        let f = fixture().await;
        let now = now_ms();
        record_attempts(
            &f.store,
            &f.acme.1,
            &[
                made(minute_ago(now, 20), Some(200), 1),
                made(minute_ago(now, 2), Some(200), 1),
            ],
        )
        .await;
        pending_events(&f.store, &f.acme.1, 1, now).await;
        f.store
            .roll_up(minute_ago(now, 30), now)
            .await
            .expect("rolled up");
        assert_eq!(
            f.store
                .prune_rollups(minute_ago(now, 10))
                .await
                .expect("pruned"),
            1
        );
        assert_eq!(
            f.store
                .prune_rollups(minute_ago(now, 10))
                .await
                .expect("pruned"),
            0
        );
        let rows = delivery_rollup::Entity::find()
            .all(f.store.db())
            .await
            .expect("rows");
        assert_eq!(rows.len(), 1);
        assert_eq!(
            f.store
                .prune_rollups(now + MINUTE_MS)
                .await
                .expect("pruned"),
            2
        );
    }

    fn histogram(counts: &[(usize, u64)], max_ms: i64) -> Histogram {
        let mut h = Histogram {
            max_ms,
            ..Histogram::default()
        };
        for &(bucket, n) in counts {
            h.counts[bucket] = n;
        }
        h
    }

    #[test]
    fn a_percentile_interpolates_inside_its_bucket() {
        // 10 attempts in (50, 100] ms: the median is halfway through.
        let h = histogram(&[(4, 10)], 100);
        assert_eq!(h.percentile(0.5), Some(75.0));
        assert_eq!(h.percentile(1.0), Some(100.0));
        // 90 fast ones (≤ 5 ms), 10 in (1000, 2500] ms whose slowest took 1900.
        let h = histogram(&[(0, 90), (8, 10)], 1_900);
        assert_eq!(h.percentile(0.5), Some(5.0 * 50.0 / 90.0));
        assert_eq!(h.percentile(0.95), Some(1_000.0 + 900.0 * 0.5));
    }

    #[test]
    fn the_open_bucket_ends_at_the_slowest_attempt() {
        let h = histogram(&[(BUCKETS - 1, 4)], 50_000);
        assert_eq!(h.percentile(0.5), Some(30_000.0 + 20_000.0 * 0.5));
        assert_eq!(Histogram::default().percentile(0.5), None);
    }

    #[test]
    fn a_window_counts_its_bins_from_its_first_minute() {
        let window = ChartWindow::ending_at(60 * MINUTE_MS + 30_000, 60, 15);
        assert_eq!((window.from, window.to), (1, 60));
        assert_eq!(window.bins(), 4);
        assert_eq!(window.bin_start_ms(1), 16 * MINUTE_MS);
        assert_eq!(ChartWindow::ending_at(0, 60, 1).bins(), 60);
    }
}
