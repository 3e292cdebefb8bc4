//! `run-stats` / `stop-stats`: a fast stream of host samples beside the
//! always-on ones, taken by the same collector (`crate::metrics`) every
//! interval and spooled like them.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::task::JoinHandle;

use super::ActionError;
use crate::metrics::schedule::blocking;
use crate::metrics::{Collector, MetricsSink};

/// Seconds between samples when `run-stats` names no interval.
pub const DEFAULT_INTERVAL: u64 = 10;

async fn sample_every(interval: Duration, sink: Arc<dyn MetricsSink>) {
    let Some((mut collector, ())) = blocking(Collector::new("/"), |c| c.prime()).await else {
        return;
    };
    // The first sample comes one interval after the baseline, so CPU use and
    // traffic cover a whole interval.
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let Some((next, sample)) = blocking(collector, |c| c.sample(Utc::now())).await else {
            return;
        };
        collector = next;
        sink.publish_sample(&sample);
    }
}

/// The one background sampler, if running.
pub struct StatsRunner {
    sink: Arc<dyn MetricsSink>,
    running: Option<(u64, JoinHandle<()>)>,
}

impl StatsRunner {
    pub fn new(sink: Arc<dyn MetricsSink>) -> Self {
        Self {
            sink,
            running: None,
        }
    }

    /// Starts sampling every `interval_secs`, replacing a running sampler.
    pub fn start(&mut self, interval_secs: u64) {
        self.stop();
        let task = tokio::spawn(sample_every(
            Duration::from_secs(interval_secs),
            self.sink.clone(),
        ));
        self.running = Some((interval_secs, task));
        tracing::info!("stats started: a sample every {interval_secs} s");
    }

    /// Stops sampling; whether it was running.
    pub fn stop(&mut self) -> bool {
        match self.running.take() {
            Some((_, task)) => {
                task.abort();
                tracing::info!("stats stopped");
                true
            }
            None => false,
        }
    }

    pub fn interval(&self) -> Option<u64> {
        self.running.as_ref().map(|(interval, _)| *interval)
    }
}

impl Drop for StatsRunner {
    fn drop(&mut self) {
        self.stop();
    }
}

#[derive(Debug, Default, Deserialize)]
struct Input {
    interval: Option<u64>,
}

fn parse(input: &Value) -> Result<u64, ActionError> {
    let input: Input = if input.is_null() {
        Input::default()
    } else {
        serde_json::from_value(input.clone())
            .map_err(|e| ActionError::invalid("$.interval", e.to_string()))?
    };
    match input.interval.unwrap_or(DEFAULT_INTERVAL) {
        0 => Err(ActionError::invalid(
            "$.interval",
            "must be at least 1 second",
        )),
        interval => Ok(interval),
    }
}

/// `run-stats`: (re)starts the sampler.
pub fn run(input: &Value, runner: &mut StatsRunner) -> Result<Value, ActionError> {
    let interval = parse(input)?;
    runner.start(interval);
    Ok(json!({"interval": interval, "running": true}))
}

/// `stop-stats`: stops the sampler; stopping a stopped sampler is fine.
pub fn stop(runner: &mut StatsRunner) -> Value {
    runner.stop();
    json!({"running": false})
}

#[cfg(test)]
mod tests {
    use super::*;
    use tether_proto::metrics::HostSample;
    use tokio::sync::mpsc;

    struct ChannelSink(mpsc::UnboundedSender<HostSample>);
    impl MetricsSink for ChannelSink {
        fn publish_sample(&self, sample: &HostSample) {
            let _ = self.0.send(sample.clone());
        }
    }

    #[test]
    fn the_interval_defaults_to_ten_seconds_and_must_be_positive() {
        assert_eq!(parse(&Value::Null).expect("default"), 10);
        assert_eq!(parse(&json!({})).expect("default"), 10);
        assert_eq!(parse(&json!({"interval": 3})).expect("given"), 3);
        let err = parse(&json!({"interval": 0})).expect_err("zero");
        assert!(err.to_string().starts_with("$.interval"), "{err}");
        assert!(parse(&json!({"interval": "often"})).is_err());
    }

    #[tokio::test]
    async fn samples_flow_until_stopped_and_a_restart_takes_the_new_interval() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut runner = StatsRunner::new(Arc::new(ChannelSink(tx)));
        let answer = run(&json!({"interval": 60}), &mut runner).expect("starts");
        assert_eq!(answer, json!({"interval": 60, "running": true}));
        run(&json!({"interval": 1}), &mut runner).expect("restarts");
        assert_eq!(runner.interval(), Some(1));
        let sample = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("a sample within 5 s")
            .expect("channel open");
        assert!(sample.mem.is_some_and(|m| m.t > 0));
        assert!(!sample.cpu.is_empty(), "CPU use over the interval");
        assert_eq!(stop(&mut runner), json!({"running": false}));
        assert_eq!(runner.interval(), None);
        // Let an in-flight sample land, then expect silence.
        tokio::time::sleep(Duration::from_millis(100)).await;
        while rx.try_recv().is_ok() {}
        let quiet = tokio::time::timeout(Duration::from_millis(1500), rx.recv()).await;
        assert!(quiet.is_err(), "a sample arrived after stop-stats");
    }
}
