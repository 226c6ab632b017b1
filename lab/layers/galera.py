"""Galera in the lab: galera-node prepares and starts each node, the bootstrap node first."""

from __future__ import annotations

import os
import stat
import time

from keystone_multiregion.roles.galera import GALERA_DATA_LABEL, GALERA_DATADIR
from keystone_multiregion.security import PORTS

from ..checks import Check

ROLES = ("galera", "arbitrator")
PACKAGES = ("mariadb-server", "mariadb-client", "mariadb-backup", "galera-4", "socat", "galera-arbitrator-4",
            "python3-swiftclient")
# A Galera node's own state directories (on a VM: its volume, /run and /var/log, and the
# root disk's /var/lib/keystone-multiregion where galera-node keeps its marker).
GALERA_DIRS = (GALERA_DATADIR, "/run/mysqld", "/var/log/mysql", "/var/lib/keystone-multiregion")
# How the lab represents "the data volume is attached and mounted": the node's own data
# directory is bind-mounted on /var/lib/mysql (a mount point, as the volume is on a VM),
# and the node's /dev/disk/by-label holds a block device node named by the volume's label
# whose number is that directory's file system: exactly what galera-node compares on a VM
# (the device udev names by label == the device of the file system on /var/lib/mysql).
BY_LABEL = "/dev/disk/by-label"


# The arbitrator's working directory (gvwstate.dat) and log directory, as /etc/default/garb
# names them (on a VM, garb.service's StateDirectory and LogsDirectory).
GARBD_DIRS = ("/var/lib/garbd", "/var/log/garbd")


def install(dep, rendered) -> None:
    node = rendered.node
    if node.role == "galera":
        dep.lab.procs.make_root(node.name, GALERA_DIRS)
        attach_volume(dep, node.name)
        dep.lab.procs.run(node.name, dep.GALERA_TOOL + ["prepare"])
    else:
        dep.lab.procs.make_root(node.name, GARBD_DIRS)


def volume_dirs(dep, name: str) -> tuple[str, str]:
    """(the node's data directory, its by-label directory) in the lab directory."""
    root = dep.lab.procs.root_dir(name)
    return os.path.join(root, GALERA_DATADIR.lstrip("/")), os.path.join(root, BY_LABEL.lstrip("/"))


def attach_volume(dep, name: str) -> None:
    """The node's data volume, attached and mounted (see BY_LABEL) for every later command."""
    data, labels = volume_dirs(dep, name)
    os.makedirs(labels, exist_ok=True)
    device = os.path.join(labels, GALERA_DATA_LABEL)
    if os.path.lexists(device):
        os.unlink(device)
    os.mknod(device, 0o600 | stat.S_IFBLK, os.stat(data).st_dev)
    dep.lab.procs.set_binds(name, {GALERA_DATADIR: data, BY_LABEL: labels})


def detach_volume(dep, name: str, empty_dir: str) -> None:
    """As after a failed attach: no device carries the label, and /var/lib/mysql is an empty
    directory (`empty_dir`, bound there so the machine's own /var/lib/mysql is never used)."""
    labels = os.path.join(os.path.dirname(empty_dir), "by-label-detached")
    os.makedirs(empty_dir, exist_ok=True)
    os.makedirs(labels, exist_ok=True)
    dep.lab.procs.set_binds(name, {GALERA_DATADIR: empty_dir, BY_LABEL: labels})


def health_uid(dep, name: str) -> int | None:
    """The real uid the node's health server runs as (None when it does not run)."""
    pid = dep.lab.procs.pid(name, "health")
    try:
        with open(f"/proc/{pid}/status") as fh:
            return next(int(line.split()[1]) for line in fh if line.startswith("Uid:"))
    except (OSError, TypeError, StopIteration):
        return None


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
    size = str(len(dep.topo.galera_members))
    for node in dep.topo.nodes(role="galera"):
        st = dep.galera_status(node.name)
        out.append(Check(f"{node.name} in the cluster",
                         bool(st.get("healthy")) and st.get("wsrep_cluster_size") == size,
                         f"{st.get('wsrep_local_state_comment')}/{st.get('wsrep_cluster_status')}, "
                         f"cluster size {st.get('wsrep_cluster_size')}"))
        uid = health_uid(dep, node.name)
        out.append(Check(f"{node.name} health server runs unprivileged", uid not in (None, 0),
                         f"uid {uid}" if uid is not None else "not running"))
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
