//! The bulk runner: works through bulk operations (retry every dead event of
//! one app, or of all) that any instance's API started. The operations live
//! in the database (`store::bulk`); this actor claims the ones nobody works
//! on, runs each as a task it owns, renews their heartbeat, and takes over an
//! operation whose runner died (its heartbeat older than the lease time),
//! resuming after the last event that runner recorded.
//!
//! A run handles one event at a time: queue it again, record it (with the
//! cursor) under the run's claim, and stop when an operator asked for it,
//! whichever instance took the request.

use std::collections::HashMap;
use std::time::Duration;

use entity::BulkStatus;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio_util::task::AbortOnDropHandle;
use tracing::{debug, info, warn};

use crate::clock::now_ms;
use crate::ids::OperationId;
use crate::owned::OwnedTask;
use crate::signals::OutboxSignal;
use crate::store::bulk::{BulkClaim, KEEP_FINISHED_MS};
use crate::store::events::Lever;
use crate::store::leases::LeaseToken;
use crate::store::{Store, StoreError};

/// Operations one instance runs at once; more wait for a free slot here or
/// for another instance.
const MAX_RUNS: usize = 8;
/// Dead events read per query.
const BATCH: u64 = 100;
/// Delivery is woken every so many retried events, so it starts before a
/// long operation ends.
const WAKE_EVERY: u64 = 100;
/// How often finished operations past their retention are deleted.
const PRUNE_EVERY_MS: i64 = 60 * 1000;

/// Messages of the bulk runner.
#[derive(Debug)]
pub enum BulkMsg {
    /// Claim the operations nobody works on (one was just started, or its
    /// runner died) and run them.
    Claim,
    /// Renew the heartbeat of the operations this instance runs, then
    /// [`BulkMsg::Claim`]; prune expired ones now and then.
    Tick,
    /// A run ended (`Err`: it panicked).
    Ended(OperationId, Result<(), String>),
}

pub struct BulkRunner;

pub struct BulkArgs {
    pub store: Store,
    /// This instance's name in claims.
    pub instance_id: String,
    /// A running operation not updated for this long has lost its runner.
    pub lease_ttl: Duration,
    /// How often it renews its operations and looks for abandoned ones.
    pub tick: Duration,
    /// Rung as events are queued again, so delivery starts at once.
    pub signal: OutboxSignal,
    /// Waited after each event queued again (`delivery.bulk_retry_pause`),
    /// so a large retry reaches its receivers spread out.
    pub pause: Duration,
}

pub struct BulkState {
    args: BulkArgs,
    /// Aborted when the state is dropped: a panic in the actor skips
    /// `post_stop`, not the drop.
    _ticker: AbortOnDropHandle<()>,
    /// The operations this actor runs, each with its claim; dropping one
    /// aborts its run.
    runs: HashMap<OperationId, (LeaseToken, OwnedTask)>,
    last_prune: i64,
}

impl Actor for BulkRunner {
    type Msg = BulkMsg;
    type State = BulkState;
    type Arguments = BulkArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: BulkArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        // A previous run of this instance (a crash, or this actor before a
        // restart) held these: they resume now, not after the lease time.
        match args
            .store
            .release_bulk_operations_of(&args.instance_id)
            .await
        {
            Ok(0) => {}
            Ok(released) => info!(
                released,
                "resuming the bulk operations of this instance's previous run"
            ),
            Err(err) => {
                warn!(error = %err, "could not release this instance's previous bulk operations")
            }
        }
        // Renewed well within the lease time.
        let every = args.tick.min(args.lease_ttl / 3);
        let ticker = AbortOnDropHandle::new(myself.send_interval(every, || BulkMsg::Tick));
        myself.send_message(BulkMsg::Claim)?;
        Ok(BulkState {
            args,
            _ticker: ticker,
            runs: HashMap::new(),
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
            BulkMsg::Claim => state.claim(&myself).await,
            BulkMsg::Tick => {
                state.renew().await;
                state.prune().await;
                state.claim(&myself).await;
            }
            BulkMsg::Ended(id, result) => {
                state.runs.remove(&id);
                // A run that panicked keeps its claim without a heartbeat:
                // it is taken over after the lease time, and given up on
                // after a few takeovers, without taking this actor down.
                if let Err(panic) = result {
                    warn!(operation = %id, %panic, "a bulk operation's run panicked");
                }
                // A slot is free.
                state.claim(&myself).await;
            }
        }
        Ok(())
    }
}

impl BulkState {
    fn stale_before(&self) -> i64 {
        let ttl = i64::try_from(self.args.lease_ttl.as_millis()).unwrap_or(i64::MAX);
        now_ms().saturating_sub(ttl)
    }

    async fn claim(&mut self, myself: &ActorRef<BulkMsg>) {
        let room = MAX_RUNS.saturating_sub(self.runs.len()) as u64;
        if room == 0 {
            return;
        }
        let claims = match self
            .args
            .store
            .claim_bulk_operations(&self.args.instance_id, self.stale_before(), room)
            .await
        {
            Ok(claims) => claims,
            Err(err) => {
                warn!(error = %err, "could not look for bulk operations to run; trying again on the next tick");
                return;
            }
        };
        for claim in claims {
            let Some(id) = OperationId::parse(&claim.operation.id) else {
                continue;
            };
            if claim.operation.claims > 1 || claim.operation.done > 0 {
                info!(operation = %id, done = claim.operation.done, total = claim.operation.total, "taking over a bulk operation whose runner stopped");
            }
            let token = claim.token.clone();
            let store = self.args.store.clone();
            let signal = self.args.signal.clone();
            let pause = self.args.pause;
            let owner = myself.clone();
            let ended = id.clone();
            let task = OwnedTask::spawn(run(store, claim, signal, pause), move |result| {
                let _ = owner.send_message(BulkMsg::Ended(ended, result));
            });
            self.runs.insert(id, (token, task));
        }
    }

    /// The heartbeat of every run; a run whose claim passed to another
    /// runner (this instance looked dead) is stopped.
    async fn renew(&mut self) {
        let claims: Vec<(OperationId, LeaseToken)> = self
            .runs
            .iter()
            .map(|(id, (token, _))| (id.clone(), token.clone()))
            .collect();
        if claims.is_empty() {
            return;
        }
        match self.args.store.renew_bulk_operations(&claims).await {
            Ok(held) => self.runs.retain(|id, (_, task)| {
                // A run that just finished released its claim itself.
                held.contains(id) || task.is_finished()
            }),
            Err(err) => warn!(error = %err, "could not renew the bulk operations' heartbeat"),
        }
    }

    async fn prune(&mut self) {
        let now = now_ms();
        if now - self.last_prune < PRUNE_EVERY_MS {
            return;
        }
        self.last_prune = now;
        match self
            .args
            .store
            .prune_bulk_operations(now - KEEP_FINISHED_MS)
            .await
        {
            Ok(0) => {}
            Ok(pruned) => debug!(pruned, "finished bulk operations deleted"),
            Err(err) => warn!(error = %err, "finished bulk operations could not be deleted"),
        }
    }
}

/// Runs one claimed operation to its end, or until it is cancelled or its
/// claim is lost.
async fn run(store: Store, claim: BulkClaim, signal: OutboxSignal, pause: Duration) {
    let BulkClaim { operation, token } = claim;
    let Some(id) = OperationId::parse(&operation.id) else {
        return;
    };
    // Paced, each event is delivered as soon as it is queued.
    let wake_every = if pause.is_zero() { WAKE_EVERY } else { 1 };
    let mut woken = Waker {
        signal,
        unwoken: 0,
        every: wake_every,
    };
    let ended = work(&store, &operation, &id, &token, &mut woken, pause).await;
    woken.flush();
    match ended {
        Ok(status) => {
            let read = store.bulk_operation(&id, now_ms()).await;
            let (done, failed) = read
                .ok()
                .flatten()
                .map_or((0, 0), |op| (op.done, op.failed));
            info!(
                operation = %id,
                status = status.as_str(),
                total = operation.total,
                done,
                failed,
                "bulk retry ended"
            );
        }
        Err(StoreError::Fenced(why)) => {
            info!(operation = %id, why, "bulk operation left to its new runner");
        }
        Err(err) => {
            // Its heartbeat stops: it is taken over after the lease time.
            warn!(operation = %id, error = %err, "bulk operation interrupted by a database error; it resumes after the lease time");
        }
    }
}

/// Rings the outbox signal every so many queued events and at the end.
struct Waker {
    signal: OutboxSignal,
    unwoken: u64,
    /// [`WAKE_EVERY`], or 1 when the run is paced.
    every: u64,
}

impl Waker {
    fn queued(&mut self) {
        self.unwoken += 1;
        if self.unwoken >= self.every {
            self.flush();
        }
    }

    fn flush(&mut self) {
        if self.unwoken > 0 {
            self.signal.notify();
            self.unwoken = 0;
        }
    }
}

/// The events of the operation's range after its cursor, one at a time,
/// `pause` apart; how it ended.
async fn work(
    store: &Store,
    operation: &entity::bulk_operation::Model,
    id: &OperationId,
    token: &LeaseToken,
    woken: &mut Waker,
    pause: Duration,
) -> Result<BulkStatus, StoreError> {
    let total = u64::try_from(operation.total).unwrap_or(0);
    let mut done = u64::try_from(operation.done).unwrap_or(0);
    let mut cursor = operation.cursor.clone();
    let mut cancel = operation.cancel_requested;
    loop {
        let room = total.saturating_sub(done).min(BATCH);
        let batch = if cancel || room == 0 {
            Vec::new()
        } else {
            store
                .bulk_next_events(operation, cursor.as_deref(), room)
                .await?
        };
        if batch.is_empty() {
            let status = if cancel {
                BulkStatus::Cancelled
            } else {
                BulkStatus::Done
            };
            if !store.finish_bulk_operation(id, token, status).await? {
                return Err(StoreError::Fenced("the operation passed to another runner"));
            }
            return Ok(status);
        }
        for event in batch {
            let retried = match store.retry_event(None, &event).await {
                // Not applicable: delivered or retried since it was listed.
                Ok(Lever::Done | Lever::NotApplicable) => true,
                Ok(Lever::NotFound) => false,
                Err(err) => {
                    warn!(operation = %id, event = %event, error = %err, "bulk retry could not retry an event");
                    false
                }
            };
            if retried {
                woken.queued();
            }
            cancel = store.record_bulk_step(id, token, &event, retried).await?;
            done += 1;
            cursor = Some(event.into_string());
            if cancel || done >= total {
                break;
            }
            if !pause.is_zero() {
                tokio::time::sleep(pause).await;
                // A cancel asked for during the pause stops the run before
                // its next event, as the console promises.
                cancel = store
                    .bulk_operation(id, now_ms())
                    .await?
                    .is_some_and(|op| op.cancel_requested);
                if cancel {
                    break;
                }
            }
        }
    }
}
