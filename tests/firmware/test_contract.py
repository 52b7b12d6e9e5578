"""The C headers and the Python protocol modules agree on every shared constant.

Read, not copied: the C side is parsed from firmware/include/tml/*.h, the Python side taken
from the modules themselves, so a value changed on one side only fails here.
"""

from __future__ import annotations

import re
from enum import IntEnum
from pathlib import Path

import pytest

from device_sdk.protocol import cose, events, limits, link, manifest, ota_messages, status
from device_sdk.protocol.reasons import Reason

INCLUDE = Path(__file__).resolve().parents[2] / "firmware" / "include" / "tml"


def c_constants(header: str) -> dict[str, int]:
    """Return NAME -> value for the #defines and enum entries of a header."""
    text = re.sub(r"/\*.*?\*/", "", (INCLUDE / header).read_text(), flags=re.DOTALL)
    found: dict[str, int] = {}
    number = r"\(?(-?(?:0x[0-9a-fA-F]+|\d+))[UL]*\)?"
    for name, value in re.findall(rf"#define\s+(TML_\w+)\s+{number}", text):
        found[name] = int(value, 0)
    for name, value in re.findall(rf"\b(TML_\w+)\s*=\s*{number}\s*[,}}\n]", text):
        found[name] = int(value, 0)
    return found


def with_prefix(constants: dict[str, int], prefix: str) -> dict[str, int]:
    """Return the constants starting with ``prefix``, the prefix removed."""
    return {k[len(prefix):]: v for k, v in constants.items() if k.startswith(prefix)}


def members(enum: type[IntEnum]) -> dict[str, int]:
    """Return an IntEnum as name -> value."""
    return {m.name: int(m.value) for m in enum}


def test_reason_codes_are_identical() -> None:
    """reasons.h has exactly reasons.py's names and values (wire values: never renumber)."""
    assert with_prefix(c_constants("reasons.h"), "TML_REASON_") == members(Reason)


@pytest.mark.parametrize(("prefix", "enum"), [
    ("TML_ENCODING_", manifest.Encoding),
    ("TML_STATE_", ota_messages.DeploymentState),
    ("TML_EVENTS_KIND_", events.MessageKind),
    ("TML_LINK_STATE_", status.LinkState),
])
def test_protocol_enums_are_identical(prefix: str, enum: type[IntEnum]) -> None:
    """Encodings, deployment states, event kinds and link states match protocol.h."""
    assert with_prefix(c_constants("protocol.h"), prefix) == members(enum)


def test_manifest_keys_are_identical() -> None:
    """Manifest, rotation and policy payload keys match manifest.py's K_* and KP_* constants."""
    python = {name.split("_", 1)[1]: value for name, value in vars(manifest).items()
              if name.startswith(("K_", "KP_")) and isinstance(value, int)}
    assert with_prefix(c_constants("protocol.h"), "TML_K_") == python


def test_limits_and_envelope_constants_are_identical() -> None:
    """Every limit and COSE constant protocol.h mirrors has the Python value."""
    c = c_constants("protocol.h")
    mirrored = {name: value for name, value in c.items()
                if name.startswith(("TML_MAX_", "TML_MIN_"))}
    assert len(mirrored) >= 20
    for name, value in mirrored.items():
        python_name = name[4:]
        source = cose if python_name == "MAX_KID_BYTES" else limits
        assert getattr(source, python_name) == value, name
    assert c["TML_COSE_SIGN1_TAG"] == cose.COSE_SIGN1_TAG
    assert c["TML_COSE_HEADER_ALG"] == cose.HEADER_ALG
    assert c["TML_COSE_HEADER_KID"] == cose.HEADER_KID
    assert c["TML_COSE_ALG_EDDSA"] == cose.ALG_EDDSA
    assert c["TML_SIGNATURE_BYTES"] == cose.SIGNATURE_BYTES
    assert c["TML_KEY_ID_BYTES"] == cose.KEY_ID_BYTES
    assert c["TML_MANIFEST_FORMAT_VERSION"] == manifest.FORMAT_VERSION
    assert c["TML_MANIFEST_MAX_TEXT_BYTES"] == manifest.MAX_TEXT_BYTES
    assert c["TML_DIGEST_BYTES"] == manifest.DIGEST_BYTES


def test_enroll_limits_are_identical() -> None:
    """enroll.h's challenge limits and proof size match enrollment.py, limits.py and link.py."""
    from device_sdk.protocol import enrollment

    c = c_constants("enroll.h")
    assert c["TML_ENROLL_MAX_NONCE"] == enrollment.MAX_NONCE_BYTES
    assert c["TML_ENROLL_MAX_VIA"] == limits.MAX_UID_CHARS
    assert c["TML_ENROLL_SIGNATURE"] == link.ENROLL_SIGNATURE_BYTES


def test_link_kinds_and_flags_are_identical() -> None:
    """link.h's message kinds and flags match link.py."""
    c = c_constants("link.h")
    kinds = {k: v for k, v in with_prefix(c, "TML_LINK_").items()
             if k not in {"FLAG_RST", "HEADER", "CRC"}}
    assert kinds == members(link.Kind)
    assert c["TML_LINK_FLAG_RST"] == link.FLAG_RST
    assert c["TML_LINK_HEADER"] == link.HEADER.size
    assert c["TML_LINK_CRC"] == link.CRC_BYTES


def test_firmware_payload_sizes_fit_the_wire_caps() -> None:
    """The firmware never sends more than the server accepts on a topic."""
    config = c_constants("config.h")
    assert config["TML_LINK_TX_MAX_PAYLOAD"] <= limits.MAX_STATUS_BYTES
    assert config["TML_OTA_CHUNK_BYTES"] <= limits.MAX_CHUNK_BYTES
    assert config["TML_EVENTS_PER_BATCH"] <= limits.MAX_EVENTS_PER_BATCH
