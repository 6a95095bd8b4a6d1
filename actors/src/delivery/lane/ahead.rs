//! Reading ahead: the files after the one in flight, read from the mirror
//! and rendered (and signed) before their turn, in runs on a blocking
//! worker, so the lane's own task only sends and records.
//!
//! The bounds: files up to 4 MiB are read ahead, up to 32 events ahead and
//! within 4 MiB together with the file in flight, refilled once half the
//! window is used (one thread wake-up a run of a dozen or more files), each
//! handed over by a oneshot, through a second opening of the mirror.
//!
//! Small files once went another way: made on the lane's own thread, one
//! beside each request in flight. Once the webhook client and the broker
//! clients answered in less time than a file takes to make, that delayed
//! every answer by the making of the next file; in runs on a blocking
//! worker, the same work runs beside the request on the other core
//! (BENCHMARKS.md, "Tunings of the delivery path").

use std::collections::VecDeque;
use std::sync::Arc;

use entity::event;

use super::super::DeliveryConfig;
use super::super::content::MirrorReader;
use super::batch::LaneContext;
use super::prepared::{Rendering, preparer};
use crate::clock::now_ms;
use crate::payload;

/// Files up to this size are read and rendered ahead (larger ones when their
/// turn comes).
const AHEAD_BYTES: i64 = 4 << 20;
/// Files up to [`AHEAD_BYTES`] are read and rendered up to this many events
/// ahead, as long as they and the file in flight add up to at most
/// [`FURTHER_BYTES`]. Rendering and signing a file of a few MiB takes far
/// longer than the request before it: started only when that request left,
/// it held the lane up (BENCHMARKS.md, "Tunings of the delivery path").
const FURTHER_EVENTS: usize = 32;
const FURTHER_BYTES: i64 = 4 << 20;
/// The window is filled up again once no more than this many events are
/// held: each run of reads then renders a dozen or more files on one
/// blocking worker, for one thread wake-up.
const FURTHER_REFILL_AT: usize = FURTHER_EVENTS / 2;

/// An event's body, read from the mirror and rendered (and signed) ahead of
/// its turn, while the requests before it are in flight. Reading ahead
/// changes nothing but time: requests still leave one after the other, and a
/// read ahead that is not used (the request before it failed, the content is
/// not in the mirror) is dropped and done again in turn.
pub(super) struct Ahead {
    /// The event, shared with the lane's batch (the blocking worker's run
    /// has its own reference: nothing of it is copied on the lane).
    event: Arc<event::Model>,
    /// The file's size, counted against [`FURTHER_BYTES`].
    size: i64,
    /// The file's rendering, from its run (see [`Ahead::run`]): `None` when
    /// the mirror lacks the content; closed without one if the run panicked.
    made: tokio::sync::oneshot::Receiver<Option<Rendering>>,
}

/// The files further down a batch, read and rendered ahead on blocking
/// workers, in `seq` order.
#[derive(Default)]
pub(super) struct Further(VecDeque<Ahead>);

impl Further {
    /// Once no more than [`FURTHER_REFILL_AT`] files are held, starts (with
    /// `start`, as one run) the files among the next [`FURTHER_EVENTS`] of
    /// `upcoming` after those held, while the files held, with the one in
    /// flight (`in_flight` bytes), stay within [`FURTHER_BYTES`].
    pub(super) fn start(
        &mut self,
        upcoming: &VecDeque<Arc<event::Model>>,
        config: &DeliveryConfig,
        in_flight: i64,
        start: impl FnOnce(Vec<(&Arc<event::Model>, i64)>) -> Vec<Ahead>,
    ) {
        if self.0.len() > FURTHER_REFILL_AT {
            return;
        }
        let mut held: i64 = in_flight + self.0.iter().map(|ahead| ahead.size).sum::<i64>();
        let after = self.0.back().map_or(i64::MIN, |last| last.event.seq);
        // One reading of the clock for the window (this runs for every webhook).
        let now = now_ms();
        let mut run = Vec::new();
        for event in upcoming.iter().take(FURTHER_EVENTS) {
            let Some(size) = readable_ahead(event, config, now) else {
                continue;
            };
            if event.seq <= after {
                continue;
            }
            if held + size > FURTHER_BYTES {
                break;
            }
            held += size;
            run.push((event, size));
        }
        if !run.is_empty() {
            self.0.extend(start(run));
        }
    }

    /// Whether `event` is being read ahead here.
    #[cfg(test)]
    fn holds(&self, event: &event::Model) -> bool {
        self.0.iter().any(|ahead| ahead.event.id == event.id)
    }

    /// The look-ahead of `event`, if it is held; those of events before it
    /// (passed over) are dropped.
    pub(super) fn take_for(&mut self, event: &event::Model) -> Option<Ahead> {
        while self
            .0
            .front()
            .is_some_and(|ahead| ahead.event.seq < event.seq)
        {
            self.0.pop_front();
        }
        self.0
            .front()
            .is_some_and(|ahead| ahead.event.id == event.id)
            .then(|| self.0.pop_front())
            .flatten()
    }
}

/// What a created or updated file's bytes are rendered with (see
/// [`preparer`]).
type Prepare = Box<dyn Fn(&[u8]) -> Rendering + Send + Sync>;

/// One file's read and rendering, handed over through `send`.
struct Read {
    event: Arc<event::Model>,
    prepare: Prepare,
    send: tokio::sync::oneshot::Sender<Option<Rendering>>,
}

impl Read {
    /// Reads the file from `mirror` and renders it, unless the lane no
    /// longer waits for it.
    fn make(self, mirror: &MirrorReader) {
        if !self.send.is_closed() {
            let _ = self
                .send
                .send(mirror.read_now(self.event.blob_id.as_deref(), &*self.prepare));
        }
    }
}

/// The size of `event`'s file when it may be read ahead now: the event is
/// due at `now`, sends content from the mirror (an LFS object comes from
/// its server, in turn), and the file is at most [`AHEAD_BYTES`].
fn readable_ahead(event: &event::Model, config: &DeliveryConfig, now: i64) -> Option<i64> {
    let size = event.size?;
    let due = event.status != entity::EventStatus::Dead && event.next_attempt_at <= now;
    (due && event.kind.carries_content()
        && !event.lfs
        && !payload::too_large(event, config.max_file_bytes)
        && size <= AHEAD_BYTES)
        .then_some(size)
}

impl Ahead {
    /// Reads and renders `events` (with their sizes) one after the other,
    /// in order, on one blocking worker: one thread wake-up for the run, not
    /// one per file. Each file's rendering is handed over as soon as it is
    /// made; one the lane no longer waits for is not made.
    pub(super) fn run(
        context: &LaneContext,
        events: Vec<(&Arc<event::Model>, i64)>,
        config: &DeliveryConfig,
    ) -> Vec<Self> {
        let mut reads = Vec::with_capacity(events.len());
        let aheads = events
            .into_iter()
            .map(|(event, size)| {
                let (send, made) = tokio::sync::oneshot::channel();
                reads.push(Read {
                    event: Arc::clone(event),
                    prepare: Box::new(preparer(Arc::clone(event), context, config.chunking)),
                    send,
                });
                Self {
                    event: Arc::clone(event),
                    size,
                    made,
                }
            })
            .collect();
        if !reads.is_empty() {
            let mirror = context.mirror_ahead.clone();
            // Detached: the run ends on its own, sooner when its reads are
            // let go. Beside the lane, below its priority.
            drop(crate::background::spawn_blocking(move || {
                for read in reads {
                    read.make(&mirror);
                }
            }));
        }
        aheads
    }

    /// The body rendered ahead for `event`, if this look-ahead was for it.
    /// A run that panicked rendered nothing: the event is then rendered in
    /// turn, where the panic is the lane's.
    pub(super) async fn rendered_for(self, event: &event::Model) -> Option<Rendering> {
        if self.event.id != event.id {
            return None;
        }
        self.made.await.ok().flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Events of `sizes` (bytes), `seq` 1, 2, …, each carrying content.
    fn sized_events(sizes: &[i64]) -> VecDeque<Arc<event::Model>> {
        sizes
            .iter()
            .zip(1..)
            .map(|(&size, seq)| {
                Arc::new(event::Model {
                    id: format!("evt_{seq}"),
                    seq,
                    size: Some(size),
                    ..payload::tests::event(entity::EventKind::Created, true)
                })
            })
            .collect()
    }

    /// A `start` for [`Further::start`] that records each run's `seq`s and
    /// reads nothing (each file's rendering is closed unmade).
    fn recorded(
        runs: &std::cell::RefCell<Vec<Vec<i64>>>,
    ) -> impl Fn(Vec<(&Arc<event::Model>, i64)>) -> Vec<Ahead> {
        |run| {
            runs.borrow_mut()
                .push(run.iter().map(|(event, _)| event.seq).collect());
            run.into_iter()
                .map(|(event, size)| Ahead {
                    event: Arc::clone(event),
                    size,
                    made: tokio::sync::oneshot::channel().1,
                })
                .collect()
        }
    }

    #[test]
    fn files_further_ahead_are_started_within_their_budget_and_taken_in_order() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let config = DeliveryConfig::for_tests(dir.path());
        const KIB: i64 = 1 << 10;
        let upcoming = sized_events(&[
            KIB,       // started
            100 * KIB, // started
            3 << 20,   // started
            900 * KIB, // started: 4,073 KiB held
            900 * KIB, // over the budget: the window ends here
            200 * KIB,
            100 * KIB,
        ]);
        let mut further = Further::default();
        let runs = std::cell::RefCell::new(Vec::new());
        further.start(&upcoming, &config, 0, recorded(&runs));
        further.start(&upcoming, &config, 0, recorded(&runs));
        assert_eq!(
            *runs.borrow(),
            [vec![1, 2, 3, 4]],
            "each once, within 4 MiB"
        );
        assert!(further.holds(&upcoming[0]) && !further.holds(&upcoming[4]));

        // Events 1 to 3 were passed over (skipped): their reads are dropped
        // with 4's turn.
        let taken = further
            .take_for(&upcoming[3])
            .expect("event 4 was read ahead");
        assert_eq!(taken.event.id, "evt_4");
        for passed in upcoming.range(..3) {
            assert!(!further.holds(passed), "{}'s read is gone", passed.id);
        }
        assert!(further.take_for(&upcoming[5]).is_none(), "event 6 was not");

        // The file in flight counts: 3,900 KiB of it leaves no room.
        let rest: VecDeque<_> = upcoming.into_iter().skip(5).collect();
        further.start(&rest, &config, 3900 * KIB, recorded(&runs));
        assert_eq!(runs.borrow().len(), 1);
        // With room again, the window moves on.
        further.start(&rest, &config, 900 * KIB, recorded(&runs));
        assert_eq!(runs.borrow()[1], [6, 7]);
    }

    #[test]
    fn small_files_are_read_ahead_in_runs_refilled_at_half_the_window() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let config = DeliveryConfig::for_tests(dir.path());
        let batch = sized_events(&[4 << 10; 60]);
        let mut further = Further::default();
        let runs = std::cell::RefCell::new(Vec::new());
        let window = |from: usize| batch.iter().skip(from).cloned().collect::<VecDeque<_>>();

        // The first run fills the window: the next 32 events.
        further.start(&window(0), &config, 0, recorded(&runs));
        assert_eq!(*runs.borrow(), [(1..=32).collect::<Vec<_>>()]);
        // While more than half of it is held, sends start nothing.
        for sent in 1..=15 {
            assert!(further.take_for(&batch[sent - 1]).is_some());
            further.start(&window(sent), &config, 0, recorded(&runs));
            assert_eq!(runs.borrow().len(), 1, "after {sent} sent");
        }
        // At half, one run tops the window up again, after what is held.
        assert!(further.take_for(&batch[15]).is_some());
        further.start(&window(16), &config, 0, recorded(&runs));
        assert_eq!(runs.borrow()[1], (33..=48).collect::<Vec<_>>());
        assert!(further.holds(&batch[16]) && further.holds(&batch[47]));
    }
}
