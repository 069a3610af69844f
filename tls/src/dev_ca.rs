//! A development certificate authority: a CA, and a certificate per holder
//! that names it (URI SAN `spiffe://hotline.sichuan/...`, DNS SAN
//! `....hotline.sichuan`). For the demo, the tests and a first deployment;
//! a province runs its own CA and only needs the same SANs.
//!
//! Files in the directory: `ca.pem`, `ca.key` (keep it away from the
//! processes), `{stem}.pem` and `{stem}.key` per holder (`gateway`,
//! `city-luzhou`, `province`, `department-housing-fund`...), and `crl.pem`,
//! the revocation list, which starts empty.

use std::path::{Path, PathBuf};
use std::time::Duration;

use hotline_proto::identity::Identity;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose,
    RevocationReason, RevokedCertParams, SanType, SerialNumber,
};

use crate::TlsError;

/// How long certificates the CA issues are valid by default.
pub const DEFAULT_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);

/// Writes through a temporary file renamed into place: a server reloading
/// its files during a rotation reads the old file or the new one, never
/// half of one.
fn write_atomic(path: &Path, contents: &str, private: bool) -> Result<(), TlsError> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, contents).map_err(|e| TlsError::io(&tmp, e))?;
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| TlsError::io(&tmp, e))?;
    }
    #[cfg(not(unix))]
    let _ = private;
    std::fs::rename(&tmp, path).map_err(|e| TlsError::io(path, e))
}

fn write_private(path: &Path, contents: &str) -> Result<(), TlsError> {
    write_atomic(path, contents, true)
}

fn write(path: &Path, contents: &str) -> Result<(), TlsError> {
    write_atomic(path, contents, false)
}

fn read(path: &Path) -> Result<String, TlsError> {
    std::fs::read_to_string(path).map_err(|e| TlsError::io(path, e))
}

fn now() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc()
}

/// A random serial, so that a revocation names one certificate.
fn serial() -> SerialNumber {
    let id = ulid::Ulid::new().to_bytes();
    // Positive: the high bit of the first byte clear.
    let mut bytes = id.to_vec();
    bytes[0] &= 0x7f;
    SerialNumber::from_slice(&bytes)
}

/// Makes a new CA and a certificate for each of `holders` in `dir`, and an
/// empty revocation list.
pub fn init(dir: &Path, holders: &[Identity]) -> Result<(), TlsError> {
    std::fs::create_dir_all(dir).map_err(|e| TlsError::io(dir, e))?;
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, "hotline federation development CA");
    name.push(DnType::OrganizationName, "Sichuan 12345 hotline federation");
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = now() - time::Duration::hours(1);
    params.not_after = now() + time::Duration::days(3650);
    params.serial_number = Some(serial());
    let cert = params.self_signed(&key)?;
    write(&dir.join("ca.pem"), &cert.pem())?;
    write_private(&dir.join("ca.key"), &key.serialize_pem())?;
    for holder in holders {
        issue(dir, holder, DEFAULT_VALIDITY)?;
    }
    revoke(dir, &[])?;
    Ok(())
}

fn issuer(dir: &Path) -> Result<Issuer<'static, KeyPair>, TlsError> {
    let key = KeyPair::from_pem(&read(&dir.join("ca.key"))?)?;
    Ok(Issuer::from_ca_cert_pem(&read(&dir.join("ca.pem"))?, key)?)
}

/// Issues a certificate for `holder`, valid from an hour ago for
/// `validity`, and writes `{stem}.pem` and `{stem}.key`; returns the
/// certificate's path.
pub fn issue(dir: &Path, holder: &Identity, validity: Duration) -> Result<PathBuf, TlsError> {
    let from = now() - time::Duration::hours(1);
    issue_between(
        dir,
        holder,
        from,
        from + validity + Duration::from_secs(3600),
    )
}

/// Issues a certificate valid between two instants (an expired one, for
/// tests of refusal).
pub fn issue_between(
    dir: &Path,
    holder: &Identity,
    not_before: time::OffsetDateTime,
    not_after: time::OffsetDateTime,
) -> Result<PathBuf, TlsError> {
    let issuer = issuer(dir)?;
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(vec![holder.dns_name()])?;
    params
        .subject_alt_names
        .push(SanType::URI(holder.spiffe_id().try_into()?));
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, holder.spiffe_id());
    params.distinguished_name = name;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.not_before = not_before;
    params.not_after = not_after;
    params.serial_number = Some(serial());
    params.use_authority_key_identifier_extension = true;
    let cert = params.signed_by(&key, &issuer)?;
    let stem = holder.file_stem();
    let path = dir.join(format!("{stem}.pem"));
    // Between the two renames a reload may read a key and a certificate
    // that do not match: rustls refuses the pair and the server keeps its
    // previous set until the next check finds both new.
    write_private(&dir.join(format!("{stem}.key")), &key.serialize_pem())?;
    write(&path, &cert.pem())?;
    Ok(path)
}

/// The serial number of the certificate in `cert_pem_path`.
pub fn serial_of(cert_pem_path: &Path) -> Result<Vec<u8>, TlsError> {
    let der = crate::files::read_certs(cert_pem_path)?
        .into_iter()
        .next()
        .ok_or_else(|| TlsError::Invalid(format!("{}: no certificate", cert_pem_path.display())))?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der)
        .map_err(|e| TlsError::Invalid(format!("{}: {e}", cert_pem_path.display())))?;
    Ok(cert.raw_serial().to_vec())
}

/// Writes `crl.pem` revoking the certificates with these serial numbers
/// (and no other: the list is replaced whole).
pub fn revoke(dir: &Path, serials: &[Vec<u8>]) -> Result<PathBuf, TlsError> {
    let issuer = issuer(dir)?;
    let at = now();
    let params = CertificateRevocationListParams {
        this_update: at - time::Duration::minutes(1),
        next_update: at + time::Duration::days(30),
        crl_number: serial(),
        issuing_distribution_point: None,
        revoked_certs: serials
            .iter()
            .map(|s| RevokedCertParams {
                serial_number: SerialNumber::from_slice(s),
                revocation_time: at - time::Duration::minutes(1),
                reason_code: Some(RevocationReason::KeyCompromise),
                invalidity_date: None,
            })
            .collect(),
        key_identifier_method: KeyIdMethod::Sha256,
    };
    let crl = params.signed_by(&issuer)?;
    let path = dir.join("crl.pem");
    write(&path, &crl.pem()?)?;
    Ok(path)
}

/// Everyone a federation of `cities` and `categories` needs a certificate
/// for: the gateway, each city, the province, each department.
pub fn holders<'a>(
    cities: impl IntoIterator<Item = &'a str>,
    categories: impl IntoIterator<Item = &'a str>,
) -> Vec<Identity> {
    let mut out = vec![Identity::Gateway, Identity::Province];
    out.extend(cities.into_iter().map(|c| Identity::City(c.to_owned())));
    out.extend(
        categories
            .into_iter()
            .map(|c| Identity::Department(c.to_owned())),
    );
    out
}
