//! The test harness: a whole federation of real processes on loopback.
//!
//! [`Federation::start`] builds the `gateway` and `city-node` binaries (a
//! no-op when they are fresh), writes a configuration file per process into
//! a temporary directory, starts each process, and waits until its gRPC
//! health service answers. Processes can be killed with SIGKILL and started
//! again on the same address and data. Dropping the federation kills what is
//! left. Each process's output goes to a log file beside its data, shown
//! when a test fails through [`Federation::logs`].

#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod console;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use hotline_proto::identity::Identity;
use hotline_proto::pb::city_hotline_client::CityHotlineClient;
use hotline_proto::pb::federation_client::FederationClient;
use hotline_proto::pb::observatory_client::ObservatoryClient;
use hotline_proto::pb::{
    CreateTicketRequest, GetTicketRequest, ListTicketsRequest, Ticket, TicketKind, TicketRole,
    TicketStatus,
};
use simulator::pki::Pki;
use tonic::transport::Channel;

pub const CITIES: [&str; 4] = ["luzhou", "yibin", "zigong", "neijiang"];

/// Where the workspace's binaries are, built once per test process.
pub fn bin_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        // .../target/<profile>/deps/<test> → .../target/<profile>
        let exe = std::env::current_exe().unwrap();
        let dir = exe.parent().unwrap().parent().unwrap().to_path_buf();
        let release = dir.file_name().is_some_and(|n| n == "release");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args([
            "build",
            "--quiet",
            "-p",
            "gateway",
            "-p",
            "city-node",
            "-p",
            "simulator",
        ]);
        if release {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("run cargo build");
        assert!(status.success(), "cargo build of the binaries failed");
        dir
    })
}

/// The store of a gateway or node in the tests: SQLite, or with
/// `HOTLINE_TEST_STORE=postgres` a fresh schema of the PostgreSQL server
/// (`HOTLINE_TEST_POSTGRES`, else the local one), so that the same tests
/// run against both backends. A test that sets `store` itself keeps it.
pub fn test_store(gateway_extra: &str) -> (String, Option<(String, String)>) {
    if gateway_extra.contains("store =") || !postgres_tests() {
        return (String::new(), None);
    }
    match hotline_durable::testing::postgres_store("gw") {
        hotline_durable::Store::Postgres { url, schema } => (
            format!("store = \"{url}\"\nstore_schema = \"{schema}\"\n"),
            Some((url, schema)),
        ),
        hotline_durable::Store::Sqlite(_) => (String::new(), None),
    }
}

/// Whether the gateways of this test run keep their ledger in PostgreSQL.
pub fn postgres_tests() -> bool {
    std::env::var("HOTLINE_TEST_STORE").is_ok_and(|v| v == "postgres")
}

/// A free port on loopback for a process to bind right after (see
/// `simulator::spawn::free_addr`).
pub fn free_addr() -> SocketAddr {
    simulator::spawn::free_addr().unwrap()
}

pub struct Proc {
    name: String,
    bin: &'static str,
    config: PathBuf,
    log: PathBuf,
    pub addr: SocketAddr,
    child: Option<Child>,
    /// More environment for the process.
    env: Vec<(String, String)>,
    /// A command the process is started through (`prlimit …`), if any.
    wrapper: Vec<String>,
}

impl Proc {
    /// Everything the process has logged so far (all its runs).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The process's configuration file.
    pub fn config(&self) -> &std::path::Path {
        &self.config
    }

    /// Starts the process (again, after [`Proc::kill`]), its log appended to.
    pub fn start(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let bin = bin_dir().join(self.bin);
        let mut command = match self.wrapper.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(&bin);
                c
            }
            None => Command::new(&bin),
        };
        let child = command
            .arg("--config")
            .arg(&self.config)
            .env("RUST_LOG", "info")
            // An error ends a process with its message and causes, not a
            // backtrace that pushes them out of the tail `logs` shows.
            .env("RUST_LIB_BACKTRACE", "0")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", self.name));
        self.child = Some(child);
    }

    /// SIGKILL: no chance to flush or say goodbye.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM and wait: a graceful stop.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        child.wait().unwrap()
    }

    /// Starts the process through `wrapper` from now on (a command that
    /// runs the one it is given: `prlimit --nofile=1024:1024 --`).
    pub fn wrap(&mut self, wrapper: &[&str]) {
        self.wrapper = wrapper.iter().map(|w| w.to_string()).collect();
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => c.try_wait().unwrap().is_none(),
            None => false,
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

pub struct Federation {
    pub dir: tempfile::TempDir,
    /// The development CA and every holder's certificate (`dev_ca`).
    pub certs: PathBuf,
    pki: Pki,
    pub gateway: Proc,
    /// The gateway's dashboard and `/metrics` (plain HTTP on loopback).
    pub dashboard: SocketAddr,
    pub nodes: BTreeMap<String, Proc>,
    /// More replicas of the gateway on the same ledger (issue #9), added by
    /// [`Federation::add_gateway_replica`].
    pub replicas: Vec<Proc>,
    /// The PostgreSQL schemas of the stores (URL, schema), dropped with the
    /// federation.
    pub schemas: Vec<(String, String)>,
}

impl Drop for Federation {
    fn drop(&mut self) {
        if !self.schemas.is_empty() {
            // The processes first: their sessions hold the schemas' tables.
            self.gateway.kill();
            for p in self.replicas.iter_mut().chain(self.nodes.values_mut()) {
                p.kill();
            }
            for (url, schema) in self.schemas.drain(..) {
                hotline_durable::testing::drop_schema(&url, &schema);
            }
        }
    }
}

impl Federation {
    /// The four cities of southern Sichuan, a gateway, all running and
    /// healthy.
    pub async fn start() -> Self {
        Self::start_with("", "").await
    }

    /// As [`Federation::start`], with extra TOML lines for the gateway's and
    /// every node's configuration file (timings, for instance).
    pub async fn start_with(gateway_extra: &str, node_extra: &str) -> Self {
        Self::start_with_env(gateway_extra, node_extra, &[]).await
    }

    /// As [`Federation::start_with`], with more environment for every
    /// process.
    pub async fn start_with_env(
        gateway_extra: &str,
        node_extra: &str,
        env: &[(&str, &str)],
    ) -> Self {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let dir = tempfile::tempdir().unwrap();
        let certs = dir.path().join("certs");
        let pki = Pki::init(&certs, &hotline_proto::Catalogue::default()).unwrap();
        let gateway_addr = free_addr();
        let dashboard = free_addr();
        let node_addrs: BTreeMap<String, SocketAddr> = CITIES
            .iter()
            .map(|c| (c.to_string(), free_addr()))
            .collect();
        let mut nodes_toml = String::from("[nodes]\n");
        for (city, addr) in &node_addrs {
            nodes_toml.push_str(&format!("{city} = \"http://{addr}\"\n"));
        }
        let (store, schema) = test_store(gateway_extra);
        let mut schemas: Vec<(String, String)> = schema.into_iter().collect();
        let gw_config = dir.path().join("gateway.toml");
        std::fs::write(
            &gw_config,
            format!(
                "listen = \"{gateway_addr}\"\nhttp_listen = \"{dashboard}\"\ndata_dir = \"{}\"\n{}{gateway_extra}\n{nodes_toml}\n{}\n{}",
                dir.path().join("gateway").display(),
                store,
                pki.toml(&Identity::Gateway),
                // The tests' tickets all say the same thing: merging is for
                // the tests that ask for it with a [supervision] of their own.
                if gateway_extra.contains("[supervision]") {
                    ""
                } else {
                    "[supervision]\nmerge_window_hours = 0\n"
                }
            ),
        )
        .unwrap();
        let gateway = Proc {
            name: "gateway".into(),
            bin: "gateway",
            config: gw_config,
            log: dir.path().join("gateway.log"),
            addr: gateway_addr,
            child: None,
            env: env.clone(),
            wrapper: Vec::new(),
        };
        let mut nodes = BTreeMap::new();
        for (city, addr) in &node_addrs {
            let config = dir.path().join(format!("{city}.toml"));
            let (store, schema) = test_store(node_extra);
            schemas.extend(schema);
            std::fs::write(
                &config,
                format!(
                    "city = \"{city}\"\nlisten = \"{addr}\"\ndata_dir = \"{}\"\ngateway = \"http://{gateway_addr}\"\n{store}{node_extra}\n{}",
                    dir.path().join(city).display(),
                    pki.toml(&Identity::City(city.clone()))
                ),
            )
            .unwrap();
            nodes.insert(
                city.clone(),
                Proc {
                    name: city.clone(),
                    bin: "city-node",
                    config,
                    log: dir.path().join(format!("{city}.log")),
                    addr: *addr,
                    child: None,
                    env: env.clone(),
                    wrapper: Vec::new(),
                },
            );
        }
        let mut f = Self {
            dir,
            certs,
            pki,
            gateway,
            dashboard,
            nodes,
            replicas: Vec::new(),
            schemas,
        };
        f.gateway.start();
        for p in f.nodes.values_mut() {
            p.start();
        }
        f.wait_healthy(&Identity::Gateway).await;
        for city in CITIES {
            f.wait_healthy(&Identity::City(city.into())).await;
        }
        f
    }

    /// The address of the process that holds `server`'s certificate.
    pub fn addr_of(&self, server: &Identity) -> SocketAddr {
        match server {
            Identity::City(c) => self.nodes[c.as_str()].addr,
            _ => self.gateway.addr,
        }
    }

    /// A channel to `server`, presenting `who`'s certificate.
    pub fn channel_as(&self, who: &Identity, server: &Identity) -> Channel {
        self.pki.channel(self.addr_of(server), who, server).unwrap()
    }

    /// Waits until `server` answers its health check (over mTLS, as the
    /// province); fails with every process's log if it does not.
    pub async fn wait_healthy(&self, server: &Identity) {
        if !wait_healthy(self.channel_as(&Identity::Province, server)).await {
            panic!("{server} did not become healthy\n{}", self.logs());
        }
    }

    pub fn node(&mut self, city: &str) -> &mut Proc {
        self.nodes.get_mut(city).unwrap()
    }

    pub async fn restart_gateway(&mut self) {
        self.gateway.kill();
        self.gateway.start();
        self.wait_healthy(&Identity::Gateway).await;
    }

    pub async fn start_gateway(&mut self) {
        self.gateway.start();
        self.wait_healthy(&Identity::Gateway).await;
    }

    /// Another gateway replica on `addr`, with the gateway's configuration
    /// (and so its ledger: a shared PostgreSQL store) but for its addresses.
    /// Not started: see [`Federation::start_replica`].
    pub fn add_gateway_replica(&mut self, addr: SocketAddr) -> usize {
        let n = self.replicas.len() + 1;
        let text = std::fs::read_to_string(&self.gateway.config).unwrap();
        let listen = format!("listen = \"{}\"", self.gateway.addr);
        assert!(text.contains(&listen), "{text}");
        let http = format!("http_listen = \"{}\"", self.dashboard);
        let text = text
            .replace(&listen, &format!("listen = \"{addr}\""))
            .replace(&http, &format!("http_listen = \"{}\"", free_addr()));
        let config = self.dir.path().join(format!("gateway-{n}.toml"));
        std::fs::write(&config, text).unwrap();
        self.replicas.push(Proc {
            name: format!("gateway-{n}"),
            bin: "gateway",
            config,
            log: self.dir.path().join(format!("gateway-{n}.log")),
            addr,
            child: None,
            env: self.gateway.env.clone(),
            wrapper: Vec::new(),
        });
        n - 1
    }

    /// Starts replica `i` and waits until it answers its health check.
    pub async fn start_replica(&mut self, i: usize) {
        self.replicas[i].start();
        let channel = self
            .pki
            .channel(
                self.replicas[i].addr,
                &Identity::Province,
                &Identity::Gateway,
            )
            .unwrap();
        if !wait_healthy(channel).await {
            panic!(
                "gateway replica {i} did not become healthy\n{}",
                self.logs()
            );
        }
    }

    /// The Observatory at gateway replica `i`.
    pub fn observatory_at(&self, i: usize) -> ObservatoryClient<Channel> {
        ObservatoryClient::new(
            self.pki
                .channel(
                    self.replicas[i].addr,
                    &Identity::Province,
                    &Identity::Gateway,
                )
                .unwrap(),
        )
    }

    pub async fn start_node(&mut self, city: &str) {
        self.node(city).start();
        self.wait_healthy(&Identity::City(city.into())).await;
    }

    /// The city's own hotline platform at its node.
    pub async fn hotline(&self, city: &str) -> CityHotlineClient<Channel> {
        let id = Identity::City(city.into());
        CityHotlineClient::new(self.channel_as(&id, &id))
    }

    /// The provincial centre at the gateway.
    pub async fn observatory(&self) -> ObservatoryClient<Channel> {
        ObservatoryClient::new(self.channel_as(&Identity::Province, &Identity::Gateway))
    }

    /// `city`'s figures at the gateway, as the province reads them.
    pub async fn city_stats(&self, city: &str) -> hotline_proto::pb::CityStats {
        self.observatory()
            .await
            .get_city_stats(hotline_proto::pb::GetCityStatsRequest {
                city: city.into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .cities
            .remove(0)
    }

    /// The gateway's Federation service, as `city`'s node calls it.
    pub async fn federation_as(&self, city: &str) -> FederationClient<Channel> {
        FederationClient::new(self.channel_as(&Identity::City(city.into()), &Identity::Gateway))
    }

    /// The Federation service of gateway replica `i`, as `city`'s node
    /// calls it.
    pub fn federation_at(&self, i: usize, city: &str) -> FederationClient<Channel> {
        FederationClient::new(
            self.pki
                .channel(
                    self.replicas[i].addr,
                    &Identity::City(city.into()),
                    &Identity::Gateway,
                )
                .unwrap(),
        )
    }

    /// Every process's log, for a failing test's message.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for p in std::iter::once(&self.gateway)
            .chain(&self.replicas)
            .chain(self.nodes.values())
        {
            let text = std::fs::read_to_string(&p.log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(40).collect();
            out.push_str(&format!("----- {} -----\n", p.name));
            for line in tail.into_iter().rev() {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }
}

/// Waits until the process at the end of `channel` answers its health
/// check; false after 30 seconds without.
pub async fn wait_healthy(channel: Channel) -> bool {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut client = tonic_health::pb::health_client::HealthClient::new(channel.clone());
        let ok = client
            .check(tonic_health::pb::HealthCheckRequest {
                service: String::new(),
            })
            .await
            .is_ok_and(|r| r.into_inner().status == 1);
        if ok {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls `check` until it returns `Some`, or fails with `what` after
/// `timeout`. For conditions that become true as messages flow.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A ticket draft from `origin` for `targets`.
pub fn draft(targets: &[&str], category: &str) -> Ticket {
    Ticket {
        target_cities: targets.iter().map(|s| s.to_string()).collect(),
        category: category.into(),
        kind: TicketKind::Consultation as i32,
        subject: "社保关系转移咨询".into(),
        description: "在外地缴纳的社保如何转回本地".into(),
        location: "江阳区".into(),
        citizen: Some(hotline_proto::pb::Citizen {
            name: "王小明".into(),
            phone: "13912345678".into(),
        }),
        ..Default::default()
    }
}

/// A ticket as `origin`'s node dispatches it to the gateway: an id of
/// `origin`'s, one target, its CREATED event.
pub fn dispatchable(origin: &str, target: &str, category: &str) -> Ticket {
    let id = hotline_proto::TicketId::new(origin).to_string();
    let mut t = draft(&[target], category);
    t.history = vec![hotline_proto::state::event(
        &id,
        1,
        hotline_proto::pb::EventKind::Created,
        origin,
        hotline_proto::pb::TicketStatus::Pending,
    )];
    t.id = id;
    t.origin_city = origin.into();
    t
}

pub async fn create(client: &mut CityHotlineClient<Channel>, ticket: Ticket) -> Ticket {
    client
        .create_ticket(CreateTicketRequest {
            ticket: Some(ticket),
        })
        .await
        .unwrap()
        .into_inner()
        .ticket
        .unwrap()
}

pub async fn get(client: &mut CityHotlineClient<Channel>, id: &str) -> Option<Ticket> {
    client
        .get_ticket(GetTicketRequest {
            ticket_id: id.into(),
        })
        .await
        .ok()
        .and_then(|r| r.into_inner().ticket)
}

/// Every ticket of a role at a node, all pages.
pub async fn list_all(client: &mut CityHotlineClient<Channel>, role: TicketRole) -> Vec<Ticket> {
    let mut out = Vec::new();
    let mut token = String::new();
    loop {
        let page = client
            .list_tickets(ListTicketsRequest {
                role: role as i32,
                page_size: 1000,
                page_token: token.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        out.extend(page.tickets);
        if page.next_page_token.is_empty() {
            return out;
        }
        token = page.next_page_token;
    }
}

/// Waits until `city`'s node holds ticket `id` in status `want`.
pub async fn wait_status(
    client: &CityHotlineClient<Channel>,
    id: &str,
    want: TicketStatus,
) -> Ticket {
    let what = format!("{id} is {}", want.as_str_name());
    eventually(&what, Duration::from_secs(20), || {
        let mut client = client.clone();
        let id = id.to_owned();
        async move {
            get(&mut client, &id)
                .await
                .filter(|t| t.status == want as i32)
        }
    })
    .await
}

/// A plain HTTP/1.1 GET on loopback: the status code and the body.
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    http_get_as(addr, &addr.to_string(), path).await
}

/// As [`http_get`], saying `host` in the `Host` header.
pub async fn http_get_as(addr: SocketAddr, host: &str, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    // A chunked body is fine to search in as it is; tests look for lines.
    (code, body.to_owned())
}

/// Dispatches `n` reports of one matter (the same words, the same place, to
/// `target`), all at the same instant: the `i`th from `senders[i % len]`
/// (its city and the gateway replica it calls). Returns the event each was
/// answered with, and checks that they were decided as if they had come one
/// after the other: one dispatched, every other merged into it (合并派单),
/// and the matter escalated for its many citizens (多人一诉, each report is
/// another citizen's) once if `n` reaches the gateway's default threshold
/// (5), else not at all, as `obs` lists it.
pub async fn one_matter_at_once(
    senders: &[(&str, FederationClient<Channel>)],
    obs: &mut ObservatoryClient<Channel>,
    target: &str,
    n: usize,
) -> Vec<hotline_proto::pb::TicketEvent> {
    use hotline_proto::pb::{DispatchTicketRequest, EscalationRule, EventKind, TicketStatus};
    // A house number of this call's own, so that calls do not meet.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let place = format!("江阳区春雨路{}号", nanos % 90_000 + 1);
    let calls = (0..n).map(|i| {
        let (city, client) = &senders[i % senders.len()];
        let mut client = client.clone();
        let id = hotline_proto::ids::TicketId::new(city).to_string();
        let ticket = Ticket {
            id: id.clone(),
            origin_city: (*city).to_owned(),
            target_cities: vec![target.to_owned()],
            category: "ecology".into(),
            kind: TicketKind::Complaint as i32,
            subject: "小区连续两天停水".into(),
            description: format!("{place}小区连续两天停水，物业无人处理，请尽快恢复供水。"),
            location: place.clone(),
            citizen: Some(hotline_proto::pb::Citizen {
                name: String::new(),
                phone: format!("139{:08}", i),
            }),
            history: vec![hotline_proto::state::event(
                &id,
                1,
                EventKind::Created,
                city,
                TicketStatus::Pending,
            )],
            ..Default::default()
        };
        let city = (*city).to_owned();
        async move {
            // A replica's ABORTED (a deadlock between the replicas' batches)
            // is tried again, as a node does.
            loop {
                let r = client
                    .dispatch_ticket(DispatchTicketRequest {
                        city: city.clone(),
                        ticket: Some(ticket.clone()),
                    })
                    .await;
                match r {
                    Ok(r) => return r.into_inner().event.unwrap(),
                    Err(s) if s.code() == tonic::Code::Aborted => continue,
                    Err(s) => panic!("dispatch of report {i}: {s}"),
                }
            }
        }
    });
    let events = futures::future::join_all(calls).await;
    let dispatched: Vec<_> = events
        .iter()
        .filter(|e| e.kind == EventKind::Dispatched as i32)
        .collect();
    assert_eq!(
        dispatched.len(),
        1,
        "one dispatch of the matter: {events:#?}"
    );
    let first = &dispatched[0].ticket_id;
    for e in &events {
        if e.ticket_id != *first {
            assert_eq!(e.kind, EventKind::Merged as i32, "{e:?}");
            assert_eq!(&e.linked_ticket_id, first, "{e:?}");
        }
    }
    let all = escalations(obs).await;
    let of_the_matter: Vec<_> = all
        .iter()
        .filter(|e| {
            e.rule == EscalationRule::ManyReportsOneMatter as i32
                && e.ticket_ids.iter().any(|t| t == first)
        })
        .collect();
    assert_eq!(
        of_the_matter.len(),
        usize::from(n >= 5),
        "escalations of the matter of {first}: {of_the_matter:#?}"
    );
    events
}

/// Every escalation the gateway lists, open and closed (up to 1,000).
pub async fn escalations(
    obs: &mut ObservatoryClient<Channel>,
) -> Vec<hotline_proto::pb::Escalation> {
    obs.list_escalations(hotline_proto::pb::ListEscalationsRequest {
        include_closed: true,
        page_size: 1000,
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner()
    .escalations
}
