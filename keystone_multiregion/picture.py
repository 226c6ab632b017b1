"""A picture of a deployment (Graphviz DOT): its regions, nodes and VRRP addresses, the
Galera membership and which node takes each region's writes.

`topology_dot(topo)` draws what the topology says before anything exists (`render --picture`):
each VIP with its designated master, each region's first local Galera node as its writer.
With `live` (what a running deployment says; the lab's `status --picture` reads it), it draws
what is: who holds each VIP (none, or two, in red), each Galera member's state (green when
Synced in the Primary component), the writer each proxy sends new database sessions to, and
processes that are down. Plain text in, plain text out: `render_png` calls Graphviz's `dot`.
"""
from __future__ import annotations

import shutil
import subprocess

from .topology import ARBITRATOR, Topology

ROLE_SHAPES = {"proxy": "box", "keystone": "component", "memcached": "box3d", "galera": "cylinder",
               ARBITRATOR: "cylinder"}
OK, BAD, UNKNOWN, QUIET = "#2e7d32", "#c62828", "#9e9e9e", "#555555"


def _q(text: str) -> str:
    """A DOT string: quotes and backslashes escaped, newlines as DOT's centred line breaks."""
    return '"' + str(text).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _id(name: str) -> str:
    return _q(name)


def topology_dot(topo: Topology, live: dict | None = None) -> str:
    """DOT text. `live`, all keys optional:
      vip_holders: {vip address: [proxy names holding it]}
      galera: {node name: {"state": "Synced", "primary": bool, "size": int}} (absent: no answer)
      writers: {region: galera node name new sessions go to}
      down: [node names whose main process is down]
    """
    lines = ["digraph deployment {", "  graph [rankdir=TB, newrank=true, fontname=Helvetica, compound=true, "
             f"label={_q(_title(topo, live))}, labelloc=t];",
             "  node [fontname=Helvetica, fontsize=10, style=filled, fillcolor=white];",
             "  edge [fontname=Helvetica, fontsize=9];"]
    down = set((live or {}).get("down", ()))
    galera = (live or {}).get("galera")
    for region in topo.regions:
        lines.append(f"  subgraph {_q('cluster_' + region.name)} {{")
        label = f"{region.name}  {region.cidr}" + (f"\n{region.public_hostname}" if region.public_hostname else "")
        lines.append(f"    label={_q(label)}; style=rounded; color={_q(QUIET)};")
        for node in topo.nodes(region.name):
            color = BAD if node.name in down else QUIET
            text = f"{node.name}\n{node.address}"
            if node.role in ("galera", ARBITRATOR):
                text += f"\nvote {node.weight}"
                if galera is not None:
                    st = galera.get(node.name)
                    color = OK if st and st.get("primary") and st.get("state") == "Synced" else BAD
                    text += "\n" + (f"{st.get('state')}/{'Primary' if st.get('primary') else 'non-Primary'}"
                                     if st else "no answer")
            if node.name in down:
                text += "\nDOWN"
            lines.append(f"    {_id(node.name)} [label={_q(text)}, shape={ROLE_SHAPES.get(node.role, 'box')}, "
                         f"color={_q(color)}, penwidth={2 if color in (OK, BAD) else 1}];")
        for vip in topo.vips(region.name):
            lines.append(f"    {_id(vip.address)} [label={_q(vip.kind + ' VIP' + chr(10) + vip.address)}, "
                         "shape=ellipse, fillcolor=\"#e3f2fd\"];")
        lines += _layers(topo, region.name)
        lines.append("  }")
    lines += _vip_edges(topo, live)
    lines += _writer_edges(topo, live)
    members = [n.name for n in topo.galera_members]
    for a, b in zip(members, members[1:] + members[:1]):
        if a != b:
            lines.append(f"  {_id(a)} -> {_id(b)} [dir=none, style=dotted, color={_q(QUIET)}, constraint=false];")
    lines.append("}")
    return "\n".join(lines) + "\n"


def _layers(topo: Topology, region: str) -> list[str]:
    """Top to bottom within a region: proxies, VIPs, Keystone (the public VIPs' backends),
    memcached, Galera; edges that only place the layers are invisible."""
    out = []
    public = topo.vips(region, "public")
    keystone, memcached, galera = (topo.nodes(region, role) for role in ("keystone", "memcached", "galera"))
    for node in keystone:
        if public:
            out.append(f"    {_id(public[0].address)} -> {_id(node.name)} [color=\"#bdbdbd\", arrowsize=0.5];")
    for upper, lower in ((keystone, memcached), (memcached, galera)):
        for a, b in zip(upper, lower):
            out.append(f"    {_id(a.name)} -> {_id(b.name)} [style=invis];")
    return out


def _title(topo: Topology, live: dict | None) -> str:
    votes = f"Galera: {len(topo.galera_members)} members, {topo.galera_voters} votes"
    if live and live.get("galera") is not None:
        sizes = {st.get("size") for st in live["galera"].values() if st}
        votes += f" (live cluster size: {', '.join(str(s) for s in sorted(sizes, key=str)) or 'no answer'})"
    return f"{topo.name}: {votes}"


def _vip_edges(topo: Topology, live: dict | None) -> list[str]:
    out = []
    holders = (live or {}).get("vip_holders")
    for region in topo.regions:
        for vip in topo.vips(region.name):
            if holders is None:  # the plan: the designated master
                out.append(f"  {_id(vip.master)} -> {_id(vip.address)} [label=\"master\", color={_q(QUIET)}];")
                continue
            held = holders.get(vip.address, [])
            color = OK if len(held) == 1 else BAD
            for proxy in held:
                out.append(f"  {_id(proxy)} -> {_id(vip.address)} [label=\"holds\", color={_q(color)}, penwidth=2];")
            if not held:
                out.append(f"  {_id(vip.address)} [color={_q(BAD)}, penwidth=2, "
                           "xlabel=\"held by no proxy\"];")
    return out


def _writer_edges(topo: Topology, live: dict | None) -> list[str]:
    out = []
    writers = (live or {}).get("writers")
    for region in topo.regions:
        internal = topo.vips(region.name, "internal")
        if not internal:
            continue
        if writers is None:
            local = topo.nodes(region.name, "galera")
            writer = local[0].name if local else None
        else:
            writer = writers.get(region.name)
        if writer:
            out.append(f"  {_id(internal[0].address)} -> {_id(writer)} [label=\"writes\", color=\"#1565c0\", "
                       "penwidth=2];")
    return out


def render_png(dot: str, path: str, timeout: float = 60) -> None:
    """Graphviz's `dot` (Debian's graphviz package) draws the PNG."""
    exe = shutil.which("dot")
    if exe is None:
        raise RuntimeError("Graphviz's `dot` is not installed: `apt-get install graphviz` (./run setup installs it)")
    subprocess.run([exe, "-Tpng", "-o", path], input=dot, text=True, check=True, timeout=timeout,
                   capture_output=True)
