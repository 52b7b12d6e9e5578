"""Command line of the device SDK: ``python -m device_sdk COMMAND ...``.

    enroll     make a key pair and enroll one device; its state goes to --state-dir
    run        run one enrolled device: TFLM inference on synthetic data, telemetry over MQTT
    simulate   run N enrolled devices in this process (a simulated fleet)

Each command is a :class:`Command` in :data:`COMMANDS`; another module adds its own the same
way (the serial gateway registers ``gateway`` there). Exit status: 0 on success, 1 on a
refusal or error the log explains, 2 on bad arguments (argparse).
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

log = logging.getLogger("device_sdk")


@dataclass(frozen=True)
class Command:
    """One subcommand: its help line, its arguments, and what it does (returns the exit code)."""

    help: str
    configure: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


# -- enroll ---------------------------------------------------------------------------------


def _enroll_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--server", required=True, help="fleet server URL, e.g. http://127.0.0.1:8000")
    p.add_argument("--token", required=True, help="enrollment (claim) token")
    p.add_argument("--hardware", required=True, help="hardware profile name, e.g. stm32f746")
    p.add_argument("--state-dir", required=True, type=Path, help="where the device keeps its state")
    p.add_argument("--uid", help="device id to ask for (default: derived from the key)")
    p.add_argument("--name", default="", help="display name")
    p.add_argument("--model", type=Path, help="a .tflite whose ops to report as capabilities")
    p.add_argument("--arena-bytes", type=int, help="tensor arena to report (default 256 KiB)")
    p.add_argument("--slot-bytes", type=int, default=1024 * 1024, help="model slot to report")


def _enroll(args: argparse.Namespace) -> int:
    from device_sdk.client.identity import EnrollmentError, enroll
    from device_sdk.inference import TflmModel, host_capabilities

    model = TflmModel.from_file(args.model, arena_bytes=args.arena_bytes) if args.model else None
    caps = host_capabilities(model, slot_bytes=args.slot_bytes)
    try:
        identity = enroll(
            args.server, args.token, state_dir=args.state_dir, hardware=args.hardware,
            capabilities=caps, uid=args.uid, name=args.name,
        )
    except EnrollmentError as exc:
        log.error("enrollment refused: %s", exc)
        return 1
    log.info("enrolled as %s; state in %s", identity.device_id, args.state_dir)
    print(identity.device_id)
    return 0


# -- run --------------------------------------------------------------------------------------


def _telemetry_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, type=Path,
                   help="the factory .tflite (run: fills the slots on first start; then the "
                   "device runs its active slot)")
    p.add_argument("--rate", type=float, default=1.0, help="inferences per second (per device)")
    p.add_argument("--batch", type=int, default=32, help="events per batch")
    p.add_argument("--batch-age", type=float, default=30.0, help="seconds a batch may stay open")
    p.add_argument("--summary-window", type=int, help="send per-window summaries of S seconds")
    p.add_argument("--package-id", type=int, default=0,
                   help="package id of the installed model (0: a factory model)")
    p.add_argument("--mix", help="label mix of the synthetic data, e.g. 0.4,0.3,0.2,0.1")
    p.add_argument("--arena-bytes", type=int, help="TFLM tensor arena (default 256 KiB)")
    p.add_argument("--latency-scale", type=float, default=1.0,
                   help="multiply measured latencies (emulate a slower MCU)")
    p.add_argument("--duration", type=float, help="stop after S seconds (default: run until ^C)")
    p.add_argument("--broker-url", help="override the broker URL given at enrollment")


def _run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--state-dir", required=True, type=Path, help="an enrolled device's state")
    _telemetry_args(p)


def _run(args: argparse.Namespace) -> int:
    from device_sdk.client import DeviceClient
    from device_sdk.client.identity import DeviceIdentity
    from device_sdk.inference import SensorStream, TflmModel, host_capabilities
    from device_sdk.ota.active_model import ActiveSlotModel
    from device_sdk.ota.slots import SlotStore

    if not DeviceIdentity.exists(args.state_dir):
        log.error("%s holds no enrolled device: run `python -m device_sdk enroll` first",
                  args.state_dir)
        return 1
    identity = DeviceIdentity.load(args.state_dir)
    # --model and --package-id are the factory model: they fill the slots on first start only.
    # From then on the device runs, and tags its events with, whatever its active slot holds.
    store = SlotStore(Path(args.state_dir) / "slots")
    if not (store.dir / "meta.json").exists():
        store.install_factory(Path(args.model).read_bytes(), package=args.package_id)

    def load(model_bytes: bytes) -> SensorStream:
        loaded = TflmModel(model_bytes, arena_bytes=args.arena_bytes,
                           latency_scale=args.latency_scale)
        return SensorStream(loaded, mix=args.mix)

    active = TflmModel(store.read_active(), arena_bytes=args.arena_bytes)
    client = DeviceClient(
        identity, state_dir=args.state_dir, capabilities=host_capabilities(active),
        model=store.meta.package, manifest_seq=store.meta.sequence,
        broker_url=args.broker_url, batch_events=args.batch, batch_age_s=args.batch_age,
        summary_window_s=args.summary_window, num_labels=active.num_classes,
    )
    agent = _attach_ota(client, identity, store, active.arena_bytes)
    running = ActiveSlotModel(store, client, load)  # after boot(): a revert is already done
    agent.on_installed = running.installed
    client.start()
    log.info("device %s running package %d at %.2f inferences/s", identity.device_id,
             running.package, args.rate)
    # This is the application thread: infer on a fixed schedule, hand events to the client.
    started = time.monotonic()
    next_at = started
    with _stop_on_signals() as stop:
        try:
            while not stop.is_set():
                if args.duration is not None and time.monotonic() - started >= args.duration:
                    break
                running.step()
                next_at += 1.0 / args.rate
                stop.wait(max(0.0, next_at - time.monotonic()))
        finally:
            client.stop()
    stats = client.snapshot()
    log.info("stopped: %d events in %d messages, %d acknowledged, %d still queued",
             stats.events, stats.messages, stats.acked, stats.pending)
    return 0


def _attach_ota(client: object, identity: object, store: object, arena_bytes: int) -> object:
    """Give a single device's A/B slots the OTA agent; revert an interrupted trial."""
    from device_sdk.ota.agent import OtaAgent
    from device_sdk.ota.trial import run_trial
    from device_sdk.ota.updater import OtaUpdater

    updater = OtaUpdater(store, hardware=identity.hardware,  # type: ignore[attr-defined,arg-type]
                         arena_bytes=arena_bytes)
    if not store.meta.trusted_keys:  # type: ignore[attr-defined]
        updater.trust({k.kid: k.public_key for k in identity.signing_keys})  # type: ignore[attr-defined]
    agent = OtaAgent(client, updater,  # type: ignore[arg-type]
                     lambda m, spec: run_trial(m, arena_bytes=arena_bytes, spec=spec))
    agent.boot()
    agent.resume()
    return agent


# -- simulate ---------------------------------------------------------------------------------


def _simulate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--server", required=True, help="fleet server URL, e.g. http://127.0.0.1:8000")
    p.add_argument("--token", required=True, help="enrollment token with enough uses")
    p.add_argument("--devices", type=int, required=True, help="how many devices")
    p.add_argument("--hardware", required=True, help="hardware profile name")
    p.add_argument("--state-dir", type=Path, default=Path("var/simulator"),
                   help="where the devices keep their state (reused on restart)")
    _telemetry_args(p)
    p.add_argument("--drift-after", type=float, help="change the label mix after S seconds")
    p.add_argument("--drift-mix", help="the label mix after the drift, e.g. 0.7,0.1,0.1,0.1")
    p.add_argument("--drift-fraction", type=float, default=1.0, help="share of devices drifting")
    p.add_argument("--threads", type=int,
                   help="network threads (default: one per 500 devices, at most 2)")
    p.add_argument("--reporting", type=int,
                   help="only the first N devices infer; the rest stay connected (default: all)")
    p.add_argument("--connect-rate", type=float,
                   help="start at most R devices per second (default: as fast as they connect)")
    p.add_argument("--no-ota", action="store_true", help="do not take OTA updates")
    faults = p.add_argument_group("failure injection (probability per update)")
    faults.add_argument("--crash-download", type=float, default=0.0,
                        help="power cut half-way through a download (device reboots)")
    faults.add_argument("--corrupt-chunk", type=float, default=0.0, help="flip a received byte")
    faults.add_argument("--fail-trial", type=float, default=0.0, help="the new model's trial fails")
    faults.add_argument("--degrade-scores", type=float, default=0.0,
                        help="confirm, then report lower confidence (trips health gates)")
    p.add_argument("--uid-prefix", help="name devices PREFIX-00000... (default: from their keys)")
    p.add_argument("--seed", type=int, default=0)


def _simulate(args: argparse.Namespace) -> int:
    from device_sdk.client.identity import EnrollmentError
    from device_sdk.mqtt import paho_speedup
    from device_sdk.simulator import Faults, SimulationConfig, Simulator

    paho_speedup.install()  # thousands of clients in one process: paho's decoding adds up

    if args.drift_after is not None and not args.drift_mix:
        log.error("--drift-after needs --drift-mix")
        return 2
    config = SimulationConfig(
        server=args.server, token=args.token, devices=args.devices, model_path=args.model,
        hardware=args.hardware, state_dir=args.state_dir, rate_hz=args.rate, batch=args.batch,
        batch_age_s=args.batch_age, summary_window_s=args.summary_window, mix=args.mix,
        drift_after_s=args.drift_after, drift_mix=args.drift_mix,
        drift_fraction=args.drift_fraction, package_id=args.package_id,
        duration_s=args.duration, threads=args.threads, uid_prefix=args.uid_prefix,
        reporting=args.reporting, connect_rate=args.connect_rate,
        broker_url=args.broker_url, arena_bytes=args.arena_bytes,
        latency_scale=args.latency_scale, seed=args.seed, ota=not args.no_ota,
        faults=Faults(crash_download=args.crash_download, corrupt_chunk=args.corrupt_chunk,
                      fail_trial=args.fail_trial, degrade_scores=args.degrade_scores),
    )
    with _stop_on_signals() as stop:
        try:
            simulator = Simulator(config, stop=stop)
            totals = simulator.run()
        except EnrollmentError as exc:
            log.error("%s", exc)
            return 1
    print(f"devices={len(simulator.devices)} events={totals.events} messages={totals.messages} "
          f"acked={totals.acked} queued={totals.pending} dropped={totals.dropped}")
    return 0


# -- dispatch ---------------------------------------------------------------------------------

COMMANDS: dict[str, Command] = {
    "enroll": Command("enroll one device and store its identity", _enroll_args, _enroll),
    "run": Command("run one enrolled device", _run_args, _run),
    "simulate": Command("run a simulated fleet of N devices", _simulate_args, _simulate),
    "gateway": Command("bridge MCUs on serial ports to the broker",
                       lambda p: p.add_argument("args", nargs=argparse.REMAINDER,
                                                help="see python -m device_sdk.gateway --help"),
                       lambda a: _gateway(a.args)),
}


def _gateway(argv: list[str]) -> int:
    from device_sdk.gateway.cli import main as gateway_main

    return gateway_main(argv)


@contextmanager
def _stop_on_signals() -> Iterator[threading.Event]:
    """Yield an event SIGINT or SIGTERM sets; restore the previous handlers afterwards."""
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop  # only the main thread may install signal handlers
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        log.info("signal %d: stopping", signum)
        stop.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def build_parser() -> argparse.ArgumentParser:
    """Return the parser with one subparser per entry of :data:`COMMANDS`."""
    parser = argparse.ArgumentParser(prog="python -m device_sdk", description=__doc__.split("\n")[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, command in COMMANDS.items():
        command.configure(sub.add_parser(name, help=command.help, description=command.help))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and run the chosen command; return its exit status."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
    )
    if not args.verbose:
        logging.getLogger("device_sdk.paho").setLevel(logging.WARNING)
    return COMMANDS[args.command].run(args)


if __name__ == "__main__":
    sys.exit(main())
