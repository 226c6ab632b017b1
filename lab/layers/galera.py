"""Galera in the lab: galera-node prepares and starts each node, the bootstrap node first."""

from __future__ import annotations

import time

from keystone_multiregion.security import PORTS

from ..checks import Check

ROLES = ("galera", "arbitrator")
PACKAGES = ("mariadb-server", "mariadb-client", "mariadb-backup", "galera-4", "socat", "galera-arbitrator-4")
# A Galera node's own state directories (on a VM: its volume, /run and /var/log).
GALERA_DIRS = ("/var/lib/mysql", "/run/mysqld", "/var/log/mysql")


# The arbitrator's working directory (gvwstate.dat) and log directory, as /etc/default/garb
# names them (on a VM, garb.service's StateDirectory and LogsDirectory).
GARBD_DIRS = ("/var/lib/garbd", "/var/log/garbd")


def install(dep, rendered) -> None:
    node = rendered.node
    if node.role == "galera":
        dep.lab.procs.make_root(node.name, GALERA_DIRS)
        dep.lab.procs.run(node.name, dep.GALERA_TOOL + ["prepare"])
    else:
        dep.lab.procs.make_root(node.name, GARBD_DIRS)


def start_arbitrator(dep, name: str, timeout: float = 60) -> None:
    """garbd through Debian's own garb-systemd, which reads the rendered /etc/default/garb."""
    size = str(len(dep.topo.nodes(role="galera")) + 1)
    first = dep.topo.nodes(role="galera")[0].name
    dep.lab.procs.start(name, "garbd", ["/usr/bin/garb-systemd", "start"],
                        ready=lambda: dep.galera_status(first).get("wsrep_cluster_size") == size,
                        ready_timeout=timeout)


def start(dep, nodes, log) -> None:
    # The bootstrap node first (it starts the cluster), then every other node joins.
    for node in sorted((n for n in nodes if n.role == "galera"), key=lambda n: not dep.is_bootstrap(n)):
        t = time.monotonic()
        dep.start_galera(node.name)
        log(f"{node.name}: Synced in {time.monotonic() - t:.1f}s")
    for node in (n for n in nodes if n.role == "arbitrator"):
        t = time.monotonic()
        start_arbitrator(dep, node.name)
        log(f"{node.name}: garbd joined in {time.monotonic() - t:.1f}s")


def checks(dep) -> list[Check]:
    out = []
    size = str(dep.topo.galera_voters)
    for node in dep.topo.nodes(role="galera"):
        st = dep.galera_status(node.name)
        out.append(Check(f"{node.name} in the cluster",
                         bool(st.get("healthy")) and st.get("wsrep_cluster_size") == size,
                         f"{st.get('wsrep_local_state_comment')}/{st.get('wsrep_cluster_status')}, "
                         f"cluster size {st.get('wsrep_cluster_size')}"))
        url = f"http://{node.address}:{PORTS['galera_health']}/"
        if not dep.running("proxy"):
            continue
        proxy = dep.topo.nodes(node.region, "proxy")[0].name
        code = dep.http_status(proxy, url)
        out.append(Check(f"{node.name} health check from {proxy}", code == 200, f"HTTP {code}"))
        keystone = dep.topo.nodes(node.region, "keystone")[0].name
        code = dep.http_status(keystone, url, timeout=1.0)
        out.append(Check(f"{node.name} health check refuses {keystone} (security group)", code is None,
                         "no answer" if code is None else f"HTTP {code}"))
    return out
