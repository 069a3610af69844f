//! The client's side: a tonic channel whose connector dials TCP (Nagle off)
//! and speaks TLS itself, presenting this process's certificate and
//! checking that the server's chains to the CA, is not revoked, and names
//! the identity the caller expects — whatever address it dialled.
//!
//! A client made from files ([`ClientTls::from_files`]) reads them again
//! when they change (before each new connection, and every two seconds
//! while it has connections open): a rotated certificate is presented, a
//! server whose certificate the new CRL names is refused from the next
//! connection on, and the connections already open to it are cut, as the
//! servers cut theirs (`crate::watch`), without a restart.

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
use crate::files::{TlsFiles, client_config_and_verifier};
use crate::watch::{Cuttable, OpenConnections, Watched};

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
        let (config, _) = client_config_and_verifier(files)?;
        Ok(ClientTls::Files(Arc::new(ClientFiles {
            files: files.clone(),
            current: std::sync::Mutex::new((config, stamp)),
            open: OpenConnections::default(),
            watching: std::sync::atomic::AtomicBool::new(false),
        })))
    }
}

/// How often a client with connections open checks its files.
const RELOAD_EVERY: Duration = Duration::from_secs(2);

/// A client configuration, the files it was read from, and the servers of
/// the connections made with it.
pub struct ClientFiles {
    files: TlsFiles,
    current: std::sync::Mutex<(Arc<ClientConfig>, Vec<Option<std::time::SystemTime>>)>,
    open: OpenConnections,
    /// Whether a task checks the files for the open connections.
    watching: std::sync::atomic::AtomicBool,
}

impl ClientFiles {
    /// The configuration of the files as they are now: read again if they
    /// changed (and the open connections' servers checked against it); a
    /// broken new set is logged and the previous one kept.
    pub fn config(&self) -> Arc<ClientConfig> {
        let stamp = self.files.stamp();
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        if current.1 != stamp {
            match client_config_and_verifier(&self.files) {
                Ok((config, verifier)) => {
                    tracing::info!("client TLS files changed: reloaded");
                    *current = (config, stamp);
                    self.open.recheck(&|watched, end, intermediates| {
                        let Some(name) = &watched.server_name else {
                            return Ok(());
                        };
                        verifier
                            .verify_server_cert(
                                end,
                                intermediates,
                                name,
                                &[],
                                rustls_pki_types::UnixTime::now(),
                            )
                            .map(|_| ())
                    });
                }
                Err(e) => {
                    tracing::error!(error = %e, "client TLS files changed but cannot be used; keeping the previous ones");
                    current.1 = stamp;
                }
            }
        }
        current.0.clone()
    }

    /// Keeps `stream`'s server under watch, and makes sure a task checks
    /// the files while this client lives.
    fn watch(
        self: &Arc<Self>,
        stream: tokio_rustls::client::TlsStream<TcpStream>,
        server: Identity,
        name: ServerName<'static>,
    ) -> Cuttable<tokio_rustls::client::TlsStream<TcpStream>> {
        let chain: Vec<rustls_pki_types::CertificateDer<'static>> = stream
            .get_ref()
            .1
            .peer_certificates()
            .map(|certs| certs.iter().map(|c| c.clone().into_owned()).collect())
            .unwrap_or_default();
        let watched = Arc::new(Watched::new(chain, server, Some(name)));
        self.open.add(&watched);
        if !self
            .watching
            .swap(true, std::sync::atomic::Ordering::AcqRel)
        {
            let files = Arc::downgrade(self);
            tokio::spawn(async move {
                let mut every = tokio::time::interval(RELOAD_EVERY);
                every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
                loop {
                    every.tick().await;
                    // Until the client is dropped.
                    let Some(files) = files.upgrade() else {
                        return;
                    };
                    files.config();
                }
            });
        }
        Cuttable {
            inner: stream,
            watched: Some(watched),
        }
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
            let server = server.clone();
            Ok(
                endpoint.connect_with_connector_lazy(tower::service_fn(move |uri: Uri| {
                    // The files as they are now, for each new connection.
                    let config = match (&files, &fixed) {
                        (Some(f), _) => Some(f.config()),
                        (None, fixed) => fixed.clone(),
                    };
                    let name = name.clone();
                    let files = files.clone();
                    let server = server.clone();
                    async move {
                        let config = config.ok_or_else(|| {
                            std::io::Error::other("no TLS configuration for this channel")
                        })?;
                        let connector = TlsConnector::from(config);
                        let host = uri.host().unwrap_or("127.0.0.1").trim_matches(['[', ']']);
                        let port = uri.port_u16().unwrap_or(443);
                        let tcp = TcpStream::connect((host, port)).await?;
                        tcp.set_nodelay(true)?;
                        let tls = connector.connect(name.clone(), tcp).await?;
                        let stream = match &files {
                            Some(files) => files.watch(tls, server, name),
                            None => Cuttable {
                                inner: tls,
                                watched: None,
                            },
                        };
                        Ok::<_, std::io::Error>(TokioIo::new(stream))
                    }
                })),
            )
        }
    }
}
