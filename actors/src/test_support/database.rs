//! A database of its own for one test or one bench run.

use std::path::Path;

use sea_orm::{ConnectionTrait, Database};

use crate::ids::AppId;

/// The PostgreSQL server the tests may use (`postgres://user@host:port`);
/// unset, they run on SQLite.
pub const SERVER_VARIABLE: &str = "TEST_DATABASE_URL";

/// SQLite (each user picks its own file), or a PostgreSQL database created
/// on the server now and dropped with this value.
pub struct TestDatabase {
    /// The PostgreSQL database's URL; `None` for SQLite.
    pub url: Option<String>,
    /// The PostgreSQL database's name.
    name: Option<String>,
    /// The maintenance database's URL, to drop this one from; `None` for
    /// SQLite and for a [`Self::shared`] handle.
    admin_url: Option<String>,
}

impl TestDatabase {
    /// PostgreSQL when [`SERVER_VARIABLE`] is set, else SQLite.
    pub async fn create() -> Self {
        match std::env::var(SERVER_VARIABLE) {
            Ok(server) => Self::postgres(&server, "herald_test").await,
            Err(_) => Self::sqlite(),
        }
    }

    /// SQLite: nothing to create or drop.
    pub fn sqlite() -> Self {
        Self {
            url: None,
            name: None,
            admin_url: None,
        }
    }

    /// A database `{prefix}_<ulid>` created now on the PostgreSQL server at
    /// `server`, dropped with this value.
    pub async fn postgres(server: &str, prefix: &str) -> Self {
        let name = format!(
            "{prefix}_{}",
            AppId::generate()
                .as_str()
                .trim_start_matches("app_")
                .to_lowercase()
        );
        let admin_url = with_database(server, "postgres");
        let admin = Database::connect(&admin_url)
            .await
            .expect("TEST_DATABASE_URL reaches a PostgreSQL server");
        admin
            .execute_unprepared(&format!("CREATE DATABASE {name}"))
            .await
            .expect("the throwaway database can be created");
        admin.close().await.ok();
        Self {
            url: Some(with_database(server, &name)),
            name: Some(name),
            admin_url: Some(admin_url),
        }
    }

    /// The same database for another instance (PostgreSQL), which does not
    /// drop it; for SQLite, nothing to share (each data dir has its own).
    pub fn shared(&self) -> Self {
        Self {
            url: self.url.clone(),
            name: self.name.clone(),
            admin_url: None,
        }
    }

    /// Whether several instances can share it (PostgreSQL).
    pub fn is_shared_server(&self) -> bool {
        self.url.is_some()
    }

    /// The PostgreSQL database's name, if it is one.
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// The PostgreSQL database, or the SQLite file `file` in `dir`.
    pub fn url_in(&self, dir: &Path, file: &str) -> String {
        self.url
            .clone()
            .unwrap_or_else(|| format!("sqlite://{}", dir.join(file).display()))
    }
}

/// `server`'s URL naming database `name`.
pub fn with_database(server: &str, name: &str) -> String {
    let mut url = url::Url::parse(server).expect("TEST_DATABASE_URL is a URL");
    url.set_path(&format!("/{name}"));
    url.to_string()
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let (Some(admin_url), Some(name)) = (self.admin_url.take(), self.name.clone()) else {
            return;
        };
        // Drop may run inside a runtime it cannot block: drop the database
        // from a thread with a runtime of its own.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime for cleanup");
            runtime.block_on(async move {
                if let Ok(admin) = Database::connect(&admin_url).await {
                    admin
                        .execute_unprepared(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .await
                        .ok();
                    admin.close().await.ok();
                }
            });
        })
        .join();
        dropped.ok();
    }
}
