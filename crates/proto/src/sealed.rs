//! Sealed secrets (issue 17, ADR 0030): a value encrypted by tetherd to one
//! device's X25519 public key, which only that device's private key opens.
//!
//! A sealed box, built from what the binaries link already: an ephemeral
//! X25519 key agreement with the recipient's key (ring), HKDF-SHA256 over
//! the shared secret (salt: ephemeral public ‖ recipient public, info: a
//! fixed label), and ChaCha20-Poly1305 under the derived key with a zero
//! nonce — safe because every key is derived from a fresh ephemeral key
//! and used once. The sealed form is `version ‖ ephemeral public ‖
//! ciphertext and tag`, base64. Opening needs a static private key, which
//! ring does not offer: curve25519-dalek (already linked by the agent
//! through russh) does the scalar multiplication.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use curve25519_dalek::montgomery::MontgomeryPoint;
use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};
use ring::agreement::{self, EphemeralPrivateKey, UnparsedPublicKey, X25519};
use ring::hkdf;
use ring::rand::{SecureRandom, SystemRandom};
use zeroize::{Zeroize, Zeroizing};

/// The first byte of every sealed value.
pub const VERSION: u8 = 1;
/// An X25519 key, public or private.
pub const KEY_BYTES: usize = 32;
/// Longest value a secret may have. Secrets travel in the device's spec
/// (64 KiB in all, every section included) once per targeted device; 16
/// KiB holds passwords, tokens, TLS keys and certificates with room left
/// for the rest of the spec.
pub const MAX_VALUE_BYTES: usize = 16 * 1024;
/// Longest sealed value (base64 of the largest box).
pub const MAX_SEALED_BYTES: usize = (1 + KEY_BYTES + MAX_VALUE_BYTES + TAG_BYTES).div_ceil(3) * 4;
/// Longest public key as reported (base64 of 32 bytes is 44).
pub const MAX_PUBLIC_KEY_BYTES: usize = 64;

const TAG_BYTES: usize = 16;
const INFO: &[u8] = b"tether sealed secret v1";

/// Why a value could not be sealed or opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    #[error("is not a base64 X25519 public key of {KEY_BYTES} bytes")]
    BadPublicKey,
    #[error("is not base64")]
    NotBase64,
    #[error("is too short to be a sealed value")]
    TooShort,
    #[error("is sealed with format version {0}, this agent knows version {VERSION}")]
    Version(u8),
    #[error("could not be opened: it was sealed to another key or is damaged")]
    Refused,
    #[error("the system random number generator failed")]
    Random,
}

/// A device's public key, which values are sealed to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublicKey([u8; KEY_BYTES]);

impl PublicKey {
    /// Parses the base64 form a device reports.
    pub fn parse(text: &str) -> Result<Self, SealError> {
        let bytes = STANDARD
            .decode(text.trim())
            .map_err(|_| SealError::BadPublicKey)?;
        let bytes: [u8; KEY_BYTES] = bytes.try_into().map_err(|_| SealError::BadPublicKey)?;
        let key = Self(bytes);
        // A low-order point is 32 bytes like any key, but nothing can be
        // sealed to it (every sender would share the all-zero secret): a
        // device reporting one must not be recorded as sealable. One
        // sealing of nothing tells, whichever of the points it is.
        seal(&key, b"").map_err(|_| SealError::BadPublicKey)?;
        Ok(key)
    }

    /// The base64 form.
    pub fn encode(&self) -> String {
        STANDARD.encode(self.0)
    }
}

/// A device's private key: never leaves the device; zeroed when dropped.
pub struct SecretKey([u8; KEY_BYTES]);

impl Drop for SecretKey {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl SecretKey {
    /// A new random key.
    pub fn generate() -> Result<Self, SealError> {
        let mut bytes = [0u8; KEY_BYTES];
        SystemRandom::new()
            .fill(&mut bytes)
            .map_err(|_| SealError::Random)?;
        Ok(Self(bytes))
    }

    pub fn from_bytes(bytes: [u8; KEY_BYTES]) -> Self {
        Self(bytes)
    }

    pub fn as_bytes(&self) -> &[u8; KEY_BYTES] {
        &self.0
    }

    pub fn public_key(&self) -> PublicKey {
        PublicKey(MontgomeryPoint::mul_base_clamped(self.0).to_bytes())
    }

    /// Opens a value [`seal`]ed to this key's public half.
    pub fn open(&self, sealed: &str) -> Result<Zeroizing<Vec<u8>>, SealError> {
        let mut bytes = STANDARD
            .decode(sealed.trim())
            .map_err(|_| SealError::NotBase64)?;
        let Some((&version, rest)) = bytes.split_first() else {
            return Err(SealError::TooShort);
        };
        if version != VERSION {
            return Err(SealError::Version(version));
        }
        if rest.len() < KEY_BYTES + TAG_BYTES {
            return Err(SealError::TooShort);
        }
        let ephemeral: [u8; KEY_BYTES] = rest[..KEY_BYTES]
            .try_into()
            .map_err(|_| SealError::TooShort)?;
        let shared = Zeroizing::new(MontgomeryPoint(ephemeral).mul_clamped(self.0).to_bytes());
        // A low-order ephemeral point gives the all-zero secret, which any
        // key would share: refused, as ring refuses it when sealing.
        if shared.iter().all(|b| *b == 0) {
            return Err(SealError::Refused);
        }
        let key = box_key(&shared[..], &ephemeral, &self.public_key().0)?;
        let ciphertext = &mut bytes[1 + KEY_BYTES..];
        let opened = key
            .open_in_place(zero_nonce(), Aad::empty(), ciphertext)
            .map_err(|_| SealError::Refused)?;
        let plaintext = Zeroizing::new(opened.to_vec());
        bytes.zeroize();
        Ok(plaintext)
    }
}

/// Seals `value` to `recipient`: only its private key opens the result.
pub fn seal(recipient: &PublicKey, value: &[u8]) -> Result<String, SealError> {
    let rng = SystemRandom::new();
    let ephemeral = EphemeralPrivateKey::generate(&X25519, &rng).map_err(|_| SealError::Random)?;
    let ephemeral_public = ephemeral
        .compute_public_key()
        .map_err(|_| SealError::Random)?;
    let ephemeral_public: [u8; KEY_BYTES] = ephemeral_public
        .as_ref()
        .try_into()
        .map_err(|_| SealError::Random)?;
    let key = agreement::agree_ephemeral(
        ephemeral,
        &UnparsedPublicKey::new(&X25519, recipient.0),
        |shared| box_key(shared, &ephemeral_public, &recipient.0),
    )
    .map_err(|_| SealError::BadPublicKey)??;
    let mut sealed = Vec::with_capacity(1 + KEY_BYTES + value.len() + TAG_BYTES);
    sealed.push(VERSION);
    sealed.extend_from_slice(&ephemeral_public);
    let mut ciphertext = Zeroizing::new(value.to_vec());
    let tag = key
        .seal_in_place_separate_tag(zero_nonce(), Aad::empty(), &mut ciphertext[..])
        .map_err(|_| SealError::Random)?;
    sealed.extend_from_slice(&ciphertext);
    sealed.extend_from_slice(tag.as_ref());
    Ok(STANDARD.encode(sealed))
}

/// The box's one-time key: HKDF-SHA256 of the shared secret, salted with
/// both public keys so a box is bound to its sender and recipient.
fn box_key(
    shared: &[u8],
    ephemeral: &[u8; KEY_BYTES],
    recipient: &[u8; KEY_BYTES],
) -> Result<LessSafeKey, SealError> {
    let mut salt = [0u8; 2 * KEY_BYTES];
    salt[..KEY_BYTES].copy_from_slice(ephemeral);
    salt[KEY_BYTES..].copy_from_slice(recipient);
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, &salt).extract(shared);
    let okm = prk
        .expand(&[INFO], &CHACHA20_POLY1305)
        .map_err(|_| SealError::Refused)?;
    Ok(LessSafeKey::new(UnboundKey::from(okm)))
}

/// Every box key is used for exactly one message, so a fixed nonce is safe.
fn zero_nonce() -> Nonce {
    Nonce::assume_unique_for_key([0u8; ring::aead::NONCE_LEN])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_value_opens_with_its_key_only() {
        let device = SecretKey::generate().expect("key");
        let other = SecretKey::generate().expect("key");
        let sealed = seal(&device.public_key(), b"hunter2").expect("seal");
        assert_eq!(&device.open(&sealed).expect("open")[..], b"hunter2");
        assert_eq!(other.open(&sealed), Err(SealError::Refused));
        // Sealing twice gives two different boxes (a fresh ephemeral key).
        assert_ne!(
            sealed,
            seal(&device.public_key(), b"hunter2").expect("seal")
        );
    }

    #[test]
    fn a_public_key_round_trips_through_its_text_form() {
        let key = SecretKey::generate().expect("key").public_key();
        assert_eq!(PublicKey::parse(&key.encode()), Ok(key));
        assert_eq!(PublicKey::parse("AAAA"), Err(SealError::BadPublicKey));
        assert_eq!(
            PublicKey::parse("not base64!"),
            Err(SealError::BadPublicKey)
        );
    }

    #[test]
    fn every_tampered_byte_is_refused() {
        let device = SecretKey::generate().expect("key");
        let sealed = STANDARD
            .decode(seal(&device.public_key(), b"value").expect("seal"))
            .expect("base64");
        for i in 1..sealed.len() {
            let mut tampered = sealed.clone();
            tampered[i] ^= 0x01;
            assert_eq!(
                device.open(&STANDARD.encode(&tampered)),
                Err(SealError::Refused),
                "byte {i}"
            );
        }
        let mut truncated = sealed.clone();
        truncated.truncate(1 + KEY_BYTES + TAG_BYTES - 1);
        assert_eq!(
            device.open(&STANDARD.encode(&truncated)),
            Err(SealError::TooShort)
        );
    }

    #[test]
    fn another_version_is_refused_by_name() {
        let device = SecretKey::generate().expect("key");
        let mut sealed = STANDARD
            .decode(seal(&device.public_key(), b"value").expect("seal"))
            .expect("base64");
        sealed[0] = 2;
        let error = device.open(&STANDARD.encode(&sealed)).expect_err("v2");
        assert_eq!(error, SealError::Version(2));
        assert!(error.to_string().contains("version 2"), "{error}");
        assert_eq!(device.open("%%%"), Err(SealError::NotBase64));
    }

    #[test]
    fn a_low_order_point_is_refused_not_opened() {
        let device = SecretKey::generate().expect("key");
        let mut forged = vec![VERSION];
        forged.extend_from_slice(&[0u8; KEY_BYTES]);
        forged.extend_from_slice(&[0u8; 40]);
        assert_eq!(
            device.open(&STANDARD.encode(&forged)),
            Err(SealError::Refused)
        );
    }

    #[test]
    fn the_largest_value_fits_the_sealed_limit() {
        let device = SecretKey::generate().expect("key");
        let sealed = seal(&device.public_key(), &vec![7u8; MAX_VALUE_BYTES]).expect("seal");
        assert_eq!(sealed.len(), MAX_SEALED_BYTES);
    }

    /// A key nothing can be sealed to (a low-order point) is refused as
    /// it arrives, so tetherd never records it.
    #[test]
    fn a_low_order_public_key_is_refused_when_parsed() {
        let zero = STANDARD.encode([0u8; KEY_BYTES]);
        assert_eq!(PublicKey::parse(&zero), Err(SealError::BadPublicKey));
        let device = SecretKey::generate().expect("key");
        assert_eq!(
            PublicKey::parse(&device.public_key().encode()),
            Ok(device.public_key())
        );
    }
}
