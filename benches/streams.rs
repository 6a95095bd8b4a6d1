//! Many open event streams: what `GET /api/stream` connections cost Herald
//! while nothing happens, and how fast one commit reaches all of them.
//!
//! `cargo bench --bench streams [-- OPTIONS]`
//!
//! Herald is the release binary (or `HERALD_BENCH_BINARY`) on SQLite (or
//! `--db postgres`, on `TEST_DATABASE_URL`) under a fresh data directory,
//! `--apps` apps in pull mode (`PATCH /api/app {"delivery": "pull"}`), each
//! watching the same one-file repository served by `git daemon`. Its
//! per-address connection cap is raised to fit the streams, which all come
//! from 127.0.0.1; nothing else is changed from the benches' usual settings.
//!
//! 1. The floor: once the initial snapshot's events are written, Herald's
//!    RSS and CPU over `--idle` seconds with no stream open.
//! 2. `--streams-per-app` streams per app are opened by one client process
//!    (its soft open-files limit raised); once each has read its backlog
//!    (the initial `create`) and `--settle` seconds passed, the same
//!    figures over `--idle` seconds. The difference is what the open
//!    streams cost (heartbeats every 15 s included).
//! 3. `--commits` times, the file is changed (the branch moved) and `POST
//!    /api/repositories/{id}/scan` asked: from the outbox commit (the
//!    server's "snapshot advanced" log line) to the first and to the last
//!    stream reading the commit's `update`, and from the scan request to
//!    the last stream.
//!
//! Options (defaults in brackets): `--apps N` [1000], `--streams-per-app N`
//! [1], `--idle SECS` [30], `--settle SECS` [5], `--commits N` [5], `--db
//! sqlite|postgres` [sqlite], `--env KEY=VALUE` (more environment for
//! Herald; repeatable). Without `--bench` (as `cargo test --benches` runs
//! it) the sizes shrink to a smoke run. Results are printed as Markdown;
//! see BENCHMARKS.md.

mod support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{Value, json};
use sse_stream::SseByteStream;
use support::*;

#[derive(Debug, Clone)]
struct Options {
    apps: usize,
    streams_per_app: usize,
    idle: u64,
    settle: u64,
    commits: usize,
    backend: Backend,
    env: Vec<(String, String)>,
}

fn parse_options() -> Options {
    let mut args = BenchArgs::from_env();
    let full = args.full;
    let mut options = Options {
        apps: if full { 1_000 } else { 5 },
        streams_per_app: 1,
        idle: if full { 30 } else { 2 },
        settle: if full { 5 } else { 1 },
        commits: if full { 5 } else { 1 },
        backend: Backend::Sqlite,
        env: Vec::new(),
    };
    while let Some(arg) = args.next_option() {
        match arg.as_str() {
            "--apps" => options.apps = args.number(&arg),
            "--streams-per-app" => options.streams_per_app = args.number(&arg),
            "--idle" => options.idle = args.number(&arg) as u64,
            "--settle" => options.settle = args.number(&arg) as u64,
            "--commits" => options.commits = args.number(&arg),
            "--db" => {
                options.backend = args
                    .backend()
                    .expect("--db names one backend: sqlite or postgres");
            }
            "--env" => options.env.push(args.pair(&arg)),
            other => panic!("unknown option {other:?} (see benches/streams.rs)"),
        }
    }
    assert!(options.apps >= 1 && options.streams_per_app >= 1 && options.idle >= 1);
    assert!(options.commits >= 1);
    options
}

impl Options {
    fn streams(&self) -> usize {
        self.apps * self.streams_per_app
    }

    fn herald_env(&self) -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> = [
            ("HERALD__SCHEDULER__RESCAN_INTERVAL", "1h".to_owned()),
            // Every stream comes from 127.0.0.1.
            (
                "HERALD__SERVER__MAX_CONNECTIONS_PER_IP",
                (self.streams() + 256).to_string(),
            ),
            (
                "HERALD__RATE_LIMIT__PER_IP_PER_MINUTE",
                "10000000".to_owned(),
            ),
            (
                "HERALD__RATE_LIMIT__PER_APP_PER_MINUTE",
                "10000000".to_owned(),
            ),
            (
                "HERALD__RATE_LIMIT__ONBOARDING_PER_MINUTE",
                "10000000".to_owned(),
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        env.extend(self.env.iter().cloned());
        env
    }
}

fn main() {
    let options = parse_options();
    // Each stream is a socket here and one in Herald.
    if let Err(err) = rlimit::increase_nofile_limit(u64::MAX) {
        eprintln!("could not raise the open-files limit: {err}");
    }
    runtime().block_on(run(&options));
}

/// Herald's cost over a stretch of time.
struct Cost {
    /// CPU of one core, as a share.
    cpu_share: f64,
    rss_mib: f64,
}

/// Every stream's first reading of each commit: commit → stream → Unix ms.
type Readings = Arc<Mutex<HashMap<String, HashMap<usize, f64>>>>;

async fn run(options: &Options) {
    let root = tempfile::tempdir().expect("a temp dir");
    let repo = fast_import(root.path(), "streamed", |stream| {
        for k in 0..=options.commits {
            commit_header(stream, k + 1, &format!("version {k}"));
            inline(stream, "README.md", format!("version {k}\n").as_bytes());
        }
    });
    let daemon = GitDaemon::serve(root.path());
    let dir = tempfile::tempdir().expect("a temp dir");
    let database = BenchDatabase::create(options.backend).await;
    let env = options.herald_env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let herald = Herald::start(dir.path(), &database, &env).await;
    println!(
        "# Open event streams\n\n{} CPUs, load {}; {} apps × {} stream(s), {}\n",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        load_average(),
        options.apps,
        options.streams_per_app,
        options.backend.name(),
    );

    // Apps in pull mode, each watching the repository.
    let started = Instant::now();
    let url = daemon.url(&repo);
    let apps: Vec<(String, String)> = futures::stream::iter(0..options.apps)
        .map(|i| {
            let (herald, url) = (&herald, &url);
            async move {
                // Nothing listens there: in pull mode nothing is sent.
                let token = herald
                    .onboard(&format!("streams-{i}"), "http://127.0.0.1:9/hooks")
                    .await;
                let (status, body) = herald.patch_app(&token, json!({"delivery": "pull"})).await;
                assert!(status.is_success(), "pull mode refused: {status} {body}");
                let id = herald.register(&token, url).await;
                (token, id)
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    let first = &repo.commits[0];
    wait_until_written(&herald, &apps, first).await;
    println!(
        "{} apps onboarded, in pull mode, watching and synced in {:.1} s",
        options.apps,
        started.elapsed().as_secs_f64()
    );

    tokio::time::sleep(Duration::from_secs(options.settle)).await;
    let floor = measure(&herald, options.idle).await;

    let readings: Readings = Arc::default();
    let ended = Arc::new(AtomicUsize::new(0));
    let http = actors::tls::http_client_builder()
        .pool_max_idle_per_host(0)
        .build()
        .expect("a client");
    let opened = Instant::now();
    let mut streams = Vec::new();
    for (app, (token, _)) in apps.iter().enumerate() {
        for k in 0..options.streams_per_app {
            let index = app * options.streams_per_app + k;
            streams.push(tokio::spawn(follow(
                http.clone(),
                format!("{}/api/stream", herald.base),
                token.clone(),
                index,
                readings.clone(),
                ended.clone(),
            )));
        }
    }
    wait_for_readings(&readings, first, options.streams(), &ended).await;
    let backlog_s = opened.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(options.settle)).await;
    let open = measure(&herald, options.idle).await;

    let (mut first_ms, mut last_ms, mut scan_ms) = (Vec::new(), Vec::new(), Vec::new());
    for k in 1..=options.commits {
        repo.set_head(k);
        let asked = unix_ms();
        herald.scan_now(&apps[0].0, &apps[0].1).await;
        let commit = &repo.commits[k];
        let times = wait_for_readings(&readings, commit, options.streams(), &ended).await;
        let earliest = times.iter().copied().fold(f64::MAX, f64::min);
        let latest = times.iter().copied().fold(f64::MIN, f64::max);
        let written = herald.advanced_at(commit).unwrap_or(asked);
        first_ms.push((earliest - written).max(0.0));
        last_ms.push((latest - written).max(0.0));
        scan_ms.push(latest - asked);
    }
    let dropped = ended.load(Ordering::SeqCst);
    for stream in streams {
        stream.abort();
    }
    herald.stop().await;

    let streams_n = options.streams();
    println!(
        "{streams_n} streams opened and read their backlog in {backlog_s:.1} s; \
         {dropped} ended early\n"
    );
    println!("| figure | {streams_n} streams | no stream (floor) | difference |");
    println!("|---|---|---|---|");
    println!(
        "| Herald's RSS at rest | {:.0} MiB | {:.0} MiB | {:+.1} MiB ({:.1} KiB a stream) |",
        open.rss_mib,
        floor.rss_mib,
        open.rss_mib - floor.rss_mib,
        (open.rss_mib - floor.rss_mib) * 1024.0 / streams_n as f64,
    );
    println!(
        "| Herald's CPU at rest, over {} s | {:.1} ms/s | {:.1} ms/s | {:+.1} ms/s |",
        options.idle,
        open.cpu_share * 1000.0,
        floor.cpu_share * 1000.0,
        (open.cpu_share - floor.cpu_share) * 1000.0,
    );
    println!(
        "| outbox commit → first stream has the `update`, median of {} | {:.0} ms | — | — |",
        options.commits,
        median(&first_ms)
    );
    println!(
        "| outbox commit → all {streams_n} streams have it, median (max) | {:.0} ms ({:.0}) | — | — |",
        median(&last_ms),
        last_ms.iter().copied().fold(0.0, f64::max)
    );
    println!(
        "| `POST …/scan` → all streams have it, median | {:.0} ms | — | — |",
        median(&scan_ms)
    );
}

/// Waits until the last app's first event for `commit` is written (read
/// from `GET /api/changes`, which consumes nothing without a cursor).
async fn wait_until_written(herald: &Herald, apps: &[(String, String)], commit: &str) {
    let deadline = Instant::now() + Duration::from_secs(600);
    for (token, _) in apps {
        loop {
            let page = herald.get_json("/api/changes?limit=1", token).await;
            if page["data"][0]["body"]["commit_sha"] == commit {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "no event of {commit}: {page}\n{}",
                tail(&herald.logs)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// One stream: records when it first read each commit's event.
async fn follow(
    http: reqwest::Client,
    url: String,
    token: String,
    index: usize,
    readings: Readings,
    ended: Arc<AtomicUsize>,
) {
    let response = http
        .get(url)
        .bearer_auth(token)
        .header("accept", "text/event-stream")
        .send()
        .await;
    let response = match response {
        Ok(response) if response.status().is_success() => response,
        Ok(response) => {
            eprintln!("stream {index} refused: {}", response.status());
            ended.fetch_add(1, Ordering::SeqCst);
            return;
        }
        Err(err) => {
            eprintln!("stream {index} failed: {err}");
            ended.fetch_add(1, Ordering::SeqCst);
            return;
        }
    };
    let mut blocks = SseByteStream::new(response.bytes_stream());
    while let Some(Ok(block)) = blocks.next().await {
        let at = unix_ms();
        let Some(data) = block.data else { continue };
        let Ok(body) = serde_json::from_str::<Value>(&data) else {
            continue;
        };
        if let Some(commit) = body["commit_sha"].as_str() {
            readings
                .lock()
                .expect("readings lock")
                .entry(commit.to_owned())
                .or_default()
                .entry(index)
                .or_insert(at);
        }
    }
    ended.fetch_add(1, Ordering::SeqCst);
}

/// Waits until `streams` streams read `commit`; their times.
async fn wait_for_readings(
    readings: &Readings,
    commit: &str,
    streams: usize,
    ended: &AtomicUsize,
) -> Vec<f64> {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let times: Vec<f64> = readings
            .lock()
            .expect("readings lock")
            .get(commit)
            .map(|m| m.values().copied().collect())
            .unwrap_or_default();
        if times.len() >= streams {
            return times;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {streams} streams read {commit}; {} ended",
            times.len(),
            ended.load(Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Herald's CPU share and RSS (at the end) over `seconds`.
async fn measure(herald: &Herald, seconds: u64) -> Cost {
    let ticks_before = process_ticks(herald.pid);
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let elapsed = started.elapsed().as_secs_f64();
    let ticks = process_ticks(herald.pid) - ticks_before;
    Cost {
        cpu_share: ticks as f64 / clock_ticks_per_second() / elapsed,
        rss_mib: status_field_mib(&process_status(herald.pid), "VmRSS").unwrap_or(0.0),
    }
}
