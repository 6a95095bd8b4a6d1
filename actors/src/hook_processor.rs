//! The hook processor: takes stored, unprocessed inbound push webhooks,
//! finds the watched repositories whose branch was pushed, makes them due and
//! pokes the scheduler (`ScanNow`), and records each hook's result.
//!
//! It runs when the HTTP layer stored a hook, at start-up and every sweep
//! interval, so a hook stored before a crash (or while this actor was being
//! restarted) is processed after all. Processing runs as a task whose end
//! comes back as a message; runs are coalesced.

use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio_util::task::AbortOnDropHandle;
use tracing::{debug, info, warn};

use crate::clock::now_ms;
use crate::ids::{HookId, RepoId};
use crate::inbound::{BranchMove, Push, RemoteKey, Trigger, interpret};
use crate::owned::OwnedTask;
use crate::signals::ScanRequests;
use crate::store::inbound::HookResult;
use crate::store::{Store, StoreError};

/// Hooks read per query.
const BATCH: u64 = 100;
/// How long processed hooks are kept.
const RETENTION_MS: i64 = 7 * 24 * 3600 * 1000;
/// How often old hooks are pruned.
const PRUNE_EVERY_MS: i64 = 3600 * 1000;

/// Messages of the hook processor.
#[derive(Debug)]
pub enum HookMsg {
    /// Process every stored, unprocessed hook (coalesced with a run in progress).
    Process,
    /// A run ended; `Err` carries a panic message.
    Done(Result<(), String>),
}

pub struct HookProcessor;

pub struct HookProcessorArgs {
    pub store: Store,
    /// Where a repository a hook says moved is sent for a scan now.
    pub scans: ScanRequests,
    /// How often stored hooks are looked for without being told.
    pub sweep: Duration,
}

pub struct HookProcessorState {
    args: HookProcessorArgs,
    /// Aborted when the state is dropped: a panic in the actor skips
    /// `post_stop`, not the drop.
    _ticker: AbortOnDropHandle<()>,
    /// The processing in progress, aborted if the actor stops or fails.
    work: Option<OwnedTask>,
    running: bool,
    again: bool,
    last_prune: i64,
}

impl Actor for HookProcessor {
    type Msg = HookMsg;
    type State = HookProcessorState;
    type Arguments = HookProcessorArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: HookProcessorArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let ticker = AbortOnDropHandle::new(myself.send_interval(args.sweep, || HookMsg::Process));
        // Hooks left over from before a restart are processed at once.
        myself.send_message(HookMsg::Process)?;
        Ok(HookProcessorState {
            args,
            _ticker: ticker,
            work: None,
            running: false,
            again: false,
            last_prune: 0,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            HookMsg::Process if state.running => state.again = true,
            HookMsg::Process => {
                state.running = true;
                let store = state.args.store.clone();
                let scans = state.args.scans.clone();
                let prune = now_ms() - state.last_prune > PRUNE_EVERY_MS;
                if prune {
                    state.last_prune = now_ms();
                }
                // Owned by this actor: stopped with it, whatever ends it.
                state.work = Some(OwnedTask::spawn(
                    process_pending(store, scans, prune),
                    move |result| {
                        let result =
                            result.map_err(|panic| format!("hook processing panicked: {panic}"));
                        let _ = myself.send_message(HookMsg::Done(result));
                    },
                ));
            }
            HookMsg::Done(result) => {
                state.running = false;
                state.work = None;
                result?;
                if std::mem::take(&mut state.again) {
                    myself.send_message(HookMsg::Process)?;
                }
            }
        }
        Ok(())
    }
}

/// Processes stored hooks until none is left. Database errors end the run;
/// the next one (a new hook, or the sweep) takes the rest.
async fn process_pending(store: Store, scans: ScanRequests, prune: bool) {
    if let Err(err) = drain(&store, &scans).await {
        warn!(error = %err, "stored hooks could not be processed; retrying on the next sweep");
    }
    if prune {
        match store.prune_hooks(now_ms() - RETENTION_MS).await {
            Ok(0) => {}
            Ok(n) => debug!(pruned = n, "old inbound hooks deleted"),
            Err(err) => warn!(error = %err, "old inbound hooks could not be deleted"),
        }
    }
}

async fn drain(store: &Store, scans: &ScanRequests) -> Result<(), StoreError> {
    loop {
        let batch = store.pending_hooks(BATCH).await?;
        let full = batch.len() as u64 == BATCH;
        for hook in batch {
            let outcome = decide(store, &hook).await?;
            if !store
                .finish_hook(&HookId::stored(hook.id.as_str()), &outcome)
                .await?
            {
                continue; // another instance got there first
            }
            record(&hook, &outcome);
            for repository in outcome.due {
                scans.scan_now(repository);
            }
        }
        if !full {
            return Ok(());
        }
    }
}

/// Logs a processed hook and counts it: a valid hook (triggered or ignored)
/// as `accepted`, one whose body could not be read as `invalid`, at WARN.
fn record(hook: &entity::inbound_hook::Model, outcome: &HookResult) {
    // A bounded label: only providers Herald stores.
    let provider = hook.provider.as_str();
    let counted = if outcome.status == entity::HookStatus::Invalid {
        warn!(
            hook = %hook.id,
            provider,
            delivery = %hook.delivery_id,
            event = %hook.event_type,
            reason = %outcome.result,
            "inbound hook accepted but invalid; nothing scanned"
        );
        "invalid"
    } else {
        info!(
            hook = %hook.id,
            provider,
            delivery = %hook.delivery_id,
            status = outcome.status.as_str(),
            result = %outcome.result,
            "inbound hook processed"
        );
        "accepted"
    };
    metrics::counter!(
        "herald_inbound_hooks_total",
        "provider" => provider,
        "outcome" => counted,
    )
    .increment(1);
}

fn ignored(result: impl Into<String>) -> HookResult {
    HookResult {
        status: entity::HookStatus::Ignored,
        result: result.into(),
        due: Vec::new(),
    }
}

/// What to do about one stored hook.
async fn decide(
    store: &Store,
    hook: &entity::inbound_hook::Model,
) -> Result<HookResult, StoreError> {
    let push = match interpret(hook.provider, &hook.event_type, &hook.body) {
        Ok(Trigger::Push(push)) => push,
        Ok(Trigger::Ignore(reason)) => return Ok(ignored(reason)),
        Err(err) => {
            return Ok(HookResult {
                status: entity::HookStatus::Invalid,
                result: err.to_string(),
                due: Vec::new(),
            });
        }
    };
    let repositories = matching_repositories(store, &push).await?;
    if repositories.is_empty() {
        return Ok(ignored("no watched repository matches"));
    }
    let mut deleted = false;
    let due: Vec<RepoId> = repositories
        .iter()
        .filter_map(|repo| {
            let moved = watched_move(repo, &push)?;
            deleted |= moved.deleted;
            RepoId::parse(&repo.id)
        })
        .collect();
    if due.is_empty() {
        let names: Vec<String> = push
            .branches
            .iter()
            .map(|b| format!("`{}`", b.branch))
            .collect();
        return Ok(ignored(match names.as_slice() {
            [one] => format!("branch {one} is not watched"),
            many => format!("branches {} are not watched", many.join(", ")),
        }));
    }
    let ids: Vec<&str> = due.iter().map(RepoId::as_str).collect();
    let what = if deleted {
        "branch deleted; scanning"
    } else {
        "scanning"
    };
    Ok(HookResult {
        status: entity::HookStatus::Triggered,
        result: format!("{what} {}", ids.join(", ")),
        due,
    })
}

/// Watched repositories that one of the payload's URLs names.
async fn matching_repositories(
    store: &Store,
    push: &Push,
) -> Result<Vec<entity::repository::Model>, StoreError> {
    let keys: Vec<RemoteKey> = push
        .urls
        .iter()
        .filter_map(|u| RemoteKey::parse(u))
        .collect();
    let mut paths: Vec<&str> = keys.iter().map(|k| k.path.as_str()).collect();
    paths.sort_unstable();
    paths.dedup();
    let mut found: Vec<entity::repository::Model> = Vec::new();
    for path in paths {
        for repo in store.repositories_by_path(path).await? {
            let named = [&repo.url, &repo.fetch_url]
                .into_iter()
                .filter_map(|u| RemoteKey::parse(u))
                .any(|watched| keys.iter().any(|k| k.matches(&watched)));
            if named && !found.iter().any(|f| f.id == repo.id) {
                found.push(repo);
            }
        }
    }
    Ok(found)
}

/// The move of the branch the repository follows, if the push moved it: the
/// branch asked for, else the remote's default branch (as last resolved, or
/// as the payload says). A repository whose branch is not known yet is
/// scanned on any move.
fn watched_move<'a>(repo: &entity::repository::Model, push: &'a Push) -> Option<&'a BranchMove> {
    let watched = Some(repo.branch.as_str())
        .filter(|b| !b.is_empty())
        .or(repo.resolved_branch.as_deref())
        .or(push.default_branch.as_deref());
    match watched {
        Some(branch) => push.branches.iter().find(|b| b.branch == branch),
        None => push.branches.first(),
    }
}
