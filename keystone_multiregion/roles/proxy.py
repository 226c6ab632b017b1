"""The proxy layer: HAProxy and keepalived (the VRRP addresses come from the topology)."""

from __future__ import annotations

from .base import RoleLayer


def _cloud_config(topo, node, doc: dict) -> None:
    doc["runcmd"] = [["sysctl", "--system"]]


PROXY = RoleLayer(
    packages=("haproxy", "keepalived"),
    files=(("proxy/sysctl.conf.j2", "/etc/sysctl.d/60-keystone-multiregion.conf", "0644"),),
    cloud_config=_cloud_config)

LAYERS = {"proxy": PROXY}
