"""Every write on serial gateways: provision, add children, revoke. Atomic and audited.

A gateway is one broker identity that speaks for the MCUs wired to it (its children) and may
touch their topic subtrees and its own status topic, nothing else. The broker is changed inside
the transaction, as enrollment does: a broker failure raises, the transaction rolls back, and
the caller answers 503 with nothing written, so the database never claims access the broker
did not grant.

Provisioning also issues the gateway's API token, which may do one thing: add children to
that gateway (``POST /api/v1/gateways/{uid}/children/``), so a field gateway host holds no
operator's credential. Only its SHA-256 is stored; re-provisioning replaces it (the old token
stops working at once) and revoking the gateway makes it useless.

Revoking or re-provisioning (a new password) cuts a live gateway off, and the broker sends no
last will for such an administrative disconnect: the gateway and the children whose presence
came through it are marked offline here, as its will would have done.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.utils import timezone

from device_sdk.protocol.enrollment import attach_message
from device_sdk.protocol.topics import is_valid_uid
from fleet.audit.actions import record_audit
from fleet.broker.access import BrokerAccess
from fleet.broker.configured import broker_access, require_broker_access
from fleet.core.errors import Refused
from fleet.devices.choices import DeviceState
from fleet.devices.credentials import hash_secret, new_gateway_token, new_mqtt_password
from fleet.devices.models import Device, Gateway
from fleet.devices.presence import take_gateway_children_offline
from fleet.devices.proof import check_proof

log = logging.getLogger(__name__)

MAX_CHILDREN = 1000


class GatewayError(Refused):
    """A gateway write refused."""


@dataclass(frozen=True)
class GatewayCredential:
    """What a provisioned gateway is told once: its MQTT password and its API token."""

    gateway: Gateway
    password: str
    created: bool
    api_token: str


@transaction.atomic
def do_provision_gateway(
    *,
    uid: str,
    children: Iterable[str],
    actor: AbstractBaseUser | None,
    name: str | None = None,
    remote_addr: str | None = None,
) -> GatewayCredential:
    """Create a gateway, or update one, with exactly ``children``, a fresh MQTT password and a
    fresh gateway API token.

    Updating replaces the children, the password (the broker drops the old connection, so the
    gateway and the children it spoke for are offline until it logs in with the new one) and
    the API token (the old one stops working), and brings a revoked gateway back. The password
    and the token are returned once and never stored (the token's SHA-256 is).
    """
    if not is_valid_uid(uid):
        raise GatewayError("invalid_uid", f"{uid!r} cannot name a broker identity.", 400)
    if Device.objects.filter(uid=uid).exists():
        raise GatewayError("uid_taken", f"{uid} is a device's id; a gateway needs its own.", 409)
    devices = _children(children)
    gateway = Gateway.objects.select_for_update().filter(uid=uid).first()
    created = gateway is None
    before = None if gateway is None else _snapshot(gateway)
    if gateway is None:
        gateway = Gateway(uid=uid, created_by=_user(actor))
    else:
        _cut_off(gateway, timezone.now())  # before the children change: those it spoke for
    if name is not None:
        gateway.name = name
    gateway.revoked_at = None
    if gateway.state == DeviceState.REVOKED:
        gateway.state = DeviceState.OFFLINE  # until it logs in with the new password
    gateway.credential_issued_at = timezone.now()
    old_token_prefix = gateway.api_token_prefix if gateway.api_token_hash else None
    api_token = new_gateway_token()
    gateway.api_token_hash = hash_secret(api_token)
    gateway.api_token_prefix = api_token[:8]
    gateway.save()
    gateway.children.set(devices)
    password = new_mqtt_password()
    child_uids = sorted(d.uid for d in devices)
    _broker_call(uid, lambda access: access.provision_gateway(uid, password, child_uids))
    record_audit(
        actor=actor, action="gateway.create" if created else "gateway.reprovision", obj=gateway,
        before=before, after=_snapshot(gateway), remote_addr=remote_addr,
    )
    # Its own entry, so "who could add children to this gateway, since when" is one search.
    # The prefix identifies a token; the secret itself never goes in.
    record_audit(
        actor=actor,
        action="gateway.issue_token" if old_token_prefix is None else "gateway.rotate_token",
        obj=gateway,
        before=None if old_token_prefix is None else {"api_token_prefix": old_token_prefix},
        after={"api_token_prefix": gateway.api_token_prefix}, remote_addr=remote_addr,
    )
    log.info("gateway %s provisioned for %d children", uid, len(child_uids))
    return GatewayCredential(gateway, password, created, api_token)


@transaction.atomic
def do_add_gateway_children(
    gateway: Gateway,
    children: Iterable[str],
    *,
    actor: AbstractBaseUser | None,
    actor_label: str | None = None,
    remote_addr: str | None = None,
) -> Gateway:
    """Let a gateway also speak for ``children``; its password stays (a gateway that just
    enrolled an MCU calls this with its own token: ``actor=None``, ``actor_label``
    ``gateway:<uid>``). Children it already has are no-ops."""
    gateway = Gateway.objects.select_for_update().get(pk=gateway.pk)
    if gateway.revoked:
        raise GatewayError("gateway_revoked", f"Gateway {gateway.uid} has been revoked.", 409)
    devices = _children(children)
    have = set(gateway.children.values_list("pk", flat=True))
    new = [d for d in devices if d.pk not in have]
    if not new:
        return gateway
    before = _snapshot(gateway)
    gateway.children.add(*new)
    new_uids = sorted(d.uid for d in new)
    _broker_call(gateway.uid, lambda access: access.add_gateway_children(gateway.uid, new_uids))
    record_audit(actor=actor, action="gateway.add_children", obj=gateway, before=before,
                 after=_snapshot(gateway), actor_label=actor_label, remote_addr=remote_addr)
    log.info("gateway %s now speaks for %s too", gateway.uid, ", ".join(new_uids))
    return gateway


@transaction.atomic
def do_attach_proven_children(
    gateway: Gateway,
    children: Iterable[str],
    proofs: dict[str, tuple[bytes, bytes]],
    *,
    actor_label: str,
    remote_addr: str | None = None,
) -> Gateway:
    """Attach children at a gateway's own request: each must have enrolled through this
    gateway and prove, with a fresh nonce, that it holds its enrolled key (its signature over
    ``attach_message``). Anything else is refused as a whole, in words that do not tell
    whether a uid exists or to whom it belongs."""
    wanted = sorted(set(children))
    if len(wanted) > MAX_CHILDREN:
        raise GatewayError("too_many_children", f"At most {MAX_CHILDREN} children.", 400)
    devices = {d.uid: d for d in Device.objects.filter(
        uid__in=wanted, revoked_at__isnull=True, enrolled_via=gateway)}
    refused = [uid for uid in wanted if uid not in devices or uid not in proofs]
    for uid, device in devices.items():
        if uid in refused:
            continue
        nonce, signature = proofs[uid]
        try:
            check_proof(device.public_key_pem,
                        attach_message(nonce=nonce, gateway_uid=gateway.uid, uid=uid),
                        nonce, signature)
        except Refused:
            refused.append(uid)
    if refused:
        raise GatewayError(
            "children_refused",
            "A gateway may attach only devices that enrolled through it, each with a valid "
            f"proof of possession; refused: {', '.join(sorted(refused)[:10])}", 403)
    return do_add_gateway_children(gateway, wanted, actor=None, actor_label=actor_label,
                                   remote_addr=remote_addr)


@transaction.atomic
def do_revoke_gateway(
    gateway: Gateway, *, actor: AbstractBaseUser | None, remote_addr: str | None = None
) -> Gateway:
    """Revoke a gateway: its broker identity is deleted and its connection closed at once.

    Its children stay enrolled; another gateway (or a new credential) can speak for them.
    """
    gateway = Gateway.objects.select_for_update().get(pk=gateway.pk)
    if gateway.revoked:
        return gateway
    require_broker_access(f"revoke gateway {gateway.uid}")  # refuses before writing anything
    gateway.revoked_at = timezone.now()
    _cut_off(gateway, gateway.revoked_at)
    gateway.state = DeviceState.REVOKED
    gateway.save(update_fields=["revoked_at", "state", "last_seen"])
    _broker_call(gateway.uid, lambda access: access.revoke_device(gateway.uid))
    record_audit(actor=actor, action="gateway.revoke", obj=gateway,
                 after={"revoked_at": gateway.revoked_at.isoformat()}, remote_addr=remote_addr)
    log.info("gateway %s revoked", gateway.uid)
    return gateway


def _cut_off(gateway: Gateway, at: datetime) -> None:
    """Record that the server disconnects ``gateway`` (no will follows): offline, with the
    children it spoke for. The caller holds its row lock and saves ``state``/``last_seen``."""
    if gateway.state == DeviceState.ONLINE:
        gateway.state = DeviceState.OFFLINE
        gateway.last_seen = max(gateway.last_seen or at, at)
    take_gateway_children_offline(gateway, at)


def _children(uids: Iterable[str]) -> list[Device]:
    """Resolve child uids to enrolled, unrevoked devices; refuse unknown ones by name."""
    wanted = sorted(set(uids))
    if len(wanted) > MAX_CHILDREN:
        raise GatewayError("too_many_children", f"At most {MAX_CHILDREN} children.", 400)
    devices = list(Device.objects.filter(uid__in=wanted, revoked_at__isnull=True))
    missing = sorted(set(wanted) - {d.uid for d in devices})
    if missing:
        raise GatewayError(
            "unknown_children",
            f"Not enrolled (or revoked): {', '.join(missing[:10])}"
            + (f" and {len(missing) - 10} more" if len(missing) > 10 else ""),
            400,
        )
    return devices


def _broker_call(uid: str, call: Callable[[BrokerAccess], None]) -> None:
    """Apply a change at the broker; any failure becomes a 503 that rolls the write back."""
    access = broker_access()
    if access is None:
        return  # no broker configured: the database alone records the intent
    try:
        call(access)
    except Exception as exc:  # any broker failure: refuse cleanly, write nothing
        log.error("broker refused a change to gateway %s: %s", uid, exc)
        raise GatewayError(
            "broker_unavailable", "The message broker is unavailable; retry later.", 503
        ) from exc


def _snapshot(gateway: Gateway) -> dict[str, Any]:
    return {
        "name": gateway.name,
        "children": sorted(gateway.children.values_list("uid", flat=True)),
        "revoked": gateway.revoked,
    }


def _user(actor: AbstractBaseUser | None) -> AbstractBaseUser | None:
    return actor if actor is not None and actor.is_authenticated else None
