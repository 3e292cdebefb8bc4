//! The embedded MQTT endpoint (`RmqttLink`) against the real Debian mosquitto
//! clients: mutual TLS identity, per-packet ACL, ingestion, controller
//! publishes, wills and kicks. Every test runs its own endpoint on a free
//! port with certificates from a fresh CA in a temp dir.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::sync::Arc;
use std::time::Duration;

use chrono::{TimeDelta, Utc};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SerialNumber,
};
use tempfile::TempDir;
use tether_proto::metrics::HostMetrics;
use tether_proto::{ActionEvent, ActionRequest, DeviceId, DeviceStatus, Presence};
use tether_server::device_link::rmqtt::{RmqttConfig, RmqttLink};
use tether_server::device_link::{
    self, BoxFuture, Content, DeviceCredentials, DeviceInbox, DeviceLink, Inbound, LinkError,
    Refusal, SessionChange,
};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use tokio::time::{Instant, timeout};

/// How long any single expected thing may take before the test fails.
const WAIT: Duration = Duration::from_secs(15);

fn id(name: &str) -> DeviceId {
    DeviceId::new(name).expect("valid device id")
}

fn topic(device: &str, kind: &str) -> String {
    format!("tether/v1/devices/{device}/{kind}")
}

/// A client certificate and key on disk.
#[derive(Clone)]
struct ClientCert {
    cert: PathBuf,
    key: PathBuf,
}

/// The certificates a test uses, written as PEM files.
struct Pki {
    ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    device_a: ClientCert,
    device_b: ClientCert,
    /// CN device-a, signed by the CA, but not the device's current certificate.
    device_a_replaced: ClientCert,
    /// CN device-a, signed by a CA the endpoint does not trust.
    device_a_foreign_ca: ClientCert,
    /// CN device-a, self-signed.
    device_a_self_signed: ClientCert,
    /// The serials (raw DER serial, lowercase hex) of the current device certificates.
    current: HashSet<(DeviceId, String)>,
}

fn write(dir: &Path, name: &str, contents: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, contents).expect("write a PEM file");
    path
}

fn ca_params(name: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params
}

fn device_params(name: &str, serial: &[u8]) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, name);
    params.serial_number = Some(SerialNumber::from_slice(serial));
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params
}

/// Issues a device certificate and returns its files and raw serial hex, the
/// way the CA side records it.
fn issue_device(
    dir: &Path,
    file: &str,
    name: &str,
    serial: &[u8],
    issuer: &Issuer<'_, KeyPair>,
) -> (ClientCert, String) {
    let key = KeyPair::generate().expect("device key");
    let cert = device_params(name, serial)
        .signed_by(&key, issuer)
        .expect("sign the device certificate");
    let (_, x509) = x509_parser::parse_x509_certificate(cert.der()).expect("parse our own cert");
    let serial_hex = hex::encode(x509.raw_serial());
    let files = ClientCert {
        cert: write(dir, &format!("{file}.pem"), &cert.pem()),
        key: write(dir, &format!("{file}-key.pem"), &key.serialize_pem()),
    };
    (files, serial_hex)
}

fn generate_pki(dir: &Path) -> Pki {
    let ca_key = KeyPair::generate().expect("CA key");
    let ca_params = ca_params("tether test CA");
    let ca_cert = ca_params.self_signed(&ca_key).expect("self-sign the CA");
    let ca = write(dir, "ca.pem", &ca_cert.pem());
    let issuer = Issuer::new(ca_params, ca_key);

    let server_key = KeyPair::generate().expect("server key");
    let mut server_params =
        CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .expect("server SANs");
    server_params
        .distinguished_name
        .push(DnType::CommonName, "tetherd");
    server_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let server_cert = server_params
        .signed_by(&server_key, &issuer)
        .expect("sign the server certificate");

    // device-a's serial has its top bit set, so DER prepends 00; device-b's
    // has an odd number of hex digits once leading zeros go. Both forms must
    // come out of the endpoint the way the CA computes them.
    let (device_a, serial_a) = issue_device(
        dir,
        "device-a",
        "device-a",
        &[0x9c, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07],
        &issuer,
    );
    let (device_b, serial_b) =
        issue_device(dir, "device-b", "device-b", &[0x0b, 0xee, 0xf0], &issuer);
    let (device_a_replaced, _) = issue_device(
        dir,
        "device-a-replaced",
        "device-a",
        &[0x41, 0x42, 0x43],
        &issuer,
    );

    let foreign_key = KeyPair::generate().expect("foreign CA key");
    let foreign_issuer = Issuer::new(ca_params_foreign(), foreign_key);
    let (device_a_foreign_ca, _) = issue_device(
        dir,
        "device-a-foreign",
        "device-a",
        &[0x9c, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07],
        &foreign_issuer,
    );

    let self_signed_key = KeyPair::generate().expect("self-signed key");
    let self_signed = device_params("device-a", &[0x9c, 0x01])
        .self_signed(&self_signed_key)
        .expect("self-sign a device certificate");
    let device_a_self_signed = ClientCert {
        cert: write(dir, "device-a-self.pem", &self_signed.pem()),
        key: write(
            dir,
            "device-a-self-key.pem",
            &self_signed_key.serialize_pem(),
        ),
    };

    Pki {
        ca,
        server_cert: write(dir, "server.pem", &server_cert.pem()),
        server_key: write(dir, "server-key.pem", &server_key.serialize_pem()),
        device_a,
        device_b,
        device_a_replaced,
        device_a_foreign_ca,
        device_a_self_signed,
        current: HashSet::from([(id("device-a"), serial_a), (id("device-b"), serial_b)]),
    }
}

fn ca_params_foreign() -> CertificateParams {
    ca_params("some other CA")
}

/// What the endpoint handed the controller, in order.
#[derive(Debug)]
enum DeviceMessage {
    Connected {
        device: DeviceId,
    },
    Disconnected {
        device: DeviceId,
    },
    SubscribedToActions {
        device: DeviceId,
    },
    Status {
        device: DeviceId,
        status: DeviceStatus,
    },
    Event {
        device: DeviceId,
        event: ActionEvent,
    },
    Metrics {
        device: DeviceId,
        metrics: HostMetrics,
    },
}

/// An inbox that records what it is handed, refuses malformed payloads as
/// the controller does, and refuses everything on `refuse_topic` with
/// `refusal`.
struct Recorder {
    seen: mpsc::UnboundedSender<DeviceMessage>,
    refusal: std::sync::Mutex<Option<(String, Refusal)>>,
}

impl DeviceInbox for Recorder {
    fn session(&self, change: SessionChange) {
        let message = match change {
            SessionChange::Connected(device) => DeviceMessage::Connected { device },
            SessionChange::Disconnected(device) => DeviceMessage::Disconnected { device },
            SessionChange::SubscribedToActions(device) => {
                DeviceMessage::SubscribedToActions { device }
            }
        };
        let _ = self.seen.send(message);
    }

    fn publish(&self, inbound: Inbound) -> BoxFuture<'_, Result<(), Refusal>> {
        let refusal = self.refusal.lock().expect("not poisoned").clone();
        Box::pin(async move {
            if let Some((topic, refusal)) = refusal
                && topic == inbound.topic
            {
                return Err(refusal);
            }
            let device = inbound.device;
            let message = match inbound.content {
                Content::Message(device_link::DeviceMessage::Status(status)) => {
                    DeviceMessage::Status { device, status }
                }
                Content::Message(device_link::DeviceMessage::Event(event)) => {
                    DeviceMessage::Event { device, event }
                }
                Content::Message(device_link::DeviceMessage::Metrics(metrics)) => {
                    DeviceMessage::Metrics { device, metrics }
                }
                // The spec tests run against real tetherd (tests/it/specs.rs).
                Content::Message(device_link::DeviceMessage::Reported(_)) => return Ok(()),
                Content::Message(device_link::DeviceMessage::Telemetry(_)) => return Ok(()),
                Content::Malformed(reason) => return Err(Refusal::Invalid(reason)),
                Content::NotConsumed => return Ok(()),
            };
            let _ = self.seen.send(message);
            Ok(())
        })
    }
}

/// Accepts exactly the listed (device, serial) pairs.
struct Current(HashSet<(DeviceId, String)>);

impl DeviceCredentials for Current {
    fn certificate_is_current<'a>(
        &'a self,
        device: &'a DeviceId,
        serial_hex: &'a str,
    ) -> BoxFuture<'a, bool> {
        let current = self.0.contains(&(device.clone(), serial_hex.to_owned()));
        Box::pin(async move { current })
    }
}

struct Fixture {
    _dir: TempDir,
    pki: Pki,
    link: Arc<RmqttLink>,
    port: u16,
    messages: mpsc::UnboundedReceiver<DeviceMessage>,
    recorder: Arc<Recorder>,
}

#[derive(Clone, Copy)]
enum Mqtt {
    V5,
    V311,
}

impl Mqtt {
    fn arg(self) -> &'static str {
        match self {
            Mqtt::V5 => "mqttv5",
            Mqtt::V311 => "mqttv311",
        }
    }
}

impl Fixture {
    async fn start() -> Self {
        Self::start_with(RmqttConfig::DEFAULT_MAX_PACKET_SIZE).await
    }

    async fn start_with(max_packet_size: u32) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let pki = generate_pki(dir.path());
        let config = RmqttConfig {
            listen: "127.0.0.1:0".parse().expect("socket address"),
            server_cert_pem: pki.server_cert.clone(),
            server_key_pem: pki.server_key.clone(),
            client_ca_pem: pki.ca.clone(),
            max_packet_size,
        };
        let (seen, messages) = mpsc::unbounded_channel();
        let recorder = Arc::new(Recorder {
            seen,
            refusal: std::sync::Mutex::new(None),
        });
        let credentials = Arc::new(Current(pki.current.clone()));
        let (link, bound) = RmqttLink::start(config, credentials, recorder.clone())
            .await
            .expect("start the MQTT endpoint");
        assert_ne!(bound.port(), 0, "the real port is reported");
        Self {
            _dir: dir,
            pki,
            link,
            port: bound.port(),
            messages,
            recorder,
        }
    }

    /// A mosquitto client command with TLS against our CA, as `client_id`,
    /// presenting `cert` if given.
    fn mosquitto(
        &self,
        program: &str,
        client_id: &str,
        cert: Option<&ClientCert>,
        version: Mqtt,
    ) -> Command {
        let mut command = Command::new(program);
        command
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .arg("--cafile")
            .arg(&self.pki.ca)
            .args(["-i", client_id, "-V", version.arg()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if let Some(cert) = cert {
            command
                .arg("--cert")
                .arg(&cert.cert)
                .arg("--key")
                .arg(&cert.key);
        }
        command
    }

    /// Runs `mosquitto_pub` once (QoS 1) and returns how it ended.
    async fn publish(
        &self,
        client_id: &str,
        cert: Option<&ClientCert>,
        version: Mqtt,
        topic: &str,
        payload: &str,
        extra: &[&str],
    ) -> Output {
        let output = self
            .mosquitto("mosquitto_pub", client_id, cert, version)
            .args(["-q", "1", "-t", topic, "-m", payload])
            .args(extra)
            .output();
        timeout(WAIT, output)
            .await
            .expect("mosquitto_pub finishes")
            .expect("run mosquitto_pub")
    }

    /// Starts `mosquitto_sub` on `topic` (QoS 1), printing payloads one a line.
    fn subscribe(
        &self,
        client_id: &str,
        cert: &ClientCert,
        version: Mqtt,
        topic: &str,
        extra: &[&str],
    ) -> Child {
        self.mosquitto("mosquitto_sub", client_id, Some(cert), version)
            .args(["-q", "1", "-t", topic])
            .args(extra)
            .spawn()
            .expect("start mosquitto_sub")
    }

    /// The next message from the endpoint, failing the test after [`WAIT`].
    async fn next_message(&mut self) -> DeviceMessage {
        timeout(WAIT, self.messages.recv())
            .await
            .expect("a device message in time")
            .expect("the endpoint is running")
    }

    /// Skips messages until one matches.
    async fn wait_for(
        &mut self,
        what: &str,
        matches: impl Fn(&DeviceMessage) -> bool,
    ) -> DeviceMessage {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let message = timeout(left, self.messages.recv())
                .await
                .unwrap_or_else(|_| panic!("no {what} in time"))
                .expect("the endpoint is running");
            if matches(&message) {
                return message;
            }
        }
    }

    /// The next message that is not a session change.
    async fn next_traffic(&mut self) -> DeviceMessage {
        self.wait_for("device traffic", |m| {
            !matches!(
                m,
                DeviceMessage::Connected { .. }
                    | DeviceMessage::Disconnected { .. }
                    | DeviceMessage::SubscribedToActions { .. }
            )
        })
        .await
    }

    /// From now on the controller refuses every publish on `topic` so.
    fn refuse(&self, topic: &str, refusal: Refusal) {
        *self.recorder.refusal.lock().expect("not poisoned") = Some((topic.to_owned(), refusal));
    }

    /// Publishes actions to `device` until one is accepted: that proves its
    /// subscriber's SUBSCRIBE has been processed (a device without a
    /// subscription makes `publish_action` fail).
    async fn publish_action_when_subscribed(&self, device: &DeviceId, request: &ActionRequest) {
        let deadline = Instant::now() + WAIT;
        loop {
            match self.link.publish_action(device, request).await {
                Ok(_) => return,
                Err(LinkError::NotConnected(_) | LinkError::Publish { .. })
                    if Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("publish_action to {device}: {e}"),
            }
        }
    }
}

fn event_json(correlation_id: &str) -> String {
    serde_json::json!({
        "correlationId": correlation_id,
        "event": "send-ping",
        "statusCode": 200,
        "statusMessage": "ok",
        "response": {},
    })
    .to_string()
}

fn action(correlation_id: &str) -> ActionRequest {
    ActionRequest {
        correlation_id: correlation_id.to_owned(),
        action: "send-ping".to_owned(),
        input: serde_json::json!({"n": 1}),
        expires_at: Utc::now() + TimeDelta::seconds(60),
        expires_in_ms: None,
        sent_at: None,
    }
}

fn describe(output: &Output) -> String {
    format!(
        "exit {:?}, stdout {:?}, stderr {:?}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Reads `count` lines from a subscriber's stdout.
async fn read_lines(child: &mut Child, count: usize) -> Vec<String> {
    let stdout = child.stdout.take().expect("piped stdout");
    let mut lines = BufReader::new(stdout).lines();
    let mut out = Vec::with_capacity(count);
    while out.len() < count {
        let line = timeout(WAIT, lines.next_line())
            .await
            .expect("subscriber output in time")
            .expect("read subscriber output")
            .expect("subscriber still running");
        out.push(line);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_current_device_certificate_matching_the_client_id_connects() {
    let mut fx = Fixture::start().await;
    let events_a = topic("device-a", "events");
    let own_will = topic("device-a", "status");
    let foreign_will = topic("device-b", "status");
    let pki = &fx.pki;

    let refused: Vec<(&str, &str, Option<&ClientCert>, Vec<&str>)> = vec![
        ("no client certificate", "device-a", None, vec![]),
        (
            "certificate from another CA",
            "device-a",
            Some(&pki.device_a_foreign_ca),
            vec![],
        ),
        (
            "self-signed certificate",
            "device-a",
            Some(&pki.device_a_self_signed),
            vec![],
        ),
        (
            "certificate whose serial the credentials reject",
            "device-a",
            Some(&pki.device_a_replaced),
            vec![],
        ),
        (
            "client id other than the certificate's device",
            "device-b",
            Some(&pki.device_a),
            vec![],
        ),
        (
            "last will on another device's topic",
            "device-a",
            Some(&pki.device_a),
            vec!["--will-topic", &foreign_will, "--will-payload", "x"],
        ),
    ];
    for (case, client_id, cert, extra) in &refused {
        for version in [Mqtt::V5, Mqtt::V311] {
            let output = fx
                .publish(
                    client_id,
                    *cert,
                    version,
                    &events_a,
                    &event_json("nope"),
                    extra,
                )
                .await;
            assert!(
                !output.status.success(),
                "{case} ({}) must not connect: {}",
                version.arg(),
                describe(&output)
            );
        }
    }

    // The control: the right certificate, with its own status as the will,
    // gets in; and it is the first thing the endpoint ever reports.
    let output = fx
        .publish(
            "device-a",
            Some(&fx.pki.device_a.clone()),
            Mqtt::V5,
            &events_a,
            &event_json("yes"),
            &["--will-topic", &own_will, "--will-payload", "{}"],
        )
        .await;
    assert!(
        output.status.success(),
        "device-a connects: {}",
        describe(&output)
    );
    match fx.next_message().await {
        DeviceMessage::Connected { device } => assert_eq!(device, id("device-a")),
        other => panic!("expected device-a's Connected first, got {other:?}"),
    }
    match fx.next_message().await {
        DeviceMessage::Event { device, event } => {
            assert_eq!(device, id("device-a"));
            assert_eq!(event.correlation_id, "yes");
        }
        other => panic!("expected device-a's event, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_is_confined_to_its_own_topics() {
    let mut fx = Fixture::start().await;
    let a = fx.pki.device_a.clone();
    let b = fx.pki.device_b.clone();
    let device_b = id("device-b");

    // device-b listens on its actions; the first thing it receives is our
    // readiness probe, the second must be our marker: nothing device-a tries
    // below may reach it in between.
    let mut b_sub = fx.subscribe(
        "device-b",
        &b,
        Mqtt::V5,
        &topic("device-b", "actions"),
        &["-C", "2"],
    );
    fx.publish_action_when_subscribed(&device_b, &action("probe"))
        .await;

    for version in [Mqtt::V5, Mqtt::V311] {
        for filter in [
            topic("device-b", "actions"),
            "tether/v1/devices/+/actions".to_owned(),
            "#".to_owned(),
            topic("device-a", "events"),
        ] {
            let mut sub = fx.subscribe("device-a", &a, version, &filter, &["-E"]);
            let stderr = subscribe_outcome(&mut sub).await;
            // mosquitto_sub exits 0 either way; a SUBACK with only failure
            // codes (0x87 in MQTT 5, 0x80 in 3.1.1) is what it reports here.
            assert!(
                stderr.contains("All subscription requests were denied"),
                "device-a must not subscribe to {filter} ({}): {stderr:?}",
                version.arg()
            );
        }

        let mut sub = fx.subscribe(
            "device-a",
            &a,
            version,
            &topic("device-a", "actions"),
            &["-E"],
        );
        let stderr = subscribe_outcome(&mut sub).await;
        assert!(
            !stderr.contains("denied"),
            "device-a may subscribe to its own actions ({}): {stderr:?}",
            version.arg()
        );

        for foreign in [
            topic("device-b", "actions"),
            topic("device-b", "events"),
            topic("device-b", "status"),
            topic("device-a", "actions"),
            "$SYS/x".to_owned(),
        ] {
            let output = fx
                .publish(
                    "device-a",
                    Some(&a),
                    version,
                    &foreign,
                    &event_json("leak"),
                    &[],
                )
                .await;
            // MQTT 5 answers with PUBACK 0x87, which mosquitto_pub reports
            // but does not exit non-zero for; MQTT 3.1.1 has no reason code,
            // so the endpoint drops the connection.
            let refused = match version {
                Mqtt::V5 => String::from_utf8_lossy(&output.stderr).contains("Not authorized"),
                Mqtt::V311 => !output.status.success(),
            };
            assert!(
                refused,
                "device-a must not publish on {foreign} ({}): {}",
                version.arg(),
                describe(&output)
            );
        }
    }

    // A malformed message on its own topic is refused (0x99), not ingested.
    let output = fx
        .publish(
            "device-a",
            Some(&a),
            Mqtt::V5,
            &topic("device-a", "events"),
            "{not json",
            &[],
        )
        .await;
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("Payload format invalid"),
        "{}",
        describe(&output)
    );

    // The markers: device-a's own event is the first traffic the controller
    // sees, and the controller's action the next thing device-b receives.
    let output = fx
        .publish(
            "device-a",
            Some(&a),
            Mqtt::V311,
            &topic("device-a", "events"),
            &event_json("marker"),
            &[],
        )
        .await;
    assert!(output.status.success(), "{}", describe(&output));
    match fx.next_traffic().await {
        DeviceMessage::Event { device, event } => {
            assert_eq!(device, id("device-a"));
            assert_eq!(event.correlation_id, "marker");
        }
        other => panic!("expected only device-a's marker event, got {other:?}"),
    }

    fx.link
        .publish_action(&device_b, &action("marker"))
        .await
        .expect("publish to device-b");
    let lines = read_lines(&mut b_sub, 2).await;
    let received: Vec<ActionRequest> = lines
        .iter()
        .map(|l| serde_json::from_str(l).expect("an action request"))
        .collect();
    assert_eq!(
        received
            .iter()
            .map(|r| r.correlation_id.as_str())
            .collect::<Vec<_>>(),
        ["probe", "marker"]
    );
}

/// Waits for a `mosquitto_sub -E` to finish and returns what it printed to stderr.
async fn subscribe_outcome(child: &mut Child) -> String {
    use tokio::io::AsyncReadExt;
    let mut text = String::new();
    let mut stderr = child.stderr.take().expect("piped stderr");
    timeout(WAIT, stderr.read_to_string(&mut text))
        .await
        .expect("mosquitto_sub finishes in time")
        .expect("read mosquitto_sub's stderr");
    timeout(WAIT, child.wait())
        .await
        .expect("mosquitto_sub exits in time")
        .expect("mosquitto_sub ran");
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_mqtt311_publish_ends_the_connection() {
    let mut fx = Fixture::start().await;
    let a = fx.pki.device_a.clone();
    let output = fx
        .publish(
            "device-a",
            Some(&a),
            Mqtt::V311,
            &topic("device-b", "events"),
            &event_json("leak"),
            &[],
        )
        .await;
    assert!(!output.status.success(), "{}", describe(&output));
    assert!(matches!(
        fx.next_message().await,
        DeviceMessage::Connected { .. }
    ));
    match fx.next_message().await {
        DeviceMessage::Disconnected { device } => assert_eq!(device, id("device-a")),
        other => panic!("expected the endpoint to drop device-a, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_traffic_is_ingested_by_topic() {
    let mut fx = Fixture::start().await;
    let a = fx.pki.device_a.clone();
    let status = serde_json::json!({
        "state": "online", "agentVersion": "0.1.0", "capabilities": ["send-ping"],
        "bootId": "boot-1", "seq": 1,
    });
    let metrics = serde_json::json!({
        "sampledAt": "2026-11-25T10:00:00Z", "cpuPercent": 12.5,
        "memoryUsedBytes": 1, "memoryTotalBytes": 2, "diskUsedBytes": 3,
        "diskTotalBytes": 4, "networkRxBytes": 5, "networkTxBytes": 6,
    });
    for (kind, payload) in [
        ("status", status.to_string()),
        ("metrics", metrics.to_string()),
        ("events", event_json("e-1")),
    ] {
        let output = fx
            .publish(
                "device-a",
                Some(&a),
                Mqtt::V5,
                &topic("device-a", kind),
                &payload,
                &[],
            )
            .await;
        assert!(output.status.success(), "{kind}: {}", describe(&output));
    }
    match fx.next_traffic().await {
        DeviceMessage::Status { device, status } => {
            assert_eq!(device, id("device-a"));
            assert_eq!(status.state, Presence::Online);
            assert_eq!(status.capabilities, ["send-ping"]);
        }
        other => panic!("expected a status, got {other:?}"),
    }
    match fx.next_traffic().await {
        DeviceMessage::Metrics { device, metrics } => {
            assert_eq!(device, id("device-a"));
            assert_eq!(metrics.network_rx_bytes, 5);
        }
        other => panic!("expected metrics, got {other:?}"),
    }
    match fx.next_traffic().await {
        DeviceMessage::Event { event, .. } => assert_eq!(event.correlation_id, "e-1"),
        other => panic!("expected an event, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_actions_reach_the_device_with_mqtt5_properties() {
    let fx = Fixture::start().await;
    let a = fx.pki.device_a.clone();
    let device_a = id("device-a");

    assert!(!fx.link.is_connected(&device_a));
    match fx.link.publish_action(&device_a, &action("early")).await {
        Err(LinkError::NotConnected(device)) => assert_eq!(device, device_a),
        other => panic!("expected NotConnected, got {other:?}"),
    }

    // Topic, QoS, retain flag, correlation data, expiry, payload; tab-separated.
    let mut sub = fx.subscribe(
        "device-a",
        &a,
        Mqtt::V5,
        &topic("device-a", "actions"),
        &["-C", "2", "-F", "%t\\t%q\\t%r\\t%D\\t%E\\t%p"],
    );
    let first = action("c-1");
    fx.publish_action_when_subscribed(&device_a, &first).await;
    assert!(fx.link.is_connected(&device_a));
    let mut second = action("c-2");
    second.expires_at = Utc::now() + TimeDelta::seconds(3600);
    fx.link
        .publish_action(&device_a, &second)
        .await
        .expect("publish the second action");

    let lines = read_lines(&mut sub, 2).await;
    for (line, sent) in lines.iter().zip([&first, &second]) {
        let fields: Vec<&str> = line.splitn(6, '\t').collect();
        let [topic_name, qos, retained, correlation, expiry, payload] = fields[..] else {
            panic!("unexpected subscriber line {line:?}");
        };
        assert_eq!(topic_name, topic("device-a", "actions"));
        assert_eq!(qos, "1");
        assert_eq!(retained, "0");
        assert_eq!(correlation, sent.correlation_id);
        let expiry: i64 = expiry.parse().expect("an expiry in seconds");
        let wanted = (sent.expires_at - Utc::now()).num_seconds();
        assert!(
            (1..=wanted + 1).contains(&expiry) && expiry >= wanted - 15,
            "expiry {expiry}s for an action expiring in {wanted}s"
        );
        let received: ActionRequest = serde_json::from_str(payload).expect("JSON action");
        let left_ms = received
            .expires_in_ms
            .expect("the time left is in the payload");
        let sent_at = received.sent_at.expect("tetherd's clock is in the payload");
        assert_eq!(
            u64::try_from((sent.expires_at - sent_at).num_milliseconds()).ok(),
            Some(left_ms),
            "expiresInMs is the time left when tetherd published it"
        );
        assert!((Utc::now() - sent_at).num_seconds().abs() < 15);
        assert_eq!(received, sent.stamped(sent_at));
    }

    match fx.link.publish_action(&id("device-b"), &action("x")).await {
        Err(LinkError::NotConnected(_)) => {}
        other => panic!("expected NotConnected for device-b, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_kicks_the_session() {
    let mut fx = Fixture::start().await;
    let a = fx.pki.device_a.clone();
    let device_a = id("device-a");
    let mut sub = fx.subscribe("device-a", &a, Mqtt::V5, &topic("device-a", "actions"), &[]);
    fx.wait_for(
        "device-a connecting",
        |m| matches!(m, DeviceMessage::Connected { device } if device.as_str() == "device-a"),
    )
    .await;
    assert!(fx.link.is_connected(&device_a));

    fx.link.disconnect(&device_a);
    fx.wait_for(
        "device-a's Disconnected",
        |m| matches!(m, DeviceMessage::Disconnected { device } if device.as_str() == "device-a"),
    )
    .await;
    sub.kill().await.expect("stop mosquitto_sub");
}

/// Says yes once, then no: a revocation that lands between the CONNECT
/// check and the session's registration, when a kick finds no session.
struct RevokedWhileConnecting(std::sync::atomic::AtomicBool);

impl DeviceCredentials for RevokedWhileConnecting {
    fn certificate_is_current<'a>(
        &'a self,
        _device: &'a DeviceId,
        _serial_hex: &'a str,
    ) -> BoxFuture<'a, bool> {
        let first = !self.0.swap(true, std::sync::atomic::Ordering::SeqCst);
        Box::pin(async move { first })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_revoked_while_connecting_keeps_no_session() {
    let mut fx = Fixture::start().await;
    let config = RmqttConfig {
        listen: "127.0.0.1:0".parse().expect("socket address"),
        server_cert_pem: fx.pki.server_cert.clone(),
        server_key_pem: fx.pki.server_key.clone(),
        client_ca_pem: fx.pki.ca.clone(),
        max_packet_size: RmqttConfig::DEFAULT_MAX_PACKET_SIZE,
    };
    let (seen, messages) = mpsc::unbounded_channel();
    let recorder = Arc::new(Recorder {
        seen,
        refusal: std::sync::Mutex::new(None),
    });
    let credentials = Arc::new(RevokedWhileConnecting(Default::default()));
    let (link, bound) = RmqttLink::start(config, credentials, recorder.clone())
        .await
        .expect("start the MQTT endpoint");
    fx.link = link;
    fx.port = bound.port();
    fx.messages = messages;
    fx.recorder = recorder;

    let a = fx.pki.device_a.clone();
    let mut sub = fx.subscribe("device-a", &a, Mqtt::V5, &topic("device-a", "actions"), &[]);
    // Kicked, it reconnects, is refused, and gives up.
    timeout(WAIT, sub.wait())
        .await
        .expect("the revoked device's session is ended")
        .expect("mosquitto_sub ran");
    assert!(!fx.link.is_connected(&id("device-a")));
    while let Ok(message) = fx.messages.try_recv() {
        assert!(
            !matches!(message, DeviceMessage::Connected { .. }),
            "a revoked device is never reported connected"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_device_s_will_arrives_as_its_status() {
    let mut fx = Fixture::start().await;
    let a = fx.pki.device_a.clone();
    let death = serde_json::json!({
        "state": "offline", "agentVersion": "0.1.0", "bootId": "boot-1", "seq": 7,
    })
    .to_string();
    let will_topic = topic("device-a", "status");
    let mut sub = fx.subscribe(
        "device-a",
        &a,
        Mqtt::V5,
        &topic("device-a", "actions"),
        &[
            "--will-topic",
            &will_topic,
            "--will-payload",
            &death,
            "--will-qos",
            "1",
        ],
    );
    // Once an action gets through, the session is past its CONNACK and
    // running. (rmqtt reports a session that dies between authentication and
    // CONNACK as connected but never as gone; see the ADR.)
    fx.publish_action_when_subscribed(&id("device-a"), &action("probe"))
        .await;
    fx.wait_for("device-a connecting", |m| {
        matches!(m, DeviceMessage::Connected { .. })
    })
    .await;

    // Gone without a DISCONNECT, as a device losing power.
    sub.kill().await.expect("kill mosquitto_sub");
    match fx.next_traffic().await {
        DeviceMessage::Status { device, status } => {
            assert_eq!(device, id("device-a"));
            assert_eq!(status.state, Presence::Offline);
            assert_eq!(status.seq, 7);
        }
        other => panic!("expected the will as a status, got {other:?}"),
    }
    match fx.next_message().await {
        DeviceMessage::Disconnected { device } => assert_eq!(device, id("device-a")),
        other => panic!("expected Disconnected after the will, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_packets_are_refused() {
    let mut fx = Fixture::start_with(4096).await;
    let a = fx.pki.device_a.clone();
    let big = event_json(&"x".repeat(8192));
    for version in [Mqtt::V311, Mqtt::V5] {
        let output = fx
            .publish(
                "device-a",
                Some(&a),
                version,
                &topic("device-a", "events"),
                &big,
                &[],
            )
            .await;
        // An MQTT 5 client learns the limit from the CONNACK and may refuse
        // to send at all; a 3.1.1 client sends and loses its connection.
        if matches!(version, Mqtt::V311) {
            assert!(!output.status.success(), "{}", describe(&output));
        }
    }

    let output = fx
        .publish(
            "device-a",
            Some(&a),
            Mqtt::V5,
            &topic("device-a", "events"),
            &event_json("small"),
            &[],
        )
        .await;
    assert!(output.status.success(), "{}", describe(&output));
    match fx.next_traffic().await {
        DeviceMessage::Event { event, .. } => assert_eq!(event.correlation_id, "small"),
        other => panic!("expected only the small event, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_certificate_file_is_a_start_error() {
    let dir = tempfile::tempdir().expect("temp dir");
    let pki = generate_pki(dir.path());
    let config = RmqttConfig::new(
        "127.0.0.1:0".parse().expect("socket address"),
        dir.path().join("absent.pem"),
        pki.server_key.clone(),
        pki.ca.clone(),
    );
    match RmqttLink::bind(config, Arc::new(Current(pki.current.clone()))).await {
        Err(LinkError::Start { reason, .. }) => assert!(reason.contains("TLS"), "{reason}"),
        Err(e) => panic!("expected a start error, got {e}"),
        Ok(_) => panic!("started without a server certificate"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_reach_the_device_as_reason_codes() {
    let mut fx = Fixture::start().await;
    let a = fx.pki.device_a.clone();
    let events = topic("device-a", "events");
    let publish = |version| fx.publish("device-a", Some(&a), version, &events, "{}", &[]);

    fx.refuse(
        &events,
        Refusal::Invalid("statusMessage is too long".into()),
    );
    let output = publish(Mqtt::V5).await;
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("Payload format invalid"),
        "0x99: {}",
        describe(&output)
    );
    let output = publish(Mqtt::V311).await;
    assert!(
        !output.status.success(),
        "3.1.1 is disconnected: {}",
        describe(&output)
    );

    fx.refuse(&events, Refusal::RateLimited("slow down".into()));
    let output = publish(Mqtt::V5).await;
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("Quota exceeded"),
        "0x97: {}",
        describe(&output)
    );

    // No acknowledgement at all: the session ends, the client must resend.
    fx.refuse(&events, Refusal::Unavailable("store unavailable".into()));
    let output = publish(Mqtt::V5).await;
    assert!(!output.status.success(), "no PUBACK: {}", describe(&output));
    fx.wait_for(
        "device-a's Disconnected",
        |m| matches!(m, DeviceMessage::Disconnected { device } if device.as_str() == "device-a"),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_to_its_actions_is_reported() {
    let mut fx = Fixture::start().await;
    let a = fx.pki.device_a.clone();
    let mut sub = fx.subscribe("device-a", &a, Mqtt::V5, &topic("device-a", "actions"), &[]);
    fx.wait_for(
        "device-a connecting",
        |m| matches!(m, DeviceMessage::Connected { device } if device.as_str() == "device-a"),
    )
    .await;
    fx.wait_for("device-a's subscription", |m| {
        matches!(m, DeviceMessage::SubscribedToActions { device } if device.as_str() == "device-a")
    })
    .await;
    sub.kill().await.expect("stop mosquitto_sub");
}
