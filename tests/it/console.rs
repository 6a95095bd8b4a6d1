//! The admin console over HTTP against the real binary: sign-in, the
//! session cookie, CSRF, the security headers, every page over real apps,
//! repositories and a dead event, and a retry from the dead events page
//! that reaches a real receiver.

use reqwest::header::{HeaderMap, LOCATION, SET_COOKIE};
use reqwest::{Method, Response, StatusCode, redirect};
use sea_orm::ConnectionTrait;

use crate::gitserver::TestRepo;
use crate::helpers::{ADMIN_TOKEN, Rig, TestApp, TestClient};
use crate::operations::{poison_engine_with, two_files, wait_failed};
use crate::receiver::Reply;

/// A browser-like client of the console: no automatic redirects, cookies
/// kept by hand so the tests can look at their flags.
pub(crate) struct Browser<'a> {
    app: &'a TestApp,
    http: reqwest::Client,
    /// `name=value` pairs sent back, like a browser would.
    cookies: Vec<(String, String)>,
}

impl<'a> Browser<'a> {
    pub(crate) fn new(app: &'a TestApp) -> Self {
        let http = actors::tls::http_client_builder()
            .redirect(redirect::Policy::none())
            .build()
            .expect("a client");
        Self {
            app,
            http,
            cookies: Vec::new(),
        }
    }

    fn cookie_header(&self) -> String {
        self.cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    fn keep_cookies(&mut self, headers: &HeaderMap) {
        for raw in set_cookies(headers) {
            let pair = raw.split(';').next().unwrap_or_default();
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            self.cookies.retain(|(k, _)| k != name);
            let expired = raw.contains("Max-Age=0");
            if !expired {
                self.cookies.push((name.to_owned(), value.to_owned()));
            }
        }
    }

    pub(crate) async fn get(&mut self, path: &str) -> Response {
        let response = self
            .http
            .get(self.app.url(path))
            .header("cookie", self.cookie_header())
            .send()
            .await
            .expect("herald answers");
        self.keep_cookies(response.headers());
        response
    }

    pub(crate) async fn post(
        &mut self,
        path: &str,
        form: &[(&str, &str)],
        https: bool,
    ) -> Response {
        let mut request = self
            .http
            .post(self.app.url(path))
            .header("cookie", self.cookie_header())
            .header("content-type", "application/x-www-form-urlencoded")
            .body(serde_urlencoded::to_string(form).expect("a form"));
        if https {
            request = request.header("x-forwarded-proto", "https");
        }
        let response = request.send().await.expect("herald answers");
        self.keep_cookies(response.headers());
        response
    }

    /// The sign-in form's CSRF token (from a fresh GET of the form).
    async fn login_csrf(&mut self) -> String {
        let page = self.get("/admin/login").await.text().await.expect("a body");
        hidden_csrf(&page)
    }

    pub(crate) async fn sign_in(&mut self, token: &str, https: bool) -> Response {
        let csrf = self.login_csrf().await;
        self.post("/admin/login", &[("csrf", &csrf), ("token", token)], https)
            .await
    }

    /// A page's text, after checking it rendered as a console page.
    pub(crate) async fn page(&mut self, path: &str) -> String {
        let response = self.get(path).await;
        assert_eq!(response.status(), StatusCode::OK, "GET {path}");
        assert_csp(response.headers());
        response.text().await.expect("a body")
    }

    fn has_session(&self) -> bool {
        self.cookies.iter().any(|(k, _)| k == "herald_console")
    }
}

fn set_cookies(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all(SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok().map(str::to_owned))
        .collect()
}

fn session_cookie(headers: &HeaderMap) -> Option<String> {
    set_cookies(headers)
        .into_iter()
        .find(|c| c.starts_with("herald_console="))
}

pub(crate) fn hidden_csrf(page: &str) -> String {
    let marker = "name=\"csrf\" value=\"";
    let start = page.find(marker).expect("a CSRF field in the page") + marker.len();
    page[start..]
        .split('"')
        .next()
        .expect("a quoted value")
        .to_owned()
}

fn assert_csp(headers: &HeaderMap) {
    let csp = headers
        .get("content-security-policy")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    assert!(csp.starts_with("default-src 'self'"), "CSP: {csp:?}");
}

pub(crate) fn location(response: &Response) -> &str {
    response
        .headers()
        .get(LOCATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
}

/// A Herald with one app, `acme`, whose first event died (its receiver
/// refused it twice) and whose receiver now accepts everything.
pub(crate) struct DeadEvent {
    /// The repository, kept for the test's length.
    pub(crate) _repo: TestRepo,
    /// The repository served, and the receiver.
    pub(crate) rig: Rig,
    pub(crate) app: TestApp,
    pub(crate) client: TestClient,
}

impl DeadEvent {
    pub(crate) async fn arrange() -> Self {
        let mut dead = DeadEvents::arrange(&["acme"], &[]).await;
        Self {
            _repo: dead._repo,
            rig: dead.rig,
            app: dead.app,
            client: dead.clients.remove(0),
        }
    }
}

/// A Herald where each of `names` is an app watching the same repository
/// whose first event died (refused twice), with settings of its own on
/// top; the receiver now accepts everything.
pub(crate) struct DeadEvents {
    pub(crate) _repo: TestRepo,
    pub(crate) rig: Rig,
    pub(crate) app: TestApp,
    pub(crate) clients: Vec<TestClient>,
}

impl DeadEvents {
    pub(crate) async fn arrange(names: &[&str], settings: &[(&str, &str)]) -> Self {
        let (repo, rig) = two_files().await;
        rig.receiver.fallback(Some(Reply::status(422)));
        let app = poison_engine_with(settings).await;
        let mut clients = Vec::new();
        for name in names {
            let (client, repository) = rig.subscribe(&app, &rig.receiver, name).await;
            wait_failed(&app, &client, &repository).await;
            clients.push(client);
        }
        rig.receiver.fallback(None);
        Self {
            _repo: repo,
            rig,
            app,
            clients,
        }
    }
}

#[tokio::test]
async fn a_wrong_token_is_refused_and_opens_nothing() {
    let app = TestApp::spawn().await;
    let mut browser = Browser::new(&app);

    let signed_out = browser.get("/admin/overview").await;
    assert_eq!(signed_out.status(), StatusCode::SEE_OTHER);
    assert_eq!(location(&signed_out), "/admin/login");

    let form = browser.get("/admin/login").await;
    assert_eq!(form.status(), StatusCode::OK);
    assert_csp(form.headers());
    let body = form.text().await.expect("a body");
    assert!(body.contains("type=\"password\""), "{body}");

    let refused = browser.sign_in("herald_admin_wrong", false).await;
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    assert!(session_cookie(refused.headers()).is_none());
    let body = refused.text().await.expect("a body");
    assert!(body.contains("not the admin token"), "{body}");
    assert!(!browser.has_session());

    let still_out = browser.get("/admin/overview").await;
    assert_eq!(still_out.status(), StatusCode::SEE_OTHER, "nothing opened");
}

#[tokio::test]
async fn the_right_token_opens_a_strict_session_until_logout() {
    let app = TestApp::spawn().await;
    let mut browser = Browser::new(&app);

    let accepted = browser.sign_in(ADMIN_TOKEN, false).await;
    assert_eq!(accepted.status(), StatusCode::SEE_OTHER);
    assert_eq!(location(&accepted), "/admin/overview");
    let cookie = session_cookie(accepted.headers()).expect("a session cookie");
    for flag in [
        "HttpOnly",
        "SameSite=Strict",
        "Path=/admin",
        "Max-Age=43200",
    ] {
        assert!(cookie.contains(flag), "{flag} in {cookie}");
    }
    assert!(!cookie.contains("Secure"), "plain http: {cookie}");
    assert!(!cookie.contains(ADMIN_TOKEN), "the cookie is not the token");
    assert!(
        !app.logs()
            .contains(&cookie["herald_console=".len()..][..64]),
        "the session token is never logged"
    );

    let overview = browser.page("/admin/overview").await;
    assert!(overview.contains("Dead events"), "{overview}");
    let counts = browser.page("/admin/overview/counts").await;
    assert!(counts.contains("hx-trigger=\"every 5s\""), "{counts}");
    assert_eq!(
        browser.get("/admin").await.headers()[LOCATION],
        "/admin/overview"
    );
    assert_eq!(
        browser.get("/admin/assets/htmx.min.js").await.status(),
        StatusCode::OK
    );

    let csrf = hidden_csrf(&overview);
    let out = browser
        .post("/admin/logout", &[("csrf", &csrf)], false)
        .await;
    assert_eq!(out.status(), StatusCode::SEE_OTHER);
    assert!(!browser.has_session());
    assert_eq!(
        browser.get("/admin/overview").await.status(),
        StatusCode::SEE_OTHER
    );

    // Behind a proxy terminating TLS, the cookie is Secure.
    let mut behind_tls = Browser::new(&app);
    let accepted = behind_tls.sign_in(ADMIN_TOKEN, true).await;
    let cookie = session_cookie(accepted.headers()).expect("a session cookie");
    assert!(cookie.contains("; Secure"), "{cookie}");
}

#[tokio::test]
async fn a_session_survives_a_restart_and_ends_after_twelve_hours() {
    let app = TestApp::spawn().await;
    let mut browser = Browser::new(&app);
    browser.sign_in(ADMIN_TOKEN, false).await;
    assert!(browser.has_session());
    let cookies = browser.cookies.clone();

    let (dir, database) = app.stop().await;
    let app = TestApp::builder().data_dir(dir).spawn_with(database).await;
    let mut browser = Browser::new(&app);
    browser.cookies = cookies;
    browser.page("/admin/overview").await;

    let db = app.database().await;
    let backend = db.get_database_backend();
    let row = db
        .query_one_raw(sea_orm::Statement::from_string(
            backend,
            "SELECT expires_at - created_at AS ttl FROM console_sessions",
        ))
        .await
        .expect("the query runs")
        .expect("one session");
    let ttl: i64 = row.try_get("", "ttl").expect("a number");
    assert_eq!(ttl, 12 * 60 * 60 * 1000);
    // Twelve hours later, as far as the session knows.
    db.execute_unprepared("UPDATE console_sessions SET expires_at = created_at - 1")
        .await
        .expect("the session is aged");
    db.close().await.ok();
    let expired = browser.get("/admin/overview").await;
    assert_eq!(expired.status(), StatusCode::SEE_OTHER);
    assert_eq!(location(&expired), "/admin/login");
}

#[tokio::test]
async fn a_new_admin_token_ends_every_session() {
    let app = TestApp::spawn().await;
    let acme = app.onboard("acme").await;
    let mut browser = Browser::new(&app);
    browser.sign_in(ADMIN_TOKEN, false).await;
    let csrf = hidden_csrf(&browser.page("/admin/apps").await);
    let cookies = browser.cookies.clone();

    // The database holds no form of the admin token an attacker could test
    // guesses against without a session cookie.
    let db = app.database().await;
    let row = db
        .query_one_raw(sea_orm::Statement::from_string(
            db.get_database_backend(),
            "SELECT id, csrf_token, admin_binding FROM console_sessions",
        ))
        .await
        .expect("the query runs")
        .expect("one session");
    let binding: String = row.try_get("", "admin_binding").expect("a binding");
    assert_eq!(binding.len(), 64, "an HMAC-SHA256 in hex: {binding}");
    let admin_sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(ADMIN_TOKEN));
    assert_ne!(binding, admin_sha);
    assert!(!binding.contains(ADMIN_TOKEN));
    db.close().await.ok();

    let (dir, database) = app.stop().await;
    let rotated = "rotated-admin-token-fedcba9876543210";
    let app = TestApp::builder()
        .env("HERALD__ADMIN__TOKEN", rotated)
        .data_dir(dir)
        .spawn_with(database)
        .await;
    let mut old = Browser::new(&app);
    old.cookies = cookies;
    for path in ["/admin", "/admin/overview", "/admin/apps"] {
        let signed_out = old.get(path).await;
        assert_eq!(signed_out.status(), StatusCode::SEE_OTHER, "GET {path}");
        assert_eq!(location(&signed_out), "/admin/login", "GET {path}");
    }
    let delete = format!("/admin/apps/{}/delete", acme.app_id);
    let refused = old.post(&delete, &[("csrf", &csrf)], false).await;
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    assert_eq!(app.app_count().await, 1, "the app is still there");
    let logout = old.post("/admin/logout", &[("csrf", &csrf)], false).await;
    assert_eq!(logout.status(), StatusCode::FORBIDDEN);

    // The old token no longer signs in; the new one does.
    let mut fresh = Browser::new(&app);
    let wrong = fresh.sign_in(ADMIN_TOKEN, false).await;
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    let accepted = fresh.sign_in(rotated, false).await;
    assert_eq!(accepted.status(), StatusCode::SEE_OTHER);
    fresh.page("/admin/apps").await;
}

#[tokio::test]
async fn repeated_wrong_sign_ins_lock_the_address_out() {
    // The defaults: five failures lock the address out for 15 minutes.
    let app = TestApp::spawn().await;
    let mut browser = Browser::new(&app);
    for attempt in 1..=5 {
        let wrong = browser
            .sign_in(&format!("guess-{attempt}-0123456789abcdef"), false)
            .await;
        assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED, "guess {attempt}");
    }
    let locked = browser.sign_in(ADMIN_TOKEN, false).await;
    assert_eq!(
        locked.status(),
        StatusCode::TOO_MANY_REQUESTS,
        "even the right token"
    );
    assert!(session_cookie(locked.headers()).is_none());
    let retry_after: u64 = locked.headers()["retry-after"]
        .to_str()
        .expect("ASCII")
        .parse()
        .expect("seconds");
    assert!(
        (14 * 60..=15 * 60).contains(&retry_after),
        "{retry_after} s"
    );
    let body = locked.text().await.expect("a body");
    assert!(body.contains("Too many sign-in attempts"), "{body}");
    assert!(!browser.has_session());
    assert_eq!(
        browser.get("/admin/overview").await.status(),
        StatusCode::SEE_OTHER,
        "nothing opened"
    );
    let logs = app.logs();
    assert!(logs.contains("too many attempts"), "{logs}");
    assert!(!logs.contains(ADMIN_TOKEN), "the token is never logged");
    // The admin API is not the console's sign-in: its bearer token works.
    let (status, _) = app
        .admin(reqwest::Method::GET, "/admin/api/apps", None)
        .await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn sign_in_has_a_budget_of_its_own() {
    let app = TestApp::builder()
        .env("HERALD__RATE_LIMIT__SIGN_IN_PER_MINUTE", "3")
        .spawn()
        .await;
    for attempt in 1..=3 {
        let mut browser = Browser::new(&app);
        let accepted = browser.sign_in(ADMIN_TOKEN, false).await;
        assert_eq!(
            accepted.status(),
            StatusCode::SEE_OTHER,
            "sign-in {attempt}"
        );
    }
    let mut browser = Browser::new(&app);
    let limited = browser.sign_in(ADMIN_TOKEN, false).await;
    assert_eq!(limited.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(limited.headers().contains_key("retry-after"));
    // Only sign-in is limited: the pages still answer.
    assert_eq!(browser.get("/admin/login").await.status(), StatusCode::OK);
}

#[tokio::test]
async fn an_empty_herald_says_what_to_do_next() {
    let app = TestApp::spawn().await;
    let mut browser = Browser::new(&app);
    browser.sign_in(ADMIN_TOKEN, false).await;
    for (path, next) in [
        ("/admin/events", "An event lands here after"),
        ("/admin/apps", "Onboard one with"),
        ("/admin/repositories", "when an app registers one"),
        (
            "/admin/hooks",
            "Point a GitHub, GitLab, Gitea or Bitbucket webhook",
        ),
    ] {
        let page = browser.page(path).await;
        assert!(
            page.contains("class=\"empty\"") && page.contains(next),
            "{path}: {page}"
        );
        assert!(!page.contains("<table"), "{path}: no empty table");
    }
}

#[tokio::test]
async fn a_post_without_its_csrf_token_is_forbidden() {
    let app = TestApp::spawn().await;
    let mut browser = Browser::new(&app);

    let no_login_csrf = browser
        .post("/admin/login", &[("token", ADMIN_TOKEN)], false)
        .await;
    assert_eq!(no_login_csrf.status(), StatusCode::FORBIDDEN);
    assert!(!browser.has_session());

    browser.sign_in(ADMIN_TOKEN, false).await;
    assert!(browser.has_session());
    let action = "/admin/events/evt_01JZZZZZZZZZZZZZZZZZZZZZZZ/retry";
    let missing = browser.post(action, &[], false).await;
    assert_eq!(missing.status(), StatusCode::FORBIDDEN);
    assert_csp(missing.headers());
    let wrong = browser.post(action, &[("csrf", "0000")], false).await;
    assert_eq!(wrong.status(), StatusCode::FORBIDDEN);
    let logout = browser.post("/admin/logout", &[], false).await;
    assert_eq!(logout.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        browser.get("/admin/overview").await.status(),
        StatusCode::OK,
        "still signed in"
    );
}

#[tokio::test]
async fn every_page_renders_and_a_dead_event_is_retried_from_its_page() {
    let dead = DeadEvent::arrange().await;
    let (app, client, receiver) = (&dead.app, &dead.client, &dead.rig.receiver);

    let mut browser = Browser::new(app);
    browser.sign_in(ADMIN_TOKEN, false).await;
    let overview = browser.page("/admin/overview").await;
    assert!(overview.contains("Dead events"));
    let apps = browser.page("/admin/apps").await;
    assert!(apps.contains("acme"), "{apps}");
    let detail = browser
        .page(&format!("/admin/apps/{}", client.app_id))
        .await;
    assert!(
        detail.contains("Subscriptions") && detail.contains("/resync"),
        "{detail}"
    );
    assert!(
        detail.contains("Endpoint breaker") && detail.contains("the default (delivery.backoff)"),
        "{detail}"
    );
    assert!(
        detail.contains("Delivery window")
            && detail.contains("1 webhook at a time per subscription, in order"),
        "{detail}"
    );
    let confirm = browser
        .page(&format!("/admin/apps/{}/delete", client.app_id))
        .await;
    assert!(confirm.contains("cannot be undone"), "{confirm}");
    let repositories = browser.page("/admin/repositories").await;
    assert!(
        repositories.contains("r.git") || repositories.contains("/r"),
        "{repositories}"
    );
    let hooks = browser.page("/admin/hooks").await;
    assert!(hooks.contains("No push webhooks received yet"), "{hooks}");
    let instances = browser.page("/admin/instances").await;
    assert!(instances.contains(&app.instance_id()), "{instances}");

    let events = browser.page("/admin/events").await;
    assert!(events.contains("HTTP 422"), "{events}");
    assert!(events.contains("a.md"), "{events}");
    let start = events.find("/admin/events/evt_").expect("a retry form") + "/admin/events/".len();
    let event_id = events[start..].split('/').next().expect("an id").to_owned();
    let csrf = hidden_csrf(&events);
    let retried = browser
        .post(
            &format!("/admin/events/{event_id}/retry"),
            &[("csrf", &csrf)],
            false,
        )
        .await;
    assert_eq!(retried.status(), StatusCode::SEE_OTHER);
    assert_eq!(location(&retried), "/admin/events?notice=retried");
    let accepted = receiver
        .wait_for("the retried event", |r| {
            r.iter().any(|x| x.header("webhook-id") == event_id)
        })
        .await;
    assert!(!accepted.is_empty());
    let after = browser.page("/admin/events?notice=retried").await;
    assert!(after.contains("Retry queued"), "{after}");
    // Written a moment after the receiver got it (successes are written a
    // batch at a time).
    app.wait_for_events(
        client,
        "status=delivered",
        "the retried event delivered",
        |e| e.iter().any(|e| e["event_id"] == event_id.as_str()),
    )
    .await;

    let gone = browser
        .post(
            &format!("/admin/events/{event_id}/skip"),
            &[("csrf", &csrf)],
            false,
        )
        .await;
    assert_eq!(
        gone.status(),
        StatusCode::CONFLICT,
        "a delivered event stays delivered"
    );

    let (status, body) = app
        .call(
            Method::PATCH,
            "/api/app",
            Some(&client.token),
            Some(serde_json::json!({"window": 8})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let detail = browser
        .page(&format!("/admin/apps/{}", client.app_id))
        .await;
    assert!(
        detail.contains("up to 8 webhooks at a time per subscription, in order per file"),
        "{detail}"
    );
}

/// `chromedriver` on this machine; `None` (after a note) outside CI when it
/// is missing. In CI (`HERALD_CI`, set by `.ci/run`, which installs it) a
/// missing driver fails the test.
pub(crate) fn chromedriver() -> Option<&'static str> {
    const DRIVER: &str = "/usr/bin/chromedriver";
    if std::path::Path::new(DRIVER).exists() {
        return Some(DRIVER);
    }
    assert!(
        std::env::var_os("HERALD_CI").is_none(),
        "the browser tests need Debian's chromium and chromium-driver ({DRIVER} is missing); .ci/run installs them"
    );
    eprintln!(
        "note: skipping a browser test: {DRIVER} is missing (apt-get install chromium chromium-driver)"
    );
    None
}

/// The longest a browser test waits for a page to change (a loaded CI
/// machine can be slow to start chromium and to render).
pub(crate) const BROWSER_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// The page's accessibility problems, as a list of sentences (empty: none).
const AUDIT: &str = r#"
const problems = [];
const text = (el) => (el ? el.textContent : '').replace(/\s+/g, ' ').trim();
const count = (css) => document.querySelectorAll(css).length;
if (count('h1') !== 1) problems.push(`${count('h1')} h1 headings`);
if (count('main') !== 1) problems.push(`${count('main')} main landmarks`);
if (!document.documentElement.lang) problems.push('no lang on <html>');
if (!document.title.trim()) problems.push('no title');
let level = 0;
for (const h of document.querySelectorAll('h1, h2, h3, h4, h5, h6')) {
  const next = Number(h.tagName[1]);
  if (next > level + 1) problems.push(`${h.tagName} "${text(h)}" after h${level}`);
  level = next;
}
for (const el of document.querySelectorAll('input, select, textarea, button, progress')) {
  if (el.type === 'hidden') continue;
  const by = el.getAttribute('aria-labelledby');
  const name = (el.getAttribute('aria-label')
    || (by ? by.split(/\s+/).map((id) => text(document.getElementById(id))).join(' ') : '')
    || [...(el.labels || [])].map(text).join(' ')
    || (el.tagName === 'BUTTON' ? text(el) : '')).trim();
  if (!name) problems.push(`no accessible name: ${el.outerHTML}`);
  // Someone using speech says what they see: it must be part of the name.
  if (el.tagName === 'BUTTON' && !name.toLowerCase().includes(text(el).toLowerCase()))
    problems.push(`the name "${name}" does not contain the visible "${text(el)}"`);
}
for (const a of document.querySelectorAll('a')) {
  if (!text(a) && !a.getAttribute('aria-label')) problems.push(`a link without text: ${a.outerHTML}`);
}
for (const t of document.querySelectorAll('time')) {
  const at = t.getAttribute('datetime');
  if (!at || Number.isNaN(Date.parse(at)) || t.getAttribute('title') !== at)
    problems.push(`a time without its exact value on hover: ${t.outerHTML}`);
}
for (const table of document.querySelectorAll('table')) {
  if (!table.querySelector('caption') || !table.querySelector('th[scope]'))
    problems.push(`a table without caption or header cells: ${text(table).slice(0, 80)}`);
}
return problems;
"#;

/// What has the focus: its link, text, whether it shows in the window and
/// whether an outline is drawn around it.
const FOCUSED: &str = r#"
const el = document.activeElement;
const box = el.getBoundingClientRect();
const style = getComputedStyle(el);
return {
  tag: el.tagName,
  href: el.getAttribute('href'),
  text: el.textContent.replace(/\s+/g, ' ').trim(),
  visible: box.width > 0 && box.height > 0 && box.left >= 0 && box.top >= 0 && box.right <= window.innerWidth,
  outlined: style.outlineStyle !== 'none' && parseFloat(style.outlineWidth) >= 2,
};
"#;

/// A headless chromium driven over WebDriver; the driver process ends with it.
pub(crate) struct Chromium {
    pub(crate) client: fantoccini::Client,
    driver: tokio::process::Child,
    screenshots: std::path::PathBuf,
}

impl Chromium {
    pub(crate) async fn start(driver: &str) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let child = tokio::process::Command::new(driver)
            .arg(format!("--port={port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("chromedriver starts");
        let mut capabilities = serde_json::Map::new();
        capabilities.insert(
            "goog:chromeOptions".to_owned(),
            serde_json::json!({"args": [
                "--headless=new", "--no-sandbox", "--disable-gpu",
                "--disable-dev-shm-usage", "--window-size=1280,900"
            ]}),
        );
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
        let client = loop {
            let connector = hyper_util::client::legacy::connect::HttpConnector::new();
            match fantoccini::ClientBuilder::new(connector)
                .capabilities(capabilities.clone())
                .connect(&format!("http://127.0.0.1:{port}"))
                .await
            {
                Ok(client) => break client,
                Err(err) => {
                    assert!(
                        tokio::time::Instant::now() < deadline,
                        "chromedriver did not start a session: {err}"
                    );
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                }
            }
        };
        let screenshots =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/console-screenshots");
        std::fs::create_dir_all(&screenshots).expect("the screenshot folder");
        Self {
            client,
            driver: child,
            screenshots,
        }
    }

    /// Opens `url`, checks it is a console page (not the sign-in form), and
    /// saves a screenshot as `name.png`.
    pub(crate) async fn visit(&self, url: &str, name: &str) -> String {
        self.client.goto(url).await.expect("the page opens");
        let source = self.client.source().await.expect("the page source");
        assert!(source.contains("Sign out"), "{name}: {source}");
        self.screenshot(name).await;
        source
    }

    pub(crate) async fn screenshot(&self, name: &str) {
        let png = self.client.screenshot().await.expect("a screenshot");
        std::fs::write(self.screenshots.join(format!("{name}.png")), png).expect("saved");
    }

    pub(crate) async fn sign_in(&self, base: &str, token: &str) {
        use fantoccini::Locator;
        self.client
            .goto(&format!("{base}/admin/login"))
            .await
            .expect("the sign-in page");
        let field = self
            .client
            .find(Locator::Css("#token"))
            .await
            .expect("a token field");
        field.send_keys(token).await.expect("typed");
        self.client
            .find(Locator::Css("button[type=submit]"))
            .await
            .expect("a sign-in button")
            .click()
            .await
            .expect("clicked");
    }

    /// Waits for the page to show `text`: a click submits a form, and the
    /// page it leads to lands a moment later.
    pub(crate) async fn wait_for_text(&self, text: &str) -> String {
        let deadline = tokio::time::Instant::now() + BROWSER_WAIT;
        loop {
            let source = self.client.source().await.expect("a page");
            if source.contains(text) {
                return source;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no {text:?} in {source}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }

    /// Runs `script` (a function body) in the page; what it returns.
    pub(crate) async fn run(&self, script: &str) -> serde_json::Value {
        self.client
            .execute(script, Vec::new())
            .await
            .unwrap_or_else(|err| panic!("the script failed: {err}\n{script}"))
    }

    /// Polls `script` until it returns something other than `null` or
    /// `false`; that.
    pub(crate) async fn wait_until(&self, what: &str, script: &str) -> serde_json::Value {
        let deadline = tokio::time::Instant::now() + BROWSER_WAIT;
        loop {
            let value = self.run(script).await;
            if !value.is_null() && value != false {
                return value;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "gave up waiting for {what}; the page: {}",
                self.client.source().await.unwrap_or_default()
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    /// Clicks the first element `css` matches.
    pub(crate) async fn click(&self, css: &str) {
        self.client
            .find(fantoccini::Locator::Css(css))
            .await
            .unwrap_or_else(|err| panic!("no {css}: {err}"))
            .click()
            .await
            .expect("clicked");
    }

    /// Types `keys` (held down together, released in reverse) on whatever
    /// has the focus, as a person at the keyboard.
    async fn press(&self, keys: &[fantoccini::key::Key]) {
        use fantoccini::actions::{InputSource, KeyAction, KeyActions};
        let values: Vec<char> = keys.iter().map(|&key| key.into()).collect();
        let down = values
            .iter()
            .fold(KeyActions::new("keyboard".to_owned()), |a, &value| {
                a.then(KeyAction::Down { value })
            });
        let typed = values
            .iter()
            .rev()
            .fold(down, |a, &value| a.then(KeyAction::Up { value }));
        self.client
            .perform_actions(typed)
            .await
            .expect("keys pressed");
    }

    /// Resizes the window to a phone's width or back to a laptop's.
    pub(crate) async fn resize(&self, phone: bool) {
        let (width, height) = if phone { (390, 844) } else { (1280, 900) };
        self.client
            .set_window_size(width, height)
            .await
            .expect("the window resizes");
        let inner = self.run("return window.innerWidth;").await;
        assert!(
            inner.as_u64().is_some_and(|w| w <= u64::from(width)),
            "innerWidth {inner} at a window {width} wide"
        );
    }

    /// Checks that the current page needs no sideways scrolling.
    pub(crate) async fn assert_fits(&self, name: &str) {
        let widths = self
            .run("return [document.documentElement.scrollWidth, window.innerWidth];")
            .await;
        assert!(
            widths[0].as_u64() <= widths[1].as_u64(),
            "{name}: the page is wider than the window (scrollWidth, innerWidth) = {widths}"
        );
    }

    /// Checks what a screen reader and a keyboard need of the current page:
    /// one h1, one main landmark, headings in order, a name for every
    /// control (containing its visible text) and link, the exact time
    /// behind every relative one.
    pub(crate) async fn assert_accessible(&self, name: &str) {
        let problems = self.run(AUDIT).await;
        assert_eq!(problems, serde_json::json!([]), "{name}: {problems}");
    }

    /// Checks by keyboard that the first Tab lands on a visible skip link,
    /// Enter on it moves the focus into the main content, and the focus is
    /// drawn (on the link, and on the Sign out button a Shift+Tab away).
    pub(crate) async fn assert_keyboard_reaches_main(&self, name: &str) {
        use fantoccini::key::Key;
        self.run("document.activeElement.blur();").await;
        self.press(&[Key::Tab]).await;
        let skip = self.run(FOCUSED).await;
        assert_eq!(skip["href"], "#main", "{name}: the first Tab: {skip}");
        assert_eq!(skip["visible"], true, "{name}: the skip link shows: {skip}");
        assert_eq!(skip["outlined"], true, "{name}: focus is drawn: {skip}");
        self.press(&[Key::Enter]).await;
        let in_main = self
            .run("const main = document.querySelector('main'); return main.contains(document.activeElement);")
            .await;
        assert_eq!(in_main, true, "{name}: Enter on the skip link focuses main");
        self.press(&[Key::Shift, Key::Tab]).await;
        let back = self.run(FOCUSED).await;
        assert_eq!(
            back["text"], "Sign out",
            "{name}: Shift+Tab from main: {back}"
        );
        assert_eq!(back["outlined"], true, "{name}: focus is drawn: {back}");
    }

    /// Opens each of `pages` (name, path under `base`) at laptop width, with
    /// the accessibility audit and the keyboard path, then at phone width,
    /// where none may scroll sideways; a screenshot of each at both.
    pub(crate) async fn check_pages(&self, base: &str, pages: &[(&str, &str)]) {
        for (name, path) in pages {
            self.visit(&format!("{base}{path}"), name).await;
            self.assert_accessible(name).await;
            self.assert_keyboard_reaches_main(name).await;
        }
        self.resize(true).await;
        for (name, path) in pages {
            self.visit(&format!("{base}{path}"), &format!("{name}-phone"))
                .await;
            self.assert_fits(name).await;
        }
        self.resize(false).await;
    }

    pub(crate) async fn stop(mut self) {
        let _ = self.client.close().await;
        let _ = self.driver.kill().await;
    }
}

/// The event ids of the retry buttons on a dead events page, in page order.
fn dead_event_ids(page: &str) -> Vec<String> {
    page.split("/admin/events/evt_")
        .skip(1)
        .filter_map(|rest| rest.split_once("/retry").map(|(id, _)| format!("evt_{id}")))
        .filter(|id| !id.contains(['"', '/']))
        .collect()
}

#[tokio::test]
async fn in_a_real_browser_every_page_opens_and_the_dead_event_is_retried() {
    use fantoccini::Locator;
    let Some(driver) = chromedriver() else { return };
    let dead = DeadEvent::arrange().await;
    let (app, client, receiver) = (&dead.app, &dead.client, &dead.rig.receiver);
    let chromium = Chromium::start(driver).await;
    let base = app.url("");

    chromium.resize(true).await;
    chromium.sign_in(&base, "herald_admin_wrong").await;
    chromium.wait_for_text("not the admin token").await;
    chromium.assert_fits("sign-in").await;
    chromium.assert_accessible("sign-in").await;
    chromium.screenshot("login-refused-phone").await;
    chromium.resize(false).await;
    chromium.screenshot("login-refused").await;
    let cookies = chromium.client.get_all_cookies().await.expect("cookies");
    assert!(!cookies.iter().any(|c| c.name() == "herald_console"));

    chromium.sign_in(&base, ADMIN_TOKEN).await;
    chromium.wait_for_text("Sign out").await;
    let url = chromium.client.current_url().await.expect("a url");
    assert_eq!(url.path(), "/admin/overview");
    let session = chromium
        .client
        .get_named_cookie("herald_console")
        .await
        .expect("a session cookie");
    assert_eq!(session.http_only(), Some(true));
    assert_eq!(format!("{:?}", session.same_site()), "Some(Strict)");

    let app_page = format!("/admin/apps/{}", client.app_id);
    let delete_page = format!("{app_page}/delete");
    let pages = [
        ("overview", "/admin/overview"),
        ("apps", "/admin/apps"),
        ("app", app_page.as_str()),
        ("app-delete", delete_page.as_str()),
        ("repositories", "/admin/repositories"),
        ("hooks", "/admin/hooks"),
        ("instances", "/admin/instances"),
        ("dead-events", "/admin/events"),
    ];
    chromium.check_pages(&base, &pages).await;

    // A form whose CSRF token was forged or removed changes nothing.
    let events = chromium
        .visit(&format!("{base}/admin/events"), "dead-events")
        .await;
    assert!(events.contains("HTTP 422"), "{events}");
    let dead_ids = dead_event_ids(&events);
    assert_eq!(dead_ids.len(), 1, "{events}");
    let forged = chromium
        .client
        .execute_async(
            r#"const done = arguments[arguments.length - 1];
            const form = document.querySelector("form[action$='/skip']");
            fetch(form.action, {method: 'POST', body: new URLSearchParams({csrf: 'forged'}), redirect: 'manual'})
              .then((r) => done(r.status), (err) => done(String(err)));"#,
            Vec::new(),
        )
        .await
        .expect("the forged post is sent");
    assert_eq!(forged, 403, "a forged CSRF token");
    chromium
        .run(
            "const form = document.querySelector(\"form[action$='/skip']\");
             form.querySelector('input[name=csrf]').remove();
             form.submit();",
        )
        .await;
    chromium
        .wait_for_text("did not come from the console")
        .await;
    assert_eq!(
        chromium.client.title().await.expect("a title"),
        "Forbidden · Herald"
    );
    chromium.screenshot("csrf-refused").await;
    let events = chromium
        .visit(&format!("{base}/admin/events"), "dead-events")
        .await;
    assert_eq!(dead_event_ids(&events), dead_ids, "nothing was skipped");

    chromium
        .client
        .find(Locator::Css("form[action$='/retry'] button"))
        .await
        .expect("a retry button")
        .click()
        .await
        .expect("clicked");
    chromium.wait_for_text("Retry queued").await;
    chromium.screenshot("dead-events-retried").await;
    receiver
        .wait_for("the retried event", |r| {
            r.iter().any(|x| x.header("webhook-id") == dead_ids[0])
        })
        .await;
    chromium.stop().await;
}

/// The bulk retry's progress as the browser shows it: `[value, max, the
/// heading's text, whether it still polls]`.
const PROGRESS: &str = r#"
const bar = document.getElementById('bulk-progress');
const section = document.getElementById('progress');
if (!bar || !section) return null;
return [bar.value, bar.max, document.getElementById('progress-title').textContent, section.hasAttribute('hx-get')];
"#;

#[tokio::test]
async fn in_a_real_browser_a_bulk_retry_shows_live_progress_and_can_be_cancelled() {
    let Some(driver) = chromedriver() else { return };
    // Two seconds between events: long enough to cancel by hand and to see
    // the bar move, short enough for a test.
    let dead = DeadEvents::arrange(
        &["acme", "bravo", "charlie", "delta"],
        &[("HERALD__DELIVERY__BULK_RETRY_PAUSE", "2s")],
    )
    .await;
    let chromium = Chromium::start(driver).await;
    let base = dead.app.url("");
    chromium.sign_in(&base, ADMIN_TOKEN).await;
    chromium.wait_for_text("Sign out").await;
    let events = chromium
        .visit(&format!("{base}/admin/events"), "bulk-dead-events")
        .await;
    let dead_ids = dead_event_ids(&events);
    assert_eq!(dead_ids.len(), 4, "{events}");
    let on_operation_page = "return location.pathname.startsWith('/admin/operations/op');";

    // Retry all, then cancel at once: it stops before its next event.
    chromium.click("form[action$='/retry-all'] button").await;
    chromium
        .wait_until("the operation's page", on_operation_page)
        .await;
    // Clicked from the page's script: htmx may swap the section (and its
    // button) between finding the button and clicking it.
    chromium
        .wait_until(
            "a cancel button",
            "const button = document.querySelector(\"form[action$='/cancel'] button\");
             if (!button) return null;
             button.click();
             return true;",
        )
        .await;
    let cancelled = chromium
        .wait_until(
            "the cancelled operation",
            &format!(
                "const p = (() => {{ {PROGRESS} }})(); return p && p[2].includes('cancelled') ? p : null;"
            ),
        )
        .await;
    chromium.screenshot("bulk-retry-cancelled").await;
    let (retried, total) = (cancelled[0].as_u64(), cancelled[1].as_u64());
    assert_eq!(total, Some(4), "{cancelled}");
    let retried = retried.expect("a count");
    // Cancelled in its first pause, or on a slow machine its second: either
    // way before its end, and at least two are left to watch below.
    assert!(retried <= 2, "cancelled before the end: {cancelled}");
    let events = chromium
        .visit(&format!("{base}/admin/events"), "bulk-dead-events-left")
        .await;
    let left = dead_event_ids(&events);
    assert_eq!(left.len() as u64, 4 - retried, "{events}");

    // Retry all again and watch the bar fill in the same page.
    chromium.click("form[action$='/retry-all'] button").await;
    chromium
        .wait_until("the operation's page", on_operation_page)
        .await;
    chromium.run("window.heraldSamePage = true;").await;
    let mut seen: Vec<u64> = Vec::new();
    let deadline = tokio::time::Instant::now() + BROWSER_WAIT;
    let last = loop {
        let progress = chromium.run(PROGRESS).await;
        assert!(!progress.is_null(), "a progress bar");
        let value = progress[0].as_u64().expect("a value");
        if seen.last() != Some(&value) {
            seen.push(value);
        }
        if progress[2].as_str().is_some_and(|t| t.contains("done")) {
            break progress;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the bulk retry did not end; seen {seen:?}, last {progress}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    chromium.screenshot("bulk-retry-done").await;
    let total = left.len() as u64;
    assert_eq!(last[1].as_u64(), Some(total), "{last}");
    assert_eq!(seen.last(), Some(&total), "{seen:?}");
    // The page opened while events were still waiting their turn (two
    // seconds apart), and the bar moved without a reload.
    assert!(seen.len() >= 2 && seen[0] < total, "{seen:?}");
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "{seen:?}");
    assert_eq!(
        chromium.run("return window.heraldSamePage === true;").await,
        true,
        "the page was not reloaded"
    );
    assert_eq!(last[3], false, "a finished operation stops polling");
    assert_eq!(
        chromium
            .run("return document.querySelector(\"form[action$='/cancel']\") === null;")
            .await,
        true,
        "nothing left to cancel"
    );

    dead.rig
        .receiver
        .wait_for("every dead event, retried", |r| {
            dead_ids
                .iter()
                .all(|id| r.iter().any(|x| x.header("webhook-id") == id))
        })
        .await;
    chromium.stop().await;
}

#[tokio::test]
async fn a_bulk_retry_shows_its_progress_until_the_event_is_delivered() {
    let dead = DeadEvent::arrange().await;
    let (app, receiver) = (&dead.app, &dead.rig.receiver);
    let mut browser = Browser::new(app);
    browser.sign_in(ADMIN_TOKEN, false).await;
    let events = browser.page("/admin/events").await;
    assert!(events.contains("/admin/events/retry-all"), "{events}");
    let csrf = hidden_csrf(&events);

    let started = browser
        .post("/admin/events/retry-all", &[("csrf", &csrf)], false)
        .await;
    assert_eq!(started.status(), StatusCode::SEE_OTHER);
    let operation = location(&started).to_owned();
    assert!(operation.starts_with("/admin/operations/op"), "{operation}");
    let page = browser.page(&operation).await;
    assert!(page.contains("<progress"), "{page}");

    receiver
        .wait_for("the retried event", |r| {
            r.iter().any(|x| x.json()["file"]["path"] == "a.md")
        })
        .await;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let progress = browser.page(&format!("{operation}/progress")).await;
        if progress.contains("1 of 1 events retried") && !progress.contains("hx-get") {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{progress}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let cancel = browser
        .post(&format!("{operation}/cancel"), &[("csrf", &csrf)], false)
        .await;
    assert_eq!(
        cancel.status(),
        StatusCode::SEE_OTHER,
        "a finished one stays as it ended"
    );
}
