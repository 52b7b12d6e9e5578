"""Encode and stream-apply the instruction stream of transfer encoding 2 (delta).

The instruction stream (TRANSFER.md, "Encoding 2: delta") is a 12-byte header
(``b"TD"``, version, flags, base size, target size) followed by operations, each an
unsigned LEB128 head ``(length - 1) << 2 | kind`` and, for the kinds that read the base,
a zigzag LEB128 offset relative to the end of the previous base read:

- ``COPY`` (0): copy ``length`` base bytes;
- ``ADD`` (1): ``length`` bytes follow, each added modulo 256 to the next base byte;
- ``INSERT`` (2): ``length`` literal bytes follow.

On the wire the stream is compressed with encoding 1, so the many zero differences of
a lightly retrained layer cost a fraction of a bit each.
"""

from __future__ import annotations

import hashlib
import struct
from bisect import bisect_left
from collections.abc import Callable

import numpy as np

from device_sdk.protocol.reasons import ProtocolError, Reason
from device_sdk.protocol.transfer.lz import check_declared_size

MAGIC = b"TD"
VERSION = 1
HEADER = struct.Struct("<2sBBII")  # magic, version, flags, base size, target size
COPY, ADD, INSERT = 0, 1, 2
BASE_PIECE = 128  # bytes of base read at a time: the size of the C scratch buffer
MAX_OP_HEAD = 10  # two LEB128 values of at most 5 bytes each
_KEY = 8  # bytes per hashed block when looking for matches
_MERGE_COPY = 24  # a shorter copy between two differences of one alignment joins the ADD

BaseReader = Callable[[int, int], bytes]
"""Read ``length`` bytes of the base model at ``offset`` (fewer only past its end)."""

Op = tuple[int, int, int, int]  # kind, target offset, length, base offset (-1 for INSERT)


def _keys(data: bytes) -> np.ndarray:
    """Return the 8-byte block starting at each position as one uint64 (empty if too short)."""
    if len(data) < _KEY:
        return np.zeros(0, dtype=np.uint64)
    a = np.frombuffer(data, dtype=np.uint8)
    windows = np.lib.stride_tricks.sliding_window_view(a, _KEY)
    return np.ascontiguousarray(windows).view("<u8").ravel()


def _common(a: bytes, ai: int, b: bytes, bi: int, limit: int) -> int:
    """Return how many bytes from ``a[ai:]`` equal ``b[bi:]``, up to ``limit``."""
    n, step = 0, 16
    while n < limit:
        s = min(step, limit - n)
        if a[ai + n : ai + n + s] == b[bi + n : bi + n + s]:
            n += s
            step <<= 1
        elif s == 1:
            break
        else:
            step = max(1, s >> 1)
    return n


def _matches(base: bytes, target: bytes) -> list[tuple[int, int, int]]:
    """Find exact matches ``(target offset, length, base offset - target offset)``."""
    bkeys, tkeys = _keys(base), _keys(target)
    if not len(bkeys) or not len(tkeys):
        return []
    order = np.argsort(bkeys, kind="stable")
    sorted_keys = bkeys[order]
    idx = np.minimum(np.searchsorted(sorted_keys, tkeys), len(sorted_keys) - 1)
    found = sorted_keys[idx] == tkeys
    cand = np.where(found, order[idx], -1).tolist()
    starts = np.flatnonzero(found).tolist()
    nb, nt = len(base), len(target)
    out: list[tuple[int, int, int]] = []
    i, diag = 0, 0
    while True:
        k = bisect_left(starts, i)
        if k == len(starts):
            return out
        i = starts[k]
        # Staying on the current alignment keeps offsets and later ADDs cheap.
        j = i + diag
        if not (j + _KEY <= nb and target[i : i + _KEY] == base[j : j + _KEY]):
            diag = cand[i] - i
            j = i + diag
        length = _common(target, i, base, j, min(nt - i, nb - j))
        out.append((i, length, diag))
        i += length


def _score(target: bytes, base: bytes, start: int, end: int, diag: int) -> np.ndarray | None:
    """Return +1 per byte of ``target[start:end]`` close to its base byte on ``diag``, else -1."""
    if start + diag < 0 or end + diag > len(base) or end <= start:
        return None
    t = np.frombuffer(target, dtype=np.uint8, count=end - start, offset=start)
    b = np.frombuffer(base, dtype=np.uint8, count=end - start, offset=start + diag)
    d = (t.astype(np.int16) - b.astype(np.int16) + 128) % 256 - 128
    return np.where(np.abs(d) <= 2, 1, -1)


def _fill_gap(
    ops: list[Op], target: bytes, base: bytes, a: int, b: int, before: int | None, after: int | None
) -> None:
    """Cover ``target[a:b]``: extend the neighbouring alignments as ADDs, INSERT the rest.

    As in bsdiff, the ADD from the left covers ``[a, a + lf)`` and the one from the right
    ``[a + ls, b)``, with ``lf <= ls`` chosen to maximise close bytes minus distant ones.
    """
    n = b - a
    fwd = _score(target, base, a, b, before) if before is not None else None
    bwd = _score(target, base, a, b, after) if after is not None else None
    gain_f = np.zeros(n + 1, dtype=np.int64)
    gain_b = np.zeros(n + 1, dtype=np.int64)
    if fwd is not None:
        gain_f[1:] = np.cumsum(fwd)
    if bwd is not None:
        gain_b[:-1] = np.cumsum(bwd[::-1])[::-1]
    total = np.maximum.accumulate(gain_f) + gain_b
    ls = n - int(np.argmax(total[::-1]))  # the last best split: no ADD where nothing is gained
    lf = int(np.argmax(gain_f[: ls + 1]))
    if lf:
        assert before is not None
        ops.append((ADD, a, lf, a + before))
    if ls > lf:
        ops.append((INSERT, a + lf, ls - lf, -1))
    if ls < n:
        assert after is not None
        ops.append((ADD, a + ls, n - ls, a + ls + after))


def _merge(ops: list[Op]) -> list[Op]:
    """Join neighbours on one alignment: short COPYs inside ADD runs, and same-kind runs."""
    out: list[Op] = []
    for op in ops:
        kind, t, length, src = op
        if out:
            pk, pt, pl, ps = out[-1]
            aligned = kind != INSERT and pk != INSERT and src - t == ps - pt
            if pk == kind and (kind == INSERT or aligned):
                out[-1] = (kind, pt, pl + length, ps)
                continue
            if aligned and (
                (pk == COPY and pl < _MERGE_COPY) or (kind == COPY and length < _MERGE_COPY)
            ):
                out[-1] = (ADD, pt, pl + length, ps)
                continue
        out.append(op)
    return out


def plan(base: bytes, target: bytes) -> list[Op]:
    """Return the operations that rebuild ``target`` from ``base``, in target order."""
    ops: list[Op] = []
    pos, before = 0, None
    for t, length, diag in _matches(base, target):
        if t > pos:
            _fill_gap(ops, target, base, pos, t, before, diag)
        ops.append((COPY, t, length, t + diag))
        pos, before = t + length, diag
    if pos < len(target):
        _fill_gap(ops, target, base, pos, len(target), before, None)
    return _merge(ops)


def _uvarint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def encode_delta(base: bytes, target: bytes) -> bytes:
    """Return the uncompressed instruction stream that turns ``base`` into ``target``."""
    if len(base) > 0xFFFFFFFF or len(target) > 0xFFFFFFFF:
        raise ValueError("models must be smaller than 4 GiB")
    out = bytearray(HEADER.pack(MAGIC, VERSION, 0, len(base), len(target)))
    cursor = 0
    tview = np.frombuffer(target, dtype=np.uint8)
    bview = np.frombuffer(base, dtype=np.uint8)
    for kind, t, length, src in plan(base, target):
        out += _uvarint((length - 1) << 2 | kind)
        if kind == INSERT:
            out += target[t : t + length]
            continue
        rel = src - cursor
        out += _uvarint(rel << 1 if rel >= 0 else (-rel << 1) - 1)
        cursor = src + length
        if kind == ADD:
            out += (tview[t : t + length] - bview[src : src + length]).tobytes()
    return bytes(out)


def _read_uvarint(buf: bytes | bytearray, i: int) -> tuple[int, int] | None:
    """Return ``(value, next index)``, or None if ``buf`` ends inside the number."""
    value = 0
    for k in range(5):
        if i + k >= len(buf):
            return None
        byte = buf[i + k]
        value |= (byte & 0x7F) << (7 * k)
        if not byte & 0x80:
            if value > 0xFFFFFFFF:
                break
            return value, i + k + 1
    raise ProtocolError(Reason.DECODE_ERROR, "LEB128 number longer than 32 bits")


class DeltaApplier:
    """Turn an instruction stream, pushed in pieces, into the target model's bytes.

    With ``base_sha256`` the base is hashed as soon as the header arrives (DELTA_BASE_MISMATCH
    before any output); with ``expected_size`` the header's target size must equal it.
    """

    def __init__(
        self,
        base_reader: BaseReader,
        base_sha256: bytes | None = None,
        expected_size: int | None = None,
    ) -> None:
        self._read = base_reader
        self._expected_size = expected_size
        self._base_sha256 = base_sha256
        self.base_size = -1
        self.target_size = -1  # from the header, -1 until it arrived
        self.produced = 0
        self._head = bytearray()  # the header, then each operation's head until complete
        self._kind = -1  # operation whose data bytes are being consumed, -1 between operations
        self._left = 0
        self._cursor = 0  # base offset after the previous base read

    @property
    def done(self) -> bool:
        """Return whether the whole target has been produced."""
        return self.produced == self.target_size

    def state_bytes(self) -> int:
        """Return the bytes of state a C interpreter keeps: head buffer, scratch, registers."""
        return max(len(self._head), HEADER.size) + BASE_PIECE + 6 * 4

    def _base(self, offset: int, length: int) -> bytes:
        piece = self._read(offset, length)
        if len(piece) != length:
            raise ProtocolError(Reason.DELTA_BASE_MISMATCH, "base model shorter than the delta")
        return piece

    def _check_base(self) -> None:
        if self._base_sha256 is None:
            return
        digest = hashlib.sha256()
        for offset in range(0, self.base_size, BASE_PIECE):
            digest.update(self._base(offset, min(BASE_PIECE, self.base_size - offset)))
        if digest.digest() != self._base_sha256:
            raise ProtocolError(Reason.DELTA_BASE_MISMATCH, "base model digest differs")

    def feed(self, data: bytes) -> bytes:
        """Consume instruction bytes and return the target bytes they produce."""
        out = bytearray()
        i, n = 0, len(data)
        while i < n:
            if self.target_size < 0:
                take = min(HEADER.size - len(self._head), n - i)
                self._head += data[i : i + take]
                i += take
                if len(self._head) == HEADER.size:
                    magic, version, flags, self.base_size, self.target_size = HEADER.unpack(
                        self._head
                    )
                    if magic != MAGIC or version != VERSION or flags:
                        raise ProtocolError(Reason.DECODE_ERROR, "not a version 1 delta stream")
                    self._head.clear()
                    check_declared_size(self.target_size, self._expected_size)
                    self._check_base()
                continue
            if self._kind < 0:
                if self.done:
                    raise ProtocolError(Reason.DECODE_ERROR, "instructions after the target end")
                i = self._op_head(data, i)
                while self._kind == COPY:  # a COPY reads no input: run it to the end now
                    take = min(self._left, BASE_PIECE)
                    out += self._base(self._cursor, take)
                    self._advance(take)
                continue
            take = min(self._left, n - i)
            if self._kind == INSERT:
                out += data[i : i + take]
            else:  # ADD, in base-sized pieces so the scratch buffer stays BASE_PIECE bytes
                take = min(take, BASE_PIECE)
                base = np.frombuffer(self._base(self._cursor, take), dtype=np.uint8)
                out += (base + np.frombuffer(data, dtype=np.uint8, count=take, offset=i)).tobytes()
            i += take
            self._advance(take)
        return bytes(out)

    def _advance(self, count: int) -> None:
        """Account for ``count`` bytes of the current operation having been produced."""
        if self._kind != INSERT:
            self._cursor += count
        self._left -= count
        self.produced += count
        if not self._left:
            self._kind = -1

    def _op_head(self, data: bytes, i: int) -> int:
        """Buffer an operation head from ``data[i:]``; start the operation once it is whole."""
        while i < len(data):
            self._head.append(data[i])
            i += 1
            parsed = self._parse_head()
            if parsed is not None:
                kind, length, start = parsed
                self._head.clear()
                self._kind, self._left = kind, length
                if kind != INSERT:
                    self._cursor = start
                return i
        return i

    def _parse_head(self) -> tuple[int, int, int] | None:
        """Return ``(kind, length, base start)`` if the buffered head is complete, else None."""
        first = _read_uvarint(self._head, 0)
        if first is None:
            return None
        head, k = first
        kind, length = head & 3, (head >> 2) + 1
        if kind > INSERT:
            raise ProtocolError(Reason.DECODE_ERROR, f"unknown delta operation {kind}")
        if length > self.target_size - self.produced:
            raise ProtocolError(Reason.DECODE_ERROR, "operation runs past the target size")
        if kind == INSERT:
            return kind, length, -1
        second = _read_uvarint(self._head, k)
        if second is None:
            return None
        zz = second[0]
        start = self._cursor + (-((zz + 1) >> 1) if zz & 1 else zz >> 1)
        if start < 0 or start + length > self.base_size:
            raise ProtocolError(Reason.DECODE_ERROR, "base range outside the base model")
        return kind, length, start
