//! One watcher per watched repository. It owns the repository's mirror and,
//! as its child actor, the remote's circuit breaker: on `Scan` it asks the
//! breaker, claims the scan lease, has a scan worker check the remote, fetch
//! and diff, then commits the snapshot and every subscription's events in one
//! transaction (or records the failure) and tells the breaker how it went.
//!
//! The blocking work never runs inside `handle`: a scan runs as a task owned
//! by the watcher whose result comes back as a `Finished` message. A scan
//! that panics makes the watcher fail, and its supervisor (the scheduler)
//! restarts it.
//!
//! A scan waits for its scan worker in the line of the request that started
//! it ([`Priority`]); a request more urgent than that, arriving while it
//! still waits, moves it to the urgent line. Once it has its worker, the
//! scan may already have looked at the remote: only an urgent request
//! (something says the repository moved) runs it again when it ends; the
//! poll's, which repeats while the repository is due, does not.

use std::path::PathBuf;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::sync::watch;
use tracing::{Instrument, debug, info, warn};

use crate::breaker::actor::{BreakerActor, BreakerArgs, BreakerMsg, Change, Reported};
use crate::breaker::{BreakerPolicy, GIT_BREAKER, Permit};
use crate::clock::{millis, now_ms};
use crate::git::{ConnectRule, Credentials, GitError, LowSpeed, RemoteSpec};
use crate::ids::{RepoId, SnapshotId};
use crate::owned::OwnedTask;
use crate::scan::{
    self, Accessor, Priority, ScanJob, ScanOutcome, ScanPool, ScanResult, ScanSlot, Verdict,
    WorkerLost,
};
use crate::store::access::AccessCheck;
use crate::store::leases::{LeaseToken, ScanFence};
use crate::store::outbox::{GitFailureRecord, SnapshotAdvance};
use crate::store::{Store, StoreError};
use crate::telemetry::{self, scan_outcome};

/// Settings every watcher shares.
#[derive(Debug, Clone)]
pub struct WatcherConfig {
    pub mirrors_dir: PathBuf,
    pub fetch_timeout: Duration,
    /// A connection to the remote slower than this is cut.
    pub low_speed: LowSpeed,
    pub rescan_interval: Duration,
    /// Where git may connect (the address rule, the data directory).
    pub connect: ConnectRule,
    /// How often each subscriber's credential is checked again.
    pub access_recheck_interval: Duration,
    pub breaker: BreakerPolicy,
    pub instance_id: String,
    /// How long a scan lease lasts unless renewed (`cluster.lease_ttl`).
    pub lease_ttl: Duration,
    /// A mirror with more pack files than this is compacted after its fetch
    /// (`git.repack_threshold`).
    pub repack_threshold: usize,
    /// Rung after events are written, so delivery starts at once.
    pub signal: crate::signals::OutboxSignal,
}

#[cfg(test)]
impl WatcherConfig {
    /// Settings for the engine's own tests: remotes on loopback allowed,
    /// slow rescans (tests ask for scans themselves).
    pub(crate) fn for_tests(dir: &std::path::Path) -> Self {
        Self {
            mirrors_dir: dir.join("mirrors"),
            fetch_timeout: Duration::from_secs(10),
            low_speed: LowSpeed::default(),
            rescan_interval: Duration::from_secs(3600),
            connect: ConnectRule {
                allow_private: true,
                allow_http: true,
                allow_local: true,
                data_dir: dir.join("data"),
            },
            access_recheck_interval: Duration::from_secs(3600),
            breaker: BreakerPolicy {
                threshold: 5,
                cooldown: Duration::from_secs(60),
            },
            instance_id: "test".into(),
            lease_ttl: Duration::from_secs(30),
            repack_threshold: 8,
            signal: Default::default(),
        }
    }
}

/// Messages of a repository watcher.
#[derive(Debug)]
pub enum WatcherMsg {
    /// Look at the remote (coalesced with a scan already running), with
    /// this priority for a scan worker.
    Scan(Priority),
    /// A scan task ended; `Err` carries a panic message.
    Finished(Result<ScanReport, String>),
    /// Fails the watcher, as a bug would (supervision tests).
    #[cfg(test)]
    Crash,
}

/// What a finished scan did, for the log.
#[derive(Debug)]
pub enum ScanReport {
    Advanced {
        events: u64,
    },
    Unchanged,
    Failed,
    Skipped(&'static str),
    /// The repository no longer exists: the watcher stops.
    Gone,
}

pub struct RepoWatcher;

pub struct WatcherArgs {
    pub repository: RepoId,
    pub store: Store,
    pub pool: ScanPool,
    pub config: WatcherConfig,
}

pub struct WatcherState {
    args: WatcherArgs,
    /// The remote's breaker: a child of this watcher.
    breaker: ActorRef<BreakerMsg>,
    /// The scan in progress, aborted if the watcher stops or fails.
    scan: Option<RunningScan>,
    /// An urgent scan was asked for while one ran: run again when it ends.
    again: Option<Priority>,
}

/// A scan under way: its task, and while it waits for a scan worker, the
/// line it waits in.
struct RunningScan {
    _task: OwnedTask,
    /// Read by the scan until it has its worker; closed from then on.
    line: watch::Sender<Priority>,
}

impl RunningScan {
    /// Another request for a scan while this one runs. Moves it to a more
    /// urgent line if it still waits; once it has its worker, an urgent
    /// request is kept for a scan after it (this one may have looked at
    /// the remote before the push).
    fn ask(&self, priority: Priority, again: &mut Option<Priority>) {
        if self.line.is_closed() {
            if priority == Priority::Urgent {
                *again = Some(priority);
            }
        } else {
            self.line.send_if_modified(|line| {
                let moved = priority < *line;
                *line = (*line).min(priority);
                moved
            });
        }
    }
}

impl Actor for RepoWatcher {
    type Msg = WatcherMsg;
    type State = WatcherState;
    type Arguments = WatcherArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: WatcherArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let breaker_args = BreakerArgs {
            store: args.store.clone(),
            kind: GIT_BREAKER,
            subject: args.repository.as_str().to_owned(),
            policy: args.config.breaker,
            // A probe is one scan; it may take this long before another goes.
            probe_timeout: longest_scan(&args.config),
            clear: Default::default(),
        };
        let (breaker, _) =
            Actor::spawn_linked(None, BreakerActor, breaker_args, myself.get_cell()).await?;
        Ok(WatcherState {
            args,
            breaker,
            scan: None,
            again: None,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            WatcherMsg::Scan(priority) if state.scan.is_some() => {
                if let Some(scan) = &state.scan {
                    scan.ask(priority, &mut state.again);
                }
            }
            WatcherMsg::Scan(priority) => {
                let (line, waiting) = watch::channel(priority);
                let store = state.args.store.clone();
                let pool = state.args.pool.clone();
                let breaker = state.breaker.clone();
                let config = state.args.config.clone();
                let repository = state.args.repository.clone();
                let reply = myself.clone();
                // Each scan starts a trace; its events' deliveries continue it.
                let span = tracing::info_span!(
                    parent: None,
                    "scan",
                    repository = %repository,
                    outcome = tracing::field::Empty,
                );
                // Owned by this watcher: stopped with it, whatever ends it.
                let task = OwnedTask::spawn(
                    scan_repository(store, pool, waiting, breaker, config, repository)
                        .instrument(span),
                    move |result| {
                        let _ = reply.send_message(WatcherMsg::Finished(result));
                    },
                );
                state.scan = Some(RunningScan { _task: task, line });
            }
            #[cfg(test)]
            WatcherMsg::Crash => panic!("watcher crash requested by a test"),
            WatcherMsg::Finished(result) => {
                state.scan = None;
                match result {
                    Err(panic) => return Err(format!("scan panicked: {panic}").into()),
                    Ok(ScanReport::Gone) => {
                        info!(repository = %state.args.repository, "repository no longer watched; watcher stops");
                        let mirror = mirror_path(&state.args.config, &state.args.repository);
                        let _ = std::fs::remove_dir_all(mirror);
                        myself.stop(Some("repository removed".to_owned()));
                    }
                    Ok(report) => {
                        debug!(repository = %state.args.repository, ?report, "scan finished");
                        if let Some(priority) = state.again.take() {
                            myself.send_message(WatcherMsg::Scan(priority))?;
                        }
                    }
                }
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        _myself: ActorRef<Self::Msg>,
        event: ractor::SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match event {
            ractor::SupervisionEvent::ActorFailed(cell, err)
                if cell.get_id() == state.breaker.get_id() =>
            {
                // The watcher cannot scan without it: its supervisor restarts both.
                Err(format!("the git breaker failed: {err}").into())
            }
            _ => Ok(()),
        }
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        state.breaker.stop(Some("watcher stopping".to_owned()));
        Ok(())
    }
}

/// The longest a scan may take: a fetch that takes the whole fetch timeout,
/// a second scan pass and the writes.
fn longest_scan(config: &WatcherConfig) -> Duration {
    config.fetch_timeout.saturating_mul(3) + Duration::from_secs(60)
}

fn mirror_path(config: &WatcherConfig, repository: &RepoId) -> PathBuf {
    config.mirrors_dir.join(format!("{repository}.git"))
}

/// One scan of one repository, start to end. The scan lease is claimed when
/// the work can start (a scan worker is free), renewed while it runs, and
/// presented by every write; a scan that loses it is abandoned.
async fn scan_repository(
    store: Store,
    pool: ScanPool,
    line: watch::Receiver<Priority>,
    breaker: ActorRef<BreakerMsg>,
    config: WatcherConfig,
    repository: RepoId,
) -> ScanReport {
    // Charged to the subscriber holding the fewest workers: one tenant's
    // slow remotes cannot hold every worker.
    let tenants = store.subscriber_apps(&repository).await.unwrap_or_default();
    let slot = reserve(&pool, tenants, line).await;
    let lease_ttl = millis(config.lease_ttl);
    let lease = match store
        .claim_scan(&repository, &config.instance_id, lease_ttl)
        .await
    {
        Ok(Some(lease)) => lease,
        Ok(None) => return ScanReport::Skipped("another owner holds the scan lease"),
        Err(err) => {
            warn!(%repository, error = %err, "could not claim the scan lease");
            return ScanReport::Skipped("database unavailable");
        }
    };
    let renewal = keep_lease(
        Duration::from_millis(u64::try_from(lease_ttl / 3).unwrap_or(1)),
        || store.renew_scan(&repository, &lease, lease_ttl),
    );
    let mut remote = RemoteBreaker {
        breaker,
        probing: false,
    };
    let work = scan_claimed(&store, &slot, &mut remote, &config, &repository, &lease);
    let report = tokio::select! {
        result = work => match result {
            Ok(report) => report,
            Err(StoreError::Fenced(why)) => {
                warn!(%repository, why, "scan fenced off; nothing of it was written");
                ScanReport::Skipped("fenced")
            }
            Err(err) => {
                warn!(%repository, error = %err, "scan could not be recorded");
                ScanReport::Skipped("database unavailable")
            }
        },
        why = renewal => {
            warn!(%repository, why, "scan abandoned; nothing more of it is written");
            ScanReport::Skipped("scan lease lost")
        }
    };
    if let Err(err) = store.release_scan(&repository, &lease).await {
        warn!(%repository, error = %err, "could not release the scan lease; it will expire");
    }
    // After the result is recorded and its webhooks are on their way.
    let (path, threshold) = (mirror_path(&config, &repository), config.repack_threshold);
    if let Ok(Some(stats)) = slot.run(move || scan::upkeep(&path, threshold)).await {
        telemetry::mirror_size(repository.as_str(), stats);
    }
    report
}

/// Renews a lease every `period` until it is lost: returns only when a
/// renewal finds another owner. A renewal that fails is tried again at the
/// next tick. The usual cause is a busy database: on SQLite the scan's own
/// outbox transaction holds the write lock, for longer than the busy
/// timeout when a first snapshot writes a million events. Abandoning the
/// scan then would roll that transaction back and start it over, forever.
/// Nothing is at risk meanwhile: every write of the scan proves the lease
/// again inside its transaction, under the repository's lock.
async fn keep_lease<F, R>(period: Duration, mut renew: F) -> &'static str
where
    F: FnMut() -> R,
    R: std::future::Future<Output = Result<bool, StoreError>>,
{
    let period = period.max(Duration::from_millis(1));
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match renew().await {
            Ok(true) => {}
            Ok(false) => return "the scan lease passed to another owner",
            Err(err) => debug!(error = %err, "the scan lease could not be renewed; trying again"),
        }
    }
}

/// Waits for a scan worker in the line `line` names, and joins the more
/// urgent line when it is moved there meanwhile. The line is closed once the
/// worker is reserved.
async fn reserve(
    pool: &ScanPool,
    tenants: Vec<String>,
    mut line: watch::Receiver<Priority>,
) -> ScanSlot {
    loop {
        let priority = *line.borrow_and_update();
        tokio::select! {
            slot = pool.slot_for(tenants.clone(), priority) => return slot,
            Ok(()) = line.changed() => {}
        }
    }
}

async fn scan_claimed(
    store: &Store,
    slot: &ScanSlot,
    remote_breaker: &mut RemoteBreaker,
    config: &WatcherConfig,
    repository: &RepoId,
    lease: &LeaseToken,
) -> Result<ScanReport, StoreError> {
    let Some(repo) = store.repository(repository).await? else {
        return Ok(ScanReport::Gone);
    };
    let now = now_ms();
    if let Err(refused) = config.connect.admits(&repo.fetch_url) {
        // Registered under a more permissive configuration: nothing is
        // fetched, the breaker is not involved (the remote is not at fault,
        // and retrying cannot help), and it is looked at again at the pace
        // of the poll.
        warn!(%repository, error = %refused.message, "repository refused by the configuration");
        store
            .refuse_repository(
                repository,
                lease,
                &refused.message,
                now + millis(config.rescan_interval),
            )
            .await?;
        return Ok(ScanReport::Failed);
    }
    if let Permit::WaitUntil(until) = remote_breaker.ask().await {
        store.reschedule(repository, until).await?;
        return Ok(ScanReport::Skipped("git breaker open"));
    }
    let recheck_before = now - millis(config.access_recheck_interval);
    let accessors: Vec<Accessor> = store
        .subscriber_credentials(repository)
        .await?
        .into_iter()
        .map(|c| Accessor {
            due: c.checked_at.is_none_or(|at| at <= recheck_before),
            credentials: c.token.as_ref().map(Credentials::from_token),
            granted: c.granted,
            subscription: c.subscription_id,
        })
        .collect();
    if !accessors.iter().any(|a| a.granted || a.due) {
        // Nobody can read it and nobody is due for a check: wait.
        store
            .reschedule(repository, now + millis(config.rescan_interval))
            .await?;
        return Ok(ScanReport::Skipped("no subscriber can read the repository"));
    }
    let remote = RemoteSpec {
        url: repo.fetch_url.clone(),
        credentials: None,
        timeout: config.fetch_timeout,
        low_speed: config.low_speed,
        rule: config.connect.clone(),
    };
    let mut job = ScanJob {
        mirror: mirror_path(config, repository),
        remote,
        accessors,
        branch: Some(repo.branch.clone()).filter(|b| !b.is_empty()),
        known_head: repo.head_commit.clone(),
        manifest: None,
        snapshot_id: SnapshotId::generate().into_string(),
        unpin: store.settled_snapshots(repository).await?,
    };
    // Writes hold only while the lease does and the head is the one seen here.
    let fence = ScanFence {
        lease: lease.clone(),
        expected_head: repo.head_commit.clone(),
    };
    let started = std::time::Instant::now();
    let Ok(mut result) = run_scan(slot, &job).await else {
        // The worker's failure is the pool's to handle; the repository is
        // still due, and the next tick scans it again.
        return Ok(ScanReport::Skipped("the scan worker failed"));
    };
    if matches!(result.outcome, Ok(ScanOutcome::NeedsManifest)) {
        job.manifest = Some(store.manifest_blob_ids(repository).await?);
        let Ok(again) = run_scan(slot, &job).await else {
            return Ok(ScanReport::Skipped("the scan worker failed"));
        };
        result = again;
    }
    let ScanResult { outcome, verdicts } = result;
    record_verdicts(store, config, repository, lease, verdicts).await?;
    let next_scan_at = now_ms() + millis(config.rescan_interval);
    if outcome.is_ok() && !job.unpin.is_empty() {
        store.mark_unpinned(&job.unpin).await?;
    }
    match outcome {
        Ok(ScanOutcome::Unchanged {
            branch,
            commit,
            ignore,
        }) => {
            remote_breaker.succeeded().await;
            let result = store
                .advance_snapshot(SnapshotAdvance {
                    repository: repository.clone(),
                    fence: fence.clone(),
                    snapshot: SnapshotId::parse(&job.snapshot_id).expect("generated above"),
                    commit,
                    branch,
                    delta: Default::default(),
                    old_ignore: ignore.clone(),
                    new_ignore: ignore,
                    next_scan_at,
                })
                .await?;
            telemetry::scan_finished(scan_outcome::UNCHANGED, started.elapsed());
            if result.events > 0 {
                config.signal.notify();
                info!(%repository, events = result.events, "initial snapshot for new subscriptions");
                return Ok(ScanReport::Advanced {
                    events: result.events,
                });
            }
            Ok(ScanReport::Unchanged)
        }
        Ok(ScanOutcome::Changed {
            branch,
            commit,
            delta,
            old_ignore,
            new_ignore,
        }) => {
            remote_breaker.succeeded().await;
            let changes = delta.upserts.len() + delta.deletes.len();
            let result = store
                .advance_snapshot(SnapshotAdvance {
                    repository: repository.clone(),
                    fence: fence.clone(),
                    snapshot: SnapshotId::parse(&job.snapshot_id).expect("generated above"),
                    commit: commit.clone(),
                    branch,
                    delta,
                    old_ignore,
                    new_ignore,
                    next_scan_at,
                })
                .await?;
            telemetry::scan_finished(scan_outcome::CHANGED, started.elapsed());
            if result.events > 0 {
                config.signal.notify();
            }
            info!(
                %repository,
                %commit,
                changes,
                events = result.events,
                subscriptions = result.subscriptions,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "snapshot advanced"
            );
            Ok(ScanReport::Advanced {
                events: result.events,
            })
        }
        Ok(ScanOutcome::NeedsManifest) => Ok(ScanReport::Skipped("manifest still missing")),
        Ok(ScanOutcome::NoAccess) => {
            // Each subscriber was told on its own; the remote itself works.
            store.reschedule(repository, next_scan_at).await?;
            config.signal.notify();
            Ok(ScanReport::Skipped("no subscriber can read the repository"))
        }
        Err(err) => {
            telemetry::scan_finished(scan_outcome::FAILED, started.elapsed());
            record_failure(
                store,
                remote_breaker,
                config,
                repository,
                lease,
                err,
                next_scan_at,
            )
            .await?;
            config.signal.notify();
            Ok(ScanReport::Failed)
        }
    }
}

async fn run_scan(slot: &ScanSlot, job: &ScanJob) -> Result<ScanResult, WorkerLost> {
    let job = job.clone();
    slot.run(move || scan::scan(job)).await
}

/// Stores what the scan learnt of each subscriber's credential; a subscriber
/// that lost access gets its `sync_failed` now.
async fn record_verdicts(
    store: &Store,
    config: &WatcherConfig,
    repository: &RepoId,
    lease: &LeaseToken,
    verdicts: Vec<(String, Verdict)>,
) -> Result<(), StoreError> {
    let checks: Vec<(String, AccessCheck)> = verdicts
        .into_iter()
        .map(|(subscription, verdict)| {
            let check = match verdict {
                Verdict::Granted => AccessCheck::Granted,
                Verdict::Denied(err) => AccessCheck::Denied(err.message),
            };
            (subscription, check)
        })
        .collect();
    let changed = store
        .record_access(repository, lease, &checks, config.breaker.threshold)
        .await?;
    if changed > 0 {
        info!(%repository, changed, "subscribers' access changed");
        config.signal.notify();
    }
    Ok(())
}

async fn record_failure(
    store: &Store,
    remote_breaker: &mut RemoteBreaker,
    config: &WatcherConfig,
    repository: &RepoId,
    lease: &LeaseToken,
    err: GitError,
    rescan_at: i64,
) -> Result<(), StoreError> {
    let now = now_ms();
    let Some((row, opened)) = remote_breaker.failed(&err).await else {
        // The breaker did not answer: the failure is still recorded, and
        // the next scan asks again.
        store
            .reschedule(repository, (now + 5_000).min(rescan_at))
            .await?;
        return Ok(());
    };
    // Below the threshold, retry soon with backoff; once open, after the cooldown.
    let next_scan_at = match row.cooldown_until {
        Some(until) if row.state == entity::BreakerStatus::Open => until,
        _ => {
            let exponent = u32::try_from(row.consecutive_failures.saturating_sub(1))
                .unwrap_or(0)
                .min(10);
            (now + 5_000i64.saturating_mul(1 << exponent)).min(rescan_at)
        }
    };
    warn!(
        %repository,
        class = err.failure.as_str(),
        error = %err.message,
        consecutive_failures = row.consecutive_failures,
        breaker = %row.state,
        "scan failed"
    );
    store
        .record_git_failure(GitFailureRecord {
            repository: repository.clone(),
            lease: lease.clone(),
            error_type: err.failure.webhook_type(),
            message: err.message,
            threshold: config.breaker.threshold,
            breaker: row,
            opened,
            next_scan_at,
        })
        .await?;
    Ok(())
}

/// How a scan talks to its remote's breaker: one `Ask` before it starts,
/// one report when it knows how the remote did. A probe the scan was granted
/// and ended without a verdict on (skipped, fenced, a worker lost) is
/// released, so the next scan may probe at once.
struct RemoteBreaker {
    breaker: ActorRef<BreakerMsg>,
    probing: bool,
}

/// How long a watcher waits for its breaker (a local actor: this only
/// bounds a breaker stuck on the database).
const BREAKER_CALL_MS: u64 = 10_000;

impl RemoteBreaker {
    async fn ask(&mut self) -> Permit {
        match ractor::call_t!(self.breaker, BreakerMsg::Ask, BREAKER_CALL_MS) {
            Ok(permit) => {
                self.probing = permit == Permit::Probe;
                permit
            }
            // Restarting with its watcher: try again shortly.
            Err(_) => Permit::WaitUntil(now_ms() + 5_000),
        }
    }

    async fn succeeded(&mut self) {
        self.probing = false;
        let _ = ractor::call_t!(self.breaker, BreakerMsg::Succeeded, BREAKER_CALL_MS);
    }

    /// The breaker after this failure, and whether it opened it.
    async fn failed(&mut self, err: &GitError) -> Option<(entity::breaker::Model, bool)> {
        self.probing = false;
        let reported: Reported = ractor::call_t!(
            self.breaker,
            |reply| BreakerMsg::Failed {
                class: err.failure.as_str().to_owned(),
                error: err.message.clone(),
                reply,
            },
            BREAKER_CALL_MS
        )
        .ok()?;
        Some((reported.row?, reported.change == Change::Opened))
    }
}

impl Drop for RemoteBreaker {
    fn drop(&mut self) {
        if self.probing {
            let _ = self.breaker.cast(BreakerMsg::Inconclusive);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A busy database (the scan's own long outbox transaction, say) makes
    /// renewals fail for a while: the scan keeps its lease and goes on.
    /// Only another owner ends it.
    #[tokio::test]
    async fn a_lease_survives_failed_renewals_and_ends_only_when_taken() {
        let answers = std::sync::Mutex::new(std::collections::VecDeque::from([
            Err(StoreError::Db(sea_orm::DbErr::Custom(
                "database is locked".into(),
            ))),
            Ok(true),
            Err(StoreError::Db(sea_orm::DbErr::Custom(
                "database is locked".into(),
            ))),
            Err(StoreError::Db(sea_orm::DbErr::Custom(
                "database is locked".into(),
            ))),
            Ok(true),
            Ok(false),
        ]));
        let asked = std::sync::atomic::AtomicUsize::new(0);
        let why = keep_lease(Duration::from_millis(1), || {
            asked.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let answer = answers
                .lock()
                .expect("answers")
                .pop_front()
                .expect("the lease is kept only until another owner takes it");
            async move { answer }
        })
        .await;
        assert_eq!(why, "the scan lease passed to another owner");
        assert_eq!(asked.load(std::sync::atomic::Ordering::SeqCst), 6);
    }
}
