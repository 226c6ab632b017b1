"""agents/node_health.py, the health server galera-node and replica-node share: shipped next
to both agents, what each agent keeps of its own (how a status is judged, what a failed
query answers, its name in an error), and a clear exit when the module is missing."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
import threading
import urllib.error
import urllib.request

import pytest

from helpers import ROOT
from keystone_multiregion import pki
from keystone_multiregion.render import AGENTS, render_node
from keystone_multiregion.roles.galera import NODE_HEALTH_MODULE
from keystone_multiregion.topology import load_topology_file


def _load(filename, name):
    spec = importlib.util.spec_from_file_location(name, AGENTS / filename)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _serve(server):
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/"

    def get():
        try:
            with urllib.request.urlopen(url, timeout=10) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()
    return get


def test_the_lab_topology_ships_the_module_to_galera_and_replica_nodes_only():
    topo = load_topology_file(ROOT / "lab" / "topology-region-r.yaml")
    secrets = pki.generate_secrets(topo)
    shipped = {}
    for node in topo.nodes():
        files = {f.path: f for f in render_node(topo, node.name, secrets).files}
        shipped[node.role] = shipped.get(node.role, False) or NODE_HEALTH_MODULE in files
        if NODE_HEALTH_MODULE in files:
            f = files[NODE_HEALTH_MODULE]
            assert f.content == (AGENTS / "node_health.py").read_text()
            assert (f.permissions, f.push_only, f.first_boot_only) == ("0644", False, False)
    assert shipped["galera"] and shipped["replica"]
    assert not any(v for role, v in shipped.items() if role not in ("galera", "replica"))


def test_both_agents_serve_from_the_one_module():
    gn, rn = _load("galera-node.py", "galera_node_h"), _load("replica-node.py", "replica_node_h")
    nh = gn._lib_module("node_health")
    assert nh is rn._lib_module("node_health") and nh.__file__ == str(AGENTS / "node_health.py")
    for agent in (gn, rn):
        server = agent.HealthServer(("127.0.0.1", 0), agent.HealthCache(lambda: {"healthy": True}))
        try:
            assert isinstance(server, nh.HealthServer) and isinstance(server.health, nh.HealthCache)
        finally:
            server.server_close()


def test_a_failed_query_answers_each_agents_own_error():
    gn, rn = _load("galera-node.py", "galera_node_h"), _load("replica-node.py", "replica_node_h")

    def fails():
        raise RuntimeError("no socket")
    assert gn.HealthCache(fails).get() == {"error": "no socket"}
    assert rn.HealthCache(fails).get() == {"error": "no socket", "healthy": False}
    for agent in (gn, rn):
        server = agent.HealthServer(("127.0.0.1", 0), agent.HealthCache(fails))
        get = _serve(server)
        try:
            code, _ = get()
        finally:
            server.shutdown()
            server.server_close()
        assert code == 503


def test_galera_judges_by_wsrep_state_and_the_replica_by_its_own_word():
    gn, rn = _load("galera-node.py", "galera_node_h"), _load("replica-node.py", "replica_node_h")
    synced = {"wsrep_local_state_comment": "Synced", "wsrep_cluster_status": "Primary", "wsrep_ready": "ON"}
    codes = {}
    for label, agent, status in (("galera synced", gn, synced),
                                 ("galera says healthy only", gn, {"healthy": True}),
                                 ("replica healthy", rn, {"healthy": True}),
                                 ("replica synced words only", rn, synced)):
        server = agent.HealthServer(("127.0.0.1", 0), agent.HealthCache(lambda s=status: s, ttl=0))
        get = _serve(server)
        try:
            codes[label] = get()[0]
        finally:
            server.shutdown()
            server.server_close()
    assert codes == {"galera synced": 200, "galera says healthy only": 503, "replica healthy": 200,
                     "replica synced words only": 503}


@pytest.mark.parametrize("agent,program", [("galera-node.py", "galera-node"), ("replica-node.py", "replica-node")])
def test_root_that_cannot_drop_privileges_names_the_program(monkeypatch, agent, program):
    module = _load(agent, "agent_h")
    import os
    import pwd
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(os, "getuid", lambda: 0)
    for name in ("setgroups", "setgid", "setuid"):
        monkeypatch.setattr(os, name, lambda *_: None)
    monkeypatch.setattr(pwd, "getpwnam", lambda name: pwd.struct_passwd((name, "x", 1000, 1000, "", "/", "/bin/false")))
    with pytest.raises(SystemExit) as exc:
        module.drop_privileges("nobody")
    assert str(exc.value) == f"{program}: could not drop root privileges"


@pytest.mark.parametrize("agent,program", [("galera-node.py", "galera-node"), ("replica-node.py", "replica-node")])
def test_a_missing_module_is_one_clear_line_not_a_traceback(tmp_path, agent, program):
    """The agent alone (no node_health.py beside it, none in its library directory): the health
    server exits non-zero with one line naming the module and the fix."""
    shutil.copy(AGENTS / agent, tmp_path / agent)
    code = ("import importlib.util, sys\n"
            f"spec = importlib.util.spec_from_file_location('agent', {str(tmp_path / agent)!r})\n"
            "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)\n"
            f"m.LIB_DIR = {str(tmp_path / 'lib')!r}\n"
            "sys.exit(m.main(['health-server', '--address', '127.0.0.1', '--port', '0']))\n")
    out = subprocess.run([sys.executable, "-I", "-c", code], cwd=tmp_path, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 1
    assert "Traceback" not in out.stderr
    (line,) = out.stderr.strip().splitlines()
    assert line.startswith(f"{program}: cannot load node_health.py from {tmp_path}")
    assert "files are incomplete" in line
