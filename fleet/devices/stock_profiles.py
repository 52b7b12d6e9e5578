"""Hardware profiles every installation starts with (loaded by a data migration).

Figures: arena RAM is what is left for the tensor arena after a typical firmware's own RAM
(stack, heap, radio/USB stacks); a model slot is one half of the flash set aside for A/B
model slots. The op lists are the kernels a typical build of each class registers.

The QEMU boards are the firmware's own targets (firmware/), so their profiles are not typical
figures but the firmware's configuration, and must stay equal to it (a contract test,
tests/fleet/devices/test_stock_profiles.py, reads the firmware's headers and Makefile):
``arena_ram_bytes`` is the Cortex-M images' ``TML_ARENA_BYTES`` (Makefile ``ARM_ARENA``),
``model_slot_bytes`` the port's ``SLOT_BYTES`` (ports/qemu-mps2/platform_mps2.c),
``supported_ops`` the ``TML_OPS`` list of include/tml/ops.h, ``kernel_set`` the TFLM tree the
Makefile builds for the board (reference for mps2-an385, CMSIS-NN for mps2-an386). An existing
install gets them by data migration (devices 0008).
"""

from __future__ import annotations

from typing import Any

KB = 1024

# Ops of a general-purpose build (keyword spotting, image and IMU classifiers).
_COMMON_OPS = [
    "ADD", "AVERAGE_POOL_2D", "CONCATENATION", "CONV_2D", "DEPTHWISE_CONV_2D", "DEQUANTIZE",
    "FULLY_CONNECTED", "LOGISTIC", "MAX_POOL_2D", "MEAN", "MUL", "PAD", "QUANTIZE", "RELU",
    "RELU6", "RESHAPE", "SOFTMAX", "TANH",
]

# include/tml/ops.h, in its order.
FIRMWARE_OPS = [
    "ADD", "AVERAGE_POOL_2D", "CONV_2D", "DEPTHWISE_CONV_2D", "DEQUANTIZE", "FULLY_CONNECTED",
    "MAX_POOL_2D", "MEAN", "MUL", "QUANTIZE", "RELU", "RESHAPE", "SOFTMAX",
]
FIRMWARE_ARENA_BYTES = 32 * KB  # Makefile ARM_ARENA -> TML_ARENA_BYTES
FIRMWARE_SLOT_BYTES = 128 * KB  # ports/qemu-mps2/platform_mps2.c SLOT_BYTES

QEMU_PROFILES: list[dict[str, Any]] = [
    {
        "name": "qemu-mps2-an385",
        "display_name": "QEMU MPS2 AN385",
        "mcu": "Cortex-M3 on QEMU's mps2-an385 board (the firmware's emulated target)",
        "ram_bytes": 4096 * KB, "flash_bytes": 4096 * KB,
        "arena_ram_bytes": FIRMWARE_ARENA_BYTES, "model_slot_bytes": FIRMWARE_SLOT_BYTES,
        "kernel_set": "reference", "pointer_bits": 32, "supported_ops": FIRMWARE_OPS,
        "ota_chunk_bytes": 1024,
    },
    {
        "name": "qemu-mps2-an386",
        "display_name": "QEMU MPS2 AN386",
        "mcu": "Cortex-M4 with DSP on QEMU's mps2-an386 board (the firmware's CMSIS-NN target)",
        "ram_bytes": 4096 * KB, "flash_bytes": 4096 * KB,
        "arena_ram_bytes": FIRMWARE_ARENA_BYTES, "model_slot_bytes": FIRMWARE_SLOT_BYTES,
        "kernel_set": "cmsis-nn", "pointer_bits": 32, "supported_ops": FIRMWARE_OPS,
        "ota_chunk_bytes": 1024,
    },
]

STOCK_PROFILES: list[dict[str, Any]] = [
    {
        "name": "arduino-nano-33-ble-sense",
        "display_name": "Arduino Nano 33 BLE Sense",
        "mcu": "nRF52840 (Cortex-M4F, 64 MHz)",
        "ram_bytes": 256 * KB, "flash_bytes": 1024 * KB,
        "arena_ram_bytes": 160 * KB, "model_slot_bytes": 320 * KB,
        "kernel_set": "cmsis-nn", "pointer_bits": 32, "supported_ops": _COMMON_OPS,
        "ota_chunk_bytes": 1024,
    },
    {
        "name": "esp32-s3",
        "display_name": "Espressif ESP32-S3",
        "mcu": "ESP32-S3 (Xtensa LX7 dual core, 240 MHz, 512 KB SRAM, 8 MB flash)",
        "ram_bytes": 512 * KB, "flash_bytes": 8192 * KB,
        "arena_ram_bytes": 320 * KB, "model_slot_bytes": 1024 * KB,
        "kernel_set": "esp-nn", "pointer_bits": 32, "supported_ops": _COMMON_OPS,
        "ota_chunk_bytes": 4096,
    },
    {
        "name": "stm32f746",
        "display_name": "STM32F746 Discovery",
        "mcu": "STM32F746NG (Cortex-M7, 216 MHz)",
        "ram_bytes": 320 * KB, "flash_bytes": 1024 * KB,
        "arena_ram_bytes": 240 * KB, "model_slot_bytes": 384 * KB,
        "kernel_set": "cmsis-nn", "pointer_bits": 32, "supported_ops": _COMMON_OPS,
        "ota_chunk_bytes": 2048,
    },
    *QEMU_PROFILES,
]
