"""The proxy pair's VRRP addresses: reserved ports, a floating IP per public VIP, and, with
`dns:` in the topology, the region's public name as A records of those floating IPs in
Designate (DNS round-robin over the region's public VIPs)."""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_openstack as openstack

from keystone_multiregion.topology import Topology


@dataclass
class VipsArgs:
    topology: Topology
    region: str
    network_id: pulumi.Input[str]
    subnet_id: pulumi.Input[str]
    security_group_id: pulumi.Input[str]


class Vips(pulumi.ComponentResource):
    public_ips: dict[str, pulumi.Output[str]]

    def __init__(self, name: str, args: VipsArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("keystone-multiregion:proxy:Vips", name, None, opts)
        topo, region = args.topology, args.topology.region(args.region)
        child = pulumi.ResourceOptions(parent=self)
        self.public_ips = {}
        for vip in topo.vips(region.name):
            # A port that no VM owns reserves the address, so Neutron never hands it out.
            port = openstack.networking.Port(
                f"port-{vip.name}", name=f"{topo.name}-{vip.name}",
                network_id=args.network_id,
                fixed_ips=[openstack.networking.PortFixedIpArgs(subnet_id=args.subnet_id, ip_address=vip.address)],
                security_group_ids=[args.security_group_id],
                description=f"VRRP address {vip.address} (master {vip.master}, vrid {vip.vrid})",
                opts=child)
            if vip.kind == "public":
                fip = openstack.networking.FloatingIp(
                    f"fip-{vip.name}", pool=region.external_network,
                    description=f"public endpoint {region.public_hostname} ({vip.name})", opts=child)
                # Associated separately, so the public address (and its DNS record) stays
                # even if the port is ever replaced.
                openstack.networking.FloatingIpAssociate(
                    f"fip-assoc-{vip.name}", floating_ip=fip.address, port_id=port.id,
                    fixed_ip=vip.address, opts=child)
                self.public_ips[vip.name] = fip.address
        if topo.dns and self.public_ips:
            zone = openstack.dns.get_dns_zone_output(name=topo.dns.zone, opts=pulumi.InvokeOutputOptions(parent=self))
            openstack.dns.RecordSet(
                f"dns-{region.name}", zone_id=zone.id, name=f"{region.public_hostname}.", type="A",
                records=list(self.public_ips.values()), ttl=topo.dns.ttl,
                description=f"{topo.name}: public endpoint of {region.name}", opts=child)
        self.register_outputs({"public_ips": self.public_ips})
