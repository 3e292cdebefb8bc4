//! The agent's TLS clients: they trust only tetherd's CA and judge
//! certificate lifetimes by tetherd's clock ([`ServerClock`]), so a device
//! whose clock is a day off still connects.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::clock::ServerClock;

const HTTP_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error(
        "{file} in the state directory holds no usable {what}: remove the directory and enroll again"
    )]
    BadCredential {
        file: &'static str,
        what: &'static str,
    },
    #[error("cannot build the TLS client configuration")]
    Config(#[source] rustls::Error),
    #[error("cannot set up the HTTPS client")]
    Client(#[source] reqwest::Error),
}

fn roots(ca_pem: &str) -> Result<rustls::RootCertStore, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut ca_pem.as_bytes()).filter_map(Result::ok) {
        roots.add(cert).map_err(TlsError::Config)?;
    }
    if roots.is_empty() {
        return Err(TlsError::BadCredential {
            file: "ca.pem",
            what: "CA certificate",
        });
    }
    Ok(roots)
}

fn builder(
    ca_pem: &str,
    clock: Arc<ServerClock>,
) -> Result<rustls::ConfigBuilder<rustls::ClientConfig, rustls::client::WantsClientCert>, TlsError>
{
    let roots = roots(ca_pem)?;
    Ok(rustls::ClientConfig::builder_with_details(
        Arc::new(rustls::crypto::ring::default_provider()),
        clock,
    )
    .with_safe_default_protocol_versions()
    .map_err(TlsError::Config)?
    .with_root_certificates(roots))
}

/// Trusts only tetherd's CA and presents the device's certificate.
pub fn mutual_tls_config(
    ca_pem: &str,
    cert_pem: &str,
    key_pem: &str,
    clock: Arc<ServerClock>,
) -> Result<rustls::ClientConfig, TlsError> {
    let chain: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut cert_pem.as_bytes())
        .filter_map(Result::ok)
        .collect();
    if chain.is_empty() {
        return Err(TlsError::BadCredential {
            file: "cert.pem",
            what: "certificate",
        });
    }
    let key: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut key_pem.as_bytes())
        .ok()
        .flatten()
        .ok_or(TlsError::BadCredential {
            file: "key.pem",
            what: "private key",
        })?;
    builder(ca_pem, clock)?
        .with_client_auth_cert(chain, key)
        .map_err(TlsError::Config)
}

/// An HTTPS client for tetherd's API that trusts only its CA.
pub fn https_client(ca_pem: &str, clock: Arc<ServerClock>) -> Result<reqwest::Client, TlsError> {
    let config = builder(ca_pem, clock)?.with_no_client_auth();
    reqwest::Client::builder()
        .use_preconfigured_tls(config)
        .timeout(HTTP_TIMEOUT)
        .build()
        .map_err(TlsError::Client)
}

/// Asks tetherd for the time (the `Date` header of `GET /api/v1/ca.pem`)
/// without checking its certificate's lifetime, which is what the answer
/// is needed for. The answer carries nothing else that is used.
pub async fn learn_server_time(api_url: &str, clock: &ServerClock) -> Result<(), reqwest::Error> {
    let client = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .danger_accept_invalid_certs(true)
        .timeout(HTTP_TIMEOUT)
        .build()?;
    let sent: DateTime<Utc> = Utc::now();
    let response = client
        .get(format!("{api_url}/api/v1/ca.pem"))
        .send()
        .await?;
    clock.learn_from_date_header(response.headers(), sent, Utc::now());
    Ok(())
}
