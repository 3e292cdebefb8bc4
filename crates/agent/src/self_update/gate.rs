//! The gate between the action worker and a self-update: an update never
//! interrupts an action. Once the swap is decided the gate closes: the
//! worker starts no new action (those waiting stay unanswered, and tetherd
//! delivers them again to the restarted agent, which runs them then), and
//! the swap waits until the actions running now have finished.

use std::sync::Arc;

use tokio::sync::watch;

#[derive(Clone)]
pub struct ActionGate {
    closed: Arc<watch::Sender<bool>>,
    /// Actions running now: the one the worker handles and those running
    /// in the background.
    running: Arc<watch::Sender<usize>>,
}

impl Default for ActionGate {
    fn default() -> Self {
        Self {
            closed: Arc::new(watch::channel(false).0),
            running: Arc::new(watch::channel(0).0),
        }
    }
}

impl ActionGate {
    /// No new action starts from now on.
    pub fn close(&self) {
        self.closed.send_replace(true);
    }

    /// New actions start again (the update did not happen).
    pub fn open(&self) {
        self.closed.send_replace(false);
    }

    pub fn is_closed(&self) -> bool {
        *self.closed.borrow()
    }

    /// Resolves once the gate is closed.
    pub async fn until_closed(&self) {
        let mut closed = self.closed.subscribe();
        // The sender lives in self: the wait ends only by closing.
        let _ = closed.wait_for(|closed| *closed).await;
    }

    /// The worker's count of running actions.
    pub fn set_running(&self, running: usize) {
        self.running.send_if_modified(|count| {
            let changed = *count != running;
            *count = running;
            changed
        });
    }

    pub fn running(&self) -> usize {
        *self.running.borrow()
    }

    /// Resolves once no action runs.
    pub async fn until_idle(&self) {
        let mut running = self.running.subscribe();
        let _ = running.wait_for(|running| *running == 0).await;
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn the_swap_waits_for_running_actions_and_the_gate_stays_shut() {
        let gate = ActionGate::default();
        gate.set_running(2);
        gate.close();
        assert!(gate.is_closed());
        tokio::time::timeout(Duration::from_millis(10), gate.until_closed())
            .await
            .expect("closed at once");
        let idle = tokio::time::timeout(Duration::from_millis(20), gate.until_idle()).await;
        assert!(idle.is_err(), "two actions still run");
        let finishing = gate.clone();
        tokio::spawn(async move { finishing.set_running(0) });
        tokio::time::timeout(Duration::from_secs(5), gate.until_idle())
            .await
            .expect("idle once they finished");
        gate.open();
        assert!(!gate.is_closed());
    }
}
