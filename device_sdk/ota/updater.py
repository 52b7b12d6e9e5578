"""The device's OTA state machine: offer → download → verify → install → trial → confirm.

Pure logic over a :class:`SlotStore`; the client feeds it MQTT messages and publishes what
it asks for. Every refusal is a ``ProtocolError`` whose reason the device reports.

Chunks may come from the package's fan-out topic (shared by every device of a wave, which
may join it mid-pass) or as answers to this device's own requests (repairs). They are kept at
their offsets in a download file, so a device that joins the fan-out half-way keeps the
second half and takes the first from the next pass: every byte crosses the link once. When
the transfer is complete it is streamed through the decoder into the inactive slot.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from device_sdk.ota.slots import SlotStore
from device_sdk.protocol.cose import raw_public_key
from device_sdk.protocol.manifest import Encoding, Manifest, verify_manifest
from device_sdk.protocol.ota_messages import DeploymentState
from device_sdk.protocol.reasons import ProtocolError, Reason
from device_sdk.protocol.transfer import TransferDecoder
from device_sdk.protocol.trust import TrustState

log = logging.getLogger(__name__)

# Files of an accepted download, beside the slots: it survives a restart.
OFFER_FILE = "offer.cose"
PART_FILE = "download.part"
RANGES_FILE = "download.ranges"  # journal: one "start end" line per chunk kept
FANOUT_KEY_FILE = "fanout.key"  # package id (8 bytes) || the key of its encrypted fan-out


@dataclass
class Download:
    """A package being received: transfer bytes land in ``part`` at their offsets.

    While it runs, the part file and the range journal stay open (``files``): opening and
    closing both for every chunk cost a simulated fleet more than the bytes themselves. They
    are unbuffered, so each write is one system call, made in order: nothing written sits in
    a user-space buffer that a crash would lose or a late close would write out of turn.
    """

    manifest: Manifest
    part: Path
    ranges: list[list[int]] = field(default_factory=list)  # received [start, end), merged
    done: bool = False
    files: tuple[BinaryIO, BinaryIO] | None = None  # (part, journal) while chunks come in

    def close(self) -> None:
        """Close the part file and the journal (they reopen at the next chunk)."""
        files, self.files = self.files, None
        if files is not None:
            for f in files:
                f.close()

    def missing(self) -> tuple[int, int] | None:
        """Return the first gap (offset, length), or None when every byte is here."""
        size = self.manifest.transfer_size
        at = 0
        for start, end in self.ranges:
            if start > at:
                return at, start - at
            at = max(at, end)
        return (at, size - at) if at < size else None

    def add(self, start: int, end: int) -> bool:
        """Merge [start, end) into the received ranges; True if it brought new bytes."""
        before = sum(e - s for s, e in self.ranges)
        merged: list[list[int]] = []
        for s, e in sorted([*self.ranges, [start, end]]):
            if merged and s <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], e)
            else:
                merged.append([s, e])
        self.ranges = merged
        return sum(e - s for s, e in merged) > before

    @property
    def received(self) -> int:
        return sum(e - s for s, e in self.ranges)


class Decoder(Protocol):
    """What :meth:`OtaUpdater._decode` needs of a transfer decoder (``TransferDecoder``'s
    ``feed`` and ``finish``, raising ``ProtocolError``)."""

    def feed(self, chunk: bytes) -> bytes: ...

    def finish(self) -> bytes: ...


# Makes the decoder of one transfer from its verified manifest and the running model (deltas).
DecoderFactory = Callable[[Manifest, bytes | None], Decoder]


class OtaUpdater:
    """Check offers against the device's keys, profile and sequence; stream, verify, install.

    ``decoder`` makes each transfer's decoder: the pure-Python ``TransferDecoder`` unless the
    caller has another implementation of the same format (the fleet simulator passes the
    firmware's C decoder when it is built).
    """

    def __init__(self, store: SlotStore, *, hardware: str, slot_bytes: int | None = None,
                 arena_bytes: int | None = None,
                 clock: Callable[[], float] = time.time,
                 decoder: DecoderFactory = TransferDecoder) -> None:
        self.store = store
        self.decoder = decoder
        self.hardware = hardware
        self.slot_bytes = slot_bytes
        self.arena_bytes = arena_bytes
        self.clock = clock
        self.download: Download | None = None
        self._fanout_key: tuple[int, bytes] | None = None

    # -- keys ----------------------------------------------------------------------------

    def trusted_keys(self) -> dict[bytes, Ed25519PublicKey]:
        """Return the signing keys this device trusts (learned at enrollment or by rotation)."""
        return {bytes.fromhex(kid): Ed25519PublicKey.from_public_bytes(bytes.fromhex(key))
                for kid, key in self.store.meta.trusted_keys.items()}

    def trust(self, keys: dict[str, str]) -> None:
        """Set the trusted keys ({kid hex: raw public key hex}), as enrollment returns them."""
        from dataclasses import replace

        self.store.save(replace(self.store.meta, trusted_keys=dict(keys),
                                enrolled_keys=list(keys)))

    def trust_state(self) -> TrustState:
        """Return the persisted trust chain state (keys in the order they came to be trusted)."""
        meta = self.store.meta
        enrolled = None if meta.enrolled_keys is None else \
            tuple(bytes.fromhex(k) for k in meta.enrolled_keys)
        return TrustState(self.trusted_keys(), meta.rotation_sequence,
                          tuple(bytes.fromhex(k) for k in meta.retired_keys),
                          meta.min_sequence, tuple(meta.revoked_packages), enrolled)

    def _save_trust(self, state: TrustState) -> None:
        from dataclasses import replace

        self.store.save(replace(
            self.store.meta, rotation_sequence=state.sequence,
            trusted_keys={kid.hex(): raw_public_key(key).hex() for kid, key in state.keys.items()},
            retired_keys=[k.hex() for k in state.retired], min_sequence=state.min_sequence,
            revoked_packages=list(state.revoked),
            enrolled_keys=[k.hex() for k in state.enrolled or ()]))

    def apply_rotation(self, record: bytes) -> None:
        """Apply one signed rotation or policy record (raises ProtocolError if refused)."""
        self._save_trust(self.trust_state().apply(record))

    def apply_trust_bundle(self, bundle: bytes) -> list[ProtocolError]:
        """Apply the records of a ``fleet/v1/keys`` bundle this device has not seen yet.

        Returns the refusals (the other records still apply). Persisted before returning;
        a download of a package the bundle revoked, or under the new minimum, is dropped
        (see :meth:`stop_revoked`).
        """
        before = self.trust_state()
        state, errors = before.apply_bundle(bundle)
        if state != before:
            self._save_trust(state)
        for exc in errors:
            log.warning("trust record refused: %s", exc)
        return errors

    def trusted_kids(self) -> list[bytes]:
        """Return the ids of the keys this device trusts, in the order it came to trust them."""
        return [bytes.fromhex(k) for k in self.store.meta.trusted_keys]

    def withdraw(self, package_id: int) -> DeploymentState | None:
        """Stop ``package_id``: drop its download (FAILED) or revert its trial (ROLLED_BACK).

        Returns the state to report, or None when the device had nothing of that package
        in progress (never heard of it, or already confirmed it).
        """
        d = self.download
        if d is not None and d.manifest.package_id == package_id:
            self._forget_download()
            return DeploymentState.FAILED
        meta = self.store.meta
        if meta.trial and meta.package == package_id:
            self.store.revert()
            return DeploymentState.ROLLED_BACK
        return None

    def stop_revoked(self) -> list[tuple[int, DeploymentState]]:
        """Withdraw whatever the trust state no longer allows; return (package, state) pairs."""
        meta = self.store.meta
        stopped = []
        d = self.download
        if d is not None and (d.manifest.package_id in meta.revoked_packages
                              or d.manifest.sequence <= meta.min_sequence):
            pkg = d.manifest.package_id
            state = self.withdraw(pkg)
            if state is not None:
                stopped.append((pkg, state))
        if meta.trial and meta.package in meta.revoked_packages:
            pkg = meta.package
            state = self.withdraw(pkg)
            if state is not None:
                stopped.append((pkg, state))
        return stopped

    # -- fan-out key ---------------------------------------------------------------------

    def set_fanout_key(self, pkg: int, key: bytes) -> None:
        """Keep the key of package ``pkg``'s encrypted fan-out (sent before its offer); kept on
        disk beside the download, so a download resumed after a restart can still read it."""
        self._fanout_key = (pkg, bytes(key))
        (self.store.dir / FANOUT_KEY_FILE).write_bytes(pkg.to_bytes(8, "big") + bytes(key))

    def fanout_key(self, pkg: int) -> bytes | None:
        """Return the key of ``pkg``'s fan-out, or None (no key: the fan-out is in the clear)."""
        if self._fanout_key is None:
            stored = self.store.dir / FANOUT_KEY_FILE
            data = stored.read_bytes() if stored.exists() else b""
            if len(data) == 24:
                self._fanout_key = (int.from_bytes(data[:8], "big"), data[8:])
        if self._fanout_key is not None and self._fanout_key[0] == pkg:
            return self._fanout_key[1]
        return None

    # -- download ------------------------------------------------------------------------

    def offer(self, cose: bytes) -> Manifest:
        """Check a signed manifest and start (or keep) downloading its package."""
        meta = self.store.meta
        active = self.store.read_active()

        def verify(current_sequence: int) -> Manifest:
            return verify_manifest(
                cose, trusted_keys=self.trusted_keys(),
                current_sequence=max(current_sequence, meta.min_sequence),
                hardware_profile=self.hardware, now=int(self.clock()),
                slot_bytes=self.slot_bytes, arena_bytes=self.arena_bytes,
                running_model_sha256=hashlib.sha256(active).digest(),
                revoked_packages=meta.revoked_packages,
            )

        try:
            manifest = verify(meta.sequence)
        except ProtocolError as exc:
            # The package whose trial failed (its sequence is the persisted one) may be offered
            # again once the cause is fixed: that is a retry, not a rollback. Anything else at or
            # below the sequence stays refused.
            if exc.reason != Reason.MANIFEST_SEQUENCE_REPLAY or not meta.reverted_package:
                raise
            manifest = verify(meta.sequence - 1)
            if (manifest.package_id != meta.reverted_package
                    or manifest.sequence != meta.sequence):
                raise
        current = self.download
        if current is not None and current.manifest.package_id == manifest.package_id:
            return manifest  # a repeated offer: carry on from where the download is
        if current is None and self._resumable(manifest, cose):
            return manifest
        if current is not None:
            current.close()  # replaced by this offer's download: its files are truncated next
        part = self.store.dir / PART_FILE
        self.store.hook("part-open")
        part.write_bytes(b"")
        (self.store.dir / RANGES_FILE).write_bytes(b"")
        (self.store.dir / OFFER_FILE).write_bytes(cose)
        self.download = Download(manifest, part)
        log.info("accepted package %d (%s@%s, %d bytes %s)", manifest.package_id,
                 manifest.model_name, manifest.model_version, manifest.transfer_size,
                 Encoding(manifest.encoding).name.lower())
        return manifest

    def wanted(self) -> tuple[int, int, int] | None:
        """Return (package id, offset, length) of the first missing transfer bytes."""
        d = self.download
        if d is None or d.done:
            return None
        gap = d.missing()
        return None if gap is None else (d.manifest.package_id, *gap)

    def on_chunk(self, package_id: int, offset: int, data: bytes) -> bool:
        """Keep a chunk of the current download; True when it brought bytes not yet here.

        Raises ProtocolError (the download is dropped) for bytes beyond the declared size or,
        once complete, a transfer that does not decode to the signed model.
        """
        d = self.download
        if d is None or d.done or package_id != d.manifest.package_id or not data:
            return False
        end = offset + len(data)
        if end > d.manifest.transfer_size:
            self._forget_download()
            raise ProtocolError(Reason.TRANSFER_OVERFLOW,
                                f"bytes up to {end}, transfer is {d.manifest.transfer_size}")
        if not d.add(offset, end):
            return False
        part, journal = d.files or self._open_files(d)
        self.store.hook("part-write")
        os.pwrite(part.fileno(), data, offset)
        if self.store.durable:
            # The data reaches the flash before the journal says it is there: a power cut
            # between the two loses bytes, never lies about them.
            os.fsync(part.fileno())
        # After the data: a cut between the two loses bytes, never lies.
        self._journal(journal, offset, end)
        if d.missing() is None:
            d.close()
            self._decode(d)
        return True

    def close(self) -> None:
        """Release the open files of a download in progress (it resumes from disk later)."""
        if self.download is not None:
            self.download.close()

    def _open_files(self, d: Download) -> tuple[BinaryIO, BinaryIO]:
        """Open the part file for writes at offsets and the journal for appends, unbuffered."""
        part = open(d.part, "r+b", buffering=0)  # noqa: SIM115  (closed by Download.close)
        try:
            journal = open(self.store.dir / RANGES_FILE, "ab", buffering=0)  # noqa: SIM115
        except OSError:
            part.close()
            raise
        d.files = (part, journal)
        return d.files

    def resume(self) -> Manifest | None:
        """After a restart, pick up a download the device had accepted (None if there is none
        or its offer no longer passes the checks)."""
        offer = self.store.dir / OFFER_FILE
        if not offer.exists():
            return None
        try:
            manifest = self.offer(offer.read_bytes())
            d = self.download
            if d is not None and not d.done and d.missing() is None:
                # Cut after the last byte was journaled, before (or while) the slot was
                # written: no chunk will come to trigger the decode, so do it now.
                self._decode(d)
            return manifest
        except ProtocolError:
            self._forget_download()
            return None

    def _resumable(self, manifest: Manifest, cose: bytes) -> bool:
        """Take over a download an earlier run left on disk for the same offer."""
        offer, part = self.store.dir / OFFER_FILE, self.store.dir / PART_FILE
        ranges = self.store.dir / RANGES_FILE
        if not (offer.exists() and part.exists() and ranges.exists()):
            return False
        if offer.read_bytes() != cose:
            return False
        download = Download(manifest, part)
        size = manifest.transfer_size
        for line in ranges.read_bytes().split(b"\n")[:-1]:  # the last piece is unterminated
            fields = line.split(b" ")
            if len(fields) == 2 and all(f.isdigit() for f in fields):
                start, end = int(fields[0]), int(fields[1])
                if start < end <= size:
                    download.add(start, end)
        # Start the journal afresh from what was read: a torn last line is gone for good.
        tmp = self.store.dir / (RANGES_FILE + ".tmp")
        tmp.write_bytes(b"".join(b"%d %d\n" % (a, b) for a, b in download.ranges))
        tmp.replace(ranges)
        self.download = download
        return True

    def _journal(self, journal: BinaryIO, start: int, end: int) -> None:
        """Append one received range to the journal (one unbuffered write).

        Appending costs a fraction of rewriting a file and renaming it over the old one (the
        rename dominated a simulated fleet's CPU). A power cut can only tear the last line,
        which has no newline yet and is ignored on resume: those bytes are fetched again.
        """
        self.store.hook("ranges")
        journal.write(b"%d %d\n" % (start, end))
        if self.store.durable:
            os.fsync(journal.fileno())

    def _forget_download(self) -> None:
        if self.download is not None:
            self.download.close()
        for name in (PART_FILE, OFFER_FILE, RANGES_FILE):
            (self.store.dir / name).unlink(missing_ok=True)
        self.download = None

    def _decode(self, d: Download) -> None:
        """Stream the complete transfer through the decoder into the inactive slot.

        The whole transfer is hashed first: no byte reaches a decoder (nor the inactive slot)
        unless all of them are the ones the manifest signed, so a stream built to expand
        (a decompression bomb) is only ever decoded if the signer made it, and then the
        decoders' output is bounded by the signed sizes as well.
        """
        digest = hashlib.sha256()
        with open(d.part, "rb") as f:
            while block := f.read(65536):
                digest.update(block)
        if digest.digest() != d.manifest.transfer_sha256:
            self._forget_download()
            raise ProtocolError(Reason.TRANSFER_DIGEST_MISMATCH, "transferred bytes differ")
        base = self.store.read_active() if d.manifest.encoding == Encoding.DELTA else None
        decoder = self.decoder(d.manifest, base)
        writer = self.store.open_inactive()
        try:
            with open(d.part, "rb") as f:
                while block := f.read(16384):
                    writer.write(decoder.feed(block))
            writer.write(decoder.finish())
            writer.close()
        except ProtocolError:
            writer.abort()
            self._forget_download()
            raise
        d.done = True

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
        self._forget_download()
        return m

    def finish_trial(self, passed: bool) -> None:
        """Confirm the trial model, or go back to the previous one."""
        if passed:
            self.store.confirm()
        else:
            self.store.revert()
