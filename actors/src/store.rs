//! Every database query of Herald, one module per aggregate. Handlers and actors
//! call these methods; nothing else builds SQL.
//!
//! - [`apps`]: onboarding, token authentication, listing, cascading deletion.
//! - [`subscriptions`]: repositories and the apps' subscriptions to them.
//! - [`globs`]: a subscription's stored path filters, read back strictly.
//! - [`destinations`]: a broker app's destination, sealed at rest.
//! - [`access`]: each subscriber's proof that its credential reads the
//!   repository, and what happens when it stops.
//! - [`leases`]: the claims that let several instances share one database
//!   (docs/operations.md, Several instances on one PostgreSQL): a repository is scanned,
//!   and a subscription delivered, by one owner at a time, until its lease
//!   expires.
//! - [`inbound`]: inbound push webhooks, stored first, deduplicated, processed later.
//! - [`operations`]: the operators' views across apps (overview, queue, dead
//!   events) and the git breaker reset.
//! - [`gauges`]: the levels `/metrics` reads at scrape time.
//! - [`bulk`]: bulk operations (retry every dead event), claimed and resumed
//!   by any instance.
//! - [`instances`]: each instance's heartbeat row.
//! - [`console`]: the admin console's sessions (and their CSRF tokens).
//! - [`event_log`]: the console's event log (every event under an
//!   operator's filters, newest first) and one event with its attempts.
//! - [`scans`]: each repository's recent scans, for its console page.
//! - [`replays`]: the changes between two commits written again as new
//!   events of one subscription, and each replay's progress.
//! - `pins`: which snapshots' and replays' commits the mirror may stop
//!   pinning, their events all settled.
//! - [`replay_quotas`]: what one app's replays may take (replays under way,
//!   events waiting, bytes an hour), counted in the database.
//! - `checkpoints`: SQLite's write-ahead log checkpointed by a task beside
//!   the writes, not inside the commit that fills it.

pub mod access;
pub mod apps;
pub mod breakers;
pub mod bulk;
mod checkpoints;
pub mod console;
pub mod delivery;
pub mod destinations;
pub mod event_log;
pub mod events;
pub mod gauges;
pub mod globs;
pub mod imports;
pub mod inbound;
pub mod instances;
pub mod leases;
mod legacy_tokens;
pub mod operations;
pub mod outbox;
mod pins;
pub mod replay_quotas;
pub mod replays;
pub mod retention;
pub mod rollups;
mod rows;
pub mod scans;
pub mod stream;
pub mod subscriptions;

use std::sync::Arc;
use std::time::Duration;

use migration::{Migrator, MigratorTrait};
use sea_orm::sqlx::sqlite::{SqliteJournalMode, SqliteSynchronous};
use sea_orm::{
    ConnectOptions, Database, DatabaseConnection, DatabaseTransaction, DbBackend, DbErr,
    SqliteTransactionMode, TransactionOptions, TransactionTrait,
};

use crate::crypto::{CryptoError, Keyring};

/// The rows before 1-based page `page` of `per_page` rows; `None` when the
/// product does not fit (no such page: an empty one). SeaORM's paginator
/// multiplies unchecked, so numbered pages go through here.
pub(crate) fn page_offset(page: u64, per_page: u64) -> Option<u64> {
    page.saturating_sub(1).checked_mul(per_page)
}

/// `COUNT(*)`: rows counted from an index alone. `COUNT(id)` makes SQLite
/// read every row to see that its id is not null, which on the outbox
/// costs a table read per event counted.
pub(crate) fn count_rows() -> sea_orm::sea_query::SimpleExpr {
    use sea_orm::sea_query::{Asterisk, Expr, Func};
    Func::count(Expr::col(Asterisk)).into()
}

/// Locks repository rows for the rest of the transaction (PostgreSQL
/// `FOR NO KEY UPDATE`, in id order; SQLite's `BEGIN IMMEDIATE` already
/// serialises writers). Every write transaction that touches a repository and
/// its subscriptions takes this lock first, so two of them can never lock the
/// same rows in opposite orders (a deadlock).
pub(crate) async fn lock_repositories<C: sea_orm::ConnectionTrait>(
    conn: &C,
    ids: &[String],
) -> Result<Vec<entity::repository::Model>, DbErr> {
    use sea_orm::sea_query::LockType;
    use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect};
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    entity::repository::Entity::find()
        .filter(entity::repository::Column::Id.is_in(ids.iter().cloned()))
        .order_by_asc(entity::repository::Column::Id)
        .lock(LockType::NoKeyUpdate)
        .all(conn)
        .await
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error")]
    Db(#[from] DbErr),
    #[error("a stored secret could not be decrypted")]
    Crypto(#[from] CryptoError),
    /// The write's lease passed to another claimant (or the state it was
    /// computed from changed): nothing was written, and the work stops.
    #[error("fenced: {0}")]
    Fenced(&'static str),
    /// The database did not accept a connection at start (its cause, as the
    /// driver words it: never the URL, which may hold a password).
    #[error("the database cannot be reached: {0}")]
    Unreachable(String),
}

impl StoreError {
    /// The database was too busy to answer in time, not wrong: the pool had
    /// no connection free within its acquire timeout, SQLite's write lock
    /// stayed taken past the busy timeout (`database is locked`), or
    /// PostgreSQL gave up on a lock (a deadlock, a serialization failure, a
    /// lock timeout). The same request may succeed later.
    pub fn is_busy(&self) -> bool {
        let StoreError::Db(err) = self else {
            return false;
        };
        match err {
            DbErr::ConnectionAcquire(sea_orm::error::ConnAcquireErr::Timeout) => true,
            DbErr::Conn(sea_orm::RuntimeErr::SqlxError(err))
            | DbErr::Exec(sea_orm::RuntimeErr::SqlxError(err))
            | DbErr::Query(sea_orm::RuntimeErr::SqlxError(err)) => match &**err {
                sea_orm::sqlx::Error::PoolTimedOut => true,
                sea_orm::sqlx::Error::Database(err) => {
                    let sqlite = err
                        .try_downcast_ref::<sea_orm::sqlx::sqlite::SqliteError>()
                        .is_some();
                    err.code().is_some_and(|code| busy_code(sqlite, &code))
                }
                _ => false,
            },
            _ => false,
        }
    }
}

/// A driver's error code for "busy, try again": SQLite's `SQLITE_BUSY` (5)
/// and `SQLITE_LOCKED` (6) with their extended codes (the primary code in
/// the low byte); PostgreSQL's serialization failure, deadlock and lock
/// timeout.
fn busy_code(sqlite: bool, code: &str) -> bool {
    if sqlite {
        return code
            .parse::<u32>()
            .is_ok_and(|code| matches!(code & 0xff, 5 | 6));
    }
    matches!(code, "40001" | "40P01" | "55P03")
}

/// The PostgreSQL advisory lock instances take turns on to migrate ("herald
/// m" in ASCII).
pub const MIGRATION_LOCK: i64 = 0x6865_7261_6c64_206d;

/// How long readiness waits for the database to answer.
pub const PING_TIMEOUT: Duration = Duration::from_secs(2);

/// The database and the keys that seal the secrets stored in it.
#[derive(Clone)]
pub struct Store {
    db: DatabaseConnection,
    /// Secrets are sealed on the way in and opened on the way out, so no other
    /// module ever sees a ciphertext or needs the key.
    keys: Arc<Keyring>,
    /// Replays write one at a time per process
    /// ([`Store::record_replay`]): a flood of them waits here, not
    /// on the database's write lock holding a pooled connection each, so
    /// the pool and the lock stay free for everything else.
    replay_writes: Arc<tokio::sync::Semaphore>,
    /// SQLite's checkpoints, while any clone of the store lives.
    _checkpoints: Option<Arc<tokio_util::task::AbortOnDropHandle<()>>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("backend", &self.db.get_database_backend())
            .finish()
    }
}

/// Rows a SQLite connection's thread may hand over before the reading task
/// takes them. At sqlx's default (50), a lane's batch of 256 events went
/// over row by row once the buffer was full, the connection's thread and the
/// task waking each other for each row, on the cores the receiver needs
/// (BENCHMARKS.md, "Tunings of the delivery path").
const SQLITE_ROW_BUFFER: usize = 1024;

/// Connections in the pool: SQLite's writers take turns anyway.
pub const SQLITE_CONNECTIONS: u32 = 8;
/// Connections in the pool on PostgreSQL.
pub const POSTGRES_CONNECTIONS: u32 = 16;

/// Creates the SQLite database file of `url`, empty and mode 0600, when it
/// does not exist yet: SQLite would create it under the umask (usually
/// world-readable), and it gives its `-wal` and `-shm` files the database
/// file's mode. An existing file keeps its mode; in-memory databases have
/// no file.
fn create_private_sqlite_file(url: &str) -> Result<(), StoreError> {
    use std::os::unix::fs::OpenOptionsExt;
    use std::str::FromStr;

    let Ok(parsed) = sea_orm::sqlx::sqlite::SqliteConnectOptions::from_str(url) else {
        // sqlx reports the malformed URL when connecting.
        return Ok(());
    };
    let path = parsed.get_filename();
    if path.as_os_str().is_empty() || path.as_os_str() == ":memory:" {
        return Ok(());
    }
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(_) => Ok(()),
        Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(err) => Err(StoreError::Db(DbErr::Custom(format!(
            "creating the database file {}: {err}",
            path.display()
        )))),
    }
}

/// Turns SQLite's query planner stability guarantee on for a new
/// connection (`SQLITE_DBCONFIG_ENABLE_QPSG`): a statement's plan no longer
/// depends on the values bound to it. Without it SQLite reads a bound
/// `LIMIT ?` (every `one()` and every batch read has one) while planning,
/// and marks the statement to be planned again once that parameter is bound
/// anew: each execution of a statement held in sqlx's statement cache was
/// parsed and planned again (`sqlite3Reprepare`), for each batch of a lane
/// its context's four reads and its events'. No query of Herald's needs a
/// bound value to find its index: no table has statistics (Herald never
/// runs `ANALYZE`), and the columns it matches with `LIKE` have none.
async fn stable_query_plans(
    connection: &mut sea_orm::sqlx::SqliteConnection,
) -> Result<(), sea_orm::sqlx::Error> {
    let mut handle = connection.lock_handle().await?;
    let db = handle.as_raw_handle().as_ptr();
    // SAFETY: `db` is this connection's open handle, held locked for the
    // call; `SQLITE_DBCONFIG_ENABLE_QPSG` takes an int (1: on) and an
    // optional `int*` for the new setting, here none (null).
    #[allow(unsafe_code)]
    let code = unsafe {
        libsqlite3_sys::sqlite3_db_config(
            db,
            libsqlite3_sys::SQLITE_DBCONFIG_ENABLE_QPSG,
            1 as std::ffi::c_int,
            std::ptr::null_mut::<std::ffi::c_int>(),
        )
    };
    if code != libsqlite3_sys::SQLITE_OK {
        // Only slower: statements are planned again as before.
        tracing::warn!(code, "SQLite's query planner stability guarantee is off");
    }
    Ok(())
}

/// The SQL function [`below_the_lanes`] registers, and the statement that
/// calls it.
const LOWER_PRIORITY_FUNCTION: &std::ffi::CStr = c"herald_lower_priority";
const LOWER_PRIORITY_CALL: &str = "SELECT herald_lower_priority()";

/// Lowers the priority of a new connection's worker thread to that of the
/// work beside the lanes ([`crate::background`]). sqlx runs each SQLite
/// connection's statements on a thread of its own; the lanes' writes and
/// batch reads go there, as do the checkpoints, while a lane waits for its
/// answer. At the lanes' priority those threads held the core a broker's
/// acknowledgement or a receiver's answer was waiting for (BENCHMARKS.md,
/// "The reference workload"). The thread is not Herald's to configure, so the
/// connection runs a function of Herald's, which lowers the thread it runs on:
/// the connection's own.
async fn below_the_lanes(
    connection: &mut sea_orm::sqlx::SqliteConnection,
) -> Result<(), sea_orm::sqlx::Error> {
    /// The function: lowers the calling thread, returns NULL.
    extern "C" fn lower(
        context: *mut libsqlite3_sys::sqlite3_context,
        _argc: std::ffi::c_int,
        _argv: *mut *mut libsqlite3_sys::sqlite3_value,
    ) {
        crate::background::lower_priority();
        // SAFETY: `context` is the one SQLite handed this call.
        #[allow(unsafe_code)]
        unsafe {
            libsqlite3_sys::sqlite3_result_null(context);
        }
    }
    {
        let mut handle = connection.lock_handle().await?;
        let db = handle.as_raw_handle().as_ptr();
        // SAFETY: `db` is this connection's open handle, held locked for
        // the call; the name is a NUL-terminated constant; the function
        // takes no arguments and keeps no state (no user data, no
        // destructor).
        #[allow(unsafe_code)]
        let code = unsafe {
            libsqlite3_sys::sqlite3_create_function_v2(
                db,
                LOWER_PRIORITY_FUNCTION.as_ptr(),
                0,
                // Callable by a statement only, never from a trigger or view.
                libsqlite3_sys::SQLITE_UTF8 | libsqlite3_sys::SQLITE_DIRECTONLY,
                std::ptr::null_mut(),
                Some(lower),
                None,
                None,
                None,
            )
        };
        if code != libsqlite3_sys::SQLITE_OK {
            // Only slower: the thread keeps the lanes' priority.
            tracing::warn!(code, "a database thread keeps the lanes' priority");
            return Ok(());
        }
    }
    use sea_orm::sqlx::Executor as _;
    connection.execute(LOWER_PRIORITY_CALL).await.map(drop)
}

/// Why a PostgreSQL server does not take a connection, from one attempt
/// (`None` when this one succeeds).
async fn postgres_unreachable_cause(url: &str) -> Option<String> {
    use sea_orm::sqlx::Connection as _;
    let attempt = sea_orm::sqlx::postgres::PgConnection::connect(url);
    match tokio::time::timeout(Duration::from_secs(10), attempt).await {
        Ok(Ok(connection)) => {
            let _ = connection.close().await;
            None
        }
        Ok(Err(err)) => Some(err.to_string()),
        Err(_) => Some("no answer within 10 s".to_owned()),
    }
}

impl Store {
    /// Connects to `url` (`sqlite://…` or `postgres://…`). SQLite databases are
    /// created when missing and run in WAL mode with foreign keys enforced and a
    /// busy timeout, so concurrent writers wait instead of failing; the log is
    /// checkpointed beside the writes ([`checkpoints`]).
    pub async fn connect(url: &str, keys: Arc<Keyring>) -> Result<Self, StoreError> {
        Self::connect_with(url, keys, checkpoints::EVERY).await
    }

    /// [`Store::connect`], a SQLite database checkpointed every
    /// `checkpoint_every` ([`checkpoints`]).
    pub(crate) async fn connect_with(
        url: &str,
        keys: Arc<Keyring>,
        checkpoint_every: Duration,
    ) -> Result<Self, StoreError> {
        let mut options = ConnectOptions::new(url.to_owned());
        options
            .sqlx_logging(false)
            .connect_timeout(Duration::from_secs(10))
            .acquire_timeout(Duration::from_secs(30));
        if url.starts_with("sqlite:") {
            create_private_sqlite_file(url)?;
            options
                .max_connections(SQLITE_CONNECTIONS)
                .map_sqlx_sqlite_opts(|o| {
                    o.create_if_missing(true)
                        .journal_mode(SqliteJournalMode::Wal)
                        .synchronous(SqliteSynchronous::Normal)
                        .foreign_keys(true)
                        .busy_timeout(Duration::from_secs(10))
                        .row_buffer_size(SQLITE_ROW_BUFFER)
                        .pragma("wal_autocheckpoint", "0")
                })
                .map_sqlx_sqlite_pool_opts(|pool| {
                    pool.after_connect(|connection, _| {
                        Box::pin(async move {
                            stable_query_plans(connection).await?;
                            below_the_lanes(connection).await
                        })
                    })
                });
        } else {
            options.max_connections(POSTGRES_CONNECTIONS);
        }
        let db = match Database::connect(options).await {
            Ok(db) => db,
            // The pool retries a refused or unanswered connection until its
            // acquire timeout and then says only that it timed out: one
            // direct connection tells the operator why.
            Err(DbErr::Conn(err)) if !url.starts_with("sqlite:") => {
                return Err(StoreError::Unreachable(
                    postgres_unreachable_cause(url)
                        .await
                        .unwrap_or_else(|| err.to_string()),
                ));
            }
            Err(err) => return Err(err.into()),
        };
        let checkpoints = (db.get_database_backend() == sea_orm::DatabaseBackend::Sqlite)
            .then(|| Arc::new(checkpoints::spawn(db.clone(), checkpoint_every)));
        Ok(Self {
            db,
            keys,
            replay_writes: Arc::new(tokio::sync::Semaphore::new(1)),
            _checkpoints: checkpoints,
        })
    }

    /// Applies every pending migration.
    ///
    /// On PostgreSQL, instances that start together take turns: each holds
    /// a session advisory lock ([`MIGRATION_LOCK`]) on a connection of its
    /// own while it migrates, so the first applies the migrations and the
    /// others then find none pending. Without turns each would read the same
    /// pending list, and all but one would fail on tables that now exist.
    /// The lock goes with the session, so an instance that exits while it
    /// migrates does not keep the others waiting. (A connection pooler in
    /// front of PostgreSQL must pool sessions, not transactions, as it must
    /// for the wake-ups' `LISTEN`.)
    ///
    /// Returns how many migrations it applied (none when the schema is
    /// current, or another instance applied them).
    pub async fn migrate(&self) -> Result<usize, StoreError> {
        let Some(pool) = self.postgres_pool() else {
            return Ok(self.apply_pending().await?);
        };
        let sqlx_err = |into: fn(sea_orm::RuntimeErr) -> DbErr| {
            move |err: sea_orm::sqlx::Error| into(sea_orm::RuntimeErr::SqlxError(Arc::new(err)))
        };
        let mut turn = pool
            .acquire()
            .await
            .map_err(sqlx_err(DbErr::Conn))?
            .detach();
        let ours: bool = sea_orm::sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(MIGRATION_LOCK)
            .fetch_one(&mut turn)
            .await
            .map_err(sqlx_err(DbErr::Query))?;
        if !ours {
            tracing::info!("another instance is migrating the database; waiting for its turn");
            sea_orm::sqlx::query("SELECT pg_advisory_lock($1)")
                .bind(MIGRATION_LOCK)
                .execute(&mut turn)
                .await
                .map_err(sqlx_err(DbErr::Query))?;
        }
        let applied = self.apply_pending().await;
        // Ending the session releases the lock, whatever the migrations did.
        let _ = sea_orm::sqlx::Connection::close(turn).await;
        Ok(applied?)
    }

    /// Applies the pending migrations; how many there were.
    async fn apply_pending(&self) -> Result<usize, DbErr> {
        let pending = Migrator::get_pending_migrations(&self.db).await?.len();
        if pending > 0 {
            Migrator::up(&self.db, None).await?;
        }
        Ok(pending)
    }

    /// Whether the database answers (readiness), within [`PING_TIMEOUT`]:
    /// when the database is unreachable the pool keeps trying to connect
    /// for its whole acquire timeout, longer than a readiness probe waits.
    pub async fn ping(&self) -> Result<(), StoreError> {
        tokio::time::timeout(PING_TIMEOUT, self.db.ping())
            .await
            .map_err(|_| DbErr::ConnectionAcquire(sea_orm::error::ConnAcquireErr::Timeout))??;
        Ok(())
    }

    /// Starts a transaction that writes. On SQLite it takes the write lock at
    /// once (`BEGIN IMMEDIATE`): a deferred transaction that reads first fails
    /// outright, without waiting, when another writer committed in between.
    pub(crate) async fn begin_write(&self) -> Result<DatabaseTransaction, DbErr> {
        self.db
            .begin_with_options(TransactionOptions {
                sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
                ..Default::default()
            })
            .await
    }

    pub fn backend(&self) -> DbBackend {
        self.db.get_database_backend()
    }

    pub fn db(&self) -> &DatabaseConnection {
        &self.db
    }

    /// The PostgreSQL pool, for what needs a connection of its own (the
    /// wake-up listener); `None` on SQLite.
    pub fn postgres_pool(&self) -> Option<sea_orm::sqlx::PgPool> {
        (self.db.get_database_backend() == sea_orm::DatabaseBackend::Postgres)
            .then(|| self.db.get_postgres_connection_pool().clone())
    }

    /// Sends `payload` to every instance listening on `channel`
    /// (PostgreSQL's `NOTIFY`); nothing on SQLite.
    pub async fn notify_cluster(&self, channel: &str, payload: &str) -> Result<(), StoreError> {
        use sea_orm::ConnectionTrait;
        if self.db.get_database_backend() != sea_orm::DatabaseBackend::Postgres {
            return Ok(());
        }
        self.db
            .execute_raw(sea_orm::Statement::from_sql_and_values(
                sea_orm::DatabaseBackend::Postgres,
                "SELECT pg_notify($1, $2)",
                [channel.into(), payload.into()],
            ))
            .await?;
        Ok(())
    }

    pub fn keys(&self) -> &Keyring {
        &self.keys
    }

    pub async fn close(self) -> Result<(), StoreError> {
        self.db.close().await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use sea_orm::{ConnectOptions, ConnectionTrait, Database};

    use super::*;

    /// What SQLite counted for the statements sqlx holds prepared on each
    /// of the pool's connections whose SQL contains `needle`: the times they
    /// ran and the times SQLite parsed and planned them again.
    async fn prepared_statements(store: &Store, needle: &str) -> (i32, i32) {
        use libsqlite3_sys as ffi;
        let pool = store.db.get_sqlite_connection_pool();
        // Every connection the pool has, each held while the next is taken.
        let mut held = Vec::new();
        while held.len() < pool.size() as usize {
            held.push(pool.acquire().await.expect("a pooled connection"));
        }
        let (mut runs, mut prepared_again) = (0, 0);
        for connection in &mut held {
            let mut handle = connection.lock_handle().await.expect("its handle");
            let db = handle.as_raw_handle().as_ptr();
            // SAFETY: `db` is an open handle held locked; the statements
            // walked belong to it and none is finalized meanwhile; their SQL
            // is a NUL-terminated string SQLite owns.
            #[allow(unsafe_code)]
            unsafe {
                let mut statement = ffi::sqlite3_next_stmt(db, std::ptr::null_mut());
                while !statement.is_null() {
                    let sql = std::ffi::CStr::from_ptr(ffi::sqlite3_sql(statement));
                    if sql.to_string_lossy().contains(needle) {
                        runs += ffi::sqlite3_stmt_status(statement, ffi::SQLITE_STMTSTATUS_RUN, 0);
                        prepared_again += ffi::sqlite3_stmt_status(
                            statement,
                            ffi::SQLITE_STMTSTATUS_REPREPARE,
                            0,
                        );
                    }
                    statement = ffi::sqlite3_next_stmt(db, statement);
                }
            }
        }
        (runs, prepared_again)
    }

    /// Every connection of the pool runs its statements on a thread below
    /// the lanes' priority, as the other work beside the lanes does.
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn every_database_thread_runs_below_the_lanes() {
        use libsqlite3_sys as ffi;
        /// The nice value of the thread that runs it.
        extern "C" fn thread_niceness(
            context: *mut ffi::sqlite3_context,
            _argc: std::ffi::c_int,
            _argv: *mut *mut ffi::sqlite3_value,
        ) {
            // SAFETY: `getpriority` and `gettid` take and return integers;
            // `context` is the one SQLite handed this call.
            #[allow(unsafe_code)]
            unsafe {
                let nice = libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t);
                ffi::sqlite3_result_int(context, nice);
            }
        }
        // SAFETY: as in `thread_niceness`.
        #[allow(unsafe_code)]
        let (process, lanes) = unsafe {
            (
                libc::getpriority(libc::PRIO_PROCESS, libc::getpid() as libc::id_t),
                libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t),
            )
        };
        let dir = tempfile::tempdir().expect("a temporary directory");
        let store = crate::test_support::fixtures::store(
            &crate::test_support::fixtures::sqlite_url(dir.path()),
        )
        .await;
        let pool = store.db.get_sqlite_connection_pool();
        // Every connection the pool may make, each held while the next is made.
        let mut held = Vec::new();
        while held.len() < SQLITE_CONNECTIONS as usize {
            held.push(pool.acquire().await.expect("a pooled connection"));
        }
        for connection in &mut held {
            {
                let mut handle = connection.lock_handle().await.expect("its handle");
                let db = handle.as_raw_handle().as_ptr();
                // SAFETY: `db` is an open handle held locked; the name is a
                // NUL-terminated constant; the function keeps no state.
                #[allow(unsafe_code)]
                let code = unsafe {
                    ffi::sqlite3_create_function_v2(
                        db,
                        c"thread_niceness".as_ptr(),
                        0,
                        ffi::SQLITE_UTF8,
                        std::ptr::null_mut(),
                        Some(thread_niceness),
                        None,
                        None,
                        None,
                    )
                };
                assert_eq!(code, ffi::SQLITE_OK);
            }
            let nice: i32 = sea_orm::sqlx::query_scalar("SELECT thread_niceness()")
                .fetch_one(&mut **connection)
                .await
                .expect("its thread's nice value");
            assert_eq!(nice, (process + crate::background::NICENESS).min(19));
            assert!(
                nice > lanes || lanes == 19,
                "{nice} is not below the lanes' {lanes}"
            );
        }
    }

    /// A read with a bound `LIMIT` (an app by its id, as each batch of a
    /// lane reads it) runs again and again from sqlx's statement cache:
    /// SQLite does not parse and plan it anew for the value bound.
    #[tokio::test]
    async fn a_cached_statement_is_not_planned_again_for_its_bound_values() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let store = crate::test_support::fixtures::store(
            &crate::test_support::fixtures::sqlite_url(dir.path()),
        )
        .await;
        let read = |n: usize| {
            let store = &store;
            async move {
                let id = crate::ids::AppId::stored(format!("app_{}", n % 3));
                assert!(store.app(&id).await.expect("read").is_none());
            }
        };
        // Each connection prepares it once; one whose schema predates the
        // migrations prepares it again at its first run.
        for n in 0..20 {
            read(n).await;
        }
        let (runs_before, prepared_before) = prepared_statements(&store, "FROM \"apps\"").await;
        for n in 0..20 {
            read(n).await;
        }
        let (runs, prepared_again) = prepared_statements(&store, "FROM \"apps\"").await;
        assert!(
            runs - runs_before >= 20,
            "the reads ran from the cache: {runs_before} runs, then {runs}"
        );
        assert_eq!(
            prepared_again,
            prepared_before,
            "planned again over {} runs",
            runs - runs_before
        );
    }

    /// SQLite's write lock held by one connection: another that may not
    /// wait gets `database is locked`, which is busy; a malformed query is not.
    #[tokio::test]
    async fn a_locked_sqlite_database_is_busy_and_a_bad_query_is_not() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("db").display());
        let connect = || {
            let mut options = ConnectOptions::new(url.clone());
            options
                .max_connections(1)
                .sqlx_logging(false)
                .map_sqlx_sqlite_opts(|o| o.busy_timeout(Duration::ZERO));
            Database::connect(options)
        };
        let holder = connect().await.expect("the first connection");
        let writer = connect().await.expect("the second connection");
        holder
            .execute_unprepared("CREATE TABLE t (x INTEGER)")
            .await
            .expect("a table");
        let lock = TransactionOptions {
            sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
            ..Default::default()
        };
        let held = holder.begin_with_options(lock).await.expect("the lock");
        let locked = writer
            .begin_with_options(lock)
            .await
            .expect_err("the lock is held");
        assert!(StoreError::Db(locked).is_busy());
        held.rollback().await.expect("released");
        let malformed = writer
            .execute_unprepared("SELEKT 1")
            .await
            .expect_err("not SQL");
        assert!(!StoreError::Db(malformed).is_busy());
        assert!(
            StoreError::Db(DbErr::ConnectionAcquire(
                sea_orm::error::ConnAcquireErr::Timeout
            ))
            .is_busy()
        );
    }

    #[test]
    fn busy_codes_are_the_drivers_own() {
        // SQLITE_BUSY, SQLITE_BUSY_SNAPSHOT, SQLITE_LOCKED; not SQLITE_CONSTRAINT.
        for code in ["5", "517", "6"] {
            assert!(busy_code(true, code), "{code}");
        }
        assert!(!busy_code(true, "19"));
        // PostgreSQL: serialization failure, deadlock, lock timeout; a
        // unique violation is not busy, nor SQLite's numbers there.
        for code in ["40001", "40P01", "55P03"] {
            assert!(busy_code(false, code), "{code}");
        }
        assert!(!busy_code(false, "23505"));
        assert!(!busy_code(false, "5"));
    }
}
