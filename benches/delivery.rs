//! Benchmark of delivery: the real `herald` binary, started as a user starts
//! it (`serve --port 0`, a data directory of its own, configuration through
//! `HERALD__…` variables), fetching generated repositories from a local
//! `git daemon` and delivering every event to a receiver inside this process
//! that answers 204 at once.
//!
//! `cargo bench --bench delivery [-- OPTIONS]` (`cargo bench` builds the
//! release binary too: this bench runs `CARGO_BIN_EXE_herald`, which is
//! `target/release/herald` under `cargo bench`).
//!
//! 1. One subscription, strictly ordered: an app registers a repository of
//!    `--files` files; events/s of its initial snapshot, first to last arrival.
//! 2. `--apps` apps × `--repos` repositories of `--repo-files` files, every
//!    app subscribed to every repository: aggregate events/s.
//! 3. Latency: `--commits` successive 10-file commits on a repository of
//!    `--latency-files` files; from the snapshot's commit in the database
//!    (`snapshots.observed_at`) to the receiver's arrival, p50 and p99.
//!
//! Options (defaults in brackets):
//!
//! - `--files N` [20000], `--apps N` [10], `--repos N` [5],
//!   `--repo-files N` [2000], `--commits N` [50], `--latency-files N` [1000]
//! - `--replay N` [2000]: after scenario 1, the server is stopped and the steps
//!   of one delivery are timed one by one on N of its events
//! - `--scenarios 1,2,3` [all]
//! - `--db sqlite|postgres|all` [all: SQLite, and PostgreSQL when
//!   `TEST_DATABASE_URL` is set; a database `herald_bench_<ulid>` is created
//!   per scenario and dropped after it]
//!
//! Without `--bench` (as `cargo test --benches` runs it) the sizes shrink to a
//! smoke test. Results are printed as Markdown; see BENCHMARKS.md.

mod support;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::{Duration, Instant};

use actors::git::Mirror;
use actors::ids::{AppId, RepoId, SubscriptionId};
use actors::payload::{self, Chunking, RepositoryRef};
use actors::signing;
use actors::store::Store;
use actors::store::delivery::{Attempt, EventOutcome};
use actors::webhook_client::WebhookClient;
use entity::event;
use reqwest::header::{HeaderMap, HeaderValue};
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder};
use support::*;

/// Events per measured commit of scenario 3 (modify 4, add 3, delete 3).
const EVENTS_PER_COMMIT: usize = 10;

// ---------------------------------------------------------------- options

#[derive(Debug, Clone)]
struct Options {
    files: usize,
    apps: usize,
    repos: usize,
    repo_files: usize,
    commits: usize,
    latency_files: usize,
    replay: usize,
    scenarios: Vec<usize>,
    /// `None`: SQLite, then PostgreSQL when `TEST_DATABASE_URL` is set.
    db: Option<Backend>,
}

fn parse_options() -> Options {
    let mut args = BenchArgs::from_env();
    let mut options = if args.full {
        Options {
            files: 20_000,
            apps: 10,
            repos: 5,
            repo_files: 2_000,
            commits: 50,
            latency_files: 1_000,
            replay: 2_000,
            scenarios: vec![1, 2, 3],
            db: None,
        }
    } else {
        Options {
            files: 300,
            apps: 2,
            repos: 2,
            repo_files: 100,
            commits: 3,
            latency_files: 100,
            replay: 20,
            scenarios: vec![1, 2, 3],
            db: None,
        }
    };
    while let Some(arg) = args.next_option() {
        match arg.as_str() {
            "--files" => options.files = args.number(&arg),
            "--apps" => options.apps = args.number(&arg),
            "--repos" => options.repos = args.number(&arg),
            "--repo-files" => options.repo_files = args.number(&arg),
            "--commits" => options.commits = args.number(&arg),
            "--latency-files" => options.latency_files = args.number(&arg),
            "--replay" => options.replay = args.number(&arg),
            "--scenarios" => options.scenarios = args.numbers(&arg),
            "--db" => options.db = args.backend(),
            other => panic!("unknown option {other:?} (see benches/delivery.rs)"),
        }
    }
    assert!(
        options.files >= 100 && options.repo_files >= 10 && options.latency_files >= 100,
        "the repositories are too small"
    );
    assert!(options.apps >= 1 && options.repos >= 1 && options.commits >= 1);
    options
}

fn main() {
    let options = parse_options();
    runtime().block_on(run(&options, &backends(options.db)));
}

/// Events per second over arrival times (Unix ms).
#[derive(Debug, Clone, Copy)]
struct Throughput {
    events: usize,
    /// First to last arrival.
    span_s: f64,
    overall: f64,
    /// Between the 10th and the 90th percentile of arrivals.
    middle: f64,
    first_decile: f64,
    last_decile: f64,
}

fn throughput(times: &[f64]) -> Throughput {
    let t = sorted(times);
    let n = t.len();
    let rate = |from: usize, to: usize| -> f64 {
        let span = (t[to] - t[from]) / 1000.0;
        if span > 0.0 {
            (to - from) as f64 / span
        } else {
            f64::NAN
        }
    };
    let decile = (n / 10).max(1).min(n - 1);
    Throughput {
        events: n,
        span_s: (t[n - 1] - t[0]) / 1000.0,
        overall: rate(0, n - 1),
        middle: rate(decile, n - 1 - decile),
        first_decile: rate(0, decile),
        last_decile: rate(n - 1 - decile, n - 1),
    }
}

// ------------------------------------------------------------- /proc probes

/// CPU ticks (user, system) of a process's threads, keyed by thread id, with
/// their names.
fn thread_ticks(pid: u32) -> HashMap<u64, (String, u64, u64)> {
    let mut threads = HashMap::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return threads;
    };
    for task in tasks.filter_map(Result::ok) {
        let Some(tid) = task.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        if let Some(entry) = stat_ticks(&task.path().join("stat")) {
            threads.insert(tid, entry);
        }
    }
    threads
}

/// `syscr`, `syscw`, `wchar` and `write_bytes` of `/proc/{pid}/io`: read-
/// and write-class system calls, bytes passed to write calls, bytes sent to
/// storage.
fn io_counters(pid: u32) -> [u64; 4] {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).unwrap_or_default();
    let field = |name: &str| -> u64 {
        io.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    [
        field("syscr"),
        field("syscw"),
        field("wchar"),
        field("write_bytes"),
    ]
}

/// Voluntary and involuntary context switches, summed over the threads
/// alive now.
fn context_switches(pid: u32) -> (u64, u64) {
    let mut total = (0, 0);
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return total;
    };
    for task in tasks.filter_map(Result::ok) {
        let status = std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
        for line in status.lines() {
            let value = |l: &str| l.split_whitespace().nth(1)?.parse::<u64>().ok();
            if line.starts_with("voluntary_ctxt_switches") {
                total.0 += value(line).unwrap_or(0);
            } else if line.starts_with("nonvoluntary_ctxt_switches") {
                total.1 += value(line).unwrap_or(0);
            }
        }
    }
    total
}

/// Where the CPU went, at one instant.
struct CpuSample {
    at: Instant,
    herald_io: [u64; 4],
    herald_switches: (u64, u64),
    herald: HashMap<u64, (String, u64, u64)>,
    bench: HashMap<u64, (String, u64, u64)>,
    postgres: HashMap<u64, u64>,
    machine: (u64, u64, u64),
}

fn cpu_sample(herald_pid: u32, postgres: Option<&str>) -> CpuSample {
    CpuSample {
        at: Instant::now(),
        herald_io: io_counters(herald_pid),
        herald_switches: context_switches(herald_pid),
        herald: thread_ticks(herald_pid),
        bench: thread_ticks(std::process::id()),
        postgres: postgres.map(postgres_ticks).unwrap_or_default(),
        machine: machine_ticks(),
    }
}

/// CPU seconds (user, system) per thread name between two samples (threads
/// born in between count from zero).
fn by_name(
    before: &HashMap<u64, (String, u64, u64)>,
    after: &HashMap<u64, (String, u64, u64)>,
    tick: f64,
) -> BTreeMap<String, (f64, f64)> {
    let mut names = BTreeMap::new();
    for (tid, (name, user, system)) in after {
        let (u0, s0) = before.get(tid).map_or((0, 0), |(_, u, s)| (*u, *s));
        let entry = names.entry(name.clone()).or_insert((0.0, 0.0));
        entry.0 += user.saturating_sub(u0) as f64 / tick;
        entry.1 += system.saturating_sub(s0) as f64 / tick;
    }
    names
}

/// CPU use between two samples, as Markdown table rows.
fn cpu_rows(before: &CpuSample, after: &CpuSample, events: usize) -> Vec<String> {
    let tick = clock_ticks_per_second();
    let wall = (after.at - before.at).as_secs_f64();
    let mut rows = Vec::new();
    let mut row = |what: String, (user, system): (f64, f64)| {
        let seconds = user + system;
        let split = if user + system > 0.0 {
            format!(
                "{:.0}% / {:.0}%",
                user / seconds * 100.0,
                system / seconds * 100.0
            )
        } else {
            String::new()
        };
        rows.push(format!(
            "| {what} | {seconds:.2} s | {split} | {:.2} | {:.0} µs |",
            seconds / wall,
            seconds * 1e6 / events as f64
        ));
    };
    let herald = by_name(&before.herald, &after.herald, tick);
    row(
        "Herald process, all threads".into(),
        herald
            .values()
            .fold((0.0, 0.0), |a, b| (a.0 + b.0, a.1 + b.1)),
    );
    for (name, seconds) in &herald {
        if seconds.0 + seconds.1 >= 0.01 {
            row(format!("— threads named `{name}`"), *seconds);
        }
    }
    let bench = by_name(&before.bench, &after.bench, tick);
    row(
        "receiver (this process, threads `receiver`)".into(),
        bench.get("receiver").copied().unwrap_or((0.0, 0.0)),
    );
    if !after.postgres.is_empty() {
        let seconds: f64 = after
            .postgres
            .iter()
            .map(|(pid, t)| t.saturating_sub(*before.postgres.get(pid).unwrap_or(&0)) as f64)
            .sum::<f64>()
            / tick;
        rows.push(format!(
            "| PostgreSQL backends of the database ({}) | {seconds:.2} s | | {:.2} | {:.0} µs |",
            after.postgres.len(),
            seconds / wall,
            seconds * 1e6 / events as f64
        ));
    }
    let (busy, iowait, total) = (
        after.machine.0.saturating_sub(before.machine.0) as f64,
        after.machine.1.saturating_sub(before.machine.1) as f64,
        after.machine.2.saturating_sub(before.machine.2) as f64,
    );
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    if total > 0.0 {
        rows.push(format!(
            "| whole machine, every process (shared) | {:.2} s | | {:.2} of {cores:.0} | {:.0} µs |",
            busy / tick,
            busy / total * cores,
            busy / tick * 1e6 / events as f64
        ));
        rows.push(format!(
            "| whole machine, I/O wait | {:.2} s | | {:.2} | |",
            iowait / tick,
            iowait / total * cores
        ));
    }
    let n = events as f64;
    let io = |i: usize| after.herald_io[i].saturating_sub(before.herald_io[i]) as f64 / n;
    rows.push(format!(
        "\nHerald per event: {:.1} read-class + {:.1} write-class system calls \
         (`/proc/PID/io` syscr, syscw), {:.0} B passed to write calls, {:.0} B written \
         to storage; {:.1} voluntary + {:.2} involuntary context switches (threads \
         alive at the end).",
        io(0),
        io(1),
        io(2),
        io(3),
        after
            .herald_switches
            .0
            .saturating_sub(before.herald_switches.0) as f64
            / n,
        after
            .herald_switches
            .1
            .saturating_sub(before.herald_switches.1) as f64
            / n,
    ));
    rows.insert(
        0,
        format!("CPU over the {wall:.1} s from first to last arrival:\n"),
    );
    rows.insert(
        1,
        "| process / threads | CPU time | user / sys | cores busy | per event |\n|---|---|---|---|---|"
            .into(),
    );
    rows
}

// ---------------------------------------------------------------- analysis

/// Per-event timing from the database: `delivery_attempts.attempted_at`
/// (just before the POST) and `events.delivered_at` (just after the answer,
/// before `record_attempt`'s transaction), both Unix ms. Averaged over
/// thousands of events, their truncation to whole ms cancels out.
#[derive(Debug, Default)]
struct Splits {
    /// attempted_at → delivered_at: the request, answer and response body.
    http_ms: Vec<f64>,
    /// delivered_at → the next attempted_at: the transaction, reading the
    /// blob, rendering, signing, and the batch query every 64 events.
    between_ms: Vec<f64>,
    /// The stored `latency_ms` (truncated to whole ms).
    latency_ms: Vec<f64>,
}

/// Splits per subscription, and event id → (subscription, seq, snapshot).
async fn splits(store: &Store) -> (Splits, HashMap<String, (String, i64)>) {
    let rows = rows(
        store,
        "SELECT e.id, e.subscription_id, e.seq, e.delivered_at, a.attempted_at, a.latency_ms \
         FROM events e JOIN delivery_attempts a ON a.event_id = e.id \
         ORDER BY e.subscription_id, e.seq",
    )
    .await;
    let mut out = Splits::default();
    let mut ids = HashMap::new();
    let mut previous: Option<(String, i64)> = None;
    for row in &rows {
        let id: String = get(row, "id");
        let sub: String = get(row, "subscription_id");
        let seq: i64 = get(row, "seq");
        let delivered: Option<i64> = get(row, "delivered_at");
        let attempted: i64 = get(row, "attempted_at");
        let latency: i64 = get(row, "latency_ms");
        let Some(delivered) = delivered else { continue };
        out.http_ms.push((delivered - attempted) as f64);
        out.latency_ms.push(latency as f64);
        if let Some((prev_sub, prev_delivered)) = &previous
            && *prev_sub == sub
        {
            out.between_ms.push((attempted - prev_delivered) as f64);
        }
        previous = Some((sub.clone(), delivered));
        ids.insert(id, (sub, seq));
    }
    (out, ids)
}

fn print_throughput(label: &str, t: &Throughput) {
    println!("| {label} | value |\n|---|---|");
    println!("| events | {} |", t.events);
    println!("| first → last arrival | {:.2} s |", t.span_s);
    println!("| **events/s, first → last** | **{:.0}** |", t.overall);
    println!("| events/s, middle 80% of arrivals | {:.0} |", t.middle);
    println!(
        "| events/s, first 10% of arrivals | {:.0} |",
        t.first_decile
    );
    println!("| events/s, last 10% of arrivals | {:.0} |", t.last_decile);
}

fn print_splits(s: &Splits, lanes: usize) {
    let http = mean(&s.http_ms);
    let between = mean(&s.between_ms);
    println!(
        "Per-event cycle of one lane (database timestamps, mean over {} events, \
         {lanes} lane(s) running at once):\n",
        s.http_ms.len()
    );
    println!("| step | mean |\n|---|---|");
    println!("| POST → answer read (`attempted_at` → `delivered_at`) | {http:.3} ms |");
    println!(
        "| answer → next POST (`record_attempt`, blob read, render, sign, batch query) | {between:.3} ms |"
    );
    println!(
        "| cycle = per-lane rate of {:.0} events/s | {:.3} ms |",
        1000.0 / (http + between),
        http + between
    );
    println!(
        "| stored `latency_ms` (whole ms, truncated) | {:.3} ms |\n",
        mean(&s.latency_ms)
    );
}

/// The dispatcher's polling queries, timed from this process while the
/// server drains (medians of 5, ms): `apps_with_due_events`, and
/// `subscriptions_due` for the app with the most pending events.
async fn polling_cost(store: &Store) -> (f64, f64) {
    let app: String = rows(
        store,
        "SELECT app_id, COUNT(*) AS n FROM events WHERE status = 'pending' \
         GROUP BY app_id ORDER BY n DESC LIMIT 1",
    )
    .await
    .first()
    .map(|r| get(r, "app_id"))
    .unwrap_or_default();
    let (mut apps, mut subs) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        let t = Instant::now();
        store
            .apps_with_due_events(
                actors::clock::now_ms(),
                Some(actors::clock::now_ms() - 3_600_000),
                10_000,
            )
            .await
            .expect("apps_with_due_events");
        apps.push(t.elapsed().as_secs_f64() * 1000.0);
        let t = Instant::now();
        store
            .subscriptions_due(
                &AppId::stored(app.as_str()),
                actors::clock::now_ms(),
                Some(actors::clock::now_ms() - 3_600_000),
                8,
            )
            .await
            .expect("subscriptions_due");
        subs.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    (median(&apps), median(&subs))
}

fn print_polling((apps_due, subscriptions_due): (f64, f64), apps: usize) {
    // Every `delivery.tick` (100 ms here): one `apps_with_due_events`, and a
    // Drain, hence one `subscriptions_due`, per app with due events.
    let per_second = 10.0 * (apps_due + apps as f64 * subscriptions_due);
    println!(
        "The dispatcher's polling, timed from this process halfway through the drain: \
         `apps_with_due_events` {apps_due:.2} ms, `subscriptions_due` {subscriptions_due:.2} ms \
         (medians of 5). At one of the first and {apps} of the second per 100 ms tick, \
         that is about {per_second:.0} ms of database time per second.\n"
    );
}

// ------------------------------------------------------------------- replay

/// One step of a delivery, repeated on many events: wall time per call, and
/// CPU per call of this process (without the receiver's threads), of the
/// receiver and of the PostgreSQL backends.
#[derive(Debug, Default)]
struct Step {
    name: &'static str,
    wall_ms: Vec<f64>,
    cpu_us: f64,
    system_share: f64,
    receiver_us: f64,
    postgres_us: f64,
    /// Read- and write-class system calls per call, this whole process.
    syscalls: f64,
    /// Context switches per call, this whole process.
    switches: f64,
}

/// CPU counters of this process's threads and the database's backends.
struct Probe {
    threads: HashMap<u64, (String, u64, u64)>,
    postgres: HashMap<u64, u64>,
    io: [u64; 4],
    switches: (u64, u64),
}

fn probe(postgres: Option<&str>) -> Probe {
    Probe {
        threads: thread_ticks(std::process::id()),
        postgres: postgres.map(postgres_ticks).unwrap_or_default(),
        io: io_counters(std::process::id()),
        switches: context_switches(std::process::id()),
    }
}

impl Step {
    fn finish(&mut self, before: &Probe, after: &Probe) {
        let tick = clock_ticks_per_second();
        let calls = self.wall_ms.len().max(1) as f64;
        let names = by_name(&before.threads, &after.threads, tick);
        let (mut user, mut system) = (0.0, 0.0);
        for (name, (u, s)) in &names {
            if name == "receiver" {
                self.receiver_us = (u + s) * 1e6 / calls;
            } else {
                user += u;
                system += s;
            }
        }
        self.cpu_us = (user + system) * 1e6 / calls;
        self.system_share = if user + system > 0.0 {
            system / (user + system)
        } else {
            f64::NAN
        };
        let postgres: u64 = after
            .postgres
            .iter()
            .map(|(pid, t)| t.saturating_sub(*before.postgres.get(pid).unwrap_or(&0)))
            .sum();
        self.postgres_us = postgres as f64 / tick * 1e6 / calls;
        self.syscalls =
            (after.io[0] + after.io[1]).saturating_sub(before.io[0] + before.io[1]) as f64 / calls;
        self.switches = (after.switches.0 + after.switches.1)
            .saturating_sub(before.switches.0 + before.switches.1) as f64
            / calls;
    }
}

/// Steps of one delivery, each timed over many events, in the order a lane
/// runs them.
#[derive(Debug, Default)]
struct Replay {
    steps: Vec<Step>,
    /// (events already delivered ahead of the batch, ms per `next_events`).
    next_events: Vec<(usize, f64)>,
    /// The database's plan for `next_events`' query, half the events delivered.
    plan: Vec<String>,
    /// The dispatcher's polling queries (each tick, and each lane's end),
    /// half the events delivered: `apps_with_due_events`, `subscriptions_due`.
    apps_due_ms: f64,
    subscriptions_due_ms: f64,
}

/// With the server stopped: the steps a lane runs for each event, on the
/// server's own database, mirror and events, against the same receiver.
async fn replay(
    store: &Store,
    postgres: Option<&str>,
    subscription: &str,
    repository: &str,
    mirror: &Path,
    receiver: &Receiver,
    samples: usize,
) -> Replay {
    let mut out = Replay::default();
    let events = event::Entity::find()
        .filter(event::Column::SubscriptionId.eq(subscription))
        .order_by_asc(event::Column::Seq)
        .all(store.db())
        .await
        .expect("the subscription's events");
    let total = events.len();
    let sample = &events[..samples.min(total)];
    let repo = store
        .repository_row(&RepoId::stored(repository))
        .await
        .expect("a query")
        .expect("the repository");
    let repository_ref = RepositoryRef {
        repository_id: repo.id.clone(),
        github_url: repo.url.clone(),
        owner: repo.owner.clone(),
        name: repo.name.clone(),
    };
    let ms = |t: Instant| t.elapsed().as_secs_f64() * 1000.0;

    // What `read_blob` does: a blocking task that opens the mirror and reads
    // the blob.
    let mut step = Step {
        name: "read_blob: spawn_blocking, open the mirror, read the blob",
        ..Step::default()
    };
    let mut contents = Vec::with_capacity(sample.len());
    let before = probe(postgres);
    for event in sample {
        let (path, id) = (
            mirror.to_owned(),
            event.blob_id.clone().expect("created events name a blob"),
        );
        let t = Instant::now();
        let content = tokio::task::spawn_blocking(move || {
            let m = Mirror::open(&path).expect("the mirror opens");
            let object = m.repo().revparse_single(&id).expect("the blob");
            let blob = object.peel_to_blob().expect("a blob");
            blob.content().to_vec()
        })
        .await
        .expect("the read runs");
        step.wall_ms.push(ms(t));
        contents.push(content);
    }
    step.finish(&before, &probe(postgres));
    out.steps.push(step);

    // The same read with the mirror opened once (not what Herald does).
    let mut step = Step {
        name: "— *not Herald*: the same read, mirror opened once, no blocking task",
        ..Step::default()
    };
    let cached = Mirror::open(mirror).expect("the mirror opens");
    let before = probe(postgres);
    for (event, content) in sample.iter().zip(&contents) {
        let id = event.blob_id.as_deref().expect("a blob id");
        let t = Instant::now();
        let length = cached
            .repo()
            .revparse_single(id)
            .expect("the blob")
            .peel_to_blob()
            .expect("a blob")
            .content()
            .len();
        step.wall_ms.push(ms(t));
        assert_eq!(length, content.len());
    }
    step.finish(&before, &probe(postgres));
    out.steps.push(step);

    let mut step = Step {
        name: "render the body, both signatures, the headers",
        ..Step::default()
    };
    let chunking = Chunking {
        threshold_bytes: 1_048_576,
        chunk_chars: 524_288,
    };
    let key = b"0123456789abcdef0123456789abcdef".to_vec();
    let mut requests = Vec::with_capacity(sample.len());
    let before = probe(postgres);
    for (event, content) in sample.iter().zip(&contents) {
        let t = Instant::now();
        let rendered = payload::render(event, &repository_ref, Some(content), chunking)
            .expect("the event renders");
        let (webhook_id, body) = rendered.part(&event.id, 0);
        let timestamp = actors::clock::now_ms() / 1000;
        let value = |s: &str| HeaderValue::from_str(s).expect("an ASCII header");
        let mut headers = HeaderMap::new();
        headers.insert("content-type", value("application/json"));
        headers.insert("x-docora-timestamp", value(&timestamp.to_string()));
        headers.insert(
            "x-docora-signature",
            value(&signing::docora(&key, timestamp, &body)),
        );
        headers.insert("webhook-id", value(&webhook_id));
        headers.insert("webhook-timestamp", value(&timestamp.to_string()));
        headers.insert(
            "webhook-signature",
            value(&signing::standard(
                &[key.as_slice()],
                &webhook_id,
                timestamp,
                &body,
            )),
        );
        step.wall_ms.push(ms(t));
        requests.push((headers, body));
    }
    step.finish(&before, &probe(postgres));
    out.steps.push(step);

    let mut step = Step {
        name: "POST to the receiver (`WebhookClient`, keep-alive), 204",
        ..Step::default()
    };
    let client = WebhookClient::new(Duration::from_secs(30), true);
    let url = format!("{}/create", receiver.hook_url(0));
    let before = probe(postgres);
    for (headers, body) in requests {
        let t = Instant::now();
        let answer = client
            .post(&url, headers, body)
            .await
            .expect("the receiver answers");
        step.wall_ms.push(ms(t));
        assert_eq!(answer.status, 204);
    }
    step.finish(&before, &probe(postgres));
    out.steps.push(step);
    receiver.take();

    let mut step = Step {
        name: "`record_attempt`: BEGIN, INSERT the attempt, UPDATE the event, COMMIT",
        ..Step::default()
    };
    // Each write presents its subscription's delivery lease, as a lane's do.
    let mut leases = std::collections::HashMap::new();
    for event in sample {
        if !leases.contains_key(&event.subscription_id) {
            let subscription = actors::ids::SubscriptionId::parse(&event.subscription_id)
                .expect("stored ids are well formed");
            let lease = store
                .claim_delivery(&subscription, "bench", 3_600_000)
                .await
                .expect("a query")
                .expect("nobody else delivers in the bench");
            leases.insert(event.subscription_id.clone(), lease);
        }
    }
    let before = probe(postgres);
    for event in sample {
        let t = Instant::now();
        store
            .record_attempt(
                &leases[&event.subscription_id],
                event,
                Attempt {
                    event_id: event.id.clone(),
                    chunk_index: None,
                    attempted_at: actors::clock::now_ms(),
                    status_code: Some(204),
                    latency_ms: 0,
                    error_class: None,
                    response_excerpt: None,
                    request: None,
                },
                EventOutcome::Delivered,
            )
            .await
            .expect("the attempt is recorded");
        step.wall_ms.push(ms(t));
    }
    step.finish(&before, &probe(postgres));
    out.steps.push(step);

    let mut step = Step {
        name: "— *for scale*: one `SELECT 1` through the pool",
        ..Step::default()
    };
    let before = probe(postgres);
    for _ in sample {
        let t = Instant::now();
        rows(store, "SELECT 1 AS one").await;
        step.wall_ms.push(ms(t));
    }
    step.finish(&before, &probe(postgres));
    out.steps.push(step);

    // `next_events` with k events already delivered ahead of the batch: the
    // events are set back to pending from seq k on.
    let first_seq = events.first().map_or(0, |e| e.seq);
    for k in [0, total / 2, total.saturating_sub(64)] {
        let boundary = first_seq + i64::try_from(k).expect("a small number");
        rows(
            store,
            &format!(
                "UPDATE events SET status = CASE WHEN seq < {boundary} THEN 'delivered' \
                 ELSE 'pending' END WHERE subscription_id = '{subscription}'"
            ),
        )
        .await;
        let mut times = Vec::new();
        for _ in 0..5 {
            let t = Instant::now();
            let batch = store
                .next_events(&SubscriptionId::stored(subscription), i64::MIN, 64)
                .await
                .expect("next_events");
            times.push(ms(t));
            assert_eq!(batch.len(), 64.min(total - k));
        }
        out.next_events.push((k, median(&times)));
        if k == total / 2 {
            let query = format!(
                "SELECT * FROM events WHERE subscription_id = '{subscription}' \
                 AND status IN ('pending', 'dead') ORDER BY seq LIMIT 64"
            );
            out.plan = match store.backend() {
                sea_orm::DbBackend::Postgres => {
                    rows(store, &format!("EXPLAIN (ANALYZE, BUFFERS) {query}"))
                        .await
                        .iter()
                        .map(|r| get::<String>(r, "QUERY PLAN"))
                        .collect()
                }
                _ => rows(store, &format!("EXPLAIN QUERY PLAN {query}"))
                    .await
                    .iter()
                    .map(|r| get::<String>(r, "detail"))
                    .collect(),
            };
            let app = events.first().map(|e| e.app_id.clone()).unwrap_or_default();
            let (mut apps, mut subs) = (Vec::new(), Vec::new());
            for _ in 0..5 {
                let t = Instant::now();
                let due = store
                    .apps_with_due_events(
                        actors::clock::now_ms(),
                        Some(actors::clock::now_ms() - 3_600_000),
                        10_000,
                    )
                    .await
                    .expect("apps_with_due_events");
                apps.push(ms(t));
                assert_eq!(due.len(), 1);
                let t = Instant::now();
                store
                    .subscriptions_due(
                        &AppId::stored(app.as_str()),
                        actors::clock::now_ms(),
                        Some(actors::clock::now_ms() - 3_600_000),
                        8,
                    )
                    .await
                    .expect("subscriptions_due");
                subs.push(ms(t));
            }
            out.apps_due_ms = median(&apps);
            out.subscriptions_due_ms = median(&subs);
        }
    }
    out
}

fn print_replay(r: &Replay, observed_cycle_ms: f64) {
    let calls = r.steps.first().map_or(0, |s| s.wall_ms.len());
    println!(
        "Steps of one delivery replayed with the server stopped, each step on the same \
         {calls} events in a row, on the server's database and mirror, against the same \
         receiver. CPU is per call: this process without the receiver's threads (for the \
         database steps on SQLite that includes the sqlx worker threads), the receiver, \
         and PostgreSQL's backends:\n"
    );
    println!(
        "| step | wall, median | wall, mean | CPU | of which sys | receiver CPU | \
         PostgreSQL CPU | syscalls (r/w class) | context switches |\n\
         |---|---|---|---|---|---|---|---|---|"
    );
    for s in &r.steps {
        println!(
            "| {} | {:.3} ms | {:.3} ms | {:.0} µs | {:.0}% | {:.0} µs | {:.0} µs | {:.1} | {:.1} |",
            s.name,
            median(&s.wall_ms),
            mean(&s.wall_ms),
            s.cpu_us,
            s.system_share * 100.0,
            s.receiver_us,
            s.postgres_us,
            s.syscalls,
            s.switches
        );
    }
    let lane_steps = [0, 2, 3, 4];
    let sum = |f: &dyn Fn(&Step) -> f64| -> f64 {
        lane_steps
            .iter()
            .filter_map(|&i| r.steps.get(i))
            .map(f)
            .sum()
    };
    let mid = r.next_events.get(1).map_or(f64::NAN, |(_, ms)| *ms);
    println!(
        "| `next_events(64)` ÷ 64, half the events delivered | {:.3} ms | | | | | | | |",
        mid / 64.0
    );
    println!(
        "| **the lane's steps: read, render, POST, record** | **{:.3} ms** | **{:.3} ms** | \
         {:.0} µs | | {:.0} µs | {:.0} µs | {:.1} | {:.1} |",
        sum(&|s| median(&s.wall_ms)),
        sum(&|s| mean(&s.wall_ms)),
        sum(&|s| s.cpu_us),
        sum(&|s| s.receiver_us),
        sum(&|s| s.postgres_us),
        sum(&|s| s.syscalls),
        sum(&|s| s.switches),
    );
    println!(
        "| *observed cycle in the run (1 / events/s)* | | *{observed_cycle_ms:.3} ms* | | | | | | |\n"
    );
    println!("`next_events(subscription, 64)` against how many events are already delivered:\n");
    println!("| delivered ahead | one call | per event (÷ 64) |\n|---|---|---|");
    for (k, ms) in &r.next_events {
        println!("| {k} | {ms:.2} ms | {:.3} ms |", ms / 64.0);
    }
    println!("\nThe plan of that query (literal values), half the events delivered:\n\n```");
    for line in &r.plan {
        println!("{line}");
    }
    println!("```\n");
    println!(
        "The dispatcher's polling, half the events delivered (each runs every \
         `delivery.tick` and after every lane's end): `apps_with_due_events` \
         {:.2} ms, `subscriptions_due` {:.2} ms (medians of 5).\n",
        r.apps_due_ms, r.subscriptions_due_ms
    );
}

// ---------------------------------------------------------------- scenarios

struct Remotes {
    single: Option<GeneratedRepo>,
    multi: Vec<GeneratedRepo>,
    latency: Option<GeneratedRepo>,
    daemon: GitDaemon,
}

async fn run(options: &Options, backends: &[Backend]) {
    let dir = tempfile::tempdir().expect("a temp dir");
    let root = dir.path().join("remotes");
    std::fs::create_dir_all(&root).expect("the remotes directory");
    println!(
        "Herald: {}. Load average at start: {}.\n",
        herald_binary().display(),
        load_average()
    );
    let started = Instant::now();
    let remotes = Remotes {
        single: options
            .scenarios
            .contains(&1)
            .then(|| generate(&root, "single", options.files, 0)),
        multi: if options.scenarios.contains(&2) {
            (0..options.repos)
                .map(|r| generate(&root, &format!("multi{r}"), options.repo_files, 0))
                .collect()
        } else {
            Vec::new()
        },
        latency: options
            .scenarios
            .contains(&3)
            .then(|| generate(&root, "latency", options.latency_files, options.commits)),
        daemon: GitDaemon::serve(&root),
    };
    println!(
        "Repositories generated with git fast-import in {:.1} s (text files of about \
         200 B, 100 per directory), served by `git daemon` over git://.\n",
        started.elapsed().as_secs_f64()
    );
    let receiver = Receiver::start();
    let mut summary = Vec::new();
    for &backend in backends {
        println!("## {}\n", backend.name());
        if let Some(repo) = &remotes.single {
            let rate = single(options, backend, repo, &remotes.daemon, &receiver).await;
            summary.push(format!(
                "| {} | 1 subscription, {} events | {rate:.0} events/s | ≥ 2,000 | {} |",
                backend.name(),
                options.files,
                if backend == Backend::Sqlite {
                    met(rate >= 2000.0)
                } else {
                    "(no target)"
                }
            ));
        }
        if !remotes.multi.is_empty() {
            let rate = multi(options, backend, &remotes.multi, &remotes.daemon, &receiver).await;
            summary.push(format!(
                "| {} | {} subscriptions over {} apps, {} events | {rate:.0} events/s | ≥ 5,000 | {} |",
                backend.name(),
                options.apps * options.repos,
                options.apps,
                options.apps * options.repos * options.repo_files,
                if backend == Backend::Sqlite {
                    met(rate >= 5000.0)
                } else {
                    "(no target)"
                }
            ));
        }
        if let Some(repo) = &remotes.latency {
            latency(options, backend, repo, &remotes.daemon, &receiver).await;
        }
    }
    if !summary.is_empty() {
        println!("## Targets\n");
        println!("| database | scenario | reached | target | |\n|---|---|---|---|---|");
        for line in summary {
            println!("{line}");
        }
        println!();
    }
    println!("Load average at end: {}.", load_average());
}

/// Scenario 1: one app, one repository, one subscription.
/// What a scenario measures while the server delivers `expected` webhooks:
/// CPU at the first and the last arrival, PostgreSQL's counters over that
/// window, and the dispatcher's polling cost halfway.
struct Drain {
    /// The server's database, opened read-side by the bench.
    store: Store,
    before: CpuSample,
    after: CpuSample,
    counters: Option<[i64; 5]>,
    polling: (f64, f64),
}

async fn drain(
    backend: Backend,
    database: &BenchDatabase,
    herald: &Herald,
    receiver: &Receiver,
    expected: usize,
    timeout: Duration,
) -> Drain {
    wait_for(receiver, herald, 1, timeout).await;
    let before = cpu_sample(herald.pid, database.postgres_name());
    let store = connect(&database.bench_url(&herald.data_dir)).await;
    let counters_before = match backend {
        Backend::Postgres => Some(postgres_counters(&store).await),
        Backend::Sqlite => None,
    };
    wait_for(receiver, herald, expected / 2, timeout).await;
    let polling = polling_cost(&store).await;
    wait_for(receiver, herald, expected, timeout).await;
    let after = cpu_sample(herald.pid, database.postgres_name());
    let counters = match counters_before {
        Some(start) => {
            // Backends report their counters at most once a second.
            tokio::time::sleep(Duration::from_millis(1500)).await;
            let end = postgres_counters(&store).await;
            Some(std::array::from_fn::<i64, 5, _>(|i| end[i] - start[i]))
        }
        None => None,
    };
    Drain {
        store,
        before,
        after,
        counters,
        polling,
    }
}

async fn single(
    options: &Options,
    backend: Backend,
    repo: &GeneratedRepo,
    daemon: &GitDaemon,
    receiver: &Receiver,
) -> f64 {
    let dir = tempfile::tempdir().expect("a temp dir");
    let database = BenchDatabase::create(backend).await;
    let herald = Herald::start(dir.path(), &database, &[]).await;
    receiver.take();
    let token = herald.onboard("bench-0", &receiver.hook_url(0)).await;
    let registered = unix_ms();
    let repository = herald.register(&token, &daemon.url(repo)).await;
    let expected = options.files;
    let timeout = Duration::from_secs(60 + (expected / 100) as u64);
    let Drain {
        store,
        before,
        after,
        counters,
        polling,
    } = drain(backend, &database, &herald, receiver, expected, timeout).await;
    let arrivals = receiver.take();
    let times: Vec<f64> = arrivals.iter().map(|a| a.at).collect();
    let t = throughput(&times);
    let observed: i64 = get(
        rows(
            &store,
            &format!(
                "SELECT observed_at FROM snapshots WHERE repository_id = '{repository}' \
                 ORDER BY observed_at LIMIT 1"
            ),
        )
        .await
        .first()
        .expect("the initial snapshot"),
        "observed_at",
    );
    let (splits, ids) = splits(&store).await;
    let violations = order_violations(&arrivals, &ids);
    let subscription: String = get(
        rows(&store, "SELECT id FROM subscriptions")
            .await
            .first()
            .expect("the subscription"),
        "id",
    );

    println!(
        "### 1. One subscription, strictly ordered: {} files\n",
        options.files
    );
    let first_arrival = t_first(&times);
    let committed = herald.advanced_at(&repo.commits[0]).unwrap_or(f64::NAN);
    println!(
        "Registration → `snapshots.observed_at` (stamped when the outbox transaction \
         begins, after the fetch, walk and hash): {:.2} s; → commit (the server's \
         \"snapshot advanced\" log line): {:.2} s more; → first arrival: {:.0} ms more.\n",
        (observed as f64 - registered) / 1000.0,
        (committed - observed as f64) / 1000.0,
        first_arrival - committed
    );
    print_throughput("one subscription", &t);
    println!(
        "| arrivals out of `seq` order | {violations} |\n| unique webhook ids | {} |\n",
        arrivals
            .iter()
            .map(|a| a.webhook_id.as_str())
            .collect::<std::collections::HashSet<_>>()
            .len()
    );
    print_splits(&splits, 1);
    print_polling(polling, 1);
    for line in cpu_rows(&before, &after, t.events) {
        println!("{line}");
    }
    println!();
    if let Some(c) = counters {
        let n = t.events as f64;
        println!(
            "PostgreSQL `pg_stat_database` over the drain, per event: {:.2} commits, \
             {:.0} rows returned, {:.1} rows fetched, {:.2} inserted, {:.2} updated.\n",
            c[0] as f64 / n,
            c[1] as f64 / n,
            c[2] as f64 / n,
            c[3] as f64 / n,
            c[4] as f64 / n
        );
    }

    // The steps of one delivery, one by one, with the server stopped.
    let mirror = herald
        .data_dir
        .join("mirrors")
        .join(format!("{repository}.git"));
    herald.stop().await;
    if options.replay > 0 {
        let r = replay(
            &store,
            database.postgres_name(),
            &subscription,
            &repository,
            &mirror,
            receiver,
            options.replay,
        )
        .await;
        print_replay(&r, 1000.0 / t.overall);
    }
    store.close().await.ok();
    drop(database);
    t.overall
}

/// Scenario 2: every app subscribed to every repository.
async fn multi(
    options: &Options,
    backend: Backend,
    repos: &[GeneratedRepo],
    daemon: &GitDaemon,
    receiver: &Receiver,
) -> f64 {
    let dir = tempfile::tempdir().expect("a temp dir");
    let database = BenchDatabase::create(backend).await;
    let herald = Herald::start(dir.path(), &database, &[]).await;
    receiver.take();
    let mut tokens = Vec::new();
    for a in 0..options.apps {
        tokens.push(
            herald
                .onboard(&format!("bench-{a}"), &receiver.hook_url(a))
                .await,
        );
    }
    let started = Instant::now();
    for repo in repos {
        for token in &tokens {
            herald.register(token, &daemon.url(repo)).await;
        }
    }
    let registering = started.elapsed();
    let expected = options.apps * repos.len() * options.repo_files;
    let timeout = Duration::from_secs(60 + (expected / 200) as u64);
    let Drain {
        store,
        before,
        after,
        counters,
        polling,
    } = drain(backend, &database, &herald, receiver, expected, timeout).await;
    let arrivals = receiver.snapshot();
    receiver.take();
    let times: Vec<f64> = arrivals.iter().map(|a| a.at).collect();
    let t = throughput(&times);
    let (splits, ids) = splits(&store).await;
    let violations = order_violations(&arrivals, &ids);
    let mut per_app: BTreeMap<usize, Vec<f64>> = BTreeMap::new();
    for a in &arrivals {
        per_app.entry(a.hook).or_default().push(a.at);
    }
    let finish: Vec<f64> = per_app
        .values()
        .map(|v| (v.iter().copied().fold(f64::MIN, f64::max) - t_first(&times)) / 1000.0)
        .collect();

    println!(
        "### 2. {} subscriptions over {} apps: {} repositories × {} files, every app \
         subscribed to every repository\n",
        options.apps * repos.len(),
        options.apps,
        repos.len(),
        options.repo_files
    );
    println!(
        "The {} registrations took {:.2} s; deliveries start while they go on.\n",
        options.apps * repos.len(),
        registering.as_secs_f64()
    );
    print_throughput("aggregate", &t);
    println!(
        "| arrivals out of `seq` order | {violations} |\n| apps done (first → their last \
         arrival), fastest / slowest | {:.1} s / {:.1} s |\n",
        finish.iter().copied().fold(f64::INFINITY, f64::min),
        finish.iter().copied().fold(0.0, f64::max)
    );
    print_splits(&splits, options.apps * repos.len());
    print_polling(polling, options.apps);
    for line in cpu_rows(&before, &after, t.events) {
        println!("{line}");
    }
    println!();
    if let Some(c) = counters {
        let n = t.events as f64;
        println!(
            "PostgreSQL `pg_stat_database` over the drain, per event: {:.2} commits, \
             {:.0} rows returned, {:.1} rows fetched, {:.2} inserted, {:.2} updated.\n",
            c[0] as f64 / n,
            c[1] as f64 / n,
            c[2] as f64 / n,
            c[3] as f64 / n,
            c[4] as f64 / n
        );
    }
    herald.stop().await;
    store.close().await.ok();
    drop(database);
    t.overall
}

fn t_first(times: &[f64]) -> f64 {
    times.iter().copied().fold(f64::INFINITY, f64::min)
}

/// Scenario 3: successive 10-file commits; snapshot commit → arrival.
async fn latency(
    options: &Options,
    backend: Backend,
    repo: &GeneratedRepo,
    daemon: &GitDaemon,
    receiver: &Receiver,
) {
    repo.set_head(0);
    let dir = tempfile::tempdir().expect("a temp dir");
    let database = BenchDatabase::create(backend).await;
    let herald = Herald::start(
        dir.path(),
        &database,
        &[("HERALD__SCHEDULER__RESCAN_INTERVAL", "100ms")],
    )
    .await;
    receiver.take();
    let token = herald.onboard("bench-0", &receiver.hook_url(0)).await;
    let repository = herald.register(&token, &daemon.url(repo)).await;
    let initial = options.latency_files;
    wait_for(receiver, &herald, initial, Duration::from_secs(120)).await;
    let mut pushed: HashMap<String, f64> = HashMap::new();
    for k in 1..=options.commits {
        pushed.insert(repo.commits[k].clone(), unix_ms());
        repo.set_head(k);
        wait_for(
            receiver,
            &herald,
            initial + k * EVENTS_PER_COMMIT,
            Duration::from_secs(60),
        )
        .await;
    }
    let arrivals: HashMap<String, f64> = receiver
        .take()
        .into_iter()
        .map(|a| (a.webhook_id, a.at))
        .collect();
    let store = connect(&database.bench_url(&herald.data_dir)).await;
    let events = rows(
        &store,
        &format!(
            "SELECT e.id, e.snapshot_id, s.observed_at, s.commit_sha, a.attempted_at \
             FROM events e JOIN snapshots s ON s.id = e.snapshot_id \
             JOIN delivery_attempts a ON a.event_id = e.id \
             WHERE s.repository_id = '{repository}' AND s.previous_snapshot_id IS NOT NULL"
        ),
    )
    .await;
    let committed: HashMap<String, f64> = repo
        .commits
        .iter()
        .filter_map(|c| Some((c.clone(), herald.advanced_at(c)?)))
        .collect();
    herald.stop().await;
    let mut all = Vec::new();
    let mut from_commit = Vec::new();
    let mut transaction = Vec::new();
    let mut to_attempt = Vec::new();
    let mut per_snapshot: HashMap<String, Vec<f64>> = HashMap::new();
    let mut scan = Vec::new();
    let mut seen_snapshots = std::collections::HashSet::new();
    for row in &events {
        let id: String = get(row, "id");
        let snapshot: String = get(row, "snapshot_id");
        let observed: i64 = get(row, "observed_at");
        let commit: String = get(row, "commit_sha");
        let attempted: i64 = get(row, "attempted_at");
        let Some(arrived) = arrivals.get(&id) else {
            continue;
        };
        let latency = arrived - observed as f64;
        all.push(latency);
        to_attempt.push((attempted - observed) as f64);
        if let Some(at) = committed.get(&commit) {
            from_commit.push(arrived - at);
        }
        per_snapshot
            .entry(snapshot.clone())
            .or_default()
            .push(latency);
        if seen_snapshots.insert(snapshot) {
            if let Some(at) = pushed.get(&commit) {
                scan.push(observed as f64 - at);
            }
            if let Some(at) = committed.get(&commit) {
                transaction.push(at - observed as f64);
            }
        }
    }
    let first: Vec<f64> = per_snapshot
        .values()
        .map(|v| v.iter().copied().fold(f64::INFINITY, f64::min))
        .collect();
    let last: Vec<f64> = per_snapshot
        .values()
        .map(|v| v.iter().copied().fold(0.0, f64::max))
        .collect();
    println!(
        "### 3. Latency: {} commits of 10 files on {} files, snapshot committed → arrival\n",
        options.commits, options.latency_files
    );
    println!(
        "{} events in {} snapshots (`HERALD__SCHEDULER__RESCAN_INTERVAL=100ms`; each \
         commit is made after the previous one's events all arrived).\n",
        all.len(),
        per_snapshot.len()
    );
    println!(
        "`snapshots.observed_at` is stamped when `advance_snapshot` begins its \
         transaction; the commit time is the timestamp of the server's \"snapshot \
         advanced\" log line, written right after the commit.\n"
    );
    println!("| from `snapshots.observed_at` to | p50 | p99 | max |\n|---|---|---|---|");
    let row = |name: &str, v: &[f64]| {
        println!(
            "| {name} | {:.1} ms | {:.1} ms | {:.1} ms |",
            percentile(v, 50.0),
            percentile(v, 99.0),
            v.iter().copied().fold(0.0, f64::max)
        );
    };
    row("**arrival, every event**", &all);
    row(
        "arrival, every event, counted from the commit (log line)",
        &from_commit,
    );
    row(
        "*the outbox transaction*: `observed_at` → commit (log line)",
        &transaction,
    );
    row("arrival, first event of its snapshot", &first);
    row("arrival, last (10th) event of its snapshot", &last);
    row(
        "its POST (`delivery_attempts.attempted_at`, whole ms)",
        &to_attempt,
    );
    row("*before it*: push → `observed_at` (scan)", &scan);
    let mut slow: Vec<f64> = first.iter().copied().filter(|ms| *ms > 50.0).collect();
    slow.sort_by(f64::total_cmp);
    println!(
        "\nSnapshots whose first event took over 50 ms: {} of {}{}.",
        slow.len(),
        first.len(),
        if slow.is_empty() {
            String::new()
        } else {
            format!(
                " ({} ms)",
                slow.iter()
                    .map(|ms| format!("{ms:.0}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        }
    );
    println!();
    store.close().await.ok();
    drop(database);
}
