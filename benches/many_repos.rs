//! Benchmark of many watched repositories: what watching them costs while
//! nothing changes, and whether a push to one of them still arrives as fast
//! as with one repository.
//!
//! `cargo bench --bench many_repos [-- OPTIONS]`
//!
//! 1. The floor: Herald watching one repository (`--files` files, served by
//!    a local `git daemon`); `--pushes` times, a 10-file commit is pushed
//!    (the branch moved in the served repository), then `POST
//!    /api/repositories/{id}/scan`; measured from the end of the push to the
//!    receiver's last webhook of that commit.
//! 2. A fresh Herald watching `--repos` repositories: one-file repositories
//!    (links to one bare repository, so each is a repository of its own to
//!    Herald), all rescanned every `--interval` seconds, plus one like the
//!    floor's. Once every initial snapshot has arrived, it settles for
//!    `--settle` seconds (the poll catches up on the repositories that fell
//!    due while thousands were registered, so what follows is the steady
//!    state); then Herald's CPU share (of one core) and RSS over `--idle`
//!    seconds, and the rescans it made meanwhile; then the same pushes to
//!    the one repository, each as a ratio to the floor's median, split into
//!    push → first webhook (the scan: its wait for a worker, fetch, diff,
//!    outbox) and first → last webhook (delivery).
//!
//! Options (defaults in brackets): `--repos N` [1000], `--interval SECS`
//! [30 × repos / 1000: the rate of 10,000 repositories at the default 5
//! minutes], `--settle SECS` [the interval], `--idle SECS` [60], `--pushes
//! N` [10], `--files N` [200],
//! `--workers N` [Herald's default `git.scan_workers`].
//!
//! Without `--bench` (as `cargo test --benches` runs it) the sizes shrink to a
//! smoke test. Results are printed as Markdown; see BENCHMARKS.md.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use futures::StreamExt;
use support::*;

/// Events of each measured commit (modify 4, add 3, delete 3).
const EVENTS_PER_COMMIT: usize = 10;

#[derive(Debug, Clone)]
struct Options {
    repos: usize,
    interval: Option<u64>,
    settle: Option<u64>,
    idle: u64,
    pushes: usize,
    files: usize,
    workers: Option<usize>,
}

fn parse_options() -> Options {
    let mut args = BenchArgs::from_env();
    let mut options = if args.full {
        Options {
            repos: 1_000,
            interval: None,
            settle: None,
            idle: 60,
            pushes: 10,
            files: 200,
            workers: None,
        }
    } else {
        Options {
            repos: 20,
            interval: Some(2),
            settle: Some(1),
            idle: 3,
            pushes: 2,
            files: 40,
            workers: None,
        }
    };
    while let Some(arg) = args.next_option() {
        match arg.as_str() {
            "--repos" => options.repos = args.number(&arg),
            "--interval" => options.interval = Some(args.number(&arg) as u64),
            "--settle" => options.settle = Some(args.number(&arg) as u64),
            "--idle" => options.idle = args.number(&arg) as u64,
            "--pushes" => options.pushes = args.number(&arg),
            "--files" => options.files = args.number(&arg),
            "--workers" => options.workers = Some(args.number(&arg)),
            other => panic!("unknown option {other:?} (see benches/many_repos.rs)"),
        }
    }
    assert!(options.repos >= 1 && options.pushes >= 1 && options.idle >= 1);
    options
}

impl Options {
    fn interval(&self) -> u64 {
        self.interval
            .unwrap_or_else(|| (30 * self.repos as u64 / 1_000).max(1))
    }

    fn settle(&self) -> u64 {
        self.settle.unwrap_or_else(|| self.interval())
    }

    fn env(&self) -> Vec<(&'static str, String)> {
        let mut env = vec![
            // Herald's defaults, which `Herald::start` shortens for the
            // other benches: the poll's tick is part of what is measured.
            ("HERALD__SCHEDULER__TICK", "10s".to_owned()),
            (
                "HERALD__SCHEDULER__RESCAN_INTERVAL",
                format!("{}s", self.interval()),
            ),
            // Registering thousands of repositories from one address.
            (
                "HERALD__RATE_LIMIT__PER_IP_PER_MINUTE",
                "10000000".to_owned(),
            ),
            (
                "HERALD__RATE_LIMIT__PER_APP_PER_MINUTE",
                "10000000".to_owned(),
            ),
        ];
        if let Some(workers) = self.workers {
            env.push(("HERALD__GIT__SCAN_WORKERS", workers.to_string()));
        }
        env
    }
}

fn main() {
    let options = parse_options();
    runtime().block_on(run(&options));
}

/// What one Herald run measured.
struct Measured {
    /// Push → last webhook of the commit, ms, one per push.
    latencies: Vec<f64>,
    /// Push → first webhook of the commit, ms, one per push.
    to_first: Vec<f64>,
    idle: Idle,
}

/// Herald's cost while it only rescans.
struct Idle {
    cpu_share: f64,
    rss_mib: f64,
    peak_rss_mib: f64,
    rescans_per_second: f64,
}

async fn run(options: &Options) {
    let root = tempfile::tempdir().expect("a temp dir");
    let solo = generate(root.path(), "solo", options.files, options.pushes);
    let pushed = generate(root.path(), "pushed", options.files, options.pushes);
    let idle_repos = idle_repositories(root.path(), options.repos.saturating_sub(1));
    let daemon = GitDaemon::serve(root.path());
    println!(
        "# Many repositories\n\n{} CPUs, load {}; {} repositories rescanned every {} s, \
         {} pushes of {EVENTS_PER_COMMIT} files to one of {} files\n",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        load_average(),
        options.repos,
        options.interval(),
        options.pushes,
        options.files,
    );

    // The same steps for both: register, sync, idle, then the pushes.
    let floor = watch(options, &daemon, &solo, &[]).await;
    let many = watch(options, &daemon, &pushed, &idle_repos).await;

    let floor_median = median(&floor.latencies);
    let many_median = median(&many.latencies);
    let (idle, floor_idle) = (many.idle, floor.idle);
    println!(
        "\n| figure | {} repositories | one repository (floor) | ratio |",
        options.repos
    );
    println!("|---|---|---|---|");
    println!(
        "| push + `POST …/scan` → last webhook, median of {} | {many_median:.0} ms (p90 {:.0}) | {floor_median:.0} ms (p90 {:.0}) | **{:.2}×** |",
        options.pushes,
        percentile(&many.latencies, 90.0),
        percentile(&floor.latencies, 90.0),
        many_median / floor_median,
    );
    println!(
        "| of which push → first webhook (the scan), median | {:.0} ms | {:.0} ms | {:.2}× |",
        median(&many.to_first),
        median(&floor.to_first),
        median(&many.to_first) / median(&floor.to_first),
    );
    println!(
        "| Herald's CPU while idle (of one core) | {:.1}% | {:.1}% | — |",
        idle.cpu_share * 100.0,
        floor_idle.cpu_share * 100.0
    );
    println!(
        "| RSS while idle (at the end; peak) | {:.0} MiB; {:.0} MiB | {:.0} MiB; {:.0} MiB | — |",
        idle.rss_mib, idle.peak_rss_mib, floor_idle.rss_mib, floor_idle.peak_rss_mib
    );
    println!(
        "| rescans a second (wanted: {:.1}) | {:.1} | {:.1} | — |",
        options.repos as f64 / options.interval() as f64,
        idle.rescans_per_second,
        floor_idle.rescans_per_second
    );
    println!(
        "\nGoal: the push within 1.5× of the floor — {}; idle at most one core and 500 MiB — {}.",
        met(many_median <= 1.5 * floor_median),
        met(idle.cpu_share <= 1.0 && idle.peak_rss_mib <= 500.0)
    );
}

/// `count` one-file repositories `idle-N.git`: links to one bare
/// repository, so that generating ten thousand takes a moment.
fn idle_repositories(root: &Path, count: usize) -> Vec<String> {
    let template = fast_import(root, "idle-template", |stream| {
        commit_header(stream, 1, "one file");
        inline(stream, "README.md", b"an idle repository\n");
    });
    (0..count)
        .map(|i| {
            let name = format!("idle-{i:05}.git");
            std::os::unix::fs::symlink(&template.bare, root.join(&name))
                .expect("a link to the template");
            name
        })
        .collect()
}

/// Starts a Herald watching `measured` and the `others`, waits for every
/// initial snapshot, measures the idle cost, then the pushes.
async fn watch(
    options: &Options,
    daemon: &GitDaemon,
    measured: &GeneratedRepo,
    others: &[String],
) -> Measured {
    let dir = tempfile::tempdir().expect("a temp dir");
    let database = BenchDatabase::create(Backend::Sqlite).await;
    let env = options.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let herald = Herald::start(dir.path(), &database, &env).await;
    let receiver = Receiver::start();
    let token = herald.onboard("many", &receiver.hook_url(0)).await;

    let started = Instant::now();
    let urls: Vec<String> = others.iter().map(|name| daemon.url_of(name)).collect();
    futures::stream::iter(urls)
        .map(|url| {
            let (herald, token) = (&herald, &token);
            async move { herald.register(token, &url).await }
        })
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await;
    let id = herald.register(&token, &daemon.url(measured)).await;
    let expected = others.len() + options.files;
    wait_for(&receiver, &herald, expected, Duration::from_secs(3_600)).await;
    println!(
        "{} repositories registered and synced in {:.1} s",
        others.len() + 1,
        started.elapsed().as_secs_f64()
    );
    receiver.take();
    if !others.is_empty() {
        tokio::time::sleep(Duration::from_secs(options.settle())).await;
    }
    let idle = measure_idle_cost(&herald, options.idle).await;

    let (mut latencies, mut to_first) = (Vec::new(), Vec::new());
    for k in 1..=options.pushes {
        let before = receiver.count();
        measured.set_head(k);
        let pushed_at = unix_ms();
        herald.scan_now(&token, &id).await;
        wait_for(
            &receiver,
            &herald,
            before + EVENTS_PER_COMMIT,
            Duration::from_secs(600),
        )
        .await;
        let arrivals = receiver.snapshot();
        let times = arrivals[before..].iter().map(|a| a.at);
        let first = times.clone().fold(f64::MAX, f64::min);
        let last = times.fold(f64::MIN, f64::max);
        to_first.push((first - pushed_at).max(0.0));
        latencies.push((last - pushed_at).max(0.0));
    }
    herald.stop().await;
    Measured {
        latencies,
        to_first,
        idle,
    }
}

/// Herald's CPU share and RSS over `seconds`, sampled every second, and the
/// rescans it finished meanwhile.
async fn measure_idle_cost(herald: &Herald, seconds: u64) -> Idle {
    let ticks_per_second = clock_ticks_per_second();
    let scans_before = herald.metric("herald_scans_total", "").await;
    let ticks_before = process_ticks(herald.pid);
    let started = Instant::now();
    let mut peak_rss_mib: f64 = 0.0;
    let mut rss_mib = 0.0;
    while started.elapsed() < Duration::from_secs(seconds) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        rss_mib = status_field_mib(&process_status(herald.pid), "VmRSS").unwrap_or(0.0);
        peak_rss_mib = peak_rss_mib.max(rss_mib);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let ticks = process_ticks(herald.pid) - ticks_before;
    let scans = herald.metric("herald_scans_total", "").await - scans_before;
    Idle {
        cpu_share: ticks as f64 / ticks_per_second / elapsed,
        rss_mib,
        peak_rss_mib,
        rescans_per_second: scans / elapsed,
    }
}
