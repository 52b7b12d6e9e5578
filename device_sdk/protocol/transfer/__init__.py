"""Transfer encodings of OTA model packages: raw, compressed and delta (TRANSFER.md).

The server picks an encoding with :func:`choose_encoding` and puts the result's size and
digest into the manifest; a device streams the transferred chunks through a
:class:`TransferDecoder` and writes what it returns, in order, into its inactive slot.
"""

from __future__ import annotations

from device_sdk.protocol.manifest import Encoding
from device_sdk.protocol.transfer.decoder import RAM_BUDGET, TransferDecoder, bytes_reader
from device_sdk.protocol.transfer.delta import BaseReader, DeltaApplier, encode_delta
from device_sdk.protocol.transfer.lz import LzParams, compress
from device_sdk.protocol.transfer.lz_decoder import LzDecoder, decompress

__all__ = [
    "RAM_BUDGET",
    "BaseReader",
    "DeltaApplier",
    "Encoding",
    "LzDecoder",
    "LzParams",
    "TransferDecoder",
    "bytes_reader",
    "choose_encoding",
    "compress",
    "decompress",
    "encode_delta",
    "encode_transfer",
]


def encode_transfer(model: bytes, encoding: Encoding | int, base: bytes | None = None) -> bytes:
    """Return the bytes to transfer for ``model`` in ``encoding`` (a delta needs ``base``)."""
    encoding = Encoding(encoding)
    if encoding == Encoding.RAW:
        return bytes(model)
    if encoding == Encoding.COMPRESSED:
        return compress(model)
    if base is None:
        raise ValueError("a delta needs the base model")
    return compress(encode_delta(base, model))


def choose_encoding(model: bytes, base: bytes | None = None) -> tuple[Encoding, bytes]:
    """Return the encoding that transfers fewest bytes, with those bytes.

    Compressed wins only if smaller than raw, and delta only if smaller than both, so a
    device never receives a delta (which needs its running model intact) for nothing.
    """
    best = (Encoding.RAW, bytes(model))
    compressed = encode_transfer(model, Encoding.COMPRESSED)
    if len(compressed) < len(best[1]):
        best = (Encoding.COMPRESSED, compressed)
    if base is not None:
        delta = encode_transfer(model, Encoding.DELTA, base)
        if len(delta) < len(best[1]):
            best = (Encoding.DELTA, delta)
    return best
