//! `gateway --config FILE`: the provincial gateway of the 12345 hotline
//! federation; `gateway certs ...`: a development certificate authority.

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use gateway::GatewayConfig;
use hotline_proto::identity::Identity;

/// The provincial gateway of the 12345 hotline federation.
///
/// City nodes send it their cross-city tickets and events (gRPC service
/// Federation); it commits each to its ledger before it answers and delivers
/// it to the target city's node until that node acknowledges. The provincial
/// centre reads statistics and works the coordination queue through the
/// Observatory service. Health and reflection are served too.
///
/// Every link is mutual TLS: `gateway certs init --dir certs` makes a
/// development CA and a certificate for the gateway, each city, the province
/// and each department.
///
/// Example, from the repository (the example's certificates are made
/// first, beside it):
///
///   gateway certs init --dir config/certs
///
///   gateway --config config/gateway.example.toml
#[derive(Parser)]
#[command(version, args_conflicts_with_subcommands = true)]
struct Args {
    /// The TOML configuration file (see config/gateway.example.toml).
    /// HOTLINE_LISTEN and HOTLINE_DATA_DIR override its listen and data_dir.
    #[arg(long, short, required = true)]
    config: Option<PathBuf>,
    /// Serve plaintext with no authentication instead of TLS: only on a
    /// loopback address, for local experiments.
    #[arg(long)]
    insecure: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// A development certificate authority and its certificates.
    Certs {
        #[command(subcommand)]
        action: Certs,
    },
}

#[derive(Subcommand)]
enum Certs {
    /// Makes a new CA in DIR, a certificate (`NAME.pem`, `NAME.key`) for the
    /// gateway, every member city, the province and every department, and an
    /// empty revocation list (`crl.pem`). Members and categories come from
    /// --config if given, else the defaults.
    Init {
        /// Where to write the CA and the certificates (made if missing;
        /// files already there are replaced).
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// A gateway configuration whose member cities and categories get
        /// certificates (default: the four cities of southern Sichuan and
        /// the built-in categories).
        #[arg(long, short, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Issues a certificate for each OPERATOR's console in CITY
    /// (`city-CITY-console-OPERATOR.pem` and `.key`), signed by DIR's CA.
    /// It acts at CITY's node as that operator only: it opens that
    /// operator's session and acts on its transfers, and is not the city
    /// anywhere (the gateway refuses it).
    Console {
        /// The directory `certs init` made (its CA signs the certificates).
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// The city whose node the consoles connect to.
        #[arg(long)]
        city: String,
        /// Operator ids: lowercase letters, digits and `-`, up to 63.
        #[arg(required = true)]
        operators: Vec<String>,
    },
    /// Replaces DIR/crl.pem with a list revoking the given certificates:
    /// servers lock them out within seconds, without a restart.
    Revoke {
        /// The directory `certs init` made (its CA signs the new list).
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// Certificate files (PEM) to revoke.
        #[arg(required = true)]
        certs: Vec<PathBuf>,
    },
}

fn certs(action: Certs, env: &HashMap<String, String>) -> anyhow::Result<()> {
    match action {
        Certs::Init { dir, config } => {
            let catalogue = match config {
                Some(path) => GatewayConfig::load(&path, env)?.catalogue()?,
                None => hotline_proto::Catalogue::default(),
            };
            let holders = hotline_tls::dev_ca::holders(
                catalogue.city_ids(),
                catalogue.categories.iter().map(|c| c.id.as_str()),
            );
            hotline_tls::dev_ca::init(&dir, &holders)?;
            println!(
                "made a development CA and {} certificates in {}",
                holders.len(),
                dir.display()
            );
        }
        Certs::Console {
            dir,
            city,
            operators,
        } => {
            if !hotline_proto::catalogue::is_valid_id(&city) {
                anyhow::bail!(
                    "--city {city:?}: a city id, lowercase letters, digits and inner `-`, up to 32"
                );
            }
            // All checked before any is issued.
            if let Some(bad) = operators.iter().find(|o| !Identity::valid_operator(o)) {
                anyhow::bail!(
                    "operator {bad:?}: lowercase letters, digits and `-` only, 1 to 63 of them"
                );
            }
            for operator in operators {
                let holder = Identity::Console {
                    city: city.clone(),
                    operator,
                };
                let cert = hotline_tls::dev_ca::issue(
                    &dir,
                    &holder,
                    hotline_tls::dev_ca::DEFAULT_VALIDITY,
                )?;
                println!("{}: {holder}", cert.display());
            }
        }
        Certs::Revoke { dir, certs } => {
            let serials = certs
                .iter()
                .map(|c| hotline_tls::dev_ca::serial_of(c))
                .collect::<Result<Vec<_>, _>>()?;
            let crl = hotline_tls::dev_ca::revoke(&dir, &serials)?;
            println!(
                "{} now revokes {} certificates",
                crl.display(),
                serials.len()
            );
        }
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _telemetry = hotline_telemetry::init("gateway", &[])?;
    let args = Args::parse();
    let env: HashMap<String, String> = std::env::vars().collect();
    if let Some(Command::Certs { action }) = args.command {
        return certs(action, &env);
    }
    let path = args.config.context("--config FILE is required")?;
    let mut config = GatewayConfig::load(&path, &env)?;
    if args.insecure {
        config.insecure = true;
        config.tls = None;
    }
    // Every error of the configuration before anything says it started.
    hotline_tls::check(
        config.tls.as_ref(),
        config.insecure,
        config.listen,
        &hotline_proto::identity::Identity::Gateway,
    )
    .with_context(|| format!("in {}", path.display()))?;
    // As many descriptors as the system lets this process have: the
    // listener holds at most that many connections, less a reserve.
    hotline_tls::server::raise_fd_limit();
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("listen ({}): cannot listen", config.listen))?;
    // `gateway::serve` says "gateway started" once its ledger is open.
    gateway::serve(config, listener, hotline_proto::grpc::shutdown_signal()).await?;
    tracing::info!("gateway stopped");
    Ok(())
}
