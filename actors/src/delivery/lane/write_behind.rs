//! The lane's writes: successes queued and written a batch at a time, in
//! a task beside the sends; every other outcome is written at once (see
//! the record stage).

use std::time::{Duration, Instant};

use super::Pipeline;
use super::batch::BATCH;
use crate::owned::Pending;
use crate::store::StoreError;
use crate::store::delivery::Attempt;

/// Successful deliveries are written a batch at a time: one transaction per
/// [`FLUSH_EVERY`] events (or [`FLUSH_AFTER`]) instead of one per event.
/// Events delivered but not yet written when Herald dies are delivered again
/// after the restart, with the same `webhook-id` (at least once, as
/// promised); every other outcome is written before the lane goes on.
const FLUSH_EVERY: usize = BATCH as usize;
const FLUSH_AFTER: Duration = Duration::from_millis(250);

#[derive(Default)]
/// Successes delivered and not yet written.
pub(super) struct Unrecorded {
    /// The last (or only) parts' attempts: their events are delivered.
    attempts: Vec<Attempt>,
    /// The attempts of chunks before a file's last, for its history.
    parts: Vec<Attempt>,
    since: Option<Instant>,
}

impl Pipeline {
    /// Queues a delivered event's successful attempt for [`Pipeline::flush`].
    pub(super) fn delivered(&mut self, attempt: Attempt) {
        self.delivered.since.get_or_insert_with(Instant::now);
        self.delivered.attempts.push(attempt);
    }

    /// Queues the successful attempt of a chunk before a file's last, for
    /// the event's history.
    pub(super) fn delivered_part(&mut self, attempt: Attempt) {
        self.delivered.since.get_or_insert_with(Instant::now);
        self.delivered.parts.push(attempt);
    }

    fn flush_due(&self) -> bool {
        self.delivered.attempts.len() + self.delivered.parts.len() >= FLUSH_EVERY
            || self
                .delivered
                .since
                .is_some_and(|t| t.elapsed() >= FLUSH_AFTER)
    }

    /// Writes the queued deliveries in one transaction, after the write
    /// under way.
    pub(super) async fn flush(&mut self) -> Result<(), StoreError> {
        self.written().await?;
        let (attempts, parts) = self.take_queued();
        self.store
            .record_deliveries(&self.subscription, &self.lease, attempts, parts)
            .await
    }

    /// Hands the queued deliveries to a write beside the lane, on a blocking
    /// thread (building its statements would hold a runtime worker for
    /// milliseconds), when they are due and no write is under way. A write
    /// that ended is looked at first: one that found the lease lost ends the
    /// lane here, before its next send.
    pub(super) async fn write_behind(&mut self) -> Result<(), StoreError> {
        if self.writing.as_ref().is_some_and(Pending::is_finished) {
            self.written().await?;
        }
        if self.writing.is_none() && self.flush_due() {
            let (attempts, parts) = self.take_queued();
            let (store, subscription, lease) = (
                self.store.clone(),
                self.subscription.clone(),
                self.lease.clone(),
            );
            self.writing = Some(Pending::spawn_on_blocking_thread(async move {
                store
                    .record_deliveries(&subscription, &lease, attempts, parts)
                    .await
            }));
        }
        Ok(())
    }

    /// Waits for the write under way, if any, and gives its result.
    async fn written(&mut self) -> Result<(), StoreError> {
        let Some(writing) = self.writing.take() else {
            return Ok(());
        };
        writing.wait().await.unwrap_or_else(|| {
            Err(StoreError::Db(sea_orm::DbErr::Custom(
                "the runtime stopped while delivered events were being recorded".to_owned(),
            )))
        })
    }

    /// The queued deliveries and chunks' attempts, taken to be written.
    fn take_queued(&mut self) -> (Vec<Attempt>, Vec<Attempt>) {
        self.delivered.since = None;
        (
            std::mem::take(&mut self.delivered.attempts),
            std::mem::take(&mut self.delivered.parts),
        )
    }
}
