//! `tether login`: trust a tetherd's CA, sign in, and save the session.

use std::io::{BufRead, IsTerminal};
use std::path::PathBuf;

use tether_proto::api::LoginRequest;
use tether_proto::ca::{self, CaPemError};

use super::{CommandError, Context, Outcome};
use crate::client::{self, ApiClient, ClientError};
use crate::config::CliConfig;
use crate::output;

/// The environment variable scripts pass the password in.
const PASSWORD_ENV: &str = "TETHER_PASSWORD";

const EXAMPLES: &str = "\
Examples:
  # Trust the CA file copied from tetherd's data dir (DATA_DIR/ca.pem)
  tether login https://tether.example:8443 --ca-file ca.pem

  # Trust on first use, pinned by the CA's SHA-256 fingerprint
  tether login https://tether.example:8443 --ca-sha256 3f5a…e1

  # From a script
  printf '%s\\n' \"$PASS\" | tether login https://tether.example:8443 --password-stdin
  TETHER_PASSWORD=… tether login https://tether.example:8443

Logging in again to the same server reuses the CA saved the first time.
The password comes from --password-stdin, else TETHER_PASSWORD, else a prompt
on the terminal.";

/// Log in to a tetherd and save the server, its CA and the session token.
#[derive(Debug, clap::Args)]
#[command(after_long_help = EXAMPLES)]
pub struct Login {
    /// tetherd's API, e.g. https://tether.example:8443.
    server_url: String,
    #[arg(long, default_value = "admin")]
    username: String,
    /// Read the password from the first line of standard input.
    #[arg(long)]
    password_stdin: bool,
    /// Trust this CA certificate (PEM), e.g. a copy of tetherd's DATA_DIR/ca.pem.
    #[arg(long, value_name = "PATH", conflicts_with = "ca_sha256")]
    ca_file: Option<PathBuf>,
    /// Fetch tetherd's CA and trust it only if the SHA-256 of its DER is this (hex).
    #[arg(long, value_name = "HEX", value_parser = parse_fingerprint)]
    ca_sha256: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    #[error(
        "no CA to trust for {server}: pass --ca-file PATH (a copy of tetherd's DATA_DIR/ca.pem) or --ca-sha256 HEX (its fingerprint)"
    )]
    NoCa { server: String },
    #[error("cannot read the CA file {}", path.display())]
    ReadCaFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "refusing the CA file {}: it must hold tetherd's CA certificate alone, as DATA_DIR/ca.pem does",
        path.display()
    )]
    CaFileNotOneCertificate {
        path: PathBuf,
        #[source]
        source: CaPemError,
    },
    #[error(
        "refusing the CA that {server} serves: tetherd serves its CA certificate alone, so you may not be talking to the tetherd you expect"
    )]
    ServedCaNotOneCertificate {
        server: String,
        #[source]
        source: CaPemError,
    },
    #[error(
        "the CA that {server} serves has SHA-256 {actual}, not {expected}: check the fingerprint, or you may not be talking to the tetherd you expect"
    )]
    FingerprintMismatch {
        server: String,
        expected: String,
        actual: String,
    },
    #[error(
        "no password: standard input is not a terminal, so pass --password-stdin or set {PASSWORD_ENV}"
    )]
    NoPassword,
    #[error("the password is empty")]
    EmptyPassword,
    #[error("{PASSWORD_ENV} is not valid UTF-8")]
    PasswordNotUnicode,
    #[error("cannot read the password from standard input")]
    ReadPassword(#[source] std::io::Error),
    #[error("cannot turn off the terminal's echo for the password prompt")]
    Terminal(#[source] nix::Error),
    #[error("tetherd refused user {username:?}: wrong username or password")]
    Refused { username: String },
}

impl Login {
    pub fn description(&self) -> String {
        format!("log in to {}", self.server_url)
    }

    pub async fn run(self, ctx: &Context) -> Result<Outcome, CommandError> {
        let server = client::parse_server_url(&self.server_url)?
            .as_str()
            .trim_end_matches('/')
            .to_owned();
        let ca_pem = self.trusted_ca(ctx, &server).await?;
        let password = self.password(&server)?;
        let client = ApiClient::new(&server, &ca_pem, None)?;
        let request = LoginRequest {
            username: self.username.clone(),
            password,
        };
        let session = client.login(&request).await.map_err(|err| match err {
            ClientError::Unauthorized { .. } => CommandError::Login(LoginError::Refused {
                username: self.username.clone(),
            }),
            err => err.into(),
        })?;
        CliConfig::save_session(&ctx.config_path, &server, &ca_pem, &session.token)?;
        output::emit(&format!(
            "Logged in to {server} as {}; the session expires {}.\nSaved to {}.",
            self.username,
            output::timestamp(session.expires_at),
            ctx.config_path.display()
        ))?;
        Ok(Outcome::Success)
    }

    /// The CA to trust: a given file, a fetched one that matches the given
    /// fingerprint, or the one saved by an earlier login to the same server.
    /// A given or fetched PEM must hold exactly one certificate: TLS trusts
    /// every certificate in it, and only one can be the checked one.
    async fn trusted_ca(&self, ctx: &Context, server: &str) -> Result<Vec<u8>, CommandError> {
        if let Some(path) = &self.ca_file {
            let pem = std::fs::read(path).map_err(|source| LoginError::ReadCaFile {
                path: path.clone(),
                source,
            })?;
            single_ca(&pem).map_err(|source| LoginError::CaFileNotOneCertificate {
                path: path.clone(),
                source,
            })?;
            return Ok(pem);
        }
        if let Some(expected) = &self.ca_sha256 {
            let pem = ApiClient::fetch_ca_unverified(server).await?;
            check_pinned_ca(server, &pem, expected)?;
            return Ok(pem);
        }
        match CliConfig::load_if_present(&ctx.config_path)? {
            Some(config) if config.server == server => Ok(config.read_ca()?),
            _ => Err(LoginError::NoCa {
                server: server.to_owned(),
            }
            .into()),
        }
    }

    fn password(&self, server: &str) -> Result<String, LoginError> {
        let password = if self.password_stdin {
            read_line(std::io::stdin().lock())?
        } else if let Some(password) = std::env::var_os(PASSWORD_ENV) {
            password
                .into_string()
                .map_err(|_| LoginError::PasswordNotUnicode)?
        } else if std::io::stdin().is_terminal() {
            prompt_hidden(&format!("Password for {} at {server}: ", self.username))?
        } else {
            return Err(LoginError::NoPassword);
        };
        if password.is_empty() {
            return Err(LoginError::EmptyPassword);
        }
        Ok(password)
    }
}

/// Reads a password on the terminal with the echo off. nix's termios calls
/// are safe wrappers, which keeps the crate free of `unsafe`.
pub(super) fn prompt_hidden(prompt: &str) -> Result<String, LoginError> {
    use nix::sys::termios::{LocalFlags, SetArg, tcgetattr, tcsetattr};

    let stdin = std::io::stdin();
    let original = tcgetattr(&stdin).map_err(LoginError::Terminal)?;
    let mut hidden = original.clone();
    hidden.local_flags.remove(LocalFlags::ECHO);
    // The Enter key still moves the cursor to the next line.
    hidden.local_flags.insert(LocalFlags::ECHONL);
    eprint!("{prompt}");
    tcsetattr(&stdin, SetArg::TCSANOW, &hidden).map_err(LoginError::Terminal)?;
    let line = read_line(stdin.lock());
    let restored = tcsetattr(&stdin, SetArg::TCSANOW, &original).map_err(LoginError::Terminal);
    let line = line?;
    restored?;
    Ok(line)
}

pub(super) fn read_line(mut input: impl BufRead) -> Result<String, LoginError> {
    let mut line = String::new();
    input
        .read_line(&mut line)
        .map_err(LoginError::ReadPassword)?;
    let trimmed = line.strip_suffix('\n').unwrap_or(&line);
    Ok(trimmed.strip_suffix('\r').unwrap_or(trimmed).to_owned())
}

/// The fingerprint of `pem`, which must hold exactly one certificate.
fn single_ca(pem: &[u8]) -> Result<String, CaPemError> {
    // PEM is ASCII: bytes that are not UTF-8 hold no PEM certificate.
    let text = std::str::from_utf8(pem).map_err(|_| CaPemError::NoCertificate)?;
    ca::ca_fingerprint(text)
}

/// Accepts the CA that `server` served only if it is one certificate with
/// the `expected` fingerprint.
fn check_pinned_ca(server: &str, pem: &[u8], expected: &str) -> Result<(), LoginError> {
    let actual = single_ca(pem).map_err(|source| LoginError::ServedCaNotOneCertificate {
        server: server.to_owned(),
        source,
    })?;
    if ca::fingerprints_match(expected, &actual) {
        Ok(())
    } else {
        Err(LoginError::FingerprintMismatch {
            server: server.to_owned(),
            expected: expected.to_owned(),
            actual,
        })
    }
}

/// Accepts `ab12…`, `AB:12:…` and a `sha256:` prefix; gives lowercase hex without colons.
fn parse_fingerprint(s: &str) -> Result<String, String> {
    ca::normalize_fingerprint(s)
        .ok_or_else(|| "expected a SHA-256 fingerprint: 64 hex digits, colons allowed".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    // PEM framing around bytes that are no real certificate: the fingerprint
    // hashes whatever DER the block holds, without parsing it.
    const REAL: &str =
        "-----BEGIN CERTIFICATE-----\nAQIDBAUGBwgJCgsMDQ4PEA==\n-----END CERTIFICATE-----\n";
    const ATTACKER: &str =
        "-----BEGIN CERTIFICATE-----\nERITFBUWFxgZGhscHR4fIA==\n-----END CERTIFICATE-----\n";

    #[test]
    fn a_served_ca_is_accepted_only_alone_and_with_the_pinned_fingerprint() {
        let pinned = ca::ca_fingerprint(REAL).expect("one certificate");
        let server = "https://tether.example:8443";
        check_pinned_ca(server, REAL.as_bytes(), &pinned).expect("the pinned CA alone");

        // The real CA first, so its fingerprint matches, and the attacker's
        // after it: trusting this PEM would trust both.
        let bundle = format!("{REAL}{ATTACKER}");
        let err = check_pinned_ca(server, bundle.as_bytes(), &pinned).expect_err("two");
        assert!(matches!(
            err,
            LoginError::ServedCaNotOneCertificate {
                source: CaPemError::SeveralCertificates { count: 2 },
                ..
            }
        ));
        let message = format!("{:#}", anyhow::Error::from(err)); // as main prints it
        assert!(
            message.starts_with("refusing the CA that https://tether.example:8443 serves")
                && message.ends_with(
                    "it holds 2 certificates, not one, and a TLS client would trust all of them"
                ),
            "{message}"
        );

        let err = check_pinned_ca(server, ATTACKER.as_bytes(), &pinned).expect_err("other");
        assert!(matches!(err, LoginError::FingerprintMismatch { .. }));
        let err = check_pinned_ca(server, b"<html>", &pinned).expect_err("no PEM");
        assert!(matches!(
            err,
            LoginError::ServedCaNotOneCertificate {
                source: CaPemError::NoCertificate,
                ..
            }
        ));
    }

    #[test]
    fn fingerprints_may_have_colons_and_capitals() {
        let plain = "ab".repeat(32);
        let colons = vec!["AB"; 32].join(":");
        assert_eq!(parse_fingerprint(&plain), Ok(plain.clone()));
        assert_eq!(parse_fingerprint(&colons), Ok(plain));
        assert!(parse_fingerprint("abcd").is_err());
        assert!(parse_fingerprint(&"zz".repeat(32)).is_err());
    }

    #[test]
    fn a_password_line_loses_only_its_line_ending() {
        assert_eq!(
            read_line(&b"s3cret \r\nrest"[..]).expect("reads"),
            "s3cret "
        );
        assert_eq!(read_line(&b"s3cret"[..]).expect("reads"), "s3cret");
    }
}
