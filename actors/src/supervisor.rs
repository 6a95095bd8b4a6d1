//! The root of the supervision tree. It starts every long-lived actor, restarts
//! a child that failed (with exponential backoff and a restart-intensity limit,
//! so a child that keeps crashing cannot spin), and stops the whole tree on
//! shutdown. A crashing child never takes its siblings down: each is restarted
//! on its own.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use secrecy::SecretString;
use tracing::{debug, error, warn};

use crate::bulk::{BulkArgs, BulkMsg, BulkRunner};
use crate::delivery::pull::PullRenderer;
use crate::delivery::{DeliveryConfig, Dispatcher, DispatcherArgs, DispatcherMsg};
use crate::git::{self, ConnectRule, Credentials, GitError, LowSpeed, RemoteHead, RemoteSpec};
use crate::heartbeat::{HeartbeatActor, HeartbeatArgs};
use crate::hook_processor::{HookMsg, HookProcessor, HookProcessorArgs};
use crate::repo_watcher::WatcherConfig;
use crate::restart::{Ended, RestartPolicy, RestartTracker};
use crate::scan::ScanPool;
use crate::scan::workers::PoolOwner;
use crate::scheduler::{Scheduler, SchedulerArgs, SchedulerMsg};
use crate::signals::{ClusterBell, OutboxSignal, Rings, ScanRequests, Wake};
use crate::store::Store;
use crate::store::instances::Heartbeat;
use crate::upkeep::{Upkeep, UpkeepArgs, UpkeepConfig};
use crate::wakeups::{LocalTargets, Wakeups, WakeupsArgs};

/// Settings of the engine, derived from Herald's configuration.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// How often the scheduler looks for due work (and the hook processor
    /// for stored hooks nobody told it about).
    pub tick: Duration,
    /// How many scans may run at once (blocking workers).
    pub scan_workers: usize,
    /// How many of them one app's repositories may hold at once.
    pub scan_workers_per_app: usize,
    /// What every repository watcher shares (mirrors, timeouts, breaker).
    pub watcher: WatcherConfig,
    pub delivery: DeliveryConfig,
    pub restart: RestartPolicy,
    /// This instance among those sharing the database.
    pub cluster: ClusterConfig,
    /// What is kept for how long.
    pub upkeep: UpkeepConfig,
}

/// What the instance heartbeat and the bulk runner need.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// This instance as its heartbeat row shows it.
    pub instance: Heartbeat,
    /// How often the heartbeat row is written (`cluster.heartbeat_interval`).
    pub heartbeat_interval: Duration,
    /// Work not renewed for this long has lost its owner (`cluster.lease_ttl`).
    pub lease_ttl: Duration,
}

/// The children the root supervisor owns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Child {
    /// The scan workers (fetch, diff).
    Scans,
    /// The access-check workers, apart so that a registration never waits
    /// behind long fetches.
    Probes,
    Scheduler,
    Dispatcher,
    Hooks,
    /// This instance's heartbeat row.
    Heartbeat,
    /// Bulk operations started from any instance.
    Bulk,
    /// Wake-ups to and from the other instances (PostgreSQL only).
    Wakeups,
    /// Retention: events, attempts, snapshots.
    Upkeep,
}

impl Child {
    /// In start order: the workers before those who give them work.
    const ALL: [Child; 9] = [
        Child::Scans,
        Child::Probes,
        Child::Scheduler,
        Child::Dispatcher,
        Child::Hooks,
        Child::Heartbeat,
        Child::Bulk,
        Child::Wakeups,
        Child::Upkeep,
    ];

    fn name(self) -> &'static str {
        match self {
            Child::Scans => "scan workers",
            Child::Probes => "access-check workers",
            Child::Scheduler => "scheduler",
            Child::Dispatcher => "dispatcher",
            Child::Hooks => "hook processor",
            Child::Heartbeat => "instance heartbeat",
            Child::Bulk => "bulk runner",
            Child::Wakeups => "cluster wake-ups",
            Child::Upkeep => "upkeep",
        }
    }
}

/// Messages of the root supervisor.
#[derive(Debug)]
pub enum SupervisorMsg {
    /// Forward a message to the scheduler (dropped, with a warning, while the
    /// scheduler is being restarted: its work is in the database and the next
    /// tick finds it).
    ToScheduler(SchedulerMsg),
    /// Wake the delivery engine (an event was retried or skipped).
    WakeDelivery,
    /// Process stored inbound hooks now (dropped while the hook processor is
    /// being restarted: it looks for stored hooks when it starts).
    ProcessHooks,
    /// Run the bulk operations nobody runs yet (dropped while the bulk
    /// runner is being restarted: it looks for them when it starts).
    RunBulk,
    /// (Re)start a child; sent after a restart backoff.
    Start(Child),
    /// Whether every child is running.
    Health(RpcReplyPort<bool>),
    /// Kills a child, as a crash would (supervision tests).
    #[cfg(test)]
    Kill(Child),
}

pub struct Supervisor;

pub struct SupervisorArgs {
    pub store: Store,
    pub config: EngineConfig,
    /// The scan workers, as the scheduler and every watcher reach them.
    pub pool: ScanPool,
    pub scans: PoolOwner,
    pub probes: PoolOwner,
    /// This instance's rings, published to the others by the wake-ups actor.
    pub rings: Rings,
}

pub struct SupervisorState {
    store: Store,
    config: EngineConfig,
    /// Shared by the scheduler and every watcher; follows the pool actor
    /// across restarts.
    pool: ScanPool,
    scans: PoolOwner,
    probes: PoolOwner,
    rings: Rings,
    running: HashMap<Child, ractor::ActorCell>,
    scheduler: Option<ActorRef<SchedulerMsg>>,
    dispatcher: Option<ActorRef<DispatcherMsg>>,
    hooks: Option<ActorRef<HookMsg>>,
    bulk: Option<ActorRef<BulkMsg>>,
    /// Stopped last, so an instance shutting down still looks alive.
    heartbeat: Option<ractor::ActorCell>,
    restarts: HashMap<Child, RestartTracker>,
}

impl SupervisorState {
    async fn start(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        child: Child,
    ) -> Result<(), ActorProcessingErr> {
        let cell = match child {
            Child::Scans => self.scans.spawn(Some(myself.get_cell())).await?.get_cell(),
            Child::Probes => self.probes.spawn(Some(myself.get_cell())).await?.get_cell(),
            Child::Scheduler => {
                let args = SchedulerArgs {
                    store: self.store.clone(),
                    tick: self.config.tick,
                    pool: self.pool.clone(),
                    watcher: self.config.watcher.clone(),
                    restart: self.config.restart,
                };
                let (scheduler, _) =
                    Actor::spawn_linked(None, Scheduler, args, myself.get_cell()).await?;
                self.scheduler = Some(scheduler.clone());
                scheduler.get_cell()
            }
            Child::Dispatcher => {
                let args = DispatcherArgs {
                    store: self.store.clone(),
                    pool: self.pool.clone(),
                    config: self.config.delivery.clone(),
                    signal: self.config.watcher.signal.clone(),
                    restart: self.config.restart,
                };
                let (dispatcher, _) =
                    Actor::spawn_linked(None, Dispatcher, args, myself.get_cell()).await?;
                self.dispatcher = Some(dispatcher.clone());
                dispatcher.get_cell()
            }
            Child::Hooks => {
                let supervisor = myself.clone();
                let args = HookProcessorArgs {
                    store: self.store.clone(),
                    scans: ScanRequests::new(move |repository| {
                        let _ = supervisor.send_message(SupervisorMsg::ToScheduler(
                            SchedulerMsg::ScanNow(repository),
                        ));
                    }),
                    sweep: self.config.tick,
                };
                let (hooks, _) =
                    Actor::spawn_linked(None, HookProcessor, args, myself.get_cell()).await?;
                self.hooks = Some(hooks.clone());
                hooks.get_cell()
            }
            Child::Heartbeat => {
                let args = HeartbeatArgs {
                    store: self.store.clone(),
                    heartbeat: self.config.cluster.instance.clone(),
                    interval: self.config.cluster.heartbeat_interval,
                };
                let (heartbeat, _) =
                    Actor::spawn_linked(None, HeartbeatActor, args, myself.get_cell()).await?;
                self.heartbeat = Some(heartbeat.get_cell());
                heartbeat.get_cell()
            }
            Child::Bulk => {
                let cluster = &self.config.cluster;
                let args = BulkArgs {
                    store: self.store.clone(),
                    instance_id: cluster.instance.id.clone(),
                    lease_ttl: cluster.lease_ttl,
                    tick: cluster.heartbeat_interval,
                    signal: self.config.watcher.signal.clone(),
                    pause: self.config.delivery.bulk_retry_pause,
                };
                let (bulk, _) =
                    Actor::spawn_linked(None, BulkRunner, args, myself.get_cell()).await?;
                self.bulk = Some(bulk.clone());
                bulk.get_cell()
            }
            Child::Upkeep => {
                let args = UpkeepArgs {
                    store: self.store.clone(),
                    config: self.config.upkeep.clone(),
                };
                Actor::spawn_linked(None, Upkeep, args, myself.get_cell())
                    .await?
                    .0
                    .get_cell()
            }
            Child::Wakeups => {
                let (hooks, scans) = (myself.clone(), myself.clone());
                let args = WakeupsArgs {
                    store: self.store.clone(),
                    instance_id: self.config.cluster.instance.id.clone(),
                    rings: self.rings.clone(),
                    targets: LocalTargets {
                        outbox: self.config.watcher.signal.clone(),
                        hooks: std::sync::Arc::new(move || {
                            let _ = hooks.send_message(SupervisorMsg::ProcessHooks);
                        }),
                        scans: ScanRequests::new(move |repository| {
                            let _ = scans.send_message(SupervisorMsg::ToScheduler(
                                SchedulerMsg::ScanNow(repository),
                            ));
                        }),
                    },
                };
                Actor::spawn_linked(None, Wakeups, args, myself.get_cell())
                    .await?
                    .0
                    .get_cell()
            }
        };
        self.running.insert(child, cell);
        debug!(child = child.name(), "actor started");
        Ok(())
    }

    /// The children this instance runs: wake-ups only on PostgreSQL.
    fn children(&self) -> Vec<Child> {
        let shared = self.store.postgres_pool().is_some();
        Child::ALL
            .into_iter()
            .filter(|child| *child != Child::Wakeups || shared)
            .collect()
    }

    fn child_of(&self, cell: &ractor::ActorCell) -> Option<Child> {
        self.running
            .iter()
            .find(|(_, running)| running.get_id() == cell.get_id())
            .map(|(child, _)| *child)
    }

    fn forget(&mut self, child: Child) {
        self.running.remove(&child);
        match child {
            Child::Scans => self.scans.ended(),
            Child::Probes => self.probes.ended(),
            Child::Scheduler => self.scheduler = None,
            Child::Dispatcher => self.dispatcher = None,
            Child::Hooks => self.hooks = None,
            Child::Heartbeat => self.heartbeat = None,
            Child::Wakeups | Child::Upkeep => {}
            Child::Bulk => self.bulk = None,
        }
    }
}

impl Actor for Supervisor {
    type Msg = SupervisorMsg;
    type State = SupervisorState;
    type Arguments = SupervisorArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: SupervisorArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let mut state = SupervisorState {
            store: args.store,
            pool: args.pool,
            scans: args.scans,
            probes: args.probes,
            rings: args.rings,
            config: args.config,
            running: HashMap::new(),
            scheduler: None,
            dispatcher: None,
            hooks: None,
            bulk: None,
            heartbeat: None,
            restarts: HashMap::new(),
        };
        for child in state.children() {
            state.start(&myself, child).await?;
        }
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            SupervisorMsg::ToScheduler(msg) => match &state.scheduler {
                Some(scheduler) => {
                    if let Err(err) = scheduler.send_message(msg) {
                        warn!(error = %err, "scheduler unreachable; the next tick picks the work up");
                    }
                }
                None => warn!("scheduler restarting; the next tick picks the work up"),
            },
            SupervisorMsg::WakeDelivery => {
                if let Some(dispatcher) = &state.dispatcher {
                    let _ = dispatcher.send_message(DispatcherMsg::Wake);
                }
            }
            SupervisorMsg::ProcessHooks => {
                if let Some(hooks) = &state.hooks {
                    let _ = hooks.send_message(HookMsg::Process);
                }
            }
            SupervisorMsg::RunBulk => {
                if let Some(bulk) = &state.bulk {
                    let _ = bulk.send_message(BulkMsg::Claim);
                }
            }
            SupervisorMsg::Start(child) => state.start(&myself, child).await?,
            #[cfg(test)]
            SupervisorMsg::Kill(child) => {
                if let Some(cell) = state.running.get(&child) {
                    cell.kill();
                }
            }
            SupervisorMsg::Health(reply) => {
                // A reply port whose caller gave up is not an error of ours.
                let _ = reply.send(
                    state
                        .children()
                        .iter()
                        .all(|c| state.running.contains_key(c)),
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
        let Some(Ended {
            child: cell,
            reason,
            ..
        }) = Ended::of(event)
        else {
            return Ok(());
        };
        let Some(child) = state.child_of(&cell) else {
            return Ok(());
        };
        state.forget(child);
        let policy = state.config.restart;
        let delay = state
            .restarts
            .entry(child)
            .or_default()
            .on_failure(&policy, Instant::now());
        match delay {
            Some(delay) => {
                warn!(child = child.name(), %reason, ?delay, "actor stopped; restarting");
                myself.send_after(delay, move || SupervisorMsg::Start(child));
                Ok(())
            }
            None => {
                error!(child = child.name(), %reason, "actor keeps failing; giving up");
                Err(format!("{} failed too often", child.name()).into())
            }
        }
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        // Stop finding new work first, then let deliveries in flight finish.
        // A bulk run stopped here resumes on the next instance to claim it.
        if let Some(bulk) = state.bulk.take() {
            bulk.stop_and_wait(Some("shutdown".to_owned()), Some(Duration::from_secs(10)))
                .await
                .ok();
        }
        if let Some(hooks) = state.hooks.take() {
            hooks
                .stop_and_wait(Some("shutdown".to_owned()), Some(Duration::from_secs(10)))
                .await
                .ok();
        }
        if let Some(scheduler) = state.scheduler.take() {
            scheduler
                .stop_and_wait(Some("shutdown".to_owned()), Some(Duration::from_secs(10)))
                .await
                .ok();
        }
        if let Some(dispatcher) = state.dispatcher.take() {
            dispatcher
                .stop_and_wait(Some("shutdown".to_owned()), Some(Duration::from_secs(60)))
                .await
                .ok();
        }
        // No scan is left to use them.
        for child in [Child::Scans, Child::Probes] {
            if let Some(cell) = state.running.remove(&child) {
                cell.stop(Some("shutdown".to_owned()));
            }
        }
        if let Some(heartbeat) = state.heartbeat.take() {
            heartbeat.stop(Some("shutdown".to_owned()));
        }
        Ok(())
    }
}

/// What the HTTP layer holds: a handle on the running engine.
#[derive(Clone)]
pub struct EngineHandle {
    supervisor: ActorRef<SupervisorMsg>,
    /// Blocking workers for access checks, apart from the scans' so that a
    /// registration never waits behind long fetches.
    probes: ScanPool,
    /// The scan workers, where a replay's git work runs.
    scans: ScanPool,
    /// Where the repositories' mirrors are (a replay reads and fetches into
    /// its repository's).
    mirrors_dir: std::path::PathBuf,
    /// How access checks reach remotes: the watchers' rule and timeout.
    remote: (ConnectRule, Duration, LowSpeed),
    /// Whether a replay describes LFS pointers by their objects, as scans do.
    lfs: bool,
    /// Becomes `true` once the root supervisor has ended: stopped, or given
    /// up on a child that kept failing.
    ended: tokio::sync::watch::Receiver<bool>,
    /// Wakes the other instances sharing the database.
    bell: ClusterBell,
    /// Renders pull apps' events for their consumers.
    pull: PullRenderer,
    /// Rung when events are written, here or (on PostgreSQL) by another
    /// instance: what pull consumers wait on.
    outbox: OutboxSignal,
}

/// A replay's git work (`POST /api/repositories/{id}/replay`), as the
/// HTTP layer gathers it from the database.
#[derive(Debug, Clone)]
pub struct ReplayRequest {
    pub repository: crate::ids::RepoId,
    /// The app asking: the scan workers it holds count against its share.
    pub app: String,
    pub fetch_url: String,
    /// The watched branch, when known.
    pub branch: Option<String>,
    /// The subscription's own credential.
    pub token: Option<SecretString>,
    pub from: String,
    pub to: String,
    pub replay_id: crate::ids::ReplayId,
    pub include: Vec<String>,
    pub exclude: Vec<String>,
    /// The app's `resolve_lfs`: off, LFS pointers are replayed as the
    /// plain files git holds.
    pub resolve_lfs: bool,
    /// The repository is watched with its submodules expanded.
    pub expand_submodules: bool,
}

/// An access check: can this credential (or none) read this remote?
#[derive(Debug, Clone)]
pub struct AccessProbe {
    pub url: String,
    /// `None`: the remote's default branch.
    pub branch: Option<String>,
    pub token: Option<SecretString>,
}

impl std::fmt::Debug for EngineHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineHandle").finish_non_exhaustive()
    }
}

impl EngineHandle {
    /// Starts the supervision tree.
    pub async fn start(store: Store, mut config: EngineConfig) -> Result<Self, ractor::SpawnErr> {
        git::configure_process();
        let (bell, rings) = ClusterBell::new();
        let bell = if store.postgres_pool().is_some() {
            bell
        } else {
            ClusterBell::default()
        };
        config.watcher.signal = config.watcher.signal.clone().with_cluster(bell.clone());
        let (pool, scans) = ScanPool::supervised(
            "scans",
            config.scan_workers,
            config.scan_workers_per_app,
            config.restart,
        );
        let (probes, probe_owner) = ScanPool::supervised(
            "access checks",
            config.scan_workers,
            config.scan_workers,
            config.restart,
        );
        let pull = PullRenderer::new(store.clone(), config.delivery.clone(), pool.clone());
        let outbox = config.watcher.signal.clone();
        let mirrors_dir = config.watcher.mirrors_dir.clone();
        let remote = (
            config.watcher.connect.clone(),
            config.watcher.fetch_timeout,
            config.watcher.low_speed,
        );
        let lfs = config.watcher.lfs;
        let (supervisor, root) = Actor::spawn(
            Some("herald.supervisor".to_owned()),
            Supervisor,
            SupervisorArgs {
                store,
                config,
                pool: pool.clone(),
                scans,
                probes: probe_owner,
                rings,
            },
        )
        .await?;
        let (ended_tx, ended) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            let _ = root.await;
            let _ = ended_tx.send(true);
        });
        Ok(Self {
            supervisor,
            probes,
            scans: pool,
            mirrors_dir,
            remote,
            lfs,
            ended,
            bell,
            pull,
            outbox,
        })
    }

    /// How pull apps' events are rendered for their consumers.
    pub fn pull(&self) -> &PullRenderer {
        &self.pull
    }

    /// A watch on the outbox: it changes when events are written (here, or
    /// by another instance sharing PostgreSQL), so a pull consumer waiting
    /// for news can look again.
    pub fn outbox_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.outbox.subscribe()
    }

    /// Asks the remote, with the probe's credential, where the branch is: the
    /// check a registration or a token change must pass before anything is
    /// written. Runs on the scan workers (git blocks), under the same address
    /// rule and timeout as scans, on workers of their own.
    pub async fn check_access(&self, probe: AccessProbe) -> Result<RemoteHead, GitError> {
        let (rule, timeout, low_speed) = self.remote.clone();
        let spec = RemoteSpec {
            url: probe.url,
            credentials: probe.token.as_ref().map(Credentials::from_token),
            timeout,
            low_speed,
            rule,
        };
        self.probes
            .run(move || git::probe(&spec, probe.branch.as_deref()))
            .await
            .unwrap_or_else(|lost| Err(GitError::internal(lost.to_string())))
    }

    /// Computes a replay on a scan worker (git blocks): the two commits
    /// resolved in the repository's mirror (fetched again with the
    /// subscription's credential when the mirror no longer holds them),
    /// their diff as the subscription sees it, and `to` pinned under the
    /// replay's id. Nothing is written to the database here.
    pub async fn replay(
        &self,
        request: ReplayRequest,
    ) -> Result<crate::scan::replay::ReplayDiff, crate::scan::replay::ReplayFailure> {
        use crate::scan::replay::{MAX_REPLAY_EVENTS, ReplayFailure, ReplayJob, replay_diff};
        let (rule, timeout, low_speed) = self.remote.clone();
        let job = ReplayJob {
            mirror: self.mirrors_dir.join(format!("{}.git", request.repository)),
            remote: RemoteSpec {
                url: request.fetch_url,
                credentials: request.token.as_ref().map(Credentials::from_token),
                timeout,
                low_speed,
                rule,
            },
            branch: request.branch,
            from: request.from,
            to: request.to,
            replay_id: request.replay_id.into_string(),
            include: request.include,
            exclude: request.exclude,
            max_events: MAX_REPLAY_EVENTS,
            lfs: self.lfs && request.resolve_lfs,
            expand_submodules: request.expand_submodules,
        };
        let slot = self
            .scans
            .slot_for(vec![request.app], crate::scan::Priority::Urgent)
            .await;
        slot.run(move || replay_diff(&job))
            .await
            .unwrap_or_else(|lost| Err(ReplayFailure::Git(GitError::internal(lost.to_string()))))
    }

    /// Releases the pin [`Self::replay`] left in the repository's mirror
    /// for a replay that was then not written (refused by a quota, or its
    /// write failed), on a scan worker (the mirror's lock blocks).
    pub async fn unpin_replay(
        &self,
        repository: &crate::ids::RepoId,
        app: String,
        replay: &crate::ids::ReplayId,
    ) {
        let mirror = self.mirrors_dir.join(format!("{repository}.git"));
        let replay = replay.as_str().to_owned();
        let slot = self
            .scans
            .slot_for(vec![app], crate::scan::Priority::Urgent)
            .await;
        let released = slot
            .run(move || git::Mirror::open(&mirror).map(|mirror| mirror.unpin(&replay)))
            .await;
        if !matches!(released, Ok(Ok(()))) {
            warn!(%repository, "a refused replay's pin could not be released; the mirror keeps its commit");
        }
    }

    /// Tells the scheduler about something it should act on now.
    pub fn notify(&self, msg: SchedulerMsg) {
        if let SchedulerMsg::ScanNow(repo) | SchedulerMsg::RepositoryRegistered(repo) = &msg {
            self.bell.ring(Wake::Scan(repo.clone()));
        }
        if let Err(err) = self
            .supervisor
            .send_message(SupervisorMsg::ToScheduler(msg))
        {
            warn!(error = %err, "engine is not running");
        }
    }

    /// Tells the delivery engine to look for due events now.
    pub fn wake_delivery(&self) {
        self.bell.ring(Wake::Outbox);
        // Events turned due here (a retry, a switch of delivery mode): pull
        // consumers look again too.
        self.outbox.notify_local();
        if let Err(err) = self.supervisor.send_message(SupervisorMsg::WakeDelivery) {
            warn!(error = %err, "engine is not running");
        }
    }

    /// Tells the hook processor that a hook was stored.
    pub fn process_hooks(&self) {
        self.bell.ring(Wake::Hooks);
        if let Err(err) = self.supervisor.send_message(SupervisorMsg::ProcessHooks) {
            warn!(error = %err, "engine is not running");
        }
    }

    /// Tells the bulk runner that an operation was started (any instance's
    /// runner would also find it on its next tick).
    pub fn run_bulk(&self) {
        if let Err(err) = self.supervisor.send_message(SupervisorMsg::RunBulk) {
            warn!(error = %err, "engine is not running");
        }
    }

    /// Resolves once the root supervisor has ended, whether stopped by
    /// [`Self::shutdown`] or given up on a child that kept failing.
    pub async fn ended(&self) {
        let mut ended = self.ended.clone();
        let _ = ended.wait_for(|ended| *ended).await;
    }

    /// Whether the whole tree is up (readiness).
    pub async fn is_healthy(&self) -> bool {
        if *self.ended.borrow() {
            return false;
        }
        matches!(
            ractor::call_t!(self.supervisor, SupervisorMsg::Health, 2_000),
            Ok(true)
        )
    }

    /// Stops the tree and waits (bounded) for every actor to finish.
    pub async fn shutdown(&self, timeout: Duration) {
        if let Err(err) = self
            .supervisor
            .stop_and_wait(Some("shutdown".to_owned()), Some(timeout))
            .await
        {
            warn!(error = %err, "engine did not stop cleanly");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support;

    /// An engine on a fresh SQLite database that gives up on a child's
    /// first failure.
    async fn engine(dir: &std::path::Path) -> EngineHandle {
        let store = test_support::store(&test_support::sqlite_url(dir)).await;
        let config = EngineConfig {
            tick: Duration::from_secs(3600),
            scan_workers: 1,
            scan_workers_per_app: 1,
            watcher: WatcherConfig::for_tests(dir),
            delivery: DeliveryConfig::for_tests(dir),
            restart: RestartPolicy {
                max_restarts: 0,
                ..RestartPolicy::default()
            },
            cluster: ClusterConfig {
                instance: Heartbeat {
                    id: "test".into(),
                    version: "0.0.0".into(),
                    host: "localhost".into(),
                    started_at: crate::clock::now_ms(),
                },
                heartbeat_interval: Duration::from_secs(10),
                lease_ttl: Duration::from_secs(30),
            },
            upkeep: UpkeepConfig {
                event_retention: Duration::from_secs(3600),
                attempt_retention: Duration::from_secs(3600),
                rollup_retention: Duration::from_secs(86_400),
                lfs_cache: None,
            },
        };
        EngineHandle::start(store, config)
            .await
            .expect("the engine starts")
    }

    /// One test, because the root registers under a process-wide name.
    #[tokio::test]
    async fn the_engine_ends_when_stopped_or_when_its_root_gives_up() {
        let dir = tempfile::tempdir().expect("temp dir");
        let stopped = engine(dir.path()).await;
        assert!(stopped.is_healthy().await, "every child runs");
        stopped.shutdown(Duration::from_secs(10)).await;
        // Bounded: a root that never ends fails the test instead of hanging it.
        tokio::time::timeout(Duration::from_secs(30), stopped.ended())
            .await
            .expect("a stopped root has ended");
        assert!(!stopped.is_healthy().await);

        let dir = tempfile::tempdir().expect("temp dir");
        let failing = engine(dir.path()).await;
        assert!(failing.is_healthy().await, "every child runs");
        failing
            .supervisor
            .send_message(SupervisorMsg::Kill(Child::Dispatcher))
            .expect("the root takes messages");
        tokio::time::timeout(Duration::from_secs(30), failing.ended())
            .await
            .expect("the root gave up on a child past its restart budget, and ended");
        assert!(
            !failing.is_healthy().await,
            "readiness reports the dead tree"
        );
    }
}
