"""The region's security groups, enforced inside each lab node's namespace.

On OpenStack, Neutron applies a node's security group; in the lab the same rules
(keystone_multiregion.security.security_rules, the data the Pulumi components use)
become an nftables input chain in the node's namespace: established traffic, loopback
and the group's rules are accepted, everything else is dropped. So a lab test that a
port is closed exercises the very rules a stack would create.

A rule whose source is a security group (remote_group_id, for peers in the same region)
becomes one line per address of that group's ports (security.remote_prefixes), as
Neutron expands it.

One deliberate difference: ICMP echo is accepted, so the lab can ping between nodes.
"""

from __future__ import annotations

from keystone_multiregion.security import VRRP_PROTOCOL, remote_prefixes, security_rules
from keystone_multiregion.topology import Node, Topology

TABLE = "ksl_sg"


def ruleset(topo: Topology, node: Node) -> str:
    """The nft script for one node: its role's group in its region."""
    lines = [
        f"table inet {TABLE} {{",
        "  chain input {",
        "    type filter hook input priority 0; policy drop;",
        "    ct state established,related accept",
        "    iif lo accept",
        "    icmp type echo-request accept",
    ]
    for rule in security_rules(topo, node.region):
        if rule.group != node.role:
            continue
        if rule.protocol == VRRP_PROTOCOL:
            match = f"ip protocol {VRRP_PROTOCOL}"
        else:
            match = f"{rule.protocol} dport {rule.port}"
        for prefix in remote_prefixes(topo, node.region, rule):
            if prefix == "0.0.0.0/0":
                remote = ""
            else:
                remote = f"{'ip6' if ':' in prefix else 'ip'} saddr {prefix} "
            lines.append(f"    {remote}{match} accept comment \"{rule.description}\"")
    lines += ["  }", "}"]
    return "\n".join(lines) + "\n"


def apply(net, topo: Topology, node: Node) -> None:
    """Load the node's ruleset into its namespace (replacing an earlier one)."""
    net.exec(node.name, ["nft", "-f", "-"], input=f"table inet {TABLE}\ndelete table inet {TABLE}\n"
             + ruleset(topo, node))
