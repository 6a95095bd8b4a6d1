//! A lane with a window (an app's `window` above 1): up to that many of the
//! subscription's events in flight at once, in order per path.
//!
//! - A path's events go one at a time, in `seq` order: an event waits while
//!   an earlier event of its path (or, for a rename, of either path) is in
//!   flight or waits.
//! - A failure holds back only its path: the event is retried at its time,
//!   and the path's later events wait for the lane's next pass, which starts
//!   again at the first undelivered event. Every other path keeps flowing.
//! - Events that concern no path (`sync_failed`, `synced`) wait until
//!   everything before them was delivered (later paths go on meanwhile); one
//!   behind a held path waits for the next pass.
//! - A dead event's probe goes alone, after everything before it and before
//!   everything after it (a dead event stops its subscription).
//! - How many are in flight follows the receiver ([`Congestion`]).
//!
//! Each event in flight is a task the lane owns ([`Pending`]): it renders the
//! body, then signs and sends its requests one after the other (one
//! transfer's chunks in order, stopping at the first that fails). The lane's
//! own task only decides what starts and records what landed, one event per
//! message, with the stages the one-at-a-time lane uses; a lane that stops
//! waits for what is in flight and records it, and one that is dropped
//! aborts it (its events stay pending, delivered again).

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use entity::{ErrorClass, event};
use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;

use super::super::congestion::{Congestion, Signal};
use super::super::{lease_ttl, probe_dead_before};
use super::batch::{BATCH, LaneContext, READ_NEXT_AT};
use super::deliver::{Endpoints, Unrendered, produce, sign_request};
use super::record::Sent;
use super::{Flow, LaneState, Pipeline, Step};
use crate::clock::now_ms;
use crate::ids::AppId;
use crate::owned::Pending;
use crate::payload;
use crate::signing::Signed;
use crate::store::StoreError;
use crate::telemetry;
use crate::webhook_client::{Answer, NoAnswer, WebhookClient};

/// Which of a lane's events may start, by their paths: the lane gives it
/// the events it reads, in `seq` order, and tells it how each one landed.
#[derive(Debug, Default)]
pub(super) struct PathOrder {
    /// Events read and not started, in `seq` order.
    waiting: VecDeque<event::Model>,
    /// Paths with an event in flight.
    busy: HashSet<String>,
    /// Paths held back for the rest of the pass, each with when its first
    /// held event is due again.
    held: HashMap<String, i64>,
    /// The lowest `seq` held back in this pass, and the earliest time one
    /// is due again: a notification after it waits for the next pass.
    held_from: Option<i64>,
    held_until: Option<i64>,
    /// The `seq` of each event in flight.
    in_flight: BTreeSet<i64>,
    /// The event in flight goes alone: nothing starts beside it.
    alone: bool,
    /// A dead event cannot be probed in this pass: nothing after it starts.
    /// `Some(None)`: it waits for its probe (or an operator).
    barrier: Option<Option<i64>>,
}

/// The paths an event concerns; none for a notification.
fn paths(event: &event::Model) -> impl Iterator<Item = &str> {
    event
        .path
        .as_deref()
        .into_iter()
        .chain(event.renamed_from.as_deref())
}

/// A dead event's probe goes alone: after everything before it, before
/// everything after it (a dead event stops its subscription).
fn goes_alone(event: &event::Model) -> bool {
    event.status == entity::EventStatus::Dead
}

impl PathOrder {
    pub(super) fn push(&mut self, events: impl IntoIterator<Item = event::Model>) {
        self.waiting.extend(events);
    }

    pub(super) fn waiting(&self) -> usize {
        self.waiting.len()
    }

    #[cfg(test)]
    fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Whether a dead event must wait for the next pass: nothing after it
    /// starts in this one.
    pub(super) fn blocked(&self) -> bool {
        self.barrier.is_some()
    }

    /// Whether an event was held back in this pass.
    pub(super) fn holds_any(&self) -> bool {
        !self.held.is_empty() || self.held_from.is_some() || self.barrier.is_some()
    }

    /// When the subscription is due again for what this pass held back.
    pub(super) fn retry_at(&self) -> Option<i64> {
        let held = self.held.values().copied().chain(self.held_until).min();
        match self.barrier {
            Some(Some(at)) => Some(held.map_or(at, |held| held.min(at))),
            _ => held,
        }
    }

    /// Whether every event before `seq` has landed, delivered.
    fn all_before(&self, seq: i64, waiting_before: bool) -> bool {
        !waiting_before
            && self.in_flight.first().is_none_or(|first| *first > seq)
            && self.held_from.is_none_or(|held| held > seq)
    }

    fn hold(&mut self, event: &event::Model, until: i64) {
        for path in paths(event) {
            self.held.entry(path.to_owned()).or_insert(until);
        }
        self.held_from = Some(self.held_from.map_or(event.seq, |held| held.min(event.seq)));
        self.held_until = Some(self.held_until.map_or(until, |held| held.min(until)));
    }

    /// The next event that may start now, marked in flight; `None` when
    /// every waiting event must wait (or none is left). `probe_dead_before`:
    /// dead events last tried before it are due for their probe.
    pub(super) fn next(
        &mut self,
        now: i64,
        probe_dead_before: Option<i64>,
    ) -> Option<event::Model> {
        if self.barrier.is_some() || self.alone {
            return None;
        }
        // Paths of events passed over in this look: a later event of theirs
        // must not overtake them.
        let mut passed: HashSet<String> = HashSet::new();
        let mut at = 0;
        while at < self.waiting.len() {
            let event = &self.waiting[at];
            if goes_alone(event) {
                let due = probe_dead_before.is_some_and(|before| event.next_attempt_at <= before);
                if at == 0 && self.in_flight.is_empty() && !self.holds_any() {
                    if due {
                        return self.start(at);
                    }
                    // It waits for its probe, and everything after it.
                    self.barrier = Some(None);
                }
                return None;
            }
            let held_until = paths(event).filter_map(|p| self.held.get(p)).min().copied();
            let retry_later = (event.next_attempt_at > now).then_some(event.next_attempt_at);
            if let Some(until) = held_until.or(retry_later) {
                // Its path waits for the next pass, and so does it: it stays
                // pending, and the next pass starts at it.
                let event = self.waiting.remove(at).expect("in range");
                self.hold(&event, until);
                continue;
            }
            if event.path.is_none() {
                // A notification waits for everything before it; later
                // paths go on meanwhile.
                if self.all_before(event.seq, at > 0) {
                    return self.start(at);
                }
                at += 1;
                continue;
            }
            if paths(event).any(|p| self.busy.contains(p) || passed.contains(p)) {
                passed.extend(paths(event).map(str::to_owned));
                at += 1;
                continue;
            }
            return self.start(at);
        }
        None
    }

    fn start(&mut self, at: usize) -> Option<event::Model> {
        let event = self.waiting.remove(at)?;
        self.alone = goes_alone(&event);
        self.busy.extend(paths(&event).map(str::to_owned));
        self.in_flight.insert(event.seq);
        Some(event)
    }

    /// Puts back an event [`PathOrder::next`] gave that did not start (the
    /// breaker said wait).
    pub(super) fn put_back(&mut self, event: event::Model) {
        self.release(&event);
        let at = self.waiting.partition_point(|e| e.seq < event.seq);
        self.waiting.insert(at, event);
    }

    /// An event landed: its paths are free again, or held until `retry_at`.
    pub(super) fn landed(&mut self, event: &event::Model, retry_at: Option<i64>) {
        self.release(event);
        if let Some(at) = retry_at {
            self.hold(event, at);
        }
    }

    fn release(&mut self, event: &event::Model) {
        if goes_alone(event) {
            self.alone = false;
        }
        for path in paths(event) {
            self.busy.remove(path);
        }
        self.in_flight.remove(&event.seq);
    }
}

/// One request as it went out and how it was answered.
struct Request {
    sent: Sent,
    answer: Result<Answer, NoAnswer>,
    span: tracing::Span,
}

/// An event back from its task.
struct Landed {
    event: event::Model,
    context: Arc<LaneContext>,
    probe: bool,
    /// The window was full when it started: its success may grow it.
    window_full: bool,
    /// Its requests, in order; `None`: the runtime shut its task down.
    transfer: Option<Result<Vec<Request>, Unrendered>>,
}

/// The windowed part of a lane's state.
pub(super) struct Windowed {
    order: PathOrder,
    /// The context of the last batch read: events start with the newest.
    context: Arc<LaneContext>,
    in_flight: FuturesUnordered<BoxFuture<'static, Landed>>,
    /// The app's URLs, shared with the tasks.
    endpoints: Arc<Mutex<Endpoints>>,
    congestion: Arc<Congestion>,
    /// The lane starts nothing more; its subscription is due again then.
    stopping: Option<Option<i64>>,
    /// The breaker's probe is in flight: nothing else starts until it lands.
    probing: bool,
}

impl Windowed {
    pub(super) fn new(
        context: LaneContext,
        events: impl IntoIterator<Item = event::Model>,
        congestion: Arc<Congestion>,
    ) -> Self {
        let mut order = PathOrder::default();
        order.push(events);
        Self {
            order,
            context: Arc::new(context),
            in_flight: FuturesUnordered::new(),
            endpoints: Arc::default(),
            congestion,
            stopping: None,
            probing: false,
        }
    }

    /// Starts events while the window has room.
    async fn fill(&mut self, pipeline: &Pipeline) {
        let window = self.congestion.window(self.context.window);
        while self.stopping.is_none() && !self.probing && self.in_flight.len() < window {
            let now = now_ms();
            let Some(event) = self
                .order
                .next(now, probe_dead_before(&pipeline.config, now))
            else {
                break;
            };
            let probe = match pipeline.ask_breaker().await {
                Ok(probe) => probe,
                Err(until) => {
                    self.order.put_back(event);
                    self.stopping = Some(Some(until));
                    break;
                }
            };
            self.probing = probe;
            let window_full = self.in_flight.len() + 1 >= window;
            self.start(pipeline, event, probe, window_full);
        }
    }

    fn start(&mut self, pipeline: &Pipeline, event: event::Model, probe: bool, window_full: bool) {
        let job = Job {
            context: self.context.clone(),
            chunking: pipeline.config.chunking,
            max_file_bytes: pipeline.config.max_file_bytes,
            client: pipeline.client.clone(),
            endpoints: self.endpoints.clone(),
            app_id: pipeline.app_id.clone(),
        };
        let context = self.context.clone();
        let task = Pending::spawn(transfer(job, event.clone(), probe));
        self.in_flight.push(Box::pin(async move {
            Landed {
                event,
                context,
                probe,
                window_full,
                transfer: task.wait().await,
            }
        }));
    }

    /// Records an event that landed, request by request, with the stages
    /// of the one-at-a-time lane, and frees its path or holds it back.
    async fn land(&mut self, pipeline: &mut Pipeline, landed: Landed) -> Result<(), StoreError> {
        let Landed {
            event,
            context,
            probe,
            window_full,
            transfer,
        } = landed;
        let flow = match transfer {
            None => Flow::Stop(Some(now_ms() + 1_000)),
            Some(Err(why)) => pipeline.unrendered(&context, &event, why).await?,
            Some(Ok(requests)) => {
                let mut flow = Flow::Next;
                for Request { sent, answer, span } in requests {
                    self.congestion.answered(
                        signal(&answer, window_full),
                        sent.attempted_at,
                        now_ms(),
                    );
                    flow = pipeline
                        .record(&context, &event, &sent, answer, &span)
                        .await?;
                    if !matches!(flow, Flow::Next) {
                        break;
                    }
                }
                flow
            }
        };
        if probe {
            self.probing = false;
            pipeline.probe_ended(probe, matches!(flow, Flow::Next));
        }
        match flow {
            Flow::Next => self.order.landed(&event, None),
            Flow::Retry(at) => self.order.landed(&event, Some(at)),
            Flow::Stop(at) => {
                self.order.landed(&event, None);
                self.stopping = match (self.stopping, at) {
                    (Some(Some(before)), Some(at)) => Some(Some(before.min(at))),
                    (Some(before), _) => Some(before),
                    (None, at) => Some(at),
                };
            }
        }
        pipeline.write_behind().await
    }

    /// Waits for what is in flight and records it (a lane stopping).
    pub(super) async fn land_all(&mut self, pipeline: &mut Pipeline) -> Result<(), StoreError> {
        self.stopping.get_or_insert(None);
        while let Some(landed) = self.in_flight.next().await {
            self.land(pipeline, landed).await?;
        }
        Ok(())
    }
}

/// What an answer says of the receiver's load.
fn signal(answer: &Result<Answer, NoAnswer>, window_full: bool) -> Signal {
    match answer {
        Ok(answer) if (200..300).contains(&answer.status) => Signal::Delivered { window_full },
        Ok(answer) if matches!(answer.status, 429 | 503) => Signal::PushedBack,
        Err(no_answer) if no_answer.class == ErrorClass::Timeout => Signal::PushedBack,
        _ => Signal::Neutral,
    }
}

/// What an event's task needs, besides the event.
struct Job {
    context: Arc<LaneContext>,
    chunking: payload::Chunking,
    max_file_bytes: u64,
    client: WebhookClient,
    endpoints: Arc<Mutex<Endpoints>>,
    app_id: AppId,
}

/// An event's task: its body rendered, then its requests signed and sent
/// one after the other, until one is not delivered.
async fn transfer(job: Job, event: event::Model, probe: bool) -> Result<Vec<Request>, Unrendered> {
    let Job {
        context,
        chunking,
        max_file_bytes,
        client,
        endpoints,
        app_id,
    } = job;
    let mut prepared = produce(&context, &event, chunking, max_file_bytes).await?;
    let name = prepared.rendered.endpoint;
    // A broker app's lane publishes: it has no endpoint.
    let endpoint = context.publisher.is_none().then(|| {
        endpoints
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&client, &context.base_url, name)
            .clone()
    });
    let (parts, chunked) = (prepared.rendered.len(), prepared.rendered.is_chunked());
    let mut requests = Vec::with_capacity(parts);
    for index in 0..parts {
        let (span, signed) = sign_request(&mut prepared, &context, &event, index, &app_id).await;
        let sent = Sent::now(&signed, index, parts, chunked, probe);
        let Signed { body, headers, .. } = signed;
        let answer = match (&context.publisher, &endpoint) {
            (Some(publisher), _) => {
                publisher
                    .publish(&context.repository.repository_id, name, headers, body)
                    .await
            }
            (None, Some(endpoint)) => client.post_to(endpoint, headers, body).await,
            (None, None) => unreachable!("a webhook lane has its endpoint"),
        };
        let delivered = matches!(&answer, Ok(a) if (200..300).contains(&a.status));
        if let Ok(answer) = &answer {
            telemetry::answered(&span, answer.status);
        }
        requests.push(Request { sent, answer, span });
        if !delivered {
            break;
        }
    }
    Ok(requests)
}

impl LaneState {
    /// One step of a lane with a window: read more events when few wait,
    /// start what may start, then record one event that landed.
    pub(super) async fn step_windowed(&mut self) -> Result<Step, StoreError> {
        let windowed = self.windowed.as_mut().expect("a windowed lane");
        let pipeline = &mut self.pipeline;
        // More events, read beside the sends once few wait.
        let reading = self.batch_full && windowed.stopping.is_none() && !windowed.order.blocked();
        if reading && windowed.order.waiting() <= READ_NEXT_AT {
            pipeline.read_next(self.after_seq);
            let idle = windowed.in_flight.is_empty() && windowed.order.waiting() == 0;
            if idle || pipeline.batch_ready() {
                match pipeline.batch_after(self.after_seq).await? {
                    Some(batch) => {
                        self.batch_full = batch.events.len() as u64 >= BATCH;
                        if let Some(last) = batch.events.last() {
                            self.after_seq = last.seq;
                        }
                        windowed.context = Arc::new(batch.context);
                        windowed
                            .order
                            .push(batch.events.into_iter().map(Arc::unwrap_or_clone));
                    }
                    // The app is gone or disabled, or the subscription gone.
                    None => {
                        self.batch_full = false;
                        windowed.stopping.get_or_insert(None);
                    }
                }
            }
        }
        windowed.fill(pipeline).await;
        if windowed.in_flight.is_empty() {
            if self.batch_full && windowed.stopping.is_none() && !windowed.order.blocked() {
                // Everything read has landed and more may follow.
                return Ok(Step::More);
            }
            pipeline.flush().await?;
            if let Some(stopping) = windowed.stopping {
                return Ok(Step::Done(stopping));
            }
            if !self.batch_full {
                self.read_through = Some(self.after_seq);
            }
            if !windowed.order.holds_any() && windowed.order.waiting() == 0 {
                // Settling counts what is left: it must see every delivery.
                pipeline
                    .store
                    .settle_subscription(&pipeline.subscription, &pipeline.lease)
                    .await?;
            }
            return Ok(Step::Done(windowed.order.retry_at()));
        }
        // The lease is renewed while long requests are in flight.
        let renew_every =
            Duration::from_millis(u64::try_from(lease_ttl(&pipeline.config) / 3).unwrap_or(1_000));
        tokio::select! {
            landed = windowed.in_flight.next() => {
                if let Some(landed) = landed {
                    windowed.land(pipeline, landed).await?;
                }
            }
            () = tokio::time::sleep(renew_every) => {}
        }
        if !pipeline.renew_lease().await? {
            // Another owner has the subscription: what is in flight is
            // dropped unrecorded (the new owner delivers it again).
            windowed.in_flight.clear();
            return Ok(Step::Done(None));
        }
        Ok(Step::More)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(seq: i64, path: Option<&str>) -> event::Model {
        let mut event = crate::payload::tests::event(entity::EventKind::Updated, false);
        event.id = format!("evt_{seq}");
        event.seq = seq;
        event.path = path.map(str::to_owned);
        event.renamed_from = None;
        event.status = entity::EventStatus::Pending;
        event.next_attempt_at = 0;
        event
    }

    fn order(events: Vec<event::Model>) -> PathOrder {
        let mut order = PathOrder::default();
        order.push(events);
        order
    }

    fn seqs(started: &[event::Model]) -> Vec<i64> {
        started.iter().map(|e| e.seq).collect()
    }

    /// Starts everything that may start now.
    fn start_all(order: &mut PathOrder) -> Vec<event::Model> {
        std::iter::from_fn(|| order.next(10, None)).collect()
    }

    #[test]
    fn a_path_goes_one_event_at_a_time_and_others_overtake_it() {
        let mut order = order(vec![
            event(1, Some("a")),
            event(2, Some("a")),
            event(3, Some("b")),
            event(4, Some("a")),
            event(5, Some("c")),
        ]);
        let started = start_all(&mut order);
        assert_eq!(seqs(&started), [1, 3, 5]);
        order.landed(&started[0], None);
        let next = start_all(&mut order);
        assert_eq!(seqs(&next), [2], "a's next, and only it");
        order.landed(&next[0], None);
        assert_eq!(seqs(&start_all(&mut order)), [4]);
        assert_eq!(order.waiting(), 0);
        assert_eq!(order.in_flight(), 3);
    }

    #[test]
    fn a_rename_waits_for_both_paths_and_holds_both() {
        let mut rename = event(2, Some("new"));
        rename.renamed_from = Some("old".into());
        let mut order = order(vec![
            event(1, Some("old")),
            rename,
            event(3, Some("new")),
            event(4, Some("other")),
        ]);
        let started = start_all(&mut order);
        assert_eq!(
            seqs(&started),
            [1, 4],
            "the rename waits for old, and new's later event for the rename"
        );
        order.landed(&started[0], None);
        let rename = start_all(&mut order);
        assert_eq!(seqs(&rename), [2]);
        order.landed(&rename[0], None);
        assert_eq!(seqs(&start_all(&mut order)), [3]);
    }

    #[test]
    fn a_failure_holds_back_its_path_for_the_pass_and_nothing_else() {
        let mut order = order(vec![
            event(1, Some("a")),
            event(2, Some("b")),
            event(3, Some("a")),
            event(4, Some("b")),
        ]);
        let started = start_all(&mut order);
        assert_eq!(seqs(&started), [1, 2]);
        order.landed(&started[0], Some(500));
        order.landed(&started[1], None);
        assert_eq!(
            seqs(&start_all(&mut order)),
            [4],
            "3 waits behind 1's retry"
        );
        assert_eq!(order.waiting(), 0, "3 is left pending for the next pass");
        assert_eq!(order.retry_at(), Some(500));
        assert!(order.holds_any());
    }

    #[test]
    fn an_event_due_later_holds_its_path() {
        let mut later = event(1, Some("a"));
        later.next_attempt_at = 300;
        let mut order = order(vec![later, event(2, Some("a")), event(3, Some("b"))]);
        assert_eq!(seqs(&start_all(&mut order)), [3]);
        assert_eq!(order.retry_at(), Some(300));
    }

    #[test]
    fn a_notification_waits_for_everything_before_it_and_later_paths_go_on() {
        let mut order = order(vec![
            event(1, Some("a")),
            event(2, Some("b")),
            event(3, None),
            event(4, Some("c")),
            event(5, None),
        ]);
        let started = start_all(&mut order);
        assert_eq!(seqs(&started), [1, 2, 4], "c goes on past the notification");
        order.landed(&started[0], None);
        assert!(start_all(&mut order).is_empty(), "2 is still in flight");
        order.landed(&started[1], None);
        let notice = start_all(&mut order);
        assert_eq!(seqs(&notice), [3], "5 waits for 3 and 4");
        order.landed(&notice[0], None);
        assert!(start_all(&mut order).is_empty(), "4 is still in flight");
        order.landed(&started[2], None);
        assert_eq!(seqs(&start_all(&mut order)), [5]);
    }

    #[test]
    fn a_notification_behind_a_failure_waits_for_the_next_pass() {
        let mut order = order(vec![
            event(1, Some("a")),
            event(2, None),
            event(3, Some("b")),
            event(4, Some("a")),
        ]);
        let started = start_all(&mut order);
        assert_eq!(seqs(&started), [1, 3]);
        order.landed(&started[0], Some(700));
        order.landed(&started[1], None);
        assert!(start_all(&mut order).is_empty());
        assert_eq!(order.waiting(), 1, "the notice waits; a's next is held");
        assert_eq!(order.retry_at(), Some(700));
        assert!(!order.blocked(), "later events may still be read and go");
    }

    #[test]
    fn a_dead_event_goes_alone_when_its_probe_is_due_and_blocks_otherwise() {
        let mut dead = event(1, Some("a"));
        dead.status = entity::EventStatus::Dead;
        dead.next_attempt_at = 50;
        let mut order_due = order(vec![dead.clone(), event(2, Some("b"))]);
        assert_eq!(order_due.next(100, Some(60)).map(|e| e.seq), Some(1));
        assert_eq!(
            order_due.next(100, Some(60)),
            None,
            "nothing beside a probe"
        );

        let mut not_due = order(vec![dead, event(2, Some("b"))]);
        assert_eq!(not_due.next(100, Some(40)), None);
        assert_eq!(not_due.next(100, None), None);
        assert!(not_due.holds_any());
        assert_eq!(
            not_due.retry_at(),
            None,
            "it waits for its probe, or an operator"
        );
    }

    #[test]
    fn an_event_put_back_goes_back_in_its_place() {
        let mut order = order(vec![event(1, Some("a")), event(2, Some("b"))]);
        let first = order.next(10, None).expect("one");
        order.put_back(first);
        assert_eq!(order.in_flight(), 0);
        assert_eq!(seqs(&start_all(&mut order)), [1, 2]);
    }
}
