//! Delivery: one actor per app drains that app's outbox, each subscription
//! strictly in `seq` order, subscriptions concurrently (at most
//! `max_in_flight` per app), apps independently. The dispatcher supervises
//! the app actors and wakes them when the outbox grows or retries fall due.
//!
//! A subscription is delivered by a *lane* ([`lane`]): a child actor of its
//! app actor that holds the subscription's delivery lease (claimed for it by
//! the app actor) and sends its events one after the other; when it stops
//! (nothing left, a retry scheduled, a dead event) it reports back to its
//! app actor as a message. A lane that fails is restarted under the engine's
//! restart policy; past its budget the failure escalates to the dispatcher.
//!
//! Each app's endpoint has a circuit breaker, a child actor of its app actor
//! and the single owner of its persisted state: lanes ask it before each
//! request and report how it went. An app that is down costs exactly one
//! probe per cooldown (the cooldown doubling with each failed probe),
//! however many lanes wait, and its events wait without using up their
//! attempts.
//!
//! A subscription whose lane stopped for a retry *rests* until then (at
//! most 5 s, so an operator's retry is taken up soon): its later events are
//! due, and a lane started meanwhile would stop again at once, in a loop
//! that held a core. A windowed lane's subscription rests only while no
//! event came after the last one it read.

mod congestion;
mod content;
mod lane;
pub mod pull;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use entity::BreakerKind;
use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};
use tracing::{error, warn};

use self::congestion::Congestion;
use self::lane::{LaneActor, LaneArgs, LaneMsg};
use crate::backoff::Backoff;
use crate::breaker::actor::{BreakerActor, BreakerArgs, BreakerMsg};
use crate::breaker::{BreakerPolicy, Permit};
use crate::clock::{millis, now_ms};
use crate::git::{ConnectRule, LowSpeed};
use crate::ids::{AppId, SubscriptionId};
use crate::payload::Chunking;
use crate::restart::{Ended, RestartPolicy, RestartTracker};
use crate::scan::ScanPool;
use crate::signals::OutboxSignal;
use crate::store::Store;
use crate::store::apps::DeliveryWindow;
use crate::store::leases::LeaseToken;
use crate::webhook_client::WebhookClient;

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
    /// Created or updated files larger than this are announced at
    /// `file_too_large` instead of being sent (`delivery.max_file_bytes`).
    pub max_file_bytes: u64,
    pub breaker: BreakerPolicy,
    pub disable_after: Duration,
    pub max_in_flight_per_app: usize,
    pub allow_private_targets: bool,
    /// `security.allow_http_targets`, applied before each request: an app
    /// registered with an `http://` base URL under a more permissive
    /// configuration is not sent to.
    pub allow_http_targets: bool,
    pub mirrors_dir: PathBuf,
    /// How often due retries are looked for.
    pub tick: Duration,
    /// How long after its last attempt a dead event gets one more attempt
    /// (`None`: never), so a consumer that recovers resumes by itself.
    pub dead_retry_interval: Option<Duration>,
    /// A pause after each event a bulk retry queues again, so a receiver
    /// that just recovered gets a large retry spread out (zero: no pause).
    pub bulk_retry_pause: Duration,
    pub instance_id: String,
    /// How long a delivery lease lasts unless renewed (`cluster.lease_ttl`).
    pub lease_ttl: Duration,
    /// How content missing from a mirror is fetched again: the watchers'
    /// timeout and address rule.
    pub fetch_timeout: Duration,
    pub low_speed: LowSpeed,
    pub connect: ConnectRule,
    /// Fetches the LFS objects of files stored in Git LFS (its cache shared
    /// by every lane).
    pub lfs: crate::lfs::Lfs,
}

/// Messages of the dispatcher.
#[derive(Debug)]
pub enum DispatcherMsg {
    /// Look for apps with due events.
    Wake,
    /// Restart an app actor that failed.
    Restart(AppId),
}

pub struct Dispatcher;

pub struct DispatcherArgs {
    pub store: Store,
    /// The scan workers, for content fetched again.
    pub pool: ScanPool,
    pub config: DeliveryConfig,
    pub signal: OutboxSignal,
    pub restart: RestartPolicy,
}

pub struct DispatcherState {
    store: Store,
    pool: ScanPool,
    config: DeliveryConfig,
    client: WebhookClient,
    apps: HashMap<AppId, ActorRef<AppMsg>>,
    /// The engine's restart policy, applied to each app actor.
    restart: RestartPolicy,
    restarts: HashMap<AppId, RestartTracker>,
    /// Background tasks stopped with the dispatcher (tick, signal bridge),
    /// also when it fails.
    tasks: Vec<tokio_util::task::AbortOnDropHandle<()>>,
}

impl DispatcherState {
    async fn app(
        &mut self,
        myself: &ActorRef<DispatcherMsg>,
        app_id: &AppId,
    ) -> Result<ActorRef<AppMsg>, ActorProcessingErr> {
        if let Some(app) = self.apps.get(app_id) {
            return Ok(app.clone());
        }
        let args = AppArgs {
            app_id: app_id.clone(),
            store: self.store.clone(),
            config: self.config.clone(),
            client: self.client.clone(),
            restart: self.restart,
            pool: self.pool.clone(),
        };
        let (app, _) = Actor::spawn_linked(None, AppDelivery, args, myself.get_cell()).await?;
        self.apps.insert(app_id.clone(), app.clone());
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
        let client = WebhookClient::with_rule(
            args.config.timeout,
            args.config.allow_private_targets,
            args.config.allow_http_targets,
        );
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
            pool: args.pool,
            config: args.config,
            client,
            apps: HashMap::new(),
            restart: args.restart,
            restarts: HashMap::new(),
            tasks: vec![
                tokio_util::task::AbortOnDropHandle::new(ticker),
                tokio_util::task::AbortOnDropHandle::new(bridge),
            ],
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
                // Sockets receivers closed while idle are let go.
                state.client.prune_idle();
                let now = now_ms();
                let due = match state
                    .store
                    .apps_with_due_events(now, probe_dead_before(&state.config, now), 10_000)
                    .await
                {
                    Ok(due) => due,
                    Err(err) => {
                        warn!(error = %err, "could not look for due events");
                        return Ok(());
                    }
                };
                for app_id in due {
                    let app = state.app(&myself, &AppId::stored(app_id)).await?;
                    let _ = app.send_message(AppMsg::Drain);
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
        let Some(ended) = Ended::of(event) else {
            return Ok(());
        };
        let (cell, failed) = (ended.child, ended.failed.then_some(ended.reason));
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
    /// A lane stopped; `retry_at` says when its subscription is due again,
    /// and `read_through` the last `seq` a windowed lane read (its later
    /// events are new: they need not wait until then).
    LaneDone {
        subscription: SubscriptionId,
        retry_at: Option<i64>,
        read_through: Option<i64>,
    },
    /// Fails a subscription's lane, as a bug would (supervision tests).
    #[cfg(test)]
    CrashLane(SubscriptionId),
}

pub struct AppDelivery;

pub struct AppArgs {
    pub app_id: AppId,
    pub store: Store,
    pub config: DeliveryConfig,
    pub client: WebhookClient,
    /// Applied to each lane.
    pub restart: RestartPolicy,
    pub pool: ScanPool,
}

pub struct AppDeliveryState {
    args: AppArgs,
    /// The endpoint's breaker: a child of this actor.
    breaker: ActorRef<BreakerMsg>,
    /// Whether the breaker is clear (see `BreakerArgs::clear`).
    breaker_clear: Arc<AtomicBool>,
    /// The running lanes, children of this actor, by subscription, with the
    /// lease this actor claimed for each.
    lanes: HashMap<SubscriptionId, RunningLane>,
    restarts: HashMap<SubscriptionId, RestartTracker>,
    /// A wake-up is already scheduled for the end of the breaker's cooldown.
    wake_scheduled: bool,
    /// The receiver's window, shared by the lanes.
    congestion: Arc<Congestion>,
    /// A broker app's connection, shared by the lanes (see `crate::broker`).
    broker: crate::broker::Broker,
    /// Subscriptions whose lane stopped for a retry, not started again
    /// before it (see [`Rest`]).
    resting: HashMap<SubscriptionId, Rest>,
}

/// A subscription waiting for a retry: though its later events are due, a
/// lane started before `until` would find its first one not due and stop
/// at once, again and again. A windowed lane's later paths may go on: when
/// events came after `read_through`, a lane starts for them. A rest lasts
/// at most [`REST_AT_MOST`].
#[derive(Debug, Clone, Copy)]
struct Rest {
    until: i64,
    read_through: Option<i64>,
}

/// The longest a subscription rests: an operator's retry or skip makes its
/// event due at once, and is taken up within this.
const REST_AT_MOST: i64 = 5_000;

impl Rest {
    /// Whether a subscription whose next event will be `next_seq` still
    /// rests at `now`.
    fn holds(&self, next_seq: i64, now: i64) -> bool {
        self.until > now && self.read_through.is_none_or(|read| next_seq - 1 <= read)
    }
}

struct RunningLane {
    lane: ActorRef<LaneMsg>,
    lease: LeaseToken,
}

impl Actor for AppDelivery {
    type Msg = AppMsg;
    type State = AppDeliveryState;
    type Arguments = AppArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: AppArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let breaker_args = BreakerArgs {
            store: args.store.clone(),
            kind: BreakerKind::Delivery,
            subject: args.app_id.to_string(),
            policy: args.config.breaker,
            probe_timeout: args.config.timeout + Duration::from_secs(5),
            clear: Arc::default(),
        };
        let breaker_clear = breaker_args.clear.clone();
        let (breaker, _) =
            Actor::spawn_linked(None, BreakerActor, breaker_args, myself.get_cell()).await?;
        let broker = crate::broker::Broker::new(
            crate::net::AddressRule {
                allow_private: args.config.allow_private_targets,
                allow_http: true,
            },
            args.config.timeout,
        );
        Ok(AppDeliveryState {
            broker,
            breaker,
            breaker_clear,
            args,
            lanes: HashMap::new(),
            restarts: HashMap::new(),
            wake_scheduled: false,
            congestion: Arc::new(Congestion::new(usize::from(DeliveryWindow::MAX))),
            resting: HashMap::new(),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
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
                let now = now_ms();
                // A database error is the database's, not this app's: the
                // dispatcher's next tick drains again. Failing here would
                // spend the restart budget of an app that did nothing wrong.
                let due = match state
                    .args
                    .store
                    .subscriptions_due(
                        &state.args.app_id,
                        now,
                        probe_dead_before(&state.args.config, now),
                        (free + state.lanes.len()) as u64,
                    )
                    .await
                {
                    Ok(due) => due,
                    Err(err) => {
                        warn!(app = %state.args.app_id, error = %err, "could not look for due subscriptions; retrying at the next tick");
                        return Ok(());
                    }
                };
                state.resting.retain(|_, rest| rest.until > now);
                let resting = &state.resting;
                let fresh: Vec<_> = due
                    .into_iter()
                    .filter(|s| {
                        resting
                            .get(&SubscriptionId::stored(s.id.as_str()))
                            .is_none_or(|rest| !rest.holds(s.next_seq, now))
                    })
                    .map(|s| SubscriptionId::stored(s.id))
                    .filter(|id| !state.lanes.contains_key(id))
                    .take(free)
                    .collect();
                for id in fresh {
                    let ttl = lease_ttl(&state.args.config);
                    let lease = match state
                        .args
                        .store
                        .claim_delivery(&id, &state.args.config.instance_id, ttl)
                        .await
                    {
                        Ok(Some(lease)) => lease,
                        Ok(None) => continue,
                        Err(err) => {
                            warn!(app = %state.args.app_id, subscription = %id, error = %err, "could not claim a delivery lease; retrying at the next tick");
                            return Ok(());
                        }
                    };
                    let args = LaneArgs {
                        app_id: state.args.app_id.clone(),
                        subscription: id.clone(),
                        lease: lease.clone(),
                        store: state.args.store.clone(),
                        config: state.args.config.clone(),
                        client: state.args.client.clone(),
                        breaker: state.breaker.clone(),
                        breaker_clear: state.breaker_clear.clone(),
                        owner: myself.clone(),
                        pool: state.args.pool.clone(),
                        congestion: state.congestion.clone(),
                        broker: state.broker.clone(),
                    };
                    let (lane, _) =
                        Actor::spawn_linked(None, LaneActor, args, myself.get_cell()).await?;
                    state.lanes.insert(id, RunningLane { lane, lease });
                }
            }
            AppMsg::LaneDone {
                subscription,
                retry_at,
                read_through,
            } => {
                state.lanes.remove(&subscription);
                if let Some(at) = retry_at {
                    state.resting.insert(
                        subscription,
                        Rest {
                            until: at.min(now_ms() + REST_AT_MOST),
                            read_through,
                        },
                    );
                    let wait =
                        Duration::from_millis(u64::try_from((at - now_ms()).max(0)).unwrap_or(0));
                    myself.send_after(wait, || AppMsg::Drain);
                }
                myself.send_message(AppMsg::Drain)?;
            }
            #[cfg(test)]
            AppMsg::CrashLane(subscription) => {
                if let Some(running) = state.lanes.get(&subscription) {
                    running.lane.send_message(LaneMsg::Crash)?;
                }
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
        let SupervisionEvent::ActorFailed(cell, err) = event else {
            // A lane that ended by itself has reported `LaneDone`.
            return Ok(());
        };
        if cell.get_id() == state.breaker.get_id() {
            return Err(format!("the breaker of app {} failed: {err}", state.args.app_id).into());
        }
        let Some(subscription) = state
            .lanes
            .iter()
            .find(|(_, running)| running.lane.get_id() == cell.get_id())
            .map(|(subscription, _)| subscription.clone())
        else {
            return Ok(());
        };
        let running = state.lanes.remove(&subscription).expect("found above");
        // The lane has ended: its lease is this actor's to release, and its
        // events are still pending.
        if let Err(release) = state
            .args
            .store
            .release_delivery(&subscription, &running.lease)
            .await
        {
            warn!(%subscription, error = %release, "could not release a failed lane's lease; it will expire");
        }
        let policy = state.args.restart;
        match state
            .restarts
            .entry(subscription.clone())
            .or_default()
            .on_failure(&policy, Instant::now())
        {
            Some(delay) => {
                error!(%subscription, error = %err, ?delay, "delivery lane failed; restarting it");
                myself.send_after(delay, || AppMsg::Drain);
                Ok(())
            }
            None => {
                error!(%subscription, error = %err, "delivery lane keeps failing; escalating");
                Err(format!("the lane of {subscription} failed too often").into())
            }
        }
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        // Drain: each lane finishes the event in flight, writes what it
        // delivered and releases its lease, within the request timeout; no
        // new lane starts (this actor takes no more messages). A lane cut
        // short leaves its event pending, delivered again after the restart:
        // nothing lost.
        let grace = state.args.config.timeout + Duration::from_secs(1);
        let mut stopping = tokio::task::JoinSet::new();
        for (_, running) in state.lanes.drain() {
            stopping.spawn(async move {
                if running
                    .lane
                    .stop_and_wait(Some("app actor stopping".to_owned()), Some(grace))
                    .await
                    .is_err()
                {
                    running.lane.kill();
                }
            });
        }
        stopping.join_all().await;
        // The lanes have reported: the breaker goes last.
        state.breaker.stop(Some("app actor stopping".to_owned()));
        Ok(())
    }
}

/// Dead events last tried before this time are due for a probe (`None`:
/// dead events are never probed).
fn probe_dead_before(config: &DeliveryConfig, now: i64) -> Option<i64> {
    config
        .dead_retry_interval
        .map(|interval| now - millis(interval))
}

impl DeliveryConfig {
    /// Where this instance mirrors `repository`.
    pub(crate) fn mirror_path(&self, repository: &entity::repository::Model) -> PathBuf {
        self.mirrors_dir.join(format!("{}.git", repository.id))
    }
}

#[cfg(test)]
impl DeliveryConfig {
    /// Settings for the engine's own tests: everything local, retries
    /// fast, ticks slow (tests drive the actors themselves).
    pub(crate) fn for_tests(dir: &std::path::Path) -> Self {
        let breaker = crate::breaker::BreakerPolicy {
            threshold: 5,
            cooldown: Duration::from_secs(60),
        };
        let connect = ConnectRule {
            allow_private: true,
            allow_http: true,
            allow_local: true,
            data_dir: dir.join("data"),
        };
        Self {
            lfs: crate::lfs::Lfs::new(dir.join("lfs"), &connect, Duration::from_secs(10)),
            timeout: Duration::from_secs(5),
            max_attempts: 3,
            backoff: Backoff {
                policy: crate::backoff::Policy::Fixed,
                base: Duration::from_millis(100),
                cap: Duration::from_millis(100),
            },
            retry_after_cap: Duration::from_secs(60),
            chunking: Chunking {
                threshold_bytes: 1 << 20,
                chunk_chars: 1 << 19,
            },
            max_file_bytes: 100 << 20,
            breaker,
            disable_after: Duration::from_secs(3600),
            max_in_flight_per_app: 4,
            allow_private_targets: true,
            allow_http_targets: true,
            mirrors_dir: dir.join("mirrors"),
            tick: Duration::from_secs(3600),
            dead_retry_interval: None,
            bulk_retry_pause: Duration::ZERO,
            instance_id: "test".into(),
            lease_ttl: Duration::from_secs(30),
            fetch_timeout: Duration::from_secs(10),
            low_speed: LowSpeed::default(),
            connect,
        }
    }
}

/// A delivery lease outlives one request (configuration makes sure of it);
/// the lane renews it as it goes.
fn lease_ttl(config: &DeliveryConfig) -> i64 {
    millis(config.lease_ttl)
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_resting_subscription_waits_unless_a_windowed_lane_left_new_events_behind() {
        let strict = Rest {
            until: 1_000,
            read_through: None,
        };
        assert!(strict.holds(50, 999));
        assert!(!strict.holds(50, 1_000), "its time came");
        let windowed = Rest {
            until: 1_000,
            read_through: Some(49),
        };
        assert!(windowed.holds(50, 500), "nothing new");
        assert!(
            !windowed.holds(51, 500),
            "event 50 came after the lane read through 49"
        );
    }

    use std::sync::{Arc, Mutex};

    use sea_orm::{ActiveModelTrait, ActiveValue::Set, ColumnTrait, EntityTrait, QueryFilter};
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

    use super::*;
    use crate::store::apps::NewApp;
    use crate::test_support;

    /// An HTTP/1.1 endpoint that answers 200 to every webhook after `delay`,
    /// recording each `webhook-id` it got.
    async fn slow_receiver(delay: Duration) -> (String, Arc<Mutex<Vec<String>>>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = seen.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let record = record.clone();
                tokio::spawn(async move {
                    let mut stream = BufReader::new(stream);
                    loop {
                        let (mut length, mut id) = (0usize, None);
                        loop {
                            let mut line = String::new();
                            if stream.read_line(&mut line).await.unwrap_or(0) == 0 {
                                return;
                            }
                            let line = line.trim_end();
                            if line.is_empty() {
                                break;
                            }
                            if let Some((name, value)) = line.split_once(':') {
                                match name.to_ascii_lowercase().as_str() {
                                    "content-length" => length = value.trim().parse().unwrap_or(0),
                                    "webhook-id" => id = Some(value.trim().to_owned()),
                                    _ => {}
                                }
                            }
                        }
                        let mut body = vec![0; length];
                        if stream.read_exact(&mut body).await.is_err() {
                            return;
                        }
                        tokio::time::sleep(delay).await;
                        record.lock().expect("lock").extend(id);
                        let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
                        if stream.get_mut().write_all(ok).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        (url, seen)
    }

    /// An app whose endpoint answers after a delay, subscribed to a
    /// repository with `events` deletions pending, and its delivery actor.
    struct Rig {
        _dir: tempfile::TempDir,
        store: Store,
        subscription: String,
        seen: Arc<Mutex<Vec<String>>>,
        actor: ActorRef<AppMsg>,
        handle: tokio::task::JoinHandle<()>,
        workers: ActorRef<crate::scan::workers::PoolMsg>,
    }

    impl Rig {
        async fn start(delay: Duration, events: i64) -> Self {
            let dir = tempfile::tempdir().expect("temp dir");
            let store = test_support::store(&test_support::sqlite_url(dir.path())).await;
            let (base_url, seen) = slow_receiver(delay).await;
            let app_id = test_support::onboard(
                &store,
                NewApp {
                    base_url,
                    ..test_support::new_app("acme")
                },
            )
            .await;
            let missing = format!("file://{}", dir.path().join("remote").display());
            let (view, _) = test_support::subscribe(
                &store,
                &app_id,
                test_support::new_subscription(&missing, "acme", "docs"),
            )
            .await;
            let subscription = view.subscription.id.clone();
            // Deletions: no content to read, so no mirror is needed.
            for seq in 1..=events {
                entity::event::ActiveModel {
                    id: Set(format!("evt_{seq:02}")),
                    subscription_id: Set(subscription.clone()),
                    app_id: Set(app_id.as_str().to_owned()),
                    repository_id: Set(view.repository.id.clone()),
                    snapshot_id: Set(None),
                    seq: Set(seq),
                    kind: Set(entity::EventKind::Deleted),
                    path: Set(Some(format!("docs/{seq}.md"))),
                    sha256: Set(Some("0".repeat(64))),
                    previous_sha256: Set(None),
                    size: Set(None),
                    blob_id: Set(None),
                    binary: Set(false),
                    lfs: Set(false),
                    renamed_from: Set(None),
                    commit_sha: Set(Some("1".repeat(40))),
                    payload: Set(None),
                    status: Set(entity::EventStatus::Pending),
                    attempts: Set(0),
                    next_attempt_at: Set(0),
                    last_error: Set(None),
                    created_at: Set(now_ms()),
                    delivered_at: Set(None),
                    trace_parent: Set(None),
                    stream_pos: Set(None),
                    replay_id: Set(None),
                }
                .insert(store.db())
                .await
                .expect("event");
            }
            let (pool, workers) = ScanPool::standalone(1).await.expect("scan workers");
            let args = AppArgs {
                pool,
                app_id: app_id.clone(),
                store: store.clone(),
                config: DeliveryConfig::for_tests(dir.path()),
                client: WebhookClient::new(Duration::from_secs(5), true),
                restart: RestartPolicy {
                    max_restarts: 3,
                    window: Duration::from_secs(60),
                    base_backoff: Duration::from_millis(10),
                    max_backoff: Duration::from_millis(50),
                },
            };
            let (actor, handle) = Actor::spawn(None, AppDelivery, args)
                .await
                .expect("app actor");
            Self {
                _dir: dir,
                store,
                subscription,
                seen,
                actor,
                handle,
                workers,
            }
        }

        /// How many webhooks the endpoint got.
        fn sent(&self) -> usize {
            self.seen.lock().expect("lock").len()
        }

        /// How many of the subscription's events are recorded delivered.
        async fn delivered(&self) -> usize {
            entity::event::Entity::find()
                .filter(entity::event::Column::SubscriptionId.eq(self.subscription.as_str()))
                .filter(entity::event::Column::Status.eq(entity::EventStatus::Delivered))
                .all(self.store.db())
                .await
                .expect("events")
                .len()
        }

        /// Drains, and waits until the endpoint got `count` webhooks.
        async fn drain_until_seen(&self, count: usize) {
            self.actor.send_message(AppMsg::Drain).expect("drain");
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            while self.sent() < count {
                if tokio::time::Instant::now() > deadline {
                    let events = entity::event::Entity::find().all(self.store.db()).await;
                    panic!("nothing delivered: {events:#?}");
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }

        async fn stop(self) {
            self.actor.stop(None);
            self.handle.await.expect("stops");
            self.workers.stop(None);
            self.store.close().await.ok();
        }
    }

    #[tokio::test]
    async fn a_lane_that_panics_is_restarted_and_its_events_still_arrive() {
        let rig = Rig::start(Duration::from_millis(120), 8).await;
        let (actor, subscription, seen) = (&rig.actor, &rig.subscription, &rig.seen);
        let lanes = |actor: &ActorRef<AppMsg>| -> Vec<ractor::ActorId> {
            // The children are the breaker and the lanes.
            actor.get_children().iter().map(|c| c.get_id()).collect()
        };
        let breaker_and_first: Vec<_> = {
            rig.drain_until_seen(2).await;
            lanes(actor)
        };
        assert_eq!(breaker_and_first.len(), 2, "the breaker and one lane");
        actor
            .send_message(AppMsg::CrashLane(SubscriptionId::stored(
                subscription.as_str(),
            )))
            .expect("crash");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        let mut restarted = false;
        loop {
            let now = lanes(actor);
            restarted |= now.iter().any(|id| !breaker_and_first.contains(id));
            let delivered = rig.delivered().await;
            if delivered == 8 {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{delivered} of 8 events delivered after the lane's crash"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(restarted, "a new lane took the crashed one's place");
        assert_eq!(actor.get_status(), ractor::ActorStatus::Running);
        // In order; the crash may send again, from the last recorded
        // delivery, what the crashed lane had not written yet.
        let ids = seen.lock().expect("lock").clone();
        let restart = ids
            .windows(2)
            .position(|w| w[1] <= w[0])
            .map_or(ids.len(), |i| i + 1);
        let (before, after) = ids.split_at(restart);
        let expected: Vec<_> = (1..=8).map(|seq| format!("evt_{seq:02}")).collect();
        assert!(
            expected.starts_with(before) && expected.ends_with(after),
            "{ids:?}"
        );
        assert!(after.len() + before.len() >= 8, "{ids:?}");
        rig.stop().await;
    }

    /// The lane writes its deliveries beside its sends; a write that finds
    /// the lease taken over must still stop the lane, within a write's
    /// time, and nothing it sent after is recorded.
    #[tokio::test]
    async fn a_lane_whose_lease_is_taken_over_stops_sending() {
        const EVENTS: usize = 60;
        let rig = Rig::start(Duration::from_millis(20), EVENTS as i64).await;
        rig.drain_until_seen(3).await;
        // The lane's lease runs out under it, and another instance claims
        // the subscription.
        entity::subscription::Entity::update_many()
            .col_expr(
                entity::subscription::Column::DeliveryLeaseUntil,
                sea_orm::sea_query::Expr::value(0),
            )
            .filter(entity::subscription::Column::Id.eq(rig.subscription.as_str()))
            .exec(rig.store.db())
            .await
            .expect("the lease expired");
        let id = SubscriptionId::parse(&rig.subscription).expect("id");
        rig.store
            .claim_delivery(&id, "instance-b", 60_000)
            .await
            .expect("claim")
            .expect("the expired lease is free");
        let (sent_then, recorded_then) = (rig.sent(), rig.delivered().await);
        // Wait until the endpoint hears nothing more for a second.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        let mut last = sent_then;
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let now = rig.sent();
            if now == last || tokio::time::Instant::now() > deadline {
                break;
            }
            last = now;
        }
        let sent_after = last - sent_then;
        assert!(
            last < EVENTS && sent_after <= 25,
            "the lane sent {sent_after} webhooks after its lease was taken over ({last} of {EVENTS} in all)"
        );
        assert_eq!(
            rig.delivered().await,
            recorded_then,
            "nothing sent after the takeover was recorded by the old lane"
        );
        rig.stop().await;
    }
}
