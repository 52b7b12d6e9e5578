"""CPU seconds of one PostgreSQL cluster's processes by what they do, for ``bench/soak.py``.

A soak's server time goes to the worker's connections (ingest), the query process's connection
and the parallel workers it starts, autovacuum, and the background writers (WAL, checkpoints).
Processes come and go (Django replaces a connection older than ``CONN_MAX_AGE``, parallel
workers live for one query), so a thread samples every child of the postmaster five times a
second and keeps each one's first and last CPU time; what a process used between its last
sample and its exit is in the cluster's total (``cluster_cpu_seconds``), not in a role: it
shows as ``unattributed`` (mostly the query's parallel workers).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

_TICK = os.sysconf("SC_CLK_TCK")


def _children(master: int) -> dict[tuple[int, int], tuple[str, float]]:
    """Return (pid, start time) -> (command line, CPU seconds) of the postmaster's live
    children (pids are reused: a busy machine starts thousands of processes a minute)."""
    out = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) != master:
                continue
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile
        out[int(proc.name), int(fields[19])] = (cmd, (int(fields[11]) + int(fields[12])) / _TICK)
    return out


class PgCpuSampler(threading.Thread):
    """Sample the cluster under ``folder`` (``start_postgres``'s) until ``stop`` is set."""

    def __init__(self, folder: Path) -> None:
        super().__init__(daemon=True)
        self.master = int((folder / "data" / "postmaster.pid").read_text().split()[0])
        self.stop = threading.Event()
        self.seen: dict[tuple[int, int], list] = {}  # (pid, start) -> [command, first, last]

    def run(self) -> None:
        first_sweep = True
        while True:
            for key, (cmd, cpu) in _children(self.master).items():
                # Started meanwhile: all its time counts (a parallel worker may live 0.1 s).
                entry = self.seen.setdefault(key, [cmd, cpu if first_sweep else 0.0, cpu])
                entry[2] = cpu
                if " idle" not in cmd:  # "postgres: user db host(port) idle" says no role
                    entry[0] = cmd
            first_sweep = False
            if self.stop.wait(0.2):
                return

    def by_role(self, query_backend: int, poller_backend: int) -> dict[str, float]:
        """CPU seconds used meanwhile: ``worker`` (the other client connections: the worker's,
        and the prune command's), ``queries`` (the query process's connection and its
        parallel workers), ``poller``, ``autovacuum``, ``background`` (WAL writer,
        checkpointer, background writer, launchers)."""
        roles: dict[str, float] = {}
        for (pid, _), (cmd, first, last) in self.seen.items():
            if pid in (query_backend, poller_backend):
                role = "queries" if pid == query_backend else "poller"
            elif "parallel worker for PID" in cmd:
                leader = int(cmd.rsplit("PID", 1)[1].split()[0])
                role = "queries" if leader == query_backend else "worker"
            elif "autovacuum worker" in cmd:
                role = "autovacuum"
            elif "127.0.0.1(" in cmd or "[local]" in cmd:
                role = "worker"
            else:
                role = "background"
            roles[role] = roles.get(role, 0.0) + last - first
        return roles
