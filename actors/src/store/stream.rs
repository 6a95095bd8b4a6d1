//! A pull app's stream (`GET /api/stream`, `GET /api/changes`): its pending
//! events in one order across its subscriptions, and what its consumer has
//! consumed.
//!
//! An event gets its place in the stream (`events.stream_pos`, from the
//! app's `stream_next`) the first time a consumer reads that far, not when
//! it is written: placing is serialised per app (the app's row is written
//! first, a lock on PostgreSQL), so places become visible in order, without
//! gaps, whichever instance wrote the events and whichever serves the
//! stream. A subscription's events are committed in `seq` order (its
//! `next_seq`), so its events take places in `seq` order too.
//!
//! A consumer's cursor names a place (and, inside a chunked file, the
//! chunk it got last). Everything up to a cursor the consumer sends back is
//! consumed: `delivered`, from then on, for retention and for the
//! subscription's status.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::str::FromStr;

use entity::{EventStatus, app, event, subscription};
use sea_orm::sea_query::{Alias, Expr, ExprTrait, Query};
use sea_orm::{ColumnTrait, Condition, EntityTrait, QueryFilter, QueryOrder, QuerySelect};

use super::{Store, StoreError};
use crate::clock::now_ms;
use crate::ids::AppId;

/// Where a consumer is in its app's stream: the place of the last event it
/// got, and the chunk of it when that was not the event's last request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StreamCursor {
    pub place: i64,
    /// `Some(k)`: chunk `k` of the event at `place` was the last message,
    /// and later chunks follow. `None`: the event at `place` was whole.
    pub chunk: Option<u32>,
}

impl StreamCursor {
    /// Before the first event of any stream.
    pub const START: Self = Self {
        place: 0,
        chunk: None,
    };

    /// The cursor of the message for chunk `index` of `total` of the event
    /// at `place`: its last chunk completes the event.
    pub fn of_part(place: i64, index: usize, total: usize) -> Self {
        Self {
            place,
            chunk: (index + 1 < total).then(|| u32::try_from(index).unwrap_or(u32::MAX)),
        }
    }

    /// The last place this cursor consumed entirely.
    pub fn consumed_through(self) -> i64 {
        match self.chunk {
            Some(_) => self.place - 1,
            None => self.place,
        }
    }

    /// Where the stream goes on: the event at `place` from chunk `next` on,
    /// or (`None`) the events after `place`.
    pub fn resume_chunk(self) -> Option<usize> {
        self.chunk.map(|k| k as usize + 1)
    }
}

impl fmt::Display for StreamCursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.chunk {
            None => write!(f, "{}", self.place),
            Some(chunk) => write!(f, "{}.{chunk}", self.place),
        }
    }
}

/// A cursor that is not one Herald gave.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a stream cursor: use the id of a message from the stream")]
pub struct BadCursor;

impl FromStr for StreamCursor {
    type Err = BadCursor;

    fn from_str(raw: &str) -> Result<Self, BadCursor> {
        let digits =
            |s: &str| !s.is_empty() && s.len() <= 18 && s.bytes().all(|b| b.is_ascii_digit());
        let (place, chunk) = match raw.split_once('.') {
            Some((place, chunk)) if digits(place) && digits(chunk) => {
                (place, Some(chunk.parse().map_err(|_| BadCursor)?))
            }
            None if digits(raw) => (raw, None),
            _ => return Err(BadCursor),
        };
        Ok(Self {
            place: place.parse().map_err(|_| BadCursor)?,
            chunk,
        })
    }
}

/// What consuming up to a cursor did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Consumed {
    /// This many events became delivered (0 when they already were).
    Events(u64),
    /// The cursor is past every place given so far: it is not one the
    /// stream sent.
    Ahead,
}

/// Events placed per transaction.
const PLACE_BATCH: u64 = 512;

impl Store {
    /// The app's pending events from `from` (a place) on, in stream order,
    /// at most `limit`, after placing those not placed yet.
    pub async fn stream_events(
        &self,
        app_id: &AppId,
        from: i64,
        limit: u64,
    ) -> Result<Vec<event::Model>, StoreError> {
        // Placing comes before reading. Another reader of the app (a stream,
        // a long poll, the hub) may place the same events at the same time:
        // its placing commits before this one takes the app's row, or this
        // one places them, so the read that follows sees them either way. A
        // read first could miss them, find nothing left to place, and answer
        // an empty page while events wait.
        loop {
            let placed = if self.has_unplaced(app_id).await? {
                self.place_events(app_id).await?
            } else {
                0
            };
            let events = self.placed_from(app_id, from, limit).await?;
            if placed == 0 || u64::try_from(events.len()).unwrap_or(u64::MAX) >= limit {
                return Ok(events);
            }
        }
    }

    async fn placed_from(
        &self,
        app_id: &AppId,
        from: i64,
        limit: u64,
    ) -> Result<Vec<event::Model>, StoreError> {
        Ok(event::Entity::find()
            .filter(event::Column::AppId.eq(app_id))
            .filter(event::Column::StreamPos.gte(from))
            .filter(event::Column::Status.eq(EventStatus::Pending))
            .order_by_asc(event::Column::StreamPos)
            .limit(limit)
            .all(&self.db)
            .await?)
    }

    async fn has_unplaced(&self, app_id: &AppId) -> Result<bool, StoreError> {
        Ok(event::Entity::find()
            .select_only()
            .column(event::Column::Id)
            .filter(event::Column::AppId.eq(app_id))
            .filter(event::Column::StreamPos.is_null())
            .filter(event::Column::Status.eq(EventStatus::Pending))
            .limit(1)
            .into_tuple::<String>()
            .one(&self.db)
            .await?
            .is_some())
    }

    /// [`place_in`], in a transaction of its own.
    async fn place_events(&self, app_id: &AppId) -> Result<u64, StoreError> {
        let txn = self.begin_write().await?;
        let placed = place_in(&txn, app_id).await?;
        txn.commit().await?;
        Ok(placed)
    }

    /// Places the pending events not placed yet of each of `apps` (about
    /// [`PLACE_BATCH`] each) in one transaction, the apps' rows locked in
    /// one order: what the streams' hub does once for every app with news,
    /// so that their streams only read.
    pub async fn place_for_streams(&self, apps: &[String]) -> Result<u64, StoreError> {
        let mut apps = apps.to_vec();
        apps.sort_unstable();
        let txn = self.begin_write().await?;
        let mut placed = 0;
        for app in &apps {
            placed += place_in(&txn, &AppId::stored(app.as_str())).await?;
        }
        txn.commit().await?;
        Ok(placed)
    }

    /// For each of `apps`: the place its stream gives next, and whether it
    /// has pending events not placed yet. One probe of the stream index per
    /// app: asked at every ring of the outbox for all apps with open
    /// streams.
    pub async fn stream_news(
        &self,
        apps: &[String],
    ) -> Result<Vec<(String, i64, bool)>, StoreError> {
        let unplaced = Query::select()
            .expr(Expr::val(1))
            .from(event::Entity)
            .and_where(
                Expr::col((event::Entity, event::Column::AppId))
                    .equals((app::Entity, app::Column::Id)),
            )
            .and_where(Expr::col((event::Entity, event::Column::StreamPos)).is_null())
            .and_where(Expr::col((event::Entity, event::Column::Status)).eq(EventStatus::Pending))
            .to_owned();
        Ok(app::Entity::find()
            .select_only()
            .column(app::Column::Id)
            .column(app::Column::StreamNext)
            .expr(Expr::exists(unplaced))
            .filter(app::Column::Id.is_in(apps.iter().map(String::as_str)))
            .into_tuple()
            .all(&self.db)
            .await?)
    }

    /// Marks the app's events up to `cursor` consumed (delivered now), and
    /// the subscriptions left with nothing to deliver synced.
    pub async fn consume(
        &self,
        app_id: &AppId,
        cursor: StreamCursor,
    ) -> Result<Consumed, StoreError> {
        let through = cursor.consumed_through();
        let next: Option<i64> = app::Entity::find_by_id(app_id.as_str())
            .select_only()
            .column(app::Column::StreamNext)
            .into_tuple()
            .one(&self.db)
            .await?;
        let Some(next) = next else {
            return Ok(Consumed::Events(0));
        };
        if cursor.place >= next {
            return Ok(Consumed::Ahead);
        }
        if through < 1 {
            return Ok(Consumed::Events(0));
        }
        let txn = self.begin_write().await?;
        let consumed = event::Entity::update_many()
            .col_expr(event::Column::Status, Expr::value(EventStatus::Delivered))
            .col_expr(event::Column::DeliveredAt, Expr::value(now_ms()))
            .col_expr(
                event::Column::LastError,
                Expr::value(Option::<String>::None),
            )
            .filter(event::Column::AppId.eq(app_id))
            .filter(event::Column::StreamPos.lte(through))
            .filter(event::Column::Status.eq(EventStatus::Pending))
            .exec(&txn)
            .await?
            .rows_affected;
        if consumed > 0 {
            settle_consumed(&txn, app_id).await?;
        }
        txn.commit().await?;
        Ok(Consumed::Events(consumed))
    }

    /// Gives up on a pull app's event whose body cannot be made (its
    /// content is gone from the remote): it turns `dead`, as it would for a
    /// push app, and the stream goes on without it. Operators see it, and
    /// retry or skip it, among the dead events.
    pub async fn give_up_pulled(
        &self,
        event_id: &str,
        class: entity::ErrorClass,
        error: &str,
    ) -> Result<(), StoreError> {
        event::Entity::update_many()
            .col_expr(event::Column::Status, Expr::value(EventStatus::Dead))
            .col_expr(event::Column::NextAttemptAt, Expr::value(now_ms()))
            .col_expr(
                event::Column::LastError,
                Expr::value(format!("{class}: {error}")),
            )
            .filter(event::Column::Id.eq(event_id))
            .filter(event::Column::Status.eq(EventStatus::Pending))
            .exec(&self.db)
            .await?;
        Ok(())
    }
}

/// Places about [`PLACE_BATCH`] of the app's pending events not placed yet,
/// oldest first, each subscription's in `seq` order, within `txn`; returns
/// how many (0: none was waiting, or the app is gone).
async fn place_in(txn: &sea_orm::DatabaseTransaction, app_id: &AppId) -> Result<u64, StoreError> {
    // The app's row first: on PostgreSQL, a lock held to the commit, so
    // one placing at a time per app and places visible in order.
    let locked = app::Entity::update_many()
        .col_expr(app::Column::StreamNext, Expr::col(app::Column::StreamNext))
        .filter(app::Column::Id.eq(app_id))
        .exec(txn)
        .await?;
    if locked.rows_affected == 0 {
        return Ok(0);
    }
    let unplaced = || {
        event::Entity::find()
            .select_only()
            .column(event::Column::Id)
            .column(event::Column::SubscriptionId)
            .column(event::Column::Seq)
            .column(event::Column::CreatedAt)
            .filter(event::Column::AppId.eq(app_id))
            .filter(event::Column::StreamPos.is_null())
            .filter(event::Column::Status.eq(EventStatus::Pending))
    };
    let oldest: Vec<(String, String, i64, i64)> = unplaced()
        .order_by_asc(event::Column::CreatedAt)
        .limit(PLACE_BATCH)
        .into_tuple()
        .all(txn)
        .await?;
    if oldest.is_empty() {
        return Ok(0);
    }
    // Each subscription's events up to the highest `seq` taken, so that
    // none of its events is placed before an earlier one of its own
    // (clocks of two instances may disagree on `created_at`).
    let mut highest: BTreeMap<&str, i64> = BTreeMap::new();
    for (_, subscription, seq, _) in &oldest {
        let top = highest.entry(subscription.as_str()).or_insert(*seq);
        *top = Ord::max(*top, *seq);
    }
    let mut through = Condition::any();
    for (subscription, seq) in &highest {
        through = through.add(
            Condition::all()
                .add(event::Column::SubscriptionId.eq(*subscription))
                .add(event::Column::Seq.lte(*seq)),
        );
    }
    let mut batch: Vec<(String, String, i64, i64)> =
        unplaced().filter(through).into_tuple().all(txn).await?;
    batch.sort_by(|a, b| (a.3, &a.1, a.2).cmp(&(b.3, &b.1, b.2)));
    // The places the batch takes, in order, given to each subscription's
    // events by `seq`.
    let next: i64 = app::Entity::find_by_id(app_id.as_str())
        .select_only()
        .column(app::Column::StreamNext)
        .into_tuple()
        .one(txn)
        .await?
        .unwrap_or(1);
    let mut places: HashMap<&str, Vec<i64>> = HashMap::new();
    for (at, (_, subscription, _, _)) in batch.iter().enumerate() {
        places
            .entry(subscription.as_str())
            .or_default()
            .push(next + i64::try_from(at).unwrap_or(i64::MAX));
    }
    let mut by_subscription: HashMap<&str, Vec<(i64, &str)>> = HashMap::new();
    for (id, subscription, seq, _) in &batch {
        by_subscription
            .entry(subscription.as_str())
            .or_default()
            .push((*seq, id.as_str()));
    }
    for (subscription, mut events) in by_subscription {
        events.sort_unstable();
        for ((_, id), place) in events.into_iter().zip(&places[subscription]) {
            event::Entity::update_many()
                .col_expr(event::Column::StreamPos, Expr::value(*place))
                .filter(event::Column::Id.eq(id))
                .exec(txn)
                .await?;
        }
    }
    let count = i64::try_from(batch.len()).unwrap_or(i64::MAX);
    app::Entity::update_many()
        .col_expr(app::Column::StreamNext, Expr::value(next + count))
        .filter(app::Column::Id.eq(app_id))
        .exec(txn)
        .await?;
    Ok(u64::try_from(count).unwrap_or(0))
}

/// The app's syncing subscriptions with nothing left to deliver become
/// synced, as a push lane settles its subscription.
async fn settle_consumed(
    txn: &sea_orm::DatabaseTransaction,
    app_id: &AppId,
) -> Result<(), StoreError> {
    let left = Alias::new("left_over");
    let waiting = Query::select()
        .expr(Expr::val(1))
        .from_as(event::Entity, left.clone())
        .and_where(
            Expr::col((left.clone(), event::Column::SubscriptionId))
                .equals((subscription::Entity, subscription::Column::Id)),
        )
        .and_where(
            Expr::col((left, event::Column::Status))
                .is_in([EventStatus::Pending, EventStatus::Dead]),
        )
        .to_owned();
    subscription::Entity::update_many()
        .col_expr(
            subscription::Column::Status,
            Expr::value(entity::SubscriptionStatus::Synced),
        )
        .col_expr(subscription::Column::UpdatedAt, Expr::value(now_ms()))
        .filter(subscription::Column::AppId.eq(app_id))
        .filter(subscription::Column::Status.eq(entity::SubscriptionStatus::Syncing))
        .filter(Condition::all().not().add(Expr::exists(waiting)))
        .exec(txn)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_reads_back_as_written() {
        for cursor in [
            StreamCursor::START,
            StreamCursor::of_part(42, 0, 1),
            StreamCursor::of_part(42, 2, 5),
            StreamCursor::of_part(42, 4, 5),
        ] {
            assert_eq!(cursor.to_string().parse(), Ok(cursor));
        }
        assert_eq!(StreamCursor::of_part(7, 2, 5).to_string(), "7.2");
        assert_eq!(StreamCursor::of_part(7, 4, 5).to_string(), "7");
    }

    #[test]
    fn only_herald_cursors_parse() {
        for bad in [
            "",
            "-1",
            "1.",
            ".1",
            "1.2.3",
            "a",
            "1e3",
            " 1",
            "+1",
            "99999999999999999999",
            "1.-1",
        ] {
            assert_eq!(bad.parse::<StreamCursor>(), Err(BadCursor), "{bad:?}");
        }
    }

    #[test]
    fn a_chunk_cursor_consumes_the_events_before_its_own() {
        let mid = StreamCursor::of_part(10, 1, 3);
        assert_eq!(mid.consumed_through(), 9);
        assert_eq!(mid.resume_chunk(), Some(2));
        let whole = StreamCursor::of_part(10, 2, 3);
        assert_eq!(whole.consumed_through(), 10);
        assert_eq!(whole.resume_chunk(), None);
    }
}
