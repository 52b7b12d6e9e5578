"""Device messages about deployments: chunk requests (``ota/get``) and reports (``ota/report``).

Each is decoded and checked here (``messages.decode_from_device``); the OTA domain
(``ota.rollouts.delivery``) then serves the chunk or applies the report.
"""

from __future__ import annotations

from device_sdk.protocol.ota_messages import (
    ChunkRequest,
    DeploymentState,
    decode_chunk_request,
    decode_report,
)
from device_sdk.protocol.reasons import Reason
from fleet.intake.directory import DeviceDirectory
from fleet.intake.messages import Rejected, decode_from_device
from fleet.intake.worker import Received
from ota.rollouts.delivery import OtaDelivery, ReportRow, apply_reports


class DeploymentConsumers:
    """The consumers of the ``ota/get`` and ``ota/report`` channels (``Consumers.register``)."""

    def __init__(self, delivery: OtaDelivery, directory: DeviceDirectory) -> None:
        self.delivery = delivery
        self.directory = directory
        self.counters = delivery.counters

    def consume_chunk_requests(self, items: list[tuple[str, Received]]) -> list[Rejected]:
        """Answer ``[pkg, offset, length]`` from a device that was offered ``pkg``.

        A batch is served with one read of its deployments (``OtaDelivery.serve_chunks``).
        """
        rejected: list[Rejected] = []
        accepted: list[tuple[Received, tuple[str, int, ChunkRequest]]] = []
        for uid, msg in items:
            outcome = decode_from_device(msg.topic, uid, msg.payload, decode_chunk_request,
                                         self.directory)
            if isinstance(outcome, Rejected):
                rejected.append(outcome)
                continue
            request, device = outcome
            accepted.append((msg, (uid, device.id, request)))
        served = self.delivery.serve_chunks([row for _, row in accepted])
        for (msg, (uid, _, request)), ok in zip(accepted, served, strict=True):
            if not ok:
                rejected.append(Rejected(msg.topic, uid, Reason.PACKAGE_NOT_OFFERED,
                                         f"package {request.pkg} not offered to {uid}",
                                         msg.payload))
        return rejected

    def consume_reports(self, items: list[tuple[str, Received]]) -> list[Rejected]:
        """Apply ``[pkg, state, detail]`` reports to the device's deployment of ``pkg``.

        A wave reports thousands at once (five steps per device): the batch is applied with
        one read of its deployments and a few grouped writes, in one transaction.
        """
        rejected: list[Rejected] = []
        accepted: list[tuple[str, Received, ReportRow]] = []
        for uid, msg in items:
            outcome = decode_from_device(msg.topic, uid, msg.payload, decode_report,
                                         self.directory)
            if isinstance(outcome, Rejected):
                rejected.append(outcome)
                continue
            report, device = outcome
            accepted.append((uid, msg, (device.id, report.pkg, DeploymentState(report.state),
                                        report.detail)))
        applied = apply_reports([row for _, _, row in accepted])
        for (uid, msg, row), ok in zip(accepted, applied, strict=True):
            if ok:
                self.counters[f"ota_report_{row[2].name.lower()}"] += 1
            else:
                rejected.append(Rejected(msg.topic, uid, Reason.PACKAGE_NOT_OFFERED,
                                         f"report for package {row[1]} not offered to {uid}",
                                         msg.payload))
        return rejected
