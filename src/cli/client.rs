//! What the client commands (`herald app`, `herald repo`, `herald events`)
//! share: where Herald runs and which token to send (`--url` / `--token`,
//! `HERALD_URL` / `HERALD_TOKEN`), one HTTP client (under a [`Guard`] for
//! `herald listen --pull`: no redirects, Herald's address under the address
//! rule), the API's errors turned into messages that say what to do, and
//! the two outputs: tables for people, the server's JSON (`--json`) for
//! scripts.
//!
//! The client commands never read Herald's server configuration: they only
//! speak HTTP to a running server. The token is held as a secret and never
//! printed, not even in an error.

use std::convert::Infallible;
use std::fmt;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use reqwest::{Method, StatusCode};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::{Value, json};
use url::Url;

mod git_token;
mod output;

pub use git_token::{GitTokenSource, read_stdin};
pub use output::{clip, or_dash, parse, print_fields, print_json, print_table, table};

/// How long one request may take, connecting included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Where Herald runs, how to authenticate, and how to print.
#[derive(Debug, Args)]
pub struct Connection {
    /// Herald's address.
    #[arg(
        long,
        global = true,
        help_heading = "Connection",
        env = "HERALD_URL",
        default_value = "http://127.0.0.1:8080",
        value_name = "URL",
        value_parser = server_url
    )]
    pub url: Url,
    /// The bearer token: the admin token for `herald app …`, an app's token
    /// (from `herald app onboard`) for `herald repo …` and `herald events …`.
    /// Prefer the environment variable: a flag shows in `ps`.
    #[arg(
        long,
        global = true,
        help_heading = "Connection",
        env = "HERALD_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN",
        value_parser = secret_arg
    )]
    pub token: Option<SecretString>,
    /// Print the server's JSON instead of tables (stable, for scripts).
    /// Errors then go to stderr as `{"error", "code"}` too.
    #[arg(long, global = true, help_heading = "Connection")]
    pub json: bool,
}

/// Wraps the token at once, so clap never echoes it in an error.
fn secret_arg(raw: &str) -> Result<SecretString, Infallible> {
    Ok(SecretString::from(raw.trim()))
}

fn server_url(raw: &str) -> Result<Url, String> {
    http_url(raw, "http://127.0.0.1:8080")
}

/// An http(s) URL that path segments can be added to, without a query or
/// fragment; `example` goes in the error.
pub fn http_url(raw: &str, example: &str) -> Result<Url, String> {
    let url = Url::parse(raw.trim()).map_err(|err| format!("{err} (expected e.g. {example})"))?;
    if !matches!(url.scheme(), "http" | "https") || url.cannot_be_a_base() {
        return Err(format!(
            "must be an http:// or https:// address, e.g. {example}"
        ));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err("must not carry a query or fragment".into());
    }
    Ok(url)
}

/// A URL fit to print: without user name or password.
pub fn shown(url: &Url) -> String {
    let mut url = url.clone();
    let _ = url.set_username("");
    let _ = url.set_password(None);
    url.to_string()
}

/// How a command reaches Herald when the server's answers must not send it
/// elsewhere (`herald listen --pull`, which runs unattended for as long as
/// the stream lasts): no redirect is followed, and Herald's address obeys
/// the rule Herald's own requests do, public addresses only (judged when
/// each connection is made, so a name cannot move to a private address
/// later), unless `allow_private`.
#[derive(Debug, Clone, Copy)]
pub struct Guard {
    /// Herald may be on loopback or a private network (the user's own).
    pub allow_private: bool,
}

impl Guard {
    /// `builder` under the guard: its redirects and its addresses.
    pub fn apply(self, builder: reqwest::ClientBuilder) -> reqwest::ClientBuilder {
        builder
            .redirect(reqwest::redirect::Policy::none())
            .dns_resolver(Arc::new(actors::net::AdmittedResolver(self.rule())))
    }

    /// Refuses a URL whose host is an IP literal the rule refuses (a name
    /// is judged when it is resolved, by [`Self::apply`]'s resolver).
    fn admits(self, url: &Url) -> Result<(), CliError> {
        self.rule()
            .host(url)
            .map_err(|_| CliError::NotPublic { url: shown(url) })
    }

    /// The address rule's address part (the command line's own URLs may be
    /// `http://`: Herald and the forward target are the user's own).
    fn rule(self) -> actors::net::AddressRule {
        actors::net::AddressRule {
            allow_private: self.allow_private,
            allow_http: true,
        }
    }
}

/// Which token a command needs: it decides the hints of auth errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Audience {
    /// The admin API (`herald app onboard|list|show|delete`).
    Admin,
    /// The client API (`herald repo …`, `herald events …`, the app's own
    /// settings).
    App,
}

impl Audience {
    fn token_hint(self) -> &'static str {
        match self {
            Audience::Admin => {
                "`herald app` commands take Herald's admin token (admin.token in the \
                 configuration, or the admin.token file Herald wrote into its data \
                 directory on first start)"
            }
            Audience::App => {
                "`herald repo` and `herald events` take an app's token, as printed once \
                 by `herald app onboard`"
            }
        }
    }

    fn ids_hint(self) -> &'static str {
        match self {
            Audience::Admin => "`herald app list` shows the apps' ids",
            Audience::App => {
                "`herald repo list` and `herald events list` show the ids this app's token can see"
            }
        }
    }
}

/// Why a client command failed. Every message says what to do next.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("no token given: set HERALD_TOKEN (or pass --token); {}", .0.token_hint())]
    NoToken(Audience),
    #[error(
        "cannot reach Herald at {url}: is it running? Start it with `herald serve`, \
         or point HERALD_URL / --url at where it runs"
    )]
    Unreachable { url: String },
    #[error(
        "Herald at {url} did not answer within {} s: check that it is healthy \
         (GET /ready) and try again",
        REQUEST_TIMEOUT.as_secs()
    )]
    TimedOut { url: String },
    #[error("the request to {url} failed: {message}")]
    Transport { url: String, message: String },
    #[error(
        "{url} did not answer like Herald (HTTP {status}): check that HERALD_URL / --url \
         points at Herald"
    )]
    NotHerald { url: String, status: u16 },
    #[error(
        "Herald at {url} answered {route} with a redirect (HTTP {status}{location}), which \
         is not followed: point HERALD_URL / --url at the address that answers itself"
    )]
    Redirected {
        url: String,
        route: String,
        status: u16,
        /// ` to URL` (without credentials), or empty.
        location: String,
    },
    #[error(
        "Herald at {url} is not at a public address (loopback, a private network, …): \
         this command connects only to public addresses, as Herald's own requests do; \
         pass --allow-private-url if it is your own Herald on this machine or network"
    )]
    NotPublic { url: String },
    /// An error answer of the API, with what to do about it.
    #[error("{message}")]
    Api {
        status: u16,
        code: String,
        message: String,
    },
    /// Bad local input (an unreadable token file, a missing confirmation).
    #[error("{0}")]
    Input(String),
    #[error("{0}")]
    WaitFailed(String),
    #[error("{0}")]
    WaitTimeout(String),
}

impl CliError {
    /// A stable code for scripts: the server's own for API errors.
    pub fn code(&self) -> &str {
        match self {
            CliError::NoToken(_) => "no_token",
            CliError::Unreachable { .. } => "unreachable",
            CliError::TimedOut { .. } => "timeout",
            CliError::Transport { .. } => "transport",
            CliError::NotHerald { .. } => "not_herald",
            CliError::Redirected { .. } => "redirected",
            CliError::NotPublic { .. } => "not_public",
            CliError::Api { code, .. } => code,
            CliError::Input(_) => "invalid_input",
            CliError::WaitFailed(_) => "sync_failed",
            CliError::WaitTimeout(_) => "wait_timeout",
        }
    }

    /// The process exit code (documented in docs/cli.md): 3 Herald could not
    /// be reached, 4 the token was refused or missing, 5 not found, 6 a wait
    /// ended in failure or timed out, 1 anything else (2 is clap's usage
    /// error).
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Unreachable { .. }
            | CliError::TimedOut { .. }
            | CliError::Transport { .. }
            | CliError::NotHerald { .. }
            | CliError::Redirected { .. }
            | CliError::NotPublic { .. } => 3,
            CliError::NoToken(_) => 4,
            CliError::Api {
                status: 401 | 403, ..
            } => 4,
            CliError::Api { status: 404, .. } => 5,
            CliError::WaitFailed(_) | CliError::WaitTimeout(_) => 6,
            CliError::Api { .. } | CliError::Input(_) => 1,
        }
    }
}

/// A client command's failure with the output mode it ran in, carried through
/// `anyhow` to `main`, which prints it with [`Failure::report`].
#[derive(Debug)]
pub struct Failure {
    pub error: CliError,
    pub json: bool,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.error.fmt(f)
    }
}

impl std::error::Error for Failure {}

impl Failure {
    /// Prints the error to stderr (as `{"error", "code"}` under `--json`) and
    /// returns the exit code.
    pub fn report(&self) -> ExitCode {
        if self.json {
            let mut body = json!({"error": self.error.to_string(), "code": self.error.code()});
            if let CliError::Api { status, .. } = &self.error {
                body["status"] = json!(status);
            }
            eprintln!("{body}");
        } else {
            eprintln!("herald: {}", self.error);
        }
        ExitCode::from(self.error.exit_code())
    }
}

/// The error body of the API.
#[derive(Debug, Deserialize)]
struct ErrorBody {
    error: String,
    code: String,
}

/// One HTTP client for one command, bound to a server and a token.
pub struct Api {
    http: reqwest::Client,
    base: Url,
    token: Option<SecretString>,
    audience: Audience,
}

impl Api {
    pub fn new(connection: &Connection, audience: Audience) -> Result<Self, CliError> {
        Self::build(connection, audience, None)
    }

    /// An API client under `guard`: no redirects, and Herald's address
    /// under the address rule (an IP literal refused here, a name when it
    /// is resolved).
    pub fn guarded(
        connection: &Connection,
        audience: Audience,
        guard: Guard,
    ) -> Result<Self, CliError> {
        guard.admits(&connection.url)?;
        Self::build(connection, audience, Some(guard))
    }

    fn build(
        connection: &Connection,
        audience: Audience,
        guard: Option<Guard>,
    ) -> Result<Self, CliError> {
        let builder = actors::tls::http_client_builder()
            .timeout(REQUEST_TIMEOUT)
            // Herald closes a connection idle for server.header_read_timeout
            // (10 s by default); one reused just as it closes fails. Let them
            // go well before (`listen --pull` acks at the pace of events).
            .pool_idle_timeout(Duration::from_secs(5))
            .user_agent(concat!("herald-cli/", env!("CARGO_PKG_VERSION")));
        let builder = match guard {
            Some(guard) => guard.apply(builder),
            None => builder,
        };
        let http = builder.build().map_err(|err| CliError::Transport {
            url: shown(&connection.url),
            message: err.to_string(),
        })?;
        Ok(Self {
            http,
            base: connection.url.clone(),
            // An empty HERALD_TOKEN is no token.
            token: connection
                .token
                .clone()
                .filter(|token| !token.expose_secret().is_empty()),
            audience,
        })
    }

    /// The URL of a path given as segments: each one is percent-encoded, so
    /// an id typed by the user can never reach another route.
    fn url(&self, segments: &[&str], query: &[(&str, String)]) -> Url {
        let mut url = self.base.clone();
        url.path_segments_mut()
            .expect("checked when parsed: the URL can be a base")
            .pop_if_empty()
            .extend(segments);
        if !query.is_empty() {
            url.query_pairs_mut()
                .extend_pairs(query.iter().map(|(k, v)| (*k, v.as_str())));
        }
        url
    }

    pub async fn get(
        &self,
        segments: &[&str],
        query: &[(&str, String)],
    ) -> Result<Value, CliError> {
        let url = self.url(segments, query);
        Ok(self
            .send(Method::GET, url, None)
            .await?
            .unwrap_or(Value::Null))
    }

    /// Sends a request; `None` when the answer has no body (204).
    pub async fn call(
        &self,
        method: Method,
        segments: &[&str],
        body: Option<&Value>,
    ) -> Result<Option<Value>, CliError> {
        let url = self.url(segments, &[]);
        self.send(method, url, body).await
    }

    async fn send(
        &self,
        method: Method,
        url: Url,
        body: Option<&Value>,
    ) -> Result<Option<Value>, CliError> {
        let token = self.token()?;
        let target = shown(&self.base);
        let route = format!("{method} {}", url.path());
        let mut request = self
            .http
            .request(method, url)
            .bearer_auth(token.expose_secret());
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request
            .send()
            .await
            .map_err(|err| transport_error(err, &target))?;
        let status = response.status();
        if let Some(redirected) = redirect(&response, &route, &target) {
            return Err(redirected);
        }
        let text = response
            .text()
            .await
            .map_err(|err| transport_error(err, &target))?;
        if status.is_success() {
            if text.trim().is_empty() {
                return Ok(None);
            }
            return serde_json::from_str(&text)
                .map(Some)
                .map_err(|_| CliError::NotHerald {
                    url: target,
                    status: status.as_u16(),
                });
        }
        Err(self.refusal(status, &text, &route, &target))
    }

    /// Opens a GET whose answer is read as it comes (an event stream):
    /// `http` is a client of the caller's, without a total timeout. A 2xx
    /// is handed back unread; any other answer becomes the same error as a
    /// call's.
    pub async fn open(
        &self,
        http: &reqwest::Client,
        segments: &[&str],
        headers: reqwest::header::HeaderMap,
    ) -> Result<reqwest::Response, CliError> {
        let token = self.token()?;
        let url = self.url(segments, &[]);
        let target = shown(&self.base);
        let route = format!("GET {}", url.path());
        let response = http
            .get(url)
            .bearer_auth(token.expose_secret())
            .headers(headers)
            .send()
            .await
            .map_err(|err| transport_error(err, &target))?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        if let Some(redirected) = redirect(&response, &route, &target) {
            return Err(redirected);
        }
        let text = response
            .text()
            .await
            .map_err(|err| transport_error(err, &target))?;
        Err(self.refusal(status, &text, &route, &target))
    }

    fn token(&self) -> Result<&SecretString, CliError> {
        self.token.as_ref().ok_or(CliError::NoToken(self.audience))
    }

    /// A non-2xx answer: the API's error with a hint, or "not Herald" when
    /// the body is not the API's error shape.
    fn refusal(&self, status: StatusCode, text: &str, route: &str, target: &str) -> CliError {
        match serde_json::from_str::<ErrorBody>(text) {
            Ok(error) => api_error(status, error, self.audience, route, target),
            Err(_) => CliError::NotHerald {
                url: target.to_owned(),
                status: status.as_u16(),
            },
        }
    }
}

/// A redirect Herald answered (a 3xx with a `Location`), which the client
/// did not follow, as an error that says where it pointed.
fn redirect(response: &reqwest::Response, route: &str, target: &str) -> Option<CliError> {
    let status = response.status();
    let location = response.headers().get(reqwest::header::LOCATION)?;
    if !status.is_redirection() {
        return None;
    }
    let location = location
        .to_str()
        .ok()
        .and_then(|location| response.url().join(location).ok())
        .map(|url| format!(" to {}", clip(&shown(&url), 200)))
        .unwrap_or_default();
    Some(CliError::Redirected {
        url: target.to_owned(),
        route: route.to_owned(),
        status: status.as_u16(),
        location,
    })
}

/// A request that got no answer, by why.
fn transport_error(err: reqwest::Error, target: &str) -> CliError {
    let refused = actors::net::caused_by(&err, actors::net::Refused::NonPublic);
    if refused {
        CliError::NotPublic {
            url: target.to_owned(),
        }
    } else if err.is_connect() {
        CliError::Unreachable {
            url: target.to_owned(),
        }
    } else if err.is_timeout() {
        CliError::TimedOut {
            url: target.to_owned(),
        }
    } else {
        CliError::Transport {
            url: target.to_owned(),
            message: err.without_url().to_string(),
        }
    }
}

/// The server's error, with what to do about it.
fn api_error(
    status: StatusCode,
    body: ErrorBody,
    audience: Audience,
    route: &str,
    url: &str,
) -> CliError {
    let ErrorBody { error, code } = body;
    if let Some(hint) = git_access_hint(&code) {
        return CliError::Api {
            status: status.as_u16(),
            message: format!("{}. {hint}", error.trim_end_matches('.')),
            code,
        };
    }
    let message = match status.as_u16() {
        401 => format!(
            "Herald refused the token ({error}): check HERALD_TOKEN / --token; {}",
            audience.token_hint()
        ),
        403 => format!("{error}: this token may not do that"),
        // Warp's answer for a route that does not exist.
        404 if error == "Not found" => format!(
            "Herald at {url} does not offer {route}: is it an older version, or does \
             HERALD_URL point elsewhere?"
        ),
        404 => format!("{error}: check the id; {}", audience.ids_hint()),
        400 | 422 => format!("Herald rejected the request: {error}"),
        429 => format!("{error}: Herald is rate limiting this client; wait a little and try again"),
        500..=599 => format!(
            "Herald could not complete the request (HTTP {}, {code}): {error}; the \
             cause is in the server's logs",
            status.as_u16()
        ),
        _ => error,
    };
    CliError::Api {
        status: status.as_u16(),
        code,
        message,
    }
}

/// What to do when Herald could not prove, before watching a repository or
/// changing its token, that the git token reads it (`herald repo add`,
/// `herald repo set-token`).
fn git_access_hint(code: &str) -> Option<&'static str> {
    match code {
        "repository_not_found" => Some(
            "Check the URL and the branch (--branch), and for a private repository \
             the git token; nothing was changed",
        ),
        "repository_access_denied" => Some(
            "Give a git token that can read the repository: `herald repo add URL \
             --git-token-env VAR` (or --git-token-file FILE, `-` for standard input), or pipe \
             it to `herald repo set-token ID` for a repository already watched; nothing was \
             changed",
        ),
        "repository_unreachable" => Some(
            "Herald could not reach the git remote: check the URL, that the remote is up and \
             that Herald's network reaches it, then try again; nothing was changed",
        ),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(base: &str) -> Api {
        Api {
            http: actors::tls::http_client_builder()
                .build()
                .expect("an HTTP client"),
            base: server_url(base).expect("a valid url"),
            token: None,
            audience: Audience::App,
        }
    }

    #[test]
    fn ids_are_path_segments_never_routes() {
        let api = api("http://127.0.0.1:8080");
        assert_eq!(
            api.url(&["api", "repositories", "../../admin/api/apps"], &[])
                .as_str(),
            "http://127.0.0.1:8080/api/repositories/..%2F..%2Fadmin%2Fapi%2Fapps"
        );
        let behind_proxy = self::api("https://example.com/herald/");
        assert_eq!(
            behind_proxy
                .url(&["api", "events"], &[("status", "dead".into())])
                .as_str(),
            "https://example.com/herald/api/events?status=dead"
        );
    }

    #[test]
    fn server_urls_must_be_http() {
        assert!(server_url("ftp://example.com").is_err());
        assert!(server_url("localhost:8080").is_err());
        assert!(server_url("http://h/?a=b").is_err());
        assert!(server_url("https://h.example/").is_ok());
    }

    #[test]
    fn printed_urls_hide_credentials() {
        let url = server_url("https://user:secret@h.example/").expect("valid");
        assert_eq!(shown(&url), "https://h.example/");
    }

    #[test]
    fn clipping_keeps_one_short_line() {
        assert_eq!(clip("short", 10), "short");
        assert_eq!(clip("a longer line", 5), "a lo…");
        assert_eq!(clip("two\nlines", 10), "two…");
    }

    #[test]
    fn errors_say_what_to_do() {
        let body = |error: &str, code: &str| ErrorBody {
            error: error.into(),
            code: code.into(),
        };
        let unauthorized = api_error(
            StatusCode::UNAUTHORIZED,
            body("Invalid token", "unauthorized"),
            Audience::Admin,
            "GET /admin/api/apps",
            "http://h/",
        );
        assert!(unauthorized.to_string().contains("HERALD_TOKEN"));
        assert!(unauthorized.to_string().contains("admin token"));
        assert_eq!(unauthorized.exit_code(), 4);
        let missing_route = api_error(
            StatusCode::NOT_FOUND,
            body("Not found", "not_found"),
            Audience::App,
            "PATCH /api/app",
            "http://h/",
        );
        assert!(
            missing_route
                .to_string()
                .contains("does not offer PATCH /api/app")
        );
        let unknown_id = api_error(
            StatusCode::NOT_FOUND,
            body("Event not found", "not_found"),
            Audience::App,
            "GET /api/events/evt_x",
            "http://h/",
        );
        assert!(unknown_id.to_string().contains("herald events list"));
        assert_eq!(unknown_id.exit_code(), 5);
        assert_eq!(unknown_id.code(), "not_found");
    }

    #[test]
    fn a_repository_git_cannot_read_says_what_to_do() {
        let error = |status: StatusCode, code: &str| {
            api_error(
                status,
                ErrorBody {
                    error: "what the server said".into(),
                    code: code.into(),
                },
                Audience::App,
                "POST /api/repositories",
                "http://h/",
            )
        };
        let missing = error(StatusCode::NOT_FOUND, "repository_not_found");
        assert!(missing.to_string().starts_with("what the server said. "));
        assert!(missing.to_string().contains("--branch"), "{missing}");
        assert!(!missing.to_string().contains("check the id"), "{missing}");
        assert_eq!(missing.exit_code(), 5);
        assert_eq!(missing.code(), "repository_not_found");
        let denied = error(StatusCode::UNPROCESSABLE_ENTITY, "repository_access_denied");
        assert!(denied.to_string().contains("--git-token-env"), "{denied}");
        assert!(
            denied.to_string().contains("herald repo set-token"),
            "{denied}"
        );
        assert_eq!(denied.exit_code(), 1);
        let unreachable = error(StatusCode::BAD_GATEWAY, "repository_unreachable");
        assert!(
            unreachable
                .to_string()
                .contains("could not reach the git remote"),
            "{unreachable}"
        );
        assert!(
            !unreachable.to_string().contains("server's logs"),
            "{unreachable}"
        );
        assert_eq!(unreachable.exit_code(), 1);
        assert_eq!(unreachable.code(), "repository_unreachable");
    }
}
