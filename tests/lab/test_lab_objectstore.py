"""The object store for the database backups (#14): a one-replica Swift on the `objstore`
host, reached from the Galera nodes with the swift CLI (v1 auth, credentials in the
environment); a wrong key and the account's user without rights are refused, a Keystone node
cannot even connect. The store runs in the session's lab deployment (conftest.py), whose
teardown is checked to leave no process, Swift's included."""
from __future__ import annotations

import os
import stat

import pytest

pytestmark = pytest.mark.lab

CONTAINER = "galera-backups"


@pytest.fixture(scope="module")
def store(deployment):
    """The session's lab deployment, whose object store up() started (a second start starts
    nothing; its teardown, checked by the deployment fixture, leaves no process)."""
    from lab import objectstore
    deployment.objstore_creds = objectstore.start(deployment, log=lambda *_: None)
    return deployment


def _swift(dep, node, args, creds, timeout=60):
    from lab.objectstore import swift_env
    return dep.lab.procs.run(node, ["swift", *args], env=swift_env(creds), check=False, timeout=timeout)


def _galera(dep):
    return dep.topo.nodes(role="galera")[0].name


def test_the_store_is_where_the_interface_says(store):
    from lab import objectstore
    creds = store.objstore_creds
    assert str(objectstore.address(store.topo)) == "10.91.0.20/24"
    assert creds["auth_url"] == "http://10.91.0.20:8080/auth/v1.0"
    assert creds["user"] == "ksl:backup" and len(creds["key"]) >= 24
    assert objectstore.credentials(store) == creds
    d = os.path.join(store.lab.labdir, "objectstore")
    for name in ("credentials.json", "secrets.json"):
        assert stat.S_IMODE(os.stat(os.path.join(d, name)).st_mode) == 0o600
    assert store.lab.net.ip(objectstore.OBJSTORE_HOST) == "10.91.0.20"


def test_backup_user_stores_and_reads_back_an_object_from_a_galera_node(store):
    creds = store.objstore_creds
    node = _galera(store)
    work = os.path.join(store.lab.labdir, "objstore-test")
    os.makedirs(work, exist_ok=True)
    payload = os.urandom(3 * 1024 * 1024 + 17)
    src, dst = os.path.join(work, "dump.sql.gz"), os.path.join(work, "downloaded")
    with open(src, "wb") as fh:
        fh.write(payload)
    out = _swift(store, node, ["post", CONTAINER], creds)
    assert out.returncode == 0, out.stderr
    out = _swift(store, node, ["upload", "--object-name", "2024/dump.sql.gz", CONTAINER, src], creds)
    assert out.returncode == 0, out.stderr
    out = _swift(store, node, ["list", CONTAINER], creds)
    assert out.returncode == 0 and out.stdout.split() == ["2024/dump.sql.gz"], (out.stdout, out.stderr)
    out = _swift(store, node, ["download", CONTAINER, "2024/dump.sql.gz", "-o", dst], creds)
    assert out.returncode == 0, out.stderr
    with open(dst, "rb") as fh:
        assert fh.read() == payload
    out = _swift(store, node, ["stat", CONTAINER, "2024/dump.sql.gz"], creds)
    assert out.returncode == 0, out.stderr
    fields = {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in out.stdout.splitlines())}
    assert fields["Account"] == "AUTH_ksl" and fields["Container"] == CONTAINER
    assert fields["Object"] == "2024/dump.sql.gz" and fields["Content Length"] == str(len(payload))
    # The container's listing and totals are updated as the object is written (the account's
    # totals would need the container-updater, which the lab does not run).
    out = _swift(store, node, ["stat", CONTAINER], creds)
    fields = {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in out.stdout.splitlines())}
    assert out.returncode == 0 and fields["Objects"] == "1" and fields["Bytes"] == str(len(payload)), out.stdout


def test_a_wrong_key_is_refused(store):
    creds = {**store.objstore_creds, "key": "not-" + store.objstore_creds["key"]}
    out = _swift(store, _galera(store), ["list"], creds)
    assert out.returncode != 0 and "401" in out.stderr, (out.returncode, out.stderr)


def test_the_accounts_user_without_rights_cannot_read_the_backups(store):
    """`other` logs in (its key is right) but, without .admin or an ACL, may not list the
    backup container nor read an object of it."""
    from lab import objectstore
    other = objectstore.other_credentials(store)
    assert other["user"] == "ksl:other"
    node = _galera(store)
    assert _swift(store, node, ["post", "refusal-test"], store.objstore_creds).returncode == 0
    out = _swift(store, node, ["auth"], other)
    assert out.returncode == 0 and "AUTH_ksl" in out.stdout, out.stderr
    out = _swift(store, node, ["list", "refusal-test"], other)
    assert out.returncode != 0 and "403" in out.stderr, (out.returncode, out.stderr)
    small = os.path.join(store.lab.labdir, "objstore-small")
    with open(small, "w") as fh:
        fh.write("not a backup\n")
    out = _swift(store, node, ["upload", "--object-name", "x", "refusal-test", small], other)
    assert out.returncode != 0 and "403" in out.stderr, (out.returncode, out.stderr)


def _connects(dep, source, address, port=8080):
    code = ("import socket,sys\n"
            "try:\n socket.create_connection((sys.argv[1],int(sys.argv[2])),timeout=2).close();print('open')\n"
            "except Exception as e:\n print(type(e).__name__)")
    return dep.lab.net.exec(source, ["python3", "-c", code, address, str(port)], timeout=10).stdout.strip()


def test_only_the_galera_nodes_and_the_ops_host_reach_the_store(store):
    from lab import objectstore
    ip = str(objectstore.address(store.topo).ip)
    for node in store.topo.nodes(role="galera"):
        assert _connects(store, node.name, ip) == "open", node.name
    assert _connects(store, "ops", ip) == "open"
    # Dropped, not refused: the port listens (see above), the firewall swallows the SYN.
    for node in store.topo.nodes(role="keystone") + store.topo.nodes(role="proxy")[:1]:
        assert _connects(store, node.name, ip) == "TimeoutError", node.name
    ruleset = store.lab.net.exec(objectstore.OBJSTORE_HOST, ["nft", "list", "table", "inet", objectstore.TABLE]).stdout
    assert "policy drop" in ruleset and "tcp dport 8080" in ruleset


def test_the_servers_run_as_swift_and_a_second_start_starts_nothing(store):
    import pwd

    from lab import objectstore
    procs = store.lab.procs
    names = ["swift-proxy-server", "swift-account-server", "swift-container-server", "swift-object-server"]
    pids = {n: procs.pid(objectstore.OBJSTORE_HOST, n) for n in names + ["memcached"]}
    uid = pwd.getpwnam("swift").pw_uid
    for name in names:
        with open(f"/proc/{pids[name]}/status") as fh:
            uids = next(line for line in fh if line.startswith("Uid:")).split()[1:]
        assert {int(u) for u in uids} == {uid}, (name, uids)
    creds = objectstore.start(store, log=lambda *_: None)
    assert creds == store.objstore_creds
    assert {n: procs.pid(objectstore.OBJSTORE_HOST, n) for n in pids} == pids
    assert all(procs.is_alive(objectstore.OBJSTORE_HOST, n) for n in pids)
