"""Device-side OTA: A/B model slots on disk and the update state machine (no I/O to MQTT)."""
