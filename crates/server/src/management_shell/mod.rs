//! The management shell's rules on tetherd's side (ADR 0023): which SSH
//! public keys a user may register, and the devices' shell passwords.
//! No IO: the API stores what these return.

use rand::Rng as _;
use ssh_key::{Algorithm, EcdsaCurve, HashAlg, PublicKey};

/// Length of a generated shell password: 24 characters of 62 are 142 bits.
pub const GENERATED_PASSWORD_LEN: usize = 24;
/// The shortest password an operator may choose.
pub const MIN_PASSWORD_LEN: usize = 12;
/// The longest key name.
pub const MAX_KEY_NAME_LEN: usize = 100;

/// A public key as tetherd stores it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedKey {
    /// `type base64`, the comment dropped.
    pub public_key: String,
    /// `SHA256:…`.
    pub fingerprint: String,
    /// The key's comment, if it has one.
    pub comment: Option<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    #[error(
        "the public key is not one line of an OpenSSH public key file (`ssh-ed25519 AAAA… comment`, as in ~/.ssh/id_ed25519.pub): {reason}"
    )]
    NotAKey { reason: String },
    #[error(
        "{algorithm} keys are not accepted by the management shell; use ed25519 or ECDSA (ssh-keygen -t ed25519)"
    )]
    Unsupported { algorithm: String },
    #[error("the key's name is longer than {MAX_KEY_NAME_LEN} characters or not printable")]
    BadName,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PasswordError {
    #[error("the shell password must be at least {MIN_PASSWORD_LEN} characters")]
    TooShort,
    #[error(
        "the shell password must be at most {} characters",
        tether_proto::api::MAX_PASSWORD_LEN
    )]
    TooLong,
}

/// Parses one line of an OpenSSH public key file and checks that the
/// embedded server can verify its signatures (ring: ed25519 and ECDSA).
pub fn parse_public_key(text: &str) -> Result<ParsedKey, KeyError> {
    let line = text.trim();
    if line.contains('\n') {
        return Err(KeyError::NotAKey {
            reason: "it has more than one line; add one key at a time".to_owned(),
        });
    }
    let key = PublicKey::from_openssh(line).map_err(|error| KeyError::NotAKey {
        reason: error.to_string(),
    })?;
    match key.algorithm() {
        Algorithm::Ed25519
        | Algorithm::Ecdsa {
            curve: EcdsaCurve::NistP256 | EcdsaCurve::NistP384 | EcdsaCurve::NistP521,
        } => {}
        other => {
            return Err(KeyError::Unsupported {
                algorithm: other.as_str().to_owned(),
            });
        }
    }
    let comment = Some(key.comment().as_str_lossy().trim())
        .filter(|comment| !comment.is_empty())
        .map(str::to_owned);
    let mut bare = key.clone();
    bare.set_comment("");
    let public_key = bare.to_openssh().map_err(|error| KeyError::NotAKey {
        reason: error.to_string(),
    })?;
    Ok(ParsedKey {
        public_key: public_key.trim().to_owned(),
        fingerprint: key.fingerprint(HashAlg::Sha256).to_string(),
        comment,
    })
}

/// The name a key is listed under: the one given, else its comment, else
/// its fingerprint.
pub fn key_name(given: Option<&str>, key: &ParsedKey) -> Result<String, KeyError> {
    let name = given
        .map(str::trim)
        .or(key.comment.as_deref())
        .unwrap_or(&key.fingerprint)
        .to_owned();
    if name.is_empty()
        || name.chars().count() > MAX_KEY_NAME_LEN
        || name.chars().any(char::is_control)
    {
        return Err(KeyError::BadName);
    }
    Ok(name)
}

/// The password to set: the operator's, checked, or a random one.
pub fn choose_password(given: Option<String>) -> Result<String, PasswordError> {
    match given {
        Some(password) if password.chars().count() < MIN_PASSWORD_LEN => {
            Err(PasswordError::TooShort)
        }
        Some(password) if password.chars().count() > tether_proto::api::MAX_PASSWORD_LEN => {
            Err(PasswordError::TooLong)
        }
        Some(password) => Ok(password),
        None => Ok(rand::rng()
            .sample_iter(rand::distr::Alphanumeric)
            .take(GENERATED_PASSWORD_LEN)
            .map(char::from)
            .collect()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ED25519: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHWX9gKOFKVY2hOKxkN6sUlYNEsJnicTEdTHNjGPT8Dq alice@laptop";

    #[test]
    fn an_openssh_key_line_is_parsed_with_its_fingerprint_and_comment() {
        let key = parse_public_key(&format!("  {ED25519}\n")).expect("a key");
        assert_eq!(
            key.public_key,
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHWX9gKOFKVY2hOKxkN6sUlYNEsJnicTEdTHNjGPT8Dq"
        );
        // As `ssh-keygen -l -E sha256` prints it.
        assert_eq!(
            key.fingerprint,
            "SHA256:B9WgW3BzoSjxTEwMtG3/LeOzOQ8Dv3ZX/ZlkJGne6B8"
        );
        assert_eq!(key.comment.as_deref(), Some("alice@laptop"));
        assert_eq!(key_name(None, &key).as_deref(), Ok("alice@laptop"));
        assert_eq!(key_name(Some("work"), &key).as_deref(), Ok("work"));
        assert_eq!(key_name(Some("a\tb"), &key), Err(KeyError::BadName));
    }

    #[test]
    fn garbage_and_keys_the_server_cannot_check_are_refused_by_name() {
        for garbage in [
            "",
            "hello world",
            "ssh-ed25519 not-base64!",
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0",
        ] {
            let error = parse_public_key(garbage).expect_err(garbage);
            assert!(
                matches!(error, KeyError::NotAKey { .. }),
                "{garbage}: {error}"
            );
        }
        let two = format!("{ED25519}\n{ED25519}");
        assert!(
            parse_public_key(&two)
                .expect_err("two")
                .to_string()
                .contains("one key at a time")
        );
        let rsa = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAAAgQDWZ99T18793L6fFLolqdA9jo8ZjxnGyROPqv0+Fr4soPF40JEO6Ad4LEtF9t1W+r6F051PpQGOsazaLOXL7ocHV3bSEYY6sIorgYTgXOWcGg0nhvE9CC0yuUNba+n/s2O638G65elVK/opMH6tqAeifwJSi9bhgywOPZ4lqgzXBQ== r";
        assert_eq!(
            parse_public_key(rsa),
            Err(KeyError::Unsupported {
                algorithm: "ssh-rsa".to_owned()
            })
        );
    }

    #[test]
    fn a_shell_password_is_random_unless_given_and_then_long_enough() {
        let generated = choose_password(None).expect("generated");
        assert_eq!(generated.len(), GENERATED_PASSWORD_LEN);
        assert!(generated.chars().all(|c| c.is_ascii_alphanumeric()));
        assert_ne!(choose_password(None), Ok(generated));
        assert_eq!(
            choose_password(Some("short".into())),
            Err(PasswordError::TooShort)
        );
        assert_eq!(
            choose_password(Some("long enough, surely".into())).as_deref(),
            Ok("long enough, surely")
        );
    }
}
