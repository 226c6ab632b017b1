"""One security group per role, with the rules the core computes for the region."""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_openstack as openstack

from keystone_multiregion.security import security_groups, security_rules
from keystone_multiregion.topology import Topology


@dataclass
class SecurityGroupsArgs:
    topology: Topology
    region: str


class SecurityGroups(pulumi.ComponentResource):
    group_ids: dict[str, pulumi.Output[str]]

    def __init__(self, name: str, args: SecurityGroupsArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("keystone-multiregion:security:SecurityGroups", name, None, opts)
        topo, region = args.topology, args.region
        child = pulumi.ResourceOptions(parent=self)
        groups = {
            role: openstack.networking.SecGroup(
                f"sg-{role}-{region}", name=f"{topo.name}-{region}-{role}",
                description=f"{role} nodes of {topo.name} in {region} (managed by keystone-multiregion)",
                opts=child)
            for role in security_groups(topo, region)
        }
        for rule in security_rules(topo, region):
            openstack.networking.SecGroupRule(
                f"sg-{rule.group}-{region}-{rule.key}",
                security_group_id=groups[rule.group].id,
                direction="ingress",
                ethertype=rule.ethertype,
                protocol=rule.protocol,
                port_range_min=rule.port,
                port_range_max=rule.port,
                remote_ip_prefix=rule.remote,
                # Peers in this region: their group, one rule for them all (security.py).
                remote_group_id=groups[rule.remote_group].id if rule.remote_group else None,
                description=rule.description,
                opts=child)
        self.group_ids = {role: g.id for role, g in groups.items()}
        self.register_outputs({"group_ids": self.group_ids})
