"""Send commands to a Mosquitto control API over MQTT 5 and wait for their answers.

Mosquitto plugins take JSON commands on ``$CONTROL/<api>`` and answer on
``$CONTROL/<api>/response``. That answer topic is shared: every admin connection (each
web and worker process) receives every answer, so each command carries its own
``correlationData`` and answers meant for others are ignored. (2.0.11 does not echo the
MQTT 5 correlation property; it does echo the JSON field.)
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from device_sdk.mqtt import BrokerEndpoint, connect, new_client
from fleet.broker.access import BrokerUnavailable

log = logging.getLogger(__name__)

Command = dict[str, Any]


def response_error(response: Command) -> str | None:
    """Return the error text of one command's answer, or None if it succeeded."""
    error = response.get("error")
    return str(error) if error is not None else None


def failed_with(response: Command, *fragments: str) -> bool:
    """Tell whether an answer failed with an error containing one of ``fragments``."""
    error = (response_error(response) or "").lower()
    return any(fragment in error for fragment in fragments)


@dataclass
class _Pending:
    """Answers awaited for one published batch of commands."""

    size: int
    results: dict[int, Command] = field(default_factory=dict)
    done: threading.Event = field(default_factory=threading.Event)


class ControlChannel:
    """One admin connection to a broker's ``$CONTROL/<api>`` topic.

    Thread-safe: several threads may send commands at once. The connection is made in
    the background and re-made after a loss; a batch waits for it up to ``timeout``
    seconds and is sent again if the connection drops before its answer arrives, so
    callers must only send commands that are safe to repeat.
    """

    def __init__(
        self,
        host: str,
        port: int,
        username: str,
        password: str,
        *,
        api: str = "dynamic-security/v1",
        ca_certs: str | None = None,
        timeout: float = 5.0,
        client_id: str | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.username = username
        self.timeout = timeout
        self.topic = f"$CONTROL/{api}"
        self.response_topic = f"{self.topic}/response"
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._pending: dict[str, _Pending] = {}
        self._generation = 0
        self._last_error = "not connected yet"
        self._closing = False
        self._sub_mid: int | None = None
        # Unique per process: two admins with one client id would knock each other off.
        client_id = client_id or (
            f"fleet-admin-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        )
        # TLS exactly when a CA is given (DynsecAccess.from_url passes one for mqtts://).
        endpoint = BrokerEndpoint(host, port, tls=bool(ca_certs))
        self._client = new_client(
            endpoint, client_id=client_id, username=username, password=password,
            ca_certs=ca_certs or None, reconnect_delay=(1, 10),
        )
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message
        self._client.on_connect_fail = self._on_connect_fail
        connect(self._client, endpoint, keepalive=30, clean_start=True, background=True)

    @property
    def generation(self) -> int:
        """Return how many times the channel has (re)connected; changes after a reconnect."""
        return self._generation

    def close(self) -> None:
        """Disconnect and stop the network thread."""
        self._closing = True
        self._client.disconnect()
        self._client.loop_stop()

    def execute(self, commands: list[Command]) -> list[Command]:
        """Send commands in one message and return their answers, in order."""
        batch = uuid.uuid4().hex
        pending = _Pending(len(commands))
        payload = json.dumps(
            {
                "commands": [
                    {**command, "correlationData": f"{batch}:{index}"}
                    for index, command in enumerate(commands)
                ]
            }
        )
        properties = Properties(PacketTypes.PUBLISH)
        properties.CorrelationData = batch.encode()
        properties.ResponseTopic = self.response_topic
        deadline = time.monotonic() + self.timeout
        with self._lock:
            self._pending[batch] = pending
        try:
            while True:
                if not self._ready.wait(max(0.0, deadline - time.monotonic())):
                    raise BrokerUnavailable(
                        f"broker admin not connected to {self.host}:{self.port} after "
                        f"{self.timeout:g} s: {self._last_error}"
                    )
                generation = self._generation
                self._client.publish(self.topic, payload, qos=1, properties=properties)
                while not pending.done.wait(0.05):
                    if time.monotonic() > deadline:
                        names = ", ".join(sorted({c["command"] for c in commands}))
                        raise BrokerUnavailable(
                            f"no answer on {self.response_topic} from "
                            f"{self.host}:{self.port} within {self.timeout:g} s ({names}); "
                            f"is the plugin loaded?"
                        )
                    if generation != self._generation or not self._ready.is_set():
                        break  # reconnected: the command may be lost, send it again
                else:
                    return [pending.results[index] for index in range(pending.size)]
        finally:
            with self._lock:
                self._pending.pop(batch, None)

    # paho callbacks (network thread: never let an exception escape) ----------------------

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: Any,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason_code.is_failure:
            self._last_error = f"admin login as {self.username!r} refused: {reason_code}"
            log.error("broker: %s", self._last_error)
            return
        result, self._sub_mid = client.subscribe(self.response_topic, qos=1)
        if result != MQTTErrorCode.MQTT_ERR_SUCCESS:
            self._last_error = f"could not subscribe to {self.response_topic}: {result}"

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        self._last_error = f"cannot reach {self.host}:{self.port}, retrying"

    def _on_subscribe(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reason_codes: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        if mid != self._sub_mid:
            return
        if not reason_codes or reason_codes[0].is_failure:
            self._last_error = f"admin may not subscribe to {self.response_topic}: {reason_codes}"
            log.error("broker: %s", self._last_error)
            return
        self._generation += 1
        self._last_error = "connected"
        self._ready.set()
        log.info("broker: admin %r connected to %s:%d", self.username, self.host, self.port)

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: Any,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        self._ready.clear()
        if self._closing or self._last_error.startswith("admin login"):
            return  # keep the refusal: it says more than the disconnect that follows it
        self._last_error = f"connection lost ({reason_code}), reconnecting"
        log.warning(
            "broker: admin connection to %s:%d lost (%s), reconnecting",
            self.host,
            self.port,
            reason_code,
        )

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        try:
            responses = json.loads(message.payload).get("responses", [])
            for response in responses:
                batch, _, index = str(response.get("correlationData", "")).partition(":")
                with self._lock:
                    pending = self._pending.get(batch)
                    if pending is None:
                        continue  # another admin's answer, or one we stopped waiting for
                    pending.results[int(index)] = response
                    if len(pending.results) == pending.size:
                        pending.done.set()
        except Exception:  # an exception here would kill paho's network thread
            log.exception("broker: unreadable control answer on %s", message.topic)
