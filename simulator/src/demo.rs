//! `simulator demo`: the whole federation on this machine in one command.
//!
//! Starts the gateway and a node per city on loopback, plays each city's
//! citizens and operators and the provincial coordinator against them,
//! shows progress, and at the end (after `--duration`, or on Ctrl-C) lets
//! the federation drain, counts what the stores hold, prints a table per
//! city and writes the JSON report.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hotline_proto::Catalogue;
use hotline_proto::pb::CreateTicketRequest;
use hotline_proto::pb::GetCityStatsRequest;
use hotline_proto::pb::city_hotline_client::CityHotlineClient;
use hotline_proto::pb::observatory_client::ObservatoryClient;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::calls::{self, CallBehaviour, CallLog, Started};
use crate::cluster::Cluster;
use crate::operators::{self, Actions, Behaviour};
use crate::report::{self, Created, Report};
use crate::workload::{Citizens, Mix};

#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Stop by itself after this long; run until Ctrl-C when absent.
    pub duration: Option<Duration>,
    pub report: Option<PathBuf>,
    /// Keep the stores here; a temporary directory when absent.
    pub data_dir: Option<PathBuf>,
    /// Requests per second each city's hotline takes.
    pub rate: f64,
    pub seed: u64,
    /// How long to wait at the end for everything in flight to arrive.
    pub drain: Duration,
    /// Call transfers started per second at each city's desk (0: none).
    pub transfer_rate: f64,
}

/// Runs the demo; returns the report, whose `lost` and `duplicated` the
/// caller turns into the exit code.
pub async fn run(opts: DemoOptions) -> anyhow::Result<Report> {
    let catalogue = Catalogue::default();
    let temp;
    let data_dir = match &opts.data_dir {
        Some(d) => d.clone(),
        None => {
            temp = tempfile::tempdir()?;
            temp.path().to_owned()
        }
    };
    let cluster = Cluster::start(&catalogue, &data_dir).await?;
    println!("gateway: {}", cluster.gateway);
    println!("dashboard: http://{}/", cluster.dashboard);
    for (city, addr) in &cluster.nodes {
        println!("{city}: {addr}");
    }
    println!("data: {}", data_dir.display());
    let nodes = report::channels(&cluster.pki, &cluster.nodes)?;
    let gateway = cluster.pki.province_channel(cluster.gateway)?;

    let created: Arc<Mutex<Vec<Created>>> = Arc::default();
    let call_log = Arc::new(CallLog::default());
    let call_behaviour = CallBehaviour {
        rate: opts.transfer_rate,
        ..CallBehaviour::default()
    };
    let city_ids: Vec<String> = catalogue.city_ids().map(str::to_owned).collect();
    let category_ids: Vec<String> = catalogue.categories.iter().map(|c| c.id.clone()).collect();
    let actions = Arc::new(Actions::default());
    let (stop_load, load_rx) = watch::channel(false);
    let (stop_people, people_rx) = watch::channel(false);
    let mut load = JoinSet::new();
    let mut people = JoinSet::new();
    for (i, (city, channel)) in nodes.iter().enumerate() {
        // Some matters reported again by other citizens (merged by the
        // gateway), and departments that take longer on some tickets than
        // the gateway's deadline (crate::cluster::DUE) allows.
        let mix = Mix {
            repeat: 100,
            ..Mix::default()
        };
        let citizens = Citizens::new(city, &catalogue, opts.seed, mix);
        load.spawn(citizens_of(
            CityHotlineClient::new(channel.clone()),
            citizens,
            opts.rate,
            created.clone(),
            load_rx.clone(),
        ));
        people.spawn(operators::operators(
            CityHotlineClient::new(channel.clone()),
            opts.seed.wrapping_add(100 + i as u64),
            Behaviour::day(crate::cluster::DUE / 4, crate::cluster::DUE * 3 / 2),
            actions.clone(),
            people_rx.clone(),
        ));
        // Each operator's console, and the desk, on a certificate of its
        // own: it acts as that operator only.
        let addr = cluster.nodes[city.as_str()];
        let mut operators = calls::operator_ids(city, &call_behaviour);
        operators.push(calls::desk_id(city));
        cluster.pki.issue_consoles(city, &operators)?;
        let console = |operator: &str| -> anyhow::Result<CityHotlineClient<_>> {
            Ok(CityHotlineClient::new(
                cluster.pki.console_channel(addr, city, operator)?,
            ))
        };
        calls::consoles(
            &mut people,
            &console,
            city,
            &category_ids,
            opts.seed.wrapping_add(1000 + 10 * i as u64),
            call_behaviour,
            &people_rx,
        )?;
        if opts.transfer_rate > 0.0 {
            load.spawn(calls::desk(
                console(&calls::desk_id(city))?,
                city.clone(),
                city_ids.clone(),
                category_ids.clone(),
                opts.seed.wrapping_add(2000 + i as u64),
                call_behaviour,
                call_log.clone(),
                created.clone(),
                load_rx.clone(),
            ));
        }
    }
    people.spawn(operators::coordinator(
        ObservatoryClient::new(gateway.clone()),
        catalogue.city_ids().map(str::to_owned).collect(),
        opts.seed.wrapping_add(7),
        actions.clone(),
        people_rx.clone(),
    ));

    let started = Instant::now();
    let mut progress = tokio::time::interval(Duration::from_secs(2));
    progress.tick().await;
    let end = async {
        match opts.duration {
            Some(d) => tokio::time::sleep(d).await,
            None => hotline_proto::grpc::shutdown_signal().await,
        }
    };
    tokio::pin!(end);
    loop {
        tokio::select! {
            _ = &mut end => break,
            _ = hotline_proto::grpc::shutdown_signal(), if opts.duration.is_some() => break,
            _ = progress.tick() => {
                let n = created.lock().map(|c| c.len()).unwrap_or(0);
                let calls = call_log.started.lock().map(|c| c.len()).unwrap_or(0);
                let line = progress_line(ObservatoryClient::new(gateway.clone()), started, n, calls).await;
                println!("{line}");
            }
        }
    }
    let _ = stop_load.send(true);
    while load.join_next().await.is_some() {}
    let snapshot: Vec<Created> = created.lock().map(|c| c.clone()).unwrap_or_default();
    let transfers = call_log.snapshot();
    println!(
        "stopped creating after {:.1}s with {} tickets and {} transfers; letting the federation drain",
        started.elapsed().as_secs_f64(),
        snapshot.len(),
        transfers.len()
    );

    // Drain: what was acknowledged must arrive; the operators go on working
    // meanwhile. Then they stop, and the federation settles: an owner just
    // named by the coordinator may hold its ticket a moment before the
    // gateway has recorded the acknowledgement.
    let drain_end = Instant::now() + opts.drain;
    let none = report::Baseline::default();
    settle(
        &snapshot, &transfers, &nodes, &gateway, drain_end, &none, true,
    )
    .await?;
    let _ = stop_people.send(true);
    while people.join_next().await.is_some() {}
    let mut report = settle(
        &snapshot,
        &transfers,
        &nodes,
        &gateway,
        Instant::now() + Duration::from_secs(10),
        &none,
        true,
    )
    .await?;
    report.duration_secs = started.elapsed().as_secs_f64();
    report.seed = opts.seed;
    print!("\n{}", report::table(&report));
    for p in &report.problems {
        println!("problem: {p}");
    }
    if let Some(path) = &opts.report {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)?;
        println!("report: {}", path.display());
    }
    cluster.stop().await?;
    Ok(report)
}

/// Counts until nothing is missing, no transfer is live and, with
/// `agreement`, the gateway's statistics agree with the recount (they
/// cannot while the simulated people still act); or until `until`.
pub(crate) async fn settle(
    created: &[Created],
    transfers: &[Started],
    nodes: &BTreeMap<String, tonic::transport::Channel>,
    gateway: &tonic::transport::Channel,
    until: Instant,
    baseline: &report::Baseline,
    agreement: bool,
) -> anyhow::Result<Report> {
    let started = Instant::now();
    let mut said = started;
    loop {
        let r = report::count_since(created, transfers, nodes, gateway.clone(), baseline).await?;
        let settled =
            r.tickets.lost == 0 && (r.gateway_stats_agree || !agreement) && r.transfers.live == 0;
        if settled || Instant::now() >= until {
            return Ok(r);
        }
        if said.elapsed() >= Duration::from_secs(5) {
            said = Instant::now();
            println!(
                "settling ({:.0}s): {} tickets not yet where they belong, {} transfers live, gateway statistics {}",
                started.elapsed().as_secs_f64(),
                r.tickets.lost,
                r.transfers.live,
                if r.gateway_stats_agree {
                    "agree"
                } else {
                    "catching up"
                }
            );
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// One city's citizens: a request every 1/rate seconds on average.
pub async fn citizens_of(
    mut client: CityHotlineClient<tonic::transport::Channel>,
    mut citizens: Citizens,
    rate: f64,
    created: Arc<Mutex<Vec<Created>>>,
    stop: watch::Receiver<bool>,
) {
    let period = Duration::from_secs_f64(1.0 / rate.max(0.01));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !*stop.borrow() {
        tick.tick().await;
        let draft = citizens.next_request();
        let req = CreateTicketRequest {
            ticket: Some(draft),
        };
        // Retried with the same request id until the node answers: a retry
        // never makes a second ticket.
        for _ in 0..20 {
            match client.create_ticket(req.clone()).await {
                Ok(r) => {
                    if let Some(t) = r.into_inner().ticket
                        && let Ok(mut c) = created.lock()
                    {
                        c.push(Created {
                            id: t.id,
                            origin: t.origin_city,
                            targets: t.target_cities,
                            category: t.category,
                        });
                    }
                    break;
                }
                Err(e) if hotline_proto::grpc::is_transient(e.code()) => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => {
                    tracing::warn!(code = ?e.code(), message = %e.message(), "request refused");
                    break;
                }
            }
        }
    }
}

async fn progress_line(
    mut observatory: ObservatoryClient<tonic::transport::Channel>,
    started: Instant,
    created: usize,
    transfers: usize,
) -> String {
    let stats = observatory
        .get_city_stats(GetCityStatsRequest::default())
        .await
        .map(|r| r.into_inner().cities)
        .unwrap_or_default();
    let mut per_city = BTreeMap::new();
    for s in &stats {
        per_city.insert(s.city.clone(), (s.sent, s.received));
    }
    let cities: Vec<String> = per_city
        .iter()
        .map(|(c, (s, r))| format!("{c} {s}→/{r}←"))
        .collect();
    format!(
        "[{:>5.1}s] created {created}, transfers {transfers}; {}",
        started.elapsed().as_secs_f64(),
        cities.join("  ")
    )
}
