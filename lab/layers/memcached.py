"""memcached in the lab, started through Debian's own wrapper from the rendered config."""

from __future__ import annotations

import sys
import time

from keystone_multiregion.security import PORTS

from keystone_multiregion.roles.proxy import local_database

from ..checks import Check

ROLES = ("memcached",)
PACKAGES = ("memcached",)
MEMCACHED_WRAPPER = "/usr/share/memcached/scripts/systemd-memcached-wrapper"

# Sends one command (stats, flush_all) to a memcached server from inside a lab namespace and
# prints the reply; bounded by a timeout.
_MEMCACHED_COMMAND = r"""
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3]))
s.sendall(sys.argv[4].encode() + b"\r\n")
data = b""
while not data.endswith((b"END\r\n", b"OK\r\n", b"ERROR\r\n")):
    chunk = s.recv(65536)
    if not chunk:
        break
    data += chunk
print(data.decode())
"""


def command(dep, client: str, server: str, cmd: str, timeout: float = 2.0):
    """memcached's reply to `cmd` as seen from the `client` node (a CompletedProcess)."""
    return dep.lab.net.exec(client, [sys.executable, "-c", _MEMCACHED_COMMAND, dep.topo.node(server).address,
                                     str(PORTS["memcached"]), str(timeout), cmd], timeout=timeout + 5, check=False)


def flush(dep, client: str, server: str) -> bool:
    """Empty a memcached server (flush_all), from `client`; True if it said OK."""
    result = command(dep, client, server, "flush_all")
    return result.returncode == 0 and result.stdout.strip() == "OK"


def stats(dep, client: str, server: str, timeout: float = 2.0) -> dict[str, str] | None:
    """memcached's stats as seen from the `client` node, or None if it does not answer."""
    result = command(dep, client, server, "stats", timeout)
    if result.returncode != 0:
        return None
    out = {}
    for line in result.stdout.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] == "STAT":
            out[parts[1]] = parts[2]
    return out or None


def install(dep, rendered) -> None:
    pass


def start(dep, nodes, log) -> None:
    for node in nodes:
        dep.lab.procs.start(node.name, "memcached", [MEMCACHED_WRAPPER, "/etc/memcached.conf"],
                            ready=lambda n=node: stats(dep, n.name, n.name, timeout=0.5), ready_timeout=15)


def checks(dep) -> list[Check]:
    out = []
    for region in (r.name for r in dep.topo.regions):
        if not dep.topo.nodes(region, "memcached"):
            continue
        keystone = dep.topo.nodes(region, "keystone")[0].name
        galera = local_database(dep.topo, region)[0].name  # a replica region's: a replica
        for mc in dep.topo.nodes(region, "memcached"):
            t = time.monotonic()
            got_stats = stats(dep, keystone, mc.name)
            ms = (time.monotonic() - t) * 1000
            want = {"limit_maxbytes": str(512 * 1024 * 1024), "threads": str(mc.vcpus)}
            got = {k: (got_stats or {}).get(k) for k in want}
            out.append(Check(f"{mc.name} answers {keystone}", got == want,
                             f"{got} in {ms:.0f} ms" if got_stats else "no answer"))
            t = time.monotonic()
            blocked = stats(dep, galera, mc.name, timeout=1.0)
            out.append(Check(f"{mc.name} refuses {galera} (security group)", blocked is None,
                             f"no answer after {time.monotonic() - t:.1f}s" if blocked is None else "it answered"))
    return out
