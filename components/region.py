"""One region: the top-level component a region stack creates."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import pulumi
import pulumi_openstack as openstack

from keystone_multiregion.security import security_groups
from keystone_multiregion.topology import Topology

from .network import RegionNetwork, RegionNetworkArgs
from .nodes import NodeGroup, NodeGroupArgs
from .security import SecurityGroups, SecurityGroupsArgs
from .vips import Vips, VipsArgs


@dataclass
class RegionArgs:
    topology: Topology
    region: str
    secrets: pulumi.Input[Mapping[str, str]]
    ca_key: pulumi.Input[str]  # signs this region's Galera node certificates
    cloud: str | None = None  # clouds.yaml entry; None: OS_CLOUD / OS_* from the environment


class RegionDeployment(pulumi.ComponentResource):
    def __init__(self, name: str, args: RegionArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("keystone-multiregion:region:Region", name, None, opts)
        topo = args.topology
        region = topo.region(args.region)
        # An explicit provider pins every resource to this region's cloud endpoint.
        provider = openstack.Provider(f"openstack-{region.name}", region=region.openstack_region,
                                      cloud=args.cloud, opts=pulumi.ResourceOptions(parent=self))
        child = pulumi.ResourceOptions(parent=self, providers={"openstack": provider})

        network = RegionNetwork(f"network-{region.name}", RegionNetworkArgs(topo, region.name), opts=child)
        groups = SecurityGroups(f"security-{region.name}", SecurityGroupsArgs(topo, region.name), opts=child)
        image = openstack.images.get_image_output(
            name=topo.image, most_recent=True, opts=pulumi.InvokeOutputOptions(parent=self, provider=provider))
        vip_addresses = [v.address for v in topo.vips(region.name)]

        self.node_groups = {}
        for role in security_groups(topo, region.name):  # every role present in this region
            self.node_groups[role] = NodeGroup(
                f"{role}-{region.name}",
                NodeGroupArgs(topology=topo, region=region.name, role=role,
                              network_id=network.network_id, subnet_id=network.subnet_id,
                              security_group_id=groups.group_ids[role], image_id=image.id,
                              secrets=args.secrets, ca_key=args.ca_key,
                              allowed_addresses=vip_addresses if role == "proxy" else []),
                opts=child)
        self.public_ips = {}
        if topo.vips(region.name):  # a witness site serves no endpoint
            self.vips = Vips(f"vips-{region.name}",
                             VipsArgs(topology=topo, region=region.name, network_id=network.network_id,
                                      subnet_id=network.subnet_id, security_group_id=groups.group_ids["proxy"]),
                             opts=child)
            self.public_ips = self.vips.public_ips
        self.addresses = {name: addr for g in self.node_groups.values() for name, addr in g.addresses.items()}
        self.register_outputs({"addresses": self.addresses, "public_ips": self.public_ips})
