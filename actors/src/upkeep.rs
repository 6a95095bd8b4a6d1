//! Upkeep for months of running: delivered and skipped events past
//! `delivery.event_retention` (with their attempts), attempts past
//! `delivery.attempt_retention`, and snapshots nothing refers to any more
//! are deleted. A pass runs as a task this actor owns, in batches of
//! [`BATCH`] rows, each its own short transaction, so it never holds up
//! delivery; passes do not overlap. Several instances may prune at once:
//! deleting is idempotent. Each pass also bounds the LFS object cache
//! (`git.lfs_cache_bytes`), least recently used first.

use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::clock::{millis, now_ms};
use crate::lfs::cache::Cache;
use crate::owned::OwnedTask;
use crate::store::{Store, StoreError};

/// Rows deleted per statement.
pub const BATCH: u64 = 500;

/// Settings of the upkeep.
#[derive(Debug, Clone)]
pub struct UpkeepConfig {
    pub event_retention: Duration,
    pub attempt_retention: Duration,
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
    ticker: JoinHandle<()>,
    pass: Option<OwnedTask>,
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
        let ticker = myself.send_interval(args.config.every(), || UpkeepMsg::Pass);
        Ok(UpkeepState {
            args,
            ticker,
            pass: None,
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
                state.pass = Some(OwnedTask::spawn(pass(store, config), move |result| {
                    let _ = myself.send_message(UpkeepMsg::Done(result));
                }));
            }
            UpkeepMsg::Done(result) => {
                state.pass = None;
                if let Err(panic) = result {
                    return Err(format!("an upkeep pass panicked: {panic}").into());
                }
            }
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        state.ticker.abort();
        Ok(())
    }
}

/// One pass; a database error ends it, and the next pass tries again.
async fn pass(store: Store, config: UpkeepConfig) {
    let now = now_ms();
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
