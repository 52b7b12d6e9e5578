"""``fleetctl rollouts``: create, watch (CI gate), pause, resume, abort, roll back."""

from __future__ import annotations

import time
from typing import Any

import click
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from fleetctl.cli import State, json_option, pass_state
from fleetctl.errors import Exit, FleetError
from fleetctl.output import emit_json, err, out, table

ENDED = {"completed", "paused", "aborted"}
FINISHED = ("confirmed", "failed", "rolled_back")


@click.group()
def rollouts() -> None:
    """Staged rollouts of a model version."""


@rollouts.command("list")
@click.option("--state", "rollout_state",
              type=click.Choice(["draft", "running", "paused", "completed", "aborted"]))
@click.option("--limit", type=int, default=50, show_default=True)
@json_option
@pass_state
def list_rollouts(state: State, rollout_state: str | None, limit: int) -> None:
    """List rollouts, newest first."""
    rows = state.client.list_all("rollouts/", {"state": rollout_state,
                                               "ordering": "-created_at"}, limit=limit)
    if state.json:
        emit_json(rows)
        return
    table("Rollouts", ["#id", "name", "version", "state", "wave", "started", "finished"],
          [(r["id"], r["name"], r["model_version"], r["state"],
            f"{r['current_wave'] + 1}/{len(r['waves'])}", (r["started_at"] or "")[:19] or None,
            (r["finished_at"] or "")[:19] or None) for r in rows])


@rollouts.command("show")
@click.argument("rollout_id", type=int)
@json_option
@pass_state
def show(state: State, rollout_id: int) -> None:
    """Show a rollout with its per-wave counts."""
    rollout = state.client.get(f"rollouts/{rollout_id}/")
    if state.json:
        emit_json(rollout)
        return
    _print_rollout(rollout)


@rollouts.command("create")
@click.option("--name", required=True)
@click.option("--version", "model_version", type=int, required=True,
              help="Model version id to roll out.")
@click.option("--group", help="Target devices of this group.")
@click.option("--profile", help="Target devices of this hardware profile.")
@click.option("--tag", "tags", multiple=True, help="Target devices with this tag (repeatable).")
@click.option("--device", "devices", multiple=True, help="Target this device uid (repeatable).")
@click.option("--waves", default="1,10,50,100", show_default=True,
              help="Cumulative percentages of the target per wave.")
@click.option("--base-version", type=int, help="Base version id for delta packages.")
@click.option("--soak", "soak_s", type=int, help="Seconds a wave soaks before the next.")
@click.option("--success-threshold", type=float, help="Share confirmed to pass a wave (0-1).")
@click.option("--failure-threshold", type=float, help="Share failed that pauses (0-1).")
@click.option("--draft", is_flag=True, help="Create without starting.")
@click.option("--watch", "then_watch", is_flag=True, help="Then watch it (see `watch`).")
@click.option("--timeout", default=0.0, help="With --watch: give up after this many seconds.")
@json_option
@pass_state
def create(state: State, name: str, model_version: int, group: str | None, profile: str | None,
           tags: tuple[str, ...], devices: tuple[str, ...], waves: str,
           base_version: int | None, soak_s: int | None, success_threshold: float | None,
           failure_threshold: float | None, draft: bool, then_watch: bool,
           timeout: float) -> None:
    """Create (and start) a rollout; refused with per-profile reasons if it does not fit."""
    try:
        wave_list = [float(w) for w in waves.split(",") if w.strip()]
    except ValueError:
        raise click.BadParameter("comma-separated percentages, e.g. 1,10,50,100",
                                 param_hint="--waves") from None
    body: dict[str, Any] = {"name": name, "model_version": model_version, "waves": wave_list,
                            "start": not draft}
    optional = {"target_group": group, "target_profile": profile,
                "target_tags": list(tags) or None, "target_devices": list(devices) or None,
                "base_version": base_version, "soak_s": soak_s,
                "success_threshold": success_threshold, "failure_threshold": failure_threshold}
    body.update({k: v for k, v in optional.items() if v is not None})
    rollout = state.client.post("rollouts/", body)
    if then_watch:
        _watch(state, rollout["id"], interval=1.0, timeout=timeout)
        return
    if state.json:
        emit_json(rollout)
    else:
        _print_rollout(rollout)


@rollouts.command("watch")
@click.argument("rollout_id", type=int)
@click.option("--interval", default=2.0, show_default=True, help="Seconds between polls.")
@click.option("--timeout", default=0.0, help="Give up after this many seconds (0: never).")
@json_option
@pass_state
def watch(state: State, rollout_id: int, interval: float, timeout: float) -> None:
    """Follow a rollout wave by wave until it ends.

    Exit 0 when it completes; 4 when it is paused or aborted (so a CI job gates on it);
    7 on --timeout.
    """
    _watch(state, rollout_id, interval=interval, timeout=timeout)


def _watch(state: State, rollout_id: int, *, interval: float, timeout: float) -> None:
    deadline = time.monotonic() + timeout if timeout > 0 else None
    rollout = state.client.get(f"rollouts/{rollout_id}/")
    bars = None if state.json else Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[note]}"), TimeElapsedColumn(), console=err)
    tasks: dict[int, Any] = {}
    if bars:
        bars.start()
        err.print(f"rollout {rollout['id']} [bold]{rollout['name']}[/]: {rollout['state']}")
    try:
        while True:
            if bars:
                _update_bars(bars, tasks, rollout)
            if rollout["state"] in ENDED:
                break
            if deadline is not None and time.monotonic() > deadline:
                raise FleetError(f"rollout {rollout_id} still {rollout['state']} after "
                                 f"{timeout:.0f} s", Exit.TIMEOUT)
            time.sleep(interval)
            rollout = state.client.get(f"rollouts/{rollout_id}/")
    finally:
        if bars:
            bars.stop()
    if state.json:
        emit_json(rollout)
    else:
        _print_rollout(rollout)
    if rollout["state"] != "completed":
        why = f": {rollout['paused_reason']}" if rollout.get("paused_reason") else ""
        raise FleetError(f"rollout {rollout_id} {rollout['state']}{why}",
                         Exit.ROLLOUT_NOT_COMPLETED, reason=f"rollout_{rollout['state']}")


def _update_bars(bars: Progress, tasks: dict[int, Any], rollout: dict[str, Any]) -> None:
    """One bar per wave: devices finished (confirmed, failed, rolled back) of its devices."""
    for wave in rollout.get("progress", []):
        n = wave["wave"]
        done = sum(wave.get(k, 0) for k in FINISHED)
        note = f"✓ {wave.get('confirmed', 0)}  ✗ {wave.get('failed', 0)}"
        if wave.get("current") and rollout["state"] == "running":
            note += "  ◀ current"
        description = f"wave {n} ({wave['percent']:g} %)"
        total = max(wave["devices"], 1)
        completed = done if wave["devices"] else (
            1 if rollout["state"] == "completed" or rollout["current_wave"] >= n else 0)
        if n not in tasks:
            tasks[n] = bars.add_task(description, total=total, note=note)
        bars.update(tasks[n], total=total, completed=completed, note=note)


def _print_rollout(r: dict[str, Any]) -> None:
    out.print(f"rollout {r['id']} [bold]{r['name']}[/] · version {r['model_version']} · "
              f"[bold]{r['state']}[/]" + (f" ({r['paused_reason']})" if r.get("paused_reason")
                                          else ""))
    if r.get("progress"):
        table(None, ["wave", "#%", "#devices", "#pending", "#in flight", "#confirmed",
                     "#failed"],
              [(w["wave"], f"{w['percent']:g}", w["devices"], w.get("pending", 0),
                sum(w.get(k, 0) for k in ("offered", "downloading", "verified", "installed",
                                          "trial")),
                w.get("confirmed", 0), w.get("failed", 0)) for w in r["progress"]])
    if r.get("failures"):
        table("Failures", ["reason", "#devices"], sorted(r["failures"].items()))


def _control(verb: str, help_text: str, *, with_reason: bool = False) -> None:
    @rollouts.command(verb, help=help_text)
    @click.argument("rollout_id", type=int)
    @json_option
    @pass_state
    def command(state: State, rollout_id: int, **kwargs: Any) -> None:
        body = {"reason": kwargs["reason"]} if kwargs.get("reason") else {}
        rollout = state.client.post(f"rollouts/{rollout_id}/{verb}/", body)
        if state.json:
            emit_json(rollout)
        else:
            _print_rollout(rollout)

    if with_reason:
        click.option("--reason", help="Why (kept on the rollout and in the audit log).")(command)


_control("pause", "Pause a rollout: no new offers (devices downloading finish).",
         with_reason=True)
_control("resume", "Resume a paused rollout; failed devices get another attempt.")
_control("abort", "Abort a rollout for good; unfinished devices are marked failed.")
_control("rollback", "Offer the previous version to every device that took this one.")
