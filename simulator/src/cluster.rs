//! A whole federation in this process: the gateway and one node per city,
//! each the real server of its crate on a real loopback socket. Listeners
//! are bound first (port 0), so every address is known before any server
//! starts and nothing races for a port.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use city_node::NodeConfig;
use gateway::GatewayConfig;
use hotline_proto::Catalogue;
use hotline_proto::identity::Identity;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::pki::Pki;

pub struct Cluster {
    pub pki: Pki,
    pub gateway: SocketAddr,
    /// The gateway's dashboard and `/metrics`.
    pub dashboard: SocketAddr,
    pub nodes: BTreeMap<String, SocketAddr>,
    stop_nodes: watch::Sender<bool>,
    stop_gateway: watch::Sender<bool>,
    node_tasks: JoinSet<anyhow::Result<()>>,
    gateway_task: JoinSet<anyhow::Result<()>>,
}

async fn loopback() -> anyhow::Result<(TcpListener, SocketAddr)> {
    let l = TcpListener::bind("127.0.0.1:0").await?;
    let addr = l.local_addr()?;
    Ok((l, addr))
}

/// The dashboard's port when it is free (12345 is the hotline's number;
/// 8345 is easy to remember), else any.
pub const DASHBOARD_PORT: u16 = 8345;

async fn dashboard_listener() -> anyhow::Result<(TcpListener, SocketAddr)> {
    let l = match TcpListener::bind(("127.0.0.1", DASHBOARD_PORT)).await {
        Ok(l) => l,
        Err(_) => TcpListener::bind("127.0.0.1:0").await?,
    };
    let addr = l.local_addr()?;
    Ok((l, addr))
}

fn stopper(stop: &watch::Sender<bool>) -> impl std::future::Future<Output = ()> + Send + 'static {
    let mut rx = stop.subscribe();
    async move {
        let _ = rx.wait_for(|s| *s).await;
    }
}

/// How long the demo's gateway gives a ticket to be resolved.
pub const DUE: Duration = Duration::from_secs(40);

impl Cluster {
    /// Starts the federation of `catalogue`'s cities with its stores under
    /// `data_dir`.
    pub async fn start(catalogue: &Catalogue, data_dir: &Path) -> anyhow::Result<Self> {
        let pki = Pki::init(&data_dir.join("certs"), catalogue)?;
        let (gw_listener, gateway) = loopback().await?;
        let (http_listener, dashboard) = dashboard_listener().await?;
        let mut listeners = BTreeMap::new();
        for city in catalogue.city_ids() {
            listeners.insert(city.to_owned(), loopback().await?);
        }
        let nodes: BTreeMap<String, SocketAddr> = listeners
            .iter()
            .map(|(c, (_, a))| (c.clone(), *a))
            .collect();
        let (stop_nodes, _) = watch::channel(false);
        let (stop_gateway, _) = watch::channel(false);
        let mut node_tasks = JoinSet::new();
        let mut gateway_task = JoinSet::new();

        let gw_config = GatewayConfig {
            listen: gateway,
            data_dir: data_dir.join("gateway"),
            store: None,
            store_schema: "hotline".into(),
            store_readers: hotline_durable::db::DEFAULT_READERS,
            nodes: nodes
                .iter()
                .map(|(c, a)| (c.clone(), format!("http://{a}")))
                .collect(),
            tls: Some(pki.files(&Identity::Gateway)),
            insecure: false,
            transfer_completion_ms: 30 * 60 * 1000,
            limits: gateway::limits::Limits::default(),
            // A duty officer's day in minutes: a ticket is due resolved
            // (and accepted) within DUE, an urgent one within half of it;
            // the demo's departments take longer on some (demo.rs).
            deadlines: gateway::supervision::DeadlineConfig {
                resolve_seconds: Some(DUE.as_secs() as u32),
                urgent_resolve_seconds: Some(DUE.as_secs() as u32 / 2),
                ..Default::default()
            },
            // Merging on, as in a real deployment: the demo's citizens
            // report some matters again (合并派单).
            supervision: Default::default(),
            watch_retention_hours: 24,
            http_listen: Some(dashboard),
            http_hosts: Vec::new(),
            departments: Default::default(),
            cities: Some(catalogue.cities.clone()),
            categories: Some(catalogue.categories.clone()),
        };
        gateway_task.spawn(gateway::server::serve_with_http(
            gw_config,
            gw_listener,
            Some(http_listener),
            stopper(&stop_gateway),
        ));
        for (city, (listener, addr)) in listeners {
            let config = NodeConfig {
                gateways: Vec::new(),
                city: city.clone(),
                listen: addr,
                data_dir: data_dir.join(&city),
                store: None,
                store_schema: "hotline_node".into(),
                store_readers: hotline_durable::db::DEFAULT_READERS,
                gateway: format!("http://{gateway}"),
                tls: Some(pki.files(&Identity::City(city.clone()))),
                insecure: false,
                ring_timeout_ms: 2_000,
                transfer_deadline_ms: 20_000,
                cities: Some(catalogue.cities.clone()),
                categories: Some(catalogue.categories.clone()),
                limits: Default::default(),
            };
            node_tasks.spawn(city_node::serve(config, listener, stopper(&stop_nodes)));
        }
        Ok(Self {
            pki,
            gateway,
            dashboard,
            nodes,
            stop_nodes,
            stop_gateway,
            node_tasks,
            gateway_task,
        })
    }

    /// Stops every server gracefully, the nodes first (they close their
    /// streams to the gateway in good order), then the gateway; reports the
    /// first failure.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        let _ = self.stop_nodes.send(true);
        let mut first = Ok(());
        while let Some(done) = self.node_tasks.join_next().await {
            let result = done.map_err(anyhow::Error::from).and_then(|r| r);
            if first.is_ok() {
                first = result;
            }
        }
        let _ = self.stop_gateway.send(true);
        while let Some(done) = self.gateway_task.join_next().await {
            let result = done.map_err(anyhow::Error::from).and_then(|r| r);
            if first.is_ok() {
                first = result;
            }
        }
        first
    }
}
