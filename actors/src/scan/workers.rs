//! Scan workers: a bounded pool of actors that run blocking git work (fetch,
//! diff, hashing, access checks) off the async executor. Jobs and their
//! results are messages; at most `size` jobs run at once, the others wait
//! their turn.
//!
//! The pool is an actor supervising its workers: a job that panics fails its
//! worker, which the pool replaces under the engine's restart policy (and
//! escalates to its own supervisor when the budget is spent). The pool itself
//! is a child of the root supervisor; [`ScanPool`], the handle every watcher
//! holds, follows it across restarts.
//!
//! A caller first reserves a worker ([`ScanPool::slot`]) and keeps it for the
//! whole of its work (a scan holds one from claiming its lease to writing its
//! result), then hands it jobs. The reservation returns to the pool when
//! dropped, also when the caller is aborted.
//!
//! Workers are shared fairly between tenants: a reservation names the apps
//! it works for ([`ScanPool::slot_for`]: a repository's subscribers) and is
//! charged to the one of them holding the fewest workers; no app holds more
//! than the pool's `per_tenant` share at once. A waiting reservation whose
//! apps are all at their share lets later ones of other apps go first, so
//! one tenant's slow remotes never hold every worker.
//!
//! Reservations wait in two lines ([`Priority`]): a free worker goes to the
//! oldest urgent one (someone asked: a push hook, the API) before any
//! scheduled one (the poll's rescans), under the same share rule. So that
//! the poll is never starved, a scheduled reservation goes first once
//! [`URGENT_RUN`] urgent ones in a row have passed it. Scheduled
//! reservations never hold the last worker of a pool of two or more: a
//! push or an API request finds one free at once, instead of waiting for a
//! rescan to end, however far behind the poll is.
//!
//! The pool is not ractor's `factory`, whose rules differ on each point: a
//! factory hands out one `Job` at a time and frees the worker when that job
//! returns, while a scan keeps its worker from lease claim to result across
//! many jobs (`KeyPersistentRouting` and `StickyQueuerRouting` only route a
//! key to a worker; they reserve nothing); a factory routes only the head
//! of its queue, so a reservation whose apps are at their share could not
//! let a later one of another app pass; its `PriorityQueue` always takes
//! the highest priority first, with no anti-starvation run; and it respawns
//! a failed worker at once, with no backoff and no intensity limit, where
//! this pool applies the `RestartPolicy` and fails to the root once the
//! budget is spent. It is still a pool of actors: it supervises its
//! workers, and jobs and results are messages.

use std::collections::{HashMap, VecDeque};
use std::time::Instant;

use ractor::{
    Actor, ActorCell, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SpawnErr,
    SupervisionEvent,
};
use tokio::sync::{oneshot, watch};
use tracing::{error, warn};

use crate::owned::panic_message;
use crate::restart::{Ended, RestartPolicy, RestartTracker};

/// A job for a worker: runs on a blocking thread and sends its own result.
type Job = Box<dyn FnOnce() + Send>;

/// Messages of a scan worker.
pub enum WorkerMsg {
    Run(Job),
}

/// The apps a reservation works for (none: nobody's, never held back).
pub type Tenants = Vec<String>;

/// Which line a reservation waits in. Ordered most urgent first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Priority {
    /// Someone asked and waits for the result: a push hook, the API, an
    /// operator, a registration.
    Urgent,
    /// The poll's rescans: nobody waits for them.
    Scheduled,
}

impl Priority {
    /// Its `priority` label on `/metrics`.
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Urgent => "urgent",
            Priority::Scheduled => "scheduled",
        }
    }
}

/// At most this many urgent reservations in a row go before a scheduled one
/// that could have had the worker.
pub const URGENT_RUN: usize = 8;

/// Messages of a pool.
pub enum PoolMsg {
    /// Reserve a worker for these tenants; the answer waits until one is
    /// free and one of the tenants is under its share, behind the waiting
    /// reservations of its line and of the more urgent one.
    Checkout(Tenants, Priority, RpcReplyPort<ScanSlot>),
    /// A reservation ended: its tenant's share is given back, and the worker
    /// is free again unless it was lost (the pool replaces those).
    Checkin {
        worker: ActorId,
        tenant: Option<String>,
        priority: Priority,
        lost: bool,
    },
    /// Start a worker in place of one that failed.
    Replace,
}

/// The handle callers hold: reserves workers of whichever pool actor runs now.
#[derive(Clone)]
pub struct ScanPool {
    current: watch::Receiver<Option<ActorRef<PoolMsg>>>,
}

impl std::fmt::Debug for ScanPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScanPool")
            .field("running", &self.current.borrow().is_some())
            .finish()
    }
}

/// The worker a job was given to failed before answering (its job panicked,
/// or the pool was stopped).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkerLost;

impl std::fmt::Display for WorkerLost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the scan worker failed before finishing its job")
    }
}

impl std::error::Error for WorkerLost {}

impl ScanPool {
    /// A pool whose actor a supervisor starts, and restarts, through the
    /// returned [`PoolOwner`].
    /// `per_tenant` bounds the workers one app's reservations hold at once
    /// (at least 1; `size` or more: no bound).
    pub fn supervised(
        name: &'static str,
        size: usize,
        per_tenant: usize,
        restart: RestartPolicy,
    ) -> (Self, PoolOwner) {
        let (publish, current) = watch::channel(None);
        let owner = PoolOwner {
            name,
            size: size.max(1),
            per_tenant: per_tenant.max(1),
            restart,
            publish,
        };
        (Self { current }, owner)
    }

    /// A pool of its own, outside any supervision tree (tools and tests),
    /// with no bound per tenant; it stops when the returned owner's actor is
    /// stopped.
    pub async fn standalone(size: usize) -> Result<(Self, ActorRef<PoolMsg>), SpawnErr> {
        let (pool, owner) = Self::supervised("scan workers", size, size, RestartPolicy::default());
        let actor = owner.spawn(None).await?;
        Ok((pool, actor))
    }

    /// Waits until a worker is free and reserves it, for nobody in
    /// particular, as urgent: the caller waits for the result. While the
    /// pool actor is being restarted, waits for the new one.
    pub async fn slot(&self) -> ScanSlot {
        self.slot_for(Tenants::new(), Priority::Urgent).await
    }

    /// Waits until a worker is free and one of `tenants` is under its share,
    /// in the line of `priority`, and reserves the worker, charged to that
    /// tenant. A caller that stops waiting leaves the line.
    pub async fn slot_for(&self, tenants: Tenants, priority: Priority) -> ScanSlot {
        let mut current = self.current.clone();
        loop {
            let pool = current.borrow_and_update().clone();
            if let Some(pool) = pool
                && let Ok(slot) = ractor::call!(pool, |port| PoolMsg::Checkout(
                    tenants.clone(),
                    priority,
                    port
                ))
            {
                return slot;
            }
            // No pool, or it stopped while we asked: wait for the next one.
            if current.changed().await.is_err() {
                // The owner is gone for good (the engine stopped): nothing
                // will ever run; wait to be aborted with our own owner.
                std::future::pending::<()>().await;
            }
        }
    }

    /// Runs `job` on a worker once one is free.
    pub async fn run<T, F>(&self, job: F) -> Result<T, WorkerLost>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        self.slot().await.run(job).await
    }
}

/// A reserved worker; returned to its pool when dropped.
pub struct ScanSlot {
    worker: ActorRef<WorkerMsg>,
    pool: ActorRef<PoolMsg>,
    /// The app this reservation counts against.
    tenant: Option<String>,
    /// The line it came from: scheduled reservations are counted.
    priority: Priority,
    /// A job of ours failed the worker: it is not handed back, the pool
    /// replaces it when told of the failure.
    lost: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for ScanSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScanSlot")
            .field("worker", &self.worker.get_id())
            .finish()
    }
}

impl ScanSlot {
    fn new(
        worker: ActorRef<WorkerMsg>,
        pool: ActorRef<PoolMsg>,
        tenant: Option<String>,
        priority: Priority,
    ) -> Self {
        Self {
            worker,
            pool,
            tenant,
            priority,
            lost: Default::default(),
        }
    }

    /// Runs `job` on the reserved worker and waits for its result.
    pub async fn run<T, F>(&self, job: F) -> Result<T, WorkerLost>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = tx.send(job());
        });
        let result = match self.worker.send_message(WorkerMsg::Run(job)) {
            Ok(()) => rx.await.map_err(|_| WorkerLost),
            Err(_) => Err(WorkerLost),
        };
        if result.is_err() {
            self.lost.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        result
    }
}

impl Drop for ScanSlot {
    fn drop(&mut self) {
        // A pool that was replaced meanwhile no longer cares.
        let _ = self.pool.cast(PoolMsg::Checkin {
            worker: self.worker.get_id(),
            tenant: self.tenant.take(),
            priority: self.priority,
            lost: self.lost.load(std::sync::atomic::Ordering::Relaxed),
        });
    }
}

/// The supervisor's side of a pool: starts its actor and publishes it to
/// every [`ScanPool`] handle.
pub struct PoolOwner {
    name: &'static str,
    size: usize,
    per_tenant: usize,
    restart: RestartPolicy,
    publish: watch::Sender<Option<ActorRef<PoolMsg>>>,
}

impl PoolOwner {
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Starts the pool actor, linked to `supervisor` when given.
    pub async fn spawn(
        &self,
        supervisor: Option<ActorCell>,
    ) -> Result<ActorRef<PoolMsg>, SpawnErr> {
        let args = PoolArgs {
            name: self.name,
            size: self.size,
            per_tenant: self.per_tenant,
            restart: self.restart,
        };
        let (pool, _) = match supervisor {
            Some(cell) => Actor::spawn_linked(None, Pool, args, cell).await?,
            None => Actor::spawn(None, Pool, args).await?,
        };
        self.publish.send_replace(Some(pool.clone()));
        Ok(pool)
    }

    /// The pool actor ended: callers wait for the next one.
    pub fn ended(&self) {
        self.publish.send_replace(None);
    }
}

struct Pool;

struct PoolArgs {
    name: &'static str,
    size: usize,
    per_tenant: usize,
    restart: RestartPolicy,
}

struct PoolState {
    /// Its `pool` label on `/metrics`.
    name: &'static str,
    restart: RestartPolicy,
    /// How many workers the pool runs.
    size: usize,
    /// Workers reserved by scheduled reservations: at most `size - 1`.
    scheduled_held: usize,
    /// Every running worker.
    workers: HashMap<ActorId, ActorRef<WorkerMsg>>,
    idle: Vec<ActorRef<WorkerMsg>>,
    /// Reservations waiting, oldest first.
    waiting: VecDeque<Waiting>,
    /// Urgent reservations served in a row while a scheduled one could
    /// have been.
    urgent_run: usize,
    /// Workers reserved per app, and how many one app may hold.
    shares: Shares,
    /// One history for the pool's workers: a pool whose jobs keep
    /// panicking gives up and escalates.
    restarts: RestartTracker,
}

/// A reservation waiting for a worker.
struct Waiting {
    tenants: Tenants,
    priority: Priority,
    port: RpcReplyPort<ScanSlot>,
}

/// How many workers each app's reservations hold, against its share.
#[derive(Debug)]
struct Shares {
    per_tenant: usize,
    held: HashMap<String, usize>,
}

impl Shares {
    /// The tenant a reservation for `tenants` is charged to: the one holding
    /// the fewest workers, if it is under its share. `Some(None)`: nobody's.
    fn charge(&self, tenants: &[String]) -> Option<Option<String>> {
        if tenants.is_empty() {
            return Some(None);
        }
        tenants
            .iter()
            .map(|tenant| (self.held.get(tenant).copied().unwrap_or(0), tenant))
            .filter(|(held, _)| *held < self.per_tenant)
            .min()
            .map(|(_, tenant)| Some(tenant.clone()))
    }

    fn take(&mut self, tenant: Option<&String>) {
        if let Some(tenant) = tenant {
            *self.held.entry(tenant.clone()).or_default() += 1;
        }
    }

    fn give_back(&mut self, tenant: Option<&String>) {
        if let Some(tenant) = tenant
            && let Some(held) = self.held.get_mut(tenant)
        {
            *held -= 1;
            if *held == 0 {
                self.held.remove(tenant);
            }
        }
    }
}

impl PoolState {
    /// Whether a reservation of `priority` may take a worker now: a
    /// scheduled one leaves the last worker to urgent ones.
    fn may_take(&self, priority: Priority) -> bool {
        priority == Priority::Urgent || self.size < 2 || self.scheduled_held + 1 < self.size
    }

    /// Counts a worker reserved in the line of `priority`.
    fn take(&mut self, tenant: Option<&String>, priority: Priority) {
        self.shares.take(tenant);
        if priority == Priority::Scheduled {
            self.scheduled_held += 1;
        }
    }

    /// The oldest waiting reservation of `priority` whose tenants are under
    /// their share, if that line may take a worker now: its place in the
    /// queue and the tenant it is charged to.
    fn first_in(&self, priority: Priority) -> Option<(usize, Option<String>)> {
        if !self.may_take(priority) {
            return None;
        }
        self.waiting
            .iter()
            .enumerate()
            .filter(|(_, waiting)| waiting.priority == priority)
            .find_map(|(at, waiting)| Some((at, self.shares.charge(&waiting.tenants)?)))
    }

    /// The reservation a free worker goes to: the first urgent one, unless
    /// urgent ones have passed a scheduled one [`URGENT_RUN`] times in a row.
    fn next(&mut self) -> Option<(usize, Option<String>)> {
        let urgent = self.first_in(Priority::Urgent);
        let scheduled = self.first_in(Priority::Scheduled);
        match (urgent, scheduled) {
            (Some(urgent), Some(_)) if self.urgent_run < URGENT_RUN => {
                self.urgent_run += 1;
                Some(urgent)
            }
            (Some(urgent), None) => {
                self.urgent_run = 0;
                Some(urgent)
            }
            (_, scheduled) => {
                self.urgent_run = 0;
                scheduled
            }
        }
    }

    /// Publishes how many reservations wait in each line, once those whose
    /// callers left are dropped (a scan moved to the urgent line leaves
    /// the scheduled one).
    fn count_waiting(&mut self) {
        self.waiting.retain(|waiting| !waiting.port.is_closed());
        for priority in [Priority::Urgent, Priority::Scheduled] {
            let waiting = self
                .waiting
                .iter()
                .filter(|waiting| waiting.priority == priority)
                .count();
            metrics::gauge!("herald_workers_waiting", "pool" => self.name, "priority" => priority.as_str())
                .set(waiting as f64);
        }
    }

    /// Gives a free worker to the caller still waiting that goes next, or
    /// keeps it.
    fn free(&mut self, myself: &ActorRef<PoolMsg>, worker: ActorRef<WorkerMsg>) {
        self.waiting.retain(|waiting| !waiting.port.is_closed());
        if let Some((at, tenant)) = self.next()
            && let Some(Waiting { port, priority, .. }) = self.waiting.remove(at)
        {
            self.take(tenant.as_ref(), priority);
            self.count_waiting();
            // A caller that left just now drops the slot, which checks the
            // worker in again.
            let _ = port.send(ScanSlot::new(worker, myself.clone(), tenant, priority));
            return;
        }
        self.count_waiting();
        self.idle.push(worker);
    }

    async fn start_worker(&mut self, myself: &ActorRef<PoolMsg>) -> Result<(), SpawnErr> {
        let (worker, _) = Actor::spawn_linked(None, Worker, (), myself.get_cell()).await?;
        self.workers.insert(worker.get_id(), worker.clone());
        self.free(myself, worker);
        Ok(())
    }
}

impl Actor for Pool {
    type Msg = PoolMsg;
    type State = PoolState;
    type Arguments = PoolArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: PoolArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let mut state = PoolState {
            name: args.name,
            restart: args.restart,
            size: args.size,
            scheduled_held: 0,
            workers: HashMap::new(),
            idle: Vec::new(),
            waiting: VecDeque::new(),
            urgent_run: 0,
            shares: Shares {
                per_tenant: args.per_tenant,
                held: HashMap::new(),
            },
            restarts: RestartTracker::default(),
        };
        for _ in 0..args.size {
            state.start_worker(&myself).await?;
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
            PoolMsg::Checkout(tenants, priority, port) => {
                let tenant = state
                    .shares
                    .charge(&tenants)
                    .filter(|_| state.may_take(priority));
                match (tenant, state.idle.pop()) {
                    (Some(tenant), Some(worker)) => {
                        state.take(tenant.as_ref(), priority);
                        let _ = port.send(ScanSlot::new(worker, myself.clone(), tenant, priority));
                    }
                    (_, worker) => {
                        state.idle.extend(worker);
                        state.waiting.push_back(Waiting {
                            tenants,
                            priority,
                            port,
                        });
                        state.count_waiting();
                    }
                }
            }
            PoolMsg::Checkin {
                worker,
                tenant,
                priority,
                lost,
            } => {
                state.shares.give_back(tenant.as_ref());
                if priority == Priority::Scheduled {
                    state.scheduled_held = state.scheduled_held.saturating_sub(1);
                }
                let worker = state.workers.get(&worker).cloned().filter(|_| !lost);
                match worker {
                    Some(worker) => state.free(&myself, worker),
                    // The share given back may let a waiting caller of
                    // another app take a worker that sat idle.
                    None => {
                        if let Some(idle) = state.idle.pop() {
                            state.free(&myself, idle);
                        }
                    }
                }
            }
            PoolMsg::Replace => state.start_worker(&myself).await?,
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
        if state.workers.remove(&cell.get_id()).is_none() {
            return Ok(());
        }
        state.idle.retain(|w| w.get_id() != cell.get_id());
        let policy = state.restart;
        match state.restarts.on_failure(&policy, Instant::now()) {
            Some(delay) => {
                warn!(%reason, ?delay, "scan worker failed; replacing it");
                myself.send_after(delay, || PoolMsg::Replace);
                Ok(())
            }
            None => {
                error!(%reason, "scan workers keep failing; escalating");
                Err("scan workers failed too often".into())
            }
        }
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        // Callers still waiting see their request dropped and wait for the
        // pool that takes this one's place.
        state.waiting.clear();
        state.count_waiting();
        Ok(())
    }
}

struct Worker;

impl Actor for Worker {
    type Msg = WorkerMsg;
    type State = ();
    type Arguments = ();

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        _args: (),
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(())
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        _state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let WorkerMsg::Run(job) = message;
        match tokio::task::spawn_blocking(job).await {
            Ok(()) => Ok(()),
            Err(err) if err.is_panic() => {
                Err(format!("scan job panicked: {}", panic_message(err.into_panic())).into())
            }
            Err(err) => Err(format!("scan job cancelled: {err}").into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn at_most_size_jobs_run_at_once_and_every_job_runs() {
        let (pool, actor) = ScanPool::standalone(2).await.expect("pool");
        let running = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let jobs: Vec<_> = (0..8)
            .map(|i| {
                let (pool, running, most) = (pool.clone(), running.clone(), most.clone());
                tokio::spawn(async move {
                    pool.run(move || {
                        let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                        most.fetch_max(now, Ordering::SeqCst);
                        std::thread::sleep(Duration::from_millis(30));
                        running.fetch_sub(1, Ordering::SeqCst);
                        i * 10
                    })
                    .await
                })
            })
            .collect();
        let mut results = Vec::new();
        for job in jobs {
            results.push(job.await.expect("task").expect("result"));
        }
        assert_eq!(results, (0..8).map(|i| i * 10).collect::<Vec<_>>());
        assert_eq!(most.load(Ordering::SeqCst), 2, "two workers, two at once");
        actor.stop(None);
    }

    #[tokio::test]
    async fn a_panicking_job_fails_its_worker_which_is_replaced() {
        let (pool, actor) = ScanPool::standalone(1).await.expect("pool");
        let lost = pool.run(|| -> u8 { panic!("a bug in a scan") }).await;
        assert_eq!(lost, Err(WorkerLost));
        // The one worker was replaced: the next job runs.
        let next = tokio::time::timeout(Duration::from_secs(10), pool.run(|| 7))
            .await
            .expect("a worker took the job");
        assert_eq!(next, Ok(7));
        actor.stop(None);
    }

    #[tokio::test]
    async fn a_reservation_dropped_before_it_is_used_frees_the_worker() {
        let (pool, actor) = ScanPool::standalone(1).await.expect("pool");
        let held = pool.slot().await;
        // A caller waiting behind the reservation, then aborted.
        let waiting = tokio::spawn({
            let pool = pool.clone();
            async move { pool.slot().await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        waiting.abort();
        drop(held);
        let next = tokio::time::timeout(Duration::from_secs(10), pool.run(|| 1))
            .await
            .expect("the worker came back");
        assert_eq!(next, Ok(1));
        actor.stop(None);
    }

    fn tenants(names: &[&str]) -> Tenants {
        names.iter().map(|n| (*n).to_owned()).collect()
    }

    #[tokio::test]
    async fn one_tenant_holds_at_most_its_share_and_the_others_go_first() {
        // Four workers: scheduled reservations may hold three of them.
        let (pool, owner) = ScanPool::supervised("test", 4, 2, RestartPolicy::default());
        let actor = owner.spawn(None).await.expect("pool");
        let a1 = pool
            .slot_for(tenants(&["app_a"]), Priority::Scheduled)
            .await;
        let _a2 = pool
            .slot_for(tenants(&["app_a"]), Priority::Scheduled)
            .await;
        // app_a is at its share of 2: its third reservation waits although
        // a worker is free...
        let third = tokio::spawn({
            let pool = pool.clone();
            async move {
                pool.slot_for(tenants(&["app_a"]), Priority::Scheduled)
                    .await
            }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!third.is_finished(), "app_a got more than its share");
        // ...and another app's reservation, made later, takes that worker.
        let b = tokio::time::timeout(
            Duration::from_secs(5),
            pool.slot_for(tenants(&["app_b"]), Priority::Scheduled),
        )
        .await
        .expect("app_b is served while app_a waits");
        // A repository both subscribe to is charged to the one under its
        // share: app_a's slow remotes cannot hold back app_b's repositories.
        drop(b);
        let shared = tokio::time::timeout(
            Duration::from_secs(5),
            pool.slot_for(tenants(&["app_a", "app_b"]), Priority::Scheduled),
        )
        .await
        .expect("a shared repository goes on app_b's share");
        assert_eq!(shared.tenant.as_deref(), Some("app_b"));
        assert!(!third.is_finished());
        // When one of app_a's workers comes back, its waiting one goes.
        drop(a1);
        let third = tokio::time::timeout(Duration::from_secs(5), third)
            .await
            .expect("app_a's waiting reservation is served")
            .expect("task");
        assert_eq!(third.tenant.as_deref(), Some("app_a"));
        actor.stop(None);
    }

    /// Queues one reservation per `(name, tenants, priority)`, in that
    /// order, behind a pool whose workers are all held; each, once served,
    /// records its name and gives its worker back at once.
    async fn queue_in_order(
        pool: &ScanPool,
        reservations: &[(&'static str, &[&str], Priority)],
    ) -> (
        Arc<std::sync::Mutex<Vec<&'static str>>>,
        Vec<tokio::task::JoinHandle<()>>,
    ) {
        let served = Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for &(name, apps, priority) in reservations {
            let (pool, served, apps) = (pool.clone(), served.clone(), tenants(apps));
            tasks.push(tokio::spawn(async move {
                let slot = pool.slot_for(apps, priority).await;
                served.lock().expect("lock").push(name);
                drop(slot);
            }));
            // Reservations reach the pool in this order.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        (served, tasks)
    }

    async fn all_served(tasks: Vec<tokio::task::JoinHandle<()>>) {
        for task in tasks {
            tokio::time::timeout(Duration::from_secs(10), task)
                .await
                .expect("every reservation is served")
                .expect("task");
        }
    }

    #[tokio::test]
    async fn urgent_reservations_go_before_waiting_scheduled_ones() {
        let (pool, actor) = ScanPool::standalone(1).await.expect("pool");
        let held = pool.slot().await;
        let (served, tasks) = queue_in_order(
            &pool,
            &[
                ("poll 1", &["app_a"], Priority::Scheduled),
                ("poll 2", &["app_b"], Priority::Scheduled),
                ("push 1", &["app_b"], Priority::Urgent),
                ("push 2", &["app_a"], Priority::Urgent),
                ("poll 3", &["app_a"], Priority::Scheduled),
            ],
        )
        .await;
        drop(held);
        all_served(tasks).await;
        // Each line in the order it was joined, the urgent one first.
        assert_eq!(
            *served.lock().expect("lock"),
            ["push 1", "push 2", "poll 1", "poll 2", "poll 3"]
        );
        actor.stop(None);
    }

    #[tokio::test]
    async fn a_scheduled_reservation_goes_after_a_run_of_urgent_ones() {
        let (pool, actor) = ScanPool::standalone(1).await.expect("pool");
        let held = pool.slot().await;
        let mut reservations = vec![("poll", &["app_a"][..], Priority::Scheduled)];
        reservations
            .extend((0..URGENT_RUN + 2).map(|_| ("push", &["app_a"][..], Priority::Urgent)));
        let (served, tasks) = queue_in_order(&pool, &reservations).await;
        drop(held);
        all_served(tasks).await;
        let served = served.lock().expect("lock");
        // Never starved: the poll's rescan waits out at most one run.
        assert_eq!(served.iter().position(|n| *n == "poll"), Some(URGENT_RUN));
        assert_eq!(served.len(), URGENT_RUN + 3);
        actor.stop(None);
    }

    #[tokio::test]
    async fn an_urgent_reservation_of_an_app_at_its_share_lets_other_apps_go() {
        let (pool, owner) = ScanPool::supervised("test", 2, 1, RestartPolicy::default());
        let actor = owner.spawn(None).await.expect("pool");
        let app_a = pool.slot_for(tenants(&["app_a"]), Priority::Urgent).await;
        let nobody = pool.slot().await;
        let (served, tasks) = queue_in_order(
            &pool,
            &[
                ("push a", &["app_a"], Priority::Urgent),
                ("poll b", &["app_b"], Priority::Scheduled),
            ],
        )
        .await;
        // A worker comes back while app_a holds its share: app_b's rescan
        // takes it, urgent or not.
        drop(nobody);
        tokio::time::timeout(Duration::from_secs(10), async {
            while served.lock().expect("lock").is_empty() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("app_b is served");
        assert_eq!(*served.lock().expect("lock"), ["poll b"]);
        drop(app_a);
        all_served(tasks).await;
        assert_eq!(*served.lock().expect("lock"), ["poll b", "push a"]);
        actor.stop(None);
    }

    #[tokio::test]
    async fn scheduled_reservations_leave_the_last_worker_to_urgent_ones() {
        let (pool, owner) = ScanPool::supervised("test", 3, 3, RestartPolicy::default());
        let actor = owner.spawn(None).await.expect("pool");
        let poll_1 = pool
            .slot_for(tenants(&["app_a"]), Priority::Scheduled)
            .await;
        let _poll_2 = pool
            .slot_for(tenants(&["app_b"]), Priority::Scheduled)
            .await;
        // A third rescan waits although a worker is idle...
        let poll_3 = tokio::spawn({
            let pool = pool.clone();
            async move {
                pool.slot_for(tenants(&["app_c"]), Priority::Scheduled)
                    .await
            }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!poll_3.is_finished(), "the poll took the last worker");
        // ...which a push takes at once, however many rescans wait.
        let push = tokio::time::timeout(
            Duration::from_secs(5),
            pool.slot_for(tenants(&["app_a"]), Priority::Urgent),
        )
        .await
        .expect("the push found a free worker");
        // A rescan's worker coming back goes to the waiting rescan.
        drop(poll_1);
        let poll_3 = tokio::time::timeout(Duration::from_secs(5), poll_3)
            .await
            .expect("the waiting rescan is served")
            .expect("task");
        assert_eq!(poll_3.tenant.as_deref(), Some("app_c"));
        // The push's worker, given back while two rescans run, stays free
        // for the next urgent reservation.
        drop(push);
        let next_poll = tokio::spawn({
            let pool = pool.clone();
            async move {
                pool.slot_for(tenants(&["app_d"]), Priority::Scheduled)
                    .await
            }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!next_poll.is_finished(), "the poll took the last worker");
        tokio::time::timeout(Duration::from_secs(5), pool.slot())
            .await
            .expect("an urgent reservation is served at once");
        next_poll.abort();
        actor.stop(None);
    }

    #[tokio::test]
    async fn a_pool_whose_jobs_keep_panicking_gives_up() {
        let (pool, owner) = ScanPool::supervised(
            "test",
            1,
            1,
            RestartPolicy {
                max_restarts: 1,
                window: Duration::from_secs(60),
                base_backoff: Duration::from_millis(1),
                max_backoff: Duration::from_millis(1),
            },
        );
        let actor = owner.spawn(None).await.expect("pool");
        for _ in 0..2 {
            let _ = pool.run(|| -> u8 { panic!("again") }).await;
        }
        tokio::time::timeout(Duration::from_secs(10), async {
            while actor.get_status() != ractor::ActorStatus::Stopped {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("the pool failed, for its supervisor to handle");
    }
}
