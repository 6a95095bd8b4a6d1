//! Submodules (docs/webhooks.md, submodule): an app that opted in gets a
//! `submodule` event, in its order, each time a submodule's commit moves,
//! forwards or backwards; an app that did not (a Docora client) sees no new
//! endpoint. The gitlinks are real tree entries (mode 160000) made with
//! git's own plumbing.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::gitserver::TestRepo;
use crate::helpers::{Rig, TestApp, TestClient, engine_with, onboard, watch};
use crate::receiver::{Received, Receiver};

const LIB_URL: &str = "https://git.example.com/acme/lib.git";

/// Points `path` of `repo`'s index at `commit` (a gitlink) and commits
/// what is staged.
fn commit_gitlink(repo: &TestRepo, path: &str, commit: &str, message: &str) -> String {
    repo.git(&[
        "update-index",
        "--add",
        "--cacheinfo",
        &format!("160000,{commit},{path}"),
    ]);
    repo.git(&["commit", "-q", "--no-verify", "-m", message]);
    repo.head()
}

/// The bodies of `endpoint` received so far, in order.
fn bodies(received: &[Received], endpoint: &str) -> Vec<Value> {
    received
        .iter()
        .filter(|r| r.status == 200 && r.endpoint == endpoint)
        .map(Received::json)
        .collect()
}

async fn opt_in(app: &TestApp, client: &TestClient) {
    let (status, body) = app
        .call(
            Method::PATCH,
            "/api/app",
            Some(&client.token),
            Some(json!({"notify_submodules": true})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["notify_submodules"], true);
}

#[tokio::test]
async fn a_submodule_moved_forwards_then_backwards_is_told_to_apps_that_opted_in() {
    // The submodule's own history: two commits.
    let lib = TestRepo::new("main");
    lib.write("a.txt", "one\n");
    let first = lib.commit("one");
    lib.write("b.txt", "two\n");
    let second = lib.commit("two");

    let repo = TestRepo::new("main");
    repo.write("README.md", "v1\n");
    repo.write(
        ".gitmodules",
        format!("[submodule \"lib\"]\n\tpath = libs/lib\n\turl = {LIB_URL}\n"),
    );
    repo.git(&["add", "README.md", ".gitmodules"]);
    commit_gitlink(&repo, "libs/lib", &first, "with lib at one");

    let rig = Rig::serve(&repo).await;
    let app = engine_with(&[]).await;
    let opted = onboard(&app, &rig.receiver, "opted").await;
    opt_in(&app, &opted).await;
    watch(&app, &opted, &rig.url()).await;
    let docora_inbox = Receiver::start().await;
    let docora = onboard(&app, &docora_inbox, "docora").await;
    watch(&app, &docora, &rig.url()).await;
    for inbox in [&rig.receiver, &docora_inbox] {
        inbox
            .wait_for("the first snapshot", |r| bodies(r, "create").len() == 2)
            .await;
    }

    // Forwards, with a file changed in the same commit.
    repo.write("README.md", "v2\n");
    repo.git(&["add", "README.md"]);
    let forwards = commit_gitlink(&repo, "libs/lib", &second, "lib at two");
    rig.served.push(&repo, "HEAD:refs/heads/main", false);
    let received = rig
        .receiver
        .wait_for("the submodule moved forwards", |r| {
            !bodies(r, "submodule").is_empty()
        })
        .await;
    let moved = &bodies(&received, "submodule")[0];
    assert_eq!(moved["submodule"]["path"], "libs/lib", "{moved}");
    assert_eq!(moved["submodule"]["url"], LIB_URL);
    assert_eq!(moved["submodule"]["previous_commit"], first.as_str());
    assert_eq!(moved["submodule"]["commit"], second.as_str());
    assert_eq!(moved["commit_sha"], forwards.as_str());
    // In order: the snapshot's file, then the submodule.
    let endpoints: Vec<&str> = received
        .iter()
        .filter(|r| r.status == 200)
        .map(|r| r.endpoint.as_str())
        .collect();
    assert_eq!(endpoints, ["create", "create", "update", "submodule"]);

    // Backwards: the reverse move.
    let backwards = commit_gitlink(&repo, "libs/lib", &first, "lib back at one");
    rig.served.push(&repo, "HEAD:refs/heads/main", false);
    let received = rig
        .receiver
        .wait_for("the submodule moved backwards", |r| {
            bodies(r, "submodule").len() == 2
        })
        .await;
    let back = &bodies(&received, "submodule")[1];
    assert_eq!(
        back["submodule"]["previous_commit"],
        second.as_str(),
        "{back}"
    );
    assert_eq!(back["submodule"]["commit"], first.as_str());
    assert_eq!(back["commit_sha"], backwards.as_str());

    // Removed: no commit after.
    repo.git(&["rm", "-q", "--cached", "libs/lib"]);
    repo.git(&["commit", "-q", "--no-verify", "-m", "no lib"]);
    rig.served.push(&repo, "HEAD:refs/heads/main", false);
    let received = rig
        .receiver
        .wait_for("the submodule removed", |r| {
            bodies(r, "submodule").len() == 3
        })
        .await;
    let removed = &bodies(&received, "submodule")[2];
    assert_eq!(
        removed["submodule"]["previous_commit"],
        first.as_str(),
        "{removed}"
    );
    assert_eq!(removed["submodule"]["commit"], Value::Null);
    assert_eq!(removed["submodule"]["url"], LIB_URL);

    // The app that did not opt in saw the files and no new endpoint.
    let events = app
        .wait_for_events(
            &docora,
            "status=delivered",
            "Docora's README update",
            |events| events.iter().any(|event| event["kind"] == "updated"),
        )
        .await;
    assert!(events.iter().all(|event| event["kind"] != "submodule"));
    assert!(
        docora_inbox
            .received()
            .iter()
            .all(|r| r.endpoint != "submodule")
    );
}
