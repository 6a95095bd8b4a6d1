//! The admin console over HTTP against the real binary: sign-in, the
//! session cookie, CSRF, the security headers, every page over real apps,
//! repositories and a dead event, and a retry from the dead events page
//! that reaches a real receiver.

use reqwest::header::{HeaderMap, LOCATION, SET_COOKIE};
use reqwest::{Response, StatusCode, redirect};

use crate::gitserver::{GitDaemon, Served, TestRepo};
use crate::helpers::{ADMIN_TOKEN, TestApp, TestClient, onboard, watch};
use crate::operations::{poison_engine, two_files, wait_failed};
use crate::receiver::{Receiver, Reply};

/// A browser-like client of the console: no automatic redirects, cookies
/// kept by hand so the tests can look at their flags.
struct Browser<'a> {
    app: &'a TestApp,
    http: reqwest::Client,
    /// `name=value` pairs sent back, like a browser would.
    cookies: Vec<(String, String)>,
}

impl<'a> Browser<'a> {
    fn new(app: &'a TestApp) -> Self {
        let http = reqwest::Client::builder()
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

    async fn get(&mut self, path: &str) -> Response {
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

    async fn post(&mut self, path: &str, form: &[(&str, &str)], https: bool) -> Response {
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

    async fn sign_in(&mut self, token: &str, https: bool) -> Response {
        let csrf = self.login_csrf().await;
        self.post("/admin/login", &[("csrf", &csrf), ("token", token)], https)
            .await
    }

    /// A page's text, after checking it rendered as a console page.
    async fn page(&mut self, path: &str) -> String {
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

fn hidden_csrf(page: &str) -> String {
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

fn location(response: &Response) -> &str {
    response
        .headers()
        .get(LOCATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
}

/// A Herald with one app, `acme`, whose first event died (its receiver
/// refused it twice) and whose receiver now accepts everything.
struct DeadEvent {
    /// The served repository, kept for the test's length.
    _git: (TestRepo, Served, GitDaemon),
    receiver: Receiver,
    app: TestApp,
    client: TestClient,
}

impl DeadEvent {
    async fn arrange() -> Self {
        let (repo, served, daemon) = two_files();
        let receiver = Receiver::start().await;
        receiver.script([Reply::status(422), Reply::status(422)]);
        let app = poison_engine().await;
        let client = onboard(&app, &receiver, "acme").await;
        let repository = watch(&app, &client, &daemon.url("r.git")).await;
        wait_failed(&app, &client, &repository).await;
        Self {
            _git: (repo, served, daemon),
            receiver,
            app,
            client,
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
    let (app, client, receiver) = (&dead.app, &dead.client, &dead.receiver);

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
}

/// `chromedriver` on this machine; `None` (after a note) outside CI when it
/// is missing. In CI (`HERALD_CI`, set by `.ci/run`, which installs it) a
/// missing driver fails the test.
fn chromedriver() -> Option<&'static str> {
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

/// A headless chromium driven over WebDriver; the driver process ends with it.
struct Chromium {
    client: fantoccini::Client,
    driver: tokio::process::Child,
    screenshots: std::path::PathBuf,
}

impl Chromium {
    async fn start(driver: &str) -> Self {
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
    async fn visit(&self, url: &str, name: &str) -> String {
        self.client.goto(url).await.expect("the page opens");
        let source = self.client.source().await.expect("the page source");
        assert!(source.contains("Sign out"), "{name}: {source}");
        self.screenshot(name).await;
        source
    }

    async fn screenshot(&self, name: &str) {
        let png = self.client.screenshot().await.expect("a screenshot");
        std::fs::write(self.screenshots.join(format!("{name}.png")), png).expect("saved");
    }

    async fn sign_in(&self, base: &str, token: &str) {
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
    async fn wait_for_text(&self, text: &str) -> String {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
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

    async fn stop(mut self) {
        let _ = self.client.close().await;
        let _ = self.driver.kill().await;
    }
}

#[tokio::test]
async fn in_a_real_browser_every_page_opens_and_the_dead_event_is_retried() {
    use fantoccini::Locator;
    let Some(driver) = chromedriver() else { return };
    let dead = DeadEvent::arrange().await;
    let (app, client, receiver) = (&dead.app, &dead.client, &dead.receiver);
    let chromium = Chromium::start(driver).await;
    let base = app.url("");

    chromium.sign_in(&base, "herald_admin_wrong").await;
    chromium.wait_for_text("not the admin token").await;
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

    chromium
        .visit(&format!("{base}/admin/overview"), "overview")
        .await;
    chromium.visit(&format!("{base}/admin/apps"), "apps").await;
    let app_page = format!("{base}/admin/apps/{}", client.app_id);
    chromium.visit(&app_page, "app").await;
    chromium
        .visit(&format!("{app_page}/delete"), "app-delete")
        .await;
    chromium
        .visit(&format!("{base}/admin/repositories"), "repositories")
        .await;
    chromium
        .visit(&format!("{base}/admin/hooks"), "hooks")
        .await;
    chromium
        .visit(&format!("{base}/admin/instances"), "instances")
        .await;
    let events = chromium
        .visit(&format!("{base}/admin/events"), "dead-events")
        .await;
    assert!(events.contains("HTTP 422"), "{events}");

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
            r.iter().any(|x| x.json()["file"]["path"] == "a.md")
        })
        .await;
    chromium.stop().await;
}

#[tokio::test]
async fn a_bulk_retry_shows_its_progress_until_the_event_is_delivered() {
    let dead = DeadEvent::arrange().await;
    let (app, receiver) = (&dead.app, &dead.receiver);
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
    assert!(page.contains("/cancel"), "{page}");

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
