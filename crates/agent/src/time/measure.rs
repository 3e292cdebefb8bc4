//! The device clock's offset from tetherd's, measured as NTP and Cristian's
//! algorithm do: tetherd stamps its answer somewhere between the request
//! leaving (t0) and the answer arriving (t1), so the offset is its time
//! minus the middle, (t0 + t1) / 2, off by at most half the round trip.
//! Of a few requests, the one with the shortest round trip is kept: queueing
//! and a TLS handshake only ever lengthen one.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tether_proto::host_time::ServerTime;

/// Requests per measurement: the first pays for the TLS handshake, the
/// others reuse its connection.
pub const SAMPLES: usize = 4;

/// One request: the device clock when it left and when the answer came,
/// tetherd's clock in the answer, and the round trip by the monotonic clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    pub sent: DateTime<Utc>,
    pub received: DateTime<Utc>,
    pub server: DateTime<Utc>,
    pub round_trip: Duration,
}

impl Sample {
    /// tetherd's clock minus the device's, in milliseconds.
    pub fn offset_millis(&self) -> i64 {
        let midpoint = self.sent + (self.received - self.sent) / 2;
        (self.server - midpoint).num_milliseconds()
    }
}

/// The sample with the shortest round trip, if any.
pub fn best(samples: &[Sample]) -> Option<Sample> {
    samples.iter().min_by_key(|s| s.round_trip).copied()
}

#[derive(Debug, thiserror::Error)]
pub enum MeasureError {
    #[error("cannot ask {url} for tetherd's time")]
    Request {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{url} answered {status}, not tetherd's time")]
    Status {
        url: String,
        status: reqwest::StatusCode,
    },
    #[error("{url} answered {millis}, not a time")]
    BadTime { url: String, millis: i64 },
}

/// Asks `GET {api_url}/api/v1/time` [`SAMPLES`] times and returns the best
/// sample. Any failed request fails the measurement: a partial one would
/// be kept as if it were as good.
pub async fn measure(client: &reqwest::Client, api_url: &str) -> Result<Sample, MeasureError> {
    let url = format!("{api_url}/api/v1/time");
    let first = ask(client, &url).await?;
    let mut samples = vec![first];
    for _ in 1..SAMPLES {
        samples.push(ask(client, &url).await?);
    }
    Ok(best(&samples).unwrap_or(first))
}

async fn ask(client: &reqwest::Client, url: &str) -> Result<Sample, MeasureError> {
    let request = |source| MeasureError::Request {
        url: url.to_owned(),
        source,
    };
    let started = Instant::now();
    let sent = Utc::now();
    let response = client.get(url).send().await.map_err(request)?;
    if !response.status().is_success() {
        return Err(MeasureError::Status {
            url: url.to_owned(),
            status: response.status(),
        });
    }
    let answer: ServerTime = response.json().await.map_err(request)?;
    let received = Utc::now();
    let round_trip = started.elapsed();
    let server = DateTime::from_timestamp_millis(answer.unix_millis).ok_or_else(|| {
        MeasureError::BadTime {
            url: url.to_owned(),
            millis: answer.unix_millis,
        }
    })?;
    Ok(Sample {
        sent,
        received,
        server,
        round_trip,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: i64) -> DateTime<Utc> {
        DateTime::from_timestamp_millis(ms).expect("valid")
    }

    fn sample(sent: i64, received: i64, server: i64) -> Sample {
        Sample {
            sent: at(sent),
            received: at(received),
            server: at(server),
            round_trip: Duration::from_millis((received - sent) as u64),
        }
    }

    #[test]
    fn the_offset_is_tetherds_time_minus_the_middle_of_the_round_trip() {
        // A device 10 minutes ahead: it sent at 600,000 (its clock),
        // tetherd answered at 50, the answer came at 600,100.
        assert_eq!(sample(600_000, 600_100, 50).offset_millis(), -600_000);
        assert_eq!(sample(0, 200, 5_100).offset_millis(), 5_000);
    }

    #[test]
    fn the_shortest_round_trip_wins() {
        // The handshake's long trip puts tetherd's answer off the middle.
        let samples = [
            sample(0, 900, 800),
            sample(1_000, 1_020, 1_010),
            sample(2_000, 2_100, 2_090),
        ];
        let chosen = best(&samples).expect("some");
        assert_eq!(chosen, samples[1]);
        assert_eq!(chosen.offset_millis(), 0);
        assert_eq!(best(&[]), None);
    }
}
