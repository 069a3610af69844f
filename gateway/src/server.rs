//! Starts the gateway on a listener the caller bound (so tests and the demo
//! bind port 0 without races) and stops it gracefully: stop taking calls,
//! let the delivery workers finish their batch, close the ledger.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hotline_proto::grpc;
use hotline_proto::pb::federation_server::FederationServer;
use hotline_proto::pb::observatory_server::ObservatoryServer;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tonic::transport::Server;

use anyhow::Context;

use crate::config::GatewayConfig;
use hotline_proto::identity::Identity;
use tonic::service::interceptor::InterceptedService;

use crate::delivery;
use crate::federation::FederationService;
use crate::flowtail::FlowTail;
use crate::ledger::Ledger;
use crate::limits::{RateLimiter, StreamSlots};
use crate::observatory::ObservatoryService;
use crate::recorder::{self, Recorder};
use crate::switchboard::Switchboard;

/// Largest request the gateway decodes.
pub const MAX_MESSAGE_BYTES: usize = 1 << 20;
/// HTTP/2 streams one connection may have open at once.
pub const MAX_STREAMS_PER_CONNECTION: u32 = 1024;
/// Largest header block a request may carry.
pub const MAX_HEADER_LIST_BYTES: u32 = 16 * 1024;

/// Serves on `listener`, and the dashboard on `config.http_listen` when set.
pub async fn serve(
    config: GatewayConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let http = match config.http_listen {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen for HTTP on {addr}"))?,
        ),
        None => None,
    };
    serve_with_http(config, listener, http, shutdown).await
}

/// Serves gRPC on `listener` and, when given, the dashboard and `/metrics`
/// on `http`.
pub async fn serve_with_http(
    config: GatewayConfig,
    listener: TcpListener,
    http: Option<TcpListener>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let catalogue = Arc::new(config.catalogue()?);
    let (server_tls, client_tls) =
        hotline_tls::transport(config.tls.as_ref(), config.insecure, listener.local_addr()?)?;
    let policy = config.policy()?;
    let this_year = hotline_proto::time::now_ms();
    let year = crate::windows::month_of(this_year).div_euclid(12) as i32;
    if !policy.calendar().knows(year) {
        tracing::warn!(
            year,
            "no holiday calendar for this year: deadlines count only weekends as days off; add one in [deadlines] calendars"
        );
    }
    let store = config.store()?;
    tracing::info!(store = %store.describe(), "ledger");
    let ledger =
        Ledger::open_store(&store, catalogue.clone(), policy)?.with_readers(config.store_readers);
    if ledger.db().is_shared() {
        let autovacuum: Result<String, crate::GatewayError> = ledger
            .db()
            .read(|c| Ok(c.query_row("SELECT current_setting('autovacuum')", (), |r| r.get(0))?))
            .await;
        if autovacuum.is_ok_and(|v| v != "on") {
            tracing::warn!(
                "the database runs without autovacuum: the ledger's counters leave dead rows and its planner statistics go stale; turn it on or run VACUUM ANALYZE often (docs/operations.md)"
            );
        }
    }
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = JoinSet::new();
    let nodes = config.nodes.clone().into_iter().collect();
    delivery::spawn_workers(&ledger, &nodes, &client_tls, &mut tasks, stop_rx.clone())?;
    let (recorder, recording) = Recorder::start(ledger.clone());
    tasks.spawn(prune_flow_log(
        ledger.clone(),
        config.watch_retention_hours,
        stop_rx.clone(),
    ));
    let switchboard = Switchboard::new(
        catalogue,
        recorder,
        Duration::from_millis(config.transfer_completion_ms),
    );
    // Alone on its ledger, the gateway holds the switchboard from the start;
    // a replica takes it when the lease comes to it. The first replica up
    // takes it before it serves (the keeper takes a free lease in a round).
    let mut first = ledger.db().holds(LEADER);
    for _ in 0..5 {
        if first || !ledger.db().is_shared() {
            break;
        }
        tokio::time::sleep(hotline_durable::lease::ROUND).await;
        first = ledger.db().holds(LEADER);
    }
    if first {
        take_over(&ledger, &switchboard).await?;
    }
    tasks.spawn(leadership(
        ledger.clone(),
        switchboard.clone(),
        stop_rx.clone(),
    ));
    tasks.spawn(sweep(switchboard.clone(), stop_rx.clone()));
    tasks.spawn(sweep_overdue(ledger.clone(), stop_rx));
    let (closing_tx, closing_rx) = watch::channel(false);
    let dashboard = match http {
        Some(http) => {
            let addr = http.local_addr()?;
            if !addr.ip().is_loopback() {
                tracing::warn!(%addr, "the dashboard and /metrics listen beyond loopback: put an authenticating proxy in front");
            }
            tracing::info!(%addr, "dashboard and /metrics");
            let mut closing = closing_rx.clone();
            let ledger = ledger.clone();
            let hosts = config.http_hosts.clone();
            Some(tokio::spawn(async move {
                let stop = async move {
                    let _ = closing.wait_for(|c| *c).await;
                };
                if let Err(e) = crate::http::serve(http, ledger, hosts, stop).await {
                    tracing::error!(error = %e, "the dashboard stopped");
                }
            }))
        }
        None => None,
    };

    let (_health_reporter, health) = grpc::health(&[
        "hotline.federation.v1.Federation",
        "hotline.federation.v1.Observatory",
    ])
    .await;
    // On the signal to stop, end the signalling streams first: graceful
    // shutdown waits for every open stream, and theirs never end by
    // themselves.
    let shutdown = {
        let switchboard = switchboard.clone();
        async move {
            shutdown.await;
            switchboard.close_all();
            let _ = closing_tx.send(true);
        }
    };
    let limiter = RateLimiter::new(config.limits.per_caller_rps, config.limits.per_caller_burst);
    // One reader of the flow log for every WatchFlow stream.
    let tail = FlowTail::spawn(ledger.db().clone(), ledger.bell(), closing_rx.clone())
        .await
        .context("start the flow tail")?;
    let addr = listener.local_addr()?;
    println!("gateway: {addr}");
    tracing::info!(%addr, data_dir = %config.data_dir.display(), "gateway started");
    let result = Server::builder()
        .trace_fn(hotline_telemetry::grpc_span)
        .http2_keepalive_interval(Some(Duration::from_secs(20)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION)
        .http2_max_header_list_size(MAX_HEADER_LIST_BYTES)
        // Past this many requests in flight on one connection, shed load
        // with RESOURCE_EXHAUSTED rather than queue without end.
        .concurrency_limit_per_connection(config.limits.in_flight_per_connection)
        .load_shed(true)
        // A request over the size limit: RESOURCE_EXHAUSTED, not tonic's
        // OUT_OF_RANGE.
        .layer(grpc::size_status_layer())
        .add_service(health)
        .add_service(grpc::reflection()?)
        // Who may call what, each caller within its rate (limits.rs): any
        // city the Federation (each handler checks the city against what it
        // sends); the province, departments and cities the Observatory, each
        // seeing its part (roles.rs).
        .add_service(InterceptedService::new(
            FederationServer::new(FederationService::new(
                ledger.clone(),
                switchboard.clone(),
                config.limits.max_ticket_age_days,
                limiter.clone(),
            ))
            .max_decoding_message_size(MAX_MESSAGE_BYTES),
            limiter.guard(|id| matches!(id, Identity::City(_))),
        ))
        .add_service(InterceptedService::new(
            ObservatoryServer::new(ObservatoryService::new(
                ledger.clone(),
                Arc::new(config.departments.clone()),
                closing_rx,
                tail,
                StreamSlots::new(&config.limits),
            ))
            .max_decoding_message_size(MAX_MESSAGE_BYTES),
            limiter.guard(|id| {
                matches!(
                    id,
                    Identity::Province | Identity::Department(_) | Identity::City(_)
                )
            }),
        ))
        .serve_with_incoming_shutdown(
            hotline_tls::server::incoming(listener, server_tls),
            shutdown,
        )
        .await;
    let _ = stop_tx.send(true);
    if let Some(dashboard) = dashboard {
        let _ = tokio::time::timeout(Duration::from_secs(5), dashboard).await;
    }
    let drained = tokio::time::timeout(Duration::from_secs(10), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!("delivery workers did not stop in time; their items stay queued");
    }
    // The recorder ends once the switchboard, its last sender, is gone.
    drop(switchboard);
    let _ = tokio::time::timeout(Duration::from_secs(5), recording).await;
    let stats = ledger.db().stats();
    tracing::info!(
        writes = stats.writes.load(std::sync::atomic::Ordering::Relaxed),
        commits = stats.commits.load(std::sync::atomic::Ordering::Relaxed),
        "ledger: writes, and commits (one fsync each), since start"
    );
    result?;
    Ok(())
}

/// The lease of the replica that holds the call-transfer switchboard and
/// runs the sweeps: on a shared ledger one replica at a time (see
/// `hotline_durable::lease`); alone on SQLite, the gateway.
pub const LEADER: &str = "leader";

/// Becomes the switchboard: what the ledger still shows live was lost with
/// the replica (or the process) that held it before, and fails.
async fn take_over(ledger: &Ledger, switchboard: &Switchboard) -> anyhow::Result<()> {
    let failed = ledger.write(recorder::fail_unfinished).await?;
    if failed > 0 {
        tracing::warn!(
            failed,
            "transfers live when the gateway (or the replica holding the switchboard) stopped have failed"
        );
    }
    switchboard.take_over();
    if ledger.db().is_shared() {
        tracing::info!("this replica now holds the transfer switchboard and runs the sweeps");
    }
    Ok(())
}

/// Follows the leader lease: takes the switchboard over when the lease comes
/// here, gives it up (ending every stream, so the nodes go to the replica
/// that has it) when the lease is lost.
async fn leadership(ledger: Ledger, switchboard: Switchboard, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(hotline_durable::lease::ROUND);
    while !*stop.borrow() {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => continue,
        }
        let holds = ledger.db().holds(LEADER);
        if holds && !switchboard.is_held() {
            if let Err(e) = take_over(&ledger, &switchboard).await {
                tracing::warn!(error = %e, "cannot take the switchboard over yet");
            }
        } else if !holds && switchboard.is_held() {
            tracing::warn!("this replica lost the leader lease: the switchboard moves to another");
            switchboard.step_down();
        }
    }
}

/// Ends transfers past their deadlines, ten times a second.
async fn sweep(switchboard: Switchboard, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    while !*stop.borrow() {
        tokio::select! {
            _ = tick.tick() => switchboard.sweep(),
            _ = stop.changed() => {}
        }
    }
}

/// Counts the tickets that pass their deadline, once a second.
async fn sweep_overdue(ledger: Ledger, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    while !*stop.borrow() {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => continue,
        }
        if !ledger.db().holds(LEADER) {
            continue;
        }
        let now = hotline_proto::time::now_ms();
        let swept = ledger
            .write(move |w| {
                let overdue = crate::ledger::sweep_overdue(w, now)?;
                let late = crate::ledger::sweep_supervision(w, now)?;
                Ok((overdue, late))
            })
            .await;
        match swept {
            Ok((0, 0)) => {}
            Ok((n, late)) => {
                tracing::info!(tickets = n, long_unresolved = late, "past their deadline")
            }
            Err(e) => {
                let e: crate::GatewayError = e;
                tracing::warn!(error = %e, "cannot sweep for overdue tickets");
            }
        }
    }
}

/// Keeps the flow log to its retention, a chunk at a time, once a minute.
async fn prune_flow_log(ledger: Ledger, hours: u32, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    while !*stop.borrow() {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => continue,
        }
        if !ledger.db().holds(LEADER) {
            continue;
        }
        let cutoff = hotline_proto::time::now_ms() - i64::from(hours) * 3_600_000;
        loop {
            let pruned = ledger
                .db()
                .write(move |c| crate::flow::prune(c, cutoff, 10_000))
                .await;
            match pruned {
                Ok(n) if n > 0 => tokio::task::yield_now().await,
                Ok(_) => break,
                Err(e) => {
                    let e: crate::GatewayError = e;
                    tracing::warn!(error = %e, "cannot prune the flow log");
                    break;
                }
            }
        }
    }
}
