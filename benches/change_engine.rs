//! Benchmark of the change engine: the engine's own scan (remote head check,
//! fetch into a bare mirror over `file://`, tree diff or full walk, hashing)
//! and its outbox transaction (`Store::advance_snapshot`), driven directly,
//! without the HTTP server or the actors.
//!
//! `cargo bench --bench change_engine [-- OPTIONS]`
//!
//! - `--files N`          files in the main repository (100000)
//! - `--iterations N`     successive 10-file commits measured (20)
//! - `--rescans N`        runs of the full-rescan baseline (3)
//! - `--fanout-files N`   files in the fan-out repository (10000)
//! - `--fanout-commits N` 10-file commits measured per fan-out size (7)
//! - `--apps 1,10,100`    fan-out sizes
//! - `--no-fanout`        skip the fan-out table
//! - `--transport file|git` how the mirror fetches: `file://` (libgit2's local
//!   transport, the default) or `git://` from a local `git daemon`
//! - `--db sqlite|postgres|all` (`all`: SQLite, and PostgreSQL when
//!   `TEST_DATABASE_URL` is set; each backend runs in a process of its own so
//!   that peak RSS is not inherited from the previous one)
//!
//! Without `--bench` (as `cargo test --benches` runs it) the sizes shrink to a
//! smoke test. Results are printed as Markdown tables; see BENCHMARKS.md.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use actors::changes;
use actors::git::{self, Mirror, RemoteSpec};
use actors::ids::{RepoId, SnapshotId};
use actors::scan::{self, Accessor, ScanJob, ScanOutcome};
use actors::store::Store;
use actors::store::apps::NewApp;
use actors::store::outbox::AdvanceOutcome;
use actors::store::subscriptions::NewSubscription;
use actors::test_support;
use sea_orm::{ConnectionTrait, Statement};

mod support;

use support::{
    BRANCH, Backend, BenchArgs, BenchDatabase, FILES_PER_DIR, GitDaemon, clock_ticks_per_second,
    commit_header, git, git_ok, inline, load_average, met, status_field_mib,
};

/// Binary files in a generated repository (at most a tenth of it).
const BINARIES: usize = 300;

// ---------------------------------------------------------------- options

#[derive(Debug, Clone)]
struct Options {
    files: usize,
    iterations: usize,
    rescans: usize,
    fanout_files: usize,
    fanout_commits: usize,
    apps: Vec<usize>,
    fanout: bool,
    /// Fetch over git:// from a local `git daemon` instead of file://.
    git_transport: bool,
    /// `None`: every available backend, each in a child process.
    db: Option<Backend>,
}

fn parse_options() -> Options {
    let mut args = BenchArgs::from_env();
    let mut options = if args.full {
        Options {
            files: 100_000,
            iterations: 20,
            rescans: 3,
            fanout_files: 10_000,
            fanout_commits: 7,
            apps: vec![1, 10, 100],
            fanout: true,
            git_transport: false,
            db: None,
        }
    } else {
        Options {
            files: 2_000,
            iterations: 2,
            rescans: 1,
            fanout_files: 500,
            fanout_commits: 2,
            apps: vec![1, 3],
            fanout: true,
            git_transport: false,
            db: None,
        }
    };
    while let Some(arg) = args.next_option() {
        match arg.as_str() {
            "--files" => options.files = args.number(&arg),
            "--iterations" => options.iterations = args.number(&arg),
            "--rescans" => options.rescans = args.number(&arg),
            "--fanout-files" => options.fanout_files = args.number(&arg),
            "--fanout-commits" => options.fanout_commits = args.number(&arg),
            "--apps" => options.apps = args.numbers(&arg),
            "--no-fanout" => options.fanout = false,
            "--transport" => {
                options.git_transport = match args.value(&arg).as_str() {
                    "file" => false,
                    "git" => true,
                    other => panic!("--transport is file or git, not {other:?}"),
                }
            }
            "--db" => options.db = args.backend(),
            other => panic!("unknown option {other:?} (see benches/change_engine.rs)"),
        }
    }
    assert!(
        options.files >= 200 && options.fanout_files >= 200,
        "a repository needs at least 200 files"
    );
    assert!(options.iterations >= 1 && options.rescans >= 1);
    options
}

fn main() {
    let options = parse_options();
    match options.db {
        Some(backend) => run(&options, backend),
        None => {
            let mut backends = vec!["sqlite"];
            if std::env::var("TEST_DATABASE_URL").is_ok() {
                backends.push("postgres");
            } else {
                println!("(TEST_DATABASE_URL is not set: SQLite only)\n");
            }
            let exe = std::env::current_exe().expect("the benchmark knows its own path");
            let mut forwarded: Vec<String> = Vec::new();
            let mut args = std::env::args().skip(1);
            while let Some(arg) = args.next() {
                if arg == "--db" {
                    args.next();
                } else {
                    forwarded.push(arg);
                }
            }
            for backend in backends {
                let status = Command::new(&exe)
                    .args(&forwarded)
                    .args(["--db", backend])
                    .status()
                    .expect("the benchmark can run itself");
                assert!(status.success(), "the {backend} run failed");
            }
        }
    }
}

// ------------------------------------------------------------- /proc probes

/// Resets the peak-RSS mark (VmHWM) of this process to its current RSS.
fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// A `kB` field of /proc/self/status, in MiB.
fn status_mib(field: &str) -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status_field_mib(&status, field).unwrap_or(f64::NAN)
}

/// User + system CPU time of this process (all threads), in clock ticks.
fn cpu_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
    // Fields after the command name (which may hold spaces): state is field 3,
    // utime field 14, stime field 15.
    let after = &stat[stat.rfind(')').expect("a command name") + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    let utime: u64 = fields[11].parse().expect("utime");
    let stime: u64 = fields[12].parse().expect("stime");
    utime + stime
}

// ------------------------------------------------------------ statistics

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
    }
}

fn min(values: &[f64]) -> f64 {
    values.iter().copied().fold(f64::INFINITY, f64::min)
}

// -------------------------------------------------------- generated repos

/// A bare repository generated with `git fast-import`: one big initial
/// commit, then `commits` successive 10-file commits (modify 4, add 3,
/// delete 3). `refs/heads/main` is left at the initial commit.
struct GeneratedRepo {
    bare: PathBuf,
    url: String,
    files: usize,
    binaries: usize,
    bytes: u64,
    /// The initial commit, then one per 10-file commit.
    commits: Vec<String>,
    generated_in: Duration,
}

fn binary_stride(files: usize) -> usize {
    files / BINARIES.min(files / 10).max(1)
}

fn is_binary(files: usize, i: usize) -> bool {
    i % binary_stride(files) == 7 % binary_stride(files)
}

fn path_of(files: usize, i: usize) -> String {
    let dir = i / FILES_PER_DIR;
    let ext = if is_binary(files, i) { "bin" } else { "txt" };
    format!("p{:02}/d{:02}/f{i:06}.{ext}", dir / 100, dir % 100)
}

/// The content of file `i` at `version` (0: as first written).
fn content_of(files: usize, i: usize, version: usize) -> Vec<u8> {
    if is_binary(files, i) {
        let mut state = (i as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ version as u64;
        let mut bytes = Vec::with_capacity(4096);
        bytes.push(0);
        while bytes.len() < 4096 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            bytes.extend_from_slice(&state.to_le_bytes());
        }
        bytes
    } else {
        let mut text = format!("file {i} of the change-engine benchmark\n");
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
}

/// The 10-file change of commit `k` (1-based): modified, added and deleted
/// file indices (added files get paths of their own).
fn change_of(files: usize, k: usize) -> ([usize; 4], [String; 3], [usize; 3]) {
    let modified = std::array::from_fn(|j| files / 4 + 4 * (k - 1) + j);
    let added = std::array::from_fn(|j| format!("p00/d00/new{k:04}_{j}.txt"));
    let deleted = std::array::from_fn(|j| files / 2 + 3 * (k - 1) + j);
    (modified, added, deleted)
}

fn generate(dir: &Path, name: &str, files: usize, commits: usize) -> GeneratedRepo {
    assert!(
        files / 4 + 4 * commits < files / 2 && files / 2 + 3 * commits <= files,
        "too many commits for {files} files"
    );
    let started = Instant::now();
    let bare = dir.join(format!("{name}.git"));
    git_ok(
        dir,
        &[
            "init",
            "--quiet",
            "--bare",
            "--initial-branch",
            BRANCH,
            &bare.display().to_string(),
        ],
    );
    let marks = dir.join(format!("{name}.marks"));
    let mut child = git(&bare)
        .args([
            "fast-import",
            "--quiet",
            &format!("--export-marks={}", marks.display()),
        ])
        .stdin(Stdio::piped())
        .spawn()
        .expect("git fast-import starts");
    let mut bytes = 0u64;
    let mut binaries = 0;
    {
        let stdin = child.stdin.take().expect("piped stdin");
        let mut stream = std::io::BufWriter::with_capacity(1 << 20, stdin);
        commit_header(&mut stream, 1, "initial tree");
        for i in 0..files {
            let content = content_of(files, i, 0);
            bytes += content.len() as u64;
            binaries += usize::from(is_binary(files, i));
            inline(&mut stream, &path_of(files, i), &content);
        }
        for k in 1..=commits {
            commit_header(&mut stream, k + 1, &format!("ten-file change {k}"));
            let (modified, added, deleted) = change_of(files, k);
            for i in modified {
                inline(&mut stream, &path_of(files, i), &content_of(files, i, k));
            }
            for path in &added {
                inline(
                    &mut stream,
                    path,
                    format!("added in commit {k}\n").as_bytes(),
                );
            }
            for i in deleted {
                writeln!(stream, "D {}", path_of(files, i)).expect("fast-import input");
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
    set_remote_head(&bare, &commits[0]);
    GeneratedRepo {
        url: format!("file://{}", bare.display()),
        bare,
        files,
        binaries,
        bytes,
        commits,
        generated_in: started.elapsed(),
    }
}

/// Points the remote's branch at `commit` (a push, as far as Herald can tell).
fn set_remote_head(bare: &Path, commit: &str) {
    git_ok(
        bare,
        &["update-ref", &format!("refs/heads/{BRANCH}"), commit],
    );
}

fn dir_size(path: &Path) -> u64 {
    std::fs::read_dir(path)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => dir_size(&e.path()),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}

/// A store with `apps` apps, each subscribed to `remote`'s main branch.
async fn store_with_subscribers(database_url: &str, remote: &str, apps: usize) -> (Store, RepoId) {
    let store = test_support::store(database_url).await;
    let mut repo = None;
    for n in 0..apps {
        let app = NewApp {
            base_url: format!("https://1.1.1.1/hook/{n}"),
            email: format!("bench{n}@example.com"),
            client_auth_key: secrecy::SecretString::from("k".repeat(32)),
            ..test_support::new_app(&format!("bench-{n}"))
        };
        let app = test_support::onboard(&store, app).await;
        let subscription = NewSubscription {
            branch: Some(BRANCH.into()),
            ..test_support::new_subscription(remote, "bench", "repo")
        };
        repo = Some(test_support::subscribe(&store, &app, subscription).await.1);
    }
    (store, repo.expect("at least one app"))
}

async fn count(store: &Store, table: &str) -> i64 {
    let row = store
        .db()
        .query_one_raw(Statement::from_string(
            store.backend(),
            format!("SELECT COUNT(*) AS n FROM {table}"),
        ))
        .await
        .expect("a count")
        .expect("a row");
    row.try_get("", "n").expect("n")
}

// ------------------------------------------------------------------ scans

/// One scan through the engine's own code, timed in its two parts: the
/// blocking scan (git + hashing) and the outbox transaction.
struct Measured {
    scan: Duration,
    advance: Duration,
    outcome: AdvanceOutcome,
    changes: usize,
    /// Peak RSS (MiB) right after the blocking scan, before the transaction.
    hwm_after_scan: f64,
}

fn remote_spec(url: &str) -> RemoteSpec {
    test_support::loopback_remote(
        url,
        Duration::from_secs(600),
        &std::env::temp_dir().join("herald-bench-no-data-dir"),
    )
}

async fn scan_and_advance(store: &Store, repo: &RepoId, url: &str, mirror: &Path) -> Measured {
    let scanned = test_support::scan(store, repo, remote_spec(url), mirror, "bench").await;
    let hwm_after_scan = status_mib("VmHWM");
    assert!(
        matches!(scanned.outcome, ScanOutcome::Changed { .. }),
        "every measured scan sees a new commit"
    );
    let scan = scanned.took;
    let advanced = scanned.advance(store).await;
    Measured {
        scan,
        advance: advanced.took,
        outcome: advanced.outcome,
        changes: advanced.changes,
        hwm_after_scan,
    }
}

/// The blocking scan alone (no database), as `scan_and_advance` runs it.
fn scan_only(mirror: &Path, url: &str, known_head: Option<&str>) -> Duration {
    let job = ScanJob {
        mirror: mirror.to_owned(),
        remote: remote_spec(url),
        accessors: vec![Accessor::anonymous("bench")],
        branch: Some(BRANCH.into()),
        known_head: known_head.map(str::to_owned),
        manifest: None,
        snapshot_id: SnapshotId::generate(),
        unpin: Vec::new(),
        lfs: true,
        expand_submodules: false,
    };
    let started = Instant::now();
    let outcome = scan::scan(job).outcome.expect("the scan succeeds");
    let elapsed = started.elapsed();
    assert!(matches!(outcome, ScanOutcome::Changed { .. }));
    elapsed
}

/// The query `advance_snapshot` runs on every advance for the snapshot's
/// `file_count` / `total_bytes` (same SQL as `outbox::manifest::manifest_totals`).
async fn manifest_totals_query(store: &Store, repo: &RepoId) -> Duration {
    let started = Instant::now();
    store
        .db()
        .query_one_raw(Statement::from_string(
            store.backend(),
            format!(
                "SELECT COUNT(path) AS files, CAST(COALESCE(SUM(size), 0) AS BIGINT) AS bytes \
                 FROM manifest_entries WHERE repository_id = '{}'",
                repo.as_str()
            ),
        ))
        .await
        .expect("the totals query")
        .expect("a row");
    started.elapsed()
}

/// The scan's steps timed one by one on a second mirror (the engine's public
/// pieces, in the order `scan::scan` runs them).
#[derive(Default)]
struct Breakdown {
    open_and_head: Vec<f64>,
    fetch: Vec<f64>,
    diff_and_hash: Vec<f64>,
    pruned_diff: Vec<f64>,
    ignore_and_pin: Vec<f64>,
}

fn breakdown_step(breakdown: &mut Breakdown, mirror: &Path, url: &str, old: &str) {
    let spec = remote_spec(url);
    let t = Instant::now();
    let m = Mirror::open(mirror).expect("the mirror opens");
    let head = git::probe(&spec, Some(BRANCH)).expect("the remote head");
    breakdown.open_and_head.push(ms(t.elapsed()));
    let t = Instant::now();
    let new = m.fetch(&spec, &head.branch).expect("the fetch");
    breakdown.fetch.push(ms(t.elapsed()));
    let old = m.repo().revparse_single(old).expect("the old commit").id();
    let t = Instant::now();
    let delta = changes::diff_commits(m.repo(), old, new, &mut changes::Reading::files(true))
        .expect("the diff");
    breakdown.diff_and_hash.push(ms(t.elapsed()));
    assert_eq!(delta.len(), 10);
    let (old_hex, new_hex) = (old.to_string(), new.to_string());
    let t = Instant::now();
    let pruned = pruned_diff(&m, &old_hex, &new_hex);
    breakdown.pruned_diff.push(ms(t.elapsed()));
    assert_eq!(pruned, 10);
    let t = Instant::now();
    changes::ignore_rules(m.repo(), new).expect("ignore rules");
    changes::ignore_rules(m.repo(), old).expect("ignore rules");
    m.pin(&SnapshotId::generate().into_string(), new)
        .expect("the pin");
    breakdown.ignore_and_pin.push(ms(t.elapsed()));
}

/// Not the engine: a prototype tree diff that skips subtrees whose ids are
/// equal (libgit2's `diff_tree_to_tree` expands every tree, so its cost grows
/// with the repository, not the change), hashing what was added or changed.
/// Returns the number of changes, to check it against the engine's.
fn pruned_diff(m: &Mirror, old: &str, new: &str) -> usize {
    const TREE: i32 = 0o040_000;
    let regular = |mode: i32| mode == 0o100_644 || mode == 0o100_755;
    let repo = m.repo();
    let tree_of = |rev: &str| {
        repo.revparse_single(rev)
            .expect("a commit")
            .peel_to_tree()
            .expect("its tree")
            .id()
    };
    let mut stack = vec![(String::new(), Some(tree_of(old)), Some(tree_of(new)))];
    let (mut upserts, mut deletes) = (0, 0);
    while let Some((prefix, old_id, new_id)) = stack.pop() {
        let mut entries = BTreeMap::new();
        for (side, id) in [(0, old_id), (1, new_id)] {
            let Some(id) = id else { continue };
            let tree = repo.find_tree(id).expect("a tree");
            for entry in tree.iter() {
                let slot = entries
                    .entry(entry.name_bytes().to_vec())
                    .or_insert((None, None));
                let value = Some((entry.id(), entry.filemode()));
                if side == 0 {
                    slot.0 = value;
                } else {
                    slot.1 = value;
                }
            }
        }
        for (name, (before, after)) in entries {
            if before.is_some() && before == after {
                continue;
            }
            let path = format!("{prefix}{}", String::from_utf8_lossy(&name));
            let subtree = |side: Option<(_, i32)>| side.filter(|s| s.1 == TREE).map(|s| s.0);
            if subtree(before).is_some() || subtree(after).is_some() {
                stack.push((format!("{path}/"), subtree(before), subtree(after)));
            }
            let blob = |side: Option<(_, i32)>| side.filter(|s| regular(s.1)).map(|s| s.0);
            match (blob(before), blob(after)) {
                (old, Some(new)) if old != Some(new) => {
                    let content = repo.find_blob(new).expect("a blob");
                    let (sha, _, _) = changes::describe(content.content());
                    upserts += usize::from(!sha.is_empty() && !path.is_empty());
                }
                (Some(_), None) => deletes += 1,
                _ => {}
            }
        }
    }
    upserts + deletes
}

/// The baseline Herald avoids: walk the whole tree at `commit` and SHA-256
/// every file (what a scan without tree diff would do).
fn full_rescan(mirror: &Path, commit: &str) -> (Duration, usize) {
    let started = Instant::now();
    let m = Mirror::open(mirror).expect("the mirror opens");
    let repo = m.repo();
    let tree = repo
        .revparse_single(commit)
        .expect("the commit")
        .peel_to_tree()
        .expect("its tree");
    let files = changes::walk(&tree).expect("the walk");
    let mut hashed = 0;
    for (_, blob) in &files {
        let blob = repo.find_blob(*blob).expect("the blob");
        let (sha, _, _) = changes::describe(blob.content());
        hashed += usize::from(!sha.is_empty());
    }
    (started.elapsed(), hashed)
}

/// `git diff-tree -r --name-status old new`, spawned and timed.
fn diff_tree(bare: &Path, old: &str, new: &str) -> Duration {
    let started = Instant::now();
    let output = git(bare)
        .args(["diff-tree", "-r", "--name-status", old, new])
        .output()
        .expect("git diff-tree runs");
    let elapsed = started.elapsed();
    assert!(output.status.success(), "git diff-tree failed");
    assert_eq!(
        output
            .stdout
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .count(),
        10
    );
    elapsed
}

// -------------------------------------------------------------------- run

fn run(options: &Options, backend: Backend) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let dir = tempfile::tempdir().expect("a temp dir");
    let tick = clock_ticks_per_second();

    println!("## {} — {} files\n", backend.name(), options.files);
    println!("Load average at start: {}.\n", load_average());
    let repo = generate(dir.path(), "main", options.files, options.iterations);
    println!(
        "Repository: {} files ({} binary) in {} directories, {:.1} MiB of content, \
         pack {:.1} MiB; generated with git fast-import in {:.1} s.\n",
        repo.files,
        repo.binaries,
        repo.files.div_ceil(FILES_PER_DIR),
        repo.bytes as f64 / 1048576.0,
        dir_size(&repo.bare.join("objects")) as f64 / 1048576.0,
        repo.generated_in.as_secs_f64(),
    );

    let daemon = GitDaemon::try_serve(dir.path());
    let git_url = daemon.as_ref().map(|d| d.url_of("main.git"));
    let (url, label, other, other_label) = if options.git_transport {
        let git_url = git_url.expect("--transport git needs `git daemon`");
        (git_url, "git://", Some(repo.url.clone()), "file://")
    } else {
        (
            repo.url.clone(),
            "file://",
            git_url,
            "git:// from `git daemon`",
        )
    };
    println!("Herald fetches over {label}.\n");

    // 1. Initial snapshot ------------------------------------------------
    let database = runtime.block_on(BenchDatabase::create(backend));
    let database_url = database.url_in(dir.path(), "main.db");
    let (store, repo_id) = runtime.block_on(store_with_subscribers(&database_url, &url, 1));
    let mirror = dir.path().join("mirror.git");
    let rss_before = status_mib("VmRSS");
    let reset = reset_peak_rss();
    let cpu_before = cpu_ticks();
    let started = Instant::now();
    let initial = runtime.block_on(scan_and_advance(&store, &repo_id, &url, &mirror));
    let wall = started.elapsed();
    let cpu = (cpu_ticks() - cpu_before) as f64 / tick;
    let peak = status_mib("VmHWM");
    let manifest_rows = runtime.block_on(count(&store, "manifest_entries"));
    assert_eq!(initial.outcome.events as usize, repo.files);

    // Where the initial scan's time goes, on a second mirror, and the same
    // scan over the other transport on a third.
    let mirror2 = dir.path().join("mirror2.git");
    let spec = remote_spec(&url);
    let t = Instant::now();
    let m2 = Mirror::open(&mirror2).expect("the mirror opens");
    let head = git::probe(&spec, Some(BRANCH)).expect("the remote head");
    let first = m2.fetch(&spec, &head.branch).expect("the fetch");
    let fetch_time = t.elapsed();
    let t = Instant::now();
    let delta = changes::diff_against_manifest(
        m2.repo(),
        &HashMap::new(),
        first,
        &mut changes::Reading::files(true),
    )
    .expect("the walk");
    let walk_time = t.elapsed();
    assert_eq!(delta.upserts().len(), repo.files);
    drop(delta);
    drop(m2);
    let mirror3 = dir.path().join("mirror3.git");
    let other_initial = other.as_deref().map(|u| scan_only(&mirror3, u, None));

    println!("### 1. Initial snapshot (1 subscription)\n");
    println!("| measure | value |\n|---|---|");
    println!("| wall time | {:.2} s |", wall.as_secs_f64());
    println!(
        "| — scan (head check, fetch {} objects, walk, hash) | {:.1} ms |",
        repo.files,
        initial.scan.as_secs_f64() * 1e3
    );
    println!(
        "| — · of which head check + fetch (re-run on a second mirror) | {:.1} ms |",
        fetch_time.as_secs_f64() * 1e3
    );
    println!(
        "| — · of which walk + hash (re-run on a second mirror) | {:.1} ms |",
        walk_time.as_secs_f64() * 1e3
    );
    println!(
        "| — advance_snapshot ({} manifest rows + {} events) | {:.1} ms |",
        manifest_rows,
        initial.outcome.events,
        initial.advance.as_secs_f64() * 1e3
    );
    if let Some(elapsed) = other_initial {
        println!(
            "| (same scan alone over {other_label}, for comparison) | {:.1} ms |",
            elapsed.as_secs_f64() * 1e3
        );
    }
    println!("| CPU time, user+sys (this process) | {cpu:.2} s |");
    println!("| RSS before | {rss_before:.0} MiB |");
    if reset {
        println!(
            "| peak RSS after the scan (VmHWM) | {:.0} MiB |",
            initial.hwm_after_scan
        );
        println!("| peak RSS, whole snapshot (VmHWM) | {peak:.0} MiB |");
    } else {
        println!("| peak RSS (VmHWM; clear_refs refused, so since start) | {peak:.0} MiB |");
    }
    println!(
        "| mirror on disk after the fetch | {:.1} MiB |\n",
        dir_size(&mirror) as f64 / 1048576.0
    );

    // 2. Successive 10-file commits ---------------------------------------
    let mut herald = Vec::new();
    let mut scans = Vec::new();
    let mut advances = Vec::new();
    let mut totals = Vec::new();
    let mut other_scans = Vec::new();
    let mut diff_trees = Vec::new();
    let mut breakdown = Breakdown::default();
    for k in 1..=options.iterations {
        set_remote_head(&repo.bare, &repo.commits[k]);
        let step = runtime.block_on(scan_and_advance(&store, &repo_id, &url, &mirror));
        assert_eq!(step.changes, 10);
        assert_eq!(step.outcome.events, 10);
        herald.push(ms(step.scan + step.advance));
        scans.push(ms(step.scan));
        advances.push(ms(step.advance));
        totals.push(ms(runtime.block_on(manifest_totals_query(&store, &repo_id))));
        breakdown_step(&mut breakdown, &mirror2, &url, &repo.commits[k - 1]);
        if let Some(other) = &other {
            other_scans.push(ms(scan_only(&mirror3, other, Some(&repo.commits[k - 1]))));
        }
        diff_trees.push(ms(diff_tree(
            &repo.bare,
            &repo.commits[k - 1],
            &repo.commits[k],
        )));
    }
    let final_commit = &repo.commits[options.iterations];
    let mut rescans = Vec::new();
    for _ in 0..options.rescans {
        let (elapsed, hashed) = full_rescan(&mirror, final_commit);
        assert!(hashed > 0);
        rescans.push(ms(elapsed));
    }
    runtime.block_on(store.close()).ok();
    drop(database);

    let herald_median = median(&herald);
    let vs_git = herald_median / median(&diff_trees);
    let vs_rescan = median(&rescans) / herald_median;
    println!(
        "### 2. A 10-file commit (modify 4, add 3, delete 3), {} successive commits\n",
        options.iterations
    );
    println!("| | median | min |\n|---|---|---|");
    println!(
        "| **Herald: scan + advance_snapshot** | **{:.1} ms** | {:.1} ms |",
        herald_median,
        min(&herald)
    );
    println!(
        "| — scan (blocking part, {label}) | {:.1} ms | {:.1} ms |",
        median(&scans),
        min(&scans)
    );
    for (name, values) in [
        (
            "— · open mirror + remote head check",
            &breakdown.open_and_head,
        ),
        ("— · fetch", &breakdown.fetch),
        ("— · tree diff + hash 7 blobs", &breakdown.diff_and_hash),
        (
            "— · *prototype, not the engine*: diff skipping equal subtrees + hash",
            &breakdown.pruned_diff,
        ),
        ("— · ignore rules + pin", &breakdown.ignore_and_pin),
    ] {
        println!(
            "| {name} (second mirror) | {:.1} ms | {:.1} ms |",
            median(values),
            min(values)
        );
    }
    println!(
        "| — advance_snapshot (10 events) | {:.1} ms | {:.1} ms |",
        median(&advances),
        min(&advances)
    );
    println!(
        "| — · manifest COUNT/SUM it runs (query alone) | {:.1} ms | {:.1} ms |",
        median(&totals),
        min(&totals)
    );
    if !other_scans.is_empty() {
        println!(
            "| scan alone over {other_label}, third mirror | {:.1} ms | {:.1} ms |",
            median(&other_scans),
            min(&other_scans)
        );
    }
    println!(
        "| `git diff-tree -r --name-status` (spawned) | {:.1} ms | {:.1} ms |",
        median(&diff_trees),
        min(&diff_trees)
    );
    println!(
        "| full rescan: walk + SHA-256 of {} files ({} runs) | {:.0} ms | {:.0} ms |\n",
        options.files,
        options.rescans,
        median(&rescans),
        min(&rescans)
    );
    println!(
        "Herald per commit, in order (ms): {}.\n",
        herald
            .iter()
            .map(|v| format!("{v:.0}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!("| target | result | |\n|---|---|---|");
    if reset {
        println!(
            "| initial snapshot peak RSS < 200 MB | {peak:.0} MiB ({:.0} MB) | {} |",
            peak * 1.048_576,
            met(peak * 1.048_576 < 200.0)
        );
    }
    println!(
        "| Herald ≤ 2× `git diff-tree` | {vs_git:.1}× | {} |",
        met(vs_git <= 2.0)
    );
    println!(
        "| Herald ≥ 100× faster than a full rescan | {vs_rescan:.1}× | {} |\n",
        met(vs_rescan >= 100.0)
    );

    // 3. Fan-out ------------------------------------------------------------
    if options.fanout {
        let git_base = daemon
            .as_ref()
            .filter(|_| options.git_transport)
            .map(|d| d.url_of(""));
        fan_out(options, backend, dir.path(), git_base.as_deref(), &runtime);
    }
    drop(daemon);
    println!("Load average at end: {}.\n", load_average());
}

/// `git_base`: fetch over git:// from this URL prefix instead of file://.
fn fan_out(
    options: &Options,
    backend: Backend,
    dir: &Path,
    git_base: Option<&str>,
    runtime: &tokio::runtime::Runtime,
) {
    let repo = generate(dir, "fanout", options.fanout_files, options.fanout_commits);
    let url = git_base.map_or_else(|| repo.url.clone(), |base| format!("{base}fanout.git"));
    println!(
        "### 3. Fan-out: one repository of {} files, N subscribed apps\n",
        repo.files
    );
    println!(
        "Each subscription gets every file as an event on the initial snapshot \
         (N × {} rows), then {} successive 10-file commits are measured.\n",
        repo.files, options.fanout_commits
    );
    println!(
        "| apps | initial: scan | initial: advance_snapshot | initial events | \
         10-file commit: scan (median) | advance_snapshot (median) | events per commit |"
    );
    println!("|---|---|---|---|---|---|---|");
    for &apps in &options.apps {
        set_remote_head(&repo.bare, &repo.commits[0]);
        let database = runtime.block_on(BenchDatabase::create(backend));
        let database_url = database.url_in(dir, &format!("fanout{apps}.db"));
        let (store, repo_id) = runtime.block_on(store_with_subscribers(&database_url, &url, apps));
        let mirror = dir.join(format!("fanout{apps}.git"));
        let initial = runtime.block_on(scan_and_advance(&store, &repo_id, &url, &mirror));
        assert_eq!(initial.outcome.events as usize, apps * repo.files);
        let mut scans = Vec::new();
        let mut advances = Vec::new();
        let mut events = 0;
        for k in 1..=options.fanout_commits {
            set_remote_head(&repo.bare, &repo.commits[k]);
            let step = runtime.block_on(scan_and_advance(&store, &repo_id, &url, &mirror));
            scans.push(ms(step.scan));
            advances.push(ms(step.advance));
            events = step.outcome.events;
            assert_eq!(events as usize, apps * 10);
        }
        runtime.block_on(store.close()).ok();
        drop(database);
        println!(
            "| {apps} | {:.2} s | {:.2} s | {} | {:.1} ms | {:.1} ms | {events} |",
            initial.scan.as_secs_f64(),
            initial.advance.as_secs_f64(),
            initial.outcome.events,
            median(&scans),
            median(&advances),
        );
    }
    println!();
}
