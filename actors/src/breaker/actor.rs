//! A circuit breaker as an actor: the single owner of one breaker's state
//! (an app's endpoint, or a repository's remote). Those who use the endpoint
//! (an app's lanes, a repository's watcher) ask it before each request and
//! tell it how the request went; they never share the state. The actor
//! publishes one flag, whether it is clear (closed, no failure counted), so
//! that while all is well a request costs no message at all. While open,
//! every lane is told to wait; once the cooldown is over,
//! exactly one lane is granted the probe, however many wait, and the others
//! wait for its outcome: closed on success, open again with a doubled
//! cooldown on failure (see [`super::on_failure`]).
//!
//! The state is the persisted row: loaded when the actor starts (before it
//! answers anything), written at every change. The probe is claimed in the database too
//! (`Store::claim_breaker_probe`, `breakers.probe_until`), so several
//! instances sharing one database send one probe between them.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use entity::{BreakerKind, ErrorClass, breaker};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tracing::{info, warn};

use super::{BreakerPolicy, Permit, on_failure, permit};
use crate::clock::{millis, now_ms};
use crate::store::{Store, StoreError};

/// Messages of a breaker actor.
#[derive(Debug)]
pub enum BreakerMsg {
    /// May a request go now? A `Probe` answer reserves the one probe: its
    /// holder must report the outcome.
    Ask(RpcReplyPort<Permit>),
    /// The same answer without reserving anything (planning, not sending).
    Peek(RpcReplyPort<Permit>),
    /// A request went through: the breaker closes.
    Succeeded(RpcReplyPort<Reported>),
    /// A request failed in a way that says the endpoint is down.
    Failed {
        class: ErrorClass,
        error: String,
        reply: RpcReplyPort<Reported>,
    },
    /// A request ended without saying anything of the endpoint's health
    /// (e.g. a `Retry-After`): a probe it held is released.
    Inconclusive,
}

/// What a breaker owns and how it behaves.
#[derive(Debug, Clone)]
pub struct BreakerArgs {
    pub store: Store,
    pub kind: BreakerKind,
    pub subject: String,
    pub policy: BreakerPolicy,
    /// How long a granted probe may take before another may go.
    pub probe_timeout: Duration,
    /// Set while the breaker is closed with no failure counted: then asking
    /// answers `Proceed` and a success changes nothing, so a caller that
    /// reads it true may skip both messages (a lane does, once per event).
    /// Owners create it unset: the breaker sets it once it has loaded the
    /// stored row.
    pub clear: Arc<AtomicBool>,
}

pub struct BreakerActor;

pub struct BreakerActorState {
    args: BreakerArgs,
    /// The persisted row; `None` while closed.
    row: Option<breaker::Model>,
}

/// What a change did, for the owner of the breaker (an app's health).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    None,
    Opened,
    Closed,
}

/// The answer to a reported outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reported {
    pub change: Change,
    /// The breaker is open (or half-open) after the report.
    pub open: bool,
    /// The breaker's state after the report; `None` while closed.
    pub row: Option<breaker::Model>,
}

impl BreakerActorState {
    /// Tells the callers whether the breaker is clear (see [`BreakerArgs::clear`]).
    fn publish(&self) {
        self.args.clear.store(self.row.is_none(), Ordering::Release);
    }

    async fn ask(&mut self, reserve: bool) -> Result<Permit, StoreError> {
        let now = now_ms();
        if let Permit::WaitUntil(_) = permit(self.row.as_ref(), now) {
            // An operator's reset, or another instance's probe, may have
            // closed it meanwhile: the stored row decides.
            self.row = self
                .args
                .store
                .breaker(self.args.kind, &self.args.subject)
                .await?;
        }
        match permit(self.row.as_ref(), now) {
            Permit::Probe => {}
            other => return Ok(other),
        }
        let probe_out = self.row.as_ref().and_then(|row| row.probe_until);
        if let Some(until) = probe_out.filter(|until| *until > now) {
            return Ok(Permit::WaitUntil(until));
        }
        if !reserve {
            return Ok(Permit::Probe);
        }
        // Claimed on the stored row: another instance may hold it, or may
        // have closed the breaker meanwhile.
        let probe_until = now + millis(self.args.probe_timeout);
        if self
            .args
            .store
            .claim_breaker_probe(self.args.kind, &self.args.subject, probe_until)
            .await?
        {
            if let Some(row) = self.row.as_mut() {
                row.probe_until = Some(probe_until);
            }
            return Ok(Permit::Probe);
        }
        self.row = self
            .args
            .store
            .breaker(self.args.kind, &self.args.subject)
            .await?;
        Ok(match permit(self.row.as_ref(), now) {
            Permit::Probe => Permit::WaitUntil(
                self.row
                    .as_ref()
                    .and_then(|row| row.probe_until)
                    .unwrap_or(probe_until),
            ),
            other => other,
        })
    }

    /// Lets another request probe at once (the probe's holder gave up
    /// without learning anything).
    async fn release_probe(&mut self) -> Result<(), StoreError> {
        if let Some(row) = self.row.as_mut().filter(|row| row.probe_until.is_some()) {
            row.probe_until = None;
            self.args.store.save_breaker(row.clone()).await?;
        }
        Ok(())
    }

    async fn succeeded(&mut self) -> Result<Change, StoreError> {
        if self.row.take().is_none() {
            return Ok(Change::None);
        }
        self.args
            .store
            .close_breaker(self.args.kind, &self.args.subject)
            .await?;
        Ok(Change::Closed)
    }

    async fn failed(&mut self, class: ErrorClass, error: &str) -> Result<Change, StoreError> {
        let (row, opened) = on_failure(
            self.row.take(),
            self.args.kind,
            &self.args.subject,
            self.args.policy,
            now_ms(),
            class,
            error,
        );
        self.args.store.save_breaker(row.clone()).await?;
        let change = if opened { Change::Opened } else { Change::None };
        self.row = Some(row);
        Ok(change)
    }
}

impl Actor for BreakerActor {
    type Msg = BreakerMsg;
    type State = BreakerActorState;
    type Arguments = BreakerArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: BreakerArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(BreakerActorState { args, row: None })
    }

    /// Loads the stored row before the first message is handled, in the
    /// breaker's own task: whoever spawns a breaker (a scheduler starting a
    /// watcher for a scan) does not wait for the database, and a database
    /// that fails here fails the breaker, a supervision event for its owner.
    async fn post_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        state.row = state
            .args
            .store
            .breaker(state.args.kind, &state.args.subject)
            .await?;
        state.publish();
        Ok(())
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let change = match message {
            BreakerMsg::Ask(reply) => {
                let _ = reply.send(state.ask(true).await?);
                Change::None
            }
            BreakerMsg::Peek(reply) => {
                let _ = reply.send(state.ask(false).await?);
                Change::None
            }
            BreakerMsg::Succeeded(reply) => {
                let change = state.succeeded().await?;
                let _ = reply.send(Reported {
                    change,
                    open: state.row.is_some(),
                    row: state.row.clone(),
                });
                change
            }
            BreakerMsg::Failed {
                class,
                error,
                reply,
            } => {
                let change = state.failed(class, &error).await?;
                let _ = reply.send(Reported {
                    change,
                    open: state
                        .row
                        .as_ref()
                        .is_some_and(|row| row.state != entity::BreakerStatus::Closed),
                    row: state.row.clone(),
                });
                change
            }
            BreakerMsg::Inconclusive => {
                state.release_probe().await?;
                Change::None
            }
        };
        match change {
            Change::Opened => {
                warn!(kind = %state.args.kind, subject = %state.args.subject, "breaker open")
            }
            Change::Closed => {
                info!(kind = %state.args.kind, subject = %state.args.subject, "breaker closed")
            }
            Change::None => {}
        }
        state.publish();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support;

    /// Far longer than a test takes: only [`cool_down`] ends it.
    const COOLDOWN: Duration = Duration::from_secs(60);

    async fn store(dir: &std::path::Path) -> Store {
        test_support::store(&test_support::sqlite_url(dir)).await
    }

    async fn spawn(store: &Store) -> ActorRef<BreakerMsg> {
        spawn_with(store, Arc::default()).await
    }

    async fn spawn_with(store: &Store, clear: Arc<AtomicBool>) -> ActorRef<BreakerMsg> {
        let args = BreakerArgs {
            store: store.clone(),
            kind: BreakerKind::Delivery,
            subject: "app_test".into(),
            policy: BreakerPolicy {
                threshold: 2,
                cooldown: COOLDOWN,
            },
            probe_timeout: Duration::from_secs(30),
            clear,
        };
        let breaker = Actor::spawn(None, BreakerActor, args)
            .await
            .expect("the breaker starts")
            .0;
        // Its first answer comes once the stored row is loaded and published.
        ractor::call_t!(breaker, BreakerMsg::Peek, 5_000).expect("an answer");
        breaker
    }

    async fn ask(breaker: &ActorRef<BreakerMsg>) -> Permit {
        ractor::call_t!(breaker, BreakerMsg::Ask, 5_000).expect("an answer")
    }

    async fn fail(breaker: &ActorRef<BreakerMsg>) -> Reported {
        ractor::call_t!(
            breaker,
            |reply| BreakerMsg::Failed {
                class: ErrorClass::HttpStatus,
                error: "the endpoint answered 500".into(),
                reply,
            },
            5_000
        )
        .expect("an answer")
    }

    /// Moves the clock past the breaker's cooldown, without waiting for it.
    /// Time is paused only for the jump: paused, tokio would also jump to
    /// the next timer whenever the runtime idles, such as a call's timeout
    /// while the breaker waits on SQLite's thread.
    async fn cool_down(until: i64) {
        let wait = u64::try_from((until - now_ms()).max(0)).unwrap_or(0) + 5;
        tokio::time::pause();
        tokio::time::advance(Duration::from_millis(wait)).await;
        tokio::time::resume();
    }

    #[tokio::test]
    async fn one_probe_per_cooldown_a_growing_cooldown_and_state_that_survives_a_restart() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = store(dir.path()).await;
        let breaker = spawn(&store).await;
        assert_eq!(ask(&breaker).await, Permit::Proceed);
        assert_eq!(fail(&breaker).await.change, Change::None);
        let opened = fail(&breaker).await;
        assert_eq!(opened.change, Change::Opened);
        assert!(opened.open);
        let Permit::WaitUntil(first_until) = ask(&breaker).await else {
            panic!("an open breaker holds requests");
        };

        // The cooldown ends: of eight lanes asking at once, one probes.
        cool_down(first_until).await;
        let mut lanes = tokio::task::JoinSet::new();
        for _ in 0..8 {
            let breaker = breaker.clone();
            lanes.spawn(async move { ask(&breaker).await });
        }
        let answers: Vec<Permit> = lanes.join_all().await;
        let probes = answers.iter().filter(|p| **p == Permit::Probe).count();
        assert_eq!(probes, 1, "{answers:?}");
        assert!(
            answers
                .iter()
                .all(|p| matches!(p, Permit::Probe | Permit::WaitUntil(_)))
        );

        // The probe fails: open again, for twice as long.
        assert_eq!(fail(&breaker).await.change, Change::None);
        let row = store
            .breaker(BreakerKind::Delivery, "app_test")
            .await
            .expect("query")
            .expect("persisted");
        let cooldown = row.cooldown_until.expect("until") - row.opened_at.expect("opened");
        assert_eq!(cooldown, 2 * millis(COOLDOWN), "the cooldown doubled");

        // A new actor (a restart, another instance) starts from the stored
        // state: still open, until the same time.
        breaker.stop(None);
        let again = spawn(&store).await;
        assert_eq!(
            ractor::call_t!(again, BreakerMsg::Peek, 5_000).expect("an answer"),
            Permit::WaitUntil(row.cooldown_until.expect("until"))
        );
        cool_down(row.cooldown_until.expect("until")).await;
        assert_eq!(ask(&again).await, Permit::Probe);
        let closed = ractor::call_t!(again, BreakerMsg::Succeeded, 5_000).expect("an answer");
        assert_eq!(closed.change, Change::Closed);
        assert!(!closed.open);
        assert_eq!(ask(&again).await, Permit::Proceed);
        assert!(
            store
                .breaker(BreakerKind::Delivery, "app_test")
                .await
                .expect("query")
                .is_none()
        );
    }

    #[tokio::test]
    async fn the_clear_flag_is_set_only_while_closed_with_no_failure_counted() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = store(dir.path()).await;
        let clear = Arc::new(AtomicBool::new(false));
        let breaker = spawn_with(&store, clear.clone()).await;
        let is_clear = || clear.load(Ordering::Acquire);
        assert!(is_clear(), "a breaker with no stored row starts clear");

        // One failure below the threshold: still closed, but no longer
        // clear, so a lane's success must reach the actor to reset it.
        assert_eq!(fail(&breaker).await.change, Change::None);
        assert!(!is_clear());
        let reset = ractor::call_t!(breaker, BreakerMsg::Succeeded, 5_000).expect("an answer");
        assert!(!reset.open);
        assert!(is_clear(), "a success clears the count");

        fail(&breaker).await;
        assert_eq!(fail(&breaker).await.change, Change::Opened);
        assert!(!is_clear(), "an open breaker is never clear");

        // Restarted from the stored open row: not clear either.
        breaker.stop(None);
        let restarted = Arc::new(AtomicBool::new(true));
        let _again = spawn_with(&store, restarted.clone()).await;
        assert!(!restarted.load(Ordering::Acquire));
    }
}
