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

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use actors::crypto::Keyring;
use actors::git::Mirror;
use actors::ids::AppId;
use actors::payload::{self, Chunking, RepositoryRef};
use actors::signing;
use actors::store::Store;
use actors::store::delivery::{Attempt, EventOutcome};
use actors::webhook_client::WebhookClient;
use entity::event;
use reqwest::header::{HeaderMap, HeaderValue};
use sea_orm::{
    ColumnTrait, ConnectionTrait, Database, EntityTrait, QueryFilter, QueryOrder, Statement,
};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use warp::Filter;

const BRANCH: &str = "main";
const ADMIN_TOKEN: &str = "bench-admin-token-0123456789abcdef";
/// Files per leaf directory of a generated tree.
const FILES_PER_DIR: usize = 100;
/// Events per measured commit of scenario 3 (modify 4, add 3, delete 3).
const EVENTS_PER_COMMIT: usize = 10;

// ---------------------------------------------------------------- options

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    fn name(self) -> &'static str {
        match self {
            Backend::Sqlite => "SQLite",
            Backend::Postgres => "PostgreSQL",
        }
    }
}

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
    let args: Vec<String> = std::env::args().skip(1).collect();
    let full = args.iter().any(|a| a == "--bench");
    let mut options = if full {
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
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = |name: &str| -> String {
            it.next()
                .unwrap_or_else(|| panic!("{name} needs a value"))
                .clone()
        };
        let number = |name: &str, raw: String| -> usize {
            raw.replace('_', "")
                .parse()
                .unwrap_or_else(|_| panic!("{name} takes a number, not {raw:?}"))
        };
        match arg.as_str() {
            "--bench" => {}
            "--files" => options.files = number("--files", value("--files")),
            "--apps" => options.apps = number("--apps", value("--apps")),
            "--repos" => options.repos = number("--repos", value("--repos")),
            "--repo-files" => options.repo_files = number("--repo-files", value("--repo-files")),
            "--commits" => options.commits = number("--commits", value("--commits")),
            "--latency-files" => {
                options.latency_files = number("--latency-files", value("--latency-files"));
            }
            "--replay" => options.replay = number("--replay", value("--replay")),
            "--scenarios" => {
                options.scenarios = value("--scenarios")
                    .split(',')
                    .map(|n| number("--scenarios", n.to_owned()))
                    .collect();
            }
            "--db" => {
                options.db = match value("--db").as_str() {
                    "sqlite" => Some(Backend::Sqlite),
                    "postgres" => Some(Backend::Postgres),
                    "all" => None,
                    other => panic!("--db is sqlite, postgres or all, not {other:?}"),
                }
            }
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
    let backends = match options.db {
        Some(backend) => vec![backend],
        None if std::env::var("TEST_DATABASE_URL").is_ok() => {
            vec![Backend::Sqlite, Backend::Postgres]
        }
        None => {
            println!("(TEST_DATABASE_URL is not set: SQLite only)\n");
            vec![Backend::Sqlite]
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("bench")
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(run(&options, &backends));
}

// ------------------------------------------------------------ statistics

fn unix_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_secs_f64()
        * 1000.0
}

fn sorted(values: &[f64]) -> Vec<f64> {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted
}

/// Nearest-rank percentile (`p` in 0..=100).
fn percentile(values: &[f64], p: f64) -> f64 {
    let sorted = sorted(values);
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn median(values: &[f64]) -> f64 {
    percentile(values, 50.0)
}

fn mean(values: &[f64]) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.iter().sum::<f64>() / values.len() as f64
}

fn met(ok: bool) -> &'static str {
    if ok { "met" } else { "**missed**" }
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

fn clock_ticks_per_second() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// `(comm, utime, stime)` of a `/proc/…/stat` file.
fn stat_ticks(path: &Path) -> Option<(String, u64, u64)> {
    let stat = std::fs::read_to_string(path).ok()?;
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat[open + 1..close].to_owned();
    let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((comm, utime, stime))
}

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

/// CPU ticks of the PostgreSQL backends serving `database`, keyed by pid.
fn postgres_ticks(database: &str) -> HashMap<u64, u64> {
    let mut backends = HashMap::new();
    let Ok(processes) = std::fs::read_dir("/proc") else {
        return backends;
    };
    for process in processes.filter_map(Result::ok) {
        let Some(pid) = process.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(process.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline);
        if cmdline.starts_with("postgres: ")
            && cmdline.contains(&format!(" {database} "))
            && let Some((_, user, system)) = stat_ticks(&process.path().join("stat"))
        {
            backends.insert(pid, user + system);
        }
    }
    backends
}

/// `(busy, iowait, total)` ticks of the whole machine, from `/proc/stat`.
fn machine_ticks() -> (u64, u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let values: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    let total: u64 = values.iter().take(8).sum();
    let idle = values.get(3).copied().unwrap_or(0);
    let iowait = values.get(4).copied().unwrap_or(0);
    (total - idle - iowait, iowait, total)
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

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

// -------------------------------------------------------- generated repos

/// A bare repository generated with `git fast-import`: one initial commit of
/// `files` text files, then `commits` successive 10-file commits (modify 4,
/// add 3, delete 3). Its branch is left at the initial commit.
struct GeneratedRepo {
    name: String,
    bare: PathBuf,
    /// The initial commit, then one per 10-file commit.
    commits: Vec<String>,
}

fn git(dir: &Path) -> Command {
    let mut command = Command::new("git");
    command
        .current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .stdin(Stdio::null());
    command
}

fn git_ok(dir: &Path, args: &[&str]) -> String {
    let output = git(dir).args(args).output().expect("git runs");
    assert!(
        output.status.success(),
        "git {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("git prints UTF-8")
}

fn path_of(i: usize) -> String {
    let dir = i / FILES_PER_DIR;
    format!("p{:02}/d{:02}/f{i:06}.txt", dir / 100, dir % 100)
}

/// About 200 bytes of text: the content of file `i` at `version`.
fn content_of(repo: &str, i: usize, version: usize) -> Vec<u8> {
    let mut text = format!("file {i} of {repo}, delivery benchmark\n");
    for line in 0..4 {
        text.push_str(&format!(
            "line {line}: lorem ipsum dolor sit amet {}\n",
            i * 31 + line
        ));
    }
    if version > 0 {
        text.push_str(&format!("edited in commit {version}\n"));
    }
    text.into_bytes()
}

fn inline(stream: &mut impl Write, path: &str, content: &[u8]) {
    writeln!(stream, "M 100644 inline {path}").expect("fast-import input");
    writeln!(stream, "data {}", content.len()).expect("fast-import input");
    stream.write_all(content).expect("fast-import input");
    stream.write_all(b"\n").expect("fast-import input");
}

fn commit_header(stream: &mut impl Write, mark: usize, message: &str) {
    writeln!(stream, "commit refs/heads/{BRANCH}").expect("fast-import input");
    writeln!(stream, "mark :{mark}").expect("fast-import input");
    writeln!(
        stream,
        "committer Bench <bench@example.com> {} +0000",
        1_700_000_000 + mark
    )
    .expect("fast-import input");
    writeln!(stream, "data {}\n{message}", message.len()).expect("fast-import input");
}

fn generate(root: &Path, name: &str, files: usize, commits: usize) -> GeneratedRepo {
    assert!(
        files / 4 + 4 * commits < files / 2 && files / 2 + 3 * commits <= files,
        "too many commits for {files} files"
    );
    let bare = root.join(format!("{name}.git"));
    git_ok(
        root,
        &[
            "init",
            "--quiet",
            "--bare",
            "--initial-branch",
            BRANCH,
            &bare.display().to_string(),
        ],
    );
    let marks = root.join(format!("{name}.marks"));
    let mut child = git(&bare)
        .args([
            "fast-import",
            "--quiet",
            &format!("--export-marks={}", marks.display()),
        ])
        .stdin(Stdio::piped())
        .spawn()
        .expect("git fast-import starts");
    {
        let stdin = child.stdin.take().expect("piped stdin");
        let mut stream = std::io::BufWriter::with_capacity(1 << 20, stdin);
        commit_header(&mut stream, 1, "initial tree");
        for i in 0..files {
            inline(&mut stream, &path_of(i), &content_of(name, i, 0));
        }
        for k in 1..=commits {
            commit_header(&mut stream, k + 1, &format!("ten-file change {k}"));
            for j in 0..4 {
                let i = files / 4 + 4 * (k - 1) + j;
                inline(&mut stream, &path_of(i), &content_of(name, i, k));
            }
            for j in 0..3 {
                let path = format!("p00/d00/new{k:04}_{j}.txt");
                inline(
                    &mut stream,
                    &path,
                    format!("added in commit {k}\n").as_bytes(),
                );
            }
            for j in 0..3 {
                writeln!(stream, "D {}", path_of(files / 2 + 3 * (k - 1) + j))
                    .expect("fast-import input");
            }
        }
        stream.flush().expect("fast-import input");
    }
    let status = child.wait().expect("git fast-import runs");
    assert!(status.success(), "git fast-import failed");
    let marks: HashMap<usize, String> = std::fs::read_to_string(&marks)
        .expect("fast-import marks")
        .lines()
        .filter_map(|l| {
            let (mark, sha) = l.split_once(' ')?;
            Some((mark.trim_start_matches(':').parse().ok()?, sha.to_owned()))
        })
        .collect();
    let commits: Vec<String> = (1..=commits + 1)
        .map(|m| marks.get(&m).expect("every commit has a mark").clone())
        .collect();
    let repo = GeneratedRepo {
        name: name.to_owned(),
        bare,
        commits,
    };
    repo.set_head(0);
    repo
}

impl GeneratedRepo {
    /// Points the remote's branch at commit `k` (a push, as far as Herald and
    /// `git daemon` can tell).
    fn set_head(&self, k: usize) {
        git_ok(
            &self.bare,
            &[
                "update-ref",
                &format!("refs/heads/{BRANCH}"),
                &self.commits[k],
            ],
        );
    }
}

/// `git daemon` serving the bare repositories under a directory over
/// `git://127.0.0.1:PORT/`. Killed on drop.
struct GitDaemon {
    child: std::process::Child,
    port: u16,
}

impl GitDaemon {
    fn serve(root: &Path) -> GitDaemon {
        let exec_path = git_ok(root, &["--exec-path"]);
        for _ in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map(|a| a.port())
                .expect("a free port");
            let mut child = Command::new(Path::new(exec_path.trim()).join("git-daemon"))
                .current_dir(root)
                .env("GIT_CONFIG_NOSYSTEM", "1")
                .env("GIT_CONFIG_GLOBAL", "/dev/null")
                .args([
                    "--reuseaddr",
                    "--export-all",
                    &format!("--base-path={}", root.display()),
                    "--listen=127.0.0.1",
                    &format!("--port={port}"),
                    &root.display().to_string(),
                ])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("git daemon starts (is git-daemon installed?)");
            let deadline = Instant::now() + Duration::from_secs(5);
            let address = std::net::SocketAddr::from(([127, 0, 0, 1], port));
            loop {
                if child.try_wait().ok().flatten().is_some() {
                    break;
                }
                if std::net::TcpStream::connect_timeout(&address, Duration::from_millis(200))
                    .is_ok()
                {
                    return GitDaemon { child, port };
                }
                if Instant::now() > deadline {
                    child.kill().ok();
                    child.wait().ok();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        panic!("git daemon did not start");
    }

    fn url(&self, repo: &GeneratedRepo) -> String {
        format!("git://127.0.0.1:{}/{}.git", self.port, repo.name)
    }
}

impl Drop for GitDaemon {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

// --------------------------------------------------------------- receiver

/// One webhook as the receiver saw it.
#[derive(Debug, Clone)]
struct Arrival {
    /// The app's number, from the path `/hooks/{n}/{endpoint}`.
    hook: usize,
    webhook_id: String,
    /// Unix ms, when the request was read.
    at: f64,
}

/// An HTTP server on loopback, on a runtime of its own (threads named
/// `receiver`, so that their CPU can be told apart), that answers every
/// webhook 204 at once and records its arrival.
struct Receiver {
    base_url: String,
    arrivals: Arc<Mutex<Vec<Arrival>>>,
    count: Arc<AtomicUsize>,
    runtime: Option<tokio::runtime::Runtime>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Receiver {
    fn start() -> Receiver {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("receiver")
            .enable_all()
            .build()
            .expect("a runtime for the receiver");
        let arrivals = Arc::new(Mutex::new(Vec::with_capacity(1 << 17)));
        let count = Arc::new(AtomicUsize::new(0));
        let (log, counter) = (arrivals.clone(), count.clone());
        let route = warp::post()
            .and(warp::path::tail())
            .and(warp::header::headers_cloned())
            .and(warp::body::bytes())
            .map(
                move |tail: warp::path::Tail, headers: warp::http::HeaderMap, _: bytes::Bytes| {
                    let at = unix_ms();
                    // `hooks/{n}/{endpoint}`
                    let hook = tail
                        .as_str()
                        .split('/')
                        .nth(1)
                        .and_then(|n| n.parse().ok())
                        .unwrap_or(usize::MAX);
                    let webhook_id = headers
                        .get("webhook-id")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_owned();
                    log.lock().expect("arrivals lock").push(Arrival {
                        hook,
                        webhook_id,
                        at,
                    });
                    counter.fetch_add(1, Ordering::Release);
                    warp::reply::with_status(warp::reply(), warp::http::StatusCode::NO_CONTENT)
                },
            );
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a port for the receiver");
        listener
            .set_nonblocking(true)
            .expect("a non-blocking listener");
        let addr = listener.local_addr().expect("the receiver's address");
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        runtime.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("a tokio listener");
            warp::serve(route)
                .incoming(listener)
                .graceful(async move {
                    let _ = rx.await;
                })
                .run()
                .await;
        });
        Receiver {
            base_url: format!("http://{addr}/hooks"),
            arrivals,
            count,
            runtime: Some(runtime),
            shutdown: Some(tx),
        }
    }

    fn hook_url(&self, app: usize) -> String {
        format!("{}/{app}", self.base_url)
    }

    fn count(&self) -> usize {
        self.count.load(Ordering::Acquire)
    }

    /// Everything received so far; the log starts over.
    fn take(&self) -> Vec<Arrival> {
        let mut log = self.arrivals.lock().expect("arrivals lock");
        self.count.store(0, Ordering::Release);
        std::mem::take(&mut *log)
    }

    fn snapshot(&self) -> Vec<Arrival> {
        self.arrivals.lock().expect("arrivals lock").clone()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

// -------------------------------------------------------------- databases

/// A database of its own for one server: SQLite (the server's default file in
/// its data directory), or a PostgreSQL database created now and dropped with
/// this value.
struct BenchDatabase {
    /// For the server; `None`: its default SQLite file.
    server_url: Option<String>,
    postgres: Option<(String, String)>,
}

fn with_database(server: &str, name: &str) -> String {
    let mut url = url::Url::parse(server).expect("TEST_DATABASE_URL is a URL");
    url.set_path(&format!("/{name}"));
    url.to_string()
}

impl BenchDatabase {
    async fn create(backend: Backend) -> Self {
        match backend {
            Backend::Sqlite => Self {
                server_url: None,
                postgres: None,
            },
            Backend::Postgres => {
                let server = std::env::var("TEST_DATABASE_URL")
                    .expect("--db postgres needs TEST_DATABASE_URL");
                let name = format!(
                    "herald_bench_{}",
                    AppId::generate()
                        .as_str()
                        .trim_start_matches("app_")
                        .to_lowercase()
                );
                let admin_url = with_database(&server, "postgres");
                let admin = Database::connect(&admin_url)
                    .await
                    .expect("TEST_DATABASE_URL reaches a PostgreSQL server");
                admin
                    .execute_unprepared(&format!("CREATE DATABASE {name}"))
                    .await
                    .expect("the benchmark database can be created");
                admin.close().await.ok();
                Self {
                    server_url: Some(with_database(&server, &name)),
                    postgres: Some((admin_url, name)),
                }
            }
        }
    }

    fn postgres_name(&self) -> Option<&str> {
        self.postgres.as_ref().map(|(_, name)| name.as_str())
    }

    /// The URL this bench opens the server's database with.
    fn bench_url(&self, data_dir: &Path) -> String {
        self.server_url
            .clone()
            .unwrap_or_else(|| format!("sqlite://{}", data_dir.join("herald.db").display()))
    }
}

impl Drop for BenchDatabase {
    fn drop(&mut self) {
        let Some((admin_url, name)) = self.postgres.take() else {
            return;
        };
        // Drop runs inside the runtime: drop the database from a thread with
        // a runtime of its own.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime for cleanup");
            runtime.block_on(async move {
                if let Ok(admin) = Database::connect(&admin_url).await {
                    admin
                        .execute_unprepared(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .await
                        .ok();
                    admin.close().await.ok();
                }
            });
        })
        .join();
        dropped.ok();
    }
}

async fn connect(url: &str) -> Store {
    let keys = Arc::new(Keyring::from_hex(&Keyring::generate_hex(), &[]).expect("a fresh key"));
    Store::connect(url, keys)
        .await
        .expect("the bench opens the server's database")
}

async fn rows(store: &Store, sql: &str) -> Vec<sea_orm::QueryResult> {
    store
        .db()
        .query_all_raw(Statement::from_string(store.backend(), sql.to_owned()))
        .await
        .unwrap_or_else(|err| panic!("{sql}: {err}"))
}

fn get<T: sea_orm::TryGetable>(row: &sea_orm::QueryResult, column: &str) -> T {
    row.try_get("", column)
        .unwrap_or_else(|err| panic!("column {column}: {err}"))
}

/// `pg_stat_database` counters of the current database.
async fn postgres_counters(store: &Store) -> [i64; 5] {
    let row = rows(
        store,
        "SELECT xact_commit, tup_returned, tup_fetched, tup_inserted, tup_updated \
         FROM pg_stat_database WHERE datname = current_database()",
    )
    .await;
    let row = row.first().expect("a pg_stat_database row");
    [
        get(row, "xact_commit"),
        get(row, "tup_returned"),
        get(row, "tup_fetched"),
        get(row, "tup_inserted"),
        get(row, "tup_updated"),
    ]
}

// ------------------------------------------------------------------ herald

/// The binary, as `cargo bench` built it (`target/release/herald`).
fn herald_binary() -> PathBuf {
    let path = PathBuf::from(env!("CARGO_BIN_EXE_herald"));
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --release` (or `cargo bench`, which builds it)",
        path.display()
    );
    path
}

/// The real server, with a data directory of its own. Killed on drop.
struct Herald {
    child: tokio::process::Child,
    pid: u32,
    base: String,
    data_dir: PathBuf,
    http: reqwest::Client,
    logs: Arc<Mutex<VecDeque<String>>>,
    /// Commit → when the server logged "snapshot advanced" for it (Unix ms,
    /// from the log line's own timestamp): just after the outbox commit.
    advanced: Arc<Mutex<HashMap<String, f64>>>,
}

impl Herald {
    async fn start(dir: &Path, database: &BenchDatabase, extra: &[(&str, &str)]) -> Herald {
        let data_dir = dir.join("data");
        let mut command = tokio::process::Command::new(herald_binary());
        command
            .args(["serve", "--port", "0", "--data-dir"])
            .arg(&data_dir)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for (key, _) in std::env::vars() {
            if key.starts_with("HERALD") || key == "RUST_LOG" {
                command.env_remove(key);
            }
        }
        command
            .env("HERALD__ADMIN__TOKEN", ADMIN_TOKEN)
            .env("HERALD__TELEMETRY__LOG_FORMAT", "json")
            .env("HERALD__SECURITY__ALLOW_PRIVATE_TARGETS", "true")
            .env("HERALD__SECURITY__ALLOW_HTTP_TARGETS", "true")
            .env("HERALD__SCHEDULER__TICK", "100ms")
            .env("HERALD__DELIVERY__TICK", "100ms");
        if let Some(url) = &database.server_url {
            command.env("HERALD__DATABASE__URL", url);
        }
        for (key, value) in extra {
            command.env(key, value);
        }
        let mut child = command.spawn().expect("the herald binary starts");
        let pid = child.id().expect("herald is running");
        let logs = Arc::new(Mutex::new(VecDeque::new()));
        let advanced = Arc::new(Mutex::new(HashMap::new()));
        let (tx, rx) = tokio::sync::oneshot::channel();
        collect(
            child.stdout.take().expect("piped"),
            logs.clone(),
            advanced.clone(),
            None,
        );
        collect(
            child.stderr.take().expect("piped"),
            logs.clone(),
            advanced.clone(),
            Some(tx),
        );
        let Ok(Ok(addr)) = tokio::time::timeout(Duration::from_secs(60), rx).await else {
            panic!(
                "herald did not start (exit: {:?}); output:\n{}",
                child.try_wait().ok().flatten(),
                tail(&logs)
            );
        };
        Herald {
            child,
            pid,
            base: format!("http://{addr}"),
            data_dir,
            http: reqwest::Client::new(),
            logs,
            advanced,
        }
    }

    /// When the server logged that `commit` was committed, if it did.
    fn advanced_at(&self, commit: &str) -> Option<f64> {
        self.advanced
            .lock()
            .expect("advanced lock")
            .get(commit)
            .copied()
    }

    async fn call(&self, path: &str, token: &str, body: Value) -> Value {
        let response = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .expect("herald answers");
        let status = response.status();
        let body: Value = response.json().await.expect("a JSON answer");
        assert!(status.is_success(), "{path} answered {status}: {body}");
        body
    }

    /// Onboards an app whose webhooks go to `base_url`; returns its token.
    async fn onboard(&self, name: &str, base_url: &str) -> String {
        let body = self
            .call(
                "/admin/api/apps/onboard",
                ADMIN_TOKEN,
                json!({"app_name": name, "base_url": base_url, "email": "bench@example.com"}),
            )
            .await;
        body["data"]["token"]
            .as_str()
            .expect("an app token")
            .to_owned()
    }

    /// Registers a repository for the app; returns the repository id.
    async fn register(&self, token: &str, url: &str) -> String {
        let body = self
            .call("/api/repositories", token, json!({"url": url}))
            .await;
        body["repository_id"]
            .as_str()
            .expect("a repository id")
            .to_owned()
    }

    /// SIGTERM, and the exit within 30 s.
    async fn stop(mut self) {
        let sent = Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status()
            .is_ok_and(|s| s.success());
        if !sent
            || tokio::time::timeout(Duration::from_secs(30), self.child.wait())
                .await
                .is_err()
        {
            self.child.kill().await.ok();
        }
    }
}

fn tail(logs: &Mutex<VecDeque<String>>) -> String {
    let logs = logs.lock().expect("log lock");
    logs.iter().cloned().collect::<Vec<_>>().join("\n")
}

/// Reads the server's output, keeps its last lines, reports the address of
/// its "listening" line and records its "snapshot advanced" lines.
fn collect(
    stream: impl tokio::io::AsyncRead + Unpin + Send + 'static,
    logs: Arc<Mutex<VecDeque<String>>>,
    advanced: Arc<Mutex<HashMap<String, f64>>>,
    mut listening: Option<tokio::sync::oneshot::Sender<String>>,
) {
    tokio::spawn(async move {
        let mut lines = BufReader::new(stream).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if let Ok(entry) = serde_json::from_str::<Value>(&line) {
                if entry["message"] == "listening"
                    && let Some(tx) = listening.take()
                {
                    let _ = tx.send(entry["addr"].as_str().unwrap_or_default().to_owned());
                }
                if entry["message"] == "snapshot advanced"
                    && let Some(commit) = entry["commit"].as_str()
                {
                    let at = entry["timestamp"]
                        .as_str()
                        .and_then(|t| {
                            time::OffsetDateTime::parse(
                                t,
                                &time::format_description::well_known::Rfc3339,
                            )
                            .ok()
                        })
                        .map_or_else(unix_ms, |t| t.unix_timestamp_nanos() as f64 / 1e6);
                    advanced
                        .lock()
                        .expect("advanced lock")
                        .insert(commit.to_owned(), at);
                }
            }
            let mut logs = logs.lock().expect("log lock");
            if logs.len() >= 200 {
                logs.pop_front();
            }
            logs.push_back(line);
        }
    });
}

/// Waits until the receiver has `expected` webhooks (bounded).
async fn wait_for(receiver: &Receiver, herald: &Herald, expected: usize, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while receiver.count() < expected {
        assert!(
            Instant::now() < deadline,
            "gave up after {timeout:?}: {} of {expected} webhooks arrived; herald's last lines:\n{}",
            receiver.count(),
            tail(&herald.logs)
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
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

/// Arrivals out of `seq` order within a subscription (there must be none).
fn order_violations(arrivals: &[Arrival], ids: &HashMap<String, (String, i64)>) -> usize {
    let mut ordered: Vec<&Arrival> = arrivals.iter().collect();
    ordered.sort_by(|a, b| a.at.total_cmp(&b.at));
    let mut last: HashMap<&str, i64> = HashMap::new();
    let mut violations = 0;
    for arrival in ordered {
        let Some((sub, seq)) = ids.get(&arrival.webhook_id) else {
            continue;
        };
        let previous = last.insert(sub.as_str(), *seq);
        if previous.is_some_and(|p| p >= *seq) {
            violations += 1;
        }
    }
    violations
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
            .apps_with_due_events(actors::clock::now_ms(), 10_000)
            .await
            .expect("apps_with_due_events");
        apps.push(t.elapsed().as_secs_f64() * 1000.0);
        let t = Instant::now();
        store
            .subscriptions_due(&app, "bench", actors::clock::now_ms(), 8)
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
        .repository_row(repository)
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
    let before = probe(postgres);
    for event in sample {
        let t = Instant::now();
        store
            .record_attempt(
                event,
                Attempt {
                    event_id: event.id.clone(),
                    chunk_index: None,
                    attempted_at: actors::clock::now_ms(),
                    status_code: Some(204),
                    latency_ms: 0,
                    error_class: None,
                    response_excerpt: None,
                },
                Some(EventOutcome::Delivered),
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
                .next_events(subscription, 64)
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
                    .apps_with_due_events(actors::clock::now_ms(), 10_000)
                    .await
                    .expect("apps_with_due_events");
                apps.push(ms(t));
                assert_eq!(due.len(), 1);
                let t = Instant::now();
                store
                    .subscriptions_due(&app, "bench", actors::clock::now_ms(), 8)
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
    wait_for(receiver, &herald, 1, timeout).await;
    let before = cpu_sample(herald.pid, database.postgres_name());
    let store = connect(&database.bench_url(&herald.data_dir)).await;
    let counters_before = match backend {
        Backend::Postgres => Some(postgres_counters(&store).await),
        Backend::Sqlite => None,
    };
    wait_for(receiver, &herald, expected / 2, timeout).await;
    let polling = polling_cost(&store).await;
    wait_for(receiver, &herald, expected, timeout).await;
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
    wait_for(receiver, &herald, 1, timeout).await;
    let before = cpu_sample(herald.pid, database.postgres_name());
    let store = connect(&database.bench_url(&herald.data_dir)).await;
    let counters_before = match backend {
        Backend::Postgres => Some(postgres_counters(&store).await),
        Backend::Sqlite => None,
    };
    wait_for(receiver, &herald, expected / 2, timeout).await;
    let polling = polling_cost(&store).await;
    wait_for(receiver, &herald, expected, timeout).await;
    let after = cpu_sample(herald.pid, database.postgres_name());
    let counters = match counters_before {
        Some(start) => {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            let end = postgres_counters(&store).await;
            Some(std::array::from_fn::<i64, 5, _>(|i| end[i] - start[i]))
        }
        None => None,
    };
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
