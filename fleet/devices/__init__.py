"""Devices, hardware profiles, groups and tags, enrollment tokens and device credentials."""
