//! The batch API client (Git LFS "Batch API", `download` with the `basic`
//! transfer) on reqwest. The address rule applies when each connection is
//! made, to the LFS server and to every action href and redirect alike:
//! the scheme by `security.allow_http_targets`, an IP literal checked as it
//! is, a name resolved by [`AdmittedResolver`], which keeps only public
//! addresses unless `security.allow_private_targets`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use url::Url;

use super::LfsError;
use super::cache::Incoming;
use super::pointer::Pointer;
use crate::git::{ConnectRule, Credentials};
use crate::net::{AddressRule, AdmittedResolver, Refused};

/// The batch API's media type.
const LFS_JSON: &str = "application/vnd.git-lfs+json";
/// The largest batch answer read (one object's is a few hundred bytes).
const MAX_ANSWER_BYTES: usize = 1 << 20;
/// Downloaded bytes written to the cache a run at a time, on a blocking
/// thread.
const WRITE_RUN_BYTES: usize = 1 << 20;
/// Redirects followed per request, each checked by the rule.
const MAX_REDIRECTS: usize = 5;

/// Where LFS requests may go: the address rule, over https (or http where
/// allowed) only.
#[derive(Debug, Clone, Copy)]
struct Rule(AddressRule);

impl Rule {
    /// Whether a URL may be asked, judged by what is known before
    /// connecting (its scheme, an IP literal); a name's addresses are
    /// judged by the resolver when the connection is made.
    fn admits(self, url: &Url) -> Result<(), LfsError> {
        let refused = |why: &str| Err(LfsError::Refused(why.to_owned()));
        if !matches!(url.scheme(), "https" | "http") {
            return refused("the LFS server's URL is neither https:// nor http://");
        }
        match self.0.url(url) {
            Ok(()) => Ok(()),
            Err(Refused::PlainText) => refused(
                "the LFS server's http:// URL is disabled by this server's configuration \
                 (security.allow_http_targets)",
            ),
            Err(Refused::NoHost) => refused("the LFS server's URL has no host"),
            Err(Refused::NonPublic) => Err(non_public()),
            Err(Refused::Scheme | Refused::Unresolved) => {
                refused("the LFS server's URL is neither https:// nor http://")
            }
        }
    }
}

fn non_public() -> LfsError {
    LfsError::Refused(
        "the LFS server or one of its links is at a non-public address, which is not allowed"
            .to_owned(),
    )
}

/// The batch API's request.
#[derive(Serialize)]
struct BatchRequest<'a> {
    operation: &'static str,
    transfers: [&'static str; 1],
    objects: [ObjectRef<'a>; 1],
    hash_algo: &'static str,
}

#[derive(Serialize)]
struct ObjectRef<'a> {
    oid: &'a str,
    size: u64,
}

#[derive(Deserialize)]
struct BatchAnswer {
    #[serde(default)]
    objects: Vec<ObjectAnswer>,
}

#[derive(Deserialize)]
struct ObjectAnswer {
    oid: String,
    #[serde(default)]
    actions: Option<Actions>,
    #[serde(default)]
    error: Option<ObjectError>,
}

#[derive(Deserialize)]
struct Actions {
    download: Option<Action>,
}

#[derive(Deserialize)]
struct Action {
    href: String,
    #[serde(default)]
    header: HashMap<String, String>,
}

#[derive(Deserialize)]
struct ObjectError {
    code: u16,
    #[serde(default)]
    message: String,
}

/// Where an object's bytes are to be read, as the server said.
pub struct Download {
    href: Url,
    headers: HeaderMap,
}

/// The client: one reqwest client (its connections reused) for every
/// subscriber; each request carries its own subscriber's credential.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    rule: Rule,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("rule", &self.rule)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// A client under `rule`'s address and scheme rule; `timeout` bounds
    /// each request whole (a download included).
    pub fn new(rule: &ConnectRule, timeout: Duration) -> Self {
        let rule = Rule(rule.address());
        let redirects = reqwest::redirect::Policy::custom(move |attempt| {
            if attempt.previous().len() >= MAX_REDIRECTS {
                attempt.error("too many redirects")
            } else if let Err(refusal) = rule.admits(attempt.url()) {
                attempt.error(refusal)
            } else {
                attempt.follow()
            }
        });
        // The one TLS configuration, as webhooks and git use it.
        let tls = crate::tls::client_config(Vec::new())
            .expect("the platform's certificate verifier starts");
        let http = crate::tls::http_client_builder()
            .tls_backend_preconfigured(tls)
            .dns_resolver(Arc::new(AdmittedResolver(rule.0)))
            .redirect(redirects)
            .no_proxy()
            .connect_timeout(timeout.min(Duration::from_secs(30)))
            .timeout(timeout)
            .build()
            .expect("the LFS client's configuration is valid");
        Self { http, rule }
    }

    /// Asks the batch API at `batch` for `pointer`'s object with
    /// `credentials`: where to download it, or why not. Asked for every
    /// delivery, cached or not: the answer is what authorizes the
    /// subscriber for the object.
    pub async fn locate(
        &self,
        batch: &Url,
        credentials: Option<&Credentials>,
        pointer: &Pointer,
    ) -> Result<Download, LfsError> {
        self.rule.admits(batch)?;
        let oid = pointer.oid_hex();
        let body = serde_json::to_vec(&BatchRequest {
            operation: "download",
            transfers: ["basic"],
            objects: [ObjectRef {
                oid: &oid,
                size: pointer.size,
            }],
            hash_algo: "sha256",
        })
        .expect("the batch request serialises");
        let mut request = self
            .http
            .post(batch.clone())
            .header(ACCEPT, LFS_JSON)
            .header(CONTENT_TYPE, LFS_JSON)
            .body(body);
        if let Some(credentials) = credentials {
            request = request.basic_auth(
                credentials.username(),
                Some(credentials.password().expose_secret()),
            );
        }
        let mut answer = request.send().await.map_err(transport)?;
        let status = answer.status();
        if !status.is_success() {
            return Err(by_status(status.as_u16(), "the LFS batch API"));
        }
        let mut bytes = Vec::new();
        while let Some(piece) = answer.chunk().await.map_err(transport)? {
            bytes.extend_from_slice(&piece);
            if bytes.len() > MAX_ANSWER_BYTES {
                return Err(LfsError::Unavailable(
                    "the LFS batch API's answer is too large".to_owned(),
                ));
            }
        }
        let answer: BatchAnswer = serde_json::from_slice(&bytes).map_err(|_| {
            LfsError::Unavailable("the LFS batch API's answer is not valid".to_owned())
        })?;
        let object = answer
            .objects
            .into_iter()
            .find(|object| object.oid == oid)
            .ok_or_else(|| {
                LfsError::Missing(format!("the LFS server did not answer for object {oid}"))
            })?;
        if let Some(error) = object.error {
            tracing::info!(oid = %oid, code = error.code, message = %error.message, "LFS object refused");
            return Err(by_status(error.code, &format!("LFS object {oid}")));
        }
        let action = object
            .actions
            .and_then(|actions| actions.download)
            .ok_or_else(|| {
                LfsError::Missing(format!("the LFS server offers no download of object {oid}"))
            })?;
        let href = Url::parse(&action.href).map_err(|_| {
            LfsError::Unavailable(format!(
                "the LFS server's link for object {oid} is not a URL"
            ))
        })?;
        let mut headers = HeaderMap::new();
        for (name, value) in action.header {
            if let (Ok(name), Ok(value)) = (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_str(&value),
            ) {
                headers.insert(name, value);
            }
        }
        // The subscriber's credential follows an href only to the server
        // it was given for, and only when the action brings none.
        if let Some(credentials) = credentials
            && !headers.contains_key(AUTHORIZATION)
            && same_origin(&href, batch)
        {
            let token = base64::Engine::encode(
                &base64::engine::general_purpose::STANDARD,
                format!(
                    "{}:{}",
                    credentials.username(),
                    credentials.password().expose_secret()
                ),
            );
            if let Ok(mut value) = HeaderValue::from_str(&format!("Basic {token}")) {
                value.set_sensitive(true);
                headers.insert(AUTHORIZATION, value);
            }
        }
        Ok(Download { href, headers })
    }

    /// Downloads an object into `incoming` (checked there against its oid
    /// and size); the cached file's path.
    pub async fn download(
        &self,
        download: Download,
        mut incoming: Incoming,
    ) -> Result<std::path::PathBuf, LfsError> {
        self.rule.admits(&download.href)?;
        let mut answer = self
            .http
            .get(download.href)
            .headers(download.headers)
            .send()
            .await
            .map_err(transport)?;
        let status = answer.status();
        if !status.is_success() {
            return Err(by_status(status.as_u16(), "the LFS object's download"));
        }
        let (size, mut received) = (incoming.size(), 0u64);
        let mut run = Vec::with_capacity(WRITE_RUN_BYTES);
        loop {
            let piece = answer.chunk().await.map_err(transport)?;
            let last = piece.is_none();
            if let Some(piece) = &piece {
                // Cut as soon as it is too long, not a run later.
                received += piece.len() as u64;
                if received > size {
                    return Err(LfsError::Invalid(
                        super::cache::IncomingError::TooLong(size).to_string(),
                    ));
                }
                run.extend_from_slice(piece);
            }
            if run.len() >= WRITE_RUN_BYTES || (last && !run.is_empty()) {
                let written = std::mem::take(&mut run);
                incoming = blocking(move || incoming.write(&written).map(|()| incoming)).await?;
            }
            if last {
                break;
            }
        }
        blocking(move || incoming.finish()).await
    }
}

/// Runs cache work on a blocking thread.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, super::cache::IncomingError> + Send + 'static,
) -> Result<T, LfsError> {
    match tokio::task::spawn_blocking(work).await {
        Ok(done) => done.map_err(|err| match err {
            super::cache::IncomingError::Io(err) => {
                LfsError::Unavailable(format!("the LFS object could not be stored: {err}"))
            }
            // The server's fault, not the network's: asking again costs a
            // whole download, so it is a failed attempt, not a wait.
            err => LfsError::Invalid(err.to_string()),
        }),
        Err(err) => Err(LfsError::Unavailable(format!(
            "the LFS object could not be stored: {err}"
        ))),
    }
}

/// Whether two URLs share scheme, host and port.
pub(super) fn same_origin(a: &Url, b: &Url) -> bool {
    a.scheme() == b.scheme()
        && a.host_str().map(str::to_ascii_lowercase) == b.host_str().map(str::to_ascii_lowercase)
        && a.port_or_known_default() == b.port_or_known_default()
}

/// An HTTP status (of an answer or of one object) as a failure: refused,
/// missing, or worth asking again later.
fn by_status(code: u16, what: &str) -> LfsError {
    match code {
        401 | 403 => LfsError::Refused(format!(
            "{what} refused the subscription's credential (HTTP {code})"
        )),
        404 | 410 | 422 => LfsError::Missing(format!("{what} has no such object (HTTP {code})")),
        _ => LfsError::Unavailable(format!("{what} answered HTTP {code}")),
    }
}

/// A failed exchange: a refusal by the address rule, or a server that
/// could not be reached now. The message names no URL (an href may carry
/// a signature).
fn transport(err: reqwest::Error) -> LfsError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&err);
    while let Some(cause) = source {
        if cause.downcast_ref::<Refused>() == Some(&Refused::NonPublic) {
            return non_public();
        }
        if let Some(LfsError::Refused(message)) = cause.downcast_ref::<LfsError>() {
            return LfsError::Refused(message.clone());
        }
        source = cause.source();
    }
    let why = if err.is_timeout() {
        "timed out"
    } else if err.is_connect() {
        "could not be reached"
    } else if err.is_redirect() {
        "redirected too often"
    } else {
        "failed"
    };
    LfsError::Unavailable(format!("the LFS server {why}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lfs::cache::Cache;

    fn client(allow_private: bool) -> Client {
        let rule = ConnectRule {
            allow_private,
            allow_http: true,
            allow_local: false,
            data_dir: std::env::temp_dir(),
        };
        Client::new(&rule, Duration::from_secs(5))
    }

    /// A loopback listener that counts the connections made to it.
    fn listener() -> (std::net::TcpListener, u16) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a loopback port");
        listener.set_nonblocking(true).expect("non-blocking");
        let port = listener.local_addr().expect("an address").port();
        (listener, port)
    }

    fn connections(listener: &std::net::TcpListener) -> usize {
        std::iter::from_fn(|| listener.accept().ok()).count()
    }

    #[tokio::test]
    async fn links_and_servers_at_private_addresses_are_refused_before_connecting() {
        let (listener, port) = listener();
        let dir = tempfile::tempdir().expect("a temp dir");
        let cache = Cache::new(dir.path().to_owned());
        let pointer = Pointer {
            oid: [7; 32],
            size: 3,
        };
        let strict = client(false);
        // An href the batch API handed out: an IP literal, and a name
        // resolving to loopback (judged when connecting).
        for href in [
            format!("http://127.0.0.1:{port}/objects/x"),
            format!("http://localhost:{port}/objects/x"),
            format!("http://[::ffff:127.0.0.1]:{port}/objects/x"),
        ] {
            let download = Download {
                href: Url::parse(&href).expect("a URL"),
                headers: HeaderMap::new(),
            };
            let server = crate::lfs::cache::Server::of(&download.href);
            let incoming = cache
                .incoming(&server, &pointer.oid_hex(), 3)
                .expect("incoming");
            match strict.download(download, incoming).await {
                Err(LfsError::Refused(why)) => assert!(why.contains("non-public"), "{why}"),
                other => panic!("{href}: {:?}", other.map(|_| ())),
            }
        }
        // The batch API itself.
        let batch = Url::parse(&format!(
            "http://localhost:{port}/r.git/info/lfs/objects/batch"
        ))
        .expect("a URL");
        assert!(matches!(
            strict.locate(&batch, None, &pointer).await,
            Err(LfsError::Refused(_))
        ));
        assert_eq!(
            connections(&listener),
            0,
            "nothing reached the private address"
        );

        // Allowed, the same server is reached (and answers nothing useful).
        drop(listener);
        let open = client(true);
        assert!(matches!(
            open.locate(&batch, None, &pointer).await,
            Err(LfsError::Unavailable(_))
        ));
    }

    #[test]
    fn schemes_other_than_https_and_allowed_http_are_refused() {
        let rule = Rule(AddressRule {
            allow_private: false,
            allow_http: false,
        });
        for url in [
            "http://lfs.example.com/x",
            "ftp://lfs.example.com/x",
            "file:///etc/passwd",
        ] {
            assert!(
                matches!(
                    rule.admits(&Url::parse(url).expect("a URL")),
                    Err(LfsError::Refused(_))
                ),
                "{url}"
            );
        }
        assert!(
            rule.admits(&Url::parse("https://lfs.example.com/x").expect("a URL"))
                .is_ok()
        );
    }
}
