//! The scheduler decides which repositories are due (poll interval, pending
//! subscriptions, retry after failure) and pokes their watchers. It is also
//! poked at once by the HTTP layer (registration, resync, token update) and
//! by inbound push webhooks.
//!
//! Due work lives in the database (`repositories.next_scan_at` and the scan
//! leases), so a restarted scheduler, or another instance, finds it again on
//! its next tick.

use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::task::JoinHandle;
use tracing::{debug, warn};

use crate::clock::now_ms;
use crate::ids::RepoId;
use crate::store::Store;

/// How many due repositories one tick looks at.
const DUE_BATCH: u64 = 256;

/// Messages of the scheduler.
#[derive(Debug)]
pub enum SchedulerMsg {
    /// Look for due work (sent every `scheduler.tick`).
    Tick,
    /// A subscription was created: scan its repository now.
    RepositoryRegistered(RepoId),
    /// Something says the repository changed (push hook, resync, new token):
    /// scan it now.
    ScanNow(RepoId),
}

pub struct Scheduler;

pub struct SchedulerArgs {
    pub store: Store,
    pub tick: Duration,
    pub instance_id: String,
}

pub struct SchedulerState {
    store: Store,
    /// Stops the tick timer when the scheduler stops.
    ticker: JoinHandle<()>,
}

impl Actor for Scheduler {
    type Msg = SchedulerMsg;
    type State = SchedulerState;
    type Arguments = SchedulerArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: SchedulerArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        debug!(instance = %args.instance_id, tick = ?args.tick, "scheduler starting");
        let ticker = myself.send_interval(args.tick, || SchedulerMsg::Tick);
        // Look at once rather than one tick after start-up.
        myself.send_message(SchedulerMsg::Tick)?;
        Ok(SchedulerState {
            store: args.store,
            ticker,
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            SchedulerMsg::Tick => match state.store.due_repositories(now_ms(), DUE_BATCH).await {
                Ok(due) => {
                    for repository in due {
                        debug!(repository = %repository.id, "repository due for a scan");
                    }
                }
                // A database hiccup must not kill the scheduler: the next tick retries.
                Err(err) => warn!(error = %err, "could not look for due repositories"),
            },
            SchedulerMsg::RepositoryRegistered(repo) | SchedulerMsg::ScanNow(repo) => {
                debug!(repository = %repo, "scan requested");
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
