//! The scheduler decides which repositories are due (poll interval, pending
//! subscriptions, retry after failure) and has them scanned. It is also
//! poked at once by the HTTP layer (registration, resync, token update) and
//! by inbound push webhooks.
//!
//! A scan asked for first waits for a scan worker, as a small task of the
//! scheduler's; only once it has one does the scheduler start the
//! repository's watcher, which runs that scan and stops. So an idle
//! repository, or one whose scan still waits, holds no actor: the actors
//! alive are the scans under way, at most one per scan worker, however many
//! repositories are watched (BENCHMARKS.md, "Many repositories").
//!
//! A scan waits for its worker in the line of the request that started it
//! ([`Priority`]): a scan somebody asked for (`RepositoryRegistered`,
//! `ScanNow`) is urgent, ahead of the poll's rescans (`Tick`). A request
//! more urgent than its line, arriving while it still waits, moves it to
//! the urgent line. Once it has its worker, the scan may already have looked
//! at the remote: only an urgent request (something says the repository
//! moved) scans it again when it ends; the poll's, which repeats while the
//! repository is due, does not.
//!
//! It supervises the watchers: a watcher that fails is started again, for
//! a new scan, after a backoff (the others go on).
//!
//! Due work lives in the database (`repositories.next_scan_at` and the scan
//! leases), so a restarted scheduler, or another instance, finds it again on
//! its next tick.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, SupervisionEvent};
use tokio::sync::watch;
use tokio_util::task::AbortOnDropHandle;
use tracing::{debug, error, warn};

use crate::clock::now_ms;
use crate::ids::RepoId;
use crate::owned::OwnedTask;
use crate::repo_watcher::{RepoWatcher, WatcherArgs, WatcherConfig, WatcherMsg};
use crate::restart::{RestartPolicy, RestartTracker};
use crate::scan::{Priority, ScanPool, ScanSlot};
use crate::store::Store;

/// How many due repositories one tick looks at.
const DUE_BATCH: u64 = 256;

/// When a tick found a full batch due, the next look comes this soon (or
/// at the next tick, if sooner): the poll must not fall behind at
/// `DUE_BATCH` scans a tick. Repositories still waiting for a worker, or
/// being scanned, are found again, and the repeat changes nothing.
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
    /// Start a watcher again after the one that failed (sent after its
    /// backoff).
    Restart(RepoId),
    /// A scan waiting for a worker has one (`Err`: the wait panicked).
    Reserved(RepoId, Result<ScanSlot, String>),
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
    /// The tick timer, stopped when the state is dropped: a panic in the
    /// actor skips `post_stop`, not the drop.
    _ticker: AbortOnDropHandle<()>,
    /// The repositories with a scan asked for or under way; the others
    /// hold nothing here.
    scans: HashMap<RepoId, Scan>,
    restarts: HashMap<RepoId, RestartTracker>,
    /// A look before the next tick is already on its way.
    looking_again: bool,
}

/// A repository's scan, from the request to its end.
enum Scan {
    /// Waiting for a scan worker in the line `line` names.
    Waiting {
        line: watch::Sender<Priority>,
        _wait: OwnedTask,
    },
    /// Run by its watcher; `again`: an urgent request came meanwhile.
    Running {
        watcher: ActorRef<WatcherMsg>,
        again: bool,
    },
}

impl SchedulerState {
    /// Asks for a scan of `repository`, coalesced with the one asked for or
    /// under way.
    fn scan(&mut self, myself: &ActorRef<SchedulerMsg>, repository: &RepoId, priority: Priority) {
        match self.scans.get_mut(repository) {
            Some(Scan::Waiting { line, .. }) => {
                line.send_if_modified(|line| {
                    let moved = priority < *line;
                    *line = (*line).min(priority);
                    moved
                });
            }
            Some(Scan::Running { again, .. }) => *again |= priority == Priority::Urgent,
            None => {
                let (line, waiting) = watch::channel(priority);
                let (store, pool) = (self.args.store.clone(), self.args.pool.clone());
                let (reply, reserved) = (myself.clone(), repository.clone());
                let wait = OwnedTask::spawn(
                    reserve(store, pool, repository.clone(), waiting),
                    move |slot| {
                        let _ = reply.send_message(SchedulerMsg::Reserved(reserved, slot));
                    },
                );
                let scan = Scan::Waiting { line, _wait: wait };
                self.scans.insert(repository.clone(), scan);
            }
        }
    }

    /// Starts the watcher of a scan that has its worker.
    async fn run(
        &mut self,
        myself: &ActorRef<SchedulerMsg>,
        repository: RepoId,
        slot: ScanSlot,
    ) -> Result<(), ActorProcessingErr> {
        if !matches!(self.scans.get(&repository), Some(Scan::Waiting { .. })) {
            return Ok(());
        }
        let args = WatcherArgs {
            repository: repository.clone(),
            store: self.args.store.clone(),
            config: self.args.watcher.clone(),
            slot,
        };
        let (watcher, _) = Actor::spawn_linked(None, RepoWatcher, args, myself.get_cell()).await?;
        self.scans.insert(
            repository,
            Scan::Running {
                watcher,
                again: false,
            },
        );
        Ok(())
    }

    /// The repository whose watcher `cell` is, forgotten with its scan,
    /// and whether an urgent request came while it ran.
    fn ended(&mut self, cell: &ActorCell) -> Option<(RepoId, bool)> {
        let repository = self
            .scans
            .iter()
            .find_map(|(repository, scan)| match scan {
                Scan::Running { watcher, .. } if watcher.get_id() == cell.get_id() => {
                    Some(repository.clone())
                }
                _ => None,
            })?;
        match self.scans.remove(&repository) {
            Some(Scan::Running { again, .. }) => Some((repository, again)),
            _ => None,
        }
    }
}

/// Waits for a scan worker for `repository` in the line `line` names, and
/// joins the more urgent line when it is moved there meanwhile.
async fn reserve(
    store: Store,
    pool: ScanPool,
    repository: RepoId,
    mut line: watch::Receiver<Priority>,
) -> ScanSlot {
    // Charged to the subscriber holding the fewest workers: one tenant's
    // slow remotes cannot hold every worker. Boxed: the wait may be long,
    // and a task keeps the size of its largest step.
    let tenants = Box::pin(store.subscriber_apps(&repository))
        .await
        .unwrap_or_default();
    loop {
        let priority = *line.borrow_and_update();
        tokio::select! {
            slot = pool.slot_for(tenants.clone(), priority) => return slot,
            Ok(()) = line.changed() => {}
        }
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
        let ticker = AbortOnDropHandle::new(myself.send_interval(args.tick, || SchedulerMsg::Tick));
        // Look at once rather than one tick after start-up.
        myself.send_message(SchedulerMsg::Tick)?;
        Ok(SchedulerState {
            args,
            _ticker: ticker,
            scans: HashMap::new(),
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
                            state.scan(&myself, &repository, Priority::Scheduled);
                        }
                    }
                    // A database hiccup must not kill the scheduler: the next tick retries.
                    Err(err) => warn!(error = %err, "could not look for due repositories"),
                }
            }
            SchedulerMsg::RepositoryRegistered(repository) | SchedulerMsg::ScanNow(repository) => {
                state.scan(&myself, &repository, Priority::Urgent)
            }
            // Still due in the database: it goes as the poll would.
            SchedulerMsg::Restart(repository) => {
                state.scan(&myself, &repository, Priority::Scheduled)
            }
            SchedulerMsg::Reserved(repository, Ok(slot)) => {
                state.run(&myself, repository, slot).await?
            }
            SchedulerMsg::Reserved(repository, Err(panic)) => {
                return Err(format!(
                    "waiting for a scan worker for {repository} panicked: {panic}"
                )
                .into());
            }
            #[cfg(test)]
            SchedulerMsg::Watchers(reply) => {
                let running = state
                    .scans
                    .iter()
                    .filter_map(|(repository, scan)| match scan {
                        Scan::Running { watcher, .. } => {
                            Some((repository.clone(), watcher.clone()))
                        }
                        Scan::Waiting { .. } => None,
                    });
                let _ = reply.send(running.collect());
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
                let Some((repository, _)) = state.ended(&cell) else {
                    return Ok(());
                };
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
            // A scan that ended: a failure after the next start counts
            // afresh, and an urgent request that came meanwhile is served.
            SupervisionEvent::ActorTerminated(cell, _, _) => {
                if let Some((repository, again)) = state.ended(&cell) {
                    state.restarts.remove(&repository);
                    if again {
                        state.scan(&myself, &repository, Priority::Urgent);
                    }
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
        // Waiting scans are aborted as their tasks are dropped.
        for (_, scan) in state.scans.drain() {
            if let Scan::Running { watcher, .. } = scan {
                watcher.stop(Some("shutdown".to_owned()));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::git::LowSpeed;
    use crate::git::fixtures::{commit, source_repository};
    use crate::test_support;

    async fn watchers(scheduler: &ActorRef<SchedulerMsg>) -> Vec<(RepoId, ActorRef<WatcherMsg>)> {
        ractor::call_t!(scheduler, SchedulerMsg::Watchers, 5_000).expect("the scheduler answers")
    }

    /// A database with one app subscribed to a repository at each of
    /// `urls`.
    struct Rig {
        dir: tempfile::TempDir,
        store: Store,
        repos: Vec<RepoId>,
    }

    impl Rig {
        async fn new(urls: &[String]) -> Self {
            let dir = tempfile::tempdir().expect("temp dir");
            let store = test_support::store(&test_support::sqlite_url(dir.path())).await;
            let app = test_support::onboard(&store, test_support::new_app("acme")).await;
            let mut repos = Vec::new();
            for (n, url) in urls.iter().enumerate() {
                let subscription =
                    test_support::new_subscription(url, "acme", &format!("repo-{n}"));
                let (_, repo) = test_support::subscribe(&store, &app, subscription).await;
                repos.push(repo);
            }
            Self { dir, store, repos }
        }

        /// A scheduler over the database (ticking once, at start, then
        /// hourly) with `pool`'s scan workers, starting a failed watcher
        /// again after `backoff`.
        async fn scheduler(
            &self,
            pool: ScanPool,
            watcher: WatcherConfig,
            backoff: Duration,
        ) -> (ActorRef<SchedulerMsg>, tokio::task::JoinHandle<()>) {
            let args = SchedulerArgs {
                store: self.store.clone(),
                tick: Duration::from_secs(3600),
                pool,
                watcher,
                restart: RestartPolicy {
                    max_restarts: 3,
                    window: Duration::from_secs(60),
                    base_backoff: backoff,
                    max_backoff: backoff,
                },
            };
            Actor::spawn(None, Scheduler, args)
                .await
                .expect("scheduler")
        }
    }

    /// Polls `scheduler` until `done` holds of its running watchers.
    async fn watchers_until(
        scheduler: &ActorRef<SchedulerMsg>,
        what: &str,
        mut done: impl FnMut(&[(RepoId, ActorRef<WatcherMsg>)]) -> bool,
    ) -> Vec<(RepoId, ActorRef<WatcherMsg>)> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let now = watchers(scheduler).await;
            if done(&now) {
                return now;
            }
            assert!(tokio::time::Instant::now() < deadline, "{what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn a_crashing_watcher_is_restarted_and_the_others_keep_running() {
        // A remote that takes connections and never answers: each scan
        // waits for it, and its watcher stays, until the test closes it.
        let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("a listener");
        let port = silent.local_addr().expect("its address").port();
        let urls: Vec<String> = ["one", "two"]
            .iter()
            .map(|name| format!("git://127.0.0.1:{port}/{name}.git"))
            .collect();
        let rig = Rig::new(&urls).await;
        let repos = rig.repos.clone();
        let mut config = WatcherConfig::for_tests(rig.dir.path());
        config.fetch_timeout = Duration::from_secs(3600);
        config.low_speed = LowSpeed {
            limit: 0,
            time: Duration::from_secs(3600),
        };
        // The crashed scan's lease, which nobody releases, has expired when
        // the scan starts again: that scan claims it and waits too.
        config.lease_ttl = Duration::from_secs(1);
        let backoff = Duration::from_secs(2);
        // A worker for each scan, and one for the restarted scan: the
        // crashed one's fetch keeps its worker until the remote closes.
        let (pool, workers) = ScanPool::standalone(3).await.expect("scan workers");
        let (scheduler, handle) = rig.scheduler(pool, config, backoff).await;
        // The first tick finds both new repositories due.
        let before = watchers_until(&scheduler, "both scans did not start", |w| w.len() == 2).await;
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
        let after = watchers_until(&scheduler, "the watcher was not restarted", |now| {
            now.iter()
                .any(|(r, w)| *r == crashed_repo && w.get_id() != crashed.get_id())
        })
        .await;
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
        // The fetches fail as the remote goes; their workers are free again.
        drop(silent);
        workers.stop(None);
        rig.store.close().await.ok();
    }

    /// Waits until `repository`'s scan has recorded `head` and its watcher
    /// has stopped.
    async fn scanned_and_idle(
        scheduler: &ActorRef<SchedulerMsg>,
        store: &Store,
        repository: &RepoId,
        head: &str,
    ) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let recorded = store
                .repository(repository)
                .await
                .expect("query")
                .and_then(|r| r.head_commit);
            if recorded.as_deref() == Some(head) && watchers(scheduler).await.is_empty() {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no scan recorded {head} and ended (head {recorded:?})"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn a_watcher_runs_while_its_scan_does_and_a_request_or_the_poll_starts_another() {
        let (_remote, source) = source_repository();
        let first = commit(&source, "README.md", "one");
        let rig = Rig::new(&[format!("file://{}", source.display())]).await;
        let repo = rig.repos[0].clone();
        let (pool, workers) = ScanPool::standalone(1).await.expect("scan workers");
        // The only worker held: the first scan waits for it.
        let held = pool.slot().await;
        let config = WatcherConfig::for_tests(rig.dir.path());
        let backoff = Duration::from_millis(10);
        let (scheduler, handle) = rig.scheduler(pool, config, backoff).await;

        // The first tick finds the new repository due; its scan waits for a
        // worker without a watcher, then runs, and its watcher stops.
        assert!(
            watchers(&scheduler).await.is_empty(),
            "a scan waiting for a worker has no watcher"
        );
        drop(held);
        scanned_and_idle(&scheduler, &rig.store, &repo, &first).await;

        // A push, then a request (a push hook, the API): scanned at once.
        let second = commit(&source, "README.md", "two");
        scheduler
            .send_message(SchedulerMsg::ScanNow(repo.clone()))
            .expect("send");
        scanned_and_idle(&scheduler, &rig.store, &repo, &second).await;

        // Another push nobody announces: the poll finds the repository due.
        let third = commit(&source, "README.md", "three");
        rig.store
            .reschedule(&repo, now_ms())
            .await
            .expect("due now");
        scheduler.send_message(SchedulerMsg::Tick).expect("send");
        scanned_and_idle(&scheduler, &rig.store, &repo, &third).await;

        scheduler.stop(None);
        handle.await.expect("scheduler stops");
        workers.stop(None);
        rig.store.close().await.ok();
    }
}
