from django.apps import AppConfig


class OtaConfig(AppConfig):
    name = "ota"
    label = "ota"
    verbose_name = "Models and OTA"

    def ready(self) -> None:
        from fleet.devices.trust import register_signing_key_source
        from ota.signing.keys import published_public_keys

        register_signing_key_source(published_public_keys)

        from ota.jobs.revalidation import connect_profile_signal

        connect_profile_signal()
