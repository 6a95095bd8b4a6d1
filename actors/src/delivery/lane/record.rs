//! The record stage: an answer judged, the breaker told, the attempt and
//! the event's outcome written (a success queued for the write behind).

use std::sync::atomic::Ordering;
use std::time::Duration;

use entity::{DeliveryOutcome, ErrorClass, event};
use tracing::{info, warn};

use super::super::BREAKER_CALL_MS;
use super::batch::LaneContext;
use super::judge::{Judgement, judge};
use super::{Flow, Pipeline};
use crate::breaker::Permit;
use crate::breaker::actor::{BreakerMsg, Change, Reported};
use crate::clock::{millis, now_ms};
use crate::signing::Signed;
use crate::store::StoreError;
use crate::store::delivery::{Attempt, EventOutcome, SentRequest};
use crate::webhook_client::{Answer, NoAnswer};

/// Notifications (`sync_failed`, `synced`) are best effort: after this many
/// failed attempts they are skipped, so file events behind them do not wait
/// out a long backoff.
const NOTIFICATION_MAX_ATTEMPTS: u32 = 3;

/// One request as it went out, for the record stage.
pub(super) struct Sent {
    pub(super) attempted_at: i64,
    /// Its signing timestamp and `traceparent`, kept with the attempt.
    pub(super) request: SentRequest,
    /// The chunk's index, when the event is chunked.
    pub(super) chunk_index: Option<i32>,
    /// The event's last (or only) part.
    pub(super) last: bool,
    /// Sent as the breaker's probe: a failure does not use up an attempt.
    pub(super) probe: bool,
}

impl Sent {
    /// Part `index` of `parts`, signed as `signed`, going out now.
    pub(super) fn now(
        signed: &Signed,
        index: usize,
        parts: usize,
        chunked: bool,
        probe: bool,
    ) -> Self {
        Self {
            attempted_at: now_ms(),
            request: SentRequest {
                timestamp: signed.timestamp,
                traceparent: signed
                    .headers
                    .get("traceparent")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned),
            },
            chunk_index: chunked.then(|| i32::try_from(index).unwrap_or(i32::MAX)),
            last: index + 1 == parts,
            probe,
        }
    }
}

/// How long an event whose endpoint the configuration forbids waits before
/// the lane looks again (its app may have changed its base URL meanwhile).
const REFUSED_WAIT: Duration = Duration::from_secs(60);

impl Pipeline {
    /// The record stage: judges the answer, tells the breaker, writes the
    /// attempt and the event's outcome. `Next` goes on with the next part.
    pub(super) async fn record(
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
                // A broker's acknowledgement has no status: its words are
                // the excerpt.
                (!answer.from_broker).then_some(answer.status),
                answer.latency,
                Some(answer.excerpt.clone()),
            ),
            // A broker's refusal (or its TLS failure) is recorded in its
            // words.
            Err(no_answer)
                if matches!(
                    no_answer.class,
                    ErrorClass::Broker | ErrorClass::Rejected | ErrorClass::Tls
                ) =>
            {
                (None, no_answer.latency, Some(no_answer.message.clone()))
            }
            Err(no_answer) => (None, no_answer.latency, None),
        };
        let attempt = |class: Option<ErrorClass>| Attempt {
            chunk_index: sent.chunk_index,
            status_code: status.map(i32::from),
            latency_ms: millis(latency),
            response_excerpt: excerpt.clone().filter(|e| !e.is_empty()),
            request: Some(sent.request.clone()),
            ..attempt_row(event, sent.attempted_at, class)
        };
        let (outcome, label, class) = match judgement {
            Judgement::Delivered => {
                self.metrics
                    .attempt(span, DeliveryOutcome::Delivered, Some(latency));
                self.breaker_success().await?;
                if sent.last && event.status == entity::EventStatus::Dead {
                    // A dead event's probe got through: written at once, as
                    // its subscription resumes.
                    Box::pin(self.store.record_attempt(
                        &self.lease,
                        event,
                        attempt(None),
                        EventOutcome::Delivered,
                    ))
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
                (outcome, DeliveryOutcome::Gone, ErrorClass::HttpStatus)
            }
            Judgement::Throttled(wait) => {
                let _ = self.breaker.cast(BreakerMsg::Inconclusive);
                let attempts = u32::try_from(event.attempts).unwrap_or(0);
                let wait = wait.unwrap_or_else(|| context.backoff.delay(attempts));
                let outcome = EventOutcome::Retry {
                    at: now_ms() + millis(wait),
                    error: format!(
                        "the endpoint answered {}",
                        status.map_or_else(String::new, |s| s.to_string())
                    ),
                    counted: false,
                };
                (
                    outcome,
                    DeliveryOutcome::RateLimited,
                    ErrorClass::HttpStatus,
                )
            }
            Judgement::Refused(error) => {
                // No attempt was made: none is recorded, none is counted,
                // and the breaker is not told.
                Box::pin(self.flush()).await?;
                let at = now_ms() + millis(REFUSED_WAIT);
                warn!(app = %self.app_id, subscription = %event.subscription_id, %error, "webhook not sent");
                Box::pin(self.store.hold_refused(&self.lease, event, at, &error)).await?;
                return Ok(Flow::Stop(Some(at)));
            }
            Judgement::Failed {
                class,
                ref error,
                endpoint_down,
            } => {
                if endpoint_down {
                    Box::pin(self.breaker_failure(class, error)).await?;
                } else {
                    self.breaker_success().await?;
                }
                let outcome = self
                    .failure_outcome(context, event, error.clone(), sent.probe)
                    .await;
                let label = match outcome {
                    EventOutcome::Dead { .. } => DeliveryOutcome::Dead,
                    _ => DeliveryOutcome::Failed,
                };
                (outcome, label, class)
            }
        };
        self.metrics.attempt(span, label, Some(latency));
        Box::pin(self.stop(event, attempt(Some(class)), outcome)).await
    }

    pub(super) async fn give_up(
        &mut self,
        event: &event::Model,
        class: ErrorClass,
        error: String,
    ) -> Result<Flow, StoreError> {
        let attempt = attempt_row(event, now_ms(), Some(class));
        self.metrics
            .attempt(&tracing::Span::none(), DeliveryOutcome::Dead, None);
        self.stop(event, attempt, EventOutcome::Dead { error })
            .await
    }

    pub(super) async fn stop(
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
            EventOutcome::Retry { at, .. } => Flow::Retry(*at),
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
    pub(super) async fn failure_outcome(
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
            Box::pin(self.store.mark_app_health(&self.app_id, false, 0)).await?;
            info!(app = %self.app_id, "endpoint answers again; breaker closed");
        }
        Ok(())
    }

    async fn breaker_failure(&self, class: ErrorClass, error: &str) -> Result<(), StoreError> {
        let reported = ractor::call_t!(
            self.breaker,
            |reply| BreakerMsg::Failed {
                class,
                error: error.to_owned(),
                reply,
            },
            BREAKER_CALL_MS
        );
        let Ok(reported) = reported else {
            return Ok(());
        };
        if reported.change == Change::Opened {
            warn!(app = %self.app_id, class = %class, "endpoint failing; breaker open");
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

/// An attempt of `event` at `attempted_at` that sent no request (or whose
/// answer the caller fills in).
pub(super) fn attempt_row(
    event: &event::Model,
    attempted_at: i64,
    error_class: Option<ErrorClass>,
) -> Attempt {
    Attempt {
        event_id: event.id.clone(),
        chunk_index: None,
        attempted_at,
        status_code: None,
        latency_ms: 0,
        error_class,
        response_excerpt: None,
        request: None,
    }
}
