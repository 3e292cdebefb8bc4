//! The embedded MQTT endpoint: rmqtt (`=0.24.0`) as a library, on tetherd's
//! tokio runtime, behind [`DeviceLink`]. Nothing outside this module sees an
//! rmqtt type. See `docs/adr/0001-embedded-mqtt-server.md` for why rmqtt and
//! which of its gaps this module closes.
//!
//! Connections are mutual TLS only. At CONNECT the auth hook takes the device
//! from the client certificate (CN = device = client id), asks
//! [`DeviceCredentials`] whether the certificate's serial is current, and
//! checks the last will's topic against the publish ACL (rmqtt publishes
//! wills without asking the ACL). Every SUBSCRIBE and PUBLISH is checked
//! against `tether_proto::topics`; a refused publish from an MQTT 3.1.1
//! client, which has no reason codes to tell it, ends its connection.
//!
//! A publish the ACL allows is handed to the [`DeviceInbox`] inside the same
//! hook, on the session's own task: rmqtt sends the PUBACK only after the
//! hook returns, so an answer is acknowledged once it is durable, one
//! device's publishes stay in order, and devices do not wait for each other.
//! See `docs/adr/0006-acknowledge-after-commit.md`.

mod identity;
mod presence;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use ::rmqtt::codec::types::{MQTT_LEVEL_5, QoS};
use ::rmqtt::codec::v5::{PublishAckReason, PublishProperties, SubscribeAckReason};
use ::rmqtt::context::ServerContext;
use ::rmqtt::hook::{Handler, HookResult, Parameter, ReturnType, Type};
use ::rmqtt::net::Builder;
use ::rmqtt::server::MqttServer;
use ::rmqtt::session::Session;
use ::rmqtt::types::{
    AuthResult, CodecPublish, ConnectInfo, From, FromType, Id, LastWill, Publish, PublishAclResult,
    PublishResult, SubscribeAclResult,
};

use tether_proto::topics::{device_may_publish, device_may_subscribe};
use tether_proto::{ActionRequest, DeviceId, DeviceTopic, TopicKind};
use tokio::task::JoinHandle;

use self::identity::{PresentedCert, cert_identity};
use self::presence::{Generation, Presence};
use super::content;
use super::outbound::ActionPublish;
use super::{
    BoxFuture, DeviceCredentials, DeviceInbox, DeviceLink, Inbound, LinkError, Refusal,
    ServerMessage, SessionChange,
};

/// The MQTT endpoint's own settings.
#[derive(Debug, Clone)]
pub struct RmqttConfig {
    /// Where devices connect; port 0 picks a free port.
    pub listen: SocketAddr,
    /// The server certificate chain, PEM, signed by the tether CA.
    pub server_cert_pem: PathBuf,
    /// The server certificate's private key, PEM.
    pub server_key_pem: PathBuf,
    /// The tether CA, PEM: clients must present a certificate it signed.
    pub client_ca_pem: PathBuf,
    /// Larger MQTT packets are refused (the connection is closed).
    pub max_packet_size: u32,
}

impl RmqttConfig {
    pub const DEFAULT_MAX_PACKET_SIZE: u32 = 1024 * 1024;

    pub fn new(
        listen: SocketAddr,
        server_cert_pem: PathBuf,
        server_key_pem: PathBuf,
        client_ca_pem: PathBuf,
    ) -> Self {
        Self {
            listen,
            server_cert_pem,
            server_key_pem,
            client_ca_pem,
            max_packet_size: Self::DEFAULT_MAX_PACKET_SIZE,
        }
    }
}

/// The client id tetherd's own publishes carry inside rmqtt. Not a valid
/// [`DeviceId`] (it has a `$`), so no device can collide with it.
const CONTROLLER_CLIENT_ID: &str = "$tetherd";

/// Where a session keeps the [`Generation`] it got when it connected.
const GENERATION_ATTR: &str = "tether.generation";

/// The embedded MQTT endpoint. Dropping it stops accepting connections.
pub struct RmqttLink {
    scx: ServerContext,
    state: Arc<LinkState>,
    /// Keeps concurrent `publish_action` calls in call order: tokio's mutex
    /// is fair, and the enqueue into the session's queue happens under it.
    publish_order: tokio::sync::Mutex<()>,
    runtime: tokio::runtime::Handle,
    /// The bound listener, not accepting until [`RmqttLink::serve`].
    pending_listener: Mutex<Option<::rmqtt::net::Listener>>,
    /// The running accept loop; replaced when the server certificate is.
    accept_loop: Mutex<Option<JoinHandle<()>>>,
    /// The settings with the bound address, to start a replacement listener.
    config: RmqttConfig,
    /// rmqtt keys each listener's settings by a unique id; every
    /// replacement listener takes the next one.
    listener_ids: std::sync::atomic::AtomicU16,
}

/// What the hooks share with the link.
struct LinkState {
    credentials: Arc<dyn DeviceCredentials>,
    /// Told about session changes while `presence` is locked, so a new
    /// session's `Connected` can never overtake the old one's `Disconnected`.
    /// Set before the first connection is accepted.
    inbox: std::sync::OnceLock<Arc<dyn DeviceInbox>>,
    presence: Mutex<Presence>,
}

impl RmqttLink {
    /// Binds and starts accepting; returns the link and the address bound.
    pub async fn start(
        config: RmqttConfig,
        credentials: Arc<dyn DeviceCredentials>,
        inbox: Arc<dyn DeviceInbox>,
    ) -> Result<(Arc<Self>, SocketAddr), LinkError> {
        let (link, bound) = Self::bind(config, credentials).await?;
        link.serve(inbox);
        Ok((link, bound))
    }

    /// Binds the listener without accepting yet, so the services that take
    /// the devices' messages can be built with the link first.
    pub async fn bind(
        config: RmqttConfig,
        credentials: Arc<dyn DeviceCredentials>,
    ) -> Result<(Arc<Self>, SocketAddr), LinkError> {
        install_crypto_provider();
        let start_error = |reason: String| LinkError::Start {
            addr: config.listen.to_string(),
            reason,
        };

        // The busy check refuses CONNECTs while the host's load average is
        // high, which on a small edge controller (or a CI runner) is normal.
        let scx = ServerContext::new().busy_check_enable(false).build().await;
        let state = Arc::new(LinkState {
            credentials,
            inbox: std::sync::OnceLock::new(),
            presence: Mutex::new(Presence::default()),
        });
        register_hooks(&scx, &state).await;

        // The listener sets SO_REUSEPORT so a renewed certificate can take
        // over the port; that would also let a second tetherd share it
        // silently. A plain bind first finds one (and picks port 0's port).
        let free = std::net::TcpListener::bind(config.listen)
            .and_then(|probe| probe.local_addr())
            .map_err(|e| start_error(format!("{e}: is another tetherd running?")))?;
        let listener = tls_listener(&config, free).map_err(start_error)?;
        let bound = listener.cfg.laddr;
        let config = RmqttConfig {
            listen: bound,
            ..config
        };
        tracing::info!(%bound, "MQTT endpoint bound (mutual TLS)");

        let link = Arc::new(Self {
            scx,
            state,
            publish_order: tokio::sync::Mutex::new(()),
            runtime: tokio::runtime::Handle::current(),
            pending_listener: Mutex::new(Some(listener)),
            accept_loop: Mutex::new(None),
            config,
            listener_ids: std::sync::atomic::AtomicU16::new(bound.port()),
        });
        Ok((link, bound))
    }

    /// Starts accepting devices, handing what they send to `inbox`. Only
    /// the first call does anything.
    pub fn serve(&self, inbox: Arc<dyn DeviceInbox>) {
        let Some(listener) = self
            .pending_listener
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        else {
            return;
        };
        // The listener was still pending, so this is the first call.
        let _ = self.state.inbox.set(inbox);
        let accept_loop = spawn_accept_loop(&self.scx, listener, self.config.listen.port());
        *self
            .accept_loop
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(accept_loop);
        tracing::info!("MQTT endpoint accepting devices (mutual TLS)");
    }
}

impl RmqttLink {
    /// Whether the MQTT endpoint accepts devices now (`/readyz`).
    pub fn is_accepting(&self) -> bool {
        self.accept_loop
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .is_some_and(|accept_loop| !accept_loop.is_finished())
    }
}

impl Drop for RmqttLink {
    fn drop(&mut self) {
        if let Some(accept_loop) = self
            .accept_loop
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            accept_loop.abort();
        }
    }
}

impl RmqttLink {
    /// Hands a publish of tetherd's to the device's session, in call order.
    async fn forward(
        &self,
        device: &DeviceId,
        publish: Publish,
        topic: &str,
    ) -> Result<(), LinkError> {
        let publish_error = |reason: String| LinkError::Publish {
            device: device.clone(),
            reason,
        };
        let from = From::from_system(Id::from(self.scx.node.id(), CONTROLLER_CLIENT_ID.into()));
        let _order = self.publish_order.lock().await;
        // Straight to the router, not `SessionState::forwards`: that adds
        // retain and message-store handling we do not use, and hides the
        // recipient count we need to tell "sent" from "nobody listening".
        let forwarded = self
            .scx
            .extends
            .shared()
            .await
            .forwards(None, from, publish)
            .await;
        match forwarded {
            Ok(0) => Err(publish_error(format!(
                "the device has a session but no subscription to its {topic} topic"
            ))),
            Ok(_) => Ok(()),
            Err((_, dropped)) => Err(publish_error(
                dropped
                    .first()
                    .map(|(_, _, _, reason)| format!("dropped by the broker: {reason}"))
                    .unwrap_or_else(|| "dropped by the broker".into()),
            )),
        }
    }
}

impl DeviceLink for RmqttLink {
    fn publish_action<'a>(
        &'a self,
        device: &'a DeviceId,
        request: &'a ActionRequest,
    ) -> BoxFuture<'a, Result<usize, LinkError>> {
        Box::pin(async move {
            if !self.is_connected(device) {
                return Err(LinkError::NotConnected(device.clone()));
            }
            let publish_error = |reason: String| LinkError::Publish {
                device: device.clone(),
                reason,
            };
            let action = ActionPublish::new(device, request, chrono::Utc::now())
                .map_err(|e| publish_error(format!("could not encode the action: {e}")))?;
            let bytes = action.payload.len();
            let publish = Publish::from(CodecPublish {
                dup: false,
                retain: false,
                qos: QoS::AtLeastOnce,
                topic: action.topic.into(),
                packet_id: None,
                payload: action.payload.into(),
                properties: Some(PublishProperties {
                    correlation_data: Some(action.correlation_data.into()),
                    message_expiry_interval: Some(action.expiry),
                    ..PublishProperties::default()
                }),
            })
            .create_time(chrono::Utc::now().timestamp_millis());
            self.forward(device, publish, "actions").await?;
            Ok(bytes)
        })
    }

    fn publish_message<'a>(
        &'a self,
        device: &'a DeviceId,
        message: ServerMessage<'a>,
    ) -> BoxFuture<'a, Result<(), LinkError>> {
        Box::pin(async move {
            if !self.is_connected(device) {
                return Err(LinkError::NotConnected(device.clone()));
            }
            let kind = message.topic_kind();
            let payload = message.encode().map_err(|reason| LinkError::Publish {
                device: device.clone(),
                reason,
            })?;
            let publish = Publish::from(CodecPublish {
                dup: false,
                retain: false,
                qos: QoS::AtLeastOnce,
                topic: DeviceTopic::new(device.clone(), kind).to_string().into(),
                packet_id: None,
                payload: payload.into(),
                properties: Some(PublishProperties::default()),
            })
            .create_time(chrono::Utc::now().timestamp_millis());
            self.forward(device, publish, kind.as_str()).await
        })
    }

    fn is_connected(&self, device: &DeviceId) -> bool {
        self.state.presence().is_connected(device)
    }

    fn disconnect(&self, device: &DeviceId) {
        let scx = self.scx.clone();
        let device = device.clone();
        self.runtime
            .spawn(async move { kick_logged(&scx, &device).await });
    }

    fn disconnect_if_stale(&self, device: &DeviceId) {
        let (scx, state, device) = (self.scx.clone(), self.state.clone(), device.clone());
        self.runtime.spawn(async move {
            let id = Id::from(scx.node.id(), device.as_str().to_owned().into());
            let Some(session) = scx.extends.shared().await.entry(id).session() else {
                return;
            };
            if state.still_current(&session, &device).await {
                tracing::debug!(%device, "kept the device's MQTT session: it presents the current certificate");
                return;
            }
            kick_logged(&scx, &device).await;
        });
    }
}

async fn kick_logged(scx: &ServerContext, device: &DeviceId) {
    match kick(scx, device).await {
        Ok(()) => tracing::info!(%device, "disconnected the device's MQTT session"),
        Err(e) => tracing::warn!(
            %device,
            error = format!("{e:#}"),
            "could not disconnect the device's MQTT session"
        ),
    }
}

/// How long `disconnect` waits for a handshake of the same client id to let
/// go of rmqtt's per-client lock.
const KICK_LOCK_WAIT: Duration = Duration::from_secs(10);

async fn kick(scx: &ServerContext, device: &DeviceId) -> Result<(), ::rmqtt::Error> {
    let id = Id::from(scx.node.id(), device.as_str().to_owned().into());
    let entry = scx.extends.shared().await.entry(id);
    // rmqtt's per-client lock only has a non-blocking `try_lock`, and a
    // handshake holds it until CONNACK, i.e. also while we report the
    // device's `Connected`. Retry until the handshake is done.
    let deadline = tokio::time::Instant::now() + KICK_LOCK_WAIT;
    let mut locked = loop {
        match entry.try_lock().await {
            Ok(locked) => break locked,
            Err(_) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => return Err(e),
        }
    };
    // Admin kick with a clean start: the session and its subscriptions go;
    // rmqtt then reports the end through the same hook as any other, so
    // `Disconnected` follows.
    locked.kick(true, true, true).await.map(|_| ())
}

impl LinkState {
    fn inbox(&self) -> &dyn DeviceInbox {
        // `serve` sets it before the first connection is accepted, and only
        // connections run hooks.
        self.inbox
            .get()
            .map(Arc::as_ref)
            .expect("the inbox is set before serving")
    }

    fn presence(&self) -> std::sync::MutexGuard<'_, Presence> {
        // The map is updated in single inserts and removes; a panic elsewhere
        // cannot leave it half-changed.
        self.presence.lock().unwrap_or_else(PoisonError::into_inner)
    }

    async fn authenticate(&self, info: &ConnectInfo) -> AuthResult {
        let client_id: &str = info.client_id();
        let cert = info.cert().map(|cert| PresentedCert {
            common_name: cert.common_name.as_deref(),
            serial_unsigned_hex: cert.serial.as_deref(),
        });
        let identity = match cert_identity(cert, client_id) {
            Ok(identity) => identity,
            Err(e) => {
                tracing::warn!(client_id, remote = ?info.ipaddress(), reason = %e, "refused MQTT connection");
                return AuthResult::NotAuthorized;
            }
        };
        let device = &identity.device;
        if let Some(will) = info.last_will() {
            let topic: &str = match will {
                LastWill::V3(will) => &will.topic,
                LastWill::V5(will) => &will.topic,
            };
            if !device_may_publish(device, topic) {
                tracing::warn!(%device, will_topic = topic, "refused MQTT connection: last will on a topic the device may not publish to");
                return AuthResult::NotAuthorized;
            }
        }
        if !self
            .credentials
            .certificate_is_current(device, &identity.serial_hex)
            .await
        {
            tracing::warn!(%device, serial = identity.serial_hex, "refused MQTT connection: certificate is not the device's current one");
            return AuthResult::NotAuthorized;
        }
        tracing::debug!(%device, "MQTT connection authenticated");
        AuthResult::Allow(false, None)
    }

    fn may_subscribe(session: &Session, filter: &str) -> bool {
        let allowed = session_device(session).is_some_and(|d| device_may_subscribe(&d, filter));
        if !allowed {
            tracing::warn!(client_id = %session.id.client_id, filter, "refused MQTT subscribe");
        }
        allowed
    }

    /// The ACL, then the controller: a publish is acknowledged only if the
    /// device may publish on its topic and the controller has made it durable.
    async fn check_publish(&self, session: &Session, publish: &Publish) -> PublishAclResult {
        let topic: &str = &publish.topic;
        // MQTT 3.1.1 has no PUBACK reason code: ending the connection is the
        // only way to tell the client, and stops a misbehaving one.
        let is_v5 = session
            .connect_info()
            .await
            .is_ok_and(|info| info.proto_ver() == MQTT_LEVEL_5);
        let Some(device) = session_device(session).filter(|d| device_may_publish(d, topic)) else {
            tracing::warn!(client_id = %session.id.client_id, topic, disconnect = !is_v5, "refused MQTT publish");
            return PublishAclResult::rejected(!is_v5, Some("not authorized".into()));
        };
        let inbound = inbound(device.clone(), topic, &publish.payload);
        let (code, reason, disconnect) = match self.inbox().publish(inbound).await {
            Ok(()) => return PublishAclResult::allow(),
            Err(Refusal::Invalid(reason)) => {
                (PublishAckReason::PayloadFormatInvalid, reason, !is_v5)
            }
            Err(Refusal::RateLimited(reason)) => (PublishAckReason::QuotaExceeded, reason, !is_v5),
            Err(Refusal::Unavailable(reason)) if publish.qos == QoS::AtMostOnce => {
                // Nothing to acknowledge and nothing the device would resend.
                (PublishAckReason::ImplementationSpecificError, reason, false)
            }
            Err(Refusal::Unavailable(reason) | Refusal::Disconnect(reason)) => {
                (PublishAckReason::ImplementationSpecificError, reason, true)
            }
        };
        tracing::debug!(%device, topic, reason, ?code, disconnect, "refused a device's publish");
        PublishAclResult(PublishResult::reason_code(
            code,
            Some(reason.into()),
            disconnect,
        ))
    }

    /// A will never passes the publish ACL; the controller still records it.
    async fn will(&self, from: &From, publish: &Publish) {
        if !matches!(from.typ(), FromType::LastWill) {
            return;
        }
        let Ok(device) = DeviceId::new(from.id.client_id.to_string()) else {
            return;
        };
        let topic: &str = &publish.topic;
        if !device_may_publish(&device, topic) {
            return;
        }
        if let Err(refusal) = self
            .inbox()
            .publish(inbound(device.clone(), topic, &publish.payload))
            .await
        {
            tracing::debug!(%device, topic, ?refusal, "the controller did not take a device's will");
        }
    }

    fn subscribed(&self, session: &Session, filter: &str) {
        let Some(device) = session_device(session) else {
            return;
        };
        if DeviceTopic::parse(filter)
            .is_some_and(|t| t.device == device && t.kind == TopicKind::Actions)
        {
            self.inbox()
                .session(SessionChange::SubscribedToActions(device));
        }
    }

    async fn connected(&self, session: &Session) {
        let Some(device) = session_device(session) else {
            return;
        };
        if !self.still_current(session, &device).await {
            // Revoked (or replaced) between the CONNECT check and the
            // session's registration, when a kick finds nothing to end. The
            // handshake holds the client's lock until it is done, so the kick
            // runs in its own task and waits for it.
            tracing::warn!(%device, "ended a session whose certificate was revoked while it connected");
            let scx = session.scx.clone();
            tokio::spawn(async move {
                if let Err(e) = kick(&scx, &device).await {
                    tracing::warn!(%device, error = format!("{e:#}"), "could not end the revoked device's session");
                }
            });
            return;
        }
        let generation = {
            let mut presence = self.presence();
            let generation = presence.connected(device.clone());
            self.inbox()
                .session(SessionChange::Connected(device.clone()));
            generation
        };
        session
            .extra_attrs
            .write()
            .await
            .insert(GENERATION_ATTR.into(), generation);
        tracing::info!(%device, ?generation, "device connected");
        // A session resumed without a clean start keeps its subscriptions
        // and need not subscribe again; its actions must still flow.
        if let Ok(subscriptions) = session.subscriptions().await {
            for filter in subscriptions.to_topic_filters().await {
                self.subscribed(session, &filter);
            }
        }
    }

    async fn disconnected(&self, session: &Session) {
        let Some(device) = session_device(session) else {
            return;
        };
        // A session without a generation never reported `Connected`.
        let Some(generation) = session
            .extra_attrs
            .read()
            .await
            .get::<Generation>(GENERATION_ATTR)
            .copied()
        else {
            return;
        };
        let current = {
            let mut presence = self.presence();
            let current = presence.disconnected(&device, generation);
            if current {
                self.inbox()
                    .session(SessionChange::Disconnected(device.clone()));
            }
            current
        };
        if current {
            tracing::info!(%device, ?generation, "device disconnected");
        } else {
            tracing::debug!(%device, ?generation, "a superseded session of the device ended");
        }
    }
}

fn inbound(device: DeviceId, topic: &str, payload: &[u8]) -> Inbound {
    Inbound {
        content: content::content(&device, topic, payload),
        device,
        topic: topic.to_owned(),
        size: payload.len(),
    }
}

impl LinkState {
    /// Asks again whether the session's certificate is current, now that the
    /// session is registered: a revocation from here on finds it to kick.
    async fn still_current(&self, session: &Session, device: &DeviceId) -> bool {
        let Ok(info) = session.connect_info().await else {
            return false;
        };
        let cert = info.cert().map(|cert| PresentedCert {
            common_name: cert.common_name.as_deref(),
            serial_unsigned_hex: cert.serial.as_deref(),
        });
        match cert_identity(cert, &session.id.client_id) {
            Ok(identity) => {
                identity.device == *device
                    && self
                        .credentials
                        .certificate_is_current(device, &identity.serial_hex)
                        .await
            }
            Err(_) => false,
        }
    }
}

/// The device a session belongs to. The auth hook has made sure the client
/// id is the certificate's device, so the client id is the identity.
fn session_device(session: &Session) -> Option<DeviceId> {
    DeviceId::new(session.id.client_id.to_string()).ok()
}

/// rmqtt-net builds its TLS listener with aws-lc-rs while the rest of tetherd
/// (and rustls' defaults) use ring; with both linked, rustls cannot pick a
/// process default by itself, so `ServerConfig::builder()` anywhere would
/// panic. Installing ring once settles it; another component may have done so
/// already, which is just as good.
fn install_crypto_provider() {
    if rustls::crypto::ring::default_provider()
        .install_default()
        .is_err()
    {
        tracing::debug!("a rustls crypto provider was installed already");
    }
}

fn utf8_path(path: &Path) -> Result<String, String> {
    path.to_str()
        .map(str::to_owned)
        .ok_or_else(|| format!("path {} is not UTF-8", path.display()))
}

async fn register_hooks(scx: &ServerContext, state: &Arc<LinkState>) {
    let register = scx.extends.hook_mgr().register();
    for typ in [
        Type::ClientAuthenticate,
        Type::ClientSubscribeCheckAcl,
        Type::MessagePublishCheckAcl,
        Type::MessagePublish,
        Type::SessionSubscribed,
        Type::ClientConnected,
        Type::ClientDisconnected,
    ] {
        register.add(typ, Box::new(Hooks(Arc::clone(state)))).await;
    }
    register.start().await;
}

/// rmqtt's hook handler: one value per hook type, all sharing [`LinkState`].
struct Hooks(Arc<LinkState>);

impl Hooks {
    async fn handle(&self, param: &Parameter<'_>, acc: Option<HookResult>) -> ReturnType {
        let state = &self.0;
        match param {
            Parameter::ClientAuthenticate(info) => {
                let result = state.authenticate(info).await;
                (false, Some(HookResult::AuthResult(result)))
            }
            Parameter::ClientSubscribeCheckAcl(session, subscribe) => {
                let result = if LinkState::may_subscribe(session, &subscribe.topic_filter) {
                    SubscribeAclResult::new_success(subscribe.opts.qos(), None)
                } else {
                    SubscribeAclResult::new_failure(SubscribeAckReason::NotAuthorized)
                };
                (false, Some(HookResult::SubscribeAclResult(result)))
            }
            Parameter::MessagePublishCheckAcl(session, publish) => {
                let result = state.check_publish(session, publish).await;
                (false, Some(HookResult::PublishAclResult(result)))
            }
            Parameter::MessagePublish(_, from, publish) => {
                state.will(from, publish).await;
                (true, acc)
            }
            Parameter::SessionSubscribed(session, subscribe) => {
                state.subscribed(session, &subscribe.topic_filter);
                (true, acc)
            }
            Parameter::ClientConnected(session) => {
                state.connected(session).await;
                (true, acc)
            }
            Parameter::ClientDisconnected(session, _) => {
                state.disconnected(session).await;
                (true, acc)
            }
            _ => (true, acc),
        }
    }
}

// `Handler` is declared with `#[async_trait]`; this is that macro's expansion
// written out, which saves a dependency for one impl.
impl Handler for Hooks {
    fn hook<'life0, 'life1, 'async_trait>(
        &'life0 self,
        param: &'life1 Parameter<'_>,
        acc: Option<HookResult>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ReturnType> + Send + 'async_trait>>
    where
        'life0: 'async_trait,
        'life1: 'async_trait,
        Self: 'async_trait,
    {
        Box::pin(self.handle(param, acc))
    }
}

/// Binds the mutual-TLS listener at `addr` with the certificate files of
/// `config`. SO_REUSEPORT lets a replacement listener with a renewed
/// certificate bind the same port while this one still accepts.
fn tls_listener(config: &RmqttConfig, addr: SocketAddr) -> Result<::rmqtt::net::Listener, String> {
    let listener = Builder::new()
        .name("tether/devices")
        .laddr(addr)
        // A restarted tetherd must get its port back while the previous
        // run's connections sit in TIME_WAIT.
        .reuseaddr(Some(true))
        .reuseport(Some(true))
        .nodelay(true)
        .allow_anonymous(false)
        .max_packet_size(config.max_packet_size)
        .tls_cross_certificate(true)
        .tls_cert(Some(utf8_path(&config.server_cert_pem)?))
        .tls_key(Some(utf8_path(&config.server_key_pem)?))
        .tls_client_ca_certs(Some(utf8_path(&config.client_ca_pem)?))
        .collect_cert_info(true)
        .cert_cn_as_username(true)
        .bind()
        .map_err(|e| format!("{e:#}"))?;
    let bound = listener.local_addr().map_err(|e| format!("{e:#}"))?;
    let mut listener = listener.tls().map_err(|e| format!("TLS setup: {e:#}"))?;
    // rmqtt logs and keys sessions by the configured address; give it the
    // bound one rather than port 0.
    let mut cfg = (*listener.cfg).clone();
    cfg.laddr = bound;
    listener.cfg = Arc::new(cfg);
    Ok(listener)
}

/// Runs rmqtt's accept loop for `listener`. Each accepted connection runs in
/// its own task, so aborting the loop stops accepting without touching
/// established sessions.
fn spawn_accept_loop(
    scx: &ServerContext,
    listener: ::rmqtt::net::Listener,
    id: u16,
) -> JoinHandle<()> {
    let server = MqttServer::new(scx.clone())
        .listener_by_id(listener, id)
        .build();
    tokio::spawn(async move {
        if let Err(e) = server.run().await {
            tracing::error!(error = format!("{e:#}"), "MQTT endpoint stopped");
        }
    })
}

impl RmqttLink {
    /// Serves the certificate chain and key in `cert`/`key` from now on,
    /// without dropping a session or a connection: a second listener with
    /// the new certificate binds the same port (SO_REUSEPORT), the kernel is
    /// told to send every new connection to it, and the old listener keeps
    /// accepting for [`RELOAD_DRAIN`] so the handshakes already queued on it
    /// are served before it closes (closing it would reset them).
    /// Connections stay with the task that serves them. Returns after the
    /// drain; the renewal task calls it once per certificate.
    pub async fn reload_server_certificate(&self, cert: &Path, key: &Path) -> Result<(), String> {
        let config = RmqttConfig {
            server_cert_pem: cert.to_owned(),
            server_key_pem: key.to_owned(),
            ..self.config.clone()
        };
        let listener = tls_listener(&config, self.config.listen)?;
        {
            let mut pending = self
                .pending_listener
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if pending.is_some() {
                // Not serving yet: `serve` starts the renewed one instead.
                *pending = Some(listener);
                return Ok(());
            }
        }
        // Ids already taken are skipped: rmqtt refuses a duplicate.
        let id = loop {
            let id = self
                .listener_ids
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                .wrapping_add(1);
            if !self.scx.listen_cfgs.contains_key(&id) {
                break id;
            }
        };
        let replacement = spawn_accept_loop(&self.scx, listener, id);
        let previous = self
            .accept_loop
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .replace(replacement);
        let Some(previous) = previous else {
            return Ok(());
        };
        let mut previous = AbortOnDrop(previous);
        if let Err(error) = steer_to_second_listener(self.config.listen) {
            // Without the steering, connections queued on the old listener
            // when it closes are reset; devices reconnect.
            tracing::warn!(%error, "could not steer new MQTT connections to the renewed listener; a few connecting devices may be reset and reconnect");
        }
        tokio::time::sleep(RELOAD_DRAIN).await;
        // Wait until the old listener is closed: the next reload counts on
        // the renewed one being alone in the group.
        previous.0.abort();
        let _ = (&mut previous.0).await;
        Ok(())
    }
}

/// How long the replaced listener keeps accepting the connections the
/// kernel queued on it before it was steered away: several round trips.
const RELOAD_DRAIN: Duration = Duration::from_secs(1);

/// Aborts the accept loop when dropped, also when a reload is cancelled.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Makes the kernel hand every new connection on `addr` to the second
/// socket of its SO_REUSEPORT group, the renewed listener (the one being
/// replaced is the first). A classic BPF program returning 1 does that; it
/// stays with the group, and once the old listener has closed, the index is
/// out of range and the kernel falls back to its hash over the one socket
/// left. The program can only be attached through a listening member of the
/// group, so a short-lived one joins (after the renewed listener, so it is
/// third and gets nothing once the program is in place) and leaves.
fn steer_to_second_listener(addr: SocketAddr) -> Result<(), nix::Error> {
    use nix::sys::socket::{
        AddressFamily, Backlog, SockFlag, SockType, SockaddrStorage, bind, listen, setsockopt,
        socket, sockopt,
    };
    use std::os::fd::AsRawFd;

    let family = match addr {
        SocketAddr::V4(_) => AddressFamily::Inet,
        SocketAddr::V6(_) => AddressFamily::Inet6,
    };
    let member = socket(family, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)?;
    setsockopt(&member, sockopt::ReuseAddr, &true)?;
    setsockopt(&member, sockopt::ReusePort, &true)?;
    bind(member.as_raw_fd(), &SockaddrStorage::from(addr))?;
    listen(&member, Backlog::new(1)?)?;
    // BPF_RET | BPF_K: return the constant 1.
    let mut program = [libc::sock_filter {
        code: 0x06,
        jt: 0,
        jf: 0,
        k: 1,
    }];
    let program = libc::sock_fprog {
        len: 1,
        filter: program.as_mut_ptr(),
    };
    setsockopt(&member, sockopt::AttachReusePortCbpf, &program)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct NobodyIsCurrent;

    /// Takes nothing: no device ever gets past authentication here.
    struct NoInbox;

    impl DeviceInbox for NoInbox {
        fn session(&self, _change: SessionChange) {}

        fn publish(&self, _inbound: Inbound) -> BoxFuture<'_, Result<(), Refusal>> {
            Box::pin(async { Ok(()) })
        }
    }

    impl DeviceCredentials for NobodyIsCurrent {
        fn certificate_is_current<'a>(
            &'a self,
            _device: &'a DeviceId,
            _serial_hex: &'a str,
        ) -> BoxFuture<'a, bool> {
            Box::pin(async { false })
        }
    }

    fn open_files() -> usize {
        std::fs::read_dir("/proc/self/fd").expect("procfs").count()
    }

    /// Completes TLS handshakes with the endpoint as device `edge-1` until
    /// `stop`, counting those that fail.
    fn handshake_until(
        addr: SocketAddr,
        ca: &crate::pki::CertificateAuthority,
        stop: Arc<std::sync::atomic::AtomicBool>,
    ) -> std::thread::JoinHandle<(usize, usize)> {
        let key = rcgen::KeyPair::generate().expect("key");
        let csr = rcgen::CertificateParams::default()
            .serialize_request(&key)
            .and_then(|csr| csr.pem())
            .expect("csr");
        let cert = ca
            .sign_device_csr(
                &DeviceId::new("edge-1").expect("valid"),
                &csr,
                Duration::from_secs(600),
                chrono::Utc::now(),
            )
            .expect("signs");
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(
                tether_proto::ca::single_certificate(ca.cert_pem())
                    .expect("one")
                    .into(),
            )
            .expect("root");
        let chain = rustls_pemfile::certs(&mut cert.pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .expect("chain");
        let key = rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).expect("key");
        let config = Arc::new(
            rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .expect("config"),
        );
        std::thread::spawn(move || {
            let (mut done, mut failed) = (0, 0);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
                let mut tls = rustls::ClientConnection::new(config.clone(), name).expect("client");
                let handshake = std::net::TcpStream::connect(addr).and_then(|mut tcp| {
                    tcp.set_read_timeout(Some(Duration::from_secs(5)))?;
                    while tls.is_handshaking() {
                        tls.complete_io(&mut tcp)?;
                    }
                    Ok(())
                });
                done += 1;
                if let Err(e) = handshake {
                    eprintln!("handshake failed: {e}");
                    failed += 1;
                }
            }
            (done, failed)
        })
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn certificate_reloads_drop_no_connection_and_leak_no_sockets() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = crate::pki::CertificateAuthority::load_or_create(dir.path()).expect("CA");
        let issued = ca
            .issue_server_certificate(
                dir.path(),
                &["localhost".to_owned()],
                Duration::from_secs(600),
                chrono::Utc::now(),
            )
            .expect("issues");
        let (link, addr) = RmqttLink::start(
            RmqttConfig::new(
                "127.0.0.1:0".parse().expect("addr"),
                issued.cert_path.clone(),
                issued.key_path.clone(),
                ca.cert_path().to_owned(),
            ),
            Arc::new(NobodyIsCurrent),
            Arc::new(NoInbox),
        )
        .await
        .expect("starts");
        let before = open_files();

        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let clients = handshake_until(addr, &ca, stop.clone());
        for _ in 0..8 {
            link.reload_server_certificate(&issued.cert_path, &issued.key_path)
                .await
                .expect("reloads");
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let (done, failed) = tokio::task::spawn_blocking(move || clients.join().expect("joins"))
            .await
            .expect("joins");
        assert!(done > 8, "only {done} handshakes");
        assert_eq!(
            failed, 0,
            "{failed} of {done} handshakes failed during reloads"
        );

        // Each replaced listener is closed; the served connections end with
        // their clients.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while open_files() > before + 2 && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(
            open_files() <= before + 2,
            "{} open files after 8 reloads, {before} before",
            open_files()
        );
    }
}
