"""Compress and stream-decompress transfer encoding 1 ("TZ": LZ77 + adaptive range coding).

The byte format is specified in ``device_sdk/protocol/TRANSFER.md``. In short: an 8-byte
header (``b"TZ"``, version, parameters, decoded size), then one range-coded stream of
tokens, each a literal byte or a match (distance, length) into a sliding window of the
last ``2**window_log`` decoded bytes. The decoder keeps that window in RAM, so it works
the same whether its output goes to flash (encoding 1) or to the delta interpreter
(encoding 2), and never reads its own output back.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

from device_sdk.protocol.reasons import ProtocolError, Reason
from device_sdk.protocol.transfer.rangecoder import (
    MASK32,
    MOVE_BITS,
    PROB_BITS,
    PROB_INIT,
    PROB_ONE,
    TOP,
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
# Bits decoded per token are at most 1 + 1 + 11 + 2 + 8 = 23 and each bit reads at most one
# byte, so a token never needs more input than this. Wire-level constant for decoders.
TOKEN_LOOKAHEAD = 32
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
        return (1 << self.window_log) + 2 * self.prob_count() + TOKEN_LOOKAHEAD + 32


STATE_BUDGET = 3584  # leaves room in the 4 KB device budget for the delta interpreter


class _Models:
    """Hold the adaptive probabilities shared by encoder and decoder."""

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
    models = _Models(params)
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


class LzDecoder:
    """Decompress a stream pushed in chunks of any size, in bounded memory.

    ``feed`` returns the bytes decoded so far; pass ``final=True`` with the last chunk
    (the caller knows the stream's length from the manifest). A token is decoded only
    when :data:`TOKEN_LOOKAHEAD` input bytes are buffered or the input is final, so the
    decoder never stops mid-token and keeps fewer than that many input bytes between calls.
    """

    def __init__(self) -> None:
        self.params: LzParams | None = None
        self.size = -1  # decoded size from the header, -1 until the header arrived
        self.produced = 0
        self.finished = False
        self._pending = b""
        self._window = bytearray()
        self._models: _Models | None = None
        self._range = MASK32
        self._code = 0
        self._started = False
        self._kind = 0
        self._rep = 1
        self._prev = 0

    def state_bytes(self) -> int:
        """Return the bytes of state a C decoder would keep (window, models, lookahead)."""
        fixed = self.params.state_bytes() if self.params else HEADER.size + 32
        return fixed + len(self._pending) - (TOKEN_LOOKAHEAD if self.params else 0)

    def feed(self, data: bytes, final: bool = False) -> bytes:
        """Consume ``data`` and return the newly decoded bytes."""
        buf = self._pending + data
        ip = 0
        if self.params is None:
            if len(buf) < HEADER.size:
                if final:
                    raise ProtocolError(Reason.DECODE_ERROR, "stream shorter than its header")
                self._pending = buf
                return b""
            magic, version, packed, size = HEADER.unpack_from(buf)
            if magic != MAGIC or version != VERSION:
                raise ProtocolError(Reason.DECODE_ERROR, "not a version 1 compressed stream")
            self.params = LzParams.unpack(packed)
            self.size = size
            self._window = bytearray(1 << self.params.window_log)
            self._models = _Models(self.params)
            ip = HEADER.size
        if not self._started:
            if len(buf) - ip < 5:
                if final:
                    raise ProtocolError(Reason.DECODE_ERROR, "stream ends inside its header")
                self._pending = buf[ip:]
                return b""
            if buf[ip] != 0:
                raise ProtocolError(Reason.DECODE_ERROR, "range coder must start with 0x00")
            self._code = int.from_bytes(buf[ip + 1 : ip + 5], "big")
            if self._code == MASK32:
                raise ProtocolError(Reason.DECODE_ERROR, "range coder start value out of range")
            ip += 5
            self._started = True
        try:
            out, ip = self._tokens(buf, ip, final)
        except IndexError:
            raise ProtocolError(Reason.DECODE_ERROR, "stream ends inside a token") from None
        if self.produced == self.size and not self.finished:
            # The encoder's flush leaves exactly the bytes that make the final code zero.
            if self._range < TOP:
                if ip >= len(buf):
                    if final:
                        raise ProtocolError(Reason.DECODE_ERROR, "stream ends before its flush")
                    self._pending = buf[ip:]
                    return bytes(out)
                self._code = ((self._code << 8) | buf[ip]) & MASK32
                ip += 1
            if self._code != 0:
                raise ProtocolError(Reason.DECODE_ERROR, "range coder did not end at zero")
            self.finished = True
        if self.finished and ip < len(buf):
            raise ProtocolError(Reason.DECODE_ERROR, "bytes after the end of the stream")
        if final and not self.finished:
            raise ProtocolError(Reason.DECODE_ERROR, "stream ended before its decoded size")
        self._pending = buf[ip:]
        return bytes(out)

    def _tokens(self, buf: bytes, ip: int, final: bool) -> tuple[bytearray, int]:
        """Decode whole tokens from ``buf[ip:]`` while enough input is buffered."""
        assert self.params is not None and self._models is not None
        m = self._models
        params = self.params
        window = self._window
        wmask = len(window) - 1
        pmask = (1 << params.lp) - 1
        lp, lc = params.lp, params.lc
        lc_shift = 8 - lc
        size = self.size
        pos, kind, rep, prev = self.produced, self._kind, self._rep, self._prev
        rng, code = self._range, self._code
        out = bytearray()
        stop = len(buf) if final else len(buf) - TOKEN_LOOKAHEAD
        is_match, literal = m.is_match, m.literal
        # Literals dominate and run on plain locals; the rarer matches go through _Bits.
        while pos < size and ip <= stop:
            v = (kind << lp) | (pos & pmask)
            if rng < TOP:
                rng <<= 8
                code = ((code << 8) | buf[ip]) & MASK32
                ip += 1
            p = is_match[v]
            bound = (rng >> PROB_BITS) * p
            if code < bound:
                rng = bound
                is_match[v] = p + ((PROB_ONE - p) >> MOVE_BITS)
                probs = literal[((pos & pmask) << lc) | (prev >> lc_shift)]
                v = 1
                while v < 256:
                    if rng < TOP:
                        rng <<= 8
                        code = ((code << 8) | buf[ip]) & MASK32
                        ip += 1
                    p = probs[v]
                    bound = (rng >> PROB_BITS) * p
                    if code < bound:
                        rng = bound
                        probs[v] = p + ((PROB_ONE - p) >> MOVE_BITS)
                        v <<= 1
                    else:
                        rng -= bound
                        code -= bound
                        probs[v] = p - (p >> MOVE_BITS)
                        v = (v << 1) | 1
                prev = v - 256
                window[pos & wmask] = prev
                out.append(prev)
                pos += 1
                kind = 0
                continue
            rng -= bound
            code -= bound
            is_match[v] = p - (p >> MOVE_BITS)
            bits = _Bits(buf, ip, rng, code)
            rep, length = bits.match(m, params, kind, rep)
            ip, rng, code = bits.ip, bits.rng, bits.code
            if rep > pos:
                raise ProtocolError(Reason.DECODE_ERROR, "match distance before the start")
            if length > size - pos:
                raise ProtocolError(Reason.DECODE_ERROR, "match runs past the decoded size")
            piece = _ring_read(window, pos - rep, min(rep, length))
            if rep < length:  # overlapping copy: the last `rep` bytes repeat
                piece = (piece * (length // rep + 1))[:length]
            _ring_write(window, pos, piece)
            out += piece
            pos += length
            prev, kind = piece[-1], 1
        self.produced, self._kind, self._rep, self._prev = pos, kind, rep, prev
        self._range, self._code = rng, code
        return out, ip


class _Bits:
    """Range decoder registers for the match path (the literal path inlines its own copy)."""

    __slots__ = ("buf", "code", "ip", "rng")

    def __init__(self, buf: bytes, ip: int, rng: int, code: int) -> None:
        self.buf, self.ip, self.rng, self.code = buf, ip, rng, code

    def bit(self, probs: list[int], i: int) -> int:
        """Decode one bit with the adaptive probability ``probs[i]`` and update it."""
        if self.rng < TOP:
            self.rng <<= 8
            self.code = ((self.code << 8) | self.buf[self.ip]) & MASK32
            self.ip += 1
        p = probs[i]
        bound = (self.rng >> PROB_BITS) * p
        if self.code < bound:
            self.rng = bound
            probs[i] = p + ((PROB_ONE - p) >> MOVE_BITS)
            return 0
        self.rng -= bound
        self.code -= bound
        probs[i] = p - (p >> MOVE_BITS)
        return 1

    def tree(self, probs: list[int], nbits: int) -> int:
        """Decode an ``nbits``-bit value, most significant bit first, through a bit tree."""
        v = 1
        for _ in range(nbits):
            v = (v << 1) | self.bit(probs, v)
        return v - (1 << nbits)

    def match(self, m: _Models, params: LzParams, kind: int, rep: int) -> tuple[int, int]:
        """Decode the rest of a match token; return its distance and length."""
        if not self.bit(m.is_rep, kind):
            high = self.tree(m.dist_high, params.window_log - DIST_LOW_BITS)
            rep = (high << DIST_LOW_BITS) + self.tree(m.dist_low, DIST_LOW_BITS) + 1
        if not self.bit(m.len_choice, 0):
            return rep, MIN_MATCH + self.tree(m.len_low, 3)
        if not self.bit(m.len_choice, 1):
            return rep, MIN_MATCH + 8 + self.tree(m.len_mid, 3)
        return rep, MIN_MATCH + 16 + self.tree(m.len_high, 8)


def _ring_read(window: bytearray, start: int, length: int) -> bytes:
    """Return ``length`` bytes of the ring buffer from absolute position ``start``."""
    i = start & (len(window) - 1)
    if i + length <= len(window):
        return bytes(window[i : i + length])
    return bytes(window[i:] + window[: i + length - len(window)])


def _ring_write(window: bytearray, start: int, piece: bytes) -> None:
    """Store ``piece`` in the ring buffer from absolute position ``start``, keeping the last
    ``len(window)`` bytes when the piece is longer."""
    size = len(window)
    if len(piece) > size:
        start += len(piece) - size
        piece = piece[-size:]
    i = start & (size - 1)
    first = min(len(piece), size - i)
    window[i : i + first] = piece[:first]
    window[: len(piece) - first] = piece[first:]


def decompress(data: bytes) -> bytes:
    """Decode a complete compressed stream (a convenience for servers and tests)."""
    return LzDecoder().feed(data, final=True)
