"""Security group rules per role, computed from the topology as plain data.

One group per role and region. Ingress only; egress keeps Neutron's default (to anywhere:
apt, DNS, NTP and the nodes' own connections need it, and Neutron rules only allow, so an
egress rule beside the default restricts nothing). The Galera nodes' backups to the object
store (topology `backup:`) are such egress: where they go is the plan the topology gives
galera-node, and the policy pack's backup policies check the containers and the store's
scheme (policy/README.md).

Every remote is a peer's /32 (or, with ``peer_rules: cidr``, its region's CIDR), never
0.0.0.0/0, except the public HTTPS frontend of the proxies, which is the service itself.
Keystone's plain-HTTP port (5000: the internal VIP, the Keystone nodes) is admitted from
the region's own network only; across regions Keystone is reached through the public
HTTPS endpoint (the proxies' backup servers, roles/proxy.py).

Peers in the same region are named by their security group (``remote_group_id``: Neutron
admits the addresses of that group's ports), one rule for all of them instead of one per
/32. Neutron's quota of rules is per project, and a region's groups share it with the
rules Neutron adds itself: ``project_usage`` counts them all (checked in topology.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .topology import ARBITRATOR, REPLICA, Topology

# Ports, in one place. Galera's from the source design: client, replication (tcp and
# udp), IST and SST.
PORTS = {
    "ssh": 22,
    "mysql": 3306,
    "galera_replication": 4567,
    "galera_ist": 4568,
    "galera_sst": 4444,
    # DB-aware health check (Synced and Primary) that the internal proxy asks; on a replica
    # (agents/replica-node.py health-server) the same port: replicating, read-only.
    "galera_health": 9200,
    "keystone": 5000,
    "memcached": 11211,
    "https": 443,
    # Prometheus exporters, reachable only from monitoring.cidr: MariaDB/Galera (Debian's
    # prometheus-mysqld-exporter) and HAProxy's own exporter.
    "mysqld_exporter": 9104,
    "haproxy_metrics": 8405,
    "node_exporter": 9100,
}
VRRP_PROTOCOL = "112"  # IP protocol number of VRRP; keepalived speaks it between the pair.
ANYWHERE = "0.0.0.0/0"


@dataclass(frozen=True)
class Rule:
    group: str  # role whose group holds the rule
    protocol: str  # "tcp", "udp" or an IP protocol number
    port: int | None  # None for protocols without ports
    remote: str | None  # remote_ip_prefix; None when remote_group names the source
    description: str
    # A role whose security group in the same region is the source (remote_group_id):
    # Neutron admits every address of that group's ports (group_members).
    remote_group: str | None = None

    @property
    def key(self) -> str:
        """A stable, readable resource-name suffix."""
        port = f"-{self.port}" if self.port is not None else ""
        proto = "vrrp" if self.protocol == VRRP_PROTOCOL else self.protocol
        source = f"sg-{self.remote_group}" if self.remote_group else self.remote
        return re.sub(r"[^a-z0-9-]", "-", f"{proto}{port}-from-{source}".lower())

    @property
    def ethertype(self) -> str:
        """Neutron's ethertype: a rule matches one address family (admin_cidr may be IPv6)."""
        return "IPv6" if self.remote and ":" in self.remote else "IPv4"


@dataclass(frozen=True)
class FromGroup:
    """A rule source: the security group of `role` in the rule's own region."""

    role: str


def security_groups(topo: Topology, region: str) -> tuple[str, ...]:
    """The roles that get a security group in this region: those with nodes there."""
    return tuple(role for role in ("proxy", "galera", "keystone", "memcached", ARBITRATOR, REPLICA)
                 if topo.nodes(region, role))


def replicas_of(topo: Topology, region: str) -> tuple:
    """The replicas (of every replica region) that replicate from this region's Galera nodes:
    each may seed from and replicate from any of its sources (its fallbacks included)."""
    return tuple(n for n in topo.nodes(role=REPLICA)
                 if any(s.region == region for s in topo.replica_sources(n)))


def _remotes(topo: Topology, region: str, nodes) -> list:
    """Sources admitting these nodes: their region's CIDR (peer_rules: cidr), or in this
    region their role's group, elsewhere each node's /32."""
    if topo.peer_rules == "cidr":
        cidrs = []
        for n in nodes:
            cidr = topo.region(n.region).cidr
            if cidr not in cidrs:
                cidrs.append(cidr)
        return cidrs
    out: list = []
    for n in nodes:
        source = FromGroup(n.role) if n.region == region else f"{n.address}/32"
        if source not in out:
            out.append(source)
    return out


def security_rules(topo: Topology, region: str) -> tuple[Rule, ...]:
    rules: list[Rule] = []

    def allow(group, protocol, port, remotes, description):
        for remote in remotes:
            if isinstance(remote, FromGroup):
                rules.append(Rule(group, protocol, port, None, description, remote_group=remote.role))
            else:
                rules.append(Rule(group, protocol, port, remote, description))

    local = lambda role: [FromGroup(role)] if topo.nodes(region, role) else []  # noqa: E731
    galera_peers = _remotes(topo, region, topo.nodes(role="galera"))
    voters = _remotes(topo, region, topo.nodes(role="galera") + topo.nodes(role=ARBITRATOR))

    for group in security_groups(topo, region):
        allow(group, "tcp", PORTS["ssh"], [topo.admin_cidr], "SSH from the admin network")
        allow(group, "tcp", PORTS["node_exporter"], [topo.monitoring.cidr], "Prometheus: node_exporter")

    # Galera: clients are the local proxies and the peers; replication from every voter;
    # IST and SST only between data nodes of every region.
    # The proxies' database frontends keep other regions' Galera nodes as their last backups,
    # so every region's proxies may reach MySQL and the health check.
    # A replica region's proxies never reach the core's database: their frontend serves the
    # region's own replicas (roles/proxy.py).
    proxies = _remotes(topo, region, [p for p in topo.nodes(role="proxy") if topo.region(p.region).core])
    allow("galera", "tcp", PORTS["mysql"], proxies + [p for p in galera_peers if p not in proxies],
          "MySQL from the proxies and Galera peers")
    # Asynchronous replication (and the replica's seeding dump) from the replica regions'
    # replicas that name this region among their sources: MySQL's port, nothing else.
    allow("galera", "tcp", PORTS["mysql"], _remotes(topo, region, replicas_of(topo, region)),
          "MariaDB replication from replica regions' replicas")
    allow("galera", "tcp", PORTS["galera_replication"], voters, "Galera replication")
    allow("galera", "udp", PORTS["galera_replication"], voters, "Galera replication (multicast/udp)")
    allow("galera", "tcp", PORTS["galera_ist"], galera_peers, "Galera IST")
    allow("galera", "tcp", PORTS["galera_sst"], galera_peers, "Galera SST")
    allow("galera", "tcp", PORTS["galera_health"], proxies, "Galera health check from the proxies")
    allow("galera", "tcp", PORTS["mysqld_exporter"], [topo.monitoring.cidr], "Prometheus: mysqld_exporter")

    # A replica: its region's proxies (the database frontend and its health check), Prometheus.
    local_proxies = [FromGroup("proxy")] if topo.nodes(region, "proxy") else []
    allow(REPLICA, "tcp", PORTS["mysql"], local_proxies, "MySQL from the local proxies")
    allow(REPLICA, "tcp", PORTS["galera_health"], local_proxies, "replica health check from the local proxies")
    # node-agent restarts a replica only while another replica of the region answers it.
    allow(REPLICA, "tcp", PORTS["galera_health"], local(REPLICA),
          "replica health check from the region's other replicas (node-agent's restart guard)")
    allow(REPLICA, "tcp", PORTS["mysqld_exporter"], [topo.monitoring.cidr], "Prometheus: mysqld_exporter")

    if topo.nodes(region, ARBITRATOR):
        allow(ARBITRATOR, "tcp", PORTS["galera_replication"], galera_peers, "Galera replication")
        allow(ARBITRATOR, "udp", PORTS["galera_replication"], galera_peers, "Galera replication (udp)")

    allow("keystone", "tcp", PORTS["keystone"], local("proxy"), "Keystone API from the local proxies")
    allow("memcached", "tcp", PORTS["memcached"], local("keystone"), "memcached from the local Keystone nodes")
    # node-agent restarts memcached only while another memcached node of the region answers it.
    allow("memcached", "tcp", PORTS["memcached"], local("memcached"),
          "memcached from the region's other memcached nodes (node-agent's restart guard)")

    allow("proxy", "tcp", PORTS["https"], [ANYWHERE], "Keystone public endpoint (HTTPS)")
    allow("proxy", "tcp", PORTS["haproxy_metrics"], [topo.monitoring.cidr], "Prometheus: HAProxy's exporter")
    allow("proxy", "tcp", PORTS["keystone"], [topo.region(region).cidr],
          "Keystone internal endpoint (plain HTTP) from this region's network only")
    allow("proxy", "tcp", PORTS["mysql"], local("keystone"), "database frontend from the local Keystone nodes")
    allow("proxy", VRRP_PROTOCOL, None, local("proxy"), "VRRP between the proxy pair")
    groups = security_groups(topo, region)
    return tuple(r for r in rules if r.group in groups and (r.remote_group is None or r.remote_group in groups))


def group_members(topo: Topology, region: str, role: str) -> tuple[str, ...]:
    """The addresses of the ports in a role's security group in a region: what a rule with
    that group as its remote admits. The proxies' group also holds the VIP ports
    (components/vips.py), whose addresses the proxies carry as allowed address pairs."""
    addresses = [n.address for n in topo.nodes(region, role)]
    if role == "proxy":
        addresses += [v.address for v in topo.vips(region)]
    return tuple(addresses)


def remote_prefixes(topo: Topology, region: str, rule: Rule) -> tuple[str, ...]:
    """The address prefixes a rule of this region admits: its remote_ip_prefix, or its
    remote group's members as /32s. The lab's firewall enforces rules through this."""
    if rule.remote_group is None:
        return (rule.remote,)
    return tuple(f"{a}/32" for a in group_members(topo, region, rule.remote_group))


# What Neutron adds to a project on its own, against the same quotas: two egress rules
# (IPv4 and IPv6, to anywhere) in every group it creates, and the project's `default`
# group, which holds those two plus two ingress rules from itself.
NEUTRON_EGRESS_RULES_PER_GROUP = 2
NEUTRON_DEFAULT_GROUP_RULES = 4


@dataclass(frozen=True)
class ProjectUsage:
    """What a region stack holds against its project's Neutron quotas."""

    groups: int  # ours and Neutron's default group
    rules: int  # all of them
    ingress: int  # the rules we create (security_rules)


def project_usage(topo: Topology, region: str) -> ProjectUsage:
    groups = len(security_groups(topo, region))
    ingress = len(security_rules(topo, region))
    return ProjectUsage(groups=groups + 1, ingress=ingress,
                        rules=ingress + NEUTRON_EGRESS_RULES_PER_GROUP * groups + NEUTRON_DEFAULT_GROUP_RULES)
