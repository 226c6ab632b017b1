"""This region's entry in the catalog: its region, and its unversioned identity endpoints.

A region stack registers its own region and endpoints only, never another region's. The
identity service itself exists once: the bootstrap region's stack creates it, the others
find it. Nothing is registered before the region's Keystone answers (a readiness gate)."""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_openstack as openstack

from keystone_multiregion.roles.keystone import endpoint_urls
from keystone_multiregion.topology import Topology

from .keystone_api import CatalogRegion, KeystoneReady

INTERFACES = ("public", "internal", "admin")


@dataclass
class CatalogArgs:
    topology: Topology
    region: str
    admin_password: pulumi.Input[str]
    ca_pem: pulumi.Input[str] | None = None  # trust for the public endpoint (a development CA)


class RegionCatalog(pulumi.ComponentResource):
    def __init__(self, name: str, args: CatalogArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("keystone-multiregion:catalog:RegionCatalog", name, None, opts)
        topo, region = args.topology, args.topology.region(args.region)
        urls = endpoint_urls(topo, region.name)
        child = pulumi.ResourceOptions(parent=self)
        ready = KeystoneReady(f"keystone-ready-{region.name}", url=urls["public"], ca_pem=args.ca_pem, opts=child)
        admin = openstack.Provider(
            f"keystone-admin-{region.name}", auth_url=f"{urls['public']}/v3", user_name="admin",
            password=args.admin_password, tenant_name="admin", user_domain_name="Default",
            project_domain_name="Default", region=region.name, cacert_file=args.ca_pem,
            opts=pulumi.ResourceOptions(parent=self, depends_on=[ready]))
        as_admin = pulumi.ResourceOptions(parent=self, provider=admin, depends_on=[ready])
        catalog_region = CatalogRegion(f"catalog-region-{region.name}", url=urls["public"], region_id=region.name,
                                       admin_password=args.admin_password, ca_pem=args.ca_pem,
                                       description=f"{topo.name}: {region.public_hostname}",
                                       opts=pulumi.ResourceOptions(parent=self, depends_on=[ready]))
        if region.name == topo.bootstrap_region:
            service = openstack.identity.ServiceV3(
                "identity-service", name="keystone", type="identity", description="OpenStack Identity",
                # Every region's endpoints hang off it.
                opts=pulumi.ResourceOptions.merge(as_admin, pulumi.ResourceOptions(protect=True)))
            service_id = service.id
        else:
            service_id = openstack.identity.get_service_output(
                name="keystone", type="identity",
                opts=pulumi.InvokeOutputOptions(parent=self, provider=admin, depends_on=[ready])).id
        self.endpoints = {}
        for interface in INTERFACES:
            endpoint = openstack.identity.EndpointV3(
                f"endpoint-{region.name}-{interface}", name="keystone", service_id=service_id,
                endpoint_region=region.name, interface=interface, url=urls[interface],
                opts=pulumi.ResourceOptions.merge(as_admin, pulumi.ResourceOptions(depends_on=[ready, catalog_region])))
            self.endpoints[interface] = endpoint.url
        self.register_outputs({"endpoints": self.endpoints})
