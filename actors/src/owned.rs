//! Work an actor owns. Blocking git work and long delivery lanes run as tasks
//! beside their actor's mailbox, but never outlive it: the handle lives in
//! the actor's state, and when the actor stops or fails its state is dropped
//! and the task aborted with it (a panic in the actor skips `post_stop`, not
//! the drop). A task's result, or its panic, comes back to the owner as a
//! message, so a panic is a supervision matter for the owner to handle.

use std::future::Future;

use tokio_util::task::AbortOnDropHandle;

/// A task owned by an actor's state: aborted when dropped.
#[derive(Debug)]
pub struct OwnedTask(AbortOnDropHandle<()>);

impl OwnedTask {
    /// Runs `work` as a task owned by the caller. `report` gets its result,
    /// or the panic's message; it is not called when the task is aborted.
    pub fn spawn<T, W, R>(work: W, report: R) -> Self
    where
        T: Send + 'static,
        W: Future<Output = T> + Send + 'static,
        R: FnOnce(Result<T, String>) + Send + 'static,
    {
        Self(AbortOnDropHandle::new(tokio::spawn(async move {
            // Aborting this task drops `inner`, which aborts the work too.
            let inner = AbortOnDropHandle::new(tokio::spawn(work));
            match inner.await {
                Ok(value) => report(Ok(value)),
                Err(err) if err.is_panic() => report(Err(panic_message(err.into_panic()))),
                Err(_) => {}
            }
        })))
    }

    pub fn is_finished(&self) -> bool {
        self.0.is_finished()
    }
}

/// A value a task is making for its owner, who holds it and takes the value
/// when it needs it: the task is aborted when this is dropped, and its panic
/// is the owner's.
#[derive(Debug)]
pub struct Pending<T> {
    task: AbortOnDropHandle<Option<T>>,
    /// Stops a future polled on a blocking thread, which aborting its task
    /// cannot (see [`Pending::spawn_on_blocking_thread`]).
    _stop: Option<StopOnDrop>,
}

impl<T: Send + 'static> Pending<T> {
    pub fn spawn(work: impl Future<Output = T> + Send + 'static) -> Self {
        Self {
            task: AbortOnDropHandle::new(tokio::spawn(async move { Some(work.await) })),
            _stop: None,
        }
    }

    /// Like [`Pending::spawn`], but `work` is polled on a blocking-pool
    /// thread, not on a runtime worker. For database work beside a delivery
    /// lane: sqlx and SeaORM build a statement's text and decode its rows in
    /// the thread that polls them, and a write or read of a few hundred rows
    /// held a worker for milliseconds at a stretch, delaying the lane's
    /// wake-ups that came meanwhile. A blocking thread is preempted by the
    /// kernel like any other, and these run below the lanes' priority
    /// ([`crate::background`]). At most [`BLOCKING_TURNS`] such works hold a
    /// thread at once; the others wait for a turn as tasks, so that many
    /// lanes waiting on the database never start more threads than there
    /// are connections to wait for. Dropping the value stops the work at
    /// its next await.
    pub fn spawn_on_blocking_thread(work: impl Future<Output = T> + Send + 'static) -> Self {
        let (work, stop) = futures::future::abortable(work);
        let runtime = tokio::runtime::Handle::current();
        let on_thread = move |turn: tokio::sync::SemaphorePermit<'static>| {
            crate::background::spawn_blocking(move || {
                let _turn = turn;
                runtime.block_on(work).ok()
            })
        };
        let task = match TURNS.try_acquire() {
            Ok(turn) => on_thread(turn),
            Err(_) => tokio::spawn(async move {
                let turn = TURNS
                    .acquire()
                    .await
                    .expect("the semaphore is never closed");
                joined(on_thread(turn).await).flatten()
            }),
        };
        Self {
            task: AbortOnDropHandle::new(task),
            _stop: Some(StopOnDrop(stop)),
        }
    }

    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// The value, once made; `None` if the runtime shut the task down first.
    pub async fn wait(self) -> Option<T> {
        joined(self.task.await).flatten()
    }
}

/// How many [`Pending::spawn_on_blocking_thread`] works may hold a blocking
/// thread at once: as many as the larger database pool has connections,
/// more could only wait for one.
pub const BLOCKING_TURNS: usize = {
    let (sqlite, postgres) = (
        crate::store::SQLITE_CONNECTIONS,
        crate::store::POSTGRES_CONNECTIONS,
    );
    (if sqlite > postgres { sqlite } else { postgres }) as usize
};

static TURNS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(BLOCKING_TURNS);

/// Aborts a future made abortable, when dropped.
#[derive(Debug)]
struct StopOnDrop(futures::future::AbortHandle);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What a task that was waited for gave: its value; its panic, resumed in
/// the task that waited; `None` if the runtime shut it down first.
pub fn joined<T>(result: Result<T, tokio::task::JoinError>) -> Option<T> {
    match result {
        Ok(value) => Some(value),
        Err(err) if err.is_panic() => std::panic::resume_unwind(err.into_panic()),
        Err(_) => None,
    }
}

/// The message of a panic's payload.
pub fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_owned())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn a_result_or_a_panic_is_reported_to_the_owner() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let ok = tx.clone();
        let _done = OwnedTask::spawn(async { 7 }, move |r| ok.send(r).expect("open"));
        assert_eq!(rx.recv().await.expect("a report"), Ok(7));
        let _panicked = OwnedTask::spawn(
            async {
                if true {
                    panic!("the lane broke");
                }
                0
            },
            move |r| tx.send(r).expect("open"),
        );
        assert_eq!(
            rx.recv().await.expect("a report"),
            Err("the lane broke".to_owned())
        );
    }

    /// The two ways of making a pending value.
    type Spawn<T> = fn(std::pin::Pin<Box<dyn Future<Output = T> + Send>>) -> Pending<T>;

    fn both<T: Send + 'static>() -> [(&'static str, Spawn<T>); 2] {
        [
            ("on a worker", |work| Pending::spawn(work)),
            ("on a blocking thread", |work| {
                Pending::spawn_on_blocking_thread(work)
            }),
        ]
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_pending_value_is_waited_for_and_dropping_it_stops_its_work() {
        for (how, spawn) in both::<i32>() {
            let pending = spawn(Box::pin(async {
                tokio::time::sleep(Duration::from_millis(50)).await;
                7
            }));
            assert!(!pending.is_finished(), "{how}");
            assert_eq!(pending.wait().await, Some(7), "{how}");
        }
        for (how, spawn) in both::<()>() {
            let finished = Arc::new(AtomicBool::new(false));
            let flag = finished.clone();
            let pending = spawn(Box::pin(async move {
                tokio::time::sleep(Duration::from_millis(300)).await;
                flag.store(true, Ordering::SeqCst);
            }));
            drop(pending);
            tokio::time::sleep(Duration::from_millis(600)).await;
            assert!(
                !finished.load(Ordering::SeqCst),
                "the work outlived its owner ({how})"
            );
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_pending_values_panic_is_its_owners() {
        for (how, spawn) in both::<i32>() {
            let pending = spawn(Box::pin(async {
                if true {
                    panic!("the read broke");
                }
                0
            }));
            let caught = tokio::spawn(pending.wait()).await.expect_err("the panic");
            assert!(caught.is_panic(), "{how}");
            assert_eq!(
                panic_message(caught.into_panic()),
                "the read broke",
                "{how}"
            );
        }
    }

    /// Held by the tests that take every turn, or need one free: the turns
    /// are the process's, and the tests of this binary run side by side.
    static ALL_TURNS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn no_more_than_the_turns_hold_a_blocking_thread_at_once() {
        let _alone = ALL_TURNS.lock().await;
        let (release, released) = tokio::sync::watch::channel(false);
        let started = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let works: Vec<_> = (0..BLOCKING_TURNS + 4)
            .map(|n| {
                let (mut released, started) = (released.clone(), started.clone());
                Pending::spawn_on_blocking_thread(async move {
                    started.fetch_add(1, Ordering::SeqCst);
                    released.wait_for(|go| *go).await.expect("the sender lives");
                    n
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let running = started.load(Ordering::SeqCst);
        release.send(true).expect("receivers live");
        let mut made = Vec::new();
        for work in works {
            made.push(work.wait().await.expect("made"));
        }
        // Other tests may hold a turn for a moment: at most the turns.
        assert!(
            running <= BLOCKING_TURNS,
            "{running} works held a blocking thread at once"
        );
        assert_eq!(made, (0..BLOCKING_TURNS + 4).collect::<Vec<_>>());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn work_on_a_blocking_thread_leaves_the_workers_free() {
        // With every turn taken, the work would wait for one on a worker.
        let _alone = ALL_TURNS.lock().await;
        // Two workers, each held by a task that does not yield until told:
        // work polled on a worker could not run, work on a blocking thread
        // does.
        let release = Arc::new(AtomicBool::new(false));
        let holders: Vec<_> = (0..2)
            .map(|_| {
                let release = release.clone();
                tokio::spawn(async move {
                    while !release.load(Ordering::SeqCst) {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                })
            })
            .collect();
        // Not `tokio::time::sleep`: with both workers held, no timer fires.
        std::thread::sleep(Duration::from_millis(50));
        let made = Pending::spawn_on_blocking_thread(async { 7 });
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !made.is_finished() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        let finished = made.is_finished();
        release.store(true, Ordering::SeqCst);
        for holder in holders {
            holder.await.expect("the holder ends");
        }
        assert!(finished, "the work waited for a worker");
        assert_eq!(made.wait().await, Some(7));
    }

    #[tokio::test(start_paused = true)]
    async fn dropping_the_handle_stops_the_work() {
        let finished = Arc::new(AtomicBool::new(false));
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Result<(), String>>();
        let flag = finished.clone();
        let task = OwnedTask::spawn(
            async move {
                tokio::time::sleep(Duration::from_millis(300)).await;
                flag.store(true, Ordering::SeqCst);
            },
            move |r| tx.send(r).expect("open"),
        );
        drop(task);
        // The work would have finished by now, had it not been aborted (time
        // is paused: the clock jumps to each timer, the work's first).
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert!(
            !finished.load(Ordering::SeqCst),
            "the work outlived its owner"
        );
        assert!(
            rx.recv().await.is_none(),
            "nothing is reported for aborted work"
        );
    }
}
