"""Broker side of the fleet: Mosquitto process management and the broker-admin interface."""
