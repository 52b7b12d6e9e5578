"""The simulator bench's child process: the Simulator run through the bench's phases.

``run_simulate`` (``bench/simulator.py --role simulate SPEC``) connects the devices, measures
the idle and steady windows (CPU, RSS, connected devices, reactor timer lag) and reports each
phase as one JSON line on stdout; ``Child`` is the parent's handle on that process. The child
is a process of its own so its CPU and memory are its alone. Imported by
``bench/simulator.py`` (run as a script: ``bench/`` is on ``sys.path`` as its folder).
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from simulator_enroll import HARDWARE, log  # bench/ is the script's folder

ROOT = Path(__file__).resolve().parents[1]
ENTRY = Path(__file__).with_name("simulator.py")  # the entry point; ``--role simulate``


# -- process figures --------------------------------------------------------------------------


def rss_mb(pid: int | str = "self") -> float:
    """Return the resident set size of process ``pid`` in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


# -- the simulator child ----------------------------------------------------------------------


def emit(event: str, **fields: Any) -> None:
    """Tell the parent something (one JSON line on stdout)."""
    print(json.dumps({"event": event, **fields}), flush=True)


def run_simulate(spec_path: str) -> None:
    """Child: run the Simulator through the phases of the spec, reporting on stdout."""
    import logging
    import random

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="[simulator child] %(levelname)s %(name)s: %(message)s")
    from device_sdk.mqtt import paho_speedup
    from device_sdk.simulator import SimulationConfig, Simulator

    paho_speedup.install()  # opt-in, per process: this child is a simulator's entry point
    spec = json.loads(Path(spec_path).read_text())
    devices, reporting = spec["devices"], spec["reporting"]
    rss_start = rss_mb()
    config = SimulationConfig(
        server="http://127.0.0.1:9", token="-", devices=devices, model_path=Path(spec["model"]),
        hardware=HARDWARE, state_dir=Path(spec["state_dir"]), rate_hz=spec["rate"],
        batch=spec["batch"], batch_age_s=max(60.0, 4 * spec["batch"] / spec["rate"]),
        threads=spec["threads"], connectors=spec["connectors"],
        connect_rate=spec["connect_rate"], broker_url=spec["broker_url"],
        reporting=0,  # all idle at first; the first R start inferring in phase 4
        report_every_s=3600, ota=spec["ota"], seed=1,
    )
    sim = Simulator(config)
    cpu0 = time.process_time()
    sim.start()
    started = sim.connect_started_at
    log(f"child: {devices} devices built and started in {time.process_time() - cpu0:.1f} s CPU; "
        f"connecting")
    deadline = time.monotonic() + spec["connect_timeout"]
    last_note, connected = 0.0, 0
    while time.monotonic() < deadline:
        connected = sim.connected()
        if connected == devices:
            break
        if time.monotonic() - last_note >= 2:
            last_note = time.monotonic()
            log(f"child: {connected} of {devices} connected after "
                f"{time.monotonic() - started:.1f} s")
        time.sleep(0.25)  # counting walks every device: not too often
    connect_s = time.monotonic() - started
    connect_cpu = time.process_time() - cpu0
    emit("connected", connected=connected, seconds=connect_s, cpu_s=connect_cpu,
         rss_mb=rss_mb(), rss_start_mb=rss_start, connects=sim.totals().connects,
         threads=len(sim.reactors))
    if spec["connect_only"]:
        sim.stop(timeout=30)
        emit("stopped")
        return

    lags: list[float] = []  # how late each reactor's 100 ms probe timer ran, seconds

    def probe(reactor: Any, due: float) -> None:
        now = time.monotonic()
        lags.append(now - due)
        reactor.call_later(0.1, probe, reactor, now + 0.1)

    for reactor in sim.reactors:
        reactor.call_later(0.1, probe, reactor, time.monotonic() + 0.1)

    def window(seconds: float) -> dict[str, Any]:
        low = sim.connected()
        t0, c0, w0 = time.monotonic(), time.process_time(), time.time()
        inferences0 = sum(d.inferences for d in sim.devices)
        lags.clear()
        end = t0 + seconds
        while time.monotonic() < end:
            time.sleep(min(1.0, max(0.0, end - time.monotonic())))
            low = min(low, sim.connected())
        wall = time.monotonic() - t0
        late = sorted(lags)
        return {"start": w0, "end": time.time(), "seconds": wall,
                "cpu_percent": 100 * (time.process_time() - c0) / wall, "rss_mb": rss_mb(),
                "connected_min": low,
                "inferences": sum(d.inferences for d in sim.devices) - inferences0,
                "lag_p99_ms": 1000 * late[int(0.99 * (len(late) - 1))] if late else None,
                "lag_max_ms": 1000 * late[-1] if late else None}

    time.sleep(spec["settle"])
    emit("idle", **window(spec["idle_window"]))
    rng = random.Random(2)
    for device in sim.devices[:reporting]:
        device.reporting = True
        device.start(phase=rng.uniform(0, device.period))
    log(f"child: {reporting} devices now infer at {spec['rate']}/s; warming up one batch period")
    time.sleep(spec["batch"] / spec["rate"] + spec["settle"])
    emit("steady", **window(spec["window"]))
    sys.stdin.readline()  # the parent has collected the window's batches
    stopped = time.monotonic()
    sim.stop(timeout=30)
    t = sim.totals()
    emit("stopped", seconds=time.monotonic() - stopped, events=t.events, messages=t.messages,
         acked=t.acked, pending=t.pending, dropped=t.dropped, rejected=t.rejected,
         connects=t.connects)


class Child:
    """The simulator child process: its JSON lines arrive in a queue as they come."""

    def __init__(self, spec: dict[str, Any], workdir: Path, name: str) -> None:
        import queue

        path = workdir / f"{name}.json"
        path.write_text(json.dumps(spec))
        self.proc = subprocess.Popen(
            [sys.executable, str(ENTRY), "--role", "simulate", str(path)], cwd=ROOT,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        self.lines: queue.Queue[dict[str, Any] | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith("{"):
                self.lines.put(json.loads(line))
        self.lines.put(None)

    def expect(self, event: str, timeout: float) -> dict[str, Any]:
        import queue

        try:
            item = self.lines.get(timeout=timeout)
        except queue.Empty:
            raise RuntimeError(f"no {event!r} from the simulator in {timeout:.0f} s") from None
        if item is None:
            raise RuntimeError(f"the simulator exited ({self.proc.wait()}) before {event!r}")
        if item["event"] != event:
            raise RuntimeError(f"expected {event!r} from the simulator, got {item}")
        return item

    def tell_stop(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("stop\n")
        self.proc.stdin.flush()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

