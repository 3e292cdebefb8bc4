//! `follow-logs` (a tether action beside the seed's): an operator follows
//! the device's logs (`tether logs DEVICE --follow`). For the `seconds`
//! given, from now, the logs spool sends each record at once, and the
//! device's system log is read from now if no configured source covers it
//! (`crate::logs`). tetherd renews it every few seconds while the operator
//! follows; a renewal extends the end, never shortens it.

use serde::Deserialize;
use serde_json::{Value, json};

use super::ActionError;
use crate::logs::FollowHandle;

#[derive(Deserialize)]
struct Input {
    seconds: u64,
}

pub fn run(input: &Value, follow: &FollowHandle) -> Result<Value, ActionError> {
    // The catalogue checked the input (1 to 300 seconds) already.
    let Input { seconds } = serde_json::from_value(input.clone())
        .map_err(|e| ActionError::invalid("$.seconds", e.to_string()))?;
    let until = follow.follow_for(seconds);
    let remaining = until.saturating_duration_since(tokio::time::Instant::now());
    let until = chrono::Utc::now()
        + chrono::Duration::from_std(remaining).unwrap_or_else(|_| chrono::Duration::zero());
    Ok(json!({
        "until": until.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "systemLog": follow.system_log(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logs::SystemLog;

    #[tokio::test]
    async fn following_answers_until_when_and_what() {
        let follow = FollowHandle::new(&SystemLog::File("/var/log/syslog".into()));
        let answer = run(&json!({"seconds": 30}), &follow).expect("follows");
        assert_eq!(answer["systemLog"], "/var/log/syslog");
        let until: chrono::DateTime<chrono::Utc> = answer["until"]
            .as_str()
            .expect("a time")
            .parse()
            .expect("RFC 3339");
        let ahead = until - chrono::Utc::now();
        assert!(ahead > chrono::Duration::seconds(28) && ahead <= chrono::Duration::seconds(30));
        assert!(run(&json!({"seconds": "soon"}), &follow).is_err());
    }
}
