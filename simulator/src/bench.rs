//! `simulator bench-transfers`: how fast a transfer rings at the target
//! console, and how many live transfers one gateway holds.
//!
//! The federation is real processes ([`crate::spawn`]), so the gateway's
//! memory is its own. A probe pair — a desk at Luzhou, one operator at
//! Yibin taking only `taxation` — measures, one transfer at a time, the time
//! from the `StartTransfer` call at the origin node to the `Ringing` message
//! on the target console (origin node → gateway → target node → console),
//! then answers it (blind: done). Between measurements the bench raises the
//! number of transfers held live at the gateway: each city's desk transfers
//! warm calls to the next city around the ring, where an operator of their
//! own answers each and holds it (ANSWERED stays live until handed over).
//! At each level it reports ring latency and the gateway's resident memory.
//!
//! A benchmark, not a test: it asserts nothing about time.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hotline_proto::pb::city_hotline_client::CityHotlineClient;
use hotline_proto::pb::operator_session_response::Event;
use hotline_proto::pb::{
    AnswerTransferRequest, CallContext, OperatorSessionResponse, StartTransferRequest, TransferMode,
};
use serde::Serialize;
use tonic::Streaming;
use tonic::transport::Channel;

use crate::calls::session;
use crate::spawn::Spawned;

const CITIES: [&str; 4] = ["luzhou", "yibin", "zigong", "neijiang"];
/// Consoles share a connection up to this many streams each.
const STREAMS_PER_CONNECTION: usize = 100;
const PROBE_CATEGORY: &str = "taxation";
const HOLD_CATEGORY: &str = "education";

#[derive(Debug, Clone)]
pub struct TransferBenchOptions {
    /// Measured transfers per level (after a warm-up of a tenth as many).
    pub samples: usize,
    /// Live transfers held at the gateway at each level, rising.
    pub hold: Vec<usize>,
    pub report: Option<PathBuf>,
}

#[derive(Debug, Serialize)]
pub struct Level {
    pub held: usize,
    pub ring_p50_us: u64,
    pub ring_p99_us: u64,
    pub ring_max_us: u64,
    pub gateway_rss_bytes: u64,
    /// Extra gateway memory per held transfer since the first level.
    pub gateway_bytes_per_transfer: Option<u64>,
    /// How long it took to set up this level's held transfers.
    pub setup_secs: f64,
}

#[derive(Debug, Serialize)]
pub struct TransferBench {
    pub samples: usize,
    /// At the first level: start to ringing at the target console.
    pub transfer_ring_p50_us: u64,
    pub transfer_ring_p99_us: u64,
    pub max_held: usize,
    pub levels: Vec<Level>,
}

fn request(
    operator: &str,
    target: &str,
    category: &str,
    mode: TransferMode,
) -> StartTransferRequest {
    StartTransferRequest {
        operator_id: operator.to_owned(),
        target_city: target.to_owned(),
        category: category.to_owned(),
        mode: mode as i32,
        context: Some(CallContext {
            caller_ref: "bench".into(),
            summary: "bench".into(),
            caller: None,
        }),
    }
}

/// Keeps reading a console's stream so that nothing piles up at the node.
fn drain(mut inbound: Streaming<OperatorSessionResponse>) {
    tokio::spawn(async move { while let Ok(Some(_)) = inbound.message().await {} });
}

/// Starts transfers until the node has linked to the gateway.
async fn start_when_linked(
    client: &mut CityHotlineClient<Channel>,
    req: StartTransferRequest,
) -> anyhow::Result<String> {
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        match client.start_transfer(req.clone()).await {
            Ok(r) => return Ok(r.into_inner().transfer.map(|t| t.id).unwrap_or_default()),
            Err(e) if e.code() == tonic::Code::Unavailable && Instant::now() < until => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => bail!("start transfer: {e}"),
        }
    }
}

/// The value at fraction `p` of `sorted` (nearest rank); 0 for none.
pub(crate) fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

pub async fn run(opts: TransferBenchOptions) -> anyhow::Result<TransferBench> {
    let dir = tempfile::tempdir()?;
    // Held transfers must neither ring out nor time out during the run.
    let fed = Spawned::start(
        &CITIES,
        dir.path(),
        "",
        "ring_timeout_ms = 60000\ntransfer_deadline_ms = 600000",
    )
    .await?;
    println!("gateway: {}", fed.gateway);
    let channel = |city: &str| -> anyhow::Result<Channel> {
        fed.pki
            .node_channel(*fed.nodes.get(city).context("no such city")?, city)
    };
    let all_but_probe: Vec<String> = hotline_proto::Catalogue::default()
        .categories
        .iter()
        .map(|c| c.id.clone())
        .filter(|c| c != PROBE_CATEGORY)
        .collect();

    // The probe pair.
    let mut probe_origin = CityHotlineClient::new(channel("luzhou")?);
    let mut probe_target = CityHotlineClient::new(channel("yibin")?);
    let (_desk, desk_in) = session(&mut probe_origin, "probe-desk", Vec::new(), false).await?;
    drain(desk_in);
    let (_op, mut op_in) = session(
        &mut probe_target,
        "probe-op",
        vec![PROBE_CATEGORY.into()],
        true,
    )
    .await?;

    // Each city's desk for held transfers. Desks start transfers and take
    // none: unavailable, or calls would ring at them and wait out the ring.
    let mut desks = Vec::new();
    for city in CITIES {
        let mut client = CityHotlineClient::new(channel(city)?);
        let (keep, inbound) = session(&mut client, "hold-desk", Vec::new(), false).await?;
        drain(inbound);
        desks.push((city, client, keep));
    }
    let answered = Arc::new(AtomicUsize::new(0));
    let mut held_consoles = Vec::new();
    let mut connections: Vec<(String, Channel, usize)> = Vec::new();

    let mut levels = Vec::new();
    let mut held = 0usize;
    let mut base_rss = None;
    for &level in &opts.hold {
        let setup = Instant::now();
        let add = level.saturating_sub(held);
        if add > 0 {
            // Operators to answer them, spread over the cities.
            for k in 0..add {
                let city = CITIES[(held + k) % CITIES.len()];
                let reuse = connections
                    .iter_mut()
                    .find(|(c, _, n)| c == city && *n < STREAMS_PER_CONNECTION);
                let ch = match reuse {
                    Some((_, ch, n)) => {
                        *n += 1;
                        ch.clone()
                    }
                    None => {
                        let ch = channel(city)?;
                        connections.push((city.to_owned(), ch.clone(), 1));
                        ch
                    }
                };
                let mut client = CityHotlineClient::new(ch);
                let operator = format!("hold-{}", held + k);
                let (keep, mut inbound) =
                    session(&mut client, &operator, all_but_probe.clone(), true).await?;
                let answered = answered.clone();
                tokio::spawn(async move {
                    while let Ok(Some(msg)) = inbound.message().await {
                        if let Some(Event::Ringing(t)) = msg.event {
                            let ok = client
                                .answer_transfer(AnswerTransferRequest {
                                    operator_id: operator.clone(),
                                    transfer_id: t.id,
                                })
                                .await
                                .is_ok();
                            if ok {
                                answered.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                });
                held_consoles.push(keep);
            }
            // Each city's desk transfers to the next city, 32 at a time.
            let mut starts = tokio::task::JoinSet::new();
            for (i, (_, client, _)) in desks.iter().enumerate() {
                let n = (0..add)
                    .filter(|k| (held + k) % CITIES.len() == (i + 1) % CITIES.len())
                    .count();
                let target = CITIES[(i + 1) % CITIES.len()];
                for lane in 0..32usize {
                    let mut client = client.clone();
                    let count = n / 32 + usize::from(lane < n % 32);
                    starts.spawn(async move {
                        for _ in 0..count {
                            start_when_linked(
                                &mut client,
                                request("hold-desk", target, HOLD_CATEGORY, TransferMode::Warm),
                            )
                            .await?;
                        }
                        Ok::<_, anyhow::Error>(())
                    });
                }
            }
            while let Some(done) = starts.join_next().await {
                done??;
            }
            let until = Instant::now() + Duration::from_secs(120);
            while answered.load(Ordering::Relaxed) < level {
                if Instant::now() > until {
                    bail!(
                        "only {} of {level} held transfers were answered",
                        answered.load(Ordering::Relaxed)
                    );
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            held = level;
        }
        let setup_secs = setup.elapsed().as_secs_f64();
        tokio::time::sleep(Duration::from_millis(300)).await;

        // The probe: one at a time, start to ringing.
        let mut warmup = (opts.samples / 10).max(5);
        let mut micros = Vec::with_capacity(opts.samples);
        let mut missed = 0;
        while micros.len() < opts.samples {
            let t0 = Instant::now();
            let id = start_when_linked(
                &mut probe_origin,
                request("probe-desk", "yibin", PROBE_CATEGORY, TransferMode::Blind),
            )
            .await?;
            // A transfer that failed at once (the target's node not linked
            // to the gateway yet) never rings: try again.
            let rang = tokio::time::timeout(Duration::from_secs(2), async {
                loop {
                    match op_in.message().await? {
                        Some(OperatorSessionResponse {
                            event: Some(Event::Ringing(t)),
                        }) if t.id == id => return Ok(()),
                        Some(_) => {}
                        None => bail!("the probe console closed"),
                    }
                }
            })
            .await;
            let elapsed = t0.elapsed();
            match rang {
                Ok(r) => r?,
                Err(_) => {
                    missed += 1;
                    if missed > 20 {
                        bail!("the probe transfers do not ring at yibin");
                    }
                    continue;
                }
            }
            if warmup > 0 {
                warmup -= 1;
            } else {
                micros.push(elapsed.as_micros() as u64);
            }
            probe_target
                .answer_transfer(AnswerTransferRequest {
                    operator_id: "probe-op".into(),
                    transfer_id: id,
                })
                .await?;
        }
        micros.sort_unstable();
        let rss = fed.gateway_rss().unwrap_or(0);
        let base = *base_rss.get_or_insert((held, rss));
        let per = (held > base.0).then(|| rss.saturating_sub(base.1) / (held - base.0) as u64);
        let l = Level {
            held,
            ring_p50_us: percentile(&micros, 0.50),
            ring_p99_us: percentile(&micros, 0.99),
            ring_max_us: micros.last().copied().unwrap_or(0),
            gateway_rss_bytes: rss,
            gateway_bytes_per_transfer: per,
            setup_secs,
        };
        println!(
            "held {:>6}: ring p50 {:>6} µs, p99 {:>6} µs, max {:>6} µs; gateway RSS {:.1} MiB{}",
            l.held,
            l.ring_p50_us,
            l.ring_p99_us,
            l.ring_max_us,
            l.gateway_rss_bytes as f64 / 1048576.0,
            l.gateway_bytes_per_transfer
                .map(|b| format!(", {b} B per held transfer"))
                .unwrap_or_default()
        );
        levels.push(l);
    }
    let first = levels.first().context("no level measured")?;
    let bench = TransferBench {
        samples: opts.samples,
        transfer_ring_p50_us: first.ring_p50_us,
        transfer_ring_p99_us: first.ring_p99_us,
        max_held: held,
        levels,
    };
    if let Some(path) = &opts.report {
        std::fs::write(path, serde_json::to_string_pretty(&bench)?)?;
        println!("report: {}", path.display());
    }
    drop(held_consoles);
    Ok(bench)
}
