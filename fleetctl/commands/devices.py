"""``fleetctl devices``: list devices with filters."""

from __future__ import annotations

import click

from fleetctl.cli import State, json_option, pass_state
from fleetctl.output import emit_json, table


@click.group()
def devices() -> None:
    """Enrolled devices."""


@devices.command("list")
@click.option("--group", help="Only devices of this group.")
@click.option("--profile", "hardware_profile", help="Only this hardware profile.")
@click.option("--tag", help="Only devices with this tag.")
@click.option("--state", "device_state",
              type=click.Choice(["enrolled", "online", "offline", "revoked"]))
@click.option("--search", help="Match uid or name.")
@click.option("--limit", type=int, default=1000, show_default=True)
@json_option
@pass_state
def list_devices(state: State, group: str | None, hardware_profile: str | None, tag: str | None,
                 device_state: str | None, search: str | None, limit: int) -> None:
    """List devices (uid order)."""
    rows = state.client.list_all("devices/", {
        "group": group, "hardware_profile": hardware_profile, "tag": tag, "state": device_state,
        "search": search, "ordering": "uid"}, limit=limit)
    if state.json:
        emit_json(rows)
        return
    table(f"Devices ({len(rows)})", ["uid", "name", "profile", "group", "state", "firmware",
                                     "last seen"],
          [(d["uid"], d.get("name"), d.get("hardware_profile"), d.get("group"), d.get("state"),
            d.get("firmware_version"), (d.get("last_seen") or "")[:19] or None) for d in rows])
