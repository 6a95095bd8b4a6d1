//! `herald import-docora` at scale: how long the import of a large Docora
//! deployment takes and how much memory it needs.
//!
//! `cargo bench --bench import_docora [-- OPTIONS]`
//!
//! A Docora database is created on the PostgreSQL server of
//! `TEST_DATABASE_URL` (else `postgres://postgres@127.0.0.1:5432`) at
//! Docora's real schema (`tests/it/fixtures/docora/schema.sql`, changelogs
//! 001–007) and filled with plain SQL: `--apps` apps (one bcrypt hash and
//! one sealed signing key, both in Docora's formats, shared by all: the
//! import opens every one), `--repositories` repositories each watched by
//! one app, and `--files` delivered-file rows spread evenly over those
//! subscriptions. The release binary (or `HERALD_BENCH_BINARY`) then runs
//! `import-docora` into a new Herald database, SQLite (or `--db postgres`);
//! its wall time and its peak resident set (`VmHWM`, sampled every 10 ms)
//! are reported, and the rows it wrote are counted.
//!
//! Options (defaults in brackets): `--apps N` [100], `--repositories N`
//! [1000], `--files N` [1000000], `--db sqlite|postgres` [sqlite]. Without
//! `--bench` (as `cargo test --benches` runs it) the sizes shrink to a smoke
//! run. Results are printed as Markdown; see BENCHMARKS.md.

mod support;

use std::process::Stdio;
use std::time::{Duration, Instant};

use actors::test_support::TestDatabase;
use aes_gcm::aead::consts::U16;
use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::aes::Aes256;
use aes_gcm::{AesGcm, Nonce};
use sea_orm::sqlx::{self, PgPool};
use support::*;

struct Options {
    apps: usize,
    repositories: usize,
    files: usize,
    backend: Backend,
}

fn parse_options() -> Options {
    let mut args = BenchArgs::from_env();
    let full = args.full;
    let mut options = Options {
        apps: if full { 100 } else { 5 },
        repositories: if full { 1_000 } else { 20 },
        files: if full { 1_000_000 } else { 2_000 },
        backend: Backend::Sqlite,
    };
    while let Some(arg) = args.next_option() {
        match arg.as_str() {
            "--apps" => options.apps = args.number(&arg),
            "--repositories" => options.repositories = args.number(&arg),
            "--files" => options.files = args.number(&arg),
            "--db" => {
                options.backend = args
                    .backend()
                    .expect("--db names one backend: sqlite or postgres");
            }
            other => panic!("unknown option {other}"),
        }
    }
    options
}

fn main() {
    let options = parse_options();
    runtime().block_on(run(&options));
}

/// Docora's `encryptToken` (AES-256-GCM, 16-byte IV, `iv:tag:ciphertext`).
fn docora_seal(key_hex: &str, plain: &str) -> String {
    let key = hex::decode(key_hex).expect("hex");
    let cipher = AesGcm::<Aes256, U16>::new_from_slice(&key).expect("32 bytes");
    let iv = [7u8; 16];
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

/// A Docora database at its schema, filled as `options` say.
async fn fill(pool: &PgPool, key: &str, options: &Options) {
    sqlx::raw_sql(include_str!("../tests/it/fixtures/docora/schema.sql"))
        .execute(pool)
        .await
        .expect("Docora's schema applies");
    // Docora's hash of a `docora_` token (cost 12, as Docora makes it).
    let hash = bcrypt::hash(format!("docora_{}", "ab".repeat(32)), 12).expect("bcrypt");
    let sealed = docora_seal(key, "a-signing-key-of-the-bench");
    sqlx::query(
        "INSERT INTO apps (app_id, token_hash, app_name, base_url, email, client_auth_key_encrypted) \
         SELECT 'app_' || lpad(to_hex(g), 24, '0'), $1, 'bench app ' || g, \
         'https://1.1.1.1/hooks/' || g, 'dev@example.com', $2 FROM generate_series(1, $3) g",
    )
    .bind(hash)
    .bind(sealed)
    .bind(i32::try_from(options.apps).expect("apps fit"))
    .execute(pool)
    .await
    .expect("apps");
    sqlx::query(
        "INSERT INTO repositories (repository_id, github_url, owner, name) \
         SELECT 'repo_' || lpad(to_hex(g), 24, '0'), 'https://1.1.1.1/acme/r' || g, 'acme', 'r' || g \
         FROM generate_series(1, $1) g",
    )
    .bind(i32::try_from(options.repositories).expect("repositories fit"))
    .execute(pool)
    .await
    .expect("repositories");
    sqlx::query(
        "INSERT INTO app_repositories (app_id, repository_id, status) \
         SELECT 'app_' || lpad(to_hex((g - 1) % $1 + 1), 24, '0'), \
         'repo_' || lpad(to_hex(g), 24, '0'), 'synced' FROM generate_series(1, $2) g",
    )
    .bind(i32::try_from(options.apps).expect("apps fit"))
    .bind(i32::try_from(options.repositories).expect("repositories fit"))
    .execute(pool)
    .await
    .expect("subscriptions");
    let per = options.files.div_ceil(options.repositories.max(1));
    sqlx::query(
        "INSERT INTO app_delivered_files (app_id, repository_id, file_path, file_sha) \
         SELECT ar.app_id, ar.repository_id, 'docs/section-' || (f / 100) || '/file-' || f || '.md', \
         md5(ar.repository_id || f) || md5(f || ar.repository_id) \
         FROM app_repositories ar, generate_series(1, $1) f",
    )
    .bind(i32::try_from(per).expect("files fit"))
    .execute(pool)
    .await
    .expect("delivered files");
    sqlx::query("ANALYZE").execute(pool).await.expect("analyze");
}

async fn run(options: &Options) {
    let server = std::env::var("TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".to_owned());
    let docora = TestDatabase::postgres(&server, "docora_bench").await;
    let docora_url = docora.url.clone().expect("a PostgreSQL database");
    let pool = PgPool::connect(&docora_url)
        .await
        .expect("Docora's database");
    let key = "5a".repeat(32);
    let filling = Instant::now();
    fill(&pool, &key, options).await;
    let delivered: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM app_delivered_files")
        .fetch_one(&pool)
        .await
        .expect("count");
    println!(
        "Docora database filled in {:.1} s: {} apps, {} repositories, {delivered} delivered files\n",
        filling.elapsed().as_secs_f64(),
        options.apps,
        options.repositories
    );
    pool.close().await;

    let herald = match options.backend {
        Backend::Sqlite => TestDatabase::sqlite(),
        Backend::Postgres => TestDatabase::postgres(&server, "herald_bench").await,
    };
    let dir = tempfile::tempdir().expect("a data dir");
    let mut command = tokio::process::Command::new(herald_binary());
    command
        .args(["import-docora", "--json", "--data-dir"])
        .arg(dir.path().join("data"))
        .current_dir(dir.path())
        .env("DOCORA_DATABASE_URL", &docora_url)
        .env("DOCORA_ENCRYPTION_KEY", &key)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for (name, _) in std::env::vars() {
        if name.starts_with("HERALD") {
            command.env_remove(name);
        }
    }
    if let Some(url) = &herald.url {
        command.env("HERALD__DATABASE__URL", url);
    }
    let started = Instant::now();
    let child = command.spawn().expect("herald starts");
    let pid = child.id().expect("a running child");
    let waiting = tokio::spawn(child.wait_with_output());
    let mut peak = 0f64;
    while !waiting.is_finished() {
        peak = peak.max(peak_rss_mib(pid));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let output = waiting.await.expect("joined").expect("herald ran");
    assert!(
        output.status.success(),
        "the import failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let summary: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("a JSON summary");
    assert_eq!(summary["delivered_files"], delivered, "{summary}");

    println!(
        "| {} apps, {} repositories, {delivered} delivered files → {} | time | peak RSS | rows/s |",
        options.apps,
        options.repositories,
        options.backend.name()
    );
    println!("|---|---|---|---|");
    println!(
        "| `herald import-docora` | {elapsed:.1} s | {peak:.0} MiB | {:.0} |",
        delivered as f64 / elapsed
    );
    drop(herald);
    drop(docora);
}
