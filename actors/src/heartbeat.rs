//! The instance heartbeat: this instance's row in `instances` (id, version,
//! host, started, last seen), written at start and every
//! `cluster.heartbeat_interval`, so operators see every instance sharing the
//! database and which are alive. Rows of instances not seen for a day are
//! deleted. A failed write is logged and tried again on the next beat: a
//! database outage is not this actor's to escalate.

use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio_util::task::AbortOnDropHandle;
use tracing::{debug, warn};

use crate::clock::now_ms;
use crate::store::Store;
use crate::store::instances::Heartbeat;

/// Rows of instances not seen for this long are deleted.
pub const FORGET_AFTER_MS: i64 = 24 * 3600 * 1000;
/// How often those rows are looked for.
const PRUNE_EVERY_MS: i64 = 3600 * 1000;

/// Messages of the heartbeat actor.
#[derive(Debug)]
pub enum HeartbeatMsg {
    /// Record that this instance is alive now.
    Beat,
}

pub struct HeartbeatActor;

pub struct HeartbeatArgs {
    pub store: Store,
    pub heartbeat: Heartbeat,
    pub interval: Duration,
}

pub struct HeartbeatState {
    args: HeartbeatArgs,
    /// Aborted when the state is dropped: a panic in the actor skips
    /// `post_stop`, not the drop.
    _ticker: AbortOnDropHandle<()>,
    last_prune: i64,
}

impl Actor for HeartbeatActor {
    type Msg = HeartbeatMsg;
    type State = HeartbeatState;
    type Arguments = HeartbeatArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: HeartbeatArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let ticker =
            AbortOnDropHandle::new(myself.send_interval(args.interval, || HeartbeatMsg::Beat));
        myself.send_message(HeartbeatMsg::Beat)?;
        Ok(HeartbeatState {
            args,
            _ticker: ticker,
            last_prune: 0,
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            HeartbeatMsg::Beat => {
                let now = now_ms();
                let store = &state.args.store;
                if let Err(err) = store.record_heartbeat(&state.args.heartbeat, now).await {
                    warn!(error = %err, "could not record this instance's heartbeat");
                }
                if now - state.last_prune >= PRUNE_EVERY_MS {
                    state.last_prune = now;
                    match store.prune_instances(now - FORGET_AFTER_MS).await {
                        Ok(0) => {}
                        Ok(n) => debug!(deleted = n, "instances not seen for a day forgotten"),
                        Err(err) => warn!(error = %err, "could not delete old instance rows"),
                    }
                }
            }
        }
        Ok(())
    }
}
