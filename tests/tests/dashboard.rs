//! The provincial dashboard in a real headless Chromium, driven through
//! chromedriver: the page loads from the gateway's own port, shows the four
//! cities, and its numbers move when tickets flow.
//!
//! Needs Debian's `chromium` and `chromium-driver`: when they are missing
//! the test installs them with `scripts/install-browser` (as root or
//! through sudo), and fails, saying so, when it cannot.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use federation_tests::*;
use hotline_proto::pb::TicketStatus;

fn find_binary(env: &str, candidates: &[&str]) -> std::path::PathBuf {
    if let Ok(p) = std::env::var(env) {
        return p.into();
    }
    let present = || {
        candidates
            .iter()
            .map(std::path::Path::new)
            .find(|p| p.exists())
            .map(std::path::Path::to_owned)
    };
    if let Some(p) = present() {
        return p;
    }
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("scripts/install-browser");
    let installed = Command::new("bash").arg(&script).status();
    present().unwrap_or_else(|| {
        panic!(
            "none of {candidates:?} exists (set {env} to override), and {} did not install \
             Debian's chromium and chromium-driver ({installed:?})",
            script.display()
        )
    })
}

struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn browser() -> (Driver, Client) {
    let chromedriver = find_binary("CHROMEDRIVER", &["/usr/bin/chromedriver"]);
    let chromium = find_binary(
        "CHROMIUM",
        &["/usr/bin/chromium", "/usr/bin/chromium-browser"],
    );
    let port = free_addr().port();
    let driver = Driver(
        Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({
            "binary": chromium,
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                     "--disable-dev-shm-usage", "--window-size=1400,1800"],
        }),
    );
    let url = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        match ClientBuilder::new(connector)
            .capabilities(caps.clone())
            .connect(&url)
            .await
        {
            Ok(c) => return (driver, c),
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("no WebDriver session with chromium: {e}"),
        }
    }
}

/// The text of the first element `css` finds, once it is there.
async fn text_of(c: &Client, css: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(e) = c.find(Locator::Css(css)).await
            && let Ok(t) = e.text().await
            && !t.is_empty()
        {
            return t;
        }
        assert!(Instant::now() < deadline, "nothing shows at {css}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn number_at(c: &Client, css: &str) -> u64 {
    let t = text_of(c, css).await;
    t.trim()
        .parse()
        .unwrap_or_else(|_| panic!("{css} shows {t:?}, not a number"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_the_four_cities_and_its_numbers_move_when_tickets_flow() {
    let f = Federation::start().await;
    let (_driver, c) = browser().await;
    c.goto(&format!("http://{}/", f.dashboard)).await.unwrap();

    // Four cards, one per city, each with its Chinese name.
    for (city, name) in [
        ("luzhou", "泸州"),
        ("yibin", "宜宾"),
        ("zigong", "自贡"),
        ("neijiang", "内江"),
    ] {
        let card = text_of(&c, &format!(".city-card[data-city=\"{city}\"] h3")).await;
        assert!(card.contains(name), "{city}: {card}");
    }
    let total_before = number_at(&c, "#total-flow").await;
    let sent_before = number_at(&c, ".city-card[data-city=\"luzhou\"] dd.sent").await;

    let mut luzhou = f.hotline("luzhou").await;
    let yibin = f.hotline("yibin").await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        let t = create(&mut luzhou, draft(&["yibin"], "education")).await;
        wait_status(&yibin, &t.id, TicketStatus::Delivered).await;
        ids.push(t.id);
    }

    // The page catches up by itself, within a few of its one-second polls.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let total = number_at(&c, "#total-flow").await;
        let sent = number_at(&c, ".city-card[data-city=\"luzhou\"] dd.sent").await;
        let cell = text_of(
            &c,
            "g[data-origin=\"luzhou\"][data-target=\"yibin\"] text.n",
        )
        .await;
        let bar = number_at(&c, ".bar[data-category=\"education\"] .n").await;
        if total == total_before + 3 && sent == sent_before + 3 && cell.starts_with('3') && bar == 3
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the page did not follow: total {total}, sent {sent}, cell {cell:?}, bar {bar}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // An emergency is in the supervision ledger (督办台账) at once, and the
    // page shows it.
    let flood = create(&mut luzhou, draft(&["yibin"], "natural-disaster")).await;
    wait_status(&yibin, &flood.id, TicketStatus::Delivered).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let count = text_of(&c, "#supervision-count").await;
        let rows = text_of(&c, "#escalations tbody").await;
        if count.starts_with("1 open") && rows.contains("emergency") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the supervision ledger did not show: {count:?} {rows:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // The live ticker names the tickets.
    let ticker = text_of(&c, "#ticker").await;
    assert!(ticker.contains(&ids[2]), "{ticker}");
    assert!(!ticker.contains("13912345678"));

    let png = c.screenshot().await.unwrap();
    assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
    if let Ok(path) = std::env::var("HOTLINE_SCREENSHOT") {
        std::fs::write(path, &png).unwrap();
    }
    c.close().await.unwrap();
}
