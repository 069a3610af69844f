//! Mutual TLS for every link of the federation.
//!
//! Every process holds a certificate that names it with a URI SAN
//! (`spiffe://hotline.sichuan/city/luzhou`, `.../gateway`, `.../province`,
//! `.../department/housing-fund`; see `hotline_proto::identity`). Servers
//! demand a client certificate chained to the federation's CA and not
//! revoked, and put the caller's [`server::Peer`] identity into every
//! request; clients check that the server names the identity they meant to
//! reach. Plaintext exists only as an explicit choice for loopback.
//!
//! - [`dev_ca`]: a development CA and certificates (`gateway certs init`).
//! - [`files`]: the `[tls]` configuration table and the rustls
//!   configurations built from it.
//! - [`server`]: the acceptor, the connection carrying the peer's identity,
//!   reloading on change.
//! - [`client`]: channels that speak TLS to a named server.

use std::path::Path;

pub mod client;
pub mod dev_ca;
pub mod files;
pub mod rate;
pub mod server;
mod watch;

pub use client::{ClientTls, channel};
pub use files::TlsFiles;
pub use server::{Peer, ServerTls};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(String),
    #[error("certificate generation: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("TLS: {0}")]
    Rustls(#[from] rustls::Error),
}

impl TlsError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        TlsError::Io {
            path: path.display().to_string(),
            source,
        }
    }
}

/// Checks the transport a process's configuration asks for, before it
/// starts: mutual TLS from `tls` with a certificate naming `holder` (see
/// [`TlsFiles::check`]), or plaintext when `insecure`, which only a
/// loopback `listen` address may have.
pub fn check(
    tls: Option<&TlsFiles>,
    insecure: bool,
    listen: std::net::SocketAddr,
    holder: &hotline_proto::identity::Identity,
) -> Result<(), TlsError> {
    match (tls, insecure) {
        (Some(files), false) => files.check(holder),
        _ => transport(tls, insecure, listen).map(|_| ()),
    }
}

/// The transport a process's configuration asks for, checked: mutual TLS
/// from `tls`, or plaintext when `insecure` — which only a loopback
/// `listen` address may have.
pub fn transport(
    tls: Option<&TlsFiles>,
    insecure: bool,
    listen: std::net::SocketAddr,
) -> Result<(ServerTls, ClientTls), TlsError> {
    match (tls, insecure) {
        (Some(_), true) => Err(TlsError::Invalid(
            "tls and insecure: give one of them, not both".into(),
        )),
        (None, false) => Err(TlsError::Invalid(
            "tls: required ([tls] with ca, cert and key; `gateway certs init` makes a development set), \
             or insecure = true to run plaintext on loopback"
                .into(),
        )),
        (None, true) if !listen.ip().is_loopback() => Err(TlsError::Invalid(format!(
            "insecure: plaintext is allowed on a loopback address only, not {listen}"
        ))),
        (None, true) => Ok((ServerTls::Insecure, ClientTls::Insecure)),
        (Some(files), false) => Ok((
            ServerTls::Mutual(server::Reloading::load(files.clone())?),
            ClientTls::from_files(files)?,
        )),
    }
}

/// An interceptor that lets through only callers whose identity `rule`
/// accepts (`PERMISSION_DENIED` otherwise, before the handler runs). On an
/// insecure server nobody is authenticated and everyone passes.
pub fn allow(
    rule: impl Fn(&hotline_proto::identity::Identity) -> bool + Clone + Send + Sync + 'static,
) -> impl tonic::service::Interceptor + Clone + Send + Sync + 'static {
    move |request: tonic::Request<()>| match Peer::caller(&request)? {
        Some(id) if !rule(id) => Err(tonic::Status::permission_denied(format!(
            "{id} may not call this service"
        ))),
        _ => Ok(request),
    }
}

/// The city a caller's certificate names, for handlers that must check it
/// against a request: `Ok(None)` on an insecure server (no identities),
/// `PERMISSION_DENIED` for an identity that is not a city.
pub fn caller_city<T>(request: &tonic::Request<T>) -> Result<Option<String>, tonic::Status> {
    match Peer::caller(request)? {
        None => Ok(None),
        Some(hotline_proto::identity::Identity::City(c)) => Ok(Some(c.clone())),
        Some(id) => Err(tonic::Status::permission_denied(format!(
            "{id} is not a city"
        ))),
    }
}
