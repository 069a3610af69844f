//! The client's side: a tonic channel whose connector dials TCP (Nagle off)
//! and speaks TLS itself, presenting this process's certificate and
//! checking that the server's chains to the CA, is not revoked, and names
//! the identity the caller expects — whatever address it dialled.
//!
//! A client made from files ([`ClientTls::from_files`]) reads them again
//! when they change, before each new connection: a rotated certificate is
//! presented, and a server whose certificate the new CRL names is refused,
//! from the next connection on (a restarted node, say), without a restart.

use std::sync::Arc;
use std::time::Duration;

use hotline_proto::identity::Identity;
use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::TlsError;
use crate::files::{TlsFiles, client_config};

/// How a client reaches its servers.
#[derive(Clone)]
pub enum ClientTls {
    /// A fixed configuration.
    Mutual(Arc<ClientConfig>),
    /// A configuration read from files, and read again when they change.
    Files(Arc<ClientFiles>),
    /// Plaintext: only toward a plaintext server on loopback.
    Insecure,
}

impl ClientTls {
    pub fn from_files(files: &TlsFiles) -> Result<Self, TlsError> {
        let stamp = files.stamp();
        let config = client_config(files)?;
        Ok(ClientTls::Files(Arc::new(ClientFiles {
            files: files.clone(),
            current: std::sync::Mutex::new((config, stamp)),
        })))
    }
}

/// A client configuration and the files it was read from.
pub struct ClientFiles {
    files: TlsFiles,
    current: std::sync::Mutex<(Arc<ClientConfig>, Vec<Option<std::time::SystemTime>>)>,
}

impl ClientFiles {
    /// The configuration of the files as they are now: read again if they
    /// changed; a broken new set is logged and the previous one kept.
    pub fn config(&self) -> Arc<ClientConfig> {
        let stamp = self.files.stamp();
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        if current.1 != stamp {
            match client_config(&self.files) {
                Ok(config) => {
                    tracing::info!("client TLS files changed: reloaded");
                    *current = (config, stamp);
                }
                Err(e) => {
                    tracing::error!(error = %e, "client TLS files changed but cannot be used; keeping the previous ones");
                    current.1 = stamp;
                }
            }
        }
        current.0.clone()
    }
}

/// A lazily connected channel to `addr` (`host:port` or `http://host:port`)
/// where `server` must be listening; `timeout` bounds each call (none for
/// long-lived streams).
pub fn channel(
    addr: &str,
    tls: &ClientTls,
    server: &Identity,
    timeout: Option<Duration>,
) -> Result<Channel, TlsError> {
    let endpoint: Endpoint =
        hotline_proto::grpc::endpoint(addr, timeout).map_err(TlsError::Invalid)?;
    match tls {
        ClientTls::Insecure => Ok(endpoint.connect_lazy()),
        ClientTls::Mutual(_) | ClientTls::Files(_) => {
            let files = match tls {
                ClientTls::Files(f) => Some(f.clone()),
                _ => None,
            };
            let fixed = match tls {
                ClientTls::Mutual(config) => Some(config.clone()),
                _ => None,
            };
            let name = ServerName::try_from(server.dns_name())
                .map_err(|e| TlsError::Invalid(format!("server name: {e}")))?;
            Ok(
                endpoint.connect_with_connector_lazy(tower::service_fn(move |uri: Uri| {
                    // The files as they are now, for each new connection.
                    let config = match (&files, &fixed) {
                        (Some(f), _) => Some(f.config()),
                        (None, fixed) => fixed.clone(),
                    };
                    let name = name.clone();
                    async move {
                        let config = config.ok_or_else(|| {
                            std::io::Error::other("no TLS configuration for this channel")
                        })?;
                        let connector = TlsConnector::from(config);
                        let host = uri.host().unwrap_or("127.0.0.1").trim_matches(['[', ']']);
                        let port = uri.port_u16().unwrap_or(443);
                        let tcp = TcpStream::connect((host, port)).await?;
                        tcp.set_nodelay(true)?;
                        let tls = connector.connect(name, tcp).await?;
                        Ok::<_, std::io::Error>(TokioIo::new(tls))
                    }
                })),
            )
        }
    }
}
