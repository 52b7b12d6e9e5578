"""The firmware's fuzz harnesses (firmware/fuzz/): every stored crash input and every seed from
the vectors replays clean through its harness with ASan and UBSan (``make fuzz-regress``); a crash
input fails its harness's contract check or a sanitizer, so a decoder that breaks again fails here.

The coverage-guided runs themselves (``make fuzz``, libFuzzer) are the test command's own step
(scripts/test.sh "fuzzing C decoders").
"""

from __future__ import annotations

import re

import pytest

from tests.firmware.firmware_kit import FIRMWARE, make, make_variable, require

pytestmark = pytest.mark.slow

REGRESSIONS = FIRMWARE / "fuzz" / "regressions"


def test_stored_crash_inputs_and_vector_seeds_replay_clean_through_every_harness() -> None:
    require("make", "cc")
    names = make_variable("FUZZ_NAMES").split()
    assert {"cbor", "manifest", "rotation", "golden", "lz", "delta", "transfer", "link",
            "messages", "device"} <= set(names)
    result = make("fuzz-regress")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    replayed = dict(re.findall(r"regress_(\w+): (\d+) inputs replayed", result.stdout))
    assert sorted(replayed) == sorted(names), replayed
    for name in names:
        stored = list((REGRESSIONS / name).glob("*")) if (REGRESSIONS / name).is_dir() else []
        seeds = list((FIRMWARE / "build" / "fuzz" / "seeds" / name).glob("*"))
        assert seeds, f"no seeds from the vectors for {name}"
        assert int(replayed[name]) == len(stored) + len(seeds), (name, replayed[name])

