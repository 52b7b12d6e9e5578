# SPDX-License-Identifier: Apache-2.0
"""Write the fuzz harnesses' seed corpora from the test vectors (fuzz/README.md).

Usage: ``python tools/fuzz_seeds.py VECTORS_DIR OUT_DIR``. OUT_DIR/<harness>/ receives one file
per seed, named after the vector it came from, in that harness's input format (see each
fuzz/fuzz_<harness>.c): the vectors' inputs (COSE messages, their payloads, transfer streams,
link frames, messages, challenges) and, for the device, whole gateway sessions (an update
chain, rotations, enrollment) made of the same bytes.
"""

from __future__ import annotations

import hashlib
import shutil
import struct
import sys
from collections.abc import Iterator
from pathlib import Path

import cbor2

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from device_sdk.protocol.transfer.lz_decoder import decompress

# Link kinds (include/tml/link.h) and the device harness's opcodes (fuzz/fuzz_device.c).
OFFER, CHUNK, TIME, STATUS_REQUEST, ROTATION, ENROLL_CHALLENGE = 4, 6, 8, 9, 10, 11
OP_FRAME, OP_RAW, OP_TICK, OP_REBOOT, OP_CUT = 0, 1, 2, 3, 4
CHUNK_BYTES = 512  # TML_OTA_CHUNK_BYTES
T0_MS = 1_800_000_000_000


def records(path: Path) -> Iterator[dict[str, str]]:
    """Yield the records of a .vec file (blank-line separated ``key: value`` lines)."""
    record: dict[str, str] = {}
    for line in path.read_text().splitlines() + [""]:
        if line.startswith("#"):
            continue
        if not line.strip():
            if record:
                yield record
            record = {}
            continue
        key, _, value = line.partition(": ")
        record[key.strip()] = value.strip()


def hexval(text: str) -> bytes | None:
    """Return the bytes of a hex value, or None for anything else."""
    if len(text) < 2 or len(text) % 2 or any(c not in "0123456789abcdef" for c in text):
        return None
    return bytes.fromhex(text)


def cose_payload(cose: bytes) -> bytes | None:
    """Return the payload of a COSE_Sign1 message, or None if it does not decode."""
    try:
        item = cbor2.loads(cose)
    except Exception:  # noqa: BLE001 - malformed vectors are seeds too, just not here
        return None
    if isinstance(item, cbor2.CBORTag):
        item = item.value
    if isinstance(item, list | tuple) and len(item) == 4 and isinstance(item[2], bytes):
        return item[2]
    return None


def frame(kind: int, payload: bytes) -> bytes:
    """Return a device-harness FRAME step."""
    return bytes([OP_FRAME, kind]) + struct.pack("<H", len(payload)) + payload


def update_steps(cose: bytes, transfer: bytes) -> bytes:
    """Return the steps of one update: the offer, then its chunks in order."""
    manifest = cbor2.loads(cose_payload(cose) or b"\xa0")
    pkg = manifest.get(14, 0)
    steps = frame(OFFER, cose)
    for off in range(0, len(transfer), CHUNK_BYTES):
        steps += frame(CHUNK, cbor2.dumps([pkg, off, transfer[off:off + CHUNK_BYTES]]))
    return steps + bytes([OP_TICK, 40])


class Seeds:
    """Seed files by harness, deduplicated by content."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.seen: set[tuple[str, bytes]] = set()
        self.count = 0

    def add(self, harness: str, name: str, data: bytes) -> None:
        """Write data as a seed of harness (once per distinct content)."""
        if (harness, data) in self.seen:
            return
        self.seen.add((harness, data))
        folder = self.out / harness
        folder.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256(data).hexdigest()[:10]
        (folder / f"{name}-{digest}").write_bytes(data)
        self.count += 1


def main(vectors: Path, out: Path) -> None:
    """Write every harness's seeds from the vectors in ``vectors`` into ``out``."""
    if out.exists():
        shutil.rmtree(out)
    seeds = Seeds(out)
    vecs = {p.name: list(records(p)) for p in sorted(vectors.glob("*.vec"))}

    # cbor: every byte value in every vector (depth 8, as the manifest decoder uses).
    for file, recs in vecs.items():
        for r in recs:
            for key, value in r.items():
                data = hexval(value)
                if data is not None and len(data) > 1:
                    seeds.add("cbor", f"{file[:-4]}-{key}", b"\x08" + data)

    # manifest, rotation, golden: whole messages (mode 0) and their payloads, signed (mode 1).
    updates: list[tuple[str, bytes, bytes]] = []
    for file, harness in (("manifests.vec", "manifest"), ("ota.vec", "manifest"),
                          ("trial.vec", "manifest"), ("rotations.vec", "rotation"),
                          ("trust.vec", "rotation")):
        for r in vecs.get(file, []):
            cose = hexval(r.get("cose", ""))
            if cose is None:
                continue
            name = r.get("name") or r.get("step", "x")
            seeds.add(harness, name, b"\x00" + cose)
            payload = cose_payload(cose)
            if payload is None:
                continue
            seeds.add(harness, f"{name}-signed", b"\x01" + payload)
            try:
                fields = cbor2.loads(payload)
            except Exception:  # noqa: BLE001 - a malformed payload has no key 15 to take
                fields = None
            if isinstance(fields, dict) and 15 in fields:
                seeds.add("golden", name, cbor2.dumps(fields[15], canonical=True))
            if "transfer_file" in r:
                updates.append((name, cose, (vectors / r["transfer_file"]).read_bytes()))
    seeds.add("golden", "one_input", cbor2.dumps([1, [0], None, 0, 0]))

    # lz, delta, transfer: the streams, whole and as the device gets them.
    for r in vecs.get("transfers.vec", []):
        stream = (vectors / r["transfer_file"]).read_bytes()
        name, encoding = Path(r["transfer_file"]).stem, int(r["encoding"])
        size = int(r["model_size"])
        head = bytes([encoding, int(r["chunk"]) & 0xFF]) + struct.pack("<H", size & 0xFFFF)
        seeds.add("transfer", name, head + stream)
        if encoding == 1:
            seeds.add("lz", name, b"\x01" + stream)
            seeds.add("lz", f"{name}-split", b"\x50" + stream)
        if encoding == 2:
            try:
                instructions = decompress(stream)
            except Exception:  # noqa: BLE001 - a broken delta stream is an lz seed only
                instructions = b""
            if instructions:
                seeds.add("delta", name, b"\x03" + instructions)
                seeds.add("delta", f"{name}-split", b"\x54" + instructions)
            seeds.add("lz", name, b"\x00" + stream)

    # link: the wire bytes, with and without a frame of ours awaiting its ACK.
    for r in vecs.get("link.vec", []):
        wire = hexval(r.get("wire", ""))
        if wire:
            seeds.add("link", r["name"], b"\x00" + wire)
            seeds.add("link", f"{r['name']}-pending", b"\x25" + wire + wire)

    # messages: chunks, a time, enroll challenges.
    for r in vecs.get("messages.vec", []):
        if r.get("kind") == "chunk":
            seeds.add("messages", r["name"], bytes.fromhex(r["expect"]))
    for r in vecs.get("enroll.vec", []):
        if "challenge" in r:
            seeds.add("messages", r["name"], hexval(r["challenge"]) or b"")
    seeds.add("messages", "time", cbor2.dumps(T0_MS))

    # device: sessions of steps.
    clock = frame(TIME, cbor2.dumps(T0_MS))
    chain = clock
    for name, cose, transfer in updates:
        if name in {"a_raw", "b_compressed", "c_delta", "d_failing_trial"}:
            chain += update_steps(cose, transfer)
        seeds.add("device", f"update-{name}", clock + update_steps(cose, transfer))
    seeds.add("device", "update-chain", chain)
    first = next((u for u in updates if u[0] == "a_raw"), None)
    if first:
        session = clock + update_steps(first[1], first[2])
        half = len(session) // 2
        seeds.add("device", "update-reboot", session[:half] + bytes([OP_REBOOT]) + session)
        seeds.add("device", "update-cut", bytes([OP_CUT, 3]) + session + bytes([OP_REBOOT])
                  + session)
    trust = clock
    for file in ("rotations.vec", "trust.vec"):
        for r in vecs.get(file, []):
            cose = hexval(r.get("cose", ""))
            if cose:
                trust += frame(ROTATION, cose) + bytes([OP_TICK, 1])
    seeds.add("device", "trust-records", trust + frame(STATUS_REQUEST, b"") + bytes([OP_REBOOT]))
    enroll = clock
    for r in vecs.get("enroll.vec", []):
        challenge = hexval(r.get("challenge", ""))
        if challenge:
            enroll += frame(ENROLL_CHALLENGE, challenge)
    seeds.add("device", "enroll", enroll + bytes([OP_RAW, 3, 0, 5, 0]))
    print(f"fuzz seeds: {seeds.count} files in {out}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(Path(sys.argv[1]), Path(sys.argv[2]))
