//! A Docora database for the import tests: Docora's real schema (its
//! Liquibase changelogs 001-007, `fixtures/docora/schema.sql`) in a
//! PostgreSQL database created for the test, and rows written as Docora
//! writes them: ids `app_`/`repo_` + 24 hex, tokens `docora_` + 64 hex
//! hashed with bcrypt cost 12, secrets AES-256-GCM with a 16-byte IV as
//! `hex(iv):hex(tag):hex(ciphertext)` under a 64-hex key, delivered files
//! as the SHA-256 of their bytes.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use aes_gcm::aead::consts::U16;
use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::aes::Aes256;
use aes_gcm::{AesGcm, Nonce};
use sea_orm::sqlx::{self, PgPool};
use sha2::{Digest, Sha256};

use super::TestDatabase;

/// Docora's cost (`SALT_ROUNDS` in its `src/utils/token.ts`).
const BCRYPT_COST: u32 = 12;

fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::fill(&mut buf[..]);
    hex::encode(buf)
}

/// SHA-256 of `bytes`, lower-case hex (Docora's `sha` of a file).
pub fn sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// An app as Docora's onboarding left it, with the token it printed once.
#[derive(Debug, Clone)]
pub struct DocoraApp {
    pub app_id: String,
    pub token: String,
    pub client_auth_key: String,
}

pub struct DocoraDb {
    pub pool: PgPool,
    pub url: String,
    /// Docora's `ENCRYPTION_KEY`.
    pub key: String,
    // Dropped last: drops the database.
    _database: TestDatabase,
}

impl DocoraDb {
    /// A new database at Docora's schema 001-007, on TEST_DATABASE_URL's
    /// server or the local one.
    pub async fn create() -> Self {
        let server = std::env::var(actors::test_support::database::SERVER_VARIABLE)
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".to_owned());
        let database = TestDatabase::postgres(&server, "docora").await;
        let url = database.url.clone().expect("a PostgreSQL database");
        let pool = PgPool::connect(&url)
            .await
            .expect("the Docora database opens");
        sqlx::raw_sql(include_str!("../fixtures/docora/schema.sql"))
            .execute(&pool)
            .await
            .expect("Docora's schema applies");
        Self {
            pool,
            url,
            key: random_hex(32),
            _database: database,
        }
    }

    /// Docora's `encryptToken`.
    pub fn seal(&self, plain: &str) -> String {
        seal_with(&self.key, plain)
    }

    /// Docora's `createApp`.
    pub async fn add_app(&self, name: &str, base_url: &str) -> DocoraApp {
        let app = DocoraApp {
            app_id: format!("app_{}", random_hex(12)),
            token: format!("docora_{}", random_hex(32)),
            client_auth_key: format!("cak-{}", random_hex(16)),
        };
        let hash = bcrypt::hash(&app.token, BCRYPT_COST).expect("bcrypt hashes");
        sqlx::query(
            "INSERT INTO apps (app_id, token_hash, app_name, base_url, email, website, \
             description, created_at, updated_at, client_auth_key_encrypted) \
             VALUES ($1, $2, $3, $4, 'dev@example.com', NULL, 'imported', NOW(), NOW(), $5)",
        )
        .bind(&app.app_id)
        .bind(hash)
        .bind(name)
        .bind(base_url)
        .bind(self.seal(&app.client_auth_key))
        .execute(&self.pool)
        .await
        .expect("the app row is written");
        app
    }

    /// Docora's `findOrCreateRepository`: the repository's id.
    pub async fn add_repository(&self, github_url: &str, owner: &str, name: &str) -> String {
        let id = format!("repo_{}", random_hex(12));
        sqlx::query(
            "INSERT INTO repositories (repository_id, github_url, owner, name, is_private, \
             created_at, updated_at) VALUES ($1, $2, $3, $4, FALSE, NOW(), NOW())",
        )
        .bind(&id)
        .bind(github_url)
        .bind(owner)
        .bind(name)
        .execute(&self.pool)
        .await
        .expect("the repository row is written");
        id
    }

    /// Docora's `linkAppToRepository`, then the status its worker left.
    pub async fn link(
        &self,
        app: &DocoraApp,
        repository_id: &str,
        github_token: Option<&str>,
        status: &str,
        last_error: Option<&str>,
    ) {
        sqlx::query(
            "INSERT INTO app_repositories (app_id, repository_id, github_token_encrypted, \
             created_at, status, retry_count, last_error) VALUES ($1, $2, $3, NOW(), $4, $5, $6)",
        )
        .bind(&app.app_id)
        .bind(repository_id)
        .bind(github_token.map(|t| self.seal(t)))
        .bind(status)
        .bind(if last_error.is_some() { 2 } else { 0 })
        .bind(last_error)
        .execute(&self.pool)
        .await
        .expect("the link row is written");
    }

    /// Docora's `recordDelivery`: `app` holds `path` with these bytes.
    pub async fn delivered(&self, app: &DocoraApp, repository_id: &str, path: &str, bytes: &[u8]) {
        sqlx::query(
            "INSERT INTO app_delivered_files (app_id, repository_id, file_path, file_sha) \
             VALUES ($1, $2, $3, $4)",
        )
        .bind(&app.app_id)
        .bind(repository_id)
        .bind(path)
        .bind(sha256(bytes))
        .execute(&self.pool)
        .await
        .expect("the delivery row is written");
    }

    /// Docora's `saveSnapshot`: the repository's last scanned tree.
    pub async fn snapshot(&self, repository_id: &str, commit: &str, files: &[(&str, &[u8])]) {
        let id: String = sqlx::query_scalar(
            "INSERT INTO repository_snapshots (repository_id, commit_sha, branch) \
             VALUES ($1, $2, 'main') RETURNING id::text",
        )
        .bind(repository_id)
        .bind(commit)
        .fetch_one(&self.pool)
        .await
        .expect("the snapshot row is written");
        for (path, bytes) in files {
            sqlx::query(
                "INSERT INTO snapshot_files (snapshot_id, path, sha, size) \
                 VALUES ($1::uuid, $2, $3, $4)",
            )
            .bind(&id)
            .bind(*path)
            .bind(sha256(bytes))
            .bind(i32::try_from(bytes.len()).expect("small"))
            .execute(&self.pool)
            .await
            .expect("the snapshot file row is written");
        }
    }

    /// Runs one statement (a test's change to the rows).
    pub async fn execute(&self, sql: &'static str) {
        sqlx::raw_sql(sql)
            .execute(&self.pool)
            .await
            .expect("the statement runs");
    }

    /// Docora's key in a file of its own under `dir`.
    pub fn key_file(&self, dir: &Path) -> PathBuf {
        let path = dir.join("docora.key");
        std::fs::write(&path, format!("{}\n", self.key)).expect("the key file is written");
        path
    }
}

/// Docora's `encryptToken` under `key_hex`: Node's `aes-256-gcm` with a
/// 16-byte IV, whose output is the ciphertext followed by the tag.
pub fn seal_with(key_hex: &str, plain: &str) -> String {
    let key = hex::decode(key_hex).expect("hex key");
    let cipher = AesGcm::<Aes256, U16>::new_from_slice(&key).expect("a 32-byte key");
    let mut iv = [0u8; 16];
    rand::fill(&mut iv[..]);
    let sealed = cipher
        .encrypt(&Nonce::<U16>::from(iv), plain.as_bytes())
        .expect("encrypts");
    let (body, tag) = sealed.split_at(sealed.len() - 16);
    format!(
        "{}:{}:{}",
        hex::encode(iv),
        hex::encode(tag),
        hex::encode(body)
    )
}

/// What one run of `herald import-docora` printed, and how it ended.
#[derive(Debug)]
pub struct ImportRun {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Where a test imports to: a data directory, Herald's database, and the
/// Docora key in a file.
pub struct Target {
    pub dir: tempfile::TempDir,
    pub database: TestDatabase,
    pub key_file: String,
}

impl Target {
    pub async fn new(docora: &DocoraDb) -> Self {
        let dir = tempfile::tempdir().expect("a data dir");
        let key_file = docora.key_file(dir.path()).display().to_string();
        Self {
            dir,
            database: TestDatabase::create().await,
            key_file,
        }
    }

    /// `herald import-docora ARGS` from `docora`, Docora's key from its file.
    pub async fn import(&self, docora: &DocoraDb, args: &[&str]) -> ImportRun {
        let mut all = vec!["--docora-key-file", self.key_file.as_str()];
        all.extend_from_slice(args);
        import(self.dir.path(), &self.database, docora, &all, &[]).await
    }

    /// `herald import-docora ARGS` from `docora` with `env`, and no key
    /// file.
    pub async fn import_with_env(
        &self,
        docora: &DocoraDb,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> ImportRun {
        import(self.dir.path(), &self.database, docora, args, env).await
    }
}

/// Runs `herald import-docora --from … --data-dir DIR/data ARGS` in `dir`
/// against Herald's `database` (its SQLite file in the data directory, or
/// PostgreSQL), on loopback rules as the tests' servers run, with `env`.
pub async fn import(
    dir: &Path,
    database: &TestDatabase,
    docora: &DocoraDb,
    args: &[&str],
    env: &[(&str, &str)],
) -> ImportRun {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_herald"));
    command
        .arg("import-docora")
        .arg("--from")
        .arg(&docora.url)
        .arg("--data-dir")
        .arg(dir.join("data"))
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null());
    for (key, _) in std::env::vars() {
        if key.starts_with("HERALD") || key.starts_with("DOCORA") || key == "RUST_LOG" {
            command.env_remove(key);
        }
    }
    command
        .env("HERALD__SECURITY__ALLOW_PRIVATE_TARGETS", "true")
        .env("HERALD__SECURITY__ALLOW_HTTP_TARGETS", "true")
        .env("HERALD__TELEMETRY__LOG_FORMAT", "json");
    if let Some(url) = &database.url {
        command.env("HERALD__DATABASE__URL", url);
    }
    command.envs(env.iter().copied());
    let output = command.output().await.expect("the herald binary runs");
    ImportRun {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}
