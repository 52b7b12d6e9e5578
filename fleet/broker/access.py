"""Say who may touch which MQTT topics, behind one small broker-admin interface.

Everything broker-specific (creating a device's credential and ACL, revoking it) sits
behind `BrokerAccess`. Today the implementation is Mosquitto's dynamic security plugin
(`fleet.broker.dynsec.DynsecAccess`); a cluster would get one over EMQX's HTTP API or an
HTTP auth hook into this server. The policy itself, which topics each kind of identity
may use, is plain data here (`device_grants`, `service_grants`) so every backend grants
exactly the same thing.

Topics are the v1 wire protocol (docs/ARCHITECTURE.md, Topics): a device owns ``fleet/v1/{uid}/...``;
``fleet/v1/pkg/{pkg}/...`` carries signed package chunks to many devices at once, and only
devices offered that package may read it. Two ways, chosen by ``FANOUT_ACCESS``:
``"encrypt"`` (the default) lets every device subscribe, and the chunks are encrypted with a
key sent only to offered devices (``device_sdk.protocol.fanout``); ``"grant"`` lets no device
subscribe until the rollout controller grants the package's fan-out (`package_grants`) at the
offer, and takes it back when the deployment ends: Mosquitto 2.0.11 drops a client whenever
its roles change, so each grant and each revocation costs the device a reconnect (about 1.5
KB with its status: +3 % of a 100 KB package, measured by bench/rollout.py). ``fleet/v1/keys``
(the fleet's signed trust records, retained) is read-only for every device.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol, runtime_checkable

TOPIC_ROOT = "fleet/v1"
# Wire values: firmware and SDK build the same strings. Never rename.
DEVICE_TO_SERVER = ("events", "status", "ota/get", "ota/report")
SERVER_TO_DEVICE = ("ota/offer", "ota/chunk", "ota/withdraw", "ota/key")
PACKAGE_FANOUT = f"{TOPIC_ROOT}/pkg/#"
TRUST_TOPIC = f"{TOPIC_ROOT}/keys"
# `pkg` is the fan-out subtree: a device with that id would own a piece of it.
RESERVED_UIDS = frozenset({"pkg"})
# One topic level, printable, no MQTT wildcards or `$` prefix; long enough for a UUID.
_UID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")


class BrokerAccessError(Exception):
    """A broker-admin operation failed."""


class BrokerUnavailable(BrokerAccessError):
    """The broker did not answer in time, or refused the admin's login."""


class BrokerCommandError(BrokerAccessError):
    """The broker answered a command with an error, or refused to touch an identity."""


class ServiceRole(StrEnum):
    """What a server-side identity may do (wire value: part of the broker's role names)."""

    #: Ingest and OTA service: reads everything devices send (shared subscriptions
    #: included) and sends offers, chunks and package fan-out.
    WORKER = "worker"
    #: Sends to devices only: the web process publishing an offer after its commit.
    PUBLISHER = "publisher"
    #: Reads what devices send, sends nothing: dashboards and live views.
    MONITOR = "monitor"


class Access(StrEnum):
    """A kind of permission on a topic filter."""

    PUBLISH = "publish"  # the identity may publish to matching topics
    SUBSCRIBE = "subscribe"  # the identity may subscribe with a filter inside this one
    RECEIVE = "receive"  # the broker may deliver matching messages to the identity


@dataclass(frozen=True)
class Grant:
    """One allowed access to a topic filter; anything not granted is denied."""

    access: Access
    topic: str


@runtime_checkable
class BrokerAccess(Protocol):
    """Manage the broker credentials and topic permissions of devices and services.

    Every method is idempotent: provisioning an existing identity updates its password
    and permissions, revoking a missing one does nothing. Failures raise
    `BrokerAccessError` subclasses with a message an operator can act on.
    """

    def provision_device(self, uid: str, password: str) -> None:
        """Let device ``uid`` log in with ``password`` and use its own topics only."""
        ...

    def revoke_device(self, uid: str) -> None:
        """Remove device (or gateway) ``uid``'s credential, disconnecting it at once."""
        ...

    def provision_service(self, username: str, password: str, role: ServiceRole | str) -> None:
        """Let a server-side identity (worker, web) log in with the rights of ``role``."""
        ...

    def provision_gateway(self, uid: str, password: str, children: list[str]) -> None:
        """Let serial gateway ``uid`` use exactly its ``children``'s device topics."""
        ...

    def add_gateway_children(self, uid: str, children: list[str]) -> None:
        """Let existing gateway ``uid`` also use ``children``'s topics; keep its password."""
        ...

    def grant_package(self, pkg: int, uids: list[str]) -> None:
        """Let each of ``uids`` (devices, or gateways speaking for them) read package
        ``pkg``'s fan-out, on top of what they may do already."""
        ...

    def revoke_package(self, pkg: int, uids: list[str]) -> None:
        """Take back what :meth:`grant_package` gave; unknown identities are skipped."""
        ...

    def ping(self) -> float:
        """Check the broker answers admin commands; return the round trip in seconds."""
        ...

    def close(self) -> None:
        """Release the connection to the broker."""
        ...


@dataclass(frozen=True)
class DeviceCertificate:
    """A device's MQTT client certificate and the CA that issued it (both PEM)."""

    certificate_pem: str  # CN = the device uid; the public key the device enrolled with
    ca_pem: str  # the device CA the broker trusts it by (the chain up to that root)


@runtime_checkable
class IssuesDeviceCertificates(Protocol):
    """A `BrokerAccess` whose devices log in with client certificates instead of passwords
    (``fleet.broker.x509``): enrollment hands the device its certificate."""

    def issue_device_certificate(self, uid: str, public_key_pem: str) -> DeviceCertificate:
        """Return ``uid``'s certificate for the public key it proved it holds (O(1))."""
        ...


def check_uid(uid: str) -> str:
    """Return ``uid`` if it can name a device's topic subtree, else raise ValueError."""
    if not isinstance(uid, str) or not _UID_RE.fullmatch(uid) or uid in RESERVED_UIDS:
        raise ValueError(
            f"invalid device id {uid!r}: use 1-128 of A-Z a-z 0-9 _ . : - "
            f"(not starting with a symbol, not {sorted(RESERVED_UIDS)})"
        )
    return uid


def device_topic(uid: str, leaf: str) -> str:
    """Return the topic ``fleet/v1/{uid}/{leaf}``."""
    return f"{TOPIC_ROOT}/{check_uid(uid)}/{leaf}"


def fanout_by_grant() -> bool:
    """Whether package fan-out is granted per deployment (``FANOUT_ACCESS=grant``) rather
    than readable by every device and encrypted (``encrypt``, the default)."""
    from django.conf import settings

    return getattr(settings, "FANOUT_ACCESS", "encrypt") == "grant"


def device_grants(uid: str, *, package_fanout: bool | None = None) -> tuple[Grant, ...]:
    """Return what device ``uid`` may do: its own subtree, read the trust records, and (unless
    fan-out is granted per deployment, see `fanout_by_grant`) read the encrypted fan-out.
    """
    if package_fanout is None:
        package_fanout = not fanout_by_grant()
    grants = [Grant(Access.PUBLISH, device_topic(uid, leaf)) for leaf in DEVICE_TO_SERVER]
    for leaf in SERVER_TO_DEVICE:
        grants += [
            Grant(Access.SUBSCRIBE, device_topic(uid, leaf)),
            Grant(Access.RECEIVE, device_topic(uid, leaf)),
        ]
    grants += [Grant(Access.SUBSCRIBE, TRUST_TOPIC), Grant(Access.RECEIVE, TRUST_TOPIC)]
    if package_fanout:
        grants += [Grant(Access.SUBSCRIBE, PACKAGE_FANOUT), Grant(Access.RECEIVE, PACKAGE_FANOUT)]
    return tuple(grants)


def package_filter(pkg: int) -> str:
    """Return the fan-out filter of package ``pkg`` (what a device subscribes to)."""
    if type(pkg) is not int or pkg < 0:
        raise ValueError(f"invalid package id {pkg!r}")
    return f"{TOPIC_ROOT}/pkg/{pkg}/#"


def package_grants(pkg: int) -> tuple[Grant, ...]:
    """Return what a device offered package ``pkg`` may do on top: read its fan-out."""
    topic = package_filter(pkg)
    return (Grant(Access.SUBSCRIBE, topic), Grant(Access.RECEIVE, topic))


def service_grants(role: ServiceRole | str) -> tuple[Grant, ...]:
    """Return what a server-side identity with ``role`` may do, for every device."""
    role = ServiceRole(role)
    grants: list[Grant] = []
    if role in (ServiceRole.WORKER, ServiceRole.MONITOR):
        for leaf in DEVICE_TO_SERVER:
            topic = f"{TOPIC_ROOT}/+/{leaf}"
            grants += [
                Grant(Access.SUBSCRIBE, topic),
                # Shared subscriptions spread one stream over several workers; the ACL
                # has to name the whole `$share/<group>/<filter>`.
                Grant(Access.SUBSCRIBE, f"$share/+/{topic}"),
                Grant(Access.RECEIVE, topic),
            ]
    if role in (ServiceRole.WORKER, ServiceRole.PUBLISHER):
        # Only the server-to-device leaves: a service must not forge a device's reports.
        grants += [Grant(Access.PUBLISH, f"{TOPIC_ROOT}/+/{leaf}") for leaf in SERVER_TO_DEVICE]
        grants.append(Grant(Access.PUBLISH, PACKAGE_FANOUT))
        grants.append(Grant(Access.PUBLISH, TRUST_TOPIC))
    return tuple(grants)
