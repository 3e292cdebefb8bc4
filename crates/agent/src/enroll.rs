//! First start: pin the controller's CA by its fingerprint, generate a key
//! pair on the device, and trade a CSR plus a one-time token for a client
//! certificate.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use reqwest::StatusCode;
use tether_proto::api::{EnrollRequest, EnrollResponse, ErrorBody};
use tether_proto::ca::{self, CaPemError};
use tether_proto::{DeviceId, InvalidDeviceId};

use crate::clock::ServerClock;
use crate::state::{AgentConfig, Credentials, StateDir, StateError};
use crate::tls::{self, TlsError};

const HTTP_TIMEOUT: Duration = Duration::from_secs(30);
/// The CN is a placeholder: tetherd sets the certificate's CN to the device name.
const CSR_COMMON_NAME: &str = "tether-agent";

/// What enrollment needs, from `--server`, `--enroll-token` and `--ca-sha256`.
#[derive(Debug, Clone)]
pub struct EnrollOptions {
    pub server: String,
    pub token: String,
    pub ca_sha256: String,
}

#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    #[error(
        "--ca-sha256 {given:?} is not a SHA-256 fingerprint: expected 64 hex digits, as printed by `tether devices add`"
    )]
    BadFingerprint { given: String },
    #[error("--server {given:?} is not an https URL such as https://tether.example:8443")]
    BadServerUrl { given: String },
    #[error("cannot set up the HTTPS client")]
    Client(#[source] reqwest::Error),
    #[error("cannot reach {url}: check --server and that tetherd is running")]
    Connect { url: String, source: reqwest::Error },
    #[error("{url} answered HTTP {status}")]
    Status { url: String, status: StatusCode },
    #[error(
        "refusing the CA certificate from {url}: tetherd serves its CA alone; check that --server points at your tetherd"
    )]
    NotOneCertificate {
        url: String,
        #[source]
        source: CaPemError,
    },
    #[error(
        "refusing to enroll: the server's CA certificate has SHA-256 {actual}, not {expected} as --ca-sha256 says; check the fingerprint (`tether devices enrollment-token NAME` prints it) and that --server points at your tetherd"
    )]
    CaMismatch { expected: String, actual: String },
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("cannot generate the device's key pair")]
    KeyGen(#[source] rcgen::Error),
    #[error(
        "enrollment token refused (already used or expired): ask for a new one with `tether devices add` or `tether devices enrollment-token NAME`"
    )]
    TokenRefused,
    #[error("{url} refused enrollment with HTTP {status}: {message}")]
    Refused {
        url: String,
        status: StatusCode,
        message: String,
    },
    #[error("{url} answered enrollment with something that is not an EnrollResponse")]
    BadResponse { url: String, source: reqwest::Error },
    #[error("the server assigned an invalid device name")]
    Device(#[source] InvalidDeviceId),
    #[error(transparent)]
    State(#[from] StateError),
}

/// Enrolls the device and stores its credentials in `state`. tetherd's
/// certificate is judged by tetherd's clock, learned into `clock`.
pub async fn enroll(
    state: &StateDir,
    options: &EnrollOptions,
    clock: &Arc<ServerClock>,
) -> Result<Credentials, EnrollError> {
    crate::install_crypto_provider();
    let expected = normalize_fingerprint(&options.ca_sha256)?;
    let server = server_base(&options.server)?;
    let ca_pem = pinned_server_ca(&server, &expected, clock).await?;

    let (key_pem, csr_pem) = generate_key_and_csr()?;
    state.store_key(&key_pem)?;

    let enroll_url = format!("{server}/api/v1/enroll");
    let client = tls::https_client(&ca_pem, clock.clone())?;
    let sent = Utc::now();
    let response = post_enroll(&client, &enroll_url, &options.token, csr_pem).await?;
    store_enrolled(state, &server, ca_pem, key_pem, response, sent, clock)
}

/// Fetches tetherd's CA from `server` and keeps it only if its fingerprint
/// is `expected`; then learns tetherd's time, so its certificate is judged
/// by tetherd's clock.
pub(crate) async fn pinned_server_ca(
    server: &str,
    expected: &str,
    clock: &ServerClock,
) -> Result<String, EnrollError> {
    let ca_url = format!("{server}/api/v1/ca.pem");
    let ca_pem = fetch_unverified(&ca_url).await?;
    pinned_ca(&ca_url, &ca_pem, expected)?;
    tracing::info!("server CA at {ca_url} matches the pinned SHA-256");
    if let Err(error) = tls::learn_server_time(server, &ca_pem, None, clock).await {
        tracing::warn!(
            "cannot ask tetherd at {server} for the time; judging its certificate by this device's clock: {}",
            crate::actions::chain(&error)
        );
    }
    Ok(ca_pem)
}

/// Stores what tetherd issued for `key_pem` (an enrollment, or a
/// registration's), as enrollment always has: the pinned `ca_pem`, not the
/// response's copy, since only it was checked.
pub(crate) fn store_enrolled(
    state: &StateDir,
    server: &str,
    ca_pem: String,
    key_pem: String,
    response: EnrollResponse,
    sent: chrono::DateTime<Utc>,
    clock: &ServerClock,
) -> Result<Credentials, EnrollError> {
    if let Some(server_time) = response.server_time {
        clock.learn(server_time, sent, Utc::now());
    }
    let device = DeviceId::new(response.device).map_err(EnrollError::Device)?;
    let mqtt_urls = crate::endpoints::failover_list(&response.mqtt_url, &response.mqtt_urls);
    let config = AgentConfig {
        device: device.to_string(),
        mqtt_url: response.mqtt_url.clone(),
        mqtt_urls: mqtt_urls.clone(),
        api_url: server.to_owned(),
    };
    // Before the credentials: an agent that has them has pinned the key
    // tetherd named, if it named one.
    crate::self_update::pin_at_enrollment(state.path(), response.release_signing_key.as_deref());
    state.store_enrollment(&response.certificate_pem, &ca_pem, &config)?;
    tracing::info!(
        "enrolled as device {device}; credentials stored in {}",
        state.path().display()
    );
    Ok(Credentials {
        device,
        mqtt_urls,
        api_url: server.to_owned(),
        ca_pem,
        cert_pem: response.certificate_pem,
        key_pem,
    })
}

/// Lowercase hex without separators; accepts `AA:BB:…` and a `sha256:` prefix.
pub(crate) fn normalize_fingerprint(given: &str) -> Result<String, EnrollError> {
    ca::normalize_fingerprint(given).ok_or_else(|| EnrollError::BadFingerprint {
        given: given.to_owned(),
    })
}

/// The DER of the CA that `url` served, if it is one certificate with the
/// `expected` fingerprint. One only: the client trusts every certificate in
/// the stored `ca.pem`, and only one can be the pinned one.
fn pinned_ca(url: &str, pem: &str, expected: &str) -> Result<Vec<u8>, EnrollError> {
    let der = ca::single_certificate(pem).map_err(|source| EnrollError::NotOneCertificate {
        url: url.to_owned(),
        source,
    })?;
    let actual = ca::der_fingerprint(&der);
    if ca::fingerprints_match(expected, &actual) {
        Ok(der)
    } else {
        Err(EnrollError::CaMismatch {
            expected: expected.to_owned(),
            actual,
        })
    }
}

/// `https://host:port` without a trailing slash; a bare `host:port` means https.
pub(crate) fn server_base(given: &str) -> Result<String, EnrollError> {
    let with_scheme = if given.contains("://") {
        given.to_owned()
    } else {
        format!("https://{given}")
    };
    match reqwest::Url::parse(&with_scheme) {
        Ok(url) if url.scheme() == "https" && url.host().is_some() => {
            Ok(url.as_str().trim_end_matches('/').to_owned())
        }
        _ => Err(EnrollError::BadServerUrl {
            given: given.to_owned(),
        }),
    }
}

/// The one request made without verifying the server: its answer is checked
/// against the pinned fingerprint instead. Nothing else in it is trusted,
/// not even its `Date` header.
async fn fetch_unverified(url: &str) -> Result<String, EnrollError> {
    let client = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .danger_accept_invalid_certs(true)
        .timeout(HTTP_TIMEOUT)
        .build()
        .map_err(EnrollError::Client)?;
    let response = client
        .get(url)
        .send()
        .await
        .map_err(|source| EnrollError::Connect {
            url: url.to_owned(),
            source,
        })?;
    if !response.status().is_success() {
        return Err(EnrollError::Status {
            url: url.to_owned(),
            status: response.status(),
        });
    }
    response
        .text()
        .await
        .map_err(|source| EnrollError::Connect {
            url: url.to_owned(),
            source,
        })
}

/// A new ECDSA P-256 key pair.
pub(crate) fn generate_key() -> Result<rcgen::KeyPair, EnrollError> {
    rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(EnrollError::KeyGen)
}

/// A new key pair (PKCS#8 PEM) and a CSR for it (PEM).
fn generate_key_and_csr() -> Result<(String, String), EnrollError> {
    let key = generate_key()?;
    let csr = csr_for(&key).map_err(EnrollError::KeyGen)?;
    Ok((key.serialize_pem(), csr))
}

/// A CSR (PEM) for `key`: a new one for a kept key asks for the same
/// identity, since tetherd knows a request by its public key.
pub(crate) fn csr_for(key: &rcgen::KeyPair) -> Result<String, rcgen::Error> {
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, CSR_COMMON_NAME);
    params.serialize_request(key).and_then(|csr| csr.pem())
}

async fn post_enroll(
    client: &reqwest::Client,
    url: &str,
    token: &str,
    csr_pem: String,
) -> Result<EnrollResponse, EnrollError> {
    let request = EnrollRequest {
        token: token.to_owned(),
        csr_pem,
    };
    let response = client
        .post(url)
        .json(&request)
        .send()
        .await
        .map_err(|source| EnrollError::Connect {
            url: url.to_owned(),
            source,
        })?;
    let status = response.status();
    if status.is_success() {
        return response
            .json()
            .await
            .map_err(|source| EnrollError::BadResponse {
                url: url.to_owned(),
                source,
            });
    }
    let body = response.text().await.unwrap_or_default();
    Err(refusal(url, status, &body))
}

/// Maps a non-2xx enrollment answer to an error that says what to do.
fn refusal(url: &str, status: StatusCode, body: &str) -> EnrollError {
    if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
        return EnrollError::TokenRefused;
    }
    let message = serde_json::from_str::<ErrorBody>(body)
        .map(|e| e.error.message)
        .unwrap_or_else(|_| body.chars().take(200).collect());
    EnrollError::Refused {
        url: url.to_owned(),
        status,
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FP: &str = "a3f1c2d4e5b60718293a4b5c6d7e8f90112233445566778899aabbccddeeff00";

    #[test]
    fn fingerprints_are_case_and_separator_insensitive() {
        assert_eq!(normalize_fingerprint(FP).expect("plain"), FP);
        assert_eq!(
            normalize_fingerprint(&FP.to_uppercase()).expect("upper"),
            FP
        );
        let colons: Vec<String> = FP
            .as_bytes()
            .chunks(2)
            .map(|c| String::from_utf8_lossy(c).into_owned())
            .collect();
        assert_eq!(
            normalize_fingerprint(&format!("sha256:{}", colons.join(":"))).expect("colons"),
            FP
        );
        for bad in [
            "",
            "abc",
            &FP[1..],
            &format!("{FP}00"),
            &FP.replace('a', "g"),
        ] {
            let err = normalize_fingerprint(bad).expect_err(bad);
            assert!(err.to_string().contains("64 hex digits"), "{err}");
        }
    }

    #[test]
    fn server_urls_default_to_https_and_lose_the_trailing_slash() {
        assert_eq!(
            server_base("https://127.0.0.1:8443/").expect("url"),
            "https://127.0.0.1:8443"
        );
        assert_eq!(
            server_base("tether.example:8443").expect("bare"),
            "https://tether.example:8443"
        );
        assert!(matches!(
            server_base("http://127.0.0.1:8443"),
            Err(EnrollError::BadServerUrl { .. })
        ));
    }

    #[test]
    fn the_csr_carries_the_generated_public_key() {
        let (key_pem, csr_pem) = generate_key_and_csr().expect("generates");
        assert!(key_pem.contains("PRIVATE KEY"));
        let csr = rcgen::CertificateSigningRequestParams::from_pem(&csr_pem).expect("parses");
        let key = rcgen::KeyPair::from_pem(&key_pem).expect("key parses");
        use rcgen::PublicKeyData;
        assert_eq!(csr.public_key.der_bytes(), key.der_bytes());
        let cn = csr
            .params
            .distinguished_name
            .get(&rcgen::DnType::CommonName)
            .expect("has a CN");
        assert_eq!(cn, &rcgen::DnValue::Utf8String(CSR_COMMON_NAME.into()));
    }

    #[test]
    fn a_refused_token_says_how_to_get_a_new_one() {
        for status in [StatusCode::UNAUTHORIZED, StatusCode::FORBIDDEN] {
            let message = refusal("https://h/api/v1/enroll", status, "").to_string();
            assert!(message.contains("already used or expired"), "{message}");
            assert!(
                message.contains("tether devices enrollment-token"),
                "{message}"
            );
        }
        let body = r#"{"error":{"code":"invalid_input","message":"csrPem is not a CSR"}}"#;
        let message = refusal("https://h/e", StatusCode::BAD_REQUEST, body).to_string();
        assert!(message.contains("HTTP 400") && message.contains("csrPem is not a CSR"));
    }

    #[test]
    fn only_a_single_certificate_is_accepted_as_the_ca() {
        let (key_pem, _) = generate_key_and_csr().expect("generates");
        let key = rcgen::KeyPair::from_pem(&key_pem).expect("key parses");
        let cert = rcgen::CertificateParams::new(vec!["ca".into()])
            .expect("params")
            .self_signed(&key)
            .expect("self-signs");
        let pem = cert.pem();
        let pinned = ca::der_fingerprint(cert.der());
        assert_eq!(
            pinned_ca("u", &pem, &pinned).expect("one"),
            cert.der().to_vec()
        );
        // The pinned CA first, so a check of the first certificate passes.
        assert!(matches!(
            pinned_ca("u", &format!("{pem}{pem}"), &pinned),
            Err(EnrollError::NotOneCertificate {
                source: CaPemError::SeveralCertificates { count: 2 },
                ..
            })
        ));
        assert!(matches!(
            pinned_ca("u", "not pem", &pinned),
            Err(EnrollError::NotOneCertificate {
                source: CaPemError::NoCertificate,
                ..
            })
        ));
        assert!(matches!(
            pinned_ca("u", &pem, &"ab".repeat(32)),
            Err(EnrollError::CaMismatch { .. })
        ));
    }
}
