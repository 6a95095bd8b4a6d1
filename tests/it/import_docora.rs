//! `herald import-docora` (SPEC §12): a Docora database at its real schema,
//! rows written as Docora writes them, imported into Herald's database
//! (SQLite, or PostgreSQL with TEST_DATABASE_URL), then the real server on
//! it: Docora tokens and signing keys work unchanged, and the first scan
//! sends each app only what differs from what it holds. Every refusal
//! writes nothing.

use base64::Engine as _;
use reqwest::{Method, StatusCode};
use sea_orm::{ConnectionTrait, Database};
use serde_json::Value;

use crate::gitserver::TestRepo;
use crate::helpers::docora::{DocoraDb, ImportRun, Target, sha256};
use crate::helpers::{Rig, TestApp, TestClient, TestDatabase, database_url};
use crate::receiver::{Receiver, verify};

/// Herald's tables an import writes.
const TABLES: [&str; 4] = ["apps", "repositories", "subscriptions", "held_files"];

/// Rows per table of Herald's database in `dir`.
async fn rows(dir: &std::path::Path, database: &TestDatabase) -> Vec<i64> {
    let db = Database::connect(database_url(dir, database))
        .await
        .expect("Herald's database opens");
    let mut counts = Vec::new();
    for table in TABLES {
        let row = db
            .query_one_raw(sea_orm::Statement::from_string(
                db.get_database_backend(),
                format!("SELECT COUNT(*) AS n FROM {table}"),
            ))
            .await
            .expect("the count runs")
            .expect("a count");
        counts.push(row.try_get::<i64>("", "n").expect("a number"));
    }
    db.close().await.ok();
    counts
}

/// One value of Herald's database in `dir`.
async fn stored(dir: &std::path::Path, database: &TestDatabase, sql: &str) -> Option<String> {
    let db = Database::connect(database_url(dir, database))
        .await
        .expect("Herald's database opens");
    let row = db
        .query_one_raw(sea_orm::Statement::from_string(
            db.get_database_backend(),
            sql.to_owned(),
        ))
        .await
        .expect("the query runs");
    db.close().await.ok();
    row.and_then(|row| row.try_get_by_index::<Option<String>>(0).ok().flatten())
}

#[track_caller]
fn refused(run: &ImportRun, says: &str, secrets: &[&str]) {
    assert_ne!(run.code, 0, "the import was refused: {run:#?}");
    assert!(
        run.stderr.contains(says),
        "the error says {says:?}: {run:#?}"
    );
    for secret in secrets {
        assert!(
            !run.stdout.contains(secret) && !run.stderr.contains(secret),
            "no secret in the output: {run:#?}"
        );
    }
}

fn client_of(app: &crate::helpers::docora::DocoraApp) -> TestClient {
    TestClient {
        app_id: app.app_id.clone(),
        token: app.token.clone(),
        client_auth_key: app.client_auth_key.clone(),
        webhook_secret: format!(
            "whsec_{}",
            base64::engine::general_purpose::STANDARD.encode(app.client_auth_key.as_bytes())
        ),
    }
}

#[tokio::test]
async fn a_docora_deployment_moves_with_its_ids_tokens_and_what_each_app_holds() {
    // Repository U: what app A and app B hold is exactly its tree.
    let unchanged = TestRepo::new("main");
    unchanged.write("x.md", "x1\n");
    unchanged.write("y.md", "y1\n");
    unchanged.commit("u");
    let rig_u = Rig::serve_as(&unchanged, "u.git").await;
    // Repository C: app A holds an older state of it.
    let changed = TestRepo::new("main");
    changed.write("keep.md", "keep\n");
    changed.write("changed.md", "new\n");
    changed.write("new.md", "fresh\n");
    changed.commit("c");
    let rig_c = Rig::serve_as(&changed, "c.git").await;
    let receiver_b = Receiver::start().await;

    let docora = DocoraDb::create().await;
    let a = docora.add_app("Alpha", &rig_u.receiver.base_url).await;
    let b = docora.add_app("Beta", &receiver_b.base_url).await;
    let u = docora.add_repository(&rig_u.url(), "acme", "u").await;
    let c = docora.add_repository(&rig_c.url(), "acme", "c").await;
    docora.link(&a, &u, None, "synced", None).await;
    docora
        .link(
            &a,
            &c,
            Some("ghp_docora_secret_token"),
            "failed",
            Some("fetch failed"),
        )
        .await;
    docora.link(&b, &u, None, "synced", None).await;
    for app in [&a, &b] {
        docora.delivered(app, &u, "x.md", b"x1\n").await;
        docora.delivered(app, &u, "y.md", b"y1\n").await;
    }
    docora.delivered(&a, &c, "keep.md", b"keep\n").await;
    docora.delivered(&a, &c, "changed.md", b"old\n").await;
    docora.delivered(&a, &c, "gone.md", b"gone\n").await;

    let target = Target::new(&docora).await;
    let run = target.import(&docora, &["--json"]).await;
    assert_eq!(run.code, 0, "{run:#?}");
    let summary: Value = serde_json::from_str(&run.stdout).expect("a JSON summary");
    assert_eq!(summary["apps"], 2, "{summary}");
    assert_eq!(summary["repositories"], 2, "{summary}");
    assert_eq!(summary["subscriptions"], 3, "{summary}");
    assert_eq!(summary["delivered_files"], 7, "{summary}");
    for secret in [
        a.client_auth_key.as_str(),
        a.token.as_str(),
        docora.key.as_str(),
        "ghp_docora_secret_token",
    ] {
        assert!(!run.stdout.contains(secret) && !run.stderr.contains(secret));
    }
    // The subscription keeps Docora's status and last error until a scan.
    let status = stored(
        target.dir.path(),
        &target.database,
        &format!(
            "SELECT status || '/' || last_error FROM subscriptions WHERE app_id = '{}' AND repository_id = '{c}'",
            a.app_id
        ),
    )
    .await;
    assert_eq!(status.as_deref(), Some("failed/fetch failed"));
    assert_eq!(
        rows(target.dir.path(), &target.database).await,
        vec![2, 2, 3, 7]
    );
    // Tokens are Docora's bcrypt hashes until their first use.
    let lookup = stored(
        target.dir.path(),
        &target.database,
        &format!("SELECT token_lookup FROM apps WHERE id = '{}'", a.app_id),
    )
    .await;
    assert_eq!(lookup, Some(format!("legacy:{}", a.app_id)));

    let app = TestApp::builder()
        .fast()
        .data_dir(target.dir)
        .spawn_with(target.database)
        .await;
    let client_a = client_of(&a);
    let client_b = client_of(&b);
    // A Docora token that is not one: refused.
    let (status, _) = app
        .call(
            Method::GET,
            "/api/repositories",
            Some(&format!("docora_{}", "0".repeat(64))),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // Each app's token works; the repositories keep their ids.
    app.wait_for_commit(&client_a, &c, &changed.head()).await;
    app.wait_for_commit(&client_a, &u, &unchanged.head()).await;
    app.wait_for_commit(&client_b, &u, &unchanged.head()).await;

    // The scans wrote every event with their snapshots: A gets exactly the
    // difference of C, B nothing, A nothing of U.
    let events_a = app
        .wait_for_events(&client_a, "limit=100", "A's events", |events| {
            events.len() == 3 && events.iter().all(|e| e["status"] == "delivered")
        })
        .await;
    assert!(
        events_a.iter().all(|e| e["repository_id"] == c),
        "{events_a:?}"
    );
    let events_b = app
        .wait_for_events(&client_b, "limit=100", "B's events", |_| true)
        .await;
    assert!(events_b.is_empty(), "{events_b:?}");

    let received = rig_u.receiver.received();
    let seen: Vec<(String, String)> = received
        .iter()
        .map(|r| {
            let body = r.json();
            (
                r.endpoint.clone(),
                body["file"]["path"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        vec![
            ("delete".to_owned(), "gone.md".to_owned()),
            ("create".to_owned(), "new.md".to_owned()),
            ("update".to_owned(), "changed.md".to_owned()),
        ]
    );
    for request in &received {
        verify(request, &client_a.client_auth_key, &client_a.webhook_secret);
        assert_eq!(request.header("x-docora-app-id"), a.app_id);
        assert_eq!(request.json()["repository"]["repository_id"], c);
    }
    assert_eq!(received[0].json()["file"]["sha"], sha256(b"gone\n"));
    assert_eq!(received[2].json()["file"]["sha"], sha256(b"new\n"));
    assert_eq!(received[2].json()["previous_sha"], sha256(b"old\n"));
    assert_eq!(receiver_b.arrivals(), 0);

    // A's token was upgraded on its first use; it still works, and so
    // does B's, upgraded now.
    for id in [&a.app_id, &b.app_id] {
        let lookup = stored(
            app.data_dir.path(),
            &app.database,
            &format!("SELECT token_lookup FROM apps WHERE id = '{id}'"),
        )
        .await;
        assert!(lookup.is_some_and(|l| l.starts_with("docora:")), "{id}");
    }
    let view = app.repository(&client_b, &u).await;
    assert_eq!(view["repository_id"], u);
    let view = app.repository(&client_a, &u).await;
    assert_eq!(view["repository_id"], u);
}

#[tokio::test]
async fn a_dry_run_counts_the_first_scan_per_app_and_writes_nothing() {
    let docora = DocoraDb::create().await;
    let receiver = Receiver::start().await;
    let a = docora.add_app("Alpha", &receiver.base_url).await;
    let b = docora.add_app("Beta", &receiver.base_url).await;
    let scanned = docora
        .add_repository("https://127.0.0.1/acme/scanned", "acme", "scanned")
        .await;
    let fresh = docora
        .add_repository("https://127.0.0.1/acme/fresh", "acme", "fresh")
        .await;
    docora
        .snapshot(
            &scanned,
            &"a".repeat(40),
            &[
                ("same.md", b"same"),
                ("differs.md", b"v2"),
                ("added.md", b"new"),
            ],
        )
        .await;
    docora.link(&a, &scanned, None, "synced", None).await;
    docora.link(&b, &scanned, None, "synced", None).await;
    docora
        .link(&b, &fresh, None, "pending_snapshot", None)
        .await;
    docora.delivered(&a, &scanned, "same.md", b"same").await;
    docora.delivered(&a, &scanned, "differs.md", b"v1").await;
    docora.delivered(&a, &scanned, "removed.md", b"old").await;
    for (path, bytes) in [
        ("same.md", &b"same"[..]),
        ("differs.md", b"v2"),
        ("added.md", b"new"),
    ] {
        docora.delivered(&b, &scanned, path, bytes).await;
    }

    let target = Target::new(&docora).await;
    let (dir, database) = (&target.dir, &target.database);
    // A dry run writes nothing, not even Herald's schema: migrate first.
    let run = target.import(&docora, &["--dry-run"]).await;
    refused(&run, "herald migrate", &[&docora.key]);
    let migrated = tokio::process::Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["migrate", "--data-dir"])
        .arg(dir.path().join("data"))
        .envs(
            database
                .url
                .iter()
                .map(|url| ("HERALD__DATABASE__URL", url.as_str())),
        )
        .current_dir(dir.path())
        .output()
        .await
        .expect("herald migrate runs");
    assert!(migrated.status.success(), "{migrated:?}");

    // The key from the environment, this time.
    let run = target
        .import_with_env(
            &docora,
            &["--dry-run", "--json"],
            &[("DOCORA_ENCRYPTION_KEY", &docora.key)],
        )
        .await;
    assert_eq!(run.code, 0, "{run:#?}");
    let summary: Value = serde_json::from_str(&run.stdout).expect("JSON");
    assert_eq!(summary["dry_run"], true);
    assert_eq!(summary["subscriptions"], 3);
    assert_eq!(summary["delivered_files"], 6);
    let first = &summary["first_scan"];
    assert_eq!(
        first[&a.app_id],
        serde_json::json!({"create": 1, "update": 1, "delete": 1, "repositories_not_scanned": 0})
    );
    assert_eq!(
        first[&b.app_id],
        serde_json::json!({"create": 0, "update": 0, "delete": 0, "repositories_not_scanned": 1})
    );
    assert_eq!(rows(dir.path(), database).await, vec![0, 0, 0, 0]);

    // The text form says the same, for a person.
    let run = target.import(&docora, &["--dry-run"]).await;
    assert_eq!(run.code, 0, "{run:#?}");
    assert!(run.stdout.contains("nothing was written"), "{run:#?}");
    assert!(run.stdout.contains(&a.app_id), "{run:#?}");
    assert_eq!(rows(dir.path(), database).await, vec![0, 0, 0, 0]);
}

#[tokio::test]
async fn every_refusal_names_the_row_and_writes_nothing() {
    let docora = DocoraDb::create().await;
    let receiver = Receiver::start().await;
    let a = docora.add_app("Alpha", &receiver.base_url).await;
    let repo = docora
        .add_repository("https://127.0.0.1/acme/widgets", "acme", "widgets")
        .await;
    docora
        .link(&a, &repo, Some("ghp_docora_secret_token"), "synced", None)
        .await;
    docora.delivered(&a, &repo, "a.md", b"a").await;
    let secrets = [
        docora.key.as_str(),
        a.token.as_str(),
        a.client_auth_key.as_str(),
        "ghp_docora_secret_token",
    ];

    let target = Target::new(&docora).await;
    let (dir, database) = (&target.dir, &target.database);
    let nothing = vec![0, 0, 0, 0];

    // No key at all.
    let run = target.import_with_env(&docora, &[], &[]).await;
    refused(&run, "--docora-key-file", &secrets);

    // The wrong key: the authentication tag does not match.
    let run = target
        .import_with_env(&docora, &[], &[("DOCORA_ENCRYPTION_KEY", &"ab".repeat(32))])
        .await;
    refused(
        &run,
        &format!("app {}: client_auth_key_encrypted", a.app_id),
        &secrets,
    );
    assert!(run.stderr.contains("authentication tag"), "{run:#?}");
    assert_eq!(rows(dir.path(), database).await, nothing);

    // A schema newer than Herald knows.
    docora
        .execute(
            "INSERT INTO databasechangelog VALUES ('008-01-something-new', 'docora', \
             'changelog/008-new.yml', NOW(), 12, 'EXECUTED', NULL, '', '', NULL, '4.29.2', \
             NULL, NULL, '0000000002')",
        )
        .await;
    let run = target.import(&docora, &[]).await;
    refused(&run, "008-01-something-new", &secrets);
    assert_eq!(rows(dir.path(), database).await, nothing);
    docora
        .execute("DELETE FROM databasechangelog WHERE id = '008-01-something-new'")
        .await;

    // A row Herald cannot represent: a status it does not know.
    docora
        .execute("UPDATE app_repositories SET status = 'archived'")
        .await;
    let run = target.import(&docora, &[]).await;
    refused(
        &run,
        &format!(
            "app_repositories ({}, {repo}): status \"archived\"",
            a.app_id
        ),
        &secrets,
    );
    assert_eq!(rows(dir.path(), database).await, nothing);
    docora
        .execute("UPDATE app_repositories SET status = 'synced'")
        .await;

    // A delivered file whose sha is not a SHA-256: named, nothing written,
    // although every row before it passed.
    docora
        .execute(
            "INSERT INTO app_delivered_files (app_id, repository_id, file_path, file_sha) \
             SELECT app_id, repository_id, 'z.md', 'not-a-sha' FROM app_repositories",
        )
        .await;
    let run = target.import(&docora, &[]).await;
    refused(&run, "\"z.md\"): file_sha", &secrets);
    assert_eq!(rows(dir.path(), database).await, nothing);
    docora
        .execute("DELETE FROM app_delivered_files WHERE file_path = 'z.md'")
        .await;

    // Now it goes through, once; a second import is refused as a duplicate.
    let run = target.import(&docora, &[]).await;
    assert_eq!(run.code, 0, "{run:#?}");
    let imported = vec![1, 1, 1, 1];
    assert_eq!(rows(dir.path(), database).await, imported);
    let run = target.import(&docora, &[]).await;
    refused(&run, &format!("app {} already exists", a.app_id), &secrets);
    assert_eq!(rows(dir.path(), database).await, imported);

    // Asked to start over (a resync, registering again), the app gets the
    // whole tree: what it held no longer counts.
    let store = actors::store::Store::connect(
        &database_url(dir.path(), database),
        std::sync::Arc::new(
            actors::crypto::Keyring::from_hex(&actors::crypto::Keyring::generate_hex(), &[])
                .expect("a key"),
        ),
    )
    .await
    .expect("the store opens");
    let resynced = store
        .resync(
            &actors::ids::AppId::parse(&a.app_id).expect("Docora's app id parses"),
            &actors::ids::RepoId::parse(&repo).expect("Docora's repository id parses"),
        )
        .await
        .expect("the resync is stored");
    assert!(resynced);
    store.close().await.ok();
    let imported = vec![1, 1, 1, 0];
    assert_eq!(rows(dir.path(), database).await, imported);

    // Another Docora whose app has a name Herald already has.
    let other = DocoraDb::create().await;
    other.add_app("Alpha", &receiver.base_url).await;
    let run = target
        .import_with_env(&other, &[], &[("DOCORA_ENCRYPTION_KEY", &other.key)])
        .await;
    refused(
        &run,
        &format!("is already the name of Herald app {}", a.app_id),
        &secrets,
    );
    assert_eq!(rows(dir.path(), database).await, imported);
}

/// Wrong tokens of Docora's shape may each cost bcrypt checks (imported
/// apps that have not used theirs yet): an address that sends
/// `rate_limit.sign_in_failures` of them is locked out of trying, with the
/// right one too, while Herald's own tokens from it still work.
#[tokio::test]
async fn an_address_sending_wrong_docora_tokens_is_locked_out_of_trying() {
    let app = TestApp::builder()
        .env("HERALD__RATE_LIMIT__SIGN_IN_FAILURES", "3")
        .spawn()
        .await;
    let client = app.onboard("herald-native").await;
    let wrong = |i: u8| format!("docora_{}", format!("{i:02x}").repeat(32));
    for i in 0..3 {
        let (status, body) = app
            .call(Method::GET, "/api/repositories", Some(&wrong(i)), None)
            .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    }
    let (status, body) = app
        .call(Method::GET, "/api/repositories", Some(&wrong(9)), None)
        .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(body["code"], "rate_limited", "{body}");
    let (status, body) = app
        .call(Method::GET, "/api/repositories", Some(&client.token), None)
        .await;
    assert_eq!(
        status,
        StatusCode::OK,
        "a Herald token is not locked out: {body}"
    );
}
