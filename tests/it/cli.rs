//! The client CLI (`herald app|repo|events …`): the real binary run as a
//! subprocess against the real server, a real git daemon and a real
//! receiver. Checks the tables, the `--json` output scripts rely on, the
//! exit codes, and that errors say what to do without leaking the token.

use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::io::AsyncWriteExt;

use crate::gitserver::{HttpGitServer, Served, TestRepo};
use crate::helpers::{ADMIN_TOKEN, PUBLIC_BASE_URL, Rig, TestApp, TestClient, engine_with};
use crate::receiver::{Receiver, Reply, verify};

/// What one run of the CLI printed, and how it ended.
#[derive(Debug)]
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    #[track_caller]
    fn ok(&self) -> &Self {
        assert_eq!(self.code, 0, "the command failed: {self:#?}");
        self
    }

    #[track_caller]
    fn json(&self) -> Value {
        self.ok();
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|err| panic!("stdout is not JSON ({err}): {self:#?}"))
    }

    /// The `{"error", "code"}` line that `--json` prints to stderr.
    #[track_caller]
    fn json_error(&self) -> Value {
        assert_ne!(self.code, 0, "the command succeeded: {self:#?}");
        assert!(self.stdout.is_empty(), "nothing on stdout: {self:#?}");
        serde_json::from_str(self.stderr.trim())
            .unwrap_or_else(|err| panic!("stderr is not JSON ({err}): {self:#?}"))
    }

    /// The rows of a table whose first column is `id`.
    fn row(&self, id: &str) -> Option<Vec<String>> {
        self.stdout
            .lines()
            .find(|line| line.split_whitespace().next() == Some(id))
            .map(|line| line.split_whitespace().map(str::to_owned).collect())
    }
}

/// Runs `herald ARGS` with HERALD_URL = `url`, HERALD_TOKEN = `token` (when
/// given), no other HERALD_* variable, `env` added and `stdin` piped in.
async fn run_at(
    url: &str,
    token: Option<&str>,
    args: &[&str],
    env: &[(&str, &str)],
    stdin: Option<&str>,
) -> Run {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_herald"));
    command
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for (key, _) in std::env::vars() {
        if key.starts_with("HERALD") {
            command.env_remove(key);
        }
    }
    command.env("HERALD_URL", url);
    if let Some(token) = token {
        command.env("HERALD_TOKEN", token);
    }
    command.envs(env.iter().copied());
    let mut child = command.spawn().expect("the herald binary starts");
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("piped");
        pipe.write_all(input.as_bytes()).await.expect("stdin");
        drop(pipe);
    }
    let output = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
        .await
        .expect("the CLI finishes within 2 minutes")
        .expect("its output");
    Run {
        code: output.status.code().expect("an exit code, not a signal"),
        stdout: String::from_utf8(output.stdout).expect("utf-8"),
        stderr: String::from_utf8(output.stderr).expect("utf-8"),
    }
}

async fn herald(app: &TestApp, token: &str, args: &[&str]) -> Run {
    run_at(&app.address, Some(token), args, &[], None).await
}

/// Onboards an app through the CLI and reads its secrets from `--json`.
async fn onboard(app: &TestApp, name: &str, base_url: &str) -> TestClient {
    let reply = herald(
        app,
        ADMIN_TOKEN,
        &[
            "app",
            "onboard",
            "--json",
            "--name",
            name,
            "--base-url",
            base_url,
            "--email",
            "dev@example.com",
        ],
    )
    .await
    .json();
    let data = &reply["data"];
    let text = |key: &str| data[key].as_str().expect(key).to_owned();
    TestClient {
        app_id: text("app_id"),
        token: text("token"),
        client_auth_key: text("client_auth_key"),
        webhook_secret: text("webhook_secret"),
    }
}

fn three_files() -> TestRepo {
    let repo = TestRepo::new("main");
    repo.write("docs/a.md", "alpha\n");
    repo.write("docs/b.md", "beta\n");
    repo.write("img.bin", [0u8, 1, 2, 255]);
    repo.commit("first");
    repo
}

#[tokio::test]
async fn apps_are_onboarded_listed_shown_and_deleted() {
    let app = TestApp::spawn().await;

    let client = onboard(&app, "acme", PUBLIC_BASE_URL).await;
    assert!(client.app_id.starts_with("app_"), "{client:?}");
    assert!(client.webhook_secret.starts_with("whsec_"), "{client:?}");
    // The token works against the API.
    assert!(app.repositories(&client).await.is_empty());

    // People get a table with one row per app.
    let list = herald(&app, ADMIN_TOKEN, &["app", "list"]).await;
    let row = list.ok().row(&client.app_id).expect("the app's row");
    assert_eq!(row[1], "acme", "{list:#?}");
    assert_eq!(row[2], PUBLIC_BASE_URL);
    assert_eq!(row[3], "active");
    // Scripts get the server's JSON.
    let listed = herald(&app, ADMIN_TOKEN, &["app", "list", "--json"])
        .await
        .json();
    assert_eq!(listed["data"]["pagination"]["total"], 1);
    assert_eq!(listed["data"]["data"][0]["app_id"], client.app_id.as_str());

    let shown = herald(&app, ADMIN_TOKEN, &["app", "show", &client.app_id]).await;
    shown.ok();
    assert!(shown.stdout.contains("dev@example.com"), "{shown:#?}");
    let shown = herald(
        &app,
        ADMIN_TOKEN,
        &["app", "show", &client.app_id, "--json"],
    )
    .await
    .json();
    assert_eq!(shown["data"]["app_name"], "acme");

    // Deleting asks for confirmation and changes nothing without it.
    let refused = herald(&app, ADMIN_TOKEN, &["app", "delete", &client.app_id]).await;
    assert_eq!(refused.code, 1, "{refused:#?}");
    assert!(refused.stderr.contains("--yes"), "{refused:#?}");
    assert_eq!(app.app_count().await, 1);

    let deleted = herald(
        &app,
        ADMIN_TOKEN,
        &["app", "delete", &client.app_id, "--yes", "--json"],
    )
    .await
    .json();
    assert_eq!(deleted["data"]["deleted"], true);
    assert_eq!(app.app_count().await, 0);
    let empty = herald(&app, ADMIN_TOKEN, &["app", "list"]).await;
    assert!(empty.ok().stdout.contains("No apps yet"), "{empty:#?}");

    // An invalid field is the server's 422, said plainly.
    let invalid = herald(
        &app,
        ADMIN_TOKEN,
        &[
            "app",
            "onboard",
            "--name",
            "x",
            "--base-url",
            PUBLIC_BASE_URL,
            "--email",
            "a@b.co",
        ],
    )
    .await;
    assert_eq!(invalid.code, 1, "{invalid:#?}");
    assert!(
        invalid.stderr.contains("Herald rejected the request"),
        "{invalid:#?}"
    );
    assert_eq!(app.app_count().await, 0);
}

#[tokio::test]
async fn repo_add_wait_returns_once_the_snapshot_is_delivered() {
    let repo = three_files();
    let rig = Rig::serve(&repo).await;
    let receiver = &rig.receiver;
    let app = engine_with(&[]).await;
    let client = onboard(&app, "acme", &receiver.base_url).await;
    let url = rig.url();

    let view = herald(
        &app,
        &client.token,
        &["repo", "add", &url, "--wait", "--json"],
    )
    .await
    .json();
    assert_eq!(view["status"], "synced", "{view}");
    assert_eq!(view["pending_events"], 0, "{view}");
    assert_eq!(view["last_synced_commit"], repo.head().as_str());
    // Returned only once everything had arrived.
    let accepted = receiver.accepted();
    assert_eq!(accepted.len(), 3, "the whole snapshot is delivered");
    for request in &accepted {
        verify(request, &client.client_auth_key, &client.webhook_secret);
    }
    let id = view["repository_id"].as_str().expect("id").to_owned();

    // Registering again keeps the id and sends the whole tree again (as
    // Docora does); the table mode says it synced once it arrived.
    let again = herald(&app, &client.token, &["repo", "add", &url, "--wait"]).await;
    again.ok();
    assert!(again.stdout.contains(&id), "{again:#?}");
    assert!(again.stdout.contains("Synced"), "{again:#?}");
    assert_eq!(receiver.accepted().len(), 6, "the whole tree again");

    // Tables for people.
    let short = &repo.head()[..12];
    let list = herald(&app, &client.token, &["repo", "list"]).await;
    let row = list.ok().row(&id).expect("the repository's row");
    assert_eq!(
        row[1],
        view["github_url"].as_str().expect("url"),
        "{list:#?}"
    );
    assert_eq!(row[2..7], ["main", "synced", short, "0", "0"], "{list:#?}");
    let shown = herald(&app, &client.token, &["repo", "show", &id]).await;
    assert!(shown.ok().stdout.contains(&repo.head()), "{shown:#?}");

    let events = herald(&app, &client.token, &["events", "list"]).await;
    events.ok();
    let listed = herald(&app, &client.token, &["events", "list", "--json"])
        .await
        .json();
    let listed = listed["data"].as_array().expect("a list").clone();
    assert_eq!(listed.len(), 6, "the tree, twice");
    for event in &listed {
        let event_id = event["event_id"].as_str().expect("id");
        let row = events.row(event_id).expect("a row per event");
        assert_eq!(row[1], id);
        assert_eq!(row[3], "created");
        assert_eq!(row[4], event["path"].as_str().expect("path"));
        assert_eq!(row[5], "delivered");
    }

    // One event with its attempts: the receiver answered 200.
    let first = listed[0]["event_id"].as_str().expect("id");
    let detail = herald(&app, &client.token, &["events", "show", first]).await;
    detail.ok();
    assert!(detail.stdout.contains("docs/a.md"), "{detail:#?}");
    let attempt = detail
        .stdout
        .lines()
        .skip_while(|line| !line.starts_with("ATTEMPTED AT"))
        .nth(1)
        .expect("one attempt row");
    assert_eq!(
        attempt.split_whitespace().nth(2),
        Some("200"),
        "{detail:#?}"
    );
    let detail = herald(&app, &client.token, &["events", "show", first, "--json"])
        .await
        .json();
    assert_eq!(detail["attempts"].as_array().expect("attempts").len(), 1);

    // A delivered event cannot be retried: 409, said plainly.
    let conflict = herald(&app, &client.token, &["events", "retry", first, "--json"]).await;
    let error = conflict.json_error();
    assert_eq!(conflict.code, 1);
    assert_eq!(error["code"], "conflict");
    assert_eq!(error["status"], 409);
    assert!(
        error["error"]
            .as_str()
            .expect("message")
            .contains("only a pending or dead event can be retried"),
        "{error}"
    );

    // Resync delivers the tree again.
    let resync = herald(&app, &client.token, &["repo", "resync", &id]).await;
    assert!(resync.ok().stdout.contains("Re-sync queued"), "{resync:#?}");
    receiver.wait_for("the tree again", |r| r.len() == 9).await;

    let removed = herald(&app, &client.token, &["repo", "remove", &id, "--json"])
        .await
        .json();
    assert_eq!(removed["removed"], true);
    assert!(app.repositories(&client).await.is_empty());
    let empty = herald(&app, &client.token, &["repo", "list"]).await;
    assert!(
        empty.ok().stdout.contains("No repositories yet"),
        "{empty:#?}"
    );
}

#[tokio::test]
async fn a_dead_event_fails_the_wait_and_retry_delivers_it() {
    let repo = three_files();
    let rig = Rig::serve(&repo).await;
    let receiver = &rig.receiver;
    // The endpoint refuses everything until it is fixed.
    receiver.fallback(Some(Reply::status(422)));
    let app = engine_with(&[("HERALD__DELIVERY__MAX_ATTEMPTS", "2")]).await;
    let client = onboard(&app, "acme", &receiver.base_url).await;
    let url = rig.url();

    let failed = herald(&app, &client.token, &["repo", "add", &url, "--wait"]).await;
    assert_eq!(failed.code, 6, "{failed:#?}");
    assert!(
        failed.stderr.contains("could not be delivered")
            && failed.stderr.contains("--status dead")
            && failed.stderr.contains("herald events retry"),
        "{failed:#?}"
    );

    let dead = herald(
        &app,
        &client.token,
        &["events", "list", "--status", "dead", "--json"],
    )
    .await
    .json();
    let dead = dead["data"].as_array().expect("a list").clone();
    assert_eq!(dead.len(), 1, "{dead:?}");
    let event_id = dead[0]["event_id"].as_str().expect("id").to_owned();
    let shown = herald(&app, &client.token, &["events", "show", &event_id]).await;
    let attempts: Vec<&str> = shown
        .ok()
        .stdout
        .lines()
        .skip_while(|line| !line.starts_with("ATTEMPTED AT"))
        .skip(1)
        .collect();
    assert_eq!(attempts.len(), 2, "{shown:#?}");
    assert!(attempts.iter().all(|a| a.contains("422")), "{shown:#?}");

    // The endpoint is fixed; retry, and the subscription goes on to the end.
    // (Adding the repository again would send the whole tree again.)
    receiver.fallback(None);
    let retried = herald(&app, &client.token, &["events", "retry", &event_id]).await;
    assert!(retried.ok().stdout.contains("Retry queued"), "{retried:#?}");
    receiver
        .wait_for("the three files after the retry", |r| r.len() == 3)
        .await;
    let repository_id = dead[0]["repository_id"].as_str().expect("repository id");
    let synced = app
        .wait_for(&client, repository_id, "synced", |v| {
            v["status"] == "synced"
        })
        .await;
    assert_eq!(synced["pending_events"], 0, "{synced}");
    assert_eq!(receiver.accepted().len(), 3);

    // Skipping a delivered event is refused.
    let skip = herald(&app, &client.token, &["events", "skip", &event_id]).await;
    assert_eq!(skip.code, 1, "{skip:#?}");
    assert!(skip.stderr.contains("events show"), "{skip:#?}");
}

#[tokio::test]
async fn a_repository_git_cannot_read_fails_the_wait_with_what_to_do() {
    let repo = three_files();
    let public = Served::new(&repo, "r.git");
    let open = HttpGitServer::serve(public.root(), None);
    let private = Served::new(&repo, "private.git");
    let server = HttpGitServer::serve(private.root(), Some(("deploy", "right-token")));
    // Nothing listens on this port.
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a port");
        listener.local_addr().expect("address").port()
    };
    let receiver = Receiver::start().await;
    let app = engine_with(&[]).await;
    let client = onboard(&app, "acme", &receiver.base_url).await;

    // Each case fails at once, before any wait: the server checks access
    // before it registers anything.
    let missing = herald(
        &app,
        &client.token,
        &["repo", "add", &open.url("missing.git"), "--wait", "--json"],
    )
    .await;
    let error = missing.json_error();
    assert_eq!(missing.code, 5, "{missing:#?}");
    assert_eq!(error["code"], "repository_not_found");
    assert_eq!(error["status"], 404);
    let message = error["error"].as_str().expect("message");
    assert!(
        message.contains("not found") && message.contains("Check the URL and the branch"),
        "{message}"
    );

    let branch = herald(
        &app,
        &client.token,
        &[
            "repo",
            "add",
            &open.url("r.git"),
            "--branch",
            "nope",
            "--wait",
        ],
    )
    .await;
    assert_eq!(branch.code, 5, "{branch:#?}");
    assert!(
        branch.stderr.contains("nope") && branch.stderr.contains("--branch"),
        "{branch:#?}"
    );
    assert!(!branch.stdout.contains("Watching"), "{branch:#?}");

    let anonymous = herald(
        &app,
        &client.token,
        &[
            "repo",
            "add",
            &server.url("private.git"),
            "--wait",
            "--json",
        ],
    )
    .await;
    let error = anonymous.json_error();
    assert_eq!(anonymous.code, 1, "{anonymous:#?}");
    assert_eq!(error["code"], "repository_access_denied");
    assert_eq!(error["status"], 422);
    let message = error["error"].as_str().expect("message");
    assert!(
        message.contains("--git-token-env") && message.contains("herald repo set-token"),
        "{message}"
    );

    let refused = run_at(
        &app.address,
        Some(&client.token),
        &[
            "repo",
            "add",
            &server.url("private.git"),
            "--git-token-env",
            "HERALD_TEST_GIT_TOKEN",
            "--wait",
        ],
        &[("HERALD_TEST_GIT_TOKEN", "deploy:wr0ng-t0ken")],
        None,
    )
    .await;
    assert_eq!(refused.code, 1, "{refused:#?}");
    assert!(
        refused.stderr.contains("refused") && refused.stderr.contains("herald repo set-token"),
        "{refused:#?}"
    );
    assert!(
        !refused.stderr.contains("wr0ng-t0ken") && !refused.stdout.contains("wr0ng-t0ken"),
        "{refused:#?}"
    );
    assert!(
        server
            .request_log()
            .iter()
            .any(|r| r.basic == Some(("deploy".to_owned(), "wr0ng-t0ken".to_owned()))),
        "the token from the environment was presented"
    );

    let down = format!("git://127.0.0.1:{port}/r.git");
    let unreachable = herald(
        &app,
        &client.token,
        &["repo", "add", &down, "--wait", "--json"],
    )
    .await;
    let error = unreachable.json_error();
    assert_eq!(unreachable.code, 1, "{unreachable:#?}");
    assert_eq!(error["code"], "repository_unreachable");
    assert_eq!(error["status"], 502);
    let message = error["error"].as_str().expect("message");
    assert!(
        message.contains("could not be reached") && message.contains("check the URL"),
        "{message}"
    );

    // Nothing was registered, and nothing was delivered.
    assert!(app.repositories(&client).await.is_empty());
    assert_eq!(app.stored_rows("repositories").await, 0);
    let empty = herald(&app, &client.token, &["repo", "list"]).await;
    assert!(
        empty.ok().stdout.contains("No repositories yet"),
        "{empty:#?}"
    );
    assert_eq!(receiver.arrivals(), 0);
}

#[tokio::test]
async fn git_tokens_come_from_stdin_or_the_environment_never_argv() {
    let repo = three_files();
    let served = Served::new(&repo, "r.git");
    // A plain token is offered as the password of `x-access-token`; the
    // remote reads only with the right one, so a token that works proves it
    // was read from where it was given.
    let server = HttpGitServer::serve(
        served.root(),
        Some(("x-access-token", "ghp_from_the_environment")),
    );
    let receiver = Receiver::start().await;
    let app = engine_with(&[]).await;
    let client = onboard(&app, "acme", &receiver.base_url).await;
    let url = server.url("r.git");
    let env = [("HERALD_TEST_GIT_TOKEN", "ghp_from_the_environment")];

    let added = run_at(
        &app.address,
        Some(&client.token),
        &[
            "repo",
            "add",
            &url,
            "--git-token-env",
            "HERALD_TEST_GIT_TOKEN",
            "--json",
        ],
        &env,
        None,
    )
    .await
    .json();
    assert_eq!(
        added["is_private"], true,
        "the remote refuses anyone without a token: {added}"
    );
    let id = added["repository_id"].as_str().expect("id").to_owned();
    assert!(server.authenticated_as("x-access-token") >= 1);

    // A token piped in is the one checked against the remote: a wrong one
    // is refused and changes nothing, the right one is taken.
    let wrong = run_at(
        &app.address,
        Some(&client.token),
        &["repo", "set-token", &id, "--json"],
        &[],
        Some("ghp_from_stdin\n"),
    )
    .await;
    let error = wrong.json_error();
    assert_eq!(error["code"], "repository_access_denied", "{wrong:#?}");
    assert!(!wrong.stderr.contains("ghp_from_stdin"), "{wrong:#?}");
    assert!(
        server.request_log().iter().any(|r| r.basic
            == Some(("x-access-token".to_owned(), "ghp_from_stdin".to_owned()))
            && !r.authorized),
        "the token from stdin was presented, and refused"
    );
    let piped = run_at(
        &app.address,
        Some(&client.token),
        &["repo", "set-token", &id],
        &[],
        Some("ghp_from_the_environment\n"),
    )
    .await;
    assert!(piped.ok().stdout.contains("updated"), "{piped:#?}");
    let from_env = run_at(
        &app.address,
        Some(&client.token),
        &[
            "repo",
            "set-token",
            &id,
            "--git-token-env",
            "HERALD_TEST_GIT_TOKEN",
            "--json",
        ],
        &env,
        None,
    )
    .await
    .json();
    assert_eq!(from_env["message"], "Token updated successfully");

    // Empty input and a missing variable are refused before any request.
    let empty = run_at(
        &app.address,
        Some(&client.token),
        &["repo", "set-token", &id],
        &[],
        Some("\n"),
    )
    .await;
    assert_eq!(empty.code, 1, "{empty:#?}");
    assert!(empty.stderr.contains("empty"), "{empty:#?}");
    let missing = herald(
        &app,
        &client.token,
        &[
            "repo",
            "set-token",
            &id,
            "--git-token-env",
            "HERALD_TEST_UNSET",
        ],
    )
    .await;
    assert_eq!(missing.code, 1, "{missing:#?}");
    assert!(missing.stderr.contains("HERALD_TEST_UNSET"), "{missing:#?}");
    // There is no flag that takes the token itself.
    let argv = herald(
        &app,
        &client.token,
        &["repo", "set-token", &id, "--git-token", "x"],
    )
    .await;
    assert_eq!(argv.code, 2, "{argv:#?}");
}

#[tokio::test]
async fn errors_say_what_to_do_and_never_show_the_token() {
    let app = TestApp::spawn().await;
    let client = app.onboard("acme").await;
    let wrong = "herald_0000000000000000_not-a-valid-token-at-all";

    // A wrong token: exit 4, a hint about HERALD_TOKEN, not the token.
    let refused = herald(&app, wrong, &["repo", "list"]).await;
    assert_eq!(refused.code, 4, "{refused:#?}");
    assert!(refused.stderr.contains("HERALD_TOKEN"), "{refused:#?}");
    assert!(
        refused.stderr.contains("herald app onboard"),
        "{refused:#?}"
    );
    assert!(!refused.stderr.contains(wrong) && !refused.stdout.contains(wrong));
    let refused = herald(&app, wrong, &["app", "list", "--json"]).await;
    let error = refused.json_error();
    assert_eq!(refused.code, 4);
    assert_eq!(error["code"], "unauthorized");
    assert_eq!(error["status"], 401);
    assert!(
        error["error"]
            .as_str()
            .expect("message")
            .contains("admin token")
    );
    assert!(!refused.stderr.contains(wrong));
    // The app token is not the admin token.
    let not_admin = herald(&app, &client.token, &["app", "list"]).await;
    assert_eq!(not_admin.code, 4, "{not_admin:#?}");
    assert!(!not_admin.stderr.contains(&client.token));

    // No token at all.
    let none = run_at(&app.address, None, &["events", "list", "--json"], &[], None).await;
    assert_eq!(none.code, 4, "{none:#?}");
    assert_eq!(none.json_error()["code"], "no_token");

    // An unknown id: exit 5, and where to find the ids.
    for args in [
        ["repo", "show", "repo_01hzzzzzzzzzzzzzzzzzzzzzzz"],
        ["events", "show", "evt_01hzzzzzzzzzzzzzzzzzzzzzzz"],
        ["repo", "show", "../../admin/api/apps"],
    ] {
        let missing = herald(&app, &client.token, &args).await;
        assert_eq!(missing.code, 5, "{missing:#?}");
        assert!(missing.stderr.contains("herald repo list"), "{missing:#?}");
    }
    let missing = herald(&app, ADMIN_TOKEN, &["app", "show", "app_nope", "--json"]).await;
    assert_eq!(missing.code, 5, "{missing:#?}");
    assert_eq!(missing.json_error()["code"], "not_found");

    // Bad input is the server's 422, and nothing is registered.
    let invalid = herald(
        &app,
        &client.token,
        &["repo", "add", "ftp://example.com/r.git"],
    )
    .await;
    assert_eq!(invalid.code, 1, "{invalid:#?}");
    assert!(
        invalid.stderr.contains("Herald rejected the request"),
        "{invalid:#?}"
    );
    assert!(app.repositories(&client).await.is_empty());

    // Herald is not running there.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a port");
        format!(
            "http://127.0.0.1:{}",
            listener.local_addr().expect("addr").port()
        )
    };
    let down = run_at(&closed, Some(wrong), &["repo", "list"], &[], None).await;
    assert_eq!(down.code, 3, "{down:#?}");
    assert!(
        down.stderr.contains("is it running") && down.stderr.contains("herald serve"),
        "{down:#?}"
    );
    assert!(!down.stderr.contains(wrong));
    let down = run_at(&closed, Some(wrong), &["repo", "list", "--json"], &[], None).await;
    assert_eq!(down.json_error()["code"], "unreachable");

    // Something that is not Herald answers there.
    let receiver = Receiver::start().await;
    receiver.fallback(Some(Reply::status(404)));
    let elsewhere = run_at(
        &receiver.base_url,
        Some(wrong),
        &["repo", "resync", "repo_01hzzzzzzzzzzzzzzzzzzzzzzz"],
        &[],
        None,
    )
    .await;
    assert_eq!(elsewhere.code, 3, "{elsewhere:#?}");
    assert!(elsewhere.stderr.contains("HERALD_URL"), "{elsewhere:#?}");
    let received = receiver.received();
    assert_eq!(received.len(), 1);
    assert_eq!(
        received[0].header("authorization"),
        format!("Bearer {wrong}")
    );
    assert!(
        !String::from_utf8_lossy(&received[0].body).contains(wrong),
        "the token goes only in the Authorization header"
    );
}

#[tokio::test]
async fn an_app_updates_its_settings_and_rotates_its_key_from_the_cli() {
    let app = engine_with(&[]).await;
    let client = onboard(&app, "acme", "https://example.com/hooks").await;

    let updated = herald(
        &app,
        &client.token,
        &[
            "app",
            "update",
            "--json",
            "--notify-synced",
            "true",
            "--notify-submodules",
            "true",
            "--resolve-lfs",
            "false",
        ],
    )
    .await;
    assert_eq!(updated.code, 0, "{}", updated.stderr);
    assert_eq!(updated.json()["notify_synced"], true);
    assert_eq!(updated.json()["notify_submodules"], true);
    assert_eq!(updated.json()["resolve_lfs"], false);

    let refused = herald(
        &app,
        &client.token,
        &["app", "update", "--base-url", "ftp://example.com"],
    )
    .await;
    assert_ne!(refused.code, 0);
    assert!(refused.stderr.contains("base_url"), "{}", refused.stderr);

    let widened = herald(&app, &client.token, &["app", "update", "--window", "8"]).await;
    assert_eq!(widened.code, 0, "{}", widened.stderr);
    assert_eq!(
        widened.row("window"),
        Some(vec!["window".to_owned(), "8".to_owned()]),
        "{widened:#?}"
    );
    for bad in ["0", "65"] {
        let refused = herald(&app, &client.token, &["app", "update", "--window", bad]).await;
        assert_eq!(refused.code, 1, "{refused:#?}");
        assert!(refused.stderr.contains("window"), "{}", refused.stderr);
    }
    // Operators see it where the CLI shows apps.
    let shown = herald(&app, ADMIN_TOKEN, &["app", "show", &client.app_id]).await;
    assert_eq!(
        shown.ok().row("window"),
        Some(vec!["window".to_owned(), "8".to_owned()]),
        "{shown:#?}"
    );
    // The app pulls its events from now on: operators see that too.
    let pulling = herald(
        &app,
        &client.token,
        &["app", "update", "--delivery", "pull"],
    )
    .await;
    assert_eq!(pulling.code, 0, "{}", pulling.stderr);
    let refused = herald(
        &app,
        &client.token,
        &["app", "update", "--delivery", "poll"],
    )
    .await;
    assert_ne!(refused.code, 0, "{refused:#?}");
    let list = herald(&app, ADMIN_TOKEN, &["app", "list"]).await;
    let row = list.ok().row(&client.app_id).expect("the app's row");
    assert_eq!(
        (row[4].as_str(), row[5].as_str()),
        ("pull", "8"),
        "{list:#?}"
    );
    let wide = herald(
        &app,
        ADMIN_TOKEN,
        &[
            "app",
            "onboard",
            "--json",
            "--name",
            "wide",
            "--base-url",
            "https://example.com/hooks",
            "--email",
            "dev@example.com",
            "--window",
            "16",
        ],
    )
    .await;
    assert_eq!(wide.code, 0, "{}", wide.stderr);
    let wide_id = wide.json()["data"]["app_id"]
        .as_str()
        .expect("an app id")
        .to_owned();
    let shown = herald(&app, ADMIN_TOKEN, &["app", "show", &wide_id, "--json"]).await;
    assert_eq!(shown.json()["data"]["window"], 16);

    let rotated = herald(&app, &client.token, &["app", "rotate-key", "--json"]).await;
    assert_eq!(rotated.code, 0, "{}", rotated.stderr);
    let body = rotated.json();
    let key = body["client_auth_key"].as_str().expect("a new key");
    assert_ne!(key, client.client_auth_key);
    assert!(
        body["webhook_secret"]
            .as_str()
            .expect("secret")
            .starts_with("whsec_")
    );
    assert!(body["previous_key_expires_at"].is_string());
}
