//! Smoke runs of the benchmark commands: they run to the end on a small
//! load and write their figures. Nothing here judges a figure by time;
//! the figures themselves are in docs/benchmarks.md.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

use federation_tests::bin_dir;

#[test]
fn bench_transfers_runs_and_reports_ring_latency_and_held_transfers() {
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("t.json");
    let out = Command::new(bin_dir().join("simulator"))
        .args([
            "bench-transfers",
            "--samples",
            "50",
            "--hold",
            "0,40",
            "--report",
        ])
        .arg(&report)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "bench failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(r["samples"], 50);
    assert_eq!(r["max_held"], 40, "{r:#}");
    let levels = r["levels"].as_array().unwrap();
    assert_eq!(levels.len(), 2);
    for l in levels {
        let p50 = l["ring_p50_us"].as_u64().unwrap();
        let p99 = l["ring_p99_us"].as_u64().unwrap();
        assert!(p50 > 0 && p50 <= p99, "{l:#}");
        assert!(l["gateway_rss_bytes"].as_u64().unwrap() > 0, "{l:#}");
    }
    assert_eq!(levels[1]["held"], 40);
}

#[test]
fn bench_quick_runs_every_path_it_can_and_reports_the_side_by_side_figures() {
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("b.json");
    let out = Command::new(bin_dir().join("simulator"))
        .args(["bench", "--quick", "--report"])
        .arg(&report)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "bench failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    for key in [
        "direct_tps",
        "gateway_tps",
        "gateway_p50_us",
        "gateway_p99_us",
        "transfer_ring_p99_us",
    ] {
        assert!(r[key].as_f64().unwrap() > 0.0, "{key}: {r:#}");
    }
    // A proxy is measured, or said to be missing: never silently absent.
    for proxy in ["haproxy", "nginx"] {
        let measured = r[format!("{proxy}_tps")].as_f64().is_some();
        let missing = r["missing"].as_array().unwrap().iter().any(|m| m == proxy);
        assert!(measured != missing, "{proxy}: {r:#}");
        assert!(stdout.contains(proxy), "{proxy} not mentioned:\n{stdout}");
    }
    // Three runs of each path measured, interleaved.
    let runs = r["runs"].as_array().unwrap();
    assert_eq!(runs.len() % 3, 0);
    assert_eq!(runs[0]["path"], "direct");
    assert_eq!(runs[1]["path"], "gateway");
}

fn run_ok(args: &[&str], report: &std::path::Path) -> serde_json::Value {
    let out = Command::new(bin_dir().join("simulator"))
        .args(args)
        .arg("--report")
        .arg(report)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(&std::fs::read_to_string(report).unwrap()).unwrap()
}

#[test]
fn bench_stats_loads_a_ledger_and_times_every_observatory_query() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("ledger");
    let data = data.to_str().unwrap();
    let report = dir.path().join("s.json");
    let args = [
        "bench-stats",
        "--tickets",
        "3000",
        "--calls",
        "5",
        "--data-dir",
        data,
    ];
    let r = run_ok(&args, &report);
    assert_eq!(r["tickets_in_ledger"], 3000, "{r:#}");
    let queries = r["queries"].as_object().unwrap();
    assert!(queries.len() >= 8, "{r:#}");
    for (name, q) in queries {
        assert!(q["p50_us"].as_u64().unwrap() > 0, "{name}: {q:#}");
    }
    // A second run reuses the ledger it kept.
    let r = run_ok(&args, &report);
    assert_eq!(r["load_secs"], 0.0, "{r:#}");
}

#[test]
fn bench_instructions_counts_the_gateway_under_callgrind() {
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("i.json");
    let r = run_ok(
        &["bench-instructions", "--tickets", "10", "--repeat", "1"],
        &report,
    );
    // Whatever the build, a dispatched ticket costs the gateway more than a
    // thousand instructions and less than a billion, in both workloads.
    for key in ["per_ticket", "same_matter_per_ticket"] {
        let per = r[key][0].as_f64().unwrap();
        assert!(per > 1e3 && per < 1e9, "{key}: {r:#}");
    }
}
