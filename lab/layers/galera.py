"""Galera in the lab: galera-node prepares and starts each node, the bootstrap node first."""

from __future__ import annotations

import time

from keystone_multiregion.security import PORTS

from ..checks import Check

ROLES = ("galera", "arbitrator")
PACKAGES = ("mariadb-server", "mariadb-client", "mariadb-backup", "galera-4", "socat", "galera-arbitrator-4")
# A Galera node's own state directories (on a VM: its volume, /run and /var/log).
GALERA_DIRS = ("/var/lib/mysql", "/run/mysqld", "/var/log/mysql")


def install(dep, rendered) -> None:
    node = rendered.node
    if node.role == "galera":
        dep.lab.procs.make_root(node.name, GALERA_DIRS)
        dep.lab.procs.run(node.name, dep.GALERA_TOOL + ["prepare"])


def start(dep, nodes, log) -> None:
    # The bootstrap node first (it starts the cluster), then every other node joins.
    for node in sorted((n for n in nodes if n.role == "galera"), key=lambda n: not dep.is_bootstrap(n)):
        t = time.monotonic()
        dep.start_galera(node.name)
        log(f"{node.name}: Synced in {time.monotonic() - t:.1f}s")


def checks(dep) -> list[Check]:
    out = []
    size = str(len(dep.topo.nodes(role="galera")))
    for node in dep.topo.nodes(role="galera"):
        st = dep.galera_status(node.name)
        out.append(Check(f"{node.name} in the cluster",
                         bool(st.get("healthy")) and st.get("wsrep_cluster_size") == size,
                         f"{st.get('wsrep_local_state_comment')}/{st.get('wsrep_cluster_status')}, "
                         f"cluster size {st.get('wsrep_cluster_size')}"))
        url = f"http://{node.address}:{PORTS['galera_health']}/"
        proxy = dep.topo.nodes(node.region, "proxy")[0].name
        code = dep.http_status(proxy, url)
        out.append(Check(f"{node.name} health check from {proxy}", code == 200, f"HTTP {code}"))
        keystone = dep.topo.nodes(node.region, "keystone")[0].name
        code = dep.http_status(keystone, url, timeout=1.0)
        out.append(Check(f"{node.name} health check refuses {keystone} (security group)", code is None,
                         "no answer" if code is None else f"HTTP {code}"))
    return out
