//! Reaching a remote: where and with what credential ([`RemoteSpec`]),
//! where git may connect ([`ConnectRule`]), the [`Route`] each operation
//! opens (https through an egress proxy, `http`/`git` after an address
//! check, a local path after a check of where it is), the credential and
//! deadline callbacks, and the head check without a mirror ([`probe`]).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use git2::{
    Cred, CredentialType, Direction, ErrorClass, ErrorCode, Oid, ProxyOptions, Remote,
    RemoteCallbacks, RemoteConnection, Repository,
};
use secrecy::{ExposeSecret, SecretString};

use super::egress::{Destination, Egress};
use super::error::{GitError, GitFailure};
use super::indexer_windows::IndexerWindows;
use super::refs::mirror_ref;
use super::socket::{Cut, Gate, LowSpeed, Operation};
use crate::net::{AddressRule, Refused};

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

    /// The user name of HTTP basic auth (LFS requests send it themselves).
    pub(crate) fn username(&self) -> &str {
        &self.username
    }

    /// The password of HTTP basic auth.
    pub(crate) fn password(&self) -> &SecretString {
        &self.password
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

    /// A submodule's remote at `url`, reached under this remote's rule,
    /// timeout and speed floor. The credential goes along only to this
    /// remote's own origin (scheme, host and port): a `.gitmodules` written
    /// by anyone who can push must not send a subscriber's token elsewhere,
    /// so another origin is read anonymously.
    pub fn submodule(&self, url: &str) -> Self {
        let origin = |url: &str| {
            let parsed = url::Url::parse(url).ok()?;
            Some((
                parsed.scheme().to_owned(),
                parsed.host_str()?.to_ascii_lowercase(),
                parsed.port_or_known_default(),
            ))
        };
        let same_origin = origin(&self.url).is_some_and(|own| Some(own) == origin(url));
        Self {
            url: url.to_owned(),
            credentials: self.credentials.clone().filter(|_| same_origin),
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
    /// The address rule git shares with every outbound client.
    pub fn address(&self) -> AddressRule {
        AddressRule {
            allow_private: self.allow_private,
            allow_http: self.allow_http,
        }
    }

    /// Whether the rule admits `url`'s kind of remote, and why not: what
    /// registration checked, checked again before every operation, since a
    /// repository stored under a more permissive configuration stays stored.
    pub fn admits(&self, url: &str) -> Result<(), GitError> {
        let refused = |message: &str| Err(GitError::new(GitFailure::Refused, message));
        match scheme_of(url) {
            "file" if self.allow_local => Ok(()),
            "file" => refused(
                "local repositories are disabled by this server's configuration \
                 (git.allow_local_repos)",
            ),
            scheme => match self.address().scheme(scheme) {
                Ok(()) => Ok(()),
                Err(Refused::PlainText) => refused(
                    "http:// and git:// repositories are disabled by this server's \
                     configuration (security.allow_http_targets)",
                ),
                Err(_) => refused("this kind of git URL is not supported"),
            },
        }
    }
}

/// A remote URL's scheme; an absolute path is a local (`file`) remote.
pub(super) fn scheme_of(url: &str) -> &str {
    url.split_once("://").map_or("file", |(scheme, _)| scheme)
}

/// How one git operation reaches its remote: https through an [`Egress`]
/// proxy, `http://` and `git://` after a check of their addresses, a local
/// path after a check of where it is.
pub(super) struct Route {
    egress: Option<Egress>,
    /// Where the operation's sockets may connect.
    gate: Gate,
}

impl Route {
    pub(super) fn open(spec: &RemoteSpec) -> Result<Self, GitError> {
        spec.rule.admits(&spec.url)?;
        let scheme = scheme_of(&spec.url);
        let destination = Destination::of(&spec.url);
        match (scheme, destination) {
            ("https", Some(destination)) => {
                // The operation's own sockets cut it at its deadline (with
                // the reason); the proxy only must not outlive it, so its
                // bound comes a little later and never ends a tunnel first
                // (a tunnel closed under a handshake would read as a remote
                // that could not be reached).
                let bound = spec.timeout + EGRESS_GRACE;
                let egress =
                    Egress::open(destination, spec.rule.address(), bound).map_err(|_| {
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
                    .resolve(spec.rule.address())
                    .map_err(|refusal| GitError::new(GitFailure::Refused, refusal.message()))?;
                Ok(Self {
                    egress: None,
                    gate: Gate::Remote {
                        destination,
                        rule: spec.rule.address(),
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

    pub(super) fn proxy_options(&self) -> ProxyOptions<'static> {
        let mut options = ProxyOptions::new();
        if let Some(egress) = &self.egress {
            options.url(&egress.proxy_url());
        }
        options
    }

    /// Starts the operation on this thread: its sockets obey the route's
    /// gate, its deadline and the low-speed rule.
    pub(super) fn begin(&self, spec: &RemoteSpec) -> Operation {
        super::tls::register();
        Operation::begin(spec.timeout, spec.low_speed, self.gate.clone())
    }

    /// The operation's error, or the reason the proxy or Herald's socket
    /// refused a connection (libgit2 only saw "the proxy answered 403" or a
    /// failed connect).
    pub(super) fn explain(&self, operation: &Operation, err: GitError) -> GitError {
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

/// Refuses a local repository that would have git read Herald's data
/// directory (symbolic links resolved: the mirrors of other apps' private
/// repositories live there), and one that names another repository for git
/// to read instead: a path that is, or whose `.git` is, a file (a gitfile,
/// `gitdir: PATH`, as `git worktree` and `git submodule` write), or a git
/// directory with a `commondir` file. Either sends git wherever it says,
/// past the check of where the path is, so neither is followed whatever it
/// names. The messages name no path: they reach apps as `sync_failed`.
fn check_local(url: &str, data_dir: &Path) -> Result<(), GitError> {
    let refused = |message: &str| Err(GitError::new(GitFailure::Refused, message));
    let path = local_path(url);
    let dot_git = path.join(".git");
    let inside = |path: &Path| match (path.canonicalize(), data_dir.canonicalize()) {
        (Ok(path), Ok(dir)) => path.starts_with(dir),
        // Not there (yet): judge the path as written.
        _ => path.starts_with(data_dir),
    };
    if inside(&path) || inside(&dot_git) {
        return refused("local repositories inside Herald's data directory are not allowed");
    }
    if path.is_file() || dot_git.is_file() {
        return refused(
            "local repositories that are, or whose .git is, a file (a gitfile, \
             `gitdir: …`) are not allowed: git would read the repository it names",
        );
    }
    if path.join("commondir").exists() || dot_git.join("commondir").exists() {
        return refused(
            "local repositories whose git directory names another one (a `commondir` \
             file) are not allowed",
        );
    }
    Ok(())
}

/// The path of a local remote: a `file://` URL's, or the URL itself.
pub(super) fn local_path(url: &str) -> PathBuf {
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

/// Why an operation was cut short, if it was: by one of its sockets
/// ([`socket`](super::socket)) or by the deadline the transfer callback
/// checks.
/// How much longer than its operation an egress proxy may wait on a read.
const EGRESS_GRACE: Duration = Duration::from_secs(2);

pub(super) fn cut_of(operation: &Operation, timed_out: &std::cell::Cell<bool>) -> Option<Cut> {
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
pub(super) fn callbacks<'a>(
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
/// ([`RemoteRedirect::None`](git2::RemoteRedirect::None)). No other
/// configuration (the user's `~/.gitconfig`, `insteadOf` rewrites) applies
/// to it either.
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
    let session = Session::start(spec)?;
    let connection = session.connect(&mut remote, None)?;
    session.head(&connection, branch)
}

/// One operation on a remote: its route under the address rule, its
/// deadline, and whether the deadline cut it.
pub(super) struct Session<'s> {
    spec: &'s RemoteSpec,
    route: Route,
    operation: Operation,
    deadline: Instant,
    timed_out: std::cell::Cell<bool>,
}

impl<'s> Session<'s> {
    pub(super) fn start(spec: &'s RemoteSpec) -> Result<Self, GitError> {
        let route = Route::open(spec)?;
        let operation = route.begin(spec);
        Ok(Self {
            spec,
            route,
            operation,
            deadline: Instant::now() + spec.timeout,
            timed_out: std::cell::Cell::new(false),
        })
    }

    /// The credential and deadline callbacks (with the indexer's windows
    /// for a fetch).
    pub(super) fn callbacks(&self, indexer_windows: Option<IndexerWindows>) -> RemoteCallbacks<'_> {
        callbacks(self.spec, self.deadline, &self.timed_out, indexer_windows)
    }

    pub(super) fn proxy_options(&self) -> ProxyOptions<'static> {
        self.route.proxy_options()
    }

    /// A libgit2 failure of this operation, in safe words.
    pub(super) fn failed(&self, err: &git2::Error) -> GitError {
        self.route.explain(
            &self.operation,
            GitError::classify(err, cut_of(&self.operation, &self.timed_out)),
        )
    }

    /// Connects `remote` to fetch: the remote's refs are then known.
    pub(super) fn connect<'repo, 'r>(
        &'r self,
        remote: &'r mut Remote<'repo>,
        indexer_windows: Option<IndexerWindows>,
    ) -> Result<RemoteConnection<'repo, 'r, 'r>, GitError> {
        remote
            .connect_auth(
                Direction::Fetch,
                Some(self.callbacks(indexer_windows)),
                Some(self.proxy_options()),
            )
            .map_err(|e| self.failed(&e))
    }

    /// Where `branch` (or the remote's default branch) points, as the
    /// connected remote advertised it.
    pub(super) fn head(
        &self,
        connection: &RemoteConnection<'_, '_, '_>,
        branch: Option<&str>,
    ) -> Result<RemoteHead, GitError> {
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
        let heads = connection.list().map_err(|e| self.failed(&e))?;
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
}

#[cfg(test)]
pub(super) mod tests {
    use std::io::Read;

    use super::*;

    /// A remote at `url` without a credential, under a rule that admits
    /// every kind of remote (private addresses only when asked).
    pub(in crate::git) fn spec(url: String, allow_private: bool) -> RemoteSpec {
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
    fn a_submodule_gets_the_credential_only_on_its_parents_origin() {
        let parent = RemoteSpec {
            credentials: Some(Credentials::from_token(&SecretString::from(
                "alice:s3cret".to_owned(),
            ))),
            ..spec("https://git.example.com/acme/app.git".to_owned(), false)
        };
        let same = parent.submodule("https://GIT.example.com:443/acme/lib.git");
        assert_eq!(same.url, "https://GIT.example.com:443/acme/lib.git");
        assert_eq!(
            same.credentials.as_ref().map(Credentials::username),
            Some("alice")
        );
        for elsewhere in [
            "https://evil.example/acme/lib.git",
            "https://git.example.com:8443/acme/lib.git",
            "http://git.example.com/acme/lib.git",
            "git://git.example.com/acme/lib.git",
            "/srv/git/lib.git",
            "ssh://git.example.com/acme/lib.git",
        ] {
            let other = parent.submodule(elsewhere);
            assert!(
                other.credentials.is_none(),
                "{elsewhere} got the credential"
            );
            assert_eq!(other.rule.allow_private, parent.rule.allow_private);
            assert_eq!(other.timeout, parent.timeout);
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
        // A checkout outside whose `.git` is a link to the mirror.
        let checkout = outside.path().join("checkout");
        std::fs::create_dir(&checkout).expect("a checkout dir");
        std::os::unix::fs::symlink(&mirror, checkout.join(".git")).expect("a link");
        let mut linked = spec(format!("file://{}", checkout.display()), true);
        linked.rule.data_dir = data.path().to_owned();
        let err = probe(&linked, None).expect_err("its .git is inside");
        assert_eq!(err.failure, GitFailure::Refused);
        assert!(err.message.contains("data directory"), "{}", err.message);
    }

    #[test]
    fn local_repositories_that_name_another_are_refused_wherever_it_is() {
        let data = tempfile::tempdir().expect("a data dir");
        let mirror = data.path().join("mirrors").join("repo_x.git");
        std::fs::create_dir_all(&mirror).expect("a mirror dir");
        let elsewhere = tempfile::tempdir().expect("a repository elsewhere");
        git2::Repository::init_bare(elsewhere.path()).expect("a repository");
        let outside = tempfile::tempdir().expect("the checkouts' dir");
        let refused = |path: &Path| {
            let mut local = spec(path.display().to_string(), true);
            local.rule.data_dir = data.path().to_owned();
            let err = probe(&local, None).expect_err("refused");
            assert_eq!(err.failure, GitFailure::Refused, "{}", err.message);
            assert!(
                !err.message.contains(&outside.path().display().to_string()),
                "{}",
                err.message
            );
            err.message
        };
        for (name, target) in [
            ("into-mirror", mirror.as_path()),
            ("elsewhere", elsewhere.path()),
        ] {
            let checkout = outside.path().join(name);
            std::fs::create_dir(&checkout).expect("a checkout dir");
            std::fs::write(
                checkout.join(".git"),
                format!("gitdir: {}\n", target.display()),
            )
            .expect("a gitfile");
            assert!(refused(&checkout).contains("gitfile"));
            // The gitfile itself, as the repository's path.
            assert!(refused(&checkout.join(".git")).contains("gitfile"));
        }
        // A git directory whose `commondir` names another (as a worktree's
        // does), reached without a gitfile.
        let common = outside.path().join("common.git");
        std::fs::create_dir(&common).expect("a git dir");
        std::fs::write(common.join("HEAD"), "ref: refs/heads/main\n").expect("HEAD");
        std::fs::write(common.join("commondir"), format!("{}\n", mirror.display()))
            .expect("commondir");
        assert!(refused(&common).contains("commondir"));
    }
}
