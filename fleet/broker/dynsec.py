"""Manage broker identities through Mosquitto's dynamic security plugin, over MQTT.

`DynsecAccess` implements `BrokerAccess` with JSON commands to
``$CONTROL/dynamic-security/v1`` sent as the plugin's admin (see `fleet.broker.control`).

Mosquitto 2.0.11 does not expand ``%u``/``%c`` in dynamic security ACLs, so each device
gets its own role, ``device-<uid>``, holding the grants of `device_grants`. A gateway
holds its children's roles, so revoking a child also cuts the gateway off from it, and its
own role ``gateway-<uid>`` (`gateway_grants`): the publish of its own status, which carries
its last will.
Services share one role per `ServiceRole`, ``service-<role>``.

Facts checked against 2.0.11:

- ``deleteClient``, ``disableClient``, ``setClientPassword``, ``modifyClient`` and
  ``addClientRole`` disconnect the user's live connections at once (DISCONNECT reason
  0x98, administrative action, no will message); changing a role's ACLs or deleting it
  disconnects every client holding it. Clients reconnect and are checked against the new state.
- Deleting a role that a client still holds crashes the broker (segfault, mosquitto
  issue #2660): a role is only deleted after every holder has let go of it.
- ``addClientRole`` for a role the client already has answers "Internal error";
  ``modifyClient`` with the full role list is used instead.
"""

from __future__ import annotations

import logging
import time
from types import TracebackType
from typing import Any, Self

from device_sdk.mqtt import BrokerEndpoint
from fleet.broker.access import (
    Access,
    BrokerCommandError,
    Grant,
    ServiceRole,
    check_uid,
    device_grants,
    device_topic,
    package_grants,
    service_grants,
)
from fleet.broker.control import Command, ControlChannel, failed_with, response_error

log = logging.getLogger(__name__)

_ACLTYPE = {
    Access.PUBLISH: "publishClientSend",
    Access.SUBSCRIBE: "subscribePattern",
    Access.RECEIVE: "publishClientReceive",
}
# Deny whatever no role grants, deliveries included (the plugin's own default lets any
# subscription receive); unsubscribing is always harmless.
DEFAULT_ACL_ACCESS = [
    {"acltype": "publishClientSend", "allow": False},
    {"acltype": "publishClientReceive", "allow": False},
    {"acltype": "subscribe", "allow": False},
    {"acltype": "unsubscribe", "allow": True},
]
# Stored as the client's textname: only identities this module made are ever modified or
# deleted, so a device id equal to the admin's username cannot take the admin over.
KIND_DEVICE = "fleet:device"
KIND_GATEWAY = "fleet:gateway"
KIND_SERVICE = "fleet:service"
# Every gateway is in this group, so a revocation can find who holds a child's role.
GATEWAY_GROUP = "fleet-gateways"


def device_role(uid: str) -> str:
    """Return the name of the role that holds device ``uid``'s grants."""
    return f"device-{check_uid(uid)}"


def gateway_role(uid: str) -> str:
    """Return the name of the role that holds gateway ``uid``'s own grants (not its children's)."""
    return f"gateway-{check_uid(uid)}"


def gateway_grants(uid: str) -> tuple[Grant, ...]:
    """Return what gateway ``uid`` may do on its own behalf: publish its status, nothing more.

    The status is retained and carries the gateway's last will (the offline status). 2.0.11
    checks a will against the ACL when it publishes it, not at CONNECT, and silently drops a
    denied one. Everything else a gateway does, it does on its children's topics, through
    their roles.
    """
    return (Grant(Access.PUBLISH, device_topic(uid, "status")),)


def package_role(pkg: int) -> str:
    """Return the name of the role that lets its holders read package ``pkg``'s fan-out."""
    return f"fanout-{int(pkg)}"


def service_role(role: ServiceRole | str) -> str:
    """Return the name of the role shared by the services of ``role``."""
    return f"service-{ServiceRole(role).value}"


class DynsecAccess:
    """Broker admin over Mosquitto's dynamic security plugin (implements `BrokerAccess`).

    Thread-safe. Connects in the background and reconnects by itself; each operation
    waits up to ``timeout`` seconds for the broker and raises `BrokerUnavailable` after
    that. Every command sent is safe to repeat, so a batch lost with a connection is
    simply sent again.
    """

    def __init__(
        self,
        host: str,
        port: int,
        username: str,
        password: str,
        *,
        ca_certs: str | None = None,
        timeout: float = 5.0,
        bind_client_id: bool = True,
        client_id: str | None = None,
    ) -> None:
        self.username = username
        # Devices and gateways must connect with their uid as client id: otherwise one
        # device could take over another's session (same client id) and knock it off.
        self.bind_client_id = bind_client_id
        self._defaults_generation = -1
        self._package_roles: set[str] = set()  # fan-out roles known to exist
        self._channel = ControlChannel(
            host, port, username, password, ca_certs=ca_certs, timeout=timeout, client_id=client_id
        )

    @classmethod
    def from_url(cls, url: str, username: str, password: str, **kwargs: Any) -> DynsecAccess:
        """Connect to ``mqtt://host:port`` or ``mqtts://host:port`` (TLS needs ``ca_certs``)."""
        endpoint = BrokerEndpoint.parse(url)  # ValueError naming what is wrong with the URL
        return cls(endpoint.host, endpoint.port, username, password, **kwargs)

    # BrokerAccess ------------------------------------------------------------------------

    def provision_device(self, uid: str, password: str) -> None:
        """Let device ``uid`` log in with ``password`` and use its own topics only."""
        role = device_role(uid)
        self._ensure_defaults()
        self._ensure_roles({role: device_grants(uid)})
        self._upsert_client(uid, password, KIND_DEVICE, [role], uid)
        log.info("broker: device %s provisioned (role %s)", uid, role)

    def revoke_device(self, uid: str) -> None:
        """Delete device or gateway ``uid`` and its role; its connection closes at once."""
        role = device_role(uid)
        kind = self._client_kind(uid, allowed=(KIND_DEVICE, KIND_GATEWAY))
        # 2.0.11 crashes when a role is deleted while a client still holds it (mosquitto
        # issue #2660): take it from every gateway, and delete the device, before the role.
        holders = [gw for gw in self._gateways_holding(role) if gw != uid]
        commands: list[Command] = [
            {"command": "removeClientRole", "username": gw, "rolename": role} for gw in holders
        ]
        if kind is not None:
            commands.append({"command": "deleteClient", "username": uid})
        # Delete the role even without a client: a gateway child has only the role.
        commands.append({"command": "deleteRole", "rolename": role})
        if kind != KIND_DEVICE:
            # A gateway's own role, held by nobody once the client above is deleted.
            commands.append({"command": "deleteRole", "rolename": gateway_role(uid)})
        self._run(commands, benign=("not found",))
        if holders:
            log.info("broker: gateways %s no longer speak for %s", ", ".join(holders), uid)
        if kind is None:
            log.info("broker: device %s has no credential; its role is gone too", uid)
        else:
            log.info(
                "broker: %s %s revoked (credential deleted, any connection closed)",
                "gateway" if kind == KIND_GATEWAY else "device",
                uid,
            )

    def provision_service(self, username: str, password: str, role: ServiceRole | str) -> None:
        """Let a server-side identity log in with the rights of ``role`` on every device."""
        role = ServiceRole(role)
        if not username or username == self.username:
            raise ValueError(f"invalid service username {username!r}")
        name = service_role(role)
        self._ensure_defaults()
        self._ensure_roles({name: service_grants(role)})
        # No client id binding: several worker processes share one service identity.
        self._upsert_client(username, password, KIND_SERVICE, [name], None)
        log.info("broker: service %s provisioned as %s", username, role.value)

    def provision_gateway(self, uid: str, password: str, children: list[str]) -> None:
        """Let gateway ``uid`` use exactly its ``children``'s device topics and publish its own
        status (its last will), nothing else."""
        check_uid(uid)
        children = sorted({check_uid(child) for child in children})
        if uid in children:
            raise ValueError(f"gateway {uid} cannot be its own child")
        self._ensure_defaults()
        self._ensure_roles({
            gateway_role(uid): gateway_grants(uid),
            **{device_role(child): device_grants(child) for child in children},
        })
        roles = [gateway_role(uid)] + [device_role(child) for child in children]
        self._upsert_client(uid, password, KIND_GATEWAY, roles, uid)
        # The group lets a revocation find the gateways that hold a child's role.
        self._run(
            [
                {"command": "createGroup", "groupname": GATEWAY_GROUP},
                {"command": "addGroupClient", "groupname": GATEWAY_GROUP, "username": uid},
            ],
            benign=("already",),
        )
        log.info(
            "broker: gateway %s provisioned for %d children: %s",
            uid,
            len(children),
            ", ".join(children) or "none",
        )

    def add_gateway_children(self, uid: str, children: list[str]) -> None:
        """Let existing gateway ``uid`` also use ``children``'s device topics; keep its password.

        Adding a role makes the broker drop the gateway's connection once (administrative
        action); it logs in again with the same password and the new grants. Children it
        already has are left alone, so repeating the call changes nothing. A gateway made
        before gateways had their own role gets it here too.
        """
        check_uid(uid)
        children = sorted({check_uid(child) for child in children})
        if uid in children:
            raise ValueError(f"gateway {uid} cannot be its own child")
        held = self._gateway_roles(uid)
        grants = {gateway_role(uid): gateway_grants(uid)}
        grants.update({device_role(child): device_grants(child) for child in children})
        wanted = list(grants)
        missing = [role for role in wanted if role not in held]
        if not missing:
            return
        self._ensure_defaults()
        self._ensure_roles({role: grants[role] for role in missing})
        # 2.0.11 answers "Internal error" for a role the client already holds: a concurrent
        # call may have added it meanwhile, so such an answer is checked, not trusted.
        self._run(
            [{"command": "addClientRole", "username": uid, "rolename": role} for role in missing],
            benign=("Internal error",),
        )
        absent = set(wanted) - self._gateway_roles(uid)
        if absent:
            raise BrokerCommandError(f"gateway {uid} still lacks {', '.join(sorted(absent))}")
        log.info("broker: gateway %s now also holds %s", uid, ", ".join(missing))

    def grant_package(self, pkg: int, uids: list[str]) -> None:
        """Give each of ``uids`` the role ``fanout-<pkg>`` (made once, never changed).

        A role added to a client disconnects it once (2.0.11); it resumes its persistent
        session, where a queued offer waits. One command per identity, all in one batch;
        identities that are not clients (a gateway's child) are skipped.
        """
        role = package_role(pkg)
        if role not in self._package_roles:
            self._ensure_defaults()
            self._ensure_roles({role: package_grants(pkg)})
            self._package_roles.add(role)
        uids = sorted({check_uid(uid) for uid in uids})
        if uids:
            # "Internal error": the client holds the role already (see the module's facts).
            self._run([{"command": "addClientRole", "username": uid, "rolename": role}
                       for uid in uids], benign=("not found", "Internal error"))

    def revoke_package(self, pkg: int, uids: list[str]) -> None:
        """Take ``fanout-<pkg>`` from each of ``uids`` (disconnecting each once)."""
        role = package_role(pkg)
        uids = sorted({check_uid(uid) for uid in uids})
        if uids:
            self._run([{"command": "removeClientRole", "username": uid, "rolename": role}
                       for uid in uids], benign=("not found", "Internal error", "not have"))

    def ping(self) -> float:
        """Check the plugin answers commands; return the round trip in seconds."""
        start = time.monotonic()
        self._run([{"command": "getDefaultACLAccess"}])
        return time.monotonic() - start

    def close(self) -> None:
        """Disconnect from the broker and stop the network thread."""
        self._channel.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # Building blocks ---------------------------------------------------------------------

    def _run(self, commands: list[Command], benign: tuple[str, ...] = ()) -> list[Command]:
        """Execute commands; raise on any error but those containing a ``benign`` fragment."""
        responses = self._channel.execute(commands)
        for command, response in zip(commands, responses):
            if response_error(response) and not failed_with(response, *benign):
                target = next(
                    (command[k] for k in ("username", "rolename", "groupname") if k in command), ""
                )
                raise BrokerCommandError(
                    f"dynamic security refused {command['command']} {target}: "
                    f"{response_error(response)}"
                )
        return responses

    def _ensure_defaults(self) -> None:
        """Set deny-by-default once per connection (cheap, and survives a reset JSON)."""
        if self._defaults_generation == self._channel.generation:
            return
        self._run([{"command": "setDefaultACLAccess", "acls": DEFAULT_ACL_ACCESS}])
        self._defaults_generation = self._channel.generation

    def _ensure_roles(self, roles: dict[str, tuple[Grant, ...]]) -> None:
        """Create each role with exactly its grants, or bring an existing one in line."""
        if not roles:
            return
        created = self._run(
            [
                {"command": "createRole", "rolename": name, "acls": [_acl(g) for g in grants]}
                for name, grants in roles.items()
            ],
            benign=("already exists",),
        )
        existing = [name for name, response in zip(roles, created) if response_error(response)]
        if not existing:
            return
        current = self._run([{"command": "getRole", "rolename": name} for name in existing])
        fixes: list[Command] = []
        for name, response in zip(existing, current):
            fixes += _role_fixes(name, response["data"]["role"].get("acls", []), roles[name])
        if fixes:
            # Changing a role disconnects its holders, so touch it only when it differs.
            log.info("broker: updating %d ACL entries of %s", len(fixes), ", ".join(existing))
            self._run(fixes, benign=("already exists", "not found"))

    def _upsert_client(
        self, username: str, password: str, kind: str, roles: list[str], clientid: str | None
    ) -> None:
        """Create a client, or reset the password, roles and client id of one we made."""
        if not password:
            raise ValueError(f"empty password for {username}")
        if username == self.username:
            raise BrokerCommandError(f"{username!r} is the broker admin: refusing to change it")
        bound = clientid if self.bind_client_id else None
        role_list = [{"rolename": role} for role in roles]
        create: Command = {
            "command": "createClient",
            "username": username,
            "password": password,
            "textname": kind,
            "roles": role_list,
        }
        if bound:
            create["clientid"] = bound
        [response] = self._run([create], benign=("already exists",))
        if not response_error(response):
            return
        self._client_kind(username, allowed=(kind,))
        # modifyClient disconnects a connected client; it comes back with the new password.
        self._run(
            [
                {
                    "command": "modifyClient",
                    "username": username,
                    "password": password,
                    "textname": kind,
                    "roles": role_list,
                    "clientid": bound or "",
                },
                {"command": "enableClient", "username": username},
            ]
        )

    def _gateways_holding(self, role: str) -> list[str]:
        """Return the gateways that hold ``role``: two round trips, whatever the fleet size."""
        [group] = self._run(
            [{"command": "getGroup", "groupname": GATEWAY_GROUP}], benign=("not found",)
        )
        if response_error(group):
            return []
        gateways = [c["username"] for c in group["data"]["group"].get("clients", [])]
        if not gateways:
            return []
        clients = self._run(
            [{"command": "getClient", "username": gw} for gw in gateways], benign=("not found",)
        )
        return [
            gw
            for gw, client in zip(gateways, clients)
            if not response_error(client)
            and any(r.get("rolename") == role for r in client["data"]["client"].get("roles", []))
        ]

    def _gateway_roles(self, uid: str) -> set[str]:
        """Return the roles gateway ``uid`` holds; refuse a missing or non-gateway client."""
        [response] = self._run([{"command": "getClient", "username": uid}], benign=("not found",))
        if response_error(response):
            raise BrokerCommandError(f"no gateway {uid!r} at the broker: provision it first")
        client = response["data"]["client"]
        if client.get("textname") != KIND_GATEWAY:
            raise BrokerCommandError(
                f"broker user {uid!r} is a {client.get('textname') or 'non-fleet'} identity, "
                "not a gateway: refusing to change it"
            )
        return {r["rolename"] for r in client.get("roles", []) if "rolename" in r}

    def _client_kind(self, username: str, allowed: tuple[str, ...]) -> str | None:
        """Return the kind of an existing client (None if absent); refuse foreign ones."""
        [response] = self._run(
            [{"command": "getClient", "username": username}], benign=("not found",)
        )
        if response_error(response):
            return None
        kind = response["data"]["client"].get("textname")
        if kind not in allowed:
            raise BrokerCommandError(
                f"broker user {username!r} exists but is a {kind or 'non-fleet'} identity, "
                f"not {' or '.join(allowed)}: refusing to change it"
            )
        return str(kind)


def _acl(grant: Grant) -> Command:
    return {"acltype": _ACLTYPE[grant.access], "topic": grant.topic, "allow": True, "priority": 0}


def _role_fixes(name: str, current: list[Command], grants: tuple[Grant, ...]) -> list[Command]:
    """Return the commands that make role ``name``'s ACLs exactly ``grants``."""
    wanted = {(_ACLTYPE[g.access], g.topic) for g in grants}
    have = {(acl["acltype"], acl["topic"]): acl for acl in current}
    fixes: list[Command] = []
    for key, acl in have.items():
        if key not in wanted or not acl.get("allow") or acl.get("priority", 0) != 0:
            fixes.append(
                {"command": "removeRoleACL", "rolename": name, "acltype": key[0], "topic": key[1]}
            )
    for key in sorted(wanted):
        acl = have.get(key)
        if acl is None or not acl.get("allow") or acl.get("priority", 0) != 0:
            fixes.append(
                {
                    "command": "addRoleACL",
                    "rolename": name,
                    "acltype": key[0],
                    "topic": key[1],
                    "allow": True,
                    "priority": 0,
                }
            )
    return fixes
