//! Registration: the agent sends its facts and a CSR with a provisioning
//! key to `POST /api/v1/register`, and waits, asking again, while an
//! operator decides (a `MANUAL` policy). Its key pair is made once and kept
//! in the state directory, since tetherd knows a registration by it: a
//! restarted agent asks again as the same registration.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use reqwest::StatusCode;
use serde::{Deserialize, Serialize};
use tether_proto::api::{EnrollResponse, ErrorBody};
use tether_proto::provisioning::{RegisterRequest, RegisterResponse, RegistrationState};
use tether_proto::spec::Facts;

use crate::backoff::Backoff;
use crate::clock::ServerClock;
use crate::enroll::{self, EnrollError};
use crate::state::{self, Credentials, KEY_FILE, StateDir, StateError};
use crate::tls;

/// The registration under way (or denied), in the state directory: which
/// key `key.pem` was made for, the approval it waits for, and a denial.
pub const REGISTRATION_FILE: &str = "registration.json";
/// Waits shorter than this are made this long: tetherd is not polled hot.
const MIN_WAIT: Duration = Duration::from_secs(1);
/// The wait when tetherd names none.
const DEFAULT_WAIT: Duration = Duration::from_secs(10);

/// What registration needs: from `--provisioning-key` or `--boot-bundle`,
/// with `--server` and `--ca-sha256` in place of theirs if given.
#[derive(Debug, Clone)]
pub struct RegisterOptions {
    pub server: String,
    pub ca_sha256: String,
    pub key_id: String,
    pub secret: String,
    /// The policy, when the key file names it (a boot bundle does not).
    pub policy: Option<String>,
    /// The longest wait between two requests, whatever tetherd asks.
    pub max_wait: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    #[error(transparent)]
    Enroll(#[from] EnrollError),
    #[error(
        "registration denied by an operator (approval {}): {reason}; this agent does not ask again with provisioning key {key_id}: to try again, remove {} from the state directory, or give it another provisioning key",
        .approval.as_deref().unwrap_or("unknown"),
        REGISTRATION_FILE
    )]
    Denied {
        approval: Option<String>,
        reason: String,
        key_id: String,
    },
    #[error(
        "provisioning key {key_id} refused: it is unknown, revoked or expired; get a new one with `tether policies keys create {}` and pass it with --provisioning-key",
        .policy.as_deref().unwrap_or("POLICY")
    )]
    KeyRefused {
        key_id: String,
        policy: Option<String>,
    },
    #[error("{url} refused registration with HTTP {status}: {message}")]
    Refused {
        url: String,
        status: StatusCode,
        message: String,
    },
    #[error("{url} answered registration with something that is not a RegisterResponse: {problem}")]
    BadResponse { url: String, problem: String },
    #[error("cannot read the device's kept key pair {path}: remove it to register with a new one")]
    KeptKey { path: PathBuf, source: rcgen::Error },
    #[error("cannot make a CSR for the device's key")]
    Csr(#[source] rcgen::Error),
    #[error(transparent)]
    State(#[from] StateError),
    #[error("{path} is not a registration record: remove it to register again")]
    Record {
        path: PathBuf,
        source: serde_json::Error,
    },
}

/// What to do after an answer of tetherd's.
#[derive(Debug)]
pub enum Next {
    /// Registered: store the credentials, as after enrollment.
    Enrolled(Box<EnrollResponse>),
    /// An operator has not decided, or tetherd has not issued the
    /// certificate yet: ask again after `delay`.
    Wait {
        state: RegistrationState,
        approval: Option<String>,
        delay: Duration,
    },
    /// tetherd is busy (429): ask again after `delay`.
    Throttled(Duration),
    /// tetherd failed: ask again after the backoff.
    Backoff(String),
    /// Give up: nothing asked again would be answered otherwise.
    Stop(RegisterError),
}

/// Who is asking, for the answer's messages.
#[derive(Debug, Clone)]
pub struct Asker<'a> {
    pub url: &'a str,
    pub key_id: &'a str,
    pub policy: Option<&'a str>,
    /// The approval the last answer named, if any.
    pub approval: Option<&'a str>,
    pub max_wait: Duration,
}

/// Maps tetherd's answer (status, `Retry-After`, body) to what to do next.
pub fn next_step(asker: &Asker, status: StatusCode, retry_after: Option<&str>, body: &str) -> Next {
    if status.is_success() {
        let response: RegisterResponse = match serde_json::from_str(body) {
            Ok(response) => response,
            Err(e) => return Next::Stop(bad_response(asker, e.to_string())),
        };
        let approval = response.approval.or(asker.approval.map(str::to_owned));
        return match (response.state, response.enrollment) {
            (RegistrationState::Registered, Some(enrollment)) => {
                Next::Enrolled(Box::new(enrollment))
            }
            (RegistrationState::Registered, None) => Next::Stop(bad_response(
                asker,
                "state registered without an enrollment".into(),
            )),
            (RegistrationState::Denied, _) => Next::Stop(RegisterError::Denied {
                approval,
                reason: "no reason given".into(),
                key_id: asker.key_id.to_owned(),
            }),
            (state @ (RegistrationState::Pending | RegistrationState::Approved), _) => Next::Wait {
                state,
                approval,
                delay: bounded(response.retry_after_seconds, asker.max_wait),
            },
        };
    }
    let error = serde_json::from_str::<ErrorBody>(body)
        .ok()
        .map(|e| e.error);
    match status {
        StatusCode::FORBIDDEN => Next::Stop(RegisterError::Denied {
            approval: error
                .as_ref()
                .and_then(|e| e.details.get("approval"))
                .and_then(|a| a.as_str())
                .or(asker.approval)
                .map(str::to_owned),
            reason: error.map_or_else(|| "no reason given".into(), |e| e.message),
            key_id: asker.key_id.to_owned(),
        }),
        StatusCode::UNAUTHORIZED => Next::Stop(RegisterError::KeyRefused {
            key_id: asker.key_id.to_owned(),
            policy: asker.policy.map(str::to_owned),
        }),
        StatusCode::TOO_MANY_REQUESTS => Next::Throttled(bounded(
            retry_after.and_then(|s| s.trim().parse().ok()),
            asker.max_wait,
        )),
        status if status.is_server_error() => Next::Backoff(format!(
            "{} answered HTTP {status}{}",
            asker.url,
            error
                .map(|e| format!(": {}", e.message))
                .unwrap_or_default()
        )),
        status => Next::Stop(RegisterError::Refused {
            url: asker.url.to_owned(),
            status,
            message: error.map_or_else(|| body.chars().take(200).collect(), |e| e.message),
        }),
    }
}

fn bad_response(asker: &Asker, problem: String) -> RegisterError {
    RegisterError::BadResponse {
        url: asker.url.to_owned(),
        problem,
    }
}

/// tetherd's wait, kept between [`MIN_WAIT`] and `max`.
fn bounded(seconds: Option<u64>, max: Duration) -> Duration {
    seconds
        .map_or(DEFAULT_WAIT, Duration::from_secs)
        .clamp(MIN_WAIT, max.max(MIN_WAIT))
}

/// `registration.json`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Record {
    /// The provisioning key `key.pem` was made to register with.
    key_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    approval: Option<String>,
    /// Why an operator denied it: the agent asks no more with this key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    denied: Option<String>,
}

impl Record {
    fn load(path: &Path) -> Result<Option<Self>, RegisterError> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(StateError::Read {
                    path: path.to_owned(),
                    source,
                }
                .into());
            }
        };
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|source| RegisterError::Record {
                path: path.to_owned(),
                source,
            })
    }

    fn store(&self, path: &Path) -> Result<(), RegisterError> {
        let json = serde_json::to_vec_pretty(self).map_err(|source| RegisterError::Record {
            path: path.to_owned(),
            source,
        })?;
        state::write_atomic(path, &json, 0o644).map_err(|source| {
            StateError::Write {
                path: path.to_owned(),
                source,
            }
            .into()
        })
    }
}

/// Registers the device and stores its credentials in `state`, asking
/// again until registered, denied or refused.
pub async fn register(
    state: &StateDir,
    options: &RegisterOptions,
    facts: &Facts,
    clock: &Arc<ServerClock>,
) -> Result<Credentials, RegisterError> {
    crate::install_crypto_provider();
    let expected = enroll::normalize_fingerprint(&options.ca_sha256)?;
    let server = enroll::server_base(&options.server)?;
    let record_path = state.file(REGISTRATION_FILE);
    let kept = resume(Record::load(&record_path)?, &options.key_id)?;
    let mut backoff = Backoff::default();
    let ca_pem = loop {
        match enroll::pinned_server_ca(&server, &expected, clock).await {
            Ok(ca_pem) => break ca_pem,
            Err(error @ (EnrollError::Connect { .. } | EnrollError::Status { .. })) => {
                let delay = backoff.next_delay(rand::random());
                tracing::warn!(
                    "{}; trying again in {:.1} s",
                    crate::actions::chain(&error),
                    delay.as_secs_f64()
                );
                tokio::time::sleep(delay).await;
            }
            Err(error) => return Err(error.into()),
        }
    };
    let kept_key = match &kept {
        Some(_) => kept_key(&state.file(KEY_FILE))?,
        None => None,
    };
    let (mut record, key) = match (kept, kept_key) {
        (Some(record), Some(key)) => {
            tracing::info!(
                "asking again with the key pair kept for provisioning key {}",
                options.key_id
            );
            (record, key)
        }
        _ => {
            let key = enroll::generate_key()?;
            state.store_key(&key.serialize_pem())?;
            let record = Record {
                key_id: options.key_id.clone(),
                ..Record::default()
            };
            // After the key: a record names the key it was made for.
            record.store(&record_path)?;
            (record, key)
        }
    };
    let request = RegisterRequest {
        key_id: options.key_id.clone(),
        secret: options.secret.clone(),
        csr_pem: enroll::csr_for(&key).map_err(RegisterError::Csr)?,
        facts: facts.clone(),
    };
    let url = format!("{server}/api/v1/register");
    let client = tls::https_client(&ca_pem, clock.clone()).map_err(EnrollError::from)?;
    let mut shown = None;
    loop {
        let sent = Utc::now();
        let asker = Asker {
            url: &url,
            key_id: &options.key_id,
            policy: options.policy.as_deref(),
            approval: record.approval.as_deref(),
            max_wait: options.max_wait,
        };
        let next = match client.post(&url).json(&request).send().await {
            Err(error) => Next::Backoff(format!(
                "cannot reach {url}: {}",
                crate::actions::chain(&error)
            )),
            Ok(response) => {
                let status = response.status();
                let retry_after = response
                    .headers()
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                match response.text().await {
                    Ok(body) => next_step(&asker, status, retry_after.as_deref(), &body),
                    Err(error) => Next::Backoff(format!(
                        "cannot read {url}'s answer: {}",
                        crate::actions::chain(&error)
                    )),
                }
            }
        };
        let delay = match next {
            Next::Enrolled(response) => {
                let credentials = enroll::store_enrolled(
                    state,
                    &server,
                    ca_pem,
                    key.serialize_pem(),
                    *response,
                    sent,
                    clock,
                )?;
                // Registered: the record has served; a failure to remove it is harmless.
                let _ = std::fs::remove_file(&record_path);
                return Ok(credentials);
            }
            Next::Wait {
                state: waiting,
                approval,
                delay,
            } => {
                backoff.reset();
                if approval != record.approval {
                    record.approval = approval.clone();
                    record.store(&record_path)?;
                }
                if shown.as_ref() != Some(&(waiting, approval.clone())) {
                    log_waiting(waiting, approval.as_deref(), options.policy.as_deref());
                    shown = Some((waiting, approval));
                }
                delay
            }
            Next::Throttled(delay) => {
                tracing::info!(
                    "tetherd is busy (HTTP 429); asking again in {} s",
                    delay.as_secs()
                );
                delay
            }
            Next::Backoff(why) => {
                let delay = backoff.next_delay(rand::random());
                tracing::warn!("{why}; asking again in {:.1} s", delay.as_secs_f64());
                delay
            }
            Next::Stop(error) => {
                if let RegisterError::Denied {
                    approval, reason, ..
                } = &error
                {
                    record.approval = approval.clone();
                    record.denied = Some(reason.clone());
                    record.store(&record_path)?;
                }
                return Err(error);
            }
        };
        tokio::time::sleep(delay).await;
    }
}

/// The registration to carry on with `key_id`: the record's, unless it was
/// for another key (then a new one starts); a denied one stops here.
fn resume(record: Option<Record>, key_id: &str) -> Result<Option<Record>, RegisterError> {
    match record {
        Some(Record {
            key_id: recorded,
            approval,
            denied: Some(reason),
        }) if recorded == key_id => Err(RegisterError::Denied {
            approval,
            reason,
            key_id: recorded,
        }),
        record => Ok(record.filter(|r| r.key_id == key_id)),
    }
}

/// The key pair a registration under way made, if it is still there.
fn kept_key(path: &Path) -> Result<Option<rcgen::KeyPair>, RegisterError> {
    let pem = match std::fs::read_to_string(path) {
        Ok(pem) => pem,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(StateError::Read {
                path: path.to_owned(),
                source,
            }
            .into());
        }
    };
    rcgen::KeyPair::from_pem(&pem)
        .map(Some)
        .map_err(|source| RegisterError::KeptKey {
            path: path.to_owned(),
            source,
        })
}

fn log_waiting(state: RegistrationState, approval: Option<&str>, policy: Option<&str>) {
    let approval = approval.unwrap_or("(not named by tetherd)");
    let of_policy = policy
        .map(|p| format!(" of policy {p}"))
        .unwrap_or_default();
    match state {
        RegistrationState::Approved => tracing::info!(
            "approval {approval}{of_policy} approved; waiting for tetherd to issue the certificate"
        ),
        _ => tracing::info!(
            "waiting for approval {approval}{of_policy}; an operator approves it with `tether approvals approve {approval}`"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const MAX: Duration = Duration::from_secs(300);

    fn asker() -> Asker<'static> {
        Asker {
            url: "https://h/api/v1/register",
            key_id: "pk-1",
            policy: Some("lab"),
            approval: None,
            max_wait: MAX,
        }
    }

    fn enrollment() -> serde_json::Value {
        json!({"device": "edge-1", "certificatePem": "C", "caCertificatePem": "CA",
               "mqttUrl": "mqtts://h:8883"})
    }

    fn step(status: u16, retry_after: Option<&str>, body: serde_json::Value) -> Next {
        let status = StatusCode::from_u16(status).expect("status");
        next_step(&asker(), status, retry_after, &body.to_string())
    }

    #[test]
    fn registered_continues_as_after_enrollment() {
        let next = step(
            200,
            None,
            json!({"state": "registered", "enrollment": enrollment()}),
        );
        let Next::Enrolled(response) = next else {
            panic!("{next:?}")
        };
        assert_eq!(response.device, "edge-1");
        let next = step(200, None, json!({"state": "registered"}));
        assert!(
            matches!(&next, Next::Stop(RegisterError::BadResponse { problem, .. }) if problem.contains("without an enrollment")),
            "{next:?}"
        );
        let next = next_step(&asker(), StatusCode::OK, None, "<html>");
        assert!(
            matches!(next, Next::Stop(RegisterError::BadResponse { .. })),
            "{next:?}"
        );
    }

    #[test]
    fn pending_and_approved_wait_as_tetherd_says_within_bounds() {
        let next = step(
            202,
            None,
            json!({"state": "pending", "approval": "ap-7", "retryAfterSeconds": 30}),
        );
        assert!(
            matches!(&next, Next::Wait { state: RegistrationState::Pending, approval: Some(a), delay }
                if a == "ap-7" && *delay == Duration::from_secs(30)),
            "{next:?}"
        );
        let next = step(
            202,
            None,
            json!({"state": "approved", "approval": "ap-7", "retryAfterSeconds": 0}),
        );
        assert!(
            matches!(&next, Next::Wait { state: RegistrationState::Approved, delay, .. } if *delay == MIN_WAIT),
            "{next:?}"
        );
        let next = step(
            202,
            None,
            json!({"state": "pending", "retryAfterSeconds": 86400}),
        );
        assert!(
            matches!(&next, Next::Wait { delay, .. } if *delay == MAX),
            "{next:?}"
        );
        let next = step(202, None, json!({"state": "pending"}));
        assert!(
            matches!(&next, Next::Wait { delay, .. } if *delay == DEFAULT_WAIT),
            "{next:?}"
        );
    }

    #[test]
    fn a_denial_stops_naming_the_approval_and_the_reason() {
        let body = json!({"error": {"code": "denied", "message": "not our hardware"}});
        let mut asking = asker();
        asking.approval = Some("ap-7");
        let next = next_step(&asking, StatusCode::FORBIDDEN, None, &body.to_string());
        let Next::Stop(error) = next else {
            panic!("{next:?}")
        };
        let message = error.to_string();
        assert!(
            message.contains("denied by an operator (approval ap-7): not our hardware"),
            "{message}"
        );
        assert!(
            message.contains(REGISTRATION_FILE),
            "says how to try again: {message}"
        );
        // tetherd may name the approval itself, e.g. to a restarted agent.
        let body =
            json!({"error": {"code": "denied", "message": "no", "details": {"approval": "ap-9"}}});
        let next = step(403, None, body);
        assert!(
            matches!(&next, Next::Stop(RegisterError::Denied { approval: Some(a), .. }) if a == "ap-9"),
            "{next:?}"
        );
        let next = step(200, None, json!({"state": "denied", "approval": "ap-9"}));
        assert!(
            matches!(next, Next::Stop(RegisterError::Denied { .. })),
            "{next:?}"
        );
    }

    #[test]
    fn a_refused_key_says_how_to_get_a_new_one() {
        let next = step(
            401,
            None,
            json!({"error": {"code": "unauthorized", "message": "revoked"}}),
        );
        let Next::Stop(error) = next else {
            panic!("{next:?}")
        };
        let message = error.to_string();
        assert!(
            message.contains("provisioning key pk-1 refused"),
            "{message}"
        );
        assert!(
            message.contains("tether policies keys create lab"),
            "{message}"
        );
    }

    #[test]
    fn busy_and_failing_servers_are_asked_again_other_refusals_stop() {
        let next = step(429, Some("7"), json!({}));
        assert!(
            matches!(next, Next::Throttled(d) if d == Duration::from_secs(7)),
            "{next:?}"
        );
        let next = step(429, Some("Wed, 21 Oct 2015 07:28:00 GMT"), json!({}));
        assert!(
            matches!(next, Next::Throttled(d) if d == DEFAULT_WAIT),
            "{next:?}"
        );
        let next = step(
            503,
            None,
            json!({"error": {"code": "unavailable", "message": "database down"}}),
        );
        assert!(
            matches!(&next, Next::Backoff(why) if why.contains("HTTP 503") && why.contains("database down")),
            "{next:?}"
        );
        let next = step(
            400,
            None,
            json!({"error": {"code": "invalid_input", "message": "csrPem is not a CSR"}}),
        );
        assert!(
            matches!(&next, Next::Stop(e) if e.to_string().contains("HTTP 400 Bad Request: csrPem is not a CSR")),
            "{next:?}"
        );
    }

    #[test]
    fn a_remembered_denial_stops_only_its_own_key() {
        let denied = Record {
            key_id: "pk-1".into(),
            approval: Some("ap-7".into()),
            denied: Some("not ours".into()),
        };
        let error = resume(Some(denied.clone()), "pk-1").expect_err("denied");
        let message = error.to_string();
        assert!(
            message.contains("denied by an operator (approval ap-7): not ours")
                && message.contains("provisioning key pk-1"),
            "{message}"
        );
        assert_eq!(resume(Some(denied), "pk-2").expect("another key"), None);
        let waiting = Record {
            key_id: "pk-1".into(),
            approval: Some("ap-7".into()),
            denied: None,
        };
        assert_eq!(
            resume(Some(waiting.clone()), "pk-1").expect("carries on"),
            Some(waiting.clone())
        );
        assert_eq!(resume(Some(waiting), "pk-2").expect("starts afresh"), None);
        assert_eq!(resume(None, "pk-1").expect("starts"), None);
    }

    #[test]
    fn the_record_survives_a_restart_and_a_bad_one_is_named() {
        let temp = tempfile::tempdir().expect("temp dir");
        let path = temp.path().join(REGISTRATION_FILE);
        assert_eq!(Record::load(&path).expect("loads"), None);
        let record = Record {
            key_id: "pk-1".into(),
            approval: Some("ap-7".into()),
            denied: Some("not ours".into()),
        };
        record.store(&path).expect("stores");
        assert_eq!(Record::load(&path).expect("loads"), Some(record));
        std::fs::write(&path, "{").expect("writes");
        let err = Record::load(&path).expect_err("bad").to_string();
        assert!(
            err.contains("registration.json is not a registration record"),
            "{err}"
        );
    }
}
