"""The MQTT side of the device SDK: one connection helper for every process, and the device link.

* :mod:`~device_sdk.mqtt.endpoint`: :class:`BrokerEndpoint` (``mqtt://`` / ``mqtts://`` URLs)
  with :func:`new_client` and :func:`connect`, the one paho set-up (MQTT 5, TLS, credentials, wait for CONNACK) that
  the server, its worker, the benches and the gateway share.
* :mod:`~device_sdk.mqtt.link`: :class:`~device_sdk.mqtt.link.Link`, a device's connection on a
  :class:`~device_sdk.mqtt.reactor.Reactor`, reconnecting with :mod:`~device_sdk.mqtt.backoff`;
  its configuration in :mod:`~device_sdk.mqtt.config`; topic aliases, the lean paho client
  and paho's decoding speed-up beside it.

This package imports nothing from the server (``fleet``, ``ota``): the server imports it.
"""

from device_sdk.mqtt.endpoint import BrokerEndpoint, Will, connect, new_client

__all__ = ["BrokerEndpoint", "Will", "connect", "new_client"]
