//! Broker destinations (docs/brokers.md) against their floors, measured in
//! the same run on the same machine, every figure printed beside its floor.
//!
//! `cargo bench --bench brokers [-- OPTIONS]`
//!
//! The repository is the reference workload (`support::workload`: 5,000
//! generated files, seed 1) served over `git://` by a local `git daemon`.
//! Herald is the release binary (or `HERALD_BENCH_BINARY`), started as a
//! user starts it on SQLite under a fresh data directory for each run, with
//! one app whose `delivery` is the broker's. Each run makes its own place
//! on the broker (a JetStream stream taking `{name}.>`, a topic exchange
//! with a queue bound to `#`, a Redis stream key: `brokers/ends.rs`) with a
//! consumer that records when each message arrived, and removes it after.
//! Every message is checked as the reference bench's receiver checks a
//! webhook (both signatures, each file's SHA-256 after reassembling
//! chunks), and the tree they build is compared with git's.
//!
//! For each broker (NATS JetStream, RabbitMQ, Redis Streams), each run:
//!
//! 1. **Initial sync**: from the registration request to the consumer
//!    getting the last message (each message is acknowledged by the broker
//!    before Herald sends the next). Floor: a shallow bare `git clone` of
//!    the same repository plus a plain client (Herald's own: async-nats,
//!    amqprs, redis) publishing the same messages Herald published (the
//!    same bodies and headers, in the same order, held in memory before
//!    the clock starts)
//!    to a place of its own on the same broker, on one connection, each
//!    after the broker acknowledged the one before, as Herald's default
//!    window 1 does: JetStream's ack with `Nats-Msg-Id`; publisher confirms,
//!    `mandatory`, persistent; Herald's own idempotent `XADD` script.
//! 2. **Delivery rate**: messages per second from the first message to the
//!    last, as the consumer got them; the floor's measured the same way.
//!    Goal: ≥ 0.8 of the floor's rate, at the median of the runs.
//! 3. **A 10-file push**, announced by a GitHub push hook: from the hook to
//!    the change's last message. Floor: `git fetch` of the commit into a
//!    mirror plus `git diff-tree`, then the plain client publishing the
//!    change's messages.
//!
//! NATS's default `max_payload` is 1 MB: a binary file of more than about
//! 750 KiB unchunked is more than that in base64, so the NATS runs chunk
//! binary files above 512 KiB (`delivery.chunk_threshold_bytes`), each
//! chunk 512 KiB of base64 as by default. The other brokers run Herald's
//! defaults.
//!
//! Options (defaults in brackets): `--files N` [5000], `--seed N` [1],
//! `--runs N` [1] (from 3 runs, each range gives its median; the brokers
//! take turns run by run), `--brokers nats,amqp,redis` [all], `--env
//! KEY=VALUE` (more environment for Herald; repeatable). Without `--bench`
//! (as `cargo test --benches` runs it) the sizes shrink to a smoke run.
//! Results are printed as Markdown; see BENCHMARKS.md. The bench exits
//! non-zero when the rate goal is missed on the reference workload.

#[path = "brokers/ends.rs"]
mod ends;
mod support;

use std::collections::HashSet;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use ends::{Held, Kind, Place, Publisher};
use serde_json::{Value, json};
use support::verify::{self, Checker, Tree};
use support::workload::{Change, Event, Mutation, Workload};
use support::*;

/// Base64 characters a chunk (`delivery.chunk_size_bytes`, its default).
const CHUNK_SIZE: usize = 512 * 1024;

#[derive(Debug, Clone)]
struct Options {
    files: usize,
    seed: u64,
    runs: usize,
    brokers: Vec<Kind>,
    env: Vec<(String, String)>,
}

fn parse_options() -> Options {
    let mut args = BenchArgs::from_env();
    let mut options = Options {
        files: if args.full { 5_000 } else { 40 },
        seed: 1,
        runs: 1,
        brokers: vec![Kind::Nats, Kind::Amqp, Kind::Redis],
        env: Vec::new(),
    };
    while let Some(arg) = args.next_option() {
        match arg.as_str() {
            "--files" => options.files = args.number(&arg),
            "--seed" => options.seed = args.number(&arg) as u64,
            "--runs" => options.runs = args.number(&arg),
            "--brokers" => {
                options.brokers = args
                    .value(&arg)
                    .split(',')
                    .map(|name| Kind::parse(name.trim()))
                    .collect();
            }
            "--env" => options.env.push(args.pair(&arg)),
            other => panic!("unknown option {other:?} (see benches/brokers.rs)"),
        }
    }
    assert!(options.runs >= 1 && !options.brokers.is_empty());
    options
}

fn main() {
    let options = parse_options();
    exit_if_missed(&runtime().block_on(run(&options)));
}

/// Binary files above this many bytes go in chunks, on `kind`.
fn chunk_threshold(kind: Kind) -> usize {
    match kind {
        Kind::Nats => 512 * 1024,
        Kind::Amqp | Kind::Redis => 1 << 20,
    }
}

/// Herald's environment for `kind`: a GitHub secret for the push hooks,
/// no periodic rescans, NATS's chunking, and `--env`.
fn herald_env(options: &Options, kind: Kind) -> Vec<(String, String)> {
    let mut env = vec![
        (
            "HERALD__INBOUND__GITHUB_SECRET".into(),
            GITHUB_SECRET.into(),
        ),
        ("HERALD__SCHEDULER__RESCAN_INTERVAL".into(), "1h".into()),
    ];
    if kind == Kind::Nats {
        env.push((
            "HERALD__DELIVERY__CHUNK_THRESHOLD_BYTES".into(),
            chunk_threshold(kind).to_string(),
        ));
    }
    env.extend(options.env.iter().cloned());
    env
}

/// What one run on one broker measured.
struct Figures {
    messages: usize,
    /// Registration → the last message (s).
    sync_s: f64,
    /// Registration → the first message (s).
    first_s: f64,
    /// Messages per second, first to last.
    rate: f64,
    /// Herald's CPU time a message over the sync (µs), the scan included.
    cpu_us: f64,
    /// Herald's mean publish → acknowledgement over the sync (µs, its
    /// `herald_delivery_duration_seconds`), and the floor's.
    publish_us: f64,
    floor_publish_us: f64,
    clone_s: f64,
    /// The floor's publish, first to last acknowledgement (s).
    publish_s: f64,
    floor_rate: f64,
    push_ms: f64,
    /// `git fetch` + `git diff-tree`, then the change's messages published.
    push_floor_ms: f64,
    push_messages: usize,
}

impl Figures {
    fn sync_ratio(&self) -> f64 {
        self.sync_s / (self.clone_s + self.publish_s)
    }
}

/// Runs every broker `--runs` times, turn by turn; prints the table and
/// gives the goals missed.
async fn run(options: &Options) -> Vec<String> {
    let root = tempfile::tempdir().expect("a temp dir");
    let served = root.path().join("served");
    std::fs::create_dir_all(&served).expect("the served directory");
    let planned: Vec<Mutation> = (0..options.runs * options.brokers.len())
        .map(|push| Mutation {
            changes: 10,
            seed: options.seed + push as u64,
        })
        .collect();
    let started = Instant::now();
    let mut workload = Workload::generate(&served, options.files, options.seed, &planned);
    eprintln!(
        "generated {}: {} files ({} binary), {:.1} MB, in {:.1} s",
        workload.name,
        workload.tally.files,
        workload.tally.binary,
        workload.tally.bytes as f64 / 1e6,
        started.elapsed().as_secs_f64()
    );
    let daemon = GitDaemon::serve(&served);
    println!(
        "# Broker destinations\n\n{} CPUs, load {}; `--files {} --seed {} --runs {}`: {} files, \
         {:.1} MB\n",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        load_average(),
        options.files,
        options.seed,
        options.runs,
        workload.tally.files,
        workload.tally.bytes as f64 / 1e6,
    );
    let mut figures: Vec<Vec<Figures>> = options.brokers.iter().map(|_| Vec::new()).collect();
    for run in 0..options.runs {
        for (index, &kind) in options.brokers.iter().enumerate() {
            eprintln!("run {} of {}: {}", run + 1, options.runs, kind.title());
            figures[index].push(run_once(options, kind, &mut workload, &daemon, root.path()).await);
        }
    }
    let reference = options.files == 5_000 && options.seed == 1;
    println!(
        "\n| broker | figure | Herald | floor (same run) | ratio | goal |\n|---|---|---|---|---|---|"
    );
    let mut missed = Vec::new();
    for (kind, runs) in options.brokers.iter().zip(&figures) {
        let of = |f: fn(&Figures) -> f64| runs.iter().map(f).collect::<Vec<f64>>();
        let title = kind.title();
        let sync_ratio = of(Figures::sync_ratio);
        println!(
            "| {title} | initial sync, registration → last message ({} messages) | {} | clone {} \
             + publish {} | {} | — |",
            runs[0].messages,
            range(&of(|f| f.sync_s), "s", 2),
            range(&of(|f| f.clone_s), "s", 2),
            range(&of(|f| f.publish_s), "s", 2),
            range(&sync_ratio, "×", 2),
        );
        let rate_ratio = of(|f| f.rate / f.floor_rate);
        let goal = if reference {
            let ok = median(&rate_ratio) >= 0.8;
            if !ok {
                missed.push(format!("{title} delivery rate: ≥ 0.8 of the floor's"));
            }
            format!("≥ 0.8 — {}", met(ok))
        } else {
            "≥ 0.8 (set for 5,000 files, seed 1)".to_owned()
        };
        println!(
            "| {title} | delivery rate, one subscription | {} | {} | {} | {goal} |",
            range(&of(|f| f.rate), "messages/s", 0),
            range(&of(|f| f.floor_rate), "/s", 0),
            range(&rate_ratio, "", 2),
        );
        println!(
            "| {title} | — a message's time: publish → ack, + between acks | {} + {} | {} + {} | \
             — | — |",
            range(&of(|f| f.publish_us), "µs", 0),
            range(&of(|f| 1e6 / f.rate - f.publish_us), "µs", 0),
            range(&of(|f| f.floor_publish_us), "µs", 0),
            range(&of(|f| 1e6 / f.floor_rate - f.floor_publish_us), "µs", 0),
        );
        println!(
            "| {title} | — registration → first message; Herald's CPU a message (scan included) \
             | {}; {} | — | — | — |",
            range(&of(|f| f.first_s), "s", 2),
            range(&of(|f| f.cpu_us), "µs", 0),
        );
        println!(
            "| {title} | 10-file push (GitHub hook) → last message ({} messages) | {} | fetch + \
             diff-tree + publish {} | {} | — |",
            runs[0].push_messages,
            range(&of(|f| f.push_ms), "ms", 0),
            range(&of(|f| f.push_floor_ms), "ms", 0),
            range(&of(|f| f.push_ms / f.push_floor_ms), "×", 2),
        );
    }
    missed
}

/// One broker, one run: Herald's sync and push, then the floors.
async fn run_once(
    options: &Options,
    kind: Kind,
    workload: &mut Workload,
    daemon: &GitDaemon,
    root: &Path,
) -> Figures {
    let url = daemon.url_of(&format!("{}.git", workload.name));
    let mut want = verify::tree_of(&workload.served, workload.tip());
    let threshold = chunk_threshold(kind);
    let expected = verify::messages_of(
        &workload.served,
        workload.tip(),
        None,
        threshold,
        CHUNK_SIZE,
    );
    let dir = tempfile::tempdir_in(root).expect("a temp dir");
    let database = BenchDatabase::create(Backend::Sqlite).await;
    let env = herald_env(options, kind);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let herald = Herald::start(dir.path(), &database, &env).await;
    let place = Place::new(kind, "herald").await;
    let (token, key) = onboard(&herald, kind, place.destination()).await;

    // 1. The initial sync.
    let cpu_before = process_ticks(herald.pid);
    let started_ns = unix_ms() * 1e6;
    herald.register(&token, &url).await;
    wait_for_messages(&place, expected, Some(&herald), Duration::from_secs(1_800)).await;
    let cpu_s = (process_ticks(herald.pid) - cpu_before) as f64 / clock_ticks_per_second();
    let publish_us = herald
        .metric("herald_delivery_duration_seconds_sum", "")
        .await
        / herald
            .metric("herald_delivery_duration_seconds_count", "")
            .await
        * 1e6;
    let synced = place.held(0);
    let (first, last) = (synced[0].at_ns, synced[expected - 1].at_ns);
    let mut checker = Checker::new(&key);
    check(&mut checker, &synced, &want, "the initial sync");
    let (sync_s, first_s) = ((last - started_ns) / 1e9, (first - started_ns) / 1e9);
    let rate = (expected - 1) as f64 / ((last - first) / 1e9);
    eprintln!(
        "{}: {expected} messages in {sync_s:.2} s (first after {first_s:.2} s), {rate:.0}/s",
        kind.title(),
    );

    // 3. A 10-file push, from the hook to the change's last message.
    let mirror = dir.path().join("floor-mirror.git");
    timed(
        Command::new("git")
            .args(["clone", "-q", "--mirror", &url])
            .arg(&mirror),
    );
    let change = workload.push().clone();
    let push_expected = change_messages(workload, &change, threshold);
    change.apply(&mut want);
    let started_ns = unix_ms() * 1e6;
    let (status, _) = send_hook(
        &herald.http,
        &herald.base,
        &format!("brokers-{}", place.name),
        push_payload(&url, &change.new),
    )
    .await;
    assert_eq!(status, 202, "the push hook is accepted");
    wait_for_messages(
        &place,
        expected + push_expected,
        Some(&herald),
        Duration::from_secs(120),
    )
    .await;
    let pushed = place.held(expected);
    check(&mut checker, &pushed, &want, "the push");
    let push_ms = (pushed[push_expected - 1].at_ns - started_ns) / 1e6;
    herald.stop().await;
    place.remove().await;

    // The floors, on the same machine, one after the other.
    let clone_dir = dir.path().join("floor-clone.git");
    let clone_s = timed(
        Command::new("git")
            .args(["clone", "-q", "--bare", "--depth", "1", &url])
            .arg(&clone_dir),
    );
    std::fs::remove_dir_all(&clone_dir).ok();
    let floor = Place::new(kind, "floor").await;
    let publisher = Publisher::connect(kind).await;
    let started = Instant::now();
    let mut acked = Duration::ZERO;
    for message in &synced {
        let sent = Instant::now();
        publisher.publish(&floor, message).await;
        acked += sent.elapsed();
    }
    let publish_s = started.elapsed().as_secs_f64();
    let floor_publish_us = acked.as_secs_f64() / expected as f64 * 1e6;
    wait_for_messages(&floor, expected, None, Duration::from_secs(60)).await;
    let republished = floor.held(0);
    let floor_rate =
        (expected - 1) as f64 / ((republished[expected - 1].at_ns - republished[0].at_ns) / 1e9);
    let started = Instant::now();
    fetch_and_diff(&mirror, &change.old, &change.new);
    for message in &pushed {
        publisher.publish(&floor, message).await;
    }
    let push_floor_ms = started.elapsed().as_secs_f64() * 1000.0;
    publisher.close().await;
    floor.remove().await;
    eprintln!(
        "floors: clone {clone_s:.2} s, publish {publish_s:.2} s ({floor_rate:.0}/s); \
         publish → ack: Herald {publish_us:.0} µs, floor {floor_publish_us:.0} µs; push: \
         Herald {push_ms:.0} ms, floor {push_floor_ms:.0} ms"
    );
    Figures {
        messages: expected,
        sync_s,
        first_s,
        rate,
        cpu_us: cpu_s / (expected as f64) * 1e6,
        publish_us,
        floor_publish_us,
        clone_s,
        publish_s,
        floor_rate,
        push_ms,
        push_floor_ms,
        push_messages: push_expected,
    }
}

/// Onboards an app delivering to `destination` on `kind`'s broker; its
/// token and the key its messages are signed with.
async fn onboard(herald: &Herald, kind: Kind, destination: Value) -> (String, String) {
    let (_, token, key) = herald
        .onboard_with(json!({
            "app_name": format!("bench-{}", kind.name()),
            "base_url": "http://127.0.0.1:9/unused",
            "delivery": kind.name(),
            "destination": destination,
        }))
        .await;
    (token, key)
}

/// How many messages `change` makes: one a delete, the created and
/// updated files' as [`verify::messages_of`] counts them.
fn change_messages(workload: &Workload, change: &Change, threshold: usize) -> usize {
    let written: HashSet<String> = change
        .files
        .iter()
        .filter(|f| f.event != Event::Delete)
        .map(|f| f.path.clone())
        .collect();
    let deletes = change.files.len() - written.len();
    deletes
        + verify::messages_of(
            &workload.served,
            &change.new,
            Some(&written),
            threshold,
            CHUNK_SIZE,
        )
}

/// Checks each message as a webhook; panics unless the tree they built is
/// `want`.
fn check(checker: &mut Checker, messages: &[Held], want: &Tree, what: &str) {
    for message in messages {
        if let Err(problem) = checker.check(&message.endpoint, &message.header_map(), &message.body)
        {
            panic!("{what}: {} {}: {problem}", message.endpoint, message.id);
        }
    }
    assert!(
        checker.tree() == want,
        "{what}: the messages built {} files, git's tree has {}",
        checker.tree().len(),
        want.len()
    );
}

/// Waits until `place`'s consumer got `expected` messages (bounded).
async fn wait_for_messages(
    place: &Place,
    expected: usize,
    herald: Option<&Herald>,
    timeout: Duration,
) {
    let deadline = Instant::now() + timeout;
    while place.count() < expected {
        assert!(
            Instant::now() < deadline,
            "gave up after {timeout:?}: {} of {expected} messages arrived on {}; herald's last \
             lines:\n{}",
            place.count(),
            place.name,
            herald.map(|h| tail(&h.logs)).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
