"""Stream-decompress transfer encoding 1 ("TZ") in bounded memory (TRANSFER.md).

The decoder keeps the sliding window in RAM, reads each input byte once, and never stops
inside a token, so the C port can follow it statement by statement.
"""

from __future__ import annotations

from device_sdk.protocol.reasons import ProtocolError, Reason
from device_sdk.protocol.transfer.lz import (
    DIST_LOW_BITS,
    HEADER,
    MAGIC,
    MIN_MATCH,
    REGISTER_BYTES,
    TOKEN_LOOKAHEAD,
    VERSION,
    LzParams,
    Models,
    check_declared_size,
)
from device_sdk.protocol.transfer.rangecoder import MASK32, MOVE_BITS, PROB_BITS, PROB_ONE, TOP


class LzDecoder:
    """Decompress a stream pushed in chunks of any size, in bounded memory.

    ``feed`` returns the bytes decoded so far; pass ``final=True`` with the last chunk
    (the caller knows the stream's length from the manifest). With ``expected_size`` a header
    declaring another decoded size is refused at once (see ``check_declared_size``). A token is decoded only
    when :data:`TOKEN_LOOKAHEAD` input bytes are buffered or the input is final, so the
    decoder never stops mid-token and keeps fewer than that many input bytes between calls.
    """

    def __init__(self, expected_size: int | None = None, max_size: int | None = None) -> None:
        self.expected_size = expected_size  # refuse a header declaring another size
        self.max_size = max_size  # refuse a header declaring more (TRANSFER_OVERFLOW)
        self.params: LzParams | None = None
        self.size = -1  # decoded size from the header, -1 until the header arrived
        self.produced = 0
        self.finished = False
        self._pending = b""
        self._window = bytearray()
        self._models: Models | None = None
        self._range = MASK32
        self._code = 0
        self._started = False
        self._kind = 0
        self._rep = 1
        self._prev = 0

    def state_bytes(self) -> int:
        """Return the bytes of state held now: window, probabilities, buffered input, registers."""
        probs = self.params.prob_count() if self.params else 0
        return len(self._window) + 2 * probs + len(self._pending) + REGISTER_BYTES

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
            check_declared_size(size, self.expected_size)
            if self.max_size is not None and size > self.max_size:
                raise ProtocolError(Reason.TRANSFER_OVERFLOW,
                                    f"stream declares {size} bytes, at most {self.max_size}")
            self.params = LzParams.unpack(packed)
            self.size = size
            self._window = bytearray(1 << self.params.window_log)
            self._models = Models(self.params)
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

    def match(self, m: Models, params: LzParams, kind: int, rep: int) -> tuple[int, int]:
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
