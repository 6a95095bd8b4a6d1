//! The scheduler decides which repositories are due (poll interval, pending
//! subscriptions, retry after failure) and pokes their watchers. It is also
//! poked at once by the HTTP layer (registration, resync, token update) and
//! by inbound push webhooks.
//!
//! It supervises the repository watchers: one per repository, started on
//! demand, restarted with backoff when one fails (the others go on), and
//! forgotten when its repository is gone.
//!
//! A scan somebody asked for (`RepositoryRegistered`, `ScanNow`) is urgent:
//! it waits for a scan worker ahead of the poll's rescans (`Tick`).
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
use crate::restart::{RestartPolicy, RestartTracker};
use crate::scan::{Priority, ScanPool};
use crate::store::Store;

/// How many due repositories one tick looks at.
const DUE_BATCH: u64 = 256;

/// When a tick found a full batch due, the next look comes this soon (or
/// at the next tick, if sooner): the poll must not fall behind at
/// `DUE_BATCH` scans a tick. Repositories still waiting for a worker are
/// found again, and their watchers ignore the repeat.
const LOOK_AGAIN: Duration = Duration::from_secs(1);

/// Messages of the scheduler.
#[derive(Debug)]
pub enum SchedulerMsg {
    /// Look for due work (sent every `scheduler.tick`).
    Tick,
    /// Look again before the next tick: the last look found a full batch.
    LookAgain,
    /// A subscription was created: scan its repository now.
    RepositoryRegistered(RepoId),
    /// Something says the repository changed (push hook, resync, new token):
    /// scan it now.
    ScanNow(RepoId),
    /// Restart a watcher that failed (sent after its backoff).
    Restart(RepoId),
    /// The running watchers (supervision tests).
    #[cfg(test)]
    Watchers(ractor::RpcReplyPort<Vec<(RepoId, ActorRef<WatcherMsg>)>>),
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
    /// A look before the next tick is already on its way.
    looking_again: bool,
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
        priority: Priority,
    ) -> Result<(), ActorProcessingErr> {
        let watcher = self.watcher(myself, repository).await?;
        if let Err(err) = watcher.send_message(WatcherMsg::Scan(priority)) {
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
            looking_again: false,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            SchedulerMsg::Tick | SchedulerMsg::LookAgain => {
                if matches!(message, SchedulerMsg::LookAgain) {
                    state.looking_again = false;
                }
                match state.args.store.due_repositories(now_ms(), DUE_BATCH).await {
                    Ok(due) => {
                        if due.len() as u64 == DUE_BATCH && !state.looking_again {
                            state.looking_again = true;
                            myself.send_after(LOOK_AGAIN.min(state.args.tick), || {
                                SchedulerMsg::LookAgain
                            });
                        }
                        for repository in due {
                            let Some(repository) = RepoId::parse(&repository.id) else {
                                continue;
                            };
                            state
                                .scan(&myself, &repository, Priority::Scheduled)
                                .await?;
                        }
                    }
                    // A database hiccup must not kill the scheduler: the next tick retries.
                    Err(err) => warn!(error = %err, "could not look for due repositories"),
                }
            }
            SchedulerMsg::RepositoryRegistered(repository) | SchedulerMsg::ScanNow(repository) => {
                state.scan(&myself, &repository, Priority::Urgent).await?
            }
            // Still due in the database: it goes as the poll would.
            SchedulerMsg::Restart(repository) => {
                state
                    .scan(&myself, &repository, Priority::Scheduled)
                    .await?
            }
            #[cfg(test)]
            SchedulerMsg::Watchers(reply) => {
                let _ = reply.send(
                    state
                        .watchers
                        .iter()
                        .map(|(r, w)| (r.clone(), w.clone()))
                        .collect(),
                );
            }
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::crypto::Keyring;
    use crate::ids::AppId;
    use crate::store::apps::NewApp;
    use crate::store::subscriptions::NewSubscription;

    async fn watchers(scheduler: &ActorRef<SchedulerMsg>) -> Vec<(RepoId, ActorRef<WatcherMsg>)> {
        ractor::call_t!(scheduler, SchedulerMsg::Watchers, 5_000).expect("the scheduler answers")
    }

    #[tokio::test]
    async fn a_crashing_watcher_is_restarted_and_the_others_keep_running() {
        let dir = tempfile::tempdir().expect("temp dir");
        let keys = Arc::new(Keyring::from_hex(&Keyring::generate_hex(), &[]).expect("key"));
        let url = format!("sqlite://{}", dir.path().join("herald.db").display());
        let store = Store::connect(&url, keys).await.expect("store");
        store.migrate().await.expect("schema");
        let app = store
            .onboard_app(NewApp {
                name: "acme".into(),
                base_url: "https://1.1.1.1/h".into(),
                email: "a@b.co".into(),
                website: None,
                description: None,
                client_auth_key: secrecy::SecretString::from("k".repeat(16)),
            })
            .await
            .expect("app");
        let app = AppId::parse(&app.app.id).expect("id");
        let mut repos = Vec::new();
        for name in ["one", "two"] {
            // Remotes that do not exist: scans fail, watchers stay.
            let missing = dir.path().join(name).display().to_string();
            let (view, _) = store
                .subscribe(
                    &app,
                    NewSubscription {
                        url: format!("file://{missing}"),
                        fetch_url: format!("file://{missing}"),
                        owner: "acme".into(),
                        name: name.into(),
                        branch: None,
                        git_token: None,
                        is_private: Some(false),
                        include: vec![],
                        exclude: vec![],
                    },
                )
                .await
                .expect("subscribed");
            repos.push(RepoId::parse(&view.repository.id).expect("id"));
        }
        let (pool, workers) = ScanPool::standalone(2).await.expect("scan workers");
        let args = SchedulerArgs {
            store: store.clone(),
            tick: Duration::from_secs(3600),
            pool,
            watcher: WatcherConfig::for_tests(dir.path()),
            restart: RestartPolicy {
                max_restarts: 3,
                window: Duration::from_secs(60),
                base_backoff: Duration::from_millis(10),
                max_backoff: Duration::from_millis(50),
            },
        };
        let (scheduler, handle) = Actor::spawn(None, Scheduler, args)
            .await
            .expect("scheduler");
        for repo in &repos {
            scheduler
                .send_message(SchedulerMsg::ScanNow(repo.clone()))
                .expect("send");
        }
        let before = watchers(&scheduler).await;
        assert_eq!(before.len(), 2);
        let (crashed_repo, crashed) = before
            .iter()
            .find(|(r, _)| *r == repos[0])
            .cloned()
            .expect("watcher");
        let (_, survivor) = before
            .iter()
            .find(|(r, _)| *r == repos[1])
            .cloned()
            .expect("watcher");

        crashed.send_message(WatcherMsg::Crash).expect("send");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let restarted = loop {
            let now = watchers(&scheduler).await;
            if let Some((_, w)) = now
                .iter()
                .find(|(r, w)| *r == crashed_repo && w.get_id() != crashed.get_id())
            {
                break w.clone();
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the watcher was not restarted"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert_eq!(restarted.get_status(), ractor::ActorStatus::Running);
        let after = watchers(&scheduler).await;
        let still = after
            .iter()
            .find(|(r, _)| *r == repos[1])
            .map(|(_, w)| w.get_id());
        assert_eq!(
            still,
            Some(survivor.get_id()),
            "the sibling was not touched"
        );
        assert_eq!(survivor.get_status(), ractor::ActorStatus::Running);

        scheduler.stop(None);
        handle.await.expect("scheduler stops");
        workers.stop(None);
        store.close().await.ok();
    }
}
