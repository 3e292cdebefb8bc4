//! Carries one stream's spool to tetherd: a batch at a time from the
//! acknowledged position, QoS 1, while the session is up. The position moves
//! only when tetherd's PUBACK for that batch arrives, which it sends once
//! the batch is committed (ADR 0006); a batch without one is sent again
//! after the reconnect, and tetherd stores it once (it knows the sequence
//! numbers it has).
//!
//! One batch per stream is in flight at a time: the PUBACK then names the
//! batch without ambiguity, and a batch holds up to a thousand records, so
//! a round trip per batch is no limit for a device.
//!
//! A batch whose first record was in the spool when the session came up
//! is marked `replay` (the backlog of an outage, counted apart), and waits
//! for the spec's `spoolReplay` budget if it has one: the rest stays on
//! disk, nothing is dropped. Now and then a batch carries the agent's own
//! counts of every feature (`usage`), so tetherd can show both ends'.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tether_proto::telemetry::{self, Dropped, Stream};
use tokio::sync::{mpsc, watch};

use super::Spool;

/// How long a batch may wait for its PUBACK before it is sent again.
const ACK_TIMEOUT: Duration = Duration::from_secs(60);
/// Pause before sending again what tetherd refused for its rate, or what
/// could not be handed to the MQTT client.
const RETRY_AFTER: Duration = Duration::from_secs(1);
/// The agent's counts ride on the first batch of each session and then on
/// one at most this often: a live follower's batches are a line each.
const USAGE_EVERY: Duration = Duration::from_secs(5);
/// A batch of drop counts alone goes at most this often: a disk that stays
/// full fails every flush, a second apart.
const COUNTS_EVERY: Duration = Duration::from_secs(30);

/// What tetherd answered to a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Stored (or stored before): the position moves past it.
    Stored,
    /// Refused for good (malformed, not allowed): sending it again would
    /// only be refused again, so it is skipped and the reason logged.
    Refused(String),
    /// Not now (over the rate, store busy): sent again after a pause.
    Later(String),
}

/// tetherd's answer to the batch of `stream` that ends before `end_seq`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    pub stream: Stream,
    pub end_seq: u64,
    pub answer: Answer,
}

/// Where batches go: the MQTT session.
pub trait BatchOut: Send + Sync + 'static {
    /// Hands an encoded batch to the MQTT client without waiting; the ack
    /// comes back on the sender's channel with `end_seq`.
    fn publish_batch(&self, stream: Stream, payload: Vec<u8>, end_seq: u64) -> Result<(), String>;
}

/// Sends `spool` until the channels close.
pub async fn run(
    spool: Arc<Spool>,
    out: Arc<dyn BatchOut>,
    mut online: watch::Receiver<bool>,
    mut acks: mpsc::UnboundedReceiver<Ack>,
) {
    let stream = spool.stream();
    // Both measured anew at each session: where its backlog ends, and
    // when the counts last went.
    let mut session_backlog: Option<u64> = None;
    let mut usage_sent_at: Option<Instant> = None;
    // The drop counts tetherd has, as of the last batch it stored.
    let mut reported = Dropped::default();
    let mut counts_sent_at: Option<Instant> = None;
    loop {
        while !*online.borrow_and_update() {
            if online.changed().await.is_err() {
                return;
            }
        }
        let backlog_end = *session_backlog.get_or_insert_with(|| spool.position().1);
        let reading = spool.clone();
        let batch = match tokio::task::spawn_blocking(move || reading.next_batch()).await {
            Ok(Ok(batch)) => batch,
            Ok(Err(error)) => {
                tracing::error!(%stream, %error, "cannot read the telemetry spool");
                tokio::time::sleep(RETRY_AFTER).await;
                continue;
            }
            Err(_) => return,
        };
        let counts_due = counts_sent_at.map_or(Duration::ZERO, |at| {
            COUNTS_EVERY.saturating_sub(at.elapsed())
        });
        let mut batch = match batch.ok_or_else(|| spool.counts_batch(&reported)) {
            Ok(batch) => batch,
            Err(Some(counts)) if counts_due.is_zero() => {
                counts_sent_at = Some(Instant::now());
                counts
            }
            Err(counts) => {
                let counts_wait = async {
                    match counts {
                        Some(_) => tokio::time::sleep(counts_due).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    () = spool.flushed() => {}
                    () = counts_wait => {}
                    changed = online.changed() => if changed.is_err() { return },
                }
                continue;
            }
        };
        batch.replay = batch.first_seq < backlog_end && !batch.records.is_empty();
        if usage_sent_at.is_none_or(|at| at.elapsed() >= USAGE_EVERY) {
            batch.usage = spool.usage_report();
            usage_sent_at = Some(Instant::now());
        }
        let end_seq = batch.end_seq();
        let records = batch.records.len();
        let payload = telemetry::encode(&batch);
        let wire_bytes = payload.len();
        if batch.replay {
            match throttle(&spool, wire_bytes, &mut online).await {
                Some(true) => {}
                Some(false) => {
                    unsent(&spool);
                    (session_backlog, usage_sent_at) = (None, None);
                    continue;
                }
                None => return,
            }
        }
        if let Err(error) = out.publish_batch(stream, payload, end_seq) {
            tracing::debug!(%stream, error, "could not hand a telemetry batch to the MQTT client; trying again");
            tokio::time::sleep(RETRY_AFTER).await;
            continue;
        }
        spool.sent(&batch, wire_bytes);
        let deadline = tokio::time::sleep(ACK_TIMEOUT);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                ack = acks.recv() => {
                    let Some(ack) = ack else { return };
                    if ack.end_seq != end_seq {
                        continue;
                    }
                    match ack.answer {
                        Answer::Stored => {
                            tracing::debug!(%stream, first_seq = batch.first_seq, records, "tetherd stored a telemetry batch");
                            reported = batch.dropped.clone();
                            acknowledge(&spool, end_seq).await;
                        }
                        Answer::Refused(reason) => {
                            tracing::warn!(%stream, first_seq = batch.first_seq, records, reason, "tetherd refused a telemetry batch; skipping it");
                            // Not offered again alone (a tetherd before
                            // batches of counts refuses them); the next
                            // batch of records carries them.
                            reported = batch.dropped.clone();
                            acknowledge(&spool, end_seq).await;
                        }
                        Answer::Later(reason) => {
                            tracing::info!(%stream, reason, "tetherd cannot take telemetry now; sending again in a moment");
                            unsent(&spool);
                            tokio::time::sleep(RETRY_AFTER).await;
                        }
                    }
                    break;
                }
                // Down (the batch is sent again after the reconnect) or up
                // again (it was dropped with the old connection).
                changed = online.changed() => {
                    if changed.is_err() { return }
                    unsent(&spool);
                    (session_backlog, usage_sent_at) = (None, None);
                    break;
                }
                () = &mut deadline => {
                    tracing::warn!(%stream, "no answer from tetherd to a telemetry batch within {} s; sending it again", ACK_TIMEOUT.as_secs());
                    unsent(&spool);
                    break;
                }
            }
        }
    }
}

/// Waits until the `spoolReplay` budget lets a backlog's batch of
/// `wire_bytes` go: `Some(true)` then, `Some(false)` if the session went
/// down or came up again meanwhile, `None` if the agent is stopping.
async fn throttle(
    spool: &Spool,
    wire_bytes: usize,
    online: &mut watch::Receiver<bool>,
) -> Option<bool> {
    while let Some(wait) = spool.replay_delay(wire_bytes) {
        tracing::debug!(stream = %spool.stream(), wait_ms = wait.as_millis(), "the backlog waits for its replay budget");
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            changed = online.changed() => return changed.is_ok().then_some(false),
        }
    }
    Some(true)
}

/// A rare answer, off the fast path: the bound it may apply writes.
fn unsent(spool: &Spool) {
    if let Err(error) = spool.unsent() {
        tracing::error!(stream = %spool.stream(), %error, "cannot apply the telemetry spool's bound");
    }
}

async fn acknowledge(spool: &Arc<Spool>, end_seq: u64) {
    let spool = spool.clone();
    let stream = spool.stream();
    match tokio::task::spawn_blocking(move || spool.ack(end_seq)).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => {
            tracing::error!(%stream, %error, "cannot record in the spool what tetherd stored; it may be sent again");
        }
        Err(_) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::{Record, SpoolConfig, Spools};
    use chrono::Utc;
    use std::sync::Mutex;
    use tether_proto::spec::Budgets;
    use tether_proto::telemetry::{Dropped, Feature, LogRecord, TelemetryBatch};

    /// Records what was published; the test plays tetherd.
    #[derive(Default)]
    struct Recorder(Mutex<Vec<(u64, u64)>>, Mutex<Vec<TelemetryBatch>>);

    impl BatchOut for Recorder {
        fn publish_batch(
            &self,
            stream: Stream,
            payload: Vec<u8>,
            end_seq: u64,
        ) -> Result<(), String> {
            assert_eq!(stream, Stream::Logs);
            let batch = telemetry::decode(&payload).map_err(|e| e.to_string())?;
            assert_eq!(batch.end_seq(), end_seq);
            self.0
                .lock()
                .expect("lock")
                .push((batch.first_seq, end_seq));
            self.1.lock().expect("lock").push(batch);
            Ok(())
        }
    }

    async fn published(recorder: &Recorder, n: usize) -> Vec<(u64, u64)> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let seen = recorder.0.lock().expect("lock").clone();
            if seen.len() >= n || tokio::time::Instant::now() > deadline {
                return seen;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn batches_go_while_online_and_the_position_moves_only_on_an_ack() {
        let temp = tempfile::tempdir().expect("temp");
        let spools = flushed_by_hand(temp.path());
        for i in 0..1500 {
            spools
                .append(Record::Log(LogRecord {
                    at: Utc::now(),
                    priority: 6,
                    unit: String::new(),
                    message: format!("line {i}"),
                    fields: Default::default(),
                }))
                .expect("appends");
        }
        spools.flush();
        let logs = spools.spool(Stream::Logs).clone();
        let recorder = Arc::new(Recorder::default());
        let (online_tx, online) = watch::channel(false);
        let (acks_tx, acks) = mpsc::unbounded_channel();
        let task = tokio::spawn(run(logs.clone(), recorder.clone(), online, acks));

        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            recorder.0.lock().expect("lock").is_empty(),
            "nothing while offline"
        );
        online_tx.send(true).expect("online");
        assert_eq!(published(&recorder, 1).await, [(0, 1000)]);

        // The connection drops before the ack: the same batch again.
        online_tx.send(false).expect("offline");
        online_tx.send(true).expect("online");
        assert_eq!(published(&recorder, 2).await[1], (0, 1000));
        assert_eq!(logs.position().0, 0);

        // An ack for another batch is ignored; this one's moves on.
        acks_tx
            .send(Ack {
                stream: Stream::Logs,
                end_seq: 7,
                answer: Answer::Stored,
            })
            .expect("ack");
        acks_tx
            .send(Ack {
                stream: Stream::Logs,
                end_seq: 1000,
                answer: Answer::Stored,
            })
            .expect("ack");
        assert_eq!(published(&recorder, 3).await[2], (1000, 1500));
        assert_eq!(logs.position().0, 1000);
        acks_tx
            .send(Ack {
                stream: Stream::Logs,
                end_seq: 1500,
                answer: Answer::Refused("malformed".into()),
            })
            .expect("ack");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while logs.position().0 != 1500 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(logs.position().0, 1500, "a refused batch is skipped");
        assert!(logs.next_batch().expect("reads").is_none());
        task.abort();
    }

    /// Records a full disk dropped, with no record after them to carry the
    /// new totals, reach tetherd in a batch of the counts alone.
    #[tokio::test]
    async fn drops_that_no_record_follows_go_in_a_batch_of_counts() {
        let fs = crate::spool::disk::tests::SmallFs::mount(64);
        let spools = flushed_by_hand(&fs.path().join("state"));
        let mut filler = std::fs::File::create(fs.path().join("filler")).expect("filler");
        while std::io::Write::write_all(&mut filler, &[0; 4096]).is_ok() {}
        for i in 0..20 {
            spools.append(line(i)).expect("appends");
        }
        spools.flush();
        let logs = spools.spool(Stream::Logs).clone();
        let (acked, next_seq, dropped) = logs.position();
        assert_eq!((acked, next_seq, dropped.total), (0, 0, 20), "none fitted");

        let recorder = Arc::new(Recorder::default());
        let (_online_tx, online) = watch::channel(true);
        let (_acks_tx, acks) = mpsc::unbounded_channel();
        let task = tokio::spawn(run(logs, recorder.clone(), online, acks));
        assert_eq!(published(&recorder, 1).await, [(0, 0)]);
        let counts = recorder.1.lock().expect("lock")[0].clone();
        assert!(counts.records.is_empty());
        assert_eq!(counts.dropped, dropped);
        task.abort();
    }

    /// Spools in `dir` that flush only when the test says so.
    fn flushed_by_hand(dir: &std::path::Path) -> Arc<Spools> {
        Spools::open(
            dir,
            SpoolConfig {
                max_bytes: 1 << 20,
                flush_records: 10_000,
                flush_interval: Duration::from_secs(3600),
            },
            crate::clock::ServerClock::new(),
        )
        .expect("opens")
    }

    /// Spools in `dir` with `lines` log lines flushed and waiting, as a
    /// session finds them when it comes up.
    fn with_backlog(dir: &std::path::Path, lines: usize) -> Arc<Spools> {
        let spools = flushed_by_hand(dir);
        for i in 0..lines {
            spools.append(line(i)).expect("appends");
        }
        spools.flush();
        spools
    }

    fn line(i: usize) -> Record {
        Record::Log(LogRecord {
            at: Utc::now(),
            priority: 6,
            unit: String::new(),
            message: format!("line {i}"),
            fields: Default::default(),
        })
    }

    async fn acked(recorder: &Recorder, acks: &mpsc::UnboundedSender<Ack>, n: usize) {
        let end_seq = published(recorder, n).await[n - 1].1;
        acks.send(Ack {
            stream: Stream::Logs,
            end_seq,
            answer: Answer::Stored,
        })
        .expect("ack");
    }

    /// What waited in the spool when the session came up is a replay; what
    /// came after is live. The agent's counts ride on the first batch and
    /// count both.
    #[tokio::test]
    async fn the_backlog_is_marked_as_a_replay_and_counted_apart() {
        let temp = tempfile::tempdir().expect("temp");
        let spools = with_backlog(temp.path(), 1500);
        let logs = spools.spool(Stream::Logs).clone();
        let recorder = Arc::new(Recorder::default());
        let (_online_tx, online) = watch::channel(true);
        let (acks_tx, acks) = mpsc::unbounded_channel();
        let task = tokio::spawn(run(logs.clone(), recorder.clone(), online, acks));
        acked(&recorder, &acks_tx, 1).await;
        acked(&recorder, &acks_tx, 2).await;
        spools.append(line(1500)).expect("appends");
        spools.flush();
        assert_eq!(published(&recorder, 3).await[2], (1500, 1501));
        let batches = recorder.1.lock().expect("lock").clone();
        assert_eq!(
            batches.iter().map(|b| b.replay).collect::<Vec<_>>(),
            [true, true, false]
        );
        assert_eq!(
            batches[0].usage.len(),
            Feature::ALL.len(),
            "the first batch of a session carries the agent's counts"
        );
        assert!(batches[1].usage.is_empty(), "not every batch");
        let wire = |b: &TelemetryBatch| telemetry::encode(b).len() as u64;
        let count = |feature| {
            spools
                .usage()
                .report()
                .into_iter()
                .find(|f| f.feature == feature)
                .expect("counted")
                .sent_bytes
        };
        assert_eq!(count(Feature::Logs), batches.iter().map(wire).sum::<u64>());
        assert_eq!(
            count(Feature::SpoolReplay),
            wire(&batches[0]) + wire(&batches[1])
        );
        task.abort();
    }

    /// With the day's replay bytes spent, the rest of the backlog waits on
    /// disk for the next day: nothing is dropped.
    #[tokio::test]
    async fn a_spent_replay_budget_holds_the_backlog_without_dropping_it() {
        let temp = tempfile::tempdir().expect("temp");
        let spools = with_backlog(temp.path(), 1500);
        spools.set_budgets(&Budgets {
            spool_replay: Some(24),
            ..Budgets::default()
        });
        let logs = spools.spool(Stream::Logs).clone();
        let recorder = Arc::new(Recorder::default());
        let (_online_tx, online) = watch::channel(true);
        let (acks_tx, acks) = mpsc::unbounded_channel();
        let task = tokio::spawn(run(logs.clone(), recorder.clone(), online, acks));
        acked(&recorder, &acks_tx, 1).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(
            recorder.0.lock().expect("lock").len(),
            1,
            "the day's first batch went, the next waits for tomorrow"
        );
        let (acked_to, next_seq, dropped) = logs.position();
        assert_eq!((acked_to, next_seq), (1000, 1500), "the rest stays on disk");
        assert_eq!(dropped, Dropped::default(), "nothing dropped");
        task.abort();
    }
}
