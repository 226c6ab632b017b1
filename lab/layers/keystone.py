"""Keystone in the lab: keystone-node prepares each node and bootstraps one, then uwsgi
serves the API on the node's address, exactly as the keystone-api unit does on a VM."""

from __future__ import annotations

import time

from keystone_multiregion.keys import payload
from keystone_multiregion.roles.keystone import (KEY_DIRS, KEYSTONE_NODE_TOOL, UWSGI_INI, install_keys_command,
                                                 is_bootstrap)
from keystone_multiregion.security import PORTS

from ..checks import Check
from ..ssh import SSHD_PACKAGES, client_key, ssh, start_sshd
from ..util import LabError

ROLES = ("keystone",)
PACKAGES = ("keystone", "uwsgi-plugin-python3", "python3-memcache", "python3-pymysql", *SSHD_PACKAGES)
TOOL = ["python3", KEYSTONE_NODE_TOOL]
# The node's own log and state directories, and its key repositories (empty until the
# keys are pushed), as on a VM.
KEYSTONE_DIRS = ("/var/log/keystone", "/var/lib/keystone", "/var/lib/keystone-multiregion", *KEY_DIRS.values())


def url(dep, name: str, path: str = "/v3") -> str:
    return f"http://{dep.topo.node(name).address}:{PORTS['keystone']}{path}"


def install(dep, rendered) -> None:
    node = rendered.node
    dep.lab.procs.make_root(node.name, KEYSTONE_DIRS)
    dep.lab.procs.run(node.name, TOOL + ["prepare"])


def push_keys(dep, name: str, repos: dict | None = None, extra: tuple[str, ...] = (), check: bool = True):
    """What the region stack does (components/keys.py): over SSH from the admin network, host
    key pinned, the same command line with the same payload on stdin. Default: the
    repositories the lab's Keystone nodes hold now (after the drills' rotations: a node added
    later, e.g. a new region's, gets those, as a new region's stack gets the shared stack's)."""
    repos = repos if repos is not None else dep.key_repositories()
    command = " ".join([install_keys_command(), *extra])
    out = ssh(dep, name, command, input=payload(repos))
    if check and out.returncode != 0:
        raise LabError(f"key push to {name} failed (rc={out.returncode}): {out.stderr.strip()[-1000:]}")
    return out


def start_api(dep, name: str, timeout: float = 120) -> None:
    dep.lab.procs.start(name, "keystone", ["uwsgi_python3", "--ini", UWSGI_INI],
                        ready=lambda: dep.http_status(name, url(dep, name), timeout=2) == 200,
                        ready_timeout=timeout)


def start(dep, nodes, log) -> None:
    client_key(dep)
    for node in nodes:
        t = time.monotonic()
        start_sshd(dep, node.name)
        pushed = push_keys(dep, node.name)
        log(f"{node.name}: sshd up, keys pushed over SSH from the admin network, digests "
            f"{pushed.stdout.strip()} ({time.monotonic() - t:.1f}s)")
    for node in nodes:
        if is_bootstrap(dep.topo, node):
            t = time.monotonic()
            out = dep.lab.procs.run(node.name, TOOL + ["bootstrap", "--timeout", "300"], timeout=400)
            log(f"{node.name}: {out.stdout.strip().splitlines()[-1]} ({time.monotonic() - t:.1f}s)")
    for node in nodes:
        t = time.monotonic()
        start_api(dep, node.name)
        log(f"{node.name}: API up in {time.monotonic() - t:.1f}s")


def key_digests(dep) -> dict[str, dict]:
    """Each Keystone node's repository digests (keystone-node key-digest)."""
    import json
    return {n.name: json.loads(dep.lab.procs.run(n.name, TOOL + ["key-digest"]).stdout)
            for n in dep.topo.nodes(role="keystone")}


def checks(dep) -> list[Check]:
    out = []
    for node in dep.topo.nodes(role="keystone"):
        code = dep.http_status(node.name, url(dep, node.name, "/healthcheck"))
        out.append(Check(f"{node.name} /healthcheck", code == 200, f"HTTP {code}"))
    # Drift check: every node of every region holds the same key repositories, and each
    # holds what was last pushed to it (keystone-node key-check, as the node's timer runs it).
    digests = key_digests(dep)
    distinct = {json_key(d) for d in digests.values()}
    out.append(Check("key repositories identical on every Keystone node", len(distinct) == 1,
                     f"{len(digests)} nodes, {len(distinct)} distinct"
                     + ("" if len(distinct) == 1 else f": {digests}")))
    out.append(db_tls_check(dep))
    for node in dep.topo.nodes(role="keystone"):
        check = dep.lab.procs.run(node.name, TOOL + ["key-check"], check=False)
        out.append(Check(f"{node.name} keys as pushed", check.returncode == 0,
                         (check.stderr or check.stdout).strip()[-300:]))
    return out


# Keystone's database login from a proxy (which may reach 3306), without TLS and with it, with
# the distribution's python3 and PyMySQL (what Keystone uses).
_DB_LOGIN = r"""
import json, sys, pymysql
host, ca = sys.argv[1:3]
password = sys.stdin.readline().rstrip("\n")  # on stdin: argv is visible to every user
out = {}
for label, ssl in (("plain", None), ("tls", {"ca": ca, "check_hostname": False})):
    try:
        c = pymysql.connect(host=host, user="keystone", password=password, database="keystone", ssl=ssl,
                            connect_timeout=5)
        cur = c.cursor()
        cur.execute("SHOW SESSION STATUS LIKE 'Ssl_cipher'")
        out[label] = cur.fetchone()[1] or "no cipher"
        c.close()
    except pymysql.MySQLError as exc:
        out[label] = f"refused {exc.args[0]}"
print(json.dumps(out))
"""


def db_tls_check(dep) -> Check:
    """Keystone's database user gets in only over TLS verified with the Galera CA (what
    keystone.conf's connection does through the proxies, across the WAN when it falls back)."""
    import json
    from keystone_multiregion.roles.keystone import DB_CA_FILE
    node = dep.topo.nodes(role="keystone")[0]
    galera = dep.topo.nodes(node.region, "galera")[0]
    proxy = dep.topo.nodes(node.region, "proxy")[0]
    ca = str(dep.render_dir / node.region / node.name / "files" / DB_CA_FILE.lstrip("/"))
    res = dep.lab.net.exec(proxy.name, ["/usr/bin/python3", "-c", _DB_LOGIN, galera.address, ca], timeout=30,
                           check=False, input=dep.secrets()["keystone_db_password"] + "\n")
    try:
        seen = json.loads(res.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return Check("keystone's DB user: TLS only", False, (res.stderr or res.stdout).strip()[-300:])
    ok = seen.get("plain") == "refused 1045" and not str(seen.get("tls", "refused")).startswith(("refused", "no "))
    return Check("keystone's DB user: TLS only", ok, f"without TLS: {seen.get('plain')}; with the Galera CA: "
                 f"{seen.get('tls')}")


def json_key(d: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(d.items()))
