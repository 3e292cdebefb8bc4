//! The agent's own release, as a deployment carries it (issue 19, ADR
//! 0033). An operator publishes a release (one binary per platform);
//! tetherd signs each binary with its release key (Ed25519), and a
//! deployment that names the release renders this section into each
//! targeted device's spec. The agent downloads its platform's binary,
//! checks the SHA-256 and the signature against the key it pinned, and
//! runs it on trial; the staged rollout of ADR 0029 moves devices from one
//! release to the next and puts failed ones back.

use std::collections::BTreeMap;

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::spec::SpecError;

/// Largest agent binary a release may hold.
pub const MAX_BINARY_BYTES: u64 = 256 * 1024 * 1024;
/// Longest release version.
pub const MAX_VERSION_BYTES: usize = 64;
/// At most this many platforms per release.
pub const MAX_PLATFORMS: usize = 16;

/// What a deployment's `agent` field holds on one device.
///
/// Unknown fields are ignored, unlike the rest of the spec: tetherd adds
/// fields here for newer agents (`allowDowngrade`), and a release rolled
/// back or down to an older agent must still read its spec, and the spec
/// the newer agent saved, rather than drop every deployment as unreadable.
/// tetherd writes this section itself (operators cannot), so no operator
/// typo is silently ignored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AgentRelease {
    /// The release's version, as the agent built from it reports it.
    pub version: String,
    /// The Ed25519 public key (32 bytes, base64) the binaries are signed
    /// with. The agent trusts the key it pinned, not this field: a release
    /// signed by another key is refused.
    pub signing_key: String,
    /// Each platform's binary ([`platform`]), by platform name.
    pub binaries: BTreeMap<String, AgentBinary>,
    /// Where the device downloads its binary: a path on tetherd's API
    /// (`/api/v1/agent-releases/{version}/{platform}/binary`), with a
    /// bearer token tetherd made for this device and release.
    pub download_token: String,
    /// The deployment allows this release to be older than the version
    /// the agent runs (`allowAgentDowngrade`); otherwise the agent refuses
    /// it, so an old signed release cannot be rolled out again unasked.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_downgrade: bool,
}

/// One platform's binary of a release; unknown fields ignored, as in
/// [`AgentRelease`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AgentBinary {
    /// Lowercase hex SHA-256 of the binary.
    pub sha256: String,
    /// The binary's length in bytes.
    pub size: u64,
    /// Ed25519 signature (64 bytes, base64) of [`signed_message`].
    pub signature: String,
}

/// The platform this build runs on, as releases name it:
/// `{os}-{arch}` (`linux-x86_64`, `linux-aarch64`).
pub fn platform() -> String {
    format!("{}-{}", std::env::consts::OS, std::env::consts::ARCH)
}

/// What tetherd signs for one binary: its version and platform with its
/// hash and size, so a signature cannot be replayed as another version
/// (a downgrade) or another platform.
pub fn signed_message(version: &str, platform: &str, sha256: &str, size: u64) -> Vec<u8> {
    format!(
        "tether-agent-release v1\nversion {version}\nplatform {platform}\nsha256 {sha256}\nsize {size}\n"
    )
    .into_bytes()
}

/// Checks a release version: 1 to 64 bytes of letters, digits and `.+-_`,
/// starting with a letter or digit.
pub fn check_version(path: &str, version: &str) -> Result<(), SpecError> {
    let ok = !version.is_empty()
        && version.len() <= MAX_VERSION_BYTES
        && version.as_bytes()[0].is_ascii_alphanumeric()
        && version
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".+-_".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(SpecError::new(
            path,
            format!(
                "{version:?} is not a valid release version: use 1 to {MAX_VERSION_BYTES} letters, digits and '.', '+', '-', '_', starting with a letter or digit"
            ),
        ))
    }
}

/// Checks a platform name: `{os}-{arch}`, lowercase letters, digits and `_`.
pub fn check_platform(path: &str, platform: &str) -> Result<(), SpecError> {
    let ok = platform.len() <= 32
        && platform.split_once('-').is_some_and(|(os, arch)| {
            let part = |s: &str| {
                !s.is_empty()
                    && s.bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            };
            part(os) && part(arch)
        });
    if ok {
        Ok(())
    } else {
        Err(SpecError::new(
            path,
            format!("{platform:?} is not a platform: use OS-ARCH, such as linux-x86_64"),
        ))
    }
}

/// ELF's `e_machine` of each architecture a release may hold.
const ELF_MACHINES: [(u16, &str); 2] = [(62, "x86_64"), (183, "aarch64")];

/// The platform an agent binary is built for, read from its ELF header
/// (the first 64 bytes suffice): a 64-bit little-endian executable
/// (`ET_EXEC`, or `ET_DYN` as position-independent executables are) for
/// x86_64 or aarch64. The error says what the bytes are instead.
pub fn elf_platform(header: &[u8]) -> Result<String, String> {
    if header.len() < 64 || &header[..4] != b"\x7fELF" {
        return Err("is not an ELF executable (no ELF header)".to_owned());
    }
    if header[4] != 2 || header[5] != 1 {
        return Err("is not a 64-bit little-endian ELF executable".to_owned());
    }
    let e_type = u16::from_le_bytes([header[16], header[17]]);
    if e_type != 2 && e_type != 3 {
        return Err(format!(
            "is an ELF file of type {e_type}, not an executable"
        ));
    }
    let machine = u16::from_le_bytes([header[18], header[19]]);
    let arch = ELF_MACHINES
        .iter()
        .find(|(m, _)| *m == machine)
        .map(|(_, arch)| *arch)
        .ok_or_else(|| {
            format!(
                "is an ELF executable for machine {machine}, neither x86_64 (62) nor aarch64 (183)"
            )
        })?;
    Ok(format!("linux-{arch}"))
}

impl AgentRelease {
    /// Checks every field's form (not the signatures: the agent does,
    /// with its pinned key).
    pub fn validate(&self, path: &str) -> Result<(), SpecError> {
        check_version(&format!("{path}.version"), &self.version)?;
        let key = base64::engine::general_purpose::STANDARD
            .decode(&self.signing_key)
            .ok();
        if key.is_none_or(|key| key.len() != 32) {
            return Err(SpecError::new(
                format!("{path}.signingKey"),
                "must be an Ed25519 public key: 32 bytes in base64",
            ));
        }
        if self.binaries.is_empty() || self.binaries.len() > MAX_PLATFORMS {
            return Err(SpecError::new(
                format!("{path}.binaries"),
                format!("must name 1 to {MAX_PLATFORMS} platforms"),
            ));
        }
        for (platform, binary) in &self.binaries {
            let path = format!("{path}.binaries.{platform}");
            check_platform(&path, platform)?;
            binary.validate(&path)?;
        }
        if self.download_token.is_empty() || self.download_token.len() > 256 {
            return Err(SpecError::new(
                format!("{path}.downloadToken"),
                "must be 1 to 256 bytes",
            ));
        }
        Ok(())
    }
}

impl AgentBinary {
    fn validate(&self, path: &str) -> Result<(), SpecError> {
        if self.sha256.len() != 64
            || !self
                .sha256
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(SpecError::new(
                format!("{path}.sha256"),
                "must be 64 lowercase hex digits",
            ));
        }
        if self.size == 0 || self.size > MAX_BINARY_BYTES {
            return Err(SpecError::new(
                format!("{path}.size"),
                format!("must be 1 to {MAX_BINARY_BYTES} bytes"),
            ));
        }
        let signature = base64::engine::general_purpose::STANDARD
            .decode(&self.signature)
            .ok();
        if signature.is_none_or(|signature| signature.len() != 64) {
            return Err(SpecError::new(
                format!("{path}.signature"),
                "must be an Ed25519 signature: 64 bytes in base64",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn release() -> AgentRelease {
        let b64 = |n: usize| base64::engine::general_purpose::STANDARD.encode(vec![7u8; n]);
        AgentRelease {
            version: "0.2.0".into(),
            signing_key: b64(32),
            binaries: BTreeMap::from([(
                "linux-x86_64".into(),
                AgentBinary {
                    sha256: "ab".repeat(32),
                    size: 10,
                    signature: b64(64),
                },
            )]),
            download_token: "t".into(),
            allow_downgrade: false,
        }
    }

    #[test]
    fn an_older_agent_reads_a_release_with_fields_it_does_not_know() {
        let mut sent = serde_json::to_value(release()).expect("JSON");
        sent["allowDowngrade"] = true.into();
        sent["someFutureField"] = "x".into();
        sent["binaries"]["linux-x86_64"]["compression"] = "zstd".into();
        let read: AgentRelease = serde_json::from_value(sent).expect("read");
        assert_eq!(
            AgentRelease {
                allow_downgrade: true,
                ..release()
            },
            read
        );
    }

    #[test]
    fn a_well_formed_release_passes_and_each_bad_field_is_named() {
        assert_eq!(release().validate("a"), Ok(()));
        let mut bad = release();
        bad.version = "../x".into();
        assert_eq!(bad.validate("a").expect_err("version").path, "a.version");
        let mut bad = release();
        bad.signing_key = "short".into();
        assert_eq!(bad.validate("a").expect_err("key").path, "a.signingKey");
        let mut bad = release();
        bad.binaries
            .insert("Linux x86".into(), bad.binaries["linux-x86_64"].clone());
        assert_eq!(
            bad.validate("a").expect_err("platform").path,
            "a.binaries.Linux x86"
        );
        let mut bad = release();
        bad.binaries.get_mut("linux-x86_64").expect("there").sha256 = "AB".repeat(32);
        assert_eq!(
            bad.validate("a").expect_err("sha").path,
            "a.binaries.linux-x86_64.sha256"
        );
    }

    #[test]
    fn the_elf_header_names_the_platform_or_the_problem() {
        let mut header = vec![0u8; 64];
        header[..4].copy_from_slice(b"\x7fELF");
        header[4] = 2;
        header[5] = 1;
        header[16] = 3;
        header[18] = 183;
        assert_eq!(elf_platform(&header).as_deref(), Ok("linux-aarch64"));
        header[18] = 62;
        assert_eq!(elf_platform(&header).as_deref(), Ok("linux-x86_64"));
        header[18] = 40;
        assert!(
            elf_platform(&header)
                .expect_err("arm32")
                .contains("machine 40")
        );
        header[4] = 1;
        assert!(
            elf_platform(&header)
                .expect_err("32-bit")
                .contains("64-bit")
        );
        assert!(
            elf_platform(b"#!/bin/sh\n")
                .expect_err("script")
                .contains("not an ELF")
        );
    }

    #[test]
    fn the_signed_message_binds_version_and_platform() {
        let one = signed_message("1.0", "linux-x86_64", "aa", 1);
        assert_ne!(one, signed_message("0.9", "linux-x86_64", "aa", 1));
        assert_ne!(one, signed_message("1.0", "linux-aarch64", "aa", 1));
        assert!(platform().starts_with("linux-") || !cfg!(target_os = "linux"));
    }
}
