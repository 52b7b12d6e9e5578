"""gunicorn as deployed (``deploy/gunicorn.conf.py``) on a loopback port, for tests and benches.

One start-up for every caller that wants the real web path: the scale-out test, the deploy
tests behind nginx, and ``bench/enroll_http.py``. The caller gives the whole environment (its
settings: database, broker, rate limits); this module adds the bind address, the number of web
processes and ``PYTHONPATH``, waits until the master listens and all its web processes are
forked, and stops it (even when the wait fails).
"""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from testkit.broker import free_port

ROOT = Path(__file__).resolve().parents[1]  # the repository: deploy/, .venv
GUNICORN = ROOT / ".venv" / "bin" / "gunicorn"
CONFIG = ROOT / "deploy" / "gunicorn.conf.py"


@dataclass
class Gunicorn:
    """A running gunicorn master, where it listens and its log (stdout and stderr)."""

    process: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def url(self) -> str:
        """The base URL of the API (plain HTTP on loopback)."""
        return f"http://127.0.0.1:{self.port}"

    def children(self) -> list[int]:
        """Return the pids of the master's web processes (none once it is gone)."""
        path = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        try:
            return [int(p) for p in path.read_text().split()]
        except OSError:
            return []

    def pids(self) -> list[int]:
        """Return the master's pid and its web processes' (for CPU accounting)."""
        return [self.process.pid, *self.children()]

    def tail(self, chars: int = 3000) -> str:
        """Return the end of the log, for error messages."""
        return self.log.read_text(errors="replace")[-chars:]

    def stop(self) -> None:
        """Stop the master (it stops its web processes); kill it after 30 s."""
        if self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)


def start_gunicorn(env: Mapping[str, str], log: Path, *, workers: int = 1,
                   port: int | None = None, args: Sequence[str] = (),
                   timeout: float = 60.0) -> Gunicorn:
    """Start ``gunicorn --config deploy/gunicorn.conf.py [args]`` on 127.0.0.1:``port`` (a free
    one if None) with ``env`` as its whole environment, plus ``FLEET_BIND``,
    ``WEB_CONCURRENCY=workers`` and ``PYTHONPATH`` (the repository); return once it listens and
    has forked its ``workers`` web processes.

    Raises RuntimeError, with the log's tail, if it exits or is not up within ``timeout``
    seconds; it is stopped first.
    """
    port = free_port() if port is None else port
    full_env = {**env, "FLEET_BIND": f"127.0.0.1:{port}", "WEB_CONCURRENCY": str(workers),
                "PYTHONPATH": str(ROOT)}
    with log.open("wb") as out:
        process = subprocess.Popen(
            [str(GUNICORN), "--config", str(CONFIG), *args], cwd=ROOT, env=full_env,
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    web = Gunicorn(process, port, log)
    deadline = time.monotonic() + timeout
    try:
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"gunicorn exited with {process.returncode}: {web.tail()}")
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0 and len(web.children()) == workers:
                    return web
            if time.monotonic() > deadline:
                raise RuntimeError(f"gunicorn not up on {port} after {timeout:.0f} s: "
                                   f"{web.tail()}")
            time.sleep(0.2)
    except BaseException:
        web.stop()
        raise


@contextmanager
def running_gunicorn(env: Mapping[str, str], log: Path, *, workers: int = 1,
                     port: int | None = None, args: Sequence[str] = (),
                     timeout: float = 60.0) -> Iterator[Gunicorn]:
    """:func:`start_gunicorn` for the length of a ``with`` block; stopped on the way out,
    however the block ends."""
    web = start_gunicorn(env, log, workers=workers, port=port, args=args, timeout=timeout)
    try:
        yield web
    finally:
        web.stop()
