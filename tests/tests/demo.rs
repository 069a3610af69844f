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
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    let t = &r["tickets"];
    assert_eq!(t["lost"], 0, "{r:#}");
    assert_eq!(t["duplicated"], 0, "{r:#}");
    assert!(t["created"].as_u64().unwrap() > 50, "{r:#}");
    assert!(t["cross_city"].as_u64().unwrap() > 0);
    assert_eq!(t["delivered"], t["dispatched"]);
    assert!(t["resolved"].as_u64().unwrap() > 0);
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
        14,
        "not every category crossed: {categories:?}"
    );
}
