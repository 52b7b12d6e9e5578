"""Pack and unpack columns of non-negative ints by frame of reference, as event batches send them.

A packed column is one byte of bit width ``w`` (0..32), the column's minimum as an unsigned
LEB128 varint (at most five bytes), then each value minus that minimum in ``w`` bits, least
significant bit first, the last byte padded with zero bits. A column does not say how many
values it holds: the reader is told, so columns can be checked alone or back to back in one
byte string. ``check_column`` checks one completely; the unpackers then cannot fail:
``unpack_column`` unpacks one in Python, ``unpack_columns`` many at once with numpy.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from device_sdk.protocol.limits import MAX_PACKED_WIDTH
from device_sdk.protocol.reasons import ProtocolError, Reason

__all__ = [
    "Int64s",
    "PackedColumn",
    "check_column",
    "pack_column",
    "unpack_column",
    "unpack_columns",
]

_MAX_VARINT_BYTES = 5  # a column minimum never exceeds 32 bits

Int64s = npt.NDArray[np.int64]


class PackedColumn(NamedTuple):
    """One checked bit-packed column, as it came on the wire."""

    width: int  # bits per value, 0..32
    base: int  # the column's minimum
    data: bytes  # each value minus ``base`` in ``width`` bits, least significant bit first


def pack_column(values: Sequence[int]) -> bytes:
    """Pack non-negative ints as width byte, LEB128 minimum, then LSB-first bit fields."""
    if not values:
        return b"\x00\x00"
    base = min(values)
    width = (max(values) - base).bit_length()
    out = bytearray([width])
    out += _varint(base)
    acc = bits = 0
    for value in values:
        acc |= (value - base) << bits
        bits += width
        while bits >= 8:
            out.append(acc & 0xFF)
            acc >>= 8
            bits -= 8
    if bits:
        out.append(acc)
    return bytes(out)


def _varint(value: int) -> bytes:
    """Write an unsigned LEB128 varint."""
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def check_column(
    data: bytes, start: int, count: int, field: str, maximum: int, *, whole: bool = False
) -> tuple[PackedColumn, int]:
    """Check the packed column at ``data[start:]``: ``count`` values, each at most ``maximum``.

    Return the column and where it ends. With ``whole``, the column must end exactly at the end
    of ``data`` (a byte string holding one column); otherwise more bytes may follow (the next
    column). Every inconsistency inside a column (a width past 32 bits, a varint running off
    the end, too few bytes for ``count`` values, stray padding bits) is VALUE_OUT_OF_RANGE: it
    is how columns of unequal length show up once they are packed.
    """
    if start >= len(data):
        raise ProtocolError(Reason.VALUE_OUT_OF_RANGE, f"{field}: empty column")
    width = data[start]
    if width > MAX_PACKED_WIDTH:
        raise ProtocolError(Reason.VALUE_OUT_OF_RANGE, f"{field}: width {width} bits")
    base, first = _read_varint(data, start + 1, field)
    if base > maximum:
        raise ProtocolError(Reason.VALUE_OUT_OF_RANGE, f"{field}: minimum {base} > {maximum}")
    bits = count * width
    need, have = (bits + 7) // 8, len(data) - first
    if have < need or (whole and have != need):
        raise ProtocolError(
            Reason.VALUE_OUT_OF_RANGE,
            f"{field}: {count} values of {width} bits take {need} bytes, not {have}",
        )
    end = first + need
    packed = PackedColumn(width, base, data[first:end])
    if bits % 8 and packed.data[-1] >> (bits % 8):
        raise ProtocolError(Reason.VALUE_OUT_OF_RANGE, f"{field}: padding bits are not zero")
    # Only a width that could reach past ``maximum`` needs the values looked at.
    if (count and base + (1 << width) - 1 > maximum
            and (base + max(packed.data) if width == 8  # a byte a value: no list needed
                 else max(unpack_column(packed, count))) > maximum):
        raise ProtocolError(Reason.VALUE_OUT_OF_RANGE, f"{field}: value > {maximum}")
    return packed, end


def unpack_column(column: PackedColumn, count: int) -> list[int]:
    """Unpack ``count`` values of a checked column, in Python (one column at a time)."""
    width, base, data = column
    if not width:
        return [base] * count
    if width == 8:
        return [base + v for v in data] if base else list(data)
    # A run of 64 fields as one integer, then a shift and mask per field: big-int work in C
    # instead of a slice and an int.from_bytes per value. Runs of 64 fields start on a byte
    # boundary (64 * width bits) and keep each shift short, so the cost stays linear.
    mask = (1 << width) - 1
    run = 8 * width  # bytes of 64 fields
    bits = count * width
    values: list[int] = []
    for first in range(0, len(data), run):
        whole = int.from_bytes(data[first:first + run], "little")
        end = min(64 * width, bits - 8 * first)
        values += [base + (whole >> shift & mask) for shift in range(0, end, width)]
    return values


def unpack_columns(columns: Sequence[PackedColumn], counts: Int64s) -> Int64s:
    """Unpack many checked columns (``counts[i]`` values in ``columns[i]``) into one array.

    Every value is read as the unaligned little-endian 64-bit word at its first byte, shifted
    by its bit offset in that byte (0..7) and masked to its width: 7 + 32 bits fit a word.
    """
    widths = np.array([c.width for c in columns], dtype=np.uint64)
    sizes = np.array([len(c.data) for c in columns], dtype=np.uint64)
    data = b"".join([c.data for c in columns]) + bytes(8)  # room for the last word
    words = np.ndarray((len(data) - 7,), dtype="<u8", buffer=data, strides=(1,))
    width = np.repeat(widths, counts)
    first = np.repeat((np.cumsum(counts) - counts).astype(np.uint64), counts)
    within = np.arange(len(width), dtype=np.uint64) - first  # index inside its column
    bit = np.repeat((np.cumsum(sizes) - sizes) * np.uint64(8), counts) + within * width
    # np.take: several times faster than fancy indexing on an unaligned view.
    values = np.take(words, bit >> np.uint64(3)) >> (bit & np.uint64(7))
    values &= (np.uint64(1) << width) - np.uint64(1)
    bases = np.repeat(np.array([c.base for c in columns], dtype=np.int64), counts)
    return values.astype(np.int64) + bases


def _read_varint(data: bytes, pos: int, field: str) -> tuple[int, int]:
    """Read an unsigned LEB128 varint of at most five bytes at ``pos``; return it and the end."""
    value = 0
    for index in range(_MAX_VARINT_BYTES):
        if pos + index >= len(data):
            raise ProtocolError(Reason.VALUE_OUT_OF_RANGE, f"{field}: truncated varint")
        byte = data[pos + index]
        value |= (byte & 0x7F) << (7 * index)
        if byte < 0x80:
            return value, pos + index + 1
    raise ProtocolError(Reason.VALUE_OUT_OF_RANGE, f"{field}: varint longer than 5 bytes")
