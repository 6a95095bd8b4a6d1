//! Delivery attempts written straight into the database, as many as a
//! test or a bench needs, without sending anything: the rows a lane would
//! have written (an event per ten attempts, as retries make them).

use entity::{EventKind, EventStatus, delivery_attempt, event};
use sea_orm::{ActiveValue::Set, ColumnTrait, EntityTrait, QuerySelect, TransactionTrait};

use crate::ids::{AttemptId, EventId};
use crate::store::Store;
use crate::store::subscriptions::SubscriptionView;

/// Attempts of one event.
const PER_EVENT: usize = 10;
/// Rows per insert: within both databases' limits on bound values.
const ROWS: usize = 1_000;

/// One attempt: when (Unix ms), the answer's status (`None`: no answer)
/// and how long it took.
#[derive(Debug, Clone, Copy)]
pub struct Made {
    pub at: i64,
    pub status: Option<i32>,
    pub latency_ms: i64,
}

/// Writes `attempts` as attempts of new delivered events of `subscription`.
pub async fn record_attempts(store: &Store, subscription: &SubscriptionView, attempts: &[Made]) {
    let db = store.db();
    let last_seq = last_seq(store).await;
    let mut seq = last_seq;
    for rows in attempts.chunks(ROWS) {
        let txn = db.begin().await.expect("a transaction");
        let mut events = Vec::new();
        let mut made = Vec::new();
        for batch in rows.chunks(PER_EVENT) {
            seq += 1;
            let id = EventId::generate().into_string();
            events.push(delivered_event(&id, subscription, seq, batch[0].at));
            made.extend(batch.iter().map(|a| delivery_attempt::ActiveModel {
                id: Set(AttemptId::generate().into_string()),
                event_id: Set(id.clone()),
                chunk_index: Set(None),
                attempted_at: Set(a.at),
                status_code: Set(a.status),
                latency_ms: Set(a.latency_ms),
                error_class: Set(None),
                response_excerpt: Set(None),
                request_timestamp: Set(None),
                traceparent: Set(None),
            }));
        }
        event::Entity::insert_many(events)
            .exec(&txn)
            .await
            .expect("the events are written");
        delivery_attempt::Entity::insert_many(made)
            .exec(&txn)
            .await
            .expect("the attempts are written");
        txn.commit().await.expect("the rows commit");
    }
}

/// The highest `seq` of any event (0 without events): new events take the
/// ones after it, unique in any subscription.
async fn last_seq(store: &Store) -> i64 {
    event::Entity::find()
        .select_only()
        .column_as(event::Column::Seq.max(), "seq")
        .into_tuple::<Option<i64>>()
        .one(store.db())
        .await
        .expect("the events are read")
        .flatten()
        .unwrap_or(0)
}

fn delivered_event(
    id: &str,
    subscription: &SubscriptionView,
    seq: i64,
    at: i64,
) -> event::ActiveModel {
    event::ActiveModel {
        id: Set(id.to_owned()),
        subscription_id: Set(subscription.subscription.id.clone()),
        app_id: Set(subscription.subscription.app_id.clone()),
        repository_id: Set(subscription.repository.id.clone()),
        snapshot_id: Set(None),
        seq: Set(seq),
        kind: Set(EventKind::Updated),
        path: Set(Some(format!("file-{seq}.txt"))),
        sha256: Set(None),
        previous_sha256: Set(None),
        size: Set(Some(1)),
        blob_id: Set(None),
        binary: Set(false),
        renamed_from: Set(None),
        commit_sha: Set(None),
        payload: Set(None),
        status: Set(EventStatus::Delivered),
        attempts: Set(1),
        next_attempt_at: Set(at),
        last_error: Set(None),
        created_at: Set(at),
        delivered_at: Set(Some(at)),
        trace_parent: Set(None),
        stream_pos: Set(None),
        replay_id: Set(None),
        lfs: Set(false),
    }
}

/// Writes `count` pending events of `subscription`, created at `at`.
pub async fn pending_events(store: &Store, subscription: &SubscriptionView, count: usize, at: i64) {
    let db = store.db();
    let last_seq = last_seq(store).await;
    let events = (1..=count as i64).map(|n| event::ActiveModel {
        status: Set(EventStatus::Pending),
        delivered_at: Set(None),
        ..delivered_event(
            &EventId::generate().into_string(),
            subscription,
            last_seq + n,
            at,
        )
    });
    event::Entity::insert_many(events)
        .exec(db)
        .await
        .expect("the events are written");
}
