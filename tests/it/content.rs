//! Content that is not in the mirror at send time: fetched again from the
//! remote (the pinned commit), and declared gone only when the remote no
//! longer has it. The same path makes any instance able to deliver an event
//! another instance scanned.

use crate::delivery::{apply, tree_of};
use crate::gitserver::{GitDaemon, Served, TestRepo};
use crate::helpers::{Rig, TestApp, TestClient};
use crate::receiver::{Receiver, Reply};

/// Settings under which a receiver can stay down for long without events
/// dying, and watchers do not scan again by themselves during the test.
pub(crate) const PATIENT: [(&str, &str); 3] = [
    ("HERALD__SCHEDULER__RESCAN_INTERVAL", "1h"),
    ("HERALD__DELIVERY__MAX_ATTEMPTS", "1000"),
    ("HERALD__BREAKER__DELIVERY__THRESHOLD", "1000"),
];

/// Stops the engine, removes its mirrors (the only local copy of the content
/// of the events still waiting), and starts it again on the same data
/// directory and database, with `settings`: as another instance would, it
/// has none of the content its events need.
pub(crate) async fn restart_without_mirrors(app: TestApp, settings: &[(&str, &str)]) -> TestApp {
    let mirrors = app.mirror_dirs();
    assert!(!mirrors.is_empty(), "the scan made a mirror");
    let (dir, database) = app.kill().await;
    for mirror in mirrors {
        std::fs::remove_dir_all(&mirror).expect("the mirror can be removed");
    }
    TestApp::builder()
        .fast()
        .envs(settings)
        .data_dir(dir)
        .spawn_with(database)
        .await
}

/// `repo` served on loopback and watched by one app whose receiver answers
/// `down`, once the scan wrote `events` events: they wait, their content in
/// the mirror only.
struct Waiting {
    // Declared first so the daemon stops before its root is removed.
    daemon: GitDaemon,
    served: Served,
    receiver: Receiver,
    app: TestApp,
    client: TestClient,
    id: String,
}

async fn waiting(repo: &TestRepo, down: u16, events: usize) -> Waiting {
    let rig = Rig::serve(repo).await;
    rig.receiver.fallback(Some(Reply::status(down)));
    let (app, client, id) = rig.watched("consumer", &PATIENT).await;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    while app.outbox(&client, &id).await.len() < events {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the scan did not write {events} events; logs:\n{}",
            app.logs()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let Rig {
        served,
        daemon,
        receiver,
    } = rig;
    Waiting {
        daemon,
        served,
        receiver,
        app,
        client,
        id,
    }
}

#[tokio::test]
async fn a_mirror_lost_with_events_pending_is_fetched_again_and_everything_arrives() {
    let repo = TestRepo::new("main");
    repo.write("docs/a.md", "alpha\n");
    repo.write("docs/b.md", "beta\n");
    repo.write("logo.bin", [0u8, 159, 146, 150, 255]);
    repo.commit("three files");
    let Waiting {
        daemon: _daemon,
        served: _served,
        receiver,
        app,
        client,
        id,
    } = waiting(&repo, 503, 3).await;

    let app = restart_without_mirrors(app, &PATIENT).await;
    receiver.fallback(None);
    let accepted = receiver
        .wait_for("the three files", |r| apply(r).len() == 3)
        .await;
    assert_eq!(apply(&accepted), tree_of(&repo));
    let view = app.repository(&client, &id).await;
    assert_eq!(view["failed_events"], 0, "{view}");
    assert!(
        !app.mirror_dirs().is_empty(),
        "the lane fetched the mirror again"
    );
}

#[tokio::test]
async fn content_of_a_commit_the_remote_no_longer_has_is_declared_gone_with_the_reason() {
    let repo = TestRepo::new("main");
    repo.write("notes.md", "first version\n");
    let first = repo.commit("first");
    let Waiting {
        daemon: _daemon,
        served,
        receiver,
        app,
        client,
        id,
    } = waiting(&repo, 503, 1).await;

    // History rewritten on the remote: the first commit is unreachable and
    // pruned; and the mirror that held it is lost.
    repo.write("notes.md", "rewritten\n");
    repo.git(&["commit", "-q", "--amend", "-m", "rewritten"]);
    served.push(&repo, "HEAD:refs/heads/main", true);
    let bare = served.bare.clone();
    crate::gitserver::run_git(&bare, &["reflog", "expire", "--expire=now", "--all"]);
    crate::gitserver::run_git(&bare, &["gc", "-q", "--prune=now"]);
    assert!(
        !crate::gitserver::try_git(&bare, &["cat-file", "-e", &format!("{first}^{{commit}}")]).0,
        "the first commit is gone from the remote"
    );
    let app = restart_without_mirrors(app, &PATIENT).await;
    receiver.fallback(None);

    // The view reads the subscription and its event counts one after the
    // other: wait for both to show the dead event.
    app.wait_for(
        &client,
        &id,
        "the event declared dead and its subscription failed",
        |view| view["failed_events"] == 1 && view["status"] == "failed",
    )
    .await;
    let (status, dead) = app
        .call(
            reqwest::Method::GET,
            "/api/events?status=dead",
            Some(&client.token),
            None,
        )
        .await;
    assert_eq!(status, reqwest::StatusCode::OK, "{dead}");
    let error = dead["data"][0]["last_error"].as_str().unwrap_or_default();
    assert!(
        error.contains("no longer has commit") && error.contains(first.trim()),
        "the reason names the commit: {error}"
    );
    assert!(
        receiver.accepted().is_empty(),
        "nothing was sent for content that could not be read"
    );
}

#[tokio::test]
async fn a_mirror_unreadable_for_a_moment_is_kept_and_delivery_resumes() {
    let repo = TestRepo::new("main");
    repo.write("a.md", "alpha\n");
    repo.write("b.md", "beta\n");
    repo.commit("two files");
    let Waiting {
        daemon: _daemon,
        served: _served,
        receiver,
        app,
        client,
        id,
    } = waiting(&repo, 500, 2).await;
    let mirror = app.mirror_dirs().pop().expect("the mirror");
    std::fs::write(mirror.join("description"), "the mirror the scan made\n").expect("planted");

    // Its objects are out of reach for a moment: the next attempt cannot
    // open the mirror, and says so beside it.
    let objects = mirror.join("objects");
    let away = mirror.join("objects.away");
    std::fs::rename(&objects, &away).expect("objects moved away");
    let mut suspect = mirror.clone().into_os_string();
    suspect.push(".suspect");
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    while !std::path::Path::new(&suspect).exists() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no attempt met the unreadable mirror; logs:\n{}",
            app.logs()
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    std::fs::rename(&away, &objects).expect("objects back");
    receiver.fallback(None);

    let accepted = receiver
        .wait_for("both files", |r| apply(r).len() == 2)
        .await;
    assert_eq!(apply(&accepted), tree_of(&repo));
    assert_eq!(
        std::fs::read_to_string(mirror.join("description")).expect("still there"),
        "the mirror the scan made\n",
        "the mirror was kept, not rebuilt"
    );
    let view = app.repository(&client, &id).await;
    assert_eq!(view["failed_events"], 0, "{view}");
}
