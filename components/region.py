"""One region: the top-level component a region stack creates."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import pulumi
import pulumi_openstack as openstack

from keystone_multiregion.secrets import PUBLIC_CA_CERT
from keystone_multiregion.security import security_groups
from keystone_multiregion.topology import Topology

from .backup import backup_container
from .catalog import CatalogArgs, RegionCatalog
from .keys import SshAccess
from .certificates import signed_certificate
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
    # The public endpoint's certificate (PEM chain) and key; None: one from the shared
    # development CA (public_dev_ca_key), made here, which the stack must have allowed.
    public_cert: pulumi.Input[str] | None = None
    public_key: pulumi.Input[str] | None = None
    # The CA the proxies verify other regions' endpoints with, for operator certificates
    # from a private CA; None with real public certificates (the system's CAs).
    public_ca_cert: pulumi.Input[str] | None = None
    # The shared stack's development CA key: given only when the stack config allows a
    # development certificate (allowDevelopmentCertificate), never in production.
    public_dev_ca_key: pulumi.Input[str] | None = None
    cloud: str | None = None  # clouds.yaml entry; None: OS_CLOUD / OS_* from the environment
    register_catalog: bool = True  # register this region's endpoints once its Keystone answers
    ssh: SshAccess | None = None  # how the nodes' files (and Keystone's keys) reach them: required


def dev_certificate(parent: pulumi.Resource, hostname: str, region: str, addresses: list[str],
                    ca_key: pulumi.Input[str], ca_cert: pulumi.Input[str]):
    """A certificate for the public endpoint from the shared development CA (the shared
    stack's), for development only (the stack config says allowDevelopmentCertificate: true;
    publicCertificate and publicKey give a real one). Every region's proxies trust that CA, so
    they can verify each other's endpoints, their backup servers."""
    pulumi.log.warn(f"{region}: no publicCertificate in the stack config; the public endpoint {hostname} "
                    "gets a certificate from the shared development CA (development only)")
    cert, key = signed_certificate(parent, "public", region, hostname, [hostname], addresses, ca_key, ca_cert,
                                   ["digital_signature", "key_encipherment", "server_auth"])
    return cert, pulumi.Output.secret(key)


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
        secrets = args.secrets
        trust = args.public_ca_cert  # None: the public endpoints are trusted through the system's CAs
        if vip_addresses:
            cert, key = args.public_cert, args.public_key
            if cert is None or key is None:
                if args.public_dev_ca_key is None:
                    raise ValueError(f"{region.name}: the public endpoint has no certificate (public_cert, "
                                     "public_key) and no development CA was allowed (public_dev_ca_key)")
                dev_ca = pulumi.Output.from_input(args.secrets).apply(lambda s: s[PUBLIC_CA_CERT])
                cert, key = dev_certificate(self, region.public_hostname, region.name, vip_addresses,
                                            args.public_dev_ca_key, dev_ca)
                trust = dev_ca

            def with_public_tls(a):
                values = {k: v for k, v in a[0].items() if k != PUBLIC_CA_CERT}
                if a[3]:
                    values[PUBLIC_CA_CERT] = a[3]
                return {**values, "public_tls": {region.name: {"cert": a[1], "key": a[2]}}}

            secrets = pulumi.Output.all(args.secrets, cert, key, trust).apply(with_public_tls)

        if args.ssh is None:
            raise ValueError(f"{region.name}: its nodes get their files over SSH, but no SSH access was given "
                             "(RegionArgs.ssh)")
        self.node_groups = {}
        for role in security_groups(topo, region.name):  # every role present in this region
            self.node_groups[role] = NodeGroup(
                f"{role}-{region.name}",
                NodeGroupArgs(topology=topo, region=region.name, role=role,
                              network_id=network.network_id, subnet_id=network.subnet_id,
                              security_group_id=groups.group_ids[role], image_id=image.id,
                              secrets=secrets, ca_key=args.ca_key,
                              allowed_addresses=vip_addresses if role == "proxy" else [],
                              ssh=args.ssh, region_parent=self),
                opts=child)
        self.key_digests = {n: d for g in self.node_groups.values() for n, d in g.key_digests.items()}
        self.file_digests = {n: d for g in self.node_groups.values() for n, d in g.file_digests.items()}
        self.public_ips = {}
        if topo.vips(region.name):  # a witness site serves no endpoint
            self.vips = Vips(f"vips-{region.name}",
                             VipsArgs(topology=topo, region=region.name, network_id=network.network_id,
                                      subnet_id=network.subnet_id, security_group_id=groups.group_ids["proxy"]),
                             opts=child)
            self.public_ips = self.vips.public_ips
        if args.register_catalog and topo.nodes(region.name, "keystone"):
            admin_password = pulumi.Output.from_input(args.secrets).apply(lambda s: s["keystone_admin_password"])
            self.catalog = RegionCatalog(
                f"catalog-{region.name}",
                CatalogArgs(topology=topo, region=region.name, admin_password=pulumi.Output.secret(admin_password),
                            ca_pem=trust),
                opts=pulumi.ResourceOptions(parent=self, depends_on=[
                    self.node_groups["keystone"], *self.node_groups["keystone"].pushes.values(),
                    self.node_groups["proxy"], *self.node_groups["proxy"].pushes.values(), self.vips]))
        # Where this region's Galera node puts its backups (and the previous region's its copies).
        container = backup_container(topo, region.name, child)
        self.backup_container = container.name if container is not None else None
        self.addresses = {name: addr for g in self.node_groups.values() for name, addr in g.addresses.items()}
        self.register_outputs({"addresses": self.addresses, "public_ips": self.public_ips,
                               "backup_container": self.backup_container})
