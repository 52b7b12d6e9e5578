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
    """``postgresql``: a cluster in ``workdir/pg`` on a free port; ``sqlite``: no server.

    ``statements=True`` (PostgreSQL only) loads pg_stat_statements, so that
    :meth:`statement_counts` can say what ran during the rollout and how often.
    """

    def __init__(self, vendor: str, workdir: Path, statements: bool = False) -> None:
        self.vendor = vendor
        self.folder = workdir / "pg"
        self.port = 0
        self.url: str | None = None  # None: setup_django's SQLite file
        self.statements = statements and vendor == "postgresql"

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
        if self.statements:  # a preloaded library: set it, then restart the cluster
            self._sql("ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'")
            port = self.port
            self.stop()
            self.port = port
            subprocess.run(["bash", "scripts/postgres.sh", "start", str(self.folder),
                            str(self.port)], cwd=ROOT, check=True, capture_output=True,
                           env={**os.environ, "PG_FSYNC": "on"})
            self._sql("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")

    def _sql(self, statement: str) -> list[tuple[object, ...]]:
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as conn:
            cur = conn.execute(statement)
            return cur.fetchall() if cur.description else []

    def reset_statements(self) -> None:
        """Forget the statements counted so far (call when the rollout starts)."""
        if self.statements:
            self._sql("SELECT pg_stat_statements_reset()")

    def statement_counts(self, top: int = 25) -> dict[str, object]:
        """Statements run since :meth:`reset_statements`: calls and execution milliseconds in
        all, and the ``top`` statements by total time (their text cut to 160 characters)."""
        if not self.statements:
            return {}
        rows = self._sql(
            "SELECT calls, total_exec_time, rows, query FROM pg_stat_statements "
            "WHERE query NOT LIKE '%pg_stat_statements%' ORDER BY total_exec_time DESC")
        return {
            "calls": sum(int(r[0]) for r in rows),
            "exec_ms": round(sum(float(r[1]) for r in rows), 1),
            "top": [{"calls": int(c), "ms": round(float(ms), 1), "rows": int(n),
                     "query": " ".join(str(q).split())[:160]} for c, ms, n, q in rows[:top]],
        }

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
