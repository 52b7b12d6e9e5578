from django.apps import AppConfig


class OtaConfig(AppConfig):
    name = "ota"
    label = "ota"
    verbose_name = "Models and OTA"

    def ready(self) -> None:
        from fleet.devices.trust import register_signing_key_source
        from ota.signing.keys import published_public_keys

        register_signing_key_source(published_public_keys)

        # Golden outputs of CMSIS-NN profiles measured by CMSIS-NN's own build (QEMU, M4 probe).
        from django.conf import settings

        from ota.validation.golden import register_outputs_measurer
        from ota.validation.targets import QemuOutputsMeasurer

        register_outputs_measurer("cmsis-nn", QemuOutputsMeasurer(
            probe_dir=settings.ADMISSION_PROBE_DIR))

        from ota.jobs.revalidation import connect_profile_signal

        connect_profile_signal()
