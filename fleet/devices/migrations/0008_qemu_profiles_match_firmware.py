"""The QEMU profiles take the firmware's figures: 32 KB arena, 128 KB slot, ops.h's ops.

Before, qemu-mps2-an385 said a 128 KB arena and a 256 KB slot while the firmware has 32 KB and
128 KB, so the server admitted models the device then refused. This also adds qemu-mps2-an386
(Cortex-M4, CMSIS-NN). The values are a snapshot (fleet/devices/stock_profiles.py holds the
current ones, checked against the firmware by tests/fleet/devices/test_stock_profiles.py).
"""

from django.db import migrations

KB = 1024
OPS = [
    "ADD", "AVERAGE_POOL_2D", "CONV_2D", "DEPTHWISE_CONV_2D", "DEQUANTIZE", "FULLY_CONNECTED",
    "MAX_POOL_2D", "MEAN", "MUL", "QUANTIZE", "RELU", "RESHAPE", "SOFTMAX",
]
FIRMWARE = {"arena_ram_bytes": 32 * KB, "model_slot_bytes": 128 * KB, "supported_ops": OPS}
AN386 = {
    "display_name": "QEMU MPS2 AN386",
    "mcu": "Cortex-M4 with DSP on QEMU's mps2-an386 board (the firmware's CMSIS-NN target)",
    "ram_bytes": 4096 * KB, "flash_bytes": 4096 * KB, "kernel_set": "cmsis-nn",
    "pointer_bits": 32, "ota_chunk_bytes": 1024, **FIRMWARE,
}
OLD_AN385 = {"arena_ram_bytes": 128 * KB, "model_slot_bytes": 256 * KB, "supported_ops": [
    "FULLY_CONNECTED", "RELU", "RESHAPE", "SOFTMAX", "QUANTIZE", "DEQUANTIZE", "CONV_2D",
    "DEPTHWISE_CONV_2D", "AVERAGE_POOL_2D", "MAX_POOL_2D"]}


def forwards(apps, schema_editor):
    profile_model = apps.get_model("devices", "HardwareProfile")
    profile_model.objects.filter(name="qemu-mps2-an385").update(**FIRMWARE)
    profile_model.objects.update_or_create(name="qemu-mps2-an386", defaults=AN386)


def backwards(apps, schema_editor):
    profile_model = apps.get_model("devices", "HardwareProfile")
    profile_model.objects.filter(name="qemu-mps2-an385").update(**OLD_AN385)
    # qemu-mps2-an386 stays: devices may have enrolled with it.


class Migration(migrations.Migration):
    dependencies = [("devices", "0007_proof_of_possession")]

    operations = [migrations.RunPython(forwards, backwards)]
