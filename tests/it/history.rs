//! Repositories with history, as users' are: mirrors hold the tips Herald
//! diffs and nothing behind them, whatever the history, its rewrites, an
//! older mirror or a compaction under way.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use reqwest::{Method, StatusCode};

use crate::delivery::{apply, tree_of};
use crate::gitserver::{GitDaemon, Served, TestRepo};
use crate::helpers::{Rig, TestApp, TestClient};
use crate::receiver::Receiver;

/// A deterministic stream of numbers (a linear congruential generator), so
/// a failing history can be generated again.
struct Dice(u64);

impl Dice {
    fn below(&mut self, n: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        ((self.0 >> 33) % n as u64) as usize
    }
}

/// Gives `repo` (empty) `commits` commits of history on `main` through `git
/// fast-import`, each rewriting a few lines of a few of `files` files, and
/// checks the work tree out at the last one.
fn deep_history(repo: &TestRepo, commits: usize, files: usize) {
    let mut dice = Dice(7);
    let mut contents: Vec<Vec<String>> = (0..files)
        .map(|f| (0..20).map(|l| format!("file {f} line {l}\n")).collect())
        .collect();
    let mut stream = Vec::new();
    for n in 0..commits {
        let message = format!("change {n}\n");
        writeln!(stream, "commit refs/heads/main").expect("in memory");
        writeln!(stream, "mark :{}", n + 1).expect("in memory");
        writeln!(
            stream,
            "committer Herald Tests <tests@herald.invalid> {} +0000",
            1_600_000_000 + n * 60
        )
        .expect("in memory");
        write!(stream, "data {}\n{message}", message.len()).expect("in memory");
        if n > 0 {
            writeln!(stream, "from :{n}").expect("in memory");
        }
        let touched: Vec<usize> = if n == 0 {
            (0..files).collect()
        } else {
            (0..1 + dice.below(3)).map(|_| dice.below(files)).collect()
        };
        for f in touched {
            let line = dice.below(20);
            contents[f][line] = format!("file {f} line {line} changed by commit {n}\n");
            let text: String = contents[f].concat();
            writeln!(stream, "M 100644 inline dir{}/file{f}.md", f % 7).expect("in memory");
            write!(stream, "data {}\n{text}\n", text.len()).expect("in memory");
        }
    }
    let mut import = Command::new("git")
        .args(["fast-import", "--quiet"])
        .current_dir(repo.path())
        .stdin(Stdio::piped())
        .spawn()
        .expect("git fast-import starts");
    import
        .stdin
        .take()
        .expect("its input")
        .write_all(&stream)
        .expect("the history is written");
    assert!(import.wait().expect("it ends").success());
    repo.git(&["reset", "-q", "--hard", "main"]);
}

/// How many commits the mirror holds (git counts only those it has).
fn commits_in(mirror: &Path) -> usize {
    let out = Command::new("git")
        .args(["rev-list", "--all", "--count"])
        .current_dir(mirror)
        .output()
        .expect("git rev-list");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("a count")
}

/// Whether the mirror holds `commit`.
fn holds(mirror: &Path, commit: &str) -> bool {
    Command::new("git")
        .args(["cat-file", "-e", &format!("{commit}^{{commit}}")])
        .current_dir(mirror)
        .stderr(Stdio::null())
        .status()
        .expect("git cat-file")
        .success()
}

/// One watched repository served by `git daemon` to one app.
struct Watched {
    // Declared first so the daemon stops before its root is removed.
    daemon: GitDaemon,
    served: Served,
    repo: TestRepo,
    receiver: Receiver,
    app: TestApp,
    client: TestClient,
    id: String,
}

impl Watched {
    /// Serves `repo` as it is, and waits for the app to hold its tree.
    async fn start(repo: TestRepo, settings: &[(&str, &str)]) -> Watched {
        let rig = Rig::serve(&repo).await;
        let (app, client, id) = rig.watched("consumer", settings).await;
        let Rig {
            served,
            daemon,
            receiver,
        } = rig;
        let watched = Watched {
            daemon,
            served,
            repo,
            receiver,
            app,
            client,
            id,
        };
        watched.wait_for_tree("the initial sync").await;
        watched
    }

    /// Pushes the work tree's `HEAD` (forced) and asks for a scan.
    async fn push(&self) {
        self.served.push(&self.repo, "HEAD:refs/heads/main", true);
        let (status, body) = self
            .app
            .call(
                Method::POST,
                &format!("/api/repositories/{}/scan", self.id),
                Some(&self.client.token),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    }

    /// Waits until the files the receiver holds are the work tree's, byte
    /// for byte (webhooks applied in the order they came).
    async fn wait_for_tree(&self, what: &str) -> BTreeMap<String, Vec<u8>> {
        let expected = tree_of(&self.repo);
        let accepted = self
            .receiver
            .wait_for_within(what, std::time::Duration::from_secs(120), |r| {
                apply(r) == expected
            })
            .await;
        apply(&accepted)
    }

    /// Stops Herald, runs `meanwhile` while it is down, and starts it
    /// again with `settings` on the same data directory and database.
    async fn restarted(
        self,
        settings: &[(&str, &str)],
        meanwhile: impl FnOnce(&Served, &TestRepo, &Receiver),
    ) -> Watched {
        let Watched {
            daemon,
            served,
            repo,
            receiver,
            app,
            client,
            id,
        } = self;
        let (dir, database) = app.stop().await;
        meanwhile(&served, &repo, &receiver);
        let app = TestApp::builder()
            .fast()
            .envs(settings)
            .data_dir(dir)
            .spawn_with(database)
            .await;
        Watched {
            daemon,
            served,
            repo,
            receiver,
            app,
            client,
            id,
        }
    }

    fn mirror(&self) -> std::path::PathBuf {
        let mirrors = self.app.mirror_dirs();
        assert_eq!(mirrors.len(), 1, "{mirrors:?}");
        mirrors[0].clone()
    }
}

#[tokio::test]
async fn a_deep_history_arrives_change_by_change_and_stays_on_the_remote() {
    let repo = TestRepo::new("main");
    deep_history(&repo, 3_000, 120);
    let first = repo.rev_parse("main~2999");
    let watched = Watched::start(
        repo,
        &[
            ("HERALD__SCHEDULER__RESCAN_INTERVAL", "1h"),
            ("HERALD__SCHEDULER__SCAN_REQUEST_COOLDOWN", "0"),
            ("HERALD__GIT__REPACK_THRESHOLD", "3"),
        ],
    )
    .await;
    let repo = &watched.repo;
    let mut dice = Dice(11);
    for push in 0..12 {
        // Updates, a create, a delete and a rename in most pushes.
        for _ in 0..1 + dice.below(4) {
            let path = format!("dir{}/file{}.md", dice.below(7), dice.below(120));
            if repo.path().join(&path).exists() {
                repo.write(&path, format!("rewritten by push {push}\n"));
            }
        }
        repo.write(
            &format!("new/file{push}.md"),
            format!("created by push {push}\n"),
        );
        let previous = format!("new/file{}.md", push.max(1) - 1);
        if push % 3 == 1 && repo.path().join(&previous).exists() {
            repo.remove(&previous);
        }
        if push % 4 == 2 {
            repo.rename(
                &format!("new/file{push}.md"),
                &format!("moved/file{push}.md"),
            );
        }
        repo.commit(&format!("push {push}"));
        watched.push().await;
        watched.wait_for_tree(&format!("push {push}")).await;
    }

    let mirror = watched.mirror();
    assert!(
        !holds(&mirror, &first),
        "the mirror fetched the history behind the tip"
    );
    let commits = commits_in(&mirror);
    assert!(
        commits <= 6,
        "{commits} commits in a mirror that needs the tip and the last snapshots"
    );
    assert!(mirror.join("shallow").exists());
    let logs = watched.app.logs();
    assert!(logs.contains("mirror compacted"), "no compaction ran");
}

#[tokio::test]
async fn a_force_push_onto_an_unrelated_history_is_diffed_tree_against_tree() {
    let repo = TestRepo::new("main");
    deep_history(&repo, 200, 20);
    let watched = Watched::start(repo, &[("HERALD__SCHEDULER__SCAN_REQUEST_COOLDOWN", "0")]).await;
    let repo = &watched.repo;
    let before = watched.receiver.accepted().len();
    // A history with nothing in common: one file kept byte for byte, one
    // changed, the rest gone, and new ones.
    let kept = std::fs::read(repo.path().join("dir0/file0.md")).expect("a file");
    repo.git(&["checkout", "-q", "--orphan", "rewritten"]);
    repo.git(&["rm", "-q", "-r", "-f", "."]);
    repo.write("dir0/file0.md", &kept);
    repo.write("dir1/file1.md", "changed in the new history\n");
    repo.write("fresh/start.md", "a new beginning\n");
    repo.commit("unrelated");
    repo.git(&["branch", "-q", "-M", "main"]);
    watched.push().await;
    let tree = watched.wait_for_tree("the rewritten history").await;
    assert_eq!(tree.len(), 3);

    let after: Vec<(String, String)> = watched.receiver.accepted()[before..]
        .iter()
        .map(|r| {
            (
                r.endpoint.clone(),
                r.json()["file"]["path"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            )
        })
        .collect();
    assert!(
        !after.iter().any(|(_, path)| path == "dir0/file0.md"),
        "an unchanged file was sent again: {after:?}"
    );
    let deletes = after.iter().filter(|(e, _)| e.ends_with("delete")).count();
    assert_eq!(deletes, 18, "{after:?}");
}

#[tokio::test]
async fn a_mirror_made_with_history_is_compacted_to_the_tip_and_nothing_is_sent_twice() {
    let repo = TestRepo::new("main");
    deep_history(&repo, 500, 30);
    let first = repo.rev_parse("main~499");
    let settings = [("HERALD__SCHEDULER__SCAN_REQUEST_COOLDOWN", "0")];
    let watched = Watched::start(repo, &settings).await;
    let sent = watched.receiver.accepted().len();
    let mirror = watched.mirror();
    // The mirror as Herald made it before mirrors were shallow: the whole
    // history, its refs as they were.
    let watched = watched
        .restarted(&settings, |served, _, _| {
            let refs = Command::new("git")
                .args(["for-each-ref", "--format=%(objectname) %(refname)"])
                .current_dir(&mirror)
                .output()
                .expect("git for-each-ref");
            std::fs::remove_dir_all(&mirror).expect("the mirror goes");
            crate::gitserver::run_git(
                Path::new("/"),
                &[
                    "clone",
                    "-q",
                    "--bare",
                    "--no-local",
                    &served.bare.display().to_string(),
                    &mirror.display().to_string(),
                ],
            );
            for line in String::from_utf8_lossy(&refs.stdout).lines() {
                let (oid, name) = line.split_once(' ').expect("oid and name");
                crate::gitserver::run_git(&mirror, &["update-ref", name, oid]);
            }
            std::fs::remove_file(mirror.join("shallow")).ok();
            assert!(holds(&mirror, &first));
        })
        .await;
    watched.repo.write("after/upgrade.md", "the one change\n");
    watched.repo.commit("after the upgrade");
    watched.push().await;
    watched.wait_for_tree("the change after the upgrade").await;
    let since: Vec<String> = watched.receiver.accepted()[sent..]
        .iter()
        .filter_map(|r| r.json()["file"]["path"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(since, ["after/upgrade.md"], "only the change is sent");
    // The upkeep after that scan dropped the history.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    while holds(&mirror, &first) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the history is still in the mirror"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(commits_in(&mirror) <= 4);
}

#[tokio::test]
async fn content_of_a_commit_the_mirror_lost_comes_back_through_the_branch_history() {
    // git's own server by default serves only what its refs point to, not
    // a commit by its id: a mirror that lost a pending snapshot's commit
    // gets it back through the branch's history.
    let repo = TestRepo::new("main");
    deep_history(&repo, 50, 10);
    let watched = Watched::start(repo, &[("HERALD__SCHEDULER__SCAN_REQUEST_COOLDOWN", "0")]).await;
    watched
        .receiver
        .fallback(Some(crate::receiver::Reply::status(503)));
    watched.repo.write("pending.md", "waits for the receiver\n");
    let pending = watched.repo.commit("pending");
    watched.push().await;
    watched
        .app
        .wait_for_commit(&watched.client, &watched.id, pending.trim())
        .await;

    let mirror = watched.mirror();
    // The mirror is lost (a new instance, a new disk), and the branch moves
    // on past the pending commit.
    let watched = watched
        .restarted(&[], |served, repo, receiver| {
            std::fs::remove_dir_all(&mirror).expect("the mirror goes");
            repo.write("later.md", "after the pending one\n");
            repo.commit("later");
            served.push(repo, "HEAD:refs/heads/main", false);
            receiver.fallback(None);
        })
        .await;
    watched
        .wait_for_tree("the pending file and the later one")
        .await;
    let contents: Vec<String> = watched
        .receiver
        .accepted()
        .iter()
        .filter(|r| r.json()["file"]["path"] == "pending.md")
        .filter_map(|r| r.json()["file"]["content"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(contents, ["waits for the receiver\n"]);
}

#[tokio::test]
async fn pushes_during_compactions_all_arrive_in_order() {
    // Every scan is followed by a compaction of a tree of 2,000 files, and
    // the next push and scan request come at once: scans run while the
    // last one's compaction holds the mirror.
    let repo = TestRepo::new("main");
    for f in 0..2_000 {
        repo.write(
            &format!("d{}/f{f}.md", f % 40),
            format!("file {f}\n").repeat(40),
        );
    }
    repo.write("log.md", "v0\n");
    repo.commit("a big tree");
    let watched = Watched::start(
        repo,
        &[
            ("HERALD__SCHEDULER__RESCAN_INTERVAL", "1h"),
            ("HERALD__SCHEDULER__SCAN_REQUEST_COOLDOWN", "0"),
            ("HERALD__GIT__REPACK_THRESHOLD", "1"),
        ],
    )
    .await;
    let versions = 25;
    for v in 1..=versions {
        watched.repo.write("log.md", format!("v{v}\n"));
        watched.repo.commit(&format!("v{v}"));
        watched.push().await;
    }
    watched.wait_for_tree("the last version").await;
    // Every version the scans saw came in order, each once.
    let mut seen = std::collections::HashSet::new();
    let versions_seen: Vec<u32> = watched
        .receiver
        .accepted()
        .iter()
        .filter(|r| r.json()["file"]["path"] == "log.md")
        .filter(|r| seen.insert(r.header("webhook-id").to_owned()))
        .filter_map(|r| {
            r.json()["file"]["content"]
                .as_str()
                .and_then(|c| c.trim().strip_prefix('v')?.parse().ok())
        })
        .collect();
    assert!(
        versions_seen.windows(2).all(|w| w[0] < w[1]),
        "{versions_seen:?}"
    );
    assert_eq!(versions_seen.last(), Some(&versions));
    let compactions = watched.app.logs().matches("mirror compacted").count();
    assert!(compactions >= 2, "{compactions} compactions");
}
