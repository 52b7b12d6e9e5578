"""Connect the OTA state machine to a DeviceClient: offers in, chunk requests and reports out.

Callbacks arrive on the client's network thread; the agent's work there is short (writing a
chunk, decoding a model of a few hundred KB once, a trial of a few inferences).

Flow: an offer is verified → the device subscribes to the package's fan-out topic and reports
DOWNLOADING → chunks arrive from the fan-out and, for whatever is still missing after
``repair_after_s`` without progress, from its own ``ota/get`` requests → VERIFIED → INSTALLED
(the new slot is active, on trial) → TRIAL → CONFIRMED, or FAILED with a reason (the old slot
stays or comes back). A device that restarts during a trial reverts and reports ROLLED_BACK.

Seam: four hook methods (:meth:`OtaAgent.offer_accepted`, :meth:`~OtaAgent.chunk_received`,
:meth:`~OtaAgent.download_advanced`, :meth:`~OtaAgent.trial_judged`) do nothing here; a subclass
overrides them to watch or alter the flow. The fleet simulator's fault injection (power cuts,
corrupted chunks, failed trials) is such a subclass, in :mod:`device_sdk.simulator.faults`, the
way the firmware keeps its power-cut simulation in its posix port: this module has no
simulator-only branch.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from device_sdk.client import DeviceClient
from device_sdk.ota.trial import TrialResult
from device_sdk.ota.updater import OtaUpdater
from device_sdk.protocol.cose import parse_sign1
from device_sdk.protocol.fanout import FanoutCipher
from device_sdk.protocol.manifest import Manifest, TrialSpec
from device_sdk.protocol.ota_messages import (
    ChunkRequest,
    DeploymentState,
    Report,
    decode_chunk,
    decode_fanout_key,
    decode_withdrawal,
    encode_chunk_request,
    encode_report,
)
from device_sdk.protocol.reasons import ProtocolError, Reason
from device_sdk.protocol.topics import (
    Channel,
    DeviceTopic,
    FleetChannel,
    PackageTopic,
    fleet_topic,
    package_filter,
    package_topic,
    parse_topic,
)

log = logging.getLogger(__name__)
# (installed model bytes, the manifest's key 15 or None) -> verdict
Trial = Callable[[bytes, TrialSpec | None], TrialResult]


class OtaAgent:
    """Run OTA updates for one device.

    ``on_installed(package_id, model_bytes)`` runs on the network thread once a new model passed
    its trial, before CONFIRMED is reported (the application swaps its interpreter there).
    """

    def __init__(self, client: DeviceClient, updater: OtaUpdater, trial: Trial, *,
                 chunk_bytes: int = 4096, repair_after_s: float = 2.0,
                 fanout_wait_s: float = 45.0,
                 on_installed: Callable[[int, bytes], None] | None = None) -> None:
        self.client = client
        self.updater = updater
        self.trial = trial
        self.chunk_bytes = chunk_bytes
        self.repair_after_s = repair_after_s
        self.fanout_wait_s = fanout_wait_s
        self.on_installed = on_installed
        self._last_progress = time.monotonic()
        self._awaiting_fanout = False  # offered and subscribed, no fan-out byte yet
        self._quiet_limit = repair_after_s  # grows while repairs bring nothing
        self._fanout: str | None = None  # the filter subscribed to
        self._fanout_topic: str | None = None  # the topic its chunks come on
        self._cipher: FanoutCipher | None = None  # decrypts the fan-out's chunks in order
        self._pending: list[tuple[int, DeploymentState, int]] = []
        self._last_report: tuple[int, DeploymentState, int] | None = None
        self._watching: int | None = None
        self._keys_topic = fleet_topic(FleetChannel.KEYS)
        self._keys_subscribed = False
        client.trusted_kids = tuple(updater.trusted_kids())
        client.on_message = self._chain(client.on_message, self._on_message)
        client.on_connect = self._chain(client.on_connect, self._on_connect)

    @staticmethod
    def _chain(first: Callable[..., None] | None,
               second: Callable[..., None]) -> Callable[..., None]:
        if first is None:
            return second

        def both(*args: object) -> None:
            first(*args)
            second(*args)

        return both

    # -- start-up ------------------------------------------------------------------------

    def boot(self) -> None:
        """Revert a model whose trial a restart interrupted, and never run an active slot
        whose bytes do not match its digest; tell the server once connected."""
        store = self.updater.store
        meta = store.meta
        if meta.trial:
            interrupted = meta.package
            store.boot()
            self.report_later(interrupted, DeploymentState.ROLLED_BACK, Reason.TRIAL_INTERRUPTED)
        if store.meta.sha256 and not store.check_active():
            log.error("%s: active slot of package %d does not match its digest%s",
                      self.client.uid, meta.package,
                      "; back on the other slot" if store.verify_active() else "")
            if store.meta.package != meta.package:
                self.report_later(meta.package, DeploymentState.ROLLED_BACK, Reason.FLASH_ERROR)

    def resume(self) -> None:
        """After :meth:`boot`: pick up a download left on disk, and install it at once when a
        restart came after its last byte (no chunk would arrive to trigger the install)."""
        manifest = self.updater.resume()
        if manifest is not None and self.updater.verified:
            self._install(manifest.package_id)

    def report_later(self, pkg: int, state: DeploymentState, reason: Reason | int = 0) -> None:
        """Send a report at the next connection (reports are not queued while offline)."""
        self._pending.append((pkg, state, int(reason)))

    def _on_connect(self, client: DeviceClient, session_present: bool) -> None:
        pending, self._pending = self._pending, []
        if self._last_report is not None and not pending:
            # A report sent just before the link dropped may never have reached the server;
            # saying the latest state again is harmless (reports never move a state back).
            pending = [self._last_report]
        for pkg, state, reason in pending:
            self._report(pkg, state, reason)
        wanted = self.updater.wanted()
        download = self.updater.download
        if wanted is not None and download is not None and download.received > 0:
            # Resuming a partial download: fetch only the gaps by request. The fan-out would
            # bring whole passes again, most of them bytes this device already holds.
            client.unsubscribe(package_filter(wanted[0]))
            self._fanout = self._fanout_topic = None
        else:
            if wanted is not None and self._fanout is None:
                self._follow_fanout(wanted[0])
            if self._fanout:
                client.subscribe(self._fanout, qos=0)
        if not (session_present and self._keys_subscribed):
            # Retained: the broker sends the bundle at once. A session this agent subscribed
            # in still has the subscription, and a new bundle reaches it live.
            client.subscribe(self._keys_topic, qos=1)
            self._keys_subscribed = True
        if not (self._awaiting_fanout and download is not None and download.received == 0):
            self._repair()  # resume a download the disconnect (or a restart) interrupted
        # (An offer that has not had a fan-out byte yet waits for the carousel as before: the
        # broker drops a device once when its deployment's fan-out grant is added, and
        # fetching the whole package by request after that would defeat the fan-out.)
        if wanted is not None:
            self._watch(wanted[0])

    # -- messages ------------------------------------------------------------------------

    def _on_message(self, client: DeviceClient, topic: str, payload: bytes) -> None:
        if topic == self._fanout_topic:
            self._chunk(payload, unicast=False)  # the hot path: every chunk of a wave
            return
        if topic == self._keys_topic:
            self._trust_bundle(payload)
            return
        parsed = parse_topic(topic)
        if isinstance(parsed, DeviceTopic) and parsed.channel == Channel.OTA_OFFER:
            self._offer(payload)
        elif isinstance(parsed, DeviceTopic) and parsed.channel == Channel.OTA_WITHDRAW:
            self._withdraw(payload)
        elif isinstance(parsed, DeviceTopic) and parsed.channel == Channel.OTA_KEY:
            try:
                message = decode_fanout_key(payload)
            except ProtocolError as exc:
                log.warning("%s: bad fan-out key: %s", self.client.uid, exc)
                return
            self.updater.set_fanout_key(message.pkg, message.key)
        elif (isinstance(parsed, PackageTopic)
              or (isinstance(parsed, DeviceTopic) and parsed.channel == Channel.OTA_CHUNK)):
            self._chunk(payload, unicast=isinstance(parsed, DeviceTopic))

    def _offer(self, cose: bytes) -> None:
        try:
            manifest = self.updater.offer(cose)
        except ProtocolError as exc:
            log.warning("%s: offer refused: %s", self.client.uid, exc)
            self._report(_refused_package_id(cose, exc.reason), DeploymentState.FAILED,
                         exc.reason)
            return
        pkg = manifest.package_id
        self._follow_fanout(pkg)
        self.client.subscribe(package_filter(pkg), qos=0)
        self.offer_accepted(manifest)
        self._report(pkg, DeploymentState.DOWNLOADING)
        self._last_progress = time.monotonic()
        self._awaiting_fanout = True
        self._quiet_limit = self.repair_after_s
        self._watch(pkg)

    def _trust_bundle(self, payload: bytes) -> None:
        """Apply the fleet's signed trust records; say the keys now trusted in the status."""
        try:
            self.updater.apply_trust_bundle(payload)
        except ProtocolError as exc:
            log.warning("%s: trust bundle refused: %s", self.client.uid, exc)
            return
        for pkg, state in self.updater.stop_revoked():
            self._stopped(pkg, state)
        kids = tuple(self.updater.trusted_kids())
        if kids != self.client.trusted_kids:
            self.client.trusted_kids = kids
            self.client.update_status()

    def _withdraw(self, payload: bytes) -> None:
        """Stop a withdrawn package (abort or rollback of its rollout) and report it."""
        try:
            withdrawal = decode_withdrawal(payload)
        except ProtocolError as exc:
            log.warning("%s: bad withdrawal: %s", self.client.uid, exc)
            return
        state = self.updater.withdraw(withdrawal.pkg)
        if state is not None:
            self._stopped(withdrawal.pkg, state, withdrawal.reason)

    def _stopped(self, pkg: int, state: DeploymentState, reason: int = int(Reason.ABORTED)) -> None:
        log.info("%s: package %d withdrawn (%s)", self.client.uid, pkg, state.name)
        if self._fanout == package_filter(pkg):
            self._leave_fanout()
        if self._watching == pkg:
            self._watching = None
        self._report(pkg, state, reason)

    def _chunk(self, payload: bytes, *, unicast: bool) -> None:
        try:
            chunk = decode_chunk(payload)
        except ProtocolError as exc:
            log.warning("%s: bad chunk: %s", self.client.uid, exc)
            return
        data = chunk.data
        if not unicast:
            key = self.updater.fanout_key(chunk.pkg)
            if key is not None:  # encrypted fan-out (only offered devices hold the key)
                cipher = self._cipher
                if cipher is None or cipher.pkg != chunk.pkg or cipher.key != key:
                    cipher = self._cipher = FanoutCipher(key, chunk.pkg)
                data = cipher.crypt(chunk.offset, data)
        data = self.chunk_received(chunk.offset, data)
        try:
            fresh = self.updater.on_chunk(chunk.pkg, chunk.offset, data)
        except ProtocolError as exc:
            self._give_up(chunk.pkg, exc.reason, str(exc))
            return
        if not fresh:
            return
        self._last_progress = time.monotonic()
        self._quiet_limit = self.repair_after_s
        if not unicast:
            self._awaiting_fanout = False
        download = self.updater.download
        if download is not None and not self.download_advanced(download.received):
            return
        if self.updater.verified:
            self._install(chunk.pkg)
        elif unicast:
            self._repair()  # repairing: ask for the next gap at once

    def _watch(self, pkg: int) -> None:
        if self._watching != pkg:
            self._watching = pkg
            self.client.reactor.call_later(self.repair_after_s, self._watchdog, pkg)

    def _watchdog(self, pkg: int) -> None:
        """Ask for missing bytes when nothing has come for a while.

        Before the first fan-out chunk the device waits longer (``fanout_wait_s``, 45 s): the
        server holds a turn of the carousel back while the wave's devices are still joining
        (up to 30 s, ota.rollouts.delivery) so that one turn serves the whole wave; a device
        that asked for the package by request meanwhile would cost the server a unicast copy. While
        repairs bring nothing (a busy or unreachable server) the wait doubles, up to 30 s, so
        a fleet does not pile requests onto a server that is already behind.
        """
        wanted = self.updater.wanted()
        if wanted is None or wanted[0] != pkg:
            self._watching = None
            return
        limit = self.fanout_wait_s if self._awaiting_fanout else self._quiet_limit
        if time.monotonic() - self._last_progress >= limit:
            self._awaiting_fanout = False
            self._quiet_limit = min(self._quiet_limit * 2, max(30.0, self.repair_after_s))
            self._last_progress = time.monotonic()
            self._repair()
        self.client.reactor.call_later(self.repair_after_s, self._watchdog, pkg)

    def _repair(self) -> None:
        wanted = self.updater.wanted()
        if wanted is None:
            return
        pkg, offset, length = wanted
        request = ChunkRequest(pkg, offset, min(length, self.chunk_bytes))
        self.client.publish(Channel.OTA_GET, encode_chunk_request(request))

    # -- install and trial ---------------------------------------------------------------

    def _install(self, pkg: int) -> None:
        self._leave_fanout()
        self._report(pkg, DeploymentState.VERIFIED)
        manifest: Manifest = self.updater.install()
        self._report(pkg, DeploymentState.INSTALLED)
        self._report(pkg, DeploymentState.TRIAL)
        model = self.updater.store.read_active()
        result = self.trial_judged(self.trial(model, manifest.trial))
        self.updater.finish_trial(result.passed)
        if not result.passed:
            log.warning("%s: trial of package %d failed: %s", self.client.uid, pkg, result.detail)
            self._report(pkg, DeploymentState.FAILED, result.reason)
            return
        if self.on_installed is not None:
            self.on_installed(pkg, model)
        self.client.set_model(pkg, manifest_seq=manifest.sequence)
        self._report(pkg, DeploymentState.CONFIRMED)
        log.info("%s: confirmed package %d (%s@%s)", self.client.uid, pkg, manifest.model_name,
                 manifest.model_version)

    # -- seam: hooks a subclass overrides (device_sdk.simulator.faults); no-ops here ------------

    def offer_accepted(self, manifest: Manifest) -> None:
        """Hook: an offer passed verification and its download starts; default: nothing."""

    def chunk_received(self, offset: int, data: bytes) -> bytes:
        """Hook: return the bytes to store for the chunk at ``offset``; default: ``data``."""
        return data

    def download_advanced(self, received: int) -> bool:
        """Hook: a chunk added bytes (``received`` in all so far).

        Return False to stop handling that chunk (no install, no repair request), e.g. when
        the device has just been switched off; default: True.
        """
        return True

    def trial_judged(self, result: TrialResult) -> TrialResult:
        """Hook: return the trial outcome the agent acts on; default: ``result`` itself."""
        return result

    def _give_up(self, pkg: int, reason: Reason, detail: str) -> None:
        log.warning("%s: download of package %d refused: %s", self.client.uid, pkg, detail)
        self._leave_fanout()
        self._report(pkg, DeploymentState.FAILED, reason)

    def _follow_fanout(self, pkg: int) -> None:
        self._fanout = package_filter(pkg)
        self._fanout_topic = package_topic(pkg)

    def _leave_fanout(self) -> None:
        if self._fanout:
            self.client.unsubscribe(self._fanout)
            self._fanout = self._fanout_topic = None

    def _report(self, pkg: int, state: DeploymentState, reason: Reason | int = 0) -> None:
        self._last_report = (pkg, state, int(reason))
        self.client.publish(Channel.OTA_REPORT, encode_report(Report(pkg, state, int(reason))))


# Refusals raised before the signature verified (or on a payload it did not make readable):
# the package id in such an offer is anyone's to choose, so it is not reported.
_UNAUTHENTICATED = frozenset({Reason.MANIFEST_MALFORMED, Reason.MANIFEST_UNSUPPORTED_VERSION,
                              Reason.MANIFEST_BAD_ALGORITHM, Reason.MANIFEST_UNKNOWN_KEY,
                              Reason.MANIFEST_BAD_SIGNATURE})


def _refused_package_id(cose: bytes, reason: Reason) -> int:
    """The package id to report a refused offer under: its own once the signature verified,
    else 0, which the server takes as "the offer it sent last" (CDDL.md, report)."""
    if reason in _UNAUTHENTICATED:
        return 0
    try:
        return Manifest.decode(parse_sign1(cose).payload).package_id
    except (ProtocolError, ValueError):  # verified, so not expected
        return 0
