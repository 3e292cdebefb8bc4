//! What an external MQTT broker needs from the CA: tetherd's own client
//! certificate (CN [`DeviceId::RESERVED`], which no device can have), and
//! a revocation list, since such a broker checks only that a device's
//! certificate was signed by the CA, not that it is still current.

use std::path::{Path, PathBuf};

use chrono::{DateTime, Duration, Utc};
use rcgen::{
    CertificateParams, CertificateRevocationListParams, ExtendedKeyUsagePurpose, KeyIdMethod,
    KeyPair, KeyUsagePurpose, RevokedCertParams, SerialNumber,
};
use tether_proto::DeviceId;

use super::{CertificateAuthority, PkiError, io, name, random_serial, set_validity, ymd};
use crate::secret_file;

/// How long a revocation list says it is good for. A broker that holds an
/// expired list refuses every client, and mosquitto reads it only when it
/// starts or reloads, so this is long; tetherd writes a new one whenever a
/// certificate is retired anyway.
const CRL_VALIDITY: Duration = Duration::days(365);

/// tetherd's client certificate and key files.
#[derive(Debug, Clone)]
pub struct ClientCertificate {
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
}

impl CertificateAuthority {
    /// Issues tetherd's client certificate for the broker (CN `tetherd`,
    /// client authentication only), valid for `lifetime` from `now`, into
    /// `client.pem`/`client-key.pem` in `dir`.
    pub fn issue_controller_client_certificate(
        &self,
        dir: &Path,
        lifetime: std::time::Duration,
        now: DateTime<Utc>,
    ) -> Result<ClientCertificate, PkiError> {
        let key = KeyPair::generate().map_err(PkiError::Sign)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = name(DeviceId::RESERVED);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(random_serial());
        set_validity(&mut params, lifetime, now, self.not_after);
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(PkiError::Sign)?;
        let cert_path = dir.join("client.pem");
        let key_path = dir.join("client-key.pem");
        secret_file::write(&key_path, key.serialize_pem().as_bytes())
            .map_err(|source| io(&key_path, source))?;
        secret_file::write(&cert_path, cert.pem().as_bytes())
            .map_err(|source| io(&cert_path, source))?;
        Ok(ClientCertificate {
            cert_path,
            key_path,
        })
    }

    /// A PEM CRL, signed by the CA, listing `serials` (lowercase hex of the
    /// DER serial, as the registry records them) as revoked at `now`.
    /// `number` must grow with each list the CA publishes.
    pub fn revocation_list(
        &self,
        serials: &[String],
        number: u64,
        now: DateTime<Utc>,
    ) -> Result<String, PkiError> {
        let revoked_certs = serials
            .iter()
            .map(|serial| {
                let bytes = hex::decode(serial).map_err(|_| PkiError::BadSerial(serial.clone()))?;
                Ok(RevokedCertParams {
                    serial_number: SerialNumber::from_slice(&bytes),
                    revocation_time: ymd(now),
                    reason_code: None,
                    invalidity_date: None,
                })
            })
            .collect::<Result<Vec<_>, PkiError>>()?;
        let params = CertificateRevocationListParams {
            this_update: ymd(now),
            next_update: ymd(now + CRL_VALIDITY),
            crl_number: SerialNumber::from_slice(&number.to_be_bytes()),
            issuing_distribution_point: None,
            revoked_certs,
            // The same derivation rcgen used for the CA's subject key
            // identifier, so a verifier matches this list to the CA.
            key_identifier_method: KeyIdMethod::Sha256,
        };
        params
            .signed_by(&self.issuer)
            .and_then(|crl| crl.pem())
            .map_err(PkiError::Sign)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device_certificate(
        ca: &CertificateAuthority,
        device: &str,
    ) -> super::super::IssuedCertificate {
        let key = KeyPair::generate().expect("key");
        let csr = CertificateParams::default()
            .serialize_request(&key)
            .and_then(|csr| csr.pem())
            .expect("csr");
        ca.sign_device_csr(
            &DeviceId::new(device).expect("valid"),
            &csr,
            std::time::Duration::from_secs(3600),
            Utc::now(),
        )
        .expect("signs")
    }

    #[test]
    fn the_revocation_list_names_the_retired_serials_and_verifies_against_the_ca() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = CertificateAuthority::load_or_create(dir.path()).expect("CA");
        let retired = device_certificate(&ca, "edge-1");
        let kept = device_certificate(&ca, "edge-2");
        let pem = ca
            .revocation_list(std::slice::from_ref(&retired.serial_hex), 7, Utc::now())
            .expect("signs");

        let der = x509_parser::pem::parse_x509_pem(pem.as_bytes())
            .expect("PEM")
            .1
            .contents;
        let (_, crl) = x509_parser::parse_x509_crl(&der).expect("a CRL");
        let listed: Vec<String> = crl
            .iter_revoked_certificates()
            .map(|revoked| hex::encode(revoked.raw_serial()))
            .collect();
        assert_eq!(listed, vec![retired.serial_hex.clone()]);
        assert!(!listed.contains(&kept.serial_hex));
        assert_eq!(crl.crl_number().map(|n| n.to_string()), Some("7".into()));
        assert!(
            crl.issuer().to_string().contains("CN=tether CA"),
            "{}",
            crl.issuer()
        );
        assert!(
            crl.next_update().is_some(),
            "a list without an end is refused by OpenSSL"
        );
    }

    #[test]
    fn a_serial_that_is_not_hex_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = CertificateAuthority::load_or_create(dir.path()).expect("CA");
        let err = ca
            .revocation_list(&["zz".to_owned()], 1, Utc::now())
            .expect_err("not hex");
        assert!(format!("{err:?}").contains("zz"), "{err:?}");
    }

    #[test]
    fn the_controller_certificate_is_named_tetherd_and_cannot_be_a_device() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = CertificateAuthority::load_or_create(dir.path()).expect("CA");
        let issued = ca
            .issue_controller_client_certificate(
                dir.path(),
                std::time::Duration::from_secs(3600),
                Utc::now(),
            )
            .expect("issues");
        let pem = std::fs::read_to_string(&issued.cert_path).expect("written");
        let der = tether_proto::ca::single_certificate(&pem).expect("one");
        let (_, cert) = x509_parser::parse_x509_certificate(&der).expect("certificate");
        let cn = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .expect("CN");
        assert_eq!(cn, "tetherd");
        assert!(
            DeviceId::new(cn).is_err(),
            "no device may take the controller's name"
        );
    }
}
