"""``fleetctl telemetry export``: per-bucket series as CSV or JSON."""

from __future__ import annotations

import csv
import io
import json
import sys

import click

from fleetctl.cli import State, json_option, pass_state

FIELDS = ["t", "events", "events_per_s", "mean_score", "mean_latency_ms"]


@click.group()
def telemetry() -> None:
    """Telemetry queries."""


@telemetry.command("export")
@click.option("--format", "fmt", type=click.Choice(["csv", "json"]), default="csv",
              show_default=True)
@click.option("--since", help="ISO 8601 start (default: 24 h ago).")
@click.option("--until", help="ISO 8601 end (default: now).")
@click.option("--bucket", type=click.Choice(["60", "300", "900", "3600", "86400"]),
              default="60", show_default=True, help="Seconds per row.")
@click.option("--device", help="Device uid.")
@click.option("--group")
@click.option("--profile", "hardware_profile")
@click.option("--tag")
@click.option("--model-version", "model_versions", type=int, multiple=True)
@click.option("-o", "--output", type=click.Path(dir_okay=False, writable=True),
              help="Write to a file instead of stdout.")
@json_option
@pass_state
def export(state: State, fmt: str, since: str | None, until: str | None, bucket: str,
           device: str | None, group: str | None, hardware_profile: str | None,
           tag: str | None, model_versions: tuple[int, ...], output: str | None) -> None:
    """Export the event series (events, rate, mean confidence, mean latency per bucket)."""
    params = {"since": since, "until": until, "bucket": bucket, "device": device,
              "group": group, "hardware_profile": hardware_profile, "tag": tag,
              "model_version": list(model_versions) or None}
    data = state.client.get("telemetry/series/", params)
    if state.json or fmt == "json":
        text = json.dumps(data, indent=2) + "\n"
    else:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(data["points"])
        text = buffer.getvalue()
    if output:
        with open(output, "w", newline="") as fh:
            fh.write(text)
    else:
        sys.stdout.write(text)
