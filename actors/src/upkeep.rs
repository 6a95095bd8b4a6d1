//! Upkeep for months of running: delivered and skipped events past
//! `delivery.event_retention` (with their attempts), attempts past
//! `delivery.attempt_retention`, and snapshots nothing refers to any more
//! are deleted. A pass runs as a task this actor owns, in batches of
//! [`BATCH`] rows, each its own short transaction, so it never holds up
//! delivery; passes do not overlap. Several instances may prune at once:
//! deleting is idempotent.
//!
//! Each pass also keeps the console's delivery-health rollups
//! (`store/rollups.rs`): it recomputes the last [`ROLLUP_LOOKBACK`] of
//! per-minute delivery figures (the first pass after start, everything
//! still within `delivery.rollup_retention`, so the minutes no instance
//! ran through are filled in), samples the pending events, and prunes
//! rollups past their retention. Recomputing is idempotent too, so every
//! instance does it and they agree.
//!
//! Each pass also bounds the LFS object cache (`git.lfs_cache_bytes`),
//! least recently used first.

use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio_util::task::AbortOnDropHandle;
use tracing::{debug, info, warn};

use crate::clock::{millis, now_ms};
use crate::lfs::cache::Cache;
use crate::owned::OwnedTask;
use crate::store::rollups::{MINUTE_MS, RollUp};
use crate::store::{Store, StoreError};

/// Rows deleted per statement.
pub const BATCH: u64 = 500;

/// How far back each pass recomputes the delivery rollups: the minutes
/// whose attempts may still be written (a lane writes its successes up to
/// 250 ms late, a stopping one after the request timeout).
pub const ROLLUP_LOOKBACK: Duration = Duration::from_secs(5 * 60);

/// Settings of the upkeep.
#[derive(Debug, Clone)]
pub struct UpkeepConfig {
    pub event_retention: Duration,
    pub attempt_retention: Duration,
    /// How long the per-minute delivery rollups are kept.
    pub rollup_retention: Duration,
    /// The LFS object cache and the most it may hold, when there is one.
    pub lfs_cache: Option<(Cache, u64)>,
}

impl UpkeepConfig {
    /// How often a pass starts: often enough that nothing outlives its
    /// retention by much more than a quarter of it, at most every minute.
    fn every(&self) -> Duration {
        (self.event_retention.min(self.attempt_retention) / 4)
            .clamp(Duration::from_millis(250), Duration::from_secs(60))
    }

    /// Where a pass at `now` starts recomputing rollups (Unix ms): the
    /// lookback, or on the first pass the rollup retention, but never before
    /// the first whole minute whose attempts are all still kept (a minute
    /// that retention has begun to prune would be counted short). `None`
    /// when no such minute has begun (retention under a minute).
    fn rollup_from(&self, now: i64, first: bool) -> Option<i64> {
        let kept = millis(self.event_retention.min(self.attempt_retention));
        let back = millis(if first {
            self.rollup_retention
        } else {
            ROLLUP_LOOKBACK
        });
        let whole = (now - kept + MINUTE_MS - 1).div_euclid(MINUTE_MS) * MINUTE_MS;
        let from = (now - back).max(whole);
        (from <= now).then_some(from)
    }
}

/// Messages of the upkeep actor.
#[derive(Debug)]
pub enum UpkeepMsg {
    /// Start a pass, unless one runs.
    Pass,
    /// A pass ended; `Err` carries a panic's message.
    Done(Result<(), String>),
}

pub struct Upkeep;

pub struct UpkeepArgs {
    pub store: Store,
    pub config: UpkeepConfig,
}

pub struct UpkeepState {
    args: UpkeepArgs,
    /// Aborted when the state is dropped: a panic in the actor skips
    /// `post_stop`, not the drop.
    _ticker: AbortOnDropHandle<()>,
    pass: Option<OwnedTask>,
    /// Whether a pass has ended since start (the first one catches up on
    /// the rollups).
    passed: bool,
}

impl Actor for Upkeep {
    type Msg = UpkeepMsg;
    type State = UpkeepState;
    type Arguments = UpkeepArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: UpkeepArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let ticker =
            AbortOnDropHandle::new(myself.send_interval(args.config.every(), || UpkeepMsg::Pass));
        Ok(UpkeepState {
            args,
            _ticker: ticker,
            pass: None,
            passed: false,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            UpkeepMsg::Pass if state.pass.is_some() => {}
            UpkeepMsg::Pass => {
                let (store, config) = (state.args.store.clone(), state.args.config.clone());
                let first = !state.passed;
                state.pass = Some(OwnedTask::spawn(
                    pass(store, config, first),
                    move |result| {
                        let _ = myself.send_message(UpkeepMsg::Done(result));
                    },
                ));
            }
            UpkeepMsg::Done(result) => {
                state.pass = None;
                state.passed = true;
                if let Err(panic) = result {
                    return Err(format!("an upkeep pass panicked: {panic}").into());
                }
            }
        }
        Ok(())
    }
}

/// One pass; a database error ends it, and the next pass tries again.
async fn pass(store: Store, config: UpkeepConfig, first: bool) {
    let now = now_ms();
    roll_up(&store, &config, now, first).await;
    let events_before = now - millis(config.event_retention);
    let attempts_before = now - millis(config.attempt_retention);
    let result: Result<(u64, u64, u64), StoreError> = async {
        let events = batches(|| store.prune_events(events_before, BATCH)).await?;
        let attempts = batches(|| store.prune_attempts(attempts_before, BATCH)).await?;
        let snapshots = batches(|| store.prune_snapshots(BATCH)).await?;
        Ok((events, attempts, snapshots))
    }
    .await;
    match result {
        Ok((0, 0, 0)) => debug!("upkeep: nothing past its retention"),
        Ok((events, attempts, snapshots)) => {
            info!(
                events,
                attempts, snapshots, "upkeep: deleted what was past its retention"
            )
        }
        Err(err) => warn!(error = %err, "upkeep pass interrupted; the next one goes on"),
    }
    if let Some((cache, max_bytes)) = config.lfs_cache {
        match tokio::task::spawn_blocking(move || cache.prune(max_bytes)).await {
            Ok(Ok(report)) if report.removed > 0 => info!(
                removed = report.removed,
                kept_bytes = report.kept_bytes,
                "upkeep: LFS cache pruned"
            ),
            Ok(Ok(_)) => {}
            Ok(Err(err)) => warn!(error = %err, "upkeep: the LFS cache could not be pruned"),
            Err(err) => warn!(error = %err, "upkeep: the LFS cache pruning failed"),
        }
    }
}

/// Recomputes the recent delivery rollups, samples the pending events and
/// prunes rollups past their retention; a failure is logged, and the next
/// pass recomputes the same minutes.
async fn roll_up(store: &Store, config: &UpkeepConfig, now: i64, first: bool) {
    let result: Result<(Option<RollUp>, u64), StoreError> = async {
        let rolled = match config.rollup_from(now, first) {
            Some(from) => Some(store.roll_up(from, now).await?),
            None => None,
        };
        let pruned = store
            .prune_rollups(now - millis(config.rollup_retention))
            .await?;
        Ok((rolled, pruned))
    }
    .await;
    match result {
        Ok((rolled, pruned)) => debug!(?rolled, pruned, "upkeep: delivery rollups kept"),
        Err(err) => warn!(error = %err, "delivery rollups not kept; the next pass tries again"),
    }
}

/// Runs `delete` until a batch comes back short; the total deleted.
async fn batches<F, Fut>(mut delete: F) -> Result<u64, StoreError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<u64, StoreError>>,
{
    let mut total = 0;
    loop {
        let deleted = delete().await?;
        total += deleted;
        if deleted < BATCH {
            return Ok(total);
        }
        // Let the deliveries' writes in between two batches.
        tokio::task::yield_now().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(retention_secs: u64) -> UpkeepConfig {
        UpkeepConfig {
            event_retention: Duration::from_secs(retention_secs),
            attempt_retention: Duration::from_secs(30 * 86_400),
            rollup_retention: Duration::from_secs(7 * 86_400),
            lfs_cache: None,
        }
    }

    #[test]
    fn rollups_are_recomputed_only_over_minutes_retention_left_whole() {
        let now = 1_000 * MINUTE_MS + 30_000;
        let month = config(30 * 86_400);
        assert_eq!(month.rollup_from(now, false), Some(now - 5 * MINUTE_MS));
        assert_eq!(month.rollup_from(now, true), Some(now - 7 * 86_400_000));
        // Two minutes kept: from the first minute that began within them.
        assert_eq!(config(120).rollup_from(now, false), Some(999 * MINUTE_MS));
        assert_eq!(config(120).rollup_from(now, true), Some(999 * MINUTE_MS));
        // Twenty seconds kept: this minute began before them.
        assert_eq!(config(20).rollup_from(now, false), None);
    }
}
