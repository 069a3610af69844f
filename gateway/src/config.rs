//! The gateway's configuration file (TOML). Every key is documented in
//! `config/gateway.example.toml`, which the tests load.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use hotline_proto::Catalogue;
use hotline_proto::catalogue::{CatalogueConfig, Category, City};
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    /// Where the gRPC services listen.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Where the ledger (`gateway.db`) lives, when `store` is SQLite; relative
    /// to the configuration file's directory.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// The ledger's store: `"sqlite"` (the default: `data_dir/gateway.db`)
    /// or a PostgreSQL connection string (`"postgres://user@host/db"`),
    /// which several replicas of the gateway may share.
    #[serde(default)]
    pub store: Option<String>,
    /// The PostgreSQL schema of the ledger (made if missing).
    #[serde(default = "default_store_schema")]
    pub store_schema: String,
    /// Reader connections of the ledger at most (reads past them wait up to
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
    /// Each member city's node address.
    pub nodes: BTreeMap<String, String>,
    /// How long an answered transfer may stay warm or three-way before the
    /// gateway completes it, in milliseconds.
    #[serde(default = "default_completion_ms")]
    pub transfer_completion_ms: u64,
    /// The categories each provincial department oversees, by the name its
    /// certificate gives it (`spiffe://hotline.sichuan/department/NAME`). A
    /// department not listed oversees the category of its own name.
    #[serde(default)]
    pub departments: BTreeMap<String, Vec<String>>,
    /// Limits per caller and per connection.
    #[serde(default)]
    pub limits: crate::limits::Limits,
    /// How long each stage of a ticket may take, in working days on the
    /// calendar.
    #[serde(default)]
    pub deadlines: crate::supervision::DeadlineConfig,
    /// The merging of duplicate reports and the escalation rules.
    #[serde(default)]
    pub supervision: crate::supervision::RuleConfig,
    /// Where the dashboard and Prometheus `/metrics` are served over HTTP
    /// (none when absent).
    #[serde(default)]
    pub http_listen: Option<SocketAddr>,
    /// Host names the dashboard and `/metrics` answer to besides IP
    /// addresses and `localhost` (the name a proxy or Prometheus uses).
    /// Any other `Host` is refused (421), so that a web page the duty
    /// officer opens cannot reach the dashboard by DNS rebinding.
    #[serde(default)]
    pub http_hosts: Vec<String>,
    /// How long the flow log keeps events for `WatchFlow` to resume from.
    #[serde(default = "default_watch_retention_hours")]
    pub watch_retention_hours: u32,
    /// Member cities; the four cities of southern Sichuan when absent.
    #[serde(default)]
    pub cities: Option<Vec<City>>,
    /// Categories; the 17 of the domain (14 hot, 3 emergency) when absent.
    #[serde(default)]
    pub categories: Option<Vec<Category>>,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 7400))
}

fn default_watch_retention_hours() -> u32 {
    7 * 24
}

fn default_completion_ms() -> u64 {
    30 * 60 * 1000
}

fn default_store_readers() -> usize {
    hotline_durable::db::DEFAULT_READERS
}

fn default_store_schema() -> String {
    "hotline".into()
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("data/gateway")
}

impl GatewayConfig {
    /// Reads `path`, then applies the environment overrides
    /// `HOTLINE_LISTEN` and `HOTLINE_DATA_DIR`.
    pub fn load(path: &Path, env: &HashMap<String, String>) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let mut config = Self::parse(&text).with_context(|| format!("in {}", path.display()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        config.tls = config.tls.map(|t| t.relative_to(base));
        // Like the certificates: a relative data_dir is the file's
        // neighbour, wherever the process is started from.
        config.data_dir =
            hotline_durable::db::data_dir_beside(base, &config.data_dir, "gateway.db")
                .map_err(anyhow::Error::msg)
                .with_context(|| format!("in {}", path.display()))?;
        for f in &mut config.deadlines.calendars {
            *f = base.join(&*f);
        }
        config.apply_env(env)?;
        config.catalogue()?;
        config.limits.check().map_err(anyhow::Error::msg)?;
        config.policy()?;
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
        self.store()?;
        Ok(())
    }

    /// Where the ledger lives.
    pub fn store(&self) -> anyhow::Result<hotline_durable::Store> {
        hotline_durable::Store::from_config(
            self.store.as_deref(),
            &self.store_schema,
            self.data_dir.join("gateway.db"),
        )
        .map_err(anyhow::Error::msg)
    }

    /// The catalogue, checked against the node list: every member city needs
    /// a node, and every node a member city.
    pub fn catalogue(&self) -> anyhow::Result<Catalogue> {
        let catalogue = CatalogueConfig {
            cities: self.cities.clone(),
            categories: self.categories.clone(),
        }
        .build()
        .map_err(anyhow::Error::msg)?;
        for city in self.nodes.keys() {
            if catalogue.city(city).is_none() {
                bail!("nodes.{city}: not a member city");
            }
        }
        for city in catalogue.city_ids() {
            if !self.nodes.contains_key(city) {
                bail!("nodes: no address for member city {city:?}");
            }
        }
        for (department, categories) in &self.departments {
            for category in categories {
                if catalogue.category(category).is_none() {
                    bail!("departments.{department}: unknown category {category:?}");
                }
            }
        }
        Ok(catalogue)
    }

    /// The deadlines, calendar and rules, checked against the catalogue.
    pub fn policy(&self) -> anyhow::Result<crate::supervision::Policy> {
        let catalogue = self.catalogue()?;
        self.supervision.check()?;
        for category in self.deadlines.categories.keys() {
            if catalogue.category(category).is_none() {
                bail!("deadlines.categories.{category}: unknown category");
            }
        }
        for kind in self.deadlines.resolve_working_days.keys() {
            if !["consultation", "help", "complaint", "report", "suggestion"]
                .contains(&kind.as_str())
            {
                bail!(
                    "deadlines.resolve_working_days.{kind}: not a kind of ticket (consultation, help, complaint, report, suggestion)"
                );
            }
        }
        let mut rules = self.supervision.clone();
        rules.emergency_categories.retain(|c| {
            let known = catalogue.category(c).is_some();
            if !known {
                tracing::warn!(category = %c, "supervision.emergency_categories: not a category of the catalogue; ignored");
            }
            known
        });
        let calendar = crate::calendar::Calendar::load(&self.deadlines.calendars)?;
        Ok(crate::supervision::Policy::new(
            self.deadlines.clone(),
            rules,
            calendar,
            &self.departments,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_file_loads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/gateway.example.toml");
        let c = GatewayConfig::load(&path, &HashMap::new()).unwrap();
        assert_eq!(c.nodes.len(), 4);
        assert_eq!(c.catalogue().unwrap().categories.len(), 17);
    }

    #[test]
    fn the_provincial_files_load_and_the_store_is_checked() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/province");
        let c = GatewayConfig::load(&dir.join("gateway.toml"), &HashMap::new()).unwrap();
        assert!(matches!(
            c.store().unwrap(),
            hotline_durable::Store::Postgres { ref schema, .. } if schema == "hotline"
        ));
        // The password may come from the environment instead of the file.
        let env = HashMap::from([(
            "HOTLINE_STORE".to_owned(),
            "postgres://hotline:secret@db:5432/hotline".to_owned(),
        )]);
        let c = GatewayConfig::load(&dir.join("gateway.toml"), &env).unwrap();
        assert!(!c.store().unwrap().describe().contains("secret"));
        // Errors name the field.
        let mut bad = c.clone();
        bad.store_schema = "Hotline; DROP".into();
        assert!(
            bad.store()
                .unwrap_err()
                .to_string()
                .contains("store_schema")
        );
        bad.store = Some("mysql://x".into());
        assert!(bad.store().unwrap_err().to_string().starts_with("store:"));
        bad.store = None;
        assert!(matches!(
            bad.store().unwrap(),
            hotline_durable::Store::Sqlite(_)
        ));
        let node = std::fs::read_to_string(dir.join("city-node.toml")).unwrap();
        assert!(node.contains("gateways = ["));
    }

    #[test]
    fn environment_overrides_and_bad_keys() {
        let text = r#"
            [nodes]
            luzhou = "127.0.0.1:1"
            yibin = "127.0.0.1:2"
            zigong = "127.0.0.1:3"
            neijiang = "127.0.0.1:4"
        "#;
        let mut c = GatewayConfig::parse(text).unwrap();
        let env = HashMap::from([("HOTLINE_LISTEN".to_owned(), "127.0.0.1:9".to_owned())]);
        c.apply_env(&env).unwrap();
        assert_eq!(c.listen.port(), 9);
        let bad = HashMap::from([("HOTLINE_LISTEN".to_owned(), "nine".to_owned())]);
        assert!(c.apply_env(&bad).is_err());
        assert!(GatewayConfig::parse(&format!("lisen = \"x\"\n{text}")).is_err());
        c.nodes.remove("yibin");
        assert!(c.catalogue().unwrap_err().to_string().contains("yibin"));
    }
}
