//! tetherd's own certificate authority: created on first start, it signs the
//! server's TLS certificate and every device's client certificate, and checks
//! the certificates devices present to renew.

pub mod broker;
pub mod renewal;
pub mod server_cert;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use tether_proto::DeviceId;
use tether_proto::ca::{self, CaPemError};

use crate::secret_file;

/// How long the CA is valid. Rotating it means re-enrolling every device
/// (docs/operations/certificates.md), so it is long.
pub const CA_YEARS: i64 = 10;

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("could not read or write {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} does not hold a usable {what}; move it away to let tetherd create a new CA")]
    BadFile {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: rcgen::Error,
    },
    /// Agents and the CLI pin the CA file tetherd serves, and accept it only
    /// if it holds one certificate.
    #[error("{path} is not a usable CA certificate; move it away to let tetherd create a new CA")]
    BadCaPem {
        path: PathBuf,
        #[source]
        source: CaPemError,
    },
    #[error("the certificate signing request is not valid PEM PKCS#10 with a valid signature")]
    BadCsr(#[source] rcgen::Error),
    #[error("could not issue a certificate")]
    Sign(#[source] rcgen::Error),
    #[error("the certificate is not one PEM certificate")]
    NotACertificate,
    #[error("the certificate was not issued by this tetherd's CA for a device")]
    NotOurs(#[source] rustls::Error),
    #[error("the certificate names no device")]
    NoDevice,
    #[error("certificate serial {0:?} in the store is not hex")]
    BadSerial(String),
}

/// A certificate the CA issued, with its serial as lowercase hex (the form
/// the MQTT endpoint compares at CONNECT).
#[derive(Debug, Clone)]
pub struct IssuedCertificate {
    pub pem: String,
    pub serial_hex: String,
    pub not_before: DateTime<Utc>,
    pub not_after: DateTime<Utc>,
}

/// The server's TLS certificate (chain) and key files, and when the
/// certificate is valid.
#[derive(Debug, Clone)]
pub struct ServerCertificate {
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
    pub not_before: DateTime<Utc>,
    pub not_after: DateTime<Utc>,
}

/// A device certificate this CA issued, as presented back to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresentedDeviceCertificate {
    pub device: String,
    pub serial_hex: String,
    pub not_after: DateTime<Utc>,
    /// The subjectPublicKey bits, to compare with a CSR's key.
    pub public_key: Vec<u8>,
}

pub struct CertificateAuthority {
    issuer: Issuer<'static, KeyPair>,
    client_verifier: Arc<dyn rustls::server::danger::ClientCertVerifier>,
    cert_pem: String,
    cert_path: PathBuf,
    sha256_hex: String,
    /// No certificate it issues outlives it: the chain would not verify.
    not_after: DateTime<Utc>,
}

/// From this long before the CA expires, every start warns.
const CA_EXPIRY_WARNING: Duration = Duration::days(365);

impl CertificateAuthority {
    /// Loads `ca.pem`/`ca-key.pem` from `dir`, creating both on first start.
    pub fn load_or_create(dir: &Path) -> Result<Self, PkiError> {
        let cert_path = dir.join("ca.pem");
        let key_path = dir.join("ca-key.pem");
        if !cert_path.exists() {
            let key = KeyPair::generate().map_err(PkiError::Sign)?;
            let mut params = CertificateParams::default();
            params.distinguished_name = name("tether CA");
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
            let now = Utc::now();
            params.not_before = ymd(now - Duration::days(1));
            params.not_after = ymd(now + Duration::days(365 * CA_YEARS));
            let cert = params.self_signed(&key).map_err(PkiError::Sign)?;
            secret_file::write(&key_path, key.serialize_pem().as_bytes())
                .map_err(|source| io(&key_path, source))?;
            std::fs::write(&cert_path, cert.pem()).map_err(|source| io(&cert_path, source))?;
            tracing::info!(path = %cert_path.display(), "created a new certificate authority");
        }
        let cert_pem =
            std::fs::read_to_string(&cert_path).map_err(|source| io(&cert_path, source))?;
        let key_pem = std::fs::read_to_string(&key_path).map_err(|source| io(&key_path, source))?;
        let key = KeyPair::from_pem(&key_pem).map_err(|source| PkiError::BadFile {
            path: key_path.clone(),
            what: "CA private key",
            source,
        })?;
        let issuer =
            Issuer::from_ca_cert_pem(&cert_pem, key).map_err(|source| PkiError::BadFile {
                path: cert_path.clone(),
                what: "CA certificate",
                source,
            })?;
        let sha256_hex = ca::ca_fingerprint(&cert_pem).map_err(|source| PkiError::BadCaPem {
            path: cert_path.clone(),
            source,
        })?;
        let client_verifier = client_verifier(&cert_pem).map_err(|source| PkiError::BadCaPem {
            path: cert_path.clone(),
            source,
        })?;
        let not_after = ca_not_after(&cert_pem).ok_or_else(|| PkiError::BadCaPem {
            path: cert_path.clone(),
            source: CaPemError::NoCertificate,
        })?;
        if not_after - Utc::now() < CA_EXPIRY_WARNING {
            tracing::warn!(
                path = %cert_path.display(),
                %not_after,
                "the CA expires within a year; certificates it issues end with it: rotate it (docs/operations/certificates.md)"
            );
        }
        Ok(Self {
            issuer,
            client_verifier,
            not_after,
            cert_pem,
            cert_path,
            sha256_hex,
        })
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn cert_path(&self) -> &Path {
        &self.cert_path
    }

    /// SHA-256 of the CA certificate's DER, lowercase hex: what agents pin.
    pub fn sha256_hex(&self) -> &str {
        &self.sha256_hex
    }

    /// Issues the server's TLS certificate for `hosts` (names or IP
    /// addresses), valid for `lifetime` from `now`, and writes it with its
    /// key to `server.pem`/`server-key.pem` in `dir`, each replaced whole so
    /// a listener reloading them never reads half a file.
    pub fn issue_server_certificate(
        &self,
        dir: &Path,
        hosts: &[String],
        lifetime: std::time::Duration,
        now: DateTime<Utc>,
    ) -> Result<ServerCertificate, PkiError> {
        let key = KeyPair::generate().map_err(PkiError::Sign)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = name("tetherd");
        params.subject_alt_names = hosts.iter().filter_map(|h| san(h)).collect();
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(random_serial());
        let (not_before, not_after) = set_validity(&mut params, lifetime, now, self.not_after);
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(PkiError::Sign)?;
        let cert_path = dir.join("server.pem");
        let key_path = dir.join("server-key.pem");
        // Key first: a reload that sees the new chain must find its key.
        // Listeners reload only after both are written.
        secret_file::write(&key_path, key.serialize_pem().as_bytes())
            .map_err(|source| io(&key_path, source))?;
        let chain = format!("{}{}", cert.pem(), self.cert_pem);
        secret_file::write(&cert_path, chain.as_bytes())
            .map_err(|source| io(&cert_path, source))?;
        Ok(ServerCertificate {
            cert_path,
            key_path,
            not_before,
            not_after,
        })
    }

    /// Signs a device's CSR, valid for `lifetime` from `now`. Only the CSR's
    /// public key is used: the subject is the device name and the
    /// certificate is for client authentication only, whatever the request
    /// asked for.
    pub fn sign_device_csr(
        &self,
        device: &DeviceId,
        csr_pem: &str,
        lifetime: std::time::Duration,
        now: DateTime<Utc>,
    ) -> Result<IssuedCertificate, PkiError> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem).map_err(PkiError::BadCsr)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = name(device.as_str());
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        let serial = random_serial();
        let serial_hex = hex::encode(serial.to_bytes());
        params.serial_number = Some(serial);
        let (not_before, not_after) = set_validity(&mut params, lifetime, now, self.not_after);
        let cert = params
            .signed_by(&csr.public_key, &self.issuer)
            .map_err(PkiError::Sign)?;
        Ok(IssuedCertificate {
            pem: cert.pem(),
            serial_hex,
            not_before,
            not_after,
        })
    }

    /// Checks that `pem` is a device (client) certificate this CA signed and
    /// reads what renewal needs from it. Its validity period is deliberately
    /// not checked here: an expired certificate may still renew within the
    /// grace, which [`renewal::check`] decides.
    pub fn verify_device_certificate(
        &self,
        pem: &str,
    ) -> Result<PresentedDeviceCertificate, PkiError> {
        let der = ca::single_certificate(pem).map_err(|_| PkiError::NotACertificate)?;
        let (_, x509) =
            x509_parser::parse_x509_certificate(&der).map_err(|_| PkiError::NotACertificate)?;
        let not_before = x509.validity().not_before.timestamp();
        let not_after = x509.validity().not_after.timestamp();
        // Verify the chain at a moment inside the certificate's own validity.
        let inside = u64::try_from(not_before.max(0)).unwrap_or(0) + 1;
        let inside = inside.min(u64::try_from(not_after.max(0)).unwrap_or(0));
        self.client_verifier
            .verify_client_cert(
                &rustls::pki_types::CertificateDer::from(der.as_slice()),
                &[],
                rustls::pki_types::UnixTime::since_unix_epoch(std::time::Duration::from_secs(
                    inside,
                )),
            )
            .map_err(PkiError::NotOurs)?;
        let device = x509
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .ok_or(PkiError::NoDevice)?
            .to_owned();
        Ok(PresentedDeviceCertificate {
            device,
            serial_hex: hex::encode(x509.raw_serial()),
            not_after: DateTime::from_timestamp(not_after, 0).unwrap_or(DateTime::UNIX_EPOCH),
            public_key: x509.public_key().subject_public_key.data.to_vec(),
        })
    }
}

/// The subjectPublicKey bits of a CSR's key, in the form
/// [`PresentedDeviceCertificate::public_key`] has. Also checks the CSR's
/// signature, which proves the sender holds the key.
pub fn csr_public_key(csr_pem: &str) -> Result<Vec<u8>, PkiError> {
    use rcgen::PublicKeyData;
    let csr = CertificateSigningRequestParams::from_pem(csr_pem).map_err(PkiError::BadCsr)?;
    Ok(csr.public_key.der_bytes().to_vec())
}

fn ca_not_after(ca_pem: &str) -> Option<DateTime<Utc>> {
    let der = ca::single_certificate(ca_pem).ok()?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der).ok()?;
    DateTime::from_timestamp(cert.validity().not_after.timestamp(), 0)
}

fn client_verifier(
    ca_pem: &str,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, CaPemError> {
    let der = ca::single_certificate(ca_pem)?;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from(der))
        .map_err(|_| CaPemError::NoCertificate)?;
    rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        Arc::new(rustls::crypto::ring::default_provider()),
    )
    .build()
    .map_err(|_| CaPemError::NoCertificate)
}

/// SHA-256 of the DER of the only certificate in a PEM, lowercase hex: the
/// fingerprint agents and the CLI pin (see `tether_proto::ca`).
pub fn pem_der_sha256(pem: &str) -> Option<String> {
    ca::ca_fingerprint(pem).ok()
}

fn name(common_name: &str) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, common_name);
    name.push(DnType::OrganizationName, "tether");
    name
}

fn san(host: &str) -> Option<SanType> {
    match host.parse::<std::net::IpAddr>() {
        Ok(ip) => Some(SanType::IpAddress(ip)),
        Err(_) => host.to_owned().try_into().ok().map(SanType::DnsName),
    }
}

/// 16 random bytes with the top bit clear: a positive serial of fixed length,
/// so its hex form is the same wherever it is computed.
fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    SerialNumber::from_slice(&bytes)
}

/// Sets the validity from `now` for `lifetime`, ending no later than
/// `ca_not_after`, and returns it, truncated to whole seconds as the
/// certificate holds it.
fn set_validity(
    params: &mut CertificateParams,
    lifetime: std::time::Duration,
    now: DateTime<Utc>,
    ca_not_after: DateTime<Utc>,
) -> (DateTime<Utc>, DateTime<Utc>) {
    let lifetime = Duration::from_std(lifetime).unwrap_or(Duration::days(365));
    let (not_before, not_after) = tether_proto::certificate::validity(now, lifetime);
    let not_after = not_after.min(ca_not_after);
    params.not_before = ymd(not_before);
    params.not_after = ymd(not_after);
    let whole = |at: DateTime<Utc>| DateTime::from_timestamp(at.timestamp(), 0).unwrap_or(at);
    (whole(not_before), whole(not_after))
}

fn ymd(at: chrono::DateTime<Utc>) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp(at.timestamp())
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

fn io(path: &Path, source: std::io::Error) -> PkiError {
    PkiError::Io {
        path: path.to_owned(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn csr() -> (KeyPair, String) {
        let key = KeyPair::generate().expect("key");
        let csr = CertificateParams::default()
            .serialize_request(&key)
            .and_then(|csr| csr.pem())
            .expect("csr");
        (key, csr)
    }

    #[test]
    fn device_certificates_last_the_configured_lifetime_and_verify_even_when_expired() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = CertificateAuthority::load_or_create(dir.path()).expect("CA");
        let device = DeviceId::new("edge-1").expect("valid");
        let (key, csr) = csr();
        // Issued a day ago for ten minutes: long expired now.
        let issued_at = Utc::now() - Duration::days(1);
        let issued = ca
            .sign_device_csr(
                &device,
                &csr,
                std::time::Duration::from_secs(600),
                issued_at,
            )
            .expect("signs");
        assert_eq!(
            issued.not_after.timestamp(),
            (issued_at + Duration::minutes(10)).timestamp()
        );
        assert_eq!(
            issued.not_before.timestamp(),
            (issued_at - Duration::minutes(1)).timestamp()
        );

        let presented = ca
            .verify_device_certificate(&issued.pem)
            .expect("ours, if expired");
        assert_eq!(presented.device, "edge-1");
        assert_eq!(presented.serial_hex, issued.serial_hex);
        assert_eq!(presented.not_after, issued.not_after);
        assert_eq!(presented.public_key, csr_public_key(&csr).expect("csr key"));
        use rcgen::PublicKeyData;
        assert_eq!(presented.public_key, key.der_bytes());
    }

    #[test]
    fn certificates_of_another_ca_are_refused() {
        let ours = tempfile::tempdir().expect("tempdir");
        let theirs = tempfile::tempdir().expect("tempdir");
        let ca = CertificateAuthority::load_or_create(ours.path()).expect("CA");
        let other = CertificateAuthority::load_or_create(theirs.path()).expect("CA");
        let (_, csr) = csr();
        let foreign = other
            .sign_device_csr(
                &DeviceId::new("edge-1").expect("valid"),
                &csr,
                std::time::Duration::from_secs(600),
                Utc::now(),
            )
            .expect("signs");
        assert!(matches!(
            ca.verify_device_certificate(&foreign.pem),
            Err(PkiError::NotOurs(_))
        ));
        assert!(matches!(
            ca.verify_device_certificate("junk"),
            Err(PkiError::NotACertificate)
        ));
        // A server certificate is not a device's: wrong key usage.
        let server = ca
            .issue_server_certificate(
                ours.path(),
                &["localhost".to_owned()],
                std::time::Duration::from_secs(600),
                Utc::now(),
            )
            .expect("issues");
        let chain = std::fs::read_to_string(server.cert_path).expect("reads");
        let leaf = chain
            .split_inclusive("-----END CERTIFICATE-----\n")
            .next()
            .expect("a leaf");
        assert!(ca.verify_device_certificate(leaf).is_err());
    }

    #[test]
    fn nothing_outlives_the_ca() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = CertificateAuthority::load_or_create(dir.path()).expect("CA");
        let (_, csr) = csr();
        let issued = ca
            .sign_device_csr(
                &DeviceId::new("edge-1").expect("valid"),
                &csr,
                std::time::Duration::from_secs(3600),
                ca.not_after - Duration::minutes(1),
            )
            .expect("signs");
        assert_eq!(issued.not_after, ca.not_after);
    }
}
