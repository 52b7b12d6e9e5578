#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Write the C header of the built-in trusted keys from a file of hex Ed25519 public keys.

Usage: trusted_keys.py KEYS_FILE > trusted_keys_data.h

One key per line (64 hex digits; other lines are ignored). Each key's id (the first 8 bytes of
its SHA-256, as ``tml_key_id()`` computes it) is written next to it, so the table is a
``const`` array that stays in flash: the device copies nothing into RAM at boot.
"""

from __future__ import annotations

import hashlib
import re
import sys
from pathlib import Path

KEY_ID_BYTES = 8  # TML_KEY_ID_BYTES (protocol.h), cose.KEY_ID_BYTES


def c_bytes(data: bytes) -> str:
    """Return a C brace initializer of the bytes."""
    return "{" + ",".join(f"0x{b:02x}" for b in data) + "}"


def main(argv: list[str]) -> int:
    """Print the header for the key file named in argv[1]."""
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    source = Path(argv[1])
    keys = [bytes.fromhex(line) for line in source.read_text().split()
            if re.fullmatch(r"[0-9a-fA-F]{64}", line)]
    if not keys:
        print(f"{source}: no 64-hex-digit public key found", file=sys.stderr)
        return 1
    entries = ", \\\n    ".join(
        "{" + c_bytes(hashlib.sha256(key).digest()[:KEY_ID_BYTES]) + ", " + c_bytes(key) + "}"
        for key in keys)
    print(f"/* Generated from {source} by tools/trusted_keys.py: {{key id, public key}}. */")
    print(f"#define TML_TRUSTED_KEY_COUNT {len(keys)}")
    print(f"#define TML_TRUSTED_KEYS {{ \\\n    {entries}}}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
