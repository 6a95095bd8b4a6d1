//! Bulk retries as background operations: a small registry in memory and the
//! worker that retries dead events one by one, polled for progress and
//! cancellable between two events.
//!
//! The registry belongs to the instance that started the operation: with
//! several instances behind one address, progress is only known where the
//! operation runs. It holds at most [`MAX_OPERATIONS`]; a finished operation
//! is forgotten [`KEEP_FINISHED`] after it ended.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use actors::clock::now_ms;
use actors::ids::{EventId, OperationId};
use actors::store::StoreError;
use actors::store::events::Lever;

/// Operations remembered at once, running or finished.
pub const MAX_OPERATIONS: usize = 64;
/// How long a finished operation's progress can still be read.
pub const KEEP_FINISHED: Duration = Duration::from_secs(60 * 60);
/// Delivery is woken every so many retried events, so it starts before a
/// long operation ends.
const WAKE_EVERY: u64 = 100;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Running,
    Done,
    Cancelled,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Running => "running",
            Status::Done => "done",
            Status::Cancelled => "cancelled",
        }
    }
}

/// Where an operation stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Events handled so far, retried or not.
    pub done: u64,
    /// Events among `done` that could not be queued again (gone, or a
    /// database error).
    pub failed: u64,
    pub status: Status,
    /// Unix ms.
    pub finished_at: Option<i64>,
    /// When it stopped, for the expiry.
    ended: Option<Instant>,
}

/// One bulk retry.
#[derive(Debug)]
pub struct Operation {
    id: OperationId,
    total: u64,
    /// Unix ms.
    started_at: i64,
    /// Read by the worker before each event.
    cancel: AtomicBool,
    progress: Mutex<Progress>,
}

impl Operation {
    fn new(total: u64) -> Self {
        Self {
            id: OperationId::generate(),
            total,
            started_at: now_ms(),
            cancel: AtomicBool::new(false),
            progress: Mutex::new(Progress {
                done: 0,
                failed: 0,
                status: Status::Running,
                finished_at: None,
                ended: None,
            }),
        }
    }

    pub fn id(&self) -> &OperationId {
        &self.id
    }

    pub fn total(&self) -> u64 {
        self.total
    }

    pub fn started_at(&self) -> i64 {
        self.started_at
    }

    pub fn progress(&self) -> Progress {
        *self.lock()
    }

    /// Asks the worker to stop before its next event. A finished operation
    /// stays as it ended.
    pub fn request_cancel(&self) {
        self.cancel.store(true, Ordering::SeqCst);
    }

    fn cancel_requested(&self) -> bool {
        self.cancel.load(Ordering::SeqCst)
    }

    fn record(&self, retried: bool) {
        let mut progress = self.lock();
        progress.done += 1;
        if !retried {
            progress.failed += 1;
        }
    }

    fn finish(&self, status: Status) {
        let mut progress = self.lock();
        progress.status = status;
        progress.finished_at = Some(now_ms());
        progress.ended = Some(Instant::now());
    }

    fn expired(&self, now: Instant) -> bool {
        self.lock()
            .ended
            .is_some_and(|ended| now.duration_since(ended) >= KEEP_FINISHED)
    }

    fn ended(&self) -> Option<Instant> {
        self.lock().ended
    }

    /// A poisoned lock only means a panic elsewhere: counters stay usable.
    fn lock(&self) -> MutexGuard<'_, Progress> {
        self.progress.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The operations of this instance.
#[derive(Debug, Clone, Default)]
pub struct Operations {
    inner: Arc<Mutex<HashMap<OperationId, Arc<Operation>>>>,
}

impl Operations {
    /// Registers a new running operation over `total` events; `None` when
    /// [`MAX_OPERATIONS`] are running.
    pub fn start(&self, total: u64) -> Option<Arc<Operation>> {
        self.start_at(total, Instant::now())
    }

    pub fn get(&self, id: &OperationId) -> Option<Arc<Operation>> {
        self.get_at(id, Instant::now())
    }

    fn start_at(&self, total: u64, now: Instant) -> Option<Arc<Operation>> {
        let mut operations = self.lock();
        prune(&mut operations, now);
        if operations.len() >= MAX_OPERATIONS {
            // Make room by forgetting the finished operation that ended first.
            let oldest = operations
                .iter()
                .filter_map(|(id, op)| op.ended().map(|ended| (ended, id.clone())))
                .min()
                .map(|(_, id)| id);
            operations.remove(&oldest?);
        }
        let operation = Arc::new(Operation::new(total));
        operations.insert(operation.id().clone(), operation.clone());
        Some(operation)
    }

    fn get_at(&self, id: &OperationId, now: Instant) -> Option<Arc<Operation>> {
        let mut operations = self.lock();
        prune(&mut operations, now);
        operations.get(id).cloned()
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<OperationId, Arc<Operation>>> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn prune(operations: &mut HashMap<OperationId, Arc<Operation>>, now: Instant) {
    operations.retain(|_, op| !op.expired(now));
}

/// Retries `ids` one by one through `retry`, stopping early when the
/// operation is cancelled, and calls `wake` so delivery picks the events up.
pub async fn run<F, Fut>(
    operation: Arc<Operation>,
    ids: Vec<EventId>,
    mut retry: F,
    wake: impl Fn(),
) where
    F: FnMut(EventId) -> Fut,
    Fut: Future<Output = Result<Lever, StoreError>>,
{
    let mut unwoken = 0u64;
    let mut status = Status::Done;
    for id in ids {
        if operation.cancel_requested() {
            status = Status::Cancelled;
            break;
        }
        let retried = match retry(id.clone()).await {
            // Not applicable: delivered since it was listed, nothing to retry.
            Ok(Lever::Done | Lever::NotApplicable) => true,
            Ok(Lever::NotFound) => false,
            Err(err) => {
                tracing::warn!(operation = %operation.id(), event = %id, error = %err, "bulk retry could not retry an event");
                false
            }
        };
        operation.record(retried);
        if retried {
            unwoken += 1;
            if unwoken >= WAKE_EVERY {
                wake();
                unwoken = 0;
            }
        }
    }
    if unwoken > 0 {
        wake();
    }
    operation.finish(status);
    let progress = operation.progress();
    tracing::info!(
        operation = %operation.id(),
        status = status.as_str(),
        total = operation.total(),
        done = progress.done,
        failed = progress.failed,
        "bulk retry ended"
    );
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use tokio::sync::{Semaphore, mpsc};

    use super::*;

    fn ids(n: usize) -> Vec<EventId> {
        (0..n).map(|_| EventId::generate()).collect()
    }

    #[tokio::test]
    async fn retries_every_event_counts_failures_and_wakes_delivery() {
        let operations = Operations::default();
        let operation = operations.start(3).expect("room for an operation");
        let wakes = Arc::new(AtomicUsize::new(0));
        let woken = wakes.clone();
        let mut answers = vec![
            Ok(Lever::Done),
            Ok(Lever::NotFound),
            Err(StoreError::Db(sea_orm::DbErr::Custom("down".into()))),
        ]
        .into_iter();
        run(
            operation.clone(),
            ids(3),
            move |_| std::future::ready(answers.next().expect("one answer per event")),
            move || {
                woken.fetch_add(1, Ordering::SeqCst);
            },
        )
        .await;
        let progress = operations
            .get(operation.id())
            .expect("still registered")
            .progress();
        assert_eq!(progress.status, Status::Done);
        assert_eq!((progress.done, progress.failed), (3, 2));
        assert!(progress.finished_at.is_some());
        assert_eq!(wakes.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_cancelled_operation_stops_before_its_next_event() {
        let operation = Operations::default().start(5).expect("room");
        let (started, mut calls) = mpsc::unbounded_channel();
        let gate = Arc::new(Semaphore::new(0));
        let pass = gate.clone();
        let worker = tokio::spawn(run(
            operation.clone(),
            ids(5),
            move |id| {
                let (started, pass) = (started.clone(), pass.clone());
                async move {
                    started.send(id).expect("the test listens");
                    pass.acquire().await.expect("open gate").forget();
                    Ok(Lever::Done)
                }
            },
            || {},
        ));
        // The first event is being retried: cancel, then let it finish.
        calls.recv().await.expect("a first retry");
        assert_eq!(operation.progress().status, Status::Running);
        operation.request_cancel();
        gate.add_permits(5);
        worker.await.expect("the worker ends");
        let progress = operation.progress();
        assert_eq!(progress.status, Status::Cancelled);
        assert_eq!(progress.done, 1, "no event after the cancellation");
        assert!(calls.try_recv().is_err());

        // Cancelling a finished operation changes nothing.
        operation.request_cancel();
        assert_eq!(operation.progress().status, Status::Cancelled);
    }

    #[test]
    fn finished_operations_expire_and_make_room_running_ones_do_not() {
        let operations = Operations::default();
        let running: Vec<_> = (0..MAX_OPERATIONS)
            .map(|_| operations.start(1).expect("room"))
            .collect();
        assert!(operations.start(1).is_none(), "every slot runs");

        // A finished one gives its slot to the next operation.
        running[0].finish(Status::Done);
        let next = operations.start(1).expect("the finished one made room");
        assert!(operations.get(running[0].id()).is_none());
        assert!(operations.get(next.id()).is_some());

        // A finished one is readable for KEEP_FINISHED, then gone.
        running[1].finish(Status::Done);
        let ended = running[1].ended().expect("finished");
        let almost = ended + KEEP_FINISHED - Duration::from_secs(1);
        assert!(operations.get_at(running[1].id(), almost).is_some());
        let later = ended + KEEP_FINISHED;
        assert!(operations.get_at(running[1].id(), later).is_none());
        assert!(
            operations.get_at(running[2].id(), later).is_some(),
            "running ones stay"
        );
    }
}
