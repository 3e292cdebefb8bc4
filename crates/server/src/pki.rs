//! tetherd's own certificate authority: created on first start, it signs the
//! server's TLS certificate and every device's client certificate.

use std::path::{Path, PathBuf};

use chrono::{Duration, Utc};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use tether_proto::DeviceId;
use tether_proto::ca::{self, CaPemError};

use crate::secret_file;

/// How long a device certificate is valid; re-enrollment issues a new one.
const DEVICE_CERT_DAYS: i64 = 365;
/// The server certificate is re-issued at every start, so a short life is enough.
const SERVER_CERT_DAYS: i64 = 90;
const CA_YEARS: i64 = 10;

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
}

/// A certificate the CA issued, with its serial as lowercase hex (the form
/// the MQTT endpoint compares at CONNECT).
#[derive(Debug, Clone)]
pub struct IssuedCertificate {
    pub pem: String,
    pub serial_hex: String,
}

pub struct CertificateAuthority {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
    cert_path: PathBuf,
    sha256_hex: String,
}

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
        Ok(Self {
            issuer,
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
    /// addresses) and writes it with its key to `server.pem`/`server-key.pem`
    /// in `dir`. Returns the two paths.
    pub fn issue_server_certificate(
        &self,
        dir: &Path,
        hosts: &[String],
    ) -> Result<(PathBuf, PathBuf), PkiError> {
        let key = KeyPair::generate().map_err(PkiError::Sign)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = name("tetherd");
        params.subject_alt_names = hosts.iter().filter_map(|h| san(h)).collect();
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(random_serial());
        set_validity(&mut params, SERVER_CERT_DAYS);
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(PkiError::Sign)?;
        let cert_path = dir.join("server.pem");
        let key_path = dir.join("server-key.pem");
        secret_file::write(&key_path, key.serialize_pem().as_bytes())
            .map_err(|source| io(&key_path, source))?;
        let chain = format!("{}{}", cert.pem(), self.cert_pem);
        std::fs::write(&cert_path, chain).map_err(|source| io(&cert_path, source))?;
        Ok((cert_path, key_path))
    }

    /// Signs a device's CSR. Only the CSR's public key is used: the subject
    /// is the device name and the certificate is for client authentication
    /// only, whatever the request asked for.
    pub fn sign_device_csr(
        &self,
        device: &DeviceId,
        csr_pem: &str,
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
        set_validity(&mut params, DEVICE_CERT_DAYS);
        let cert = params
            .signed_by(&csr.public_key, &self.issuer)
            .map_err(PkiError::Sign)?;
        Ok(IssuedCertificate {
            pem: cert.pem(),
            serial_hex,
        })
    }
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

fn set_validity(params: &mut CertificateParams, days: i64) {
    let now = Utc::now();
    params.not_before = ymd(now - Duration::days(1));
    params.not_after = ymd(now + Duration::days(days));
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
