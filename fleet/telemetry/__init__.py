"""Compact inference telemetry: ingest with dedupe, raw events, rollups, queries."""
