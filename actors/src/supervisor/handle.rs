//! The engine as the HTTP layer holds it ([`EngineHandle`]): starting and
//! stopping the tree, notifying it, and the blocking git work it runs for
//! requests (access checks, replays) on its workers.

use std::time::Duration;

use ractor::{Actor, ActorRef};
use secrecy::SecretString;

use super::*;

/// What the HTTP layer holds: a handle on the running engine.
#[derive(Clone)]
pub struct EngineHandle {
    pub(super) supervisor: ActorRef<SupervisorMsg>,
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
    ) -> Result<crate::changes::ReplayDiff, crate::scan::replay::ReplayFailure> {
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
