//! The client's side: a tonic channel whose connector dials TCP (Nagle off)
//! and speaks TLS itself, presenting this process's certificate and
//! checking that the server's chains to the CA, is not revoked, and names
//! the identity the caller expects — whatever address it dialled.

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
    Mutual(Arc<ClientConfig>),
    /// Plaintext: only toward a plaintext server on loopback.
    Insecure,
}

impl ClientTls {
    pub fn from_files(files: &TlsFiles) -> Result<Self, TlsError> {
        Ok(ClientTls::Mutual(client_config(files)?))
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
        ClientTls::Mutual(config) => {
            let connector = TlsConnector::from(config.clone());
            let name = ServerName::try_from(server.dns_name())
                .map_err(|e| TlsError::Invalid(format!("server name: {e}")))?;
            Ok(
                endpoint.connect_with_connector_lazy(tower::service_fn(move |uri: Uri| {
                    let connector = connector.clone();
                    let name = name.clone();
                    async move {
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
