//! The certificates of a simulated federation: a development CA made for
//! the run, a certificate per holder, and channels that present them — so
//! the demo, the spawned processes and the benchmarks run over mutual TLS
//! like a deployment.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hotline_proto::Catalogue;
use hotline_proto::identity::Identity;
use hotline_tls::{ClientTls, TlsFiles};
use tonic::transport::Channel;

#[derive(Debug, Clone)]
pub struct Pki {
    pub dir: PathBuf,
}

impl Pki {
    /// A new CA in `dir`, with certificates for the gateway, the province
    /// and every city and department of `catalogue`.
    pub fn init(dir: &Path, catalogue: &Catalogue) -> anyhow::Result<Self> {
        let holders = hotline_tls::dev_ca::holders(
            catalogue.city_ids(),
            catalogue.categories.iter().map(|c| c.id.as_str()),
        );
        hotline_tls::dev_ca::init(dir, &holders)?;
        Ok(Self {
            dir: dir.to_owned(),
        })
    }

    pub fn files(&self, holder: &Identity) -> TlsFiles {
        TlsFiles::in_dir(&self.dir, holder)
    }

    /// The `[tls]` table of `holder`'s configuration file.
    pub fn toml(&self, holder: &Identity) -> String {
        let f = self.files(holder);
        let crl = f
            .crl
            .map(|c| format!("crl = \"{}\"\n", c.display()))
            .unwrap_or_default();
        format!(
            "[tls]\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n{crl}",
            f.ca.display(),
            f.cert.display(),
            f.key.display()
        )
    }

    /// A lazily connected channel to `server` at `addr`, presenting `who`'s
    /// certificate.
    pub fn channel(
        &self,
        addr: SocketAddr,
        who: &Identity,
        server: &Identity,
    ) -> anyhow::Result<Channel> {
        let tls = ClientTls::from_files(&self.files(who))?;
        Ok(hotline_tls::channel(
            &addr.to_string(),
            &tls,
            server,
            Some(Duration::from_secs(10)),
        )?)
    }

    /// A city's own platform at its node.
    pub fn node_channel(&self, addr: SocketAddr, city: &str) -> anyhow::Result<Channel> {
        let id = Identity::City(city.to_owned());
        self.channel(addr, &id, &id)
    }

    /// Issues certificates for `operators`' consoles in `city`, signed by
    /// this run's CA (only for a federation this run made: one whose
    /// certificates were given is not written to).
    pub fn issue_consoles(&self, city: &str, operators: &[String]) -> anyhow::Result<()> {
        for operator in operators {
            let holder = Identity::Console {
                city: city.to_owned(),
                operator: operator.clone(),
            };
            hotline_tls::dev_ca::issue(&self.dir, &holder, hotline_tls::dev_ca::DEFAULT_VALIDITY)?;
        }
        Ok(())
    }

    /// Operator `operator`'s console at `city`'s node: with its own
    /// certificate if there is one (it then acts as that operator only),
    /// else with the city's, its platform acting for the operator.
    pub fn console_channel(
        &self,
        addr: SocketAddr,
        city: &str,
        operator: &str,
    ) -> anyhow::Result<Channel> {
        let console = Identity::Console {
            city: city.to_owned(),
            operator: operator.to_owned(),
        };
        let node = Identity::City(city.to_owned());
        if self.files(&console).cert.exists() {
            self.channel(addr, &console, &node)
        } else {
            self.channel(addr, &node, &node)
        }
    }

    /// The provincial centre at the gateway.
    pub fn province_channel(&self, gateway: SocketAddr) -> anyhow::Result<Channel> {
        self.channel(gateway, &Identity::Province, &Identity::Gateway)
    }
}
