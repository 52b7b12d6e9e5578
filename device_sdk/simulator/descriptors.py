"""The fleet simulator's file-descriptor budget: raise the open-file limit, decide how many
devices may keep their outbox in a file, and give the rest an in-memory outbox.

:func:`raise_open_file_limit` is re-exported by :mod:`device_sdk.simulator`.
"""

from __future__ import annotations

import logging
import os
import resource

from device_sdk.client import DeviceClient
from device_sdk.client.outbox import Outbox

__all__ = ["keep_outbox_in_memory", "outbox_file_budget", "raise_open_file_limit"]

log = logging.getLogger("device_sdk.simulator")  # the simulator's logger, as before the split
# Descriptors kept free for everything that is not a device's socket, outbox or download: the
# Python runtime, logging, the model, re-enrollment, slot files while an update is written.
_FD_RESERVE = 256


def outbox_file_budget(devices: int, fd_limit: int, *, connectors: int, ota: bool) -> int:
    """Return how many devices may keep their outbox in a file (one descriptor each)."""
    try:
        open_now = len(os.listdir("/proc/self/fd"))
    except OSError:
        open_now = 64
    # Each device holds its socket; an outbox file is a second descriptor. While an OTA
    # download runs, its part file and range journal are two more (device_sdk/ota/updater).
    downloads = 2 * devices if ota else 0
    room = fd_limit - open_now - _FD_RESERVE - connectors - devices - downloads
    files = max(0, min(devices, room))
    if files < devices:
        log.warning(
            "open file limit %d: %d devices keep their outbox in a file, %d in memory "
            "(unsent telemetry of those is lost if this process dies); raise the hard "
            "limit (ulimit -Hn) for more", fd_limit, files, devices - files)
    return files


def raise_open_file_limit() -> int:
    """Raise this process's soft limit of open files to its hard limit; return the soft limit.

    Each simulated device holds a socket (and usually its outbox file): the common default
    soft limit of 1,024 stops a fleet at a few hundred devices. Raising the hard limit itself
    needs privileges this process may not have (``ulimit -Hn`` in the shell that starts it).
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as exc:
            log.warning("could not raise the open file limit from %d to %d: %s", soft, hard, exc)
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


def keep_outbox_in_memory(client: DeviceClient) -> None:
    """Give ``client`` an in-memory outbox so it holds no descriptor besides its socket.

    Same class and bounds, SQLite ``:memory:``; an outbox file that still holds messages from
    an earlier run is kept instead, so they are sent.
    """
    on_disk = client.outbox
    if len(on_disk):
        return
    client.outbox = Outbox(":memory:", max_entries=on_disk.max_entries,
                           max_bytes=on_disk.max_bytes, durable=False)
    on_disk.close()
