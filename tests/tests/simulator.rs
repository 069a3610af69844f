//! `simulator run` as a person runs it: the real binary, starting the real
//! gateway and city-node binaries (or pointed at a federation already
//! running), with its faults, its invariants, its reports and its exit code.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::{Command, Output};

use federation_tests::*;
use hotline_proto::identity::Identity;
use serde_json::Value;

/// Runs the simulator with `args`, in `dir`, with more environment.
fn simulator(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> (Output, Value) {
    let report = dir.join("report.json");
    // In the PostgreSQL pass, the gateways it spawns keep their ledger there.
    let store: Vec<(String, String)> = if postgres_tests() {
        vec![(
            "HOTLINE_SPAWN_POSTGRES".into(),
            hotline_durable::testing::postgres_url(),
        )]
    } else {
        Vec::new()
    };
    let out = Command::new(bin_dir().join("simulator"))
        .arg("run")
        .args(args)
        .arg("--report")
        .arg(&report)
        .envs(env.iter().copied())
        .envs(store)
        .output()
        .unwrap();
    let json = std::fs::read_to_string(&report)
        .map(|t| serde_json::from_str(&t).unwrap())
        .unwrap_or_else(|_| {
            panic!(
                "no report; stdout:\n{}\nstderr:\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        });
    (out, json)
}

fn text(out: &Output) -> String {
    format!(
        "stdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn violations(report: &Value) -> Vec<String> {
    report["invariant_violations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["invariant"].as_str().unwrap().to_owned())
        .collect()
}

/// The chaos scenario, as the suite's fault run: the gateway and Yibin's
/// node killed, Neijiang slowed, Zigong cut off, Luzhou stalled — and every
/// invariant holds, with the HTML report written.
#[test]
fn the_chaos_run_keeps_every_invariant_through_kills_a_partition_and_a_stall() {
    let dir = tempfile::tempdir().unwrap();
    let html = dir.path().join("report.html");
    let (out, report) = simulator(
        dir.path(),
        &[
            "--scenario",
            "chaos",
            "--spawn",
            "--seed",
            "1",
            "--drain",
            "30",
            "--html",
            html.to_str().unwrap(),
        ],
        &[],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(violations(&report), Vec::<String>::new(), "{}", text(&out));
    let faults = report["faults"].as_array().unwrap();
    let kinds: Vec<(&str, &str)> = faults
        .iter()
        .map(|f| (f["kind"].as_str().unwrap(), f["target"].as_str().unwrap()))
        .collect();
    for expected in [
        ("kill", "gateway"),
        ("kill", "yibin"),
        ("partition", "zigong"),
        ("latency", "neijiang"),
        ("stall", "luzhou"),
    ] {
        assert!(kinds.contains(&expected), "{expected:?} not in {kinds:?}");
    }
    assert!(faults.iter().all(|f| f["outcome"] == "done"), "{faults:?}");
    let t = &report["figures"]["tickets"];
    assert!(t["dispatched"].as_u64().unwrap() > 500, "{t}");
    assert_eq!(t["lost"], 0);
    assert_eq!(t["duplicated"], 0);
    assert_eq!(report["figures"]["gateway_stats_agree"], true);
    assert_eq!(report["figures"]["transfers"]["stuck"], 0);
    // The desks convert each failed transfer once (#23): their calls,
    // retries through the kills included, within twice the conversions.
    let conversions = report["figures"]["transfers"]["converted_to_tickets"]
        .as_u64()
        .unwrap();
    let calls = report["done"]["conversion_calls"].as_u64().unwrap();
    assert!(conversions > 0, "{}", report["figures"]["transfers"]);
    assert!(
        calls <= 2 * conversions,
        "{calls} conversion calls for {conversions} conversions"
    );
    // The recount says which run it is of.
    assert_eq!(report["figures"]["seed"], 1);
    assert_eq!(report["figures"]["duration_secs"], report["duration_secs"]);
    // Every planned request was acknowledged in the end, through the kills.
    assert_eq!(
        report["done"]["tickets_acknowledged"],
        report["plan"]["requests"]
    );
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(page.contains("<svg") && page.contains("Flow between cities"));
    assert!(page.contains("every invariant held"));
}

/// The supervision scenario: requests posted again on other channels,
/// matters many citizens report, repeat callers, stubborn citizens and the
/// emergency categories, with a node killed on the way. The run's `merge`
/// and `rules` invariants hold: every repeat of an open matter merged into
/// its one dispatch and nowhere else, and each rule fired exactly where the
/// reports reach its threshold.
#[test]
fn the_supervision_run_merges_every_repeat_and_fires_each_rule_where_it_should() {
    let dir = tempfile::tempdir().unwrap();
    let (out, report) = simulator(
        dir.path(),
        &["--scenario", "supervision", "--spawn", "--seed", "1"],
        &[],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(violations(&report), Vec::<String>::new(), "{}", text(&out));
    let t = &report["figures"]["tickets"];
    assert!(t["merged"].as_u64().unwrap() > 50, "{t}");
    assert_eq!(t["lost"], 0);
    assert_eq!(report["figures"]["gateway_stats_agree"], true);
    let e = &report["escalations"];
    for rule in [
        "many_reports_one_matter",
        "one_citizen_many_requests",
        "emergency",
    ] {
        assert!(e[rule].as_u64().unwrap_or(0) > 0, "no {rule}: {e}");
    }
    assert!(text(&out).contains("merge, rules"), "{}", text(&out));
}

/// A deliberately broken node — it acknowledges a delivery before it has
/// committed it — is caught by a run that kills it.
#[test]
fn a_node_that_acknowledges_before_it_commits_is_caught() {
    let dir = tempfile::tempdir().unwrap();
    let scenario = dir.path().join("kill-yibin.toml");
    std::fs::write(
        &scenario,
        r#"
name = "kill-yibin"
cities = "south-sichuan"
duration_minutes = 240
speed = 1440
[tickets]
per_hour = 60
local_share = 0.1
multi_city_share = 0.1
urgent_share = 0.0
[[faults]]
at_secs = 6
kind = "kill"
target = "yibin"
for_secs = 1
"#,
    )
    .unwrap();
    let (out, report) = simulator(
        dir.path(),
        &[
            "--scenario",
            scenario.to_str().unwrap(),
            "--spawn",
            "--drain",
            "15",
        ],
        &[("HOTLINE_BROKEN", "ack-before-commit")],
    );
    assert!(!out.status.success(), "{}", text(&out));
    let found = violations(&report);
    assert!(found.iter().any(|v| v == "exactly-once"), "{found:?}");
    assert!(report["figures"]["tickets"]["lost"].as_u64().unwrap() > 0);
    // What it prints names the ticket and shows its history.
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("VIOLATION exactly-once"), "{stdout}");
    assert!(stdout.contains("Delivered by gateway"), "{stdout}");
}

/// All 21 prefecture-level cities of Sichuan, each its own process, on
/// this machine.
#[test]
fn the_province_runs_twenty_one_cities_on_one_machine() {
    let dir = tempfile::tempdir().unwrap();
    let (out, report) = simulator(
        dir.path(),
        &[
            "--scenario",
            "province",
            "--spawn",
            "--minutes",
            "120",
            "--drain",
            "30",
        ],
        &[],
    );
    assert!(out.status.success(), "{}", text(&out));
    let cities = report["figures"]["cities"].as_object().unwrap();
    assert_eq!(cities.len(), 21);
    let receiving = cities
        .values()
        .filter(|c| c["received"].as_u64().unwrap() > 0)
        .count();
    assert!(receiving >= 18, "only {receiving} cities received tickets");
    assert_eq!(violations(&report), Vec::<String>::new());
}

/// Against a federation that runs elsewhere (here, the harness's), twice
/// with one seed: the same workload, request for request, and the second
/// run's requests are new ones, not retries of the first's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_federation_is_driven_from_a_targets_file_and_a_seed_repeats_its_workload() {
    let f =
        Federation::start_with("", "ring_timeout_ms = 2000\ntransfer_deadline_ms = 20000").await;
    let mut nodes = String::from("[nodes]\n");
    for city in CITIES {
        nodes.push_str(&format!(
            "{city} = \"{}\"\n",
            f.addr_of(&Identity::City(city.into()))
        ));
    }
    let targets = f.dir.path().join("targets.toml");
    std::fs::write(
        &targets,
        format!(
            "gateway = \"{}\"\ncerts = \"certs\"\n{nodes}",
            f.addr_of(&Identity::Gateway)
        ),
    )
    .unwrap();
    let run = || {
        let dir = tempfile::tempdir().unwrap();
        let (out, report) = simulator(
            dir.path(),
            &[
                "--scenario",
                "south-sichuan",
                "--targets",
                targets.to_str().unwrap(),
                "--seed",
                "7",
                "--minutes",
                "720",
                "--speed",
                "2880",
                "--drain",
                "30",
            ],
            &[],
        );
        assert!(out.status.success(), "{}\n{}", text(&out), f.logs());
        report
    };
    let (first, second) = tokio::task::block_in_place(|| (run(), run()));
    assert_eq!(first["mode"], "targets");
    assert_eq!(first["plan"]["digest"], second["plan"]["digest"]);
    assert_eq!(first["plan"], second["plan"]);
    let requests = first["plan"]["requests"].as_u64().unwrap();
    assert!(requests > 50, "{requests}");
    assert_eq!(
        first["done"]["tickets_acknowledged"].as_u64(),
        Some(requests)
    );
    assert_eq!(
        second["done"]["tickets_acknowledged"].as_u64(),
        Some(requests)
    );
    // The second run's tickets are its own, not the first's again: the
    // gateway's figures hold both runs' tickets.
    let sent: u64 = f
        .observatory()
        .await
        .get_city_stats(hotline_proto::pb::GetCityStatsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .cities
        .iter()
        .map(|c| c.sent)
        .sum();
    let dispatched = |r: &Value| r["figures"]["tickets"]["dispatched"].as_u64().unwrap();
    assert_eq!(sent, dispatched(&first) + dispatched(&second));
    assert_eq!(violations(&first), Vec::<String>::new());
    assert_eq!(violations(&second), Vec::<String>::new());
}

#[test]
fn a_bad_scenario_is_refused_naming_its_field() {
    let dir = tempfile::tempdir().unwrap();
    let scenario = dir.path().join("bad.toml");
    std::fs::write(
        &scenario,
        "name = \"bad\"\ncities = \"south-sichuan\"\nduration_minutes = 10\n[tickets]\nper_hour = 10\nlocal_share = 0.5\nmulti_city_share = 0.7\nurgent_share = 0\n",
    )
    .unwrap();
    let out = Command::new(bin_dir().join("simulator"))
        .args(["run", "--spawn", "--scenario"])
        .arg(&scenario)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("tickets.local_share + tickets.multi_city_share"),
        "{err}"
    );
}
