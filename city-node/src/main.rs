//! `city-node --config FILE`: a city's node of the 12345 hotline federation.

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::Context;
use city_node::NodeConfig;
use clap::Parser;

/// A city's node of the 12345 hotline federation.
///
/// The city's hotline platform and operator consoles create and handle
/// tickets here (gRPC service CityHotline). Tickets for another city are
/// committed locally and then dispatched through the provincial gateway;
/// the gateway delivers this city's incoming tickets and every status change
/// of the tickets it sent (service CityNode). Health and reflection are
/// served too.
///
/// Every link is mutual TLS, with the certificates its [tls] table names
/// (`gateway certs init` makes a development set).
///
/// Example, from the repository (the example's certificates are made
/// first, beside it):
///
///   gateway certs init --dir config/certs
///
///   city-node --config config/city-node.example.toml
#[derive(Parser)]
#[command(version)]
struct Args {
    /// The TOML configuration file (see config/city-node.example.toml).
    /// HOTLINE_LISTEN, HOTLINE_DATA_DIR and HOTLINE_GATEWAY override its
    /// listen, data_dir and gateway.
    #[arg(long, short)]
    config: PathBuf,
    /// Serve and dial plaintext with no authentication instead of TLS: only
    /// on a loopback address, for local experiments.
    #[arg(long)]
    insecure: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let env: HashMap<String, String> = std::env::vars().collect();
    let mut config = NodeConfig::load(&args.config, &env)?;
    let _telemetry = hotline_telemetry::init(
        &format!("city-node-{}", config.city),
        &[("hotline.city", config.city.as_str())],
    )?;
    if args.insecure {
        config.insecure = true;
        config.tls = None;
    }
    // Every error of the configuration before anything says it started.
    hotline_tls::check(
        config.tls.as_ref(),
        config.insecure,
        config.listen,
        &hotline_proto::identity::Identity::City(config.city.clone()),
    )
    .with_context(|| format!("in {}", args.config.display()))?;
    // As many descriptors as the system lets this process have: the
    // listener holds at most that many connections, less a reserve.
    hotline_tls::server::raise_fd_limit();
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("listen ({}): cannot listen", config.listen))?;
    // `city_node::serve` says "city node started" once its store is open.
    city_node::serve(config, listener, hotline_proto::grpc::shutdown_signal()).await?;
    tracing::info!("city node stopped");
    Ok(())
}
