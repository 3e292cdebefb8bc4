//! The monitor's requests to devices on their `control` topic (issue 18,
//! ADR 0032): a rebirth for a device gone silent, a reload for one left
//! behind its spec. The monitor runs on one replica; the device's session
//! may be on another. [`DeviceControl::request`] publishes where the
//! session is here and otherwise announces the request on the bus
//! ([`Channel::DeviceRebirth`], [`Channel::DeviceReload`]), and every
//! replica's [`DeviceControl::follow`] publishes the requests for the
//! sessions it holds. Through an external broker any replica reaches every
//! device, so nothing is announced.
//!
//! Nothing is stored: a request lost (the device between replicas, a
//! notice missed) is made again at the monitor's next pass, which is
//! also why a gap in the announcements needs no resync.
//!
//! The monitor sends the current spec before a reload
//! ([`DeviceRequests::resend_spec`], which crosses replicas on
//! [`Channel::DeviceSpec`]): should the reload overtake it on another
//! replica, the agent reloads the spec it has, then applies the new one
//! when it arrives, which is where a reload of the new one would leave it.

use std::sync::Arc;

use tether_proto::DeviceId;
use tether_proto::control::ControlMessage;

use crate::cluster::bus::{Bus, Channel, Heard, Notice, Subscription};
use crate::cluster::presence::SessionOwner;
use crate::device_link::{DeviceLink, LinkError, ServerMessage};
use crate::registry::Specs;

use super::DeviceRequests;

/// Where a request went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Requested {
    /// Published to the device's session (held here, or through the broker).
    Published,
    /// Announced to the other replicas: the one holding the device's
    /// session, if one does, publishes it.
    Announced,
    /// The broker knows no session of the device: nothing was sent.
    Offline,
}

pub struct DeviceControl {
    link: Arc<dyn DeviceLink>,
    /// Sends the current spec before a reload, so a spec message the
    /// device lost is repaired too.
    specs: Specs,
    bus: Bus,
    owner: SessionOwner,
}

impl DeviceControl {
    pub fn new(link: Arc<dyn DeviceLink>, specs: Specs, bus: Bus, owner: SessionOwner) -> Self {
        Self {
            link,
            specs,
            bus,
            owner,
        }
    }

    /// Asks `device` for `message`, wherever its session is. An error is
    /// a publish to a session here that failed (the link's reason).
    pub async fn request(
        &self,
        device: &DeviceId,
        message: ControlMessage,
    ) -> Result<Requested, LinkError> {
        if self.link.is_connected(device) {
            self.publish(device, message).await?;
            return Ok(Requested::Published);
        }
        match self.owner {
            SessionOwner::Broker => Ok(Requested::Offline),
            SessionOwner::Replica(_) => {
                self.bus.publish(channel(message), [device.as_str()]);
                Ok(Requested::Announced)
            }
        }
    }

    /// Publishes the requests other replicas announced for the sessions
    /// held here. Runs until the bus is gone.
    pub async fn follow(self: Arc<Self>, mut subscription: Subscription) {
        while let Some(heard) = subscription.next().await {
            // A gap needs nothing: the monitor asks again at its next pass.
            if let Heard::Notice(notice) = heard {
                self.heard(&notice).await;
            }
        }
    }

    async fn heard(&self, notice: &Notice) {
        let message = match notice.channel {
            Channel::DeviceRebirth => ControlMessage::Rebirth,
            Channel::DeviceReload => ControlMessage::Reload,
            _ => return,
        };
        // The announcing replica did not hold the session.
        if notice.from_here {
            return;
        }
        for key in &notice.keys {
            let Ok(device) = DeviceId::new(key.as_str()) else {
                continue;
            };
            if !self.link.is_connected(&device) {
                continue;
            }
            if let Err(error) = self.publish(&device, message).await {
                tracing::warn!(%device, request = ?message, error = %crate::error_chain(&error), "could not pass the monitor's request to a device; the monitor asks again at its next pass");
            }
        }
    }

    async fn publish(&self, device: &DeviceId, message: ControlMessage) -> Result<(), LinkError> {
        self.link
            .publish_message(device, ServerMessage::Control(message))
            .await?;
        tracing::debug!(%device, request = ?message, "asked a device");
        Ok(())
    }
}

/// What the monitor calls.
impl DeviceRequests for Arc<DeviceControl> {
    async fn request(&self, device: &DeviceId, message: ControlMessage) {
        match DeviceControl::request(self, device, message).await {
            Ok(requested) => {
                tracing::debug!(%device, request = ?message, ?requested, "monitor request");
            }
            // Counted as unanswered: the monitor asks again next pass.
            Err(error) => {
                tracing::warn!(%device, request = ?message, error = %crate::error_chain(&error), "could not send the monitor's request to a device");
            }
        }
    }

    async fn resend_spec(&self, device: &DeviceId) {
        self.specs.announce(device).await;
    }
}

fn channel(message: ControlMessage) -> Channel {
    match message {
        ControlMessage::Rebirth => Channel::DeviceRebirth,
        ControlMessage::Reload => Channel::DeviceReload,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::sync::Mutex;

    use chrono::Utc;
    use tether_proto::{ActionRequest, TopicKind};

    use super::*;
    use crate::cluster::ReplicaId;
    use crate::device_link::BoxFuture;
    use crate::store::Store;

    /// A link holding the sessions of `connected`; it records what it
    /// publishes, and fails every publish with `failing`.
    #[derive(Default)]
    struct FakeLink {
        connected: BTreeSet<String>,
        failing: bool,
        sent: Mutex<Vec<(String, TopicKind, String)>>,
    }

    impl FakeLink {
        fn holding(devices: &[&str]) -> Self {
            Self {
                connected: devices.iter().map(|d| (*d).to_owned()).collect(),
                ..Self::default()
            }
        }

        fn sent(&self) -> Vec<(String, TopicKind, String)> {
            self.sent.lock().expect("not poisoned").clone()
        }
    }

    impl DeviceLink for FakeLink {
        fn publish_action<'a>(
            &'a self,
            _device: &'a DeviceId,
            _request: &'a ActionRequest,
        ) -> BoxFuture<'a, Result<usize, LinkError>> {
            Box::pin(async { Ok(0) })
        }

        fn publish_message<'a>(
            &'a self,
            device: &'a DeviceId,
            message: ServerMessage<'a>,
        ) -> BoxFuture<'a, Result<(), LinkError>> {
            let result = if self.failing {
                Err(LinkError::Publish {
                    device: device.clone(),
                    reason: "the broker is gone".into(),
                })
            } else {
                let payload = String::from_utf8(message.encode().expect("encodes")).expect("utf-8");
                self.sent.lock().expect("not poisoned").push((
                    device.to_string(),
                    message.topic_kind(),
                    payload,
                ));
                Ok(())
            };
            Box::pin(async move { result })
        }

        fn is_connected(&self, device: &DeviceId) -> bool {
            self.connected.contains(device.as_str())
        }

        fn disconnect(&self, _device: &DeviceId) {}
    }

    fn id(name: &str) -> DeviceId {
        DeviceId::new(name).expect("valid")
    }

    fn replica() -> SessionOwner {
        let dir = tempfile::tempdir().expect("temp dir");
        SessionOwner::Replica(ReplicaId::load_or_create(dir.path()).expect("replica id"))
    }

    async fn service(link: Arc<FakeLink>, owner: SessionOwner) -> (DeviceControl, Bus) {
        let store = Store::connect("sqlite::memory:").await.expect("store");
        for name in ["here", "elsewhere"] {
            store
                .create_device(&id(name), &Default::default(), Utc::now())
                .await
                .expect("device");
        }
        let bus = Bus::in_process();
        let specs = Specs::new(store, link.clone(), bus.clone());
        (DeviceControl::new(link, specs, bus.clone(), owner), bus)
    }

    fn notice(channel: Channel, keys: &[&str], from_here: bool) -> Notice {
        Notice {
            channel,
            keys: keys.iter().map(|k| (*k).to_owned()).collect(),
            published_at: Utc::now(),
            from_here,
        }
    }

    #[tokio::test]
    async fn a_session_here_gets_the_request_and_nothing_is_announced() {
        let link = Arc::new(FakeLink::holding(&["here"]));
        let (control, bus) = service(link.clone(), replica()).await;
        let mut heard = bus.subscribe();
        assert_eq!(
            control
                .request(&id("here"), ControlMessage::Rebirth)
                .await
                .expect("sent"),
            Requested::Published
        );
        assert_eq!(
            control
                .request(&id("here"), ControlMessage::Reload)
                .await
                .expect("sent"),
            Requested::Published
        );
        let sent = link.sent();
        let kinds: Vec<_> = sent.iter().map(|(_, kind, _)| *kind).collect();
        assert_eq!(kinds, [TopicKind::Control, TopicKind::Control]);
        assert_eq!(sent[0].2, r#"{"kind":"rebirth"}"#);
        assert_eq!(sent[1].2, r#"{"kind":"reload"}"#);
        bus.publish(Channel::LogsStored, ["marker"]);
        let Some(Heard::Notice(first)) = heard.next().await else {
            panic!("a notice")
        };
        assert_eq!(first.channel, Channel::LogsStored, "nothing announced");
    }

    #[tokio::test]
    async fn a_session_elsewhere_is_announced_and_the_replica_holding_it_publishes() {
        let link = Arc::new(FakeLink::default());
        let (control, bus) = service(link.clone(), replica()).await;
        let mut heard = bus.subscribe();
        assert_eq!(
            control
                .request(&id("elsewhere"), ControlMessage::Reload)
                .await
                .expect("announced"),
            Requested::Announced
        );
        let Some(Heard::Notice(announced)) = heard.next().await else {
            panic!("a notice")
        };
        assert_eq!(announced.channel, Channel::DeviceReload);
        assert_eq!(announced.keys, ["elsewhere"]);
        assert!(link.sent().is_empty());

        // The replica holding it hears the notice and publishes; devices
        // it does not hold and bad names are skipped.
        let holder = Arc::new(FakeLink::holding(&["elsewhere"]));
        let (other, _) = service(holder.clone(), replica()).await;
        other
            .heard(&notice(
                Channel::DeviceReload,
                &["not a name!", "here", "elsewhere"],
                false,
            ))
            .await;
        other
            .heard(&notice(Channel::DeviceRebirth, &["elsewhere"], false))
            .await;
        let sent = holder.sent();
        let control = |kind: &str| {
            (
                "elsewhere".to_owned(),
                TopicKind::Control,
                format!(r#"{{"kind":"{kind}"}}"#),
            )
        };
        assert_eq!(sent, [control("reload"), control("rebirth")]);

        // Its own announcement, or another channel's, is not a request.
        other
            .heard(&notice(Channel::DeviceRebirth, &["elsewhere"], true))
            .await;
        other
            .heard(&notice(Channel::DeviceSpec, &["elsewhere"], false))
            .await;
        assert_eq!(holder.sent().len(), 2);
    }

    #[tokio::test]
    async fn through_a_broker_any_replica_publishes_and_an_offline_device_is_not_announced() {
        let link = Arc::new(FakeLink::holding(&["here"]));
        let (control, bus) = service(link.clone(), SessionOwner::Broker).await;
        let mut heard = bus.subscribe();
        assert_eq!(
            control
                .request(&id("here"), ControlMessage::Rebirth)
                .await
                .expect("sent"),
            Requested::Published
        );
        assert_eq!(
            control
                .request(&id("elsewhere"), ControlMessage::Rebirth)
                .await
                .expect("nothing to do"),
            Requested::Offline
        );
        assert_eq!(link.sent().len(), 1);
        bus.publish(Channel::LogsStored, ["marker"]);
        let Some(Heard::Notice(first)) = heard.next().await else {
            panic!("a notice")
        };
        assert_eq!(first.channel, Channel::LogsStored, "nothing announced");
    }

    #[tokio::test]
    async fn a_publish_that_fails_is_the_callers_error() {
        let link = Arc::new(FakeLink {
            failing: true,
            ..FakeLink::holding(&["here"])
        });
        let (control, _) = service(link, replica()).await;
        let error = control
            .request(&id("here"), ControlMessage::Rebirth)
            .await
            .expect_err("failed");
        assert!(error.to_string().contains("here"), "{error}");
    }
}
