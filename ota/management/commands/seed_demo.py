"""Seed the demo: a group, a claim token, a model converted to int8 and packaged.

manage.py seed_demo --out var/demo   (idempotent: reuses what exists)
Writes demo.json (token, package id, model path) for the simulator.
"""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from fleet.devices.actions import do_create_enrollment_token
from fleet.devices.models import DeviceGroup, HardwareProfile
from ota.choices import VersionStatus
from ota.jobs.conversion import run_pending_jobs
from ota.models import Model, ModelVersion, Package
from ota.packaging.actions import do_build_package
from ota.registry.actions import do_create_model, do_request_conversion
from ota.registry.storage import artifact_storage

MODEL = "gesture"
HARDWARE = "esp32-s3"


class Command(BaseCommand):
    help = "Seed demo data: group, token, a converted int8 model (two versions), a package."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--out", required=True, help="folder for demo.json and the model")
        parser.add_argument("--devices", type=int, default=50)

    def handle(self, *args: Any, **opts: Any) -> None:
        from ota.conversion.demo_model import LABELS, train_keras_model

        out = Path(opts["out"])
        out.mkdir(parents=True, exist_ok=True)
        group, _ = DeviceGroup.objects.get_or_create(name="demo")
        model = Model.objects.filter(name=MODEL).first() or do_create_model(
            name=MODEL, actor=None, labels=LABELS, description="IMU gesture classifier (demo)",
            input_meaning="16 IMU features in [0, 1]", output_meaning="softmax over 4 gestures")
        versions = {}
        # 1.0.0 runs on the fleet at start; 1.1.0 (retrained, wider) is there to roll out.
        for version, hidden, seed in (("1.0.0", 24, 0), ("1.1.0", 32, 1)):
            mv = ModelVersion.objects.filter(model=model, version=version).first()
            if mv is None:
                self.stdout.write(f"training and converting {MODEL}@{version} ...")
                keras, data = train_keras_model(out / "keras", hidden=hidden, seed=seed)
                mv = do_request_conversion(model, version=version, keras=keras, dataset=data,
                                           actor=None, notes="demo model")
                run_pending_jobs("seed-demo")
                mv.refresh_from_db()
            if mv.status != VersionStatus.READY:
                raise CommandError(f"{mv} is {mv.status}: {mv.validation}")
            versions[version] = mv
        profile = HardwareProfile.objects.get(name=HARDWARE)
        v1 = versions["1.0.0"]
        package = (Package.objects.filter(model_version=v1, hardware_profile=profile,
                                          expires_at__gt=timezone.now()).first()
                   or do_build_package(v1, profile, actor=None))
        model_path = out / "gesture-1.0.0.tflite"
        model_path.write_bytes(artifact_storage().get(v1.sha256))
        _, token = do_create_enrollment_token(
            actor=None, expires_at=timezone.now() + timedelta(days=30),
            max_uses=opts["devices"] * 4, name="demo fleet", group=group,
            hardware_profile=profile)
        info = {"token": token, "package_id": package.pk, "model": str(model_path),
                "hardware": HARDWARE, "group": group.name,
                "versions": {k: v.pk for k, v in versions.items()}}
        (out / "demo.json").write_text(json.dumps(info, indent=2))
        self.stdout.write(json.dumps(info))
