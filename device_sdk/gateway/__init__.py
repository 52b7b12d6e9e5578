"""The serial gateway: MCUs on UARTs speak to the fleet through one MQTT identity.

An MCU (the C99 firmware in ``firmware/``) talks the link framing of ``firmware/LINK.md`` on
its UART. The gateway runs one :class:`~device_sdk.gateway.serial_link.SerialChild` per port,
a :class:`~device_sdk.gateway.bridge.Bridge` that swaps framing for topics, one
:class:`~device_sdk.gateway.uplink.Uplink` (its MQTT 5 connection, TLS with the fleet's CA)
and, when configured, a :class:`~device_sdk.gateway.enroll.ChildEnroller` that enrolls MCUs it
meets and makes them its children. Its broker identity may use its children's topics and
publish its own status, nothing else (docs/ARCHITECTURE.md, Topics); it cannot forge packages either, since the
MCU verifies every manifest signature and every digest itself. Its own status
(:mod:`~device_sdk.gateway.presence`, ``fleet/v1/{gateway}/status``) is online while it is
connected and carries its last will, so the fleet marks its children offline when its host
dies.

Run it with ``python -m device_sdk gateway`` (or ``python -m device_sdk.gateway``).
"""
