//! Slow password hashes: tetherd's users' passwords and the devices'
//! management-shell passwords, which tetherd stores and the agent's
//! `tether-agent-shell` checks (ADR 0023), in one format both read.
//!
//! `pbkdf2-sha256$<iterations>$<salt hex>$<hash hex>`.

use std::num::NonZeroU32;

use ring::rand::SecureRandom as _;

/// PBKDF2-HMAC-SHA256 rounds for new hashes.
pub const ITERATIONS: u32 = 100_000;

/// A new hash of `password` with a random salt.
pub fn hash(password: &str) -> String {
    let mut salt = [0u8; 16];
    // The system's random source failing leaves nothing safe to do.
    if ring::rand::SystemRandom::new().fill(&mut salt).is_err() {
        panic!("the system random number generator failed");
    }
    let mut out = [0u8; 32];
    let iterations = NonZeroU32::new(ITERATIONS).unwrap_or(NonZeroU32::MIN);
    ring::pbkdf2::derive(
        ring::pbkdf2::PBKDF2_HMAC_SHA256,
        iterations,
        &salt,
        password.as_bytes(),
        &mut out,
    );
    format!(
        "pbkdf2-sha256${ITERATIONS}${}${}",
        hex::encode(salt),
        hex::encode(out)
    )
}

/// Whether `password` is the one `encoded` was made from; `false` for
/// anything that is not a hash of this format.
pub fn verify(password: &str, encoded: &str) -> bool {
    let mut parts = encoded.split('$');
    let (Some("pbkdf2-sha256"), Some(iterations), Some(salt), Some(hash), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return false;
    };
    let (Ok(iterations), Ok(salt), Ok(hash)) = (
        iterations.parse::<u32>(),
        hex::decode(salt),
        hex::decode(hash),
    ) else {
        return false;
    };
    let Some(iterations) = NonZeroU32::new(iterations) else {
        return false;
    };
    ring::pbkdf2::verify(
        ring::pbkdf2::PBKDF2_HMAC_SHA256,
        iterations,
        &salt,
        password.as_bytes(),
        &hash,
    )
    .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_verify_only_with_the_right_password() {
        let encoded = hash("correct horse");
        assert!(encoded.starts_with("pbkdf2-sha256$100000$"));
        assert!(verify("correct horse", &encoded));
        assert!(!verify("wrong horse", &encoded));
        assert!(!verify("correct horse", "garbage"));
        assert!(!verify("correct horse", "pbkdf2-sha256$0$00$00"));
    }
}
