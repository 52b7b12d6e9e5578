"""Exit codes (documented in the README, stable: CI jobs branch on them) and the CLI's error."""

from __future__ import annotations

from enum import IntEnum


class Exit(IntEnum):
    """Process exit codes of fleetctl. Public contract: never renumber."""

    OK = 0
    ERROR = 1  # the API refused the request (4xx with a reason) or another failure
    USAGE = 2  # bad command line (click's own code)
    NOT_ADMITTED = 3  # the model fits none of the --profile profiles, or validation failed
    ROLLOUT_NOT_COMPLETED = 4  # watch: the rollout ended paused or aborted
    AUTH = 5  # no token, a bad token (401) or a role too low (403)
    UNREACHABLE = 6  # the server could not be reached or answered 5xx
    TIMEOUT = 7  # --timeout passed before the awaited state
    CONFIG = 8  # no server URL configured, unreadable config file


class FleetError(Exception):
    """A failure to report on stderr with an exit code; ``reason`` is the API's code if any."""

    def __init__(self, message: str, code: Exit = Exit.ERROR, *, reason: str | None = None,
                 status: int | None = None, body: object = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.reason = reason
        self.status = status
        self.body = body
