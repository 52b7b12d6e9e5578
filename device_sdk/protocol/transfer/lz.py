"""Compress with transfer encoding 1 ("TZ": LZ77 + adaptive range coding); parameters.

The byte format is specified in ``device_sdk/protocol/TRANSFER.md``. In short: an 8-byte
header (``b"TZ"``, version, parameters, decoded size), then one range-coded stream of
tokens, each a literal byte or a match (distance, length) into a sliding window of the
last ``2**window_log`` decoded bytes. The decoder keeps that window in RAM, so it works
the same whether its output goes to flash (encoding 1) or to the delta interpreter
(encoding 2), and never reads its own output back. The decoder is in ``lz_decoder``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

from device_sdk.protocol.reasons import ProtocolError, Reason
from device_sdk.protocol.transfer.rangecoder import (
    MASK32,
    PROB_INIT,
    RangeEncoder,
)

MAGIC = b"TZ"
VERSION = 1
HEADER = struct.Struct("<2sBBI")  # magic, version, params, decoded size
MIN_MATCH = 2
MAX_MATCH = MIN_MATCH + 8 + 8 + 256 - 1  # low, mid and high length trees: 273
DIST_LOW_BITS = 6
MIN_WINDOW_LOG = 8
MAX_WINDOW_LOG = 11  # this decoder's window buffer: 2 KB of its 4 KB budget
DEFAULT_WINDOW_LOG = 11
DEFAULT_LC = 0  # literal context bits from the previous byte
DEFAULT_LP = 0  # literal context bits from the output position; 2 gains 0.1% for 1.5 KB RAM
# A token decodes at most 1 + 1 + 15 + 2 + 8 = 27 bits (window_log <= 15) and each bit reads at
# most one byte, so a token never needs more input than this.
TOKEN_LOOKAHEAD = 32
REGISTER_BYTES = 32  # range, code, position, size, distance, flags: generous for C
_CHAIN_DEPTH = 24


@dataclass(frozen=True)
class LzParams:
    """The tunable parameters carried in a compressed stream's header."""

    window_log: int = DEFAULT_WINDOW_LOG
    lc: int = DEFAULT_LC
    lp: int = DEFAULT_LP

    def pack(self) -> int:
        """Return the header's parameter byte."""
        return (self.window_log - MIN_WINDOW_LOG) | (self.lp << 3) | (self.lc << 5)

    @classmethod
    def unpack(cls, byte: int) -> LzParams:
        """Read the header's parameter byte, refusing what this decoder cannot hold in RAM."""
        params = cls(window_log=(byte & 7) + MIN_WINDOW_LOG, lp=(byte >> 3) & 3, lc=byte >> 5)
        if byte >> 7 or params.window_log > MAX_WINDOW_LOG or params.lp > 2 or params.lc > 3:
            raise ProtocolError(Reason.DECODE_ERROR, f"unsupported parameters 0x{byte:02x}")
        if params.state_bytes() > STATE_BUDGET:
            raise ProtocolError(Reason.DECODE_ERROR, "parameters exceed the decoder's RAM budget")
        return params

    def literal_contexts(self) -> int:
        """Return how many 256-entry literal probability tables the parameters need."""
        return 1 << (self.lc + self.lp)

    def prob_count(self) -> int:
        """Return the number of 16-bit probabilities a decoder keeps."""
        is_match = 2 << self.lp
        is_rep = 2
        length = 2 + 8 + 8 + 256
        dist = (1 << (self.window_log - DIST_LOW_BITS)) + (1 << DIST_LOW_BITS)
        return is_match + is_rep + length + dist + 256 * self.literal_contexts()

    def state_bytes(self) -> int:
        """Return the RAM a C decoder needs: window, probabilities, lookahead, registers."""
        return (1 << self.window_log) + 2 * self.prob_count() + TOKEN_LOOKAHEAD + REGISTER_BYTES


def check_declared_size(declared: int, expected: int | None) -> None:
    """Compare the model size a stream header declares with the manifest's.

    Larger is TRANSFER_OVERFLOW (it would write past the declared model), smaller is
    DECODE_ERROR; ``expected`` None skips the check.
    """
    if expected is None or declared == expected:
        return
    if declared > expected:
        raise ProtocolError(Reason.TRANSFER_OVERFLOW, f"stream declares {declared} bytes")
    raise ProtocolError(Reason.DECODE_ERROR, f"stream declares {declared} of {expected} bytes")


STATE_BUDGET = 3584  # leaves room in the 4 KB device budget for the delta interpreter


class Models:
    """Hold the adaptive probabilities, laid out as TRANSFER.md's "Models" table."""

    def __init__(self, params: LzParams) -> None:
        self.is_match = [PROB_INIT] * (2 << params.lp)
        self.is_rep = [PROB_INIT] * 2
        self.literal = [[PROB_INIT] * 256 for _ in range(params.literal_contexts())]
        self.len_choice = [PROB_INIT] * 2
        self.len_low = [PROB_INIT] * 8
        self.len_mid = [PROB_INIT] * 8
        self.len_high = [PROB_INIT] * 256
        self.dist_high = [PROB_INIT] * (1 << (params.window_log - DIST_LOW_BITS))
        self.dist_low = [PROB_INIT] * (1 << DIST_LOW_BITS)


def _common_length(data: bytes, a: int, b: int, limit: int) -> int:
    """Return how many bytes from ``data[a:]`` equal ``data[b:]``, up to ``limit``."""
    n = 0
    step = 8
    while n < limit:
        s = min(step, limit - n)
        if data[a + n : a + n + s] == data[b + n : b + n + s]:
            n += s
            step <<= 1
        elif s == 1:
            break
        else:
            step = max(1, s >> 1)
    return n


def _chains(data: bytes) -> list[int]:
    """Return, per position, the previous position starting with the same three bytes (or -1)."""
    n = len(data)
    if n < 3:
        return [-1] * n
    a = np.frombuffer(data, dtype=np.uint8).astype(np.uint32)
    keys = a[:-2] | (a[1:-1] << 8) | (a[2:] << 16)
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    prev = np.full(n, -1, dtype=np.int64)
    same = sorted_keys[1:] == sorted_keys[:-1]
    prev[order[1:][same]] = order[:-1][same]
    return prev.tolist()


def _parse(data: bytes, window: int) -> list[tuple[int, int]]:
    """Split ``data`` into tokens: ``(0, byte)`` literals and ``(length, distance)`` matches."""
    n = len(data)
    prev = _chains(data)
    tokens: list[tuple[int, int]] = []
    rep = 1
    i = 0

    def best_match(pos: int) -> tuple[int, int]:
        limit = min(MAX_MATCH, n - pos)
        best_len, best_dist = 0, 0
        j = prev[pos] if pos < n - 2 else -1
        depth = _CHAIN_DEPTH
        while j >= 0 and pos - j <= window and depth:
            depth -= 1
            if data[j + best_len : j + best_len + 1] == data[pos + best_len : pos + best_len + 1]:
                length = _common_length(data, pos, j, limit)
                if length > best_len:
                    best_len, best_dist = length, pos - j
                    if length == limit:
                        break
            j = prev[j]
        return best_len, best_dist

    while i < n:
        limit = min(MAX_MATCH, n - i)
        rep_len = 0
        if rep <= i and data[i : i + 2] == data[i - rep : i - rep + 2]:
            rep_len = _common_length(data, i, i - rep, limit)
        length, dist = best_match(i)
        # A new distance costs about 11 bits more than a repeat: prefer the repeat unless
        # the new match is clearly longer, and do not spend a match on fewer than 3 bytes.
        if rep_len >= MIN_MATCH and rep_len + 1 >= length:
            length, dist = rep_len, rep
        elif length < 3:
            length = 0
        elif i + 1 < n and length < 32:
            # Lazy step: a literal now and a longer match next is usually cheaper.
            next_len, _ = best_match(i + 1)
            if next_len > length + 1:
                length = 0
        if length:
            tokens.append((length, dist))
            rep = dist
            i += length
        else:
            tokens.append((0, data[i]))
            i += 1
    return tokens


def compress(data: bytes, params: LzParams | None = None) -> bytes:
    """Return ``data`` as a compressed stream (header and range-coded body)."""
    params = params or LzParams()
    if len(data) > MASK32:
        raise ValueError("data too large for a 32-bit size")
    if not MIN_WINDOW_LOG <= params.window_log <= MAX_WINDOW_LOG:
        raise ValueError(f"window_log must be in {MIN_WINDOW_LOG}..{MAX_WINDOW_LOG}")
    if params.state_bytes() > STATE_BUDGET or params.lp > 2 or params.lc > 3:
        raise ValueError("parameters exceed the decoder's RAM budget")
    models = Models(params)
    enc = RangeEncoder()
    bit, tree = enc.bit, enc.tree
    pmask = (1 << params.lp) - 1
    lc_shift = 8 - params.lc
    high_bits = params.window_log - DIST_LOW_BITS
    pos, prev_byte, kind, rep = 0, 0, 0, 1
    for length, value in _parse(data, 1 << params.window_log):
        state = (kind << params.lp) | (pos & pmask)
        if length == 0:
            bit(models.is_match, state, 0)
            ctx = ((pos & pmask) << params.lc) | (prev_byte >> lc_shift)
            tree(models.literal[ctx], 8, value)
            prev_byte, kind, pos = value, 0, pos + 1
            continue
        bit(models.is_match, state, 1)
        if value == rep:
            bit(models.is_rep, kind, 1)
        else:
            bit(models.is_rep, kind, 0)
            tree(models.dist_high, high_bits, (value - 1) >> DIST_LOW_BITS)
            tree(models.dist_low, DIST_LOW_BITS, (value - 1) & ((1 << DIST_LOW_BITS) - 1))
            rep = value
        v = length - MIN_MATCH
        if v < 8:
            bit(models.len_choice, 0, 0)
            tree(models.len_low, 3, v)
        elif v < 16:
            bit(models.len_choice, 0, 1)
            bit(models.len_choice, 1, 0)
            tree(models.len_mid, 3, v - 8)
        else:
            bit(models.len_choice, 0, 1)
            bit(models.len_choice, 1, 1)
            tree(models.len_high, 8, v - 16)
        pos += length
        prev_byte, kind = data[pos - 1], 1
    header = HEADER.pack(MAGIC, VERSION, params.pack(), len(data))
    return header + enc.finish()
