"""The proxies in the lab: HAProxy and keepalived on the rendered haproxy.cfg and
keepalived.conf of each proxy node, as the Debian units run them on a VM.

    haproxy -Ws -f /etc/haproxy/haproxy.cfg -p /run/haproxy/haproxy.pid
    keepalived -n -l -D -f /etc/keepalived/keepalived.conf -p ... -r ... -c ...

Each proxy has its own /run/haproxy (the stats socket, read from the machine through
the node's bind-mounted directory) and /run/keepalived (pid files: several keepalived
instances on one machine need their own). The checks measure what the design promises:
each VIP held by exactly its master, the database frontend answering the local Keystone
node (and refusing others, by the security group), TLS with the region's certificate on
every public VIP, Keystone's internal endpoint on the internal VIP, and the rollout gate
(keystone_multiregion/gate.py, the command the deploy workflow runs) seeing each region's
public VIPs answered by the region itself.
"""

from __future__ import annotations

import json
import os
import secrets as _random
import socket
import sys
import time
from pathlib import Path

import keystone_multiregion
from keystone_multiregion.roles.proxy import (HAPROXY_CFG, HAPROXY_DOWN_DIR, HAPROXY_DROPIN, KEEPALIVED_CONF,
                                              STATS_SOCKET, local_database)
from keystone_multiregion.security import PORTS

from .. import service
from ..checks import Check
from ..util import LabError

ROLES = ("proxy",)
# curl: keepalived's health script asks HAProxy's monitor URI with it.
PACKAGES = ("haproxy", "keepalived", "curl", "ca-certificates")
PROXY_SYSCTL = "/etc/sysctl.d/60-keystone-multiregion.conf"
RUN_DIRS = ("/run/haproxy", "/run/keepalived", HAPROXY_DOWN_DIR)
HAPROXY_PID = "/run/haproxy/haproxy.pid"
KEEPALIVED_PIDS = {"-p": "/run/keepalived/keepalived.pid", "-r": "/run/keepalived/vrrp.pid",
                   "-c": "/run/keepalived/checkers.pid"}
HAPROXY_ARGV = ["haproxy", "-Ws", "-f", HAPROXY_CFG, "-p", HAPROXY_PID]
KEEPALIVED_ARGV = ["keepalived", "-n", "-l", "-D", "-f", KEEPALIVED_CONF] + \
    [x for flag, path in KEEPALIVED_PIDS.items() for x in (flag, path)]
# A MariaDB user for the checks and drills (root is socket-only on the Galera nodes):
# it may connect from the proxies only, and owns one scratch database.
CHECK_USER = "ksl_proxycheck"
DRILL_DB = "ksl_proxy_drill"

# A TLS request from inside a lab namespace: connect to an address, verify the server's
# certificate against a CA file for a host name (SNI), send one GET; prints JSON.
_TLS_GET = r"""
import json, socket, ssl, sys, time
addr, host, ca, path = sys.argv[1], sys.argv[3], sys.argv[4], sys.argv[5]
port, timeout = int(sys.argv[2]), float(sys.argv[6])
t = time.monotonic()
try:
    ctx = ssl.create_default_context(cafile=ca)
    with socket.create_connection((addr, port), timeout=timeout) as raw:
        with ctx.wrap_socket(raw, server_hostname=host) as tls:
            tls.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
            head = b""
            while b"\r\n" not in head and len(head) < 4096:
                chunk = tls.recv(4096)
                if not chunk:
                    break
                head += chunk
            status = int(head.split()[1]) if head.startswith(b"HTTP/") else None
            cert = tls.getpeercert()
            print(json.dumps({"ok": True, "status": status, "tls": tls.version(),
                              "san": [v for _, v in cert.get("subjectAltName", ())],
                              "ms": round((time.monotonic() - t) * 1000, 1)}))
except Exception as exc:
    print(json.dumps({"ok": False, "error": f"{type(exc).__name__}: {exc}",
                      "ms": round((time.monotonic() - t) * 1000, 1)}))
"""


# -- helpers the checks and the drills share ----------------------------------------------

def public_ca_file(dep) -> str:
    """The development CA that signed every region's public certificate, as a file."""
    path = Path(dep.lab.labdir) / "public-ca.pem"
    ca = dep.secrets().get("public_ca_cert")
    if not ca:
        raise LabError("the lab's secrets have no public_ca_cert")
    if not path.exists() or path.read_text() != ca:
        path.write_text(ca)
    return str(path)


def check_cnf(dep) -> str:
    """The MariaDB client option file of the check user (0600 in the lab directory)."""
    return str(Path(dep.lab.labdir) / "proxy-check.cnf")


def ensure_drill_table(dep, node: str) -> None:
    """The drills' write table (one acknowledged id per write), created through `node`."""
    dep.sql(node, f"CREATE DATABASE IF NOT EXISTS {DRILL_DB}; CREATE TABLE IF NOT EXISTS "
                  f"{DRILL_DB}.ticks (id BIGINT AUTO_INCREMENT PRIMARY KEY, node VARCHAR(64) NOT NULL, "
                  "at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6)) ENGINE=InnoDB", check=True)


def check_account(dep) -> dict[str, str]:
    """The check user's option file as {setting: value} ({} when there is none yet)."""
    path = Path(check_cnf(dep))
    if not path.exists():
        return {}
    return {k.strip(): v.strip() for k, _, v in (line.partition(" = ") for line in path.read_text().splitlines()) if v}


def ensure_check_user(dep, refresh: bool = False) -> str:
    """The check user on the cluster and its option file; created when the file is missing
    (or with refresh, as at every lab start: a new lab directory may hold an old file)."""
    path = check_cnf(dep)
    if os.path.exists(path) and not refresh:
        return path
    password = check_account(dep).get("password") or _random.token_hex(12)
    statements = []
    for proxy in dep.topo.nodes(role="proxy"):
        account = f"'{CHECK_USER}'@'{proxy.address}'"
        statements += [f"CREATE USER IF NOT EXISTS {account} IDENTIFIED BY '{password}'",
                       f"ALTER USER {account} IDENTIFIED BY '{password}'",
                       f"GRANT SELECT, INSERT, CREATE, DROP ON `{DRILL_DB}`.* TO {account}"]
    errors = []
    for galera in dep.topo.nodes(role="galera"):
        out = dep.sql(galera.name, "; ".join(statements), check=False)
        if out.returncode == 0:
            break
        errors.append(f"{galera.name}: {out.stderr.strip()}")
    else:
        raise LabError("could not create the proxy check user: " + "; ".join(errors))
    # A replica holds the core's keystone database only (its accounts are its own): the
    # check user is made on each replica too, outside its binary log.
    for replica in dep.topo.nodes(role="replica"):
        if dep.lab.procs.is_alive(replica.name, "mariadb"):
            dep.sql(replica.name, "; ".join(["SET SESSION sql_log_bin = 0", *statements]), check=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(f"[client]\nuser = {CHECK_USER}\npassword = {password}\n"
                 f"connect-timeout = 2\nport = {PORTS['mysql']}\n")
    return path


def db_query(dep, client: str, address: str, statement: str, timeout: float = 5.0):
    """(ok, output or error) of one statement through `address`:3306 from `client`'s namespace."""
    out = dep.lab.net.exec(client, ["mariadb", f"--defaults-file={check_cnf(dep)}", "-h", address, "-N", "-B",
                                    "-e", statement], timeout=timeout + 5, check=False)
    if out.returncode != 0:
        return False, (out.stderr.strip().splitlines() or [f"rc {out.returncode}"])[-1]
    return True, out.stdout.strip()


def tls_get(dep, client: str, address: str, hostname: str, path: str = "/", timeout: float = 2.0) -> dict:
    """A verified TLS GET to address:443 from `client`'s namespace (dev CA, SNI hostname)."""
    out = dep.lab.net.exec(client, [sys.executable, "-c", _TLS_GET, address, str(PORTS["https"]), hostname,
                                    public_ca_file(dep), path, str(timeout)], timeout=timeout + 5, check=False)
    try:
        return json.loads(out.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {"ok": False, "error": (out.stderr.strip() or f"rc {out.returncode}")[-300:]}


def rollout_gate(dep, client: str, region: str, vip, samples: int = 3, timeout: float = 5.0):
    """The deploy workflow's rollout gate (`python -m keystone_multiregion gate`), run from
    `client`'s namespace against one public VIP: (return code, its last line)."""
    project = Path(keystone_multiregion.__file__).resolve().parent.parent
    argv = ["env", f"PYTHONPATH={project}", sys.executable, "-m", "keystone_multiregion", "gate",
            "--region", region, "--url", f"https://{dep.topo.region(region).public_hostname}",
            "--address", vip.address, "--ca", public_ca_file(dep), "--samples", str(samples),
            "--timeout", str(timeout)]
    out = dep.lab.net.exec(client, argv, timeout=2 * samples * timeout + 15, check=False)
    lines = (out.stdout + out.stderr).strip().splitlines()
    return out.returncode, (lines[-1] if lines else f"rc {out.returncode}, no output")


def haproxy_command(dep, proxy: str, command: str, timeout: float = 2.0) -> str | None:
    """Send one command to the proxy's HAProxy stats socket (from the machine, through the
    node's bind-mounted /run/haproxy); None if HAProxy does not answer."""
    directory = dep.lab.procs.host_path(proxy, os.path.dirname(STATS_SOCKET))
    if not os.path.isdir(directory):
        return None
    # AF_UNIX paths are limited to 107 bytes: reach the socket through an O_PATH fd.
    fd = os.open(directory, os.O_PATH)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(f"/proc/self/fd/{fd}/{os.path.basename(STATS_SOCKET)}")
            s.sendall(command.encode() + b"\n")
            data = b""
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
            return data.decode(errors="replace")
    except OSError:
        return None
    finally:
        os.close(fd)


def server_states(dep, proxy: str) -> dict[str, dict[str, dict]] | None:
    """{backend: {server: {"status": "UP"|"DOWN"|..., "backup": bool, "stot": int, ...}}}
    from `show stat`; None if HAProxy does not answer."""
    text = haproxy_command(dep, proxy, "show stat")
    if not text or not text.startswith("# "):
        return None
    lines = text.splitlines()
    header = lines[0][2:].split(",")
    out: dict[str, dict[str, dict]] = {}
    for line in lines[1:]:
        if not line.strip():
            continue
        row = dict(zip(header, line.split(",")))
        if row.get("svname") in ("FRONTEND", "BACKEND"):
            continue
        out.setdefault(row["pxname"], {})[row["svname"]] = {
            "status": row.get("status", ""), "backup": row.get("bck") == "1",
            "stot": int(row.get("stot") or 0), "check": row.get("check_status", ""),
            "lastchg": int(row.get("lastchg") or 0)}
    return out


def active_server(states: dict[str, dict], backend: str) -> str | None:
    """The server HAProxy sends new connections of a single-writer backend to: the first
    UP non-backup server, else the first UP backup (no allbackups)."""
    servers = states.get(backend) or {}
    for want_backup in (False, True):
        for name, st in servers.items():  # `show stat` lists servers in configuration order
            if st["backup"] == want_backup and st["status"].startswith("UP"):
                return name
    return None


def vip_holders(dep, region: str | None = None) -> dict[str, list[str]]:
    """{vip address: [proxies holding it on eth0]} for the region's (or every) VIP."""
    vips = [v for r in dep.topo.regions for v in dep.topo.vips(r.name) if region in (None, r.name)]
    held: dict[str, list[str]] = {v.address: [] for v in vips}
    for proxy in dep.topo.nodes(region, "proxy"):
        out = dep.lab.net.exec(proxy.name, ["ip", "-4", "-o", "addr", "show", "dev", "eth0"], check=False, timeout=5)
        for line in out.stdout.splitlines():
            parts = line.split()
            if "inet" in parts:
                addr = parts[parts.index("inet") + 1].split("/")[0]
                if addr in held:
                    held[addr].append(proxy.name)
    return held


def vips_settled(dep, region: str | None = None) -> bool:
    """Every VIP held by exactly its master."""
    held = vip_holders(dep, region)
    return all(held[v.address] == [v.master] for r in dep.topo.regions if region in (None, r.name)
               for v in dep.topo.vips(r.name))


def wait(predicate, timeout: float, interval: float = 0.05):
    """Poll until truthy (bounded in time and count); the value, or None."""
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / max(interval, 0.001)) + 2):
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            break
        time.sleep(interval)
    return None


# -- daemons ------------------------------------------------------------------------------

# What systemd does for haproxy.service's ExecStopPost when the unit's process ends, for
# whatever reason: wait for the process (a pidfd is readable once it has ended), then run the
# drop-in's command lines in the node.
STOP_POST = "haproxy-stop-post"
_WAIT_AND_RUN = r"""
import json, os, select, subprocess, sys
try:
    fd = os.pidfd_open(int(sys.argv[1]))
    select.select([fd], [], [])
except ProcessLookupError:
    pass
for argv in json.loads(sys.argv[2]):
    subprocess.run(argv, timeout=30)
"""


def start_haproxy(dep, name: str, timeout: float = 15) -> None:
    """Start HAProxy as haproxy.service does, with our drop-in's hooks: ExecStartPost once it
    answers, ExecStopPost whenever its process ends."""
    procs = dep.lab.procs
    if procs.record(name, STOP_POST):
        procs.stop(name, STOP_POST, timeout=5)
    rec = procs.start(name, "haproxy", HAPROXY_ARGV, ready=lambda: server_states(dep, name) is not None,
                      ready_timeout=timeout)
    dropin = procs.host_path(name, HAPROXY_DROPIN)
    for argv in service.exec_lines(dropin, "ExecStartPost"):
        procs.run(name, argv, timeout=30)
    stop_post = service.exec_lines(dropin, "ExecStopPost")
    if stop_post:
        procs.start(name, STOP_POST, [sys.executable, "-c", _WAIT_AND_RUN, str(rec["pid"]), json.dumps(stop_post)])


def start_keepalived(dep, name: str, timeout: float = 15) -> None:
    vrrp_pid = dep.lab.procs.host_path(name, KEEPALIVED_PIDS["-r"])
    for path in KEEPALIVED_PIDS.values():  # a pid file left by a killed instance
        try:
            os.unlink(dep.lab.procs.host_path(name, path))
        except FileNotFoundError:
            pass
    dep.lab.procs.start(name, "keepalived", KEEPALIVED_ARGV, ready=lambda: os.path.exists(vrrp_pid),
                        ready_timeout=timeout)


def restart(dep, name: str, process: str) -> None:
    """Forget a stopped or killed daemon (its process group included) and start it again."""
    dep.lab.procs.stop(name, process, timeout=5)
    (start_haproxy if process == "haproxy" else start_keepalived)(dep, name)


# -- hooks --------------------------------------------------------------------------------

def install(dep, rendered) -> None:
    node = rendered.node
    # What `sysctl --system` does on the VM, limited to our file (net.* is per namespace).
    dep.lab.procs.run(node.name, ["sysctl", "-q", "-p", PROXY_SYSCTL])
    dep.lab.procs.make_root(node.name, RUN_DIRS)


def start(dep, nodes, log) -> None:
    nodes = list(nodes)
    if not nodes:
        return
    t = time.monotonic()
    for node in nodes:
        start_haproxy(dep, node.name)
    for node in nodes:
        start_keepalived(dep, node.name)
    if not wait(lambda: vips_settled(dep), timeout=20, interval=0.1):
        raise LabError(f"VIPs did not settle on their masters within 20 s: {vip_holders(dep)}")
    log(f"proxies: HAProxy and keepalived on {len(nodes)} nodes, every VIP on its master in "
        f"{time.monotonic() - t:.1f}s")
    if _running(dep, "galera") and dep.topo.nodes(role="galera"):
        ensure_check_user(dep, refresh=True)


def _running(dep, role: str) -> bool:
    """Whether the lab started the layer of `role` (older deployments start every layer)."""
    running = getattr(dep, "running", None)
    return running(role) if running else True


def _keystone_running(dep, region: str) -> bool:
    return any(dep.lab.procs.is_alive(n.name, rec["name"]) for n in dep.topo.nodes(region, "keystone")
               for rec in dep.lab.procs.processes(n.name).values())


def checks(dep) -> list[Check]:
    out = []
    topo = dep.topo
    for proxy in topo.nodes(role="proxy"):
        value = dep.lab.net.get_sysctl(proxy.name, "net.ipv4.ip_nonlocal_bind")
        out.append(Check(f"{proxy.name} may bind VIPs", value == "1", f"net.ipv4.ip_nonlocal_bind = {value}"))
    held = vip_holders(dep)
    for region in (r.name for r in topo.regions):
        for vip in topo.vips(region):
            out.append(Check(f"{vip.name} ({vip.address}) held by its master only", held[vip.address] == [vip.master],
                             f"held by {', '.join(held[vip.address]) or 'nobody'}"))
    for region in (r.name for r in topo.regions):
        proxies, keystones = (topo.nodes(region, role) for role in ("proxy", "keystone"))
        galeras = local_database(topo, region)  # a replica region's: its replicas
        if not proxies:
            continue
        internal = topo.vips(region, "internal")[0]
        for proxy in proxies:
            states = server_states(dep, proxy.name)
            if states is None:
                out.append(Check(f"{proxy.name} HAProxy", False, "the stats socket does not answer"))
                continue
            writer = active_server(states, "galera")
            want = galeras[0].name if galeras else None
            backups = [s for s in states.get("galera", {}).values() if s["backup"]]
            up = sum(1 for s in backups if s["status"].startswith("UP"))
            out.append(Check(f"{proxy.name} database writer", writer == want,
                             f"{writer} {states['galera'][writer]['status']}, backups up: {up}/{len(backups)}"
                             if writer else "no usable server"))
        if keystones and galeras and _running(dep, "galera"):
            client = keystones[0].name
            t = time.monotonic()
            if topo.region(region).replica:  # no wsrep: the replica's server_id names it
                from keystone_multiregion.roles.replica import server_id
                ok, node = db_query(dep, client, internal.address, "SELECT @@server_id")
                want = str(server_id(topo, galeras[0]))
            else:
                ok, node = db_query(dep, client, internal.address, "SELECT @@wsrep_node_name")
                want = galeras[0].name
            out.append(Check(f"database frontend {internal.address}:3306 answers {client}",
                             ok and node == want,
                             f"served by {node} in {(time.monotonic() - t) * 1000:.0f} ms" if ok else node))
            other = galeras[0].name
            t = time.monotonic()
            ok, detail = db_query(dep, other, internal.address, "SELECT 1", timeout=2)
            out.append(Check(f"database frontend refuses {other} (security group)", not ok,
                             f"no connection after {time.monotonic() - t:.1f}s" if not ok else "it answered"))
        if keystones:
            want_ok = _keystone_running(dep, region)
            for vip in topo.vips(region, "public"):
                got = tls_get(dep, keystones[0].name, vip.address, topo.region(region).public_hostname, "/v3")
                ok = got.get("ok") and (got.get("status") == 200 if want_ok else got.get("status") is not None)
                out.append(Check(f"{vip.name} serves HTTPS for {topo.region(region).public_hostname}", bool(ok),
                                 f"{got.get('tls')}, certificate verified, GET /v3: HTTP {got.get('status')} "
                                 f"in {got.get('ms')} ms" if got.get("ok") else got.get("error", "no answer")))
                # The rollout gate: every answer HTTP 200 and named (X-Keystone-Region) after
                # this region. Without Keystone running the gate must refuse (rc 1), not crash.
                rc, line = rollout_gate(dep, keystones[0].name, region, vip)
                out.append(Check(f"{vip.name}: the rollout gate sees {region} serving by itself"
                                 if want_ok else f"{vip.name}: the rollout gate refuses {region} (Keystone not running)",
                                 rc == (0 if want_ok else 1), line))
            code = dep.http_status(keystones[0].name, f"http://{internal.address}:{PORTS['keystone']}/v3")
            ok = code == 200 if want_ok else code is not None
            out.append(Check(f"internal endpoint {internal.address}:{PORTS['keystone']} answers {keystones[0].name}",
                             ok, f"HTTP {code}"))
            # Plain HTTP stays in the region: another region's node gets no answer (security group).
            stranger = next((n for n in topo.nodes() if n.region != region), None)
            if stranger is not None:
                code = dep.http_status(stranger.name, f"http://{internal.address}:{PORTS['keystone']}/v3")
                out.append(Check(f"internal endpoint {internal.address}:{PORTS['keystone']} refuses {stranger.name} "
                                 "(plain HTTP stays in its region)", code is None,
                                 "no answer" if code is None else f"HTTP {code}"))
    return out
