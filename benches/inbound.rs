//! Benchmark of inbound push webhooks: the real `herald` binary (started as
//! in `benches/delivery.rs`, whose setup this shares through
//! `benches/support`), a generated repository served by a local
//! `git daemon`, GitHub-style push hooks signed here, and a receiver inside
//! this process that answers 204 at once.
//!
//! `cargo bench --bench inbound [-- OPTIONS]`
//!
//! 1. Push to first webhook: `--pushes` successive 10-file commits on a
//!    repository of `--files` files. Each commit is pushed (the branch moved
//!    in the served repository), then its hook is sent, as the git host does
//!    once the push is done; measured from the end of the push to the
//!    receiver's first webhook of that commit, p50 and p99. The poll
//!    interval and the scheduler tick are an hour: only the hook can start
//!    the scan.
//! 2. Hooks accepted per second: `--hooks` signed push hooks (distinct
//!    delivery ids, a repository nobody watches, ~3 KB each) sent
//!    `--concurrency` at a time; 202s per second and the answer's latency,
//!    and how long the processor took to record them all.
//!
//! Options (defaults in brackets): `--pushes N` [100], `--files N` [2000],
//! `--hooks N` [5000], `--concurrency N` [16], `--scenarios 1,2` [all],
//! `--db sqlite|postgres|all` [all: SQLite, and PostgreSQL when
//! `TEST_DATABASE_URL` is set].
//!
//! Without `--bench` (as `cargo test --benches` runs it) the sizes shrink to a
//! smoke test. Results are printed as Markdown; see BENCHMARKS.md.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use support::*;

/// Events of each measured commit (modify 4, add 3, delete 3).
const EVENTS_PER_COMMIT: usize = 10;

#[derive(Debug, Clone)]
struct Options {
    pushes: usize,
    files: usize,
    hooks: usize,
    concurrency: usize,
    scenarios: Vec<usize>,
    db: Option<Backend>,
}

fn parse_options() -> Options {
    let mut args = BenchArgs::from_env();
    let mut options = if args.full {
        Options {
            pushes: 100,
            files: 2_000,
            hooks: 5_000,
            concurrency: 16,
            scenarios: vec![1, 2],
            db: None,
        }
    } else {
        Options {
            pushes: 5,
            files: 200,
            hooks: 200,
            concurrency: 8,
            scenarios: vec![1, 2],
            db: Some(Backend::Sqlite),
        }
    };
    while let Some(arg) = args.next_option() {
        match arg.as_str() {
            "--pushes" => options.pushes = args.number(&arg),
            "--files" => options.files = args.number(&arg),
            "--hooks" => options.hooks = args.number(&arg),
            "--concurrency" => options.concurrency = args.number(&arg),
            "--scenarios" => options.scenarios = args.numbers(&arg),
            "--db" => options.db = args.backend(),
            other => panic!("unknown option {other:?} (see benches/inbound.rs)"),
        }
    }
    assert!(options.pushes >= 1 && options.hooks >= 1 && options.concurrency >= 1);
    options
}

fn main() {
    let options = parse_options();
    runtime().block_on(run(&options, &backends(options.db)));
}

fn hook_env() -> Vec<(&'static str, &'static str)> {
    vec![
        ("HERALD__INBOUND__GITHUB_SECRET", GITHUB_SECRET),
        ("HERALD__SCHEDULER__TICK", "1h"),
        ("HERALD__SCHEDULER__RESCAN_INTERVAL", "1h"),
        ("HERALD__RATE_LIMIT__INBOUND_PER_MINUTE", "10000000"),
    ]
}

async fn run(options: &Options, backends: &[Backend]) {
    let root = tempfile::tempdir().expect("a temp dir");
    let repo = generate(root.path(), "bench", options.files, options.pushes);
    let daemon = GitDaemon::serve(root.path());
    let receiver = Receiver::start();
    println!(
        "# Inbound push webhooks\n\n{} CPUs, load {}; {} files, {} pushes, {} hooks ({} at a time)\n",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        load_average(),
        options.files,
        options.pushes,
        options.hooks,
        options.concurrency,
    );
    for &backend in backends {
        if options.scenarios.contains(&1) {
            push_latency(options, backend, &repo, &daemon, &receiver).await;
        }
        if options.scenarios.contains(&2) {
            accepted_per_second(options, backend).await;
        }
    }
}

async fn push_latency(
    options: &Options,
    backend: Backend,
    repo: &GeneratedRepo,
    daemon: &GitDaemon,
    receiver: &Receiver,
) {
    repo.set_head(0);
    let dir = tempfile::tempdir().expect("a temp dir");
    let database = BenchDatabase::create(backend).await;
    let herald = Herald::start(dir.path(), &database, &hook_env()).await;
    receiver.take();
    let token = herald.onboard("bench-0", &receiver.hook_url(0)).await;
    let url = daemon.url(repo);
    herald.register(&token, &url).await;
    wait_for(receiver, &herald, options.files, Duration::from_secs(300)).await;

    let mut first = Vec::new();
    let mut last = Vec::new();
    let mut answer = Vec::new();
    let mut to_commit = Vec::new();
    let mut commit_to_first = Vec::new();
    for k in 1..=options.pushes {
        let before = receiver.count();
        let commit = &repo.commits[k];
        repo.set_head(k);
        let pushed = unix_ms();
        let (status, took) = send_hook(
            &herald.http,
            &herald.base,
            &format!("push-{k}"),
            push_payload(&url, commit),
        )
        .await;
        assert_eq!(status, 202, "the hook was not accepted");
        answer.push(took);
        wait_for(
            receiver,
            &herald,
            before + EVENTS_PER_COMMIT,
            Duration::from_secs(60),
        )
        .await;
        let arrived: Vec<f64> = receiver.snapshot()[before..].iter().map(|a| a.at).collect();
        let first_at = arrived.iter().copied().fold(f64::INFINITY, f64::min);
        let last_at = arrived.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        first.push(first_at - pushed);
        last.push(last_at - pushed);
        if let Some(at) = herald.advanced_at(commit) {
            to_commit.push(at - pushed);
            commit_to_first.push(first_at - at);
        }
    }
    herald.stop().await;
    println!(
        "## Push to first webhook — {} ({} pushes, {EVENTS_PER_COMMIT} events each)\n",
        backend.name(),
        options.pushes
    );
    println!("| from the end of the push to | p50 ms | p99 ms | mean ms | max ms |");
    println!("|---|---:|---:|---:|---:|");
    let row = |label: &str, v: &[f64]| {
        println!(
            "| {label} | {:.1} | {:.1} | {:.1} | {:.1} |",
            median(v),
            percentile(v, 99.0),
            mean(v),
            percentile(v, 100.0)
        );
    };
    row("the hook's 202", &answer);
    row("the snapshot committed (hook, processor, scan)", &to_commit);
    row("**the first webhook at the receiver**", &first);
    row("the commit's last webhook", &last);
    println!("\n| between | p50 ms | p99 ms |\n|---|---:|---:|");
    println!(
        "| snapshot committed → first webhook | {:.1} | {:.1} |",
        median(&commit_to_first),
        percentile(&commit_to_first, 99.0)
    );
    println!(
        "\nTarget p50 under 100 ms: {}\n",
        met(median(&first) < 100.0)
    );
}

async fn accepted_per_second(options: &Options, backend: Backend) {
    let dir = tempfile::tempdir().expect("a temp dir");
    let database = BenchDatabase::create(backend).await;
    let herald = Herald::start(dir.path(), &database, &hook_env()).await;
    // A repository nobody watches: the processor records each hook as ignored.
    let url = "https://github.com/bench/unwatched.git";
    let commit = "a".repeat(40);
    let bodies: Arc<Vec<u8>> = Arc::new(push_payload(url, &commit));
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..options.concurrency {
        let (http, base, body, next) = (
            herald.http.clone(),
            herald.base.clone(),
            bodies.clone(),
            next.clone(),
        );
        let total = options.hooks;
        workers.push(tokio::spawn(async move {
            let mut took = Vec::new();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= total {
                    return took;
                }
                let (status, ms) =
                    send_hook(&http, &base, &format!("load-{i}"), body.as_ref().clone()).await;
                assert_eq!(status, 202, "hook {i} was not accepted");
                took.push(ms);
            }
        }));
    }
    let mut answers = Vec::new();
    for worker in workers {
        answers.extend(worker.await.expect("a sender"));
    }
    let sent_s = started.elapsed().as_secs_f64();
    // Then until the processor has recorded every hook.
    let store = connect(&database.bench_url(&herald.data_dir)).await;
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let pending = store.pending_hooks(1).await.expect("pending hooks");
        if pending.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "hooks were not processed");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let processed_s = started.elapsed().as_secs_f64();
    store.close().await.ok();
    herald.stop().await;
    println!(
        "## Hooks accepted — {} ({} hooks, {} at a time, {} bytes each)\n",
        backend.name(),
        options.hooks,
        options.concurrency,
        bodies.len()
    );
    println!("| measure | value |\n|---|---:|");
    println!(
        "| accepted (202) per second | **{:.0}** |",
        options.hooks as f64 / sent_s
    );
    println!(
        "| answer p50 / p99 ms | {:.2} / {:.2} |",
        median(&answers),
        percentile(&answers, 99.0)
    );
    println!(
        "| all processed after | {processed_s:.2} s ({:.0} hooks/s end to end) |\n",
        options.hooks as f64 / processed_s
    );
}
