//! Starts a city node on a listener the caller bound and stops it
//! gracefully.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hotline_durable::{Db, Outbox, outbox};
use hotline_proto::grpc;
use hotline_proto::pb::city_hotline_server::CityHotlineServer;
use hotline_proto::pb::city_node_server::CityNodeServer;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tonic::transport::Server;

use hotline_proto::identity::Identity;
use tonic::service::interceptor::InterceptedService;

use crate::calls::{CallTimings, Calls};
use crate::config::NodeConfig;
use crate::hotline::HotlineService;
use crate::inbound::InboundService;
use crate::signalling;
use crate::store::{self, GATEWAY};
use crate::uplink::GatewaySender;

/// Largest request a node decodes.
pub const MAX_MESSAGE_BYTES: usize = 1 << 20;

pub async fn serve(
    config: NodeConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let catalogue = Arc::new(config.catalogue()?);
    let (server_tls, client_tls) =
        hotline_tls::transport(config.tls.as_ref(), config.insecure, listener.local_addr()?)?;
    let store = config.store()?;
    tracing::info!(store = %store.describe(), "store");
    let db = Db::open_store(
        &store,
        &[
            store::SCHEMA,
            outbox::SCHEMA,
            outbox::SCHEMA_IN_ORDER,
            outbox::SCHEMA_TRACE,
        ],
    )?
    .with_readers(config.store_readers, hotline_durable::db::DEFAULT_READ_WAIT);
    let outbox = Outbox::new();
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = JoinSet::new();
    outbox.spawn_worker(
        &mut tasks,
        db.clone(),
        GATEWAY.to_owned(),
        Arc::new(GatewaySender::new(
            &config.gateway_addresses(),
            &client_tls,
        )?),
        stop_rx.clone(),
    );
    let calls = Calls::new(
        config.city.clone(),
        catalogue.clone(),
        CallTimings {
            ring_timeout: Duration::from_millis(config.ring_timeout_ms),
            answer_deadline: Duration::from_millis(config.transfer_deadline_ms),
        },
        db.clone(),
        outbox.clone(),
    );
    tasks.spawn(signalling::run(
        calls.clone(),
        config.gateway_addresses(),
        client_tls,
        stop_rx,
    ));

    let (_health_reporter, health) = grpc::health(&[
        "hotline.federation.v1.CityHotline",
        "hotline.federation.v1.CityNode",
    ])
    .await;
    let city = config.city.clone();
    let own = Identity::City(city.clone());
    let own_city = city.clone();
    // On the signal to stop, end the consoles' streams first: graceful
    // shutdown waits for every open stream, and theirs never end by
    // themselves.
    let shutdown = {
        let calls = calls.clone();
        async move {
            shutdown.await;
            calls.close_all();
        }
    };
    // Each caller (the city's own certificate, the gateway's) within its
    // rate, as at the gateway.
    let limiter = hotline_tls::rate::RateLimiter::new(
        config.limits.per_caller_rps,
        config.limits.per_caller_burst,
    );
    let addr = listener.local_addr()?;
    println!("{}: {addr}", config.city);
    tracing::info!(city = %config.city, %addr, gateway = %config.gateway, "city node started");
    let result = Server::builder()
        .trace_fn(hotline_telemetry::grpc_span)
        .http2_keepalive_interval(Some(Duration::from_secs(20)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .max_concurrent_streams(1024)
        .http2_max_header_list_size(16 * 1024)
        // Past this many requests in flight on one connection, shed load
        // with RESOURCE_EXHAUSTED rather than queue without end.
        .concurrency_limit_per_connection(config.limits.in_flight_per_connection)
        .load_shed(true)
        // A request over the size limit: RESOURCE_EXHAUSTED, not tonic's
        // OUT_OF_RANGE.
        .layer(grpc::size_status_layer())
        .add_service(health)
        .add_service(grpc::reflection()?)
        // Who may call what: the city's own platform (its certificate) and
        // its operators' consoles (theirs) the CityHotline; the gateway
        // alone the CityNode.
        .add_service(InterceptedService::new(
            CityHotlineServer::new(HotlineService::new(
                city.clone(),
                db.clone(),
                outbox.clone(),
                catalogue.clone(),
                calls,
            ))
            .max_decoding_message_size(MAX_MESSAGE_BYTES),
            limiter.guard(move |id| match id {
                Identity::Console { city, .. } => *city == own_city,
                id => *id == own,
            }),
        ))
        .add_service(InterceptedService::new(
            CityNodeServer::new(InboundService::new(city, db.clone(), catalogue))
                .max_decoding_message_size(MAX_MESSAGE_BYTES),
            limiter.guard(|id| *id == Identity::Gateway),
        ))
        .serve_with_incoming_shutdown(
            hotline_tls::server::incoming(listener, server_tls),
            shutdown,
        )
        .await;
    let _ = stop_tx.send(true);
    let drained = tokio::time::timeout(Duration::from_secs(10), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!("the uplink did not stop in time; its items stay queued");
    }
    result?;
    Ok(())
}
