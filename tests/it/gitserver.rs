//! Real git remotes on loopback for the tests, driven by the machine's `git`:
//! a working repository (`TestRepo`), a bare copy to serve (`Served`), the git
//! protocol (`GitDaemon`) and smart HTTP with optional basic auth
//! (`HttpGitServer`, `git http-backend` behind a small HTTP/1.1 server).
//!
//! Everything here is synchronous to call: the servers run on threads or
//! processes of their own, so a test may block on the `git` CLI (or on
//! libgit2) while they answer.
#![allow(dead_code)]

use std::io::Read;
use std::net::{SocketAddr, TcpStream as StdTcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child as StdChild, Command as StdCommand, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use base64::Engine;
use tempfile::TempDir;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// A directory under the target's tmp dir used as `HOME` (and
/// `XDG_CONFIG_HOME`) for every git process, so no user configuration leaks in.
fn git_home() -> &'static Path {
    static HOME: OnceLock<PathBuf> = OnceLock::new();
    HOME.get_or_init(|| {
        let home = Path::new(env!("CARGO_TARGET_TMPDIR")).join("git-home");
        std::fs::create_dir_all(&home).expect("the git home directory can be created");
        home
    })
}

/// A `git` command isolated from the machine's and the user's configuration.
pub fn git_command(dir: &Path) -> StdCommand {
    isolated(Path::new("git"), dir)
}

/// `git-<name>` from git's exec path, isolated like `git_command`. The servers
/// run these directly: `git daemon` would fork `git-daemon` as a child that
/// outlives killing the `git` wrapper.
fn git_program(name: &str, dir: &Path) -> StdCommand {
    static EXEC_PATH: OnceLock<PathBuf> = OnceLock::new();
    let exec_path = EXEC_PATH.get_or_init(|| {
        let output = git_command(Path::new("/"))
            .arg("--exec-path")
            .output()
            .expect("the git CLI runs");
        assert!(output.status.success(), "git --exec-path failed");
        let path = String::from_utf8(output.stdout).expect("git prints UTF-8");
        PathBuf::from(path.trim())
    });
    isolated(&exec_path.join(format!("git-{name}")), dir)
}

fn isolated(program: &Path, dir: &Path) -> StdCommand {
    let mut command = StdCommand::new(program);
    command.current_dir(dir).stdin(Stdio::null());
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy().into_owned();
        if key.starts_with("GIT_") || key == "SSH_ASKPASS" {
            command.env_remove(key);
        }
    }
    command
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("HOME", git_home())
        .env("XDG_CONFIG_HOME", git_home());
    command
}

/// Runs `git args` in `dir`; panics with git's stderr when it fails; returns
/// its stdout.
pub fn run_git(dir: &Path, args: &[&str]) -> String {
    let output = git_command(dir)
        .args(args)
        .output()
        .expect("the git CLI runs");
    assert!(
        output.status.success(),
        "git {} failed in {} ({}):\n{}",
        args.join(" "),
        dir.display(),
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("git prints UTF-8")
}

/// Runs `git args` in `dir` and returns whether it succeeded, with its stdout
/// and stderr; for commands expected to fail.
pub fn try_git(dir: &Path, args: &[&str]) -> (bool, String, String) {
    let output = git_command(dir)
        .args(args)
        .output()
        .expect("the git CLI runs");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// `git ls-remote <url>` as (sha, ref) pairs, run from `dir`.
pub fn ls_remote(dir: &Path, url: &str) -> Vec<(String, String)> {
    run_git(dir, &["ls-remote", url])
        .lines()
        .filter_map(|line| line.split_once('\t'))
        .map(|(sha, name)| (sha.to_owned(), name.to_owned()))
        .collect()
}

/// A working repository in a temporary directory.
pub struct TestRepo {
    dir: TempDir,
}

impl TestRepo {
    /// `git init -b branch` with a local identity and no signing.
    pub fn new(branch: &str) -> TestRepo {
        let dir = tempfile::tempdir().expect("a temporary repository dir");
        run_git(dir.path(), &["init", "-q", "-b", branch]);
        for (key, value) in [
            ("user.name", "Herald Tests"),
            ("user.email", "tests@herald.invalid"),
            ("commit.gpgsign", "false"),
            ("tag.gpgsign", "false"),
            ("core.autocrlf", "false"),
        ] {
            run_git(dir.path(), &["config", key, value]);
        }
        TestRepo { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Runs any git command in the work tree; returns its stdout.
    pub fn git(&self, args: &[&str]) -> String {
        run_git(self.path(), args)
    }

    fn file(&self, path: &str) -> PathBuf {
        let file = self.path().join(path);
        if let Some(parent) = file.parent() {
            std::fs::create_dir_all(parent).expect("parent directories can be created");
        }
        file
    }

    /// Writes a file (creating its parent directories).
    pub fn write(&self, path: &str, content: impl AsRef<[u8]>) {
        std::fs::write(self.file(path), content).expect("the file can be written");
    }

    /// Removes a file, a symlink or a whole directory.
    pub fn remove(&self, path: &str) {
        let file = self.path().join(path);
        let metadata = std::fs::symlink_metadata(&file).expect("the path to remove exists");
        if metadata.is_dir() {
            std::fs::remove_dir_all(&file).expect("the directory can be removed");
        } else {
            std::fs::remove_file(&file).expect("the file can be removed");
        }
    }

    /// Moves a file or directory (creating the target's parent directories).
    pub fn rename(&self, from: &str, to: &str) {
        let target = self.file(to);
        std::fs::rename(self.path().join(from), target).expect("the path can be renamed");
    }

    /// Creates a symbolic link at `path` pointing at `target` (as written).
    pub fn symlink(&self, path: &str, target: &str) {
        std::os::unix::fs::symlink(target, self.file(path)).expect("the symlink can be created");
    }

    /// Sets or clears the executable bits of a file.
    pub fn set_executable(&self, path: &str, executable: bool) {
        use std::os::unix::fs::PermissionsExt;
        let file = self.path().join(path);
        let mode = if executable { 0o755 } else { 0o644 };
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode))
            .expect("the file mode can be set");
    }

    /// `git add -A` and commits (even when nothing changed); returns the sha.
    pub fn commit(&self, message: &str) -> String {
        self.git(&["add", "-A"]);
        self.git(&[
            "commit",
            "-q",
            "--allow-empty",
            "--no-verify",
            "-m",
            message,
        ]);
        self.head()
    }

    pub fn checkout_new_branch(&self, name: &str) {
        self.git(&["checkout", "-q", "-b", name]);
    }

    pub fn checkout(&self, name: &str) {
        self.git(&["checkout", "-q", name]);
    }

    pub fn reset_hard(&self, rev: &str) {
        self.git(&["reset", "-q", "--hard", rev]);
    }

    /// The full sha of `HEAD`.
    pub fn head(&self) -> String {
        self.rev_parse("HEAD")
    }

    /// The full sha a revision names.
    pub fn rev_parse(&self, rev: &str) -> String {
        self.git(&["rev-parse", "--verify", rev]).trim().to_owned()
    }
}

/// A bare repository `<root>/<name>` cloned from a `TestRepo`, for
/// `GitDaemon::serve(served.root())` / `HttpGitServer::serve(served.root(), ..)`
/// and `url(&served.name)`. Pushes over both protocols are allowed.
pub struct Served {
    root: Arc<TempDir>,
    /// The bare repository.
    pub bare: PathBuf,
    /// Its directory name under the root (e.g. `widgets.git`).
    pub name: String,
}

impl Served {
    /// `git clone --bare` of `repo` into a fresh root as `name`.
    pub fn new(repo: &TestRepo, name: &str) -> Served {
        let root = Arc::new(tempfile::tempdir().expect("a temporary root for bare repos"));
        Self::create(root, repo, name)
    }

    /// Another bare repository in the same root (so one server serves both).
    pub fn sibling(&self, repo: &TestRepo, name: &str) -> Served {
        Self::create(self.root.clone(), repo, name)
    }

    fn create(root: Arc<TempDir>, repo: &TestRepo, name: &str) -> Served {
        let bare = root.path().join(name);
        let source = repo.path().display().to_string();
        let target = bare.display().to_string();
        run_git(root.path(), &["clone", "-q", "--bare", &source, &target]);
        for (key, value) in [
            ("http.receivepack", "true"),
            ("daemon.receivepack", "true"),
            ("receive.denyNonFastForwards", "false"),
        ] {
            run_git(&bare, &["config", key, value]);
        }
        Served {
            root,
            bare,
            name: name.to_owned(),
        }
    }

    /// The directory holding the bare repositories (what servers serve).
    pub fn root(&self) -> &Path {
        self.root.path()
    }

    /// Pushes from `repo` into the bare repository by path, e.g.
    /// `push(&repo, "HEAD:refs/heads/main", true)` or `":refs/heads/gone"`.
    pub fn push(&self, repo: &TestRepo, refspec: &str, force: bool) {
        let bare = self.bare.display().to_string();
        let mut args = vec!["push", "-q"];
        if force {
            args.push("--force");
        }
        args.extend([bare.as_str(), refspec]);
        repo.git(&args);
    }

    /// Points the bare repository's `HEAD` (the default branch) at `branch`.
    pub fn set_head(&self, branch: &str) {
        let reference = format!("refs/heads/{branch}");
        run_git(&self.bare, &["symbolic-ref", "HEAD", &reference]);
    }

    /// The full sha a revision names in the bare repository.
    pub fn rev_parse(&self, rev: &str) -> String {
        run_git(&self.bare, &["rev-parse", "--verify", rev])
            .trim()
            .to_owned()
    }
}

/// `git daemon` serving every repository under a root on 127.0.0.1, pushes
/// enabled; killed on drop.
pub struct GitDaemon {
    child: StdChild,
    port: u16,
    log: TempDir,
}

impl GitDaemon {
    pub fn serve(root: &Path) -> GitDaemon {
        let mut failures = String::new();
        // A freed port can be taken again before the daemon binds it: retry.
        for _ in 0..5 {
            match Self::try_serve_on(root, free_port()) {
                Ok(daemon) => return daemon,
                Err(failure) => failures.push_str(&failure),
            }
        }
        panic!("git daemon did not start:\n{failures}");
    }

    /// A daemon on a given port (e.g. the port of a daemon that was stopped,
    /// to bring a remote back).
    pub fn serve_on(root: &Path, port: u16) -> GitDaemon {
        Self::try_serve_on(root, port)
            .unwrap_or_else(|failure| panic!("git daemon did not start: {failure}"))
    }

    fn try_serve_on(root: &Path, port: u16) -> Result<GitDaemon, String> {
        let root = root
            .canonicalize()
            .expect("the daemon's root directory exists");
        let log = tempfile::tempdir().expect("a directory for the daemon's log");
        let stderr = std::fs::File::create(log.path().join("daemon.log"))
            .expect("the daemon's log file can be created");
        let mut child = git_program("daemon", &root)
            .arg("--reuseaddr")
            .arg("--verbose")
            .arg("--informative-errors")
            .arg("--export-all")
            .arg(format!("--base-path={}", root.display()))
            .arg("--listen=127.0.0.1")
            .arg(format!("--port={port}"))
            .arg("--enable=receive-pack")
            .arg(&root)
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("git daemon starts");
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(status) = child.try_wait().expect("the daemon's status") {
                return Err(format!(
                    "port {port}: exited with {status}:\n{}\n",
                    read_log(log.path())
                ));
            }
            let address = SocketAddr::from(([127, 0, 0, 1], port));
            if StdTcpStream::connect_timeout(&address, Duration::from_millis(200)).is_ok() {
                return Ok(GitDaemon { child, port, log });
            }
            if Instant::now() > deadline {
                child.kill().ok();
                child.wait().ok();
                return Err(format!("port {port}: not accepting after 5 s\n"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The daemon's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `git://127.0.0.1:PORT/<name>`, `name` a bare repository under the root.
    pub fn url(&self, name: &str) -> String {
        format!("git://127.0.0.1:{}/{name}", self.port)
    }

    /// What the daemon logged so far (`--verbose`).
    pub fn log(&self) -> String {
        read_log(self.log.path())
    }
}

fn read_log(dir: &Path) -> String {
    let mut text = String::new();
    if let Ok(mut file) = std::fs::File::open(dir.join("daemon.log")) {
        file.read_to_string(&mut text).ok();
    }
    text
}

impl Drop for GitDaemon {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free loopback port")
        .port()
}

/// One request `HttpGitServer` answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpRequest {
    pub method: String,
    /// The path, without the query (e.g. `/widgets.git/info/refs`).
    pub path: String,
    pub query: String,
    /// The raw `Authorization` header, when one was sent.
    pub authorization: Option<String>,
    /// The user and password of a `Basic` authorization, decoded.
    pub basic: Option<(String, String)>,
    /// Whether the request was let through (always, without credentials).
    pub authorized: bool,
    /// The request's `Content-Encoding` (git gzips large fetch requests).
    pub content_encoding: Option<String>,
    /// Whether the body came with `Transfer-Encoding: chunked`.
    pub chunked: bool,
    /// The body's length as received (before any gzip decoding).
    pub body_len: usize,
    pub status: u16,
    /// What `git http-backend` wrote to stderr.
    pub backend_stderr: String,
}

struct HttpConfig {
    root: PathBuf,
    /// `None`: anyone may read. Otherwise the users (name, password) whose
    /// basic credentials are accepted; a test may revoke one while serving.
    credentials: Option<Mutex<Vec<(String, String)>>>,
    port: u16,
    /// Git LFS, served under `…/info/lfs/` on the same origin.
    lfs: Option<Arc<dyn LfsAnswers>>,
}

/// Git LFS beside smart HTTP (`crate::lfsserver` in the tests): what an
/// authorized request of `user` under `…/info/lfs/` is answered, by the
/// server listening at `port`.
pub trait LfsAnswers: Send + Sync {
    fn answer(
        &self,
        user: Option<&str>,
        method: &str,
        path: &str,
        body: &[u8],
        port: u16,
    ) -> LfsReply;
}

/// One answer of [`LfsAnswers`].
pub struct LfsReply {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
    /// A redirect's `Location`.
    pub location: Option<String>,
}

impl HttpConfig {
    fn accepts(&self, basic: Option<&(String, String)>) -> bool {
        match &self.credentials {
            None => true,
            Some(users) => basic.is_some_and(|given| {
                users
                    .lock()
                    .expect("credentials lock")
                    .iter()
                    .any(|user| user == given)
            }),
        }
    }
}

/// Smart HTTP for every bare repository under a root: a small HTTP/1.1 server
/// (one request per connection) running `git http-backend` as CGI, with
/// optional basic auth. Runs on a thread of its own; stops on drop.
pub struct HttpGitServer {
    port: u16,
    log: Arc<Mutex<Vec<HttpRequest>>>,
    config: Arc<HttpConfig>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// The most a request body may hold.
const MAX_BODY: usize = 256 * 1024 * 1024;
/// The most a request line plus headers may hold.
const MAX_HEAD: usize = 64 * 1024;

impl HttpGitServer {
    /// Serves `root`; with `credentials`, every request must carry them as
    /// basic auth or is answered 401 (`WWW-Authenticate: Basic realm="git"`).
    pub fn serve(root: &Path, credentials: Option<(&str, &str)>) -> HttpGitServer {
        Self::serve_users(root, credentials.as_ref().map(std::slice::from_ref))
    }

    /// Serves `root`; with `users`, a request must carry the basic
    /// credentials of one of them (a git host with several tokens).
    pub fn serve_users(root: &Path, users: Option<&[(&str, &str)]>) -> HttpGitServer {
        Self::serve_with_lfs(root, users, None)
    }

    /// [`Self::serve_users`], with Git LFS's batch API and downloads of
    /// `lfs`'s objects under each repository's `info/lfs/`.
    pub fn serve_with_lfs(
        root: &Path,
        users: Option<&[(&str, &str)]>,
        lfs: Option<Arc<dyn LfsAnswers>>,
    ) -> HttpGitServer {
        let listener =
            std::net::TcpListener::bind("127.0.0.1:0").expect("a loopback port for smart HTTP");
        listener
            .set_nonblocking(true)
            .expect("the listener can be made non-blocking");
        let port = listener.local_addr().expect("a bound address").port();
        let config = Arc::new(HttpConfig {
            root: root
                .canonicalize()
                .expect("the HTTP server's root directory exists"),
            credentials: users.map(|users| {
                Mutex::new(
                    users
                        .iter()
                        .map(|(user, password)| ((*user).to_owned(), (*password).to_owned()))
                        .collect(),
                )
            }),
            port,
            lfs,
        });
        let served = config.clone();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (shutdown, stop) = tokio::sync::oneshot::channel();
        let requests = log.clone();
        let thread = std::thread::Builder::new()
            .name(format!("http-git-{port}"))
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a runtime for the HTTP git server");
                runtime.block_on(accept(listener, config, requests, stop));
                // Dropping the runtime drops every connection still open and
                // kills their `git http-backend` (kill_on_drop).
            })
            .expect("the HTTP git server thread starts");
        HttpGitServer {
            port,
            log,
            config: served,
            shutdown: Some(shutdown),
            thread: Some(thread),
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Revokes `user`'s credentials: from now on they are answered 401, as a
    /// git host answers a revoked token.
    pub fn revoke(&self, user: &str) {
        if let Some(users) = &self.config.credentials {
            users
                .lock()
                .expect("credentials lock")
                .retain(|(name, _)| name != user);
        }
    }

    /// `http://127.0.0.1:PORT/<name>`.
    pub fn url(&self, name: &str) -> String {
        format!("http://127.0.0.1:{}/{name}", self.port)
    }

    /// `http://user:password@127.0.0.1:PORT/<name>` (for the git CLI).
    pub fn url_with_credentials(&self, name: &str, user: &str, password: &str) -> String {
        format!("http://{user}:{password}@127.0.0.1:{}/{name}", self.port)
    }

    /// How many requests were answered (401s included).
    pub fn requests(&self) -> usize {
        self.log.lock().expect("request log lock").len()
    }

    /// Every request answered so far, in order.
    pub fn request_log(&self) -> Vec<HttpRequest> {
        self.log.lock().expect("request log lock").clone()
    }

    /// How many requests were let through with `user`'s basic credentials.
    pub fn authenticated_as(&self, user: &str) -> usize {
        self.log
            .lock()
            .expect("request log lock")
            .iter()
            .filter(|request| {
                request.authorized && request.basic.as_ref().is_some_and(|(name, _)| name == user)
            })
            .count()
    }

    /// How many requests were refused with 401.
    pub fn rejected(&self) -> usize {
        self.log
            .lock()
            .expect("request log lock")
            .iter()
            .filter(|request| request.status == 401)
            .count()
    }
}

impl Drop for HttpGitServer {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            shutdown.send(()).ok();
        }
        if let Some(thread) = self.thread.take() {
            thread.join().ok();
        }
    }
}

async fn accept(
    listener: std::net::TcpListener,
    config: Arc<HttpConfig>,
    log: Arc<Mutex<Vec<HttpRequest>>>,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) {
    let listener = TcpListener::from_std(listener).expect("a tokio listener");
    let mut connections = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    connections.spawn(connection(stream, peer, config.clone(), log.clone()));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            },
        }
        while connections.try_join_next().is_some() {}
    }
    connections.shutdown().await;
}

/// The parsed request line and headers.
struct Head {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
}

impl Head {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }
}

/// Why a request could not be read: the client left, or it sent nonsense.
enum ReadError {
    Io,
    Bad(&'static str),
}

impl From<std::io::Error> for ReadError {
    fn from(_: std::io::Error) -> Self {
        ReadError::Io
    }
}

async fn connection(
    mut stream: TcpStream,
    peer: SocketAddr,
    config: Arc<HttpConfig>,
    log: Arc<Mutex<Vec<HttpRequest>>>,
) {
    let (read, mut write) = stream.split();
    let mut reader = BufReader::new(read);
    let head = match read_head(&mut reader).await {
        Ok(head) => head,
        Err(ReadError::Io) => return,
        Err(ReadError::Bad(why)) => {
            respond(&mut write, 400, "Bad Request", &[], why.as_bytes())
                .await
                .ok();
            return;
        }
    };
    let (path, query) = match head.target.split_once('?') {
        Some((path, query)) => (path.to_owned(), query.to_owned()),
        None => (head.target.clone(), String::new()),
    };
    let authorization = head.header("authorization").map(str::to_owned);
    let basic = authorization.as_deref().and_then(decode_basic);
    let authorized = config.accepts(basic.as_ref());
    let chunked = head
        .header("transfer-encoding")
        .is_some_and(|value| value.to_ascii_lowercase().contains("chunked"));
    let mut record = HttpRequest {
        method: head.method.clone(),
        path: path.clone(),
        query: query.clone(),
        authorization,
        basic: basic.clone(),
        authorized,
        content_encoding: head.header("content-encoding").map(str::to_owned),
        chunked,
        body_len: 0,
        status: 0,
        backend_stderr: String::new(),
    };
    let expects_continue = head
        .header("expect")
        .is_some_and(|value| value.eq_ignore_ascii_case("100-continue"));

    // Refuse before the body when the client waits for leave to send it.
    if !authorized && expects_continue {
        record.status = 401;
        log.lock().expect("request log lock").push(record);
        unauthorized(&mut write).await.ok();
        return;
    }
    if expects_continue
        && write
            .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
            .await
            .is_err()
    {
        return;
    }
    let body = match read_body(&mut reader, &head, chunked).await {
        Ok(body) => body,
        Err(ReadError::Io) => return,
        Err(ReadError::Bad(why)) => {
            record.status = 400;
            log.lock().expect("request log lock").push(record);
            respond(&mut write, 400, "Bad Request", &[], why.as_bytes())
                .await
                .ok();
            return;
        }
    };
    record.body_len = body.len();
    if !authorized {
        record.status = 401;
        log.lock().expect("request log lock").push(record);
        unauthorized(&mut write).await.ok();
        return;
    }

    if let Some(lfs) = &config.lfs
        && path.contains("/info/lfs/")
    {
        let user = basic.as_ref().map(|(user, _)| user.as_str());
        let reply = lfs.answer(user, &head.method, &path, &body, config.port);
        record.status = reply.status;
        log.lock().expect("request log lock").push(record);
        let mut headers = vec![("Content-Type".to_owned(), reply.content_type.to_owned())];
        headers.extend(reply.location.map(|to| ("Location".to_owned(), to)));
        respond(&mut write, reply.status, "LFS", &headers, &reply.body)
            .await
            .ok();
        return;
    }
    let user = match (&config.credentials, &basic) {
        (Some(_), Some((user, _))) => Some(user.clone()),
        _ => None,
    };
    let command = backend_command(&config, &head, &path, &query, peer, user, body.len());
    answer_from_backend(command, body, &mut write, record, &log)
        .await
        .ok();
}

async fn read_line(
    reader: &mut (impl tokio::io::AsyncBufRead + Unpin),
    limit: usize,
) -> Result<String, ReadError> {
    let mut line = Vec::new();
    let read = (&mut *reader)
        .take(limit as u64 + 1)
        .read_until(b'\n', &mut line)
        .await?;
    if read == 0 {
        return Err(ReadError::Io);
    }
    if line.len() > limit {
        return Err(ReadError::Bad("line too long"));
    }
    if line.last() != Some(&b'\n') {
        return Err(ReadError::Io);
    }
    line.pop();
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    String::from_utf8(line).map_err(|_| ReadError::Bad("not UTF-8"))
}

async fn read_head(reader: &mut (impl tokio::io::AsyncBufRead + Unpin)) -> Result<Head, ReadError> {
    let request_line = read_line(reader, MAX_HEAD).await?;
    let mut parts = request_line.split_whitespace();
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(ReadError::Bad("bad request line"));
    };
    if !version.starts_with("HTTP/1.") {
        return Err(ReadError::Bad("HTTP/1.x only"));
    }
    let mut headers = Vec::new();
    let mut size = request_line.len();
    loop {
        let line = read_line(reader, MAX_HEAD).await?;
        if line.is_empty() {
            break;
        }
        size += line.len();
        if size > MAX_HEAD {
            return Err(ReadError::Bad("headers too large"));
        }
        let Some((name, value)) = line.split_once(':') else {
            return Err(ReadError::Bad("bad header line"));
        };
        headers.push((name.trim().to_owned(), value.trim().to_owned()));
    }
    Ok(Head {
        method: method.to_owned(),
        target: target.to_owned(),
        headers,
    })
}

async fn read_body(
    reader: &mut (impl tokio::io::AsyncBufRead + Unpin),
    head: &Head,
    chunked: bool,
) -> Result<Vec<u8>, ReadError> {
    let mut body = Vec::new();
    if chunked {
        loop {
            let line = read_line(reader, 1024).await?;
            let size = line.split(';').next().unwrap_or_default().trim();
            let size =
                usize::from_str_radix(size, 16).map_err(|_| ReadError::Bad("bad chunk size"))?;
            if size == 0 {
                // Trailers, up to the empty line.
                while !read_line(reader, MAX_HEAD).await?.is_empty() {}
                return Ok(body);
            }
            if body.len() + size > MAX_BODY {
                return Err(ReadError::Bad("body too large"));
            }
            let start = body.len();
            body.resize(start + size, 0);
            reader.read_exact(&mut body[start..]).await?;
            if !read_line(reader, 2).await?.is_empty() {
                return Err(ReadError::Bad("chunk not followed by CRLF"));
            }
        }
    }
    if let Some(length) = head.header("content-length") {
        let length: usize = length
            .parse()
            .map_err(|_| ReadError::Bad("bad Content-Length"))?;
        if length > MAX_BODY {
            return Err(ReadError::Bad("body too large"));
        }
        body.resize(length, 0);
        reader.read_exact(&mut body).await?;
    }
    Ok(body)
}

fn decode_basic(header: &str) -> Option<(String, String)> {
    let (scheme, encoded) = header.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (user, password) = decoded.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

/// The `git http-backend` CGI process for one request.
fn backend_command(
    config: &HttpConfig,
    head: &Head,
    path: &str,
    query: &str,
    peer: SocketAddr,
    user: Option<String>,
    body_len: usize,
) -> StdCommand {
    let mut command = git_program("http-backend", &config.root);
    command
        .env("GIT_PROJECT_ROOT", &config.root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("GATEWAY_INTERFACE", "CGI/1.1")
        .env("SERVER_PROTOCOL", "HTTP/1.1")
        .env("SERVER_NAME", "127.0.0.1")
        .env("SERVER_PORT", config.port.to_string())
        .env("REQUEST_METHOD", &head.method)
        .env("SCRIPT_NAME", "")
        .env("PATH_INFO", path)
        .env("QUERY_STRING", query)
        .env("REMOTE_ADDR", peer.ip().to_string())
        .env("REMOTE_PORT", peer.port().to_string());
    if let Some(content_type) = head.header("content-type") {
        command.env("CONTENT_TYPE", content_type);
    }
    if body_len > 0 || head.header("content-length").is_some() || head.method == "POST" {
        command.env("CONTENT_LENGTH", body_len.to_string());
    }
    if let Some(user) = user {
        command.env("REMOTE_USER", user).env("AUTH_TYPE", "Basic");
    }
    for (name, value) in &head.headers {
        let skip = [
            "authorization",
            "content-type",
            "content-length",
            "transfer-encoding",
            "connection",
            "expect",
        ];
        if skip
            .iter()
            .any(|skipped| name.eq_ignore_ascii_case(skipped))
        {
            continue;
        }
        // HTTP_CONTENT_ENCODING (gzip bodies), HTTP_GIT_PROTOCOL (v2), ...
        let key = format!("HTTP_{}", name.to_ascii_uppercase().replace('-', "_"));
        command.env(key, value);
    }
    command
}

/// Runs the backend on `body` and streams its answer to the client as the
/// backend writes it (chunked), as a git host does: the client indexes a
/// pack while it is still being written. The request is recorded with the
/// backend's status and stderr before the answer's last chunk (an error's
/// before its head), so a client that has its answer finds it in the log.
async fn answer_from_backend(
    mut command: StdCommand,
    body: Vec<u8>,
    write: &mut (impl AsyncWriteExt + Unpin),
    mut record: HttpRequest,
    log: &Mutex<Vec<HttpRequest>>,
) -> std::io::Result<()> {
    let mut fail = |status: u16, message: String| {
        record.status = status;
        record.backend_stderr = message.clone();
        log.lock().expect("request log lock").push(record.clone());
        message
    };
    command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut command = tokio::process::Command::from(command);
    command.kill_on_drop(true);
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(error) => {
            let message = fail(500, format!("git http-backend did not start: {error}"));
            return respond(write, 500, reason_phrase(500), &[], message.as_bytes()).await;
        }
    };
    let mut stdin = child.stdin.take().expect("stdin is piped");
    let feed = tokio::spawn(async move {
        // The backend may stop reading early (an error): that is its answer.
        stdin.write_all(&body).await.ok();
        stdin.shutdown().await.ok();
    });
    let mut stderr = child.stderr.take().expect("stderr is piped");
    let errors = tokio::spawn(async move {
        let mut text = Vec::new();
        stderr.read_to_end(&mut text).await.ok();
        String::from_utf8_lossy(&text).into_owned()
    });
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout is piped"));

    let mut cgi_head = Vec::new();
    let ended = loop {
        let start = cgi_head.len();
        match stdout.read_until(b'\n', &mut cgi_head).await {
            Ok(0) | Err(_) => break false,
            Ok(_) => {}
        }
        if matches!(&cgi_head[start..], b"\n" | b"\r\n") {
            break true;
        }
        if cgi_head.len() > MAX_HEAD {
            break false;
        }
    };
    let Some(CgiHead {
        status,
        reason,
        headers,
    }) = ended.then(|| parse_cgi_head(&cgi_head)).flatten()
    else {
        let exit = child.wait().await;
        let stderr = errors.await.unwrap_or_default();
        let message = fail(
            502,
            format!("git http-backend ({exit:?}) gave no CGI answer; stderr:\n{stderr}"),
        );
        return respond(write, 502, reason_phrase(502), &[], message.as_bytes()).await;
    };

    if !(200..300).contains(&status) {
        // A client may stop reading at an error's head and go on at once
        // (libgit2 does at a 404): the request is recorded before the
        // answer leaves, so a test that saw the error finds it in the log.
        // Error bodies are short; the whole of it is read first.
        let mut answer = Vec::new();
        stdout.read_to_end(&mut answer).await.ok();
        child.wait().await.ok();
        feed.await.ok();
        record.status = status;
        record.backend_stderr = errors.await.unwrap_or_default();
        log.lock().expect("request log lock").push(record);
        return respond(write, status, &reason, &headers, &answer).await;
    }
    let mut answer_head = format!("HTTP/1.1 {status} {reason}\r\n");
    for (name, value) in &headers {
        answer_head.push_str(&format!("{name}: {value}\r\n"));
    }
    answer_head.push_str("Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n");
    let streamed = async {
        write.write_all(answer_head.as_bytes()).await?;
        let mut buffer = vec![0; 64 * 1024];
        loop {
            let read = stdout.read(&mut buffer).await?;
            if read == 0 {
                return Ok::<_, std::io::Error>(());
            }
            write.write_all(format!("{read:x}\r\n").as_bytes()).await?;
            write.write_all(&buffer[..read]).await?;
            write.write_all(b"\r\n").await?;
        }
    }
    .await;
    if streamed.is_err() {
        // The client left: nobody reads the rest, so the backend would
        // block on a full pipe.
        child.start_kill().ok();
    }
    child.wait().await.ok();
    feed.await.ok();
    record.status = status;
    record.backend_stderr = errors.await.unwrap_or_default();
    log.lock().expect("request log lock").push(record);
    streamed?;
    write.write_all(b"0\r\n\r\n").await?;
    write.flush().await?;
    write.shutdown().await
}

/// The head of a CGI answer: its status, reason and headers.
struct CgiHead {
    status: u16,
    reason: String,
    headers: Vec<(String, String)>,
}

/// Parses a CGI answer's head (up to its empty line); framing headers are
/// left out, the server frames the answer itself.
fn parse_cgi_head(head: &[u8]) -> Option<CgiHead> {
    let head = std::str::from_utf8(head).ok()?;
    let mut status = 200;
    let mut reason = None;
    let mut headers = Vec::new();
    for line in head.lines() {
        let line = line.trim_end_matches('\r');
        if line.is_empty() {
            continue;
        }
        let (name, value) = line.split_once(':')?;
        let (name, value) = (name.trim(), value.trim());
        if name.eq_ignore_ascii_case("status") {
            let (code, text) = value.split_once(' ').unwrap_or((value, ""));
            status = code.parse().ok()?;
            if !text.is_empty() {
                reason = Some(text.to_owned());
            }
        } else if !name.eq_ignore_ascii_case("content-length")
            && !name.eq_ignore_ascii_case("transfer-encoding")
            && !name.eq_ignore_ascii_case("connection")
        {
            headers.push((name.to_owned(), value.to_owned()));
        }
    }
    let reason = reason.unwrap_or_else(|| reason_phrase(status).to_owned());
    Some(CgiHead {
        status,
        reason,
        headers,
    })
}

fn reason_phrase(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        _ => "Unknown",
    }
}

async fn unauthorized(write: &mut (impl AsyncWriteExt + Unpin)) -> std::io::Result<()> {
    let headers = [(
        "WWW-Authenticate".to_owned(),
        "Basic realm=\"git\"".to_owned(),
    )];
    respond(
        write,
        401,
        "Unauthorized",
        &headers,
        b"authentication required\n",
    )
    .await
}

async fn respond(
    write: &mut (impl AsyncWriteExt + Unpin),
    status: u16,
    reason: &str,
    headers: &[(String, String)],
    body: &[u8],
) -> std::io::Result<()> {
    let mut head = format!("HTTP/1.1 {status} {reason}\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    ));
    write.write_all(head.as_bytes()).await?;
    write.write_all(body).await?;
    write.flush().await?;
    write.shutdown().await
}

// --- The servers' own tests -------------------------------------------------

const USER: &str = "herald-bot";
const PASSWORD: &str = "s3cret-token";

/// A repository with a nested file and a symlink, served as `widgets.git`.
fn widgets() -> (TestRepo, Served, String) {
    let repo = TestRepo::new("main");
    repo.write("README.md", "# Widgets\n");
    repo.write("docs/guide/intro.md", "hello from the daemon\n");
    repo.symlink("docs/latest", "guide/intro.md");
    let sha = repo.commit("first");
    let served = Served::new(&repo, "widgets.git");
    (repo, served, sha)
}

/// `len` bytes that are not text and do not compress (xorshift from
/// `seed`), the same for the same seed: a pack of them really is this
/// large.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    let mut bytes = Vec::with_capacity(len + 8);
    while bytes.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        bytes.extend_from_slice(&state.to_le_bytes());
    }
    bytes.truncate(len);
    bytes
}

fn reference<'a>(refs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    refs.iter()
        .find(|(_, reference)| reference == name)
        .map(|(sha, _)| sha.as_str())
}

#[tokio::test]
async fn the_daemon_serves_clones_and_sees_pushes() {
    let (repo, served, first) = widgets();
    let daemon = GitDaemon::serve(served.root());
    let work = tempfile::tempdir().expect("a directory for the clone");

    let url = daemon.url("widgets.git");
    run_git(work.path(), &["clone", "-q", &url, "clone"]);
    let clone = work.path().join("clone");
    let intro =
        std::fs::read_to_string(clone.join("docs/guide/intro.md")).expect("the cloned file exists");
    assert_eq!(intro, "hello from the daemon\n");
    let link = std::fs::read_link(clone.join("docs/latest")).expect("the symlink was cloned");
    assert_eq!(link, Path::new("guide/intro.md"));
    assert_eq!(run_git(&clone, &["rev-parse", "HEAD"]).trim(), first);

    // Advance the remote: the daemon serves the new tip.
    repo.write("README.md", "# Widgets v2\n");
    let second = repo.commit("second");
    served.push(&repo, "HEAD:refs/heads/main", false);
    assert_eq!(served.rev_parse("refs/heads/main"), second);
    let refs = ls_remote(work.path(), &url);
    assert_eq!(reference(&refs, "refs/heads/main"), Some(second.as_str()));
    assert_eq!(reference(&refs, "HEAD"), Some(second.as_str()));

    // Rewrite history with a forced push.
    repo.reset_hard(&first);
    let rewritten = repo.commit("rewritten");
    served.push(&repo, "HEAD:refs/heads/main", true);
    let refs = ls_remote(work.path(), &url);
    assert_eq!(
        reference(&refs, "refs/heads/main"),
        Some(rewritten.as_str())
    );

    // Pushing through the daemon works as well.
    run_git(&clone, &["checkout", "-q", "-b", "feature"]);
    std::fs::write(clone.join("feature.txt"), "new\n").expect("a file in the clone");
    run_git(&clone, &["add", "-A"]);
    run_git(
        &clone,
        &[
            "-c",
            "user.name=T",
            "-c",
            "user.email=t@t.invalid",
            "commit",
            "-q",
            "-m",
            "feature",
        ],
    );
    run_git(&clone, &["push", "-q", &url, "feature"]);
    let feature = run_git(&clone, &["rev-parse", "HEAD"]).trim().to_owned();
    assert_eq!(served.rev_parse("refs/heads/feature"), feature);

    // A repository that is not there is refused.
    let (ok, _, stderr) = try_git(work.path(), &["ls-remote", &daemon.url("missing.git")]);
    assert!(!ok, "a missing repository must not be listed");
    assert!(!stderr.is_empty());
}

#[tokio::test]
async fn the_daemon_stops_on_drop() {
    // The port is free once the daemon is gone, and the suite's other
    // servers bind ports all the time: one of them may take it at once.
    // So "stopped" is asked of the process and of a repository name no
    // other test serves, not of the bare port.
    let repo = TestRepo::new("main");
    repo.write("README.md", "# Only here\n");
    repo.commit("first");
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_nanos();
    let name = format!("stops-on-drop-{}-{nanos}.git", std::process::id());
    let served = Served::new(&repo, &name);
    let daemon = GitDaemon::serve(served.root());
    let url = daemon.url(&name);
    let pid = daemon.pid();
    let (ok, _, stderr) = try_git(served.root(), &["ls-remote", &url]);
    assert!(ok, "the daemon serves before drop: {stderr}");
    assert!(Path::new(&format!("/proc/{pid}")).exists());
    drop(daemon);
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "the daemon's process is killed and reaped on drop"
    );
    let (ok, _, _) = try_git(served.root(), &["ls-remote", &url]);
    assert!(!ok, "the repository is still served after drop");
}

#[tokio::test]
async fn http_requires_the_credentials_and_records_their_use() {
    let (repo, served, first) = widgets();
    let server = HttpGitServer::serve(served.root(), Some((USER, PASSWORD)));
    let work = tempfile::tempdir().expect("a working directory");

    // Without credentials: refused, and git cannot prompt.
    let (ok, _, stderr) = try_git(work.path(), &["ls-remote", &server.url("widgets.git")]);
    assert!(!ok, "ls-remote without credentials must fail");
    assert!(server.requests() >= 1);
    assert_eq!(server.rejected(), server.requests(), "{stderr}");
    assert_eq!(server.authenticated_as(USER), 0);
    let refused = server.request_log();
    assert!(
        refused
            .iter()
            .all(|request| request.authorization.is_none())
    );
    assert_eq!(refused[0].path, "/widgets.git/info/refs");
    assert_eq!(refused[0].query, "service=git-upload-pack");

    // A wrong password: refused too.
    let wrong = server.url_with_credentials("widgets.git", USER, "wrong");
    let (ok, _, _) = try_git(work.path(), &["ls-remote", &wrong]);
    assert!(!ok, "ls-remote with a wrong password must fail");
    assert_eq!(server.authenticated_as(USER), 0);
    assert!(
        server.request_log().iter().any(|request| request.basic
            == Some((USER.to_owned(), "wrong".to_owned()))
            && !request.authorized
            && request.status == 401),
        "the wrong password was presented and refused"
    );

    // The right credentials: listed, and the log shows they were used.
    let before = server.requests();
    let good = server.url_with_credentials("widgets.git", USER, PASSWORD);
    let refs = ls_remote(work.path(), &good);
    assert_eq!(reference(&refs, "refs/heads/main"), Some(first.as_str()));
    assert!(server.requests() > before);
    assert!(server.authenticated_as(USER) >= 1);
    let last = server.request_log().pop().expect("a request was logged");
    assert_eq!(last.status, 200);
    assert!(last.authorized);
    assert!(
        last.authorization
            .as_deref()
            .is_some_and(|header| header.starts_with("Basic ")),
        "{last:?}"
    );

    // Advance the served repository: the HTTP listing follows.
    repo.write("docs/guide/intro.md", "changed\n");
    let second = repo.commit("second");
    served.push(&repo, "HEAD:refs/heads/main", false);
    let refs = ls_remote(work.path(), &good);
    assert_eq!(reference(&refs, "refs/heads/main"), Some(second.as_str()));

    // And a clone over HTTP carries the content.
    run_git(work.path(), &["clone", "-q", &good, "clone"]);
    let intro = std::fs::read_to_string(work.path().join("clone/docs/guide/intro.md"))
        .expect("the cloned file exists");
    assert_eq!(intro, "changed\n");
}

#[tokio::test]
async fn http_takes_chunked_pushes_and_gzipped_fetches() {
    let (repo, served, _) = widgets();
    let server = HttpGitServer::serve(served.root(), Some((USER, PASSWORD)));
    let url = server.url_with_credentials("widgets.git", USER, PASSWORD);

    // A pack above git's 1 MiB post buffer is sent chunked.
    repo.write("blob.bin", noise(3 * 1024 * 1024, 0x9e37_79b9_7f4a_7c15));
    let big = repo.commit("big");
    repo.git(&["push", "-q", &url, "HEAD:refs/heads/main"]);
    assert_eq!(served.rev_parse("refs/heads/main"), big);
    let pushes: Vec<_> = server
        .request_log()
        .into_iter()
        .filter(|request| request.method == "POST" && request.path.ends_with("/git-receive-pack"))
        .collect();
    assert!(
        pushes.iter().any(|request| request.chunked
            && request.body_len > 3 * 1024 * 1024
            && request.status == 200),
        "a chunked receive-pack: {pushes:?}"
    );

    // Many distinct tips make a fetch request above 1 KiB, which git gzips.
    for n in 0..40 {
        repo.checkout_new_branch(&format!("topic-{n}"));
        repo.write("topic.txt", format!("topic {n}\n"));
        repo.commit(&format!("topic {n}"));
        repo.checkout("main");
    }
    repo.git(&["push", "-q", &url, "refs/heads/*:refs/heads/*"]);
    let work = tempfile::tempdir().expect("a directory for the clone");
    run_git(
        work.path(),
        &["clone", "-q", "--mirror", &url, "mirror.git"],
    );
    let mirror = work.path().join("mirror.git");
    assert_eq!(
        run_git(&mirror, &["rev-parse", "refs/heads/topic-39"]).trim(),
        served.rev_parse("refs/heads/topic-39")
    );
    assert_eq!(
        run_git(&mirror, &["rev-parse", "refs/heads/main"]).trim(),
        big
    );
    assert!(
        server
            .request_log()
            .iter()
            .any(|request| request.path.ends_with("/git-upload-pack")
                && request.content_encoding.as_deref() == Some("gzip")
                && request.status == 200),
        "a gzipped upload-pack request: {:?}",
        server.request_log()
    );
}

#[tokio::test]
async fn http_without_credentials_serves_anyone_and_stops_on_drop() {
    let (_repo, served, first) = widgets();
    let server = HttpGitServer::serve(served.root(), None);
    let work = tempfile::tempdir().expect("a working directory");
    let url = server.url("widgets.git");
    let refs = ls_remote(work.path(), &url);
    assert_eq!(reference(&refs, "refs/heads/main"), Some(first.as_str()));
    assert!(server.request_log().iter().all(|request| request.authorized
        && request.authorization.is_none()
        && request.status == 200));

    let (ok, _, _) = try_git(work.path(), &["ls-remote", &server.url("missing.git")]);
    assert!(!ok, "a missing repository must not be listed");
    assert!(
        server
            .request_log()
            .iter()
            .any(|request| request.status == 404)
    );

    drop(server);
    // The port may be handed to another test's listener at once: what must
    // hold is that the repository is no longer served there.
    let (served_after_drop, _, _) = try_git(work.path(), &["ls-remote", &url]);
    assert!(
        !served_after_drop,
        "the repository is still served after drop"
    );
}
