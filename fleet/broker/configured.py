"""The broker-access backend the settings name, built once per process."""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

from django.conf import settings

from fleet.core.errors import Refused

if TYPE_CHECKING:
    from fleet.broker.access import BrokerAccess

log = logging.getLogger(__name__)
_lock = threading.Lock()
_instance: BrokerAccess | None = None


class BrokerNotConfigured(Refused):
    """A change that must reach the broker (a revocation) while no broker is administered."""

    def __init__(self, detail: str) -> None:
        super().__init__("broker_not_configured", detail, 503)


def broker_access() -> BrokerAccess | None:
    """Return the configured broker-access backend, or None when no broker is configured.

    With no broker (``MQTT_ADMIN_PASSWORD`` unset) enrollment still issues credentials; the
    broker learns them when it is configured and the devices re-enroll.
    """
    global _instance
    if settings.BROKER_ACCESS not in ("dynsec", "x509"):
        return None
    if not settings.MQTT_ADMIN_PASSWORD:
        raise BrokerNotConfigured(
            f"BROKER_ACCESS={settings.BROKER_ACCESS} but MQTT_ADMIN_PASSWORD is not set in this "
            "process: it cannot administer the broker."
        )
    with _lock:
        if _instance is None and settings.BROKER_ACCESS == "x509":
            from device_sdk.mqtt import BrokerEndpoint
            from fleet.broker.x509 import X509Access

            endpoint = BrokerEndpoint.parse(settings.MQTT_URL)
            devices = BrokerEndpoint.parse(settings.MQTT_DEVICE_URL)  # checks revocations
            _instance = X509Access(
                settings.BROKER_X509_DIR, pid_file=settings.BROKER_PID_FILE,
                admin=(endpoint.host, endpoint.port, settings.MQTT_ADMIN_USERNAME,
                       settings.MQTT_ADMIN_PASSWORD),
                device_listener=(devices.host, devices.port))
        if _instance is None:
            from fleet.broker.dynsec import DynsecAccess

            _instance = DynsecAccess.from_url(
                settings.MQTT_URL,
                username=settings.MQTT_ADMIN_USERNAME,
                password=settings.MQTT_ADMIN_PASSWORD,
            )
        return _instance


def require_broker_access(purpose: str) -> BrokerAccess | None:
    """Return the backend for a change that must reach the broker, such as a revocation.

    Outside debug there is always one (settings refuse ``BROKER_ACCESS=none``), or this raises
    :class:`BrokerNotConfigured` (503, ``broker_not_configured``) before anything is written,
    so a revocation never claims success while the device keeps its broker credential. In
    debug with ``BROKER_ACCESS=none`` it warns loudly and returns None: the change is recorded
    in the database only.
    """
    access = broker_access()
    if access is not None:
        return access
    if not settings.FLEET_DEBUG:
        raise BrokerNotConfigured(
            f"Cannot {purpose}: no broker is administered (BROKER_ACCESS=none), so the device "
            "would keep its broker credential. Configure MQTT_ADMIN_PASSWORD."
        )
    log.warning("%s: BROKER_ACCESS=none (debug): recorded in the database only; the broker "
                "still accepts the credential", purpose)
    return None


def reset_broker_access() -> None:
    """Forget the cached backend (tests that start their own broker call this)."""
    global _instance
    with _lock:
        if _instance is not None and hasattr(_instance, "close"):
            _instance.close()
        _instance = None
