//! Periodic work that must run on one replica at a time (expiry and timeout
//! sweeps, retention, later the jobs dispatcher).
//!
//! On PostgreSQL each job has an advisory lock, held on a connection of its
//! own: the replica that holds it is the job's leader and runs it every
//! period, after checking its session still holds the lock. When the connection dies
//! (the replica crashed, or lost the database), PostgreSQL releases the
//! lock and another replica, trying every few seconds, takes over. A leader
//! that loses its connection mid-run finishes that run, so two replicas may
//! briefly overlap: jobs must be idempotent, as conditional updates are.
//! On SQLite there is one replica, always the leader.
//!
//! A leader cut off from the database without its connection closing (a
//! partition, a lost host) would keep the lock until PostgreSQL's TCP
//! keepalive gives up, hours by default, and no replica would run the job
//! meanwhile. So the lock connection carries the replica's id in its
//! `application_name`, and the replica that takes over a lapsed replica's
//! devices also terminates its lock connections (`super::lease`): the
//! leadership lasts no longer than the leader's lease.

use std::future::Future;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};

use super::ReplicaId;
use crate::store::{AdvisoryLock, Store};

/// How often a replica that is not a job's leader tries to become it.
const ACQUIRE_RETRY: Duration = Duration::from_secs(2);

pub struct Singleton;

impl Singleton {
    /// Runs `job(now)` every `every` on whichever replica leads `name`.
    /// `name` must be the same on every replica (it names the lock).
    pub fn spawn<F, Fut>(
        store: Store,
        replica: &ReplicaId,
        name: &'static str,
        every: Duration,
        job: F,
    ) -> tokio::task::JoinHandle<()>
    where
        F: FnMut(DateTime<Utc>) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        if store.is_postgres() {
            let holder = connection_name(replica.as_str());
            tokio::spawn(lead_when_locked(store, holder, name, every, job))
        } else {
            tracing::debug!(job = name, "the only replica (SQLite) leads this job");
            tokio::spawn(run_every(every, job))
        }
    }
}

async fn run_every<F, Fut>(every: Duration, mut job: F)
where
    F: FnMut(DateTime<Utc>) -> Fut,
    Fut: Future<Output = ()>,
{
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        job(Utc::now()).await;
    }
}

async fn lead_when_locked<F, Fut>(
    store: Store,
    holder: String,
    name: &'static str,
    every: Duration,
    mut job: F,
) where
    F: FnMut(DateTime<Utc>) -> Fut,
    Fut: Future<Output = ()>,
{
    let key = lock_key(name);
    loop {
        let mut lock = acquire(&store, &holder, name, key).await;
        tracing::info!(
            job = name,
            "this replica is now the leader of a singleton job"
        );
        let mut ticker = tokio::time::interval(every);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            if !lock.is_held().await {
                tracing::warn!(
                    job = name,
                    "lost the leadership of a singleton job: its database connection ended; another replica takes over"
                );
                lock.release().await;
                break;
            }
            job(Utc::now()).await;
        }
    }
}

/// Waits until this replica holds the job's lock.
async fn acquire(store: &Store, holder: &str, name: &str, key: i64) -> AdvisoryLock {
    let mut logged_error = false;
    loop {
        match store.try_advisory_lock(key, holder).await {
            Ok(Some(lock)) => return lock,
            Ok(None) => logged_error = false,
            Err(error) if !logged_error => {
                logged_error = true;
                tracing::warn!(job = name, error = %crate::error_chain(&error), "could not try to lead a singleton job; retrying");
            }
            Err(_) => {}
        }
        tokio::time::sleep(ACQUIRE_RETRY).await;
    }
}

/// The `application_name` of `replica`'s lock connections, by which the
/// replica taking it over finds them. PostgreSQL keeps 63 bytes of it.
pub fn connection_name(replica: &str) -> String {
    let mut name = format!("tetherd-singleton-{replica}");
    name.truncate(63);
    name
}

/// The job's advisory lock key: the same on every replica and version.
fn lock_key(name: &str) -> i64 {
    let digest = Sha256::digest(format!("tether singleton {name}").as_bytes());
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&digest[..8]);
    i64::from_be_bytes(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_job_has_its_own_stable_lock() {
        assert_eq!(lock_key("action-sweeps"), lock_key("action-sweeps"));
        assert_ne!(lock_key("action-sweeps"), lock_key("telemetry-retention"));
    }

    #[tokio::test]
    async fn on_sqlite_the_only_replica_runs_the_job() {
        let store = Store::connect("sqlite::memory:").await.expect("store");
        let (ran, mut runs) = tokio::sync::mpsc::unbounded_channel();
        let replica = ReplicaId::parse("a").expect("id");
        let job = Singleton::spawn(
            store,
            &replica,
            "test",
            Duration::from_millis(10),
            move |now| {
                let ran = ran.clone();
                async move {
                    let _ = ran.send(now);
                }
            },
        );
        for _ in 0..2 {
            tokio::time::timeout(Duration::from_secs(5), runs.recv())
                .await
                .expect("the job runs")
                .expect("a run");
        }
        job.abort();
    }
}
