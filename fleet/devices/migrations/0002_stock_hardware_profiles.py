"""Load the stock hardware profiles (see fleet/devices/stock_profiles.py)."""

from django.db import migrations


def load(apps, schema_editor):
    from fleet.devices.stock_profiles import STOCK_PROFILES

    profile_model = apps.get_model("devices", "HardwareProfile")
    for spec in STOCK_PROFILES:
        profile_model.objects.update_or_create(name=spec["name"], defaults=spec)


def unload(apps, schema_editor):
    from fleet.devices.stock_profiles import STOCK_PROFILES

    profile_model = apps.get_model("devices", "HardwareProfile")
    profile_model.objects.filter(name__in=[p["name"] for p in STOCK_PROFILES]).delete()


def create_role_groups(apps, schema_editor):
    group_model = apps.get_model("auth", "Group")
    for name in ("viewer", "operator", "admin"):
        group_model.objects.get_or_create(name=name)


class Migration(migrations.Migration):
    dependencies = [("devices", "0001_initial"), ("auth", "0012_alter_user_first_name_max_length")]

    operations = [
        migrations.RunPython(load, unload),
        migrations.RunPython(create_role_groups, migrations.RunPython.noop),
    ]
