"""Per-region network, subnet and router (or an existing network from the topology)."""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_openstack as openstack

from keystone_multiregion.topology import Topology


@dataclass
class RegionNetworkArgs:
    topology: Topology
    region: str


class RegionNetwork(pulumi.ComponentResource):
    network_id: pulumi.Output[str]
    subnet_id: pulumi.Output[str]

    def __init__(self, name: str, args: RegionNetworkArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("keystone-multiregion:network:RegionNetwork", name, None, opts)
        topo, region = args.topology, args.topology.region(args.region)
        child = pulumi.ResourceOptions(parent=self)

        if region.existing_network is not None:
            self.network_id = pulumi.Output.from_input(region.existing_network.network_id)
            self.subnet_id = pulumi.Output.from_input(region.existing_network.subnet_id)
        else:
            network = openstack.networking.Network(
                f"net-{region.name}", name=f"{topo.name}-{region.name}", admin_state_up=True, opts=child)
            start, end = topo.dhcp_pool(region.name)
            subnet = openstack.networking.Subnet(
                f"subnet-{region.name}",
                name=f"{topo.name}-{region.name}",
                network_id=network.id,
                cidr=region.cidr,
                ip_version=4,
                gateway_ip=region.gateway,
                enable_dhcp=True,
                # Fixed addresses live below the pool; DHCP never hands them out.
                allocation_pools=[openstack.networking.SubnetAllocationPoolArgs(start=start, end=end)],
                dns_nameservers=list(topo.dns_nameservers),
                opts=child)
            external = openstack.networking.get_network_output(
                name=region.external_network, external=True, opts=pulumi.InvokeOutputOptions(parent=self))
            router = openstack.networking.Router(
                f"router-{region.name}", name=f"{topo.name}-{region.name}",
                external_network_id=external.id, opts=child)
            openstack.networking.RouterInterface(
                f"router-if-{region.name}", router_id=router.id, subnet_id=subnet.id, opts=child)
            self.network_id = network.id
            self.subnet_id = subnet.id
        self.register_outputs({"network_id": self.network_id, "subnet_id": self.subnet_id})
