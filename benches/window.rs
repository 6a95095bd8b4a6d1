//! A window for far receivers: delivery to receivers that take
//! tens of milliseconds a request, with an app's `window` letting several
//! webhooks of one subscription be in flight at once, each figure beside
//! its floor measured in the same run on the same machine.
//!
//! `cargo bench --bench window [-- OPTIONS]`
//!
//! Herald is the release binary (or `HERALD_BENCH_BINARY`) on SQLite under
//! a fresh data directory per scenario, watching generated repositories
//! (`support::generate`, files of about 200 bytes) served by `git daemon`;
//! only the registration and `POST /api/repositories/{id}/scan` start
//! scans. The app's window is set with `PATCH /api/app {"window": N}`; a
//! build that refuses the field (one without windows) runs with one webhook in
//! flight per subscription, and the goals are then not checked. The
//! receiver (`support::Receiver`) answers 204 `--delay-ms` after it read a
//! request; "the last webhook" is the last one answered.
//!
//! Scenarios (`--scenarios`, comma-separated; default all):
//!
//! 1. Initial sync of `--files` files, window `--window`: from the
//!    registration request to the last webhook. Floors: files × delay /
//!    window (computed), and what the same receiver absorbs from the load
//!    client (`support::load`) sending the same tree's bodies `--window` at
//!    a time (measured).
//! 2. `--pushes` 10-file pushes to that repository (its branch moved, then
//!    `POST …/scan`), each from the request to the commit's last webhook;
//!    the median. Floor: one round trip (the delay) plus `git fetch --depth
//!    1` of the commit into a shallow bare mirror and `git diff-tree -r`,
//!    measured after each push as in `benches/history.rs`.
//! 3. A receiver that answers 429 (no `Retry-After`) at once to a request
//!    that arrives while `--throttle-limit` others are in flight, the
//!    others 204 after the delay: initial sync of `--throttle-files` files,
//!    window `--window`. The time to the last webhook, the share of
//!    requests answered 429, and the dead events (`failed_events` of `GET
//!    /api/repositories/{id}`, polled while delivering and at the end).
//!    Floor: the load client at exactly `--throttle-limit` in flight.
//! 4. One app, `--repos` repositories of `--repo-files` files, window
//!    `--repos-window`: webhooks a second from the first webhook to the last
//!    over all the initial syncs, against the load client sending every
//!    body with min(repos, `delivery.max_in_flight_per_app`) × window in
//!    flight; `max_in_flight_per_app` is set explicitly (`--max-in-flight`,
//!    Herald's default 8).
//!
//! Options (defaults in brackets): `--files N` [5000], `--window N` [16],
//! `--pushes N` [20], `--delay-ms N` [50], `--throttle-files N` [1000],
//! `--throttle-limit N` [4], `--repos N` [50], `--repo-files N` [100],
//! `--repos-window N` [8], `--max-in-flight N` [8], `--scenarios LIST`,
//! `--env KEY=VALUE` (more environment for Herald; repeatable). Without
//! `--bench` (as `cargo test --benches` runs it) the sizes shrink to a smoke
//! run.
//!
//! Goals, checked on the workload they were set for (the
//! defaults) when the window was taken: scenario 1 ≤ 1.2× the computed
//! floor; scenario 2 ≤ 1.3× its floor; scenario 3 at most 25% of the
//! requests answered 429. No event may die, whatever the workload. The
//! table says "met" or "missed"; the bench exits non-zero when a checked
//! goal is missed. Results are printed as Markdown; see BENCHMARKS.md.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::json;
use support::load::{Load, Sent};
use support::*;

/// Events of each pushed commit (modify 4, add 3, delete 3).
const EVENTS_PER_PUSH: usize = 10;

#[derive(Debug, Clone)]
struct Options {
    files: usize,
    window: usize,
    pushes: usize,
    delay_ms: u64,
    throttle_files: usize,
    throttle_limit: usize,
    repos: usize,
    repo_files: usize,
    repos_window: usize,
    max_in_flight: usize,
    scenarios: Vec<usize>,
    env: Vec<(String, String)>,
}

fn parse_options() -> Options {
    let mut args = BenchArgs::from_env();
    let full = args.full;
    let mut options = Options {
        files: if full { 5_000 } else { 200 },
        window: 16,
        pushes: if full { 20 } else { 3 },
        delay_ms: if full { 50 } else { 20 },
        throttle_files: if full { 1_000 } else { 60 },
        throttle_limit: 4,
        repos: if full { 50 } else { 4 },
        repo_files: if full { 100 } else { 20 },
        repos_window: 8,
        // Herald's default (`delivery.max_in_flight_per_app`).
        max_in_flight: 8,
        scenarios: vec![1, 2, 3, 4],
        env: Vec::new(),
    };
    while let Some(arg) = args.next_option() {
        match arg.as_str() {
            "--files" => options.files = args.number(&arg),
            "--window" => options.window = args.number(&arg),
            "--pushes" => options.pushes = args.number(&arg),
            "--delay-ms" => options.delay_ms = args.number(&arg) as u64,
            "--throttle-files" => options.throttle_files = args.number(&arg),
            "--throttle-limit" => options.throttle_limit = args.number(&arg),
            "--repos" => options.repos = args.number(&arg),
            "--repo-files" => options.repo_files = args.number(&arg),
            "--repos-window" => options.repos_window = args.number(&arg),
            "--max-in-flight" => options.max_in_flight = args.number(&arg),
            "--scenarios" => options.scenarios = args.numbers(&arg),
            "--env" => options.env.push(args.pair(&arg)),
            other => panic!("unknown option {other:?} (see benches/window.rs)"),
        }
    }
    for scenario in &options.scenarios {
        assert!(
            (1..=4).contains(scenario),
            "unknown scenario {scenario}: 1, 2, 3 or 4"
        );
    }
    assert!(
        options.window >= 1 && options.repos_window >= 1 && options.throttle_limit >= 1,
        "windows and limits are at least 1"
    );
    assert!(options.repos >= 1 && options.max_in_flight >= 1);
    assert!(
        options.pushes >= 1 || !options.scenarios.contains(&2),
        "scenario 2 needs --pushes 1 or more"
    );
    options
}

impl Options {
    fn has(&self, scenario: usize) -> bool {
        self.scenarios.contains(&scenario)
    }

    fn delay(&self) -> Duration {
        Duration::from_millis(self.delay_ms)
    }

    /// The far receiver: 204 after `--delay-ms`.
    fn receiver(&self) -> ReceiverConfig {
        ReceiverConfig {
            delay: self.delay(),
            keep_bodies: false,
        }
    }

    /// Issue 41 set its goals for a 50 ms receiver and window 16.
    fn far_reference(&self) -> bool {
        self.delay_ms == 50 && self.window == 16
    }

    /// Herald's environment: scans only when registered or asked for, the
    /// app's lanes as `--max-in-flight` says, no rate limit in the way of
    /// registering many repositories, and `--env`.
    fn herald_env(&self) -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> = [
            ("HERALD__SCHEDULER__RESCAN_INTERVAL", "1h".to_owned()),
            (
                "HERALD__DELIVERY__MAX_IN_FLIGHT_PER_APP",
                self.max_in_flight.to_string(),
            ),
            (
                "HERALD__RATE_LIMIT__PER_IP_PER_MINUTE",
                "1000000".to_owned(),
            ),
            (
                "HERALD__RATE_LIMIT__PER_APP_PER_MINUTE",
                "1000000".to_owned(),
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        env.extend(self.env.iter().cloned());
        env
    }

    /// How long `webhooks` may take: three times one at a time, and two
    /// minutes more (a build without the window must still finish).
    fn patience(&self, webhooks: usize) -> Duration {
        Duration::from_secs(120) + self.delay() * 3 * webhooks as u32
    }
}

fn main() {
    let options = parse_options();
    let missed = runtime().block_on(run(&options));
    if !missed.is_empty() {
        eprintln!("goals missed:");
        for goal in &missed {
            eprintln!("- {goal}");
        }
        std::process::exit(1);
    }
}

// ------------------------------------------------------------------ report

/// Whether a row's goal is checked in this run.
enum Check {
    /// On the workload it was set for, the window taken.
    Yes,
    /// Not: why.
    No(String),
}

#[derive(Default)]
struct Report {
    /// Figure, Herald, floor, ratio, goal.
    rows: Vec<[String; 5]>,
    missed: Vec<String>,
    /// Said under the table.
    notes: Vec<String>,
}

impl Report {
    fn row(&mut self, figure: String, herald: String, floor: String, ratio: String) {
        self.rows
            .push([figure, herald, floor, ratio, "—".to_owned()]);
    }

    /// The last row's goal (`goal`, e.g. "≤ 1.2×"): `met`, or not, when
    /// `check` says it counts in this run.
    fn goal(&mut self, goal: &str, met: bool, check: Check) {
        let row = self.rows.last_mut().expect("a row");
        row[4] = match check {
            Check::No(why) => format!("{goal} (not checked: {why})"),
            Check::Yes if met => format!("{goal} — met"),
            Check::Yes => {
                self.missed.push(format!("{}: {goal}", row[0]));
                format!("{goal} — **missed**")
            }
        };
    }

    fn print(&self) {
        println!("\n| figure | Herald | floor (same run) | ratio | goal |\n|---|---|---|---|---|");
        for row in &self.rows {
            println!("| {} |", row.join(" | "));
        }
        for note in &self.notes {
            println!("\n{note}");
        }
    }
}

/// A goal set for another workload, or a run whose window was not taken.
fn check(windowed: bool, reference: bool, set_for: &str) -> Check {
    if !windowed {
        Check::No("the server took no window".to_owned())
    } else if !reference {
        Check::No(format!("set for {set_for}"))
    } else {
        Check::Yes
    }
}

// ------------------------------------------------------------------ the run

async fn run(options: &Options) -> Vec<String> {
    let root = tempfile::tempdir().expect("a temp dir");
    let served = root.path().join("served");
    std::fs::create_dir_all(&served).expect("the served directory");
    println!(
        "# A window for far receivers\n\n{} CPUs, load {}; herald `{}`; the receiver answers \
         after {} ms; `delivery.max_in_flight_per_app` = {}\n",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        load_average(),
        herald_binary().display(),
        options.delay_ms,
        options.max_in_flight,
    );
    let started = Instant::now();
    let far = (options.has(1) || options.has(2))
        .then(|| generate(&served, "far", options.files, options.pushes));
    let throttled = options
        .has(3)
        .then(|| generate(&served, "throttled", options.throttle_files, 0));
    let many: Vec<GeneratedRepo> = if options.has(4) {
        (0..options.repos)
            .map(|r| generate(&served, &format!("many{r:03}"), options.repo_files, 0))
            .collect()
    } else {
        Vec::new()
    };
    eprintln!(
        "repositories generated in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let daemon = GitDaemon::serve(&served);
    let mut report = Report::default();
    if let Some(repo) = &far {
        far_receiver(options, root.path(), &daemon, repo, &mut report).await;
    }
    if let Some(repo) = &throttled {
        throttling_receiver(options, &daemon, repo, &mut report).await;
    }
    if !many.is_empty() {
        many_subscriptions(options, &daemon, &many, &mut report).await;
    }
    report.print();
    println!("\nLoad average at the end: {}.", load_average());
    report.missed
}

/// A Herald of its own and its one app, whose webhooks go to `base_url`.
struct Watched {
    herald: Herald,
    token: String,
    app_id: String,
    /// Signs the app's webhooks; the load client signs with it too.
    key: String,
    /// Whether the server took the app's window.
    windowed: bool,
    _dir: tempfile::TempDir,
    _database: BenchDatabase,
}

impl Watched {
    async fn start(options: &Options, base_url: &str, window: usize) -> Watched {
        let dir = tempfile::tempdir().expect("a temp dir");
        let database = BenchDatabase::create(Backend::Sqlite).await;
        let env = options.herald_env();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let herald = Herald::start(dir.path(), &database, &env).await;
        let (app_id, token, key) = herald.onboard_app("window", base_url).await;
        let windowed = set_window(&herald, &token, window).await;
        Watched {
            herald,
            token,
            app_id,
            key,
            windowed,
            _dir: dir,
            _database: database,
        }
    }

    /// `(pending_events, failed_events)` of a repository, from the API.
    async fn events(&self, repository: &str) -> (u64, u64) {
        let view = self
            .herald
            .get_json(&format!("/api/repositories/{repository}"), &self.token)
            .await;
        let count = |field: &str| {
            view[field]
                .as_u64()
                .unwrap_or_else(|| panic!("the repository has no {field}: {view}"))
        };
        (count("pending_events"), count("failed_events"))
    }
}

/// Sets the app's window; false, with a warning, when this build of Herald
/// does not take one (it refuses a field it does not know with a 4xx).
async fn set_window(herald: &Herald, token: &str, window: usize) -> bool {
    let (status, body) = herald.patch_app(token, json!({ "window": window })).await;
    if status.is_success() {
        if body["window"].as_u64() != Some(window as u64) {
            eprintln!("warning: PATCH /api/app took the window but answered {body}");
        }
        return true;
    }
    assert!(
        status.is_client_error(),
        "PATCH /api/app answered {status}: {body}"
    );
    eprintln!(
        "warning: PATCH /api/app {{\"window\": {window}}} answered {status} ({body}): this \
         build has no window; the run goes on with one webhook in flight per subscription, \
         and its goals are not checked"
    );
    false
}

/// When the last of `arrivals` was answered (Unix ms): the receiver answers
/// each `delay` after reading it.
fn last_answer(arrivals: &[Arrival], delay: Duration) -> f64 {
    arrivals.iter().map(|a| a.at).fold(f64::MIN, f64::max) + delay.as_secs_f64() * 1000.0
}

/// What the receiver absorbs from the load client keeping `in_flight`
/// requests in flight: every file of each repository's first commit as a
/// `create` webhook signed as the app's, to hook 1 (Herald's go to 0). The
/// receiver's log and counts start over after it.
async fn floor(
    repos: &[&GeneratedRepo],
    app: &Watched,
    receiver: &Receiver,
    in_flight: usize,
) -> Sent {
    let mut load = Load {
        url: String::new(),
        requests: Vec::new(),
    };
    for repo in repos {
        let one = Load::of_commit(
            &repo.bare,
            &repo.commits[0],
            &receiver.hook_url(1),
            &app.app_id,
            &app.key,
        );
        load.url = one.url;
        load.requests.extend(one.requests);
    }
    receiver.in_flight.reset();
    let sent = load.send(in_flight).await;
    receiver.take();
    assert!(
        sent.all_ok(),
        "the load client's answers: {:?}",
        sent.statuses
    );
    sent
}

// ------------------------------------------------------- scenarios 1 and 2

/// The 50 ms receiver: the initial sync (scenario 1) and then the pushes
/// (scenario 2), one Herald.
async fn far_receiver(
    options: &Options,
    root: &Path,
    daemon: &GitDaemon,
    repo: &GeneratedRepo,
    report: &mut Report,
) {
    let delay = options.delay();
    let receiver = Receiver::start_with(options.receiver());
    let app = Watched::start(options, &receiver.hook_url(0), options.window).await;
    receiver.in_flight.reset();
    let started = unix_ms();
    let repository = app.herald.register(&app.token, &daemon.url(repo)).await;
    wait_for(
        &receiver,
        &app.herald,
        options.files,
        options.patience(options.files),
    )
    .await;
    let arrivals = receiver.take();
    let seconds = (last_answer(&arrivals, delay) - started) / 1000.0;
    let peak = receiver.in_flight.peak();
    eprintln!(
        "initial sync of {} files: {seconds:.2} s, at most {peak} in flight",
        options.files
    );
    if options.has(1) {
        let sent = floor(&[repo], &app, &receiver, options.window).await;
        let computed = options.files as f64 * delay.as_secs_f64() / options.window as f64;
        report.row(
            format!(
                "initial sync of {} files, window {}, registration → last webhook",
                options.files, options.window
            ),
            format!(
                "{seconds:.2} s ({:.0}/s), at most {peak} in flight",
                options.files as f64 / seconds
            ),
            format!(
                "{} × {} ms / {} = {computed:.2} s; load client, {} in flight: {:.2} s",
                options.files, options.delay_ms, options.window, options.window, sent.seconds
            ),
            format!(
                "**{:.2}×** computed; {:.2}× measured",
                seconds / computed,
                seconds / sent.seconds
            ),
        );
        report.goal(
            "≤ 1.2× computed",
            seconds <= 1.2 * computed,
            check(
                app.windowed,
                options.far_reference() && options.files == 5_000,
                "5,000 files, window 16, 50 ms",
            ),
        );
    }
    if options.has(2) {
        let (herald_ms, floor_ms) =
            pushes(options, root, daemon, repo, &app, &repository, &receiver).await;
        let floor = options.delay_ms as f64 + median(&floor_ms);
        let ratio = median(&herald_ms) / floor;
        report.row(
            format!(
                "{EVENTS_PER_PUSH}-file push + `POST …/scan` → last webhook, median of {}",
                herald_ms.len()
            ),
            format!(
                "{:.0} ms (p90 {:.0})",
                median(&herald_ms),
                percentile(&herald_ms, 90.0)
            ),
            format!(
                "round trip {} ms + fetch + diff-tree {:.0} ms = {floor:.0} ms",
                options.delay_ms,
                median(&floor_ms)
            ),
            format!("**{ratio:.2}×**"),
        );
        report.goal(
            "≤ 1.3×",
            ratio <= 1.3,
            check(app.windowed, options.far_reference(), "window 16, 50 ms"),
        );
    }
    app.herald.stop().await;
}

/// Pushes the next commits one by one, each followed by a scan request:
/// Herald's time to the commit's last webhook and the floor's fetch and
/// diff, in ms.
async fn pushes(
    options: &Options,
    root: &Path,
    daemon: &GitDaemon,
    repo: &GeneratedRepo,
    app: &Watched,
    repository: &str,
    receiver: &Receiver,
) -> (Vec<f64>, Vec<f64>) {
    let url = daemon.url(repo);
    let mirror = root.join("floor-mirror.git");
    timed(
        git(root)
            .args(["clone", "-q", "--bare", "--depth", "1", url.as_str()])
            .arg(&mirror),
    );
    let (mut herald_ms, mut floor_ms) = (Vec::new(), Vec::new());
    for k in 1..=options.pushes {
        repo.set_head(k);
        let started = unix_ms();
        app.herald.scan_now(&app.token, repository).await;
        wait_for(
            receiver,
            &app.herald,
            EVENTS_PER_PUSH,
            options.patience(EVENTS_PER_PUSH),
        )
        .await;
        let waited = last_answer(&receiver.take(), options.delay()) - started;
        let floor = Instant::now();
        timed(git(&mirror).args([
            "fetch",
            "-q",
            "--depth",
            "1",
            url.as_str(),
            format!("+refs/heads/{BRANCH}:refs/heads/{BRANCH}").as_str(),
        ]));
        timed(git(&mirror).args([
            "diff-tree",
            "-r",
            repo.commits[k - 1].as_str(),
            repo.commits[k].as_str(),
        ]));
        let floor = floor.elapsed().as_secs_f64() * 1000.0;
        eprintln!("push {k}: {waited:.0} ms (fetch + diff-tree {floor:.0} ms)");
        herald_ms.push(waited);
        floor_ms.push(floor);
    }
    std::fs::remove_dir_all(&mirror).ok();
    (herald_ms, floor_ms)
}

// --------------------------------------------------------------- scenario 3

/// The receiver that throttles above `--throttle-limit` in flight.
async fn throttling_receiver(
    options: &Options,
    daemon: &GitDaemon,
    repo: &GeneratedRepo,
    report: &mut Report,
) {
    let delay = options.delay();
    let limit = options.throttle_limit;
    let files = options.throttle_files;
    let receiver = Receiver::start_throttled(options.receiver(), limit);
    let app = Watched::start(options, &receiver.hook_url(0), options.window).await;
    receiver.in_flight.reset();
    let started = unix_ms();
    let repository = app.herald.register(&app.token, &daemon.url(repo)).await;
    // Dead events are looked for while delivering too: one retried later
    // and delivered would be gone by the end.
    let patience = options.patience(files);
    let deadline = Instant::now() + patience;
    let mut most_dead = 0;
    let mut next_look = Instant::now();
    while receiver.count() < files {
        assert!(
            Instant::now() < deadline,
            "gave up after {patience:?}: {} of {files} webhooks arrived; herald's last lines:\n{}",
            receiver.count(),
            tail(&app.herald.logs)
        );
        if Instant::now() >= next_look {
            most_dead = most_dead.max(app.events(&repository).await.1);
            next_look += Duration::from_millis(500);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let arrivals = receiver.take();
    let seconds = (last_answer(&arrivals, delay) - started) / 1000.0;
    let refused = receiver.in_flight.refused();
    let peak = receiver.in_flight.peak();
    let share = refused as f64 / (refused + arrivals.len()) as f64;
    // The last deliveries are recorded after their answers.
    let settled = Instant::now() + Duration::from_secs(10);
    let (mut pending, mut dead) = app.events(&repository).await;
    while pending > 0 && Instant::now() < settled {
        tokio::time::sleep(Duration::from_millis(50)).await;
        (pending, dead) = app.events(&repository).await;
    }
    most_dead = most_dead.max(dead);
    eprintln!(
        "throttled sync of {files} files: {seconds:.2} s, {refused} answered 429, at most \
         {peak} in flight; {dead} dead, {pending} pending at the end"
    );

    let sent = floor(&[repo], &app, &receiver, limit).await;
    let reference = options.far_reference() && limit == 4 && files == 1_000;
    report.row(
        format!(
            "429 above {limit} in flight, {files} files, window {}: registration → last webhook",
            options.window
        ),
        format!("{seconds:.2} s, at most {peak} in flight"),
        format!("load client, {limit} in flight: {:.2} s", sent.seconds),
        format!("{:.2}×", seconds / sent.seconds),
    );
    report.row(
        "— requests answered 429".to_owned(),
        format!(
            "{:.1}% ({refused} of {})",
            share * 100.0,
            refused + arrivals.len()
        ),
        "—".to_owned(),
        "—".to_owned(),
    );
    report.goal(
        "≤ 25%",
        share <= 0.25,
        check(
            app.windowed,
            reference,
            "1,000 files, window 16, 50 ms, 4 in flight",
        ),
    );
    report.row(
        "— dead events: the most seen while delivering; at the end".to_owned(),
        format!("{most_dead}; {dead} ({pending} pending)"),
        "—".to_owned(),
        "—".to_owned(),
    );
    report.goal("none", most_dead == 0 && pending == 0, Check::Yes);
    app.herald.stop().await;
}

// --------------------------------------------------------------- scenario 4

/// One app, many subscriptions, against the 50 ms receiver.
async fn many_subscriptions(
    options: &Options,
    daemon: &GitDaemon,
    repos: &[GeneratedRepo],
    report: &mut Report,
) {
    let delay = options.delay();
    let receiver = Receiver::start_with(options.receiver());
    let app = Watched::start(options, &receiver.hook_url(0), options.repos_window).await;
    let total = repos.len() * options.repo_files;
    receiver.in_flight.reset();
    let started = unix_ms();
    let urls: Vec<String> = repos.iter().map(|repo| daemon.url(repo)).collect();
    futures::stream::iter(urls)
        .map(|url| {
            let app = &app;
            async move { app.herald.register(&app.token, &url).await }
        })
        .buffer_unordered(8)
        .collect::<Vec<_>>()
        .await;
    wait_for(&receiver, &app.herald, total, options.patience(total)).await;
    let arrivals = receiver.take();
    let first = arrivals.iter().map(|a| a.at).fold(f64::MAX, f64::min);
    let last = last_answer(&arrivals, delay);
    let rate = total as f64 / ((last - first) / 1000.0);
    let peak = receiver.in_flight.peak();
    eprintln!(
        "{} subscriptions: {total} webhooks at {rate:.0}/s, at most {peak} in flight",
        repos.len()
    );

    let lanes = repos.len().min(options.max_in_flight);
    let concurrency = lanes * options.repos_window;
    let sent = floor(
        &repos.iter().collect::<Vec<_>>(),
        &app,
        &receiver,
        concurrency,
    )
    .await;
    report.row(
        format!(
            "one app, {} subscriptions × {} files, window {}: webhooks/s, first → last webhook",
            repos.len(),
            options.repo_files,
            options.repos_window
        ),
        format!("{rate:.0}/s, at most {peak} in flight"),
        format!(
            "load client, {lanes} lanes × {} = {concurrency} in flight: {:.0}/s",
            options.repos_window, sent.rate
        ),
        format!("**{:.2}**", rate / sent.rate),
    );
    report.row(
        "— registration → last webhook".to_owned(),
        format!("{:.2} s", (last - started) / 1000.0),
        "—".to_owned(),
        "—".to_owned(),
    );
    if !app.windowed {
        report.notes.push(
            "The server took no window: its figures are one webhook in flight per subscription."
                .to_owned(),
        );
    }
    app.herald.stop().await;
}
