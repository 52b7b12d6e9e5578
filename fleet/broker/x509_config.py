"""Mosquitto's side of X.509 broker access: the device listener config and the ACL file.

Every device gets the same ``pattern`` lines (``%u`` is its certificate's CN, the uid, which
2.0.11 expands in an ``acl_file``, unlike in dynamic security); services and gateways get
``user`` blocks. `write_broker_template` renders the listener config of this mode.
"""

from __future__ import annotations

import string
from pathlib import Path
from typing import Any

from fleet.broker.access import (
    Access,
    Grant,
    device_grants,
    device_topic,
    service_grants,
)
from fleet.broker.device_ca import DeviceCA

# Device grants as acl_file patterns: %u is the certificate's CN, the uid.
PATTERN_UID = "%u"


def device_patterns() -> list[str]:
    """Return the acl_file ``pattern`` lines that give every device its `device_grants`."""
    # device_grants of a placeholder uid, with the placeholder turned into %u.
    placeholder = "uidplaceholder0"
    lines = []
    for topic, access in merge_grants(device_grants(placeholder)).items():
        lines.append(f"pattern {access} {topic.replace(placeholder, PATTERN_UID)}")
    return lines


def merge_grants(grants: tuple[Grant, ...] | list[Grant]) -> dict[str, str]:
    """Fold grants into acl_file access words per topic: write, read or readwrite.

    Mosquitto's ``read`` covers subscribing and receiving; ``write`` publishing.
    """
    per_topic: dict[str, set[str]] = {}
    for grant in grants:
        word = "write" if grant.access == Access.PUBLISH else "read"
        per_topic.setdefault(grant.topic, set()).add(word)
    return {topic: "readwrite" if len(words) == 2 else words.pop()
            for topic, words in per_topic.items()}


def render_acl(state: dict[str, Any]) -> str:
    """Return the ACL file for ``state`` (services and gateways): device patterns, then a
    block per service and gateway."""
    lines = ["# Written by fleet.broker.x509 from access.json: do not edit.",
             "# Every device (certificate CN = uid = username = client id):",
             *device_patterns(), ""]
    for username, role in sorted(state["services"].items()):
        lines.append(f"user {username}")
        lines += [f"topic {a} {t}" for t, a in merge_grants(service_grants(role)).items()]
        lines.append("")
    for uid, children in sorted(state["gateways"].items()):
        grants = [Grant(Access.PUBLISH, device_topic(uid, "status"))]
        for child in children:
            grants += device_grants(child)
        lines.append(f"user {uid}")
        lines += [f"topic {a} {t}" for t, a in merge_grants(grants).items()]
        lines.append("")
    return "\n".join(lines) + "\n"


# The broker config for certificate-authenticated devices. string.Template placeholders of
# fleet.broker.mosquitto.MosquittoInstance (${port}, ...) stay; the ones of this mode are
# filled by `write_broker_template` ($$ is a literal dollar for the second pass).
X509_TEMPLATE = """\
# Mosquitto 2 for the TinyML fleet with per-device X.509 certificates (fleet/broker/x509.py).
# Rendered twice: by fleet.broker.x509.write_broker_template, then by fleet.broker.mosquitto.
per_listener_settings false
allow_anonymous false
user $${user}

# Loopback (or a firewalled private network), plain: the web server, the workers and the
# admin (passwords in password_file). Services log in here only.
listener $${port} $${host}
protocol mqtt
max_connections $${max_connections}

# Serial gateways: TLS with their provisioned password (MQTT_GATEWAY_URL); the fleet broker CA
# signs the server. The username (the gateway's uid, unique in the fleet) becomes the client
# id, so a gateway cannot take over a device's or another gateway's session by its client id.
listener $${tls_port} $${host}
protocol mqtt
max_connections $${max_connections}
certfile $${server_cert}
keyfile $${server_key}
use_username_as_clientid true
tls_version tlsv1.2

# Devices: a client certificate from the device CA is the only way in. Its CN (the device
# uid) becomes the username and the client id, so the ACL patterns below give each device
# its own subtree and nobody can take over another device's session.
listener ${device_port} ${device_host}
protocol mqtt
max_connections $${max_connections}
certfile $${server_cert}
keyfile $${server_key}
cafile ${device_ca}
require_certificate true
use_identity_as_username true
use_username_as_clientid true
crlfile ${crl}
tls_version tlsv1.2

password_file ${passwd}
acl_file ${acl}

persistence true
persistence_location $${persistence_dir}/
autosave_interval $${autosave_interval}
persistent_client_expiration 14d
max_queued_messages $${max_queued_messages}
max_queued_bytes $${max_queued_bytes}
max_inflight_messages $${max_inflight_messages}
max_packet_size $${max_packet_size}
set_tcp_nodelay true

log_dest file $${log_file}
log_type error
log_type warning
log_type notice
log_type information
connection_messages true
log_timestamp true
log_timestamp_format %Y-%m-%dT%H:%M:%S
"""


def write_broker_template(directory: Path | str, device_port: int,
                          device_host: str = "127.0.0.1") -> Path:
    """Write the Mosquitto config template of this mode for ``directory`` (the X509Access
    folder, which must be readable by the broker's user); return its path."""
    directory = Path(directory)
    DeviceCA(directory).ensure()
    for name in ("acl", "passwd"):
        (directory / name).touch(mode=0o644)
    path = directory / "mosquitto-x509.conf.template"
    path.write_text(string.Template(X509_TEMPLATE).substitute(
        device_port=device_port, device_host=device_host,
        device_ca=directory / "device-ca.pem", crl=directory / "crl.pem",
        passwd=directory / "passwd", acl=directory / "acl"))
    return path
