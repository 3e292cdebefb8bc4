//! Who is on the other end of an MQTT connection: the device named by its
//! client certificate, and that certificate's serial in the form the CA
//! records when it issues it.
//!
//! rmqtt does not hand us the peer certificate's DER, only what its TLS layer
//! extracted from it with `x509-parser`: the first subject CN and the serial
//! as `BigUint::to_str_radix(16)`. The CA side records `raw_serial()` (the
//! DER INTEGER's content octets) as lowercase hex, so the two differ for
//! serials with the top bit set (DER prepends `00`) or an odd number of
//! nibbles. [`der_serial_hex`] turns the one into the other.

use tether_proto::DeviceId;

/// The device a connection authenticated as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct CertIdentity {
    pub device: DeviceId,
    /// The certificate serial as the lowercase hex of its DER INTEGER content
    /// octets, like `hex::encode(x509.raw_serial())`.
    pub serial_hex: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(super) enum IdentityError {
    #[error("the client presented no certificate")]
    NoCertificate,
    #[error("the client certificate has no common name")]
    NoCommonName,
    #[error("the client certificate's common name {common_name:?} is not a device name")]
    InvalidCommonName { common_name: String },
    #[error("client id {client_id:?} differs from the certificate's device {device}")]
    ClientIdMismatch { client_id: String, device: DeviceId },
    #[error("the client certificate's serial {serial:?} is not usable")]
    InvalidSerial { serial: String },
}

/// What rmqtt's TLS layer reports about a client certificate.
#[derive(Debug, Clone, Copy)]
pub(super) struct PresentedCert<'a> {
    pub common_name: Option<&'a str>,
    /// x509-parser's `serial.to_str_radix(16)`.
    pub serial_unsigned_hex: Option<&'a str>,
}

/// Checks that the certificate names a device and that the MQTT client id is
/// that device, so topics, ACLs and sessions all key on the certificate.
pub(super) fn cert_identity(
    cert: Option<PresentedCert<'_>>,
    client_id: &str,
) -> Result<CertIdentity, IdentityError> {
    let cert = cert.ok_or(IdentityError::NoCertificate)?;
    let common_name = cert.common_name.ok_or(IdentityError::NoCommonName)?;
    let device = DeviceId::new(common_name).map_err(|_| IdentityError::InvalidCommonName {
        common_name: common_name.to_owned(),
    })?;
    if device.as_str() != client_id {
        return Err(IdentityError::ClientIdMismatch {
            client_id: client_id.to_owned(),
            device,
        });
    }
    let serial = cert.serial_unsigned_hex.unwrap_or_default();
    let serial_hex = der_serial_hex(serial).ok_or_else(|| IdentityError::InvalidSerial {
        serial: serial.to_owned(),
    })?;
    Ok(CertIdentity { device, serial_hex })
}

/// Rebuilds the hex of a serial's DER content octets from its unsigned value
/// in hex: the minimal big-endian bytes, with a `00` in front when the top bit
/// is set (DER's encoding of a positive INTEGER, which RFC 5280 requires of
/// serials). A certificate with a non-minimal or negative serial encoding
/// yields a different string than its raw bytes, so it is refused: fail
/// closed, and our CA never issues one.
pub(super) fn der_serial_hex(unsigned_hex: &str) -> Option<String> {
    if unsigned_hex.is_empty() || !unsigned_hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let digits = unsigned_hex.trim_start_matches('0').to_ascii_lowercase();
    let mut out = String::with_capacity(digits.len() + 2);
    if digits.len() % 2 == 1 {
        out.push('0');
    }
    out.push_str(&digits);
    match out.as_bytes().first() {
        // Zero: DER encodes it as a single 00 octet.
        None => out.push_str("00"),
        Some(b'8'..=b'9' | b'a'..=b'f') => out.insert_str(0, "00"),
        Some(_) => {}
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, SerialNumber};

    /// Issues a self-signed certificate and reads it back the way rmqtt's TLS
    /// layer does (first CN, `serial.to_str_radix(16)`), plus the raw serial
    /// hex the CA side records.
    fn presented(common_name: Option<&str>, serial: &[u8]) -> (Option<String>, String, String) {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        if let Some(cn) = common_name {
            dn.push(DnType::CommonName, cn);
        }
        dn.push(DnType::OrganizationName, "tether");
        params.distinguished_name = dn;
        params.serial_number = Some(SerialNumber::from_slice(serial));
        let key = KeyPair::generate().expect("generate a key");
        let cert = params.self_signed(&key).expect("self-sign");
        let (_, x509) = x509_parser::parse_x509_certificate(cert.der()).expect("parse DER");
        let cn = x509
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(str::to_owned);
        (
            cn,
            x509.serial.to_str_radix(16),
            hex::encode(x509.raw_serial()),
        )
    }

    #[test]
    fn the_serial_matches_the_raw_der_serial_the_ca_records() {
        for serial in [
            &[0x40, 0x11, 0x22, 0x33][..],
            &[0x80, 0x01],
            &[0xff; 16],
            &[0x01, 0x02],
            &[0x0a],
            &[0x00, 0x00, 0x05],
            &[0x00, 0x90, 0x00],
            &[0x7f; 20],
        ] {
            let (_, unsigned_hex, raw_hex) = presented(Some("edge-1"), serial);
            assert_eq!(
                der_serial_hex(&unsigned_hex).as_deref(),
                Some(raw_hex.as_str()),
                "serial {serial:02x?}"
            );
        }
    }

    #[test]
    fn der_serial_hex_handles_edge_values() {
        assert_eq!(der_serial_hex("0").as_deref(), Some("00"));
        assert_eq!(der_serial_hex("abc").as_deref(), Some("0abc"));
        assert_eq!(der_serial_hex("ABC").as_deref(), Some("0abc"));
        assert_eq!(der_serial_hex("8").as_deref(), Some("08"));
        assert_eq!(der_serial_hex("80").as_deref(), Some("0080"));
        assert_eq!(der_serial_hex("0042").as_deref(), Some("42"));
        assert_eq!(der_serial_hex("7f").as_deref(), Some("7f"));
        assert_eq!(der_serial_hex(""), None);
        assert_eq!(der_serial_hex("12:34"), None);
        assert_eq!(der_serial_hex("-1"), None);
    }

    #[test]
    fn identity_is_the_common_name_and_must_be_the_client_id() {
        let (cn, serial, raw) = presented(Some("device-a"), &[0x42, 0x01]);
        let cert = PresentedCert {
            common_name: cn.as_deref(),
            serial_unsigned_hex: Some(&serial),
        };
        assert_eq!(
            cert_identity(Some(cert), "device-a"),
            Ok(CertIdentity {
                device: DeviceId::new("device-a").expect("valid"),
                serial_hex: raw,
            })
        );
        assert!(matches!(
            cert_identity(Some(cert), "device-b"),
            Err(IdentityError::ClientIdMismatch { .. })
        ));
    }

    #[test]
    fn certificates_without_a_device_name_are_refused() {
        let (cn, serial, _) = presented(None, &[0x42]);
        let no_cn = PresentedCert {
            common_name: cn.as_deref(),
            serial_unsigned_hex: Some(&serial),
        };
        assert_eq!(
            cert_identity(Some(no_cn), "device-a"),
            Err(IdentityError::NoCommonName)
        );

        let bad = PresentedCert {
            common_name: Some("Device A"),
            serial_unsigned_hex: Some("42"),
        };
        assert!(matches!(
            cert_identity(Some(bad), "Device A"),
            Err(IdentityError::InvalidCommonName { .. })
        ));

        let no_serial = PresentedCert {
            common_name: Some("device-a"),
            serial_unsigned_hex: None,
        };
        assert!(matches!(
            cert_identity(Some(no_serial), "device-a"),
            Err(IdentityError::InvalidSerial { .. })
        ));

        assert_eq!(
            cert_identity(None, "device-a"),
            Err(IdentityError::NoCertificate)
        );
    }
}
