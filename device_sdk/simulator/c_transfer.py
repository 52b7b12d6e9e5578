"""The firmware's transfer decoder (firmware/src/transfer.c, lz.c, delta.c, sha.c), loaded with
ctypes from ``firmware/build/host/libtml_transfer.so`` (``make -C firmware libtransfer``), for
the simulated devices: each decodes its own package with the code a real device runs, at C
speed (the pure-Python decoder needs ~0.3 s per 100 KB compressed, too slow for thousands of
simulated devices). Without the library the simulator falls back to the Python decoder.

Simulator only: the production SDK stays pure Python (``OtaUpdater`` takes any decoder with
``TransferDecoder``'s ``feed``/``finish``). ``TML_TRANSFER_LIB`` names another build of the
library; ``TML_TRANSFER_LIB=none`` turns it off.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Callable
from pathlib import Path

from device_sdk.protocol.manifest import Encoding, Manifest
from device_sdk.protocol.reasons import ProtocolError, Reason
from device_sdk.protocol.transfer import TransferDecoder

__all__ = ["DEFAULT_LIBRARY", "CTransferDecoder", "decoder_factory", "load_library"]

DEFAULT_LIBRARY = (Path(__file__).resolve().parents[2] / "firmware" / "build" / "host"
                   / "libtml_transfer.so")
_u8p = ctypes.POINTER(ctypes.c_uint8)
_loaded: dict[str, ctypes.CDLL | None] = {}


def load_library(path: Path | str | None = None) -> ctypes.CDLL | None:
    """Load the decoder library (``path``, else ``TML_TRANSFER_LIB``, else the default build);
    return None when it is not built or is turned off. Loaded once per path; a library not
    built yet is looked for again next time (a test may build it after a simulator ran)."""
    chosen = str(path or os.environ.get("TML_TRANSFER_LIB") or DEFAULT_LIBRARY)
    if _loaded.get(chosen) is not None:
        return _loaded[chosen]
    lib: ctypes.CDLL | None = None
    if chosen != "none" and Path(chosen).is_file():
        lib = ctypes.CDLL(chosen)
        lib.tml_lib_transfer_size.restype = ctypes.c_size_t
        lib.tml_lib_transfer_size.argtypes = []
        lib.tml_lib_transfer_init.restype = ctypes.c_int
        lib.tml_lib_transfer_init.argtypes = [
            ctypes.c_void_p, ctypes.c_uint8, ctypes.c_uint32, ctypes.c_uint32, ctypes.c_char_p,
            ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_uint32, ctypes.c_void_p,
            ctypes.c_uint32]
        lib.tml_lib_transfer_feed.restype = ctypes.c_int
        lib.tml_lib_transfer_feed.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t,
                                              ctypes.POINTER(ctypes.c_uint32)]
        lib.tml_lib_transfer_finish.restype = ctypes.c_int
        lib.tml_lib_transfer_finish.argtypes = [ctypes.c_void_p]
    _loaded[chosen] = lib
    return lib


class CTransferDecoder:
    """``TransferDecoder``'s interface over the firmware's C decoder: ``feed`` returns the model
    bytes each chunk completes, ``finish`` checks the whole; both raise ``ProtocolError`` with
    the C decoder's reason, and after one refusal every call raises it again.

    The model bytes land in a buffer of the manifest's model size (the C decoder refuses
    output past it before writing); the delta's base is the running model's bytes.
    """

    def __init__(self, lib: ctypes.CDLL, manifest: Manifest, base: bytes | None = None) -> None:
        if base is not None and not isinstance(base, bytes | bytearray | memoryview):
            raise TypeError("the C decoder takes the base model's bytes, not a reader")
        self.manifest = manifest
        self._lib = lib
        self._state = ctypes.create_string_buffer(lib.tml_lib_transfer_size())
        self._out = bytearray(max(1, manifest.model_size))
        self._out_c = (ctypes.c_uint8 * len(self._out)).from_buffer(self._out)
        self._base = bytes(base) if base is not None else None  # kept alive for the C side
        self._produced = ctypes.c_uint32(0)
        self._taken = 0
        self._error: ProtocolError | None = None
        base_sha = manifest.base_sha256 if manifest.encoding == Encoding.DELTA else None
        reason = lib.tml_lib_transfer_init(
            self._state, int(manifest.encoding), manifest.model_size, manifest.transfer_size,
            manifest.model_sha256, manifest.transfer_sha256, base_sha, self._base,
            len(self._base or b""), ctypes.cast(self._out_c, ctypes.c_void_p),
            manifest.model_size)
        if reason:
            raise self._refuse(reason)

    def _refuse(self, reason: int) -> ProtocolError:
        self._error = ProtocolError(Reason(reason), "refused by the firmware's transfer decoder")
        return self._error

    def _new_output(self) -> bytes:
        produced = self._produced.value
        out = bytes(self._out[self._taken:produced])
        self._taken = produced
        return out

    def feed(self, chunk: bytes) -> bytes:
        """Consume the next transferred bytes and return the model bytes they complete."""
        if self._error is not None:
            raise self._error
        data = bytes(chunk)
        reason = self._lib.tml_lib_transfer_feed(self._state, data, len(data),
                                                 ctypes.byref(self._produced))
        if reason:
            raise self._refuse(reason)
        return self._new_output()

    def finish(self) -> bytes:
        """Check the transfer is complete and is the model the manifest names."""
        if self._error is not None:
            raise self._error
        reason = self._lib.tml_lib_transfer_finish(self._state)
        if reason:
            raise self._refuse(reason)
        return self._new_output()


def decoder_factory(
    path: Path | str | None = None,
) -> Callable[[Manifest, bytes | None], CTransferDecoder | TransferDecoder]:
    """Return what ``OtaUpdater(decoder=...)`` takes: the C decoder when the library is there,
    else the pure-Python ``TransferDecoder``."""
    lib = load_library(path)
    if lib is None:
        return TransferDecoder

    def make(manifest: Manifest, base: bytes | None) -> CTransferDecoder:
        return CTransferDecoder(lib, manifest, base)

    return make
