//! `simulator bench-stats`: the Observatory's queries with millions of
//! tickets in the ledger.
//!
//! Loads the ledger through the gateway's own transaction bodies
//! ([`gateway::ledger::bulk_load`]: dispatch, delivery, the target's and
//! the origin's events, thousands per transaction), then starts the real
//! `gateway` binary on it and times `GetCityStats` for each window, the
//! flow matrix, the top categories and the overdue list over mutual TLS on
//! loopback, one call at a time. A ledger kept with `--data-dir` is reused
//! by a later run that asks for no more tickets than it holds.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use gateway::ledger::{Fate, Ledger};
use gateway::supervision::Policy;
use hotline_proto::identity::Identity;
use hotline_proto::ids::TicketId;
use hotline_proto::pb::observatory_client::ObservatoryClient;
use hotline_proto::pb::*;
use hotline_proto::{Catalogue, time};
use serde::Serialize;
use tonic::transport::Channel;

use crate::bench::percentile;
use crate::spawn::Spawned;
use crate::workload::{Citizens, Mix};

#[derive(Debug, Clone)]
pub struct StatsBenchOptions {
    pub tickets: u64,
    pub data_dir: Option<PathBuf>,
    pub report: Option<PathBuf>,
    /// Calls timed per query.
    pub calls: usize,
}

#[derive(Debug, Serialize)]
pub struct Latency {
    pub calls: usize,
    pub p50_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
}

#[derive(Debug, Serialize)]
pub struct StatsBench {
    pub tickets_in_ledger: u64,
    /// Seconds spent loading this run (0 when the ledger was reused).
    pub load_secs: f64,
    pub load_tickets_per_sec: f64,
    pub ledger_bytes: u64,
    pub gateway_rss_bytes: Option<u64>,
    pub queries: std::collections::BTreeMap<String, Latency>,
}

const MINUTE_MS: i64 = 60_000;

/// The loaded requests are drawn from one sentence per category: merging
/// them would fold the ledger into a few tickets, so it is off here (its
/// cost is `bench-supervision`'s).
fn policy() -> Policy {
    Policy::new(
        Default::default(),
        gateway::supervision::RuleConfig {
            merge_window_hours: 0,
            ..Default::default()
        },
        gateway::calendar::Calendar::shipped(),
        &Default::default(),
    )
}
const DAY_MS: i64 = 24 * 60 * MINUTE_MS;

/// Tickets per transaction while loading.
const BATCH: usize = 5_000;

async fn count(ledger: &Ledger) -> anyhow::Result<u64> {
    let n: i64 = ledger
        .db()
        .read(|c| {
            c.query_row("SELECT count(*) FROM tickets", (), |r| r.get(0))
                .map_err(gateway::GatewayError::from)
        })
        .await?;
    Ok(u64::try_from(n).unwrap_or(0))
}

async fn load(path: &std::path::Path, want: u64) -> anyhow::Result<(u64, f64)> {
    let catalogue = Catalogue::default();
    let ledger = Ledger::open(path, Arc::new(catalogue.clone()), policy())?;
    let have = count(&ledger).await?;
    if have >= want {
        println!("the ledger holds {have} tickets already");
        return Ok((have, 0.0));
    }
    let mix = Mix {
        local: 0,
        multi_city: 0,
        ..Mix::default()
    };
    let cities: Vec<String> = catalogue.city_ids().map(str::to_owned).collect();
    let mut citizens: Vec<Citizens> = cities
        .iter()
        .map(|c| Citizens::new(c, &catalogue, have, mix))
        .collect();
    let started = Instant::now();
    let mut made = have;
    let mut last_print = Instant::now();
    while made < want {
        let n = BATCH.min((want - made) as usize);
        let mut batch = Vec::with_capacity(n);
        for i in 0..n {
            let k = (made as usize + i) % cities.len();
            let mut t = citizens[k].next_request();
            t.id = TicketId::new(&cities[k]).to_string();
            t.origin_city = cities[k].clone();
            // Requests made over the last month (so the durations to accept
            // and resolve spread over minutes to weeks, as in life); one in
            // ten rejected to coordination, one in twenty still open, and of
            // those, one in a hundred from long enough ago to be overdue.
            let n = made as usize + i;
            let age_ms = match n % 20 {
                1 if n % 2000 == 1 => 20 * DAY_MS,
                1 => (n as i64 * 7_919) % DAY_MS,
                _ => MINUTE_MS + (n as i64 * 104_729) % (30 * DAY_MS),
            };
            t.create_time = Some(time::from_unix_ms(time::now_ms() - age_ms));
            let fate = match n % 20 {
                0 | 10 => Fate::Rejected,
                1 => Fate::Open,
                _ => Fate::Closed,
            };
            batch.push((t, fate));
        }
        ledger
            .write(move |w| gateway::ledger::bulk_load(w, batch))
            .await?;
        made += n as u64;
        if last_print.elapsed() > Duration::from_secs(5) || made == want {
            last_print = Instant::now();
            let secs = started.elapsed().as_secs_f64();
            let rate = (made - have) as f64 / secs.max(1e-9);
            let eta = (want - made) as f64 / rate.max(1e-9);
            println!(
                "[{:5.1}%] {made} tickets in the ledger, {rate:.0}/s, {eta:.0} s to go",
                100.0 * made as f64 / want as f64
            );
        }
    }
    let secs = started.elapsed().as_secs_f64();
    drop(ledger);
    Ok((made, secs))
}

/// One of the Observatory's queries, as the bench times it.
enum Query {
    Stats(GetCityStatsRequest),
    Flow(GetFlowMatrixRequest),
    Top,
    Overdue,
}

impl Query {
    async fn call(&self, mut obs: ObservatoryClient<Channel>) -> anyhow::Result<()> {
        match self {
            Query::Stats(r) => drop(obs.get_city_stats(r.clone()).await?),
            Query::Flow(r) => drop(obs.get_flow_matrix(r.clone()).await?),
            Query::Top => drop(
                obs.get_top_categories(GetTopCategoriesRequest::default())
                    .await?,
            ),
            Query::Overdue => drop(
                obs.list_overdue_tickets(ListOverdueTicketsRequest::default())
                    .await?,
            ),
        }
        Ok(())
    }
}

async fn time_calls<F, Fut>(calls: usize, mut f: F) -> anyhow::Result<Latency>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    // A few untimed calls first: connection and caches.
    for _ in 0..5 {
        f().await?;
    }
    let mut us = Vec::with_capacity(calls);
    for _ in 0..calls {
        let t = Instant::now();
        f().await?;
        us.push(t.elapsed().as_micros() as u64);
    }
    us.sort_unstable();
    Ok(Latency {
        calls,
        p50_us: percentile(&us, 0.5),
        p99_us: percentile(&us, 0.99),
        max_us: us.last().copied().unwrap_or(0),
    })
}

pub async fn run(opts: StatsBenchOptions) -> anyhow::Result<StatsBench> {
    let temp;
    let dir = match &opts.data_dir {
        Some(d) => d.clone(),
        None => {
            temp = tempfile::tempdir()?;
            temp.path().to_owned()
        }
    };
    std::fs::create_dir_all(dir.join("gateway"))?;
    let db = dir.join("gateway").join("gateway.db");
    let (tickets, load_secs) = load(&db, opts.tickets).await?;
    let ledger_bytes = ["", "-wal"]
        .iter()
        .filter_map(|s| std::fs::metadata(format!("{}{s}", db.display())).ok())
        .map(|m| m.len())
        .sum();

    let fed = Spawned::gateway_alone(&dir).await?;
    let channel: Channel = fed.channel(fed.gateway, &Identity::Province, &Identity::Gateway)?;
    let obs = ObservatoryClient::new(channel);
    let stats = |city: &str, window: Window| {
        Query::Stats(GetCityStatsRequest {
            city: city.into(),
            window: window as i32,
            ..Default::default()
        })
    };
    let flow = |window: Window| {
        Query::Flow(GetFlowMatrixRequest {
            window: window as i32,
            ..Default::default()
        })
    };
    let plan = [
        (
            "GetCityStats all cities, since start",
            stats("", Window::Unspecified),
        ),
        ("GetCityStats all cities, month", stats("", Window::Month)),
        ("GetCityStats all cities, day", stats("", Window::Day)),
        ("GetCityStats all cities, hour", stats("", Window::Hour)),
        (
            "GetCityStats one city, month",
            stats("yibin", Window::Month),
        ),
        ("GetFlowMatrix since start", flow(Window::Unspecified)),
        ("GetFlowMatrix month", flow(Window::Month)),
        ("GetTopCategories month", Query::Top),
        ("ListOverdueTickets", Query::Overdue),
    ];
    let mut queries = std::collections::BTreeMap::new();
    for (name, query) in plan {
        let l = time_calls(opts.calls, || query.call(obs.clone())).await?;
        queries.insert(name.to_owned(), l);
    }
    let bench = StatsBench {
        tickets_in_ledger: tickets,
        load_secs,
        load_tickets_per_sec: if load_secs > 0.0 {
            (opts.tickets as f64) / load_secs
        } else {
            0.0
        },
        ledger_bytes,
        gateway_rss_bytes: fed.gateway_rss(),
        queries,
    };
    drop(fed);
    println!(
        "\n{} tickets in the ledger ({:.1} GB)",
        bench.tickets_in_ledger,
        bench.ledger_bytes as f64 / 1e9
    );
    println!(
        "{:<40} {:>10} {:>10} {:>10}",
        "query", "p50 µs", "p99 µs", "max µs"
    );
    for (name, l) in &bench.queries {
        println!(
            "{name:<40} {:>10} {:>10} {:>10}",
            l.p50_us, l.p99_us, l.max_us
        );
    }
    if let Some(path) = &opts.report {
        std::fs::write(path, serde_json::to_string_pretty(&bench)?)?;
        println!("report: {}", path.display());
    }
    Ok(bench)
}
