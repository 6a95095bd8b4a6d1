//! A subscription's status after a snapshot advance: the rule alone, from
//! what the advance knows of the subscription to what it writes.

use entity::SubscriptionStatus;

/// What the rule reads of one subscription and one advance.
#[derive(Debug, Clone, Copy)]
pub(super) struct Inputs {
    /// Its status before the advance.
    pub(super) status: SubscriptionStatus,
    /// It has a dead event (read only for a failed subscription).
    pub(super) dead_events: bool,
    /// It has events waiting (read only for a failed subscription that
    /// recovers with nothing new).
    pub(super) pending_events: bool,
    /// The advance wrote it events (files, submodules or a notice).
    pub(super) written: bool,
    /// The repository moved to a new snapshot.
    pub(super) moved: bool,
    /// This is its first snapshot.
    pub(super) first: bool,
    /// Git failures left their mark: an error or a retry count.
    pub(super) failing: bool,
}

/// What becomes of the subscription's row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Transition {
    /// Nothing to record: the row is not written.
    Untouched,
    /// The row takes the advance (its `next_seq`, snapshot and commit) and
    /// this status; `clear_failure` clears its error and retry count.
    Write {
        status: SubscriptionStatus,
        clear_failure: bool,
    },
}

/// The rule: a subscription blocked by its own deliveries (paused by the
/// endpoint's 410, or failed with a dead event) stays blocked and keeps its
/// failure; one failed by git failures recovers now that git works (syncing
/// while it has events waiting, else synced); new events make it syncing;
/// its first snapshot makes it synced; and a successful scan heals what git
/// failures left, moved or not.
pub(super) fn transition(inputs: Inputs) -> Transition {
    use SubscriptionStatus::{Failed, Paused, PendingSnapshot, Synced, Syncing};
    let Inputs {
        status,
        dead_events,
        pending_events,
        written,
        moved,
        first,
        failing,
    } = inputs;
    let blocked = status == Paused || (status == Failed && dead_events);
    let recovering = status == Failed && !blocked;
    let healing = !blocked && failing;
    if !moved && !written && !recovering && !healing && !first {
        return Transition::Untouched;
    }
    let status = if blocked {
        status
    } else if written {
        Syncing
    } else if recovering {
        if pending_events { Syncing } else { Synced }
    } else if status == PendingSnapshot {
        Synced
    } else {
        status
    };
    Transition::Write {
        status,
        clear_failure: !blocked,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use SubscriptionStatus::{Failed, Paused, PendingSnapshot, Synced, Syncing};

    /// An advance that moved and wrote nothing, for a healthy subscription
    /// past its first snapshot.
    fn moved(status: SubscriptionStatus) -> Inputs {
        Inputs {
            status,
            dead_events: false,
            pending_events: false,
            written: false,
            moved: true,
            first: false,
            failing: false,
        }
    }

    fn idle(status: SubscriptionStatus) -> Inputs {
        Inputs {
            moved: false,
            ..moved(status)
        }
    }

    fn write(status: SubscriptionStatus, clear_failure: bool) -> Transition {
        Transition::Write {
            status,
            clear_failure,
        }
    }

    #[test]
    fn every_row_of_the_rule() {
        let rows = [
            // Blocked by its own deliveries: the status and failure stay.
            ("paused, moved", moved(Paused), write(Paused, false)),
            (
                "paused, events written",
                Inputs {
                    written: true,
                    failing: true,
                    ..moved(Paused)
                },
                write(Paused, false),
            ),
            (
                "failed with a dead event, moved",
                Inputs {
                    dead_events: true,
                    ..moved(Failed)
                },
                write(Failed, false),
            ),
            ("paused, idle", idle(Paused), Transition::Untouched),
            (
                "failed with a dead event and a git error, idle",
                Inputs {
                    dead_events: true,
                    failing: true,
                    ..idle(Failed)
                },
                Transition::Untouched,
            ),
            // New events: syncing.
            (
                "synced, events written",
                Inputs {
                    written: true,
                    ..moved(Synced)
                },
                write(Syncing, true),
            ),
            (
                "failed by git, events written",
                Inputs {
                    written: true,
                    ..moved(Failed)
                },
                write(Syncing, true),
            ),
            (
                "first snapshot, events written",
                Inputs {
                    written: true,
                    first: true,
                    ..moved(PendingSnapshot)
                },
                write(Syncing, true),
            ),
            // Failed by git failures, nothing new: recovers, idle or not.
            (
                "failed by git, events waiting, idle",
                Inputs {
                    pending_events: true,
                    ..idle(Failed)
                },
                write(Syncing, true),
            ),
            (
                "failed by git, none waiting, idle",
                idle(Failed),
                write(Synced, true),
            ),
            (
                "failed by git, none waiting, moved",
                moved(Failed),
                write(Synced, true),
            ),
            // A first snapshot with nothing in it.
            (
                "first snapshot, empty, idle",
                Inputs {
                    first: true,
                    ..idle(PendingSnapshot)
                },
                write(Synced, true),
            ),
            (
                "pending snapshot, moved, nothing seen",
                moved(PendingSnapshot),
                write(Synced, true),
            ),
            // Moved with nothing the subscription sees: the status stays.
            (
                "synced, moved, nothing seen",
                moved(Synced),
                write(Synced, true),
            ),
            (
                "syncing, moved, nothing seen",
                moved(Syncing),
                write(Syncing, true),
            ),
            // Idle: untouched unless git failures left their mark.
            ("synced, idle", idle(Synced), Transition::Untouched),
            ("syncing, idle", idle(Syncing), Transition::Untouched),
            (
                "synced with a git error, idle",
                Inputs {
                    failing: true,
                    ..idle(Synced)
                },
                write(Synced, true),
            ),
            (
                "syncing with retries left, idle",
                Inputs {
                    failing: true,
                    ..idle(Syncing)
                },
                write(Syncing, true),
            ),
        ];
        for (row, inputs, expected) in rows {
            assert_eq!(transition(inputs), expected, "{row}");
        }
    }
}
