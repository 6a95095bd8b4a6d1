//! A delivery lane: the child actor of an app's delivery actor that delivers
//! one subscription's events, strictly in `seq` order, one after the other.
//!
//! The app actor claims the subscription's delivery lease and starts the
//! lane with it; the lane presents it with every write, renews it as it
//! goes, and stops before its next send once it lost it. Each event passes
//! the same stages: *render* (content read from the mirror, the body built
//! and chunked), *sign*, *send*, *record* (the answer judged, the breaker
//! told, the outcome written). The render stage runs ahead of the others:
//! the files after the one in flight are read, rendered and signed on a
//! blocking worker, in order, so the lane's own task only sends and records.
//! The store's work runs beside the lane, in tasks the lane owns, for as many
//! requests as it takes: the deliveries queued so far are written, and the
//! next batch is read before the current one runs out; only the answer
//! stands between two requests. A lane that finds its lease lost in such a
//! write stops before its next send.
//! One message delivers events for up to [`STEPS_FOR`] (a message and its
//! handler's future for every event cost more than a short request), so a
//! stop asked by the owner takes effect between two events, at most that
//! long after it was asked, after the lane wrote what it delivered and
//! released its lease; a lane that fails (a panic) leaves its events
//! pending, and its owner releases the lease and restarts it.
//! The store's work is polled on blocking threads
//! ([`crate::owned::Pending::spawn_on_blocking_thread`]): building a write's
//! statements and decoding a batch's rows took a runtime worker for
//! milliseconds.
//!
//! A dead event blocks its subscription, except that once every
//! `delivery.dead_retry_interval` after its last attempt (kept in its
//! `next_attempt_at`) it is due again for one probe, sent under the
//! subscription's delivery lease, so one instance probes it once per
//! interval: delivered, the subscription resumes in order; failed in any
//! way, it stays dead until the next interval.
//!
//! This file holds the actor and its step loop; one event's way through the
//! stages is in [`deliver`] (ask the breaker, render, then per request sign
//! and send) and [`record`] (judge, tell the breaker, write), around them:
//!
//! - [`batch`]: the events and their context read a batch at a time, the
//!   next batch read before the current one runs out;
//! - [`ahead`]: the files after the one in flight read and rendered ahead,
//!   in runs on a blocking worker (`Further`);
//! - [`prepared`]: an event's body rendered, its requests signed ahead;
//! - [`judge`]: what an answer means (pure);
//! - [`write_behind`]: successes written a batch at a time, beside the sends.

mod ahead;
mod batch;
mod deliver;
mod judge;
mod prepared;
mod record;
mod window;
mod write_behind;

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use entity::event;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tracing::warn;

use self::ahead::Further;
use self::batch::{BATCH, Batch, BatchReads, LaneContext, NextBatch, READ_NEXT_AT};
use self::deliver::Endpoints;
use self::window::Windowed;
use self::write_behind::Unrecorded;
use super::congestion::Congestion;
use super::{AppMsg, DeliveryConfig, lease_ttl, probe_dead_before};
use crate::breaker::actor::BreakerMsg;
use crate::clock::now_ms;
use crate::ids::{AppId, SubscriptionId};
use crate::owned::Pending;
use crate::scan::ScanPool;
use crate::store::leases::LeaseToken;
use crate::store::{Store, StoreError};
use crate::telemetry;
use crate::webhook_client::WebhookClient;

/// How long one message of a lane delivers events before the lane looks at
/// its mailbox again (where its owner's stop waits).
const STEPS_FOR: Duration = Duration::from_millis(10);

/// Messages of a lane.
#[derive(Debug)]
pub enum LaneMsg {
    /// Deliver the next events (see [`STEPS_FOR`]).
    Continue,
    /// Fails the lane, as a bug would (supervision tests).
    #[cfg(test)]
    Crash,
}

pub struct LaneActor;

/// What a lane starts with: its subscription, the lease its owner claimed
/// for it, and whom to tell when it ends.
pub struct LaneArgs {
    pub app_id: AppId,
    pub subscription: SubscriptionId,
    pub lease: LeaseToken,
    pub store: Store,
    pub config: DeliveryConfig,
    pub client: WebhookClient,
    /// The app endpoint's breaker actor.
    pub breaker: ActorRef<BreakerMsg>,
    /// Whether that breaker is clear: then the lane need not ask it.
    pub breaker_clear: Arc<AtomicBool>,
    pub owner: ActorRef<AppMsg>,
    /// Where content missing from the mirror is fetched again.
    pub pool: ScanPool,
    /// The app's window, shared by its lanes.
    pub congestion: Arc<Congestion>,
    /// The app's broker connection, shared by its lanes.
    pub broker: crate::broker::Broker,
}

/// The lane actor's state: where it is in its subscription's events (the
/// last `seq` handled, the batch read after it and that batch's context),
/// the pipeline that delivers them, and whom to tell when it ends.
pub struct LaneState {
    pipeline: Pipeline,
    owner: ActorRef<AppMsg>,
    /// The last `seq` handled: delivered, or passed over as skipped.
    after_seq: i64,
    /// The events read and not yet handled, in order.
    batch: VecDeque<Arc<event::Model>>,
    /// Whether that batch was read full ([`BATCH`] events): more may follow.
    batch_full: bool,
    /// Read again with every batch: a rotated key or a new base_url applies
    /// within one batch, and a disabled app stops its lanes.
    context: Option<LaneContext>,
    /// When the subscription is due again, once the lane ends.
    retry_at: Option<i64>,
    /// With a window (the app's `window` above 1 when the lane started):
    /// the events in flight and what may start next (see `window.rs`).
    windowed: Option<Windowed>,
    congestion: Arc<Congestion>,
    /// A windowed lane that read every event there was: the last `seq`.
    read_through: Option<i64>,
}

/// What one step of a lane leaves to do.
enum Step {
    More,
    /// The lane ends; the subscription is due again at this time (if any).
    Done(Option<i64>),
}

impl Actor for LaneActor {
    type Msg = LaneMsg;
    type State = LaneState;
    type Arguments = LaneArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: LaneArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        myself.send_message(LaneMsg::Continue)?;
        Ok(LaneState {
            pipeline: Pipeline {
                metrics: telemetry::AppDeliveries::of(&args.app_id),
                reads: Arc::new(BatchReads {
                    app_id: args.app_id.clone(),
                    subscription: args.subscription.clone(),
                    store: args.store.clone(),
                    config: args.config.clone(),
                    pool: args.pool,
                    broker: args.broker,
                    mirror: std::sync::OnceLock::new(),
                    mirror_ahead: std::sync::OnceLock::new(),
                }),
                app_id: args.app_id,
                subscription: args.subscription,
                lease: args.lease,
                store: args.store,
                config: args.config,
                client: args.client,
                breaker: args.breaker,
                breaker_clear: args.breaker_clear,
                renewed_at: now_ms(),
                delivered: Unrecorded::default(),
                writing: None,
                further: Further::default(),
                reading: None,
                endpoints: Endpoints::default(),
            },
            owner: args.owner,
            after_seq: i64::MIN,
            batch: VecDeque::new(),
            batch_full: false,
            context: None,
            retry_at: None,
            windowed: None,
            congestion: args.congestion,
            read_through: None,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            LaneMsg::Continue => match state.steps().await {
                Ok(Step::More) => myself.send_message(LaneMsg::Continue)?,
                Ok(Step::Done(retry_at)) => {
                    state.retry_at = retry_at;
                    myself.stop(None);
                }
                Err(StoreError::Fenced(why)) => {
                    // Another owner delivers this subscription now: this lane
                    // stops and leaves it to them.
                    warn!(subscription = %state.pipeline.subscription, why, "lane fenced off; it stops");
                    myself.stop(None);
                }
                Err(err) => {
                    warn!(subscription = %state.pipeline.subscription, error = %err, "delivery interrupted; retrying shortly");
                    state.retry_at = Some(now_ms() + 1_000);
                    myself.stop(None);
                }
            },
            #[cfg(test)]
            LaneMsg::Crash => panic!("lane crash requested by a test"),
        }
        Ok(())
    }

    /// Runs when the lane ends by itself or is stopped by its owner (not
    /// when it fails: then its owner cleans up).
    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let pipeline = &mut state.pipeline;
        if let Some(mut windowed) = state.windowed.take()
            && let Err(err) = windowed.land_all(pipeline).await
        {
            warn!(subscription = %pipeline.subscription, error = %err, "webhooks in flight not recorded; they will be delivered again");
        }
        if let Err(err) = pipeline.flush().await {
            warn!(subscription = %pipeline.subscription, error = %err, "delivered events not recorded; they will be delivered again");
            if !matches!(err, StoreError::Fenced(_)) {
                state.retry_at = Some(now_ms() + 1_000);
            }
        }
        if let Err(err) = pipeline
            .store
            .release_delivery(&pipeline.subscription, &pipeline.lease)
            .await
        {
            warn!(subscription = %pipeline.subscription, error = %err, "could not release the delivery lease; it will expire");
        }
        let _ = state.owner.send_message(AppMsg::LaneDone {
            subscription: pipeline.subscription.clone(),
            retry_at: state.retry_at,
            read_through: state.read_through,
        });
        Ok(())
    }
}

impl LaneState {
    /// Delivers events one after the other for up to [`STEPS_FOR`], and
    /// gives the last step's answer: `More` when the lane should go on.
    async fn steps(&mut self) -> Result<Step, StoreError> {
        let started = Instant::now();
        loop {
            match self.step().await {
                Ok(Step::More) if started.elapsed() < STEPS_FOR => {}
                stepped => return stepped,
            }
        }
    }

    /// Delivers the next due event, reading the next batch first when the
    /// last one is used up.
    ///
    /// What is rare here (a batch read, the windowed mode) is awaited boxed:
    /// a future holds room for the largest future it awaits, and this one
    /// is made and moved (copied whole) for every event. The same holds on
    /// the way down (`deliver`, `record`, the webhook client, the broker):
    /// store writes of failures, connects and broker publishes are boxed.
    async fn step(&mut self) -> Result<Step, StoreError> {
        if self.windowed.is_some() {
            return Box::pin(self.step_windowed()).await;
        }
        if self.batch.is_empty()
            && let Some(step) = Box::pin(self.next_batch()).await?
        {
            return Ok(step);
        }
        let (Some(event), Some(context)) = (self.batch.pop_front(), self.context.as_ref()) else {
            return Ok(Step::Done(None));
        };
        if event.status == entity::EventStatus::Dead {
            // Order is the contract: later events wait behind it, until it
            // is retried or skipped, or its probe is due (`next_attempt_at`
            // is its last attempt). The lease makes it one probe per
            // interval, however many instances look.
            let now = now_ms();
            if probe_dead_before(&self.pipeline.config, now)
                .is_none_or(|before| event.next_attempt_at > before)
            {
                return Ok(Step::Done(None));
            }
        } else if event.next_attempt_at > now_ms() {
            return Ok(Step::Done(Some(event.next_attempt_at)));
        }
        // The next batch is read while this one's events go out: from a
        // quarter before the end of a full batch (a read takes tens of
        // requests' time), after the last event of a shorter one (which
        // found every event there was).
        if self.batch.is_empty() || (self.batch_full && self.batch.len() <= READ_NEXT_AT) {
            let last = self.batch.back().map_or(event.seq, |last| last.seq);
            self.pipeline.read_next(last);
        }
        // The next events of the batch are read and rendered while this
        // one's request is in flight (never those of another batch: the next
        // batch may come with another context).
        match self
            .pipeline
            .deliver_event(context, &event, &self.batch)
            .await?
        {
            Flow::Next => self.after_seq = event.seq,
            Flow::Retry(at) => return Ok(Step::Done(Some(at))),
            Flow::Stop(at) => return Ok(Step::Done(at)),
        }
        if !self.pipeline.renew_lease().await? {
            return Ok(Step::Done(None));
        }
        Ok(Step::More)
    }

    /// Reads the batch after the last event delivered: `Some` when the
    /// lane's step ends here (nothing left, or the lane goes windowed).
    async fn next_batch(&mut self) -> Result<Option<Step>, StoreError> {
        let first = self.after_seq == i64::MIN;
        if first
            && let Some(first) = self
                .pipeline
                .store
                .first_undelivered_seq(&self.pipeline.subscription)
                .await?
        {
            // Start at the first undelivered event, not at the start of
            // the subscription's (kept) history.
            self.after_seq = first - 1;
        }
        let Some(Batch { context, events }) = self.pipeline.batch_after(self.after_seq).await?
        else {
            return Ok(Some(Step::Done(None)));
        };
        if events.is_empty() {
            // Settling counts what is left: it must see every delivery.
            self.pipeline.flush().await?;
            self.pipeline
                .store
                .settle_subscription(&self.pipeline.subscription, &self.pipeline.lease)
                .await?;
            return Ok(Some(Step::Done(None)));
        }
        self.batch_full = events.len() as u64 >= BATCH;
        if first && context.window > 1 {
            // The lane keeps the mode it started in.
            if let Some(last) = events.last() {
                self.after_seq = last.seq;
            }
            let congestion = self.congestion.clone();
            // A windowed lane holds its events whole (no read-ahead shares them).
            let events = events.into_iter().map(Arc::unwrap_or_clone);
            self.windowed = Some(Windowed::new(context, events, congestion));
            return self.step_windowed().await.map(Some);
        }
        self.context = Some(context);
        self.batch = events.into();
        Ok(None)
    }
}

/// How an event's delivery ended.
enum Flow {
    /// Delivered (or passed over): go on with the next event.
    Next,
    /// The event is tried again at this time: its path waits until then
    /// (with a window; without one, the whole subscription does).
    Retry(i64),
    /// Stop the lane; the subscription is due again at this time (if any).
    Stop(Option<i64>),
}

/// The stages one event passes through, for one subscription under one
/// lease, and the work they keep running beside the sends: the next batch's
/// read, the files read ahead, the successes written behind. The lane's
/// state holds one; its stages are in the files below this one.
struct Pipeline {
    app_id: AppId,
    subscription: SubscriptionId,
    /// This lane's claim: every write presents it, and a lane whose lease
    /// passed to another owner stops before its next send.
    lease: LeaseToken,
    store: Store,
    config: DeliveryConfig,
    client: WebhookClient,
    /// The app endpoint's breaker actor.
    breaker: ActorRef<BreakerMsg>,
    /// Set while the breaker is closed with no failure counted.
    breaker_clear: Arc<AtomicBool>,
    /// How batches are read, beside the lane.
    reads: Arc<BatchReads>,
    /// When the delivery lease was last claimed or renewed (unix ms).
    renewed_at: i64,
    /// Delivered events whose success is not written yet (see [`Pipeline::flush`]).
    delivered: Unrecorded,
    /// Delivered events being written while the lane goes on (see
    /// [`Pipeline::write_behind`]).
    writing: Option<Pending<Result<(), StoreError>>>,
    /// Files further down the batch, being read and rendered on blocking
    /// workers (see `ahead.rs`), in `seq` order.
    further: Further,
    /// The next batch, being read while the current one's events go out.
    reading: Option<NextBatch>,
    /// The app's webhook URLs, each parsed once.
    endpoints: Endpoints,
    metrics: telemetry::AppDeliveries,
}

impl Pipeline {
    /// Renews the delivery lease once a third of it has passed; `false` when
    /// it was lost (another owner took the subscription over).
    async fn renew_lease(&mut self) -> Result<bool, StoreError> {
        let ttl = lease_ttl(&self.config);
        let now = now_ms();
        if now - self.renewed_at < ttl / 3 {
            return Ok(true);
        }
        self.renewed_at = now;
        Box::pin(
            self.store
                .renew_delivery(&self.subscription, &self.lease, ttl),
        )
        .await
    }
}
