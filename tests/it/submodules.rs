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

/// The files delivered so far, by path (deduplicated, chunks reassembled),
/// as text.
fn tree(received: &[Received]) -> std::collections::BTreeMap<String, String> {
    let accepted: Vec<Received> = received
        .iter()
        .filter(|r| r.status == 200)
        .cloned()
        .collect();
    crate::delivery::apply(&accepted)
        .into_iter()
        .map(|(path, content)| (path, String::from_utf8(content).expect("text")))
        .collect()
}

fn files(entries: &[(&str, &str)]) -> std::collections::BTreeMap<String, String> {
    entries
        .iter()
        .map(|(path, content)| ((*path).to_owned(), (*content).to_owned()))
        .collect()
}

/// The accepted file webhooks as (endpoint, path), sorted.
fn changes(received: &[Received]) -> Vec<(String, String)> {
    let mut changes: Vec<(String, String)> = received
        .iter()
        .filter(|r| r.status == 200)
        .map(|r| {
            let body = r.json();
            let path = body["file"]["path"].as_str().unwrap_or_default();
            (r.endpoint.clone(), path.to_owned())
        })
        .collect();
    changes.sort();
    changes
}

/// Waits for the first `sync_failed`: what was received by then, and its
/// body.
async fn first_sync_failed(receiver: &Receiver) -> (Vec<Received>, Value) {
    let received = receiver
        .wait_for("a sync_failed", |r| {
            r.iter().any(|r| r.endpoint == "sync_failed")
        })
        .await;
    let notice = received
        .iter()
        .find(|r| r.endpoint == "sync_failed")
        .expect("a notice")
        .json();
    (received, notice)
}

/// Registers `url` for `client` with its submodules expanded: the
/// repository's id.
async fn watch_expanded(app: &TestApp, client: &TestClient, url: &str) -> String {
    let (status, body) = app
        .register(client, json!({"url": url, "expand_submodules": true}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["expand_submodules"], true, "{body}");
    body["repository_id"].as_str().expect("id").to_owned()
}

#[tokio::test]
async fn expanded_submodules_are_files_under_their_paths_nested_and_both_ways() {
    // A submodule nested in a submodule, each with two commits.
    let inner = TestRepo::new("main");
    inner.write("x.txt", "inner one\n");
    let inner_one = inner.commit("inner one");
    inner.write("x.txt", "inner two\n");
    let inner_two = inner.commit("inner two");

    let lib = TestRepo::new("main");
    lib.write("a.txt", "a one\n");
    lib.write("dir/b.txt", "b one\n");
    lib.write(
        ".gitmodules",
        "[submodule \"inner\"]\n\tpath = vendor/inner\n\turl = ../inner.git\n",
    );
    lib.git(&["add", "a.txt", "dir/b.txt", ".gitmodules"]);
    let lib_one = commit_gitlink(&lib, "vendor/inner", &inner_one, "lib one");
    lib.write("a.txt", "a two\n");
    lib.write("c.txt", "c two\n");
    lib.git(&["rm", "-q", "dir/b.txt"]);
    lib.git(&["add", "a.txt", "c.txt"]);
    let lib_two = commit_gitlink(&lib, "vendor/inner", &inner_two, "lib two");

    let repo = TestRepo::new("main");
    repo.write("README.md", "v1\n");
    let gitmodules = "[submodule \"lib\"]\n\tpath = libs/lib\n\turl = ../lib.git\n";
    repo.write(".gitmodules", gitmodules);
    repo.git(&["add", "README.md", ".gitmodules"]);
    let start = commit_gitlink(&repo, "libs/lib", &lib_one, "with lib at one");

    // All three served by one daemon; the submodules' tips are their
    // second commits, so the first ones are not what their branches name.
    let rig = Rig::serve(&repo).await;
    let _lib = rig.served.sibling(&lib, "lib.git");
    let _inner = rig.served.sibling(&inner, "inner.git");
    let app = engine_with(&[]).await;
    let expanded = onboard(&app, &rig.receiver, "expanded").await;
    // Opted in to `submodule` events too: expansion sends files instead.
    opt_in(&app, &expanded).await;
    let expanded_id = watch_expanded(&app, &expanded, &rig.url()).await;
    let plain_inbox = Receiver::start().await;
    let plain = onboard(&app, &plain_inbox, "plain").await;
    opt_in(&app, &plain).await;
    let plain_id = watch(&app, &plain, &rig.url()).await;
    assert_ne!(
        expanded_id, plain_id,
        "a remote watched both ways is two repositories"
    );

    let lib_gitmodules = "[submodule \"inner\"]\n\tpath = vendor/inner\n\turl = ../inner.git\n";
    let at_one = files(&[
        (".gitmodules", gitmodules),
        ("README.md", "v1\n"),
        ("libs/lib/.gitmodules", lib_gitmodules),
        ("libs/lib/a.txt", "a one\n"),
        ("libs/lib/dir/b.txt", "b one\n"),
        ("libs/lib/vendor/inner/x.txt", "inner one\n"),
    ]);
    let received = rig
        .receiver
        .wait_for("the expanded first snapshot", |r| tree(r) == at_one)
        .await;
    assert!(bodies(&received, "submodule").is_empty());
    let seen = received.len();
    plain_inbox
        .wait_for("the plain first snapshot", |r| {
            bodies(r, "create").len() == 2
        })
        .await;

    // Forwards: every file that changed inside, nested ones included.
    repo.write("README.md", "v2\n");
    repo.git(&["add", "README.md"]);
    let forwards = commit_gitlink(&repo, "libs/lib", &lib_two, "lib at two");
    rig.served.push(&repo, "HEAD:refs/heads/main", false);
    app.wait_for_commit(&expanded, &expanded_id, &forwards)
        .await;
    let at_two = files(&[
        (".gitmodules", gitmodules),
        ("README.md", "v2\n"),
        ("libs/lib/.gitmodules", lib_gitmodules),
        ("libs/lib/a.txt", "a two\n"),
        ("libs/lib/c.txt", "c two\n"),
        ("libs/lib/vendor/inner/x.txt", "inner two\n"),
    ]);
    let received = rig
        .receiver
        .wait_for("the submodules moved forwards", |r| tree(r) == at_two)
        .await;
    let moved = |endpoint: &str, path: &str| (endpoint.to_owned(), path.to_owned());
    assert_eq!(
        changes(&received[seen..]),
        [
            moved("create", "libs/lib/c.txt"),
            moved("delete", "libs/lib/dir/b.txt"),
            moved("update", "README.md"),
            moved("update", "libs/lib/a.txt"),
            moved("update", "libs/lib/vendor/inner/x.txt"),
        ]
    );
    assert!(bodies(&received, "submodule").is_empty());
    let told = plain_inbox
        .wait_for("the plain app's submodule event", |r| {
            !bodies(r, "submodule").is_empty()
        })
        .await;
    assert_eq!(
        bodies(&told, "submodule")[0]["submodule"]["commit"],
        lib_two.as_str()
    );
    assert!(
        tree(&told).keys().all(|path| !path.starts_with("libs/")),
        "a plain subscriber gets no file of a submodule"
    );

    // Backwards: the reverse changes.
    let seen = received.len();
    let backwards = commit_gitlink(&repo, "libs/lib", &lib_one, "lib back at one");
    rig.served.push(&repo, "HEAD:refs/heads/main", false);
    app.wait_for_commit(&expanded, &expanded_id, &backwards)
        .await;
    let mut at_one_again = at_one.clone();
    at_one_again.insert("README.md".into(), "v2\n".into());
    let received = rig
        .receiver
        .wait_for("the submodules moved backwards", |r| {
            tree(r) == at_one_again
        })
        .await;
    assert_eq!(
        changes(&received[seen..]),
        [
            moved("create", "libs/lib/dir/b.txt"),
            moved("delete", "libs/lib/c.txt"),
            moved("update", "libs/lib/a.txt"),
            moved("update", "libs/lib/vendor/inner/x.txt"),
        ]
    );

    // A replay of the forward move sends the submodules' files again.
    let (status, body) = app
        .call(
            Method::POST,
            &format!("/api/repositories/{expanded_id}/replay"),
            Some(&expanded.token),
            Some(json!({"from": start, "to": forwards})),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let replay_id = body["id"].as_str().expect("a replay id").to_owned();
    let replayed = |received: &[Received]| {
        let of_replay: Vec<Received> = received
            .iter()
            .filter(|r| r.json()["replay"]["id"] == replay_id.as_str())
            .cloned()
            .collect();
        changes(&of_replay)
    };
    let received = rig
        .receiver
        .wait_for("the replay", |r| replayed(r).len() == 5)
        .await;
    assert_eq!(
        replayed(&received),
        [
            moved("create", "libs/lib/c.txt"),
            moved("delete", "libs/lib/dir/b.txt"),
            moved("update", "README.md"),
            moved("update", "libs/lib/a.txt"),
            moved("update", "libs/lib/vendor/inner/x.txt"),
        ]
    );
    let inner_file = received
        .iter()
        .rev()
        .find(|r| r.json()["file"]["path"] == "libs/lib/vendor/inner/x.txt")
        .expect("the nested file")
        .json();
    assert_eq!(inner_file["file"]["content"], "inner two\n", "{inner_file}");
}

#[tokio::test]
async fn a_submodule_that_cannot_be_fetched_fails_the_expanded_repository_until_it_is_gone() {
    let repo = TestRepo::new("main");
    repo.write("README.md", "hello\n");
    // A URL Herald never fetches (only https, http and git, and local paths
    // when the server allows them).
    repo.write(
        ".gitmodules",
        "[submodule \"evil\"]\n\tpath = evil\n\turl = ssh://git@127.0.0.1/secret.git\n",
    );
    repo.git(&["add", "README.md", ".gitmodules"]);
    commit_gitlink(
        &repo,
        "evil",
        &"1".repeat(40),
        "with an unfetchable submodule",
    );

    let rig = Rig::serve(&repo).await;
    // The repository's breaker opens after its failures; a short cooldown
    // lets the test see the scan after the fix without an operator.
    let app = engine_with(&[("HERALD__BREAKER__GIT__COOLDOWN", "500ms")]).await;
    let expanded = onboard(&app, &rig.receiver, "expanded").await;
    let expanded_id = watch_expanded(&app, &expanded, &rig.url()).await;
    let plain_inbox = Receiver::start().await;
    let plain = onboard(&app, &plain_inbox, "plain").await;
    watch(&app, &plain, &rig.url()).await;

    let (received, notice) = first_sync_failed(&rig.receiver).await;
    let message = notice["error"]["message"].as_str().expect("a message");
    assert!(
        message.contains("submodule `evil`") && message.contains("not supported"),
        "{notice}"
    );
    assert!(
        !message.contains("secret.git"),
        "no URL in what apps see: {message}"
    );
    assert!(
        received.iter().all(|r| r.endpoint == "sync_failed"),
        "nothing of a tree that could not be read whole"
    );
    // The plain subscriber, a repository of its own, is not held back.
    plain_inbox
        .wait_for("the plain snapshot", |r| {
            tree(r).keys().eq([".gitmodules", "README.md"])
        })
        .await;

    // The submodule removed: the expanded subscriber gets the whole tree.
    repo.git(&["rm", "-q", "--cached", "evil"]);
    repo.write(".gitmodules", "");
    let fixed = repo.commit("no evil");
    rig.served.push(&repo, "HEAD:refs/heads/main", false);
    app.wait_for_commit(&expanded, &expanded_id, &fixed).await;
    rig.receiver
        .wait_for("the expanded snapshot", |r| {
            tree(r) == files(&[(".gitmodules", ""), ("README.md", "hello\n")])
        })
        .await;
}

#[tokio::test]
async fn a_mirror_lost_fetches_the_submodules_again_for_the_waiting_files() {
    let lib = TestRepo::new("main");
    lib.write("src/lib.rs", "pub fn one() {}\n");
    let lib_commit = lib.commit("lib");
    let repo = TestRepo::new("main");
    repo.write(
        ".gitmodules",
        "[submodule \"lib\"]\n\tpath = lib\n\turl = ../lib.git\n",
    );
    repo.git(&["add", ".gitmodules"]);
    commit_gitlink(&repo, "lib", &lib_commit, "with lib");
    let rig = Rig::serve(&repo).await;
    let _lib = rig.served.sibling(&lib, "lib.git");
    rig.receiver
        .fallback(Some(crate::receiver::Reply::status(503)));
    let app = engine_with(&crate::content::PATIENT).await;
    let client = onboard(&app, &rig.receiver, "consumer").await;
    let id = watch_expanded(&app, &client, &rig.url()).await;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    while app.outbox(&client, &id).await.len() < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the scan did not write its events; logs:\n{}",
            app.logs()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }

    // Another instance, or this one after losing its disk: no mirror, and
    // the repository's head did not move, so no scan fetches the submodule.
    let app = crate::content::restart_without_mirrors(app, &crate::content::PATIENT).await;
    rig.receiver.fallback(None);
    rig.receiver
        .wait_for("the submodule's file", |r| {
            tree(r)
                == files(&[
                    (
                        ".gitmodules",
                        "[submodule \"lib\"]\n\tpath = lib\n\turl = ../lib.git\n",
                    ),
                    ("lib/src/lib.rs", "pub fn one() {}\n"),
                ])
        })
        .await;
    let view = app.repository(&client, &id).await;
    assert_eq!(view["failed_events"], 0, "{view}");
}

#[tokio::test]
async fn a_private_submodule_is_read_with_the_credential_only_on_the_same_origin() {
    const ALICE: (&str, &str) = ("alice", "alice-submodule-token-5c1e");
    // The superproject and `lib` on one private server; `elsewhere` on
    // another server (another origin) that accepts the same credential.
    let lib = TestRepo::new("main");
    lib.write("lib.txt", "private lib\n");
    let lib_commit = lib.commit("lib");
    let other = TestRepo::new("main");
    other.write("other.txt", "private elsewhere\n");
    let other_commit = other.commit("other");
    let other_served = crate::gitserver::Served::new(&other, "other.git");
    let other_server = crate::gitserver::HttpGitServer::serve(other_served.root(), Some(ALICE));

    let repo = TestRepo::new("main");
    let with_lib = "[submodule \"lib\"]\n\tpath = lib\n\turl = ../lib.git\n";
    repo.write(".gitmodules", with_lib);
    repo.git(&["add", ".gitmodules"]);
    commit_gitlink(&repo, "lib", &lib_commit, "with lib");
    let served = crate::gitserver::Served::new(&repo, "app.git");
    let _lib = served.sibling(&lib, "lib.git");
    let server = crate::gitserver::HttpGitServer::serve(served.root(), Some(ALICE));

    let receiver = Receiver::start().await;
    let app = engine_with(&[("HERALD__BREAKER__GIT__COOLDOWN", "500ms")]).await;
    let client = onboard(&app, &receiver, "private").await;
    let (status, body) = app
        .register(
            &client,
            json!({
                "url": server.url("app.git"),
                "github_token": format!("{}:{}", ALICE.0, ALICE.1),
                "expand_submodules": true
            }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let id = body["repository_id"].as_str().expect("id").to_owned();
    receiver
        .wait_for("the private submodule's file", |r| {
            tree(r) == files(&[(".gitmodules", with_lib), ("lib/lib.txt", "private lib\n")])
        })
        .await;

    // A submodule on another origin is read without the credential: the
    // server refuses, and the scan says so for that submodule.
    let with_other = format!(
        "{with_lib}[submodule \"other\"]\n\tpath = other\n\turl = {}\n",
        other_server.url("other.git")
    );
    repo.write(".gitmodules", &with_other);
    repo.git(&["add", ".gitmodules"]);
    commit_gitlink(&repo, "other", &other_commit, "with another origin");
    served.push(&repo, "HEAD:refs/heads/main", false);
    let (received, notice) = first_sync_failed(&receiver).await;
    assert_eq!(notice["error"]["type"], "auth_failure", "{notice}");
    assert!(
        notice["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("submodule `other`")),
        "{notice}"
    );
    assert!(
        tree(&received)
            .keys()
            .all(|path| !path.starts_with("other/"))
    );
    let view = app.repository(&client, &id).await;
    assert_eq!(
        view["last_synced_commit"],
        served.rev_parse("HEAD~1"),
        "{view}"
    );
}

#[tokio::test]
async fn a_gitlink_without_a_url_is_not_followed_until_gitmodules_names_it() {
    let lib = TestRepo::new("main");
    lib.write("lib.txt", "the lib\n");
    let lib_commit = lib.commit("lib");
    // An embedded repository committed without `.gitmodules`: git itself
    // cannot check it out.
    let repo = TestRepo::new("main");
    repo.write("README.md", "hello\n");
    repo.git(&["add", "README.md"]);
    commit_gitlink(&repo, "lib", &lib_commit, "an embedded repository");
    let rig = Rig::serve(&repo).await;
    let _lib = rig.served.sibling(&lib, "lib.git");
    let app = engine_with(&[]).await;
    let client = onboard(&app, &rig.receiver, "expanded").await;
    let id = watch_expanded(&app, &client, &rig.url()).await;
    let first = repo.head();
    app.wait_for_commit(&client, &id, &first).await;
    rig.receiver
        .wait_for("the files around it", |r| {
            tree(r) == files(&[("README.md", "hello\n")])
        })
        .await;

    // Once `.gitmodules` names it, its files come.
    let gitmodules = "[submodule \"lib\"]\n\tpath = lib\n\turl = ../lib.git\n";
    repo.write(".gitmodules", gitmodules);
    // Staged alone: `git add -A` would drop the gitlink, which has no
    // folder in the working tree.
    repo.git(&["add", ".gitmodules"]);
    repo.git(&["commit", "-q", "--no-verify", "-m", "name the submodule"]);
    let named = repo.head();
    rig.served.push(&repo, "HEAD:refs/heads/main", false);
    app.wait_for_commit(&client, &id, &named).await;
    let received = rig
        .receiver
        .wait_for("the submodule's files", |r| {
            tree(r)
                == files(&[
                    (".gitmodules", gitmodules),
                    ("README.md", "hello\n"),
                    ("lib/lib.txt", "the lib\n"),
                ])
        })
        .await;
    assert!(received.iter().all(|r| r.endpoint != "sync_failed"));
}

#[tokio::test]
async fn a_submodule_at_a_local_gitfile_fails_the_scan_and_reads_nothing_of_another_repository() {
    // Another app's repository, which Herald mirrors in its data directory.
    let private = TestRepo::new("main");
    private.write("secret.md", "the owner's plan\n");
    let private_commit = private.commit("first");
    let owner_rig = Rig::serve_as(&private, "private.git").await;
    let app = engine_with(&[
        ("HERALD__GIT__ALLOW_LOCAL_REPOS", "true"),
        ("HERALD__BREAKER__GIT__COOLDOWN", "500ms"),
    ])
    .await;
    let owner = onboard(&app, &owner_rig.receiver, "owner").await;
    let owner_id = watch(&app, &owner, &owner_rig.url()).await;
    app.wait_for_commit(&owner, &owner_id, &private_commit)
        .await;
    let mirror = app
        .data_path()
        .join("mirrors")
        .join(format!("{owner_id}.git"));
    assert!(mirror.exists(), "the mirror is where the test expects it");

    // A checkout outside the data directory whose `.git` is a file naming
    // that mirror, as a submodule's local URL, its gitlink at the owner's
    // commit.
    let checkout = tempfile::tempdir().expect("a directory for the checkout");
    std::fs::write(
        checkout.path().join(".git"),
        format!("gitdir: {}\n", mirror.display()),
    )
    .expect("the gitfile");
    let repo = TestRepo::new("main");
    repo.write("README.md", "hello\n");
    repo.write(
        ".gitmodules",
        format!(
            "[submodule \"lib\"]\n\tpath = lib\n\turl = {}\n",
            checkout.path().display()
        ),
    );
    repo.git(&["add", "README.md", ".gitmodules"]);
    commit_gitlink(&repo, "lib", &private_commit, "with the owner's commit");
    let rig = Rig::serve(&repo).await;
    let thief = onboard(&app, &rig.receiver, "thief").await;
    watch_expanded(&app, &thief, &rig.url()).await;

    let received = rig
        .receiver
        .wait_for("a sync_failed or a file of the submodule", |r| {
            r.iter().any(|r| r.endpoint == "sync_failed")
                || tree(r).keys().any(|path| path.starts_with("lib/"))
        })
        .await;
    assert!(
        tree(&received).keys().all(|path| !path.starts_with("lib/")),
        "the other repository's files were delivered: {:?}",
        tree(&received)
    );
    let (received, notice) = first_sync_failed(&rig.receiver).await;
    let message = notice["error"]["message"].as_str().expect("a message");
    assert!(
        message.contains("submodule `lib`") && message.contains("gitfile"),
        "{notice}"
    );
    assert!(
        !message.contains(&checkout.path().display().to_string()),
        "no URL in what apps see: {message}"
    );
    assert!(
        received.iter().all(|r| r.endpoint == "sync_failed"),
        "nothing of a tree that could not be read whole"
    );
}
