//! What the benchmarks share: statistics, generated repositories served by
//! `git daemon`, a receiver that records arrivals, a database per run, and
//! the real `herald` binary started as a user starts it.
//!
//! Each bench target compiles this module on its own and uses a part of it.
#![allow(dead_code)]

use std::collections::HashMap;
use std::collections::VecDeque;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use actors::store::Store;
use actors::test_support::{self, TestDatabase};
use hmac::{Hmac, KeyInit, Mac};
use sea_orm::{ConnectionTrait, Statement};
use serde_json::{Value, json};
use sha2::Sha256;
use tokio::io::{AsyncBufReadExt, BufReader};
use warp::Filter;

pub mod history;
pub mod inherent;
pub mod load;
pub mod verify;
pub mod workload;

pub const BRANCH: &str = "main";
pub const ADMIN_TOKEN: &str = "bench-admin-token-0123456789abcdef";
/// The secret GitHub-style push hooks are signed with (`inbound.github_secret`).
pub const GITHUB_SECRET: &str = "bench-github-webhook-secret";
/// Files per leaf directory of a generated tree.
pub const FILES_PER_DIR: usize = 100;

// ---------------------------------------------------------------- backends

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Sqlite => "SQLite",
            Backend::Postgres => "PostgreSQL",
        }
    }
}

// ------------------------------------------------------------ command line

/// A bench's command line, read option by option. `cargo bench` passes
/// `--bench` (full sizes); `cargo test --benches` does not (a smoke run).
pub struct BenchArgs {
    args: std::vec::IntoIter<String>,
    pub full: bool,
}

impl BenchArgs {
    pub fn from_env() -> Self {
        let args: Vec<String> = std::env::args().skip(1).collect();
        let full = args.iter().any(|a| a == "--bench");
        Self {
            args: args.into_iter(),
            full,
        }
    }

    /// The next option, `--bench` passed over.
    pub fn next_option(&mut self) -> Option<String> {
        self.args.by_ref().find(|a| a != "--bench")
    }

    /// The value of option `name`.
    pub fn value(&mut self, name: &str) -> String {
        self.args
            .next()
            .unwrap_or_else(|| panic!("{name} needs a value"))
    }

    pub fn number(&mut self, name: &str) -> usize {
        let raw = self.value(name);
        parse_number(name, &raw)
    }

    /// A `KEY=VALUE` option's key and value (e.g. `--env`).
    pub fn pair(&mut self, name: &str) -> (String, String) {
        let pair = self.value(name);
        let (key, value) = pair
            .split_once('=')
            .unwrap_or_else(|| panic!("{name} takes KEY=VALUE, not {pair:?}"));
        (key.to_owned(), value.to_owned())
    }

    /// A comma-separated list of numbers.
    pub fn numbers(&mut self, name: &str) -> Vec<usize> {
        self.value(name)
            .split(',')
            .map(|n| parse_number(name, n.trim()))
            .collect()
    }

    /// `--db sqlite|postgres|all`; `None` is all.
    pub fn backend(&mut self) -> Option<Backend> {
        match self.value("--db").as_str() {
            "sqlite" => Some(Backend::Sqlite),
            "postgres" => Some(Backend::Postgres),
            "all" => None,
            other => panic!("--db is sqlite, postgres or all, not {other:?}"),
        }
    }
}

fn parse_number(name: &str, raw: &str) -> usize {
    raw.replace('_', "")
        .parse()
        .unwrap_or_else(|_| panic!("{name} takes a number, not {raw:?}"))
}

/// The backends a run covers: the one `--db` named, else SQLite and, when
/// `TEST_DATABASE_URL` is set, PostgreSQL.
pub fn backends(db: Option<Backend>) -> Vec<Backend> {
    match db {
        Some(backend) => vec![backend],
        None if std::env::var("TEST_DATABASE_URL").is_ok() => {
            vec![Backend::Sqlite, Backend::Postgres]
        }
        None => {
            println!("(TEST_DATABASE_URL is not set: SQLite only)\n");
            vec![Backend::Sqlite]
        }
    }
}

/// The bench's own runtime: two worker threads named `bench`.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("bench")
        .enable_all()
        .build()
        .expect("a runtime")
}

/// Names each goal missed and exits non-zero, if any was.
pub fn exit_if_missed(missed: &[String]) {
    if !missed.is_empty() {
        eprintln!("goals missed (at the median of the runs):");
        for goal in missed {
            eprintln!("- {goal}");
        }
        std::process::exit(1);
    }
}

// ------------------------------------------------------------ statistics

pub fn unix_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_secs_f64()
        * 1000.0
}

pub fn sorted(values: &[f64]) -> Vec<f64> {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted
}

/// Nearest-rank percentile (`p` in 0..=100).
pub fn percentile(values: &[f64], p: f64) -> f64 {
    let sorted = sorted(values);
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub fn median(values: &[f64]) -> f64 {
    percentile(values, 50.0)
}

pub fn mean(values: &[f64]) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.iter().sum::<f64>() / values.len() as f64
}

/// `low–high unit`, and the median of three runs or more: the machine's
/// speed drifts between runs, floors included, so one run says little.
pub fn range(values: &[f64], unit: &str, digits: usize) -> String {
    let sorted = sorted(values);
    let (Some(low), Some(high)) = (sorted.first(), sorted.last()) else {
        return "—".to_owned();
    };
    let spread = (high - low).abs() > f64::EPSILON;
    let mut text = if spread {
        format!("{low:.digits$}–{high:.digits$}")
    } else {
        format!("{low:.digits$}")
    };
    match unit {
        "" => {}
        "×" => text.push('×'),
        _ => text = format!("{text} {unit}"),
    }
    if spread && sorted.len() >= 3 {
        text = format!("{text} (median {:.digits$})", median(&sorted));
    }
    text
}

pub fn met(ok: bool) -> &'static str {
    if ok { "met" } else { "**missed**" }
}

pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

// ----------------------------------------------------------- /proc probes

/// Clock ticks per second of `/proc` CPU times (`CLK_TCK`), asked once: a
/// sampler reads CPU times every few milliseconds, and a `getconf` process
/// each time would take CPU from what is measured.
pub fn clock_ticks_per_second() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// `(comm, utime, stime)` of a `/proc/…/stat` file.
pub fn stat_ticks(path: &Path) -> Option<(String, u64, u64)> {
    let stat = std::fs::read_to_string(path).ok()?;
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat[open + 1..close].to_owned();
    let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((comm, utime, stime))
}

/// CPU ticks of the PostgreSQL backends serving `database`, keyed by pid.
pub fn postgres_ticks(database: &str) -> HashMap<u64, u64> {
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
pub fn machine_ticks() -> (u64, u64, u64) {
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

/// A field of a `/proc/…/status` text (`VmRSS`, `VmHWM`, `RssFile`…), in MiB.
pub fn status_field_mib(status: &str, field: &str) -> Option<f64> {
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map(|kib| kib / 1024.0)
}

/// The `/proc/…/status` text of process `pid` (empty once it has exited).
pub fn process_status(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default()
}

/// `VmHWM` of a process (its peak resident set so far), in MiB.
pub fn peak_rss_mib(pid: u32) -> f64 {
    status_field_mib(&process_status(pid), "VmHWM").unwrap_or_default()
}

/// The push's floor: `git fetch` of a new commit into `mirror`, then `git
/// diff-tree` from `old` to `new`; panics when either fails.
pub fn fetch_and_diff(mirror: &Path, old: &str, new: &str) {
    let fetched = Command::new("git")
        .arg("-C")
        .arg(mirror)
        .args(["fetch", "-q", "origin"])
        .status()
        .expect("git runs");
    let diffed = Command::new("git")
        .arg("-C")
        .arg(mirror)
        .args(["diff-tree", "-r", "--name-status", old, new])
        .stdout(Stdio::null())
        .status()
        .expect("git runs");
    assert!(fetched.success() && diffed.success());
}

/// Runs a command, returns how long it took (s); panics when it fails.
pub fn timed(command: &mut Command) -> f64 {
    let started = Instant::now();
    let status = command
        .stdout(Stdio::null())
        .status()
        .expect("the command runs");
    assert!(status.success(), "{command:?} failed");
    started.elapsed().as_secs_f64()
}

/// User + system CPU ticks of process `pid`, all its threads.
pub fn process_ticks(pid: u32) -> u64 {
    stat_ticks(Path::new(&format!("/proc/{pid}/stat"))).map_or(0, |(_, user, system)| user + system)
}

// -------------------------------------------------------- generated repos

/// A bare repository generated with `git fast-import`: one initial commit of
/// `files` text files, then `commits` successive 10-file commits (modify 4,
/// add 3, delete 3). Its branch is left at the initial commit.
pub struct GeneratedRepo {
    pub name: String,
    pub bare: PathBuf,
    /// The initial commit, then one per 10-file commit.
    pub commits: Vec<String>,
}

pub fn git(dir: &Path) -> Command {
    let mut command = Command::new("git");
    command
        .current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .stdin(Stdio::null());
    command
}

pub fn git_ok(dir: &Path, args: &[&str]) -> String {
    let output = git(dir).args(args).output().expect("git runs");
    assert!(
        output.status.success(),
        "git {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("git prints UTF-8")
}

pub fn path_of(i: usize) -> String {
    let dir = i / FILES_PER_DIR;
    format!("p{:02}/d{:02}/f{i:06}.txt", dir / 100, dir % 100)
}

/// About 200 bytes of text: the content of file `i` at `version`.
pub fn content_of(repo: &str, i: usize, version: usize) -> Vec<u8> {
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

pub fn inline(stream: &mut (impl Write + ?Sized), path: &str, content: &[u8]) {
    writeln!(stream, "M 100644 inline {path}").expect("fast-import input");
    writeln!(stream, "data {}", content.len()).expect("fast-import input");
    stream.write_all(content).expect("fast-import input");
    stream.write_all(b"\n").expect("fast-import input");
}

pub fn commit_header(stream: &mut (impl Write + ?Sized), mark: usize, message: &str) {
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

pub fn generate(root: &Path, name: &str, files: usize, commits: usize) -> GeneratedRepo {
    assert!(
        files / 4 + 4 * commits < files / 2 && files / 2 + 3 * commits <= files,
        "too many commits for {files} files"
    );
    fast_import(root, name, |stream| {
        commit_header(stream, 1, "initial tree");
        for i in 0..files {
            inline(stream, &path_of(i), &content_of(name, i, 0));
        }
        for k in 1..=commits {
            commit_header(stream, k + 1, &format!("ten-file change {k}"));
            for j in 0..4 {
                let i = files / 4 + 4 * (k - 1) + j;
                inline(stream, &path_of(i), &content_of(name, i, k));
            }
            for j in 0..3 {
                let path = format!("p00/d00/new{k:04}_{j}.txt");
                inline(stream, &path, format!("added in commit {k}\n").as_bytes());
            }
            for j in 0..3 {
                writeln!(stream, "D {}", path_of(files / 2 + 3 * (k - 1) + j))
                    .expect("fast-import input");
            }
        }
    })
}

/// An empty bare repository at `path` whose branch is [`BRANCH`].
pub fn init_bare(path: &Path) {
    let parent = path.parent().expect("a repository has a parent directory");
    git_ok(
        parent,
        &[
            "init",
            "--quiet",
            "--bare",
            "--initial-branch",
            BRANCH,
            &path.display().to_string(),
        ],
    );
}

/// A bare repository `{name}.git` under `root` whose branch gets the commits
/// `write` streams to `git fast-import` (marked 1, 2, … in order, each with
/// [`commit_header`]). Its branch is left at the first commit.
pub fn fast_import(root: &Path, name: &str, write: impl FnOnce(&mut dyn Write)) -> GeneratedRepo {
    let bare = root.join(format!("{name}.git"));
    init_bare(&bare);
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
        write(&mut stream);
        stream.flush().expect("fast-import input");
    }
    let status = child.wait().expect("git fast-import runs");
    assert!(status.success(), "git fast-import failed");
    let mut marks: Vec<(usize, String)> = std::fs::read_to_string(&marks)
        .expect("fast-import marks")
        .lines()
        .filter_map(|l| {
            let (mark, sha) = l.split_once(' ')?;
            Some((mark.trim_start_matches(':').parse().ok()?, sha.to_owned()))
        })
        .collect();
    marks.sort();
    assert!(
        marks
            .iter()
            .enumerate()
            .all(|(i, (mark, _))| *mark == i + 1),
        "the commits are marked 1, 2, … in order"
    );
    let repo = GeneratedRepo {
        name: name.to_owned(),
        bare,
        commits: marks.into_iter().map(|(_, sha)| sha).collect(),
    };
    repo.set_head(0);
    repo
}

impl GeneratedRepo {
    /// Points the remote's branch at commit `k` (a push, as far as Herald and
    /// `git daemon` can tell).
    pub fn set_head(&self, k: usize) {
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
pub struct GitDaemon {
    pub child: std::process::Child,
    pub port: u16,
}

impl GitDaemon {
    /// A daemon on a free port; panics when none starts.
    pub fn serve(root: &Path) -> GitDaemon {
        Self::try_serve(root).expect("git daemon starts (is git-daemon installed?)")
    }

    /// A daemon on a free port, or `None` when git-daemon is missing or does
    /// not start.
    pub fn try_serve(root: &Path) -> Option<GitDaemon> {
        let exec_path = git_ok(root, &["--exec-path"]);
        for _ in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map(|a| a.port())
                .ok()?;
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
                .ok()?;
            let deadline = Instant::now() + Duration::from_secs(5);
            let address = std::net::SocketAddr::from(([127, 0, 0, 1], port));
            loop {
                if child.try_wait().ok().flatten().is_some() {
                    break;
                }
                if std::net::TcpStream::connect_timeout(&address, Duration::from_millis(200))
                    .is_ok()
                {
                    return Some(GitDaemon { child, port });
                }
                if Instant::now() > deadline {
                    child.kill().ok();
                    child.wait().ok();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        None
    }

    pub fn url(&self, repo: &GeneratedRepo) -> String {
        self.url_of(&format!("{}.git", repo.name))
    }

    /// The URL of the repository at `path` under the served directory.
    pub fn url_of(&self, path: &str) -> String {
        format!("git://127.0.0.1:{}/{path}", self.port)
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
pub struct Arrival {
    /// The app's number, from the path `/hooks/{n}/{endpoint}`.
    pub hook: usize,
    pub webhook_id: String,
    /// Unix ms, when the request was read.
    pub at: f64,
    /// With [`ReceiverConfig::keep_bodies`]: what it carried.
    pub request: Option<Arc<Request>>,
}

/// A webhook's endpoint, body and Standard Webhooks signature headers.
#[derive(Debug)]
pub struct Request {
    /// The last segment of the path: `create`, `update`, `delete`, …
    pub endpoint: String,
    pub body: bytes::Bytes,
    pub timestamp: String,
    pub signature: String,
}

/// How the receiver answers.
#[derive(Debug, Clone, Copy, Default)]
pub struct ReceiverConfig {
    /// How long after reading a request it answers (the request's arrival
    /// is recorded first); other requests are served meanwhile.
    pub delay: Duration,
    /// Keep each request's endpoint, body and signature headers.
    pub keep_bodies: bool,
}

/// A webhook receiver's server on loopback, on a runtime of its own (two
/// threads named `receiver`, so that their CPU can be told apart).
pub struct ServedHooks {
    /// `http://127.0.0.1:PORT/hooks`.
    pub base_url: String,
    pub runtime: tokio::runtime::Runtime,
    /// Stops the server gracefully.
    pub shutdown: tokio::sync::oneshot::Sender<()>,
}

/// Serves webhooks on a free loopback port from a runtime of its own:
/// `handler` sees each request (its path after the host, headers, body) as
/// it arrives and says how long to wait before answering it 204; other
/// requests are served meanwhile.
pub fn serve_hooks<H>(handler: H) -> ServedHooks
where
    H: Fn(&warp::path::Tail, &warp::http::HeaderMap, bytes::Bytes) -> Duration
        + Clone
        + Send
        + Sync
        + 'static,
{
    serve_answering(
        move |tail: &warp::path::Tail, headers: &warp::http::HeaderMap, body: bytes::Bytes| {
            let delay = handler(tail, headers, body);
            async move {
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                warp::http::StatusCode::NO_CONTENT
            }
        },
    )
}

/// Like [`serve_hooks`], but `handler` answers each request itself: the
/// future it gives resolves to the status (with an empty body), whenever it
/// likes; other requests are served meanwhile. A request whose sender gave
/// up has its future dropped.
pub fn serve_answering<H, F>(handler: H) -> ServedHooks
where
    H: Fn(&warp::path::Tail, &warp::http::HeaderMap, bytes::Bytes) -> F
        + Clone
        + Send
        + Sync
        + 'static,
    F: std::future::Future<Output = warp::http::StatusCode> + Send + 'static,
{
    let route = warp::post()
        .and(warp::path::tail())
        .and(warp::header::headers_cloned())
        .and(warp::body::bytes())
        .then(
            move |tail: warp::path::Tail, headers: warp::http::HeaderMap, body: bytes::Bytes| {
                let answer = handler(&tail, &headers, body);
                async move { warp::reply::with_status(warp::reply(), answer.await) }
            },
        );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("receiver")
        .enable_all()
        .build()
        .expect("a runtime for the receiver");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a port for the receiver");
    listener
        .set_nonblocking(true)
        .expect("a non-blocking listener");
    let addr = listener.local_addr().expect("the receiver's address");
    let (shutdown, stopped) = tokio::sync::oneshot::channel::<()>();
    runtime.spawn(async move {
        let listener = tokio::net::TcpListener::from_std(listener).expect("a tokio listener");
        warp::serve(route)
            .incoming(listener)
            .graceful(async move {
                let _ = stopped.await;
            })
            .run()
            .await;
    });
    ServedHooks {
        base_url: format!("http://{addr}/hooks"),
        runtime,
        shutdown,
    }
}

/// An HTTP server on loopback, on a runtime of its own (threads named
/// `receiver`, so that their CPU can be told apart), that answers every
/// webhook 204 (at once, or after [`ReceiverConfig::delay`]) and records its
/// arrival; or, started with [`Receiver::start_throttled`], answers 429 to
/// the requests over its limit.
pub struct Receiver {
    pub base_url: String,
    /// The requests answered 204 (those answered 429 are only counted, in
    /// [`InFlight`]).
    pub arrivals: Arc<Mutex<Vec<Arrival>>>,
    pub count: Arc<AtomicUsize>,
    pub in_flight: Arc<InFlight>,
    pub runtime: Option<tokio::runtime::Runtime>,
    pub shutdown: Option<tokio::sync::oneshot::Sender<()>>,
}

/// The requests a receiver holds at once: a sender's concurrency as the
/// receiver sees it, and what a throttling receiver refused.
#[derive(Debug, Default)]
pub struct InFlight {
    now: AtomicUsize,
    peak: AtomicUsize,
    refused: AtomicUsize,
}

impl InFlight {
    /// One more request; how many are in flight with it.
    fn enter(self: &Arc<Self>) -> (usize, InFlightGuard) {
        let now = self.now.fetch_add(1, Ordering::AcqRel) + 1;
        self.peak.fetch_max(now, Ordering::AcqRel);
        (now, InFlightGuard(self.clone()))
    }

    /// The most requests in flight at once since the last [`Self::reset`],
    /// a refused one included for the moment it is held.
    pub fn peak(&self) -> usize {
        self.peak.load(Ordering::Acquire)
    }

    /// Requests answered 429 since the last [`Self::reset`].
    pub fn refused(&self) -> usize {
        self.refused.load(Ordering::Acquire)
    }

    /// The peak and the refusals start over (the requests in flight stay).
    pub fn reset(&self) {
        self.peak
            .store(self.now.load(Ordering::Acquire), Ordering::Release);
        self.refused.store(0, Ordering::Release);
    }
}

/// A request in flight until it is answered, or its sender gives up.
struct InFlightGuard(Arc<InFlight>);

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.0.now.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Receiver {
    pub fn start() -> Receiver {
        Self::start_with(ReceiverConfig::default())
    }

    pub fn start_with(config: ReceiverConfig) -> Receiver {
        Self::start_limited(config, None)
    }

    /// A receiver that answers 429 (without `Retry-After`), at once, to a
    /// request that arrives while `limit` others are in flight at it, as a
    /// rate-limited service does; the others as [`Self::start_with`].
    pub fn start_throttled(config: ReceiverConfig, limit: usize) -> Receiver {
        Self::start_limited(config, Some(limit))
    }

    fn start_limited(config: ReceiverConfig, limit: Option<usize>) -> Receiver {
        let arrivals = Arc::new(Mutex::new(Vec::with_capacity(1 << 17)));
        let count = Arc::new(AtomicUsize::new(0));
        let in_flight = Arc::new(InFlight::default());
        let (log, counter, held) = (arrivals.clone(), count.clone(), in_flight.clone());
        let served = serve_answering(
            move |tail: &warp::path::Tail, headers: &warp::http::HeaderMap, body: bytes::Bytes| {
                let at = unix_ms();
                let (now, guard) = held.enter();
                let refused = limit.is_some_and(|limit| now > limit);
                if refused {
                    held.refused.fetch_add(1, Ordering::AcqRel);
                } else {
                    let header = |name: &str| {
                        headers
                            .get(name)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or_default()
                            .to_owned()
                    };
                    // `hooks/{n}/{endpoint}`
                    let mut segments = tail.as_str().split('/');
                    let hook = segments
                        .nth(1)
                        .and_then(|n| n.parse().ok())
                        .unwrap_or(usize::MAX);
                    let request = config.keep_bodies.then(|| {
                        Arc::new(Request {
                            endpoint: segments.next_back().unwrap_or_default().to_owned(),
                            body,
                            timestamp: header("webhook-timestamp"),
                            signature: header("webhook-signature"),
                        })
                    });
                    log.lock().expect("arrivals lock").push(Arrival {
                        hook,
                        webhook_id: header("webhook-id"),
                        at,
                        request,
                    });
                    counter.fetch_add(1, Ordering::Release);
                }
                let delay = config.delay;
                async move {
                    let _in_flight = guard;
                    if refused {
                        return warp::http::StatusCode::TOO_MANY_REQUESTS;
                    }
                    if !delay.is_zero() {
                        tokio::time::sleep(delay).await;
                    }
                    warp::http::StatusCode::NO_CONTENT
                }
            },
        );
        Receiver {
            base_url: served.base_url,
            arrivals,
            count,
            in_flight,
            runtime: Some(served.runtime),
            shutdown: Some(served.shutdown),
        }
    }

    pub fn hook_url(&self, app: usize) -> String {
        format!("{}/{app}", self.base_url)
    }

    pub fn count(&self) -> usize {
        self.count.load(Ordering::Acquire)
    }

    /// Everything received so far; the log starts over.
    pub fn take(&self) -> Vec<Arrival> {
        let mut log = self.arrivals.lock().expect("arrivals lock");
        self.count.store(0, Ordering::Release);
        std::mem::take(&mut *log)
    }

    pub fn snapshot(&self) -> Vec<Arrival> {
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
pub struct BenchDatabase(TestDatabase);

impl BenchDatabase {
    pub async fn create(backend: Backend) -> Self {
        match backend {
            Backend::Sqlite => Self(TestDatabase::sqlite()),
            Backend::Postgres => {
                let server = std::env::var("TEST_DATABASE_URL")
                    .expect("--db postgres needs TEST_DATABASE_URL");
                Self::create_postgres(&server).await
            }
        }
    }

    /// A database `herald_bench_<ulid>` created now on the PostgreSQL server
    /// at `server`, dropped with this value.
    pub async fn create_postgres(server: &str) -> Self {
        Self(TestDatabase::postgres(server, "herald_bench").await)
    }

    /// For the server; `None`: its default SQLite file.
    pub fn server_url(&self) -> Option<&str> {
        self.0.url.as_deref()
    }

    pub fn postgres_name(&self) -> Option<&str> {
        self.0.name()
    }

    /// The URL this bench opens the server's database with.
    pub fn bench_url(&self, data_dir: &Path) -> String {
        self.url_in(data_dir, "herald.db")
    }

    /// The PostgreSQL database, or the SQLite file `file` in `dir`.
    pub fn url_in(&self, dir: &Path, file: &str) -> String {
        self.0.url_in(dir, file)
    }
}

/// The server's database, opened by the bench.
pub async fn connect(url: &str) -> Store {
    test_support::connect(url).await
}

pub async fn rows(store: &Store, sql: &str) -> Vec<sea_orm::QueryResult> {
    store
        .db()
        .query_all_raw(Statement::from_string(store.backend(), sql.to_owned()))
        .await
        .unwrap_or_else(|err| panic!("{sql}: {err}"))
}

pub fn get<T: sea_orm::TryGetable>(row: &sea_orm::QueryResult, column: &str) -> T {
    row.try_get("", column)
        .unwrap_or_else(|err| panic!("column {column}: {err}"))
}

/// Arrivals out of `seq` order within a subscription (there must be none).
pub fn order_violations(arrivals: &[Arrival], ids: &HashMap<String, (String, i64)>) -> usize {
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

/// Event id → (subscription, seq), of every event in the database.
pub async fn event_seqs(store: &Store) -> HashMap<String, (String, i64)> {
    rows(store, "SELECT id, subscription_id, seq FROM events")
        .await
        .iter()
        .map(|row| {
            (
                get(row, "id"),
                (get(row, "subscription_id"), get::<i64>(row, "seq")),
            )
        })
        .collect()
}

/// `pg_stat_database` counters of the current database.
pub async fn postgres_counters(store: &Store) -> [i64; 5] {
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

/// The `herald` binary `cargo bench` built (`target/release/herald`), or
/// the one `HERALD_BENCH_BINARY` names (to measure another build, e.g. the
/// commit before a change, in the same conditions).
pub fn herald_binary() -> PathBuf {
    let path = std::env::var_os("HERALD_BENCH_BINARY").map_or_else(
        || PathBuf::from(env!("CARGO_BIN_EXE_herald")),
        PathBuf::from,
    );
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --release` (or `cargo bench`, which builds it)",
        path.display()
    );
    path
}

/// The real server, with a data directory of its own. Killed on drop.
pub struct Herald {
    pub child: tokio::process::Child,
    pub pid: u32,
    pub base: String,
    pub data_dir: PathBuf,
    pub http: reqwest::Client,
    pub logs: Arc<Mutex<VecDeque<String>>>,
    /// Commit → when the server logged "snapshot advanced" for it (Unix ms,
    /// from the log line's own timestamp): just after the outbox commit.
    pub advanced: Arc<Mutex<HashMap<String, f64>>>,
    /// When the server logged a mirror's compaction (a message that names
    /// a repack or a compaction), Unix ms, from the log lines' timestamps.
    pub compactions: Arc<Mutex<Vec<f64>>>,
}

impl Herald {
    pub async fn start(dir: &Path, database: &BenchDatabase, extra: &[(&str, &str)]) -> Herald {
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
            // Benches ask for scans right after the warm-up's.
            .env("HERALD__SCHEDULER__SCAN_REQUEST_COOLDOWN", "0")
            .env("HERALD__DELIVERY__TICK", "100ms");
        if let Some(url) = database.server_url() {
            command.env("HERALD__DATABASE__URL", url);
        }
        for (key, value) in extra {
            command.env(key, value);
        }
        let mut child = command.spawn().expect("the herald binary starts");
        let pid = child.id().expect("herald is running");
        let logs = Arc::new(Mutex::new(VecDeque::new()));
        let advanced = Arc::new(Mutex::new(HashMap::new()));
        let compactions = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = tokio::sync::oneshot::channel();
        let records = Records {
            logs: logs.clone(),
            advanced: advanced.clone(),
            compactions: compactions.clone(),
        };
        collect(child.stdout.take().expect("piped"), records.clone(), None);
        collect(child.stderr.take().expect("piped"), records, Some(tx));
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
            http: actors::tls::http_client_builder()
                .build()
                .expect("an HTTP client"),
            logs,
            advanced,
            compactions,
        }
    }

    /// When the server logged that `commit` was committed, if it did.
    pub fn advanced_at(&self, commit: &str) -> Option<f64> {
        self.advanced
            .lock()
            .expect("advanced lock")
            .get(commit)
            .copied()
    }

    /// A request to `path` with `token` (and a JSON `body`), whatever the
    /// answer: its status and its JSON (`null` when it has none).
    pub async fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> (reqwest::StatusCode, Value) {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(token);
        if let Some(body) = &body {
            request = request.json(body);
        }
        let response = request.send().await.expect("herald answers");
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    pub async fn call(&self, path: &str, token: &str, body: Value) -> Value {
        let (status, body) = self
            .request(reqwest::Method::POST, path, token, Some(body))
            .await;
        assert!(status.is_success(), "{path} answered {status}: {body}");
        body
    }

    /// Onboards an app whose webhooks go to `base_url`; returns its token.
    pub async fn onboard(&self, name: &str, base_url: &str) -> String {
        self.onboard_keyed(name, base_url).await.0
    }

    /// Onboards an app whose webhooks go to `base_url`; returns its token and
    /// the key that signs its webhooks (`client_auth_key`).
    pub async fn onboard_keyed(&self, name: &str, base_url: &str) -> (String, String) {
        let (_, token, key) = self.onboard_app(name, base_url).await;
        (token, key)
    }

    /// Onboards an app whose webhooks go to `base_url`; returns its id, its
    /// token and the key that signs its webhooks.
    pub async fn onboard_app(&self, name: &str, base_url: &str) -> (String, String, String) {
        self.onboard_with(json!({"app_name": name, "base_url": base_url}))
            .await
    }

    /// Onboards an app with the fields of `request` (`app_name`,
    /// `base_url`, `delivery`, …; the e-mail is the bench's); returns its
    /// id, its token and the key that signs its messages.
    pub async fn onboard_with(&self, mut request: Value) -> (String, String, String) {
        request["email"] = json!("bench@example.com");
        let body = self
            .call("/admin/api/apps/onboard", ADMIN_TOKEN, request)
            .await;
        let field = |name: &str| {
            body["data"][name]
                .as_str()
                .unwrap_or_else(|| panic!("the onboarding answer has no {name}: {body}"))
                .to_owned()
        };
        (field("app_id"), field("token"), field("client_auth_key"))
    }

    /// Opts the app in to the `synced` notice after each snapshot's last
    /// event (`PATCH /api/app`).
    pub async fn notify_synced(&self, token: &str) {
        let (status, body) = self.patch_app(token, json!({"notify_synced": true})).await;
        assert!(
            status.is_success(),
            "PATCH /api/app answered {status}: {body}"
        );
    }

    /// `PATCH /api/app` with `body`, whatever the answer: a bench tells a
    /// setting this build does not know (a 4xx) from one it took.
    pub async fn patch_app(&self, token: &str, body: Value) -> (reqwest::StatusCode, Value) {
        self.request(reqwest::Method::PATCH, "/api/app", token, Some(body))
            .await
    }

    /// `GET {path}` with `token`: the JSON answer; panics unless it is a 2xx.
    pub async fn get_json(&self, path: &str, token: &str) -> Value {
        let (status, body) = self.request(reqwest::Method::GET, path, token, None).await;
        assert!(status.is_success(), "GET {path} answered {status}: {body}");
        body
    }

    /// Asks for a scan of the repository now (`POST /api/repositories/{id}/scan`).
    pub async fn scan_now(&self, token: &str, repository_id: &str) {
        let response = self
            .http
            .post(format!(
                "{}/api/repositories/{repository_id}/scan",
                self.base
            ))
            .bearer_auth(token)
            .send()
            .await
            .expect("herald answers");
        let status = response.status();
        assert!(status.is_success(), "the scan request answered {status}");
    }

    /// The sum of the series of `name` on `/metrics` whose labels contain
    /// `filter` (e.g. `outcome="success"`; `""` for all).
    pub async fn metric(&self, name: &str, filter: &str) -> f64 {
        let text = self
            .http
            .get(format!("{}/metrics", self.base))
            .send()
            .await
            .expect("herald answers")
            .text()
            .await
            .expect("the metrics");
        text.lines()
            .filter(|line| {
                line.strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with(['{', ' ']) && rest.contains(filter))
            })
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// Registers a repository for the app; returns the repository id.
    pub async fn register(&self, token: &str, url: &str) -> String {
        let body = self
            .call("/api/repositories", token, json!({"url": url}))
            .await;
        body["repository_id"]
            .as_str()
            .expect("a repository id")
            .to_owned()
    }

    /// SIGTERM, and the exit within 30 s.
    pub async fn stop(mut self) {
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

pub fn tail(logs: &Mutex<VecDeque<String>>) -> String {
    let logs = logs.lock().expect("log lock");
    logs.iter().cloned().collect::<Vec<_>>().join("\n")
}

/// What [`collect`] keeps of the server's output.
#[derive(Clone)]
pub struct Records {
    pub logs: Arc<Mutex<VecDeque<String>>>,
    pub advanced: Arc<Mutex<HashMap<String, f64>>>,
    pub compactions: Arc<Mutex<Vec<f64>>>,
}

/// Reads the server's output, keeps its last lines, reports the address of
/// its "listening" line and records its "snapshot advanced" lines and its
/// mirrors' compactions.
pub fn collect(
    stream: impl tokio::io::AsyncRead + Unpin + Send + 'static,
    records: Records,
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
                    records
                        .advanced
                        .lock()
                        .expect("advanced lock")
                        .insert(commit.to_owned(), logged_at(&entry));
                }
                let message = entry["message"].as_str().unwrap_or_default();
                if message.contains("repacked") || message.contains("compacted") {
                    records
                        .compactions
                        .lock()
                        .expect("compactions lock")
                        .push(logged_at(&entry));
                }
            }
            let mut logs = records.logs.lock().expect("log lock");
            if logs.len() >= 200 {
                logs.pop_front();
            }
            logs.push_back(line);
        }
    });
}

/// A JSON log line's own timestamp (Unix ms), else now.
fn logged_at(entry: &Value) -> f64 {
    entry["timestamp"]
        .as_str()
        .and_then(|t| {
            time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok()
        })
        .map_or_else(unix_ms, |t| t.unix_timestamp_nanos() as f64 / 1e6)
}

/// Waits until the receiver has `expected` webhooks (bounded).
pub async fn wait_for(receiver: &Receiver, herald: &Herald, expected: usize, timeout: Duration) {
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

// ------------------------------------------------------------ push hooks

/// GitHub's `X-Hub-Signature-256` of a hook body.
pub fn github_signature(body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(GITHUB_SECRET.as_bytes()).expect("any key length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// A GitHub push payload (the documented shape, trimmed to one commit).
pub fn push_payload(clone_url: &str, commit: &str) -> Vec<u8> {
    let web = clone_url.trim_end_matches(".git");
    serde_json::to_vec(&json!({
        "ref": format!("refs/heads/{BRANCH}"),
        "before": "0".repeat(40),
        "after": commit,
        "created": false, "deleted": false, "forced": false, "base_ref": null,
        "compare": format!("{web}/compare/{commit}"),
        "repository": {
            "id": 186_853_002, "name": "bench", "full_name": "bench/bench", "private": false,
            "html_url": web, "clone_url": clone_url, "git_url": clone_url,
            "ssh_url": "git@127.0.0.1:bench/bench.git", "default_branch": BRANCH,
            "owner": {"login": "bench", "id": 1, "type": "User", "site_admin": false}
        },
        "pusher": {"name": "bench", "email": "bench@example.com"},
        "sender": {"login": "bench", "id": 1, "type": "User", "site_admin": false},
        "commits": [{
            "id": commit, "tree_id": "f9d2a07e9488b91af2641b26b9407fe22a451433", "distinct": true,
            "message": "ten-file change", "timestamp": "2026-01-01T00:00:00Z",
            "url": format!("{web}/commit/{commit}"),
            "author": {"name": "Bench", "email": "bench@example.com", "username": "bench"},
            "committer": {"name": "Bench", "email": "bench@example.com", "username": "bench"},
            "added": ["p00/d00/new_0.txt", "p00/d00/new_1.txt", "p00/d00/new_2.txt"],
            "removed": ["a.txt", "b.txt", "c.txt"],
            "modified": ["d.txt", "e.txt", "f.txt", "g.txt"]
        }],
        "head_commit": {"id": commit, "message": "ten-file change", "timestamp": "2026-01-01T00:00:00Z"}
    }))
    .expect("JSON")
}

/// Sends one hook; its status and how long the answer took (ms).
pub async fn send_hook(
    http: &reqwest::Client,
    base: &str,
    delivery: &str,
    body: Vec<u8>,
) -> (u16, f64) {
    let started = Instant::now();
    let response = http
        .post(format!("{base}/hooks/github"))
        .header("content-type", "application/json")
        .header("x-github-event", "push")
        .header("x-github-delivery", delivery)
        .header("x-hub-signature-256", github_signature(&body))
        .body(body)
        .send()
        .await
        .expect("herald answers");
    let status = response.status().as_u16();
    response.bytes().await.ok();
    (status, started.elapsed().as_secs_f64() * 1000.0)
}
