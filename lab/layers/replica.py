"""A replica region's database in the lab: MariaDB asynchronous replicas of the core's Galera
cluster (agents/replica-node.py), started as a VM starts them.

On a VM, Debian's mariadb.service runs mariadbd with the rendered replica.cnf (cloud-init's
runcmd then runs `replica-node prepare` and `replica-node start`, and enables the units
replica-health and replica-watch). The lab runs mariadbd itself in the node's mount namespace
(the data volume bound on /var/lib/mysql, as for a Galera node), then `replica-node start
--no-server` (the first start seeds the replica by a dump from its source core node), then
the two units' own command lines, read from the rendered unit files (lab/service.py).
"""

from __future__ import annotations

import json
import time

from keystone_multiregion.roles.replica import HEALTH_SERVICE, REPLICA_TOOL, WATCH_SERVICE, server_id

from .. import service
from ..checks import Check
from ..util import LabError
from . import galera as galera_layer

ROLES = ("replica",)
PACKAGES = ("mariadb-server", "mariadb-client")
TOOL = ["python3", REPLICA_TOOL]
# As a Galera node: its data volume, runtime and log directories, its root-disk state.
REPLICA_DIRS = galera_layer.GALERA_DIRS
# The lab's process names: mariadbd, and the two units.
UNITS = {"health": HEALTH_SERVICE, "watch": WATCH_SERVICE}

# What the Debian package does before mariadb.service first runs (system tables in an empty
# data directory), then mariadbd in the foreground as mariadb.service runs it.
_MARIADBD = r"""
import os, subprocess, sys
if not os.path.isdir("/var/lib/mysql/mysql"):
    subprocess.run(["mariadb-install-db", "--user=mysql", "--datadir=/var/lib/mysql", "--skip-test-db"],
                   check=True, capture_output=True, timeout=300)
sys.stdout.flush()
os.execvp("mariadbd", ["mariadbd", "--user=mysql"])
"""


def install(dep, rendered) -> None:
    node = rendered.node
    dep.lab.procs.make_root(node.name, REPLICA_DIRS)
    galera_layer.attach_volume(dep, node.name)
    dep.lab.procs.run(node.name, TOOL + ["prepare"], timeout=60)


def answers(dep, name: str) -> bool:
    return dep.sql(name, "SELECT 1", timeout=10, check=False).returncode == 0


def start_mariadb(dep, name: str, timeout: float = 120) -> None:
    try:
        dep.lab.procs.start(name, "mariadb", ["python3", "-c", _MARIADBD],
                            ready=lambda: answers(dep, name), ready_timeout=timeout)
    except LabError as exc:
        try:  # mariadbd's own words are in its error log (replica.cnf's log_error)
            with open(dep.lab.procs.host_path(name, "/var/log/mysql/error.log"), errors="replace") as fh:
                said = "".join(fh.readlines()[-15:])
        except OSError:
            said = "(no error log)"
        raise LabError(f"{exc}\n{name}'s error log:\n{said}") from None


def status(dep, name: str) -> dict:
    """replica-node status as JSON ({} when it does not answer)."""
    out = dep.lab.procs.run(name, TOOL + ["status"], check=False, timeout=20)
    try:
        return json.loads(out.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        return {}


def start_units(dep, name: str) -> None:
    """replica-health and replica-watch, each with its rendered unit's ExecStart."""
    for proc, unit in UNITS.items():
        if dep.lab.procs.is_alive(name, proc):
            continue
        (argv,) = service.exec_lines(dep.lab.procs.host_path(name, unit), "ExecStart")
        dep.lab.procs.start(name, proc, argv)


def restart_unit(dep, name: str, unit: str) -> None:
    """`systemctl restart replica-health|replica-watch` (node-agent's replica:restart after a
    new replica.json): the process stopped, then started from its rendered unit."""
    proc = next(p for p, path in UNITS.items() if path.endswith(f"/{unit}.service"))
    dep.lab.procs.stop(name, proc, timeout=10)
    start_units(dep, name)


def start_replica(dep, name: str, timeout: float = 180) -> dict:
    """mariadbd, `replica-node start --no-server` (seeds on the first start), the units; waits
    (bounded) until replica-node status says healthy. Returns start's JSON line."""
    if not dep.lab.procs.is_alive(name, "mariadb"):
        start_mariadb(dep, name)
    out = dep.lab.procs.run(name, TOOL + ["start", "--no-server", "--timeout", "120"], timeout=timeout)
    started = json.loads(out.stdout.strip().splitlines()[-1])
    start_units(dep, name)
    deadline = time.monotonic() + 60
    while not status(dep, name).get("healthy"):
        if time.monotonic() >= deadline:
            raise RuntimeError(f"{name} not replicating 60 s after start: {status(dep, name)}")
        time.sleep(0.5)
    return started


def start(dep, nodes, log) -> None:
    for node in nodes:
        t = time.monotonic()
        started = start_replica(dep, node.name)
        log(f"{node.name}: {started.get('action')} from {started.get('source', 'its source')}"
            + (f" at GTID {started['gtid']}" if started.get("gtid") else "")
            + f", replicating ({time.monotonic() - t:.1f}s)")


def checks(dep) -> list[Check]:
    out = []
    for node in dep.topo.nodes(role="replica"):
        st = status(dep, node.name)
        first = dep.topo.replica_sources(node)[0].name
        out.append(Check(f"{node.name} replicates", bool(st.get("healthy")),
                         f"from {st.get('source')}, IO {st.get('io_running')}, SQL {st.get('sql_running')}, "
                         f"{st.get('seconds_behind_master')} s behind, at {st.get('gtid_slave_pos')}"
                         + (f", error {st.get('last_io_error') or st.get('last_sql_error')}"
                            if st.get("last_io_error") or st.get("last_sql_error") else "")))
        out.append(Check(f"{node.name} source is its first ({first})", st.get("source") == first,
                         f"source {st.get('source')}"))
        rows = dep.sql(node.name, "SELECT @@read_only, @@server_id", check=False).stdout.split()
        out.append(Check(f"{node.name} read-only, server_id {server_id(dep.topo, node)}",
                         rows == ["1", str(server_id(dep.topo, node))], " ".join(rows) or "no answer"))
        uid = galera_layer.health_uid(dep, node.name)
        out.append(Check(f"{node.name} health server runs unprivileged", uid not in (None, 0),
                         f"uid {uid}" if uid is not None else "not running"))
    return out
