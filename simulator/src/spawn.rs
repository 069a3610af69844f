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

use crate::faultproxy::{FaultProxy, Mode};
use crate::pki::Pki;

/// Which process a fault acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Gateway,
    Node(String),
}

impl Target {
    pub fn parse(s: &str) -> Self {
        if s == "gateway" {
            Self::Gateway
        } else {
            Self::Node(s.to_owned())
        }
    }
}

/// The fault proxies on one city's links: node → gateway (`up`) and
/// gateway → node (`down`).
pub struct Links {
    pub up: FaultProxy,
    pub down: FaultProxy,
}

impl Links {
    pub fn set(&self, mode: Mode) {
        self.up.set(mode);
        self.down.set(mode);
    }
}

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
    gateway_prefix: Vec<String>,
    gateway_config: PathBuf,
    /// Each node's configuration file, in the order of `nodes`.
    node_configs: Vec<PathBuf>,
    /// Fault proxies on each city's links, when started with them.
    pub links: BTreeMap<String, Links>,
    /// The gateway's PostgreSQL schema (URL, schema) when
    /// `HOTLINE_SPAWN_POSTGRES` gave one, dropped with the federation.
    schema: Option<(String, String)>,
}

/// A second gateway replica (see [`Spawned::start_replica`]).
pub struct Replica {
    pub addr: SocketAddr,
    child: Child,
}

impl Replica {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
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
/// one process.
///
/// Between the check here and the child's bind, another process of ours
/// (a test binary and the simulators it spawns, side by side) must not hand
/// out the same port: each process first claims a block of the range, with
/// an exclusive lock on a file named after it under the temporary
/// directory, and gives out ports of its own blocks only. The lock goes
/// with the process, however it ends. Where no lock can be taken (no
/// temporary directory), blocks are claimed without one, starting at a
/// point spread by the process's id.
pub fn free_addr() -> anyhow::Result<SocketAddr> {
    use std::sync::Mutex;
    static PORTS: Mutex<Option<PortBlocks>> = Mutex::new(None);
    let mut guard = PORTS.lock().unwrap_or_else(|e| e.into_inner());
    let blocks = guard.get_or_insert_with(PortBlocks::new);
    loop {
        let port = blocks.next_port()?;
        if let Ok(l) = TcpListener::bind(("127.0.0.1", port)) {
            return Ok(l.local_addr()?);
        }
    }
}

/// The first port [`free_addr`] gives out, the number of ports and the size
/// of a block.
const PORT_BASE: u32 = 20_000;
const PORT_SPAN: u32 = 12_000;
const PORT_BLOCK: u32 = 200;

/// The blocks of ports a process holds (see [`free_addr`]).
struct PortBlocks {
    /// The lock files held, one per block claimed.
    held: Vec<std::fs::File>,
    /// The block ports are given from, and the next port's place in it.
    current: Option<(u32, u32)>,
    /// Blocks tried so far, and where the search starts.
    tried: u32,
    start: u32,
}

impl PortBlocks {
    fn new() -> Self {
        let blocks = PORT_SPAN / PORT_BLOCK;
        Self {
            held: Vec::new(),
            current: None,
            tried: 0,
            start: std::process::id() % blocks,
        }
    }

    fn next_port(&mut self) -> anyhow::Result<u16> {
        loop {
            if let Some((block, n)) = self.current.as_mut()
                && *n < PORT_BLOCK
            {
                let port = PORT_BASE + *block * PORT_BLOCK + *n;
                *n += 1;
                return Ok(port as u16);
            }
            self.current = Some((self.claim()?, 0));
        }
    }

    /// The next block no other process holds.
    fn claim(&mut self) -> anyhow::Result<u32> {
        let blocks = PORT_SPAN / PORT_BLOCK;
        let dir = std::env::temp_dir().join("hotline-ports");
        let lockable = std::fs::create_dir_all(&dir).is_ok();
        while self.tried < blocks {
            let block = (self.start + self.tried) % blocks;
            self.tried += 1;
            if !lockable {
                return Ok(block);
            }
            let Ok(file) = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(dir.join(format!("{block}.lock")))
            else {
                return Ok(block);
            };
            if file.try_lock().is_ok() {
                self.held.push(file);
                return Ok(block);
            }
        }
        bail!(
            "no free port left in {PORT_BASE}..{}: every block is held by another process",
            PORT_BASE + PORT_SPAN
        )
    }
}

fn start(prefix: &[String], bin: &Path, config: &Path, log: &Path) -> anyhow::Result<Child> {
    // Appended to: a restarted process's log follows its earlier life's.
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?;
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
        // An error ends a process with its message and causes, not a
        // backtrace that leaves them out of a log's tail.
        .env("RUST_LIB_BACKTRACE", "0")
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
        Self::launch(
            cities,
            &none,
            dir,
            gateway_extra,
            node_extra,
            insecure,
            &[],
            Options::default(),
        )
        .await
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
            Options::default(),
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
        Self::launch(&[], &nowhere, dir, "", "", false, &[], Options::default()).await
    }

    /// The whole federation of `catalogue` under `dir`, over mutual TLS,
    /// with a fault proxy on each city's links to the gateway when `links`
    /// (for partitions and latency), `gateway_extra` sections in the
    /// gateway's file and `node_extra` top-level lines in every node's.
    pub async fn federation(
        catalogue: &hotline_proto::Catalogue,
        dir: &Path,
        gateway_extra: &str,
        node_extra: &str,
        links: bool,
    ) -> anyhow::Result<Self> {
        let cities: Vec<&str> = catalogue.city_ids().collect();
        Self::launch(
            &cities,
            &BTreeMap::new(),
            dir,
            gateway_extra,
            node_extra,
            false,
            &[],
            Options {
                catalogue: Some(catalogue.clone()),
                links,
            },
        )
        .await
    }

    #[allow(clippy::too_many_arguments)]
    async fn launch(
        cities: &[&str],
        external: &BTreeMap<String, SocketAddr>,
        dir: &Path,
        gateway_extra: &str,
        node_extra: &str,
        insecure: bool,
        gateway_prefix: &[String],
        options: Options,
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
        let catalogue = options.catalogue.unwrap_or_default();
        // Member cities and categories, when not the defaults.
        let members = if catalogue == hotline_proto::Catalogue::default() {
            String::new()
        } else {
            toml::to_string(&catalogue).context("write the catalogue")?
        };
        let pki = Pki::init(&dir.join("certs"), &catalogue)?;
        let gateway = free_addr()?;
        let mut nodes = BTreeMap::new();
        for city in cities {
            nodes.insert(city.to_string(), free_addr()?);
        }
        let mut links = BTreeMap::new();
        if options.links {
            for (city, addr) in &nodes {
                let up = FaultProxy::start(std::net::TcpListener::bind(free_addr()?)?, gateway)?;
                let down = FaultProxy::start(std::net::TcpListener::bind(free_addr()?)?, *addr)?;
                links.insert(city.clone(), Links { up, down });
            }
        }
        let mut table = String::from("[nodes]\n");
        for (city, addr) in nodes.iter().chain(external) {
            let addr = links
                .get(city)
                .map(|l: &Links| l.down.addr)
                .unwrap_or(*addr);
            table.push_str(&format!("{city} = \"http://{addr}\"\n"));
        }
        // The test suite's PostgreSQL pass puts the gateway's ledger on a
        // fresh schema of the server `HOTLINE_SPAWN_POSTGRES` names.
        let schema = match std::env::var("HOTLINE_SPAWN_POSTGRES") {
            Ok(url) if !url.is_empty() => {
                let nanos = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos())
                    .unwrap_or(0);
                Some((url, format!("spawn_{}_{nanos}", std::process::id())))
            }
            _ => None,
        };
        let store = match &schema {
            Some((url, name)) => format!("store = \"{url}\"\nstore_schema = \"{name}\"\n"),
            None => String::new(),
        };
        let gw_config = dir.join("gateway.toml");
        std::fs::write(
            &gw_config,
            format!(
                "{store}listen = \"{gateway}\"\ndata_dir = \"{}\"\n{top}{table}\n{}\n{gateway_extra}\n{members}\n{}",
                dir.join("gateway").display(),
                transport(&Identity::Gateway, &pki),
                // The planned requests are each a matter of their own, in
                // words drawn from one sentence per category: the run keeps
                // merging off unless the caller configures it.
                if gateway_extra.contains("[supervision]") {
                    ""
                } else {
                    "[supervision]\nmerge_window_hours = 0\n"
                }
            ),
        )?;
        let gateway_child = start(
            gateway_prefix,
            &bins.join("gateway"),
            &gw_config,
            &dir.join("gateway.log"),
        )?;
        let mut node_children = Vec::new();
        let mut node_configs = Vec::new();
        for (city, addr) in &nodes {
            let config = dir.join(format!("{city}.toml"));
            let up = links.get(city).map(|l| l.up.addr).unwrap_or(gateway);
            std::fs::write(
                &config,
                format!(
                    "city = \"{city}\"\nlisten = \"{addr}\"\ndata_dir = \"{}\"\ngateway = \"http://{up}\"\n{top}{node_extra}\n{}\n{members}",
                    dir.join(city).display(),
                    transport(&Identity::City(city.clone()), &pki)
                ),
            )?;
            node_configs.push(config.clone());
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
            gateway_prefix: gateway_prefix.to_vec(),
            gateway_config: gw_config,
            node_configs,
            links,
            schema,
        };
        let mut spawned = spawned;
        spawned.wait_ready().await?;
        Ok(spawned)
    }

    fn node_index(&self, city: &str) -> anyhow::Result<usize> {
        self.nodes
            .keys()
            .position(|c| c == city)
            .with_context(|| format!("no node of {city} in this federation"))
    }

    fn child(&mut self, target: &Target) -> anyhow::Result<&mut Child> {
        match target {
            Target::Gateway => Ok(&mut self.gateway_child),
            Target::Node(city) => {
                let i = self.node_index(city)?;
                self.node_children
                    .get_mut(i)
                    .with_context(|| format!("no process for {city}"))
            }
        }
    }

    /// SIGKILL, and wait for the process to be gone.
    pub fn kill(&mut self, target: &Target) -> anyhow::Result<()> {
        let child = self.child(target)?;
        let _ = child.kill();
        child.wait()?;
        Ok(())
    }

    /// Starts a killed process again, on its address and data.
    pub fn restart(&mut self, target: &Target) -> anyhow::Result<()> {
        let bins = bin_dir()?;
        let (prefix, bin, config, log) = match target {
            Target::Gateway => (
                self.gateway_prefix.clone(),
                bins.join("gateway"),
                self.gateway_config.clone(),
                self.dir.join("gateway.log"),
            ),
            Target::Node(city) => {
                let i = self.node_index(city)?;
                (
                    Vec::new(),
                    bins.join("city-node"),
                    self.node_configs[i].clone(),
                    self.dir.join(format!("{city}.log")),
                )
            }
        };
        let fresh = start(&prefix, &bin, &config, &log)?;
        *self.child(target)? = fresh;
        Ok(())
    }

    /// Sends `signal` (`STOP`, `CONT`...) to the process.
    pub fn signal(&mut self, target: &Target, signal: &str) -> anyhow::Result<()> {
        let pid = self.child(target)?.id();
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status()?;
        if !status.success() {
            bail!("could not send SIG{signal} to {target:?}");
        }
        Ok(())
    }

    /// Waits until every process answers again (after a restart).
    pub async fn ready(&mut self) -> anyhow::Result<()> {
        self.wait_ready().await
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

    /// Moves the gateway's ledger to schema `schema` of the PostgreSQL
    /// server at `url`: stops it, puts the store's lines at the head of its
    /// file, and starts it again. For a federation whose ledger holds
    /// nothing yet. The schema is dropped with the federation.
    pub async fn move_gateway_store(&mut self, url: &str, schema: &str) -> anyhow::Result<()> {
        self.stop_gateway()?;
        let text = std::fs::read_to_string(&self.gateway_config)?;
        std::fs::write(
            &self.gateway_config,
            format!("store = \"{url}\"\nstore_schema = \"{schema}\"\n{text}"),
        )?;
        // A schema the gateway had before (HOTLINE_SPAWN_POSTGRES) is left
        // behind now: dropped here, the gateway being stopped.
        if let Some((url, schema)) = self.schema.replace((url.to_owned(), schema.to_owned())) {
            hotline_durable::testing::drop_schema(&url, &schema);
        }
        self.restart(&Target::Gateway)?;
        self.wait_ready().await
    }

    /// Another replica of the gateway, with its configuration (and so its
    /// ledger, which must be a shared store) on an address of its own;
    /// answering when this returns. It is killed when dropped.
    pub async fn start_replica(&self) -> anyhow::Result<Replica> {
        let addr = free_addr()?;
        let text = std::fs::read_to_string(&self.gateway_config)?;
        let listen = format!("listen = \"{}\"", self.gateway);
        if !text.contains(&listen) {
            bail!("the gateway's file has no {listen}");
        }
        let config = self.dir.join("gateway-replica.toml");
        std::fs::write(
            &config,
            text.replace(&listen, &format!("listen = \"{addr}\"")),
        )?;
        let child = start(
            &[],
            &bin_dir()?.join("gateway"),
            &config,
            &self.dir.join("gateway-replica.log"),
        )?;
        let replica = Replica { addr, child };
        let until = Instant::now() + Duration::from_secs(60);
        let mut observatory =
            ObservatoryClient::new(self.channel(addr, &Identity::Province, &Identity::Gateway)?);
        while observatory
            .get_city_stats(GetCityStatsRequest::default())
            .await
            .is_err()
        {
            if Instant::now() > until {
                bail!(
                    "the gateway replica at {addr} did not answer; see {}",
                    self.dir.join("gateway-replica.log").display()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(replica)
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

/// What a federation is started with beyond the defaults.
#[derive(Default)]
struct Options {
    /// Member cities and categories (the default catalogue when absent).
    catalogue: Option<hotline_proto::Catalogue>,
    /// A fault proxy on each city's links.
    links: bool,
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
        if let Some((url, schema)) = self.schema.take() {
            hotline_durable::testing::drop_schema(&url, &schema);
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Two claimants (as two processes would be: a lock is held per open
    /// file) never get the same block, and a block let go is claimed again.
    #[test]
    fn side_by_side_claimants_get_ports_of_different_blocks() {
        let mut a = PortBlocks::new();
        let mut b = PortBlocks::new();
        let pa = a.next_port().unwrap();
        let pb = b.next_port().unwrap();
        let block = |p: u16| (u32::from(p) - PORT_BASE) / PORT_BLOCK;
        assert_ne!(block(pa), block(pb), "{pa} and {pb}");
        // A whole block is given out before another is claimed.
        for _ in 1..PORT_BLOCK {
            assert_eq!(block(a.next_port().unwrap()), block(pa));
        }
        assert_ne!(block(a.next_port().unwrap()), block(pa));
        // Let go (the process ended): the next claimant may take it.
        let freed = block(pb);
        drop(b);
        let mut c = PortBlocks::new();
        c.start = freed;
        assert_eq!(block(c.next_port().unwrap()), freed);
    }
}
