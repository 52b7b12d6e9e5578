"""Command line of the serial gateway.

    python -m device_sdk gateway --port URL [--port URL ...] --config FILE [--state-dir DIR]

Each ``--port`` is a pyserial URL with one MCU on it (``/dev/ttyACM0``,
``socket://127.0.0.1:5555`` for QEMU's UART). ``--config`` is the JSON file of
:mod:`device_sdk.gateway.config`. Runs until SIGTERM or SIGINT; exit status 0 then, 1 when the
configuration is unusable or the broker refuses the gateway's credential, 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from device_sdk.gateway.bridge import Bridge
from device_sdk.gateway.config import ConfigError, GatewayConfig
from device_sdk.gateway.enroll import ChildEnroller
from device_sdk.gateway.presence import GatewayPresence
from device_sdk.gateway.serial_link import PortMemory, SerialChild
from device_sdk.gateway.uplink import Uplink
from device_sdk.protocol.reasons import ProtocolError

__all__ = ["HELP", "configure", "main", "run"]

log = logging.getLogger("device_sdk.gateway")

HELP = "bridge MCUs on serial ports to the fleet over one MQTT identity"


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the gateway's arguments to ``parser``."""
    parser.add_argument("--port", action="append", required=True, metavar="URL",
                        help="pyserial URL of one MCU (repeat for each)")
    parser.add_argument("--config", required=True, type=Path,
                        help="JSON: the answer of POST /api/v1/gateways/ as is (uid, mqtt "
                             "credential, gateway_token) and, to enroll new MCUs, server, "
                             "claim_token, hardware. The gateway_token may only add children to "
                             "this gateway; an operator's api_token is refused")
    parser.add_argument("--state-dir", type=Path,
                        help="child keys and port memory (default: from the config)")
    parser.add_argument("--keepalive", type=float, default=10.0,
                        help="seconds of link silence before a TIME frame probes the MCU")
    parser.add_argument("--offline-after", type=float, default=30.0,
                        help="seconds of link silence before the MCU is published offline")


def run(args: argparse.Namespace) -> int:
    """Run the gateway until SIGTERM or SIGINT; return the exit status."""
    try:
        config = GatewayConfig.load(args.config, args.state_dir)
    except ConfigError as exc:
        log.error("%s", exc)
        return 1
    try:
        presence = GatewayPresence(config.uid)
    except ProtocolError as exc:
        log.error("%s: the gateway's uid cannot name its status topic (%s)", args.config, exc)
        return 1
    config.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    # Its own last will: if this host dies, the server marks the children offline.
    uplink = Uplink(config.mqtt_url, config.mqtt_username, config.mqtt_credential,
                    ca_pem=config.ca_cert, presence=presence)
    enroller = ChildEnroller(config) if config.enrolls_children else None
    bridge = Bridge(uplink, admission=enroller)
    uplink.on_message = bridge.on_message
    stop = threading.Event()
    _stop_on_signals(stop)
    if enroller is not None:
        enroller.on_admitted = bridge.admitted
        enroller.send_challenge = bridge.challenge
        enroller.start()
    uplink.start()
    memory = PortMemory(config.state_dir)
    ports = [SerialChild(url, bridge, stop, memory=memory, keepalive_s=args.keepalive,
                         offline_s=args.offline_after) for url in args.port]
    for port in ports:
        port.start()
    log.info("gateway %s: %d ports, %s", config.uid, len(ports),
             "enrolling new MCUs" if enroller else "bridging children the operator named")
    status = 0
    while not stop.wait(0.5):
        if uplink.credential_refused.is_set():
            log.error("the broker refused gateway %s's credential: re-provision it "
                      "(POST /api/v1/gateways/) and update %s", config.uid, args.config)
            status = 1
            stop.set()
    for port in ports:
        port.join(timeout=5)  # each publishes its child's offline status as it closes
    if enroller is not None:
        enroller.stop()
    if uplink.connected.is_set():
        uplink.flush(timeout=3)
    uplink.stop()  # publishes the gateway's own offline status first
    log.info("gateway %s stopped; bridge %s; mqtt %s", config.uid, dict(bridge.counters),
             dict(uplink.counters))
    return status


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` (without the ``gateway`` subcommand word) and run the gateway."""
    parser = argparse.ArgumentParser(prog="python -m device_sdk gateway", description=HELP)
    configure(parser)
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING...")
    args = parser.parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return run(args)


def _stop_on_signals(stop: threading.Event) -> None:
    def handler(signum: int, frame: FrameType | None) -> None:
        stop.set()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)
