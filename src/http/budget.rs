//! What request bodies may take: each its size and time ([`BodyLimit`]),
//! all of them together one in-flight byte budget ([`BodyBudget`]). The
//! filters read bodies within these.

use std::time::Duration;

use tokio::sync::{Semaphore, SemaphorePermit};

use super::error::ApiError;

/// How much of a request body is read, and for how long.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimit {
    /// Larger bodies are answered 413.
    pub bytes: u64,
    /// A body that has not arrived in full by then is answered 408, so a
    /// client cannot hold a connection by trickling its body.
    pub timeout: Duration,
    /// The bytes every body being read or held may take together; a
    /// reference so that the limit stays `Copy` for the filters that move it
    /// into each request.
    pub budget: &'static BodyBudget,
}

/// The bytes of request bodies Herald holds at once, across every request
/// (`server.max_inflight_body_bytes`): a body takes its bytes as they are
/// read and gives them back when it is dropped, so many large bodies held
/// open cannot grow memory past the budget. A body that finds the budget
/// spent waits [`BUDGET_WAIT`] for it, then is answered 503 with
/// `Retry-After`.
#[derive(Debug)]
pub struct BodyBudget {
    bytes: Semaphore,
    /// How long a body waits for bytes before its 503 ([`BUDGET_WAIT`]).
    wait: Duration,
}

/// How long a body waits for the budget before it is answered 503.
pub(super) const BUDGET_WAIT: Duration = Duration::from_secs(1);
/// The `Retry-After` of a body refused for want of budget.
const BUDGET_RETRY_AFTER_SECS: u64 = 2;

impl BodyBudget {
    /// A budget of `bytes` (at most [`Semaphore::MAX_PERMITS`], which the
    /// settings check).
    pub fn new(bytes: u64) -> Self {
        let bytes = usize::try_from(bytes)
            .unwrap_or(usize::MAX)
            .min(Semaphore::MAX_PERMITS);
        Self {
            bytes: Semaphore::new(bytes),
            wait: BUDGET_WAIT,
        }
    }

    /// A budget that lives as long as the process: [`BodyLimit`] holds it by
    /// reference. Built once at start (and once per test).
    pub fn leaked(bytes: u64) -> &'static Self {
        Box::leak(Box::new(Self::new(bytes)))
    }

    /// A budget of `bytes` whose bodies wait `wait` for it.
    #[cfg(test)]
    pub(super) fn waiting(bytes: u64, wait: Duration) -> Self {
        Self {
            wait,
            ..Self::new(bytes)
        }
    }

    /// The bytes not taken by any body now.
    #[cfg(test)]
    pub(super) fn available(&self) -> usize {
        self.bytes.available_permits()
    }

    /// A hold on none of the budget, for a body to add its bytes to.
    pub(super) fn nothing(&'static self) -> SemaphorePermit<'static> {
        self.bytes
            .try_acquire_many(0)
            .expect("taking nothing always succeeds")
    }

    /// Takes `bytes` more for a body holding `held`: at once when free,
    /// else within [`BUDGET_WAIT`], else a 503.
    pub(super) async fn take(
        &'static self,
        held: &mut SemaphorePermit<'static>,
        bytes: usize,
    ) -> Result<(), ApiError> {
        // Chunks are at most hyper's read buffer, and a body never asks for
        // more than its size limit, which the settings keep within the budget.
        let busy = || ApiError::Busy {
            retry_after_secs: BUDGET_RETRY_AFTER_SECS,
        };
        let wanted = u32::try_from(bytes).map_err(|_| busy())?;
        let more = match self.bytes.try_acquire_many(wanted) {
            Ok(permit) => permit,
            Err(_) => tokio::time::timeout(self.wait, self.bytes.acquire_many(wanted))
                .await
                .map_err(|_| busy())?
                .map_err(|_| busy())?,
        };
        held.merge(more);
        Ok(())
    }
}
