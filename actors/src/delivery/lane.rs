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
//! One event is one message, so a stop asked by the owner takes effect
//! between two events, after the lane wrote what it delivered and released
//! its lease; a lane that fails (a panic) leaves its events pending, and its
//! owner releases the lease and restarts it.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use entity::event;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use reqwest::header::HeaderMap;
use secrecy::ExposeSecret;
use tracing::{info, warn};

use super::content::{Content, Found, MirrorReader};
use super::{AppMsg, BREAKER_CALL_MS, DeliveryConfig, lease_ttl, probe_dead_before};
use crate::backoff::Backoff;
use crate::breaker::Permit;
use crate::breaker::actor::{BreakerMsg, Change, Reported};
use crate::clock::{millis, now_ms};
use crate::git::{Credentials, RemoteSpec};
use crate::ids::SubscriptionId;
use crate::owned::{Pending, joined};
use crate::payload::{self, RepositoryRef};
use crate::scan::ScanPool;
use crate::signing;
use crate::store::delivery::{Attempt, EventOutcome};
use crate::store::leases::LeaseToken;
use crate::store::{Store, StoreError};
use crate::telemetry::{self, delivery_outcome};
use crate::webhook_client::{Answer, Endpoint, NoAnswer, WebhookClient, header};

/// Messages of a lane.
#[derive(Debug)]
pub enum LaneMsg {
    /// Deliver the next event.
    Continue,
    /// Fails the lane, as a bug would (supervision tests).
    #[cfg(test)]
    Crash,
}

pub struct LaneActor;

/// What a lane starts with: its subscription, the lease its owner claimed
/// for it, and whom to tell when it ends.
pub struct LaneArgs {
    pub app_id: String,
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
}

pub struct LaneState {
    lane: Lane,
    owner: ActorRef<AppMsg>,
    /// The last `seq` handled: delivered, or passed over as skipped.
    after_seq: i64,
    /// The events read and not yet handled, in order.
    batch: VecDeque<event::Model>,
    /// Whether that batch was read full ([`BATCH`] events): more may follow.
    batch_full: bool,
    /// Read again with every batch: a rotated key or a new base_url applies
    /// within one batch, and a disabled app stops its lanes.
    context: Option<LaneContext>,
    /// When the subscription is due again, once the lane ends.
    retry_at: Option<i64>,
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
            lane: Lane {
                metrics: telemetry::AppDeliveries::of(&args.app_id),
                reads: Arc::new(BatchReads {
                    app_id: args.app_id.clone(),
                    subscription: args.subscription.clone(),
                    store: args.store.clone(),
                    config: args.config.clone(),
                    pool: args.pool,
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
                interleaved: Interleaved::default(),
                reading: None,
                endpoints: Endpoints::default(),
            },
            owner: args.owner,
            after_seq: i64::MIN,
            batch: VecDeque::new(),
            batch_full: false,
            context: None,
            retry_at: None,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            LaneMsg::Continue => match state.step().await {
                Ok(Step::More) => myself.send_message(LaneMsg::Continue)?,
                Ok(Step::Done(retry_at)) => {
                    state.retry_at = retry_at;
                    myself.stop(None);
                }
                Err(StoreError::Fenced(why)) => {
                    // Another owner delivers this subscription now: this lane
                    // stops and leaves it to them.
                    warn!(subscription = %state.lane.subscription, why, "lane fenced off; it stops");
                    myself.stop(None);
                }
                Err(err) => {
                    warn!(subscription = %state.lane.subscription, error = %err, "delivery interrupted; retrying shortly");
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
        let lane = &mut state.lane;
        if let Err(err) = lane.flush().await {
            warn!(subscription = %lane.subscription, error = %err, "delivered events not recorded; they will be delivered again");
            if !matches!(err, StoreError::Fenced(_)) {
                state.retry_at = Some(now_ms() + 1_000);
            }
        }
        if let Err(err) = lane
            .store
            .release_delivery(&lane.subscription, &lane.lease)
            .await
        {
            warn!(subscription = %lane.subscription, error = %err, "could not release the delivery lease; it will expire");
        }
        let _ = state.owner.send_message(AppMsg::LaneDone {
            subscription: lane.subscription.as_str().to_owned(),
            retry_at: state.retry_at,
        });
        Ok(())
    }
}

impl LaneState {
    /// Delivers the next due event, reading the next batch first when the
    /// last one is used up.
    async fn step(&mut self) -> Result<Step, StoreError> {
        if self.batch.is_empty() {
            if self.after_seq == i64::MIN
                && let Some(first) = self
                    .lane
                    .store
                    .first_undelivered_seq(self.lane.subscription.as_str())
                    .await?
            {
                // Start at the first undelivered event, not at the start of
                // the subscription's (kept) history.
                self.after_seq = first - 1;
            }
            let Some(Batch { context, events }) = self.lane.batch_after(self.after_seq).await?
            else {
                return Ok(Step::Done(None));
            };
            self.context = Some(context);
            if events.is_empty() {
                // Settling counts what is left: it must see every delivery.
                self.lane.flush().await?;
                self.lane
                    .store
                    .settle_subscription(self.lane.subscription.as_str(), &self.lane.lease)
                    .await?;
                return Ok(Step::Done(None));
            }
            self.batch_full = events.len() as u64 >= BATCH;
            self.batch = events.into();
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
            if probe_dead_before(&self.lane.config, now)
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
            self.lane.read_next(last);
        }
        // The next events of the batch are read and rendered while this
        // one's request is in flight (never those of another batch: the next
        // batch may come with another context).
        match self
            .lane
            .deliver_event(context, &event, &self.batch)
            .await?
        {
            Flow::Next => self.after_seq = event.seq,
            Flow::Stop(at) => return Ok(Step::Done(at)),
        }
        if !self.lane.renew_lease().await? {
            return Ok(Step::Done(None));
        }
        Ok(Step::More)
    }
}

/// How an event's delivery ended.
enum Flow {
    /// Delivered (or passed over): go on with the next event.
    Next,
    /// Stop the lane; the subscription is due again at this time (if any).
    Stop(Option<i64>),
}

/// Everything a lane needs, loaded once per batch.
struct LaneContext {
    base_url: String,
    signer: Signer,
    repository: RepositoryRef,
    content: Content,
    /// The mirror's reader for look-aheads on blocking workers.
    mirror_ahead: MirrorReader,
    backoff: Backoff,
}

/// Bodies and files larger than this are rendered and signed on a blocking
/// worker, not on the async executor.
const BLOCKING_BYTES: usize = 1 << 20;

/// Runs CPU-heavy work on a blocking worker; its panic is the lane's.
async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    joined(tokio::task::spawn_blocking(work).await)
        .expect("blocking work ends unless the runtime shuts down")
}

/// The shortest wait before content the remote could not give is asked for
/// again.
const CONTENT_RETRY_MIN: Duration = Duration::from_secs(5);

struct Lane {
    app_id: String,
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
    /// Delivered events whose success is not written yet (see [`Lane::flush`]).
    delivered: Unrecorded,
    /// Delivered events being written while the lane goes on (see
    /// [`Lane::write_behind`]).
    writing: Option<Pending<Result<(), StoreError>>>,
    /// Files further down the batch, being read and rendered on blocking
    /// workers (see [`FURTHER_EVENTS`]), in `seq` order.
    further: Further,
    /// The small files among them, read on the lane's own thread while its
    /// requests are in flight.
    interleaved: Interleaved,
    /// The next batch, being read while the current one's events go out.
    reading: Option<NextBatch>,
    /// The app's webhook URLs, each parsed once.
    endpoints: Endpoints,
    metrics: telemetry::AppDeliveries,
}

/// An app's webhook URLs (`{base_url}/{endpoint}`) as the client parsed
/// them, kept while the app's base URL stays the same: parsing one (the
/// URL, its host, the check of an address in it) is not work to repeat for
/// every webhook.
#[derive(Debug, Default)]
struct Endpoints {
    base_url: String,
    parsed: Vec<(&'static str, Endpoint)>,
}

impl Endpoints {
    fn get(&mut self, client: &WebhookClient, base_url: &str, name: &'static str) -> &Endpoint {
        if self.base_url != base_url {
            base_url.clone_into(&mut self.base_url);
            self.parsed.clear();
        }
        let at = match self.parsed.iter().position(|(known, _)| *known == name) {
            Some(at) => at,
            None => {
                let url = format!("{}/{name}", base_url.trim_end_matches('/'));
                self.parsed.push((name, client.endpoint(&url)));
                self.parsed.len() - 1
            }
        };
        &self.parsed[at].1
    }
}

/// What reading a lane's next batch needs, shared with the task that reads
/// it.
struct BatchReads {
    app_id: String,
    subscription: SubscriptionId,
    store: Store,
    config: DeliveryConfig,
    pool: ScanPool,
    /// The mirror's reader, kept for the lane's life (a subscription's
    /// repository never changes): libgit2's cache of delta bases outlives a
    /// batch.
    mirror: std::sync::OnceLock<MirrorReader>,
    /// A second opening of the mirror, for the runs that read ahead: a
    /// reader is one lock, held while a file is rendered, and a file the
    /// lane reads in turn (the first of a batch, one too big to read ahead)
    /// must not wait behind the run's reading of later files.
    mirror_ahead: std::sync::OnceLock<MirrorReader>,
}

/// A batch of events and the context they are delivered in.
struct Batch {
    context: LaneContext,
    events: Vec<event::Model>,
}

/// The batch after `after_seq`, being read ahead.
struct NextBatch {
    after_seq: i64,
    read: Pending<Result<Option<Batch>, StoreError>>,
}

/// A full batch's next batch is read once this many of its events are left.
const READ_NEXT_AT: usize = BATCH as usize / 4;

/// Files up to this size are read and rendered ahead (larger ones when their
/// turn comes).
const AHEAD_BYTES: i64 = 4 << 20;
/// Files up to [`AHEAD_BYTES`] are read and rendered up to this many events
/// ahead, as long as they and the file in flight add up to at most
/// [`FURTHER_BYTES`]. Rendering and signing a 2 MiB file takes milliseconds
/// (about 6–10), far longer than the request before it: started only when
/// the request before it left, it held the lane up (reference workload: such
/// files arrived 1.4–5 ms apart, against 0.4–1.3 ms for a sender with every
/// body ready).
const FURTHER_EVENTS: usize = 32;
const FURTHER_BYTES: i64 = 4 << 20;
/// The window is filled up again once no more than this many events are
/// held: each run of reads then renders a dozen or more files on one
/// blocking worker, for one thread wake-up.
const FURTHER_REFILL_AT: usize = FURTHER_EVENTS / 2;

/// An event's body, read from the mirror and rendered (and signed) ahead of
/// its turn, while the requests before it are in flight. Reading ahead
/// changes nothing but time: requests still leave one after the other, and a
/// read ahead that is not used (the request before it failed, the content is
/// not in the mirror) is dropped and done again in turn.
struct Ahead {
    event_id: String,
    seq: i64,
    /// The file's size, counted against [`FURTHER_BYTES`].
    size: i64,
    /// The file's rendering, from its run (see [`Ahead::run`]): `None` when
    /// the mirror lacks the content; closed without one if the run panicked.
    made: tokio::sync::oneshot::Receiver<Option<Rendering>>,
}

/// What rendering an event's body gives.
type Rendering = Result<Prepared, payload::PayloadError>;

/// An event rendered, its first request signed too: the look-ahead then
/// leaves only the send on the lane's path. A chunked event's next chunk is
/// built and signed on a blocking worker while the one before is in flight.
struct Prepared {
    rendered: Arc<payload::Rendered>,
    /// The request signed ahead: its index, and its signature or the
    /// worker making it.
    ahead: Option<(usize, SignedAhead)>,
}

enum SignedAhead {
    Done(Signed),
    Running(tokio::task::JoinHandle<Signed>),
}

impl Prepared {
    fn new(rendered: payload::Rendered, event_id: &str, signer: &Signer) -> Self {
        let (webhook_id, body) = rendered.part(event_id, 0);
        let first = signer.sign(webhook_id, body);
        Self {
            rendered: Arc::new(rendered),
            ahead: Some((0, SignedAhead::Done(first))),
        }
    }

    /// Starts building and signing request `index` on a blocking worker.
    fn sign_ahead(&mut self, event_id: &str, index: usize, signer: &Signer) {
        let (rendered, event_id, signer) =
            (self.rendered.clone(), event_id.to_owned(), signer.clone());
        let task = tokio::task::spawn_blocking(move || {
            let (webhook_id, body) = rendered.part(&event_id, index);
            signer.sign(webhook_id, body)
        });
        self.ahead = Some((index, SignedAhead::Running(task)));
    }

    /// Request `index`, signed: the one signed ahead while it is fresh,
    /// else signed now (off the executor when big).
    async fn signed(&mut self, event_id: &str, index: usize, signer: &Signer) -> Signed {
        if let Some((ahead_index, ahead)) = self.ahead.take()
            && ahead_index == index
        {
            let signed = match ahead {
                SignedAhead::Done(signed) => Some(signed),
                SignedAhead::Running(task) => joined(task.await),
            };
            if let Some(signed) =
                signed.filter(|signed| now_ms() / 1000 - signed.timestamp <= SIGNED_AHEAD_FOR_S)
            {
                return signed;
            }
        }
        let (webhook_id, body) = self.rendered.part(event_id, index);
        if body.len() > BLOCKING_BYTES {
            let signer = signer.clone();
            blocking(move || signer.sign(webhook_id, body)).await
        } else {
            signer.sign(webhook_id, body)
        }
    }
}

/// A body signed ahead keeps its signature this long (seconds); one that
/// waited longer behind a slow request is signed again when it leaves, so
/// its timestamp tells when it was sent.
const SIGNED_AHEAD_FOR_S: i64 = 2;

/// The render stage's work on a created or updated file's bytes, run on the
/// blocking thread that reads them: the body, and its signature when it is
/// one request.
fn preparer(
    event: &event::Model,
    context: &LaneContext,
    chunking: payload::Chunking,
) -> impl Fn(&[u8]) -> Rendering + Send + Sync + 'static {
    let (event, repository, signer) = (
        event.clone(),
        context.repository.clone(),
        context.signer.clone(),
    );
    move |content: &[u8]| {
        payload::render(&event, &repository, Some(content), chunking)
            .map(|rendered| Prepared::new(rendered, &event.id, &signer))
    }
}

/// The files further down a batch, read and rendered ahead on blocking
/// workers, in `seq` order.
#[derive(Default)]
struct Further(VecDeque<Ahead>);

impl Further {
    /// Once no more than [`FURTHER_REFILL_AT`] files are held, starts (with
    /// `start`, as one run) the files among the next [`FURTHER_EVENTS`] of
    /// `upcoming` after those held, while the files held, with the one in
    /// flight (`in_flight` bytes), stay within [`FURTHER_BYTES`].
    fn start(
        &mut self,
        upcoming: &VecDeque<event::Model>,
        config: &DeliveryConfig,
        in_flight: i64,
        start: impl FnOnce(Vec<(&event::Model, i64)>) -> Vec<Ahead>,
    ) {
        if self.0.len() > FURTHER_REFILL_AT {
            return;
        }
        let mut held: i64 = in_flight + self.0.iter().map(|ahead| ahead.size).sum::<i64>();
        let after = self.0.back().map_or(i64::MIN, |last| last.seq);
        // One reading of the clock for the window (this runs for every webhook).
        let now = now_ms();
        let mut run = Vec::new();
        for event in upcoming.iter().take(FURTHER_EVENTS) {
            let Some(size) = readable_ahead(event, config, now) else {
                continue;
            };
            if event.seq <= after {
                continue;
            }
            if held + size > FURTHER_BYTES {
                break;
            }
            held += size;
            run.push((event, size));
        }
        if !run.is_empty() {
            self.0.extend(start(run));
        }
    }

    /// Whether `event` is being read ahead here.
    #[cfg(test)]
    fn holds(&self, event: &event::Model) -> bool {
        self.0.iter().any(|ahead| ahead.event_id == event.id)
    }

    /// The look-ahead of `event`, if it is held; those of events before it
    /// (passed over) are dropped.
    fn take_for(&mut self, event: &event::Model) -> Option<Ahead> {
        while self.0.front().is_some_and(|ahead| ahead.seq < event.seq) {
            self.0.pop_front();
        }
        self.0
            .front()
            .is_some_and(|ahead| ahead.event_id == event.id)
            .then(|| self.0.pop_front())
            .flatten()
    }
}

/// Files up to this size are read and rendered ahead on the lane's own
/// thread, one while each request is in flight (see [`Interleaved`]);
/// larger ones on a blocking worker. Reading, rendering and signing such a
/// file takes tens of microseconds, less than the receiver takes to answer;
/// on a blocking worker it cost a thread wake-up, and on a 2-core machine
/// the worker ran beside the receiver and the lane, three busy threads on
/// two cores (reference workload, Zen 5, 11 alternated pairs: 0.85 of the
/// floor against 0.75 at the median, 107 µs of CPU a webhook against 115;
/// BENCHMARKS.md).
const INTERLEAVED_BYTES: i64 = 64 << 10;

/// What a created or updated file's bytes are rendered with (see
/// [`preparer`]).
type Prepare = Box<dyn Fn(&[u8]) -> Rendering + Send + Sync>;

/// One file's read and rendering, handed over through `send`.
struct Read {
    blob: Option<String>,
    prepare: Prepare,
    send: tokio::sync::oneshot::Sender<Option<Rendering>>,
}

impl Read {
    /// Reads the file from `mirror` and renders it, unless the lane no
    /// longer waits for it.
    fn make(self, mirror: &MirrorReader) {
        if !self.send.is_closed() {
            let _ = self
                .send
                .send(mirror.read_now(self.blob.as_deref(), &*self.prepare));
        }
    }
}

/// A queued [`Read`] of event `seq`.
struct QueuedRead {
    seq: i64,
    read: Read,
}

/// Small files' reads queued on the lane, in `seq` order: each request the
/// lane sends takes the next one along and makes it once the request has
/// left, while the receiver works (the request's future is polled first).
/// Dropped with the lane, they are never made; a look-ahead whose read was
/// not made yet is made when the lane comes to it ([`Self::run_through`]).
#[derive(Default)]
struct Interleaved(VecDeque<QueuedRead>);

impl Interleaved {
    fn push(&mut self, seq: i64, read: Read) {
        self.0.push_back(QueuedRead { seq, read });
    }

    /// The next read to make beside a request.
    fn next(&mut self) -> Option<Read> {
        self.0.pop_front().map(|queued| queued.read)
    }

    /// Makes, now, from `mirror`, every read queued for events up to `seq`:
    /// the lane is about to wait for event `seq`'s, and those before it are
    /// passed over (let go, they cost nothing).
    fn run_through(&mut self, seq: i64, mirror: &MirrorReader) {
        while self.0.front().is_some_and(|queued| queued.seq <= seq) {
            if let Some(queued) = self.0.pop_front() {
                queued.read.make(mirror);
            }
        }
    }
}

/// The size of `event`'s file when it may be read ahead now: the event is
/// due at `now`, sends content, and the file is at most [`AHEAD_BYTES`].
fn readable_ahead(event: &event::Model, config: &DeliveryConfig, now: i64) -> Option<i64> {
    let size = event.size?;
    let due = event.status != entity::EventStatus::Dead && event.next_attempt_at <= now;
    (due && event.kind.carries_content()
        && !payload::too_large(event, config.max_file_bytes)
        && size <= AHEAD_BYTES)
        .then_some(size)
}

impl Ahead {
    /// Reads and renders `events` (with their sizes). Files up to
    /// [`INTERLEAVED_BYTES`] are queued on `interleaved`, to be made on the
    /// lane's own thread one per request in flight; the others are made one
    /// after the other, in order, on one blocking worker: one thread wake-up
    /// for the run, not one per file. Each file's rendering is handed over
    /// as soon as it is made; one the lane no longer waits for is not made.
    fn run(
        context: &LaneContext,
        events: Vec<(&event::Model, i64)>,
        config: &DeliveryConfig,
        interleaved: &mut Interleaved,
    ) -> Vec<Self> {
        let mut reads = Vec::with_capacity(events.len());
        let aheads = events
            .into_iter()
            .map(|(event, size)| {
                let (send, made) = tokio::sync::oneshot::channel();
                let prepare = preparer(event, context, config.chunking);
                let read = Read {
                    blob: event.blob_id.clone(),
                    prepare: Box::new(prepare),
                    send,
                };
                if size <= INTERLEAVED_BYTES {
                    interleaved.push(event.seq, read);
                } else {
                    reads.push(read);
                }
                Self {
                    event_id: event.id.clone(),
                    seq: event.seq,
                    size,
                    made,
                }
            })
            .collect();
        if !reads.is_empty() {
            let mirror = context.mirror_ahead.clone();
            // Detached: the run ends on its own, sooner when its reads are
            // let go.
            drop(tokio::task::spawn_blocking(move || {
                for read in reads {
                    read.make(&mirror);
                }
            }));
        }
        aheads
    }

    /// The body rendered ahead for `event`, if this look-ahead was for it.
    /// A run that panicked rendered nothing: the event is then rendered in
    /// turn, where the panic is the lane's.
    async fn rendered_for(self, event: &event::Model) -> Option<Rendering> {
        if self.event_id != event.id {
            return None;
        }
        self.made.await.ok().flatten()
    }
}

/// Successful deliveries are written a batch at a time: one transaction per
/// [`FLUSH_EVERY`] events (or [`FLUSH_AFTER`]) instead of one per event.
/// Events delivered but not yet written when Herald dies are delivered again
/// after the restart, with the same `webhook-id` (at least once, as
/// promised); every other outcome is written before the lane goes on.
const FLUSH_EVERY: usize = BATCH as usize;
/// Events read per batch. Each batch costs its reads (the app, the
/// subscription, the repository, the events) and a written flush, on the
/// lane's one-at-a-time path (reference workload: 1,889 webhooks/s at 64 a
/// batch, 1,990/s at 256).
const BATCH: u64 = 256;
/// Notifications (`sync_failed`, `synced`) are best effort: after this many
/// failed attempts they are skipped, so file events behind them do not wait
/// out a long backoff.
const NOTIFICATION_MAX_ATTEMPTS: u32 = 3;
const FLUSH_AFTER: Duration = Duration::from_millis(250);

#[derive(Default)]
struct Unrecorded {
    /// The last (or only) parts' attempts: their events are delivered.
    attempts: Vec<Attempt>,
    /// The attempts of chunks before a file's last, for its history.
    parts: Vec<Attempt>,
    since: Option<Instant>,
}

/// One request as it went out, for the record stage.
struct Sent {
    attempted_at: i64,
    /// The chunk's index, when the event is chunked.
    chunk_index: Option<i32>,
    /// The event's last (or only) part.
    last: bool,
    /// Sent as the breaker's probe: a failure does not use up an attempt.
    probe: bool,
}

/// What the endpoint's answer means for the event, and for its breaker.
#[derive(Debug, PartialEq, Eq)]
enum Judgement {
    /// A 2xx.
    Delivered,
    /// 410 Gone: the app asked for no more; its endpoint works.
    Gone,
    /// 429 or 503 with `Retry-After`: wait as asked (capped), without using
    /// an attempt; it tells nothing of the endpoint's health.
    Throttled(Duration),
    /// A failed attempt. `endpoint_down` (no answer, or a 5xx) counts
    /// against the breaker; other answers show the endpoint is up.
    Failed {
        class: &'static str,
        error: String,
        endpoint_down: bool,
    },
    /// Nothing was sent: the configuration forbids the endpoint's URL (an
    /// `http://` base URL stored under a more permissive configuration). Not
    /// the endpoint's failure, nor the event's: it waits, with the reason
    /// as its `last_error`.
    Refused(String),
}

/// How long an event whose endpoint the configuration forbids waits before
/// the lane looks again (its app may have changed its base URL meanwhile).
const REFUSED_WAIT: Duration = Duration::from_secs(60);

/// The *judge* part of the record stage: a pure function of the answer.
fn judge(answer: &Result<Answer, NoAnswer>, retry_after_cap: Duration) -> Judgement {
    match answer {
        Ok(answer) if (200..300).contains(&answer.status) => Judgement::Delivered,
        Ok(answer) if answer.status == 410 => Judgement::Gone,
        Ok(Answer {
            status: 429 | 503,
            retry_after: Some(wait),
            ..
        }) => Judgement::Throttled((*wait).min(retry_after_cap)),
        Ok(answer) => Judgement::Failed {
            class: if (300..400).contains(&answer.status) {
                "redirect"
            } else {
                "http_status"
            },
            error: format!("the endpoint answered {}", answer.status),
            endpoint_down: answer.status >= 500 && answer.retry_after.is_none(),
        },
        Err(no_answer) if no_answer.refused_by_policy() => {
            Judgement::Refused(no_answer.message.clone())
        }
        Err(no_answer) => Judgement::Failed {
            class: no_answer.class,
            error: no_answer.message.clone(),
            endpoint_down: true,
        },
    }
}

impl BatchReads {
    async fn context(&self) -> Result<Option<LaneContext>, StoreError> {
        let Some(app) = self.store.app(&self.app_id).await? else {
            return Ok(None);
        };
        if app.status != entity::AppStatus::Active {
            return Ok(None);
        }
        let Some(subscription) = self.store.subscription(self.subscription.as_str()).await? else {
            return Ok(None);
        };
        let Some(repository) = self
            .store
            .repository_row(&subscription.repository_id)
            .await?
        else {
            return Ok(None);
        };
        // During a key rotation both keys sign; the Docora header, which
        // holds one signature, uses the current key.
        let signer = Signer {
            app_id: self.app_id.clone(),
            keys: self
                .store
                .signing_keys(&app, now_ms())?
                .iter()
                .map(|key| key.expose_secret().as_bytes().to_vec())
                .collect::<Vec<_>>()
                .into(),
        };
        let backoff = Backoff::of_app(&app, self.config.backoff);
        let mirror_path = self
            .config
            .mirrors_dir
            .join(format!("{}.git", repository.id));
        Ok(Some(LaneContext {
            base_url: app.base_url.clone(),
            signer,
            repository: RepositoryRef {
                repository_id: repository.id.clone(),
                github_url: repository.url.clone(),
                owner: repository.owner.clone(),
                name: repository.name.clone(),
            },
            mirror_ahead: self
                .mirror_ahead
                .get_or_init(|| MirrorReader::new(mirror_path.clone()))
                .clone(),
            content: Content {
                mirror: self
                    .mirror
                    .get_or_init(|| MirrorReader::new(mirror_path))
                    .clone(),
                remote: RemoteSpec {
                    url: repository.fetch_url.clone(),
                    // This subscription's own credential: content comes back
                    // only to a subscriber that can read it.
                    credentials: self
                        .store
                        .git_token(&subscription)?
                        .as_ref()
                        .map(Credentials::from_token),
                    timeout: self.config.fetch_timeout,
                    low_speed: self.config.low_speed,
                    rule: self.config.connect.clone(),
                },
                branch: repository
                    .resolved_branch
                    .clone()
                    .or_else(|| Some(repository.branch.clone()))
                    .filter(|b| !b.is_empty()),
                pool: self.pool.clone(),
            },
            backoff,
        }))
    }

    /// The events after `after_seq` and the context they are delivered in;
    /// `None` when the app is gone or disabled, or the subscription gone.
    async fn read_batch(&self, after_seq: i64) -> Result<Option<Batch>, StoreError> {
        let Some(context) = self.context().await? else {
            return Ok(None);
        };
        let events = self
            .store
            .next_events(self.subscription.as_str(), after_seq, BATCH)
            .await?;
        Ok(Some(Batch { context, events }))
    }
}

impl Lane {
    /// Starts reading the batch after `after_seq` beside the lane, on a
    /// blocking thread (decoding a batch's rows would hold a runtime worker
    /// for milliseconds), unless a read is under way.
    fn read_next(&mut self, after_seq: i64) {
        if self.reading.is_none() {
            let reads = self.reads.clone();
            self.reading = Some(NextBatch {
                after_seq,
                read: Pending::spawn_on_blocking_thread(async move {
                    reads.read_batch(after_seq).await
                }),
            });
        }
    }

    /// The batch after `after_seq`: the one read ahead when it is that one,
    /// else read now.
    async fn batch_after(&mut self, after_seq: i64) -> Result<Option<Batch>, StoreError> {
        if let Some(next) = self.reading.take()
            && next.after_seq == after_seq
            && let Some(read) = next.read.wait().await
        {
            return read;
        }
        self.reads.read_batch(after_seq).await
    }

    /// Queues a delivered event's successful attempt for [`Lane::flush`].
    fn delivered(&mut self, attempt: Attempt) {
        self.delivered.since.get_or_insert_with(Instant::now);
        self.delivered.attempts.push(attempt);
    }

    /// Queues the successful attempt of a chunk before a file's last, for
    /// the event's history.
    fn delivered_part(&mut self, attempt: Attempt) {
        self.delivered.since.get_or_insert_with(Instant::now);
        self.delivered.parts.push(attempt);
    }

    fn flush_due(&self) -> bool {
        self.delivered.attempts.len() + self.delivered.parts.len() >= FLUSH_EVERY
            || self
                .delivered
                .since
                .is_some_and(|t| t.elapsed() >= FLUSH_AFTER)
    }

    /// Writes the queued deliveries in one transaction, after the write
    /// under way.
    async fn flush(&mut self) -> Result<(), StoreError> {
        self.written().await?;
        let (attempts, parts) = self.take_queued();
        self.store
            .record_deliveries(self.subscription.as_str(), &self.lease, attempts, parts)
            .await
    }

    /// Hands the queued deliveries to a write beside the lane, on a blocking
    /// thread (building its statements would hold a runtime worker for
    /// milliseconds), when they are due and no write is under way. A write
    /// that ended is looked at first: one that found the lease lost ends the
    /// lane here, before its next send.
    async fn write_behind(&mut self) -> Result<(), StoreError> {
        if self.writing.as_ref().is_some_and(Pending::is_finished) {
            self.written().await?;
        }
        if self.writing.is_none() && self.flush_due() {
            let (attempts, parts) = self.take_queued();
            let (store, subscription, lease) = (
                self.store.clone(),
                self.subscription.clone(),
                self.lease.clone(),
            );
            self.writing = Some(Pending::spawn_on_blocking_thread(async move {
                store
                    .record_deliveries(subscription.as_str(), &lease, attempts, parts)
                    .await
            }));
        }
        Ok(())
    }

    /// Waits for the write under way, if any, and gives its result.
    async fn written(&mut self) -> Result<(), StoreError> {
        let Some(writing) = self.writing.take() else {
            return Ok(());
        };
        writing.wait().await.unwrap_or_else(|| {
            Err(StoreError::Db(sea_orm::DbErr::Custom(
                "the runtime stopped while delivered events were being recorded".to_owned(),
            )))
        })
    }

    /// The queued deliveries and chunks' attempts, taken to be written.
    fn take_queued(&mut self) -> (Vec<Attempt>, Vec<Attempt>) {
        self.delivered.since = None;
        (
            std::mem::take(&mut self.delivered.attempts),
            std::mem::take(&mut self.delivered.parts),
        )
    }

    /// Renews the delivery lease once a third of it has passed; `false` when
    /// it was lost (another owner took the subscription over).
    async fn renew_lease(&mut self) -> Result<bool, StoreError> {
        let ttl = lease_ttl(&self.config);
        let now = now_ms();
        if now - self.renewed_at < ttl / 3 {
            return Ok(true);
        }
        self.renewed_at = now;
        self.store
            .renew_delivery(&self.subscription, &self.lease, ttl)
            .await
    }

    /// Delivers `event`; `upcoming`: the rest of its batch, in order.
    async fn deliver_event(
        &mut self,
        context: &LaneContext,
        event: &event::Model,
        upcoming: &VecDeque<event::Model>,
    ) -> Result<Flow, StoreError> {
        let permit = if self.breaker_clear.load(Ordering::Acquire) {
            Ok(Permit::Proceed)
        } else {
            ractor::call_t!(self.breaker, BreakerMsg::Ask, BREAKER_CALL_MS)
        };
        let Ok(permit) = permit else {
            // The breaker is restarting with its app actor: try again soon.
            return Ok(Flow::Stop(Some(now_ms() + 1_000)));
        };
        let probe = match permit {
            Permit::WaitUntil(until) => return Ok(Flow::Stop(Some(until))),
            Permit::Probe => true,
            Permit::Proceed => false,
        };
        let flow = self.send_event(context, event, upcoming, probe).await;
        if probe && !matches!(flow, Ok(Flow::Next)) {
            // A probe that ended before an answer told nothing: let another go.
            let _ = self.breaker.cast(BreakerMsg::Inconclusive);
        }
        flow
    }

    /// The render stage: the event's content (from the mirror, or fetched
    /// again from the remote), and its
    /// body (or chunks). `Err` carries the flow of an event given up on.
    async fn render(
        &mut self,
        context: &LaneContext,
        event: &event::Model,
    ) -> Result<Result<Prepared, Flow>, StoreError> {
        // Its read may still be queued: it is made now, not waited for.
        self.interleaved
            .run_through(event.seq, &context.mirror_ahead);
        let ahead = match self.further.take_for(event) {
            Some(ahead) => ahead.rendered_for(event).await,
            None => None,
        };
        let prepare =
            |rendered: payload::Rendered| Prepared::new(rendered, &event.id, &context.signer);
        let rendered = if let Some(rendered) = ahead {
            rendered
        } else if payload::too_large(event, self.config.max_file_bytes) {
            payload::render_too_large(event, &context.repository).map(prepare)
        } else if event.kind.carries_content() {
            // Read and rendered (base64, JSON) on a blocking thread, from the
            // bytes libgit2 holds: a big file is never copied first.
            let render = preparer(event, context, self.config.chunking);
            match context.content.with(event, render).await {
                Found::Made(rendered) => rendered,
                Found::Gone(error) => {
                    return self.give_up(event, "content_missing", error).await.map(Err);
                }
                Found::Unavailable(error) => {
                    // Not the event's fault, nor the app's: wait for the
                    // remote without using up attempts.
                    let attempts = u32::try_from(event.attempts).unwrap_or(0);
                    let at =
                        now_ms() + millis(context.backoff.delay(attempts).max(CONTENT_RETRY_MIN));
                    let attempt = attempt_row(
                        event,
                        None,
                        now_ms(),
                        None,
                        0,
                        Some("content_unavailable"),
                        None,
                    );
                    warn!(event = %event.id, %error, "content unavailable; retrying");
                    return self
                        .stop(
                            event,
                            attempt,
                            EventOutcome::Retry {
                                at,
                                error,
                                counted: false,
                            },
                        )
                        .await
                        .map(Err);
                }
            }
        } else {
            payload::render(event, &context.repository, None, self.config.chunking).map(prepare)
        };
        match rendered {
            Ok(rendered) => Ok(Ok(rendered)),
            Err(err) => self
                .give_up(event, "payload", err.to_string())
                .await
                .map(Err),
        }
    }

    /// Render, then for each part (one, or every chunk from the first):
    /// sign, send, record. Before a request goes out the lane starts what
    /// does not depend on its answer, to run beside it: the files after it
    /// read and rendered ahead (see [`Further`]), the deliveries queued so
    /// far written and, near a batch's end, the next batch read.
    async fn send_event(
        &mut self,
        context: &LaneContext,
        event: &event::Model,
        upcoming: &VecDeque<event::Model>,
        probe: bool,
    ) -> Result<Flow, StoreError> {
        let mut prepared = match self.render(context, event).await? {
            Ok(prepared) => prepared,
            Err(flow) => return Ok(flow),
        };
        let endpoint = prepared.rendered.endpoint;
        let (parts, chunked) = (prepared.rendered.len(), prepared.rendered.is_chunked());
        // Every attempt of a chunked event sends the whole file from chunk 0,
        // with the same chunk id and webhook ids: a receiver that lost its
        // partial state gets the file, one that kept it overwrites the same
        // parts (as Docora resends the whole file).
        for index in 0..parts {
            // A long chunked file keeps the lease alive between chunks.
            if index > 0 && !self.renew_lease().await? {
                return Ok(Flow::Stop(None));
            }
            // One span per request, in the trace of the scan that found the
            // change; for OpenTelemetry only, and only built when exported
            // (`telemetry::TRACE_ONLY_SPANS`).
            let span = tracing::info_span!(
                parent: None,
                telemetry::DELIVERY_ATTEMPT_SPAN,
                "otel.kind" = "client",
                event = %event.id,
                app = %self.app_id,
                subscription = %event.subscription_id,
                kind = %event.kind,
                chunk = index,
            );
            telemetry::continue_trace(&span, event.trace_parent.as_deref());
            let Signed {
                body, mut headers, ..
            } = prepared.signed(&event.id, index, &context.signer).await;
            if index + 1 < parts {
                prepared.sign_ahead(&event.id, index + 1, &context.signer);
            }
            headers.insert(
                "traceparent",
                header(&telemetry::outgoing_traceparent(
                    &span,
                    event.trace_parent.as_deref(),
                )),
            );
            let sent = Sent {
                attempted_at: now_ms(),
                chunk_index: chunked.then(|| i32::try_from(index).unwrap_or(i32::MAX)),
                last: index + 1 == parts,
                probe,
            };
            if sent.last {
                let config = &self.config;
                let in_flight = event.size.unwrap_or(0);
                let interleaved = &mut self.interleaved;
                self.further.start(upcoming, config, in_flight, |run| {
                    Ahead::run(context, run, config, interleaved)
                });
            }
            // A lane that finds its lease lost stops before its next send.
            self.write_behind().await?;
            // The request is not instrumented with the span: nothing inside
            // it logs, and entering and leaving the span at each of its polls
            // cost more than the rest of the attempt's telemetry (the span's
            // duration runs from its creation to its close all the same).
            let endpoint = self
                .endpoints
                .get(&self.client, &context.base_url, endpoint);
            // The request is polled first: it leaves, and one small file
            // ahead is read and rendered while the receiver works on it.
            let (read, mirror) = (self.interleaved.next(), &context.mirror_ahead);
            let (answer, ()) =
                futures::join!(self.client.post_to(endpoint, headers, body), async move {
                    if let Some(read) = read {
                        read.make(mirror);
                    }
                });
            if let Ok(answer) = &answer {
                telemetry::answered(&span, answer.status);
            }
            if let Flow::Stop(at) = self.record(context, event, &sent, answer, &span).await? {
                return Ok(Flow::Stop(at));
            }
        }
        Ok(Flow::Next)
    }

    /// The record stage: judges the answer, tells the breaker, writes the
    /// attempt and the event's outcome. `Next` goes on with the next part.
    async fn record(
        &mut self,
        context: &LaneContext,
        event: &event::Model,
        sent: &Sent,
        answer: Result<Answer, NoAnswer>,
        span: &tracing::Span,
    ) -> Result<Flow, StoreError> {
        let judgement = judge(&answer, self.config.retry_after_cap);
        let (status, latency, excerpt) = match &answer {
            Ok(answer) => (
                Some(answer.status),
                answer.latency,
                Some(answer.excerpt.clone()),
            ),
            Err(no_answer) => (None, no_answer.latency, None),
        };
        let attempt = |class: Option<&str>| {
            attempt_row(
                event,
                sent.chunk_index,
                sent.attempted_at,
                status,
                millis(latency),
                class,
                excerpt.clone(),
            )
        };
        let (outcome, label, class) = match judgement {
            Judgement::Delivered => {
                self.metrics
                    .attempt(span, delivery_outcome::DELIVERED, Some(latency));
                self.breaker_success().await?;
                if sent.last && event.status == entity::EventStatus::Dead {
                    // A dead event's probe got through: written at once, as
                    // its subscription resumes.
                    self.store
                        .record_attempt(&self.lease, event, attempt(None), EventOutcome::Delivered)
                        .await?;
                    info!(event = %event.id, subscription = %event.subscription_id, "dead event delivered by its probe; its subscription resumes");
                } else if sent.last {
                    self.delivered(attempt(None));
                } else {
                    // The chunk's attempt, for the event's history, is
                    // written with the deliveries: a lost lease still stops
                    // the lane before its next send (see `write_behind`),
                    // and a file cut short by a restart is sent again whole.
                    self.delivered_part(attempt(None));
                }
                return Ok(Flow::Next);
            }
            Judgement::Gone => {
                self.breaker_success().await?;
                let outcome = EventOutcome::Paused {
                    error: "the endpoint answered 410 Gone; the subscription is paused".into(),
                };
                (outcome, delivery_outcome::GONE, "http_status")
            }
            Judgement::Throttled(wait) => {
                let _ = self.breaker.cast(BreakerMsg::Inconclusive);
                let outcome = EventOutcome::Retry {
                    at: now_ms() + millis(wait),
                    error: format!(
                        "the endpoint answered {}",
                        status.map_or_else(String::new, |s| s.to_string())
                    ),
                    counted: false,
                };
                (outcome, delivery_outcome::RATE_LIMITED, "http_status")
            }
            Judgement::Refused(error) => {
                // No attempt was made: none is recorded, none is counted,
                // and the breaker is not told.
                self.flush().await?;
                let at = now_ms() + millis(REFUSED_WAIT);
                warn!(app = %self.app_id, subscription = %event.subscription_id, %error, "webhook not sent");
                self.store
                    .hold_refused(&self.lease, event, at, &error)
                    .await?;
                return Ok(Flow::Stop(Some(at)));
            }
            Judgement::Failed {
                class,
                ref error,
                endpoint_down,
            } => {
                if endpoint_down {
                    self.breaker_failure(class, error).await?;
                } else {
                    self.breaker_success().await?;
                }
                let outcome = self
                    .failure_outcome(context, event, error.clone(), sent.probe)
                    .await;
                let label = match outcome {
                    EventOutcome::Dead { .. } => delivery_outcome::DEAD,
                    _ => delivery_outcome::FAILED,
                };
                (outcome, label, class)
            }
        };
        self.metrics.attempt(span, label, Some(latency));
        self.stop(event, attempt(Some(class)), outcome).await
    }

    async fn give_up(
        &mut self,
        event: &event::Model,
        class: &str,
        error: String,
    ) -> Result<Flow, StoreError> {
        let attempt = attempt_row(event, None, now_ms(), None, 0, Some(class), None);
        self.metrics
            .attempt(&tracing::Span::none(), delivery_outcome::DEAD, None);
        self.stop(event, attempt, EventOutcome::Dead { error })
            .await
    }

    async fn stop(
        &mut self,
        event: &event::Model,
        attempt: Attempt,
        outcome: EventOutcome,
    ) -> Result<Flow, StoreError> {
        // A dead event's probe that did not get through, for whatever
        // reason, leaves it dead until the next probe.
        let outcome = match outcome {
            EventOutcome::Retry { error, .. } if event.status == entity::EventStatus::Dead => {
                EventOutcome::Dead { error }
            }
            outcome => outcome,
        };
        let flow = match &outcome {
            EventOutcome::Retry { at, .. } => Flow::Stop(Some(*at)),
            EventOutcome::Skipped { .. } => Flow::Next,
            _ => Flow::Stop(None),
        };
        self.flush().await?;
        if let EventOutcome::Dead { error } = &outcome {
            if event.status == entity::EventStatus::Dead {
                warn!(event = %event.id, subscription = %event.subscription_id, %error, "dead event's probe failed; it is probed again after delivery.dead_retry_interval");
            } else {
                warn!(event = %event.id, subscription = %event.subscription_id, %error, "event is dead; its subscription waits behind it");
            }
        }
        self.store
            .record_attempt(&self.lease, event, attempt, outcome)
            .await?;
        Ok(flow)
    }

    /// Retry with backoff, or give up after `max_attempts`. A probe of an
    /// open breaker does not use up an attempt: the app is down, the event
    /// is not bad.
    async fn failure_outcome(
        &self,
        context: &LaneContext,
        event: &event::Model,
        error: String,
        probe: bool,
    ) -> EventOutcome {
        let counted = !probe;
        let attempts = u32::try_from(event.attempts).unwrap_or(0) + u32::from(counted);
        let max_attempts = if event.kind.is_notification() {
            self.config.max_attempts.min(NOTIFICATION_MAX_ATTEMPTS)
        } else {
            self.config.max_attempts
        };
        if counted && attempts >= max_attempts {
            return if event.kind.is_notification() {
                EventOutcome::Skipped { error }
            } else {
                EventOutcome::Dead { error }
            };
        }
        let mut at = now_ms() + millis(context.backoff.delay(attempts.saturating_sub(1)));
        // An open breaker holds retries until its cooldown ends.
        if let Ok(Permit::WaitUntil(until)) =
            ractor::call_t!(self.breaker, BreakerMsg::Peek, BREAKER_CALL_MS)
        {
            at = at.max(until);
        }
        EventOutcome::Retry { at, error, counted }
    }

    async fn breaker_success(&self) -> Result<(), StoreError> {
        if self.breaker_clear.load(Ordering::Acquire) {
            // A success changes nothing in a clear breaker.
            return Ok(());
        }
        let reported = ractor::call_t!(self.breaker, BreakerMsg::Succeeded, BREAKER_CALL_MS);
        if let Ok(Reported {
            change: Change::Closed,
            ..
        }) = reported
        {
            self.store.mark_app_health(&self.app_id, false, 0).await?;
            info!(app = %self.app_id, "endpoint answers again; breaker closed");
        }
        Ok(())
    }

    async fn breaker_failure(&self, class: &str, error: &str) -> Result<(), StoreError> {
        let reported = ractor::call_t!(
            self.breaker,
            |reply| BreakerMsg::Failed {
                class: class.to_owned(),
                error: error.to_owned(),
                reply,
            },
            BREAKER_CALL_MS
        );
        let Ok(reported) = reported else {
            return Ok(());
        };
        if reported.change == Change::Opened {
            warn!(app = %self.app_id, class, "endpoint failing; breaker open");
        }
        if reported.open
            && self
                .store
                .mark_app_health(&self.app_id, true, millis(self.config.disable_after))
                .await?
        {
            warn!(app = %self.app_id, "endpoint failed for longer than delivery.disable_after; app disabled");
        }
        Ok(())
    }
}

/// The signing stage: an app's keys, and the headers they sign a body with.
#[derive(Clone)]
struct Signer {
    app_id: String,
    keys: Arc<[Vec<u8>]>,
}

/// A request's body with its signed headers (all but `traceparent`, which
/// belongs to the attempt's span and is not signed).
struct Signed {
    body: bytes::Bytes,
    timestamp: i64,
    headers: HeaderMap,
}

impl Signer {
    fn sign(&self, webhook_id: String, body: bytes::Bytes) -> Signed {
        let timestamp = now_ms() / 1000;
        let headers = signed_headers(&self.app_id, &self.keys, &webhook_id, timestamp, &body);
        Signed {
            body,
            timestamp,
            headers,
        }
    }
}

/// A webhook's headers, both signature styles over the exact body (Docora's
/// with the current key; Standard Webhooks' with every key that signs,
/// during a rotation the previous one too).
fn signed_headers(
    app_id: &str,
    keys: &[Vec<u8>],
    webhook_id: &str,
    timestamp: i64,
    body: &[u8],
) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert("content-type", header("application/json"));
    headers.insert("x-docora-app-id", header(app_id));
    headers.insert("x-docora-timestamp", header(&timestamp.to_string()));
    headers.insert(
        "x-docora-signature",
        header(&signing::docora(&keys[0], timestamp, body)),
    );
    let keys: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
    headers.insert("webhook-id", header(webhook_id));
    headers.insert("webhook-timestamp", header(&timestamp.to_string()));
    headers.insert(
        "webhook-signature",
        header(&signing::standard(&keys, webhook_id, timestamp, body)),
    );
    headers
}

fn attempt_row(
    event: &event::Model,
    chunk_index: Option<i32>,
    attempted_at: i64,
    status_code: Option<u16>,
    latency_ms: i64,
    error_class: Option<&str>,
    excerpt: Option<String>,
) -> Attempt {
    Attempt {
        event_id: event.id.clone(),
        chunk_index,
        attempted_at,
        status_code: status_code.map(i32::from),
        latency_ms,
        error_class: error_class.map(str::to_owned),
        response_excerpt: excerpt.filter(|e| !e.is_empty()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_apps_urls_are_parsed_once_and_again_when_its_base_url_changes() {
        let client = WebhookClient::new(Duration::from_secs(2), false);
        let mut endpoints = Endpoints::default();
        let refused = async |endpoints: &mut Endpoints, base: &str| {
            let endpoint = endpoints.get(&client, base, "create");
            client
                .post_to(endpoint, HeaderMap::new(), Vec::new())
                .await
                .expect_err("no request goes out")
                .class
        };
        // An address in the URL is refused when the URL is parsed.
        assert_eq!(refused(&mut endpoints, "http://127.0.0.1:9/").await, "ssrf");
        assert_eq!(refused(&mut endpoints, "http://127.0.0.1:9/").await, "ssrf");
        endpoints.get(&client, "http://127.0.0.1:9/", "delete");
        assert_eq!(endpoints.parsed.len(), 2, "one parse per endpoint");
        // The app's base URL changed: its endpoints are parsed anew.
        assert_eq!(
            refused(&mut endpoints, "ftp://example.com").await,
            "request"
        );
        assert_eq!(endpoints.parsed.len(), 1);
        assert_eq!(refused(&mut endpoints, "http://127.0.0.1:9").await, "ssrf");
    }

    #[test]
    fn headers_carry_both_signatures_over_the_exact_body() {
        let keys = vec![
            b"current-key-0123456789".to_vec(),
            b"previous-key-0123456789".to_vec(),
        ];
        let body = br#"{"event":"create"}"#;
        let headers = signed_headers("app_1", &keys, "evt_1", 1_700_000_000, body);
        let value = |name: &str| headers[name].to_str().expect("ascii").to_owned();
        assert_eq!(value("x-docora-app-id"), "app_1");
        assert_eq!(value("x-docora-timestamp"), "1700000000");
        // Docora's style signs with the current key only.
        assert_eq!(
            value("x-docora-signature"),
            signing::docora(&keys[0], 1_700_000_000, body)
        );
        // Standard Webhooks' carries one signature per signing key.
        let standard = value("webhook-signature");
        assert_eq!(standard.split(' ').count(), 2, "{standard}");
        assert_eq!(
            standard,
            signing::standard(
                &[keys[0].as_slice(), keys[1].as_slice()],
                "evt_1",
                1_700_000_000,
                body
            )
        );
        assert_eq!(value("webhook-id"), "evt_1");
        assert_eq!(value("content-type"), "application/json");
    }

    /// Events of `sizes` (bytes), `seq` 1, 2, …, each carrying content.
    fn sized_events(sizes: &[i64]) -> VecDeque<event::Model> {
        sizes
            .iter()
            .zip(1..)
            .map(|(&size, seq)| event::Model {
                id: format!("evt_{seq}"),
                seq,
                size: Some(size),
                ..payload::tests::event(entity::EventKind::Created, true)
            })
            .collect()
    }

    /// A `start` for [`Further::start`] that records each run's `seq`s and
    /// reads nothing (each file's rendering is closed unmade).
    fn recorded(
        runs: &std::cell::RefCell<Vec<Vec<i64>>>,
    ) -> impl Fn(Vec<(&event::Model, i64)>) -> Vec<Ahead> {
        |run| {
            runs.borrow_mut()
                .push(run.iter().map(|(event, _)| event.seq).collect());
            run.into_iter()
                .map(|(event, size)| Ahead {
                    event_id: event.id.clone(),
                    seq: event.seq,
                    size,
                    made: tokio::sync::oneshot::channel().1,
                })
                .collect()
        }
    }

    #[test]
    fn files_further_ahead_are_started_within_their_budget_and_taken_in_order() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let config = DeliveryConfig::for_tests(dir.path());
        const KIB: i64 = 1 << 10;
        let upcoming = sized_events(&[
            KIB,       // started
            100 * KIB, // started
            3 << 20,   // started
            900 * KIB, // started: 4,073 KiB held
            900 * KIB, // over the budget: the window ends here
            200 * KIB,
            100 * KIB,
        ]);
        let mut further = Further::default();
        let runs = std::cell::RefCell::new(Vec::new());
        further.start(&upcoming, &config, 0, recorded(&runs));
        further.start(&upcoming, &config, 0, recorded(&runs));
        assert_eq!(
            *runs.borrow(),
            [vec![1, 2, 3, 4]],
            "each once, within 4 MiB"
        );
        assert!(further.holds(&upcoming[0]) && !further.holds(&upcoming[4]));

        // Events 1 to 3 were passed over (skipped): their reads are dropped
        // with 4's turn.
        let taken = further
            .take_for(&upcoming[3])
            .expect("event 4 was read ahead");
        assert_eq!(taken.event_id, "evt_4");
        for passed in upcoming.range(..3) {
            assert!(!further.holds(passed), "{}'s read is gone", passed.id);
        }
        assert!(further.take_for(&upcoming[5]).is_none(), "event 6 was not");

        // The file in flight counts: 3,900 KiB of it leaves no room.
        let rest: VecDeque<_> = upcoming.into_iter().skip(5).collect();
        further.start(&rest, &config, 3900 * KIB, recorded(&runs));
        assert_eq!(runs.borrow().len(), 1);
        // With room again, the window moves on.
        further.start(&rest, &config, 900 * KIB, recorded(&runs));
        assert_eq!(runs.borrow()[1], [6, 7]);
    }

    #[test]
    fn small_files_are_read_ahead_in_runs_refilled_at_half_the_window() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let config = DeliveryConfig::for_tests(dir.path());
        let batch = sized_events(&[4 << 10; 60]);
        let mut further = Further::default();
        let runs = std::cell::RefCell::new(Vec::new());
        let window = |from: usize| batch.iter().skip(from).cloned().collect::<VecDeque<_>>();

        // The first run fills the window: the next 32 events.
        further.start(&window(0), &config, 0, recorded(&runs));
        assert_eq!(*runs.borrow(), [(1..=32).collect::<Vec<_>>()]);
        // While more than half of it is held, sends start nothing.
        for sent in 1..=15 {
            assert!(further.take_for(&batch[sent - 1]).is_some());
            further.start(&window(sent), &config, 0, recorded(&runs));
            assert_eq!(runs.borrow().len(), 1, "after {sent} sent");
        }
        // At half, one run tops the window up again, after what is held.
        assert!(further.take_for(&batch[15]).is_some());
        further.start(&window(16), &config, 0, recorded(&runs));
        assert_eq!(runs.borrow()[1], (33..=48).collect::<Vec<_>>());
        assert!(further.holds(&batch[16]) && further.holds(&batch[47]));
    }

    #[test]
    fn interleaved_reads_are_made_in_order_and_only_while_awaited() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let repo = git2::Repository::init_bare(dir.path()).expect("a bare mirror");
        let blob = repo.blob(b"small file").expect("a blob").to_string();
        let mirror = MirrorReader::new(dir.path().to_owned());
        let made = Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut interleaved = Interleaved::default();
        let mut receivers = Vec::new();
        for seq in 1..=3 {
            let (send, receiver) = tokio::sync::oneshot::channel();
            let made = made.clone();
            let prepare = move |bytes: &[u8]| {
                made.lock().expect("lock").push((seq, bytes.to_vec()));
                Err(payload::PayloadError::Incomplete(format!("evt_{seq}")))
            };
            interleaved.push(
                seq,
                Read {
                    blob: Some(blob.clone()),
                    prepare: Box::new(prepare),
                    send,
                },
            );
            receivers.push(receiver);
        }
        let mut receivers = receivers.into_iter();
        // Event 1's look-ahead was let go (passed over): its read is not made.
        drop(receivers.next());
        let (mut second, mut third) = (
            receivers.next().expect("event 2"),
            receivers.next().expect("event 3"),
        );

        // The lane comes to event 2: reads up to it are made, not beyond.
        interleaved.run_through(2, &mirror);
        assert_eq!(
            *made.lock().expect("lock"),
            vec![(2, b"small file".to_vec())]
        );
        assert!(matches!(second.try_recv(), Ok(Some(Err(_)))));
        assert!(third.try_recv().is_err(), "event 3's read waits its turn");

        // The next request takes event 3's read along.
        interleaved.next().expect("event 3's read").make(&mirror);
        assert!(matches!(third.try_recv(), Ok(Some(Err(_)))));
        assert!(interleaved.next().is_none());
        assert_eq!(made.lock().expect("lock").len(), 2);
    }

    /// An app's signer with one key.
    fn test_signer() -> Signer {
        Signer {
            app_id: "app_1".into(),
            keys: vec![b"current-key-0123456789".to_vec()].into(),
        }
    }

    /// The first request of `prepared`, as it was signed ahead.
    fn signed_ahead(prepared: &mut Prepared) -> &mut Signed {
        match &mut prepared.ahead {
            Some((0, SignedAhead::Done(signed))) => signed,
            _ => panic!("the first request is signed ahead"),
        }
    }

    #[tokio::test]
    async fn each_chunk_is_signed_ahead_over_its_own_body() {
        let signer = test_signer();
        let event = payload::tests::event(entity::EventKind::Created, true);
        let repository = payload::tests::repository();
        let chunking = payload::Chunking {
            threshold_bytes: 1_000,
            chunk_chars: 1_000,
        };
        let content: Vec<u8> = (0..3_000u32).map(|i| (i % 251) as u8).collect();
        let rendered = payload::render(&event, &repository, Some(&content), chunking)
            .expect("a binary file renders");
        let expected: Vec<_> = (0..rendered.len())
            .map(|index| rendered.part(&event.id, index))
            .collect();
        assert_eq!(
            expected.len(),
            4,
            "4,000 base64 characters in chunks of 1,000"
        );

        let mut prepared = Prepared::new(rendered, &event.id, &signer);
        for (index, (webhook_id, body)) in expected.iter().enumerate() {
            let sent = prepared.signed(&event.id, index, &signer).await;
            if index + 1 < expected.len() {
                prepared.sign_ahead(&event.id, index + 1, &signer);
                assert!(
                    matches!(prepared.ahead, Some((next, _)) if next == index + 1),
                    "chunk {} is signed while chunk {index} is in flight",
                    index + 1
                );
            }
            assert_eq!(&sent.body, body, "chunk {index}");
            assert_eq!(sent.headers["webhook-id"], webhook_id.as_str());
            assert_eq!(
                sent.headers["webhook-signature"].to_str().expect("ascii"),
                signing::standard(&[&signer.keys[0][..]], webhook_id, sent.timestamp, body)
            );
        }
    }

    #[tokio::test]
    async fn a_body_signed_ahead_is_signed_again_when_it_waited_too_long() {
        let signer = test_signer();
        let event = payload::tests::event(entity::EventKind::Deleted, false);
        let repository = payload::tests::repository();
        let chunking = payload::Chunking {
            threshold_bytes: 1 << 20,
            chunk_chars: 1 << 20,
        };
        let prepare = || {
            let rendered =
                payload::render(&event, &repository, None, chunking).expect("a delete renders");
            Prepared::new(rendered, &event.id, &signer)
        };
        let signature = |signed: &Signed| signed.headers["webhook-signature"].clone();

        // Fresh, even at the limit: the request leaves exactly as it was
        // signed ahead (signed now, it would carry another timestamp).
        let mut fresh = prepare();
        let first = signed_ahead(&mut fresh);
        first.timestamp -= SIGNED_AHEAD_FOR_S;
        let (timestamp, ahead) = (first.timestamp, signature(first));
        let sent = fresh.signed(&event.id, 0, &signer).await;
        assert_eq!(sent.timestamp, timestamp);
        assert_eq!(signature(&sent), ahead);

        // Stale: signed again, with the time it leaves and over the same body.
        let mut stale = prepare();
        let first = signed_ahead(&mut stale);
        first.timestamp -= SIGNED_AHEAD_FOR_S + 1;
        let body = first.body.clone();
        let sent = stale.signed(&event.id, 0, &signer).await;
        assert!(now_ms() / 1000 - sent.timestamp <= 1, "{}", sent.timestamp);
        assert_eq!(sent.body, body);
        assert_eq!(
            sent.headers["webhook-signature"].to_str().expect("ascii"),
            signing::standard(&[&signer.keys[0][..]], &event.id, sent.timestamp, &body)
        );
        assert_eq!(
            sent.headers["webhook-timestamp"].to_str().expect("ascii"),
            sent.timestamp.to_string()
        );
    }

    fn answer(status: u16, retry_after: Option<u64>) -> Result<Answer, NoAnswer> {
        Ok(Answer {
            status,
            retry_after: retry_after.map(Duration::from_secs),
            excerpt: String::new(),
            latency: Duration::from_millis(3),
        })
    }

    #[test]
    fn answers_are_judged_as_the_contract_says() {
        let cap = Duration::from_secs(60);
        assert_eq!(judge(&answer(204, None), cap), Judgement::Delivered);
        assert_eq!(judge(&answer(410, None), cap), Judgement::Gone);
        assert_eq!(
            judge(&answer(429, Some(5)), cap),
            Judgement::Throttled(Duration::from_secs(5))
        );
        assert_eq!(
            judge(&answer(503, Some(600)), cap),
            Judgement::Throttled(cap),
            "a Retry-After is capped"
        );
        let failed = |status| match judge(&answer(status, None), cap) {
            Judgement::Failed {
                class,
                endpoint_down,
                ..
            } => (class, endpoint_down),
            other => panic!("{status}: {other:?}"),
        };
        assert_eq!(failed(500), ("http_status", true));
        assert_eq!(
            failed(503),
            ("http_status", true),
            "503 without Retry-After"
        );
        assert_eq!(failed(404), ("http_status", false), "the endpoint is up");
        assert_eq!(failed(302), ("redirect", false));
        let timeout = Err(NoAnswer {
            class: "timeout",
            message: "no answer within 5s".into(),
            latency: Duration::from_secs(5),
        });
        assert_eq!(
            judge(&timeout, cap),
            Judgement::Failed {
                class: "timeout",
                error: "no answer within 5s".into(),
                endpoint_down: true
            }
        );
    }
}
