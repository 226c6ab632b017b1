"""The lab deployment of lab/topology.yaml: rendered files at VM paths, security groups
enforced in every node, memcached running on its rendered configuration."""

from __future__ import annotations

import os

import pytest

pytestmark = pytest.mark.lab

def test_every_check_passes(deployment):
    checks = deployment.checks()
    for c in checks:
        print(c.line())
    # pings between 3 regions, memcached (answers, refuses) and Galera (member, health from
    # the proxy, health refused to Keystone) per region, the proxy layer's 36, and Keystone's
    # /healthcheck on 3 nodes, the keys identical on all of them, the Keystone DB user's TLS,
    # and each node's own drift check (keystone-node key-check)
    assert len(checks) == 3 + 3 * 2 + 3 * 3 + 36 + 3 + 1 + 1 + 3
    assert [c.line() for c in checks if not c.ok] == []


def test_nodes_see_their_rendered_files_at_vm_paths(deployment):
    from keystone_multiregion.render import render_node

    secrets = deployment.secrets()
    for name in ("galera-lab-b-1", "memcached-lab-c-1", "proxy-lab-a-2"):
        rendered = render_node(deployment.topo, name, secrets)
        for f in rendered.files:
            inside = deployment.lab.procs.run(name, ["cat", f.path]).stdout
            assert inside == f.content, f"{name}:{f.path}"
    mycnf = deployment.lab.procs.run("galera-lab-b-1", ["cat", "/root/.my.cnf"]).stdout
    assert secrets["galera_root_password"] in mycnf
    # The machine's own /root/.my.cnf never carries the lab's secret.
    if os.path.exists("/root/.my.cnf"):
        assert secrets["galera_root_password"] not in open("/root/.my.cnf").read()


def test_memcached_runs_on_the_rendered_configuration(deployment):
    stats = deployment.memcached_stats("keystone-lab-a-1", "memcached-lab-a-1")
    assert stats is not None
    assert stats["limit_maxbytes"] == str(512 * 1024 * 1024)  # Debian's default is 64 MB
    assert stats["threads"] == "1"  # one per core of the lab flavor (default is 4)
    listening = deployment.lab.net.exec("memcached-lab-a-1", ["ss", "-Hltn"]).stdout
    assert "10.91.1.74:11211" in listening and "0.0.0.0:11211" not in listening


def test_security_groups_refuse_other_regions_keystone(deployment):
    # memcached admits only the Keystone nodes of its own region.
    assert deployment.memcached_stats("keystone-lab-b-1", "memcached-lab-a-1", timeout=1.0) is None
    assert deployment.memcached_stats("proxy-lab-a-1", "memcached-lab-a-1", timeout=1.0) is None
    assert deployment.memcached_stats("keystone-lab-a-1", "memcached-lab-a-1") is not None


def test_partitioned_region_keeps_its_local_cache(deployment):
    net = deployment.lab.net
    region_c = [n.name for n in deployment.topo.nodes("lab-c")]
    net.partition(region_c, peers=["10.91.1.0/24", "10.91.2.0/24"])
    try:
        assert not net.can_reach("galera-lab-a-1", "galera-lab-c-1")
        assert net.can_reach("galera-lab-a-1", "galera-lab-b-1")
        assert deployment.memcached_stats("keystone-lab-c-1", "memcached-lab-c-1") is not None
    finally:
        net.heal(region_c)
    assert net.can_reach("galera-lab-a-1", "galera-lab-c-1")


def test_no_secret_in_any_command_line(deployment):
    # Sampled while `up` started every daemon (and its one-shot commands), and once more now.
    seen = deployment.lab.state.read()["probes"]["argv_secrets"]
    check = deployment.argv_secrets_check()
    print(check.line())
    assert seen["samples"] > 0 and check.ok, check.line()


def test_galera_health_servers_run_unprivileged(deployment):
    from lab.layers.galera import health_uid
    uids = {n.name: health_uid(deployment, n.name) for n in deployment.topo.nodes(role="galera")}
    assert all(uid not in (None, 0) for uid in uids.values()), uids
