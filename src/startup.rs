//! Start-up and shutdown: the data directory and its generated secrets, the
//! database, the actor tree and the HTTP server, wired together.

use std::fs;
use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actors::breaker::BreakerPolicy;
use actors::crypto::{self, Keyring};
use actors::delivery::DeliveryConfig;
use actors::git::{ConnectRule, LowSpeed};
use actors::lfs::cache::Cache;
use actors::payload::Chunking;
use actors::repo_watcher::WatcherConfig;
use actors::restart::RestartPolicy;
use actors::signals::OutboxSignal;
use actors::store::Store;
use actors::store::instances::Heartbeat;
use actors::supervisor::{ClusterConfig, EngineConfig, EngineHandle};
use actors::upkeep::UpkeepConfig;
use anyhow::Context;
use secrecy::{ExposeSecret, SecretString};
use tokio::net::TcpListener;
use tracing::{error, info, warn};

use crate::config::Settings;
use crate::http::{self, AppState, BodyBudget, ConnectionLimits, RateLimits};

const ADMIN_TOKEN_FILE: &str = "admin.token";
const ENCRYPTION_KEY_FILE: &str = "encryption.key";
const INSTANCE_ID_FILE: &str = "instance.id";
/// Where the bare mirrors live, under data_dir.
const MIRRORS_DIR: &str = "mirrors";
/// The LFS object cache, under the data directory.
const LFS_DIR: &str = "lfs";

/// A bound, ready-to-serve Herald.
pub struct Application {
    listener: TcpListener,
    addr: SocketAddr,
    state: AppState,
    engine: EngineHandle,
    store: Store,
    shutdown_timeout: Duration,
    /// Connections that do not send a request head in time are closed.
    header_read_timeout: Duration,
    /// The caps on open connections, within the open-files limit.
    connections: ConnectionLimits,
}

impl Application {
    /// Prepares the data directory, connects and migrates the database, starts
    /// the actor tree and binds the listener.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        // The port first: a port already taken ends the start before anything
        // is connected or started (connections wait in the backlog until the
        // server runs).
        let addr = SocketAddr::new(
            settings
                .server
                .host
                .parse()
                .context("server.host was validated at load")?,
            settings.server.port,
        );
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding {addr}"))?;
        let addr = listener.local_addr()?;

        create_private_dir(settings.data_dir())?;
        create_private_dir(&settings.data_dir().join(MIRRORS_DIR))?;
        create_private_dir(&settings.data_dir().join(LFS_DIR))?;
        let keys = Arc::new(load_keyring(&settings)?);
        let admin_token = load_admin_token(&settings)?;

        let store = connect_store(&settings, keys).await?;
        if settings.database.auto_migrate {
            let applied = store.migrate().await.context("applying migrations")?;
            if applied > 0 {
                info!(applied, "database schema migrated");
            }
        }

        // Leases a previous run of this instance left behind (a crash) are
        // released at once: their holder is gone, and their work resumes now.
        let instance_id = instance_id(&settings)?;
        let released = store
            .release_leases_of(&instance_id)
            .await
            .context("releasing the previous run's leases")?;
        if released > 0 {
            info!(
                released,
                "released the leases of this instance's previous run"
            );
        }
        let engine =
            EngineHandle::start(store.clone(), engine_config(&settings, instance_id.clone()))
                .await
                .context("starting the actor tree")?;

        let open_files = raise_open_files_limit();
        let connections = ConnectionLimits::new(
            settings.server.max_connections,
            settings.server.max_connections_per_ip,
            open_files,
        );
        // Worth a warning only where the limit really binds: a default
        // 10,000 trimmed by a few dozen is not news.
        if connections.max_connections() < settings.server.max_connections / 2 {
            warn!(
                max_connections = connections.max_connections(),
                open_files, "server.max_connections lowered to half the open-files limit"
            );
        }
        let state = AppState {
            store: store.clone(),
            engine: engine.clone(),
            admin_token: Arc::new(admin_token),
            limits: Arc::new(RateLimits::new(&settings.rate_limit)),
            settings: Arc::new(settings.clone()),
            started_at: Instant::now(),
            instance_id: instance_id.into(),
            body_budget: BodyBudget::leaked(settings.server.max_inflight_body_bytes),
            closing: tokio_util::sync::CancellationToken::new(),
            streams: http::StreamHub::new(
                store.clone(),
                http::StreamLimits {
                    max_streams: settings.delivery.max_streams_per_app,
                    buffer_bytes: u32::try_from(settings.delivery.stream_buffer_bytes)
                        .unwrap_or(u32::MAX),
                    content_bytes: u32::try_from(settings.delivery.stream_content_bytes)
                        .unwrap_or(u32::MAX),
                },
            ),
        };
        Ok(Self {
            listener,
            addr,
            state,
            engine,
            store,
            shutdown_timeout: settings.server.shutdown_timeout,
            header_read_timeout: settings.server.header_read_timeout,
            connections,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The last start-up line: where Herald serves, where its console and
    /// API docs are, and where the admin token comes from; on a terminal,
    /// also as a few lines a newcomer reads at a glance.
    fn announce(&self) {
        let served = format!("http://{}", self.addr);
        let token = match &self.state.settings.admin.token {
            Some(_) => "the admin.token setting".to_owned(),
            None => self
                .state
                .settings
                .data_dir()
                .join(ADMIN_TOKEN_FILE)
                .display()
                .to_string(),
        };
        info!(
            addr = %self.addr,
            console = %format_args!("{served}/admin"),
            api_docs = %format_args!("{served}/docs"),
            admin_token = %token,
            "listening"
        );
        if std::io::stderr().is_terminal() {
            eprintln!(
                "\n  Herald serves on {served}\n\n      console    {served}/admin\n      API docs   {served}/docs\n      admin token in {token}\n"
            );
        }
    }

    /// Serves until `shutdown` completes, then stops accepting, lets in-flight
    /// requests finish, stops the actor tree and closes the database.
    pub async fn run_until(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        self.announce();
        let pruner = http::spawn_rate_limit_pruner(self.state.limits.clone());
        let metrics_upkeep = http::spawn_metrics_upkeep();
        let routes = http::routes(self.state.clone());
        // Herald stops when asked, or when its actor tree gave up: a process
        // that answers HTTP but delivers nothing must not look alive, so it
        // exits non-zero and its service manager restarts it.
        let engine_gave_up = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (stopping_tx, stopping) = tokio::sync::oneshot::channel::<()>();
        let engine = self.engine.clone();
        let gave_up = Arc::clone(&engine_gave_up);
        let closing = self.state.closing.clone();
        let server = http::serve(
            self.listener,
            routes,
            self.header_read_timeout,
            self.connections,
            async move {
                tokio::select! {
                    () = shutdown => {}
                    () = engine.ended() => {
                        error!("the actor tree gave up; stopping so that Herald can be restarted");
                        gave_up.store(true, std::sync::atomic::Ordering::SeqCst);
                    }
                }
                closing.cancel();
                let _ = stopping_tx.send(());
            },
        );
        tokio::pin!(server);
        tokio::select! {
            () = &mut server => {}
            _ = stopping => {
                // In-flight requests get `server.shutdown_timeout` to finish.
                if tokio::time::timeout(self.shutdown_timeout, &mut server).await.is_err() {
                    warn!("in-flight requests did not finish in time; closing them");
                }
            }
        }
        let engine_gave_up = engine_gave_up.load(std::sync::atomic::Ordering::SeqCst);
        info!("no longer accepting requests; stopping the actor tree");
        pruner.abort();
        metrics_upkeep.abort();
        self.engine.shutdown(self.shutdown_timeout).await;
        self.store.close().await.ok();
        info!("stopped");
        // Spans still buffered leave before the process does.
        tokio::task::spawn_blocking(crate::telemetry::shutdown)
            .await
            .ok();
        if engine_gave_up {
            anyhow::bail!("the actor tree gave up: a supervised part kept failing (see the log)");
        }
        Ok(())
    }
}

/// Raises the soft open-files limit to the hard one, so connections, the
/// database and the mirrors have every descriptor the system allows, and
/// returns the soft limit in effect (on failure, the one Herald started
/// with).
fn raise_open_files_limit() -> u64 {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => limit,
        Err(err) => {
            warn!(error = %err, "the open-files limit could not be raised");
            rlimit::Resource::NOFILE
                .get()
                .map_or(1024, |(soft, _hard)| soft)
        }
    }
}

/// Connects to the configured database (creating SQLite's file as needed).
pub async fn connect_store(settings: &Settings, keys: Arc<Keyring>) -> anyhow::Result<Store> {
    Store::connect(&settings.database.url, keys)
        .await
        .context("connecting to the database (database.url)")
}

/// This instance's name in leases, heartbeat rows and metrics. Kept in
/// data_dir (created here if need be), so a restarted Herald takes its own
/// leases back at once instead of waiting for them to expire; instances
/// sharing a PostgreSQL database have data directories of their own.
pub fn instance_id(settings: &Settings) -> anyhow::Result<String> {
    create_private_dir(settings.data_dir())?;
    check_writable(settings.data_dir())?;
    read_or_create_secret(
        &settings.data_dir().join(INSTANCE_ID_FILE),
        || {
            format!(
                "herald-{}",
                &crypto::sha256_hex(&crypto::random_bytes::<16>())[..16]
            )
        },
        |_| {},
    )
}

/// git's low-speed rule, for every connection to a remote.
fn low_speed(settings: &Settings) -> LowSpeed {
    LowSpeed {
        limit: settings.git.low_speed_limit,
        time: settings.git.low_speed_time,
    }
}

fn engine_config(settings: &Settings, instance_id: String) -> EngineConfig {
    let mirrors_dir = settings.data_dir().join(MIRRORS_DIR);
    let lfs_dir = settings.data_dir().join(LFS_DIR);
    let delivery = &settings.delivery;
    // Where git may connect, checked again before every operation.
    let connect = ConnectRule {
        allow_private: settings.security.allow_private_targets,
        allow_http: settings.security.allow_http_targets,
        allow_local: settings.git.allow_local_repos,
        data_dir: settings.data_dir().to_path_buf(),
    };
    EngineConfig {
        tick: settings.scheduler.tick,
        scan_workers: settings.git.scan_workers,
        scan_workers_per_app: settings.git.scan_workers_per_app,
        watcher: WatcherConfig {
            mirrors_dir: mirrors_dir.clone(),
            fetch_timeout: settings.git.fetch_timeout,
            low_speed: low_speed(settings),
            rescan_interval: settings.scheduler.rescan_interval,
            connect: connect.clone(),
            access_recheck_interval: settings.security.access_recheck_interval,
            breaker: BreakerPolicy {
                threshold: settings.breaker.git.threshold,
                cooldown: settings.breaker.git.cooldown,
            },
            instance_id: instance_id.clone(),
            lease_ttl: settings.cluster.lease_ttl(),
            repack_threshold: settings.git.repack_threshold,
            lfs: settings.git.lfs,
            signal: OutboxSignal::default(),
        },
        delivery: DeliveryConfig {
            timeout: delivery.timeout,
            max_attempts: delivery.max_attempts,
            backoff: delivery.backoff.backoff(),
            retry_after_cap: delivery.retry_after_max,
            chunking: Chunking {
                threshold_bytes: delivery.chunk_threshold_bytes,
                chunk_chars: usize::try_from(delivery.chunk_size_bytes).unwrap_or(usize::MAX),
            },
            max_file_bytes: delivery.max_file_bytes,
            breaker: BreakerPolicy {
                threshold: settings.breaker.delivery.threshold,
                cooldown: settings.breaker.delivery.cooldown,
            },
            disable_after: delivery.disable_after,
            max_in_flight_per_app: delivery.max_in_flight_per_app,
            allow_private_targets: settings.security.allow_private_targets,
            allow_http_targets: settings.security.allow_http_targets,
            mirrors_dir,
            tick: delivery.tick,
            dead_retry_interval: delivery.dead_retry_interval(),
            bulk_retry_pause: delivery.bulk_retry_pause,
            instance_id: instance_id.clone(),
            lease_ttl: settings.cluster.lease_ttl(),
            fetch_timeout: settings.git.fetch_timeout,
            low_speed: low_speed(settings),
            lfs: actors::lfs::Lfs::new(lfs_dir.clone(), &connect, settings.git.fetch_timeout),
            connect,
        },
        restart: RestartPolicy::default(),
        cluster: ClusterConfig {
            instance: Heartbeat {
                id: instance_id,
                version: env!("CARGO_PKG_VERSION").to_owned(),
                host: host_name(),
                started_at: actors::clock::now_ms(),
            },
            heartbeat_interval: settings.cluster.heartbeat_interval,
            lease_ttl: settings.cluster.lease_ttl(),
        },
        upkeep: UpkeepConfig {
            event_retention: delivery.event_retention,
            attempt_retention: delivery.attempt_retention,
            rollup_retention: delivery.rollup_retention,
            lfs_cache: Some((Cache::new(lfs_dir), settings.git.lfs_cache_bytes)),
        },
    }
}

/// The machine's host name, for the heartbeat row (`unknown` when the
/// system does not say).
fn host_name() -> String {
    whoami::hostname().unwrap_or_else(|_| "unknown".to_owned())
}

/// The keyring from `security.encryption_key`, or from the key file in
/// data_dir, generated (mode 0600) on first start.
pub fn load_keyring(settings: &Settings) -> anyhow::Result<Keyring> {
    let previous: Vec<&str> = settings
        .security
        .previous_encryption_keys
        .iter()
        .map(|k| k.expose_secret())
        .collect();
    let primary = match &settings.security.encryption_key {
        Some(key) => key.expose_secret().to_owned(),
        None => {
            let path = settings.data_dir().join(ENCRYPTION_KEY_FILE);
            read_or_create_secret(&path, Keyring::generate_hex, |path| {
                warn!(
                    path = %path.display(),
                    "generated an encryption key for secrets at rest; back it up, or set \
                     security.encryption_key: without it the stored secrets cannot be read"
                );
            })?
        }
    };
    Keyring::from_hex(&primary, &previous).context("security.encryption_key")
}

/// The admin token from `admin.token`, or from the token file in data_dir,
/// generated on first start. A generated token is shown once when stderr is a
/// terminal; otherwise stderr is a log stream (journald, `docker logs`) that
/// keeps what it is given, so only the file's path is logged.
pub fn load_admin_token(settings: &Settings) -> anyhow::Result<SecretString> {
    if let Some(token) = &settings.admin.token {
        return Ok(token.clone());
    }
    let path = settings.data_dir().join(ADMIN_TOKEN_FILE);
    let mut generated = false;
    let token = read_or_create_secret(
        &path,
        || {
            generated = true;
            crypto::generate_admin_token().expose_secret().to_owned()
        },
        |_| {},
    )?;
    if generated {
        if std::io::stderr().is_terminal() {
            eprintln!(
                "\n  Herald generated an admin token (stored in {}):\n\n      {token}\n\n  \
                 Sign in to the console (/admin) with it, or send it as `Authorization: Bearer <token>`\n  \
                 on /admin/api. It is not shown again.\n",
                path.display()
            );
        } else {
            info!(
                path = %path.display(),
                "generated an admin token; read it from this file (mode 0600), or set admin.token"
            );
        }
    }
    Ok(SecretString::from(token))
}

/// Creates `dir` and any missing parent, each mode 0700 whatever the umask:
/// the data directory holds the database, the generated secrets and the
/// mirrors of private repositories. An existing directory keeps its mode
/// (the operator's choice).
fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))
}

/// Fails, naming the directory, its owner and this process's user, when
/// this process cannot create files in `dir` (a volume prepared for another
/// uid): the error an operator sees first is then the cause, not a file
/// that happens to be read first.
fn check_writable(dir: &Path) -> anyhow::Result<()> {
    let probe = dir.join(format!(".herald-write-check-{}", std::process::id()));
    match fs::File::create(&probe) {
        Ok(_) => {
            let _ = fs::remove_file(&probe);
            Ok(())
        }
        Err(err) => {
            let owner = fs::metadata(dir).map(|m| m.uid()).ok();
            let user = fs::metadata("/proc/self").map(|m| m.uid()).ok();
            let who = |uid: Option<u32>| uid.map_or_else(|| "?".to_owned(), |uid| uid.to_string());
            Err(anyhow::anyhow!(
                "the data directory {} (owned by uid {}) is not writable by this process (uid {}): {err}",
                dir.display(),
                who(owner),
                who(user),
            ))
        }
    }
}

/// Reads a one-line secret file, or creates it (mode 0600, never replacing an
/// existing file) with `generate()`.
fn read_or_create_secret(
    path: &Path,
    generate: impl FnOnce() -> String,
    on_create: impl FnOnce(&Path),
) -> anyhow::Result<String> {
    match fs::read_to_string(path) {
        Ok(content) => return Ok(content.trim().to_owned()),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(err) => return Err(err).with_context(|| format!("reading {}", path.display())),
    }
    let value = generate();
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    writeln!(file, "{value}").with_context(|| format!("writing {}", path.display()))?;
    file.sync_all()?;
    on_create(path);
    Ok(value)
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = ctrl_c => info!("Ctrl-C received; shutting down"),
        () = terminate => info!("SIGTERM received; shutting down"),
    }
}
