"""Pin how the broker process is prepared, started, restarted and stopped."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from fleet.broker.access import BrokerUnavailable, ServiceRole
from fleet.broker.dynsec import DynsecAccess
from fleet.broker.mosquitto import BrokerError, MosquittoInstance
from fleet.broker.tls import ensure_tls_files

REPO = Path(__file__).resolve().parents[3]


def test_private_keys_are_owner_only_and_kept_across_calls(tmp_path: Path) -> None:
    """Keys are 0600 from creation; a second call keeps the CA devices already trust."""
    files = ensure_tls_files(tmp_path)
    for key in (files.ca_key, files.server_key):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
    ca = files.ca_cert.read_bytes()
    assert ensure_tls_files(tmp_path).ca_cert.read_bytes() == ca


def test_rendered_config_has_the_settings_the_fleet_relies_on(tmp_path: Path) -> None:
    """Loopback listeners, no anonymous access, dynsec, persistence and raised queue limits."""
    broker = MosquittoInstance(
        tmp_path, 11883, 18883, "pw", mosquitto_bin="mosquitto", ctrl_bin="mosquitto_ctrl"
    )
    lines = set(broker.render_config(broker.tls).splitlines())
    for expected in (
        "per_listener_settings false",
        "allow_anonymous false",
        "listener 11883 127.0.0.1",
        "listener 18883 127.0.0.1",
        "persistence true",
        "autosave_interval 10",
        "max_queued_messages 4000000",
        f"max_queued_bytes {512 * 1024 * 1024}",
        f"max_packet_size {256 * 1024 + 4096}",
        f"plugin_opt_config_file {tmp_path.resolve() / 'dynamic-security.json'}",
    ):
        assert expected in lines, expected
    assert not any("$" in line for line in lines if not line.startswith("#"))


@pytest.mark.integration
def test_state_survives_a_restart_and_the_admin_reconnects(
    fresh_broker: MosquittoInstance,
) -> None:
    """Provisioned identities persist; the admin client reconnects by itself."""
    fresh_broker.start()
    for path in (fresh_broker.dynsec_file, fresh_broker.workdir):
        assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0, path
    access = DynsecAccess(
        fresh_broker.host,
        fresh_broker.port,
        fresh_broker.admin_username,
        fresh_broker.admin_password,
        timeout=10,
    )
    try:
        access.provision_device("dev-r", "pw")
        fresh_broker.restart()
        access.provision_service("svc-r", "pw", ServiceRole.WORKER)  # waits for the reconnect
        access.revoke_device("dev-r")  # found after the restart: it had been persisted
        # The plugin rewrote the JSON of password hashes; umask 077 keeps it private.
        assert stat.S_IMODE(fresh_broker.dynsec_file.stat().st_mode) & 0o077 == 0
    finally:
        access.close()


@pytest.mark.integration
def test_wrong_admin_password_is_reported_as_such(broker: MosquittoInstance) -> None:
    """A refused admin login says so instead of timing out silently."""
    access = DynsecAccess(broker.host, broker.port, broker.admin_username, "wrong", timeout=1)
    try:
        with pytest.raises(BrokerUnavailable, match="refused"):
            access.ping()
    finally:
        access.close()


@pytest.mark.integration
def test_start_on_a_busy_port_fails_with_the_brokers_reason(
    fresh_broker: MosquittoInstance,
) -> None:
    """When the port is taken the error carries Mosquitto's own message."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", fresh_broker.port))
        sock.listen()
        with pytest.raises(BrokerError, match="exited"):
            fresh_broker.start(timeout=5)
    assert not fresh_broker.is_running()


@pytest.mark.integration
def test_command_line_starts_and_stops_a_detached_broker(
    fresh_broker: MosquittoInstance,
) -> None:
    """`start` leaves a broker and a pid file behind; `stop` ends it and removes the file."""
    args = [
        "--dir",
        str(fresh_broker.workdir),
        "--port",
        str(fresh_broker.port),
        "--tls-port",
        str(fresh_broker.tls_port),
    ]
    env = {
        **os.environ,
        "MQTT_ADMIN_USERNAME": fresh_broker.admin_username,
        "MQTT_ADMIN_PASSWORD": fresh_broker.admin_password,
        "PYTHONPATH": str(REPO),
    }

    def cli(action: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "fleet.broker.mosquitto", action, *args],
            env=env,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )

    started = cli("start")
    assert started.returncode == 0, started.stderr
    assert fresh_broker.pid_file.exists() and fresh_broker.is_running()
    assert cli("start").returncode == 0, "starting a running broker is a no-op"
    assert cli("status").returncode == 0
    access = DynsecAccess(
        fresh_broker.host,
        fresh_broker.port,
        fresh_broker.admin_username,
        fresh_broker.admin_password,
    )
    try:
        assert access.ping() < 2
    finally:
        access.close()
    assert cli("stop").returncode == 0
    assert not fresh_broker.pid_file.exists() and not fresh_broker.is_running()
    assert cli("status").returncode == 3
