"""Encode with the adaptive binary range coder of the compressed transfer format.

This is LZMA's range coder (TRANSFER.md, "Range coder"): 11-bit probabilities that
adapt by 1/32 of the distance to certainty, a 32-bit range, carry propagation through
a cache byte. Only the encoder lives here; the decoder is inlined into
:class:`~device_sdk.protocol.transfer.lz.LzDecoder` because per-bit calls dominate its
cost in Python.
"""

from __future__ import annotations

PROB_BITS = 11
PROB_ONE = 1 << PROB_BITS
PROB_INIT = PROB_ONE >> 1  # probability 0.5
MOVE_BITS = 5
TOP = 1 << 24
MASK32 = 0xFFFFFFFF


class RangeEncoder:
    """Turn a sequence of (probability model, bit) decisions into bytes."""

    __slots__ = ("_cache", "_cache_size", "_low", "_range", "out")

    def __init__(self) -> None:
        self._low = 0
        self._range = MASK32
        self._cache = 0
        self._cache_size = 1
        self.out = bytearray()

    def _shift_low(self) -> None:
        low = self._low
        if low < 0xFF000000 or low > MASK32:
            carry = low >> 32
            temp = self._cache
            out = self.out
            while True:
                out.append((temp + carry) & 0xFF)
                temp = 0xFF
                self._cache_size -= 1
                if self._cache_size == 0:
                    break
            self._cache = (low >> 24) & 0xFF
        self._cache_size += 1
        self._low = (low & 0x00FFFFFF) << 8

    def bit(self, probs: list[int], index: int, bit: int) -> None:
        """Encode ``bit`` with the adaptive probability ``probs[index]`` and update it."""
        p = probs[index]
        bound = (self._range >> PROB_BITS) * p
        if bit:
            self._low += bound
            self._range -= bound
            probs[index] = p - (p >> MOVE_BITS)
        else:
            self._range = bound
            probs[index] = p + ((PROB_ONE - p) >> MOVE_BITS)
        while self._range < TOP:
            self._range <<= 8
            self._shift_low()

    def tree(self, probs: list[int], nbits: int, value: int) -> None:
        """Encode ``value`` most significant bit first through a bit tree of ``nbits`` levels."""
        # Same arithmetic as bit(), on locals: literals make this the encoder's hot loop.
        low, rng = self._low, self._range
        m = 1
        for shift in range(nbits - 1, -1, -1):
            b = (value >> shift) & 1
            p = probs[m]
            bound = (rng >> PROB_BITS) * p
            if b:
                low += bound
                rng -= bound
                probs[m] = p - (p >> MOVE_BITS)
            else:
                rng = bound
                probs[m] = p + ((PROB_ONE - p) >> MOVE_BITS)
            while rng < TOP:
                rng <<= 8
                self._low = low
                self._shift_low()
                low = self._low
            m = (m << 1) | b
        self._low, self._range = low, rng

    def finish(self) -> bytes:
        """Flush the coder state and return the complete byte stream."""
        for _ in range(5):
            self._shift_low()
        return bytes(self.out)
