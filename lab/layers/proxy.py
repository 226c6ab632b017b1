"""The proxies in the lab (HAProxy and keepalived arrive with the proxy layer)."""

from __future__ import annotations

from ..checks import Check

ROLES = ("proxy",)
PACKAGES = ()
PROXY_SYSCTL = "/etc/sysctl.d/60-keystone-multiregion.conf"


def install(dep, rendered) -> None:
    # What `sysctl --system` does on the VM, limited to our file (net.* is per namespace).
    dep.lab.procs.run(rendered.node.name, ["sysctl", "-q", "-p", PROXY_SYSCTL])


def start(dep, nodes, log) -> None:
    pass


def checks(dep) -> list[Check]:
    out = []
    for proxy in dep.topo.nodes(role="proxy"):
        value = dep.lab.net.get_sysctl(proxy.name, "net.ipv4.ip_nonlocal_bind")
        out.append(Check(f"{proxy.name} may bind VIPs", value == "1", f"net.ipv4.ip_nonlocal_bind = {value}"))
    return out
