//! The monitor's requests through this replica's device link. Devices held
//! by another replica get their spec through the bus; their control
//! requests count as unanswered until the control service crosses
//! replicas.

use std::sync::Arc;

use tether_proto::DeviceId;
use tether_proto::control::ControlMessage;

use super::DeviceRequests;
use crate::device_link::{DeviceLink, ServerMessage};
use crate::registry::Specs;

pub struct LinkRequests {
    pub link: Arc<dyn DeviceLink>,
    pub specs: Specs,
}

impl DeviceRequests for LinkRequests {
    async fn request(&self, device: &DeviceId, message: ControlMessage) {
        if !self.link.is_connected(device) {
            return;
        }
        if let Err(error) = self
            .link
            .publish_message(device, ServerMessage::Control(message))
            .await
        {
            tracing::debug!(%device, error = %crate::error_chain(&error), "could not send a control request");
        }
    }

    async fn resend_spec(&self, device: &DeviceId) {
        self.specs.announce(device).await;
    }
}
