"""The fleet simulator's configuration: :class:`SimulationConfig`, the ``simulate`` command's
options one to one (re-exported by :mod:`device_sdk.simulator`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from device_sdk.simulator.faults import Faults

__all__ = ["SimulationConfig"]

@dataclass
class SimulationConfig:
    """What to simulate; the ``simulate`` command's options, one to one."""

    server: str
    token: str
    devices: int
    model_path: Path
    hardware: str
    state_dir: Path = Path("var/simulator")
    rate_hz: float = 1.0  # inferences per second per device
    batch: int = 32  # events per batch
    batch_age_s: float = 30.0  # a batch closes at the latest this long after its first event
    summary_window_s: int | None = None  # send per-window summaries instead of batches
    mix: str | None = None  # initial label mix, e.g. "0.4,0.3,0.2,0.1"; None: uniform
    drift_after_s: float | None = None
    drift_mix: str | None = None
    drift_fraction: float = 1.0  # share of the devices that drift
    package_id: int = 0  # package id of the factory model (0: none)
    duration_s: float | None = None  # None: until stopped
    threads: int | None = None  # reactor threads; None: one per 500 devices, at most 2
    connectors: int = 4  # threads doing TCP/TLS handshakes
    enroll_workers: int = 8
    uid_prefix: str | None = None  # device ids PREFIX-00000...; None: the server derives them
    broker_url: str | None = None  # override the URL enrollment hands out
    arena_bytes: int | None = None
    slot_bytes: int = 1024 * 1024
    latency_scale: float = 1.0
    seed: int = 0
    report_every_s: float = 10.0
    reporting: int | None = None  # devices that run inference (the first N); None: all
    connect_rate: float | None = None  # devices started per second; None: as fast as connectors go
    freeze_gc: bool = True  # move the fleet's long-lived objects out of the collector's sight
    ota: bool = True  # take OTA updates (A/B slots under each device's state dir)
    faults: Faults = field(default_factory=Faults)  # failure injection for rollout tests
    repair_after_s: float = 2.0  # ask for missing package bytes after this long without any
    first_index: int = 0  # devices first_index.. of the state dir (a fleet split over processes)
    reboot_after_s: float = 1.0  # a "crashed" device comes back after this long

