//! The console's event log, event pages and repository pages against the
//! real binary, a real git daemon and a real receiver: filters that narrow
//! to the right events, pages that chain, an attempt's answer shown as
//! text (HTML in it stays inert), the headers each request carried
//! without any secret, the actions, and the same in a real browser at
//! laptop and phone width, refreshed without a reload.

use reqwest::StatusCode;

use crate::console::{BROWSER_WAIT, Browser, Chromium, chromedriver, hidden_csrf, location};
use crate::gitserver::TestRepo;
use crate::helpers::{ADMIN_TOKEN, Rig, TestApp, TestClient};
use crate::operations::{poison_engine_with, two_files, wait_failed};
use crate::receiver::Reply;

/// What the receiver answers with: markup a careless page would run.
const HOSTILE: &str = "<script>window.heraldPwned = true;</script><b>refused</b>";

/// A Herald whose app `acme` watches `a.md` and `b.md`: the receiver
/// refuses `a.md` (422, with [`HOSTILE`] as its body) until it is dead,
/// so `b.md` waits behind it.
struct Refused {
    repo: TestRepo,
    rig: Rig,
    app: TestApp,
    client: TestClient,
    repository: String,
}

impl Refused {
    async fn arrange() -> Self {
        let (repo, rig) = two_files().await;
        rig.receiver.answer_body(Some(HOSTILE));
        rig.receiver.answer_by(|incoming| {
            let body = String::from_utf8_lossy(incoming.body);
            Reply::status(if body.contains("\"a.md\"") { 422 } else { 200 })
        });
        let app = poison_engine_with(&[]).await;
        let (client, repository) = rig.subscribe(&app, &rig.receiver, "acme").await;
        wait_failed(&app, &client, &repository).await;
        Self {
            repo,
            rig,
            app,
            client,
            repository,
        }
    }

    /// From now on the receiver takes everything, answering `ok`.
    fn accept_all(&self) {
        self.rig.receiver.answer_by(|_| Reply::status(200));
        self.rig.receiver.answer_body(None);
    }
}

/// The event ids a log page lists, in page order.
fn listed(page: &str) -> Vec<String> {
    let mut ids: Vec<String> = page
        .split("href=\"/admin/events/evt_")
        .skip(1)
        .filter_map(|rest| rest.split_once('"').map(|(id, _)| format!("evt_{id}")))
        .collect();
    ids.dedup();
    ids
}

/// The log page's link to older events, when it has one.
fn older(page: &str) -> Option<String> {
    let link = page.find("rel=\"next\"")?;
    let start = page[..link].rfind("href=\"")? + "href=\"".len();
    let href = page[start..].split('"').next()?;
    Some(href.replace("&amp;", "&"))
}

#[tokio::test]
async fn the_event_log_narrows_by_every_filter_and_an_event_shows_its_attempts() {
    let refused = Refused::arrange().await;
    let (app, client) = (&refused.app, &refused.client);
    let mut browser = Browser::new(app);
    browser.sign_in(ADMIN_TOKEN, false).await;
    let head = refused.repo.head();

    let all = listed(&browser.page("/admin/log").await);
    assert_eq!(all.len(), 2, "a.md and b.md: {all:?}");
    let page = |query: &str| format!("/admin/log?{query}");
    let only = |ids: Vec<String>| {
        assert_eq!(ids.len(), 1, "{ids:?}");
        ids[0].clone()
    };
    let dead = only(listed(&browser.page(&page("status=dead")).await));
    assert_eq!(
        only(listed(&browser.page(&page("path=a.md")).await)),
        dead,
        "a.md is the dead one"
    );
    let waiting = only(listed(&browser.page(&page("status=pending&path=b")).await));
    assert_ne!(waiting, dead);
    for (query, expected) in [
        ("path=*.md".to_owned(), 2),
        ("path=docs/".to_owned(), 0),
        (format!("commit={}", &head[..7]), 2),
        ("commit=0000000".to_owned(), 0),
        (format!("app={}", client.app_id), 2),
        ("app=app_01hzzzzzzzzzzzzzzzzzzzzzzz".to_owned(), 0),
        (format!("repository={}", refused.repository), 2),
        ("from=2020-01-01T00:00&to=2099-01-01T00:00".to_owned(), 2),
        ("from=2099-01-01T00:00".to_owned(), 0),
        ("to=2020-01-01T00:00".to_owned(), 0),
        ("status=delivered".to_owned(), 0),
    ] {
        let found = listed(&browser.page(&page(&query)).await);
        assert_eq!(found.len(), expected, "{query}: {found:?}");
    }
    // A bad filter is named, and nothing is listed under it.
    let bad = browser
        .page(&page("status=lost&commit=xyz&path=a/%5B&from=yesterday"))
        .await;
    assert!(bad.contains("Status must be one of"), "{bad}");
    assert!(
        bad.contains("A commit is 7 to 64 hexadecimal digits"),
        "{bad}"
    );
    assert!(bad.contains("The path glob is not valid"), "{bad}");
    assert!(bad.contains("From must be a date and time"), "{bad}");
    assert!(listed(&bad).is_empty(), "{bad}");

    // The dead event's page: two refused attempts, their answer as text.
    let event = browser.page(&format!("/admin/events/{dead}")).await;
    assert!(
        event.contains("Attempt 1") && event.contains("Attempt 2"),
        "{event}"
    );
    assert!(!event.contains("Attempt 3"), "{event}");
    assert!(event.contains("HTTP 422"), "{event}");
    assert!(
        event.contains(
            "&lt;script&gt;window.heraldPwned = true;&lt;/script&gt;&lt;b&gt;refused&lt;/b&gt;"
        ),
        "the excerpt, escaped: {event}"
    );
    assert!(!event.contains(HOSTILE), "{event}");
    // The headers shown are those the receiver got, signatures left out.
    let sent: Vec<_> = refused
        .rig
        .receiver
        .received()
        .into_iter()
        .filter(|r| r.header("webhook-id") == dead)
        .collect();
    assert_eq!(sent.len(), 2, "two requests of the dead event");
    for request in &sent {
        for name in ["webhook-timestamp", "traceparent", "x-docora-timestamp"] {
            let value = request.header(name);
            assert!(!value.is_empty(), "{name} was sent");
            assert!(event.contains(value), "{name} {value} shown: {event}");
        }
        for name in ["webhook-signature", "x-docora-signature"] {
            let signature = request.header(name);
            let digest = signature
                .split_once([',', '='])
                .map_or(signature, |(_, d)| d);
            assert!(!event.contains(digest), "{name} is not shown: {event}");
        }
    }
    assert!(
        event.contains("x-docora-signature") && event.contains("not kept"),
        "{event}"
    );
    assert!(
        event.contains(&format!("Herald/{}", env!("CARGO_PKG_VERSION"))),
        "{event}"
    );
    for secret in [
        &client.client_auth_key,
        &client.webhook_secret,
        &client.token,
    ] {
        assert!(!event.contains(secret.as_str()), "a secret on the page");
    }

    // Retried from its own page: back there, then delivered.
    let csrf = hidden_csrf(&event);
    let retried = browser
        .post(
            &format!("/admin/events/{dead}/retry?back=event"),
            &[("csrf", &csrf)],
            false,
        )
        .await;
    assert_eq!(retried.status(), StatusCode::SEE_OTHER);
    assert_eq!(
        location(&retried),
        format!("/admin/events/{dead}?notice=retried")
    );
    refused.accept_all();
    let deadline = tokio::time::Instant::now() + BROWSER_WAIT;
    let delivered = loop {
        let event = browser.page(&format!("/admin/events/{dead}")).await;
        if event.contains("Attempt 3") && event.contains("badge ok\">delivered") {
            break event;
        }
        assert!(tokio::time::Instant::now() < deadline, "{event}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert!(delivered.contains("HTTP 200"), "{delivered}");
    let none = browser
        .get("/admin/events/evt_01hzzzzzzzzzzzzzzzzzzzzzzz")
        .await;
    assert_eq!(none.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_repository_page_lists_its_scans_and_subscribers_and_scans_on_demand() {
    let refused = Refused::arrange().await;
    let mut browser = Browser::new(&refused.app);
    browser.sign_in(ADMIN_TOKEN, false).await;
    let path = format!("/admin/repositories/{}", refused.repository);
    // Polls that find nothing new fold into one row that counts them.
    let deadline = tokio::time::Instant::now() + BROWSER_WAIT;
    let page = loop {
        let page = browser.page(&path).await;
        if page.contains("polls since") {
            break page;
        }
        assert!(tokio::time::Instant::now() < deadline, "{page}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert_eq!(page.matches(">unchanged<").count(), 1, "{page}");
    assert!(page.contains("Recent scans"), "{page}");
    assert!(page.contains("not followed"), "a plain repository: {page}");
    assert!(
        page.contains("badge ok\">changed") || page.contains(">changed<"),
        "{page}"
    );
    assert!(page.contains(&refused.repo.head()[..10]), "{page}");
    assert!(page.contains(">acme<"), "the subscriber: {page}");
    assert!(
        page.contains("badge bad\">failed"),
        "its dead event stops it: {page}"
    );

    let csrf = hidden_csrf(&page);
    let scanned = browser
        .post(&format!("{path}/scan"), &[("csrf", &csrf)], false)
        .await;
    assert_eq!(scanned.status(), StatusCode::SEE_OTHER);
    assert_eq!(location(&scanned), format!("{path}?notice=scan"));
    let page = browser.page(&format!("{path}?notice=scan")).await;
    assert!(page.contains("Scan queued"), "{page}");
    // A new commit shows up as a scan that changed one file.
    refused.repo.write("c.md", "c\n");
    let commit = refused.repo.commit("c");
    refused
        .rig
        .served
        .push(&refused.repo, "HEAD:refs/heads/main", false);
    let deadline = tokio::time::Instant::now() + BROWSER_WAIT;
    loop {
        let page = browser.page(&path).await;
        if page.contains(&commit[..10]) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{page}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let missing = browser
        .post(
            "/admin/repositories/repo_01hzzzzzzzzzzzzzzzzzzzzzzz/scan",
            &[("csrf", &csrf)],
            false,
        )
        .await;
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn the_event_log_pages_back_through_every_event_once() {
    let repo = TestRepo::new("main");
    for n in 0..60 {
        repo.write(&format!("docs/{n:02}.md"), format!("{n}\n"));
    }
    repo.commit("sixty");
    let rig = Rig::serve(&repo).await;
    let app = poison_engine_with(&[]).await;
    let (client, repository) = rig.subscribe(&app, &rig.receiver, "acme").await;
    app.wait_for(&client, &repository, "synced", |v| v["status"] == "synced")
        .await;
    let mut browser = Browser::new(&app);
    browser.sign_in(ADMIN_TOKEN, false).await;

    let first = browser.page("/admin/log?path=docs/").await;
    let mut seen = listed(&first);
    assert_eq!(seen.len(), 50, "a full page");
    let next = older(&first).expect("a link to older events");
    assert!(
        next.contains("path=docs%2F") && next.contains("before=evt_"),
        "{next}"
    );
    let second = browser.page(&next).await;
    assert!(
        !second.contains("hx-get=\"/admin/log/rows"),
        "an older page stays still"
    );
    let rest = listed(&second);
    assert_eq!(rest.len(), 10, "{rest:?}");
    assert!(older(&second).is_none(), "the last page");
    seen.extend(rest);
    let mut sorted = seen.clone();
    sorted.sort();
    sorted.reverse();
    assert_eq!(seen, sorted, "newest first across pages");
    sorted.dedup();
    assert_eq!(sorted.len(), 60, "each event once");
    assert!(
        first.contains("hx-get=\"/admin/log/rows?path=docs%2F\""),
        "the first page refreshes: {first}"
    );
}

#[tokio::test]
async fn in_a_real_browser_the_log_finds_a_files_attempts_and_shows_its_answer_as_text() {
    use fantoccini::Locator;
    let Some(driver) = chromedriver() else { return };
    let refused = Refused::arrange().await;
    let chromium = Chromium::start(driver).await;
    let base = refused.app.url("");
    chromium.sign_in(&base, ADMIN_TOKEN).await;
    chromium.wait_for_text("Sign out").await;

    // Filter by path through the form, as an operator would.
    chromium
        .visit(&format!("{base}/admin/log"), "event-log")
        .await;
    let field = chromium
        .client
        .find(Locator::Css("#f-path"))
        .await
        .expect("a path field");
    field.send_keys("a.md").await.expect("typed");
    chromium.click("form.filters button[type=submit]").await;
    chromium
        .wait_until(
            "the filtered log",
            "return new URLSearchParams(location.search).get('path') === 'a.md';",
        )
        .await;
    let rows = chromium
        .wait_until(
            "one row",
            "const rows = document.querySelectorAll('table.log tbody tr'); return rows.length === 1 ? rows[0].textContent : null;",
        )
        .await;
    assert!(rows.as_str().is_some_and(|t| t.contains("a.md")), "{rows}");
    chromium.screenshot("event-log-filtered").await;

    // Its page: the answer opens as text, and nothing in it ran.
    chromium
        .click("table.log tbody tr a[href^='/admin/events/']")
        .await;
    chromium.wait_for_text("Attempt 2").await;
    chromium.click("details.response summary").await;
    let shown = chromium
        .wait_until(
            "the response excerpt",
            "const pre = document.querySelector('details.response[open] pre'); return pre && pre.offsetHeight > 0 ? pre.textContent : null;",
        )
        .await;
    assert_eq!(shown, HOSTILE, "shown as the receiver wrote it");
    let ran = chromium
        .run("return [window.heraldPwned === true, document.querySelectorAll('details.response script, details.response b').length];")
        .await;
    assert_eq!(ran, serde_json::json!([false, 0]), "the markup stayed text");
    chromium.click("details.headers summary").await;
    chromium.screenshot("event").await;

    let event_path = chromium
        .client
        .current_url()
        .await
        .expect("a url")
        .path()
        .to_owned();
    let repository_path = format!("/admin/repositories/{}", refused.repository);
    let pages = [
        ("event-log", "/admin/log"),
        ("event", event_path.as_str()),
        ("repository", repository_path.as_str()),
    ];
    chromium.check_pages(&base, &pages).await;

    // The log refreshes itself: a new commit's file shows up without a reload.
    refused.accept_all();
    chromium
        .visit(&format!("{base}/admin/log"), "event-log")
        .await;
    chromium.run("window.heraldSamePage = true;").await;
    refused.repo.write("news.md", "news\n");
    refused.repo.commit("news");
    refused
        .rig
        .served
        .push(&refused.repo, "HEAD:refs/heads/main", false);
    chromium
        .wait_until(
            "the new file in the log",
            "return [...document.querySelectorAll('table.log tbody tr')].some((tr) => tr.textContent.includes('news.md'));",
        )
        .await;
    assert_eq!(
        chromium.run("return window.heraldSamePage === true;").await,
        true,
        "the page was not reloaded"
    );
    chromium.screenshot("event-log-live").await;
    chromium.stop().await;
}

#[tokio::test]
async fn a_log_page_searches_a_bounded_number_of_events_and_goes_on_from_there() {
    use actors::store::event_log::{LogFilter, PathFilter, SCAN_BUDGET};
    use sea_orm::ConnectionTrait;

    let database = crate::helpers::TestDatabase::create().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let store = actors::test_support::store(&database.url_in(dir.path(), "herald.db")).await;
    let app = store
        .onboard_app(actors::test_support::new_app("acme"))
        .await
        .expect("onboarded");
    let app_id = actors::ids::AppId::parse(&app.app.id).expect("an id");
    let (view, repo) = actors::test_support::subscribe(
        &store,
        &app_id,
        actors::test_support::new_subscription("https://1.1.1.1/acme/log", "acme", "log"),
    )
    .await;
    // 25,000 events, a second apart; `rare.md` is the oldest and one of the
    // newest ten: between them lie more events than one page searches.
    let total: i64 = i64::try_from(SCAN_BUDGET).expect("small") + 5_000;
    let start = actors::clock::now_ms() - total * 1_000;
    let mut rows = Vec::new();
    for n in 0..total {
        let at = start + n * 1_000;
        let id = format!(
            "evt_{}",
            ulid::Ulid::from_parts(u64::try_from(at).expect("positive"), 0)
                .to_string()
                .to_ascii_lowercase()
        );
        let path = if n == 0 || n == total - 10 {
            "rare.md".to_owned()
        } else {
            format!("bulk/{n}.md")
        };
        rows.push(format!(
            "('{id}', '{}', '{}', '{repo}', {}, 'created', '{path}', false, 'delivered', 1, {at}, {at})",
            view.subscription.id,
            app.app.id,
            n + 1,
        ));
        if rows.len() == 1_000 {
            store
                .db()
                .execute_unprepared(&format!(
                    "INSERT INTO events (id, subscription_id, app_id, repository_id, seq, kind, path, \
                     \"binary\", status, attempts, next_attempt_at, created_at) VALUES {}",
                    rows.join(",")
                ))
                .await
                .expect("inserted");
            rows.clear();
        }
    }

    let everything = store
        .event_log(&LogFilter::default(), None, 50)
        .await
        .expect("a page");
    assert_eq!(everything.entries.len(), 50);
    assert_eq!(everything.searched_to, None, "a full page");
    assert_eq!(
        everything.next.as_deref(),
        Some(everything.entries[49].event.id.as_str())
    );

    let rare = LogFilter {
        path: Some(PathFilter::parse("rare.md").expect("a prefix")),
        app: Some(app.app.id.clone()),
        ..LogFilter::default()
    };
    let first = store.event_log(&rare, None, 50).await.expect("a page");
    assert_eq!(first.entries.len(), 1, "the newer rare.md");
    let searched_to = first.searched_to.clone().expect("stopped at the budget");
    assert_eq!(first.next.as_deref(), Some(searched_to.as_str()));
    let second = store
        .event_log(&rare, first.next.as_deref(), 50)
        .await
        .expect("a page");
    assert_eq!(second.entries.len(), 1, "the older rare.md");
    assert_eq!((second.next, second.searched_to), (None, None), "the end");
    assert!(second.entries[0].event.id < first.entries[0].event.id);
    assert_eq!(
        second.entries[0].repository.as_ref().map(|r| r.id.as_str()),
        Some(repo.as_str())
    );
    store.close().await.ok();
}
