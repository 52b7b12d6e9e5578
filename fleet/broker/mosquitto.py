"""Run a local Mosquitto 2 broker with dynamic security and a TLS listener.

`MosquittoInstance` owns one work directory: the rendered config, the dynamic security
JSON, the CA and server certificate, the persistence database, the log and a pid file.
It takes plain parameters (no Django), so the settings, the demo scripts and the tests
can all start the same broker.

Who the broker runs as: started as root, Mosquitto drops to the `mosquitto` user unless
the config says otherwise, and that user cannot reach a work directory inside a 0700
parent (pytest's temporary directories, a home directory). The broker therefore runs as
the user that starts it (``user <current user>`` in the config); the work directory is
0700 and the broker runs with umask 077, so keys, password hashes and the persistence
database stay readable only by that user. A packaged deployment runs it under its own
service account instead (deploy/, systemd).

Connection limits: every client holds one descriptor in the broker, and Mosquitto 2.0 never
raises its own open-file limit, so a broker started from a shell with the common soft limit of
1,024 quietly resets every connection past about 1,015. `start` lifts the broker's soft limit
to the hard limit it inherited, and the config caps each listener's ``max_connections`` a
little below that, so a full broker refuses a newcomer cleanly (and says so in its log)
instead of failing its ``accept``. The listen backlog is fixed at 100 in Mosquitto 2.0: a
client fleet connects through a few connector threads (the simulator's), not all at once.

Command line, for the project's scripts::

    python -m fleet.broker.mosquitto start --dir var/broker --port 1883 --tls-port 8883
    python -m fleet.broker.mosquitto stop --dir var/broker
"""

from __future__ import annotations

import argparse
import getpass
import logging
import os
import resource
import shutil
import signal
import socket
import ssl
import string
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Self

from fleet.broker.tls import DEFAULT_HOSTS, TlsFiles, ensure_tls_files, tls_files

log = logging.getLogger(__name__)

DEFAULT_TEMPLATE = Path(__file__).resolve().parents[2] / "deploy" / "mosquitto.conf.template"
DYNSEC_PLUGIN = "/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so"
# 256 KiB of payload: room for an OTA chunk and its CBOR framing, not for abuse.
MAX_PAYLOAD = 256 * 1024
# Topic, properties and fixed header on top of the largest allowed payload.
PACKET_OVERHEAD = 4 * 1024
# What Mosquitto queues per client session beyond what is in flight. Past either limit it drops
# further messages for that client *after* acknowledging them to their publisher (Mosquitto 2.0
# never pushes back on a QoS 1 publisher: bench/soak.py measured it), so the limits are sized
# for the backlog a worker may build while it restarts or lags: 512 MiB is ~2M event batches,
# ~14 minutes of 80k events/s. The count limit stays above what the bytes allow. Devices come
# nowhere near: fan-out chunks are QoS 0 to them, and offers are few (deploy/README.md).
MAX_QUEUED_MESSAGES = 4_000_000
MAX_QUEUED_BYTES = 512 * 1024 * 1024
# Descriptors the broker needs besides its clients: listeners, log, persistence, the dynsec
# JSON while it is rewritten, epoll, stdio.
FD_RESERVE = 64


class BrokerError(RuntimeError):
    """The broker could not be prepared, started or stopped."""


class MosquittoInstance:
    """One Mosquitto process with its own work directory on loopback ports."""

    def __init__(
        self,
        workdir: str | os.PathLike[str],
        port: int,
        tls_port: int,
        admin_password: str,
        *,
        admin_username: str = "fleet-admin",
        host: str = "127.0.0.1",
        user: str | None = None,
        mosquitto_bin: str | None = None,
        ctrl_bin: str | None = None,
        dynsec_plugin: str = DYNSEC_PLUGIN,
        template: str | os.PathLike[str] = DEFAULT_TEMPLATE,
        autosave_interval: int = 10,
        max_queued_messages: int = MAX_QUEUED_MESSAGES,
        max_queued_bytes: int = MAX_QUEUED_BYTES,
        max_inflight_messages: int = 100,
        max_payload: int = MAX_PAYLOAD,
        max_connections: int | None = None,
        cert_hosts: tuple[str, ...] = DEFAULT_HOSTS,
    ) -> None:
        """Describe a broker; nothing starts before :meth:`start`.

        ``max_connections`` caps the clients of each listener; None derives it from the
        open-file limit the broker gets (:func:`open_file_limit`), minus :data:`FD_RESERVE`.
        ``cert_hosts``: the names the server certificate carries when it is first made (the
        devices' broker host must be one of them: they verify it).
        """
        self.workdir = Path(workdir).resolve()
        self.port = port
        self.tls_port = tls_port
        self.host = host
        self.admin_username = admin_username
        self.admin_password = admin_password
        self.user = user or getpass.getuser()
        self.mosquitto_bin = mosquitto_bin or find_executable("mosquitto")
        self.ctrl_bin = ctrl_bin or find_executable("mosquitto_ctrl")
        self.dynsec_plugin = dynsec_plugin
        self.template = Path(template)
        self.cert_hosts = cert_hosts
        self.autosave_interval = autosave_interval
        self.max_queued_messages = max_queued_messages
        self.max_queued_bytes = max_queued_bytes
        self.max_inflight_messages = max_inflight_messages
        self.max_payload = max_payload
        self.max_connections = (
            max_connections if max_connections is not None
            else max(1, open_file_limit() - FD_RESERVE)
        )
        self._process: subprocess.Popen[bytes] | None = None

    # Paths -------------------------------------------------------------------------------

    @property
    def config_file(self) -> Path:
        return self.workdir / "mosquitto.conf"

    @property
    def dynsec_file(self) -> Path:
        return self.workdir / "dynamic-security.json"

    @property
    def log_file(self) -> Path:
        return self.workdir / "mosquitto.log"

    @property
    def pid_file(self) -> Path:
        return self.workdir / "mosquitto.pid"

    @property
    def tls(self) -> TlsFiles:
        return tls_files(self.workdir)

    @property
    def ca_cert(self) -> Path:
        """Return the CA certificate that devices use to verify the TLS listener."""
        return self.tls.ca_cert

    @property
    def max_packet_size(self) -> int:
        """Return the largest MQTT packet the broker accepts: payload cap plus headers."""
        return self.max_payload + PACKET_OVERHEAD

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    @property
    def tls_url(self) -> str:
        return f"mqtts://{self.host}:{self.tls_port}"

    # Preparation -------------------------------------------------------------------------

    def prepare(self) -> None:
        """Create the work directory, TLS files, dynamic security JSON and config."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.workdir, 0o700)
        (self.workdir / "data").mkdir(mode=0o700, exist_ok=True)
        tls = ensure_tls_files(self.workdir, self.cert_hosts)
        if not self.dynsec_file.exists():
            self._init_dynsec()
        self.config_file.write_text(self.render_config(tls))
        self._chown_for_user()

    def render_config(self, tls: TlsFiles) -> str:
        """Return the broker config rendered from the template."""
        values = {
            "user": self.user,
            "host": self.host,
            "port": self.port,
            "tls_port": self.tls_port,
            "server_cert": tls.server_cert,
            "server_key": tls.server_key,
            "dynsec_plugin": self.dynsec_plugin,
            "dynsec_file": self.dynsec_file,
            "persistence_dir": self.workdir / "data",
            "autosave_interval": self.autosave_interval,
            "max_queued_messages": self.max_queued_messages,
            "max_queued_bytes": self.max_queued_bytes,
            "max_inflight_messages": self.max_inflight_messages,
            "max_packet_size": self.max_packet_size,
            "max_connections": self.max_connections,
            "log_file": self.log_file,
        }
        return string.Template(self.template.read_text()).substitute(values)

    def _init_dynsec(self) -> None:
        # The admin password is on mosquitto_ctrl's command line for a moment; the broker
        # listens on loopback only and this runs once per work directory.
        cmd = [self.ctrl_bin, "dynsec", "init", str(self.dynsec_file), self.admin_username]
        result = subprocess.run(
            [*cmd, self.admin_password], capture_output=True, text=True, check=False
        )
        if result.returncode != 0 or not self.dynsec_file.exists():
            raise BrokerError(f"{' '.join(cmd)} failed: {result.stderr.strip()}")
        os.chmod(self.dynsec_file, 0o600)
        log.info(
            "initialised dynamic security in %s (admin %r)", self.dynsec_file, self.admin_username
        )

    def _chown_for_user(self) -> None:
        """Hand the work directory to the configured user when root starts it for another."""
        if os.geteuid() != 0 or self.user == "root":
            return
        import pwd  # Unix only, like Mosquitto's privilege drop itself.

        entry = pwd.getpwnam(self.user)
        for path in [self.workdir, *self.workdir.rglob("*")]:
            os.chown(path, entry.pw_uid, entry.pw_gid)

    # Process -----------------------------------------------------------------------------

    def start(self, timeout: float = 10.0) -> None:
        """Start the broker and wait until both listeners accept connections."""
        if self.is_running():
            raise BrokerError(f"broker already running with pid {self.pid}")
        self.prepare()
        stderr_path = self.workdir / "mosquitto.stderr"
        with open(stderr_path, "wb") as stderr:
            # umask 077: the plugin rewrites the JSON of password hashes on every change.
            self._process = subprocess.Popen(
                [self.mosquitto_bin, "-c", str(self.config_file)],
                stdin=subprocess.DEVNULL,
                stdout=stderr,
                stderr=subprocess.STDOUT,
                umask=0o077,
                start_new_session=True,
            )
        self.pid_file.write_text(f"{self._process.pid}\n")
        _raise_open_file_limit(self._process.pid)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                self.pid_file.unlink(missing_ok=True)
                raise BrokerError(
                    f"mosquitto exited with {self._process.returncode} at start: "
                    f"{self._tail(stderr_path)} {self._tail(self.log_file)}"
                )
            # A wildcard bind (0.0.0.0, as deployed) is probed on loopback, which it covers.
            probe = _LOOPBACK.get(self.host, self.host)
            if _port_open(probe, self.port) and _tls_ready(probe, self.tls_port, self.tls.ca_cert):
                log.info(
                    "mosquitto pid %d listening on %s and %s",
                    self._process.pid,
                    self.url,
                    self.tls_url,
                )
                return
            time.sleep(0.05)
        self.stop()
        raise BrokerError(f"mosquitto did not listen on {self.url} within {timeout:.0f} s")

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the broker: SIGTERM (it saves its database), then SIGKILL after ``timeout``."""
        pid = self.pid
        if pid is None:
            return
        _terminate(pid, timeout, self._process)
        self._process = None
        self.pid_file.unlink(missing_ok=True)
        log.info("mosquitto pid %d stopped", pid)

    def restart(self, timeout: float = 10.0) -> None:
        """Stop and start again; needed for settings a HUP does not reload."""
        self.stop()
        self.start(timeout)

    @property
    def pid(self) -> int | None:
        """Return the pid of this work directory's broker, if one is running."""
        if self._process is not None:
            return self._process.pid if self._process.poll() is None else None
        try:
            pid = int(self.pid_file.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        # A stale pid file may name a recycled pid: only trust it if it runs our config.
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return None
        return pid if str(self.config_file).encode() in cmdline else None

    def detach(self) -> None:
        """Let the broker outlive this process; later calls find it through the pid file."""
        self._process = None

    def is_running(self) -> bool:
        return self.pid is not None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @staticmethod
    def _tail(path: Path, lines: int = 5) -> str:
        try:
            return " | ".join(path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""


def open_file_limit() -> int:
    """Return how many descriptors a broker started from this process may hold.

    That is this process's hard ``RLIMIT_NOFILE``, which the broker inherits and `start`
    raises its soft limit to. Raising the hard limit needs privileges (``ulimit -Hn``, or
    ``LimitNOFILE=`` in a systemd unit).
    """
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    return hard if hard != resource.RLIM_INFINITY else 1 << 20


def _raise_open_file_limit(pid: int) -> None:
    """Lift the soft open-file limit of process ``pid`` to its hard limit.

    Done from outside (prlimit) right after the spawn rather than in a ``preexec_fn``, which
    is unsafe in a process with threads; the broker accepts nobody during those microseconds.
    """
    prlimit = getattr(resource, "prlimit", None)  # Linux only
    if prlimit is None:
        return
    try:
        _, hard = prlimit(pid, resource.RLIMIT_NOFILE)
        prlimit(pid, resource.RLIMIT_NOFILE, (hard, hard))
    except (OSError, ValueError) as exc:  # the process is already gone
        log.warning("could not raise the open file limit of mosquitto pid %d: %s", pid, exc)


def find_executable(name: str) -> str:
    """Return the path of a Mosquitto executable, looking in /usr/sbin too."""
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/local/sbin")
    if found is None:
        raise BrokerError(f"{name} not found: install the mosquitto package (scripts/bootstrap.sh)")
    return found


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


_LOOPBACK = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}


def _tls_ready(host: str, port: int, ca_cert: Path) -> bool:
    # A full handshake, not a bare TCP connect: that would log an SSL error at every start,
    # and this also proves the listener serves a certificate our CA signed.
    context = ssl.create_default_context(cafile=str(ca_cert))
    try:
        with (
            socket.create_connection((host, port), timeout=0.5) as sock,
            context.wrap_socket(sock, server_hostname=host) as tls,
        ):
            tls.unwrap()  # close_notify, so the broker does not log an EOF error
            return True
    except (OSError, ssl.SSLError):
        return False


def _terminate(pid: int, timeout: float, process: subprocess.Popen[bytes] | None) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None:
            if process.poll() is not None:
                return
        elif not Path(f"/proc/{pid}").exists() or _is_zombie(pid):
            return
        time.sleep(0.05)
    log.warning("mosquitto pid %d ignored SIGTERM for %.0f s, killing it", pid, timeout)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    if process is not None:
        process.wait(timeout=5)


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def _default_cert_hosts(device_url: str | None) -> list[str]:
    """Loopback names, plus the host devices are told to use (they verify the certificate)."""
    from urllib.parse import urlsplit

    hosts = list(DEFAULT_HOSTS)
    device_host = urlsplit(device_url).hostname if device_url else None
    if device_host and device_host not in hosts:
        hosts.append(device_host)
    return hosts


def main(argv: list[str] | None = None) -> int:
    """Start or stop a broker from the command line; return the exit status."""
    parser = argparse.ArgumentParser(prog="python -m fleet.broker.mosquitto")
    parser.add_argument("action", choices=["start", "stop", "status"])
    parser.add_argument("--dir", required=True, help="work directory (config, keys, data, log)")
    parser.add_argument("--port", type=int, default=1883, help="plain MQTT port on loopback")
    parser.add_argument("--tls-port", type=int, default=8883, help="MQTT over TLS port")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument(
        "--admin-username",
        default=os.environ.get("MQTT_ADMIN_USERNAME", "fleet-admin"),
        help="dynamic security admin, created with the work directory (env MQTT_ADMIN_USERNAME)",
    )
    parser.add_argument(
        "--admin-password-env",
        default="MQTT_ADMIN_PASSWORD",
        help="environment variable holding the admin password (kept off the command line)",
    )
    parser.add_argument(
        "--cert-host", action="append", default=None,
        help="a name the server certificate carries (repeatable; made once: delete server.pem "
        "to remake it). Default: localhost, 127.0.0.1 and the host of MQTT_DEVICE_URL",
    )
    args = parser.parse_args(argv)
    cert_hosts = tuple(args.cert_host or _default_cert_hosts(os.environ.get("MQTT_DEVICE_URL")))
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    password = os.environ.get(args.admin_password_env, "")
    if args.action == "start" and not password:
        parser.error(f"set {args.admin_password_env} to the admin password")
    broker = MosquittoInstance(
        args.dir,
        args.port,
        args.tls_port,
        password,
        admin_username=args.admin_username,
        host=args.host,
        cert_hosts=cert_hosts,
    )
    try:
        if args.action == "start":
            if broker.is_running():
                print(f"mosquitto already running with pid {broker.pid} on {broker.url}")
                return 0
            broker.start()
            broker.detach()
            print(
                f"mosquitto pid {broker.pid} on {broker.url} and {broker.tls_url}, "
                f"CA {broker.ca_cert}"
            )
        elif args.action == "stop":
            broker.stop()
        else:
            print("running" if broker.is_running() else "stopped")
            return 0 if broker.is_running() else 3
    except BrokerError as exc:
        log.error("%s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
