"""fleetctl against a live server, as a CI job runs it: upload, admission, package, rollout,
watch until it ends; and the refusals a job must see as exit codes and messages."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from fleet.core.roles import Role
from fleetctl.errors import Exit
from ota.rollouts.models import Rollout, RolloutState

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_ci_pipeline_uploads_packages_rolls_out_and_gates_on_the_rollout(
        fleetctl: Callable[..., Any], sine_model_file: Path, lab_devices: list[Any],
        stand_in: Any) -> None:
    """The whole CI flow exits 0 and prints the admission table, then the rollout's end."""
    up = fleetctl("models", "upload", str(sine_model_file), "--model", "sine", "--version",
                  "1.0.0", "--profile", "stm32f746")
    assert up.code == Exit.OK, up.stderr
    assert "Admission per hardware profile" in up.stdout
    assert "stm32f746" in up.stdout and "fits" in up.stdout
    assert "upload" in up.stderr  # the upload bar

    shown = fleetctl("--json", "models", "upload", str(sine_model_file), "--model", "sine",
                     "--version", "1.0.1", "--profile", "stm32f746")
    assert shown.code == Exit.OK, shown.stderr
    version = json.loads(shown.stdout)
    assert version["status"] == "ready" and version["admitted"] == {"stm32f746": True}
    assert shown.stderr == ""  # --json: no progress bars

    built = fleetctl("packages", "build", str(version["id"]), "--profile", "stm32f746",
                     "--json")
    assert built.code == Exit.OK, built.stderr
    package = json.loads(built.stdout)[0]
    assert package["hardware_profile"] == "stm32f746" and package["version"] == "1.0.1"

    with stand_in() as fleet:
        run = fleetctl("rollouts", "create", "--name", "ci-1.0.1", "--version",
                       str(version["id"]), *[a for d in lab_devices for a in ("--device", d.uid)],
                       "--waves", "34,100", "--watch", "--timeout", "60")
    assert run.code == Exit.OK, run.stdout + run.stderr
    assert "completed" in run.stdout
    assert "wave 1" in run.stderr and "wave 2" in run.stderr  # the per-wave bars
    assert len(fleet.offers) == len(lab_devices)
    rollout = Rollout.objects.get(name="ci-1.0.1")
    assert rollout.state == RolloutState.COMPLETED

    again = fleetctl("rollouts", "watch", str(rollout.pk), "--json")
    assert again.code == Exit.OK and json.loads(again.stdout)["state"] == "completed"

    listed = fleetctl("devices", "list", "--json")
    assert listed.code == Exit.OK
    assert sorted(d["uid"] for d in json.loads(listed.stdout)) == [d.uid for d in lab_devices]

    csv = fleetctl("telemetry", "export", "--format", "csv", "--bucket", "3600")
    assert csv.code == Exit.OK
    assert csv.stdout.splitlines()[0] == "t,events,events_per_s,mean_score,mean_latency_ms"


def test_watch_exits_non_zero_when_a_rollout_is_paused_or_aborted(
        fleetctl: Callable[..., Any], sine_model_file: Path, lab_devices: list[Any]) -> None:
    """A paused rollout fails the CI gate (exit 4, with its reason); so does an aborted one."""
    up = fleetctl("--json", "models", "upload", str(sine_model_file), "--model", "sine",
                  "--version", "2.0.0")
    version = json.loads(up.stdout)
    created = fleetctl("--json", "rollouts", "create", "--name", "gate", "--version",
                       str(version["id"]), "--device", lab_devices[0].uid)
    assert created.code == Exit.OK, created.stderr
    rollout_id = str(json.loads(created.stdout)["id"])

    paused = fleetctl("rollouts", "pause", rollout_id, "--reason", "night freeze")
    assert paused.code == Exit.OK and "paused" in paused.stdout
    watched = fleetctl("rollouts", "watch", rollout_id, "--interval", "0.2")
    assert watched.code == Exit.ROLLOUT_NOT_COMPLETED
    assert "paused: night freeze" in watched.stderr

    assert fleetctl("rollouts", "resume", rollout_id).code == Exit.OK
    assert fleetctl("rollouts", "abort", rollout_id).code == Exit.OK
    aborted = fleetctl("--json", "rollouts", "watch", rollout_id)
    assert aborted.code == Exit.ROLLOUT_NOT_COMPLETED
    assert json.loads(aborted.stdout)["state"] == "aborted"
    assert json.loads(aborted.stderr)["reason"] == "rollout_aborted"


def test_a_model_that_fits_none_of_the_asked_profiles_exits_3(
        fleetctl: Callable[..., Any], sine_model_file: Path, hardware_profile: Any) -> None:
    """``--profile`` names what the job needs; fitting none of them is exit 3."""
    up = fleetctl("models", "upload", str(sine_model_file), "--model", "sine", "--version",
                  "3.0.0", "--profile", "no-such-board")
    assert up.code == Exit.NOT_ADMITTED
    assert "fits none of: no-such-board" in up.stderr


def test_refusals_carry_the_api_reason_and_their_exit_code(
        fleetctl: Callable[..., Any], token_for: Callable[[Role], str],
        sine_model_file: Path) -> None:
    """Bad token: 5 and the server's message; viewer writing: 5 (403); API refusal: 1 with
    its reason; nothing listening: 6; no server configured: 8."""
    bad = fleetctl("devices", "list", token="not-a-token")
    assert bad.code == Exit.AUTH
    assert "HTTP 401" in bad.stderr and "Invalid token" in bad.stderr

    viewer = fleetctl("rollouts", "pause", "1", token=token_for(Role.VIEWER))
    assert viewer.code == Exit.AUTH and "HTTP 403" in viewer.stderr

    missing = fleetctl("rollouts", "create", "--name", "x", "--version", "999999")
    assert missing.code == Exit.ERROR and "model_version" in missing.stderr

    up = fleetctl("--json", "models", "upload", str(sine_model_file), "--model", "sine",
                  "--version", "4.0.0")
    no_targets = fleetctl("--json", "rollouts", "create", "--name", "empty", "--version",
                          str(json.loads(up.stdout)["id"]), "--group", "nobody")
    assert no_targets.code == Exit.ERROR

    down = fleetctl("devices", "list", env={"FLEET_URL": "http://127.0.0.1:9"})
    assert down.code == Exit.UNREACHABLE and "cannot reach" in down.stderr

    unconfigured = fleetctl("devices", "list", env={"FLEET_URL": ""})
    assert unconfigured.code == Exit.CONFIG and "FLEET_URL" in unconfigured.stderr


def test_config_file_gives_url_and_token(fleetctl: Callable[..., Any], live_server: Any,
                                         token_for: Callable[[Role], str],
                                         tmp_path: Path) -> None:
    """Without the environment, ``~/.config/fleetctl/config.toml`` names the server."""
    config = tmp_path / "config" / "fleetctl" / "config.toml"
    config.parent.mkdir(parents=True)
    config.write_text(f'url = "{live_server.url}"\ntoken = "{token_for(Role.VIEWER)}"\n')
    listed = fleetctl("devices", "list", "--json", env={"FLEET_URL": "", "FLEET_TOKEN": ""})
    assert listed.code == Exit.OK, listed.stderr
    assert json.loads(listed.stdout) == []
