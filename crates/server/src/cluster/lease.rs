//! A replica's lease: the row in `replicas` it renews every third of the
//! lease, and the takeover of replicas whose lease lapsed.
//!
//! A replica that cannot renew (the store is down or unreachable) keeps
//! serving its sessions and retries; `/readyz` says it is not ready once
//! its lease runs out. Meanwhile another replica may take its devices over
//! (marks them offline and deletes its row). When it can write again, its
//! renewal finds the row gone: it registers again and re-claims the
//! sessions it still holds, which shows them online again.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use super::ReplicaId;
use super::presence::{EndOfReplica, replica_ended_event};
use crate::store::{ReplicaRecord, Store, StoreError};

pub struct Lease {
    store: Store,
    replica: ReplicaRecord,
    duration: Duration,
    /// When the last renewal that reached the store was sent.
    renewed: Mutex<Instant>,
}

/// What one renewal found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Renewal {
    Renewed,
    /// The row was gone (taken over); registered again.
    Reclaimed,
}

impl Lease {
    /// Ends the sessions this replica held before it (re)started, then
    /// registers its lease. Call before accepting devices.
    pub async fn acquire(
        store: Store,
        id: &ReplicaId,
        api_url: String,
        mqtt_url: String,
        duration: Duration,
    ) -> Result<Arc<Self>, StoreError> {
        end_own_sessions(&store, id.as_str(), EndOfReplica::Restarted).await?;
        let sent = Instant::now();
        let now = Utc::now();
        let replica = ReplicaRecord {
            id: id.to_string(),
            api_url,
            mqtt_url,
            started_at: now,
            renewed_at: now,
            lease_expires_at: expiry(now, duration),
        };
        store.register_replica(&replica).await?;
        tracing::info!(replica = %id, lease_seconds = duration.as_secs_f64(), mqtt_url = %replica.mqtt_url, "replica registered");
        Ok(Arc::new(Self {
            store,
            replica,
            duration,
            renewed: Mutex::new(sent),
        }))
    }

    /// Whether the lease is still running: renewed within its duration.
    pub fn is_current(&self, now: Instant) -> bool {
        now.duration_since(*self.renewed.lock().unwrap_or_else(PoisonError::into_inner))
            < self.duration
    }

    /// Renews every third of the lease and takes over replicas whose lease
    /// lapsed; `reclaimed` runs after this replica had to register again.
    pub fn spawn(
        self: Arc<Self>,
        reclaimed: impl Fn() + Send + Sync + 'static,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(self.duration / 3);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticker.tick().await;
            loop {
                ticker.tick().await;
                match self.renew().await {
                    Ok(Renewal::Renewed) => {}
                    Ok(Renewal::Reclaimed) => reclaimed(),
                    Err(error) => {
                        tracing::warn!(replica = %self.replica.id, error = %crate::error_chain(&error), retry_in_ms = (self.duration / 3).as_millis() as u64, "could not renew this replica's lease; its sessions stay, and another replica takes its devices over if the lease lapses");
                        continue;
                    }
                }
                if let Err(error) = self.take_over_lapsed().await {
                    tracing::warn!(error = %crate::error_chain(&error), "could not take over the devices of replicas whose lease lapsed");
                }
            }
        })
    }

    async fn renew(&self) -> Result<Renewal, StoreError> {
        let sent = Instant::now();
        let now = Utc::now();
        let expires = expiry(now, self.duration);
        let renewal = if self
            .store
            .renew_replica_lease(&self.replica.id, now, expires)
            .await?
        {
            Renewal::Renewed
        } else {
            tracing::warn!(replica = %self.replica.id, "this replica's lease lapsed and another replica took its devices over; registering again and re-claiming the sessions it holds");
            self.store
                .register_replica(&ReplicaRecord {
                    renewed_at: now,
                    lease_expires_at: expires,
                    ..self.replica.clone()
                })
                .await?;
            Renewal::Reclaimed
        };
        *self.renewed.lock().unwrap_or_else(PoisonError::into_inner) = sent;
        Ok(renewal)
    }

    async fn take_over_lapsed(&self) -> Result<(), StoreError> {
        let now = Utc::now();
        for replica in self.store.lapsed_replicas(now).await? {
            if replica == self.replica.id {
                continue;
            }
            let ended = self
                .store
                .end_replica_sessions(&replica, Some(now), now, |device, last_seen| {
                    replica_ended_event(device, &replica, EndOfReplica::LeaseLapsed, last_seen, now)
                })
                .await?;
            if let Some(ended) = ended {
                tracing::info!(
                    lapsed = %replica,
                    devices = ended.devices.len(),
                    last_renewed = %ended.last_seen,
                    "took over a replica whose lease lapsed: its devices are offline until they reconnect"
                );
                // Its singleton jobs too, even if its lock connections are
                // still open (cut off, not closed): else nobody runs them
                // meanwhile. Only once its row is gone: a replica that
                // renewed in time keeps them.
                let connections = self
                    .store
                    .end_connections_named(&super::singleton::connection_name(&replica))
                    .await?;
                if connections > 0 {
                    tracing::info!(lapsed = %replica, connections, "ended the lock connections of a replica whose lease lapsed: its singleton jobs move to another replica");
                }
            }
        }
        Ok(())
    }

    /// Ends this replica's sessions and gives up its lease, on a clean stop:
    /// its devices show offline at once instead of when the lease lapses.
    pub async fn release(&self) -> Result<(), StoreError> {
        end_own_sessions(&self.store, &self.replica.id, EndOfReplica::Stopped).await
    }
}

async fn end_own_sessions(store: &Store, id: &str, why: EndOfReplica) -> Result<(), StoreError> {
    let now = Utc::now();
    let ended = store
        .end_replica_sessions(id, None, now, |device, last_seen| {
            replica_ended_event(device, id, why, last_seen, now)
        })
        .await?;
    if let Some(ended) = ended.filter(|ended| !ended.devices.is_empty()) {
        tracing::info!(replica = %id, devices = ended.devices.len(), ?why, "marked the devices this replica held offline");
    }
    Ok(())
}

fn expiry(now: DateTime<Utc>, duration: Duration) -> DateTime<Utc> {
    now + chrono::Duration::from_std(duration).unwrap_or(chrono::Duration::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_replica_taken_over_while_it_could_not_renew_registers_again_and_reclaims() {
        let store = Store::connect("sqlite::memory:").await.expect("store");
        let id = ReplicaId::parse("a").expect("id");
        let lease = Lease::acquire(
            store.clone(),
            &id,
            "https://a:8443".into(),
            "mqtts://a:8883".into(),
            Duration::from_millis(300),
        )
        .await
        .expect("lease");
        assert!(lease.is_current(Instant::now()));
        assert!(
            !lease.is_current(Instant::now() + Duration::from_millis(300)),
            "a lease not renewed within its duration is not current"
        );
        // Another replica takes this one over.
        store
            .end_replica_sessions("a", None, Utc::now(), |device, at| {
                replica_ended_event(device, "a", EndOfReplica::LeaseLapsed, at, at)
            })
            .await
            .expect("take over")
            .expect("the row was there");
        assert!(
            store
                .live_replicas(Utc::now())
                .await
                .expect("live")
                .is_empty()
        );

        let (reclaimed, mut reclaims) = tokio::sync::mpsc::unbounded_channel();
        let renewing = lease.clone().spawn(move || {
            let _ = reclaimed.send(());
        });
        tokio::time::timeout(Duration::from_secs(5), reclaims.recv())
            .await
            .expect("the next renewal re-claims")
            .expect("reclaimed");
        let live = store.live_replicas(Utc::now()).await.expect("live");
        assert_eq!(live.len(), 1);
        assert_eq!(live[0].mqtt_url, "mqtts://a:8883");
        renewing.abort();
    }
}
