//! One event's way through the lane, top to bottom: the breaker asked,
//! the body rendered (or taken from the read-ahead), then for each request
//! (one, or every chunk from the first): sign, send, and record (see
//! `record.rs`).

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use entity::{DeliveryOutcome, ErrorClass, event};
use futures::future::Either;
use reqwest::header::{HeaderMap, HeaderValue};
use tracing::warn;

use super::super::BREAKER_CALL_MS;
use super::super::content::Found;
use super::ahead::Ahead;
use super::batch::LaneContext;
use super::prepared::{Prepared, preparer};
use super::record::{Sent, attempt_row};
use super::{Flow, Pipeline};
use crate::breaker::Permit;
use crate::breaker::actor::BreakerMsg;
use crate::clock::{millis, now_ms};
use crate::ids::AppId;
use crate::payload;
use crate::signing::Signed;
use crate::store::StoreError;
use crate::store::delivery::EventOutcome;
use crate::telemetry;
use crate::webhook_client::{Answer, Endpoint, NoAnswer, WebhookClient};

/// The shortest wait before content the remote could not give is asked for
/// again.
const CONTENT_RETRY_MIN: Duration = Duration::from_secs(5);

/// An app's webhook URLs (`{base_url}/{endpoint}`) as the client parsed
/// them, kept while the app's base URL stays the same: parsing one (the
/// URL, its host, the check of an address in it) is not work to repeat for
/// every webhook.
#[derive(Debug, Default)]
pub(super) struct Endpoints {
    base_url: String,
    parsed: Vec<(&'static str, Arc<Endpoint>)>,
}

impl Endpoints {
    pub(super) fn get(
        &mut self,
        client: &WebhookClient,
        base_url: &str,
        name: &'static str,
    ) -> &Arc<Endpoint> {
        if self.base_url != base_url {
            base_url.clone_into(&mut self.base_url);
            self.parsed.clear();
        }
        let at = match self.parsed.iter().position(|(known, _)| *known == name) {
            Some(at) => at,
            None => {
                let url = format!("{}/{name}", base_url.trim_end_matches('/'));
                self.parsed.push((name, Arc::new(client.endpoint(&url))));
                self.parsed.len() - 1
            }
        };
        &self.parsed[at].1
    }
}

impl Pipeline {
    /// Delivers `event`; `upcoming`: the rest of its batch, in order.
    pub(super) async fn deliver_event(
        &mut self,
        context: &LaneContext,
        event: &event::Model,
        upcoming: &VecDeque<Arc<event::Model>>,
    ) -> Result<Flow, StoreError> {
        let probe = match self.ask_breaker().await {
            Ok(probe) => probe,
            Err(until) => return Ok(Flow::Stop(Some(until))),
        };
        let flow = self.send_event(context, event, upcoming, probe).await;
        self.probe_ended(probe, matches!(flow, Ok(Flow::Next)));
        flow
    }

    /// Whether the next request may go: `Ok(true)` as the breaker's probe,
    /// `Err(until)` when it must wait.
    pub(super) async fn ask_breaker(&self) -> Result<bool, i64> {
        if self.breaker_clear.load(Ordering::Acquire) {
            return Ok(false);
        }
        match ractor::call_t!(self.breaker, BreakerMsg::Ask, BREAKER_CALL_MS) {
            Ok(Permit::Proceed) => Ok(false),
            Ok(Permit::Probe) => Ok(true),
            Ok(Permit::WaitUntil(until)) => Err(until),
            // The breaker is restarting with its app actor: try again soon.
            Err(_) => Err(now_ms() + 1_000),
        }
    }

    /// After the breaker's probe: when its event did not go through
    /// (`delivered` false), the breaker may let another probe go.
    pub(super) fn probe_ended(&self, probe: bool, delivered: bool) {
        if probe && !delivered {
            let _ = self.breaker.cast(BreakerMsg::Inconclusive);
        }
    }

    /// The render stage: the event's body (or chunks), read ahead or made
    /// now. `Err` carries the flow of an event given up on.
    async fn render(
        &mut self,
        context: &LaneContext,
        event: &event::Model,
    ) -> Result<Result<Prepared, Flow>, StoreError> {
        let ahead = match self.further.take_for(event) {
            Some(ahead) => ahead.rendered_for(event).await,
            None => None,
        };
        let made = match ahead {
            Some(rendered) => rendered.map_err(|err| Unrendered::Payload(err.to_string())),
            None => {
                Box::pin(produce(
                    context,
                    event,
                    self.config.chunking,
                    self.config.max_file_bytes,
                ))
                .await
            }
        };
        match made {
            Ok(prepared) => Ok(Ok(prepared)),
            Err(why) => Box::pin(self.unrendered(context, event, why))
                .await
                .map(Err),
        }
    }

    /// Records an event whose body could not be made: given up on when its
    /// content or body cannot be made, retried (without using up an
    /// attempt) when the remote could not be asked, and a failed attempt
    /// (the app's backoff, dead after `delivery.max_attempts`) when its
    /// LFS server did not give the object.
    pub(super) async fn unrendered(
        &mut self,
        context: &LaneContext,
        event: &event::Model,
        why: Unrendered,
    ) -> Result<Flow, StoreError> {
        match why {
            Unrendered::Gone(error) => self.give_up(event, ErrorClass::ContentMissing, error).await,
            Unrendered::Payload(error) => self.give_up(event, ErrorClass::Payload, error).await,
            Unrendered::Unavailable(error) => {
                // Not the event's fault, nor the app's: wait for the remote
                // without using up attempts.
                let attempts = u32::try_from(event.attempts).unwrap_or(0);
                let at = now_ms() + millis(context.backoff.delay(attempts).max(CONTENT_RETRY_MIN));
                let attempt = attempt_row(event, now_ms(), Some(ErrorClass::ContentUnavailable));
                warn!(event = %event.id, %error, "content unavailable; retrying");
                let outcome = EventOutcome::Retry {
                    at,
                    error,
                    counted: false,
                };
                self.stop(event, attempt, outcome).await
            }
            Unrendered::Failed { class, error } => {
                warn!(event = %event.id, %error, "LFS object not fetched");
                // Nothing reached the endpoint: not the breaker's probe.
                let outcome = self.failure_outcome(context, event, error, false).await;
                let label = match outcome {
                    EventOutcome::Dead { .. } => DeliveryOutcome::Dead,
                    _ => DeliveryOutcome::Failed,
                };
                self.metrics.attempt(&tracing::Span::none(), label, None);
                let attempt = attempt_row(event, now_ms(), Some(class));
                self.stop(event, attempt, outcome).await
            }
        }
    }

    /// Render, then for each part (one, or every chunk from the first):
    /// sign, send, record. Before a request goes out the lane starts what
    /// does not depend on its answer, to run beside it: the files after it
    /// read and rendered ahead (see `Further`), the deliveries queued so
    /// far written and, near a batch's end, the next batch read.
    async fn send_event(
        &mut self,
        context: &LaneContext,
        event: &event::Model,
        upcoming: &VecDeque<Arc<event::Model>>,
        probe: bool,
    ) -> Result<Flow, StoreError> {
        let mut prepared = match self.render(context, event).await? {
            Ok(prepared) => prepared,
            Err(flow) => return Ok(flow),
        };
        let endpoint = prepared.rendered.endpoint;
        let (parts, chunked) = (prepared.rendered.len(), prepared.rendered.is_chunked());
        // Every attempt of a chunked event sends the whole file from chunk 0
        // (as Docora resends the whole file), as a transfer of its own: its
        // chunks carry the chunk id of this rendering, which is this
        // attempt's alone (rendered now, or read ahead for this event and
        // taken once), while their webhook ids are the same on every attempt.
        for index in 0..parts {
            // A long chunked file keeps the lease alive between chunks.
            if index > 0 && !self.renew_lease().await? {
                return Ok(Flow::Stop(None));
            }
            let (span, signed) =
                sign_request(&mut prepared, context, event, index, &self.app_id).await;
            let sent = Sent::now(&signed, index, parts, chunked, probe);
            let Signed { body, headers, .. } = signed;
            if sent.last {
                let config = &self.config;
                let in_flight = event.size.unwrap_or(0);
                self.further.start(upcoming, config, in_flight, |run| {
                    Ahead::run(context, run, config)
                });
            }
            // A lane that finds its lease lost stops before its next send.
            self.write_behind().await?;
            // The request is not instrumented with the span: nothing inside
            // it logs, and entering and leaving the span at each of its polls
            // cost more than the rest of the attempt's telemetry (the span's
            // duration runs from its creation to its close all the same).
            let answer = send(
                context,
                &self.client,
                &mut self.endpoints,
                endpoint,
                headers,
                body,
            )
            .await;
            if let Ok(answer) = &answer {
                telemetry::answered(&span, answer.status);
            }
            let flow = self.record(context, event, &sent, answer, &span).await?;
            if !matches!(flow, Flow::Next) {
                return Ok(flow);
            }
        }
        Ok(Flow::Next)
    }
}

/// One request of the lane sent: POSTed to the app's endpoint `endpoint`,
/// or, for a broker app, published to its broker.
pub(super) fn send<'a>(
    context: &'a LaneContext,
    client: &'a WebhookClient,
    endpoints: &'a mut Endpoints,
    endpoint: &'static str,
    headers: HeaderMap,
    body: bytes::Bytes,
) -> impl Future<Output = Result<Answer, NoAnswer>> + 'a {
    match &context.publisher {
        // Boxed: a broker client's future is several times a request's,
        // and every future the lane awaits would carry its size.
        Some(publisher) => Either::Left(Box::pin(publisher.publish(
            &context.repository.repository_id,
            endpoint,
            headers,
            body,
        ))),
        None => {
            let endpoint = endpoints.get(client, &context.base_url, endpoint);
            Either::Right(client.post_to(endpoint, headers, body))
        }
    }
}

/// Why an event's body could not be made.
pub(super) enum Unrendered {
    /// Its content cannot come back (the remote lost the commit).
    Gone(String),
    /// Its content may come back: the remote could not be asked now.
    Unavailable(String),
    /// Its LFS object was not given this time: a failed attempt.
    Failed { class: ErrorClass, error: String },
    /// The body could not be built.
    Payload(String),
}

/// The render stage's own work: an event's body (its content read from the
/// mirror, or fetched again from the remote) and its first request signed.
pub(super) async fn produce(
    context: &LaneContext,
    event: &event::Model,
    chunking: payload::Chunking,
    max_file_bytes: u64,
) -> Result<Prepared, Unrendered> {
    let prepare = |rendered: payload::Rendered| Prepared::new(rendered, event, &context.signer);
    let rendered = if payload::too_large(event, max_file_bytes) {
        payload::render_too_large(event, &context.repository).map(prepare)
    } else if event.kind.carries_content() {
        // Read and rendered (base64, JSON) on a blocking thread, from the
        // bytes libgit2 holds: a big file is never copied first.
        let render = preparer(Arc::new(event.clone()), context, chunking);
        match context.content.with(event, render).await {
            Found::Made(rendered) => rendered,
            Found::Gone(error) => return Err(Unrendered::Gone(error)),
            Found::Unavailable(error) => return Err(Unrendered::Unavailable(error)),
            Found::Failed { class, error } => return Err(Unrendered::Failed { class, error }),
        }
    } else {
        payload::render(event, &context.repository, None, chunking).map(prepare)
    };
    rendered.map_err(|err| Unrendered::Payload(err.to_string()))
}

/// Request `index` of an event, signed (the next one starts signing ahead),
/// with its span: one per request, in the trace of the scan that found the
/// change, whose `traceparent` the request carries. The span is for
/// OpenTelemetry only, and only built when exported
/// (`telemetry::TRACE_ONLY_SPANS`).
pub(super) async fn sign_request(
    prepared: &mut Prepared,
    context: &LaneContext,
    event: &event::Model,
    index: usize,
    app_id: &AppId,
) -> (tracing::Span, Signed) {
    let span = tracing::info_span!(
        parent: None,
        telemetry::DELIVERY_ATTEMPT_SPAN,
        "otel.kind" = "client",
        event = %event.id,
        app = %app_id,
        subscription = %event.subscription_id,
        kind = %event.kind,
        chunk = index,
    );
    telemetry::continue_trace(&span, event.trace_parent.as_deref());
    let mut signed = prepared.signed(&event.id, index, &context.signer).await;
    if index + 1 < prepared.rendered.len() {
        prepared.sign_ahead(&event.id, index + 1, &context.signer);
    }
    signed.headers.insert(
        "traceparent",
        // The value's own bytes become the header's, without a copy.
        HeaderValue::try_from(
            context
                .traces
                .outgoing(&span, event.trace_parent.as_deref()),
        )
        .expect("a traceparent is ASCII"),
    );
    (span, signed)
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
        assert_eq!(
            refused(&mut endpoints, "http://127.0.0.1:9/").await,
            ErrorClass::Ssrf
        );
        assert_eq!(
            refused(&mut endpoints, "http://127.0.0.1:9/").await,
            ErrorClass::Ssrf
        );
        endpoints.get(&client, "http://127.0.0.1:9/", "delete");
        assert_eq!(endpoints.parsed.len(), 2, "one parse per endpoint");
        // The app's base URL changed: its endpoints are parsed anew.
        assert_eq!(
            refused(&mut endpoints, "ftp://example.com").await,
            ErrorClass::Request
        );
        assert_eq!(endpoints.parsed.len(), 1);
        assert_eq!(
            refused(&mut endpoints, "http://127.0.0.1:9").await,
            ErrorClass::Ssrf
        );
    }
}
