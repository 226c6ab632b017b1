"""The deployment topology: one description of every region, shared by all stacks.

Plain Python, no Pulumi import. ``load_topology`` turns a mapping (read from
``topology.yaml``) into a validated, immutable :class:`Topology`; every problem is a
:class:`TopologyError` with one line that names the field and the fix, raised before a
single resource exists.

Validation has two layers. The schema (pydantic models below, unknown keys forbidden,
strict types) says the shape of ``topology.yaml``: which settings exist, their types,
their defaults and simple bounds; each field's description is the fix its error names.
Hand-written checks after it say what a schema cannot: odd Galera voters, overlapping
CIDRs, an address plan that fits, the size of the admin network, the project's quotas.

Every node's fixed address is computed here, from the region's CIDR and a fixed block
per role, so each region stack knows every peer in every region without waiting for the
other stacks. A node's address depends only on its region, role and number: adding a
node never moves its neighbours.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import typing
from dataclasses import dataclass, field
from typing import Any, Iterable, Literal, Mapping

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

# Roles that run on VMs in every region, in the order their address blocks are laid out.
ROLES = ("proxy", "galera", "keystone", "memcached")
ARBITRATOR = "arbitrator"
# The database nodes of a replica region: MariaDB asynchronous replicas of the core's Galera
# cluster (never members, never voters). A role of its own, not "galera" with a flag, so every
# place that means "a Galera member" (peers, votes, security groups, backups, the lab's
# Galera layer, recover-plan) leaves them out without being told. They take the address
# block of the galera role, which a replica region does not use: the address plan (and the
# smallest CIDR) stays what it was.
REPLICA = "replica"
# Address blocks inside a region's CIDR, in this order, each `block_size` long.
ADDRESS_BLOCKS = ("vip",) + ROLES + (ARBITRATOR,)

# Fewest nodes per role in each region: two proxies so one can die and keepalived moves
# its VRRP addresses to the other; at least one of every other role.
MIN_COUNTS = {"proxy": 2, "galera": 1, "keystone": 1, "memcached": 1,
              # Two replicas, each fed by a core node in a different core region: one source
              # region (or one replica) lost leaves the region reading.
              REPLICA: 2}

# Defaults of each role, merged setting by setting under `defaults.<role>` (every region)
# and a region's own `roles.<role>` (that region only). The other defaults are the schema's
# field defaults below.
DEFAULT_ROLES: dict[str, dict[str, Any]] = {
    "proxy": {"count": 2, "flavor": "m1.small", "vcpus": 1},
    # 3 per region: a region survives the loss of one node without SST traffic from afar.
    "galera": {"count": 3, "flavor": "m1.large", "vcpus": 4, "volume_gb": 20},
    "keystone": {"count": 3, "flavor": "m1.medium", "vcpus": 2},
    # The source design: one memcached thread per core, 512 MB (see the memcached layer).
    "memcached": {"count": 3, "flavor": "m1.small", "vcpus": 1},
    # A replica holds the whole database like a Galera node (same flavor and volume).
    REPLICA: {"count": 2, "flavor": "m1.large", "vcpus": 4, "volume_gb": 20},
}
DEFAULT_ARBITRATOR = {"flavor": "m1.small", "vcpus": 1}

# admin_cidr may reach every node's SSH port, so it must be an operator network, not a
# slice of the internet. A /16 (65,536 addresses) is more than any bastion or VPN pool
# needs; an IPv6 site is a /48 (RFC 6177), so a /48 is already a whole organisation.
ADMIN_MAX_PREFIX = {4: 16, 6: 48}

_NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,30}[a-z0-9]$")
_HOST_RE = re.compile(r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$")


# --------------------------------------------------------------------------------------
# The schema of topology.yaml: types, unknown keys, defaults. A field's description is
# the fix its error message names (tests check that every field has one).
# --------------------------------------------------------------------------------------

class _Schema(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _null_is_unset(cls, data: Any) -> Any:
        # YAML writes `key:` with nothing after it as null: treat it as not set (the default).
        if isinstance(data, Mapping):
            return {k: v for k, v in data.items() if v is not None}
        return data


def _fix(fix: str, default: Any = ..., **bounds: Any) -> Any:
    return Field(default, description=fix, **bounds)


class RoleIn(_Schema):
    # Every setting is optional here: an unset one comes from the role's defaults. The
    # smallest count depends on the role (checked by hand, with its reason).
    count: int | None = _fix("give the number of nodes as a whole number, e.g. count: 3", None)
    flavor: str | None = _fix("name the Nova flavor for this role, e.g. flavor: m1.small", None, min_length=1)
    vcpus: int | None = _fix("give the flavor's number of vCPUs (1 or more)", None, ge=1)
    volume_gb: int | None = _fix("give the size in GB of each Galera node's data volume (1 or more)", None, ge=1)
    # Galera only: each node's vote (pc.weight). A region added to a running cluster with one
    # node of weight 2 keeps the number of votes odd at every step (changes.py).
    weight: int | None = _fix("give each Galera node's vote (pc.weight) as a whole number from 1 to 255, "
                              "e.g. weight: 2", None, ge=1, le=255)


def _role_field(role: str) -> Any:
    return _fix(f"write the {role} settings as a mapping, e.g. {role}: {{count: {DEFAULT_ROLES[role]['count']}}}",
                None)


class RolesIn(_Schema):
    proxy: RoleIn | None = _role_field("proxy")
    galera: RoleIn | None = _role_field("galera")
    keystone: RoleIn | None = _role_field("keystone")
    memcached: RoleIn | None = _role_field("memcached")
    # A replica region's database nodes (asynchronous replicas; only with replica: true).
    replica: RoleIn | None = _role_field(REPLICA)


class ArbitratorSettingsIn(_Schema):
    flavor: str | None = _fix("name the Nova flavor for the arbitrator, e.g. flavor: m1.small", None, min_length=1)
    vcpus: int | None = _fix("give the flavor's number of vCPUs (1 or more)", None, ge=1)


class ArbitratorIn(ArbitratorSettingsIn):
    region: str = _fix("name the region that hosts the Galera arbitrator (garbd)")


class DefaultsIn(_Schema):
    image: str = _fix("name the Glance image, e.g. image: debian-12", "debian-12", min_length=1)
    key_pair: str | None = _fix("name one Nova key pair, e.g. key_pair: ops", None)
    dns_nameservers: list[str] = _fix("list name servers by address, e.g. [192.0.2.53]", [])
    # Host offsets: .1 is the router; fixed addresses start at .10, a block of 16 per
    # role (VIPs, proxy, galera, keystone, memcached, arbitrator); DHCP gets the rest.
    first_offset: int = _fix("leave room for the router at .1 (2 or more)", 10, ge=2)
    block_size: int = _fix("give each role block 2 or more addresses", 16, ge=2)
    min_dhcp_pool: int = _fix("keep at least one DHCP address", 8, ge=1)
    # Two public VRRP addresses (one master per proxy, DNS round-robin over both) and
    # one internal address (Keystone's internal endpoint and the database frontend).
    public_vips: int = _fix("keep at least one public VRRP address per region", 2, ge=1)
    internal_vips: int = _fix("keep at least one internal VRRP address per region", 1, ge=1)
    # Peers in other regions are named in security group rules by /32 ("address") or by
    # their region's CIDR ("cidr"), the latter for layouts that would exceed the rule quota.
    # Peers in the same region are named by their security group (one rule for them all).
    peer_rules: Literal["address", "cidr"] = _fix(
        "use 'address' (one rule per peer) or 'cidr' (one rule per region)", "address")
    # The block device the Galera data volume appears as in the guest (virtio).
    galera_data_device: str = _fix("give the device path of the data volume, e.g. /dev/vdb", "/dev/vdb")
    proxy: RoleIn | None = _role_field("proxy")
    galera: RoleIn | None = _role_field("galera")
    keystone: RoleIn | None = _role_field("keystone")
    memcached: RoleIn | None = _role_field("memcached")
    replica: RoleIn | None = _role_field(REPLICA)
    arbitrator: ArbitratorSettingsIn | None = _fix(
        "write the arbitrator's settings as a mapping, e.g. arbitrator: {flavor: m1.small}", None)


class ExistingNetworkIn(_Schema):
    network_id: str = _fix("give the Neutron network id", min_length=1)
    subnet_id: str = _fix("give the Neutron subnet id", min_length=1)


class RegionIn(_Schema):
    name: str = _fix("give the region a name such as region-a")
    index: int = _fix("number regions 1-255 (it becomes the Galera gmcast.segment)", ge=1, le=255)
    cidr: str = _fix("give the region's private network, e.g. 10.10.1.0/24")
    external_network: str = _fix("name the provider network that floating IPs come from", min_length=1)
    # Required except on a witness region (checked by hand).
    public_hostname: str | None = _fix("give the DNS name of the region's public endpoint", None)
    roles: RolesIn = _fix("map role names to their settings, e.g. roles: {galera: {count: 3}}", RolesIn())
    existing_network: ExistingNetworkIn | None = _fix(
        "give the existing network as a mapping: {network_id: ..., subnet_id: ...}", None)
    openstack_region: str | None = _fix("name the cloud's region, e.g. openstack_region: RegionOne", None)
    # A witness site hosts only the Galera arbitrator.
    witness: bool = _fix("write witness: true for a site that only hosts the arbitrator", False)
    # A replica region: Keystone, memcached and proxies on asynchronous replicas of the core's
    # cluster (roles.replica), no Galera members; its proxies send writes to a core region.
    replica: bool = _fix("write replica: true for a region that reads from asynchronous replicas of the core "
                         "and sends writes to a core region", False)
    # The core regions its replicas replicate from, in order (default: every core region).
    sources: list[str] | None = _fix("list two or more core regions (no replica: true, no witness: true) by "
                                     "name, e.g. sources: [region-a, region-b]", None)


class GaleraIn(_Schema):
    # Codership's WAN guide: keepalives and timeouts well above the worst inter-region
    # round trip, so a slow link is not taken for a dead node.
    evs_keepalive_period: str = _fix("write it as Galera does, e.g. PT3S or PT1M", "PT3S")
    evs_suspect_timeout: str = _fix("write it as Galera does, e.g. PT3S or PT1M", "PT30S")
    evs_inactive_timeout: str = _fix("write it as Galera does, e.g. PT3S or PT1M", "PT1M")
    evs_install_timeout: str = _fix("write it as Galera does, e.g. PT3S or PT1M", "PT1M")
    # Larger windows keep a high-latency link busy (defaults are 4 and 2).
    evs_send_window: int = _fix("give a positive whole number", 512, ge=1)
    evs_user_send_window: int = _fix("give a positive whole number", 512, ge=1)
    # The source design: a "high" max_connections (Keystone workers x regions).
    max_connections: int = _fix("give a positive whole number", 2000, ge=1)
    buffer_pool_mb: int = _fix("give a positive whole number", 1024, ge=1)
    # gcache holds the write-sets a returning node needs for IST instead of a full SST:
    # sized for `rejoin_window_hours` of writes at `write_rate_kb_s`, twice over.
    # Keystone writes little (users, projects, roles, revocations).
    rejoin_window_hours: int = _fix("give a positive whole number", 24, ge=1)
    write_rate_kb_s: int = _fix("give a positive whole number", 2, ge=1)
    gcache_mb: int | None = _fix("give gcache at least 16 MB, or leave it out to size it from the rejoin window",
                                 None, ge=16)


class KeystoneIn(_Schema):
    # Tokens are Fernet: validated locally in every region with the same keys.
    token_expiration_s: int = _fix("give a positive whole number", 3600, ge=1)  # Keystone's default lifetime
    # Keystone's default: service tokens may revive expired ones for 2 days.
    allow_expired_window_s: int = _fix("give a positive whole number", 172800, ge=1)
    rotation_interval_h: int = _fix("give a positive whole number", 24, ge=1)  # how often keys rotate
    # A validated token stays cached in its region's memcached for this long. Caches are
    # per region, so this bounds how long a token revoked in one region keeps validating
    # in another.
    token_cache_s: int = _fix("give a positive whole number", 60, ge=1)
    # The source design: objects cached for 60 minutes.
    cache_expiration_s: int = _fix("give a positive whole number", 3600, ge=1)
    # One dead memcached node must not stall the API: short timeouts, retried later.
    memcache_dead_retry_s: int = _fix("give a positive whole number", 30, ge=1)
    memcache_socket_timeout_s: int = _fix("give a positive whole number", 1, ge=1)
    # None: one per vCPU of the flavor.
    uwsgi_processes: int | None = _fix("give the number of uwsgi worker processes, or leave it out", None, ge=1)


class QuotasIn(_Schema):
    # Neutron's per-project defaults (neutron.conf [quotas] quota_security_group_rule and
    # quota_security_group). Set them to what `openstack quota show <project>` says.
    security_group_rules: int = _fix("give the project's security group rule quota "
                                     "(`openstack quota show <project>`)", 100, ge=1)
    security_groups: int = _fix("give the project's security group quota (`openstack quota show <project>`)",
                                10, ge=1)


class MonitoringIn(_Schema):
    # Where Prometheus scrapes from: the exporters answer only this network (security groups).
    cidr: str | None = _fix("give the CIDR your Prometheus scrapes from, e.g. cidr: 192.0.2.0/28 "
                            "(default: admin_cidr)", None)
    scrape_interval_s: int = _fix("give a whole number of seconds, e.g. 15", 15, ge=1, le=300)
    # How long a condition holds before its alert fires (the rules' `for:`).
    alert_after_s: int = _fix("give a whole number of seconds, e.g. 60", 60, ge=1, le=3600)
    # How often each node writes its own metrics (node-agent metrics, a systemd timer).
    node_metrics_interval_s: int = _fix("give a whole number of seconds, e.g. 15", 15, ge=5, le=300)


class BackupStoreIn(_Schema):
    # The object store (Swift API) the backups go to: the infrastructure cloud's, never one
    # that authenticates through the Keystone being backed up (a restore must not need it).
    auth_url: str = _fix("give the object store's auth URL, e.g. auth_url: https://keystone.infra.example.com:5000/v3 "
                         "(Swift v1 auth: https://swift.example.com/auth/v1.0 with auth_version: '1')",
                         min_length=8)
    auth_version: Literal["3", "1"] = _fix("write '3' (Keystone v3 application credential) or '1' "
                                           "(Swift's own v1 auth)", "3")
    # Where the store's endpoints are: the only place the Galera nodes send backups to.
    cidr: str = _fix("give the network of the object store's endpoints, e.g. cidr: 203.0.113.0/24")


class BackupIn(_Schema):
    store: BackupStoreIn = _fix("give the object store as a mapping: backup.store: {auth_url: ..., cidr: ...}")
    # One container per region (the region stack creates it); each region's backups are also
    # copied to the next region's container.
    container_prefix: str | None = _fix("give a prefix of lower-case letters, digits and dashes, e.g. "
                                        "container_prefix: keystone-backups (default: <name>-backups)", None)
    full_interval_h: int = _fix("give the hours between full backups, e.g. 24", 24, ge=1, le=24 * 31)
    # Incremental backups, and the binary logs shipped with them (the point-in-time window).
    incremental_interval_h: int = _fix("give the hours between incremental backups, e.g. 1", 1, ge=1, le=24)
    keep_days: int = _fix("give the days a backup is kept, e.g. 14", 14, ge=1, le=3650)
    # The region's latest good backup older than this: BackupTooOld fires.
    max_age_h: int | None = _fix("give the age in hours after which an alert fires (default: twice the "
                                 "incremental interval)", None, ge=1)


class DnsIn(_Schema):
    zone: str = _fix("name the Designate zone that holds the public names, e.g. zone: example.com.")
    ttl: int = _fix("give the records' TTL in seconds, e.g. ttl: 300", 300, ge=30, le=86400)


class TopologyIn(_Schema):
    name: str = _fix("give the deployment a short name such as 'keystone'")
    bootstrap_region: str = _fix("name the region whose first Galera node starts the cluster")
    admin_cidr: str = _fix("give the CIDR operators SSH from, e.g. 203.0.113.0/24")
    defaults: DefaultsIn = _fix("write settings as key: value pairs", DefaultsIn())
    regions: list[RegionIn] = _fix("list the regions, each with name, index, cidr, external_network "
                                         "and public_hostname", min_length=1)
    arbitrator: ArbitratorIn | None = _fix("give the arbitrator as a mapping, at least arbitrator.region", None)
    galera: GaleraIn = _fix("give galera settings as key: value pairs", GaleraIn())
    keystone: KeystoneIn = _fix("give keystone settings as key: value pairs", KeystoneIn())
    quotas: QuotasIn = _fix("give the project's quotas as key: value pairs, e.g. "
                            "quotas: {security_group_rules: 100, security_groups: 10}", QuotasIn())
    dns: DnsIn | None = _fix("give dns as a mapping, e.g. dns: {zone: example.com.}", None)
    monitoring: MonitoringIn = _fix("give monitoring settings as key: value pairs", MonitoringIn())
    backup: BackupIn | None = _fix("give backup as a mapping, at least backup.store: {auth_url: ..., cidr: ...}", None)


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
    weight: int = 1


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
    # Galera's vote (pc.weight) for a Galera node, 1 for the arbitrator; 0 for other roles.
    weight: int = 0


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
    # A replica region (README "Replica regions"): its database nodes are role REPLICA,
    # replicating from the Galera nodes of `sources` (core regions, in order).
    replica: bool = False
    sources: tuple[str, ...] = ()

    @property
    def core(self) -> bool:
        """A region with Galera members (neither a witness nor a replica region)."""
        return not self.witness and not self.replica

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
class Quotas:
    """The Neutron quotas of the project each region stack deploys into."""

    security_group_rules: int
    security_groups: int


@dataclass(frozen=True)
class Monitoring:
    """Prometheus scrapes every node's exporters from `cidr`; the alert rules fire after
    `alert_after_s` (keystone_multiregion/monitoring.py)."""
    cidr: str
    scrape_interval_s: int
    alert_after_s: int
    node_metrics_interval_s: int = 15


@dataclass(frozen=True)
class BackupStore:
    auth_url: str
    auth_version: str
    cidr: str


@dataclass(frozen=True)
class Backup:
    """Scheduled mariabackup backups of each region's first Galera node, encrypted on the node,
    stored in the region's container and copied to the next region's (agents/galera-node.py)."""
    store: BackupStore
    container_prefix: str
    full_interval_h: int
    incremental_interval_h: int
    keep_days: int
    max_age_h: int

    def container(self, region: str) -> str:
        return f"{self.container_prefix}-{region}"


@dataclass(frozen=True)
class Dns:
    """Each region stack manages its public_hostname's A records in this Designate zone."""
    zone: str  # fully qualified, with the trailing dot
    ttl: int


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
    quotas: Quotas
    galera_data_device: str
    regions: tuple[Region, ...]
    arbitrator: Arbitrator | None = None
    galera: GaleraSettings | None = None
    keystone: KeystoneSettings | None = None
    dns: Dns | None = None
    monitoring: Monitoring | None = None
    backup: Backup | None = None
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
    def galera_members(self) -> tuple[Node, ...]:
        """Every member of the Galera cluster: the data nodes and the arbitrator."""
        return tuple(n for n in self._nodes if n.role in ("galera", ARBITRATOR))

    @property
    def galera_voters(self) -> int:
        """The votes of the cluster: the sum of its members' weights (pc.weight)."""
        return sum(n.weight for n in self.galera_members)

    def votes_of(self, region: str) -> int:
        return sum(n.weight for n in self.galera_members if n.region == region)

    def replica_sources(self, node: Node) -> tuple[Node, ...]:
        """The core Galera nodes a replica replicates from, in the order it tries them: the
        first is its source, the others its fallbacks (agents/replica-node.py switch).

        Deterministic: replica n of a region with source regions S (k of them) starts in
        S[(n-1) mod k], then the next source regions in turn, so neighbouring replicas
        replicate from different regions. Inside each region, its Galera nodes rotated by
        (n-1) // k, so two replicas of the same region on the same source region spread
        over its nodes too."""
        region = self.region(node.region)
        sources = region.sources
        k = len(sources)
        start = (node.number - 1) % k
        shift = (node.number - 1) // k
        out: list[Node] = []
        for name in sources[start:] + sources[:start]:
            members = self.nodes(name, "galera")
            s = shift % len(members)
            out += members[s:] + members[:s]
        return tuple(out)

    def dhcp_pool(self, region: str) -> tuple[str, str]:
        net = self.region(region).network
        start = self.first_offset + len(ADDRESS_BLOCKS) * self.block_size
        return _host(net, start), str(net.broadcast_address - 1)


def _host(net: ipaddress.IPv4Network, offset: int) -> str:
    return str(net.network_address + offset)



# --------------------------------------------------------------------------------------
# Loading and validation
# --------------------------------------------------------------------------------------

# The problem part of a schema error, by pydantic's error type.
_PROBLEMS = {
    "missing": "is missing",
    "extra_forbidden": "is not a known setting",
    "int_type": "{input!r} is not a whole number",
    "string_type": "{input!r} is not text",
    "bool_type": "{input!r} is not true or false",
    "list_type": "{input!r} is not a list",
    "model_type": "{input!r} is not a mapping",
    "dict_type": "{input!r} is not a mapping",
    "literal_error": "{input!r} is not {expected}",
    "greater_than_equal": "{input!r} is below the minimum of {ge}",
    "less_than_equal": "{input!r} is above the maximum of {le}",
    "too_short": "is empty",
    "string_too_short": "is empty",
}
# Settings that moved: the fix names the new place instead of listing the known settings.
_MOVED = {
    ("defaults", "max_rules_per_group"): "Neutron's rule quota is per project, not per group: set "
                                         "quotas.security_group_rules instead",
}


def _path(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _field_at(loc: tuple) -> tuple[type[BaseModel] | None, Any]:
    """The schema model holding the last key of `loc`, and that key's field (None if unknown)."""
    model, info = TopologyIn, None
    for part in loc:
        if isinstance(part, int):  # a list index: the same field's item model
            continue
        if model is None or part not in model.model_fields:
            return model, None
        info = model.model_fields[part]
        model = _model_in(info.annotation)
    return model, info


def _schema_error(exc: ValidationError) -> TopologyError:
    """The first schema error as one TopologyError line: full path, problem, fix."""
    errors = exc.errors(include_url=False)
    # A misspelt key is the likely cause of the other errors beside it (a "missing" one).
    err = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
    loc = tuple(err["loc"])
    where = _path(loc)
    template = _PROBLEMS.get(err["type"])
    problem = (template.format(input=err.get("input"), **(err.get("ctx") or {})) if template
               else f"{err.get('input')!r}: {err['msg'][0].lower()}{err['msg'][1:]}")
    if err["type"] == "extra_forbidden":
        parent, _ = _field_at(loc[:-1])
        known = ", ".join(sorted(parent.model_fields)) if parent else "the settings in topology.yaml"
        return TopologyError(where, problem, _MOVED.get(loc, f"use one of {known}"))
    _, info = _field_at(loc)
    fix = info.description if info is not None and info.description else "see topology.yaml in the project"
    return TopologyError(where, problem, fix)


def _cidr(value: str, where: str, versions: tuple[int, ...] = (4,)):
    try:
        net = ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise TopologyError(where, f"{value!r} is not a valid CIDR",
                            "write an IPv4 network such as 10.10.1.0/24") from None
    if net.version not in versions:
        raise TopologyError(where, f"{value!r} is not IPv4", "use an IPv4 network such as 10.10.1.0/24")
    if str(net) != value:
        raise TopologyError(where, f"{value!r} has host bits set", f"write the network address, {net}")
    return net


def _admin_cidr(value: str):
    # By hand: a size limit that depends on the address family (ADMIN_MAX_PREFIX, with its reason).
    net = _cidr(value, "admin_cidr", versions=(4, 6))
    limit = ADMIN_MAX_PREFIX[net.version]
    if net.prefixlen < limit:
        reach = "the whole internet" if net.prefixlen == 0 else f"2^{net.max_prefixlen - net.prefixlen} addresses"
        raise TopologyError("admin_cidr", f"{net} opens SSH to {reach}, more than an operator network "
                            f"(at most a /{ADMIN_MAX_PREFIX[4]} for IPv4, a /{ADMIN_MAX_PREFIX[6]} for IPv6)",
                            f"give the CIDR of your bastion or operator network, a /{limit} or smaller")
    return net


def _given(model: BaseModel | None, *without: str) -> dict[str, Any]:
    """The settings a schema section sets (unset ones fall back to defaults)."""
    return model.model_dump(exclude_none=True, exclude=set(without)) if model is not None else {}


def _role_spec(role: str, spec: Mapping[str, Any], where: str) -> RoleSpec:
    # By hand: the smallest count depends on the role, and the message says why.
    minimum = MIN_COUNTS[role]
    why = {"proxy": "two proxies are needed so a VRRP address survives the loss of one",
           REPLICA: "a replica region reads from two replicas at least, fed from two core regions"
           }.get(role, f"every region runs at least one {role} node")
    if spec["count"] < minimum:
        raise TopologyError(f"{where}.count", f"{spec['count']} is below the minimum of {minimum}",
                            f"set it to {minimum} or more ({why})")
    if role != "galera" and "weight" in spec:
        raise TopologyError(f"{where}.weight", f"a {role} node has no vote",
                            "remove weight: it is the vote of a Galera node (roles.galera.weight)")
    return RoleSpec(role=role, count=spec["count"], flavor=spec["flavor"], vcpus=spec["vcpus"],
                    volume_gb=spec["volume_gb"] if role in ("galera", REPLICA) else 0,
                    weight=spec.get("weight", 1) if role == "galera" else 0)


def load_topology(data: Mapping[str, Any]) -> Topology:
    """Validate a topology mapping and return the immutable model, or raise TopologyError."""
    if not isinstance(data, Mapping):
        raise TopologyError("(top level)", "is not a mapping", "see topology.yaml in the project for an example")
    try:
        spec = TopologyIn.model_validate(dict(data))
    except ValidationError as exc:
        raise _schema_error(exc) from None

    if not _NAME_RE.match(spec.name):
        raise TopologyError("name", f"{spec.name!r} is not a valid name",
                            "use 2-32 lower-case letters, digits and dashes, starting with a letter")
    d = spec.defaults
    role_defaults: dict[str, dict[str, Any]] = {}
    for role in ROLES + (REPLICA,):
        role_defaults[role] = {**DEFAULT_ROLES[role], **_given(getattr(d, role))}
        if getattr(d, role) is not None:
            _role_spec(role, role_defaults[role], f"defaults.{role}")  # the error names defaults, not a region
    arbitrator_defaults = {**DEFAULT_ARBITRATOR, **_given(d.arbitrator)}
    # By hand: the VIPs share the first address block.
    if d.public_vips + d.internal_vips > d.block_size:
        raise TopologyError("defaults.public_vips", f"{d.public_vips} public + {d.internal_vips} internal VIPs "
                            f"do not fit the address block of {d.block_size}",
                            "lower the VIP counts or raise defaults.block_size")
    for i, ns in enumerate(d.dns_nameservers):
        try:
            ipaddress.ip_address(ns)
        except ValueError:
            raise TopologyError(f"defaults.dns_nameservers[{i}]", f"{ns!r} is not an IP address",
                                "list name servers by address") from None
    admin_net = _admin_cidr(spec.admin_cidr)

    regions: list[Region] = []
    seen_names: dict[str, int] = {}
    seen_index: dict[int, int] = {}
    seen_hosts: dict[str, int] = {}
    nets: list[tuple[ipaddress.IPv4Network, int]] = []
    first_offset, block_size, min_pool = d.first_offset, d.block_size, d.min_dhcp_pool
    for i, r in enumerate(spec.regions):
        where = f"regions[{i}]"
        if not _NAME_RE.match(r.name):
            raise TopologyError(f"{where}.name", f"{r.name!r} is not a valid name",
                                "use 2-32 lower-case letters, digits and dashes, starting with a letter")
        if r.name in seen_names:
            raise TopologyError(f"{where}.name", f"{r.name!r} is also the name of regions[{seen_names[r.name]}]",
                                "give every region its own name")
        seen_names[r.name] = i
        if r.index in seen_index:
            raise TopologyError(f"{where}.index", f"{r.index} is also the index of regions[{seen_index[r.index]}]",
                                "give every region its own index")
        seen_index[r.index] = i
        net = _cidr(r.cidr, f"{where}.cidr")
        # By hand: relations between regions.
        for other, j in nets:
            if net.overlaps(other):
                raise TopologyError(f"{where}.cidr", f"{net} overlaps regions[{j}].cidr {other}",
                                    "give every region its own non-overlapping range")
        nets.append((net, i))
        roles_given = [role for role in ROLES + (REPLICA,) if getattr(r.roles, role) is not None]
        if r.witness and roles_given:
            raise TopologyError(f"{where}.roles", "is set on a witness region",
                                "remove it: a witness region runs only the arbitrator")
        # By hand: required except on a witness region.
        host = r.public_hostname
        if host is None and not r.witness:
            raise TopologyError(f"{where}.public_hostname", "is missing",
                                "give the DNS name of the region's public endpoint")
        if host is None:
            host = ""
        elif not _HOST_RE.match(host):
            raise TopologyError(f"{where}.public_hostname", f"{host!r} is not a fully qualified host name",
                                "use a DNS name such as identity.region-a.example.com")
        if host and host in seen_hosts:
            raise TopologyError(f"{where}.public_hostname",
                                f"{host!r} is also the public_hostname of regions[{seen_hosts[host]}]",
                                "give every region its own endpoint name")
        seen_hosts[host] = i
        _check_replica_flags(r, where)
        if r.witness:
            roles = {role: RoleSpec(role=role, count=0, flavor="-", vcpus=1) for role in ROLES + (REPLICA,)}
        else:
            # A replica region's database nodes are replicas (its galera count is 0); a core
            # region has no replicas.
            db_role, no_role = ("galera", REPLICA) if not r.replica else (REPLICA, "galera")
            roles = {role: _role_spec(role, {**role_defaults[role], **_given(getattr(r.roles, role))},
                                      f"{where}.roles.{role}")
                     for role in ROLES + (REPLICA,) if role != no_role}
            roles[no_role] = RoleSpec(role=no_role, count=0, flavor="-", vcpus=1)
            roles = {role: roles[role] for role in ROLES + (REPLICA,)}
        # By hand: the address plan must fit the region's CIDR.
        for role, rs in roles.items():
            if rs.count > block_size:
                raise TopologyError(f"{where}.roles.{role}.count",
                                    f"{rs.count} nodes do not fit the address block of {block_size}",
                                    "lower the count or raise defaults.block_size")
        used = first_offset + len(ADDRESS_BLOCKS) * block_size
        available = net.num_addresses - 1 - used  # the broadcast address is not usable
        if available < min_pool:
            raise TopologyError(f"{where}.cidr", f"{net} is too small: fixed addresses need offsets "
                                f"{first_offset}-{used - 1} plus {min_pool} for DHCP",
                                f"use a larger range (a /{_prefix_for(used + min_pool + 1)} or bigger) "
                                "or a smaller defaults.block_size")
        existing = (ExistingNetwork(network_id=r.existing_network.network_id, subnet_id=r.existing_network.subnet_id)
                    if r.existing_network is not None else None)
        regions.append(Region(name=r.name, index=r.index, cidr=str(net), external_network=r.external_network,
                              public_hostname=host, roles=roles, existing_network=existing,
                              openstack_region=r.openstack_region or r.name, witness=r.witness,
                              replica=r.replica, sources=tuple(r.sources or ())))

    boot = spec.bootstrap_region
    if boot not in seen_names:
        raise TopologyError("bootstrap_region", f"{boot!r} is not a region in this topology",
                            f"set it to one of {', '.join(seen_names)}")

    arbitrator = None
    if spec.arbitrator is not None:
        a = spec.arbitrator
        if a.region not in seen_names:
            raise TopologyError("arbitrator.region", f"{a.region!r} is not a region in this topology",
                                f"set it to one of {', '.join(seen_names)}")
        settings = {**arbitrator_defaults, **_given(a, "region")}
        arbitrator = Arbitrator(region=a.region, flavor=settings["flavor"], vcpus=settings["vcpus"])

    for i, r in enumerate(regions):
        if r.witness and (arbitrator is None or arbitrator.region != r.name):
            raise TopologyError(f"regions[{i}].witness", f"{r.name} is a witness region without the arbitrator",
                                f"set arbitrator.region: {r.name}, or remove witness: true")
    if boot in [r.name for r in regions if r.witness]:
        raise TopologyError("bootstrap_region", f"{boot!r} is a witness region, which holds no data",
                            "bootstrap from a region with Galera nodes")
    regions = _check_replica_regions(regions, boot, arbitrator)
    galera = _galera_settings(spec.galera)
    keystone = _keystone_settings(spec.keystone)
    nodes = _compute_nodes(regions, arbitrator, first_offset, block_size)
    topo = Topology(
        name=spec.name, bootstrap_region=boot, admin_cidr=str(admin_net), image=d.image,
        key_pair=d.key_pair, dns_nameservers=tuple(d.dns_nameservers), first_offset=first_offset,
        block_size=block_size, min_dhcp_pool=min_pool, public_vips=d.public_vips, internal_vips=d.internal_vips,
        peer_rules=d.peer_rules, quotas=Quotas(**spec.quotas.model_dump()),
        galera_data_device=d.galera_data_device, regions=tuple(regions),
        arbitrator=arbitrator, galera=galera, keystone=keystone, dns=_dns(spec.dns, regions),
        monitoring=Monitoring(cidr=str(_cidr(spec.monitoring.cidr, "monitoring.cidr", versions=(4, 6))
                                       if spec.monitoring.cidr else admin_net),
                              scrape_interval_s=spec.monitoring.scrape_interval_s,
                              alert_after_s=spec.monitoring.alert_after_s,
                              node_metrics_interval_s=spec.monitoring.node_metrics_interval_s),
        backup=_backup(spec, regions), _nodes=nodes)
    _check_quorum(topo)
    _check_quotas(topo)
    return topo


def _backup(spec: TopologyIn, regions) -> Backup | None:
    b = spec.backup
    if b is None:
        return None
    url = b.store.auth_url
    if not re.match(r"^https?://[^/\s]+(/\S*)?$", url):
        raise TopologyError("backup.store.auth_url", f"{url!r} is not an http(s) URL",
                            "give the object store's auth URL, e.g. https://keystone.infra.example.com:5000/v3")
    cidr = _cidr(b.store.cidr, "backup.store.cidr", versions=(4, 6))
    for i, r in enumerate(regions):
        if cidr.version == 4 and cidr.overlaps(ipaddress.ip_network(r.cidr)):
            raise TopologyError("backup.store.cidr", f"{cidr} overlaps regions[{i}].cidr {r.cidr}",
                                "backups leave the regions: give the object store's own network")
    prefix = b.container_prefix or f"{spec.name}-backups"
    if not re.match(r"^[a-z][a-z0-9-]{0,200}[a-z0-9]$", prefix):
        raise TopologyError("backup.container_prefix", f"{prefix!r} is not a valid container prefix",
                            "use lower-case letters, digits and dashes, starting with a letter")
    if b.full_interval_h < b.incremental_interval_h:
        raise TopologyError("backup.full_interval_h", f"{b.full_interval_h} h is shorter than "
                            f"backup.incremental_interval_h ({b.incremental_interval_h} h)",
                            "make full backups at most as often as incremental ones")
    if b.keep_days * 24 < b.full_interval_h:
        raise TopologyError("backup.keep_days", f"{b.keep_days} days keep no full backup until the next one "
                            f"({b.full_interval_h} h)", "keep backups at least one full interval")
    max_age = b.max_age_h or 2 * b.incremental_interval_h
    return Backup(store=BackupStore(auth_url=url, auth_version=b.store.auth_version, cidr=str(cidr)),
                  container_prefix=prefix, full_interval_h=b.full_interval_h,
                  incremental_interval_h=b.incremental_interval_h, keep_days=b.keep_days, max_age_h=max_age)


def _dns(spec: DnsIn | None, regions) -> Dns | None:
    """The zone, fully qualified; every region's public name must lie inside it."""
    if spec is None:
        return None
    zone = spec.zone.strip().lower().rstrip(".")
    if not _HOST_RE.match(zone):
        raise TopologyError("dns.zone", f"{spec.zone!r} is not a DNS zone name", "use a name such as example.com.")
    for i, r in enumerate(regions):
        host = (r.public_hostname or "").lower()
        if host and not host.endswith("." + zone):
            raise TopologyError(f"regions[{i}].public_hostname", f"{r.public_hostname!r} is outside dns.zone {zone}.",
                                f"use a name inside {zone}. (e.g. identity.{r.name}.{zone}), or the zone that "
                                "holds it")
    return Dns(zone=zone + ".", ttl=spec.ttl)


_DURATION_RE = re.compile(r"^PT(?:(\d+)H)?(?:(\d+)M)?(?:(\d+(?:\.\d+)?)S)?$")


def duration_seconds(value: Any, where: str) -> float:
    """Seconds of an ISO 8601 duration as Galera writes them (PT3S, PT1M, PT1M30S)."""
    m = _DURATION_RE.match(str(value))
    if not m or not any(m.groups()):
        raise TopologyError(where, f"{value!r} is not a duration", "write it as Galera does, e.g. PT3S or PT1M")
    h, mi, sec = m.groups()
    return int(h or 0) * 3600 + int(mi or 0) * 60 + float(sec or 0)


def _galera_settings(g: GaleraIn) -> GaleraSettings:
    # By hand: the durations' format and their order, the windows' relation, gcache's size.
    secs = {k: duration_seconds(getattr(g, k), f"galera.{k}") for k in
            ("evs_keepalive_period", "evs_suspect_timeout", "evs_inactive_timeout", "evs_install_timeout")}
    if not secs["evs_keepalive_period"] < secs["evs_suspect_timeout"] <= secs["evs_inactive_timeout"]:
        raise TopologyError("galera.evs_suspect_timeout",
                            f"needs keepalive_period < suspect_timeout <= inactive_timeout, got "
                            f"{g.evs_keepalive_period}, {g.evs_suspect_timeout}, {g.evs_inactive_timeout}",
                            "raise the timeouts in that order (Codership's WAN values: PT3S, PT30S, PT1M)")
    if secs["evs_install_timeout"] > secs["evs_inactive_timeout"]:
        raise TopologyError("galera.evs_install_timeout",
                            f"{g.evs_install_timeout} is longer than evs_inactive_timeout {g.evs_inactive_timeout}",
                            "keep install_timeout at or below inactive_timeout")
    if g.evs_user_send_window > g.evs_send_window:
        raise TopologyError("galera.evs_user_send_window", "is larger than evs_send_window",
                            "keep user_send_window at or below send_window")
    values = g.model_dump()
    if g.gcache_mb is None:
        needed_kb = g.write_rate_kb_s * g.rejoin_window_hours * 3600 * 2
        values["gcache_mb"] = max(128, -(-needed_kb // 1024))
    return GaleraSettings(**values)


def _keystone_settings(k: KeystoneIn) -> KeystoneSettings:
    # By hand: a relation between two settings.
    if k.token_cache_s > k.token_expiration_s:
        raise TopologyError("keystone.token_cache_s", "is longer than a token lives",
                            "keep the token cache at or below token_expiration_s")
    return KeystoneSettings(**k.model_dump())


def _check_replica_flags(r: RegionIn, where: str) -> None:
    """By hand: what a region's replica, witness, sources and roles say together."""
    if r.replica and r.witness:
        raise TopologyError(f"{where}.replica", "is set on a witness region",
                            "a region is a witness (only the arbitrator) or a replica region, not both: "
                            "remove one of them")
    if r.sources is not None and not r.replica:
        raise TopologyError(f"{where}.sources", "is set on a region that is not a replica region",
                            "remove sources, or set replica: true (a core region's Galera nodes are members, "
                            "not replicas)")
    if r.replica and r.roles.galera is not None:
        raise TopologyError(f"{where}.roles.galera", "is set on a replica region, which has no Galera members",
                            "give its database nodes as roles.replica, e.g. replica: {count: 2}")
    if not r.replica and not r.witness and r.roles.replica is not None:
        raise TopologyError(f"{where}.roles.replica", "is set on a core region",
                            "remove it (a core region's database nodes are roles.galera), or set replica: true")


def _check_replica_regions(regions: list[Region], boot: str, arbitrator: Arbitrator | None) -> list[Region]:
    """By hand: replica regions need two core regions to replicate from, are never the bootstrap
    or the arbitrator's region, and name only core regions as sources. Returns the regions
    with every replica region's sources resolved (default: every core region, in ring order
    after the replica region, so different replica regions start on different core regions)."""
    replicas = [(i, r) for i, r in enumerate(regions) if r.replica]
    if not replicas:
        return regions
    core = [r.name for r in regions if r.core]
    names = [r.name for r in regions]
    first = replicas[0][0]
    if len(core) < 2:
        raise TopologyError(f"regions[{first}].replica",
                            f"a replica region needs two core regions to replicate from, the topology has "
                            f"{len(core)} ({', '.join(core) or 'none'})",
                            "add a core region (one without replica: true), or make this region a core region")
    if boot in [r.name for _, r in replicas]:
        raise TopologyError("bootstrap_region", f"{boot!r} is a replica region, which has no Galera node",
                            f"bootstrap from a core region: one of {', '.join(core)}")
    if arbitrator is not None and arbitrator.region in [r.name for _, r in replicas]:
        raise TopologyError("arbitrator.region", f"{arbitrator.region!r} is a replica region",
                            f"put the arbitrator in a core region ({', '.join(core)}) or a witness region: "
                            "a replica region votes in nothing")
    out = list(regions)
    for i, r in replicas:
        where = f"regions[{i}]"
        if r.sources:
            seen: set[str] = set()
            for j, name in enumerate(r.sources):
                if name not in names:
                    raise TopologyError(f"{where}.sources[{j}]", f"{name!r} is not a region in this topology",
                                        f"name core regions: {', '.join(core)}")
                if name not in core:
                    kind = "a witness" if regions[names.index(name)].witness else "a replica"
                    raise TopologyError(f"{where}.sources[{j}]", f"{name!r} is {kind} region, not a core region",
                                        f"replicate from core regions only: {', '.join(core)}")
                if name in seen:
                    raise TopologyError(f"{where}.sources[{j}]", f"{name!r} is listed twice",
                                        "list each source region once")
                seen.add(name)
            if len(seen) < 2:
                raise TopologyError(f"{where}.sources", f"names one core region ({r.sources[0]})",
                                    "list two or more core regions, so the replicas are fed from different "
                                    f"regions: e.g. sources: [{', '.join(core[:2])}]")
            sources = tuple(r.sources)
        else:
            after = [n for n in names[i + 1:] + names[:i] if n in core]
            sources = tuple(after)
        out[i] = dataclasses.replace(r, sources=sources)
    return out


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
                                  volume_gb=spec.volume_gb, weight=spec.weight))
        # A replica region's replicas take the galera block (it has no Galera nodes).
        spec = r.roles[REPLICA]
        base = first_offset + ADDRESS_BLOCKS.index("galera") * block_size
        for n in range(1, spec.count + 1):
            nodes.append(Node(name=f"{REPLICA}-{r.name}-{n}", role=REPLICA, region=r.name, number=n,
                              address=_host(net, base + n - 1), flavor=spec.flavor, vcpus=spec.vcpus,
                              volume_gb=spec.volume_gb))
        if arbitrator and arbitrator.region == r.name:
            base = first_offset + ADDRESS_BLOCKS.index(ARBITRATOR) * block_size
            nodes.append(Node(name=f"{ARBITRATOR}-{r.name}-1", role=ARBITRATOR, region=r.name, number=1,
                              address=_host(net, base), flavor=arbitrator.flavor, vcpus=arbitrator.vcpus,
                              weight=1))
    return tuple(nodes)


def _check_quorum(topo: Topology) -> None:
    problem = quorum_problem({n.name: (n.region, n.weight) for n in topo.galera_members})
    if problem is None:
        return
    kind, region, held, voters = problem
    data_nodes = len(topo.nodes(role="galera"))
    weighted = any(n.weight != 1 for n in topo.galera_members)
    if kind == "even":
        what = f"{data_nodes} Galera nodes" + (" + 1 arbitrator" if topo.arbitrator else "")
        fix = ("remove the arbitrator or change a region's galera count by one"
               if topo.arbitrator else
               "add an arbitrator (arbitrator.region) or change a region's galera count by one")
        if weighted:
            fix += ", or a region's galera weight"
        raise TopologyError("regions[*].roles.galera.count",
                            f"{what} make {voters} {'votes' if weighted else 'voters'}, an even number: a split "
                            "into two halves leaves no Primary component", fix)
    i = [r.name for r in topo.regions].index(region)
    raise TopologyError(f"regions[{i}].roles.galera.count",
                        f"region {region} holds {held} of {voters} Galera {'votes' if weighted else 'voters'}: "
                        "losing it would leave the others without quorum",
                        "add Galera nodes in other regions, or an arbitrator in another region"
                        + (", or lower its galera weight" if weighted else ""))


def quorum_problem(members: Mapping[str, tuple[str, int]]) -> tuple[str, str | None, int, int] | None:
    """What is wrong with a cluster of {member: (region, weight)}, or None: ("even", None, 0,
    votes) for an even number of votes, ("half", region, held, votes) for a region holding
    half of them or more. Used for the topology and for every step of a change (changes.py)."""
    voters = sum(w for _, w in members.values())
    if voters % 2 == 0:
        return ("even", None, 0, voters)
    held: dict[str, int] = {}
    for region, weight in members.values():
        held[region] = held.get(region, 0) + weight
    for region, votes in held.items():
        if votes * 2 >= voters:
            return ("half", region, votes, voters)
    return None


def _check_quotas(topo: Topology) -> None:
    # By hand: the count comes from the rules the whole topology implies (security.py).
    from .security import project_usage

    q = topo.quotas
    for r in topo.regions:
        use = project_usage(topo, r.name)
        raise_it = f"raise the project's quota with `openstack --os-region-name {r.openstack_region} quota set"
        if use.rules > q.security_group_rules:
            alt = " (or set defaults.peer_rules: cidr, one rule per region)" if topo.peer_rules == "address" else ""
            raise TopologyError("quotas.security_group_rules",
                                f"region {r.name} needs {use.rules} security group rules in its project "
                                f"({use.ingress} of its own, {use.rules - use.ingress} that Neutron adds), above "
                                f"the quota of {q.security_group_rules}",
                                f"{raise_it} --secgroup-rules {use.rules} <project>` and set "
                                f"quotas.security_group_rules: {use.rules}{alt}")
        if use.groups > q.security_groups:
            raise TopologyError("quotas.security_groups",
                                f"region {r.name} needs {use.groups} security groups in its project (one per "
                                f"role and Neutron's default), above the quota of {q.security_groups}",
                                f"{raise_it} --secgroups {use.groups} <project>` and set "
                                f"quotas.security_groups: {use.groups}")


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
