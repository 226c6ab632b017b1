"""The keystone-multiregion policies: plain functions and the Policy objects that wrap them.

Importing this module starts nothing. `PolicyPack(...)` starts the analyzer's gRPC server
and blocks, so only `__main__.py` builds it; tests import the functions from here.

Every violation message names the resource (its Pulumi logical name) and says how to fix
it. The SDK puts the policy's description in front of each message.

Values the engine does not know yet (an id during the preview of a new stack) are read
through `plain()`, which turns them into `UNKNOWN` instead of raising. A policy that
needs such a value to decide raises the SDK's `UnknownValueError`, and the SDK reports
its usual advisory "can't run policy ... during preview"; the same policy runs again with
the real values during `pulumi up`.
"""

from __future__ import annotations

import base64
import binascii
import copy
import ipaddress
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Iterable, Optional, Union
from urllib.parse import urlsplit

from pulumi_policy import (
    EnforcementLevel,
    PolicyConfigSchema,
    PolicyResource,
    ReportViolation,
    ResourceValidationArgs,
    ResourceValidationPolicy,
    StackValidationArgs,
    StackValidationPolicy,
)
# Not re-exported by the package, but it is the exception its proxies raise for values
# unknown during preview, and the one its servicer turns into its standard advisory.
from pulumi_policy.proxy import UNKNOWN_STRING_VALUE, UnknownValueError

PACK_NAME = "keystone-multiregion"

SECGROUP = "openstack:networking/secGroup:SecGroup"
SECGROUP_RULE = "openstack:networking/secGroupRule:SecGroupRule"
INSTANCE = "openstack:compute/instance:Instance"
SERVER_GROUP = "openstack:compute/serverGroup:ServerGroup"
VOLUME = "openstack:blockstorage/volume:Volume"
VOLUME_ATTACH = "openstack:compute/volumeAttach:VolumeAttach"
PORT = "openstack:networking/port:Port"
FLOATING_IP = "openstack:networking/floatingIp:FloatingIp"
FLOATING_IP_ASSOCIATE = "openstack:networking/floatingIpAssociate:FloatingIpAssociate"
ENDPOINT = "openstack:identity/endpointV3:EndpointV3"
REMOTE_COMMAND = "command:remote:Command"
CONTAINER = "openstack:objectstorage/container:Container"

# The metadata key components/nodes.py puts on every VM, and the roles it writes there.
ROLE_KEY = "keystone-multiregion-role"
REGION_KEY = "keystone-multiregion-region"
CONTROL_PLANE_ROLES = ("proxy", "galera", "keystone", "memcached", "arbitrator", "replica")
# Roles whose VMs hold the database: Galera members and a replica region's replicas.
DATABASE_ROLES = ("galera", "replica")
# Roles whose VMs hold state (components/nodes.py STATEFUL_ROLES; tests/test_policy.py
# checks the two are the same): never rebuilt because their cloud-init changed.
STATEFUL_ROLES = ("galera", "arbitrator", "replica")
# The push of a node's files (components/push.py names it files-<node>); a node may have
# other remote commands tied to the same VM (the Keystone key push, keys-<node>).
FILES_PUSH_PREFIX = "files-"

# Ports that only peers may reach (tests/test_policy.py checks them against
# keystone_multiregion.security.PORTS and the proxy's monitor port, so the tables cannot
# drift apart).
SERVICE_PORTS = {
    3306: "MySQL client",
    4567: "Galera replication",
    4568: "Galera IST",
    4444: "Galera SST",
    9200: "Galera health check",
    11211: "memcached",
    5000: "Keystone internal endpoint, plain HTTP",
    8404: "HAProxy monitor",
    9104: "mysqld_exporter (Prometheus)",
    9100: "node_exporter (Prometheus)",
    8405: "HAProxy's Prometheus exporter",
}
SSH_PORT = 22
HTTPS_PORT = 443
# IP protocol number of VRRP (keepalived between the proxies): whoever can send it can
# take the VIPs over. Neutron accepts the name too.
VRRP_PROTOCOL = "112"

# Nova refuses user data longer than 65535 bytes once base64-encoded.
NOVA_USER_DATA_LIMIT = 65535
DEFAULT_USER_DATA_WARN_FRACTION = 0.75

# Protocol names and numbers that carry ports; anything else (icmp, vrrp/112) has none.
_PORT_PROTOCOLS = {"tcp", "udp", "sctp", "udplite", "dccp", "6", "17", "132", "136", "33"}
_ANY_PROTOCOL = {"", "any", "0"}
_PROTOCOL_NAMES = {"vrrp": VRRP_PROTOCOL}
_VERSION_SEGMENT = re.compile(r"^v\d+(\.\d+)*$", re.IGNORECASE)


Network = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]


# --- reading values that may be unknown --------------------------------------------------

class _Unknown:
    """A value the engine does not know yet (printed as <unknown>)."""

    def __repr__(self) -> str:
        return "<unknown>"


UNKNOWN = _Unknown()


def plain(value: Any) -> Any:
    """The SDK's proxied properties as plain dicts and lists, unknowns as UNKNOWN."""
    if isinstance(value, Mapping):
        out = {}
        for key in value:
            try:
                out[key] = plain(value[key])
            except UnknownValueError:
                out[key] = UNKNOWN
        return out
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        items = []
        for i in range(len(value)):
            try:
                items.append(plain(value[i]))
            except UnknownValueError:
                items.append(UNKNOWN)
        return items
    return value


def _needs(resource: str, prop: str) -> UnknownValueError:
    """The SDK's own exception for a value this policy needs but preview cannot know."""
    return UnknownValueError(UNKNOWN_STRING_VALUE, [resource, prop])


def _list(value: Any) -> list:
    if value is None:
        return []
    if isinstance(value, list):
        return value
    return [value]


# --- security group rules ----------------------------------------------------------------

def _port_range(props: dict) -> tuple[int, int]:
    low, high = props.get("portRangeMin"), props.get("portRangeMax")
    low = int(low) if isinstance(low, (int, float)) and low else None
    high = int(high) if isinstance(high, (int, float)) and high else None
    if low is None and high is None:
        return 1, 65535  # Neutron: no range means every port
    return (low or 1), (high or low)


def _protocol(props: dict) -> str:
    """The rule's protocol, lower case; a number without leading zeros ("006" is "6"), and
    VRRP always as its number."""
    proto = props.get("protocol")
    proto = "" if proto is None else str(proto).strip().lower()
    if proto.isdigit():
        proto = str(int(proto))
    return _PROTOCOL_NAMES.get(proto, proto)


def _ingress(name: str, props: dict) -> bool:
    direction = props.get("direction", "ingress")
    if direction is UNKNOWN:
        raise _needs(name, "direction")
    return str(direction).lower() == "ingress"


def _rule_ports(name: str, props: dict) -> Optional[tuple[int, int]]:
    """The ports an ingress rule opens, or None when it opens none (egress, icmp, vrrp)."""
    if not _ingress(name, props):
        return None
    proto = props.get("protocol")
    if proto is UNKNOWN:
        raise _needs(name, "protocol")
    proto = _protocol(props)
    if proto not in _ANY_PROTOCOL and proto not in _PORT_PROTOCOLS:
        return None
    if proto in _ANY_PROTOCOL:
        return 1, 65535  # every protocol, so every port
    for key in ("portRangeMin", "portRangeMax"):
        if props.get(key) is UNKNOWN:
            raise _needs(name, key)
    return _port_range(props)


def _source(name: str, props: dict) -> tuple[str, Optional[Network]]:
    """Where a rule lets traffic in from: (description, network or None for a group)."""
    prefix = props.get("remoteIpPrefix")
    if prefix is UNKNOWN:
        raise _needs(name, "remoteIpPrefix")
    if prefix:
        try:
            return str(prefix), ipaddress.ip_network(str(prefix).strip(), strict=False)
        except ValueError:
            return str(prefix), None
    for key, what in (("remoteGroupId", "security group"), ("remoteAddressGroupId", "address group")):
        value = props.get(key)
        if value is UNKNOWN:
            return f"a {what}", None
        if value:
            return f"{what} {value}", None
    # Neutron: no remote at all admits every address of the rule's ethertype.
    world = "::/0" if str(props.get("ethertype", "IPv4")).lower() == "ipv6" else "0.0.0.0/0"
    return f"anywhere (no remote_ip_prefix, i.e. {world})", ipaddress.ip_network(world)


def _describe_rule(props: dict, ports: Optional[tuple[int, int]]) -> str:
    proto = _protocol(props)
    if proto in _ANY_PROTOCOL:
        return "every protocol and port"
    if proto == VRRP_PROTOCOL:
        return f"IP protocol {VRRP_PROTOCOL} (VRRP)"
    if ports is None:
        return proto if not proto.isdigit() else f"IP protocol {proto}"
    low, high = ports
    return f"{proto} {low if low == high else f'{low}-{high}'}"


# --- the world ------------------------------------------------------------------------------
# "The world" is every address outside the deployment's own networks: the regions' CIDRs
# and the admin CIDR (topology.yaml). A rule whose remote prefix is not inside one of them
# faces the world, whatever its prefix length: 0.0.0.0/1 and 128.0.0.0/1 are the internet
# in two halves, 2000::/3 is every global IPv6 address, 10.0.0.0/8 is more than a region.

def parse_trusted(cidrs: Optional[Iterable[str]]) -> Optional[list[Network]]:
    """The trusted networks as ipaddress networks; None when the pack knows none. A value
    that is not a CIDR raises ValueError naming it."""
    if cidrs is None:
        return None
    out = []
    for c in cidrs:
        try:
            out.append(ipaddress.ip_network(str(c).strip(), strict=False))
        except ValueError:
            raise ValueError(f"trustedCidrs: {c!r} is not a CIDR; give the regions' networks and the admin "
                             "network, e.g. [\"10.10.1.0/24\", \"198.51.100.0/24\"]") from None
    return out


def _world_source(name: str, props: dict, trusted: Optional[list[Network]]) -> Optional[str]:
    """Where an ingress rule admits traffic from, when that reaches beyond the trusted
    networks; None when every address it admits is inside them (or in a security group of
    the project)."""
    source, network = _source(name, props)
    if network is not None:
        inside = any(network.version == t.version and network.subnet_of(t) for t in trusted or [])
        return None if inside else source
    group = props.get("remoteGroupId")
    if not props.get("remoteIpPrefix") and (group is UNKNOWN or group):
        return None  # the members of a security group: the project's own ports
    # An address group (whose addresses the pack cannot see), or a prefix that is no network.
    return f"{source} (which may hold any address)"


def _beyond(trusted: Optional[list[Network]]) -> str:
    if trusted is None:
        return ("outside the regions' networks and the admin network (this pack knows no regions' networks, "
                "so every address counts: set trustedCidrs in the policy's config, or run the pack next to "
                "the project's topology.yaml)")
    return f"outside the regions' networks and the admin network ({', '.join(map(str, trusted))})"


def _guarded(props: dict, ports: Optional[tuple[int, int]]) -> list[str]:
    """What of the peers-only list a rule opens: ports in its range, and VRRP."""
    hit = []
    if ports is not None:
        hit += [f"{p} ({label})" for p, label in sorted(SERVICE_PORTS.items()) if ports[0] <= p <= ports[1]]
    if _protocol(props) in _ANY_PROTOCOL | {VRRP_PROTOCOL}:
        hit.append(f"IP protocol {VRRP_PROTOCOL} (VRRP)")
    return hit


def _world_opening(name: str, props: dict, trusted: Optional[list[Network]]):
    """(source, ports or None) of an ingress rule that faces the world, else None."""
    if not _ingress(name, props):
        return None
    if props.get("protocol") is UNKNOWN:
        raise _needs(name, "protocol")
    source = _world_source(name, props, trusted)
    if source is None:
        return None
    return source, _rule_ports(name, props)


def check_service_ports_not_world_open(name: str, props: dict, trusted: Optional[list[Network]],
                                       report: ReportViolation) -> None:
    """No ingress rule from beyond the regions' and admin networks opens a peers-only port
    (database, replication, SST, health check, memcached, Keystone's plain-HTTP internal
    endpoint, HAProxy's monitor) or VRRP."""
    opened = _world_opening(name, props, trusted)
    if opened is None:
        return
    source, ports = opened
    hit = _guarded(props, ports)
    if hit:
        report(f"security group rule '{name}' lets {_describe_rule(props, ports)} in from {source}, "
               f"{_beyond(trusted)}, which opens {', '.join(hit)} to the world. Fix: set remote_ip_prefix to "
               "the peers that need it (the Galera nodes' /32s, the local proxies or Keystone nodes, the "
               "other proxy of the pair for VRRP, as keystone_multiregion/security.py computes them), inside "
               "the regions' networks; never "
               "0.0.0.0/0, ::/0 or any other prefix reaching beyond them (only tcp 443 may face the world).")


def check_ssh_only_from_admin(name: str, props: dict, admin_cidr: Optional[str], report: ReportViolation) -> None:
    """SSH (tcp 22) only from the admin CIDR."""
    ports = _rule_ports(name, props)
    if ports is None or not ports[0] <= SSH_PORT <= ports[1]:
        return
    if not admin_cidr:
        report(f"security group rule '{name}' allows SSH but the policy pack knows no admin CIDR. Fix: set "
               "admin_cidr in topology.yaml next to the pack, or adminCidr in this policy's config "
               "(pulumi preview --policy-pack policy --policy-pack-config FILE).")
        return
    admin = ipaddress.ip_network(admin_cidr, strict=False)
    source, network = _source(name, props)
    if network is not None and network.version == admin.version and network.subnet_of(admin):
        return
    report(f"security group rule '{name}' lets SSH ({_describe_rule(props, ports)}) in from {source}; "
           f"only the admin CIDR {admin} may reach port 22. Fix: set remote_ip_prefix to {admin} "
           "(admin_cidr in topology.yaml) or remove the rule.")


def check_world_open_only_https(name: str, props: dict, trusted: Optional[list[Network]],
                                report: ReportViolation) -> None:
    """Advisory: the only thing the world should reach is HTTPS (tcp 443) on the proxies."""
    opened = _world_opening(name, props, trusted)
    if opened is None:
        return
    source, ports = opened
    if ports == (HTTPS_PORT, HTTPS_PORT) and _protocol(props) in ("tcp", "6"):
        return
    # Peers-only ports, VRRP and SSH have mandatory policies of their own; this one catches the rest.
    if _guarded(props, ports) or (ports is not None and ports[0] <= SSH_PORT <= ports[1]):
        return
    report(f"security group rule '{name}' lets {_describe_rule(props, ports)} in from {source}, "
           f"{_beyond(trusted)}. The public endpoint is tcp 443 on the proxies; anything else open to the "
           "world is probably a mistake. Fix: narrow remote_ip_prefix to the networks that need it.")


# --- catalog endpoints ---------------------------------------------------------------------

def check_endpoint_url(name: str, props: dict, report: ReportViolation) -> None:
    """Catalog endpoint URLs carry no API version, and public ones use https."""
    url = props.get("url")
    if url is UNKNOWN:
        raise _needs(name, "url")
    interface = props.get("interface")
    if interface is UNKNOWN:
        raise _needs(name, "interface")
    interface = str(interface or "public").lower()  # the provider's default is public
    parts = urlsplit(str(url or ""))
    if not parts.scheme or not parts.netloc:
        report(f"catalog endpoint '{name}' has url {url!r}, which is not an absolute URL. "
               f"Fix: use https://<public_hostname> of the region (topology.yaml).")
        return
    segments = [s for s in parts.path.split("/") if s]
    versions = [s for s in segments if _VERSION_SEGMENT.match(s)]
    path = "".join(f"/{s}" for s in segments if not _VERSION_SEGMENT.match(s))
    if versions:
        report(f"catalog endpoint '{name}' ({interface}) has url {url} with the API version "
               f"/{'/'.join(versions)} in its path: clients discover the version themselves, and a "
               "versioned catalog breaks when the version changes. "
               f"Fix: set url to {parts.scheme}://{parts.netloc}{path}.")
    if interface == "public" and parts.scheme.lower() != "https":
        report(f"catalog endpoint '{name}' is public but its url {url} uses {parts.scheme}: passwords and "
               "tokens would cross the internet in clear text. "
               f"Fix: set url to https://{parts.netloc}{path} (the proxies terminate TLS on 443).")


# --- SSH pushes (pulumi-command) --------------------------------------------------------------

def check_remote_command_pins_host_key(name: str, props: dict, report: ReportViolation) -> None:
    """A remote command (the key push) verifies the host it connects to: without a pinned
    host key, Fernet keys could be handed to whoever answers on that address."""
    conn = props.get("connection")
    if conn is UNKNOWN:
        raise _needs(name, "connection")
    host_key = (conn or {}).get("hostKey")
    if host_key is UNKNOWN:
        raise _needs(name, "connection.hostKey")
    if not host_key:
        report(f"remote command '{name}' connects to {(conn or {}).get('host')!r} without a pinned host key, so "
               "it trusts whichever host answers there and would hand it what it sends (the Keystone keys). "
               "Fix: set connection.hostKey (components/keys.py pins the host key each node's cloud-init "
               "installs).")


def check_bastion_pins_host_key(name: str, props: dict, report: ReportViolation) -> None:
    """Advisory: a bastion (connection.proxy) is verified too."""
    conn = props.get("connection")
    if conn is UNKNOWN or not isinstance(conn, dict):
        return
    proxy = conn.get("proxy")
    if not isinstance(proxy, dict) or proxy.get("hostKey") is UNKNOWN:
        return
    if not proxy.get("hostKey"):
        report(f"remote command '{name}' goes through the bastion {proxy.get('host')!r} without pinning its "
               "host key. Fix: `pulumi config set sshBastionHostKey \"ssh-ed25519 AAAA...\"` (the bastion's "
               "/etc/ssh/ssh_host_ed25519_key.pub).")


# --- instances -----------------------------------------------------------------------------

def check_user_data_size(name: str, props: dict, warn_fraction: float, report: ReportViolation) -> None:
    """Advisory: user data close to Nova's limit (65535 bytes, base64-encoded)."""
    user_data = props.get("userData")
    if user_data is UNKNOWN or not isinstance(user_data, str):
        return
    raw = len(user_data.encode())
    # As gophercloud sends it: a value that is base64 already (the stacks send gzip + base64)
    # goes as it is, anything else is base64-encoded first.
    try:
        base64.b64decode(user_data, validate=True)
        encoded = raw
    except (binascii.Error, ValueError):
        encoded = 4 * math.ceil(raw / 3)
    if encoded <= warn_fraction * NOVA_USER_DATA_LIMIT:
        return
    share = 100 * encoded / NOVA_USER_DATA_LIMIT
    state = ("exceeds Nova's limit: the instance cannot be created" if encoded > NOVA_USER_DATA_LIMIT
             else "is close to Nova's limit")
    report(f"instance '{name}' has {raw} bytes of user data, {encoded} as sent ({share:.0f}% of "
           f"{NOVA_USER_DATA_LIMIT}): it {state}. Fix: keep large files out of cloud-init (smaller "
           "templates, or fetch them at boot) before a template change pushes it over.")


# --- stack-level helpers ---------------------------------------------------------------------

class StackView:
    """The resources of one stack with their properties as plain data, and references between
    them resolved by property dependency (known even during preview) or by id."""

    def __init__(self, resources: Iterable[PolicyResource]):
        self.resources = list(resources)
        self.props = {r.urn: plain(r.props) for r in self.resources}
        self.by_id: dict[str, PolicyResource] = {}
        for r in self.resources:
            rid = self.props[r.urn].get("id")
            if isinstance(rid, str) and rid:
                self.by_id[rid] = r

    def of_type(self, typ: str) -> list[PolicyResource]:
        return [r for r in self.resources if r.resource_type == typ]

    def get(self, r: PolicyResource) -> dict:
        return self.props[r.urn]

    def role(self, instance: PolicyResource) -> Any:
        metadata = self.get(instance).get("metadata")
        if metadata is UNKNOWN:
            return UNKNOWN
        return (metadata or {}).get(ROLE_KEY)

    def refs(self, r: PolicyResource, prop: str, values: Iterable[Any], typ: str) -> tuple[list[PolicyResource], list]:
        """Resources of `typ` that property `prop` of `r` refers to, and the values that
        could not be resolved (UNKNOWN, or an id of something outside this stack)."""
        found: dict[str, PolicyResource] = {}
        unresolved = []
        for value in values:
            target = self.by_id.get(value) if isinstance(value, str) else None
            if target is not None and target.resource_type == typ:
                found[target.urn] = target
            else:
                unresolved.append(value)
        if unresolved:
            deps = [d for d in (r.property_dependencies or {}).get(prop, []) if d.resource_type == typ]
            if deps:
                for d in deps:
                    found[d.urn] = d
                unresolved = []
        return list(found.values()), unresolved


def _server_group_policies(props: dict) -> list[str]:
    return [str(p).lower() for p in _list(props.get("policies")) if p is not UNKNOWN]


def check_anti_affinity(view: StackView, report: ReportViolation) -> None:
    """Every control-plane instance belongs to an anti-affinity server group."""
    pending = []
    for inst in view.of_type(INSTANCE):
        role = view.role(inst)
        if isinstance(role, str) and role not in CONTROL_PLANE_ROLES:
            continue  # explicitly not a control-plane node
        # No role metadata (or an unknown one): every VM of this project is control plane.
        what = f"{role} node" if isinstance(role, str) else "control-plane instance"
        hints = view.get(inst).get("schedulerHints")
        values = ([UNKNOWN] if hints is UNKNOWN else
                  [h.get("group") if isinstance(h, dict) else UNKNOWN for h in _list(hints)])
        values = [v for v in values if v]
        if not values:
            report(f"{what} '{inst.name}' has no scheduler hint group, so Nova may put it on the same "
                   "hypervisor as its peers and one host failure takes several down. Fix: create an "
                   "openstack.compute.ServerGroup with policies='anti-affinity' for the role and pass "
                   "scheduler_hints=[{'group': group.id}] (components/nodes.py NodeGroup).", inst.urn)
            continue
        groups, unresolved = view.refs(inst, "schedulerHints", values, SERVER_GROUP)
        if any("anti-affinity" in _server_group_policies(view.get(g)) for g in groups):
            continue
        if groups:
            names = ", ".join(f"'{g.name}' ({'/'.join(_server_group_policies(view.get(g))) or 'no policy'})"
                              for g in groups)
            report(f"{what} '{inst.name}' is in server group {names}, not an anti-affinity one; "
                   "soft-anti-affinity and affinity let Nova stack nodes of a role on one host. Fix: "
                   "policies='anti-affinity' on the role's ServerGroup.", inst.urn)
        elif any(v is UNKNOWN for v in unresolved):
            pending.append(inst.name)  # decided during `pulumi up`, when the id is known
        else:
            report(f"{what} '{inst.name}' has scheduler hint group {', '.join(map(str, unresolved))}, which "
                   "is not a server group of this stack, so its policy cannot be checked. Fix: create the "
                   "ServerGroup (policies='anti-affinity') in this stack and pass its id.", inst.urn)
    if pending:
        raise _needs(pending[0], "schedulerHints")


def _instance_ports(view: StackView, inst: PolicyResource) -> tuple[list[PolicyResource], list]:
    networks = view.get(inst).get("networks")
    if networks is UNKNOWN:
        return view.refs(inst, "networks", [UNKNOWN], PORT)
    values = [n.get("port") if isinstance(n, dict) else UNKNOWN for n in _list(networks)]
    return view.refs(inst, "networks", [v for v in values if v], PORT)


def _port_groups(view: StackView, port: PolicyResource) -> tuple[dict[str, str], bool]:
    """Security groups of a port as {key: display name}; True when some are unknown."""
    ids = view.get(port).get("securityGroupIds")
    values = [UNKNOWN] if ids is UNKNOWN else list(_list(ids))
    groups, unresolved = view.refs(port, "securityGroupIds", values, SECGROUP)
    keys = {g.urn: f"'{g.name}'" for g in groups}
    for v in unresolved:
        if v is not UNKNOWN:
            keys[f"id:{v}"] = f"id {v}"
    return keys, any(v is UNKNOWN for v in unresolved)


def _instance_groups_by_name(view: StackView, inst: PolicyResource) -> dict[str, str]:
    names = view.get(inst).get("securityGroups")
    if names is UNKNOWN:
        return {}
    by_name = {view.get(g).get("name"): g for g in view.of_type(SECGROUP)}
    keys = {}
    for n in _list(names):
        if n is UNKNOWN:
            continue
        g = by_name.get(n)
        keys[g.urn if g is not None else f"name:{n}"] = f"'{g.name}'" if g is not None else f"'{n}'"
    return keys


def check_galera_groups_not_public(view: StackView, report: ReportViolation) -> None:
    """No Galera node's security group is shared with the public-facing proxies."""
    instances = view.of_type(INSTANCE)
    galera = [i for i in instances if view.role(i) in DATABASE_ROLES]
    if not galera:
        return
    unknown = []
    # Public-facing: the proxies' VMs and every port that carries a floating IP (the VIPs).
    public: dict[str, list[str]] = {}  # group key -> what carries it

    def add_public(keys: dict[str, str], what: str) -> None:
        for key in keys:
            public.setdefault(key, []).append(what)

    for inst in instances:
        if view.role(inst) != "proxy":
            continue
        add_public(_instance_groups_by_name(view, inst), f"proxy '{inst.name}'")
        ports, _ = _instance_ports(view, inst)
        for port in ports:
            add_public(_port_groups(view, port)[0], f"proxy port '{port.name}'")
    for assoc in view.of_type(FLOATING_IP_ASSOCIATE) + view.of_type(FLOATING_IP):
        port_id = view.get(assoc).get("portId")
        if not port_id:
            continue
        ports, _ = view.refs(assoc, "portId", [port_id], PORT)
        for port in ports:
            add_public(_port_groups(view, port)[0], f"port '{port.name}' (floating IP '{assoc.name}')")

    for inst in galera:
        keys = dict(_instance_groups_by_name(view, inst))
        ports, unresolved = _instance_ports(view, inst)
        if any(v is UNKNOWN for v in unresolved):
            unknown.append((inst.name, "networks"))
        for port in ports:
            port_keys, partial = _port_groups(view, port)
            if partial:
                unknown.append((port.name, "securityGroupIds"))
            keys.update(port_keys)
        for key, shown in keys.items():
            if key in public:
                sharers = ", ".join(sorted(set(public[key])))
                report(f"Galera node '{inst.name}' is in security group {shown}, which is also on the "
                       f"public-facing {sharers}: a rule opened for the proxies (443 is open to the world) "
                       "would reach the database too. Fix: give the Galera nodes a group of their own "
                       "(components/security.py creates one per role) and keep it off the proxies and "
                       "the VIP ports.", inst.urn)
    if unknown:
        raise _needs(*unknown[0])


def check_galera_volumes_protected(view: StackView, report: ReportViolation) -> None:
    """Galera data volumes are protected."""
    galera_volumes: dict[str, tuple[PolicyResource, str]] = {}
    instances = {i.urn: i for i in view.of_type(INSTANCE)}
    for inst in instances.values():
        if view.role(inst) not in DATABASE_ROLES:
            continue
        devices = view.get(inst).get("blockDevices")
        values = ([UNKNOWN] if devices is UNKNOWN else
                  [d.get("uuid") for d in _list(devices) if isinstance(d, dict)
                   and (d.get("sourceType") == "volume" or d.get("destinationType") == "volume")])
        volumes, _ = view.refs(inst, "blockDevices", [v for v in values if v], VOLUME)
        for vol in volumes:
            galera_volumes[vol.urn] = (vol, f"attached to Galera node '{inst.name}'")
    for attach in view.of_type(VOLUME_ATTACH):
        props = view.get(attach)
        insts, _ = view.refs(attach, "instanceId", [props.get("instanceId")], INSTANCE)
        if any(view.role(i) in DATABASE_ROLES for i in insts):
            vols, _ = view.refs(attach, "volumeId", [props.get("volumeId")], VOLUME)
            for vol in vols:
                galera_volumes[vol.urn] = (vol, f"attached to a Galera node by '{attach.name}'")
    for vol in view.of_type(VOLUME):
        props = view.get(vol)
        text = " ".join(str(x) for x in (vol.name, props.get("name"), props.get("description")) if isinstance(x, str))
        if "galera" in text.lower():
            galera_volumes.setdefault(vol.urn, (vol, "named as Galera data"))
    for vol, why in galera_volumes.values():
        if not vol.opts.protect:
            report(f"volume '{vol.name}' ({why}) holds a Galera database but is not protected, so a "
                   "replacement or `pulumi destroy` would delete the data. Fix: "
                   "opts=ResourceOptions(protect=True, retain_on_delete=True) on the volume "
                   "(components/nodes.py).", vol.urn)


# --- the database backups (topology `backup:`) --------------------------------------------------

def check_backup_containers(view: StackView, backup: Optional[Mapping], report: ReportViolation) -> None:
    """Every Swift container of the stack is protected and not force-destroyable (the
    program creates containers only for backups); and, when the pack knows the topology's
    backups, a region stack with Galera nodes has its region's container."""
    containers = view.of_type(CONTAINER)
    for c in containers:
        props = view.get(c)
        if not c.opts.protect:
            report(f"Swift container '{c.name}' ({props.get('name')!r}) holds database backups but is not "
                   "protected, so a `pulumi up` that renames or drops it (or `pulumi destroy`) would delete "
                   "it. Fix: opts=ResourceOptions(protect=True, retain_on_delete=True) on the container "
                   "(components/backup.py).", c.urn)
        if props.get("forceDestroy") is True:
            report(f"Swift container '{c.name}' ({props.get('name')!r}) has force_destroy=true: deleting it "
                   "would delete every backup in it first. Fix: force_destroy=False (components/backup.py).",
                   c.urn)
    expected = (backup or {}).get("containers") or {}
    if not expected:
        return  # the pack knows no backups (a topology without backup:, or no topology)
    regions: dict[str, PolicyResource] = {}
    for inst in view.of_type(INSTANCE):
        metadata = view.get(inst).get("metadata")
        if metadata is UNKNOWN:
            raise _needs(inst.name, "metadata")
        if (metadata or {}).get(ROLE_KEY) == "galera" and isinstance((metadata or {}).get(REGION_KEY), str):
            regions.setdefault(metadata[REGION_KEY], inst)
    for region, inst in sorted(regions.items()):
        want = expected.get(region)
        if not isinstance(want, Mapping) or not want.get("container"):
            continue  # a region the topology holds no backups for
        names = [view.get(c).get("name") for c in containers]
        if UNKNOWN in names and want["container"] not in names:
            raise _needs(region, "container name")
        found = [c for c in containers if view.get(c).get("name") == want["container"]]
        if not found:
            report(f"the stack of region {region} (Galera node '{inst.name}') has no Swift container "
                   f"{want['container']!r}, where the topology's backup: sends that region's backups (and the "
                   "previous region's copies): they would fail. Fix: create it, protected, in the region stack "
                   "(components/backup.py backup_container, called by components/region.py).", inst.urn)
            continue
        where = view.get(found[0]).get("region")
        if want.get("region") and isinstance(where, str) and where and where != want["region"]:
            report(f"Swift container '{found[0].name}' ({want['container']!r}) is in cloud region {where!r}, "
                   f"but region {region}'s Galera nodes look for it in {want['region']!r} (openstack_region in "
                   "topology.yaml). Fix: region=<the region's openstack_region> (components/backup.py).",
                   found[0].urn)


def check_backup_store_https(name: str, backup: Optional[Mapping], report: ReportViolation) -> None:
    """Advisory: the backups' object store is reached over https (its credentials and a token
    go with every request), unless the store sits inside the admin network."""
    url = (backup or {}).get("authUrl")
    if not isinstance(url, str) or urlsplit(url).scheme.lower() != "http":
        return
    store, admin = (backup or {}).get("storeCidr"), (backup or {}).get("adminCidr")
    try:
        if store and admin and ipaddress.ip_network(store, strict=False).subnet_of(
                ipaddress.ip_network(admin, strict=False)):
            return  # the operator's own admin network (the lab's object store)
    except (ValueError, TypeError):
        pass
    report(f"Swift container '{name}' receives backups through the object store at {url}, plain http: the "
           "store's credentials and its tokens cross the network in clear text (the backups themselves are "
           "encrypted on the node). Fix: an https auth_url in backup.store of topology.yaml, or an object store "
           "inside admin_cidr (backup.store.cidr).")


# --- one node of a role at a time ----------------------------------------------------------------

def _natural(name: str) -> list:
    """Sort key putting node-10 after node-9."""
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


class _Waits:
    """What a resource waits for before the engine touches it: every resource it depends on
    (`dependencies`, which hold explicit `depends_on` and the property dependencies),
    transitively. The engine registers a resource only once those are done, so a resource
    that reaches another through this graph is never created, replaced, updated or pushed
    while that other one is."""

    def __init__(self, resources: Iterable[PolicyResource]):
        self.deps: dict[str, set[str]] = {}
        for r in resources:
            deps = {d.urn for d in r.dependencies or []}
            for values in (r.property_dependencies or {}).values():
                deps.update(d.urn for d in values)
            self.deps[r.urn] = deps
        self._closure: dict[str, set[str]] = {}

    def all(self, urn: str) -> set[str]:
        if urn not in self._closure:
            seen: set[str] = set()
            todo = list(self.deps.get(urn, ()))
            while todo:
                u = todo.pop()
                if u not in seen:
                    seen.add(u)
                    todo.extend(self._closure.get(u, self.deps.get(u, ())))
            self._closure[urn] = seen
        return self._closure[urn]

    def on(self, r: PolicyResource, other: PolicyResource) -> bool:
        return other.urn in self.all(r.urn)


def _files_pushes(view: StackView) -> tuple[dict[str, list[PolicyResource]], bool]:
    """Each instance's files push ({instance urn: [commands]}): the `files-` command whose
    `triggers` hold the instance's id (by id after `pulumi up`, by property dependency in a
    preview, where the id is unknown). True when some push's instance could not be told."""
    pushes: dict[str, list[PolicyResource]] = {}
    unknown = False
    for cmd in view.of_type(REMOTE_COMMAND):
        if not cmd.name.startswith(FILES_PUSH_PREFIX):
            continue
        triggers = view.get(cmd).get("triggers")
        values = [UNKNOWN] if triggers is UNKNOWN else [t for t in _list(triggers) if t]
        instances, unresolved = view.refs(cmd, "triggers", values, INSTANCE)
        unknown = unknown or (not instances and any(v is UNKNOWN for v in unresolved))
        for inst in instances:
            pushes.setdefault(inst.urn, []).append(cmd)
    return pushes, unknown


def check_one_node_at_a_time(view: StackView, report: ReportViolation) -> None:
    """Two nodes of one role in a region are never replaced or pushed at the same time, and a
    stateful node (Galera, arbitrator) never takes a user_data change."""
    waits = _Waits(view.resources)
    pushes, pushes_unknown = _files_pushes(view)
    groups: dict[tuple, list[PolicyResource]] = {}
    for inst in view.of_type(INSTANCE):
        metadata = view.get(inst).get("metadata")
        if metadata is UNKNOWN:
            raise _needs(inst.name, "metadata")
        role, region = (metadata or {}).get(ROLE_KEY), (metadata or {}).get(REGION_KEY)
        if not isinstance(role, str):
            continue  # not a node of the deployment's roles
        groups.setdefault((region, role), []).append(inst)
        if role in STATEFUL_ROLES and "userData" not in (inst.opts.ignore_changes or []):
            report(f"{role} node '{inst.name}' does not ignore changes to its user_data, so any change to its "
                   "rendered files (a peer added, a setting, a renewed certificate) would replace the VM and "
                   "cost a full state transfer. Fix: ignore_changes=[\"user_data\", \"image_id\", "
                   "\"block_devices\"] on the instance (components/nodes.py, STATEFUL_ROLES); its files "
                   "reach it by the push (files-<node>).", inst.urn)

    for (region, role), nodes in sorted(groups.items(), key=lambda g: (str(g[0][0]), g[0][1])):
        if len(nodes) < 2:
            continue
        where = f" of {region}" if isinstance(region, str) else ""
        nodes.sort(key=lambda i: _natural(i.name))
        chained = []
        for inst in nodes:
            found = pushes.get(inst.urn, [])
            if len(found) == 1:
                chained.append((inst, found[0]))
            elif not found and pushes_unknown:
                raise _needs(inst.name, "files push triggers")
            elif not found:
                report(f"{role} node '{inst.name}'{where} has no files push tied to it (a "
                       f"'{FILES_PUSH_PREFIX}<node>' command whose triggers hold the instance's id), so nothing "
                       "runs its changes after its VM and nothing orders them against its peers. Fix: "
                       "file_push(..., instance_id=instance.id) for every node (components/nodes.py, "
                       "components/push.py).", inst.urn)
            else:
                report(f"{role} node '{inst.name}'{where} has {len(found)} files pushes "
                       f"({', '.join(repr(c.name) for c in found)}); they would push to it at the same time. "
                       "Fix: one files-<node> command per node (components/push.py).", inst.urn)
        # Every pair must be ordered: the later node's VM and push wait for the earlier
        # node's push, which itself waits for the earlier node's VM.
        for i, (a, a_push) in enumerate(chained):
            for b, b_push in chained[i + 1:]:
                if _ordered(waits, (a, a_push), (b, b_push)) or _ordered(waits, (b, b_push), (a, a_push)):
                    continue
                missing = [f"'{x.name}' does not wait for '{a_push.name}'" for x in (b, b_push)
                           if not waits.on(x, a_push)]
                if not waits.on(a_push, a):
                    missing.append(f"'{a_push.name}' does not wait for '{a.name}'")
                report(f"{role} nodes '{a.name}' and '{b.name}'{where} could be replaced or pushed at the same "
                       f"time: {'; '.join(missing)}, and neither node waits for the other's push. Fix: within "
                       "a role, node n's instance and its files push must depend on node n-1's files push "
                       "(components/nodes.py NodeGroup: depends_on=waits on both).", b.urn)


def _ordered(waits: _Waits, first: tuple, then: tuple) -> bool:
    """Whether `then` (an instance and its push) starts only after `first` is done: its VM
    and its push wait for first's push, which waits for first's VM."""
    (a, a_push), (b, b_push) = first, then
    return waits.on(a_push, a) and waits.on(b, a_push) and waits.on(b_push, a_push)


# --- the admin CIDR and the trusted networks, from the topology -----------------------------------

def _topology(path: Path):
    """The project's topology, read by the project's own loader (which also validates it);
    None when the pack runs without the project next to it."""
    try:
        from keystone_multiregion.topology import TopologyError, load_topology_file
    except ImportError:
        return None
    try:
        return load_topology_file(path)
    except (OSError, TopologyError):
        return None


def admin_cidr_from_topology(path: Path) -> Optional[str]:
    """`admin_cidr` of the project's topology; None without one."""
    topo = _topology(path)
    return topo.admin_cidr if topo is not None else None


def backup_from_topology(path: Path) -> Optional[dict]:
    """The topology's backups as the backup policies read them: each data region's
    container and cloud region, the store's auth URL and network, and the admin CIDR; None
    without a topology or without `backup:` in it."""
    topo = _topology(path)
    if topo is None or getattr(topo, "backup", None) is None:
        return None
    b = topo.backup
    return {"containers": {r.name: {"container": b.container(r.name), "region": r.openstack_region}
                           for r in topo.regions if not r.witness},
            "authUrl": b.store.auth_url, "storeCidr": b.store.cidr, "adminCidr": topo.admin_cidr}


def trusted_cidrs_from_topology(path: Path) -> Optional[list[str]]:
    """The networks that are not "the world": every region's CIDR, `admin_cidr` and
    `monitoring.cidr` (when it is another network); None without a topology."""
    topo = _topology(path)
    if topo is None:
        return None
    nets = [r.cidr for r in topo.regions] + [topo.admin_cidr]
    return nets + ([topo.monitoring.cidr] if topo.monitoring.cidr not in nets else [])


# --- the policies ------------------------------------------------------------------------------

def _resource_policy(name, description, types, check, level=EnforcementLevel.MANDATORY, config_schema=None):
    def validate(args: ResourceValidationArgs, report: ReportViolation) -> None:
        if args.resource_type not in types:
            return
        check(args, plain(args.props), report)
    return ResourceValidationPolicy(name=name, description=description, validate=validate,
                                    enforcement_level=level, config_schema=config_schema)


def _stack_policy(name, description, check, level=EnforcementLevel.MANDATORY, config_schema=None, configured=None):
    def validate(args: StackValidationArgs, report: ReportViolation) -> None:
        view = StackView(args.resources)
        if configured is None:
            check(view, report)
        else:
            check(view, configured(args.get_config() or {}), report)
    return StackValidationPolicy(name=name, description=description, validate=validate, enforcement_level=level,
                                 config_schema=config_schema)


def make_policies(admin_cidr: Optional[str], trusted_cidrs: Optional[list[str]] = None,
                  backup: Optional[dict] = None) -> list:
    """Every policy of the pack. `admin_cidr` is the default of the SSH policy's `adminCidr`
    config, `trusted_cidrs` (the regions' CIDRs and the admin CIDR) the default of the
    world-facing policies' `trustedCidrs`, `backup` (backup_from_topology) the default of the
    backup policies' `backup` (the pack's __main__ reads all three from topology.yaml); a
    config value overrides them."""
    ssh_schema = {"adminCidr": {"type": "string", "description": "The only network SSH may come from."}}
    if admin_cidr:
        ssh_schema["adminCidr"]["default"] = admin_cidr
    world_schema = {"trustedCidrs": {
        "type": "array", "items": {"type": "string"},
        "description": "The deployment's own networks (every region's CIDR and the admin CIDR); any "
                       "other address is the world."}}
    if trusted_cidrs:
        world_schema["trustedCidrs"]["default"] = list(trusted_cidrs)

    def world(check):
        def run(args, props, report):
            configured = (args.get_config() or {}).get("trustedCidrs")
            try:
                trusted = parse_trusted(configured if configured is not None else trusted_cidrs)
            except ValueError as e:
                report(f"security group rule '{args.name}' cannot be checked: {e}. Fix: correct trustedCidrs in "
                       "the policy pack config (--policy-pack-config).")
                return
            check(args.name, props, trusted, report)
        return run

    def ssh(args, props, report):
        configured = (args.get_config() or {}).get("adminCidr") or admin_cidr
        check_ssh_only_from_admin(args.name, props, configured, report)

    backup_schema = {"backup": {
        "type": "object",
        "description": "The topology's backups: {containers: {<region>: {container, region}}, authUrl, storeCidr, "
                       "adminCidr} (default: topology.yaml's backup:; none: no container is required)."}}
    if backup:
        backup_schema["backup"]["default"] = copy.deepcopy(backup)

    def backup_config(config):
        configured = config.get("backup")
        return configured if configured is not None else backup

    def store_https(args, props, report):
        check_backup_store_https(args.name, backup_config(args.get_config() or {}), report)

    def user_data(args, props, report):
        fraction = (args.get_config() or {}).get("warnAtFraction", DEFAULT_USER_DATA_WARN_FRACTION)
        check_user_data_size(args.name, props, float(fraction), report)

    return [
        _resource_policy(
            "no-service-port-open-to-world",
            "No ingress rule from outside the regions' networks, the admin network and the monitoring network "
            "opens a database, replication, SST, health-check, memcached, Keystone internal (5000), HAProxy "
            "monitor (8404) or Prometheus exporter (9104, 8405) port, or VRRP.",
            {SECGROUP_RULE}, world(check_service_ports_not_world_open),
            config_schema=PolicyConfigSchema(properties=world_schema)),
        _resource_policy(
            "ssh-only-from-admin-cidr", "SSH (tcp 22) is allowed only from the admin CIDR.",
            {SECGROUP_RULE}, ssh, config_schema=PolicyConfigSchema(properties=ssh_schema)),
        _resource_policy(
            "catalog-endpoint-unversioned-https",
            "Catalog endpoint URLs carry no API version (/v2.0, /v3), and public endpoints use https.",
            {ENDPOINT}, lambda args, props, report: check_endpoint_url(args.name, props, report)),
        _stack_policy(
            "control-plane-anti-affinity",
            "Every control-plane instance belongs to an anti-affinity server group.", check_anti_affinity),
        _stack_policy(
            "galera-volume-protected", "Galera data volumes are protected.", check_galera_volumes_protected),
        _stack_policy(
            "galera-security-group-not-public",
            "No Galera node's security group is shared with the public-facing proxies.",
            check_galera_groups_not_public),
        _stack_policy(
            "one-node-at-a-time",
            "Two nodes of one role in a region are never replaced or pushed at the same time (each node's "
            "VM and files push wait for the previous node's push), and a Galera or arbitrator VM ignores "
            "changes to its user_data.", check_one_node_at_a_time),
        _stack_policy(
            "backup-container-protected",
            "Every region stack with Galera nodes has its region's protected Swift container for the database "
            "backups (topology backup:), and no backup container can be deleted with its backups.",
            check_backup_containers, config_schema=PolicyConfigSchema(properties=backup_schema),
            configured=backup_config),
        _resource_policy(
            "backup-store-https",
            "The database backups reach their object store over https (unless it is inside the admin network).",
            {CONTAINER}, store_https, level=EnforcementLevel.ADVISORY,
            config_schema=PolicyConfigSchema(properties=copy.deepcopy(backup_schema))),
        _resource_policy(
            "remote-command-pins-host-key",
            "A remote command (the key push to Keystone nodes) pins the host key of the node it connects to.",
            {REMOTE_COMMAND}, lambda args, props, report: check_remote_command_pins_host_key(args.name, props, report)),
        _resource_policy(
            "bastion-pins-host-key",
            "A remote command going through a bastion pins the bastion's host key.",
            {REMOTE_COMMAND}, lambda args, props, report: check_bastion_pins_host_key(args.name, props, report),
            level=EnforcementLevel.ADVISORY),
        _resource_policy(
            "world-open-only-https",
            "Only HTTPS (tcp 443) should be open beyond the regions' networks and the admin network.",
            {SECGROUP_RULE}, world(check_world_open_only_https), level=EnforcementLevel.ADVISORY,
            config_schema=PolicyConfigSchema(properties=copy.deepcopy(world_schema))),
        _resource_policy(
            "user-data-size",
            "An instance's user data stays well below Nova's 64 KiB limit.",
            {INSTANCE}, user_data, level=EnforcementLevel.ADVISORY,
            config_schema=PolicyConfigSchema(properties={"warnAtFraction": {
                "type": "number", "minimum": 0, "maximum": 1, "default": DEFAULT_USER_DATA_WARN_FRACTION,
                "description": "Warn above this share of the limit (base64-encoded size)."}})),
    ]
