"""Every write of the devices app: atomic, audited, broker changes tied to the commit."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.utils import timezone

from device_sdk.protocol.enrollment import enrollment_message
from fleet.audit.actions import record_audit
from fleet.broker.access import DeviceCertificate, IssuesDeviceCertificates
from fleet.broker.configured import broker_access, require_broker_access
from fleet.core.errors import Refused
from fleet.core.rows import insert_row
from fleet.devices.capabilities import capability_issues
from fleet.devices.choices import DeviceState, TokenState
from fleet.devices.claims import claim_context, give_back_claim, take_claim
from fleet.devices.credentials import (
    InvalidPublicKey,
    default_uid,
    hash_secret,
    new_claim_token,
    new_mqtt_password,
    parse_public_key,
)
from fleet.devices.models import (
    Device,
    DeviceGroup,
    EnrollmentToken,
    Gateway,
    HardwareProfile,
    Tag,
)
from fleet.devices.proof import check_proof

log = logging.getLogger(__name__)


class EnrollmentError(Refused):
    """Enrollment refused."""


@dataclass(frozen=True)
class EnrollmentResult:
    """What an enrolled device is told once: its id and its MQTT credential, which is a
    password, or (``certificate``: X.509 broker access) a client certificate for its own key
    and no password (``mqtt_password`` empty)."""

    device: Device
    mqtt_username: str
    mqtt_password: str
    created: bool
    certificate: DeviceCertificate | None = None


@transaction.atomic
def do_create_enrollment_token(
    *,
    actor: AbstractBaseUser | None,
    expires_at: datetime,
    max_uses: int = 1,
    name: str = "",
    group: DeviceGroup | None = None,
    hardware_profile: HardwareProfile | None = None,
    uid_pattern: str = "",
    allowed_uids: list[str] | None = None,
) -> tuple[EnrollmentToken, str]:
    """Create a claim token; return the row and the plain token (which is never stored).

    ``uid_pattern`` / ``allowed_uids`` bind the uids it may enroll (``admits_uid``).
    """
    plain = new_claim_token()
    token = EnrollmentToken.objects.create(
        name=name,
        token_hash=hash_secret(plain),
        prefix=plain[:8],
        max_uses=max_uses,
        expires_at=expires_at,
        group=group,
        hardware_profile=hardware_profile,
        uid_pattern=uid_pattern,
        allowed_uids=list(allowed_uids or []),
        created_by=actor if actor is not None and actor.is_authenticated else None,
    )
    record_audit(
        actor=actor,
        action="enrollment_token.create",
        obj=token,
        after={
            "name": name, "prefix": token.prefix, "max_uses": max_uses,
            "expires_at": expires_at.isoformat(), "group": group and group.name,
            "hardware_profile": hardware_profile and hardware_profile.name,
            "uid_pattern": uid_pattern, "allowed_uids": len(allowed_uids or []),
        },
    )
    return token, plain


@transaction.atomic
def do_revoke_enrollment_token(token: EnrollmentToken, *, actor: AbstractBaseUser | None) -> None:
    """Revoke a claim token: it enrolls no further device. Devices it enrolled stay."""
    if token.revoked_at is not None:
        return
    token.revoked_at = timezone.now()
    token.save(update_fields=["revoked_at"])
    record_audit(actor=actor, action="enrollment_token.revoke", obj=token,
                 after={"revoked_at": token.revoked_at.isoformat()})


_TOKEN_REFUSALS = {
    TokenState.REVOKED: ("token_revoked", "This enrollment token has been revoked."),
    TokenState.EXPIRED: ("token_expired", "This enrollment token has expired."),
    TokenState.USED_UP: ("token_used_up", "This enrollment token has no uses left."),
}


@dataclass(frozen=True)
class EnrollmentProof:
    """A device's proof that it holds its key: the server's nonce and its signature over
    ``device_sdk.protocol.enrollment.enrollment_message``; ``capabilities`` exactly as sent."""

    nonce: bytes
    signature: bytes
    capabilities: dict[str, Any]


_UID_REFUSAL = ("uid_not_allowed", "This token and key may not enroll this device id.")


@transaction.atomic
def do_enroll_device(
    *,
    token: str,
    public_key_pem: str,
    hardware: str,
    capabilities: dict[str, Any],
    proof: EnrollmentProof,
    uid: str | None = None,
    name: str = "",
    via: Gateway | None = None,
    remote_addr: str | None = None,
) -> EnrollmentResult:
    """Enroll a device that presents a claim token, its public key and proof that it holds the
    private key (checked before anything else; see ``fleet.devices.proof``).

    Re-enrolling with the key a device already enrolled with is idempotent: the same device,
    no token use consumed, a fresh MQTT credential (the device may have lost the first answer);
    only that key's holder can do it. A uid enrolled with another key, or one the token does
    not admit (``EnrollmentToken.admits_uid``), is refused alike, without telling which. A
    request relayed by gateway ``via`` (which the device signed) makes the device that
    gateway's child. Any refusal writes nothing.
    """
    try:
        key = parse_public_key(public_key_pem)
    except InvalidPublicKey as exc:
        raise EnrollmentError("invalid_public_key", str(exc), 400) from None
    message = enrollment_message(nonce=proof.nonce, token=token, uid=uid or "", hardware=hardware,
                                 capabilities=proof.capabilities, via=via.uid if via else "")
    check_proof(key.pem, message, proof.nonce, proof.signature)
    derived = default_uid(key.fingerprint)
    claim = take_claim(hash_secret(token))  # locks the token row until the commit
    if claim is None:
        raise EnrollmentError("token_unknown", "No such enrollment token.", 403)
    if claim.revoked_at is not None:
        raise EnrollmentError(*_TOKEN_REFUSALS[TokenState.REVOKED], 403)
    context = claim_context(claim, hardware=hardware, fingerprint=key.fingerprint,
                            uid=uid or derived)
    profile = context.profile
    if profile is None:
        raise EnrollmentError("unknown_hardware", f"No hardware profile named {hardware!r}.", 400)
    if claim.hardware_profile_id is not None and claim.hardware_profile_id != profile.id:
        raise EnrollmentError(
            "token_hardware_mismatch",
            f"This token is for {claim.hardware_profile.name} devices, not {hardware}.",
            403,
        )

    if context.key_device_id is not None:  # this key is enrolled: the same device again
        give_back_claim(claim)
        existing = Device.objects.select_for_update().filter(pk=context.key_device_id).first()
        if existing is None:  # deleted since claim_context read it: a clean refusal, not a 500
            raise EnrollmentError("conflict", "This device changed meanwhile; try again.", 409)
        return _re_enroll(existing, claim, uid, profile, capabilities, via, remote_addr)

    uid = uid or derived
    # The uid taken (by another key) or not admitted: refused alike.
    if not claim.admits_uid(uid, derived) or context.uid_device_id is not None:
        raise EnrollmentError(*_UID_REFUSAL, 403)
    state = claim.state
    if state != TokenState.ACTIVE:
        raise EnrollmentError(*_TOKEN_REFUSALS[state], 403)

    device = insert_row(Device(
        uid=uid,
        name=name,
        hardware_profile=profile,
        group_id=claim.group_id,
        public_key_pem=key.pem,
        public_key_fingerprint=key.fingerprint,
        key_algorithm=key.algorithm,
        enrolled_with=claim,
        enrolled_via=via,
        **_capability_fields(capabilities, profile),
    ))
    claim.uses += 1  # take_claim counted it in the row
    password, certificate = _provision(device)
    if via is not None:
        _attach_to_gateway(via, device)
    record_audit(
        actor=None, actor_label=f"device:{uid}", action="device.enroll", obj=device,
        after={"hardware": profile.name, "group": context.group_name,
               "token": claim.prefix, "key": key.fingerprint[:16],
               "via": via.uid if via else None},
        remote_addr=remote_addr,
    )
    log.info("device %s enrolled (%s, token %s…%s)", uid, profile.name, claim.prefix,
             f", via gateway {via.uid}" if via else "")
    return EnrollmentResult(device, uid, password, created=True, certificate=certificate)


def _re_enroll(
    device: Device,
    claim: EnrollmentToken,
    uid: str | None,
    profile: HardwareProfile,
    capabilities: dict[str, Any],
    via: Gateway | None,
    remote_addr: str | None,
) -> EnrollmentResult:
    if device.revoked:
        raise EnrollmentError("device_revoked", f"Device {device.uid} has been revoked.", 403)
    if uid and uid != device.uid:
        raise EnrollmentError(
            "key_bound_to_other_device",
            f"This key is already enrolled as device {device.uid}.", 409,
        )
    # The same token may always repeat its own enrollment; another token must still be valid.
    if claim.id != device.enrolled_with_id and claim.state != TokenState.ACTIVE:
        raise EnrollmentError(*_TOKEN_REFUSALS[claim.state], 403)
    if device.hardware_profile_id != profile.id:
        raise EnrollmentError(
            "hardware_changed",
            f"Device {device.uid} enrolled as {device.hardware_profile.name}, not {profile.name}.",
            409,
        )
    for field, value in _capability_fields(capabilities, profile).items():
        setattr(device, field, value)
    device.save()
    password, certificate = _provision(device)
    if via is not None:  # the key's holder signed this relay: it may speak for the device
        _attach_to_gateway(via, device)
    record_audit(actor=None, actor_label=f"device:{device.uid}", action="device.re_enroll",
                 obj=device, after={"via": via.uid if via else None}, remote_addr=remote_addr)
    return EnrollmentResult(device, device.uid, password, created=False,
                            certificate=certificate)


def _attach_to_gateway(gateway: Gateway, device: Device) -> None:
    """Let ``gateway`` speak for ``device`` (at the broker too, inside this transaction)."""
    if gateway.revoked:
        raise EnrollmentError("gateway_revoked", f"Gateway {gateway.uid} has been revoked.", 409)
    if gateway.children.filter(pk=device.pk).exists():
        return
    gateway.children.add(device)
    access = broker_access()
    if access is not None:
        try:
            access.add_gateway_children(gateway.uid, [device.uid])
        except Exception as exc:
            log.error("broker refused to attach %s to %s: %s", device.uid, gateway.uid, exc)
            raise EnrollmentError(
                "broker_unavailable", "The message broker is unavailable; retry later.", 503
            ) from exc


def _capability_fields(capabilities: dict[str, Any], profile: HardwareProfile) -> dict[str, Any]:
    issues = capability_issues(profile, capabilities)
    if issues:
        log.warning("device enrolling as %s contradicts its profile: %s", profile.name,
                    "; ".join(i["message"] for i in issues))
    return {
        "capabilities": capabilities,
        "capability_issues": issues,
        "firmware_version": capabilities.get("firmware_version", ""),
        "tflm_version": capabilities.get("tflm_version", ""),
    }


def _provision(device: Device) -> tuple[str, DeviceCertificate | None]:
    """Give the device its broker credential, inside the enrollment transaction: a fresh MQTT
    password the broker learns, or (a backend that `IssuesDeviceCertificates`) a client
    certificate for the public key the device just proved it holds, and no password.

    A broker failure raises and rolls the enrollment back, so a device is never told a
    credential the broker does not know.
    """
    access = broker_access()
    issuer = access if isinstance(access, IssuesDeviceCertificates) else None
    password = "" if issuer is not None else new_mqtt_password()
    certificate = None
    if access is not None:
        try:
            access.provision_device(device.uid, password)
            if issuer is not None:
                certificate = issuer.issue_device_certificate(device.uid, device.public_key_pem)
        except Exception as exc:  # any broker failure: refuse cleanly, write nothing
            log.error("broker refused to provision %s: %s", device.uid, exc)
            raise EnrollmentError(
                "broker_unavailable", "The message broker is unavailable; retry later.", 503
            ) from exc
    return password, certificate


@transaction.atomic
def do_revoke_device(device: Device, *, actor: AbstractBaseUser | None) -> Device:
    """Revoke a device: mark it, and remove its broker access once the change is committed.

    The broker also disconnects it; its telemetry and history stay.
    """
    if device.revoked:
        return device
    require_broker_access(f"revoke device {device.uid}")  # refuses before writing anything
    before = {"state": device.state}
    device.revoked_at = timezone.now()
    device.state = DeviceState.REVOKED
    device.save(update_fields=["revoked_at", "state"])
    record_audit(actor=actor, action="device.revoke", obj=device, before=before,
                 after={"state": device.state, "revoked_at": device.revoked_at.isoformat()})
    uid = device.uid
    transaction.on_commit(lambda: _remove_broker_access(uid))
    return device


def _remove_broker_access(uid: str) -> None:
    access = broker_access()
    if access is None:
        return
    try:
        access.revoke_device(uid)
        log.info("device %s revoked at the broker", uid)
    except Exception:  # the DB says revoked; re-running the revoke retries the broker
        log.exception("broker revoke of %s failed; run `manage.py revoke_device %s` again", uid, uid)


@transaction.atomic
def do_update_device(
    device: Device,
    *,
    actor: AbstractBaseUser | None,
    name: str | None = None,
    group: DeviceGroup | None | bool = False,
    tags: list[str] | None = None,
) -> Device:
    """Edit what an operator may edit on a device: name, group, tags (``group=False``: keep)."""
    before = _device_snapshot(device)
    if name is not None:
        device.name = name
    if group is not False:
        device.group = group
    device.save()
    if tags is not None:
        device.tags.set([Tag.objects.get_or_create(name=t)[0] for t in tags])
    record_audit(actor=actor, action="device.update", obj=device, before=before,
                 after=_device_snapshot(device))
    return device


def _device_snapshot(device: Device) -> dict[str, Any]:
    return {
        "name": device.name,
        "group": device.group.name if device.group else None,
        "tags": sorted(device.tags.values_list("name", flat=True)) if device.pk else [],
    }
