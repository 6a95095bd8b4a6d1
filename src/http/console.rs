//! The admin console: HTML pages under `/admin` (the JSON API stays under
//! `/admin/api`), for operators without curl.
//!
//! - Sign-in with the admin token; the session lives in the database
//!   (`console_sessions`, [`actors::store::console`]), 12 h, bound to the
//!   admin token (another admin token ends it), in a cookie that is HttpOnly,
//!   SameSite=Strict, and Secure when the request came over https
//!   (`X-Forwarded-Proto: https` from the reverse proxy that terminates TLS;
//!   Herald itself listens on plain HTTP).
//! - Sign-in has a per-address budget of its own, and an address that fails
//!   `rate_limit.sign_in_failures` times is locked out for a while
//!   ([`super::ratelimit`]).
//! - Every form carries the session's CSRF token (the sign-in form a token
//!   of its own, double-submitted in a cookie); a POST without it is a 403.
//! - Every answer sets `Content-Security-Policy: default-src 'self'`: the
//!   stylesheet and htmx are served from here, nothing is inline.
//! - Every action is a plain form post answered with a redirect (303), so the
//!   console works without JavaScript; htmx only refreshes the overview counts
//!   and a bulk retry's progress.
//!
//! [`pages`] renders (maud), [`layout`] holds the shared page parts,
//! [`assets`] the embedded stylesheet and htmx; [`event_log`] is the event
//! log and an event's page, [`repository`] a repository's page and "scan
//! now", [`health`] the delivery-health page and an app's charts, drawn by
//! [`chart`] (SVG).

mod assets;
mod chart;
mod event_log;
mod health;
mod layout;
mod pages;
mod repository;

use std::time::Duration;

use actors::clock::now_ms;
use maud::Markup;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use warp::filters::BoxedFilter;
use warp::http::header::{CACHE_CONTROL, CONTENT_TYPE, LOCATION, SET_COOKIE};
use warp::http::{HeaderMap, HeaderValue, Response as HttpResponse, StatusCode};
use warp::reply::Response;
use warp::{Filter, Rejection};

use super::budget::BodyLimit;
use super::error::ApiError;
use super::filters::{client_ip, first_of, read_limited, with_state};
use super::state::AppState;

/// How long a session lasts after sign-in.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 60 * 60);
/// The cookie that carries the session token.
const SESSION_COOKIE: &str = "herald_console";
/// The cookie that carries the sign-in form's CSRF token.
const LOGIN_COOKIE: &str = "herald_console_login";
/// Console form bodies are a few short fields.
const FORM_LIMIT: u64 = 8 * 1024;
const CSP: &str = "default-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'";

/// A signed-in operator's session.
#[derive(Clone)]
pub(crate) struct Session {
    /// The cookie's token, to end the session on logout; never logged.
    token: SecretString,
    /// What every form of this session carries.
    pub csrf: String,
}

/// Whether the browser talks to us over https (through a proxy that says so).
#[derive(Clone, Copy)]
struct Https(bool);

/// Why a console request is turned away before its handler runs.
#[derive(Debug)]
enum Refused {
    /// No live session: GETs go to the sign-in page.
    SignedOut,
    /// A POST without a live session or without its CSRF token.
    Forbidden,
}

impl warp::reject::Reject for Refused {}

pub fn routes(state: AppState) -> BoxedFilter<(Response,)> {
    let get = |s: &AppState| {
        warp::get()
            .and(signed_in(s.clone()))
            .and(with_state(s.clone()))
    };
    let post = |s: &AppState| {
        warp::post()
            .and(checked_form(s.clone()))
            .and(with_state(s.clone()))
    };

    let root = warp::path!("admin")
        .and(warp::get())
        .and(signed_in(state.clone()))
        .map(|_: Session| see_other("/admin/overview"));
    let login_form = warp::path!("admin" / "login")
        .and(warp::get())
        .and(https())
        .map(|https: Https| login_page(None, https));
    let login = warp::path!("admin" / "login")
        .and(warp::post())
        .and(client_ip())
        .and(https())
        .and(warp::cookie::optional::<String>(LOGIN_COOKIE))
        .and(form_body(state.body_limit()))
        .and(with_state(state.clone()))
        .then(login);
    let logout = warp::path!("admin" / "logout")
        .and(warp::post())
        .and(checked_form(state.clone()))
        .and(https())
        .and(with_state(state.clone()))
        .then(logout);

    let overview = warp::path!("admin" / "overview")
        .and(get(&state))
        .then(|s, st| page(pages::overview(s, st)));
    let counts = warp::path!("admin" / "overview" / "counts")
        .and(get(&state))
        .then(|_: Session, st| fragment(pages::overview_counts(st)));
    let events = warp::path!("admin" / "events")
        .and(get(&state))
        .and(notice_query())
        .then(|s, st, q| page(pages::dead_events(s, st, q)));
    let log = warp::path!("admin" / "log")
        .and(get(&state))
        .and(log_query())
        .then(|s, st, q| page(event_log::log(s, st, q)));
    let log_rows = warp::path!("admin" / "log" / "rows")
        .and(get(&state))
        .and(log_query())
        .then(|_: Session, st, q| fragment(event_log::log_rows(st, q)));
    let event = warp::path!("admin" / "events" / String)
        .and(get(&state))
        .and(notice_query())
        .then(|id, s, st, q| page(event_log::event(id, s, st, q)));
    let retry = warp::path!("admin" / "events" / String / "retry")
        .and(back_query())
        .and(post(&state))
        .then(
            |id: String, back: Back, _: Session, st: AppState| async move {
                let done = back.to_event(&id, "/admin/events", "retried");
                act(super::operations::requeue_event(&id, &st).await, &done)
            },
        );
    let skip = warp::path!("admin" / "events" / String / "skip")
        .and(back_query())
        .and(post(&state))
        .then(
            |id: String, back: Back, _: Session, st: AppState| async move {
                let done = back.to_event(&id, "/admin/events", "skipped");
                act(super::operations::pass_over_event(&id, &st).await, &done)
            },
        );
    let retry_all = warp::path!("admin" / "events" / "retry-all")
        .and(post(&state))
        .then(|_: Session, st: AppState| async move {
            match super::operations::begin_bulk_retry(None, "No dead events to retry", &st).await {
                Ok(op) => see_other(&format!("/admin/operations/{}", op.id)),
                Err(err) => error_page(&err),
            }
        });
    let operation = warp::path!("admin" / "operations" / String)
        .and(get(&state))
        .then(|id, s, st| page(pages::operation(id, s, st)));
    let progress = warp::path!("admin" / "operations" / String / "progress")
        .and(get(&state))
        .then(|id, s, st| fragment(pages::operation_progress(id, s, st)));
    let cancel = warp::path!("admin" / "operations" / String / "cancel")
        .and(post(&state))
        .then(|id: String, _: Session, st: AppState| async move {
            let done = format!("/admin/operations/{id}");
            act(super::operations::cancel_bulk_retry(&id, &st).await, &done)
        });
    let apps = warp::path!("admin" / "apps")
        .and(get(&state))
        .and(notice_query())
        .then(|s, st, q| page(pages::apps(s, st, q)));
    let app = warp::path!("admin" / "apps" / String)
        .and(get(&state))
        .and(notice_query())
        .then(|id, s, st, q| page(pages::app_detail(id, s, st, q)));
    let enable = warp::path!("admin" / "apps" / String / "enable")
        .and(post(&state))
        .then(|id: String, _: Session, st: AppState| async move {
            let done = format!("/admin/apps/{id}?notice=enabled");
            act(super::admin::reenable_app(&id, &st).await, &done)
        });
    let confirm_delete = warp::path!("admin" / "apps" / String / "delete")
        .and(get(&state))
        .then(|id, s, st| page(pages::confirm_delete(id, s, st)));
    let delete = warp::path!("admin" / "apps" / String / "delete")
        .and(post(&state))
        .then(|id: String, _: Session, st: AppState| async move {
            act(
                super::admin::remove_app(&id, &st).await,
                "/admin/apps?notice=deleted",
            )
        });
    let resync = warp::path!("admin" / "apps" / String / "repositories" / String / "resync")
        .and(post(&state))
        .then(
            |app: String, repo: String, _: Session, st: AppState| async move {
                let done = format!("/admin/apps/{app}?notice=resync");
                act(
                    super::operations::resync_subscription(&app, &repo, &st).await,
                    &done,
                )
            },
        );
    let repositories = warp::path!("admin" / "repositories")
        .and(get(&state))
        .and(notice_query())
        .then(|s, st, q| page(pages::repositories(s, st, q)));
    let repository = warp::path!("admin" / "repositories" / String)
        .and(get(&state))
        .and(notice_query())
        .then(|id, s, st, q| page(repository::repository(id, s, st, q)));
    let scan = warp::path!("admin" / "repositories" / String / "scan")
        .and(post(&state))
        .then(|id: String, _: Session, st: AppState| async move {
            let done = format!("/admin/repositories/{id}?notice=scan");
            act(repository::scan_now(&id, &st).await, &done)
        });
    let reset = warp::path!("admin" / "repositories" / String / "breaker-reset")
        .and(back_query())
        .and(post(&state))
        .then(
            |id: String, back: Back, _: Session, st: AppState| async move {
                let done = match back.back.as_deref() {
                    Some("repository") => format!("/admin/repositories/{id}?notice=reset"),
                    _ => "/admin/repositories?notice=reset".to_owned(),
                };
                act(super::operations::reset_breaker(&id, &st).await, &done)
            },
        );
    let hooks = warp::path!("admin" / "hooks")
        .and(get(&state))
        .and(notice_query())
        .then(|s, st, q| page(pages::hooks(s, st, q)));
    let instances = warp::path!("admin" / "instances")
        .and(get(&state))
        .then(|s, st| page(pages::instances(s, st)));
    let health = warp::path!("admin" / "health")
        .and(get(&state))
        .and(health_query())
        .then(|s, st, q| page(health::page(s, st, q)));
    let health_charts = warp::path!("admin" / "health" / "charts")
        .and(get(&state))
        .and(health_query())
        .then(|_: Session, st, q| fragment(health::charts(st, q)));
    let app_health = warp::path!("admin" / "apps" / String / "health")
        .and(get(&state))
        .then(|id, _: Session, st| fragment(health::app_fragment(id, st)));

    let routes: [BoxedFilter<(Response,)>; 31] = [
        root.boxed(),
        login_form.boxed(),
        login.boxed(),
        logout.boxed(),
        overview.boxed(),
        counts.boxed(),
        events.boxed(),
        log.boxed(),
        log_rows.boxed(),
        event.boxed(),
        retry.boxed(),
        skip.boxed(),
        retry_all.boxed(),
        operation.boxed(),
        progress.boxed(),
        cancel.boxed(),
        apps.boxed(),
        app.boxed(),
        enable.boxed(),
        confirm_delete.boxed(),
        delete.boxed(),
        resync.boxed(),
        repositories.boxed(),
        repository.boxed(),
        scan.boxed(),
        reset.boxed(),
        hooks.boxed(),
        instances.boxed(),
        health.boxed(),
        health_charts.boxed(),
        app_health.boxed(),
    ];
    first_of(routes.into_iter().chain([assets::routes()]))
        .recover(refused)
        .unify()
        .boxed()
}

/// The query of a list page: its page number, and the notice of the action
/// that led here (a fixed word, so nothing from the URL is echoed).
#[derive(Debug, Default, Deserialize)]
pub(crate) struct ListQuery {
    pub page: Option<u64>,
    pub notice: Option<String>,
}

fn notice_query() -> impl Filter<Extract = (ListQuery,), Error = std::convert::Infallible> + Clone {
    warp::query::<ListQuery>()
        .or(warp::any().map(ListQuery::default))
        .unify()
}

/// The event log's filters and cursor; a query that does not parse is an
/// empty one (each field is checked by the page, which says what is wrong).
fn log_query()
-> impl Filter<Extract = (event_log::LogQuery,), Error = std::convert::Infallible> + Clone {
    warp::query::<event_log::LogQuery>()
        .or(warp::any().map(event_log::LogQuery::default))
        .unify()
}

/// Where an action goes back to: the page it was taken on, when that is
/// not the list it usually comes from (a fixed word, never a URL).
#[derive(Debug, Default, Deserialize)]
struct Back {
    back: Option<String>,
}

impl Back {
    /// After an action on event `id`: its page when taken there, else `list`.
    fn to_event(&self, id: &str, list: &str, notice: &str) -> String {
        match self.back.as_deref() {
            Some("event") => format!("/admin/events/{id}?notice={notice}"),
            _ => format!("{list}?notice={notice}"),
        }
    }
}

fn back_query() -> impl Filter<Extract = (Back,), Error = std::convert::Infallible> + Clone {
    warp::query::<Back>()
        .or(warp::any().map(Back::default))
        .unify()
}

/// The health page's query; a malformed one reads as none (its values are
/// checked by the page).
fn health_query()
-> impl Filter<Extract = (health::HealthQuery,), Error = std::convert::Infallible> + Clone {
    warp::query::<health::HealthQuery>()
        .or(warp::any().map(health::HealthQuery::default))
        .unify()
}

fn https() -> impl Filter<Extract = (Https,), Error = std::convert::Infallible> + Clone {
    warp::header::headers_cloned().map(|headers: HeaderMap| {
        Https(
            headers
                .get("x-forwarded-proto")
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.trim().eq_ignore_ascii_case("https")),
        )
    })
}

async fn find_session(
    state: &AppState,
    token: Option<String>,
) -> Result<Option<Session>, ApiError> {
    let Some(token) = token.filter(|t| !t.is_empty()) else {
        return Ok(None);
    };
    Ok(state
        .store
        .console_session(&token, &state.admin_token, now_ms())
        .await?
        .map(|row| Session {
            token: SecretString::from(token),
            csrf: row.csrf_token,
        }))
}

/// The request's live session; without one, a redirect to the sign-in page.
fn signed_in(state: AppState) -> impl Filter<Extract = (Session,), Error = Rejection> + Clone {
    warp::cookie::optional::<String>(SESSION_COOKIE).and_then(move |token: Option<String>| {
        let state = state.clone();
        async move {
            match find_session(&state, token).await {
                Ok(Some(session)) => Ok(session),
                Ok(None) => Err(warp::reject::custom(Refused::SignedOut)),
                Err(err) => Err(warp::reject::custom(err)),
            }
        }
    })
}

/// A form body (at most [`FORM_LIMIT`] bytes, within the API's body read
/// time) as its fields; a missing or malformed body has no fields.
fn form_body(
    api: BodyLimit,
) -> impl Filter<Extract = (Vec<(String, String)>,), Error = Rejection> + Clone {
    let limit = BodyLimit {
        bytes: FORM_LIMIT,
        ..api
    };
    warp::body::stream().and_then(move |body| async move {
        let bytes = read_limited(body, limit, None)
            .await
            .map_err(warp::reject::custom)?;
        Ok::<_, Rejection>(serde_urlencoded::from_bytes(&bytes).unwrap_or_default())
    })
}

fn field<'a>(form: &'a [(String, String)], name: &str) -> Option<&'a str> {
    form.iter()
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.as_str())
}

/// Passes a POST from a live session whose form carries that session's CSRF
/// token; anything else is a 403.
fn checked_form(state: AppState) -> impl Filter<Extract = (Session,), Error = Rejection> + Clone {
    warp::cookie::optional::<String>(SESSION_COOKIE)
        .and(form_body(state.body_limit()))
        .and_then(move |token: Option<String>, form: Vec<(String, String)>| {
            let state = state.clone();
            async move {
                let session = find_session(&state, token)
                    .await
                    .map_err(warp::reject::custom)?
                    .ok_or_else(|| warp::reject::custom(Refused::Forbidden))?;
                let given = field(&form, "csrf").unwrap_or_default();
                if actors::crypto::tokens_match(given, &SecretString::from(session.csrf.clone())) {
                    Ok(session)
                } else {
                    Err(warp::reject::custom(Refused::Forbidden))
                }
            }
        })
}

async fn refused(rejection: Rejection) -> Result<Response, Rejection> {
    match rejection.find::<Refused>() {
        Some(Refused::SignedOut) => Ok(see_other("/admin/login")),
        Some(Refused::Forbidden) => Ok(forbidden()),
        None => Err(rejection),
    }
}

fn forbidden() -> Response {
    html(
        StatusCode::FORBIDDEN,
        &layout::bare(
            "Forbidden",
            &layout::message(
                "This form has expired or did not come from the console.",
                "/admin/login",
                "Sign in again",
            ),
        ),
    )
}

/// The answer to a sign-in over its address's budget or during a lockout:
/// 429 with `Retry-After`, and no form to try again with.
fn too_many_sign_ins(err: &ApiError) -> Response {
    let retry_after = match err {
        ApiError::RateLimited { retry_after_secs } => *retry_after_secs,
        _ => 60,
    };
    let mut response = html(
        StatusCode::TOO_MANY_REQUESTS,
        &layout::bare(
            "Too many sign-ins",
            &layout::message(
                &format!(
                    "Too many sign-in attempts from this address; try again in {} min.",
                    retry_after.div_ceil(60)
                ),
                "/admin/login",
                "Back to sign-in",
            ),
        ),
    );
    response
        .headers_mut()
        .insert("retry-after", HeaderValue::from(retry_after));
    response
}

fn security_headers(response: &mut Response) {
    let headers = response.headers_mut();
    headers.insert("content-security-policy", HeaderValue::from_static(CSP));
    headers.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    headers.insert("referrer-policy", HeaderValue::from_static("same-origin"));
    headers.insert("x-frame-options", HeaderValue::from_static("DENY"));
}

fn html(status: StatusCode, markup: &Markup) -> Response {
    let mut response = HttpResponse::new(markup.0.clone().into());
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    response
        .headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    security_headers(&mut response);
    response
}

fn see_other(location: &str) -> Response {
    let mut response = HttpResponse::new(Default::default());
    *response.status_mut() = StatusCode::SEE_OTHER;
    if let Ok(value) = HeaderValue::from_str(location) {
        response.headers_mut().insert(LOCATION, value);
    }
    security_headers(&mut response);
    response
}

/// A page, or the error that kept it from rendering as a page of its own.
async fn page(rendered: impl Future<Output = Result<Markup, ApiError>>) -> Response {
    match rendered.await {
        Ok(markup) => html(StatusCode::OK, &markup),
        Err(err) => error_page(&err),
    }
}

/// A piece of a page that htmx swaps in.
async fn fragment(rendered: impl Future<Output = Result<Markup, ApiError>>) -> Response {
    page(rendered).await
}

/// After an action: back to `done`, or the error page.
fn act<T>(result: Result<T, ApiError>, done: &str) -> Response {
    match result {
        Ok(_) => see_other(done),
        Err(err) => error_page(&err),
    }
}

fn error_page(err: &ApiError) -> Response {
    let status = err.status();
    let message = if status.is_server_error() {
        tracing::error!(error = ?err, "admin console request failed");
        "Something went wrong on the server; the log says what.".to_owned()
    } else {
        err.to_string()
    };
    html(
        status,
        &layout::bare(
            "Error",
            &layout::message(&message, "/admin/overview", "Back to the overview"),
        ),
    )
}

fn cookie(name: &str, value: &str, path: &str, max_age: u64, https: Https) -> HeaderValue {
    let secure = if https.0 { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{name}={value}; Path={path}; Max-Age={max_age}; HttpOnly; SameSite=Strict{secure}"
    ))
    .expect("cookie values are hex")
}

/// The sign-in page, with a fresh CSRF token in the form and in a cookie.
fn login_page(error: Option<&str>, https: Https) -> Response {
    let csrf = hex::encode(actors::crypto::random_bytes::<32>());
    let status = if error.is_some() {
        StatusCode::UNAUTHORIZED
    } else {
        StatusCode::OK
    };
    let mut response = html(status, &pages::login(&csrf, error));
    response.headers_mut().append(
        SET_COOKIE,
        cookie(LOGIN_COOKIE, &csrf, "/admin/login", 3600, https),
    );
    response
}

async fn login(
    ip: std::net::IpAddr,
    https: Https,
    login_cookie: Option<String>,
    form: Vec<(String, String)>,
    state: AppState,
) -> Response {
    if let Err(err) = state.limits.check_sign_in(ip) {
        tracing::warn!(client = %ip, "admin console sign-in refused: too many attempts");
        return too_many_sign_ins(&err);
    }
    let given_csrf = field(&form, "csrf").unwrap_or_default();
    let expected = login_cookie.unwrap_or_default();
    if expected.is_empty()
        || !actors::crypto::tokens_match(given_csrf, &SecretString::from(expected))
    {
        return forbidden();
    }
    let token = field(&form, "token").unwrap_or_default().trim();
    if token.is_empty() || !actors::crypto::tokens_match(token, &state.admin_token) {
        let locked = state.limits.sign_in_failed(ip);
        tracing::warn!(client = %ip, locked_out = locked, "admin console sign-in refused: wrong token");
        return login_page(Some("That is not the admin token."), https);
    }
    let now = now_ms();
    let ttl = i64::try_from(SESSION_TTL.as_millis()).expect("12 h fits in i64 ms");
    let opened = match state
        .store
        .open_console_session(&state.admin_token, now, now + ttl)
        .await
    {
        Ok(opened) => opened,
        Err(err) => return error_page(&ApiError::from(err)),
    };
    tracing::info!("admin console session opened");
    let mut response = see_other("/admin/overview");
    response.headers_mut().append(
        SET_COOKIE,
        cookie(
            SESSION_COOKIE,
            opened.token.expose_secret(),
            "/admin",
            SESSION_TTL.as_secs(),
            https,
        ),
    );
    response.headers_mut().append(
        SET_COOKIE,
        cookie(LOGIN_COOKIE, "", "/admin/login", 0, https),
    );
    response
}

async fn logout(session: Session, https: Https, state: AppState) -> Response {
    if let Err(err) = state
        .store
        .close_console_session(session.token.expose_secret())
        .await
    {
        return error_page(&ApiError::from(err));
    }
    tracing::info!("admin console session closed");
    let mut response = see_other("/admin/login");
    response
        .headers_mut()
        .append(SET_COOKIE, cookie(SESSION_COOKIE, "", "/admin", 0, https));
    response
}
