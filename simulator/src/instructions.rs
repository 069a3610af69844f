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
//!
//! Two workloads ([`Workload`]): `distinct`, the simulator's matters each
//! its own (a place, words of their own: the merge detector searches and
//! finds nothing), and `same-matter`, every report the same matter at the
//! same place in other words (多人一诉, the detector's worst case: every
//! report after the first is merged into it and set against the
//! many-reports rule). A merged report counts once the gateway has linked
//! it (the `linked` figure of the target), a dispatched one once the target
//! has committed it.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hotline_proto::identity::Identity;
use hotline_proto::pb::DispatchTicketRequest;
use hotline_proto::pb::federation_client::FederationClient;
use hotline_proto::pb::observatory_client::ObservatoryClient;
use serde::Serialize;

use crate::matters::Matter;
use crate::peers::{ORIGIN, TARGET, new_ticket};
use crate::spawn::Spawned;

/// What the dispatched tickets say.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Workload {
    /// Each ticket its own matter.
    Distinct,
    /// Every ticket the same matter, in other words.
    SameMatter,
    /// Both, one after the other.
    Both,
}

#[derive(Debug, Default, Serialize)]
pub struct Instructions {
    pub tickets: u64,
    /// Callgrind's total for N and for 2N tickets, per repetition
    /// (distinct matters).
    pub totals: Vec<(u64, u64)>,
    /// (I(2N) − I(N)) / N, per repetition, distinct matters.
    pub per_ticket: Vec<f64>,
    /// The largest difference between repetitions, relative to their mean.
    pub spread: f64,
    /// The same for the same-matter workload, when run.
    pub same_matter_totals: Vec<(u64, u64)>,
    pub same_matter_per_ticket: Vec<f64>,
    pub same_matter_spread: f64,
}

/// The `i`th ticket of a workload: the same sequence in every run.
fn ticket(workload: Workload, i: u64) -> hotline_proto::pb::Ticket {
    use rand::SeedableRng;
    let mut t = new_ticket();
    let told = match workload {
        Workload::SameMatter => {
            let mut rng = rand::rngs::StdRng::seed_from_u64(7);
            let matter = Matter::numbered(&mut rng, 18);
            let mut rng = rand::rngs::StdRng::seed_from_u64(i);
            matter.retold(&mut rng)
        }
        _ => {
            let mut rng = rand::rngs::StdRng::seed_from_u64(i);
            Matter::numbered(&mut rng, u32::try_from(i % 9_000 + 1).unwrap_or(1)).told()
        }
    };
    t.subject = told.subject;
    t.description = told.description;
    t.location = told.place;
    t
}

/// Reports the target has received or had linked to a ticket it holds.
async fn settled(
    observatory: &ObservatoryClient<tonic::transport::Channel>,
) -> anyhow::Result<u64> {
    let c = observatory
        .clone()
        .get_city_stats(hotline_proto::pb::GetCityStatsRequest {
            city: TARGET.into(),
            ..Default::default()
        })
        .await?
        .into_inner()
        .cities
        .into_iter()
        .next()
        .unwrap_or_default();
    Ok(c.received + c.linked)
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

async fn one_run(n: u64, workload: Workload, keep: Option<&Path>) -> anyhow::Result<u64> {
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
    let before = settled(&observatory).await?;
    for i in 0..n {
        federation
            .clone()
            .dispatch_ticket(DispatchTicketRequest {
                city: ORIGIN.into(),
                ticket: Some(ticket(workload, i)),
            })
            .await?;
    }
    let deadline = Instant::now() + Duration::from_secs(600);
    while settled(&observatory).await? - before < n {
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
    workload: Workload,
    report: Option<&Path>,
    keep: Option<&Path>,
) -> anyhow::Result<Instructions> {
    if which_valgrind().is_none() {
        bail!("valgrind is not installed (apt-get install valgrind)");
    }
    let mut r = Instructions {
        tickets,
        ..Default::default()
    };
    for w in [Workload::Distinct, Workload::SameMatter] {
        if workload != Workload::Both && workload != w {
            continue;
        }
        let mut totals = Vec::new();
        let mut per_ticket = Vec::new();
        for rep in 0..repeat {
            let one = one_run(tickets, w, None).await?;
            let two = one_run(2 * tickets, w, keep).await?;
            let per = two.saturating_sub(one) as f64 / tickets as f64;
            println!(
                "[{}/{repeat}] {w:?}: {tickets} tickets: {one} instructions; {}: {two}; {per:.0} per ticket",
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
        println!(
            "gateway, {w:?}: {mean:.0} instructions per dispatched ticket (spread {:.2}%)",
            100.0 * spread
        );
        if w == Workload::Distinct {
            (r.totals, r.per_ticket, r.spread) = (totals, per_ticket, spread);
        } else {
            (
                r.same_matter_totals,
                r.same_matter_per_ticket,
                r.same_matter_spread,
            ) = (totals, per_ticket, spread);
        }
    }
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn the_same_matter_workload_is_one_matter_and_the_distinct_one_is_not() {
        let first = ticket(Workload::SameMatter, 0);
        let fp = |t: &hotline_proto::pb::Ticket| {
            gateway::matter::fingerprint(&t.subject, &t.description, &t.location)
        };
        let a = fp(&first);
        let mut scores = Vec::new();
        for i in 1..50 {
            let t = ticket(Workload::SameMatter, i);
            assert!(t.location.contains("18号"), "{}", t.location);
            scores.push(gateway::matter::similarity(&a.signature, &fp(&t).signature));
        }
        // Told again in other words: some close enough for the detector,
        // some not (those are dispatched anew, and fill the bucket).
        assert!(scores.iter().any(|s| *s >= 0.5), "{scores:?}");
        assert!(scores.iter().any(|s| *s < 0.5), "{scores:?}");
        assert_eq!(
            ticket(Workload::SameMatter, 3).description,
            ticket(Workload::SameMatter, 3).description
        );
        let other = ticket(Workload::Distinct, 1);
        assert_ne!(other.location, ticket(Workload::Distinct, 2).location);
    }
}
