"""The deployment topology: one description of every region, shared by all stacks.

Plain Python, no Pulumi import. ``load_topology`` turns a mapping (read from
``topology.yaml``) into a validated, immutable :class:`Topology`; every problem is a
:class:`TopologyError` with one line that names the field and the fix, raised before a
single resource exists.

Every node's fixed address is computed here, from the region's CIDR and a fixed block
per role, so each region stack knows every peer in every region without waiting for the
other stacks. A node's address depends only on its region, role and number: adding a
node never moves its neighbours.
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

# Roles that run on VMs in every region, in the order their address blocks are laid out.
ROLES = ("proxy", "galera", "keystone", "memcached")
ARBITRATOR = "arbitrator"
# Address blocks inside a region's CIDR, in this order, each `block_size` long.
ADDRESS_BLOCKS = ("vip",) + ROLES + (ARBITRATOR,)

# Fewest nodes per role in each region: two proxies so one can die and keepalived moves
# its VRRP addresses to the other; at least one of every other role.
MIN_COUNTS = {"proxy": 2, "galera": 1, "keystone": 1, "memcached": 1}

# Defaults, in one place. Each can be overridden in topology.yaml under `defaults:`
# (every region) or in a region's own `roles:` (that region only).
DEFAULT_ROLES: dict[str, dict[str, Any]] = {
    "proxy": {"count": 2, "flavor": "m1.small", "vcpus": 1},
    # 3 per region: a region survives the loss of one node without SST traffic from afar.
    "galera": {"count": 3, "flavor": "m1.large", "vcpus": 4, "volume_gb": 20},
    "keystone": {"count": 3, "flavor": "m1.medium", "vcpus": 2},
    # The source design: one memcached thread per core, 512 MB (see the memcached layer).
    "memcached": {"count": 3, "flavor": "m1.small", "vcpus": 1},
}
DEFAULT_ARBITRATOR = {"flavor": "m1.small", "vcpus": 1}
DEFAULTS: dict[str, Any] = {
    "image": "debian-12",
    "key_pair": None,
    "dns_nameservers": [],
    # Host offsets: .1 is the router; fixed addresses start at .10, a block of 16 per
    # role (VIPs, proxy, galera, keystone, memcached, arbitrator); DHCP gets the rest.
    "first_offset": 10,
    "block_size": 16,
    "min_dhcp_pool": 8,
    # Two public VRRP addresses (one master per proxy, DNS round-robin over both) and
    # one internal address (Keystone's internal endpoint and the database frontend).
    "public_vips": 2,
    "internal_vips": 1,
    # Security group rules name each Galera peer by /32 ("address") or by its region's
    # CIDR ("cidr"), the latter for large layouts that would exceed the rule quota.
    "peer_rules": "address",
    # Neutron's default quota of rules per security group.
    "max_rules_per_group": 100,
    # The block device the Galera data volume appears as in the guest (virtio).
    "galera_data_device": "/dev/vdb",
}

# Galera settings, from the source design and Codership's guidance for WAN clusters.
DEFAULT_GALERA: dict[str, Any] = {
    # Codership's WAN guide: keepalives and timeouts well above the worst inter-region
    # round trip, so a slow link is not taken for a dead node.
    "evs_keepalive_period": "PT3S",
    "evs_suspect_timeout": "PT30S",
    "evs_inactive_timeout": "PT1M",
    "evs_install_timeout": "PT1M",
    # Larger windows keep a high-latency link busy (defaults are 4 and 2).
    "evs_send_window": 512,
    "evs_user_send_window": 512,
    # The source design: a "high" max_connections (Keystone workers x regions).
    "max_connections": 2000,
    "buffer_pool_mb": 1024,
    # gcache holds the write-sets a returning node needs for IST instead of a full SST:
    # sized for `rejoin_window_hours` of writes at `write_rate_kb_s`, twice over.
    # Keystone writes little (users, projects, roles, revocations).
    "rejoin_window_hours": 24,
    "write_rate_kb_s": 2,
    "gcache_mb": None,  # set to override the computed size
}

# Keystone settings. Tokens are Fernet: validated locally in every region with the same keys.
DEFAULT_KEYSTONE: dict[str, Any] = {
    "token_expiration_s": 3600,  # Keystone's default token lifetime
    "allow_expired_window_s": 172800,  # Keystone's default: service tokens may revive expired ones for 2 days
    "rotation_interval_h": 24,  # how often the operator rotates the Fernet keys
    # A validated token stays cached in its region's memcached for this long. Caches are
    # per region, so this bounds how long a token revoked in one region keeps validating
    # in another.
    "token_cache_s": 60,
    # The source design: objects cached for 60 minutes.
    "cache_expiration_s": 3600,
    # One dead memcached node must not stall the API: short timeouts, retried later.
    "memcache_dead_retry_s": 30,
    "memcache_socket_timeout_s": 1,
    "uwsgi_processes": None,  # None: one per vCPU of the flavor
}

_NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,30}[a-z0-9]$")
_HOST_RE = re.compile(r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$")


class TopologyError(ValueError):
    """A topology that cannot be deployed. The message is one line: field, problem, fix."""

    def __init__(self, field_path: str, problem: str, fix: str, source: str = "topology"):
        self.field = field_path
        self.problem = problem
        self.fix = fix
        super().__init__(f"{source}: {field_path}: {problem}; {fix}")


@dataclass(frozen=True)
class RoleSpec:
    role: str
    count: int
    flavor: str
    vcpus: int
    volume_gb: int = 0


@dataclass(frozen=True)
class Node:
    """One VM: its stable name (``galera-region-a-1``), role, region and fixed address."""

    name: str
    role: str
    region: str
    number: int
    address: str
    flavor: str
    vcpus: int
    volume_gb: int = 0


@dataclass(frozen=True)
class Vip:
    """A VRRP address held by one proxy (its master) and taken over by the other."""

    name: str
    region: str
    kind: str  # "public" (with a floating IP) or "internal"
    number: int
    address: str
    master: str  # name of the proxy that holds it while both are up
    vrid: int  # VRRP router id, unique within the region's L2 segment


@dataclass(frozen=True)
class ExistingNetwork:
    network_id: str
    subnet_id: str


@dataclass(frozen=True)
class Region:
    name: str
    index: int
    cidr: str
    external_network: str
    public_hostname: str
    roles: Mapping[str, RoleSpec]
    existing_network: ExistingNetwork | None = None
    openstack_region: str = ""  # the cloud's region name; defaults to `name`
    # A witness site hosts only the Galera arbitrator: the third vote of a two-region
    # deployment. No proxies, Keystone, memcached or Galera data nodes there.
    witness: bool = False

    @property
    def network(self) -> ipaddress.IPv4Network:
        return ipaddress.ip_network(self.cidr)

    @property
    def gateway(self) -> str:
        return str(self.network.network_address + 1)


@dataclass(frozen=True)
class GaleraSettings:
    evs_keepalive_period: str
    evs_suspect_timeout: str
    evs_inactive_timeout: str
    evs_install_timeout: str
    evs_send_window: int
    evs_user_send_window: int
    max_connections: int
    buffer_pool_mb: int
    rejoin_window_hours: int
    write_rate_kb_s: int
    gcache_mb: int


@dataclass(frozen=True)
class KeystoneSettings:
    token_expiration_s: int
    allow_expired_window_s: int
    rotation_interval_h: int
    token_cache_s: int
    cache_expiration_s: int
    memcache_dead_retry_s: int
    memcache_socket_timeout_s: int
    uwsgi_processes: int | None

    @property
    def max_active_keys(self) -> int:
        """Fernet keys to keep: enough that every token still valid (or revivable within the
        allowed-expired window) was signed by a key still held, plus the staged and the
        primary key: (expiration + window) / rotation interval + 2, rounded up."""
        interval = self.rotation_interval_h * 3600
        return -(-(self.token_expiration_s + self.allow_expired_window_s) // interval) + 2


@dataclass(frozen=True)
class Arbitrator:
    region: str
    flavor: str
    vcpus: int


@dataclass(frozen=True)
class Topology:
    name: str
    bootstrap_region: str
    admin_cidr: str
    image: str
    key_pair: str | None
    dns_nameservers: tuple[str, ...]
    first_offset: int
    block_size: int
    min_dhcp_pool: int
    public_vips: int
    internal_vips: int
    peer_rules: str
    max_rules_per_group: int
    galera_data_device: str
    regions: tuple[Region, ...]
    arbitrator: Arbitrator | None = None
    galera: GaleraSettings | None = None
    keystone: KeystoneSettings | None = None
    _nodes: tuple[Node, ...] = field(default=(), repr=False, compare=False)

    # -- look-ups -------------------------------------------------------------------
    def region(self, name: str, source: str = "stack config keystone-multiregion:region") -> Region:
        for r in self.regions:
            if r.name == name:
                return r
        names = ", ".join(r.name for r in self.regions)
        raise TopologyError(source, f"region {name!r} is not in the topology (regions: {names})",
                            "set it to one of those names, or add the region to topology.yaml",
                            source="config")

    def nodes(self, region: str | None = None, role: str | None = None) -> tuple[Node, ...]:
        return tuple(n for n in self._nodes
                     if (region is None or n.region == region) and (role is None or n.role == role))

    def node(self, name: str) -> Node:
        for n in self._nodes:
            if n.name == name:
                return n
        raise KeyError(name)

    def vips(self, region: str, kind: str | None = None) -> tuple[Vip, ...]:
        r = self.region(region)
        out = []
        proxies = self.nodes(region, "proxy")
        if not proxies:  # a witness site serves no endpoint
            return ()
        # Public VIPs first, then internal ones; masters rotate over the proxies so
        # every proxy is master of some address and all of them carry traffic.
        plan = [("public", i) for i in range(1, self.public_vips + 1)]
        plan += [("internal", i) for i in range(1, self.internal_vips + 1)]
        for offset, (k, i) in enumerate(plan):
            addr = _host(r.network, self.first_offset + offset)
            out.append(Vip(name=f"vip-{r.name}-{k}-{i}", region=r.name, kind=k, number=i,
                           address=addr, master=proxies[offset % len(proxies)].name,
                           vrid=10 + offset))
        return tuple(v for v in out if kind is None or v.kind == kind)

    @property
    def galera_voters(self) -> int:
        return len(self.nodes(role="galera")) + (1 if self.arbitrator else 0)

    def dhcp_pool(self, region: str) -> tuple[str, str]:
        net = self.region(region).network
        start = self.first_offset + len(ADDRESS_BLOCKS) * self.block_size
        return _host(net, start), str(net.broadcast_address - 1)


def _host(net: ipaddress.IPv4Network, offset: int) -> str:
    return str(net.network_address + offset)


# --------------------------------------------------------------------------------------
# Loading and validation
# --------------------------------------------------------------------------------------

def _require(mapping: Mapping[str, Any], key: str, where: str, fix: str) -> Any:
    if not isinstance(mapping, Mapping) or key not in mapping or mapping[key] in (None, ""):
        raise TopologyError(f"{where}.{key}" if where else key, "is missing", fix)
    return mapping[key]


def _int(value: Any, where: str, minimum: int, fix: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TopologyError(where, f"{value!r} is not a whole number", fix)
    if value < minimum:
        raise TopologyError(where, f"{value} is below the minimum of {minimum}", fix)
    return value


def _cidr(value: Any, where: str) -> ipaddress.IPv4Network:
    try:
        net = ipaddress.ip_network(str(value), strict=False)
    except ValueError:
        raise TopologyError(where, f"{value!r} is not a valid CIDR",
                            "write an IPv4 network such as 10.10.1.0/24") from None
    if net.version != 4:
        raise TopologyError(where, f"{value!r} is not IPv4", "use an IPv4 network such as 10.10.1.0/24")
    if str(net) != str(value):
        raise TopologyError(where, f"{value!r} has host bits set",
                            f"write the network address, {net}")
    return net


def _role_spec(role: str, base: Mapping[str, Any], override: Mapping[str, Any], where: str) -> RoleSpec:
    unknown = set(override) - {"count", "flavor", "vcpus", "volume_gb"}
    if unknown:
        raise TopologyError(f"{where}.{sorted(unknown)[0]}", "is not a known setting",
                            "use count, flavor, vcpus or volume_gb")
    spec = {**base, **override}
    minimum = MIN_COUNTS[role]
    why = ("two proxies are needed so a VRRP address survives the loss of one"
           if role == "proxy" else f"every region runs at least one {role} node")
    count = _int(spec.get("count"), f"{where}.count", minimum, f"set it to {minimum} or more ({why})")
    vcpus = _int(spec.get("vcpus"), f"{where}.vcpus", 1, "give the flavor's number of vCPUs (1 or more)")
    flavor = spec.get("flavor")
    if not isinstance(flavor, str) or not flavor:
        raise TopologyError(f"{where}.flavor", "is missing", "name the Nova flavor for this role")
    volume_gb = 0
    if role == "galera":
        volume_gb = _int(spec.get("volume_gb"), f"{where}.volume_gb", 1,
                         "give the size in GB of each Galera node's data volume")
    return RoleSpec(role=role, count=count, flavor=flavor, vcpus=vcpus, volume_gb=volume_gb)


def load_topology(data: Mapping[str, Any]) -> Topology:
    """Validate a topology mapping and return the immutable model, or raise TopologyError."""
    if not isinstance(data, Mapping):
        raise TopologyError("(top level)", "is not a mapping", "see topology.yaml in the project for an example")
    known = {"name", "bootstrap_region", "admin_cidr", "defaults", "regions", "arbitrator", "galera", "keystone"}
    for key in data:
        if key not in known:
            raise TopologyError(str(key), "is not a known setting", f"use one of {', '.join(sorted(known))}")

    name = _require(data, "name", "", "give the deployment a short name such as 'keystone'")
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise TopologyError("name", f"{name!r} is not a valid name",
                            "use 2-32 lower-case letters, digits and dashes, starting with a letter")

    defaults_in = data.get("defaults") or {}
    if not isinstance(defaults_in, Mapping):
        raise TopologyError("defaults", "is not a mapping", "write settings as key: value pairs")
    settings = dict(DEFAULTS)
    role_defaults = {r: dict(v) for r, v in DEFAULT_ROLES.items()}
    arbitrator_defaults = dict(DEFAULT_ARBITRATOR)
    for key, value in defaults_in.items():
        if key in DEFAULT_ROLES:
            if not isinstance(value, Mapping):
                raise TopologyError(f"defaults.{key}", "is not a mapping", "give count, flavor and vcpus")
            _role_spec(key, role_defaults[key], value, f"defaults.{key}")  # validate early
            role_defaults[key].update(value)
        elif key == ARBITRATOR:
            arbitrator_defaults.update(value or {})
        elif key in DEFAULTS:
            settings[key] = value
        else:
            raise TopologyError(f"defaults.{key}", "is not a known setting",
                                f"use one of {', '.join(sorted(list(DEFAULTS) + list(DEFAULT_ROLES)))}")

    first_offset = _int(settings["first_offset"], "defaults.first_offset", 2, "leave room for the router at .1")
    block_size = _int(settings["block_size"], "defaults.block_size", 2, "give each role block 2 or more addresses")
    min_pool = _int(settings["min_dhcp_pool"], "defaults.min_dhcp_pool", 1, "keep at least one DHCP address")
    public_vips = _int(settings["public_vips"], "defaults.public_vips", 1,
                       "keep at least one public VRRP address per region")
    internal_vips = _int(settings["internal_vips"], "defaults.internal_vips", 1,
                         "keep at least one internal VRRP address per region")
    if public_vips + internal_vips > block_size:
        raise TopologyError("defaults.public_vips", f"{public_vips} public + {internal_vips} internal VIPs "
                            f"do not fit the address block of {block_size}",
                            "lower the VIP counts or raise defaults.block_size")
    if settings["peer_rules"] not in ("address", "cidr"):
        raise TopologyError("defaults.peer_rules", f"{settings['peer_rules']!r} is not 'address' or 'cidr'",
                            "use 'address' (one rule per peer) or 'cidr' (one rule per region)")
    max_rules = _int(settings["max_rules_per_group"], "defaults.max_rules_per_group", 10,
                     "give your cloud's security-group-rule quota")
    dns = settings["dns_nameservers"] or []
    for i, ns in enumerate(dns):
        try:
            ipaddress.ip_address(ns)
        except ValueError:
            raise TopologyError(f"defaults.dns_nameservers[{i}]", f"{ns!r} is not an IP address",
                                "list name servers by address") from None

    admin_cidr = _require(data, "admin_cidr", "", "give the CIDR operators SSH from, e.g. 203.0.113.0/24")
    admin_net = _cidr(admin_cidr, "admin_cidr")
    if admin_net.prefixlen == 0:
        raise TopologyError("admin_cidr", "0.0.0.0/0 opens SSH to the whole internet",
                            "give the CIDR of your bastion or operator network")

    regions_in = _require(data, "regions", "", "list the regions, each with name, index, cidr, "
                          "external_network and public_hostname")
    if not isinstance(regions_in, list) or not regions_in:
        raise TopologyError("regions", "is not a non-empty list", "list at least two regions")

    regions: list[Region] = []
    seen_names: dict[str, int] = {}
    seen_index: dict[int, int] = {}
    seen_hosts: dict[str, int] = {}
    nets: list[tuple[ipaddress.IPv4Network, int]] = []
    region_keys = {"name", "index", "cidr", "external_network", "public_hostname", "roles", "existing_network",
                   "openstack_region", "witness"}
    for i, r in enumerate(regions_in):
        where = f"regions[{i}]"
        if not isinstance(r, Mapping):
            raise TopologyError(where, "is not a mapping", "give name, index, cidr, external_network, public_hostname")
        for key in r:
            if key not in region_keys:
                raise TopologyError(f"{where}.{key}", "is not a known setting",
                                    f"use one of {', '.join(sorted(region_keys))}")
        rname = _require(r, "name", where, "give the region a name such as region-a")
        if not isinstance(rname, str) or not _NAME_RE.match(rname):
            raise TopologyError(f"{where}.name", f"{rname!r} is not a valid name",
                                "use 2-32 lower-case letters, digits and dashes, starting with a letter")
        if rname in seen_names:
            raise TopologyError(f"{where}.name", f"{rname!r} is also the name of regions[{seen_names[rname]}]",
                                "give every region its own name")
        seen_names[rname] = i
        index = _int(_require(r, "index", where, "give the region a number (1-255), used as its Galera segment"),
                     f"{where}.index", 1, "number regions from 1 (it becomes the Galera gmcast.segment)")
        if index > 255:
            raise TopologyError(f"{where}.index", f"{index} is above 255",
                                "Galera segments go up to 255: use 1-255")
        if index in seen_index:
            raise TopologyError(f"{where}.index", f"{index} is also the index of regions[{seen_index[index]}]",
                                "give every region its own index")
        seen_index[index] = i
        net = _cidr(_require(r, "cidr", where, "give the region's private network, e.g. 10.10.1.0/24"),
                    f"{where}.cidr")
        for other, j in nets:
            if net.overlaps(other):
                raise TopologyError(f"{where}.cidr", f"{net} overlaps regions[{j}].cidr {other}",
                                    "give every region its own non-overlapping range")
        nets.append((net, i))
        ext = _require(r, "external_network", where, "name the provider network that floating IPs come from")
        witness = r.get("witness", False)
        if not isinstance(witness, bool):
            raise TopologyError(f"{where}.witness", f"{witness!r} is not true or false",
                                "write witness: true for a site that only hosts the arbitrator")
        if witness and r.get("roles"):
            raise TopologyError(f"{where}.roles", "is set on a witness region",
                                "remove it: a witness region runs only the arbitrator")
        host = r.get("public_hostname") if witness else _require(
            r, "public_hostname", where, "give the DNS name of the region's public endpoint")
        if witness and host is None:
            host = ""
        elif not isinstance(host, str) or not _HOST_RE.match(host):
            raise TopologyError(f"{where}.public_hostname", f"{host!r} is not a fully qualified host name",
                                "use a DNS name such as identity.region-a.example.com")
        if host and host in seen_hosts:
            raise TopologyError(f"{where}.public_hostname",
                                f"{host!r} is also the public_hostname of regions[{seen_hosts[host]}]",
                                "give every region its own endpoint name")
        seen_hosts[host] = i
        roles_in = r.get("roles") or {}
        if not isinstance(roles_in, Mapping):
            raise TopologyError(f"{where}.roles", "is not a mapping", "map role names to count/flavor/vcpus")
        for key in roles_in:
            if key not in ROLES:
                raise TopologyError(f"{where}.roles.{key}", "is not a role", f"use one of {', '.join(ROLES)}")
        if witness:
            roles = {role: RoleSpec(role=role, count=0, flavor="-", vcpus=1) for role in ROLES}
        else:
            roles = {role: _role_spec(role, role_defaults[role], roles_in.get(role) or {}, f"{where}.roles.{role}")
                     for role in ROLES}
        for role, spec in roles.items():
            if spec.count > block_size:
                raise TopologyError(f"{where}.roles.{role}.count",
                                    f"{spec.count} nodes do not fit the address block of {block_size}",
                                    "lower the count or raise defaults.block_size")
        used = first_offset + len(ADDRESS_BLOCKS) * block_size
        available = net.num_addresses - 1 - used  # the broadcast address is not usable
        if available < min_pool:
            raise TopologyError(f"{where}.cidr", f"{net} is too small: fixed addresses need offsets "
                                f"{first_offset}-{used - 1} plus {min_pool} for DHCP",
                                f"use a larger range (a /{_prefix_for(used + min_pool + 1)} or bigger) "
                                "or a smaller defaults.block_size")
        existing = None
        if r.get("existing_network") is not None:
            ex = r["existing_network"]
            existing = ExistingNetwork(
                network_id=_require(ex, "network_id", f"{where}.existing_network", "give the Neutron network id"),
                subnet_id=_require(ex, "subnet_id", f"{where}.existing_network", "give the Neutron subnet id"))
        regions.append(Region(name=rname, index=index, cidr=str(net), external_network=str(ext),
                              public_hostname=host, roles=roles, existing_network=existing,
                              openstack_region=str(r.get("openstack_region") or rname), witness=witness))

    boot = _require(data, "bootstrap_region", "", "name the region whose first Galera node starts the cluster")
    if boot not in seen_names:
        raise TopologyError("bootstrap_region", f"{boot!r} is not a region in this topology",
                            f"set it to one of {', '.join(seen_names)}")

    arbitrator = None
    if data.get("arbitrator") is not None:
        a = data["arbitrator"]
        if not isinstance(a, Mapping):
            raise TopologyError("arbitrator", "is not a mapping", "give at least arbitrator.region")
        areg = _require(a, "region", "arbitrator", "name the region that hosts the Galera arbitrator (garbd)")
        if areg not in seen_names:
            raise TopologyError("arbitrator.region", f"{areg!r} is not a region in this topology",
                                f"set it to one of {', '.join(seen_names)}")
        spec = {**arbitrator_defaults, **{k: v for k, v in a.items() if k != "region"}}
        arbitrator = Arbitrator(region=areg, flavor=str(spec["flavor"]),
                                vcpus=_int(spec["vcpus"], "arbitrator.vcpus", 1, "give the flavor's vCPUs"))

    for i, r in enumerate(regions):
        if r.witness and (arbitrator is None or arbitrator.region != r.name):
            raise TopologyError(f"regions[{i}].witness", f"{r.name} is a witness region without the arbitrator",
                                f"set arbitrator.region: {r.name}, or remove witness: true")
    if boot in [r.name for r in regions if r.witness]:
        raise TopologyError("bootstrap_region", f"{boot!r} is a witness region, which holds no data",
                            "bootstrap from a region with Galera nodes")
    galera = _galera_settings(data.get("galera") or {})
    keystone = _keystone_settings(data.get("keystone") or {})
    nodes = _compute_nodes(regions, arbitrator, first_offset, block_size)
    topo = Topology(
        name=name, bootstrap_region=boot, admin_cidr=str(admin_net), image=str(settings["image"]),
        key_pair=settings["key_pair"], dns_nameservers=tuple(dns), first_offset=first_offset,
        block_size=block_size, min_dhcp_pool=min_pool, public_vips=public_vips, internal_vips=internal_vips,
        peer_rules=settings["peer_rules"], max_rules_per_group=max_rules,
        galera_data_device=str(settings["galera_data_device"]), regions=tuple(regions),
        arbitrator=arbitrator, galera=galera, keystone=keystone, _nodes=nodes)
    _check_quorum(topo)
    _check_rule_quota(topo)
    return topo


_DURATION_RE = re.compile(r"^PT(?:(\d+)H)?(?:(\d+)M)?(?:(\d+(?:\.\d+)?)S)?$")


def duration_seconds(value: Any, where: str) -> float:
    """Seconds of an ISO 8601 duration as Galera writes them (PT3S, PT1M, PT1M30S)."""
    m = _DURATION_RE.match(str(value))
    if not m or not any(m.groups()):
        raise TopologyError(where, f"{value!r} is not a duration", "write it as Galera does, e.g. PT3S or PT1M")
    h, mi, sec = m.groups()
    return int(h or 0) * 3600 + int(mi or 0) * 60 + float(sec or 0)


def _section(data: Any, name: str, defaults: Mapping[str, Any]) -> dict:
    """A settings section merged over its defaults; unknown keys are errors."""
    if not isinstance(data, Mapping):
        raise TopologyError(name, "is not a mapping", f"give {name} settings as key: value pairs")
    for key in data:
        if key not in defaults:
            raise TopologyError(f"{name}.{key}", "is not a known setting", f"use one of {', '.join(sorted(defaults))}")
    return {**defaults, **data}


def _galera_settings(data: Mapping[str, Any]) -> GaleraSettings:
    g = _section(data, "galera", DEFAULT_GALERA)
    secs = {k: duration_seconds(g[k], f"galera.{k}") for k in
            ("evs_keepalive_period", "evs_suspect_timeout", "evs_inactive_timeout", "evs_install_timeout")}
    if not secs["evs_keepalive_period"] < secs["evs_suspect_timeout"] <= secs["evs_inactive_timeout"]:
        raise TopologyError("galera.evs_suspect_timeout",
                            f"needs keepalive_period < suspect_timeout <= inactive_timeout, got "
                            f"{g['evs_keepalive_period']}, {g['evs_suspect_timeout']}, {g['evs_inactive_timeout']}",
                            "raise the timeouts in that order (Codership's WAN values: PT3S, PT30S, PT1M)")
    if secs["evs_install_timeout"] > secs["evs_inactive_timeout"]:
        raise TopologyError("galera.evs_install_timeout",
                            f"{g['evs_install_timeout']} is longer than evs_inactive_timeout {g['evs_inactive_timeout']}",
                            "keep install_timeout at or below inactive_timeout")
    ints = {k: _int(g[k], f"galera.{k}", 1, "give a positive whole number")
            for k in ("evs_send_window", "evs_user_send_window", "max_connections", "buffer_pool_mb",
                      "rejoin_window_hours", "write_rate_kb_s")}
    if ints["evs_user_send_window"] > ints["evs_send_window"]:
        raise TopologyError("galera.evs_user_send_window", "is larger than evs_send_window",
                            "keep user_send_window at or below send_window")
    if g["gcache_mb"] is None:
        needed_kb = ints["write_rate_kb_s"] * ints["rejoin_window_hours"] * 3600 * 2
        gcache_mb = max(128, -(-needed_kb // 1024))
    else:
        gcache_mb = _int(g["gcache_mb"], "galera.gcache_mb", 16, "give gcache at least 16 MB")
    return GaleraSettings(
        evs_keepalive_period=str(g["evs_keepalive_period"]), evs_suspect_timeout=str(g["evs_suspect_timeout"]),
        evs_inactive_timeout=str(g["evs_inactive_timeout"]), evs_install_timeout=str(g["evs_install_timeout"]),
        gcache_mb=gcache_mb, **ints)


def _keystone_settings(data: Mapping[str, Any]) -> KeystoneSettings:
    k = _section(data, "keystone", DEFAULT_KEYSTONE)
    values = {key: _int(k[key], f"keystone.{key}", 1, "give a positive whole number")
              for key in DEFAULT_KEYSTONE if key != "uwsgi_processes"}
    if k["uwsgi_processes"] is not None:
        values["uwsgi_processes"] = _int(k["uwsgi_processes"], "keystone.uwsgi_processes", 1,
                                         "give the number of uwsgi worker processes, or leave it out")
    else:
        values["uwsgi_processes"] = None
    if values["token_cache_s"] > values["token_expiration_s"]:
        raise TopologyError("keystone.token_cache_s", "is longer than a token lives",
                            "keep the token cache at or below token_expiration_s")
    return KeystoneSettings(**values)


def _prefix_for(addresses: int) -> int:
    prefix = 32
    while (1 << (32 - prefix)) < addresses:
        prefix -= 1
    return prefix


def _compute_nodes(regions: Iterable[Region], arbitrator: Arbitrator | None,
                   first_offset: int, block_size: int) -> tuple[Node, ...]:
    nodes = []
    for r in regions:
        net = r.network
        for role in ROLES:
            spec = r.roles[role]
            base = first_offset + ADDRESS_BLOCKS.index(role) * block_size
            for n in range(1, spec.count + 1):
                nodes.append(Node(name=f"{role}-{r.name}-{n}", role=role, region=r.name, number=n,
                                  address=_host(net, base + n - 1), flavor=spec.flavor, vcpus=spec.vcpus,
                                  volume_gb=spec.volume_gb))
        if arbitrator and arbitrator.region == r.name:
            base = first_offset + ADDRESS_BLOCKS.index(ARBITRATOR) * block_size
            nodes.append(Node(name=f"{ARBITRATOR}-{r.name}-1", role=ARBITRATOR, region=r.name, number=1,
                              address=_host(net, base), flavor=arbitrator.flavor, vcpus=arbitrator.vcpus))
    return tuple(nodes)


def _check_quorum(topo: Topology) -> None:
    data_nodes = len(topo.nodes(role="galera"))
    voters = topo.galera_voters
    if voters % 2 == 0:
        what = f"{data_nodes} Galera nodes" + (" + 1 arbitrator" if topo.arbitrator else "")
        fix = ("remove the arbitrator or change a region's galera count by one"
               if topo.arbitrator else
               "add an arbitrator (arbitrator.region) or change a region's galera count by one")
        raise TopologyError("regions[*].roles.galera.count",
                            f"{what} make {voters} voters, an even number: a split into two halves "
                            "leaves no Primary component", fix)
    for i, r in enumerate(topo.regions):
        held = len(topo.nodes(r.name, "galera")) + len(topo.nodes(r.name, ARBITRATOR))
        if held * 2 >= voters:
            raise TopologyError(f"regions[{i}].roles.galera.count",
                                f"region {r.name} holds {held} of {voters} Galera voters: losing it would "
                                "leave the others without quorum",
                                "add Galera nodes in other regions, or an arbitrator in another region")


def _check_rule_quota(topo: Topology) -> None:
    from .security import security_rules  # the rules are plain data computed from the topology

    for i, r in enumerate(topo.regions):
        counts: dict[str, int] = {}
        for rule in security_rules(topo, r.name):
            counts[rule.group] = counts.get(rule.group, 0) + 1
        for group, n in counts.items():
            if n > topo.max_rules_per_group:
                raise TopologyError("defaults.peer_rules",
                                    f"the {group} security group of {r.name} needs {n} rules, above the quota "
                                    f"of {topo.max_rules_per_group}",
                                    "set defaults.peer_rules: cidr (one rule per region) or raise "
                                    "defaults.max_rules_per_group to your cloud's quota")


def load_topology_file(path: str | os.PathLike) -> Topology:
    """Read and validate a topology YAML file; errors name the file."""
    import yaml

    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh)
    except FileNotFoundError:
        raise TopologyError(str(path), "does not exist",
                            "create it (see topology.yaml in the project) or set keystone-multiregion:topology",
                            source="topology") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark else "(file)"
        raise TopologyError(where, f"is not valid YAML ({getattr(exc, 'problem', exc)})",
                            "fix the syntax", source=str(path)) from None
    try:
        return load_topology(data)
    except TopologyError as exc:
        raise TopologyError(exc.field, exc.problem, exc.fix, source=str(path)) from None
