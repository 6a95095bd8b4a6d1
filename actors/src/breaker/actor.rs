//! A circuit breaker as an actor: the single owner of one breaker's state
//! (an app's endpoint). The lanes that send to the endpoint ask it before
//! each request and tell it how the request went; they never share the
//! state. While open, every lane is told to wait; once the cooldown is over,
//! exactly one lane is granted the probe, however many wait, and the others
//! wait for its outcome: closed on success, open again with a doubled
//! cooldown on failure (see [`super::on_failure`]).
//!
//! The state is the persisted row: loaded when the actor starts, written at
//! every change. The probe is claimed in the database too
//! (`Store::claim_breaker_probe`, `breakers.probe_until`), so several
//! instances sharing one database send one probe between them.

use std::time::Duration;

use entity::breaker;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tracing::{info, warn};

use super::{BreakerPolicy, CLOSED, Permit, on_failure, permit};
use crate::clock::now_ms;
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
        class: String,
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
    pub kind: &'static str,
    pub subject: String,
    pub policy: BreakerPolicy,
    /// How long a granted probe may take before another may go.
    pub probe_timeout: Duration,
}

pub struct BreakerActor;

pub struct BreakerState {
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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reported {
    pub change: Change,
    /// The breaker is open (or half-open) after the report.
    pub open: bool,
}

impl BreakerState {
    fn millis(duration: Duration) -> i64 {
        i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
    }

    async fn ask(&mut self, reserve: bool) -> Result<Permit, StoreError> {
        let now = now_ms();
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
        let probe_until = now + Self::millis(self.args.probe_timeout);
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

    async fn failed(&mut self, class: &str, error: &str) -> Result<Change, StoreError> {
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
    type State = BreakerState;
    type Arguments = BreakerArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: BreakerArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let row = args.store.breaker(args.kind, &args.subject).await?;
        Ok(BreakerState { args, row })
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
                });
                change
            }
            BreakerMsg::Failed {
                class,
                error,
                reply,
            } => {
                let change = state.failed(&class, &error).await?;
                let _ = reply.send(Reported {
                    change,
                    open: state.row.as_ref().is_some_and(|row| row.state != CLOSED),
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
                warn!(kind = state.args.kind, subject = %state.args.subject, "breaker open")
            }
            Change::Closed => {
                info!(kind = state.args.kind, subject = %state.args.subject, "breaker closed")
            }
            Change::None => {}
        }
        Ok(())
    }
}
