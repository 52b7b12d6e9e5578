"""The broker-access backend the settings name, built once per process."""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

from django.conf import settings

if TYPE_CHECKING:
    from fleet.broker.access import BrokerAccess

log = logging.getLogger(__name__)
_lock = threading.Lock()
_instance: BrokerAccess | None = None


def broker_access() -> BrokerAccess | None:
    """Return the configured broker-access backend, or None when no broker is configured.

    With no broker (``MQTT_ADMIN_PASSWORD`` unset) enrollment still issues credentials; the
    broker learns them when it is configured and the devices re-enroll.
    """
    global _instance
    if settings.BROKER_ACCESS != "dynsec":
        return None
    with _lock:
        if _instance is None:
            from fleet.broker.dynsec import DynsecAccess

            _instance = DynsecAccess.from_url(
                settings.MQTT_URL,
                username=settings.MQTT_ADMIN_USERNAME,
                password=settings.MQTT_ADMIN_PASSWORD,
            )
        return _instance


def reset_broker_access() -> None:
    """Forget the cached backend (tests that start their own broker call this)."""
    global _instance
    with _lock:
        if _instance is not None and hasattr(_instance, "close"):
            _instance.close()
        _instance = None
