//! The CA certificate that agents and the CLI pin by its SHA-256 fingerprint.
//!
//! A pin protects only what it covers. A PEM with two certificates whose
//! first one matches would, handed to a TLS client, trust both: so the one
//! rule for every component is that a pinned CA file holds exactly one
//! certificate, and the fingerprint is the SHA-256 of that certificate's DER.

use rustls_pemfile::Item;
use sha2::{Digest, Sha256};

/// Why a PEM is not a single CA certificate.
#[derive(Debug, thiserror::Error)]
pub enum CaPemError {
    #[error("it is not valid PEM")]
    BadPem(#[source] std::io::Error),
    #[error("it holds no PEM certificate (-----BEGIN CERTIFICATE-----)")]
    NoCertificate,
    #[error("it holds {count} certificates, not one, and a TLS client would trust all of them")]
    SeveralCertificates { count: usize },
}

/// The DER of the only certificate in `pem`. Blocks of other kinds (a key,
/// say) are ignored: TLS clients take only certificates from a CA file.
pub fn single_certificate(pem: &str) -> Result<Vec<u8>, CaPemError> {
    let mut certificates = Vec::new();
    for item in rustls_pemfile::read_all(&mut pem.as_bytes()) {
        if let Item::X509Certificate(der) = item.map_err(CaPemError::BadPem)? {
            certificates.push(der);
        }
    }
    match certificates.as_slice() {
        [one] => Ok(one.to_vec()),
        [] => Err(CaPemError::NoCertificate),
        several => Err(CaPemError::SeveralCertificates {
            count: several.len(),
        }),
    }
}

/// The fingerprint of the only certificate in `pem`: lowercase hex SHA-256
/// of its DER, without separators.
pub fn ca_fingerprint(pem: &str) -> Result<String, CaPemError> {
    single_certificate(pem).map(|der| der_fingerprint(&der))
}

/// Lowercase hex SHA-256 of a DER certificate.
pub fn der_fingerprint(der: &[u8]) -> String {
    hex::encode(Sha256::digest(der))
}

/// A fingerprint as people write it (`AB:12:…`, upper or lower case, with or
/// without a `sha256:` prefix) in the canonical form: 64 lowercase hex digits.
/// `None` if it is not a SHA-256 fingerprint.
pub fn normalize_fingerprint(given: &str) -> Option<String> {
    let trimmed = given.trim();
    let trimmed = match trimmed.get(..7) {
        Some(prefix) if prefix.eq_ignore_ascii_case("sha256:") => &trimmed[7..],
        _ => trimmed,
    };
    let hex: String = trimmed
        .chars()
        .filter(|c| *c != ':')
        .map(|c| c.to_ascii_lowercase())
        .collect();
    (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit())).then_some(hex)
}

/// Whether two fingerprints name the same certificate, however each is
/// written; a string that is no fingerprint matches nothing.
pub fn fingerprints_match(expected: &str, actual: &str) -> bool {
    match (
        normalize_fingerprint(expected),
        normalize_fingerprint(actual),
    ) {
        (Some(expected), Some(actual)) => expected == actual,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // PEM framing around bytes that are no real certificate: the helpers
    // hash whatever DER a block holds, without parsing it.
    const FIRST: &str =
        "-----BEGIN CERTIFICATE-----\nAQIDBAUGBwgJCgsMDQ4PEA==\n-----END CERTIFICATE-----\n";
    const SECOND: &str =
        "-----BEGIN CERTIFICATE-----\nERITFBUWFxgZGhscHR4fIA==\n-----END CERTIFICATE-----\n";
    const KEY: &str = "-----BEGIN PRIVATE KEY-----\nAQIDBA==\n-----END PRIVATE KEY-----\n";

    #[test]
    fn one_certificate_gives_the_sha256_of_its_der() {
        let der: Vec<u8> = (1..=16).collect();
        assert_eq!(single_certificate(FIRST).expect("one"), der);
        let expected = hex::encode(Sha256::digest(&der));
        assert_eq!(ca_fingerprint(FIRST).expect("one"), expected);
        assert_eq!(der_fingerprint(&der), expected);
        // Text around the block and blocks of other kinds do not count.
        let framed = format!("subject=CN=tether CA\n{FIRST}{KEY}");
        assert_eq!(ca_fingerprint(&framed).expect("one"), expected);
    }

    #[test]
    fn two_certificates_are_refused_naming_the_count() {
        // The attack: the real CA first, the attacker's CA after it.
        let err = ca_fingerprint(&format!("{FIRST}{SECOND}")).expect_err("two");
        assert!(matches!(err, CaPemError::SeveralCertificates { count: 2 }));
        assert!(err.to_string().contains("2 certificates"), "{err}");
        let err = ca_fingerprint(&format!("{FIRST}{SECOND}{FIRST}")).expect_err("three");
        assert!(err.to_string().contains("3 certificates"), "{err}");
    }

    #[test]
    fn garbage_is_refused() {
        for garbage in ["", "not a pem", KEY] {
            assert!(
                matches!(ca_fingerprint(garbage), Err(CaPemError::NoCertificate)),
                "{garbage:?}"
            );
        }
        let bad_base64 = "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n";
        assert!(matches!(
            ca_fingerprint(bad_base64),
            Err(CaPemError::BadPem(_))
        ));
        let unterminated = "-----BEGIN CERTIFICATE-----\nAQIDBA==\n";
        assert!(ca_fingerprint(unterminated).is_err());
    }

    #[test]
    fn fingerprints_match_whatever_their_case_and_separators() {
        let plain = ca_fingerprint(FIRST).expect("one");
        let colons = plain
            .as_bytes()
            .chunks(2)
            .map(|pair| String::from_utf8_lossy(pair).to_uppercase())
            .collect::<Vec<_>>()
            .join(":");
        assert!(fingerprints_match(&colons, &plain));
        assert!(fingerprints_match(&format!("SHA256:{colons}"), &plain));
        assert!(fingerprints_match(&format!(" sha256:{plain} "), &plain));
        assert_eq!(normalize_fingerprint(&colons), Some(plain.clone()));

        let other = ca_fingerprint(SECOND).expect("one");
        assert!(!fingerprints_match(&other, &plain));
        assert!(
            !fingerprints_match("", ""),
            "nothing matches a non-fingerprint"
        );
        assert!(!fingerprints_match(&plain[1..], &plain[1..]));
        for bad in ["abc", &"zz".repeat(32), &format!("{plain}00")] {
            assert_eq!(normalize_fingerprint(bad), None, "{bad}");
        }
    }
}
