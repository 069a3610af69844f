//! The server's side: accepts connections, completes the TLS handshake
//! (client certificate required, chained to the CA, not revoked), reads the
//! caller's identity from its certificate, and hands tonic a connection
//! whose [`Peer`] every request carries in its extensions. A connection
//! whose certificate names no identity of the federation is dropped before
//! any request is read.
//!
//! The certificate, key, CA bundle and CRL are read again when their files
//! change (checked every two seconds), so a rotation or a revocation needs
//! no restart. On each change the peer of every connection already open is
//! checked again against the new CA and CRL, and a connection whose peer no
//! longer passes is cut: a revoked peer keeps nothing it had opened.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use hotline_proto::identity::Identity;
use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;

use crate::TlsError;
use crate::files::{TlsFiles, identity_of, server_config, server_config_and_verifier};
use crate::watch::{OpenConnections, Watched};

/// Longest a client may take to complete its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the files are checked for a change.
const RELOAD_EVERY: Duration = Duration::from_secs(2);

/// Who is at the other end of a connection.
#[derive(Clone, Debug)]
pub struct Peer {
    /// From the verified client certificate; `None` on a plaintext
    /// (`insecure`) server, where nobody is authenticated.
    pub identity: Option<Identity>,
    pub addr: Option<SocketAddr>,
}

impl Peer {
    /// The peer of a request on a server of this crate.
    pub fn of<T>(request: &tonic::Request<T>) -> Option<&Peer> {
        request.extensions().get::<Peer>()
    }

    /// Who made a request: `Ok(Some(identity))` from its certificate,
    /// `Ok(None)` on an insecure server (nobody is authenticated there), and
    /// PERMISSION_DENIED when the request came by no connection of this
    /// crate's, so nobody vouches for it. Every check of a caller starts
    /// here.
    pub fn caller<T>(request: &tonic::Request<T>) -> Result<Option<&Identity>, tonic::Status> {
        match Self::of(request) {
            Some(peer) => Ok(peer.identity.as_ref()),
            None => Err(tonic::Status::permission_denied(
                "the caller's identity is unknown",
            )),
        }
    }
}

/// A connection accepted by [`incoming`], holding its place among the
/// listener's connections until it is dropped.
pub struct Conn {
    stream: Stream,
    _slot: tokio::sync::OwnedSemaphorePermit,
    /// Its peer's certificates, checked again when the CRL or CA changes.
    watched: Option<Arc<Watched>>,
}

impl Conn {
    /// An error once the connection has been cut (its peer revoked); and
    /// the task polling it is woken when that happens.
    fn check_cut(&self, cx: &Context<'_>) -> io::Result<()> {
        crate::watch::check_cut(self.watched.as_deref(), cx)
    }
}

enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>, Peer),
}

impl Connected for Conn {
    type ConnectInfo = Peer;

    fn connect_info(&self) -> Peer {
        match &self.stream {
            Stream::Plain(s) => Peer {
                identity: None,
                addr: s.peer_addr().ok(),
            },
            Stream::Tls(_, peer) => peer.clone(),
        }
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.check_cut(cx)?;
        match &mut self.get_mut().stream {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s, _) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.check_cut(cx)?;
        match &mut self.get_mut().stream {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s, _) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().stream {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s, _) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().stream {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s, _) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.check_cut(cx)?;
        match &mut self.get_mut().stream {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s, _) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.stream {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(s, _) => s.is_write_vectored(),
        }
    }
}

/// What a server serves with: mutual TLS from files, or plaintext.
#[derive(Clone)]
pub enum ServerTls {
    Mutual(Arc<Reloading>),
    /// No authentication: only for a server bound to loopback, by the
    /// operator's explicit choice (`insecure = true`).
    Insecure,
}

/// A server configuration read from its files, and read again when they
/// change.
pub struct Reloading {
    files: TlsFiles,
    current: RwLock<(Arc<ServerConfig>, Vec<Option<std::time::SystemTime>>)>,
}

/// The client verifier of a configuration just read.
pub type Verifier = Arc<dyn rustls::server::danger::ClientCertVerifier>;

impl Reloading {
    pub fn load(files: TlsFiles) -> Result<Arc<Self>, TlsError> {
        let stamp = files.stamp();
        let config = server_config(&files)?;
        Ok(Arc::new(Self {
            files,
            current: RwLock::new((config, stamp)),
        }))
    }

    fn config(&self) -> Arc<ServerConfig> {
        match self.current.read() {
            Ok(c) => c.0.clone(),
            Err(poisoned) => poisoned.into_inner().0.clone(),
        }
    }

    /// Reads the files again if they changed; a broken new set is logged
    /// and the old one kept.
    pub fn reload_if_changed(&self) -> Option<Verifier> {
        let stamp = self.files.stamp();
        let same = match self.current.read() {
            Ok(c) => c.1 == stamp,
            Err(_) => false,
        };
        if same {
            return None;
        }
        match server_config_and_verifier(&self.files) {
            Ok((config, verifier)) => {
                if let Ok(mut c) = self.current.write() {
                    *c = (config, stamp);
                }
                tracing::info!("TLS certificates, CA bundle or CRL changed: reloaded");
                Some(verifier)
            }
            Err(e) => {
                tracing::error!(error = %e, "TLS files changed but cannot be used; keeping the previous ones");
                None
            }
        }
    }
}

/// Handshakes a listener runs at once; past them a new connection ends the
/// oldest handshake still under way (each may take [`HANDSHAKE_TIMEOUT`],
/// and a client that sends nothing would otherwise hold its place for all
/// of it).
pub const MAX_HANDSHAKES: usize = 256;
/// Descriptors kept back from a listener's connections for everything else
/// the process opens: the dashboard's connections (at most 256), its
/// database, its own connections to peers, files.
const FD_RESERVE: u64 = 512;

/// The most connections a listener holds: the process's descriptor limit
/// less [`FD_RESERVE`], within 64..=65,536.
pub fn max_connections() -> usize {
    let soft = rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .unwrap_or(65_536 + FD_RESERVE);
    soft.saturating_sub(FD_RESERVE).clamp(64, 65_536) as usize
}

/// Raises the process's descriptor soft limit to its hard limit (1,024 is a
/// common default, and a few hundred idle connections would take every
/// descriptor), and logs it: returns the limits before and after.
pub fn raise_fd_limit() -> (Option<u64>, Option<u64>) {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let before = getrlimit(Resource::Nofile);
    if before.current != before.maximum {
        let raised = rustix::process::Rlimit {
            current: before.maximum,
            maximum: before.maximum,
        };
        if let Err(e) = setrlimit(Resource::Nofile, raised) {
            tracing::warn!(error = %e, "cannot raise the file descriptor limit");
        }
    }
    let after = getrlimit(Resource::Nofile).current;
    tracing::debug!(
        before = ?before.current,
        ?after,
        connections = max_connections(),
        "file descriptor limit"
    );
    (before.current, after)
}

/// The connections of `listener`, Nagle's algorithm off, through `tls`.
/// Handshakes run in their own tasks: a slow client holds up nobody. At
/// most [`MAX_HANDSHAKES`] at once (the oldest gives way to a new one) and
/// [`max_connections`] in all (a connection past them is closed at once),
/// so that silent connections cannot take the descriptors the process needs
/// for its own work, nor keep a real client from its handshake.
pub fn incoming(listener: TcpListener, tls: ServerTls) -> ReceiverStream<io::Result<Conn>> {
    let (tx, rx) = mpsc::channel(256);
    let slots = Arc::new(tokio::sync::Semaphore::new(max_connections()));
    let mut handshakes: std::collections::VecDeque<tokio::task::AbortHandle> =
        std::collections::VecDeque::new();
    // The open connections' peers, to check again when the files change.
    let open: Arc<OpenConnections> = Arc::default();
    tokio::spawn(async move {
        let mut reload = tokio::time::interval(RELOAD_EVERY);
        reload.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut refused: u64 = 0;
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                _ = reload.tick() => {
                    if let ServerTls::Mutual(r) = &tls
                        && let Some(verifier) = r.reload_if_changed()
                    {
                        open.recheck(&|_, end, intermediates| {
                            verifier
                                .verify_client_cert(
                                    end,
                                    intermediates,
                                    rustls_pki_types::UnixTime::now(),
                                )
                                .map(|_| ())
                        });
                    }
                    if refused > 0 {
                        tracing::warn!(refused, "connections closed early: too many open, or handshakes given way to newer ones");
                        refused = 0;
                    }
                    continue;
                }
                _ = tx.closed() => return,
            };
            let (stream, addr) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: pause, go on.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                refused += 1;
                drop(stream);
                continue;
            };
            let _ = stream.set_nodelay(true);
            match &tls {
                ServerTls::Insecure => {
                    let conn = Conn {
                        stream: Stream::Plain(stream),
                        _slot: slot,
                        watched: None,
                    };
                    if tx.send(Ok(conn)).await.is_err() {
                        return;
                    }
                }
                ServerTls::Mutual(r) => {
                    if handshakes.len() >= MAX_HANDSHAKES {
                        handshakes.retain(|h| !h.is_finished());
                    }
                    if handshakes.len() >= MAX_HANDSHAKES
                        && let Some(oldest) = handshakes.pop_front()
                    {
                        // Its connection and its place go with it.
                        oldest.abort();
                        refused += 1;
                    }
                    let acceptor = TlsAcceptor::from(r.config());
                    let tx = tx.clone();
                    let open = open.clone();
                    let task = tokio::spawn(async move {
                        if let Some((stream, watched)) = handshake(acceptor, stream, addr).await {
                            let watched = Arc::new(watched);
                            open.add(&watched);
                            let conn = Conn {
                                stream,
                                _slot: slot,
                                watched: Some(watched),
                            };
                            let _ = tx.send(Ok(conn)).await;
                        }
                    });
                    handshakes.push_back(task.abort_handle());
                }
            }
        }
    });
    ReceiverStream::new(rx)
}

async fn handshake(
    acceptor: TlsAcceptor,
    stream: TcpStream,
    addr: SocketAddr,
) -> Option<(Stream, Watched)> {
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            tracing::warn!(peer = %addr, error = %e, "TLS handshake refused");
            return None;
        }
        Err(_) => {
            tracing::warn!(peer = %addr, "TLS handshake timed out");
            return None;
        }
    };
    let chain: Vec<rustls_pki_types::CertificateDer<'static>> = tls
        .get_ref()
        .1
        .peer_certificates()
        .map(|certs| certs.iter().map(|c| c.clone().into_owned()).collect())
        .unwrap_or_default();
    let identity = chain.first().and_then(identity_of);
    let Some(identity) = identity else {
        tracing::warn!(peer = %addr, "client certificate names no identity of the federation");
        return None;
    };
    tracing::debug!(peer = %addr, %identity, "TLS connection");
    let watched = Watched::new(chain, identity.clone(), None);
    Some((
        Stream::Tls(
            Box::new(tls),
            Peer {
                identity: Some(identity),
                addr: Some(addr),
            },
        ),
        watched,
    ))
}
