"""Signed OTA packages: transfer encoding and manifest."""
