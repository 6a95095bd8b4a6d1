//! The reference workload, with its floors measured in the same run on the
//! same machine, every figure printed as a ratio to its floor.
//!
//! `cargo bench --bench reference [-- OPTIONS]`
//!
//! The repositories come from `support::workload` (generated here with `git
//! fast-import`, no network, deterministic: the same `--files`/`--seed`
//! give the same commits), served over `git://` by a local `git daemon`;
//! the webhooks go to `support::verify`'s logging receiver, which checks
//! both signatures, every file's SHA-256 after reassembling chunks and
//! every update's and delete's previous content, holds the tree each app
//! was sent (compared with git's after every sync and push), and logs when
//! each webhook arrived. Herald is the release binary (or
//! `HERALD_BENCH_BINARY`), started as a user starts it, on SQLite under a
//! fresh data directory.
//!
//! 1. **Initial sync**, one app: from the registration request to the last
//!    webhook. Floor: a shallow bare `git clone` of the same repository plus
//!    the load client (`support::load`) replaying the same tree on one
//!    connection (signed bodies, chunked like Herald's, built before the
//!    clock starts) to the same receiver.
//! 2. **Delivery phase**: webhooks per second from the first webhook to the
//!    last in (1). Floor: the load client's rate on one connection, what
//!    the receiver absorbs from a strictly ordered sender. With it, Herald's
//!    CPU time a webhook while delivering; floor: the inherent work of a
//!    webhook (`support::inherent`, as `benches/inherent.rs` measures it:
//!    the body, both signatures and a loopback request, this process's CPU
//!    on one thread) over the files the sync delivered, measured once
//!    Herald has stopped, the median of three rounds after a warm-up.
//! 3. **A 10-file push**, announced by a GitHub push hook: from the hook to
//!    the last webhook of the change. Floor: `git fetch` of the commit into
//!    a mirror plus `git diff-tree`.
//! 4. **Peak RSS** (`VmHWM`) of Herald over the initial sync of each
//!    `--memory` workload (`FILES:SEED`). The printed samples also tell
//!    mapped files (libgit2's pack windows, the binary) from the rest.
//! 5. **Fan-out**: `--apps` apps subscribed to the same repository: time and
//!    peak RSS, from the first registration to the last app's last webhook.
//! 6. **Fetch**: a full fetch into a bare mirror by libgit2 (Herald's
//!    `Mirror::fetch`) against `git clone --bare`, over `git://` and over
//!    smart HTTP (`git http-backend` behind the tests' small server, which
//!    streams the pack as the backend writes it).
//!
//! Options (defaults in brackets): `--files N` [5000], `--seed N` [1],
//! `--memory FILES:SEED,…` [20000:2], `--apps N` [5], `--pushes N` [5],
//! `--runs N` [1] (repeats 1, 2 and 5; from 3 runs, each range gives its
//! median), `--scenarios 1,3,4,5,6` [all],
//! `--env KEY=VALUE` (more environment for Herald; repeatable).
//! `HERALD_BENCH_KEEP_LOG=PATH` keeps the receiver's log of the last initial
//! sync (Herald's webhooks, then the floors'), one JSON line a request with
//! its arrival time and body size.
//!
//! Without `--bench` (as `cargo test --benches` runs it) the sizes shrink to a
//! smoke run. Results are printed as Markdown; see BENCHMARKS.md.
//!
//! Each figure issue 15 or issue 60 set a goal for is checked against that
//! goal at the median of the runs, on the workload the goal was set for
//! (5,000 files, seed 1; five apps for the fan-out; 20,000 and 100,000 files
//! for memory): the table says "met" or "missed", and the bench exits
//! non-zero when a goal is missed. Other workloads print the goal without
//! checking it. Issue 60's goals, both held against floors of the same
//! run: a delivery rate of at least 0.9 of the load client's (issue 15 had
//! set 0.8), and Herald's CPU time a webhook while delivering at most twice
//! the inherent work.

#[path = "../tests/it/gitserver.rs"]
mod gitserver;
mod support;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use support::inherent;
use support::load::Load;
use support::verify::logging::LoggingReceiver;
use support::verify::{self, Tree};
use support::workload::{Mutation, Workload};
use support::*;

#[derive(Debug, Clone)]
struct Options {
    files: usize,
    seed: u64,
    memory: Vec<(usize, u64)>,
    apps: usize,
    pushes: usize,
    runs: usize,
    scenarios: Vec<usize>,
    /// More environment for Herald (`--env KEY=VALUE`, repeatable).
    env: Vec<(String, String)>,
}

fn parse_options() -> Options {
    let mut args = BenchArgs::from_env();
    let mut options = if args.full {
        Options {
            files: 5_000,
            seed: 1,
            memory: vec![(20_000, 2)],
            apps: 5,
            pushes: 5,
            runs: 1,
            scenarios: vec![1, 3, 4, 5, 6],
            env: Vec::new(),
        }
    } else {
        Options {
            files: 200,
            seed: 1,
            memory: vec![(300, 2)],
            apps: 2,
            pushes: 1,
            runs: 1,
            scenarios: vec![1, 3, 4, 5, 6],
            env: Vec::new(),
        }
    };
    while let Some(arg) = args.next_option() {
        match arg.as_str() {
            "--files" => options.files = args.number(&arg),
            "--seed" => options.seed = args.number(&arg) as u64,
            "--memory" => {
                options.memory = args
                    .value(&arg)
                    .split(',')
                    .filter(|part| !part.is_empty())
                    .map(|part| {
                        let (files, seed) = part.split_once(':').unwrap_or((part, "2"));
                        (
                            files.parse().expect("--memory FILES:SEED"),
                            seed.parse().expect("--memory FILES:SEED"),
                        )
                    })
                    .collect();
            }
            "--apps" => options.apps = args.number(&arg),
            "--pushes" => options.pushes = args.number(&arg),
            "--runs" => options.runs = args.number(&arg),
            "--scenarios" => options.scenarios = args.numbers(&arg),
            "--env" => {
                let pair = args.value(&arg);
                let (key, value) = pair.split_once('=').expect("--env KEY=VALUE");
                options.env.push((key.to_owned(), value.to_owned()));
            }
            other => panic!("unknown option {other:?} (see benches/reference.rs)"),
        }
    }
    assert!(options.runs >= 1 && options.apps >= 1);
    options
}

fn main() {
    let options = parse_options();
    exit_if_missed(&runtime().block_on(run(&options)));
}

// ------------------------------------------------------------ the workload

/// The planned 10-file changes of `--pushes` (seeds `--seed`, `--seed` + 1, …).
fn planned(options: &Options) -> Vec<Mutation> {
    (0..options.pushes)
        .map(|push| Mutation {
            changes: 10,
            seed: options.seed + push as u64,
        })
        .collect()
}

fn generate(served: &Path, files: usize, seed: u64, planned: &[Mutation]) -> Workload {
    let started = Instant::now();
    let workload = Workload::generate(served, files, seed, planned);
    eprintln!(
        "generated {}: {} files ({} binary), {:.1} MB, in {:.1} s",
        workload.name,
        workload.tally.files,
        workload.tally.binary,
        workload.tally.bytes as f64 / 1e6,
        started.elapsed().as_secs_f64()
    );
    workload
}

fn url_of(workload: &Workload, daemon: &GitDaemon) -> String {
    daemon.url_of(&format!("{}.git", workload.name))
}

/// The served branch's files now, with the SHA-256 of each.
fn current_tree(workload: &Workload) -> Tree {
    verify::tree_of(&workload.served, workload.tip())
}

/// Waits until each of `apps` holds `want`: every file arrived whole and
/// passed the receiver's checks.
async fn wait_holding(
    receiver: &LoggingReceiver,
    apps: &[String],
    want: &Tree,
    herald: &Herald,
    timeout: Duration,
) {
    let deadline = Instant::now() + timeout;
    // The bench shares the machine with Herald and the receiver: while
    // files arrive it only reads the receiver's count, and compares the
    // trees once there are as many requests as files wanted.
    loop {
        if receiver.count() >= apps.len() * want.len() && receiver.holds(apps, want) {
            return;
        }
        receiver.assert_ok("the initial sync");
        assert!(
            Instant::now() < deadline,
            "gave up after {timeout:?}: {} requests for {} files; herald's last lines:\n{}",
            receiver.count(),
            apps.len() * want.len(),
            tail(&herald.logs)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_nanos()
}

/// Samples a process's RSS and CPU time every 20 ms until dropped, to tell
/// the scan's peak (before the first webhook) from the delivery's.
struct RssSampler {
    samples: std::sync::Arc<std::sync::Mutex<Vec<Sample>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

#[derive(Clone, Copy)]
struct Sample {
    at_ns: u128,
    /// `VmRSS`, MiB.
    rss: f64,
    /// `RssFile`, MiB: pages of files mapped into the process (libgit2 maps
    /// pack files) rather than memory it allocated.
    file: f64,
    /// CPU time so far, s.
    cpu: f64,
}

/// The highest RSS sampled over a phase, how much of it was file-backed, and
/// the most the process held that was not (its own allocations), MiB.
#[derive(Clone, Copy, Default)]
struct Peak {
    rss: f64,
    file: f64,
    anon: f64,
}

impl std::fmt::Display for Peak {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:.0} MiB ({:.0} of it mapped files; at most {:.0} MiB not file-backed)",
            self.rss, self.file, self.anon
        )
    }
}

impl RssSampler {
    fn start(pid: u32) -> RssSampler {
        let samples = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (into, stopped) = (samples.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stopped.load(std::sync::atomic::Ordering::Relaxed) {
                let status = process_status(pid);
                if let Some(rss) = status_field_mib(&status, "VmRSS") {
                    into.lock().expect("samples").push(Sample {
                        at_ns: now_ns(),
                        rss,
                        file: status_field_mib(&status, "RssFile").unwrap_or_default(),
                        cpu: cpu_seconds(pid),
                    });
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        RssSampler { samples, stop }
    }

    /// The highest RSS sampled before `split_ns`, and from it on.
    fn peaks(&self, split_ns: f64) -> (Peak, Peak) {
        let samples = self.samples.lock().expect("samples");
        let peak = |before: bool| {
            samples
                .iter()
                .filter(|s| ((s.at_ns as f64) < split_ns) == before)
                .fold(Peak::default(), |peak, s| {
                    let anon = peak.anon.max(s.rss - s.file);
                    if s.rss > peak.rss {
                        Peak {
                            rss: s.rss,
                            file: s.file,
                            anon,
                        }
                    } else {
                        Peak { anon, ..peak }
                    }
                })
        };
        (peak(true), peak(false))
    }

    /// The CPU time the process spent from `from_ns` to `to_ns` (s), from
    /// the samples just outside that span.
    fn cpu_between(&self, from_ns: f64, to_ns: f64) -> f64 {
        let samples = self.samples.lock().expect("samples");
        let start = samples
            .iter()
            .rev()
            .find(|s| (s.at_ns as f64) <= from_ns)
            .or(samples.first());
        let end = samples
            .iter()
            .find(|s| (s.at_ns as f64) >= to_ns)
            .or(samples.last());
        match (start, end) {
            (Some(a), Some(b)) => b.cpu - a.cpu,
            _ => 0.0,
        }
    }
}

impl Drop for RssSampler {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

fn cpu_seconds(pid: u32) -> f64 {
    process_ticks(pid) as f64 / clock_ticks_per_second()
}

/// Herald's environment: a GitHub secret for the push hooks, no periodic
/// rescans (only the registration and the hooks start scans), and `--env`.
fn herald_env(options: &Options) -> Vec<(&str, &str)> {
    let mut env = vec![
        ("HERALD__INBOUND__GITHUB_SECRET", GITHUB_SECRET),
        ("HERALD__SCHEDULER__RESCAN_INTERVAL", "1h"),
    ];
    env.extend(options.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    env
}

// ------------------------------------------------------------ the scenarios

/// One of issue 15's or issue 60's goals, held against the median of the
/// runs: the machine's speed drifts between runs, floors included, so a
/// single run neither meets nor misses a goal.
struct Goal {
    text: String,
    /// `None` when the figure was measured on another workload than the
    /// one the goal is set for (it is printed, not checked).
    met: Option<bool>,
}

impl Goal {
    /// The median of `values` at most `limit` (printed as `≤ {limit}{unit}`).
    fn at_most(limit: f64, unit: &str, values: &[f64]) -> Self {
        Self {
            text: format!("≤ {limit}{unit}"),
            met: Some(median(values) <= limit),
        }
    }

    /// The median of `values` at least `limit`.
    fn at_least(limit: f64, unit: &str, values: &[f64]) -> Self {
        Self {
            text: format!("≥ {limit}{unit}"),
            met: Some(median(values) >= limit),
        }
    }

    /// A guide for reading the figure, printed and not checked.
    fn note(text: &str) -> Self {
        Self {
            text: text.to_owned(),
            met: None,
        }
    }

    /// The goal as set for `workload` (e.g. "5,000 files, seed 1"): checked
    /// only when `applies`.
    fn for_workload(mut self, applies: bool, workload: &str) -> Self {
        if !applies {
            self.text = format!("{} (set for {workload}; not checked)", self.text);
            self.met = None;
        }
        self
    }

    fn verdict(&self) -> String {
        match self.met {
            Some(true) => format!("{} — met", self.text),
            Some(false) => format!("{} — **missed**", self.text),
            None => self.text.clone(),
        }
    }
}

struct Report {
    rows: Vec<([String; 4], Vec<Goal>)>,
}

impl Report {
    fn row(
        &mut self,
        figure: &str,
        herald: String,
        floor: String,
        ratio: String,
        goals: Vec<Goal>,
    ) {
        self.rows
            .push(([figure.to_owned(), herald, floor, ratio], goals));
    }

    fn print(&self) {
        println!("\n| figure | Herald | floor (same run) | ratio | goal |\n|---|---|---|---|---|");
        for ([figure, herald, floor, ratio], goals) in &self.rows {
            let goals: Vec<String> = goals.iter().map(Goal::verdict).collect();
            println!(
                "| {figure} | {herald} | {floor} | {ratio} | {} |",
                goals.join("; ")
            );
        }
    }

    /// The figures whose goal was missed, with the goal.
    fn missed(&self) -> Vec<String> {
        self.rows
            .iter()
            .flat_map(|([figure, ..], goals)| {
                goals
                    .iter()
                    .filter(|goal| goal.met == Some(false))
                    .map(move |goal| format!("{figure}: {}", goal.text))
            })
            .collect()
    }
}

/// Runs the scenarios and prints their table; gives the goals missed.
async fn run(options: &Options) -> Vec<String> {
    let root = tempfile::tempdir().expect("a temp dir");
    let served = root.path().join("served");
    std::fs::create_dir_all(&served).expect("the served directory");
    let mut workload = generate(&served, options.files, options.seed, &planned(options));
    let daemon = GitDaemon::serve(&served);
    println!(
        "# The reference workload\n\n{} CPUs, load {}; `--files {} --seed {}`: \
         {} files, {:.1} MB, commit `{}`\n",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        load_average(),
        options.files,
        options.seed,
        workload.tally.files,
        workload.tally.bytes as f64 / 1e6,
        &workload.first[..12],
    );
    let mut report = Report { rows: Vec::new() };
    // Issues 15 and 60 set their goals on the workload of 5,000 files,
    // seed 1 (one app, and five for the fan-out).
    let reference = options.files == 5_000 && options.seed == 1;
    let on_reference = |goal: Goal| goal.for_workload(reference, "5,000 files, seed 1");
    if options.scenarios.contains(&1) {
        let mut syncs = Vec::new();
        for run in 0..options.runs {
            let first = run == 0 && options.scenarios.contains(&3);
            syncs.push(initial_sync(options, &mut workload, &daemon, root.path(), first).await);
        }
        let sync_ratio: Vec<f64> = syncs.iter().map(|s| s.total_s / s.floor_s()).collect();
        let rate_ratio: Vec<f64> = syncs.iter().map(|s| s.rate / s.floor_rate).collect();
        let cpu_ratio: Vec<f64> = syncs.iter().map(|s| s.cpu_us / s.inherent_us).collect();
        let of = |f: fn(&SyncRun) -> f64| syncs.iter().map(f).collect::<Vec<_>>();
        report.row(
            "initial sync, registration → last webhook",
            range(&of(|s| s.total_s), "s", 2),
            format!(
                "clone {} + load client c=1 {}",
                range(&of(|s| s.clone_s), "s", 2),
                range(&of(|s| s.replay_s), "s", 2)
            ),
            range(&sync_ratio, "×", 2),
            vec![on_reference(Goal::at_most(1.15, "×", &sync_ratio))],
        );
        report.row(
            "delivery phase, one subscription",
            range(&of(|s| s.rate), "webhooks/s", 0),
            range(&of(|s| s.floor_rate), "/s", 0),
            range(&rate_ratio, "", 2),
            // Issue 60's goal (issue 15 had set 0.8).
            vec![on_reference(Goal::at_least(0.9, "", &rate_ratio))],
        );
        report.row(
            "— Herald's CPU time a webhook while delivering",
            range(&of(|s| s.cpu_us), "µs", 0),
            format!("inherent work {}", range(&of(|s| s.inherent_us), "µs", 1)),
            range(&cpu_ratio, "×", 2),
            // Issue 60's goal: at most twice the inherent work.
            vec![on_reference(Goal::at_most(2.0, "×", &cpu_ratio))],
        );
        report.row(
            "— the inherent work of a webhook (benches/inherent.rs), same run",
            "—".into(),
            range(&of(|s| s.inherent_us), "µs", 1),
            "—".into(),
            Vec::new(),
        );
        report.row(
            "— the receiver's CPU time a request",
            range(&of(|s| s.receiver_us), "µs", 0),
            range(&of(|s| s.floor_receiver_us), "µs", 0),
            range(&of(|s| s.receiver_us / s.floor_receiver_us), "×", 2),
            Vec::new(),
        );
        for (index, sender) in SENDERS.iter().enumerate() {
            let sent = |pick: fn(&Sent) -> f64| -> Vec<f64> {
                syncs.iter().map(|s| pick(&s.senders[index])).collect()
            };
            report.row(
                &format!("— for reference: the same bodies sent one at a time by {sender}"),
                range(&sent(|s| s.rate), "/s", 0),
                range(&of(|s| s.floor_rate), "/s", 0),
                range(
                    &syncs
                        .iter()
                        .map(|s| s.senders[index].rate / s.floor_rate)
                        .collect::<Vec<_>>(),
                    "",
                    2,
                ),
                Vec::new(),
            );
            report.row(
                "— — its CPU time a request",
                range(&sent(|s| s.cpu_us), "µs", 0),
                "—".into(),
                "—".into(),
                Vec::new(),
            );
        }
        report.row(
            &format!("peak RSS, {} files", options.files),
            range(&of(|s| s.peak_mib), "MiB", 0),
            "—".into(),
            "—".into(),
            Vec::new(),
        );
        for (run, sync) in syncs.iter().enumerate() {
            if let Some(push) = &sync.push {
                let ratios: Vec<f64> = push
                    .herald_ms
                    .iter()
                    .zip(&push.floor_ms)
                    .map(|(h, f)| h / f)
                    .collect();
                report.row(
                    &format!("10-file push (GitHub hook) → last webhook, run {}", run + 1),
                    range(&push.herald_ms, "ms", 0),
                    range(&push.floor_ms, "ms", 0),
                    range(&ratios, "×", 2),
                    vec![on_reference(Goal::at_most(1.5, "×", &ratios))],
                );
            }
        }
    }
    if options.scenarios.contains(&4) {
        for &(files, seed) in &options.memory {
            let big = generate(&served, files, seed, &[]);
            let (seconds, peak) = fan_out(options, &big, &daemon, root.path(), 1).await;
            // Issue 15's goals: 100 MiB at 20,000 files, 200 MiB at 100,000.
            let goal = match files {
                20_000 => vec![Goal::at_most(100.0, " MiB", &[peak])],
                100_000 => vec![Goal::at_most(200.0, " MiB", &[peak])],
                _ => Vec::new(),
            };
            report.row(
                &format!("peak RSS, {files} files (seed {seed}); sync time"),
                format!("{peak:.0} MiB; {seconds:.1} s"),
                "—".into(),
                "—".into(),
                goal,
            );
        }
    }
    if options.scenarios.contains(&5) {
        let (mut seconds, mut peaks) = (Vec::new(), Vec::new());
        for _ in 0..options.runs {
            let (run_s, peak) =
                fan_out(options, &workload, &daemon, root.path(), options.apps).await;
            seconds.push(run_s);
            peaks.push(peak);
        }
        report.row(
            &format!("{} apps × {} files", options.apps, options.files),
            format!("{}, {}", range(&seconds, "s", 1), range(&peaks, "MiB", 0)),
            "—".into(),
            "—".into(),
            [
                Goal::at_most(10.0, " s", &seconds),
                Goal::at_most(120.0, " MiB", &peaks),
            ]
            .into_iter()
            .map(|goal| goal.for_workload(reference && options.apps == 5, "5 apps × 5,000 files"))
            .collect(),
        );
    }
    if options.scenarios.contains(&6) {
        let http = gitserver::HttpGitServer::serve(&served, None);
        let transports = [
            ("git://", url_of(&workload, &daemon)),
            ("smart HTTP", http.url(&format!("{}.git", workload.name))),
        ];
        for (transport, url) in transports {
            let (libgit2, git) = fetch_comparison(&url, root.path(), options.runs.max(3));
            report.row(
                &format!("full fetch into a bare mirror over {transport}"),
                format!("libgit2 {}", range(&libgit2, "s", 2)),
                format!("`git clone --bare` {}", range(&git, "s", 2)),
                format!("{:.2}×", median(&libgit2) / median(&git)),
                vec![Goal::note("keep git2 unless far slower")],
            );
        }
    }
    report.print();
    report.missed()
}

/// The figures of one initial sync and its floors.
struct SyncRun {
    total_s: f64,
    /// Herald's CPU time per webhook in the delivery phase (µs).
    cpu_us: f64,
    /// Its floor: the inherent work of a webhook over the files of the
    /// sync (µs of CPU, [`inherent::inherent_cpu_us`]), measured after
    /// Herald stopped.
    inherent_us: f64,
    /// The receiver's CPU time per request while Herald delivered, and
    /// while the load client replayed the same files (µs): Herald's
    /// requests carry the contract's twelve headers against the load
    /// client's nine, and the receiver parses them on the same two cores.
    receiver_us: f64,
    floor_receiver_us: f64,
    clone_s: f64,
    replay_s: f64,
    rate: f64,
    floor_rate: f64,
    peak_mib: f64,
    push: Option<Pushes>,
    /// The same bodies sent one at a time by each of [`SENDERS`].
    senders: Vec<Sent>,
}

/// How a Rust sender did on the same bodies, one at a time.
struct Sent {
    /// Requests per second.
    rate: f64,
    /// This process's CPU time a request (µs).
    cpu_us: f64,
}

/// The senders the bench compares with the floor's load client:
/// `reqwest` (a general-purpose client, each connection run as a task of
/// its own) and Herald's `WebhookClient` (the connection polled by the
/// sending task).
const SENDERS: [&str; 2] = ["reqwest", "Herald's WebhookClient"];

/// Rounds and batch of the inherent work measured after each initial sync
/// (after a round of warm-up; `benches/inherent.rs` runs 10 rounds).
const INHERENT_ROUNDS: usize = 3;
const INHERENT_BATCH: usize = 32;

impl SyncRun {
    fn floor_s(&self) -> f64 {
        self.clone_s + self.replay_s
    }
}

struct Pushes {
    herald_ms: Vec<f64>,
    floor_ms: Vec<f64>,
}

/// An app onboarded with its webhooks going to `port`: (app id, token, key).
async fn initial_sync(
    options: &Options,
    workload: &mut Workload,
    daemon: &GitDaemon,
    root: &Path,
    then_push: bool,
) -> SyncRun {
    let want = current_tree(workload);
    // The commit synced: the pushes move the served branch on.
    let synced = workload.tip().to_owned();
    let dir = tempfile::tempdir_in(root).expect("a temp dir");
    let database = BenchDatabase::create(Backend::Sqlite).await;
    let herald = Herald::start(dir.path(), &database, &herald_env(options)).await;
    let receiver = LoggingReceiver::start();
    let (app, token, key) = herald.onboard_app("reference", &receiver.base_url).await;
    receiver.add_app(&app, &key);
    let cpu_before = cpu_seconds(herald.pid);
    let receiver_cpu_before = receiver.cpu_seconds();
    let sampler = RssSampler::start(herald.pid);
    let started_ns = now_ns();
    herald.register(&token, &url_of(workload, daemon)).await;
    let apps = [app.clone()];
    wait_holding(&receiver, &apps, &want, &herald, Duration::from_secs(1_800)).await;
    let stats = receiver.stats();
    let (first, last, count) = (stats.first_ns, stats.last_ns, stats.count as f64);
    let total_s = (last - started_ns as f64) / 1e9;
    let rate = (count - 1.0) / ((last - first) / 1e9);
    let peak_mib = peak_rss_mib(herald.pid);
    let cpu = cpu_seconds(herald.pid) - cpu_before;
    let (scan_peak, delivery_peak) = sampler.peaks(first);
    let delivery_cpu_us = sampler.cpu_between(first, last) / count * 1e6;
    let receiver_us = (receiver.cpu_seconds() - receiver_cpu_before) / count * 1e6;
    eprintln!(
        "initial sync: {count} webhooks in {total_s:.2} s (first after {:.2} s), delivery \
         {rate:.0}/s, Herald CPU {cpu:.1} s ({delivery_cpu_us:.0} µs a webhook while delivering), \
         peak RSS {peak_mib:.0} MiB (sampled: {scan_peak} before the first webhook, \
         {delivery_peak} after)",
        (first - started_ns as f64) / 1e9
    );
    let push = if then_push {
        let mut tree = want;
        Some(
            pushes(
                options,
                workload,
                daemon,
                &herald,
                &receiver,
                &app,
                &mut tree,
                dir.path(),
            )
            .await,
        )
    } else {
        None
    };
    herald.stop().await;

    // The floors, on the same machine, one after the other.
    let clone_dir = dir.path().join("floor-clone.git");
    let clone_s = timed(
        Command::new("git")
            .args([
                "clone",
                "-q",
                "--bare",
                "--depth",
                "1",
                &url_of(workload, daemon),
            ])
            .arg(&clone_dir),
    );
    std::fs::remove_dir_all(&clone_dir).ok();
    let Replay {
        seconds: replay_s,
        rate: floor_rate,
        receiver_us: floor_receiver_us,
        senders,
    } = replay(workload, &receiver, &app, &key).await;
    eprintln!(
        "floors: shallow clone {clone_s:.2} s, load client c=1 {replay_s:.2} s ({floor_rate:.0}/s); \
         the receiver's CPU a request: {receiver_us:.0} µs from Herald, {floor_receiver_us:.0} µs \
         from the load client"
    );
    // The floor of Herald's CPU a webhook, Herald stopped: the inherent
    // work over the files synced, on a thread of its own (the clock is the
    // thread's CPU time).
    let files = verify::contents_of(&workload.served, &synced);
    let count_files = files.len();
    let inherent_us = tokio::task::spawn_blocking(move || {
        inherent::inherent_cpu_us(&files, INHERENT_ROUNDS, INHERENT_BATCH)
    })
    .await
    .expect("the inherent work is measured");
    eprintln!(
        "inherent work of a webhook over the {count_files} files synced: {inherent_us:.1} µs of \
         CPU (median of {INHERENT_ROUNDS} rounds); Herald's {delivery_cpu_us:.0} µs is {:.2}×",
        delivery_cpu_us / inherent_us
    );
    if let Some(keep) = std::env::var_os("HERALD_BENCH_KEEP_LOG") {
        receiver.write_log(Path::new(&keep)).ok();
    }
    SyncRun {
        total_s,
        cpu_us: delivery_cpu_us,
        inherent_us,
        receiver_us,
        floor_receiver_us,
        clone_s,
        replay_s,
        rate,
        floor_rate,
        peak_mib,
        push,
        senders,
    }
}

/// What the load client did on the floor's replay, and the Rust senders'
/// figures on the same requests.
struct Replay {
    seconds: f64,
    /// Requests per second.
    rate: f64,
    /// The receiver's CPU time a request (µs).
    receiver_us: f64,
    senders: Vec<Sent>,
}

/// The load client on one connection over the workload's first commit, to
/// the same receiver, as app `app`.
async fn replay(workload: &Workload, receiver: &LoggingReceiver, app: &str, key: &str) -> Replay {
    // The served branch has moved on with the pushes: replay the first
    // commit.
    let load = Load::of_commit(
        &workload.served,
        &workload.first,
        &receiver.base_url,
        app,
        key,
    );
    let senders = rust_replays(&load, receiver).await;
    receiver.reset();
    let receiver_cpu_before = receiver.cpu_seconds();
    let sent = load.send(1).await;
    let receiver_cpu = receiver.cpu_seconds() - receiver_cpu_before;
    assert!(
        sent.all_ok(),
        "the load client's answers: {:?}",
        sent.statuses
    );
    receiver.assert_ok("the load client's replay");
    assert_eq!(receiver.count(), sent.requests, "the receiver's count");
    Replay {
        seconds: sent.seconds,
        rate: sent.rate,
        receiver_us: receiver_cpu / sent.requests as f64 * 1e6,
        senders,
    }
}

/// Where a strictly ordered sender in Rust stands: the load client's
/// requests (built before the clock starts, signatures included) sent one
/// after the other by each of [`SENDERS`] from this process's 2-thread
/// runtime. Its CPU time leaves out the receiver's threads.
async fn rust_replays(load: &Load, receiver: &LoggingReceiver) -> Vec<Sent> {
    let own_cpu = || cpu_seconds(std::process::id()) - receiver.cpu_seconds();
    let mut sent = Vec::new();
    for sender in SENDERS {
        receiver.reset();
        let cpu_before = own_cpu();
        let started = Instant::now();
        match sender {
            "reqwest" => {
                let client = actors::tls::http_client_builder()
                    .build()
                    .expect("an HTTP client");
                for request in &load.requests {
                    let response = client
                        .post(&load.url)
                        .headers(request.header_map())
                        .body(request.body().to_vec())
                        .send()
                        .await
                        .expect("the receiver answers");
                    assert!(response.status().is_success());
                    response.bytes().await.ok();
                }
            }
            _ => {
                let client =
                    actors::webhook_client::WebhookClient::new(Duration::from_secs(30), true);
                for request in &load.requests {
                    let answer = client
                        .post(&load.url, request.header_map(), request.body().to_vec())
                        .await
                        .expect("the receiver answers");
                    assert!((200..300).contains(&answer.status));
                }
            }
        }
        let elapsed = started.elapsed().as_secs_f64();
        let cpu = own_cpu() - cpu_before;
        let requests = load.requests.len() as f64;
        let (rate, cpu_us) = (requests / elapsed, cpu / requests * 1e6);
        receiver.assert_ok(sender);
        eprintln!(
            "{sender}, one at a time: {requests} requests at {rate:.0}/s, {cpu_us:.0} µs of CPU a \
             request"
        );
        sent.push(Sent { rate, cpu_us });
    }
    sent
}

/// `--pushes` successive 10-file commits, each announced by a GitHub push
/// hook: from the hook to the change's last webhook, and the floor (`git
/// fetch` of the commit into a mirror, then `git diff-tree`). `tree`: what
/// app `app` holds, moved on by each change.
#[allow(clippy::too_many_arguments)]
async fn pushes(
    options: &Options,
    workload: &mut Workload,
    daemon: &GitDaemon,
    herald: &Herald,
    receiver: &LoggingReceiver,
    app: &str,
    tree: &mut Tree,
    dir: &Path,
) -> Pushes {
    let url = url_of(workload, daemon);
    let mirror = dir.join("floor-mirror.git");
    timed(
        Command::new("git")
            .args(["clone", "-q", "--mirror", &url])
            .arg(&mirror),
    );
    let http = actors::tls::http_client_builder()
        .build()
        .expect("an HTTP client");
    let mut herald_ms = Vec::new();
    let mut floor_ms = Vec::new();
    for push in 0..options.pushes {
        let change = workload.push().clone();
        change.apply(tree);
        let wanted: HashSet<(&str, &str)> = change
            .files
            .iter()
            .map(|f| (f.event.as_str(), f.path.as_str()))
            .collect();
        let from = receiver.logged();
        let started = now_ns();
        let (status, _) = send_hook(
            &http,
            &herald.base,
            &format!("reference-{push}"),
            push_payload(&url, &change.new),
        )
        .await;
        assert_eq!(status, 202, "the push hook is accepted");
        let deadline = Instant::now() + Duration::from_secs(120);
        let last_ns = loop {
            let arrived: HashMap<(String, String), f64> = receiver
                .arrivals(from)
                .into_iter()
                .filter_map(|a| Some(((a.event, a.path?), a.at_ns)))
                .collect();
            let at = |(event, path): &(&str, &str)| {
                arrived
                    .get(&((*event).to_owned(), (*path).to_owned()))
                    .copied()
            };
            if let Some(times) = wanted.iter().map(at).collect::<Option<Vec<f64>>>() {
                break times.into_iter().fold(0.0, f64::max);
            }
            receiver.assert_ok(&format!("push {push}"));
            assert!(
                Instant::now() < deadline,
                "push {push}: the change did not arrive; herald's last lines:\n{}",
                tail(&herald.logs)
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        };
        receiver.assert_ok(&format!("push {push}"));
        assert!(
            receiver.holds(&[app.to_owned()], tree),
            "push {push}: the receiver does not hold git's tree"
        );
        herald_ms.push((last_ns - started as f64) / 1e6);
        let started = Instant::now();
        fetch_and_diff(&mirror, &change.old, &change.new);
        floor_ms.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    eprintln!("pushes: Herald {herald_ms:.0?} ms, floor {floor_ms:.0?} ms");
    Pushes {
        herald_ms,
        floor_ms,
    }
}

/// `apps` apps subscribed to the workload's repository: seconds from the
/// first registration to the last webhook, and Herald's peak RSS (MiB).
async fn fan_out(
    options: &Options,
    workload: &Workload,
    daemon: &GitDaemon,
    root: &Path,
    apps: usize,
) -> (f64, f64) {
    let want = current_tree(workload);
    let dir = tempfile::tempdir_in(root).expect("a temp dir");
    let database = BenchDatabase::create(Backend::Sqlite).await;
    let herald = Herald::start(dir.path(), &database, &herald_env(options)).await;
    let receiver = LoggingReceiver::start();
    let (mut app_ids, mut tokens) = (Vec::new(), Vec::new());
    for i in 0..apps {
        let (app, token, key) = herald
            .onboard_app(&format!("reference-{i}"), &receiver.base_url)
            .await;
        receiver.add_app(&app, &key);
        app_ids.push(app);
        tokens.push(token);
    }
    let sampler = RssSampler::start(herald.pid);
    let started_ns = now_ns();
    for token in &tokens {
        herald.register(token, &url_of(workload, daemon)).await;
    }
    wait_holding(
        &receiver,
        &app_ids,
        &want,
        &herald,
        Duration::from_secs(3_600),
    )
    .await;
    let stats = receiver.stats();
    let (first, last) = (stats.first_ns, stats.last_ns);
    let peak = peak_rss_mib(herald.pid);
    let (scan_peak, delivery_peak) = sampler.peaks(first);
    eprintln!(
        "first webhook after {:.2} s; RSS sampled: {scan_peak} before it, {delivery_peak} after",
        (first - started_ns as f64) / 1e9
    );
    herald.stop().await;
    let seconds = (last - started_ns as f64) / 1e9;
    eprintln!(
        "{apps} app(s) × {} files: {seconds:.2} s, peak RSS {peak:.0} MiB",
        want.len()
    );
    (seconds, peak)
}

/// A full fetch of `url` into an empty bare mirror, by libgit2 (Herald's
/// `Mirror::fetch`) and by `git clone --bare`, alternated run by run.
fn fetch_comparison(url: &str, root: &Path, runs: usize) -> (Vec<f64>, Vec<f64>) {
    let spec = actors::test_support::loopback_remote(
        url,
        Duration::from_secs(600),
        &root.join("no-data-dir"),
    );
    let (mut libgit2, mut git) = (Vec::new(), Vec::new());
    for run in 0..runs {
        let path = root.join(format!("fetch-libgit2-{run}.git"));
        let started = Instant::now();
        let mirror = actors::git::Mirror::open(&path).expect("a new mirror");
        mirror.fetch(&spec, BRANCH).expect("libgit2 fetches");
        libgit2.push(started.elapsed().as_secs_f64());
        drop(mirror);
        std::fs::remove_dir_all(&path).ok();
        let path = root.join(format!("fetch-git-{run}.git"));
        git.push(timed(
            Command::new("git")
                .args(["clone", "-q", "--bare", url])
                .arg(&path),
        ));
        std::fs::remove_dir_all(&path).ok();
    }
    eprintln!("fetch from {url}: libgit2 {libgit2:.2?} s, git {git:.2?} s");
    (libgit2, git)
}
