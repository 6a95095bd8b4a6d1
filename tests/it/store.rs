//! The persistence layer's guarantees that the HTTP API cannot show yet:
//! leases that let several instances share one database, and the fencing
//! that keeps a claimant whose lease passed on from writing.

use actors::changes::{FileEntry, FileInfo, TreeDelta};
use actors::ids::SnapshotId;
use actors::ids::{AppId, EventId, RepoId};
use actors::store::apps::NewApp;
use actors::store::delivery::{Attempt, EventOutcome};
use actors::store::leases::ScanFence;
use actors::store::outbox::SnapshotAdvance;
use actors::store::subscriptions::NewSubscription;
use actors::store::{Store, StoreError};
use actors::test_support;
use secrecy::SecretString;

use crate::helpers::TestDatabase;

async fn store(database: &TestDatabase, dir: &tempfile::TempDir) -> Store {
    test_support::store(&database.url_in(dir.path(), "herald.db")).await
}

async fn onboard(store: &Store, key: String) -> actors::store::apps::OnboardedApp {
    store
        .onboard_app(NewApp {
            client_auth_key: SecretString::from(key),
            ..test_support::new_app("acme")
        })
        .await
        .expect("onboarded")
}

#[tokio::test]
async fn scan_and_delivery_leases_have_one_owner_until_they_expire() {
    let database = TestDatabase::create().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let store = store(&database, &dir).await;
    let app = onboard(&store, "k".repeat(16)).await;
    let app_id = AppId::parse(&app.app.id).expect("id");
    let (view, created) = store
        .subscribe(
            &app_id,
            NewSubscription {
                fetch_url: "https://1.1.1.1/acme/widgets.git".into(),
                ..test_support::new_subscription("https://1.1.1.1/acme/widgets", "acme", "widgets")
            },
        )
        .await
        .expect("subscribed");
    assert!(created);
    let repo = RepoId::parse(&view.repository.id).expect("id");

    let a = store
        .claim_scan(&repo, "instance-a", 60_000)
        .await
        .expect("claim")
        .expect("free");
    assert!(
        store
            .claim_scan(&repo, "instance-b", 60_000)
            .await
            .expect("claim")
            .is_none(),
        "held"
    );
    assert!(
        store
            .claim_scan(&repo, "instance-a", 60_000)
            .await
            .expect("claim")
            .is_none(),
        "a second claim of the same instance is another claimant"
    );
    assert!(store.renew_scan(&repo, &a, 60_000).await.expect("renew"));
    let due = store
        .due_repositories(actors::clock::now_ms(), 10)
        .await
        .expect("due");
    assert!(
        due.is_empty(),
        "a leased repository is not handed out again"
    );
    store.release_scan(&repo, &a).await.expect("release");
    let b = store
        .claim_scan(&repo, "instance-b", -1)
        .await
        .expect("claim")
        .expect("released");
    // instance-b's lease expired at once (ttl -1): anyone may take it, and
    // instance-b can no longer renew it.
    assert!(!store.renew_scan(&repo, &b, 60_000).await.expect("renew"));
    assert!(
        store
            .claim_scan(&repo, "instance-a", 60_000)
            .await
            .expect("take over")
            .is_some()
    );

    let sub = actors::ids::SubscriptionId::parse(&view.subscription.id).expect("id");
    let first = store
        .claim_delivery(&sub, "a", 60_000)
        .await
        .expect("claim")
        .expect("free");
    assert!(
        store
            .claim_delivery(&sub, "b", 60_000)
            .await
            .expect("claim")
            .is_none()
    );
    store.release_delivery(&sub, &first).await.expect("release");
    assert!(
        store
            .claim_delivery(&sub, "b", 60_000)
            .await
            .expect("claim")
            .is_some()
    );
    store.close().await.ok();
}

/// A repository with one subscriber, at no commit yet.
async fn watched(store: &Store) -> (RepoId, actors::ids::SubscriptionId) {
    let app = onboard(store, "k".repeat(16)).await;
    let app_id = AppId::parse(&app.app.id).expect("id");
    let (view, repo) = test_support::subscribe(
        store,
        &app_id,
        NewSubscription {
            fetch_url: "https://1.1.1.1/acme/fenced.git".into(),
            ..test_support::new_subscription("https://1.1.1.1/acme/fenced", "acme", "fenced")
        },
    )
    .await;
    (
        repo,
        actors::ids::SubscriptionId::parse(&view.subscription.id).expect("id"),
    )
}

/// A scan's result: `path` created at `commit`.
fn advance(repo: &RepoId, fence: ScanFence, commit: &str, path: &str) -> SnapshotAdvance {
    SnapshotAdvance {
        repository: repo.clone(),
        fence,
        snapshot: SnapshotId::generate(),
        commit: commit.to_owned(),
        branch: "main".into(),
        delta: TreeDelta::new(
            [FileEntry {
                path: path.to_owned(),
                info: FileInfo::from_hex(&"0".repeat(40), &"0".repeat(64), 1, false, false)
                    .expect("well-formed"),
            }],
            [],
        )
        .expect("one path"),
        old_ignore: None,
        new_ignore: None,
        next_scan_at: 0,
    }
}

/// A scan of `repo` that found `a.md`: an event for each subscriber.
async fn scanned(store: &Store, repo: &RepoId) {
    let lease = store
        .claim_scan(repo, "scanner", 60_000)
        .await
        .expect("claim")
        .expect("free");
    let fence = ScanFence {
        lease,
        expected_head: None,
    };
    store
        .advance_snapshot(advance(repo, fence, &"a".repeat(40), "a.md"))
        .await
        .expect("events");
}

/// A successful attempt of `event_id` (its last part).
fn success(event_id: &str) -> Attempt {
    Attempt {
        event_id: event_id.to_owned(),
        chunk_index: None,
        attempted_at: actors::clock::now_ms(),
        status_code: Some(204),
        latency_ms: 1,
        error_class: None,
        response_excerpt: None,
        request: None,
    }
}

#[tokio::test]
async fn a_scan_whose_lease_passed_on_writes_nothing() {
    let database = TestDatabase::create().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let store = store(&database, &dir).await;
    let (repo, _) = watched(&store).await;

    // The stale claimant's lease expired and another took the repository.
    let stale = store
        .claim_scan(&repo, "instance-a", -1)
        .await
        .expect("claim")
        .expect("free");
    let current = store
        .claim_scan(&repo, "instance-b", 60_000)
        .await
        .expect("claim")
        .expect("expired");
    let fenced = |lease| ScanFence {
        lease,
        expected_head: None,
    };
    let refused = store
        .advance_snapshot(advance(
            &repo,
            fenced(stale.clone()),
            &"a".repeat(40),
            "stale.md",
        ))
        .await;
    assert!(matches!(refused, Err(StoreError::Fenced(_))), "{refused:?}");
    let row = store.repository(&repo).await.expect("query").expect("row");
    assert_eq!(row.head_commit, None, "the stale scan moved nothing");
    assert!(
        store
            .manifest_blob_ids(&repo)
            .await
            .expect("query")
            .is_empty()
    );

    // The holder writes; then a scan that started before that commit (from
    // no head) is refused even with the lease: it would move the head back.
    let written = store
        .advance_snapshot(advance(
            &repo,
            fenced(current.clone()),
            &"b".repeat(40),
            "new.md",
        ))
        .await
        .expect("the holder writes");
    assert_eq!(written.events, 1);
    let behind = store
        .advance_snapshot(advance(
            &repo,
            fenced(current.clone()),
            &"c".repeat(40),
            "old.md",
        ))
        .await;
    assert!(matches!(behind, Err(StoreError::Fenced(_))), "{behind:?}");
    let row = store.repository(&repo).await.expect("query").expect("row");
    assert_eq!(row.head_commit.as_deref(), Some("b".repeat(40).as_str()));
    let ahead = ScanFence {
        lease: current,
        expected_head: Some("b".repeat(40)),
    };
    store
        .advance_snapshot(advance(&repo, ahead, &"d".repeat(40), "next.md"))
        .await
        .expect("a scan from the current head writes");
    store.close().await.ok();
}

#[tokio::test]
async fn a_lane_whose_lease_passed_on_records_nothing() {
    let database = TestDatabase::create().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let store = store(&database, &dir).await;
    let (repo, sub) = watched(&store).await;
    scanned(&store, &repo).await;
    let pending = store.next_events(&sub, i64::MIN, 10).await.expect("query");
    assert_eq!(pending.len(), 1);
    let event = &pending[0];
    let delivered = || success(&event.id);

    let stale = store
        .claim_delivery(&sub, "instance-a", -1)
        .await
        .expect("claim")
        .expect("free");
    let current = store
        .claim_delivery(&sub, "instance-b", 60_000)
        .await
        .expect("claim")
        .expect("expired");
    for refused in [
        store
            .record_deliveries(&sub, &stale, vec![delivered()], vec![])
            .await,
        store
            .record_attempt(&stale, event, delivered(), EventOutcome::Delivered)
            .await,
        store.settle_subscription(&sub, &stale).await.map(|_| ()),
    ] {
        assert!(matches!(refused, Err(StoreError::Fenced(_))), "{refused:?}");
    }
    assert!(
        !store
            .renew_delivery(&sub, &stale, 60_000)
            .await
            .expect("renew")
    );
    store.release_delivery(&sub, &stale).await.expect("a no-op");
    assert_eq!(
        store
            .next_events(&sub, i64::MIN, 10)
            .await
            .expect("query")
            .len(),
        1,
        "still pending: the stale lane recorded nothing"
    );

    store
        .record_deliveries(&sub, &current, vec![delivered()], vec![])
        .await
        .expect("the holder records");
    assert!(
        store
            .next_events(&sub, i64::MIN, 10)
            .await
            .expect("query")
            .is_empty()
    );
    assert!(
        store
            .claim_delivery(&sub, "instance-c", 60_000)
            .await
            .expect("claim")
            .is_none(),
        "the stale release did not free the holder's lease"
    );
    store.close().await.ok();
}

#[tokio::test]
async fn a_lane_records_deliveries_of_its_own_subscriptions_events_only() {
    let database = TestDatabase::create().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let store = store(&database, &dir).await;
    // Two apps watch the same repository: one scan, an event for each.
    let (repo, ours) = watched(&store).await;
    let (_, theirs) = watched(&store).await;
    scanned(&store, &repo).await;
    let pending = async |sub: &actors::ids::SubscriptionId| {
        store.next_events(sub, i64::MIN, 10).await.expect("query")
    };
    let (our_event, their_event) = (&pending(&ours).await[0], &pending(&theirs).await[0]);
    let lease = store
        .claim_delivery(&ours, "instance-a", 60_000)
        .await
        .expect("claim")
        .expect("free");

    let attempts = async |event: &entity::event::Model| {
        store
            .event_with_attempts(None, &EventId::parse(&event.id).expect("id"))
            .await
            .expect("query")
            .expect("the event")
            .1
            .len()
    };

    // A chunk before the file's last is recorded; its event is not delivered.
    store
        .record_deliveries(&ours, &lease, vec![], vec![success(&our_event.id)])
        .await
        .expect("recorded");
    assert_eq!(pending(&ours).await.len(), 1, "not delivered by a chunk");
    assert_eq!(attempts(our_event).await, 1);

    // The other subscription's event, and one deleted meanwhile, are passed over.
    store
        .record_deliveries(
            &ours,
            &lease,
            vec![
                success(&their_event.id),
                success(&our_event.id),
                success("evt_01jgone0000000000000000000"),
            ],
            vec![success(&their_event.id)],
        )
        .await
        .expect("recorded");
    assert!(pending(&ours).await.is_empty(), "our event is delivered");
    assert_eq!(pending(&theirs).await.len(), 1, "theirs is still pending");
    assert_eq!(attempts(our_event).await, 2);
    assert_eq!(
        attempts(their_event).await,
        0,
        "no attempt written for theirs"
    );
    store.close().await.ok();
}

#[tokio::test]
async fn leases_of_a_previous_run_are_released_at_start() {
    let database = TestDatabase::create().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let store = store(&database, &dir).await;
    let (repo, sub) = watched(&store).await;
    store
        .claim_scan(&repo, "herald-one", 60_000)
        .await
        .expect("claim")
        .expect("free");
    store
        .claim_delivery(&sub, "herald-one", 60_000)
        .await
        .expect("claim")
        .expect("free");
    assert_eq!(
        store.release_leases_of("herald-two").await.expect("none"),
        0
    );
    assert_eq!(
        store
            .release_leases_of("herald-on")
            .await
            .expect("a prefix is not an instance"),
        0
    );
    assert_eq!(
        store.release_leases_of("herald-one").await.expect("both"),
        2
    );
    assert!(
        store
            .claim_scan(&repo, "herald-two", 60_000)
            .await
            .expect("claim")
            .is_some()
    );
    store.close().await.ok();
}

#[tokio::test]
async fn secrets_open_only_for_their_own_row() {
    let database = TestDatabase::create().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let store = store(&database, &dir).await;
    let onboarded = onboard(&store, "the-signing-key-123".to_owned()).await;
    let key = store.client_auth_key(&onboarded.app).expect("opens");
    assert_eq!(
        secrecy::ExposeSecret::expose_secret(&key),
        "the-signing-key-123"
    );

    // The same ciphertext moved to another app's row does not open.
    let mut moved = onboarded.app.clone();
    moved.id = AppId::generate().into_string();
    assert!(store.client_auth_key(&moved).is_err());
    store.close().await.ok();
}

/// The index a replay's progress is counted with holds replays' events
/// only (an event delivered outside a replay writes nothing to it when its
/// status changes), and the progress query still finds a replay's events
/// through it; the migration that made it goes back and forth.
#[tokio::test]
async fn the_replay_index_holds_replays_events_only() {
    use migration::MigratorTrait as _;
    let database = TestDatabase::create().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let store = store(&database, &dir).await;
    assert_replay_index_on_replays_only(store.db()).await;
    // Back to before the migration that made it (and any after it).
    let migrations = migration::Migrator::migrations();
    let made_it = migrations
        .iter()
        .position(|m| m.name() == "m20261128_000130_partial_replay_index")
        .expect("the migration is listed");
    let steps = u32::try_from(migrations.len() - made_it).expect("a few migrations");
    migration::Migrator::down(store.db(), Some(steps))
        .await
        .expect("the migration is undone");
    let before = replay_indexes(store.db()).await;
    assert_eq!(before.len(), 1, "{before:?}");
    assert_eq!(before[0].0, "ix_events_replay_status");
    assert!(!before[0].1.contains("WHERE"), "{before:?}");
    migration::Migrator::up(store.db(), None)
        .await
        .expect("and done again");
    assert_replay_index_on_replays_only(store.db()).await;
    store.close().await.ok();
}

/// The indexes on `events.replay_id`, with their definitions (quotes and
/// parentheses left out).
async fn replay_indexes(db: &sea_orm::DatabaseConnection) -> Vec<(String, String)> {
    use sea_orm::{ConnectionTrait, DatabaseBackend, Statement};
    let backend = db.get_database_backend();
    let sql = match backend {
        DatabaseBackend::Sqlite => {
            "SELECT name, sql AS definition FROM sqlite_master WHERE type = 'index' \
             AND name IN ('ix_events_replay_status', 'ix_replay_events_status')"
        }
        _ => {
            "SELECT indexname AS name, indexdef AS definition FROM pg_indexes \
             WHERE indexname IN ('ix_events_replay_status', 'ix_replay_events_status')"
        }
    };
    db.query_all_raw(Statement::from_string(backend, sql))
        .await
        .expect("the schema is read")
        .iter()
        .map(|row| {
            let text = |column| row.try_get::<String>("", column).expect("a text column");
            (
                text("name"),
                text("definition").replace(['"', '(', ')'], ""),
            )
        })
        .collect()
}

/// Asserts that the replay index is the one on replays' events only, and
/// (on SQLite) that a replay's progress query is planned with it.
async fn assert_replay_index_on_replays_only(db: &sea_orm::DatabaseConnection) {
    use sea_orm::{ConnectionTrait, DatabaseBackend, Statement};
    let backend = db.get_database_backend();
    let indexes = replay_indexes(db).await;
    assert_eq!(
        indexes.len(),
        1,
        "the index on every event is gone: {indexes:?}"
    );
    let (name, definition) = &indexes[0];
    assert_eq!(name, "ix_replay_events_status");
    assert!(
        definition.contains("WHERE replay_id IS NOT NULL"),
        "{definition}"
    );
    if backend == DatabaseBackend::Sqlite {
        // On one connection, whose schema a statement run first brings up
        // to date (a pooled connection plans with the schema it last read).
        let txn = sea_orm::TransactionTrait::begin(db)
            .await
            .expect("a transaction");
        let count = "SELECT status, COUNT(*) AS n FROM events \
             WHERE replay_id = 'rpl_1' AND status IN ('pending', 'dead') GROUP BY status";
        txn.query_all_raw(Statement::from_string(backend, count))
            .await
            .expect("a replay's progress is counted");
        let plan: Vec<String> = txn
            .query_all_raw(Statement::from_string(
                backend,
                format!("EXPLAIN QUERY PLAN {count}"),
            ))
            .await
            .expect("the plan is read")
            .iter()
            .map(|row| row.try_get::<String>("", "detail").expect("a step"))
            .collect();
        txn.rollback().await.expect("nothing written");
        assert!(
            plan.iter()
                .any(|step| step.contains("ix_replay_events_status")),
            "{plan:?}"
        );
    }
}
