//! Replays: the changes between two commits written again as new events of
//! one subscription, with the outbox's discipline (the repository locked
//! first, `seq`s from `subscriptions.next_seq`, the events and the replay's
//! row in one transaction); and a replay's progress, counted from its
//! events still waiting, so it stays right once retention prunes the
//! delivered ones.

use entity::{EventKind, EventStatus, event, replay, subscription};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, EntityTrait, IntoActiveModel, QueryFilter, QuerySelect, Set,
};

use super::outbox::{Stamp, write_events};
use super::replay_quotas::{QuotaRefusal, ReplayQuotas};
use super::{Store, StoreError, lock_repositories};
use crate::changes::{Pending, ReplayDiff, changes_for};
use crate::clock::now_ms;
use crate::ids::{AppId, ReplayId, RepoId};
use crate::payload::{ReplayMarker, ReplayPayload};

/// Where a replay stands, as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayProgress {
    pub replay: replay::Model,
    /// Its events still waiting for their turn or their next attempt.
    pub pending: u64,
    /// Its events given up on (they block the subscription until retried
    /// or skipped).
    pub dead: u64,
}

impl ReplayProgress {
    /// Its events delivered (or passed over): all but those still waiting
    /// or dead, whether or not retention has pruned them since.
    pub fn delivered(&self) -> i64 {
        let waiting = i64::try_from(self.pending + self.dead).unwrap_or(i64::MAX);
        std::cmp::max(self.replay.events_total - waiting, 0)
    }

    pub fn status(&self) -> ReplayStatus {
        if self.dead > 0 {
            ReplayStatus::Failed
        } else if self.pending > 0 {
            ReplayStatus::Delivering
        } else {
            ReplayStatus::Delivered
        }
    }
}

/// A replay's state, from its events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayStatus {
    /// Some of its events wait for delivery.
    Delivering,
    /// Every one of its events was delivered (or skipped).
    Delivered,
    /// One of its events is dead: the subscription waits behind it.
    Failed,
}

impl ReplayStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ReplayStatus::Delivering => "delivering",
            ReplayStatus::Delivered => "delivered",
            ReplayStatus::Failed => "failed",
        }
    }
}

/// What became of a replay's write.
#[derive(Debug)]
pub enum Recorded {
    Written(ReplayProgress),
    /// A quota refused it once its size was known: its row is gone and
    /// nothing of it was written.
    Refused(QuotaRefusal),
    /// The app no longer subscribes to the repository: nothing written.
    NotSubscribed,
}

/// Numeric columns of an event row (`seq`, `kind`, `size`'s neighbours:
/// `binary`, `lfs`, `status`, `attempts`, `next_attempt_at`, `created_at`),
/// counted as 8 bytes each.
const EVENT_NUMBERS: u64 = 8 * 8;
/// Numeric columns of a replay's row (`events_total`, `pinned`,
/// `created_at`, `bytes`), 8 bytes each.
const REPLAY_NUMBERS: u64 = 4 * 8;

/// The bytes a change takes in its event's row: the path, the two
/// SHA-256s in hex, the blob id in hex and the size (what every event
/// carries besides is its writer's to count).
fn stored_bytes(change: &Pending<'_>) -> u64 {
    const SHA256_HEX: usize = 64;
    let blob_hex = 2 * change.file.blob_id.as_bytes().len();
    let bytes = change.path.len()
        + SHA256_HEX
        + change.previous.map_or(0, |_| SHA256_HEX)
        + if change.kind == EventKind::Deleted {
            0
        } else {
            blob_hex
        }
        + std::mem::size_of::<i64>();
    u64::try_from(bytes).unwrap_or(u64::MAX)
}

fn text_len(text: &str) -> u64 {
    u64::try_from(text.len()).unwrap_or(u64::MAX)
}

/// The bytes a replay's rows hold: each event's change, what every one of
/// its events repeats (ids, commit, trace, marker), and its own row.
fn replay_bytes(
    sub: &subscription::Model,
    stamp: &Stamp<'_>,
    diff: &ReplayDiff,
    pending: &[Pending<'_>],
) -> u64 {
    let (replay_id, marker) = stamp.replay.unwrap_or_default();
    let ids = text_len(&sub.id) + text_len(&sub.app_id) + text_len(&sub.repository_id);
    let per_event = text_len(crate::ids::EventId::generate().as_str())
        + ids
        + text_len(stamp.commit)
        + stamp.trace_parent.as_deref().map_or(0, text_len)
        + text_len(replay_id)
        + text_len(marker)
        + EVENT_NUMBERS;
    let events: u64 = pending.iter().map(|p| per_event + stored_bytes(p)).sum();
    let row =
        text_len(replay_id) + ids + text_len(&diff.from) + text_len(&diff.to) + REPLAY_NUMBERS;
    events + row
}

impl Store {
    /// Writes replay `id` of `app`'s subscription to `repo`, started by
    /// [`Self::start_replay`]: its row (now with the resolved commits, its
    /// count of events and its bytes) and an event for every change of
    /// `diff` the subscription sees, appended to the subscription's outbox
    /// — unless the app's waiting events or its hourly bytes would pass
    /// `quotas`, when its row goes and nothing is written. Replays write one
    /// at a time per process (they queue here, not on a pooled connection).
    pub async fn record_replay(
        &self,
        app: &AppId,
        repo: &RepoId,
        id: &ReplayId,
        diff: &ReplayDiff,
        quotas: &ReplayQuotas,
    ) -> Result<Recorded, StoreError> {
        let trace_parent = crate::telemetry::current_traceparent();
        let marker = ReplayPayload::stored(&ReplayMarker {
            id: id.as_str().to_owned(),
            from: diff.from.clone(),
            to: diff.to.clone(),
        });
        let pending = changes_for(
            &diff.old,
            &diff.delta,
            &diff.old_visibility,
            &diff.new_visibility,
        );
        // Never closed: a closed semaphore would only mean no turn to wait for.
        let _turn = self.replay_writes.acquire().await.ok();
        let now = now_ms();
        let txn = self.begin_write().await?;
        if lock_repositories(&txn, &[repo.as_str().to_owned()])
            .await?
            .is_empty()
        {
            return Ok(Recorded::NotSubscribed);
        }
        let Some(sub) = subscription::Entity::find()
            .filter(subscription::Column::AppId.eq(app.as_str()))
            .filter(subscription::Column::RepositoryId.eq(repo.as_str()))
            .one(&txn)
            .await?
        else {
            return Ok(Recorded::NotSubscribed);
        };
        let stamp = Stamp {
            // Its content is pinned under the replay's id, not a snapshot's.
            snapshot_id: &None,
            commit: &diff.to,
            trace_parent: &trace_parent,
            now,
            replay: Some((id.as_str(), &marker)),
        };
        let bytes = replay_bytes(&sub, &stamp, diff, &pending);
        let events = u64::try_from(pending.len()).unwrap_or(u64::MAX);
        // Its own row, started or (its lease run out) removed meanwhile.
        replay::Entity::delete_by_id(id.as_str()).exec(&txn).await?;
        if let Err(refusal) =
            super::replay_quotas::check_written(&txn, app.as_str(), events, bytes, quotas).await?
        {
            txn.commit().await?;
            return Ok(Recorded::Refused(refusal));
        }
        // The diff already describes LFS files as the app sees them (see
        // `ReplayRequest::resolve_lfs`).
        let counts = write_events(&txn, &sub, &stamp, true, pending.into_iter()).await?;
        let count = counts.created + counts.updated + counts.deleted;
        let total = i64::try_from(count).unwrap_or(i64::MAX);
        let row = replay::ActiveModel {
            id: Set(id.as_str().to_owned()),
            subscription_id: Set(sub.id.clone()),
            app_id: Set(sub.app_id.clone()),
            repository_id: Set(sub.repository_id.clone()),
            from_commit: Set(diff.from.clone()),
            to_commit: Set(diff.to.clone()),
            events_total: Set(total),
            pinned: Set(true),
            created_at: Set(now),
            bytes: Set(i64::try_from(bytes).unwrap_or(i64::MAX)),
            running_until: Set(None),
        }
        .insert(&txn)
        .await?;
        if count > 0 {
            // A subscription blocked by a dead event or its endpoint's 410
            // stays so; one at rest has events to deliver again.
            let resting = matches!(
                sub.status,
                entity::SubscriptionStatus::Synced | entity::SubscriptionStatus::PendingSnapshot
            );
            let mut active = sub.clone().into_active_model();
            active.next_seq = Set(sub.next_seq + total);
            if resting && sub.last_snapshot_id.is_some() {
                active.status = Set(entity::SubscriptionStatus::Syncing);
            }
            active.updated_at = Set(now);
            active.update(&txn).await?;
        }
        txn.commit().await?;
        for (kind, n) in [
            (EventKind::Created, counts.created),
            (EventKind::Updated, counts.updated),
            (EventKind::Deleted, counts.deleted),
        ] {
            if n > 0 {
                crate::telemetry::events_created(kind, n);
            }
        }
        Ok(Recorded::Written(ReplayProgress {
            replay: row,
            pending: count,
            dead: 0,
        }))
    }

    /// Replay `id` of `app`'s subscription to `repo`, with its progress;
    /// `None` for another app's replay, or another repository's, or one not
    /// written yet.
    pub async fn replay_of_app(
        &self,
        app: &AppId,
        repo: &RepoId,
        id: &ReplayId,
    ) -> Result<Option<ReplayProgress>, StoreError> {
        let Some(row) = replay::Entity::find_by_id(id.as_str())
            .filter(replay::Column::AppId.eq(app.as_str()))
            .filter(replay::Column::RepositoryId.eq(repo.as_str()))
            // One under way has no progress to show yet.
            .filter(replay::Column::RunningUntil.is_null())
            .one(&self.db)
            .await?
        else {
            return Ok(None);
        };
        let waiting: Vec<(EventStatus, i64)> = event::Entity::find()
            .select_only()
            .column(event::Column::Status)
            .column_as(super::count_rows(), "n")
            .filter(event::Column::ReplayId.eq(id.as_str()))
            .filter(event::Column::Status.is_in([EventStatus::Pending, EventStatus::Dead]))
            .group_by(event::Column::Status)
            .into_tuple()
            .all(&self.db)
            .await?;
        let count = |status: EventStatus| {
            waiting
                .iter()
                .find(|(s, _)| *s == status)
                .map_or(0, |(_, n)| u64::try_from(*n).unwrap_or(0))
        };
        Ok(Some(ReplayProgress {
            pending: count(EventStatus::Pending),
            dead: count(EventStatus::Dead),
            replay: row,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn progress(total: i64, pending: u64, dead: u64) -> ReplayProgress {
        ReplayProgress {
            replay: replay::Model {
                id: "rpl_01".into(),
                subscription_id: "sub_1".into(),
                app_id: "app_1".into(),
                repository_id: "repo_1".into(),
                from_commit: "a".repeat(40),
                to_commit: "b".repeat(40),
                events_total: total,
                pinned: true,
                created_at: 0,
                bytes: 0,
                running_until: None,
            },
            pending,
            dead,
        }
    }

    #[test]
    fn delivered_is_what_no_longer_waits_and_the_status_follows() {
        let started = progress(5, 5, 0);
        assert_eq!(
            (started.delivered(), started.status()),
            (0, ReplayStatus::Delivering)
        );
        let halfway = progress(5, 2, 0);
        assert_eq!(
            (halfway.delivered(), halfway.status()),
            (3, ReplayStatus::Delivering)
        );
        let stuck = progress(5, 1, 1);
        assert_eq!(
            (stuck.delivered(), stuck.status()),
            (3, ReplayStatus::Failed)
        );
        // Retention pruned the delivered events: nothing waits, all delivered.
        let done = progress(5, 0, 0);
        assert_eq!(
            (done.delivered(), done.status()),
            (5, ReplayStatus::Delivered)
        );
        let empty = progress(0, 0, 0);
        assert_eq!(
            (empty.delivered(), empty.status()),
            (0, ReplayStatus::Delivered)
        );
    }
}
