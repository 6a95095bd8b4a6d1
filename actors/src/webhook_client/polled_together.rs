//! An exchange and its connection, polled together in the sending task.
//!
//! hyper's client connection has two halves that hand each other the
//! request, the answer and the answer's body through channels, each side
//! waking the other. Polled in one task, every such hand-off is the task
//! waking itself while it runs, and tokio answers a task woken during its
//! own poll by queueing it again as if it had yielded and waking an idle
//! worker thread to take it: a wake-up, a context switch and the task
//! moved to another thread, once or twice a webhook. Here a wake that comes
//! while the two are being polled only asks for another round of polling;
//! one that comes between polls (the socket became readable: the reactor,
//! on whichever thread) wakes the task as usual.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::task::{Context, Poll, Waker};

use futures::task::ArcWake;
use parking_lot::Mutex;

/// Rounds of polling in one poll of the task. A future that is still woken
/// after that many keeps waking itself (tokio's budget for the task is used
/// up, say): the task is then woken, to yield and come back.
const MAX_ROUNDS: usize = 8;

/// Polls `exchange` and the connection `driver` it depends on until the
/// exchange ends (`Some`, its output) or the connection does (`None`).
pub(crate) async fn drive<E: Future + ?Sized, D: Future + ?Sized>(
    mut exchange: Pin<&mut E>,
    mut driver: Pin<&mut D>,
) -> Option<E::Output> {
    let wakes = Arc::new(Wakes::default());
    let waker = futures::task::waker(wakes.clone());
    std::future::poll_fn(|cx| {
        wakes.poll_rounds(cx, &waker, |inner| {
            if let Poll::Ready(output) = exchange.as_mut().poll(inner) {
                return Poll::Ready(Some(output));
            }
            if driver.as_mut().poll(inner).is_ready() {
                return Poll::Ready(None);
            }
            Poll::Pending
        })
    })
    .await
}

/// The waker the two futures are polled with.
#[derive(Default)]
struct Wakes {
    /// Set while a round runs: a wake then only marks `woken`.
    polling: AtomicBool,
    woken: AtomicBool,
    /// The task's own waker, for wakes between polls.
    task: Mutex<Option<Waker>>,
}

impl Wakes {
    /// Runs `round` with this waker until it is ready, or until a round
    /// ends without a wake.
    fn poll_rounds<T>(
        &self,
        cx: &mut Context<'_>,
        waker: &Waker,
        mut round: impl FnMut(&mut Context<'_>) -> Poll<T>,
    ) -> Poll<T> {
        {
            let mut task = self.task.lock();
            if !task.as_ref().is_some_and(|task| task.will_wake(cx.waker())) {
                *task = Some(cx.waker().clone());
            }
        }
        let mut inner = Context::from_waker(waker);
        self.polling.store(true, SeqCst);
        for _ in 0..MAX_ROUNDS {
            self.woken.store(false, SeqCst);
            if let Poll::Ready(output) = round(&mut inner) {
                self.polling.store(false, SeqCst);
                return Poll::Ready(output);
            }
            if !self.woken.load(SeqCst) {
                self.polling.store(false, SeqCst);
                // A wake between the round's end and `polling` cleared saw
                // `polling` set and left it to this check.
                if !self.woken.swap(false, SeqCst) {
                    return Poll::Pending;
                }
                self.polling.store(true, SeqCst);
            }
        }
        self.polling.store(false, SeqCst);
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

impl ArcWake for Wakes {
    fn wake_by_ref(arc_self: &Arc<Self>) {
        arc_self.woken.store(true, SeqCst);
        if !arc_self.polling.load(SeqCst)
            && let Some(task) = arc_self.task.lock().as_ref()
        {
            task.wake_by_ref();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;

    /// Counts the wakes of the task that polls.
    #[derive(Default)]
    struct Counted(AtomicUsize);

    impl ArcWake for Counted {
        fn wake_by_ref(arc_self: &Arc<Self>) {
            arc_self.0.fetch_add(1, SeqCst);
        }
    }

    fn task() -> (Arc<Counted>, Waker) {
        let counted = Arc::new(Counted::default());
        let waker = futures::task::waker(counted.clone());
        (counted, waker)
    }

    #[test]
    fn a_hand_off_between_the_two_does_not_wake_the_task() {
        let (counted, waker) = task();
        let mut cx = Context::from_waker(&waker);
        let (answer_tx, answer_rx) = tokio::sync::oneshot::channel::<u16>();
        // The exchange waits for its answer; the connection, polled after
        // it, hands the answer over (waking the exchange) and goes on.
        let exchange = std::pin::pin!(async move { answer_rx.await.ok() });
        let mut answer_tx = Some(answer_tx);
        let driver = std::pin::pin!(std::future::poll_fn(move |_| {
            if let Some(tx) = answer_tx.take() {
                tx.send(200).ok();
            }
            Poll::<()>::Pending
        }));
        let mut both = std::pin::pin!(drive(exchange, driver));
        assert_eq!(both.as_mut().poll(&mut cx), Poll::Ready(Some(Some(200))));
        assert_eq!(counted.0.load(SeqCst), 0, "no wake reached the task");
    }

    #[test]
    fn a_wake_between_polls_wakes_the_task() {
        let (counted, waker) = task();
        let mut cx = Context::from_waker(&waker);
        let (answer_tx, answer_rx) = tokio::sync::oneshot::channel::<u16>();
        let exchange = std::pin::pin!(async move { answer_rx.await.ok() });
        let driver = std::pin::pin!(std::future::pending::<()>());
        let mut both = std::pin::pin!(drive(exchange, driver));
        assert_eq!(both.as_mut().poll(&mut cx), Poll::Pending);
        // The answer comes from elsewhere (another thread, the reactor).
        std::thread::spawn(move || answer_tx.send(204).ok())
            .join()
            .expect("the sender ran");
        assert_eq!(counted.0.load(SeqCst), 1, "the task is woken once");
        assert_eq!(both.as_mut().poll(&mut cx), Poll::Ready(Some(Some(204))));
    }

    #[test]
    fn a_future_that_keeps_waking_itself_makes_the_task_yield() {
        let (counted, waker) = task();
        let mut cx = Context::from_waker(&waker);
        let polls = Arc::new(AtomicUsize::new(0));
        let counting = polls.clone();
        // As a future whose budget is used up: woken and pending, always.
        let exchange = std::pin::pin!(std::future::poll_fn(move |cx| {
            counting.fetch_add(1, SeqCst);
            cx.waker().wake_by_ref();
            Poll::<()>::Pending
        }));
        let driver = std::pin::pin!(std::future::pending::<()>());
        let mut both = std::pin::pin!(drive(exchange, driver));
        assert_eq!(both.as_mut().poll(&mut cx), Poll::Pending);
        assert_eq!(polls.load(SeqCst), MAX_ROUNDS, "a bounded number of rounds");
        assert_eq!(counted.0.load(SeqCst), 1, "then the task is woken to yield");
    }

    #[test]
    fn the_connection_ending_ends_the_drive() {
        let (_, waker) = task();
        let mut cx = Context::from_waker(&waker);
        let exchange = std::pin::pin!(std::future::pending::<u16>());
        let driver = std::pin::pin!(std::future::ready(()));
        let mut both = std::pin::pin!(drive(exchange, driver));
        assert_eq!(both.as_mut().poll(&mut cx), Poll::Ready(None));
    }
}
