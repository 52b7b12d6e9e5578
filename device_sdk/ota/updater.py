"""The device's OTA state machine: offer → download → verify → install → trial → confirm.

Pure logic over a :class:`SlotStore`; the client feeds it MQTT messages and publishes what
it asks for. Every refusal is a ``ProtocolError`` whose reason the device reports.

Chunks may come from the package's fan-out topic (shared by every device of a wave) or as
answers to this device's own requests; the updater takes them strictly in order, so one
small decoder state suffices, and asks for the next offset itself when the fan-out does not
bring it (a repair).
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from device_sdk.ota.slots import SlotStore, SlotWriter
from device_sdk.protocol.manifest import Encoding, Manifest, verify_manifest
from device_sdk.protocol.reasons import ProtocolError, Reason
from device_sdk.protocol.transfer import TransferDecoder

log = logging.getLogger(__name__)


@dataclass
class Download:
    """A package being received into the inactive slot."""

    manifest: Manifest
    decoder: TransferDecoder
    writer: SlotWriter
    offset: int = 0  # next transfer byte expected
    done: bool = False


class OtaUpdater:
    """Check offers against the device's keys, profile and sequence; stream, verify, install."""

    def __init__(self, store: SlotStore, *, hardware: str, slot_bytes: int | None = None,
                 arena_bytes: int | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.hardware = hardware
        self.slot_bytes = slot_bytes
        self.arena_bytes = arena_bytes
        self.clock = clock
        self.download: Download | None = None

    # -- keys ----------------------------------------------------------------------------

    def trusted_keys(self) -> dict[bytes, Ed25519PublicKey]:
        """Return the signing keys this device trusts (learned at enrollment or by rotation)."""
        return {bytes.fromhex(kid): Ed25519PublicKey.from_public_bytes(bytes.fromhex(key))
                for kid, key in self.store.meta.trusted_keys.items()}

    def trust(self, keys: dict[str, str]) -> None:
        """Set the trusted keys ({kid hex: raw public key hex}), as enrollment returns them."""
        from dataclasses import replace

        self.store.save(replace(self.store.meta, trusted_keys=dict(keys)))

    def apply_rotation(self, record: bytes) -> None:
        """Learn a new signing key from a rotation record signed by a trusted one."""
        from dataclasses import replace

        from device_sdk.protocol.cose import raw_public_key
        from device_sdk.protocol.manifest import verify_rotation

        meta = self.store.meta
        trusted = self.trusted_keys()
        rotation = verify_rotation(record, trusted_keys=trusted,
                                   current_sequence=meta.rotation_sequence)
        keys = rotation.apply(trusted)
        self.store.save(replace(meta, rotation_sequence=rotation.sequence, trusted_keys={
            kid.hex(): raw_public_key(key).hex() for kid, key in keys.items()}))

    # -- download ------------------------------------------------------------------------

    def offer(self, cose: bytes) -> Manifest:
        """Check a signed manifest and start (or keep) downloading its package."""
        meta = self.store.meta
        active = self.store.read_active()
        manifest = verify_manifest(
            cose, trusted_keys=self.trusted_keys(), current_sequence=meta.sequence,
            hardware_profile=self.hardware, now=int(self.clock()), slot_bytes=self.slot_bytes,
            arena_bytes=self.arena_bytes,
            running_model_sha256=hashlib.sha256(active).digest(),
        )
        current = self.download
        if current is not None and current.manifest.package_id == manifest.package_id:
            return manifest  # a repeated offer: carry on from where the download is
        if current is not None:
            current.writer.abort()
        base = active if manifest.encoding == Encoding.DELTA else None
        self.download = Download(manifest, TransferDecoder(manifest, base),
                                 self.store.open_inactive())
        log.info("accepted package %d (%s@%s, %d bytes %s)", manifest.package_id,
                 manifest.model_name, manifest.model_version, manifest.transfer_size,
                 Encoding(manifest.encoding).name.lower())
        return manifest

    def wanted(self) -> tuple[int, int] | None:
        """Return (package id, next offset) while a download is incomplete."""
        d = self.download
        if d is None or d.done:
            return None
        return d.manifest.package_id, d.offset

    def on_chunk(self, package_id: int, offset: int, data: bytes) -> bool:
        """Take a chunk if it is the next one of the current download; True when taken.

        Raises ProtocolError (the download is dropped) when the bytes are refused.
        """
        d = self.download
        if d is None or d.done or package_id != d.manifest.package_id or offset != d.offset:
            return False
        try:
            d.writer.write(d.decoder.feed(data))
            d.offset += len(data)
            if d.offset >= d.manifest.transfer_size:
                d.writer.write(d.decoder.finish())
                d.writer.close()
                d.done = True
        except ProtocolError:
            d.writer.abort()
            self.download = None
            raise
        return True

    @property
    def verified(self) -> bool:
        """True when the whole package is in the inactive slot and matched every digest."""
        return self.download is not None and self.download.done

    def install(self) -> Manifest:
        """Switch to the new slot, on trial; the sequence is persisted (anti-rollback)."""
        d = self.download
        if d is None or not d.done:
            raise ProtocolError(Reason.TRANSFER_TRUNCATED, "nothing verified to install")
        m = d.manifest
        self.store.activate_for_trial(m.package_id, m.sequence, m.model_sha256.hex(),
                                      m.model_size)
        self.download = None
        return m

    def finish_trial(self, passed: bool) -> None:
        """Confirm the trial model, or go back to the previous one."""
        if passed:
            self.store.confirm()
        else:
            self.store.revert()
