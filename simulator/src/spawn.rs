//! A federation of real processes: the `gateway` and `city-node` binaries
//! that sit beside the simulator's own, each started as a child process on
//! loopback with a configuration file written for it. Unlike
//! [`crate::cluster`], each process can be measured (its memory) and killed
//! on its own.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hotline_proto::identity::Identity;
use hotline_proto::pb::GetCityStatsRequest;
use hotline_proto::pb::ListTicketsRequest;
use hotline_proto::pb::city_hotline_client::CityHotlineClient;
use hotline_proto::pb::observatory_client::ObservatoryClient;

use crate::pki::Pki;

pub struct Spawned {
    pub pki: Pki,
    /// Plaintext on loopback instead of mutual TLS (for comparing hops
    /// with proxies that speak plaintext).
    pub insecure: bool,
    pub gateway: SocketAddr,
    pub nodes: BTreeMap<String, SocketAddr>,
    /// Where each process's log is (`gateway.log`, `CITY.log`).
    pub dir: PathBuf,
    gateway_child: Child,
    node_children: Vec<Child>,
}

/// The directory of the running executable, where cargo puts the other
/// binaries of the workspace.
fn bin_dir() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("where is the simulator")?;
    exe.parent()
        .map(Path::to_path_buf)
        .context("the simulator has no directory")
}

/// A free port on loopback for a process to bind right after. Taken below
/// the kernel's ephemeral range (32768 and up by default), where outgoing
/// connections take their local ports — a port freed there can be taken by
/// a connection before the process binds it — and never the same twice in
/// one process. Each process starts at a point spread by a hash of its id
/// and start time, so that processes running side by side (neighbouring
/// ids) walk different stretches of the range.
pub fn free_addr() -> anyhow::Result<SocketAddr> {
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    static OFFSET: OnceLock<u32> = OnceLock::new();
    let offset = *OFFSET.get_or_init(|| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let mixed = (u64::from(std::process::id()) ^ (u64::from(nanos) << 20))
            .wrapping_mul(0x9E37_79B9_7F4A_7C15);
        ((mixed >> 32) % 12_000) as u32
    });
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        if n >= 12_000 {
            bail!("no free port left below the ephemeral range");
        }
        let port = 20_000 + (offset + n) % 12_000;
        if let Ok(l) = TcpListener::bind(("127.0.0.1", port as u16)) {
            return Ok(l.local_addr()?);
        }
    }
}

fn start(prefix: &[String], bin: &Path, config: &Path, log: &Path) -> anyhow::Result<Child> {
    let out = std::fs::File::create(log)?;
    let mut command = match prefix.split_first() {
        Some((first, rest)) => {
            let mut c = Command::new(first);
            c.args(rest).arg(bin);
            c
        }
        None => Command::new(bin),
    };
    command
        .arg("--config")
        .arg(config)
        .stdout(Stdio::from(out.try_clone()?))
        .stderr(Stdio::from(out))
        .spawn()
        .with_context(|| {
            format!(
                "start {} (build it with `cargo build --release`)",
                bin.display()
            )
        })
}

impl Spawned {
    /// Starts a gateway and a node per city under `dir`, with extra TOML
    /// (tables) in the gateway's file and extra top-level lines in every
    /// node's, and waits until all answer.
    pub async fn start(
        cities: &[&str],
        dir: &Path,
        gateway_extra: &str,
        node_extra: &str,
    ) -> anyhow::Result<Self> {
        Self::start_with(cities, dir, gateway_extra, node_extra, false).await
    }

    /// As [`Spawned::start`]; `insecure` runs every link plaintext (on
    /// loopback only, as the processes insist).
    pub async fn start_with(
        cities: &[&str],
        dir: &Path,
        gateway_extra: &str,
        node_extra: &str,
        insecure: bool,
    ) -> anyhow::Result<Self> {
        let none = BTreeMap::new();
        Self::launch(cities, &none, dir, gateway_extra, node_extra, insecure, &[]).await
    }

    /// As [`Spawned::start_with`], and the gateway delivers to `external`'s
    /// cities at the addresses given, where no node of this federation runs
    /// (a benchmark's own acknowledging sink, for instance).
    /// The gateway runs under `gateway_prefix` when it is not empty (a
    /// profiler: `valgrind --tool=callgrind`, for instance).
    pub async fn start_beside(
        cities: &[&str],
        external: &BTreeMap<String, SocketAddr>,
        dir: &Path,
        gateway_extra: &str,
        insecure: bool,
        gateway_prefix: &[String],
    ) -> anyhow::Result<Self> {
        Self::launch(
            cities,
            external,
            dir,
            gateway_extra,
            "",
            insecure,
            gateway_prefix,
        )
        .await
    }

    /// The gateway alone, its ledger in `dir/gateway`, every member city
    /// given an address where nothing runs (for benchmarks of what the
    /// gateway answers by itself).
    pub async fn gateway_alone(dir: &Path) -> anyhow::Result<Self> {
        let catalogue = hotline_proto::Catalogue::default();
        let mut nowhere = BTreeMap::new();
        for city in catalogue.city_ids() {
            nowhere.insert(city.to_owned(), free_addr()?);
        }
        Self::launch(&[], &nowhere, dir, "", "", false, &[]).await
    }

    async fn launch(
        cities: &[&str],
        external: &BTreeMap<String, SocketAddr>,
        dir: &Path,
        gateway_extra: &str,
        node_extra: &str,
        insecure: bool,
        gateway_prefix: &[String],
    ) -> anyhow::Result<Self> {
        let transport = |who: &Identity, pki: &Pki| {
            if insecure {
                String::new()
            } else {
                pki.toml(who)
            }
        };
        let top = if insecure { "insecure = true\n" } else { "" };
        let bins = bin_dir()?;
        let pki = Pki::init(&dir.join("certs"), &hotline_proto::Catalogue::default())?;
        let gateway = free_addr()?;
        let mut nodes = BTreeMap::new();
        for city in cities {
            nodes.insert(city.to_string(), free_addr()?);
        }
        let mut table = String::from("[nodes]\n");
        for (city, addr) in nodes.iter().chain(external) {
            table.push_str(&format!("{city} = \"http://{addr}\"\n"));
        }
        let gw_config = dir.join("gateway.toml");
        std::fs::write(
            &gw_config,
            format!(
                "listen = \"{gateway}\"\ndata_dir = \"{}\"\n{top}{table}\n{}\n{gateway_extra}",
                dir.join("gateway").display(),
                transport(&Identity::Gateway, &pki)
            ),
        )?;
        let gateway_child = start(
            gateway_prefix,
            &bins.join("gateway"),
            &gw_config,
            &dir.join("gateway.log"),
        )?;
        let mut node_children = Vec::new();
        for (city, addr) in &nodes {
            let config = dir.join(format!("{city}.toml"));
            std::fs::write(
                &config,
                format!(
                    "city = \"{city}\"\nlisten = \"{addr}\"\ndata_dir = \"{}\"\ngateway = \"http://{gateway}\"\n{top}{node_extra}\n{}",
                    dir.join(city).display(),
                    transport(&Identity::City(city.clone()), &pki)
                ),
            )?;
            node_children.push(start(
                &[],
                &bins.join("city-node"),
                &config,
                &dir.join(format!("{city}.log")),
            )?);
        }
        let spawned = Self {
            dir: dir.to_owned(),
            pki,
            insecure,
            gateway,
            nodes,
            gateway_child,
            node_children,
        };
        let mut spawned = spawned;
        spawned.wait_ready().await?;
        Ok(spawned)
    }

    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        // Minutes, not seconds: a gateway under a profiler starts slowly.
        let until = Instant::now() + Duration::from_secs(180);
        let mut observatory = ObservatoryClient::new(self.channel(
            self.gateway,
            &Identity::Province,
            &Identity::Gateway,
        )?);
        while let Err(status) = observatory
            .get_city_stats(GetCityStatsRequest::default())
            .await
        {
            if let Some(exit) = self.gateway_child.try_wait()? {
                bail!(
                    "the gateway exited ({exit}); see {}",
                    self.dir.join("gateway.log").display()
                );
            }
            if Instant::now() > until {
                bail!(
                    "the gateway at {} did not answer (last: {:?} {}); see {}",
                    self.gateway,
                    status.code(),
                    status.message(),
                    self.dir.join("gateway.log").display()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        for (city, addr) in &self.nodes {
            let mut node = CityHotlineClient::new(self.channel(
                *addr,
                &Identity::City(city.clone()),
                &Identity::City(city.clone()),
            )?);
            while node
                .list_tickets(ListTicketsRequest {
                    page_size: 1,
                    ..Default::default()
                })
                .await
                .is_err()
            {
                if Instant::now() > until {
                    bail!("the {city} node at {addr} did not answer");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Ok(())
    }

    /// A channel to `server` at `addr` as `who`: over mutual TLS, or
    /// plaintext when the federation runs insecure.
    pub fn channel(
        &self,
        addr: SocketAddr,
        who: &Identity,
        server: &Identity,
    ) -> anyhow::Result<tonic::transport::Channel> {
        if self.insecure {
            Ok(hotline_tls::channel(
                &addr.to_string(),
                &hotline_tls::ClientTls::Insecure,
                server,
                Some(Duration::from_secs(10)),
            )?)
        } else {
            self.pki.channel(addr, who, server)
        }
    }

    /// Stops the gateway gracefully (SIGTERM) and waits for it.
    pub fn stop_gateway(&mut self) -> anyhow::Result<()> {
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(self.gateway_child.id().to_string())
            .status()?;
        if !status.success() {
            bail!("could not signal the gateway");
        }
        self.gateway_child.wait()?;
        Ok(())
    }

    pub fn gateway_pid(&self) -> u32 {
        self.gateway_child.id()
    }

    /// The node processes' ids, in the order of `nodes`.
    pub fn node_pids(&self) -> Vec<u32> {
        self.node_children.iter().map(Child::id).collect()
    }

    /// The gateway's resident memory, in bytes (Linux).
    pub fn gateway_rss(&self) -> Option<u64> {
        rss(self.gateway_child.id())
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        for child in self
            .node_children
            .iter_mut()
            .chain(std::iter::once(&mut self.gateway_child))
        {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Resident memory of a process, from `/proc/PID/status`.
pub fn rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}
