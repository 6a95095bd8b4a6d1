//! Herald under faults from outside while versions of a repository flow:
//! SIGKILLs at random instants, PostgreSQL connections cut, the database gone
//! for a while, a receiver down for long, a git remote down then back. Each
//! test ends with the same checks ([`assert_converged`]): every receiver holds
//! exactly the repository's last tree, no webhook carries older content of a
//! file after newer content, a repeat carries the webhook-id of the first
//! time, the webhooks follow the outbox's order, and no event is dead.
//!
//! The defaults keep each test around a minute; `HERALD_FAULT_KILLS`,
//! `HERALD_FAULT_VERSIONS`, `HERALD_FAULT_FILES`, `HERALD_FAULT_SEED` and
//! `HERALD_FAULT_OUTAGE_SECS` make longer runs (CONTRIBUTING.md, "Fault tests").

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use reqwest::{Method, StatusCode};
use sea_orm::{ConnectionTrait, Database, Statement};
use serde_json::Value;
use tokio::time::Instant;

use crate::cluster::{tree_of_repository, version};
use crate::delivery::{engine_restart, tree_of};
use crate::gitserver::{GitDaemon, Served, TestRepo};
use crate::helpers::{Rig, TestApp, TestClient, TestDatabase, engine_with, onboard, watch};
use crate::receiver::{Received, Receiver, Reply};

/// How long a fault test waits for Herald to converge once the fault is
/// over: generous, for a busy machine.
const CONVERGENCE: Duration = Duration::from_secs(180);

/// A number from the environment (a longer run), or its default.
fn setting(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

/// The RNG of a test, seeded from `HERALD_FAULT_SEED` or at random; the seed
/// is printed so a failing run can be replayed.
fn seeded(test: &str) -> (StdRng, u64) {
    let seed = setting("HERALD_FAULT_SEED", rand::random());
    println!("{test}: HERALD_FAULT_SEED={seed}");
    (StdRng::seed_from_u64(seed), seed)
}

/// A repository whose files move through versions, served by a git daemon
/// that can be stopped and brought back on the same port.
pub(crate) struct Flow {
    pub(crate) repo: TestRepo,
    served: Served,
    daemon: Option<GitDaemon>,
    port: u16,
    files: usize,
    version: u32,
}

impl Flow {
    /// `files` files at version 0, served.
    pub(crate) fn new(files: usize) -> Flow {
        let repo = TestRepo::new("main");
        for f in 0..files {
            repo.write(&Self::path(f), Self::content(f, 0));
        }
        repo.commit("v0");
        let served = Served::new(&repo, "flow.git");
        let daemon = GitDaemon::serve(served.root());
        Flow {
            port: daemon.port(),
            repo,
            served,
            daemon: Some(daemon),
            files,
            version: 0,
        }
    }

    fn path(f: usize) -> String {
        format!("docs/d{}/f{f:03}.md", f % 10)
    }

    /// The content carries its version (read back by [`version`]).
    fn content(f: usize, v: u32) -> String {
        format!("file {f} v{v}\n")
    }

    /// Commits and pushes the next version: a third of the files rewritten,
    /// a few deleted, the deleted ones back; its number.
    pub(crate) fn next(&mut self) -> u32 {
        self.version += 1;
        let v = self.version as usize;
        for f in 0..self.files {
            let path = Self::path(f);
            let present = self.repo.path().join(&path).exists();
            if present && (f * 7 + v).is_multiple_of(13) {
                self.repo.remove(&path);
            } else if !present || (f + v).is_multiple_of(3) {
                self.repo.write(&path, Self::content(f, self.version));
            }
        }
        self.repo.commit(&format!("v{v}"));
        self.served.push(&self.repo, "HEAD:refs/heads/main", false);
        self.version
    }

    pub(crate) fn url(&self) -> String {
        format!("git://127.0.0.1:{}/flow.git", self.port)
    }

    /// The remote goes away: its port refuses connections.
    fn stop_remote(&mut self) {
        drop(self.daemon.take().expect("the remote is up"));
    }

    /// The remote is back on the same port.
    fn restart_remote(&mut self) {
        assert!(self.daemon.is_none(), "the remote is down");
        self.daemon = Some(GitDaemon::serve_on(self.served.root(), self.port));
    }
}

/// One app watching the flow, with what its receiver(s) accepted.
struct Subscriber {
    /// `None` while it is stopped (its port refuses connections).
    receiver: Option<Receiver>,
    /// What earlier receivers on the same port accepted (one that was
    /// stopped to refuse connections).
    history: Vec<Received>,
    client: TestClient,
    repository_id: String,
}

impl Subscriber {
    async fn new(app: &TestApp, flow: &Flow, name: &str, receiver: Receiver) -> Subscriber {
        let client = onboard(app, &receiver, name).await;
        let repository_id = watch(app, &client, &flow.url()).await;
        Subscriber {
            receiver: Some(receiver),
            history: Vec::new(),
            client,
            repository_id,
        }
    }

    /// Every accepted webhook about the flow's repository, in arrival order.
    fn accepted(&self) -> Vec<Received> {
        self.history
            .iter()
            .cloned()
            .chain(self.receiver.iter().flat_map(Receiver::accepted))
            .filter(|r| r.json()["repository"]["repository_id"] == self.repository_id.as_str())
            .collect()
    }

    /// Stops the receiver (keeping what it accepted); its port.
    fn stop_receiver(&mut self) -> u16 {
        let receiver = self.receiver.take().expect("the receiver runs");
        self.history.extend(receiver.accepted());
        url::Url::parse(&receiver.base_url)
            .expect("a URL")
            .port()
            .expect("a port")
    }

    /// A receiver on the port of the stopped one.
    async fn start_receiver(&mut self, port: u16) -> &Receiver {
        assert!(self.receiver.is_none(), "the receiver is stopped");
        self.receiver.insert(Receiver::start_on(port).await)
    }

    fn receiver(&self) -> &Receiver {
        self.receiver.as_ref().expect("the receiver runs")
    }

    fn holds(&self, flow: &Flow) -> bool {
        tree_of_repository(&self.accepted(), &self.repository_id) == tree_of(&flow.repo)
    }
}

/// Waits (bounded) until every subscriber holds exactly the flow's tree.
async fn wait_for_trees(app: &TestApp, flow: &Flow, subscribers: &[&Subscriber]) {
    let deadline = Instant::now() + CONVERGENCE;
    for subscriber in subscribers {
        while !subscriber.holds(flow) {
            if Instant::now() >= deadline {
                panic!(
                    "{}: the receiver never got the tree of v{} ({}); overview: {}\nleases: {}\nlogs:\n{}",
                    subscriber.client.app_id,
                    flow.version,
                    difference(subscriber, flow),
                    overview(app).await,
                    leases(app).await,
                    app.logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Where what a subscriber's webhooks built differs from the flow's tree:
/// each path with the version it holds and the version it should hold.
fn difference(subscriber: &Subscriber, flow: &Flow) -> String {
    let accepted = subscriber.accepted();
    let got = tree_of_repository(&accepted, &subscriber.repository_id);
    let want = tree_of(&flow.repo);
    let held = |tree: &std::collections::BTreeMap<String, Vec<u8>>, path: &String| {
        tree.get(path).map_or_else(
            || "absent".to_owned(),
            |content| format!("v{}", version(&String::from_utf8_lossy(content))),
        )
    };
    let paths: std::collections::BTreeSet<&String> = got.keys().chain(want.keys()).collect();
    let differing: Vec<String> = paths
        .into_iter()
        .filter(|path| got.get(*path) != want.get(*path))
        .map(|path| format!("{path}: {} for {}", held(&got, path), held(&want, path)))
        .collect();
    format!(
        "{} paths differ, {} webhooks accepted: {}",
        differing.len(),
        accepted.len(),
        differing
            .iter()
            .take(20)
            .cloned()
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// Who holds which scan and delivery lease, until when, beside the time:
/// what a test that waited in vain prints.
async fn leases(app: &TestApp) -> String {
    let db = app.database().await;
    let sql = "SELECT 'scan ' || id || ' ' || COALESCE(scan_lease_owner, '-') || ' ' || \
               COALESCE(CAST(scan_lease_until AS TEXT), '-') AS line FROM repositories \
               UNION ALL SELECT 'delivery ' || id || ' ' || COALESCE(delivery_lease_owner, '-') \
               || ' ' || COALESCE(CAST(delivery_lease_until AS TEXT), '-') FROM subscriptions";
    let lines = match db
        .query_all_raw(Statement::from_string(db.get_database_backend(), sql))
        .await
    {
        Ok(rows) => rows
            .iter()
            .map(|row| {
                row.try_get::<String>("", "line")
                    .unwrap_or_else(|e| e.to_string())
            })
            .collect::<Vec<_>>()
            .join("; "),
        Err(err) => format!("unreadable ({err})"),
    };
    format!("now {} ms; {lines}", actors::clock::now_ms())
}

pub(crate) async fn overview(app: &TestApp) -> Value {
    let (status, body) = app.admin(Method::GET, "/admin/api/overview", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["data"].clone()
}

/// The endpoint an outbox row's kind goes to.
pub(crate) fn endpoint(kind: &str) -> &str {
    match kind {
        "created" => "create",
        "updated" => "update",
        "deleted" => "delete",
        other => other,
    }
}

/// What every fault test asserts at the end; the number of repeats (a
/// webhook accepted more than once).
async fn assert_converged(app: &TestApp, flow: &Flow, subscribers: &[&Subscriber]) -> usize {
    wait_for_trees(app, flow, subscribers).await;

    // Nothing left to send, nothing dead, no app disabled (admin API).
    let deadline = Instant::now() + CONVERGENCE;
    let overview = loop {
        let overview = overview(app).await;
        if overview["events"]["pending"] == 0 && overview["in_flight"] == 0 {
            break overview;
        }
        assert!(
            Instant::now() < deadline,
            "events still pending: {overview}\nlogs:\n{}",
            app.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(overview["events"]["dead"], 0, "{overview}");
    assert_eq!(overview["failed_notifications"], 0, "{overview}");
    assert_eq!(overview["subscriptions"]["failed"], 0, "{overview}");
    assert_eq!(overview["apps"]["disabled"], 0, "{overview}");
    let (status, failed) = app
        .admin(Method::GET, "/admin/api/notifications/failed", None)
        .await;
    assert_eq!(status, StatusCode::OK, "{failed}");
    assert_eq!(failed["data"]["pagination"]["total"], 0, "{failed}");

    let mut repeats = 0;
    for subscriber in subscribers {
        let accepted = subscriber.accepted();
        let view = app
            .repository(&subscriber.client, &subscriber.repository_id)
            .await;
        assert_eq!(view["failed_events"], 0, "{view}");
        assert_ne!(view["status"], "failed", "{view}");

        // No older content after newer, repeats included.
        let mut latest: HashMap<String, u32> = HashMap::new();
        for request in &accepted {
            let file = request.json()["file"].clone();
            let (Some(path), Some(content)) = (file["path"].as_str(), file["content"].as_str())
            else {
                continue;
            };
            let v = version(content);
            let before = latest.insert(path.to_owned(), v).unwrap_or(0);
            assert!(
                v >= before,
                "{path}: v{v} arrived after v{before} (older content after newer)"
            );
        }

        // A repeat is the same webhook: one id for one change, the event's.
        let mut ids: HashMap<String, HashSet<String>> = HashMap::new();
        for request in &accepted {
            let body = request.json();
            let id = request.header("webhook-id").to_owned();
            assert_eq!(
                body["event_id"],
                id.as_str(),
                "the webhook-id is the event's"
            );
            let change = match request.endpoint.as_str() {
                "sync_failed" => id.clone(),
                endpoint => format!(
                    "{endpoint} {} {} {}",
                    body["file"]["path"], body["file"]["sha"], body["commit_sha"]
                ),
            };
            ids.entry(change).or_default().insert(id);
        }
        for (change, ids) in &ids {
            assert_eq!(ids.len(), 1, "{change} came with several ids: {ids:?}");
        }
        repeats += accepted.len() - ids.len();

        // First sightings follow the outbox, event for event.
        let mut seen = HashSet::new();
        let delivered: Vec<(String, Option<String>)> = accepted
            .iter()
            .filter(|r| seen.insert(r.header("webhook-id").to_owned()))
            .map(|r| {
                let path = r.json()["file"]["path"].as_str().map(str::to_owned);
                (r.endpoint.clone(), path)
            })
            .collect();
        let outbox: Vec<(String, Option<String>)> = app
            .outbox(&subscriber.client, &subscriber.repository_id)
            .await
            .into_iter()
            .map(|e| (endpoint(&e.kind).to_owned(), e.path))
            .collect();
        assert_eq!(delivered.len(), outbox.len(), "one webhook per event");
        assert!(
            delivered == outbox,
            "the webhooks follow the outbox's order"
        );
    }
    repeats
}

/// A receiver that answers 200 after a short delay, so that faults land
/// in the middle of deliveries.
async fn slow_receiver() -> Receiver {
    let receiver = Receiver::start().await;
    receiver.fallback(Some(Reply {
        status: 200,
        retry_after: None,
        delay: Duration::from_millis(3),
    }));
    receiver
}

#[tokio::test]
async fn sigkills_at_random_instants_lose_reorder_and_age_nothing() {
    let kills = setting("HERALD_FAULT_KILLS", 20);
    let versions = setting("HERALD_FAULT_VERSIONS", 20);
    let files = setting("HERALD_FAULT_FILES", 150) as usize;
    let (mut rng, seed) = seeded("sigkills");
    let mut flow = Flow::new(files);
    let app = engine_with(&[]).await;
    let subscriber = Subscriber::new(&app, &flow, "acme", slow_receiver().await).await;

    let started = Instant::now();
    let mut app = Some(app);
    for round in 0..kills.max(versions) {
        if round < versions {
            tokio::time::sleep(Duration::from_millis(rng.random_range(0..500))).await;
            flow.next();
        }
        if round < kills {
            tokio::time::sleep(Duration::from_millis(rng.random_range(0..1500))).await;
            let (dir, database) = app.take().expect("herald runs").kill().await;
            app = Some(engine_restart(dir, database).await);
        }
    }
    let app = app.expect("herald runs");
    let repeats = assert_converged(&app, &flow, &[&subscriber]).await;
    println!(
        "seed {seed}: {kills} SIGKILLs, {versions} versions of {files} files, {} webhooks, \
         {repeats} repeats (same webhook-id), {:?}",
        subscriber.accepted().len(),
        started.elapsed()
    );
}

/// A SIGKILL in the middle of a fetch leaves git's lock files in the mirror
/// (`{file}.lock` beside each file git was rewriting), and git refuses to
/// write while one is there. The restarted Herald removes them, logs it,
/// and the next push arrives.
#[tokio::test]
async fn locks_a_killed_fetch_left_in_the_mirror_stop_no_later_scan() {
    let repo = TestRepo::new("main");
    repo.write("a.md", "one\n");
    repo.commit("one");
    let rig = Rig::serve(&repo).await;
    let (app, _, id) = rig.watched("acme", &[]).await;
    rig.receiver
        .wait_for("the first snapshot", |r| r.len() == 1)
        .await;

    let mirror = app.data_path().join("mirrors").join(format!("{id}.git"));
    let (dir, database) = app.kill().await;
    let locks = [
        "refs/heads/main.lock",
        "shallow.lock",
        "packed-refs.lock",
        "config.lock",
        "FETCH_HEAD.lock",
    ]
    .map(|lock| mirror.join(lock));
    for lock in &locks {
        std::fs::write(lock, "").expect("a lock file in the mirror");
    }
    repo.write("a.md", "two\n");
    repo.commit("two");
    rig.served.push(&repo, "HEAD:refs/heads/main", false);

    let app = engine_restart(dir, database).await;
    // The first snapshot's webhook may come again first: the kill can
    // land before its success was written.
    let accepted = rig
        .receiver
        .wait_for("the push after the restart", |r| {
            r.iter().any(|r| r.endpoint == "update")
        })
        .await;
    let update = accepted.last().expect("the update");
    assert_eq!(update.endpoint, "update");
    assert_eq!(update.json()["file"]["content"], "two\n");
    for lock in &locks {
        assert!(!lock.exists(), "{} is still there", lock.display());
    }
    assert!(
        app.logs()
            .contains("removed the lock files a stopped writer left in the mirror"),
        "the removal is logged"
    );
}

/// Terminates the backends of one PostgreSQL database every `period` until
/// stopped; counts the rounds that cut at least one connection.
struct Cutter {
    stop: Arc<AtomicBool>,
    cuts: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Cutter {
    async fn start(database_url: &str, period: Duration) -> Cutter {
        let url = url::Url::parse(database_url).expect("a URL");
        let name = url.path().trim_start_matches('/').to_owned();
        let server = std::env::var("TEST_DATABASE_URL").expect("PostgreSQL");
        let admin = Database::connect(actors::test_support::database::with_database(
            &server, "postgres",
        ))
        .await
        .expect("the server's maintenance database");
        let stop = Arc::new(AtomicBool::new(false));
        let cuts = Arc::new(AtomicUsize::new(0));
        let (stopped, counted) = (stop.clone(), cuts.clone());
        let task = tokio::spawn(async move {
            let sql = format!(
                "SELECT COUNT(*) FILTER (WHERE pg_terminate_backend(pid)) AS n \
                 FROM pg_stat_activity WHERE datname = '{name}' AND pid <> pg_backend_pid()"
            );
            while !stopped.load(Ordering::SeqCst) {
                let row = admin
                    .query_one_raw(Statement::from_string(admin.get_database_backend(), &sql))
                    .await
                    .expect("pg_terminate_backend runs")
                    .expect("a count");
                let n: i64 = row.try_get("", "n").expect("column");
                if n > 0 {
                    counted.fetch_add(1, Ordering::SeqCst);
                }
                tokio::time::sleep(period).await;
            }
            admin.close().await.ok();
        });
        Cutter { stop, cuts, task }
    }

    /// How many rounds cut connections so far.
    fn cuts(&self) -> usize {
        self.cuts.load(Ordering::SeqCst)
    }

    /// Stops cutting; how many rounds cut connections.
    async fn stop(self) -> usize {
        self.stop.store(true, Ordering::SeqCst);
        let cuts = self.cuts.clone();
        self.task.await.expect("the cutter ends");
        cuts.load(Ordering::SeqCst)
    }
}

#[tokio::test]
async fn postgres_connections_cut_during_delivery_lose_nothing() {
    let database = TestDatabase::create().await;
    let Some(url) = database.url.clone() else {
        eprintln!(
            "skipped: cutting database connections needs PostgreSQL (TEST_DATABASE_URL); \
             SQLite has none to cut"
        );
        return;
    };
    let versions = setting("HERALD_FAULT_VERSIONS", 20);
    let files = setting("HERALD_FAULT_FILES", 150) as usize;
    let mut flow = Flow::new(files);
    let app = TestApp::builder().fast().spawn_with(database).await;
    let subscriber = Subscriber::new(&app, &flow, "acme", slow_receiver().await).await;

    let started = Instant::now();
    let cutter = Cutter::start(&url, Duration::from_millis(400)).await;
    for _ in 0..versions {
        flow.next();
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Cuts go on while the versions are delivered, up to the number asked
    // (or until the receiver holds the last tree).
    let wanted = setting("HERALD_FAULT_CUTS", 50) as usize;
    let deadline = Instant::now() + CONVERGENCE;
    while cutter.cuts() < wanted && !subscriber.holds(&flow) {
        assert!(Instant::now() < deadline, "the cuts stopped");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let cuts = cutter.stop().await;
    let stopped = Instant::now();
    wait_for_trees(&app, &flow, &[&subscriber]).await;
    let converged = stopped.elapsed();
    let repeats = assert_converged(&app, &flow, &[&subscriber]).await;
    assert!(
        cuts as u64 >= versions,
        "the test cut connections ({cuts} times)"
    );
    println!(
        "{cuts} cuts, {versions} versions of {files} files, converged {converged:?} after the \
         last cut, {repeats} repeats, {:?} in all",
        started.elapsed()
    );
}

/// A TCP proxy between Herald and PostgreSQL that can be cut: every
/// connection dropped and new ones refused (its port closed), then restored
/// on the same port. The shared server stays up for the other tests.
struct Proxy {
    port: u16,
    up: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    async fn start(target: String) -> Proxy {
        let listener = Self::listen(0);
        let port = listener.local_addr().expect("an address").port();
        let (up, mut state) = tokio::sync::watch::channel(true);
        let task = tokio::spawn(async move {
            let mut listener = Some(listener);
            let mut connections = tokio::task::JoinSet::new();
            loop {
                let Some(open) = &listener else {
                    // Cut: wait for the restore, then listen again.
                    if state.wait_for(|up| *up).await.is_err() {
                        return;
                    }
                    listener = Some(Self::listen(port));
                    continue;
                };
                tokio::select! {
                    accepted = open.accept() => {
                        let Ok((mut inbound, _)) = accepted else { continue };
                        let target = target.clone();
                        connections.spawn(async move {
                            if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                            }
                        });
                    }
                    changed = state.changed() => {
                        if changed.is_err() {
                            return;
                        }
                        if !*state.borrow_and_update() {
                            connections.abort_all();
                            while connections.join_next().await.is_some() {}
                            listener = None;
                        }
                    }
                    Some(_) = connections.join_next(), if !connections.is_empty() => {}
                }
            }
        });
        Proxy { port, up, task }
    }

    fn listen(port: u16) -> tokio::net::TcpListener {
        let socket = tokio::net::TcpSocket::new_v4().expect("a socket");
        socket.set_reuseaddr(true).expect("SO_REUSEADDR");
        socket
            .bind(std::net::SocketAddr::from(([127, 0, 0, 1], port)))
            .expect("the proxy's port");
        socket.listen(64).expect("listening")
    }

    fn cut(&self) {
        self.up.send_replace(false);
    }

    fn restore(&self) {
        self.up.send_replace(true);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// `/ready`'s status, or `None` when it does not answer within 5 s.
async fn readiness(app: &TestApp) -> Option<StatusCode> {
    app.client
        .get(app.url("/ready"))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .ok()
        .map(|response| response.status())
}

/// Polls `/ready` until it answers `expected`; how long that took.
async fn wait_ready(app: &TestApp, expected: StatusCode, within: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let status = readiness(app).await;
        if status == Some(expected) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < within,
            "/ready did not answer {expected} within {within:?} (last: {status:?}); logs:\n{}",
            app.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_database_outage_makes_herald_unready_and_it_converges_after() {
    let database = TestDatabase::create().await;
    let Some(url) = database.url.clone() else {
        // SQLite is a file Herald holds open in its own data directory: no
        // outside event takes it away while the process runs (a lock held by
        // another process only delays writers by the busy timeout).
        eprintln!("skipped: the database outage runs on PostgreSQL only (TEST_DATABASE_URL)");
        return;
    };
    let outage = Duration::from_secs(setting("HERALD_FAULT_OUTAGE_SECS", 15));
    let files = setting("HERALD_FAULT_FILES", 150) as usize;
    let mut proxied = url::Url::parse(&url).expect("a URL");
    let target = format!(
        "{}:{}",
        proxied.host_str().expect("a host"),
        proxied.port().unwrap_or(5432)
    );
    let proxy = Proxy::start(target).await;
    proxied.set_port(Some(proxy.port)).expect("a port");
    let mut flow = Flow::new(files);
    let app = TestApp::builder()
        .fast()
        .env("HERALD__DATABASE__URL", proxied.as_str())
        .spawn_with(database)
        .await;
    let subscriber = Subscriber::new(&app, &flow, "acme", slow_receiver().await).await;
    wait_ready(&app, StatusCode::OK, Duration::from_secs(30)).await;
    flow.next();

    // The database goes away in the middle of the flow.
    proxy.cut();
    let cut = Instant::now();
    let unready = wait_ready(&app, StatusCode::SERVICE_UNAVAILABLE, outage).await;
    for _ in 0..3 {
        flow.next();
    }
    tokio::time::sleep(outage.saturating_sub(cut.elapsed())).await;
    assert_eq!(
        readiness(&app).await,
        Some(StatusCode::SERVICE_UNAVAILABLE),
        "still unready at the end of the outage"
    );
    let (status, _) = app.call(Method::GET, "/health", None, None).await;
    assert_eq!(status, StatusCode::OK, "the process lived through it");

    proxy.restore();
    let restored = Instant::now();
    let ready = wait_ready(&app, StatusCode::OK, CONVERGENCE).await;
    flow.next();
    wait_for_trees(&app, &flow, &[&subscriber]).await;
    let converged = restored.elapsed();
    let repeats = assert_converged(&app, &flow, &[&subscriber]).await;
    println!(
        "/ready 503 {unready:?} after the cut; ready {ready:?} and converged {converged:?} \
         after a {outage:?} outage; {repeats} repeats"
    );
}

/// Polls the admin overview until `done` holds.
async fn wait_overview(app: &TestApp, what: &str, done: impl Fn(&Value) -> bool) {
    let deadline = Instant::now() + CONVERGENCE;
    loop {
        let overview = overview(app).await;
        if done(&overview) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "gave up waiting for {what}: {overview}\nlogs:\n{}",
            app.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_receiver_down_for_long_gets_everything_in_order_when_back() {
    let versions = setting("HERALD_FAULT_VERSIONS", 10);
    let files = setting("HERALD_FAULT_FILES", 60) as usize;
    // Hours compressed: a cooldown of 100 ms (growing to 3.2 s), three
    // attempts to make an event dead were attempts counted while the
    // endpoint is down.
    let app = engine_with(&[
        ("HERALD__BREAKER__DELIVERY__THRESHOLD", "2"),
        ("HERALD__BREAKER__DELIVERY__COOLDOWN", "100ms"),
        ("HERALD__DELIVERY__MAX_ATTEMPTS", "3"),
        ("HERALD__DELIVERY__DEAD_RETRY_INTERVAL", "0"),
    ])
    .await;
    let mut flow = Flow::new(files);
    let mut down = Subscriber::new(&app, &flow, "down", Receiver::start().await).await;
    let healthy = Subscriber::new(&app, &flow, "healthy", slow_receiver().await).await;
    wait_for_trees(&app, &flow, &[&down, &healthy]).await;

    // Down: first refusing connections, while versions flow.
    let port = down.stop_receiver();
    for _ in 0..versions {
        flow.next();
    }
    wait_for_trees(&app, &flow, &[&healthy]).await;
    wait_overview(&app, "the down endpoint's breaker to open", |o| {
        o["breakers_open"]["delivery"] == 1
    })
    .await;
    // Then answering 503, for many cooldowns: probes come, one at a time.
    down.start_receiver(port)
        .await
        .fallback(Some(Reply::status(503)));
    let receiver = down.receiver();
    let deadline = Instant::now() + CONVERGENCE;
    while receiver.received().len() < 6 {
        assert!(
            Instant::now() < deadline,
            "probes stopped; logs:\n{}",
            app.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let view = app.repository(&down.client, &down.repository_id).await;
    assert_eq!(view["failed_events"], 0, "waiting is not failing: {view}");

    // Back: everything arrives, in order, with no operator.
    receiver.fallback(None);
    let repeats = assert_converged(&app, &flow, &[&down, &healthy]).await;
    println!("{versions} versions of {files} files; {repeats} repeats");
}

/// The distinct `sync_failed` webhooks a subscriber accepted.
fn sync_failures(subscriber: &Subscriber) -> HashSet<String> {
    subscriber
        .accepted()
        .iter()
        .filter(|r| r.endpoint == "sync_failed")
        .map(|r| r.header("webhook-id").to_owned())
        .collect()
}

#[tokio::test]
async fn a_git_remote_down_then_back_sends_one_sync_failed_per_opening_and_recovers() {
    let files = setting("HERALD_FAULT_FILES", 60) as usize;
    let outages = setting("HERALD_FAULT_OUTAGES", 2) as usize;
    let threshold = 2;
    let app = engine_with(&[
        ("HERALD__BREAKER__GIT__THRESHOLD", "2"),
        ("HERALD__BREAKER__GIT__COOLDOWN", "300ms"),
    ])
    .await;
    let mut flow = Flow::new(files);
    let one = Subscriber::new(&app, &flow, "one", slow_receiver().await).await;
    let two = Subscriber::new(&app, &flow, "two", slow_receiver().await).await;
    wait_for_trees(&app, &flow, &[&one, &two]).await;

    for opening in 1..=outages {
        flow.stop_remote();
        // Each app hears of the opening once.
        for subscriber in [&one, &two] {
            subscriber
                .receiver()
                .wait_for_within("a sync_failed", CONVERGENCE, |_| {
                    sync_failures(subscriber).len() == opening
                })
                .await;
        }
        // Commits land meanwhile; several probes fail (the breaker opens
        // again each time, the same opening).
        flow.next();
        flow.next();
        app.wait_for(&one.client, &one.repository_id, "failed probes", |view| {
            view["circuit_breaker"]["consecutive_failures"]
                .as_i64()
                .is_some_and(|failures| failures >= threshold + 3)
        })
        .await;
        // Back on the same port: the changes made meanwhile arrive alone.
        flow.restart_remote();
        wait_for_trees(&app, &flow, &[&one, &two]).await;
        for subscriber in [&one, &two] {
            let view = app
                .repository(&subscriber.client, &subscriber.repository_id)
                .await;
            assert_eq!(view["circuit_breaker"]["status"], "closed", "{view}");
            assert_eq!(
                sync_failures(subscriber).len(),
                opening,
                "one sync_failed per opening"
            );
        }
    }
    let repeats = assert_converged(&app, &flow, &[&one, &two]).await;
    for subscriber in [&one, &two] {
        let view = app
            .repository(&subscriber.client, &subscriber.repository_id)
            .await;
        assert_eq!(view["last_error"], Value::Null, "{view}");
        assert_eq!(sync_failures(subscriber).len(), outages);
    }
    println!("{outages} outages of the remote; {repeats} repeats");
}
