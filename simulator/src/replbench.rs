//! `simulator bench-replicas`: tickets/s through the gateway on its embedded
//! SQLite ledger and on PostgreSQL, with one replica and with two sharing
//! the database (issue #9).
//!
//! The unit of work is `simulator bench`'s B path: `Federation.DispatchTicket`
//! as Luzhou (its node a sink that acknowledges), committed by the gateway,
//! delivered to Yibin's node, and counted only once the ledger has recorded
//! Yibin's commit. With two replicas the load generator's connections are
//! split between them; each ticket is delivered by the replica holding
//! Yibin's lease. Loads as `simulator bench`: one request at a time, then
//! 8 connections × 16 in flight. The three configurations are interleaved.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use hotline_proto::identity::Identity;
use hotline_proto::pb::federation_client::FederationClient;
use hotline_proto::pb::observatory_client::ObservatoryClient;
use serde::Serialize;

use crate::peers::{Caller, ORIGIN, Run, Target, run_path};
use crate::spawn::Spawned;

const CONNECTIONS: usize = 8;
const LIMITS: &str = "[limits]\nper_caller_rps = 1000000.0\nper_caller_burst = 1000000.0\n";

#[derive(Debug, Clone)]
pub struct ReplicaBenchOptions {
    /// A short run: fewer requests, one round.
    pub quick: bool,
    pub report: Option<PathBuf>,
    /// The PostgreSQL server (a fresh schema is made on it).
    pub postgres: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct ReplicaBench {
    pub runs: Vec<Run>,
    /// The median run of each configuration.
    pub medians: Vec<Run>,
}

fn callers(fed: &Spawned, addrs: &[std::net::SocketAddr]) -> anyhow::Result<Vec<Caller>> {
    (0..CONNECTIONS)
        .map(|c| {
            let addr = addrs[c % addrs.len()];
            Ok(Caller::Gateway(FederationClient::new(fed.channel(
                addr,
                &Identity::Gateway,
                &Identity::Gateway,
            )?)))
        })
        .collect()
}

pub async fn run(opts: ReplicaBenchOptions) -> anyhow::Result<ReplicaBench> {
    let (latency_n, window, reps) = if opts.quick {
        (200, Duration::from_secs(2), 1)
    } else {
        (2000, Duration::from_secs(8), 3)
    };
    let origin = BTreeMap::from([(ORIGIN.to_owned(), crate::sink::start().await?)]);
    let others = ["yibin", "zigong", "neijiang"];

    let sqlite_dir = tempfile::tempdir()?;
    let sqlite =
        Spawned::start_beside(&others, &origin, sqlite_dir.path(), LIMITS, true, &[]).await?;
    println!("sqlite: gateway {}", sqlite.gateway);

    let pg_dir = tempfile::tempdir()?;
    let mut pg = Spawned::start_beside(&others, &origin, pg_dir.path(), LIMITS, true, &[]).await?;
    let schema = format!(
        "bench_{}_{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    );
    pg.move_gateway_store(&opts.postgres, &schema)
        .await
        .context("the gateway on PostgreSQL")?;
    println!("postgres: gateway {}, schema {schema}", pg.gateway);

    let sqlite_obs = ObservatoryClient::new(sqlite.channel(
        sqlite.gateway,
        &Identity::Province,
        &Identity::Gateway,
    )?);
    let pg_obs =
        ObservatoryClient::new(pg.channel(pg.gateway, &Identity::Province, &Identity::Gateway)?);
    let yibin_pid = |fed: &Spawned| {
        fed.nodes
            .keys()
            .zip(fed.node_pids())
            .find(|(c, _)| c.as_str() == "yibin")
            .map(|(_, p)| p)
            .unwrap_or(0)
    };

    // Dead rows vacuumed and statistics for the planner taken, as
    // autovacuum does on a server that runs it (this machine's has it off):
    // before each round, after the ledger has grown.
    let analyze = {
        let (url, schema) = (opts.postgres.clone(), schema.clone());
        move || {
            let (url, schema) = (url.clone(), schema.clone());
            async move {
                tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
                    let mut c = hotline_durable::db::connect_postgres(&url, &schema)?;
                    c.batch_execute("VACUUM ANALYZE")?;
                    Ok(())
                })
                .await?
            }
        }
    };
    // A warm-up, not counted, so that the first statistics are of a ledger
    // with tickets in it.
    let warm = Target {
        name: "warm-up",
        callers: callers(&pg, &[pg.gateway])?,
        pids: Vec::new(),
        observatory: Some(&pg_obs),
    };
    run_path(&warm, latency_n / 10, Duration::from_secs(2)).await?;
    let mut runs = Vec::new();
    for rep in 0..reps {
        analyze().await.context("VACUUM ANALYZE")?;
        let one = Target {
            name: "sqlite, 1 replica",
            callers: callers(&sqlite, &[sqlite.gateway])?,
            pids: vec![
                ("gateway", sqlite.gateway_pid()),
                ("node", yibin_pid(&sqlite)),
            ],
            observatory: Some(&sqlite_obs),
        };
        runs.push(report(rep, reps, run_path(&one, latency_n, window).await?));

        let pg_one = Target {
            name: "postgres, 1 replica",
            callers: callers(&pg, &[pg.gateway])?,
            pids: vec![("gateway", pg.gateway_pid()), ("node", yibin_pid(&pg))],
            observatory: Some(&pg_obs),
        };
        runs.push(report(
            rep,
            reps,
            run_path(&pg_one, latency_n, window).await?,
        ));

        let replica = pg.start_replica().await?;
        // The first replica keeps every lease it holds (leases do not
        // rebalance): it delivers, and both take dispatches.
        let pg_two = Target {
            name: "postgres, 2 replicas",
            callers: callers(&pg, &[pg.gateway, replica.addr])?,
            pids: vec![
                ("gateway", pg.gateway_pid()),
                ("replica", replica.pid()),
                ("node", yibin_pid(&pg)),
            ],
            observatory: Some(&pg_obs),
        };
        let before = crate::peers::CONFLICTS.load(std::sync::atomic::Ordering::Relaxed);
        runs.push(report(
            rep,
            reps,
            run_path(&pg_two, latency_n, window).await?,
        ));
        let conflicts = crate::peers::CONFLICTS.load(std::sync::atomic::Ordering::Relaxed) - before;
        println!("        conflicts between the replicas (ABORTED, tried again): {conflicts}");
        drop(replica);
    }
    let medians = [
        "sqlite, 1 replica",
        "postgres, 1 replica",
        "postgres, 2 replicas",
    ]
    .iter()
    .filter_map(|name| crate::peers::median_run(&runs, name))
    .collect();
    let out = ReplicaBench { runs, medians };
    if let Some(path) = &opts.report {
        std::fs::write(path, serde_json::to_string_pretty(&out)?)
            .with_context(|| format!("write {}", path.display()))?;
    }
    Ok(out)
}

fn report(rep: usize, reps: usize, r: Run) -> Run {
    crate::peers::print_run(rep, reps, 22, &r);
    r
}
