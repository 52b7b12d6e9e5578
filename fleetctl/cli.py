"""The ``fleetctl`` command: global options, then one group per API concern."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property, wraps
from typing import Any

import click
from rich.markup import escape

from fleetctl.client import Client
from fleetctl.config import load_settings
from fleetctl.errors import Exit, FleetError
from fleetctl.output import emit_json, err


@dataclass
class State:
    """What every command gets: how to reach the server and how to print."""

    url: str | None
    token: str | None
    config: str | None
    json: bool

    @cached_property
    def client(self) -> Client:
        return Client(load_settings(self.url, self.token, self.config))


pass_state = click.make_pass_decorator(State)


def json_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Accept ``--json`` on a command too (``fleetctl devices list --json``)."""

    @click.option("--json", "json_here", is_flag=True,
                  help="Machine-readable output (one JSON document, no progress bars).")
    @click.pass_context
    @wraps(fn)
    def wrapper(ctx: click.Context, *args: Any, json_here: bool, **kwargs: Any) -> Any:
        state = ctx.ensure_object(State)
        state.json = state.json or json_here
        return ctx.invoke(fn, *args, **kwargs)

    return wrapper


class FleetGroup(click.Group):
    """Report ``FleetError`` as a message (with the API's reason) and its exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except FleetError as exc:
            state = ctx.find_object(State)
            if state is not None and state.json:  # on stderr: stdout keeps one document
                emit_json({"error": exc.message, "reason": exc.reason, "status": exc.status,
                           "exit_code": int(exc.code)}, stream=sys.stderr)
            else:
                err.print(f"[bold red]error:[/] {escape(exc.message)}", highlight=False)
            sys.exit(int(exc.code))


@click.group(cls=FleetGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--url", envvar="FLEET_URL", help="Server base URL (env FLEET_URL).")
@click.option("--token", envvar="FLEET_TOKEN", help="API token (env FLEET_TOKEN).")
@click.option("--config", "config", type=click.Path(dir_okay=False),
              help="Config file (default ~/.config/fleetctl/config.toml).")
@click.option("--json", "as_json", is_flag=True,
              help="Machine-readable output (one JSON document, no progress bars).")
@click.version_option("0.1.0", prog_name="fleetctl")
@click.pass_context
def cli(ctx: click.Context, url: str | None, token: str | None, config: str | None,
        as_json: bool) -> None:
    """Operate a TinyML fleet over its REST API.

    \b
    Exit codes: 0 ok; 1 API refusal or other error; 2 usage; 3 model not admitted
    (fits none of the --profile profiles) or validation failed; 4 rollout ended paused or
    aborted; 5 authentication or role refused; 6 server unreachable or 5xx; 7 timeout;
    8 configuration missing.
    """
    ctx.obj = State(url=url, token=token, config=config, json=as_json)


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="fleetctl")


# The command groups register themselves on ``cli`` (they import the helpers above).
from fleetctl.commands import devices, models, packages, rollouts, telemetry

for _group in (models.models, packages.packages, rollouts.rollouts, devices.devices,
               telemetry.telemetry):
    cli.add_command(_group)

__all__ = ["Exit", "FleetError", "State", "cli", "json_option", "main", "pass_state"]
