//! `simulator bench`: what the gateway costs per ticket, side by side with
//! a direct call and with plain HTTP/2 proxies, in one run.
//!
//! The unit of work is the same on every path: a ticket committed in the
//! target city's store.
//! - A `direct`: the target node's `CityNode.DeliverTicket`, called directly.
//! - B `gateway`: `Federation.DispatchTicket` at the gateway, acknowledged
//!   after its ledger commit; the gateway then delivers it to the target
//!   node. A ticket counts only once the target has committed it.
//! - C `haproxy` (HTTP mode, `proto h2` both sides, connections reused) and
//!   D `nginx` (`grpc_pass` with keepalive) in front of the target node:
//!   forwarding hops that keep nothing, the reference for what a hop costs.
//!
//! Every path runs plaintext on loopback (the proxies would otherwise need
//! TLS of their own): the figures compare hops, not TLS. Loads: one request
//! at a time (latency), then 8 connections × 16 requests in flight
//! (throughput). The configurations are interleaved and each is run three
//! times; the report gives the median run of each.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hotline_proto::identity::Identity;
use hotline_proto::pb::city_node_client::CityNodeClient;
use hotline_proto::pb::federation_client::FederationClient;
use hotline_proto::pb::observatory_client::ObservatoryClient;
use hotline_proto::pb::{
    DeliverTicketRequest, DispatchTicketRequest, EventKind, GetCityStatsRequest, Ticket,
    TicketKind, TicketStatus,
};
use serde::Serialize;
use tonic::transport::Channel;

use crate::bench::percentile;
use crate::spawn::{Spawned, free_addr};

pub(crate) const ORIGIN: &str = "luzhou";
pub(crate) const TARGET: &str = "yibin";
const CONNECTIONS: usize = 8;
const STREAMS: usize = 16;

#[derive(Debug, Clone)]
pub struct PeersOptions {
    /// Under two minutes: fewer requests, shorter runs.
    pub quick: bool,
    pub report: Option<PathBuf>,
    /// A full run puts its tables into this markdown file, between the
    /// markers of [`write_doc`].
    pub doc: Option<PathBuf>,
}

/// One run of one path.
#[derive(Debug, Clone, Serialize)]
pub struct Run {
    pub path: String,
    /// Tickets this run made (warm-up, one at a time, and under load).
    pub tickets: u64,
    pub tps: f64,
    pub p50_us: u64,
    pub p99_us: u64,
    /// CPU time per ticket of each process on the path, in µs.
    pub cpu_us_per_ticket: BTreeMap<String, f64>,
}

#[derive(Debug, Serialize)]
pub struct PeersReport {
    pub direct_tps: f64,
    pub gateway_tps: f64,
    pub haproxy_tps: Option<f64>,
    pub nginx_tps: Option<f64>,
    pub gateway_p50_us: u64,
    pub gateway_p99_us: u64,
    pub direct_p50_us: u64,
    pub direct_p99_us: u64,
    pub transfer_ring_p50_us: u64,
    pub transfer_ring_p99_us: u64,
    /// Throughput ratios of the gateway to the other paths.
    pub ratio_b_a: f64,
    pub ratio_b_c: Option<f64>,
    pub ratio_b_d: Option<f64>,
    /// Tickets through the gateway per ledger commit (each one fsync):
    /// what group commit buys. Every commit of the run counts, the
    /// deliveries' and acknowledgements' as well as the dispatches'.
    pub gateway_tickets_per_fsync: Option<f64>,
    pub gateway_ledger_commits: Option<u64>,
    pub gateway_ledger_writes: Option<u64>,
    /// The median run of each path.
    pub median: Vec<Run>,
    /// Every run, in the order they ran.
    pub runs: Vec<Run>,
    /// Proxies not found on this machine (their paths were skipped).
    pub missing: Vec<String>,
}

/// A program on the PATH or in the system directories.
fn find(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// A child process killed when dropped.
struct Proxy {
    child: Child,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_haproxy(
    bin: &Path,
    dir: &Path,
    listen: SocketAddr,
    node: SocketAddr,
) -> anyhow::Result<Proxy> {
    let cfg = dir.join("haproxy.cfg");
    std::fs::write(
        &cfg,
        format!(
            "global\n  maxconn 8192\ndefaults\n  mode http\n  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\n  http-reuse always\n\
             frontend grpc\n  bind {listen} proto h2\n  default_backend node\n\
             backend node\n  server yibin {node} proto h2\n"
        ),
    )?;
    let child = Command::new(bin)
        .arg("-f")
        .arg(&cfg)
        .arg("-db")
        .stdout(Stdio::null())
        .stderr(Stdio::from(std::fs::File::create(dir.join("haproxy.log"))?))
        .spawn()
        .context("start haproxy")?;
    Ok(Proxy { child })
}

fn start_nginx(
    bin: &Path,
    dir: &Path,
    listen: SocketAddr,
    node: SocketAddr,
) -> anyhow::Result<Proxy> {
    let tmp = dir.join("nginx-tmp");
    std::fs::create_dir_all(&tmp)?;
    let t = tmp.display();
    let cfg = dir.join("nginx.conf");
    std::fs::write(
        &cfg,
        format!(
            "daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/nginx-error.log warn;\n\
             events {{ worker_connections 8192; }}\n\
             http {{\n  access_log off;\n  keepalive_requests 100000000;\n  keepalive_timeout 300s;\n  client_body_temp_path {t}/body;\n  proxy_temp_path {t}/proxy;\n  fastcgi_temp_path {t}/fcgi;\n  uwsgi_temp_path {t}/uwsgi;\n  scgi_temp_path {t}/scgi;\n\
               upstream node {{ server {node}; keepalive 64; keepalive_requests 100000000; keepalive_timeout 300s; }}\n\
               server {{ listen {listen} http2; location / {{ grpc_pass grpc://node; }} }}\n}}\n",
            d = dir.display()
        ),
    )?;
    let child = Command::new(bin)
        .arg("-c")
        .arg(&cfg)
        .arg("-p")
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::from(std::fs::File::create(dir.join("nginx.log"))?))
        .spawn()
        .context("start nginx")?;
    Ok(Proxy { child })
}

/// Total CPU time (user + system) of a process, from `/proc/PID/stat`.
fn cpu_time(pid: u32) -> Duration {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return Duration::ZERO;
    };
    // The command name may hold spaces: the fields after it follow ')'.
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
        return Duration::ZERO;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 here.
    let ticks: u64 = [11usize, 12]
        .iter()
        .filter_map(|i| fields.get(*i).and_then(|f| f.parse::<u64>().ok()))
        .sum();
    // USER_HZ is 100 on Linux.
    Duration::from_millis(ticks * 10)
}

pub(crate) fn new_ticket() -> Ticket {
    let id = hotline_proto::TicketId::new(ORIGIN).to_string();
    Ticket {
        id: id.clone(),
        origin_city: ORIGIN.into(),
        target_cities: vec![TARGET.into()],
        category: "social-security".into(),
        kind: TicketKind::Consultation as i32,
        subject: "社保关系转移".into(),
        history: vec![hotline_proto::state::event(
            &id,
            1,
            EventKind::Created,
            ORIGIN,
            TicketStatus::Pending,
        )],
        ..Default::default()
    }
}

/// A ticket as the gateway delivers it: with its history up to DELIVERED.
fn delivered_ticket() -> Ticket {
    let mut t = new_ticket();
    let id = t.id.clone();
    t.history.push(hotline_proto::state::event(
        &id,
        2,
        EventKind::Dispatched,
        "gateway",
        TicketStatus::Dispatched,
    ));
    t.history.push(hotline_proto::state::event(
        &id,
        3,
        EventKind::Delivered,
        "gateway",
        TicketStatus::Delivered,
    ));
    t.status = TicketStatus::Delivered as i32;
    t.seq = 3;
    t.handling_city = TARGET.into();
    t
}

#[derive(Clone)]
pub(crate) enum Caller {
    Node(CityNodeClient<Channel>),
    Gateway(FederationClient<Channel>),
}

/// Dispatches the gateway answered `ABORTED` (a write that lost a race with
/// another replica's), each tried again as a node does.
pub(crate) static CONFLICTS: AtomicU64 = AtomicU64::new(0);

impl Caller {
    async fn one(&self) -> Result<(), tonic::Status> {
        let mut tries = 0;
        loop {
            match self.once().await {
                Err(e) if e.code() == tonic::Code::Aborted && tries < 10 => {
                    tries += 1;
                    CONFLICTS.fetch_add(1, Ordering::Relaxed);
                }
                other => return other,
            }
        }
    }

    async fn once(&self) -> Result<(), tonic::Status> {
        match self {
            Caller::Node(c) => c
                .clone()
                .deliver_ticket(DeliverTicketRequest {
                    ticket: Some(delivered_ticket()),
                })
                .await
                .map(|_| ()),
            Caller::Gateway(c) => c
                .clone()
                .dispatch_ticket(DispatchTicketRequest {
                    city: ORIGIN.into(),
                    ticket: Some(new_ticket()),
                })
                .await
                .map(|_| ()),
        }
    }
}

/// How many tickets the target city has received, by the gateway's count.
pub(crate) async fn received(observatory: &ObservatoryClient<Channel>) -> anyhow::Result<u64> {
    Ok(observatory
        .clone()
        .get_city_stats(GetCityStatsRequest {
            city: TARGET.into(),
            ..Default::default()
        })
        .await?
        .into_inner()
        .cities
        .first()
        .map(|c| c.received)
        .unwrap_or(0))
}

pub(crate) struct Target<'a> {
    pub(crate) name: &'static str,
    pub(crate) callers: Vec<Caller>,
    /// The processes on the path, whose CPU time is counted.
    pub(crate) pids: Vec<(&'static str, u32)>,
    /// For the gateway: count a ticket only once the target holds it.
    pub(crate) observatory: Option<&'a ObservatoryClient<Channel>>,
}

pub(crate) async fn run_path(
    t: &Target<'_>,
    latency_n: usize,
    window: Duration,
) -> anyhow::Result<Run> {
    // One at a time.
    let caller = &t.callers[0];
    for _ in 0..latency_n / 10 {
        caller.one().await?;
    }
    let mut micros = Vec::with_capacity(latency_n);
    for _ in 0..latency_n {
        let t0 = Instant::now();
        caller.one().await?;
        micros.push(t0.elapsed().as_micros() as u64);
    }
    micros.sort_unstable();

    // Many in flight.
    let before_received = match t.observatory {
        Some(o) => received(o).await?,
        None => 0,
    };
    let cpu_before: Vec<Duration> = t.pids.iter().map(|(_, p)| cpu_time(*p)).collect();
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let first_error = Arc::new(std::sync::Mutex::new(None::<String>));
    let start = Instant::now();
    let until = start + window;
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..CONNECTIONS {
        for _ in 0..STREAMS {
            let caller = t.callers[c % t.callers.len()].clone();
            let (done, failed, first_error) = (done.clone(), failed.clone(), first_error.clone());
            tasks.spawn(async move {
                while Instant::now() < until {
                    match caller.one().await {
                        Ok(()) => {
                            done.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => {
                            failed.fetch_add(1, Ordering::Relaxed);
                            if let Ok(mut first) = first_error.lock() {
                                first.get_or_insert_with(|| {
                                    format!("{:?}: {}", e.code(), e.message())
                                });
                            }
                        }
                    }
                }
            });
        }
    }
    while tasks.join_next().await.is_some() {}
    let mut tickets = done.load(Ordering::Relaxed);
    let mut elapsed = start.elapsed();
    if let Some(o) = t.observatory {
        // Only what the target committed counts, and the clock runs until
        // it has all that was acknowledged.
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let got = received(o).await? - before_received;
            if got >= tickets || Instant::now() > deadline {
                tickets = got;
                elapsed = start.elapsed();
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let failures = failed.load(Ordering::Relaxed);
    if failures > 0 {
        let first = first_error
            .lock()
            .ok()
            .and_then(|f| f.clone())
            .unwrap_or_default();
        bail!(
            "{}: {failures} requests failed under load, the first: {first}",
            t.name
        );
    }
    let cpu_us_per_ticket = t
        .pids
        .iter()
        .zip(cpu_before)
        .map(|((name, pid), before)| {
            let spent = cpu_time(*pid).saturating_sub(before);
            (
                name.to_string(),
                spent.as_secs_f64() * 1e6 / tickets.max(1) as f64,
            )
        })
        .collect();
    Ok(Run {
        tickets: (latency_n / 10 + latency_n) as u64 + done.load(Ordering::Relaxed),
        path: t.name.into(),
        tps: tickets as f64 / elapsed.as_secs_f64(),
        p50_us: percentile(&micros, 0.5),
        p99_us: percentile(&micros, 0.99),
        cpu_us_per_ticket,
    })
}

/// The gateway's last word on its ledger: `writes=N commits=M`, from its
/// log (which may be coloured).
fn ledger_counts(log: &Path) -> (Option<u64>, Option<u64>) {
    let Ok(text) = std::fs::read_to_string(log) else {
        return (None, None);
    };
    let mut plain = String::with_capacity(text.len());
    let mut in_escape = false;
    for ch in text.chars() {
        match (in_escape, ch) {
            (false, '\u{1b}') => in_escape = true,
            (true, 'm') => in_escape = false,
            (true, _) => {}
            (false, c) => plain.push(c),
        }
    }
    let Some(line) = plain.lines().rev().find(|l| l.contains("ledger: writes")) else {
        return (None, None);
    };
    let field = |name: &str| {
        let at = line.find(&format!("{name}="))? + name.len() + 1;
        line[at..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect::<String>()
            .parse()
            .ok()
    };
    (field("writes"), field("commits"))
}

/// One run's line of progress, its path's name `width` wide.
pub(crate) fn print_run(rep: usize, reps: usize, width: usize, r: &Run) {
    println!(
        "[{}/{reps}] {:<width$} {:>8.0} tickets/s  p50 {:>6} µs  p99 {:>6} µs  cpu/ticket {}",
        rep + 1,
        r.path,
        r.tps,
        r.p50_us,
        r.p99_us,
        r.cpu_us_per_ticket
            .iter()
            .map(|(k, v)| format!("{k} {v:.1} µs"))
            .collect::<Vec<_>>()
            .join(", ")
    );
}

pub(crate) fn median_run(runs: &[Run], path: &str) -> Option<Run> {
    let mut of: Vec<Run> = runs.iter().filter(|r| r.path == path).cloned().collect();
    if of.is_empty() {
        return None;
    }
    of.sort_by(|a, b| a.tps.total_cmp(&b.tps));
    Some(of[of.len() / 2].clone())
}

pub async fn run(opts: PeersOptions) -> anyhow::Result<PeersReport> {
    let (latency_n, window, reps) = if opts.quick {
        (300, Duration::from_secs(2), 3)
    } else {
        (3000, Duration::from_secs(8), 3)
    };
    let dir = tempfile::tempdir()?;
    // The origin is a sink that acknowledges the DELIVERED event the gateway
    // sends it for each ticket: the bench dispatches as Luzhou, whose own
    // node never made these tickets and would refuse the events.
    let origin = BTreeMap::from([(ORIGIN.to_owned(), crate::sink::start().await?)]);
    let mut fed = Spawned::start_beside(
        &["yibin", "zigong", "neijiang"],
        &origin,
        dir.path(),
        // No rate limit in the way of the measurement.
        "[limits]\nper_caller_rps = 1000000.0\nper_caller_burst = 1000000.0\n",
        true,
        &[],
    )
    .await?;
    let node_addr = fed.nodes[TARGET];
    let target_pid = fed
        .nodes
        .keys()
        .zip(fed.node_pids())
        .find(|(c, _)| c.as_str() == TARGET)
        .map(|(_, p)| p)
        .context("no target node")?;
    println!("gateway: {}\n{TARGET}: {node_addr}", fed.gateway);

    let mut missing = Vec::new();
    let mut proxies = Vec::new();
    let mut proxy_addrs: Vec<(&'static str, SocketAddr, u32)> = Vec::new();
    for (name, start) in [
        (
            "haproxy",
            start_haproxy as fn(&Path, &Path, SocketAddr, SocketAddr) -> anyhow::Result<Proxy>,
        ),
        ("nginx", start_nginx),
    ] {
        match find(name) {
            Some(bin) => {
                let listen = free_addr()?;
                let proxy = start(&bin, dir.path(), listen, node_addr)?;
                proxy_addrs.push((name, listen, proxy.child.id()));
                proxies.push(proxy);
                println!("{name}: {listen}");
            }
            None => {
                println!(
                    "{name}: not found on this machine; its path is skipped (install it: apt-get install {name})"
                );
                missing.push(name.to_owned());
            }
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    let plain = |addr: SocketAddr, server: &Identity| fed.channel(addr, &Identity::Gateway, server);
    let node_id = Identity::City(TARGET.into());
    let node_callers = |addr: SocketAddr| -> anyhow::Result<Vec<Caller>> {
        (0..CONNECTIONS)
            .map(|_| Ok(Caller::Node(CityNodeClient::new(plain(addr, &node_id)?))))
            .collect()
    };
    let observatory = ObservatoryClient::new(plain(fed.gateway, &Identity::Gateway)?);
    let mut targets = vec![
        Target {
            name: "direct",
            callers: node_callers(node_addr)?,
            pids: vec![("node", target_pid)],
            observatory: None,
        },
        Target {
            name: "gateway",
            callers: (0..CONNECTIONS)
                .map(|_| {
                    Ok(Caller::Gateway(FederationClient::new(plain(
                        fed.gateway,
                        &Identity::Gateway,
                    )?)))
                })
                .collect::<anyhow::Result<_>>()?,
            pids: vec![("gateway", fed.gateway_pid()), ("node", target_pid)],
            observatory: Some(&observatory),
        },
    ];
    for (name, addr, pid) in &proxy_addrs {
        targets.push(Target {
            name,
            callers: node_callers(*addr)?,
            pids: vec![(name, *pid), ("node", target_pid)],
            observatory: None,
        });
    }

    let mut runs = Vec::new();
    for rep in 0..reps {
        for t in &targets {
            let r = run_path(t, latency_n, window).await?;
            print_run(rep, reps, 8, &r);
            runs.push(r);
        }
    }
    drop(proxies);
    // The gateway says how many commits its ledger made when it stops.
    fed.stop_gateway()?;
    let (writes, commits) = ledger_counts(&fed.dir.join("gateway.log"));
    let through_gateway: u64 = runs
        .iter()
        .filter(|r| r.path == "gateway")
        .map(|r| r.tickets)
        .sum();

    let ring = crate::bench::run(crate::bench::TransferBenchOptions {
        samples: if opts.quick { 300 } else { 2000 },
        hold: vec![0],
        report: None,
    })
    .await?;

    let med = |p: &str| median_run(&runs, p);
    let a = med("direct").context("no direct run")?;
    let b = med("gateway").context("no gateway run")?;
    let c = med("haproxy");
    let d = med("nginx");
    let report = PeersReport {
        direct_tps: a.tps,
        gateway_tps: b.tps,
        haproxy_tps: c.as_ref().map(|r| r.tps),
        nginx_tps: d.as_ref().map(|r| r.tps),
        gateway_p50_us: b.p50_us,
        gateway_p99_us: b.p99_us,
        direct_p50_us: a.p50_us,
        direct_p99_us: a.p99_us,
        transfer_ring_p50_us: ring.transfer_ring_p50_us,
        transfer_ring_p99_us: ring.transfer_ring_p99_us,
        ratio_b_a: b.tps / a.tps,
        ratio_b_c: c.as_ref().map(|r| b.tps / r.tps),
        ratio_b_d: d.as_ref().map(|r| b.tps / r.tps),
        gateway_tickets_per_fsync: commits
            .filter(|c| *c > 0)
            .map(|c| through_gateway as f64 / c as f64),
        gateway_ledger_commits: commits,
        gateway_ledger_writes: writes,
        median: [Some(a), Some(b), c, d].into_iter().flatten().collect(),
        runs,
        missing,
    };
    println!(
        "\nmedian of {reps}: direct {:.0}/s, gateway {:.0}/s (B/A {:.2}), haproxy {}, nginx {}; gateway p50 {} µs p99 {} µs; {} tickets per fsync; transfer ring p99 {} µs",
        report.direct_tps,
        report.gateway_tps,
        report.ratio_b_a,
        report
            .haproxy_tps
            .map(|t| format!("{t:.0}/s"))
            .unwrap_or_else(|| "missing".into()),
        report
            .nginx_tps
            .map(|t| format!("{t:.0}/s"))
            .unwrap_or_else(|| "missing".into()),
        report.gateway_p50_us,
        report.gateway_p99_us,
        report
            .gateway_tickets_per_fsync
            .map(|t| format!("{t:.1}"))
            .unwrap_or_else(|| "?".into()),
        report.transfer_ring_p99_us
    );
    if let Some(path) = &opts.report {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)?;
        println!("report: {}", path.display());
    }
    if !opts.quick
        && let Some(doc) = &opts.doc
    {
        write_doc(doc, &report)?;
    }
    Ok(report)
}

/// Where the full run writes its tables: between these lines of
/// `docs/benchmarks.md` (appended when they are missing).
const DOC_BEGIN: &str = "<!-- simulator bench: begin (written by the full run) -->";
const DOC_END: &str = "<!-- simulator bench: end -->";

/// The machine, as the report names it.
fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let mem_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0 / 1024.0)
        .unwrap_or(0.0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default();
    format!("{cores} cores ({cpu}), {mem_gib:.0} GiB, Linux {kernel}")
}

fn thousands(n: f64) -> String {
    let s = format!("{:.0}", n);
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The tables of a full run, as markdown.
fn doc_block(r: &PeersReport) -> String {
    let mut s = format!(
        "{DOC_BEGIN}\n\nLast full run: {}, on {}; median of three.\n\n\
         | path | tickets/s | p50 | p99 | CPU per ticket |\n| --- | ---: | ---: | ---: | --- |\n",
        gateway::windows::Window::at(gateway::windows::Grain::Day, hotline_proto::time::now_ms())
            .label(),
        machine()
    );
    for (label, path) in [
        ("A direct", "direct"),
        ("B gateway", "gateway"),
        ("C haproxy", "haproxy"),
        ("D nginx", "nginx"),
    ] {
        match r.median.iter().find(|m| m.path == path) {
            Some(m) => s.push_str(&format!(
                "| {label} | {} | {} µs | {} µs | {} |\n",
                thousands(m.tps),
                thousands(m.p50_us as f64),
                thousands(m.p99_us as f64),
                m.cpu_us_per_ticket
                    .iter()
                    .map(|(k, v)| format!("{k} {v:.1} µs"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
            None => s.push_str(&format!("| {label} | missing on this machine | | | |\n")),
        }
    }
    let ratio = |x: Option<f64>| x.map(|v| format!("{v:.2}")).unwrap_or_else(|| "–".into());
    s.push_str(&format!(
        "\nRatios of throughput: B/A {:.2}, B/C {}, B/D {}. Group commit: {} tickets \
         through the gateway per ledger commit (per fsync; {} writes in {} commits over \
         the run). Transfer start to ringing in the same run: p50 {} µs, p99 {} µs.\n\n{DOC_END}",
        r.ratio_b_a,
        ratio(r.ratio_b_c),
        ratio(r.ratio_b_d),
        r.gateway_tickets_per_fsync
            .map(|v| format!("{v:.1}"))
            .unwrap_or_else(|| "?".into()),
        r.gateway_ledger_writes
            .map(|v| thousands(v as f64))
            .unwrap_or_else(|| "?".into()),
        r.gateway_ledger_commits
            .map(|v| thousands(v as f64))
            .unwrap_or_else(|| "?".into()),
        r.transfer_ring_p50_us,
        r.transfer_ring_p99_us,
    ));
    s
}

/// Puts a full run's tables into `doc`, between the markers.
pub fn write_doc(doc: &Path, r: &PeersReport) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(doc).unwrap_or_default();
    let block = doc_block(r);
    let new = match (text.find(DOC_BEGIN), text.find(DOC_END)) {
        (Some(a), Some(b)) if b > a => {
            format!("{}{block}{}", &text[..a], &text[b + DOC_END.len()..])
        }
        _ => format!("{text}\n{block}\n"),
    };
    std::fs::write(doc, new).with_context(|| format!("cannot write {}", doc.display()))?;
    println!("tables written into {}", doc.display());
    Ok(())
}
