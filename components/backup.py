"""The region's Swift container for the database backups (topology `backup:`).

Every region that holds Galera data has one container, `backup.container(<region>)`, in its
own cloud region: its first Galera node puts its backups there and the previous region's
node copies its own there too (keystone_multiregion/roles/backup.py). The backups are
encrypted on the node (the shared stack's backup key), so the container holds nothing
readable without it.

Data safety, in resource options (STYLE.md), as on the Galera volumes:
- protect=True: a `pulumi up` that would delete or replace the container (the region or
  its prefix renamed, the region removed from the topology) stops with an error instead;
  the operator must unprotect it on purpose (`pulumi state unprotect`).
- retain_on_delete=True: even then (a region decommissioned with `pulumi destroy`), Pulumi
  forgets the container and leaves it, backups and all, in Swift: the backups must outlive
  the stack, that is when they are needed. (The policy pack checks `protect`; the analyzer
  protocol does not pass `retainOnDelete`, tests/test_components.py checks it.)
- force_destroy=False (the provider's default, said explicitly): Swift refuses to delete a
  container that still holds objects.
Versioning is left off: it needs Swift >= 2.24 with `allow_object_versioning` set by the
cloud's administrators, and galera-node's own retention (keep_days) deletes old backups,
which versioning would keep forever. The copy in the next region is the second copy.
"""

from __future__ import annotations

import pulumi
import pulumi_openstack as openstack

from keystone_multiregion.topology import Topology


def backup_container(topo: Topology, region: str, opts: pulumi.ResourceOptions) -> openstack.objectstorage.Container | None:
    """The region's backup container, or None (no backup: in the topology, or a witness
    region, which holds no data)."""
    r = topo.region(region)
    if topo.backup is None or not r.core:  # a witness or a replica region holds no Galera member
        return None
    return openstack.objectstorage.Container(
        f"backup-{region}", name=topo.backup.container(region), region=r.openstack_region,
        force_destroy=False,
        opts=pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(protect=True, retain_on_delete=True)))
