//! Devices' answers written in batches: one writer per replica takes every
//! answer waiting when it is free (no timer: a lone answer is written at
//! once) and records them with one statement (`Store::record_answers`).
//! A fleet-wide job's answers arrive by the thousand within a second, and a
//! statement each was most of the job's work on the database.
//!
//! Each answer's device waits for its own result, so its publish is still
//! acknowledged only after the answer committed (ADR 0006). The queue is
//! bounded: when it is full, devices' answers wait for room, and with them
//! their sessions' next messages.

use tokio::sync::{mpsc, oneshot};

use crate::store::{ActionRecord, AnswerWrite, Store, StoreError};

/// Answers recorded by one statement at most (17 parameters each).
const MAX_BATCH: usize = 500;
/// Answers waiting for the writer at most.
const QUEUE: usize = 2 * MAX_BATCH;

type Recorded = Result<Option<ActionRecord>, StoreError>;

pub(super) struct AnswerWriter {
    queue: mpsc::Sender<(AnswerWrite, oneshot::Sender<Recorded>)>,
}

impl AnswerWriter {
    pub(super) fn spawn(store: Store) -> Self {
        let (queue, mut waiting) = mpsc::channel(QUEUE);
        tokio::spawn(async move {
            let mut batch: Vec<(AnswerWrite, oneshot::Sender<Recorded>)> =
                Vec::with_capacity(MAX_BATCH);
            while waiting.recv_many(&mut batch, MAX_BATCH).await > 0 {
                let (answers, done): (Vec<AnswerWrite>, Vec<oneshot::Sender<Recorded>>) =
                    batch.drain(..).unzip();
                let results = store.record_answers(&answers).await;
                for (done, result) in done.into_iter().zip(results) {
                    // The device's session may have ended meanwhile.
                    let _ = done.send(result);
                }
            }
        });
        Self { queue }
    }

    /// Records `answer` with whatever else is waiting; see
    /// `Store::record_answers` for the result.
    pub(super) async fn record(&self, answer: AnswerWrite) -> Recorded {
        let (done, result) = oneshot::channel();
        self.queue
            .send((answer, done))
            .await
            .map_err(|_| StoreError::ShuttingDown)?;
        result.await.map_err(|_| StoreError::ShuttingDown)?
    }
}
