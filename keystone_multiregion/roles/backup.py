"""Backups of the Galera layer: what each Galera node is told (the plan), the secrets pushed
to it, and its timer. galera-node (agents/galera-node.py) takes, lists and restores them.

Each region backs up the one cluster on its own first Galera node (the designated node):
one backup per region gives as many independent copies as there are regions, each taken
without crossing the WAN, and a node fixed by the topology makes the schedule and the alerts
plain (the timer runs on every Galera node; only the designated one acts, the others can
restore). The backup is encrypted on the node with the shared stack's backup key and put
into the region's container and the next region's (topology order, cyclic), so losing a
region or its object store loses no backup.
"""

from __future__ import annotations

import json

from ..topology import Node, Topology
from .base import File

BACKUP_PLAN = "/etc/keystone-multiregion/backup.json"
BACKUP_SECRETS = "/etc/keystone-multiregion/backup-secrets.json"
BACKUP_SERVICE = "/etc/systemd/system/keystone-multiregion-backup.service"
BACKUP_TIMER = "/etc/systemd/system/keystone-multiregion-backup.timer"
# What galera-node backup records of its last run (node-agent metrics reports it).
BACKUP_STATUS = "/var/lib/keystone-multiregion/backup-status.json"


def designated(topo: Topology, node: Node) -> bool:
    """The node that takes its region's backups: the region's first Galera node."""
    return node.role == "galera" and node.number == 1


def target_regions(topo: Topology, region: str) -> list[str]:
    """Where a region's backups go: its own container, then the next region's that holds data
    (topology order, wrapping round); one region alone keeps one copy."""
    data = [r.name for r in topo.regions if r.core]  # a replica region takes no backups
    i = data.index(region)
    return [region] + ([data[(i + 1) % len(data)]] if len(data) > 1 else [])


def plan(topo: Topology, node: Node) -> dict:
    b = topo.backup
    if b is None:
        return {"configured": False, "deployment": topo.name, "region": node.region, "node": node.name}
    return {
        "configured": True, "deployment": topo.name, "region": node.region, "node": node.name,
        "designated": designated(topo, node),
        "auth_url": b.store.auth_url, "auth_version": b.store.auth_version,
        "targets": [{"region": r, "container": b.container(r), "region_name": topo.region(r).openstack_region}
                    for r in target_regions(topo, node.region)],
        # Every region's container, for a restore from anywhere (galera-node restore --from).
        "containers": {r.name: {"container": b.container(r.name), "region_name": r.openstack_region}
                       for r in topo.regions if r.core},
        "full_interval_h": b.full_interval_h, "incremental_interval_h": b.incremental_interval_h,
        "keep_days": b.keep_days, "max_age_h": b.max_age_h,
    }


def files(topo: Topology, node: Node, needed: dict) -> list[File]:
    out = [File(BACKUP_PLAN, json.dumps(plan(topo, node), indent=2, sort_keys=True) + "\n")]
    if topo.backup is not None:
        secret = {"key": needed["backup_key"], "store": needed["backup_store"]}
        out.append(File(BACKUP_SECRETS, json.dumps(secret, indent=2, sort_keys=True) + "\n", permissions="0600",
                        push_only=True))
    return out


def binlog_expire_s(topo: Topology) -> int:
    """How long a node keeps its binary logs: two full-backup intervals (they are shipped with
    every backup; the local copy only bridges a failed upload), at least two days."""
    hours = 2 * topo.backup.full_interval_h if topo.backup else 48
    return max(hours, 48) * 3600
