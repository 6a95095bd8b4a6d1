//! Delivery: one actor per app drains that app's outbox, each subscription
//! strictly in `seq` order, subscriptions concurrently (at most
//! `max_in_flight` per app), apps independently. The dispatcher supervises
//! the app actors and wakes them when the outbox grows or retries fall due.
//!
//! A subscription is delivered by a *lane*: a task that holds the
//! subscription's delivery lease and sends its events one after the other;
//! when it stops (nothing left, a retry scheduled, a dead event) it reports
//! back to its app actor as a message.
//!
//! Each app's endpoint has a circuit breaker, a child actor of its app actor
//! and the single owner of its persisted state: lanes ask it before each
//! request and report how it went. An app that is down costs exactly one
//! probe per cooldown (the cooldown doubling with each failed probe),
//! however many lanes wait, and its events wait without using up their
//! attempts.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use entity::event;
use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};
use reqwest::header::HeaderMap;
use secrecy::ExposeSecret;
use tracing::{Instrument, debug, info, warn};

use crate::backoff::Backoff;
use crate::breaker::actor::{BreakerActor, BreakerArgs, BreakerMsg, Change, Reported};
use crate::breaker::{BreakerPolicy, DELIVERY_BREAKER, Permit};
use crate::clock::{millis, now_ms};
use crate::ids::SubscriptionId;
use crate::outbox_signal::OutboxSignal;
use crate::owned::OwnedTask;
use crate::payload::{self, Chunking, RepositoryRef};
use crate::restart::{RestartPolicy, RestartTracker};
use crate::signing;
use crate::store::delivery::{Attempt, EventOutcome};
use crate::store::leases::LeaseToken;
use crate::store::outbox::event_kind;
use crate::store::{Store, StoreError, event_status};
use crate::telemetry::{self, delivery_outcome};
use crate::webhook_client::{WebhookClient, header};

/// How long a lane waits for its breaker's answer (a local actor: this
/// only bounds a breaker stuck on the database).
const BREAKER_CALL_MS: u64 = 10_000;

/// Settings of the delivery engine.
#[derive(Debug, Clone)]
pub struct DeliveryConfig {
    pub timeout: Duration,
    pub max_attempts: u32,
    pub backoff: Backoff,
    /// Longest wait a `Retry-After` may impose.
    pub retry_after_cap: Duration,
    pub chunking: Chunking,
    pub breaker: BreakerPolicy,
    pub disable_after: Duration,
    pub max_in_flight_per_app: usize,
    pub attempt_retention: Duration,
    pub allow_private_targets: bool,
    pub mirrors_dir: PathBuf,
    /// How often due retries are looked for.
    pub tick: Duration,
    pub instance_id: String,
}

/// Messages of the dispatcher.
#[derive(Debug)]
pub enum DispatcherMsg {
    /// Look for apps with due events.
    Wake,
    /// Restart an app actor that failed.
    Restart(String),
}

pub struct Dispatcher;

pub struct DispatcherArgs {
    pub store: Store,
    pub config: DeliveryConfig,
    pub signal: OutboxSignal,
    pub restart: RestartPolicy,
}

pub struct DispatcherState {
    store: Store,
    config: DeliveryConfig,
    client: WebhookClient,
    apps: HashMap<String, ActorRef<AppMsg>>,
    /// The engine's restart policy, applied to each app actor.
    restart: RestartPolicy,
    restarts: HashMap<String, RestartTracker>,
    /// Background tasks stopped with the dispatcher (tick, signal bridge),
    /// also when it fails.
    tasks: Vec<tokio_util::task::AbortOnDropHandle<()>>,
    last_prune: Instant,
}

impl DispatcherState {
    async fn app(
        &mut self,
        myself: &ActorRef<DispatcherMsg>,
        app_id: &str,
    ) -> Result<ActorRef<AppMsg>, ActorProcessingErr> {
        if let Some(app) = self.apps.get(app_id) {
            return Ok(app.clone());
        }
        let args = AppArgs {
            app_id: app_id.to_owned(),
            store: self.store.clone(),
            config: self.config.clone(),
            client: self.client.clone(),
        };
        let (app, _) = Actor::spawn_linked(None, AppDelivery, args, myself.get_cell()).await?;
        self.apps.insert(app_id.to_owned(), app.clone());
        Ok(app)
    }
}

impl Actor for Dispatcher {
    type Msg = DispatcherMsg;
    type State = DispatcherState;
    type Arguments = DispatcherArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: DispatcherArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let client = WebhookClient::new(args.config.timeout, args.config.allow_private_targets);
        let ticker = myself.send_interval(args.config.tick, || DispatcherMsg::Wake);
        let signal = args.signal.clone();
        let bridge_target = myself.clone();
        let bridge = tokio::spawn(async move {
            loop {
                signal.notified().await;
                if bridge_target.send_message(DispatcherMsg::Wake).is_err() {
                    break;
                }
            }
        });
        myself.send_message(DispatcherMsg::Wake)?;
        Ok(DispatcherState {
            store: args.store,
            config: args.config,
            client,
            apps: HashMap::new(),
            restart: args.restart,
            restarts: HashMap::new(),
            tasks: vec![
                tokio_util::task::AbortOnDropHandle::new(ticker),
                tokio_util::task::AbortOnDropHandle::new(bridge),
            ],
            last_prune: Instant::now(),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            DispatcherMsg::Wake => {
                let due = match state.store.apps_with_due_events(now_ms(), 10_000).await {
                    Ok(due) => due,
                    Err(err) => {
                        warn!(error = %err, "could not look for due events");
                        return Ok(());
                    }
                };
                for app_id in due {
                    let app = state.app(&myself, &app_id).await?;
                    let _ = app.send_message(AppMsg::Drain);
                }
                if state.last_prune.elapsed() > Duration::from_secs(60) {
                    state.last_prune = Instant::now();
                    let before = now_ms() - millis(state.config.attempt_retention);
                    match state.store.prune_attempts(before).await {
                        Ok(0) => {}
                        Ok(n) => debug!(pruned = n, "old delivery attempts removed"),
                        Err(err) => warn!(error = %err, "could not prune delivery attempts"),
                    }
                }
            }
            DispatcherMsg::Restart(app_id) => {
                let app = state.app(&myself, &app_id).await?;
                let _ = app.send_message(AppMsg::Drain);
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
        let (cell, failed) = match event {
            SupervisionEvent::ActorFailed(cell, err) => (cell, Some(err.to_string())),
            SupervisionEvent::ActorTerminated(cell, _, _) => (cell, None),
            _ => return Ok(()),
        };
        let Some(app_id) = state
            .apps
            .iter()
            .find(|(_, a)| a.get_id() == cell.get_id())
            .map(|(id, _)| id.clone())
        else {
            return Ok(());
        };
        state.apps.remove(&app_id);
        if let Some(error) = failed {
            let policy = state.restart;
            match state
                .restarts
                .entry(app_id.clone())
                .or_default()
                .on_failure(&policy, Instant::now())
            {
                Some(delay) => {
                    warn!(app = %app_id, %error, ?delay, "delivery actor failed; restarting it");
                    myself.send_after(delay, move || DispatcherMsg::Restart(app_id));
                }
                None => {
                    // The budget is spent: the failure goes up to the root
                    // supervisor, whose own policy decides (and whose giving
                    // up ends the process).
                    tracing::error!(app = %app_id, %error, "delivery actor keeps failing; escalating");
                    return Err(format!("the delivery actor of {app_id} failed too often").into());
                }
            }
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        for task in state.tasks.drain(..) {
            task.abort();
        }
        for (_, app) in state.apps.drain() {
            let _ = app
                .stop_and_wait(Some("shutdown".into()), Some(Duration::from_secs(10)))
                .await;
        }
        Ok(())
    }
}

/// Messages of an app's delivery actor.
#[derive(Debug)]
pub enum AppMsg {
    /// Start lanes for the subscriptions that have due events.
    Drain,
    /// The breaker's cooldown is over: drain again.
    Wake,
    /// A lane stopped; `retry_at` says when its subscription is due again.
    LaneDone {
        subscription: String,
        retry_at: Option<i64>,
    },
}

pub struct AppDelivery;

pub struct AppArgs {
    pub app_id: String,
    pub store: Store,
    pub config: DeliveryConfig,
    pub client: WebhookClient,
}

pub struct AppState {
    args: AppArgs,
    /// The endpoint's breaker: a child of this actor.
    breaker: ActorRef<BreakerMsg>,
    lanes: HashSet<String>,
    /// A wake-up is already scheduled for the end of the breaker's cooldown.
    wake_scheduled: bool,
    /// Set on shutdown: no lane starts, and running lanes stop after their
    /// current request.
    stopping: Arc<std::sync::atomic::AtomicBool>,
    /// The running lanes: owned by this actor, aborted if it fails.
    handles: Vec<OwnedTask>,
}

impl Actor for AppDelivery {
    type Msg = AppMsg;
    type State = AppState;
    type Arguments = AppArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: AppArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let breaker_args = BreakerArgs {
            store: args.store.clone(),
            kind: DELIVERY_BREAKER,
            subject: args.app_id.clone(),
            policy: args.config.breaker,
            probe_timeout: args.config.timeout + Duration::from_secs(5),
        };
        let (breaker, _) =
            Actor::spawn_linked(None, BreakerActor, breaker_args, myself.get_cell()).await?;
        Ok(AppState {
            breaker,
            args,
            lanes: HashSet::new(),
            wake_scheduled: false,
            stopping: Arc::default(),
            handles: Vec::new(),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            AppMsg::Drain | AppMsg::Wake
                if state.stopping.load(std::sync::atomic::Ordering::Relaxed) => {}
            AppMsg::Wake => {
                state.wake_scheduled = false;
                myself.send_message(AppMsg::Drain)?;
            }
            AppMsg::Drain => {
                // An open breaker holds every lane of the app until its
                // cooldown ends: one wake-up then, not a loop until then.
                let permit = ractor::call_t!(state.breaker, BreakerMsg::Peek, BREAKER_CALL_MS)?;
                if let Permit::WaitUntil(until) = permit {
                    if !std::mem::replace(&mut state.wake_scheduled, true) {
                        let wait = Duration::from_millis(
                            u64::try_from((until - now_ms()).max(0)).unwrap_or(0),
                        );
                        myself.send_after(wait, || AppMsg::Wake);
                    }
                    return Ok(());
                }
                let free = state
                    .args
                    .config
                    .max_in_flight_per_app
                    .saturating_sub(state.lanes.len());
                if free == 0 {
                    return Ok(());
                }
                let due = state
                    .args
                    .store
                    .subscriptions_due(
                        &state.args.app_id,
                        now_ms(),
                        (free + state.lanes.len()) as u64,
                    )
                    .await?;
                let fresh: Vec<_> = due
                    .into_iter()
                    .filter(|s| !state.lanes.contains(&s.id))
                    .take(free)
                    .collect();
                for subscription in fresh {
                    let Some(id) = SubscriptionId::parse(&subscription.id) else {
                        continue;
                    };
                    let ttl = lease_ttl(&state.args.config);
                    let Some(lease) = state
                        .args
                        .store
                        .claim_delivery(&id, &state.args.config.instance_id, ttl)
                        .await?
                    else {
                        continue;
                    };
                    state.lanes.insert(subscription.id.clone());
                    let lane = Lane {
                        app_id: state.args.app_id.clone(),
                        subscription: id,
                        lease,
                        store: state.args.store.clone(),
                        config: state.args.config.clone(),
                        client: state.args.client.clone(),
                        breaker: state.breaker.clone(),
                        renewed_at: std::sync::atomic::AtomicI64::new(now_ms()),
                        delivered: std::sync::Mutex::default(),
                        stopping: state.stopping.clone(),
                    };
                    let reply = myself.clone();
                    state.handles.retain(|h| !h.is_finished());
                    let subscription = lane.subscription.as_str().to_owned();
                    state.handles.push(OwnedTask::spawn(lane.run(), move |result| {
                        // A lane that panicked is started again shortly: its
                        // events are still pending, its lease fences it off.
                        let retry_at = result.unwrap_or_else(|panic| {
                            tracing::error!(%subscription, %panic, "delivery lane panicked; restarting it");
                            Some(now_ms() + 1_000)
                        });
                        let _ = reply.send_message(AppMsg::LaneDone {
                            subscription,
                            retry_at,
                        });
                    }));
                }
            }
            AppMsg::LaneDone {
                subscription,
                retry_at,
            } => {
                state.lanes.remove(&subscription);
                if let Some(at) = retry_at {
                    let wait =
                        Duration::from_millis(u64::try_from((at - now_ms()).max(0)).unwrap_or(0));
                    myself.send_after(wait, || AppMsg::Drain);
                }
                myself.send_message(AppMsg::Drain)?;
            }
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        // Drain: each lane finishes its in-flight request, writes what it
        // delivered and releases its lease, all within the request timeout;
        // no new lane starts. A lane cut short leaves its event pending, to be
        // delivered again after the restart: nothing lost.
        state
            .stopping
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let deadline =
            tokio::time::Instant::now() + state.args.config.timeout + Duration::from_secs(1);
        for handle in state.handles.drain(..) {
            handle.finish_by(deadline).await;
        }
        // The lanes have reported: the breaker goes last.
        state.breaker.stop(Some("app actor stopping".to_owned()));
        Ok(())
    }
}

/// A delivery lease outlives one request; the lane renews it as it goes.
fn lease_ttl(config: &DeliveryConfig) -> i64 {
    millis(config.timeout).saturating_mul(2) + 10_000
}

/// How an event's delivery ended.
enum Flow {
    /// Delivered (or passed over): go on with the next event.
    Next,
    /// Stop the lane; the subscription is due again at this time (if any).
    Stop(Option<i64>),
}

/// Everything a lane needs, loaded once per lane.
struct LaneContext {
    base_url: String,
    keys: Vec<Vec<u8>>,
    repository: RepositoryRef,
    mirror: MirrorReader,
    backoff: Backoff,
}

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
    /// When the delivery lease was last claimed or renewed (unix ms).
    renewed_at: std::sync::atomic::AtomicI64,
    /// Delivered events whose success is not written yet (see [`Lane::flush`]).
    delivered: std::sync::Mutex<Unrecorded>,
    /// Shutdown: stop after the current request.
    stopping: Arc<std::sync::atomic::AtomicBool>,
}

/// Successful deliveries are written a batch at a time: one transaction per
/// [`FLUSH_EVERY`] events (or [`FLUSH_AFTER`]) instead of one per event.
/// Events delivered but not yet written when Herald dies are delivered again
/// after the restart, with the same `webhook-id` (at least once, as
/// promised); every other outcome is written before the lane goes on.
const FLUSH_EVERY: usize = 64;
/// Notifications (`sync_failed`, `synced`) are best effort: after this many
/// failed attempts they are skipped, so file events behind them do not wait
/// out a long backoff.
const NOTIFICATION_MAX_ATTEMPTS: u32 = 3;
const FLUSH_AFTER: Duration = Duration::from_millis(250);

#[derive(Default)]
struct Unrecorded {
    attempts: Vec<Attempt>,
    since: Option<Instant>,
}

impl Lane {
    /// Delivers the subscription's due events in order; returns when the
    /// subscription is due again, if it is.
    async fn run(self) -> Option<i64> {
        let mut result = self.deliver().await;
        if let Err(err) = self.flush().await {
            result = result.and(Err(err));
        }
        if let Err(err) = self
            .store
            .release_delivery(&self.subscription, &self.lease)
            .await
        {
            warn!(subscription = %self.subscription, error = %err, "could not release the delivery lease; it will expire");
        }
        match result {
            Ok(retry_at) => retry_at,
            Err(StoreError::Fenced(why)) => {
                // Another owner delivers this subscription now: this lane
                // stops and leaves it to them.
                warn!(subscription = %self.subscription, why, "lane fenced off; it stops");
                None
            }
            Err(err) => {
                warn!(subscription = %self.subscription, error = %err, "delivery interrupted; retrying shortly");
                Some(now_ms() + 1_000)
            }
        }
    }

    async fn context(&self) -> Result<Option<LaneContext>, StoreError> {
        let Some(app) = self.store.app(&self.app_id).await? else {
            return Ok(None);
        };
        if app.status != crate::store::app_status::ACTIVE {
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
        let keys = self
            .store
            .signing_keys(&app, now_ms())?
            .iter()
            .map(|key| key.expose_secret().as_bytes().to_vec())
            .collect();
        let backoff = Backoff::of_app(&app, self.config.backoff);
        Ok(Some(LaneContext {
            base_url: app.base_url.clone(),
            keys,
            repository: RepositoryRef {
                repository_id: repository.id.clone(),
                github_url: repository.url.clone(),
                owner: repository.owner.clone(),
                name: repository.name.clone(),
            },
            mirror: MirrorReader::new(
                self.config
                    .mirrors_dir
                    .join(format!("{}.git", repository.id)),
            ),
            backoff,
        }))
    }

    async fn deliver(&self) -> Result<Option<i64>, StoreError> {
        // The last `seq` handled: delivered, or passed over as skipped.
        let mut after_seq = i64::MIN;
        loop {
            // Read again for every batch: a rotated key or a new base_url
            // applies within one batch, and a disabled app stops its lanes.
            let Some(context) = self.context().await? else {
                return Ok(None);
            };
            let batch = self
                .store
                .next_events(self.subscription.as_str(), after_seq, 64)
                .await?;
            if batch.is_empty() {
                self.store
                    .settle_subscription(self.subscription.as_str(), &self.lease)
                    .await?;
                return Ok(None);
            }
            for event in batch {
                if self.stopping() {
                    return Ok(None);
                }
                if event.status == event_status::DEAD {
                    // Order is the contract: later events wait behind it.
                    return Ok(None);
                }
                if event.next_attempt_at > now_ms() {
                    return Ok(Some(event.next_attempt_at));
                }
                match self.deliver_event(&context, &event).await? {
                    Flow::Next => after_seq = event.seq,
                    Flow::Stop(at) => return Ok(at),
                }
                if self.flush_due() {
                    self.flush().await?;
                }
                if !self.renew_lease().await? {
                    return Ok(None);
                }
            }
            // The next batch is read from the database: it must see this one
            // delivered.
            self.flush().await?;
        }
    }

    fn stopping(&self) -> bool {
        self.stopping.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Queues a delivered event's successful attempt for [`Lane::flush`].
    fn delivered(&self, attempt: Attempt) {
        let mut unrecorded = self.delivered.lock().expect("lane buffer lock");
        unrecorded.since.get_or_insert_with(Instant::now);
        unrecorded.attempts.push(attempt);
    }

    fn flush_due(&self) -> bool {
        let unrecorded = self.delivered.lock().expect("lane buffer lock");
        unrecorded.attempts.len() >= FLUSH_EVERY
            || unrecorded.since.is_some_and(|t| t.elapsed() >= FLUSH_AFTER)
    }

    /// Writes the queued deliveries in one transaction.
    async fn flush(&self) -> Result<(), StoreError> {
        let attempts = {
            let mut unrecorded = self.delivered.lock().expect("lane buffer lock");
            unrecorded.since = None;
            std::mem::take(&mut unrecorded.attempts)
        };
        self.store
            .record_deliveries(self.subscription.as_str(), &self.lease, attempts)
            .await
    }

    /// Renews the delivery lease once a third of it has passed; `false` when
    /// it was lost (another instance took the subscription over).
    async fn renew_lease(&self) -> Result<bool, StoreError> {
        let ttl = lease_ttl(&self.config);
        let now = now_ms();
        let last = self.renewed_at.load(std::sync::atomic::Ordering::Relaxed);
        if now - last < ttl / 3 {
            return Ok(true);
        }
        self.renewed_at
            .store(now, std::sync::atomic::Ordering::Relaxed);
        self.store
            .renew_delivery(&self.subscription, &self.lease, ttl)
            .await
    }

    async fn deliver_event(
        &self,
        context: &LaneContext,
        event: &event::Model,
    ) -> Result<Flow, StoreError> {
        let Ok(permit) = ractor::call_t!(self.breaker, BreakerMsg::Ask, BREAKER_CALL_MS) else {
            // The breaker is restarting with its app actor: try again soon.
            return Ok(Flow::Stop(Some(now_ms() + 1_000)));
        };
        let probe = match permit {
            Permit::WaitUntil(until) => return Ok(Flow::Stop(Some(until))),
            Permit::Probe => true,
            Permit::Proceed => false,
        };
        let flow = self.send_event(context, event, probe).await;
        if probe && !matches!(flow, Ok(Flow::Next)) {
            // A probe that ended before an answer told nothing: let another go.
            let _ = self.breaker.cast(BreakerMsg::Inconclusive);
        }
        flow
    }

    async fn send_event(
        &self,
        context: &LaneContext,
        event: &event::Model,
        probe: bool,
    ) -> Result<Flow, StoreError> {
        let content = match event.kind.as_str() {
            event_kind::CREATED | event_kind::UPDATED => {
                match context.mirror.read(event.blob_id.clone()).await {
                    Some(content) => Some(content),
                    None => {
                        let error =
                            "the file's content is no longer in the mirror; resync the repository";
                        return self
                            .give_up(event, "content_missing", error.to_owned())
                            .await;
                    }
                }
            }
            _ => None,
        };
        let rendered = match payload::render(
            event,
            &context.repository,
            content.as_deref(),
            self.config.chunking,
        ) {
            Ok(rendered) => rendered,
            Err(err) => return self.give_up(event, "payload", err.to_string()).await,
        };
        let url = format!(
            "{}/{}",
            context.base_url.trim_end_matches('/'),
            rendered.endpoint
        );
        let first = if rendered.is_chunked() {
            self.store
                .resume_chunk(&event.id)
                .await?
                .min(rendered.len() - 1)
        } else {
            0
        };
        for index in first..rendered.len() {
            // A long chunked file keeps the lease alive between chunks.
            if index > first && (self.stopping() || !self.renew_lease().await?) {
                return Ok(Flow::Stop(None));
            }
            let (webhook_id, body) = rendered.part(&event.id, index);
            // One span per request, in the trace of the scan that found the change.
            let span = tracing::info_span!(
                parent: None,
                "delivery_attempt",
                "otel.kind" = "client",
                event = %event.id,
                app = %self.app_id,
                subscription = %event.subscription_id,
                kind = %event.kind,
                chunk = index,
                "http.response.status_code" = tracing::field::Empty,
                outcome = tracing::field::Empty,
            );
            telemetry::continue_trace(&span, event.trace_parent.as_deref());
            let headers = signed_headers(
                &self.app_id,
                &context.keys,
                &webhook_id,
                now_ms() / 1000,
                &body,
                &telemetry::outgoing_traceparent(&span),
            );
            let chunk_index = rendered
                .is_chunked()
                .then(|| i32::try_from(index).unwrap_or(i32::MAX));
            let attempted_at = now_ms();
            let last = index + 1 == rendered.len();
            let answer = self
                .client
                .post(&url, headers, body)
                .instrument(span.clone())
                .await;
            if let Ok(answer) = &answer {
                span.record("http.response.status_code", answer.status);
            }
            match answer {
                Ok(answer) if (200..300).contains(&answer.status) => {
                    telemetry::delivery_attempt(
                        &span,
                        &self.app_id,
                        delivery_outcome::DELIVERED,
                        Some(answer.latency),
                    );
                    self.breaker_success().await?;
                    let attempt = attempt_row(
                        event,
                        chunk_index,
                        attempted_at,
                        Some(answer.status),
                        millis(answer.latency),
                        None,
                        Some(answer.excerpt),
                    );
                    if last {
                        self.delivered(attempt);
                    } else {
                        // Where a retry resumes: written before the next chunk.
                        self.store
                            .record_attempt(&self.lease, event, attempt, None)
                            .await?;
                    }
                }
                Ok(answer) => {
                    let class = if (300..400).contains(&answer.status) {
                        "redirect"
                    } else {
                        "http_status"
                    };
                    let endpoint_down = answer.status >= 500 && answer.retry_after.is_none();
                    let attempt = attempt_row(
                        event,
                        chunk_index,
                        attempted_at,
                        Some(answer.status),
                        millis(answer.latency),
                        Some(class),
                        Some(answer.excerpt),
                    );
                    let error = format!("the endpoint answered {}", answer.status);
                    let outcome = if answer.status == 410 {
                        self.breaker_success().await?;
                        EventOutcome::Paused {
                            error: "the endpoint answered 410 Gone; the subscription is paused"
                                .into(),
                        }
                    } else if let (429 | 503, Some(wait)) = (answer.status, answer.retry_after) {
                        let _ = self.breaker.cast(BreakerMsg::Inconclusive);
                        EventOutcome::Retry {
                            at: now_ms() + millis(wait.min(self.config.retry_after_cap)),
                            error,
                            counted: false,
                        }
                    } else {
                        if endpoint_down {
                            self.breaker_failure(class, &error).await?;
                        } else {
                            self.breaker_success().await?;
                        }
                        self.failure_outcome(context, event, error, probe).await
                    };
                    telemetry::delivery_attempt(
                        &span,
                        &self.app_id,
                        outcome_label(
                            &outcome,
                            matches!((answer.status, answer.retry_after), (429 | 503, Some(_))),
                        ),
                        Some(answer.latency),
                    );
                    return self.stop(event, attempt, outcome).await;
                }
                Err(no_answer) => {
                    let attempt = attempt_row(
                        event,
                        chunk_index,
                        attempted_at,
                        None,
                        millis(no_answer.latency),
                        Some(no_answer.class),
                        None,
                    );
                    self.breaker_failure(no_answer.class, &no_answer.message)
                        .await?;
                    let outcome = self
                        .failure_outcome(context, event, no_answer.message.clone(), probe)
                        .await;
                    telemetry::delivery_attempt(
                        &span,
                        &self.app_id,
                        outcome_label(&outcome, false),
                        Some(no_answer.latency),
                    );
                    return self.stop(event, attempt, outcome).await;
                }
            }
        }
        Ok(Flow::Next)
    }

    /// An event that cannot be sent at all (its content is gone from the
    /// mirror, its stored notification is unreadable) is dead at once.
    async fn give_up(
        &self,
        event: &event::Model,
        class: &str,
        error: String,
    ) -> Result<Flow, StoreError> {
        let attempt = attempt_row(event, None, now_ms(), None, 0, Some(class), None);
        telemetry::delivery_attempt(
            &tracing::Span::none(),
            &self.app_id,
            delivery_outcome::DEAD,
            None,
        );
        self.stop(event, attempt, EventOutcome::Dead { error })
            .await
    }

    async fn stop(
        &self,
        event: &event::Model,
        attempt: Attempt,
        outcome: EventOutcome,
    ) -> Result<Flow, StoreError> {
        let flow = match &outcome {
            EventOutcome::Retry { at, .. } => Flow::Stop(Some(*at)),
            EventOutcome::Skipped { .. } => Flow::Next,
            _ => Flow::Stop(None),
        };
        self.flush().await?;
        if let EventOutcome::Dead { error } = &outcome {
            warn!(event = %event.id, subscription = %event.subscription_id, %error, "event is dead; its subscription waits behind it");
        }
        self.store
            .record_attempt(&self.lease, event, attempt, Some(outcome))
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
        let max_attempts = if event_kind::is_notification(&event.kind) {
            self.config.max_attempts.min(NOTIFICATION_MAX_ATTEMPTS)
        } else {
            self.config.max_attempts
        };
        if counted && attempts >= max_attempts {
            return if event_kind::is_notification(&event.kind) {
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

/// The signing stage: a webhook's headers, both signature styles over the
/// exact body (Docora's with the current key; Standard Webhooks' with every
/// key that signs, during a rotation the previous one too).
fn signed_headers(
    app_id: &str,
    keys: &[Vec<u8>],
    webhook_id: &str,
    timestamp: i64,
    body: &[u8],
    traceparent: &str,
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
    headers.insert("traceparent", header(traceparent));
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

/// The `herald_deliveries_total` outcome of a failed attempt.
fn outcome_label(outcome: &EventOutcome, honoured_retry_after: bool) -> &'static str {
    match outcome {
        EventOutcome::Dead { .. } => delivery_outcome::DEAD,
        EventOutcome::Paused { .. } => delivery_outcome::GONE,
        EventOutcome::Retry { counted: false, .. } if honoured_retry_after => {
            delivery_outcome::RATE_LIMITED
        }
        _ => delivery_outcome::FAILED,
    }
}

/// Reads file content from a repository's mirror on a blocking thread,
/// keeping the mirror open for the lane's life instead of opening it per
/// event.
#[derive(Clone)]
struct MirrorReader {
    path: PathBuf,
    repo: Arc<std::sync::Mutex<Option<git2::Repository>>>,
}

impl MirrorReader {
    fn new(path: PathBuf) -> Self {
        Self {
            path,
            repo: Arc::default(),
        }
    }

    /// A blob's bytes; `None` when the mirror or the blob is missing.
    async fn read(&self, blob: Option<String>) -> Option<Vec<u8>> {
        let blob = git2::Oid::from_str(&blob?).ok()?;
        let reader = self.clone();
        tokio::task::spawn_blocking(move || reader.read_blocking(blob))
            .await
            .ok()
            .flatten()
    }

    fn read_blocking(&self, blob: git2::Oid) -> Option<Vec<u8>> {
        let mut slot = self.repo.lock().ok()?;
        // A handle opened earlier may predate a rebuilt mirror: on a miss
        // the mirror is opened afresh once.
        for reopen in [false, true] {
            if reopen || slot.is_none() {
                *slot = Some(git2::Repository::open_bare(&self.path).ok()?);
            }
            let repo = slot.as_ref()?;
            if let Ok(found) = repo.find_blob(blob) {
                return Some(found.content().to_vec());
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_carry_both_signatures_over_the_exact_body() {
        let keys = vec![
            b"current-key-0123456789".to_vec(),
            b"previous-key-0123456789".to_vec(),
        ];
        let body = br#"{"event":"create"}"#;
        let headers = signed_headers("app_1", &keys, "evt_1", 1_700_000_000, body, "00-ab-cd-01");
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
        assert_eq!(value("traceparent"), "00-ab-cd-01");
        assert_eq!(value("content-type"), "application/json");
    }
}
