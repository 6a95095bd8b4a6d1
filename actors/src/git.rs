//! Bare mirrors of the watched remotes, one per repository under
//! `{data_dir}/mirrors`. Everything here blocks (git2 is synchronous): it runs
//! on the scan pool, never on the async executor.
//!
//! - Credentials go only through git2's credential callback: never into a
//!   URL, a git config file, a log line or an error message.
//! - The remote head is checked first; the fetch is skipped when it did not
//!   move. Only the watched branch is fetched, incrementally.
//! - A mirror is rebuilt from the remote only once it is verified damaged:
//!   libgit2 reports corrupt objects while reading it, or it is still
//!   unopenable a minute after the first failure; the system's errors never
//!   count. Mirrors are compacted
//!   ([`Mirror::repack`]) and their pack windows bounded
//!   ([`configure_process`]).
//! - Every connection obeys the address rule when it is made (see
//!   [`egress`]): only the registered host, only public addresses (unless
//!   private targets are allowed), no local repository inside Herald's own
//!   data directory.

pub mod blob;
mod egress;
mod indexer_windows;
mod local;
mod pack;
mod socket;
mod tls;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Once;
use std::time::{Duration, Instant};

use git2::{
    AutotagOption, Cred, CredentialType, Direction, ErrorClass, ErrorCode, FetchOptions, Oid,
    ProxyOptions, Remote, RemoteCallbacks, RemoteRedirect, Repository,
};
use secrecy::{ExposeSecret, SecretString};

use self::egress::{Destination, Egress};
use self::indexer_windows::IndexerWindows;
use self::local::Want;
pub use self::socket::{Cut, LowSpeed};
use self::socket::{Gate, Operation};

/// Ref under which a fetched branch is kept in the mirror.
fn mirror_ref(branch: &str) -> String {
    format!("refs/heads/{branch}")
}

/// Ref that keeps a snapshot's commit (and so its blobs) reachable while its
/// events wait for delivery.
pub fn snapshot_ref(snapshot_id: &str) -> String {
    format!("refs/herald/snapshots/{snapshot_id}")
}

/// Ref that keeps the commit of the repository's last recorded snapshot,
/// the old side of the next scan's diff, reachable in a mirror that holds no
/// history.
const BASE_REF: &str = "refs/herald/base";

/// Why a git operation failed, in words safe to show to apps
/// (docs/webhooks.md, sync_failed: `error.type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GitFailure {
    Auth,
    NotFound,
    Timeout,
    Network,
    /// The connection broke the address rule (a non-public address, another
    /// host, a local repository inside the data directory).
    Refused,
    Other,
}

impl GitFailure {
    /// The `error.type` of a `sync_failed` webhook.
    pub fn webhook_type(self) -> &'static str {
        match self {
            GitFailure::Auth => "auth_failure",
            GitFailure::NotFound => "not_found",
            GitFailure::Timeout => "timeout",
            GitFailure::Network | GitFailure::Refused | GitFailure::Other => "git_failure",
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            GitFailure::Auth => "auth",
            GitFailure::NotFound => "not_found",
            GitFailure::Timeout => "timeout",
            GitFailure::Network => "network",
            GitFailure::Refused => "refused",
            GitFailure::Other => "other",
        }
    }
}

/// A classified git error with a message that carries no secret and no raw
/// transport output.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct GitError {
    pub failure: GitFailure,
    pub message: String,
    /// The local mirror, not the remote, is at fault: rebuilding it may help.
    pub damaged_mirror: bool,
}

impl GitError {
    fn new(failure: GitFailure, message: impl Into<String>) -> Self {
        Self {
            failure,
            message: message.into(),
            damaged_mirror: false,
        }
    }

    /// A failure of Herald's own, not of the remote (a worker lost).
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(GitFailure::Other, message)
    }

    /// Classifies a libgit2 error. The message is Herald's own summary, never
    /// libgit2's text, which can quote server responses.
    fn classify(err: &git2::Error, cut: Option<Cut>) -> Self {
        // libgit2's own words stay at debug level: they can quote the server.
        tracing::debug!(code = ?err.code(), class = ?err.class(), detail = err.message(), "git operation failed");
        if let Some(cut) = cut {
            return Self::new(GitFailure::Timeout, cut.message());
        }
        let text = err.message().to_ascii_lowercase();
        if matches!(
            err.class(),
            ErrorClass::Odb
                | ErrorClass::Object
                | ErrorClass::Zlib
                | ErrorClass::Repository
                | ErrorClass::Index
        ) {
            return Self {
                damaged_mirror: true,
                ..Self::new(GitFailure::Other, "the local mirror is damaged")
            };
        }
        match (err.code(), err.class()) {
            (ErrorCode::Auth, _) | (_, ErrorClass::Ssh) => {
                Self::new(GitFailure::Auth, "the git remote refused the credentials")
            }
            // libgit2's words when a redirect would leave the host, or
            // comes where none is followed.
            _ if text.contains("cannot redirect") || text.contains("unexpected redirect") => {
                Self::new(
                    GitFailure::Refused,
                    "the git remote redirected to another address; redirects are not followed",
                )
            }
            // Refused by Herald's TLS stream (`git/tls.rs`): its words.
            (ErrorCode::Certificate, _) => Self::new(
                GitFailure::Network,
                tls::CertificateRefusal::of(err).message(),
            ),
            (ErrorCode::NotFound, _) => Self::new(
                GitFailure::NotFound,
                "the repository or branch was not found",
            ),
            _ if text.contains("401")
                || text.contains("403")
                || text.contains("authentication") =>
            {
                Self::new(GitFailure::Auth, "the git remote refused the credentials")
            }
            _ if text.contains("404")
                || text.contains("not found")
                || text.contains("no such file")
                || text.contains("no such repository")
                || text.contains("failed to resolve path")
                || text.contains("does not appear to be a git repository") =>
            {
                Self::new(GitFailure::NotFound, "the repository was not found")
            }
            _ if text.contains("timed out") || text.contains("timeout") => {
                Self::new(GitFailure::Timeout, "the git remote did not answer in time")
            }
            (_, ErrorClass::Net | ErrorClass::Http | ErrorClass::Os | ErrorClass::Ssl) => {
                Self::new(GitFailure::Network, "the git remote could not be reached")
            }
            _ => Self::new(GitFailure::Other, "the git operation failed"),
        }
    }
}

/// A credential for a private remote: a token, sent as the password of HTTP
/// basic auth. `user:token` sets the user name too; otherwise the user name
/// is `x-access-token`, which GitHub, GitLab and Gitea all accept.
#[derive(Clone)]
pub struct Credentials {
    username: String,
    password: SecretString,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

impl Credentials {
    pub fn from_token(token: &SecretString) -> Self {
        match token.expose_secret().split_once(':') {
            Some((user, password)) if !user.is_empty() => Self {
                username: user.to_owned(),
                password: SecretString::from(password.to_owned()),
            },
            _ => Self {
                username: "x-access-token".to_owned(),
                password: token.clone(),
            },
        }
    }
}

/// Where and how a remote is reached.
#[derive(Debug, Clone)]
pub struct RemoteSpec {
    pub url: String,
    pub credentials: Option<Credentials>,
    /// Bounds the whole operation: connecting, the head check, the
    /// negotiation and the pack, whatever the remote sends meanwhile.
    pub timeout: Duration,
    /// A connection slower than this is cut before the timeout.
    pub low_speed: LowSpeed,
    pub rule: ConnectRule,
}

impl RemoteSpec {
    /// The same remote reached with another credential (or none).
    pub fn with_credentials(&self, credentials: Option<Credentials>) -> Self {
        Self {
            credentials,
            ..self.clone()
        }
    }
}

/// Where git may connect: the same rule as webhooks, applied when each
/// connection is made, to repositories registered under another
/// configuration too.
#[derive(Debug, Clone)]
pub struct ConnectRule {
    /// `security.allow_private_targets`: loopback and private networks too.
    pub allow_private: bool,
    /// `security.allow_http_targets`: `http://` and `git://` remotes too.
    pub allow_http: bool,
    /// `git.allow_local_repos`: `file://` URLs and absolute paths too.
    pub allow_local: bool,
    /// Herald's data directory: a local repository inside it (another app's
    /// mirror, the database) is never read.
    pub data_dir: PathBuf,
}

impl ConnectRule {
    /// Whether the rule admits `url`'s kind of remote, and why not: what
    /// registration checked, checked again before every operation, since a
    /// repository stored under a more permissive configuration stays stored.
    pub fn admits(&self, url: &str) -> Result<(), GitError> {
        let refused = |message: &str| Err(GitError::new(GitFailure::Refused, message));
        match scheme_of(url) {
            "https" => Ok(()),
            "http" | "git" if self.allow_http => Ok(()),
            "http" | "git" => refused(
                "http:// and git:// repositories are disabled by this server's \
                 configuration (security.allow_http_targets)",
            ),
            "file" if self.allow_local => Ok(()),
            "file" => refused(
                "local repositories are disabled by this server's configuration \
                 (git.allow_local_repos)",
            ),
            _ => refused("this kind of git URL is not supported"),
        }
    }
}

/// A remote URL's scheme; an absolute path is a local (`file`) remote.
fn scheme_of(url: &str) -> &str {
    url.split_once("://").map_or("file", |(scheme, _)| scheme)
}

/// How one git operation reaches its remote: https through an [`Egress`]
/// proxy, `http://` and `git://` after a check of their addresses, a local
/// path after a check of where it is.
struct Route {
    egress: Option<Egress>,
    /// Where the operation's sockets may connect.
    gate: Gate,
}

impl Route {
    fn open(spec: &RemoteSpec) -> Result<Self, GitError> {
        spec.rule.admits(&spec.url)?;
        let scheme = scheme_of(&spec.url);
        let destination = Destination::of(&spec.url);
        match (scheme, destination) {
            ("https", Some(destination)) => {
                let egress = Egress::open(destination, spec.rule.allow_private, spec.timeout)
                    .map_err(|_| {
                        GitError::new(GitFailure::Other, "the git connection could not be set up")
                    })?;
                Ok(Self {
                    gate: Gate::Proxy(egress.addr()),
                    egress: Some(egress),
                })
            }
            // libgit2 connects itself (it tunnels only https through a
            // proxy): the addresses are checked before (a clear error early)
            // and again by Herald's socket when it connects, which admits
            // only this host and port. Both schemes are only admitted for
            // development (`allow_http_targets`).
            ("http" | "git", Some(destination)) => {
                destination
                    .resolve(spec.rule.allow_private)
                    .map_err(|refusal| GitError::new(GitFailure::Refused, refusal.message()))?;
                Ok(Self {
                    egress: None,
                    gate: Gate::Remote {
                        destination,
                        allow_private: spec.rule.allow_private,
                    },
                })
            }
            ("file", _) => {
                check_local(&spec.url, &spec.rule.data_dir)?;
                Ok(Self {
                    egress: None,
                    gate: Gate::Open,
                })
            }
            _ => Err(GitError::new(
                GitFailure::Refused,
                "this kind of git URL is not supported",
            )),
        }
    }

    fn proxy_options(&self) -> ProxyOptions<'static> {
        let mut options = ProxyOptions::new();
        if let Some(egress) = &self.egress {
            options.url(&egress.proxy_url());
        }
        options
    }

    /// Starts the operation on this thread: its sockets obey the route's
    /// gate, its deadline and the low-speed rule.
    fn begin(&self, spec: &RemoteSpec) -> Operation {
        Operation::begin(spec.timeout, spec.low_speed, self.gate.clone())
    }

    /// The operation's error, or the reason the proxy or Herald's socket
    /// refused a connection (libgit2 only saw "the proxy answered 403" or a
    /// failed connect).
    fn explain(&self, operation: &Operation, err: GitError) -> GitError {
        match self
            .egress
            .as_ref()
            .and_then(Egress::refusal)
            .or_else(|| operation.refusal())
        {
            Some(refusal) => GitError::new(GitFailure::Refused, refusal.message()),
            None => err,
        }
    }
}

/// Refuses a local repository inside Herald's data directory (symbolic links
/// resolved): the mirrors of other apps' private repositories live there.
fn check_local(url: &str, data_dir: &Path) -> Result<(), GitError> {
    let path = local_path(url);
    let inside = |dir: &Path| match (path.canonicalize(), dir.canonicalize()) {
        (Ok(path), Ok(dir)) => path.starts_with(dir),
        // Not there (yet): judge the path as written.
        _ => path.starts_with(dir),
    };
    if inside(data_dir) {
        return Err(GitError::new(
            GitFailure::Refused,
            "local repositories inside Herald's data directory are not allowed",
        ));
    }
    Ok(())
}

/// The path of a local remote: a `file://` URL's, or the URL itself.
fn local_path(url: &str) -> PathBuf {
    url::Url::parse(url)
        .ok()
        .and_then(|u| u.to_file_path().ok())
        .unwrap_or_else(|| PathBuf::from(url))
}

/// The remote's answer to "where is the branch now?".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteHead {
    pub branch: String,
    pub commit: Oid,
}

/// Sets libgit2's process-wide options for the engine. Call before any git
/// work starts (the engine does).
///
/// - The pack files it maps into memory are bounded: windows of 4 MiB, at
///   most 16 MiB mapped at once (libgit2's defaults are 1 GiB and 8 GiB), so
///   reading a big file from a mirror costs the file, not its pack.
/// - An object read from a mirror is not hashed again to check its id, as
///   git itself does not: fetched packs are verified when they are indexed
///   (copied objects when they are copied, [`pack`]), zlib checks every
///   object it inflates, and each file's SHA-256 is taken at the scan and
///   checked by receivers. Rehashing (SHA-1 with collision detection) was a
///   measurable share of Herald's CPU while delivering (BENCHMARKS.md,
///   "Tunings of the delivery path").
/// - The objects libgit2 keeps parsed (commits and small trees) share 32 MiB
///   across every open repository (libgit2's default is 256 MiB): enough
///   for a scan's trees, not a second heap.
pub fn configure_process() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        git2::opts::strict_hash_verification(false);
        // SAFETY: libgit2 options are process-global; they are set once,
        // when the engine starts, before any of its threads uses git2.
        #[allow(unsafe_code)]
        unsafe {
            let _ = git2::opts::set_mwindow_size(4 << 20);
            let _ = git2::opts::set_mwindow_mapped_limit(16 << 20);
            libgit2_sys::git_libgit2_opts(
                libgit2_sys::GIT_OPT_SET_CACHE_MAX_SIZE as std::ffi::c_int,
                (32 << 20) as libc::ssize_t,
            );
        }
    });
}

/// Why an operation was cut short, if it was: by one of its sockets
/// ([`socket`]) or by the deadline the transfer callback checks.
fn cut_of(operation: &Operation, timed_out: &std::cell::Cell<bool>) -> Option<Cut> {
    operation
        .cut()
        .or_else(|| timed_out.get().then_some(Cut::Deadline))
}

/// How often one operation may be asked for the credential: libgit2 asks
/// again for each HTTP request the server challenges, and keeps asking after
/// a refusal, so a bound turns a refused credential into an auth failure
/// instead of a loop.
const MAX_CREDENTIAL_OFFERS: u32 = 3;

/// Callbacks with the credential and a deadline on transfers. The
/// credential is only ever offered to the registered host: a remote that
/// sends libgit2 elsewhere (a redirect) gets none. A fetch passes the
/// mirror's [`IndexerWindows`], to release the pages its indexer maps.
fn callbacks<'a>(
    spec: &'a RemoteSpec,
    deadline: Instant,
    timed_out: &'a std::cell::Cell<bool>,
    mut indexer_windows: Option<IndexerWindows>,
) -> RemoteCallbacks<'a> {
    let mut callbacks = RemoteCallbacks::new();
    let mut offers = 0;
    let registered = Destination::of(&spec.url);
    callbacks.credentials(move |url, _username, allowed| {
        if Destination::of(url) != registered {
            return Err(git2::Error::new(
                ErrorCode::Auth,
                ErrorClass::Http,
                "credentials are only sent to the registered host",
            ));
        }
        let Some(credentials) = &spec.credentials else {
            return Err(git2::Error::new(
                ErrorCode::Auth,
                ErrorClass::Http,
                "credentials required",
            ));
        };
        if offers >= MAX_CREDENTIAL_OFFERS || !allowed.contains(CredentialType::USER_PASS_PLAINTEXT)
        {
            return Err(git2::Error::new(
                ErrorCode::Auth,
                ErrorClass::Http,
                "credentials refused",
            ));
        }
        offers += 1;
        Cred::userpass_plaintext(&credentials.username, credentials.password.expose_secret())
    });
    callbacks.transfer_progress(move |progress| {
        if let Some(windows) = &mut indexer_windows {
            windows.on_progress(&progress);
        }
        let in_time = Instant::now() < deadline;
        if !in_time {
            timed_out.set(true);
        }
        in_time
    });
    callbacks
}

/// Asks a remote where `branch` (or its default branch) points, with the
/// credential in `spec`, without a mirror: the access check of a
/// registration or a token change.
pub fn probe(spec: &RemoteSpec, branch: Option<&str>) -> Result<RemoteHead, GitError> {
    let repo = unredirected()?;
    let remote = repo
        .remote_anonymous(&spec.url)
        .map_err(|e| GitError::classify(&e, None))?;
    head_of(remote, spec, branch)
}

/// An empty repository, in memory, whose configuration sets
/// `http.followRedirects = false`, for the remotes of head checks: libgit2
/// takes a connection's redirect rule from its remote's repository (git2
/// 0.21 binds no `git_remote_connect_ext` to give it directly), and a remote
/// without one follows the first request's redirects to any host. With it,
/// a head check refuses a redirect to another host, as a fetch does
/// ([`RemoteRedirect::None`]). No other configuration (the user's
/// `~/.gitconfig`, `insteadOf` rewrites) applies to it either.
fn unredirected() -> Result<Repository, GitError> {
    let failed = |err: &dyn std::fmt::Display| {
        tracing::warn!(error = %err, "the git head check could not be set up");
        GitError::new(GitFailure::Other, "the git connection could not be set up")
    };
    let dir = tempfile::tempdir().map_err(|e| failed(&e))?;
    let path = dir.path().join("config");
    std::fs::write(&path, "[http]\n\tfollowRedirects = false\n").map_err(|e| failed(&e))?;
    // A snapshot holds the values in memory: the file can go.
    let config = git2::Config::open(&path)
        .and_then(|mut config| config.snapshot())
        .map_err(|e| failed(&e))?;
    let repo = git2::Odb::new()
        .and_then(Repository::from_odb)
        .map_err(|e| failed(&e))?;
    repo.set_config(&config).map_err(|e| failed(&e))?;
    Ok(repo)
}

fn head_of(
    mut remote: Remote<'_>,
    spec: &RemoteSpec,
    branch: Option<&str>,
) -> Result<RemoteHead, GitError> {
    let route = Route::open(spec)?;
    let operation = route.begin(spec);
    let timed_out = std::cell::Cell::new(false);
    let deadline = Instant::now() + spec.timeout;
    let connection = remote
        .connect_auth(
            Direction::Fetch,
            Some(callbacks(spec, deadline, &timed_out, None)),
            Some(route.proxy_options()),
        )
        .map_err(|e| {
            route.explain(
                &operation,
                GitError::classify(&e, cut_of(&operation, &timed_out)),
            )
        })?;
    let branch = match branch {
        Some(branch) => branch.to_owned(),
        None => {
            let head = connection.default_branch().map_err(|_| {
                GitError::new(GitFailure::NotFound, "the remote has no default branch")
            })?;
            let head = head.as_str().unwrap_or_default();
            head.strip_prefix("refs/heads/").unwrap_or(head).to_owned()
        }
    };
    let wanted = mirror_ref(&branch);
    let heads = connection.list().map_err(|e| {
        route.explain(
            &operation,
            GitError::classify(&e, cut_of(&operation, &timed_out)),
        )
    })?;
    let commit = heads
        .iter()
        .find(|h| h.name() == wanted)
        .map(|h| h.oid())
        .ok_or_else(|| {
            GitError::new(
                GitFailure::NotFound,
                format!("branch `{branch}` was not found on the remote"),
            )
        })?;
    Ok(RemoteHead { branch, commit })
}

/// A mirror's write lock in this process, held by its [`Mirror`] for the
/// mirror's life: one writer at a time per mirror (a scan's fetch and
/// compaction, a lane's refetch). Other instances have mirrors of their
/// own. A fetch's [`IndexerWindows`] counts on it.
type WriteLock = parking_lot::ArcMutexGuard<parking_lot::RawMutex, ()>;

/// Waits for the write lock of the mirror at `path`. Locks are kept by the
/// directory's canonical place, so two spellings of one path share a lock.
fn lock_for_writing(path: &Path) -> WriteLock {
    type Locks = std::collections::HashMap<PathBuf, std::sync::Weak<parking_lot::Mutex<()>>>;
    static LOCKS: std::sync::LazyLock<parking_lot::Mutex<Locks>> =
        std::sync::LazyLock::new(Default::default);
    let key = canonical_place(path);
    let lock = {
        let mut locks = LOCKS.lock();
        match locks.get(&key).and_then(std::sync::Weak::upgrade) {
            Some(lock) => lock,
            None => {
                locks.retain(|_, lock| lock.strong_count() > 0);
                let lock = std::sync::Arc::new(parking_lot::Mutex::new(()));
                locks.insert(key, std::sync::Arc::downgrade(&lock));
                lock
            }
        }
    };
    lock.lock_arc()
}

/// `path` with its parent directory made canonical (the mirror itself may
/// not exist yet).
fn canonical_place(path: &Path) -> PathBuf {
    let parent = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    match (std::fs::canonicalize(parent), path.file_name()) {
        (Ok(parent), Some(name)) => parent.join(name),
        _ => path.to_owned(),
    }
}

/// How long a mirror must stay unopenable before it counts as damaged and
/// is rebuilt.
pub const VERIFY_DAMAGE_AFTER: Duration = Duration::from_secs(60);

/// The file that records when a mirror first failed to open.
fn suspect_marker(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".suspect");
    PathBuf::from(name)
}

/// Whether a failure to open a mirror is the system's (it will pass) rather
/// than the mirror's.
fn is_transient(err: &git2::Error) -> bool {
    let text = err.message().to_ascii_lowercase();
    err.class() == ErrorClass::NoMemory
        || [
            "too many open files",
            "permission denied",
            "resource temporarily unavailable",
            "out of memory",
        ]
        .iter()
        .any(|needle| text.contains(needle))
}

/// How much of a commit's past a fetch brings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Depth {
    /// The commit and its tree: all change detection needs.
    Tip,
    /// Its whole history: for a commit that a server serves only within
    /// its branch's history. A local fetch reaches any commit by its id, and
    /// needs no history.
    History,
}

/// A mirror's size on disk and its number of pack files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MirrorStats {
    pub bytes: u64,
    pub packs: usize,
}

/// A bare mirror of one remote, opened to be written: it holds the
/// mirror's write lock until it is dropped. Lanes read mirrors through
/// repositories of their own, without the lock.
pub struct Mirror {
    repo: Repository,
    path: PathBuf,
    /// Declared after `repo`, so the repository is closed first.
    _writing: WriteLock,
}

impl std::fmt::Debug for Mirror {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mirror").field("path", &self.path).finish()
    }
}

impl Mirror {
    /// Opens the mirror at `path`, creating it when missing. A mirror that
    /// cannot be opened is rebuilt (empty, to be fetched again) only once it
    /// is verified damaged: the failure is not the system's (too many open
    /// files, no permission, no memory: those never count), and the mirror
    /// still cannot be opened [`VERIFY_DAMAGE_AFTER`] after the first failure
    /// (recorded in a `{mirror}.suspect` file beside it, removed once it
    /// opens again). Until then the operation fails and is tried again later:
    /// the mirror may hold the only local copy of content pending events send.
    ///
    /// Waits first for the mirror's write lock, which the mirror then holds:
    /// do not open a mirror twice in one thread.
    pub fn open(path: &Path) -> Result<Self, GitError> {
        Self::open_writing(path, lock_for_writing(path))
    }

    fn open_writing(path: &Path, writing: WriteLock) -> Result<Self, GitError> {
        let healthy = |opened: Result<Repository, git2::Error>| {
            let repo = opened?;
            let odb = repo.odb().map(|_| ());
            odb.map(|()| repo)
        };
        let suspect = suspect_marker(path);
        let unreadable =
            || GitError::new(GitFailure::Other, "the local mirror cannot be opened now");
        let repo = match healthy(Repository::open_bare(path)) {
            Ok(repo) => {
                let _ = std::fs::remove_file(&suspect);
                repo
            }
            Err(_) if !path.exists() => Repository::init_bare(path).map_err(|_| {
                GitError::new(GitFailure::Other, "the local mirror could not be created")
            })?,
            Err(err) if is_transient(&err) => {
                tracing::warn!(path = %path.display(), class = ?err.class(), "mirror cannot be opened now; leaving it as it is");
                return Err(unreadable());
            }
            Err(err) => {
                let now = crate::clock::now_ms();
                let since = std::fs::read_to_string(&suspect)
                    .ok()
                    .and_then(|text| text.trim().parse::<i64>().ok());
                let Some(since) = since else {
                    tracing::warn!(path = %path.display(), class = ?err.class(), "mirror cannot be opened; rebuilt if it stays so");
                    let _ = std::fs::write(&suspect, now.to_string());
                    return Err(unreadable());
                };
                if now - since < crate::clock::millis(VERIFY_DAMAGE_AFTER) {
                    return Err(unreadable());
                }
                tracing::warn!(path = %path.display(), "mirror damaged; rebuilding it from the remote");
                std::fs::remove_dir_all(path).map_err(|_| {
                    GitError::new(GitFailure::Other, "the local mirror could not be removed")
                })?;
                let _ = std::fs::remove_file(&suspect);
                Repository::init_bare(path).map_err(|_| {
                    GitError::new(GitFailure::Other, "the local mirror could not be created")
                })?
            }
        };
        Ok(Self {
            repo,
            path: path.to_owned(),
            _writing: writing,
        })
    }

    /// Deletes the mirror and starts an empty one (after corruption), under
    /// the same write lock.
    pub fn rebuild(self) -> Result<Self, GitError> {
        let Self {
            repo,
            path,
            _writing: writing,
        } = self;
        drop(repo);
        std::fs::remove_dir_all(&path).map_err(|_| {
            GitError::new(GitFailure::Other, "the local mirror could not be removed")
        })?;
        Self::open_writing(&path, writing)
    }

    pub fn repo(&self) -> &Repository {
        &self.repo
    }

    /// The commit the mirror holds for `branch`, if any.
    pub fn local_head(&self, branch: &str) -> Option<Oid> {
        self.repo.refname_to_id(&mirror_ref(branch)).ok()
    }

    /// Fetches the tip of `branch` into the mirror, without its history
    /// (only what the mirror lacks of it), and returns the commit it now
    /// points to.
    pub fn fetch(&self, spec: &RemoteSpec, branch: &str) -> Result<Oid, GitError> {
        let branch_ref = mirror_ref(branch);
        self.fetch_one(spec, Want::Ref(&branch_ref), &branch_ref, Depth::Tip)?;
        self.local_head(branch).ok_or_else(|| {
            GitError::new(
                GitFailure::NotFound,
                format!("branch `{branch}` was not found on the remote"),
            )
        })
    }

    /// Fetches one commit, a ref's or by its id, at depth 1 into ref `into`,
    /// under the address rule and the timeout. Change detection compares
    /// trees, never ancestry, so a mirror holds each commit it needs with
    /// its tree and nothing behind it: git's `shallow` file names the
    /// commits whose parents it lacks.
    fn fetch_one(
        &self,
        spec: &RemoteSpec,
        want: Want<'_>,
        into: &str,
        depth: Depth,
    ) -> Result<(), GitError> {
        let route = Route::open(spec)?;
        if scheme_of(&spec.url) == "file" {
            return self.fetch_local(&spec.url, want, into);
        }
        let operation = route.begin(spec);
        let timed_out = std::cell::Cell::new(false);
        let deadline = Instant::now() + spec.timeout;
        let mut remote = self
            .repo
            .remote_anonymous(&spec.url)
            .map_err(|e| GitError::classify(&e, None))?;
        let mut options = FetchOptions::new();
        options
            .remote_callbacks(callbacks(
                spec,
                deadline,
                &timed_out,
                Some(IndexerWindows::new(self.repo.path())),
            ))
            .proxy_options(route.proxy_options())
            .follow_redirects(RemoteRedirect::None)
            .download_tags(AutotagOption::None)
            .update_fetchhead(false)
            .depth(match depth {
                Depth::Tip => 1,
                // libgit2's GIT_FETCH_DEPTH_UNSHALLOW.
                Depth::History => i32::MAX,
            });
        let refspec = match want {
            Want::Ref(name) => format!("+{name}:{into}"),
            Want::Commit(oid) => format!("+{oid}:{into}"),
        };
        remote
            .fetch(&[refspec], Some(&mut options), None)
            .map_err(|e| {
                route.explain(
                    &operation,
                    GitError::classify(&e, cut_of(&operation, &timed_out)),
                )
            })
    }

    /// [`Self::fetch_one`] from a repository on this machine, which Herald
    /// reads itself ([`local`]).
    fn fetch_local(&self, url: &str, want: Want<'_>, into: &str) -> Result<(), GitError> {
        let source = local_path(url);
        if !source.exists() {
            return Err(GitError::new(
                GitFailure::NotFound,
                "the repository was not found",
            ));
        }
        let fetched = local::fetch(&self.repo, &source, want).map_err(|err| {
            tracing::debug!(code = ?err.code(), class = ?err.class(), detail = err.message(), "local fetch failed");
            match err.class() {
                ErrorClass::Repository | ErrorClass::Os if err.code() == ErrorCode::NotFound => {
                    GitError::new(GitFailure::NotFound, "the repository was not found")
                }
                _ => GitError::new(GitFailure::Other, "the local repository could not be read"),
            }
        })?;
        let Some(commit) = fetched else {
            return Err(GitError::new(
                GitFailure::NotFound,
                "the branch or commit was not found on the remote",
            ));
        };
        self.repo
            .reference(into, commit, true, "herald: fetched")
            .map_err(|_| {
                GitError::new(GitFailure::Other, "the local mirror could not be updated")
            })?;
        let mut roots = self.shallow_roots();
        if !roots.contains(&commit) && self.has_parents(commit) {
            roots.push(commit);
            self.set_shallow_roots(&roots)?;
        }
        Ok(())
    }

    /// Whether `commit` names parents, read from the object itself: libgit2
    /// shows a commit of the `shallow` file without any.
    fn has_parents(&self, commit: Oid) -> bool {
        let Ok(odb) = self.repo.odb() else {
            return false;
        };
        let Ok(object) = odb.read(commit) else {
            return false;
        };
        object
            .data()
            .split(|byte| *byte == b'\n')
            .take_while(|line| !line.is_empty())
            .any(|line| line.starts_with(b"parent "))
    }

    /// The commits whose parents the mirror does not hold (git's `shallow`
    /// file, which libgit2 keeps for the fetches it makes at depth 1).
    fn shallow_roots(&self) -> Vec<Oid> {
        std::fs::read_to_string(self.repo.path().join("shallow"))
            .unwrap_or_default()
            .lines()
            .filter_map(|line| Oid::from_str(line.trim()).ok())
            .collect()
    }

    /// Replaces the mirror's `shallow` file (written aside, then renamed).
    fn set_shallow_roots(&self, roots: &[Oid]) -> Result<(), GitError> {
        let failed = |_| GitError::new(GitFailure::Other, "the local mirror could not be updated");
        let path = self.repo.path().join("shallow");
        if roots.is_empty() {
            return match std::fs::remove_file(&path) {
                Err(err) if err.kind() != std::io::ErrorKind::NotFound => Err(failed(err)),
                _ => Ok(()),
            };
        }
        let text: String = roots.iter().map(|oid| format!("{oid}\n")).collect();
        let aside = self.repo.path().join("shallow.herald");
        std::fs::write(&aside, text).map_err(failed)?;
        std::fs::rename(&aside, &path).map_err(failed)
    }

    /// Brings `commit` back into the mirror and pins it under `snapshot_id`
    /// (an instance that did not make the snapshot, or a mirror that lost
    /// it): fetched with its branch, or, when the branch moved on without
    /// it, by its id. `Ok(false)`: the remote no longer has it (its history
    /// was rewritten); `Err`: the remote could not be asked.
    pub fn refetch_commit(
        &self,
        spec: &RemoteSpec,
        branch: Option<&str>,
        commit: &str,
        snapshot_id: Option<&str>,
    ) -> Result<bool, GitError> {
        let Ok(oid) = Oid::from_str(commit) else {
            return Ok(false);
        };
        let pin = |mirror: &Self| match snapshot_id {
            Some(snapshot) => mirror.pin(snapshot, oid).map(|()| true),
            None => Ok(true),
        };
        if self.has_commit(commit) {
            return pin(self);
        }
        // By its id first: GitHub, GitLab and every server that lets a
        // client ask for a commit its refs reach serve it alone.
        let by_id = snapshot_ref(snapshot_id.unwrap_or(commit));
        match self.fetch_one(spec, Want::Commit(oid), &by_id, Depth::Tip) {
            Ok(()) if self.has_commit(commit) => return pin(self),
            Ok(()) => {}
            Err(err) if matches!(err.failure, GitFailure::Network | GitFailure::Timeout) => {
                return Err(err);
            }
            Err(err) => {
                tracing::debug!(commit, error = %err.message, "the remote does not serve the commit by its id");
            }
        }
        // A server that serves only what its refs point to: the commit may
        // be in the branch's history, which the next compaction drops again.
        let Some(branch) = branch else {
            return Ok(false);
        };
        let branch_ref = mirror_ref(branch);
        match self.fetch_one(spec, Want::Ref(&branch_ref), &branch_ref, Depth::History) {
            Ok(()) => Ok(self.has_commit(commit) && pin(self)?),
            Err(err) if matches!(err.failure, GitFailure::Network | GitFailure::Timeout) => {
                Err(err)
            }
            // The remote answered and would not give it: it is gone.
            Err(err) => {
                tracing::debug!(commit, error = %err.message, "the remote does not serve the branch's history");
                Ok(false)
            }
        }
    }

    /// Keeps `commit` reachable under the snapshot's ref.
    pub fn pin(&self, snapshot_id: &str, commit: Oid) -> Result<(), GitError> {
        self.repo
            .reference(
                &snapshot_ref(snapshot_id),
                commit,
                true,
                "herald: snapshot with pending events",
            )
            .map(|_| ())
            .map_err(|_| GitError::new(GitFailure::Other, "the local mirror could not be updated"))
    }

    /// Releases a snapshot's ref once its events are delivered.
    pub fn unpin(&self, snapshot_id: &str) {
        if let Ok(mut reference) = self.repo.find_reference(&snapshot_ref(snapshot_id)) {
            let _ = reference.delete();
        }
    }

    /// The mirror's size on disk and its number of pack files.
    pub fn stats(&self) -> MirrorStats {
        fn walk(dir: &Path, stats: &mut MirrorStats) {
            let Ok(entries) = std::fs::read_dir(dir) else {
                return;
            };
            for entry in entries.flatten() {
                let Ok(kind) = entry.file_type() else {
                    continue;
                };
                if kind.is_dir() {
                    walk(&entry.path(), stats);
                } else if let Ok(meta) = entry.metadata() {
                    stats.bytes += meta.len();
                }
            }
        }
        let mut stats = MirrorStats {
            bytes: 0,
            packs: self.packs().len(),
        };
        walk(&self.path, &mut stats);
        stats
    }

    /// The pack files (`objects/pack/pack-*.pack`), by name.
    fn packs(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(self.path.join("objects").join("pack")) else {
            return Vec::new();
        };
        let mut packs: Vec<String> = entries
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter_map(|name| name.strip_suffix(".pack").map(str::to_owned))
            .filter(|name| name.starts_with("pack-"))
            .collect();
        packs.sort();
        packs
    }

    /// Compacts the mirror into one pack holding what its refs need: the
    /// commit of each ref (the watched branch, the last recorded snapshot,
    /// the pinned snapshots) with its tree, and nothing of their history.
    /// The other packs and the loose objects go, and with them every object
    /// no ref needs any more (settled snapshots' content, the history of a
    /// mirror made before mirrors were shallow). libgit2 never repacks, so a
    /// mirror would otherwise gain a pack with every fetch.
    ///
    /// The objects are copied whole ([`pack`]): the cost is the bytes of the
    /// kept trees once, never a delta search, let alone over history. The
    /// caller holds the mirror's lock: nothing else writes it meanwhile.
    /// Readers that still hold an old pack open keep reading it until they
    /// reopen.
    pub fn repack(&self) -> Result<MirrorStats, GitError> {
        let failed = |err: git2::Error| {
            tracing::debug!(detail = err.message(), "repack failed");
            GitError::new(GitFailure::Other, "the local mirror could not be repacked")
        };
        let before = self.packs();
        let mut commits = Vec::new();
        for reference in self.repo.references().map_err(failed)?.flatten() {
            if let Ok(commit) = reference.peel_to_commit()
                && !commits.contains(&commit.id())
            {
                commits.push(commit.id());
            }
        }
        if commits.is_empty() {
            return Ok(self.stats());
        }
        let odb = self.repo.odb().map_err(failed)?;
        let mut writer = pack::PackWriter::start(self.repo.path()).map_err(failed)?;
        for commit in &commits {
            writer.copy(&self.repo, &odb, *commit).map_err(failed)?;
        }
        let mut seen = HashSet::new();
        let everything = |_| true;
        for commit in &commits {
            let tree = self.repo.find_commit(*commit).map_err(failed)?.tree_id();
            pack::tree_objects(&self.repo, tree, &everything, &mut seen, &mut |oid| {
                writer.copy(&self.repo, &odb, oid)
            })
            .map_err(failed)?;
        }
        drop(seen);
        let written = writer
            .finish()
            .map_err(failed)?
            .ok_or_else(|| GitError::new(GitFailure::Other, "the new pack was not written"))?;
        odb.refresh().map_err(failed)?;
        if !self.packs().contains(&written) {
            return Err(GitError::new(
                GitFailure::Other,
                "the new pack was not written",
            ));
        }
        // Every kept commit with parents now stands without them.
        let roots: Vec<Oid> = commits
            .iter()
            .copied()
            .filter(|oid| self.has_parents(*oid))
            .collect();
        self.set_shallow_roots(&roots)?;
        let dir = self.path.join("objects").join("pack");
        for old in before.iter().filter(|name| **name != written) {
            if dir.join(format!("{old}.keep")).exists() {
                continue;
            }
            for extension in ["pack", "idx", "rev", "bitmap", "mtimes"] {
                let _ = std::fs::remove_file(dir.join(format!("{old}.{extension}")));
            }
        }
        // Loose objects live in objects/xx/; every one still needed is in the
        // new pack now.
        if let Ok(entries) = std::fs::read_dir(self.path.join("objects")) {
            for entry in entries.flatten() {
                let name = entry.file_name();
                let name = name.to_string_lossy();
                if name.len() == 2 && name.chars().all(|c| c.is_ascii_hexdigit()) {
                    let _ = std::fs::remove_dir_all(entry.path());
                }
            }
        }
        Ok(self.stats())
    }

    /// Whether the mirror still holds history behind a commit one of its
    /// refs names (it was made before mirrors were shallow, or a refetch
    /// went through a branch's history): the next compaction drops it.
    pub fn holds_history(&self) -> bool {
        let roots = self.shallow_roots();
        let Ok(references) = self.repo.references() else {
            return false;
        };
        references
            .flatten()
            .filter_map(|reference| reference.peel_to_commit().ok())
            .any(|commit| !roots.contains(&commit.id()) && self.has_parents(commit.id()))
    }

    /// Keeps `commit`, the repository's last recorded snapshot, reachable:
    /// the old side of the next diff, whatever the branch does meanwhile.
    pub fn keep_base(&self, commit: Oid) -> Result<(), GitError> {
        self.repo
            .reference(BASE_REF, commit, true, "herald: last recorded snapshot")
            .map(|_| ())
            .map_err(|_| GitError::new(GitFailure::Other, "the local mirror could not be updated"))
    }

    /// Whether the mirror still has `commit` (a force-push may have removed it
    /// from the remote, but never from the mirror while it is pinned).
    pub fn has_commit(&self, commit: &str) -> bool {
        Oid::from_str(commit)
            .ok()
            .is_some_and(|oid| self.repo.find_commit(oid).is_ok())
    }
}

/// Real repositories for the engine's tests, made with the `git` command.
#[cfg(test)]
pub(crate) mod fixtures {
    use std::path::{Path, PathBuf};

    pub(crate) fn git(dir: &Path, args: &[&str]) -> String {
        let out = std::process::Command::new("git")
            .args(args)
            .current_dir(dir)
            .env("GIT_AUTHOR_NAME", "Herald Tests")
            .env("GIT_AUTHOR_EMAIL", "tests@herald.invalid")
            .env("GIT_COMMITTER_NAME", "Herald Tests")
            .env("GIT_COMMITTER_EMAIL", "tests@herald.invalid")
            .output()
            .expect("git runs");
        assert!(
            out.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    pub(crate) fn commit(dir: &Path, file: &str, content: &str) -> String {
        std::fs::write(dir.join(file), content).expect("write");
        git(dir, &["add", "-A"]);
        git(dir, &["commit", "-q", "--no-gpg-sign", "-m", content]);
        git(dir, &["rev-parse", "HEAD"])
    }

    /// A temporary directory with an empty repository, `source`, on `main`.
    pub(crate) fn source_repository() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().expect("temp dir");
        let source = dir.path().join("source");
        std::fs::create_dir(&source).expect("dir");
        git(&source, &["init", "-q", "-b", "main"]);
        (dir, source)
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::fixtures::{commit, git, source_repository};

    use super::*;

    fn spec(url: String, allow_private: bool) -> RemoteSpec {
        RemoteSpec {
            url,
            credentials: None,
            timeout: Duration::from_secs(5),
            low_speed: LowSpeed::default(),
            rule: ConnectRule {
                allow_private,
                allow_http: true,
                allow_local: true,
                data_dir: std::env::temp_dir().join("herald-git-tests-data"),
            },
        }
    }

    #[test]
    fn https_goes_through_the_egress_which_refuses_loopback() {
        // Were libgit2 to connect by itself, this would be "could not be
        // reached" (nothing listens on port 1), not a refusal by the rule.
        let err = probe(&spec("https://localhost:1/o/r.git".to_owned(), false), None)
            .expect_err("loopback is not public");
        assert_eq!(err.failure, GitFailure::Refused);
        assert!(err.message.contains("non-public"), "{}", err.message);
    }

    #[test]
    fn https_is_tunnelled_to_the_registered_host() {
        let origin = std::net::TcpListener::bind("127.0.0.1:0").expect("a port");
        let port = origin.local_addr().expect("bound").port();
        let server = std::thread::spawn(move || {
            let (mut conn, _) = origin.accept().expect("the tunnelled connection");
            let mut first = [0u8; 1];
            conn.read_exact(&mut first).expect("a first byte");
            first[0]
        });
        let err = probe(
            &spec(format!("https://127.0.0.1:{port}/o/r.git"), true),
            None,
        )
        .expect_err("the origin speaks no TLS");
        assert_ne!(err.failure, GitFailure::Refused, "{}", err.message);
        assert_eq!(
            server.join().expect("the origin ran"),
            0x16,
            "a TLS handshake arrived"
        );
    }

    #[test]
    fn local_repositories_inside_the_data_directory_are_refused() {
        let data = tempfile::tempdir().expect("a data dir");
        let mirror = data.path().join("mirrors").join("repo_x.git");
        std::fs::create_dir_all(&mirror).expect("a mirror dir");
        let mut inside = spec(format!("file://{}", mirror.display()), true);
        inside.rule.data_dir = data.path().to_owned();
        let err = probe(&inside, None).expect_err("inside the data dir");
        assert_eq!(err.failure, GitFailure::Refused);
        // Through a symbolic link from outside: the same directory.
        let outside = tempfile::tempdir().expect("another dir");
        let link = outside.path().join("innocent.git");
        std::os::unix::fs::symlink(&mirror, &link).expect("a link");
        let mut linked = spec(format!("file://{}", link.display()), true);
        linked.rule.data_dir = data.path().to_owned();
        let err = probe(&linked, None).expect_err("still inside");
        assert_eq!(err.failure, GitFailure::Refused);
    }

    #[test]
    fn repacking_leaves_one_pack_with_what_refs_reach_and_drops_the_rest() {
        let (dir, source) = source_repository();
        let remote = spec(format!("file://{}", source.display()), true);
        let mirror = Mirror::open(&dir.path().join("mirror.git")).expect("mirror");
        let mut history = Vec::new();
        for i in 1..=4 {
            history.push(commit(&source, "x.md", &format!("version {i}\n")));
            mirror.fetch(&remote, "main").expect("fetched");
        }
        mirror
            .pin("kept", Oid::from_str(&history[1]).expect("oid"))
            .expect("pinned");
        mirror
            .pin("settled", Oid::from_str(&history[2]).expect("oid"))
            .expect("pinned");
        // The branch is rewritten: the old tip is reachable only through
        // the pins, and one of them is released.
        git(&source, &["checkout", "-q", "--orphan", "new"]);
        git(&source, &["rm", "-q", "-rf", "."]);
        let rewritten = commit(&source, "y.md", "rewritten\n");
        git(&source, &["branch", "-q", "-M", "main"]);
        mirror.fetch(&remote, "main").expect("fetched");
        mirror.unpin("settled");
        let before = mirror.stats();
        assert!(before.packs >= 2, "fetches added packs: {before:?}");

        let after = mirror.repack().expect("repacked");
        assert_eq!(after.packs, 1, "{after:?}");
        pack::tests::git_verifies_packs(&mirror.path);
        assert!(after.bytes > 0);
        drop(mirror);
        let reopened = Mirror::open(&dir.path().join("mirror.git")).expect("mirror");
        assert!(reopened.has_commit(&rewritten), "the branch's tip");
        assert!(reopened.has_commit(&history[1]), "a pinned snapshot");
        assert!(!reopened.has_commit(&history[0]), "not its history");
        assert!(
            !reopened.has_commit(&history[2]),
            "a released snapshot is pruned"
        );
        assert!(!reopened.has_commit(&history[3]), "so is the old tip");
        // Repacking again changes nothing.
        assert_eq!(reopened.repack().expect("repacked").packs, 1);
        assert!(reopened.has_commit(&history[1]));
    }

    #[test]
    fn a_mirror_open_for_writing_keeps_other_writers_out_until_it_closes() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("mirror.git");
        let mirror = Mirror::open(&path).expect("mirror");
        // Another spelling of the same place, through a symbolic link, shares
        // the lock. (A `.` component would not do: paths compare equal
        // without it.)
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(dir.path(), &link).expect("a link");
        let other_spelling = link.join("mirror.git");
        let (opened, waiting) = std::sync::mpsc::channel();
        let writer = std::thread::spawn(move || {
            let second = Mirror::open(&other_spelling).expect("mirror");
            opened.send(()).expect("told");
            drop(second);
        });
        assert_eq!(
            waiting.recv_timeout(Duration::from_millis(300)),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout),
            "a second writer got in while the first had the mirror open"
        );
        drop(mirror);
        waiting
            .recv_timeout(Duration::from_secs(30))
            .expect("the second writer goes on once the first closes");
        writer.join().expect("the writer ends");
    }

    /// `git daemon` serving the directories under `root` on loopback, for
    /// as long as it lives.
    struct Daemon {
        child: std::process::Child,
        port: u16,
    }

    impl Daemon {
        fn serve(root: &Path) -> Self {
            for _ in 0..5 {
                let port = std::net::TcpListener::bind("127.0.0.1:0")
                    .and_then(|l| l.local_addr())
                    .expect("a free port")
                    .port();
                // git-daemon itself: `git daemon` would leave it running
                // when killed.
                let mut child = std::process::Command::new(
                    Path::new(&git(root, &["--exec-path"])).join("git-daemon"),
                )
                .arg("--reuseaddr")
                .arg("--export-all")
                .arg(format!("--base-path={}", root.display()))
                .arg("--listen=127.0.0.1")
                .arg(format!("--port={port}"))
                .arg(root)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("git daemon starts");
                let deadline = Instant::now() + Duration::from_secs(5);
                while Instant::now() < deadline {
                    if child.try_wait().expect("its status").is_some() {
                        break;
                    }
                    if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                        return Self { child, port };
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                let _ = child.kill();
                let _ = child.wait();
            }
            panic!("git daemon did not start");
        }

        fn url(&self, name: &str) -> String {
            format!("git://127.0.0.1:{}/{name}", self.port)
        }
    }

    impl Drop for Daemon {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    /// Ids of every object in the mirror's object database.
    fn objects(repo: &Repository) -> HashSet<Oid> {
        let mut all = HashSet::new();
        repo.odb()
            .expect("odb")
            .foreach(|oid| {
                all.insert(*oid);
                true
            })
            .expect("listed");
        all
    }

    #[test]
    fn a_fetch_over_git_is_shallow_and_releases_its_indexers_pages() {
        let (dir, source) = source_repository();
        commit(&source, "old.md", "history the mirror never needs\n");
        // Big text files that differ a little: the pack stores them as
        // deltas of each other, which the indexer resolves.
        let line = |i: usize| format!("line {i}: the quick brown fox jumps over the lazy dog\n");
        let text: String = (0..20_000).map(line).collect();
        for copy in 0..12 {
            let content = format!("{text}copy {copy}\n");
            std::fs::write(source.join(format!("big-{copy}.txt")), content).expect("write");
        }
        let tip = commit(&source, "old.md", "the tip\n");
        let parent = git(&source, &["rev-parse", "HEAD~1"]);
        let daemon = Daemon::serve(dir.path());
        let remote = spec(daemon.url("source"), true);
        let mirror = Mirror::open(&dir.path().join("mirror.git")).expect("mirror");
        let before = indexer_windows::released_on_this_thread();

        let head = mirror.fetch(&remote, "main").expect("fetched");

        assert_eq!(head.to_string(), tip);
        assert!(
            indexer_windows::released_on_this_thread() > before,
            "the indexer's pages were released while it resolved deltas"
        );
        let tip_commit = mirror.repo.find_commit(head).expect("the head");
        for copy in 0..12 {
            let entry = tip_commit
                .tree()
                .expect("tree")
                .get_name(&format!("big-{copy}.txt"))
                .expect("the file")
                .id();
            let blob = mirror.repo.find_blob(entry).expect("blob");
            assert_eq!(blob.content(), format!("{text}copy {copy}\n").as_bytes());
        }
        assert!(
            !mirror.has_commit(&parent),
            "the history stays on the remote"
        );
        assert!(mirror.repo.is_shallow());
        assert!(!mirror.holds_history());
        // Compaction keeps the tip standing without its parents, and the
        // next fetch builds on it.
        mirror.repack().expect("compacted");
        assert_eq!(mirror.shallow_roots(), vec![head]);
        let next = commit(&source, "old.md", "next\n");
        let fetched = mirror.fetch(&remote, "main").expect("fetched again");
        assert_eq!(fetched.to_string(), next);
        assert!(!mirror.holds_history());
    }

    #[test]
    fn a_shallow_mirror_gets_back_an_older_commit_from_a_git_server() {
        let (dir, source) = source_repository();
        let old = commit(&source, "a.md", "old\n");
        commit(&source, "a.md", "middle\n");
        let tip = commit(&source, "a.md", "tip\n");
        let daemon = Daemon::serve(dir.path());
        let remote = spec(daemon.url("source"), true);
        let mirror = Mirror::open(&dir.path().join("mirror.git")).expect("mirror");
        mirror.fetch(&remote, "main").expect("fetched");
        assert!(!mirror.has_commit(&old));

        // git's own server serves only what its refs point to by default:
        // without the branch there is no way to the commit.
        assert!(
            !mirror
                .refetch_commit(&remote, None, &old, Some("pinned"))
                .expect("asked")
        );
        // Through the branch's history.
        assert!(
            mirror
                .refetch_commit(&remote, Some("main"), &old, Some("pinned"))
                .expect("asked")
        );
        assert!(mirror.has_commit(&old));
        assert!(mirror.holds_history());
        mirror.repack().expect("compacted");
        assert!(!mirror.holds_history());
        assert!(mirror.has_commit(&old), "pinned");
        assert!(mirror.has_commit(&tip), "the branch");
        let blob = mirror
            .repo
            .find_commit(Oid::from_str(&old).expect("oid"))
            .and_then(|c| c.tree())
            .and_then(|t| {
                t.get_name("a.md")
                    .map(|e| e.id())
                    .ok_or_else(|| git2::Error::from_str("no a.md"))
            })
            .and_then(|id| mirror.repo.find_blob(id))
            .expect("the old content");
        assert_eq!(blob.content(), b"old\n");

        // A server that serves reachable commits by id: the commit alone.
        git(
            &source,
            &["config", "uploadpack.allowReachableSHA1InWant", "true"],
        );
        let other = Mirror::open(&dir.path().join("other.git")).expect("mirror");
        other.fetch(&remote, "main").expect("fetched");
        assert!(
            other
                .refetch_commit(&remote, Some("main"), &old, Some("pinned"))
                .expect("asked")
        );
        assert!(other.has_commit(&old));
        assert!(!other.holds_history());
    }

    #[test]
    fn a_local_fetch_copies_the_tip_and_only_what_the_mirror_lacks() {
        let (dir, source) = source_repository();
        let first = commit(&source, "a.md", "a\n");
        std::fs::create_dir(source.join("docs")).expect("dir");
        std::fs::write(source.join("docs/b.md"), "b\n").expect("write");
        let second = commit(&source, "c.md", "c\n");
        let remote = spec(format!("file://{}", source.display()), true);
        let mirror = Mirror::open(&dir.path().join("mirror.git")).expect("mirror");

        assert_eq!(
            mirror.fetch(&remote, "main").expect("fetched").to_string(),
            second
        );
        assert!(!mirror.has_commit(&first), "the history stays behind");
        assert!(mirror.repo.is_shallow());
        assert!(!mirror.holds_history());
        // The commit, the root tree, docs/, and three files.
        let copied = objects(&mirror.repo);
        assert_eq!(copied.len(), 6, "{copied:?}");

        // The next commit changes one file: the commit, the root tree and
        // that file are all that is copied.
        let third = commit(&source, "a.md", "a, changed\n");
        assert_eq!(
            mirror.fetch(&remote, "main").expect("fetched").to_string(),
            third
        );
        let now = objects(&mirror.repo);
        assert_eq!(now.difference(&copied).count(), 3);
        assert!(mirror.has_commit(&second), "the old tip is still there");
        assert_eq!(mirror.shallow_roots().len(), 2);
        // Fetching the same commit again copies nothing.
        mirror.fetch(&remote, "main").expect("fetched");
        assert_eq!(objects(&mirror.repo), now);
        pack::tests::git_verifies_packs(&mirror.path);
        // A commit by its id, and one the remote does not have.
        assert!(
            mirror
                .refetch_commit(&remote, None, &first, Some("snap"))
                .expect("asked")
        );
        assert!(mirror.has_commit(&first));
        assert!(
            !mirror
                .refetch_commit(&remote, None, &"1".repeat(40), Some("gone"))
                .expect("asked")
        );
        let missing = spec(
            format!("file://{}/nothing-here", dir.path().display()),
            true,
        );
        let err = mirror
            .fetch(&missing, "main")
            .expect_err("no such repository");
        assert_eq!(err.failure, GitFailure::NotFound);
        let err = mirror
            .fetch(&remote, "no-such-branch")
            .expect_err("no such branch");
        assert_eq!(err.failure, GitFailure::NotFound);
    }

    #[test]
    fn compaction_turns_a_full_mirror_into_a_shallow_one() {
        let (dir, source) = source_repository();
        let mut history = Vec::new();
        for i in 0..20 {
            history.push(commit(
                &source,
                &format!("f{}.md", i % 3),
                &format!("v{i}\n"),
            ));
        }
        // A mirror as Herald made them before: the whole history.
        let path = dir.path().join("mirror.git");
        let out = std::process::Command::new("git")
            .args(["clone", "-q", "--bare", "--no-local"])
            .arg(&source)
            .arg(&path)
            .output()
            .expect("git clone");
        assert!(out.status.success());
        let mirror = Mirror::open(&path).expect("mirror");
        mirror
            .pin("pending", Oid::from_str(&history[10]).expect("oid"))
            .expect("pinned");
        assert!(mirror.holds_history());
        // The first fetch after the upgrade is shallow: the new tip stands
        // without its parents, but the pin still holds history.
        let upgraded = commit(&source, "f2.md", "upgraded\n");
        let daemon = Daemon::serve(dir.path());
        let remote = spec(daemon.url("source"), true);
        mirror.fetch(&remote, "main").expect("fetched over git");
        assert!(mirror.holds_history());

        mirror.repack().expect("compacted");

        assert!(!mirror.holds_history());
        drop(mirror);
        let mirror = Mirror::open(&path).expect("reopened");
        let tip = mirror.local_head("main").expect("the branch").to_string();
        assert_eq!(tip, upgraded);
        assert!(mirror.has_commit(&history[10]), "a pinned snapshot stays");
        for (i, commit) in history.iter().enumerate() {
            if i != 10 {
                assert!(!mirror.has_commit(commit), "commit {i} was dropped");
            }
        }
        // It goes on fetching, over git and locally.
        let next = commit(&source, "f0.md", "after\n");
        let head = mirror.fetch(&remote, "main").expect("fetched over git");
        assert_eq!(head.to_string(), next);
        let last = commit(&source, "f1.md", "last\n");
        let head = mirror
            .fetch(&spec(format!("file://{}", source.display()), true), "main")
            .expect("fetched locally");
        assert_eq!(head.to_string(), last);
        let tree = mirror
            .repo
            .find_commit(head)
            .expect("commit")
            .tree()
            .expect("tree");
        assert_eq!(tree.len(), 3);
    }

    #[test]
    fn only_a_mirror_verified_damaged_is_rebuilt() {
        let system = git2::Error::new(
            ErrorCode::GenericError,
            ErrorClass::Os,
            "too many open files",
        );
        assert!(
            is_transient(&system),
            "the system's trouble leaves the mirror alone"
        );
        let damaged = git2::Error::new(
            ErrorCode::GenericError,
            ErrorClass::Repository,
            "not a git repository",
        );
        assert!(!is_transient(&damaged));

        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("mirror.git");
        let mirror = Mirror::open(&path).expect("created when missing");
        let oid = mirror.repo.blob(b"kept").expect("a blob");
        drop(mirror);
        let reopened = Mirror::open(&path).expect("opened");
        assert!(
            reopened.repo.find_blob(oid).is_ok(),
            "an intact mirror keeps its objects"
        );
        drop(reopened);
        // Garbage where the mirror was, and still garbage a moment later.
        std::fs::remove_dir_all(&path).expect("removed");
        std::fs::create_dir(&path).expect("dir");
        std::fs::write(path.join("HEAD"), "garbage").expect("garbage");
        assert!(
            Mirror::open(&path).is_err(),
            "not rebuilt at the first failure"
        );
        assert!(path.join("HEAD").exists(), "left as it is");
        // Still unopenable long after the first failure: damaged.
        let long_ago = crate::clock::now_ms() - crate::clock::millis(VERIFY_DAMAGE_AFTER) - 1;
        std::fs::write(suspect_marker(&path), long_ago.to_string()).expect("marker");
        let rebuilt = Mirror::open(&path).expect("rebuilt");
        assert!(
            rebuilt.repo.find_blob(oid).is_err(),
            "a damaged mirror starts empty"
        );
        assert!(!suspect_marker(&path).exists());
    }
}
