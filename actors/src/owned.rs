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

    /// Waits for the task to end by itself until `deadline`; aborts it then.
    pub async fn finish_by(self, deadline: tokio::time::Instant) {
        let _ = tokio::time::timeout_at(deadline, self.0).await;
    }
}

/// A value a task is making for its owner, who holds it and takes the value
/// when it needs it: the task is aborted when this is dropped, and its panic
/// is the owner's.
#[derive(Debug)]
pub struct Pending<T>(AbortOnDropHandle<T>);

impl<T: Send + 'static> Pending<T> {
    pub fn spawn(work: impl Future<Output = T> + Send + 'static) -> Self {
        Self(AbortOnDropHandle::new(tokio::spawn(work)))
    }

    pub fn is_finished(&self) -> bool {
        self.0.is_finished()
    }

    /// The value, once made; `None` if the runtime shut the task down first.
    pub async fn wait(self) -> Option<T> {
        joined(self.0.await)
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

    #[tokio::test]
    async fn a_pending_value_is_waited_for_and_dropping_it_stops_its_work() {
        let pending = Pending::spawn(async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            7
        });
        assert!(!pending.is_finished());
        assert_eq!(pending.wait().await, Some(7));

        let finished = Arc::new(AtomicBool::new(false));
        let flag = finished.clone();
        let pending = Pending::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            flag.store(true, Ordering::SeqCst);
        });
        drop(pending);
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert!(
            !finished.load(Ordering::SeqCst),
            "the work outlived its owner"
        );
    }

    #[tokio::test]
    async fn a_pending_values_panic_is_its_owners() {
        let pending = Pending::spawn(async {
            if true {
                panic!("the read broke");
            }
            0
        });
        let caught = tokio::spawn(pending.wait()).await.expect_err("the panic");
        assert!(caught.is_panic());
        assert_eq!(panic_message(caught.into_panic()), "the read broke");
    }

    #[tokio::test]
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
        // The work would have finished by now, had it not been aborted.
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
