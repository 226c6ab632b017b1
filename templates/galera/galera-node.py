#!/usr/bin/env python3
"""galera-node: start, inspect and recover this node's member of the Galera cluster.

Shipped by keystone-multiregion to every Galera node (cloud-init writes it to
/usr/local/sbin/galera-node); the local lab runs the very same file. Standard library
only. Reads the node's facts from /etc/keystone-multiregion/node.json.

    galera-node prepare          runtime dirs, and the mysql group on secret files
    galera-node start [--exec]   safe start: a NEW cluster only on the bootstrap node,
                                 only if it was never in a cluster (no grastate.dat) and
                                 no peer answers; every other case joins. --exec replaces
                                 this process with mariadbd (the lab; the VM uses systemd)
    galera-node init-cluster     once, on the node that started the cluster: SST user,
                                 root password (idempotent)
    galera-node status           wsrep status as JSON
    galera-node health-server    HTTP 200 only when Synced and Primary, else 503
    galera-node recover-report   stopped node: {uuid, seqno, safe_to_bootstrap} as JSON
                                 (runs mariadbd --wsrep-recover when seqno is -1)
    galera-node bootstrap-here [--exec]
                                 full-outage recovery on the most advanced node only:
                                 marks it safe_to_bootstrap and starts a new cluster
"""

import argparse
import http.server
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time

FACTS = "/etc/keystone-multiregion/node.json"
DATADIR = "/var/lib/mysql"
GRASTATE = os.path.join(DATADIR, "grastate.dat")
SOCKET = "/run/mysqld/mysqld.sock"
SECRET_FILES = ("/etc/mysql/mariadb.conf.d/99-keystone-multiregion-sst.cnf", "/etc/mysql/ssl/node-key.pem")
RUNTIME_DIRS = ("/run/mysqld", "/var/log/mysql")
SST_USER = "sst"
DB_USERS = "/etc/mysql/keystone-multiregion-users.json"
REPLICATION_PORT = 4567


def facts():
    with open(FACTS) as fh:
        return json.load(fh)


def read_grastate(path=GRASTATE):
    """grastate.dat as a dict (uuid, seqno, safe_to_bootstrap), or None if absent."""
    try:
        with open(path) as fh:
            text = fh.read()
    except FileNotFoundError:
        return None
    state = {}
    for line in text.splitlines():
        if ":" in line and not line.startswith("#"):
            key, value = line.split(":", 1)
            state[key.strip()] = value.strip()
    for key in ("seqno", "safe_to_bootstrap"):
        if key in state:
            state[key] = int(state[key])
    return state


def decide(node_facts, grastate, peer_answers):
    """'new-cluster' or 'join'. A new cluster is started only by the bootstrap node, only
    when it has never been part of a cluster and no peer answers; never once data exists."""
    if grastate is None and node_facts.get("galera_bootstrap") and not peer_answers:
        return "new-cluster"
    return "join"


def peers_answering(node_facts, timeout=2.0, rounds=3):
    """Peers whose replication port accepts a connection; bounded: rounds x peers x timeout."""
    peers = [p for p in node_facts["galera_peers"] if p != node_facts["address"]]
    for attempt in range(rounds):
        found = []
        for peer in peers:
            try:
                with socket.create_connection((peer, REPLICATION_PORT), timeout=timeout):
                    found.append(peer)
            except OSError:
                pass
        if found:
            return found
        if attempt + 1 < rounds:
            time.sleep(1)
    return []


def mysql(sql, timeout=10):
    """Run SQL as root over the local socket; returns rows as lists of strings."""
    out = subprocess.run(["mariadb", "--protocol=socket", "-S", SOCKET, "-u", "root", "-N", "-B", "-e", sql],
                         capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        raise RuntimeError(out.stderr.strip() or f"mariadb exited {out.returncode}")
    return [line.split("\t") for line in out.stdout.splitlines()]


def wsrep_status():
    rows = mysql("SHOW GLOBAL STATUS WHERE Variable_name IN ('wsrep_cluster_size', 'wsrep_cluster_status', "
                 "'wsrep_local_state_comment', 'wsrep_ready', 'wsrep_connected', 'wsrep_last_committed', "
                 "'wsrep_cluster_state_uuid', 'wsrep_local_index')", timeout=5)
    return {name: value for name, value in rows}


def healthy(status):
    return (status.get("wsrep_local_state_comment") == "Synced" and status.get("wsrep_cluster_status") == "Primary"
            and status.get("wsrep_ready") == "ON")


def wait_ready(timeout=600):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if healthy(wsrep_status()):
                return True
        except (RuntimeError, subprocess.TimeoutExpired, OSError):
            pass
        time.sleep(1)
    return False


def sst_password():
    with open(SECRET_FILES[0]) as fh:
        m = re.search(r"^wsrep_sst_auth\s*=\s*[^:]+:(.+)$", fh.read(), re.M)
    return m.group(1).strip()


def root_password():
    with open("/root/.my.cnf") as fh:
        m = re.search(r"^password\s*=\s*(.+)$", fh.read(), re.M)
    return m.group(1).strip()


def _quote(value):
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def cmd_prepare(args):
    import grp
    import pwd
    mysql_uid, mysql_gid = pwd.getpwnam("mysql").pw_uid, grp.getgrnam("mysql").gr_gid
    for d in RUNTIME_DIRS:
        os.makedirs(d, exist_ok=True)
        os.chown(d, mysql_uid, mysql_gid)
    os.makedirs(DATADIR, exist_ok=True)
    os.chown(DATADIR, mysql_uid, mysql_gid)
    for path in SECRET_FILES:
        if os.path.exists(path):
            os.chown(path, 0, mysql_gid)
            os.chmod(path, 0o640)
    return 0


def recovered_position():
    """Run mariadbd --wsrep-recover (server stopped) and return 'uuid:seqno' or None."""
    out = subprocess.run(["mariadbd", "--user=mysql", "--wsrep-recover", "--log-error=/dev/stderr"],
                         capture_output=True, text=True, timeout=300)
    m = re.search(r"WSREP: Recovered position:\s*([0-9a-f-]+:-?\d+)", out.stdout + out.stderr)
    return m.group(1) if m else None


def _exec_mariadbd(extra):
    if not os.path.isdir(os.path.join(DATADIR, "mysql")):
        # First start of a node that will start the cluster: create the system tables
        # (a Debian package install does this on a VM; a bare datadir needs it here).
        subprocess.run(["mariadb-install-db", "--user=mysql", f"--datadir={DATADIR}", "--skip-test-db"],
                       check=True, capture_output=True, timeout=300)
    grastate = read_grastate()
    if grastate is not None and grastate.get("seqno") == -1 and os.path.isdir(os.path.join(DATADIR, "mysql")):
        # As the distribution's service does: find the last committed position first, or
        # the node would ask for a full SST after a crash.
        position = recovered_position()
        if position:
            extra = extra + [f"--wsrep_start_position={position}"]
    argv = ["mariadbd", "--user=mysql"] + extra
    sys.stdout.flush()
    os.execvp(argv[0], argv)


def cmd_start(args):
    node = facts()
    grastate = read_grastate()
    peers = [] if grastate is not None or not node.get("galera_bootstrap") else peers_answering(node)
    action = decide(node, grastate, peers)
    print(json.dumps({"node": node["name"], "action": action, "grastate": grastate, "peers_answering": peers}),
          flush=True)
    if args.exec:
        _exec_mariadbd(["--wsrep-new-cluster"] if action == "new-cluster" else [])
    if action == "new-cluster":
        subprocess.run(["galera_new_cluster"], check=True, timeout=900)
        if not wait_ready(timeout=args.timeout):
            print("galera-node: the new cluster did not become Synced/Primary", file=sys.stderr)
            return 1
        return cmd_init_cluster(args)
    subprocess.run(["systemctl", "start", "mariadb"], check=True, timeout=3600)  # SST can take long
    return 0 if wait_ready(timeout=args.timeout) else 1


def cmd_init_cluster(args):
    sst = _quote(sst_password())
    mysql(f"CREATE USER IF NOT EXISTS '{SST_USER}'@'localhost' IDENTIFIED BY {sst}")
    mysql(f"ALTER USER '{SST_USER}'@'localhost' IDENTIFIED BY {sst}")
    mysql(f"GRANT RELOAD, PROCESS, LOCK TABLES, BINLOG MONITOR, REPLICA MONITOR ON *.* TO '{SST_USER}'@'localhost'")
    # The applications' databases and users (Keystone's), from the rendered list.
    created = []
    if os.path.exists(DB_USERS):
        with open(DB_USERS) as fh:
            spec = json.load(fh)
        for db in spec.get("databases", []):
            mysql(f"CREATE DATABASE IF NOT EXISTS `{db}`")
        for user in spec.get("users", []):
            password = _quote(user["password"])
            # Users whose connections may cross the WAN get in only over TLS.
            require = " REQUIRE SSL" if user.get("require_ssl") else ""
            for host in user["hosts"]:
                account = f"{_quote(user['name'])}@{_quote(host)}"
                mysql(f"CREATE USER IF NOT EXISTS {account} IDENTIFIED BY {password}{require}")
                mysql(f"ALTER USER {account} IDENTIFIED BY {password}{require}")
                mysql(f"GRANT ALL PRIVILEGES ON `{user['database']}`.* TO {account}")
                created.append(f"{user['name']}@{host}")
    # root keeps socket authentication for local tools, and gets the password as well.
    mysql(f"ALTER USER 'root'@'localhost' IDENTIFIED VIA unix_socket OR mysql_native_password "
          f"USING PASSWORD({_quote(root_password())})")
    print(json.dumps({"initialised": True, "sst_user": SST_USER, "users": created}))
    return 0


def cmd_status(args):
    try:
        status = wsrep_status()
    except (RuntimeError, subprocess.TimeoutExpired, OSError) as exc:
        print(json.dumps({"error": str(exc)}))
        return 1
    status["healthy"] = healthy(status)
    print(json.dumps(status, sort_keys=True))
    return 0 if status["healthy"] else 1


class _Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (http.server's naming)
        try:
            status = wsrep_status()
        except (RuntimeError, subprocess.TimeoutExpired, OSError) as exc:
            status = {"error": str(exc)}
        ok = healthy(status)
        body = (json.dumps(status, sort_keys=True) + "\n").encode()
        self.send_response(200 if ok else 503)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def cmd_health_server(args):
    server = http.server.ThreadingHTTPServer((args.address, args.port), _Health)
    server.serve_forever()


def cmd_recover_report(args):
    node = facts()
    grastate = read_grastate() or {}
    report = {"node": node["name"], "uuid": grastate.get("uuid"), "seqno": grastate.get("seqno"),
              "safe_to_bootstrap": grastate.get("safe_to_bootstrap", 0)}
    if report["seqno"] in (None, -1) and os.path.isdir(os.path.join(DATADIR, "mysql")):
        position = recovered_position()
        if position:
            uuid, seqno = position.rsplit(":", 1)
            report.update(uuid=uuid, seqno=int(seqno), recovered=True)
    print(json.dumps(report, sort_keys=True))
    return 0


def cmd_bootstrap_here(args):
    grastate = read_grastate()
    if grastate is None:
        print("galera-node: no grastate.dat: this node holds no cluster data to recover from", file=sys.stderr)
        return 2
    with open(GRASTATE) as fh:
        text = fh.read()
    text = re.sub(r"^safe_to_bootstrap:\s*\d+", "safe_to_bootstrap: 1", text, flags=re.M)
    tmp = GRASTATE + ".tmp"
    with open(tmp, "w") as fh:
        fh.write(text)
    st = os.stat(GRASTATE)
    shutil.copystat(GRASTATE, tmp)
    os.chown(tmp, st.st_uid, st.st_gid)  # mariadbd (user mysql) rewrites it
    os.replace(tmp, GRASTATE)
    print(json.dumps({"node": facts()["name"], "action": "bootstrap-recovered", "seqno": grastate.get("seqno")}),
          flush=True)
    if args.exec:
        _exec_mariadbd(["--wsrep-new-cluster"])
    subprocess.run(["galera_new_cluster"], check=True, timeout=900)
    return 0 if wait_ready(timeout=args.timeout) else 1


def main(argv=None):
    parser = argparse.ArgumentParser(prog="galera-node", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("prepare")
    for name in ("start", "bootstrap-here"):
        p = sub.add_parser(name)
        p.add_argument("--exec", action="store_true", help="exec mariadbd in the foreground (no systemd)")
        p.add_argument("--timeout", type=float, default=1800, help="seconds to wait for Synced/Primary")
    sub.add_parser("init-cluster")
    sub.add_parser("status")
    health = sub.add_parser("health-server")
    health.add_argument("--address", required=True)
    health.add_argument("--port", type=int, default=9200)
    sub.add_parser("recover-report")
    args = parser.parse_args(argv)
    handler = {"prepare": cmd_prepare, "start": cmd_start, "init-cluster": cmd_init_cluster, "status": cmd_status,
               "health-server": cmd_health_server, "recover-report": cmd_recover_report,
               "bootstrap-here": cmd_bootstrap_here}[args.command]
    return handler(args)


if __name__ == "__main__":
    sys.exit(main())
