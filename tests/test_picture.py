"""The picture of a deployment (keystone_multiregion/picture.py): DOT from the topology, and
from what a running deployment says; Graphviz draws it."""
from __future__ import annotations

import subprocess
import sys

from helpers import ROOT
from keystone_multiregion.picture import BAD, OK, render_png, topology_dot
from keystone_multiregion.topology import load_topology_file

TOPO = load_topology_file(ROOT / "topology.yaml")


def _edges(dot: str, head: str) -> list[str]:
    return [line.strip() for line in dot.splitlines() if f'-> "{head}"' in line]


def test_the_plan_names_every_node_vip_master_and_writer():
    dot = topology_dot(TOPO)
    for node in TOPO.nodes():
        assert f'"{node.name}" [label="{node.name}\\n{node.address}' in dot
    for region in TOPO.regions:
        for vip in TOPO.vips(region.name):
            assert _edges(dot, vip.address) == [f'"{vip.master}" -> "{vip.address}" [label="master", color="#555555"];']
        writer = TOPO.nodes(region.name, "galera")[0].name
        assert any(e.startswith(f'"{TOPO.vips(region.name, "internal")[0].address}"') and 'label="writes"' in e
                   for e in _edges(dot, writer))
    assert f"{len(TOPO.galera_members)} members, {TOPO.galera_voters} votes" in dot


def test_live_state_shows_holders_two_holders_none_states_writers_and_down_nodes():
    a_public, a_second, a_internal = (v.address for v in TOPO.vips("region-a"))
    proxies = [p.name for p in TOPO.nodes("region-a", "proxy")]
    galera = {n.name: {"state": "Synced", "primary": True, "size": 9} for n in TOPO.nodes(role="galera")}
    galera["galera-region-c-1"] = {"state": "Initialized", "primary": False, "size": 3}
    del galera["galera-region-c-2"]  # no answer
    live = {"vip_holders": {a_public: proxies, a_second: [], a_internal: [proxies[1]]},
            "galera": galera, "writers": {"region-a": "galera-region-b-1"}, "down": ["keystone-region-b-2"]}
    dot = topology_dot(TOPO, live)
    assert all(f'color="{BAD}"' in e for e in _edges(dot, a_public)) and len(_edges(dot, a_public)) == 2
    assert f'"{a_second}" [color="{BAD}", penwidth=2, xlabel="held by no proxy"];' in dot
    assert _edges(dot, a_internal) == [f'"{proxies[1]}" -> "{a_internal}" [label="holds", color="{OK}", penwidth=2];']
    assert 'Initialized/non-Primary' in dot and "galera-region-c-2\\n10.10.3.43\\nvote 1\\nno answer" in dot
    assert [e for e in _edges(dot, "galera-region-b-1") if "writes" in e] == \
        [f'"{a_internal}" -> "galera-region-b-1" [label="writes", color="#1565c0", penwidth=2];']
    assert "keystone-region-b-2\\n10.10.2.59\\nDOWN" in dot
    assert "live cluster size: 3, 9" in dot


def test_graphviz_draws_it(tmp_path):
    render_png(topology_dot(TOPO), str(tmp_path / "t.png"))
    assert (tmp_path / "t.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_render_picture_command(tmp_path):
    out = subprocess.run([sys.executable, "-m", "keystone_multiregion", "--topology", str(ROOT / "topology.yaml"),
                          "render", "--picture", str(tmp_path / "t.dot")], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "t.dot").read_text() == topology_dot(TOPO)
    assert "3 regions, 33 nodes, 9 VIPs" in out.stdout
