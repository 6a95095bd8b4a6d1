//! Several instances on one database: each one's heartbeat row in
//! `GET /admin/api/instances`, alive or not, and the instance id on every
//! metric series. Two processes on one database need PostgreSQL; on SQLite
//! (single-instance) the test checks the one instance.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::helpers::{CLUSTER, TestApp, TestDatabase, assert_error};
use crate::telemetry::scrape;

async fn member(database: TestDatabase) -> TestApp {
    TestApp::builder().envs(&CLUSTER).spawn_with(database).await
}

/// A member that delivers: leases of `lease_ttl` renewed every
/// `heartbeat`, a 2 s delivery timeout, and attempts that last the test.
pub(crate) async fn working_member(
    database: TestDatabase,
    lease_ttl: &str,
    heartbeat: &str,
) -> TestApp {
    TestApp::builder()
        .fast()
        .envs(&[
            ("HERALD__SECURITY__ENCRYPTION_KEY", CLUSTER[0].1),
            ("HERALD__DELIVERY__TIMEOUT", "2s"),
            ("HERALD__CLUSTER__LEASE_TTL", lease_ttl),
            ("HERALD__CLUSTER__HEARTBEAT_INTERVAL", heartbeat),
            ("HERALD__DELIVERY__MAX_ATTEMPTS", "1000"),
        ])
        .spawn_with(database)
        .await
}

/// Polls `/admin/api/instances` on `app` until `done` holds; the list.
async fn wait_instances(app: &TestApp, what: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (status, body) = app.admin(Method::GET, "/admin/api/instances", None).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let list = body["data"]["instances"]
            .as_array()
            .expect("a list")
            .clone();
        if done(&list) {
            return list;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "gave up waiting for {what}; last answer: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn find<'a>(list: &'a [Value], id: &str) -> Option<&'a Value> {
    list.iter().find(|i| i["instance_id"] == id)
}

fn alive(list: &[Value], id: &str) -> Option<bool> {
    find(list, id).and_then(|i| i["alive"].as_bool())
}

#[tokio::test]
async fn instances_are_listed_alive_until_they_stop_and_metrics_carry_their_id() {
    let database = TestDatabase::create().await;
    let shared = database.is_shared_server();
    let a = member(database).await;
    let a_id = a.instance_id();

    // Operators only, and documented.
    for token in [None, Some("not-the-admin-token")] {
        let (status, body) = a
            .call(Method::GET, "/admin/api/instances", token, None)
            .await;
        assert_eq!(
            assert_error(status, &body, StatusCode::UNAUTHORIZED),
            "unauthorized"
        );
    }
    let (_, doc) = a.call(Method::GET, "/openapi.json", None, None).await;
    let get = &doc["paths"]["/admin/api/instances"]["get"];
    assert_eq!(get["security"], serde_json::json!([{"admin_token": []}]));
    for code in ["200", "401", "429", "500"] {
        assert!(get["responses"][code].is_object(), "{code} documented");
    }

    let list = wait_instances(&a, "its own heartbeat", |l| alive(l, &a_id) == Some(true)).await;
    let me = find(&list, &a_id).expect("listed");
    assert_eq!(me["version"], env!("CARGO_PKG_VERSION"));
    assert!(!me["host"].as_str().unwrap_or_default().is_empty(), "{me}");
    assert!(me["started_at"].is_string() && me["last_seen_at"].is_string());
    assert_eq!(me["current"], true);

    // Every series names the instance that serves it.
    let metrics = scrape(&a).await;
    let herald: Vec<_> = metrics
        .samples
        .iter()
        .filter(|s| s.metric.starts_with("herald_"))
        .collect();
    assert!(
        herald.iter().any(|s| s.metric == "herald_build_info"),
        "{:?}",
        metrics.samples
    );
    for sample in herald {
        assert_eq!(
            sample.labels.get("instance_id"),
            Some(a_id.as_str()),
            "{} {:?}",
            sample.metric,
            sample.labels
        );
    }

    if !shared {
        // SQLite is single-instance: a second process would have a database
        // of its own.
        return;
    }
    let b = member(a.database.shared()).await;
    let b_id = b.instance_id();
    assert_ne!(a_id, b_id);
    let list = wait_instances(&a, "both instances alive", |l| {
        alive(l, &a_id) == Some(true) && alive(l, &b_id) == Some(true)
    })
    .await;
    let other = find(&list, &b_id).expect("listed");
    assert_eq!(other["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(other["current"], false);

    // Killed: no shutdown, no last word. Past the lease time it is not alive.
    let _ = b.kill().await;
    let list = wait_instances(&a, "the killed instance to be reported dead", |l| {
        alive(l, &b_id) == Some(false)
    })
    .await;
    assert_eq!(alive(&list, &a_id), Some(true));
}

/// One repository's files as a receiver holds them: path → content, from
/// the webhooks about that repository (the first delivery of each
/// `webhook-id`, chunks reassembled).
pub(crate) fn tree_of_repository(
    accepted: &[crate::receiver::Received],
    repository_id: &str,
) -> std::collections::BTreeMap<String, Vec<u8>> {
    let mine: Vec<_> = accepted
        .iter()
        .filter(|r| r.json()["repository"]["repository_id"] == repository_id)
        .cloned()
        .collect();
    crate::delivery::apply(&mine)
}

/// The version a file's content carries (`v{n}`), as written by the test.
pub(crate) fn version(content: &str) -> u32 {
    content
        .trim()
        .rsplit('v')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn three_instances_share_the_work_and_a_killed_ones_work_is_finished_by_the_others() {
    use std::collections::{BTreeMap, HashMap, HashSet};

    use crate::gitserver::{GitDaemon, Served, TestRepo};
    use crate::helpers::onboard;
    use crate::receiver::{Receiver, Reply};

    let database = TestDatabase::create().await;
    if !database.is_shared_server() {
        // Several instances need PostgreSQL; SQLite is single-instance.
        return;
    }
    // Lease time as the operator sets it: short here so the test is quick.
    let a = working_member(database.shared(), "5s", "500ms").await;
    let b = working_member(database.shared(), "5s", "500ms").await;
    let c = working_member(database.shared(), "5s", "500ms").await;

    // Three repositories of files that move through versions.
    let names = ["one", "two", "three"];
    let repos: Vec<TestRepo> = names
        .iter()
        .map(|name| {
            let repo = TestRepo::new("main");
            for f in 0..10 {
                repo.write(&format!("{name}/f{f}.md"), "v0\n");
            }
            repo.commit("v0");
            repo
        })
        .collect();
    let first = Served::new(&repos[0], "one.git");
    let served: Vec<Served> = std::iter::once(first)
        .chain(
            repos[1..]
                .iter()
                .zip(&names[1..])
                .map(|(repo, name)| Served::new(repo, &format!("{name}.git"))),
        )
        .collect();
    let daemons: Vec<GitDaemon> = served.iter().map(|s| GitDaemon::serve(s.root())).collect();

    // Four apps, each on every repository, onboarded through different
    // instances; their receivers answer slowly enough to be caught mid-way.
    let mut receivers = Vec::new();
    let mut subscriptions = Vec::new();
    for (i, via) in [&a, &b, &c, &a].into_iter().enumerate() {
        let receiver = Receiver::start().await;
        receiver.fallback(Some(Reply {
            status: 200,
            retry_after: None,
            delay: Duration::from_millis(15),
        }));
        let client = onboard(via, &receiver, &format!("app{i}")).await;
        let mut ids = Vec::new();
        for (daemon, name) in daemons.iter().zip(names) {
            ids.push(
                crate::helpers::watch(via, &client, &daemon.url(&format!("{name}.git"))).await,
            );
        }
        receivers.push(receiver);
        subscriptions.push(ids);
    }

    // Commits flow; one instance dies in the middle of delivering them.
    let versions = 12u32;
    let mut killed = None;
    let mut b = Some(b);
    for v in 1..=versions {
        for ((repo, served), name) in repos.iter().zip(&served).zip(names) {
            for f in 0..10 {
                if (f + v) % 3 == 0 {
                    repo.write(&format!("{name}/f{f}.md"), format!("v{v}\n"));
                }
            }
            repo.commit(&format!("v{v}"));
            served.push(repo, "HEAD:refs/heads/main", false);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
        if v == versions / 2 {
            let (dir, db) = b.take().expect("b runs").kill().await;
            killed = Some((dir, db, tokio::time::Instant::now()));
        }
    }
    let (_dir, _db, killed_at) = killed.expect("b was killed");

    // Every receiver ends with exactly each repository's tree, within the
    // lease time (and a margin for the flow still arriving).
    let deadline = killed_at + Duration::from_secs(5 + 60);
    for (receiver, ids) in receivers.iter().zip(&subscriptions) {
        for ((repo, id), name) in repos.iter().zip(ids).zip(names) {
            let expected: BTreeMap<String, Vec<u8>> = crate::delivery::tree_of(repo);
            loop {
                if tree_of_repository(&receiver.accepted(), id) == expected {
                    break;
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "{name}: the receiver never got the whole tree\nA:\n{}\nC:\n{}",
                    a.logs(),
                    c.logs()
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }

    for (receiver, ids) in receivers.iter().zip(&subscriptions) {
        let accepted = receiver.accepted();
        // Repeats (at least once) carry the webhook-id of the first time.
        let mut seen = HashSet::new();
        let firsts: Vec<_> = accepted
            .iter()
            .filter(|r| seen.insert(r.header("webhook-id").to_owned()))
            .collect();
        let mut latest: HashMap<(String, String), u32> = HashMap::new();
        let mut changes: HashMap<(String, String, String), usize> = HashMap::new();
        for request in &firsts {
            let body = request.json();
            let file = &body["file"];
            let (Some(path), Some(content)) = (file["path"].as_str(), file["content"].as_str())
            else {
                continue;
            };
            let repository = body["repository"]["repository_id"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            assert!(ids.contains(&repository), "only its own repositories");
            let v = version(content);
            let key = (repository.clone(), path.to_owned());
            let before = latest.insert(key.clone(), v).unwrap_or(0);
            assert!(
                v >= before,
                "{path}: v{v} arrived after v{before} (older content after newer)"
            );
            *changes
                .entry((repository, path.to_owned(), content.to_owned()))
                .or_default() += 1;
        }
        for ((_, path, content), n) in changes {
            assert_eq!(n, 1, "{path} {content:?} became {n} events");
        }
    }

    // Both survivors delivered.
    for (name, app) in [("a", &a), ("c", &c)] {
        assert!(
            delivered(app).await > 0.0,
            "instance {name} delivered nothing"
        );
    }
}

/// How many deliveries `app` (one instance) made, by its metrics.
pub(crate) async fn delivered(app: &TestApp) -> f64 {
    scrape(app)
        .await
        .samples
        .iter()
        .filter(|s| {
            s.metric == "herald_deliveries_total" && s.labels.get("outcome") == Some("delivered")
        })
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(n) => n,
            _ => 0.0,
        })
        .sum()
}

#[tokio::test]
async fn a_wake_up_reaches_the_other_instances_at_once_and_not_its_sender() {
    use std::sync::{Arc, Mutex};

    use actors::ids::RepoId;
    use actors::signals::OutboxSignal;
    use actors::signals::ScanRequests;
    use actors::signals::{ClusterBell, Wake};
    use actors::wakeups::{LocalTargets, Wakeups, WakeupsArgs};
    use ractor::Actor;

    let database = TestDatabase::create().await;
    let Some(url) = database.url.clone() else {
        // LISTEN/NOTIFY is PostgreSQL's; SQLite is single-instance.
        return;
    };
    let store = actors::test_support::connect(&url).await;

    /// What one instance was woken for.
    #[derive(Default)]
    struct Woken {
        scans: Mutex<Vec<RepoId>>,
        hooks: Mutex<usize>,
    }
    let mut instances = Vec::new();
    for id in ["herald-a", "herald-b"] {
        let woken = Arc::new(Woken::default());
        let outbox = OutboxSignal::default();
        let (bell, rings) = ClusterBell::new();
        let (scans, hooks) = (woken.clone(), woken.clone());
        let args = WakeupsArgs {
            store: store.clone(),
            instance_id: id.to_owned(),
            rings,
            targets: LocalTargets {
                outbox: outbox.clone(),
                hooks: Arc::new(move || *hooks.hooks.lock().expect("lock") += 1),
                scans: ScanRequests::new(move |repo| scans.scans.lock().expect("lock").push(repo)),
            },
        };
        let (actor, _) = Actor::spawn(None, Wakeups, args).await.expect("listening");
        instances.push((bell, outbox, woken, actor));
    }
    let (bell_a, outbox_a, woken_a, _) = &instances[0];
    let (bell_b, outbox_b, woken_b, _) = &instances[1];

    let repo = RepoId::generate();
    bell_a.ring(Wake::Scan(repo.clone()));
    bell_a.ring(Wake::Hooks);
    bell_a.ring(Wake::Outbox);
    tokio::time::timeout(Duration::from_secs(10), outbox_b.notified())
        .await
        .expect("b's dispatcher was woken");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while *woken_b.hooks.lock().expect("lock") == 0
        || woken_b.scans.lock().expect("lock").is_empty()
    {
        assert!(tokio::time::Instant::now() < deadline, "b was not woken");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(*woken_b.scans.lock().expect("lock"), vec![repo]);
    // The sender did the work's local part itself: its own rings come back
    // to it ignored. A ring of b's, sent once a's had reached b, reaches a
    // after a's own (PostgreSQL delivers notifications in commit order).
    bell_b.ring(Wake::Outbox);
    tokio::time::timeout(Duration::from_secs(10), outbox_a.notified())
        .await
        .expect("a's dispatcher was woken by b");
    assert!(woken_a.scans.lock().expect("lock").is_empty());
    assert_eq!(*woken_a.hooks.lock().expect("lock"), 0);
    for (_, _, _, actor) in instances {
        actor.stop(None);
    }
    store.close().await.ok();
}
