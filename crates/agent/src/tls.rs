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
    #[error("the request failed")]
    Request(#[source] reqwest::Error),
    #[error(
        "its Date ({date}) is before this device's certificate was issued ({issued}), \
         so it is not tetherd's clock now (a replayed or intercepted answer); not used"
    )]
    DateBeforeCertificate {
        date: DateTime<Utc>,
        issued: DateTime<Utc>,
    },
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

/// Trusts only tetherd's CA, presents no certificate: for its API.
pub fn server_tls_config(
    ca_pem: &str,
    clock: Arc<ServerClock>,
) -> Result<rustls::ClientConfig, TlsError> {
    Ok(builder(ca_pem, clock)?.with_no_client_auth())
}

/// An HTTPS client for tetherd's API that trusts only its CA.
pub fn https_client(ca_pem: &str, clock: Arc<ServerClock>) -> Result<reqwest::Client, TlsError> {
    let config = server_tls_config(ca_pem, clock)?;
    reqwest::Client::builder()
        .use_preconfigured_tls(config)
        .timeout(HTTP_TIMEOUT)
        .build()
        .map_err(TlsError::Client)
}

/// Asks tetherd for the time (the `Date` header of `GET /api/v1/ca.pem`)
/// with its certificate checked against the CA and the host name but not
/// its lifetime, which is what the answer is needed for. Anyone else could
/// set this device's idea of tetherd's time, and with it which certificates
/// it accepts and when it renews its own. tetherd's clock cannot read
/// earlier than `issued`, when it issued this device's certificate: an
/// earlier Date comes from someone with an old, expired server key.
pub async fn learn_server_time(
    api_url: &str,
    ca_pem: &str,
    issued: Option<DateTime<Utc>>,
    clock: &ServerClock,
) -> Result<(), TlsError> {
    let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
        Arc::new(roots(ca_pem)?),
        Arc::new(rustls::crypto::ring::default_provider()),
    )
    .build()
    .map_err(|e| TlsError::Config(rustls::Error::General(e.to_string())))?;
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(TlsError::Config)?
    .dangerous()
    .with_custom_certificate_verifier(Arc::new(AnyTimeVerifier(verifier)))
    .with_no_client_auth();
    let client = reqwest::Client::builder()
        .use_preconfigured_tls(config)
        .timeout(HTTP_TIMEOUT)
        .build()
        .map_err(TlsError::Client)?;
    let sent: DateTime<Utc> = Utc::now();
    let response = client
        .get(format!("{api_url}/api/v1/ca.pem"))
        .send()
        .await
        .map_err(TlsError::Request)?;
    let received = Utc::now();
    if let (Some(date), Some(issued)) = (crate::clock::date_header(response.headers()), issued)
        && date < issued
    {
        return Err(TlsError::DateBeforeCertificate { date, issued });
    }
    clock.learn_from_date_header(response.headers(), sent, received);
    Ok(())
}

/// Verifies a server certificate as of a moment inside its own validity:
/// the chain to tetherd's CA, the host name and the handshake signature all
/// count, only the time does not.
#[derive(Debug)]
struct AnyTimeVerifier(Arc<rustls::client::WebPkiServerVerifier>);

impl rustls::client::danger::ServerCertVerifier for AnyTimeVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &rustls::pki_types::ServerName<'_>,
        ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        let (_, cert) = x509_parser::parse_x509_certificate(end_entity).map_err(|_| {
            rustls::Error::InvalidCertificate(rustls::CertificateError::BadEncoding)
        })?;
        let inside = u64::try_from(cert.validity().not_before.timestamp().saturating_add(1))
            .unwrap_or_default();
        self.0.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            rustls::pki_types::UnixTime::since_unix_epoch(Duration::from_secs(inside)),
        )
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A CA and a `localhost` server certificate it signed, valid only in
    /// 2020.
    fn ca_and_expired_server_cert() -> (String, String, String) {
        let ca_key = KeyPair::generate().expect("key");
        let mut ca = CertificateParams::default();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_pem = ca.self_signed(&ca_key).expect("CA").pem();
        let issuer = Issuer::new(ca, ca_key);
        let key = KeyPair::generate().expect("key");
        let mut server = CertificateParams::new(vec!["localhost".into()]).expect("params");
        server.not_before = time::OffsetDateTime::from_unix_timestamp(1_577_836_800).expect("2020");
        server.not_after = time::OffsetDateTime::from_unix_timestamp(1_609_372_800).expect("2020");
        let cert = server.signed_by(&key, &issuer).expect("signs");
        (ca_pem, cert.pem(), key.serialize_pem())
    }

    /// Serves one HTTPS answer dated 1 January 2020 with `cert_pem`/`key_pem`
    /// on loopback; returns its URL.
    async fn serve_dated_answer(cert_pem: &str, key_pem: &str) -> String {
        let chain = rustls_pemfile::certs(&mut cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .expect("certs");
        let key = rustls_pemfile::private_key(&mut key_pem.as_bytes())
            .expect("key")
            .expect("a key");
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .expect("config");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binds");
        let port = listener.local_addr().expect("addr").port();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    continue;
                };
                let mut request = [0u8; 4096];
                let _ = tls.read(&mut request).await;
                let _ = tls
                    .write_all(
                        b"HTTP/1.1 200 OK\r\nDate: Wed, 01 Jan 2020 12:00:00 GMT\r\n\
                          Content-Length: 0\r\nConnection: close\r\n\r\n",
                    )
                    .await;
                let _ = tls.shutdown().await;
            }
        });
        format!("https://localhost:{port}")
    }

    #[tokio::test]
    async fn the_time_is_learned_only_from_a_server_the_ca_vouches_for() {
        crate::install_crypto_provider();
        let (ca_pem, cert_pem, key_pem) = ca_and_expired_server_cert();
        let (_, stranger_cert_pem, stranger_key_pem) = ca_and_expired_server_cert();

        // A man in the middle with a certificate of another CA: its date is
        // not taken.
        let impostor = serve_dated_answer(&stranger_cert_pem, &stranger_key_pem).await;
        let clock = ServerClock::default();
        learn_server_time(&impostor, &ca_pem, None, &clock)
            .await
            .expect_err("not our CA");
        assert_eq!(clock.offset(), chrono::Duration::zero());

        // tetherd's own certificate counts even when expired by this
        // device's clock: that is what the time is needed for.
        let tetherd = serve_dated_answer(&cert_pem, &key_pem).await;
        // An answer dated before this device's certificate was issued is
        // an old server key's, not tetherd now.
        let issued = DateTime::from_timestamp(1_600_000_000, 0).expect("2020-09");
        learn_server_time(&tetherd, &ca_pem, Some(issued), &clock)
            .await
            .expect_err("dated before the device's certificate");
        assert_eq!(clock.offset(), chrono::Duration::zero());
        learn_server_time(&tetherd, &ca_pem, None, &clock)
            .await
            .expect("our CA, any time");
        assert!(
            clock.offset() < -chrono::Duration::days(300),
            "{:?}",
            clock.offset()
        );
    }
}
