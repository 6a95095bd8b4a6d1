//! Benchmark of several instances on one PostgreSQL database delivering to
//! a latency-bound receiver: the real `herald` binary started N = 1, 2, 3
//! times (as in `benches/delivery.rs`, whose setup this shares through
//! `benches/support`), each instance with its own data directory, all with the
//! same database, encryption key and admin token; repositories generated with
//! `git fast-import` and served by a local `git daemon`; a receiver in this
//! process that answers every webhook 204 after a fixed delay (20 ms).
//!
//! `cargo bench --bench cluster [-- OPTIONS]`
//!
//! Each run: a database `herald_bench_<ulid>` is created, N instances start on
//! it, `--apps` apps each subscribe to the same `--repos` repositories
//! (registrations spread over the instances). Every repository starts with one
//! file, delivered to every subscription (the warm-up). Then every
//! repository's branch moves to a commit that adds `--files` files and edits
//! the first one, and a scan of each is asked for (from the instances in
//! turn). Measured: from the receiver's first webhook of that commit to the
//! answer of its last one, webhooks per second.
//!
//! The floor, measured in the same run once the instances have stopped: the
//! same webhook bodies sent to the same receiver (same delay) by a client
//! that keeps as many requests in flight as Herald is allowed:
//! `max_in_flight_per_app` lanes per app on each instance, at most one per
//! subscription, so apps × min(repos, N × max_in_flight_per_app).
//!
//! Checked while measuring (a run that fails a check does not count): every
//! event in the database arrived, none twice and nothing else; within each
//! subscription in `seq` order; every Standard Webhooks signature is right;
//! every receiver ends with exactly each repository's tree.
//!
//! Options (defaults in brackets): `--instances 1,2,3`, `--runs N` [3],
//! `--apps N` [5], `--repos N` [10], `--files N` [200], `--delay-ms N` [20],
//! `--max-in-flight N` [8, Herald's default], `--lease-ttl D` [15s].
//! PostgreSQL: `TEST_DATABASE_URL` [postgres://postgres@127.0.0.1:5432].
//!
//! Without `--bench` (as `cargo test --benches` runs it) a smoke run with the
//! debug binary: 1 and 2 instances, 2 apps × 2 repositories of 10 files; it is
//! skipped when no PostgreSQL server answers. Results are printed as Markdown;
//! see BENCHMARKS.md.

mod support;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use actors::crypto::Keyring;
use actors::signing;
use actors::test_support::database::with_database;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use sea_orm::Database;
use serde_json::Value;
use support::*;

const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432";
/// The file every repository starts with, edited by the measured commit.
const SEED_FILE: &str = "README.txt";

#[derive(Debug, Clone)]
struct Options {
    full: bool,
    instances: Vec<usize>,
    runs: usize,
    apps: usize,
    repos: usize,
    files: usize,
    delay_ms: u64,
    max_in_flight: usize,
    lease_ttl: String,
}

fn parse_options() -> Options {
    let mut args = BenchArgs::from_env();
    let mut options = Options {
        full: args.full,
        instances: vec![1, 2, 3],
        runs: 3,
        apps: 5,
        repos: 10,
        files: 200,
        delay_ms: 20,
        max_in_flight: 8,
        lease_ttl: "15s".to_owned(),
    };
    if !args.full {
        options.instances = vec![1, 2];
        options.runs = 1;
        options.apps = 2;
        options.repos = 2;
        options.files = 10;
    }
    while let Some(arg) = args.next_option() {
        match arg.as_str() {
            "--instances" => options.instances = args.numbers(&arg),
            "--runs" => options.runs = args.number(&arg),
            "--apps" => options.apps = args.number(&arg),
            "--repos" => options.repos = args.number(&arg),
            "--files" => options.files = args.number(&arg),
            "--delay-ms" => options.delay_ms = args.number(&arg) as u64,
            "--max-in-flight" => options.max_in_flight = args.number(&arg),
            "--lease-ttl" => options.lease_ttl = args.value(&arg),
            other => panic!("unknown option {other:?} (see benches/cluster.rs)"),
        }
    }
    assert!(
        options.instances.iter().all(|&n| n >= 1)
            && options.runs >= 1
            && options.apps >= 1
            && options.repos >= 1
            && options.files >= 1
            && options.max_in_flight >= 1,
        "every option must be at least 1"
    );
    options
}

fn main() {
    let options = parse_options();
    runtime().block_on(run(&options));
}

/// The PostgreSQL server, when one answers.
async fn postgres_server() -> Option<String> {
    let server =
        std::env::var("TEST_DATABASE_URL").unwrap_or_else(|_| DEFAULT_DATABASE_URL.to_owned());
    let admin = with_database(&server, "postgres");
    match tokio::time::timeout(Duration::from_secs(5), Database::connect(&admin)).await {
        Ok(Ok(connection)) => {
            connection.close().await.ok();
            Some(server)
        }
        _ => None,
    }
}

// ---------------------------------------------------------------- workload

/// The seed file's content at `version` (0: the first commit, 1: edited).
fn seed_content(repo: &str, version: usize) -> Vec<u8> {
    format!("{repo}: the cluster benchmark's repository, version {version}\n").into_bytes()
}

/// Commit 1: the seed file alone. Commit 2: the seed file edited and `files`
/// files added.
fn generate_repo(root: &Path, name: &str, files: usize) -> GeneratedRepo {
    fast_import(root, name, |stream| {
        commit_header(stream, 1, "seed");
        inline(stream, SEED_FILE, &seed_content(name, 0));
        commit_header(stream, 2, "the tree");
        inline(stream, SEED_FILE, &seed_content(name, 1));
        for i in 0..files {
            inline(stream, &path_of(i), &content_of(name, i, 0));
        }
    })
}

/// The tree at the measured commit, path → content.
fn final_tree(repo: &GeneratedRepo, files: usize) -> BTreeMap<String, Vec<u8>> {
    let mut tree: BTreeMap<String, Vec<u8>> = (0..files)
        .map(|i| (path_of(i), content_of(&repo.name, i, 0)))
        .collect();
    tree.insert(SEED_FILE.to_owned(), seed_content(&repo.name, 1));
    tree
}

/// Requests Herald may have in flight: each instance runs at most
/// `max_in_flight` lanes per app, one per subscription.
fn allowed_in_flight(options: &Options, instances: usize) -> usize {
    options.apps * options.repos.min(instances * options.max_in_flight)
}

// ------------------------------------------------------------------- runs

struct Setup {
    repos: Vec<GeneratedRepo>,
    daemon: GitDaemon,
    receiver: Receiver,
    server: String,
    /// One encryption key for every instance of a run.
    key: String,
}

/// One measurement: N instances delivering the measured commit.
struct RunResult {
    instances: usize,
    webhooks: usize,
    push_to_first_s: f64,
    span_s: f64,
    rate: f64,
    floor_in_flight: usize,
    floor_rate: f64,
    /// Subscriptions being delivered at once, at most.
    peak_lanes: usize,
    /// When the subscriptions were done, after the first arrival: median, last.
    done_s: (f64, f64),
    /// Webhooks delivered and scans run, per instance, during the measurement.
    per_instance: Vec<(f64, f64)>,
    /// Cores busy over the measurement: the instances, PostgreSQL's backends
    /// of the database, the whole machine.
    cores: (f64, f64, f64),
    problems: Vec<String>,
}

async fn run(options: &Options) {
    let Some(server) = postgres_server().await else {
        assert!(
            !options.full,
            "no PostgreSQL server answers at TEST_DATABASE_URL (default {DEFAULT_DATABASE_URL})"
        );
        println!("cluster bench skipped: no PostgreSQL server answers (set TEST_DATABASE_URL)");
        return;
    };
    let dir = tempfile::tempdir().expect("a temp dir");
    let root = dir.path().join("remotes");
    std::fs::create_dir_all(&root).expect("the remotes directory");
    let started = Instant::now();
    let repos: Vec<GeneratedRepo> = (0..options.repos)
        .map(|r| generate_repo(&root, &format!("cluster{r}"), options.files))
        .collect();
    let setup = Setup {
        repos,
        daemon: GitDaemon::serve(&root),
        receiver: Receiver::start_with(ReceiverConfig {
            delay: Duration::from_millis(options.delay_ms),
            keep_bodies: true,
        }),
        server,
        key: Keyring::generate_hex(),
    };
    println!(
        "# Several instances, a receiver that answers after {} ms\n\n\
         Herald: {}. {} CPUs, load average at start: {}. {} apps × {} repositories \
         ({} subscriptions); each repository's measured commit adds {} files and edits \
         one: {} webhooks per run. `max_in_flight_per_app` = {}, `cluster.lease_ttl` = {}. \
         Repositories generated in {:.1} s.\n",
        options.delay_ms,
        herald_binary().display(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        load_average(),
        options.apps,
        options.repos,
        options.apps * options.repos,
        options.files,
        options.apps * options.repos * (options.files + 1),
        options.max_in_flight,
        options.lease_ttl,
        started.elapsed().as_secs_f64()
    );
    println!(
        "| N | run | webhooks | push → first (s) | first → last answer (s) | **webhooks/s** | \
         floor: in flight, webhooks/s | **ratio** | mean in flight | peak lanes | \
         subscriptions done, median / last (s) | webhooks / scans per instance | \
         cores: Herald, PostgreSQL, machine | checks |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    let mut results: Vec<RunResult> = Vec::new();
    // Runs interleave N, so that a change in the machine's load spreads over
    // every N alike.
    for run in 1..=options.runs {
        for &n in &options.instances {
            let result = measure(options, &setup, n).await;
            print_row(options, run, &result);
            results.push(result);
        }
    }
    summary(options, &results);
    println!("Load average at end: {}.", load_average());
    let failed = results.iter().filter(|r| !r.problems.is_empty()).count();
    assert!(failed == 0, "{failed} run(s) failed their checks (above)");
}

async fn measure(options: &Options, setup: &Setup, n: usize) -> RunResult {
    let receiver = &setup.receiver;
    let database = BenchDatabase::create_postgres(&setup.server).await;
    let mif = options.max_in_flight.to_string();
    let env = [
        ("HERALD__SECURITY__ENCRYPTION_KEY", setup.key.as_str()),
        ("HERALD__CLUSTER__LEASE_TTL", options.lease_ttl.as_str()),
        ("HERALD__DELIVERY__TIMEOUT", "5s"),
        ("HERALD__DELIVERY__MAX_IN_FLIGHT_PER_APP", mif.as_str()),
        // Scans only when registered or asked for.
        ("HERALD__SCHEDULER__RESCAN_INTERVAL", "1h"),
        ("HERALD__RATE_LIMIT__PER_IP_PER_MINUTE", "1000000"),
        ("HERALD__RATE_LIMIT__ONBOARDING_PER_MINUTE", "1000000"),
        ("HERALD__RATE_LIMIT__PER_APP_PER_MINUTE", "1000000"),
    ];
    let dirs: Vec<tempfile::TempDir> = (0..n)
        .map(|_| tempfile::tempdir().expect("a temp dir"))
        .collect();
    // One after the other: the first applies the migrations.
    let mut heralds = Vec::new();
    for dir in &dirs {
        heralds.push(Herald::start(dir.path(), &database, &env).await);
    }
    for repo in &setup.repos {
        repo.set_head(0);
    }
    receiver.take();

    // Apps and subscriptions, spread over the instances.
    let mut apps = Vec::new();
    for a in 0..options.apps {
        apps.push(
            heralds[a % n]
                .onboard_keyed(&format!("cluster-{a}"), &receiver.hook_url(a))
                .await,
        );
    }
    let mut repo_ids = Vec::new();
    for (r, repo) in setup.repos.iter().enumerate() {
        let mut id = String::new();
        for (a, (token, _)) in apps.iter().enumerate() {
            id = heralds[(r * options.apps + a) % n]
                .register(token, &setup.daemon.url(repo))
                .await;
        }
        repo_ids.push(id);
    }
    let subscriptions = options.apps * options.repos;
    wait_for(
        receiver,
        &heralds[0],
        subscriptions,
        Duration::from_secs(120),
    )
    .await;
    let warmup = receiver.take();

    // The measured commit.
    let before = usage(&heralds, &database).await;
    let pushed = unix_ms();
    for repo in &setup.repos {
        repo.set_head(1);
    }
    for (r, id) in repo_ids.iter().enumerate() {
        heralds[r % n].scan_now(&apps[r % options.apps].0, id).await;
    }
    let expected = subscriptions * (options.files + 1);
    let in_flight = allowed_in_flight(options, n);
    let timeout = Duration::from_secs(
        120 + (expected as u64 * options.delay_ms * 5) / (1000 * in_flight as u64),
    );
    wait_for(receiver, &heralds[0], expected, timeout).await;
    let after = usage(&heralds, &database).await;
    // Anything sent twice would arrive now.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let arrivals = receiver.take();

    let store = connect(&database.bench_url(Path::new("."))).await;
    let seqs = event_seqs(&store).await;
    store.close().await.ok();
    futures::future::join_all(heralds.into_iter().map(Herald::stop)).await;
    drop(database);

    let delay = options.delay_ms as f64;
    let first = arrivals.iter().map(|a| a.at).fold(f64::INFINITY, f64::min);
    let last = arrivals
        .iter()
        .map(|a| a.at)
        .fold(f64::NEG_INFINITY, f64::max);
    let span_s = (last + delay - first) / 1000.0;
    let problems = check(
        options, setup, &apps, &repo_ids, &seqs, &warmup, &arrivals, expected,
    );
    let (peak_lanes, done_s) = lanes(&arrivals, first);
    let floor_rate = floor(receiver, &arrivals, in_flight).await;
    let seconds = after.at.duration_since(before.at).as_secs_f64();
    let tick = clock_ticks_per_second();
    let cores = |from: u64, to: u64| to.saturating_sub(from) as f64 / tick / seconds;
    RunResult {
        instances: n,
        webhooks: arrivals.len(),
        push_to_first_s: (first - pushed) / 1000.0,
        span_s,
        rate: arrivals.len() as f64 / span_s,
        floor_in_flight: in_flight,
        floor_rate,
        peak_lanes,
        done_s,
        per_instance: before
            .per_instance
            .iter()
            .zip(&after.per_instance)
            .map(|(b, a)| (a.0 - b.0, a.1 - b.1))
            .collect(),
        cores: (
            cores(before.herald, after.herald),
            cores(before.postgres, after.postgres),
            cores(before.machine, after.machine),
        ),
        problems,
    }
}

/// Counters sampled at the start and the end of a measurement.
struct Usage {
    at: Instant,
    /// Per instance: successful deliveries and scans (`/metrics`).
    per_instance: Vec<(f64, f64)>,
    /// CPU ticks: the instances, PostgreSQL's backends, the machine (busy).
    herald: u64,
    postgres: u64,
    machine: u64,
}

async fn usage(heralds: &[Herald], database: &BenchDatabase) -> Usage {
    let mut per_instance = Vec::new();
    for herald in heralds {
        per_instance.push((
            herald
                .metric("herald_deliveries_total", "outcome=\"delivered\"")
                .await,
            herald.metric("herald_scans_total", "").await,
        ));
    }
    Usage {
        at: Instant::now(),
        per_instance,
        herald: heralds.iter().map(|h| process_ticks(h.pid)).sum(),
        postgres: database
            .postgres_name()
            .map_or(0, |name| postgres_ticks(name).values().sum()),
        machine: machine_ticks().0,
    }
}

/// What is wrong with a run's webhooks (nothing, for a run that counts).
#[allow(clippy::too_many_arguments)]
fn check(
    options: &Options,
    setup: &Setup,
    apps: &[(String, String)],
    repo_ids: &[String],
    seqs: &HashMap<String, (String, i64)>,
    warmup: &[Arrival],
    measured: &[Arrival],
    expected: usize,
) -> Vec<String> {
    let mut problems = Vec::new();
    let all: Vec<Arrival> = warmup.iter().chain(measured).cloned().collect();
    if measured.len() != expected {
        problems.push(format!("{} webhooks, not {expected}", measured.len()));
    }
    // Every event arrived, once, and nothing else.
    let mut seen = HashSet::new();
    let twice = all
        .iter()
        .filter(|a| !seen.insert(a.webhook_id.as_str()))
        .count();
    if twice > 0 {
        problems.push(format!("{twice} webhooks arrived twice"));
    }
    let unknown = seen.iter().filter(|id| !seqs.contains_key(**id)).count();
    let missing = seqs.keys().filter(|id| !seen.contains(id.as_str())).count();
    if unknown + missing > 0 {
        problems.push(format!(
            "{missing} events never arrived, {unknown} webhooks are no event"
        ));
    }
    let violations = order_violations(&all, seqs);
    if violations > 0 {
        problems.push(format!("{violations} webhooks out of `seq` order"));
    }
    // Signatures, then each receiver's tree.
    let mut bad_signatures = 0;
    let mut trees: HashMap<(usize, String), BTreeMap<String, Vec<u8>>> = HashMap::new();
    let mut ordered: Vec<&Arrival> = all.iter().collect();
    ordered.sort_by(|a, b| a.at.total_cmp(&b.at));
    for arrival in ordered {
        let Some(request) = &arrival.request else {
            continue;
        };
        let signed = apps.get(arrival.hook).is_some_and(|(_, key)| {
            request.timestamp.parse().is_ok_and(|timestamp| {
                signing::standard(
                    &[key.as_bytes()],
                    &arrival.webhook_id,
                    timestamp,
                    &request.body,
                ) == request.signature
            })
        });
        if !signed {
            bad_signatures += 1;
        }
        let Ok(body) = serde_json::from_slice::<Value>(&request.body) else {
            problems.push(format!("webhook {} is not JSON", arrival.webhook_id));
            continue;
        };
        let repository = body["repository"]["repository_id"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let path = body["file"]["path"].as_str().unwrap_or_default().to_owned();
        let tree = trees.entry((arrival.hook, repository)).or_default();
        match request.endpoint.as_str() {
            "create" | "update" => {
                let content = body["file"]["content"].as_str().unwrap_or_default();
                let content = if body["file"]["content_encoding"] == "base64" {
                    BASE64.decode(content).unwrap_or_default()
                } else {
                    content.as_bytes().to_vec()
                };
                tree.insert(path, content);
            }
            "delete" => {
                tree.remove(&path);
            }
            other => problems.push(format!("a webhook to /{other}")),
        }
    }
    if bad_signatures > 0 {
        problems.push(format!("{bad_signatures} bad signatures"));
    }
    let mut wrong_trees = 0;
    for (r, repo) in setup.repos.iter().enumerate() {
        let want = final_tree(repo, options.files);
        for a in 0..apps.len() {
            if trees.get(&(a, repo_ids[r].clone())) != Some(&want) {
                wrong_trees += 1;
            }
        }
    }
    if wrong_trees > 0 {
        problems.push(format!("{wrong_trees} receivers do not hold the tree"));
    }
    problems
}

/// The most subscriptions delivered at once (each from its first to its last
/// arrival), and when they were done after `first`: median and last (s).
fn lanes(arrivals: &[Arrival], first: f64) -> (usize, (f64, f64)) {
    let mut spans: HashMap<(usize, String), (f64, f64)> = HashMap::new();
    for arrival in arrivals {
        let repository = arrival
            .request
            .as_ref()
            .and_then(|r| serde_json::from_slice::<Value>(&r.body).ok())
            .and_then(|b| b["repository"]["repository_id"].as_str().map(str::to_owned))
            .unwrap_or_default();
        let span = spans
            .entry((arrival.hook, repository))
            .or_insert((arrival.at, arrival.at));
        span.0 = span.0.min(arrival.at);
        span.1 = span.1.max(arrival.at);
    }
    let mut edges: Vec<(f64, i32)> = spans
        .values()
        .flat_map(|&(from, to)| [(from, 1), (to, -1)])
        .collect();
    edges.sort_by(|a, b| a.0.total_cmp(&b.0).then(b.1.cmp(&a.1)));
    let (mut open, mut peak) = (0i32, 0i32);
    for (_, step) in edges {
        open += step;
        peak = peak.max(open);
    }
    let done: Vec<f64> = spans.values().map(|s| (s.1 - first) / 1000.0).collect();
    (
        usize::try_from(peak).unwrap_or(0),
        (median(&done), percentile(&done, 100.0)),
    )
}

/// What the receiver absorbs: the run's webhook bodies sent again by a client
/// keeping `in_flight` requests in flight; from the first request to the last
/// answer, requests per second.
async fn floor(receiver: &Receiver, arrivals: &[Arrival], in_flight: usize) -> f64 {
    let bodies: Arc<Vec<bytes::Bytes>> = Arc::new(
        arrivals
            .iter()
            .filter_map(|a| a.request.as_ref().map(|r| r.body.clone()))
            .collect(),
    );
    let url = format!("{}/floor/create", receiver.base_url);
    let http = actors::tls::http_client_builder()
        .build()
        .expect("an HTTP client");
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..in_flight)
        .map(|_| {
            let (http, url, bodies, next) =
                (http.clone(), url.clone(), bodies.clone(), next.clone());
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(body) = bodies.get(i) else { return };
                    let response = http
                        .post(&url)
                        .header("content-type", "application/json")
                        .body(body.clone())
                        .send()
                        .await
                        .expect("the receiver answers");
                    assert!(response.status().is_success(), "the receiver refused");
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await.expect("a load worker");
    }
    let rate = bodies.len() as f64 / started.elapsed().as_secs_f64();
    receiver.take();
    rate
}

// ----------------------------------------------------------------- report

fn print_row(options: &Options, run: usize, r: &RunResult) {
    let per_instance = r
        .per_instance
        .iter()
        .map(|(webhooks, scans)| format!("{webhooks:.0} / {scans:.0}"))
        .collect::<Vec<_>>()
        .join(" · ");
    println!(
        "| {} | {run} | {} | {:.2} | {:.2} | **{:.0}** | {}, {:.0} | **{:.2}** | {:.1} | {} | \
         {:.2} / {:.2} | {per_instance} | {:.2}, {:.2}, {:.2} | {} |",
        r.instances,
        r.webhooks,
        r.push_to_first_s,
        r.span_s,
        r.rate,
        r.floor_in_flight,
        r.floor_rate,
        r.rate / r.floor_rate,
        r.rate * options.delay_ms as f64 / 1000.0,
        r.peak_lanes,
        r.done_s.0,
        r.done_s.1,
        r.cores.0,
        r.cores.1,
        r.cores.2,
        if r.problems.is_empty() {
            "ok".to_owned()
        } else {
            format!("**failed**: {}", r.problems.join("; "))
        }
    );
}

fn summary(options: &Options, results: &[RunResult]) {
    println!(
        "\n## Summary: median (min – max) over the runs that passed their checks\n\n\
         | N | runs | **webhooks/s** | floor webhooks/s (in flight) | **ratio to the floor** | \
         push → first webhook (s) |\n|---|---|---|---|---|---|"
    );
    for &n in &options.instances {
        let ok: Vec<&RunResult> = results
            .iter()
            .filter(|r| r.instances == n && r.problems.is_empty())
            .collect();
        if ok.is_empty() {
            println!("| {n} | 0 | — | — | — | — |");
            continue;
        }
        let spread = |values: Vec<f64>, digits: usize| {
            format!(
                "{:.digits$} ({:.digits$} – {:.digits$})",
                median(&values),
                percentile(&values, 0.0),
                percentile(&values, 100.0)
            )
        };
        println!(
            "| {n} | {} | **{}** | {} ({}) | **{}** | {} |",
            ok.len(),
            spread(ok.iter().map(|r| r.rate).collect(), 0),
            spread(ok.iter().map(|r| r.floor_rate).collect(), 0),
            allowed_in_flight(options, n),
            spread(ok.iter().map(|r| r.rate / r.floor_rate).collect(), 2),
            spread(ok.iter().map(|r| r.push_to_first_s).collect(), 2),
        );
    }
    println!();
}
