//! Wake-ups across instances. Work is found in the database, so every
//! instance finds it at its next tick; this makes it immediate. When one
//! instance writes events, stores a push hook, makes a retry due or a
//! repository due for a scan, it rings the others through PostgreSQL's
//! `LISTEN/NOTIFY` (channel [`CHANNEL`]); each instance's listener rings its
//! own dispatcher, hook processor or scheduler, and the leases decide who
//! does the work. SQLite keeps its single-instance path: there the bell only
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
use tokio::sync::{Mutex, mpsc};
use tracing::{debug, info, warn};

use crate::ids::RepoId;
use crate::outbox_signal::OutboxSignal;
use crate::owned::OwnedTask;
use crate::scheduler::ScanRequests;
use crate::store::Store;

/// The PostgreSQL channel Herald's instances share.
pub const CHANNEL: &str = "herald_wake";

/// What there is to wake up for.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Wake {
    /// Events were written or made due: deliver.
    Outbox,
    /// A push hook was stored: process it.
    Hooks,
    /// A repository is due for a scan now.
    Scan(RepoId),
}

impl Wake {
    /// `{instance}|outbox`, `{instance}|hooks`, `{instance}|scan|{repo}`.
    fn encode(&self, instance: &str) -> String {
        match self {
            Wake::Outbox => format!("{instance}|outbox"),
            Wake::Hooks => format!("{instance}|hooks"),
            Wake::Scan(repo) => format!("{instance}|scan|{repo}"),
        }
    }

    /// The sender and the wake-up; `None` for a payload of another shape.
    fn decode(payload: &str) -> Option<(&str, Wake)> {
        let mut parts = payload.splitn(3, '|');
        let sender = parts.next()?;
        let wake = match (parts.next()?, parts.next()) {
            ("outbox", None) => Wake::Outbox,
            ("hooks", None) => Wake::Hooks,
            ("scan", Some(repo)) => Wake::Scan(RepoId::parse(repo)?),
            _ => return None,
        };
        Some((sender, wake))
    }
}

/// The sending side: rung by this instance's writers. Cheap to clone; a
/// bell with no cluster behind it (SQLite, tools, tests) rings nothing.
#[derive(Debug, Clone, Default)]
pub struct ClusterBell(Option<mpsc::UnboundedSender<Wake>>);

impl ClusterBell {
    /// A bell and the queue its rings wait in until the [`Wakeups`] actor
    /// publishes them.
    pub fn new() -> (Self, Rings) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Self(Some(tx)), Rings(Arc::new(Mutex::new(rx))))
    }

    pub fn ring(&self, wake: Wake) {
        if let Some(tx) = &self.0 {
            // Closed only once the engine has stopped.
            let _ = tx.send(wake);
        }
    }
}

/// The rings waiting to be published, kept across restarts of the actor.
#[derive(Debug, Clone)]
pub struct Rings(Arc<Mutex<mpsc::UnboundedReceiver<Wake>>>);

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
    let mut rings = rings.0.lock().await;
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

/// Rings this instance's actors for the others' wake-ups.
async fn listen(mut listener: PgListener, instance: String, targets: LocalTargets) -> String {
    loop {
        match listener.try_recv().await {
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
            Err(err) => return format!("the listener failed: {err}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wake_ups_survive_the_round_trip_and_odd_payloads_are_ignored() {
        let repo = RepoId::generate();
        for wake in [Wake::Outbox, Wake::Hooks, Wake::Scan(repo)] {
            let payload = wake.encode("herald-1");
            assert_eq!(Wake::decode(&payload), Some(("herald-1", wake)));
        }
        for odd in [
            "",
            "a",
            "a|",
            "a|scan",
            "a|scan|not-an-id",
            "a|outbox|x",
            "a|jump",
        ] {
            assert_eq!(Wake::decode(odd), None, "{odd}");
        }
    }
}
