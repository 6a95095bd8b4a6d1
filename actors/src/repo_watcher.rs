//! A repository's watcher runs one scan of it. The scheduler starts it once
//! the scan has a scan worker, and it stops when the scan has ended: an
//! idle repository, or one whose scan still waits for a worker, holds no
//! actor (its due time, breaker and lease are rows).
//!
//! The watcher owns the repository's mirror and, as its child actor, the
//! remote's circuit breaker: it asks the breaker, claims the scan lease, has
//! its scan worker check the remote, fetch and diff, then commits the
//! snapshot and every subscription's events in one transaction (or records
//! the failure) and tells the breaker how it went.
//!
//! The blocking work never runs inside `handle`: the scan runs as a task
//! owned by the watcher whose result comes back as a `Finished` message. A
//! scan that panics makes the watcher fail, and its supervisor (the
//! scheduler) starts it again after a backoff.

use std::path::PathBuf;
use std::time::Duration;

use entity::{BreakerKind, ScanEnd};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tracing::{Instrument, debug, info, warn};

use crate::breaker::actor::{BreakerActor, BreakerArgs, BreakerMsg, Change, Reported};
use crate::breaker::{BreakerPolicy, Permit};
use crate::changes::TreeDelta;
use crate::clock::{millis, now_ms};
use crate::git::{ConnectRule, Credentials, GitError, LowSpeed, RemoteSpec};
use crate::ids::{RepoId, SnapshotId};
use crate::owned::OwnedTask;
use crate::scan::{
    self, Accessor, ScanJob, ScanOutcome, ScanResult, ScanSlot, Verdict, WorkerLost,
};
use crate::store::access::AccessCheck;
use crate::store::leases::{LeaseToken, ScanFence};
use crate::store::outbox::{GitFailureRecord, SnapshotAdvance};
use crate::store::scans::ScanRecord;
use crate::store::{Store, StoreError};
use crate::telemetry;

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
    /// LFS pointers are described, and delivered, as their objects
    /// (`git.lfs`); off, a pointer is a file like any other.
    pub lfs: bool,
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
            lfs: true,
            signal: Default::default(),
        }
    }
}

/// Messages of a repository watcher.
#[derive(Debug)]
pub enum WatcherMsg {
    /// The scan ended; `Err` carries a panic message.
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
    /// The repository no longer exists: its mirror is removed.
    Gone,
}

pub struct RepoWatcher;

pub struct WatcherArgs {
    pub repository: RepoId,
    pub store: Store,
    pub config: WatcherConfig,
    /// The scan worker reserved for this scan.
    pub slot: ScanSlot,
}

pub struct WatcherState {
    repository: RepoId,
    config: WatcherConfig,
    /// The remote's breaker: a child of this watcher.
    breaker: ActorRef<BreakerMsg>,
    /// The scan, aborted if the watcher stops or fails.
    _scan: OwnedTask,
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
        let WatcherArgs {
            repository,
            store,
            config,
            slot,
        } = args;
        let breaker_args = BreakerArgs {
            store: store.clone(),
            kind: BreakerKind::Git,
            subject: repository.as_str().to_owned(),
            policy: config.breaker,
            // A probe is one scan; it may take this long before another goes.
            probe_timeout: longest_scan(&config),
            clear: Default::default(),
        };
        let (breaker, _) =
            Actor::spawn_linked(None, BreakerActor, breaker_args, myself.get_cell()).await?;
        // Each scan starts a trace; its events' deliveries continue it.
        let span = tracing::info_span!(
            parent: None,
            "scan",
            repository = %repository,
            outcome = tracing::field::Empty,
        );
        let work = scan_repository(
            store,
            slot,
            breaker.clone(),
            config.clone(),
            repository.clone(),
        );
        // Owned by this watcher: stopped with it, whatever ends it.
        let scan = OwnedTask::spawn(work.instrument(span), move |result| {
            let _ = myself.send_message(WatcherMsg::Finished(result));
        });
        Ok(WatcherState {
            repository,
            config,
            breaker,
            _scan: scan,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            #[cfg(test)]
            WatcherMsg::Crash => panic!("watcher crash requested by a test"),
            WatcherMsg::Finished(Err(panic)) => {
                return Err(format!("scan panicked: {panic}").into());
            }
            WatcherMsg::Finished(Ok(ScanReport::Gone)) => {
                info!(repository = %state.repository, "repository no longer watched; its mirror is removed");
                let _ = std::fs::remove_dir_all(mirror_path(&state.config, &state.repository));
                myself.stop(Some("repository removed".to_owned()));
            }
            WatcherMsg::Finished(Ok(report)) => {
                debug!(repository = %state.repository, ?report, "scan finished");
                myself.stop(Some("scanned".to_owned()));
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
        // Drained, not stopped: a probe the scan released (`Inconclusive`)
        // reaches the stored row.
        if state
            .breaker
            .drain_and_wait(Some(Duration::from_millis(BREAKER_CALL_MS)))
            .await
            .is_err()
        {
            state.breaker.kill();
        }
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

/// One scan of one repository, start to end, on its reserved scan worker.
/// The scan lease is claimed first (the work can start at once), renewed
/// while it runs, and presented by every write; a scan that loses it is
/// abandoned.
async fn scan_repository(
    store: Store,
    slot: ScanSlot,
    breaker: ActorRef<BreakerMsg>,
    config: WatcherConfig,
    repository: RepoId,
) -> ScanReport {
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
        snapshot_id: SnapshotId::generate(),
        unpin: store.settled_snapshots(repository).await?,
        lfs: config.lfs,
        expand_submodules: repo.expand_submodules,
    };
    // Writes hold only while the lease does and the head is the one seen here.
    let fence = ScanFence {
        lease: lease.clone(),
        expected_head: repo.head_commit.clone(),
    };
    let started = std::time::Instant::now();
    let log = ScanLog {
        store,
        repository,
        started_at: now_ms(),
        started,
    };
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
    let snapshot = job.snapshot_id.clone();
    match outcome.map(|found| snapshot_advance(found, repository, &fence, snapshot, next_scan_at)) {
        Ok(Ok(advance)) => {
            remote_breaker.succeeded().await;
            // The scan finds the branch unchanged when it is still at the known head.
            let moved = job.known_head.as_deref() != Some(advance.commit.as_str());
            let commit = advance.commit.clone();
            let changes = advance.delta.len();
            let result = store.advance_snapshot(advance).await?;
            let end = if moved {
                ScanEnd::Changed
            } else {
                ScanEnd::Unchanged
            };
            // The scan is counted before any of its events can be delivered,
            // so a scrape never shows a delivery without the scan behind it.
            telemetry::scan_finished(end, started.elapsed());
            // The events are committed: delivery starts now, not after the
            // scan's own record below.
            if result.events > 0 {
                config.signal.notify();
            }
            log.ended(end, Some(commit.clone()), changes, result.events, None)
                .await;
            if !moved {
                if result.events == 0 {
                    return Ok(ScanReport::Unchanged);
                }
                info!(%repository, events = result.events, "initial snapshot for new subscriptions");
                return Ok(ScanReport::Advanced {
                    events: result.events,
                });
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
        Ok(Err(NoSnapshot::NoAccess)) => {
            // Each subscriber was told on its own; the remote itself works.
            store.reschedule(repository, next_scan_at).await?;
            log.ended(ScanEnd::NoAccess, None, 0, 0, None).await;
            config.signal.notify();
            Ok(ScanReport::Skipped("no subscriber can read the repository"))
        }
        Ok(Err(NoSnapshot::NeedsManifest)) => Ok(ScanReport::Skipped("manifest still missing")),
        Err(err) => {
            telemetry::scan_finished(ScanEnd::Failed, started.elapsed());
            log.ended(ScanEnd::Failed, None, 0, 0, Some(err.message.clone()))
                .await;
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

/// Where a scan's end is written for the repository's console page.
struct ScanLog<'a> {
    store: &'a Store,
    repository: &'a RepoId,
    started_at: i64,
    started: std::time::Instant,
}

impl ScanLog<'_> {
    /// Records the scan's end. The log is for operators: a failure to write
    /// it is logged and does not fail the scan.
    async fn ended(
        &self,
        outcome: ScanEnd,
        commit_sha: Option<String>,
        changes: usize,
        events: u64,
        error: Option<String>,
    ) {
        let record = ScanRecord {
            started_at: self.started_at,
            duration_ms: millis(self.started.elapsed()),
            outcome,
            commit_sha,
            changes: i64::try_from(changes).unwrap_or(i64::MAX),
            events: i64::try_from(events).unwrap_or(i64::MAX),
            error,
        };
        if let Err(err) = self.store.record_scan(self.repository, record).await {
            warn!(repository = %self.repository, %err, "could not record the scan for the console");
        }
    }
}

/// A scan outcome that writes no snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NoSnapshot {
    /// The known head is not in the mirror, even with the manifest given.
    NeedsManifest,
    /// No subscriber's credential reads the repository.
    NoAccess,
}

/// The outbox write of a scan that read the branch: the snapshot the
/// repository moves to (unchanged, the same tree, which still gives
/// subscriptions added since their initial snapshot). Hands back the
/// outcomes that write no snapshot.
pub(crate) fn snapshot_advance(
    found: ScanOutcome,
    repository: &RepoId,
    fence: &ScanFence,
    snapshot: SnapshotId,
    next_scan_at: i64,
) -> Result<SnapshotAdvance, NoSnapshot> {
    let (commit, branch, delta, old_ignore, new_ignore) = match found {
        ScanOutcome::Unchanged {
            branch,
            commit,
            ignore,
        } => (commit, branch, TreeDelta::default(), ignore.clone(), ignore),
        ScanOutcome::Changed {
            branch,
            commit,
            delta,
            old_ignore,
            new_ignore,
        } => (commit, branch, *delta, old_ignore, new_ignore),
        ScanOutcome::NeedsManifest => return Err(NoSnapshot::NeedsManifest),
        ScanOutcome::NoAccess => return Err(NoSnapshot::NoAccess),
    };
    Ok(SnapshotAdvance {
        repository: repository.clone(),
        fence: fence.clone(),
        snapshot,
        commit,
        branch,
        delta,
        old_ignore,
        new_ignore,
        next_scan_at,
    })
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
                class: err.failure.class(),
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
