"""The lab deployment: every node of a topology as a namespace, running the real daemons
with the files the renderer produced for it (the bytes cloud-init would write on a VM).

    dep = LabDeployment(Lab(), load_topology_file(LAB_TOPOLOGY))
    dep.up()          # render, build namespaces, enforce security groups, start daemons
    dep.checks()      # what works and what is refused, measured
    dep.lab.teardown()

Layers arrive with their issues. Running now: the network of every region, the security
groups (nftables in each node, from the same rules the Pulumi components create), each
node's rendered files at their VM paths, the proxies' sysctl file, and memcached with its
rendered /etc/memcached.conf, started through Debian's own wrapper as systemd would.
"""

from __future__ import annotations

import ipaddress
import os
import secrets as _random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from keystone_multiregion.render import RenderedNode, render_node, write_rendered
from keystone_multiregion.secrets import SECRETS
from keystone_multiregion.security import PORTS
from keystone_multiregion.topology import Node, Topology

from . import Lab, firewall, packages
from .net import HostSpec

LAB_TOPOLOGY = Path(__file__).resolve().parent / "topology.yaml"
PROXY_SYSCTL = "/etc/sysctl.d/60-keystone-multiregion.conf"
# Debian packages of the daemons the lab runs so far, by role.
ROLE_PACKAGES = {"memcached": ["memcached"]}
MEMCACHED_WRAPPER = "/usr/share/memcached/scripts/systemd-memcached-wrapper"

# Asks a memcached server for its stats from inside a lab namespace; bounded by a timeout.
_MEMCACHED_STATS = r"""
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3]))
s.sendall(b"stats\r\n")
data = b""
while not data.endswith(b"END\r\n"):
    chunk = s.recv(65536)
    if not chunk:
        break
    data += chunk
print(data.decode())
"""


@dataclass
class Check:
    name: str
    ok: bool
    detail: str

    def line(self) -> str:
        return f"[{'ok' if self.ok else 'FAIL'}] {self.name}: {self.detail}"


class LabDeployment:
    def __init__(self, lab: Lab, topo: Topology):
        self.lab = lab
        self.topo = topo

    # -- paths and secrets ----------------------------------------------------------------
    @property
    def render_dir(self) -> Path:
        return Path(self.lab.labdir) / "render"

    def secrets(self) -> dict[str, str]:
        """The lab's own secrets, generated once per lab directory (mode 0600)."""
        path = Path(self.lab.labdir) / "secrets.yaml"
        if path.exists():
            return yaml.safe_load(path.read_text())
        values = {name: _random.token_hex(length // 2) for name, (length, _) in SECRETS.items()}
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            yaml.safe_dump(values, fh)
        return values

    def host_spec(self, node: Node) -> HostSpec:
        prefix = ipaddress.ip_network(self.topo.region(node.region).cidr).prefixlen
        return HostSpec(node.name, node.region, f"{node.address}/{prefix}")

    # -- up -------------------------------------------------------------------------------
    def up(self, install: bool = True, log=print) -> None:
        t0 = time.monotonic()
        if install:
            packages.ensure_lab_base(self.lab.prefix)
            roles = {n.role for n in self.topo.nodes()}
            packages.ensure_packages(sorted({p for r in roles for p in ROLE_PACKAGES.get(r, [])}))
        secrets = self.secrets()
        rendered = [render_node(self.topo, n.name, secrets) for n in self.topo.nodes()]
        for r in rendered:
            write_rendered(r, self.render_dir)
        log(f"rendered {len(rendered)} nodes into {self.render_dir}")

        self.lab.net.build([self.host_spec(n) for n in self.topo.nodes()],
                           region_cidrs={r.name: r.cidr for r in self.topo.regions})
        log(f"network: {len(self.topo.regions)} regions, {len(rendered)} namespaces")
        for r in rendered:
            self._install_node(r)
        for r in rendered:
            self._start(r.node)
        log(f"up in {time.monotonic() - t0:.1f}s")

    def _install_node(self, r: RenderedNode) -> None:
        node = r.node
        node_dir = self.render_dir / node.region / node.name / "files"
        # Each rendered file appears at its VM path, for this node's processes only.
        self.lab.procs.set_binds(node.name, {f.path: str(node_dir / f.path.lstrip("/")) for f in r.files})
        firewall.apply(self.lab.net, self.topo, node)
        if node.role == "proxy":
            # What `sysctl --system` does on the VM, limited to our file (net.* is per namespace).
            self.lab.procs.run(node.name, ["sysctl", "-q", "-p", PROXY_SYSCTL])

    def _start(self, node: Node) -> None:
        if node.role == "memcached":
            self.lab.procs.start(node.name, "memcached", [MEMCACHED_WRAPPER, "/etc/memcached.conf"],
                                 ready=lambda: self.memcached_stats(node.name, node.name, timeout=0.5),
                                 ready_timeout=15)

    # -- probes ---------------------------------------------------------------------------
    def memcached_stats(self, client: str, server: str, timeout: float = 2.0) -> dict[str, str] | None:
        """memcached's stats as seen from the `client` node, or None if it does not answer."""
        result = self.lab.net.exec(client, [sys.executable, "-c", _MEMCACHED_STATS, self.topo.node(server).address,
                                            str(PORTS["memcached"]), str(timeout)],
                                   timeout=timeout + 5, check=False)
        if result.returncode != 0:
            return None
        stats = {}
        for line in result.stdout.splitlines():
            parts = line.split()
            if len(parts) == 3 and parts[0] == "STAT":
                stats[parts[1]] = parts[2]
        return stats or None

    def status(self) -> list[str]:
        lines = []
        hosts = self.lab.net.hosts()
        for node in self.topo.nodes():
            h = hosts.get(node.name)
            if h is None:
                lines.append(f"{node.name:22} (not built)")
                continue
            procs = self.lab.procs.processes(node.name)
            running = ", ".join(f"{rec['name']} {'up' if self.lab.procs.is_alive(node.name, rec['name']) else 'DOWN'}"
                                for rec in procs.values()) or "-"
            link = "link up" if self.lab.net.is_link_up(node.name) else "LINK DOWN"
            lines.append(f"{node.name:22} {node.region:6} {h['address']:16} ns {h['netns']:16} {link:9} {running}")
        return lines

    def checks(self) -> list[Check]:
        """Measured facts of the running lab, each a check that can fail."""
        out: list[Check] = []
        regions = [r.name for r in self.topo.regions]
        first = {r: self.topo.nodes(r, "galera")[0].name for r in regions}
        for i, a in enumerate(regions):
            for b in regions[i + 1:]:
                p = self.lab.net.ping(first[a], first[b], count=2, interval=0.2, timeout=3)
                out.append(Check(f"{a} reaches {b}", p.ok, f"{p.received}/{p.sent} replies, avg {p.avg_ms} ms"))
        for region in regions:
            keystone = self.topo.nodes(region, "keystone")[0].name
            galera = self.topo.nodes(region, "galera")[0].name
            for mc in self.topo.nodes(region, "memcached"):
                t = time.monotonic()
                stats = self.memcached_stats(keystone, mc.name)
                ms = (time.monotonic() - t) * 1000
                want = {"limit_maxbytes": str(512 * 1024 * 1024), "threads": str(mc.vcpus)}
                got = {k: (stats or {}).get(k) for k in want}
                out.append(Check(f"{mc.name} answers {keystone}", got == want,
                                 f"{got} in {ms:.0f} ms" if stats else "no answer"))
                t = time.monotonic()
                blocked = self.memcached_stats(galera, mc.name, timeout=1.0)
                out.append(Check(f"{mc.name} refuses {galera} (security group)", blocked is None,
                                 f"no answer after {time.monotonic() - t:.1f}s" if blocked is None else "it answered"))
        for proxy in self.topo.nodes(role="proxy"):
            value = self.lab.net.get_sysctl(proxy.name, "net.ipv4.ip_nonlocal_bind")
            out.append(Check(f"{proxy.name} may bind VIPs", value == "1", f"net.ipv4.ip_nonlocal_bind = {value}"))
        return out

