//! `simulator bench-flood`: one city floods the gateway at ten times its
//! rate limit; how fast do another city's dispatches stay?
//!
//! Real processes ([`crate::spawn`]) with a per-caller limit of `rate`
//! requests a second. Yibin dispatches tickets straight to the gateway, one
//! at a time and paced under its own limit, and each is timed from call to
//! acknowledgement (committed in the ledger); first alone, then while
//! Luzhou's certificate sends `factor` times its limit from several tasks
//! and tries to open `watch_streams` WatchFlow streams, holding those the
//! gateway lets it have.
//! A benchmark: it asserts nothing about time.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hotline_proto::identity::Identity;
use hotline_proto::pb::federation_client::FederationClient;
use hotline_proto::pb::observatory_client::ObservatoryClient;
use hotline_proto::pb::{
    DispatchTicketRequest, EventKind, ReportEventRequest, Ticket, TicketKind, TicketStatus,
    WatchFlowRequest,
};
use serde::Serialize;

use crate::bench::percentile;
use crate::spawn::Spawned;

#[derive(Debug, Clone)]
pub struct FloodOptions {
    pub samples: usize,
    /// The per-caller limit, requests a second.
    pub rate: f64,
    /// How many times its limit the flooding city sends.
    pub factor: f64,
    /// WatchFlow streams the flooding city tries to open besides.
    pub watch_streams: usize,
    pub report: Option<PathBuf>,
}

#[derive(Debug, Serialize)]
pub struct FloodBench {
    pub rate_limit_rps: f64,
    pub flood_rps: f64,
    pub samples: usize,
    pub alone_p50_us: u64,
    pub alone_p99_us: u64,
    pub flooded_p50_us: u64,
    pub flooded_p99_us: u64,
    /// What the flood got: refused with RESOURCE_EXHAUSTED, and let through.
    pub flood_refused: u64,
    pub flood_admitted: u64,
    /// Yibin's dispatches refused (must stay 0: it is under its limit).
    pub others_refused: u64,
    /// The WatchFlow streams the flooding city tried to open, those it got
    /// (and held through the flooded phase), and those refused.
    pub watch_tried: usize,
    pub watch_held: usize,
    pub watch_refused: usize,
    /// Flooded p50 over alone p50 (target ≤ 1.5).
    pub p50_ratio: f64,
}

fn ticket(seq: usize) -> Ticket {
    let id = hotline_proto::TicketId::new("yibin").to_string();
    Ticket {
        id: id.clone(),
        origin_city: "yibin".into(),
        target_cities: vec!["zigong".into()],
        category: "employment".into(),
        kind: TicketKind::Help as i32,
        subject: format!("bench {seq}"),
        history: vec![hotline_proto::state::event(
            &id,
            1,
            EventKind::Created,
            "yibin",
            TicketStatus::Pending,
        )],
        ..Default::default()
    }
}

/// Yibin's dispatches, paced at half its limit; returns sorted latencies
/// and how many were refused.
async fn probe(
    gw: &FederationClient<tonic::transport::Channel>,
    samples: usize,
    rate: f64,
    from: usize,
) -> (Vec<u64>, u64) {
    let mut tick = tokio::time::interval(Duration::from_secs_f64(2.0 / rate));
    let (mut micros, mut refused) = (Vec::with_capacity(samples), 0);
    for i in 0..samples {
        tick.tick().await;
        let t0 = Instant::now();
        let r = gw
            .clone()
            .dispatch_ticket(DispatchTicketRequest {
                city: String::new(),
                ticket: Some(ticket(from + i)),
            })
            .await;
        match r {
            Ok(_) => micros.push(t0.elapsed().as_micros() as u64),
            Err(_) => refused += 1,
        }
    }
    micros.sort_unstable();
    (micros, refused)
}

pub async fn run(opts: FloodOptions) -> anyhow::Result<FloodBench> {
    let dir = tempfile::tempdir()?;
    let limits = format!(
        "[limits]\nper_caller_rps = {:.1}\nper_caller_burst = {:.1}\n",
        opts.rate, opts.rate
    );
    let fed = Spawned::start(
        &["luzhou", "yibin", "zigong", "neijiang"],
        dir.path(),
        &limits,
        "",
    )
    .await?;
    println!("gateway: {}", fed.gateway);
    let yibin = FederationClient::new(fed.pki.channel(
        fed.gateway,
        &Identity::City("yibin".into()),
        &Identity::Gateway,
    )?);
    // Warm up, then alone.
    probe(&yibin, opts.samples / 10 + 1, opts.rate, 0).await;
    let (alone, refused_alone) = probe(&yibin, opts.samples, opts.rate, 1_000_000).await;
    println!(
        "alone:   p50 {} µs, p99 {} µs",
        percentile(&alone, 0.5),
        percentile(&alone, 0.99)
    );

    // The flood: Luzhou's certificate, factor × its limit, from 8 tasks.
    let flood_rps = opts.rate * opts.factor;
    let stop = Arc::new(AtomicBool::new(false));
    let refused = Arc::new(AtomicU64::new(0));
    let admitted = Arc::new(AtomicU64::new(0));
    let mut flooders = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let gw = FederationClient::new(fed.pki.channel(
            fed.gateway,
            &Identity::City("luzhou".into()),
            &Identity::Gateway,
        )?);
        let (stop, refused, admitted) = (stop.clone(), refused.clone(), admitted.clone());
        let period = Duration::from_secs_f64(8.0 / flood_rps);
        flooders.spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                match gw.clone().report_event(ReportEventRequest::default()).await {
                    Err(e) if e.code() == tonic::Code::ResourceExhausted => {
                        refused.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {
                        admitted.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        });
    }
    // And as many WatchFlow streams as it can open, 100 at a time, held
    // open while Yibin is measured.
    let (held, watch_refused) = {
        let obs = ObservatoryClient::new(fed.pki.channel(
            fed.gateway,
            &Identity::City("luzhou".into()),
            &Identity::Gateway,
        )?);
        let (mut held, mut refused) = (Vec::new(), 0usize);
        let mut left = opts.watch_streams;
        while left > 0 {
            let n = left.min(100);
            left -= n;
            let mut opening = tokio::task::JoinSet::new();
            for _ in 0..n {
                let mut obs = obs.clone();
                opening.spawn(async move { obs.watch_flow(WatchFlowRequest::default()).await });
            }
            while let Some(r) = opening.join_next().await {
                match r {
                    Ok(Ok(s)) => held.push(s.into_inner()),
                    _ => refused += 1,
                }
            }
        }
        (held, refused)
    };
    println!(
        "watch streams: {} held, {watch_refused} refused of {}",
        held.len(),
        opts.watch_streams
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (flooded, refused_flooded) = probe(&yibin, opts.samples, opts.rate, 2_000_000).await;
    stop.store(true, Ordering::Relaxed);
    while flooders.join_next().await.is_some() {}
    let watch_held = held.len();
    drop(held);
    let alone_p50 = percentile(&alone, 0.5);
    let bench = FloodBench {
        rate_limit_rps: opts.rate,
        flood_rps,
        samples: opts.samples,
        alone_p50_us: percentile(&alone, 0.5),
        alone_p99_us: percentile(&alone, 0.99),
        flooded_p50_us: percentile(&flooded, 0.5),
        flooded_p99_us: percentile(&flooded, 0.99),
        flood_refused: refused.load(Ordering::Relaxed),
        flood_admitted: admitted.load(Ordering::Relaxed),
        others_refused: refused_alone + refused_flooded,
        watch_tried: opts.watch_streams,
        watch_held,
        watch_refused,
        p50_ratio: percentile(&flooded, 0.5) as f64 / alone_p50.max(1) as f64,
    };
    println!(
        "flooded: p50 {} µs ({:.2}× alone), p99 {} µs; the flood: {} refused, {} admitted; yibin refused {}",
        bench.flooded_p50_us,
        bench.p50_ratio,
        bench.flooded_p99_us,
        bench.flood_refused,
        bench.flood_admitted,
        bench.others_refused
    );
    if let Some(path) = &opts.report {
        std::fs::write(path, serde_json::to_string_pretty(&bench)?)?;
        println!("report: {}", path.display());
    }
    Ok(bench)
}
