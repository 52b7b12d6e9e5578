# SPDX-License-Identifier: Apache-2.0
"""Run the libFuzzer harnesses for a bounded time each, a few at once (fuzz/README.md).

Usage: ``python tools/fuzz_run.py --build build/fuzz --seconds 12 --jobs 2 [--dicts DIR] NAME...``
Each harness build/fuzz/fuzz_NAME runs on its corpus build/fuzz/corpus/NAME (kept between runs;
new inputs land there) plus the seeds build/fuzz/seeds/NAME and the stored regressions
fuzz/regressions/NAME. One line per harness: executions, coverage, corpus, crashes. A crash,
timeout, leak or out-of-memory stops that harness, prints its report and the input's path, and
makes the run fail (exit status 1).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

# Largest input per harness: a whole update session for the device, an offer elsewhere.
MAX_LEN = {"device": 32768, "transfer": 20000, "lz": 16384, "delta": 16384}
STATUS = re.compile(r"#(\d+)\s+\w+\s+cov: (\d+) ft: (\d+) corp: (\d+)/")
STAT = re.compile(r"^stat::(\w+):\s+(\d+)", re.MULTILINE)
ARTIFACT = re.compile(r"Test unit written to (\S+)")


def run(name: str, build: Path, seconds: int, dicts: Path | None) -> tuple[bool, str]:
    """Fuzz one harness; return (passed, the report line and, on failure, the log's tail)."""
    binary = build / f"fuzz_{name}"
    corpus = build / "corpus" / name
    crashes = build / "crashes" / name
    corpus.mkdir(parents=True, exist_ok=True)
    crashes.mkdir(parents=True, exist_ok=True)
    inputs = [corpus, build / "seeds" / name, Path("fuzz/regressions") / name]
    cmd = [str(binary), *(str(d) for d in inputs if d.is_dir()),
           f"-max_total_time={seconds}", "-timeout=10", "-rss_limit_mb=2048",
           f"-max_len={MAX_LEN.get(name, 4096)}", "-print_final_stats=1",
           f"-artifact_prefix={crashes}/"]
    if dicts and (dicts / f"{name}.dict").exists():
        cmd.append(f"-dict={dicts / f'{name}.dict'}")
    env = dict(os.environ, UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1")
    started = time.monotonic()
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, env=env,
                          errors="replace")
    log = proc.stderr
    elapsed = time.monotonic() - started
    stats = {k: int(v) for k, v in STAT.findall(log)}
    last = STATUS.findall(log)
    cov, ft, corp = (last[-1][1], last[-1][2], last[-1][3]) if last else ("?", "?", "?")
    artifacts = ARTIFACT.findall(log)
    execs = stats.get("number_of_executed_units", int(last[-1][0]) if last else 0)
    line = (f"fuzz_{name}: {execs} execs ({execs / max(elapsed, 1e-3):.0f}/s) in {elapsed:.0f} s,"
            f" cov {cov}, ft {ft}, corpus {corp} (+{stats.get('new_units_added', 0)} new),"
            f" crashes {len(artifacts) or int(proc.returncode != 0)}")
    if proc.returncode == 0 and not artifacts:
        return True, line
    tail = "\n".join(log.splitlines()[-60:])
    hint = "".join(f"\n  input: {a}  (once fixed, copy it to fuzz/regressions/{name}/)"
                   for a in artifacts)
    return False, f"{line}\n{tail}{hint}"


def main() -> int:
    """Run the named harnesses, print a line each; return 1 if any failed."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--build", type=Path, required=True)
    ap.add_argument("--seconds", type=int, default=12)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--dicts", type=Path)
    ap.add_argument("names", nargs="+")
    args = ap.parse_args()
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        results = list(pool.map(lambda n: run(n, args.build, args.seconds, args.dicts),
                                args.names))
    for _, report in results:
        print(report, flush=True)
    failed = [n for n, (ok, _) in zip(args.names, results, strict=True) if not ok]
    print(f"fuzz: {len(args.names) - len(failed)} of {len(args.names)} harnesses clean, "
          f"{args.seconds} s each" + (f"; FAILED: {' '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
