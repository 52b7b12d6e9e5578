"""Script rollouts: manage.py rollout create|list|show|pause|resume|abort|rollback ..."""

from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from fleet.devices.models import Device, DeviceGroup, HardwareProfile
from ota.errors import OtaError
from ota.models import ModelVersion
from ota.rollouts import actions
from ota.rollouts.models import Rollout
from ota.rollouts.progress import failure_reasons, wave_progress


class Command(BaseCommand):
    help = "Create and control staged rollouts."

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="verb", required=True)
        create = sub.add_parser("create", help="create and start a rollout")
        create.add_argument("--model", required=True)
        create.add_argument("--version", required=True)
        create.add_argument("--name", default="")
        create.add_argument("--group")
        create.add_argument("--tag", action="append", default=[])
        create.add_argument("--hardware")
        create.add_argument("--device", action="append", default=[], help="device uid")
        create.add_argument("--waves", default="1,10,50,100")
        create.add_argument("--failure-threshold", type=float, default=0.2)
        create.add_argument("--success-threshold", type=float, default=0.95)
        create.add_argument("--soak", type=int, default=0, help="seconds")
        create.add_argument("--max-score-drop", type=float)
        create.add_argument("--offers-per-minute", type=int, default=600)
        create.add_argument("--draft", action="store_true", help="do not start")
        sub.add_parser("list")
        for verb in ("show", "start", "pause", "resume", "abort", "rollback"):
            sub.add_parser(verb).add_argument("id", type=int)

    def handle(self, *args: Any, **opts: Any) -> None:
        try:
            getattr(self, f"_{opts['verb']}")(opts)
        except OtaError as exc:
            raise CommandError(f"{exc.reason}: {exc.detail}") from None

    def _create(self, o: dict[str, Any]) -> None:
        mv = ModelVersion.objects.filter(model__name=o["model"], version=o["version"]).first()
        if mv is None:
            raise CommandError(f"no model version {o['model']}@{o['version']}")
        devices = list(Device.objects.filter(uid__in=o["device"])) if o["device"] else None
        rollout = actions.do_create_rollout(
            actor=None, name=o["name"] or f"{mv}", model_version=mv,
            waves=[float(w) for w in o["waves"].split(",")],
            group=DeviceGroup.objects.filter(name=o["group"]).first() if o["group"] else None,
            tags=o["tag"], devices=devices,
            profile=(HardwareProfile.objects.filter(name=o["hardware"]).first()
                     if o["hardware"] else None),
            failure_threshold=o["failure_threshold"], success_threshold=o["success_threshold"],
            soak_s=o["soak"], max_score_drop=o["max_score_drop"],
            offers_per_minute=o["offers_per_minute"],
        )
        if not o["draft"]:
            rollout = actions.do_start_rollout(rollout, actor=None)
        self.stdout.write(f"rollout {rollout.pk} {rollout.state}")

    def _list(self, o: dict[str, Any]) -> None:
        for r in Rollout.objects.select_related("model_version__model")[:100]:
            self.stdout.write(f"{r.pk:>5} {r.state:<10} wave {r.current_wave + 1}/{len(r.waves)} "
                              f"{r.model_version} {r.paused_reason}")

    def _show(self, o: dict[str, Any]) -> None:
        r = self._get(o)
        self.stdout.write(json.dumps({"id": r.pk, "state": r.state, "paused_reason":
                                      r.paused_reason, "waves": wave_progress(r),
                                      "failures": failure_reasons(r)}, indent=2))

    def _get(self, o: dict[str, Any]) -> Rollout:
        rollout = Rollout.objects.filter(pk=o["id"]).first()
        if rollout is None:
            raise CommandError(f"no rollout {o['id']}")
        return rollout

    def _start(self, o: dict[str, Any]) -> None:
        self.stdout.write(actions.do_start_rollout(self._get(o), actor=None).state)

    def _pause(self, o: dict[str, Any]) -> None:
        self.stdout.write(actions.do_pause_rollout(self._get(o), actor=None).state)

    def _resume(self, o: dict[str, Any]) -> None:
        self.stdout.write(actions.do_resume_rollout(self._get(o), actor=None).state)

    def _abort(self, o: dict[str, Any]) -> None:
        self.stdout.write(actions.do_abort_rollout(self._get(o), actor=None).state)

    def _rollback(self, o: dict[str, Any]) -> None:
        back = actions.do_rollback_rollout(self._get(o), actor=None)
        self.stdout.write(f"rollback rollout {back.pk} {back.state}")
