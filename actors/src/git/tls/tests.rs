//! Git over https end to end: libgit2 through the egress proxy and this
//! stream to a rustls server on loopback, in front of `git http-backend`.

use std::cell::RefCell;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::CertificateDer;

use crate::git::fixtures::{commit, git, source_repository};
use crate::git::{ConnectRule, GitFailure, LowSpeed, Mirror, RemoteSpec, probe};

use super::CertificateRefusal;
use crate::test_support::tls::authority_and_localhost;

thread_local! {
    /// Roots a test trusts besides the platform's, for the connections
    /// made on its thread (libgit2 works on the caller's thread).
    pub(super) static EXTRA_ROOTS: RefCell<Option<Vec<CertificateDer<'static>>>> =
        const { RefCell::new(None) };
}

/// Runs `body` with `root` trusted on this thread.
fn trusting<T>(root: &CertificateDer<'static>, body: impl FnOnce() -> T) -> T {
    EXTRA_ROOTS.with(|roots| *roots.borrow_mut() = Some(vec![root.clone()]));
    let result = body();
    EXTRA_ROOTS.with(|roots| *roots.borrow_mut() = None);
    result
}

/// Smart HTTP over TLS for the bare repositories under `root`: one request
/// per connection, each answered by `git http-backend` as CGI. Returns the
/// port; the server lives as long as the test process.
fn serve_https(root: PathBuf, tls: Arc<rustls::ServerConfig>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("a port");
    let port = listener.local_addr().expect("bound").port();
    std::thread::spawn(move || {
        for tcp in listener.incoming() {
            let Ok(tcp) = tcp else { continue };
            let (root, tls) = (root.clone(), Arc::clone(&tls));
            std::thread::spawn(move || {
                let conn = rustls::ServerConnection::new(tls).expect("a TLS connection");
                let mut stream = rustls::StreamOwned::new(conn, tcp);
                // A refused handshake ends here, as the client wants.
                if let Some(answer) = answer(&mut stream, &root) {
                    let _ = stream.write_all(&answer);
                    stream.conn.send_close_notify();
                    let _ = stream.flush();
                }
            });
        }
    });
    port
}

/// Reads one request and runs `git http-backend` for it.
fn answer(stream: &mut impl Read, root: &Path) -> Option<Vec<u8>> {
    let mut received = Vec::new();
    let mut buffer = [0u8; 16 * 1024];
    let (head_len, method, target, headers) = loop {
        let n = stream.read(&mut buffer).ok()?;
        if n == 0 {
            return None;
        }
        received.extend_from_slice(&buffer[..n]);
        let mut fields = [httparse::EMPTY_HEADER; 32];
        let mut request = httparse::Request::new(&mut fields);
        if let httparse::Status::Complete(len) = request.parse(&received).ok()? {
            let headers: Vec<(String, String)> = request
                .headers
                .iter()
                .map(|h| {
                    (
                        h.name.to_ascii_lowercase(),
                        String::from_utf8_lossy(h.value).into_owned(),
                    )
                })
                .collect();
            break (
                len,
                request.method?.to_owned(),
                request.path?.to_owned(),
                headers,
            );
        }
    };
    let header = |name: &str| {
        headers
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.clone())
    };
    let length: usize = header("content-length").map_or(0, |l| l.parse().unwrap_or(0));
    let mut body = received.split_off(head_len);
    while body.len() < length {
        let n = stream.read(&mut buffer).ok()?;
        if n == 0 {
            return None;
        }
        body.extend_from_slice(&buffer[..n]);
    }
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let mut backend = Command::new("git");
    backend
        .arg("http-backend")
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("HOME", root)
        .env("GIT_PROJECT_ROOT", root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("REQUEST_METHOD", &method)
        .env("PATH_INFO", path)
        .env("QUERY_STRING", query)
        .env("REMOTE_ADDR", "127.0.0.1")
        .env("CONTENT_LENGTH", body.len().to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    for (name, variable) in [
        ("content-type", "CONTENT_TYPE"),
        ("content-encoding", "HTTP_CONTENT_ENCODING"),
        ("git-protocol", "GIT_PROTOCOL"),
    ] {
        if let Some(value) = header(name) {
            backend.env(variable, value);
        }
    }
    let mut child = backend.spawn().expect("git http-backend runs");
    let mut stdin = child.stdin.take().expect("its input");
    let feeding = std::thread::spawn(move || stdin.write_all(&body));
    let output = child.wait_with_output().expect("its output");
    let _ = feeding.join();
    let split = output.stdout.windows(4).position(|w| w == b"\r\n\r\n")?;
    let cgi_head = String::from_utf8_lossy(&output.stdout[..split]).into_owned();
    let cgi_body = &output.stdout[split + 4..];
    let mut status = "200 OK".to_owned();
    let mut response_headers = String::new();
    for line in cgi_head.lines() {
        match line.split_once(':') {
            Some((name, value)) if name.eq_ignore_ascii_case("status") => {
                status = value.trim().to_owned();
            }
            _ => {
                response_headers.push_str(line);
                response_headers.push_str("\r\n");
            }
        }
    }
    let mut answer = format!(
        "HTTP/1.1 {status}\r\n{response_headers}Content-Length: {}\r\nConnection: close\r\n\r\n",
        cgi_body.len()
    )
    .into_bytes();
    answer.extend_from_slice(cgi_body);
    Some(answer)
}

/// A bare repository `r.git` under a temporary root, with one commit on
/// `main`; returns the root's guard, its path and the commit.
fn served_repository() -> (tempfile::TempDir, PathBuf, String) {
    let (dir, source) = source_repository();
    let head = commit(&source, "README.md", "over TLS\n");
    let root = dir.path().join("served");
    std::fs::create_dir(&root).expect("a root");
    let bare = root.join("r.git");
    git(
        dir.path(),
        &[
            "clone",
            "-q",
            "--bare",
            &source.display().to_string(),
            &bare.display().to_string(),
        ],
    );
    (dir, root, head)
}

fn spec(url: String) -> RemoteSpec {
    RemoteSpec {
        url,
        credentials: None,
        timeout: Duration::from_secs(20),
        low_speed: LowSpeed::default(),
        rule: ConnectRule {
            allow_private: true,
            allow_http: false,
            allow_local: false,
            data_dir: std::env::temp_dir().join("herald-git-tls-tests-data"),
        },
    }
}

#[test]
fn https_remotes_are_read_over_rustls_when_their_authority_is_trusted() {
    let (dir, root, head) = served_repository();
    let (authority, tls) = authority_and_localhost();
    let port = serve_https(root, tls);
    let remote = spec(format!("https://localhost:{port}/r.git"));

    let found = trusting(&authority, || probe(&remote, None)).expect("the head over TLS");
    assert_eq!(found.branch, "main");
    assert_eq!(found.commit.to_string(), head);

    let mirror = Mirror::open(&dir.path().join("mirror.git")).expect("a mirror");
    let fetched = trusting(&authority, || mirror.fetch(&remote, "main")).expect("fetched");
    assert_eq!(fetched.to_string(), head);
    let tree = mirror
        .repo()
        .find_commit(fetched)
        .and_then(|commit| commit.tree())
        .expect("the fetched tree");
    let readme = tree.get_name("README.md").expect("the file");
    let blob = mirror.repo().find_blob(readme.id()).expect("its content");
    assert_eq!(blob.content(), b"over TLS\n");
}

#[test]
fn an_untrusted_or_misnamed_certificate_is_refused_as_such() {
    let (_dir, root, _head) = served_repository();
    let (authority, tls) = authority_and_localhost();
    let (stranger, _) = authority_and_localhost();
    let port = serve_https(root, tls);

    // Another authority is trusted, not the server's.
    let remote = spec(format!("https://localhost:{port}/r.git"));
    let err = trusting(&stranger, || probe(&remote, None)).expect_err("an unknown issuer");
    assert_eq!(err.failure, GitFailure::Network);
    assert_eq!(err.message, CertificateRefusal::UnknownIssuer.message());
    assert!(!err.message.contains("could not be reached"), "{err}");

    // The right authority, but the certificate names `localhost` only.
    let remote = spec(format!("https://127.0.0.1:{port}/r.git"));
    let err = trusting(&authority, || probe(&remote, None)).expect_err("another name");
    assert_eq!(err.failure, GitFailure::Network);
    assert_eq!(err.message, CertificateRefusal::WrongName.message());
}

#[test]
fn a_certificate_error_keeps_its_code_through_libgit2() {
    let (_dir, root, _head) = served_repository();
    let (_, tls) = authority_and_localhost();
    let (stranger, _) = authority_and_localhost();
    let port = serve_https(root, tls);
    let remote = spec(format!("https://localhost:{port}/r.git"));
    let route = crate::git::remote::Route::open(&remote).expect("a route");
    let _operation = route.begin(&remote);
    let mut detached =
        git2::Remote::create_detached(remote.url.as_str()).expect("a detached remote");
    let err = trusting(&stranger, || {
        detached
            .connect_auth(git2::Direction::Fetch, None, Some(route.proxy_options()))
            .map(|_| ())
    })
    .expect_err("an unknown issuer");
    assert_eq!(err.code(), git2::ErrorCode::Certificate, "{err}");
    assert_eq!(err.class(), git2::ErrorClass::Ssl, "{err}");
}

#[test]
fn a_server_that_speaks_no_tls_fails_without_waiting_for_the_deadline() {
    let origin = TcpListener::bind("127.0.0.1:0").expect("a port");
    let port = origin.local_addr().expect("bound").port();
    std::thread::spawn(move || {
        for conn in origin.incoming() {
            let Ok(mut conn) = conn else { continue };
            let _ = conn.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n");
            let _ = conn.shutdown(std::net::Shutdown::Both);
        }
    });
    let started = std::time::Instant::now();
    let err =
        probe(&spec(format!("https://localhost:{port}/r.git")), None).expect_err("no TLS there");
    assert_eq!(err.failure, GitFailure::Network, "{err}");
    assert!(started.elapsed() < Duration::from_secs(10), "{err}");
}

#[test]
fn a_server_silent_during_the_handshake_is_cut_at_the_deadline() {
    // Accepts, reads the client's hello and never answers.
    let silent = TcpListener::bind("127.0.0.1:0").expect("a port");
    let port = silent.local_addr().expect("bound").port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for conn in silent.incoming() {
            let Ok(mut conn) = conn else { continue };
            let mut hello = [0u8; 512];
            let _ = conn.read(&mut hello);
            held.push(conn);
        }
    });
    let mut remote = spec(format!("https://localhost:{port}/r.git"));
    remote.timeout = Duration::from_secs(1);
    let started = std::time::Instant::now();
    let err = probe(&remote, None).expect_err("no handshake");
    assert_eq!(err.failure, GitFailure::Timeout, "{err}");
    assert!(err.message.contains("did not answer in time"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(10), "{err}");
}

#[test]
fn without_a_proxy_the_stream_opens_and_owns_its_own_socket() {
    // Herald always tunnels https through its egress proxy (`wrap`); a
    // connection libgit2 makes directly goes through `init`.
    let (_dir, root, head) = served_repository();
    let (authority, tls) = authority_and_localhost();
    let port = serve_https(root, tls);
    super::register();
    let _operation = crate::git::socket::Operation::begin(
        Duration::from_secs(20),
        LowSpeed::default(),
        crate::git::socket::Gate::Open,
    );
    let mut remote = git2::Remote::create_detached(format!("https://localhost:{port}/r.git"))
        .expect("a detached remote");
    let heads = trusting(&authority, || {
        remote.connect(git2::Direction::Fetch)?;
        let heads: Vec<(String, String)> = remote
            .list()?
            .iter()
            .map(|h| (h.name().to_owned(), h.oid().to_string()))
            .collect();
        remote.disconnect()?;
        Ok::<_, git2::Error>(heads)
    })
    .expect("the refs over TLS");
    assert!(
        heads.contains(&("refs/heads/main".to_owned(), head)),
        "{heads:?}"
    );
}
