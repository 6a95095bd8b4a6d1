//! Wake-ups across instances. Work is found in the database, so every
//! instance finds it at its next tick; this makes it immediate. When one
//! instance writes events, stores a push hook, makes a retry due or a
//! repository due for a scan, it rings the others through PostgreSQL's
//! `LISTEN/NOTIFY` (channel [`CHANNEL`]); each instance's listener rings its
//! own dispatcher, hook processor or scheduler, and the leases decide who
//! does the work. The bell itself is [`crate::signals::ClusterBell`]. SQLite keeps its single-instance path: there the bell only
//! rings locally.
//!
//! Notifications are transient: one sent while a listener was reconnecting
//! is lost, so after every reconnection the listener rings everything
//! locally once (the work itself is in the database).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use sea_orm::sqlx::postgres::PgListener;
use tracing::{debug, info, warn};

use crate::owned::OwnedTask;
use crate::signals::{OutboxSignal, Rings, ScanRequests, Wake};
use crate::store::Store;

/// The PostgreSQL channel Herald's instances share.
pub const CHANNEL: &str = "herald_wake";

/// Where a wake-up from another instance goes in this one.
#[derive(Clone)]
pub struct LocalTargets {
    /// Rung locally only (never published again).
    pub outbox: OutboxSignal,
    pub hooks: Arc<dyn Fn() + Send + Sync>,
    pub scans: ScanRequests,
}

impl LocalTargets {
    fn wake(&self, wake: Wake) {
        match wake {
            Wake::Outbox => self.outbox.notify_local(),
            Wake::Hooks => (self.hooks)(),
            Wake::Scan(repo) => self.scans.scan_now(repo),
        }
    }
}

/// The actor that publishes this instance's rings and listens to the
/// others'. A child of the root supervisor, on PostgreSQL only.
pub struct Wakeups;

pub struct WakeupsArgs {
    pub store: Store,
    pub instance_id: String,
    pub rings: Rings,
    pub targets: LocalTargets,
}

pub struct WakeupsState {
    /// Publishing and listening, each owned by this actor.
    _tasks: [OwnedTask; 2],
}

/// Messages of the wake-ups actor.
#[derive(Debug)]
pub enum WakeupsMsg {
    /// One of its tasks ended (an error, or a panic): the actor fails, and
    /// its supervisor restarts it.
    TaskEnded(String),
}

impl Actor for Wakeups {
    type Msg = WakeupsMsg;
    type State = WakeupsState;
    type Arguments = WakeupsArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: WakeupsArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let Some(pool) = args.store.postgres_pool() else {
            return Err("cluster wake-ups need PostgreSQL".into());
        };
        let mut listener = PgListener::connect_with(&pool).await?;
        listener.listen(CHANNEL).await?;
        info!(channel = CHANNEL, "listening for other instances' wake-ups");
        let report = |myself: ActorRef<WakeupsMsg>, what: &'static str| {
            move |result: Result<String, String>| {
                let why = result.unwrap_or_else(|panic| format!("panicked: {panic}"));
                let _ = myself.send_message(WakeupsMsg::TaskEnded(format!("{what}: {why}")));
            }
        };
        let publish = OwnedTask::spawn(
            publish(args.store.clone(), args.instance_id.clone(), args.rings),
            report(myself.clone(), "publishing"),
        );
        let listen = OwnedTask::spawn(
            listen(listener, args.instance_id, args.targets),
            report(myself, "listening"),
        );
        Ok(WakeupsState {
            _tasks: [publish, listen],
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        _state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let WakeupsMsg::TaskEnded(why) = message;
        Err(why.into())
    }
}

/// Publishes rings as they come, a burst coalesced into one notification
/// per kind of wake-up.
async fn publish(store: Store, instance: String, rings: Rings) -> String {
    let mut rings = rings.lock().await;
    loop {
        let Some(first) = rings.recv().await else {
            return "the engine stopped".to_owned();
        };
        let mut burst = BTreeSet::from([first]);
        while let Ok(more) = rings.try_recv() {
            burst.insert(more);
        }
        for wake in burst {
            if let Err(err) = store.notify_cluster(CHANNEL, &wake.encode(&instance)).await {
                // The others find the work at their next tick.
                warn!(error = %err, "could not wake the other instances");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// How many reconnections in a row the listener tries before it gives up
/// (its actor fails and its supervisor decides), and the first wait between
/// them (doubled each time, up to 32 times).
const LISTEN_RETRIES: u32 = 30;
const LISTEN_RETRY_BASE: Duration = Duration::from_millis(100);

/// Rings this instance's actors for the others' wake-ups.
async fn listen(mut listener: PgListener, instance: String, targets: LocalTargets) -> String {
    let mut failures = 0u32;
    loop {
        let received = listener.try_recv().await;
        if received.is_ok() {
            failures = 0;
        }
        match received {
            Ok(Some(notification)) => match Wake::decode(notification.payload()) {
                Some((sender, _)) if sender == instance => {}
                Some((sender, wake)) => {
                    debug!(sender, ?wake, "woken by another instance");
                    targets.wake(wake);
                }
                None => debug!(payload = notification.payload(), "unknown wake-up ignored"),
            },
            Ok(None) => {
                // Reconnected: what was sent meanwhile is lost; look now.
                warn!("wake-up listener reconnected; looking for work");
                targets.wake(Wake::Outbox);
                targets.wake(Wake::Hooks);
            }
            Err(err) if failures < LISTEN_RETRIES => {
                // The connection was cut and reconnecting failed (the
                // database is restarting, or an operator terminated the
                // backend): the next receive connects again. Ending here
                // would spend the root's restart budget on the database's
                // trouble.
                failures += 1;
                let wait = LISTEN_RETRY_BASE.saturating_mul(1 << failures.min(5));
                warn!(error = %err, ?wait, "wake-up listener lost its connection; reconnecting");
                tokio::time::sleep(wait).await;
            }
            Err(err) => return format!("the listener failed: {err}"),
        }
    }
}
