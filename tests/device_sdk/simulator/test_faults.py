"""The simulator's fault injection acts through the production OTA agent's hooks only."""

from __future__ import annotations

import inspect
import random
from types import SimpleNamespace
from typing import Any

import device_sdk.ota.agent as agent_module
from device_sdk.ota.agent import OtaAgent
from device_sdk.ota.trial import TrialResult
from device_sdk.protocol.reasons import Reason
from device_sdk.simulator.faults import Faults, FaultyOtaAgent


def _agent(cls: type[OtaAgent] = FaultyOtaAgent, **options: Any) -> Any:
    client = SimpleNamespace(on_message=None, on_connect=None, uid="dev-1")
    updater = SimpleNamespace(trusted_kids=list)  # the agent reads the keys for the status
    return cls(client, updater, lambda model: TrialResult(True), **options)  # type: ignore[arg-type]


def test_production_agent_hooks_change_nothing() -> None:
    """The plain agent's hooks pass data and outcomes through and never stop a download."""
    agent = _agent(OtaAgent)
    agent.offer_accepted(SimpleNamespace(transfer_size=100))
    assert agent.chunk_received(0, b"abc") == b"abc"
    assert agent.download_advanced(10**9) is True
    failed = TrialResult(False, Reason.TRIAL_FAILED, "x")
    assert agent.trial_judged(failed) is failed
    assert not hasattr(agent, "faults") and not hasattr(agent, "degraded")


def test_production_agent_module_has_no_simulator_branch() -> None:
    """No fault, crash or rng knob is left in the production agent's source."""
    source = inspect.getsource(agent_module)
    for word in ("Faults", "self.rng", "on_crash", "injected", "degraded"):
        assert word not in source, word


def test_corrupt_chunk_flips_one_byte_once() -> None:
    """With corrupt_chunk=1, exactly one byte of one chunk changes, and only once per offer."""
    agent = _agent(faults=Faults(corrupt_chunk=1.0), rng=random.Random(1))
    agent.offer_accepted(SimpleNamespace(transfer_size=64))
    chunks = [bytes(16) for _ in range(4)]
    out = [agent.chunk_received(i * 16, c) for i, c in enumerate(chunks)]
    flipped = sum(a != b for c, o in zip(chunks, out, strict=True) for a, b in zip(c, o, strict=True))
    assert flipped == 1
    assert agent.chunk_received(0, bytes(64)) == bytes(64)


def test_crash_download_calls_on_crash_and_stops_the_chunk() -> None:
    """With crash_download=1, on_crash runs once the drawn byte count is reached."""
    crashes: list[int] = []
    agent = _agent(faults=Faults(crash_download=1.0), rng=random.Random(2),
                   on_crash=lambda: crashes.append(1))
    agent.offer_accepted(SimpleNamespace(transfer_size=1000))
    assert agent.download_advanced(1000) is False
    assert crashes == [1]
    assert agent.download_advanced(1000) is True  # once per offer


def test_fail_trial_and_degrade_scores() -> None:
    """fail_trial=1 turns a pass into TRIAL_FAILED; degrade_scores=1 marks a pass degraded."""
    failing = _agent(faults=Faults(fail_trial=1.0))
    result = failing.trial_judged(TrialResult(True))
    assert not result.passed and result.reason == Reason.TRIAL_FAILED
    assert not failing.degraded
    degrading = _agent(faults=Faults(degrade_scores=1.0))
    assert degrading.trial_judged(TrialResult(True)).passed
    assert degrading.degraded


def test_no_faults_by_default() -> None:
    """A FaultyOtaAgent without faults behaves like the production agent."""
    agent = _agent()
    agent.offer_accepted(SimpleNamespace(transfer_size=10))
    assert agent.chunk_received(0, b"x" * 10) == b"x" * 10
    assert agent.download_advanced(10) is True
    assert agent.trial_judged(TrialResult(True)).passed and not agent.degraded
