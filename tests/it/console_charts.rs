//! The console's delivery-health charts against the real binary: two apps
//! get real webhooks from a served repository (one receiver refuses the
//! first attempts), upkeep rolls the attempts up, and the charts' points,
//! read from the page over HTTP and in chromium, count exactly what the
//! receivers saw.

use std::collections::BTreeMap;
use std::time::Duration;

use reqwest::StatusCode;

use crate::console::{Browser, Chromium, chromedriver};
use crate::gitserver::TestRepo;
use crate::helpers::{ADMIN_TOKEN, Rig, TestApp, TestClient, engine_with, onboard, watch};
use crate::operations::two_files;
use crate::receiver::{Receiver, Reply};

/// Upkeep passes every quarter of the shortest retention: every 30 s here,
/// and the attempts stay for two minutes, longer than the test reads them.
const RETENTION: [(&str, &str); 2] = [
    ("HERALD__DELIVERY__EVENT_RETENTION", "2m"),
    ("HERALD__DELIVERY__ATTEMPT_RETENTION", "2m"),
];

/// How long a test waits for upkeep to roll the deliveries up: two passes.
const ROLLED_UP_WITHIN: Duration = Duration::from_secs(90);

/// A Herald where `acme` (whose receiver answers 500 to the first two
/// webhooks, then 200) and `globex` (200 at once) watch the same
/// two-file repository, and every event was delivered.
struct Delivered {
    _repo: TestRepo,
    rig: Rig,
    globex_receiver: Receiver,
    app: TestApp,
    acme: TestClient,
    globex: TestClient,
}

impl Delivered {
    async fn arrange() -> Self {
        let (repo, rig) = two_files().await;
        rig.receiver
            .script([Reply::status(500), Reply::status(500)]);
        let globex_receiver = Receiver::start().await;
        let app = engine_with(&RETENTION).await;
        let acme = onboard(&app, &rig.receiver, "acme").await;
        let globex = onboard(&app, &globex_receiver, "globex").await;
        watch(&app, &acme, &rig.url()).await;
        watch(&app, &globex, &rig.url()).await;
        rig.receiver
            .wait_for("acme's two files", |r| r.len() >= 2)
            .await;
        globex_receiver
            .wait_for("globex's two files", |r| r.len() >= 2)
            .await;
        Self {
            _repo: repo,
            rig,
            globex_receiver,
            app,
            acme,
            globex,
        }
    }

    /// (delivered, failed) as `receiver` answered them.
    fn answered(receiver: &Receiver) -> (u64, u64) {
        let received = receiver.received();
        let delivered = received
            .iter()
            .filter(|r| (200..300).contains(&r.status))
            .count() as u64;
        (delivered, received.len() as u64 - delivered)
    }

    fn acme_answers(&self) -> (u64, u64) {
        Self::answered(&self.rig.receiver)
    }

    fn globex_answers(&self) -> (u64, u64) {
        Self::answered(&self.globex_receiver)
    }
}

/// The points of the chart `figure_id` in a page: series → the sum of its
/// values over the window, read from the SVG's `data-` attributes.
fn chart_sums(page: &str, figure_id: &str) -> BTreeMap<String, f64> {
    let start = page
        .find(&format!("<figure class=\"chart\" id=\"{figure_id}\""))
        .unwrap_or_else(|| panic!("no chart {figure_id} in {page}"));
    let figure = &page[start..];
    let svg = &figure[..figure.find("</svg>").expect("the chart's SVG ends")];
    let mut sums = BTreeMap::new();
    for mark in svg.split('<').skip(1) {
        let attribute = |name: &str| {
            let marker = format!("{name}=\"");
            mark.find(&marker).map(|at| {
                let rest = &mark[at + marker.len()..];
                rest[..rest.find('"').expect("a quoted value")].to_owned()
            })
        };
        if let (Some(series), Some(value)) = (attribute("data-series"), attribute("data-value")) {
            let value: f64 = value.parse().expect("a number");
            *sums.entry(series).or_insert(0.0) += value;
        }
    }
    sums
}

fn delivered_failed(sums: &BTreeMap<String, f64>) -> (u64, u64) {
    let get = |series: &str| sums.get(series).copied().unwrap_or(0.0) as u64;
    (get("delivered"), get("failed"))
}

/// Polls `path` until its `figure_id` chart counts `expected`; the page.
async fn wait_for_chart(
    browser: &mut Browser<'_>,
    path: &str,
    figure_id: &str,
    expected: (u64, u64),
) -> String {
    let deadline = tokio::time::Instant::now() + ROLLED_UP_WITHIN;
    loop {
        let page = browser.page(path).await;
        let counted = delivered_failed(&chart_sums(&page, figure_id));
        if counted == expected {
            return page;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{path}: {figure_id} counts {counted:?}, the receivers saw {expected:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn plus((a, b): (u64, u64), (c, d): (u64, u64)) -> (u64, u64) {
    (a + c, b + d)
}

#[tokio::test]
async fn the_health_charts_count_the_deliveries_the_receivers_saw() {
    let d = Delivered::arrange().await;
    let (acme, globex) = (d.acme_answers(), d.globex_answers());
    assert_eq!(acme.1, 2, "acme's receiver refused two webhooks");
    assert_eq!(globex.1, 0);
    let mut browser = Browser::new(&d.app);
    browser.sign_in(ADMIN_TOKEN, false).await;

    let page = wait_for_chart(
        &mut browser,
        "/admin/health",
        "deliveries",
        plus(acme, globex),
    )
    .await;
    let acme_id = &d.acme.app_id;
    let globex_id = &d.globex.app_id;
    assert_eq!(
        delivered_failed(&chart_sums(&page, &format!("deliveries-{acme_id}"))),
        acme
    );
    assert_eq!(
        delivered_failed(&chart_sums(&page, &format!("deliveries-{globex_id}"))),
        globex
    );
    // Each app's latencies: a p50 and a p95 for the minutes it had attempts.
    let latency = chart_sums(&page, "latency-by-app");
    assert!(
        latency.contains_key("p50") && latency.contains_key("p95"),
        "{latency:?}"
    );
    assert!(page.contains("id=\"pending\""), "{page}");
    assert!(
        page.contains(r#"hx-get="/admin/health/charts?window=1h" hx-trigger="every 30s""#),
        "the charts refresh themselves: {page}"
    );
    assert!(
        page.contains(r#"href="/admin/health" aria-current="page""#),
        "in the nav"
    );

    // A day in 15-minute bins counts the same; one app counts its own.
    let day = browser.page("/admin/health?window=24h").await;
    assert_eq!(
        delivered_failed(&chart_sums(&day, "deliveries")),
        plus(acme, globex)
    );
    let only_acme = browser.page(&format!("/admin/health?app={acme_id}")).await;
    assert_eq!(
        delivered_failed(&chart_sums(&only_acme, "deliveries")),
        acme
    );
    assert!(!only_acme.contains(&format!("deliveries-{globex_id}")));
    let acme_latency = chart_sums(&only_acme, &format!("latency-{acme_id}"));
    assert!(acme_latency.contains_key("p95"), "{acme_latency:?}");
    let fragment = browser
        .page(&format!("/admin/health/charts?window=24h&app={globex_id}"))
        .await;
    assert!(
        fragment.starts_with("<section id=\"health-charts\""),
        "{fragment}"
    );
    assert_eq!(
        delivered_failed(&chart_sums(&fragment, "deliveries")),
        globex
    );

    // The app's own page shows its charts, refreshed from their own route.
    let detail = browser.page(&format!("/admin/apps/{acme_id}")).await;
    assert_eq!(
        delivered_failed(&chart_sums(&detail, &format!("deliveries-{acme_id}"))),
        acme
    );
    assert!(detail.contains(&format!(r#"hx-get="/admin/apps/{acme_id}/health""#)));
    let refreshed = browser.page(&format!("/admin/apps/{acme_id}/health")).await;
    assert!(
        refreshed.starts_with("<section id=\"app-health\""),
        "{refreshed}"
    );

    // What the query cannot mean is refused, and changes nothing.
    for (path, status) in [
        ("/admin/health?window=2h", StatusCode::BAD_REQUEST),
        ("/admin/health?app=app_nope", StatusCode::NOT_FOUND),
        (
            "/admin/health?app=app_01hzzzzzzzzzzzzzzzzzzzzzzz",
            StatusCode::NOT_FOUND,
        ),
    ] {
        assert_eq!(browser.get(path).await.status(), status, "{path}");
    }
}

/// The chart's points as the browser reads them: series → sum.
const POINTS: &str = r#"
const sums = {};
for (const el of document.querySelectorAll(`#${arguments[0]} svg [data-series]`)) {
  const s = el.getAttribute('data-series');
  sums[s] = (sums[s] || 0) + Number(el.getAttribute('data-value'));
}
return sums;
"#;

#[tokio::test]
async fn in_a_real_browser_the_health_page_shows_the_deliveries() {
    let Some(driver) = chromedriver() else { return };
    let d = Delivered::arrange().await;
    let expected = plus(d.acme_answers(), d.globex_answers());
    let mut browser = Browser::new(&d.app);
    browser.sign_in(ADMIN_TOKEN, false).await;
    wait_for_chart(&mut browser, "/admin/health", "deliveries", expected).await;

    let chromium = Chromium::start(driver).await;
    let base = d.app.url("");
    chromium.sign_in(&base, ADMIN_TOKEN).await;
    chromium.wait_for_text("Sign out").await;
    let acme_page = format!("/admin/apps/{}", d.acme.app_id);
    for (name, path) in [
        ("health", "/admin/health"),
        ("health-app", acme_page.as_str()),
    ] {
        chromium.visit(&format!("{base}{path}"), name).await;
        chromium.assert_accessible(name).await;
        chromium.assert_keyboard_reaches_main(name).await;
    }

    chromium
        .visit(&format!("{base}/admin/health"), "health")
        .await;
    let sums = chromium
        .client
        .execute(POINTS, vec![serde_json::json!("deliveries")])
        .await
        .expect("the points are read");
    assert_eq!(sums["delivered"].as_u64(), Some(expected.0), "{sums}");
    assert_eq!(sums["failed"].as_u64(), Some(expected.1), "{sums}");
    // The table under the chart holds the same numbers, for screen readers.
    let table = chromium
        .run(
            "return [...document.querySelectorAll('#deliveries table td[data-series=failed]')]
               .reduce((n, td) => n + Number(td.getAttribute('data-value') || 0), 0);",
        )
        .await;
    assert_eq!(table.as_u64(), Some(expected.1));
    chromium.screenshot("health").await;
    chromium
        .run("document.getElementById('latency-by-app').scrollIntoView();")
        .await;
    chromium.screenshot("health-latency").await;

    chromium.resize(true).await;
    chromium
        .visit(&format!("{base}/admin/health"), "health-phone")
        .await;
    chromium.assert_fits("health").await;
    chromium
        .visit(&format!("{base}{acme_page}"), "health-app-phone")
        .await;
    chromium.assert_fits("health-app").await;
    chromium
        .run("document.getElementById('app-health').scrollIntoView();")
        .await;
    chromium.screenshot("health-app-charts-phone").await;
    chromium.stop().await;
}
