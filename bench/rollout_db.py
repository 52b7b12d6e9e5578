"""The rollout bench's database: a throwaway PostgreSQL (scripts/postgres.sh, fsync on, as a
user runs the service) or a SQLite file, and the CPU seconds of that PostgreSQL's own processes
(its postmaster and backends only: other clusters on a shared box are not counted).

Imported by ``bench/rollout.py`` (run as a script: ``bench/`` is on ``sys.path`` as its folder).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from lab import cpu_seconds  # bench/ is the script's folder

ROOT = Path(__file__).resolve().parents[1]


class BenchDatabase:
    """``postgresql``: a cluster in ``workdir/pg`` on a free port; ``sqlite``: no server."""

    def __init__(self, vendor: str, workdir: Path) -> None:
        self.vendor = vendor
        self.folder = workdir / "pg"
        self.port = 0
        self.url: str | None = None  # None: setup_django's SQLite file

    def start(self) -> None:
        if self.vendor != "postgresql":
            return
        from testkit.broker import free_port

        os.chmod(self.folder.parent, 0o755)  # the postgres user must reach its data folder
        self.port = free_port()
        self.url = subprocess.run(
            ["bash", "scripts/postgres.sh", "start", str(self.folder), str(self.port)],
            cwd=ROOT, check=True, capture_output=True, text=True,
            env={**os.environ, "PG_FSYNC": "on"}).stdout.strip()

    def stop(self) -> None:
        if self.port:
            subprocess.run(["bash", "scripts/postgres.sh", "stop", str(self.folder),
                            str(self.port)], cwd=ROOT, check=False, capture_output=True)
            self.port = 0

    def cpu_seconds(self) -> float:
        """CPU seconds so far of the postmaster, its children that ended (the postmaster
        reaps them: its cutime and cstime) and those alive now (0 for SQLite)."""
        pid_file = self.folder / "data" / "postmaster.pid"
        if self.vendor != "postgresql" or not pid_file.exists():
            return 0.0
        postmaster = int(pid_file.read_text().split()[0])
        try:
            fields = Path(f"/proc/{postmaster}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return 0.0
        total = sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                stat = (proc / "stat").read_text()
            except OSError:
                continue  # gone meanwhile
            if int(stat.rsplit(")", 1)[1].split()[1]) == postmaster:
                total += cpu_seconds(int(proc.name))
        return total
