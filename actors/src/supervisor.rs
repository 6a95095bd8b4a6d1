//! The root of the supervision tree. It starts every long-lived actor, restarts
//! a child that failed (with exponential backoff and a restart-intensity limit,
//! so a child that keeps crashing cannot spin), and stops the whole tree on
//! shutdown. A crashing child never takes its siblings down: each is restarted
//! on its own.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
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

mod handle;

pub use handle::{AccessProbe, EngineHandle, ReplayRequest};

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
