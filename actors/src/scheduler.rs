//! The scheduler decides which repositories are due (poll interval, pending
//! subscriptions, retry after failure) and pokes their watchers. It is also
//! poked at once by the HTTP layer (registration, resync, token update) and
//! by inbound push webhooks.
//!
//! It supervises the repository watchers: one per repository, started on
//! demand, restarted with backoff when one fails (the others go on), and
//! forgotten when its repository is gone.
//!
//! Due work lives in the database (`repositories.next_scan_at` and the scan
//! leases), so a restarted scheduler, or another instance, finds it again on
//! its next tick.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, SupervisionEvent};
use tokio::task::JoinHandle;
use tracing::{debug, error, warn};

use crate::clock::now_ms;
use crate::ids::RepoId;
use crate::repo_watcher::{RepoWatcher, WatcherArgs, WatcherConfig, WatcherMsg};
use crate::scan::ScanPool;
use crate::store::Store;
use crate::supervisor::{RestartPolicy, RestartTracker};

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
    /// Restart a watcher that failed (sent after its backoff).
    Restart(RepoId),
}

pub struct Scheduler;

pub struct SchedulerArgs {
    pub store: Store,
    pub tick: Duration,
    pub pool: ScanPool,
    pub watcher: WatcherConfig,
    pub restart: RestartPolicy,
}

pub struct SchedulerState {
    args: SchedulerArgs,
    /// Stops the tick timer when the scheduler stops.
    ticker: JoinHandle<()>,
    watchers: HashMap<RepoId, ActorRef<WatcherMsg>>,
    restarts: HashMap<RepoId, RestartTracker>,
}

impl SchedulerState {
    /// The repository's watcher, started when it has none.
    async fn watcher(
        &mut self,
        myself: &ActorRef<SchedulerMsg>,
        repository: &RepoId,
    ) -> Result<ActorRef<WatcherMsg>, ActorProcessingErr> {
        if let Some(watcher) = self.watchers.get(repository) {
            return Ok(watcher.clone());
        }
        let args = WatcherArgs {
            repository: repository.clone(),
            store: self.args.store.clone(),
            pool: self.args.pool.clone(),
            config: self.args.watcher.clone(),
        };
        let (watcher, _) = Actor::spawn_linked(None, RepoWatcher, args, myself.get_cell()).await?;
        self.watchers.insert(repository.clone(), watcher.clone());
        Ok(watcher)
    }

    async fn scan(
        &mut self,
        myself: &ActorRef<SchedulerMsg>,
        repository: &RepoId,
    ) -> Result<(), ActorProcessingErr> {
        let watcher = self.watcher(myself, repository).await?;
        if let Err(err) = watcher.send_message(WatcherMsg::Scan) {
            warn!(%repository, error = %err, "watcher unreachable; the next tick retries");
        }
        Ok(())
    }

    fn repository_of(&self, cell: &ActorCell) -> Option<RepoId> {
        self.watchers
            .iter()
            .find(|(_, w)| w.get_id() == cell.get_id())
            .map(|(repo, _)| repo.clone())
    }
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
        debug!(tick = ?args.tick, "scheduler starting");
        let ticker = myself.send_interval(args.tick, || SchedulerMsg::Tick);
        // Look at once rather than one tick after start-up.
        myself.send_message(SchedulerMsg::Tick)?;
        Ok(SchedulerState {
            args,
            ticker,
            watchers: HashMap::new(),
            restarts: HashMap::new(),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            SchedulerMsg::Tick => {
                match state.args.store.due_repositories(now_ms(), DUE_BATCH).await {
                    Ok(due) => {
                        for repository in due {
                            let Some(repository) = RepoId::parse(&repository.id) else {
                                continue;
                            };
                            state.scan(&myself, &repository).await?;
                        }
                    }
                    // A database hiccup must not kill the scheduler: the next tick retries.
                    Err(err) => warn!(error = %err, "could not look for due repositories"),
                }
            }
            SchedulerMsg::RepositoryRegistered(repository)
            | SchedulerMsg::ScanNow(repository)
            | SchedulerMsg::Restart(repository) => state.scan(&myself, &repository).await?,
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match event {
            SupervisionEvent::ActorFailed(cell, err) => {
                let Some(repository) = state.repository_of(&cell) else {
                    return Ok(());
                };
                state.watchers.remove(&repository);
                let policy = state.args.restart;
                let delay = state
                    .restarts
                    .entry(repository.clone())
                    .or_default()
                    .on_failure(&policy, Instant::now());
                match delay {
                    Some(delay) => {
                        warn!(%repository, error = %err, ?delay, "watcher failed; restarting it");
                        myself.send_after(delay, move || SchedulerMsg::Restart(repository));
                    }
                    // Not restarted now; the scheduler's tick starts it again
                    // once the repository is due, at the pace of the poll.
                    None => {
                        error!(%repository, error = %err, "watcher keeps failing; left to the next poll")
                    }
                }
            }
            SupervisionEvent::ActorTerminated(cell, _, _) => {
                if let Some(repository) = state.repository_of(&cell) {
                    state.watchers.remove(&repository);
                    state.restarts.remove(&repository);
                }
            }
            _ => {}
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        state.ticker.abort();
        for (_, watcher) in state.watchers.drain() {
            watcher.stop(Some("shutdown".to_owned()));
        }
        Ok(())
    }
}
