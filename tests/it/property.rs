//! Property: for random sequences of commits, the events Herald writes for
//! each scan are exactly `git diff --name-status` between the same commits,
//! and a receiver that applies every event holds the repository's tree.
//!
//! Runs the engine's own scan (mirror fetch over `file://`, tree diff,
//! hashing) and its outbox transaction on a real SQLite database.

use std::collections::BTreeMap;
use std::time::Duration;

use actors::ids::{AppId, RepoId};
use actors::scan::ScanOutcome;
use actors::store::Store;
use actors::store::subscriptions::NewSubscription;
use actors::test_support;
use proptest::prelude::*;
use sea_orm::{ConnectionTrait, Statement};
use sha2::{Digest, Sha256};

use crate::gitserver::{Served, TestRepo};
use crate::helpers::TestDatabase;

const PATHS: [&str; 8] = [
    "README.md",
    "docs/a.md",
    "docs/b.md",
    "docs/deep/c.md",
    "src/main.rs",
    "ünï/cödé.txt",
    "with space/x y.txt",
    "bin/blob.dat",
];

#[derive(Debug, Clone)]
enum Op {
    Write(usize, u8),
    Remove(usize),
    Rename(usize, usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0..PATHS.len(), any::<u8>()).prop_map(|(p, c)| Op::Write(p, c)),
        1 => (0..PATHS.len()).prop_map(Op::Remove),
        1 => (0..PATHS.len(), 0..PATHS.len()).prop_map(|(a, b)| Op::Rename(a, b)),
    ]
}

fn content(path: usize, seed: u8) -> Vec<u8> {
    if PATHS[path].ends_with(".dat") {
        vec![0, seed, 1, seed]
    } else {
        format!("{} v{seed}\n", PATHS[path]).into_bytes()
    }
}

fn apply(repo: &TestRepo, ops: &[Op]) {
    for op in ops {
        match op {
            Op::Write(p, seed) => repo.write(PATHS[*p], content(*p, *seed)),
            Op::Remove(p) => {
                if repo.path().join(PATHS[*p]).exists() {
                    repo.remove(PATHS[*p]);
                }
            }
            Op::Rename(a, b) => {
                let (from, to) = (repo.path().join(PATHS[*a]), repo.path().join(PATHS[*b]));
                if a != b && from.exists() && !to.exists() {
                    repo.rename(PATHS[*a], PATHS[*b]);
                }
            }
        }
    }
}

/// The tree at HEAD: path → SHA-256 of the content.
fn tree(repo: &TestRepo) -> BTreeMap<String, String> {
    let listing = repo.git(&["ls-files", "-z"]);
    listing
        .split('\0')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let bytes = std::fs::read(repo.path().join(p)).expect("tracked file");
            (p.to_owned(), hex(&Sha256::digest(&bytes)))
        })
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `git diff --name-status` as (kind, path), kinds named like Herald's.
fn name_status(repo: &TestRepo, old: Option<&str>, new: &str) -> Vec<(String, String)> {
    let output = match old {
        Some(old) => repo.git(&[
            "-c",
            "core.quotepath=off",
            "diff",
            "--no-renames",
            "--name-status",
            "-z",
            old,
            new,
        ]),
        None => repo
            .git(&[
                "-c",
                "core.quotepath=off",
                "ls-tree",
                "-r",
                "--name-only",
                "-z",
                new,
            ])
            .split('\0')
            .filter(|p| !p.is_empty())
            .map(|p| format!("A\0{p}\0"))
            .collect(),
    };
    let fields: Vec<&str> = output.split('\0').filter(|f| !f.is_empty()).collect();
    let mut changes: Vec<(String, String)> = fields
        .chunks(2)
        .map(|pair| {
            let kind = match pair[0] {
                "A" => "created",
                "D" => "deleted",
                "M" => "updated",
                other => panic!("unexpected status {other}"),
            };
            (kind.to_owned(), pair[1].to_owned())
        })
        .collect();
    let rank = |k: &str| match k {
        "deleted" => 0,
        "created" => 1,
        _ => 2,
    };
    changes.sort_by(|a, b| {
        rank(&a.0)
            .cmp(&rank(&b.0))
            .then(a.1.as_bytes().cmp(b.1.as_bytes()))
    });
    changes
}

async fn setup(
    dir: &std::path::Path,
    database: &TestDatabase,
    remote: &str,
) -> (Store, AppId, RepoId) {
    let store = test_support::store(&database.url_in(dir, "herald.db")).await;
    let app = test_support::onboard(&store, test_support::new_app("prop")).await;
    let subscription = NewSubscription {
        branch: Some("main".into()),
        ..test_support::new_subscription(remote, "prop", "repo")
    };
    let (_, repo) = test_support::subscribe(&store, &app, subscription).await;
    (store, app, repo)
}

/// One scan through the engine's own code; returns the new events.
async fn scan_once(
    store: &Store,
    repo: &RepoId,
    remote: &str,
    mirror: &std::path::Path,
) -> Vec<(String, String, Option<String>)> {
    let remote = test_support::loopback_remote(
        remote,
        Duration::from_secs(30),
        &mirror.with_extension("data"),
    );
    let scanned = test_support::scan(store, repo, remote, mirror, "property").await;
    if matches!(scanned.outcome, ScanOutcome::Unchanged { .. }) {
        return Vec::new();
    }
    let before: i64 = count(store).await;
    scanned.advance(store).await;
    let rows = store
        .db()
        .query_all_raw(Statement::from_string(
            store.backend(),
            // One subscription: its sequence numbers count its events.
            format!("SELECT kind, path, sha256, seq FROM events WHERE seq > {before} ORDER BY seq"),
        ))
        .await
        .expect("events");
    rows.iter()
        .map(|r| {
            (
                r.try_get::<String>("", "kind").expect("kind"),
                r.try_get::<String>("", "path").expect("path"),
                r.try_get::<Option<String>>("", "sha256").expect("sha"),
            )
        })
        .collect()
}

/// File count and bytes of the repository's current snapshot.
async fn totals(store: &Store) -> (i64, i64) {
    let row = store
        .db()
        .query_one_raw(Statement::from_string(
            store.backend(),
            "SELECT s.file_count AS files, s.total_bytes AS bytes FROM snapshots s \
             JOIN repositories r ON r.current_snapshot_id = s.id"
                .to_owned(),
        ))
        .await
        .expect("totals")
        .expect("a current snapshot");
    (
        row.try_get("", "files").expect("files"),
        row.try_get("", "bytes").expect("bytes"),
    )
}

async fn count(store: &Store) -> i64 {
    let row = store
        .db()
        .query_one_raw(Statement::from_string(
            store.backend(),
            "SELECT COUNT(*) AS n FROM events".to_owned(),
        ))
        .await
        .expect("count")
        .expect("a row");
    row.try_get("", "n").expect("n")
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn events_match_git_and_rebuild_the_tree(commits in prop::collection::vec(prop::collection::vec(op(), 1..6), 1..6)) {
        let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
        runtime.block_on(async {
            let repo = TestRepo::new("main");
            repo.write("README.md", "start\n");
            let mut previous = repo.commit("start");
            let served = Served::new(&repo, "repo.git");
            let remote = format!("file://{}", served.bare.display());
            let dir = tempfile::tempdir().expect("temp dir");
            let database = TestDatabase::create().await;
            let (store, _app, repo_id) = setup(dir.path(), &database, &remote).await;
            let mirror = dir.path().join("mirror.git");

            let mut receiver: BTreeMap<String, String> = BTreeMap::new();
            let first = scan_once(&store, &repo_id, &remote, &mirror).await;
            assert_eq!(
                first.iter().map(|(k, p, _)| (k.clone(), p.clone())).collect::<Vec<_>>(),
                name_status(&repo, None, &previous)
            );
            for (_, path, sha) in &first {
                receiver.insert(path.clone(), sha.clone().expect("created events carry a sha"));
            }

            for ops in &commits {
                apply(&repo, ops);
                let commit = repo.commit("step");
                served.push(&repo, "HEAD:refs/heads/main", false);
                let events = scan_once(&store, &repo_id, &remote, &mirror).await;
                let got: Vec<(String, String)> = events.iter().map(|(k, p, _)| (k.clone(), p.clone())).collect();
                assert_eq!(got, name_status(&repo, Some(&previous), &commit), "commit {commit}");
                for (kind, path, sha) in events {
                    if kind == "deleted" {
                        receiver.remove(&path);
                    } else {
                        receiver.insert(path, sha.expect("a sha"));
                    }
                }
                assert_eq!(receiver, tree(&repo), "the receiver holds the tree at {commit}");
                let (files, bytes) = totals(&store).await;
                let on_disk: i64 = receiver
                    .keys()
                    .map(|p| i64::try_from(std::fs::metadata(repo.path().join(p)).expect("file").len()).expect("size"))
                    .sum();
                assert_eq!((files, bytes), (i64::try_from(receiver.len()).expect("count"), on_disk), "snapshot totals");
                previous = commit;
            }
            store.close().await.ok();
        });
    }
}
