"""The gateway's configuration file: the provisioning answer as is, plus enrollment keys.

The gateway adds the MCUs it enrolls to its children with its own gateway token; an operator's
API token has no place in the file and is refused with a message saying what to use instead.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from device_sdk.gateway.config import ConfigError, GatewayConfig

ANSWER = {  # the answer of POST /api/v1/gateways/, saved as is
    "uid": "gw-1", "name": "", "children": [], "created": True, "api_token_prefix": "fgt_abcd",
    "mqtt": {"url": "mqtt://127.0.0.1:1883", "username": "gw-1", "credential": "pw",
             "ca_cert": ""},
    "gateway_token": "fgt_abcd-secret",
}
ENROLL = {"server": "http://127.0.0.1:8000", "claim_token": "fet_x", "hardware": "qemu-mps2-an385"}


def write(tmp_path: Path, data: dict[str, Any]) -> Path:
    path = tmp_path / "gateway.json"
    path.write_text(json.dumps(data))
    path.chmod(0o600)
    return path


def test_the_saved_answer_alone_bridges_without_enrolling(tmp_path: Path) -> None:
    """The answer carries the gateway token, but with no server/claim/hardware nothing enrolls."""
    config = GatewayConfig.load(write(tmp_path, ANSWER))
    assert config.gateway_token == "fgt_abcd-secret" and not config.enrolls_children


def test_the_answer_plus_enrollment_keys_enrolls_with_the_gateway_token(tmp_path: Path) -> None:
    config = GatewayConfig.load(write(tmp_path, {**ANSWER, **ENROLL}))
    assert config.enrolls_children
    assert (config.server, config.claim_token, config.hardware, config.gateway_token) == (
        ENROLL["server"], ENROLL["claim_token"], ENROLL["hardware"], "fgt_abcd-secret")


def test_enrolling_without_a_gateway_token_is_refused(tmp_path: Path) -> None:
    """An answer from before gateway tokens: re-provision the gateway to get one."""
    old = {k: v for k, v in ANSWER.items() if k != "gateway_token"}
    with pytest.raises(ConfigError, match="gateway_token.*re-provision"):
        GatewayConfig.load(write(tmp_path, {**old, **ENROLL}))


@pytest.mark.parametrize("extra", [{}, {"gateway_token": None}])
def test_an_operator_api_token_is_refused_and_named(tmp_path: Path,
                                                    extra: dict[str, Any]) -> None:
    """The former ``api_token`` key (an operator's token) is an error, not silently kept."""
    with pytest.raises(ConfigError, match="'api_token'.*no longer used.*gateway_token"):
        GatewayConfig.load(write(tmp_path, {**ANSWER, **ENROLL, **extra, "api_token": "abc"}))


def test_some_enrollment_keys_without_the_others_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="also needs claim_token, hardware"):
        GatewayConfig.load(write(tmp_path, {**ANSWER, "server": ENROLL["server"]}))
