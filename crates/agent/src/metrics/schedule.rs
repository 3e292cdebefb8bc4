//! Host samples always: every `metricsConfig.intervalSeconds` of the
//! applied spec, a change taking effect at once, without restart.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio::sync::watch;

use super::{Collector, MetricsSink};
use crate::spec::AppliedSpec;

/// The interval the spec asks for (validated by tetherd: at least 1 s).
pub fn interval(spec: &AppliedSpec) -> Duration {
    Duration::from_secs(u64::from(spec.metrics.interval_seconds.max(1)))
}

/// Samples `root` for as long as the task runs. The first sample comes
/// one interval after a baseline reading, so CPU use and traffic always
/// cover a whole interval; a new interval restarts the count from the
/// change.
pub async fn run(
    mut spec: watch::Receiver<AppliedSpec>,
    sink: Arc<dyn MetricsSink>,
    root: std::path::PathBuf,
) {
    let mut collector = Collector::new(root);
    collector = match blocking(collector, |c| c.prime()).await {
        Some((c, ())) => c,
        None => return,
    };
    let mut every = interval(&spec.borrow_and_update());
    tracing::info!(
        seconds = every.as_secs(),
        "host metrics: a sample every {} s",
        every.as_secs()
    );
    let mut ticker = ticker(every);
    let mut spec_open = true;
    loop {
        tokio::select! {
            _ = ticker.tick() => {
                let Some((next, sample)) = blocking(collector, |c| c.sample(Utc::now())).await else {
                    return;
                };
                collector = next;
                sink.publish_sample(&sample);
            }
            changed = spec.changed(), if spec_open => {
                if changed.is_err() {
                    // The spec no longer changes: keep the interval.
                    spec_open = false;
                    continue;
                }
                let now = interval(&spec.borrow_and_update());
                if now != every {
                    every = now;
                    ticker = self::ticker(every);
                    tracing::info!(seconds = every.as_secs(), "host metrics: a sample every {} s now", every.as_secs());
                }
            }
        }
    }
}

fn ticker(every: Duration) -> tokio::time::Interval {
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker
}

/// Runs `work` on the collector off the async runtime.
pub(crate) async fn blocking<T: Send + 'static>(
    mut collector: Collector,
    work: impl FnOnce(&mut Collector) -> T + Send + 'static,
) -> Option<(Collector, T)> {
    tokio::task::spawn_blocking(move || {
        let out = work(&mut collector);
        (collector, out)
    })
    .await
    .inspect_err(|e| tracing::error!("host sampling failed: {e}; samples stopped"))
    .ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tether_proto::metrics::HostSample;
    use tether_proto::spec::MetricsConfig;
    use tokio::sync::mpsc;

    struct ChannelSink(mpsc::UnboundedSender<(tokio::time::Instant, HostSample)>);
    impl MetricsSink for ChannelSink {
        fn publish_sample(&self, sample: &HostSample) {
            let _ = self.0.send((tokio::time::Instant::now(), sample.clone()));
        }
    }

    fn spec(seconds: u32) -> AppliedSpec {
        AppliedSpec {
            metrics: MetricsConfig {
                interval_seconds: seconds,
            },
            ..AppliedSpec::default()
        }
    }

    #[tokio::test]
    async fn samples_follow_the_specs_interval_as_it_changes() {
        let (spec_tx, spec_rx) = watch::channel(spec(3600));
        let (tx, mut rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(run(spec_rx, Arc::new(ChannelSink(tx)), "/".into()));
        // Nothing within a second at an hour's interval ...
        let quiet = tokio::time::timeout(Duration::from_millis(1200), rx.recv()).await;
        assert!(quiet.is_err(), "a sample before the interval");
        // ... then every second, from the change on.
        let changed = tokio::time::Instant::now();
        spec_tx.send(spec(1)).expect("the sampler follows");
        let (first_at, first) = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("a sample within 5 s")
            .expect("open");
        let (second_at, second) = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("another within 5 s")
            .expect("open");
        assert!(first_at - changed >= Duration::from_millis(900));
        assert!(second_at - first_at >= Duration::from_millis(900));
        assert!(
            first.interval_ms >= 900 && !first.cpu.is_empty(),
            "{first:?}"
        );
        assert!(second.at > first.at);
        task.abort();
    }
}
