//! `simulator run`: a scenario played against a federation — started here
//! as real child processes (`--spawn`), so that faults can kill, stall and
//! cut them, or one already running elsewhere (`--targets FILE`). Checks
//! the invariants live and at the end, shows a progress bar, prints a
//! summary table and writes the JSON and HTML reports.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use hotline_proto::pb::CreateTicketRequest;
use hotline_proto::pb::city_hotline_client::CityHotlineClient;
use hotline_proto::pb::observatory_client::ObservatoryClient;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tonic::transport::Channel;

use crate::calls::{self, CallBehaviour, CallLog};
use crate::faultproxy::Mode;
use crate::invariants::{self, Violation};
use crate::operators::{self, Actions, Handling};
use crate::pki::Pki;
use crate::plan::{Arrival, Plan, PlanFigures, Planned, PlannedTransfer};
use crate::report::{self, Created, Report};
use crate::scenario::{Fault, FaultKind, Scenario};
use crate::spawn::{Spawned, Target};

/// Where the federation comes from.
#[derive(Debug, Clone)]
pub enum How {
    /// Started here, as child processes; the stores under `data_dir` (a
    /// temporary directory when absent).
    Spawn { data_dir: Option<PathBuf> },
    /// Already running, as a targets file describes it.
    Targets(PathBuf),
}

#[derive(Debug, Clone)]
pub struct RunOptions {
    /// A built-in scenario's name or a file.
    pub scenario: String,
    pub how: How,
    pub seed: u64,
    /// Overrides the scenario's speed.
    pub speed: Option<f64>,
    /// Overrides the scenario's simulated minutes.
    pub minutes: Option<f64>,
    pub report: Option<PathBuf>,
    pub html: Option<PathBuf>,
    /// How long to wait at the end for what is in flight.
    pub drain: Duration,
    /// Draw the progress bar (when stderr is a terminal).
    pub progress: bool,
}

/// A running federation described by a file: the gateway's address, each
/// city node's, and the directory of certificates (as `gateway certs init`
/// makes them) the simulator presents as the province and as each city.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TargetsFile {
    gateway: SocketAddr,
    /// Relative to the targets file.
    certs: PathBuf,
    nodes: BTreeMap<String, SocketAddr>,
}

#[derive(Debug, Clone, Serialize)]
pub struct FaultRecord {
    pub at_secs: f64,
    pub kind: FaultKind,
    pub target: String,
    pub for_secs: f64,
    /// "done", or what went wrong applying it.
    pub outcome: String,
}

/// Counts once a second, for the report's chart over time.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Sample {
    pub secs: f64,
    pub simulated_minutes: f64,
    pub tickets: u64,
    pub transfers: u64,
    pub violations: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct FlowCell {
    pub origin: String,
    pub target: String,
    pub tickets: u64,
    pub transfers: u64,
}

#[derive(Debug, Default, Serialize)]
pub struct Done {
    /// Requests the origins acknowledged (each a ticket).
    pub tickets_acknowledged: u64,
    /// Requests refused for good (never one, unless something is wrong).
    pub tickets_refused: u64,
    /// Planned transfers the desk's node would not start (it was down).
    pub transfers_not_started: u64,
    pub accepted: u64,
    pub rejected: u64,
    pub resolved: u64,
    pub closed: u64,
    pub reopened: u64,
    pub assigned: u64,
    /// `ConvertTransferToTicket` calls the desks made, retries included
    /// (against `figures.transfers.converted_to_tickets`).
    pub conversion_calls: u64,
    /// Conversions a desk gave up on for a while (see `CallLog`).
    pub conversions_not_made: u64,
}

#[derive(Debug, Serialize)]
pub struct RunReport {
    pub scenario: String,
    pub description: String,
    pub mode: String,
    pub seed: u64,
    pub speed: f64,
    pub simulated_minutes: f64,
    pub duration_secs: f64,
    pub plan: PlanFigures,
    pub done: Done,
    pub faults: Vec<FaultRecord>,
    pub flow: Vec<FlowCell>,
    pub timeline: Vec<Sample>,
    /// The recount from the nodes' stores, compared with the gateway.
    pub figures: Report,
    /// Escalations in the supervision ledger at the end, per rule.
    pub escalations: BTreeMap<String, u64>,
    pub invariant_violations: Vec<Violation>,
}

/// The faults of `s` in time order: its schedule, and random ones drawn
/// from `seed` over `real_secs`.
pub fn faults(s: &Scenario, cities: &[String], seed: u64, real_secs: f64) -> Vec<Fault> {
    let mut out = s.faults.clone();
    if let Some(r) = &s.random_faults {
        let mut rng = StdRng::seed_from_u64(seed ^ 0xFA17);
        let mut t = 0.0;
        loop {
            let u: f64 = rng.random_range(f64::MIN_POSITIVE..1.0);
            t += -u.ln() * r.every_secs;
            if t >= real_secs {
                break;
            }
            let kind = r.kinds[rng.random_range(0..r.kinds.len())];
            let may_gateway = r.gateway && matches!(kind, FaultKind::Kill | FaultKind::Stall);
            let pick = rng.random_range(0..cities.len() + usize::from(may_gateway));
            let target = cities
                .get(pick)
                .cloned()
                .unwrap_or_else(|| "gateway".into());
            out.push(Fault {
                at_secs: t,
                kind,
                target,
                for_secs: r.for_secs,
                latency_ms: r.latency_ms,
            });
        }
    }
    out.sort_by(|a, b| a.at_secs.total_cmp(&b.at_secs));
    out
}

/// Plays `opts.scenario`; returns the report, whose violations the caller
/// turns into the exit code.
pub async fn run(opts: RunOptions) -> anyhow::Result<RunReport> {
    let mut scenario = Scenario::load(&opts.scenario)?;
    if let Some(m) = opts.minutes {
        scenario.duration_minutes = m;
    }
    if let Some(x) = opts.speed {
        scenario.speed = x;
    }
    if !(scenario.speed > 0.0 && scenario.speed.is_finite()) {
        bail!("--speed: must be a positive number");
    }
    if !(scenario.duration_minutes > 0.0 && scenario.duration_minutes.is_finite()) {
        bail!("--minutes: must be a positive number");
    }
    let catalogue = scenario.catalogue()?;
    let cities: Vec<String> = catalogue.city_ids().map(str::to_owned).collect();
    let plan = Plan::new(&scenario, &catalogue, opts.seed);
    let figures = plan.figures();
    let real_secs = scenario.real_secs(scenario.speed);
    println!(
        "scenario {}: {} cities, {:.0} simulated minutes at speed {} ({real_secs:.0} s)",
        scenario.name,
        cities.len(),
        scenario.duration_minutes,
        scenario.speed
    );
    println!(
        "workload (seed {}, digest {}): {} requests ({} cross-city, {} multi-city, {} urgent, {} repeated on another channel), {} transfers ({:.3} per cross-city ticket)",
        opts.seed,
        figures.digest,
        figures.requests,
        figures.cross_city,
        figures.multi_city,
        figures.urgent,
        figures.repeats,
        figures.transfers,
        figures.transfers_per_dispatched
    );

    // The federation.
    let temp;
    let (pki, gateway_addr, node_addrs, spawned, mode, tag) = match &opts.how {
        How::Spawn { data_dir } => {
            let dir = match data_dir {
                Some(d) => {
                    std::fs::create_dir_all(d)
                        .with_context(|| format!("create {}", d.display()))?;
                    d.clone()
                }
                None => {
                    temp = tempfile::tempdir()?;
                    temp.path().to_owned()
                }
            };
            println!(
                "starting the gateway and {} city nodes under {}",
                cities.len(),
                dir.display()
            );
            let fed = Spawned::federation(
                &catalogue,
                &dir,
                &scenario.supervision.gateway_toml(),
                "ring_timeout_ms = 2000\ntransfer_deadline_ms = 20000\n",
                true,
            )
            .await?;
            (
                fed.pki.clone(),
                fed.gateway,
                fed.nodes.clone(),
                Some(fed),
                "spawn",
                // A fresh federation: the plan's request ids as they are.
                "run".to_owned(),
            )
        }
        How::Targets(file) => {
            let text = std::fs::read_to_string(file)
                .with_context(|| format!("read targets {}", file.display()))?;
            let t: TargetsFile =
                toml::from_str(&text).with_context(|| format!("targets {}", file.display()))?;
            for city in &cities {
                if !t.nodes.contains_key(city) {
                    bail!(
                        "targets {}: nodes.{city}: the scenario's city has no address",
                        file.display()
                    );
                }
            }
            let base = file.parent().unwrap_or(Path::new("."));
            let pki = Pki {
                dir: base.join(&t.certs),
            };
            // Another run against the same federation must not look like a
            // retry of this one's requests.
            let tag = format!("run{}", hotline_proto::time::now_ms());
            (pki, t.gateway, t.nodes, None, "targets", tag)
        }
    };
    let nodes: BTreeMap<String, Channel> = report::channels(&pki, &node_addrs)?
        .into_iter()
        .filter(|(c, _)| cities.contains(c))
        .collect();
    let gateway = pki.province_channel(gateway_addr)?;
    let spawned = spawned.map(|s| Arc::new(tokio::sync::Mutex::new(s)));
    // A federation with a history: this run is compared with what the
    // gateway's figures grow by.
    let baseline = report::Baseline::take(gateway.clone(), &nodes)
        .await
        .context("the gateway's statistics before the run")?;

    let created: Arc<Mutex<Vec<Created>>> = Arc::default();
    let call_log = Arc::new(CallLog::default());
    let actions = Arc::new(Actions::default());
    let acknowledged = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let violations: Arc<Mutex<Vec<Violation>>> = Arc::default();
    // Transfers handed to a desk and not yet started or refused.
    let at_desks = Arc::new(AtomicU64::new(0));
    let (stop_load, load_rx) = watch::channel(false);
    let (stop_people, people_rx) = watch::channel(false);
    let mut load = JoinSet::new();
    let mut desks = JoinSet::new();
    let mut people = JoinSet::new();
    let behaviour = CallBehaviour {
        rate: 0.0,
        operators: scenario.transfers.console_operators,
        answer: (scenario.transfers.answer * 1000.0) as u32,
        decline: (scenario.transfers.decline * 1000.0) as u32,
        cancel: (scenario.transfers.cancel * 1000.0) as u32,
    };
    let handling = Handling {
        operators: scenario.operators.per_city,
        accept: scenario.operators.accept,
        resolve: scenario.operators.resolve,
        reject: scenario.operators.reject_share,
        unsatisfied: scenario.citizens.unsatisfied_share,
        basically_satisfied: scenario.citizens.basically_satisfied_share,
        max_reopens: scenario.citizens.max_reopens,
        speed: scenario.speed,
    };
    let category_ids: Vec<String> = catalogue.category_ids().map(str::to_owned).collect();
    // This run's tickets: its requests (tagged) and the tickets its failed
    // transfers became; the coordination queue gives ids only.
    // A spawned federation holds nothing else: every ticket is the run's.
    let mine: operators::Mine = if spawned.is_some() {
        operators::all()
    } else {
        let (prefix, calls, created) = (format!("{tag}-"), call_log.clone(), created.clone());
        Arc::new(move |id: &str, request: &str| {
            if request.starts_with(&prefix) {
                return true;
            }
            if let Some(transfer) = request.strip_prefix("transfer:") {
                return calls
                    .started
                    .lock()
                    .is_ok_and(|s| s.iter().any(|x| x.id == transfer));
            }
            let parent = id.split('.').next().unwrap_or(id);
            request.is_empty()
                && created
                    .lock()
                    .is_ok_and(|c| c.iter().any(|x| x.id == parent))
        })
    };
    let t0 = Instant::now();
    let mut plan = plan;
    for (i, (city, channel)) in nodes.iter().enumerate() {
        let client = CityHotlineClient::new(channel.clone());
        let mut handling = handling;
        if let Some(f) = scenario.operators.slow_cities.get(city) {
            for m in [&mut handling.accept, &mut handling.resolve] {
                m.median *= f;
                m.p90 *= f;
            }
        }
        people.spawn(operators::handlers(
            client.clone(),
            opts.seed.wrapping_add(100 + i as u64),
            handling,
            actions.clone(),
            mine.clone(),
            people_rx.clone(),
        ));
        // Each operator's console, and the desk, on a certificate of its
        // own in a federation this run made (it acts as that operator
        // only); on the city's, its platform's, in one given by targets.
        let addr = node_addrs[city.as_str()];
        if spawned.is_some() {
            let mut operators = calls::operator_ids(city, &behaviour);
            operators.push(calls::desk_id(city));
            pki.issue_consoles(city, &operators)?;
        }
        let console = |operator: &str| -> anyhow::Result<CityHotlineClient<Channel>> {
            Ok(CityHotlineClient::new(
                pki.console_channel(addr, city, operator)?,
            ))
        };
        calls::consoles(
            &mut people,
            &console,
            city,
            &category_ids,
            opts.seed.wrapping_add(1000 + 100 * i as u64),
            behaviour,
            &people_rx,
        )?;
        let (desk_tx, desk_rx) = mpsc::unbounded_channel();
        desks.spawn(calls::planned_desk(
            console(&calls::desk_id(city))?,
            city.clone(),
            desk_rx,
            at_desks.clone(),
            call_log.clone(),
            created.clone(),
            people_rx.clone(),
        ));
        load.spawn(arrivals(
            client,
            plan.cities.remove(city).unwrap_or_default(),
            desk_tx,
            Pace {
                t0,
                speed: scenario.speed,
                tag: tag.clone(),
                at_desks: at_desks.clone(),
            },
            Tally {
                created: created.clone(),
                acknowledged: acknowledged.clone(),
                refused: refused.clone(),
            },
            load_rx.clone(),
        ));
    }
    people.spawn(operators::coordinator_of(
        ObservatoryClient::new(gateway.clone()),
        cities.clone(),
        opts.seed.wrapping_add(7),
        actions.clone(),
        mine,
        people_rx.clone(),
    ));

    let schedule = faults(&scenario, &cities, opts.seed, real_secs);
    let fault_log: Arc<Mutex<Vec<FaultRecord>>> = Arc::default();
    let fault_task = match &spawned {
        Some(fed) => Some(tokio::spawn(play_faults(
            fed.clone(),
            schedule.clone(),
            t0,
            fault_log.clone(),
        ))),
        None => {
            if !schedule.is_empty() {
                println!(
                    "the scenario's {} faults are skipped: they need --spawn (the federation's processes are not this run's)",
                    schedule.len()
                );
            }
            None
        }
    };
    let checker = tokio::spawn(live_checks(
        nodes.clone(),
        gateway.clone(),
        created.clone(),
        call_log.clone(),
        violations.clone(),
        people_rx.clone(),
    ));

    // Progress, until the plan's last arrival.
    let bar = progress_bar(opts.progress, real_secs);
    let mut timeline = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let mut next_sample = 0.0;
    let load_done = async { while load.join_next().await.is_some() {} };
    tokio::pin!(load_done);
    let mut interrupted = false;
    loop {
        tokio::select! {
            _ = &mut load_done => break,
            _ = hotline_proto::grpc::shutdown_signal() => {
                interrupted = true;
                let _ = stop_load.send(true);
            }
            _ = tick.tick() => {
                let secs = t0.elapsed().as_secs_f64();
                let s = sample(secs, scenario.speed, &created, &call_log, &violations);
                bar.set_position((secs * 1000.0).min(real_secs * 1000.0) as u64);
                bar.set_message(status_line(&s, scenario.start_hour, &fault_log, schedule.len()));
                if secs >= next_sample {
                    timeline.push(s);
                    next_sample += 1.0;
                }
            }
        }
    }
    let _ = stop_load.send(true);
    bar.finish_and_clear();
    if interrupted {
        println!("interrupted: stopping the load and settling");
    }
    // Every fault heals before the count: a killed process is back, links
    // are whole again.
    if let Some(task) = fault_task {
        if interrupted {
            task.abort();
        }
        let _ = task.await;
    }
    if let Some(fed) = &spawned {
        let mut fed = fed.lock().await;
        for links in fed.links.values() {
            links.set(Mode::Pass);
        }
        fed.ready().await?;
    }
    // The desks start what was handed to them before the count.
    let until = Instant::now() + Duration::from_secs(30);
    while at_desks.load(Ordering::Relaxed) > 0 && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let snapshot: Vec<Created> = created.lock().map(|c| c.clone()).unwrap_or_default();
    let transfers = call_log.snapshot();
    println!(
        "load done after {:.1}s: {} tickets, {} transfers; letting the federation settle",
        t0.elapsed().as_secs_f64(),
        snapshot.len(),
        transfers.len()
    );
    // What was acknowledged arrives while the people go on working; then
    // they stop, and the gateway's figures must agree with the recount.
    crate::demo::settle(
        &snapshot,
        &transfers,
        &nodes,
        &gateway,
        Instant::now().into_std() + opts.drain,
        &baseline,
        false,
    )
    .await?;
    let _ = stop_people.send(true);
    while people.join_next().await.is_some() {}
    let mut not_started = 0;
    while let Some(n) = desks.join_next().await {
        not_started += n.unwrap_or(0);
    }
    let _ = checker.await;
    // Conversions of failed transfers made tickets until the desks stopped,
    // and a desk behind its plan started transfers until then.
    let snapshot: Vec<Created> = created.lock().map(|c| c.clone()).unwrap_or_default();
    let transfers = call_log.snapshot();
    let settle_figures = |until: std::time::Instant| {
        crate::demo::settle(
            &snapshot, &transfers, &nodes, &gateway, until, &baseline, true,
        )
    };
    let mut figures_report =
        settle_figures(std::time::Instant::now() + opts.drain.max(Duration::from_secs(15))).await?;
    // The settling above waits for tickets, transfers and figures, not for
    // each event to have reached the ticket's other side: one may still be
    // in the gateway's outbox, in its backoff after a kill or a stall of
    // that city. Within the drain, wait until the copies agree; one that
    // never arrives is still a violation below.
    let agree_by = std::time::Instant::now() + opts.drain.max(Duration::from_secs(15));
    while std::time::Instant::now() < agree_by {
        let behind = invariants::holdings(&nodes, &gateway, &snapshot, true).await?;
        if !behind.iter().any(|v| v.invariant == "events-in-order") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // The figures are compared with the histories at the origins: counted
    // while events were still on their way there, they are counted again
    // now that the copies agree (a gateway far behind under load catches
    // up here; one that counts wrong still disagrees).
    if !figures_report.gateway_stats_agree {
        figures_report =
            settle_figures(std::time::Instant::now() + Duration::from_secs(15)).await?;
    }
    let mut found = violations.lock().map(|v| v.clone()).unwrap_or_default();
    found.extend(invariants::at_end(&figures_report, &nodes, &gateway, &snapshot).await?);
    let (broken, escalations) =
        invariants::supervision(&nodes, &gateway, &snapshot, &scenario.supervision).await?;
    found.extend(broken);
    let mut seen = BTreeSet::new();
    // One violation per ticket or transfer and invariant, live or at the
    // end (statistics: one per figure that disagrees).
    found.retain(|v| {
        let detail = if v.invariant == "statistics" {
            v.detail.clone()
        } else {
            String::new()
        };
        seen.insert((v.invariant.clone(), v.subject.clone(), detail))
    });
    timeline.push(sample(
        t0.elapsed().as_secs_f64(),
        scenario.speed,
        &created,
        &call_log,
        &violations,
    ));

    let a = &actions;
    let duration_secs = t0.elapsed().as_secs_f64();
    // The recount is of this run: its seed and length, not the defaults.
    figures_report.seed = opts.seed;
    figures_report.duration_secs = duration_secs;
    let report = RunReport {
        scenario: scenario.name.clone(),
        description: scenario.description.clone(),
        mode: mode.into(),
        seed: opts.seed,
        speed: scenario.speed,
        simulated_minutes: scenario.duration_minutes,
        duration_secs,
        plan: figures,
        done: Done {
            tickets_acknowledged: acknowledged.load(Ordering::Relaxed),
            tickets_refused: refused.load(Ordering::Relaxed),
            transfers_not_started: not_started,
            accepted: a.accepted.load(Ordering::Relaxed),
            rejected: a.rejected.load(Ordering::Relaxed),
            resolved: a.resolved.load(Ordering::Relaxed),
            closed: a.closed.load(Ordering::Relaxed),
            reopened: a.reopened.load(Ordering::Relaxed),
            assigned: a.assigned.load(Ordering::Relaxed),
            conversion_calls: call_log.conversion_calls.load(Ordering::Relaxed),
            conversions_not_made: call_log.conversions_not_made.load(Ordering::Relaxed),
        },
        faults: fault_log.lock().map(|f| f.clone()).unwrap_or_default(),
        flow: flow(&snapshot, &transfers),
        timeline,
        figures: figures_report,
        escalations,
        invariant_violations: found,
    };
    print!("\n{}", summary(&report));
    if let Some(path) = &opts.report {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("write {}", path.display()))?;
        println!("report: {}", path.display());
    }
    if let Some(path) = &opts.html {
        std::fs::write(path, crate::html::page(&report))
            .with_context(|| format!("write {}", path.display()))?;
        println!("html report: {}", path.display());
    }
    if let Some(fed) = spawned {
        // The processes are killed when the last handle goes.
        drop(fed);
    }
    Ok(report)
}

struct Pace {
    t0: Instant,
    speed: f64,
    /// Prefixed to the plan's request ids.
    tag: String,
    /// Counts the transfers handed to the desk.
    at_desks: Arc<AtomicU64>,
}

struct Tally {
    created: Arc<Mutex<Vec<Created>>>,
    acknowledged: Arc<AtomicU64>,
    refused: Arc<AtomicU64>,
}

/// One city's planned arrivals, each at its time: tickets created (retried
/// with the same request id while the node is away), transfers handed to
/// the desk. Returns once every creation has an answer.
async fn arrivals(
    client: CityHotlineClient<Channel>,
    planned: Vec<Planned>,
    desk: mpsc::UnboundedSender<PlannedTransfer>,
    pace: Pace,
    tally: Tally,
    mut stop: watch::Receiver<bool>,
) {
    let tally = Arc::new(tally);
    let mut creating = JoinSet::new();
    for p in planned {
        let due = pace.t0 + Duration::from_secs_f64(p.at_ms as f64 / 1000.0 / pace.speed);
        tokio::select! {
            _ = tokio::time::sleep_until(due) => {}
            _ = stop.changed() => break,
        }
        match p.arrival {
            Arrival::Ticket(mut draft) => {
                draft.request_id = format!("{}-{}", pace.tag, draft.request_id);
                creating.spawn(create(client.clone(), *draft, tally.clone()));
            }
            Arrival::Transfer(x) => {
                pace.at_desks.fetch_add(1, Ordering::Relaxed);
                if desk.send(*x).is_err() {
                    pace.at_desks.fetch_sub(1, Ordering::Relaxed);
                }
            }
        }
        while creating.try_join_next().is_some() {}
    }
    while creating.join_next().await.is_some() {}
}

async fn create(
    mut client: CityHotlineClient<Channel>,
    draft: hotline_proto::pb::Ticket,
    tally: Arc<Tally>,
) {
    let req = CreateTicketRequest {
        ticket: Some(draft),
    };
    // A platform retries until its node answers; the request id makes
    // every retry safe. Two minutes covers any fault of a scenario.
    let until = Instant::now() + Duration::from_secs(120);
    loop {
        match client.create_ticket(req.clone()).await {
            Ok(r) => {
                if let Some(t) = r.into_inner().ticket
                    && let Ok(mut c) = tally.created.lock()
                {
                    c.push(Created {
                        id: t.id,
                        origin: t.origin_city,
                        targets: t.target_cities,
                        category: t.category,
                    });
                }
                tally.acknowledged.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Err(e) if hotline_proto::grpc::is_transient(e.code()) && Instant::now() < until => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => {
                tracing::warn!(code = ?e.code(), message = %e.message(), "request refused");
                tally.refused.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
    }
}

async fn play_faults(
    fed: Arc<tokio::sync::Mutex<Spawned>>,
    schedule: Vec<Fault>,
    t0: Instant,
    log: Arc<Mutex<Vec<FaultRecord>>>,
) {
    let mut running = JoinSet::new();
    for f in schedule {
        tokio::time::sleep_until(t0 + Duration::from_secs_f64(f.at_secs)).await;
        let fed = fed.clone();
        let log = log.clone();
        running.spawn(async move {
            let outcome = match apply(&fed, &f).await {
                Ok(()) => "done".to_owned(),
                Err(e) => format!("{e:#}"),
            };
            if let Ok(mut l) = log.lock() {
                l.push(FaultRecord {
                    at_secs: f.at_secs,
                    kind: f.kind,
                    target: f.target.clone(),
                    for_secs: f.for_secs,
                    outcome,
                });
            }
        });
    }
    while running.join_next().await.is_some() {}
}

/// Applies one fault, waits its time, and heals it.
async fn apply(fed: &tokio::sync::Mutex<Spawned>, f: &Fault) -> anyhow::Result<()> {
    let target = Target::parse(&f.target);
    let hold = Duration::from_secs_f64(f.for_secs);
    match f.kind {
        FaultKind::Kill => {
            fed.lock().await.kill(&target)?;
            tokio::time::sleep(hold).await;
            fed.lock().await.restart(&target)?;
        }
        FaultKind::Stall => {
            fed.lock().await.signal(&target, "STOP")?;
            tokio::time::sleep(hold).await;
            fed.lock().await.signal(&target, "CONT")?;
        }
        FaultKind::Partition | FaultKind::Latency => {
            let mode = if f.kind == FaultKind::Partition {
                Mode::Cut
            } else {
                Mode::Delay(Duration::from_millis(f.latency_ms))
            };
            {
                let fed = fed.lock().await;
                let links = fed
                    .links
                    .get(&f.target)
                    .with_context(|| format!("no links of {} to cut", f.target))?;
                links.set(mode);
            }
            tokio::time::sleep(hold).await;
            if let Some(links) = fed.lock().await.links.get(&f.target) {
                links.set(Mode::Pass);
            }
        }
    }
    Ok(())
}

/// Checks the invariants every few seconds while the run goes on; a round
/// that cannot reach a node (killed, stalled) is skipped.
async fn live_checks(
    nodes: BTreeMap<String, Channel>,
    gateway: Channel,
    created: Arc<Mutex<Vec<Created>>>,
    calls: Arc<CallLog>,
    violations: Arc<Mutex<Vec<Violation>>>,
    mut stop: watch::Receiver<bool>,
) {
    let mut ended = std::collections::HashSet::new();
    // Every 3 s, or less often when a round takes long (a long run holds
    // many tickets): the checks take at most a fifth of the time.
    let mut pause = Duration::from_secs(3);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = stop.changed() => return,
        }
        let round = Instant::now();
        let snapshot: Vec<Created> = created.lock().map(|c| c.clone()).unwrap_or_default();
        let check = invariants::holdings(&nodes, &gateway, &snapshot, false);
        let Ok(Ok(mut found)) = tokio::time::timeout(Duration::from_secs(10), check).await else {
            continue;
        };
        let transfers = calls.snapshot();
        let check = invariants::transfers_past_deadline(&nodes, &transfers, &mut ended);
        if let Ok(Ok(stuck)) = tokio::time::timeout(Duration::from_secs(10), check).await {
            found.extend(stuck);
        }
        pause = (round.elapsed() * 4).max(Duration::from_secs(3));
        if let Ok(mut v) = violations.lock() {
            for f in found {
                if !v
                    .iter()
                    .any(|x| x.invariant == f.invariant && x.subject == f.subject)
                {
                    eprint!("{f}");
                    v.push(f);
                }
            }
        }
    }
}

fn sample(
    secs: f64,
    speed: f64,
    created: &Mutex<Vec<Created>>,
    calls: &CallLog,
    violations: &Mutex<Vec<Violation>>,
) -> Sample {
    Sample {
        secs,
        simulated_minutes: secs * speed / 60.0,
        tickets: created.lock().map(|c| c.len() as u64).unwrap_or(0),
        transfers: calls.started.lock().map(|c| c.len() as u64).unwrap_or(0),
        violations: violations.lock().map(|v| v.len() as u64).unwrap_or(0),
    }
}

fn status_line(
    s: &Sample,
    start_hour: u32,
    faults: &Mutex<Vec<FaultRecord>>,
    planned: usize,
) -> String {
    let minute = start_hour as f64 * 60.0 + s.simulated_minutes;
    let day = (minute / 1440.0) as u64 + 1;
    let hm = minute % 1440.0;
    let done = faults.lock().map(|f| f.len()).unwrap_or(0);
    format!(
        "day {day} {:02}:{:02} | tickets {} | transfers {} | faults {done}/{planned} | violations {}",
        (hm / 60.0) as u64,
        (hm % 60.0) as u64,
        s.tickets,
        s.transfers,
        s.violations
    )
}

fn progress_bar(show: bool, real_secs: f64) -> indicatif::ProgressBar {
    if !show {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new((real_secs * 1000.0) as u64);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{spinner} [{elapsed_precise}] {bar:30.cyan/blue} {percent:>3}% {msg}",
    ) {
        bar.set_style(style);
    }
    bar
}

fn flow(created: &[Created], transfers: &[crate::calls::Started]) -> Vec<FlowCell> {
    let mut cells: BTreeMap<(String, String), (u64, u64)> = BTreeMap::new();
    for c in created {
        for (_, target) in c.units() {
            cells.entry((c.origin.clone(), target)).or_default().0 += 1;
        }
    }
    for t in transfers {
        cells
            .entry((t.origin.clone(), t.target.clone()))
            .or_default()
            .1 += 1;
    }
    cells
        .into_iter()
        .map(|((origin, target), (tickets, transfers))| FlowCell {
            origin,
            target,
            tickets,
            transfers,
        })
        .collect()
}

/// The table a person reads at the end.
pub fn summary(r: &RunReport) -> String {
    let mut out = report::table(&r.figures);
    let d = &r.done;
    out.push_str(&format!(
        "operators: accepted {}, rejected {}, resolved {}; citizens closed {}, reopened {}; coordination assigned {}\n",
        d.accepted, d.rejected, d.resolved, d.closed, d.reopened, d.assigned
    ));
    out.push_str(&format!(
        "requests acknowledged {} of {} planned (refused {}); transfers not started (node away) {}; \
         conversions of failed transfers: calls {}, given up for a while {}\n",
        d.tickets_acknowledged,
        r.plan.requests,
        d.tickets_refused,
        d.transfers_not_started,
        d.conversion_calls,
        d.conversions_not_made
    ));
    for f in &r.faults {
        out.push_str(&format!(
            "fault at {:>5.1}s: {:?} {} for {:.1}s: {}\n",
            f.at_secs, f.kind, f.target, f.for_secs, f.outcome
        ));
    }
    let escalated: Vec<String> = r
        .escalations
        .iter()
        .map(|(rule, n)| format!("{rule} {n}"))
        .collect();
    out.push_str(&format!(
        "supervision: reports merged {}; escalations {}\n",
        r.figures.tickets.merged,
        if escalated.is_empty() {
            "none".to_owned()
        } else {
            escalated.join(", ")
        }
    ));
    let mut by_invariant: BTreeMap<&str, usize> = BTreeMap::new();
    for v in &r.invariant_violations {
        *by_invariant.entry(v.invariant.as_str()).or_default() += 1;
    }
    if by_invariant.is_empty() {
        out.push_str("invariants: all held (exactly-once, events-in-order, route, transfer-terminal, statistics, merge, rules)\n");
    } else {
        // Twenty at most, the first two of each invariant among them, so
        // that many of one kind do not hide another; in the run's order.
        let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
        let (mut shown, rest): (Vec<_>, Vec<_>) = r
            .invariant_violations
            .iter()
            .enumerate()
            .partition(|(_, v)| {
                let n = seen.entry(v.invariant.as_str()).or_default();
                *n += 1;
                *n <= 2
            });
        let room = 20usize.saturating_sub(shown.len());
        shown.extend(rest.into_iter().take(room));
        shown.sort_by_key(|(i, _)| *i);
        for (_, v) in shown {
            out.push_str(&v.to_string());
        }
        let counts: Vec<String> = by_invariant
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        out.push_str(&format!(
            "invariants VIOLATED: {} ({})\n",
            r.invariant_violations.len(),
            counts.join(", ")
        ));
    }
    out
}
