//! Checking a release: the signature over its metadata with the pinned
//! key (before anything is downloaded), then the downloaded file's size
//! and SHA-256 against that signed metadata.

use base64::Engine as _;
use tether_proto::desired::agent_release::{AgentBinary, AgentRelease, signed_message};

/// Why a release or its binary is refused; each names what failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error(
        "agent release {version} has no binary for this device's platform {platform} (it has: {available})"
    )]
    NoBinary {
        version: String,
        platform: String,
        available: String,
    },
    #[error(
        "agent release {version} is signed with key {offered}, but this agent pinned key {pinned}; refused"
    )]
    KeyMismatch {
        version: String,
        pinned: String,
        offered: String,
    },
    #[error(
        "bad signature: agent release {version} for {platform} is not signed by its signing key; refused"
    )]
    BadSignature { version: String, platform: String },
    #[error(
        "size mismatch: the download of agent release {version} has {actual} bytes, the release says {expected}"
    )]
    SizeMismatch {
        version: String,
        expected: u64,
        actual: u64,
    },
    #[error(
        "hash mismatch: the download of agent release {version} has SHA-256 {actual}, the release says {expected}"
    )]
    HashMismatch {
        version: String,
        expected: String,
        actual: String,
    },
}

/// `release`'s binary for `platform`.
pub fn binary_for<'a>(
    release: &'a AgentRelease,
    platform: &str,
) -> Result<&'a AgentBinary, VerifyError> {
    release
        .binaries
        .get(platform)
        .ok_or_else(|| VerifyError::NoBinary {
            version: release.version.clone(),
            platform: platform.to_owned(),
            available: release
                .binaries
                .keys()
                .cloned()
                .collect::<Vec<_>>()
                .join(", "),
        })
}

/// Checks `binary`'s signature with `key` (base64 Ed25519 public key).
pub fn check_signature(
    release: &AgentRelease,
    platform: &str,
    binary: &AgentBinary,
    key: &str,
) -> Result<(), VerifyError> {
    let bad = || VerifyError::BadSignature {
        version: release.version.clone(),
        platform: platform.to_owned(),
    };
    let decode = |text: &str| {
        base64::engine::general_purpose::STANDARD
            .decode(text.trim())
            .map_err(|_| bad())
    };
    let key = decode(key)?;
    let signature = decode(&binary.signature)?;
    let message = signed_message(&release.version, platform, &binary.sha256, binary.size);
    ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, key)
        .verify(&message, &signature)
        .map_err(|_| bad())
}

/// Checks a downloaded file's `size` and `sha256` (lowercase hex) against
/// the signed metadata.
pub fn check_download(
    release: &AgentRelease,
    binary: &AgentBinary,
    size: u64,
    sha256: &str,
) -> Result<(), VerifyError> {
    if size != binary.size {
        return Err(VerifyError::SizeMismatch {
            version: release.version.clone(),
            expected: binary.size,
            actual: size,
        });
    }
    if sha256 != binary.sha256 {
        return Err(VerifyError::HashMismatch {
            version: release.version.clone(),
            expected: binary.sha256.clone(),
            actual: sha256.to_owned(),
        });
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::BTreeMap;

    use ring::signature::KeyPair as _;

    use super::*;

    /// A key pair and a release of `bytes` for `platform`, signed with it.
    pub(crate) fn signed_release(
        version: &str,
        platform: &str,
        bytes: &[u8],
    ) -> (ring::signature::Ed25519KeyPair, AgentRelease) {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng).expect("key");
        let pair = ring::signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).expect("pair");
        let release = release_signed_by(&pair, version, platform, bytes);
        (pair, release)
    }

    pub(crate) fn release_signed_by(
        pair: &ring::signature::Ed25519KeyPair,
        version: &str,
        platform: &str,
        bytes: &[u8],
    ) -> AgentRelease {
        let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
        let sha256 = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(bytes));
        let size = bytes.len() as u64;
        let signature = pair.sign(&signed_message(version, platform, &sha256, size));
        AgentRelease {
            version: version.into(),
            signing_key: b64(pair.public_key().as_ref()),
            binaries: BTreeMap::from([(
                platform.to_owned(),
                AgentBinary {
                    sha256,
                    size,
                    signature: b64(signature.as_ref()),
                },
            )]),
            download_token: "token".into(),
            allow_downgrade: false,
        }
    }

    #[test]
    fn a_signature_checks_out_with_its_key_only() {
        let (_, release) = signed_release("0.2.0", "linux-x86_64", b"new agent");
        let binary = binary_for(&release, "linux-x86_64").expect("there");
        check_signature(&release, "linux-x86_64", binary, &release.signing_key).expect("valid");
        let (_, other) = signed_release("0.2.0", "linux-x86_64", b"new agent");
        let error = check_signature(&release, "linux-x86_64", binary, &other.signing_key)
            .expect_err("another key");
        assert!(error.to_string().starts_with("bad signature"), "{error}");
        // Signed for one platform, offered as another's: refused.
        assert!(check_signature(&release, "linux-aarch64", binary, &release.signing_key).is_err());
        let mut tampered = binary.clone();
        tampered.size += 1;
        assert!(
            check_signature(&release, "linux-x86_64", &tampered, &release.signing_key).is_err()
        );
    }

    #[test]
    fn a_missing_platform_and_a_wrong_download_are_named() {
        let (_, release) = signed_release("0.2.0", "linux-aarch64", b"arm agent");
        let error = binary_for(&release, "linux-x86_64").expect_err("none");
        assert_eq!(
            error.to_string(),
            "agent release 0.2.0 has no binary for this device's platform linux-x86_64 (it has: linux-aarch64)"
        );
        let binary = &release.binaries["linux-aarch64"];
        check_download(&release, binary, binary.size, &binary.sha256).expect("matches");
        assert!(
            check_download(&release, binary, 3, &binary.sha256)
                .expect_err("size")
                .to_string()
                .starts_with("size mismatch")
        );
        assert!(
            check_download(&release, binary, binary.size, &"0".repeat(64))
                .expect_err("hash")
                .to_string()
                .starts_with("hash mismatch")
        );
    }
}
