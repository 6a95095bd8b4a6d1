//! A store with apps subscribed to repositories, written straight through
//! the store (no HTTP): the rows registration and onboarding would write.

use std::path::Path;
use std::sync::Arc;

use secrecy::SecretString;

use crate::crypto::Keyring;
use crate::ids::{AppId, RepoId};
use crate::store::Store;
use crate::store::apps::{DeliveryWindow, NewApp};
use crate::store::subscriptions::{NewSubscription, SubscriptionView};

/// A SQLite database file `herald.db` in `dir` (created when opened).
pub fn sqlite_url(dir: &Path) -> String {
    format!("sqlite://{}", dir.join("herald.db").display())
}

/// The database at `url`, opened with a fresh key (secrets sealed by
/// another key stay closed to it).
pub async fn connect(url: &str) -> Store {
    let keys = Arc::new(Keyring::from_hex(&Keyring::generate_hex(), &[]).expect("a fresh key"));
    Store::connect(url, keys)
        .await
        .expect("the database at the test's URL opens")
}

/// [`connect`], with Herald's schema applied.
pub async fn store(url: &str) -> Store {
    let store = connect(url).await;
    store.migrate().await.expect("the schema applies");
    store
}

/// An app named `name` with a public webhook address and a 16-byte key;
/// change what a test needs with `NewApp { field, ..new_app(name) }`.
pub fn new_app(name: &str) -> NewApp {
    NewApp {
        name: name.to_owned(),
        base_url: "https://1.1.1.1/h".into(),
        email: "a@b.co".into(),
        website: None,
        description: None,
        client_auth_key: SecretString::from("k".repeat(16)),
        window: DeliveryWindow::default(),
        delivery: entity::DeliveryMode::Push,
        destination: None,
    }
}

/// Onboards `app`; its id.
pub async fn onboard(store: &Store, app: NewApp) -> AppId {
    let app = store.onboard_app(app).await.expect("the app onboards");
    AppId::stored(app.app.id)
}

/// A public repository `owner/name` fetched from `url`, on the remote's
/// default branch; change what a test needs with
/// `NewSubscription { field, ..new_subscription(url, owner, name) }`.
pub fn new_subscription(url: &str, owner: &str, name: &str) -> NewSubscription {
    NewSubscription {
        url: url.to_owned(),
        fetch_url: url.to_owned(),
        owner: owner.to_owned(),
        name: name.to_owned(),
        branch: None,
        git_token: None,
        is_private: Some(false),
        include: vec![],
        exclude: vec![],
        expand_submodules: false,
    }
}

/// Subscribes `app`; the subscription and its repository's id.
pub async fn subscribe(
    store: &Store,
    app: &AppId,
    subscription: NewSubscription,
) -> (SubscriptionView, RepoId) {
    let (view, _) = store
        .subscribe(app, subscription)
        .await
        .expect("the app subscribes");
    let repo = RepoId::parse(&view.repository.id).expect("a stored repository id");
    (view, repo)
}
