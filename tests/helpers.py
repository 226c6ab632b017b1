"""Topologies for tests, built from plain dicts."""

from __future__ import annotations

import copy
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = yaml.safe_load((ROOT / "topology.yaml").read_text())


def example() -> dict:
    return copy.deepcopy(EXAMPLE)


def five_regions() -> dict:
    """Five regions with one Galera node each: five voters, none holding two."""
    data = {
        "name": "idp",
        "bootstrap_region": "fra",
        "admin_cidr": "192.0.2.0/28",
        "defaults": {"galera": {"count": 1}, "keystone": {"count": 2}, "memcached": {"count": 2}},
        "regions": [],
    }
    for i, name in enumerate(["fra", "ams", "lon", "par", "waw"], start=1):
        data["regions"].append({"name": name, "index": i, "cidr": f"172.20.{i * 4}.0/22",
                                "external_network": "ext-net", "public_hostname": f"keystone.{name}.example.net"})
    return data


def with_replica_region(data: dict | None = None, **region) -> dict:
    """The example (or `data`) plus a replica region, region-r, with the default two replicas."""
    data = copy.deepcopy(data) if data is not None else example()
    data["regions"].append({"name": "region-r", "index": 7, "cidr": "10.10.7.0/24", "external_network": "public",
                            "public_hostname": "identity.region-r.example.com", "replica": True, **region})
    return data
