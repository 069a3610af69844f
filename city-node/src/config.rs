//! A city node's configuration file (TOML). Every key is documented in
//! `config/city-node.example.toml`, which the tests load.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use hotline_proto::Catalogue;
use hotline_proto::catalogue::{CatalogueConfig, Category, City};
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// This node's city: a member city id.
    pub city: String,
    /// Where the gRPC services listen.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Where the store (`node.db`) lives, when `store` is SQLite; relative
    /// to the configuration file's directory.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// The node's store: `"sqlite"` (the default: `data_dir/node.db`) or a
    /// PostgreSQL connection string (`"postgres://user@host/db"`).
    #[serde(default)]
    pub store: Option<String>,
    /// The PostgreSQL schema of the node's store (made if missing).
    #[serde(default = "default_store_schema")]
    pub store_schema: String,
    /// Reader connections of the store at most (reads past them wait up to
    /// 5 s, then answer UNAVAILABLE). With the writer and, on PostgreSQL,
    /// the lease keeper: the most connections this process takes.
    #[serde(default = "default_store_readers")]
    pub store_readers: usize,
    /// Mutual TLS: this process's certificate and key, the CA bundle, the
    /// revocation list. Relative paths are taken from the file's directory.
    #[serde(default)]
    pub tls: Option<hotline_tls::TlsFiles>,
    /// Plaintext with no authentication, instead of `tls`: only on a
    /// loopback listen address.
    #[serde(default)]
    pub insecure: bool,
    /// The gateway's address.
    pub gateway: String,
    /// More addresses of the gateway (its other replicas), tried in turn
    /// after `gateway` when one cannot be reached.
    #[serde(default)]
    pub gateways: Vec<String>,
    /// How long one operator's console rings before the next operator is
    /// tried, in milliseconds.
    #[serde(default = "default_ring_timeout_ms")]
    pub ring_timeout_ms: u64,
    /// How long a call transfer may wait for an answer, in milliseconds.
    #[serde(default = "default_transfer_deadline_ms")]
    pub transfer_deadline_ms: u64,
    #[serde(default)]
    pub cities: Option<Vec<City>>,
    #[serde(default)]
    pub categories: Option<Vec<Category>>,
    /// The node's limits on its callers (the city's own systems and the
    /// gateway), as the gateway has its own.
    #[serde(default)]
    pub limits: NodeLimits,
}

/// The `[limits]` table of a node's configuration.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NodeLimits {
    /// Requests a second each caller (the city's certificate, the
    /// gateway's) may make on average; past it RESOURCE_EXHAUSTED.
    #[serde(default = "default_rate")]
    pub per_caller_rps: f64,
    /// How many requests a caller may make at once above that rate.
    #[serde(default = "default_burst")]
    pub per_caller_burst: f64,
    /// Requests one connection may have in flight; past it the node sheds
    /// load with RESOURCE_EXHAUSTED.
    #[serde(default = "default_in_flight")]
    pub in_flight_per_connection: usize,
}

/// Well above what one node takes (a node alone answered 31,800 tickets a
/// second in `bench --quick`): the limit is against a runaway caller, never
/// in the way of the gateway's deliveries at full speed.
fn default_rate() -> f64 {
    50_000.0
}

fn default_burst() -> f64 {
    100_000.0
}

fn default_in_flight() -> usize {
    1_024
}

impl Default for NodeLimits {
    fn default() -> Self {
        Self {
            per_caller_rps: default_rate(),
            per_caller_burst: default_burst(),
            in_flight_per_connection: default_in_flight(),
        }
    }
}

impl NodeLimits {
    fn check(&self) -> anyhow::Result<()> {
        if !(self.per_caller_rps.is_finite() && self.per_caller_rps > 0.0) {
            bail!("limits.per_caller_rps: must be a positive number");
        }
        if !(self.per_caller_burst.is_finite() && self.per_caller_burst >= 1.0) {
            bail!("limits.per_caller_burst: must be at least 1");
        }
        if self.in_flight_per_connection == 0 {
            bail!("limits.in_flight_per_connection: must be positive");
        }
        Ok(())
    }
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 7401))
}

fn default_ring_timeout_ms() -> u64 {
    15_000
}

fn default_transfer_deadline_ms() -> u64 {
    60_000
}

fn default_store_readers() -> usize {
    hotline_durable::db::DEFAULT_READERS
}

fn default_store_schema() -> String {
    "hotline_node".into()
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("data/node")
}

impl NodeConfig {
    /// Where the node's store lives.
    pub fn store(&self) -> anyhow::Result<hotline_durable::Store> {
        hotline_durable::Store::from_config(
            self.store.as_deref(),
            &self.store_schema,
            self.data_dir.join("node.db"),
        )
        .map_err(anyhow::Error::msg)
    }

    /// Every address of the gateway, `gateway` first.
    pub fn gateway_addresses(&self) -> Vec<String> {
        std::iter::once(self.gateway.clone())
            .chain(self.gateways.iter().cloned())
            .collect()
    }

    /// Reads `path`, then applies the environment overrides `HOTLINE_LISTEN`,
    /// `HOTLINE_DATA_DIR` and `HOTLINE_GATEWAY`.
    pub fn load(path: &Path, env: &HashMap<String, String>) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let mut config = Self::parse(&text).with_context(|| format!("in {}", path.display()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        config.tls = config.tls.map(|t| t.relative_to(base));
        // Like the certificates: a relative data_dir is the file's
        // neighbour, wherever the process is started from.
        config.data_dir = hotline_durable::db::data_dir_beside(base, &config.data_dir, "node.db")
            .map_err(anyhow::Error::msg)
            .with_context(|| format!("in {}", path.display()))?;
        config.apply_env(env)?;
        config.catalogue()?;
        config.store()?;
        Ok(config)
    }

    pub fn parse(text: &str) -> anyhow::Result<Self> {
        Ok(toml::from_str(text)?)
    }

    pub fn apply_env(&mut self, env: &HashMap<String, String>) -> anyhow::Result<()> {
        if let Some(v) = env.get("HOTLINE_LISTEN") {
            self.listen = v
                .parse()
                .with_context(|| format!("HOTLINE_LISTEN={v:?} is not an address"))?;
        }
        if let Some(v) = env.get("HOTLINE_DATA_DIR") {
            self.data_dir = PathBuf::from(v);
        }
        if let Some(v) = env.get("HOTLINE_STORE") {
            self.store = Some(v.clone());
        }
        if let Some(v) = env.get("HOTLINE_GATEWAY") {
            // One address, or several separated by commas.
            let mut all = v.split(',').map(|a| a.trim().to_owned());
            self.gateway = all.next().unwrap_or_default();
            self.gateways = all.filter(|a| !a.is_empty()).collect();
        }
        Ok(())
    }

    /// The catalogue; this node's city must be a member.
    pub fn catalogue(&self) -> anyhow::Result<Catalogue> {
        let catalogue = CatalogueConfig {
            cities: self.cities.clone(),
            categories: self.categories.clone(),
        }
        .build()
        .map_err(anyhow::Error::msg)?;
        if catalogue.city(&self.city).is_none() {
            bail!("city: {:?} is not a member city", self.city);
        }
        if self.gateway.trim().is_empty() {
            bail!("gateway: is required");
        }
        for (i, a) in self.gateways.iter().enumerate() {
            if a.trim().is_empty() {
                bail!("gateways[{i}]: is empty");
            }
        }
        if self.ring_timeout_ms == 0 || self.transfer_deadline_ms < self.ring_timeout_ms {
            bail!("ring_timeout_ms must be positive and at most transfer_deadline_ms");
        }
        self.limits.check()?;
        Ok(catalogue)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_limits_are_named_and_the_example_gives_the_defaults() {
        let bad = NodeLimits {
            per_caller_burst: 0.5,
            ..NodeLimits::default()
        };
        let e = bad.check().unwrap_err().to_string();
        assert!(e.starts_with("limits.per_caller_burst"), "{e}");
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/city-node.example.toml");
        let c = NodeConfig::load(&path, &HashMap::new()).unwrap();
        assert_eq!(c.limits, NodeLimits::default());
    }

    #[test]
    fn the_provincial_file_lists_both_replicas() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/province/city-node.toml");
        let c = NodeConfig::load(&path, &HashMap::new()).unwrap();
        assert_eq!(c.gateway_addresses().len(), 2);
        assert!(matches!(
            c.store().unwrap(),
            hotline_durable::Store::Sqlite(_)
        ));
        let env = HashMap::from([(
            "HOTLINE_STORE".to_owned(),
            "postgres://hotline@db/hotline".to_owned(),
        )]);
        let c = NodeConfig::load(&path, &env).unwrap();
        assert!(matches!(
            c.store().unwrap(),
            hotline_durable::Store::Postgres { ref schema, .. } if schema == "hotline_node"
        ));
    }

    #[test]
    fn the_example_file_loads_and_the_environment_overrides_it() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/city-node.example.toml");
        let env = HashMap::from([("HOTLINE_GATEWAY".to_owned(), "127.0.0.1:1".to_owned())]);
        let c = NodeConfig::load(&path, &env).unwrap();
        assert_eq!(c.city, "luzhou");
        // Relative to the file, like the certificates, not to where the
        // process was started.
        assert_eq!(c.data_dir, path.parent().unwrap().join("data/luzhou"));
        assert_eq!(
            c.tls.as_ref().unwrap().ca,
            path.parent().unwrap().join("certs/ca.pem")
        );
        assert_eq!(c.gateway, "127.0.0.1:1");
        assert_eq!(c.gateway_addresses(), ["127.0.0.1:1"]);
        // The replicas of a provincial deployment, in the file or the
        // environment: tried in turn.
        let env = HashMap::from([(
            "HOTLINE_GATEWAY".to_owned(),
            "10.0.0.1:7400, 10.0.0.2:7400".to_owned(),
        )]);
        let c = NodeConfig::load(&path, &env).unwrap();
        assert_eq!(c.gateway_addresses(), ["10.0.0.1:7400", "10.0.0.2:7400"]);
        let c = NodeConfig::parse(
            "city = \"luzhou\"\ngateway = \"a:1\"\ngateways = [\"b:1\", \"c:1\"]",
        )
        .unwrap();
        assert_eq!(c.gateway_addresses(), ["a:1", "b:1", "c:1"]);
        let c =
            NodeConfig::parse("city = \"luzhou\"\ngateway = \"a:1\"\ngateways = [\" \"]").unwrap();
        assert!(
            c.catalogue()
                .unwrap_err()
                .to_string()
                .contains("gateways[0]")
        );
    }

    #[test]
    fn an_unknown_city_or_key_is_refused() {
        let c = NodeConfig::parse("city = \"chengdu\"\ngateway = \"x:1\"").unwrap();
        assert!(c.catalogue().unwrap_err().to_string().contains("chengdu"));
        assert!(NodeConfig::parse("city = \"luzhou\"\ngateway = \"x:1\"\nport = 1").is_err());
    }
}
