//! The persistence layer's guarantees that the HTTP API cannot show yet:
//! leases that let several instances share one database.

use std::sync::Arc;

use actors::crypto::Keyring;
use actors::ids::{AppId, RepoId};
use actors::store::Store;
use actors::store::apps::NewApp;
use actors::store::subscriptions::NewSubscription;
use secrecy::SecretString;

use crate::helpers::TestDatabase;

async fn store(database: &TestDatabase, dir: &tempfile::TempDir) -> Store {
    let url = database
        .url
        .clone()
        .unwrap_or_else(|| format!("sqlite://{}", dir.path().join("herald.db").display()));
    let keys = Arc::new(Keyring::from_hex(&Keyring::generate_hex(), &[]).expect("key"));
    let store = Store::connect(&url, keys).await.expect("connects");
    store.migrate().await.expect("migrates");
    store
}

async fn onboard(store: &Store, key: String) -> actors::store::apps::OnboardedApp {
    store
        .onboard_app(NewApp {
            name: "acme".into(),
            base_url: "https://1.1.1.1/h".into(),
            email: "a@b.co".into(),
            website: None,
            description: None,
            client_auth_key: SecretString::from(key),
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
                url: "https://1.1.1.1/acme/widgets".into(),
                fetch_url: "https://1.1.1.1/acme/widgets.git".into(),
                owner: "acme".into(),
                name: "widgets".into(),
                branch: None,
                git_token: None,
                is_private: Some(false),
                include: vec![],
                exclude: vec![],
            },
        )
        .await
        .expect("subscribed");
    assert!(created);
    let repo = RepoId::parse(&view.repository.id).expect("id");

    assert!(
        store
            .claim_scan(&repo, "instance-a", 60_000)
            .await
            .expect("claim")
    );
    assert!(
        !store
            .claim_scan(&repo, "instance-b", 60_000)
            .await
            .expect("claim")
    );
    assert!(
        store
            .claim_scan(&repo, "instance-a", 60_000)
            .await
            .expect("renew")
    );
    let due = store
        .due_repositories("instance-b", actors::clock::now_ms(), 10)
        .await
        .expect("due");
    assert!(
        due.is_empty(),
        "a leased repository is not handed out again"
    );
    store
        .release_scan(&repo, "instance-a")
        .await
        .expect("release");
    assert!(
        store
            .claim_scan(&repo, "instance-b", -1)
            .await
            .expect("claim")
    );
    // instance-b's lease expired at once (ttl -1): anyone may take it.
    assert!(
        store
            .claim_scan(&repo, "instance-a", 60_000)
            .await
            .expect("take over")
    );

    let sub = actors::ids::SubscriptionId::parse(&view.subscription.id).expect("id");
    assert!(
        store
            .claim_delivery(&sub, "a", 60_000)
            .await
            .expect("claim")
    );
    assert!(
        !store
            .claim_delivery(&sub, "b", 60_000)
            .await
            .expect("claim")
    );
    store.release_delivery(&sub, "a").await.expect("release");
    assert!(
        store
            .claim_delivery(&sub, "b", 60_000)
            .await
            .expect("claim")
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
