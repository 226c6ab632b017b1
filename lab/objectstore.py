"""An object store for the database backups (#14): OpenStack Swift with one replica, on a lab
host of its own in admin_cidr.

`objstore` is a namespace like the ops host (no node of any region). It runs Debian's Swift
2.30 daemons as Debian's units run them (User=swift, Group=swift; every port is above 1024):
swift-proxy-server on the host's address, port 8080, with **tempauth** (Swift's v1 auth,
`/auth/v1.0`), and the account, container and object servers on loopback, each with one
device (a directory under the lab directory) in a ring of one replica. tempauth keeps its tokens in memcache, so a memcached on loopback serves
the proxy. No replicator, updater or auditor runs: with one replica and one device there is
nothing to replicate; the object server updates the container's listing as it writes (the
account's totals, which the container-updater would refresh, are not kept: nothing reads them).

The files live in `<labdir>/objectstore/`: `etc/` (swift.conf with a random hash path prefix
and suffix, the rings, the servers' configurations) is bound over /etc/swift and `node/` over
/srv/node for the host's processes only (lab/procs.py), so nothing of the machine changes.
The account `ksl` has two users: `backup`, admin of its account (what the backups use), and
`other`, a plain user of the same account without any ACL (it may log in, not read). The keys
and hash path values are made once per lab directory (0600): `credentials.json` holds the
backup user's `auth_url`, `user` and `key`; `secrets.json` everything else.

Access: an nftables input chain in the host's namespace admits tcp 8080 from the topology's
Galera nodes and the ops host only (established traffic and loopback accepted, everything
else dropped), as a security group would.

    creds = objectstore.start(dep)            # {"auth_url", "user", "key"}; twice starts nothing
    dep.lab.procs.run(node, ["swift", "stat"], env=objectstore.swift_env(creds))
"""
from __future__ import annotations

import ipaddress
import json
import os
import secrets as _secrets
import shutil
import time
from pathlib import Path

from .net import HostSpec
from .ssh import OPS_HOST, ops_address
from .util import LabError

PACKAGES = ("swift", "swift-proxy", "swift-account", "swift-container", "swift-object",
            "python3-swiftclient", "memcached")
OBJSTORE_HOST = "objstore"
PORT = 8080
ACCOUNT = "ksl"
USER = "backup"
OTHER_USER = "other"
SWIFT_USER = "swift"  # Debian's system user for Swift (its units' User=)
TABLE = "ksl_objstore"
# The backend servers on loopback (Swift's default ports), one device each.
SERVERS = {"account": 6202, "container": 6201, "object": 6200}
PART_POWER = 6  # 64 partitions: plenty for one device
MEMCACHED = ("127.0.0.1", 11211)
VM_ETC, VM_DEVICES = "/etc/swift", "/srv/node"
# What Debian's units (swift-proxy.service, swift-object.service, ...) do: User=swift, Group=swift.
AS_SWIFT = ["setpriv", f"--reuid={SWIFT_USER}", f"--regid={SWIFT_USER}", "--init-groups"]
SWIFT_ENV = {"HOME": "/var/lib/swift"}
READY_TIMEOUT_S = 60  # every wait here is bounded (a safety bound, not a target)


# -- plain data --------------------------------------------------------------------------------
def address(topo) -> ipaddress.IPv4Interface:
    """The object store's address: the 20th of admin_cidr (the ops host is the 10th)."""
    net = ipaddress.ip_network(topo.admin_cidr)
    return ipaddress.IPv4Interface(f"{net[20]}/{net.prefixlen}")


def auth_url(ip: str, port: int = PORT) -> str:
    return f"http://{ip}:{port}/auth/v1.0"


def storage_url(ip: str, port: int = PORT, account: str = ACCOUNT) -> str:
    return f"http://{ip}:{port}/v1/AUTH_{account}"


def new_secrets() -> dict:
    """Random keys for the two users and a random hash path prefix and suffix."""
    return {"hash_path_prefix": _secrets.token_hex(16), "hash_path_suffix": _secrets.token_hex(16),
            "keys": {USER: _secrets.token_urlsafe(24), OTHER_USER: _secrets.token_urlsafe(24)}}


def swift_conf(hash_path_prefix: str, hash_path_suffix: str) -> str:
    return ("[swift-hash]\n"
            f"swift_hash_path_prefix = {hash_path_prefix}\n"
            f"swift_hash_path_suffix = {hash_path_suffix}\n"
            "\n"
            "[storage-policy:0]\n"
            "name = Policy-0\n"
            "default = yes\n")


def proxy_conf(ip: str, keys: dict[str, str], port: int = PORT, account: str = ACCOUNT) -> str:
    """proxy-server.conf: tempauth with the account's two users (`backup` admin of the account,
    `other` without rights), the account created on the admin's first write, tokens in the
    memcached on loopback."""
    url = storage_url(ip, port, account)
    return ("[DEFAULT]\n"
            f"bind_ip = {ip}\n"
            f"bind_port = {port}\n"
            "workers = 1\n"
            f"user = {SWIFT_USER}\n"
            f"swift_dir = {VM_ETC}\n"
            "log_name = swift-proxy\n"
            "\n"
            "[pipeline:main]\n"
            "pipeline = catch_errors gatekeeper healthcheck proxy-logging cache listing_formats tempauth "
            "copy slo dlo proxy-logging proxy-server\n"
            "\n"
            "[app:proxy-server]\n"
            "use = egg:swift#proxy\n"
            "account_autocreate = true\n"
            "\n"
            "[filter:tempauth]\n"
            "use = egg:swift#tempauth\n"
            f"user_{account}_{USER} = {keys[USER]} .admin {url}\n"
            f"user_{account}_{OTHER_USER} = {keys[OTHER_USER]} {url}\n"
            "\n"
            "[filter:cache]\n"
            "use = egg:swift#memcache\n"
            f"memcache_servers = {MEMCACHED[0]}:{MEMCACHED[1]}\n"
            "\n"
            "[filter:catch_errors]\nuse = egg:swift#catch_errors\n\n"
            "[filter:gatekeeper]\nuse = egg:swift#gatekeeper\n\n"
            "[filter:healthcheck]\nuse = egg:swift#healthcheck\n\n"
            "[filter:proxy-logging]\nuse = egg:swift#proxy_logging\n\n"
            "[filter:listing_formats]\nuse = egg:swift#listing_formats\n\n"
            "[filter:copy]\nuse = egg:swift#copy\n\n"
            "[filter:slo]\nuse = egg:swift#slo\n\n"
            "[filter:dlo]\nuse = egg:swift#dlo\n")


def server_conf(kind: str, port: int | None = None) -> str:
    """account-, container- or object-server.conf: on loopback, devices under /srv/node with no
    mount check (the lab's devices are directories), as user swift."""
    if kind not in SERVERS:
        raise ValueError(f"unknown Swift server {kind!r}")
    return ("[DEFAULT]\n"
            "bind_ip = 127.0.0.1\n"
            f"bind_port = {port or SERVERS[kind]}\n"
            "workers = 1\n"
            f"user = {SWIFT_USER}\n"
            f"swift_dir = {VM_ETC}\n"
            f"devices = {VM_DEVICES}\n"
            "mount_check = false\n"
            f"log_name = swift-{kind}\n"
            "\n"
            "[pipeline:main]\n"
            f"pipeline = healthcheck {kind}-server\n"
            "\n"
            f"[app:{kind}-server]\n"
            f"use = egg:swift#{kind}\n"
            "\n"
            "[filter:healthcheck]\n"
            "use = egg:swift#healthcheck\n")


def ring_commands(etc: str = VM_ETC, part_power: int = PART_POWER) -> list[list[str]]:
    """swift-ring-builder's command lines for the three rings: one replica, one device each
    (named after its ring) on the loopback server of that ring."""
    out = []
    for kind, port in SERVERS.items():
        builder = f"{etc}/{kind}.builder"
        out += [["swift-ring-builder", builder, "create", str(part_power), "1", "0"],
                ["swift-ring-builder", builder, "add", f"r1z1-127.0.0.1:{port}/{kind}", "100"],
                ["swift-ring-builder", builder, "rebalance"]]
    return out


def ruleset(allowed: list[str], port: int = PORT) -> str:
    """The objstore host's input chain: `port` from the `allowed` addresses only."""
    lines = [f"table inet {TABLE} {{",
             "  chain input {",
             "    type filter hook input priority 0; policy drop;",
             "    ct state established,related accept",
             "    iif lo accept",
             "    icmp type echo-request accept"]
    for addr in allowed:
        lines.append(f"    ip saddr {ipaddress.ip_address(addr)} tcp dport {port} accept")
    lines += ["  }", "}"]
    return "\n".join(lines) + "\n"


def swift_env(creds: dict) -> dict[str, str]:
    """The swift CLI's v1 auth settings (python-swiftclient reads ST_AUTH, ST_USER, ST_KEY), so
    the key is never on a command line."""
    return {"ST_AUTH": creds["auth_url"], "ST_USER": creds["user"], "ST_KEY": creds["key"]}


# -- the lab's side ------------------------------------------------------------------------------
def _dir(dep) -> Path:
    return Path(dep.lab.labdir) / "objectstore"


def _write(path: Path, text: str, mode: int = 0o600) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.chmod(path, mode)


def _secrets_of(dep) -> dict:
    """The store's keys and hash path values, made once per lab directory (0600), and the backup
    user's credentials written beside them (credentials.json, 0600)."""
    d = _dir(dep)
    d.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = d / "secrets.json"
    if path.exists():
        values = json.loads(path.read_text())
    else:
        values = new_secrets()
        _write(path, json.dumps(values, indent=1) + "\n")
    creds = d / "credentials.json"
    if not creds.exists():
        ip = str(address(dep.topo).ip)
        _write(creds, json.dumps({"auth_url": auth_url(ip), "user": f"{ACCOUNT}:{USER}",
                                  "key": values["keys"][USER]}, indent=1) + "\n")
    return values


def credentials(dep) -> dict:
    """{"auth_url", "user", "key"} of the backup user (made by start())."""
    path = _dir(dep) / "credentials.json"
    if not path.exists():
        raise LabError(f"no object store credentials in {path}: objectstore.start() first")
    return json.loads(path.read_text())


def other_credentials(dep) -> dict:
    """The account's second user (`other`, no rights on the account's containers)."""
    creds = credentials(dep)
    return {**creds, "user": f"{ACCOUNT}:{OTHER_USER}", "key": _secrets_of(dep)["keys"][OTHER_USER]}


def allowed_sources(dep) -> list[str]:
    """Who may reach the store: the topology's Galera nodes and the ops host."""
    return [n.address for n in dep.topo.nodes(role="galera")] + [str(ops_address(dep.topo).ip)]


def apply_firewall(dep) -> None:
    """The host's input chain (replaced if loaded before; again after a change of topology)."""
    dep.lab.net.exec(OBJSTORE_HOST, ["nft", "-f", "-"],
                     input=f"table inet {TABLE}\ndelete table inet {TABLE}\n" + ruleset(allowed_sources(dep)))


def _configure(dep) -> None:
    """The host's files: configurations (rewritten each time, the same bytes for the same lab),
    rings (built once), devices (made once), owned as Swift needs them."""
    import grp
    import pwd
    uid, gid = pwd.getpwnam(SWIFT_USER).pw_uid, grp.getgrnam(SWIFT_USER).gr_gid
    values = _secrets_of(dep)
    d = _dir(dep)
    etc, node = d / "etc", d / "node"
    etc.mkdir(mode=0o750, exist_ok=True)
    os.chown(etc, 0, gid)
    ip = str(address(dep.topo).ip)
    files = {"swift.conf": swift_conf(values["hash_path_prefix"], values["hash_path_suffix"]),
             "proxy-server.conf": proxy_conf(ip, values["keys"]),
             **{f"{kind}-server.conf": server_conf(kind) for kind in SERVERS}}
    for name, text in files.items():
        _write(etc / name, text, 0o640)
        os.chown(etc / name, 0, gid)  # readable by the servers once they dropped to swift
    for kind in SERVERS:
        dev = node / kind
        dev.mkdir(parents=True, exist_ok=True)
        for p in (node, dev):
            os.chown(p, uid, gid)
    dep.lab.procs.set_binds(OBJSTORE_HOST, {VM_ETC: str(etc), VM_DEVICES: str(node)})
    if not all((etc / f"{kind}.ring.gz").exists() for kind in SERVERS):
        for f in etc.glob("*.builder"):
            f.unlink()
        shutil.rmtree(etc / "backups", ignore_errors=True)
        for argv in ring_commands():
            out = dep.lab.procs.run(OBJSTORE_HOST, argv, check=False, timeout=60)
            # rebalance exits 1 for a warning (e.g. balance); 2 is an error
            if out.returncode not in (0, 1) or (out.returncode == 1 and argv[-1] != "rebalance"):
                raise LabError(f"{' '.join(argv)} failed (exit {out.returncode}): {out.stdout}{out.stderr}")
        missing = [kind for kind in SERVERS if not (etc / f"{kind}.ring.gz").exists()]
        if missing:
            raise LabError(f"swift-ring-builder made no ring for {missing}")
        for f in etc.glob("*.ring.gz"):
            os.chown(f, 0, gid)
            os.chmod(f, 0o640)


def _answers(dep, url: str) -> bool:
    got = dep.http_get(OBJSTORE_HOST, url, timeout=2)
    return bool(got and got[0] == 200 and got[1].strip() == "OK")


def _process_names() -> list[str]:
    return ["memcached"] + [f"swift-{kind}-server" for kind in SERVERS] + ["swift-proxy-server"]


def start(dep, log=print) -> dict:
    """The object store up (once: what runs already is left as it is); returns the backup user's
    credentials {"auth_url", "user", "key"}."""
    t = time.monotonic()
    ip = address(dep.topo)
    if OBJSTORE_HOST not in dep.lab.net.hosts():  # in admin_cidr, beside the ops host
        dep.lab.net.add_host(HostSpec(OBJSTORE_HOST, "admin", str(ip)))
    apply_firewall(dep)
    _configure(dep)
    procs = dep.lab.procs
    started = []
    if not procs.is_alive(OBJSTORE_HOST, "memcached"):
        procs.start(OBJSTORE_HOST, "memcached",
                    ["memcached", "-u", "memcache", "-l", MEMCACHED[0], "-p", str(MEMCACHED[1]), "-U", "0",
                     "-m", "64"], ready=lambda: _tcp_open(dep, *MEMCACHED), ready_timeout=READY_TIMEOUT_S)
        started.append("memcached")
    for kind, port in SERVERS.items():
        name = f"swift-{kind}-server"
        if not procs.is_alive(OBJSTORE_HOST, name):
            procs.start(OBJSTORE_HOST, name, AS_SWIFT + [f"/usr/bin/{name}", f"{VM_ETC}/{kind}-server.conf", "-v"],
                        env=SWIFT_ENV,
                        ready=lambda p=port: _answers(dep, f"http://127.0.0.1:{p}/healthcheck"),
                        ready_timeout=READY_TIMEOUT_S)
            started.append(name)
    if not procs.is_alive(OBJSTORE_HOST, "swift-proxy-server"):
        procs.start(OBJSTORE_HOST, "swift-proxy-server",
                    AS_SWIFT + ["/usr/bin/swift-proxy-server", f"{VM_ETC}/proxy-server.conf", "-v"], env=SWIFT_ENV,
                    ready=lambda: _answers(dep, f"http://{ip.ip}:{PORT}/healthcheck"), ready_timeout=READY_TIMEOUT_S)
        started.append("swift-proxy-server")
    creds = credentials(dep)
    # The whole path once: tempauth (token in memcached), the account through the backends.
    out = procs.run(OBJSTORE_HOST, ["swift", "stat"], env=swift_env(creds), check=False, timeout=30)
    if out.returncode != 0:
        raise LabError(f"the object store does not answer the backup user: {out.stderr.strip()[-500:]}")
    log(f"object store: Swift on {creds['auth_url']} (tempauth, account {ACCOUNT}), "
        + (f"started {', '.join(started)}" if started else "already running")
        + f" ({time.monotonic() - t:.1f}s)")
    return creds


def stop(dep) -> None:
    """Every process of the store stopped (the host stays; teardown removes it with the lab)."""
    for name in reversed(_process_names()):
        dep.lab.procs.stop(OBJSTORE_HOST, name, timeout=10)


def _tcp_open(dep, host: str, port: int) -> bool:
    code = "import socket,sys\nsocket.create_connection((sys.argv[1],int(sys.argv[2])),timeout=1).close()"
    out = dep.lab.net.exec(OBJSTORE_HOST, ["python3", "-c", code, host, str(port)], timeout=5, check=False)
    return out.returncode == 0
