"""Encrypt a package's fan-out so that only devices offered the package can read it.

Every device of a wave may sit on ``fleet/v1/pkg/{pkg}/c``, but the chunks there are
encrypted with the package's fan-out key, which the server sends only to the devices it
offers the package, on their own ``ota/key`` topic (``[pkg, key]``, CDDL.md) just before the
offer. AES-128 in counter mode, keystream position = byte offset in the transfer stream:

    counter block of byte ``offset`` = pkg (8 bytes, big-endian) || offset // 16 (8 bytes)

so a chunk is encrypted and decrypted on its own, at any offset, and costs no byte on the wire
(integrity stays with the signed digests, as before). Unicast chunks (``ota/chunk``) are in the
clear: only the device can read its own topic. The serial gateway decrypts before caching, so
firmware never sees ciphertext.
"""

from __future__ import annotations

from typing import Any

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

KEY_BYTES = 16


def crypt(key: bytes, pkg: int, offset: int, data: bytes) -> bytes:
    """Encrypt or decrypt (the same operation) ``data`` found at ``offset`` of package ``pkg``."""
    if len(key) != KEY_BYTES:
        raise ValueError(f"a fan-out key is {KEY_BYTES} bytes")
    skip = offset % 16
    counter = pkg.to_bytes(8, "big") + (offset // 16).to_bytes(8, "big")
    encryptor = Cipher(algorithms.AES(key), modes.CTR(counter)).encryptor()
    out = encryptor.update(bytes(skip) + bytes(data)) + encryptor.finalize()
    return out[skip:]


class FanoutCipher:
    """:func:`crypt` for one package's chunks as they arrive: a chunk that starts where the
    previous one ended goes on with the same keystream (CTR is a stream: its bytes at
    ``offset`` do not depend on how the stream was cut), so a wave in order costs one AES
    context instead of one per chunk; any other offset starts afresh. Same bytes as
    :func:`crypt`; one thread at a time."""

    def __init__(self, key: bytes, pkg: int) -> None:
        if len(key) != KEY_BYTES:
            raise ValueError(f"a fan-out key is {KEY_BYTES} bytes")
        self.key, self.pkg = bytes(key), pkg
        self._stream: Any = None
        self._next = -1  # the offset the stream is at

    def crypt(self, offset: int, data: bytes) -> bytes:
        """Encrypt or decrypt ``data`` found at ``offset`` of this cipher's package."""
        if offset != self._next or self._stream is None:
            skip = offset % 16
            counter = self.pkg.to_bytes(8, "big") + (offset // 16).to_bytes(8, "big")
            self._stream = Cipher(algorithms.AES(self.key), modes.CTR(counter)).encryptor()
            out = self._stream.update(bytes(skip) + bytes(data))[skip:]
        else:
            out = self._stream.update(bytes(data))
        self._next = offset + len(data)
        return out
