"""Hardware profiles every installation starts with (loaded by a data migration).

Figures: arena RAM is what is left for the tensor arena after a typical firmware's own RAM
(stack, heap, radio/USB stacks); a model slot is one half of the flash set aside for A/B
model slots. The op lists are the kernels a typical build of each class registers.
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
    {
        "name": "qemu-mps2-an385",
        "display_name": "QEMU MPS2 AN385",
        "mcu": "Cortex-M3 on QEMU's mps2-an385 board (the firmware's emulated target)",
        "ram_bytes": 4096 * KB, "flash_bytes": 4096 * KB,
        "arena_ram_bytes": 128 * KB, "model_slot_bytes": 256 * KB,
        "kernel_set": "reference", "pointer_bits": 32,
        "supported_ops": ["FULLY_CONNECTED", "RELU", "RESHAPE", "SOFTMAX", "QUANTIZE",
                          "DEQUANTIZE", "CONV_2D", "DEPTHWISE_CONV_2D", "AVERAGE_POOL_2D",
                          "MAX_POOL_2D"],
        "ota_chunk_bytes": 1024,
    },
]
