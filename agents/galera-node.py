#!/usr/bin/env python3
"""galera-node: start, inspect and recover this node's member of the Galera cluster.

Shipped by keystone-multiregion to every Galera node (cloud-init writes it to
/usr/local/sbin/galera-node); the local lab runs the very same file. Standard library
only. Reads the node's facts from /etc/keystone-multiregion/node.json.

    galera-node prepare          runtime dirs, and the mysql group on secret files
    galera-node start [--exec]   safe start: never without the data volume (the file system
                                 labelled galera-data mounted on /var/lib/mysql); a NEW
                                 cluster only on the bootstrap node, only if neither the
                                 volume nor this machine holds any trace of a cluster and no
                                 peer answers; every other case joins. --exec replaces this
                                 process with mariadbd (the lab; the VM uses systemd)
    galera-node init-cluster     once, on the node that started the cluster: SST user,
                                 root password (idempotent)
    galera-node status           wsrep status as JSON
    galera-node health-server    HTTP 200 only when Synced and Primary, else 503; runs as
                                 the unprivileged galera-health user (unix_socket account),
                                 one query at a time, its answer reused for 1 s
    galera-node recover-report   stopped node: {uuid, seqno, safe_to_bootstrap} as JSON
                                 (runs mariadbd --wsrep-recover when seqno is -1)
    galera-node backup [--full|--incremental|--binlogs-only] [--scheduled]
                                 a backup of this node (desynced while mariabackup runs),
                                 encrypted, checksummed, into the region's container and the
                                 next region's, with the binary logs since the last one
                                 (agents/galera_backup.py); --scheduled: the timer's run, only
                                 on the region's backup node, full when the last is too old
    galera-node backups [--region R] [--verify]
                                 what exists: id, kind, age, size, sha256, checks
    galera-node restore [--to TIME | --to-gtid GTID | --backup ID] [--from REGION] [--exec|--dry-run]
                                 on a stopped node while no member runs: the newest backup
                                 chain before the target, checked, then the binary logs up to
                                 it replayed; starts a new cluster from this node (the other
                                 members then `rejoin`). Refuses a backup whose checksum or
                                 signature fails, one from another deployment, a running cluster
    galera-node rejoin [--exec]  a stopped member whose data belongs to an earlier cluster:
                                 its Galera state set aside, it joins the running one by SST
    galera-node bootstrap-here [--exec]
                                 full-outage recovery on the most advanced node only:
                                 refuses without the data volume or while a peer is in a
                                 Primary component; marks it safe_to_bootstrap and starts
                                 a new cluster

SQL goes to the client on stdin, never in its arguments (`ps` shows arguments to every
user): passwords inside CREATE/ALTER USER stay out of sight. Credentials for a peer's
server travel in an option file readable by root only (--defaults-extra-file).
"""

import argparse
import importlib
import json
import os
import re
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import time

FACTS = "/etc/keystone-multiregion/node.json"
DATADIR = "/var/lib/mysql"
GRASTATE = os.path.join(DATADIR, "grastate.dat")
SOCKET = "/run/mysqld/mysqld.sock"
SECRET_FILES = ("/etc/mysql/mariadb.conf.d/99-keystone-multiregion-sst.cnf", "/etc/mysql/ssl/node-key.pem")
RUNTIME_DIRS = ("/run/mysqld", "/var/log/mysql")
SST_USER = "sst"
DB_USERS = "/etc/mysql/keystone-multiregion-users.json"
ROOT_MY_CNF = "/root/.my.cnf"
REPLICATION_PORT = 4567
MYSQL_PORT = 3306
# The data volume: the file system cloud-init made with this label (roles/galera.py,
# GALERA_DATA_LABEL), found by the kernel's name for it, never by a device name such as
# /dev/vdb (the ephemeral disk on some flavors).
DATA_LABEL = "galera-data"
BY_LABEL = "/dev/disk/by-label"
MOUNTINFO = "/proc/self/mountinfo"
# What a data directory holds once it has been part of a cluster (Galera's own state, and
# the marker written when this node started one); databases other than the system ones.
CLUSTER_TRACES = ("grastate.dat", "gvwstate.dat", "galera.cache")
SYSTEM_DIRS = ("mysql", "performance_schema", "sys", "lost+found")
VOLUME_MARKER = os.path.join(DATADIR, "keystone-multiregion-cluster.json")
# Kept on the root disk as well: a blank volume attached in place of the real one does not
# make this machine forget that it started a cluster.
HOST_MARKER = "/var/lib/keystone-multiregion/galera-cluster.json"
# The health server's system user and its database account (unix_socket: no password).
HEALTH_USER = "galera-health"
EXPORTER_USER = "prometheus"  # Debian's prometheus-mysqld-exporter runs as this system user
# While this file exists the health check answers 503 (node-agent drains the member before a
# planned restart, so the proxies move its sessions to another member first).
DRAIN_MARKER = "/var/lib/keystone-multiregion/galera-drain"
HEALTH_CACHE_S = 1.0       # one query answers every request within this second
HEALTH_MAX_CLIENTS = 8     # connections served at once; the rest wait in the listen queue
# This program's modules (agents/node_health.py, agents/galera_backup.py), shipped here; the
# program's own directory comes first, so the copy under agents/ runs with its neighbours.
LIB_DIR = "/usr/local/lib/keystone-multiregion"


def facts():
    with open(FACTS) as fh:
        return json.load(fh)


def read_grastate(path=None):
    """grastate.dat as a dict (uuid, seqno, safe_to_bootstrap), or None if absent."""
    try:
        with open(path or GRASTATE) as fh:
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


def _client(argv, sql, timeout):
    """The mariadb client with `sql` on its stdin (never in argv: `ps` shows argv to all)."""
    out = subprocess.run(argv, input=sql, capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        raise RuntimeError(out.stderr.strip() or f"mariadb exited {out.returncode}")
    return [line.split("\t") for line in out.stdout.splitlines()]


def mysql(sql, timeout=10, user="root"):
    """Run SQL over the local socket (root, or `user` by unix_socket authentication: the
    account named like the calling system user); returns rows as lists of strings."""
    prefix = ["mariadb"] if user == "root" else ["mariadb", "--no-defaults"]
    return _client(prefix + ["--protocol=socket", "-S", SOCKET, "-u", user, "-N", "-B"], sql, timeout)


STATUS_SQL = ("SHOW GLOBAL STATUS WHERE Variable_name IN ('wsrep_cluster_size', 'wsrep_cluster_status', "
              "'wsrep_local_state_comment', 'wsrep_ready', 'wsrep_connected', 'wsrep_last_committed', "
              "'wsrep_cluster_state_uuid', 'wsrep_local_index')")


def wsrep_status(user="root"):
    return {name: value for name, value in mysql(STATUS_SQL, timeout=5, user=user)}


def _lib_module(name):
    """The module `name` from LIB_DIR or this program's directory; a clear exit when it is
    missing (the node's files are incomplete), not a traceback."""
    own = os.path.dirname(os.path.abspath(__file__))
    for d in (LIB_DIR, own):  # own ends first, even when it was on sys.path already
        if d in sys.path:
            sys.path.remove(d)
        sys.path.insert(0, d)
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise SystemExit(f"galera-node: cannot load {name}.py from {own} or {LIB_DIR} ({exc}): this node's "
                         "files are incomplete: run the region stack's update again (its push writes them)")


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
    with open(ROOT_MY_CNF) as fh:
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
    try:
        pwd.getpwnam(HEALTH_USER)
    except KeyError:
        # The health server's own system user: no home, no shell, no password.
        subprocess.run(["useradd", "--system", "--user-group", "--no-create-home", "--home-dir", "/nonexistent",
                        "--shell", "/usr/sbin/nologin", HEALTH_USER], check=True, capture_output=True, timeout=60)
    return 0


# -- the data volume, and the traces of an earlier cluster ---------------------------------

def mount_points(path=None):
    """Mount points of this process's mount namespace (/proc/self/mountinfo, field 5)."""
    points = set()
    with open(path or MOUNTINFO) as fh:
        for line in fh:
            fields = line.split()
            if len(fields) > 4:
                points.add(fields[4].replace("\\040", " "))
    return points


def volume_problem():
    """None when DATADIR is the data volume: a mount point whose file system is the block
    device the kernel names by the volume's label; else one line: what is wrong, what to do."""
    if os.path.normpath(DATADIR) not in mount_points():
        return (f"{DATADIR} is not a mount point: the data volume is not mounted (a failed attach leaves an empty "
                f"directory); attach the volume, check `findmnt LABEL={DATA_LABEL}`, then `mount {DATADIR}`")
    link = os.path.join(BY_LABEL, DATA_LABEL)
    try:
        device = os.stat(link)
    except FileNotFoundError:
        return (f"no file system labelled {DATA_LABEL} ({link} is missing): the data volume is not attached; "
                f"attach it and mount it on {DATADIR}")
    mounted = os.stat(DATADIR).st_dev
    if not stat.S_ISBLK(device.st_mode) or device.st_rdev != mounted:
        return (f"{DATADIR} is not the file system labelled {DATA_LABEL} (mounted: device {os.major(mounted)}:"
                f"{os.minor(mounted)}; {link}: {os.major(device.st_rdev)}:{os.minor(device.st_rdev)}); "
                f"unmount it and mount the data volume (LABEL={DATA_LABEL})")
    return None


def cluster_traces():
    """Why DATADIR or this machine has been part of a cluster: one line per trace, [] if none."""
    found = [os.path.join(DATADIR, name) for name in CLUSTER_TRACES if os.path.exists(os.path.join(DATADIR, name))]
    found += [f"{path} (this node started a cluster)" for path in (VOLUME_MARKER, HOST_MARKER)
              if os.path.exists(path)]
    try:
        entries = sorted(os.listdir(DATADIR))
    except FileNotFoundError:
        entries = []
    found += [f"database {name}" for name in entries
              if os.path.isdir(os.path.join(DATADIR, name)) and name not in SYSTEM_DIRS and not name.startswith("#")]
    return found


def new_cluster_refusal():
    """Why this node may not start a NEW cluster (one line), or None: only from the data
    volume, and only while neither the volume nor this machine holds a trace of a cluster."""
    problem = volume_problem()
    if problem:
        return problem
    traces = cluster_traces()
    if traces:
        return (f"this node's data has been part of a cluster ({', '.join(traces)}): a new, empty cluster would have "
                "the others wiped by SST; if every node is down, recover: galera-node recover-report on each node, "
                "python -m keystone_multiregion recover-plan, galera-node bootstrap-here on the node it names")
    return None


def write_markers(node):
    """Record that this node started a cluster: on the volume and on the root disk."""
    record = json.dumps({"node": node["name"], "deployment": node.get("deployment"),
                         "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}, sort_keys=True) + "\n"
    for path in (VOLUME_MARKER, HOST_MARKER):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as fh:
            fh.write(record)
            fh.flush()
            os.fsync(fh.fileno())


# -- the peers, over their database port ----------------------------------------------------

def _status_credentials():
    """[client] options for asking a peer's server (the account DB_USERS names for it)."""
    with open(DB_USERS) as fh:
        spec = json.load(fh)
    user = next(u for u in spec["users"] if u["name"] == spec["status_user"])
    return {"user": user["name"], "password": user["password"], "ssl-ca": spec["ssl_ca"],
            "ssl-verify-server-cert": None, "connect-timeout": "3"}


def peer_cluster_status(peer, options, timeout=15):
    """A peer's wsrep_cluster_status ('Primary', 'non-Primary', ...); None when no server
    answers there. The credentials go in an option file only root can read, never in argv."""
    fd, path = tempfile.mkstemp(prefix="galera-node-", suffix=".cnf")  # 0600, owned by root
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write("[client]\n" + "".join(f"{k}\n" if v is None else f"{k} = {v}\n" for k, v in options.items()))
        # --defaults-file: these options only. With --defaults-extra-file, root's own ~/.my.cnf
        # (read after it) would put root's name and password in place of the status account's.
        argv = ["mariadb", f"--defaults-file={path}", "-h", peer, "-P", str(MYSQL_PORT), "-N", "-B"]
        try:
            rows = _client(argv, "SHOW GLOBAL STATUS LIKE 'wsrep_cluster_status'", timeout)
        except RuntimeError as exc:
            # 2002/2003: nothing listens or the address is unreachable; 2013: lost at connect.
            if re.search(r"ERROR 20(02|03|13)\b", str(exc)):
                return None
            raise
        except subprocess.TimeoutExpired:
            return None
        return rows[0][1] if rows and len(rows[0]) > 1 else ""
    finally:
        os.unlink(path)


def primary_peers(node, ignore=()):
    """(peers in a Primary component, peers whose state could not be told) as lines."""
    options = _status_credentials()
    primary, unknown = [], []
    for peer in node["galera_peers"]:
        if peer == node["address"] or peer in ignore:
            continue
        try:
            status = peer_cluster_status(peer, options)
        except RuntimeError as exc:
            unknown.append(f"{peer}: {str(exc).splitlines()[-1]}")
            continue
        if status == "Primary":
            primary.append(peer)
    return primary, unknown


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


def refuse(what, reason):
    print(f"galera-node: refusing to {what}: {reason}", file=sys.stderr, flush=True)
    return 2


def cmd_start(args):
    node = facts()
    # MariaDB runs from the data volume or not at all: on the empty directory a failed
    # attach leaves behind, a joiner would receive a full copy onto the root disk and the
    # bootstrap node would start a new, empty cluster.
    problem = volume_problem()
    if problem:
        return refuse("start MariaDB", problem)
    grastate = read_grastate()
    peers = [] if grastate is not None or not node.get("galera_bootstrap") else peers_answering(node)
    action = decide(node, grastate, peers)
    if action == "new-cluster":
        reason = new_cluster_refusal()
        if reason:
            return refuse("start a new cluster", reason)
        write_markers(node)
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


def _accounts(user, grants):
    """One database account per listed host, with its password and grants (each grant
    "PRIVILEGES ON `db`", given on .*); hosts no longer listed lose theirs. Returns what it did."""
    done = []
    password = _quote(user["password"])
    # Hosts no longer listed (a region removed from the topology) lose their account.
    for (host,) in mysql(f"SELECT Host FROM mysql.user WHERE User = {_quote(user['name'])}"):
        if host not in user["hosts"]:
            mysql(f"DROP USER IF EXISTS {_quote(user['name'])}@{_quote(host)}")
            done.append(f"dropped {user['name']}@{host}")
    # Users whose connections may cross the WAN get in only over TLS.
    require = " REQUIRE SSL" if user.get("require_ssl") else ""
    for host in user["hosts"]:
        account = f"{_quote(user['name'])}@{_quote(host)}"
        mysql(f"CREATE USER IF NOT EXISTS {account} IDENTIFIED BY {password}{require}")
        mysql(f"ALTER USER {account} IDENTIFIED BY {password}{require}")
        for grant in grants:
            mysql(f"GRANT {grant}.* TO {account}")
        done.append(f"{user['name']}@{host}")
    return done


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
            created += _accounts(user, [f"ALL PRIVILEGES ON `{user['database']}`"])
        # The replica regions' replicas (agents/replica-node.py): the binary log stream and a
        # consistent dump of the replicated databases, from each replica's address only.
        for user in spec.get("replication_users", []):
            grants = [f"{', '.join(user['global_privileges'])} ON *"] + [
                f"{', '.join(privileges)} ON `{db}`" for db, privileges in sorted(user["databases"].items())]
            created += _accounts(user, grants)
    # The health server's account: the system user of the same name, by unix_socket (no
    # password exists); it needs no privilege to read the wsrep status.
    mysql(f"CREATE USER IF NOT EXISTS {_quote(HEALTH_USER)}@'localhost' IDENTIFIED VIA unix_socket")
    # Prometheus' mysqld_exporter: the package's system user, by unix_socket; status and
    # InnoDB metrics need PROCESS and REPLICATION CLIENT, nothing reads Keystone's data.
    mysql(f"CREATE USER IF NOT EXISTS {_quote(EXPORTER_USER)}@'localhost' IDENTIFIED VIA unix_socket")
    mysql(f"GRANT PROCESS, REPLICATION CLIENT ON *.* TO {_quote(EXPORTER_USER)}@'localhost'")
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


# -- the health server (agents/node_health.py, shipped next to this program) ---------------

def _judge(status):
    """(status, ok) for the health server: Synced and Primary, and not drained."""
    ok = healthy(status)
    if os.path.exists(DRAIN_MARKER):
        status, ok = {**status, "draining": True}, False
    return status, ok


def HealthCache(query, ttl=HEALTH_CACHE_S, clock=time.monotonic):  # noqa: N802 (was a class here)
    """One query at a time, its answer reused for `ttl` seconds (node_health.HealthCache)."""
    return _lib_module("node_health").HealthCache(query, ttl=ttl, clock=clock)


def HealthServer(address, health, max_clients=HEALTH_MAX_CLIENTS):  # noqa: N802 (was a class here)
    """200 only when Synced and Primary and not drained; at most `max_clients` served at once."""
    return _lib_module("node_health").HealthServer(address, health, judge=_judge, max_clients=max_clients)


def drop_privileges(user):
    """Become `user` (its own group, no others) when started as root; refuse to stay root."""
    _lib_module("node_health").drop_privileges(user, "galera-node")


def cmd_health_server(args):
    server = HealthServer((args.address, args.port), HealthCache(lambda: wsrep_status(user=HEALTH_USER)))
    drop_privileges(HEALTH_USER)  # the unit already starts it as that user; the lab starts it as root
    server.serve_forever()


def cmd_recover_report(args):
    node = facts()
    grastate = read_grastate() or {}
    report = {"node": node["name"], "uuid": grastate.get("uuid"), "seqno": grastate.get("seqno"),
              "safe_to_bootstrap": grastate.get("safe_to_bootstrap", 0), "data_volume": volume_problem() or "mounted"}
    if report["seqno"] in (None, -1) and os.path.isdir(os.path.join(DATADIR, "mysql")):
        position = recovered_position()
        if position:
            uuid, seqno = position.rsplit(":", 1)
            report.update(uuid=uuid, seqno=int(seqno), recovered=True)
    print(json.dumps(report, sort_keys=True))
    return 0


def cmd_bootstrap_here(args):
    problem = volume_problem()
    if problem:
        return refuse("bootstrap from this node", problem)
    grastate = read_grastate()
    if grastate is None:
        return refuse("bootstrap from this node", "no grastate.dat: this node holds no cluster data to recover from")
    node = facts()
    primary, unknown = primary_peers(node, ignore=args.ignore_peer)
    if primary:
        return refuse("bootstrap from this node", f"{', '.join(primary)} already run a Primary component: start "
                      "this node normally (systemctl start mariadb) and it joins them")
    if unknown:
        return refuse("bootstrap from this node", f"could not tell whether these peers are in a Primary component "
                      f"({'; '.join(unknown)}); check them by hand, then repeat with --ignore-peer ADDRESS")
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
    print(json.dumps({"node": node["name"], "action": "bootstrap-recovered", "seqno": grastate.get("seqno")}),
          flush=True)
    if args.exec:
        _exec_mariadbd(["--wsrep-new-cluster"])
    subprocess.run(["galera_new_cluster"], check=True, timeout=900)
    return 0 if wait_ready(timeout=args.timeout) else 1


# -- backups (agents/galera_backup.py, shipped next to this program) ------------------------

def _backup_module():
    return _lib_module("galera_backup")


def _backup_command(handler, what):
    def run(args):
        gb = _backup_module()
        try:
            return handler(gb, args)
        except gb.Refusal as exc:
            return refuse(what, str(exc))
        except (RuntimeError, subprocess.TimeoutExpired, OSError) as exc:
            print(f"galera-node: {what} failed: {exc}", file=sys.stderr, flush=True)
            return 1
    return run


def _backup(gb, args):
    return gb.cmd_backup(sys.modules[__name__], args)


def _backups(gb, args):
    return gb.cmd_backups(sys.modules[__name__], args)


def _restore(gb, args):
    summary = gb.restore(sys.modules[__name__], args)
    if args.dry_run:
        return 0
    node = facts()
    write_markers({**node, "restored_from": summary["chain"][0]})
    print(json.dumps({"node": node["name"], "action": "new-cluster-from-restore"}), flush=True)
    if args.exec:
        _exec_mariadbd(["--wsrep-new-cluster"])
    subprocess.run(["galera_new_cluster"], check=True, timeout=900)
    if not wait_ready(timeout=args.timeout):
        print("galera-node: the restored node did not become Synced/Primary", file=sys.stderr)
        return 1
    return cmd_init_cluster(args)


def _rejoin(gb, args):
    if gb.mariadbd_running(sys.modules[__name__]):
        raise gb.Refusal("MariaDB runs on this node: it is a member already")
    problem = volume_problem()
    if problem:
        raise gb.Refusal(problem)
    node = facts()
    primary, unknown = primary_peers(node)
    if not primary:
        raise gb.Refusal("no peer runs a Primary component to join: restore a backup on one node first "
                         "(galera-node restore)" + (f"; no answer from: {'; '.join(unknown)}" if unknown else ""))
    aside = os.path.join(gb.WORK, "rejoin-" + time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()))
    os.makedirs(aside, mode=0o700)
    for name in ("grastate.dat", "gvwstate.dat"):
        if os.path.exists(os.path.join(DATADIR, name)):
            shutil.move(os.path.join(DATADIR, name), os.path.join(aside, name))
    print(json.dumps({"node": node["name"], "action": "join-by-sst", "joins": primary, "galera_state_kept": aside}),
          flush=True)
    if args.exec:
        _exec_mariadbd([])
    subprocess.run(["systemctl", "start", "mariadb"], check=True, timeout=3600)
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
        if name == "bootstrap-here":
            p.add_argument("--ignore-peer", action="append", default=[], metavar="ADDRESS",
                           help="a peer whose state you checked by hand (it does not answer for itself)")
    sub.add_parser("init-cluster")
    sub.add_parser("status")
    health = sub.add_parser("health-server")
    health.add_argument("--address", required=True)
    health.add_argument("--port", type=int, default=9200)
    sub.add_parser("recover-report")
    b = sub.add_parser("backup")
    kind = b.add_mutually_exclusive_group()
    kind.add_argument("--full", action="store_true")
    kind.add_argument("--incremental", action="store_true")
    kind.add_argument("--binlogs-only", action="store_true", help="only ship the binary logs closed since the last")
    b.add_argument("--scheduled", action="store_true", help="the timer's run: only on the region's backup node")
    ls = sub.add_parser("backups")
    ls.add_argument("--region", help="one region's container (default: this region's and the next)")
    ls.add_argument("--verify", action="store_true", help="download every backup and check its checksum")
    r = sub.add_parser("restore")
    target = r.add_mutually_exclusive_group()
    target.add_argument("--to", metavar="TIME", help="point in time (UTC), e.g. 2026-12-06T16:30:00Z: "
                        "everything committed before it")
    target.add_argument("--to-gtid", metavar="GTID", help="stop just before this transaction, e.g. 1-1-4711")
    target.add_argument("--backup", metavar="ID", help="exactly this backup (and its chain), no binary logs after")
    r.add_argument("--from", dest="source", metavar="REGION", help="restore from this region's container")
    r.add_argument("--ignore-peer", action="append", default=[], metavar="ADDRESS")
    r.add_argument("--dry-run", action="store_true", help="fetch, check, decrypt and prepare the backup, then "
                   "throw it away: the node and the cluster are left as they are (a backup test)")
    rj = sub.add_parser("rejoin")
    for p in (r, rj):
        p.add_argument("--exec", action="store_true", help="exec mariadbd in the foreground (no systemd)")
        p.add_argument("--timeout", type=float, default=1800, help="seconds to wait for Synced/Primary")
    args = parser.parse_args(argv)
    if args.command == "restore":
        args.no_binlogs = bool(args.backup)
    handler = {"prepare": cmd_prepare, "start": cmd_start, "init-cluster": cmd_init_cluster, "status": cmd_status,
               "health-server": cmd_health_server, "recover-report": cmd_recover_report,
               "bootstrap-here": cmd_bootstrap_here, "backup": _backup_command(_backup, "back up"),
               "backups": _backup_command(_backups, "list backups"),
               "restore": _backup_command(_restore, "restore"),
               "rejoin": _backup_command(_rejoin, "rejoin")}[args.command]
    return handler(args)


if __name__ == "__main__":
    sys.exit(main())
