"""The fan-out cipher: a stream over a package's chunks gives exactly :func:`crypt`'s bytes."""

from __future__ import annotations

import os
import random

import pytest

from device_sdk.protocol.fanout import FanoutCipher, crypt

KEY = bytes(range(16))


def test_a_stream_in_order_gaps_repeats_and_odd_offsets_matches_crypt() -> None:
    rng = random.Random(5)
    plain = os.urandom(20_000)
    cipher = FanoutCipher(KEY, 7)
    # In order (whole and partial AES blocks), a repeat, a step back, a gap, then at random.
    pieces = [(0, 2048), (2048, 2048), (4096, 17), (4113, 15), (4128, 16), (4096, 100),
              (3, 5), (10_000, 2048), (12_048, 1), (12_049, 31)]
    pieces += [(rng.randrange(19_000), rng.choice([1, 15, 16, 17, 2048])) for _ in range(40)]
    for offset, size in pieces:
        data = plain[offset:offset + size]
        assert cipher.crypt(offset, data) == crypt(KEY, 7, offset, data), (offset, size)


def test_a_contiguous_chunk_goes_on_with_the_same_stream() -> None:
    cipher = FanoutCipher(KEY, 7)
    cipher.crypt(0, bytes(2048))
    stream = cipher._stream
    cipher.crypt(2048, bytes(2048))
    assert cipher._stream is stream  # one AES context for a wave in order
    cipher.crypt(0, bytes(16))
    assert cipher._stream is not stream


def test_contiguous_chunks_decrypt_to_the_plaintext() -> None:
    plain = os.urandom(8192 + 7)
    sent = [(o, crypt(KEY, 3, o, plain[o:o + 1000])) for o in range(0, len(plain), 1000)]
    cipher = FanoutCipher(KEY, 3)
    assert b"".join(cipher.crypt(o, c) for o, c in sent) == plain
    assert FanoutCipher(KEY, 4).crypt(0, sent[0][1]) != plain[:1000]  # the package is in the key stream


def test_a_key_of_the_wrong_size_is_refused() -> None:
    with pytest.raises(ValueError):
        FanoutCipher(bytes(15), 1)
