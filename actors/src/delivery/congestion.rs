//! How many webhooks an app's receiver is sent at once: its window, adapted
//! to how the receiver copes, by additive increase and multiplicative
//! decrease (AIMD, as TCP does with its congestion window).
//!
//! The app's `window` setting is the most a subscription ever has in flight.
//! A receiver that pushes back (429 or 503, with or without `Retry-After`)
//! or stops answering in time halves the window, at most once per round
//! trip: answers to requests sent before the last decrease tell nothing new.
//! Each round trip's worth of successes (as many as the window) while the
//! window was full, so that latency, not Herald, bounds the rate, grows it
//! by one, back up to the setting. Lanes of the same app share one window:
//! it is the receiver's.

use std::sync::Mutex;

/// The window a receiver gets, shared by the app's lanes.
#[derive(Debug)]
pub struct Congestion {
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    /// Requests of one subscription that may be in flight now (1 ..= `max`).
    window: usize,
    /// The app's setting.
    max: usize,
    /// Successes counted towards the next increase.
    acked: usize,
    /// When the window last shrank (unix ms): answers to requests sent
    /// before it belong to the same round trip.
    shrunk_at: i64,
}

/// What an answer says about the receiver's load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// A 2xx, sent while the lane's window was full.
    Delivered { window_full: bool },
    /// 429, 503, or no answer in time.
    PushedBack,
    /// Anything else: says nothing of the load.
    Neutral,
}

impl Congestion {
    /// A window that starts at the app's setting.
    pub fn new(max: usize) -> Self {
        let max = max.max(1);
        Self {
            state: Mutex::new(State {
                window: max,
                max,
                acked: 0,
                shrunk_at: i64::MIN,
            }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// How many requests may be in flight now, for an app whose setting is
    /// `max` (read again with every batch: a changed setting applies at once).
    pub fn window(&self, max: usize) -> usize {
        let mut state = self.state();
        let max = max.max(1);
        if state.max != max {
            state.max = max;
            state.window = state.window.min(max);
            state.acked = 0;
        }
        state.window
    }

    /// Counts an answer to a request sent at `sent_at` (unix ms).
    pub fn answered(&self, signal: Signal, sent_at: i64, now: i64) {
        let mut state = self.state();
        match signal {
            Signal::Delivered { window_full: true } => {
                state.acked += 1;
                if state.acked >= state.window {
                    state.acked = 0;
                    state.window = (state.window + 1).min(state.max);
                }
            }
            Signal::PushedBack if sent_at >= state.shrunk_at => {
                state.window = (state.window / 2).max(1);
                state.acked = 0;
                state.shrunk_at = now;
            }
            Signal::Delivered { window_full: false } | Signal::PushedBack | Signal::Neutral => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_halves_once_per_round_trip_and_grows_by_one_per_full_round() {
        let congestion = Congestion::new(16);
        assert_eq!(congestion.window(16), 16);
        // A burst of pushback from requests sent together: one halving.
        for _ in 0..5 {
            congestion.answered(Signal::PushedBack, 100, 200);
        }
        assert_eq!(congestion.window(16), 8);
        // A request sent after the decrease that is pushed back halves again.
        congestion.answered(Signal::PushedBack, 250, 300);
        assert_eq!(congestion.window(16), 4);
        // Successes while the window was not full say nothing.
        for _ in 0..10 {
            congestion.answered(Signal::Delivered { window_full: false }, 400, 500);
        }
        assert_eq!(congestion.window(16), 4);
        // A round of 4 full-window successes: 5; then 5 of them: 6.
        for _ in 0..4 {
            congestion.answered(Signal::Delivered { window_full: true }, 400, 500);
        }
        assert_eq!(congestion.window(16), 5);
        for _ in 0..5 {
            congestion.answered(Signal::Delivered { window_full: true }, 400, 500);
        }
        assert_eq!(congestion.window(16), 6);
        congestion.answered(Signal::Neutral, 600, 700);
        assert_eq!(congestion.window(16), 6);
    }

    #[test]
    fn the_window_stays_between_one_and_the_setting() {
        let congestion = Congestion::new(2);
        for at in 0..10 {
            congestion.answered(Signal::PushedBack, at * 10, at * 10 + 1);
        }
        assert_eq!(congestion.window(2), 1);
        for _ in 0..100 {
            congestion.answered(Signal::Delivered { window_full: true }, 1_000, 1_001);
        }
        assert_eq!(congestion.window(2), 2, "never above the setting");
        // A lower setting applies at once; a higher one is grown into.
        assert_eq!(congestion.window(1), 1);
        assert_eq!(congestion.window(8), 1);
        congestion.answered(Signal::Delivered { window_full: true }, 1_000, 1_001);
        assert_eq!(congestion.window(8), 2);
    }
}
