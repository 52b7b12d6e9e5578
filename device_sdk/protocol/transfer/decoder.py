"""Stream a package's transferred bytes into installed model bytes, checking every byte."""

from __future__ import annotations

import hashlib

from device_sdk.protocol.manifest import Encoding, Manifest
from device_sdk.protocol.reasons import ProtocolError, Reason
from device_sdk.protocol.transfer.delta import HEADER as DELTA_HEADER
from device_sdk.protocol.transfer.delta import MAX_OP_HEAD, BaseReader, DeltaApplier
from device_sdk.protocol.transfer.lz_decoder import LzDecoder

SHA256_STATE_BYTES = 112  # a typical C SHA-256 context: state, length, one block
RAM_BUDGET = 4096  # all decoder state on the device, independent of the model's size


def bytes_reader(data: bytes) -> BaseReader:
    """Return a base reader over bytes in memory (the device reads its active slot instead)."""
    view = memoryview(data)

    def read(offset: int, length: int) -> bytes:
        return bytes(view[offset : offset + length])

    return read


def max_instruction_bytes(model_size: int) -> int:
    """Return the longest delta instruction stream that can build ``model_size`` bytes."""
    return DELTA_HEADER.size + (MAX_OP_HEAD + 1) * model_size


class TransferDecoder:
    """Turn transferred chunks into the bytes to write, sequentially, into the inactive slot.

    ``feed`` takes chunks of any size in order and returns installed bytes as soon as they are
    known; ``finish`` checks that everything arrived and matched. Both raise
    ``ProtocolError``: TRANSFER_OVERFLOW for a byte beyond the manifest's transfer size (or
    output beyond its model size), TRANSFER_TRUNCATED when ``finish`` comes early,
    TRANSFER_DIGEST_MISMATCH (checked as soon as the last byte arrives), DECODE_ERROR for
    a corrupt stream, DELTA_BASE_MISMATCH when the base is missing or is not the delta's
    base, MODEL_DIGEST_MISMATCH when the result is not the model the manifest names.
    After an error the decoder refuses every further call with the same error.
    """

    def __init__(self, manifest: Manifest, base_reader: BaseReader | bytes | None = None) -> None:
        self.manifest = manifest
        self.received = 0
        self.produced = 0
        self._transfer_hash = hashlib.sha256()
        self._model_hash = hashlib.sha256()
        self._error: ProtocolError | None = None
        self._finished = False
        self._lz: LzDecoder | None = None
        self._delta: DeltaApplier | None = None
        if manifest.encoding == Encoding.COMPRESSED:
            self._lz = LzDecoder(expected_size=manifest.model_size)
        elif manifest.encoding == Encoding.DELTA:
            if base_reader is None:
                raise ProtocolError(Reason.DELTA_BASE_MISMATCH, "a delta needs the base model")
            if isinstance(base_reader, bytes | bytearray | memoryview):
                base_reader = bytes_reader(bytes(base_reader))
            # Its output is the instruction stream: each operation makes at least one model
            # byte and costs at most MAX_OP_HEAD head bytes plus the bytes it carries, so the
            # stream of a signed model size has a bound, and a header declaring more (a
            # decompression bomb) is refused before a byte is decoded.
            self._lz = LzDecoder(max_size=max_instruction_bytes(manifest.model_size))
            self._delta = DeltaApplier(base_reader, manifest.base_sha256, manifest.model_size)

    def state_bytes(self) -> int:
        """Return the RAM a C decoder needs for this transfer's state (see TRANSFER.md)."""
        total = 2 * SHA256_STATE_BYTES + 32  # two digests and the byte counters
        if self._lz is not None:
            total += self._lz.state_bytes()
        if self._delta is not None:
            total += self._delta.state_bytes()
        return total

    def feed(self, chunk: bytes) -> bytes:
        """Consume the next transferred bytes and return the installed bytes they complete."""
        if self._error is not None:
            raise self._error
        try:
            return self._feed(bytes(chunk))
        except ProtocolError as exc:
            self._error = exc
            raise

    def finish(self) -> bytes:
        """Check the transfer is complete and correct; return any installed bytes left."""
        if self._error is not None:
            raise self._error
        try:
            return self._finish()
        except ProtocolError as exc:
            self._error = exc
            raise

    def _feed(self, chunk: bytes) -> bytes:
        m = self.manifest
        if self._finished:
            raise ProtocolError(Reason.TRANSFER_OVERFLOW, "data after finish")
        if self.received + len(chunk) > m.transfer_size:
            raise ProtocolError(
                Reason.TRANSFER_OVERFLOW,
                f"byte {m.transfer_size} is beyond the declared transfer size",
            )
        self.received += len(chunk)
        self._transfer_hash.update(chunk)
        final = self.received == m.transfer_size
        if final and self._transfer_hash.digest() != m.transfer_sha256:
            raise ProtocolError(Reason.TRANSFER_DIGEST_MISMATCH, "transferred bytes differ")
        if self._lz is None:
            out = chunk
        else:
            out = self._lz.feed(chunk, final)
            if self._delta is not None:
                out = self._delta.feed(out)
        if self.produced + len(out) > m.model_size:
            raise ProtocolError(Reason.TRANSFER_OVERFLOW, "output beyond the model size")
        self.produced += len(out)
        self._model_hash.update(out)
        return out

    def _finish(self) -> bytes:
        m = self.manifest
        if self.received < m.transfer_size:
            raise ProtocolError(
                Reason.TRANSFER_TRUNCATED, f"{self.received} of {m.transfer_size} bytes arrived"
            )
        if self._lz is not None and not self._lz.finished:
            raise ProtocolError(Reason.DECODE_ERROR, "compressed stream incomplete")
        if self._delta is not None and not self._delta.done:
            raise ProtocolError(Reason.DECODE_ERROR, "delta instructions incomplete")
        if self.produced != m.model_size or self._model_hash.digest() != m.model_sha256:
            raise ProtocolError(Reason.MODEL_DIGEST_MISMATCH, "installed bytes differ")
        self._finished = True
        return b""
