"""What the end-to-end benches set up alike: a broker with fast $SYS counters and Django
configured against it with a throwaway SQLite database.

Imported by ``bench/rollout.py`` and ``bench/simulator.py`` (run as scripts: ``bench/`` is on
``sys.path`` as their own folder).
"""

from __future__ import annotations

import os
import secrets
import socket
from pathlib import Path
from typing import Any


def free_port() -> int:
    """Return a loopback TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def bench_broker(workdir: Path, bench: str) -> Any:
    """Return an unstarted Mosquitto with the project's config plus $SYS every second
    (default: every 10 s), on free loopback ports, kept in ``workdir / "broker"``."""
    from fleet.broker.mosquitto import DEFAULT_TEMPLATE, MosquittoInstance

    template = workdir / "mosquitto.conf.template"
    template.write_text(DEFAULT_TEMPLATE.read_text() + f"\n# {bench}\nsys_interval 1\n")
    return MosquittoInstance(workdir / "broker", free_port(), free_port(),
                             secrets.token_urlsafe(16), template=template)


def setup_django(workdir: Path, broker: Any) -> dict[str, str]:
    """Point Django at a new SQLite file in ``workdir`` and at ``broker`` (dynamic security),
    migrate, and return the environment set (a worker subprocess starts from it)."""
    var_dir = workdir / "var"
    var_dir.mkdir(exist_ok=True)
    env = {
        "DJANGO_SETTINGS_MODULE": "fleet.settings", "FLEET_DEBUG": "1",
        "FLEET_VAR_DIR": str(var_dir), "DATABASE_URL": f"sqlite:///{workdir / 'fleet.sqlite3'}",
        "ARTIFACT_ROOT": str(var_dir / "artifacts"),
        "FLEET_KEK": "bench-kek-" + secrets.token_hex(16),
        "MQTT_URL": broker.url, "MQTT_DEVICE_URL": broker.tls_url,
        "MQTT_ADMIN_USERNAME": broker.admin_username,
        "MQTT_ADMIN_PASSWORD": broker.admin_password, "MQTT_CA_FILE": str(broker.ca_cert),
        "BROKER_ACCESS": "dynsec", "FLEET_LOG_LEVEL": "WARNING",
    }
    os.environ.update(env)
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    return env
