//! The front door: `simulator demo --duration N --report FILE`, as a
//! newcomer runs it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

use federation_tests::{CITIES, bin_dir};

#[test]
fn the_demo_runs_by_itself_and_reports_nothing_lost_or_duplicated() {
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("r.json");
    let out = Command::new(bin_dir().join("simulator"))
        .args(["demo", "--duration", "8", "--report"])
        .arg(&report)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // One line per process with its address, first thing.
    for name in std::iter::once("gateway").chain(CITIES) {
        let prefix = format!("{name}: 127.0.0.1:");
        let line = stdout.lines().find(|l| l.starts_with(&prefix));
        let port = line.and_then(|l| l[prefix.len()..].parse::<u16>().ok());
        assert!(
            port.is_some_and(|p| p > 0),
            "no address line for {name}:\n{stdout}"
        );
    }
    // And the dashboard's address, on a line of its own.
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("dashboard: http://127.0.0.1:") && l.ends_with('/')),
        "no dashboard line:\n{stdout}"
    );
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    let t = &r["tickets"];
    assert_eq!(t["lost"], 0, "{r:#}");
    assert_eq!(t["duplicated"], 0, "{r:#}");
    assert!(t["created"].as_u64().unwrap() > 50, "{r:#}");
    assert!(t["cross_city"].as_u64().unwrap() > 0);
    assert_eq!(t["delivered"], t["dispatched"]);
    assert!(t["resolved"].as_u64().unwrap() > 0);
    // The demo's citizens report some matters again, and its gateway
    // merges them (about one request in fifteen over a minute).
    assert!(t["merged"].as_u64().unwrap() > 0, "{r:#}");
    assert_eq!(r["gateway_stats_agree"], true, "{r:#}\n{stdout}");
    // Calls were transferred between every pair of roles, none left stuck.
    let x = &r["transfers"];
    assert!(x["started"].as_u64().unwrap() > 0, "{r:#}");
    assert!(x["completed"].as_u64().unwrap() > 0, "{r:#}");
    assert_eq!(x["stuck"], 0, "{r:#}");
    assert_eq!(x["disagreements"], 0, "{r:#}");
    assert!(x["failed_by_reason"].is_object());
    for city in CITIES {
        let c = &r["cities"][city];
        assert!(c["transfers_out"].as_u64().unwrap() > 0, "{city}: {r:#}");
        assert!(c["transfers_in"].as_u64().unwrap() > 0, "{city}: {r:#}");
    }
    let mut categories = std::collections::BTreeSet::new();
    for city in CITIES {
        let c = &r["cities"][city];
        assert!(c["sent"].as_u64().unwrap() > 0, "{city} sent nothing");
        assert!(
            c["received"].as_u64().unwrap() > 0,
            "{city} received nothing"
        );
        for (cat, n) in c["by_category"].as_object().unwrap() {
            assert!(n.as_u64().unwrap() > 0);
            categories.insert(cat.clone());
        }
    }
    assert_eq!(
        categories.len(),
        17,
        "not every category crossed: {categories:?}"
    );
}

/// The demo's citizens are generated from the seed, so the test knows every
/// phone number the run planted: none may appear in anything the run
/// printed, even with every process of the federation logging at debug level.
#[test]
fn no_citizen_phone_number_appears_in_any_log_line_of_a_full_demo_run() {
    let seed = "7";
    let out = Command::new(bin_dir().join("simulator"))
        .args(["demo", "--duration", "6", "--seed", seed, "--drain", "10"])
        .env(
            "RUST_LOG",
            "debug,h2=info,hyper=info,hyper_util=info,tower=info,rustls=info,tonic=info",
        )
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        printed.lines().count() > 1000,
        "too little was logged to mean anything"
    );
    let catalogue = hotline_proto::Catalogue::default();
    let mut planted = 0;
    for city in CITIES {
        let mut citizens = simulator::workload::Citizens::new(
            city,
            &catalogue,
            seed.parse().unwrap(),
            simulator::workload::Mix::default(),
        );
        // More than the run made (6 s at 8 a second).
        for _ in 0..200 {
            let phone = citizens.next_request().citizen.unwrap().phone;
            assert!(!printed.contains(&phone), "{phone} was printed");
            planted += 1;
        }
    }
    assert_eq!(planted, 800);
    // The callers of transferred calls (simulator::calls) too.
    assert!(
        !printed.contains("1390000"),
        "a caller's number was printed"
    );
}
