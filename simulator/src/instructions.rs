//! `simulator bench-instructions`: a deterministic figure for regressions,
//! the instructions the gateway executes per dispatched ticket, counted by
//! `valgrind --tool=callgrind` (this machine has no hardware counters).
//!
//! The gateway runs under callgrind with a target node and an origin sink
//! (plaintext on loopback, like path B of `simulator bench`). The bench
//! dispatches N tickets one at a time, waits until the target has committed
//! them all, stops the gateway gracefully and reads callgrind's total; then
//! again with 2N in a fresh federation. (I(2N) − I(N)) / N is the cost of
//! one ticket — dispatch, ledger commit, delivery, acknowledgement and the
//! DELIVERED event to the origin — without start-up and shutdown. Timers
//! (sweeps, idle workers) add instructions in proportion to wall time, a
//! few hundred thousand a second against some millions per ticket.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hotline_proto::identity::Identity;
use hotline_proto::pb::DispatchTicketRequest;
use hotline_proto::pb::federation_client::FederationClient;
use hotline_proto::pb::observatory_client::ObservatoryClient;
use serde::Serialize;

use crate::peers::{ORIGIN, TARGET, new_ticket, received};
use crate::spawn::Spawned;

#[derive(Debug, Serialize)]
pub struct Instructions {
    pub tickets: u64,
    /// Callgrind's total for N and for 2N tickets, per repetition.
    pub totals: Vec<(u64, u64)>,
    /// (I(2N) − I(N)) / N, per repetition.
    pub per_ticket: Vec<f64>,
    /// The largest difference between repetitions, relative to their mean.
    pub spread: f64,
}

/// Callgrind's total instruction count from its output file.
fn total(out: &Path) -> anyhow::Result<u64> {
    let text = std::fs::read_to_string(out)
        .with_context(|| format!("no callgrind output at {}", out.display()))?;
    text.lines()
        .find_map(|l| {
            l.strip_prefix("summary:")
                .or_else(|| l.strip_prefix("totals:"))
        })
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("callgrind output without a total")
}

async fn one_run(n: u64, keep: Option<&Path>) -> anyhow::Result<u64> {
    let dir = tempfile::tempdir()?;
    let out = dir.path().join("callgrind.out");
    let prefix = vec![
        "valgrind".to_owned(),
        "--tool=callgrind".to_owned(),
        format!("--callgrind-out-file={}", out.display()),
        "--quiet".to_owned(),
    ];
    // The origin, and the cities this bench does not use, are sinks.
    let mut origin = BTreeMap::new();
    for city in [ORIGIN, "zigong", "neijiang"] {
        origin.insert(city.to_owned(), crate::sink::start().await?);
    }
    let mut fed = match Spawned::start_beside(&[TARGET], &origin, dir.path(), "", true, &prefix)
        .await
    {
        Ok(f) => f,
        Err(e) => {
            let log = std::fs::read_to_string(dir.path().join("gateway.log")).unwrap_or_default();
            // What it said, without the backtrace.
            let said: Vec<&str> = log
                .lines()
                .filter(|l| !l.starts_with(' ') && !l.starts_with("=="))
                .take(10)
                .collect();
            return Err(e.context(format!("the gateway said:\n{}", said.join("\n"))));
        }
    };
    let channel = fed.channel(fed.gateway, &Identity::Gateway, &Identity::Gateway)?;
    let federation = FederationClient::new(channel.clone());
    let observatory = ObservatoryClient::new(channel);
    let before = received(&observatory).await?;
    for _ in 0..n {
        federation
            .clone()
            .dispatch_ticket(DispatchTicketRequest {
                city: ORIGIN.into(),
                ticket: Some(new_ticket()),
            })
            .await?;
    }
    let deadline = Instant::now() + Duration::from_secs(600);
    while received(&observatory).await? - before < n {
        if Instant::now() > deadline {
            bail!("the target did not commit {n} tickets in time");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    fed.stop_gateway()?;
    if let Some(keep) = keep {
        std::fs::copy(&out, keep)
            .with_context(|| format!("cannot keep the profile at {}", keep.display()))?;
    }
    total(&out)
}

/// `keep`: where to copy the last profile of 2N tickets, for
/// `callgrind_annotate`.
pub async fn run(
    tickets: u64,
    repeat: usize,
    report: Option<&Path>,
    keep: Option<&Path>,
) -> anyhow::Result<Instructions> {
    if which_valgrind().is_none() {
        bail!("valgrind is not installed (apt-get install valgrind)");
    }
    let mut totals = Vec::new();
    let mut per_ticket = Vec::new();
    for rep in 0..repeat {
        let one = one_run(tickets, None).await?;
        let two = one_run(2 * tickets, keep).await?;
        let per = two.saturating_sub(one) as f64 / tickets as f64;
        println!(
            "[{}/{repeat}] {tickets} tickets: {one} instructions; {}: {two}; {per:.0} per ticket",
            rep + 1,
            2 * tickets
        );
        totals.push((one, two));
        per_ticket.push(per);
    }
    let mean = per_ticket.iter().sum::<f64>() / per_ticket.len().max(1) as f64;
    let spread = per_ticket
        .iter()
        .map(|p| (p - mean).abs() / mean.max(1.0))
        .fold(0.0, f64::max)
        * 2.0;
    let r = Instructions {
        tickets,
        totals,
        per_ticket,
        spread,
    };
    println!(
        "gateway: {mean:.0} instructions per dispatched ticket (spread {:.2}%)",
        100.0 * r.spread
    );
    if let Some(path) = report {
        std::fs::write(path, serde_json::to_string_pretty(&r)?)?;
        println!("report: {}", path.display());
    }
    Ok(r)
}

fn which_valgrind() -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("valgrind"))
        .find(|p| p.exists())
}
