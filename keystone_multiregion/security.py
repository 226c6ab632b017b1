"""Security group rules per role, computed from the topology as plain data.

One group per role and region. Ingress only; egress keeps Neutron's default. Every
remote is a peer's /32 (or, with ``peer_rules: cidr``, its region's CIDR), never
0.0.0.0/0, except the public HTTPS frontend of the proxies, which is the service itself.
Keystone's plain-HTTP port (5000: the internal VIP, the Keystone nodes) is admitted from
the region's own network only; across regions Keystone is reached through the public
HTTPS endpoint (the proxies' backup servers, roles/proxy.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .topology import ARBITRATOR, Topology

# Ports, in one place. Galera's from the source design: client, replication (tcp and
# udp), IST and SST.
PORTS = {
    "ssh": 22,
    "mysql": 3306,
    "galera_replication": 4567,
    "galera_ist": 4568,
    "galera_sst": 4444,
    # DB-aware health check (Synced and Primary) that the internal proxy asks.
    "galera_health": 9200,
    "keystone": 5000,
    "memcached": 11211,
    "https": 443,
}
VRRP_PROTOCOL = "112"  # IP protocol number of VRRP; keepalived speaks it between the pair.
ANYWHERE = "0.0.0.0/0"


@dataclass(frozen=True)
class Rule:
    group: str  # role whose group holds the rule
    protocol: str  # "tcp", "udp" or an IP protocol number
    port: int | None  # None for protocols without ports
    remote: str  # remote_ip_prefix
    description: str

    @property
    def key(self) -> str:
        """A stable, readable resource-name suffix."""
        port = f"-{self.port}" if self.port is not None else ""
        proto = "vrrp" if self.protocol == VRRP_PROTOCOL else self.protocol
        return re.sub(r"[^a-z0-9-]", "-", f"{proto}{port}-from-{self.remote}".lower())


def security_groups(topo: Topology, region: str) -> tuple[str, ...]:
    """The roles that get a security group in this region: those with nodes there."""
    return tuple(role for role in ("proxy", "galera", "keystone", "memcached", ARBITRATOR)
                 if topo.nodes(region, role))


def _remotes(topo: Topology, nodes) -> list[str]:
    if topo.peer_rules == "cidr":
        cidrs = []
        for n in nodes:
            cidr = topo.region(n.region).cidr
            if cidr not in cidrs:
                cidrs.append(cidr)
        return cidrs
    return [f"{n.address}/32" for n in nodes]


def security_rules(topo: Topology, region: str) -> tuple[Rule, ...]:
    rules: list[Rule] = []

    def allow(group, protocol, port, remotes, description):
        for remote in remotes:
            rules.append(Rule(group, protocol, port, remote, description))

    local = lambda role: [f"{n.address}/32" for n in topo.nodes(region, role)]  # noqa: E731
    galera_peers = _remotes(topo, topo.nodes(role="galera"))
    voters = _remotes(topo, topo.nodes(role="galera") + topo.nodes(role=ARBITRATOR))

    for group in security_groups(topo, region):
        allow(group, "tcp", PORTS["ssh"], [topo.admin_cidr], "SSH from the admin network")

    # Galera: clients are the local proxies and the peers; replication from every voter;
    # IST and SST only between data nodes of every region.
    # The proxies' database frontends keep other regions' Galera nodes as their last backups,
    # so every region's proxies may reach MySQL and the health check.
    proxies = _remotes(topo, topo.nodes(role="proxy"))
    allow("galera", "tcp", PORTS["mysql"], proxies + [p for p in galera_peers if p not in proxies],
          "MySQL from the proxies and Galera peers")
    allow("galera", "tcp", PORTS["galera_replication"], voters, "Galera replication")
    allow("galera", "udp", PORTS["galera_replication"], voters, "Galera replication (multicast/udp)")
    allow("galera", "tcp", PORTS["galera_ist"], galera_peers, "Galera IST")
    allow("galera", "tcp", PORTS["galera_sst"], galera_peers, "Galera SST")
    allow("galera", "tcp", PORTS["galera_health"], proxies, "Galera health check from the proxies")

    if topo.nodes(region, ARBITRATOR):
        allow(ARBITRATOR, "tcp", PORTS["galera_replication"], galera_peers, "Galera replication")
        allow(ARBITRATOR, "udp", PORTS["galera_replication"], galera_peers, "Galera replication (udp)")

    allow("keystone", "tcp", PORTS["keystone"], local("proxy"), "Keystone API from the local proxies")
    allow("memcached", "tcp", PORTS["memcached"], local("keystone"), "memcached from the local Keystone nodes")

    allow("proxy", "tcp", PORTS["https"], [ANYWHERE], "Keystone public endpoint (HTTPS)")
    allow("proxy", "tcp", PORTS["keystone"], [topo.region(region).cidr],
          "Keystone internal endpoint (plain HTTP) from this region's network only")
    allow("proxy", "tcp", PORTS["mysql"], local("keystone"), "database frontend from the local Keystone nodes")
    allow("proxy", VRRP_PROTOCOL, None, local("proxy"), "VRRP between the proxy pair")
    groups = security_groups(topo, region)
    return tuple(r for r in rules if r.group in groups)
