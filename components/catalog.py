"""This region's entry in the catalog: its region, and its unversioned identity endpoints.

A region stack registers its own region and endpoints only, never another region's. The
identity service itself exists once: the bootstrap region's stack creates it, the others
find it. Nothing is registered before the region's Keystone answers (a readiness gate)."""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_openstack as openstack

from keystone_multiregion.roles.keystone import catalog_entries, endpoint_urls
from keystone_multiregion.topology import Topology

from .keystone_api import CatalogRegion, KeystoneReady

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
        entries = catalog_entries(topo, region.name)
        child = pulumi.ResourceOptions(parent=self)
        ready = KeystoneReady(f"keystone-ready-{region.name}", url=urls["public"], ca_pem=args.ca_pem, opts=child)
        admin = openstack.Provider(
            f"keystone-admin-{region.name}", auth_url=f"{urls['public']}/v3", user_name="admin",
            password=args.admin_password, tenant_name="admin", user_domain_name="Default",
            project_domain_name="Default", region=region.name, cacert_file=args.ca_pem,
            opts=pulumi.ResourceOptions(parent=self, depends_on=[ready]))
        as_admin = pulumi.ResourceOptions(parent=self, provider=admin, depends_on=[ready])
        catalog_region = CatalogRegion(f"catalog-region-{region.name}", url=urls["public"],
                                       region_id=entries["region"]["id"], admin_password=args.admin_password,
                                       ca_pem=args.ca_pem, description=entries["region"]["description"],
                                       opts=pulumi.ResourceOptions(parent=self, depends_on=[ready]))
        if region.name == topo.bootstrap_region:
            service = openstack.identity.ServiceV3(
                "identity-service", **entries["service"],
                # Every region's endpoints hang off it.
                opts=pulumi.ResourceOptions.merge(as_admin, pulumi.ResourceOptions(protect=True)))
            service_id = service.id
        else:
            service_id = openstack.identity.get_service_output(
                name=entries["service"]["name"], type=entries["service"]["type"],
                opts=pulumi.InvokeOutputOptions(parent=self, provider=admin, depends_on=[ready])).id
        self.endpoints = {}
        for e in entries["endpoints"]:
            endpoint = openstack.identity.EndpointV3(
                f"endpoint-{region.name}-{e['interface']}", name=entries["service"]["name"], service_id=service_id,
                endpoint_region=e["region"], interface=e["interface"], url=e["url"],
                opts=pulumi.ResourceOptions.merge(as_admin, pulumi.ResourceOptions(depends_on=[ready, catalog_region])))
            self.endpoints[e["interface"]] = endpoint.url
        self.register_outputs({"endpoints": self.endpoints})
