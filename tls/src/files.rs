//! The files a process's TLS is made of, as its configuration names them,
//! and the rustls configurations built from them.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use hotline_proto::identity::Identity;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::ServerCertVerifier;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::ClientCertVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use serde::Deserialize;

use crate::TlsError;

/// The `[tls]` table of a process's configuration file.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// The CA bundle that peers' certificates must chain to (PEM).
    pub ca: PathBuf,
    /// This process's certificate chain (PEM): it names its holder.
    pub cert: PathBuf,
    /// This process's private key (PEM).
    pub key: PathBuf,
    /// Revoked certificates (PEM CRLs), if any.
    #[serde(default)]
    pub crl: Option<PathBuf>,
}

impl TlsFiles {
    /// Relative paths are taken from `base` (the configuration file's
    /// directory).
    pub fn relative_to(mut self, base: &Path) -> Self {
        for p in [&mut self.ca, &mut self.cert, &mut self.key] {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        if let Some(p) = self.crl.as_mut()
            && p.is_relative()
        {
            *p = base.join(&*p);
        }
        self
    }

    /// The files of holder `stem` in a directory made by
    /// [`crate::dev_ca::init`].
    pub fn in_dir(dir: &Path, holder: &Identity) -> Self {
        let stem = holder.file_stem();
        Self {
            ca: dir.join("ca.pem"),
            cert: dir.join(format!("{stem}.pem")),
            key: dir.join(format!("{stem}.key")),
            crl: Some(dir.join("crl.pem")),
        }
    }

    /// Checks the files before a process says it has started: each one
    /// readable and of its kind, the key the certificate's, and the
    /// certificate naming `holder`, the process that means to use it. Every
    /// error names the key of the `[tls]` table (`tls.cert`), the file and
    /// what is wrong with it.
    pub fn check(&self, holder: &Identity) -> Result<(), TlsError> {
        // The readers' errors start with the file: the key goes before it.
        fn field(key: &'static str) -> impl Fn(TlsError) -> TlsError {
            move |e| TlsError::Invalid(format!("tls.{key}: {e}"))
        }
        roots(&self.ca).map_err(field("ca"))?;
        let chain = read_certs(&self.cert).map_err(field("cert"))?;
        let key = read_key(&self.key).map_err(field("key"))?;
        read_crls(self.crl.as_ref()).map_err(field("crl"))?;
        match identity_of(&chain[0]) {
            Some(named) if named == *holder => {}
            Some(named) => {
                return Err(TlsError::Invalid(format!(
                    "tls.cert: {}: the certificate names {} ({named}), but this process is {} ({holder}): give it its own certificate",
                    self.cert.display(),
                    short(&named),
                    short(holder),
                )));
            }
            None => {
                return Err(TlsError::Invalid(format!(
                    "tls.cert: {}: the certificate names no holder of this federation (a URI SAN such as {holder}), but this process is {}",
                    self.cert.display(),
                    short(holder),
                )));
            }
        }
        let signing = provider()
            .key_provider
            .load_private_key(key)
            .map_err(|e| TlsError::Invalid(format!("tls.key: {}: {e}", self.key.display())))?;
        rustls::sign::CertifiedKey::new(chain, signing)
            .keys_match()
            .map_err(|_| {
                TlsError::Invalid(format!(
                    "tls.key: {}: not the key of the certificate tls.cert ({}): give the key made with it",
                    self.key.display(),
                    self.cert.display(),
                ))
            })?;
        Ok(())
    }

    /// The files' modification times, to notice a rotation.
    pub(crate) fn stamp(&self) -> Vec<Option<std::time::SystemTime>> {
        [
            Some(&self.ca),
            Some(&self.cert),
            Some(&self.key),
            self.crl.as_ref(),
        ]
        .into_iter()
        .map(|p| p.and_then(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok()))
        .collect()
    }
}

/// A holder as a person would say it: `city luzhou`, `the gateway`.
fn short(id: &Identity) -> String {
    match id {
        Identity::Gateway => "the gateway".into(),
        Identity::Province => "the province".into(),
        Identity::City(c) => format!("city {c}"),
        Identity::Department(d) => format!("department {d}"),
        Identity::Console { city, operator } => format!("operator {operator}'s console in {city}"),
    }
}

pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

pub(crate) fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| TlsError::Invalid(format!("{}: {e}", path.display())))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Invalid(format!("{}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(TlsError::Invalid(format!(
            "{}: no certificate in it",
            path.display()
        )));
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path)
        .map_err(|e| TlsError::Invalid(format!("{}: {e}", path.display())))
}

fn read_crls(
    path: Option<&PathBuf>,
) -> Result<Vec<CertificateRevocationListDer<'static>>, TlsError> {
    let Some(path) = path else {
        return Ok(Vec::new());
    };
    CertificateRevocationListDer::pem_file_iter(path)
        .map_err(|e| TlsError::Invalid(format!("{}: {e}", path.display())))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Invalid(format!("{}: {e}", path.display())))
}

fn roots(path: &Path) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in read_certs(path)? {
        roots
            .add(cert)
            .map_err(|e| TlsError::Invalid(format!("{}: {e}", path.display())))?;
    }
    Ok(Arc::new(roots))
}

/// A server that demands a client certificate chaining to the CA and not
/// revoked.
pub fn server_config(files: &TlsFiles) -> Result<Arc<ServerConfig>, TlsError> {
    Ok(server_config_and_verifier(files)?.0)
}

/// [`server_config`], and the client verifier in it (to check the peers of
/// connections already open against a new CRL or CA).
pub fn server_config_and_verifier(
    files: &TlsFiles,
) -> Result<(Arc<ServerConfig>, Arc<dyn ClientCertVerifier>), TlsError> {
    let provider = provider();
    let verifier = WebPkiClientVerifier::builder_with_provider(roots(&files.ca)?, provider.clone())
        .with_crls(read_crls(files.crl.as_ref())?)
        .build()
        .map_err(|e| TlsError::Invalid(format!("client verifier: {e}")))?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier.clone())
        .with_single_cert(read_certs(&files.cert)?, read_key(&files.key)?)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok((Arc::new(config), verifier))
}

/// A client that presents its certificate and checks the server's against
/// the CA and the revocation list.
pub fn client_config(files: &TlsFiles) -> Result<Arc<ClientConfig>, TlsError> {
    Ok(client_config_and_verifier(files)?.0)
}

/// [`client_config`], and the server verifier in it (to check the servers
/// of connections already open against a new CRL or CA).
pub fn client_config_and_verifier(
    files: &TlsFiles,
) -> Result<(Arc<ClientConfig>, Arc<dyn ServerCertVerifier>), TlsError> {
    let provider = provider();
    let verifier = WebPkiServerVerifier::builder_with_provider(roots(&files.ca)?, provider.clone())
        .with_crls(read_crls(files.crl.as_ref())?)
        .build()
        .map_err(|e| TlsError::Invalid(format!("server verifier: {e}")))?;
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_webpki_verifier(verifier.clone())
        .with_client_auth_cert(read_certs(&files.cert)?, read_key(&files.key)?)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok((Arc::new(config), verifier))
}

/// The identity a certificate names in its URI SAN, if it names one of
/// this federation's.
pub fn identity_of(cert: &CertificateDer<'_>) -> Option<Identity> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let san = parsed.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|name| match name {
        x509_parser::extensions::GeneralName::URI(uri) => Identity::from_spiffe_id(uri),
        _ => None,
    })
}
