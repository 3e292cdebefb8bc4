"""A third-party tether device, written from docs/device-contract.md and
docs/schemas/ alone (paho-mqtt, cryptography).

It enrolls with its own key and CSR over the HTTPS API, connects over MQTT 5
with mutual TLS, subscribes to its spec and actions, publishes its birth and
reported status, applies specs (it knows metricsConfig and refuses any other
section, reporting why), answers actions (get-node-ip; 410 once an action's
TTL has run out; 501 otherwise), and tries another device's topics, which
tetherd must refuse.

Progress goes to stdout as one JSON object a line, for the test driving it.
It runs until its standard input closes, then says goodbye.

Usage: python_device.py --server URL --token TOKEN --ca-sha256 HEX
                        --state-dir DIR --other-device NAME
"""

import argparse
import hashlib
import json
import os
import socket
import ssl
import sys
import threading
import time
import urllib.request

import paho.mqtt.client as mqtt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

AGENT_VERSION = "python-device 1.0"
CAPABILITIES = ["get-node-ip"]


def report(step, **fields):
    print(json.dumps({"step": step, **fields}), flush=True)


def fetch_pinned_ca(server, fingerprint):
    """GET /api/v1/ca.pem before anything is trusted; keep it only if it is
    exactly one certificate whose DER has the given SHA-256."""
    unverified = ssl.create_default_context()
    unverified.check_hostname = False
    unverified.verify_mode = ssl.CERT_NONE
    with urllib.request.urlopen(server + "/api/v1/ca.pem", context=unverified) as answer:
        pem = answer.read()
    certs = x509.load_pem_x509_certificates(pem)
    if len(certs) != 1:
        sys.exit(f"ca.pem holds {len(certs)} certificates, not one")
    der = certs[0].public_bytes(serialization.Encoding.DER)
    if hashlib.sha256(der).hexdigest() != fingerprint.lower():
        sys.exit("ca.pem does not match the pinned fingerprint")
    return pem


def enroll(server, token, ca_pem, state_dir):
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "python-device")]))
        .sign(key, hashes.SHA256())
    )
    body = json.dumps(
        {"token": token, "csrPem": csr.public_bytes(serialization.Encoding.PEM).decode()}
    ).encode()
    ca_path = os.path.join(state_dir, "ca.pem")
    with open(ca_path, "wb") as f:
        f.write(ca_pem)
    pinned = ssl.create_default_context(cafile=ca_path)
    request = urllib.request.Request(
        server + "/api/v1/enroll",
        data=body,
        headers={"content-type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, context=pinned) as answer:
        enrolled = json.load(answer)
    key_path = os.path.join(state_dir, "key.pem")
    with open(os.open(key_path, os.O_WRONLY | os.O_CREAT, 0o600), "wb") as f:
        f.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    cert_path = os.path.join(state_dir, "cert.pem")
    with open(cert_path, "w") as f:
        f.write(enrolled["certificatePem"])
    return enrolled["device"], enrolled["mqttUrl"], ca_path, cert_path, key_path


def topic(device, kind):
    return f"tether/v1/devices/{device}/{kind}"


def node_addresses():
    try:
        return sorted({info[4][0] for info in socket.getaddrinfo(socket.gethostname(), None)})
    except OSError:
        return []


class Device:
    def __init__(self, name, other):
        self.name = name
        self.other = other
        self.answers = {}  # correlationId -> event, for redeliveries
        self.subscriptions = {}  # mid -> what it was for
        self.publishes = {}  # mid -> what it was for
        self.lock = threading.Lock()
        self.spec_version = 0
        self.spec_errors = []

    def status(self, state):
        return json.dumps(
            {"state": state, "agentVersion": AGENT_VERSION, "capabilities": CAPABILITIES}
        )

    def on_connect(self, client, _userdata, _flags, reason_code, _properties):
        if reason_code.is_failure:
            report("refused-connect", reasonCode=reason_code.value)
            return
        report("connected")
        # The spec first: tetherd sends it once the actions subscription lands.
        _, mid = client.subscribe([(topic(self.name, "spec"), 1), (topic(self.name, "actions"), 1)])
        self.subscriptions[mid] = "own-actions"

    def reported(self):
        return json.dumps(
            {
                "specVersion": self.spec_version,
                "errors": self.spec_errors,
                "facts": {"hostname": socket.gethostname(), "agentVersion": AGENT_VERSION},
            }
        )

    def apply_spec(self, client, payload):
        message = json.loads(payload)
        errors = []
        for section in message["spec"]:
            if section != "metricsConfig":
                errors.append({"path": f"spec.{section}", "message": "python-device cannot apply this section"})
        self.spec_version = message["version"]
        self.spec_errors = errors
        info = client.publish(topic(self.name, "reported"), self.reported(), qos=1)
        self.publishes[info.mid] = "reported"
        report("spec-applied", version=self.spec_version, errors=len(errors))

    def on_subscribe(self, client, _userdata, mid, reason_codes, _properties):
        what = self.subscriptions.pop(mid, "?")
        code = max(reason.value for reason in reason_codes)
        if what == "own-actions":
            if code >= 0x80:
                report("refused-own-subscription", reasonCode=code)
                return
            info = client.publish(topic(self.name, "status"), self.status("online"), qos=1)
            self.publishes[info.mid] = "birth"
            info = client.publish(topic(self.name, "reported"), self.reported(), qos=1)
            self.publishes[info.mid] = "reported"
            report("online")
            # Another device's topics must be refused.
            _, mid = client.subscribe(topic(self.other, "actions"), qos=1)
            self.subscriptions[mid] = "foreign-actions"
            foreign = json.dumps(
                {"correlationId": "not-mine", "event": "x", "statusCode": 200, "statusMessage": "OK"}
            )
            info = client.publish(topic(self.other, "events"), foreign, qos=1)
            self.publishes[info.mid] = "foreign-events"
        else:
            report("subscribe-answer", what=what, reasonCode=code)

    def on_publish(self, _client, _userdata, mid, reason_code, _properties):
        what = self.publishes.pop(mid, "answer")
        report("publish-answer", what=what, reasonCode=reason_code.value)

    def on_message(self, client, _userdata, message):
        arrived = time.monotonic()
        if message.topic == topic(self.name, "spec"):
            self.apply_spec(client, message.payload)
            return
        if message.topic != topic(self.name, "actions"):
            report("unexpected-message", topic=message.topic)
            return
        try:
            request = json.loads(message.payload)
            correlation_id = request["correlationId"]
        except (ValueError, KeyError):
            report("unreadable-action")
            return
        with self.lock:
            event = self.answers.get(correlation_id)
            if event is None:
                event = self.run(request, arrived)
                self.answers[correlation_id] = event
        properties = Properties(PacketTypes.PUBLISH)
        properties.CorrelationData = correlation_id.encode()
        client.publish(topic(self.name, "events"), json.dumps(event), qos=1, properties=properties)
        report("answered", correlationId=correlation_id, statusCode=event["statusCode"])

    def run(self, request, arrived):
        # The deadline is counted here, from the time left; the two clocks
        # are never compared.
        deadline = arrived + request["expiresInMs"] / 1000.0
        action = request["action"]

        def answer(code, message, response=None):
            return {
                "correlationId": request["correlationId"],
                "event": action,
                "statusCode": code,
                "statusMessage": message,
                "response": response,
            }

        if time.monotonic() >= deadline:
            return answer(410, "expired before the device could start it")
        if action == "get-node-ip":
            return answer(200, "OK", {"addresses": node_addresses()})
        return answer(501, f"{action} is not implemented by {AGENT_VERSION}")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--server", required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument("--ca-sha256", required=True)
    parser.add_argument("--state-dir", required=True)
    parser.add_argument("--other-device", required=True)
    args = parser.parse_args()

    ca_pem = fetch_pinned_ca(args.server, args.ca_sha256)
    name, mqtt_url, ca_path, cert_path, key_path = enroll(
        args.server, args.token, ca_pem, args.state_dir
    )
    report("enrolled", device=name, mqttUrl=mqtt_url)

    host, port = mqtt_url.removeprefix("mqtts://").rsplit(":", 1)
    device = Device(name, args.other_device)
    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2, client_id=name, protocol=mqtt.MQTTv5
    )
    client.tls_set(ca_certs=ca_path, certfile=cert_path, keyfile=key_path)
    client.will_set(topic(name, "status"), device.status("offline"), qos=1, retain=False)
    client.on_connect = device.on_connect
    client.on_subscribe = device.on_subscribe
    client.on_publish = device.on_publish
    client.on_message = device.on_message
    client.reconnect_delay_set(min_delay=1, max_delay=60)
    client.connect(host, int(port), keepalive=30, clean_start=True)
    client.loop_start()

    sys.stdin.read()  # until the test closes it

    goodbye = client.publish(topic(name, "status"), device.status("offline"), qos=1)
    goodbye.wait_for_publish(timeout=5)
    client.disconnect()
    client.loop_stop()
    report("stopped")


if __name__ == "__main__":
    main()
