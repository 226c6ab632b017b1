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
    # the proxy, health refused to Keystone) per region, the proxy layer's own checks, and Keystone's
    # /healthcheck on 3 nodes, the keys identical on all of them, the Keystone DB user's TLS,
    # and each node's own drift check (keystone-node key-check)
    from lab.layers import proxy
    # ... plus the Galera health servers' user (one per region), every node's drift check of its
    # pushed files (node-agent check) and the command-line secret watch
    assert len(checks) == 3 + 3 * 2 + 3 * 3 + len(proxy.checks(deployment)) + 3 + 1 + 1 + 3 + 3 + \
        len(deployment.topo.nodes()) + 1
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


# A MariaDB greeting without TLS (no CLIENT_SSL); records what the client sends back. Run
# inside a Keystone node's namespace on its own loopback, one connection, bounded.
_FAKE_MYSQL = r"""
import socket, struct, sys
srv = socket.socket(); srv.bind(("127.0.0.1", int(sys.argv[1]))); srv.listen(5); srv.settimeout(60)
print("listening", flush=True)
caps = (0xFFFF & ~0x0800) | 0x8000 | 0x0200
g = (bytes([10]) + b"5.5.5-10.11.0-MariaDB\0" + struct.pack("<I", 1) + b"abcdefgh\0" + struct.pack("<H", caps)
     + bytes([33]) + struct.pack("<HH", 2, 0x0008) + bytes([21]) + b"\0" * 10 + b"ijklmnopqrst\0"
     + b"mysql_native_password\0")
received = []
for _ in range(5):  # the client may retry: every attempt is recorded (bounded in count and time)
    try:
        conn, _ = srv.accept()
    except OSError:
        break
    srv.settimeout(5)
    conn.settimeout(5)
    conn.sendall(struct.pack("<I", len(g))[:3] + b"\0" + g)
    data = b""
    try:
        while True:
            chunk = conn.recv(4096)
            if not chunk:
                break
            data += chunk
    except OSError:
        pass
    conn.close()
    received.append(data.hex())
print(",".join(received), flush=True)
"""


@pytest.mark.parametrize("manage, driver", [("/usr/local/bin/keystone-manage", "mysql+tlspymysql"),
                                            ("/usr/bin/keystone-manage", "mysql+pymysql")])
def test_keystone_sends_no_login_to_a_database_without_tls(deployment, tmp_path, manage, driver):
    """Something answering as MariaDB without TLS where Keystone's database is: keystone-manage
    as the nodes run it (our wrapper, the mysql+tlspymysql driver) refuses before the login;
    the control — Debian's keystone-manage with plain mysql+pymysql, as keystone.conf was
    before — sends the user name and password hash to it."""
    import configparser
    import subprocess
    import sys
    from keystone_multiregion.roles.keystone import KEYSTONE_CONF
    node = deployment.topo.nodes("lab-a", "keystone")[0].name
    procs = deployment.lab.procs
    conf = configparser.ConfigParser(interpolation=None)
    conf.read(procs.host_path(node, KEYSTONE_CONF))
    url = conf["database"]["connection"]
    assert url.startswith("mysql+tlspymysql://")
    host = url.split("@", 1)[1].split("/", 1)[0]
    conf["database"]["connection"] = url.replace(host, "127.0.0.1:13306", 1).replace("mysql+tlspymysql", driver, 1)
    conf["database"]["max_retries"] = "0"
    copy = tmp_path / "keystone.conf"
    with open(copy, "w") as fh:
        conf.write(fh)
    fake = subprocess.Popen(procs.command(node, [sys.executable, "-c", _FAKE_MYSQL, "13306"]),
                            stdout=subprocess.PIPE, text=True)
    try:
        assert fake.stdout.readline().strip() == "listening"  # bounded: the script times out in 60 s
        out = procs.run(node, [manage, "--config-file", str(copy), "db_version"], timeout=120, check=False)
        attempts = [bytes.fromhex(h) for h in fake.communicate(timeout=120)[0].strip().split(",")]
    finally:
        if fake.poll() is None:
            fake.kill()
            fake.wait()
    print(manage, out.returncode, [a[:60] for a in attempts])
    assert out.returncode != 0 and attempts
    if driver == "mysql+tlspymysql":
        assert "does not offer TLS" in out.stderr and all(a == b"" for a in attempts)
    else:
        assert any(b"keystone" in a for a in attempts)  # the control: the login went out in clear
