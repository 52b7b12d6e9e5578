"""``fleetctl models``: upload a model version, wait for its admission, show the report."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import click
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TransferSpeedColumn,
)

from fleetctl.cli import State, json_option, pass_state
from fleetctl.errors import Exit, FleetError
from fleetctl.output import emit_json, err, human_bytes, out, table

PENDING = ("converting", "validating")
POLL_S = 1.0


@click.group()
def models() -> None:
    """Model registry: upload versions and read their admission report."""


@models.command("list")
@json_option
@pass_state
def list_models(state: State) -> None:
    """List models with their number of versions."""
    rows = state.client.list_all("models/")
    if state.json:
        emit_json(rows)
        return
    table("Models", ["name", "#versions", "labels", "created"],
          [(m["name"], m.get("version_count"), len(m.get("labels") or []), m["created_at"][:19])
           for m in rows])


@models.command("show")
@click.argument("version_id", type=int)
@json_option
@pass_state
def show(state: State, version_id: int) -> None:
    """Show a model version's admission per hardware profile."""
    mv = state.client.get(f"model-versions/{version_id}/")
    if state.json:
        emit_json(mv)
        return
    print_admission(mv)


@models.command("upload")
@click.argument("file", required=False, type=click.Path(exists=True, dir_okay=False,
                                                        path_type=Path))
@click.option("--model", "model_name", required=True, help="Model name (created if missing).")
@click.option("--version", "version", required=True, help="Version string, e.g. 1.2.0.")
@click.option("--notes", default="", help="Release notes.")
@click.option("--keras", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="A .keras model to convert to int8 on the server (instead of FILE).")
@click.option("--dataset", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Representative data (.npy/.npz) for --keras.")
@click.option("--samples", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Inputs (.npy/.npz) to run at validation.")
@click.option("--profile", "profiles", multiple=True,
              help="Hardware profile the model must fit (repeatable); exit 3 if it fits none.")
@click.option("--timeout", default=900.0, show_default=True,
              help="Seconds to wait for conversion and validation.")
@json_option
@pass_state
def upload(state: State, file: Path | None, model_name: str, version: str, notes: str,
           keras: Path | None, dataset: Path | None, samples: Path | None,
           profiles: tuple[str, ...], timeout: float) -> None:
    """Upload FILE (.tflite), or --keras with --dataset, then wait for its admission.

    Prints the admission table per hardware profile. Exits 3 when validation refuses the
    model or when it fits none of the --profile profiles.
    """
    if (file is None) == (keras is None):
        raise click.UsageError("give a .tflite FILE or --keras (with --dataset), not both")
    if keras is not None and dataset is None:
        raise click.UsageError("--keras needs --dataset (representative data)")
    client = state.client
    if not client.get("models/", {"name": model_name}).get("results"):
        client.post("models/", {"name": model_name})
        if not state.json:
            err.print(f"created model [bold]{model_name}[/]")
    files = {"file": file} if file is not None else {"keras": keras, "dataset": dataset}
    if samples is not None:
        files["samples"] = samples
    fields = {"model": model_name, "version": version, "notes": notes}
    total = sum(p.stat().st_size for p in files.values())
    if state.json:
        mv = client.upload("model-versions/", fields, files)
    else:
        with Progress(TextColumn("upload"), BarColumn(), DownloadColumn(),
                      TransferSpeedColumn(), console=err, transient=False) as bar:
            task = bar.add_task("upload", total=total)
            mv = client.upload("model-versions/", fields, files,
                               progress=lambda n: bar.advance(task, n))
    mv = _wait(state, mv, timeout)
    if state.json:
        emit_json({**mv, "admitted": _admitted(mv, profiles)})
    else:
        print_admission(mv)
    if mv["status"] != "ready":
        raise FleetError(f"model version {mv['id']} is {mv['status']}: "
                         f"{_failure_text(mv)}", Exit.NOT_ADMITTED)
    if profiles and not any(_admitted(mv, profiles).values()):
        raise FleetError(f"{model_name} {version} fits none of: {', '.join(profiles)}",
                         Exit.NOT_ADMITTED, reason="not_admitted")


def _wait(state: State, mv: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Poll the version until conversion and validation are over, with a progress bar."""
    if mv["status"] not in PENDING:
        return mv
    deadline = time.monotonic() + timeout
    bar = None if state.json else Progress(TextColumn("{task.description:<24}"), BarColumn(),
                                           TextColumn("{task.percentage:>3.0f} %"),
                                           TimeElapsedColumn(), console=err)
    task = bar.add_task(mv["status"], total=1.0) if bar else None
    if bar:
        bar.start()
    try:
        while mv["status"] in PENDING:
            if time.monotonic() > deadline:
                raise FleetError(f"model version {mv['id']} still {mv['status']} after "
                                 f"{timeout:.0f} s", Exit.TIMEOUT)
            time.sleep(POLL_S)
            mv = state.client.get(f"model-versions/{mv['id']}/")
            job = mv.get("conversion") or {}
            if bar:
                fraction = job.get("progress", 0.0) if mv["status"] == "converting" else 1.0
                label = job.get("message") or mv["status"]
                bar.update(task, completed=fraction, description=label[:24])
    finally:
        if bar:
            bar.stop()
    return mv


def _admitted(mv: dict[str, Any], profiles: tuple[str, ...]) -> dict[str, bool]:
    """Return, for each asked profile (or every profile), whether the version fits it."""
    fits = {c["hardware_profile"]: bool(c["compatible"]) for c in mv.get("compatibility", [])}
    return {p: fits.get(p, False) for p in profiles} if profiles else fits


def _failure_text(mv: dict[str, Any]) -> str:
    job = mv.get("conversion") or {}
    validation = mv.get("validation") or {}
    return job.get("error") or validation.get("error") or "see the validation report"


def print_admission(mv: dict[str, Any]) -> None:
    """Print a version's headline and its admission table per hardware profile."""
    out.print(f"[bold]{mv['model']} {mv['version']}[/] (id {mv['id']}) · {mv['status']} · "
              f"{human_bytes(mv.get('size_bytes'))} · sha256 {mv['sha256'][:12]}…")
    rows = []
    for c in sorted(mv.get("compatibility", []), key=lambda c: c["hardware_profile"]):
        reasons = "; ".join(r.get("message") or r.get("code", "") for r in c.get("reasons") or [])
        rows.append((c["hardware_profile"], "fits" if c["compatible"] else "refused",
                     human_bytes(c.get("arena_bytes_required")), reasons or ""))
    table("Admission per hardware profile", ["profile", "verdict", "arena needed", "reasons"],
          rows)
