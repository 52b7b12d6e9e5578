"""``fleetctl packages``: build signed OTA packages of a validated version."""

from __future__ import annotations

import click

from fleetctl.cli import State, json_option, pass_state
from fleetctl.output import emit_json, human_bytes, table


@click.group()
def packages() -> None:
    """Signed OTA packages per (version, hardware profile)."""


@packages.command("build")
@click.argument("version_id", type=int)
@click.option("--profile", "profiles", multiple=True, required=True,
              help="Hardware profile to build for (repeatable).")
@click.option("--base", "base_version", type=int, help="Base version id for a delta package.")
@click.option("--encoding", type=click.Choice(["raw", "compressed", "delta"]),
              help="Transfer encoding (default: the smallest that applies).")
@json_option
@pass_state
def build(state: State, version_id: int, profiles: tuple[str, ...], base_version: int | None,
          encoding: str | None) -> None:
    """Build and sign a package of VERSION_ID for each --profile."""
    built = []
    for profile in profiles:
        body = {"model_version": version_id, "hardware_profile": profile}
        if base_version is not None:
            body["base_version"] = base_version
        if encoding:
            body["encoding"] = encoding
        built.append(state.client.post("packages/", body))
    if state.json:
        emit_json(built)
        return
    _print(built, "Built packages")


@packages.command("list")
@click.option("--version", "version_id", type=int, help="Only this model version's packages.")
@click.option("--profile", help="Only this hardware profile's packages.")
@json_option
@pass_state
def list_packages(state: State, version_id: int | None, profile: str | None) -> None:
    """List packages, newest first."""
    rows = state.client.list_all("packages/", {"model_version": version_id,
                                               "hardware_profile__name": profile,
                                               "ordering": "-sequence"})
    if state.json:
        emit_json(rows)
        return
    _print(rows, "Packages")


def _print(rows: list[dict], title: str) -> None:
    table(title, ["#id", "model", "version", "profile", "encoding", "transfer", "key",
                  "expires"],
          [(p["id"], p["model"], p["version"], p["hardware_profile"], p["encoding"],
            human_bytes(p["transfer_size"]), p["signing_key"], (p["expires_at"] or "")[:10])
           for p in rows])
