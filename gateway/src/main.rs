//! `gateway --config FILE`: the provincial gateway of the 12345 hotline
//! federation.

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use gateway::GatewayConfig;

/// The provincial gateway of the 12345 hotline federation.
///
/// City nodes send it their cross-city tickets and events (gRPC service
/// Federation); it commits each to its ledger before it answers and delivers
/// it to the target city's node until that node acknowledges. The provincial
/// centre reads statistics and works the coordination queue through the
/// Observatory service. Health and reflection are served too.
///
/// Example: gateway --config config/gateway.example.toml
#[derive(Parser)]
#[command(version)]
struct Args {
    /// The TOML configuration file (see config/gateway.example.toml).
    /// HOTLINE_LISTEN and HOTLINE_DATA_DIR override its listen and data_dir.
    #[arg(long, short)]
    config: PathBuf,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();
    let env: HashMap<String, String> = std::env::vars().collect();
    let config = GatewayConfig::load(&args.config, &env)?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let addr = listener.local_addr()?;
    println!("gateway: {addr}");
    tracing::info!(%addr, data_dir = %config.data_dir.display(), "gateway started");
    gateway::serve(config, listener, hotline_proto::grpc::shutdown_signal()).await?;
    tracing::info!("gateway stopped");
    Ok(())
}
