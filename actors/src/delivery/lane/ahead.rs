//! Reading ahead: the files after the one in flight, read from the mirror
//! and rendered (and signed) before their turn, so the lane's own task
//! mostly sends. Larger files go in runs to a blocking worker (`Further`);
//! small ones are made on the lane's thread, one beside each request in
//! flight (`Interleaved`).
//!
//! The bounds: files up to 4 MiB are read ahead, up to 32 events ahead and
//! within 4 MiB together with the file in flight, refilled once half the
//! window is used, each handed over by a oneshot. Files up to 64 KiB go
//! `Interleaved`: each request takes the next one along and makes it on the
//! lane's own thread once the request has left, while the receiver works;
//! larger ones go in runs (one thread wake-up a run) to a blocking worker,
//! through a second opening of the mirror.

use std::collections::VecDeque;

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
    event_id: String,
    seq: i64,
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
        upcoming: &VecDeque<event::Model>,
        config: &DeliveryConfig,
        in_flight: i64,
        start: impl FnOnce(Vec<(&event::Model, i64)>) -> Vec<Ahead>,
    ) {
        if self.0.len() > FURTHER_REFILL_AT {
            return;
        }
        let mut held: i64 = in_flight + self.0.iter().map(|ahead| ahead.size).sum::<i64>();
        let after = self.0.back().map_or(i64::MIN, |last| last.seq);
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
        self.0.iter().any(|ahead| ahead.event_id == event.id)
    }

    /// The look-ahead of `event`, if it is held; those of events before it
    /// (passed over) are dropped.
    pub(super) fn take_for(&mut self, event: &event::Model) -> Option<Ahead> {
        while self.0.front().is_some_and(|ahead| ahead.seq < event.seq) {
            self.0.pop_front();
        }
        self.0
            .front()
            .is_some_and(|ahead| ahead.event_id == event.id)
            .then(|| self.0.pop_front())
            .flatten()
    }
}

/// Files up to this size are read and rendered ahead on the lane's own
/// thread, one while each request is in flight (see [`Interleaved`]);
/// larger ones on a blocking worker. Reading, rendering and signing such a
/// file takes tens of microseconds, less than the receiver takes to answer;
/// on a blocking worker it cost a thread wake-up, and on a 2-core machine
/// the worker ran beside the receiver and the lane, three busy threads on
/// two cores (BENCHMARKS.md, "Tunings of the delivery path").
const INTERLEAVED_BYTES: i64 = 64 << 10;

/// What a created or updated file's bytes are rendered with (see
/// [`preparer`]).
type Prepare = Box<dyn Fn(&[u8]) -> Rendering + Send + Sync>;

/// One file's read and rendering, handed over through `send`.
pub(super) struct Read {
    blob: Option<String>,
    prepare: Prepare,
    send: tokio::sync::oneshot::Sender<Option<Rendering>>,
}

impl Read {
    /// Reads the file from `mirror` and renders it, unless the lane no
    /// longer waits for it.
    pub(super) fn make(self, mirror: &MirrorReader) {
        if !self.send.is_closed() {
            let _ = self
                .send
                .send(mirror.read_now(self.blob.as_deref(), &*self.prepare));
        }
    }
}

/// A queued [`Read`] of event `seq`.
struct QueuedRead {
    seq: i64,
    read: Read,
}

/// Small files' reads queued on the lane, in `seq` order: each request the
/// lane sends takes the next one along and makes it once the request has
/// left, while the receiver works (the request's future is polled first).
/// Dropped with the lane, they are never made; a look-ahead whose read was
/// not made yet is made when the lane comes to it ([`Self::run_through`]).
#[derive(Default)]
pub(super) struct Interleaved(VecDeque<QueuedRead>);

impl Interleaved {
    fn push(&mut self, seq: i64, read: Read) {
        self.0.push_back(QueuedRead { seq, read });
    }

    /// The next read to make beside a request.
    pub(super) fn next(&mut self) -> Option<Read> {
        self.0.pop_front().map(|queued| queued.read)
    }

    /// Makes, now, from `mirror`, every read queued for events up to `seq`:
    /// the lane is about to wait for event `seq`'s, and those before it are
    /// passed over (let go, they cost nothing).
    pub(super) fn run_through(&mut self, seq: i64, mirror: &MirrorReader) {
        while self.0.front().is_some_and(|queued| queued.seq <= seq) {
            if let Some(queued) = self.0.pop_front() {
                queued.read.make(mirror);
            }
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
    /// Reads and renders `events` (with their sizes). Files up to
    /// [`INTERLEAVED_BYTES`] are queued on `interleaved`, to be made on the
    /// lane's own thread one per request in flight; the others are made one
    /// after the other, in order, on one blocking worker: one thread wake-up
    /// for the run, not one per file. Each file's rendering is handed over
    /// as soon as it is made; one the lane no longer waits for is not made.
    pub(super) fn run(
        context: &LaneContext,
        events: Vec<(&event::Model, i64)>,
        config: &DeliveryConfig,
        interleaved: &mut Interleaved,
    ) -> Vec<Self> {
        let mut reads = Vec::with_capacity(events.len());
        let aheads = events
            .into_iter()
            .map(|(event, size)| {
                let (send, made) = tokio::sync::oneshot::channel();
                let prepare = preparer(event, context, config.chunking);
                let read = Read {
                    blob: event.blob_id.clone(),
                    prepare: Box::new(prepare),
                    send,
                };
                if size <= INTERLEAVED_BYTES {
                    interleaved.push(event.seq, read);
                } else {
                    reads.push(read);
                }
                Self {
                    event_id: event.id.clone(),
                    seq: event.seq,
                    size,
                    made,
                }
            })
            .collect();
        if !reads.is_empty() {
            let mirror = context.mirror_ahead.clone();
            // Detached: the run ends on its own, sooner when its reads are
            // let go.
            drop(tokio::task::spawn_blocking(move || {
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
        if self.event_id != event.id {
            return None;
        }
        self.made.await.ok().flatten()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    /// Events of `sizes` (bytes), `seq` 1, 2, …, each carrying content.
    fn sized_events(sizes: &[i64]) -> VecDeque<event::Model> {
        sizes
            .iter()
            .zip(1..)
            .map(|(&size, seq)| event::Model {
                id: format!("evt_{seq}"),
                seq,
                size: Some(size),
                ..payload::tests::event(entity::EventKind::Created, true)
            })
            .collect()
    }

    /// A `start` for [`Further::start`] that records each run's `seq`s and
    /// reads nothing (each file's rendering is closed unmade).
    fn recorded(
        runs: &std::cell::RefCell<Vec<Vec<i64>>>,
    ) -> impl Fn(Vec<(&event::Model, i64)>) -> Vec<Ahead> {
        |run| {
            runs.borrow_mut()
                .push(run.iter().map(|(event, _)| event.seq).collect());
            run.into_iter()
                .map(|(event, size)| Ahead {
                    event_id: event.id.clone(),
                    seq: event.seq,
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
        assert_eq!(taken.event_id, "evt_4");
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

    #[test]
    fn interleaved_reads_are_made_in_order_and_only_while_awaited() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let repo = git2::Repository::init_bare(dir.path()).expect("a bare mirror");
        let blob = repo.blob(b"small file").expect("a blob").to_string();
        let mirror = MirrorReader::new(dir.path().to_owned());
        let made = Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut interleaved = Interleaved::default();
        let mut receivers = Vec::new();
        for seq in 1..=3 {
            let (send, receiver) = tokio::sync::oneshot::channel();
            let made = made.clone();
            let prepare = move |bytes: &[u8]| {
                made.lock().expect("lock").push((seq, bytes.to_vec()));
                Err(payload::PayloadError::Incomplete(format!("evt_{seq}")))
            };
            interleaved.push(
                seq,
                Read {
                    blob: Some(blob.clone()),
                    prepare: Box::new(prepare),
                    send,
                },
            );
            receivers.push(receiver);
        }
        let mut receivers = receivers.into_iter();
        // Event 1's look-ahead was let go (passed over): its read is not made.
        drop(receivers.next());
        let (mut second, mut third) = (
            receivers.next().expect("event 2"),
            receivers.next().expect("event 3"),
        );

        // The lane comes to event 2: reads up to it are made, not beyond.
        interleaved.run_through(2, &mirror);
        assert_eq!(
            *made.lock().expect("lock"),
            vec![(2, b"small file".to_vec())]
        );
        assert!(matches!(second.try_recv(), Ok(Some(Err(_)))));
        assert!(third.try_recv().is_err(), "event 3's read waits its turn");

        // The next request takes event 3's read along.
        interleaved.next().expect("event 3's read").make(&mirror);
        assert!(matches!(third.try_recv(), Ok(Some(Err(_)))));
        assert!(interleaved.next().is_none());
        assert_eq!(made.lock().expect("lock").len(), 2);
    }
}
